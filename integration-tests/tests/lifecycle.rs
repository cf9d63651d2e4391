//! The runtime's own lifecycle: hooks, ordered shutdown, death of the runtime, crash records
//! on disk, and one runtime per run directory.

#![allow(
    clippy::disallowed_methods,
    reason = "the tests run the real `syncra` binary, as a user would"
)]

use std::time::Duration;

use syncra_integration_tests::{Harness, PATIENCE, send, workspace_bin};
use syncra_protocol::NodeState;
use syncra_protocol::crash::{CrashRecord, Reason};

const CRASHER: &str = env!("CARGO_BIN_EXE_syncra-test-crasher");

fn base(extra: &str) -> String {
    format!(
        r#"
[runtime]
watch_interval_ms = 250
stop_timeout_ms = 3000
[supervisor]
backoff_initial_ms = 50
{extra}
"#
    )
}

#[test]
fn hooks_run_with_the_event_in_their_environment() {
    let log = "$SYNCRA_TEST_DIR/hooks.log";
    let config = base(&format!(
        r#"
[hooks]
before_start = 'echo "before_start $SYNCRA_NODE $SYNCRA_NODE_KIND $SYNCRA_INCARNATION" >> {log}'
after_ready = 'echo "after_ready $SYNCRA_NODE $SYNCRA_PID" >> {log}'
on_crash = 'echo "on_crash $SYNCRA_NODE $SYNCRA_REASON code=$SYNCRA_EXIT_CODE record=$SYNCRA_CRASH_RECORD decision=$SYNCRA_DECISION" >> {log}'
after_stop = 'echo "after_stop $SYNCRA_NODE $SYNCRA_REASON" >> {log}'

[drivers.d]
command = "{CRASHER}"
hooks = {{ before_start = 'echo "own before_start $SYNCRA_NODE" >> {log}' }}

[drivers.slow]
command = "{CRASHER}"
hooks = {{ before_start = "sleep 1000", timeout_ms = 300 }}
"#
    ));
    let mut h = Harness::start(&config, &[]);
    let views = h.wait_ready(&["d", "slow", "world/main"]);
    let hooks_log = h.dir.path().join("hooks.log");
    let read = || std::fs::read_to_string(&hooks_log).unwrap_or_default();
    let output = h.dir.path().join("runtime.out");
    let has = |needle: String| {
        let deadline = std::time::Instant::now() + PATIENCE;
        while !read().contains(&needle) {
            let out = std::fs::read_to_string(&output).unwrap_or_default();
            assert!(
                std::time::Instant::now() < deadline,
                "no `{needle}` in hooks.log:\n{}\n{out}",
                read()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    has("before_start d driver 1".into());
    has("before_start world/main world 1".into());
    has("own before_start d".into());
    assert_eq!(
        read().matches("own before_start").count(),
        1,
        "a node's own hook runs for that node only:\n{}",
        read()
    );
    has(format!("after_ready d {}", views[0].pid.unwrap()));
    has(format!("after_ready world/main {}", views[2].pid.unwrap()));
    assert!(
        h.output().contains("hook timed out"),
        "the slow hook was cut off and `slow` started anyway:\n{}",
        h.output()
    );

    send(views[0].pid.unwrap(), libc::SIGUSR1);
    has("on_crash d crashed code=101 record=".into());
    let line = read()
        .lines()
        .find(|l| l.starts_with("on_crash d"))
        .unwrap()
        .to_owned();
    let record = line
        .split("record=")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .to_owned();
    assert!(
        std::path::Path::new(&record).is_file(),
        "SYNCRA_CRASH_RECORD names the record: {line}"
    );
    assert!(line.contains("decision=restart after"), "{line}");

    h.wait_ready(&["d"]);
    h.signal(libc::SIGTERM);
    assert!(h.wait_exit(PATIENCE).success());
    has("after_stop world/main requested".into());
    has("after_stop d requested".into());
}

#[test]
fn sigterm_stops_worlds_then_drivers_in_reverse_order() {
    let config = base(&format!(
        "[drivers.a]\ncommand = \"{CRASHER}\"\n[drivers.b]\ncommand = \"{CRASHER}\"\n[worlds]\ncount = 2\nentities = 16\n"
    ));
    let mut h = Harness::start(&config, &[]);
    h.wait_ready(&["a", "b", "world/main", "world/main-2"]);
    assert!(!h.tagged_processes().is_empty());
    h.signal(libc::SIGTERM);
    let status = h.wait_exit(PATIENCE);
    assert_eq!(
        status.code(),
        Some(0),
        "a clean shutdown exits 0:\n{}",
        h.output()
    );
    h.wait_no_processes_left(PATIENCE);

    let out = h.output();
    let stopped = |n: &str| {
        out.lines()
            .position(|l| l.contains("stopped on request") && l.contains(&format!("node={n} ")))
            .unwrap_or_else(|| panic!("{n} was not stopped gracefully:\n{out}"))
    };
    for w in ["world/main", "world/main-2"] {
        assert!(
            stopped(w) < stopped("b"),
            "worlds stop before drivers:\n{out}"
        );
    }
    assert!(
        stopped("b") < stopped("a"),
        "drivers stop in reverse start order:\n{out}"
    );
    assert!(
        !h.run_dir().join("control.sock").exists(),
        "the control socket is removed"
    );
}

#[test]
fn sigkill_of_the_runtime_leaves_no_process() {
    let config = base(&format!(
        "[drivers.a]\ncommand = \"{CRASHER}\"\n[worlds]\ncount = 3\nentities = 16\n"
    ));
    let mut h = Harness::start(&config, &[]);
    h.wait_ready(&["a", "world/main", "world/main-2", "world/main-3"]);
    assert_eq!(h.tagged_processes().len(), 4, "one process per node");
    h.signal(libc::SIGKILL);
    h.wait_exit(PATIENCE);
    h.wait_no_processes_left(PATIENCE);
}

#[test]
fn shutdown_command_and_a_stubborn_node() {
    // A node that ignores the graceful request is killed at its stop timeout.
    let config = base(&format!(
        "[drivers.stubborn]\ncommand = \"/bin/sh\"\nargs = [\"-c\", \"trap '' TERM; exec {CRASHER}\"]\nstop_timeout_ms = 300\n"
    ));
    let mut h = Harness::start(&config, &[]);
    h.wait_ready(&["stubborn", "world/main"]);
    let out = h.cli(&["shutdown"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(h.wait_exit(PATIENCE).code(), Some(0));
    h.wait_no_processes_left(PATIENCE);
}

#[test]
fn crash_records_on_disk_carry_the_reason() {
    let config = base(&format!(
        "[drivers.c]\ncommand = \"{CRASHER}\"\n[worlds]\nentities = 16\n"
    ));
    let h = Harness::start(&config, &[]);
    let views = h.wait_ready(&["c", "world/main"]);
    send(views[0].pid.unwrap(), libc::SIGUSR1); // panics: crashed
    send(views[1].pid.unwrap(), libc::SIGKILL); // killed
    h.wait_until("both are back", PATIENCE, |s| {
        ["c", "world/main"]
            .iter()
            .all(|n| {
                s.node(n)
                    .is_some_and(|v| v.state == NodeState::Ready && v.incarnation == 2)
            })
            .then_some(())
    });
    let dir = h.log_dir().join("crashes");
    let mut records: Vec<CrashRecord> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .map(|e| serde_json::from_slice(&std::fs::read(e.path()).unwrap()).unwrap())
        .collect();
    records.sort_by(|a, b| a.node.cmp(&b.node));
    assert_eq!(records.len(), 2, "{records:#?}");
    let (c, w) = (&records[0], &records[1]);
    assert_eq!(
        (c.node.as_str(), c.reason, c.exit_code, c.incarnation),
        ("c", Reason::Crashed, Some(101), 1)
    );
    assert_eq!(c.pid, views[0].pid);
    assert!(
        c.panic.as_ref().unwrap().backtrace.contains("crasher"),
        "the backtrace is recorded"
    );
    assert!(
        c.stderr_tail
            .iter()
            .any(|l| l.contains("crash requested by the test")),
        "{:?}",
        c.stderr_tail
    );
    assert!(std::path::Path::new(c.log_file.as_ref().unwrap()).is_file());
    assert_eq!(
        (w.node.as_str(), w.reason, w.signal.as_deref()),
        ("world/main", Reason::Killed, Some("SIGKILL"))
    );

    // Each child process has its own log, named with its node name and pid.
    let log = h
        .log_dir()
        .join(format!("world-main_{}.log", views[1].pid.unwrap()));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("scene built"),
        "the world's own tracing output is in its log:\n{text}"
    );
    let runtime_logs: Vec<_> = std::fs::read_dir(h.log_dir())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("runtime_"))
        .collect();
    assert_eq!(runtime_logs.len(), 1);
}

#[test]
fn one_runtime_per_run_dir_and_side_by_side_with_another() {
    let h = Harness::start(&base("[worlds]\nentities = 16\n"), &[]);
    h.wait_ready(&["world/main"]);
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: std::path::PathBuf| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(h.run_dir()), 0o700, "the run dir is private");
    assert_eq!(
        mode(h.run_dir().join("control.sock")),
        0o600,
        "the control socket is private"
    );
    let out = std::process::Command::new(workspace_bin("syncra"))
        .args(["run", "--run-dir"])
        .arg(h.run_dir())
        .arg("--log-dir")
        .arg(h.dir.path().join("other-logs"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "another syncra runtime (pid {}) is running",
            h.pid()
        )),
        "{err}"
    );

    // A second runtime with its own run dir runs beside the first.
    let other = Harness::start(
        &base("[worlds]\ndefault_world = \"other\"\nentities = 16\n"),
        &[],
    );
    other.wait_ready(&["world/other"]);
    assert_eq!(h.node("world/main").state, NodeState::Ready);
}

#[test]
fn client_commands_without_a_runtime_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(workspace_bin("syncra"))
        .args(["status", "--run-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no syncra runtime is running with run dir")
            && err.contains(&dir.path().display().to_string()),
        "{err}"
    );
}

#[test]
fn giving_up_can_shut_the_runtime_down() {
    let quitter = env!("CARGO_BIN_EXE_syncra-test-quitter");
    let log = "$SYNCRA_TEST_DIR/hooks.log";
    let config = base(&format!(
        r#"
intensity = 1
on_give_up = "shutdown"
[hooks]
on_give_up = 'echo "on_give_up $SYNCRA_NODE $SYNCRA_REASON" >> {log}'
[drivers.doomed]
command = "{quitter}"
"#
    ));
    let mut h = Harness::start(&config, &[]);
    let status = h.wait_exit(PATIENCE);
    assert_eq!(
        status.code(),
        Some(1),
        "a shutdown because the runtime gave up exits 1:\n{}",
        h.output()
    );
    h.wait_no_processes_left(PATIENCE);
    let hooks = std::fs::read_to_string(h.dir.path().join("hooks.log")).unwrap_or_default();
    assert!(
        hooks.contains("on_give_up doomed failed-to-start"),
        "the give-up hook ran: {hooks:?}"
    );
    let out = h.output();
    assert!(out.contains("gave up") && out.contains("doomed"), "{out}");
    let records = std::fs::read_dir(h.log_dir().join("crashes"))
        .unwrap()
        .count();
    assert_eq!(
        records, 2,
        "one record per failure, the last one deciding the shutdown"
    );
}

#[test]
fn sigint_is_an_orderly_shutdown_too() {
    let mut h = Harness::start(&base("[worlds]\ncount = 2\nentities = 16\n"), &[]);
    h.wait_ready(&["world/main", "world/main-2"]);
    h.signal(libc::SIGINT);
    assert_eq!(h.wait_exit(PATIENCE).code(), Some(0), "{}", h.output());
    h.wait_no_processes_left(PATIENCE);
    assert!(
        h.output().contains("cause=Signal(\"SIGINT\")"),
        "{}",
        h.output()
    );
}

/// Inodes of the sockets process `pid` has open.
fn socket_inodes(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|t| {
            t.to_string_lossy()
                .strip_prefix("socket:[")
                .map(|s| s.trim_end_matches(']').to_owned())
        })
        .collect()
}

#[test]
fn no_process_listens_on_tcp_and_the_cookie_stays_secret() {
    let config = base(&format!(
        "[drivers.d]\ncommand = \"{CRASHER}\"\n[worlds]\ncount = 2\nentities = 16\n"
    ));
    let h = Harness::start(&config, &[]);
    let views = h.wait_ready(&["d", "world/main", "world/main-2"]);
    let pids: Vec<u32> = std::iter::once(h.pid())
        .chain(views.iter().filter_map(|v| v.pid))
        .collect();

    // LISTEN sockets (state 0A), from /proc/net/tcp{,6}: ractor_cluster binds one in every
    // process (to loopback), and every process seals it, so none may be left.
    let mut listeners = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for line in std::fs::read_to_string(table)
            .unwrap_or_default()
            .lines()
            .skip(1)
        {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 9 && f[3] == "0A" {
                listeners.push((f[1].to_owned(), f[9].to_owned()));
            }
        }
    }
    for pid in &pids {
        let mine = socket_inodes(*pid);
        let theirs: Vec<&(String, String)> = listeners
            .iter()
            .filter(|(_, inode)| mine.contains(inode))
            .collect();
        assert!(theirs.is_empty(), "pid {pid} listens on TCP: {theirs:?}");
    }

    // The cookie is 64 hex digits, random per session: no such token may appear in any
    // process's argv or environment, or in any file the runtime wrote.
    let secret_like = |text: &str| {
        text.split(|c: char| !c.is_ascii_hexdigit())
            .any(|t| t.len() >= 64)
    };
    for pid in &pids {
        for what in ["cmdline", "environ"] {
            let raw = std::fs::read(format!("/proc/{pid}/{what}")).unwrap_or_default();
            assert!(
                !secret_like(&String::from_utf8_lossy(&raw)),
                "pid {pid} {what} carries a secret-like token"
            );
        }
    }
    let mut stack = vec![h.dir.path().to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(text) = std::fs::read_to_string(&path) {
                assert!(
                    !secret_like(&text),
                    "{} carries a secret-like token",
                    path.display()
                );
            }
        }
    }
}

#[test]
fn a_client_command_whose_reader_goes_away_ends_quietly() {
    use std::process::{Command, Stdio};
    let h = Harness::start("[worlds]\nentities = 4\ncount = 3\n", &[]);
    h.wait_ready(&["world/main"]);
    // `syncra status | head -1`, with a reader that has already gone.
    let mut child = Command::new(workspace_bin("syncra"))
        .args(["status"])
        .env("SYNCRA_RUN_DIR", h.run_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    use std::os::unix::process::ExitStatusExt;
    assert!(
        out.status.success() || out.status.signal() == Some(libc::SIGPIPE),
        "{:?} {err}",
        out.status
    );
    // The runtime does not mind.
    assert!(h.try_status().is_some());
}
