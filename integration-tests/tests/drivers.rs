//! Drivers on the kit: the seed's hologram example under a real runtime, and what every
//! driver gets from `syncra_node::driver` — settings errors in status, a heartbeat from a
//! library's loop.

use std::time::{Duration, Instant};

use serde_json::Value;
use syncra_integration_tests::{Harness, PATIENCE, jsonl as lines, send, workspace_bin};
use syncra_protocol::NodeState;

const PEER: &str = env!("CARGO_BIN_EXE_syncra-test-peer");

fn hologram(settings: &str, extra: &str) -> String {
    format!(
        "[runtime]\nwatch_interval_ms = 500\n[supervisor]\nintensity = 100\n\
         [drivers.hologram]\ncommand = \"{}\"\nsettings = {settings}\n{extra}\n[worlds]\nentities = 32\n",
        workspace_bin("syncra-hologram").display()
    )
}

/// `syncra tap STREAM`, parsed (`null` while the stream has nothing).
fn tap(h: &Harness, stream: &str) -> Value {
    h.tap(stream).unwrap_or(Value::Null)
}

#[test]
fn the_hologram_example_draws_the_worlds_answers_stats_and_resumes_after_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let stats_out = dir.path().join("stats.jsonl");
    let h = Harness::start(
        &hologram(
            "{ width = 8, height = 8, rate_hz = 50.0 }",
            &format!(
                "[drivers.stats]\ncommand = \"{PEER}\"\nargs = [\"stats\", \"to=hologram\", \"out={}\"]\n",
                stats_out.display()
            ),
        ),
        &[],
    );
    h.wait_ready(&["hologram", "world/main"]);
    // Frames flow: 8 × 8 height maps, some cell above the floor once the world's scene is in.
    let deadline = Instant::now() + PATIENCE;
    let first = loop {
        let t = tap(&h, "hologram/frame");
        let heights = t["value"]["heights"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if heights.len() == 64 && heights.iter().any(|v| v.as_f64().unwrap_or(0.0) > 0.0) {
            break t;
        }
        assert!(
            Instant::now() < deadline,
            "no frame with the world in it: {t}"
        );
    };
    assert_eq!(first["producer_incarnation"], 1);
    // Stats, asked by another node with types of its own under the hologram's tags.
    let deadline = Instant::now() + PATIENCE;
    loop {
        if lines(&stats_out)
            .iter()
            .any(|v| v["worlds"] == 1 && v["frames"].as_u64().unwrap_or(0) > 0)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no stats: {:?}",
            lines(&stats_out)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // And from the command line: JSON in, JSON out.
    let out = h.cli(&["call", "hologram", "syncra.hologram.get-stats/1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["worlds"], 1, "{answer}");
    assert!(answer["frames"].as_u64().unwrap_or(0) > 0, "{answer}");
    // SIGKILL: the next incarnation takes the stream back and the frames go on.
    let holo = h.node("hologram");
    send(holo.pid.unwrap(), libc::SIGKILL);
    h.wait_ready_incarnation("hologram", 2);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let t = tap(&h, "hologram/frame");
        if t["producer_incarnation"] == 2 && t["seq"].as_u64() > first["seq"].as_u64() {
            break;
        }
        assert!(Instant::now() < deadline, "the frames did not resume: {t}");
    }
    // Its figure: frames drawn.
    let s = h.try_status().unwrap();
    let frames = s
        .node("hologram")
        .unwrap()
        .figures
        .iter()
        .find(|f| f.name == "frames")
        .cloned();
    assert!(frames.is_some(), "{:?}", s.node("hologram"));
}

#[test]
fn a_settings_typo_shows_in_status_with_its_key() {
    let h = Harness::start(&hologram("{ widht = 8 }", ""), &[]);
    let failed = h.wait_state("hologram", NodeState::Failed);
    let json = h.cli(&["status", "--json"]);
    let report: Value = serde_json::from_slice(&json.stdout).unwrap();
    let node = report["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "hologram")
        .unwrap()
        .clone();
    let detail = node["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("widht") && detail.contains("settings"),
        "the key is named in status: {detail:?}\n{failed:?}"
    );
    assert_eq!(failed.restarts, 0, "a settings error is not retried");
}

#[test]
fn a_heartbeat_handle_keeps_a_node_alive_inside_a_library_loop_and_shutdown_reaches_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("lib.jsonl");
    // A deadline of 300 ms: the main thread never returns to the node API; only the handle,
    // beating from inside the "library" loop, keeps it alive.
    let h = Harness::start(
        &format!(
            "[runtime]\nwatch_interval_ms = 100\n[drivers.lib]\ncommand = \"{PEER}\"\nargs = [\"library-loop\", \"out={}\"]\n[worlds]\nentities = 16\n",
            out.display()
        ),
        &[],
    );
    h.wait_until("the library loop has run 30 rounds", PATIENCE, |s| {
        s.node("lib")
            .filter(|n| n.state == NodeState::Ready && n.tick.unwrap_or(0) >= 30)
            .cloned()
    });
    let lib = h.node("lib");
    assert_eq!(
        (lib.incarnation, lib.restarts),
        (1, 0),
        "never hung: {lib:?}"
    );
    let out_text = h.cli(&["stop", "lib"]);
    assert!(out_text.status.success());
    let stopped = h.wait_state("lib", NodeState::Stopped);
    assert_eq!(stopped.last_exit.unwrap().code, Some(0));
    assert!(
        lines(&out).iter().any(|v| v["quit_posted"] == true),
        "the shutdown callback posted the quit into the loop"
    );
}

#[test]
fn syncra_call_refuses_what_a_request_type_does_not_allow_and_bad_input_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(
        &format!(
            "[drivers.echo]\ncommand = \"{PEER}\"\nargs = [\"echo\", \"out={}\"]\n[worlds]\nentities = 16\n",
            dir.path().join("echo.jsonl").display()
        ),
        &[],
    );
    h.wait_ready(&["echo", "world/main"]);
    let refused = |args: &[&str], needle: &str| {
        let out = h.cli(args);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    };
    // `LinkPing` does not allow the command line (its `serve_calls` handler says so).
    refused(
        &["call", "echo", "syncra.test.link-ping/1", "42"],
        "`syncra.test.link-ping/1` may not be called from the command line",
    );
    // A tag the callee does not answer, JSON that is not JSON, a node that is not there, a
    // tag that is not a tag.
    refused(
        &["call", "world/main", "syncra.test.ping/1", "1"],
        "`syncra.test.ping/1`",
    );
    refused(
        &["call", "echo", "syncra.test.ping/1", "{oops"],
        "the request is not JSON",
    );
    refused(&["call", "nobody", "a.b/1"], "no node is called `nobody`");
    refused(&["call", "echo", "ping"], "`ping` is not a message tag");
    assert!(h.try_status().is_some(), "the runtime stays up");
}

/// A driver run by hand with `--standalone`: it runs its loop with no runtime, prints what
/// status would show, stops on SIGTERM with exit 0, and refuses bad settings and arguments
/// by name.
#[test]
#[allow(
    clippy::disallowed_methods,
    reason = "a driver run by hand, as its developer would"
)]
fn a_driver_runs_standalone_without_a_runtime() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let bin = workspace_bin("syncra-hologram");
    let mut child = Command::new(&bin)
        .args(["--standalone", "--set", "rate_hz=50", "--set", "width=8"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the hologram");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    // The status line: its name, its ticks and its own figure, counting.
    let deadline = Instant::now() + PATIENCE;
    let frames = |line: &str| -> Option<u64> {
        let rest = line.split(" · ").find_map(|p| p.strip_prefix("frames "))?;
        rest.parse().ok()
    };
    let mut seen = Vec::new();
    let line = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no status line with frames and a rate; saw {seen:?}"));
        if line.contains("ticks/s") && frames(&line).is_some_and(|f| f > 0) {
            break line;
        }
        seen.push(line);
    };
    assert!(line.starts_with("hologram (standalone)"), "{line}");
    send(child.id(), libc::SIGTERM);
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t0.elapsed() < PATIENCE,
            "the standalone driver did not stop on SIGTERM"
        );
        std::thread::yield_now();
    };
    assert_eq!(status.code(), Some(0), "a requested stop exits 0");

    // A settings typo: the key named, the settings exit code.
    let out = Command::new(&bin)
        .args(["--standalone", "--set", "rate_hz=fast"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(syncra_protocol::boot::exit_code::BAD_SETTINGS),
        "{err}"
    );
    assert!(
        err.contains("`rate_hz`") && err.contains("expected f64"),
        "{err}"
    );
    // A bad argument: usage, exit 2.
    let out = Command::new(&bin)
        .args(["--standalone", "--rate", "3"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--rate"), "{err}");
    // By hand without --standalone: told how.
    let out = Command::new(&bin).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("--standalone"), "{err}");
}
