//! The one spawn path: every OS process the runtime starts (nodes and hooks) is created here.
//!
//! A child is created the way `posix_spawn` creates one — `clone(CLONE_VM | CLONE_VFORK)`,
//! sharing the runtime's memory until it execs — so spawning costs the same whether the
//! runtime (or the application embedding it) uses 10 MB or 10 GB. `fork` would copy the page
//! tables of the whole process first: measured here, 0.3 ms at 10 MB and 1.7 ms at 100 MB,
//! against 0.05 ms. Unlike `posix_spawn`, the child does what a supervised node needs before
//! `exec`:
//!
//! - asks for SIGKILL when the runtime dies (`PR_SET_PDEATHSIG`), and exits at once if the
//!   runtime is already gone;
//! - becomes the leader of its own process group (so a stop reaches its own children, and a
//!   Ctrl-C at the terminal reaches only the runtime, which then stops everything in order);
//! - gets its inherited fds at their fixed numbers (stdio, fd 3, fd 4, …) and nothing else.
//!
//! All of it happens on one dedicated, long-lived thread (the spawner). The kernel sends the
//! death signal when the *thread* that created the child exits, so a short-lived thread (tokio's
//! blocking pool) would kill children while the runtime lives. The spawner thread keeps every
//! signal blocked, so no signal handler of the runtime can run in a child that still shares
//! its memory; the child resets handlers and its mask just before `exec`.
//!
//! A child is waited for through its pidfd ([`Process::wait`]), which wakes the moment it dies.
//!
//! **Architecture Invariant:** nothing else in the workspace creates a process (clippy's
//! `disallowed-methods` bans `Command::new`).

use std::borrow::Cow;
use std::ffi::{CString, c_char, c_int, c_void};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::process::{Pid, Signal, WaitId, WaitIdOptions};
use tokio::io::unix::AsyncFd;
use tokio::net::unix::pipe;
use tokio::sync::oneshot;

/// What to spawn.
#[derive(Debug)]
pub(crate) struct SpawnSpec {
    /// The executable, already resolved to a path.
    pub(crate) program: PathBuf,
    /// Arguments (after argv[0], which is the program path).
    pub(crate) args: Vec<String>,
    /// Environment added to the runtime's own.
    pub(crate) env: Vec<(String, String)>,
    /// Fds the child inherits, each at the given number (3 and up).
    pub(crate) fds: Vec<(OwnedFd, RawFd)>,
    /// Capture stdout and stderr through pipes (otherwise they go to /dev/null).
    pub(crate) capture_output: bool,
    /// The node's sandbox, applied before exec (none for hooks).
    pub(crate) sandbox: Option<SandboxRequest>,
}

/// The sandbox a node is spawned in.
#[derive(Debug, Clone)]
pub(crate) struct SandboxRequest {
    /// The node, for messages.
    pub(crate) node: String,
    /// Its profile, as planned.
    pub(crate) profile: syncra_config::sandbox::SandboxProfile,
    /// Its private directory (created at spawn; its `TMPDIR`).
    pub(crate) node_dir: Option<PathBuf>,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
    /// It exited with this code.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
}

/// A child process, owned: waiting for it reaps it, and dropping it unwaited (or cancelling the
/// wait) kills and reaps it. Either way, when the process ends, whatever is left of its process
/// group (the node's own children) is killed too, so nothing it started outlives it.
#[derive(Debug)]
pub(crate) struct Process {
    pid: u32,
    pidfd: Option<OwnedFd>,
}

fn exit_of(status: &rustix::process::WaitIdStatus) -> Exit {
    match (status.exit_status(), status.terminating_signal()) {
        (_, Some(sig)) => Exit::Signal(sig),
        (Some(code), None) => Exit::Code(code),
        (None, None) => Exit::Code(-1),
    }
}

/// The process behind `pidfd` has ended (it is a zombie, which keeps its pid and process
/// group id reserved): kill what is left of its group, then reap it.
fn bury(pid: u32, pidfd: &OwnedFd) -> std::io::Result<Exit> {
    if let Some(p) = Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process_group(p, Signal::KILL);
    }
    match rustix::process::waitid(WaitId::PidFd(pidfd.as_fd()), WaitIdOptions::EXITED) {
        Ok(Some(status)) => Ok(exit_of(&status)),
        Ok(None) => Ok(Exit::Code(-1)),
        Err(e) => Err(e.into()),
    }
}

impl Process {
    /// Its pid.
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// Wait until the process ends, kill the rest of its group, and reap it.
    pub(crate) async fn wait(mut self) -> std::io::Result<Exit> {
        let pidfd = self
            .pidfd
            .as_ref()
            .ok_or_else(|| std::io::Error::other("already waited for"))?;
        // The AsyncFd owns a duplicate: if this future is dropped, `self` still holds the
        // original, and its Drop kills and reaps.
        let watched = pidfd.try_clone()?;
        // SAFETY: the OwnedFd stays open and unchanged while the AsyncFd owns it.
        let fd = unsafe { AsyncFd::register_with_interest(watched, tokio::io::Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        loop {
            let mut ready = fd.readable().await?;
            // Peek without reaping, so that the pid and group id stay reserved meanwhile.
            let peek = WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT;
            match rustix::process::waitid(WaitId::PidFd(pidfd.as_fd()), peek) {
                Ok(Some(_)) => {
                    let exit = bury(self.pid, pidfd);
                    self.pidfd = None;
                    return exit;
                }
                Ok(None) => ready.clear_ready(),
                Err(e) => {
                    // Someone else reaped it (an embedding host ignoring SIGCHLD, or reaping
                    // every child): its pid may already be reused, so kill nothing.
                    self.pidfd = None;
                    return Err(e.into());
                }
            }
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(pidfd) = self.pidfd.take() {
            let _ = rustix::process::pidfd_send_signal(&pidfd, Signal::KILL);
            let pid = self.pid;
            // SIGKILL takes effect promptly, but waiting for it is still blocking: reap on a
            // short-lived thread rather than on an async worker.
            let reap = move |options: WaitIdOptions| {
                // Bury only a confirmed zombie of ours: then its pid and group id are still
                // reserved, and the group kill cannot reach anyone else.
                let peek = WaitIdOptions::EXITED | WaitIdOptions::NOWAIT | options;
                if matches!(
                    rustix::process::waitid(WaitId::PidFd(pidfd.as_fd()), peek),
                    Ok(Some(_))
                ) {
                    let _ = bury(pid, &pidfd);
                }
            };
            let spawned = std::thread::Builder::new()
                .name("syncra-reaper".into())
                .spawn(move || reap(WaitIdOptions::empty()));
            if let Err(e) = spawned {
                tracing::warn!(pid, error = %e, "no thread to reap a killed child; it may stay a zombie");
            }
        }
    }
}

/// A spawned process and its output pipes.
#[derive(Debug)]
pub(crate) struct Spawned {
    /// Its pid (and process group id).
    pub(crate) pid: u32,
    /// The process, for waiting.
    pub(crate) process: Process,
    /// A second pidfd, for signalling it without pid-reuse races.
    pub(crate) signal_fd: OwnedFd,
    /// Its stdout, when captured.
    pub(crate) stdout: Option<pipe::Receiver>,
    /// Its stderr, when captured.
    pub(crate) stderr: Option<pipe::Receiver>,
    /// What its sandbox enforces, when it has one.
    pub(crate) sandbox: Option<syncra_protocol::status::SandboxStatus>,
}

/// Why a process could not be spawned.
#[derive(Debug, thiserror::Error)]
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
    /// Creating the process failed.
    #[error("spawning `{program}` failed: {step}: {source}")]
    Io {
        /// The path.
        program: String,
        /// What was being done: `creating the stdout pipe`, `exec`.
        step: Cow<'static, str>,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The spawner thread is gone (the runtime is exiting).
    #[error("the spawner thread is gone")]
    SpawnerGone,
    /// `sandbox = "strict"` and a rule cannot be enforced on this machine.
    #[error(transparent)]
    Sandbox(#[from] crate::sandbox::Unenforceable),
    /// The node's host (`[hosts.<name>]`) could not start it.
    #[error("on host {host}: {message}")]
    Remote {
        /// The host's name in config.
        host: String,
        /// What went wrong, in words.
        message: String,
        /// What kind of failure it is.
        failure: RemoteFailure,
    },
}

/// What kind of failure a remote spawn met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteFailure {
    /// The host's agent cannot be reached now: wait for it.
    Unreachable,
    /// One side does not trust the other (a certificate not pinned), or they speak other
    /// protocols: retrying cannot help.
    Refused,
    /// The agent says retrying cannot help (the executable is missing there).
    Permanent,
    /// The host is out of a resource.
    Shortage,
    /// The spawn request went out and then the link failed: the node may have started
    /// there. It is treated as lost: the next incarnation starts no earlier than
    /// `replace_after`, when the agent has fenced whatever did start.
    InDoubt {
        /// The earliest a replacement may start.
        replace_after: std::time::Instant,
    },
    /// Anything else.
    Other,
}

impl SpawnError {
    /// Whether trying again cannot help (the executable is missing or not runnable).
    pub(crate) fn is_permanent(&self) -> bool {
        matches!(
            self,
            SpawnError::NotFound { .. }
                | SpawnError::NotExecutable { .. }
                | SpawnError::Sandbox(_)
                | SpawnError::Remote {
                    failure: RemoteFailure::Refused | RemoteFailure::Permanent,
                    ..
                }
        )
    }

    /// When the node may have started on its host although the spawn failed: the earliest
    /// its replacement may start.
    pub fn in_doubt(&self) -> Option<std::time::Instant> {
        match self {
            SpawnError::Remote {
                failure: RemoteFailure::InDoubt { replace_after },
                ..
            } => Some(*replace_after),
            _ => None,
        }
    }

    /// The host whose agent cannot be reached now, and why, when that is why the spawn
    /// failed: it waits for the host.
    pub fn unreachable_host(&self) -> Option<(&str, &str)> {
        match self {
            SpawnError::Remote {
                host,
                message,
                failure: RemoteFailure::Unreachable,
            } => Some((host, message)),
            _ => None,
        }
    }

    /// Whether the machine (or this process) is out of a resource — file descriptors,
    /// memory, processes: a condition of the machine, not a fault of the node, that waiting
    /// can cure.
    pub fn is_resource_shortage(&self) -> bool {
        matches!(
            self,
            SpawnError::Remote {
                failure: RemoteFailure::Shortage,
                ..
            }
        ) || matches!(
            self.errno(),
            Some(libc::EMFILE | libc::ENFILE | libc::EAGAIN | libc::ENOMEM)
        )
    }

    /// The errno of an OS error, if the failure was one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            SpawnError::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    /// An OS error at `step` of spawning `program`.
    pub(crate) fn io(
        program: impl Into<String>,
        step: impl Into<Cow<'static, str>>,
        source: std::io::Error,
    ) -> SpawnError {
        SpawnError::Io {
            program: program.into(),
            step: step.into(),
            source,
        }
    }
}

enum Job {
    Spawn {
        spec: Box<SpawnSpec>,
        reply: oneshot::Sender<Result<Spawned, SpawnError>>,
    },
    /// Let go of every node's prepared sandbox (their pids cgroups go with them): the
    /// runtime is stopping and its nodes have stopped.
    Release { reply: oneshot::Sender<()> },
}

/// Handle to the spawner thread.
#[derive(Debug, Clone)]
pub(crate) struct Spawner {
    tx: std::sync::mpsc::Sender<Job>,
}

/// Stack of the child between clone and exec; it runs a few system calls only.
const CHILD_STACK: usize = 64 * 1024;

impl Spawner {
    /// Start the spawner thread; its pipes are registered with the tokio runtime of `handle`.
    pub(crate) fn start(handle: tokio::runtime::Handle) -> std::io::Result<Spawner> {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("syncra-spawner".into())
            .spawn(move || {
                let _enter = handle.enter();
                block_all_signals();
                let mut stack = vec![0u8; CHILD_STACK];
                let mut sandboxes = SandboxCache::default();
                while let Ok(job) = rx.recv() {
                    match job {
                        Job::Spawn { spec, reply } => {
                            let _ = reply.send(spawn_now(*spec, &mut stack, &mut sandboxes));
                        }
                        Job::Release { reply } => {
                            sandboxes.0.clear();
                            let _ = reply.send(());
                        }
                    }
                }
            })?;
        Ok(Spawner { tx })
    }

    /// Spawn `spec` on the spawner thread.
    pub(crate) async fn spawn(&self, spec: SpawnSpec) -> Result<Spawned, SpawnError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job::Spawn {
                spec: Box::new(spec),
                reply,
            })
            .map_err(|_| SpawnError::SpawnerGone)?;
        rx.await.map_err(|_| SpawnError::SpawnerGone)?
    }

    /// Let go of what was prepared for every node (call it once they have all stopped: a
    /// node whose cgroup thread ends gets its death signal).
    pub(crate) async fn release(&self) {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Job::Release { reply }).is_ok() {
            let _ = rx.await;
        }
    }
}

pub(crate) fn block_all_signals() {
    // SAFETY: sigfillset initialises the set; pthread_sigmask only changes this thread's mask.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, std::ptr::null_mut());
    }
}

/// Lowest fd number used for staging inherited fds, above every fixed target number.
const STAGING_FD_MIN: RawFd = 64;

/// What the child reads between clone and exec. Everything is prepared by the parent; the
/// child only follows pointers and makes system calls.
#[repr(C)]
struct ChildArgs {
    path: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
    moves: *const (RawFd, RawFd),
    moves_len: usize,
    parent: libc::pid_t,
    /// Highest fd the child keeps; everything above is closed before exec.
    keep_up_to: c_int,
    /// Sandbox: `PR_SET_NO_NEW_PRIVS`.
    no_new_privs: bool,
    /// Sandbox: the Landlock ruleset fd, or -1.
    landlock_fd: c_int,
    /// Sandbox: seccomp programs, installed in order.
    seccomp: *const libc::sock_fprog,
    seccomp_len: usize,
    /// Sandbox: resource limits.
    rlimits: *const (libc::__rlimit_resource_t, libc::rlimit),
    rlimits_len: usize,
    /// Sandbox: the node's `cgroup.procs` to write `0` to (enter its pids cgroup), or -1.
    cgroup_procs_fd: c_int,
    /// Sandbox, in a new user namespace: what to write to `/proc/self/{uid_map,setgroups,
    /// gid_map}` (NUL-terminated, with their lengths), or null.
    uid_map: *const u8,
    uid_map_len: usize,
    gid_map: *const u8,
    gid_map_len: usize,
    /// Sandbox, in a new network namespace: bring up its loopback.
    loopback_up: bool,
    /// Sandbox: a network namespace made ahead to enter (`setns`), or -1.
    netns_fd: c_int,
    /// Set by the child when a step fails: which step ([`Step`]) and its errno.
    step: c_int,
    errno: c_int,
}

/// The steps of the child between clone and exec, for error messages.
#[derive(Debug, Clone, Copy)]
#[repr(i32)]
enum Step {
    DeathSignal = 1,
    ProcessGroup = 2,
    PlaceFds = 3,
    Exec = 4,
    UserNamespace = 5,
    NoNewPrivs = 6,
    Landlock = 7,
    Limits = 8,
    Seccomp = 9,
    Loopback = 10,
    Cgroup = 11,
}

impl Step {
    fn from_raw(v: c_int) -> Option<Step> {
        [
            Step::DeathSignal,
            Step::ProcessGroup,
            Step::PlaceFds,
            Step::Exec,
            Step::UserNamespace,
            Step::NoNewPrivs,
            Step::Landlock,
            Step::Limits,
            Step::Seccomp,
            Step::Loopback,
            Step::Cgroup,
        ]
        .into_iter()
        .find(|s| *s as c_int == v)
    }

    fn describe(self) -> &'static str {
        match self {
            Step::DeathSignal => "setting the parent-death signal",
            Step::ProcessGroup => "creating its process group",
            Step::PlaceFds => "placing its inherited fds",
            Step::Exec => "exec",
            Step::UserNamespace => "mapping its user namespace",
            Step::NoNewPrivs => "setting no_new_privs",
            Step::Landlock => "entering its Landlock domain",
            Step::Limits => "setting its resource limits",
            Step::Seccomp => "installing its seccomp filter",
            Step::Loopback => "entering its network namespace or bringing up its loopback",
            Step::Cgroup => "entering its pids cgroup",
        }
    }
}

/// The child between clone and exec. It shares the runtime's memory (CLONE_VM) while the
/// spawner thread is suspended (CLONE_VFORK), so it must not allocate, lock or unwind.
extern "C" fn child_main(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` points to the ChildArgs the suspended spawner thread prepared and keeps
    // alive until this child execs or exits; only async-signal-safe calls follow.
    unsafe {
        let a = &mut *(arg as *mut ChildArgs);
        let fail = |a: &mut ChildArgs, step: Step| -> ! {
            a.errno = *libc::__errno_location();
            a.step = step as c_int;
            libc::_exit(127)
        };
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
            fail(a, Step::DeathSignal);
        }
        // The runtime may have died between clone and prctl: then nobody would kill us.
        if libc::getppid() != a.parent {
            libc::_exit(1);
        }
        if libc::setpgid(0, 0) != 0 {
            fail(a, Step::ProcessGroup);
        }
        // Counted in its pids cgroup before it can start anything.
        if a.cgroup_procs_fd >= 0 && libc::write(a.cgroup_procs_fd, b"0".as_ptr().cast(), 1) != 1 {
            fail(a, Step::Cgroup);
        }
        if !a.uid_map.is_null() {
            // A new user namespace: map the user (and group) to itself.
            let write = |path: &[u8], data: *const u8, len: usize| -> bool {
                let fd = libc::open(path.as_ptr().cast(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return false;
                }
                let ok = libc::write(fd, data.cast(), len) == len as isize;
                libc::close(fd);
                ok
            };
            if !write(b"/proc/self/uid_map\0", a.uid_map, a.uid_map_len)
                || !write(b"/proc/self/setgroups\0", b"deny".as_ptr(), 4)
                || !write(b"/proc/self/gid_map\0", a.gid_map, a.gid_map_len)
            {
                fail(a, Step::UserNamespace);
            }
        }
        if a.netns_fd >= 0 && libc::setns(a.netns_fd, libc::CLONE_NEWNET) != 0 {
            fail(a, Step::Loopback);
        }
        if a.loopback_up {
            // Its own namespace's `lo`, still with the capabilities of its namespace's owner.
            let s = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
            let mut req: libc::ifreq = std::mem::zeroed();
            req.ifr_name[0] = b'l' as libc::c_char;
            req.ifr_name[1] = b'o' as libc::c_char;
            req.ifr_ifru.ifru_flags =
                (libc::IFF_UP | libc::IFF_LOOPBACK | libc::IFF_RUNNING) as libc::c_short;
            const SIOCSIFFLAGS: libc::c_ulong = 0x8914;
            let ok = s >= 0 && libc::ioctl(s, SIOCSIFFLAGS as _, &req) == 0;
            if s >= 0 {
                libc::close(s);
            }
            if !ok {
                fail(a, Step::Loopback);
            }
        }
        if a.no_new_privs {
            // No capabilities, even for a node of a root runtime: an empty bounding set
            // leaves exec nothing to grant. (An ordinary user has none to drop and may not
            // change the set; that is not an error.)
            for cap in 0..=63 {
                libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0);
            }
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
                0,
                0,
                0,
            );
            // …and none inheritable (which the bounding set does not mask at exec).
            #[repr(C)]
            struct CapHeader {
                version: u32,
                pid: c_int,
            }
            #[repr(C)]
            struct CapData {
                effective: u32,
                permitted: u32,
                inheritable: u32,
            }
            let mut header = CapHeader {
                version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
                pid: 0,
            };
            let mut data = [
                CapData {
                    effective: 0,
                    permitted: 0,
                    inheritable: 0,
                },
                CapData {
                    effective: 0,
                    permitted: 0,
                    inheritable: 0,
                },
            ];
            if libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) == 0 {
                for d in &mut data {
                    d.inheritable = 0;
                }
                libc::syscall(libc::SYS_capset, &mut header, data.as_ptr());
            }
        }
        if a.no_new_privs && libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            fail(a, Step::NoNewPrivs);
        }
        if a.no_new_privs {
            // What a sandboxed node creates is its own (systemd's UMask=0077).
            libc::umask(0o077);
        }
        if a.landlock_fd >= 0
            && libc::syscall(libc::SYS_landlock_restrict_self, a.landlock_fd, 0u32) != 0
        {
            fail(a, Step::Landlock);
        }
        for i in 0..a.moves_len {
            let (src, dst) = *a.moves.add(i);
            // dup2 leaves the new fd without CLOEXEC.
            if libc::dup2(src, dst) < 0 {
                fail(a, Step::PlaceFds);
            }
        }
        // Exactly the fds listed are inherited: close everything above them, including fds
        // of an embedding host that were opened without CLOEXEC. (Before Linux 5.9 this call
        // fails and the host's CLOEXEC discipline is all there is.)
        libc::syscall(
            libc::SYS_close_range,
            (a.keep_up_to + 1) as libc::c_uint,
            libc::c_uint::MAX,
            0 as libc::c_uint,
        );
        // Handlers of the runtime must not run here; SIGPIPE goes back to its default (Rust
        // ignores it); other ignored signals stay ignored, as Unix children expect.
        for sig in 1..=libc::SIGRTMAX() {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut old) != 0 {
                continue;
            }
            if old.sa_sigaction != libc::SIG_DFL
                && (old.sa_sigaction != libc::SIG_IGN || sig == libc::SIGPIPE)
            {
                let mut dfl: libc::sigaction = std::mem::zeroed();
                dfl.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(sig, &dfl, std::ptr::null_mut());
            }
        }
        for i in 0..a.rlimits_len {
            let (resource, limit) = *a.rlimits.add(i);
            if libc::setrlimit(resource, &limit) != 0 {
                fail(a, Step::Limits);
            }
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        // Last: from here on the filter refuses what it refuses (setpgid, among others).
        for i in 0..a.seccomp_len {
            if libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0u32,
                a.seccomp.add(i),
            ) != 0
            {
                fail(a, Step::Seccomp);
            }
        }
        libc::execve(a.path, a.argv, a.envp);
        fail(a, Step::Exec)
    }
}

fn cstring(what: &str, bytes: &[u8]) -> std::io::Result<CString> {
    CString::new(bytes).map_err(|_| std::io::Error::other(format!("{what} contains a NUL byte")))
}

/// Each node's prepared sandbox, kept for its next spawn while its profile and program stay
/// the same (a restart then builds no ruleset and compiles no filter).
#[derive(Default)]
struct SandboxCache(
    std::collections::HashMap<
        String,
        (
            syncra_config::sandbox::SandboxProfile,
            PathBuf,
            crate::sandbox::Prepared,
        ),
    >,
);

fn spawn_now(
    spec: SpawnSpec,
    stack: &mut [u8],
    cache: &mut SandboxCache,
) -> Result<Spawned, SpawnError> {
    let Some(req) = &spec.sandbox else {
        return spawn_with(&spec, &crate::sandbox::Prepared::default(), stack).map_err(|e| e.error);
    };
    // Threads the spawn path starts lazily are started here, on the spawner thread: one born
    // on a node's cgroup thread would be counted in that node's cgroup.
    crate::sandbox::start_netns_pool();
    let prepare = || {
        crate::sandbox::prepare(
            &req.node,
            &req.profile,
            &spec.program,
            req.node_dir.as_deref(),
        )
    };
    let fresh = match cache.0.get(&req.node) {
        Some((profile, program, _)) => *profile != req.profile || *program != spec.program,
        None => true,
    };
    if fresh {
        let t0 = std::time::Instant::now();
        let prepared = prepare()?;
        tracing::debug!(node = %req.node, us = t0.elapsed().as_micros() as u64, "sandbox prepared");
        cache.0.insert(
            req.node.clone(),
            (req.profile.clone(), spec.program.clone(), prepared),
        );
    } else if let Some(dir) = &req.node_dir {
        // Its directory may have been removed meanwhile.
        let _ = std::fs::create_dir_all(dir);
    }
    let Some((_, _, prepared)) = cache.0.get(&req.node) else {
        unreachable!("inserted above")
    };
    match spawn_placed(&spec, prepared, stack) {
        Err(Failed {
            userns: Some(errno),
            ..
        }) => {
            // This kernel (or its policy) refuses unprivileged user namespaces: never again
            // in this runtime; the node gets what can be had without one.
            tracing::debug!(errno, "no user namespace for a sandboxed node");
            crate::sandbox::userns_refused(errno);
            cache.0.clear();
            let prepared = prepare()?;
            let spawned = spawn_placed(&spec, &prepared, stack).map_err(|e| e.error);
            cache.0.insert(
                req.node.clone(),
                (req.profile.clone(), spec.program.clone(), prepared),
            );
            spawned
        }
        Err(e) => Err(e.error),
        Ok(spawned) => {
            if prepared.clone_flags & libc::CLONE_NEWUSER != 0 {
                crate::sandbox::userns_worked();
            }
            Ok(spawned)
        }
    }
}

/// [`spawn_with`], from the node's cgroup thread when it has one (then the child is born in
/// its pids cgroup).
fn spawn_placed(
    spec: &SpawnSpec,
    prepared: &crate::sandbox::Prepared,
    stack: &mut [u8],
) -> Result<Spawned, Failed> {
    let Some(cgroup) = &prepared.cgroup else {
        return spawn_with(spec, prepared, stack);
    };
    cgroup
        .run(|| spawn_with(spec, prepared, stack))
        .unwrap_or_else(|| {
            Err(Failed::from(SpawnError::io(
                spec.program.display().to_string(),
                Step::Cgroup.describe(),
                std::io::Error::other("the node's cgroup thread is gone"),
            )))
        })
}

/// A failed spawn, and whether it failed because a user namespace was refused (its errno).
struct Failed {
    error: SpawnError,
    userns: Option<i32>,
}

impl From<SpawnError> for Failed {
    fn from(error: SpawnError) -> Failed {
        Failed {
            error,
            userns: None,
        }
    }
}

fn spawn_with(
    spec: &SpawnSpec,
    prepared: &crate::sandbox::Prepared,
    stack: &mut [u8],
) -> Result<Spawned, Failed> {
    let program_name = spec.program.display().to_string();
    let io_err = |step: &'static str| {
        let program = program_name.clone();
        move |e: std::io::Error| SpawnError::io(program, step, e)
    };
    let os_err = |step: &'static str| {
        let program = program_name.clone();
        move |e: rustix::io::Errno| SpawnError::io(program, step, e.into())
    };

    let path = cstring("the program path", spec.program.as_os_str().as_bytes())
        .map_err(io_err("preparing the program path"))?;
    let mut argv_c = vec![path.clone()];
    for a in &spec.args {
        argv_c
            .push(cstring("an argument", a.as_bytes()).map_err(io_err("preparing the arguments"))?);
    }
    let mut env: Vec<(Vec<u8>, Vec<u8>)> = std::env::vars_os()
        .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect();
    let tmp = prepared
        .tmp_dir
        .as_ref()
        .map(|d| ("TMPDIR".to_owned(), d.display().to_string()));
    for (k, v) in spec.env.iter().chain(tmp.as_ref()) {
        env.retain(|(ek, _)| ek != k.as_bytes());
        env.push((k.as_bytes().to_vec(), v.as_bytes().to_vec()));
    }
    let mut envp_c: Vec<CString> = Vec::with_capacity(env.len());
    for (k, mut v) in env {
        let name = String::from_utf8_lossy(&k).into_owned();
        let mut kv = k;
        kv.push(b'=');
        kv.append(&mut v);
        envp_c.push(
            cstring(&format!("environment variable {name}"), &kv)
                .map_err(io_err("preparing the environment"))?,
        );
    }
    let argv: Vec<*const c_char> = argv_c
        .iter()
        .map(|c| c.as_ptr())
        .chain([std::ptr::null()])
        .collect();
    let envp: Vec<*const c_char> = envp_c
        .iter()
        .map(|c| c.as_ptr())
        .chain([std::ptr::null()])
        .collect();

    // Stdio: /dev/null in, pipes (or /dev/null) out.
    let devnull = |write: bool| {
        let mode = if write {
            rustix::fs::OFlags::WRONLY
        } else {
            rustix::fs::OFlags::RDONLY
        };
        rustix::fs::open(
            "/dev/null",
            mode | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
    };
    let stdin = devnull(false).map_err(os_err("opening /dev/null for stdin"))?;
    let (mut readers, stdout_w, stderr_w) = if spec.capture_output {
        let (out_r, out_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .map_err(os_err("creating the stdout pipe"))?;
        let (err_r, err_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .map_err(os_err("creating the stderr pipe"))?;
        (Some((out_r, err_r)), out_w, err_w)
    } else {
        (
            None,
            devnull(true).map_err(os_err("opening /dev/null for stdout"))?,
            devnull(true).map_err(os_err("opening /dev/null for stderr"))?,
        )
    };

    // Stage every fd the child gets above the target numbers, so that placing one can never
    // overwrite another that has not been placed yet.
    let mut staged: Vec<(OwnedFd, RawFd)> = Vec::with_capacity(3 + spec.fds.len());
    for (fd, target) in [
        (stdin.as_fd(), 0),
        (stdout_w.as_fd(), 1),
        (stderr_w.as_fd(), 2),
    ]
    .into_iter()
    .chain(spec.fds.iter().map(|(fd, t)| (fd.as_fd(), *t)))
    {
        let high = rustix::io::fcntl_dupfd_cloexec(fd, STAGING_FD_MIN)
            .map_err(os_err("staging the inherited fds"))?;
        staged.push((high, target));
    }
    let moves: Vec<(RawFd, RawFd)> = staged
        .iter()
        .map(|(fd, target)| (fd.as_raw_fd(), *target))
        .collect();

    // A root runtime's nodes enter a network namespace made ahead, off the spawn path.
    let mut clone_flags = prepared.clone_flags;
    let netns = (clone_flags & libc::CLONE_NEWNET != 0 && clone_flags & libc::CLONE_NEWUSER == 0)
        .then(crate::sandbox::netns_ahead)
        .flatten();
    if netns.is_some() {
        clone_flags &= !libc::CLONE_NEWNET;
    }
    let fprogs: Vec<libc::sock_fprog> = prepared
        .seccomp
        .iter()
        .map(|prog| libc::sock_fprog {
            len: prog.len() as u16,
            filter: prog.as_ptr() as *mut libc::sock_filter,
        })
        .collect();
    let (uid_map, gid_map) = match prepared.map_ids {
        Some((uid, gid)) => (
            format!("{uid} {uid} 1\n").into_bytes(),
            format!("{gid} {gid} 1\n").into_bytes(),
        ),
        None => (Vec::new(), Vec::new()),
    };
    let mut args = ChildArgs {
        path: path.as_ptr(),
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
        moves: moves.as_ptr(),
        moves_len: moves.len(),
        parent: rustix::process::getpid().as_raw_nonzero().get(),
        keep_up_to: moves.iter().map(|(_, dst)| *dst).max().unwrap_or(2),
        no_new_privs: prepared.no_new_privs,
        landlock_fd: prepared.landlock.as_ref().map_or(-1, |fd| fd.as_raw_fd()),
        seccomp: fprogs.as_ptr(),
        seccomp_len: fprogs.len(),
        rlimits: prepared.rlimits.as_ptr(),
        rlimits_len: prepared.rlimits.len(),
        cgroup_procs_fd: prepared
            .cgroup
            .as_ref()
            .and_then(|cg| cg.procs_fd())
            .unwrap_or(-1),
        uid_map: if prepared.map_ids.is_some() {
            uid_map.as_ptr()
        } else {
            std::ptr::null()
        },
        uid_map_len: uid_map.len(),
        gid_map: gid_map.as_ptr(),
        gid_map_len: gid_map.len(),
        loopback_up: prepared.loopback_up,
        netns_fd: netns.as_ref().map_or(-1, |fd| fd.as_raw_fd()),
        step: 0,
        errno: 0,
    };
    let stack_top = {
        let end = stack.as_mut_ptr_range().end as usize;
        (end & !0xf) as *mut c_void
    };
    let mut pidfd: c_int = -1;
    // SAFETY: `child_main` touches only `args` and its own stack, both alive until the child
    // has exec'd or exited, which CLONE_VFORK waits for before clone returns here. The stack
    // is owned by this thread and not used by anything else meanwhile; every pointer in
    // `args` points into values that live until the end of this function.
    let pid = unsafe {
        libc::clone(
            child_main,
            stack_top,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PIDFD | libc::SIGCHLD | clone_flags,
            (&mut args as *mut ChildArgs).cast::<c_void>(),
            &mut pidfd as *mut c_int,
        )
    };
    if pid < 0 {
        let e = std::io::Error::last_os_error();
        let userns = (prepared.clone_flags & libc::CLONE_NEWUSER != 0)
            .then(|| e.raw_os_error())
            .flatten()
            .filter(|errno| {
                matches!(
                    *errno,
                    libc::EPERM | libc::EINVAL | libc::ENOSPC | libc::EUSERS | libc::EACCES
                )
            });
        return Err(Failed {
            error: io_err("clone")(e),
            userns,
        });
    }
    // SAFETY: with CLONE_PIDFD the kernel stored a new pidfd, owned by nobody else, in `pidfd`.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    drop(staged);
    drop((stdin, stdout_w, stderr_w));

    if args.step != 0 {
        // The child reported a failed step and exited: reap it and say why.
        let _ = rustix::process::waitid(WaitId::PidFd(pidfd.as_fd()), WaitIdOptions::EXITED);
        let e = std::io::Error::from_raw_os_error(args.errno);
        if matches!(Step::from_raw(args.step), Some(Step::UserNamespace)) {
            return Err(Failed {
                error: SpawnError::io(program_name, Step::UserNamespace.describe(), e),
                userns: Some(args.errno),
            });
        }
        return Err(Failed::from(match Step::from_raw(args.step) {
            Some(Step::Exec) => match args.errno {
                libc::ENOENT => SpawnError::NotFound { program: program_name, searched: String::new() },
                libc::EACCES | libc::EPERM => {
                    SpawnError::NotExecutable { program: program_name, message: e.to_string() }
                }
                libc::ENOEXEC => SpawnError::NotExecutable {
                    program: program_name,
                    message: "it is not an executable this machine can run (wrong format or architecture)".into(),
                },
                _ => SpawnError::io(program_name, "exec", e),
            },
            Some(step) => SpawnError::io(program_name, step.describe(), e),
            None => io_err("starting the child")(e),
        }));
    }
    let signal_fd = pidfd.try_clone();
    let process = Process {
        pid: pid as u32,
        pidfd: Some(pidfd),
    };
    // On failure `process` is dropped here, which kills and reaps the child.
    let signal_fd = signal_fd.map_err(io_err("duplicating the pidfd"))?;
    let (stdout, stderr) = match readers.take() {
        // On failure `process` is dropped here, which kills and reaps the child.
        Some((out_r, err_r)) => (
            Some(pipe::Receiver::from_owned_fd(out_r).map_err(io_err("reading the stdout pipe"))?),
            Some(pipe::Receiver::from_owned_fd(err_r).map_err(io_err("reading the stderr pipe"))?),
        ),
        None => (None, None),
    };
    Ok(Spawned {
        pid: pid as u32,
        process,
        signal_fd,
        stdout,
        stderr,
        sandbox: spec.sandbox.as_ref().map(|_| prepared.status.clone()),
    })
}

/// Resolve a configured command to an executable path: a command containing `/` is a path;
/// a bare name is looked for in each of `bin_dirs` (next to `syncra` first), then on `PATH`.
pub fn resolve_program(command: &str, bin_dirs: &[PathBuf]) -> Result<PathBuf, SpawnError> {
    if command.contains('/') {
        let path = PathBuf::from(command);
        return check_executable(command, &path).map(|()| path);
    }
    let path_dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    for dir in bin_dirs.iter().chain(&path_dirs) {
        let candidate = dir.join(command);
        if candidate.is_file() {
            return check_executable(command, &candidate).map(|()| candidate);
        }
    }
    let mut searched: Vec<String> = bin_dirs.iter().map(|d| d.display().to_string()).collect();
    searched.push("$PATH".into());
    Err(SpawnError::NotFound {
        program: command.to_owned(),
        searched: searched.join(", "),
    })
}

/// Every node's command checked the way a spawn would find it (`syncra check-config`), as
/// `(problems, warnings)`: a problem per config key whose command is not a file, not
/// executable, or (for a command the config names) missing; a warning per built-in driver or
/// world executable that is not installed, which `syncra run` marks failed while the rest
/// runs. `bin_dirs` are searched before `PATH`, as [`crate::RuntimeBuilder::bin_dir`] does.
pub fn command_problems(
    loaded: &syncra_config::Loaded,
    bin_dirs: &[PathBuf],
) -> (Vec<syncra_config::Problem>, Vec<syncra_config::Problem>) {
    let (mut problems, mut warnings): (Vec<syncra_config::Problem>, Vec<syncra_config::Problem>) =
        (Vec::new(), Vec::new());
    let config = &loaded.config;
    for node in loaded.plan.nodes() {
        let Err(e) = resolve_program(&node.command, bin_dirs) else {
            continue;
        };
        let name = node.name.short();
        let (key, named) = match node.kind {
            syncra_protocol::NodeKind::Driver => {
                let named = config
                    .drivers
                    .0
                    .iter()
                    .any(|(n, entry)| n == name && entry.spec().command.is_some());
                (format!("drivers.{name}.command"), named)
            }
            syncra_protocol::NodeKind::World => {
                let own = config
                    .worlds
                    .tables
                    .iter()
                    .any(|(n, spec)| n == name && spec.command.is_some());
                if own {
                    (format!("worlds.{name}.command"), true)
                } else {
                    (
                        "worlds.command".to_owned(),
                        config.worlds.defaults.command.is_some(),
                    )
                }
            }
        };
        let list = if named || !matches!(e, SpawnError::NotFound { .. }) {
            &mut problems
        } else {
            &mut warnings
        };
        if list.iter().all(|p| p.key != key) {
            list.push(syncra_config::Problem {
                key,
                message: format!("{e}; `{}` would fail to start", node.name),
                source: loaded.file.as_ref().map(|f| f.display().to_string()),
            });
        }
    }
    (problems, warnings)
}

fn check_executable(command: &str, path: &Path) -> Result<(), SpawnError> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => Ok(()),
        Ok(m) if m.is_file() => Err(SpawnError::NotExecutable {
            program: path.display().to_string(),
            message: "it is not marked executable".into(),
        }),
        Ok(_) => Err(SpawnError::NotExecutable {
            program: path.display().to_string(),
            message: "it is not a file".into(),
        }),
        Err(_) => Err(SpawnError::NotFound {
            program: command.to_owned(),
            searched: String::new(),
        }),
    }
}

/// Send `sig` to a process through its pidfd, which is immune to pid reuse: once the process
/// is reaped, the signal goes nowhere.
pub(crate) fn signal(pidfd: &OwnedFd, sig: Signal) {
    let _ = rustix::process::pidfd_send_signal(pidfd, sig);
}

/// Send `sig` to the whole process group led by `pid` (the node and anything it started).
/// Only for processes known to be alive (the last-resort kill of everything).
pub(crate) fn signal_group(pid: u32, sig: Signal) {
    if let Some(p) = Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process_group(p, sig);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[test]
    fn bare_names_are_found_on_path_and_missing_ones_named() {
        let sh = resolve_program("sh", &[]).unwrap();
        assert!(sh.ends_with("sh"), "{sh:?}");
        let err = resolve_program("syncra-no-such-driver", &[PathBuf::from("/opt/x")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "executable `syncra-no-such-driver` not found (looked in /opt/x, $PATH)"
        );
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

    fn sh(script: &str, env: &[(&str, &str)], fds: Vec<(OwnedFd, RawFd)>) -> SpawnSpec {
        SpawnSpec {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            fds,
            capture_output: true,
            sandbox: None,
        }
    }

    async fn output(mut s: Spawned) -> (String, Exit) {
        let mut out = String::new();
        s.stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .await
            .unwrap();
        (out, s.process.wait().await.unwrap())
    }

    #[tokio::test]
    async fn a_child_gets_its_environment_fds_and_own_process_group() {
        let spawner = Spawner::start(tokio::runtime::Handle::current()).unwrap();
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        std::io::Write::write_all(&mut &ours, b"through fd 3\n").unwrap();
        // fd 3 carries what we wrote; fds 4+ are closed; the child leads its own group.
        let script = "head -n1 <&3; echo \"$SYNCRA_X\"; [ -e /proc/self/fd/4 ] && echo leak; cut -d' ' -f5 /proc/$$/stat; echo $$";
        let s = spawner
            .spawn(sh(
                script,
                &[("SYNCRA_X", "x-value")],
                vec![(theirs.into(), 3)],
            ))
            .await
            .unwrap();
        let pid = s.pid;
        let (out, exit) = output(s).await;
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(exit, Exit::Code(0), "{out}");
        assert_eq!(&lines[..2], ["through fd 3", "x-value"], "{out}");
        assert!(!out.contains("leak"), "{out}");
        assert_eq!(lines[2], lines[3], "process group id = pid: {out}");
        assert_eq!(lines[3], pid.to_string());
    }

    #[tokio::test]
    async fn exits_and_signals_are_reported_and_missing_programs_refused() {
        let spawner = Spawner::start(tokio::runtime::Handle::current()).unwrap();
        let s = spawner.spawn(sh("exit 7", &[], vec![])).await.unwrap();
        assert_eq!(s.process.wait().await.unwrap(), Exit::Code(7));
        let s = spawner
            .spawn(sh("kill -SEGV $$", &[], vec![]))
            .await
            .unwrap();
        assert_eq!(s.process.wait().await.unwrap(), Exit::Signal(libc::SIGSEGV));
        let mut spec = sh("", &[], vec![]);
        spec.program = "/nonexistent/program".into();
        let err = spawner.spawn(spec).await.unwrap_err();
        assert!(matches!(err, SpawnError::NotFound { .. }), "{err}");
        // SIGPIPE is back to its default in the child (Rust ignores it in the runtime).
        let s = spawner
            .spawn(sh("grep SigIgn /proc/self/status", &[], vec![]))
            .await
            .unwrap();
        let (out, _) = output(s).await;
        let ignored = u64::from_str_radix(out.split_whitespace().nth(1).unwrap(), 16).unwrap();
        assert_eq!(ignored & (1 << (libc::SIGPIPE - 1)), 0, "{out}");
    }

    #[tokio::test]
    async fn a_failed_step_in_the_child_is_named_with_its_os_error() {
        let spawner = Spawner::start(tokio::runtime::Handle::current()).unwrap();
        let (_ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        // No process can have an fd this high: placing it fails in the child, before exec.
        let spec = sh("exit 0", &[], vec![(theirs.into(), 1 << 30)]);
        let err = spawner.spawn(spec).await.unwrap_err();
        match &err {
            SpawnError::Io { step, source, .. } => {
                assert_eq!(step, "placing its inherited fds");
                assert_eq!(source.raw_os_error(), Some(libc::EBADF), "{err}");
            }
            other => panic!("expected an OS error at a step, got {other:?}"),
        }
        assert_eq!(err.errno(), Some(libc::EBADF));
        assert!(!err.is_resource_shortage(), "a bad fd is not a shortage");
        let shown = err.to_string();
        assert!(
            shown.starts_with("spawning `/bin/sh` failed: placing its inherited fds: "),
            "{shown}"
        );
        let source = std::error::Error::source(&err).expect("the OS error is its source");
        assert!(source.downcast_ref::<std::io::Error>().is_some());
    }

    #[tokio::test]
    async fn only_the_listed_fds_are_inherited_even_without_cloexec() {
        let spawner = Spawner::start(tokio::runtime::Handle::current()).unwrap();
        // An fd opened without CLOEXEC, as a careless embedding host might.
        // SAFETY: dup has no memory-safety preconditions; the fd is closed below.
        let raw = unsafe { libc::dup(2) };
        assert!(raw > 2);
        let script = format!("[ -e /proc/self/fd/{raw} ] && echo leaked || echo clean");
        let s = spawner.spawn(sh(&script, &[], vec![])).await.unwrap();
        let (out, _) = output(s).await;
        // SAFETY: closing the fd dup'd above, owned by nobody else.
        unsafe { libc::close(raw) };
        assert_eq!(out.trim(), "clean");
    }

    #[tokio::test]
    async fn what_a_process_started_dies_with_it() {
        use tokio::io::AsyncBufReadExt;
        let spawner = Spawner::start(tokio::runtime::Handle::current()).unwrap();
        let mut s = spawner
            .spawn(sh("sleep 1000 & echo $!; exit 0", &[], vec![]))
            .await
            .unwrap();
        let mut line = String::new();
        tokio::io::BufReader::new(s.stdout.take().unwrap())
            .read_line(&mut line)
            .await
            .unwrap();
        let grandchild: u32 = line.trim().parse().unwrap();
        assert_eq!(s.process.wait().await.unwrap(), Exit::Code(0));
        let dead = |pid: u32| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| {
                    s.rsplit(')')
                        .next()
                        .is_some_and(|r| r.trim_start().starts_with('Z'))
                })
                .unwrap_or(true)
        };
        let gone = (0..400).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(5));
            dead(grandchild)
        });
        assert!(
            gone,
            "the background child of a finished process is still running"
        );
    }

    #[tokio::test]
    async fn dropping_an_unwaited_process_kills_it() {
        let spawner = Spawner::start(tokio::runtime::Handle::current()).unwrap();
        let s = spawner.spawn(sh("sleep 1000", &[], vec![])).await.unwrap();
        let pid = s.pid;
        drop(s);
        let gone = (0..200).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(5));
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| s.contains(") Z"))
                .unwrap_or(true)
        });
        assert!(gone, "the process survived its handle");
    }
}
