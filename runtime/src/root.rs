//! The root of the runtime's own actors and tasks: the router, the gateway, the two groups are
//! linked to it, and it watches the Broker's and the watchdog's tasks. The death of any of them
//! while the runtime is not stopping is never silent: it is logged as an error and the runtime
//! stops in order (worlds, then drivers), exiting non-zero, rather than going on without a
//! part of itself (a runtime without a router routes nothing; one without a group supervises
//! nothing).

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, Weak};

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use ractor_cluster::RactorMessage;

use crate::supervisor::{Ctx, ShutdownCause};

/// What the root is told.
#[derive(RactorMessage)]
pub(crate) enum RootMsg {
    /// Actor `id` (linked to the root) is the runtime's `what`.
    Name(ActorId, &'static str),
}

pub(crate) struct Root;

/// Where the root asks for the shutdown (set once the runtime's context exists).
pub(crate) type CtxSlot = Arc<OnceLock<Weak<Ctx>>>;

pub(crate) struct RootState {
    ctx: CtxSlot,
    names: HashMap<ActorId, &'static str>,
}

/// Stop the runtime in order because its part `what` ended (`why`), unless it is stopping.
pub(crate) fn lost(ctx: &CtxSlot, what: &str, why: &str) {
    let Some(ctx) = ctx.get().and_then(Weak::upgrade) else {
        return;
    };
    if ctx.registry.shutting_down() {
        return;
    }
    tracing::error!("the runtime's {what} ended ({why}); stopping in order");
    ctx.request_shutdown(ShutdownCause::Internal(format!(
        "the runtime's {what} ended: {why}"
    )));
}

impl Actor for Root {
    type Msg = RootMsg;
    type State = RootState;
    type Arguments = CtxSlot;

    async fn pre_start(
        &self,
        _: ActorRef<RootMsg>,
        ctx: CtxSlot,
    ) -> Result<RootState, ActorProcessingErr> {
        Ok(RootState {
            ctx,
            names: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        _: ActorRef<RootMsg>,
        msg: RootMsg,
        st: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        let RootMsg::Name(id, what) = msg;
        st.names.insert(id, what);
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _: ActorRef<RootMsg>,
        ev: SupervisionEvent,
        st: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        let (id, why) = match &ev {
            SupervisionEvent::ActorFailed(who, err) => (who.get_id(), format!("it failed: {err}")),
            SupervisionEvent::ActorTerminated(who, _, reason) => (
                who.get_id(),
                reason.clone().unwrap_or_else(|| "it stopped".into()),
            ),
            _ => return Ok(()),
        };
        let what = st.names.get(&id).copied().unwrap_or("internal actor");
        lost(&st.ctx, what, &why);
        Ok(())
    }
}

/// Watch a task of the runtime: if it ends while the runtime is not stopping, stop in order.
pub(crate) fn watch_task(
    ctx: CtxSlot,
    what: &'static str,
    task: tokio::task::JoinHandle<()>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let why = match task.await {
            Ok(()) => "it returned".to_owned(),
            Err(e) if e.is_cancelled() => return,
            Err(e) => format!("it panicked: {e}"),
        };
        lost(&ctx, what, &why);
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::{RuntimeBuilder, ShutdownCause};

    /// A runtime of one world whose executable does not exist (it fails to start; the
    /// runtime itself runs), in a scratch directory.
    async fn runtime(dir: &std::path::Path) -> crate::Runtime {
        let mut config = syncra_config::SyncraConfig::default();
        config.runtime.run_dir = Some(dir.join("run"));
        config.runtime.log_dir = dir.join("logs");
        config.worlds.defaults.command = Some("/nonexistent/syncra-world".into());
        RuntimeBuilder::new(&config)
            .control_socket(false)
            .start()
            .await
            .expect("the runtime starts")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn losing_the_router_stops_the_runtime_in_order_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime(dir.path()).await;
        rt.router().stop(Some("killed by the test".into()));
        let cause = tokio::time::timeout(Duration::from_secs(20), rt.shutdown_requested())
            .await
            .expect("no shutdown after the router died");
        match &cause {
            ShutdownCause::Internal(why) => {
                assert!(
                    why.contains("router") && why.contains("killed by the test"),
                    "{why}"
                )
            }
            other => panic!("{other:?}"),
        }
        let report = rt.shutdown(cause).await;
        assert_eq!(report.exit_code(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn losing_a_node_supervisor_stops_the_runtime_in_order_naming_the_node() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime(dir.path()).await;
        rt.supervisor_of("world/main")
            .unwrap()
            .stop(Some("killed by the test".into()));
        let cause = tokio::time::timeout(Duration::from_secs(20), rt.shutdown_requested())
            .await
            .expect("no shutdown after a node supervisor died");
        match &cause {
            ShutdownCause::Internal(why) => {
                assert!(
                    why.contains("world/main") && why.contains("killed by the test"),
                    "{why}"
                )
            }
            other => panic!("{other:?}"),
        }
        rt.shutdown(cause).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_orderly_shutdown_is_not_taken_for_a_lost_part() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime(dir.path()).await;
        let report = rt.shutdown(ShutdownCause::Requested).await;
        assert_eq!(report.exit_code(), 0);
        assert_eq!(report.cause, ShutdownCause::Requested);
    }
}
