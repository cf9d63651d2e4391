//! The runtime's side of other hosts: one [`HostLink`] per `[hosts.<name>]`, the session link to
//! that host's agent, through which the node supervisors of the nodes placed there spawn,
//! signal and watch them, and hear how they end.
//!
//! A link connects when a node first needs the host, and keeps itself up: it answers the
//! agent's pings (each answer renews the agent's lease on the session's nodes), and reconnects
//! at once when its connection breaks, resuming the session (the agent says which of its
//! nodes still run, and how the others ended meanwhile). Only when nothing has been heard from
//! the agent for the host's deadline is the host unreachable: every node there is **lost** —
//! its supervisor counts it ended, and starts a replacement no earlier than the deadline plus
//! the fence grace after the last word from the agent, by which time the agent (or the node
//! itself, its lease run out) has killed it ([`super::lease`]).
//!
//! Each incarnation's cluster session travels on a **node link** of its own: a TLS connection
//! made with a certificate made for that incarnation alone, whose fingerprint the spawn
//! request announced, relayed here to a local socketpair whose other end joins the hub like
//! any local node's (the boot frame first, with the cookie and token, inside TLS).
//!
//! **Invariant:** an agent is believed only about the incarnations this runtime placed on it
//! and that are current: a report about anything else is dropped, and a node it still runs
//! that is not one of ours any more (a stale incarnation after a partition) is killed.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::os::fd::AsFd as _;
use syncra_config::HostPlan;
use syncra_protocol::NodeName;

use syncra_protocol::agent::{
    AgentToRuntime, Carried, Exit, Opening, RuntimeToAgent, SpawnFailure, SpawnRequest,
};
use syncra_protocol::broker::BrokerToNode;
use syncra_protocol::crash::DumpInfo;
use syncra_protocol::page::NodePage;
use syncra_protocol::status::SandboxStatus;
use syncra_remote::{Identity, frame};
use tokio::sync::{mpsc, oneshot, watch};

use super::lease::Liveness;
use super::{Connected, connect};
use crate::spawn::{RemoteFailure, SpawnError};

/// How long a spawn waits for its host's link to come up.
const CONNECT_WAIT: Duration = Duration::from_secs(10);
/// How long a spawn waits for the agent to say it started the node.
const SPAWN_TIMEOUT: Duration = Duration::from_secs(10);
/// Frames queued for the agent at most; past it the link is broken.
const OUT_QUEUE: usize = 4096;
/// First delay before reconnecting a broken link; it doubles up to [`RETRY_MAX`].
const RETRY_INITIAL: Duration = Duration::from_millis(50);
/// Longest delay between reconnection attempts.
const RETRY_MAX: Duration = Duration::from_secs(2);
/// Log copies remembered by (node, incarnation), for lines that arrive after the exit.
const LOG_COPIES: usize = 1024;

/// What happens to a remote incarnation, told to its supervisor.
#[derive(Debug)]
pub(crate) enum RemoteEvent {
    /// It ended on its host.
    Exited(Box<Exit>),
    /// Its heartbeat stopped for its deadline (the agent's watchdog saw it).
    Hung { silent: Duration },
    /// Its host became unreachable: count it ended, start a replacement no earlier than
    /// `replace_after`.
    Lost { why: String, replace_after: Instant },
}

/// A dump read on its host, or a supervisor waiting for it.
#[derive(Debug)]
enum DumpSlot {
    Arrived(DumpInfo),
    Waiting(oneshot::Sender<DumpInfo>),
}

/// Dumps kept for supervisors that have not asked yet (or waiters whose dump never came).
const DUMPS_KEPT: usize = 64;

fn bound_dumps(dumps: &mut HashMap<(NodeName, u64), DumpSlot>) {
    if dumps.len() >= DUMPS_KEPT {
        // Waiters that gave up, and dumps nobody asked for.
        dumps.retain(|_, slot| matches!(slot, DumpSlot::Waiting(tx) if !tx.is_closed()));
    }
    if dumps.len() >= DUMPS_KEPT {
        dumps.clear();
    }
}

/// Where a remote incarnation's events go.
pub(crate) type Sink = Arc<dyn Fn(RemoteEvent) + Send + Sync>;

/// A node started on a host, waiting for its boot frame.
#[derive(Debug)]
pub(crate) struct RemoteLaunched {
    /// Its pid on its host.
    pub(crate) pid: u32,
    /// Our end of its cluster socket (relayed to it over its node link).
    pub(crate) ours: std::os::unix::net::UnixStream,
    /// The Broker's end of its broker link (relayed to it over the session link).
    pub(crate) broker: std::os::fd::OwnedFd,
    /// A page kept here with what its agent reports of it (metrics, figures, note).
    pub(crate) page: Arc<NodePage>,
    /// The copy of its log on this host.
    pub(crate) log_path: PathBuf,
    /// What its sandbox enforces there.
    pub(crate) sandbox: Option<SandboxStatus>,
    /// Whether it has a crash socket there.
    pub(crate) crash: bool,
}

/// How a host's link stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HostState {
    /// Not connected yet: nothing placed on it has started.
    Idle,
    /// Connecting (or reconnecting).
    Connecting,
    /// Its agent answers.
    Up,
    /// Its agent cannot be reached: why.
    Unreachable(String),
    /// One side does not trust the other (or they speak another protocol): why. Retrying
    /// cannot help until a config or a trust list changes.
    Refused(String),
}

/// A registered remote incarnation.
struct Placed {
    incarnation: u64,
    sink: Sink,
    page: Arc<NodePage>,
    relay: Option<tokio::task::AbortHandle>,
    /// The certificate of its incarnation links (node link, bridges).
    identity: Arc<Identity>,
    /// Our end of its broker link (the Broker holds the other): what the agent relays of the
    /// node's requests is written here.
    broker: Option<Arc<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>>>,
    /// Its streams it produces, bridged here: each mirror's consumer doorbells, by stream.
    produced: HashMap<String, syncra_protocol::ring::Bells>,
    /// Its broker relay and bridges.
    tasks: Vec<tokio::task::AbortHandle>,
    /// What the Broker said to it while the link was down, sent once it is back.
    held: Vec<RuntimeToAgent>,
}

impl Placed {
    fn stop(self) {
        if let Some(relay) = self.relay {
            relay.abort();
        }
        for t in self.tasks {
            t.abort();
        }
    }
}

/// How the agent answered a spawn.
#[derive(Debug)]
enum SpawnReply {
    Spawned {
        pid: u32,
        sandbox: Option<SandboxStatus>,
        crash: bool,
    },
    Failed {
        message: String,
        failure: SpawnFailure,
    },
}

struct State {
    status: HostState,
    /// Frames to the agent, while connected.
    out: Option<mpsc::Sender<RuntimeToAgent>>,
    /// The agent's instance, once heard.
    instance: Option<u64>,
    /// When the agent was last heard, while this session has nodes there.
    liveness: Option<Liveness>,
    placed: HashMap<NodeName, Placed>,
    spawns: HashMap<(NodeName, u64), oneshot::Sender<SpawnReply>>,
    logs: HashMap<(NodeName, u64), PathBuf>,
    /// Dumps read on the host, and supervisors waiting for them, by incarnation.
    dumps: HashMap<(NodeName, u64), DumpSlot>,
    /// Connection attempts that ended (for waiters: "tried since I asked").
    attempts: u64,
    /// Whether someone wants the link up.
    wanted: bool,
    /// Since when the host counts as lost (until its agent answers again).
    lost_since: Option<Instant>,
    /// The runtime is ending its session: no reconnecting.
    closing: bool,
}

/// The link to one host's agent.
pub(crate) struct HostLink {
    plan: HostPlan,
    identity: Arc<Identity>,
    session: u64,
    log_dir: PathBuf,
    state: Mutex<State>,
    changed: watch::Sender<u64>,
    wake: tokio::sync::Notify,
    started: std::sync::Once,
    /// The thread writing the copies of its nodes' logs (a slow disk never holds up the
    /// runtime's own thread), started on first use.
    log_writer: Mutex<Option<std::sync::mpsc::SyncSender<LogLines>>>,
}

/// Lines for a log copy: its path, the lines, and how many were left out before them.
type LogLines = (PathBuf, Vec<String>, u64);

impl std::fmt::Debug for HostLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostLink")
            .field("host", &self.plan.name)
            .finish_non_exhaustive()
    }
}

impl HostLink {
    pub(crate) fn new(
        plan: HostPlan,
        identity: Arc<Identity>,
        session: u64,
        log_dir: PathBuf,
    ) -> Arc<HostLink> {
        Arc::new(HostLink {
            plan,
            identity,
            session,
            log_dir,
            state: Mutex::new(State {
                status: HostState::Idle,
                out: None,
                instance: None,
                liveness: None,
                placed: HashMap::new(),
                spawns: HashMap::new(),
                logs: HashMap::new(),
                dumps: HashMap::new(),
                attempts: 0,
                wanted: false,
                lost_since: None,
                closing: false,
            }),
            changed: watch::channel(0).0,
            wake: tokio::sync::Notify::new(),
            started: std::sync::Once::new(),
            log_writer: Mutex::new(None),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The host's name in config.
    pub(crate) fn name(&self) -> &str {
        &self.plan.name
    }

    /// How its link stands.
    pub(crate) fn status(&self) -> HostState {
        self.lock().status.clone()
    }

    /// Whether the host is down: lost and not back, or its last attempt failed. A node with a
    /// fallback host starts there meanwhile.
    pub(crate) fn is_down(&self) -> bool {
        let st = self.lock();
        st.lost_since.is_some()
            || matches!(st.status, HostState::Unreachable(_) | HostState::Refused(_))
    }

    fn set_status(&self, status: HostState) {
        let mut st = self.lock();
        if st.status != status {
            st.status = status;
            drop(st);
            self.changed.send_modify(|n| *n += 1);
        }
    }

    /// Ask for the link to be up (starting its task the first time).
    fn want(self: &Arc<Self>) {
        self.lock().wanted = true;
        self.started.call_once(|| {
            let me = self.clone();
            tokio::spawn(async move { me.run().await });
        });
        self.wake.notify_one();
    }

    /// Wait until the link is up; the reason when it cannot be.
    async fn ensure_up(self: &Arc<Self>) -> Result<(), SpawnError> {
        let mut changes = self.changed.subscribe();
        let asked = self.lock().attempts;
        self.want();
        let deadline = tokio::time::Instant::now() + CONNECT_WAIT;
        loop {
            let (status, attempts) = {
                let st = self.lock();
                (st.status.clone(), st.attempts)
            };
            match status {
                HostState::Up => return Ok(()),
                HostState::Refused(why) => return Err(self.error(RemoteFailure::Refused, why)),
                HostState::Unreachable(why) if attempts > asked => {
                    return Err(self.error(RemoteFailure::Unreachable, why));
                }
                _ => {}
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                _ => {
                    return Err(self.error(
                        RemoteFailure::Unreachable,
                        format!(
                            "its agent at {} did not answer within {} s",
                            self.plan.address,
                            CONNECT_WAIT.as_secs()
                        ),
                    ));
                }
            }
        }
    }

    fn error(&self, failure: RemoteFailure, message: String) -> SpawnError {
        SpawnError::Remote {
            host: self.plan.name.clone(),
            message,
            failure,
        }
    }

    /// Start `request` on this host; `sink` hears what becomes of it.
    pub(crate) async fn spawn(
        self: &Arc<Self>,
        mut request: SpawnRequest,
        sink: Sink,
    ) -> Result<RemoteLaunched, SpawnError> {
        self.ensure_up().await?;
        let (node, incarnation) = (request.node.clone(), request.incarnation);
        let label = format!("{node}#{incarnation}");
        let link_identity = Identity::ephemeral(&label).map_err(|e| {
            self.error(
                RemoteFailure::Other,
                format!("making the node link's certificate: {e}"),
            )
        })?;
        request.link = link_identity.fingerprint;
        let (page, _) = NodePage::create("syncra-remote-page")
            .map_err(|e| SpawnError::io(&request.command, "creating the node's page", e.into()))?;
        let page = Arc::new(page);
        let (reply, answer) = oneshot::channel();
        let link_identity = Arc::new(link_identity);
        let sent = {
            let mut st = self.lock();
            if let Some(old) = st.placed.insert(
                node.clone(),
                Placed {
                    incarnation,
                    sink,
                    page: page.clone(),
                    relay: None,
                    identity: link_identity.clone(),
                    broker: None,
                    produced: HashMap::new(),
                    tasks: Vec::new(),
                    held: Vec::new(),
                },
            ) {
                old.stop();
            }
            st.liveness.get_or_insert(Liveness {
                deadline: self.plan.deadline,
                grace: self.plan.fence_grace,
                last_heard: Instant::now(),
            });
            st.spawns.insert((node.clone(), incarnation), reply);
            st.out.as_ref().is_some_and(|out| {
                out.try_send(RuntimeToAgent::Spawn(Box::new(request)))
                    .is_ok()
            })
        };
        let unplace = |me: &Self| {
            let mut st = me.lock();
            st.spawns.remove(&(node.clone(), incarnation));
            if st
                .placed
                .get(&node)
                .is_some_and(|p| p.incarnation == incarnation)
                && let Some(p) = st.placed.remove(&node)
            {
                p.stop();
            }
        };
        if !sent {
            unplace(self);
            return Err(self.error(
                RemoteFailure::Unreachable,
                "its link went down before the spawn request was sent".into(),
            ));
        }
        // From here on the node may run there whatever happens: a failure is in doubt, and
        // its replacement waits until the agent has fenced it (it is not one of ours any
        // more: unplaced, it is killed if the agent still runs it when the link comes back).
        let in_doubt = |me: &Self, why: String| {
            unplace(me);
            me.signal(&node, incarnation, libc::SIGKILL);
            let replace_after = me
                .lock()
                .liveness
                .map(|l| l.replace_after())
                .unwrap_or_else(|| Instant::now() + me.plan.deadline + me.plan.fence_grace);
            me.error(RemoteFailure::InDoubt { replace_after }, why)
        };
        let (pid, sandbox, crash) = match tokio::time::timeout(SPAWN_TIMEOUT, answer).await {
            Ok(Ok(SpawnReply::Spawned {
                pid,
                sandbox,
                crash,
            })) => (pid, sandbox, crash),
            Ok(Ok(SpawnReply::Failed { message, failure })) => {
                unplace(self);
                let failure = match failure {
                    SpawnFailure::Permanent => RemoteFailure::Permanent,
                    SpawnFailure::Shortage => RemoteFailure::Shortage,
                    SpawnFailure::Other => RemoteFailure::Other,
                };
                return Err(self.error(failure, message));
            }
            Ok(Err(_)) => {
                return Err(in_doubt(
                    self,
                    "its link went down before the agent answered the spawn".into(),
                ));
            }
            Err(_) => {
                return Err(in_doubt(
                    self,
                    format!(
                        "the agent did not answer the spawn within {} s",
                        SPAWN_TIMEOUT.as_secs()
                    ),
                ));
            }
        };
        let log_path =
            self.log_dir
                .join(format!("{}@{}_{pid}.log", node.file_stem(), self.plan.name));
        {
            let mut st = self.lock();
            if st.logs.len() >= LOG_COPIES {
                // Forget the copies of incarnations that are not placed any more.
                let placed: Vec<(NodeName, u64)> = st
                    .placed
                    .iter()
                    .map(|(n, p)| (n.clone(), p.incarnation))
                    .collect();
                st.logs.retain(|k, _| placed.contains(k));
            }
            st.logs
                .insert((node.clone(), incarnation), log_path.clone());
        }
        // Its node link: TLS under its own certificate, relayed to a local socketpair.
        let tls = match self.open(&link_identity, Opening::Node).await {
            Ok(tls) => tls,
            Err(why) => {
                return Err(in_doubt(
                    self,
                    format!("opening the node link of {label}: {why}"),
                ));
            }
        };
        let pair = std::os::unix::net::UnixStream::pair().and_then(|(ours, theirs)| {
            theirs.set_nonblocking(true)?;
            Ok((ours, tokio::net::UnixStream::from_std(theirs)?))
        });
        let (ours, theirs) = match pair {
            Ok(p) => p,
            Err(e) => {
                return Err(in_doubt(
                    self,
                    format!("making the node link's socketpair: {e}"),
                ));
            }
        };
        let relay = tokio::spawn(relay(theirs, tls, label.clone()));
        // Its broker link: the Broker gets one end; what it says is relayed to the agent, with
        // what to make on that host in place of the fds it carries.
        let made = syncra_protocol::broker::socketpair().and_then(|(broker, broker_relay)| {
            rustix::io::ioctl_fionbio(&broker_relay, true)?;
            Ok((broker, broker_relay))
        });
        let (broker, broker_relay) = match made {
            Ok(p) => p,
            Err(e) => {
                relay.abort();
                return Err(in_doubt(self, format!("making the broker link: {e}")));
            }
        };
        // SAFETY: the socket is moved into the AsyncFd, which keeps it open and unchanged
        // until it drops it.
        let broker_relay = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(
                broker_relay,
                tokio::io::Interest::READABLE,
            )
        }
        .map_err(|e| e.into_parts().1);
        let broker_relay = match broker_relay {
            Ok(b) => b,
            Err(e) => {
                relay.abort();
                return Err(in_doubt(self, format!("preparing the broker relay: {e}")));
            }
        };
        let broker_relay = Arc::new(broker_relay);
        let relaying = tokio::spawn(self.clone().relay_broker(
            node.clone(),
            incarnation,
            broker_relay.clone(),
        ));
        {
            let mut st = self.lock();
            match st.placed.get_mut(&node) {
                Some(p) if p.incarnation == incarnation => {
                    p.relay = Some(relay.abort_handle());
                    p.broker = Some(broker_relay);
                    p.tasks.push(relaying.abort_handle());
                }
                // It ended (or the host was lost) meanwhile: its end is being reported.
                _ => {
                    relay.abort();
                    relaying.abort();
                }
            }
        }
        Ok(RemoteLaunched {
            pid,
            ours,
            broker,
            page,
            log_path,
            sandbox,
            crash,
        })
    }

    /// The dump incarnation `incarnation` of `node` left here, once its agent has read its
    /// stack ([`AgentToRuntime::Dumped`]).
    pub(crate) fn dump_of(&self, node: &NodeName, incarnation: u64) -> oneshot::Receiver<DumpInfo> {
        let (tx, rx) = oneshot::channel();
        let key = (node.clone(), incarnation);
        let mut st = self.lock();
        match st.dumps.remove(&key) {
            Some(DumpSlot::Arrived(d)) => {
                let _ = tx.send(d);
            }
            _ => {
                bound_dumps(&mut st.dumps);
                st.dumps.insert(key, DumpSlot::Waiting(tx));
            }
        }
        rx
    }

    /// The agent read a dump's stack.
    fn dumped(&self, node: NodeName, incarnation: u64, dump: DumpInfo) {
        let key = (node, incarnation);
        let mut st = self.lock();
        match st.dumps.remove(&key) {
            Some(DumpSlot::Waiting(tx)) => {
                let _ = tx.send(dump);
            }
            _ => {
                bound_dumps(&mut st.dumps);
                st.dumps.insert(key, DumpSlot::Arrived(dump));
            }
        }
    }

    /// Append `lines` to the log copy at `path`, on the log thread. When the thread is
    /// behind, the lines are dropped (the agent's own log file has them).
    fn write_log(&self, path: PathBuf, lines: Vec<String>, dropped: u64) {
        let mut writer = self.log_writer.lock().unwrap_or_else(|p| p.into_inner());
        if writer.is_none() {
            let (tx, rx) = std::sync::mpsc::sync_channel::<LogLines>(1024);
            let spawned = std::thread::Builder::new()
                .name("syncra-log-copy".into())
                .spawn(move || {
                    while let Ok((path, lines, dropped)) = rx.recv() {
                        append_log(&path, &lines, dropped);
                    }
                });
            if spawned.is_err() {
                return;
            }
            *writer = Some(tx);
        }
        if let Some(tx) = writer.as_ref() {
            let _ = tx.try_send((path, lines, dropped));
        }
    }

    fn send(&self, msg: RuntimeToAgent) -> bool {
        let st = self.lock();
        st.out.as_ref().is_some_and(|out| out.try_send(msg).is_ok())
    }

    /// Signal incarnation `incarnation` of `node` on its host (dropped while the link is down:
    /// a lost host's nodes are killed by its agent).
    pub(crate) fn signal(&self, node: &NodeName, incarnation: u64, signal: i32) {
        if !self.send(RuntimeToAgent::Signal {
            node: node.clone(),
            incarnation,
            signal,
        }) {
            tracing::debug!(host = %self.plan.name, %node, incarnation, signal, "a signal not sent: the host's link is down");
        }
    }

    /// The incarnation is ready: its agent watches its heartbeat from now on.
    pub(crate) fn watch(&self, node: &NodeName, incarnation: u64, deadline: Duration) {
        self.send(RuntimeToAgent::Watch {
            node: node.clone(),
            incarnation,
            deadline_ms: deadline.as_millis() as u64,
        });
    }

    /// Its heartbeat no longer matters (it is being stopped).
    pub(crate) fn unwatch(&self, node: &NodeName, incarnation: u64) {
        self.send(RuntimeToAgent::Unwatch {
            node: node.clone(),
            incarnation,
        });
    }

    /// The supervisor is done with this incarnation: its node link closes.
    pub(crate) fn forget(&self, node: &NodeName, incarnation: u64) {
        let mut st = self.lock();
        if st
            .placed
            .get(node)
            .is_some_and(|p| p.incarnation == incarnation)
            && let Some(p) = st.placed.remove(node)
        {
            p.stop();
        }
    }

    /// An incarnation link to the agent: TLS under `identity`, then its opening.
    async fn open(
        &self,
        identity: &Identity,
        opening: Opening,
    ) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
        let mut tls = super::dial(&self.plan, identity, self.plan.deadline)
            .await
            .map_err(|e| e.to_string())?;
        frame::write(&mut tls, &opening)
            .await
            .map_err(|e| format!("opening it: {e}"))?;
        Ok(tls)
    }

    /// Relay what the Broker says to a remote incarnation, until either ends.
    async fn relay_broker(
        self: Arc<Self>,
        node: NodeName,
        incarnation: u64,
        socket: Arc<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>>,
    ) {
        loop {
            let mut guard = match socket.readable().await {
                Ok(g) => g,
                Err(_) => return,
            };
            let got = syncra_protocol::broker::recv::<BrokerToNode>(guard.get_inner());
            let (message, fds) = match got {
                Ok(m) => m,
                Err(syncra_protocol::broker::RecvError::WouldBlock) => {
                    guard.clear_ready();
                    continue;
                }
                Err(syncra_protocol::broker::RecvError::Closed) => return,
                Err(e) => {
                    tracing::warn!(host = %self.plan.name, %node, error = %e, "a broker message not relayed");
                    continue;
                }
            };
            drop(guard);
            if let Some((message, carried)) = self.carry(&node, incarnation, message, fds) {
                let msg = RuntimeToAgent::Broker {
                    node: node.clone(),
                    incarnation,
                    message,
                    carried,
                };
                // Not lost to a short partition: kept until the link is back.
                let mut st = self.lock();
                let held = match st.out.as_ref() {
                    Some(out) => out.try_send(msg).err().map(|e| e.into_inner()),
                    None => Some(msg),
                };
                if let Some(msg) = held
                    && let Some(p) = st
                        .placed
                        .get_mut(&node)
                        .filter(|p| p.incarnation == incarnation)
                    && p.held.len() < 1024
                {
                    p.held.push(msg);
                }
            }
        }
    }

    /// A Broker message for a remote incarnation: keep the fds it carries (each becomes a
    /// bridge, or nothing when both ends of a link are on that host), and say what the agent
    /// makes in their place. `None`: nothing to forward.
    fn carry(
        self: &Arc<Self>,
        node: &NodeName,
        incarnation: u64,
        message: BrokerToNode,
        fds: Vec<std::os::fd::OwnedFd>,
    ) -> Option<(BrokerToNode, Vec<Carried>)> {
        let mut fds = fds.into_iter();
        let identity = {
            let st = self.lock();
            st.placed
                .get(node)
                .filter(|p| p.incarnation == incarnation)
                .map(|p| p.identity.clone())?
        };
        match message {
            BrokerToNode::ConsumerJoined { stream, cell } => {
                let bell = fds.next()?;
                let st = self.lock();
                if let Some(bells) = st
                    .placed
                    .get(node)
                    .filter(|p| p.incarnation == incarnation)
                    .and_then(|p| p.produced.get(&stream))
                {
                    let mut b = bells.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some(slot) = b.get_mut(cell as usize) {
                        *slot = Some(bell);
                    }
                }
                None
            }
            BrokerToNode::Declared {
                ref stream,
                ref bells,
                ..
            }
            | BrokerToNode::Granted {
                ref stream,
                ref bells,
            } => {
                let g = stream.spec.geometry;
                let (ring, space) = (fds.next()?, fds.next()?);
                let map = match syncra_protocol::ring::RingMap::map(ring.as_fd(), g) {
                    Ok(m) => Arc::new(m),
                    Err(e) => {
                        tracing::warn!(host = %self.plan.name, %node, stream = %stream.spec.name, error = %e, "a stream not bridged");
                        return None;
                    }
                };
                let consumer_bells: syncra_protocol::ring::Bells = Default::default();
                {
                    let mut b = consumer_bells.lock().unwrap_or_else(|p| p.into_inner());
                    b.resize_with(syncra_protocol::ring::MAX_CONSUMERS, || None);
                    for (cell, fd) in bells.iter().zip(fds.by_ref()) {
                        if let Some(slot) = b.get_mut(*cell as usize) {
                            *slot = Some(fd);
                        }
                    }
                }
                let h = map.header();
                let carried = Carried::Produce {
                    bridge: super::new_session(),
                    geometry: g,
                    claimed: h.claimed.load(std::sync::atomic::Ordering::Acquire),
                    published: h.published.load(std::sync::atomic::Ordering::Acquire),
                    attachments: h.attachments.load(std::sync::atomic::Ordering::Acquire),
                };
                let Carried::Produce { bridge, .. } = carried else {
                    unreachable!("made above");
                };
                let writer =
                    syncra_protocol::ring::RingWriter::mirror(map, space, consumer_bells.clone());
                let name = stream.spec.name.clone();
                self.lock()
                    .placed
                    .get_mut(node)
                    .filter(|p| p.incarnation == incarnation)?
                    .produced
                    .insert(name.clone(), consumer_bells);
                let me = self.clone();
                let task = tokio::spawn(async move {
                    match me.open_bridge(&identity, bridge).await {
                        Ok(tls) => {
                            let why = super::bridge::receive(writer, tls, None).await;
                            tracing::debug!(stream = name, "a bridge ended: {why}");
                        }
                        Err(e) => {
                            tracing::warn!(host = %me.plan.name, stream = name, "could not open its bridge: {e}")
                        }
                    }
                });
                self.keep(node, incarnation, task.abort_handle());
                Some((message, vec![carried]))
            }
            BrokerToNode::Subscribed { ref streams, .. } => {
                let mut carried = Vec::new();
                for a in streams {
                    let fd3 = (fds.next()?, fds.next()?, fds.next()?);
                    carried.push(self.consume(node, incarnation, &identity, a, fd3)?);
                }
                Some((message, carried))
            }
            BrokerToNode::Added { ref stream, .. } => {
                let fd3 = (fds.next()?, fds.next()?, fds.next()?);
                let c = self.consume(node, incarnation, &identity, stream, fd3)?;
                Some((message, vec![c]))
            }
            BrokerToNode::Linked {
                to: ref other,
                link,
                ..
            }
            | BrokerToNode::LinkFrom {
                from: ref other,
                link,
                ..
            } => {
                let end = fds.next()?;
                // Both ends on that host: the agent joins them there, nothing crosses the network.
                if self.lock().placed.contains_key(other) {
                    return Some((
                        message,
                        vec![Carried::Link {
                            link,
                            local: true,
                            bridge: 0,
                        }],
                    ));
                }
                let bridge = super::new_session();
                let me = self.clone();
                let task = tokio::spawn(async move {
                    match me.open_bridge(&identity, bridge).await {
                        Ok(tls) => {
                            let why = super::bridge::relay_packets(end, tls).await;
                            tracing::debug!(link, "a direct link's bridge ended: {why}");
                        }
                        Err(e) => {
                            tracing::warn!(host = %me.plan.name, link, "could not open a direct link's bridge: {e}")
                        }
                    }
                });
                self.keep(node, incarnation, task.abort_handle());
                Some((
                    message,
                    vec![Carried::Link {
                        link,
                        local: false,
                        bridge,
                    }],
                ))
            }
            BrokerToNode::Refused { .. } | BrokerToNode::LinkRefused { .. } => {
                Some((message, Vec::new()))
            }
        }
    }

    /// A stream a remote incarnation consumes: read it here in its cell, send it over a
    /// bridge.
    fn consume(
        self: &Arc<Self>,
        node: &NodeName,
        incarnation: u64,
        identity: &Arc<Identity>,
        a: &syncra_protocol::broker::Attachment,
        (ring, bell, space): (
            std::os::fd::OwnedFd,
            std::os::fd::OwnedFd,
            std::os::fd::OwnedFd,
        ),
    ) -> Option<Carried> {
        let g = a.stream.spec.geometry;
        let reader = syncra_protocol::ring::RingMap::map(ring.as_fd(), g)
            .map_err(|e| e.to_string())
            .and_then(|m| {
                syncra_protocol::ring::RingReader::attach(
                    Arc::new(m),
                    a.cell as usize,
                    bell,
                    space,
                    a.resume,
                )
                .map_err(|e| e.to_string())
            });
        let reader = match reader {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(host = %self.plan.name, %node, stream = %a.stream.spec.name, error = %e, "a stream not bridged");
                return None;
            }
        };
        let first = reader
            .cell()
            .next
            .load(std::sync::atomic::Ordering::Acquire);
        let bridge = super::new_session();
        let (me, identity, name) = (self.clone(), identity.clone(), a.stream.spec.name.clone());
        let task = tokio::spawn(async move {
            match me.open_bridge(&identity, bridge).await {
                Ok(tls) => {
                    let why = super::bridge::send(reader, tls).await;
                    tracing::debug!(stream = name, "a bridge ended: {why}");
                }
                Err(e) => {
                    tracing::warn!(host = %me.plan.name, stream = name, "could not open its bridge: {e}")
                }
            }
        });
        self.keep(node, incarnation, task.abort_handle());
        Some(Carried::Consume {
            bridge,
            geometry: g,
            first,
        })
    }

    /// Tie `task` to the incarnation: it ends with it.
    fn keep(&self, node: &NodeName, incarnation: u64, task: tokio::task::AbortHandle) {
        let mut st = self.lock();
        match st
            .placed
            .get_mut(node)
            .filter(|p| p.incarnation == incarnation)
        {
            Some(p) => {
                p.tasks.retain(|t| !t.is_finished());
                p.tasks.push(task);
            }
            None => task.abort(),
        }
    }

    /// A bridge's connection, tried again (for up to the host's deadline) while the link is
    /// down or the agent has not yet heard of the bridge.
    async fn open_bridge(
        &self,
        identity: &Identity,
        bridge: u64,
    ) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
        let give_up = Instant::now() + self.plan.deadline;
        let mut wait = Duration::from_millis(50);
        loop {
            match self.open(identity, Opening::Bridge { id: bridge }).await {
                Ok(tls) => return Ok(tls),
                Err(e) if Instant::now() + wait > give_up => return Err(e),
                Err(_) => {
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    /// End the session: the agent kills what is left of it.
    pub(crate) async fn goodbye(&self) {
        let out = {
            let mut st = self.lock();
            st.closing = true;
            st.out.clone()
        };
        if let Some(out) = out {
            let _ = tokio::time::timeout(
                Duration::from_millis(500),
                out.send(RuntimeToAgent::Goodbye),
            )
            .await;
            // The writer flushes it; give it a moment before the runtime exits.
            let _ = tokio::time::timeout(Duration::from_millis(500), out.closed()).await;
        }
    }

    /// The link's task: connect when wanted, serve, reconnect, and call the host lost when
    /// nothing was heard for its deadline.
    async fn run(self: Arc<Self>) {
        let mut backoff = RETRY_INITIAL;
        loop {
            let wake = self.wake.notified();
            let (wanted, has_nodes, closing) = {
                let st = self.lock();
                (
                    st.wanted,
                    !st.placed.is_empty() || !st.spawns.is_empty(),
                    st.closing,
                )
            };
            if closing {
                return;
            }
            if !wanted && !has_nodes {
                wake.await;
                continue;
            }
            if self.status() != HostState::Up {
                self.set_status(HostState::Connecting);
            }
            let resumed = self.lock().instance.is_some();
            match connect(
                &self.identity,
                &self.plan,
                self.session,
                self.plan.deadline.as_millis() as u64,
            )
            .await
            {
                Ok(conn) => {
                    backoff = RETRY_INITIAL;
                    let why = self.serve(conn).await;
                    if self.lock().closing {
                        return;
                    }
                    tracing::warn!(host = %self.plan.name, "the link to its agent broke: {why}; reconnecting");
                    self.set_status(HostState::Connecting);
                }
                Err(super::ConnectError::Refused(why)) => {
                    tracing::error!(host = %self.plan.name, "{why}");
                    self.attempt_ended(HostState::Refused(why.clone()));
                    self.lose(&format!("refused: {why}"));
                    self.lock().wanted = false;
                    continue;
                }
                Err(super::ConnectError::Unreachable(why)) => {
                    if !resumed {
                        tracing::warn!(host = %self.plan.name, "{why}");
                    }
                    self.attempt_ended(HostState::Unreachable(why));
                }
            }
            // While its nodes may still live, the host is not lost before its deadline.
            let lost_at = self.lock().liveness.map(|l| l.lost_at());
            if let Some(at) = lost_at
                && Instant::now() >= at
            {
                self.lose(&format!(
                    "nothing heard from its agent for {} ms (its deadline)",
                    self.plan.deadline.as_millis()
                ));
            }
            let wait = match self.lock().liveness.map(|l| l.lost_at()) {
                Some(at) => backoff.min(at.saturating_duration_since(Instant::now())),
                None => backoff,
            };
            tokio::time::sleep(wait.max(Duration::from_millis(5))).await;
            backoff = (backoff * 2).min(RETRY_MAX);
        }
    }

    fn attempt_ended(&self, status: HostState) {
        let waiting: Vec<oneshot::Sender<SpawnReply>> = {
            let mut st = self.lock();
            st.attempts += 1;
            // Spawns sent on a link that broke never get their answer.
            if st.out.is_none() {
                st.spawns.drain().map(|(_, s)| s).collect()
            } else {
                Vec::new()
            }
        };
        drop(waiting);
        let mut st = self.lock();
        st.status = status;
        drop(st);
        self.changed.send_modify(|n| *n += 1);
    }

    /// The host is unreachable: every node placed there is lost.
    fn lose(&self, why: &str) {
        let (placed, replace_after) = {
            let mut st = self.lock();
            let Some(liveness) = st.liveness.take() else {
                return;
            };
            st.lost_since.get_or_insert(Instant::now());
            st.spawns.clear();
            (std::mem::take(&mut st.placed), liveness.replace_after())
        };
        if placed.is_empty() {
            return;
        }
        let why = format!("its host {} is unreachable: {why}", self.plan.name);
        tracing::error!(host = %self.plan.name, nodes = placed.len(), "{why}; its agent fences its nodes, replacements wait for the fence grace");
        for (_, p) in placed {
            let sink = p.sink.clone();
            p.stop();
            sink(RemoteEvent::Lost {
                why: why.clone(),
                replace_after,
            });
        }
    }

    /// Serve one connection until it breaks; why it broke.
    async fn serve(self: &Arc<Self>, conn: Connected) -> String {
        let Connected {
            stream,
            instance,
            running,
            ended,
            ..
        } = conn;
        let (mut rd, mut wr) = tokio::io::split(stream);
        let (out, mut queue) = mpsc::channel::<RuntimeToAgent>(OUT_QUEUE);
        let writer = tokio::spawn(async move {
            while let Some(msg) = queue.recv().await {
                if let Err(e) = frame::write(&mut wr, &msg).await {
                    return format!("writing to the agent: {e}");
                }
            }
            "the session ended".to_owned()
        });
        let (frames_tx, mut frames) = mpsc::channel::<AgentToRuntime>(256);
        let host = self.plan.name.clone();
        let reader = tokio::spawn(async move {
            loop {
                match frame::read::<AgentToRuntime>(
                    &mut rd,
                    "agent message",
                    syncra_protocol::agent::MAX_FRAME,
                )
                .await
                {
                    Ok(f) => {
                        if frames_tx.send(f).await.is_err() {
                            return "the session ended".to_owned();
                        }
                    }
                    Err(frame::FrameError::Io(e))
                        if e.kind() == std::io::ErrorKind::UnexpectedEof =>
                    {
                        return "the agent closed the connection (it stopped, or died)".to_owned();
                    }
                    Err(frame::FrameError::Io(e)) => return format!("reading from the agent: {e}"),
                    Err(e) => {
                        tracing::warn!(host, error = %e, "a malformed frame from the agent; the link is closed");
                        return format!("a malformed frame: {e}");
                    }
                }
            }
        });
        let restarted = {
            let mut st = self.lock();
            st.out = Some(out.clone());
            st.lost_since = None;
            let restarted = st.instance.is_some_and(|i| i != instance);
            st.instance = Some(instance);
            if let Some(l) = st.liveness.as_mut() {
                l.heard(Instant::now());
            }
            restarted
        };
        tracing::info!(host = %self.plan.name, address = %self.plan.address, "its agent answers");
        self.resume(restarted, running, ended);
        // What the Broker said to its nodes while the link was down.
        {
            let mut st = self.lock();
            let held: Vec<RuntimeToAgent> = st
                .placed
                .values_mut()
                .flat_map(|p| std::mem::take(&mut p.held))
                .collect();
            for msg in held {
                let _ = out.try_send(msg);
            }
        }
        self.attempt_ended(HostState::Up);
        let check = (self.plan.deadline / 10).max(Duration::from_millis(10));
        let mut writer = writer;
        let mut reader = reader;
        let why = loop {
            tokio::select! {
                f = frames.recv() => match f {
                    Some(frame) => {
                        if let Some(l) = self.lock().liveness.as_mut() {
                            l.heard(Instant::now());
                        }
                        self.on_frame(frame, &out);
                    }
                    None => break (&mut reader).await.unwrap_or_else(|e| e.to_string()),
                },
                _ = tokio::time::sleep(check) => {
                    let lost = self.lock().liveness.is_some_and(|l| l.is_lost(Instant::now()));
                    if lost {
                        reader.abort();
                        writer.abort();
                        self.lock().out = None;
                        self.lose(&format!(
                            "nothing heard from its agent for {} ms (its deadline)",
                            self.plan.deadline.as_millis()
                        ));
                        break "silent past its deadline".to_owned();
                    }
                }
                w = &mut writer => break w.unwrap_or_else(|e| e.to_string()),
            }
        };
        reader.abort();
        writer.abort();
        let mut st = self.lock();
        st.out = None;
        // Spawns asked on this connection get no answer now: their waiters hear so at once.
        st.spawns.clear();
        why
    }

    /// A (re)connected agent says what runs: settle every node we placed there.
    fn resume(
        &self,
        restarted: bool,
        running: Vec<syncra_protocol::agent::Running>,
        ended: Vec<Exit>,
    ) {
        let mut stale = Vec::new();
        for r in &running {
            let ours = self
                .lock()
                .placed
                .get(&r.node)
                .is_some_and(|p| p.incarnation == r.incarnation);
            if !ours {
                stale.push(r.clone());
            }
        }
        for r in stale {
            tracing::warn!(host = %self.plan.name, node = %r.node, incarnation = r.incarnation, pid = r.pid, "a stale incarnation still runs on the host (not one of ours any more): refused, killed");
            self.signal(&r.node, r.incarnation, libc::SIGKILL);
        }
        for exit in ended {
            self.exited(exit);
        }
        let gone: Vec<(NodeName, u64)> = {
            let st = self.lock();
            st.placed
                .iter()
                .filter(|(n, p)| {
                    !st.spawns.contains_key(&((*n).clone(), p.incarnation))
                        && (restarted
                            || !running
                                .iter()
                                .any(|r| r.node == **n && r.incarnation == p.incarnation))
                })
                .map(|(n, p)| (n.clone(), p.incarnation))
                .collect()
        };
        // How they ended is not known (the agent restarted, or dropped the session after its
        // fence): lost, and replaced only after the fence grace, in case one is still dying.
        let replace_after = Instant::now() + self.plan.fence_grace;
        for (node, incarnation) in gone {
            let why = if restarted {
                format!(
                    "the agent on {} restarted: its nodes died with it",
                    self.plan.name
                )
            } else {
                format!("gone from its agent on {}", self.plan.name)
            };
            let placed = {
                let mut st = self.lock();
                if st
                    .placed
                    .get(&node)
                    .is_some_and(|p| p.incarnation == incarnation)
                {
                    st.placed.remove(&node)
                } else {
                    None
                }
            };
            if let Some(p) = placed {
                let sink = p.sink.clone();
                p.stop();
                sink(RemoteEvent::Lost { why, replace_after });
            }
        }
    }

    /// The current incarnation of `node` on this host, if it is `incarnation`.
    fn current(&self, node: &NodeName, incarnation: u64) -> Option<Sink> {
        let st = self.lock();
        st.placed
            .get(node)
            .filter(|p| p.incarnation == incarnation)
            .map(|p| p.sink.clone())
    }

    fn exited(&self, exit: Exit) {
        match self.current(&exit.node, exit.incarnation) {
            Some(sink) => sink(RemoteEvent::Exited(Box::new(exit))),
            None => {
                tracing::debug!(host = %self.plan.name, node = %exit.node, incarnation = exit.incarnation, "an exit of an incarnation that is not current; dropped")
            }
        }
    }

    fn on_frame(&self, frame: AgentToRuntime, out: &mpsc::Sender<RuntimeToAgent>) {
        match frame {
            AgentToRuntime::Ping { n } => {
                let _ = out.try_send(RuntimeToAgent::Pong { n });
            }
            AgentToRuntime::Pong { .. } => {}
            AgentToRuntime::Spawned {
                node,
                incarnation,
                pid,
                sandbox,
                log,
                crash,
            } => {
                tracing::debug!(host = %self.plan.name, %node, incarnation, pid, log, "spawned on its host");
                if let Some(reply) = self.lock().spawns.remove(&(node, incarnation)) {
                    let _ = reply.send(SpawnReply::Spawned {
                        pid,
                        sandbox,
                        crash,
                    });
                }
            }
            AgentToRuntime::SpawnFailed {
                node,
                incarnation,
                message,
                failure,
            } => {
                if let Some(reply) = self.lock().spawns.remove(&(node, incarnation)) {
                    let _ = reply.send(SpawnReply::Failed { message, failure });
                }
            }
            AgentToRuntime::Exited(exit) => self.exited(*exit),
            AgentToRuntime::Dumped {
                node,
                incarnation,
                dump,
            } => self.dumped(node, incarnation, dump),
            AgentToRuntime::Hung {
                node,
                incarnation,
                silent_ms,
            } => {
                if let Some(sink) = self.current(&node, incarnation) {
                    sink(RemoteEvent::Hung {
                        silent: Duration::from_millis(silent_ms),
                    });
                }
            }
            AgentToRuntime::Vitals(all) => {
                let st = self.lock();
                for v in all {
                    if let Some(p) = st
                        .placed
                        .get(&v.node)
                        .filter(|p| p.incarnation == v.incarnation)
                    {
                        mirror(&p.page, &v);
                    }
                }
            }
            AgentToRuntime::Log {
                node,
                incarnation,
                lines,
                dropped,
            } => {
                let path = self.lock().logs.get(&(node, incarnation)).cloned();
                if let Some(path) = path {
                    self.write_log(path, lines, dropped);
                }
            }
            AgentToRuntime::Broker {
                node,
                incarnation,
                message,
            } => {
                let socket = self
                    .lock()
                    .placed
                    .get(&node)
                    .filter(|p| p.incarnation == incarnation)
                    .and_then(|p| p.broker.clone());
                if let Some(socket) = socket
                    && let Err(e) = syncra_protocol::broker::send(socket.get_ref(), &message, &[])
                {
                    tracing::warn!(host = %self.plan.name, %node, error = %e, "a broker request not relayed");
                }
            }
            AgentToRuntime::Hello { .. } | AgentToRuntime::Refused { .. } => {
                tracing::warn!(host = %self.plan.name, "the agent said hello again mid-session; ignored");
            }
        }
    }
}

/// Write what an agent reports of a node's page into our copy of it.
fn mirror(page: &NodePage, v: &syncra_protocol::agent::Vitals) {
    page.vitals().beat(v.metrics.as_ref());
    for f in &v.figures {
        if let Some(slot) = page
            .figure(&f.name, f.kind)
            .and_then(|i| page.figure_slot(i))
        {
            slot.set(f.value);
        }
    }
    page.status_note().write(v.note.as_deref().unwrap_or(""));
}

/// Append a node's lines to the copy of its log here.
fn append_log(path: &std::path::Path, lines: &[String], dropped: u64) {
    use std::io::Write as _;
    let mut text = String::new();
    if dropped > 0 {
        text.push_str(&format!(
            "[syncra: {dropped} lines left out here: the host's link was busy; the agent's copy has them]\n"
        ));
    }
    for l in lines {
        text.push_str(l);
        text.push('\n');
    }
    match std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        Ok(mut f) => {
            let _ = f.write_all(text.as_bytes());
        }
        Err(e) => {
            tracing::debug!(path = %path.display(), error = %e, "cannot write the copy of a remote node's log")
        }
    }
}

/// Copy bytes both ways between a node's local socket end and its node link until either ends.
async fn relay(
    mut local: tokio::net::UnixStream,
    mut link: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    label: String,
) {
    match tokio::io::copy_bidirectional(&mut local, &mut link).await {
        Ok((to_node, from_node)) => {
            tracing::debug!(link = label, to_node, from_node, "a node link ended")
        }
        Err(e) => tracing::debug!(link = label, error = %e, "a node link broke"),
    }
}

/// The links to every configured host.
#[derive(Debug, Default)]
pub(crate) struct Hosts {
    links: HashMap<String, Arc<HostLink>>,
}

impl Hosts {
    /// Links (not yet connected) to `plans`, as `identity`, in session `session`; remote nodes'
    /// log copies go in `log_dir`.
    pub(crate) fn new(
        plans: &[HostPlan],
        identity: Arc<Identity>,
        session: u64,
        log_dir: PathBuf,
    ) -> Hosts {
        Hosts {
            links: plans
                .iter()
                .map(|p| {
                    (
                        p.name.clone(),
                        HostLink::new(p.clone(), identity.clone(), session, log_dir.clone()),
                    )
                })
                .collect(),
        }
    }

    /// The link to `host`.
    pub(crate) fn get(&self, host: &str) -> Option<Arc<HostLink>> {
        self.links.get(host).cloned()
    }

    /// End every session (the runtime is stopping; its nodes have stopped).
    pub(crate) async fn goodbye(&self) {
        for link in self.links.values() {
            link.goodbye().await;
        }
    }
}
