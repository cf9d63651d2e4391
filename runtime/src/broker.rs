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
use syncra_protocol::NodeName;
use syncra_protocol::broker::{self, BrokerToNode, NodeToBroker, RecvError};
use syncra_protocol::control::StreamView;
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
}

impl Shell {
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
    pub(crate) fn new(limits: StreamLimits) -> Arc<Broker> {
        Arc::new(Broker {
            shell: Mutex::new(Shell {
                core: Core::new(limits),
                links: HashMap::new(),
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
                            let outs = shell.core.handle(node, incarnation, req);
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
