//! Direct links: a socket between two nodes, brokered by the runtime, that carries one node's
//! messages and calls to another (and the answers back) without the hub.
//!
//! The caller asks its Broker ([`crate::broker::NodeToBroker::Link`]); the Broker checks that
//! the callee is ready and both are under their link limits, makes a `SOCK_SEQPACKET`
//! socketpair, pushes one end to the callee ([`crate::broker::BrokerToNode::LinkFrom`]) and
//! answers the caller with the other ([`crate::broker::BrokerToNode::Linked`]). Neither node
//! can choose whom it is linked to, and the runtime keeps no copy: when either process ends,
//! the other reads the end of the link.
//!
//! Ordering: the caller's messages that went through the hub before the link opened must
//! arrive first. So the caller sends a *fence* through the hub (a routed message tagged
//! [`FENCE_TAG`] naming the link) and only then writes on the link; the callee reads nothing
//! from the link until the fence has arrived, by which time every earlier message through the
//! hub has too (the hub keeps each sender's order).
//!
//! On the socket, each packet is a flag byte ([`LAST`] or [`MORE`]) and a piece of one
//! MessagePack-encoded [`LinkFrame`]; a frame longer than one packet is split, and the
//! receiver joins the pieces ([`Assembler`]), refusing more than [`MAX_FRAME`] in all.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::node::{Payload, Undeliverable};
use crate::wire::{self, DecodeError};

/// The type tag of the fence a caller sends through the hub before it writes on a new link;
/// its payload is the link's id (a MessagePack `u64`).
pub const FENCE_TAG: &str = "syncra.link.fence/1";

/// Largest packet on a link, flag byte included.
pub const PACKET: usize = 64 * 1024;

/// Largest frame (all of its packets together).
pub const MAX_FRAME: usize = 16 << 20;

/// The flag of a frame's last (or only) packet.
pub const LAST: u8 = 0;

/// The flag of a packet more of the same frame follows.
pub const MORE: u8 = 1;

/// What travels on a direct link.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum LinkFrame {
    /// A message or call from the caller (its id is the caller's, as through the hub).
    Message {
        /// The caller's id for it.
        id: u64,
        /// Whether the caller waits for an answer.
        call: bool,
        /// The message.
        payload: Payload,
    },
    /// The callee's answer to the call `call`.
    Reply {
        /// The call's id.
        call: u64,
        /// The answer, or the callee's error.
        outcome: Result<Payload, String>,
    },
    /// The callee could not take the message `id` (its inbox is full): given back.
    Refused {
        /// The message's id.
        id: u64,
        /// Why.
        reason: Undeliverable,
        /// The message.
        payload: Payload,
    },
}

/// Why a frame could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The link is full (its reader is behind): nothing was sent.
    #[error("the link is full")]
    Full,
    /// The other end is gone: nothing more can be sent.
    #[error("the other end closed the link")]
    Closed,
    /// Part of the frame went and the rest could not: the link is unusable and must be closed.
    #[error("the link stalled in the middle of a frame: {0}")]
    Broken(String),
    /// The frame is longer than [`MAX_FRAME`].
    #[error("a frame of {0} bytes is more than a link carries ({MAX_FRAME})")]
    TooLarge(usize),
}

/// A connected, non-blocking, close-on-exec `SOCK_SEQPACKET` socketpair for a link.
pub fn pair() -> std::io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::net::socketpair(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::SEQPACKET,
        rustix::net::SocketFlags::CLOEXEC | rustix::net::SocketFlags::NONBLOCK,
        None,
    )?)
}

/// Send `frame` on `socket` (non-blocking). The first packet finds room or the frame is not
/// sent ([`SendError::Full`]); once one packet has gone the rest waits for room up to
/// `stall`. Call it with the link's write lock held, so that frames do not interleave.
pub fn send(socket: BorrowedFd<'_>, frame: &LinkFrame, stall: Duration) -> Result<(), SendError> {
    let body = wire::encode(frame);
    if body.len() > MAX_FRAME {
        return Err(SendError::TooLarge(body.len()));
    }
    let chunks: Vec<&[u8]> = if body.is_empty() {
        vec![&[][..]]
    } else {
        body.chunks(PACKET - 1).collect()
    };
    let deadline = Instant::now() + stall;
    let mut packet = Vec::with_capacity(PACKET);
    for (i, chunk) in chunks.iter().enumerate() {
        packet.clear();
        packet.push(if i + 1 == chunks.len() { LAST } else { MORE });
        packet.extend_from_slice(chunk);
        loop {
            let flags = rustix::net::SendFlags::DONTWAIT | rustix::net::SendFlags::NOSIGNAL;
            match rustix::net::send(socket, &packet, flags) {
                Ok(_) => break,
                Err(rustix::io::Errno::INTR) => {}
                Err(rustix::io::Errno::AGAIN) if i == 0 => return Err(SendError::Full),
                Err(rustix::io::Errno::AGAIN) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() || !wait_writable(socket, left) {
                        return Err(SendError::Broken(format!(
                            "no room for {} ms",
                            stall.as_millis()
                        )));
                    }
                }
                Err(e) if i == 0 => {
                    return Err(match e {
                        rustix::io::Errno::PIPE
                        | rustix::io::Errno::CONNRESET
                        | rustix::io::Errno::NOTCONN => SendError::Closed,
                        e => SendError::Broken(e.to_string()),
                    });
                }
                Err(e) => return Err(SendError::Broken(e.to_string())),
            }
        }
    }
    Ok(())
}

/// Wait up to `timeout` for room on `socket`.
fn wait_writable(socket: BorrowedFd<'_>, timeout: Duration) -> bool {
    let mut fds = [rustix::event::PollFd::new(
        &socket,
        rustix::event::PollFlags::OUT,
    )];
    let ts = rustix::event::Timespec {
        tv_sec: timeout.as_secs() as i64,
        tv_nsec: i64::from(timeout.subsec_nanos()),
    };
    matches!(rustix::event::poll(&mut fds, Some(&ts)), Ok(n) if n > 0)
        && fds[0].revents().contains(rustix::event::PollFlags::OUT)
}

/// What reading a link gave.
#[derive(Debug)]
pub enum Received {
    /// A whole frame.
    Frame(LinkFrame),
    /// Part of one; read on.
    Partial,
    /// Nothing waiting (non-blocking socket).
    WouldBlock,
    /// The other end closed the link.
    Closed,
}

/// Joins a link's packets into frames; one per link, on its reading side.
#[derive(Debug, Default)]
pub struct Assembler {
    buf: Vec<u8>,
    packet: Vec<u8>,
}

impl Assembler {
    /// Read one packet from `socket` (non-blocking). A malformed packet or frame is an error:
    /// the link is then unusable (its framing is lost) and must be closed.
    pub fn read(&mut self, socket: impl AsFd) -> Result<Received, DecodeError> {
        self.packet.resize(PACKET + 1, 0);
        let got = loop {
            match rustix::net::recv(
                &socket,
                &mut self.packet[..],
                rustix::net::RecvFlags::DONTWAIT | rustix::net::RecvFlags::TRUNC,
            ) {
                Ok((_, len)) => break len,
                Err(rustix::io::Errno::INTR) => {}
                Err(rustix::io::Errno::AGAIN) => return Ok(Received::WouldBlock),
                Err(_) => return Ok(Received::Closed),
            }
        };
        if got == 0 {
            // SOCK_SEQPACKET: a zero-length read is the end (every packet has its flag).
            return Ok(Received::Closed);
        }
        if got > PACKET {
            return Err(DecodeError::TooLarge {
                what: "link packet",
                len: got,
                limit: PACKET,
            });
        }
        let packet = std::mem::take(&mut self.packet);
        let got = self.push(&packet[..got]);
        self.packet = packet;
        got
    }

    /// Take one packet (flag byte and piece).
    pub fn push(&mut self, packet: &[u8]) -> Result<Received, DecodeError> {
        let Some((&flag, piece)) = packet.split_first() else {
            return Err(DecodeError::Truncated {
                what: "link packet",
                len: 0,
            });
        };
        if self.buf.len() + piece.len() > MAX_FRAME {
            let len = self.buf.len() + piece.len();
            self.buf = Vec::new();
            return Err(DecodeError::TooLarge {
                what: "link frame",
                len,
                limit: MAX_FRAME,
            });
        }
        self.buf.extend_from_slice(piece);
        match flag {
            MORE => Ok(Received::Partial),
            LAST => {
                let frame = wire::decode::<LinkFrame>("link frame", &self.buf);
                self.buf.clear();
                Ok(Received::Frame(frame?))
            }
            other => {
                self.buf = Vec::new();
                Err(DecodeError::Invalid {
                    what: "link packet",
                    message: format!("flag {other} is neither {LAST} (last) nor {MORE} (more)"),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(len: usize) -> LinkFrame {
        LinkFrame::Message {
            id: 7,
            call: true,
            payload: Payload {
                type_tag: "t/1".into(),
                bytes: (0..len).map(|i| i as u8).collect(),
            },
        }
    }

    fn read_frame(a: &mut Assembler, socket: &OwnedFd) -> LinkFrame {
        loop {
            match a.read(socket).unwrap() {
                Received::Frame(f) => return f,
                Received::Partial => {}
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn frames_small_and_split_arrive_whole_and_in_order() {
        let (a, b) = pair().unwrap();
        let mut asm = Assembler::default();
        for len in [0, 10, PACKET - 100, PACKET * 3 + 17] {
            let sent = message(len);
            // Large frames need the reader: read on another thread.
            std::thread::scope(|s| {
                let reader = s.spawn(|| {
                    let deadline = Instant::now() + Duration::from_secs(10);
                    loop {
                        match asm.read(&b).unwrap() {
                            Received::Frame(f) => return f,
                            Received::Partial => {}
                            Received::WouldBlock => {
                                assert!(Instant::now() < deadline, "no frame");
                                wait_readable(&b);
                            }
                            Received::Closed => panic!("closed"),
                        }
                    }
                });
                send(a.as_fd(), &sent, Duration::from_secs(5)).unwrap();
                assert_eq!(reader.join().unwrap(), sent, "{len} bytes");
            });
        }
        send(a.as_fd(), &message(1), Duration::ZERO).unwrap();
        send(a.as_fd(), &message(2), Duration::ZERO).unwrap();
        assert_eq!(read_frame(&mut asm, &b), message(1));
        assert_eq!(read_frame(&mut asm, &b), message(2));
        drop(a);
        assert!(matches!(asm.read(&b).unwrap(), Received::Closed));
    }

    fn wait_readable(socket: &OwnedFd) {
        let mut fds = [rustix::event::PollFd::new(
            socket,
            rustix::event::PollFlags::IN,
        )];
        let ts = rustix::event::Timespec {
            tv_sec: 1,
            tv_nsec: 0,
        };
        let _ = rustix::event::poll(&mut fds, Some(&ts));
    }

    #[test]
    fn a_full_link_refuses_whole_frames_and_a_closed_one_says_so() {
        let (a, b) = pair().unwrap();
        let mut sent = 0;
        let full = loop {
            match send(a.as_fd(), &message(1000), Duration::ZERO) {
                Ok(()) => sent += 1,
                Err(e) => break e,
            }
            assert!(sent < 1_000_000, "the link never filled");
        };
        assert!(matches!(full, SendError::Full), "{full}");
        // Everything sent is whole.
        let mut asm = Assembler::default();
        for _ in 0..sent {
            assert_eq!(read_frame(&mut asm, &b), message(1000));
        }
        drop(b);
        assert!(matches!(
            send(a.as_fd(), &message(1), Duration::ZERO),
            Err(SendError::Closed)
        ));
    }

    #[test]
    fn garbage_and_oversized_frames_are_errors() {
        let mut asm = Assembler::default();
        assert!(asm.push(&[]).is_err());
        assert!(asm.push(&[9, 1, 2]).is_err());
        assert!(asm.push(&[LAST, 0xc1, 0xff]).is_err());
        let piece = vec![0u8; PACKET - 1];
        let mut err = None;
        for _ in 0..(MAX_FRAME / piece.len() + 2) {
            let mut packet = vec![MORE];
            packet.extend_from_slice(&piece);
            if let Err(e) = asm.push(&packet) {
                err = Some(e);
                break;
            }
        }
        assert!(matches!(err, Some(DecodeError::TooLarge { .. })), "{err:?}");
        // And it starts again clean.
        let mut packet = vec![LAST];
        packet.extend_from_slice(&wire::encode(&message(3)));
        assert!(matches!(asm.push(&packet), Ok(Received::Frame(f)) if f == message(3)));
    }
}
