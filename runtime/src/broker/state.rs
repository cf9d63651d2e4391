//! The Broker's state and rules, without sockets: each request goes in, the messages it
//! causes come out ([`Out`], addressed to a node's incarnation), and the shell
//! ([`super::Broker`]) delivers them. It still creates the rings and doorbells (memfds and
//! eventfds) and marks cells in them, which is what a stream *is*; what it never does is talk
//! to a node, so every rule here is unit-tested by feeding it requests.
//!
//! **Invariants:** a stream name lies under its producer's node name; limits are checked
//! before any memory is created; a node's consumer cells are its name's (a restarted
//! consumer gets its old cell back, cursor included); every request is answered exactly once,
//! at once or — an exact subscription that waits — when the stream is declared or the wait
//! ends.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use syncra_config::StreamLimits;
use syncra_protocol::NodeName;
use syncra_protocol::broker::{
    self, Attachment, BrokerToNode, NodeToBroker, RefusalKind, StreamInfo, StreamSpec,
};
use syncra_protocol::control::{ConsumerView, StreamView};
use syncra_protocol::ring::{self, RingMap};

/// A message for one incarnation of a node, with the fds that go with it.
#[derive(Debug)]
pub(crate) struct Out {
    /// The node.
    pub to: NodeName,
    /// Its incarnation: a message for one that has gone is dropped, never given to the next.
    pub incarnation: u64,
    /// The message.
    pub msg: BrokerToNode,
    /// Duplicates of the Broker's fds (the kernel duplicates them again on sending).
    pub fds: Vec<OwnedFd>,
}

/// One consumer cell's owner.
#[derive(Debug)]
struct Cell {
    node: NodeName,
    /// The owner's n-th subscription to this stream (a node may hold several).
    nth: u32,
    /// The owner's incarnation that holds it now, if live.
    held_by: Option<u64>,
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
    /// `held_by` was granted at connect and not declared yet.
    granted: bool,
}

/// A live incarnation.
#[derive(Debug)]
struct Conn {
    incarnation: u64,
    /// How many times it subscribed to each stream (to find its n-th cell).
    subscriptions: HashMap<String, u32>,
}

/// A subscription still listening for streams declared later (patterns, lazy names), or
/// waiting for its first (exact name, with a wait).
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

/// The Broker's state.
#[derive(Debug)]
pub(crate) struct Core {
    streams: BTreeMap<String, Stream>,
    conns: HashMap<NodeName, Conn>,
    listeners: Vec<Listener>,
    ring_bytes: u64,
    limits: StreamLimits,
}

fn dup(fd: &OwnedFd) -> Option<OwnedFd> {
    fd.try_clone().ok()
}

impl Core {
    pub(crate) fn new(limits: StreamLimits) -> Core {
        Core {
            streams: BTreeMap::new(),
            conns: HashMap::new(),
            listeners: Vec::new(),
            ring_bytes: 0,
            limits,
        }
    }

    /// An incarnation's link opened. What its node produced before is held for it at once
    /// (`Granted`): its declaration then needs no round trip.
    pub(crate) fn connect(&mut self, node: &NodeName, incarnation: u64) -> Vec<Out> {
        let mut out = Vec::new();
        for s in self.streams.values_mut() {
            if s.info.producer != *node || s.held_by.is_some() {
                continue;
            }
            s.held_by = Some(incarnation);
            s.granted = true;
            let (stream, bells, fds) = writer_parts(s);
            out.push(Out {
                to: node.clone(),
                incarnation,
                msg: BrokerToNode::Granted { stream, bells },
                fds,
            });
        }
        self.conns.insert(
            node.clone(),
            Conn {
                incarnation,
                subscriptions: HashMap::new(),
            },
        );
        out
    }

    /// An incarnation's link closed (the process ended): release what it held, at once, so a
    /// dead consumer never holds a `block` producer back.
    pub(crate) fn disconnect(&mut self, node: &NodeName, incarnation: u64) {
        if self
            .conns
            .get(node)
            .is_some_and(|c| c.incarnation == incarnation)
        {
            self.conns.remove(node);
        }
        self.listeners
            .retain(|l| !(l.node == *node && l.incarnation == incarnation));
        for s in self.streams.values_mut() {
            if s.info.producer == *node && s.held_by == Some(incarnation) {
                s.held_by = None;
                s.granted = false;
                s.map.header().producer_live.store(0, Ordering::Release);
            }
            let mut freed = false;
            for (i, c) in s.cells.iter_mut().enumerate() {
                // Only its own: a successor that resumed the cell already keeps it (the
                // close of the old link may be seen after the new one subscribed).
                if c.node == *node && c.held_by == Some(incarnation) {
                    c.held_by = None;
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
    }

    /// A request from `node`'s `incarnation`: its answer (unless it waits) and whatever it
    /// causes for other nodes.
    pub(crate) fn handle(
        &mut self,
        node: &NodeName,
        incarnation: u64,
        req: NodeToBroker,
    ) -> Vec<Out> {
        let mut out = Vec::new();
        let reply = match req {
            NodeToBroker::Declare { id, spec } => {
                Some(self.declare(node, incarnation, id, spec, &mut out))
            }
            NodeToBroker::Subscribe {
                id,
                pattern,
                type_tag,
                wait_ms,
                lazy,
            } => {
                let sub = Subscription {
                    id,
                    pattern,
                    type_tag,
                    wait_ms,
                    lazy,
                };
                self.subscribe(node, incarnation, sub, &mut out)
            }
            NodeToBroker::Unsubscribe { id } => {
                self.listeners
                    .retain(|l| !(l.node == *node && l.incarnation == incarnation && l.id == id));
                None
            }
            // Links are the shell's (they need the live incarnations), never the core's.
            NodeToBroker::Link { .. } => None,
        };
        if let Some((msg, fds)) = reply {
            // The answer goes first: what it caused for others never overtakes it.
            out.insert(
                0,
                Out {
                    to: node.clone(),
                    incarnation,
                    msg,
                    fds,
                },
            );
        }
        out
    }

    fn declare(
        &mut self,
        node: &NodeName,
        incarnation: u64,
        id: u64,
        spec: StreamSpec,
        out: &mut Vec<Out>,
    ) -> (BrokerToNode, Vec<OwnedFd>) {
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
        // A private stream (a world's durable state) may take another shape when its
        // producer's config changed: its ring is replaced, and what it held with it.
        let reshaped = self.streams.get(&spec.name).is_some_and(|s| {
            s.info.spec != spec
                && s.info.spec.private
                && spec.private
                && s.cells.is_empty()
                && s.info.spec.type_tag == spec.type_tag
                && s.info.producer == *node
                && s.held_by.is_none_or(|h| h == incarnation && s.granted)
        });
        if reshaped && let Some(old) = self.streams.remove(&spec.name) {
            self.ring_bytes = self
                .ring_bytes
                .saturating_sub(old.info.spec.geometry.file_size() as u64);
            tracing::info!(stream = %spec.name, old = ?old.info.spec.geometry, new = ?spec.geometry, "a stream no one reads was declared with another shape: its ring is replaced");
        }
        if let Some(s) = self.streams.get_mut(&spec.name) {
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
        if self.streams.len() >= self.limits.max_streams {
            return refused(
                id,
                RefusalKind::Limit,
                format!(
                    "stream `{}`: the runtime already has {} streams, the limit (streams.max_streams)",
                    spec.name,
                    self.streams.len()
                ),
            );
        }
        let bytes = spec.geometry.file_size() as u64;
        if self.ring_bytes + bytes > self.limits.max_ring_bytes {
            return refused(
                id,
                RefusalKind::Limit,
                format!(
                    "stream `{}` needs {} MiB of ring memory; {} MiB of {} MiB (streams.max_ring_mb) are in use",
                    spec.name,
                    bytes.div_ceil(1 << 20),
                    self.ring_bytes >> 20,
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
        self.ring_bytes += bytes;
        let name = spec.name.clone();
        let mut stream = Stream {
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
        tracing::info!(stream = %name, producer = %node, bytes, "stream declared");
        // Subscribers waiting for it, or listening with a matching pattern, get it now; their
        // cells exist before the producer's answer, so it gets their doorbells.
        let now = Instant::now();
        let max_consumers = self.limits.max_consumers;
        let conns = &mut self.conns;
        let private = stream.info.spec.private;
        self.listeners.retain(|l| {
            if private || !broker::matches(&l.pattern, &name) {
                return true;
            }
            if l.type_tag != stream.info.spec.type_tag {
                let msg = format!(
                    "stream `{name}` carries {}, the subscriber expects {}",
                    stream.info.spec.type_tag, l.type_tag
                );
                tracing::warn!(subscriber = %l.node, "{msg}");
                if l.exact || l.lazy {
                    let (msg, fds) = refused(l.id, RefusalKind::TypeMismatch, msg);
                    out.push(Out {
                        to: l.node.clone(),
                        incarnation: l.incarnation,
                        msg,
                        fds,
                    });
                    return false;
                }
                return true;
            }
            if l.deadline.is_some_and(|d| d < now) {
                return true;
            }
            let attached = conns
                .get_mut(&l.node)
                .filter(|c| c.incarnation == l.incarnation)
                .and_then(|c| attach_cell(&mut stream, &l.node, c, max_consumers).ok());
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
                out.push(Out {
                    to: l.node.clone(),
                    incarnation: l.incarnation,
                    msg,
                    fds,
                });
            }
            !l.exact
        });
        let answer = declared(id, &stream);
        self.streams.insert(name, stream);
        answer
    }

    fn subscribe(
        &mut self,
        node: &NodeName,
        incarnation: u64,
        sub: Subscription,
        out: &mut Vec<Out>,
    ) -> Option<(BrokerToNode, Vec<OwnedFd>)> {
        let Subscription {
            id,
            pattern,
            type_tag,
            wait_ms,
            lazy,
        } = sub;
        let exact = !broker::is_pattern(&pattern);
        let Some(conn) = self
            .conns
            .get_mut(node)
            .filter(|c| c.incarnation == incarnation)
        else {
            return Some(refused(id, RefusalKind::Internal, "no live link".into()));
        };
        let mut attachments = Vec::new();
        let mut fds = Vec::new();
        for (name, s) in self.streams.iter_mut() {
            if !broker::matches(&pattern, name) {
                continue;
            }
            if s.info.spec.private {
                if exact {
                    return Some(refused(
                        id,
                        RefusalKind::Invalid,
                        format!("stream `{name}` is private: only its producer reads it"),
                    ));
                }
                continue;
            }
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
            let (att, f) = match attach_cell(s, node, conn, self.limits.max_consumers) {
                Ok(a) => a,
                Err(msg) => return Some(refused(id, RefusalKind::Limit, msg)),
            };
            // The producer rings the new consumer's doorbell.
            if let (Some(held), Some(bell)) = (
                s.held_by,
                s.cells.get(att.cell as usize).and_then(|c| dup(&c.bell)),
            ) {
                out.push(Out {
                    to: s.info.producer.clone(),
                    incarnation: held,
                    msg: BrokerToNode::ConsumerJoined {
                        stream: name.clone(),
                        cell: att.cell,
                    },
                    fds: vec![bell],
                });
            }
            attachments.push(att);
            fds.extend(f);
        }
        let lazy = lazy && exact && attachments.is_empty();
        if !exact || (attachments.is_empty() && (wait_ms.is_some() || lazy)) {
            self.listeners.push(Listener {
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
        if attachments.is_empty() && !lazy && exact {
            if wait_ms.is_some() {
                // Answered when the stream is declared, or refused when the wait ends.
                return None;
            }
            let known: Vec<&str> = self.streams.keys().map(String::as_str).collect();
            return Some(refused(
                id,
                RefusalKind::NotDeclared,
                format!(
                    "no stream `{pattern}` is declared (declared: {})",
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                ),
            ));
        }
        Some((
            BrokerToNode::Subscribed {
                id,
                streams: attachments,
            },
            fds,
        ))
    }

    /// Update every stream's rate and refuse the subscriptions whose wait ended by `now`.
    pub(crate) fn tick(&mut self, now: Instant) -> Vec<Out> {
        for s in self.streams.values_mut() {
            let published = s.map.header().published.load(Ordering::Acquire);
            let dt = now.saturating_duration_since(s.sample.0).as_secs_f64();
            if dt > 0.0 {
                s.rate_hz = published.saturating_sub(s.sample.1) as f64 / dt;
            }
            s.sample = (now, published);
        }
        let mut out = Vec::new();
        self.listeners.retain(|l| {
            if !(l.exact && l.deadline.is_some_and(|d| d <= now)) {
                return true;
            }
            let (msg, fds) = refused(
                l.id,
                RefusalKind::NotDeclared,
                format!(
                    "no producer declared stream `{}` within the subscriber's wait",
                    l.pattern
                ),
            );
            out.push(Out {
                to: l.node.clone(),
                incarnation: l.incarnation,
                msg,
                fds,
            });
            false
        });
        out
    }

    /// Every stream, for `syncra streams`.
    /// The newest message of private stream `name` that `accept` takes, newest first among
    /// those the ring still holds whole: for `syncra snapshot` (off the world's hot path: one
    /// read, under the seqlock). `Err`: no such private stream.
    pub(crate) fn read_private<R>(
        &self,
        name: &str,
        mut accept: impl FnMut(&[u8]) -> Option<R>,
    ) -> Result<Option<R>, String> {
        let s = self
            .streams
            .get(name)
            .filter(|s| s.info.spec.private)
            .ok_or_else(|| format!("no private stream `{name}` is declared"))?;
        let newest = s.map.header().published.load(Ordering::Acquire);
        let count = u64::from(s.map.geometry().slot_count);
        Ok((newest.saturating_sub(count - 1).max(1)..=newest)
            .rev()
            .find_map(|seq| ring::read_published(&s.map, seq, |b, _| accept(b)).flatten()))
    }

    /// Publish `bytes` on private stream `name` as its newest message, for its producer's
    /// next incarnation to find (`syncra restore`, a poison state set aside). Only while its
    /// producer is not running (stopped, or ended): the caller knows.
    pub(crate) fn write_private(&mut self, name: &str, bytes: &[u8]) -> Result<u64, String> {
        let s = self
            .streams
            .get(name)
            .filter(|s| s.info.spec.private)
            .ok_or_else(|| format!("no private stream `{name}` is declared"))?;
        let bell = ring::doorbell().map_err(|e| format!("eventfd: {e}"))?;
        let mut writer = ring::RingWriter::attach(
            s.map.clone(),
            bell,
            Arc::new(std::sync::Mutex::new(Vec::new())),
            0,
        );
        let seq = writer
            .write_bytes(0, bytes)
            .map_err(|e| format!("stream `{name}`: {e}"))?;
        drop(writer);
        Ok(seq)
    }

    pub(crate) fn views(&self) -> Vec<StreamView> {
        self.streams.values().map(view).collect()
    }

    /// One stream's view and a duplicate of its ring fd, for `syncra tap`.
    pub(crate) fn tap(&self, name: &str) -> Option<(StreamView, OwnedFd)> {
        let s = self.streams.get(name)?;
        Some((view(s), dup(&s.memfd)?))
    }

    /// (produces, consumes) per node, for `syncra status`.
    pub(crate) fn node_streams(&self) -> HashMap<NodeName, (Vec<String>, Vec<String>)> {
        let mut out: HashMap<NodeName, (Vec<String>, Vec<String>)> = HashMap::new();
        for (name, s) in &self.streams {
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
}

/// The fields of one `Subscribe` request.
struct Subscription {
    id: u64,
    pattern: String,
    type_tag: String,
    wait_ms: Option<u64>,
    lazy: bool,
}

fn refused(id: u64, kind: RefusalKind, message: String) -> (BrokerToNode, Vec<OwnedFd>) {
    (BrokerToNode::Refused { id, kind, message }, Vec::new())
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
        Some(i) => {
            s.cells[i].held_by = Some(conn.incarnation);
            (i, true)
        }
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
                held_by: Some(conn.incarnation),
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

fn declared(id: u64, s: &Stream) -> (BrokerToNode, Vec<OwnedFd>) {
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
        producer_host: None,
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
                    host: None,
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use syncra_protocol::ring::{Geometry, Policy};

    use super::*;

    fn limits() -> StreamLimits {
        StreamLimits {
            max_streams: 8,
            max_ring_bytes: 1 << 20,
            max_consumers: 4,
        }
    }

    fn geometry() -> Geometry {
        Geometry {
            slot_size: 64,
            slot_count: 4,
            policy: Policy::LatestOnly,
            block_timeout_ms: 0,
        }
    }

    fn name(s: &str) -> NodeName {
        NodeName::parse(s).unwrap()
    }

    fn declare(
        core: &mut Core,
        node: &str,
        inc: u64,
        id: u64,
        stream: &str,
        tag: &str,
    ) -> Vec<Out> {
        core.handle(
            &name(node),
            inc,
            NodeToBroker::Declare {
                id,
                spec: StreamSpec {
                    name: stream.into(),
                    type_tag: tag.into(),
                    geometry: geometry(),
                    private: false,
                },
            },
        )
    }

    fn subscribe(
        core: &mut Core,
        node: &str,
        inc: u64,
        id: u64,
        pattern: &str,
        (tag, mode): (&str, Mode),
    ) -> Vec<Out> {
        let (wait_ms, lazy) = match mode {
            Mode::Now => (None, false),
            Mode::Wait => (Some(60_000), false),
            Mode::Lazy => (None, true),
        };
        core.handle(
            &name(node),
            inc,
            NodeToBroker::Subscribe {
                id,
                pattern: pattern.into(),
                type_tag: tag.into(),
                wait_ms,
                lazy,
            },
        )
    }

    /// How a test subscribes: only what exists, waiting a minute, or lazily.
    #[derive(Clone, Copy)]
    enum Mode {
        Now,
        Wait,
        Lazy,
    }

    /// The one message in `outs`, asserting who it is for.
    fn only(outs: Vec<Out>, to: &str, incarnation: u64) -> Out {
        assert_eq!(outs.len(), 1, "expected one message, got {outs:?}");
        let out = outs.into_iter().next().unwrap();
        assert_eq!((out.to.as_str(), out.incarnation), (to, incarnation));
        out
    }

    fn refusal(out: &Out) -> (RefusalKind, &str) {
        match &out.msg {
            BrokerToNode::Refused { kind, message, .. } => (kind.clone(), message.as_str()),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    fn attachments(out: &Out) -> Vec<(String, u32, bool)> {
        match &out.msg {
            BrokerToNode::Subscribed { streams, .. } => streams
                .iter()
                .map(|a| (a.stream.spec.name.clone(), a.cell, a.resume))
                .collect(),
            BrokerToNode::Added { stream: a, .. } => {
                vec![(a.stream.spec.name.clone(), a.cell, a.resume)]
            }
            other => panic!("expected streams, got {other:?}"),
        }
    }

    #[test]
    fn a_declared_stream_comes_with_its_ring_and_space_doorbell() {
        let mut core = Core::new(limits());
        core.connect(&name("audio"), 1);
        let out = only(
            declare(&mut core, "audio", 1, 7, "audio/fft", "t/1"),
            "audio",
            1,
        );
        match &out.msg {
            BrokerToNode::Declared { id, stream, bells } => {
                assert_eq!(*id, 7);
                assert_eq!(stream.producer.as_str(), "audio");
                assert!(bells.is_empty());
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(out.fds.len(), 2, "ring and space doorbell");
        let again = only(
            declare(&mut core, "audio", 1, 8, "audio/fft", "t/1"),
            "audio",
            1,
        );
        assert_eq!(refusal(&again).0, RefusalKind::Conflict);
    }

    #[test]
    fn a_private_stream_may_change_shape_across_restarts_and_no_one_may_subscribe_to_it() {
        let shaped = |core: &mut Core, inc: u64, stream: &str, slot_size: u32| {
            core.handle(
                &name("world/a"),
                inc,
                NodeToBroker::Declare {
                    id: inc,
                    spec: StreamSpec {
                        name: stream.into(),
                        type_tag: "t/1".into(),
                        geometry: Geometry {
                            slot_size,
                            ..geometry()
                        },
                        private: stream.ends_with("/state"),
                    },
                },
            )
        };
        let mut core = Core::new(limits());
        core.connect(&name("world/a"), 1);
        for stream in ["world/a/state", "world/a/scene"] {
            let out = only(shaped(&mut core, 1, stream, 64), "world/a", 1);
            assert!(matches!(out.msg, BrokerToNode::Declared { .. }), "{out:?}");
        }
        core.connect(&name("viewer"), 1);
        subscribe(
            &mut core,
            "viewer",
            1,
            1,
            "world/a/scene",
            ("t/1", Mode::Now),
        );
        let before = core.ring_bytes;
        core.disconnect(&name("world/a"), 1);
        let grants = core.connect(&name("world/a"), 2);
        assert_eq!(grants.len(), 2, "both rings held for the next incarnation");
        // Its config changed: a larger state. The state ring, which no one reads, is replaced.
        let out = only(shaped(&mut core, 2, "world/a/state", 4096), "world/a", 2);
        match &out.msg {
            BrokerToNode::Declared { stream, .. } => {
                assert_eq!(stream.spec.geometry.slot_size, 4096)
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            core.ring_bytes,
            before
                + (Geometry {
                    slot_size: 4096,
                    ..geometry()
                }
                .file_size()
                    - geometry().file_size()) as u64
        );
        // The scene is not private (and has a consumer): its shape must stay.
        let out = only(shaped(&mut core, 2, "world/a/scene", 4096), "world/a", 2);
        assert_eq!(refusal(&out).0, RefusalKind::Conflict);
    }

    #[test]
    fn a_stream_must_lie_under_its_producers_name() {
        let mut core = Core::new(limits());
        core.connect(&name("audio"), 1);
        for bad in ["renderer/frame", "audio/", "audio//x", "audio/*", "audio"] {
            let out = only(declare(&mut core, "audio", 1, 1, bad, "t/1"), "audio", 1);
            let (kind, message) = refusal(&out);
            assert_eq!(kind, RefusalKind::Invalid, "{bad}");
            assert!(
                message.contains(bad) && message.contains("audio/<name>"),
                "{message}"
            );
        }
        assert!(core.views().is_empty());
    }

    #[test]
    fn limits_refuse_before_any_memory_is_made() {
        let mut core = Core::new(StreamLimits {
            max_streams: 1,
            max_ring_bytes: 1 << 20,
            max_consumers: 1,
        });
        core.connect(&name("a"), 1);
        core.connect(&name("b"), 1);
        core.connect(&name("c"), 1);
        declare(&mut core, "a", 1, 1, "a/one", "t/1");
        let out = only(declare(&mut core, "a", 1, 2, "a/two", "t/1"), "a", 1);
        let (kind, message) = refusal(&out);
        assert_eq!(kind, RefusalKind::Limit);
        assert!(message.contains("streams.max_streams"), "{message}");

        let out = subscribe(&mut core, "b", 1, 1, "a/one", ("t/1", Mode::Now));
        assert_eq!(out.len(), 2, "b's answer and the producer's ConsumerJoined");
        let out = only(
            subscribe(&mut core, "c", 1, 1, "a/one", ("t/1", Mode::Now)),
            "c",
            1,
        );
        let (kind, message) = refusal(&out);
        assert_eq!(kind, RefusalKind::Limit);
        assert!(message.contains("streams.max_consumers"), "{message}");

        let mut small = Core::new(StreamLimits {
            max_streams: 8,
            max_ring_bytes: 1024,
            max_consumers: 4,
        });
        small.connect(&name("a"), 1);
        let out = only(declare(&mut small, "a", 1, 1, "a/big", "t/1"), "a", 1);
        let (kind, message) = refusal(&out);
        assert_eq!(kind, RefusalKind::Limit);
        assert!(message.contains("streams.max_ring_mb"), "{message}");
        assert!(small.views().is_empty());
    }

    #[test]
    fn a_restarted_producer_is_granted_its_stream_and_keeps_its_consumers() {
        let mut core = Core::new(limits());
        core.connect(&name("world/a"), 1);
        core.connect(&name("audio"), 1);
        declare(&mut core, "world/a", 1, 1, "world/a/scene", "t/1");
        subscribe(
            &mut core,
            "audio",
            1,
            1,
            "world/a/scene",
            ("t/1", Mode::Now),
        );
        core.disconnect(&name("world/a"), 1);
        assert!(!core.views()[0].producer_live);

        let grant = only(core.connect(&name("world/a"), 2), "world/a", 2);
        match &grant.msg {
            BrokerToNode::Granted { stream, bells } => {
                assert_eq!(stream.spec.name, "world/a/scene");
                assert_eq!(bells, &[0], "the consumer's doorbell comes with it");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(grant.fds.len(), 3);
        // Declaring the same spec takes the grant; another type is refused naming both.
        let out = only(
            declare(&mut core, "world/a", 2, 1, "world/a/scene", "t/1"),
            "world/a",
            2,
        );
        assert!(matches!(out.msg, BrokerToNode::Declared { .. }));

        core.disconnect(&name("world/a"), 2);
        core.connect(&name("world/a"), 3);
        let out = only(
            declare(&mut core, "world/a", 3, 1, "world/a/scene", "t/2"),
            "world/a",
            3,
        );
        let (kind, message) = refusal(&out);
        assert_eq!(kind, RefusalKind::Conflict);
        assert!(
            message.contains("t/1") && message.contains("t/2"),
            "{message}"
        );
    }

    #[test]
    fn a_restarted_consumer_resumes_its_own_cell() {
        let mut core = Core::new(limits());
        core.connect(&name("world/a"), 1);
        core.connect(&name("audio"), 1);
        core.connect(&name("hologram"), 1);
        declare(&mut core, "world/a", 1, 1, "world/a/scene", "t/1");
        let first = subscribe(
            &mut core,
            "audio",
            1,
            1,
            "world/a/scene",
            ("t/1", Mode::Now),
        );
        assert_eq!(attachments(&first[0]), [("world/a/scene".into(), 0, false)]);
        let joined = &first[1];
        assert_eq!((joined.to.as_str(), joined.incarnation), ("world/a", 1));
        assert!(matches!(
            joined.msg,
            BrokerToNode::ConsumerJoined { cell: 0, .. }
        ));
        assert_eq!(joined.fds.len(), 1);
        let other = subscribe(
            &mut core,
            "hologram",
            1,
            1,
            "world/a/scene",
            ("t/1", Mode::Now),
        );
        assert_eq!(attachments(&other[0]), [("world/a/scene".into(), 1, false)]);

        // Active as the consumer would mark it; its close frees it, its successor resumes it.
        let cell = |core: &Core, i: usize| {
            core.streams["world/a/scene"]
                .map
                .consumer(i)
                .active
                .load(Ordering::Relaxed)
        };
        core.streams["world/a/scene"]
            .map
            .consumer(0)
            .active
            .store(1, Ordering::Relaxed);
        core.disconnect(&name("audio"), 1);
        assert_eq!(
            cell(&core, 0),
            0,
            "a dead consumer's cell is released at once"
        );
        core.connect(&name("audio"), 2);
        let again = subscribe(
            &mut core,
            "audio",
            2,
            1,
            "world/a/scene",
            ("t/1", Mode::Now),
        );
        assert_eq!(attachments(&again[0]), [("world/a/scene".into(), 0, true)]);
    }

    #[test]
    fn a_late_close_of_the_old_incarnation_leaves_its_successors_cell_alone() {
        let mut core = Core::new(limits());
        core.connect(&name("world/a"), 1);
        core.connect(&name("audio"), 1);
        declare(&mut core, "world/a", 1, 1, "world/a/scene", "t/1");
        subscribe(
            &mut core,
            "audio",
            1,
            1,
            "world/a/scene",
            ("t/1", Mode::Now),
        );
        // The successor connects and resumes before the old link's close is seen.
        core.connect(&name("audio"), 2);
        let again = subscribe(
            &mut core,
            "audio",
            2,
            1,
            "world/a/scene",
            ("t/1", Mode::Now),
        );
        assert_eq!(attachments(&again[0]), [("world/a/scene".into(), 0, true)]);
        core.streams["world/a/scene"]
            .map
            .consumer(0)
            .active
            .store(1, Ordering::Relaxed);
        core.disconnect(&name("audio"), 1);
        let active = core.streams["world/a/scene"]
            .map
            .consumer(0)
            .active
            .load(Ordering::Relaxed);
        assert_eq!(active, 1, "the successor's cell stays active");
        let view = &core.views()[0];
        assert_eq!(view.consumers.len(), 1);
    }

    #[test]
    fn a_lazy_subscription_is_answered_at_once_and_attached_on_declaration() {
        let mut core = Core::new(limits());
        core.connect(&name("hologram"), 1);
        let now = only(
            subscribe(
                &mut core,
                "hologram",
                1,
                4,
                "world/a/scene",
                ("t/1", Mode::Lazy),
            ),
            "hologram",
            1,
        );
        assert!(attachments(&now).is_empty(), "answered with no stream yet");
        core.connect(&name("world/a"), 1);
        let outs = declare(&mut core, "world/a", 1, 1, "world/a/scene", "t/1");
        assert_eq!(outs.len(), 2, "{outs:?}");
        // The producer's answer first, carrying the waiting consumer's doorbell.
        match &outs[0].msg {
            BrokerToNode::Declared { bells, .. } => assert_eq!(bells, &[0]),
            other => panic!("{other:?}"),
        }
        assert_eq!(outs[0].fds.len(), 3);
        assert_eq!(outs[1].to.as_str(), "hologram");
        assert!(matches!(outs[1].msg, BrokerToNode::Added { id: 4, .. }));
        assert_eq!(outs[1].fds.len(), 3);
        // Attached once: a later stream of the same name (after a restart) is not re-added.
        core.disconnect(&name("world/a"), 1);
        core.connect(&name("world/a"), 2);
        let outs = declare(&mut core, "world/a", 2, 1, "world/a/scene", "t/1");
        assert_eq!(outs.len(), 1);
    }

    #[test]
    fn a_lazy_subscription_to_another_type_is_refused_naming_both() {
        let mut core = Core::new(limits());
        core.connect(&name("hologram"), 1);
        subscribe(
            &mut core,
            "hologram",
            1,
            4,
            "world/a/scene",
            ("t/mine", Mode::Lazy),
        );
        core.connect(&name("world/a"), 1);
        let outs = declare(&mut core, "world/a", 1, 1, "world/a/scene", "t/theirs");
        assert_eq!(outs.len(), 2);
        assert_eq!(outs[1].to.as_str(), "hologram");
        let (kind, message) = refusal(&outs[1]);
        assert_eq!(kind, RefusalKind::TypeMismatch);
        assert!(
            message.contains("t/mine") && message.contains("t/theirs"),
            "{message}"
        );
    }

    #[test]
    fn an_exact_subscription_without_a_wait_names_what_is_declared() {
        let mut core = Core::new(limits());
        core.connect(&name("world/a"), 1);
        core.connect(&name("audio"), 1);
        declare(&mut core, "world/a", 1, 1, "world/a/scene", "t/1");
        let out = only(
            subscribe(&mut core, "audio", 1, 1, "world/a/scen", ("t/1", Mode::Now)),
            "audio",
            1,
        );
        let (kind, message) = refusal(&out);
        assert_eq!(kind, RefusalKind::NotDeclared);
        assert!(
            message.contains("world/a/scen`") && message.contains("world/a/scene"),
            "{message}"
        );
        let out = only(
            subscribe(
                &mut core,
                "audio",
                1,
                2,
                "world/a/scene",
                ("t/2", Mode::Now),
            ),
            "audio",
            1,
        );
        assert_eq!(refusal(&out).0, RefusalKind::TypeMismatch);
    }

    #[test]
    fn a_waiting_subscription_is_answered_on_declaration_or_refused_when_the_wait_ends() {
        let mut core = Core::new(limits());
        core.connect(&name("audio"), 1);
        core.connect(&name("world/a"), 1);
        assert!(
            subscribe(
                &mut core,
                "audio",
                1,
                1,
                "world/a/scene",
                ("t/1", Mode::Wait)
            )
            .is_empty()
        );
        assert!(
            subscribe(
                &mut core,
                "audio",
                1,
                2,
                "world/a/other",
                ("t/1", Mode::Wait)
            )
            .is_empty()
        );
        let outs = declare(&mut core, "world/a", 1, 1, "world/a/scene", "t/1");
        assert_eq!(outs.len(), 2);
        assert_eq!(attachments(&outs[1]), [("world/a/scene".into(), 0, false)]);
        assert!(matches!(
            outs[1].msg,
            BrokerToNode::Subscribed { id: 1, .. }
        ));
        assert!(
            core.tick(Instant::now()).is_empty(),
            "the other wait has not ended"
        );
        let expired = only(
            core.tick(Instant::now() + Duration::from_secs(3600)),
            "audio",
            1,
        );
        let (kind, message) = refusal(&expired);
        assert_eq!(kind, RefusalKind::NotDeclared);
        assert!(message.contains("world/a/other"), "{message}");
    }

    #[test]
    fn a_pattern_gets_what_exists_and_what_comes_until_dropped() {
        let mut core = Core::new(limits());
        core.connect(&name("tap"), 1);
        core.connect(&name("world/a"), 1);
        core.connect(&name("world/b"), 1);
        declare(&mut core, "world/a", 1, 1, "world/a/scene", "t/1");
        declare(&mut core, "world/a", 1, 2, "world/a/events", "t/other");
        let outs = subscribe(&mut core, "tap", 1, 9, "world/*/scene", ("t/1", Mode::Now));
        assert_eq!(
            attachments(&outs[0]),
            [("world/a/scene".into(), 0, false)],
            "types that differ are skipped"
        );
        let outs = declare(&mut core, "world/b", 1, 1, "world/b/scene", "t/1");
        assert_eq!(outs.len(), 2);
        assert_eq!(attachments(&outs[1]), [("world/b/scene".into(), 0, false)]);
        assert!(matches!(outs[1].msg, BrokerToNode::Added { id: 9, .. }));
        // Dropped: the next matching stream is not pushed.
        assert!(
            core.handle(&name("tap"), 1, NodeToBroker::Unsubscribe { id: 9 })
                .is_empty()
        );
        core.connect(&name("world/c"), 1);
        let outs = declare(&mut core, "world/c", 1, 1, "world/c/scene", "t/1");
        assert_eq!(outs.len(), 1, "only the producer's answer: {outs:?}");
    }

    #[test]
    fn a_closed_link_ends_its_listeners_and_messages_name_their_incarnation() {
        let mut core = Core::new(limits());
        core.connect(&name("tap"), 1);
        subscribe(&mut core, "tap", 1, 9, "world/**", ("t/1", Mode::Now));
        core.disconnect(&name("tap"), 1);
        core.connect(&name("world/a"), 1);
        assert_eq!(
            declare(&mut core, "world/a", 1, 1, "world/a/scene", "t/1").len(),
            1
        );
        // A request from an incarnation that has gone attaches nothing.
        core.connect(&name("tap"), 2);
        let out = only(
            subscribe(&mut core, "tap", 1, 1, "world/a/scene", ("t/1", Mode::Now)),
            "tap",
            1,
        );
        assert_eq!(refusal(&out).0, RefusalKind::Internal);
        assert!(core.views()[0].consumers.is_empty());
    }
}
