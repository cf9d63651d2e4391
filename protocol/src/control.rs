//! The control socket: how the CLI (and any other local client) talks to a running runtime.
//!
//! The socket lives in the runtime's run directory (mode 0700). Every frame is a length-prefixed
//! MessagePack value ([`crate::wire::frame`]). The client sends one [`ControlRequest`] in a
//! [`ControlFrame`]; the runtime answers with one [`ControlReply`], except for
//! [`ControlRequest::Subscribe`], which is answered by a stream of [`ControlReply::Event`]
//! until the client hangs up.

use serde::{Deserialize, Serialize};

use crate::crash::CrashRecord;
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
}

/// One crash record and the file it was written to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CrashEntry {
    /// Path of the JSON file.
    pub path: String,
    /// Its content.
    pub record: CrashRecord,
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
    /// The request was refused.
    Error(ControlError),
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
}
