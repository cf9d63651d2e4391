//! The link between the runtime and `syncra agent` on another host: mutual TLS (identities
//! pinned by fingerprint both ways, `syncra-remote`), then length-prefixed MessagePack frames
//! ([`MAX_FRAME`] at most), each side's first frame its `Hello`.
//!
//! Two kinds of connection reach an agent, told apart by the client certificate:
//!
//! - the **session link**, one per runtime session, under the runtime's own identity: the
//!   runtime asks for spawns, signals and watches ([`RuntimeToAgent`]); the agent reports what
//!   becomes of its nodes ([`AgentToRuntime`]: spawned, exited, hung, vitals, log lines). Both
//!   sides ping: the agent's pings, answered, renew its **lease** on the session's nodes
//!   (no answer for `lease_ms` and it kills them — fencing); the runtime hears the agent's pings
//!   and calls the host unreachable after the same deadline.
//! - **incarnation links**, under a certificate the runtime made for that incarnation alone and
//!   announced in its [`SpawnRequest::link`], each opened with an [`Opening`] frame: the
//!   node's cluster socket (boot frame, then the ractor_cluster session, relayed byte for
//!   byte), a **stream bridge** ([`BridgeFrame`]s: one of its streams' messages one way,
//!   credits the other), or a **direct link** bridge (its packets, length-prefixed).
//!
//! A remote node's broker link is relayed on the session link ([`RuntimeToAgent::Broker`],
//! [`AgentToRuntime::Broker`]): the Broker in the runtime stays the one authority on streams
//! and links; where its answer carries fds (rings, doorbells, link ends), the runtime keeps
//! them and says in [`Carried`] what the agent makes in their place on its host.

use serde::{Deserialize, Serialize};

use crate::NodeName;
use crate::broker::{BrokerToNode, NodeToBroker};
use crate::crash::{DumpInfo, PanicReport};
use crate::ring::Geometry;
use crate::sandbox::SandboxProfile;
use crate::status::{Figure, NodeMetrics, SandboxStatus};

/// The SHA-256 of a certificate (DER), written `sha256:` and 64 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Fingerprint(pub [u8; 32]);

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("sha256:")?;
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl std::fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// A fingerprint that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{text}` is not a fingerprint: expected `sha256:` and 64 hex digits, as `syncra agent` and `syncra identity` print them"
)]
pub struct BadFingerprint {
    /// What was given.
    pub text: String,
}

impl std::str::FromStr for Fingerprint {
    type Err = BadFingerprint;
    fn from_str(s: &str) -> Result<Fingerprint, BadFingerprint> {
        let bad = || BadFingerprint { text: s.to_owned() };
        let hex = s.trim().strip_prefix("sha256:").ok_or_else(bad)?;
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(Fingerprint(out))
    }
}

/// Largest frame on the agent link.
pub const MAX_FRAME: usize = 16 << 20;

/// The name a runtime's config may give a node's host to mean the runtime's own
/// (`fallback_host = "local"`, `--hosts local,gpu-box`).
pub const LOCAL_HOST: &str = "local";

/// What the runtime says to an agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RuntimeToAgent {
    /// First frame: who the runtime is. A runtime that reconnects says the same `session`,
    /// and the agent answers with the nodes of that session still running.
    Hello {
        /// This build's [`crate::PROTOCOL_VERSION`].
        protocol: u32,
        /// The runtime's session, random per run (an agent fences what an ended session left).
        session: u64,
        /// The host name the runtime's config gives the agent.
        host: String,
        /// The lease on this session's nodes, ms: the agent kills them (and they kill
        /// themselves) when none of its pings has been answered for this long. 0: no nodes
        /// will be asked for (`syncra hosts`).
        lease_ms: u64,
    },
    /// Answered by [`AgentToRuntime::Pong`] with the same `n`.
    Ping {
        /// Echoed.
        n: u64,
    },
    /// The answer to the agent's [`AgentToRuntime::Ping`] `n`.
    Pong {
        /// The ping's `n`.
        n: u64,
    },
    /// Start a node.
    Spawn(Box<SpawnRequest>),
    /// Send incarnation `incarnation` of `node` a signal (its number on Linux).
    Signal {
        /// The node.
        node: NodeName,
        /// Which incarnation: a signal for another is not delivered.
        incarnation: u64,
        /// `SIGTERM`, `SIGKILL`, …
        signal: i32,
    },
    /// The incarnation is ready: watch its heartbeat from now on, and report a silence of
    /// `deadline_ms` ([`AgentToRuntime::Hung`]).
    Watch {
        /// The node.
        node: NodeName,
        /// Its incarnation.
        incarnation: u64,
        /// Its heartbeat deadline.
        deadline_ms: u64,
    },
    /// Stop watching its heartbeat (it is being stopped).
    Unwatch {
        /// The node.
        node: NodeName,
        /// Its incarnation.
        incarnation: u64,
    },
    /// The runtime ends its session: kill whatever of it still runs, now.
    Goodbye,
    /// What the Broker says to a node here, with what to make on this host in place of the
    /// fds it carries, in the order the message names them.
    Broker {
        /// The node.
        node: NodeName,
        /// Its incarnation.
        incarnation: u64,
        /// The Broker's message.
        message: BrokerToNode,
        /// One per fd-carrying item of the message.
        carried: Vec<Carried>,
    },
}

/// What an agent makes on its host for one fd-carrying item of a Broker message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Carried {
    /// `Declared` / `Granted`: the node produces the stream. A ring here, its counters
    /// starting where the runtime's ring stands, is the node's to write; the agent reads it
    /// (consumer cell 0 here) and sends its messages over bridge `bridge`.
    Produce {
        /// The bridge's id (its [`Opening::Bridge`]).
        bridge: u64,
        /// The ring's shape.
        geometry: Geometry,
        /// The runtime's ring's `claimed`.
        claimed: u64,
        /// Its `published`.
        published: u64,
        /// Its `attachments` (1 + producer restarts).
        attachments: u64,
    },
    /// `Subscribed` / `Added` (one per attachment): the node consumes the stream. A ring here,
    /// written by the agent with what bridge `bridge` brings; the node's first message is
    /// `first`.
    Consume {
        /// The bridge's id.
        bridge: u64,
        /// The ring's shape.
        geometry: Geometry,
        /// The first sequence the bridge brings.
        first: u64,
    },
    /// `Linked` / `LinkFrom`: an end of a direct link.
    Link {
        /// The link's id (as in the message).
        link: u64,
        /// The other end is a node of this same host: join the two here, nothing crosses the
        /// network (the agent gets both ends' messages).
        local: bool,
        /// Otherwise, the bridge that carries its packets.
        bridge: u64,
    },
}

/// The first frame on an incarnation link: what it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Opening {
    /// The node's cluster socket.
    Node,
    /// A stream bridge or a direct link's bridge announced in [`Carried`].
    Bridge {
        /// Its id.
        id: u64,
    },
}

/// What a stream bridge carries: messages one way, credits the other.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum BridgeFrame {
    /// One message of the stream, as its producer published it.
    Message {
        /// Its sequence (the same on both hosts: gaps stay gaps).
        seq: u64,
        /// The producer's tag.
        kind: u32,
        /// The producer's incarnation.
        incarnation: u64,
        /// How old it was when sent, ns.
        age_ns: u64,
        /// The sender's estimate of the time on the wire, ns (half the shortest round trip of
        /// a message and its credit): its publish time on the receiving host is now less
        /// `age_ns` and this, with no clock shared between the hosts.
        transit_ns: u64,
        /// The payload.
        #[serde(with = "serde_bytes")]
        payload: Vec<u8>,
    },
    /// The receiver wrote `n` more messages into its ring: the sender may send `n` more.
    Credit {
        /// How many.
        n: u32,
    },
}

/// A node the runtime asks an agent to start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpawnRequest {
    /// Its logical name.
    pub node: NodeName,
    /// The incarnation it will be.
    pub incarnation: u64,
    /// The executable, resolved on the agent's host as the runtime resolves one: a path, or a
    /// name found next to the agent's `syncra`, then on its `PATH`.
    pub command: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// Environment added to the agent's own.
    pub env: Vec<(String, String)>,
    /// What it may touch.
    pub sandbox: SandboxProfile,
    /// The fingerprint of the certificate the runtime made for this incarnation's node link:
    /// the one connection whose bytes the agent relays to the node's cluster socket.
    pub link: Fingerprint,
    /// Write a minidump when it crashes natively, within these bounds (`None`: no crash
    /// socket).
    #[serde(default)]
    pub dumps: Option<DumpBounds>,
}

/// How many minidumps of a node a host keeps, and how large one may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DumpBounds {
    /// Kept per node.
    pub keep: u32,
    /// Largest kept, bytes.
    pub max_bytes: u64,
}

/// An incarnation an agent runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Running {
    /// The node.
    pub node: NodeName,
    /// Its incarnation.
    pub incarnation: u64,
    /// Its pid on the agent's host.
    pub pid: u32,
}

/// Why an agent could not start a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SpawnFailure {
    /// Trying again cannot help (the executable is missing or not runnable, a strict sandbox
    /// that cannot be enforced there).
    Permanent,
    /// The host is out of a resource (fds, memory, processes): try again later.
    Shortage,
    /// Anything else.
    Other,
}

/// How an incarnation on an agent's host ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Exit {
    /// The node.
    pub node: NodeName,
    /// Its incarnation.
    pub incarnation: u64,
    /// Its pid there.
    pub pid: u32,
    /// Its exit code, when it exited.
    pub code: Option<i32>,
    /// The signal that ended it, when one did.
    pub signal: Option<i32>,
    /// When, ms since the Unix epoch (the agent's clock).
    pub unix_ms: u64,
    /// The last lines it wrote to stderr.
    pub stderr_tail: Vec<String>,
    /// Its panic report, when its panic hook left one.
    pub panic: Option<PanicReport>,
    /// Why it said it was leaving (its page's exit note).
    pub note: Option<String>,
    /// The minidump written when it crashed natively (its stack follows in
    /// [`AgentToRuntime::Dumped`]).
    #[serde(default)]
    pub dump: Option<DumpInfo>,
}

/// What an incarnation's page says now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Vitals {
    /// The node.
    pub node: NodeName,
    /// Its incarnation.
    pub incarnation: u64,
    /// Its main loop's metrics.
    pub metrics: Option<NodeMetrics>,
    /// Its figures.
    pub figures: Vec<Figure>,
    /// Its status note.
    pub note: Option<String>,
}

/// What an agent says to the runtime.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AgentToRuntime {
    /// First frame: who the agent is.
    Hello {
        /// This build's [`crate::PROTOCOL_VERSION`].
        protocol: u32,
        /// The agent's own name for its host (`--name`, else its hostname).
        name: String,
        /// The agent's version.
        version: String,
        /// Random per start of the agent: another value than last time means the agent
        /// restarted, and every node it ran before died with it.
        instance: u64,
        /// The nodes of this session it still runs (a runtime that reconnects).
        running: Vec<Running>,
        /// How the session's nodes that ended while the runtime was away ended.
        ended: Vec<Exit>,
    },
    /// Answered by [`RuntimeToAgent::Pong`] with the same `n`; the answer renews the lease.
    Ping {
        /// Echoed.
        n: u64,
    },
    /// The answer to [`RuntimeToAgent::Ping`].
    Pong {
        /// The ping's `n`.
        n: u64,
    },
    /// The agent will not go on with this runtime: why, in words.
    Refused {
        /// What is wrong.
        message: String,
    },
    /// A node was started: it waits for its boot frame on its node link.
    Spawned {
        /// The node.
        node: NodeName,
        /// Its incarnation.
        incarnation: u64,
        /// Its pid on the agent's host.
        pid: u32,
        /// What its sandbox enforces there.
        sandbox: Option<SandboxStatus>,
        /// Its log file on the agent's host.
        log: String,
        /// Whether it has a crash socket (fd 7): its boot frame says so.
        #[serde(default)]
        crash: bool,
    },
    /// A node could not be started.
    SpawnFailed {
        /// The node.
        node: NodeName,
        /// The incarnation it was to be.
        incarnation: u64,
        /// Why, in words.
        message: String,
        /// Whether trying again can help.
        failure: SpawnFailure,
    },
    /// An incarnation ended.
    Exited(Box<Exit>),
    /// The minidump of an incarnation that ended (its [`Exit::dump`]), read back on the
    /// agent's host, where its binaries are: the crash and its thread's stack.
    Dumped {
        /// The node.
        node: NodeName,
        /// Its incarnation.
        incarnation: u64,
        /// The dump, with its stack (or why it could not be read).
        dump: DumpInfo,
    },
    /// A watched incarnation's heartbeat stopped for its deadline.
    Hung {
        /// The node.
        node: NodeName,
        /// Its incarnation.
        incarnation: u64,
        /// How long it was silent, ms.
        silent_ms: u64,
    },
    /// The pages of the session's nodes, every quarter second.
    Vitals(Vec<Vitals>),
    /// What a node here asks the Broker.
    Broker {
        /// The node.
        node: NodeName,
        /// Its incarnation.
        incarnation: u64,
        /// Its request.
        message: NodeToBroker,
    },
    /// Lines a node wrote to stdout or stderr (the runtime keeps a copy of its log).
    Log {
        /// The node.
        node: NodeName,
        /// Its incarnation.
        incarnation: u64,
        /// The lines, without their ends.
        lines: Vec<String>,
        /// Lines left out before these because the link was busy.
        dropped: u64,
    },
}
