//! Other hosts: `syncra agent` (the daemon on each remote machine, [`agent`]) and the
//! runtime's side of its link (`hosts`). Both ends have an identity of their own
//! (`syncra_remote::Identity`, made on first start in a state directory) and trust exactly the
//! fingerprints they were given: the runtime a host's from `[hosts.<name>] fingerprint`, the
//! agent the runtimes' from `--trust` and its state directory's `trusted` file. TLS is
//! accepted in our own code, each handshake under a timeout ([`syncra_remote::accept`]).
//!
//! A node placed on a host (`host = "gpu-box"`) is spawned there by the agent through the same
//! spawn path as a local one, watched there (its pidfd, its page's heartbeat), and supervised
//! here by its node supervisor, which decides every restart. The session link's deadline is a
//! lease ([`lease`]): a partition shorter than it restarts nothing; past it the agent kills the
//! session's nodes and the runtime starts replacements only after a fence grace more.

pub mod agent;
pub(crate) mod bridge;
pub(crate) mod hosts;
pub(crate) mod lease;

use std::path::Path;
use std::time::{Duration, Instant};

use syncra_config::HostPlan;
use syncra_protocol::PROTOCOL_VERSION;
use syncra_protocol::agent::{
    AgentToRuntime, Exit, Fingerprint, MAX_FRAME, Running, RuntimeToAgent,
};
use syncra_remote::{Identity, frame, tls};

pub use agent::{Agent, AgentError, AgentOptions};
pub use syncra_config::default_state_dir;

/// The file in an agent's state directory that lists the runtimes it trusts, one
/// fingerprint a line (`#` starts a comment).
pub const TRUST_FILE: &str = "trusted";

/// How long either side waits for the other's first frame.
pub(crate) const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// This host's name, for a new certificate and an agent's hello.
pub fn host_name() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

/// The fingerprints an agent trusts: `flags`, then the lines of `<state_dir>/trusted`. A
/// line that is not a fingerprint is an error naming the file and line.
pub fn load_trust(state_dir: &Path, flags: &[Fingerprint]) -> Result<Vec<Fingerprint>, String> {
    let mut trusted = flags.to_vec();
    let path = state_dir.join(TRUST_FILE);
    // Whoever may write it decides whom the agent trusts (as ssh's StrictModes).
    for p in [state_dir, path.as_path()] {
        if let Ok(meta) = std::fs::metadata(p) {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = meta.permissions().mode() & 0o7777;
            if mode & 0o022 != 0 {
                return Err(format!(
                    "{} may be written by other users (mode {mode:04o}): whoever can write it chooses whom this agent trusts; `chmod go-w {}`",
                    p.display(),
                    p.display()
                ));
            }
        }
    }
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            for (i, line) in text.lines().enumerate() {
                let line = line.split('#').next().unwrap_or("").trim();
                if line.is_empty() {
                    continue;
                }
                let fp = line
                    .parse::<Fingerprint>()
                    .map_err(|e| format!("{}:{}: {e}", path.display(), i + 1))?;
                if !trusted.contains(&fp) {
                    trusted.push(fp);
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("{}: {e}", path.display())),
    }
    Ok(trusted)
}

/// What checking a host found.
#[derive(Debug, Clone, PartialEq)]
pub enum HostCheck {
    /// Its agent answered.
    Reachable {
        /// The agent's own name for its host.
        name: String,
        /// Its version.
        version: String,
        /// Each ping's round trip.
        rtts: Vec<Duration>,
    },
    /// It did not: why, in words (a refused certificate names the fingerprints).
    Unreachable(String),
}

/// Connect to `host`'s agent as `identity`, say hello and ping it `pings` times (at least
/// once), one after another.
pub async fn check_host(
    identity: &Identity,
    host: &HostPlan,
    session: u64,
    pings: usize,
) -> HostCheck {
    match probe(identity, host, session, pings.max(1)).await {
        Ok(c) => c,
        Err(why) => HostCheck::Unreachable(why),
    }
}

async fn probe(
    identity: &Identity,
    host: &HostPlan,
    session: u64,
    pings: usize,
) -> Result<HostCheck, String> {
    let conn = connect(identity, host, session, 0)
        .await
        .map_err(|e| match e {
            ConnectError::Refused(why) | ConnectError::Unreachable(why) => why,
        })?;
    let (name, version) = (conn.name, conn.version);
    let mut tls = conn.stream;
    let explain = |e: std::io::Error| tls::explain(&e, &identity.fingerprint);
    let read = |e: frame::FrameError| match e {
        frame::FrameError::Io(e) => explain(e),
        other => other.to_string(),
    };
    let mut rtts = Vec::with_capacity(pings);
    for n in 1..=pings as u64 {
        let t = Instant::now();
        frame::write(&mut tls, &RuntimeToAgent::Ping { n })
            .await
            .map_err(explain)?;
        loop {
            match frame::read::<AgentToRuntime>(&mut tls, "agent answer", MAX_FRAME)
                .await
                .map_err(read)?
            {
                AgentToRuntime::Pong { n: m } if m == n => {
                    rtts.push(t.elapsed());
                    break;
                }
                // The agent's own pings (a session with no nodes has none, but answer them).
                AgentToRuntime::Ping { n } => frame::write(&mut tls, &RuntimeToAgent::Pong { n })
                    .await
                    .map_err(explain)?,
                other => return Err(format!("the agent answered ping {n} with {other:?}")),
            }
        }
    }
    let _ = frame::write(&mut tls, &RuntimeToAgent::Goodbye).await;
    Ok(HostCheck::Reachable {
        name,
        version,
        rtts,
    })
}

/// Why a host's agent could not be reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ConnectError {
    /// One side does not trust the other, or they speak other protocols: trying again does
    /// not help.
    Refused(String),
    /// No answer, a refused connection, a broken one: it may come back.
    Unreachable(String),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Refused(why) | ConnectError::Unreachable(why) => f.write_str(why),
        }
    }
}

/// A session link, after both hellos.
pub(crate) struct Connected {
    pub(crate) stream: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    /// The agent's name for its host.
    pub(crate) name: String,
    /// Its version.
    pub(crate) version: String,
    /// Its instance (another than last time: it restarted).
    pub(crate) instance: u64,
    /// The session's nodes it still runs.
    pub(crate) running: Vec<Running>,
    /// How the session's nodes that ended while it was away ended.
    pub(crate) ended: Vec<Exit>,
}

/// TCP and TLS to `host`'s agent as `identity`, pinning the agent's fingerprint; the socket
/// gives up on unacknowledged data after `deadline` (TCP_USER_TIMEOUT).
pub(crate) async fn dial(
    host: &HostPlan,
    identity: &Identity,
    deadline: Duration,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, ConnectError> {
    let config = tls::client_config(identity, host.fingerprint)
        .map_err(|e| ConnectError::Refused(format!("TLS: {e}")))?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let tcp = tokio::time::timeout(
        Duration::from_secs(3),
        tokio::net::TcpStream::connect(&host.address),
    )
    .await
    .map_err(|_| {
        ConnectError::Unreachable(format!(
            "connecting to {} timed out after 3 s",
            host.address
        ))
    })?
    .map_err(|e| ConnectError::Unreachable(format!("connecting to {}: {e}", host.address)))?;
    tune(&tcp, deadline);
    let refused = |e: &std::io::Error| {
        e.get_ref()
            .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
    };
    match tokio::time::timeout(HELLO_TIMEOUT, connector.connect(tls::server_name(), tcp)).await {
        Err(_) => Err(ConnectError::Unreachable(format!(
            "the TLS handshake with {} timed out",
            host.address
        ))),
        Ok(Err(e)) if refused(&e) => Err(ConnectError::Refused(tls::explain(
            &e,
            &identity.fingerprint,
        ))),
        Ok(Err(e)) => Err(ConnectError::Unreachable(format!(
            "the TLS handshake with {}: {e}",
            host.address
        ))),
        Ok(Ok(s)) => Ok(s),
    }
}

/// No Nagle, and a socket that gives up after `deadline` without an acknowledgement — also
/// an idle one (keepalive probes from half the deadline on), so that a half-open connection
/// ends rather than holding its bridge for ever.
pub(crate) fn tune(tcp: &tokio::net::TcpStream, deadline: Duration) {
    use rustix::net::sockopt;
    let _ = tcp.set_nodelay(true);
    if !deadline.is_zero() {
        let ms = u32::try_from(deadline.as_millis()).unwrap_or(u32::MAX);
        let _ = sockopt::set_tcp_user_timeout(tcp, ms);
        let _ = sockopt::set_socket_keepalive(tcp, true);
        let _ = sockopt::set_tcp_keepidle(tcp, (deadline / 2).max(Duration::from_secs(1)));
        let _ = sockopt::set_tcp_keepintvl(tcp, (deadline / 4).max(Duration::from_secs(1)));
        let _ = sockopt::set_tcp_keepcnt(tcp, 2);
    }
}

/// Open a session link to `host`'s agent: TLS, then the hellos. `lease_ms` 0 asks for no
/// nodes (a check).
pub(crate) async fn connect(
    identity: &Identity,
    host: &HostPlan,
    session: u64,
    lease_ms: u64,
) -> Result<Connected, ConnectError> {
    let mut tls = dial(host, identity, host.deadline).await?;
    let unreachable = |e: std::io::Error| {
        let refused = e
            .get_ref()
            .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some());
        let why = tls::explain(&e, &identity.fingerprint);
        if refused {
            ConnectError::Refused(why)
        } else {
            ConnectError::Unreachable(why)
        }
    };
    frame::write(
        &mut tls,
        &RuntimeToAgent::Hello {
            protocol: PROTOCOL_VERSION,
            session,
            host: host.name.clone(),
            lease_ms,
        },
    )
    .await
    .map_err(unreachable)?;
    let hello = tokio::time::timeout(
        HELLO_TIMEOUT,
        frame::read::<AgentToRuntime>(&mut tls, "agent hello", MAX_FRAME),
    )
    .await
    .map_err(|_| ConnectError::Unreachable("the agent did not say hello within 5 s".into()))?
    .map_err(|e| match e {
        frame::FrameError::Io(e) => unreachable(e),
        other => ConnectError::Refused(other.to_string()),
    })?;
    match hello {
        AgentToRuntime::Hello {
            name,
            version,
            protocol,
            instance,
            running,
            ended,
        } if protocol == PROTOCOL_VERSION => Ok(Connected {
            stream: tls,
            name,
            version,
            instance,
            running,
            ended,
        }),
        AgentToRuntime::Hello { protocol, .. } => Err(ConnectError::Refused(format!(
            "the agent speaks protocol v{protocol}, this runtime v{PROTOCOL_VERSION}: run the same Syncra version on both hosts"
        ))),
        AgentToRuntime::Refused { message } => Err(ConnectError::Refused(format!(
            "the agent refused: {message}"
        ))),
        other => Err(ConnectError::Refused(format!(
            "the agent's first frame was {other:?}, not its hello"
        ))),
    }
}

/// This runtime's identity (made on first use) in `state_dir`.
pub fn runtime_identity(state_dir: &Path) -> Result<(Identity, bool), String> {
    Identity::load_or_create(state_dir, &host_name())
        .map_err(|e| format!("the runtime's identity: {e}"))
}

/// A random session id.
pub fn new_session() -> u64 {
    let mut b = [0u8; 8];
    let _ = rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty());
    u64::from_ne_bytes(b)
}
