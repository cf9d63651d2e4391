//! The node supervisor: owns one node's OS process through its whole life.
//!
//! ```text
//! stopped ──Start──▶ starting ──Ready──▶ ready ──(exit | hung)──▶ backoff ──▶ starting …
//!    ▲                  │                  │                         │
//!    └──── Stop ────────┴───── stopping ◀──┘                         └──▶ failed
//! ```
//!
//! Everything that happens to the node arrives as one [`SupMsg`] and is handled in one
//! `match` in [`NodeSupervisor::handle`]. Death is seen at once (the child's exit, through
//! tokio's pidfd-based wait); a hang is seen when heartbeats stop for the node's deadline,
//! and answered with SIGABRT (for a dump), then SIGKILL.
//!
//! A node placed on another host (`host = "gpu-box"`) is the same state machine: its process
//! ([`Proc::Remote`]) is spawned, signalled and watched by that host's agent, and its exit,
//! hang or loss (the host unreachable past its deadline) arrive as [`SupMsg::Remote`].

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use crate::remote::hosts::{HostLink, RemoteEvent};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use ractor_cluster::RactorMessage;
use rustix::process::Signal;
use syncra_config::{GiveUpAction, GroupPolicy, HookPoint, NodePlan, RestartType};
use syncra_protocol::agent::SpawnRequest;
use syncra_protocol::boot::{Boot, ClusterJoin, PAGE_FD, Token};
use syncra_protocol::broker::BROKER_FD;
use syncra_protocol::crash::{CrashRecord, Decision, DumpInfo, ExitSummary, PanicReport, Reason};
use syncra_protocol::node::{NodeInbox, NodeToRuntime, RuntimeToNode, agent_group};
use syncra_protocol::page::NodePage;
use syncra_protocol::status::{EventKind, LifecycleEvent, SandboxStatus};
use syncra_protocol::{NodeKind, NodeName, NodeState, PROTOCOL_VERSION, wire};
use tokio::io::AsyncWriteExt;

use super::ending::{Forced, NotStarted};
use super::group::GroupMsg;
use super::policy::{self, Ending, History, Termination, Verdict};
use super::{Ctx, ShutdownCause};
use crate::cluster::HUB_NAME;
use crate::hooks::HookContext;
use crate::launch::{self, LaunchSpec};
use crate::logs;
use crate::registry::Route;
use crate::spawn::{SpawnError, signal};

/// A launched process's claim before it is given an incarnation (a warm spare).
const UNCLAIMED: u64 = 0;
/// A launched process's claim once it has exited.
const EXITED: u64 = u64::MAX;

/// Everything that can happen to a node.
#[derive(RactorMessage)]
pub(crate) enum SupMsg {
    /// Begin supervising: start the node (first start, by the group); the reply follows the
    /// spawn attempt.
    Start(RpcReplyPort<()>),
    /// The nodes this one depends on are all ready (`Ok`) or one cannot become ready.
    DepsSettled {
        epoch: u64,
        result: Result<(), String>,
    },
    /// A restart delay is over.
    Spawn { epoch: u64 },
    /// The node is ready: launch a warm spare for its next restart (when it keeps one).
    PrepareSpare,
    /// The warm spare exited before it was used.
    SpareExited { pid: u32, termination: Termination },
    /// A message from the child, authenticated by the gateway.
    FromNode {
        incarnation: u64,
        msg: NodeToRuntime,
    },
    /// The child's process ended.
    Exited(Box<ExitReport>),
    /// The start timeout of an incarnation expired.
    StartTimeout { incarnation: u64 },
    /// The watchdog saw no heartbeat from an incarnation for its deadline.
    Hung { incarnation: u64, silent: Duration },
    /// A grace period expired (abort of a hung node, graceful stop): SIGKILL.
    KillNow { incarnation: u64 },
    /// Restart (a sibling failed under one_for_all / rest_for_one, or a user asked).
    Restart {
        delay: Duration,
        cause: String,
        user: bool,
    },
    /// Stop the node and keep it stopped; reply once it is.
    Stop(RpcReplyPort<()>),
    /// A user asks to start a stopped or failed node.
    StartRequest(RpcReplyPort<Result<String, String>>),
    /// A user asks to restart the node.
    RestartRequest(RpcReplyPort<Result<String, String>>),
    /// What the agent of a remote incarnation's host reports (or the host's loss).
    Remote {
        incarnation: u64,
        event: RemoteEvent,
    },
    /// A reload (or `syncra upgrade`) changed this node's own config: take `plan`, and
    /// restart with it if it runs.
    Replan(Box<NodePlan>),
    /// A reload changed the group's policy.
    Policy(GroupPolicy),
}

/// How an incarnation's process ended, as the waiter saw it.
#[derive(Debug)]
pub(crate) struct ExitReport {
    incarnation: u64,
    termination: Termination,
    at: SystemTime,
    stderr_tail: Vec<String>,
    panic: Option<PanicReport>,
    /// Why the node said it was leaving (its page's exit note), if it said.
    note: Option<String>,
    /// Why no process ran, when none did.
    not_started: Option<NotStarted>,
    /// No replacement before this (its host was lost: the agent's fence first).
    not_before: Option<Instant>,
    /// The minidump of its native crash, if its crash handler asked for one.
    dump: Option<DumpInfo>,
}

impl ExitReport {
    /// The end of incarnation `incarnation`, which never had a process, because of `why`.
    fn never_ran(incarnation: u64, why: NotStarted) -> ExitReport {
        ExitReport {
            incarnation,
            termination: Termination::NotStarted,
            at: SystemTime::now(),
            stderr_tail: Vec::new(),
            panic: None,
            note: None,
            not_started: Some(why),
            not_before: None,
            dump: None,
        }
    }
}

/// What follows the end of an incarnation.
#[derive(Debug)]
enum Next {
    /// A new incarnation after `delay`.
    Restart {
        delay: Duration,
        attempt: u32,
        cause: String,
        siblings: Vec<NodeName>,
    },
    /// The supervisor gives up: `failed`.
    GiveUp { why: String },
    /// Not restarted: `failed` or `stopped`, with this status detail.
    Stop {
        detail: String,
        why: String,
        failed: bool,
    },
}

pub(crate) struct SupArgs {
    pub(crate) ctx: Arc<Ctx>,
    pub(crate) plan: NodePlan,
    pub(crate) policy: GroupPolicy,
    pub(crate) group: ActorRef<GroupMsg>,
}

pub(crate) struct NodeSupervisor;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Stopped,
    Waiting,
    Starting,
    Ready,
    Stopping,
    Backoff,
    Failed,
}

impl Phase {
    fn state(self) -> NodeState {
        match self {
            Phase::Stopped => NodeState::Stopped,
            Phase::Waiting | Phase::Starting => NodeState::Starting,
            Phase::Ready => NodeState::Ready,
            Phase::Stopping => NodeState::Stopping,
            Phase::Backoff => NodeState::Backoff,
            Phase::Failed => NodeState::Failed,
        }
    }
}

/// What follows the end of the current incarnation.
#[derive(Debug, Clone)]
enum After {
    /// The restart policy decides.
    Decide,
    /// Stay stopped (a user stop, or shutdown).
    StayStopped,
    /// Start again after `delay` (a sibling's failure, or a user restart).
    Restart { delay: Duration, cause: String },
}

/// A process launched for this node and blocked reading its boot frame: about to become an
/// incarnation, or a warm spare waiting for the next restart.
struct Launched {
    pid: u32,
    proc: Proc,
    /// The incarnation it is, [`UNCLAIMED`] while a spare, [`EXITED`] once its exit is seen:
    /// whoever changes it first decides what the exit is reported as.
    claim: Arc<AtomicU64>,
    ours: std::os::unix::net::UnixStream,
    /// Our end of its broker link (on another host, the end of the relay to it).
    broker_ours: Option<OwnedFd>,
    page: Arc<NodePage>,
    log_path: std::path::PathBuf,
    /// What its sandbox enforces.
    sandbox: Option<SandboxStatus>,
    /// Whether it has a crash socket (fd 7) its dumps are written through.
    crash: bool,
}

/// How the supervisor reaches its node's process: its pidfd here, or its host's agent.
enum Proc {
    Local(OwnedFd),
    Remote {
        host: Arc<HostLink>,
        node: NodeName,
        incarnation: u64,
    },
}

impl Proc {
    fn signal(&self, sig: Signal) {
        match self {
            Proc::Local(pidfd) => signal(pidfd, sig),
            Proc::Remote {
                host,
                node,
                incarnation,
            } => host.signal(node, *incarnation, sig.as_raw()),
        }
    }

    /// The host it runs on, when not this one.
    fn host(&self) -> Option<&Arc<HostLink>> {
        match self {
            Proc::Local(_) => None,
            Proc::Remote { host, .. } => Some(host),
        }
    }
}

/// Where the next incarnation runs.
enum Placement {
    Local,
    Remote(Arc<HostLink>),
}

impl Launched {
    /// Claim a spare as incarnation `incarnation`; `None` if it already exited.
    fn claim(self, incarnation: u64) -> Option<Launched> {
        self.claim
            .compare_exchange(UNCLAIMED, incarnation, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
            .then_some(self)
    }
}

/// The resource limit of its sandbox that ended an incarnation, in words ("memory limit 256
/// MiB"), when its end shows one: an allocation that failed (Rust, C++ and glibc say so on
/// stderr before aborting) under a memory limit, or SIGXCPU under a CPU limit.
fn limit_reached(
    profile: &syncra_config::sandbox::SandboxProfile,
    termination: Termination,
    stderr: &[String],
) -> Option<String> {
    if profile.mode == syncra_config::sandbox::SandboxMode::Off {
        return None;
    }
    let crashed = matches!(termination, Termination::Signal(_) | Termination::Code(_));
    if profile.memory_mb > 0 && crashed {
        let allocation_failed = stderr.iter().rev().take(20).any(|l| {
            l.contains("memory allocation of")
                || l.contains("std::bad_alloc")
                || l.contains("Cannot allocate memory")
                || l.contains("out of memory")
        });
        if allocation_failed && termination != Termination::Code(0) {
            return Some(format!("memory limit {} MiB", profile.memory_mb));
        }
    }
    if profile.cpu_seconds > 0 && termination == Termination::Signal(libc::SIGXCPU) {
        return Some(format!("CPU time limit {} s", profile.cpu_seconds));
    }
    None
}

/// Write as much of `frame` as the socket takes now.
fn write_nonblocking(
    socket: &std::os::unix::net::UnixStream,
    frame: &[u8],
) -> std::io::Result<usize> {
    socket.set_nonblocking(true)?;
    let mut written = 0;
    while written < frame.len() {
        match std::io::Write::write(&mut &*socket, &frame[written..]) {
            Ok(n) => written += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(written)
}

/// The running incarnation.
struct Live {
    incarnation: u64,
    pid: u32,
    proc: Proc,
    token: Token,
    group: String,
    /// Its cluster node name, which is also its link's label.
    cluster_name: String,
    spawned_at: Instant,
    ready_at: Option<Instant>,
    ready_announced: bool,
    page: Arc<NodePage>,
    agent: Option<ActorRef<NodeInbox>>,
    forced: Option<Forced>,
    log_path: std::path::PathBuf,
}

pub(crate) struct SupState {
    ctx: Arc<Ctx>,
    plan: NodePlan,
    policy: GroupPolicy,
    group: ActorRef<GroupMsg>,
    myself: ActorRef<SupMsg>,
    phase: Phase,
    /// Invalidates pending waits (dependencies, restart delays) when bumped.
    epoch: u64,
    incarnation: u64,
    spawns: u64,
    history: History,
    live: Option<Live>,
    after: After,
    stop_waiters: Vec<RpcReplyPort<()>>,
    /// The warm spare, when the policy keeps one and the node is ready.
    spare: Option<Launched>,
    /// Spawn attempts in a row that found the machine out of a resource.
    resource_waits: u32,
    /// Whether what its sandbox cannot enforce here has been said (once per node).
    sandbox_warned: bool,
    /// No incarnation starts before this: the last one was lost with its host, and its agent
    /// must have fenced it first — whoever asks for the start (policy, user, sibling).
    not_before: Option<Instant>,
    /// The plan before a new command (with `rollback = true`), until an incarnation of the
    /// new one is ready: if it fails to start, this comes back.
    probation: Option<NodePlan>,
    /// A world's failures in a row, each within its poison window of its start.
    quick_failures: u32,
}

impl Actor for NodeSupervisor {
    type Msg = SupMsg;
    type State = SupState;
    type Arguments = SupArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<SupMsg>,
        args: SupArgs,
    ) -> Result<SupState, ActorProcessingErr> {
        Ok(SupState {
            ctx: args.ctx,
            plan: args.plan,
            policy: args.policy,
            group: args.group,
            myself,
            phase: Phase::Stopped,
            epoch: 0,
            incarnation: 0,
            spawns: 0,
            history: History::default(),
            live: None,
            after: After::Decide,
            stop_waiters: Vec::new(),
            spare: None,
            sandbox_warned: false,
            resource_waits: 0,
            not_before: None,
            probation: None,
            quick_failures: 0,
        })
    }

    async fn handle(
        &self,
        _: ActorRef<SupMsg>,
        msg: SupMsg,
        st: &mut SupState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupMsg::Start(reply) => {
                if matches!(st.phase, Phase::Stopped | Phase::Failed) {
                    st.begin().await;
                }
                let _ = reply.send(());
            }
            SupMsg::DepsSettled { epoch, result } => {
                if epoch == st.epoch && st.phase == Phase::Waiting {
                    match result {
                        Ok(()) => st.spawn().await,
                        Err(why) => st.dependency_failed(why).await,
                    }
                }
            }
            SupMsg::Spawn { epoch } => {
                if epoch == st.epoch && st.phase == Phase::Backoff {
                    st.begin().await;
                }
            }
            SupMsg::PrepareSpare => st.prepare_spare().await,
            SupMsg::SpareExited { pid, termination } => {
                if st.spare.as_ref().is_some_and(|s| s.pid == pid) {
                    tracing::warn!(node = %st.plan.name, pid, ?termination, "the warm spare exited before it was used; the next restart spawns afresh");
                    st.spare = None;
                    st.show_spare();
                }
            }
            SupMsg::FromNode { incarnation, msg } => st.on_node_message(incarnation, msg),
            SupMsg::Exited(report) => st.exited(*report).await,
            SupMsg::StartTimeout { incarnation } => {
                let (name, timeout_ms) = (
                    st.plan.name.clone(),
                    st.plan.start_timeout.as_millis() as u64,
                );
                if st.phase == Phase::Starting
                    && let Some(live) = st.live_mut(incarnation)
                {
                    tracing::warn!(node = %name, pid = live.pid, incarnation, timeout_ms, "not ready within its start timeout; killing it");
                    live.forced.get_or_insert(Forced::StartTimeout);
                    live.proc.signal(Signal::KILL);
                }
            }
            SupMsg::Hung {
                incarnation,
                silent,
            } => st.hung(incarnation, silent),
            SupMsg::KillNow { incarnation } => {
                let name = st.plan.name.clone();
                if let Some(live) = st.live_mut(incarnation) {
                    tracing::warn!(node = %name, pid = live.pid, incarnation, "grace period over; SIGKILL");
                    live.proc.signal(Signal::KILL);
                }
            }
            SupMsg::Restart { delay, cause, user } => st.restart(delay, cause, user).await,
            SupMsg::Stop(reply) => {
                st.drop_spare();
                match st.phase {
                    Phase::Starting | Phase::Ready => {
                        st.stop_waiters.push(reply);
                        st.stop_live(After::StayStopped, "stop requested");
                    }
                    Phase::Stopping => {
                        st.stop_waiters.push(reply);
                        st.after = After::StayStopped;
                    }
                    Phase::Waiting | Phase::Backoff => {
                        st.epoch += 1;
                        st.set_phase(Phase::Stopped, Some("stopped".into()));
                        st.emit(None, EventKind::Stopped);
                        let mut hook = st.hook_ctx(HookPoint::AfterStop, None);
                        hook.reason = Some(Reason::Requested);
                        st.hook_in_background(hook);
                        let _ = reply.send(());
                    }
                    Phase::Stopped | Phase::Failed => {
                        let _ = reply.send(());
                    }
                }
            }
            SupMsg::StartRequest(reply) => {
                if matches!(st.phase, Phase::Stopped | Phase::Failed) {
                    st.history.reset();
                    st.begin().await;
                    let _ = reply.send(Ok(format!("starting {}", st.plan.name)));
                } else {
                    let _ = reply.send(Err(format!(
                        "{} is already {}",
                        st.plan.name,
                        st.phase.state()
                    )));
                }
            }
            SupMsg::RestartRequest(reply) => {
                st.restart(Duration::ZERO, "requested by a user".into(), true)
                    .await;
                let _ = reply.send(Ok(format!("restarting {}", st.plan.name)));
            }
            SupMsg::Remote { incarnation, event } => st.remote(incarnation, event).await,
            SupMsg::Replan(plan) => st.replan(*plan).await,
            SupMsg::Policy(policy) => st.policy = policy,
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _: ActorRef<SupMsg>,
        ev: SupervisionEvent,
        st: &mut SupState,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ProcessGroupChanged(change) = ev
            && st
                .live
                .as_ref()
                .is_some_and(|l| l.group == change.get_group())
        {
            st.try_become_ready();
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _: ActorRef<SupMsg>,
        st: &mut SupState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(live) = &st.live {
            live.proc.signal(Signal::KILL);
        }
        st.drop_spare();
        Ok(())
    }
}

/// A random per-incarnation token.
fn new_token() -> std::io::Result<Token> {
    let mut t = [0u8; 16];
    rustix::rand::getrandom(&mut t, rustix::rand::GetRandomFlags::empty())?;
    Ok(Token(t))
}

/// The name of signal `s` (`SIGKILL`), or its number.
pub(crate) fn signal_name(s: i32) -> String {
    let name = match s {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGSYS => "SIGSYS",
        _ => return format!("signal {s}"),
    };
    name.to_owned()
}

impl SupState {
    fn live_mut(&mut self, incarnation: u64) -> Option<&mut Live> {
        self.live.as_mut().filter(|l| l.incarnation == incarnation)
    }

    fn set_phase(&mut self, phase: Phase, detail: Option<String>) {
        self.phase = phase;
        let restarts = self.spawns.saturating_sub(1);
        let incarnation = self.incarnation;
        let pid = self.live.as_ref().map(|l| l.pid);
        let ready_since = self.live.as_ref().and_then(|l| l.ready_at);
        let page = self.live.as_ref().map(|l| l.page.clone());
        let agent = self
            .live
            .as_ref()
            .and_then(|l| Some((l.incarnation, l.agent.clone()?)));
        self.ctx.registry.update(&self.plan.name, |r| {
            r.page = page;
            r.agent = agent;
            r.view.state = phase.state();
            r.view.detail = detail;
            r.view.restarts = restarts;
            r.view.incarnation = incarnation;
            r.view.pid = pid;
            r.ready_since = if phase == Phase::Ready {
                ready_since
            } else {
                None
            };
        });
    }

    fn emit(&self, pid: Option<u32>, what: EventKind) {
        self.ctx.emit(LifecycleEvent {
            unix_ms: logs::unix_ms(SystemTime::now()),
            node: self.plan.name.clone(),
            incarnation: self.incarnation,
            pid,
            what,
        });
    }

    fn hook_ctx(&self, point: HookPoint, pid: Option<u32>) -> HookContext {
        HookContext {
            point,
            node: self.plan.name.clone(),
            kind: self.plan.kind,
            incarnation: self.incarnation,
            pid,
            exit_code: None,
            signal: None,
            reason: None,
            crash_record: None,
            restarts: self.spawns.saturating_sub(1),
            decision: None,
        }
    }

    /// Run hooks for `ctx.point` in the background (supervision does not wait for them).
    fn hook_in_background(&self, ctx: HookContext) {
        if self.ctx.hooks.any(ctx.point, &self.plan.hooks) {
            let (hooks, own) = (self.ctx.hooks.clone(), self.plan.hooks.clone());
            self.ctx.track(async move { hooks.run(&ctx, &own).await });
        }
    }

    /// Start, once the nodes this one depends on are ready.
    async fn begin(&mut self) {
        self.ctx
            .registry
            .update(&self.plan.name, |r| r.begun = true);
        self.epoch += 1;
        let pending: Vec<NodeName> = self
            .plan
            .depends_on
            .iter()
            .filter(|d| self.ctx.registry.state(d) != Some(NodeState::Ready))
            .cloned()
            .collect();
        if pending.is_empty() {
            return self.spawn().await;
        }
        let names: Vec<String> = pending.iter().map(|d| d.to_string()).collect();
        self.set_phase(
            Phase::Waiting,
            Some(format!("waiting for {} to be ready", names.join(", "))),
        );
        let (registry, deps, me, epoch) = (
            self.ctx.registry.clone(),
            self.plan.depends_on.clone(),
            self.myself.clone(),
            self.epoch,
        );
        tokio::spawn(async move {
            let mut changes = registry.watch();
            loop {
                let states: Vec<(NodeName, Option<NodeState>)> = deps
                    .iter()
                    .map(|d| (d.clone(), registry.state(d)))
                    .collect();
                // A dependency that ran and is now stopped (it finished, or a user stopped it)
                // will not become ready by itself: waiting for it would stall the start.
                let gone = |d: &NodeName, s: &Option<NodeState>| match s {
                    Some(NodeState::Failed) => Some("failed"),
                    Some(NodeState::Stopped) if registry.has_begun(d) => Some("is stopped"),
                    _ => None,
                };
                if states.iter().all(|(_, s)| *s == Some(NodeState::Ready)) {
                    let _ = me.cast(SupMsg::DepsSettled {
                        epoch,
                        result: Ok(()),
                    });
                    return;
                }
                if let Some((d, what)) = states.iter().find_map(|(d, s)| gone(d, s).map(|w| (d, w)))
                {
                    let _ = me.cast(SupMsg::DepsSettled {
                        epoch,
                        result: Err(format!("dependency {d} {what}")),
                    });
                    return;
                }
                if registry.shutting_down() || changes.changed().await.is_err() {
                    return;
                }
            }
        });
    }

    /// Spawn a new incarnation.
    async fn spawn(&mut self) {
        if self.ctx.registry.shutting_down() {
            self.set_phase(Phase::Stopped, Some("the runtime is shutting down".into()));
            for w in self.stop_waiters.drain(..) {
                let _ = w.send(());
            }
            return;
        }
        if let Some(not_before) = self.not_before {
            let wait = not_before.saturating_duration_since(Instant::now());
            if !wait.is_zero() {
                self.epoch += 1;
                let epoch = self.epoch;
                self.set_phase(
                    Phase::Backoff,
                    Some(format!(
                        "starting in {} ms: its last incarnation was lost with its host, which must have fenced it first",
                        wait.as_millis()
                    )),
                );
                self.myself
                    .send_after(wait, move || SupMsg::Spawn { epoch });
                return;
            }
            self.not_before = None;
        }
        self.incarnation += 1;
        self.spawns += 1;
        self.set_phase(Phase::Starting, None);
        let incarnation = self.incarnation;
        let before = self.hook_ctx(HookPoint::BeforeStart, None);
        if self.ctx.hooks.any(HookPoint::BeforeStart, &self.plan.hooks) {
            self.ctx.hooks.run(&before, &self.plan.hooks).await;
        }
        match self.try_spawn(incarnation).await {
            Ok(live) => {
                let pid = live.pid;
                self.resource_waits = 0;
                tracing::info!(node = %self.plan.name, pid, incarnation, "spawned");
                self.live = Some(live);
                self.set_phase(Phase::Starting, None);
                self.emit(Some(pid), EventKind::Spawned);
                self.myself
                    .send_after(self.plan.start_timeout, move || SupMsg::StartTimeout {
                        incarnation,
                    });
            }
            Err(error) if error.is_resource_shortage() || error.unreachable_host().is_some() => {
                self.short_of_resources(error)
            }
            Err(error) => {
                self.resource_waits = 0;
                let report = match error.in_doubt() {
                    // It may run there: this incarnation is spent, and lost.
                    Some(not_before) => ExitReport {
                        termination: Termination::Lost,
                        not_before: Some(not_before),
                        ..ExitReport::never_ran(incarnation, NotStarted::Lost(error.to_string()))
                    },
                    None => ExitReport::never_ran(incarnation, NotStarted::Spawn(error)),
                };
                self.ended(report, None).await;
            }
        }
    }

    /// Spawning failed because the machine (or the runtime) is out of a resource: no
    /// incarnation came to be and nothing failed, so the attempt is repeated after a delay
    /// for as long as it takes, without counting against the node's restart intensity.
    fn short_of_resources(&mut self, error: SpawnError) {
        self.incarnation -= 1;
        self.spawns -= 1;
        self.resource_waits = self.resource_waits.saturating_add(1);
        let attempt = self.resource_waits;
        let delay = policy::resource_retry_delay(attempt);
        let delay_ms = delay.as_millis() as u64;
        let why = match error.unreachable_host() {
            Some((host, why)) => {
                tracing::warn!(node = %self.plan.name, host, attempt, delay_ms, error = %why, "its host cannot be reached; spawning again later (not a failure of the node)");
                format!("waiting for host {host}: {why}")
            }
            None => {
                tracing::warn!(node = %self.plan.name, attempt, delay_ms, error = %error, "the machine is out of a resource; spawning again later (not a failure of the node)");
                format!("waiting for resources: {error}")
            }
        };
        self.emit(
            None,
            EventKind::Restarting {
                delay_ms,
                cause: why.clone(),
            },
        );
        self.epoch += 1;
        let epoch = self.epoch;
        self.set_phase(
            Phase::Backoff,
            Some(format!(
                "{why}; trying again in {delay_ms} ms (attempt {attempt}; not counted as a failure)"
            )),
        );
        self.myself
            .send_after(delay, move || SupMsg::Spawn { epoch });
    }

    async fn try_spawn(&mut self, incarnation: u64) -> Result<Live, SpawnError> {
        // Spawn → ready is timed from here, fork and exec included (as a bare spawn would be).
        let started = Instant::now();
        let launched = match self.placement() {
            Placement::Remote(host) => {
                self.drop_spare();
                self.launch_remote(host, incarnation).await?
            }
            Placement::Local => match self.spare.take().and_then(|s| s.claim(incarnation)) {
                Some(spare) => {
                    tracing::debug!(node = %self.plan.name, pid = spare.pid, incarnation, "using the warm spare");
                    spare
                }
                None => self.launch(incarnation).await?,
            },
        };
        self.activate(launched, incarnation, started)
    }

    /// Start a process of this node's program. It blocks reading its boot frame until
    /// [`SupState::activate`] writes one. `claim` is the incarnation it will be (0: a spare,
    /// claimed later): its exit is reported as that incarnation's.
    async fn launch(&self, claim: u64) -> Result<Launched, SpawnError> {
        let env = self
            .plan
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let p = launch::launch(
            &self.ctx.spawner,
            LaunchSpec {
                name: &self.plan.name,
                command: &self.plan.command,
                args: &self.plan.args,
                env,
                sandbox: &self.plan.sandbox,
                bin_dirs: &self.ctx.bin_dirs,
                node_dir: self
                    .ctx
                    .runtime
                    .run_dir
                    .join("nodes")
                    .join(self.plan.name.file_stem()),
                sandbox_key: self.plan.name.to_string(),
                log_dir: &self.ctx.runtime.log_dir,
                broker: true,
                lines: None,
                dumps: self.ctx.runtime.dumps.map(|d| launch::DumpTarget {
                    dir: self.ctx.runtime.crash_dir.join("dumps"),
                    limits: syncra_dump::Limits {
                        keep: d.keep,
                        max_bytes: d.max_bytes,
                    },
                }),
            },
        )
        .await?;
        let pid = p.pid;
        let crash = p.dumps.is_some();
        let me = self.myself.clone();
        let waiter_page = p.page.clone();
        let claim = Arc::new(AtomicU64::new(claim));
        let waiter_claim = claim.clone();
        let (process, capture, dumps) = (p.process, p.capture, p.dumps);
        tokio::spawn(async move {
            let end = launch::wait_end(process, capture, &waiter_page, dumps).await;
            let incarnation = waiter_claim.swap(EXITED, Ordering::AcqRel);
            if incarnation == UNCLAIMED {
                let _ = me.cast(SupMsg::SpareExited {
                    pid,
                    termination: end.termination,
                });
                return;
            }
            let _ = me.cast(SupMsg::Exited(Box::new(ExitReport {
                incarnation,
                termination: end.termination,
                at: end.at,
                stderr_tail: end.stderr_tail,
                panic: end.panic,
                note: end.note,
                not_started: None,
                not_before: None,
                dump: end.dump.map(|d| d.info()),
            })));
        });
        Ok(Launched {
            pid,
            proc: Proc::Local(p.pidfd),
            claim,
            ours: p.ours,
            broker_ours: p.broker_ours,
            page: p.page,
            log_path: p.log_path,
            sandbox: p.sandbox,
            crash,
        })
    }

    /// Start incarnation `incarnation` on `host`, through its agent. The process blocks reading
    /// its boot frame, relayed over its node link, until [`SupState::activate`] writes one.
    async fn launch_remote(
        &self,
        host: Arc<HostLink>,
        incarnation: u64,
    ) -> Result<Launched, SpawnError> {
        let request = SpawnRequest {
            node: self.plan.name.clone(),
            incarnation,
            command: self.plan.command.clone(),
            args: self.plan.args.clone(),
            env: self
                .plan
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            sandbox: self.plan.sandbox.clone(),
            link: syncra_protocol::agent::Fingerprint([0; 32]),
            dumps: self
                .ctx
                .runtime
                .dumps
                .map(|d| syncra_protocol::agent::DumpBounds {
                    keep: d.keep as u32,
                    max_bytes: d.max_bytes,
                }),
        };
        let me = self.myself.clone();
        let sink: crate::remote::hosts::Sink = Arc::new(move |event| {
            let _ = me.cast(SupMsg::Remote { incarnation, event });
        });
        let r = host.spawn(request, sink).await?;
        Ok(Launched {
            pid: r.pid,
            proc: Proc::Remote {
                host,
                node: self.plan.name.clone(),
                incarnation,
            },
            claim: Arc::new(AtomicU64::new(incarnation)),
            ours: r.ours,
            broker_ours: Some(r.broker),
            page: r.page,
            log_path: r.log_path,
            sandbox: r.sandbox,
            crash: r.crash,
        })
    }

    /// Where the next incarnation runs: its host, or its fallback while its host is down.
    fn placement(&self) -> Placement {
        let Some(name) = &self.plan.host else {
            return Placement::Local;
        };
        let Some(host) = self.ctx.hosts.get(name) else {
            // Config validation names every host a node is placed on; nothing else reaches here.
            tracing::error!(node = %self.plan.name, host = %name, "placed on a host the runtime has no link to; running it here");
            return Placement::Local;
        };
        let down = host.is_down();
        match &self.plan.fallback_host {
            Some(fallback) if down => {
                match fallback.as_deref().and_then(|f| self.ctx.hosts.get(f)) {
                    Some(other) => {
                        tracing::warn!(node = %self.plan.name, host = %name, fallback = other.name(), "its host is down: starting on its fallback host");
                        Placement::Remote(other)
                    }
                    None => {
                        tracing::warn!(node = %self.plan.name, host = %name, "its host is down: starting it here (fallback_host = \"local\")");
                        Placement::Local
                    }
                }
            }
            _ => Placement::Remote(host),
        }
    }

    /// Make a launched process incarnation `incarnation`: its token and route, its session
    /// with the hub, its broker link, and last its boot frame, which lets it go.
    fn activate(
        &mut self,
        launched: Launched,
        incarnation: u64,
        started: Instant,
    ) -> Result<Live, SpawnError> {
        let io = |what: &'static str, e: std::io::Error| {
            SpawnError::io(self.plan.command.clone(), what, e)
        };
        let Launched {
            pid,
            proc,
            claim: _,
            ours,
            broker_ours,
            page,
            log_path,
            sandbox,
            crash,
        } = launched;
        if let Some(status) = &sandbox
            && !status.not_enforced.is_empty()
            && !self.sandbox_warned
        {
            self.sandbox_warned = true;
            tracing::warn!(
                node = %self.plan.name,
                not_enforced = %status.not_enforced.join("; "),
                "its sandbox is not complete on this machine (sandbox = \"strict\" would refuse to start it)"
            );
        }
        let host = proc.host().map(|h| h.name().to_owned());
        let log_file = log_path.display().to_string();
        self.ctx.registry.update(&self.plan.name, |r| {
            r.view.sandbox = sandbox;
            r.view.host = host.clone();
            r.view.log_file = Some(log_file);
        });
        let token = new_token().map_err(|e| io("generating the node token", e))?;
        let cluster_name = format!("{}#{incarnation}", self.plan.name);
        let group = agent_group(&cluster_name);
        let boot = Boot {
            node: self.plan.name.clone(),
            incarnation,
            cluster: ClusterJoin {
                cookie: self.ctx.hub.cookie().to_owned(),
                node_name: cluster_name.clone(),
                hub_name: HUB_NAME.into(),
                token,
            },
            heartbeat: self.plan.heartbeat,
            page_fd: Some(PAGE_FD),
            settings: self.plan.settings.clone(),
            broker_fd: broker_ours.as_ref().map(|_| BROKER_FD),
            directory: self.ctx.registry.names(),
            seal_fd: Some(syncra_protocol::listener::SEAL_FD),
            direct_links: self.ctx.runtime.direct_links,
            crash_fd: crash.then_some(syncra_protocol::boot::CRASH_FD),
        };
        let mut frame = Vec::new();
        let _ = boot.write_to(&mut frame);
        // From here on the child may speak: route its token, watch for its agent.
        ractor::pg::monitor(group.clone(), self.myself.get_cell());
        self.ctx.registry.add_route(
            token,
            Route {
                node: self.plan.name.clone(),
                incarnation,
                deliver: {
                    let me = self.myself.clone();
                    Arc::new(move |incarnation, msg| {
                        let _ = me.cast(SupMsg::FromNode { incarnation, msg });
                    })
                },
            },
        );
        if let Some(broker_ours) = broker_ours {
            self.ctx
                .broker
                .attach(self.plan.name.clone(), incarnation, broker_ours);
        }
        let undo = |me: &Self, e: SpawnError| {
            me.ctx.registry.remove_route(&token);
            ractor::pg::demonitor(group.clone(), me.myself.get_id());
            proc.signal(Signal::KILL);
            e
        };
        // The boot frame, then the hub's side of the session, on our end of the socketpair. A
        // frame that does not fit the socket buffer (a huge config chunk) is finished by a task.
        let written = match write_nonblocking(&ours, &frame) {
            Ok(n) => Some(n),
            // It died before reading its boot frame (a child that exits at once): its exit,
            // with its code and output, is reported like any other.
            Err(e) => {
                tracing::debug!(node = %self.plan.name, pid, error = %e, "boot frame not delivered");
                None
            }
        };
        if let Some(written) = written
            && written == frame.len()
        {
            if let Err(e) = self.ctx.hub.attach(ours, &cluster_name) {
                return Err(undo(
                    self,
                    io("opening the cluster session", std::io::Error::other(e)),
                ));
            }
        } else if let Some(written) = written {
            let stream = match tokio::net::UnixStream::from_std(ours) {
                Ok(s) => s,
                Err(e) => return Err(undo(self, io("preparing the cluster socket", e))),
            };
            let (hub, name) = (self.ctx.hub.clone(), self.plan.name.clone());
            tokio::spawn(async move {
                let mut stream = stream;
                let rest = async {
                    stream.write_all(&frame[written..]).await?;
                    stream.into_std()
                };
                match tokio::time::timeout(Duration::from_secs(5), rest).await {
                    Ok(Ok(stream)) => {
                        if let Err(e) = hub.attach(stream, &cluster_name) {
                            tracing::error!(node = %name, pid, error = %e, "could not open the cluster session");
                        }
                    }
                    // The child died before reading its boot frame; its exit is reported.
                    Ok(Err(e)) => {
                        tracing::debug!(node = %name, pid, error = %e, "boot frame not delivered")
                    }
                    Err(_) => {
                        tracing::warn!(node = %name, pid, "the child did not read its boot frame within 5 s")
                    }
                }
            });
        }
        Ok(Live {
            incarnation,
            pid,
            proc,
            token,
            group,
            cluster_name: format!("{}#{incarnation}", self.plan.name),
            spawned_at: started,
            ready_at: None,
            ready_announced: false,
            page,
            agent: None,
            forced: None,
            log_path,
        })
    }

    /// Launch a warm spare for the next restart, if this node keeps one.
    async fn prepare_spare(&mut self) {
        let wanted = self.policy.warm_spare
            && self.plan.restart != RestartType::Temporary
            && self.live.as_ref().is_some_and(|l| l.proc.host().is_none())
            && self.phase == Phase::Ready
            && self.spare.is_none()
            && !self.ctx.registry.shutting_down();
        if !wanted {
            return;
        }
        match self.launch(UNCLAIMED).await {
            Ok(spare) => {
                tracing::debug!(node = %self.plan.name, pid = spare.pid, "warm spare ready for the next restart");
                self.spare = Some(spare);
                self.show_spare();
            }
            Err(e) => {
                tracing::warn!(node = %self.plan.name, error = %e, "could not launch a warm spare")
            }
        }
    }

    /// Kill the warm spare, if there is one (the node stops, fails or the runtime ends).
    fn drop_spare(&mut self) {
        if let Some(spare) = self.spare.take() {
            spare.proc.signal(Signal::KILL);
            self.show_spare();
        }
    }

    fn show_spare(&self) {
        let pid = self.spare.as_ref().map(|s| s.pid);
        self.ctx
            .registry
            .update(&self.plan.name, |r| r.view.spare_pid = pid);
    }

    fn on_node_message(&mut self, incarnation: u64, msg: NodeToRuntime) {
        let name = self.plan.name.clone();
        let driver = self.plan.kind == NodeKind::Driver;
        let Some(live) = self.live_mut(incarnation) else {
            return;
        };
        match msg {
            NodeToRuntime::Hello { protocol, pid } => {
                if protocol != PROTOCOL_VERSION {
                    let why = format!(
                        "the node speaks protocol v{protocol}, the runtime v{PROTOCOL_VERSION}; rebuild it against this Syncra version"
                    );
                    tracing::error!(node = %name, pid = live.pid, incarnation, "{why}");
                    live.forced.get_or_insert(Forced::Refused(why));
                    live.proc.signal(Signal::KILL);
                } else {
                    tracing::debug!(node = %name, pid, incarnation, "joined");
                }
            }
            NodeToRuntime::Ready => {
                live.ready_announced = true;
                self.try_become_ready();
            }
            NodeToRuntime::Leaving { code, reason } => {
                tracing::info!(node = %name, pid = live.pid, incarnation, code, reason, "node is leaving");
            }
            NodeToRuntime::Quit { reason } => {
                if driver {
                    tracing::info!(node = %name, pid = live.pid, incarnation, reason, "the user quit: stopping the runtime");
                    self.ctx.request_shutdown(ShutdownCause::Quit(name, reason));
                } else {
                    tracing::warn!(node = %name, reason, "only a driver may stop the runtime; ignored");
                }
            }
            // The gateway hands these to the router, never to a supervisor.
            NodeToRuntime::Route(_)
            | NodeToRuntime::Reply { .. }
            | NodeToRuntime::Refused { .. } => {}
        }
    }

    fn try_become_ready(&mut self) {
        if self.phase != Phase::Starting {
            return;
        }
        let Some(live) = self.live.as_mut() else {
            return;
        };
        if live.agent.is_none() {
            // Only an actor that came over this incarnation's own link is its agent: another
            // child joining the group (a name it guessed) is not, and is said.
            let own = self.ctx.hub.session_of(&live.cluster_name);
            let members = ractor::pg::get_members(&live.group);
            for c in members.iter().filter(|c| !c.get_id().is_local()) {
                if Some(c.get_id().node()) != own && own.is_some() {
                    tracing::warn!(
                        node = %self.plan.name,
                        impostor = %c.get_id(),
                        "an actor of another node joined this node's agent group; ignored"
                    );
                }
            }
            live.agent = members
                .into_iter()
                .find(|c| !c.get_id().is_local() && own == Some(c.get_id().node()))
                .map(Into::into);
            // Reachable by name from now on (messages wait for `ready`; answers do not).
            if let Some(agent) = &live.agent {
                let entry = (live.incarnation, agent.clone());
                self.ctx
                    .registry
                    .update(&self.plan.name, |r| r.agent = Some(entry));
            }
        }
        if !live.ready_announced {
            return;
        }
        if live.agent.is_none() {
            return; // the agent's group is still on its way; AgentJoined follows.
        }
        let now = Instant::now();
        live.ready_at = Some(now);
        if self.probation.take().is_some() {
            tracing::info!(node = %self.plan.name, command = %self.plan.command, "its new command started: no rollback");
        }
        let (pid, incarnation, startup) = (
            live.pid,
            live.incarnation,
            now.duration_since(live.spawned_at),
        );
        let deadline = Duration::from_millis(self.plan.heartbeat.deadline_ms);
        match live.proc.host() {
            // Its agent watches it there, and says when it is silent.
            Some(host) => host.watch(&self.plan.name, incarnation, deadline),
            None => {
                let me = self.myself.clone();
                self.ctx.watchdog.watch(
                    self.plan.name.clone(),
                    incarnation,
                    live.page.clone(),
                    deadline,
                    Box::new(move |incarnation, silent| {
                        let _ = me.cast(SupMsg::Hung {
                            incarnation,
                            silent,
                        });
                    }),
                );
            }
        }
        // The state first, then the event: whoever receives the event sees the new state.
        self.set_phase(Phase::Ready, None);
        let startup_ms = startup.as_secs_f64() * 1e3;
        tracing::info!(node = %self.plan.name, pid, incarnation, startup_ms = format!("{startup_ms:.1}"), "ready");
        self.emit(Some(pid), EventKind::Up { startup_ms });
        self.hook_in_background(self.hook_ctx(HookPoint::AfterReady, Some(pid)));
        if self.policy.warm_spare && self.spare.is_none() {
            let _ = self.myself.cast(SupMsg::PrepareSpare);
        }
    }

    /// The watchdog saw no heartbeat for the deadline: SIGABRT (a dump), SIGKILL after the grace.
    fn hung(&mut self, incarnation: u64, silent: Duration) {
        if self.phase != Phase::Ready {
            return;
        }
        let deadline_ms = self.plan.heartbeat.deadline_ms;
        let abort_grace = self.ctx.runtime.abort_grace;
        let name = self.plan.name.clone();
        let Some(live) = self.live_mut(incarnation) else {
            return;
        };
        if live.forced.is_some() {
            return;
        }
        let pid = live.pid;
        tracing::warn!(node = %name, pid, incarnation, silent_ms = silent.as_millis() as u64, deadline_ms, "no heartbeat within the deadline: hung; SIGABRT, then SIGKILL");
        live.forced = Some(Forced::Hung { silent });
        live.proc.signal(Signal::ABORT);
        // A stopped process acts on the SIGABRT (and dumps) only once continued.
        live.proc.signal(Signal::CONT);
        self.myself
            .send_after(abort_grace, move || SupMsg::KillNow { incarnation });
        self.emit(
            Some(pid),
            EventKind::Hung {
                silent_ms: silent.as_millis() as u64,
            },
        );
    }

    /// Ask the running incarnation to stop: a graceful request, SIGKILL at the stop timeout.
    fn stop_live(&mut self, after: After, why: &str) {
        self.after = after;
        self.ctx.watchdog.unwatch(&self.plan.name);
        let grace = self.plan.stop_timeout;
        let name = self.plan.name.clone();
        let Some(live) = self.live.as_mut() else {
            return;
        };
        if let Some(host) = live.proc.host() {
            host.unwatch(&name, live.incarnation);
        }
        // A hang or a refusal already being handled keeps its reason.
        live.forced.get_or_insert(Forced::Requested);
        let (pid, incarnation) = (live.pid, live.incarnation);
        match &live.agent {
            Some(agent) => {
                let packet = wire::encode(&RuntimeToNode::Shutdown {
                    grace_ms: grace.as_millis() as u64,
                    reason: why.to_owned(),
                });
                if agent.cast(NodeInbox::Packet(packet)).is_err() {
                    live.proc.signal(Signal::TERM);
                }
            }
            // Not joined yet: SIGTERM is the graceful request a node understands without a link.
            None => live.proc.signal(Signal::TERM),
        }
        tracing::info!(node = %name, pid, incarnation, grace_ms = grace.as_millis() as u64, why, "stopping");
        self.myself
            .send_after(grace, move || SupMsg::KillNow { incarnation });
        self.set_phase(Phase::Stopping, Some(why.to_owned()));
    }

    async fn restart(&mut self, delay: Duration, cause: String, user: bool) {
        if user {
            self.history.reset();
        }
        match self.phase {
            Phase::Starting | Phase::Ready => self.stop_live(
                After::Restart {
                    delay,
                    cause: cause.clone(),
                },
                &format!("restart: {cause}"),
            ),
            // A stop (from a user, or the shutdown) outranks a sibling's restart.
            Phase::Stopping if !user && matches!(self.after, After::StayStopped) => {}
            Phase::Stopping => self.after = After::Restart { delay, cause },
            Phase::Waiting | Phase::Backoff | Phase::Stopped | Phase::Failed if user => {
                self.restart_after(delay, cause)
            }
            _ => {}
        }
    }

    /// Announce a restart, then spawn again after `delay`.
    fn restart_after(&mut self, delay: Duration, cause: String) {
        self.emit(
            None,
            EventKind::Restarting {
                delay_ms: delay.as_millis() as u64,
                cause,
            },
        );
        self.schedule(delay);
    }

    /// Spawn again after `delay` (through the mailbox at once when zero).
    fn schedule(&mut self, delay: Duration) {
        self.epoch += 1;
        let epoch = self.epoch;
        self.set_phase(
            Phase::Backoff,
            Some(format!("restarting in {} ms", delay.as_millis())),
        );
        if delay.is_zero() {
            let _ = self.myself.cast(SupMsg::Spawn { epoch });
        } else {
            self.myself
                .send_after(delay, move || SupMsg::Spawn { epoch });
        }
    }

    /// A dependency cannot become ready: this node fails to start, with a record.
    async fn dependency_failed(&mut self, why: String) {
        // The incarnation that would have started (none did: the count stays as it is).
        let report = ExitReport::never_ran(self.incarnation + 1, NotStarted::Dependency(why));
        self.ended(report, None).await;
    }

    /// Its own config changed (a reload, `syncra upgrade`): take the new plan, and restart
    /// with it if it runs — alone. A stopped node stays stopped (the plan applies at its next
    /// start); a failed one is started (its new config may be what it lacked).
    async fn replan(&mut self, plan: NodePlan) {
        let command_changed = plan.command != self.plan.command;
        let previous = std::mem::replace(&mut self.plan, plan);
        self.probation = (self.plan.rollback && command_changed).then_some(previous);
        // A spare was launched with the old command and settings.
        self.drop_spare();
        let cause = "its config changed".to_owned();
        tracing::info!(node = %self.plan.name, phase = ?self.phase, "{cause}");
        match self.phase {
            Phase::Starting | Phase::Ready => self.stop_live(
                After::Restart {
                    delay: Duration::ZERO,
                    cause: cause.clone(),
                },
                &format!("restart: {cause}"),
            ),
            Phase::Stopping if matches!(self.after, After::StayStopped) => {}
            Phase::Stopping => {
                self.after = After::Restart {
                    delay: Duration::ZERO,
                    cause,
                }
            }
            Phase::Waiting | Phase::Backoff | Phase::Failed => {
                self.history.reset();
                self.restart_after(Duration::ZERO, cause);
            }
            Phase::Stopped => {}
        }
    }

    /// What the agent of a remote incarnation's host reports.
    async fn remote(&mut self, incarnation: u64, event: RemoteEvent) {
        match event {
            RemoteEvent::Exited(exit) => {
                let termination = match (exit.code, exit.signal) {
                    (_, Some(s)) => Termination::Signal(s),
                    (Some(c), None) => Termination::Code(c),
                    (None, None) => Termination::Code(-1),
                };
                self.exited(ExitReport {
                    incarnation,
                    termination,
                    // The agent's clock; a time beyond tomorrow is not believed.
                    at: Some(SystemTime::UNIX_EPOCH + Duration::from_millis(exit.unix_ms))
                        .filter(|t| *t < SystemTime::now() + Duration::from_secs(86_400))
                        .unwrap_or_else(SystemTime::now),
                    stderr_tail: exit.stderr_tail,
                    panic: exit.panic,
                    note: exit.note,
                    not_started: None,
                    not_before: None,
                    // Its stack follows once the agent has read the dump (`Dumped`).
                    dump: exit.dump,
                })
                .await
            }
            RemoteEvent::Hung { silent } => self.hung(incarnation, silent),
            RemoteEvent::Lost { why, replace_after } => {
                let Some(live) = self.live_mut(incarnation) else {
                    return;
                };
                live.forced = Some(Forced::Lost(why));
                self.exited(ExitReport {
                    incarnation,
                    termination: Termination::Lost,
                    at: SystemTime::now(),
                    stderr_tail: Vec::new(),
                    panic: None,
                    note: None,
                    not_started: None,
                    not_before: Some(replace_after),
                    dump: None,
                })
                .await
            }
        }
    }

    async fn exited(&mut self, report: ExitReport) {
        if self.live.as_ref().map(|l| l.incarnation) != Some(report.incarnation) {
            return;
        }
        let live = self.live.take();
        self.ended(report, live).await;
    }

    /// An incarnation ended (or never started): classify, decide, record, act.
    /// A world failed after running `ran`: if it has failed `poison_crashes` times in a row,
    /// each that soon after its start, its newest durable state is taken for what kills it —
    /// kept aside in `<crash_dir>/states`, and written over in its ring, so that the next
    /// incarnation starts from the seed. What was done, for the crash record.
    fn poison(&mut self, ran: Duration) -> Option<String> {
        let state = self.plan.world.as_ref()?.state;
        if !state.durable || self.plan.host.is_some() {
            return None;
        }
        if ran > Duration::from_millis(state.poison_window_ms) {
            self.quick_failures = 0;
            return None;
        }
        self.quick_failures += 1;
        if self.quick_failures < state.poison_crashes {
            return None;
        }
        let broker = &self.ctx.broker;
        let (info, bytes) = broker.newest_state(&self.plan.name).ok().flatten()?;
        self.quick_failures = 0;
        let dir = self.ctx.runtime.crash_dir.join("states");
        let stamp = humantime::format_rfc3339_millis(std::time::SystemTime::now())
            .to_string()
            .replace(':', "-");
        let path = dir.join(format!(
            "{stamp}_{}_tick{}.state",
            self.plan.name.as_str().replace('/', "-"),
            info.tick
        ));
        let kept = {
            use std::io::Write;
            use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .and_then(|()| {
                    std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .open(&path)
                })
                .and_then(|mut f| f.write_all(&bytes))
        };
        let mut tombstone = syncra_protocol::world::POISONED.to_vec();
        tombstone.extend_from_slice(path.display().to_string().as_bytes());
        for _ in 0..state.kept.max(2) {
            if let Err(e) = broker.put_state(&self.plan.name, &tombstone) {
                tracing::error!(node = %self.plan.name, error = %e, "could not set its poison state aside");
                return None;
            }
        }
        Some(match kept {
            Ok(()) => format!(
                "its durable state (tick {}) was set aside after {} crashes each within {} ms of its start, kept in {}; the next incarnation starts from its seed",
                info.tick,
                state.poison_crashes,
                state.poison_window_ms,
                path.display()
            ),
            Err(e) => format!(
                "its durable state (tick {}) was set aside after {} crashes each within {} ms of its start (not kept: {}: {e}); the next incarnation starts from its seed",
                info.tick,
                state.poison_crashes,
                state.poison_window_ms,
                path.display()
            ),
        })
    }

    async fn ended(&mut self, report: ExitReport, live: Option<Live>) {
        let name = self.plan.name.clone();
        if let Some(not_before) = report.not_before {
            self.not_before = Some(self.not_before.map_or(not_before, |n| n.max(not_before)));
        }
        self.ctx.watchdog.unwatch(&name);
        if let Some(l) = &live {
            self.ctx.registry.remove_route(&l.token);
            ractor::pg::demonitor(l.group.clone(), self.myself.get_id());
            if let Some(host) = l.proc.host() {
                host.forget(&name, l.incarnation);
            }
        }
        let host = live
            .as_ref()
            .and_then(|l| l.proc.host())
            .map(|h| h.name().to_owned());
        let pid = live.as_ref().map(|l| l.pid);
        let was_ready = live.as_ref().and_then(|l| l.ready_at);
        let ran = live
            .as_ref()
            .map(|l| l.spawned_at.elapsed())
            .unwrap_or_default();
        let forced = live.as_ref().and_then(|l| l.forced.clone());
        let (code, sig) = match report.termination {
            Termination::Code(c) => (Some(c), None),
            Termination::Signal(s) => (None, Some(s)),
            Termination::NotStarted | Termination::Lost => (None, None),
        };
        let super::ending::Assessment {
            reason,
            permanent,
            detail,
        } = super::ending::assess(&super::ending::Facts {
            termination: report.termination,
            was_ready: was_ready.is_some(),
            forced: forced.as_ref(),
            not_started: report.not_started.as_ref(),
            panicked: report.panic.is_some(),
            note: report.note.as_deref(),
            deadline_ms: self.plan.heartbeat.deadline_ms,
            start_timeout: self.plan.start_timeout,
            limit: limit_reached(&self.plan.sandbox, report.termination, &report.stderr_tail)
                .as_deref(),
        });
        let mut summary = ExitSummary {
            unix_ms: logs::unix_ms(report.at),
            pid,
            code,
            signal: sig.map(signal_name),
            reason,
            record: None,
        };
        if matches!(reason, Reason::Requested | Reason::Exited) {
            tracing::info!(node = %name, pid, incarnation = report.incarnation, %reason, "{detail}");
        } else {
            tracing::warn!(node = %name, pid, incarnation = report.incarnation, %reason, "{detail}");
        }
        if pid.is_some() {
            self.emit(
                pid,
                EventKind::Down {
                    exit: summary.clone(),
                },
            );
        }

        // What follows: what the runtime asked for, or else the restart policy.
        let mut after = std::mem::replace(&mut self.after, After::Decide);
        if reason.is_failure() && matches!(after, After::Restart { .. }) {
            // It failed on its own while a sibling's restart was stopping it: that failure
            // counts, so the policy (intensity, backoff) decides, not the sibling.
            after = After::Decide;
        }
        // A new command that did not start, with `rollback = true`: the previous plan comes
        // back, and starts now — unless the node is being stopped.
        let mut detail = detail;
        if reason == Reason::FailedToStart
            && !matches!(after, After::StayStopped)
            && let Some(previous) = self.probation.take()
        {
            let failed = std::mem::replace(&mut self.plan, previous);
            let why = format!(
                "rolled back to `{}`: the new command `{}` failed to start",
                self.plan.command, failed.command
            );
            tracing::error!(node = %name, "{why}");
            detail = format!("{detail}; {why}");
            self.history.reset();
            after = After::Restart {
                delay: Duration::ZERO,
                cause: why,
            };
        }
        if reason.is_failure()
            && let Some(aside) = self.poison(ran)
        {
            tracing::error!(node = %name, "{aside}");
            detail = format!("{detail}; {aside}");
        }
        let next = match after {
            _ if matches!(report.not_started, Some(NotStarted::Dependency(_))) => Next::Stop {
                detail: detail.clone(),
                why: "a node it depends on cannot become ready; start it again once that one runs"
                    .into(),
                failed: true,
            },
            After::StayStopped => Next::Stop {
                detail: "stopped".into(),
                why: "it was being stopped".into(),
                failed: false,
            },
            After::Restart { delay, cause } => Next::Restart {
                delay,
                attempt: 0,
                cause,
                siblings: Vec::new(),
            },
            After::Decide => self.decide(reason, permanent, was_ready, &detail).await,
        };
        // A node of a lost host is replaced only once its agent has fenced it.
        let next = match (next, report.not_before) {
            (
                Next::Restart {
                    delay,
                    attempt,
                    cause,
                    siblings,
                },
                Some(not_before),
            ) => {
                let wait = not_before.saturating_duration_since(Instant::now());
                Next::Restart {
                    delay: delay.max(wait),
                    attempt,
                    cause: if wait > delay {
                        format!(
                            "{cause}; after its host's fence grace ({} ms from now)",
                            wait.as_millis()
                        )
                    } else {
                        cause
                    },
                    siblings,
                }
            }
            (next, _) => next,
        };
        let decision = match &next {
            Next::Restart {
                delay,
                attempt,
                siblings,
                ..
            } => Decision::Restart {
                after_ms: delay.as_millis() as u64,
                attempt: *attempt,
                siblings: siblings.clone(),
            },
            Next::GiveUp { why } if self.ctx.runtime.on_give_up == GiveUpAction::Shutdown => {
                Decision::Shutdown {
                    why: format!("{why}; on_give_up = \"shutdown\""),
                }
            }
            Next::GiveUp { why } => Decision::GaveUp { why: why.clone() },
            Next::Stop { why, .. } => Decision::NotRestarted { why: why.clone() },
        };
        if !matches!(next, Next::Restart { .. }) {
            self.drop_spare();
        }

        let mut hook = self.hook_ctx(HookPoint::OnCrash, pid);
        hook.incarnation = report.incarnation;
        hook.exit_code = code;
        hook.signal = summary.signal.clone();
        hook.reason = Some(reason);
        hook.decision = Some(match &decision {
            Decision::Restart { after_ms, .. } => format!("restart after {after_ms} ms"),
            Decision::GaveUp { .. } => "gave up".into(),
            Decision::NotRestarted { .. } => "not restarted".into(),
            Decision::Shutdown { .. } => "shutdown".into(),
        });
        if reason.is_failure() {
            let record = CrashRecord {
                timestamp: humantime::format_rfc3339_millis(report.at).to_string(),
                node: name.clone(),
                kind: self.plan.kind,
                host: host.clone(),
                pid,
                incarnation: report.incarnation,
                exit_code: code,
                signal: summary.signal.clone(),
                reason,
                detail: detail.clone(),
                ran_ms: ran.as_millis() as u64,
                panic: report.panic.clone(),
                stderr_tail: report.stderr_tail.clone(),
                log_file: live.as_ref().map(|l| l.log_path.display().to_string()),
                decision,
                dump: report.dump.clone(),
            };
            let path = logs::crash_record_path(&self.ctx.runtime.crash_dir, &record, report.at);
            summary.record = Some(path.display().to_string());
            hook.crash_record = Some(path.clone());
            self.ctx.record_crash(syncra_protocol::control::CrashEntry {
                path: path.display().to_string(),
                record: record.clone(),
                not_written: None,
            });
            // Off the restart's path: the record is written, then the on-crash hook (which
            // reads it) runs.
            let (hooks, own, crash_hook) = (
                self.ctx.hooks.clone(),
                self.plan.hooks.clone(),
                hook.clone(),
            );
            let run_hook = self.ctx.hooks.any(HookPoint::OnCrash, &own);
            let ctx = self.ctx.clone();
            // A dump written here is read here; one on another host, by its agent, whose
            // answer is waited for (bounded): the record is written with the stack.
            let dumped = record.dump.as_ref().and_then(|d| d.path.clone());
            let remote_dump = dumped
                .as_ref()
                .and(live.as_ref())
                .and_then(|l| l.proc.host().map(|h| h.dump_of(&name, report.incarnation)));
            let local_dump = dumped.filter(|_| remote_dump.is_none());
            let mut record = record;
            self.ctx.track(async move {
                if let Some(info) = record.dump.as_mut() {
                    if let Some(dump) = local_dump {
                        crate::supervisor::analyse_dump(std::path::Path::new(&dump), info).await;
                    } else if let Some(answer) = remote_dump {
                        match tokio::time::timeout(crate::supervisor::REMOTE_ANALYSIS_WAIT, answer)
                            .await
                        {
                            Ok(Ok(read)) => *info = read,
                            _ => {
                                info.error = Some(
                                    "its host did not send the stack read from its dump".into(),
                                )
                            }
                        }
                    }
                    ctx.update_crash(&path.display().to_string(), |r| {
                        r.dump = record.dump.clone()
                    });
                }
                let write = tokio::task::spawn_blocking({
                    let (path, ctx) = (path.clone(), ctx.clone());
                    // Out of fds: the reserve gives one, so the record is still written.
                    move || {
                        let written = ctx
                            .fds
                            .relieve(|| logs::write_crash_record(&path, &record));
                        ctx.fds.refill();
                        written
                    }
                });
                if let Err(e) = write.await.unwrap_or_else(|e| Err(std::io::Error::other(e))) {
                    tracing::error!(node = %crash_hook.node, path = %path.display(), error = %e, "could not write the crash record");
                    ctx.crash_not_written(&path.display().to_string(), e.to_string());
                }
                if run_hook {
                    hooks.run(&crash_hook, &own).await;
                }
            });
        }
        self.record_exit(summary);

        match next {
            Next::Restart { delay, cause, .. } => self.restart_after(delay, cause),
            Next::GiveUp { why } => {
                tracing::error!(node = %name, "gave up: {why}");
                self.set_phase(Phase::Failed, Some(format!("gave up: {why}")));
                self.emit(
                    None,
                    EventKind::Failed {
                        reason,
                        message: why.clone(),
                    },
                );
                hook.point = HookPoint::OnGiveUp;
                self.hook_in_background(hook);
                if self.ctx.runtime.on_give_up == GiveUpAction::Shutdown {
                    self.ctx
                        .request_shutdown(ShutdownCause::GaveUp(format!("{name}: {why}")));
                }
            }
            Next::Stop {
                detail,
                failed: true,
                why,
            } => {
                self.set_phase(Phase::Failed, Some(detail));
                self.emit(
                    None,
                    EventKind::Failed {
                        reason,
                        message: why,
                    },
                );
            }
            Next::Stop {
                detail,
                failed: false,
                ..
            } => {
                self.set_phase(Phase::Stopped, Some(detail));
                self.emit(None, EventKind::Stopped);
                hook.point = HookPoint::AfterStop;
                self.hook_in_background(hook);
            }
        }
        // However it ended, the incarnation a stop request was about is gone.
        for w in self.stop_waiters.drain(..) {
            let _ = w.send(());
        }
    }

    /// The restart policy's answer for an end nobody asked for.
    async fn decide(
        &mut self,
        reason: Reason,
        permanent: Option<String>,
        was_ready: Option<Instant>,
        detail: &str,
    ) -> Next {
        let verdict = if self.ctx.registry.shutting_down() {
            Verdict::NotRestarted {
                why: "the runtime is shutting down".into(),
                failed: reason.is_failure(),
            }
        } else {
            let ending = Ending {
                reason,
                permanent,
                ready_for: was_ready.map(|t| t.elapsed()),
            };
            policy::decide(
                ending,
                self.plan.restart,
                self.ctx.runtime.auto_restart,
                &self.policy,
                &mut self.history,
                Instant::now(),
                policy::jitter_unit(),
            )
        };
        match verdict {
            Verdict::Restart { delay, attempt } => {
                let siblings = if self.policy.strategy == syncra_config::Strategy::OneForOne {
                    Vec::new()
                } else {
                    let name = self.plan.name.clone();
                    let call = self
                        .group
                        .call(
                            |reply| GroupMsg::ChildRestarting {
                                failed: name,
                                reply,
                            },
                            Some(Duration::from_secs(2)),
                        )
                        .await;
                    match call {
                        Ok(ractor::rpc::CallResult::Success(s)) => s,
                        _ => Vec::new(),
                    }
                };
                Next::Restart {
                    delay,
                    attempt,
                    cause: format!("{reason}: {detail}"),
                    siblings,
                }
            }
            Verdict::GiveUp(why) => Next::GiveUp { why },
            Verdict::NotRestarted { why, failed } => Next::Stop {
                detail: format!("{detail}; not restarted: {why}"),
                why,
                failed,
            },
        }
    }

    fn record_exit(&self, summary: ExitSummary) {
        self.ctx.registry.update(&self.plan.name, |r| {
            r.view.last_exit = Some(summary);
            r.view.pid = None;
            r.ready_since = None;
            r.page = None;
            r.agent = None;
        });
    }
}
