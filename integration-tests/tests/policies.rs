//! Restart policy end to end: backoff and intensity, strategies, restart types, start
//! failures and dependencies, with misbehaving helper nodes.

use std::time::Duration;

use syncra_integration_tests::{Harness, PATIENCE, send};
use syncra_protocol::NodeState;
use syncra_protocol::crash::{Decision, Reason};

const CRASHER: &str = env!("CARGO_BIN_EXE_syncra-test-crasher");
const HANGER: &str = env!("CARGO_BIN_EXE_syncra-test-hanger");
const QUITTER: &str = env!("CARGO_BIN_EXE_syncra-test-quitter");

fn config(supervisor: &str, drivers: &str) -> String {
    format!(
        r#"
[runtime]
watch_interval_ms = 250
abort_grace_ms = 300
start_timeout_ms = 10000
[supervisor]
backoff_initial_ms = 50
backoff_max_ms = 2000
backoff_jitter = 0.0
stable_after_ms = 60000
{supervisor}
{drivers}
[worlds]
entities = 16
"#
    )
}

fn driver(name: &str, command: &str, extra: &str) -> String {
    format!("[drivers.{name}]\ncommand = \"{command}\"\n{extra}\n")
}

fn incarnations(h: &Harness, names: &[&str]) -> Vec<u64> {
    let s = h.try_status().unwrap();
    names
        .iter()
        .map(|n| s.node(n).unwrap().incarnation)
        .collect()
}

#[test]
fn a_child_that_exits_at_once_backs_off_then_fails() {
    let h = Harness::start(&config("intensity = 3", &driver("flaky", QUITTER, "")), &[]);
    let failed = h.wait_state("flaky", NodeState::Failed);
    assert_eq!(
        failed.incarnation, 4,
        "three restarts, then the fourth failure gives up"
    );
    assert_eq!(failed.restarts, 3);
    assert!(
        failed.detail.as_deref().unwrap_or("").contains("intensity"),
        "{failed:?}"
    );

    let records: Vec<_> = h
        .crashes(Some("flaky"))
        .into_iter()
        .map(|c| c.record)
        .collect();
    assert_eq!(records.len(), 4);
    assert!(
        records
            .iter()
            .all(|r| r.reason == Reason::FailedToStart && r.exit_code == Some(3)),
        "{records:#?}"
    );
    assert!(
        records[0]
            .stderr_tail
            .iter()
            .any(|l| l.contains("exiting at once")),
        "{:?}",
        records[0].stderr_tail
    );
    // The delay doubles, and the restarts really wait it out: no busy loop.
    let delays: Vec<u64> = records[..3]
        .iter()
        .map(|r| match &r.decision {
            Decision::Restart { after_ms, .. } => *after_ms,
            d => panic!("{d:?}"),
        })
        .collect();
    assert_eq!(delays, [50, 100, 200]);
    let at =
        |r: &syncra_protocol::crash::CrashRecord| humantime::parse_rfc3339(&r.timestamp).unwrap();
    for (i, d) in delays.iter().enumerate() {
        let gap = at(&records[i + 1]).duration_since(at(&records[i])).unwrap();
        assert!(
            gap >= Duration::from_millis(*d),
            "restart {i} came {gap:?} after the failure, before its {d} ms delay"
        );
    }
    assert!(
        matches!(records[3].decision, Decision::GaveUp { .. }),
        "{:?}",
        records[3].decision
    );
    // The rest keeps running.
    h.wait_ready(&["world/main"]);
}

#[test]
fn one_for_all_restarts_every_sibling() {
    let drivers = [
        driver("a", CRASHER, ""),
        driver("b", CRASHER, ""),
        driver("c", CRASHER, ""),
    ]
    .concat();
    let h = Harness::start(
        &config("[supervisor.drivers]\nstrategy = \"one_for_all\"", &drivers),
        &[],
    );
    let before = h.wait_ready(&["a", "b", "c"]);
    send(before[1].pid.unwrap(), libc::SIGUSR1);
    h.wait_until("a, b and c are all back", PATIENCE, |s| {
        ["a", "b", "c"]
            .iter()
            .all(|n| {
                s.node(n)
                    .is_some_and(|v| v.state == NodeState::Ready && v.incarnation == 2)
            })
            .then_some(())
    });
    assert_eq!(
        incarnations(&h, &["world/main"]),
        [1],
        "the worlds group is not touched"
    );
    let crashes = h.crashes(None);
    assert_eq!(
        crashes.len(),
        1,
        "only b crashed; its siblings were restarted on purpose"
    );
    let record = &crashes[0].record;
    assert_eq!(
        (record.node.as_str(), record.reason),
        ("b", Reason::Crashed)
    );
    assert_eq!(record.exit_code, Some(101));
    let panic = record.panic.as_ref().expect("the panic hook's report");
    assert!(
        panic.message.contains("crash requested by the test"),
        "{panic:?}"
    );
    assert!(
        panic
            .location
            .as_deref()
            .unwrap_or("")
            .contains("crasher.rs"),
        "{panic:?}"
    );
    match &record.decision {
        Decision::Restart { siblings, .. } => {
            let s: Vec<&str> = siblings.iter().map(|n| n.as_str()).collect();
            assert_eq!(s, ["a", "c"]);
        }
        d => panic!("{d:?}"),
    }
}

#[test]
fn rest_for_one_restarts_the_ones_started_after() {
    let drivers = [
        driver("a", CRASHER, ""),
        driver("b", CRASHER, ""),
        driver("c", CRASHER, ""),
    ]
    .concat();
    let h = Harness::start(
        &config(
            "[supervisor.drivers]\nstrategy = \"rest_for_one\"",
            &drivers,
        ),
        &[],
    );
    let before = h.wait_ready(&["a", "b", "c"]);
    send(before[1].pid.unwrap(), libc::SIGUSR1);
    h.wait_until("b and c are back", PATIENCE, |s| {
        ["b", "c"]
            .iter()
            .all(|n| {
                s.node(n)
                    .is_some_and(|v| v.state == NodeState::Ready && v.incarnation == 2)
            })
            .then_some(())
    });
    let a = h.node("a");
    assert_eq!(
        (a.incarnation, a.pid),
        (1, before[0].pid),
        "a started before b and is not restarted"
    );
}

#[test]
fn restart_types_on_a_clean_exit() {
    let drivers = [
        driver("transient", CRASHER, "restart = \"transient\""),
        driver("permanent", CRASHER, ""),
    ]
    .concat();
    let h = Harness::start(&config("", &drivers), &[]);
    let before = h.wait_ready(&["transient", "permanent"]);
    send(before[0].pid.unwrap(), libc::SIGUSR2);
    send(before[1].pid.unwrap(), libc::SIGUSR2);

    let t = h.wait_state("transient", NodeState::Stopped);
    assert_eq!(
        t.incarnation, 1,
        "a transient node that exits 0 is not restarted"
    );
    let exit = t.last_exit.unwrap();
    assert_eq!((exit.reason, exit.code), (Reason::Exited, Some(0)));
    h.wait_ready_incarnation("permanent", 2);
    assert!(h.crashes(None).is_empty(), "a clean exit is not a crash");
}

#[test]
fn temporary_and_auto_restart_off_are_not_restarted() {
    let drivers = [driver("temp", CRASHER, "restart = \"temporary\"")].concat();
    let h = Harness::start(&config("", &drivers), &[]);
    let temp = h.wait_ready(&["temp"]).remove(0);
    send(temp.pid.unwrap(), libc::SIGUSR1);
    let failed = h.wait_state("temp", NodeState::Failed);
    assert_eq!(failed.incarnation, 1);
    drop(h);

    let cfg = config("", &driver("d", CRASHER, "")).replace(
        "[runtime]",
        "[runtime]\nauto_restart_crashed_processes = false",
    );
    let h = Harness::start(&cfg, &[]);
    let d = h.wait_ready(&["d"]).remove(0);
    send(d.pid.unwrap(), libc::SIGKILL);
    let failed = h.wait_state("d", NodeState::Failed);
    assert_eq!(failed.incarnation, 1);
    let record = &h.crashes(Some("d"))[0].record;
    assert!(
        matches!(&record.decision, Decision::NotRestarted { why } if why.contains("auto_restart_crashed_processes")),
        "{:?}",
        record.decision
    );
}

#[test]
fn a_driver_that_never_joins_is_a_failed_start() {
    let drivers = driver(
        "silent",
        "/bin/sleep",
        "args = [\"1000\"]\nstart_timeout_ms = 400",
    );
    let h = Harness::start(&config("intensity = 0", &drivers), &[]);
    let failed = h.wait_state("silent", NodeState::Failed);
    let exit = failed.last_exit.unwrap();
    assert_eq!(
        (exit.reason, exit.signal.as_deref()),
        (Reason::FailedToStart, Some("SIGKILL"))
    );
    let record = &h.crashes(Some("silent"))[0].record;
    assert!(
        record.detail.contains("start timeout of 400 ms"),
        "{}",
        record.detail
    );
    // It never blocked the runtime: the world comes up once the driver has failed.
    h.wait_ready(&["world/main"]);
}

#[test]
fn a_missing_executable_fails_at_once_with_its_name() {
    let drivers = driver("ghost", "/nonexistent/syncra-ghost", "");
    let h = Harness::start(&config("", &drivers), &[]);
    let failed = h.wait_state("ghost", NodeState::Failed);
    assert_eq!(
        failed.restarts, 0,
        "restarting cannot help a missing executable"
    );
    let detail = failed.detail.unwrap();
    assert!(
        detail.contains("/nonexistent/syncra-ghost") && detail.contains("not found"),
        "{detail}"
    );
    h.wait_ready(&["world/main"]);
}

#[test]
fn a_hung_driver_is_aborted_then_replaced() {
    let h = Harness::start(&config("", &driver("stuck", HANGER, "")), &[]);
    let before = h.wait_ready(&["stuck"]).remove(0);
    send(before.pid.unwrap(), libc::SIGUSR1);
    let after = h.wait_ready_incarnation("stuck", 2);
    let exit = after.last_exit.unwrap();
    assert_eq!(exit.reason, Reason::Hung);
    assert_eq!(
        exit.signal.as_deref(),
        Some("SIGABRT"),
        "a responsive process dies of the SIGABRT, before any SIGKILL"
    );
}

#[test]
fn drivers_start_in_order_and_wait_for_their_dependencies() {
    let drivers = [
        driver("first", CRASHER, ""),
        driver("second", CRASHER, "depends_on = [\"third\"]"),
        driver("third", CRASHER, ""),
    ]
    .concat();
    let h = Harness::start(&config("", &drivers), &[]);
    h.wait_ready(&["first", "second", "third", "world/main"]);
    let out = h.output();
    let line = |needle: &str| {
        out.lines()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?} in\n{out}"))
    };
    let spawned = |n: &str| line(&format!("spawned node={n} "));
    let ready = |n: &str| line(&format!("ready node={n} "));
    assert!(spawned("first") < spawned("third"), "config order:\n{out}");
    assert!(
        ready("third") < spawned("second"),
        "second waits for third:\n{out}"
    );
    for d in ["first", "second", "third"] {
        assert!(
            ready(d) < spawned("world/main"),
            "worlds start after the drivers are ready:\n{out}"
        );
    }
}

#[test]
fn a_failed_dependency_fails_its_dependents_with_a_record() {
    let drivers = [
        driver("ghost", "/nonexistent/syncra-ghost", ""),
        driver("needs_ghost", CRASHER, "depends_on = [\"ghost\"]"),
    ]
    .concat();
    let h = Harness::start(&config("", &drivers), &[]);
    let failed = h.wait_state("needs_ghost", NodeState::Failed);
    assert_eq!(failed.incarnation, 0, "it never ran");
    let records = h.crashes(Some("needs_ghost"));
    assert_eq!(records.len(), 1, "{records:#?}");
    let record = &records[0].record;
    assert_eq!(record.reason, Reason::FailedToStart);
    assert!(
        record.detail.contains("dependency ghost failed"),
        "{}",
        record.detail
    );
    assert!(
        matches!(record.decision, Decision::NotRestarted { .. }),
        "{:?}",
        record.decision
    );
    h.wait_ready(&["world/main"]);
}

#[test]
fn a_warm_spare_replaces_a_killed_world_and_never_outlives_the_runtime() {
    let mut h = Harness::start(&config("warm_spare = true", ""), &[]);
    let spare_of = |h: &Harness, not: Option<u32>| {
        h.wait_until("world/main has a new warm spare", PATIENCE, |s| {
            let n = s.node("world/main")?;
            (n.state == NodeState::Ready && n.spare_pid.is_some() && n.spare_pid != not)
                .then(|| n.clone())
        })
    };
    let first = spare_of(&h, None);
    let spare = first.spare_pid.unwrap();
    assert_ne!(Some(spare), first.pid, "the spare is a process of its own");

    // The restart uses the spare: the replacement is the spare's process.
    send(first.pid.unwrap(), libc::SIGKILL);
    let second = h.wait_ready_incarnation("world/main", first.incarnation + 1);
    assert_eq!(second.pid, Some(spare), "the restart did not use the spare");
    let next = spare_of(&h, Some(spare));
    let next_spare = next.spare_pid.unwrap();

    // A spare that dies is only a spare lost: no restart, no crash record; the next restart
    // spawns afresh.
    send(next_spare, libc::SIGKILL);
    h.wait_until("the dead spare is gone from status", PATIENCE, |s| {
        s.node("world/main")
            .filter(|n| n.spare_pid.is_none())
            .cloned()
    });
    let still = h.node("world/main");
    assert_eq!(
        (still.pid, still.incarnation),
        (second.pid, second.incarnation)
    );
    assert_eq!(
        h.crashes(Some("world/main")).len(),
        1,
        "only the world's own kill"
    );
    send(second.pid.unwrap(), libc::SIGKILL);
    // The next incarnation ready (once, in CI, incarnation 3 failed to join and 4 came
    // instead; see the harness's crash-record dump should it happen again).
    let third = h.wait_until("world/main is back after the spare died", PATIENCE, |s| {
        s.node("world/main")
            .filter(|n| n.state == NodeState::Ready && n.incarnation > second.incarnation)
            .cloned()
    });
    assert_ne!(third.pid, Some(next_spare));
    spare_of(&h, Some(next_spare));

    // Shutdown takes the spare with it.
    h.signal(libc::SIGTERM);
    assert!(h.wait_exit(PATIENCE).success());
    h.wait_no_processes_left(PATIENCE);
}
