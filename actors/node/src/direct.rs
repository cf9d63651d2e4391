//! Direct links to other nodes ([`syncra_protocol::direct`]): the first message to a node goes
//! through the hub and asks the Broker for a link; once it is open (and its fence sent), the
//! messages and calls to that node go over it, and their answers come back on it.
//!
//! Per receiver this node is in one of: no link (first message: ask), asked (hub until the
//! answer), open (the link), or hub-only for a while (the Broker refused: a limit, or the
//! receiver was not ready). Every decision and the hub send it implies happen under one lock,
//! so a thread's messages to one receiver keep their order across the switch.
//!
//! **Invariants:** at most one open link per receiver (a second one brokered for it is
//! closed); a fence that comes back undelivered is nobody's returned message; a call on a
//! link whose other end closes fails at once with
//! `CalleeExited`; nothing is read from an incoming link before its fence arrived through the
//! hub; a link's frames never interleave (one writer at a time); a malformed frame closes
//! that link only.

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use syncra_protocol::NodeName;
use syncra_protocol::broker::{self, NodeToBroker};
use syncra_protocol::direct::{self as wire_link, Assembler, FENCE_TAG, LinkFrame, Received};
use syncra_protocol::node::{NodeToRuntime, Payload, Routed, Undeliverable};
use tokio::io::unix::AsyncFd;

use crate::Shared;
use crate::messaging::{Answer, Returned};

/// How long a message may wait for room once its first packet went.
const STALL: Duration = Duration::from_secs(2);

/// The same for an answer: it is written on the link thread, which a caller that stops
/// reading must not hold up for long (the answer is dropped; the caller's call times out).
const ANSWER_STALL: Duration = Duration::from_millis(100);

/// How long the hub carries a receiver's messages after the Broker refused a link to it: 50 ms
/// after the first refusal (a receiver that was not ready yet), doubling to 2 s.
const HUB_ONLY_FIRST: Duration = Duration::from_millis(50);
const HUB_ONLY_MAX: Duration = Duration::from_secs(2);

fn hub_only_for(refusals: u32) -> Duration {
    HUB_ONLY_FIRST
        .saturating_mul(1 << refusals.saturating_sub(1).min(16))
        .min(HUB_ONLY_MAX)
}

/// How long an unanswered link request holds before it is asked again.
const ASK_AGAIN_AFTER: Duration = Duration::from_secs(5);

/// Fences that came before their link (kept for the link's arrival), at most.
const MAX_EARLY_FENCES: usize = 256;

/// Incoming links waiting for their fence, at most (the Broker bounds them by
/// `[runtime] max_links` already; this holds whatever it is set to).
const MAX_WAITING: usize = 4096;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// This node's direct links.
#[derive(Debug, Default)]
pub(crate) struct Links {
    /// A duplicate of the broker socket, for link requests; unset: links are off.
    broker: OnceLock<OwnedFd>,
    out: Mutex<HashMap<NodeName, Out>>,
    incoming: Mutex<Incoming>,
}

#[derive(Debug)]
enum Out {
    /// Asked at; refusals so far.
    Asked(Instant, u32),
    Open(Arc<OutLink>),
    /// Through the hub until; refusals so far.
    HubOnly(Instant, u32),
}

/// A link this node writes messages on (it is the caller).
#[derive(Debug)]
pub(crate) struct OutLink {
    id: u64,
    to: NodeName,
    incarnation: u64,
    socket: OwnedFd,
    write: Mutex<()>,
    /// Calls written on it and not answered yet.
    in_flight: Mutex<HashSet<u64>>,
}

/// A link another node writes messages on (this node is the callee): answers go back on it.
#[derive(Debug)]
pub(crate) struct InLink {
    id: u64,
    from: NodeName,
    incarnation: u64,
    socket: OwnedFd,
    write: Mutex<()>,
}

#[derive(Debug, Default)]
struct Incoming {
    /// Links whose fence has not arrived yet, by id.
    waiting: HashMap<u64, InLink>,
    /// Fences that arrived before their link, by id: who sent them.
    early: HashMap<u64, (NodeName, u64)>,
}

impl Links {
    /// Use direct links, asking for them on `broker` (a duplicate of the broker socket).
    pub(crate) fn enable(&self, broker: OwnedFd) {
        let _ = self.broker.set(broker);
    }

    /// Send `routed` over the link to its receiver if one is open, else through the hub
    /// (asking for a link when there is none). Under one lock, so order holds.
    pub(crate) fn route(&self, shared: &Arc<Shared>, routed: Routed) {
        let Some(broker) = self.broker.get() else {
            shared.send(NodeToRuntime::Route(routed));
            return;
        };
        let mut out = lock(&self.out);
        let now = Instant::now();
        let ask = match out.get(&routed.to) {
            Some(Out::Open(link)) => {
                let link = link.clone();
                match link.write_message(&routed) {
                    Ok(()) => return,
                    Err(wire_link::SendError::Closed) => {
                        // Its receiver has gone: the hub reaches the next incarnation.
                        out.remove(&routed.to);
                        true
                    }
                    Err(e) => {
                        if matches!(e, wire_link::SendError::Broken(_)) {
                            out.remove(&routed.to);
                            let _ =
                                rustix::net::shutdown(&link.socket, rustix::net::Shutdown::Both);
                        }
                        drop(out);
                        tracing::warn!(to = %routed.to, error = %e, "a message could not go on its direct link; given back");
                        given_back(
                            shared,
                            &routed.to,
                            routed.id,
                            Undeliverable::QueueFull,
                            routed.payload,
                        );
                        return;
                    }
                }
            }
            Some(Out::Asked(at, _)) => now.duration_since(*at) > ASK_AGAIN_AFTER,
            Some(Out::HubOnly(until, _)) => now >= *until,
            None => true,
        };
        let refusals = match out.get(&routed.to) {
            Some(Out::Asked(_, n) | Out::HubOnly(_, n)) => *n,
            _ => 0,
        };
        let to = routed.to.clone();
        shared.send(NodeToRuntime::Route(routed));
        if ask {
            match broker::send(broker, &NodeToBroker::Link { to: to.clone() }, &[]) {
                Ok(()) => {
                    out.insert(to, Out::Asked(now, refusals));
                }
                Err(e) => {
                    tracing::debug!(to = %to, error = %e, "could not ask for a direct link");
                    out.insert(to, Out::HubOnly(now + HUB_ONLY_MAX, refusals));
                }
            }
        }
    }

    /// The Broker opened a link to `to`: send its fence through the hub, then use it.
    pub(crate) fn linked(
        &self,
        shared: &Arc<Shared>,
        to: NodeName,
        incarnation: u64,
        id: u64,
        socket: OwnedFd,
    ) {
        let Some(handle) = shared.runtime.get() else {
            return;
        };
        let reader = match socket.try_clone() {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(to = %to, error = %e, "could not use a direct link");
                return;
            }
        };
        let link = Arc::new(OutLink {
            id,
            to: to.clone(),
            incarnation,
            socket,
            write: Mutex::new(()),
            in_flight: Mutex::new(HashSet::new()),
        });
        let mut out = lock(&self.out);
        if matches!(out.get(&to), Some(Out::Open(_))) {
            // An answer to a request asked again: the link in use stays (a second one would
            // let its messages overtake those still unread on the first). This one closes.
            tracing::debug!(to = %to, link = id, "a second direct link to the same node; closed");
            return;
        }
        // Everything this node sent through the hub so far goes before the fence.
        shared.send(NodeToRuntime::Route(Routed {
            id: shared
                .next_id
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            to: to.clone(),
            call: false,
            wait_ms: None,
            payload: Payload {
                type_tag: FENCE_TAG.to_owned(),
                bytes: syncra_protocol::wire::encode(&id),
            },
        }));
        out.insert(to.clone(), Out::Open(link.clone()));
        drop(out);
        tracing::debug!(to = %to, incarnation, link = id, "direct link open");
        let weak = Arc::downgrade(shared);
        handle.spawn(read_answers(weak, link, reader));
    }

    /// The Broker refused a link to `to`: the hub carries its messages for a while.
    pub(crate) fn refused(&self, to: NodeName, message: &str) {
        tracing::debug!(to = %to, why = message, "no direct link; through the runtime");
        let mut out = lock(&self.out);
        let refusals = match out.get(&to) {
            Some(Out::Asked(_, n) | Out::HubOnly(_, n)) => n + 1,
            _ => 1,
        };
        out.insert(
            to,
            Out::HubOnly(Instant::now() + hub_only_for(refusals), refusals),
        );
    }

    /// `from` opened a link to this node: start reading it once its fence is here.
    pub(crate) fn link_from(
        &self,
        shared: &Arc<Shared>,
        from: NodeName,
        incarnation: u64,
        id: u64,
        socket: OwnedFd,
    ) {
        let link = InLink {
            id,
            from,
            incarnation,
            socket,
            write: Mutex::new(()),
        };
        let mut incoming = lock(&self.incoming);
        match incoming.early.remove(&id) {
            Some((from, inc)) if from == link.from && inc == link.incarnation => {
                drop(incoming);
                start_reading(shared, link);
            }
            Some(_) => tracing::warn!(
                link = id,
                "a fence from another node than the link's; link dropped"
            ),
            None if incoming.waiting.len() >= MAX_WAITING => {
                tracing::warn!(from = %link.from, "too many direct links without their fence; dropped this one");
            }
            None => {
                incoming.waiting.insert(id, link);
            }
        }
    }

    /// A fence arrived through the hub from `from` (incarnation `incarnation`).
    pub(crate) fn fence(
        &self,
        shared: &Arc<Shared>,
        from: &NodeName,
        incarnation: u64,
        payload: &Payload,
    ) {
        let Ok(id) = syncra_protocol::wire::decode::<u64>("link fence", &payload.bytes) else {
            tracing::warn!(from = %from, "a malformed link fence; ignored");
            return;
        };
        let mut incoming = lock(&self.incoming);
        match incoming.waiting.remove(&id) {
            Some(link) if link.from == *from && link.incarnation == incarnation => {
                drop(incoming);
                start_reading(shared, link);
            }
            Some(link) => {
                tracing::warn!(from = %from, link = id, owner = %link.from, "a fence for another node's link; both dropped");
            }
            None => {
                if incoming.early.len() >= MAX_EARLY_FENCES {
                    incoming.early.clear();
                }
                incoming.early.insert(id, (from.clone(), incarnation));
            }
        }
    }
}

impl OutLink {
    fn write_message(&self, routed: &Routed) -> Result<(), wire_link::SendError> {
        let frame = LinkFrame::Message {
            id: routed.id,
            call: routed.call,
            payload: routed.payload.clone(),
        };
        if routed.call {
            lock(&self.in_flight).insert(routed.id);
        }
        let _w = lock(&self.write);
        let sent = wire_link::send(self.socket.as_fd(), &frame, STALL);
        if sent.is_err() && routed.call {
            lock(&self.in_flight).remove(&routed.id);
        }
        sent
    }
}

impl InLink {
    /// Answer the call `call` on this link (dropped if the caller is gone or not reading).
    pub(crate) fn reply(&self, call: u64, outcome: Result<Payload, String>) {
        self.write(&LinkFrame::Reply { call, outcome });
    }

    /// Give the message `id` back to its sender.
    pub(crate) fn refuse(&self, id: u64, reason: Undeliverable, payload: Payload) {
        self.write(&LinkFrame::Refused {
            id,
            reason,
            payload,
        });
    }

    fn write(&self, frame: &LinkFrame) {
        let _w = lock(&self.write);
        match wire_link::send(self.socket.as_fd(), frame, ANSWER_STALL) {
            Ok(()) => {}
            // Half a frame went: the link's framing is lost; end it (its caller falls back
            // to the hub and asks again).
            Err(e @ wire_link::SendError::Broken(_)) => {
                tracing::warn!(to = %self.from, link = self.id, error = %e, "an answer stalled on its link; link closed");
                let _ = rustix::net::shutdown(&self.socket, rustix::net::Shutdown::Both);
            }
            Err(e) => {
                tracing::debug!(to = %self.from, link = self.id, error = %e, "an answer could not go back on its link");
            }
        }
    }
}

/// Hand a message that will not be delivered back to its sender (a call's waiter, or
/// [`crate::Node::returned`]).
fn given_back(shared: &Shared, to: &NodeName, id: u64, reason: Undeliverable, payload: Payload) {
    crate::messaging::answered(
        shared,
        id,
        Answer::Returned(Returned {
            to: to.clone(),
            reason,
            payload,
        }),
    );
}

fn start_reading(shared: &Arc<Shared>, link: InLink) {
    let Some(handle) = shared.runtime.get() else {
        return;
    };
    let reader = match link.socket.try_clone() {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(from = %link.from, error = %e, "could not read a direct link");
            return;
        }
    };
    tracing::debug!(from = %link.from, link = link.id, "direct link from another node open");
    handle.spawn(read_messages(
        Arc::downgrade(shared),
        Arc::new(link),
        reader,
    ));
}

/// Read one frame at a time from `socket` into `each`, until the link ends or breaks.
async fn read_frames(
    socket: OwnedFd,
    what: &str,
    peer: &NodeName,
    mut each: impl FnMut(LinkFrame) -> bool,
) {
    // SAFETY: `socket` is an OwnedFd moved into the AsyncFd: it stays open and refers to the
    // same socket until the AsyncFd drops it.
    let registered =
        unsafe { AsyncFd::register_with_interest(socket, tokio::io::Interest::READABLE) };
    let afd = match registered {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(peer = %peer, error = %e, "could not watch a direct link");
            return;
        }
    };
    let mut asm = Assembler::default();
    loop {
        let Ok(mut guard) = afd.readable().await else {
            return;
        };
        loop {
            match asm.read(afd.get_ref()) {
                Ok(Received::Frame(frame)) => {
                    if !each(frame) {
                        tracing::warn!(peer = %peer, "{what}: a frame that does not belong on it; link closed");
                        return;
                    }
                }
                Ok(Received::Partial) => {}
                Ok(Received::WouldBlock) => {
                    guard.clear_ready();
                    break;
                }
                Ok(Received::Closed) => return,
                Err(e) => {
                    tracing::warn!(peer = %peer, error = %e, "{what}: malformed; link closed");
                    return;
                }
            }
        }
    }
}

/// The caller's side: answers and refusals, until the callee's end closes.
async fn read_answers(shared: Weak<Shared>, link: Arc<OutLink>, socket: OwnedFd) {
    read_frames(socket, "a direct link's answers", &link.to, |frame| {
        let Some(shared) = shared.upgrade() else {
            return true;
        };
        match frame {
            LinkFrame::Reply { call, outcome } => {
                lock(&link.in_flight).remove(&call);
                crate::messaging::answered(&shared, call, Answer::Reply(outcome));
                true
            }
            LinkFrame::Refused {
                id,
                reason,
                payload,
            } => {
                lock(&link.in_flight).remove(&id);
                given_back(&shared, &link.to, id, reason, payload);
                true
            }
            LinkFrame::Message { .. } => false,
        }
    })
    .await;
    // The callee is gone (or broke the link): forget it, and fail what it never answered.
    let Some(shared) = shared.upgrade() else {
        return;
    };
    {
        let mut out = lock(&shared.links.out);
        if matches!(out.get(&link.to), Some(Out::Open(l)) if l.id == link.id) {
            out.remove(&link.to);
        }
    }
    let calls: Vec<u64> = lock(&link.in_flight).drain().collect();
    tracing::debug!(to = %link.to, link = link.id, failed = calls.len(), "direct link closed");
    for call in calls {
        crate::messaging::answered(
            &shared,
            call,
            Answer::CalleeExited {
                to: link.to.clone(),
                incarnation: link.incarnation,
            },
        );
    }
}

/// The callee's side: messages and calls, delivered as if through the hub.
async fn read_messages(shared: Weak<Shared>, link: Arc<InLink>, socket: OwnedFd) {
    let from = link.from.clone();
    read_frames(socket, "a direct link", &from, |frame| {
        let Some(shared) = shared.upgrade() else {
            return true;
        };
        match frame {
            LinkFrame::Message { id, call, payload } => {
                crate::messaging::deliver(
                    &shared,
                    link.from.clone(),
                    link.incarnation,
                    id,
                    call,
                    payload,
                    Some(link.clone()),
                );
                true
            }
            LinkFrame::Reply { .. } | LinkFrame::Refused { .. } => false,
        }
    })
    .await;
    tracing::debug!(from = %from, link = link.id, "direct link from another node closed");
}
