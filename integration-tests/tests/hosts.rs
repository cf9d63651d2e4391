//! Other hosts: `syncra agent` on one host, a runtime's `syncra hosts` on another — as root,
//! two network namespaces joined by a veth pair, which the test makes and which vanish with it;
//! as an ordinary user, loopback. Identities made on first start and kept, mutual TLS pinned
//! by fingerprint both ways, refusals that name the fingerprints, handshakes that a silent or
//! garbage-speaking peer cannot hold up.

#![allow(
    clippy::disallowed_methods,
    reason = "the tests run the real binaries and the namespace tools"
)]

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use syncra_integration_tests::hosts::{Agent, Hosts, identity};
use syncra_integration_tests::{PATIENCE, workspace_bin};

/// `syncra hosts` on the runtime's host with a config naming `hosts` (name, address, pin).
fn check(hosts: &Hosts, dir: &Path, state: &Path, entries: &[(&str, &str, &str)]) -> Output {
    let config = dir.join("SyncraConfig.toml");
    let text: String = entries
        .iter()
        .map(|(n, a, f)| format!("[hosts.{n}]\naddress = \"{a}\"\nfingerprint = \"{f}\"\n"))
        .collect();
    std::fs::write(&config, text).unwrap();
    hosts
        .on(0, &workspace_bin("syncra"))
        .args(["hosts", "--config"])
        .arg(&config)
        .arg("--state-dir")
        .arg(state)
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn dirs() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let (rt, agent) = (t.path().join("runtime-state"), t.path().join("agent-state"));
    (t, rt, agent)
}

#[test]
fn an_agent_on_another_host_is_reached_over_pinned_mutual_tls_and_keeps_its_identity() {
    let hosts = Hosts::make();
    let (t, rt_state, agent_state) = dirs();
    let runtime = identity(&rt_state);
    assert_eq!(
        identity(&rt_state),
        runtime,
        "the runtime's identity is kept"
    );
    let agent = Agent::start(&hosts, &agent_state, &[&runtime], hosts.agent_addr());
    let out = check(
        &hosts,
        t.path(),
        &rt_state,
        &[("gpu-box", &agent.addr, &agent.fingerprint)],
    );
    let text = stdout(&out);
    assert!(out.status.success(), "{text}{}", agent.log());
    assert!(text.contains("ok: agent gpu-box"), "{text}");
    assert!(text.contains(&format!("this runtime: {runtime}")), "{text}");
    agent.wait_log("a runtime's session");
    // SIGKILLed and started again: the same identity, and the same pin still holds.
    let (fp, addr) = (agent.fingerprint.clone(), agent.addr.clone());
    drop(agent);
    let again = Agent::start(&hosts, &agent_state, &[&runtime], &addr);
    assert_eq!(again.fingerprint, fp);
    let out = check(
        &hosts,
        t.path(),
        &rt_state,
        &[("gpu-box", &again.addr, &fp)],
    );
    assert!(out.status.success(), "{}", stdout(&out));
    let key = agent_state.join("identity.key");
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(key).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

#[test]
fn a_wrong_or_unpinned_certificate_either_side_is_refused_and_says_which() {
    let hosts = Hosts::make();
    let (t, rt_state, agent_state) = dirs();
    let runtime = identity(&rt_state);
    let stranger = identity(&t.path().join("stranger"));
    let agent = Agent::start(&hosts, &agent_state, &[&stranger], hosts.agent_addr());
    // The agent trusts another runtime: this one is told so, with its own fingerprint to add.
    let out = check(
        &hosts,
        t.path(),
        &rt_state,
        &[("gpu-box", &agent.addr, &agent.fingerprint)],
    );
    let text = stdout(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("does not trust this certificate") && text.contains(&runtime),
        "{text}"
    );
    let log = agent.wait_log("refused a connection");
    assert!(
        log.contains(&format!("certificate not trusted: fingerprint {runtime}")),
        "{log}"
    );
    // The config pins another agent: refused by the runtime, naming both.
    let wrong = format!("sha256:{}", "ab".repeat(32));
    let out = check(
        &hosts,
        t.path(),
        &rt_state,
        &[("gpu-box", &agent.addr, &wrong)],
    );
    let text = stdout(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains(&format!(
            "certificate not trusted: fingerprint {}; trusted: {wrong}",
            agent.fingerprint
        )),
        "{text}"
    );
    assert!(!log.contains("a runtime's session"), "{log}");
}

#[test]
fn a_silent_peer_and_garbage_on_the_agents_port_hold_no_runtime_up() {
    let hosts = Hosts::loopback();
    let (t, rt_state, agent_state) = dirs();
    let runtime = identity(&rt_state);
    let agent = Agent::start(&hosts, &agent_state, &[&runtime], "127.0.0.1:0");
    let mut silent = std::net::TcpStream::connect(&agent.addr).unwrap();
    let mut garbage = std::net::TcpStream::connect(&agent.addr).unwrap();
    std::io::Write::write_all(&mut garbage, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let out = check(
        &hosts,
        t.path(),
        &rt_state,
        &[("box", &agent.addr, &agent.fingerprint)],
    );
    assert!(out.status.success(), "{}{}", stdout(&out), agent.log());
    // The silent one is closed at the agent's handshake timeout (500 ms here).
    silent.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut b = [0u8; 1];
    assert!(matches!(silent.read(&mut b), Ok(0) | Err(_)));
    agent.wait_log("a TLS handshake timed out");
}

#[test]
fn an_agent_that_trusts_nobody_or_a_bad_line_does_not_start_and_says_why() {
    let (t, _, agent_state) = dirs();
    let run = |args: &[&str]| {
        Command::new(workspace_bin("syncra"))
            .args(["agent", "--listen", "127.0.0.1:0", "--state-dir"])
            .arg(&agent_state)
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("it trusts no runtime: pass `--trust <fingerprint>`"),
        "{err}"
    );
    std::fs::write(agent_state.join("trusted"), "# ours\n\nnot-a-fingerprint\n").unwrap();
    let out = run(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("trusted:3: `not-a-fingerprint` is not a fingerprint"),
        "{err}"
    );
    // A trust list other users may write is refused, whatever it says.
    let good = format!("sha256:{}", "0f".repeat(32));
    std::fs::write(agent_state.join("trusted"), format!("{good}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(
        agent_state.join("trusted"),
        std::fs::Permissions::from_mode(0o666),
    )
    .unwrap();
    let out = run(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("may be written by other users (mode 0666)"),
        "{err}"
    );
    std::fs::remove_file(agent_state.join("trusted")).unwrap();
    let out = run(&["--trust", "sha256:12"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--trust: `sha256:12` is not a fingerprint"),
        "{err}"
    );
    drop(t);
}

#[test]
fn bad_host_entries_are_refused_with_their_keys() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("SyncraConfig.toml");
    let good = format!("sha256:{}", "0f".repeat(32));
    for (entry, says) in [
        (
            format!("address = \"gpu-box\"\nfingerprint = \"{good}\""),
            "`hosts.a.address`: `gpu-box` is not `host:port`",
        ),
        (
            "address = \"10.0.0.2:7800\"\nfingerprint = \"abc\"".to_owned(),
            "`hosts.a.fingerprint`: `abc` is not a fingerprint",
        ),
        (
            format!("address = \"10.0.0.2:7800\"\nfingerprint = \"{good}\"\nport = 1"),
            "port",
        ),
    ] {
        std::fs::write(&path, format!("[hosts.a]\n{entry}\n")).unwrap();
        let out = Command::new(workspace_bin("syncra"))
            .args(["check-config", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{entry}: accepted");
        assert!(err.contains(says), "{entry}: {err}");
    }
}
