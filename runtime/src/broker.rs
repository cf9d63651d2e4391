//! The Broker: creates every stream's ring and doorbells, and hands their fds to producers
//! and consumers over each child's broker socket (fd 5, SCM_RIGHTS).
//!
//! The rules live in [`state::Core`], which never touches a socket; this file is its shell.
//! Each incarnation's link has one task that reads its requests and writes what the core
//! addressed to it, in order, from a queue: the core's lock is never held while sending, and
//! a node that does not read its link delays only itself.
//!
//! The Broker owns the fds for the life of the runtime. A producer that restarts declares its
//! stream again and gets the same ring back (its sequence continues); consumers never rebind.
//! Consumer cells belong to the consuming node's *name*: a consumer that restarts subscribes
//! again and gets its old cell, cursor included. When an incarnation's socket closes (the
//! process ended), its cells are released at once, so a dead consumer never holds a `block`
//! producer back.
//!
//! **Invariants:** one link per live incarnation; messages to one link leave in the order the
//! core made them; a message for an incarnation that has gone is dropped, never given to its
//! successor; a malformed request is logged, never fatal to the runtime.

mod state;

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use syncra_config::StreamLimits;
use syncra_protocol::broker::{self, BrokerToNode, NodeToBroker, RecvError};
use syncra_protocol::control::StreamView;
use syncra_protocol::{NodeName, NodeState};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;

use self::state::{Core, Out};

/// A message and its fds, queued for one link.
type Outgoing = (BrokerToNode, Vec<OwnedFd>);

/// Most messages queued for a link that is not being read: past it the node is taken to be
/// broken and its link is closed (it reads the close as the runtime gone, and exits).
const MAX_QUEUED: usize = 4096;

/// A live incarnation's link, as the shell knows it.
#[derive(Debug)]
struct Link {
    incarnation: u64,
    queue: mpsc::UnboundedSender<Outgoing>,
}

#[derive(Debug)]
struct Shell {
    core: Core,
    links: HashMap<NodeName, Link>,
    rules: LinkRules,
    /// Direct links brokered between two live incarnations (caller, callee), counted until
    /// either ends (a second link for the same pair counts again: a node cannot make another
    /// hold more links than the limit by asking twice). The Broker keeps no end of them.
    pairs: HashMap<(Incarnation, Incarnation), usize>,
    next_link: u64,
}

/// A node's incarnation.
type Incarnation = (NodeName, u64);

/// What decides whether two nodes get a direct link ([`syncra_protocol::direct`]).
pub(crate) struct LinkRules {
    /// `[runtime] direct_links`.
    pub(crate) enabled: bool,
    /// `[runtime] max_links`: most links per incarnation, both ways.
    pub(crate) max_per_node: usize,
    /// Who is ready, as which incarnation.
    pub(crate) registry: Arc<crate::registry::Registry>,
}

impl std::fmt::Debug for LinkRules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkRules")
            .field("enabled", &self.enabled)
            .field("max_per_node", &self.max_per_node)
            .finish_non_exhaustive()
    }
}

impl Shell {
    /// How many direct links the incarnation has open, both ways.
    fn links_of(&self, node: &NodeName, incarnation: u64) -> usize {
        let me = (node.clone(), incarnation);
        self.pairs
            .iter()
            .filter(|((a, b), _)| *a == me || *b == me)
            .map(|(_, n)| n)
            .sum()
    }

    /// `from` asks for a direct link to `to`: both ends, or why not (to `from`).
    fn link(&mut self, from: &NodeName, from_inc: u64, to: &NodeName) -> Vec<Out> {
        let refuse = |message: String| {
            vec![Out {
                to: from.clone(),
                incarnation: from_inc,
                msg: BrokerToNode::LinkRefused {
                    to: to.clone(),
                    message,
                },
                fds: Vec::new(),
            }]
        };
        if !self.rules.enabled {
            return refuse("direct links are off ([runtime] direct_links = false)".into());
        }
        if to == from {
            return refuse("a node does not link to itself".into());
        }
        let to_inc = match self.rules.registry.target(to) {
            None => return refuse(format!("no node is named `{to}`")),
            Some((NodeState::Ready, Some((inc, _))))
                if self.links.get(to).is_some_and(|l| l.incarnation == inc) =>
            {
                inc
            }
            Some((state, _)) => return refuse(format!("`{to}` is {state}, not ready")),
        };
        let pair = ((from.clone(), from_inc), (to.clone(), to_inc));
        let max = self.rules.max_per_node;
        for (who, inc) in [(from, from_inc), (to, to_inc)] {
            let n = self.links_of(who, inc);
            if n >= max {
                return refuse(format!(
                    "`{who}` has {n} direct links, its limit ([runtime] max_links = {max})"
                ));
            }
        }
        let (caller_end, callee_end) = match syncra_protocol::direct::pair() {
            Ok(p) => p,
            Err(e) => return refuse(format!("the runtime could not make a socketpair: {e}")),
        };
        self.next_link += 1;
        let link = self.next_link;
        *self.pairs.entry(pair).or_default() += 1;
        tracing::debug!(from = %from, to = %to, link, "direct link brokered");
        // The callee hears of it first: its end is queued before the caller can write.
        vec![
            Out {
                to: to.clone(),
                incarnation: to_inc,
                msg: BrokerToNode::LinkFrom {
                    from: from.clone(),
                    incarnation: from_inc,
                    link,
                },
                fds: vec![callee_end],
            },
            Out {
                to: from.clone(),
                incarnation: from_inc,
                msg: BrokerToNode::Linked {
                    to: to.clone(),
                    incarnation: to_inc,
                    link,
                },
                fds: vec![caller_end],
            },
        ]
    }

    /// Queue each message on its link (no I/O: the link's task sends).
    fn deliver(&self, outs: Vec<Out>) {
        for out in outs {
            match self.links.get(&out.to) {
                Some(link) if link.incarnation == out.incarnation => {
                    let _ = link.queue.send((out.msg, out.fds));
                }
                _ => {
                    tracing::debug!(node = %out.to, incarnation = out.incarnation, "dropped a broker message for an incarnation that has gone")
                }
            }
        }
    }
}

/// The Broker.
#[derive(Debug)]
pub(crate) struct Broker {
    shell: Mutex<Shell>,
}

impl Broker {
    pub(crate) fn new(limits: StreamLimits, rules: LinkRules) -> Arc<Broker> {
        Arc::new(Broker {
            shell: Mutex::new(Shell {
                core: Core::new(limits),
                links: HashMap::new(),
                rules,
                pairs: HashMap::new(),
                next_link: 0,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shell> {
        self.shell.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Serve `socket`, the runtime's end of an incarnation's broker socketpair, until the
    /// child closes it (exits). Spawns a task.
    pub(crate) fn attach(self: &Arc<Self>, node: NodeName, incarnation: u64, socket: OwnedFd) {
        if let Err(e) = rustix::io::ioctl_fionbio(&socket, true) {
            tracing::error!(node = %node, error = %e, "could not prepare the broker socket");
            return;
        }
        // SAFETY: `socket` is an OwnedFd moved into the AsyncFd: it stays open and refers to
        // the same socket until the AsyncFd drops it.
        let registered = unsafe {
            AsyncFd::register_with_interest(socket, Interest::READABLE | Interest::WRITABLE)
        };
        let afd = match registered {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(node = %node, error = %e, "could not register the broker socket");
                return;
            }
        };
        let (queue, rx) = mpsc::unbounded_channel();
        {
            let mut shell = self.lock();
            shell
                .links
                .insert(node.clone(), Link { incarnation, queue });
            let grants = shell.core.connect(&node, incarnation);
            shell.deliver(grants);
        }
        let me = self.clone();
        tokio::spawn(async move {
            me.serve(&node, incarnation, afd, rx).await;
            let mut shell = me.lock();
            if shell
                .links
                .get(&node)
                .is_some_and(|l| l.incarnation == incarnation)
            {
                shell.links.remove(&node);
            }
            shell.core.disconnect(&node, incarnation);
            let me_inc = (node.clone(), incarnation);
            shell.pairs.retain(|(a, b), _| *a != me_inc && *b != me_inc);
            tracing::debug!(node = %node, incarnation, "broker link closed");
        });
    }

    /// Read requests and write answers until the link closes.
    async fn serve(
        &self,
        node: &NodeName,
        incarnation: u64,
        afd: AsyncFd<OwnedFd>,
        mut rx: mpsc::UnboundedReceiver<Outgoing>,
    ) {
        let mut pending: VecDeque<Outgoing> = VecDeque::new();
        loop {
            tokio::select! {
                guard = afd.readable() => {
                    let Ok(mut guard) = guard else { return };
                    match broker::recv::<NodeToBroker>(afd.get_ref()) {
                        Ok((req, fds)) => {
                            if !fds.is_empty() {
                                tracing::warn!(node = %node, fds = fds.len(), "a node sent fds to the broker; closed them");
                            }
                            let shell = &mut *self.lock();
                            let outs = match req {
                                NodeToBroker::Link { to } => shell.link(node, incarnation, &to),
                                req => shell.core.handle(node, incarnation, req),
                            };
                            shell.deliver(outs);
                        }
                        Err(RecvError::WouldBlock) => guard.clear_ready(),
                        Err(RecvError::Closed) => return,
                        Err(RecvError::Decode(e)) => {
                            tracing::warn!(node = %node, incarnation, error = %e, "dropped a malformed broker request");
                        }
                        Err(RecvError::Io(e)) => {
                            tracing::warn!(node = %node, incarnation, error = %e, "broker link failed");
                            return;
                        }
                    }
                }
                out = rx.recv() => {
                    let Some(out) = out else { return };
                    pending.push_back(out);
                    if pending.len() > MAX_QUEUED {
                        tracing::error!(node = %node, incarnation, queued = pending.len(), "the node does not read its broker link; closing it");
                        return;
                    }
                    flush(node, afd.get_ref(), &mut pending);
                }
                guard = afd.writable(), if !pending.is_empty() => {
                    let Ok(mut guard) = guard else { return };
                    if !flush(node, afd.get_ref(), &mut pending) {
                        guard.clear_ready();
                    }
                }
            }
        }
    }

    /// World `world`'s newest complete durable state (the newest its ring holds whole that
    /// passes `world_state::inspect`) and what it says; `Err`: the world declared no state
    /// stream. See [`state::Core::read_private`].
    pub(crate) fn newest_state(
        &self,
        world: &NodeName,
    ) -> Result<Option<(syncra_protocol::world_state::StateInfo, Vec<u8>)>, String> {
        self.lock().core.read_private(&state_stream(world), |b| {
            let info = syncra_protocol::world_state::inspect(b).ok()?;
            Some((info, b[..info.bytes].to_vec()))
        })
    }

    /// Put `bytes` into world `world`'s state ring as its newest message, while the world is
    /// not running. See [`state::Core::write_private`].
    pub(crate) fn put_state(&self, world: &NodeName, bytes: &[u8]) -> Result<u64, String> {
        self.lock().core.write_private(&state_stream(world), bytes)
    }

    /// Every stream, for `syncra streams`.
    pub(crate) fn views(&self) -> Vec<StreamView> {
        self.lock().core.views()
    }

    /// One stream's view and a duplicate of its ring fd, for `syncra tap`.
    pub(crate) fn tap(&self, name: &str) -> Option<(StreamView, OwnedFd)> {
        self.lock().core.tap(name)
    }

    /// (produces, consumes) per node, for `syncra status`.
    pub(crate) fn node_streams(&self) -> HashMap<NodeName, (Vec<String>, Vec<String>)> {
        self.lock().core.node_streams()
    }

    /// Update every stream's rate; expire subscribers' waits. Call it periodically.
    pub(crate) fn tick(&self) {
        let shell = &mut *self.lock();
        let outs = shell.core.tick(Instant::now());
        shell.deliver(outs);
    }
}

/// The stream a world keeps its durable state on: `world/<name>/state`.
fn state_stream(world: &NodeName) -> String {
    format!("{world}/{}", syncra_protocol::world::STATE_STREAM)
}

/// Send what is queued, in order; `false` when the socket is full (the rest waits for it to
/// drain). A message the kernel refuses for another reason is logged and dropped.
fn flush(node: &NodeName, socket: &OwnedFd, pending: &mut VecDeque<Outgoing>) -> bool {
    while let Some((msg, fds)) = pending.front() {
        let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
        match broker::send(socket, msg, &borrowed) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(e) => {
                tracing::warn!(node = %node, error = %e, "could not send on the broker link");
            }
        }
        pending.pop_front();
    }
    true
}
