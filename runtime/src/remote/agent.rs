//! `syncra agent`: the daemon on a host where runtimes place nodes. It is a runtime's hands
//! there: it spawns the nodes a runtime asks for through the same spawn path as the runtime
//! (inherited fds, death signal, sandbox, logs — [`crate::launch`]), watches each with its own
//! pidfd and heartbeat watchdog, relays each node's cluster session to the runtime over that
//! incarnation's node link, and reports exits (with their stderr tail, panic report and exit
//! note), hangs, vitals and log lines. The runtime's node supervisor decides every restart.
//!
//! Each runtime session holds a **lease** on its nodes here ([`super::lease`]): renewed by the
//! runtime's answers to the agent's pings, it runs out when the runtime has not answered for
//! the session's deadline, and then the agent kills the session's nodes (**fencing**); each node
//! also has the lease in its page and ends itself when it passes (so a stopped agent fences
//! too). A runtime that closes its link (it died, or said goodbye) has its nodes killed at
//! once. A runtime that reconnects within the lease resumes its session: the agent says which
//! of its nodes still run and how the others ended.
//!
//! **Invariant:** nodes die with the agent (their death signal is its spawner thread's), and
//! never outlive their session's lease by more than a sweep: no orphan on this host.

use std::collections::{HashMap, VecDeque};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustix::process::Signal;
use std::os::fd::AsFd as _;

use syncra_protocol::agent::{
    AgentToRuntime, Carried, Exit, Fingerprint, MAX_FRAME, Opening, Running, RuntimeToAgent,
    SpawnFailure, SpawnRequest, Vitals,
};
use syncra_protocol::broker::BrokerToNode;
use syncra_protocol::page::NodePage;
use syncra_protocol::{NodeName, PROTOCOL_VERSION};
use syncra_remote::tls::TrustList;
use syncra_remote::{Identity, accept, frame, tls};
use tokio::sync::mpsc;

use super::lease::{Lease, ping_interval};
use super::{HELLO_TIMEOUT, TRUST_FILE, load_trust, tune};
use crate::launch::{self, LaunchSpec};
use crate::spawn::Spawner;
use crate::supervisor::policy::Termination;
use crate::watchdog::Watchdog;

/// How often the pages of a session's nodes are sent to its runtime.
const VITALS_EVERY: Duration = Duration::from_millis(250);
/// How often buffered log lines are sent.
const LOGS_EVERY: Duration = Duration::from_millis(100);
/// Log lines buffered per session while its link is busy or down; past it lines are counted,
/// not kept (the agent's own log file has them all).
const LOG_BUFFER_LINES: usize = 8192;
/// Exits kept for a runtime that will reconnect (each with a short stderr tail, so that a
/// hello carrying them all stays far below a frame's limit).
const ENDED_KEPT: usize = 128;
/// Longest stderr line kept in an exit waiting for its runtime.
const ENDED_LINE: usize = 1024;
/// Frames that must arrive (exits, broker messages, hangs) queued for a runtime at most; past
/// it the link is closed, and the runtime resumes the session on a new one.
const CONTROL_QUEUE: usize = 16_384;
/// Vitals and log frames queued at most; past it they are dropped (counted, for logs).
const BULK_QUEUE: usize = 256;
/// Messages that must arrive kept while the session has no link.
const BACKLOG: usize = 4096;
/// Log lines in one frame at most.
const LOG_LINES_PER_FRAME: usize = 256;
/// How long a bridge announced in a Broker message waits for its connection.
const PENDING_BRIDGE: Duration = Duration::from_secs(30);
/// Node links and session links at once.
const MAX_CONNECTIONS: usize = 4096;

/// What `syncra agent` is told.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// `host:port` to listen on.
    pub listen: String,
    /// Its identity, its `trusted` file, and its nodes' logs (`logs/`) and directories (`nodes/`).
    pub state_dir: PathBuf,
    /// Runtimes trusted from the command line.
    pub trust: Vec<Fingerprint>,
    /// Its name for its host.
    pub name: String,
    /// Accept → TLS handshake done.
    pub handshake_timeout: Duration,
}

/// A started agent: where it listens and who it is. Serve it with [`Agent::serve`].
#[derive(Debug)]
pub struct Agent {
    listener: tokio::net::TcpListener,
    config: Arc<rustls::ServerConfig>,
    trust: Arc<TrustList>,
    options: AgentOptions,
    /// Its identity's fingerprint (what runtimes pin).
    pub fingerprint: Fingerprint,
    /// Whether its identity was made now.
    pub new_identity: bool,
    /// How many runtimes it trusts.
    pub trusted: usize,
}

/// Why an agent cannot start, in words naming what to fix.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AgentError(String);

impl Agent {
    /// Load (or make) its identity, read whom it trusts, bind its port.
    pub async fn start(options: AgentOptions) -> Result<Agent, AgentError> {
        let (identity, new_identity) = Identity::load_or_create(&options.state_dir, &options.name)
            .map_err(|e| AgentError(format!("its identity: {e}")))?;
        let trusted = load_trust(&options.state_dir, &options.trust).map_err(AgentError)?;
        if trusted.is_empty() {
            return Err(AgentError(format!(
                "it trusts no runtime: pass `--trust <fingerprint>` (`syncra identity` on the runtime's host prints it), or write it to {}",
                options.state_dir.join(TRUST_FILE).display()
            )));
        }
        let count = trusted.len();
        let trust = Arc::new(TrustList::new(trusted));
        let config = tls::server_config_with(&identity, trust.clone())
            .map_err(|e| AgentError(format!("its TLS config: {e}")))?;
        let listener = tokio::net::TcpListener::bind(&options.listen)
            .await
            .map_err(|e| AgentError(format!("listening on {}: {e}", options.listen)))?;
        Ok(Agent {
            listener,
            config,
            trust,
            fingerprint: identity.fingerprint,
            new_identity,
            trusted: count,
            options,
        })
    }

    /// Where it listens.
    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    /// Serve runtimes for ever (call it inside the tokio runtime the nodes' pipes use).
    pub async fn serve(self) -> Result<(), AgentError> {
        let spawner = Spawner::start(tokio::runtime::Handle::current())
            .map_err(|e| AgentError(format!("starting its spawner thread: {e}")))?;
        let bin_dirs = std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(|d| d.to_owned()))
            .into_iter()
            .collect();
        let host = Arc::new(Host {
            name: self.options.name.clone(),
            instance: super::new_session(),
            spawner,
            bin_dirs,
            log_dir: self.options.state_dir.join("logs"),
            node_dir: self.options.state_dir.join("nodes"),
            dump_dir: self.options.state_dir.join("dumps"),
            trust: self.trust,
            sessions: Mutex::new(HashMap::new()),
            links: Mutex::new(HashMap::new()),
            bridges: Mutex::new(HashMap::new()),
            bridged: tokio::sync::Notify::new(),
            local_links: Mutex::new(HashMap::new()),
        });
        crate::logs::ensure_dir(&host.log_dir).map_err(|e| {
            AgentError(format!("its log directory {}: {e}", host.log_dir.display()))
        })?;
        let limits = accept::Limits {
            handshake_timeout: self.options.handshake_timeout,
            max_sessions: MAX_CONNECTIONS,
            ..accept::Limits::default()
        };
        accept::serve(self.listener, self.config, limits, move |a| {
            let host = host.clone();
            async move { host.accepted(a).await }
        })
        .await;
        Ok(())
    }
}

/// Everything the agent shares between its connections.
struct Host {
    name: String,
    /// Random per start: a runtime that sees another knows its nodes here died.
    instance: u64,
    spawner: Spawner,
    bin_dirs: Vec<PathBuf>,
    log_dir: PathBuf,
    node_dir: PathBuf,
    /// Minidumps of the nodes here that crashed natively.
    dump_dir: PathBuf,
    trust: Arc<TrustList>,
    sessions: Mutex<HashMap<u64, Arc<Session>>>,
    /// Incarnation-link certificates: which incarnation each is for (while it runs).
    links: Mutex<HashMap<Fingerprint, (u64, NodeName, u64)>>,
    /// Bridges announced in a Broker message, waiting for their connection.
    bridges: Mutex<HashMap<u64, Pending>>,
    /// Rung when a bridge is announced.
    bridged: tokio::sync::Notify,
    /// Direct links between two nodes of this host, by session and link id: the end kept for
    /// the second node.
    local_links: Mutex<HashMap<(u64, u64), (OwnedFd, Instant)>>,
}

/// A bridge waiting for its connection from the runtime.
struct Pending {
    /// The incarnation it belongs to.
    owner: (u64, NodeName, u64),
    what: Bridge,
    /// When it was announced (one never connected is dropped after [`PENDING_BRIDGE`]).
    since: Instant,
}

/// What a bridge does on this host.
enum Bridge {
    /// Read the node's ring (cell 0 here) and send it.
    Send(syncra_protocol::ring::RingReader),
    /// Write what comes into the ring the node reads in this cell.
    Receive(syncra_protocol::ring::RingWriter, usize),
    /// Carry a direct link's packets to and from the node's end.
    Link(OwnedFd),
}

/// One runtime session.
struct Session {
    id: u64,
    /// The runtime's fingerprint: only it may resume the session.
    owner: Fingerprint,
    lease_len: Duration,
    watchdog: Arc<Watchdog>,
    inner: Mutex<Inner>,
    logs: Mutex<LogBuffer>,
}

struct Inner {
    nodes: HashMap<NodeName, Hosted>,
    /// The link serving it now.
    link: Option<Link>,
    lease: Lease,
    /// Exits its runtime has not heard of: kept until a link's first answered ping proves the
    /// runtime got the hello that carried them.
    ended: VecDeque<Exit>,
    /// Other messages that must arrive, kept while there is no link.
    backlog: VecDeque<AgentToRuntime>,
    /// Whether the session is over (goodbye, or its runtime closed its link).
    closed: bool,
}

/// The link serving a session.
struct Link {
    number: u64,
    /// Frames that must arrive, in order.
    control: mpsc::Sender<AgentToRuntime>,
    /// Vitals and log lines: dropped when the link is busy.
    bulk: mpsc::Sender<AgentToRuntime>,
    /// Rung to close it (its control queue overflowed: the runtime resumes on a new one).
    close: Arc<tokio::sync::Notify>,
    /// Whether the runtime has answered a ping on it: a live session, not an attempt the
    /// runtime gave up on (its close then says nothing about the runtime).
    answered: bool,
    /// How many of `Inner::ended` its hello carried.
    ended_sent: usize,
}

/// A node this agent runs for a session.
struct Hosted {
    incarnation: u64,
    pid: u32,
    pidfd: OwnedFd,
    page: Arc<NodePage>,
    /// Our end of its cluster socket, until its node link takes it.
    ours: Option<std::os::unix::net::UnixStream>,
    link: Fingerprint,
    relay: Option<tokio::task::AbortHandle>,
    /// Our end of its broker link: what the runtime's Broker says is written here.
    broker: Option<Arc<tokio::io::unix::AsyncFd<OwnedFd>>>,
    /// Its broker reader.
    tasks: Vec<tokio::task::AbortHandle>,
}

#[derive(Default)]
struct LogBuffer {
    lines: VecDeque<(NodeName, u64, String)>,
    dropped: HashMap<(NodeName, u64), u64>,
}

/// An exit as kept for a runtime that will come back: its stderr lines cut short.
fn shortened(mut exit: Exit) -> Exit {
    for line in &mut exit.stderr_tail {
        if line.len() > ENDED_LINE {
            let mut end = ENDED_LINE;
            while !line.is_char_boundary(end) {
                end -= 1;
            }
            line.truncate(end);
        }
    }
    exit
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `CLOCK_MONOTONIC` ns of `at`, for a node's page.
fn monotonic_ns(at: Instant) -> u64 {
    let now = Instant::now();
    let base = syncra_protocol::audio::monotonic_ns();
    if at >= now {
        base.saturating_add(at.duration_since(now).as_nanos() as u64)
    } else {
        base.saturating_sub(now.duration_since(at).as_nanos() as u64)
    }
}

impl Session {
    /// Send a frame that must arrive: on the link, else kept for the next one (exits in
    /// `ended`, the rest in the backlog). A full queue closes the link.
    fn send(&self, msg: AgentToRuntime) {
        let mut inner = lock(&self.inner);
        let refused = match &inner.link {
            Some(link) => match link.control.try_send(msg) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Full(m)) => {
                    tracing::warn!(session = %format!("{:016x}", self.id), "the runtime's link is {CONTROL_QUEUE} frames behind; closing it for the runtime to resume on a new one");
                    link.close.notify_one();
                    m
                }
                Err(mpsc::error::TrySendError::Closed(m)) => m,
            },
            None => msg,
        };
        match refused {
            AgentToRuntime::Exited(exit) => {
                if inner.ended.len() >= ENDED_KEPT {
                    inner.ended.pop_front();
                }
                inner.ended.push_back(shortened(*exit));
            }
            // A ping or an answer to one means nothing later.
            AgentToRuntime::Ping { .. } | AgentToRuntime::Pong { .. } => {}
            other => {
                if inner.backlog.len() >= BACKLOG {
                    inner.backlog.pop_front();
                }
                inner.backlog.push_back(other);
            }
        }
    }

    /// Send vitals or log lines if the link has room; `false` if not.
    fn send_bulk(&self, msg: AgentToRuntime) -> bool {
        let inner = lock(&self.inner);
        inner
            .link
            .as_ref()
            .is_some_and(|l| l.bulk.try_send(msg).is_ok())
    }

    /// Kill every node of the session (their exits are reported as usual).
    fn fence(&self, why: &str) {
        let inner = lock(&self.inner);
        if inner.nodes.is_empty() {
            return;
        }
        let names: Vec<String> = inner
            .nodes
            .iter()
            .map(|(n, h)| format!("{n}#{} (pid {})", h.incarnation, h.pid))
            .collect();
        tracing::warn!(session = %format!("{:016x}", self.id), nodes = %names.join(", "), "fencing: {why}; killing the session's nodes");
        for h in inner.nodes.values() {
            crate::spawn::signal(&h.pidfd, Signal::KILL);
        }
    }

    /// Renew every node's lease in its page.
    fn renew_pages(&self) {
        let inner = lock(&self.inner);
        let until = monotonic_ns(inner.lease.until());
        for h in inner.nodes.values() {
            h.page.vitals().renew_lease(until);
        }
    }
}

impl Host {
    /// A connection whose certificate is trusted: a runtime's session link, or a node link.
    async fn accepted(self: Arc<Self>, a: accept::Accepted) {
        if self.trust.is_fixed(&a.fingerprint) {
            self.session_link(a).await
        } else {
            self.node_link(a).await
        }
    }

    /// An incarnation link: the node's cluster socket, or one of its bridges, as its opening
    /// frame says.
    async fn node_link(self: Arc<Self>, mut a: accept::Accepted) {
        let Some(owner) = lock(&self.links).get(&a.fingerprint).cloned() else {
            tracing::warn!(peer = %a.peer, fingerprint = %a.fingerprint, "a link for no node; closed");
            return;
        };
        let opening = tokio::time::timeout(
            HELLO_TIMEOUT,
            frame::read::<Opening>(&mut a.stream, "link opening", 64),
        )
        .await;
        let Some(session) = lock(&self.sessions).get(&owner.0).cloned() else {
            return;
        };
        let _ = a.stream.get_ref().0.set_nodelay(true);
        tune(a.stream.get_ref().0, session.lease_len);
        match opening {
            Ok(Ok(Opening::Node)) => self.cluster_link(session, owner, a).await,
            Ok(Ok(Opening::Bridge { id })) => self.bridge_link(owner, id, a).await,
            _ => tracing::warn!(peer = %a.peer, "a link that did not say what it carries; closed"),
        }
    }

    /// A node's cluster socket, relayed byte for byte.
    async fn cluster_link(
        self: Arc<Self>,
        session: Arc<Session>,
        (_, node, incarnation): (u64, NodeName, u64),
        a: accept::Accepted,
    ) {
        let ours = {
            let mut inner = lock(&session.inner);
            match inner.nodes.get_mut(&node) {
                Some(h) if h.incarnation == incarnation => h.ours.take(),
                _ => None,
            }
        };
        let Some(ours) = ours else {
            tracing::warn!(%node, incarnation, "a second node link, or one for an incarnation that has ended; closed");
            return;
        };
        let local = ours
            .set_nonblocking(true)
            .and_then(|()| tokio::net::UnixStream::from_std(ours));
        let mut local = match local {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(%node, incarnation, error = %e, "could not relay a node link");
                return;
            }
        };
        let mut stream = a.stream;
        let relay = tokio::spawn(async move {
            let _ = tokio::io::copy_bidirectional(&mut local, &mut stream).await;
        });
        {
            let mut inner = lock(&session.inner);
            match inner.nodes.get_mut(&node) {
                Some(h) if h.incarnation == incarnation => h.relay = Some(relay.abort_handle()),
                _ => relay.abort(),
            }
        }
        let _ = relay.await;
    }

    /// A bridge announced in a Broker message: wait (briefly) for its announcement, then run
    /// it until either end closes.
    async fn bridge_link(
        self: Arc<Self>,
        owner: (u64, NodeName, u64),
        id: u64,
        a: accept::Accepted,
    ) {
        let deadline = tokio::time::Instant::now() + HELLO_TIMEOUT;
        let pending = loop {
            let announced = self.bridged.notified();
            {
                let mut bridges = lock(&self.bridges);
                match bridges.get(&id) {
                    Some(p) if p.owner == owner => break bridges.remove(&id),
                    Some(_) => {
                        tracing::warn!(node = %owner.1, bridge = id, "a bridge of another incarnation; closed");
                        return;
                    }
                    None => {}
                }
            }
            if tokio::time::timeout_at(deadline, announced).await.is_err() {
                tracing::warn!(node = %owner.1, bridge = id, "a bridge that was never announced; closed");
                return;
            }
        };
        let Some(pending) = pending else { return };
        let stream = a.stream;
        let (node, bridge) = (owner.1.clone(), id);
        let task = tokio::spawn(async move {
            let why = match pending.what {
                Bridge::Send(reader) => super::bridge::send(reader, stream).await,
                Bridge::Receive(writer, cell) => {
                    super::bridge::receive(writer, stream, Some(cell)).await
                }
                Bridge::Link(end) => super::bridge::relay_packets(end, stream).await,
            };
            tracing::debug!(%node, bridge, "a bridge ended: {why}");
        });
        // It ends with its incarnation.
        let session = lock(&self.sessions).get(&owner.0).cloned();
        let kept = session.is_some_and(|s| {
            let mut inner = lock(&s.inner);
            match inner
                .nodes
                .get_mut(&owner.1)
                .filter(|h| h.incarnation == owner.2)
            {
                Some(h) => {
                    h.tasks.retain(|t| !t.is_finished());
                    h.tasks.push(task.abort_handle());
                    true
                }
                None => false,
            }
        });
        if !kept {
            task.abort();
        }
        let _ = task.await;
    }

    /// A runtime's session link.
    async fn session_link(self: Arc<Self>, mut a: accept::Accepted) {
        let (peer, fp) = (a.peer, a.fingerprint);
        let hello = tokio::time::timeout(
            HELLO_TIMEOUT,
            frame::read::<RuntimeToAgent>(&mut a.stream, "runtime hello", MAX_FRAME),
        )
        .await;
        let (id, host, lease_ms) = match hello {
            Ok(Ok(RuntimeToAgent::Hello {
                protocol,
                session,
                host,
                lease_ms,
            })) if protocol == PROTOCOL_VERSION => (session, host, lease_ms),
            Ok(Ok(RuntimeToAgent::Hello { protocol, .. })) => {
                let message = format!(
                    "this agent speaks protocol v{PROTOCOL_VERSION}, the runtime v{protocol}: run the same Syncra version on both hosts"
                );
                tracing::warn!(%peer, fingerprint = %fp, "{message}");
                let _ = frame::write(&mut a.stream, &AgentToRuntime::Refused { message }).await;
                return;
            }
            Ok(Ok(other)) => {
                tracing::warn!(%peer, fingerprint = %fp, first = ?other, "a runtime that did not say hello first; closed");
                return;
            }
            Ok(Err(e)) => {
                tracing::warn!(%peer, fingerprint = %fp, error = %e, "a runtime's hello did not arrive whole; closed");
                return;
            }
            Err(_) => {
                tracing::warn!(%peer, fingerprint = %fp, "no hello within {} s; closed", HELLO_TIMEOUT.as_secs());
                return;
            }
        };
        let lease_len = Duration::from_millis(lease_ms);
        if lease_ms > 0 {
            tune(a.stream.get_ref().0, lease_len);
        }
        // A runtime coming back resumes its session; any other starts one.
        let owner = lock(&self.sessions).get(&id).map(|s| s.owner);
        if let Some(owner) = owner.filter(|o| *o != fp) {
            let message = format!(
                "session {id:016x} belongs to another runtime ({owner}); a runtime resumes only its own"
            );
            tracing::warn!(%peer, fingerprint = %fp, "refused: {message}");
            let _ = frame::write(&mut a.stream, &AgentToRuntime::Refused { message }).await;
            return;
        }
        let (session, resumed) = {
            let mut sessions = lock(&self.sessions);
            match sessions.get(&id) {
                Some(s) if s.owner == fp && !lock(&s.inner).closed => (s.clone(), true),
                _ => {
                    let s = Arc::new(Session {
                        id,
                        owner: fp,
                        lease_len,
                        watchdog: Watchdog::new(Duration::from_millis(25)),
                        inner: Mutex::new(Inner {
                            nodes: HashMap::new(),
                            link: None,
                            lease: Lease::new(lease_len, Instant::now()),
                            ended: VecDeque::new(),
                            backlog: VecDeque::new(),
                            closed: false,
                        }),
                        logs: Mutex::new(LogBuffer::default()),
                    });
                    sessions.insert(id, s.clone());
                    if lease_ms > 0 {
                        tokio::spawn(self.clone().guard(s.clone()));
                    }
                    (s, false)
                }
            }
        };
        let session_hex = format!("{id:016x}");
        tracing::info!(%peer, fingerprint = %fp, session = %session_hex, as_host = %host, resumed, "a runtime's session");
        let (control, mut control_rx) = mpsc::channel::<AgentToRuntime>(CONTROL_QUEUE);
        let (bulk, mut bulk_rx) = mpsc::channel::<AgentToRuntime>(BULK_QUEUE);
        let close = Arc::new(tokio::sync::Notify::new());
        let number = super::new_session();
        // The hello, then what was kept for this runtime while it had no link — in order,
        // before anything new. The lease is not renewed by the hello: only once the runtime
        // answers a ping on this link is it known to hear us.
        let (hello, backlog) = {
            let mut inner = lock(&session.inner);
            let ended: Vec<Exit> = inner.ended.iter().cloned().collect();
            inner.link = Some(Link {
                number,
                control: control.clone(),
                bulk,
                close: close.clone(),
                answered: false,
                ended_sent: ended.len(),
            });
            let running = inner
                .nodes
                .iter()
                .map(|(n, h)| Running {
                    node: n.clone(),
                    incarnation: h.incarnation,
                    pid: h.pid,
                })
                .collect::<Vec<_>>();
            let hello = AgentToRuntime::Hello {
                protocol: PROTOCOL_VERSION,
                name: self.name.clone(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
                instance: self.instance,
                running,
                ended,
            };
            (hello, std::mem::take(&mut inner.backlog))
        };
        for m in backlog {
            let _ = control.try_send(m);
        }
        let (mut rd, mut wr) = tokio::io::split(a.stream);
        let how = if let Err(e) = frame::write(&mut wr, &hello).await {
            Closed::Broken(format!("sending the hello: {e}"))
        } else {
            // The writer: frames that must arrive first, then vitals and log lines.
            let writer = tokio::spawn(async move {
                loop {
                    let msg = tokio::select! {
                        biased;
                        m = control_rx.recv() => m,
                        m = bulk_rx.recv() => m,
                    };
                    let Some(msg) = msg else { break };
                    match frame::write(&mut wr, &msg).await {
                        Ok(()) => {}
                        // Too large to send (nothing was written): dropped, the link goes on.
                        Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {
                            tracing::warn!(error = %e, "a frame for the runtime was dropped");
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "writing to the runtime failed");
                            break;
                        }
                    }
                }
            });
            let (frames_tx, mut frames) = mpsc::channel::<Result<RuntimeToAgent, Closed>>(64);
            let reader = tokio::spawn(async move {
                loop {
                    let got = match frame::read::<RuntimeToAgent>(
                        &mut rd,
                        "runtime message",
                        MAX_FRAME,
                    )
                    .await
                    {
                        Ok(RuntimeToAgent::Goodbye) => Err(Closed::Goodbye),
                        Ok(m) => Ok(m),
                        Err(frame::FrameError::Io(e)) => {
                            Err(if e.kind() == std::io::ErrorKind::UnexpectedEof {
                                Closed::Eof
                            } else {
                                Closed::Broken(e.to_string())
                            })
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "a malformed frame from the runtime; closed");
                            Err(Closed::Broken(e.to_string()))
                        }
                    };
                    let end = got.is_err();
                    if frames_tx.send(got).await.is_err() || end {
                        return;
                    }
                }
            });
            let mut tasks = vec![writer.abort_handle(), reader.abort_handle()];
            if lease_ms > 0 {
                tasks.push(tokio::spawn(pinger(session.clone(), number)).abort_handle());
                tasks.push(tokio::spawn(vitals(session.clone(), number)).abort_handle());
                tasks.push(tokio::spawn(pump_logs(session.clone(), number)).abort_handle());
            }
            let how = loop {
                tokio::select! {
                    f = frames.recv() => match f {
                        Some(Ok(msg)) => self.clone().handle(&session, number, msg),
                        Some(Err(how)) => break how,
                        None => break Closed::Broken("the reader ended".into()),
                    },
                    () = close.notified() => break Closed::Broken("its queue overflowed".into()),
                }
            };
            for t in tasks {
                t.abort();
            }
            how
        };
        let (current, answered) = {
            let mut inner = lock(&session.inner);
            let current = inner.link.as_ref().is_some_and(|l| l.number == number);
            let answered = current && inner.link.as_ref().is_some_and(|l| l.answered);
            if current {
                inner.link = None;
            }
            (current, answered)
        };
        if !current {
            return; // a newer link serves the session
        }
        if lease_ms == 0 {
            // A check: nothing to keep.
            lock(&session.inner).closed = true;
            self.forget_if_done(&session);
            return;
        }
        match how {
            Closed::Goodbye => {
                lock(&session.inner).closed = true;
                tracing::info!(session = %session_hex, "its runtime ended the session");
                session.fence("its runtime ended the session");
                self.forget_if_done(&session);
            }
            // A runtime whose live session closes (not an attempt it gave up on) has died or
            // stopped: its nodes go now.
            Closed::Eof if answered => {
                lock(&session.inner).closed = true;
                let why = "its runtime closed the link (it stopped, or died)";
                tracing::info!(session = %session_hex, "{why}");
                session.fence(why);
                self.forget_if_done(&session);
            }
            Closed::Eof => {
                tracing::warn!(session = %session_hex, lease_ms, "a runtime's link closed before it answered a ping; its nodes live until the lease runs out, waiting for it to come back");
            }
            Closed::Broken(e) => {
                tracing::warn!(session = %session_hex, error = %e, lease_ms, "the runtime's link broke; its nodes live until the lease runs out, waiting for it to come back");
            }
        }
    }

    /// A session's lease keeper: fences when the lease runs out, and forgets the session
    /// once it has no link and no nodes.
    async fn guard(self: Arc<Self>, session: Arc<Session>) {
        let watchdog = tokio::spawn(session.watchdog.clone().run());
        self.keep(&session).await;
        watchdog.abort();
    }

    async fn keep(&self, session: &Arc<Session>) {
        loop {
            let (until, closed) = {
                let inner = lock(&session.inner);
                (inner.lease.until(), inner.closed)
            };
            if closed {
                self.forget_if_done(session);
                if lock(&session.inner).nodes.is_empty() {
                    return;
                }
            }
            tokio::time::sleep_until(tokio::time::Instant::from_std(until)).await;
            let expired = lock(&session.inner).lease.expired(Instant::now());
            if expired {
                session.fence(&format!(
                    "no answer from its runtime for {} ms (the session's lease)",
                    session.lease_len.as_millis()
                ));
                let idle = {
                    let inner = lock(&session.inner);
                    inner.link.is_none()
                };
                if idle {
                    lock(&session.inner).closed = true;
                }
                // Look again soon: the lease may be renewed, or the nodes gone.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// Drop a session that has no link and no nodes.
    fn forget_if_done(&self, session: &Session) {
        let done = {
            let inner = lock(&session.inner);
            inner.link.is_none() && inner.nodes.is_empty()
        };
        if done {
            let mut sessions = lock(&self.sessions);
            if sessions
                .get(&session.id)
                .is_some_and(|s| std::ptr::eq(s.as_ref(), session))
            {
                sessions.remove(&session.id);
            }
        }
    }

    fn handle(self: Arc<Self>, session: &Arc<Session>, link: u64, msg: RuntimeToAgent) {
        match msg {
            RuntimeToAgent::Ping { n } => session.send(AgentToRuntime::Pong { n }),
            RuntimeToAgent::Pong { n } => {
                {
                    let mut inner = lock(&session.inner);
                    inner.lease.answered(n);
                    // The runtime got this link's hello: the exits it carried are told.
                    let told = match inner.link.as_mut().filter(|l| l.number == link) {
                        Some(l) if !l.answered => {
                            l.answered = true;
                            std::mem::take(&mut l.ended_sent)
                        }
                        _ => 0,
                    };
                    let told = told.min(inner.ended.len());
                    inner.ended.drain(..told);
                }
                session.renew_pages();
            }
            RuntimeToAgent::Spawn(request) => {
                // Off the link's loop: a slow spawn must not hold up the pings' answers.
                let session = session.clone();
                tokio::spawn(async move {
                    let (node, incarnation) = (request.node.clone(), request.incarnation);
                    let answer = match self.spawn(&session, *request).await {
                        Ok(answer) => answer,
                        Err((message, failure)) => {
                            tracing::warn!(%node, incarnation, "could not start it: {message}");
                            AgentToRuntime::SpawnFailed {
                                node,
                                incarnation,
                                message,
                                failure,
                            }
                        }
                    };
                    session.send(answer);
                });
            }
            RuntimeToAgent::Signal {
                node,
                incarnation,
                signal,
            } => {
                let inner = lock(&session.inner);
                match (
                    inner
                        .nodes
                        .get(&node)
                        .filter(|h| h.incarnation == incarnation),
                    Signal::from_named_raw(signal),
                ) {
                    (Some(h), Some(sig)) => crate::spawn::signal(&h.pidfd, sig),
                    (None, _) => {
                        tracing::debug!(%node, incarnation, signal, "a signal for an incarnation not here")
                    }
                    (_, None) => {
                        tracing::warn!(%node, signal, "a signal number this host does not know")
                    }
                }
            }
            RuntimeToAgent::Watch {
                node,
                incarnation,
                deadline_ms,
            } => {
                let page = lock(&session.inner)
                    .nodes
                    .get(&node)
                    .filter(|h| h.incarnation == incarnation)
                    .map(|h| h.page.clone());
                if let Some(page) = page {
                    let (s, n) = (Arc::downgrade(session), node.clone());
                    session.watchdog.watch(
                        node,
                        incarnation,
                        page,
                        Duration::from_millis(deadline_ms),
                        Box::new(move |incarnation, silent| {
                            if let Some(s) = s.upgrade() {
                                tracing::warn!(node = %n, incarnation, silent_ms = silent.as_millis() as u64, "no heartbeat within its deadline: hung");
                                s.send(AgentToRuntime::Hung {
                                    node: n.clone(),
                                    incarnation,
                                    silent_ms: silent.as_millis() as u64,
                                });
                            }
                        }),
                    );
                }
            }
            RuntimeToAgent::Unwatch { node, .. } => session.watchdog.unwatch(&node),
            RuntimeToAgent::Hello { .. } => {
                tracing::warn!(session = %format!("{:016x}", session.id), "a second hello; ignored");
            }
            RuntimeToAgent::Goodbye => {}
            RuntimeToAgent::Broker {
                node,
                incarnation,
                message,
                carried,
            } => {
                let socket = lock(&session.inner)
                    .nodes
                    .get(&node)
                    .filter(|h| h.incarnation == incarnation)
                    .and_then(|h| h.broker.clone());
                let Some(socket) = socket else {
                    return;
                };
                let owner = (session.id, node.clone(), incarnation);
                match self.materialize(owner, message, carried) {
                    Ok((message, fds)) => {
                        let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
                        if let Err(e) =
                            syncra_protocol::broker::send(socket.get_ref(), &message, &borrowed)
                        {
                            tracing::warn!(%node, error = %e, "a broker message not delivered to the node");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(%node, error = %e, "a broker message not delivered to the node")
                    }
                }
            }
        }
    }

    /// A stream a node here declared: a ring for it to write, read by a bridge to the runtime.
    fn produce(
        &self,
        owner: &(u64, NodeName, u64),
        carried: Option<Carried>,
        fds: &mut Vec<OwnedFd>,
    ) -> Result<(), String> {
        use syncra_protocol::ring::{RingReader, doorbell};
        let Some(Carried::Produce {
            bridge,
            geometry,
            claimed,
            published,
            attachments,
        }) = carried
        else {
            return Err("a declared stream without its bridge".into());
        };
        let (map, ring) = ring_of(geometry, claimed, published, attachments)?;
        let io = |e: std::io::Error| format!("a doorbell: {e}");
        let (space, bell) = (doorbell().map_err(io)?, doorbell().map_err(io)?);
        let reader = RingReader::attach(
            map,
            0,
            bell.try_clone().map_err(io)?,
            space.try_clone().map_err(io)?,
            false,
        )
        .map_err(|e| e.to_string())?;
        lock(&self.bridges).insert(
            bridge,
            Pending {
                owner: owner.clone(),
                what: Bridge::Send(reader),
                since: Instant::now(),
            },
        );
        fds.extend([ring, space, bell]);
        Ok(())
    }

    /// Make on this host what a Broker message's fds stand for ([`Carried`]): rings, doorbells
    /// and link ends, and the bridges that feed them. The message as the node gets it, with
    /// its fds.
    fn materialize(
        &self,
        owner: (u64, NodeName, u64),
        message: BrokerToNode,
        carried: Vec<Carried>,
    ) -> Result<(BrokerToNode, Vec<OwnedFd>), String> {
        use syncra_protocol::ring::{Bells, MAX_CONSUMERS, RingWriter, doorbell};
        lock(&self.bridges).retain(|_, p| p.since.elapsed() < PENDING_BRIDGE);
        lock(&self.local_links).retain(|_, (_, t)| t.elapsed() < PENDING_BRIDGE);
        let mut fds = Vec::new();
        let mut carried = carried.into_iter();
        let io = |what: &str| {
            let what = what.to_owned();
            move |e: std::io::Error| format!("{what}: {e}")
        };
        let consume = |c: Option<Carried>, cell: u32, fds: &mut Vec<OwnedFd>| {
            let Some(Carried::Consume {
                bridge,
                geometry,
                first,
            }) = c
            else {
                return Err("a stream without its bridge".to_owned());
            };
            let start = first.saturating_sub(1);
            let (map, ring) = ring_of(geometry, start, start, 0)?;
            let (bell, space) = (
                doorbell().map_err(io("a doorbell"))?,
                doorbell().map_err(io("a doorbell"))?,
            );
            let bells: Bells = Default::default();
            {
                let mut b = bells.lock().unwrap_or_else(|p| p.into_inner());
                b.resize_with(MAX_CONSUMERS, || None);
                if let Some(slot) = b.get_mut(cell as usize) {
                    *slot = Some(bell.try_clone().map_err(io("a doorbell"))?);
                }
            }
            let writer =
                RingWriter::mirror(map, space.try_clone().map_err(io("a doorbell"))?, bells);
            lock(&self.bridges).insert(
                bridge,
                Pending {
                    owner: owner.clone(),
                    what: Bridge::Receive(writer, cell as usize),
                    since: Instant::now(),
                },
            );
            fds.extend([ring, bell, space]);
            Ok(())
        };
        let message = match message {
            BrokerToNode::Declared { id, stream, .. } => {
                self.produce(&owner, carried.next(), &mut fds)?;
                stream_message(Some(id), stream)
            }
            BrokerToNode::Granted { stream, .. } => {
                self.produce(&owner, carried.next(), &mut fds)?;
                stream_message(None, stream)
            }
            BrokerToNode::Subscribed { id, streams } => {
                for a in &streams {
                    consume(carried.next(), a.cell, &mut fds)?;
                }
                BrokerToNode::Subscribed { id, streams }
            }
            BrokerToNode::Added { id, stream } => {
                consume(carried.next(), stream.cell, &mut fds)?;
                BrokerToNode::Added { id, stream }
            }
            m @ (BrokerToNode::Linked { .. } | BrokerToNode::LinkFrom { .. }) => {
                let Some(Carried::Link {
                    link,
                    local,
                    bridge,
                }) = carried.next()
                else {
                    return Err("a direct link without its bridge".into());
                };
                if local {
                    // Both ends are nodes of this host: the first gets one end of a pair, the
                    // second the other.
                    let mut waiting = lock(&self.local_links);
                    waiting.retain(|_, (_, t)| t.elapsed() < Duration::from_secs(30));
                    match waiting.remove(&(owner.0, link)) {
                        Some((end, _)) => fds.push(end),
                        None => {
                            let (a, b) = syncra_protocol::direct::pair()
                                .map_err(io("a direct link's socketpair"))?;
                            waiting.insert((owner.0, link), (b, Instant::now()));
                            fds.push(a);
                        }
                    }
                } else {
                    let (a, b) = syncra_protocol::direct::pair()
                        .map_err(io("a direct link's socketpair"))?;
                    lock(&self.bridges).insert(
                        bridge,
                        Pending {
                            owner: owner.clone(),
                            what: Bridge::Link(b),
                            since: Instant::now(),
                        },
                    );
                    fds.push(a);
                }
                m
            }
            other => other,
        };
        self.bridged.notify_waiters();
        Ok((message, fds))
    }

    /// Start a node for `session`.
    async fn spawn(
        self: Arc<Self>,
        session: &Arc<Session>,
        request: SpawnRequest,
    ) -> Result<AgentToRuntime, (String, SpawnFailure)> {
        if session.lease_len.is_zero() {
            return Err((
                "this session asked for no nodes (a check)".into(),
                SpawnFailure::Permanent,
            ));
        }
        let (node, incarnation) = (request.node.clone(), request.incarnation);
        // An incarnation of this name its runtime left in an earlier session (fenced, but not
        // yet gone) goes first, as one of this session would.
        let earlier: Vec<Arc<Session>> = lock(&self.sessions)
            .values()
            .filter(|s| s.owner == session.owner && s.id != session.id)
            .cloned()
            .collect();
        for s in earlier {
            let inner = lock(&s.inner);
            if let Some(old) = inner.nodes.get(&node) {
                crate::spawn::signal(&old.pidfd, Signal::KILL);
                return Err((
                    format!(
                        "{node}#{} (pid {}) of an earlier session still runs here: killed it first; start {node}#{incarnation} again once it is gone",
                        old.incarnation, old.pid
                    ),
                    SpawnFailure::Other,
                ));
            }
        }
        {
            let inner = lock(&session.inner);
            if let Some(old) = inner.nodes.get(&node) {
                // Never two incarnations of one name: the old one goes first.
                crate::spawn::signal(&old.pidfd, Signal::KILL);
                return Err((
                    format!(
                        "{node}#{} (pid {}) still runs here: killed it first; start {node}#{incarnation} again once its exit is reported",
                        old.incarnation, old.pid
                    ),
                    SpawnFailure::Other,
                ));
            }
            if inner.lease.expired(Instant::now()) {
                return Err((
                    "the session's lease ran out (its runtime did not answer the agent's pings); its nodes were fenced".into(),
                    SpawnFailure::Other,
                ));
            }
        }
        let lines: crate::logs::LineSink = {
            let (s, n) = (Arc::downgrade(session), node.clone());
            Arc::new(move |line: &str| {
                if let Some(s) = s.upgrade() {
                    let mut logs = lock(&s.logs);
                    if logs.lines.len() >= LOG_BUFFER_LINES {
                        *logs.dropped.entry((n.clone(), incarnation)).or_default() += 1;
                    } else {
                        logs.lines
                            .push_back((n.clone(), incarnation, line.to_owned()));
                    }
                }
            })
        };
        let env = request.env.clone();
        let launched = launch::launch(
            &self.spawner,
            LaunchSpec {
                name: &node,
                command: &request.command,
                args: &request.args,
                env,
                sandbox: &request.sandbox,
                bin_dirs: &self.bin_dirs,
                node_dir: self
                    .node_dir
                    .join(format!("{}@{:016x}", node.file_stem(), session.id)),
                sandbox_key: format!("{node}@{:016x}", session.id),
                log_dir: &self.log_dir,
                broker: true,
                lines: Some(lines),
                dumps: request.dumps.map(|b| launch::DumpTarget {
                    dir: self.dump_dir.clone(),
                    limits: syncra_dump::Limits {
                        keep: b.keep.clamp(1, 1000) as usize,
                        max_bytes: b.max_bytes,
                    },
                }),
            },
        )
        .await;
        let p = match launched {
            Ok(p) => p,
            Err(e) => {
                let failure = if e.is_permanent() {
                    SpawnFailure::Permanent
                } else if e.is_resource_shortage() {
                    SpawnFailure::Shortage
                } else {
                    SpawnFailure::Other
                };
                return Err((e.to_string(), failure));
            }
        };
        let (pid, sandbox, log) = (p.pid, p.sandbox.clone(), p.log_path.display().to_string());
        // Its broker link: what it asks goes to the runtime's Broker over the session link.
        let broker = p
            .broker_ours
            .map(|fd| {
                rustix::io::ioctl_fionbio(&fd, true)?;
                // SAFETY: the socket is moved into the AsyncFd, which keeps it open and
                // unchanged until it drops it.
                unsafe {
                    tokio::io::unix::AsyncFd::register_with_interest(
                        fd,
                        tokio::io::Interest::READABLE,
                    )
                }
                .map_err(|e| e.into_parts().1)
            })
            .transpose()
            .map_err(|e| {
                (
                    format!("preparing its broker link: {e}"),
                    SpawnFailure::Other,
                )
            })?
            .map(Arc::new);
        let asks = broker.clone().map(|b| {
            tokio::spawn(ask_broker(
                Arc::downgrade(session),
                node.clone(),
                incarnation,
                b,
            ))
            .abort_handle()
        });
        tracing::info!(%node, incarnation, pid, session = %format!("{:016x}", session.id), "spawned");
        {
            let mut inner = lock(&session.inner);
            p.page
                .vitals()
                .renew_lease(monotonic_ns(inner.lease.until()));
            lock(&self.links).insert(request.link, (session.id, node.clone(), incarnation));
            self.trust.admit(request.link);
            inner.nodes.insert(
                node.clone(),
                Hosted {
                    incarnation,
                    pid,
                    pidfd: p.pidfd,
                    page: p.page.clone(),
                    ours: Some(p.ours),
                    link: request.link,
                    relay: None,
                    broker,
                    tasks: asks.into_iter().collect(),
                },
            );
        }
        let (host, session2, page) = (self.clone(), session.clone(), p.page);
        let (process, capture, dumps) = (p.process, p.capture, p.dumps);
        let crash = dumps.is_some();
        tokio::spawn(async move {
            let end = launch::wait_end(process, capture, &page, dumps).await;
            host.ended(&session2, &node, incarnation, pid, end);
        });
        Ok(AgentToRuntime::Spawned {
            node: request.node,
            incarnation,
            pid,
            sandbox,
            log,
            crash,
        })
    }

    /// A node of `session` ended: report it (or keep it for the runtime's return).
    fn ended(
        &self,
        session: &Arc<Session>,
        node: &NodeName,
        incarnation: u64,
        pid: u32,
        end: launch::Ended,
    ) {
        session.watchdog.unwatch(node);
        let (code, signal) = match end.termination {
            Termination::Code(c) => (Some(c), None),
            Termination::Signal(s) => (None, Some(s)),
            _ => (None, None),
        };
        tracing::info!(%node, incarnation, pid, ?code, ?signal, "exited");
        let exit = Exit {
            node: node.clone(),
            incarnation,
            pid,
            code,
            signal,
            unix_ms: crate::logs::unix_ms(end.at),
            stderr_tail: end.stderr_tail,
            panic: end.panic,
            note: end.note,
            dump: end.dump.as_ref().map(syncra_dump::Dumped::info),
        };
        // Its stack is read here, where its binaries are, and follows the exit.
        if let Some(mut dump) = exit.dump.clone()
            && let Some(path) = dump.path.clone()
        {
            let (session, node) = (session.clone(), node.clone());
            tokio::spawn(async move {
                crate::supervisor::analyse_dump(std::path::Path::new(&path), &mut dump).await;
                session.send(AgentToRuntime::Dumped {
                    node,
                    incarnation,
                    dump,
                });
            });
        }
        {
            let mut inner = lock(&session.inner);
            if inner
                .nodes
                .get(node)
                .is_some_and(|h| h.incarnation == incarnation)
                && let Some(h) = inner.nodes.remove(node)
            {
                if let Some(relay) = &h.relay {
                    relay.abort();
                }
                for t in &h.tasks {
                    t.abort();
                }
                lock(&self.links).remove(&h.link);
                self.trust.revoke(&h.link);
                // Bridges announced for it and never connected go with it.
                let owner = (session.id, node.clone(), incarnation);
                lock(&self.bridges).retain(|_, p| p.owner != owner);
            }
        }
        session.send(AgentToRuntime::Exited(Box::new(exit)));
        self.forget_if_done(session);
    }
}

/// Relay what a node asks the Broker to its runtime, until the node closes its end.
async fn ask_broker(
    session: std::sync::Weak<Session>,
    node: NodeName,
    incarnation: u64,
    socket: Arc<tokio::io::unix::AsyncFd<OwnedFd>>,
) {
    use syncra_protocol::broker::{NodeToBroker, RecvError, recv};
    loop {
        let Ok(mut guard) = socket.readable().await else {
            return;
        };
        match recv::<NodeToBroker>(guard.get_inner()) {
            Ok((message, _fds)) => {
                let Some(s) = session.upgrade() else {
                    return;
                };
                s.send(AgentToRuntime::Broker {
                    node: node.clone(),
                    incarnation,
                    message,
                });
            }
            Err(RecvError::WouldBlock) => guard.clear_ready(),
            Err(RecvError::Closed) => return,
            Err(e) => {
                tracing::warn!(%node, error = %e, "a malformed broker request from a node; dropped")
            }
        }
    }
}

/// The Broker's answer to a declaration (`id`), or its grant, as the node gets it here: its
/// ring's only consumer is the agent's bridge, in cell 0.
fn stream_message(id: Option<u64>, stream: syncra_protocol::broker::StreamInfo) -> BrokerToNode {
    match id {
        Some(id) => BrokerToNode::Declared {
            id,
            stream,
            bells: vec![0],
        },
        None => BrokerToNode::Granted {
            stream,
            bells: vec![0],
        },
    }
}

/// A ring for a bridge on this host, its counters where the runtime's stand.
fn ring_of(
    geometry: syncra_protocol::ring::Geometry,
    claimed: u64,
    published: u64,
    attachments: u64,
) -> Result<(Arc<syncra_protocol::ring::RingMap>, OwnedFd), String> {
    use std::sync::atomic::Ordering;
    let (map, fd) = syncra_protocol::ring::RingMap::create("syncra-bridged-ring", geometry)
        .map_err(|e| e.to_string())?;
    let h = map.header();
    h.claimed.store(claimed, Ordering::Release);
    h.published.store(published, Ordering::Release);
    h.attachments.store(attachments, Ordering::Release);
    Ok((Arc::new(map), fd))
}

/// How a session link ended.
enum Closed {
    /// The runtime said goodbye.
    Goodbye,
    /// The runtime's end closed (it exited, or was killed).
    Eof,
    /// The connection broke (reset, timed out): the runtime may come back.
    Broken(String),
}

/// Whether link `number` still serves `session`.
fn serving(session: &Session, number: u64) -> bool {
    lock(&session.inner)
        .link
        .as_ref()
        .is_some_and(|l| l.number == number)
}

/// Ping the runtime a fifth of a lease apart; its answers renew the lease.
async fn pinger(session: Arc<Session>, number: u64) {
    let mut ticker = tokio::time::interval(ping_interval(session.lease_len));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while serving(&session, number) {
        ticker.tick().await;
        let n = lock(&session.inner).lease.ping(Instant::now());
        session.send(AgentToRuntime::Ping { n });
    }
}

/// Send the pages of the session's nodes.
async fn vitals(session: Arc<Session>, number: u64) {
    let mut ticker = tokio::time::interval(VITALS_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while serving(&session, number) {
        ticker.tick().await;
        let all: Vec<Vitals> = lock(&session.inner)
            .nodes
            .iter()
            .map(|(n, h)| Vitals {
                node: n.clone(),
                incarnation: h.incarnation,
                metrics: h.page.vitals().metrics(),
                figures: h.page.figures(),
                note: h.page.status_note().read(),
            })
            .collect();
        if !all.is_empty() {
            session.send_bulk(AgentToRuntime::Vitals(all));
        }
    }
}

/// Send buffered log lines, a frame per node.
async fn pump_logs(session: Arc<Session>, number: u64) {
    let mut ticker = tokio::time::interval(LOGS_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while serving(&session, number) {
        ticker.tick().await;
        let (lines, dropped) = {
            let mut logs = lock(&session.logs);
            (
                std::mem::take(&mut logs.lines),
                std::mem::take(&mut logs.dropped),
            )
        };
        // A frame per node, at most LOG_LINES_PER_FRAME lines each (16 KiB a line at most:
        // far below a frame's limit). What the link has no room for is counted as dropped
        // and said in the copy; the agent's own log file has every line.
        let mut frames: Vec<((NodeName, u64), Vec<String>)> = Vec::new();
        for (node, incarnation, line) in lines {
            match frames.last_mut() {
                Some((k, v))
                    if k.0 == node && k.1 == incarnation && v.len() < LOG_LINES_PER_FRAME =>
                {
                    v.push(line)
                }
                _ => frames.push(((node, incarnation), vec![line])),
            }
        }
        let mut dropped = dropped;
        for ((node, incarnation), lines) in frames {
            let key = (node.clone(), incarnation);
            let d = dropped.remove(&key).unwrap_or(0);
            let n = lines.len() as u64;
            let sent = session.send_bulk(AgentToRuntime::Log {
                node,
                incarnation,
                lines,
                dropped: d,
            });
            if !sent {
                *lock(&session.logs).dropped.entry(key).or_default() += n + d;
            }
        }
        for ((node, incarnation), d) in dropped {
            let key = (node.clone(), incarnation);
            let sent = session.send_bulk(AgentToRuntime::Log {
                node,
                incarnation,
                lines: Vec::new(),
                dropped: d,
            });
            if !sent {
                *lock(&session.logs).dropped.entry(key).or_default() += d;
            }
        }
    }
}
