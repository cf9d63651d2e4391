//! The cluster against a node that lies about who it is. Every node joins over the socketpair
//! it inherited, and the hub knows which link each session came over: a node that joins
//! another node's agent group (the group the hub looks in for that node's agent) is not taken
//! for it, so calls and messages for the other node never reach it, across restarts too; one
//! that joins the runtime's own group gets nothing either; and messages with tokens the
//! runtime did not issue (a forged "quit everything") are dropped.

use serde_json::Value;
use syncra_integration_tests::{Harness, PATIENCE, jsonl, send, workspace_bin};

#[test]
fn a_node_posing_as_another_in_its_agent_group_gets_none_of_its_calls() {
    let out = tempfile::tempdir().unwrap();
    let impostor_out = out.path().join("impostor.jsonl");
    let config = format!(
        "[runtime]\nwatch_interval_ms = 500\n\
         [drivers.impostor]\ncommand = \"{peer}\"\nargs = [\"impostor\", \"victim=victim\", \"out={io}\"]\n\
         [drivers.victim]\ncommand = \"{peer}\"\nargs = [\"echo\", \"out={vo}\"]\n\
         [worlds]\ncount = 1\n",
        peer = workspace_bin("syncra-test-peer").display(),
        io = impostor_out.display(),
        vo = out.path().join("victim.jsonl").display(),
    );
    let h = Harness::start(&config, &[]);
    h.wait_ready(&["impostor", "victim", "world/main"]);
    let call = |n: u64, inc: u64| {
        let out = h.cli(&["call", "victim", "syncra.test.ping/1", &n.to_string()]);
        assert!(
            out.status.success(),
            "call {n}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pong: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(pong["n"], n, "{pong}");
        assert_eq!(
            pong["incarnation"], inc,
            "answered by the victim itself: {pong}"
        );
    };
    for n in 0..10 {
        call(n, 1);
    }
    // Its next incarnation (whose group the impostor joined too) is itself as well.
    send(h.node("victim").pid.unwrap(), libc::SIGKILL);
    h.wait_ready_incarnation("victim", 2);
    for n in 10..20 {
        call(n, 2);
    }
    // Nothing reached the impostor, and the runtime said what it saw.
    let last = h.wait_until("the impostor reports", PATIENCE, |_| {
        jsonl(&impostor_out).last().cloned()
    });
    assert_eq!(last["stolen"], 0, "{last}");
    assert!(
        h.output()
            .contains("joined this node's agent group; ignored"),
        "{}",
        h.output()
    );
    assert_eq!(h.node("impostor").incarnation, 1);
    // The forged quit requests (100 of them, sent at its start) stopped nothing.
    assert!(h.try_status().is_some_and(|s| !s.runtime.shutting_down));
}

#[test]
fn a_flood_of_malformed_and_forged_messages_and_a_corrupt_link_touch_no_other_node() {
    let out = tempfile::tempdir().unwrap();
    let flood_out = out.path().join("flood.jsonl");
    let config = format!(
        "[runtime]\nwatch_interval_ms = 500\n\
         [drivers.victim]\ncommand = \"{peer}\"\nargs = [\"echo\", \"out={vo}\"]\n\
         [drivers.flooder]\ncommand = \"{peer}\"\nargs = [\"flooder\", \"out={fo}\"]\n\
         restart = \"temporary\"\n\
         [worlds]\ncount = 1\n",
        peer = workspace_bin("syncra-test-peer").display(),
        vo = out.path().join("victim.jsonl").display(),
        fo = flood_out.display(),
    );
    let h = Harness::start(&config, &[]);
    h.wait_ready(&["victim", "world/main"]);
    let report = h.wait_until("the flood is sent", PATIENCE, |_| {
        jsonl(&flood_out)
            .into_iter()
            .find(|v| v["flooded"].is_u64())
    });
    assert_eq!(report["gateways"], 1, "{report}");
    // Its corrupt link is closed: the flooder alone loses its session and leaves.
    let record = h.wait_until("the flooder's crash record", PATIENCE, |_| {
        h.crashes(Some("flooder")).into_iter().next()
    });
    assert!(
        record
            .record
            .detail
            .contains("lost its link to the runtime"),
        "{}",
        record.record.detail
    );
    // Everyone else is untouched: the victim answers as its first incarnation, the world ticks.
    for n in 0..5 {
        let out = h.cli(&["call", "victim", "syncra.test.ping/1", &n.to_string()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pong: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(pong["incarnation"], 1, "{pong}");
    }
    let world = h.node("world/main");
    assert_eq!(world.incarnation, 1);
    let before = world.tick.unwrap_or(0);
    h.wait_until("the world ticks on", PATIENCE, |s| {
        s.node("world/main")?.tick.filter(|t| *t > before)
    });
    // 4000 dropped messages are a line or two in the log, not 4000.
    let log = h.output();
    let lines = log
        .lines()
        .filter(|l| l.contains("dropped messages from children"))
        .count();
    assert!((1..=5).contains(&lines), "{lines} lines:\n{log}");
}
