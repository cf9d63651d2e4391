//! Other hosts. As root the two hosts are network namespaces joined by a veth pair; otherwise
//! both are this machine's loopback.
//!
//! - (links b) The agent link's round trip — a ping over mutual TLS (pinned identities) with
//!   the agent link's framing, from `syncra hosts --pings N` on one host to `syncra agent` on
//!   the other — beside a raw TCP ping-pong (one byte each way, `TCP_NODELAY`) between the same
//!   two hosts in the same run; then a call by name from a node here to a node there, over
//!   its direct link's bridge and through the hub, beside that TLS ping.
//! - (hosts c) SIGKILL of a world on the other host → its replacement ready there, beside the
//!   same for a world here, in the same runtime.
//! - (hosts d) A 64 B stream message and a 256-entity scene's worth of bytes, published on the
//!   other host and received here (publish → receive, from the publish time in the message:
//!   both hosts share this machine's clock), beside the raw socket's one-way time (half a
//!   TCP ping-pong of the same bytes) between the same hosts.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::process::{Command, Stdio};
use std::time::Instant;

use std::time::Duration;

use syncra_integration_tests::hosts::{Agent, Hosts, identity};
use syncra_integration_tests::{Harness, Options, percentile, send, workspace_bin};
use syncra_protocol::status::EventKind;

use super::Row;

/// `--tcp-echo ADDR`: accept connections one after another and echo what comes, byte for
/// byte (the baselines' server, run on the agent's host). Prints `listening ADDR` first.
pub(crate) fn tcp_echo(addr: &str) {
    let listener = std::net::TcpListener::bind(addr).expect("binding the echo server");
    println!("listening {}", listener.local_addr().unwrap());
    let _ = std::io::stdout().flush();
    for s in listener.incoming() {
        let Ok(mut s) = s else { continue };
        let _ = s.set_nodelay(true);
        let mut b = vec![0u8; 64 * 1024];
        loop {
            match s.read(&mut b) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if s.write_all(&b[..n]).is_err() {
                        break;
                    }
                }
            }
        }
    }
}

/// `--tcp-ping ADDR N [SIZE]`: N round trips of SIZE bytes (default 1); prints each in µs,
/// one a line.
pub(crate) fn tcp_ping(addr: &str, n: usize, size: usize) {
    let mut s = std::net::TcpStream::connect(addr).expect("connecting to the echo server");
    let _ = s.set_nodelay(true);
    let mut b = vec![7u8; size.max(1)];
    let mut out = String::new();
    for _ in 0..n {
        let t = Instant::now();
        s.write_all(&b).unwrap();
        s.read_exact(&mut b).unwrap();
        out.push_str(&format!("{}\n", t.elapsed().as_secs_f64() * 1e6));
    }
    print!("{out}");
}

/// The echo server on the agent's host, and round trips of `size` bytes to it from the
/// runtime's host: p50 and p99, µs.
fn tcp_round_trips(hosts: &Hosts, n: usize, size: usize) -> (f64, f64) {
    let me = std::env::current_exe().expect("the benchmark's own path");
    let echo_addr = if hosts.namespaces() {
        "10.200.0.2:7801"
    } else {
        "127.0.0.1:0"
    };
    let mut echo = hosts
        .on(1, &me)
        .args(["--tcp-echo", echo_addr])
        .stdout(Stdio::piped())
        .spawn()
        .expect("the echo server");
    let mut line = String::new();
    BufReader::new(echo.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let echo_at = line
        .trim()
        .strip_prefix("listening ")
        .unwrap_or(echo_addr)
        .to_owned();
    let ping = hosts
        .on(0, &me)
        .args(["--tcp-ping", &echo_at, &n.to_string(), &size.to_string()])
        .output()
        .expect("the ping client");
    let _ = echo.kill();
    let _ = echo.wait();
    let mut raw: Vec<f64> = String::from_utf8_lossy(&ping.stdout)
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect();
    (percentile(&mut raw, 50.0), percentile(&mut raw, 99.0))
}

#[allow(
    clippy::disallowed_methods,
    reason = "the benchmark runs the real binaries"
)]
pub(crate) fn agent_link(pings: usize, rows: &mut Vec<Row>) -> f64 {
    let hosts = Hosts::make();
    let dir = tempfile::tempdir().expect("a scratch directory");
    let syncra = workspace_bin("syncra");
    let state = |n: &str| dir.path().join(n);
    let id = Command::new(&syncra)
        .args(["identity", "--state-dir"])
        .arg(state("runtime"))
        .output()
        .expect("syncra identity");
    let runtime = String::from_utf8_lossy(&id.stdout).trim().to_owned();
    let mut agent = hosts
        .on(1, &syncra)
        .args(["agent", "--listen", hosts.agent_addr(), "--state-dir"])
        .arg(state("agent"))
        .args(["--trust", &runtime])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("syncra agent");
    let (mut addr, mut fingerprint) = (String::new(), String::new());
    for line in BufReader::new(agent.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
    {
        if let Some(rest) = line.split("listening on ").nth(1) {
            addr = rest.split(',').next().unwrap_or_default().to_owned();
        }
        if let Some(fp) = line.strip_prefix("fingerprint ") {
            fingerprint = fp.to_owned();
            break;
        }
    }
    let config = dir.path().join("SyncraConfig.toml");
    std::fs::write(
        &config,
        format!("[hosts.bench]\naddress = \"{addr}\"\nfingerprint = \"{fingerprint}\"\n"),
    )
    .unwrap();
    let out = hosts
        .on(0, &syncra)
        .args(["hosts", "--pings", &pings.to_string(), "--config"])
        .arg(&config)
        .arg("--state-dir")
        .arg(state("runtime"))
        .output()
        .expect("syncra hosts");
    let _ = agent.kill();
    let _ = agent.wait();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let grab = |key: &str| -> f64 {
        text.split(key)
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no `{key}` in `syncra hosts`: {text}"))
            * 1e3
    };
    let (t50, t99) = (grab("p50 "), grab("p99 "));

    // The baseline: the bench itself as a one-byte TCP echo on the agent's host.
    let (r50, r99) = tcp_round_trips(&hosts, pings, 1);
    let between = if hosts.namespaces() {
        "two network namespaces over veth"
    } else {
        "loopback (not root: no namespaces)"
    };
    rows.push(Row {
        measure: format!(
            "(links b) ping on the agent link (mutual TLS 1.3, pinned identities, framed MessagePack), {pings} pings, {between}"
        ),
        p50: format!("{t50:.1} µs"),
        p99: format!("{t99:.1} µs"),
        baseline: format!(
            "raw TCP one-byte ping-pong between the same hosts: p50 {r50:.1} µs p99 {r99:.1} µs"
        ),
        target: "- (the floor of a call across hosts)".into(),
        verdict: format!("measured ({:.2}× raw TCP)", t50 / r50),
    });
    t50
}

/// A runtime's host and an agent's, the agent running.
struct Pair {
    hosts: Hosts,
    dir: tempfile::TempDir,
    state: String,
    agent: Agent,
    address: String,
}

impl Pair {
    fn new() -> Pair {
        let hosts = Hosts::make();
        let dir = tempfile::tempdir().expect("a scratch directory");
        let rt_state = dir.path().join("runtime-state");
        let runtime = identity(&rt_state);
        let listen = if hosts.namespaces() {
            "0.0.0.0:7800"
        } else {
            "127.0.0.1:0"
        };
        let agent = Agent::start(&hosts, &dir.path().join("agent-state"), &[&runtime], listen);
        let address = if hosts.namespaces() {
            "10.200.0.2:7800".to_owned()
        } else {
            agent.addr.clone()
        };
        Pair {
            hosts,
            state: rt_state.display().to_string(),
            dir,
            agent,
            address,
        }
    }

    /// A runtime on the first host with `[hosts.far]` and `rest`.
    fn runtime(&self, rest: &str) -> Harness {
        self.runtime_with("", rest)
    }

    /// [`Pair::runtime`] with more `[runtime]` keys.
    fn runtime_with(&self, runtime: &str, rest: &str) -> Harness {
        let config = format!(
            "[runtime]\n{runtime}watch_interval_ms = 1000\nabort_grace_ms = 200\n[supervisor]\nintensity = 1000000\nstable_after_ms = 50\nbackoff_jitter = 0.0\n\n[hosts.far]\naddress = \"{}\"\nfingerprint = \"{}\"\n\n{rest}",
            self.address, self.agent.fingerprint
        );
        Harness::start_with(
            &config,
            &["--state-dir", &self.state],
            Options {
                netns: self.hosts.netns(0),
                ..Options::default()
            },
        )
    }

    fn between(&self) -> &'static str {
        if self.hosts.namespaces() {
            "two network namespaces over veth"
        } else {
            "loopback (not root: no namespaces)"
        }
    }
}

/// A peer node's `[drivers.<name>]`, reporting to `<dir>/<name>.jsonl`, on `far` when `far`.
fn peer(dir: &std::path::Path, name: &str, role: &str, opts: &[&str], far: bool) -> String {
    syncra_integration_tests::peers::driver(dir, name, role, opts, far.then_some("far"))
}

/// (links b) Calls by name from a node here to a node on the other host: over the direct
/// link's bridge, and through the hub, beside the agent link's TLS ping (`tls_p50`).
pub(crate) fn remote_calls(rounds: usize, tls_p50: f64, rows: &mut Vec<Row>) {
    for hub_only in [false, true] {
        let pair = Pair::new();
        let dir = pair.dir.path().to_owned();
        let nodes = [
            peer(&dir, "echo", "echo", &[], true),
            peer(
                &dir,
                "caller",
                "bench-caller",
                &["to=echo", &format!("rounds={rounds}")],
                false,
            ),
        ]
        .concat();
        let h = pair.runtime_with(&format!("direct_links = {}\n", !hub_only), &nodes);
        let deadline = Instant::now() + Duration::from_secs(300);
        let report = loop {
            if let Some(v) = syncra_integration_tests::peers::lines(&dir, "caller")
                .into_iter()
                .find(|v| v.get("routed_us").is_some() || v.get("error").is_some())
            {
                break v;
            }
            assert!(
                Instant::now() < deadline,
                "the remote calls did not finish:\n{}",
                h.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        drop(h);
        if let Some(e) = report.get("error") {
            panic!("the remote-call benchmark failed: {e}");
        }
        let list = |k: &str| -> Vec<f64> {
            report[k]
                .as_array()
                .map(|a| a.iter().filter_map(|x| x.as_f64()).collect())
                .unwrap_or_default()
        };
        let how = if hub_only {
            "through the hub (`direct_links = false`)"
        } else {
            "over its direct link (bridged over TLS)"
        };
        for (label, mut times) in [
            ("link thread to link thread", list("link_us")),
            ("main loop to main loop", list("routed_us")),
        ] {
            let (p50, p99) = (percentile(&mut times, 50.0), percentile(&mut times, 99.0));
            rows.push(Row {
                measure: format!(
                    "(links b) call by name to a node on the other host {how}, {label}, {} calls, {}",
                    times.len(),
                    pair.between()
                ),
                p50: format!("{p50:.1} µs"),
                p99: format!("{p99:.1} µs"),
                baseline: format!("TLS ping on the agent link (above): p50 {tls_p50:.1} µs"),
                target: "-".into(),
                verdict: format!("measured ({:.2}× the TLS ping)", p50 / tls_p50),
            });
        }
    }
}

/// (hosts c) SIGKILL → replacement ready, for a world on the other host and one here.
pub(crate) fn remote_restarts(kills: usize, rows: &mut Vec<Row>) {
    let pair = Pair::new();
    let h =
        pair.runtime("[worlds]\nentities = 256\nnames = [\"far\"]\n[worlds.far]\nhost = \"far\"\n");
    h.wait_ready(&["world/main", "world/far"]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut stream = rt.block_on(super::events(&h));
    let (mut far, mut near) = (Vec::new(), Vec::new());
    for i in 0..kills * 2 {
        let name = if i % 2 == 0 {
            "world/far"
        } else {
            "world/main"
        };
        // Past the stability threshold, so the restart is immediate.
        std::thread::sleep(Duration::from_millis(60));
        let node = h.node(name);
        let t0 = Instant::now();
        send(node.pid.unwrap(), libc::SIGKILL);
        let (t1, ()) = rt.block_on(super::until(&mut stream, |ev| {
            (matches!(ev.what, EventKind::Up { .. })
                && ev.node.to_string() == name
                && ev.incarnation > node.incarnation)
                .then_some(())
        }));
        let dt = (t1 - t0).as_secs_f64() * 1e3;
        if i % 2 == 0 {
            far.push(dt)
        } else {
            near.push(dt)
        }
    }
    let (f50, f99) = (percentile(&mut far, 50.0), percentile(&mut far, 99.0));
    let (n50, n99) = (percentile(&mut near, 50.0), percentile(&mut near, 99.0));
    rows.push(Row {
        measure: format!(
            "(hosts c) SIGKILL of a world on the other host → its replacement ready there ({kills} kills), {}",
            pair.between()
        ),
        p50: super::ms(f50),
        p99: super::ms(f99),
        baseline: format!(
            "the same for a world on the runtime's host, same runtime: p50 {} p99 {}",
            super::ms(n50),
            super::ms(n99)
        ),
        target: "-".into(),
        verdict: format!("measured (+{:.2} ms)", f50 - n50),
    });
}

/// (hosts d) Stream messages published on the other host, received here.
pub(crate) fn remote_streams(samples: usize, rows: &mut Vec<Row>) {
    // The bytes of a 256-entity scene, as a world publishes it.
    let scene_bytes = {
        let settings = syncra_protocol::world::WorldSettings {
            name: "main".into(),
            tick_hz: 60.0,
            entities: 256,
            seed: 1,
            game: Default::default(),
            state: Default::default(),
        };
        let scene = syncra_world::Scene::new(&settings);
        let mut snapshot = syncra_protocol::world::SceneSnapshot {
            world: String::new(),
            tick: 0,
            entities: Vec::new(),
            player: None,
        };
        scene.snapshot_into("main", &mut snapshot);
        syncra_protocol::wire::encode(&snapshot).len()
    };
    for (what, size, rate) in [
        ("a 64 B message", 64usize, 200u32),
        ("a 256-entity scene", scene_bytes, 60),
    ] {
        let pair = Pair::new();
        let dir = pair.dir.path().to_owned();
        let slot = (size + 256).max(128);
        let nodes = [
            peer(
                &dir,
                "far-producer",
                "producer",
                &[
                    "stream=far-producer/ticks",
                    "policy=drop",
                    "slots=64",
                    &format!("rate={rate}"),
                    &format!("size={slot}"),
                    if size > 64 { "fill=1" } else { "fill=0" },
                ],
                true,
            ),
            peer(
                &dir,
                "near-consumer",
                "consumer",
                &["stream=far-producer/ticks"],
                false,
            ),
        ]
        .concat();
        let h = pair.runtime(&nodes);
        h.wait_ready(&["far-producer", "near-consumer"]);
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut ages = loop {
            let got: Vec<f64> = syncra_integration_tests::peers::lines(&dir, "near-consumer")
                .into_iter()
                .filter_map(|v| v.get("age_us").and_then(|a| a.as_f64()))
                .collect();
            // The first ones waited for the bridge to open: skip them.
            if got.len() >= samples + 20 {
                break got[20..].to_vec();
            }
            assert!(
                Instant::now() < deadline,
                "too few messages came across:\n{}",
                h.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        drop(h);
        let (p50, p99) = (percentile(&mut ages, 50.0), percentile(&mut ages, 99.0));
        let (r50, r99) = tcp_round_trips(&pair.hosts, 1000, size);
        rows.push(Row {
            measure: format!(
                "(hosts d) {what} ({size} B) published on the other host → received here, {} messages at {rate}/s, drop-oldest, {}",
                ages.len(),
                pair.between()
            ),
            p50: format!("{p50:.1} µs"),
            p99: format!("{p99:.1} µs"),
            baseline: format!(
                "raw TCP one way (half a ping-pong of {size} B) between the same hosts: p50 {:.1} µs p99 {:.1} µs",
                r50 / 2.0,
                r99 / 2.0
            ),
            target: "-".into(),
            verdict: format!("measured ({:.1}× the raw socket)", p50 / (r50 / 2.0)),
        });
    }
}
