//! Hardening: nothing another local process does to a runtime's ports, sockets or fds can
//! take a node down, make the supervisor give up, or silence status and crash records. The
//! misbehaving side is `syncra-test-intruder`, run as an unprivileged user (`nobody`) when the
//! test runs as root and the defect involves another user.

use std::path::Path;
use std::time::{Duration, Instant};

use syncra_integration_tests::{
    Harness, Intruder, Options, PATIENCE, fd_count, listening_ports, send,
};
use syncra_protocol::NodeState;
use syncra_runtime::{ClientError, ControlClient, MAX_CONNECTIONS, MAX_SUBSCRIBERS};

const WORLDS: &str = "[worlds]\ndefault_world = \"a\"\nnames = [\"b\", \"c\"]\nentities = 16\n";
const NAMES: [&str; 3] = ["world/a", "world/b", "world/c"];

/// A runtime whose processes log where their cluster listener was, with `nofile` fds.
fn start(config: &str, nofile: Option<u64>) -> Harness {
    let env = vec![(
        "SYNCRA_LOG".to_owned(),
        "info,syncra_protocol=debug".to_owned(),
    )];
    Harness::start_with(
        config,
        &[],
        Options {
            nofile,
            env,
            ..Options::default()
        },
    )
}

/// The ports the cluster listeners of the runtime and of every node in `names` were bound to
/// before they were sealed — each process logs it — after checking that none of these
/// processes listens on any TCP port now.
fn cluster_ports(h: &Harness, names: &[&str]) -> Vec<String> {
    let views = h.wait_ready(names);
    let mut texts = vec![h.output()];
    for v in &views {
        let pid = v.pid.unwrap();
        let log = h
            .log_dir()
            .join(format!("{}_{pid}.log", v.name.file_stem()));
        texts.push(std::fs::read_to_string(&log).unwrap_or_default());
    }
    for pid in std::iter::once(h.pid()).chain(views.iter().filter_map(|v| v.pid)) {
        let open = listening_ports(pid);
        assert!(
            open.is_empty(),
            "process {pid} listens on TCP ports {open:?}"
        );
    }
    let ports: Vec<String> = texts
        .iter()
        .flat_map(|t| t.lines())
        .filter(|l| l.contains("cluster listener sealed"))
        .filter_map(|l| l.split("addr=127.0.0.1:").nth(1))
        .filter_map(|rest| rest.split_whitespace().next().map(str::to_owned))
        .collect();
    assert_eq!(
        ports.len(),
        names.len() + 1,
        "every process logs its sealed listener: {ports:?}\n{}",
        h.output()
    );
    ports
}

fn args(head: &[&str], rest: &[String]) -> Vec<String> {
    head.iter()
        .map(|s| s.to_string())
        .chain(rest.iter().cloned())
        .collect()
}

/// Kill `name`'s process and wait for its next incarnation and its crash record on disk.
fn kill_and_see_it_back(h: &Harness, name: &str) {
    let before = h.node(name);
    send(before.pid.expect("a pid"), libc::SIGKILL);
    h.wait_ready_incarnation(name, before.incarnation + 1);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let records = h.crashes(Some(name));
        if let Some(r) = records
            .iter()
            .find(|r| r.record.incarnation == before.incarnation)
            && Path::new(&r.path).is_file()
        {
            assert_eq!(r.not_written, None);
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no crash record on disk for {name}#{}: {records:?}",
            before.incarnation
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every node in `names` is still its first incarnation, never restarted.
fn untouched(h: &Harness, names: &[&str]) {
    let s = h.try_status().expect("status answers");
    for n in names {
        let v = s.node(n).unwrap();
        assert_eq!(
            (v.state, v.incarnation, v.restarts),
            (NodeState::Ready, 1, 0),
            "{n} was disturbed: {v:?}\n{}",
            h.output()
        );
    }
}

#[test]
fn strangers_connecting_to_cluster_ports_disturb_no_node() {
    let h = start(WORLDS, None);
    let ports = cluster_ports(&h, &NAMES);

    // Connect and close at once, again and again (this used to end a node with exit code 89).
    let churn = Intruder::start(&args(&["tcp-churn", "10"], &ports), true);
    assert_eq!(
        churn.count("established"),
        0,
        "a cluster listener let a stranger's connection complete: {}",
        churn.report
    );
    // Idle connections held open meanwhile.
    let hold = Intruder::start(&args(&["tcp-hold", "300"], &ports), true);
    assert_eq!(hold.count("established"), 0, "{}", hold.report);

    // A node killed meanwhile comes back; nobody else moved.
    kill_and_see_it_back(&h, "world/a");
    drop((churn, hold));
    untouched(&h, &["world/b", "world/c"]);
    assert_eq!(h.crashes(None).len(), 1, "one crash record: the kill");
}

#[test]
fn eleven_hundred_idle_connections_under_ulimit_1024_cannot_stop_a_restart() {
    let h = start(WORLDS, Some(1024));
    let ports = cluster_ports(&h, &NAMES);
    let before = fd_count(h.pid());
    let hold = Intruder::start(&args(&["tcp-hold", "1100"], &ports), true);
    let during = fd_count(h.pid());
    assert!(
        during < before + 16,
        "the runtime holds the strangers' connections: {before} fds before, {during} during"
    );
    kill_and_see_it_back(&h, "world/a");
    untouched(&h, &["world/b", "world/c"]);
    drop(hold);
}

#[test]
fn a_thousand_idle_control_clients_cannot_stop_status_or_a_restart() {
    let h = start(WORLDS, Some(1024));
    h.wait_ready(&NAMES);
    let before = fd_count(h.pid());
    let socket = h.run_dir().join("control.sock").display().to_string();
    // The same user: the control socket sits in a 0700 directory.
    let hold = Intruder::start(&args(&["unix-hold", "1000"], &[socket]), false);
    assert!(hold.count("established") > 0, "{}", hold.report);
    // Status still answers (an idle connection gives way to a client that asks something).
    let s = h.wait_until("status answers", PATIENCE, |s| Some(s.clone()));
    assert_eq!(s.nodes.len(), 3);
    let during = fd_count(h.pid());
    assert!(
        during <= before + MAX_CONNECTIONS + 16,
        "the runtime holds more control connections than its bound: {before} fds before, {during} during"
    );
    kill_and_see_it_back(&h, "world/a");
    untouched(&h, &["world/b", "world/c"]);
    drop(hold);
}

/// Resident memory of `pid`, KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn control_requests_and_event_subscribers_are_bounded() {
    let h = Harness::start(WORLDS, &[]);
    h.wait_ready(&NAMES);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    // A request announcing 16 MiB is refused after its length, without buffering it.
    let rss_before = rss_kib(h.pid());
    let socket = h.run_dir().join("control.sock").display().to_string();
    let huge = Intruder::start(&args(&["unix-huge", "100"], &[socket]), false);
    assert_eq!(huge.count("too_large"), 100, "{}", huge.report);
    let grown = rss_kib(h.pid()).saturating_sub(rss_before);
    assert!(
        grown < 64 * 1024,
        "100 oversized requests grew the runtime by {grown} KiB"
    );

    // Subscribers: up to the bound, then a clear refusal.
    let mut streams = Vec::new();
    rt.block_on(async {
        for _ in 0..MAX_SUBSCRIBERS {
            let c = ControlClient::connect(&h.run_dir()).await.unwrap();
            streams.push(c.subscribe().await.unwrap());
        }
        // Each is being served before the next one asks.
        let deadline = Instant::now() + PATIENCE;
        loop {
            let c = ControlClient::connect(&h.run_dir()).await.unwrap();
            let mut extra = c.subscribe().await.unwrap();
            match tokio::time::timeout(Duration::from_secs(5), extra.next()).await {
                Ok(Err(ClientError::Refused(e))) => {
                    assert!(
                        e.message
                            .contains(&format!("{MAX_SUBSCRIBERS} event subscribers")),
                        "{e}"
                    );
                    break;
                }
                other => assert!(
                    Instant::now() < deadline,
                    "subscriber {} was not refused: {other:?}",
                    MAX_SUBSCRIBERS + 1
                ),
            }
        }
    });
    assert!(h.try_status().is_some(), "status answers beside them");
    drop(streams);
    untouched(&h, &NAMES);
}

/// The end of the first run of at least four consecutive `/dev/null` fds of `pid`: the fd
/// reserve the runtime opens at start. A limit just above it leaves the runtime no free fd
/// but the ones it keeps in reserve.
fn above_the_reserve(pid: u32) -> u64 {
    let mut fds: Vec<(u64, String)> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_str()?.parse().ok()?;
            Some((n, std::fs::read_link(e.path()).ok()?.display().to_string()))
        })
        .collect();
    fds.sort();
    let mut run = 0;
    for (i, (n, target)) in fds.iter().enumerate() {
        let follows = i > 0 && fds[i - 1].0 + 1 == *n && fds[i - 1].1 == "/dev/null";
        run = if target == "/dev/null" {
            if follows { run + 1 } else { 1 }
        } else {
            0
        };
        if run >= 4 && fds.get(i + 1).is_none_or(|(_, t)| t != "/dev/null") {
            return n + 1;
        }
    }
    panic!("no fd reserve found in {fds:?}")
}

#[test]
fn a_runtime_out_of_fds_waits_to_respawn_and_never_gives_up_on_a_healthy_node() {
    use rustix::process::{Pid, Resource, Rlimit, prlimit};
    // One failure allowed: were the failed spawns counted, the node would be given up.
    let config = format!("[supervisor]\nintensity = 1\nbackoff_initial_ms = 10\n{WORLDS}");
    let h = Harness::start(&config, &[]);
    h.wait_ready(&NAMES);
    let pid = Pid::from_raw(h.pid() as i32).unwrap();
    let limit = above_the_reserve(h.pid());
    // The runtime inherited this process's limits.
    let original = rustix::process::getrlimit(Resource::Nofile);
    prlimit(
        Some(pid),
        Resource::Nofile,
        Rlimit {
            current: Some(limit),
            maximum: original.maximum,
        },
    )
    .expect("lower the runtime's fd limit");

    let a = h.node("world/a");
    send(a.pid.unwrap(), libc::SIGKILL);
    // Status answers from the reserve, and says the machine is the problem.
    let waiting = h.wait_until("world/a waits for fds, attempt 3", PATIENCE, |s| {
        let v = s.node("world/a")?;
        let d = v.detail.as_deref()?;
        (v.state == NodeState::Backoff
            && d.contains("waiting for resources")
            && d.contains("Too many open files")
            && d.contains("attempt 3"))
        .then(|| v.clone())
    });
    assert!(
        waiting
            .detail
            .as_deref()
            .unwrap()
            .contains("not counted as a failure"),
        "{waiting:?}"
    );
    // Its crash record was written all the same (with a reserved fd).
    let records = h.crashes(Some("world/a"));
    assert_eq!(records.len(), 1, "only the kill is a fault: {records:?}");
    let deadline = Instant::now() + PATIENCE;
    while !Path::new(&h.crashes(Some("world/a"))[0].path).is_file() {
        assert!(
            Instant::now() < deadline,
            "the crash record was not written: {:?}",
            h.crashes(Some("world/a"))
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    prlimit(Some(pid), Resource::Nofile, original).expect("restore the fd limit");
    let back = h.wait_ready_incarnation("world/a", 2);
    assert_eq!(back.restarts, 1, "the waits burnt no incarnation: {back:?}");
    untouched(&h, &["world/b", "world/c"]);
    assert_eq!(h.crashes(Some("world/a")).len(), 1);
}

#[test]
fn a_crash_record_that_cannot_be_written_is_listed_as_such() {
    let h = Harness::start(WORLDS, &[]);
    h.wait_ready(&NAMES);
    // The crash directory becomes a file: every write into it fails, as on a full disk.
    let crashes = h.log_dir().join("crashes");
    std::fs::remove_dir_all(&crashes).unwrap();
    std::fs::write(&crashes, "not a directory").unwrap();
    let a = h.node("world/a");
    send(a.pid.unwrap(), libc::SIGKILL);
    h.wait_ready_incarnation("world/a", 2);
    let deadline = Instant::now() + PATIENCE;
    let entry = loop {
        let records = h.crashes(Some("world/a"));
        if let Some(e) = records.into_iter().find(|e| e.not_written.is_some()) {
            break e;
        }
        assert!(Instant::now() < deadline, "no record marked unwritten");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!Path::new(&entry.path).exists());
    let out = h.cli(&["crashes", "--json"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let listed: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert!(
        listed[0]["not_written"]
            .as_str()
            .is_some_and(|w| !w.is_empty()),
        "{stdout}"
    );
    assert!(stderr.contains("could not be written"), "{stderr}");
}
