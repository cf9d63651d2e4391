//! `syncra-bench`: the runtime's benchmark table (`just bench`, `cargo bench-all`).
//!
//! Every figure is printed beside a baseline measured in the same run. Run it from a release
//! build: it uses the `syncra` and `syncra-world` binaries next to itself.
//!
//! ```text
//! syncra-bench [--kills N] [--hangs N] [--starts N] [--worlds-large N] [--samples N] [--stops N]
//! syncra-bench --kit-only      only the driver kit's rows
//! syncra-bench --render-only [--renderer-kills 20] [--seconds 5]   only the window and renderer's
//! syncra-bench --sound-only [--audio-seconds 60] [--keys 200] [--sound-requests 100] [--audio-kills 20]
//! syncra-bench --sandbox-only [--sandbox-kills 40] [--tick-seconds 5]   the sandbox's cost
//! syncra-bench --hosts-only [--pings 2000] [--remote-calls 5000] [--remote-kills 20] [--stream-samples 1000]
//!                                             other hosts: the agent link, calls, restarts, streams
//!                                                                  only the audio and input drivers'
//! syncra-bench --ops-only [--reloads 50] [--swaps 10] [--dumps 20] [--page-events 30]
//!                                                                    reload, live swap, crash dumps, dashboard
//! syncra-bench --durable-only [--state-writes 200] [--state-kills 20]
//!                                       worlds' durable state: write per tick, resume, ticks lost
//! syncra-bench --xr-only [--xr-seconds 60] [--xr-kills 10]
//!                   the XR driver on the simulated headset: pose → eye frame, missed frames, restarts
//! ```

#![allow(
    clippy::disallowed_methods,
    reason = "the benchmark starts the real binaries"
)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use syncra_integration_tests::{Harness, percentile, send, workspace_bin};
use syncra_protocol::NodeState;
use syncra_protocol::status::EventKind;
use syncra_runtime::{ControlClient, EventStream};

#[path = "bench/durable.rs"]
mod durable;
#[path = "bench/hosts.rs"]
mod hosts;
#[path = "bench/kit.rs"]
mod kit;
#[path = "bench/ops.rs"]
mod ops;
#[path = "bench/render.rs"]
mod render;
#[path = "bench/routing.rs"]
mod routing;
#[path = "bench/sandbox.rs"]
mod sandbox;
#[path = "bench/sound.rs"]
mod sound;
#[path = "bench/streams.rs"]
mod streams;
#[path = "bench/xr.rs"]
mod xr;

struct Row {
    measure: String,
    p50: String,
    p99: String,
    baseline: String,
    target: String,
    verdict: String,
}

fn ms(d: f64) -> String {
    format!("{d:.2} ms")
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn config(watch_ms: u64, extra: &str) -> String {
    format!(
        "[runtime]\nwatch_interval_ms = {watch_ms}\nabort_grace_ms = 200\n[supervisor]\nintensity = 1000000\nstable_after_ms = 50\nbackoff_jitter = 0.0\n{extra}\n"
    )
}

/// Spawn the world standalone and time spawn → its first line on stdout.
fn bare_spawn_to_first_line(n: usize) -> Vec<f64> {
    let world = workspace_bin("syncra-world");
    (0..n)
        .map(|_| {
            let t0 = Instant::now();
            let mut child = Command::new(&world)
                .args(["--standalone", "--entities", "256"])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn world");
            let mut line = String::new();
            BufReader::new(child.stdout.as_mut().unwrap())
                .read_line(&mut line)
                .expect("first line");
            let dt = t0.elapsed().as_secs_f64() * 1e3;
            let _ = child.kill();
            let _ = child.wait();
            dt
        })
        .collect()
}

async fn events(h: &Harness) -> EventStream {
    ControlClient::connect(&h.run_dir())
        .await
        .expect("connect")
        .subscribe()
        .await
        .expect("subscribe")
}

/// Read events until `f` accepts one; the time it arrived and what `f` returned.
async fn until<T>(
    stream: &mut EventStream,
    mut f: impl FnMut(&syncra_protocol::status::LifecycleEvent) -> Option<T>,
) -> (Instant, T) {
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .expect("an event in time")
            .expect("event");
        if let Some(v) = f(&ev) {
            return (Instant::now(), v);
        }
    }
}

/// (a) SIGKILL → replacement ready, without and with a warm spare.
fn kill_latency(rt: &tokio::runtime::Runtime, kills: usize, spare: bool, rows: &mut Vec<Row>) {
    let mut bare = bare_spawn_to_first_line(kills);
    let extra = format!("warm_spare = {spare}\n[worlds]\nentities = 256\n");
    let h = Harness::start(&config(1000, &extra), &[]);
    h.wait_ready(&["world/main"]);
    let mut stream = rt.block_on(events(&h));
    let (mut total, mut startup, mut machinery) = (Vec::new(), Vec::new(), Vec::new());
    let mut spares_used = 0;
    for _ in 0..kills {
        // Past the stability threshold, so the restart is immediate (no backoff); with a
        // spare, also until the next spare is waiting.
        std::thread::sleep(Duration::from_millis(60));
        let node = if spare {
            h.wait_until("a warm spare", Duration::from_secs(10), |s| {
                s.nodes
                    .iter()
                    .find(|n| n.name.to_string() == "world/main" && n.spare_pid.is_some())
                    .cloned()
            })
        } else {
            h.node("world/main")
        };
        let t0 = Instant::now();
        send(node.pid.unwrap(), libc::SIGKILL);
        let (t1, up_ms) = rt.block_on(until(&mut stream, |ev| match ev.what {
            EventKind::Up { startup_ms } if ev.incarnation > node.incarnation => Some(startup_ms),
            _ => None,
        }));
        let dt = (t1 - t0).as_secs_f64() * 1e3;
        if spare && h.node("world/main").pid == node.spare_pid {
            spares_used += 1;
        }
        total.push(dt);
        startup.push(up_ms);
        machinery.push(dt - up_ms);
    }
    let (b50, b99) = (percentile(&mut bare, 50.0), percentile(&mut bare, 99.0));
    let (t50, t99) = (percentile(&mut total, 50.0), percentile(&mut total, 99.0));
    let label = if spare {
        format!(" with `warm_spare = true` ({spares_used} of {kills} restarts used the spare)")
    } else {
        String::new()
    };
    rows.push(Row {
        measure: format!("(a) SIGKILL → replacement ready ({kills} kills){label}"),
        p50: ms(t50),
        p99: ms(t99),
        baseline: format!(
            "bare spawn → first line of syncra-world: p50 {} p99 {}",
            ms(b50),
            ms(b99)
        ),
        target: "≤ baseline + 2 ms at p50".into(),
        verdict: verdict(t50 <= b50 + 2.0, format!("+{:.2} ms", t50 - b50)),
    });
    rows.push(Row {
        measure: if spare {
            "(a) … of which boot frame → ready (join, ready: the spare had started already)".into()
        } else {
            "(a) … of which spawn → ready (fork, exec, join, ready)".into()
        },
        p50: ms(percentile(&mut startup, 50.0)),
        p99: ms(percentile(&mut startup, 99.0)),
        baseline: "the runtime's own figure (Up event)".into(),
        target: "-".into(),
        verdict: "-".into(),
    });
    rows.push(Row {
        measure: "(a) … restart machinery (exit seen, decided, spawn begun)".into(),
        p50: ms(percentile(&mut machinery, 50.0)),
        p99: ms(percentile(&mut machinery, 99.0)),
        baseline: "kill → ready minus spawn → ready".into(),
        target: "≤ 2 ms at p50".into(),
        verdict: verdict(percentile(&mut machinery, 50.0) <= 2.0, String::new()),
    });
}

/// (b) SIGSTOP → detected as hung.
fn hang_detection(rt: &tokio::runtime::Runtime, hangs: usize, rows: &mut Vec<Row>) {
    let watch = 100u64;
    let deadline = watch * 3;
    let h = Harness::start(&config(watch, "[worlds]\nentities = 256\n"), &[]);
    h.wait_ready(&["world/main"]);
    let mut stream = rt.block_on(events(&h));
    let mut detect = Vec::new();
    for _ in 0..hangs {
        let node = h.node("world/main");
        let t0 = Instant::now();
        send(node.pid.unwrap(), libc::SIGSTOP);
        let (t1, ()) = rt.block_on(until(&mut stream, |ev| {
            matches!(ev.what, EventKind::Hung { .. }).then_some(())
        }));
        detect.push((t1 - t0).as_secs_f64() * 1e3);
        rt.block_on(until(&mut stream, |ev| {
            (matches!(ev.what, EventKind::Up { .. }) && ev.incarnation > node.incarnation)
                .then_some(())
        }));
    }
    let (p50, p99) = (percentile(&mut detect, 50.0), percentile(&mut detect, 99.0));
    let limit = (deadline + watch) as f64;
    rows.push(Row {
        measure: format!("(b) SIGSTOP → hang detected ({hangs} hangs)"),
        p50: ms(p50),
        p99: ms(p99),
        baseline: format!("configured deadline {deadline} ms (interval {watch} ms × 3 beats)"),
        target: format!("≤ deadline + one interval = {limit} ms"),
        verdict: verdict(p99 <= limit, String::new()),
    });
}

fn pids_alive(pids: &[u32]) -> usize {
    pids.iter()
        .filter(|p| Path::new(&format!("/proc/{p}")).exists() && !is_zombie(**p))
        .count()
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .is_some_and(|r| r.trim_start().starts_with('Z'))
    })
}

/// Start `syncra run --worlds n`; time start → all ready (status polled every ms).
fn start_all(n: usize, entities: u32) -> (Harness, f64) {
    let t0 = Instant::now();
    let h = Harness::start(
        &config(1000, &format!("[worlds]\nentities = {entities}\n")),
        &["--worlds", &n.to_string()],
    );
    loop {
        if let Some(s) = h.try_status()
            && s.nodes.len() == n
            && s.nodes.iter().all(|v| v.state == NodeState::Ready)
        {
            return (h, t0.elapsed().as_secs_f64() * 1e3);
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "worlds did not come up:\n{}",
            h.output()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// (c) 4 worlds: start → all ready, SIGTERM → all exited.
fn four_worlds(starts: usize, rows: &mut Vec<Row>) {
    let (mut up, mut down) = (Vec::new(), Vec::new());
    let mut bare = bare_spawn_to_first_line(starts);
    for _ in 0..starts {
        let (mut h, dt) = start_all(4, 256);
        up.push(dt);
        let pids: Vec<u32> = h
            .try_status()
            .unwrap()
            .nodes
            .iter()
            .filter_map(|n| n.pid)
            .collect();
        let t0 = Instant::now();
        h.signal(libc::SIGTERM);
        let status = h.wait_exit(Duration::from_secs(30));
        assert!(status.success() && pids_alive(&pids) == 0);
        down.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    let (u50, u99) = (percentile(&mut up, 50.0), percentile(&mut up, 99.0));
    rows.push(Row {
        measure: format!("(c) `syncra run --worlds 4` → all ready ({starts} runs)"),
        p50: ms(u50),
        p99: ms(u99),
        baseline: format!(
            "one bare world spawn → first line: p50 {}",
            ms(percentile(&mut bare, 50.0))
        ),
        target: "< 150 ms".into(),
        verdict: verdict(u50 < 150.0, String::new()),
    });
    rows.push(Row {
        measure: "(c) SIGTERM → runtime and 4 worlds exited".into(),
        p50: ms(percentile(&mut down, 50.0)),
        p99: ms(percentile(&mut down, 99.0)),
        baseline: "-".into(),
        target: "-".into(),
        verdict: "-".into(),
    });
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    // After the command: state(0) ppid(1) ... utime(11) stime(12).
    fields
        .get(11)
        .and_then(|u| u.parse::<u64>().ok())
        .unwrap_or(0)
        + fields
            .get(12)
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0)
}

/// (d) many worlds: start → ready, memory, idle CPU.
fn many_worlds(n: usize, rows: &mut Vec<Row>) {
    // Baseline: one runtime with one world, and a bare standalone world.
    let (one, one_up) = start_all(1, 256);
    std::thread::sleep(Duration::from_secs(1));
    let one_rss = rss_kb(one.pid());
    drop(one);
    let mut bare = Command::new(workspace_bin("syncra-world"))
        .args(["--standalone", "--entities", "256"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let bare_rss = rss_kb(bare.id());
    let _ = bare.kill();
    let _ = bare.wait();

    let (h, up) = start_all(n, 256);
    std::thread::sleep(Duration::from_secs(2));
    let pids: Vec<u32> = h
        .try_status()
        .unwrap()
        .nodes
        .iter()
        .filter_map(|v| v.pid)
        .collect();
    let mut world_rss: Vec<f64> = pids.iter().map(|p| rss_kb(*p) as f64 / 1024.0).collect();
    let runtime_rss = rss_kb(h.pid()) as f64 / 1024.0;
    let clk = rustix::param::clock_ticks_per_second() as f64;
    let window = Duration::from_secs(10);
    let before = cpu_ticks(h.pid());
    std::thread::sleep(window);
    let cpu = (cpu_ticks(h.pid()) - before) as f64 / clk / window.as_secs_f64() * 100.0;
    let worlds_before: u64 = pids.iter().map(|p| cpu_ticks(*p)).sum();
    std::thread::sleep(Duration::from_secs(2));
    let worlds_cpu =
        (pids.iter().map(|p| cpu_ticks(*p)).sum::<u64>() - worlds_before) as f64 / clk / 2.0
            * 100.0;

    rows.push(Row {
        measure: format!("(d) `--worlds {n}` → all ready"),
        p50: ms(up),
        p99: "(one run)".into(),
        baseline: format!("`--worlds 1` → ready: {}", ms(one_up)),
        target: "< 3 s".into(),
        verdict: verdict(up < 3000.0, String::new()),
    });
    rows.push(Row {
        measure: format!("(d) runtime RSS with {n} worlds"),
        p50: format!("{runtime_rss:.1} MB"),
        p99: "-".into(),
        baseline: format!("runtime with 1 world: {:.1} MB", one_rss as f64 / 1024.0),
        target: "-".into(),
        verdict: "-".into(),
    });
    let (w50, wmax) = (
        percentile(&mut world_rss, 50.0),
        percentile(&mut world_rss, 100.0),
    );
    rows.push(Row {
        measure: "(d) world RSS (256 entities, 60 Hz)".into(),
        p50: format!("{w50:.1} MB"),
        p99: format!("max {wmax:.1} MB"),
        baseline: format!(
            "standalone world, no cluster: {:.1} MB",
            bare_rss as f64 / 1024.0
        ),
        target: "< 20 MB".into(),
        verdict: verdict(wmax < 20.0, String::new()),
    });
    rows.push(Row {
        measure: format!(
            "(d) runtime CPU, idle, {n} worlds ticking ({}s window)",
            window.as_secs()
        ),
        p50: format!("{cpu:.2} %"),
        p99: "-".into(),
        baseline: format!("the {n} worlds themselves: {worlds_cpu:.1} % of one core"),
        target: "< 1 %".into(),
        verdict: verdict(cpu < 1.0, String::new()),
    });
}

fn verdict(ok: bool, note: String) -> String {
    let v = if ok { "met" } else { "MISSED" };
    if note.is_empty() {
        v.into()
    } else {
        format!("{v} ({note})")
    }
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("--ring-child") {
        return streams::run_child(&argv[2..]);
    }
    let only_streams = argv.iter().any(|a| a == "--streams-only");
    let only_calls = argv.iter().any(|a| a == "--calls-only");
    let only_restarts = argv.iter().any(|a| a == "--restarts-only");
    // The baseline's two ends (`hosts::agent_link` runs this binary on each host).
    if let Some(i) = argv.iter().position(|a| a == "--tcp-echo") {
        return hosts::tcp_echo(&argv[i + 1]);
    }
    if let Some(i) = argv.iter().position(|a| a == "--tcp-ping") {
        return hosts::tcp_ping(
            &argv[i + 1],
            argv[i + 2].parse().unwrap_or(1000),
            argv.get(i + 3).and_then(|s| s.parse().ok()).unwrap_or(1),
        );
    }
    if argv.iter().any(|a| a == "--hosts-only") {
        let mut rows = Vec::new();
        all_hosts(&mut rows);
        return print(rows);
    }
    if argv.iter().any(|a| a == "--durable-only") {
        let mut rows = Vec::new();
        all_durable(&mut rows);
        return print(rows);
    }
    if argv.iter().any(|a| a == "--xr-only") {
        let mut rows = Vec::new();
        all_xr(&mut rows);
        return print(rows);
    }
    if argv.iter().any(|a| a == "--ops-only") {
        let mut rows = Vec::new();
        all_ops(&mut rows);
        return print(rows);
    }
    if argv.iter().any(|a| a == "--kit-only") {
        let mut rows = Vec::new();
        kit::all(
            arg("--samples", 2000),
            arg("--stops", 20),
            arg("--calls", 5000),
            &mut rows,
        );
        return print(rows);
    }
    if argv.iter().any(|a| a == "--render-only") {
        let mut rows = Vec::new();
        render::all(
            arg("--renderer-kills", 20),
            arg("--seconds", 5) as u64,
            &mut rows,
        );
        return print(rows);
    }
    if argv.iter().any(|a| a == "--sandbox-only") {
        let mut rows = Vec::new();
        sandbox::all(
            arg("--sandbox-kills", 40),
            arg("--tick-seconds", 5) as u64,
            &mut rows,
        );
        return print(rows);
    }
    if argv.iter().any(|a| a == "--sound-only") {
        let mut rows = Vec::new();
        sound::all(
            arg("--audio-seconds", 60) as u64,
            arg("--keys", 200),
            arg("--sound-requests", 100),
            arg("--audio-kills", 20),
            &mut rows,
        );
        return print(rows);
    }
    let kills = arg("--kills", 60);
    let hangs = arg("--hangs", 10);
    let starts = arg("--starts", 10);
    let large = arg("--worlds-large", 64);
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    eprintln!(
        "syncra-bench: {cpus} CPUs; kills {kills}, hangs {hangs}, starts {starts}, large {large} worlds"
    );
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut rows = Vec::new();
    if !only_streams && !only_calls {
        kill_latency(&tokio, kills, false, &mut rows);
        kill_latency(&tokio, kills, true, &mut rows);
    }
    if only_restarts {
        return print(rows);
    }
    if !only_streams && !only_calls {
        hang_detection(&tokio, hangs, &mut rows);
        four_worlds(starts, &mut rows);
        many_worlds(large, &mut rows);
    }
    if !only_calls {
        streams::all(&mut rows, arg("--rounds", 20_000), arg("--frames", 200));
    }
    routing::routed_call(arg("--calls", 5_000), &mut rows);
    all_hosts(&mut rows);
    if !only_calls {
        kit::all(
            arg("--samples", 2000),
            arg("--stops", 20),
            arg("--calls", 5000),
            &mut rows,
        );
        render::all(
            arg("--renderer-kills", 20),
            arg("--seconds", 5) as u64,
            &mut rows,
        );
        sound::all(
            arg("--audio-seconds", 60) as u64,
            arg("--keys", 200),
            arg("--sound-requests", 100),
            arg("--audio-kills", 20),
            &mut rows,
        );
        sandbox::all(
            arg("--sandbox-kills", 40),
            arg("--tick-seconds", 5) as u64,
            &mut rows,
        );
        all_ops(&mut rows);
        all_durable(&mut rows);
        all_xr(&mut rows);
    }
    print(rows);
}

/// Every row about the XR driver.
fn all_xr(rows: &mut Vec<Row>) {
    xr::all(arg("--xr-seconds", 60) as u64, arg("--xr-kills", 10), rows);
}

/// Every row about worlds' durable state.
fn all_durable(rows: &mut Vec<Row>) {
    durable::all(arg("--state-writes", 200), arg("--state-kills", 20), rows);
}

/// Every row about operations: reload, live swap, crash dumps.
fn all_ops(rows: &mut Vec<Row>) {
    ops::all(
        arg("--reloads", 50),
        arg("--swaps", 10),
        arg("--dumps", 20),
        arg("--page-events", 30),
        rows,
    );
}

/// Every row about other hosts.
fn all_hosts(rows: &mut Vec<Row>) {
    let tls = hosts::agent_link(arg("--pings", 2000), rows);
    hosts::remote_calls(arg("--remote-calls", 5000), tls, rows);
    hosts::remote_restarts(arg("--remote-kills", 20), rows);
    hosts::remote_streams(arg("--stream-samples", 1000), rows);
}

fn print(rows: Vec<Row>) {
    println!("| measure | p50 | p99 | baseline (same run) | target | verdict |");
    println!("|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            r.measure, r.p50, r.p99, r.baseline, r.target, r.verdict
        );
    }
}
