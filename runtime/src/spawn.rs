//! The one spawn path: every OS process the runtime starts (nodes and hooks) is forked here.
//!
//! Spawning happens on one dedicated, long-lived thread (the spawner). That is what makes
//! `PR_SET_PDEATHSIG` reliable: the kernel sends the death signal when the *thread* that
//! forked exits, so forking from a short-lived thread (tokio's blocking pool) would kill
//! children while the runtime lives. In the child, before `exec`:
//!
//! - it becomes the leader of its own process group (so a stop reaches its own children, and a
//!   Ctrl-C at the terminal reaches only the runtime, which then stops everything in order);
//! - it asks for SIGKILL when the runtime dies, and exits at once if the runtime is already gone;
//! - the fds it must inherit are placed at their fixed numbers (fd 3, fd 4, …).
//!
//! **Architecture Invariant:** nothing else in the workspace constructs a process `Command`
//! (clippy's `disallowed-methods` enforces it).

use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use rustix::process::{Pid, Signal};
use tokio::sync::oneshot;

/// What to spawn.
#[derive(Debug)]
pub(crate) struct SpawnSpec {
    /// The executable, already resolved to a path.
    pub(crate) program: PathBuf,
    /// Arguments.
    pub(crate) args: Vec<String>,
    /// Environment added to the runtime's own.
    pub(crate) env: Vec<(String, String)>,
    /// Fds the child inherits, each at the given number.
    pub(crate) fds: Vec<(OwnedFd, RawFd)>,
    /// Capture stdout and stderr through pipes (otherwise they go to /dev/null).
    pub(crate) capture_output: bool,
}

/// A spawned process.
#[derive(Debug)]
pub(crate) struct Spawned {
    /// The child, for waiting.
    pub(crate) child: tokio::process::Child,
    /// Its pid (and process group id).
    pub(crate) pid: u32,
    /// A pidfd, for signalling without pid-reuse races.
    pub(crate) pidfd: Option<OwnedFd>,
}

/// Why a process could not be spawned.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SpawnError {
    /// The executable was not found.
    #[error("executable `{program}` not found{}", if searched.is_empty() { String::new() } else { format!(" (looked in {searched})") })]
    NotFound {
        /// The command as configured.
        program: String,
        /// Where it was looked for.
        searched: String,
    },
    /// The executable exists but cannot be run.
    #[error("`{program}` cannot be executed: {message}")]
    NotExecutable {
        /// The path.
        program: String,
        /// Why.
        message: String,
    },
    /// fork/exec failed.
    #[error("spawning `{program}` failed: {message}")]
    Io {
        /// The path.
        program: String,
        /// The OS error.
        message: String,
    },
    /// The spawner thread is gone (the runtime is exiting).
    #[error("the spawner thread is gone")]
    SpawnerGone,
}

impl SpawnError {
    /// Whether trying again cannot help (the executable is missing or not runnable).
    pub(crate) fn is_permanent(&self) -> bool {
        matches!(self, SpawnError::NotFound { .. } | SpawnError::NotExecutable { .. })
    }
}

struct Job {
    spec: SpawnSpec,
    reply: oneshot::Sender<Result<Spawned, SpawnError>>,
}

/// Handle to the spawner thread.
#[derive(Debug, Clone)]
pub(crate) struct Spawner {
    tx: std::sync::mpsc::Sender<Job>,
}

impl Spawner {
    /// Start the spawner thread, registering children with the tokio runtime of `handle`.
    pub(crate) fn start(handle: tokio::runtime::Handle) -> std::io::Result<Spawner> {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new().name("syncra-spawner".into()).spawn(move || {
            let _enter = handle.enter();
            while let Ok(job) = rx.recv() {
                let _ = job.reply.send(spawn_now(job.spec));
            }
        })?;
        Ok(Spawner { tx })
    }

    /// Spawn `spec` on the spawner thread.
    pub(crate) async fn spawn(&self, spec: SpawnSpec) -> Result<Spawned, SpawnError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Job { spec, reply }).map_err(|_| SpawnError::SpawnerGone)?;
        rx.await.map_err(|_| SpawnError::SpawnerGone)?
    }
}

/// Lowest fd number used for staging inherited fds, above every fixed target number.
const STAGING_FD_MIN: RawFd = 64;

fn spawn_now(spec: SpawnSpec) -> Result<Spawned, SpawnError> {
    let program_name = spec.program.display().to_string();
    let io_err = |e: std::io::Error| SpawnError::Io { program: program_name.clone(), message: e.to_string() };

    // Stage every inherited fd above the target numbers, so that placing one at its target
    // can never overwrite another that has not been placed yet.
    let mut staged: Vec<(OwnedFd, RawFd)> = Vec::with_capacity(spec.fds.len());
    for (fd, target) in &spec.fds {
        let high = rustix::io::fcntl_dupfd_cloexec(fd.as_fd(), STAGING_FD_MIN).map_err(|e| io_err(e.into()))?;
        staged.push((high, *target));
    }
    let moves: Vec<(RawFd, RawFd)> = staged.iter().map(|(fd, target)| (fd.as_raw_fd(), *target)).collect();
    let parent = rustix::process::getpid().as_raw_nonzero().get();

    #[allow(clippy::disallowed_methods, reason = "this is the one spawn path")]
    let mut cmd = tokio::process::Command::new(&spec.program);
    cmd.args(&spec.args)
        .envs(spec.env.iter().map(|(k, v)| (OsString::from(k), OsString::from(v))))
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .process_group(0);
    if spec.capture_output {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    } else {
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
    }
    // SAFETY: the closure runs in the forked child before exec and calls only
    // async-signal-safe functions (prctl, getppid, dup2); it allocates nothing and touches
    // no lock. `moves` was built before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The runtime may have died between fork and prctl: then nobody would kill us.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            for &(src, dst) in &moves {
                // dup2 leaves the new fd without CLOEXEC: exactly the fds listed are inherited.
                if libc::dup2(src, dst) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => SpawnError::NotFound { program: program_name.clone(), searched: String::new() },
        std::io::ErrorKind::PermissionDenied => SpawnError::NotExecutable { program: program_name.clone(), message: e.to_string() },
        _ => io_err(e),
    })?;
    drop(staged);
    let pid = child.id().unwrap_or(0);
    let pidfd = Pid::from_raw(pid as i32).and_then(|p| rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).ok());
    Ok(Spawned { child, pid, pidfd })
}

/// Resolve a configured command to an executable path: a command containing `/` is a path;
/// a bare name is looked for in each of `bin_dirs` (next to `syncra` first), then on `PATH`.
pub(crate) fn resolve_program(command: &str, bin_dirs: &[PathBuf]) -> Result<PathBuf, SpawnError> {
    if command.contains('/') {
        let path = PathBuf::from(command);
        return check_executable(command, &path).map(|()| path);
    }
    let path_dirs: Vec<PathBuf> = std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    for dir in bin_dirs.iter().chain(&path_dirs) {
        let candidate = dir.join(command);
        if candidate.is_file() {
            return check_executable(command, &candidate).map(|()| candidate);
        }
    }
    let mut searched: Vec<String> = bin_dirs.iter().map(|d| d.display().to_string()).collect();
    searched.push("$PATH".into());
    Err(SpawnError::NotFound { program: command.to_owned(), searched: searched.join(", ") })
}

fn check_executable(command: &str, path: &Path) -> Result<(), SpawnError> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => Ok(()),
        Ok(m) if m.is_file() => {
            Err(SpawnError::NotExecutable { program: path.display().to_string(), message: "it is not marked executable".into() })
        }
        Ok(_) => Err(SpawnError::NotExecutable { program: path.display().to_string(), message: "it is not a file".into() }),
        Err(_) => Err(SpawnError::NotFound { program: command.to_owned(), searched: String::new() }),
    }
}

/// Send `sig` to a process through its pidfd (immune to pid reuse), falling back to its pid.
pub(crate) fn signal(pidfd: Option<&OwnedFd>, pid: u32, sig: Signal) {
    let sent = pidfd.map(|fd| rustix::process::pidfd_send_signal(fd, sig));
    if !matches!(sent, Some(Ok(()))) {
        if let Some(p) = Pid::from_raw(pid as i32) {
            let _ = rustix::process::kill_process(p, sig);
        }
    }
}

/// Send `sig` to the whole process group led by `pid` (the node and anything it started).
pub(crate) fn signal_group(pid: u32, sig: Signal) {
    if let Some(p) = Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process_group(p, sig);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_names_are_found_on_path_and_missing_ones_named() {
        let sh = resolve_program("sh", &[]).unwrap();
        assert!(sh.ends_with("sh"), "{sh:?}");
        let err = resolve_program("syncra-no-such-driver", &[PathBuf::from("/opt/x")]).unwrap_err();
        assert_eq!(err.to_string(), "executable `syncra-no-such-driver` not found (looked in /opt/x, $PATH)");
        assert!(err.is_permanent());
    }

    #[test]
    fn paths_must_be_executable_files() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("plain");
        std::fs::write(&f, "x").unwrap();
        let err = resolve_program(f.to_str().unwrap(), &[]).unwrap_err();
        assert!(err.to_string().contains("not marked executable"), "{err}");
        let err = resolve_program(dir.path().to_str().unwrap(), &[]).unwrap_err();
        assert!(err.to_string().contains("not a file"), "{err}");
    }
}
