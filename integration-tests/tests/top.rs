//! `syncra top` as a person uses it: in a terminal (tmux), reading the screen (capture-pane)
//! and typing keys (send-keys) — the nodes, streams and events are on screen and follow a
//! restart, a key restarts the selected node, another opens its crash records with the stack
//! of its native crash, and `q` gives the terminal back.

#![allow(
    clippy::disallowed_methods,
    reason = "the test drives tmux, a terminal, as a user does"
)]

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use syncra_integration_tests::{Harness, PATIENCE, send, workspace_bin};

/// A tmux server of this test's own, gone when dropped.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn new() -> Tmux {
        Tmux {
            socket: format!("syncra-top-test-{}", std::process::id()),
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .expect("tmux (cargo test-all installs it)")
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.run(&["capture-pane", "-p", "-t", "top"]).stdout).into_owned()
    }

    /// Wait until the screen satisfies `f`; the screen.
    fn until(&self, what: &str, f: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let screen = self.screen();
            if f(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting until {what}; the screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "top"];
        args.extend_from_slice(keys);
        assert!(self.run(&args).status.success());
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

/// The screen line of node `name` in the nodes table.
fn row<'a>(screen: &'a str, name: &str) -> Option<&'a str> {
    screen
        .lines()
        .find(|l| l.trim_start_matches('│').starts_with(&format!("{name} ")))
}

#[test]
fn top_shows_the_family_restarts_a_node_by_key_and_opens_its_crash_records() {
    let h = Harness::start(
        "[runtime]\nwatch_interval_ms = 250\n[supervisor]\nbackoff_initial_ms = 50\n[drivers.native]\ncommand = \"syncra-test-native\"\nargs = [\"null\"]\n[worlds]\nentities = 16\n",
        &[],
    );
    let views = h.wait_ready(&["native", "world/main"]);
    let tmux = Tmux::new();
    let command = format!(
        "{} top --run-dir {}",
        workspace_bin("syncra").display(),
        h.run_dir().display()
    );
    assert!(
        tmux.run(&[
            "new-session",
            "-d",
            "-s",
            "top",
            "-x",
            "160",
            "-y",
            "45",
            &command
        ])
        .status
        .success()
    );
    // Every node with its state and pid, the world's stream with its rate.
    let screen = tmux.until("the nodes and the stream are shown", |s| {
        row(s, "world/main").is_some_and(|r| r.contains("ready"))
            && row(s, "native").is_some_and(|r| r.contains("ready"))
            && s.contains("world/main/scene")
    });
    let main_pid = views[1].pid.unwrap().to_string();
    assert!(
        row(&screen, "world/main").is_some_and(|r| r.contains(&main_pid)),
        "{screen}"
    );

    // The second row is world/main: select it and restart it.
    tmux.keys(&["Down", "r"]);
    let again = h.wait_ready_incarnation("world/main", 2);
    assert_eq!(
        h.node("native").incarnation,
        1,
        "only the selected node restarted"
    );
    let new_pid = again.pid.unwrap().to_string();
    tmux.until("the restart shows: new pid, an event", |s| {
        row(s, "world/main").is_some_and(|r| r.contains(&new_pid))
            && s.contains("world/main#2")
            && s.contains("restart world/main: asked")
    });

    // The native node crashes; its crash records open on `c`, with its dump's stack.
    send(views[0].pid.unwrap(), libc::SIGUSR1);
    h.wait_ready_incarnation("native", 2);
    tmux.keys(&["Up", "c"]);
    tmux.until("the crash records show the stack", |s| {
        s.contains("crash records of native") && s.contains("syncra_native_null_deref")
    });

    // q: the program ends, and with it the tmux session.
    tmux.keys(&["q"]);
    let deadline = Instant::now() + PATIENCE;
    while tmux.run(&["has-session", "-t", "top"]).status.success() {
        assert!(Instant::now() < deadline, "syncra top did not quit on q");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn top_without_a_runtime_says_so_on_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(workspace_bin("syncra"))
        .args(["top", "--run-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("syncra top:"), "{err}");
}
