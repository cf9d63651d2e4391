//! (links b) The agent link's round trip — a ping over mutual TLS (pinned identities) with the
//! agent link's framing, from `syncra hosts --pings N` on one host to `syncra agent` on the
//! other — beside a raw TCP ping-pong (one byte each way, `TCP_NODELAY`) between the same two
//! hosts in the same run. As root the hosts are two network namespaces joined by a veth pair;
//! otherwise both are this machine's loopback.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::process::{Command, Stdio};
use std::time::Instant;

use syncra_integration_tests::hosts::Hosts;
use syncra_integration_tests::{percentile, workspace_bin};

use super::Row;

/// `--tcp-echo ADDR`: accept one connection and echo what comes, byte for byte (the baseline's
/// server, run on the agent's host). Prints `listening ADDR` first.
pub(crate) fn tcp_echo(addr: &str) {
    let listener = std::net::TcpListener::bind(addr).expect("binding the echo server");
    println!("listening {}", listener.local_addr().unwrap());
    let _ = std::io::stdout().flush();
    let (mut s, _) = listener.accept().expect("a connection");
    let _ = s.set_nodelay(true);
    let mut b = [0u8; 1];
    while s.read_exact(&mut b).is_ok() {
        if s.write_all(&b).is_err() {
            break;
        }
    }
}

/// `--tcp-ping ADDR N`: N one-byte round trips; prints each in µs, one a line.
pub(crate) fn tcp_ping(addr: &str, n: usize) {
    let mut s = std::net::TcpStream::connect(addr).expect("connecting to the echo server");
    let _ = s.set_nodelay(true);
    let mut b = [7u8; 1];
    let mut out = String::new();
    for _ in 0..n {
        let t = Instant::now();
        s.write_all(&b).unwrap();
        s.read_exact(&mut b).unwrap();
        out.push_str(&format!("{}\n", t.elapsed().as_secs_f64() * 1e6));
    }
    print!("{out}");
}

#[allow(
    clippy::disallowed_methods,
    reason = "the benchmark runs the real binaries"
)]
pub(crate) fn agent_link(pings: usize, rows: &mut Vec<Row>) {
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
        .args(["--tcp-ping", &echo_at, &pings.to_string()])
        .output()
        .expect("the ping client");
    let _ = echo.kill();
    let _ = echo.wait();
    let mut raw: Vec<f64> = String::from_utf8_lossy(&ping.stdout)
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect();
    let (r50, r99) = (percentile(&mut raw, 50.0), percentile(&mut raw, 99.0));
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
}
