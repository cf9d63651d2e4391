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

use ractor_cluster::{BoxRead, BoxWrite, ClusterBidiStream, RactorClusterMessage};
use serde::{Deserialize, Serialize};

use crate::boot::Token;

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
}

/// What the runtime tells a child.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RuntimeToNode {
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
/// **Invariant:** no Syncra process listens on anything but loopback.
pub fn node_server(node_name: &str, cookie: &str) -> ractor_cluster::NodeServer {
    use std::net::{IpAddr, Ipv4Addr};
    ractor_cluster::NodeServer::new(
        0,
        cookie.to_owned(),
        node_name.to_owned(),
        "127.0.0.1".into(),
        None,
        Some(ractor_cluster::node::NodeConnectionMode::Isolated),
    )
    .with_listen_addr(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

/// A connected Unix socket (an inherited socketpair end) as a ractor_cluster transport.
#[derive(Debug)]
pub struct UnixLink {
    stream: tokio::net::UnixStream,
    label: String,
}

impl UnixLink {
    /// Wrap `stream`; `label` names the peer in ractor_cluster's session information, and is
    /// how the runtime matches a session to the child it spawned.
    pub fn new(stream: tokio::net::UnixStream, label: impl Into<String>) -> Self {
        Self {
            stream,
            label: label.into(),
        }
    }
}

impl ClusterBidiStream for UnixLink {
    fn split(self: Box<Self>) -> (BoxRead, BoxWrite) {
        let (r, w) = self.stream.into_split();
        (Box::new(r), Box::new(w))
    }
    fn peer_label(&self) -> Option<String> {
        Some(self.label.clone())
    }
    fn local_label(&self) -> Option<String> {
        Some(format!("{}:local", self.label))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire;

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
