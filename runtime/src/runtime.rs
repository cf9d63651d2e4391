//! [`Runtime`]: the supervisor as a library. Start it from a config, drive it, stop it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorRef, RpcReplyPort};
use syncra_config::{HookPoint, Plan, SyncraConfig};
use syncra_protocol::control::{
    ControlError, ControlErrorKind, ControlReply, ControlRequest, CrashEntry, StreamView,
};
use syncra_protocol::node::Payload;
use syncra_protocol::status::{LifecycleEvent, RuntimeInfo, StatusReport};
use syncra_protocol::world::WorldSettings;
use syncra_protocol::{NodeKind, NodeName, NodeState, PROTOCOL_VERSION, StepError};
use tokio::sync::{broadcast, watch};

use crate::cluster::Hub;
use crate::hooks::{HookContext, HookFn, HookRunner};
use crate::logs;
use crate::registry::Registry;
use crate::rundir::{RunDir, RunDirError};
use crate::spawn::Spawner;
use crate::supervisor::group::{Group, GroupMsg};
use crate::supervisor::node::SupMsg;
use crate::supervisor::{Ctx, ShutdownCause};

/// Longest a call from the command line waits, milliseconds (10 minutes).
pub const MAX_CLI_WAIT_MS: u64 = 600_000;

/// Capacity of the lifecycle event channel; a subscriber further behind misses events.
const EVENT_CAPACITY: usize = 4096;

/// Why the runtime could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The config is invalid.
    #[error(transparent)]
    Config(#[from] syncra_config::ConfigError),
    /// The run directory cannot be used.
    #[error(transparent)]
    RunDir(#[from] RunDirError),
    /// A directory could not be created.
    #[error("creating {what} {}: {source}", path.display())]
    Dir {
        /// Which directory.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A part of the runtime (the hub node, the spawner, an actor, the control socket) could
    /// not start: the step names it, its source says why.
    #[error("starting the runtime: {0}")]
    Internal(#[from] StepError),
    /// Nodes are placed on other hosts, and the runtime's identity for them cannot be loaded
    /// or made.
    #[error("{0}")]
    Identity(String),
    /// The web dashboard cannot be served (its port is taken, or this build has none).
    #[error("{0}")]
    Dashboard(String),
}

/// Why a reload (or an upgrade) changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new config is not valid: every problem, as at start.
    #[error(transparent)]
    Config(#[from] syncra_config::ConfigError),
    /// This runtime was started from a plan made in code: it has no config to read again.
    #[error(
        "this runtime was started from a plan made in code: it has no config file to read again (give it a new plan with Runtime::apply)"
    )]
    NoConfig,
    /// The request names a node there is not, or a command that cannot run.
    #[error("{0}")]
    Refused(String),
    /// The runtime is shutting down.
    #[error("the runtime is shutting down")]
    ShuttingDown,
}

/// What a reload changed (or, not applied, would change), and what became of each node it
/// touched.
#[derive(Debug, Clone)]
pub struct ReloadReport {
    /// The difference between the plan that ran and the new one.
    pub diff: syncra_config::diff::PlanDiff,
    /// Whether it was applied.
    pub applied: bool,
    /// One sentence per node touched, in the order it was touched.
    pub outcomes: Vec<String>,
}

/// Builds a [`Runtime`]: the config, plus what only code can give (hook callbacks).
pub struct RuntimeBuilder {
    plan: Result<Plan, syncra_config::ConfigError>,
    callbacks: Vec<(HookPoint, HookFn)>,
    bin_dirs: Vec<PathBuf>,
    exe_dir: Option<PathBuf>,
    control_socket: bool,
    loader: Option<syncra_config::Loader>,
}

impl std::fmt::Debug for RuntimeBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeBuilder")
            .field("bin_dirs", &self.bin_dirs)
            .field("control_socket", &self.control_socket)
            .finish()
    }
}

impl RuntimeBuilder {
    /// A builder for `config` (validated at [`RuntimeBuilder::start`]).
    pub fn new(config: &SyncraConfig) -> Self {
        Self::from_plan_result(config.plan())
    }

    /// A builder for an already validated plan (from [`syncra_config::Loader`]).
    pub fn from_plan(plan: Plan) -> Self {
        Self::from_plan_result(Ok(plan))
    }

    fn from_plan_result(plan: Result<Plan, syncra_config::ConfigError>) -> Self {
        let exe_dir = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.to_owned()));
        Self {
            plan,
            callbacks: Vec::new(),
            bin_dirs: Vec::new(),
            exe_dir,
            control_socket: true,
            loader: None,
        }
    }

    /// Where [`Runtime::reload`] reads the config again: the file, environment and flags it
    /// was loaded from (`syncra run` passes its own). Without one, a running runtime takes a
    /// new plan only from code ([`Runtime::apply`]).
    pub fn loader(mut self, loader: syncra_config::Loader) -> Self {
        self.loader = Some(loader);
        self
    }

    /// Run `f` at `point` for every node, after the config's hook commands. It runs on a
    /// blocking thread, bounded by the hook timeout.
    pub fn hook(
        mut self,
        point: HookPoint,
        f: impl Fn(&HookContext) + Send + Sync + 'static,
    ) -> Self {
        self.callbacks.push((point, Arc::new(f)));
        self
    }

    /// Look for bare executable names in `dir` before `PATH` (by default: the directory of the
    /// current executable). Directories given here are searched first, in order.
    pub fn bin_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.bin_dirs.push(dir.into());
        self
    }

    /// Whether to serve the control socket (default: yes). Without it, the CLI cannot reach
    /// this runtime; the run directory is still locked.
    pub fn control_socket(mut self, on: bool) -> Self {
        self.control_socket = on;
        self
    }

    /// Start the runtime: create its directories, lock its run directory, start the hub
    /// node, then start the drivers (in order) and, once each is ready or failed, the worlds.
    /// Returns as soon as the start sequence is under way; see [`Runtime::wait_ready`].
    pub async fn start(self) -> Result<Runtime, StartError> {
        let plan = self.plan?;
        // First, while fd numbers are low: whatever limit the process runs under, these fit.
        let fds = crate::fdreserve::FdReserve::new();
        let rt = &plan.runtime;
        for (what, dir) in [("log dir", &rt.log_dir), ("crash dir", &rt.crash_dir)] {
            logs::ensure_dir(dir).map_err(|source| StartError::Dir {
                what,
                path: dir.clone(),
                source,
            })?;
        }
        let run_dir = RunDir::acquire(&rt.run_dir)?;
        // The dashboard's port, before anything starts: a port in use is a start error.
        #[cfg(feature = "dashboard")]
        let dashboard = match rt.dashboard {
            Some(d) => Some(
                crate::dashboard::Bound::bind(d, &run_dir)
                    .await
                    .map_err(StartError::Dashboard)?,
            ),
            None => None,
        };
        #[cfg(not(feature = "dashboard"))]
        if rt.dashboard.is_some() {
            return Err(StartError::Dashboard(
                "this build of syncra-runtime has no web dashboard (its `dashboard` feature is off); leave `dashboard.enabled` false".into(),
            ));
        }
        // Other hosts: the runtime's identity (made on first use), one link per host.
        // (With hosts configured, even if no node is placed there yet: a reload may.)
        let hosts = if !plan.hosts.is_empty() {
            let (identity, made) =
                crate::remote::runtime_identity(&rt.state_dir).map_err(StartError::Identity)?;
            if made {
                tracing::info!(state_dir = %rt.state_dir.display(), fingerprint = %identity.fingerprint, "made this runtime's identity: its agents trust it with `--trust {}`", identity.fingerprint);
            }
            crate::remote::hosts::Hosts::new(
                &plan.hosts,
                Arc::new(identity),
                crate::remote::new_session(),
                rt.log_dir.clone(),
            )
        } else {
            crate::remote::hosts::Hosts::default()
        };

        let registry = Arc::new(Registry::new(plan.nodes().map(|n| n.name.clone())));
        let spawner = Spawner::start(tokio::runtime::Handle::current())
            .map_err(StepError::at("starting the spawner thread"))?;
        // The root: the runtime's own actors are linked to it, its tasks watched by it.
        let ctx_slot: crate::root::CtxSlot = Arc::new(std::sync::OnceLock::new());
        let (root, _) = Actor::spawn(None, crate::root::Root, ctx_slot.clone())
            .await
            .map_err(StepError::at("starting the root actor"))?;
        let name = |id, what| {
            let _ = root.cast(crate::root::RootMsg::Name(id, what));
        };
        let (router, _) = Actor::spawn_linked(
            None,
            crate::router::Router,
            registry.clone(),
            root.get_cell(),
        )
        .await
        .map_err(StepError::at("starting the router"))?;
        name(router.get_id(), "router");
        let hub = Hub::start(registry.clone(), router.clone(), root.get_cell()).await?;
        name(hub.gateway_id(), "gateway");
        let broker = crate::broker::Broker::new(
            rt.streams,
            crate::broker::LinkRules {
                enabled: rt.direct_links,
                max_per_node: rt.max_links,
                registry: registry.clone(),
            },
        );
        let broker_task = {
            let broker = broker.clone();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(Duration::from_millis(250));
                loop {
                    every.tick().await;
                    broker.tick();
                }
            })
        };
        let broker_abort = broker_task.abort_handle();
        crate::root::watch_task(ctx_slot.clone(), "Broker task", broker_task);
        let extra_env = vec![
            (
                "SYNCRA_RUN_DIR".to_owned(),
                rt.run_dir.display().to_string(),
            ),
            (
                "SYNCRA_LOG_DIR".to_owned(),
                rt.log_dir.display().to_string(),
            ),
        ];
        let hooks = HookRunner::new(
            spawner.clone(),
            plan.hooks.clone(),
            self.callbacks,
            extra_env,
        );
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        // Sample heartbeats four times per interval: a hang is seen at most a quarter interval
        // after its deadline.
        let watchdog = crate::watchdog::Watchdog::new(rt.watch_interval / 4);
        let watchdog_task = tokio::spawn(watchdog.clone().run());
        let watchdog_abort = watchdog_task.abort_handle();
        crate::root::watch_task(ctx_slot.clone(), "watchdog", watchdog_task);
        let ctx = Arc::new(Ctx {
            registry: registry.clone(),
            spawner,
            hub: hub.clone(),
            broker,
            hooks,
            events,
            runtime: rt.clone(),
            bin_dirs: self.bin_dirs.into_iter().chain(self.exe_dir).collect(),
            crashes: Mutex::new(Vec::new()),
            shutdown: watch::channel(None).0,
            hook_tasks: Mutex::new(tokio::task::JoinSet::new()),
            watchdog,
            fds,
            hosts: Arc::new(hosts),
        });
        let _ = ctx_slot.set(Arc::downgrade(&ctx));

        let (drivers, _) = Actor::spawn_linked(
            None,
            Group,
            ("drivers", plan.drivers.clone(), ctx.clone()),
            root.get_cell(),
        )
        .await
        .map_err(StepError::at("starting the drivers group"))?;
        name(drivers.get_id(), "drivers group");
        let (worlds, _) = Actor::spawn_linked(
            None,
            Group,
            ("worlds", plan.worlds.clone(), ctx.clone()),
            root.get_cell(),
        )
        .await
        .map_err(StepError::at("starting the worlds group"))?;
        name(worlds.get_id(), "worlds group");
        let mut supervisors = HashMap::new();
        for group in [&drivers, &worlds] {
            let children = ractor::call_t!(group, GroupMsg::Children, 5000)
                .map_err(StepError::at("listing a group's node supervisors"))?;
            supervisors.extend(children);
        }

        let socket = run_dir.socket();
        let listener = if self.control_socket {
            let listener = tokio::net::UnixListener::bind(&socket)
                .map_err(StepError::at(format!("binding {}", socket.display())))?;
            // Private like its directory: only this user may drive the runtime.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600)).map_err(
                StepError::at(format!("making {} private", socket.display())),
            )?;
            Some(listener)
        } else {
            None
        };
        let runtime = Runtime {
            inner: Arc::new(Inner {
                ctx,
                plan: std::sync::RwLock::new(plan),
                loader: self.loader,
                reloading: tokio::sync::Mutex::new(()),
                drivers,
                worlds,
                supervisors: std::sync::RwLock::new(supervisors),
                started: Instant::now(),
                hub,
                run_dir: Mutex::new(Some(run_dir)),
                control: Mutex::new(None),
                #[cfg(feature = "dashboard")]
                dashboard: std::sync::OnceLock::new(),
                watchdog: watchdog_abort,
                broker_task: broker_abort,
                router,
                root,
                finished: tokio::sync::OnceCell::new(),
            }),
        };
        if let Some(listener) = listener {
            let task = tokio::spawn(crate::control::serve(listener, runtime.clone()));
            *runtime
                .inner
                .control
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some(task);
        }
        #[cfg(feature = "dashboard")]
        if let Some(bound) = dashboard {
            let _ = runtime.inner.dashboard.set(bound.serve(runtime.clone()));
        }
        tokio::spawn(start_sequence(runtime.clone()));
        Ok(runtime)
    }
}

/// Drivers first, in order; worlds once every driver is ready (or has failed).
async fn start_sequence(rt: Runtime) {
    let t0 = Instant::now();
    let _ = rt.inner.drivers.cast(GroupMsg::Start);
    let drivers: Vec<NodeName> = rt
        .plan()
        .drivers
        .nodes
        .iter()
        .map(|n| n.name.clone())
        .collect();
    rt.wait_for(|nodes| {
        drivers
            .iter()
            .all(|d| settled(&rt.inner.ctx.registry, nodes, d))
    })
    .await;
    if rt.inner.ctx.registry.shutting_down() {
        return;
    }
    let _ = rt.inner.worlds.cast(GroupMsg::Start);
    let all: Vec<NodeName> = rt.plan().nodes().map(|n| n.name.clone()).collect();
    rt.wait_for(|nodes| {
        all.iter()
            .all(|n| settled(&rt.inner.ctx.registry, nodes, n))
    })
    .await;
    let report = rt.status();
    let ready = report
        .nodes
        .iter()
        .filter(|n| n.state == NodeState::Ready)
        .count();
    let failed: Vec<&str> = report
        .nodes
        .iter()
        .filter(|n| n.state == NodeState::Failed)
        .map(|n| n.name.as_str())
        .collect();
    if failed.is_empty() {
        tracing::info!(
            ready,
            ms = t0.elapsed().as_millis() as u64,
            "all nodes ready"
        );
    } else {
        tracing::warn!(ready, failed = %failed.join(", "), ms = t0.elapsed().as_millis() as u64, "started, with failed nodes (see `syncra status`)");
    }
}

/// Whether `name` has reached a state a start sequence can move on from.
fn settled(
    registry: &Registry,
    nodes: &[syncra_protocol::status::NodeView],
    name: &NodeName,
) -> bool {
    nodes.iter().find(|n| n.name == *name).is_none_or(|n| {
        matches!(n.state, NodeState::Ready | NodeState::Failed)
            || (n.state == NodeState::Stopped && registry.has_begun(name))
    })
}

struct Inner {
    ctx: Arc<Ctx>,
    /// The plan it runs now (a reload replaces it).
    plan: std::sync::RwLock<Plan>,
    /// What a reload reads again (the config file, environment and flags it started from).
    loader: Option<syncra_config::Loader>,
    /// One reload at a time.
    reloading: tokio::sync::Mutex<()>,
    drivers: ActorRef<GroupMsg>,
    worlds: ActorRef<GroupMsg>,
    supervisors: std::sync::RwLock<HashMap<NodeName, ActorRef<SupMsg>>>,
    started: Instant,
    hub: Hub,
    run_dir: Mutex<Option<RunDir>>,
    control: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The web dashboard, when served.
    #[cfg(feature = "dashboard")]
    dashboard: std::sync::OnceLock<crate::dashboard::Dashboard>,
    watchdog: tokio::task::AbortHandle,
    broker_task: tokio::task::AbortHandle,
    root: ActorRef<crate::root::RootMsg>,
    router: ActorRef<crate::router::RouterMsg>,
    finished: tokio::sync::OnceCell<ShutdownReport>,
}

/// A running runtime. Cheap to clone; every clone drives the same runtime.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("run_dir", &self.plan().runtime.run_dir)
            .finish_non_exhaustive()
    }
}

/// How a shutdown went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Why it happened.
    pub cause: ShutdownCause,
    /// Nodes that had to be killed because they did not stop within their timeout.
    pub killed: Vec<NodeName>,
    /// How long it took.
    pub took: Duration,
}

impl ShutdownReport {
    /// The process exit code this shutdown deserves: 0 for a requested shutdown, 1 when the
    /// runtime shut down because it gave up on a node or lost a part of itself.
    pub fn exit_code(&self) -> i32 {
        match self.cause {
            ShutdownCause::GaveUp(_) | ShutdownCause::Internal(_) => 1,
            _ => 0,
        }
    }
}

impl Runtime {
    /// The router (for tests that take a part of the runtime away).
    #[cfg(test)]
    pub(crate) fn router(&self) -> &ActorRef<crate::router::RouterMsg> {
        &self.inner.router
    }

    /// The supervisor of node `name` (for tests that take a part of the runtime away).
    #[cfg(test)]
    pub(crate) fn supervisor_of(&self, name: &str) -> Option<ActorRef<SupMsg>> {
        self.supervisor(name).ok()
    }

    /// The fd reserve.
    pub(crate) fn fds(&self) -> &crate::fdreserve::FdReserve {
        &self.inner.ctx.fds
    }

    /// Start a runtime for `config` (see [`RuntimeBuilder`] for hook callbacks).
    pub async fn start(config: &SyncraConfig) -> Result<Runtime, StartError> {
        RuntimeBuilder::new(config).start().await
    }

    /// The node leading process group `group` (every node leads its own), if any.
    pub(crate) fn node_of_group(&self, group: u32) -> Option<syncra_protocol::NodeName> {
        self.inner.ctx.registry.node_with_pid(group)
    }

    /// Every node's state.
    pub fn status(&self) -> StatusReport {
        let rt = self.plan().runtime;
        StatusReport {
            runtime: RuntimeInfo {
                pid: std::process::id(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
                protocol: PROTOCOL_VERSION,
                uptime_ms: self.inner.started.elapsed().as_millis() as u64,
                run_dir: rt.run_dir.display().to_string(),
                log_dir: rt.log_dir.display().to_string(),
                crash_dir: rt.crash_dir.display().to_string(),
                shutting_down: self.inner.ctx.registry.shutting_down(),
                dashboard: self.dashboard_url(),
            },
            nodes: {
                let mut nodes = self.inner.ctx.registry.snapshot();
                let mut streams = self.inner.ctx.broker.node_streams();
                for n in &mut nodes {
                    if let Some((produces, consumes)) = streams.remove(&n.name) {
                        n.produces = produces;
                        n.consumes = consumes;
                    }
                }
                nodes
            },
        }
    }

    /// The web dashboard's address (`http://127.0.0.1:PORT/`), when it is served; its token
    /// is in the run directory's `dashboard.token`.
    pub fn dashboard_url(&self) -> Option<String> {
        #[cfg(feature = "dashboard")]
        return self.inner.dashboard.get().map(|d| d.url());
        #[cfg(not(feature = "dashboard"))]
        None
    }

    /// The plan this runtime runs now.
    pub fn plan(&self) -> Plan {
        self.inner
            .plan
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Lifecycle events from now on (spawned, up, hung, down, restarting, failed, stopped).
    pub fn subscribe(&self) -> broadcast::Receiver<LifecycleEvent> {
        self.inner.ctx.events.subscribe()
    }

    /// Wait until every node is ready or failed, or `timeout` passes; the status at that moment.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<StatusReport, StatusReport> {
        let all: Vec<NodeName> = self.plan().nodes().map(|n| n.name.clone()).collect();
        let done = tokio::time::timeout(
            timeout,
            self.wait_for(|nodes| {
                all.iter()
                    .all(|n| settled(&self.inner.ctx.registry, nodes, n))
            }),
        )
        .await;
        let status = self.status();
        if done.is_ok() && status.nodes.iter().all(|n| n.state == NodeState::Ready) {
            Ok(status)
        } else {
            Err(status)
        }
    }

    async fn wait_for(&self, cond: impl Fn(&[syncra_protocol::status::NodeView]) -> bool) {
        let mut changes = self.inner.ctx.registry.watch();
        loop {
            if cond(&self.inner.ctx.registry.snapshot()) {
                return;
            }
            if changes.changed().await.is_err() {
                return;
            }
        }
    }

    fn supervisor(&self, name: &str) -> Result<ActorRef<SupMsg>, ControlError> {
        let parsed = NodeName::parse(name).ok();
        parsed
            .as_ref()
            .and_then(|n| {
                self.inner
                    .supervisors
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(n)
                    .cloned()
            })
            .ok_or_else(|| ControlError {
                kind: ControlErrorKind::UnknownNode,
                message: format!(
                    "no node is called `{name}`; nodes: {}",
                    self.inner
                        .ctx
                        .registry
                        .names()
                        .iter()
                        .map(|n| n.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })
    }

    /// The node called `name`, or an error listing the nodes there are.
    fn node_name(&self, name: &str) -> Result<NodeName, ControlError> {
        self.supervisor(name)?;
        NodeName::parse(name).map_err(|message| ControlError {
            kind: ControlErrorKind::UnknownNode,
            message,
        })
    }

    fn refuse_if_shutting_down(&self) -> Result<(), ControlError> {
        if self.inner.ctx.registry.shutting_down() {
            Err(ControlError {
                kind: ControlErrorKind::ShuttingDown,
                message: "the runtime is shutting down".into(),
            })
        } else {
            Ok(())
        }
    }

    async fn ask(
        &self,
        name: &str,
        msg: impl FnOnce(RpcReplyPort<Result<String, String>>) -> SupMsg,
    ) -> Result<String, ControlError> {
        self.refuse_if_shutting_down()?;
        let sup = self.supervisor(name)?;
        match sup.call(msg, Some(Duration::from_secs(30))).await {
            Ok(ractor::rpc::CallResult::Success(Ok(m))) => Ok(m),
            Ok(ractor::rpc::CallResult::Success(Err(m))) => Err(ControlError {
                kind: ControlErrorKind::BadRequest,
                message: m,
            }),
            _ => Err(ControlError {
                kind: ControlErrorKind::ShuttingDown,
                message: format!("the supervisor of {name} did not answer"),
            }),
        }
    }

    /// The world `name` with its durable state kept here: its settings, or why not.
    fn durable_world(&self, name: &str) -> Result<WorldSettings, ControlError> {
        let node = self.node_name(name)?;
        let refused = |message: String| ControlError {
            kind: ControlErrorKind::Invalid,
            message,
        };
        let plan = self.plan();
        let plan = plan
            .node(node.as_str())
            .ok_or_else(|| refused(format!("no node is called `{name}`")))?;
        let world = plan.world.clone().ok_or_else(|| {
            refused(format!(
                "{name} is a driver: only worlds keep a durable state"
            ))
        })?;
        if !world.state.durable {
            return Err(refused(format!(
                "{name} keeps no durable state (`state = \"off\"`)"
            )));
        }
        if let Some(host) = &plan.host {
            return Err(refused(format!(
                "{name} runs on host `{host}`, where its state ring is: snapshot and restore reach only this host's worlds"
            )));
        }
        Ok(world)
    }

    /// Save world `name`'s newest complete durable state into `out` (a new file, mode 0600);
    /// what was saved, in a sentence.
    pub async fn snapshot(&self, name: &str, out: &Path) -> Result<String, ControlError> {
        self.durable_world(name)?;
        let err = |kind, message: String| ControlError { kind, message };
        let found = self
            .inner
            .ctx
            .broker
            .newest_state(&self.node_name(name)?)
            .map_err(|_| {
                err(
                    ControlErrorKind::Invalid,
                    format!("{name} has written no durable state yet"),
                )
            })?;
        let Some((info, bytes)) = found else {
            return Err(err(
                ControlErrorKind::Invalid,
                format!("{name} holds no complete durable state"),
            ));
        };
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(out)
            .and_then(|mut f| f.write_all(&bytes))
            .map_err(|e| err(ControlErrorKind::Invalid, format!("{}: {e}", out.display())))?;
        Ok(format!(
            "saved {name} at tick {} ({} KiB) to {}",
            info.tick,
            bytes.len().div_ceil(1024),
            out.display()
        ))
    }

    /// Restart world `name` from the state in `file`, checked first (format, checksum, and
    /// that it is of this world's config); what was done, in a sentence.
    pub async fn restore(&self, name: &str, file: &Path) -> Result<String, ControlError> {
        let settings = self.durable_world(name)?;
        let refused = |message: String| ControlError {
            kind: ControlErrorKind::Invalid,
            message: format!("{} was not restored: {message}", file.display()),
        };
        let most = syncra_protocol::world_state::state_size(settings.entities) as u64;
        let meta = std::fs::metadata(file).map_err(|e| refused(e.to_string()))?;
        if meta.len() > most {
            return Err(refused(format!(
                "{} bytes, more than a state of {name} ({} entities) can be ({most})",
                meta.len(),
                settings.entities
            )));
        }
        let bytes = std::fs::read(file).map_err(|e| refused(e.to_string()))?;
        let info =
            syncra_protocol::world_state::inspect(&bytes).map_err(|e| refused(e.to_string()))?;
        syncra_protocol::world_state::check_config(
            &info,
            syncra_protocol::world_state::has_player(&bytes),
            &settings,
        )
        .map_err(|e| refused(e.to_string()))?;
        // Stopped, the world holds its ring no more; the state goes in as its newest; started,
        // it resumes from it.
        self.stop_node(name).await?;
        let written = self
            .inner
            .ctx
            .broker
            .put_state(&self.node_name(name)?, &bytes[..info.bytes]);
        let started = self.start_node(name).await;
        written.map_err(|e| ControlError {
            kind: ControlErrorKind::Invalid,
            message: format!("{name} was restarted from its own state: {e}"),
        })?;
        started?;
        Ok(format!(
            "restarted {name} from {} at tick {}",
            file.display(),
            info.tick
        ))
    }

    /// Restart a node now: a graceful stop, then a new incarnation (also from `failed` or
    /// `stopped`). Its failure history is forgotten.
    pub async fn restart(&self, name: &str) -> Result<String, ControlError> {
        self.ask(name, SupMsg::RestartRequest).await
    }

    /// Start a stopped or failed node.
    pub async fn start_node(&self, name: &str) -> Result<String, ControlError> {
        self.ask(name, SupMsg::StartRequest).await
    }

    /// Stop a node (graceful request, SIGKILL at its stop timeout); it stays stopped. Returns
    /// once it has stopped.
    pub async fn stop_node(&self, name: &str) -> Result<String, ControlError> {
        self.refuse_if_shutting_down()?;
        let sup = self.supervisor(name)?;
        if self.stop_one(&sup).await {
            Ok(format!("stopped {name}"))
        } else {
            Err(ControlError {
                kind: ControlErrorKind::Timeout,
                message: format!(
                    "{name} did not confirm its stop within {} s; see `syncra status`",
                    self.stop_limit().as_secs()
                ),
            })
        }
    }

    /// Stop one node; whether it confirmed in time.
    async fn stop_one(&self, sup: &ActorRef<SupMsg>) -> bool {
        let limit = self.stop_limit();
        matches!(
            sup.call(SupMsg::Stop, Some(limit)).await,
            Ok(ractor::rpc::CallResult::Success(()))
        )
    }

    /// The longest a node can take to stop: its stop timeout, the abort grace, and margin.
    fn stop_limit(&self) -> Duration {
        let plan = self.plan();
        let longest = plan
            .nodes()
            .map(|n| n.stop_timeout)
            .max()
            .unwrap_or_default();
        // A stop request may queue behind a before-start hook (global and the node's own),
        // then waits out the stop timeout, the abort grace and the output drain.
        let hook = |h: &syncra_config::Hooks| {
            Duration::from_millis(
                h.timeout_ms
                    .unwrap_or(syncra_config::DEFAULT_HOOK_TIMEOUT_MS),
            )
        };
        let longest_hooks = plan
            .nodes()
            .map(|n| hook(&plan.hooks) + hook(&n.hooks))
            .max()
            .unwrap_or_default();
        longest + longest_hooks + plan.runtime.abort_grace + Duration::from_secs(5)
    }

    /// This session's crash records (newest last), optionally of one node, at most `limit`.
    pub fn crashes(&self, node: Option<&str>, limit: usize) -> Vec<CrashEntry> {
        let all = self
            .inner
            .ctx
            .crashes
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mine: Vec<CrashEntry> = all
            .iter()
            .filter(|c| node.is_none_or(|n| c.record.node.as_str() == n))
            .cloned()
            .collect();
        mine[mine.len().saturating_sub(limit)..].to_vec()
    }

    /// Ask the runtime to shut down; whoever awaits [`Runtime::shutdown_requested`] carries it out.
    pub fn request_shutdown(&self, cause: ShutdownCause) {
        self.inner.ctx.request_shutdown(cause);
    }

    /// Wait until something asks for a shutdown (the control socket, a give-up with
    /// `on_give_up = "shutdown"`, [`Runtime::request_shutdown`]).
    pub async fn shutdown_requested(&self) -> ShutdownCause {
        let mut rx = self.inner.ctx.shutdown.subscribe();
        loop {
            if let Some(cause) = rx.borrow_and_update().clone() {
                return cause;
            }
            if rx.changed().await.is_err() {
                return ShutdownCause::Requested;
            }
        }
    }

    /// Stop everything in order — worlds first (together), then drivers in reverse start
    /// order — each with a graceful request and SIGKILL at its stop timeout; then stop the hub
    /// and the control socket. Safe to call more than once: later calls wait for the first.
    pub async fn shutdown(&self, cause: ShutdownCause) -> ShutdownReport {
        self.inner
            .finished
            .get_or_init(|| self.do_shutdown(cause))
            .await
            .clone()
    }

    async fn do_shutdown(&self, cause: ShutdownCause) -> ShutdownReport {
        let t0 = Instant::now();
        self.inner.ctx.registry.begin_shutdown();
        self.inner.ctx.request_shutdown(cause.clone());
        tracing::info!(cause = ?cause, "shutting down: worlds first, then drivers in reverse order");
        let mut killed_events = self.subscribe();
        let supervisors = self
            .inner
            .supervisors
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let sup = |n: &NodeName| supervisors.get(n).cloned();
        let plan = self.plan();
        let worlds: Vec<ActorRef<SupMsg>> = plan
            .worlds
            .nodes
            .iter()
            .filter_map(|n| sup(&n.name))
            .collect();
        let limit = self.stop_limit();
        let mut stops = tokio::task::JoinSet::new();
        for w in worlds {
            stops.spawn(async move {
                let _ = w.call(SupMsg::Stop, Some(limit)).await;
            });
        }
        while stops.join_next().await.is_some() {}
        for driver in plan.drivers.nodes.iter().rev() {
            if let Some(s) = sup(&driver.name) {
                self.stop_one(&s).await;
            }
        }
        let mut killed = Vec::new();
        loop {
            let ev = match killed_events.try_recv() {
                Ok(ev) => ev,
                Err(broadcast::error::TryRecvError::Lagged(n)) => {
                    tracing::warn!(
                        missed = n,
                        "too many events to list every node killed at its stop timeout"
                    );
                    continue;
                }
                Err(_) => break,
            };
            // Stopped on request, but only by SIGKILL at the end of its stop timeout.
            if let syncra_protocol::status::EventKind::Down { exit } = &ev.what
                && exit.reason == syncra_protocol::crash::Reason::Requested
                && exit.signal.as_deref() == Some("SIGKILL")
            {
                killed.push(ev.node.clone());
            }
        }
        self.inner.ctx.drain_tracked().await;
        self.inner.ctx.hosts.goodbye().await;
        self.inner.ctx.spawner.release().await;
        if let Some(task) = self
            .inner
            .control
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            task.abort();
        }
        #[cfg(feature = "dashboard")]
        if let Some(d) = self.inner.dashboard.get() {
            d.stop();
        }
        self.inner.watchdog.abort();
        self.inner.broker_task.abort();
        self.inner.hub.stop().await;
        self.inner.router.stop(None);
        self.inner.drivers.stop(None);
        self.inner.worlds.stop(None);
        self.inner.root.stop(None);
        drop(
            self.inner
                .run_dir
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take(),
        );
        let report = ShutdownReport {
            cause,
            killed,
            took: t0.elapsed(),
        };
        tracing::info!(
            ms = report.took.as_millis() as u64,
            killed = report.killed.len(),
            "shut down"
        );
        report
    }

    /// Answer a control request (what the control socket serves).
    pub async fn control(&self, request: ControlRequest) -> ControlReply {
        let done = |r: Result<String, ControlError>| match r {
            Ok(message) => ControlReply::Done { message },
            Err(e) => ControlReply::Error(e),
        };
        match request {
            ControlRequest::Status => ControlReply::Status(self.status()),
            ControlRequest::Reload { config, dry_run } => {
                let config = config.map(PathBuf::from);
                let result = if dry_run {
                    self.preview(config)
                } else {
                    self.reload(config).await
                };
                reloaded(result)
            }
            ControlRequest::Upgrade { node, command } => {
                reloaded(self.upgrade(&node, &command).await)
            }
            ControlRequest::Snapshot { node, out } => {
                done(self.snapshot(&node, Path::new(&out)).await)
            }
            ControlRequest::Restore { node, file } => {
                done(self.restore(&node, Path::new(&file)).await)
            }
            ControlRequest::Restart { node } => done(self.restart(&node).await),
            ControlRequest::Stop { node } => done(self.stop_node(&node).await),
            ControlRequest::Start { node } => done(self.start_node(&node).await),
            ControlRequest::Shutdown => {
                self.request_shutdown(ShutdownCause::Requested);
                ControlReply::Done {
                    message: "shutting down".into(),
                }
            }
            ControlRequest::Crashes { node, limit } => {
                ControlReply::Crashes(self.crashes(node.as_deref(), limit))
            }
            ControlRequest::Streams => ControlReply::Streams(self.streams()),
            ControlRequest::Tap { .. } => ControlReply::Error(ControlError {
                kind: ControlErrorKind::BadRequest,
                message: "tap through the control socket (it carries the ring's fd)".into(),
            }),
            ControlRequest::Subscribe => ControlReply::Error(ControlError {
                kind: ControlErrorKind::BadRequest,
                message: "subscribe through the control socket or Runtime::subscribe".into(),
            }),
            ControlRequest::Call {
                node,
                tag,
                json,
                timeout_ms,
            } => self
                .cli_message(&node, &tag, &json, Some(timeout_ms))
                .await
                .unwrap_or_else(ControlReply::Error),
            ControlRequest::Send { node, tag, json } => self
                .cli_message(&node, &tag, &json, None)
                .await
                .unwrap_or_else(ControlReply::Error),
        }
    }

    /// A call (`timeout_ms`: `Some`) or a message from the command line to `node`: `json`
    /// becomes a MessagePack payload tagged `tag`, routed as from
    /// [`syncra_protocol::node::CLI_CALLER`]; the answer
    /// comes back as JSON.
    async fn cli_message(
        &self,
        node: &str,
        tag: &str,
        json: &str,
        timeout_ms: Option<u64>,
    ) -> Result<ControlReply, ControlError> {
        use crate::router::{CliOutcome, RouterMsg};
        let err = |kind, message: String| ControlError { kind, message };
        let to = self.node_name(node)?;
        if !syncra_protocol::message::is_valid_tag(tag) {
            return Err(err(
                ControlErrorKind::BadRequest,
                format!(
                    "`{tag}` is not a message tag: expected NAME/VERSION, e.g. studio.hologram.get-stats/1"
                ),
            ));
        }
        let value: serde_json::Value = serde_json::from_str(json).map_err(|e| {
            err(
                ControlErrorKind::BadRequest,
                format!(
                    "the {} is not JSON: {e}",
                    if timeout_ms.is_some() {
                        "request"
                    } else {
                        "message"
                    }
                ),
            )
        })?;
        let payload = Payload {
            type_tag: tag.to_owned(),
            bytes: syncra_protocol::wire::encode(&value),
        };
        // Wait for a node that is restarting as long as a call may take (a send: 5 s).
        let wait = Duration::from_millis(timeout_ms.unwrap_or(5000).min(MAX_CLI_WAIT_MS));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let routed = RouterMsg::Cli {
            to: to.clone(),
            call: timeout_ms.is_some(),
            payload,
            wait_ms: Some(wait.as_millis() as u64),
            reply: tx,
        };
        if self.inner.router.cast(routed).is_err() {
            return Err(err(ControlErrorKind::Timeout, "the router is gone".into()));
        }
        let outcome = match tokio::time::timeout(wait + Duration::from_millis(500), rx).await {
            Ok(Ok(outcome)) => outcome,
            _ => {
                return Err(err(
                    ControlErrorKind::Timeout,
                    format!("no answer from {to} within {} ms", wait.as_millis()),
                ));
            }
        };
        match outcome {
            CliOutcome::Delivered => Ok(ControlReply::Done {
                message: format!("delivered to {to}"),
            }),
            CliOutcome::Answered(Ok(answer)) => {
                let value =
                    syncra_protocol::wire::decode::<serde_json::Value>("answer", &answer.bytes)
                        .map_err(|e| {
                            err(
                                ControlErrorKind::Remote,
                                format!("{to}'s answer does not decode: {e}"),
                            )
                        })?;
                Ok(ControlReply::Answer {
                    tag: answer.type_tag,
                    json: value.to_string(),
                })
            }
            CliOutcome::Answered(Err(message)) => Err(err(
                ControlErrorKind::Remote,
                format!("{to} answered with an error: {message}"),
            )),
            CliOutcome::Undeliverable(reason) => Err(err(
                ControlErrorKind::Undelivered,
                format!("not delivered to {to}: {reason}"),
            )),
            CliOutcome::CalleeExited { incarnation } => Err(err(
                ControlErrorKind::Undelivered,
                format!(
                    "{to} (incarnation {incarnation}) exited before answering; it may have acted on the request"
                ),
            )),
        }
    }

    /// Every declared stream: producer, consumers, rate and drops.
    pub fn streams(&self) -> Vec<StreamView> {
        let mut views = self.inner.ctx.broker.views();
        let hosts: HashMap<NodeName, String> = self
            .inner
            .ctx
            .registry
            .snapshot()
            .into_iter()
            .filter_map(|n| Some((n.name, n.host?)))
            .collect();
        for v in &mut views {
            v.producer_host = hosts.get(&v.producer).cloned();
            for c in &mut v.consumers {
                c.host = hosts.get(&c.node).cloned();
            }
        }
        views
    }

    /// One stream's view and a duplicate of its ring's fd (for observers such as `syncra tap`).
    pub fn tap(&self, stream: &str) -> Option<(StreamView, std::os::fd::OwnedFd)> {
        self.inner.ctx.broker.tap(stream)
    }

    /// SIGKILL every running node's process group at once (a second Ctrl-C).
    pub fn kill_all(&self) {
        for n in self.inner.ctx.registry.snapshot() {
            if let Some(pid) = n.pid {
                crate::spawn::signal_group(pid, rustix::process::Signal::KILL);
            }
        }
    }

    /// Read the config again (the file it started from, or `config`), with the environment
    /// and flags it started with; validate it whole (a bad one changes nothing, and the
    /// error says why); then apply what changed ([`Runtime::apply`]).
    pub async fn reload(&self, config: Option<PathBuf>) -> Result<ReloadReport, ReloadError> {
        let plan = self.load(config)?;
        self.apply(plan).await
    }

    /// What [`Runtime::reload`] would change, changing nothing.
    pub fn preview(&self, config: Option<PathBuf>) -> Result<ReloadReport, ReloadError> {
        let plan = self.load(config)?;
        Ok(ReloadReport {
            diff: syncra_config::diff::diff(&self.plan(), &plan),
            applied: false,
            outcomes: Vec::new(),
        })
    }

    fn load(&self, config: Option<PathBuf>) -> Result<Plan, ReloadError> {
        let loader = self.inner.loader.clone().ok_or(ReloadError::NoConfig)?;
        let loader = match config {
            Some(path) => loader.file(path),
            None => loader,
        };
        let loaded = loader.load()?;
        let (problems, _) = crate::spawn::command_problems(&loaded, &self.inner.ctx.bin_dirs);
        if !problems.is_empty() {
            return Err(syncra_config::ConfigError::Invalid(problems).into());
        }
        Ok(loaded.plan)
    }

    /// Give node `node` a new executable and restart it alone with it (`syncra upgrade`).
    /// The running plan changes; the config file does not (a later reload from the file
    /// goes back to what it says). With `rollback = true` on the node, a command that fails
    /// to start gives way to the previous one by itself.
    pub async fn upgrade(&self, node: &str, command: &str) -> Result<ReloadReport, ReloadError> {
        let name = self
            .node_name(node)
            .map_err(|e| ReloadError::Refused(e.message))?;
        let mut plan = self.plan();
        let Some(n) = plan
            .drivers
            .nodes
            .iter_mut()
            .chain(plan.worlds.nodes.iter_mut())
            .find(|n| n.name == name)
        else {
            return Err(ReloadError::Refused(format!("no node is called `{node}`")));
        };
        if n.host.is_none() {
            crate::spawn::resolve_program(command, &self.inner.ctx.bin_dirs)
                .map_err(|e| ReloadError::Refused(format!("{node}: {e}")))?;
        }
        n.command = command.to_owned();
        self.apply(plan).await
    }

    /// Run `new` from now on, changing only what differs from the running plan: removed nodes
    /// stop (in reverse start order) and go; nodes whose own config changed restart alone, one
    /// at a time, each waited for (ready or failed) before the next; new nodes start in
    /// dependency order; group policies change in place. Nothing else restarts. What only a
    /// new runtime takes is reported in the diff, not applied.
    pub async fn apply(&self, new: Plan) -> Result<ReloadReport, ReloadError> {
        if self.inner.ctx.registry.shutting_down() {
            return Err(ReloadError::ShuttingDown);
        }
        // A host this runtime has no link to cannot take a node: it would have to run here.
        for n in new.nodes() {
            let hosts = n.host.iter().chain(n.fallback_host.iter().flatten());
            for h in hosts {
                if self.inner.ctx.hosts.get(h).is_none() {
                    return Err(ReloadError::Refused(format!(
                        "{} is placed on host {h}, which this runtime has no link to: a new [hosts] entry is taken by a new runtime only",
                        n.name
                    )));
                }
            }
        }
        let _one_at_a_time = self.inner.reloading.lock().await;
        let old = self.plan();
        let diff = syncra_config::diff::diff(&old, &new);
        let mut outcomes = Vec::new();
        let group_of = |name: &NodeName| match name.kind() {
            NodeKind::Driver => &self.inner.drivers,
            NodeKind::World => &self.inner.worlds,
        };
        let sup = |name: &NodeName| {
            self.inner
                .supervisors
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(name)
                .cloned()
        };
        let limit = self.stop_limit();
        // Removed: stopped, then their supervisors go.
        for name in &diff.removed {
            if let Some(s) = sup(name) {
                let stopped = self.stop_one(&s).await;
                let _ = group_of(name)
                    .call(
                        |reply| GroupMsg::Remove {
                            node: name.clone(),
                            reply,
                        },
                        Some(limit),
                    )
                    .await;
                self.inner
                    .supervisors
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(name);
                outcomes.push(if stopped {
                    format!("{name}: stopped and removed")
                } else {
                    format!("{name}: removed (it did not confirm its stop in time)")
                });
            }
        }
        let order: Vec<NodeName> = new.nodes().map(|n| n.name.clone()).collect();
        self.inner.ctx.registry.set_nodes(&order);
        for (group, a, b) in [
            (
                &self.inner.drivers,
                &old.drivers.policy,
                &new.drivers.policy,
            ),
            (&self.inner.worlds, &old.worlds.policy, &new.worlds.policy),
        ] {
            if a != b {
                let _ = group.cast(GroupMsg::Policy(*b));
            }
        }
        // The plan is the new one from here: a restart below takes it.
        *self.inner.plan.write().unwrap_or_else(|p| p.into_inner()) = new.clone();
        let find = |name: &NodeName| new.nodes().find(|n| n.name == *name).cloned();
        // Changed: one at a time, each waited for.
        for change in &diff.changed {
            let (Some(s), Some(plan)) = (sup(&change.node), find(&change.node)) else {
                continue;
            };
            let before = self.view(&change.node);
            let wait = plan.start_timeout + limit;
            let _ = s.cast(SupMsg::Replan(Box::new(plan)));
            let what = change.what.join(", ");
            if before
                .as_ref()
                .is_some_and(|v| v.state == NodeState::Stopped)
            {
                outcomes.push(format!(
                    "{}: new {what}, taken at its next start (it is stopped)",
                    change.node
                ));
                continue;
            }
            let since = before.map(|v| v.incarnation).unwrap_or(0);
            outcomes.push(self.settle(&change.node, since, wait, &what).await);
        }
        // Added: supervised, then started in order (each start waits for what it depends on).
        for name in &diff.added {
            let Some(plan) = find(name) else { continue };
            let (policy, group_order) = match name.kind() {
                NodeKind::Driver => (
                    new.drivers.policy,
                    new.drivers.nodes.iter().map(|n| n.name.clone()).collect(),
                ),
                NodeKind::World => (
                    new.worlds.policy,
                    new.worlds.nodes.iter().map(|n| n.name.clone()).collect(),
                ),
            };
            let added = group_of(name)
                .call(
                    |reply| GroupMsg::Add {
                        plan: Box::new(plan),
                        policy,
                        order: group_order,
                        reply,
                    },
                    Some(Duration::from_secs(10)),
                )
                .await;
            match added {
                Ok(ractor::rpc::CallResult::Success(Ok(s))) => {
                    self.inner
                        .supervisors
                        .write()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(name.clone(), s);
                }
                other => outcomes.push(format!("{name}: not added: {other:?}")),
            }
        }
        for name in &diff.added {
            if let Some(s) = sup(name) {
                let _ = s.call(SupMsg::Start, Some(Duration::from_secs(60))).await;
            }
        }
        for name in &diff.added {
            let wait = find(name).map(|p| p.start_timeout).unwrap_or_default() + limit;
            outcomes.push(self.settle(name, 0, wait, "config").await);
        }
        for key in &diff.not_live {
            tracing::warn!(
                key,
                "changed in the config, but only a new runtime takes it"
            );
        }
        for line in diff.lines() {
            tracing::info!("reload: {line}");
        }
        Ok(ReloadReport {
            diff,
            applied: true,
            outcomes,
        })
    }

    /// The view of node `name` now.
    fn view(&self, name: &NodeName) -> Option<syncra_protocol::status::NodeView> {
        self.inner
            .ctx
            .registry
            .snapshot()
            .into_iter()
            .find(|n| n.name == *name)
    }

    /// Wait (up to `wait`) until node `name` has an incarnation after `since` that is ready
    /// or failed; a sentence saying which.
    async fn settle(&self, name: &NodeName, since: u64, wait: Duration, what: &str) -> String {
        let settled = |v: &syncra_protocol::status::NodeView| {
            v.incarnation > since && matches!(v.state, NodeState::Ready | NodeState::Failed)
        };
        let _ = tokio::time::timeout(
            wait,
            self.wait_for(|nodes| nodes.iter().any(|v| v.name == *name && settled(v))),
        )
        .await;
        match self.view(name) {
            Some(v) if v.state == NodeState::Ready => format!(
                "{name}: ready with its new {what} (incarnation {}, pid {})",
                v.incarnation,
                v.pid.map(|p| p.to_string()).unwrap_or_default()
            ),
            Some(v) => format!(
                "{name}: {} with its new {what}{}",
                v.state,
                v.detail.map(|d| format!(": {d}")).unwrap_or_default()
            ),
            None => format!("{name}: gone"),
        }
    }

    /// Nodes of `kind`, in start order.
    pub fn nodes(&self, kind: NodeKind) -> Vec<NodeName> {
        self.plan()
            .nodes()
            .filter(|n| n.kind == kind)
            .map(|n| n.name.clone())
            .collect()
    }
}

/// A reload's outcome as the control socket answers it.
fn reloaded(result: Result<ReloadReport, ReloadError>) -> ControlReply {
    match result {
        Ok(r) => ControlReply::Reloaded {
            changes: r.diff.lines(),
            applied: r.applied,
            outcomes: r.outcomes,
        },
        Err(e) => ControlReply::Error(ControlError {
            kind: match e {
                ReloadError::ShuttingDown => ControlErrorKind::ShuttingDown,
                _ => ControlErrorKind::Invalid,
            },
            message: format!("nothing changed: {e}"),
        }),
    }
}
