//! Bridges: what carries a stream, or a direct link, from one host to another. Both ends —
//! the runtime and an agent — run the same loops; which side sends depends only on where the
//! producer is.
//!
//! A **stream bridge** reads the producer's ring as one of its consumers and writes a ring on
//! the other host as its producer, message for message with the same sequence numbers
//! ([`syncra_protocol::ring::RingWriter::write_at`]), so gaps stay gaps and a consumer there
//! sees what a consumer here would. The sender sends only what the receiver has credit for:
//!
//! - **latest-only**: two messages in flight at most, and each one read is the newest — what
//!   a slow link cannot carry is skipped at the source, never queued (no backlog);
//! - **drop-oldest**: up to [`WINDOW`] in flight; a link slower than the producer lets the
//!   ring lap the bridge's cell, and those drops are counted in that cell, as for a slow
//!   local consumer;
//! - **block**: as drop-oldest, but the receiver's ring blocks its writer while its consumer
//!   is behind, credits stop, the bridge's cell stops reading, and the producer waits — back
//!   pressure end to end, up to the stream's timeout.
//!
//! A **link bridge** carries a direct link's packets, each `u32 BE length | bytes`.
//!
//! **Invariant:** a bridge holds at most its window of messages; a peer's frames are bounded
//! (one slot, or one link packet) and decoded without panicking.

use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use syncra_protocol::agent::{BridgeFrame, MAX_FRAME};
use syncra_protocol::ring::{Policy, ReadOutcome, RingReader, RingWriter, monotonic_ns};
use syncra_remote::frame;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

/// Messages in flight on a drop-oldest or block bridge, at most.
pub(crate) const WINDOW: u32 = 64;

/// Messages in flight on a latest-only bridge: one being read while one travels.
const LATEST_WINDOW: u32 = 2;

/// How long a receiver waits for its consumer to attach before writing the first message.
const ATTACH_WAIT: Duration = Duration::from_secs(2);

/// Largest direct-link packet a link bridge carries.
const MAX_PACKET: usize = 64 * 1024 + 16;

/// How many messages the sender of a stream of `policy` may have in flight.
pub(crate) fn window(policy: Policy, slot_count: u32) -> u32 {
    match policy {
        Policy::LatestOnly => LATEST_WINDOW,
        _ => WINDOW.min(slot_count.max(1)),
    }
}

/// A sender's messages in flight, oldest first: each credit's return times a round trip, and
/// half the shortest is the estimate of a message's time on the wire.
#[derive(Default)]
struct Flight {
    sent: std::collections::VecDeque<Instant>,
    min_rtt: Option<Duration>,
}

impl Flight {
    fn sent(&mut self) {
        self.sent.push_back(Instant::now());
    }

    /// `n` credits came back: how many count (one per message in flight; a credit for a
    /// message never sent counts for nothing, whatever the other side says).
    fn credited(&mut self, n: u32) -> u32 {
        let mut counted = 0;
        for _ in 0..n {
            let Some(sent) = self.sent.pop_front() else {
                break;
            };
            let rtt = sent.elapsed();
            self.min_rtt = Some(self.min_rtt.map_or(rtt, |m| m.min(rtt)));
            counted += 1;
        }
        counted
    }

    fn transit_ns(&self) -> u64 {
        self.min_rtt.map_or(0, |r| r.as_nanos() as u64 / 2)
    }
}

/// Why a bridge ended.
pub(crate) type Ended = String;

/// Read `reader`'s ring and send its messages on `stream`, as credits allow, until either
/// side ends.
pub(crate) async fn send<S>(mut reader: RingReader, stream: S) -> Ended
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let g = reader.map().geometry();
    let mut credits = window(g.policy, g.slot_count);
    let (mut rd, mut wr) = tokio::io::split(stream);
    let bell = match reader.bell().try_clone_to_owned().and_then(|b| {
        // SAFETY: the duplicate is moved into the AsyncFd, which keeps it open and unchanged
        // until it drops it.
        unsafe { AsyncFd::register_with_interest(b, tokio::io::Interest::READABLE) }
            .map_err(|e| e.into_parts().1)
    }) {
        Ok(b) => b,
        Err(e) => return format!("watching the ring's doorbell: {e}"),
    };
    let (credit_tx, mut credit_rx) = tokio::sync::mpsc::unbounded_channel::<u32>();
    let mut flight = Flight::default();
    let credits_task = tokio::spawn(async move {
        loop {
            match frame::read::<BridgeFrame>(&mut rd, "bridge credit", 64).await {
                Ok(BridgeFrame::Credit { n }) => {
                    if credit_tx.send(n).is_err() {
                        return;
                    }
                }
                _ => return,
            }
        }
    });
    let why = 'bridge: loop {
        while credits > 0 {
            let read = reader.try_read(|bytes, kind| (bytes.to_vec(), kind));
            match read {
                ReadOutcome::Message(m, (payload, kind)) => {
                    let msg = BridgeFrame::Message {
                        seq: m.seq,
                        kind,
                        incarnation: m.producer_incarnation,
                        age_ns: monotonic_ns().saturating_sub(m.publish_ns),
                        transit_ns: flight.transit_ns(),
                        payload,
                    };
                    if let Err(e) = frame::write(&mut wr, &msg).await {
                        break 'bridge format!("sending on the bridge: {e}");
                    }
                    flight.sent();
                    credits -= 1;
                }
                ReadOutcome::Torn { .. } => {}
                ReadOutcome::Empty => break,
            }
        }
        if credits > 0 && reader.prepare_wait() {
            tokio::select! {
                ready = bell.readable() => {
                    if let Ok(mut guard) = ready {
                        guard.clear_ready();
                    }
                    reader.finish_wait();
                }
                c = credit_rx.recv() => {
                    reader.finish_wait();
                    match c {
                        Some(n) => credits += flight.credited(n),
                        None => break 'bridge "the other end closed the bridge".to_owned(),
                    }
                }
            }
        } else if credits == 0 {
            match credit_rx.recv().await {
                Some(n) => credits += flight.credited(n),
                None => break 'bridge "the other end closed the bridge".to_owned(),
            }
        }
    };
    credits_task.abort();
    why
}

/// Write what arrives on `stream` into `writer`'s ring, returning a credit for each message
/// written, until either side ends. `cell`: the consumer the ring is for (the first message
/// waits, briefly, until it has attached).
pub(crate) async fn receive<S>(mut writer: RingWriter, stream: S, cell: Option<usize>) -> Ended
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let g = writer.map().geometry();
    let limit = g.slot_size as usize + 1024;
    if let Some(cell) = cell {
        let waited = tokio::time::timeout(ATTACH_WAIT, async {
            while writer
                .map()
                .consumer(cell)
                .active
                .load(std::sync::atomic::Ordering::Acquire)
                == 0
            {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await;
        if waited.is_err() {
            tracing::debug!(
                cell,
                "a bridged stream's consumer had not attached; writing anyway"
            );
        }
    }
    loop {
        let frame =
            match frame::read::<BridgeFrame>(&mut rd, "bridge message", limit.min(MAX_FRAME)).await
            {
                Ok(f) => f,
                Err(frame::FrameError::Io(e)) => return format!("the bridge closed: {e}"),
                Err(e) => return format!("a malformed bridge frame: {e}"),
            };
        let BridgeFrame::Message {
            seq,
            kind,
            incarnation,
            age_ns,
            transit_ns,
            payload,
        } = frame
        else {
            return "a credit where a message was expected".to_owned();
        };
        let publish_ns = monotonic_ns().saturating_sub(age_ns.saturating_add(transit_ns));
        let written = if g.policy == Policy::Block {
            // It may wait for the consumer, up to the stream's timeout: off the async thread.
            let done = tokio::task::spawn_blocking(move || {
                let r = writer.write_at(seq, kind, &payload, publish_ns, incarnation);
                (writer, r)
            })
            .await;
            match done {
                Ok((w, r)) => {
                    writer = w;
                    r
                }
                Err(e) => return format!("the bridge's writer: {e}"),
            }
        } else {
            writer.write_at(seq, kind, &payload, publish_ns, incarnation)
        };
        if let Err(e) = written {
            // A full ring (block timeout) or a message too large: the message is lost here,
            // as it would be for a local producer; the stream goes on.
            tracing::debug!(seq, error = %e, "a bridged message was not written");
        }
        if frame::write(&mut wr, &BridgeFrame::Credit { n: 1 })
            .await
            .is_err()
        {
            return "the other end closed the bridge".to_owned();
        }
    }
}

/// Carry a direct link's packets between `end` (a local `SOCK_SEQPACKET` end) and `stream`,
/// until either side ends.
pub(crate) async fn relay_packets<S>(end: OwnedFd, stream: S) -> Ended
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    if let Err(e) = rustix::io::ioctl_fionbio(&end, true) {
        return format!("preparing a link end: {e}");
    }
    // SAFETY: `end` is moved into the AsyncFd, which keeps it open and unchanged until it
    // drops it.
    let end = match unsafe { AsyncFd::register(end) } {
        Ok(e) => std::sync::Arc::new(e),
        Err(e) => return format!("watching a link end: {}", e.into_parts().1),
    };
    let (mut rd, mut wr) = tokio::io::split(stream);
    let inbound = {
        let end = end.clone();
        async move {
            let mut len = [0u8; 4];
            let mut buf = vec![0u8; MAX_PACKET];
            loop {
                if rd.read_exact(&mut len).await.is_err() {
                    return "the bridge closed".to_owned();
                }
                let n = u32::from_be_bytes(len) as usize;
                if n > MAX_PACKET {
                    return format!("a {n}-byte link packet, over the limit of {MAX_PACKET}");
                }
                if rd.read_exact(&mut buf[..n]).await.is_err() {
                    return "the bridge closed".to_owned();
                }
                loop {
                    let mut guard = match end.writable().await {
                        Ok(g) => g,
                        Err(e) => return format!("the link end: {e}"),
                    };
                    match guard.try_io(|fd| {
                        rustix::net::send(
                            fd.get_ref().as_fd(),
                            &buf[..n],
                            rustix::net::SendFlags::NOSIGNAL,
                        )
                        .map_err(std::io::Error::from)
                    }) {
                        Ok(Ok(_)) => break,
                        Ok(Err(e)) => return format!("the link end closed: {e}"),
                        Err(_would_block) => continue,
                    }
                }
            }
        }
    };
    let outbound = async move {
        let mut buf = vec![0u8; MAX_PACKET];
        loop {
            let mut guard = match end.readable().await {
                Ok(g) => g,
                Err(e) => return format!("the link end: {e}"),
            };
            let got = guard.try_io(|fd| {
                rustix::net::recv(
                    fd.get_ref().as_fd(),
                    &mut buf,
                    rustix::net::RecvFlags::empty(),
                )
                .map(|(n, _)| n)
                .map_err(std::io::Error::from)
            });
            let n = match got {
                Ok(Ok(0)) => return "the link's node closed it".to_owned(),
                Ok(Ok(n)) => n.min(MAX_PACKET),
                Ok(Err(e)) => return format!("the link end: {e}"),
                Err(_would_block) => continue,
            };
            let mut framed = Vec::with_capacity(4 + n);
            framed.extend_from_slice(&(n as u32).to_be_bytes());
            framed.extend_from_slice(&buf[..n]);
            if wr.write_all(&framed).await.is_err() || wr.flush().await.is_err() {
                return "the bridge closed".to_owned();
            }
        }
    };
    tokio::select! {
        why = inbound => why,
        why = outbound => why,
    }
}
