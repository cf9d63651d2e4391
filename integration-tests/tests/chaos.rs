//! A few seconds of random SIGKILL and SIGSTOP across several worlds: the runtime stays up,
//! every node comes back, each fault leaves one crash record, the runtime's fds return to
//! their count, no zombie is left, and no name ever has two live processes. `just chaos`
//! runs the same for a minute.

use std::time::Duration;

use syncra_integration_tests::{Harness, chaos};

#[test]
fn random_kills_and_stops_leave_the_runtime_whole() {
    let worlds = 4;
    let h = Harness::start(&chaos::config(worlds), &[]);
    let mut names = vec!["world/main".to_owned()];
    names.extend((2..=worlds).map(|i| format!("world/main-{i}")));
    let seed = chaos::clock_seed();
    let report = chaos::run(&h, &names, Duration::from_secs(4), seed);
    assert!(
        report.faults() >= 8,
        "too few faults were injected to mean anything: {report:?}"
    );
    assert!(
        report.violations().is_empty(),
        "seed {seed}: {:?}\n{report:?}\n{}",
        report.violations(),
        h.output()
    );
}
