//! Two "hosts" on one machine for tests and benchmarks: as root, two network namespaces joined
//! by a veth pair (10.200.0.1 and 10.200.0.2), held by sleeping processes so that they vanish
//! with the test; otherwise this machine's loopback, twice.

#![allow(
    clippy::disallowed_methods,
    reason = "the namespace tools are run as they are"
)]

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use crate::{PATIENCE, is_root};

/// Two "hosts": network namespaces (as root) held by sleeping processes, or this one twice.
#[derive(Debug)]
pub struct Hosts {
    holders: Vec<Child>,
    /// The runtime's host's and the agent's host's pid (to `nsenter`), if namespaces.
    pids: Option<(u32, u32)>,
}

impl Hosts {
    /// Both "hosts" this machine's loopback, whoever runs it.
    pub fn loopback() -> Hosts {
        Hosts {
            holders: Vec::new(),
            pids: None,
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
            return Hosts {
                holders: Vec::new(),
                pids: None,
            };
        }
        let hold = || {
            Command::new("unshare")
                .args(["--net", "sleep", "600"])
                .spawn()
                .expect("unshare (util-linux)")
        };
        let (a, b) = (hold(), hold());
        let (pa, pb) = (a.id(), b.id());
        let hosts = Hosts {
            holders: vec![a, b],
            pids: Some((pa, pb)),
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
        let tag = std::process::id() % 100_000;
        let (va, vb) = (format!("sya{tag}"), format!("syb{tag}"));
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

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
