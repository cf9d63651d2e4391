//! (streams c) A call by name routed through the runtime, beside a direct ractor_cluster call
//! between the same two processes. Both run in two `syncra-test-peer` nodes under a real
//! runtime: `caller` calls `echo` by name through the runtime's router — from a task on its
//! link thread to a handler on the echo's link thread (`Node::spawn` + `Node::call_async` →
//! `Node::serve_calls`), and from its main loop to the echo's main loop (`Node::call` →
//! `Node::recv_timeout`) — and over a second, direct ractor_cluster link between the same two
//! processes (an actor call from the thread driving the caller's runtime to an actor that
//! answers at once): see `peer/direct.rs`. The link-thread call has the direct call's shape
//! (one thread on each side), so it is the one held to the target.

use std::time::{Duration, Instant};

use syncra_integration_tests::{Harness, percentile, workspace_bin};

use super::{Row, verdict};

/// Call round trips (µs) between two peers under a runtime started from this thread, whose
/// CPU affinity (inherited by the runtime and its children) is `cpus`.
pub(crate) struct Times {
    /// Routed, main loop to main loop.
    main: Vec<f64>,
    /// Routed, link thread to link thread.
    link: Vec<f64>,
    /// Direct ractor_cluster call.
    direct: Vec<f64>,
    /// Routed, main loop to a driver on the kit answering from its event loop
    /// (`answer_with`); empty unless asked for.
    pub(crate) kit: Vec<f64>,
}

impl Times {
    /// Routed, main loop to main loop (the callee decoding and replying by hand).
    pub(crate) fn main(&self) -> &[f64] {
        &self.main
    }
}

/// Measure; `kit`: also call a driver on the kit (the `looper` peer) in the same blocks;
/// `hub_only`: with `[runtime] direct_links = false` (every call through the hub).
pub(crate) fn measure(rounds: usize, cpus: Option<&[usize]>, kit: bool, hub_only: bool) -> Times {
    let dir = tempfile::tempdir().expect("a scratch directory");
    let peer = workspace_bin("syncra-test-peer");
    let out = dir.path().join("caller.jsonl");
    let sock = dir.path().join("direct.sock");
    // The direct baseline is a Unix socket between the two: they need the host's network
    // (a sandboxed node makes no Unix sockets).
    let config = format!(
        "[runtime]\nwatch_interval_ms = 1000\ndirect_links = {links}\n[worlds]\nentities = 16\n\
         [drivers.echo]\ncommand = \"{peer}\"\nargs = [\"echo\", \"out={echo_out}\", \"direct={sock}\"]\n\
         sandbox = {{ network = \"any\", write = [\"{dir}\"] }}\n\
         [drivers.caller]\ncommand = \"{peer}\"\nargs = [\"bench-caller\", \"out={out}\", \"to=echo\", \"direct={sock}\", \"rounds={rounds}\"{kit_to}]\n\
         sandbox = {{ network = \"any\", write = [\"{dir}\"] }}\n{looper}",
        dir = dir.path().display(),
        links = !hub_only,
        kit_to = if kit { ", \"kit_to=looper\"" } else { "" },
        looper = if kit {
            format!(
                "[drivers.looper]\ncommand = \"{}\"\nargs = [\"looper\", \"out={}\", \"stream=nobody/ticks\"]\n\
                 sandbox = {{ write = [\"{}\"] }}\n",
                peer.display(),
                dir.path().join("looper.jsonl").display(),
                dir.path().display()
            )
        } else {
            String::new()
        },
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
    Times {
        main: list("routed_us"),
        link: list("link_us"),
        direct: list("direct_us"),
        kit: list("kit_us"),
    }
}

fn row(label: &str, hub: bool, mut routed: Vec<f64>, direct: &[f64]) -> Row {
    let mut direct = direct.to_vec();
    let (r50, r99) = (percentile(&mut routed, 50.0), percentile(&mut routed, 99.0));
    let (d50, d99) = (percentile(&mut direct, 50.0), percentile(&mut direct, 99.0));
    // Through the hub, the runtime is one more node on the path out and on the path back, so
    // a hop is taken as one direct call. Over a direct link there is no hop.
    let (what, target, target_text) = if hub {
        (
            "call by name through the hub (`direct_links = false`)",
            2.2 * d50,
            format!(
                "≤ 1.2 × direct + one hop (one direct call) = {:.1} µs",
                2.2 * d50
            ),
        )
    } else {
        (
            "call by name over a direct link",
            1.2 * d50,
            format!("≤ 1.2 × direct = {:.1} µs", 1.2 * d50),
        )
    };
    Row {
        measure: format!("(links a) {what}, {} calls{label}", routed.len()),
        p50: format!("{r50:.1} µs"),
        p99: format!("{r99:.1} µs"),
        baseline: format!(
            "direct ractor_cluster call between the same two processes: p50 {d50:.1} µs p99 {d99:.1} µs"
        ),
        target: target_text,
        verdict: verdict(r50 <= target, format!("{:.2}× direct", r50 / d50)),
    }
}

pub(crate) fn routed_call(rounds: usize, rows: &mut Vec<Row>) {
    let mut both = |t: Times, hub: bool, label: &str| {
        rows.push(row(
            &format!(", link thread to link thread{label}"),
            hub,
            t.link,
            &t.direct,
        ));
        rows.push(row(
            &format!(", main loop to main loop{label}"),
            hub,
            t.main,
            &t.direct,
        ));
    };
    both(measure(rounds, None, false, false), false, "");
    both(measure(rounds, None, false, true), true, "");
    // The same with every process on one CPU: no wakeup of an idle CPU on the path, which is
    // what most of the time above is on a virtual machine.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus > 1 {
        both(
            measure(rounds, Some(&[0]), false, false),
            false,
            ", every process on one CPU",
        );
        both(
            measure(rounds, Some(&[0]), false, true),
            true,
            ", every process on one CPU",
        );
    }
}
