//! Node identity, state and the status views the runtime reports.
//!
//! These are what `syncra status --json` prints and what an embedder receives, so their
//! serialized field names are part of the user-facing contract.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::crash::{ExitSummary, Reason};

/// What a node is: a driver (renderer, audio, any custom executable) or a world (an engine
/// process simulating one world).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeKind {
    /// A driver process.
    Driver,
    /// A world process.
    World,
}

impl fmt::Display for NodeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NodeKind::Driver => "driver",
            NodeKind::World => "world",
        })
    }
}

/// Prefix of every world's node name: the world `arena` is the node `world/arena`.
pub const WORLD_PREFIX: &str = "world/";

/// The logical name of a node. It survives restarts: `renderer`, `audio`, `world/arena`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeName(String);

impl NodeName {
    /// The node name of the world called `world` (`world/<world>`).
    pub fn world(world: &str) -> Self {
        NodeName(format!("{WORLD_PREFIX}{world}"))
    }

    /// The node name of the driver called `driver`.
    pub fn driver(driver: &str) -> Self {
        NodeName(driver.to_owned())
    }

    /// Parse a name as a user typed it (`world/arena`, `renderer`).
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.strip_prefix(WORLD_PREFIX) {
            Some(world) => validate_component("world name", world).map(|()| Self::world(world)),
            None => validate_component("driver name", s).map(|()| Self::driver(s)),
        }
    }

    /// The kind this name denotes.
    pub fn kind(&self) -> NodeKind {
        if self.0.starts_with(WORLD_PREFIX) {
            NodeKind::World
        } else {
            NodeKind::Driver
        }
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name without its `world/` prefix.
    pub fn short(&self) -> &str {
        self.0.strip_prefix(WORLD_PREFIX).unwrap_or(&self.0)
    }

    /// A form usable in a file name: `world/arena` → `world-arena`.
    pub fn file_stem(&self) -> String {
        self.0.replace('/', "-")
    }
}

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Longest driver or world name accepted.
pub const MAX_NAME_LEN: usize = 64;

/// Check one name component (a driver name or a world name without its prefix): 1 to
/// [`MAX_NAME_LEN`] characters of ASCII letters, digits, `_`, `-` and `.`, not starting with
/// `.` or `-`. The error says what is wrong in words.
pub fn validate_component(what: &str, s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err(format!("{what} is empty"));
    }
    if s.len() > MAX_NAME_LEN {
        return Err(format!(
            "{what} `{s}` is longer than {MAX_NAME_LEN} characters"
        ));
    }
    if s.starts_with(['.', '-']) {
        return Err(format!("{what} `{s}` must not start with `.` or `-`"));
    }
    if let Some(bad) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        return Err(format!(
            "{what} `{s}` contains {bad:?}; use letters, digits, `_`, `-` and `.`"
        ));
    }
    Ok(())
}

/// Where a node is in its life, as the user sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Spawned (or waiting for what it depends on) and not ready yet.
    Starting,
    /// Announced readiness and heartbeating.
    Ready,
    /// Being stopped: a graceful request was sent, SIGKILL follows at its deadline.
    Stopping,
    /// Waiting out a restart delay after a failure.
    Backoff,
    /// The supervisor gave up on it (intensity exceeded, or it cannot be started). The rest of
    /// the runtime keeps running.
    Failed,
    /// Not running, on purpose (stopped by a user, finished, or never started).
    Stopped,
}

impl fmt::Display for NodeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NodeState::Starting => "starting",
            NodeState::Ready => "ready",
            NodeState::Stopping => "stopping",
            NodeState::Backoff => "backoff",
            NodeState::Failed => "failed",
            NodeState::Stopped => "stopped",
        })
    }
}

/// What a node reports about its main loop with each heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeMetrics {
    /// Iterations of the main loop so far (ticks, frames, audio periods).
    pub tick: u64,
    /// Entities simulated, for worlds.
    pub entities: Option<u64>,
    /// Duration of the last iteration, microseconds.
    pub tick_us: u32,
    /// Longest iteration since the previous heartbeat, microseconds.
    pub tick_us_max: u32,
    /// Iterations that ran longer than their period so far.
    pub overruns: u64,
}

/// What a [`Figure`] measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[repr(u32)]
pub enum FigureKind {
    /// A value now (frames per second, queue depth).
    Gauge = 0,
    /// A total that grows (frames drawn, samples mixed).
    Counter = 1,
}

impl FigureKind {
    /// From its number in a node page (anything unknown reads as a gauge).
    pub fn from_raw(raw: u32) -> FigureKind {
        if raw == FigureKind::Counter as u32 {
            FigureKind::Counter
        } else {
            FigureKind::Gauge
        }
    }
}

/// A named figure a node reports beside its heartbeat (`fps`, `frames`, `queue_depth`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Figure {
    /// Its name.
    pub name: String,
    /// Gauge or counter.
    pub kind: FigureKind,
    /// Its value.
    pub value: f64,
}

/// Check a figure name: 1 to [`crate::page::MAX_FIGURE_NAME`] bytes of ASCII letters,
/// digits, `_`, `.` and `-`.
pub fn validate_figure_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > crate::page::MAX_FIGURE_NAME {
        return Err(format!(
            "figure name `{name}` must be 1 to {} bytes",
            crate::page::MAX_FIGURE_NAME
        ));
    }
    match name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        Some(bad) => Err(format!(
            "figure name `{name}` contains {bad:?}; use letters, digits, `_`, `.` and `-`"
        )),
        None => Ok(()),
    }
}

/// One node as `syncra status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeView {
    /// Logical name (`world/arena`, `renderer`).
    pub name: NodeName,
    /// Driver or world.
    pub kind: NodeKind,
    /// The host it runs on (`[hosts.<name>]`), `null` for the runtime's own.
    #[serde(default)]
    pub host: Option<String>,
    /// OS process id of the current incarnation (on its host), `null` when not running.
    pub pid: Option<u32>,
    /// Current state.
    pub state: NodeState,
    /// Number of the current (or last) incarnation; 0 before the first spawn.
    pub incarnation: u64,
    /// Restarts so far (spawns after the first).
    pub restarts: u64,
    /// Milliseconds since the current incarnation became ready; `null` when not ready.
    pub uptime_ms: Option<u64>,
    /// How the previous incarnation ended, `null` if none has.
    pub last_exit: Option<ExitSummary>,
    /// Ticks of a world (or frames of a driver) from its last heartbeat.
    pub tick: Option<u64>,
    /// Entities in a world from its last heartbeat.
    pub entities: Option<u64>,
    /// Duration of the last tick in microseconds, from the last heartbeat.
    pub tick_us: Option<u32>,
    /// A sentence about the state: what a starting node waits for, why a node failed.
    pub detail: Option<String>,
    /// Streams it produces.
    #[serde(default)]
    pub produces: Vec<String>,
    /// Streams it consumes.
    #[serde(default)]
    pub consumes: Vec<String>,
    /// Pid of the warm spare waiting to replace this node at its next restart
    /// (`supervisor.warm_spare`), if one is waiting.
    #[serde(default)]
    pub spare_pid: Option<u32>,
    /// The figures the node reports (`fps`, `frames`, …), in the order it declared them.
    #[serde(default)]
    pub figures: Vec<Figure>,
    /// What the node says it is doing, in a sentence ([`crate::page::StatusNote`]): "output:
    /// null (no audio device)". `null` when it says nothing or is not running.
    #[serde(default)]
    pub note: Option<String>,
    /// What the sandbox of the current (or last) incarnation enforces, and what it could not.
    #[serde(default)]
    pub sandbox: Option<SandboxStatus>,
    /// The current (or last) incarnation's log file on the runtime's host (for a node on
    /// another host, the copy kept here).
    #[serde(default)]
    pub log_file: Option<String>,
}

/// What a node's sandbox enforces on this machine, and what it could not and why.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxStatus {
    /// `strict`, `permissive` or `off`.
    pub mode: String,
    /// The rules in force: "filesystem: read 14 paths, write 2 (Landlock ABI 7)".
    pub enforced: Vec<String>,
    /// The rules that are not, each with its reason: "processes: root is exempt from
    /// RLIMIT_NPROC (…)".
    pub not_enforced: Vec<String>,
}

/// Facts about the runtime process itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuntimeInfo {
    /// The runtime's pid.
    pub pid: u32,
    /// Syncra version of the runtime.
    pub version: String,
    /// Protocol version the runtime speaks.
    pub protocol: u32,
    /// Milliseconds since the runtime started.
    pub uptime_ms: u64,
    /// Directory holding the control socket.
    pub run_dir: String,
    /// Directory holding logs.
    pub log_dir: String,
    /// Directory holding crash records.
    pub crash_dir: String,
    /// True once a shutdown has begun.
    pub shutting_down: bool,
    /// The web dashboard's address (`http://127.0.0.1:PORT/`) when it is served; its token is
    /// in the run directory.
    #[serde(default)]
    pub dashboard: Option<String>,
}

/// The answer to `syncra status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// The runtime process.
    pub runtime: RuntimeInfo,
    /// Every configured node, drivers first in start order, then worlds.
    pub nodes: Vec<NodeView>,
}

impl StatusReport {
    /// The node called `name`, if configured.
    pub fn node(&self, name: &str) -> Option<&NodeView> {
        self.nodes.iter().find(|n| n.name.as_str() == name)
    }
}

/// A lifecycle event, as embedders and `syncra events` receive it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LifecycleEvent {
    /// Wall-clock time, milliseconds since the Unix epoch.
    pub unix_ms: u64,
    /// The node it is about.
    pub node: NodeName,
    /// The incarnation it is about.
    pub incarnation: u64,
    /// Pid of that incarnation, when there is one.
    pub pid: Option<u32>,
    /// What happened.
    pub what: EventKind,
}

/// What happened to a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum EventKind {
    /// A process was spawned for a new incarnation.
    Spawned,
    /// The incarnation announced readiness.
    Up {
        /// Milliseconds from spawn (fork) to ready, with microsecond precision.
        startup_ms: f64,
    },
    /// Heartbeats stopped: the node is being killed as hung.
    Hung {
        /// Milliseconds since the last heartbeat.
        silent_ms: u64,
    },
    /// The incarnation's process is gone.
    Down {
        /// How it ended.
        exit: ExitSummary,
    },
    /// The supervisor will start a new incarnation.
    Restarting {
        /// Delay before the spawn, milliseconds.
        delay_ms: u64,
        /// Why: the node's own failure, or a sibling's under one_for_all / rest_for_one,
        /// or a user's request.
        cause: String,
    },
    /// The supervisor gave up on the node.
    Failed {
        /// Why, in words.
        reason: Reason,
        /// A sentence for the user.
        message: String,
    },
    /// The node was stopped on purpose and is not running.
    Stopped,
}
