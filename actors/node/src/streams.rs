//! Streams: named, typed, zero-copy dataflow between nodes.
//!
//! A producer declares a stream; the runtime's Broker creates its ring (shared memory) and
//! doorbells and hands over the fds; the producer writes each message into a slot in place.
//! Consumers subscribe by name or pattern and read in place. Nothing of the data passes
//! through the runtime.
//!
//! ```no_run
//! # fn demo(node: &syncra_node::Node) -> Result<(), syncra_node::StreamError> {
//! use std::time::Duration;
//! use syncra_node::StreamOptions;
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct State(Vec<f32>);
//! syncra_node::message!(State = "example.state/1");
//! // Producer: `world/arena/state` (a name without the node prefix gets it).
//! let mut tx = node.declare::<State>("state", StreamOptions::latest_only(4096))?;
//! tx.publish(&State(vec![1.0, 2.0]))?;
//! // Consumer, blocking (render loops, audio callbacks): returns at once, and attaches when
//! // the producer declares the stream, if it has not yet …
//! let mut rx = node.subscribe::<State>("world/arena/state")?;
//! if let Some(sample) = rx.recv_timeout(Duration::from_millis(16))? {
//!     println!("{} (gap {})", sample.seq, sample.gap);
//! }
//! // … or async: `rx.recv().await`.
//! # Ok(()) }
//! ```

pub use syncra_protocol::broker::matches;

use std::collections::HashMap;
use std::marker::PhantomData;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;
use syncra_protocol::StepError;
use syncra_protocol::broker::{
    self, Attachment, BrokerToNode, NodeToBroker, RecvError, RefusalKind, StreamInfo, StreamSpec,
};
use syncra_protocol::ring::{
    self, Bells, Geometry, MAX_CONSUMERS, Policy, ReadOutcome, Received, RingMap, RingReader,
    RingWriter, WriteError,
};
use tokio::io::unix::AsyncFd;

use crate::mailbox::Mailbox;
use syncra_protocol::message::{Message, bulk_tag};

use crate::events::WatchState;

/// How long a request to the Broker may take, beyond any wait the caller asked for.
const BROKER_TIMEOUT: Duration = Duration::from_secs(10);

/// Bytes at the start of a bulk slot for its typed header.
pub const BULK_HEADER: usize = 512;

/// A stream's shape and policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamOptions {
    /// Largest message, bytes.
    pub slot_size: u32,
    /// Messages the ring holds.
    pub slot_count: u32,
    /// What happens when a consumer falls behind.
    pub policy: Policy,
    /// Under [`Policy::Block`]: how long a write may wait.
    pub block_timeout: Duration,
}

/// A slot size that holds messages like `sample` (its encoded size), with room for them to
/// grow by `headroom` times, rounded up to 64 bytes; at least 64. Derive slot sizes from a
/// sample of the largest expected message instead of counting bytes by hand:
///
/// ```
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Pose { position: [f32; 3], rotation: [f32; 4] }
/// syncra_node::message!(Pose = "example.pose/1");
/// let size = syncra_node::streams::slot_for(&Pose { position: [0.0; 3], rotation: [0.0; 4] }, 2.0);
/// assert!(size >= 64 && size % 64 == 0);
/// ```
pub fn slot_for<T: Message>(sample: &T, headroom: f64) -> u32 {
    let encoded = syncra_protocol::wire::encode(sample).len() as f64;
    let wanted = (encoded * headroom.max(1.0))
        .ceil()
        .min(f64::from(u32::MAX - 64)) as u32;
    wanted.max(64).div_ceil(64).saturating_mul(64)
}

impl StreamOptions {
    /// Latest-only, 4 slots, each holding messages like `sample` with room to double.
    pub fn latest_only_like<T: Message>(sample: &T) -> Self {
        Self::latest_only(slot_for(sample, 2.0))
    }

    /// Latest-only, 4 slots of `slot_size` bytes (state, scenes, frames).
    pub fn latest_only(slot_size: u32) -> Self {
        StreamOptions {
            slot_size,
            slot_count: 4,
            policy: Policy::LatestOnly,
            block_timeout: Duration::from_millis(100),
        }
    }

    /// Drop-oldest, `slot_count` slots of `slot_size` bytes (events, audio blocks).
    pub fn drop_oldest(slot_size: u32, slot_count: u32) -> Self {
        StreamOptions {
            slot_size,
            slot_count,
            policy: Policy::DropOldest,
            block_timeout: Duration::from_millis(100),
        }
    }

    /// Block up to `timeout` for the slowest consumer (lossless pipelines).
    pub fn block(slot_size: u32, slot_count: u32, timeout: Duration) -> Self {
        StreamOptions {
            slot_size,
            slot_count,
            policy: Policy::Block,
            block_timeout: timeout,
        }
    }

    fn geometry(&self, extra: u32) -> Geometry {
        Geometry {
            slot_size: self.slot_size.saturating_add(extra),
            slot_count: self.slot_count,
            policy: self.policy,
            block_timeout_ms: self.block_timeout.as_millis().min(u128::from(u32::MAX)) as u32,
        }
    }
}

/// Why a stream operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The runtime refused the request.
    #[error("{message}")]
    Refused {
        /// What kind of refusal.
        kind: RefusalKind,
        /// What is wrong, naming the stream.
        message: String,
    },
    /// A write failed (too large, or the ring stayed full under `block`).
    #[error("stream `{stream}`: {source}")]
    Write {
        /// The stream.
        stream: String,
        /// What failed.
        #[source]
        source: WriteError,
    },
    /// A message did not decode as the stream's type.
    #[error("stream `{stream}`: message {seq} does not decode: {message}")]
    Malformed {
        /// The stream.
        stream: String,
        /// Its sequence.
        seq: u64,
        /// What the decoder said.
        message: String,
    },
    /// The broker link failed, or this process has none (not started by a runtime of this
    /// version): the step names what was being done, its source why.
    #[error("the broker link: {0}")]
    Link(#[source] StepError),
}

/// For `map_err`: the broker link failed at `step`.
fn link_err<E: Into<syncra_protocol::BoxError>>(
    step: &'static str,
) -> impl FnOnce(E) -> StreamError {
    move |e| StreamError::Link(StepError::new(step, e))
}

type Reply = (BrokerToNode, Vec<OwnedFd>);

/// What the Broker pushes to a subscription after answering it.
#[derive(Debug)]
pub(crate) enum Push {
    /// A stream to attach (its three fds follow).
    Added(Attachment, Vec<OwnedFd>),
    /// A stream already attached (those a pattern matched when it was subscribed).
    Attached(String, RingReader),
    /// The stream a lazy subscription waits for was declared with another type.
    Refused(RefusalKind, String),
}

/// Streams pushed to a pattern or lazy subscription.
pub(crate) type Pushes = Arc<Mailbox<Push>>;

/// The node's side of the broker socket.
/// A stream granted at attach: its info, the consumer cells whose doorbells follow, and the
/// fds (ring, space doorbell, consumer doorbells).
type Grant = (StreamInfo, Vec<u32>, Vec<OwnedFd>);

#[derive(Debug)]
pub(crate) struct BrokerClient {
    socket: OwnedFd,
    next_id: AtomicU64,
    waiters: Mutex<HashMap<u64, Arc<Mailbox<Reply>>>>,
    patterns: Mutex<HashMap<u64, Pushes>>,
    /// Per produced stream, the consumer doorbells its writer rings.
    bells: Mutex<HashMap<String, Bells>>,
    /// Doorbells that arrived before their stream's declaration was answered.
    early_bells: Mutex<HashMap<String, Vec<(u32, OwnedFd)>>>,
    /// Streams this node produced before, held for this incarnation by the Broker
    /// (`Granted`): declaring the same spec takes one without a request.
    grants: Mutex<HashMap<String, Grant>>,
    pub(crate) incarnation: u64,
    /// Rung when a stream is pushed to a subscription, for the node's event loop.
    loop_bell: Arc<OwnedFd>,
    /// Where direct links the Broker pushes go.
    shared: std::sync::Weak<crate::Shared>,
}

impl BrokerClient {
    /// Start the reader thread on `socket` (the inherited broker socket).
    pub(crate) fn start(
        socket: OwnedFd,
        incarnation: u64,
        loop_bell: Arc<OwnedFd>,
        shared: std::sync::Weak<crate::Shared>,
    ) -> std::io::Result<Arc<BrokerClient>> {
        let reader = socket.try_clone()?;
        let client = Arc::new(BrokerClient {
            socket,
            next_id: AtomicU64::new(1),
            waiters: Mutex::new(HashMap::new()),
            patterns: Mutex::new(HashMap::new()),
            bells: Mutex::new(HashMap::new()),
            early_bells: Mutex::new(HashMap::new()),
            grants: Mutex::new(HashMap::new()),
            incarnation,
            loop_bell,
            shared,
        });
        let me = Arc::downgrade(&client);
        std::thread::Builder::new()
            .name("syncra-broker".into())
            .spawn(move || {
                loop {
                    let got = broker::recv::<BrokerToNode>(&reader);
                    let Some(client) = me.upgrade() else { return };
                    match got {
                        Ok((msg, fds)) => client.dispatch(msg, fds),
                        Err(RecvError::Closed) => return,
                        Err(RecvError::WouldBlock) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "ignored a malformed broker message");
                        }
                    }
                }
            })?;
        Ok(client)
    }

    /// A duplicate of the broker socket (for direct link requests).
    pub(crate) fn duplicate_socket(&self) -> std::io::Result<OwnedFd> {
        self.socket.try_clone()
    }

    fn dispatch(&self, msg: BrokerToNode, mut fds: Vec<OwnedFd>) {
        match msg {
            BrokerToNode::Linked {
                to,
                incarnation,
                link,
            } => {
                if let (Some(shared), Some(fd)) = (self.shared.upgrade(), fds.pop()) {
                    shared.links.linked(&shared, to, incarnation, link, fd);
                }
            }
            BrokerToNode::LinkFrom {
                from,
                incarnation,
                link,
            } => {
                if let (Some(shared), Some(fd)) = (self.shared.upgrade(), fds.pop()) {
                    shared.links.link_from(&shared, from, incarnation, link, fd);
                }
            }
            BrokerToNode::LinkRefused { to, message } => {
                if let Some(shared) = self.shared.upgrade() {
                    shared.links.refused(to, &message);
                }
            }
            BrokerToNode::Declared { id, .. }
            | BrokerToNode::Subscribed { id, .. }
            | BrokerToNode::Refused { id, .. } => {
                let waiter = lock(&self.waiters).remove(&id);
                match (waiter, msg) {
                    (Some(w), msg) => {
                        let _ = w.push((msg, fds));
                    }
                    // A lazy subscription's stream came with another type.
                    (None, BrokerToNode::Refused { id, kind, message }) => {
                        let sub = lock(&self.patterns).remove(&id);
                        match sub {
                            Some(sub) => {
                                let _ = sub.push(Push::Refused(kind, message));
                                ring::ring(self.loop_bell.as_fd());
                            }
                            None => tracing::debug!(id, "a refusal nobody waits for"),
                        }
                    }
                    (None, _) => tracing::debug!(id, "a broker answer nobody waits for"),
                }
            }
            BrokerToNode::Granted { stream, bells } => {
                lock(&self.grants).insert(stream.spec.name.clone(), (stream, bells, fds));
            }
            BrokerToNode::Added { id, stream } => {
                let sub = lock(&self.patterns).get(&id).cloned();
                if let Some(sub) = sub {
                    let _ = sub.push(Push::Added(stream, fds));
                    ring::ring(self.loop_bell.as_fd());
                }
            }
            BrokerToNode::ConsumerJoined { stream, cell } => {
                let Some(fd) = fds.pop() else { return };
                let bells = lock(&self.bells).get(&stream).cloned();
                match bells {
                    Some(b) => set_bell(&b, cell, fd),
                    None => lock(&self.early_bells)
                        .entry(stream)
                        .or_default()
                        .push((cell, fd)),
                }
            }
        }
    }

    fn request(
        &self,
        req: impl FnOnce(u64) -> NodeToBroker,
        wait: Duration,
    ) -> Result<Reply, StreamError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.request_as(id, req, wait)
    }

    fn request_as(
        &self,
        id: u64,
        req: impl FnOnce(u64) -> NodeToBroker,
        wait: Duration,
    ) -> Result<Reply, StreamError> {
        let waiter = Arc::new(Mailbox::new(1));
        lock(&self.waiters).insert(id, waiter.clone());
        if let Err(e) = broker::send(&self.socket, &req(id), &[]) {
            lock(&self.waiters).remove(&id);
            return Err(link_err("sending a request")(e));
        }
        match waiter.recv_timeout(wait + BROKER_TIMEOUT) {
            Some(reply) => Ok(reply),
            None => {
                lock(&self.waiters).remove(&id);
                Err(StreamError::Link(StepError::new(
                    "waiting for the Broker's answer",
                    "the runtime's Broker did not answer",
                )))
            }
        }
    }

    fn declare(&self, spec: StreamSpec) -> Result<RingWriter, StreamError> {
        let name = spec.name.clone();
        // A stream granted at attach, declared the same: it is ours without asking. Declared
        // otherwise, the Broker decides (and names the difference).
        let grant = lock(&self.grants).remove(&name);
        if let Some((stream, bells, fds)) = grant
            && stream.spec == spec
        {
            return self.writer(&name, stream, bells, fds);
        }
        let (msg, fds) = self.request(|id| NodeToBroker::Declare { id, spec }, Duration::ZERO)?;
        match msg {
            BrokerToNode::Declared { stream, bells, .. } => self.writer(&name, stream, bells, fds),
            other => Err(refusal(other)),
        }
    }

    /// The writer of stream `name` from the Broker's fds: the ring, the space doorbell, then
    /// one doorbell per consumer cell in `bells`.
    fn writer(
        &self,
        name: &str,
        stream: StreamInfo,
        bells: Vec<u32>,
        fds: Vec<OwnedFd>,
    ) -> Result<RingWriter, StreamError> {
        let mut fds = fds.into_iter();
        let (Some(memfd), Some(space)) = (fds.next(), fds.next()) else {
            return Err(link_err("taking a stream to write")(
                "the Broker's answer lacks the ring's fds",
            ));
        };
        let map = RingMap::map(memfd.as_fd(), stream.spec.geometry)
            .map_err(link_err("mapping a stream's ring"))?;
        let table: Bells = Arc::new(Mutex::new((0..MAX_CONSUMERS).map(|_| None).collect()));
        for (cell, fd) in bells.into_iter().zip(fds) {
            set_bell(&table, cell, fd);
        }
        lock(&self.bells).insert(name.to_owned(), table.clone());
        for (cell, fd) in lock(&self.early_bells).remove(name).unwrap_or_default() {
            set_bell(&table, cell, fd);
        }
        Ok(RingWriter::attach(
            Arc::new(map),
            space,
            table,
            self.incarnation,
        ))
    }

    fn subscribe(
        &self,
        id: u64,
        pattern: &str,
        type_tag: String,
        lazy: bool,
    ) -> Result<Vec<(Attachment, RingReader)>, StreamError> {
        let pattern_owned = pattern.to_owned();
        let (msg, fds) = self.request_as(
            id,
            |id| NodeToBroker::Subscribe {
                id,
                pattern: pattern_owned,
                type_tag,
                wait_ms: None,
                lazy,
            },
            Duration::ZERO,
        )?;
        match msg {
            BrokerToNode::Subscribed { streams, .. } => attach_all(streams, fds),
            other => Err(refusal(other)),
        }
    }

    /// End subscription `id`: the Broker pushes nothing more for it.
    fn unsubscribe(&self, id: u64) {
        lock(&self.patterns).remove(&id);
        if let Err(e) = broker::send(&self.socket, &NodeToBroker::Unsubscribe { id }, &[]) {
            tracing::debug!(id, error = %e, "could not end a subscription (the link is gone)");
        }
    }
}

fn refusal(msg: BrokerToNode) -> StreamError {
    match msg {
        BrokerToNode::Refused { kind, message, .. } => StreamError::Refused { kind, message },
        other => StreamError::Link(StepError::new(
            "reading the Broker's answer",
            format!("unexpected answer: {other:?}"),
        )),
    }
}

fn attach_all(
    streams: Vec<Attachment>,
    fds: Vec<OwnedFd>,
) -> Result<Vec<(Attachment, RingReader)>, StreamError> {
    if fds.len() != streams.len() * 3 {
        return Err(link_err("attaching a stream")(
            "the Broker's answer has the wrong number of fds",
        ));
    }
    let mut fds = fds.into_iter();
    let mut out = Vec::new();
    for att in streams {
        let (memfd, bell, space) = (
            fds.next().expect("counted"),
            fds.next().expect("counted"),
            fds.next().expect("counted"),
        );
        let map = RingMap::map(memfd.as_fd(), att.stream.spec.geometry)
            .map_err(link_err("mapping a stream's ring"))?;
        let reader = RingReader::attach(Arc::new(map), att.cell as usize, bell, space, att.resume)
            .map_err(link_err("attaching a consumer cell"))?;
        out.push((att, reader));
    }
    Ok(out)
}

fn set_bell(table: &Bells, cell: u32, fd: OwnedFd) {
    let mut t = lock(table);
    if let Some(slot) = t.get_mut(cell as usize) {
        *slot = Some(fd);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl crate::Node {
    fn broker(&self) -> Result<&Arc<BrokerClient>, StreamError> {
        self.broker.as_ref().ok_or_else(|| {
            link_err("finding the broker link")("the runtime passed no broker socket")
        })
    }

    fn full_name(&self, name: &str) -> String {
        let prefix = format!("{}/", self.name());
        if name.starts_with(&prefix) {
            name.to_owned()
        } else {
            format!("{prefix}{name}")
        }
    }

    /// Declare an output stream of `T` (MessagePack in each slot, tagged `T::TAG`). `name` is the stream's full
    /// name (`world/arena/scene`) or the part after this node's name (`scene`). After a
    /// restart, declaring the same stream gets the same ring back; the sequence continues.
    pub fn declare<T: Message>(
        &self,
        name: &str,
        options: StreamOptions,
    ) -> Result<Producer<T>, StreamError> {
        let name = self.full_name(name);
        let writer = self.broker()?.declare(StreamSpec {
            name: name.clone(),
            type_tag: T::TAG.to_owned(),
            geometry: options.geometry(0),
            private: false,
        })?;
        Ok(Producer {
            name,
            writer,
            _type: PhantomData,
        })
    }

    /// Declare a private stream of raw bytes in a format of this node's own, tagged
    /// `type_tag` (`syncra.world.state/1`): state only this node writes and reads back; no
    /// other node may subscribe to it. After a restart, declaring the same stream gets the
    /// same ring back with what it held; declared with another shape (a config changed), its
    /// ring is replaced.
    pub fn declare_raw(
        &self,
        name: &str,
        type_tag: &str,
        options: StreamOptions,
    ) -> Result<RawProducer, StreamError> {
        let name = self.full_name(name);
        let writer = self.broker()?.declare(StreamSpec {
            name: name.clone(),
            type_tag: type_tag.to_owned(),
            geometry: options.geometry(0),
            private: true,
        })?;
        Ok(RawProducer { name, writer })
    }

    /// Declare a bulk output stream: each message is a small typed header `H` and up to
    /// `options.slot_size` raw bytes (frames, audio blocks), written in place.
    pub fn declare_bulk<H: Message>(
        &self,
        name: &str,
        options: StreamOptions,
    ) -> Result<BulkProducer<H>, StreamError> {
        let name = self.full_name(name);
        let writer = self.broker()?.declare(StreamSpec {
            name: name.clone(),
            type_tag: bulk_tag::<H>(),
            geometry: options.geometry(BULK_HEADER as u32),
            private: false,
        })?;
        Ok(BulkProducer {
            name,
            writer,
            _type: PhantomData,
        })
    }

    /// Subscribe to the stream `name` of `T`. Returns at once: if the stream is not declared
    /// yet, the consumer attaches when its producer declares it (a driver can be ready before
    /// the worlds it reads from exist); until then it simply has no messages
    /// ([`Consumer::is_attached`]). A stream of another type is refused naming both tags —
    /// at once, or on the consumer's next read if the producer declares it later.
    pub fn subscribe<T: Message>(&self, name: &str) -> Result<Consumer<T>, StreamError> {
        self.subscribe_tagged(name, T::TAG.to_owned(), true)
    }

    /// Subscribe to the stream `name` of `T` only if it is declared now; otherwise refused
    /// (`RefusalKind::NotDeclared`, naming the streams that are).
    pub fn subscribe_existing<T: Message>(&self, name: &str) -> Result<Consumer<T>, StreamError> {
        self.subscribe_tagged(name, T::TAG.to_owned(), false)
    }

    fn subscribe_tagged<T>(
        &self,
        name: &str,
        tag: String,
        lazy: bool,
    ) -> Result<Consumer<T>, StreamError> {
        let client = self.broker()?.clone();
        let id = client.next_id.fetch_add(1, Ordering::Relaxed);
        // Register for the push before asking, so a declaration right after is not missed.
        let pushes: Pushes = Arc::new(Mailbox::new(2));
        if lazy {
            lock(&client.patterns).insert(id, pushes.clone());
        }
        let got = client.subscribe(id, name, tag, lazy);
        let mut got = match got {
            Ok(got) => got,
            Err(e) => {
                lock(&client.patterns).remove(&id);
                return Err(e);
            }
        };
        match got.pop() {
            Some((att, reader)) => {
                lock(&client.patterns).remove(&id);
                Ok(Consumer::new(att.stream.spec.name, reader))
            }
            None if lazy => Ok(Consumer::pending(name.to_owned(), client, id, pushes)),
            None => Err(link_err("subscribing")(
                "the Broker answered with no stream",
            )),
        }
    }

    /// Subscribe to the bulk stream `name` with headers `H` (lazily, as [`crate::Node::subscribe`]).
    pub fn subscribe_bulk<H: Message>(&self, name: &str) -> Result<BulkConsumer<H>, StreamError> {
        Ok(BulkConsumer {
            inner: self.subscribe_tagged(name, bulk_tag::<H>(), true)?,
        })
    }

    /// Subscribe to every stream of `T` matching `pattern` (`world/*/scene`), now and later.
    pub fn subscribe_pattern<T: Message>(
        &self,
        pattern: &str,
    ) -> Result<Subscription<T>, StreamError> {
        let client = self.broker()?.clone();
        let id = client.next_id.fetch_add(1, Ordering::Relaxed);
        // Register for pushes before asking, so no later stream is missed.
        let pushes = Arc::new(Mailbox::new(MAX_CONSUMERS * 64));
        lock(&client.patterns).insert(id, pushes.clone());
        let existing = client.subscribe(id, pattern, T::TAG.to_owned(), false)?;
        // The streams that match now come first, through the same mailbox as later ones (so
        // an event loop watching the subscription hears of them too).
        for (att, reader) in existing {
            let _ = pushes.push(Push::Attached(att.stream.spec.name, reader));
        }
        let watch = Arc::new(Mutex::new(WatchState {
            waker: None,
            pushes: Some(pushes.clone()),
        }));
        Ok(Subscription {
            pushes,
            watch,
            _ends: Unsubscribe { client, id },
            _type: PhantomData,
        })
    }
}

/// Ends a subscription when dropped.
#[derive(Debug)]
struct Unsubscribe {
    client: Arc<BrokerClient>,
    id: u64,
}

impl Drop for Unsubscribe {
    fn drop(&mut self) {
        self.client.unsubscribe(self.id);
    }
}

/// The writing end of a stream of `T`.
#[derive(Debug)]
pub struct Producer<T> {
    name: String,
    writer: RingWriter,
    _type: PhantomData<fn(&T)>,
}

impl<T: DeserializeOwned> Producer<T> {
    /// The newest message still whole in the ring, decoded — after a restart, what this
    /// stream's previous incarnation published last. `None` if there is none.
    pub fn newest(&self) -> Option<(u64, T)> {
        let map = self.writer.map();
        let seq = map.header().published.load(Ordering::Acquire);
        syncra_protocol::ring::read_published(map, seq, |b, _| rmp_serde::from_slice(b).ok())
            .flatten()
            .map(|v| (seq, v))
    }
}

impl<T: Serialize> Producer<T> {
    /// The stream's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Encode `value` straight into the next slot and publish it; returns its sequence.
    pub fn publish(&mut self, value: &T) -> Result<u64, StreamError> {
        let slot_size = self.writer.map().geometry().slot_size as usize;
        let written = self.writer.write(0, |buf| {
            let mut cursor = std::io::Cursor::new(buf);
            rmp_serde::encode::write_named(&mut cursor, value).map(|()| cursor.position() as usize)
        });
        match written {
            Ok(Ok(seq)) => Ok(seq),
            Ok(Err(_)) => Err(StreamError::Write {
                stream: self.name.clone(),
                source: WriteError::TooLarge {
                    len: rmp_serde::to_vec_named(value).map(|v| v.len()).unwrap_or(0),
                    slot_size,
                },
            }),
            Err(source) => Err(StreamError::Write {
                stream: self.name.clone(),
                source,
            }),
        }
    }

    /// The sequence the next message gets.
    pub fn next_seq(&self) -> u64 {
        self.writer.next_seq()
    }
}

/// The writing end of a stream of raw bytes in a format of its producer's own (a world's
/// durable state), written in place; its producer can read back what it wrote before a
/// restart ([`RawProducer::newest_first`]).
#[derive(Debug)]
pub struct RawProducer {
    name: String,
    writer: RingWriter,
}

impl RawProducer {
    /// The stream's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Bytes one message can hold.
    pub fn capacity(&self) -> usize {
        self.writer.map().geometry().slot_size as usize
    }

    /// The sequence the next message gets.
    pub fn next_seq(&self) -> u64 {
        self.writer.next_seq()
    }

    /// Publish the bytes `fill` writes in place into the next slot (it returns how many, or
    /// `None` to abandon the write: the slot stays unpublished). No copy.
    pub fn publish_with(
        &mut self,
        fill: impl FnOnce(&mut [u8]) -> Option<usize>,
    ) -> Result<Option<u64>, StreamError> {
        match self.writer.write(0, |buf| fill(buf).ok_or(())) {
            Ok(Ok(seq)) => Ok(Some(seq)),
            Ok(Err(())) => Ok(None),
            Err(source) => Err(StreamError::Write {
                stream: self.name.clone(),
                source,
            }),
        }
    }

    /// The messages the ring still holds whole, newest first, each given to `read` with its
    /// sequence until one returns `Some`; that answer. A message its writer died in the
    /// middle of was never published and is not among them.
    pub fn newest_first<R>(&self, mut read: impl FnMut(u64, &[u8]) -> Option<R>) -> Option<R> {
        let map = self.writer.map();
        let newest = map.header().published.load(Ordering::Acquire);
        let count = u64::from(map.geometry().slot_count);
        (newest.saturating_sub(count - 1).max(1)..=newest)
            .rev()
            .find_map(|seq| {
                syncra_protocol::ring::read_published(map, seq, |b, _| read(seq, b)).flatten()
            })
    }
}

/// The writing end of a bulk stream: a typed header `H` and raw bytes per message.
#[derive(Debug)]
pub struct BulkProducer<H> {
    name: String,
    writer: RingWriter,
    _type: PhantomData<fn(&H)>,
}

impl<H: Serialize> BulkProducer<H> {
    /// The sequence the next message gets.
    pub fn next_seq(&self) -> u64 {
        self.writer.next_seq()
    }

    /// Bytes of raw payload one message can hold.
    pub fn capacity(&self) -> usize {
        self.writer.map().geometry().slot_size as usize - BULK_HEADER
    }

    /// Publish `header` and the raw bytes `fill` writes in place into the slot (it returns how
    /// many it wrote). No copy: `fill` renders or mixes straight into shared memory.
    pub fn publish_with(
        &mut self,
        header: &H,
        fill: impl FnOnce(&mut [u8]) -> usize,
    ) -> Result<u64, StreamError> {
        let written = self.writer.write(0, |buf| {
            let (head, raw) = buf.split_at_mut(BULK_HEADER);
            let mut cursor = std::io::Cursor::new(&mut head[4..]);
            rmp_serde::encode::write_named(&mut cursor, header)?;
            let hlen = cursor.position() as u32;
            head[..4].copy_from_slice(&hlen.to_le_bytes());
            let n = fill(raw).min(raw.len());
            Ok::<_, rmp_serde::encode::Error>(BULK_HEADER + n)
        });
        match written {
            Ok(Ok(seq)) => Ok(seq),
            Ok(Err(e)) => Err(StreamError::Malformed {
                stream: self.name.clone(),
                seq: self.writer.next_seq() - 1,
                message: format!("the header does not fit its {} bytes: {e}", BULK_HEADER - 4),
            }),
            Err(source) => Err(StreamError::Write {
                stream: self.name.clone(),
                source,
            }),
        }
    }

    /// Publish `header` and a copy of `bytes`.
    pub fn publish(&mut self, header: &H, bytes: &[u8]) -> Result<u64, StreamError> {
        if bytes.len() > self.capacity() {
            return Err(StreamError::Write {
                stream: self.name.clone(),
                source: WriteError::TooLarge {
                    len: bytes.len(),
                    slot_size: self.capacity(),
                },
            });
        }
        self.publish_with(header, |raw| {
            raw[..bytes.len()].copy_from_slice(bytes);
            bytes.len()
        })
    }
}

/// One message a consumer received.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample<T> {
    /// Its sequence number.
    pub seq: u64,
    /// Messages missed since the previous sample (dropped, superseded, or lost to a producer
    /// restart); 0 when none.
    pub gap: u64,
    /// Incarnation of the producer that published it.
    pub producer_incarnation: u64,
    /// Publish to receive, across processes.
    pub latency: Duration,
    /// The message.
    pub value: T,
}

/// The reading end of a stream of `T`. Subscribed before its producer declared the stream,
/// it is *pending*: it has no messages until the stream appears, then attaches on its own.
#[derive(Debug)]
pub struct Consumer<T> {
    name: String,
    reader: Option<RingReader>,
    pending: Option<Pending>,
    /// Shared with the event loops watching this consumer.
    watch: Arc<Mutex<WatchState>>,
    /// Why it can never attach (the stream came with another type).
    refused: Option<(RefusalKind, String)>,
    bell: Option<AsyncFd<OwnedFd>>,
    _type: PhantomData<fn() -> T>,
}

impl<T> crate::events::Watch for Consumer<T> {
    fn watch_handle(&self) -> crate::events::WatchHandle {
        crate::events::WatchHandle(self.watch.clone())
    }
}

impl<T> crate::events::Watch for Subscription<T> {
    /// A watched subscription wakes the loop when a matching stream appears: take it with
    /// [`Subscription::next_stream`].
    fn watch_handle(&self) -> crate::events::WatchHandle {
        crate::events::WatchHandle(self.watch.clone())
    }
}

impl<H> crate::events::Watch for BulkConsumer<H> {
    fn watch_handle(&self) -> crate::events::WatchHandle {
        crate::events::WatchHandle(self.inner.watch.clone())
    }
}

/// A lazy subscription not attached yet: where its stream will be pushed, and its end.
#[derive(Debug)]
struct Pending {
    pushes: Pushes,
    _ends: Unsubscribe,
}

fn sample<T>(m: Received, value: T) -> Sample<T> {
    Sample {
        seq: m.seq,
        gap: m.gap,
        producer_incarnation: m.producer_incarnation,
        latency: Duration::from_nanos(ring::monotonic_ns().saturating_sub(m.publish_ns)),
        value,
    }
}

impl<T> Consumer<T> {
    fn new(name: String, reader: RingReader) -> Self {
        let watch = Arc::new(Mutex::new(WatchState {
            waker: reader.waker().ok(),
            pushes: None,
        }));
        Consumer {
            name,
            reader: Some(reader),
            pending: None,
            watch,
            refused: None,
            bell: None,
            _type: PhantomData,
        }
    }

    fn pending(name: String, client: Arc<BrokerClient>, id: u64, pushes: Pushes) -> Self {
        let watch = Arc::new(Mutex::new(WatchState {
            waker: None,
            pushes: Some(pushes.clone()),
        }));
        Consumer {
            name,
            reader: None,
            watch,
            pending: Some(Pending {
                pushes,
                _ends: Unsubscribe { client, id },
            }),
            refused: None,
            bell: None,
            _type: PhantomData,
        }
    }

    /// The stream's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the stream exists and this consumer is attached to it (a consumer subscribed
    /// before its producer declared the stream attaches when it does).
    pub fn is_attached(&self) -> bool {
        self.reader.is_some()
    }

    /// Read again from message `seq` on (what this consumer had read since, and lost: a world
    /// resuming from its last durable state re-applies the inputs it read after it). Within
    /// what it has read and the ring still holds. `Ok(None)`: not attached yet (ask again
    /// later); `Ok(Some(moved))` otherwise.
    pub fn rewind_to(&mut self, seq: u64) -> Result<Option<bool>, StreamError> {
        if !self.attach(None)? {
            return Ok(None);
        }
        Ok(self.reader.as_mut().map(|r| r.rewind_to(seq)))
    }

    /// Attach if the Broker pushed the stream, waiting up to `wait` for it; whether attached.
    fn attach(&mut self, wait: Option<Duration>) -> Result<bool, StreamError> {
        if self.reader.is_some() {
            return Ok(true);
        }
        if let Some((kind, message)) = &self.refused {
            return Err(StreamError::Refused {
                kind: kind.clone(),
                message: message.clone(),
            });
        }
        let Some(p) = &self.pending else {
            return Ok(false);
        };
        let push = match wait {
            Some(t) if !t.is_zero() => p.pushes.recv_timeout(t),
            _ => p.pushes.try_recv(),
        };
        match push {
            None => Ok(false),
            Some(push) => self.take(push).map(|()| true),
        }
    }

    fn take(&mut self, push: Push) -> Result<(), StreamError> {
        match push {
            Push::Added(att, fds) => {
                let (att, reader) = attach_all(vec![att], fds)?
                    .pop()
                    .ok_or_else(|| link_err("attaching a stream")("the Broker pushed no stream"))?;
                self.name = att.stream.spec.name;
                *lock(&self.watch) = WatchState {
                    waker: reader.waker().ok(),
                    pushes: None,
                };
                self.reader = Some(reader);
                self.pending = None;
                Ok(())
            }
            Push::Attached(name, reader) => {
                self.name = name;
                *lock(&self.watch) = WatchState {
                    waker: reader.waker().ok(),
                    pushes: None,
                };
                self.reader = Some(reader);
                self.pending = None;
                Ok(())
            }
            Push::Refused(kind, message) => {
                self.pending = None;
                *lock(&self.watch) = WatchState::default();
                self.refused = Some((kind.clone(), message.clone()));
                Err(StreamError::Refused { kind, message })
            }
        }
    }

    /// Read the next message in place with `read` (zero-copy), waiting up to `timeout`.
    /// A torn read (the producer overwrote the slot meanwhile) is discarded and the next
    /// message read instead; `read` may see garbage then, and must not panic on it.
    pub fn read_with<R>(
        &mut self,
        timeout: Duration,
        mut read: impl FnMut(&[u8]) -> R,
    ) -> Result<Option<(Received, R)>, StreamError> {
        let deadline = Instant::now() + timeout;
        if !self.attach(Some(timeout))? {
            return Ok(None);
        }
        let reader = self.reader.as_mut().expect("attached");
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match reader.read_timeout(Some(left), |b, _| read(b)) {
                ReadOutcome::Message(m, r) => return Ok(Some((m, r))),
                ReadOutcome::Empty => return Ok(None),
                ReadOutcome::Torn { .. } => continue,
            }
        }
    }

    /// Torn reads discarded so far.
    pub fn torn(&self) -> u64 {
        self.reader
            .as_ref()
            .map(|r| r.cell().torn.load(Ordering::Relaxed))
            .unwrap_or(0)
    }
}

impl<T: DeserializeOwned> Consumer<T> {
    fn decode(
        &self,
        m: Received,
        r: Result<T, rmp_serde::decode::Error>,
    ) -> Result<Sample<T>, StreamError> {
        match r {
            Ok(v) => Ok(sample(m, v)),
            Err(e) => Err(StreamError::Malformed {
                stream: self.name.clone(),
                seq: m.seq,
                message: e.to_string(),
            }),
        }
    }

    /// The next message if one is waiting.
    pub fn try_recv(&mut self) -> Result<Option<Sample<T>>, StreamError> {
        if !self.attach(None)? {
            return Ok(None);
        }
        let reader = self.reader.as_mut().expect("attached");
        loop {
            match reader.try_read(|b, _| rmp_serde::from_slice::<T>(b)) {
                ReadOutcome::Message(m, r) => return self.decode(m, r).map(Some),
                ReadOutcome::Empty => return Ok(None),
                ReadOutcome::Torn { .. } => continue,
            }
        }
    }

    /// The next message, waiting up to `timeout` (blocking; for render loops and threads).
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Option<Sample<T>>, StreamError> {
        match self.read_with(timeout, |b| rmp_serde::from_slice::<T>(b))? {
            Some((m, r)) => self.decode(m, r).map(Some),
            None => Ok(None),
        }
    }

    /// The next message (async); a pending consumer first waits for its stream.
    pub async fn recv(&mut self) -> Result<Sample<T>, StreamError> {
        while !self.attach(None)? {
            let pushes = self.pending.as_ref().map(|p| p.pushes.clone());
            match pushes {
                Some(pushes) => {
                    let push = pushes.recv().await;
                    self.take(push)?;
                }
                None => {
                    return Err(link_err("waiting for a stream")(
                        "a consumer with no stream and no subscription",
                    ));
                }
            }
        }
        loop {
            if let Some(s) = self.try_recv()? {
                return Ok(s);
            }
            let reader = self.reader.as_ref().expect("attached");
            if self.bell.is_none() {
                let fd = reader
                    .bell()
                    .try_clone_to_owned()
                    .map_err(link_err("duplicating the consumer's doorbell"))?;
                // SAFETY: `fd` is an OwnedFd moved into the AsyncFd, open until it is dropped.
                let afd =
                    unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
                        .map_err(link_err("registering the consumer's doorbell"))?;
                self.bell = Some(afd);
            }
            let reader = self.reader.as_ref().expect("attached");
            if reader.prepare_wait() {
                let bell = self.bell.as_ref().expect("set above");
                let mut guard = bell
                    .readable()
                    .await
                    .map_err(link_err("waiting on the consumer's doorbell"))?;
                guard.clear_ready();
                self.reader.as_ref().expect("attached").finish_wait();
            }
        }
    }
}

/// The reading end of a bulk stream.
#[derive(Debug)]
pub struct BulkConsumer<H> {
    inner: Consumer<H>,
}

impl<H: DeserializeOwned> BulkConsumer<H> {
    /// The stream's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Read the next message in place, waiting up to `timeout`: `read` gets the header and
    /// the raw bytes in shared memory (zero-copy). Torn reads are discarded.
    pub fn read_with<R>(
        &mut self,
        timeout: Duration,
        mut read: impl FnMut(&H, &[u8]) -> R,
    ) -> Result<Option<(Received, R)>, StreamError> {
        let got = self.inner.read_with(timeout, |b| {
            if b.len() < BULK_HEADER {
                return None;
            }
            let hlen = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
            let head = b.get(4..4 + hlen.min(BULK_HEADER - 4))?;
            let h: H = rmp_serde::from_slice(head).ok()?;
            Some(read(&h, &b[BULK_HEADER..]))
        })?;
        match got {
            None => Ok(None),
            Some((m, Some(r))) => Ok(Some((m, r))),
            Some((m, None)) => Err(StreamError::Malformed {
                stream: self.inner.name.clone(),
                seq: m.seq,
                message: "bad bulk header".into(),
            }),
        }
    }
}

/// A pattern subscription: the streams matching now, and those declared later. Dropping it
/// ends the subscription (the consumers it gave keep their streams).
#[derive(Debug)]
pub struct Subscription<T> {
    pushes: Pushes,
    /// Shared with the event loops watching this subscription.
    watch: Arc<Mutex<WatchState>>,
    /// Ends the subscription when dropped.
    _ends: Unsubscribe,
    _type: PhantomData<fn() -> T>,
}

impl<T> Subscription<T> {
    /// The next matching stream (those that existed first), waiting up to `timeout` for one
    /// declared later.
    pub fn next_stream(&mut self, timeout: Duration) -> Result<Option<Consumer<T>>, StreamError> {
        let push = if timeout.is_zero() {
            self.pushes.try_recv()
        } else {
            self.pushes.recv_timeout(timeout)
        };
        match push {
            None => Ok(None),
            Some(Push::Attached(name, reader)) => Ok(Some(Consumer::new(name, reader))),
            Some(Push::Added(att, fds)) => {
                let (att, reader) = attach_all(vec![att], fds)?
                    .pop()
                    .ok_or_else(|| link_err("attaching a stream")("the Broker pushed no stream"))?;
                Ok(Some(Consumer::new(att.stream.spec.name, reader)))
            }
            Some(Push::Refused(kind, message)) => Err(StreamError::Refused { kind, message }),
        }
    }
}
