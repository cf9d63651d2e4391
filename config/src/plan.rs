//! Validation and resolution: a [`SyncraConfig`] becomes a [`Plan`], the list of nodes the
//! runtime starts with every default filled in — or a list of every [`Problem`] found.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use syncra_protocol::boot::HeartbeatPlan;
use syncra_protocol::status::validate_component;
use syncra_protocol::world::{
    DEFAULT_ENTITIES, DEFAULT_SEED, DEFAULT_TICK_HZ, WorldGame, WorldSettings,
};
use syncra_protocol::{NodeKind, NodeName, wire};

use crate::model::*;
use crate::sandbox::{SandboxProfile, SandboxSpec, default_profile};

/// Built-in drivers and the executable each runs by default.
pub const BUILTIN_DRIVERS: &[(&str, &str)] = &[
    ("window", "syncra-window"),
    ("renderer", "syncra-renderer"),
    ("audio", "syncra-audio"),
    ("input", "syncra-input"),
    ("xr", "syncra-xr"),
    // The seed's name for the same driver: its streams are then `openxr/pose` and
    // `openxr/actions` (name it in the renderer's, input's and worlds' `xr` settings).
    ("openxr", "syncra-xr"),
];

/// The executable a world runs by default.
pub const WORLD_EXECUTABLE: &str = "syncra-world";

/// Most worlds one runtime runs.
pub const MAX_WORLDS: u32 = 4096;
/// Shortest accepted `watch_interval_ms`.
pub const MIN_WATCH_INTERVAL_MS: u64 = 10;
/// Highest accepted world tick rate.
pub const MAX_TICK_HZ: f64 = 10_000.0;
/// Largest config chunk a node receives (its boot frame holds at most 1 MiB).
pub const MAX_CHUNK: usize = 512 * 1024;
/// Most entities in one world's scene.
pub const MAX_ENTITIES: u32 = 1_000_000;
/// Longest accepted `watch_interval_ms` (an hour): longer would all but turn hang
/// detection off.
pub const MAX_WATCH_INTERVAL_MS: u64 = 3_600_000;
/// Most accepted `missed_beats`.
pub const MAX_MISSED_BEATS: u32 = 1000;
/// Longest accepted duration of any other kind (timeouts, delays, windows, deadlines): a day.
pub const MAX_DURATION_MS: u64 = 86_400_000;
/// Most accepted restarts within one intensity window.
pub const MAX_INTENSITY: u32 = 1_000_000;
/// Largest accepted `backoff_multiplier`.
pub const MAX_BACKOFF_MULTIPLIER: f64 = 1000.0;
/// Most accepted `streams.max_streams`.
pub const MAX_STREAMS: u32 = 65_536;
/// Most accepted `streams.max_ring_mb` (1 TiB).
pub const MAX_RING_MB: u64 = 1 << 20;

/// One thing wrong with a config, located by its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key (`runtime.watch_interval_ms`), empty for the whole document.
    pub key: String,
    /// What is wrong and what was expected.
    pub message: String,
    /// Where the value came from (`config/server.toml`, `environment variable SYNCRA_…`,
    /// `command-line flag --worlds`), when known.
    pub source: Option<String>,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(src) = &self.source {
            write!(f, "{src}: ")?;
        }
        if self.key.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "`{}`: {}", self.key, self.message)
        }
    }
}

/// Restart delays after failures.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Backoff {
    /// First delay.
    pub initial: Duration,
    /// Longest delay.
    pub max: Duration,
    /// Growth per failure in a row.
    pub multiplier: f64,
    /// Random variation, as a fraction either way.
    pub jitter: f64,
}

/// One group's restart policy, resolved.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct GroupPolicy {
    /// Which siblings restart with a failed child.
    pub strategy: Strategy,
    /// Restarts of one node allowed within `period`.
    pub intensity: u32,
    /// The intensity window.
    pub period: Duration,
    /// Restart delays.
    pub backoff: Backoff,
    /// A node ready this long restarts at once.
    pub stable_after: Duration,
    /// Each node keeps a warm spare process for its next restart.
    pub warm_spare: bool,
}

/// One node, resolved: everything the runtime needs to spawn and supervise it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodePlan {
    /// Logical name.
    pub name: NodeName,
    /// Driver or world.
    pub kind: NodeKind,
    /// Executable: a path (contains `/`) or a name to look up next to `syncra`, then on `PATH`.
    pub command: String,
    /// Arguments.
    pub args: Vec<String>,
    /// Extra environment.
    pub env: BTreeMap<String, String>,
    /// Restart type.
    pub restart: RestartType,
    /// Nodes that must be ready first.
    pub depends_on: Vec<NodeName>,
    /// Heartbeat obligations.
    pub heartbeat: HeartbeatPlan,
    /// Spawn to ready, or the start failed.
    pub start_timeout: Duration,
    /// Graceful stop to SIGKILL.
    pub stop_timeout: Duration,
    /// This node's own hooks (run after the global ones).
    pub hooks: Hooks,
    /// The config chunk passed to the node, MessagePack.
    #[serde(skip)]
    pub settings: Vec<u8>,
    /// For worlds: what the chunk holds.
    pub world: Option<WorldSettings>,
    /// What it may touch: its kind's defaults with the config's grants.
    pub sandbox: SandboxProfile,
    /// The `[hosts]` entry it runs on; `None`: the runtime's own host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Where a replacement starts while its host is unreachable: `Some(None)` the runtime's
    /// own host, `Some(Some(name))` another; `None`: it waits for its host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback_host: Option<Option<String>>,
    /// A new command that fails to start is replaced by the previous one by itself.
    pub rollback: bool,
}

/// A group of nodes under one policy.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupPlan {
    /// The policy.
    pub policy: GroupPolicy,
    /// The nodes in start order.
    pub nodes: Vec<NodePlan>,
}

/// Runtime-wide settings, resolved.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RuntimePlan {
    /// Heartbeat interval.
    pub watch_interval: Duration,
    /// Whether failed children restart.
    pub auto_restart: bool,
    /// SIGABRT of a hung node to SIGKILL.
    pub abort_grace: Duration,
    /// Log directory.
    pub log_dir: PathBuf,
    /// Crash record directory.
    pub crash_dir: PathBuf,
    /// Control socket directory.
    pub run_dir: PathBuf,
    /// What giving up on a node does.
    pub on_give_up: GiveUpAction,
    /// Limits on dataflow streams.
    pub streams: StreamLimits,
    /// Whether nodes get direct links.
    pub direct_links: bool,
    /// Most direct links per node.
    pub max_links: usize,
    /// Where the runtime keeps its identity for other hosts.
    pub state_dir: PathBuf,
    /// Minidumps of native crashes, when written (`runtime.crash_dumps`).
    pub dumps: Option<DumpLimits>,
    /// The web dashboard, when served (`[dashboard]`).
    pub dashboard: Option<DashboardPlan>,
}

/// The web dashboard: where it listens and how many clients it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DashboardPlan {
    /// Port on 127.0.0.1 (0: any free one).
    pub port: u16,
    /// Most connections at once.
    pub max_clients: usize,
}

/// How many minidumps are kept per node, and how large one may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DumpLimits {
    /// Kept per node (`runtime.crash_dumps_kept`).
    pub keep: usize,
    /// Largest kept, bytes (`runtime.crash_dump_max_bytes`).
    pub max_bytes: u64,
}

/// A host, checked: its agent's address and pinned identity.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostPlan {
    /// Its name in the config.
    pub name: String,
    /// `host:port`.
    pub address: String,
    /// Its agent's fingerprint.
    #[serde(serialize_with = "crate::plan::display")]
    pub fingerprint: syncra_protocol::agent::Fingerprint,
    /// Silent this long, the host is unreachable and its nodes are fenced.
    pub deadline: Duration,
    /// After the deadline, the wait before a lost node's replacement starts.
    pub fence_grace: Duration,
}

fn display<S: serde::Serializer, T: std::fmt::Display>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// Limits on dataflow streams, from `[streams]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct StreamLimits {
    /// Most streams declared at once.
    pub max_streams: usize,
    /// Most bytes of shared memory for all rings together.
    pub max_ring_bytes: u64,
    /// Most consumers of one stream.
    pub max_consumers: usize,
}

/// Everything the runtime starts, in order: drivers, then worlds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    /// Runtime-wide settings.
    pub runtime: RuntimePlan,
    /// Other hosts, by name (`[hosts]`).
    pub hosts: Vec<HostPlan>,
    /// Hooks for every node.
    pub hooks: Hooks,
    /// The drivers group.
    pub drivers: GroupPlan,
    /// The worlds group.
    pub worlds: GroupPlan,
}

impl Plan {
    /// Every node: drivers in start order, then worlds.
    pub fn nodes(&self) -> impl Iterator<Item = &NodePlan> {
        self.drivers.nodes.iter().chain(&self.worlds.nodes)
    }

    /// The node called `name`.
    pub fn node(&self, name: &str) -> Option<&NodePlan> {
        self.nodes().find(|n| n.name.as_str() == name)
    }
}

/// The run directory used when none is configured: `$XDG_RUNTIME_DIR/syncra` when that
/// variable names a directory, else `/tmp/syncra-<uid>`.
pub fn default_run_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
        Some(dir) if dir.is_absolute() && dir.is_dir() => dir.join("syncra"),
        _ => PathBuf::from(format!(
            "/tmp/syncra-{}",
            rustix::process::getuid().as_raw()
        )),
    }
}

/// Where a runtime keeps its identity for other hosts when neither config nor command line
/// says: `$XDG_STATE_HOME/syncra`, else `~/.local/state/syncra`, else `/var/lib/syncra`.
pub fn default_state_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("syncra");
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(home) => PathBuf::from(home).join(".local/state/syncra"),
        None => PathBuf::from("/var/lib/syncra"),
    }
}

/// The world names `worlds` describes, in order: the default world, `names`, the tables, then
/// generated names `<default>-2`, `<default>-3`, … up to `count`.
fn world_names(worlds: &WorldsSection, problems: &mut Vec<Problem>) -> Vec<String> {
    let mut out: Vec<String> = vec![worlds.default_world.clone()];
    for (i, name) in worlds.names.iter().enumerate() {
        if out.contains(name) {
            problems.push(problem(
                format!("worlds.names[{i}]"),
                format!("duplicate world name `{name}`: every world needs its own name"),
            ));
        } else {
            out.push(name.clone());
        }
    }
    for (name, _) in &worlds.tables {
        if !out.contains(name) {
            out.push(name.clone());
        }
    }
    if let Some(count) = worlds.count {
        let count = count as usize;
        if count < out.len() {
            problems.push(problem(
                "worlds.count",
                format!(
                    "{count} world(s) requested but the config names {}: {}; raise the count or remove names",
                    out.len(),
                    out.join(", ")
                ),
            ));
        }
        let mut k = 2;
        while out.len() < count {
            let generated = format!("{}-{k}", worlds.default_world);
            if !out.contains(&generated) {
                out.push(generated);
            }
            k += 1;
        }
    }
    out
}

fn problem(key: impl Into<String>, message: impl Into<String>) -> Problem {
    Problem {
        key: key.into(),
        message: message.into(),
        source: None,
    }
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

/// Resolve `config` into a [`Plan`], or report every problem found. Relative directories are
/// taken as they are (the loader has already made file-relative paths absolute).
pub fn plan(config: &SyncraConfig) -> Result<Plan, Vec<Problem>> {
    let mut problems = Vec::new();
    let rt = &config.runtime;
    let sup = &config.supervisor;

    // ---- runtime
    let (watch, beats) = (rt.watch_interval_ms, rt.missed_beats);
    in_range(
        &mut problems,
        "runtime.watch_interval_ms",
        watch,
        MIN_WATCH_INTERVAL_MS,
        MAX_WATCH_INTERVAL_MS,
        "milliseconds",
    );
    in_range(
        &mut problems,
        "runtime.missed_beats",
        beats.into(),
        1,
        MAX_MISSED_BEATS.into(),
        "heartbeats",
    );
    if watch <= MAX_WATCH_INTERVAL_MS
        && beats <= MAX_MISSED_BEATS
        && watch * u64::from(beats) > MAX_DURATION_MS
    {
        problems.push(problem(
            "runtime.missed_beats",
            format!(
                "{beats} × runtime.watch_interval_ms = {watch} makes a heartbeat deadline of {} ms, more than a day ({MAX_DURATION_MS} ms): a hung node would go unnoticed",
                watch * u64::from(beats)
            ),
        ));
    }
    for (key, value) in [
        ("runtime.start_timeout_ms", rt.start_timeout_ms),
        ("runtime.stop_timeout_ms", rt.stop_timeout_ms),
    ] {
        duration(&mut problems, key, value, 1);
    }
    duration(
        &mut problems,
        "runtime.abort_grace_ms",
        rt.abort_grace_ms,
        0,
    );
    for (key, dir) in [
        ("runtime.log_dir", Some(&rt.log_dir)),
        ("runtime.crash_dir", rt.crash_dir.as_ref()),
        ("runtime.run_dir", rt.run_dir.as_ref()),
    ] {
        if dir.is_some_and(|d| d.as_os_str().is_empty()) {
            problems.push(problem(key, "is empty: expected a directory path"));
        }
    }

    // ---- supervisor
    duration(&mut problems, "supervisor.period_ms", sup.period_ms, 1);
    duration(
        &mut problems,
        "supervisor.backoff_initial_ms",
        sup.backoff_initial_ms,
        0,
    );
    duration(
        &mut problems,
        "supervisor.backoff_max_ms",
        sup.backoff_max_ms,
        1,
    );
    duration(
        &mut problems,
        "supervisor.stable_after_ms",
        sup.stable_after_ms,
        0,
    );
    in_range(
        &mut problems,
        "supervisor.intensity",
        sup.intensity.into(),
        0,
        MAX_INTENSITY.into(),
        "restarts",
    );
    if sup.backoff_initial_ms > sup.backoff_max_ms {
        problems.push(problem(
            "supervisor.backoff_initial_ms",
            format!(
                "{} is larger than supervisor.backoff_max_ms = {}",
                sup.backoff_initial_ms, sup.backoff_max_ms
            ),
        ));
    }
    if !(sup.backoff_multiplier.is_finite()
        && (1.0..=MAX_BACKOFF_MULTIPLIER).contains(&sup.backoff_multiplier))
    {
        problems.push(problem(
            "supervisor.backoff_multiplier",
            format!(
                "{} is invalid: expected a number from 1.0 to {MAX_BACKOFF_MULTIPLIER}",
                sup.backoff_multiplier
            ),
        ));
    }
    if !(sup.backoff_jitter.is_finite() && (0.0..1.0).contains(&sup.backoff_jitter)) {
        problems.push(problem(
            "supervisor.backoff_jitter",
            format!(
                "{} is invalid: expected a fraction from 0.0 up to (not including) 1.0",
                sup.backoff_jitter
            ),
        ));
    }
    for (group, o) in [("drivers", &sup.drivers), ("worlds", &sup.worlds)] {
        if let Some(p) = o.period_ms {
            duration(
                &mut problems,
                &format!("supervisor.{group}.period_ms"),
                p,
                1,
            );
        }
        if let Some(i) = o.intensity {
            in_range(
                &mut problems,
                &format!("supervisor.{group}.intensity"),
                i.into(),
                0,
                MAX_INTENSITY.into(),
                "restarts",
            );
        }
    }
    hooks_problems(&mut problems, "hooks", &config.hooks);

    sandbox_problems(&mut problems, config);

    let default_deadline = rt.watch_interval_ms.saturating_mul(rt.missed_beats as u64);
    let mut nodes: Vec<(NodeSpec, NodePlan, String)> = Vec::new();

    // ---- drivers
    for (name, entry) in &config.drivers.0 {
        let key = format!("drivers.{name}");
        if let Err(msg) = validate_component("driver name", name) {
            problems.push(problem(&key, msg));
            continue;
        }
        if name == "world" {
            problems.push(problem(
                &key,
                "`world` is reserved for worlds; name the driver differently",
            ));
            continue;
        }
        if name.starts_with("world-") {
            problems.push(problem(
                &key,
                "`world-…` is reserved: world `world/X` keeps its log and its directory as `world-X`; name the driver differently",
            ));
            continue;
        }
        if !entry.is_enabled() {
            continue;
        }
        let spec = entry.spec();
        for k in spec.set_keys(WORLD_ONLY_KEYS) {
            problems.push(problem(
                format!("{key}.{k}"),
                format!("`{k}` is a world setting; drivers take their settings in `settings`"),
            ));
        }
        let command = match (
            &spec.command,
            BUILTIN_DRIVERS.iter().find(|(b, _)| b == name),
        ) {
            (Some(c), _) => c.clone(),
            (None, Some((_, exe))) => (*exe).to_owned(),
            (None, None) => {
                let builtins: Vec<_> = BUILTIN_DRIVERS.iter().map(|(b, _)| *b).collect();
                problems.push(problem(
                    format!("{key}.command"),
                    format!(
                        "missing: `{name}` is not a built-in driver ({}), so its table must name the executable to run",
                        builtins.join(", ")
                    ),
                ));
                continue;
            }
        };
        let settings = spec.settings.clone().unwrap_or_default();
        let mut plan = node_plan(
            &mut problems,
            &key,
            NodeName::driver(name),
            command,
            &spec,
            config,
            default_deadline,
            wire::encode(&settings),
            None,
        );
        if name == "audio" {
            // The audio driver reads its sounds from `settings.assets` (relative to the
            // runtime's working directory, as the driver resolves it).
            let assets = settings
                .get("assets")
                .and_then(|v| v.as_str())
                .unwrap_or(AUDIO_ASSETS);
            plan.sandbox.read.push(PathBuf::from(assets));
        }
        nodes.push((spec, plan, key));
    }
    let driver_count = nodes.len();

    // ---- worlds
    let w = &config.worlds;
    if let Err(msg) = validate_component("world name", &w.default_world) {
        problems.push(problem("worlds.default_world", msg));
    }
    for (i, name) in w.names.iter().enumerate() {
        if let Err(msg) = validate_component("world name", name) {
            problems.push(problem(format!("worlds.names[{i}]"), msg));
        }
    }
    for (name, _) in &w.tables {
        if let Err(msg) = validate_component("world name", name) {
            problems.push(problem(format!("worlds.{name}"), msg));
        }
    }
    if let Some(count) = w.count
        && (count == 0 || count > MAX_WORLDS)
    {
        problems.push(problem(
            "worlds.count",
            format!("{count} is out of range: expected 1 to {MAX_WORLDS}"),
        ));
    }
    if w.defaults.enabled.is_some() {
        problems.push(problem("worlds.enabled", "`enabled` is a driver key"));
    }
    // `--hosts a,b`: each entry checked once, here; the worlds take the valid ones in turn.
    let spread: Vec<String> = w
        .spread
        .iter()
        .enumerate()
        .filter(|(i, h)| {
            host_of(
                &mut problems,
                config,
                &format!("worlds.spread[{i}]"),
                Some(h),
            )
            .is_some()
        })
        .map(|(_, h)| h.clone())
        .collect();
    // The worlds that name no host of their own take the spread's hosts in turn.
    let mut spread_turn = 0;
    for (index, name) in world_names(w, &mut problems).into_iter().enumerate() {
        let key = if w.tables.iter().any(|(n, _)| *n == name) {
            format!("worlds.{name}")
        } else {
            "worlds".to_owned()
        };
        let own = w
            .tables
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, s)| s.clone())
            .unwrap_or_default();
        if own.enabled.is_some() {
            problems.push(problem(
                format!("{key}.enabled"),
                "`enabled` is a driver key; remove the world instead",
            ));
        }
        let mut spec = own.or(&w.defaults);
        if own.host.is_none() && !spread.is_empty() {
            spec.host = Some(spread[spread_turn % spread.len()].clone());
            spread_turn += 1;
        }
        let settings = WorldSettings {
            name: name.clone(),
            tick_hz: spec.tick_hz.unwrap_or(DEFAULT_TICK_HZ),
            entities: spec.entities.unwrap_or(DEFAULT_ENTITIES),
            seed: own.seed.unwrap_or_else(|| {
                w.defaults
                    .seed
                    .unwrap_or(DEFAULT_SEED)
                    .wrapping_add(index as u64)
            }),
            game: match &spec.settings {
                None => WorldGame::default(),
                Some(table) => match toml::Value::Table(table.clone()).try_into::<WorldGame>() {
                    Ok(g) => g,
                    Err(e) => {
                        let k = if own.settings.is_some() {
                            format!("{key}.settings")
                        } else {
                            "worlds.settings".into()
                        };
                        problems.push(problem(k, e.message().trim().to_owned()));
                        WorldGame::default()
                    }
                },
            },
            state: syncra_protocol::world::WorldState {
                durable: spec.state != Some(crate::model::StateMode::Off),
                interval: spec.state_interval.unwrap_or(1),
                kept: spec.states_kept.unwrap_or(3),
                poison_crashes: spec.state_poison_crashes.unwrap_or(3),
                poison_window_ms: spec.state_poison_window_ms.unwrap_or(5000),
            },
        };
        let own_or = |k: &str, set: bool| {
            if set {
                format!("{key}.{k}")
            } else {
                format!("worlds.{k}")
            }
        };
        in_range(
            &mut problems,
            &own_or("state_interval", own.state_interval.is_some()),
            u64::from(settings.state.interval),
            1,
            3600 * 1000,
            "ticks",
        );
        in_range(
            &mut problems,
            &own_or("state_poison_crashes", own.state_poison_crashes.is_some()),
            u64::from(settings.state.poison_crashes),
            1,
            1000,
            "crashes",
        );
        in_range(
            &mut problems,
            &own_or(
                "state_poison_window_ms",
                own.state_poison_window_ms.is_some(),
            ),
            settings.state.poison_window_ms,
            1,
            MAX_DURATION_MS,
            "ms",
        );
        in_range(
            &mut problems,
            &own_or("states_kept", own.states_kept.is_some()),
            u64::from(settings.state.kept),
            2,
            64,
            "states",
        );
        if !(settings.tick_hz.is_finite()
            && settings.tick_hz > 0.0
            && settings.tick_hz <= MAX_TICK_HZ)
        {
            let k = if own.tick_hz.is_some() {
                format!("{key}.tick_hz")
            } else {
                "worlds.tick_hz".into()
            };
            problems.push(problem(
                k,
                format!(
                    "{} is out of range: expected more than 0 and at most {MAX_TICK_HZ}",
                    settings.tick_hz
                ),
            ));
        }
        if settings.entities > MAX_ENTITIES {
            let k = if own.entities.is_some() {
                format!("{key}.entities")
            } else {
                "worlds.entities".into()
            };
            problems.push(problem(
                k,
                format!(
                    "{} is out of range: expected at most {MAX_ENTITIES}",
                    settings.entities
                ),
            ));
        }
        let command = spec
            .command
            .clone()
            .unwrap_or_else(|| WORLD_EXECUTABLE.to_owned());
        let chunk = wire::encode(&settings);
        let plan = node_plan(
            &mut problems,
            &key,
            NodeName::world(&name),
            command,
            &spec,
            config,
            default_deadline,
            chunk,
            Some(settings),
        );
        nodes.push((spec, plan, key));
    }

    dependency_problems(&mut problems, &nodes, driver_count);

    let st = &config.streams;
    in_range(
        &mut problems,
        "streams.max_streams",
        u64::from(st.max_streams),
        1,
        MAX_STREAMS.into(),
        "streams",
    );
    in_range(
        &mut problems,
        "streams.max_ring_mb",
        st.max_ring_mb,
        1,
        MAX_RING_MB,
        "MiB",
    );
    if st.max_consumers == 0 || st.max_consumers as usize > syncra_protocol::ring::MAX_CONSUMERS {
        problems.push(problem(
            "streams.max_consumers",
            format!(
                "{} is out of range: expected 1 to {}",
                st.max_consumers,
                syncra_protocol::ring::MAX_CONSUMERS
            ),
        ));
    }

    if rt.max_links == 0 || rt.max_links > crate::model::MAX_LINKS {
        problems.push(problem(
            "runtime.max_links",
            format!(
                "{} is out of range: expected 1 to {}",
                rt.max_links,
                crate::model::MAX_LINKS
            ),
        ));
    }

    in_range(
        &mut problems,
        "runtime.crash_dumps_kept",
        u64::from(rt.crash_dumps_kept),
        1,
        u64::from(crate::model::MAX_CRASH_DUMPS_KEPT),
        "dumps",
    );
    let (least, most) = crate::model::CRASH_DUMP_BYTES_RANGE;
    in_range(
        &mut problems,
        "runtime.crash_dump_max_bytes",
        rt.crash_dump_max_bytes,
        least,
        most,
        "bytes",
    );

    in_range(
        &mut problems,
        "dashboard.max_clients",
        u64::from(config.dashboard.max_clients),
        4,
        u64::from(crate::model::MAX_DASHBOARD_CLIENTS),
        "connections",
    );

    let mut hosts = Vec::new();
    for (name, h) in &config.hosts {
        let key = |k: &str| format!("hosts.{name}.{k}");
        if NodeName::parse(name).is_err() || name.contains('/') {
            problems.push(problem(
                format!("hosts.{name}"),
                "a host's name is letters, digits, `-` and `_`",
            ));
        }
        if name == syncra_protocol::agent::LOCAL_HOST {
            problems.push(problem(
                format!("hosts.{name}"),
                "`local` names the runtime's own host: give this one another name",
            ));
        }
        // The deadline is a lease the agent keeps by pings a fifth of it apart: under 500 ms
        // it would fence on an ordinary hiccup.
        in_range(
            &mut problems,
            &key("deadline_ms"),
            h.deadline_ms,
            500,
            MAX_DURATION_MS,
            "ms",
        );
        in_range(
            &mut problems,
            &key("fence_grace_ms"),
            h.fence_grace_ms,
            0,
            MAX_DURATION_MS,
            "ms",
        );
        let port_ok = h.address.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if !port_ok {
            problems.push(problem(
                key("address"),
                format!(
                    "`{}` is not `host:port` (for example `10.0.0.2:7800` or `gpu-box.lan:7800`)",
                    h.address
                ),
            ));
        }
        match h.fingerprint.parse::<syncra_protocol::agent::Fingerprint>() {
            Ok(fingerprint) => hosts.push(HostPlan {
                name: name.clone(),
                address: h.address.clone(),
                fingerprint,
                deadline: ms(h.deadline_ms),
                fence_grace: ms(h.fence_grace_ms),
            }),
            Err(e) => problems.push(problem(key("fingerprint"), e.to_string())),
        }
    }

    if !problems.is_empty() {
        return Err(problems);
    }
    let log_dir = rt.log_dir.clone();
    let runtime = RuntimePlan {
        watch_interval: ms(rt.watch_interval_ms),
        auto_restart: rt.auto_restart_crashed_processes,
        abort_grace: ms(rt.abort_grace_ms),
        crash_dir: rt
            .crash_dir
            .clone()
            .unwrap_or_else(|| log_dir.join("crashes")),
        run_dir: rt.run_dir.clone().unwrap_or_else(default_run_dir),
        log_dir,
        on_give_up: sup.on_give_up,
        streams: StreamLimits {
            max_streams: st.max_streams as usize,
            max_ring_bytes: st.max_ring_mb.saturating_mul(1 << 20),
            max_consumers: st.max_consumers as usize,
        },
        direct_links: rt.direct_links,
        max_links: rt.max_links as usize,
        state_dir: rt.state_dir.clone().unwrap_or_else(default_state_dir),
        dumps: rt.crash_dumps.then_some(DumpLimits {
            keep: rt.crash_dumps_kept as usize,
            max_bytes: rt.crash_dump_max_bytes,
        }),
        dashboard: config.dashboard.enabled.then_some(DashboardPlan {
            port: config.dashboard.port,
            max_clients: config.dashboard.max_clients as usize,
        }),
    };
    let policy = |o: &GroupOverrides| GroupPolicy {
        strategy: o.strategy.unwrap_or(sup.strategy),
        intensity: o.intensity.unwrap_or(sup.intensity),
        period: ms(o.period_ms.unwrap_or(sup.period_ms)),
        backoff: Backoff {
            initial: ms(sup.backoff_initial_ms),
            max: ms(sup.backoff_max_ms),
            multiplier: sup.backoff_multiplier,
            jitter: sup.backoff_jitter,
        },
        stable_after: ms(sup.stable_after_ms),
        warm_spare: sup.warm_spare,
    };
    let mut plans: Vec<NodePlan> = nodes.into_iter().map(|(_, p, _)| p).collect();
    let worlds = plans.split_off(driver_count);
    Ok(Plan {
        runtime,
        hosts,
        hooks: config.hooks.clone(),
        drivers: GroupPlan {
            policy: policy(&sup.drivers),
            nodes: plans,
        },
        worlds: GroupPlan {
            policy: policy(&sup.worlds),
            nodes: worlds,
        },
    })
}

/// Where the audio driver finds its sounds unless its settings say otherwise.
const AUDIO_ASSETS: &str = "assets/sounds";

/// Every `sandbox` of the config checked, each under its own key.
fn sandbox_problems(problems: &mut Vec<Problem>, config: &SyncraConfig) {
    let mut specs: Vec<(String, &SandboxSpec)> = vec![("sandbox".to_owned(), &config.sandbox)];
    for (name, entry) in &config.drivers.0 {
        if let DriverEntry::Spec(spec) = entry
            && let Some(s) = &spec.sandbox
        {
            specs.push((format!("drivers.{name}.sandbox"), s));
        }
    }
    if let Some(s) = &config.worlds.defaults.sandbox {
        specs.push(("worlds.sandbox".to_owned(), s));
    }
    for (name, spec) in &config.worlds.tables {
        if let Some(s) = &spec.sandbox {
            specs.push((format!("worlds.{name}.sandbox"), s));
        }
    }
    for (key, spec) in specs {
        for (k, message) in spec.problems() {
            problems.push(problem(format!("{key}.{k}"), message));
        }
    }
}

/// `value` must lie in `min..=max`.
fn in_range(problems: &mut Vec<Problem>, key: &str, value: u64, min: u64, max: u64, unit: &str) {
    if value < min {
        let message = if min == 1 {
            format!("must be at least 1 ({unit})")
        } else {
            format!("{value} is too small: must be at least {min} ({unit})")
        };
        problems.push(problem(key, message));
    } else if value > max {
        problems.push(problem(
            key,
            format!("{value} is too large: must be at most {max} ({unit})"),
        ));
    }
}

/// A duration in milliseconds: at least `min`, at most [`MAX_DURATION_MS`] (a day).
fn duration(problems: &mut Vec<Problem>, key: &str, value: u64, min: u64) {
    in_range(
        problems,
        key,
        value,
        min,
        MAX_DURATION_MS,
        "milliseconds; the longest is a day",
    );
}

fn hooks_problems(problems: &mut Vec<Problem>, key: &str, hooks: &Hooks) {
    for point in HookPoint::ALL {
        if hooks.get(point).is_some_and(|c| c.trim().is_empty()) {
            problems.push(problem(
                format!("{key}.{point}"),
                "is empty: expected a shell command",
            ));
        }
    }
    if let Some(t) = hooks.timeout_ms {
        duration(problems, &format!("{key}.timeout_ms"), t, 1);
    }
}

#[allow(
    clippy::too_many_arguments,
    reason = "one call site; the arguments are the resolved context"
)]
fn node_plan(
    problems: &mut Vec<Problem>,
    key: &str,
    name: NodeName,
    command: String,
    spec: &NodeSpec,
    config: &SyncraConfig,
    default_deadline: u64,
    settings: Vec<u8>,
    world: Option<WorldSettings>,
) -> NodePlan {
    let rt = &config.runtime;
    let mut sandbox = default_profile(name.short(), world.is_some());
    config.sandbox.grant_to(&mut sandbox);
    if let Some(own) = &spec.sandbox {
        own.grant_to(&mut sandbox);
    }
    if command.trim().is_empty() {
        problems.push(problem(
            format!("{key}.command"),
            "is empty: expected an executable name or path",
        ));
    }
    let env = spec.env.clone().unwrap_or_default();
    for (var, value) in &env {
        if var.is_empty() || var.contains(['=', '\0']) {
            problems.push(problem(
                format!("{key}.env"),
                format!("`{var}` is not a valid environment variable name"),
            ));
        } else if value.contains('\0') {
            problems.push(problem(
                format!("{key}.env.{var}"),
                "contains a NUL byte, which no environment variable can hold",
            ));
        }
    }
    for (i, arg) in spec.args.iter().flatten().enumerate() {
        if arg.contains('\0') {
            problems.push(problem(
                format!("{key}.args[{i}]"),
                "contains a NUL byte, which no argument can hold",
            ));
        }
    }
    if settings.len() > MAX_CHUNK {
        problems.push(problem(
            format!("{key}.settings"),
            format!(
                "encode to {} bytes; a node's config chunk is at most {MAX_CHUNK} bytes",
                settings.len()
            ),
        ));
    }
    let deadline = spec.heartbeat_deadline_ms.unwrap_or(default_deadline);
    if let Some(d) = spec.heartbeat_deadline_ms {
        if d < rt.watch_interval_ms {
            problems.push(problem(
                format!("{key}.heartbeat_deadline_ms"),
                format!("{d} is shorter than runtime.watch_interval_ms = {}: a deadline must allow at least two heartbeats", rt.watch_interval_ms),
            ));
        } else {
            duration(problems, &format!("{key}.heartbeat_deadline_ms"), d, 1);
        }
    }
    for (k, v) in [
        ("start_timeout_ms", spec.start_timeout_ms),
        ("stop_timeout_ms", spec.stop_timeout_ms),
    ] {
        if let Some(v) = v {
            duration(problems, &format!("{key}.{k}"), v, 1);
        }
    }
    let hooks = spec.hooks.clone().unwrap_or_default();
    hooks_problems(problems, &format!("{key}.hooks"), &hooks);
    let mut depends_on = Vec::new();
    for (i, dep) in spec.depends_on.iter().flatten().enumerate() {
        match NodeName::parse(dep) {
            Ok(n) => depends_on.push(n),
            Err(msg) => problems.push(problem(format!("{key}.depends_on[{i}]"), msg)),
        }
    }
    NodePlan {
        kind: name.kind(),
        name,
        command,
        args: spec.args.clone().unwrap_or_default(),
        env,
        restart: spec.restart.unwrap_or_default(),
        depends_on,
        heartbeat: HeartbeatPlan {
            interval_ms: (rt.watch_interval_ms / 2).max(1),
            deadline_ms: deadline,
        },
        start_timeout: ms(spec.start_timeout_ms.unwrap_or(rt.start_timeout_ms)),
        stop_timeout: ms(spec.stop_timeout_ms.unwrap_or(rt.stop_timeout_ms)),
        hooks,
        settings,
        world,
        sandbox,
        host: host_of(
            problems,
            config,
            &format!("{key}.host"),
            spec.host.as_deref(),
        )
        .flatten(),
        fallback_host: host_of(
            problems,
            config,
            &format!("{key}.fallback_host"),
            spec.fallback_host.as_deref(),
        ),
        rollback: spec.rollback.unwrap_or(false),
    }
}

/// A node's `host` (or `fallback_host`) checked against `[hosts]`: `None` when not set,
/// `Some(None)` for `local`, `Some(Some(name))` for a configured host.
fn host_of(
    problems: &mut Vec<Problem>,
    config: &SyncraConfig,
    key: &str,
    host: Option<&str>,
) -> Option<Option<String>> {
    let host = host?;
    if host == syncra_protocol::agent::LOCAL_HOST {
        return Some(None);
    }
    if !config.hosts.contains_key(host) {
        let known: Vec<&str> = config.hosts.keys().map(String::as_str).collect();
        problems.push(problem(
            key,
            format!(
                "no host `{host}`: expected `local` or a `[hosts.<name>]` of this config ({})",
                if known.is_empty() {
                    "it has none".to_owned()
                } else {
                    known.join(", ")
                }
            ),
        ));
        return None;
    }
    Some(Some(host.to_owned()))
}

/// Unknown or disabled dependencies, drivers depending on worlds, and cycles.
fn dependency_problems(
    problems: &mut Vec<Problem>,
    nodes: &[(NodeSpec, NodePlan, String)],
    driver_count: usize,
) {
    let index: HashMap<&NodeName, usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, (_, p, _))| (&p.name, i))
        .collect();
    for (i, (_, plan, key)) in nodes.iter().enumerate() {
        for (j, dep) in plan.depends_on.iter().enumerate() {
            let dkey = format!("{key}.depends_on[{j}]");
            match index.get(dep) {
                None => problems.push(problem(
                    dkey,
                    format!(
                        "unknown node `{dep}`; known nodes: {}",
                        nodes
                            .iter()
                            .map(|(_, p, _)| p.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )),
                Some(&d) if d == i => {
                    problems.push(problem(dkey, format!("`{dep}` depends on itself")))
                }
                Some(&d) if i < driver_count && d >= driver_count => problems.push(problem(
                    dkey,
                    format!(
                        "driver `{}` cannot depend on world `{dep}`: drivers start before worlds",
                        plan.name
                    ),
                )),
                Some(_) => {}
            }
        }
    }
    // Cycle search (three-colour DFS); report each cycle once, as a path.
    let mut state = vec![0u8; nodes.len()];
    let mut reported: HashSet<Vec<usize>> = HashSet::new();
    fn visit(
        n: usize,
        nodes: &[(NodeSpec, NodePlan, String)],
        index: &HashMap<&NodeName, usize>,
        state: &mut [u8],
        stack: &mut Vec<usize>,
        problems: &mut Vec<Problem>,
        reported: &mut HashSet<Vec<usize>>,
    ) {
        state[n] = 1;
        stack.push(n);
        for dep in &nodes[n].1.depends_on {
            let Some(&d) = index.get(dep) else { continue };
            if d == n {
                continue;
            }
            if state[d] == 1 {
                let start = stack.iter().position(|&x| x == d).unwrap_or(0);
                let mut cycle: Vec<usize> = stack[start..].to_vec();
                let mut key = cycle.clone();
                key.sort_unstable();
                if reported.insert(key) {
                    cycle.push(d);
                    let path: Vec<&str> = cycle.iter().map(|&c| nodes[c].1.name.as_str()).collect();
                    problems.push(problem(
                        format!("{}.depends_on", nodes[n].2),
                        format!("dependency cycle: {}", path.join(" → ")),
                    ));
                }
            } else if state[d] == 0 {
                visit(d, nodes, index, state, stack, problems, reported);
            }
        }
        stack.pop();
        state[n] = 2;
    }
    for n in 0..nodes.len() {
        if state[n] == 0 {
            visit(
                n,
                nodes,
                &index,
                &mut state,
                &mut Vec::new(),
                problems,
                &mut reported,
            );
        }
    }
}

/// Make a relative `path` absolute against `base` (the directory of the file that set it).
pub(crate) fn anchor(path: &Path, base: &Path) -> PathBuf {
    // An empty path stays empty, for validation to refuse by its key.
    let joined = if path.is_absolute() || path.as_os_str().is_empty() {
        path.to_owned()
    } else {
        base.join(path)
    };
    // `dir/./logs` → `dir/logs` (`..` stays: it may cross a symlink).
    joined
        .components()
        .filter(|c| *c != std::path::Component::CurDir)
        .collect()
}
