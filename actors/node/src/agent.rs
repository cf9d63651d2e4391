//! The agent: the actor through which the runtime reaches this node.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use syncra_protocol::node::{NodeInbox, RUNTIME_GROUP, RuntimeToNode};
use syncra_protocol::wire;
use tokio::sync::mpsc::UnboundedSender;

use crate::cluster::LinkEvent;
use crate::{Shared, messaging};

pub(crate) struct Agent {
    pub(crate) shared: Arc<Shared>,
    pub(crate) events: UnboundedSender<LinkEvent>,
}

impl Actor for Agent {
    type Msg = NodeInbox;
    type State = ();
    type Arguments = ();

    async fn pre_start(
        &self,
        myself: ActorRef<NodeInbox>,
        _: (),
    ) -> Result<(), ActorProcessingErr> {
        ractor::pg::monitor(RUNTIME_GROUP.to_owned(), myself.get_cell());
        Ok(())
    }

    async fn handle(
        &self,
        _: ActorRef<NodeInbox>,
        msg: NodeInbox,
        _: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        let NodeInbox::Packet(bytes) = msg;
        match wire::decode::<RuntimeToNode>("runtime message", &bytes) {
            Ok(RuntimeToNode::Shutdown { grace_ms, reason }) => {
                tracing::info!(grace_ms, reason, "the runtime asks this node to stop");
                self.shared.request_shutdown(grace_ms);
            }
            Ok(RuntimeToNode::Deliver {
                from,
                from_incarnation,
                id,
                call,
                payload,
            }) => messaging::deliver(
                &self.shared,
                from,
                from_incarnation,
                id,
                call,
                payload,
                None,
            ),
            Ok(RuntimeToNode::Answer { call, outcome }) => {
                messaging::answered(&self.shared, call, messaging::Answer::Reply(outcome))
            }
            Ok(RuntimeToNode::CalleeExited {
                call,
                to,
                incarnation,
            }) => messaging::answered(
                &self.shared,
                call,
                messaging::Answer::CalleeExited { to, incarnation },
            ),
            Ok(RuntimeToNode::Returned {
                id,
                to,
                reason,
                payload,
            }) => messaging::answered(
                &self.shared,
                id,
                messaging::Answer::Returned(messaging::Returned {
                    to,
                    reason,
                    payload,
                }),
            ),
            Err(e) => tracing::warn!(error = %e, "ignored a message from the runtime"),
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _: ActorRef<NodeInbox>,
        ev: SupervisionEvent,
        _: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ProcessGroupChanged(change) = ev
            && change.get_group() == RUNTIME_GROUP
        {
            let _ = self.events.send(LinkEvent::GatewayChanged);
        }
        Ok(())
    }
}
