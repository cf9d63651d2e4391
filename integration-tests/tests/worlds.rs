//! Worlds under the runtime: they come up, survive kill -9 and hangs one at a time, and a
//! world's failure never touches another world.

use syncra_integration_tests::{Harness, PATIENCE, send};
use syncra_protocol::NodeState;
use syncra_protocol::crash::Reason;

const CONFIG: &str = r#"
[runtime]
watch_interval_ms = 250
abort_grace_ms = 300
[supervisor]
backoff_initial_ms = 50
backoff_max_ms = 400
[worlds]
count = 3
entities = 64
"#;

const WORLDS: [&str; 3] = ["world/main", "world/main-2", "world/main-3"];

#[test]
fn n_worlds_come_up_and_tick() {
    let h = Harness::start(CONFIG, &["--worlds", "4"]);
    let names = ["world/main", "world/main-2", "world/main-3", "world/main-4"];
    let views = h.wait_ready(&names);
    let pids: std::collections::HashSet<_> = views.iter().map(|v| v.pid.unwrap()).collect();
    assert_eq!(pids.len(), 4, "each world is its own process: {views:?}");
    // Their status comes from their own tick loops: ticks advance and entities are reported.
    h.wait_until(
        "every world reports ticks and its 64 entities",
        PATIENCE,
        |s| {
            names
                .iter()
                .all(|n| {
                    s.node(n)
                        .is_some_and(|v| v.tick.unwrap_or(0) > 10 && v.entities == Some(64))
                })
                .then_some(())
        },
    );
}

#[test]
fn kill_9_of_one_world_restarts_it_and_no_other() {
    let h = Harness::start(CONFIG, &[]);
    let before = h.wait_ready(&WORLDS);
    let victim = before[1].clone();
    send(victim.pid.unwrap(), libc::SIGKILL);

    let after = h.wait_until(
        "world/main-2 is back with a new incarnation",
        PATIENCE,
        |s| {
            s.node("world/main-2")
                .filter(|n| n.state == NodeState::Ready && n.incarnation == 2)
                .cloned()
        },
    );
    assert_ne!(after.pid, victim.pid);
    assert_eq!(after.restarts, 1);
    let exit = after.last_exit.expect("last_exit");
    assert_eq!(exit.reason, Reason::Killed);
    assert_eq!(exit.signal.as_deref(), Some("SIGKILL"));

    let status = h.try_status().unwrap();
    for (name, was) in [("world/main", &before[0]), ("world/main-3", &before[2])] {
        let now = status.node(name).unwrap();
        assert_eq!(
            (now.pid, now.incarnation, now.restarts),
            (was.pid, 1, 0),
            "{name} was touched: {now:?}"
        );
    }
    let crashes = h.crashes(None);
    assert_eq!(crashes.len(), 1, "{crashes:?}");
    assert_eq!(crashes[0].record.node.as_str(), "world/main-2");
    assert_eq!(crashes[0].record.reason, Reason::Killed);
}

#[test]
fn a_stopped_world_is_seen_as_hung_and_replaced() {
    let h = Harness::start(CONFIG, &[]);
    let before = h.wait_ready(&WORLDS);
    let victim = before[0].pid.unwrap();
    send(victim, libc::SIGSTOP);

    let after = h.wait_ready_incarnation("world/main", 2);
    assert_ne!(after.pid, Some(victim));
    assert_eq!(after.last_exit.as_ref().unwrap().reason, Reason::Hung);
    assert!(
        !std::path::Path::new(&format!("/proc/{victim}")).exists(),
        "the hung process was not reaped"
    );

    let record = &h.crashes(Some("world/main"))[0].record;
    assert_eq!(record.reason, Reason::Hung);
    assert!(record.detail.contains("no heartbeat"), "{}", record.detail);
    let status = h.try_status().unwrap();
    for name in &WORLDS[1..] {
        assert_eq!(
            status.node(name).unwrap().incarnation,
            1,
            "{name} was restarted"
        );
    }
}

#[test]
fn status_json_has_the_documented_shape() {
    let h = Harness::start(CONFIG, &[]);
    h.wait_ready(&WORLDS);
    let out = h.cli(&["status", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let nodes = v["nodes"].as_array().expect("a `nodes` array");
    assert_eq!(nodes.len(), 3);
    for n in nodes {
        for key in [
            "name",
            "kind",
            "pid",
            "state",
            "incarnation",
            "restarts",
            "uptime_ms",
            "last_exit",
            "tick",
            "entities",
        ] {
            assert!(n.get(key).is_some(), "node lacks `{key}`: {n}");
        }
        assert_eq!(n["kind"], "world");
        assert_eq!(n["state"], "ready");
        assert!(n["name"].as_str().unwrap().starts_with("world/"));
    }

    // And the human form names every node.
    let out = h.cli(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    for name in WORLDS {
        assert!(text.contains(name), "{text}");
    }
}

#[test]
fn cli_stop_start_restart_by_name() {
    let h = Harness::start(CONFIG, &[]);
    let before = h.wait_ready(&WORLDS);

    let out = h.cli(&["stop", "world/main-2"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stopped = h.node("world/main-2");
    assert_eq!((stopped.state, stopped.pid), (NodeState::Stopped, None));
    assert!(!std::path::Path::new(&format!("/proc/{}", before[1].pid.unwrap())).exists());

    assert!(h.cli(&["start", "world/main-2"]).status.success());
    h.wait_ready_incarnation("world/main-2", 2);

    assert!(h.cli(&["restart", "world/main"]).status.success());
    h.wait_ready_incarnation("world/main", 2);
    assert!(
        h.crashes(None).is_empty(),
        "requested stops are not crashes"
    );

    let out = h.cli(&["restart", "world/nope"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no node is called `world/nope`") && err.contains("world/main-3"),
        "{err}"
    );
}

#[test]
fn restarts_leak_no_fds_and_no_zombies() {
    let config = "[runtime]\nwatch_interval_ms = 250\n[supervisor]\nstable_after_ms = 10\nintensity = 1000\n[worlds]\nentities = 16\n";
    let h = Harness::start(config, &[]);
    let fds = || {
        std::fs::read_dir(format!("/proc/{}/fd", h.pid()))
            .unwrap()
            .count()
    };
    let mut node = h.wait_ready(&["world/main"]).remove(0);
    // One restart first, so that everything a restart opens once (a blocking-pool thread, the
    // crash directory) is already open.
    let kill_and_wait = |node: &syncra_protocol::status::NodeView| {
        send(node.pid.unwrap(), libc::SIGKILL);
        h.wait_until("the replacement is ready", PATIENCE, |s| {
            s.node("world/main")
                .filter(|n| n.state == NodeState::Ready && n.incarnation > node.incarnation)
                .cloned()
        })
    };
    node = kill_and_wait(&node);
    let before = fds();
    for _ in 0..30 {
        node = kill_and_wait(&node);
    }
    assert_eq!(node.incarnation, 32);
    // The last incarnation's teardown (its session, its crash record) may still be in flight:
    // the count must come back to the baseline, which a leak never does.
    let deadline = std::time::Instant::now() + PATIENCE;
    while fds() > before {
        assert!(
            std::time::Instant::now() < deadline,
            "the runtime's open fds grew over 30 restarts: {} > {before}",
            fds()
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let zombies: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|stat| {
            let rest = stat.rsplit(')').next().unwrap_or("");
            let fields: Vec<&str> = rest.split_whitespace().collect();
            fields.first() == Some(&"Z") && fields.get(1) == Some(&h.pid().to_string().as_str())
        })
        .collect();
    assert!(zombies.is_empty(), "unreaped children: {zombies:?}");
}
