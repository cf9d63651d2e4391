//! The Broker: creates every stream's ring and doorbells, and hands their fds to producers
//! and consumers over each child's broker socket (fd 5, SCM_RIGHTS).
//!
//! The Broker owns the fds for the life of the runtime. A producer that restarts declares its
//! stream again and gets the same ring back (its sequence continues); consumers never rebind.
//! Consumer cells belong to the consuming node's *name*: a consumer that restarts subscribes
//! again and gets its old cell, cursor included. When an incarnation's socket closes (the
//! process ended), its cells are released at once, so a dead consumer never holds a `block`
//! producer back.
//!
//! **Invariants:** one connection per live incarnation; a stream name lies under its
//! producer's node name; limits (`[streams]`) are checked before any memory is created; every
//! request gets exactly one answer, and a malformed one is logged and answered where possible,
//! never fatal to the runtime.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use syncra_config::StreamLimits;
use syncra_protocol::NodeName;
use syncra_protocol::broker::{
    self, Attachment, BrokerToNode, NodeToBroker, RecvError, RefusalKind, StreamInfo, StreamSpec,
};
use syncra_protocol::control::{ConsumerView, StreamView};
use syncra_protocol::ring::{self, RingMap};
use tokio::io::unix::AsyncFd;

/// One consumer cell's owner.
#[derive(Debug)]
struct Cell {
    node: NodeName,
    /// The owner's n-th subscription to this stream (a node may hold several).
    nth: u32,
    bell: OwnedFd,
}

#[derive(Debug)]
struct Stream {
    info: StreamInfo,
    map: Arc<RingMap>,
    memfd: OwnedFd,
    space_bell: OwnedFd,
    cells: Vec<Cell>,
    /// (when, published) at the last rate sample.
    sample: (Instant, u64),
    rate_hz: f64,
    /// The producing incarnation that holds it now, if live.
    held_by: Option<u64>,
    /// `held_by` was granted at attach and not declared yet.
    granted: bool,
}

/// A live incarnation's link.
#[derive(Debug)]
struct Conn {
    incarnation: u64,
    socket: Arc<OwnedFd>,
    /// How many times it subscribed to each stream (to find its n-th cell).
    subscriptions: HashMap<String, u32>,
}

/// A subscription still listening for streams declared later (patterns), or waiting for its
/// first (exact name, with a wait).
#[derive(Debug)]
struct Listener {
    node: NodeName,
    incarnation: u64,
    id: u64,
    pattern: String,
    type_tag: String,
    /// Exact-name waits answer once with `Subscribed`; patterns push `Added` for ever.
    exact: bool,
    /// An exact name subscribed lazily: answered already (with no stream), it is pushed as
    /// `Added` (or `Refused`, for another type) when declared.
    lazy: bool,
    deadline: Option<Instant>,
}

#[derive(Debug, Default)]
struct State {
    streams: BTreeMap<String, Stream>,
    conns: HashMap<NodeName, Conn>,
    listeners: Vec<Listener>,
    ring_bytes: u64,
}

/// The Broker.
#[derive(Debug)]
pub(crate) struct Broker {
    state: Mutex<State>,
    limits: StreamLimits,
}

/// Fds to send with a message (borrowed from the Broker's own, duplicated by the kernel).
type Outgoing = (BrokerToNode, Vec<OwnedFd>);

fn dup(fd: &OwnedFd) -> Option<OwnedFd> {
    fd.try_clone().ok()
}

fn refused(id: u64, kind: RefusalKind, message: String) -> Outgoing {
    (BrokerToNode::Refused { id, kind, message }, Vec::new())
}

impl Broker {
    pub(crate) fn new(limits: StreamLimits) -> Arc<Broker> {
        Arc::new(Broker {
            state: Mutex::new(State::default()),
            limits,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Serve `socket`, the runtime's end of an incarnation's broker socketpair, until the
    /// child closes it (exits). Spawns a task.
    pub(crate) fn attach(self: &Arc<Self>, node: NodeName, incarnation: u64, socket: OwnedFd) {
        if let Err(e) = rustix::io::ioctl_fionbio(&socket, true) {
            tracing::error!(node = %node, error = %e, "could not prepare the broker socket");
            return;
        }
        let socket = Arc::new(socket);
        {
            let mut st = self.lock();
            // What this node produced before is held for the new incarnation at once: its
            // declaration then needs no round trip.
            for s in st.streams.values_mut() {
                if s.info.producer != node || s.held_by.is_some() {
                    continue;
                }
                s.held_by = Some(incarnation);
                s.granted = true;
                let (stream, bells, fds) = writer_parts(s);
                if let Err(e) = send(&socket, &(BrokerToNode::Granted { stream, bells }, fds)) {
                    tracing::warn!(node = %node, error = %e, "could not grant a stream");
                    s.held_by = None;
                    s.granted = false;
                }
            }
            st.conns.insert(
                node.clone(),
                Conn {
                    incarnation,
                    socket: socket.clone(),
                    subscriptions: HashMap::new(),
                },
            );
        }
        let me = self.clone();
        tokio::spawn(async move {
            me.serve(node, incarnation, socket).await;
        });
    }

    async fn serve(self: Arc<Self>, node: NodeName, incarnation: u64, socket: Arc<OwnedFd>) {
        let fd = match socket.as_fd().try_clone_to_owned() {
            Ok(fd) => fd,
            Err(e) => {
                tracing::error!(node = %node, error = %e, "broker socket");
                self.closed(&node, incarnation);
                return;
            }
        };
        // SAFETY: `fd` is an OwnedFd moved into the AsyncFd: it stays open and refers to the
        // same socket until the AsyncFd drops it.
        let afd =
            match unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) } {
                Ok(a) => a,
                Err(e) => {
                    tracing::error!(node = %node, error = %e, "broker socket");
                    self.closed(&node, incarnation);
                    return;
                }
            };
        loop {
            let mut guard = match afd.readable().await {
                Ok(g) => g,
                Err(_) => break,
            };
            match broker::recv::<NodeToBroker>(afd.get_ref()) {
                Ok((req, fds)) => {
                    if !fds.is_empty() {
                        tracing::warn!(node = %node, fds = fds.len(), "a node sent fds to the broker; closed them");
                    }
                    let Some(reply) = self.handle(&node, incarnation, req) else {
                        continue;
                    };
                    if let Err(e) = send(&socket, &reply) {
                        tracing::warn!(node = %node, error = %e, "could not answer on the broker link");
                    }
                }
                Err(RecvError::WouldBlock) => guard.clear_ready(),
                Err(RecvError::Closed) => break,
                Err(RecvError::Decode(e)) => {
                    tracing::warn!(node = %node, incarnation, error = %e, "dropped a malformed broker request");
                }
                Err(RecvError::Io(e)) => {
                    tracing::warn!(node = %node, incarnation, error = %e, "broker link failed");
                    break;
                }
            }
        }
        self.closed(&node, incarnation);
    }

    /// An incarnation's link closed: release what it held.
    fn closed(&self, node: &NodeName, incarnation: u64) {
        let mut st = self.lock();
        if st
            .conns
            .get(node)
            .is_some_and(|c| c.incarnation == incarnation)
        {
            st.conns.remove(node);
        }
        st.listeners
            .retain(|l| !(l.node == *node && l.incarnation == incarnation));
        for s in st.streams.values_mut() {
            if s.info.producer == *node && s.held_by == Some(incarnation) {
                s.held_by = None;
                s.granted = false;
                s.map.header().producer_live.store(0, Ordering::Release);
            }
            let mut freed = false;
            for (i, c) in s.cells.iter().enumerate() {
                if c.node == *node {
                    let cell = s.map.consumer(i);
                    cell.waiting.store(0, Ordering::Relaxed);
                    cell.active.store(0, Ordering::Release);
                    freed = true;
                }
            }
            if freed {
                ring::ring(s.space_bell.as_fd());
            }
        }
        tracing::debug!(node = %node, incarnation, "broker link closed");
    }

    /// Answer a request; `None` when the answer comes later (a subscriber waiting for its
    /// stream).
    fn handle(&self, node: &NodeName, incarnation: u64, req: NodeToBroker) -> Option<Outgoing> {
        match req {
            NodeToBroker::Declare { id, spec } => Some(self.declare(node, incarnation, id, spec)),
            NodeToBroker::Subscribe {
                id,
                pattern,
                type_tag,
                wait_ms,
                lazy,
            } => self.subscribe(node, incarnation, id, pattern, type_tag, wait_ms, lazy),
            NodeToBroker::Unsubscribe { id } => {
                self.lock()
                    .listeners
                    .retain(|l| !(l.node == *node && l.incarnation == incarnation && l.id == id));
                None
            }
        }
    }

    fn declare(&self, node: &NodeName, incarnation: u64, id: u64, spec: StreamSpec) -> Outgoing {
        let prefix = format!("{node}/");
        let rest = spec.name.strip_prefix(&prefix).unwrap_or("");
        if rest.is_empty()
            || rest
                .split('/')
                .any(|s| s.is_empty() || s == "*" || s == "**")
        {
            return refused(
                id,
                RefusalKind::Invalid,
                format!(
                    "stream name `{}`: a stream of {node} must be named `{node}/<name>` (segments not empty, no wildcards)",
                    spec.name
                ),
            );
        }
        if let Err(e) = spec.geometry.check() {
            return refused(
                id,
                RefusalKind::Invalid,
                format!("stream `{}`: {e}", spec.name),
            );
        }
        let mut st = self.lock();
        let st = &mut *st;
        if let Some(s) = st.streams.get_mut(&spec.name) {
            let granted = std::mem::take(&mut s.granted);
            if s.held_by == Some(incarnation) && !granted {
                return refused(
                    id,
                    RefusalKind::Conflict,
                    format!("stream `{}` is already declared by this process", spec.name),
                );
            }
            if s.info.spec != spec {
                if granted {
                    s.held_by = None;
                }
                return refused(
                    id,
                    RefusalKind::Conflict,
                    format!(
                        "stream `{}` was declared as {} with {:?}; a restarted producer must declare the same type and shape, got {} with {:?}",
                        spec.name,
                        s.info.spec.type_tag,
                        s.info.spec.geometry,
                        spec.type_tag,
                        spec.geometry
                    ),
                );
            }
            s.held_by = Some(incarnation);
            return declared(id, s);
        }
        if st.streams.len() >= self.limits.max_streams {
            return refused(
                id,
                RefusalKind::Limit,
                format!(
                    "stream `{}`: the runtime already has {} streams, the limit (streams.max_streams)",
                    spec.name,
                    st.streams.len()
                ),
            );
        }
        let bytes = spec.geometry.file_size() as u64;
        if st.ring_bytes + bytes > self.limits.max_ring_bytes {
            return refused(
                id,
                RefusalKind::Limit,
                format!(
                    "stream `{}` needs {} MiB of ring memory; {} MiB of {} MiB (streams.max_ring_mb) are in use",
                    spec.name,
                    bytes.div_ceil(1 << 20),
                    st.ring_bytes >> 20,
                    self.limits.max_ring_bytes >> 20
                ),
            );
        }
        let created = RingMap::create(&format!("syncra-stream:{}", spec.name), spec.geometry)
            .and_then(|(map, fd)| {
                let bell = ring::doorbell().map_err(|e| ring::RingError::Io {
                    what: "eventfd",
                    source: e,
                })?;
                Ok((map, fd, bell))
            });
        let (map, memfd, space_bell) = match created {
            Ok(c) => c,
            Err(e) => {
                return refused(
                    id,
                    RefusalKind::Internal,
                    format!("stream `{}`: {e}", spec.name),
                );
            }
        };
        st.ring_bytes += bytes;
        let name = spec.name.clone();
        let stream = Stream {
            info: StreamInfo {
                spec,
                producer: node.clone(),
            },
            map: Arc::new(map),
            memfd,
            space_bell,
            cells: Vec::new(),
            sample: (Instant::now(), 0),
            rate_hz: 0.0,
            held_by: Some(incarnation),
            granted: false,
        };
        st.streams.insert(name.clone(), stream);
        tracing::info!(stream = %name, producer = %node, bytes, "stream declared");
        // Subscribers waiting for it, or listening with a matching pattern, get it now; their
        // cells exist before the producer's answer, so it gets their doorbells.
        let mut pushes = Vec::new();
        let now = Instant::now();
        let mut i = 0;
        while i < st.listeners.len() {
            let l = &st.listeners[i];
            if !broker::matches(&l.pattern, &name) {
                i += 1;
                continue;
            }
            let stream = st.streams.get_mut(&name).expect("inserted above");
            if l.type_tag != stream.info.spec.type_tag {
                let msg = format!(
                    "stream `{name}` carries {}, the subscriber expects {}",
                    stream.info.spec.type_tag, l.type_tag
                );
                tracing::warn!(subscriber = %l.node, "{msg}");
                if l.exact || l.lazy {
                    let l = st.listeners.remove(i);
                    pushes.push((l.node, refused(l.id, RefusalKind::TypeMismatch, msg)));
                } else {
                    i += 1;
                }
                continue;
            }
            if l.deadline.is_some_and(|d| d < now) {
                i += 1;
                continue;
            }
            let conn = st.conns.get_mut(&l.node);
            let attached =
                conn.and_then(|c| attach_cell(stream, &l.node, c, self.limits.max_consumers).ok());
            if let Some((att, fds)) = attached {
                let msg = if l.exact && !l.lazy {
                    BrokerToNode::Subscribed {
                        id: l.id,
                        streams: vec![att],
                    }
                } else {
                    BrokerToNode::Added {
                        id: l.id,
                        stream: att,
                    }
                };
                pushes.push((l.node.clone(), (msg, fds)));
            }
            if l.exact {
                st.listeners.remove(i);
            } else {
                i += 1;
            }
        }
        for (to, out) in pushes {
            if let Some(c) = st.conns.get(&to)
                && let Err(e) = send(&c.socket, &out)
            {
                tracing::warn!(node = %to, error = %e, "could not push a stream to a subscriber");
            }
        }
        declared(id, st.streams.get(&name).expect("inserted above"))
    }

    #[allow(
        clippy::too_many_arguments,
        reason = "the fields of one Subscribe request"
    )]
    fn subscribe(
        &self,
        node: &NodeName,
        incarnation: u64,
        id: u64,
        pattern: String,
        type_tag: String,
        wait_ms: Option<u64>,
        lazy: bool,
    ) -> Option<Outgoing> {
        let mut st = self.lock();
        let st = &mut *st;
        let exact = !broker::is_pattern(&pattern);
        let names: Vec<String> = st
            .streams
            .keys()
            .filter(|n| broker::matches(&pattern, n))
            .cloned()
            .collect();
        let mut attachments = Vec::new();
        let mut fds = Vec::new();
        let mut notify_producers = Vec::new();
        for name in &names {
            let s = st.streams.get_mut(name).expect("listed above");
            if s.info.spec.type_tag != type_tag {
                if exact {
                    return Some(refused(
                        id,
                        RefusalKind::TypeMismatch,
                        format!(
                            "stream `{name}` carries {}, the subscriber expects {type_tag}",
                            s.info.spec.type_tag
                        ),
                    ));
                }
                continue;
            }
            let Some(conn) = st.conns.get_mut(node) else {
                return Some(refused(id, RefusalKind::Internal, "no live link".into()));
            };
            match attach_cell(s, node, conn, self.limits.max_consumers) {
                Ok((att, f)) => {
                    notify_producers.push((s.info.producer.clone(), name.clone(), att.cell));
                    attachments.push(att);
                    fds.extend(f);
                }
                Err(msg) => return Some(refused(id, RefusalKind::Limit, msg)),
            }
        }
        // The producers ring the new consumers' doorbells.
        for (producer, name, cell) in notify_producers {
            let s = &st.streams[&name];
            if let (Some(c), Some(bell)) = (
                st.conns.get(&producer),
                s.cells.get(cell as usize).and_then(|c| dup(&c.bell)),
            ) && s.held_by == Some(c.incarnation)
            {
                let msg = BrokerToNode::ConsumerJoined {
                    stream: name.clone(),
                    cell,
                };
                if let Err(e) = send(&c.socket, &(msg, vec![bell])) {
                    tracing::warn!(producer = %producer, error = %e, "could not tell a producer about a consumer");
                }
            }
        }
        let lazy = lazy && exact && attachments.is_empty();
        if !exact || (attachments.is_empty() && (wait_ms.is_some() || lazy)) {
            st.listeners.push(Listener {
                node: node.clone(),
                incarnation,
                id,
                pattern: pattern.clone(),
                type_tag,
                exact,
                lazy,
                deadline: wait_ms
                    .filter(|_| !lazy)
                    .map(|ms| Instant::now() + syncra_protocol::node::bounded_wait(ms)),
            });
        }
        if attachments.is_empty() && !lazy {
            if exact && wait_ms.is_some() {
                // Answered when the stream is declared, or refused when the wait ends.
                return None;
            }
            if exact {
                let known: Vec<&String> = st.streams.keys().collect();
                return Some(refused(
                    id,
                    RefusalKind::NotDeclared,
                    format!(
                        "no stream `{pattern}` is declared (declared: {})",
                        if known.is_empty() {
                            "none".to_owned()
                        } else {
                            known
                                .iter()
                                .map(|s| s.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        }
                    ),
                ));
            }
        }
        Some((
            BrokerToNode::Subscribed {
                id,
                streams: attachments,
            },
            fds,
        ))
    }

    /// Every stream, for `syncra streams`.
    pub(crate) fn views(&self) -> Vec<StreamView> {
        let st = self.lock();
        st.streams.values().map(view).collect()
    }

    /// One stream's view and a duplicate of its ring fd, for `syncra tap`.
    pub(crate) fn tap(&self, name: &str) -> Option<(StreamView, OwnedFd)> {
        let st = self.lock();
        let s = st.streams.get(name)?;
        Some((view(s), dup(&s.memfd)?))
    }

    /// (produces, consumes) per node, for `syncra status`.
    pub(crate) fn node_streams(&self) -> HashMap<NodeName, (Vec<String>, Vec<String>)> {
        let st = self.lock();
        let mut out: HashMap<NodeName, (Vec<String>, Vec<String>)> = HashMap::new();
        for (name, s) in &st.streams {
            out.entry(s.info.producer.clone())
                .or_default()
                .0
                .push(name.clone());
            for c in &s.cells {
                let e = &mut out.entry(c.node.clone()).or_default().1;
                if !e.contains(name) {
                    e.push(name.clone());
                }
            }
        }
        out
    }

    /// Update every stream's rate; expire subscribers' waits. Call it periodically.
    pub(crate) fn tick(&self) {
        let now = Instant::now();
        let mut st = self.lock();
        for s in st.streams.values_mut() {
            let published = s.map.header().published.load(Ordering::Acquire);
            let dt = now.duration_since(s.sample.0).as_secs_f64();
            if dt > 0.0 {
                s.rate_hz = published.saturating_sub(s.sample.1) as f64 / dt;
            }
            s.sample = (now, published);
        }
        let mut expired = Vec::new();
        st.listeners.retain(|l| {
            if l.exact && l.deadline.is_some_and(|d| d <= now) {
                expired.push((l.node.clone(), l.id, l.pattern.clone()));
                false
            } else {
                true
            }
        });
        for (node, id, pattern) in expired {
            if let Some(c) = st.conns.get(&node) {
                let out = refused(
                    id,
                    RefusalKind::NotDeclared,
                    format!("no producer declared stream `{pattern}` within the subscriber's wait"),
                );
                let _ = send(&c.socket, &out);
            }
        }
    }
}

/// Give `node` its next cell of `s` (its old one after a restart), and the three fds.
fn attach_cell(
    s: &mut Stream,
    node: &NodeName,
    conn: &mut Conn,
    max_consumers: usize,
) -> Result<(Attachment, Vec<OwnedFd>), String> {
    let name = s.info.spec.name.clone();
    let nth = {
        let n = conn.subscriptions.entry(name.clone()).or_insert(0);
        *n += 1;
        *n
    };
    let (cell, resume) = match s.cells.iter().position(|c| c.node == *node && c.nth == nth) {
        Some(i) => (i, true),
        None => {
            if s.cells.len() >= max_consumers.min(ring::MAX_CONSUMERS) {
                conn.subscriptions
                    .entry(name.clone())
                    .and_modify(|n| *n -= 1);
                return Err(format!(
                    "stream `{name}` already has {} consumers, the limit (streams.max_consumers)",
                    s.cells.len()
                ));
            }
            let bell = ring::doorbell().map_err(|e| format!("eventfd: {e}"))?;
            s.cells.push(Cell {
                node: node.clone(),
                nth,
                bell,
            });
            (s.cells.len() - 1, false)
        }
    };
    let fds = [dup(&s.memfd), dup(&s.cells[cell].bell), dup(&s.space_bell)];
    if fds.iter().any(Option::is_none) {
        return Err("duplicating the stream's fds failed (out of fds?)".into());
    }
    Ok((
        Attachment {
            stream: s.info.clone(),
            cell: cell as u32,
            resume,
        },
        fds.into_iter().flatten().collect(),
    ))
}

fn declared(id: u64, s: &Stream) -> Outgoing {
    let (stream, bells, fds) = writer_parts(s);
    (BrokerToNode::Declared { id, stream, bells }, fds)
}

/// What a producer needs to write `s`: its info, the consumer cells whose doorbells follow,
/// and the fds (ring, space doorbell, then those doorbells).
fn writer_parts(s: &Stream) -> (StreamInfo, Vec<u32>, Vec<OwnedFd>) {
    let mut fds: Vec<OwnedFd> = [dup(&s.memfd), dup(&s.space_bell)]
        .into_iter()
        .flatten()
        .collect();
    let mut bells = Vec::new();
    for (i, c) in s.cells.iter().enumerate() {
        if let Some(fd) = dup(&c.bell) {
            fds.push(fd);
            bells.push(i as u32);
        }
    }
    (s.info.clone(), bells, fds)
}

fn view(s: &Stream) -> StreamView {
    let h = s.map.header();
    let published = h.published.load(Ordering::Acquire);
    StreamView {
        name: s.info.spec.name.clone(),
        type_tag: s.info.spec.type_tag.clone(),
        producer: s.info.producer.clone(),
        producer_live: h.producer_live.load(Ordering::Relaxed) != 0 && s.held_by.is_some(),
        producer_incarnation: h.producer_incarnation.load(Ordering::Relaxed),
        geometry: s.info.spec.geometry,
        ring_bytes: s.info.spec.geometry.file_size() as u64,
        published,
        rate_hz: s.rate_hz,
        attachments: h.attachments.load(Ordering::Relaxed),
        blocked: h.blocked.load(Ordering::Relaxed),
        timeouts: h.timeouts.load(Ordering::Relaxed),
        consumers: s
            .cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let cell = s.map.consumer(i);
                let next = cell.next.load(Ordering::Relaxed);
                ConsumerView {
                    node: c.node.clone(),
                    cell: i as u32,
                    active: cell.active.load(Ordering::Relaxed) != 0,
                    lag: (published + 1).saturating_sub(next.max(1)),
                    received: cell.received.load(Ordering::Relaxed),
                    dropped: cell.dropped.load(Ordering::Relaxed),
                    torn: cell.torn.load(Ordering::Relaxed),
                }
            })
            .collect(),
    }
}

fn send(socket: &OwnedFd, (msg, fds): &Outgoing) -> std::io::Result<()> {
    let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
    broker::send(socket, msg, &borrowed)
}
