//! `syncra-node`: what a child process links to become a node of a Syncra runtime.
//!
//! One call, [`Node::join`], does everything a child owes the runtime that spawned it:
//!
//! - reads its boot frame from the inherited socket (fd 3): its name, incarnation, session
//!   secrets and its own config chunk;
//! - installs a panic hook that leaves the panic message and backtrace in the inherited panic
//!   buffer (fd 4) for the crash record, then ends the process — a panic on any thread is a crash;
//! - starts a ractor_cluster node (its mandatory TCP listener bound to loopback) on a
//!   background thread and joins the runtime over the inherited socket;
//! - serves a graceful shutdown request (from the runtime, or SIGTERM/SIGINT);
//! - exits when the runtime is gone.
//!
//! A driver is best written on the skeleton, [`driver`]: one [`driver::Driver`]
//! implementation, run by [`driver::run`], with one event loop ([`events`]) and typed,
//! tagged messages ([`message!`](macro@message), [`Message`], [`Request`]). The rest of this
//! page is what the skeleton does for it.
//!
//! The caller's main loop then announces readiness with [`Node::ready`] and proves it is alive
//! with [`Node::heartbeat`] — from the loop itself, so that a stuck loop stops the beats and
//! the runtime sees the hang. No background timer beats on the loop's behalf.
//!
//! ```no_run
//! let node = syncra_node::Node::join().unwrap_or_else(|e| e.exit());
//! let settings: std::collections::BTreeMap<String, String> = node.settings().unwrap_or_else(|e| e.exit());
//! node.ready();
//! while !node.shutdown_requested() {
//!     // ... one iteration of the main loop ...
//!     node.heartbeat(None);
//! }
//! ```

#![warn(missing_docs)]

mod agent;
mod cluster;
mod crash;
mod direct;
pub mod driver;
pub mod events;
mod mailbox;
pub mod messaging;
mod panic;
mod standalone;
pub mod streams;

pub use messaging::{CallError, Delivery, Incoming, MessageError, Returned, Undelivered};
pub use streams::{
    BulkConsumer, BulkProducer, Consumer, Producer, RawProducer, Sample, StreamError,
    StreamOptions, Subscription,
};
pub use syncra_protocol::boot::{BootError, exit_code};
pub use syncra_protocol::broker::RefusalKind;
pub use syncra_protocol::message;
pub use syncra_protocol::message::{Message, Request, TagMismatch};
pub use syncra_protocol::node::{Payload, Undeliverable};
pub use syncra_protocol::ring::{Policy, Received, WriteError};
pub use syncra_protocol::status::NodeMetrics;
pub use syncra_protocol::wire::DecodeError;
pub use syncra_protocol::{BoxError, NodeName, PROTOCOL_VERSION, StepError};

pub use syncra_protocol::page::MAX_FIGURES;
pub use syncra_protocol::status::FigureKind;

/// A named figure of this node, shown in `syncra status` ([`Node::figure`]).
#[derive(Clone)]
pub struct Figure {
    slot: Option<(Arc<NodePage>, usize)>,
    name: Arc<str>,
    kind: FigureKind,
}

impl std::fmt::Debug for Figure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Figure")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("reported", &self.slot.is_some())
            .finish()
    }
}

impl Figure {
    /// Set the figure's value (a gauge: the value now).
    pub fn set(&self, value: f64) {
        if let Some((page, i)) = &self.slot
            && let Some(slot) = page.figure_slot(*i)
        {
            slot.set(value);
        }
    }

    /// Add to the figure's value (a counter).
    pub fn add(&self, by: f64) {
        if let Some((page, i)) = &self.slot
            && let Some(slot) = page.figure_slot(*i)
        {
            slot.add(by);
        }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Gauge or counter.
    pub fn kind(&self) -> FigureKind {
        self.kind
    }
}

/// What the renderer publishes and how it frames the worlds (camera, entity look).
pub mod render {
    pub use syncra_protocol::render::{
        AMBIENT, Camera, ENTITY_HALF_SIZE, FRAME_STREAM, FrameHeader, LIGHT_TOWARDS,
        SPECTRUM_BANDS, SPECTRUM_HEIGHT, SPECTRUM_LOW_HZ, SPECTRUM_RGB, WorldView, shade,
        spectrum_bar, spectrum_level,
    };
}

/// What the window driver publishes: its identity and its events.
pub mod window {
    pub use syncra_protocol::window::{
        EVENTS_STREAM, FrameShown, IDENTITY_STREAM, Modifiers, Present, SHOWN_STREAM, WindowEvent,
        WindowIdentity,
    };
}

/// What worlds ask the audio driver for, and what it publishes: the mix and its spectrum.
pub mod audio {
    pub use syncra_protocol::audio::*;
}

/// What the input driver publishes (events and actions), and the haptics it takes.
pub mod input {
    pub use syncra_protocol::input::*;
}

/// What the XR driver publishes (poses, controller changes) and takes (the renderer's eye
/// frames, haptic pulses), and how an eye sees the arena.
pub mod xr {
    pub use syncra_protocol::xr::*;
}

/// What every world publishes, so a driver can read it with `syncra-node` alone.
pub mod world {
    pub use syncra_protocol::world::{
        EntitySnapshot, SCENE_STREAM, SceneSnapshot, WorldSettings, scene_slot_size,
    };

    /// The full name of world `world`'s scene stream: `world/<world>/scene`.
    ///
    /// ```
    /// assert_eq!(syncra_node::world::scene_stream("main"), "world/main/scene");
    /// assert!(syncra_node::streams::matches(syncra_node::world::ALL_SCENES, "world/main/scene"));
    /// ```
    pub fn scene_stream(world: &str) -> String {
        format!(
            "{}{world}/{SCENE_STREAM}",
            syncra_protocol::status::WORLD_PREFIX
        )
    }

    /// The pattern that matches every world's scene stream: `world/*/scene`.
    pub const ALL_SCENES: &str = "world/*/scene";
}

use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use ractor::ActorRef;
use serde::de::DeserializeOwned;
use syncra_protocol::boot::{Boot, CLUSTER_FD};
use syncra_protocol::node::{Envelope, NodeToRuntime, RuntimeInbox};
use syncra_protocol::page::NodePage;
use syncra_protocol::wire;
use tokio::sync::Notify;

/// The default log filter of a node (overridden by `SYNCRA_LOG`).
pub const DEFAULT_LOG_FILTER: &str =
    "info,ractor=warn,ractor_cluster=error,symphonia_core=warn,symphonia_format_ogg=warn";

/// How long joining may take before the node gives up (the runtime's start timeout is usually
/// the tighter bound).
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a process could not become a node.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// fd 3 is not an inherited socket: the process was not started by a runtime.
    #[error(
        "fd {CLUSTER_FD} is not an inherited socket: a Syncra node is started by the `syncra` runtime (add it to the config); a driver on `syncra_node::driver` also runs by hand with --standalone"
    )]
    NotSpawnedByRuntime,
    /// A node run without a runtime ([`Node::standalone`]) could not set itself up.
    #[error("running standalone: {0}")]
    Standalone(#[source] StepError),
    /// The boot frame could not be read.
    #[error("reading the boot frame: {0}")]
    Boot(#[from] BootError),
    /// The node page could not be mapped.
    #[error("the node page (fd {fd}): {source}")]
    Page {
        /// The fd.
        fd: i32,
        /// The step that failed and why.
        #[source]
        source: StepError,
    },
    /// The broker socket (streams) is unusable.
    #[error("the broker socket (fd {fd}): {source}")]
    Broker {
        /// The fd.
        fd: i32,
        /// The step that failed and why.
        #[source]
        source: StepError,
    },
    /// The node's own machinery (its cluster thread, its event loop's eventfd) could not
    /// start.
    #[error("preparing the node: {0}")]
    Thread(#[source] StepError),
    /// The cluster node could not start or join.
    #[error("joining the cluster as {node}: {source}")]
    Cluster {
        /// This node.
        node: NodeName,
        /// The step that failed and why.
        #[source]
        source: StepError,
    },
}

impl JoinError {
    /// The exit code that tells the runtime why this node could not start.
    pub fn exit_code(&self) -> i32 {
        match self {
            JoinError::Boot(BootError::Decode(syncra_protocol::wire::DecodeError::Version {
                ..
            })) => exit_code::PROTOCOL_MISMATCH,
            JoinError::NotSpawnedByRuntime
            | JoinError::Boot(_)
            | JoinError::Page { .. }
            | JoinError::Broker { .. } => exit_code::BAD_BOOT,
            JoinError::Thread(_) | JoinError::Cluster { .. } | JoinError::Standalone(_) => 1,
        }
    }

    /// Print this error to stderr and exit with [`JoinError::exit_code`].
    pub fn exit(&self) -> ! {
        eprintln!("syncra-node: {self}");
        std::process::exit(self.exit_code())
    }
}

/// The node's config chunk did not match what the node expects.
#[derive(Debug, thiserror::Error)]
#[error("the settings of {node} do not fit this node: {}", self.what())]
pub struct SettingsError {
    node: NodeName,
    /// The key, as a path (`size.w`, `modes[2]`), when the error is in one.
    key: Option<String>,
    message: String,
    page: Option<Arc<NodePage>>,
}

impl SettingsError {
    /// What is wrong, naming the key when the decoder knows it.
    pub fn reason(&self) -> String {
        format!("its settings do not fit: {}", self.what())
    }

    /// The key the error is in (`rate_hz`, `size.w`), as a path; `None` for the table as a
    /// whole (a missing or unknown field names itself in [`SettingsError::message`]).
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// What the decoder said.
    pub fn message(&self) -> &str {
        &self.message
    }

    fn what(&self) -> String {
        match &self.key {
            Some(key) => format!("`{key}`: {}", self.message),
            None => self.message.clone(),
        }
    }

    /// Print this error to stderr, leave it for the runtime (status and the crash record
    /// show it), and exit with the code that says the settings were refused (a permanent
    /// start failure).
    pub fn exit(&self) -> ! {
        eprintln!("syncra-node: {self}");
        if let Some(page) = &self.page {
            page.write_exit_note(&self.reason());
        }
        std::process::exit(exit_code::BAD_SETTINGS)
    }
}

/// A heartbeat that can be moved into the loop that does a driver's work when that loop
/// belongs to a library (winit's event loop, an audio callback): `Clone + Send`, one atomic
/// increment per beat. Beat from inside that loop, never from a timer thread of its own — a
/// timer would keep beating while the loop hangs.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    page: Option<Arc<NodePage>>,
}

impl Heartbeat {
    /// One heartbeat, with the loop's metrics when it has them.
    pub fn beat(&self, metrics: Option<&NodeMetrics>) {
        if let Some(page) = &self.page {
            page.vitals().beat(metrics);
        }
    }
}

/// Callbacks run once when a shutdown is requested.
#[derive(Default)]
pub(crate) struct ShutdownCallbacks(Mutex<Vec<Box<dyn FnOnce() + Send>>>);

impl std::fmt::Debug for ShutdownCallbacks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ShutdownCallbacks")
    }
}

impl ShutdownCallbacks {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Box<dyn FnOnce() + Send>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// State shared between the caller's thread and the node's cluster thread.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) shutdown: AtomicBool,
    pub(crate) shutdown_notify: Notify,
    pub(crate) shutdown_grace_ms: AtomicU64,
    /// Wakes blocking sleepers ([`Node::sleep_until`]) on shutdown.
    pub(crate) wake: (Mutex<()>, Condvar),
    /// The runtime's gateway, once joined.
    pub(crate) gateway: std::sync::OnceLock<ActorRef<RuntimeInbox>>,
    /// This incarnation's token.
    pub(crate) token: syncra_protocol::boot::Token,
    /// Ids of routed messages and calls.
    pub(crate) next_id: AtomicU64,
    /// Calls waiting for their answer, by id.
    pub(crate) pending:
        Mutex<std::collections::HashMap<u64, Arc<mailbox::Mailbox<messaging::Answer>>>>,
    /// Messages and calls from other nodes.
    pub(crate) inbox: mailbox::Mailbox<Incoming>,
    /// Messages the runtime gave back.
    pub(crate) returned: mailbox::Mailbox<Returned>,
    /// Calls answered on the link thread, by request type tag ([`Node::serve_calls`]).
    pub(crate) handlers: std::sync::RwLock<std::collections::HashMap<String, messaging::Handler>>,
    /// The link thread's tokio runtime ([`Node::spawn`]).
    pub(crate) runtime: std::sync::OnceLock<tokio::runtime::Handle>,
    /// An eventfd rung whenever something an event loop waits for arrives (a message, a
    /// returned message, a stream pushed by the Broker, shutdown): [`events::Events`].
    pub(crate) loop_bell: Arc<OwnedFd>,
    /// Run when a shutdown is requested ([`Node::on_shutdown`]).
    pub(crate) on_shutdown: ShutdownCallbacks,
    /// Direct links to and from other nodes.
    pub(crate) links: direct::Links,
}

impl Shared {
    /// Send `body` to the runtime (dropped with a debug line once the link is gone: the
    /// cluster thread then ends the process).
    pub(crate) fn send(&self, body: NodeToRuntime) {
        let Some(gateway) = self.gateway.get() else {
            tracing::debug!("no runtime (standalone): a message to it was dropped");
            return;
        };
        let packet = wire::encode(&Envelope {
            token: self.token,
            body,
        });
        if let Err(e) = gateway.cast(RuntimeInbox::Packet(packet)) {
            tracing::debug!(error = %e, "could not reach the runtime");
        }
    }

    pub(crate) fn request_shutdown(&self, grace_ms: u64) {
        self.shutdown_grace_ms.store(grace_ms, Ordering::Relaxed);
        if !self.shutdown.swap(true, Ordering::AcqRel) {
            self.shutdown_notify.notify_waiters();
            self.wake_loop();
            {
                let _guard = self.wake.0.lock();
                self.wake.1.notify_all();
            }
            let callbacks = std::mem::take(&mut *self.on_shutdown.lock());
            for f in callbacks {
                f();
            }
        }
    }

    /// Wake an event loop waiting in [`events::Events`].
    pub(crate) fn wake_loop(&self) {
        syncra_protocol::ring::ring(std::os::fd::AsFd::as_fd(&*self.loop_bell));
    }
}

/// A node on another host has a lease in its page, which its agent keeps in the future while
/// the runtime answers. Once it has passed, the runtime may already be starting this node's
/// replacement elsewhere: this thread ends the process then, whatever the rest of it is doing
/// (the agent kills it too; this covers an agent that is stopped or gone).
fn keep_lease(page: Arc<NodePage>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("syncra-lease".into())
        .spawn(move || {
            loop {
                let Some(until) = page.vitals().lease() else {
                    return;
                };
                let now = syncra_protocol::audio::monotonic_ns();
                if now >= until {
                    let why = "its lease ran out: the runtime did not answer its host's agent for the host's deadline, so it ended itself (its replacement may be starting)";
                    page.write_exit_note(why);
                    eprintln!("syncra-node: {why}");
                    // SAFETY: `_exit` ends the process at once, without unwinding or atexit
                    // handlers; nothing else must run in a node past its lease.
                    unsafe { libc::_exit(syncra_protocol::boot::exit_code::LINK_LOST) }
                }
                std::thread::sleep(Duration::from_nanos(until - now) + Duration::from_millis(1));
            }
        })
        .map(|_| ())
}

/// This process, as a node of the runtime that spawned it.
#[derive(Debug)]
pub struct Node {
    boot: Boot,
    shared: Arc<Shared>,
    broker: Option<Arc<streams::BrokerClient>>,
    started: Instant,
    beat_interval: Duration,
    page: Option<Arc<NodePage>>,
}

impl Node {
    /// Become a node: read the boot frame, install the panic hook, join the runtime's cluster
    /// and return once the runtime can hear this node. Blocks; call it before starting other
    /// threads where possible.
    pub fn join() -> Result<Node, JoinError> {
        init_logging();
        let socket = take_inherited_socket()?;
        // The cluster thread starts while the boot frame is awaited (a warm spare waits here).
        let cluster = cluster::prestart().map_err(JoinError::Thread)?;
        let boot = Boot::read_from(&mut &socket, CLUSTER_FD)?;
        let t0 = Instant::now();
        panic::install(&boot);
        crash::install(&boot);
        let shared = new_shared(boot.cluster.token)?;
        let broker = match boot.broker_fd {
            Some(fd) => Some(take_broker_socket(
                fd,
                boot.incarnation,
                shared.loop_bell.clone(),
                Arc::downgrade(&shared),
            )?),
            None => None,
        };
        if boot.direct_links
            && let Some(b) = &broker
        {
            match b.duplicate_socket() {
                Ok(socket) => shared.links.enable(socket),
                Err(e) => tracing::warn!(error = %e, "no direct links: the broker socket"),
            }
        }
        let page = match boot.page_fd {
            Some(fd) => {
                // SAFETY: the page fd is inherited for this purpose; it is only borrowed here
                // (and stays open for the panic hook).
                let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
                let _ = rustix::io::fcntl_setfd(borrowed, rustix::io::FdFlags::CLOEXEC);
                let page = NodePage::map(borrowed).map_err(|e| JoinError::Page {
                    fd,
                    source: StepError::new("mapping it", e),
                })?;
                if !page.is_initialised() {
                    return Err(JoinError::Page {
                        fd,
                        source: StepError::new(
                            "checking it",
                            "not initialised by a runtime of this protocol version",
                        ),
                    });
                }
                let page = Arc::new(page);
                if page.vitals().lease().is_some() {
                    keep_lease(page.clone()).map_err(|e| {
                        JoinError::Thread(StepError::new("starting the lease thread", e))
                    })?;
                }
                Some(page)
            }
            None => None,
        };
        let booted = t0.elapsed();
        let gateway = cluster
            .join(&boot, socket, shared.clone())
            .map_err(|source| JoinError::Cluster {
                node: boot.node.clone(),
                source,
            })?;
        let joined = t0.elapsed();
        let _ = shared.gateway.set(gateway);
        let node = Node {
            beat_interval: Duration::from_millis(boot.heartbeat.interval_ms.max(1)),
            boot,
            broker,
            shared,
            started: Instant::now(),
            page,
        };
        node.tell(NodeToRuntime::Hello {
            protocol: syncra_protocol::PROTOCOL_VERSION,
            pid: std::process::id(),
        });
        tracing::info!(
            node = %node.boot.node,
            incarnation = node.boot.incarnation,
            pid = std::process::id(),
            boot_us = booted.as_micros() as u64,
            join_us = (joined - booted).as_micros() as u64,
            "joined the runtime"
        );
        Ok(node)
    }

    /// This node's logical name (`world/arena`, `renderer`).
    pub fn name(&self) -> &NodeName {
        &self.boot.node
    }

    /// Which incarnation this process is: 1 for the first spawn, +1 per restart.
    pub fn incarnation(&self) -> u64 {
        self.boot.incarnation
    }

    /// Decode this node's config chunk into `T`. Its error's [`SettingsError::exit`] tells
    /// the runtime what did not fit, so `syncra status` names it.
    pub fn settings<T: DeserializeOwned>(&self) -> Result<T, SettingsError> {
        let error = |key: Option<String>, message: String| SettingsError {
            node: self.boot.node.clone(),
            key,
            message,
            page: self.page.clone(),
        };
        // Through a self-describing value, so that a type error names its key and says what
        // was expected ("invalid type: string \"abc\", expected f64") in the user's terms.
        let value: serde_json::Value = wire::decode("config chunk", &self.boot.settings)
            .map_err(|e| error(None, e.to_string()))?;
        serde_path_to_error::deserialize(value).map_err(|e| {
            let key = e.path().to_string();
            let key = (key != ".").then_some(key);
            error(key, e.into_inner().to_string())
        })
    }

    /// A [`Heartbeat`] to move into a library's loop.
    pub fn heartbeat_handle(&self) -> Heartbeat {
        Heartbeat {
            page: self.page.clone(),
        }
    }

    /// Run `f` once when a shutdown is requested (at once if one already was), on the thread
    /// that received the request: for a driver whose main loop belongs to a library, to post
    /// a quit into that loop (winit's `EventLoopProxy`, a channel). `f` must be quick.
    pub fn on_shutdown(&self, f: impl FnOnce() + Send + 'static) {
        let mut callbacks = self.shared.on_shutdown.lock();
        if self.shutdown_requested() {
            drop(callbacks);
            f();
        } else {
            callbacks.push(Box::new(f));
        }
    }

    /// Leave the runtime now with exit code `code`, telling it why (`reason` shows in
    /// `syncra status` and the crash record). For a node that cannot go on: a start that
    /// failed, a device that is gone.
    pub fn exit_with(&self, code: i32, reason: &str) -> ! {
        tracing::error!(node = %self.boot.node, code, "{reason}");
        if let Some(page) = &self.page {
            page.write_exit_note(reason);
        }
        std::process::exit(code)
    }

    /// Tell the runtime this node is ready: it is initialised and serves its purpose.
    pub fn ready(&self) {
        tracing::info!(node = %self.boot.node, after_ms = self.started.elapsed().as_millis() as u64, "ready");
        self.heartbeat(None);
        self.tell(NodeToRuntime::Ready);
    }

    /// Prove this node is alive, with the main loop's metrics when it has them. Call it from
    /// the main loop itself — each tick, frame or period — so that a stuck loop stops the beats
    /// and the runtime sees the hang. It is an atomic increment in shared memory: calling it
    /// every iteration costs nanoseconds and sends nothing.
    pub fn heartbeat(&self, metrics: Option<&NodeMetrics>) {
        if let Some(page) = &self.page {
            page.vitals().beat(metrics);
        }
    }

    /// A named figure this node reports in `syncra status` (and `--json`): a gauge (`fps`,
    /// `queue_depth`: [`Figure::set`]) or a counter (`frames`: [`Figure::add`]). Asking again
    /// for the same name gives the same figure. The handle is `Clone + Send`: update it from
    /// whichever thread does the work; an update is one atomic store in shared memory, read
    /// when someone asks for status. At most [`MAX_FIGURES`] per node; a name beyond them, an
    /// invalid name, or a node run without a runtime gives a figure that goes nowhere.
    pub fn figure(&self, name: &str, kind: FigureKind) -> Figure {
        let slot = self
            .page
            .as_ref()
            .and_then(|page| Some((page.clone(), page.figure(name, kind)?)));
        if slot.is_none() && self.page.is_some() {
            tracing::warn!(
                name,
                "figure not reported: an invalid name, or all {MAX_FIGURES} figures are taken"
            );
        }
        Figure {
            slot,
            name: Arc::from(name),
            kind,
        }
    }

    /// Say in `syncra status` what this node is doing, in one sentence ("output: null, no
    /// audio device"), replacing the sentence before; `""` clears it. It shows while this
    /// incarnation runs (cut to 480 bytes); without a runtime it goes to the log.
    pub fn set_note(&self, note: &str) {
        tracing::info!(note, "status");
        if let Some(page) = &self.page {
            page.status_note().write(note);
        }
    }

    /// Whether the runtime (or a SIGTERM/SIGINT) asked this node to stop. The main loop should
    /// finish its iteration, clean up and return.
    pub fn shutdown_requested(&self) -> bool {
        self.shared.shutdown.load(Ordering::Acquire)
    }

    /// Sleep until `deadline` or until a shutdown is requested, whichever comes first; returns
    /// whether a shutdown was requested. For fixed-rate loops: the loop keeps its heartbeat
    /// while it waits between slow iterations, and wakes at once to stop.
    pub fn sleep_until(&self, deadline: Instant) -> bool {
        let (lock, cv) = &self.shared.wake;
        let mut guard = lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let slept_from = Instant::now();
        let beat_interval = self.beat_interval;
        loop {
            if self.shutdown_requested() {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            let slice = (deadline - now).min(beat_interval);
            guard = cv
                .wait_timeout(guard, slice)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
            // A loop that sleeps longer than a heartbeat interval by design is not hung: beat
            // on its behalf while it waits.
            if slept_from.elapsed() >= beat_interval {
                self.heartbeat(None);
            }
        }
    }

    /// Wait until a shutdown is requested (for async main loops).
    pub async fn wait_shutdown(&self) {
        loop {
            let notified = self.shared.shutdown_notify.notified();
            if self.shutdown_requested() {
                return;
            }
            notified.await;
        }
    }

    /// Milliseconds the runtime grants before it kills this process, once a shutdown was
    /// requested (0 when the request came from a signal).
    pub fn shutdown_grace_ms(&self) -> u64 {
        self.shared.shutdown_grace_ms.load(Ordering::Relaxed)
    }

    /// Ask the runtime to stop everything in order, on the user's behalf: the window was
    /// closed, the user chose "quit". This node is stopped with the rest (its shutdown comes
    /// as usual). Only drivers may; the runtime ignores a world's request.
    pub fn quit(&self, reason: &str) {
        tracing::info!(node = %self.boot.node, reason, "asking the runtime to quit");
        self.tell(NodeToRuntime::Quit {
            reason: reason.to_owned(),
        });
    }

    /// Tell the runtime this node is leaving on its own with `code`, then return (the caller
    /// exits). A transient node that finished its work leaves with code 0.
    pub fn leave(&self, code: i32, reason: &str) {
        tracing::info!(node = %self.boot.node, code, reason, "leaving");
        self.tell(NodeToRuntime::Leaving {
            code,
            reason: reason.to_owned(),
        });
    }

    /// Run `task` on the node's link thread — the thread that carries its messages — and
    /// return its handle. An async caller running there makes calls ([`Node::call_async`])
    /// without a hand-off between threads; a node shared with the task is an
    /// `Arc<Node>`. The task must not block the thread (that stops all of this node's
    /// messaging); a panic in it is a crash of the node, like a panic anywhere else.
    ///
    /// ```no_run
    /// # fn demo(node: syncra_node::Node) {
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// #[derive(serde::Serialize, serde::Deserialize)]
    /// struct GetStats;
    /// #[derive(serde::Serialize, serde::Deserialize)]
    /// struct Stats { frames: u64 }
    /// syncra_node::message!(Stats = "example.stats/1");
    /// syncra_node::message!(GetStats = "example.get-stats/1" => Stats);
    /// let node = Arc::new(node);
    /// let n = node.clone();
    /// let answer = node.spawn(async move {
    ///     n.call_async("renderer", GetStats, Duration::from_secs(1), true)
    ///         .await
    ///         .ok()
    /// });
    /// # }
    /// ```
    pub fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.shared
            .runtime
            .get()
            .expect("the link thread's runtime is set before join returns")
            .spawn(task)
    }

    fn tell(&self, body: NodeToRuntime) {
        self.shared.send(body);
    }
}

/// Take ownership of the inherited fd `fd` if it is a socket, and keep it from leaking into
/// our own children.
/// The state a node's threads share, before it is connected.
pub(crate) fn new_shared(token: syncra_protocol::boot::Token) -> Result<Arc<Shared>, JoinError> {
    Ok(Arc::new(Shared {
        shutdown: AtomicBool::new(false),
        shutdown_notify: Notify::new(),
        shutdown_grace_ms: AtomicU64::new(0),
        wake: (Mutex::new(()), Condvar::new()),
        gateway: std::sync::OnceLock::new(),
        token,
        next_id: AtomicU64::new(1),
        pending: Mutex::new(std::collections::HashMap::new()),
        inbox: mailbox::Mailbox::new(messaging::INBOX_CAPACITY),
        returned: mailbox::Mailbox::new(messaging::INBOX_CAPACITY),
        handlers: std::sync::RwLock::new(std::collections::HashMap::new()),
        runtime: std::sync::OnceLock::new(),
        loop_bell: Arc::new(events::loop_bell().map_err(|e| {
            JoinError::Thread(StepError::new("creating the event loop's eventfd", e))
        })?),
        on_shutdown: ShutdownCallbacks::default(),
        links: direct::Links::default(),
    }))
}

fn take_socket(fd: i32) -> Option<OwnedFd> {
    // SAFETY: `fd` is only borrowed here to inspect it; ownership is taken below only after it
    // has been verified to be an open socket, which by the spawn contract nothing else in this
    // process owns.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let is_socket = rustix::fs::fstat(borrowed)
        .map(|st| rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Socket)
        .unwrap_or(false);
    if !is_socket {
        return None;
    }
    let _ = rustix::io::fcntl_setfd(borrowed, rustix::io::FdFlags::CLOEXEC);
    // SAFETY: an open socket inherited for this purpose; this is its only owner.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Take the cluster socket (fd 3).
fn take_inherited_socket() -> Result<std::os::unix::net::UnixStream, JoinError> {
    take_socket(CLUSTER_FD)
        .map(std::os::unix::net::UnixStream::from)
        .ok_or(JoinError::NotSpawnedByRuntime)
}

/// Take the broker socket and start its client.
fn take_broker_socket(
    fd: i32,
    incarnation: u64,
    loop_bell: Arc<OwnedFd>,
    shared: std::sync::Weak<Shared>,
) -> Result<Arc<streams::BrokerClient>, JoinError> {
    let socket = take_socket(fd).ok_or_else(|| JoinError::Broker {
        fd,
        source: StepError::new("taking it", "not an inherited socket"),
    })?;
    streams::BrokerClient::start(socket, incarnation, loop_bell, shared).map_err(|e| {
        JoinError::Broker {
            fd,
            source: StepError::new("starting the broker client", e),
        }
    })
}

/// Log to stderr (which the runtime writes to this node's log file), filtered by `SYNCRA_LOG`.
/// Does nothing if the process already installed a subscriber.
pub(crate) fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SYNCRA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}
