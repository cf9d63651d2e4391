//! Messages and calls between nodes, by logical name, routed through the runtime.
//!
//! Every message type names itself with a stable tag ([`crate::Message`], [`crate::message!`]);
//! a request names its response ([`crate::Request`]), so a call is typed end to end.
//!
//! ```no_run
//! # fn demo(node: &syncra_node::Node) {
//! use std::time::Duration;
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct Ping(u64);
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct Pong(u64);
//! syncra_node::message!(Pong = "example.pong/1");
//! syncra_node::message!(Ping = "example.ping/1" => Pong);
//!
//! // A call waits (within its timeout) for a callee that is restarting.
//! let pong: Result<Pong, _> = node.call("world/arena", Ping(1), Duration::from_secs(1));
//! // The callee answers from its own loop.
//! while let Some(incoming) = node.recv_timeout(Duration::ZERO) {
//!     if let Ok(Ping(n)) = incoming.decode::<Ping>() {
//!         incoming.reply(&Pong(n));
//!     }
//! }
//! # }
//! ```
//!
//! A message that cannot be delivered comes back with the reason: at once for a name no node
//! has, and through [`crate::Node::returned`] for a `send` the runtime could not deliver later.
//!
//! A node answers a call from its main loop ([`crate::Node::recv_timeout`]), or, for quick
//! answers that need no main-loop state, on its link thread as the call arrives
//! ([`crate::Node::serve_calls`]). A caller that is async can run on that thread too
//! ([`crate::Node::spawn`]): a call between two link threads crosses no thread inside either
//! process.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use syncra_protocol::message::{Message, Request, TagMismatch, expect_tag};
use syncra_protocol::node::{NodeToRuntime, Payload, Routed, Undeliverable};
use syncra_protocol::{NodeName, wire};

use crate::mailbox::Mailbox;
use crate::{Node, Shared};

/// How long [`Node::send`] lets the runtime hold a message for a node that is not ready.
pub const DEFAULT_SEND_WAIT: Duration = Duration::from_secs(5);

/// Most messages waiting in a node's inbox; more are returned to their senders.
pub const INBOX_CAPACITY: usize = 4096;

/// Refuse a call of `R` from the command line unless `R` allows it ([`Request::CLI`]).
fn cli_allowed<R: Request>(from: &NodeName) -> Result<(), String> {
    if from.as_str() == syncra_protocol::node::CLI_CALLER && !R::CLI {
        Err(format!(
            "`{}` may not be called from the command line: its type does not allow it (`message!(.. => .., cli)`)",
            R::TAG
        ))
    } else {
        Ok(())
    }
}

/// A payload of message type `M`.
pub(crate) fn payload<M: Message>(msg: &M) -> Payload {
    Payload {
        type_tag: M::TAG.to_owned(),
        bytes: wire::encode(msg),
    }
}

/// Decode `payload` as an `M`, refusing another tag (naming both).
pub(crate) fn decode<M: Message>(what: &'static str, payload: &Payload) -> Result<M, MessageError> {
    expect_tag::<M>(&payload.type_tag)?;
    Ok(wire::decode(what, &payload.bytes)?)
}

/// What to do when the receiver is not ready (restarting, not started yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Let the runtime hold the message until the receiver is ready, up to this long.
    Wait(Duration),
    /// Return the message at once.
    FailFast,
}

/// A message that could not be delivered, given back to its sender.
#[derive(Debug, thiserror::Error)]
#[error("message for {to} not delivered: {reason}")]
pub struct Undelivered<M> {
    /// The receiver's name, as given.
    pub to: String,
    /// Why.
    pub reason: Undeliverable,
    /// The message itself.
    pub message: M,
}

/// Why a call has no answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError<M> {
    /// The call was not delivered; the request comes back.
    #[error(transparent)]
    Undelivered(Undelivered<M>),
    /// No answer within the timeout (the callee may still act on the request).
    #[error("no answer from {to} within {} ms", after.as_millis())]
    Timeout {
        /// The callee.
        to: String,
        /// The timeout.
        after: Duration,
    },
    /// The callee answered with an error.
    #[error("{to} answered with an error: {message}")]
    Remote {
        /// The callee.
        to: String,
        /// Its error.
        message: String,
    },
    /// The callee took the call and exited before answering (it crashed, hung or was
    /// restarted). It may have acted on the request, which comes back so the caller can
    /// decide whether to retry it.
    #[error(
        "{to} (incarnation {incarnation}) exited before answering; it may have acted on the request"
    )]
    CalleeExited {
        /// The callee.
        to: String,
        /// The incarnation that took the call.
        incarnation: u64,
        /// The request.
        request: M,
    },
    /// The answer is not of the expected type.
    #[error("the answer from {to} does not decode: {message}")]
    BadAnswer {
        /// The callee.
        to: String,
        /// What is wrong.
        message: String,
    },
    /// The name is not a valid node name, or the link to the runtime is gone.
    #[error("{0}")]
    Link(String),
}

/// A message or call from another node.
#[derive(Debug)]
pub struct Incoming {
    from: NodeName,
    from_incarnation: u64,
    id: u64,
    call: bool,
    payload: Payload,
    shared: Arc<Shared>,
    answered: bool,
    /// The direct link it came over (its answer goes back on it), or none: the hub.
    via: Option<Arc<crate::direct::InLink>>,
}

/// The payload is not the message the receiver expects.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    /// The sender sent another message (its tag differs).
    #[error(transparent)]
    TagMismatch(#[from] TagMismatch),
    /// The tag is right but the bytes do not decode (the sender's type has another shape
    /// under the same tag: one of them should have changed the tag's version).
    #[error(transparent)]
    Decode(#[from] wire::DecodeError),
}

impl Incoming {
    /// The sender.
    pub fn from(&self) -> &NodeName {
        &self.from
    }

    /// Whether the sender waits for an answer.
    pub fn is_call(&self) -> bool {
        self.call
    }

    /// Whether it came over a direct link from its sender, not through the runtime's hub.
    pub fn is_direct(&self) -> bool {
        self.via.is_some()
    }

    /// The payload's tag.
    pub fn tag(&self) -> &str {
        &self.payload.type_tag
    }

    /// Whether the payload is an `M` (by its tag).
    pub fn is<M: Message>(&self) -> bool {
        self.payload.type_tag == M::TAG
    }

    /// Decode the payload as an `M`; a payload with another tag is a
    /// [`MessageError::TagMismatch`] naming both tags.
    pub fn decode<M: Message>(&self) -> Result<M, MessageError> {
        decode("routed message", &self.payload)
    }

    /// Answer a call (a plain message ignores the answer) with `answer`, which should be the
    /// request's [`Request::Response`]: the caller refuses another tag.
    pub fn reply<M: Message>(mut self, answer: &M) {
        self.answer(Ok(payload(answer)));
    }

    /// Decode the payload as the request `R` and answer it with `answer`'s result: a typed
    /// handler for a call taken from the inbox. A payload that is not an `R` is left alone
    /// and given back as `Err(self)`.
    pub fn answer_with<R: Request>(
        self,
        answer: impl FnOnce(R) -> Result<R::Response, String>,
    ) -> Result<(), Incoming> {
        if !self.is::<R>() {
            return Err(self);
        }
        if let Err(refusal) = cli_allowed::<R>(&self.from) {
            self.reply_error(refusal);
            return Ok(());
        }
        match self.decode::<R>() {
            Ok(request) => {
                match answer(request) {
                    Ok(response) => self.reply(&response),
                    Err(message) => self.reply_error(message),
                }
                Ok(())
            }
            Err(MessageError::TagMismatch(_)) => Err(self),
            Err(e) => {
                self.reply_error(format!("the request does not decode: {e}"));
                Ok(())
            }
        }
    }

    /// Answer a call with an error.
    pub fn reply_error(mut self, message: impl Into<String>) {
        self.answer(Err(message.into()));
    }

    fn answer(&mut self, outcome: Result<Payload, String>) {
        if !self.call || self.answered {
            return;
        }
        self.answered = true;
        match &self.via {
            Some(link) => link.reply(self.id, outcome),
            None => self.shared.send(NodeToRuntime::Reply {
                to: self.from.clone(),
                incarnation: self.from_incarnation,
                call: self.id,
                outcome,
            }),
        }
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        // A caller is never left to time out on a call its callee threw away.
        let tag = self.payload.type_tag.clone();
        self.answer(Err(format!(
            "the callee took the `{tag}` call and did not answer it (does it know this request?)"
        )));
    }
}

/// A call handler run on the link thread: the request's payload in, the answer out.
#[derive(Clone)]
pub(crate) struct Handler(Arc<HandlerFn>);

type HandlerFn = dyn Fn(&NodeName, &Payload) -> Result<Payload, String> + Send + Sync;

impl std::fmt::Debug for Handler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Handler")
    }
}

/// A message the runtime gave back.
#[derive(Debug)]
pub struct Returned {
    /// The receiver it was for.
    pub to: NodeName,
    /// Why it came back.
    pub reason: Undeliverable,
    /// The message.
    pub payload: Payload,
}

impl Returned {
    /// Decode the message as the `M` that was sent.
    pub fn decode<M: Message>(&self) -> Result<M, MessageError> {
        decode("returned message", &self.payload)
    }
}

/// What answers a call: the answer, or the request given back.
#[derive(Debug)]
pub(crate) enum Answer {
    Reply(Result<Payload, String>),
    Returned(Returned),
    CalleeExited { to: NodeName, incarnation: u64 },
}

/// Route a delivered message from the runtime into the inbox (or back to its sender).
pub(crate) fn deliver(
    shared: &Arc<Shared>,
    from: NodeName,
    from_incarnation: u64,
    id: u64,
    call: bool,
    payload: Payload,
    via: Option<Arc<crate::direct::InLink>>,
) {
    if via.is_none() && !call && payload.type_tag == syncra_protocol::direct::FENCE_TAG {
        shared
            .links
            .fence(shared, &from, from_incarnation, &payload);
        return;
    }
    if call {
        let handler = shared
            .handlers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&payload.type_tag)
            .cloned();
        if let Some(handler) = handler {
            let outcome = (handler.0)(&from, &payload);
            match &via {
                Some(link) => link.reply(id, outcome),
                None => shared.send(NodeToRuntime::Reply {
                    to: from,
                    incarnation: from_incarnation,
                    call: id,
                    outcome,
                }),
            }
            return;
        }
    }
    let incoming = Incoming {
        from,
        from_incarnation,
        id,
        call,
        payload,
        shared: shared.clone(),
        answered: false,
        via,
    };
    let pushed = shared.inbox.push(incoming);
    if pushed.is_ok() {
        shared.wake_loop();
    }
    if let Err(mut back) = pushed {
        back.answered = true;
        tracing::warn!(from = %back.from, "inbox full: message returned to its sender");
        let payload = std::mem::replace(
            &mut back.payload,
            Payload {
                type_tag: String::new(),
                bytes: Vec::new(),
            },
        );
        match &back.via {
            Some(link) => link.refuse(back.id, Undeliverable::QueueFull, payload),
            None => shared.send(NodeToRuntime::Refused {
                to: back.from.clone(),
                incarnation: back.from_incarnation,
                id: back.id,
                reason: Undeliverable::QueueFull,
                payload,
            }),
        }
    }
}

/// An answer or a returned message for id `id`: to the call waiting for it, or, for a plain
/// message, kept for [`Node::returned`].
pub(crate) fn answered(shared: &Shared, id: u64, answer: Answer) {
    let waiter = shared
        .pending
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&id);
    match (waiter, answer) {
        (Some(w), answer) => {
            let _ = w.push(answer);
        }
        // A link's fence that could not be delivered (its receiver restarted meanwhile): the
        // link ends with that incarnation anyway; nothing the node's code sent.
        (None, Answer::Returned(ret))
            if ret.payload.type_tag == syncra_protocol::direct::FENCE_TAG =>
        {
            tracing::debug!(to = %ret.to, "a direct link's fence came back");
        }
        (None, Answer::Returned(ret)) => {
            tracing::warn!(to = %ret.to, reason = %ret.reason, "a message was returned undelivered");
            if shared.returned.push(ret).is_ok() {
                shared.wake_loop();
            } else {
                tracing::warn!(
                    "too many returned messages not collected with Node::returned; dropped this one"
                );
            }
        }
        (None, Answer::Reply(_) | Answer::CalleeExited { .. }) => {
            tracing::debug!(id, "an answer after the call timed out")
        }
    }
}

impl Node {
    fn resolve(&self, to: &str) -> Result<NodeName, Undeliverable> {
        let name = NodeName::parse(to).map_err(|_| Undeliverable::UnknownName)?;
        if self.boot.directory.contains(&name) {
            Ok(name)
        } else {
            Err(Undeliverable::UnknownName)
        }
    }

    fn route<M: Message>(
        &self,
        to: NodeName,
        msg: &M,
        call: bool,
        delivery: Delivery,
    ) -> (u64, Option<Arc<Mailbox<Answer>>>) {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let routed = Routed {
            id,
            to,
            call,
            wait_ms: match delivery {
                Delivery::Wait(d) => Some(d.as_millis().min(u128::from(u64::MAX)) as u64),
                Delivery::FailFast => None,
            },
            payload: payload(msg),
        };
        let waiter = call.then(|| {
            let waiter = Arc::new(Mailbox::new(1));
            self.shared
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id, waiter.clone());
            waiter
        });
        self.shared.links.route(&self.shared, routed);
        (id, waiter)
    }

    /// Send `msg` to the node named `to`, holding it up to [`DEFAULT_SEND_WAIT`] for a node
    /// that is restarting. A name no node has gives the message back at once; a message the
    /// runtime cannot deliver later comes back through [`Node::returned`].
    pub fn send<M: Message>(&self, to: &str, msg: M) -> Result<(), Undelivered<M>> {
        self.send_with(to, msg, Delivery::Wait(DEFAULT_SEND_WAIT))
    }

    /// [`Node::send`], choosing what happens when the receiver is not ready.
    pub fn send_with<M: Message>(
        &self,
        to: &str,
        msg: M,
        delivery: Delivery,
    ) -> Result<(), Undelivered<M>> {
        match self.resolve(to) {
            Ok(name) => {
                self.route(name, &msg, false, delivery);
                Ok(())
            }
            Err(reason) => Err(Undelivered {
                to: to.to_owned(),
                reason,
                message: msg,
            }),
        }
    }

    /// A message this node sent that the runtime gave back, if any.
    pub fn returned(&self) -> Option<Returned> {
        self.shared.returned.try_recv()
    }

    /// Call the node named `to` and wait for its answer, up to `timeout` in all — including
    /// the time the callee takes to become ready if it is restarting. Blocks the thread.
    pub fn call<R: Request>(
        &self,
        to: &str,
        req: R,
        timeout: Duration,
    ) -> Result<R::Response, CallError<R>> {
        self.call_with(to, req, timeout, true)
    }

    /// [`Node::call`] that fails at once if the callee is not ready (`wait_for_ready = false`).
    pub fn call_with<R: Request>(
        &self,
        to: &str,
        req: R,
        timeout: Duration,
        wait_for_ready: bool,
    ) -> Result<R::Response, CallError<R>> {
        let (id, waiter) = match self.start_call(to, &req, timeout, wait_for_ready) {
            Ok(started) => started,
            Err(reason) => return Err(undelivered(to, reason, req)),
        };
        let answer = waiter.recv_timeout(timeout);
        self.finish_call(to, id, req, timeout, answer)
    }

    /// [`Node::call_with`] for async callers.
    pub async fn call_async<R: Request>(
        &self,
        to: &str,
        req: R,
        timeout: Duration,
        wait_for_ready: bool,
    ) -> Result<R::Response, CallError<R>> {
        let (id, waiter) = match self.start_call(to, &req, timeout, wait_for_ready) {
            Ok(started) => started,
            Err(reason) => return Err(undelivered(to, reason, req)),
        };
        let answer = tokio::time::timeout(timeout, waiter.recv()).await.ok();
        self.finish_call(to, id, req, timeout, answer)
    }

    fn start_call<R: Request>(
        &self,
        to: &str,
        req: &R,
        timeout: Duration,
        wait_for_ready: bool,
    ) -> Result<(u64, Arc<Mailbox<Answer>>), Undeliverable> {
        let name = self.resolve(to)?;
        let delivery = if wait_for_ready {
            Delivery::Wait(timeout)
        } else {
            Delivery::FailFast
        };
        let (id, waiter) = self.route(name, req, true, delivery);
        Ok((id, waiter.expect("calls have a waiter")))
    }

    fn finish_call<R: Request>(
        &self,
        to: &str,
        id: u64,
        req: R,
        timeout: Duration,
        answer: Option<Answer>,
    ) -> Result<R::Response, CallError<R>> {
        match answer {
            None => {
                self.shared
                    .pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&id);
                Err(CallError::Timeout {
                    to: to.to_owned(),
                    after: timeout,
                })
            }
            Some(Answer::Returned(ret)) => Err(undelivered(to, ret.reason, req)),
            Some(Answer::CalleeExited { to, incarnation }) => Err(CallError::CalleeExited {
                to: to.to_string(),
                incarnation,
                request: req,
            }),
            Some(Answer::Reply(Err(message))) => Err(CallError::Remote {
                to: to.to_owned(),
                message,
            }),
            Some(Answer::Reply(Ok(payload))) => {
                decode::<R::Response>("answer", &payload).map_err(|e| CallError::BadAnswer {
                    to: to.to_owned(),
                    message: e.to_string(),
                })
            }
        }
    }

    /// Answer every call whose request is an `R` with `answer`, on the node's link thread as
    /// the call arrives, instead of through the inbox and the main loop. For answers that need
    /// no main-loop state (a lookup in shared data, an echo, a counter): `answer` runs on the
    /// thread that carries all of this node's messages, so it must be quick and must not block.
    /// Its `Err` reaches the caller as [`CallError::Remote`]. Registering again for the same
    /// `R` replaces the handler.
    ///
    /// ```no_run
    /// # fn demo(node: &syncra_node::Node) {
    /// #[derive(serde::Serialize, serde::Deserialize)]
    /// struct Hello(String);
    /// #[derive(serde::Serialize, serde::Deserialize)]
    /// struct Greeting(String);
    /// syncra_node::message!(Greeting = "example.greeting/1");
    /// syncra_node::message!(Hello = "example.hello/1" => Greeting);
    /// node.serve_calls(|from, Hello(name): Hello| Ok(Greeting(format!("hello {name}, from {from}"))));
    /// # }
    /// ```
    pub fn serve_calls<R, F>(&self, answer: F)
    where
        R: Request + 'static,
        F: Fn(&NodeName, R) -> Result<R::Response, String> + Send + Sync + 'static,
    {
        let handler = Handler(Arc::new(move |from: &NodeName, payload: &Payload| {
            cli_allowed::<R>(from)?;
            let req: R = wire::decode("routed call", &payload.bytes)
                .map_err(|e| format!("the request `{}` does not decode: {e}", R::TAG))?;
            Ok(self::payload(&answer(from, req)?))
        }));
        self.shared
            .handlers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(R::TAG.to_owned(), handler);
    }

    /// The next message or call from another node, waiting up to `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Incoming> {
        if timeout.is_zero() {
            return self.shared.inbox.try_recv();
        }
        self.shared.inbox.recv_timeout(timeout)
    }

    /// The next message or call from another node (for async main loops).
    pub async fn recv(&self) -> Incoming {
        self.shared.inbox.recv().await
    }
}

fn undelivered<M>(to: &str, reason: Undeliverable, message: M) -> CallError<M> {
    CallError::Undelivered(Undelivered {
        to: to.to_owned(),
        reason,
        message,
    })
}
