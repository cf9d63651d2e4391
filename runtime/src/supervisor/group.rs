//! A group: the supervisor of the node supervisors of one kind (drivers or worlds), applying
//! its strategy when one of them restarts.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use ractor_cluster::RactorMessage;
use syncra_config::{GroupPlan, GroupPolicy, NodePlan, Strategy};
use syncra_protocol::NodeName;

use super::Ctx;
use super::node::{NodeSupervisor, SupArgs, SupMsg};
use super::policy;

/// A group's mailbox.
#[derive(RactorMessage)]
pub(crate) enum GroupMsg {
    /// Start every child, in order.
    Start,
    /// `failed` is restarting: restart the siblings the strategy names; reply with them.
    ChildRestarting {
        failed: NodeName,
        reply: RpcReplyPort<Vec<NodeName>>,
    },
    /// The children, in start order.
    Children(RpcReplyPort<Vec<(NodeName, ActorRef<SupMsg>)>>),
    /// A reload adds a node: supervise it (not started yet); the children are then in
    /// `order`.
    Add {
        plan: Box<NodePlan>,
        policy: GroupPolicy,
        order: Vec<NodeName>,
        reply: RpcReplyPort<Result<ActorRef<SupMsg>, String>>,
    },
    /// A reload removed a node (stopped already): its supervisor goes.
    Remove {
        node: NodeName,
        reply: RpcReplyPort<()>,
    },
    /// A reload changed the group's policy: the children take it, nothing restarts.
    Policy(GroupPolicy),
}

pub(crate) struct Group;

pub(crate) struct GroupState {
    label: &'static str,
    strategy: Strategy,
    children: Vec<(NodeName, ActorRef<SupMsg>)>,
    ctx: Arc<Ctx>,
}

impl Actor for Group {
    type Msg = GroupMsg;
    type State = GroupState;
    type Arguments = (&'static str, GroupPlan, Arc<Ctx>);

    async fn pre_start(
        &self,
        myself: ActorRef<GroupMsg>,
        (label, plan, ctx): Self::Arguments,
    ) -> Result<GroupState, ActorProcessingErr> {
        let mut children = Vec::with_capacity(plan.nodes.len());
        for node in plan.nodes {
            let name = node.name.clone();
            let args = SupArgs {
                ctx: ctx.clone(),
                plan: node,
                policy: plan.policy,
                group: myself.clone(),
            };
            let (child, _) =
                Actor::spawn_linked(None, NodeSupervisor, args, myself.get_cell()).await?;
            children.push((name, child));
        }
        Ok(GroupState {
            label,
            strategy: plan.policy.strategy,
            children,
            ctx,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<GroupMsg>,
        msg: GroupMsg,
        st: &mut GroupState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            GroupMsg::Start => {
                // One after another, each once the previous one's spawn is done, so processes
                // start in config order. From a task: the group's mailbox stays free for its
                // children's calls meanwhile.
                let children: Vec<ActorRef<SupMsg>> =
                    st.children.iter().map(|(_, c)| c.clone()).collect();
                tokio::spawn(async move {
                    for child in children {
                        let _ = child
                            .call(SupMsg::Start, Some(Duration::from_secs(60)))
                            .await;
                    }
                });
            }
            GroupMsg::ChildRestarting { failed, reply } => {
                let order: Vec<NodeName> = st.children.iter().map(|(n, _)| n.clone()).collect();
                let siblings = policy::siblings(st.strategy, &order, &failed);
                for sibling in &siblings {
                    if let Some((_, child)) = st.children.iter().find(|(n, _)| n == sibling) {
                        let _ = child.cast(SupMsg::Restart {
                            delay: Duration::ZERO,
                            cause: format!(
                                "{failed} failed ({} in group {})",
                                st.strategy, st.label
                            ),
                            user: false,
                        });
                    }
                }
                let _ = reply.send(siblings);
            }
            GroupMsg::Children(reply) => {
                let _ = reply.send(st.children.clone());
            }
            GroupMsg::Add {
                plan,
                policy,
                order,
                reply,
            } => {
                let name = plan.name.clone();
                let args = SupArgs {
                    ctx: st.ctx.clone(),
                    plan: *plan,
                    policy,
                    group: myself.clone(),
                };
                match Actor::spawn_linked(None, NodeSupervisor, args, myself.get_cell()).await {
                    Ok((child, _)) => {
                        st.children.push((name, child.clone()));
                        st.children.sort_by_key(|(n, _)| {
                            order.iter().position(|o| o == n).unwrap_or(usize::MAX)
                        });
                        let _ = reply.send(Ok(child));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(format!("starting its supervisor: {e}")));
                    }
                }
            }
            GroupMsg::Remove { node, reply } => {
                // Out of the list first: its supervisor's end is then not taken for a failure.
                if let Some(i) = st.children.iter().position(|(n, _)| *n == node) {
                    let (_, child) = st.children.remove(i);
                    let _ = child
                        .stop_and_wait(None, Some(Duration::from_secs(5)))
                        .await;
                }
                let _ = reply.send(());
            }
            GroupMsg::Policy(policy) => {
                st.strategy = policy.strategy;
                for (_, child) in &st.children {
                    let _ = child.cast(SupMsg::Policy(policy));
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _: ActorRef<GroupMsg>,
        ev: SupervisionEvent,
        st: &mut GroupState,
    ) -> Result<(), ActorProcessingErr> {
        // A node supervisor ends only with the runtime: one that fails or stops before (a
        // bug) leaves its node unsupervised, so the runtime stops in order instead.
        let (who, why) = match ev {
            SupervisionEvent::ActorFailed(who, err) => (who, format!("it failed: {err}")),
            SupervisionEvent::ActorTerminated(who, _, reason) => {
                (who, reason.unwrap_or_else(|| "it stopped".into()))
            }
            _ => return Ok(()),
        };
        if st.ctx.registry.shutting_down() {
            return Ok(());
        }
        // One a reload removed is out of the list already.
        let Some(node) = st
            .children
            .iter()
            .find(|(_, c)| c.get_id() == who.get_id())
            .map(|(n, _)| n.to_string())
        else {
            return Ok(());
        };
        tracing::error!(group = st.label, %node, "the supervisor of {node} ended ({why}); stopping in order");
        st.ctx
            .request_shutdown(super::ShutdownCause::Internal(format!(
                "the supervisor of {node} ended: {why}"
            )));
        Ok(())
    }
}
