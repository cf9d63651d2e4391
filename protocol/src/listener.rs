//! ractor_cluster's mandatory TCP listener, made unreachable.
//!
//! Every ractor_cluster `NodeServer` binds a TCP listener that cannot be turned off, and its
//! accept loop neither bounds nor times out a connection that never authenticates. No Syncra
//! process takes a session over it — the hub and its children join over inherited Unix
//! socketpairs ([`crate::link::UnixLink`]) — so any TCP connection to it is a stranger's.
//! [`start_node_server`] is the one way Syncra starts a `NodeServer`, and shuts the door twice:
//!
//! 1. It **seals** the listener: the listening socket is closed under ractor_cluster's feet and
//!    its fd number given to a listening Unix socket nobody knows of and the reactor does not
//!    watch (`replace_with_dead_end`). A connect to the port is refused at once, nothing is
//!    ever accepted, and a stranger costs the process neither an fd nor a wakeup;
//!    ractor_cluster's accept loop simply waits forever.
//! 2. Its **gatekeeper** stops every session that arrived over TCP anyway (in the moment
//!    between the bind and the seal) as soon as ractor_cluster opens it, before it could
//!    authenticate. Such a session never reaches a [`SessionEvents`] subscriber, so no inbound
//!    connection can make a node believe its link to the runtime is gone.
//!
//! **Invariant:** a Syncra process holds no connection that it did not open or inherit.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::RawFd;

use ractor::{Actor, ActorRef};
use ractor_cluster::node::NodeServerSessionInformation;
use ractor_cluster::{NodeEventSubscription, NodeServerMessage};

use crate::link::LINK_LABEL_PREFIX;

/// Why a session ended or began, for the process's own subscriber; strangers never appear.
pub trait SessionEvents: Send + Sync + 'static {
    /// A session over one of our own links (inherited or opened by us) opened: its node id is
    /// known from here on (`peer_addr` is the label we gave the link, never the peer's claim).
    fn link_up(&self, _ses: &NodeServerSessionInformation) {}
    /// A session over one of our own links (inherited or opened by us) ended.
    fn link_down(&self, ses: &NodeServerSessionInformation);
}

/// No interest in our own links' ends.
impl SessionEvents for () {
    fn link_down(&self, _: &NodeServerSessionInformation) {}
}

/// What [`start_node_server`] did to the listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seal {
    /// The listener at this address drops every packet.
    Sealed(SocketAddrV4),
    /// The listener (at `addr`, when it was found) could not be sealed, for the reason `why`;
    /// the gatekeeper still closes every connection that reaches it.
    Open {
        /// Its address, when found.
        addr: Option<SocketAddrV4>,
        /// Why it is open.
        why: String,
    },
}

/// A running `NodeServer` with its listener sealed.
#[derive(Debug, Clone)]
pub struct GuardedServer {
    /// The server.
    pub server: ActorRef<NodeServerMessage>,
    /// What happened to its TCP listener.
    pub seal: Seal,
}

/// Whether a session came over TCP (a stranger's connection to the listener) rather than
/// over a link Syncra made: those carry a [`LINK_LABEL_PREFIX`] label as their address.
pub fn is_stranger(ses: &NodeServerSessionInformation) -> bool {
    !ses.peer_addr.starts_with(LINK_LABEL_PREFIX)
}

struct Gatekeeper<E>(E);

impl<E: SessionEvents> NodeEventSubscription for Gatekeeper<E> {
    fn node_session_opened(&self, ses: NodeServerSessionInformation) {
        if is_stranger(&ses) {
            tracing::debug!(peer = %ses.peer_addr, "closed an inbound TCP connection to the cluster listener");
            ses.actor
                .stop(Some("syncra accepts no cluster sessions over TCP".into()));
        } else {
            self.0.link_up(&ses);
        }
    }
    fn node_session_authenticated(&self, _: NodeServerSessionInformation) {}
    fn node_session_disconnected(&self, ses: NodeServerSessionInformation) {
        if !is_stranger(&ses) {
            self.0.link_down(&ses);
        }
    }
}

/// Where a node finds the dead end the runtime made for it ([`dead_end`]), to seal its
/// cluster listener with: a sandboxed node may not create Unix sockets itself.
pub const SEAL_FD: RawFd = 6;

/// A listening Unix socket nobody can reach (bound to an abstract name the kernel picks):
/// what a sealed listener's fd number holds, so that the accept loop waiting on it waits
/// forever, and one that tries once more hears "would block".
pub fn dead_end() -> std::io::Result<std::os::fd::OwnedFd> {
    let dead_end = rustix::net::socket_with(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::STREAM,
        rustix::net::SocketFlags::NONBLOCK | rustix::net::SocketFlags::CLOEXEC,
        None,
    )?;
    // An unnamed address: the kernel binds the socket to a random abstract name (autobind).
    rustix::net::bind(&dead_end, &rustix::net::SocketAddrUnix::new_unnamed())?;
    rustix::net::listen(&dead_end, 0)?;
    Ok(dead_end)
}

/// Start a `NodeServer` named `node_name` (listener on loopback, ephemeral port, Isolated
/// mode), seal its listener and guard its sessions; `events` hears about our own links only.
/// `seal: false` leaves the listener open (the gatekeeper alone guards it): for tests.
/// `sealer` is the dead end to seal with (a node's [`SEAL_FD`]); `None` makes one.
pub async fn start_node_server(
    node_name: &str,
    cookie: &str,
    events: impl SessionEvents,
    seal: bool,
    sealer: Option<std::os::fd::OwnedFd>,
) -> Result<GuardedServer, String> {
    let t0 = std::time::Instant::now();
    // The kernel gives a new fd the lowest free number: the listener will be among these.
    let window = next_fds();
    let before = tcp_listeners(window.clone());
    let scan_us = t0.elapsed().as_micros() as u64;
    let (server, _) = Actor::spawn(None, crate::node::node_server(node_name, cookie), ())
        .await
        .map_err(|e| format!("starting the cluster node: {e}"))?;
    server
        .cast(NodeServerMessage::SubscribeToEvents {
            id: "syncra-gatekeeper".into(),
            subscription: Box::new(Gatekeeper(events)),
        })
        .map_err(|e| format!("guarding the cluster node: {e}"))?;
    let spawned_us = t0.elapsed().as_micros() as u64;
    // ractor_cluster has bound its listener by the time the spawn returns (the server's
    // `pre_start` waits for the listener's): it is the one loopback listener that is new.
    let new: Vec<Listening> = tcp_listeners(window)
        .into_iter()
        .filter(|l| !before.iter().any(|b| b.inode == l.inode))
        .filter(|l| *l.addr.ip() == Ipv4Addr::LOCALHOST)
        .collect();
    let seal = match new.as_slice() {
        [one] if !seal => Seal::Open {
            addr: Some(one.addr),
            why: "not sealed (asked not to)".into(),
        },
        [one] => match replace_with_dead_end(one.fd, sealer) {
            Ok(()) => Seal::Sealed(one.addr),
            Err(e) => Seal::Open {
                addr: Some(one.addr),
                why: format!("sealing it: {e}"),
            },
        },
        [] => Seal::Open {
            addr: None,
            why: "the cluster listener was not found among the fds opened meanwhile".into(),
        },
        many => Seal::Open {
            addr: None,
            why: format!(
                "{} new loopback listeners appeared at once; none was sealed",
                many.len()
            ),
        },
    };
    match &seal {
        Seal::Sealed(addr) => tracing::debug!(
            %addr,
            // What sealing costs: the two fd scans and the replacement.
            cost_us = scan_us + (t0.elapsed().as_micros() as u64).saturating_sub(spawned_us),
            "cluster listener sealed"
        ),
        Seal::Open { addr, why } => tracing::warn!(
            ?addr,
            "cluster listener left open, guarded by closing every connection to it: {why}"
        ),
    }
    Ok(GuardedServer { server, seal })
}

/// A listening TCP socket of this process.
#[derive(Debug, Clone, Copy)]
struct Listening {
    fd: RawFd,
    inode: u64,
    addr: SocketAddrV4,
}

/// How many fd numbers, from the lowest free one, may hold the listener a `NodeServer` binds.
const FD_WINDOW: RawFd = 16;

/// The fd numbers the next fds this process opens will take (the kernel hands out the lowest
/// free number): [`FD_WINDOW`] of them from the lowest free one.
fn next_fds() -> std::ops::Range<RawFd> {
    use std::os::fd::AsRawFd;
    let low = rustix::fs::open(
        "/dev/null",
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map(|fd| fd.as_raw_fd())
    .unwrap_or(0);
    low..low.saturating_add(FD_WINDOW)
}

/// The listening IPv4 TCP sockets among fds `fds`: `fstat` tells sockets apart, getsockopt
/// and getsockname say whether and where they listen. About a µs per fd, where listing
/// `/proc/self/fd` costs a fresh process ~80 µs and reading `/proc/net/tcp` a server with
/// many connections milliseconds.
fn tcp_listeners(fds: std::ops::Range<RawFd>) -> Vec<Listening> {
    fds.filter_map(|fd| {
        // SAFETY: `fd` is only borrowed for fstat, getsockopt and getsockname, which fail
        // with EBADF on a number that is not open; one another thread opens or closes
        // meanwhile is told apart by its inode.
        let fd_ref = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        let stat = rustix::fs::fstat(fd_ref).ok()?;
        if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::Socket {
            return None;
        }
        let addr = listening_v4(fd_ref)?;
        Some(Listening {
            fd,
            inode: stat.st_ino,
            addr,
        })
    })
    .collect()
}

/// The local address of socket `fd` if it is a listening IPv4 TCP socket.
fn listening_v4(fd: std::os::fd::BorrowedFd<'_>) -> Option<SocketAddrV4> {
    use rustix::net::{AddressFamily, SocketType, sockopt};
    if sockopt::socket_domain(fd).ok()? != AddressFamily::INET
        || sockopt::socket_type(fd).ok()? != SocketType::STREAM
        || !sockopt::socket_acceptconn(fd).ok()?
    {
        return None;
    }
    SocketAddrV4::try_from(rustix::net::getsockname(fd).ok()?).ok()
}

/// Close the listening socket at fd number `fd` and put in its place a listening socket that
/// nobody is ever told about: a non-blocking Unix socket that `listen` binds to a random
/// abstract name. The TCP port is gone at once (a connect is refused), and ractor_cluster's
/// accept loop, whose fd number now holds a socket its reactor was never registered for,
/// waits forever; should it try `accept` once more on readiness it saw before, the call says
/// "would block". (A classic-BPF filter that drops every packet would keep the port bound and
/// is simpler, but attaching one takes privileges on some kernels: EPERM here for non-root.)
fn replace_with_dead_end(fd: RawFd, sealer: Option<std::os::fd::OwnedFd>) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let dead_end = match sealer {
        Some(d) => d,
        None => dead_end()?,
    };
    // SAFETY: dup3 atomically closes whatever `fd` refers to and makes it a duplicate of
    // `dead_end`; no memory is involved. `fd` is the listener ractor_cluster owns, and it keeps
    // owning a valid fd number (which it closes when it drops the listener).
    if unsafe { libc::dup3(dead_end.as_raw_fd(), fd, libc::O_CLOEXEC) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tests that look for a new listener among the next fd numbers run one at a time: a
    /// test opening fds on another thread meanwhile would take those numbers.
    static FDS: std::sync::Mutex<()> = std::sync::Mutex::new(());

    /// Records the ends of our own links.
    #[derive(Clone, Default)]
    struct Downs(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

    impl SessionEvents for Downs {
        fn link_down(&self, ses: &NodeServerSessionInformation) {
            self.0.lock().unwrap().push(ses.peer_addr.clone());
        }
    }

    #[tokio::test]
    #[allow(
        clippy::await_holding_lock,
        reason = "the guard only keeps the other fd test out; nothing here waits for it"
    )]
    async fn the_gatekeeper_closes_a_tcp_connection_at_once_and_tells_no_one() {
        use tokio::io::AsyncReadExt;
        let _fds = FDS.lock().unwrap_or_else(|p| p.into_inner());
        let downs = Downs::default();
        let guarded = start_node_server("gatekeeper-test", "cookie", downs.clone(), false, None)
            .await
            .unwrap();
        let Seal::Open {
            addr: Some(addr), ..
        } = guarded.seal
        else {
            panic!("the listener was not found: {:?}", guarded.seal)
        };
        for _ in 0..3 {
            let mut stranger = tokio::net::TcpStream::connect(addr).await.unwrap();
            let mut buf = [0u8; 64];
            // Closed by the node (EOF or a reset), long before any handshake timeout would.
            let read =
                tokio::time::timeout(std::time::Duration::from_secs(10), stranger.read(&mut buf))
                    .await
                    .expect("the stranger's connection was left open");
            assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        }
        assert!(
            downs.0.lock().unwrap().is_empty(),
            "a stranger's session was reported as one of ours"
        );
        guarded.server.stop(None);
    }

    #[test]
    fn a_sealed_listener_accepts_no_connection() {
        let _fds = FDS.lock().unwrap_or_else(|p| p.into_inner());
        let window = next_fds();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let found = tcp_listeners(window);
        let ours = found
            .iter()
            .find(|l| std::net::SocketAddr::V4(l.addr) == addr)
            .expect("our listener is found");
        replace_with_dead_end(ours.fd, None).unwrap();
        let attempt = std::net::TcpStream::connect(addr);
        assert_eq!(
            attempt.map(|_| ()).unwrap_err().kind(),
            std::io::ErrorKind::ConnectionRefused,
            "a connect to a sealed listener was not refused"
        );
        listener.set_nonblocking(true).unwrap();
        assert_eq!(
            listener.accept().unwrap_err().kind(),
            std::io::ErrorKind::WouldBlock,
            "a sealed listener had a connection to accept"
        );
    }
}
