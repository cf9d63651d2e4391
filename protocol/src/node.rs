//! Messages between the runtime (the hub node) and a child node over ractor_cluster.
//!
//! Two ractor actors carry them: the runtime's gateway, a member of the process group
//! [`RUNTIME_GROUP`], receives [`RuntimeInbox`]; every child's agent, alone in the group
//! [`agent_group`] of its cluster name, receives [`NodeInbox`]. Both enums carry one
//! MessagePack packet each, decoded by the receiver with [`crate::wire::decode`], because
//! ractor's own decoding cannot report an error (a malformed message could only panic).
//!
//! A child's messages travel in an [`Envelope`] carrying its [`Token`]: the token, known only
//! to the runtime and that incarnation, is what the gateway routes and authenticates by.
//! Heartbeats are not messages: they go through the node's shared page ([`crate::page`]).

use ractor_cluster::RactorClusterMessage;
use serde::{Deserialize, Serialize};

use crate::NodeName;
use crate::boot::Token;
pub use crate::link::UnixLink;

/// The process group holding the runtime's gateway actor.
pub const RUNTIME_GROUP: &str = "syncra.runtime";

/// The process group holding the agent actor of the child whose cluster name is `cluster_name`.
pub fn agent_group(cluster_name: &str) -> String {
    format!("syncra.agent.{cluster_name}")
}

/// A message from a child to the runtime, with the child's credentials.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// The sender's per-incarnation token, from its boot frame.
    pub token: Token,
    /// The message.
    pub body: NodeToRuntime,
}

/// What a child tells the runtime.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum NodeToRuntime {
    /// First message after joining: the child's protocol version and pid.
    Hello {
        /// [`crate::PROTOCOL_VERSION`] of the child.
        protocol: u32,
        /// The child's own pid (as it sees it).
        pid: u32,
    },
    /// The child finished initialising and serves its purpose.
    Ready,
    /// The child is about to exit on its own, with this code.
    Leaving {
        /// The exit code it will use.
        code: i32,
        /// Why, in words.
        reason: String,
    },
    /// The user asked to quit through this node (closed the window): stop the whole runtime
    /// in order, as `syncra shutdown` would. Only drivers may; a world's request is ignored.
    Quit {
        /// Why, in words.
        reason: String,
    },
    /// A message or call for another node, by name: the runtime routes it to the current
    /// incarnation of `to`.
    Route(Routed),
    /// The answer to a call this node received.
    Reply {
        /// The caller.
        to: NodeName,
        /// The caller's incarnation (a caller that restarted meanwhile gets nothing).
        incarnation: u64,
        /// The caller's call id.
        call: u64,
        /// The answer, or why there is none.
        outcome: Result<Payload, String>,
    },
    /// A delivered message this node could not take (its inbox is full): back to the sender.
    Refused {
        /// The sender.
        to: NodeName,
        /// The sender's incarnation.
        incarnation: u64,
        /// The sender's message id.
        id: u64,
        /// Why.
        reason: Undeliverable,
        /// The message itself.
        payload: Payload,
    },
}

/// A typed message body: a MessagePack payload and the type it encodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload {
    /// The payload's [`crate::message::Message::TAG`]; a receiver expecting another tag
    /// refuses the payload, naming both, instead of decoding garbage.
    pub type_tag: String,
    /// MessagePack.
    #[serde(with = "serde_bytes")]
    pub bytes: Vec<u8>,
}

/// The name calls from the command line (`syncra call`, `syncra send`) come from: not a
/// name any node can have (node names begin with a letter or digit).
pub const CLI_CALLER: &str = "@cli";

/// Longest a routed message (or a subscription) may wait for its receiver, milliseconds: an
/// hour. The runtime holds a longer `wait_ms` this long and no longer.
pub const MAX_WAIT_MS: u64 = 3_600_000;

/// A `wait_ms` from another process as a duration the runtime can hold: at most
/// [`MAX_WAIT_MS`].
pub fn bounded_wait(wait_ms: u64) -> std::time::Duration {
    std::time::Duration::from_millis(wait_ms.min(MAX_WAIT_MS))
}

/// A message for another node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Routed {
    /// The sender's id for it (a call's answer, or its return, carries it back).
    pub id: u64,
    /// The receiver's logical name.
    pub to: NodeName,
    /// Whether the sender waits for an answer.
    pub call: bool,
    /// If the receiver is not ready (restarting, not started yet): hold the message this
    /// long for it, milliseconds (at most [`MAX_WAIT_MS`]); `None` returns it at once.
    pub wait_ms: Option<u64>,
    /// The message.
    pub payload: Payload,
}

/// Why a message could not be delivered; it comes back to its sender with this reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Undeliverable {
    /// No node has this name.
    UnknownName,
    /// The receiver is not ready and the sender asked not to wait.
    NotReady {
        /// Its state.
        state: crate::NodeState,
    },
    /// The receiver did not become ready within the sender's wait.
    WaitExpired {
        /// Its state when the wait ended.
        state: crate::NodeState,
    },
    /// The receiver failed (the supervisor gave up on it), so it will not come back by itself.
    Failed,
    /// The receiver's inbox, or the runtime's queue for it, is full.
    QueueFull,
    /// The runtime is shutting down.
    ShuttingDown,
}

impl std::fmt::Display for Undeliverable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Undeliverable::UnknownName => f.write_str("no node has this name"),
            Undeliverable::NotReady { state } => {
                write!(f, "the node is {state}, and the sender asked not to wait")
            }
            Undeliverable::WaitExpired { state } => {
                write!(f, "the node was still {state} when the wait ended")
            }
            Undeliverable::Failed => f.write_str("the node failed (the supervisor gave up on it)"),
            Undeliverable::QueueFull => f.write_str("the node's inbox is full"),
            Undeliverable::ShuttingDown => f.write_str("the runtime is shutting down"),
        }
    }
}

/// What the runtime tells a child.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RuntimeToNode {
    /// A message or call from another node.
    Deliver {
        /// The sender.
        from: NodeName,
        /// The sender's incarnation.
        from_incarnation: u64,
        /// The sender's id (a call's answer carries it back).
        id: u64,
        /// Whether the sender waits for an answer.
        call: bool,
        /// The message.
        payload: Payload,
    },
    /// The answer to one of this node's calls.
    Answer {
        /// The call's id.
        call: u64,
        /// The answer, or the callee's error.
        outcome: Result<Payload, String>,
    },
    /// The callee of one of this node's calls exited after the call was delivered and before
    /// it answered: no answer will come (the callee may have acted on the request).
    CalleeExited {
        /// The call's id.
        call: u64,
        /// The callee.
        to: NodeName,
        /// The callee's incarnation that took the call.
        incarnation: u64,
    },
    /// One of this node's messages could not be delivered: here it is back.
    Returned {
        /// The message's id.
        id: u64,
        /// Its receiver.
        to: NodeName,
        /// Why.
        reason: Undeliverable,
        /// The message.
        payload: Payload,
    },
    /// Stop: finish the current iteration, clean up and exit 0 within `grace_ms`, after which
    /// the runtime kills the process.
    Shutdown {
        /// Milliseconds until SIGKILL.
        grace_ms: u64,
        /// Why, in words.
        reason: String,
    },
}

/// The runtime gateway's mailbox: one packet holding an encoded [`Envelope`].
#[derive(RactorClusterMessage, Debug)]
pub enum RuntimeInbox {
    /// An encoded [`Envelope`].
    Packet(Vec<u8>),
}

/// A child agent's mailbox: one packet holding an encoded [`RuntimeToNode`].
#[derive(RactorClusterMessage, Debug)]
pub enum NodeInbox {
    /// An encoded [`RuntimeToNode`].
    Packet(Vec<u8>),
}

/// The ractor_cluster node server every Syncra process runs, hub and children alike: its
/// mandatory TCP listener bound to loopback on an ephemeral port, in Isolated mode (a hub does
/// not introduce its children to each other).
///
/// The host name it advertises is `pid<its pid>`, not an address: ractor_cluster takes a peer
/// whose `host:port` equals its own for itself and drops the session, and a node in a network
/// namespace of its own can bind the very port number the hub's sealed listener had (measured:
/// about one restart in a few hundred). Nobody dials these names (Isolated mode).
///
/// **Invariant:** no Syncra process listens on anything but loopback. Start it through
/// [`crate::listener::start_node_server`], which also seals that listener.
pub(crate) fn node_server(node_name: &str, cookie: &str) -> ractor_cluster::NodeServer {
    use std::net::{IpAddr, Ipv4Addr};
    ractor_cluster::NodeServer::new(
        0,
        cookie.to_owned(),
        node_name.to_owned(),
        format!("pid{}", std::process::id()),
        None,
        Some(ractor_cluster::node::NodeConnectionMode::Isolated),
    )
    .with_listen_addr(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire;

    #[test]
    fn a_wait_from_another_process_is_bounded() {
        assert_eq!(bounded_wait(250), std::time::Duration::from_millis(250));
        assert_eq!(
            bounded_wait(u64::MAX),
            std::time::Duration::from_millis(MAX_WAIT_MS)
        );
        // Far in the future, and still representable.
        assert!(
            std::time::Instant::now()
                .checked_add(bounded_wait(u64::MAX))
                .is_some()
        );
    }

    #[test]
    fn envelope_round_trip() {
        let env = Envelope {
            token: Token([9; 16]),
            body: NodeToRuntime::Leaving {
                code: 0,
                reason: "done".into(),
            },
        };
        assert_eq!(
            wire::decode::<Envelope>("envelope", &wire::encode(&env)).unwrap(),
            env
        );
    }
}
