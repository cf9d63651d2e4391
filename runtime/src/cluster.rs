//! The hub: the runtime's own ractor_cluster node, and the gateway actor every child talks to.
//!
//! Children connect over their inherited socketpair ([`Hub::attach`]); the hub's mandatory
//! TCP listener is bound to loopback on an ephemeral port and sealed
//! ([`syncra_protocol::listener`]): no connection to it completes, and one that slipped in
//! before the seal is closed as it opens. The session cookie is random per session and never
//! leaves the runtime except in a child's boot frame. The gateway authenticates each message by the sender's token
//! ([`crate::registry::Registry::route`]) and hands it to that node's supervisor.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use ractor_cluster::NodeServerMessage;
use syncra_protocol::node::{Envelope, NodeToRuntime, RUNTIME_GROUP, RuntimeInbox, UnixLink};
use syncra_protocol::{StepError, wire};

use crate::registry::Registry;
use crate::router::RouterMsg;

/// The hub's ractor node name, as children see it.
pub(crate) const HUB_NAME: &str = "syncra-runtime";

/// The running hub.
#[derive(Debug, Clone)]
pub(crate) struct Hub {
    server: ActorRef<NodeServerMessage>,
    gateway: ActorRef<RuntimeInbox>,
    cookie: String,
    sessions: Sessions,
}

/// The cluster node id of the session over each of our links, by the link's label (which the
/// hub gives it: a child cannot choose it). An actor's id names the session it came over, so
/// a node can only ever be the node of its own link: whatever another child claims (its
/// handshake name, a process group it joins) is checked against this.
#[derive(Debug, Clone, Default)]
pub(crate) struct Sessions(Arc<std::sync::Mutex<std::collections::HashMap<String, u64>>>);

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, u64>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl syncra_protocol::listener::SessionEvents for Sessions {
    fn link_up(&self, ses: &ractor_cluster::node::NodeServerSessionInformation) {
        self.lock().insert(ses.peer_addr.clone(), ses.node_id);
    }
    fn link_down(&self, ses: &ractor_cluster::node::NodeServerSessionInformation) {
        let mut map = self.lock();
        if map.get(&ses.peer_addr) == Some(&ses.node_id) {
            map.remove(&ses.peer_addr);
        }
    }
}

/// A fresh random session cookie (hex of 32 random bytes).
fn random_cookie() -> std::io::Result<String> {
    let mut bytes = [0u8; 32];
    rustix::rand::getrandom(&mut bytes, rustix::rand::GetRandomFlags::empty())?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

impl Hub {
    /// Start the hub node and its gateway.
    pub(crate) async fn start(
        registry: Arc<Registry>,
        router: ActorRef<RouterMsg>,
        supervisor: ractor::ActorCell,
    ) -> Result<Hub, StepError> {
        let cookie = random_cookie().map_err(StepError::at("generating the session cookie"))?;
        let sessions = Sessions::default();
        let server = syncra_protocol::listener::start_node_server(
            HUB_NAME,
            &cookie,
            sessions.clone(),
            true,
            None,
        )
        .await
        .map_err(StepError::at("starting the hub node"))?
        .server;
        let gateway_actor = Gateway {
            registry,
            router,
            dropped: std::sync::Mutex::new(Dropped::default()),
        };
        let (gateway, _) = Actor::spawn_linked(None, gateway_actor, (), supervisor)
            .await
            .map_err(StepError::at("starting the gateway"))?;
        ractor::pg::join(RUNTIME_GROUP.to_owned(), vec![gateway.get_cell()]);
        Ok(Hub {
            server,
            gateway,
            cookie,
            sessions,
        })
    }

    /// The gateway actor's id.
    pub(crate) fn gateway_id(&self) -> ractor::ActorId {
        self.gateway.get_id()
    }

    /// The cluster node id of the session over the link labelled `label`, once it is open.
    pub(crate) fn session_of(&self, label: &str) -> Option<u64> {
        self.sessions
            .lock()
            .get(&format!(
                "{}{label}",
                syncra_protocol::link::LINK_LABEL_PREFIX
            ))
            .copied()
    }

    /// The session cookie.
    pub(crate) fn cookie(&self) -> &str {
        &self.cookie
    }

    /// Open a session over a connected socket whose other end a child inherited.
    /// Call it inside the tokio runtime.
    pub(crate) fn attach(
        &self,
        stream: std::os::unix::net::UnixStream,
        label: &str,
    ) -> Result<(), StepError> {
        let link =
            UnixLink::new(stream, label).map_err(StepError::at("preparing the session socket"))?;
        self.server
            .cast(NodeServerMessage::ConnectionOpenedExternal {
                stream: Box::new(link),
                is_server: true,
            })
            .map_err(|e| {
                StepError::new("opening the session", format!("the hub node is gone: {e}"))
            })
    }

    /// Stop the hub node (before the tokio runtime ends, so its listener does not respawn).
    pub(crate) async fn stop(&self) {
        ractor::pg::leave(RUNTIME_GROUP.to_owned(), vec![self.gateway.get_cell()]);
        let _ = self
            .gateway
            .stop_and_wait(None, Some(std::time::Duration::from_secs(2)))
            .await;
        let _ = self
            .server
            .stop_and_wait(None, Some(std::time::Duration::from_secs(2)))
            .await;
    }
}

/// Receives every child's messages and routes them by token.
struct Gateway {
    registry: Arc<Registry>,
    router: ActorRef<RouterMsg>,
    /// Messages dropped since the last warning: a flood is one line a second, with counts.
    dropped: std::sync::Mutex<Dropped>,
}

#[derive(Default)]
struct Dropped {
    malformed: u64,
    unknown_token: u64,
    last_warned: Option<std::time::Instant>,
    last_error: String,
}

impl Gateway {
    /// Count a dropped message; say so at most once a second.
    fn dropped(&self, malformed: bool, error: impl FnOnce() -> String) {
        let mut d = self.dropped.lock().unwrap_or_else(|e| e.into_inner());
        if malformed {
            d.malformed += 1;
            d.last_error = error();
        } else {
            d.unknown_token += 1;
        }
        if d.last_warned
            .is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(1))
        {
            // A message or two from an incarnation that just ended is normal at a restart.
            if d.malformed > 0 || d.unknown_token >= 10 {
                tracing::warn!(
                    malformed = d.malformed,
                    unknown_token = d.unknown_token,
                    last_error = %d.last_error,
                    "dropped messages from children: malformed, or with a token the runtime did not issue (or whose incarnation ended)"
                );
            } else {
                tracing::debug!(
                    unknown_token = d.unknown_token,
                    "dropped a late message from an incarnation that ended"
                );
            }
            *d = Dropped {
                last_warned: Some(std::time::Instant::now()),
                ..Dropped::default()
            };
        }
    }
}

impl Actor for Gateway {
    type Msg = RuntimeInbox;
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, _: ActorRef<RuntimeInbox>, _: ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }

    async fn handle(
        &self,
        _: ActorRef<RuntimeInbox>,
        msg: RuntimeInbox,
        _: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        let RuntimeInbox::Packet(bytes) = msg;
        let env = match wire::decode::<Envelope>("node message", &bytes) {
            Ok(env) => env,
            Err(e) => {
                self.dropped(true, || format!("{e} ({} bytes)", bytes.len()));
                return Ok(());
            }
        };
        match self.registry.route(&env.token) {
            Some(route) => {
                tracing::trace!(node = %route.node, incarnation = route.incarnation, "message from a child");
                let (from, incarnation) = (route.node, route.incarnation);
                match env.body {
                    body @ (NodeToRuntime::Route(_)
                    | NodeToRuntime::Reply { .. }
                    | NodeToRuntime::Refused { .. }) => {
                        let _ = self.router.cast(RouterMsg::FromNode {
                            from,
                            incarnation,
                            body,
                        });
                    }
                    body => {
                        (route.deliver)(incarnation, body);
                    }
                }
            }
            // A late message from a dead incarnation, or a forgery.
            None => self.dropped(false, String::new),
        }
        Ok(())
    }
}
