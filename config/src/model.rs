//! The `SyncraConfig.toml` model: what a config file may say, with every default named.
//!
//! The seed's snippet loads as written:
//!
//! ```toml
//! [runtime]
//! watch_interval_ms = 1000
//! auto_restart_crashed_processes = true
//!
//! [drivers]
//! window = true
//! audio = true
//! openxr = false
//!
//! [worlds]
//! default_world = "my_base_world"
//! ```
//!
//! The long forms: a driver may be a table (`[drivers.renderer] command = ..`), `[worlds]`
//! holds defaults for every world besides `default_world`, `count`, `names` and `spread`, and a table
//! `[worlds.<name>]` configures one world.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::de::{self, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Default `runtime.watch_interval_ms`: how often a child must show it is alive.
pub const DEFAULT_WATCH_INTERVAL_MS: u64 = 1000;
/// Default `runtime.missed_beats`: intervals without a heartbeat before a node is hung.
pub const DEFAULT_MISSED_BEATS: u32 = 3;
/// Default `runtime.start_timeout_ms`: spawn to ready, or the start failed.
pub const DEFAULT_START_TIMEOUT_MS: u64 = 10_000;
/// Default `runtime.stop_timeout_ms`: graceful stop request to SIGKILL.
pub const DEFAULT_STOP_TIMEOUT_MS: u64 = 5_000;
/// Default `runtime.abort_grace_ms`: SIGABRT of a hung node to SIGKILL.
pub const DEFAULT_ABORT_GRACE_MS: u64 = 500;
/// Default `runtime.log_dir`.
pub const DEFAULT_LOG_DIR: &str = "logs";

/// Default `supervisor.intensity`: restarts allowed within `period_ms` before giving up.
pub const DEFAULT_INTENSITY: u32 = 5;
/// Default `supervisor.period_ms`.
pub const DEFAULT_PERIOD_MS: u64 = 60_000;
/// Default `supervisor.backoff_initial_ms`.
pub const DEFAULT_BACKOFF_INITIAL_MS: u64 = 100;
/// Default `supervisor.backoff_max_ms`.
pub const DEFAULT_BACKOFF_MAX_MS: u64 = 10_000;
/// Default `supervisor.backoff_multiplier`.
pub const DEFAULT_BACKOFF_MULTIPLIER: f64 = 2.0;
/// Default `supervisor.backoff_jitter`: the delay varies by up to this fraction either way.
pub const DEFAULT_BACKOFF_JITTER: f64 = 0.2;
/// Default `supervisor.stable_after_ms`: a node ready this long restarts at once.
pub const DEFAULT_STABLE_AFTER_MS: u64 = 10_000;

/// Default `hooks.timeout_ms`.
pub const DEFAULT_HOOK_TIMEOUT_MS: u64 = 10_000;

/// Default `worlds.default_world`.
pub const DEFAULT_WORLD: &str = "main";

/// The whole configuration. Build one in code with `SyncraConfig::default()` and its public
/// fields, or load one with [`crate::Loader`].
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyncraConfig {
    /// `[runtime]`: how the runtime watches its children and where it keeps files.
    pub runtime: RuntimeSection,
    /// `[supervisor]`: restart policy.
    pub supervisor: SupervisorSection,
    /// `[hooks]`: commands run at lifecycle points, for every node.
    pub hooks: Hooks,
    /// `[drivers]`: which drivers run, in start order.
    pub drivers: DriversSection,
    /// `[worlds]`: which worlds run.
    pub worlds: WorldsSection,
    /// `[streams]`: limits on dataflow streams.
    pub streams: StreamsSection,
    /// `[sandbox]` (or `sandbox = "strict"`): the mode, and grants for every node.
    #[serde(skip_serializing_if = "crate::sandbox::SandboxSpec::is_empty")]
    pub sandbox: crate::sandbox::SandboxSpec,
    /// `[hosts.<name>]`: other machines, each running `syncra agent`.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub hosts: std::collections::BTreeMap<String, HostSpec>,
    /// `[dashboard]`: the web dashboard on loopback (`syncra run --dashboard`).
    pub dashboard: DashboardSection,
}

/// Default `dashboard.port`.
pub const DEFAULT_DASHBOARD_PORT: u16 = 7878;
/// Default `dashboard.max_clients`.
pub const DEFAULT_DASHBOARD_CLIENTS: u32 = 32;
/// Largest accepted `dashboard.max_clients`.
pub const MAX_DASHBOARD_CLIENTS: u32 = 1024;

/// `[dashboard]`: the web dashboard the runtime serves on loopback.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DashboardSection {
    /// Serve it (`syncra run --dashboard` sets this).
    pub enabled: bool,
    /// TCP port on 127.0.0.1; 0 takes any free port (`syncra dashboard` prints the address).
    pub port: u16,
    /// Most connections at once (browsers, scrapers; 4 to 1024: a page uses up to 4); past it
    /// the oldest idle one closes, and when none is idle the newcomer is refused.
    pub max_clients: u32,
}

impl Default for DashboardSection {
    fn default() -> Self {
        Self {
            enabled: false,
            port: DEFAULT_DASHBOARD_PORT,
            max_clients: DEFAULT_DASHBOARD_CLIENTS,
        }
    }
}

/// Default `hosts.<name>.deadline_ms`.
pub const DEFAULT_HOST_DEADLINE_MS: u64 = 5_000;
/// Default `hosts.<name>.fence_grace_ms`.
pub const DEFAULT_FENCE_GRACE_MS: u64 = 2_000;

/// `[hosts.<name>]`: a machine running `syncra agent`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HostSpec {
    /// Where its agent listens: `host:port` (a name or an address).
    pub address: String,
    /// Its agent's identity, as `syncra agent` prints it (`sha256:` and 64 hex digits).
    pub fingerprint: String,
    /// The link's deadline, milliseconds: silent this long, the host is unreachable — the
    /// runtime counts its nodes lost, and the agent kills them (fencing). A partition shorter
    /// than this restarts nothing.
    pub deadline_ms: u64,
    /// After the deadline, how much longer the runtime waits before it starts a replacement
    /// of a lost node, milliseconds (time for the agent's fence to have happened).
    pub fence_grace_ms: u64,
}

impl Default for HostSpec {
    fn default() -> Self {
        Self {
            address: String::new(),
            fingerprint: String::new(),
            deadline_ms: DEFAULT_HOST_DEADLINE_MS,
            fence_grace_ms: DEFAULT_FENCE_GRACE_MS,
        }
    }
}

/// Default `streams.max_streams`.
pub const DEFAULT_MAX_STREAMS: u32 = 256;
/// Default `streams.max_ring_mb`.
pub const DEFAULT_MAX_RING_MB: u64 = 2048;
/// Default `streams.max_consumers`.
pub const DEFAULT_MAX_CONSUMERS: u32 = 32;

/// `[streams]`: what the Broker allows, so that a buggy producer cannot exhaust the machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamsSection {
    /// Most streams declared at once.
    pub max_streams: u32,
    /// Most shared memory for all rings together, MiB.
    pub max_ring_mb: u64,
    /// Most consumers of one stream (at most 32).
    pub max_consumers: u32,
}

impl Default for StreamsSection {
    fn default() -> Self {
        Self {
            max_streams: DEFAULT_MAX_STREAMS,
            max_ring_mb: DEFAULT_MAX_RING_MB,
            max_consumers: DEFAULT_MAX_CONSUMERS,
        }
    }
}

/// Default `runtime.max_links`.
pub const DEFAULT_MAX_LINKS: u32 = 64;

/// Largest accepted `runtime.max_links`.
pub const MAX_LINKS: u32 = 4096;

/// Default `runtime.crash_dumps_kept`.
pub const DEFAULT_CRASH_DUMPS_KEPT: u32 = 5;

/// Largest accepted `runtime.crash_dumps_kept`.
pub const MAX_CRASH_DUMPS_KEPT: u32 = 1000;

/// Default `runtime.crash_dump_max_bytes` (64 MiB).
pub const DEFAULT_CRASH_DUMP_MAX_BYTES: u64 = 64 << 20;

/// Smallest and largest accepted `runtime.crash_dump_max_bytes` (4 KiB, 4 GiB).
pub const CRASH_DUMP_BYTES_RANGE: (u64, u64) = (4 << 10, 4 << 30);

/// `[runtime]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeSection {
    /// Heartbeat interval, milliseconds: children beat twice per interval.
    pub watch_interval_ms: u64,
    /// Intervals without a heartbeat before a node is declared hung.
    pub missed_beats: u32,
    /// Restart children that fail. `false` leaves a failed child failed.
    pub auto_restart_crashed_processes: bool,
    /// Spawn to ready, milliseconds; longer is a failed start.
    pub start_timeout_ms: u64,
    /// Graceful stop request to SIGKILL, milliseconds.
    pub stop_timeout_ms: u64,
    /// SIGABRT of a hung node to SIGKILL, milliseconds.
    pub abort_grace_ms: u64,
    /// Directory of the runtime log and one log per child process.
    pub log_dir: PathBuf,
    /// Directory of crash records; default `<log_dir>/crashes`.
    pub crash_dir: Option<PathBuf>,
    /// Directory of the control socket; default `$XDG_RUNTIME_DIR/syncra`, else
    /// `/tmp/syncra-<uid>`.
    pub run_dir: Option<PathBuf>,
    /// Let nodes talk over direct links the runtime brokers, not through the hub, once they
    /// have talked; `false` keeps every message on the hub (to compare, or to debug).
    pub direct_links: bool,
    /// Most direct links one node has open at once, both ways; past it its messages go
    /// through the hub.
    pub max_links: u32,
    /// Where the runtime keeps its identity for other hosts (made on first use); default
    /// `$XDG_STATE_HOME/syncra`, else `~/.local/state/syncra`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_dir: Option<PathBuf>,
    /// Write a minidump of a node that crashes natively (a signal: SIGSEGV, SIGABRT, …), with
    /// its crashing thread's stack in the crash record.
    pub crash_dumps: bool,
    /// Minidumps kept per node in `<crash_dir>/dumps`: the oldest go first.
    pub crash_dumps_kept: u32,
    /// Largest minidump kept, bytes: a larger one is removed and its crash record says so.
    pub crash_dump_max_bytes: u64,
}

impl Default for RuntimeSection {
    fn default() -> Self {
        Self {
            watch_interval_ms: DEFAULT_WATCH_INTERVAL_MS,
            missed_beats: DEFAULT_MISSED_BEATS,
            auto_restart_crashed_processes: true,
            start_timeout_ms: DEFAULT_START_TIMEOUT_MS,
            stop_timeout_ms: DEFAULT_STOP_TIMEOUT_MS,
            abort_grace_ms: DEFAULT_ABORT_GRACE_MS,
            log_dir: PathBuf::from(DEFAULT_LOG_DIR),
            crash_dir: None,
            run_dir: None,
            direct_links: true,
            max_links: DEFAULT_MAX_LINKS,
            state_dir: None,
            crash_dumps: true,
            crash_dumps_kept: DEFAULT_CRASH_DUMPS_KEPT,
            crash_dump_max_bytes: DEFAULT_CRASH_DUMP_MAX_BYTES,
        }
    }
}

/// How a group reacts when one of its children must restart (OTP semantics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Restart only the child that failed.
    OneForOne,
    /// Restart every child of the group.
    OneForAll,
    /// Restart the child that failed and every child started after it.
    RestForOne,
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Strategy::OneForOne => "one_for_one",
            Strategy::OneForAll => "one_for_all",
            Strategy::RestForOne => "rest_for_one",
        })
    }
}

/// When a child is restarted (OTP semantics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestartType {
    /// Always restarted, whatever the exit.
    #[default]
    Permanent,
    /// Restarted only after a failure; a clean exit (code 0) ends it.
    Transient,
    /// Never restarted.
    Temporary,
}

impl fmt::Display for RestartType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RestartType::Permanent => "permanent",
            RestartType::Transient => "transient",
            RestartType::Temporary => "temporary",
        })
    }
}

/// What happens when a node exceeds its restart intensity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GiveUpAction {
    /// The node stays `failed`; everything else keeps running.
    #[default]
    KeepRunning,
    /// The runtime shuts down in order and exits non-zero.
    Shutdown,
}

/// `[supervisor]`: restart policy for every group, with per-group overrides.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SupervisorSection {
    /// Group strategy.
    pub strategy: Strategy,
    /// Restarts of one node allowed within `period_ms`; one more and the node gives up.
    pub intensity: u32,
    /// The intensity window, milliseconds.
    pub period_ms: u64,
    /// First restart delay after a failure, milliseconds.
    pub backoff_initial_ms: u64,
    /// Longest restart delay, milliseconds.
    pub backoff_max_ms: u64,
    /// Each failure in a row multiplies the delay by this.
    pub backoff_multiplier: f64,
    /// The delay varies randomly by up to this fraction either way (0 ≤ jitter < 1).
    pub backoff_jitter: f64,
    /// A node that was ready at least this long restarts at once, and its delay resets.
    pub stable_after_ms: u64,
    /// Keep a warm spare per node: a process of the node's program started ahead, waiting for
    /// its boot frame, that the next restart uses instead of spawning (Chromium's spare
    /// renderer). Restarts skip fork, exec and program start; each node costs one idle process.
    pub warm_spare: bool,
    /// What giving up on a node does.
    pub on_give_up: GiveUpAction,
    /// `[supervisor.drivers]`: overrides for the drivers group.
    pub drivers: GroupOverrides,
    /// `[supervisor.worlds]`: overrides for the worlds group.
    pub worlds: GroupOverrides,
}

impl Default for SupervisorSection {
    fn default() -> Self {
        Self {
            strategy: Strategy::OneForOne,
            intensity: DEFAULT_INTENSITY,
            period_ms: DEFAULT_PERIOD_MS,
            backoff_initial_ms: DEFAULT_BACKOFF_INITIAL_MS,
            backoff_max_ms: DEFAULT_BACKOFF_MAX_MS,
            backoff_multiplier: DEFAULT_BACKOFF_MULTIPLIER,
            backoff_jitter: DEFAULT_BACKOFF_JITTER,
            stable_after_ms: DEFAULT_STABLE_AFTER_MS,
            warm_spare: false,
            on_give_up: GiveUpAction::KeepRunning,
            drivers: GroupOverrides::default(),
            worlds: GroupOverrides::default(),
        }
    }
}

/// Per-group overrides of `[supervisor]`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GroupOverrides {
    /// Overrides `supervisor.strategy`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strategy: Option<Strategy>,
    /// Overrides `supervisor.intensity`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub intensity: Option<u32>,
    /// Overrides `supervisor.period_ms`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub period_ms: Option<u64>,
}

/// Commands run at lifecycle points. Each is run by `/bin/sh -c` with `SYNCRA_*` variables
/// describing the event; see the README's hook reference.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Hooks {
    /// A hook running longer is killed (and logged), milliseconds; default
    /// [`DEFAULT_HOOK_TIMEOUT_MS`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Before a node's process is spawned (every incarnation). Spawning waits for it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before_start: Option<String>,
    /// After a node announced readiness.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after_ready: Option<String>,
    /// After a node failed (crashed, hung, killed, failed to start).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_crash: Option<String>,
    /// After the supervisor gave up on a node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_give_up: Option<String>,
    /// After a node stopped on purpose.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after_stop: Option<String>,
}

impl Hooks {
    /// The command for `point`, if any.
    pub fn get(&self, point: HookPoint) -> Option<&str> {
        match point {
            HookPoint::BeforeStart => self.before_start.as_deref(),
            HookPoint::AfterReady => self.after_ready.as_deref(),
            HookPoint::OnCrash => self.on_crash.as_deref(),
            HookPoint::OnGiveUp => self.on_give_up.as_deref(),
            HookPoint::AfterStop => self.after_stop.as_deref(),
        }
    }
}

/// A lifecycle point a hook can run at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HookPoint {
    /// See [`Hooks::before_start`].
    BeforeStart,
    /// See [`Hooks::after_ready`].
    AfterReady,
    /// See [`Hooks::on_crash`].
    OnCrash,
    /// See [`Hooks::on_give_up`].
    OnGiveUp,
    /// See [`Hooks::after_stop`].
    AfterStop,
}

impl HookPoint {
    /// Every point, in lifecycle order.
    pub const ALL: [HookPoint; 5] = [
        HookPoint::BeforeStart,
        HookPoint::AfterReady,
        HookPoint::OnCrash,
        HookPoint::OnGiveUp,
        HookPoint::AfterStop,
    ];

    /// The config key (`before_start`), also the value of `SYNCRA_HOOK`.
    pub fn key(self) -> &'static str {
        match self {
            HookPoint::BeforeStart => "before_start",
            HookPoint::AfterReady => "after_ready",
            HookPoint::OnCrash => "on_crash",
            HookPoint::OnGiveUp => "on_give_up",
            HookPoint::AfterStop => "after_stop",
        }
    }
}

impl fmt::Display for HookPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key())
    }
}

/// How to run one node's process, and how to supervise it. Used by `[drivers.<name>]`,
/// `[worlds.<name>]` and, for every world, `[worlds]` itself.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeSpec {
    /// Drivers only: whether the driver runs (a table means `true` unless it says otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// The executable: a path, or a name looked up next to `syncra` and then on `PATH`.
    /// Built-in drivers and worlds have one by default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Arguments after the executable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    /// Extra environment variables.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, String>>,
    /// Restart type; default `permanent`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restart: Option<RestartType>,
    /// Nodes that must be ready before this one starts (`renderer`, `world/arena`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub depends_on: Option<Vec<String>>,
    /// Hung after this long without a heartbeat, milliseconds; default
    /// `watch_interval_ms × missed_beats`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heartbeat_deadline_ms: Option<u64>,
    /// Overrides `runtime.start_timeout_ms`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_timeout_ms: Option<u64>,
    /// Overrides `runtime.stop_timeout_ms`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_timeout_ms: Option<u64>,
    /// Hooks for this node only (run after the global ones).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hooks: Option<Hooks>,
    /// Free-form settings passed to the node as its config chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub settings: Option<toml::Table>,
    /// Worlds only: ticks per second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tick_hz: Option<f64>,
    /// Worlds only: entities in the seeded scene.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entities: Option<u32>,
    /// Worlds only: scene seed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// More than the node's default sandbox profile (or `"off"`, `"strict"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<crate::sandbox::SandboxSpec>,
    /// The host it runs on: a `[hosts.<name>]`, or `local` (the runtime's own, the default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Where a replacement starts while its host is unreachable: another `[hosts.<name>]`, or
    /// `local`. Unset: it waits for its host to come back.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback_host: Option<String>,
    /// When a reload or `syncra upgrade` gives it a new command and the new one fails to
    /// start, go back to the previous one by itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollback: Option<bool>,
    /// Worlds only: `"durable"` (the default) keeps the world's state outside its process so
    /// that its next incarnation resumes where it died; `"off"` starts every one from the seed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<StateMode>,
    /// Worlds only: ticks between durable states (default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_interval: Option<u32>,
    /// Worlds only: durable states kept (default 3, at least 2).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub states_kept: Option<u32>,
    /// Worlds only: crashes in a row, each within `state_poison_window_ms` of its start, after
    /// which the newest state is set aside as poison (default 3).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_poison_crashes: Option<u32>,
    /// Worlds only: see `state_poison_crashes` (default 5000).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_poison_window_ms: Option<u64>,
}

/// A world's `state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StateMode {
    /// Kept outside the world's process; a crash loses at most `state_interval` ticks.
    Durable,
    /// Not kept: every incarnation starts from the seed.
    Off,
}

/// The keys of [`NodeSpec`], for messages and for the `[worlds]` defaults.
pub const NODE_SPEC_KEYS: &[&str] = &[
    "enabled",
    "command",
    "args",
    "env",
    "restart",
    "depends_on",
    "heartbeat_deadline_ms",
    "start_timeout_ms",
    "stop_timeout_ms",
    "hooks",
    "settings",
    "tick_hz",
    "entities",
    "seed",
    "sandbox",
    "host",
    "fallback_host",
    "rollback",
    "state",
    "state_interval",
    "states_kept",
    "state_poison_crashes",
    "state_poison_window_ms",
];

/// The keys of [`NodeSpec`] that only worlds may use.
pub const WORLD_ONLY_KEYS: &[&str] = &[
    "tick_hz",
    "entities",
    "seed",
    "state",
    "state_interval",
    "states_kept",
    "state_poison_crashes",
    "state_poison_window_ms",
];

impl NodeSpec {
    /// `self` with every unset field taken from `defaults`.
    pub fn or(&self, defaults: &NodeSpec) -> NodeSpec {
        fn pick<T: Clone>(a: &Option<T>, b: &Option<T>) -> Option<T> {
            a.clone().or_else(|| b.clone())
        }
        NodeSpec {
            enabled: pick(&self.enabled, &defaults.enabled),
            command: pick(&self.command, &defaults.command),
            args: pick(&self.args, &defaults.args),
            env: match (&self.env, &defaults.env) {
                (Some(own), Some(base)) => {
                    let mut env = base.clone();
                    env.extend(own.iter().map(|(k, v)| (k.clone(), v.clone())));
                    Some(env)
                }
                (own, base) => pick(own, base),
            },
            restart: pick(&self.restart, &defaults.restart),
            depends_on: pick(&self.depends_on, &defaults.depends_on),
            heartbeat_deadline_ms: pick(
                &self.heartbeat_deadline_ms,
                &defaults.heartbeat_deadline_ms,
            ),
            start_timeout_ms: pick(&self.start_timeout_ms, &defaults.start_timeout_ms),
            stop_timeout_ms: pick(&self.stop_timeout_ms, &defaults.stop_timeout_ms),
            hooks: pick(&self.hooks, &defaults.hooks),
            settings: pick(&self.settings, &defaults.settings),
            tick_hz: pick(&self.tick_hz, &defaults.tick_hz),
            entities: pick(&self.entities, &defaults.entities),
            seed: pick(&self.seed, &defaults.seed),
            state: pick(&self.state, &defaults.state),
            state_interval: pick(&self.state_interval, &defaults.state_interval),
            states_kept: pick(&self.states_kept, &defaults.states_kept),
            state_poison_crashes: pick(&self.state_poison_crashes, &defaults.state_poison_crashes),
            state_poison_window_ms: pick(
                &self.state_poison_window_ms,
                &defaults.state_poison_window_ms,
            ),
            sandbox: pick(&self.sandbox, &defaults.sandbox),
            host: pick(&self.host, &defaults.host),
            fallback_host: pick(&self.fallback_host, &defaults.fallback_host),
            rollback: pick(&self.rollback, &defaults.rollback),
        }
    }

    /// Keys that are set, of those in `keys`.
    pub(crate) fn set_keys(&self, keys: &[&'static str]) -> Vec<&'static str> {
        let set = [
            ("enabled", self.enabled.is_some()),
            ("command", self.command.is_some()),
            ("args", self.args.is_some()),
            ("env", self.env.is_some()),
            ("restart", self.restart.is_some()),
            ("depends_on", self.depends_on.is_some()),
            (
                "heartbeat_deadline_ms",
                self.heartbeat_deadline_ms.is_some(),
            ),
            ("start_timeout_ms", self.start_timeout_ms.is_some()),
            ("stop_timeout_ms", self.stop_timeout_ms.is_some()),
            ("hooks", self.hooks.is_some()),
            ("settings", self.settings.is_some()),
            ("tick_hz", self.tick_hz.is_some()),
            ("entities", self.entities.is_some()),
            ("seed", self.seed.is_some()),
            ("sandbox", self.sandbox.is_some()),
            ("host", self.host.is_some()),
            ("fallback_host", self.fallback_host.is_some()),
            ("rollback", self.rollback.is_some()),
            ("state", self.state.is_some()),
            ("state_interval", self.state_interval.is_some()),
            ("states_kept", self.states_kept.is_some()),
            ("state_poison_crashes", self.state_poison_crashes.is_some()),
            (
                "state_poison_window_ms",
                self.state_poison_window_ms.is_some(),
            ),
        ];
        set.iter()
            .filter(|(k, on)| *on && keys.contains(k))
            .map(|(k, _)| *k)
            .collect()
    }
}

/// One entry of `[drivers]`: `name = true|false`, or a table.
#[derive(Debug, Clone, PartialEq)]
pub enum DriverEntry {
    /// `name = true` / `name = false`: a built-in driver with its defaults.
    Enabled(bool),
    /// `[drivers.name]`: the long form.
    Spec(Box<NodeSpec>),
}

impl DriverEntry {
    /// Whether the driver runs.
    pub fn is_enabled(&self) -> bool {
        match self {
            DriverEntry::Enabled(on) => *on,
            DriverEntry::Spec(spec) => spec.enabled.unwrap_or(true),
        }
    }

    /// The long form of this entry.
    pub fn spec(&self) -> NodeSpec {
        match self {
            DriverEntry::Enabled(on) => NodeSpec {
                enabled: Some(*on),
                ..NodeSpec::default()
            },
            DriverEntry::Spec(spec) => (**spec).clone(),
        }
    }
}

impl Serialize for DriverEntry {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            DriverEntry::Enabled(on) => s.serialize_bool(*on),
            DriverEntry::Spec(spec) => spec.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for DriverEntry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct EntryVisitor;
        impl<'de> Visitor<'de> for EntryVisitor {
            type Value = DriverEntry;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("`true`, `false` or a driver table")
            }
            fn visit_bool<E: de::Error>(self, on: bool) -> Result<DriverEntry, E> {
                Ok(DriverEntry::Enabled(on))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<DriverEntry, A::Error> {
                NodeSpec::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(|s| DriverEntry::Spec(Box::new(s)))
            }
        }
        d.deserialize_any(EntryVisitor)
    }
}

/// `[drivers]`: driver name → entry, in start order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DriversSection(pub Vec<(String, DriverEntry)>);

impl DriversSection {
    /// The entry called `name`.
    pub fn get(&self, name: &str) -> Option<&DriverEntry> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, e)| e)
    }

    /// Set (or replace, keeping its place) the entry called `name`.
    pub fn set(&mut self, name: impl Into<String>, entry: DriverEntry) {
        let name = name.into();
        match self.0.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = entry,
            None => self.0.push((name, entry)),
        }
    }
}

impl Serialize for DriversSection {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (name, entry) in &self.0 {
            map.serialize_entry(name, entry)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for DriversSection {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct SectionVisitor;
        impl<'de> Visitor<'de> for SectionVisitor {
            type Value = DriversSection;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a table of drivers (`name = true` or `[drivers.name]`)")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<DriversSection, A::Error> {
                let mut out = DriversSection::default();
                while let Some(name) = map.next_key::<String>()? {
                    let entry = map.next_value::<DriverEntry>()?;
                    out.set(name, entry);
                }
                Ok(out)
            }
        }
        d.deserialize_map(SectionVisitor)
    }
}

/// `[worlds]`: the default world, how many worlds, defaults for every world, and the
/// `[worlds.<name>]` tables.
#[derive(Debug, Clone, PartialEq)]
pub struct WorldsSection {
    /// The first world; `--worlds N` adds generated names after it.
    pub default_world: String,
    /// How many worlds run; default: the default world plus every named one.
    pub count: Option<u32>,
    /// Extra worlds by name, in order (a short form of empty `[worlds.<name>]` tables).
    pub names: Vec<String>,
    /// Hosts the worlds are spread over, in turn (`--hosts a,b`; `local` is the runtime's
    /// own); a world whose table names its `host` keeps it. Empty: every world on `host`.
    pub spread: Vec<String>,
    /// Settings for every world (the [`NodeSpec`] keys written directly in `[worlds]`).
    pub defaults: NodeSpec,
    /// `[worlds.<name>]` tables, in file order.
    pub tables: Vec<(String, NodeSpec)>,
}

impl Default for WorldsSection {
    fn default() -> Self {
        Self {
            default_world: DEFAULT_WORLD.to_owned(),
            count: None,
            names: Vec::new(),
            spread: Vec::new(),
            defaults: NodeSpec::default(),
            tables: Vec::new(),
        }
    }
}

/// The keys `[worlds]` itself has, besides the [`NodeSpec`] defaults and world tables.
pub const WORLDS_SECTION_KEYS: &[&str] = &["default_world", "count", "names", "spread"];

impl Serialize for WorldsSection {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Serialize the defaults through a TOML table so that only set keys appear.
        let defaults = toml::Table::try_from(&self.defaults).map_err(serde::ser::Error::custom)?;
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("default_world", &self.default_world)?;
        if let Some(count) = self.count {
            map.serialize_entry("count", &count)?;
        }
        if !self.names.is_empty() {
            map.serialize_entry("names", &self.names)?;
        }
        if !self.spread.is_empty() {
            map.serialize_entry("spread", &self.spread)?;
        }
        for (k, v) in &defaults {
            map.serialize_entry(k, v)?;
        }
        for (name, spec) in &self.tables {
            map.serialize_entry(name, spec)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for WorldsSection {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct SectionVisitor;
        impl<'de> Visitor<'de> for SectionVisitor {
            type Value = WorldsSection;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("the [worlds] table")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<WorldsSection, A::Error> {
                let mut out = WorldsSection::default();
                let d = &mut out.defaults;
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "default_world" => out.default_world = map.next_value()?,
                        "count" => out.count = Some(map.next_value()?),
                        "names" => out.names = map.next_value()?,
                        "spread" => out.spread = map.next_value()?,
                        "enabled" => {
                            return Err(de::Error::custom(
                                "`enabled` is a driver key; to run fewer worlds set `count` or remove a world",
                            ));
                        }
                        "command" => d.command = Some(map.next_value()?),
                        "args" => d.args = Some(map.next_value()?),
                        "env" => d.env = Some(map.next_value()?),
                        "restart" => d.restart = Some(map.next_value()?),
                        "depends_on" => d.depends_on = Some(map.next_value()?),
                        "heartbeat_deadline_ms" => {
                            d.heartbeat_deadline_ms = Some(map.next_value()?)
                        }
                        "start_timeout_ms" => d.start_timeout_ms = Some(map.next_value()?),
                        "stop_timeout_ms" => d.stop_timeout_ms = Some(map.next_value()?),
                        "hooks" => d.hooks = Some(map.next_value()?),
                        "settings" => d.settings = Some(map.next_value()?),
                        "tick_hz" => d.tick_hz = Some(map.next_value()?),
                        "entities" => d.entities = Some(map.next_value()?),
                        "seed" => d.seed = Some(map.next_value()?),
                        "sandbox" => d.sandbox = Some(map.next_value()?),
                        "host" => d.host = Some(map.next_value()?),
                        "fallback_host" => d.fallback_host = Some(map.next_value()?),
                        "rollback" => d.rollback = Some(map.next_value()?),
                        "state" => d.state = Some(map.next_value()?),
                        "state_interval" => d.state_interval = Some(map.next_value()?),
                        "states_kept" => d.states_kept = Some(map.next_value()?),
                        "state_poison_crashes" => d.state_poison_crashes = Some(map.next_value()?),
                        "state_poison_window_ms" => {
                            d.state_poison_window_ms = Some(map.next_value()?)
                        }
                        _ => {
                            let spec = map.next_value::<WorldTable>()?.0;
                            out.tables.push((key, spec));
                        }
                    }
                }
                Ok(out)
            }
        }
        d.deserialize_map(SectionVisitor)
    }
}

/// A `[worlds.<name>]` table; anything else under an unknown key of `[worlds]` is a
/// misspelt key, and the error says so.
struct WorldTable(NodeSpec);

impl<'de> Deserialize<'de> for WorldTable {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct TableVisitor;
        impl<'de> Visitor<'de> for TableVisitor {
            type Value = WorldTable;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(
                    f,
                    "a world table [worlds.<name>], or one of the keys {}, {}",
                    WORLDS_SECTION_KEYS.join(", "),
                    NODE_SPEC_KEYS
                        .iter()
                        .filter(|k| **k != "enabled")
                        .copied()
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<WorldTable, A::Error> {
                NodeSpec::deserialize(de::value::MapAccessDeserializer::new(map)).map(WorldTable)
            }
        }
        d.deserialize_any(TableVisitor)
    }
}
