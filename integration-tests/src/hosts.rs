//! Two "hosts" on one machine for tests and benchmarks: as root, two network namespaces joined
//! by a veth pair (10.200.0.1 and 10.200.0.2), held by sleeping processes so that they vanish
//! with the test; otherwise this machine's loopback, twice. A partition is the veth taken down
//! (packets dropped silently, as a pulled cable); on loopback, a relay in the test that stops
//! passing bytes. [`Agent`] runs `syncra agent` on the second host.

#![allow(
    clippy::disallowed_methods,
    reason = "the namespace tools are run as they are"
)]

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::time::{Duration, Instant};

use crate::{PATIENCE, is_root, workspace_bin};

/// Two "hosts": network namespaces (as root) held by sleeping processes, or this one twice.
#[derive(Debug)]
pub struct Hosts {
    holders: Vec<Child>,
    /// The runtime's host's and the agent's host's pid (to `nsenter`), if namespaces.
    pids: Option<(u32, u32)>,
    /// The agent host's end of the veth pair.
    veth: String,
    /// On loopback: the relays standing for the wire, cut together by [`Hosts::partition`].
    relays: Mutex<Vec<Relay>>,
}

impl Hosts {
    /// Both "hosts" this machine's loopback, whoever runs it.
    pub fn loopback() -> Hosts {
        Hosts {
            holders: Vec::new(),
            pids: None,
            veth: String::new(),
            relays: Mutex::new(Vec::new()),
        }
    }

    /// Whether the two are network namespaces of their own.
    pub fn namespaces(&self) -> bool {
        self.pids.is_some()
    }

    /// Namespaces as root, loopback otherwise.
    pub fn make() -> Hosts {
        if !is_root() {
            eprintln!("note: not root, so both \"hosts\" are this machine's loopback");
            return Hosts::loopback();
        }
        let hold = || {
            Command::new("unshare")
                .args(["--net", "sleep", "600"])
                .spawn()
                .expect("unshare (util-linux)")
        };
        let (a, b) = (hold(), hold());
        let (pa, pb) = (a.id(), b.id());
        let tag = std::process::id() % 100_000;
        let (va, vb) = (format!("sya{tag}"), format!("syb{tag}"));
        let hosts = Hosts {
            holders: vec![a, b],
            pids: Some((pa, pb)),
            veth: vb.clone(),
            relays: Mutex::new(Vec::new()),
        };
        // The holders must be in their namespaces before a veth can be put there.
        let deadline = Instant::now() + PATIENCE;
        let own = std::fs::read_link("/proc/self/ns/net").unwrap();
        for pid in [pa, pb] {
            while std::fs::read_link(format!("/proc/{pid}/ns/net"))
                .ok()
                .as_ref()
                == Some(&own)
                || std::fs::read_link(format!("/proc/{pid}/ns/net")).is_err()
            {
                assert!(
                    Instant::now() < deadline,
                    "unshare never entered its namespace"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        sh(&[
            "ip",
            "link",
            "add",
            &va,
            "netns",
            &pa.to_string(),
            "type",
            "veth",
            "peer",
            "name",
            &vb,
            "netns",
            &pb.to_string(),
        ]);
        for (pid, dev, addr) in [(pa, &va, "10.200.0.1/24"), (pb, &vb, "10.200.0.2/24")] {
            let p = pid.to_string();
            sh(&[
                "nsenter", "-t", &p, "-n", "ip", "addr", "add", addr, "dev", dev,
            ]);
            sh(&["nsenter", "-t", &p, "-n", "ip", "link", "set", dev, "up"]);
            sh(&["nsenter", "-t", &p, "-n", "ip", "link", "set", "lo", "up"]);
        }
        hosts
    }

    /// Where the agent listens (port 0 on loopback: any free one).
    pub fn agent_addr(&self) -> &'static str {
        if self.pids.is_some() {
            "10.200.0.2:7800"
        } else {
            "127.0.0.1:0"
        }
    }

    /// The address the runtime's config names for an agent listening at `listening`: the same,
    /// between namespaces; on loopback, a relay in this process that [`Hosts::partition`]
    /// can cut.
    pub fn route(&self, listening: &str) -> String {
        if self.pids.is_some() {
            return listening.to_owned();
        }
        let relay = Relay::start(listening);
        let addr = relay.addr.clone();
        self.relays.lock().unwrap().push(relay);
        addr
    }

    /// Cut (`true`) or mend the wire between the two hosts. Packets sent meanwhile are held
    /// or dropped, never refused: neither side hears anything until it is mended.
    pub fn partition(&self, cut: bool) {
        match self.pids {
            Some((_, b)) => on_host(
                b,
                &[
                    "ip",
                    "link",
                    "set",
                    &self.veth,
                    if cut { "down" } else { "up" },
                ],
            ),
            None => {
                for r in self.relays.lock().unwrap().iter() {
                    r.cut(cut);
                }
            }
        }
    }

    /// The pid whose network namespace is host `host` (0: the runtime's, 1: the agent's), if
    /// the hosts are namespaces.
    pub fn netns(&self, host: usize) -> Option<u32> {
        self.pids.map(|(a, b)| [a, b][host])
    }

    /// Cap what the agent's host sends to `kbit` kbit/s (`tc` `tbf` on its veth, as root; on
    /// loopback, the relays pace what they pass back).
    pub fn cap(&self, kbit: u32) {
        match self.pids {
            Some((_, b)) => on_host(
                b,
                &[
                    "tc",
                    "qdisc",
                    "replace",
                    "dev",
                    &self.veth,
                    "root",
                    "tbf",
                    "rate",
                    &format!("{kbit}kbit"),
                    "burst",
                    "16kb",
                    "latency",
                    "50ms",
                ],
            ),
            None => {
                for r in self.relays.lock().unwrap().iter() {
                    *r.pace.lock().unwrap() = Some(u64::from(kbit) * 1000 / 8);
                }
            }
        }
    }

    /// `program` to run on host 0 (the runtime's) or 1 (the agent's).
    pub fn on(&self, host: usize, program: &Path) -> Command {
        match self.pids {
            Some((a, b)) => {
                let mut c = Command::new("nsenter");
                c.args(["-t", &[a, b][host].to_string(), "-n"]).arg(program);
                c
            }
            None => Command::new(program),
        }
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for h in &mut self.holders {
            let _ = h.kill();
            let _ = h.wait();
        }
    }
}

/// A TCP relay on loopback standing for the wire between two hosts: it passes bytes both
/// ways until cut, then holds them (as a partition: no reset, no error) until mended.
#[derive(Debug)]
struct Relay {
    addr: String,
    cut: Arc<(Mutex<bool>, Condvar)>,
    /// Bytes a second passed back towards the runtime, if capped.
    pace: Arc<Mutex<Option<u64>>>,
}

impl Relay {
    fn start(target: &str) -> Relay {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let cut = Arc::new((Mutex::new(false), Condvar::new()));
        let pace = Arc::new(Mutex::new(None));
        let (target, state, rate) = (target.to_owned(), cut.clone(), pace.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().map_while(Result::ok) {
                let Ok(server) = std::net::TcpStream::connect(&target) else {
                    continue;
                };
                for (from, to, paced) in [
                    (
                        client.try_clone().unwrap(),
                        server.try_clone().unwrap(),
                        None,
                    ),
                    (server, client, Some(rate.clone())),
                ] {
                    let state = state.clone();
                    std::thread::spawn(move || pass(from, to, &state, paced));
                }
            }
        });
        Relay { addr, cut, pace }
    }

    fn cut(&self, cut: bool) {
        *self.cut.0.lock().unwrap() = cut;
        self.cut.1.notify_all();
    }
}

fn pass(
    mut from: std::net::TcpStream,
    mut to: std::net::TcpStream,
    cut: &(Mutex<bool>, Condvar),
    pace: Option<Arc<Mutex<Option<u64>>>>,
) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        // A capped direction passes its bytes no faster than the cap (a slow link: the
        // sender's socket fills and waits).
        if let Some(rate) = pace.as_ref().and_then(|p| *p.lock().unwrap()) {
            let n = from.read(&mut buf[..4096]);
            let n = match n {
                Ok(0) | Err(_) => {
                    let _ = to.shutdown(std::net::Shutdown::Write);
                    return;
                }
                Ok(n) => n,
            };
            std::thread::sleep(Duration::from_secs_f64(n as f64 / rate as f64));
            if to.write_all(&buf[..n]).is_err() {
                return;
            }
            continue;
        }
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => {
                let _ = to.shutdown(std::net::Shutdown::Write);
                return;
            }
            Ok(n) => n,
        };
        let mut held = cut.0.lock().unwrap();
        while *held {
            held = cut.1.wait(held).unwrap();
        }
        drop(held);
        if to.write_all(&buf[..n]).is_err() {
            return;
        }
    }
}

/// The fingerprint of the runtime identity kept in `state` (made on first use).
pub fn identity(state: &Path) -> String {
    let out = Command::new(workspace_bin("syncra"))
        .args(["identity", "--state-dir"])
        .arg(state)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Run `args` in the network namespace of process `pid`.
fn on_host(pid: u32, args: &[&str]) {
    let pid = pid.to_string();
    let mut all = vec!["nsenter", "-t", &pid, "-n"];
    all.extend_from_slice(args);
    sh(&all);
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A running `syncra agent` on host 1: its process, and what it printed.
#[derive(Debug)]
pub struct Agent {
    child: Child,
    /// Its identity's fingerprint, as it printed it.
    pub fingerprint: String,
    /// Where it listens, as it printed it.
    pub addr: String,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Agent {
    /// Start one named `gpu-box` with its identity in `state`, trusting `trust`, on `addr`.
    pub fn start(hosts: &Hosts, state: &Path, trust: &[&str], addr: &str) -> Agent {
        Agent::start_with(hosts, state, trust, addr, &[])
    }

    /// [`Agent::start`] with extra environment (a test tag its nodes inherit).
    pub fn start_with(
        hosts: &Hosts,
        state: &Path,
        trust: &[&str],
        addr: &str,
        env: &[(&str, &str)],
    ) -> Agent {
        let mut cmd = hosts.on(1, &workspace_bin("syncra"));
        cmd.envs(env.iter().copied());
        cmd.args(["agent", "--listen", addr, "--state-dir"])
            .arg(state)
            .args(["--name", "gpu-box", "--handshake-timeout-ms", "500"]);
        for t in trust {
            cmd.args(["--trust", t]);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let mut err = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let (mut fingerprint, mut listening) = (None, None);
        let deadline = Instant::now() + PATIENCE;
        while fingerprint.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx.recv_timeout(left).unwrap_or_else(|_| {
                panic!(
                    "the agent printed no fingerprint; stderr:\n{}",
                    stderr.lock().unwrap()
                )
            });
            if let Some(fp) = line.strip_prefix("fingerprint ") {
                fingerprint = Some(fp.to_owned());
            }
            if let Some(rest) = line.split("listening on ").nth(1) {
                listening = rest.split(',').next().map(str::to_owned);
            }
        }
        Agent {
            child,
            fingerprint: fingerprint.unwrap(),
            addr: listening.expect("the agent said where it listens"),
            stderr,
        }
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Wait until its log says `what`.
    pub fn wait_log(&self, what: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let log = self.log();
            if log.contains(what) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "the agent never logged `{what}`:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Agent {
    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL it and reap it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
