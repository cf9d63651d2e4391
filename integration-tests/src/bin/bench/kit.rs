//! (kit) The driver kit's costs, under a real runtime with `syncra-test-peer` nodes:
//!
//! - (kit a) a stream sample published → the consumer's event loop awake and reading it,
//!   beside the same consumer woken by its own blocking read (the raw ring consumer), in
//!   alternating blocks of 50 samples from one producer (500 samples/s), so that both see the
//!   same conditions;
//! - (kit b) a stop request → the driver exited (the control request's answer: the runtime
//!   answers once the process is gone), for a driver waiting in its event loop, beside a
//!   world (whose loop sleeps in `Node::sleep_until`);
//! - (kit c) a typed call (`Node::call` → `R::Response`) to a driver on the kit, answered in
//!   its event loop by `answer_with`, beside the same call to a node that answers as nodes did
//!   before the kit (a blocking `recv_timeout`, a hand `decode` and `reply`), in the same
//!   blocks from the same caller (`routing::measure`).

use std::time::{Duration, Instant};

use syncra_integration_tests::{Harness, percentile, workspace_bin};
use syncra_protocol::control::{ControlReply, ControlRequest};

use super::{Row, verdict};

fn peer_config(drivers: &[(&str, String)]) -> String {
    let peer = workspace_bin("syncra-test-peer");
    let mut c = String::from(
        "[runtime]\nwatch_interval_ms = 10000\n[supervisor]\nintensity = 1000\n[worlds]\nentities = 16\n",
    );
    for (name, args) in drivers {
        c.push_str(&format!(
            "[drivers.{name}]\ncommand = \"{}\"\nargs = [{args}]\n",
            peer.display()
        ));
    }
    c
}

fn quoted(args: &[String]) -> String {
    args.iter()
        .map(|a| format!("\"{a}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Publish → wake latencies (µs) of `samples` samples read by the consumer's own blocking
/// read and through its event loop, in alternating blocks of 50: (raw, events).
fn wake(samples: usize) -> (Vec<f64>, Vec<f64>) {
    let dir = tempfile::tempdir().expect("a scratch directory");
    let out = dir.path().join("bench.jsonl");
    let h = Harness::start(
        &peer_config(&[
            (
                "prod",
                quoted(&[
                    "producer".into(),
                    format!("out={}", dir.path().join("prod.jsonl").display()),
                    "stream=ticks".into(),
                    "policy=drop".into(),
                    "slots=64".into(),
                    "rate=500".into(),
                ]),
            ),
            (
                "bench",
                quoted(&[
                    "wake-bench".into(),
                    format!("out={}", out.display()),
                    "stream=prod/ticks".into(),
                    "mode=both".into(),
                    format!("samples={}", 2 * samples + 100),
                ]),
            ),
        ]),
        &[],
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        if let Some(v) = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v.get("raw_us").is_some() || v.get("subscribe_error").is_some())
        {
            let list = |k: &str| -> Vec<f64> {
                v[k].as_array()
                    .map(|a| a.iter().filter_map(|x| x.as_f64()).collect())
                    .unwrap_or_default()
            };
            let (raw, events) = (list("raw_us"), list("events_us"));
            assert!(
                !raw.is_empty() && !events.is_empty(),
                "the wake benchmark failed: {v}"
            );
            // The first raw block includes the consumer's attach: skip it.
            return (raw.into_iter().skip(50).collect(), events);
        }
        assert!(
            Instant::now() < deadline,
            "the wake benchmark did not finish:\n{}",
            h.output()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Stop → exited times (ms) of `node`, `rounds` times (started again between).
fn stops(h: &Harness, node: &str, rounds: usize) -> Vec<f64> {
    (0..rounds)
        .map(|i| {
            h.wait_ready_incarnation(node, i as u64 + 1);
            let t = Instant::now();
            match h.try_request(ControlRequest::Stop { node: node.into() }) {
                Some(ControlReply::Done { .. }) => {}
                other => panic!("stop {node}: {other:?}"),
            }
            let dt = t.elapsed().as_secs_f64() * 1e3;
            match h.try_request(ControlRequest::Start { node: node.into() }) {
                Some(ControlReply::Done { .. }) => {}
                other => panic!("start {node}: {other:?}"),
            }
            dt
        })
        .collect()
}

/// (kit a), (kit b) and (kit c).
pub(crate) fn all(samples: usize, rounds: usize, calls: usize, rows: &mut Vec<Row>) {
    let (mut raw, mut looped) = wake(samples);
    let (raw50, raw99) = (percentile(&mut raw, 50.0), percentile(&mut raw, 99.0));
    let (ev50, ev99) = (percentile(&mut looped, 50.0), percentile(&mut looped, 99.0));
    rows.push(Row {
        measure: format!(
            "(kit a) stream sample published → the consumer's event loop reads it ({samples} samples at 500/s)"
        ),
        p50: format!("{ev50:.1} µs"),
        p99: format!("{ev99:.1} µs"),
        baseline: format!("the consumer's own blocking read (raw ring consumer): p50 {raw50:.1} µs p99 {raw99:.1} µs"),
        target: "≤ 1.1× raw".into(),
        verdict: verdict(ev50 <= raw50 * 1.1, format!("{:.2}× raw", ev50 / raw50)),
    });

    let dir = tempfile::tempdir().expect("a scratch directory");
    let out = |n: &str| format!("out={}", dir.path().join(format!("{n}.jsonl")).display());
    let h = Harness::start(
        &peer_config(&[(
            "looper",
            quoted(&["looper".into(), out("looper"), "stream=nobody/ticks".into()]),
        )]),
        &[],
    );
    let mut driver = stops(&h, "looper", rounds);
    let mut world = stops(&h, "world/main", rounds);
    let (d50, d99) = (percentile(&mut driver, 50.0), percentile(&mut driver, 99.0));
    let (w50, w99) = (percentile(&mut world, 50.0), percentile(&mut world, 99.0));
    rows.push(Row {
        measure: format!(
            "(kit b) stop request → a driver waiting in its event loop has exited ({rounds} stops)"
        ),
        p50: format!("{d50:.2} ms"),
        p99: format!("{d99:.2} ms"),
        baseline: format!("a world (sleep_until loop): p50 {w50:.2} ms p99 {w99:.2} ms"),
        target: "< 10 ms (a polling driver took 83 ms)".into(),
        verdict: verdict(d99 < 10.0, String::new()),
    });

    let times = super::routing::measure(calls, None, true, false);
    let mut kit = times.kit.clone();
    let mut before = times.main().to_vec();
    let (k50, k99) = (percentile(&mut kit, 50.0), percentile(&mut kit, 99.0));
    let (b50, b99) = (percentile(&mut before, 50.0), percentile(&mut before, 99.0));
    rows.push(Row {
        measure: format!(
            "(kit c) typed call to a driver answering in its event loop (`answer_with`), main loop to main loop ({} calls)",
            kit.len()
        ),
        p50: format!("{k50:.1} µs"),
        p99: format!("{k99:.1} µs"),
        baseline: format!(
            "the same call to a node answering as before the kit (recv_timeout, decode, reply): p50 {b50:.1} µs p99 {b99:.1} µs"
        ),
        target: "no slower (p50 ≤ 1.05× before)".into(),
        verdict: verdict(k50 <= b50 * 1.05, format!("{:.2}× before", k50 / b50)),
    });
}
