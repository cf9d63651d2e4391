//! Launching a node's process, as the runtime does for its own nodes and an agent does for the
//! nodes a runtime places on its host: the socketpair of its cluster link (fd 3), its page
//! (fd 4), its broker link (fd 5, where the host has a Broker), the dead end that seals its
//! cluster listener (fd 6), its environment, its sandbox and its captured output — all through
//! the one spawn path ([`crate::spawn::Spawner`]), and its crash socket (fd 7) when native
//! crashes are dumped ([`syncra_dump`]: served from here, by whoever launched it). The process
//! then blocks reading its boot frame from fd 3 until its supervisor writes one.
//!
//! [`wait_end`] is the other half: the process's end as its supervisor needs it (exit, stderr
//! tail, panic report, exit note).

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use syncra_protocol::NodeName;
use syncra_protocol::boot::{CRASH_FD, PAGE_FD};
use syncra_protocol::broker::BROKER_FD;
use syncra_protocol::crash::PanicReport;
use syncra_protocol::page::NodePage;
use syncra_protocol::sandbox::SandboxProfile;
use syncra_protocol::status::SandboxStatus;
use syncra_protocol::wire;

use crate::logs::{self, Capture, LineSink};
use crate::spawn::{
    Exit, Process, SandboxRequest, SpawnError, SpawnSpec, Spawner, resolve_program,
};
use crate::supervisor::policy::Termination;

/// How long the exit handler waits for a dead child's pipes to drain.
const OUTPUT_DRAIN: Duration = Duration::from_millis(300);

/// What to launch.
pub(crate) struct LaunchSpec<'a> {
    /// The node.
    pub(crate) name: &'a NodeName,
    /// Its command, as configured (a path, or a name looked up in `bin_dirs`, then `PATH`).
    pub(crate) command: &'a str,
    /// Its arguments.
    pub(crate) args: &'a [String],
    /// Its own environment (config's `env`).
    pub(crate) env: Vec<(String, String)>,
    /// What it may touch.
    pub(crate) sandbox: &'a SandboxProfile,
    /// Where bare command names are looked for first.
    pub(crate) bin_dirs: &'a [PathBuf],
    /// Its private directory (its `TMPDIR`); its name also names its pids cgroup.
    pub(crate) node_dir: PathBuf,
    /// What its prepared sandbox is kept under between spawns (its name, here; its name and
    /// session on an agent, which serves several runtimes).
    pub(crate) sandbox_key: String,
    /// Where its log goes (`<node>_<pid>.log`).
    pub(crate) log_dir: &'a Path,
    /// Whether it gets a broker link (fd 5).
    pub(crate) broker: bool,
    /// Told each line it writes, besides its log file.
    pub(crate) lines: Option<LineSink>,
    /// Where its minidumps go, if it gets a crash socket (fd 7).
    pub(crate) dumps: Option<DumpTarget>,
}

/// Where a node's minidumps go, and their bounds.
#[derive(Debug, Clone)]
pub(crate) struct DumpTarget {
    pub(crate) dir: PathBuf,
    pub(crate) limits: syncra_dump::Limits,
}

/// A launched node process, blocked reading its boot frame.
#[derive(Debug)]
pub(crate) struct NodeProcess {
    /// Its pid.
    pub(crate) pid: u32,
    /// For waiting ([`wait_end`]).
    pub(crate) process: Process,
    /// For signalling.
    pub(crate) pidfd: OwnedFd,
    /// Our end of its cluster socket: the boot frame, then the cluster session.
    pub(crate) ours: std::os::unix::net::UnixStream,
    /// Our end of its broker link, if it has one.
    pub(crate) broker_ours: Option<OwnedFd>,
    /// Its page.
    pub(crate) page: Arc<NodePage>,
    /// Its log file.
    pub(crate) log_path: PathBuf,
    /// Its output being captured.
    pub(crate) capture: Capture,
    /// What its sandbox enforces.
    pub(crate) sandbox: Option<SandboxStatus>,
    /// Its crash socket, served (the boot frame names fd 7 when it is `Some`).
    pub(crate) dumps: Option<syncra_dump::Watch>,
}

/// Start a process of `spec`'s program.
pub(crate) async fn launch(
    spawner: &Spawner,
    spec: LaunchSpec<'_>,
) -> Result<NodeProcess, SpawnError> {
    let io = |what: &'static str, e: std::io::Error| SpawnError::io(spec.command, what, e);
    let program = resolve_program(spec.command, spec.bin_dirs)?;
    let (ours, theirs) = rustix::net::socketpair(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::STREAM,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )
    .map_err(|e| io("creating the cluster socketpair", e.into()))?;
    let (page, page_child) =
        NodePage::create("syncra-node-page").map_err(|e| io("creating the node page", e.into()))?;
    let sealer = syncra_protocol::listener::dead_end()
        .map_err(|e| io("creating the listener's dead end", e))?;
    let mut fds = vec![
        (theirs, syncra_protocol::boot::CLUSTER_FD),
        (page_child, PAGE_FD),
        (sealer, syncra_protocol::listener::SEAL_FD),
    ];
    let broker_ours = if spec.broker {
        let (ours, theirs) = syncra_protocol::broker::socketpair()
            .map_err(|e| io("creating the broker socketpair", e))?;
        fds.push((theirs, BROKER_FD));
        Some(ours)
    } else {
        None
    };
    let crash = match &spec.dumps {
        Some(_) => {
            let (ours, theirs) =
                syncra_dump::socketpair().map_err(|e| io("creating the crash socketpair", e))?;
            fds.push((theirs, CRASH_FD));
            Some(ours)
        }
        None => None,
    };
    let mut env = spec.env;
    env.push(("SYNCRA_NODE".into(), spec.name.to_string()));
    if std::env::var_os("MALLOC_ARENA_MAX").is_none()
        && !env.iter().any(|(k, _)| k == "MALLOC_ARENA_MAX")
    {
        // glibc reserves an arena per thread; two keep a node's footprint small.
        env.push(("MALLOC_ARENA_MAX".into(), "2".into()));
    }
    let spawned = spawner
        .spawn(SpawnSpec {
            program,
            args: spec.args.to_vec(),
            env,
            fds,
            capture_output: true,
            sandbox: Some(SandboxRequest {
                node: spec.sandbox_key,
                profile: spec.sandbox.clone(),
                node_dir: Some(spec.node_dir),
            }),
        })
        .await?;
    let pid = spawned.pid;
    let log_path = spec
        .log_dir
        .join(format!("{}_{pid}.log", spec.name.file_stem()));
    let capture = logs::capture(spawned.stdout, spawned.stderr, log_path.clone(), spec.lines);
    let dumps = crash.zip(spec.dumps).and_then(|(ours, target)| {
        syncra_dump::serve(
            ours,
            syncra_dump::Target {
                pid,
                dir: target.dir,
                stem: spec.name.file_stem(),
                limits: target.limits,
            },
        )
        .inspect_err(|e| tracing::warn!(node = %spec.name, error = %e, "no crash dumps: serving its crash socket"))
        .ok()
    });
    Ok(NodeProcess {
        pid,
        process: spawned.process,
        pidfd: spawned.signal_fd,
        ours: std::os::unix::net::UnixStream::from(ours),
        broker_ours,
        page: Arc::new(page),
        log_path,
        capture,
        sandbox: spawned.sandbox,
        dumps,
    })
}

/// How a node process ended, as its supervisor needs it.
#[derive(Debug)]
pub(crate) struct Ended {
    pub(crate) termination: Termination,
    pub(crate) at: SystemTime,
    pub(crate) stderr_tail: Vec<String>,
    /// The panic report it left in its page.
    pub(crate) panic: Option<PanicReport>,
    /// Why it said it was leaving (its page's exit note).
    pub(crate) note: Option<String>,
    /// The minidump its crash handler asked for, if it asked.
    pub(crate) dump: Option<syncra_dump::Dumped>,
}

/// Wait for `process` to end, drain its output, and read what it left in its page and whether
/// it asked for a dump.
pub(crate) async fn wait_end(
    process: Process,
    capture: Capture,
    page: &NodePage,
    dumps: Option<syncra_dump::Watch>,
) -> Ended {
    let pid = process.pid();
    let status = process.wait().await;
    let at = SystemTime::now();
    let termination = match status {
        Ok(Exit::Code(c)) => Termination::Code(c),
        Ok(Exit::Signal(sig)) => Termination::Signal(sig),
        Err(e) => {
            tracing::error!(pid, error = %e, "waiting for a child failed");
            Termination::Code(-1)
        }
    };
    let (stderr_tail, dump) = tokio::join!(capture.finish(OUTPUT_DRAIN), async {
        match dumps {
            Some(w) => w.finish().await,
            None => None,
        }
    });
    Ended {
        termination,
        at,
        stderr_tail,
        panic: read_panic(page),
        note: page.exit_note(),
        dump,
    }
}

/// Read a panic report the child may have left in its page.
fn read_panic(page: &NodePage) -> Option<PanicReport> {
    match wire::decode::<PanicReport>("panic report", &page.panic_bytes()?) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::debug!(error = %e, "ignored an unreadable panic report");
            None
        }
    }
}
