//! The sandbox against nodes that misbehave on purpose: a helper node (and a shell script
//! named as a world) tries to read a secret, write outside its profile, reach a TCP listener
//! the test runs on loopback, send UDP, open a packet socket, use the runtime's control
//! socket, signal, ptrace and read the environment of the runtime and of its sibling nodes,
//! fork without end and allocate without end. Each attempt must be refused or contained while
//! the runtime and every other node go on (a world keeps ticking), and the log, status and
//! crash records say what happened.
//!
//! Every attack runs twice where it can: as the test's own user, and — when the tests run as
//! root — as an ordinary user (`nobody`), whose runtime has to make its network namespaces
//! through user namespaces. The fork bomb runs only as an ordinary user: root is exempt from
//! the process limit (status says so, and `sandbox = "strict"` refuses to start such a node).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use syncra_integration_tests::{
    Harness, Options, PATIENCE, STRANGER_UID, Staged, is_root, jsonl, workspace_bin,
};
use syncra_protocol::NodeState;

/// Where the helpers' binaries are for a runtime run as `user`.
struct Setup {
    options: Options,
    peer: PathBuf,
    /// Who the runtime runs as, for messages.
    who: &'static str,
}

fn setup(as_stranger: bool) -> Setup {
    if as_stranger && is_root() {
        let staged = Staged::copy(&["syncra-test-peer"]);
        Setup {
            peer: staged.bin("syncra-test-peer"),
            options: Options {
                user: Some((STRANGER_UID, staged)),
                ..Options::default()
            },
            who: "nobody",
        }
    } else {
        if as_stranger {
            eprintln!("note: not root, so this runs as this user (an ordinary one already)");
        }
        Setup {
            peer: workspace_bin("syncra-test-peer"),
            options: Options::default(),
            who: "the test's user",
        }
    }
}

/// A directory anyone may read and write (so that only the sandbox can stand in the way).
fn open_dir(prefix: &str) -> tempfile::TempDir {
    let d = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    d
}

/// The outcome of each attack in `file`, by name.
fn outcomes(file: &Path) -> Vec<(String, String)> {
    jsonl(file)
        .iter()
        .filter_map(|v| {
            Some((
                v["attack"].as_str()?.to_owned(),
                v["outcome"].as_str()?.to_owned(),
            ))
        })
        .collect()
}

fn tick(h: &Harness, name: &str) -> u64 {
    h.node(name).tick.unwrap_or(0)
}

/// The world's tick moves on.
fn keeps_ticking(h: &Harness, name: &str) {
    let before = tick(h, name);
    h.wait_until(&format!("{name} ticks on"), PATIENCE, |s| {
        s.node(name)?.tick.filter(|t| *t > before + 5)
    });
}

fn attacks(as_stranger: bool) {
    let s = setup(as_stranger);
    let secrets = tempfile::Builder::new()
        .prefix("syncra-secrets-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(secrets.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::create_dir(secrets.path().join(".ssh")).unwrap();
    std::fs::set_permissions(
        secrets.path().join(".ssh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let secret = secrets.path().join(".ssh/id_rsa");
    std::fs::write(&secret, "-----BEGIN OPENSSH PRIVATE KEY----- not really\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let outside = secrets.path().join("pwned");
    let script_outside = secrets.path().join("pwned-by-script");
    let out = open_dir("syncra-attack-out-");
    let bin = tempfile::Builder::new()
        .prefix("syncra-evil-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(bin.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let script = bin.path().join("evil.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n\
             r=$(cat {secret} 2>&1) && echo \"read: ALLOWED $r\" || echo \"read: denied $r\"\n\
             (echo x > {outside}) 2>/dev/null && echo 'write: ALLOWED' || echo 'write: denied'\n\
             kill -0 $PPID 2>/dev/null && echo 'signal: ALLOWED' || echo 'signal: denied'\n",
            secret = secret.display(),
            outside = script_outside.display(),
        ) + "exec > /dev/null; sleep 600\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    // A socket by path outside the node's profile, as a session bus or docker.sock would be.
    let bus_path = secrets.path().join("bus");
    let bus = std::os::unix::net::UnixListener::bind(&bus_path).unwrap();
    bus.set_nonblocking(true).unwrap();
    std::fs::set_permissions(&bus_path, std::fs::Permissions::from_mode(0o777)).unwrap();
    let attack_out = out.path().join("attack.jsonl");
    let targets = out.path().join("targets");
    let config = format!(
        "[runtime]\nwatch_interval_ms = 500\n\
         [sandbox]\nwrite = [\"{out}\"]\n\
         [drivers.victim]\ncommand = \"{peer}\"\nargs = [\"echo\", \"out={out}/victim.jsonl\"]\n\
         [drivers.attack]\ncommand = \"{peer}\"\n\
         args = [\"attack\", \"secret={secret}\", \"outside={outside}\", \"port={port}\", \"unix={bus}\", \"targets={targets}\", \"out={attack_out}\"]\n\
         [worlds]\nnames = [\"evil\"]\n\
         [worlds.evil]\ncommand = \"{script}\"\nstart_timeout_ms = 600000\n",
        out = out.path().display(),
        peer = s.peer.display(),
        secret = secret.display(),
        outside = outside.display(),
        targets = targets.display(),
        attack_out = attack_out.display(),
        bus = bus_path.display(),
        script = script.display(),
    );
    let h = Harness::start_with(&config, &[], s.options);
    let views = h.wait_ready(&["victim", "attack", "world/main"]);
    let victim = views[0].pid.unwrap();
    let world = views[2].pid.unwrap();
    let sandbox = views[1].sandbox.clone().expect("status shows the sandbox");
    assert!(
        sandbox.enforced.iter().any(|r| r.starts_with("filesystem")),
        "{} on this machine: {sandbox:?}",
        s.who
    );
    eprintln!("as {}: the attacker's sandbox: {sandbox:?}", s.who);
    let tmp = targets.with_extension("tmp");
    std::fs::write(&tmp, format!("{victim} {world} {}\n", h.pid())).unwrap();
    std::fs::rename(&tmp, &targets).unwrap();
    h.wait_until("the attacker is done", PATIENCE, |_| {
        jsonl(&attack_out)
            .iter()
            .any(|v| v["done"] == true)
            .then_some(())
    });

    let found = outcomes(&attack_out);
    let mut expected = vec![
        "read a secret".to_owned(),
        "read /etc/shadow".into(),
        "write outside".into(),
        "tcp connect".into(),
        "udp send".into(),
        "unix socket by path".into(),
        "raw socket".into(),
        "set-user-ID file".into(),
        "set-group-ID file by open".into(),
        "personality".into(),
        "sethostname".into(),
        "control socket".into(),
    ];
    for pid in [victim, world, h.pid()] {
        // Its memory holds its join token: nothing of another node may read it.
        for what in ["signal", "ptrace", "memory", "process_vm_readv"] {
            expected.push(format!("{what} {pid}"));
        }
    }
    for attack in &expected {
        let outcome = found
            .iter()
            .find(|(a, _)| a == attack)
            .map(|(_, o)| o.as_str())
            .unwrap_or_else(|| panic!("the attacker did not try `{attack}`: {found:?}"));
        eprintln!("as {}: {attack}: {outcome}", s.who);
        assert!(
            outcome.starts_with("denied"),
            "as {}: `{attack}` was {outcome} (targets: victim {victim}, world {world}, runtime {}); all: {found:#?}",
            s.who,
            h.pid()
        );
    }
    assert!(!outside.exists(), "the attacker wrote outside its profile");
    assert!(
        matches!(bus.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the attacker reached a Unix socket outside its profile"
    );
    assert!(
        matches!(listener.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the attacker reached the test's TCP listener"
    );
    // The shell script, confined like any node.
    let log = |name: &str| {
        std::fs::read_dir(h.log_dir())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(name))
            .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
            .collect::<String>()
    };
    let script_said = h.wait_until("the script reports", PATIENCE, |_| {
        let l = log("world-evil_");
        l.contains("signal: ").then_some(l)
    });
    for what in ["read: denied", "write: denied", "signal: denied"] {
        assert!(script_said.contains(what), "as {}: {script_said}", s.who);
    }
    assert!(
        !script_outside.exists(),
        "the script wrote outside its profile"
    );
    // Its attempts are in its own log.
    assert!(
        log("attack_").contains("attack: read a secret: denied"),
        "{}",
        log("attack_")
    );
    // Everyone else went on: the victim is its first incarnation, still ready; the world ticks;
    // nobody was stopped by a signal.
    let v = h.node("victim");
    assert_eq!((v.state, v.incarnation), (NodeState::Ready, 1));
    keeps_ticking(&h, "world/main");
    assert!(h.crashes(None).is_empty(), "{:?}", h.crashes(None));
}

#[test]
fn a_node_and_a_script_reach_nothing_outside_their_profile() {
    attacks(false);
}

#[test]
fn an_ordinary_users_runtime_confines_its_nodes_as_well() {
    attacks(true);
}

#[test]
fn a_fork_bomb_is_contained_and_the_runtime_still_starts_nodes() {
    fork_bomb(true);
}

/// A root runtime's node is root without capabilities, exempt from `RLIMIT_NPROC`: its pids
/// cgroup contains it instead.
#[test]
fn a_root_runtimes_fork_bomb_is_contained_by_its_pids_cgroup() {
    fork_bomb(false);
}

fn fork_bomb(as_stranger: bool) {
    let s = setup(as_stranger);
    let cgroup = is_root() && s.options.user.is_none();
    let out = open_dir("syncra-bomb-");
    let bomb_out = out.path().join("bomb.jsonl");
    let config = format!(
        "[runtime]\nwatch_interval_ms = 500\n\
         [sandbox]\nwrite = [\"{out}\"]\n\
         [drivers.bomb]\ncommand = \"{peer}\"\nargs = [\"forkbomb\", \"out={bomb}\"]\n\
         sandbox = {{ processes = 64 }}\n\
         [worlds]\ncount = 1\n",
        out = out.path().display(),
        peer = s.peer.display(),
        bomb = bomb_out.display(),
    );
    let h = Harness::start_with(&config, &[], s.options);
    h.wait_ready(&["bomb", "world/main"]);
    let report = h.wait_until("the bomb stops forking", PATIENCE, |_| {
        jsonl(&bomb_out)
            .into_iter()
            .find(|v| v["refused"].is_string())
    });
    let children = report["children"].as_u64().unwrap();
    assert!(
        report["refused"]
            .as_str()
            .unwrap()
            .contains("Resource temporarily unavailable"),
        "{report}"
    );
    let status = h.node("bomb").sandbox.unwrap();
    let limit = if cgroup {
        "processes 64 with their threads (pids cgroup)"
    } else {
        "processes 64 more"
    };
    assert!(
        status.enforced.iter().any(|r| r.contains(limit)),
        "{status:?}"
    );
    if cgroup {
        // The node's own threads count too: fewer than 64 children.
        assert!(children < 64, "{children} children");
    }
    // Its user's other processes (the runtime, the world) are not starved: the world ticks,
    // and a restart of it — a new process — starts at once.
    keeps_ticking(&h, "world/main");
    assert!(h.cli(&["restart", "world/main"]).status.success());
    h.wait_ready_incarnation("world/main", 2);
    // Stopping the bomb stops every process it made: none escaped its process group.
    assert!(h.cli(&["stop", "bomb"]).status.success());
    h.wait_state("bomb", NodeState::Stopped);
    let deadline = Instant::now() + PATIENCE;
    while h.tagged_processes().len() > 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let left = h.tagged_processes();
    assert!(
        left.len() <= 2,
        "{} processes left of the bomb's {children} children: {left:?}",
        left.len()
    );
}

/// A directory named `name` at most `depth` levels below `root`.
fn find_dir(root: &Path, name: &str, depth: usize) -> Option<std::path::PathBuf> {
    let entries = std::fs::read_dir(root).ok()?;
    for entry in entries.flatten() {
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        if entry.file_name() == name {
            return Some(entry.path());
        }
        if depth > 1
            && let Some(found) = find_dir(&entry.path(), name, depth - 1)
        {
            return Some(found);
        }
    }
    None
}

#[test]
fn past_its_memory_limit_a_node_dies_and_its_record_says_so() {
    let out = open_dir("syncra-hog-");
    let config = format!(
        "[runtime]\nwatch_interval_ms = 500\n\
         [sandbox]\nwrite = [\"{out}\"]\n\
         [drivers.hog]\ncommand = \"{peer}\"\nargs = [\"hog\", \"out={out}/hog.jsonl\"]\n\
         restart = \"temporary\"\nsandbox = {{ memory_mb = 256 }}\n\
         [worlds]\ncount = 1\n",
        out = out.path().display(),
        peer = workspace_bin("syncra-test-peer").display(),
    );
    let h = Harness::start(&config, &[]);
    let record = h.wait_until("the hog's crash record", PATIENCE, |_| {
        h.crashes(Some("hog")).into_iter().next()
    });
    assert!(
        record
            .record
            .detail
            .contains("killed: memory limit 256 MiB reached"),
        "{}",
        record.record.detail
    );
    let held: u64 = jsonl(&out.path().join("hog.jsonl"))
        .iter()
        .filter_map(|v| v["held_mb"].as_u64())
        .max()
        .unwrap_or(0);
    assert!(held < 256, "it held {held} MiB under a 256 MiB limit");
    h.wait_ready(&["world/main"]);
    keeps_ticking(&h, "world/main");
}

/// As root in a container whose cgroup file systems are read-only, `processes` cannot be
/// enforced (root is exempt from RLIMIT_NPROC, and there is no pids cgroup to make): strict
/// mode refuses to start the node and says why; the rest runs. As an ordinary user the same
/// limit is RLIMIT_NPROC, and the node starts with everything enforced.
#[test]
fn strict_mode_refuses_to_start_a_node_whose_rules_cannot_all_be_enforced() {
    let out = open_dir("syncra-strict-");
    let config = format!(
        "[runtime]\nwatch_interval_ms = 500\n\
         [sandbox]\nmode = \"strict\"\nwrite = [\"{out}\"]\n\
         [drivers.limited]\ncommand = \"{peer}\"\nargs = [\"echo\", \"out={out}/x.jsonl\"]\n\
         sandbox = {{ processes = 64 }}\n\
         [worlds]\ncount = 1\nsandbox = {{ processes = 0 }}\n",
        out = out.path().display(),
        peer = workspace_bin("syncra-test-peer").display(),
    );
    let options = Options {
        cgroups_read_only: is_root(),
        ..Options::default()
    };
    let h = Harness::start_with(&config, &[], options);
    if is_root() {
        let v = h.wait_state("limited", NodeState::Failed);
        let detail = v.detail.unwrap_or_default();
        assert!(
            detail.contains(
                "sandbox = \"strict\": processes cannot be enforced here: root is exempt from RLIMIT_NPROC, and no pids cgroup"
            ) && detail.contains("Read-only file system"),
            "{detail}"
        );
        // And the rest runs.
        h.wait_ready(&["world/main"]);
    } else {
        let v = h.wait_ready(&["limited"]).remove(0);
        let status = v.sandbox.unwrap();
        assert!(status.not_enforced.is_empty(), "{status:?}");
    }
}

/// As root, strict mode holds everything here, `processes` by the node's pids cgroup.
#[test]
fn strict_mode_as_root_enforces_processes_by_a_pids_cgroup() {
    let out = open_dir("syncra-strict-");
    let config = format!(
        "[runtime]\nwatch_interval_ms = 500\n\
         [sandbox]\nmode = \"strict\"\nwrite = [\"{out}\"]\n\
         [drivers.limited]\ncommand = \"{peer}\"\nargs = [\"echo\", \"out={out}/x.jsonl\"]\n\
         sandbox = {{ processes = 64 }}\n",
        out = out.path().display(),
        peer = workspace_bin("syncra-test-peer").display(),
    );
    let mut h = Harness::start(&config, &[]);
    let v = h.wait_ready(&["limited"]).remove(0);
    let status = v.sandbox.unwrap();
    assert!(status.not_enforced.is_empty(), "{status:?}");
    if is_root() {
        assert!(
            status.enforced.iter().any(|r| r.contains("(pids cgroup)")),
            "{status:?}"
        );
        // The node is in it; a runtime that stops removes it.
        let name = format!("syncra-{}", h.pid());
        let dir = find_dir(Path::new("/sys/fs/cgroup"), &name, 4)
            .unwrap_or_else(|| panic!("no {name} cgroup while the runtime runs"));
        let procs = std::fs::read_to_string(dir.join("limited/cgroup.procs")).unwrap();
        assert!(
            procs.lines().any(|p| p == v.pid.unwrap().to_string()),
            "{procs}"
        );
        h.signal(libc::SIGTERM);
        assert!(h.wait_exit(PATIENCE).success());
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
}

#[test]
fn check_config_prints_each_nodes_effective_profile() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("SyncraConfig.toml");
    std::fs::write(
        &path,
        "[drivers.renderer]\n[drivers.mine]\ncommand = \"/bin/true\"\n\
         [drivers.net]\ncommand = \"/bin/true\"\nsandbox = { network = \"any\", read = [\"data\"] }\n",
    )
    .unwrap();
    #[allow(clippy::disallowed_methods, reason = "the test runs the real CLI")]
    let out = std::process::Command::new(workspace_bin("syncra"))
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let line = |node: &str| -> String {
        text.lines()
            .find(|l| l.starts_with(&format!("# - {node} ")) && l.contains("mode "))
            .unwrap_or_else(|| panic!("no profile line for {node}:\n{text}"))
            .to_owned()
    };
    let renderer = line("renderer");
    assert!(renderer.contains("devices gpu display"), "{renderer}");
    assert!(renderer.contains("network none"), "{renderer}");
    let mine = line("mine");
    assert!(mine.contains("devices none"), "{mine}");
    assert!(mine.contains("write /dev/null "), "{mine}");
    let net = line("net");
    assert!(net.contains("network any"), "{net}");
    assert!(
        net.contains(&dir.path().join("data").display().to_string()),
        "{net}"
    );
    let world = line("world/main");
    assert!(world.contains("memory 2048 MiB"), "{world}");
    assert!(
        text.contains("# Sandboxes (this machine: Landlock ABI"),
        "{text}"
    );
}

#[test]
fn a_loopback_node_talks_to_itself_and_reaches_nothing_else() {
    loopback(false);
}

#[test]
fn an_ordinary_users_loopback_node_too() {
    loopback(true);
}

fn loopback(as_stranger: bool) {
    let s = setup(as_stranger);
    let out = open_dir("syncra-loopback-");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let file = out.path().join("lo.jsonl");
    let config = format!(
        "[sandbox]\nwrite = [\"{out}\"]\n\
         [drivers.lo]\ncommand = \"{peer}\"\nargs = [\"loopback\", \"port={port}\", \"out={file}\"]\n\
         sandbox = {{ network = \"loopback\" }}\n",
        out = out.path().display(),
        peer = s.peer.display(),
        file = file.display(),
    );
    let h = Harness::start_with(&config, &[], s.options);
    let v = h.wait_ready(&["lo"]).remove(0);
    let lines = h.wait_until("both tries", PATIENCE, |_| {
        let l = jsonl(&file);
        (l.len() >= 2).then_some(l)
    });
    assert_eq!(lines[0]["own"]["Ok"], "hi", "{lines:?}");
    assert!(lines[1]["host"]["Err"].is_string(), "{lines:?}");
    assert!(
        matches!(listener.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the loopback node reached the host's listener"
    );
    let status = v.sandbox.unwrap();
    assert!(
        status
            .enforced
            .iter()
            .any(|r| r.starts_with("network: loopback")),
        "as {}: {status:?}",
        s.who
    );
}
