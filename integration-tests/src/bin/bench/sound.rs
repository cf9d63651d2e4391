//! (audio, input) The audio and input drivers under a real runtime:
//!
//! - (sound a) audio period deadline misses over `seconds` at 256-frame periods, 48 kHz, on
//!   the null output (these machines have no sound card), with nothing else running and with
//!   both cores loaded by busy threads — beside a bare thread in this process keeping the
//!   same deadlines with the same rule, in the same minute;
//! - (input b) a key typed into the window (Xvfb, xdotool) → the `move` action read by a
//!   subscriber node, from the window driver's publish of the key, beside a one-way hop over
//!   a Unix socketpair;
//! - (sound c) a sound requested by a node (a call) → the publish of the first
//!   `audio/samples` block holding it, beside a get-info call's round trip to the driver;
//! - (sound d) audio driver SIGKILL → the looping sound audible again in `audio/samples`,
//!   beside a bare start of the same binary (`--standalone`, spawn → ready).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use syncra_integration_tests::picture::Xvfb;
use syncra_integration_tests::{Harness, Options, jsonl as lines, percentile, send, workspace_bin};

use super::{Row, config, ms, verdict};

fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

fn assets() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/sounds")
}

/// The audio driver on its null output (`settings` added), with no sound card visible.
fn audio(dir: &Path, settings: &str) -> String {
    let empty = dir.join("no-sound-card.conf");
    std::fs::write(&empty, "").expect("a scratch file");
    format!(
        "[drivers.audio]\ncommand = \"{}\"\nenv = {{ ALSA_CONFIG_PATH = \"{}\" }}\n\
         settings = {{ assets = \"{}\"{settings} }}\n",
        workspace_bin("syncra-audio").display(),
        empty.display(),
        assets().display()
    )
}

fn peer(name: &str, args: &[String]) -> String {
    let args: Vec<String> = args.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "[drivers.{name}]\ncommand = \"{}\"\nargs = [{}]\n",
        workspace_bin("syncra-test-peer").display(),
        args.join(", ")
    )
}

fn start(config: &str, env: Vec<(String, String)>, nodes: &[&str]) -> Harness {
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

fn call(h: &Harness, node: &str, tag: &str, body: &str) -> Value {
    let out = h.cli(&["call", node, tag, body]);
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

fn wait_for(path: &Path, what: &str, f: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let l = lines(path);
        if f(&l) {
            return l;
        }
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A bare thread keeping 256-frame deadlines at 48 kHz for `seconds`, with the rule the null
/// output uses (a period finished more than an eighth of a period after its turn to play is
/// a miss, and the clock restarts): its misses and its wake-up lateness (µs).
fn bare_periods(seconds: u64) -> std::thread::JoinHandle<(u64, Vec<f64>)> {
    std::thread::spawn(move || {
        let period = Duration::from_secs_f64(256.0 / 48_000.0);
        let mut start = Instant::now();
        let mut played = 0u32;
        let (mut misses, mut late) = (0u64, Vec::new());
        let end = Instant::now() + Duration::from_secs(seconds);
        let mut woke_for = None;
        while Instant::now() < end {
            let done = Instant::now();
            if let Some(wake) = woke_for {
                late.push(done.saturating_duration_since(wake).as_secs_f64() * 1e6);
            }
            let due = start + period * played;
            if done > due + period / 8 && played > 0 {
                misses += 1;
                start = done;
                played = 0;
            }
            played += 1;
            let wake = start + period * (played - 1);
            woke_for = Some(wake);
            if let Some(d) = wake.checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            }
        }
        (misses, late)
    })
}

/// (sound a) at rest or with every core busy.
fn deadlines(seconds: u64, loaded: bool, rows: &mut Vec<Row>) {
    let dir = tempfile::tempdir().expect("a scratch directory");
    let h = start(
        &config(
            1000,
            &format!(
                "{}[worlds]\nentities = 4\n",
                audio(dir.path(), ", period_frames = 256, sample_rate = 48000")
            ),
        ),
        Vec::new(),
        &["audio"],
    );
    call(
        &h,
        "audio",
        "syncra.audio.play/1",
        r#"{"id":1,"sound":"hum","looping":true}"#,
    );
    let stop = Arc::new(AtomicBool::new(false));
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let busy: Vec<_> = (0..if loaded { cpus } else { 0 })
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut x = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                    std::hint::black_box(x);
                }
            })
        })
        .collect();
    let before = call(&h, "audio", "syncra.audio.get-info/1", "null");
    let bare = bare_periods(seconds);
    std::thread::sleep(Duration::from_secs(seconds));
    let after = call(&h, "audio", "syncra.audio.get-info/1", "null");
    let (bare_misses, mut late) = bare.join().expect("the bare loop");
    stop.store(true, Ordering::Relaxed);
    for b in busy {
        let _ = b.join();
    }
    let n = |v: &Value, k: &str| v[k].as_u64().unwrap_or(0);
    let misses = n(&after, "deadline_misses") - n(&before, "deadline_misses");
    let periods = (n(&after, "frames") - n(&before, "frames")) / 256;
    rows.push(Row {
        measure: format!(
            "(sound a) audio deadline misses in {seconds} s, 256-frame periods at 48 kHz (null output){}",
            if loaded { ", both cores loaded by busy threads" } else { ", machine otherwise idle" }
        ),
        p50: format!("{misses} misses / {periods} periods"),
        p99: "-".into(),
        baseline: format!(
            "bare thread keeping the same deadlines: {bare_misses} misses; its wake-up lateness p50 {:.0} µs, p99 {:.0} µs",
            percentile(&mut late, 50.0),
            percentile(&mut late, 99.0)
        ),
        target: if loaded { "reported".into() } else { "0".into() },
        verdict: if loaded {
            format!("{misses} ({:.3} %)", misses as f64 * 100.0 / periods.max(1) as f64)
        } else {
            verdict(misses == 0, String::new())
        },
    });
}

/// One-way hop over a Unix socketpair (half a ping-pong), µs.
fn socket_hop(n: usize) -> Vec<f64> {
    let (mut a, mut b) = UnixStream::pair().expect("a socketpair");
    let echo = std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while b.read_exact(&mut buf).is_ok() {
            if b.write_all(&buf).is_err() {
                break;
            }
        }
    });
    let mut buf = [0u8; 64];
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        a.write_all(&buf).expect("write");
        a.read_exact(&mut buf).expect("read");
        out.push(t.elapsed().as_secs_f64() * 1e6 / 2.0);
    }
    drop(a);
    let _ = echo.join();
    out
}

/// (input b)
fn input_latency(keys: usize, rows: &mut Vec<Row>) {
    let x = Xvfb::start();
    let dir = tempfile::tempdir().expect("a scratch directory");
    let out = dir.path().join("actions.jsonl");
    let cfg = format!(
        "[drivers.window]\ncommand = \"{}\"\nsettings = {{ width = 320, height = 240, present = \"frames\" }}\n\
         [drivers.input]\ncommand = \"{}\"\nsettings = {{ gamepads = \"none\" }}\n{}\
         [worlds]\nentities = 4\n",
        workspace_bin("syncra-window").display(),
        workspace_bin("syncra-input").display(),
        peer(
            "log",
            &["action-log".into(), format!("out={}", out.display())]
        ),
    );
    let h = start(
        &config(1000, &cfg),
        vec![("DISPLAY".into(), x.display.clone())],
        &["window", "input", "log"],
    );
    let id = h
        .wait_until("the window", Duration::from_secs(30), |_| {
            h.tap("window/identity")
                .and_then(|t| t["value"]["x11_window"].as_u64())
                .filter(|id| *id != 0)
        })
        .to_string();
    x.xdotool(&["windowfocus", "--sync", &id]).expect("focus");
    // Each d and a, down and up, changes `move`: four actions per two keys.
    let text: String = "da".repeat(keys / 2);
    x.xdotool(&["type", "--delay", "15", &text])
        .expect("typing");
    let want = keys * 2;
    let l = wait_for(&out, "the typed keys' actions", |l| {
        l.iter().filter(|v| v["k"] == "action").count() >= want * 9 / 10
    });
    drop(h);
    let mut lat: Vec<f64> = l
        .iter()
        .filter(|v| v["k"] == "action")
        .filter_map(|v| v["lat_ns"].as_f64())
        .map(|n| n / 1e6)
        .collect();
    let mut hop = socket_hop(10_000);
    let p99 = percentile(&mut lat, 99.0);
    rows.push(Row {
        measure: format!(
            "(input b) key typed into the window → `move` action read by a subscriber node ({} actions from {keys} keys, Xvfb)",
            lat.len()
        ),
        p50: ms(percentile(&mut lat, 50.0)),
        p99: ms(p99),
        baseline: format!(
            "one-way hop over a Unix socketpair: p50 {:.1} µs, p99 {:.1} µs",
            percentile(&mut hop, 50.0),
            percentile(&mut hop, 99.0)
        ),
        target: "< 1 ms at p99".into(),
        verdict: verdict(p99 < 1.0, String::new()),
    });
}

/// (sound c)
fn request_latency(n: usize, rows: &mut Vec<Row>) {
    let dir = tempfile::tempdir().expect("a scratch directory");
    let out = dir.path().join("sound.jsonl");
    let cfg = format!(
        "{}{}[worlds]\nentities = 4\n",
        audio(dir.path(), ""),
        peer(
            "req",
            &[
                "sound-latency".into(),
                format!("out={}", out.display()),
                "sound=jump".into(),
                format!("n={n}"),
            ]
        )
    );
    let h = start(&config(1000, &cfg), Vec::new(), &["audio", "req"]);
    let l = wait_for(&out, "the requests", |l| l.iter().any(|v| v["k"] == "done"));
    drop(h);
    let sounds: Vec<&Value> = l.iter().filter(|v| v["k"] == "sound").collect();
    let of = |k: &str| -> Vec<f64> {
        sounds
            .iter()
            .filter_map(|v| Some((v[k].as_u64()? as f64 - v["request_ns"].as_u64()? as f64) / 1e6))
            .collect()
    };
    let mut published = of("published_ns");
    let mut call: Vec<f64> = sounds
        .iter()
        .filter_map(|v| v["call_ns"].as_f64())
        .map(|n| n / 1e6)
        .collect();
    rows.push(Row {
        measure: format!(
            "(sound c) sound requested (a call) → first `audio/samples` block holding it published ({} requests, null output, 256-frame periods)",
            sounds.len()
        ),
        p50: ms(percentile(&mut published, 50.0)),
        p99: ms(percentile(&mut published, 99.0)),
        baseline: format!(
            "get-info call round trip to the audio driver: p50 {}, p99 {}; one period is {}",
            ms(percentile(&mut call, 50.0)),
            ms(percentile(&mut call, 99.0)),
            ms(256.0 / 48.0)
        ),
        target: "-".into(),
        verdict: "reported".into(),
    });
}

/// Spawn → ready of `syncra-audio --standalone`, ms.
fn bare_start() -> f64 {
    let t = Instant::now();
    let mut child = Command::new(workspace_bin("syncra-audio"))
        .args(["--standalone", "--set", "output=\"null\""])
        .arg("--set")
        .arg(format!("assets=\"{}\"", assets().display()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("syncra-audio");
    let stderr = child.stderr.take().expect("stderr");
    let mut took = f64::NAN;
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        if line.contains("ready") {
            took = t.elapsed().as_secs_f64() * 1e3;
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    took
}

/// (sound d)
fn kill_to_audible(kills: usize, rows: &mut Vec<Row>) {
    let dir = tempfile::tempdir().expect("a scratch directory");
    let out = dir.path().join("grab.jsonl");
    let cfg = format!(
        "{}{}[worlds]\nentities = 4\n",
        audio(dir.path(), ""),
        peer(
            "grab",
            &[
                "audio-grab".into(),
                "stream=audio/samples".into(),
                format!("out={}", out.display()),
                "window=1".into(),
            ]
        )
    );
    let h = start(&config(1000, &cfg), Vec::new(), &["audio", "grab"]);
    call(
        &h,
        "audio",
        "syncra.audio.play/1",
        r#"{"id":1,"sound":"tone-440","looping":true}"#,
    );
    wait_for(&out, "the loop", |l| {
        l.iter().any(|v| v["peak"].as_f64() > Some(0.3))
    });
    let mut gaps = Vec::new();
    for _ in 0..kills {
        // Past the stability threshold (stable_after_ms = 50 here), so the restart is at once
        // (no backoff), as for a driver that had been playing a while.
        std::thread::sleep(Duration::from_millis(60));
        let inc = h.node("audio").incarnation;
        let pid = h.node("audio").pid.expect("a pid");
        let skip = lines(&out).len();
        let killed = monotonic_ns();
        send(pid, libc::SIGKILL);
        let l = wait_for(&out, "the loop back", |l| {
            l.iter()
                .skip(skip)
                .any(|v| v["inc"].as_u64() == Some(inc + 1) && v["peak"].as_f64() > Some(0.1))
        });
        if let Some(v) = l
            .iter()
            .skip(skip)
            .find(|v| v["inc"].as_u64() == Some(inc + 1) && v["peak"].as_f64() > Some(0.1))
        {
            gaps.push((v["pub"].as_u64().unwrap_or(killed) - killed) as f64 / 1e6);
        }
    }
    drop(h);
    let mut bare: Vec<f64> = (0..kills.min(10)).map(|_| bare_start()).collect();
    rows.push(Row {
        measure: format!(
            "(sound d) audio driver SIGKILL → the looping sound audible again in audio/samples ({kills} kills)"
        ),
        p50: ms(percentile(&mut gaps, 50.0)),
        p99: ms(percentile(&mut gaps, 99.0)),
        baseline: format!(
            "bare start of the same binary (--standalone, spawn → ready): p50 {}",
            ms(percentile(&mut bare, 50.0))
        ),
        target: "-".into(),
        verdict: "reported".into(),
    });
}

/// Every audio and input row.
pub(crate) fn all(seconds: u64, keys: usize, requests: usize, kills: usize, rows: &mut Vec<Row>) {
    deadlines(seconds, false, rows);
    deadlines(seconds, true, rows);
    input_latency(keys, rows);
    request_latency(requests, rows);
    kill_to_audible(kills, rows);
}
