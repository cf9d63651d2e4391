//! Nodes on other hosts: a runtime on one host places nodes on `syncra agent` on another — as
//! root, two network namespaces joined by a veth pair that the test makes (and takes down for
//! a partition); as an ordinary user, loopback with a relay standing for the wire. The agent
//! spawns and watches the nodes there; the runtime supervises them: crashes and hangs are
//! recorded with their host and restarted there, a short partition restarts nothing, a long
//! one fences the nodes on their host before any replacement starts, certificates are pinned
//! both ways, and neither the agent's nor the runtime's death leaves a node behind.

#![allow(
    clippy::disallowed_methods,
    reason = "the tests run the real binaries and the namespace tools"
)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use syncra_integration_tests::hosts::{Agent, Hosts, identity};
use syncra_integration_tests::{Harness, Options, PATIENCE, send};
use syncra_protocol::NodeState;
use syncra_protocol::crash::Reason;

/// A runtime's host and an agent's, with the agent running.
struct Remote {
    hosts: Hosts,
    dir: tempfile::TempDir,
    rt_state: PathBuf,
    agent: Agent,
    /// The agent's address as the runtime's config names it.
    address: String,
    /// In the environment of the agent and so of every node it starts.
    tag: String,
    /// Held for the test's life: these tests run one at a time (each runs a runtime, an agent
    /// and their nodes across two network namespaces; two at once on two cores starved the
    /// ordering test's sinks — see the closing note of 2026-12-07).
    _one_at_a_time: std::sync::MutexGuard<'static, ()>,
}

/// What [`Remote::_one_at_a_time`] holds.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Remote {
    fn new(hosts: Hosts) -> Remote {
        Remote::new_with(hosts, &[])
    }

    /// An agent that also trusts `trust`.
    fn new_with(hosts: Hosts, trust: &[&str]) -> Remote {
        let one_at_a_time = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let rt_state = dir.path().join("runtime-state");
        let runtime = identity(&rt_state);
        let trusted: Vec<&str> = std::iter::once(runtime.as_str())
            .chain(trust.iter().copied())
            .collect();
        let tag = format!("agent-{}-{}", std::process::id(), rand_suffix());
        let listen = if hosts.namespaces() {
            // Every address of its host, so that a peer on that host can reach it too.
            "0.0.0.0:7800"
        } else {
            "127.0.0.1:0"
        };
        let agent = Agent::start_with(
            &hosts,
            &dir.path().join("agent-state"),
            &trusted,
            listen,
            &[("SYNCRA_TEST_TAG", &tag)],
        );
        let listening = if hosts.namespaces() {
            "10.200.0.2:7800".to_owned()
        } else {
            agent.addr.clone()
        };
        let address = hosts.route(&listening);
        Remote {
            hosts,
            dir,
            rt_state,
            agent,
            address,
            tag,
            _one_at_a_time: one_at_a_time,
        }
    }

    /// `[hosts.gpu-box]` with this deadline and grace, then `nodes`.
    fn config(&self, deadline_ms: u64, grace_ms: u64, nodes: &str) -> String {
        format!(
            "[runtime]\nwatch_interval_ms = 200\n\n[hosts.gpu-box]\naddress = \"{}\"\nfingerprint = \"{}\"\ndeadline_ms = {deadline_ms}\nfence_grace_ms = {grace_ms}\n\n{nodes}",
            self.address, self.agent.fingerprint
        )
    }

    /// A runtime on the runtime's host.
    fn runtime(&self, config: &str) -> Harness {
        let state = self.rt_state.display().to_string();
        Harness::start_with(
            config,
            &["--state-dir", &state],
            Options {
                netns: self.hosts.netns(0),
                ..Options::default()
            },
        )
    }

    /// Live processes of node `name` that the agent started.
    fn remote_pids(&self, name: &str) -> Vec<u32> {
        processes(&[
            &format!("SYNCRA_NODE={name}"),
            &format!("SYNCRA_TEST_TAG={}", self.tag),
        ])
    }

    /// Wait until the agent's processes of `name` are gone.
    fn wait_remote_gone(&self, name: &str) {
        let deadline = Instant::now() + PATIENCE;
        while !self.remote_pids(name).is_empty() {
            assert!(
                Instant::now() < deadline,
                "{name} still runs on the agent's host: {:?}\n{}",
                self.remote_pids(name),
                self.agent.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn rand_suffix() -> u64 {
    let mut b = [0u8; 8];
    let _ = rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty());
    u64::from_ne_bytes(b) % 1_000_000
}

/// Live (not zombie) processes whose environment holds every one of `env`.
fn processes(env: &[&str]) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        let vars: Vec<&[u8]> = environ.split(|b| *b == 0).collect();
        if !env.iter().all(|e| vars.contains(&e.as_bytes())) {
            continue;
        }
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let state = stat.rsplit(')').next().unwrap_or("").trim_start();
        if !state.starts_with('Z') && !state.is_empty() {
            found.push(pid);
        }
    }
    found
}

/// The parent of `pid`.
fn parent(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')')
        .next()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Who ran, from when: each change the sampler saw.
type Timeline = Vec<(Instant, Vec<u32>)>;

/// Counts the live processes of a node, every millisecond, in the background: how many ran
/// at once at most.
struct Sampler {
    stop: Arc<AtomicBool>,
    most: std::thread::JoinHandle<(usize, Timeline)>,
}

impl Sampler {
    /// Sample node `name`'s processes among those tagged with one of `tags` (the agent's and
    /// the runtime's: other tests run nodes of the same name).
    fn start(name: &str, tags: [&str; 2]) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let needle = format!("SYNCRA_NODE={name}");
        let tags = tags.map(|t| format!("SYNCRA_TEST_TAG={t}"));
        let most = std::thread::spawn(move || {
            let (mut most, mut changes) = (0, Timeline::new());
            while !flag.load(Ordering::Relaxed) {
                let mut now = processes(&[&needle, &tags[0]]);
                now.extend(processes(&[&needle, &tags[1]]));
                most = most.max(now.len());
                if changes.last().is_none_or(|(_, last)| *last != now) {
                    changes.push((Instant::now(), now));
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            (most, changes)
        });
        Sampler { stop, most }
    }

    /// The most that ran at once, and each change of who ran.
    fn finish(self) -> (usize, Timeline) {
        self.stop.store(true, Ordering::Relaxed);
        self.most.join().unwrap()
    }
}

#[test]
fn remote_nodes_that_crash_are_recorded_with_their_host_and_restarted_there() {
    let remote = Remote::new(Hosts::make());
    let h = remote.runtime(&remote.config(
        5000,
        1000,
        "[drivers.crasher]\ncommand = \"syncra-test-crasher\"\nhost = \"gpu-box\"\n\n[drivers.native]\ncommand = \"syncra-test-native\"\nargs = [\"null\"]\nhost = \"gpu-box\"\n\n[worlds]\nnames = [\"far\"]\n[worlds.far]\nhost = \"gpu-box\"\n",
    ));
    let views = h.wait_ready(&["crasher", "world/far", "world/main", "native"]);
    assert_eq!(views[0].host.as_deref(), Some("gpu-box"));
    assert_eq!(views[1].host.as_deref(), Some("gpu-box"));
    assert_eq!(views[2].host, None, "a world without a host runs here");
    // They run on the agent's host: children of the agent, pids as the runtime reports them.
    let far = remote.remote_pids("world/far");
    assert_eq!(far, vec![views[1].pid.unwrap()]);
    assert_eq!(parent(far[0]), Some(remote.agent.pid()));
    // Its figures travel: the world's tick and entities, as for a local world.
    h.wait_until("world/far ticks", PATIENCE, |s| {
        s.node("world/far")
            .filter(|n| n.tick.unwrap_or(0) > 5 && n.entities == Some(256))
            .map(|_| ())
    });

    // SIGKILL on its host: recorded with the host, restarted there.
    send(far[0], libc::SIGKILL);
    let again = h.wait_ready_incarnation("world/far", 2);
    assert_eq!(again.host.as_deref(), Some("gpu-box"));
    assert_eq!(parent(again.pid.unwrap()), Some(remote.agent.pid()));
    let crash = h.crashes(Some("world/far")).pop().expect("a crash record");
    assert_eq!(crash.record.host.as_deref(), Some("gpu-box"));
    assert_eq!(crash.record.reason, Reason::Killed);
    assert_eq!(crash.record.signal.as_deref(), Some("SIGKILL"));
    assert_eq!(crash.record.pid, Some(far[0]));

    // A panic there: the panic report and stderr tail come back from the agent.
    send(views[0].pid.unwrap(), libc::SIGUSR1);
    h.wait_ready_incarnation("crasher", 2);
    let crash = h.crashes(Some("crasher")).pop().expect("a crash record");
    assert_eq!(crash.record.reason, Reason::Crashed);
    assert_eq!(crash.record.host.as_deref(), Some("gpu-box"));
    let panic = crash.record.panic.as_ref().expect("the panic report");
    assert!(
        panic.message.contains("crash requested by the test"),
        "{panic:?}"
    );
    assert!(
        crash
            .record
            .stderr_tail
            .iter()
            .any(|l| l.contains("crash requested by the test")),
        "{:?}",
        crash.record.stderr_tail
    );
    let copy = crash.record.log_file.clone().expect("its log file");
    assert!(
        copy.contains("crasher@gpu-box_") && copy.starts_with(&h.log_dir().display().to_string()),
        "{copy}"
    );
    // The CLI names the host, and shows the log kept on the runtime's host.
    let out = h.cli(&["crashes", "crasher"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("crasher@gpu-box"), "{text}");
    let wait = Instant::now() + PATIENCE;
    loop {
        let out = h.cli(&["logs", "world/far", "-n", "50"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.contains("world-far@gpu-box_") && text.contains("joined the runtime") {
            break;
        }
        assert!(Instant::now() < wait, "`syncra logs world/far`:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = String::from_utf8_lossy(&h.cli(&["status"]).stdout).into_owned();
    assert!(status.contains("world/far@gpu-box"), "{status}");

    // A native crash there: the agent writes the minidump on its host, reads its stack where
    // the binaries are, and the record here carries both.
    send(views[3].pid.unwrap(), libc::SIGUSR1);
    h.wait_ready_incarnation("native", 2);
    let dump = h.wait_until("the remote dump's stack arrives", PATIENCE, |_| {
        let c = h.crashes(Some("native")).pop()?;
        c.record
            .dump
            .filter(|d| !d.stack.is_empty() || d.error.is_some())
    });
    assert_eq!(dump.error, None, "{dump:#?}");
    let path = PathBuf::from(dump.path.as_deref().expect("its path on its host"));
    assert_eq!(
        path.parent(),
        Some(&*remote.dir.path().join("agent-state/dumps"))
    );
    assert!(path.is_file(), "{}", path.display());
    assert!(
        dump.stack[0]
            .function
            .as_deref()
            .is_some_and(|f| f.contains("syncra_native_null_deref")),
        "{dump:#?}"
    );
    let text = String::from_utf8_lossy(&h.cli(&["crashes", "native"]).stdout).into_owned();
    assert!(
        text.contains("native@gpu-box") && text.contains("syncra_native_null_deref"),
        "{text}"
    );
}

#[test]
fn a_remote_node_that_hangs_is_killed_by_its_agent_and_replaced() {
    let remote = Remote::new(Hosts::make());
    let h = remote.runtime(&remote.config(
        5000,
        1000,
        "[drivers.hanger]\ncommand = \"syncra-test-hanger\"\nhost = \"gpu-box\"\nheartbeat_deadline_ms = 400\n",
    ));
    let first = h.wait_ready(&["hanger"]).remove(0);
    send(first.pid.unwrap(), libc::SIGUSR1);
    let again = h.wait_ready_incarnation("hanger", 2);
    assert_eq!(again.host.as_deref(), Some("gpu-box"));
    let crash = h.crashes(Some("hanger")).pop().expect("a crash record");
    assert_eq!(crash.record.reason, Reason::Hung, "{}", crash.record.detail);
    assert_eq!(crash.record.host.as_deref(), Some("gpu-box"));
    assert!(
        crash.record.detail.contains("no heartbeat for"),
        "{}",
        crash.record.detail
    );
    assert!(
        remote
            .agent
            .log()
            .contains("no heartbeat within its deadline: hung"),
        "{}",
        remote.agent.log()
    );
    // SIGABRT, then SIGKILL at the abort grace: nothing of the first incarnation is left.
    let deadline = Instant::now() + PATIENCE;
    while remote.remote_pids("hanger").contains(&first.pid.unwrap()) {
        assert!(Instant::now() < deadline, "the hung node was never killed");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_short_partition_restarts_nothing_a_long_one_loses_the_node_until_its_host_is_back() {
    let remote = Remote::new(Hosts::make());
    let h = remote.runtime(&remote.config(
        2000,
        500,
        "[worlds]\nnames = [\"far\"]\n[worlds.far]\nhost = \"gpu-box\"\n",
    ));
    let first = h.wait_ready(&["world/far"]).remove(0);
    let tick = |h: &Harness| h.node("world/far").tick.unwrap_or(0);

    // Shorter than the deadline: the link stalls, then everything goes on.
    remote.hosts.partition(true);
    std::thread::sleep(Duration::from_millis(1000));
    remote.hosts.partition(false);
    let before = tick(&h);
    h.wait_until("world/far ticks again after the partition", PATIENCE, |s| {
        s.node("world/far")
            .filter(|n| n.tick.unwrap_or(0) > before + 30)
            .map(|_| ())
    });
    let view = h.node("world/far");
    assert_eq!(
        (view.incarnation, view.state, view.pid),
        (1, NodeState::Ready, first.pid),
        "a partition shorter than the deadline restarted it"
    );
    assert!(h.crashes(None).is_empty(), "{:?}", h.crashes(None));
    assert_eq!(remote.remote_pids("world/far"), vec![first.pid.unwrap()]);

    // Longer than the deadline: lost, fenced on its host, and no replacement until the host
    // is back (it has no fallback).
    let cut = Instant::now();
    remote.hosts.partition(true);
    let lost = h.wait_until("world/far is lost", PATIENCE, |s| {
        s.node("world/far")
            .and_then(|n| n.last_exit.clone())
            .filter(|e| e.reason == Reason::Lost)
    });
    assert!(
        cut.elapsed() >= Duration::from_millis(1500),
        "lost {:?} after the cut, before its deadline of 2 s",
        cut.elapsed()
    );
    // Killed on its host: by its agent (fencing), or by itself, its lease run out — whichever
    // comes first.
    remote.wait_remote_gone("world/far");
    let crash = h.crashes(Some("world/far")).pop().expect("a crash record");
    assert_eq!(crash.record.reason, Reason::Lost);
    assert!(
        crash
            .record
            .detail
            .contains("its host gpu-box is unreachable"),
        "{}",
        crash.record.detail
    );
    h.wait_until("world/far waits for its host", PATIENCE, |s| {
        s.node("world/far")
            .filter(|n| {
                n.detail
                    .as_deref()
                    .is_some_and(|d| d.contains("waiting for host gpu-box"))
            })
            .map(|_| ())
    });
    assert!(lost.record.is_some());
    assert!(
        remote.remote_pids("world/far").is_empty(),
        "a replacement started on a host the runtime cannot reach"
    );
    // The wire is mended: it comes back on its host, as incarnation 2.
    remote.hosts.partition(false);
    let again = h.wait_ready_incarnation("world/far", 2);
    assert_eq!(again.host.as_deref(), Some("gpu-box"));
    assert_eq!(remote.remote_pids("world/far"), vec![again.pid.unwrap()]);
}

#[test]
fn a_lost_node_is_fenced_before_its_replacement_starts_on_its_fallback_and_never_runs_twice() {
    let remote = Remote::new(Hosts::make());
    let h = remote.runtime(&remote.config(
        1500,
        1000,
        "[worlds]\nnames = [\"far\"]\n[worlds.far]\nhost = \"gpu-box\"\nfallback_host = \"local\"\n",
    ));
    let first = h.wait_ready(&["world/far"]).remove(0);
    let sampler = Sampler::start("world/far", [&remote.tag, &h.tag]);
    remote.hosts.partition(true);
    // Lost: a user who restarts it at once does not get it back before the fence grace.
    h.wait_until("world/far is lost", PATIENCE, |s| {
        s.node("world/far")
            .and_then(|n| n.last_exit.clone())
            .filter(|e| e.reason == Reason::Lost)
    });
    let lost = Instant::now();
    let out = h.cli(&["restart", "world/far"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let again = h.wait_ready_incarnation("world/far", 2);
    assert!(
        lost.elapsed() >= Duration::from_millis(800),
        "a user's restart started the replacement {:?} after the loss, within the fence grace of 1 s",
        lost.elapsed()
    );
    assert_eq!(again.host, None, "its fallback is this host");
    let crash = h.crashes(Some("world/far")).pop().expect("a crash record");
    assert_eq!(crash.record.reason, Reason::Lost);
    match crash.record.decision {
        syncra_protocol::crash::Decision::Restart { after_ms, .. } => assert!(
            after_ms >= 900,
            "replaced {after_ms} ms after it was lost, before the fence grace of 1 s"
        ),
        ref other => panic!("{other:?}"),
    }
    // After the heal the old incarnation is not back: it was fenced, and it stays gone.
    remote.hosts.partition(false);
    h.wait_until("the agent answers again", PATIENCE, |_| {
        remote
            .agent
            .log()
            .matches("a runtime's session")
            .count()
            .ge(&2)
            .then_some(())
    });
    let (most, changes) = sampler.finish();
    let timeline: Vec<String> = changes
        .iter()
        .map(|(t, pids)| format!("{:?}: {pids:?}", t.duration_since(changes[0].0)))
        .collect();
    assert_eq!(
        most, 1,
        "two incarnations of world/far ran at once: {timeline:#?}"
    );
    let old_gone = changes
        .iter()
        .position(|(_, p)| !p.contains(&first.pid.unwrap()))
        .expect("the old incarnation ended");
    let new_seen = changes
        .iter()
        .position(|(_, p)| p.contains(&again.pid.unwrap()))
        .expect("the new incarnation ran");
    assert!(old_gone <= new_seen, "{timeline:#?}");
    assert_eq!(h.node("world/far").incarnation, 2);
    assert!(remote.remote_pids("world/far").is_empty());
}

#[test]
fn agent_and_runtime_deaths_leave_no_node_behind_and_the_agent_serves_the_next_session() {
    let mut remote = Remote::new(Hosts::make());
    let config = remote.config(
        1500,
        500,
        "[worlds]\nnames = [\"far\"]\n[worlds.far]\nhost = \"gpu-box\"\n",
    );
    let mut h = remote.runtime(&config);
    h.wait_ready(&["world/far"]);
    // SIGKILL of the agent: its nodes die with it, at once.
    let state = remote.dir.path().join("agent-state");
    let trust = identity(&remote.rt_state);
    remote.agent.kill();
    remote.wait_remote_gone("world/far");
    // It comes back (same identity, same port): the runtime notices its nodes died with it.
    remote.agent = Agent::start_with(
        &remote.hosts,
        &state,
        &[&trust],
        if remote.hosts.namespaces() {
            "0.0.0.0:7800"
        } else {
            &remote.agent.addr
        },
        &[("SYNCRA_TEST_TAG", &remote.tag)],
    );
    let again = h.wait_ready_incarnation("world/far", 2);
    assert_eq!(again.host.as_deref(), Some("gpu-box"));
    let ends: Vec<String> = h
        .crashes(Some("world/far"))
        .iter()
        .map(|c| format!("{}: {}", c.record.reason, c.record.detail))
        .collect();
    assert!(!ends.is_empty(), "its end was not recorded");

    // SIGKILL of the runtime: the agent fences the session's nodes, and stays up.
    h.signal(libc::SIGKILL);
    h.wait_exit(PATIENCE);
    remote.wait_remote_gone("world/far");
    remote.agent.wait_log("its runtime closed the link");
    drop(h);
    let h = remote.runtime(&config);
    let next = h.wait_ready(&["world/far"]).remove(0);
    assert_eq!(next.host.as_deref(), Some("gpu-box"));
    assert_eq!(parent(next.pid.unwrap()), Some(remote.agent.pid()));
}

#[test]
fn a_host_that_refuses_the_runtime_fails_its_nodes_with_the_reason_and_no_retry_loop() {
    let hosts = Hosts::make();
    let dir = tempfile::tempdir().unwrap();
    let rt_state = dir.path().join("runtime-state");
    identity(&rt_state);
    let stranger = identity(&dir.path().join("stranger"));
    let listen = if hosts.namespaces() {
        "0.0.0.0:7800"
    } else {
        "127.0.0.1:0"
    };
    // The agent trusts another runtime.
    let agent = Agent::start(
        &hosts,
        &dir.path().join("agent-state"),
        &[&stranger],
        listen,
    );
    let address = if hosts.namespaces() {
        "10.200.0.2:7800".to_owned()
    } else {
        agent.addr.clone()
    };
    let state = rt_state.display().to_string();
    let config = |fingerprint: &str| {
        format!(
            "[hosts.gpu-box]\naddress = \"{address}\"\nfingerprint = \"{fingerprint}\"\n\n[worlds]\nnames = [\"far\"]\n[worlds.far]\nhost = \"gpu-box\"\n"
        )
    };
    let start = |config: &str| {
        Harness::start_with(
            config,
            &["--state-dir", &state],
            Options {
                netns: hosts.netns(0),
                ..Options::default()
            },
        )
    };
    let h = start(&config(&agent.fingerprint));
    let failed = h.wait_state("world/far", NodeState::Failed);
    let detail = failed.detail.unwrap_or_default();
    assert!(
        detail.contains("does not trust this certificate"),
        "{detail}"
    );
    h.wait_ready(&["world/main"]);
    // No hot loop: one refusal, not one per restart.
    let refusals = |log: &str| log.matches("refused a connection").count();
    let seen = refusals(&agent.wait_log("refused a connection"));
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        refusals(&agent.log()) <= seen + 1,
        "the runtime kept knocking:\n{}",
        agent.log()
    );
    assert_eq!(h.node("world/far").state, NodeState::Failed);
    drop(h);

    // The config pins another agent: refused on the runtime's side, naming both.
    let wrong = format!("sha256:{}", "ab".repeat(32));
    let h = start(&config(&wrong));
    let failed = h.wait_state("world/far", NodeState::Failed);
    let detail = failed.detail.unwrap_or_default();
    assert!(
        detail.contains(&format!(
            "certificate not trusted: fingerprint {}; trusted: {wrong}",
            agent.fingerprint
        )),
        "{detail}"
    );
    assert!(!agent.log().contains("spawned"), "{}", agent.log());
}

#[test]
fn a_silent_peer_on_the_agents_port_holds_up_no_node() {
    let remote = Remote::new(Hosts::make());
    // Eight idle connections to the agent's port, from its own host.
    let intruder = syncra_integration_tests::workspace_bin("syncra-test-intruder");
    let port = if remote.hosts.namespaces() {
        "7800".to_owned()
    } else {
        remote.agent.addr.rsplit(':').next().unwrap().to_owned()
    };
    let mut silent = remote
        .hosts
        .on(1, &intruder)
        .args(["tcp-hold", "8", &port])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(silent.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert!(line.contains("established=8"), "{line}");
    let h = remote.runtime(&remote.config(
        5000,
        1000,
        "[worlds]\nnames = [\"far\", \"near\"]\n[worlds.far]\nhost = \"gpu-box\"\n[worlds.near]\nhost = \"gpu-box\"\n",
    ));
    h.wait_ready(&["world/far", "world/near"]);
    // The silent ones are closed at the agent's handshake timeout (500 ms here).
    remote.agent.wait_log("a TLS handshake timed out");
    let _ = silent.kill();
    let _ = silent.wait();
}

#[test]
fn a_trusted_certificate_with_another_sessions_credentials_is_refused_and_starts_nothing() {
    // The agent trusts two runtimes; the second tries to take over the first's session, then
    // to spawn without saying hello.
    let hosts = Hosts::loopback();
    let dir = tempfile::tempdir().unwrap();
    let other_state = dir.path().join("other-runtime");
    let other = identity(&other_state);
    let remote = Remote::new_with(hosts, &[&other]);
    let h = remote.runtime(&remote.config(
        5000,
        1000,
        "[worlds]\nnames = [\"far\"]\n[worlds.far]\nhost = \"gpu-box\"\n",
    ));
    let far = h.wait_ready(&["world/far"]).remove(0);
    let log = remote.agent.wait_log("spawned");
    let session = log
        .split("session=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| u64::from_str_radix(s, 16).ok())
        .expect("the agent logs the session");
    let (hello, spawn) = impostor(
        &other_state,
        &remote.agent.fingerprint,
        &remote.agent.addr,
        session,
    );
    assert!(
        hello.contains("belongs to another runtime"),
        "the other runtime resumed the first one's session: {hello}"
    );
    assert!(spawn.contains("closed"), "{spawn}");
    remote.agent.wait_log("did not say hello first");
    assert_eq!(
        remote.agent.log().matches("spawned").count(),
        1,
        "{}",
        remote.agent.log()
    );
    let view = h.node("world/far");
    assert_eq!(
        (view.incarnation, view.pid, view.state),
        (1, far.pid, NodeState::Ready)
    );
}

/// As the runtime whose identity is in `state` (trusted by the agent): say hello with another
/// runtime's `session`, then open another link and ask for a spawn without a hello. What the
/// agent answered each time.
fn impostor(state: &Path, agent_fp: &str, addr: &str, session: u64) -> (String, String) {
    use syncra_protocol::agent::{AgentToRuntime, MAX_FRAME, RuntimeToAgent, SpawnRequest};
    use syncra_remote::{Identity, frame, tls};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let agent_fp: syncra_protocol::agent::Fingerprint = agent_fp.parse().unwrap();
        let (me, _) = Identity::load_or_create(state, "impostor").unwrap();
        let config = tls::client_config(&me, agent_fp).unwrap();
        let connector = tokio_rustls::TlsConnector::from(config);
        let dial = || async {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            connector
                .connect(tls::server_name(), tcp)
                .await
                .expect("a trusted identity's handshake")
        };
        let mut s = dial().await;
        frame::write(
            &mut s,
            &RuntimeToAgent::Hello {
                protocol: syncra_protocol::PROTOCOL_VERSION,
                session,
                host: "gpu-box".into(),
                lease_ms: 1000,
            },
        )
        .await
        .unwrap();
        let hello = match frame::read::<AgentToRuntime>(&mut s, "hello", MAX_FRAME).await {
            Ok(AgentToRuntime::Refused { message }) => format!("refused: {message}"),
            Ok(other) => format!("answered: {other:?}"),
            Err(e) => format!("closed: {e}"),
        };
        let mut s = dial().await;
        let request = SpawnRequest {
            node: syncra_protocol::NodeName::world("far"),
            incarnation: 9,
            command: "syncra-world".into(),
            args: Vec::new(),
            env: Vec::new(),
            sandbox: syncra_runtime::config::sandbox::default_profile("far", true),
            link: agent_fp,
            dumps: None,
        };
        frame::write(&mut s, &RuntimeToAgent::Spawn(Box::new(request)))
            .await
            .unwrap();
        let spawn = match frame::read::<AgentToRuntime>(&mut s, "answer", MAX_FRAME).await {
            Ok(other) => format!("answered: {other:?}"),
            Err(e) => format!("closed: {e}"),
        };
        (hello, spawn)
    })
}

// ---- streams and direct links across hosts

use syncra_integration_tests::peers::driver as peer;

/// What peer `name` reported so far.
fn reported(dir: &Path, name: &str) -> Vec<serde_json::Value> {
    syncra_integration_tests::peers::lines(dir, name)
}

/// Wait until peer `name` has reported `n` messages of a stream; its messages.
fn wait_messages(dir: &Path, name: &str, n: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let got: Vec<_> = reported(dir, name)
            .into_iter()
            .filter(|v| v.get("seq").is_some())
            .collect();
        if got.len() >= n {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "{name} received {} of {n}: {:#?}",
            got.len(),
            reported(dir, name)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn field(v: &serde_json::Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or(0)
}

#[test]
fn streams_cross_hosts_both_ways_with_their_sequence_numbers_and_gaps() {
    let remote = Remote::new(Hosts::make());
    let dir = remote.dir.path().to_owned();
    let nodes = [
        peer(
            &dir,
            "far-producer",
            "producer",
            &[
                "stream=far-producer/ticks",
                "policy=drop",
                "slots=64",
                "rate=200",
            ],
            Some("gpu-box"),
        ),
        peer(
            &dir,
            "near-consumer",
            "consumer",
            &["stream=far-producer/ticks"],
            None,
        ),
        peer(
            &dir,
            "near-producer",
            "producer",
            &[
                "stream=near-producer/ticks",
                "policy=drop",
                "slots=64",
                "rate=200",
            ],
            None,
        ),
        peer(
            &dir,
            "far-consumer",
            "consumer",
            &["stream=near-producer/ticks"],
            Some("gpu-box"),
        ),
    ]
    .concat();
    let h = remote.runtime(&remote.config(5000, 1000, &nodes));
    h.wait_ready(&[
        "far-producer",
        "near-consumer",
        "near-producer",
        "far-consumer",
    ]);
    for consumer in ["near-consumer", "far-consumer"] {
        let got = wait_messages(&dir, consumer, 100);
        let seqs: Vec<u64> = got.iter().map(|v| field(v, "seq")).collect();
        assert!(
            seqs.windows(2).all(|w| w[1] == w[0] + 1),
            "{consumer}: not every message, in order, across hosts: {seqs:?}"
        );
        assert!(
            got.iter()
                .all(|v| field(v, "gap") == 0 && field(v, "n") == field(v, "seq")),
            "{consumer}: {got:#?}"
        );
    }
    // Both streams listed, each with its consumer on the other host.
    let out = h.cli(&["streams", "--json"]);
    let streams: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let consumers = |name: &str| -> Vec<String> {
        streams
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .map(|s| {
                s["consumers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|c| c["node"].as_str().unwrap().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(
        consumers("far-producer/ticks"),
        ["near-consumer"],
        "{streams:#}"
    );
    assert_eq!(
        consumers("near-producer/ticks"),
        ["far-consumer"],
        "{streams:#}"
    );
    let stream = |name: &str| {
        streams
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .cloned()
            .unwrap()
    };
    assert_eq!(stream("far-producer/ticks")["producer_host"], "gpu-box");
    assert_eq!(
        stream("near-producer/ticks")["consumers"][0]["host"],
        "gpu-box"
    );
    let text = String::from_utf8_lossy(&h.cli(&["streams"]).stdout).into_owned();
    assert!(
        text.contains("far-producer@gpu-box#1") && text.contains("far-consumer@gpu-box [bridged]"),
        "{text}"
    );

    // The remote producer restarts: its consumer here sees a gap, never sequences going back.
    let before = wait_messages(&dir, "near-consumer", 1)
        .last()
        .map(|v| field(v, "seq"))
        .unwrap();
    let pid = h.node("far-producer").pid.unwrap();
    send(pid, libc::SIGKILL);
    h.wait_ready_incarnation("far-producer", 2);
    let deadline = Instant::now() + PATIENCE;
    let after = loop {
        if let Some(v) = reported(&dir, "near-consumer")
            .into_iter()
            .find(|v| field(v, "inc") == 2)
        {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "no message of the restarted producer"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(field(&after, "seq") > before, "{after} after {before}");
    assert!(
        field(&after, "gap") >= 1,
        "a producer restart is a gap: {after}"
    );
    assert_eq!(
        field(&after, "n"),
        1,
        "the new incarnation's first message: {after}"
    );
}

/// A stream of 16 KiB messages (`policy`, four slots, `opts`) from a producer on the other host
/// to a consumer here, flowing, then the other host's sending capped to 800 kbit/s.
fn capped_stream(policy: &str, opts: &[&str]) -> (Remote, Harness, PathBuf) {
    let remote = Remote::new(Hosts::make());
    let dir = remote.dir.path().to_owned();
    let mut producer = vec![
        "stream=far-producer/ticks".to_owned(),
        format!("policy={policy}"),
        "size=16384".into(),
        "fill=1".into(),
        "slots=4".into(),
    ];
    producer.extend(opts.iter().map(|o| o.to_string()));
    let producer: Vec<&str> = producer.iter().map(String::as_str).collect();
    let nodes = [
        peer(&dir, "far-producer", "producer", &producer, Some("gpu-box")),
        peer(
            &dir,
            "near-consumer",
            "consumer",
            &["stream=far-producer/ticks"],
            None,
        ),
    ]
    .concat();
    let h = remote.runtime(&remote.config(5000, 1000, &nodes));
    h.wait_ready(&["far-producer", "near-consumer"]);
    wait_messages(&dir, "near-consumer", 5);
    remote.hosts.cap(800);
    (remote, h, dir)
}

#[test]
fn a_latest_only_stream_under_a_bandwidth_cap_brings_the_newest_not_a_backlog() {
    let (_remote, _h, dir) = capped_stream("latest", &["rate=100"]);
    // 800 kbit/s carries about six 16 KiB messages a second; the producer writes 100.
    let capped = reported(&dir, "near-consumer").len();
    std::thread::sleep(Duration::from_secs(4));
    let got: Vec<_> = reported(&dir, "near-consumer")
        .into_iter()
        .skip(capped)
        .filter(|v| v.get("seq").is_some())
        .collect();
    assert!(got.len() >= 4, "too little came through the cap: {got:#?}");
    assert!(
        got.len() < 200,
        "{} messages in 4 s through a cap that carries about 25: the cap did not hold",
        got.len()
    );
    // What arrives is the newest: skipped messages are gaps, and none of the last ones waited
    // behind a queue (a backlog would age by seconds).
    assert!(
        got.iter().map(|v| field(v, "gap")).sum::<u64>() > 100,
        "{got:#?}"
    );
    let late = &got[got.len() / 2..];
    let oldest = late.iter().map(|v| field(v, "age_us")).max().unwrap();
    eprintln!(
        "latest-only under the cap: {} messages in 4 s, {} skipped, oldest of the last half {oldest} µs",
        got.len(),
        got.iter().map(|v| field(v, "gap")).sum::<u64>()
    );
    assert!(
        oldest < 1_500_000,
        "a message {oldest} µs old arrived: a backlog built up behind the cap: {late:#?}"
    );
}

#[test]
fn a_block_stream_across_hosts_holds_its_producer_back_end_to_end() {
    let (_remote, h, dir) = capped_stream("block", &["rate=200", "block_ms=5000"]);
    std::thread::sleep(Duration::from_secs(4));
    let got: Vec<_> = reported(&dir, "near-consumer")
        .into_iter()
        .filter(|v| v.get("seq").is_some())
        .collect();
    let seqs: Vec<u64> = got.iter().map(|v| field(v, "seq")).collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "block: every message, in order: {seqs:?}"
    );
    // The producer was held back to what the link carries: it wrote little more than its
    // consumer received (the bridge's window and the two rings), not 200 a second. Its loop
    // count comes from its page on its host.
    let last = *seqs.last().unwrap();
    let written = h.wait_until("the producer's figures arrive", PATIENCE, |s| {
        s.node("far-producer").and_then(|n| n.tick)
    });
    eprintln!(
        "block under the cap: {} received, last {last}, the producer wrote {written}",
        seqs.len()
    );
    assert!(
        written <= last + 4 + 4 + 64 + 10,
        "the producer ran ahead of the link: wrote {written}, its consumer received {last}"
    );
    assert!(
        !reported(&dir, "far-producer")
            .iter()
            .any(|v| v.get("write_error").is_some()),
        "{:#?}",
        reported(&dir, "far-producer")
    );
}

#[test]
fn calls_take_direct_links_across_hosts_and_fail_at_once_when_the_callee_dies() {
    let remote = Remote::new(Hosts::make());
    let dir = remote.dir.path().to_owned();
    let nodes = [
        peer(&dir, "echo", "echo", &[], Some("gpu-box")),
        peer(&dir, "near-caller", "caller", &["to=echo"], None),
        peer(&dir, "far-caller", "caller", &["to=echo"], Some("gpu-box")),
    ]
    .concat();
    let h = remote.runtime(&remote.config(5000, 1000, &nodes));
    h.wait_ready(&["echo", "near-caller", "far-caller"]);
    let direct = |name: &str, incarnation: u64| {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if reported(&dir, name)
                .iter()
                .any(|v| v["direct"] == true && field(v, "incarnation") == incarnation)
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{name}'s calls never went over a direct link to echo#{incarnation}: {:#?}",
                reported(&dir, name)
                    .iter()
                    .rev()
                    .take(5)
                    .collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    // From this host to the other, and between two nodes of the other host (joined there).
    direct("near-caller", 1);
    direct("far-caller", 1);
    remote.agent.wait_log("a runtime's session");
    // The callee dies: calls in flight fail at once, the next reach its next incarnation,
    // over a new link.
    send(h.node("echo").pid.unwrap(), libc::SIGKILL);
    h.wait_ready_incarnation("echo", 2);
    direct("near-caller", 2);
    direct("far-caller", 2);
    for name in ["near-caller", "far-caller"] {
        let lines = reported(&dir, name);
        let errors: Vec<&serde_json::Value> =
            lines.iter().filter(|v| v.get("error").is_some()).collect();
        assert!(
            errors
                .iter()
                .all(|v| v["error"].as_str().unwrap_or("").contains("exited")
                    || v["error"].as_str().unwrap_or("").contains("not ready")
                    || v["error"].as_str().unwrap_or("").contains("no node")),
            "{name}: {errors:#?}"
        );
        assert!(
            !errors
                .iter()
                .any(|v| v["error"].as_str().unwrap_or("").contains("timed out")),
            "{name} waited out a timeout for a callee known to be gone: {errors:#?}"
        );
    }
}

#[test]
fn order_holds_across_the_switch_to_links_across_hosts_and_past_the_link_limit_the_hub_carries() {
    let remote = Remote::new(Hosts::make());
    let dir = remote.dir.path().to_owned();
    let nodes = [
        peer(&dir, "a", "sink", &["count=2000"], Some("gpu-box")),
        peer(&dir, "b", "sink", &["count=2000"], Some("gpu-box")),
        peer(&dir, "seq", "sequencer", &["to=a,b", "count=2000"], None),
        peer(&dir, "c", "sink", &["count=2000"], Some("gpu-box")),
        peer(
            &dir,
            "seq2",
            "sequencer",
            &["to=c", "count=2000"],
            Some("gpu-box"),
        ),
    ]
    .concat();
    let config =
        remote
            .config(5000, 1000, &nodes)
            .replacen("[runtime]\n", "[runtime]\nmax_links = 1\n", 1);
    let h = remote.runtime(&config);
    h.wait_ready(&["a", "b", "seq", "c", "seq2"]);
    // Each message is received or given back to its sender (a full link or inbox says so,
    // as backpressure): none is lost, and what arrives never goes backwards.
    let report = |name: &str, sequencer: &str| {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let returned = reported(&dir, sequencer)
                .iter()
                .rev()
                .find_map(|v| v["returned_to"][name].as_u64())
                .unwrap_or(0);
            let got = reported(&dir, name)
                .into_iter()
                .rev()
                .find(|v| v.get("got").is_some() || v.get("received").is_some());
            if let Some(r) = got {
                let n = r["got"].as_u64().or(r["received"].as_u64()).unwrap_or(0);
                if n + returned == 2000 {
                    return (r, returned);
                }
            }
            assert!(
                Instant::now() < deadline,
                "{name} never had every message nor were they given back ({returned} were): {:#?}",
                reported(&dir, name)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let (ra, rb, rc) = (report("a", "seq"), report("b", "seq"), report("c", "seq2"));
    for (r, returned) in [&ra, &rb, &rc] {
        assert_eq!(r["backwards"], 0, "{r}");
        if *returned == 0 {
            assert_eq!(r["out_of_order"], 0, "{r}");
        }
    }
    let (ra, rb, rc) = (ra.0, rb.0, rc.0);
    // The local sequencer's one link goes to one of the remote sinks; the other gets
    // everything through the hub.
    let direct = |r: &serde_json::Value| r["direct"].as_u64().unwrap();
    assert!(
        (direct(&ra) > 0) != (direct(&rb) > 0),
        "one link across hosts, one sink through the hub: {ra} {rb}"
    );
    // Two nodes of the other host: joined there, most messages over their link.
    assert!(direct(&rc) > rc["hub"].as_u64().unwrap(), "{rc}");
}
