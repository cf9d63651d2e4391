//! The router: delivers messages and calls between nodes by logical name.
//!
//! Children are not connected to each other (the hub runs ractor_cluster in Isolated mode),
//! so every routed message goes child → gateway → router → the current incarnation's agent.
//! A name resolves when the message arrives, never earlier, so nobody holds a stale reference
//! across a restart.
//!
//! **Invariants:** a message is delivered, or returned to its sender with the reason; never
//! dropped silently (unless its sender is gone too). A message for a node that is not ready
//! waits only if its sender asked, and only as long as it asked; the queue per node is bounded.
//! A call delivered to an incarnation that exits before answering is answered by the router
//! ([`RuntimeToNode::CalleeExited`]) as soon as the exit is known: a caller never waits out its
//! timeout for a callee that is already gone.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use ractor_cluster::RactorMessage;
use syncra_protocol::node::{
    CLI_CALLER, NodeInbox, NodeToRuntime, Payload, Routed, RuntimeToNode, Undeliverable,
};
use syncra_protocol::{NodeName, NodeState, wire};

use crate::registry::{LiveAgent, Registry};

/// Most messages held for one node that is not ready.
pub(crate) const MAX_PARKED: usize = 1024;

/// Most unanswered calls tracked per callee incarnation; calls beyond it are still delivered,
/// their callers just learn of the callee's exit by their own timeout.
pub(crate) const MAX_IN_FLIGHT: usize = 4096;

/// What the router handles.
#[derive(RactorMessage)]
pub(crate) enum RouterMsg {
    /// A routing message from node `from` (incarnation `incarnation`), authenticated by the
    /// gateway: a message or call for another node (`Route`), a callee's answer (`Reply`), or
    /// a delivered message its receiver could not take (`Refused`).
    FromNode {
        from: NodeName,
        incarnation: u64,
        body: NodeToRuntime,
    },
    /// Some node changed state: deliver what waits for it.
    Changed,
    /// A held message's wait may have ended.
    Expire,
    /// A message or call from the command line (`syncra send`, `syncra call`), as from
    /// [`CLI_CALLER`]; `reply` hears how it went.
    Cli {
        to: NodeName,
        call: bool,
        payload: Payload,
        wait_ms: Option<u64>,
        reply: tokio::sync::oneshot::Sender<CliOutcome>,
    },
}

/// How a message or call from the command line went.
#[derive(Debug)]
pub(crate) enum CliOutcome {
    /// The message was delivered (a send).
    Delivered,
    /// The callee answered (or answered with an error).
    Answered(Result<Payload, String>),
    /// It was not delivered.
    Undeliverable(Undeliverable),
    /// The callee exited before answering.
    CalleeExited { incarnation: u64 },
}

/// Most calls from the command line waiting for their answer at once.
pub(crate) const MAX_CLI_CALLS: usize = 256;

/// The command line, as a caller.
fn cli_caller() -> NodeName {
    NodeName::driver(CLI_CALLER)
}

struct Parked {
    from: NodeName,
    incarnation: u64,
    msg: Routed,
    deadline: Instant,
}

/// A delivered call waiting for its answer: who made it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Caller {
    name: NodeName,
    incarnation: u64,
    call: u64,
}

pub(crate) struct Router;

pub(crate) struct RouterState {
    registry: Arc<Registry>,
    parked: HashMap<NodeName, VecDeque<Parked>>,
    /// Calls delivered to each callee incarnation and not answered yet.
    in_flight: HashMap<(NodeName, u64), HashSet<Caller>>,
    /// Messages and calls from the command line waiting for their outcome, by id.
    cli: HashMap<u64, tokio::sync::oneshot::Sender<CliOutcome>>,
    next_cli: u64,
}

impl Actor for Router {
    type Msg = RouterMsg;
    type State = RouterState;
    type Arguments = Arc<Registry>;

    async fn pre_start(
        &self,
        myself: ActorRef<RouterMsg>,
        registry: Arc<Registry>,
    ) -> Result<RouterState, ActorProcessingErr> {
        let mut changes = registry.watch();
        let me = myself.clone();
        tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                if me.cast(RouterMsg::Changed).is_err() {
                    return;
                }
            }
        });
        Ok(RouterState {
            registry,
            parked: HashMap::new(),
            in_flight: HashMap::new(),
            cli: HashMap::new(),
            next_cli: 0,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<RouterMsg>,
        msg: RouterMsg,
        st: &mut RouterState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RouterMsg::FromNode {
                from,
                incarnation: from_incarnation,
                body,
            } => match body {
                NodeToRuntime::Route(msg) => st.route(&myself, from, from_incarnation, msg),
                // `incarnation` here is the caller's, the one the answer is for.
                NodeToRuntime::Reply {
                    to,
                    incarnation,
                    call,
                    outcome,
                } => {
                    st.answered(&from, from_incarnation, &to, incarnation, call);
                    if to.as_str() == CLI_CALLER {
                        if let Some(tx) = st.cli.remove(&call) {
                            let _ = tx.send(CliOutcome::Answered(outcome));
                        }
                        return Ok(());
                    }
                    match st.registry.agent(&to, incarnation) {
                        Some(agent) => cast(&agent, &RuntimeToNode::Answer { call, outcome }),
                        None => {
                            tracing::debug!(caller = %to, incarnation, call, "an answer for a caller that is gone")
                        }
                    }
                }
                NodeToRuntime::Refused {
                    to,
                    incarnation,
                    id,
                    reason,
                    payload,
                } => {
                    st.answered(&from, from_incarnation, &to, incarnation, id);
                    st.give_back(&to, incarnation, id, from, reason, payload)
                }
                // The gateway gives the rest to the node's supervisor.
                _ => {}
            },
            RouterMsg::Changed => {
                st.flush();
                st.callees_gone();
            }
            RouterMsg::Expire => st.expire(),
            RouterMsg::Cli {
                to,
                call,
                payload,
                wait_ms,
                reply,
            } => {
                if st.cli.len() >= MAX_CLI_CALLS {
                    let _ = reply.send(CliOutcome::Undeliverable(Undeliverable::QueueFull));
                    return Ok(());
                }
                st.next_cli += 1;
                let id = st.next_cli;
                st.cli.insert(id, reply);
                let msg = Routed {
                    id,
                    to,
                    call,
                    wait_ms,
                    payload,
                };
                st.route(&myself, cli_caller(), 0, msg);
            }
        }
        Ok(())
    }
}

fn cast(agent: &ActorRef<NodeInbox>, msg: &RuntimeToNode) {
    if agent.cast(NodeInbox::Packet(wire::encode(msg))).is_err() {
        tracing::debug!("a node's agent went away before delivery");
    }
}

impl RouterState {
    fn route(&mut self, me: &ActorRef<RouterMsg>, from: NodeName, incarnation: u64, msg: Routed) {
        if self.registry.shutting_down() {
            return self.bounce(&from, incarnation, msg, Undeliverable::ShuttingDown);
        }
        let Some((state, agent)) = self.registry.target(&msg.to) else {
            return self.bounce(&from, incarnation, msg, Undeliverable::UnknownName);
        };
        match (state, agent, msg.wait_ms) {
            (NodeState::Ready, Some(callee), _) => {
                // What waited for this node goes first: the registry's word that it is ready
                // (which flushes them) may come after this message does, and one sender's
                // messages must arrive in the order they were sent.
                if let Some(queue) = self.parked.remove(&msg.to) {
                    for p in queue {
                        self.deliver(callee.clone(), p.from, p.incarnation, p.msg);
                    }
                }
                self.deliver(callee, from, incarnation, msg)
            }
            (NodeState::Failed, _, _) => {
                self.bounce(&from, incarnation, msg, Undeliverable::Failed)
            }
            (state, _, None) => {
                self.bounce(&from, incarnation, msg, Undeliverable::NotReady { state })
            }
            (_, _, Some(ms)) => {
                let queue = self.parked.entry(msg.to.clone()).or_default();
                if queue.len() >= MAX_PARKED {
                    return self.bounce(&from, incarnation, msg, Undeliverable::QueueFull);
                }
                // Whatever the sender asked: an unbounded wait would overflow the deadline.
                let wait = syncra_protocol::node::bounded_wait(ms);
                queue.push_back(Parked {
                    from,
                    incarnation,
                    msg,
                    deadline: Instant::now() + wait,
                });
                me.send_after(wait, || RouterMsg::Expire);
            }
        }
    }

    /// Return a routed message to its sender.
    fn bounce(&mut self, sender: &NodeName, incarnation: u64, msg: Routed, reason: Undeliverable) {
        self.give_back(sender, incarnation, msg.id, msg.to, reason, msg.payload);
    }

    /// Deliver what waits for nodes that became ready.
    fn flush(&mut self) {
        let mut ready = Vec::new();
        self.parked
            .retain(|to, queue| match self.registry.target(to) {
                Some((NodeState::Ready, Some(callee))) => {
                    ready.push((callee, std::mem::take(queue)));
                    false
                }
                _ => true,
            });
        for (callee, queue) in ready {
            for p in queue {
                self.deliver(callee.clone(), p.from, p.incarnation, p.msg);
            }
        }
    }

    /// Deliver `msg` to `callee` (its incarnation and agent); a call is remembered until
    /// answered, so that its caller hears at once if the callee exits first.
    fn deliver(
        &mut self,
        (callee_incarnation, agent): LiveAgent,
        from: NodeName,
        incarnation: u64,
        msg: Routed,
    ) {
        if msg.call {
            let calls = self
                .in_flight
                .entry((msg.to.clone(), callee_incarnation))
                .or_default();
            if calls.len() < MAX_IN_FLIGHT {
                calls.insert(Caller {
                    name: from.clone(),
                    incarnation,
                    call: msg.id,
                });
            }
        }
        let (id, call, from_cli) = (msg.id, msg.call, from.as_str() == CLI_CALLER);
        cast(
            &agent,
            &RuntimeToNode::Deliver {
                from,
                from_incarnation: incarnation,
                id: msg.id,
                call: msg.call,
                payload: msg.payload,
            },
        );
        if from_cli
            && !call
            && let Some(tx) = self.cli.remove(&id)
        {
            let _ = tx.send(CliOutcome::Delivered);
        }
    }

    /// Forget call `call` of `caller` (incarnation `incarnation`) at `callee`: it was answered
    /// or refused.
    fn answered(
        &mut self,
        callee: &NodeName,
        callee_incarnation: u64,
        caller: &NodeName,
        incarnation: u64,
        call: u64,
    ) {
        let key = (callee.clone(), callee_incarnation);
        if let Some(calls) = self.in_flight.get_mut(&key) {
            calls.remove(&Caller {
                name: caller.clone(),
                incarnation,
                call,
            });
            if calls.is_empty() {
                self.in_flight.remove(&key);
            }
        }
    }

    /// Tell the callers of every incarnation that exited with their calls unanswered.
    fn callees_gone(&mut self) {
        let registry = &self.registry;
        let gone: Vec<_> = self
            .in_flight
            .extract_if(|(callee, incarnation), _| registry.agent(callee, *incarnation).is_none())
            .collect();
        for ((callee, callee_incarnation), callers) in gone {
            tracing::debug!(%callee, incarnation = callee_incarnation, calls = callers.len(), "a callee exited with calls unanswered");
            for c in callers {
                if c.name.as_str() == CLI_CALLER {
                    if let Some(tx) = self.cli.remove(&c.call) {
                        let _ = tx.send(CliOutcome::CalleeExited {
                            incarnation: callee_incarnation,
                        });
                    }
                    continue;
                }
                if let Some(agent) = self.registry.agent(&c.name, c.incarnation) {
                    cast(
                        &agent,
                        &RuntimeToNode::CalleeExited {
                            call: c.call,
                            to: callee.clone(),
                            incarnation: callee_incarnation,
                        },
                    );
                }
            }
        }
    }

    /// Return what waited too long.
    fn expire(&mut self) {
        let now = Instant::now();
        let mut returns = Vec::new();
        for (to, queue) in self.parked.iter_mut() {
            let state = self.registry.state(to).unwrap_or(NodeState::Stopped);
            while queue.front().is_some_and(|p| p.deadline <= now) {
                let p = queue.pop_front().expect("checked");
                returns.push((p, Undeliverable::WaitExpired { state }));
            }
        }
        self.parked.retain(|_, q| !q.is_empty());
        for (p, reason) in returns {
            self.bounce(&p.from, p.incarnation, p.msg, reason);
        }
    }

    /// Return a message to its sender, with the reason.
    fn give_back(
        &mut self,
        sender: &NodeName,
        incarnation: u64,
        id: u64,
        to: NodeName,
        reason: Undeliverable,
        payload: Payload,
    ) {
        tracing::debug!(from = %sender, to = %to, %reason, "returning an undeliverable message");
        if sender.as_str() == CLI_CALLER {
            if let Some(tx) = self.cli.remove(&id) {
                let _ = tx.send(CliOutcome::Undeliverable(reason));
            }
            return;
        }
        match self.registry.agent(sender, incarnation) {
            Some(agent) => cast(
                &agent,
                &RuntimeToNode::Returned {
                    id,
                    to,
                    reason,
                    payload,
                },
            ),
            None => {
                tracing::debug!(from = %sender, "the sender of an undeliverable message is gone too")
            }
        }
    }
}
