//! The control socket: how the CLI (and any other local client) talks to a running runtime.
//!
//! The socket lives in the runtime's run directory (mode 0700). Every frame is a length-prefixed
//! MessagePack value ([`crate::wire::frame`]). The client sends one [`ControlRequest`] in a
//! [`ControlFrame`]; the runtime answers with one [`ControlReply`], except for
//! [`ControlRequest::Subscribe`], which is answered by a stream of [`ControlReply::Event`]
//! until the client hangs up.

use serde::{Deserialize, Serialize};

use crate::NodeName;
use crate::crash::CrashRecord;
use crate::ring::Geometry;
use crate::status::{LifecycleEvent, StatusReport};

/// File name of the control socket inside the run directory.
pub const SOCKET_NAME: &str = "control.sock";

/// A request with the client's protocol version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ControlFrame {
    /// The client's [`crate::PROTOCOL_VERSION`].
    pub protocol: u32,
    /// What it asks.
    pub request: ControlRequest,
}

/// What a client can ask a running runtime.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ControlRequest {
    /// Every node's state.
    Status,
    /// Restart one node now (a new incarnation, whatever its state).
    Restart {
        /// Node name, e.g. `world/arena`.
        node: String,
    },
    /// Stop one node; it stays stopped until started.
    Stop {
        /// Node name.
        node: String,
    },
    /// Start a stopped or failed node.
    Start {
        /// Node name.
        node: String,
    },
    /// Stop everything in order and exit.
    Shutdown,
    /// Crash records of this session, newest last.
    Crashes {
        /// Only this node's records.
        node: Option<String>,
        /// At most this many (the newest).
        limit: usize,
    },
    /// Stream lifecycle events until the client disconnects.
    Subscribe,
    /// Every declared stream, its producer, consumers, rate and drops.
    Streams,
    /// Call node `node` with a request given as JSON, tagged `tag` (`syncra call`): answered
    /// by [`ControlReply::Answer`]. The callee refuses request types that do not allow it.
    Call {
        /// The callee.
        node: String,
        /// The request's tag.
        tag: String,
        /// The request, as JSON.
        json: String,
        /// How long to wait for the answer, milliseconds.
        timeout_ms: u64,
    },
    /// Send node `node` a message given as JSON, tagged `tag` (`syncra send`).
    Send {
        /// The receiver.
        node: String,
        /// The message's tag.
        tag: String,
        /// The message, as JSON.
        json: String,
    },
    /// Watch one stream without joining it: answered by [`ControlReply::Tap`] with the ring's
    /// fd attached (SCM_RIGHTS), so the client maps it read-only-in-spirit and peeks at the
    /// newest message; a tap holds no consumer cell and never slows the producer.
    Tap {
        /// The stream's name.
        stream: String,
    },
    /// Read the config again (the file it was started with, or `config`), validate it whole,
    /// and apply what changed; with `dry_run`, only say what would change. Answered by
    /// [`ControlReply::Reloaded`].
    Reload {
        /// Another config file (an absolute path), instead of the one it runs.
        config: Option<String>,
        /// Say what would change; change nothing.
        dry_run: bool,
    },
    /// Save world `node`'s newest durable state into the file `out` (an absolute path; it
    /// must not exist). Answered by [`ControlReply::Done`].
    Snapshot {
        /// The world.
        node: String,
        /// Where to write it.
        out: String,
    },
    /// Check the state in the file `file` (an absolute path) against world `node` — its
    /// format, checksum and config — and restart the world from it. Answered by
    /// [`ControlReply::Done`].
    Restore {
        /// The world.
        node: String,
        /// The state file.
        file: String,
    },
    /// Give node `node` a new executable, and restart it alone with it. Answered by
    /// [`ControlReply::Reloaded`].
    Upgrade {
        /// The node.
        node: String,
        /// The new command: a path, or a name as a config's `command`.
        command: String,
    },
}

/// One crash record and the file it was written to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CrashEntry {
    /// Path of the JSON file.
    pub path: String,
    /// Its content.
    pub record: CrashRecord,
    /// Why the file could not be written (a full disk, a missing directory); `None` once it
    /// is written, or while it is being written.
    pub not_written: Option<String>,
}

/// The runtime's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ControlReply {
    /// Answer to [`ControlRequest::Status`].
    Status(StatusReport),
    /// The request was carried out; a sentence for the user.
    Done {
        /// What was done.
        message: String,
    },
    /// Answer to [`ControlRequest::Crashes`].
    Crashes(Vec<CrashEntry>),
    /// One event of a [`ControlRequest::Subscribe`] stream.
    Event(LifecycleEvent),
    /// Answer to [`ControlRequest::Streams`].
    Streams(Vec<StreamView>),
    /// Answer to [`ControlRequest::Tap`]; the ring's fd comes with this frame.
    Tap(StreamView),
    /// Answer to [`ControlRequest::Call`]: the callee's answer, as JSON.
    Answer {
        /// The answer's tag.
        tag: String,
        /// The answer, as JSON.
        json: String,
    },
    /// Answer to [`ControlRequest::Reload`] and [`ControlRequest::Upgrade`]: what changed
    /// (or would), and what became of each node it touched.
    Reloaded {
        /// One line per change (`+ world/b: new (started)`).
        changes: Vec<String>,
        /// Whether it was applied (not a dry run).
        applied: bool,
        /// What became of each node touched (`world/b: ready, incarnation 1`).
        outcomes: Vec<String>,
    },
    /// The request was refused.
    Error(ControlError),
}

/// One stream, as `syncra streams` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamView {
    /// Name.
    pub name: String,
    /// Message type.
    pub type_tag: String,
    /// Producer node.
    pub producer: NodeName,
    /// The producer's host when not the runtime's: its messages cross to this one on a
    /// bridge ([`NodeView::host`](crate::status::NodeView::host)).
    #[serde(default)]
    pub producer_host: Option<String>,
    /// Whether a live producer holds the ring.
    pub producer_live: bool,
    /// Incarnation of the producer that holds (or last held) the ring.
    pub producer_incarnation: u64,
    /// The ring's shape.
    pub geometry: Geometry,
    /// Bytes of shared memory.
    pub ring_bytes: u64,
    /// Sequence of the newest message (0: none yet).
    pub published: u64,
    /// Messages per second over the last sampling period.
    pub rate_hz: f64,
    /// Producers that attached (1 + restarts).
    pub attachments: u64,
    /// Writes that had to wait for space (block policy).
    pub blocked: u64,
    /// Writes that gave up after the block timeout.
    pub timeouts: u64,
    /// Its consumers.
    pub consumers: Vec<ConsumerView>,
}

/// One consumer of a stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConsumerView {
    /// The consuming node.
    pub node: NodeName,
    /// Its host when not the runtime's: a bridge reads this cell for it, so its lag and drops
    /// are the bridge's.
    #[serde(default)]
    pub host: Option<String>,
    /// Its cell in the ring.
    pub cell: u32,
    /// Whether a live incarnation holds it.
    pub active: bool,
    /// Messages published but not yet read.
    pub lag: u64,
    /// Messages received.
    pub received: u64,
    /// Messages lost (lapped, superseded, abandoned).
    pub dropped: u64,
    /// Torn reads discarded.
    pub torn: u64,
}

/// Why a control request was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ControlError {
    /// The category, for programs.
    pub kind: ControlErrorKind,
    /// A sentence for the user naming what was wrong.
    pub message: String,
}

/// Categories of [`ControlError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ControlErrorKind {
    /// No node has that name.
    UnknownNode,
    /// The request could not be decoded.
    BadRequest,
    /// The client speaks another protocol version.
    Version,
    /// The runtime is shutting down.
    ShuttingDown,
    /// The runtime did not finish the request in time (it may still complete).
    Timeout,
    /// No stream has that name.
    UnknownStream,
    /// The runtime serves as many clients (or subscribers) as it takes; try again later.
    Busy,
    /// A call or message from the command line was not delivered or not answered.
    Undelivered,
    /// The callee answered a call from the command line with an error.
    Remote,
    /// The client is not allowed to control the runtime (a process of one of its nodes).
    Forbidden,
    /// A reload's config (or an upgrade's command) is refused: nothing changed.
    Invalid,
}
