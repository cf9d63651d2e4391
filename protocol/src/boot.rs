//! The boot frame: what a child learns from its spawn.
//!
//! The runtime spawns every child with one end of a Unix socketpair as fd [`CLUSTER_FD`].
//! Before the cluster handshake starts on that socket, the runtime writes one boot frame:
//!
//! ```text
//! b"SYNB" | protocol version: u32 BE | body length: u32 BE | body: MessagePack Boot
//! ```
//!
//! The version sits outside the body so that a child built against another protocol can
//! still read it and refuse with a clear message. Secrets (the session cookie and the
//! child's token) travel only here: never on argv, in the environment or on disk.

use std::fmt;
use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

use crate::PROTOCOL_VERSION;
use crate::status::NodeName;
use crate::wire::{self, DecodeError};

/// The fd a child inherits its cluster socket on.
pub const CLUSTER_FD: i32 = 3;

/// The fd a child inherits its node page (heartbeat, metrics, panic report) on; see
/// [`crate::page`].
pub const PAGE_FD: i32 = 4;

/// The fd a child inherits its crash socket on (see [`crate::crash::DumpInfo`]): a
/// `SOCK_SEQPACKET` socket its crash handler sends the crashing thread's context over, and
/// waits on until the runtime has written its minidump.
pub const CRASH_FD: i32 = 7;

/// Magic bytes opening a boot frame.
pub const BOOT_MAGIC: [u8; 4] = *b"SYNB";

/// Largest boot body accepted.
pub const MAX_BOOT_BODY: usize = 1 << 20;

/// Exit codes a node uses to tell the runtime why it could not start. The runtime treats
/// them as permanent start failures: restarting would fail the same way.
pub mod exit_code {
    /// The runtime speaks another protocol version.
    pub const PROTOCOL_MISMATCH: i32 = 86;
    /// The boot frame was missing or malformed (not started by a Syncra runtime?).
    pub const BAD_BOOT: i32 = 87;
    /// The node's config chunk did not match what the node expects.
    pub const BAD_SETTINGS: i32 = 88;
    /// The node lost its link to the runtime and left (not a start failure: it had joined).
    pub const LINK_LOST: i32 = 89;
    /// A device the node cannot run without is not there (no display, no GPU adapter, no
    /// sound card): starting it again would meet the same machine.
    pub const NO_DEVICE: i32 = 90;

    /// A sentence for one of these codes, or `None` for any other code.
    pub fn describe(code: i32) -> Option<&'static str> {
        match code {
            PROTOCOL_MISMATCH => Some("the node was built against another protocol version"),
            BAD_BOOT => Some("the node could not read its boot frame"),
            BAD_SETTINGS => Some("the node refused its config chunk"),
            NO_DEVICE => Some("a device the node needs is not there"),
            _ => None,
        }
    }
}

/// A per-incarnation secret that authenticates a child's messages to the runtime.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Token(pub [u8; 16]);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(..)")
    }
}

/// How a child joins the cluster.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterJoin {
    /// The session cookie (random per runtime session).
    pub cookie: String,
    /// The ractor node name the child must use (unique per incarnation).
    pub node_name: String,
    /// The hub's ractor node name.
    pub hub_name: String,
    /// Authenticates this incarnation's messages to the runtime.
    pub token: Token,
}

impl fmt::Debug for ClusterJoin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterJoin")
            .field("node_name", &self.node_name)
            .field("hub_name", &self.hub_name)
            .finish_non_exhaustive()
    }
}

/// How often the child must beat and when the runtime declares it hung.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatPlan {
    /// Beat at least this often, milliseconds (a main loop usually beats every iteration).
    pub interval_ms: u64,
    /// The runtime declares the node hung after this long without a beat, milliseconds.
    pub deadline_ms: u64,
}

/// Everything a child learns from its spawn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Boot {
    /// The node's logical name.
    pub node: NodeName,
    /// Which incarnation this process is (1 for the first spawn).
    pub incarnation: u64,
    /// Cluster credentials.
    pub cluster: ClusterJoin,
    /// Heartbeat obligations.
    pub heartbeat: HeartbeatPlan,
    /// Fd of the node page, if the runtime passed one.
    pub page_fd: Option<i32>,
    /// The node's own config chunk, MessagePack.
    #[serde(with = "serde_bytes")]
    pub settings: Vec<u8>,
    /// Fd of the broker socket ([`crate::broker`]), if the runtime passed one.
    pub broker_fd: Option<i32>,
    /// Every node name of the runtime, so messages to a name nobody has come back at once.
    pub directory: Vec<NodeName>,
    /// Fd of the dead end that seals the node's cluster listener
    /// ([`crate::listener::SEAL_FD`]), if the runtime passed one: a sandboxed node may not
    /// make Unix sockets of its own.
    #[serde(default)]
    pub seal_fd: Option<i32>,
    /// Whether to ask the Broker for direct links to the nodes this one talks to
    /// ([`crate::direct`]); `false` keeps every message on the hub (config
    /// `[runtime] direct_links = false`).
    #[serde(default)]
    pub direct_links: bool,
    /// Fd of the crash socket ([`CRASH_FD`]), if the runtime writes minidumps for this node.
    #[serde(default)]
    pub crash_fd: Option<i32>,
}

/// Why a boot frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// Reading the socket failed (closed before a whole frame arrived).
    #[error("could not read the boot frame from fd {fd}: {source}")]
    Io {
        /// The fd read.
        fd: i32,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The bytes are not a boot frame.
    #[error(
        "fd {fd} does not carry a Syncra boot frame; a node is started by the `syncra` runtime, not by hand"
    )]
    NotBoot {
        /// The fd read.
        fd: i32,
    },
    /// The body is malformed or the versions differ.
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

impl Boot {
    /// Write this boot frame (header and body) to `w`.
    pub fn write_to(&self, w: &mut impl Write) -> io::Result<()> {
        let body = wire::encode(self);
        let mut frame = Vec::with_capacity(12 + body.len());
        frame.extend_from_slice(&BOOT_MAGIC);
        frame.extend_from_slice(&PROTOCOL_VERSION.to_be_bytes());
        frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
        frame.extend_from_slice(&body);
        w.write_all(&frame)
    }

    /// Read exactly one boot frame from `r` (fd `fd`, for messages), consuming nothing after it.
    pub fn read_from(r: &mut impl Read, fd: i32) -> Result<Boot, BootError> {
        let mut header = [0u8; 12];
        r.read_exact(&mut header)
            .map_err(|source| BootError::Io { fd, source })?;
        if header[..4] != BOOT_MAGIC {
            return Err(BootError::NotBoot { fd });
        }
        let peer = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
        if peer != PROTOCOL_VERSION {
            return Err(DecodeError::Version {
                peer,
                ours: PROTOCOL_VERSION,
            }
            .into());
        }
        let len = u32::from_be_bytes([header[8], header[9], header[10], header[11]]);
        let len = wire::check_len("boot", len, MAX_BOOT_BODY)?;
        let mut body = vec![0u8; len];
        r.read_exact(&mut body)
            .map_err(|source| BootError::Io { fd, source })?;
        Ok(wire::decode("boot frame", &body)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Boot {
        Boot {
            node: NodeName::world("arena"),
            incarnation: 3,
            cluster: ClusterJoin {
                cookie: "secret-cookie".into(),
                node_name: "world/arena#3".into(),
                hub_name: "syncra-hub".into(),
                token: Token([7; 16]),
            },
            heartbeat: HeartbeatPlan {
                interval_ms: 500,
                deadline_ms: 3000,
            },
            page_fd: Some(PAGE_FD),
            settings: vec![1, 2, 3],
            broker_fd: Some(5),
            seal_fd: None,
            direct_links: false,
            directory: vec![NodeName::world("arena")],
            crash_fd: Some(CRASH_FD),
        }
    }

    #[test]
    fn round_trip_leaves_following_bytes_unread() {
        let mut buf = Vec::new();
        sample().write_to(&mut buf).unwrap();
        buf.extend_from_slice(b"cluster handshake");
        let mut r = &buf[..];
        assert_eq!(Boot::read_from(&mut r, 3).unwrap(), sample());
        assert_eq!(r, b"cluster handshake");
    }

    #[test]
    fn other_version_is_refused_by_name() {
        let mut buf = Vec::new();
        sample().write_to(&mut buf).unwrap();
        buf[4..8].copy_from_slice(&(PROTOCOL_VERSION + 1).to_be_bytes());
        let err = Boot::read_from(&mut &buf[..], 3).unwrap_err();
        assert!(
            err.to_string().contains("protocol version mismatch"),
            "{err}"
        );
    }

    #[test]
    fn not_a_boot_frame() {
        let err = Boot::read_from(&mut &b"GET / HTTP/1.1\r\n\r\n"[..], 3).unwrap_err();
        assert!(matches!(err, BootError::NotBoot { fd: 3 }), "{err}");
    }

    #[test]
    fn truncated_and_oversized_frames() {
        let mut buf = Vec::new();
        sample().write_to(&mut buf).unwrap();
        let err = Boot::read_from(&mut &buf[..buf.len() - 1], 3).unwrap_err();
        assert!(matches!(err, BootError::Io { .. }), "{err}");
        buf[8..12].copy_from_slice(&u32::MAX.to_be_bytes());
        let err = Boot::read_from(&mut &buf[..], 3).unwrap_err();
        assert!(err.to_string().contains("exceeds the limit"), "{err}");
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let shown = format!("{:?}", sample());
        assert!(!shown.contains("secret-cookie"), "{shown}");
    }
}
