//! Routing by name and zero-copy streams across real processes: calls across a restart,
//! returned messages, ordered delivery, producer restarts and mid-write deaths, each policy
//! with a slow consumer, bad subscriptions, `syncra tap`, and no fd leak in the runtime.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use syncra_integration_tests::peers::{args, lines};
use syncra_integration_tests::{Harness, PATIENCE, send};
use syncra_protocol::control::{ControlReply, ControlRequest, StreamView};

const PEER: &str = env!("CARGO_BIN_EXE_syncra-test-peer");

fn config(drivers: &[(&str, String)]) -> String {
    let mut c = String::from(
        "[runtime]\nwatch_interval_ms = 500\n[supervisor]\nbackoff_initial_ms = 20\nbackoff_jitter = 0.0\nintensity = 1000\nperiod_ms = 1000\n[worlds]\nentities = 16\n",
    );
    for (name, args) in drivers {
        c.push_str(&format!(
            "[drivers.{name}]\ncommand = \"{PEER}\"\nargs = [{args}]\n"
        ));
    }
    c
}

/// Wait until `f` holds for the lines `name` reported.
fn wait_lines(dir: &Path, name: &str, what: &str, f: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let l = lines(dir, name);
        if f(&l) {
            return l;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting until {what}; {name} reported:\n{}",
            l.iter()
                .rev()
                .take(20)
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every stream, as `syncra streams` shows them.
fn streams(h: &Harness) -> Vec<StreamView> {
    match h.try_request(ControlRequest::Streams) {
        Some(ControlReply::Streams(s)) => s,
        other => panic!("streams: {other:?}"),
    }
}

/// Restart `node` through the control socket.
fn restart(h: &Harness, node: &str) {
    match h.try_request(ControlRequest::Restart { node: node.into() }) {
        Some(ControlReply::Done { .. }) => {}
        other => panic!("restart {node}: {other:?}"),
    }
}

fn scratch() -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let p = t.path().to_owned();
    (t, p)
}

#[test]
fn calls_by_name_survive_a_restart_of_the_callee_and_unknown_names_come_back() {
    let (_t, dir) = scratch();
    let config = config(&[
        ("echo", args(&dir, "echo", "echo", &[])),
        ("caller", args(&dir, "caller", "caller", &["to=echo"])),
    ])
    // A call waits up to 3 s for echo to come back; on a loaded machine that can be longer than
    // the test's default heartbeat deadline (1.5 s), and this test is not about hangs.
    .replace(
        "[drivers.caller]\n",
        "[drivers.caller]\nheartbeat_deadline_ms = 10000\n",
    );
    let h = Harness::start(&config, &[]);
    h.wait_ready(&["echo", "caller"]);
    let first = lines(&dir, "caller");
    assert_eq!(
        first[0]["unknown"], "UnknownName",
        "a send to a name nobody has comes back at once: {first:?}"
    );
    assert_eq!(first[0]["returned"], 7, "with the message itself");
    // A call from a task on the caller's link thread, answered on the callee's link thread.
    wait_lines(&dir, "caller", "the link-thread call is answered", |l| {
        l.iter()
            .any(|v| v["link_answer"] == 42 || v.get("link_error").is_some())
    });
    let l = lines(&dir, "caller");
    assert!(
        l.iter().any(|v| v["link_answer"] == 42),
        "the link-thread call failed: {l:?}"
    );
    wait_lines(&dir, "caller", "answers from echo #1", |l| {
        l.iter().filter(|v| v["incarnation"] == 1).count() >= 5
    });
    let echo = h.node("echo");
    send(echo.pid.unwrap(), libc::SIGKILL);
    let l = wait_lines(&dir, "caller", "answers from echo #2", |l| {
        l.iter().filter(|v| v["incarnation"] == 2).count() >= 5
    });
    let errors: Vec<&Value> = l.iter().filter(|v| v.get("error").is_some()).collect();
    // A call in flight at the moment of the kill is lost with the process (its caller is told
    // by the timeout); every call made while echo restarted waited for it.
    assert!(
        errors.len() <= 1,
        "calls failed across the restart: {errors:?}"
    );
    assert_eq!(
        h.node("caller").incarnation,
        1,
        "the caller never restarted"
    );
}

#[test]
fn a_call_whose_callee_dies_before_answering_fails_at_once_and_gives_the_request_back() {
    let (_t, dir) = scratch();
    let config = config(&[
        ("echo", args(&dir, "echo", "echo", &["hold=1"])),
        (
            "caller",
            args(&dir, "caller", "caller", &["to=echo", "timeout_ms=600000"]),
        ),
    ])
    // The caller blocks in its call for as long as the test takes: no hang for it.
    .replace(
        "[drivers.caller]\n",
        "[drivers.caller]\nheartbeat_deadline_ms = 600000\n",
    );
    let h = Harness::start(&config, &[]);
    h.wait_ready(&["echo", "caller"]);
    wait_lines(&dir, "echo", "echo holds the first call", |l| {
        l.iter().any(|v| v["holding"] == 1)
    });
    send(h.node("echo").pid.unwrap(), libc::SIGKILL);
    // The call's own timeout is ten minutes: an error within the test's patience is the
    // runtime telling the caller that its callee is gone.
    let l = wait_lines(&dir, "caller", "the held call fails", |l| {
        l.iter().any(|v| v.get("error").is_some())
    });
    let failed = l.iter().find(|v| v.get("error").is_some()).unwrap();
    let error = failed["error"].as_str().unwrap();
    assert!(
        error.contains("echo (incarnation 1) exited before answering"),
        "{error}"
    );
    assert_eq!(failed["returned"], failed["n"], "the request comes back");
    assert_eq!(h.node("caller").incarnation, 1);
}

#[test]
fn a_stream_delivers_in_order_and_a_killed_producer_shows_as_a_gap() {
    let (_t, dir) = scratch();
    let h = Harness::start(
        &config(&[
            (
                "prod",
                args(
                    &dir,
                    "prod",
                    "producer",
                    &["stream=ticks", "policy=drop", "slots=64", "rate=200"],
                ),
            ),
            (
                "cons",
                args(&dir, "cons", "consumer", &["stream=prod/ticks"]),
            ),
        ]),
        &[],
    );
    h.wait_ready(&["prod", "cons"]);
    let l = wait_lines(&dir, "cons", "40 messages", |l| {
        l.iter().filter(|v| v.get("seq").is_some()).count() >= 40
    });
    let msgs: Vec<&Value> = l.iter().filter(|v| v.get("seq").is_some()).collect();
    for w in msgs.windows(2) {
        assert_eq!(
            w[1]["seq"].as_u64().unwrap(),
            w[0]["seq"].as_u64().unwrap() + 1,
            "in order, none missing: {w:?}"
        );
        assert_eq!(w[1]["n"].as_u64().unwrap(), w[0]["n"].as_u64().unwrap() + 1);
    }

    send(h.node("prod").pid.unwrap(), libc::SIGKILL);
    let l = wait_lines(&dir, "cons", "messages from the new producer", |l| {
        l.iter().filter(|v| v["inc"] == 2).count() >= 5
    });
    let first_new = l.iter().find(|v| v["inc"] == 2).unwrap();
    assert!(
        first_new["gap"].as_u64().unwrap() >= 1,
        "the restart shows as a gap: {first_new}"
    );
    assert_eq!(first_new["n"], 1, "the new incarnation's first message");
    assert_eq!(
        h.node("cons").incarnation,
        1,
        "the consumer never rebound or restarted"
    );
    let streams = streams(&h);
    let s = streams.iter().find(|s| s.name == "prod/ticks").unwrap();
    assert_eq!(s.attachments, 2, "the same ring, taken back: {s:?}");
    assert_eq!(s.consumers.len(), 1);
}

#[test]
fn a_producer_killed_mid_write_never_delivers_the_torn_frame() {
    let (_t, dir) = scratch();
    let h = Harness::start(
        &config(&[
            (
                "cam",
                args(
                    &dir,
                    "cam",
                    "bulk-producer",
                    &["stream=frames", "abort_at=30"],
                ),
            ),
            (
                "view",
                args(&dir, "view", "consumer", &["stream=cam/frames", "bulk=1"]),
            ),
        ]),
        &[],
    );
    h.wait_ready(&["cam", "view"]);
    let l = wait_lines(&dir, "view", "frames from the restarted producer", |l| {
        l.iter().filter(|v| v["inc"] == 2).count() >= 5
    });
    assert!(
        l.iter().all(|v| v["intact"] == true),
        "every delivered frame is whole: {:?}",
        l.iter().filter(|v| v["intact"] != true).collect::<Vec<_>>()
    );
    assert!(
        !l.iter().any(|v| v["inc"] == 1 && v["n"] == 30),
        "the frame being written when the producer died is never delivered"
    );
    let first_new = l.iter().find(|v| v["inc"] == 2).unwrap();
    assert!(first_new["gap"].as_u64().unwrap() >= 1, "{first_new}");
    let crash = h.crashes(Some("cam"));
    assert!(!crash.is_empty(), "the abort is recorded as a crash");
}

#[test]
fn each_policy_with_a_slow_consumer() {
    let (_t, dir) = scratch();
    let pair = |name: &str, policy: &str| {
        vec![
            (
                name.to_owned(),
                args(
                    &dir,
                    name,
                    "producer",
                    &[
                        "stream=s",
                        &format!("policy={policy}"),
                        "slots=4",
                        "rate=500",
                        "block_ms=10",
                    ],
                ),
            ),
            (
                format!("{name}-slow"),
                args(
                    &dir,
                    &format!("{name}-slow"),
                    "consumer",
                    &[&format!("stream={name}/s"), "delay_ms=25"],
                ),
            ),
        ]
    };
    let mut drivers = pair("latest", "latest");
    drivers.extend(pair("drop", "drop"));
    drivers.extend(pair("block", "block"));
    let drivers: Vec<(&str, String)> = drivers
        .iter()
        .map(|(n, a)| (n.as_str(), a.clone()))
        .collect();
    let h = Harness::start(&config(&drivers), &[]);
    h.wait_ready(&[
        "latest",
        "drop",
        "block",
        "latest-slow",
        "drop-slow",
        "block-slow",
    ]);
    let enough = |l: &[Value]| l.iter().filter(|v| v.get("seq").is_some()).count() >= 30;
    let latest = wait_lines(&dir, "latest-slow", "30 messages", enough);
    let dropped = wait_lines(&dir, "drop-slow", "30 messages", enough);
    let blocked = wait_lines(&dir, "block-slow", "30 messages", enough);
    let gaps = |l: &[Value]| l.iter().filter_map(|v| v["gap"].as_u64()).sum::<u64>();

    // latest-only: the slow consumer skips to the newest; the producer never waits.
    assert!(gaps(&latest) > 0, "latest-only skips: {latest:?}");
    assert!(
        lines(&dir, "latest").is_empty(),
        "latest-only never fails a write"
    );
    // drop-oldest: in order, losing what fell off the ring; the producer never waits.
    assert!(gaps(&dropped) > 0, "drop-oldest loses the oldest");
    assert!(
        lines(&dir, "drop").is_empty(),
        "drop-oldest never fails a write"
    );
    // block: nothing lost; the producer's writes time out instead.
    assert_eq!(gaps(&blocked), 0, "block loses nothing: {blocked:?}");
    let seqs: Vec<u64> = blocked.iter().filter_map(|v| v["seq"].as_u64()).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1));
    let errors = wait_lines(&dir, "block", "a write to time out", |l| !l.is_empty());
    assert!(
        errors[0]["write_error"]
            .as_str()
            .unwrap()
            .contains("the ring is full"),
        "{errors:?}"
    );
    // The producer is held up, not hung: it stays ready.
    assert_eq!(h.node("block").incarnation, 1);
}

#[test]
fn bad_subscriptions_get_clear_errors() {
    let (_t, dir) = scratch();
    let h = Harness::start(
        &config(&[
            (
                "prod",
                args(&dir, "prod", "producer", &["stream=ticks", "rate=50"]),
            ),
            (
                "wrongtype",
                args(
                    &dir,
                    "wrongtype",
                    "consumer",
                    &["stream=prod/ticks", "type=wrong"],
                ),
            ),
            (
                "nostream",
                args(
                    &dir,
                    "nostream",
                    "consumer",
                    &["stream=prod/nothing", "wait=0"],
                ),
            ),
            (
                "badshape",
                args(&dir, "badshape", "producer", &["stream=ticks", "slots=1"]),
            ),
            (
                "huge",
                args(
                    &dir,
                    "huge",
                    "producer",
                    &["stream=ticks", "slots=2", "size=2000000"],
                ),
            ),
        ])
        .replace("[worlds]", "[streams]\nmax_ring_mb = 1\n[worlds]")
        // Not waiting, it must look only once `prod` has declared its stream (before ready).
        .replace(
            "[drivers.nostream]\n",
            "[drivers.nostream]\ndepends_on = [\"prod\"]\n",
        ),
        &[],
    );
    h.wait_ready(&["prod", "wrongtype", "nostream", "badshape"]);
    let e = wait_lines(&dir, "wrongtype", "an error", |l| !l.is_empty());
    let msg = e[0]["subscribe_error"].as_str().unwrap();
    assert!(
        msg.contains("carries")
            && msg.contains("syncra.test.tick/1")
            && msg.contains("syncra.test.not-a-tick/1"),
        "{msg}"
    );
    let e = wait_lines(&dir, "nostream", "an error", |l| !l.is_empty());
    let msg = e[0]["subscribe_error"].as_str().unwrap();
    assert!(
        msg.contains("no stream `prod/nothing`") && msg.contains("prod/ticks"),
        "{msg}"
    );
    let e = wait_lines(&dir, "badshape", "an error", |l| !l.is_empty());
    let msg = e[0]["declare_error"].as_str().unwrap();
    assert!(
        msg.contains("badshape/ticks") && msg.contains("slot_count 1 is out of range"),
        "{msg}"
    );
    let e = wait_lines(&dir, "huge", "an error", |l| !l.is_empty());
    let msg = e[0]["declare_error"].as_str().unwrap();
    assert!(
        msg.contains("huge/ticks") && msg.contains("streams.max_ring_mb"),
        "{msg}"
    );
    assert_eq!(h.node("prod").incarnation, 1, "the others are untouched");
}

#[test]
fn tap_shows_a_world_scene_live() {
    let h = Harness::start("[worlds]\nentities = 32\n", &[]);
    h.wait_ready(&["world/main"]);
    let out = h.cli(&[
        "tap",
        "world/main/scene",
        "--count",
        "1",
        "--interval-ms",
        "300",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["rate_hz"].as_f64().unwrap() > 10.0, "{report}");
    assert_eq!(report["value"]["entities"].as_array().unwrap().len(), 32);
    assert_eq!(report["value"]["world"], "main");
    assert_eq!(report["gaps"], 0);
    let status = h.try_status().unwrap();
    assert_eq!(
        status.node("world/main").unwrap().produces,
        vec!["world/main/scene", "world/main/state"],
        "its scene, and its durable state"
    );
    let bad = h.cli(&["tap", "world/nope/scene"]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("no stream `world/nope/scene`"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}

#[test]
fn a_restarted_producer_that_changes_its_stream_is_refused_with_both_shapes() {
    let (_t, dir) = scratch();
    let h = Harness::start(
        &config(&[(
            "prod",
            args(&dir, "prod", "producer", &["stream=ticks", "grow=1"]),
        )]),
        &[],
    );
    h.wait_ready(&["prod"]);
    restart(&h, "prod");
    let l = wait_lines(
        &dir,
        "prod",
        "the second incarnation's declaration is refused",
        |l| l.iter().any(|v| v.get("declare_error").is_some()),
    );
    let error = l.iter().find_map(|v| v["declare_error"].as_str()).unwrap();
    assert!(
        error.contains("stream `prod/ticks` was declared as")
            && error.contains("a restarted producer must declare the same type and shape")
            && error.contains("slot_count: 8")
            && error.contains("slot_count: 9"),
        "{error}"
    );
    // The refusal came before that line: the stream is nobody's now, and shows it.
    let streams = streams(&h);
    let s = streams.iter().find(|s| s.name == "prod/ticks").unwrap();
    assert!(!s.producer_live, "{s:?}");
    assert_eq!(s.geometry.slot_count, 8, "the ring kept its shape: {s:?}");
}

#[test]
fn the_runtime_leaks_no_fds_over_100_producer_restarts() {
    let (_t, dir) = scratch();
    let h = Harness::start(
        &config(&[
            (
                "prod",
                args(&dir, "prod", "producer", &["stream=ticks", "rate=100"]),
            ),
            (
                "cons",
                args(&dir, "cons", "consumer", &["stream=prod/ticks"]),
            ),
        ]),
        &[],
    );
    // Every node, the world too: its scene stream is part of the baseline.
    h.wait_ready(&["prod", "cons", "world/main"]);
    // Each open fd and what it is (`socket:[…]`, `/memfd:…`, `anon_inode:[eventfd]`, a log).
    let open = || -> Vec<(String, String)> {
        std::fs::read_dir(format!("/proc/{}/fd", h.pid()))
            .unwrap()
            .filter_map(|e| {
                let e = e.ok()?;
                let target = std::fs::read_link(e.path()).ok()?;
                Some((
                    e.file_name().to_string_lossy().into_owned(),
                    target.display().to_string(),
                ))
            })
            .collect()
    };
    let fds = || open().len();
    let before = open();
    let baseline = before.len();
    for i in 1..=100u64 {
        restart(&h, "prod");
        h.wait_ready_incarnation("prod", i + 1);
    }
    let deadline = Instant::now() + PATIENCE;
    while fds() > baseline {
        if Instant::now() >= deadline {
            let extra: Vec<_> = open().into_iter().filter(|f| !before.contains(f)).collect();
            panic!(
                "the runtime holds {} fds after 100 producer restarts, {baseline} before; new: {extra:?}",
                fds()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let l = lines(&dir, "cons");
    assert!(
        l.iter().any(|v| v["inc"] == 101),
        "the consumer still reads the 101st producer"
    );
}

#[test]
fn messages_are_known_by_their_tags_so_independent_types_interoperate_and_other_tags_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let lookalike = env!("CARGO_BIN_EXE_syncra-test-lookalike");
    let mut c = config(&[("echo", args(dir.path(), "echo", "echo", &[]))]);
    c.push_str(&format!(
        "[drivers.lookalike]\ncommand = \"{lookalike}\"\nargs = [\"to=echo\", \"out={}\"]\n",
        dir.path().join("lookalike.jsonl").display()
    ));
    let h = Harness::start(&c, &[]);
    let seen = wait_lines(dir.path(), "lookalike", "both calls answered", |l| {
        l.len() >= 2
    });
    // Another crate's `Ping` and `Pong`, same tags and shapes: the echo answers it.
    assert_eq!(seen[0]["same_tag"], 41, "{seen:?}\n{}", h.output());
    // A tag the echo does not know is refused, naming both tags.
    let err = seen[1]["other_tag_error"].as_str().unwrap_or_default();
    assert!(
        err.contains("`syncra.test.ping/2`") && err.contains("`syncra.test.ping/1`"),
        "{seen:?}"
    );
}

#[test]
fn a_node_reports_its_own_figures_in_status() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(
        &config(&[
            ("echo", args(dir.path(), "echo", "echo", &[])),
            ("caller", args(dir.path(), "caller", "caller", &["to=echo"])),
        ]),
        &[],
    );
    let answered = |s: &syncra_protocol::status::StatusReport| {
        s.node("echo")?
            .figures
            .iter()
            .find(|f| f.name == "answered")
            .map(|f| f.value)
    };
    h.wait_until("echo has answered calls", PATIENCE, |s| {
        answered(s).filter(|n| *n >= 3.0)
    });
    let json = h.cli(&["status", "--json"]);
    let report: Value = serde_json::from_slice(&json.stdout).unwrap();
    let echo = report["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "echo")
        .unwrap();
    let names: Vec<&str> = echo["figures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["answered", "holding"], "{echo}");
    assert_eq!(echo["figures"][0]["kind"], "counter");
    let text = String::from_utf8_lossy(&h.cli(&["status"]).stdout).into_owned();
    assert!(
        text.contains("FIGURES")
            && text.lines().any(|l| l.starts_with("echo")
                && l.contains("answered ")
                && l.contains("holding 0")),
        "{text}"
    );
}

#[test]
fn a_driver_subscribing_to_a_world_is_ready_before_the_world_exists_and_then_gets_its_scenes() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(
        &config(&[
            (
                "viewer",
                args(dir.path(), "viewer", "viewer", &["stream=world/main/scene"]),
            ),
            // Subscribes with the wrong type before the world exists: refused once it does.
            (
                "wrong",
                args(
                    dir.path(),
                    "wrong",
                    "consumer",
                    &["stream=world/main/scene", "type=wrong"],
                ),
            ),
        ]),
        &[],
    );
    let refused = wait_lines(dir.path(), "wrong", "the late refusal", |l| !l.is_empty());
    let msg = refused[0]["subscribe_error"].as_str().unwrap_or_default();
    assert!(
        msg.contains(
            <syncra_protocol::world::SceneSnapshot as syncra_protocol::message::Message>::TAG
        ) && msg.contains("syncra.test.not-a-tick/1"),
        "{refused:?}"
    );
    let seen = wait_lines(dir.path(), "viewer", "scenes arrive", |l| {
        l.iter().filter(|v| v.get("tick").is_some()).count() >= 3
    });
    assert_eq!(
        seen[0]["attached_at_ready"], false,
        "the stream did not exist when the driver subscribed: {seen:?}"
    );
    let scene = seen.iter().find(|v| v.get("tick").is_some()).unwrap();
    assert_eq!(
        (scene["world"].as_str(), scene["entities"].as_u64()),
        (Some("main"), Some(16))
    );
    let viewer = h.node("viewer");
    assert_eq!(
        (viewer.incarnation, viewer.restarts),
        (1, 0),
        "never killed at its start timeout: {viewer:?}"
    );
}

#[test]
fn one_event_loop_takes_samples_calls_and_a_shutdown_at_once() {
    event_loop(&[]);
}

#[test]
fn the_async_event_loop_does_the_same() {
    event_loop(&["async=1"]);
}

fn event_loop(mode: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let mut looper = vec!["stream=prod/ticks"];
    looper.extend_from_slice(mode);
    // Heartbeats every 30 s: the loop wakes for its events, not for a poll or a beat.
    let c = config(&[
        (
            "prod",
            args(
                dir.path(),
                "prod",
                "producer",
                &["stream=ticks", "rate=100"],
            ),
        ),
        ("looper", args(dir.path(), "looper", "looper", &looper)),
        (
            "caller",
            args(dir.path(), "caller", "caller", &["to=looper"]),
        ),
    ])
    .replace("watch_interval_ms = 500", "watch_interval_ms = 60000")
    .replace(
        "[drivers.looper]\n",
        "[drivers.looper]\nstop_timeout_ms = 20000\n",
    );
    let h = Harness::start(&c, &[]);
    wait_lines(dir.path(), "looper", "ticks arrive", |l| {
        l.iter().filter(|v| v.get("n").is_some()).count() >= 10
    });
    wait_lines(dir.path(), "caller", "calls answered by the loop", |l| {
        l.iter().filter(|v| v.get("incarnation").is_some()).count() >= 5
    });
    // Nothing else wakes the loop now: only the stop request can.
    for node in ["caller", "prod", "looper"] {
        match h.try_request(ControlRequest::Stop { node: node.into() }) {
            Some(ControlReply::Done { .. }) => {}
            other => panic!("stop {node}: {other:?}"),
        }
    }
    let stopped = h.wait_state("looper", syncra_protocol::NodeState::Stopped);
    let exit = stopped.last_exit.expect("an exit");
    // Woken by the request itself: it left on its own, long before the 20 s stop timeout.
    assert_eq!(
        (exit.code, exit.signal.as_deref()),
        (Some(0), None),
        "{exit:?}"
    );
    let seen = lines(dir.path(), "looper");
    assert_eq!(seen.last().unwrap()["shutdown"], true, "{:?}", seen.last());
}

#[test]
fn a_dropped_pattern_subscription_gets_no_later_streams_and_keeps_what_it_had() {
    let (_t, dir) = scratch();
    let pattern = |name: &str, drop: bool| {
        let mut opts = vec!["pattern=*/ticks"];
        if drop {
            opts.push("drop=1");
        }
        args(&dir, name, "pattern", &opts)
    };
    let h = Harness::start(
        &config(&[
            ("first", args(&dir, "first", "producer", &["stream=ticks"])),
            ("dropper", pattern("dropper", true)),
            ("keeper", pattern("keeper", false)),
            ("late", args(&dir, "late", "producer", &["stream=ticks"])),
        ])
        // `late` declares only once both subscribers are ready: the dropper has dropped.
        .replace(
            "[drivers.late]\n",
            "[drivers.late]\ndepends_on = [\"dropper\", \"keeper\"]\n",
        ),
        &[],
    );
    h.wait_ready(&["first", "dropper", "keeper", "late"]);
    wait_lines(&dir, "keeper", "the keeper holds both streams", |l| {
        l.iter().any(|v| v["streams"] == 2)
    });
    let views = streams(&h);
    let consumers = |stream: &str| -> Vec<String> {
        let v = views.iter().find(|v| v.name == stream).expect(stream);
        let mut nodes: Vec<String> = v.consumers.iter().map(|c| c.node.to_string()).collect();
        nodes.sort();
        nodes
    };
    assert_eq!(consumers("first/ticks"), ["dropper", "keeper"]);
    assert_eq!(
        consumers("late/ticks"),
        ["keeper"],
        "the dropped pattern got nothing more"
    );
    assert!(lines(&dir, "dropper").iter().all(|v| v["streams"] == 1));
}
