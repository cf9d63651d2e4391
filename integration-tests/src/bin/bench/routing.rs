//! (streams c) A call by name routed through the runtime, beside a direct ractor_cluster call
//! between the same two processes. Both run in two `syncra-test-peer` nodes under a real
//! runtime: `caller` calls `echo` by name with `Node::call` (main thread to main thread,
//! through the runtime's router), and over a second, direct ractor_cluster link between the
//! same two processes (an actor call from the thread driving the caller's runtime to an actor
//! that answers at once): see `peer/direct.rs`.

use std::time::{Duration, Instant};

use syncra_integration_tests::{Harness, percentile, workspace_bin};

use super::{Row, verdict};

/// Routed and direct call round trips (µs) between two peers under a runtime started from
/// this thread, whose CPU affinity (inherited by the runtime and its children) is `cpus`.
fn measure(rounds: usize, cpus: Option<&[usize]>) -> (Vec<f64>, Vec<f64>) {
    let dir = tempfile::tempdir().expect("a scratch directory");
    let peer = workspace_bin("syncra-test-peer");
    let out = dir.path().join("caller.jsonl");
    let sock = dir.path().join("direct.sock");
    let config = format!(
        "[runtime]\nwatch_interval_ms = 1000\n[worlds]\nentities = 16\n\
         [drivers.echo]\ncommand = \"{peer}\"\nargs = [\"echo\", \"out={echo_out}\", \"direct={sock}\"]\n\
         [drivers.caller]\ncommand = \"{peer}\"\nargs = [\"bench-caller\", \"out={out}\", \"to=echo\", \"direct={sock}\", \"rounds={rounds}\"]\n",
        peer = peer.display(),
        echo_out = dir.path().join("echo.jsonl").display(),
        sock = sock.display(),
        out = out.display(),
    );
    let all = rustix::thread::sched_getaffinity(None).expect("this thread's CPU affinity");
    if let Some(cpus) = cpus {
        let mut set = rustix::thread::CpuSet::new();
        cpus.iter().for_each(|&c| set.set(c));
        rustix::thread::sched_setaffinity(None, &set).expect("pinning to a CPU");
    }
    let h = Harness::start(&config, &[]);
    rustix::thread::sched_setaffinity(None, &all).expect("restoring the CPU affinity");
    let deadline = Instant::now() + Duration::from_secs(300);
    let report: serde_json::Value = loop {
        let line = std::fs::read_to_string(&out).unwrap_or_default();
        if let Some(v) = line
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v.get("routed_us").is_some() || v.get("error").is_some())
        {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "the routed-call benchmark did not finish; runtime output:\n{}",
            h.output()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(h);
    if let Some(e) = report.get("error") {
        panic!("the routed-call benchmark failed: {e}");
    }
    let list = |k: &str| -> Vec<f64> {
        report[k]
            .as_array()
            .map(|a| a.iter().filter_map(|x| x.as_f64()).collect())
            .unwrap_or_default()
    };
    (list("routed_us"), list("direct_us"))
}

fn row(label: &str, mut routed: Vec<f64>, mut direct: Vec<f64>) -> Row {
    let (r50, r99) = (percentile(&mut routed, 50.0), percentile(&mut routed, 99.0));
    let (d50, d99) = (percentile(&mut direct, 50.0), percentile(&mut direct, 99.0));
    // One hop: the runtime is one more node on the path out and on the path back, so a hop
    // is taken as one direct call.
    let target = 1.2 * d50 + d50;
    Row {
        measure: format!(
            "(streams c) call by name routed through the runtime, {} calls{label}",
            routed.len()
        ),
        p50: format!("{r50:.1} µs"),
        p99: format!("{r99:.1} µs"),
        baseline: format!(
            "direct ractor_cluster call between the same two processes: p50 {d50:.1} µs p99 {d99:.1} µs"
        ),
        target: format!("≤ 1.2 × direct + one hop (one direct call) = {target:.1} µs"),
        verdict: verdict(r50 <= target, format!("{:.2}× direct", r50 / d50)),
    }
}

pub(crate) fn routed_call(rounds: usize, rows: &mut Vec<Row>) {
    let (routed, direct) = measure(rounds, None);
    rows.push(row("", routed, direct));
    // The same with every process on one CPU: no wakeup of an idle CPU on the path, which is
    // what most of the time above is on a virtual machine.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus > 1 {
        let (routed, direct) = measure(rounds, Some(&[0]));
        rows.push(row(", every process on one CPU", routed, direct));
    }
}
