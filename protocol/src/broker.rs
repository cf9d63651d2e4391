//! The broker link: how a node declares and subscribes to streams, and receives their shared
//! memory and doorbells.
//!
//! Every child inherits a second socket, fd [`BROKER_FD`], one end of a `SOCK_SEQPACKET`
//! socketpair whose other end the runtime's Broker holds. Each packet is one message:
//!
//! ```text
//! protocol version: u32 BE | MessagePack body | SCM_RIGHTS: the fds the message names
//! ```
//!
//! No path, no network: a sandboxed child shares memory with its peers only through fds the
//! runtime hands it here. The socket is per incarnation, so the Broker knows who speaks
//! without any token.

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};

use serde::{Deserialize, Serialize};

use crate::NodeName;
use crate::ring::Geometry;
use crate::wire::{self, DecodeError};

/// The fd a child inherits its broker socket on.
pub const BROKER_FD: i32 = 5;

/// Largest broker message body.
pub const MAX_MESSAGE: usize = 64 * 1024;

/// Most fds one message carries.
pub const MAX_FDS: usize = 48;

/// A stream as its producer declares it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamSpec {
    /// The stream's name, under the producer's node name: `world/arena/scene`, `audio/fft`.
    pub name: String,
    /// What its messages are: producer and consumers must agree.
    pub type_tag: String,
    /// The ring's shape.
    pub geometry: Geometry,
    /// Only its producer reads it (a world's durable state): no one may subscribe to it, and
    /// a restarted producer may declare it with another shape, which replaces its ring.
    #[serde(default)]
    pub private: bool,
}

/// A declared stream, as the Broker describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamInfo {
    /// The declaration.
    pub spec: StreamSpec,
    /// The node that produces it.
    pub producer: NodeName,
}

/// A consumer's hold on one stream: the fds that follow are, in order, the ring, the
/// consumer's doorbell and the producer's space doorbell.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// The stream.
    pub stream: StreamInfo,
    /// The consumer cell this subscriber owns in the ring.
    pub cell: u32,
    /// Whether the cell was this node's before (a restarted consumer resumes its cursor).
    pub resume: bool,
}

/// What a node asks the Broker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum NodeToBroker {
    /// Declare (or, after a restart, take back) an output stream.
    Declare {
        /// Echoed in the reply.
        id: u64,
        /// The stream.
        spec: StreamSpec,
    },
    /// Subscribe to every stream matching `pattern` (a name, or `*` for one path segment:
    /// `world/*/scene`) whose type is `type_tag`.
    Subscribe {
        /// Echoed in the reply and in later [`BrokerToNode::Added`] pushes.
        id: u64,
        /// Name or pattern.
        pattern: String,
        /// The type the subscriber expects.
        type_tag: String,
        /// When nothing matches yet: wait this long for a producer to declare one (`None`:
        /// refuse at once, unless `lazy`).
        wait_ms: Option<u64>,
        /// For a name that is not declared yet: answer at once with no stream, and push the
        /// stream ([`BrokerToNode::Added`]) when its producer declares it — or a
        /// [`BrokerToNode::Refused`] with this id if it carries another type. A subscriber
        /// never blocks on a producer that may start after it.
        #[serde(default)]
        lazy: bool,
    },
    /// End the subscription `id` (a pattern subscription, or a lazy one not attached yet):
    /// nothing more is pushed for it. No answer.
    Unsubscribe {
        /// The subscription's request id.
        id: u64,
    },
    /// Open a direct link to the current incarnation of `to` ([`crate::direct`]). Answered
    /// by [`BrokerToNode::Linked`] (with the link's fd) or [`BrokerToNode::LinkRefused`].
    Link {
        /// The node to talk to.
        to: NodeName,
    },
}

/// Why the Broker refused a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RefusalKind {
    /// The request is malformed or names something it may not (a stream outside the
    /// producer's namespace, a bad geometry).
    Invalid,
    /// The stream exists with another shape or producer.
    Conflict,
    /// Producer and consumer disagree on the message type.
    TypeMismatch,
    /// No stream matches (and the subscriber did not wait, or waited in vain).
    NotDeclared,
    /// A configured limit (streams, ring memory, consumers per stream) is reached.
    Limit,
    /// The runtime could not create the ring.
    Internal,
}

/// What the Broker tells a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum BrokerToNode {
    /// The stream is the caller's to write. Fds: the ring, the producer's space doorbell,
    /// then one doorbell per consumer cell listed in `bells`.
    Declared {
        /// The request's id.
        id: u64,
        /// The stream.
        stream: StreamInfo,
        /// The consumer cells whose doorbells follow.
        bells: Vec<u32>,
    },
    /// Sent unasked when an incarnation attaches: a stream its node produced before, held for
    /// it. Declaring the same spec takes it without a request (a restarted producer is
    /// ready one round trip sooner); fds as in `Declared`.
    Granted {
        /// The stream.
        stream: StreamInfo,
        /// The consumer cells whose doorbells follow.
        bells: Vec<u32>,
    },
    /// The subscription's streams (three fds each, in order; see [`Attachment`]).
    Subscribed {
        /// The request's id.
        id: u64,
        /// One per matching stream.
        streams: Vec<Attachment>,
    },
    /// A stream declared later matches a subscription — a pattern, or a lazy subscription to
    /// one name (three fds, as in [`Attachment`]).
    Added {
        /// The subscription's request id.
        id: u64,
        /// The new stream.
        stream: Attachment,
    },
    /// A consumer subscribed to one of the caller's streams: ring its doorbell (one fd).
    ConsumerJoined {
        /// The stream.
        stream: String,
        /// The consumer's cell.
        cell: u32,
    },
    /// A direct link to `to` (one fd: this node's end, a `SOCK_SEQPACKET` socket).
    Linked {
        /// The node at the other end.
        to: NodeName,
        /// Its incarnation.
        incarnation: u64,
        /// The link's id, which the fence names ([`crate::direct::FENCE_TAG`]).
        link: u64,
    },
    /// No direct link to `to` now (a limit, or it is not ready): its messages keep going
    /// through the runtime.
    LinkRefused {
        /// The node asked for.
        to: NodeName,
        /// Why, in words.
        message: String,
    },
    /// Sent unasked: `from` opened a direct link to this node (one fd: this node's end).
    /// Read nothing from it until its fence arrives through the runtime.
    LinkFrom {
        /// The node at the other end.
        from: NodeName,
        /// Its incarnation.
        incarnation: u64,
        /// The link's id.
        link: u64,
    },
    /// The request failed — or, for a lazy subscription, the stream it waits for was
    /// declared with another type.
    Refused {
        /// The request's id.
        id: u64,
        /// What kind of failure.
        kind: RefusalKind,
        /// What is wrong, in words, naming the stream and the values.
        message: String,
    },
}

/// Whether `name` matches `pattern`: segments split by `/`, `*` matching exactly one segment
/// and a final `**` any number of them.
pub fn matches(pattern: &str, name: &str) -> bool {
    let mut p = pattern.split('/');
    let mut n = name.split('/');
    loop {
        match (p.next(), n.next()) {
            (Some("**"), _) => return p.next().is_none(),
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether `pattern` has wildcards.
pub fn is_pattern(pattern: &str) -> bool {
    pattern.split('/').any(|s| s == "*" || s == "**")
}

/// Send one message with its fds on a seqpacket socket.
pub fn send<T: Serialize>(
    socket: impl AsFd,
    msg: &T,
    fds: &[std::os::fd::BorrowedFd<'_>],
) -> std::io::Result<()> {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    let body = wire::encode(msg);
    if body.len() > MAX_MESSAGE || fds.len() > MAX_FDS {
        return Err(std::io::Error::other(format!(
            "broker message too large ({} bytes, {} fds)",
            body.len(),
            fds.len()
        )));
    }
    let version = crate::PROTOCOL_VERSION.to_be_bytes();
    let iov = [IoSlice::new(&version), IoSlice::new(&body)];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(std::io::Error::other("too many fds for one message"));
    }
    rustix::net::sendmsg(socket, &iov, &mut control, SendFlags::NOSIGNAL)?;
    Ok(())
}

/// Why a broker message could not be received.
#[derive(Debug, thiserror::Error)]
pub enum RecvError {
    /// The peer closed the socket.
    #[error("the peer closed the broker link")]
    Closed,
    /// No message is waiting (non-blocking socket).
    #[error("no message waiting")]
    WouldBlock,
    /// The socket failed.
    #[error("broker link: {0}")]
    Io(#[from] std::io::Error),
    /// The message was malformed, truncated or of another protocol version.
    #[error("broker link: {0}")]
    Decode(#[from] DecodeError),
}

/// Receive one message and the fds that came with it. A malformed message is an error, and
/// its fds are closed.
pub fn recv<T: serde::de::DeserializeOwned>(
    socket: impl AsFd,
) -> Result<(T, Vec<OwnedFd>), RecvError> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags};
    let mut buf = vec![0u8; MAX_MESSAGE + 4];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut iov = [IoSliceMut::new(&mut buf)];
    let got = match rustix::net::recvmsg(&socket, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC) {
        Ok(got) => got,
        Err(rustix::io::Errno::AGAIN) => return Err(RecvError::WouldBlock),
        Err(e) => return Err(RecvError::Io(e.into())),
    };
    let mut fds = Vec::new();
    for msg in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = msg {
            fds.extend(received);
        }
    }
    if got.bytes == 0 && fds.is_empty() {
        return Err(RecvError::Closed);
    }
    if got.flags.contains(ReturnFlags::TRUNC) || got.flags.contains(ReturnFlags::CTRUNC) {
        return Err(RecvError::Decode(DecodeError::TooLarge {
            what: "broker message",
            len: got.bytes,
            limit: MAX_MESSAGE,
        }));
    }
    let bytes = &buf[..got.bytes];
    if bytes.len() < 4 {
        return Err(RecvError::Decode(DecodeError::Truncated {
            what: "broker message",
            len: bytes.len(),
        }));
    }
    let version = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    if version != crate::PROTOCOL_VERSION {
        return Err(RecvError::Decode(DecodeError::Version {
            peer: version,
            ours: crate::PROTOCOL_VERSION,
        }));
    }
    let msg = wire::decode("broker message", &bytes[4..])?;
    Ok((msg, fds))
}

/// A connected seqpacket socketpair (close-on-exec), for the runtime to hand one end to a
/// child.
pub fn socketpair() -> std::io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::net::socketpair(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::SEQPACKET,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::Policy;

    #[test]
    fn patterns_match_whole_segments() {
        assert!(matches("world/*/scene", "world/arena/scene"));
        assert!(!matches("world/*/scene", "world/arena/scene/x"));
        assert!(!matches("world/*/scene", "world/scene"));
        assert!(matches("world/**", "world/a/b"));
        assert!(matches("audio/fft", "audio/fft"));
        assert!(!matches("audio/fft", "audio/fft2"));
        assert!(is_pattern("world/*/scene") && !is_pattern("audio/fft"));
    }

    #[test]
    fn messages_carry_fds_across_the_socket() {
        let (a, b) = socketpair().unwrap();
        let bell = crate::ring::doorbell().unwrap();
        let msg = BrokerToNode::ConsumerJoined {
            stream: "audio/fft".into(),
            cell: 3,
        };
        send(&a, &msg, &[bell.as_fd()]).unwrap();
        let (got, fds): (BrokerToNode, _) = recv(&b).unwrap();
        assert_eq!(got, msg);
        assert_eq!(fds.len(), 1);
        // The received fd is the same eventfd: ringing it is seen through the original.
        crate::ring::ring(fds[0].as_fd());
        let mut buf = [0u8; 8];
        assert_eq!(rustix::io::read(&bell, &mut buf).unwrap(), 8);
        let spec = StreamSpec {
            private: false,
            name: "x/y".into(),
            type_tag: "t".into(),
            geometry: Geometry {
                slot_size: 8,
                slot_count: 2,
                policy: Policy::Block,
                block_timeout_ms: 5,
            },
        };
        send(&b, &NodeToBroker::Declare { id: 1, spec }, &[]).unwrap();
        let (_, fds): (NodeToBroker, _) = recv(&a).unwrap();
        assert!(fds.is_empty());
    }

    #[test]
    fn garbage_and_other_versions_are_errors() {
        let (a, b) = socketpair().unwrap();
        rustix::net::send(&a, b"\0\0\0", rustix::net::SendFlags::empty()).unwrap();
        assert!(matches!(
            recv::<NodeToBroker>(&b),
            Err(RecvError::Decode(_))
        ));
        rustix::net::send(&a, &[0, 0, 0, 99, 0x90], rustix::net::SendFlags::empty()).unwrap();
        assert!(matches!(
            recv::<NodeToBroker>(&b),
            Err(RecvError::Decode(DecodeError::Version { peer: 99, .. }))
        ));
        drop(a);
        assert!(matches!(recv::<NodeToBroker>(&b), Err(RecvError::Closed)));
    }
}
