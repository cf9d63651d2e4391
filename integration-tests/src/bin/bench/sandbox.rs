//! The sandbox's cost (issue 12): spawn → ready of a world with its default sandbox beside the
//! same world with `sandbox = "off"`, restarted by SIGKILL in the same run; and a world's tick
//! time with and without it (its seccomp filter sees every system call).

use std::time::{Duration, Instant};

use syncra_integration_tests::{Harness, percentile, send};
use syncra_protocol::status::EventKind;

use super::{Row, config, events, ms, until, verdict};

/// (spawn → ready in ms, kill → ready in ms, tick µs samples) of `kills` restarts of a world
/// in `mode`.
fn run(
    rt: &tokio::runtime::Runtime,
    sandbox: &str,
    kills: usize,
    tick_seconds: u64,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let h = Harness::start(
        &config(
            1000,
            &format!("[sandbox]\n{sandbox}\n[worlds]\nentities = 256\n"),
        ),
        &[],
    );
    h.wait_ready(&["world/main"]);
    let mut stream = rt.block_on(events(&h));
    let (mut startup, mut total) = (Vec::new(), Vec::new());
    for _ in 0..kills {
        std::thread::sleep(Duration::from_millis(60));
        let node = h.node("world/main");
        let t0 = Instant::now();
        send(node.pid.unwrap(), libc::SIGKILL);
        let (t1, up_ms) = rt.block_on(until(&mut stream, |ev| match ev.what {
            EventKind::Up { startup_ms } if ev.incarnation > node.incarnation => Some(startup_ms),
            _ => None,
        }));
        startup.push(up_ms);
        total.push((t1 - t0).as_secs_f64() * 1e3);
    }
    // Tick time: the world's own figure for its last tick, sampled every 20 ms.
    let mut ticks = Vec::new();
    let end = Instant::now() + Duration::from_secs(tick_seconds);
    let mut last = None;
    while Instant::now() < end {
        let v = h.node("world/main");
        if let (Some(t), Some(us)) = (v.tick, v.tick_us)
            && last != Some(t)
        {
            ticks.push(f64::from(us));
            last = Some(t);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    (startup, total, ticks)
}

pub(crate) fn all(kills: usize, tick_seconds: u64, rows: &mut Vec<Row>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (mut off_up, mut off_total, mut off_ticks) =
        run(&rt, "mode = \"off\"", kills, tick_seconds);
    let (mut on_up, mut on_total, mut on_ticks) =
        run(&rt, "mode = \"permissive\"", kills, tick_seconds);
    // Where the cost lies: the same sandbox with the host's network (no namespace to make).
    let (mut any_up, _, _) = run(&rt, "network = \"any\"", kills, 0);
    let p = |v: &mut Vec<f64>, q: f64| percentile(v, q);
    let (b50, b99) = (p(&mut off_up, 50.0), p(&mut off_up, 99.0));
    let (s50, s99) = (p(&mut on_up, 50.0), p(&mut on_up, 99.0));
    rows.push(Row {
        measure: format!(
            "(sandbox a) spawn → ready of a world, default sandbox ({kills} restarts)"
        ),
        p50: ms(s50),
        p99: ms(s99),
        baseline: format!("`sandbox = \"off\"`: p50 {} p99 {}", ms(b50), ms(b99)),
        target: "+ < 1 ms at p50".into(),
        verdict: verdict(s50 - b50 < 1.0, format!("{:+.2} ms", s50 - b50)),
    });
    let (a50, a99) = (p(&mut any_up, 50.0), p(&mut any_up, 99.0));
    rows.push(Row {
        measure: "(sandbox a) … the same without its network namespace (`network = \"any\"`)"
            .into(),
        p50: ms(a50),
        p99: ms(a99),
        baseline: format!("`sandbox = \"off\"`: p50 {}", ms(b50)),
        target: "-".into(),
        verdict: format!("{:+.2} ms; the namespace: {:+.2} ms", a50 - b50, s50 - a50),
    });
    let (b50, b99) = (p(&mut off_total, 50.0), p(&mut off_total, 99.0));
    let (s50, s99) = (p(&mut on_total, 50.0), p(&mut on_total, 99.0));
    rows.push(Row {
        measure: "(sandbox a) … SIGKILL → replacement ready, default sandbox".into(),
        p50: ms(s50),
        p99: ms(s99),
        baseline: format!("`sandbox = \"off\"`: p50 {} p99 {}", ms(b50), ms(b99)),
        target: "-".into(),
        verdict: format!("{:+.2} ms", s50 - b50),
    });
    let us = |d: f64| format!("{d:.0} µs");
    let (b50, b99) = (p(&mut off_ticks, 50.0), p(&mut off_ticks, 99.0));
    let (s50, s99) = (p(&mut on_ticks, 50.0), p(&mut on_ticks, 99.0));
    rows.push(Row {
        measure: format!(
            "(sandbox b) tick of a 256-entity world with its seccomp filter ({} ticks)",
            on_ticks.len()
        ),
        p50: us(s50),
        p99: us(s99),
        baseline: format!(
            "`sandbox = \"off\"` ({} ticks): p50 {} p99 {}",
            off_ticks.len(),
            us(b50),
            us(b99)
        ),
        target: "no measurable difference".into(),
        verdict: verdict(
            (s50 - b50).abs() <= (b50 * 0.1).max(5.0),
            format!("{:+.0} µs", s50 - b50),
        ),
    });
}
