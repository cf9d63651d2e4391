//! `syncra-chaos` (`just chaos`): random SIGKILL and SIGSTOP across several worlds of a real
//! runtime for a while (60 s by default), then the figures that must hold afterwards.
//!
//! ```text
//! syncra-chaos [--seconds S] [--worlds N] [--seed SEED]
//! ```

use std::time::Duration;

use syncra_integration_tests::{Harness, chaos, percentile};

fn main() -> std::process::ExitCode {
    let mut seconds = 60u64;
    let mut worlds = 8usize;
    let mut seed = chaos::clock_seed();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let value = args.next().and_then(|v| v.parse::<u64>().ok());
        match (a.as_str(), value) {
            ("--seconds", Some(v)) => seconds = v,
            ("--worlds", Some(v)) => worlds = v.max(1) as usize,
            ("--seed", Some(v)) => seed = v,
            _ => {
                eprintln!("usage: syncra-chaos [--seconds S] [--worlds N] [--seed SEED]");
                return std::process::ExitCode::from(2);
            }
        }
    }
    let h = Harness::start(&chaos::config(worlds), &[]);
    let mut names = vec!["world/main".to_owned()];
    names.extend((2..=worlds).map(|i| format!("world/main-{i}")));
    println!("chaos: {worlds} worlds, {seconds} s, seed {seed}");
    let mut r = chaos::run(&h, &names, Duration::from_secs(seconds), seed);
    let (k50, k99) = (
        percentile(&mut r.kill_recovery_ms, 50.0),
        percentile(&mut r.kill_recovery_ms, 99.0),
    );
    let (s50, s99) = (
        percentile(&mut r.stop_recovery_ms, 50.0),
        percentile(&mut r.stop_recovery_ms, 99.0),
    );
    println!("| figure | value |");
    println!("|---|---|");
    println!(
        "| faults injected (SIGKILL / SIGSTOP) | {} ({} / {}) over {:.1} s |",
        r.faults(),
        r.kills,
        r.stops,
        r.duration.as_secs_f64()
    );
    println!("| crash records written | {} |", r.crash_records);
    println!(
        "| SIGKILL → replacement ready, p50 / p99 | {k50:.1} ms / {k99:.1} ms (restart backoff included: failures in a row back off up to 100 ms) |"
    );
    println!(
        "| SIGSTOP → replacement ready, p50 / p99 | {s50:.1} ms / {s99:.1} ms (the 300 ms hang deadline and 100 ms abort grace included) |"
    );
    println!("| runtime up at the end | {} |", r.runtime_up);
    println!(
        "| nodes not back | {} |",
        if r.not_back.is_empty() {
            "none".to_owned()
        } else {
            r.not_back.join(", ")
        }
    );
    println!(
        "| runtime fds before / after | {} / {} |",
        r.fds_before, r.fds_after
    );
    println!("| zombies | {} |", r.zombies);
    println!(
        "| most live processes for one name at once | {} (over {} samples) |",
        r.max_live_per_name, r.samples
    );
    let violations = r.violations();
    if violations.is_empty() {
        println!("chaos: every invariant held");
        std::process::ExitCode::SUCCESS
    } else {
        println!("chaos: VIOLATED: {}\n{}", violations.join("; "), h.output());
        std::process::ExitCode::FAILURE
    }
}
