//! ractor_cluster's mandatory TCP listener, made unreachable.
//!
//! Every ractor_cluster `NodeServer` binds a TCP listener that cannot be turned off, and its
//! accept loop neither bounds nor times out a connection that never authenticates. No Syncra
//! process takes a session over it — the hub and its children join over inherited Unix
//! socketpairs ([`crate::link::UnixLink`]) — so any TCP connection to it is a stranger's.
//! [`start_node_server`] is the one way Syncra starts a `NodeServer`, and shuts the door twice:
//!
//! 1. It **seals** the listener: a socket filter that drops every packet is attached to the
//!    listening socket (and locked), so a connect never completes, nothing is ever accepted,
//!    and a stranger costs the process neither an fd nor a wakeup. Nothing else about the
//!    listener changes: ractor_cluster's accept loop simply waits forever.
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
        }
    }
    fn node_session_authenticated(&self, _: NodeServerSessionInformation) {}
    fn node_session_disconnected(&self, ses: NodeServerSessionInformation) {
        if !is_stranger(&ses) {
            self.0.link_down(&ses);
        }
    }
}

/// Start a `NodeServer` named `node_name` (listener on loopback, ephemeral port, Isolated
/// mode), seal its listener and guard its sessions; `events` hears about our own links only.
/// `seal: false` leaves the listener open (the gatekeeper alone guards it): for tests.
pub async fn start_node_server(
    node_name: &str,
    cookie: &str,
    events: impl SessionEvents,
    seal: bool,
) -> Result<GuardedServer, String> {
    let before = tcp_listeners();
    let (server, _) = Actor::spawn(None, crate::node::node_server(node_name, cookie), ())
        .await
        .map_err(|e| format!("starting the cluster node: {e}"))?;
    server
        .cast(NodeServerMessage::SubscribeToEvents {
            id: "syncra-gatekeeper".into(),
            subscription: Box::new(Gatekeeper(events)),
        })
        .map_err(|e| format!("guarding the cluster node: {e}"))?;
    // ractor_cluster has bound its listener by the time the spawn returns (the server's
    // `pre_start` waits for the listener's): it is the one loopback listener that is new.
    let new: Vec<Listening> = tcp_listeners()
        .into_iter()
        .filter(|l| !before.iter().any(|b| b.inode == l.inode))
        .filter(|l| *l.addr.ip() == Ipv4Addr::LOCALHOST)
        .collect();
    let seal = match new.as_slice() {
        [one] if !seal => Seal::Open {
            addr: Some(one.addr),
            why: "not sealed (asked not to)".into(),
        },
        [one] => match drop_every_packet(one.fd) {
            Ok(()) => Seal::Sealed(one.addr),
            Err(e) => Seal::Open {
                addr: Some(one.addr),
                why: format!("sealing it: {e}"),
            },
        },
        [] => Seal::Open {
            addr: None,
            why: "the cluster listener was not found in /proc/self/fd".into(),
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
        Seal::Sealed(addr) => tracing::debug!(%addr, "cluster listener sealed"),
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

/// This process's listening IPv4 TCP sockets: `/proc/self/fd` links `socket:[inode]`, matched
/// with the listening entries of `/proc/self/net/tcp`.
fn tcp_listeners() -> Vec<Listening> {
    let table = std::fs::read_to_string("/proc/self/net/tcp").unwrap_or_default();
    let listening = parse_tcp_listeners(&table);
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let e = e.ok()?;
        let fd: RawFd = e.file_name().to_str()?.parse().ok()?;
        let target = std::fs::read_link(e.path()).ok()?;
        let inode: u64 = target
            .to_str()?
            .strip_prefix("socket:[")?
            .strip_suffix(']')?
            .parse()
            .ok()?;
        let addr = listening.iter().find(|(i, _)| *i == inode)?.1;
        Some(Listening { fd, inode, addr })
    })
    .collect()
}

/// `(inode, local address)` of every socket in state LISTEN in a `/proc/net/tcp` table.
fn parse_tcp_listeners(table: &str) -> Vec<(u64, SocketAddrV4)> {
    const LISTEN: &str = "0A";
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (local, state, inode) = (f.get(1)?, f.get(3)?, f.get(9)?);
            if *state != LISTEN {
                return None;
            }
            let (ip, port) = local.split_once(':')?;
            // The address is the in-memory u32, printed in hex: little-endian on x86 and arm.
            let ip = Ipv4Addr::from(u32::from_str_radix(ip, 16).ok()?.to_le_bytes());
            let port = u16::from_str_radix(port, 16).ok()?;
            Some((inode.parse().ok()?, SocketAddrV4::new(ip, port)))
        })
        .collect()
}

/// Attach (and lock) a classic BPF socket filter that drops every packet to socket `fd`.
fn drop_every_packet(fd: RawFd) -> std::io::Result<()> {
    let mut program = [libc::sock_filter {
        code: (libc::BPF_RET | libc::BPF_K) as u16,
        jt: 0,
        jf: 0,
        k: 0, // keep 0 bytes: drop
    }];
    let fprog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_mut_ptr(),
    };
    let one: libc::c_int = 1;
    // SAFETY: `fprog` points at `program`, both live across the call; the kernel copies the
    // program. On an fd that is not a socket the call fails with ENOTSOCK/EBADF.
    let attached = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&raw const fprog).cast(),
            size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if attached != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `one` is a live c_int of the size passed.
    let locked = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LOCK_FILTER,
            (&raw const one).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if locked != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_listening_sockets_from_a_proc_net_tcp_table() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:9C41 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0\n\
   1: 0100007F:9C42 0100007F:9C41 01 00000000:00000000 00:00000000 00000000     0        0 4243 1 0000000000000000 20 4 30 10 -1\n";
        assert_eq!(
            parse_tcp_listeners(table),
            vec![(4242, SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0x9C41))]
        );
    }

    /// Records the ends of our own links.
    #[derive(Clone, Default)]
    struct Downs(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

    impl SessionEvents for Downs {
        fn link_down(&self, ses: &NodeServerSessionInformation) {
            self.0.lock().unwrap().push(ses.peer_addr.clone());
        }
    }

    #[tokio::test]
    async fn the_gatekeeper_closes_a_tcp_connection_at_once_and_tells_no_one() {
        use tokio::io::AsyncReadExt;
        let downs = Downs::default();
        let guarded = start_node_server("gatekeeper-test", "cookie", downs.clone(), false)
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
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let found = tcp_listeners();
        let ours = found
            .iter()
            .find(|l| std::net::SocketAddr::V4(l.addr) == addr)
            .expect("our listener is found in /proc");
        drop_every_packet(ours.fd).unwrap();
        let attempt =
            std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(300));
        assert!(attempt.is_err(), "a connect to a sealed listener completed");
        listener.set_nonblocking(true).unwrap();
        assert_eq!(
            listener.accept().unwrap_err().kind(),
            std::io::ErrorKind::WouldBlock,
            "a sealed listener had a connection to accept"
        );
    }
}
