//! The supervision tree:
//!
//! ```text
//! Runtime
//! ├── Group "drivers"   strategy, intensity        (group::Group)
//! │   └── NodeSupervisor per driver process         (node::NodeSupervisor)
//! └── Group "worlds"
//!     └── NodeSupervisor per world process
//! ```
//!
//! A [`node::NodeSupervisor`] owns one OS process through its whole life; a [`group::Group`]
//! applies OTP strategies (which siblings restart with a failed child). Restart policy itself
//! is data, decided by the pure functions in [`policy`].

pub(crate) mod ending;
pub(crate) mod group;
pub(crate) mod node;
pub(crate) mod policy;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use syncra_config::RuntimePlan;
use syncra_protocol::control::CrashEntry;
use syncra_protocol::crash::{CrashRecord, DumpInfo};
use syncra_protocol::status::LifecycleEvent;
use tokio::sync::{broadcast, watch};

use crate::cluster::Hub;
use crate::hooks::HookRunner;
use crate::registry::Registry;
use crate::spawn::Spawner;

/// Crash records kept in memory for `syncra crashes`; every one stays on disk.
pub(crate) const MAX_CRASH_ENTRIES: usize = 1000;

/// Why the runtime is shutting down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShutdownCause {
    /// A user asked (`syncra shutdown`, or the embedding API).
    Requested,
    /// SIGTERM or SIGINT.
    Signal(&'static str),
    /// A driver asked on the user's behalf (the window was closed): the node and its reason.
    Quit(syncra_protocol::NodeName, String),
    /// The supervisor gave up on a node and config says to shut down.
    GaveUp(String),
    /// A part of the runtime itself (its router, gateway, a group, a task) ended: it stops in
    /// order rather than go on without it.
    Internal(String),
}

/// What every supervisor shares.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub(crate) registry: Arc<Registry>,
    pub(crate) spawner: Spawner,
    pub(crate) hub: Hub,
    pub(crate) broker: Arc<crate::broker::Broker>,
    pub(crate) hooks: HookRunner,
    pub(crate) events: broadcast::Sender<LifecycleEvent>,
    pub(crate) runtime: RuntimePlan,
    /// Where bare executable names are looked for first.
    pub(crate) bin_dirs: Vec<PathBuf>,
    /// This session's crash records, oldest first.
    pub(crate) crashes: Mutex<Vec<CrashEntry>>,
    /// Set when something asks the runtime to shut down.
    pub(crate) shutdown: watch::Sender<Option<ShutdownCause>>,
    /// Watches the heartbeats of ready nodes.
    pub(crate) watchdog: Arc<crate::watchdog::Watchdog>,
    /// Hooks running in the background; shutdown waits for them (each has a timeout).
    pub(crate) hook_tasks: Mutex<tokio::task::JoinSet<()>>,
    /// Fds kept for status and crash records when the process runs out.
    pub(crate) fds: crate::fdreserve::FdReserve,
    /// The links to other hosts' agents.
    pub(crate) hosts: Arc<crate::remote::hosts::Hosts>,
}

impl Ctx {
    pub(crate) fn emit(&self, event: LifecycleEvent) {
        let _ = self.events.send(event);
    }

    /// Remember a crash record for `syncra crashes` (the newest [`MAX_CRASH_ENTRIES`]).
    pub(crate) fn record_crash(&self, entry: CrashEntry) {
        let mut crashes = self.crashes.lock().unwrap_or_else(|p| p.into_inner());
        if crashes.len() >= MAX_CRASH_ENTRIES {
            crashes.remove(0);
        }
        crashes.push(entry);
    }

    /// Change the crash record kept for `path` (its dump's stack, once read).
    pub(crate) fn update_crash(&self, path: &str, change: impl FnOnce(&mut CrashRecord)) {
        let mut crashes = self.crashes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = crashes.iter_mut().rev().find(|c| c.path == path) {
            change(&mut entry.record);
        }
    }

    /// The crash record meant for `path` could not be written, because of `why`.
    pub(crate) fn crash_not_written(&self, path: &str, why: String) {
        let mut crashes = self.crashes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = crashes.iter_mut().rev().find(|c| c.path == path) {
            entry.not_written = Some(why);
        }
    }

    /// Run `task` (a hook) in the background, tracked so that shutdown can wait for it.
    pub(crate) fn track(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        let mut set = self.hook_tasks.lock().unwrap_or_else(|p| p.into_inner());
        while set.try_join_next().is_some() {}
        set.spawn(task);
    }

    /// Wait for every tracked background task.
    pub(crate) async fn drain_tracked(&self) {
        let mut set =
            std::mem::take(&mut *self.hook_tasks.lock().unwrap_or_else(|p| p.into_inner()));
        while set.join_next().await.is_some() {}
    }

    pub(crate) fn request_shutdown(&self, cause: ShutdownCause) {
        self.shutdown.send_if_modified(|c| {
            if c.is_none() {
                *c = Some(cause);
                true
            } else {
                false
            }
        });
    }
}

/// How long reading a minidump back for its stack may take.
const ANALYSIS_LIMIT: std::time::Duration = std::time::Duration::from_secs(20);

/// How long the stack of a dump on another host is waited for (read there, then sent).
pub(crate) const REMOTE_ANALYSIS_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Read the minidump at `path` back into `info`: the crash, its thread and its stack (or why
/// not). CPU-bound work on a blocking thread, bounded in time; the restart never waits for it.
pub(crate) async fn analyse_dump(path: &std::path::Path, info: &mut DumpInfo) {
    let handle = tokio::runtime::Handle::current();
    let owned = path.to_owned();
    let work = tokio::task::spawn_blocking(move || handle.block_on(syncra_dump::analyse(&owned)));
    match tokio::time::timeout(ANALYSIS_LIMIT, work).await {
        Ok(Ok(Ok(analysis))) => analysis.fill(info),
        Ok(Ok(Err(e))) => info.error = Some(format!("its stack could not be read: {e}")),
        Ok(Err(e)) => info.error = Some(format!("its stack could not be read: {e}")),
        Err(_) => {
            info.error = Some(format!(
                "its stack was not read within {} s",
                ANALYSIS_LIMIT.as_secs()
            ))
        }
    }
}
