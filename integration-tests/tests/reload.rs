//! Live reload and driver swaps: `syncra reload` (and SIGHUP) applies what changed in the config
//! — new nodes start, removed ones stop, a node whose own config changed restarts alone, and
//! nothing else is touched; a bad config changes nothing; `syncra upgrade` gives one driver a
//! new executable while the worlds keep ticking and its stream's consumers see a gap, not a
//! reset; a new executable that fails to start is rolled back by itself.

use std::path::Path;
use std::time::{Duration, Instant};

use syncra_integration_tests::peers::{self, driver, lines};
use syncra_integration_tests::{Harness, PATIENCE, workspace_bin};
use syncra_protocol::NodeState;

/// Pid and incarnation of every node now, by name.
fn pids(h: &Harness) -> Vec<(String, Option<u32>, u64)> {
    h.try_status()
        .expect("status")
        .nodes
        .iter()
        .map(|n| (n.name.to_string(), n.pid, n.incarnation))
        .collect()
}

fn pid_of(before: &[(String, Option<u32>, u64)], name: &str) -> Option<u32> {
    before
        .iter()
        .find(|(n, _, _)| n == name)
        .and_then(|(_, p, _)| *p)
}

fn stdout(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

const WORLDS: &str = "[worlds]\nentities = 16\nnames = [\"a\", \"b\"]\n";

#[test]
fn a_reload_adds_removes_and_changes_nodes_and_restarts_only_what_changed() {
    let h = Harness::start(WORLDS, &[]);
    h.wait_ready(&["world/main", "world/a", "world/b"]);
    let before = pids(&h);
    // world/b goes, world/c comes, world/a gets other settings; world/main is untouched.
    h.write_config("[worlds]\nentities = 16\nnames = [\"a\", \"c\"]\n[worlds.a]\ntick_hz = 30\n");
    let config = h.dir.path().join("SyncraConfig.toml");
    let dry = h.cli(&[
        "check-config",
        "--diff",
        "--config",
        config.to_str().unwrap(),
        "--run-dir",
        h.run_dir().to_str().unwrap(),
    ]);
    let text = stdout(&dry);
    assert!(dry.status.success(), "{text}");
    for says in [
        "- world/b: removed",
        "~ world/a: settings changed",
        "+ world/c: new",
    ] {
        assert!(text.contains(says), "{says:?} in:\n{text}");
    }
    assert_eq!(pids(&h), before, "a dry run changed something");

    let out = h.cli(&["reload"]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("world/a: ready with its new settings"),
        "{text}"
    );
    assert!(text.contains("world/c: ready"), "{text}");
    let after = pids(&h);
    let names: Vec<&str> = after.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(names, ["world/main", "world/a", "world/c"]);
    assert_eq!(
        pid_of(&after, "world/main"),
        pid_of(&before, "world/main"),
        "an unchanged world was restarted"
    );
    assert_ne!(pid_of(&after, "world/a"), pid_of(&before, "world/a"));
    let b = pid_of(&before, "world/b").unwrap();
    assert!(
        !Path::new(&format!("/proc/{b}")).exists() || h.tagged_processes().iter().all(|p| *p != b),
        "world/b still runs"
    );
    // A reload of the same file again changes nothing.
    let out = h.cli(&["reload"]);
    assert!(stdout(&out).contains("no change"), "{}", stdout(&out));
    assert_eq!(pids(&h), after);
}

#[test]
fn a_reload_with_a_bad_file_changes_nothing_and_says_why() {
    let h = Harness::start(WORLDS, &[]);
    h.wait_ready(&["world/main", "world/a", "world/b"]);
    let before = pids(&h);
    for (config, says) in [
        (
            "[worlds]\nentities = 16\nnames = [\"a\"]\n[worlds.a]\nspeed = 3\n",
            "`worlds.a.speed`: unknown key",
        ),
        (
            "[runtime]\nwatch_interval_ms = 0\n[worlds]\nnames = [\"a\"]\n",
            "`runtime.watch_interval_ms`: 0 is too small",
        ),
    ] {
        h.write_config(config);
        let out = h.cli(&["reload"]);
        let text = stdout(&out);
        assert_eq!(out.status.code(), Some(2), "{text}");
        assert!(text.contains("nothing changed"), "{text}");
        assert!(text.contains(says), "{says:?} in:\n{text}");
        assert_eq!(pids(&h), before);
    }
    assert_eq!(pids(&h), before);
    // A command that is not there is refused too, naming it.
    h.write_config(
        "[worlds]\nentities = 16\nnames = [\"a\", \"b\"]\ncommand = \"/nowhere/world\"\n",
    );
    let out = h.cli(&["reload"]);
    assert!(stdout(&out).contains("/nowhere/world"), "{}", stdout(&out));
    assert_eq!(pids(&h), before);
}

#[test]
fn sighup_reloads() {
    let h = Harness::start(WORLDS, &[]);
    h.wait_ready(&["world/main", "world/a", "world/b"]);
    h.write_config("[worlds]\nentities = 16\nnames = [\"a\", \"b\", \"d\"]\n");
    h.signal(libc::SIGHUP);
    h.wait_ready(&["world/d"]);
    assert_eq!(h.node("world/a").incarnation, 1);
}

#[test]
fn a_driver_swapped_live_keeps_the_worlds_ticking_and_its_consumers_see_a_gap_not_a_reset() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path();
    let v1 = peers::copy(dir, "producer-v1");
    let v2 = peers::copy(dir, "producer-v2");
    let producer = peers::driver_running(
        &v1,
        dir,
        "producer",
        "producer",
        &[
            "stream=producer/ticks",
            "policy=drop",
            "slots=64",
            "rate=200",
        ],
    );
    let config = format!(
        "{producer}{}[worlds]\nentities = 16\n",
        driver(
            dir,
            "consumer",
            "consumer",
            &["stream=producer/ticks"],
            None
        )
    );
    let h = Harness::start(&config, &[]);
    h.wait_ready(&["producer", "consumer", "world/main"]);
    let world = h.node("world/main");
    let got = |n: usize| {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let seqs: Vec<serde_json::Value> = lines(dir, "consumer")
                .into_iter()
                .filter(|v| v.get("seq").is_some())
                .collect();
            if seqs.len() >= n {
                return seqs;
            }
            assert!(
                Instant::now() < deadline,
                "the consumer got {} of {n}",
                seqs.len()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let before = got(50).len();
    let tick_before = h.node("world/main").tick.unwrap_or(0);
    let out = h.cli(&["upgrade", "producer", "--command", &v2]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("producer: ready with its new command"),
        "{text}"
    );
    let swapped = h.node("producer");
    assert_eq!(swapped.incarnation, 2);
    let exe = std::fs::read_link(format!("/proc/{}/exe", swapped.pid.unwrap())).unwrap();
    assert_eq!(exe.display().to_string(), v2, "it runs the new executable");
    // The world went on: same process, its tick never went back.
    let now = h.node("world/main");
    assert_eq!((now.pid, now.incarnation), (world.pid, world.incarnation));
    assert!(now.tick.unwrap_or(0) >= tick_before);
    // Its consumer: the new producer's messages continue the stream after a gap.
    let all = got(before + 50);
    let seqs: Vec<u64> = all.iter().map(|v| v["seq"].as_u64().unwrap()).collect();
    assert!(
        seqs.windows(2).all(|w| w[1] > w[0]),
        "sequence numbers went back: {seqs:?}"
    );
    let first_new = all
        .iter()
        .find(|v| v["inc"].as_u64() == Some(2))
        .expect("a message of the new executable");
    assert!(first_new["gap"].as_u64().unwrap() >= 1, "{first_new}");
    assert_eq!(first_new["n"].as_u64(), Some(1), "{first_new}");
}

#[test]
fn a_new_executable_that_fails_to_start_is_rolled_back_by_itself() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path();
    let v1 = peers::copy(dir, "echo-v1");
    let config = format!(
        "[drivers.echo]\ncommand = \"{v1}\"\nargs = [{}]\nrollback = true\n[worlds]\nentities = 16\n",
        syncra_integration_tests::peers::args(dir, "echo", "echo", &[])
    );
    let h = Harness::start(&config, &[]);
    h.wait_ready(&["echo", "world/main"]);
    let world = h.node("world/main").pid;
    // A "new version" that exits at once.
    let broken = workspace_bin("syncra-test-quitter").display().to_string();
    let out = h.cli(&["upgrade", "echo", "--command", &broken]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}");
    let back = h.wait_until("echo runs its previous executable again", PATIENCE, |s| {
        s.node("echo")
            .filter(|n| n.state == NodeState::Ready && n.incarnation >= 3)
            .cloned()
    });
    let exe = std::fs::read_link(format!("/proc/{}/exe", back.pid.unwrap())).unwrap();
    assert_eq!(exe.display().to_string(), v1);
    let crash = h.crashes(Some("echo")).pop().expect("a crash record");
    assert!(
        crash
            .record
            .detail
            .contains(&format!("rolled back to `{v1}`")),
        "{}",
        crash.record.detail
    );
    assert_eq!(h.node("world/main").pid, world, "the world was touched");
    // An executable that is not there is refused at once, naming it.
    let out = h.cli(&["upgrade", "echo", "--command", "/nowhere/echo"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stdout(&out).contains("/nowhere/echo"), "{}", stdout(&out));
    assert_eq!(h.node("echo").incarnation, back.incarnation);
}
