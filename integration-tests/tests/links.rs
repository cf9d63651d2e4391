//! Direct links between nodes: once two nodes have talked, the caller's messages and calls go
//! over a socketpair the runtime brokered, not through the hub — in order across the switch,
//! failing at once when the callee dies, falling back to the hub past the link limit or when
//! links are switched off.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use syncra_integration_tests::peers::{args, lines};
use syncra_integration_tests::{Harness, PATIENCE, send};

const PEER: &str = env!("CARGO_BIN_EXE_syncra-test-peer");

fn config(runtime: &str, drivers: &[(&str, String)]) -> String {
    let mut c = format!(
        "[runtime]\nwatch_interval_ms = 500\n{runtime}\n\
         [supervisor]\nbackoff_initial_ms = 20\nbackoff_jitter = 0.0\n[worlds]\nentities = 16\n"
    );
    for (name, args) in drivers {
        c.push_str(&format!(
            "[drivers.{name}]\ncommand = \"{PEER}\"\nargs = [{args}]\n"
        ));
    }
    c
}

/// The first line `name` reported that `f` picks, waiting for it.
fn wait_line(dir: &Path, name: &str, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = lines(dir, name).into_iter().find(&f) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting until {what}; {name} reported:\n{:#?}",
            lines(dir, name)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn scratch() -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let p = t.path().to_owned();
    (t, p)
}

/// A sink's report once it has everything.
fn report(dir: &Path, sink: &str) -> Value {
    wait_line(dir, sink, "the sink has every message", |v| {
        v.get("received").is_some()
    })
}

#[test]
fn messages_keep_their_order_from_the_hub_onto_a_direct_link() {
    let (_t, dir) = scratch();
    let h = Harness::start(
        &config(
            "",
            &[
                ("sink", args(&dir, "sink", "sink", &["count=3000"])),
                (
                    "seq",
                    args(&dir, "seq", "sequencer", &["to=sink", "count=3000"]),
                ),
            ],
        ),
        &[],
    );
    h.wait_ready(&["sink", "seq"]);
    let r = report(&dir, "sink");
    assert_eq!(r["out_of_order"], 0, "{r}\n{:#?}", lines(&dir, "sink"));
    // The first went through the hub (asking for the link), the rest mostly over the link.
    let (direct, hub) = (r["direct"].as_u64().unwrap(), r["hub"].as_u64().unwrap());
    assert!(hub >= 1, "{r}");
    assert!(direct > hub, "{r}");
    let seq = wait_line(&dir, "seq", "the sequencer reports", |v| {
        v.get("refused").is_some()
    });
    assert_eq!(seq["refused"], 0, "{seq}");
}

#[test]
fn a_call_on_a_direct_link_fails_at_once_when_its_callee_dies_and_the_next_goes_to_the_new_one() {
    let (_t, dir) = scratch();
    let config = config(
        "",
        &[
            ("echo", args(&dir, "echo", "echo", &["hold_direct=1"])),
            (
                "caller",
                args(&dir, "caller", "caller", &["to=echo", "timeout_ms=600000"]),
            ),
        ],
    )
    // The caller blocks in its call for as long as the test takes: no hang for it.
    .replace(
        "[drivers.caller]\n",
        "[drivers.caller]\nheartbeat_deadline_ms = 600000\n",
    );
    let h = Harness::start(&config, &[]);
    h.wait_ready(&["echo", "caller"]);
    // The calls through the hub are answered; the first over the link is held.
    wait_line(
        &dir,
        "echo",
        "echo holds a call that came over the link",
        |v| v["holding"] == 1,
    );
    let answered: Vec<Value> = lines(&dir, "caller")
        .into_iter()
        .filter(|v| v.get("incarnation").is_some())
        .collect();
    assert!(
        answered.iter().all(|v| v["direct"] == false),
        "{answered:?}"
    );
    send(h.node("echo").pid.unwrap(), libc::SIGKILL);
    // Its timeout is ten minutes: the error is the link's end, at once.
    let failed = wait_line(&dir, "caller", "the held call fails", |v| {
        v.get("error").is_some()
    });
    let error = failed["error"].as_str().unwrap();
    assert!(
        error.contains("echo (incarnation 1) exited before answering"),
        "{error}"
    );
    assert_eq!(failed["returned"], failed["n"], "the request comes back");
    // The next call resolves the name again: through the hub, the new incarnation answers.
    let next = wait_line(&dir, "caller", "the new echo answers", |v| {
        v["incarnation"] == 2
    });
    assert_eq!(next["n"].as_u64(), failed["n"].as_u64().map(|n| n + 1));
    assert_eq!(h.node("caller").incarnation, 1);
}

#[test]
fn past_its_link_limit_a_node_talks_through_the_hub() {
    let (_t, dir) = scratch();
    let h = Harness::start(
        &config(
            "max_links = 1",
            &[
                ("a", args(&dir, "a", "sink", &["count=2000"])),
                ("b", args(&dir, "b", "sink", &["count=2000"])),
                (
                    "seq",
                    args(&dir, "seq", "sequencer", &["to=a,b", "count=2000"]),
                ),
            ],
        ),
        &[],
    );
    h.wait_ready(&["a", "b", "seq"]);
    let (ra, rb) = (report(&dir, "a"), report(&dir, "b"));
    for r in [&ra, &rb] {
        assert_eq!(r["out_of_order"], 0, "{r}");
    }
    // One of them got a link (the sequencer's only one); the other everything by the hub.
    let direct = |r: &Value| r["direct"].as_u64().unwrap();
    let (linked, hub_only) = if direct(&ra) > 0 {
        (&ra, &rb)
    } else {
        (&rb, &ra)
    };
    assert!(direct(linked) > 0, "{ra} {rb}");
    assert_eq!(direct(hub_only), 0, "{ra} {rb}");
    let seq = wait_line(&dir, "seq", "the sequencer reports", |v| {
        v.get("refused").is_some()
    });
    assert_eq!(seq["refused"], 0, "{seq}");
}

#[test]
fn with_direct_links_off_everything_goes_through_the_hub() {
    let (_t, dir) = scratch();
    let h = Harness::start(
        &config(
            "direct_links = false",
            &[
                ("sink", args(&dir, "sink", "sink", &["count=1000"])),
                (
                    "seq",
                    args(&dir, "seq", "sequencer", &["to=sink", "count=1000"]),
                ),
            ],
        ),
        &[],
    );
    h.wait_ready(&["sink", "seq"]);
    let r = report(&dir, "sink");
    assert_eq!(r["out_of_order"], 0, "{r}");
    assert_eq!(r["direct"], 0, "{r}");
    assert_eq!(r["hub"], 1000, "{r}");
}

#[test]
fn bad_link_settings_are_refused_with_their_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("SyncraConfig.toml");
    for (bad, says) in [
        ("max_links = 0", "`runtime.max_links`: 0 is out of range"),
        (
            "max_links = 100000",
            "`runtime.max_links`: 100000 is out of range",
        ),
        ("direct_links = \"yes\"", "direct_links"),
    ] {
        std::fs::write(&path, format!("[runtime]\n{bad}\n")).unwrap();
        #[allow(clippy::disallowed_methods, reason = "the test runs the real CLI")]
        let out = std::process::Command::new(syncra_integration_tests::workspace_bin("syncra"))
            .args(["check-config", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bad}: accepted");
        assert!(stderr.contains(says), "{bad}: {stderr}");
    }
}

/// A node that writes garbage on its direct link (as a program that does not use syncra-node
/// could) loses that link, nothing more: the receiver stays up and keeps answering it (through
/// the hub, then a new link), and its log says what happened.
#[test]
fn garbage_on_a_direct_link_closes_that_link_only() {
    let (_t, dir) = scratch();
    let h = Harness::start(
        &config(
            "",
            &[
                ("victim", args(&dir, "victim", "sink", &[])),
                ("vandal", args(&dir, "vandal", "vandal", &["to=victim"])),
            ],
        ),
        &[],
    );
    h.wait_ready(&["victim", "vandal", "world/main"]);
    wait_line(&dir, "vandal", "the vandal wrote on its link", |v| {
        v.get("vandalised").is_some()
    });
    let after = wait_line(&dir, "vandal", "the victim answers again", |v| {
        v.get("answered_after").is_some()
    });
    assert_eq!(after["answered_after"]["Ok"], 1, "{after}");
    let v = h.node("victim");
    assert_eq!(
        (v.state, v.incarnation),
        (syncra_protocol::NodeState::Ready, 1)
    );
    // Its log says why (written through its output pipe: it may land a moment later).
    let victim_log = || -> String {
        std::fs::read_dir(h.log_dir())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("victim_"))
            .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
            .collect()
    };
    let deadline = Instant::now() + PATIENCE;
    while !victim_log().contains("malformed; link closed") {
        assert!(
            Instant::now() < deadline,
            "{}\nvandal: {:?}",
            victim_log(),
            lines(&dir, "vandal")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(h.crashes(None).is_empty(), "{:?}", h.crashes(None));
}
