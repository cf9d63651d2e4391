//! The node's cluster side: a ractor_cluster node on its own thread (a current-thread tokio
//! runtime), joined to the runtime over the inherited socket.

use std::sync::Arc;

use ractor::{Actor, ActorRef};
use ractor_cluster::node::NodeServerSessionInformation;
use syncra_protocol::StepError;
use syncra_protocol::boot::{Boot, exit_code};
use syncra_protocol::link::LINK_LABEL_PREFIX;
use syncra_protocol::listener::{SessionEvents, start_node_server};
use syncra_protocol::node::{RUNTIME_GROUP, RuntimeInbox, UnixLink, agent_group};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use crate::agent::Agent;
use crate::{JOIN_TIMEOUT, Shared};

/// What the cluster thread watches for.
#[derive(Debug)]
pub(crate) enum LinkEvent {
    /// The session over the node's link to the runtime is down (connections that strangers
    /// make to the node's TCP listener never get here: [`start_node_server`] closes them).
    Down { peer: String },
    /// The runtime's gateway group changed.
    GatewayChanged,
}

struct Subscription(UnboundedSender<LinkEvent>);

/// The label of the node's link to the runtime, as its session reports it.
const RUNTIME_LINK: &str = "runtime";

impl SessionEvents for Subscription {
    fn link_down(&self, ses: &NodeServerSessionInformation) {
        if ses.peer_addr.strip_prefix(LINK_LABEL_PREFIX) != Some(RUNTIME_LINK) {
            return; // another link of ours: not the runtime going away
        }
        let peer = ses
            .peer_name
            .as_ref()
            .map(|n| n.name.clone())
            .unwrap_or_else(|| ses.peer_addr.clone());
        let _ = self.0.send(LinkEvent::Down { peer });
    }
}

/// What the cluster thread needs to join, once the boot frame is read.
struct Job {
    boot: Boot,
    socket: std::os::unix::net::UnixStream,
    shared: Arc<Shared>,
}

/// The cluster thread, started (with its tokio runtime built) before the boot frame arrives,
/// so that a process started ahead — a warm spare — has done that work by the time it boots.
pub(crate) struct Prestarted {
    jobs: std::sync::mpsc::Sender<Job>,
    joined: std::sync::mpsc::Receiver<Result<ActorRef<RuntimeInbox>, StepError>>,
}

/// Start the cluster thread and its tokio runtime; it waits for [`Prestarted::join`].
pub(crate) fn prestart() -> Result<Prestarted, StepError> {
    let (jobs, job) = std::sync::mpsc::channel::<Job>();
    let (tx, joined) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("syncra-node".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(StepError::new("starting the node's tokio runtime", e)));
                    return;
                }
            };
            // No job: the process failed before joining and is on its way out.
            let Ok(Job {
                boot,
                socket,
                shared,
            }) = job.recv()
            else {
                return;
            };
            let _ = shared.runtime.set(rt.handle().clone());
            rt.block_on(async move {
                match connect(&boot, socket, shared.clone()).await {
                    Ok((gateway, events)) => {
                        let _ = tx.send(Ok(gateway));
                        serve(&boot, events, shared).await;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            });
        })
        .map_err(StepError::at("starting the node thread"))?;
    Ok(Prestarted { jobs, joined })
}

impl Prestarted {
    /// Join, and return the runtime's gateway once it is reachable.
    pub(crate) fn join(
        self,
        boot: &Boot,
        socket: std::os::unix::net::UnixStream,
        shared: Arc<Shared>,
    ) -> Result<ActorRef<RuntimeInbox>, StepError> {
        self.jobs
            .send(Job {
                boot: boot.clone(),
                socket,
                shared,
            })
            .map_err(|_| StepError::new("joining", "the node thread is gone"))?;
        self.joined
            .recv_timeout(JOIN_TIMEOUT + std::time::Duration::from_secs(1))
            .map_err(|_| StepError::new("joining", "the node thread did not answer"))?
    }
}

async fn connect(
    boot: &Boot,
    socket: std::os::unix::net::UnixStream,
    shared: Arc<Shared>,
) -> Result<(ActorRef<RuntimeInbox>, UnboundedReceiver<LinkEvent>), StepError> {
    let join = &boot.cluster;
    let (tx, mut rx) = unbounded_channel();
    // The dead end the runtime made for sealing the listener (a sandboxed node may not make
    // Unix sockets), taken once.
    let sealer = boot.seal_fd.and_then(take_inherited);
    let server = start_node_server(
        &join.node_name,
        &join.cookie,
        Subscription(tx.clone()),
        true,
        sealer,
    )
    .await
    .map_err(StepError::at("starting the node server"))?
    .server;
    let (agent, _) = Actor::spawn(None, Agent { shared, events: tx }, ())
        .await
        .map_err(StepError::at("starting the agent"))?;
    ractor::pg::join(agent_group(&join.node_name), vec![agent.get_cell()]);

    let link = UnixLink::new(socket, RUNTIME_LINK)
        .map_err(StepError::at("preparing the cluster socket"))?;
    let t_connect = std::time::Instant::now();
    tracing::debug!("node server and agent up; opening the session");
    ractor_cluster::client_connect_external(&server, Box::new(link))
        .await
        .map_err(StepError::at("opening the session"))?;

    let wait = async {
        loop {
            if let Some(gw) = gateway() {
                return Ok(gw);
            }
            match rx.recv().await {
                Some(LinkEvent::Down { .. }) | None => {
                    return Err(StepError::new(
                        "waiting for the runtime's gateway",
                        "the runtime closed the session (wrong cookie, or the runtime stopped)",
                    ));
                }
                Some(LinkEvent::GatewayChanged) => {}
            }
        }
    };
    let gateway = tokio::time::timeout(JOIN_TIMEOUT, wait)
        .await
        .map_err(|_| {
            StepError::new(
                "waiting for the runtime's gateway",
                format!(
                    "the runtime did not answer within {} s",
                    JOIN_TIMEOUT.as_secs()
                ),
            )
        })??;
    tracing::debug!(
        session_us = t_connect.elapsed().as_micros() as u64,
        "session ready, gateway visible"
    );
    Ok((gateway, rx))
}

/// Own inherited fd `fd`, once per process, if it is open.
fn take_inherited(fd: i32) -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    static TAKEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    // SAFETY: F_GETFD only reads the fd's flags.
    let open = unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0;
    if !open || TAKEN.swap(true, std::sync::atomic::Ordering::AcqRel) {
        return None;
    }
    // SAFETY: the runtime passed this fd for this purpose; it is taken here once, by nobody
    // else.
    Some(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// The runtime's gateway actor, once the hub's process groups are visible.
fn gateway() -> Option<ActorRef<RuntimeInbox>> {
    ractor::pg::get_members(&RUNTIME_GROUP.to_owned())
        .into_iter()
        .find(|c| !c.get_id().is_local())
        .map(Into::into)
}

/// Serve the link for the life of the process: turn SIGTERM/SIGINT into a shutdown request
/// and exit when the runtime is gone.
async fn serve(boot: &Boot, mut events: UnboundedReceiver<LinkEvent>, shared: Arc<Shared>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        _ => {
            tracing::warn!(
                "could not install SIGTERM/SIGINT handlers; only the runtime can stop this node gracefully"
            );
            watch_link(&mut events).await;
            tracing::warn!(node = %boot.node, "the runtime is gone; exiting");
            std::process::exit(exit_code::LINK_LOST);
        }
    };
    loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Some(LinkEvent::Down { peer }) => {
                    tracing::debug!(node = %boot.node, %peer, "the link to the runtime is down");
                    break;
                }
                Some(LinkEvent::GatewayChanged) => {}
                None => break,
            },
            _ = term.recv() => {
                tracing::info!(node = %boot.node, "SIGTERM: shutting down");
                shared.request_shutdown(0);
            }
            _ = int.recv() => {
                tracing::info!(node = %boot.node, "SIGINT: shutting down");
                shared.request_shutdown(0);
            }
        }
    }
    tracing::warn!(node = %boot.node, "the runtime is gone; exiting");
    // Not 0: if the runtime is still there (only the link broke), this is a failure to report.
    std::process::exit(exit_code::LINK_LOST);
}

/// Wait until the link to the runtime is gone.
async fn watch_link(events: &mut UnboundedReceiver<LinkEvent>) {
    while let Some(ev) = events.recv().await {
        if let LinkEvent::Down { .. } = ev {
            return;
        }
    }
}
