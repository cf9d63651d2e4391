//! The harness for end-to-end tests and benchmarks: runs the real `syncra` binary with a
//! config in a private temporary directory, and watches it through its control socket.
//!
//! Tests wait for conditions with [`Harness::wait_until`] (a deadline, never a bare sleep)
//! and find every process a runtime started by a tag in their environment, so "no process
//! left" is checked for real.

#![allow(
    clippy::disallowed_methods,
    reason = "the harness starts the real `syncra` binary, as a user would"
)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use syncra_protocol::control::{ControlReply, ControlRequest, CrashEntry};
use syncra_protocol::status::{NodeView, StatusReport};
use syncra_runtime::ControlClient;

pub mod chaos;
pub mod hosts;
pub mod web;

/// Helpers for configs of `syncra-test-peer` nodes, which report as JSON lines.
pub mod peers {
    use std::path::Path;

    /// The `args` array (inside its brackets) of a peer in role `role`, reporting to
    /// `<dir>/<name>.jsonl`, with `key=value` options.
    pub fn args(dir: &Path, name: &str, role: &str, opts: &[&str]) -> String {
        let mut a = vec![
            format!("\"{role}\""),
            format!("\"out={}\"", dir.join(format!("{name}.jsonl")).display()),
        ];
        a.extend(opts.iter().map(|o| format!("\"{o}\"")));
        a.join(", ")
    }

    /// A `[drivers.<name>]` running `syncra-test-peer` in `role` (reporting to
    /// `<dir>/<name>.jsonl`), on `host` (a `[hosts.<name>]`) when given.
    pub fn driver(dir: &Path, name: &str, role: &str, opts: &[&str], host: Option<&str>) -> String {
        let host = host
            .map(|h| format!("host = \"{h}\"\n"))
            .unwrap_or_default();
        format!(
            "{}{host}",
            driver_running(
                &crate::workspace_bin("syncra-test-peer")
                    .display()
                    .to_string(),
                dir,
                name,
                role,
                opts
            )
        )
    }

    /// [`driver`] (here) running the executable at `command`: a copy of the peer, another
    /// "version" of it ([`copy`]).
    pub fn driver_running(
        command: &str,
        dir: &Path,
        name: &str,
        role: &str,
        opts: &[&str],
    ) -> String {
        format!(
            "[drivers.{name}]\ncommand = \"{command}\"\nargs = [{}]\n",
            args(dir, name, role, opts)
        )
    }

    /// A copy of the peer's executable at `<dir>/<name>`: another "version" of a driver, for a
    /// live swap; its path.
    pub fn copy(dir: &Path, name: &str) -> String {
        let path = dir.join(name);
        crate::copy_executable(&crate::workspace_bin("syncra-test-peer"), &path);
        path.display().to_string()
    }

    /// What the peer `name` reported so far.
    pub fn lines(dir: &Path, name: &str) -> Vec<serde_json::Value> {
        std::fs::read_to_string(dir.join(format!("{name}.jsonl")))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}
pub mod picture;

/// The JSON lines of the file at `path` (a helper node's log): those that parse.
pub fn jsonl(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// How long a test waits for something that should happen at once (generous: CI is slow).
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Path of a workspace binary (`syncra`, `syncra-world`), next to the test executable's
/// target directory. `cargo test --workspace` builds them.
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("exe dir").to_owned();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is not built: run the tests with `cargo test --workspace` (or `cargo build --workspace --bins` first)",
        path.display()
    );
    path
}

/// The simulated OpenXR headset's library (`integration-tests/simxr`), as built for this test
/// run: `cargo test` refreshes the copy in `deps/` and not always the one beside the
/// binaries, so the newer of the two.
pub fn simxr_library() -> PathBuf {
    let dir = workspace_bin("syncra")
        .parent()
        .expect("bin dir")
        .to_owned();
    let name = "libsyncra_simxr.so";
    [dir.join("deps").join(name), dir.join(name)]
        .into_iter()
        .filter_map(|p| {
            let modified = std::fs::metadata(&p).and_then(|m| m.modified()).ok()?;
            Some((modified, p))
        })
        .max()
        .map(|(_, p)| p)
        .unwrap_or_else(|| {
            panic!(
                "{name} is not built: run the tests with `cargo test --workspace` (or `cargo build -p syncra-simxr` first)"
            )
        })
}

/// How [`Harness::start_with`] starts the runtime.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The runtime's fd limit (`RLIMIT_NOFILE`, soft and hard, as `ulimit -n` sets it).
    pub nofile: Option<u64>,
    /// Extra environment for the runtime (and so for every node).
    pub env: Vec<(String, String)>,
    /// Run the runtime as this user (the test must be root): from a copy of its binaries
    /// ([`Staged`]), with the test's directory given to that user.
    pub user: Option<(u32, Staged)>,
    /// Run the runtime (root only) in a mount namespace of its own where the cgroup file
    /// systems are read-only, as in a container (Docker mounts them so by default).
    pub cgroups_read_only: bool,
    /// Run the runtime in the network namespace of this process: a host of
    /// [`hosts::Hosts`] ([`hosts::Hosts::netns`]).
    pub netns: Option<u32>,
}

/// Copies of the workspace's binaries in a directory every user can read, so that a runtime
/// can run as another user wherever the checkout lies.
#[derive(Debug, Clone)]
pub struct Staged {
    dir: std::sync::Arc<tempfile::TempDir>,
}

impl Staged {
    /// Copy `names` (and `syncra`, `syncra-world`).
    pub fn copy(names: &[&str]) -> Staged {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::Builder::new()
            .prefix("syncra-staged-")
            .tempdir()
            .expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        for name in ["syncra", "syncra-world"].iter().chain(names) {
            copy_executable(&workspace_bin(name), &dir.path().join(name));
        }
        Staged {
            dir: std::sync::Arc::new(dir),
        }
    }

    /// The copy of `name`.
    pub fn bin(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// Copy an executable by `cp`, not by this process: a file this multi-threaded test process
/// had open for writing would be inherited by any child another test forks meanwhile, and
/// exec'ing the copy would fail with ETXTBSY.
pub fn copy_executable(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg(from)
        .arg(to)
        .status()
        .expect("run cp");
    assert!(status.success(), "cp {} {}", from.display(), to.display());
}

/// Give `path` and everything under it to `uid`.
fn chown_all(path: &Path, uid: u32) {
    let _ = std::os::unix::fs::chown(path, Some(uid), Some(uid));
    if path.is_dir() {
        for entry in std::fs::read_dir(path).into_iter().flatten().flatten() {
            chown_all(&entry.path(), uid);
        }
    }
}

/// A runtime under test.
#[derive(Debug)]
pub struct Harness {
    /// The private directory (config, run dir, logs, hook output).
    pub dir: tempfile::TempDir,
    /// The runtime process.
    child: Option<Child>,
    /// Tag in the environment of every process of this runtime.
    pub tag: String,
    tokio: tokio::runtime::Runtime,
    /// The copies of the binaries it runs from, when it runs as another user.
    _staged: Option<Staged>,
}

/// `config` with what the tests' helper nodes need from their sandbox: they write their
/// reports into temporary directories, and shell commands exec the helper binaries (a test
/// about the sandbox writes its own `[sandbox]`).
fn with_test_grants(config: &str) -> String {
    if config.contains("[sandbox]") || config.contains("\nsandbox =") {
        return config.to_owned();
    }
    let bin_dir = workspace_bin("syncra");
    format!(
        "{config}\n[sandbox]\nwrite = [{:?}]\nread = [{:?}]\n",
        std::env::temp_dir().display().to_string(),
        bin_dir.parent().unwrap().display().to_string()
    )
}

/// A runtime's stderr file.
fn output_path(dir: &Path) -> PathBuf {
    dir.join("runtime.out")
}

impl Harness {
    /// Write `config` and start `syncra run` on it (plus `extra` arguments).
    pub fn start(config: &str, extra: &[&str]) -> Harness {
        Self::start_with(config, extra, Options::default())
    }

    /// [`Harness::start`] with [`Options`].
    pub fn start_with(config: &str, extra: &[&str], options: Options) -> Harness {
        let nofile = options.nofile;
        let dir = tempfile::Builder::new()
            .prefix("syncra-test-")
            .tempdir()
            .expect("tempdir");
        let config_path = dir.path().join("SyncraConfig.toml");
        std::fs::write(&config_path, with_test_grants(config)).expect("write config");
        let tag = format!(
            "{}-{}",
            std::process::id(),
            dir.path().file_name().unwrap().to_string_lossy()
        );
        let out = std::fs::File::create(output_path(dir.path())).expect("output file");
        let mut cmd = match &options.user {
            None if options.netns.is_some() => {
                let mut cmd = Command::new("nsenter");
                cmd.args(["-t", &options.netns.unwrap_or(0).to_string(), "-n"])
                    .arg(workspace_bin("syncra"));
                cmd
            }
            None => Command::new(workspace_bin("syncra")),
            Some((uid, staged)) => {
                use std::os::unix::process::CommandExt;
                assert!(is_root(), "only root can run the runtime as another user");
                chown_all(dir.path(), *uid);
                let mut cmd = Command::new(staged.bin("syncra"));
                cmd.uid(*uid)
                    .gid(*uid)
                    .env("HOME", dir.path())
                    .env_remove("XDG_RUNTIME_DIR");
                cmd
            }
        };
        if let Some(n) = nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    let limit = rustix::process::Rlimit {
                        current: Some(n),
                        maximum: Some(n),
                    };
                    rustix::process::setrlimit(rustix::process::Resource::Nofile, limit)?;
                    Ok(())
                });
            }
        }
        if options.cgroups_read_only {
            use std::os::unix::process::CommandExt;
            assert!(is_root(), "only root can make a mount namespace here");
            // SAFETY: unshare and mount are system calls; nothing else runs between fork and
            // exec, and the strings are NUL-terminated literals.
            unsafe {
                cmd.pre_exec(|| {
                    let ok = |r: libc::c_int| {
                        if r == 0 {
                            Ok(())
                        } else {
                            Err(std::io::Error::last_os_error())
                        }
                    };
                    ok(libc::unshare(libc::CLONE_NEWNS))?;
                    ok(libc::mount(
                        std::ptr::null(),
                        c"/".as_ptr(),
                        std::ptr::null(),
                        libc::MS_REC | libc::MS_PRIVATE,
                        std::ptr::null(),
                    ))?;
                    ok(libc::mount(
                        c"/sys/fs/cgroup".as_ptr(),
                        c"/sys/fs/cgroup".as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND | libc::MS_REC,
                        std::ptr::null(),
                    ))?;
                    ok(libc::mount(
                        std::ptr::null(),
                        c"/sys/fs/cgroup/pids".as_ptr(),
                        std::ptr::null(),
                        libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY,
                        std::ptr::null(),
                    ))
                });
            }
        }
        let child = cmd
            .arg("run")
            .arg("--config")
            .arg(&config_path)
            .arg("--run-dir")
            .arg(dir.path().join("run"))
            .arg("--log-dir")
            .arg(dir.path().join("logs"))
            .args(extra)
            .envs(options.env.iter().map(|(k, v)| (k, v)))
            .env("SYNCRA_TEST_TAG", &tag)
            .env("SYNCRA_TEST_DIR", dir.path())
            .env_remove("SYNCRA_RUN_DIR")
            .env_remove("SYNCRA_LOG_DIR")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup"))
            .stderr(out)
            .spawn()
            .expect("spawn syncra");
        let tokio = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio");
        Harness {
            dir,
            child: Some(child),
            tag,
            tokio,
            _staged: options.user.map(|(_, staged)| staged),
        }
    }

    /// Replace the config file the runtime was started with (for a reload), with the same
    /// grants for the helper nodes as at start.
    pub fn write_config(&self, config: &str) {
        std::fs::write(
            self.dir.path().join("SyncraConfig.toml"),
            with_test_grants(config),
        )
        .expect("write config");
    }

    /// The run directory.
    pub fn run_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    /// The log directory.
    pub fn log_dir(&self) -> PathBuf {
        self.dir.path().join("logs")
    }

    /// The runtime's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("runtime").id()
    }

    /// What the runtime printed so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(output_path(self.dir.path())).unwrap_or_default()
    }

    /// Ask the control socket; `None` while the runtime is not (yet) serving.
    pub fn try_request(&self, req: ControlRequest) -> Option<ControlReply> {
        self.tokio.block_on(async {
            let client = ControlClient::connect(&self.run_dir()).await.ok()?;
            tokio::time::timeout(Duration::from_secs(30), client.request(req))
                .await
                .ok()?
                .ok()
        })
    }

    /// The web dashboard's address and token, once it serves (`[dashboard] enabled = true`).
    pub fn dashboard(&self) -> (std::net::SocketAddr, String) {
        let url = self.wait_until("the dashboard serves", PATIENCE, |s| {
            s.runtime.dashboard.clone()
        });
        let addr = url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .unwrap_or_else(|e| panic!("dashboard address {url}: {e}"));
        let token = syncra_runtime::dashboard::read_token(&self.run_dir()).expect("token file");
        (addr, token)
    }

    /// The current status, if the runtime answers.
    pub fn try_status(&self) -> Option<StatusReport> {
        match self.try_request(ControlRequest::Status)? {
            ControlReply::Status(s) => Some(s),
            _ => None,
        }
    }

    /// Wait until `f` returns `Some` for a status, polling; panic after `timeout` with the last
    /// status and the runtime's output.
    pub fn wait_until<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut(&StatusReport) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        let mut last = None;
        loop {
            if let Some(s) = self.try_status() {
                if let Some(v) = f(&s) {
                    return v;
                }
                last = Some(s);
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out after {timeout:?} waiting until {what}\nlast status: {}\nruntime output:\n{}\nlatest crash records:\n{}",
                    last.map(|s| serde_json::to_string_pretty(&s).unwrap())
                        .unwrap_or_else(|| "none".into()),
                    self.output(),
                    self.recent_crashes(5)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The newest `n` crash records in brief (node, detail, the child's last stderr lines),
    /// for failure messages.
    fn recent_crashes(&self, n: usize) -> String {
        let Some(ControlReply::Crashes(list)) = self.try_request(ControlRequest::Crashes {
            node: None,
            limit: n,
        }) else {
            return "unavailable".into();
        };
        list.iter()
            .map(|c| {
                let tail: Vec<&String> = c.record.stderr_tail.iter().rev().take(8).rev().collect();
                format!(
                    "{}#{} {}: {}\n    stderr: {tail:?}",
                    c.record.node, c.record.incarnation, c.record.reason, c.record.detail
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// `syncra tap STREAM --count 1 --json`, parsed: the stream's newest message and what tap
    /// says of it; `None` if tap failed or the stream has nothing yet.
    pub fn tap(&self, stream: &str) -> Option<serde_json::Value> {
        let out = self.cli(&[
            "tap",
            stream,
            "--count",
            "1",
            "--interval-ms",
            "50",
            "--json",
        ]);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .ok()
            .filter(|v| !v["value"].is_null())
    }

    /// The position of world `world`'s player in its newest scene (`syncra tap`), if it has
    /// one.
    pub fn player(&self, world: &str) -> Option<[f64; 3]> {
        let t = self.tap(&format!("world/{world}/scene"))?;
        let id = t["value"]["player"].as_u64()?;
        let e = t["value"]["entities"]
            .as_array()?
            .iter()
            .find(|e| e["id"].as_u64() == Some(id))?
            .clone();
        let p = e["position"].as_array()?;
        Some([p[0].as_f64()?, p[1].as_f64()?, p[2].as_f64()?])
    }

    /// Wait until every node in `names` is ready; their views.
    pub fn wait_ready(&self, names: &[&str]) -> Vec<NodeView> {
        self.wait_until(&format!("{names:?} are ready"), PATIENCE, |s| {
            let views: Vec<NodeView> = names.iter().filter_map(|n| s.node(n).cloned()).collect();
            (views.len() == names.len()
                && views
                    .iter()
                    .all(|v| v.state == syncra_protocol::NodeState::Ready))
            .then_some(views)
        })
    }

    /// Wait until the node called `name` is in `state`; its view.
    pub fn wait_state(&self, name: &str, state: syncra_protocol::NodeState) -> NodeView {
        self.wait_until(&format!("{name} is {state}"), PATIENCE, |s| {
            s.node(name).filter(|n| n.state == state).cloned()
        })
    }

    /// Wait until incarnation `incarnation` of the node called `name` is ready; its view.
    pub fn wait_ready_incarnation(&self, name: &str, incarnation: u64) -> NodeView {
        self.wait_until(&format!("{name}#{incarnation} is ready"), PATIENCE, |s| {
            s.node(name)
                .filter(|n| {
                    n.state == syncra_protocol::NodeState::Ready && n.incarnation == incarnation
                })
                .cloned()
        })
    }

    /// The node called `name` now.
    pub fn node(&self, name: &str) -> NodeView {
        self.wait_until(&format!("{name} is listed"), PATIENCE, |s| {
            s.node(name).cloned()
        })
    }

    /// This session's crash records.
    pub fn crashes(&self, node: Option<&str>) -> Vec<CrashEntry> {
        match self.try_request(ControlRequest::Crashes {
            node: node.map(str::to_owned),
            limit: 1000,
        }) {
            Some(ControlReply::Crashes(c)) => c,
            other => panic!("crashes: {other:?}"),
        }
    }

    /// Run the `syncra` CLI against this runtime.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(workspace_bin("syncra"))
            .args(args)
            .env("SYNCRA_RUN_DIR", self.run_dir())
            .output()
            .expect("run syncra cli")
    }

    /// Send `sig` to the runtime process.
    pub fn signal(&self, sig: i32) {
        send(self.pid(), sig);
    }

    /// Wait for the runtime to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("runtime");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the runtime did not exit within {timeout:?}\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Pids of live processes started under this runtime (their environment carries the tag),
    /// the runtime itself excluded. Zombies are not counted: they are already dead.
    pub fn tagged_processes(&self) -> Vec<u32> {
        let needle = format!("SYNCRA_TEST_TAG={}", self.tag);
        let me = self.child.as_ref().map(|c| c.id());
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if Some(pid) == me {
                continue;
            }
            let Ok(env) = std::fs::read(entry.path().join("environ")) else {
                continue;
            };
            if !env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()) {
                continue;
            }
            let state = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            let zombie = state
                .rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('Z'));
            if !zombie {
                found.push(pid);
            }
        }
        found
    }

    /// Wait until no process of this runtime is left; panic with the survivors otherwise.
    pub fn wait_no_processes_left(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = self.tagged_processes();
            if left.is_empty() {
                return;
            }
            if Instant::now() > deadline {
                let names: Vec<String> = left
                    .iter()
                    .map(|p| {
                        format!(
                            "{p} {}",
                            std::fs::read_to_string(format!("/proc/{p}/cmdline"))
                                .unwrap_or_default()
                                .replace('\0', " ")
                        )
                    })
                    .collect();
                panic!("processes outlived the runtime: {names:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for pid in self.tagged_processes() {
            send(pid, libc::SIGKILL);
        }
    }
}

/// Send `sig` to `pid`.
pub fn send(pid: u32, sig: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

/// Open fds of process `pid` (0 if it cannot be read).
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The TCP ports process `pid` listens on (IPv4 and IPv6).
pub fn listening_ports(pid: u32) -> Vec<u16> {
    let inodes: Vec<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let target = std::fs::read_link(e.path()).ok()?;
            target
                .to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect();
    let mut ports = Vec::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) = (f.get(1), f.get(3), f.get(9)) else {
                continue;
            };
            if *state == "0A"
                && inode.parse().is_ok_and(|i: u64| inodes.contains(&i))
                && let Some(port) = local
                    .rsplit(':')
                    .next()
                    .and_then(|p| u16::from_str_radix(p, 16).ok())
            {
                ports.push(port);
            }
        }
    }
    ports
}

/// Whether this test runs as root (and can run a helper as another user).
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// The unprivileged user a stranger's helper runs as (`nobody`).
pub const STRANGER_UID: u32 = 65534;

/// `syncra-test-intruder`, a hostile local process ([`Intruder`]).
#[derive(Debug)]
pub struct Intruder {
    child: Child,
    /// The line it printed once its connections were made.
    pub report: String,
    _copy: Option<tempfile::TempDir>,
}

impl Intruder {
    /// Run `syncra-test-intruder ARGS` and wait for its report line; it holds its connections
    /// until dropped. As root and with `stranger`, it runs as [`STRANGER_UID`] (from a copy in
    /// a directory that user can read); otherwise as this user, which the caller is told.
    pub fn start(args: &[String], stranger: bool) -> Intruder {
        use std::io::BufRead;
        let mut copy = None;
        let mut cmd = if stranger && is_root() {
            use std::os::unix::fs::PermissionsExt;
            use std::os::unix::process::CommandExt;
            let dir = tempfile::Builder::new()
                .prefix("syncra-intruder-")
                .tempdir()
                .expect("tempdir");
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
                .expect("chmod");
            let exe = dir.path().join("syncra-test-intruder");
            copy_executable(&workspace_bin("syncra-test-intruder"), &exe);
            let mut cmd = Command::new(&exe);
            cmd.uid(STRANGER_UID).gid(STRANGER_UID);
            copy = Some(dir);
            cmd
        } else {
            if stranger {
                eprintln!("note: not root, so the intruder runs as this user, not as another one");
            }
            Command::new(workspace_bin("syncra-test-intruder"))
        };
        let mut child = cmd
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn syncra-test-intruder");
        let mut report = String::new();
        let out = child.stdout.take().expect("stdout");
        let _ = std::io::BufReader::new(out).read_line(&mut report);
        Intruder {
            child,
            report: report.trim().to_owned(),
            _copy: copy,
        }
    }

    /// The number after `key=` in the report.
    pub fn count(&self, key: &str) -> usize {
        self.report
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {key}= in the intruder's report {:?}", self.report))
    }
}

impl Drop for Intruder {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Path of a helper node binary of this package.
pub fn helper(name: &str) -> PathBuf {
    workspace_bin(name)
}

/// Flags set by signals, for the helper nodes ("crash on command").
pub mod signals {
    use super::*;

    static FLAGS: [AtomicBool; 65] = [const { AtomicBool::new(false) }; 65];

    extern "C" fn on_signal(sig: libc::c_int) {
        if let Some(f) = FLAGS.get(sig as usize) {
            f.store(true, Ordering::SeqCst);
        }
    }

    /// Install a handler for `sig` and return the flag it sets.
    pub fn flag(sig: i32) -> &'static AtomicBool {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(sig, on_signal as *const () as libc::sighandler_t);
        }
        &FLAGS[sig as usize]
    }
}

/// Percentile `p` (0–100) of `v` (sorted in place), or NaN when empty.
pub fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((p / 100.0) * (v.len() - 1) as f64).round() as usize]
}
