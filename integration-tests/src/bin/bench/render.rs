//! (render) The window and renderer drivers under a real runtime, on whatever Vulkan device
//! the machine has (lavapipe here), windows on a private Xvfb:
//!
//! - (render a) offscreen render + publish on `renderer/frame`, frames per second at 1280×720
//!   and 1920×1080, unpaced, beside `syncra-renderer-bare`: the same drawing and readback in
//!   one process with no runtime, in the same run;
//! - (render b) renderer SIGKILL → the first frame the new incarnation presents into the
//!   window, beside a bare start of the same drawing (spawn → first frame read back);
//! - (render c) world tick published → the first frame presented into the window showing that
//!   tick or a later one, beside the frame interval;
//! - (render d) `frames` mode at 1920×1080: frame published → shown in the window by the
//!   window driver, and the CPU blit's cost per frame, beside a memcpy of the same frame.
//!
//! Frame and scene times come from the streams' own clock (CLOCK_MONOTONIC, stamped by each
//! producer), logged by a `syncra-test-peer frame-times` node.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use syncra_integration_tests::picture::Xvfb;
use syncra_integration_tests::{Harness, Options, jsonl as lines, percentile, send, workspace_bin};

use super::{Row, config, ms, verdict};

const PEER: &str = "syncra-test-peer";

fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

fn of_kind<'a>(l: &'a [Value], k: &str) -> impl Iterator<Item = &'a Value> {
    l.iter().filter(move |v| v["k"] == k)
}

/// The drivers' part of a config: a world of 256 entities, the renderer with `renderer`
/// settings, a window with `window` settings (none if empty), and the frame-times peer.
fn drivers(out: &Path, renderer: &str, window: &str, frames: &str, extra_peer: &str) -> String {
    let window = if window.is_empty() {
        String::new()
    } else {
        format!(
            "[drivers.window]\ncommand = \"{}\"\nsettings = {{ {window} }}\n",
            workspace_bin("syncra-window").display()
        )
    };
    let bulk = if frames == "renderer/frame" { "1" } else { "0" };
    format!(
        "{window}[drivers.renderer]\ncommand = \"{}\"\nsettings = {{ {renderer} }}\n\
         [drivers.times]\ncommand = \"{}\"\n\
         args = [\"frame-times\", \"out={}\", \"scene=world/main/scene\", \"frames={frames}\", \"bulk={bulk}\"{extra_peer}]\n\
         [worlds]\nentities = 256\n",
        workspace_bin("syncra-renderer").display(),
        workspace_bin(PEER).display(),
        out.display()
    )
}

fn start(config: &str, display: Option<&Xvfb>, nodes: &[&str]) -> Harness {
    let env = display
        .map(|x| vec![("DISPLAY".to_owned(), x.display.clone())])
        .unwrap_or_default();
    let h = Harness::start_with(
        config,
        &[],
        Options {
            env,
            ..Options::default()
        },
    );
    h.wait_ready(nodes);
    h
}

/// Wait until the peer's log satisfies `f`.
fn wait_for(path: &Path, what: &str, f: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let l = lines(path);
        if f(&l) {
            return l;
        }
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// (render a) at one size: (runtime fps, frame interval ms, bare fps, bare frame ms p50/p99).
fn throughput(width: u32, height: u32, seconds: u64) -> (f64, Vec<f64>, Value) {
    let bare = Command::new(workspace_bin("syncra-renderer-bare"))
        .args([
            width.to_string(),
            height.to_string(),
            seconds.to_string(),
            "256".into(),
        ])
        .output()
        .expect("syncra-renderer-bare");
    let bare: Value = serde_json::from_slice(&bare.stdout).unwrap_or_else(|_| {
        panic!(
            "syncra-renderer-bare failed: {}",
            String::from_utf8_lossy(&bare.stderr)
        )
    });
    let dir = tempfile::tempdir().expect("a scratch directory");
    let out = dir.path().join("times.jsonl");
    let renderer = format!(
        "worlds = [\"main\"], target = \"offscreen\", width = {width}, height = {height}, rate_hz = 1000.0"
    );
    let h = start(
        &config(1000, &drivers(&out, &renderer, "", "renderer/frame", "")),
        None,
        &["renderer", "times", "world/main"],
    );
    // One second to warm up, then `seconds` measured.
    let first = wait_for(&out, "frames flow", |l| of_kind(l, "frame").count() > 5);
    let skip = of_kind(&first, "frame").count();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(seconds + 1) {
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(h);
    let all = lines(&out);
    let frames: Vec<&Value> = of_kind(&all, "frame").skip(skip).collect();
    let pubs: Vec<u64> = frames.iter().filter_map(|v| v["pub"].as_u64()).collect();
    let span = pubs
        .last()
        .unwrap_or(&0)
        .saturating_sub(*pubs.first().unwrap_or(&0));
    let seqs = frames.last().and_then(|v| v["seq"].as_u64()).unwrap_or(0)
        - frames.first().and_then(|v| v["seq"].as_u64()).unwrap_or(0);
    let fps = seqs as f64 / (span as f64 / 1e9).max(1e-9);
    let intervals = pubs
        .windows(2)
        .map(|w| (w[1] - w[0]) as f64 / 1e6)
        .collect();
    (fps, intervals, bare)
}

/// (render b), (render c), (render d).
pub(crate) fn all(kills: usize, seconds: u64, rows: &mut Vec<Row>) {
    for (w, h) in [(1280, 720), (1920, 1080)] {
        let (fps, mut intervals, bare) = throughput(w, h, seconds);
        let bare_fps = bare["fps"].as_f64().unwrap_or(0.0);
        rows.push(Row {
            measure: format!(
                "(render a) offscreen render + publish on renderer/frame, {w}×{h}, 256 entities, unpaced: frames per second (p50/p99: frame interval)"
            ),
            p50: format!("{fps:.1} fps ({:.2} ms)", percentile(&mut intervals, 50.0)),
            p99: ms(percentile(&mut intervals, 99.0)),
            baseline: format!(
                "bare wgpu loop of the same scene in one process: {bare_fps:.1} fps (frame p50 {} p99 {}), {}",
                ms(bare["frame_ms_p50"].as_f64().unwrap_or(0.0)),
                ms(bare["frame_ms_p99"].as_f64().unwrap_or(0.0)),
                bare["adapter"].as_str().unwrap_or("?")
            ),
            target: "≥ 0.9× bare".into(),
            verdict: verdict(fps >= 0.9 * bare_fps, format!("{:.2}× bare", fps / bare_fps)),
        });
    }

    let x = Xvfb::start();
    // (render b) and (render c): presenting into the window at 60 frames per second.
    let dir = tempfile::tempdir().expect("a scratch directory");
    let out = dir.path().join("times.jsonl");
    let renderer = "worlds = [\"main\"], target = \"window\", rate_hz = 60.0";
    let window = "width = 1280, height = 720";
    let h = start(
        &config(
            1000,
            &drivers(&out, renderer, window, "renderer/presented", ""),
        ),
        Some(&x),
        &["window", "renderer", "times", "world/main"],
    );
    wait_for(&out, "frames presented", |l| {
        of_kind(l, "frame").count() > 30
    });
    // (render c) first, from what has flowed so far and a few seconds more.
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(seconds) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let l = lines(&out);
    let frames: Vec<(u64, u64)> = of_kind(&l, "frame")
        .filter_map(|v| Some((v["tick"].as_u64()?, v["pub"].as_u64()?)))
        .collect();
    let mut tick_to_frame = Vec::new();
    for s in of_kind(&l, "scene") {
        let (Some(tick), Some(at)) = (s["tick"].as_u64(), s["pub"].as_u64()) else {
            continue;
        };
        if let Some(&(_, f)) = frames.iter().find(|&&(t, f)| t >= tick && f >= at) {
            tick_to_frame.push((f - at) as f64 / 1e6);
        }
    }
    let mut interval: Vec<f64> = frames
        .windows(2)
        .map(|w| (w[1].1 - w[0].1) as f64 / 1e6)
        .collect();
    let (i50, i99) = (
        percentile(&mut interval, 50.0),
        percentile(&mut interval, 99.0),
    );
    let (c50, c99) = (
        percentile(&mut tick_to_frame, 50.0),
        percentile(&mut tick_to_frame, 99.0),
    );
    rows.push(Row {
        measure: format!(
            "(render c) world tick published → first frame presented into the window showing it (1280×720, 60 Hz world and renderer, {} ticks)",
            tick_to_frame.len()
        ),
        p50: ms(c50),
        p99: ms(c99),
        baseline: format!("the frame interval: p50 {} p99 {}", ms(i50), ms(i99)),
        target: "≤ one frame interval + the frame's own time".into(),
        verdict: verdict(c50 <= 2.0 * i50, format!("{:.2} frame intervals", c50 / i50)),
    });

    // (render b): kill the renderer, time to the new incarnation's first presented frame.
    let mut bare = Vec::new();
    for _ in 0..kills.min(10) {
        let t = Instant::now();
        let o = Command::new(workspace_bin("syncra-renderer-bare"))
            .args(["1280", "720", "0", "256"])
            .output()
            .expect("syncra-renderer-bare");
        assert!(o.status.success());
        bare.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let mut kill_to_frame = Vec::new();
    for _ in 0..kills {
        let node = h.node("renderer");
        let t0 = monotonic_ns();
        send(node.pid.expect("a pid"), libc::SIGKILL);
        let newer = |v: &Value| v["inc"].as_u64().is_some_and(|i| i > node.incarnation);
        let deadline = Instant::now() + Duration::from_secs(30);
        let l = loop {
            let l = lines(&out);
            if of_kind(&l, "frame").any(newer) {
                break l;
            }
            assert!(
                Instant::now() < deadline,
                "no frame from the renderer after incarnation {}: {:?}\n{}",
                node.incarnation,
                h.node("renderer"),
                std::fs::read_dir(h.log_dir())
                    .into_iter()
                    .flatten()
                    .flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with("renderer"))
                    .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
                    .collect::<Vec<_>>()
                    .join("\n---\n")
            );
            std::thread::sleep(Duration::from_millis(5));
        };
        let first = of_kind(&l, "frame")
            .find(|v| newer(v))
            .and_then(|v| v["pub"].as_u64())
            .unwrap_or(t0);
        kill_to_frame.push((first.saturating_sub(t0)) as f64 / 1e6);
        // Past the supervisor's stability threshold, so the next restart is immediate.
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(h);
    let (b50, b99) = (percentile(&mut bare, 50.0), percentile(&mut bare, 99.0));
    let (k50, k99) = (
        percentile(&mut kill_to_frame, 50.0),
        percentile(&mut kill_to_frame, 99.0),
    );
    rows.push(Row {
        measure: format!(
            "(render b) renderer SIGKILL → first frame of the new incarnation presented into the same window ({kills} kills)"
        ),
        p50: ms(k50),
        p99: ms(k99),
        baseline: format!(
            "bare start of the same drawing (spawn → GPU open → first frame read back → exit): p50 {} p99 {}",
            ms(b50),
            ms(b99)
        ),
        target: "< 500 ms".into(),
        verdict: verdict(k99 < 500.0, String::new()),
    });

    // (render d): frames mode at 1080p.
    let dir = tempfile::tempdir().expect("a scratch directory");
    let out = dir.path().join("times.jsonl");
    let renderer =
        "worlds = [\"main\"], target = \"offscreen\", width = 1920, height = 1080, rate_hz = 30.0";
    let window = "width = 1920, height = 1080, present = \"frames\"";
    let h = start(
        &config(
            1000,
            &drivers(
                &out,
                renderer,
                window,
                "renderer/frame",
                ", \"shown=window/shown\"",
            ),
        ),
        Some(&x),
        &["window", "renderer", "times", "world/main"],
    );
    wait_for(&out, "frames shown", |l| of_kind(l, "shown").count() > 10);
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(seconds) {
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(h);
    let l = lines(&out);
    let shown: Vec<&Value> = of_kind(&l, "shown").skip(5).collect();
    let mut latency: Vec<f64> = shown
        .iter()
        .filter_map(|v| {
            Some((v["shown"].as_u64()?.saturating_sub(v["pub"].as_u64()?)) as f64 / 1e6)
        })
        .collect();
    let mut blit: Vec<f64> = shown
        .iter()
        .filter_map(|v| Some(v["blit_us"].as_f64()? / 1e3))
        .collect();
    let frame = vec![7u8; 1920 * 1080 * 4];
    let mut copy = vec![0u8; frame.len()];
    let mut memcpy: Vec<f64> = (0..50)
        .map(|_| {
            let t = Instant::now();
            copy.copy_from_slice(std::hint::black_box(&frame));
            std::hint::black_box(&copy);
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    let (m50, m99) = (percentile(&mut memcpy, 50.0), percentile(&mut memcpy, 99.0));
    let (l50, l99) = (
        percentile(&mut latency, 50.0),
        percentile(&mut latency, 99.0),
    );
    rows.push(Row {
        measure: format!(
            "(render d) frames mode, 1920×1080: frame published on renderer/frame → shown in the window ({} frames)",
            latency.len()
        ),
        p50: ms(l50),
        p99: ms(l99),
        baseline: "the renderer's frame interval at 30 Hz: 33.3 ms".into(),
        target: "< one frame interval".into(),
        verdict: verdict(l50 < 33.3, String::new()),
    });
    let (bl50, bl99) = (percentile(&mut blit, 50.0), percentile(&mut blit, 99.0));
    rows.push(Row {
        measure: "(render d) … the window's CPU blit per frame (RGBA → window pixels), 1920×1080"
            .into(),
        p50: ms(bl50),
        p99: ms(bl99),
        baseline: format!(
            "memcpy of the same 8.3 MB frame: p50 {} p99 {}",
            ms(m50),
            ms(m99)
        ),
        target: "-".into(),
        verdict: format!("{:.1}× memcpy", bl50 / m50),
    });
}
