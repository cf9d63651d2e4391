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

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use ractor_cluster::RactorMessage;
use syncra_protocol::node::{
    NodeInbox, NodeToRuntime, Payload, Routed, RuntimeToNode, Undeliverable,
};
use syncra_protocol::{NodeName, NodeState, wire};

use crate::registry::Registry;

/// Most messages held for one node that is not ready.
pub(crate) const MAX_PARKED: usize = 1024;

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
}

struct Parked {
    from: NodeName,
    incarnation: u64,
    msg: Routed,
    deadline: Instant,
}

pub(crate) struct Router;

pub(crate) struct RouterState {
    registry: Arc<Registry>,
    parked: HashMap<NodeName, VecDeque<Parked>>,
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
                incarnation,
                body,
            } => match body {
                NodeToRuntime::Route(msg) => st.route(&myself, from, incarnation, msg),
                // `incarnation` here is the caller's, the one the answer is for.
                NodeToRuntime::Reply {
                    to,
                    incarnation,
                    call,
                    outcome,
                } => match st.registry.agent(&to, incarnation) {
                    Some(agent) => cast(&agent, &RuntimeToNode::Answer { call, outcome }),
                    None => {
                        tracing::debug!(caller = %to, incarnation, call, "an answer for a caller that is gone")
                    }
                },
                NodeToRuntime::Refused {
                    to,
                    incarnation,
                    id,
                    reason,
                    payload,
                } => st.give_back(&to, incarnation, id, from, reason, payload),
                // The gateway gives the rest to the node's supervisor.
                _ => {}
            },
            RouterMsg::Changed => st.flush(),
            RouterMsg::Expire => st.expire(),
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
            (NodeState::Ready, Some(agent), _) => deliver(&agent, from, incarnation, msg),
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
                let wait = Duration::from_millis(ms);
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
    fn bounce(&self, sender: &NodeName, incarnation: u64, msg: Routed, reason: Undeliverable) {
        self.give_back(sender, incarnation, msg.id, msg.to, reason, msg.payload);
    }

    /// Deliver what waits for nodes that became ready.
    fn flush(&mut self) {
        let registry = self.registry.clone();
        self.parked.retain(|to, queue| {
            let agent = match registry.target(to) {
                Some((NodeState::Ready, Some(agent))) => agent,
                _ => return true,
            };
            for p in queue.drain(..) {
                deliver(&agent, p.from, p.incarnation, p.msg);
            }
            false
        });
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
        &self,
        sender: &NodeName,
        incarnation: u64,
        id: u64,
        to: NodeName,
        reason: Undeliverable,
        payload: Payload,
    ) {
        tracing::debug!(from = %sender, to = %to, %reason, "returning an undeliverable message");
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

fn deliver(agent: &ActorRef<NodeInbox>, from: NodeName, incarnation: u64, msg: Routed) {
    cast(
        agent,
        &RuntimeToNode::Deliver {
            from,
            from_incarnation: incarnation,
            id: msg.id,
            call: msg.call,
            payload: msg.payload,
        },
    );
}
