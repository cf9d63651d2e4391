//! The registry: one record per configured node (what `syncra status` shows), the routing
//! table from a child's token to its supervisor, and a change signal others wait on.
//!
//! Each record has exactly one writer, the node's own supervisor; everyone else reads
//! snapshots. The routing table is how the gateway authenticates a child's messages: a token
//! is known only to the runtime and that one incarnation.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use ractor::ActorRef;
use syncra_protocol::boot::Token;
use syncra_protocol::node::NodeInbox;
use syncra_protocol::page::NodePage;
use syncra_protocol::status::NodeView;
use syncra_protocol::{NodeName, NodeState};
use tokio::sync::watch;

/// One node's record.
#[derive(Debug, Clone)]
pub(crate) struct Record {
    /// What status shows (uptime is filled in at snapshot time).
    pub(crate) view: NodeView,
    /// When the current incarnation became ready.
    pub(crate) ready_since: Option<Instant>,
    /// The current incarnation's page: live metrics for status.
    pub(crate) page: Option<Arc<NodePage>>,
    /// Whether the node was ever told to start (a stopped node that was is stopped on purpose,
    /// not "not started yet").
    pub(crate) begun: bool,
    /// The live incarnation's agent, once it is reachable: where routed messages go.
    pub(crate) agent: Option<LiveAgent>,
}

/// A live incarnation's number and its agent.
pub(crate) type LiveAgent = (u64, ActorRef<NodeInbox>);

/// Hands a message from incarnation `u64` of a node to whoever supervises it.
pub(crate) type Deliver = Arc<dyn Fn(u64, syncra_protocol::node::NodeToRuntime) + Send + Sync>;

/// Where a token's messages go.
#[derive(Clone)]
pub(crate) struct Route {
    pub(crate) node: NodeName,
    pub(crate) incarnation: u64,
    pub(crate) deliver: Deliver,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route")
            .field("node", &self.node)
            .field("incarnation", &self.incarnation)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
pub(crate) struct Registry {
    records: RwLock<Vec<Record>>,
    routes: RwLock<HashMap<Token, Route>>,
    version: watch::Sender<u64>,
    shutting_down: AtomicBool,
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

impl Registry {
    /// A registry with one stopped record per node, in start order.
    pub(crate) fn new(nodes: impl IntoIterator<Item = NodeName>) -> Registry {
        let records = nodes.into_iter().map(Record::new).collect();
        Registry {
            records: RwLock::new(records),
            routes: RwLock::new(HashMap::new()),
            version: watch::channel(0).0,
            shutting_down: AtomicBool::new(false),
        }
    }

    /// The nodes are now `nodes`, in this order (a reload): records of nodes that stay are
    /// kept, new ones start stopped, those of removed nodes go.
    pub(crate) fn set_nodes(&self, nodes: &[NodeName]) {
        {
            let mut records = write(&self.records);
            let mut old: Vec<Record> = std::mem::take(&mut *records);
            for name in nodes {
                match old.iter().position(|r| r.view.name == *name) {
                    Some(i) => records.push(old.swap_remove(i)),
                    None => records.push(Record::new(name.clone())),
                }
            }
        }
        self.version.send_modify(|v| *v += 1);
    }
}

impl Record {
    /// A node not started yet.
    fn new(name: NodeName) -> Record {
        Record {
            view: NodeView {
                kind: name.kind(),
                name,
                host: None,
                pid: None,
                state: NodeState::Stopped,
                incarnation: 0,
                restarts: 0,
                uptime_ms: None,
                last_exit: None,
                tick: None,
                entities: None,
                tick_us: None,
                detail: Some("not started yet".into()),
                produces: Vec::new(),
                consumes: Vec::new(),
                spare_pid: None,
                figures: Vec::new(),
                note: None,
                sandbox: None,
                log_file: None,
            },
            ready_since: None,
            page: None,
            begun: false,
            agent: None,
        }
    }
}

impl Registry {
    /// Change `name`'s record and wake everyone waiting on a change.
    pub(crate) fn update(&self, name: &NodeName, f: impl FnOnce(&mut Record)) {
        {
            let mut records = write(&self.records);
            if let Some(r) = records.iter_mut().find(|r| r.view.name == *name) {
                f(r);
            }
        }
        self.version.send_modify(|v| *v += 1);
    }

    /// The node whose current process (or warm spare) is `pid`.
    pub(crate) fn node_with_pid(&self, pid: u32) -> Option<NodeName> {
        read(&self.records)
            .iter()
            .find(|r| r.view.pid == Some(pid) || r.view.spare_pid == Some(pid))
            .map(|r| r.view.name.clone())
    }

    /// Every node's view, uptime computed now.
    pub(crate) fn snapshot(&self) -> Vec<NodeView> {
        let now = Instant::now();
        read(&self.records)
            .iter()
            .map(|r| {
                let mut v = r.view.clone();
                v.uptime_ms = r
                    .ready_since
                    .map(|t| now.duration_since(t).as_millis() as u64);
                let metrics = r.page.as_ref().and_then(|p| p.vitals().metrics());
                v.tick = metrics.as_ref().map(|m| m.tick);
                v.entities = metrics.as_ref().and_then(|m| m.entities);
                v.tick_us = metrics.as_ref().map(|m| m.tick_us);
                v.figures = r.page.as_ref().map(|p| p.figures()).unwrap_or_default();
                v.note = r
                    .page
                    .as_ref()
                    .filter(|_| v.pid.is_some())
                    .and_then(|p| p.status_note().read());
                v
            })
            .collect()
    }

    /// The state of `name`, if configured.
    pub(crate) fn state(&self, name: &NodeName) -> Option<NodeState> {
        read(&self.records)
            .iter()
            .find(|r| r.view.name == *name)
            .map(|r| r.view.state)
    }

    /// Where a message for `name` can go now: its state and, if reachable, its live
    /// incarnation and that incarnation's agent. `None` if no node has that name.
    pub(crate) fn target(&self, name: &NodeName) -> Option<(NodeState, Option<LiveAgent>)> {
        read(&self.records)
            .iter()
            .find(|r| r.view.name == *name)
            .map(|r| (r.view.state, r.agent.clone()))
    }

    /// The agent of incarnation `incarnation` of `name`, if that incarnation is still alive.
    pub(crate) fn agent(&self, name: &NodeName, incarnation: u64) -> Option<ActorRef<NodeInbox>> {
        read(&self.records)
            .iter()
            .find(|r| r.view.name == *name)
            .and_then(|r| r.agent.as_ref())
            .filter(|(i, _)| *i == incarnation)
            .map(|(_, a)| a.clone())
    }

    /// Whether `name` was ever told to start.
    pub(crate) fn has_begun(&self, name: &NodeName) -> bool {
        read(&self.records)
            .iter()
            .any(|r| r.view.name == *name && r.begun)
    }

    /// Names of every node, in start order.
    pub(crate) fn names(&self) -> Vec<NodeName> {
        read(&self.records)
            .iter()
            .map(|r| r.view.name.clone())
            .collect()
    }

    /// A receiver that changes whenever any record does.
    pub(crate) fn watch(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    pub(crate) fn add_route(&self, token: Token, route: Route) {
        write(&self.routes).insert(token, route);
    }

    pub(crate) fn remove_route(&self, token: &Token) {
        write(&self.routes).remove(token);
    }

    pub(crate) fn route(&self, token: &Token) -> Option<Route> {
        read(&self.routes).get(token).cloned()
    }

    /// Mark the runtime as shutting down: no supervisor restarts anything after this.
    pub(crate) fn begin_shutdown(&self) -> bool {
        let first = !self.shutting_down.swap(true, Ordering::AcqRel);
        self.version.send_modify(|v| *v += 1);
        first
    }

    pub(crate) fn shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }
}
