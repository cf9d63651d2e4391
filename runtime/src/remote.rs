//! Other hosts: `syncra agent` (the daemon on each remote machine) and the runtime's side of
//! its link. Both ends have an identity of their own (`syncra_remote::Identity`, made on
//! first start in a state directory) and trust exactly the fingerprints they were given:
//! the runtime a host's from `[hosts.<name>] fingerprint`, the agent the runtimes' from
//! `--trust` and its state directory's `trusted` file. TLS is accepted in our own code, each
//! handshake under a timeout ([`syncra_remote::accept`]).
//!
//! What an agent does on its link today: it says who it is and answers pings (`syncra hosts`
//! checks every configured host that way). Spawning nodes on it comes next.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use syncra_config::HostPlan;
use syncra_protocol::PROTOCOL_VERSION;
use syncra_protocol::agent::{AgentToRuntime, Fingerprint, MAX_FRAME, RuntimeToAgent};
use syncra_remote::{Identity, accept, frame, tls};

/// The file in an agent's state directory that lists the runtimes it trusts, one
/// fingerprint a line (`#` starts a comment).
pub const TRUST_FILE: &str = "trusted";

/// How long either side waits for the other's first frame.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a runtime keeps its identity when neither config nor command line says:
/// `$XDG_STATE_HOME/syncra`, else `~/.local/state/syncra`, else `/var/lib/syncra`.
pub fn default_state_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("syncra");
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(home) => PathBuf::from(home).join(".local/state/syncra"),
        None => PathBuf::from("/var/lib/syncra"),
    }
}

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

/// What `syncra agent` is told.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// `host:port` to listen on.
    pub listen: String,
    /// Its identity, and its `trusted` file.
    pub state_dir: PathBuf,
    /// Runtimes trusted from the command line.
    pub trust: Vec<Fingerprint>,
    /// Its name for its host.
    pub name: String,
    /// Accept → TLS handshake done.
    pub handshake_timeout: Duration,
}

/// A started agent: where it listens and who it is. Serve it with [`Agent::serve`].
#[derive(Debug)]
pub struct Agent {
    listener: tokio::net::TcpListener,
    config: std::sync::Arc<rustls::ServerConfig>,
    options: AgentOptions,
    /// Its identity's fingerprint (what runtimes pin).
    pub fingerprint: Fingerprint,
    /// Whether its identity was made now.
    pub new_identity: bool,
    /// How many runtimes it trusts.
    pub trusted: usize,
}

/// Why an agent cannot start, in words naming what to fix.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AgentError(String);

impl Agent {
    /// Load (or make) its identity, read whom it trusts, bind its port.
    pub async fn start(options: AgentOptions) -> Result<Agent, AgentError> {
        let (identity, new_identity) = Identity::load_or_create(&options.state_dir, &options.name)
            .map_err(|e| AgentError(format!("its identity: {e}")))?;
        let trusted = load_trust(&options.state_dir, &options.trust).map_err(AgentError)?;
        if trusted.is_empty() {
            return Err(AgentError(format!(
                "it trusts no runtime: pass `--trust <fingerprint>` (`syncra identity` on the runtime's host prints it), or write it to {}",
                options.state_dir.join(TRUST_FILE).display()
            )));
        }
        let count = trusted.len();
        let config = tls::server_config(&identity, trusted)
            .map_err(|e| AgentError(format!("its TLS config: {e}")))?;
        let listener = tokio::net::TcpListener::bind(&options.listen)
            .await
            .map_err(|e| AgentError(format!("listening on {}: {e}", options.listen)))?;
        Ok(Agent {
            listener,
            config,
            fingerprint: identity.fingerprint,
            new_identity,
            trusted: count,
            options,
        })
    }

    /// Where it listens.
    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    /// Serve runtimes for ever.
    pub async fn serve(self) {
        let name = self.options.name.clone();
        let limits = accept::Limits {
            handshake_timeout: self.options.handshake_timeout,
            ..accept::Limits::default()
        };
        accept::serve(self.listener, self.config, limits, move |a| {
            let name = name.clone();
            async move { agent_session(a, name).await }
        })
        .await;
    }
}

async fn agent_session(mut a: accept::Accepted, name: String) {
    let (peer, fp) = (a.peer, a.fingerprint);
    let hello = tokio::time::timeout(
        HELLO_TIMEOUT,
        frame::read::<RuntimeToAgent>(&mut a.stream, "runtime hello", MAX_FRAME),
    )
    .await;
    let (session, host) = match hello {
        Ok(Ok(RuntimeToAgent::Hello {
            protocol,
            session,
            host,
        })) if protocol == PROTOCOL_VERSION => (session, host),
        Ok(Ok(RuntimeToAgent::Hello { protocol, .. })) => {
            let message = format!(
                "this agent speaks protocol v{PROTOCOL_VERSION}, the runtime v{protocol}: run the same Syncra version on both hosts"
            );
            tracing::warn!(%peer, fingerprint = %fp, "{message}");
            let _ = frame::write(&mut a.stream, &AgentToRuntime::Refused { message }).await;
            return;
        }
        Ok(Ok(other)) => {
            tracing::warn!(%peer, fingerprint = %fp, first = ?other, "a runtime that did not say hello first; closed");
            return;
        }
        Ok(Err(e)) => {
            tracing::warn!(%peer, fingerprint = %fp, error = %e, "a runtime's hello did not arrive whole; closed");
            return;
        }
        Err(_) => {
            tracing::warn!(%peer, fingerprint = %fp, "no hello within {} s; closed", HELLO_TIMEOUT.as_secs());
            return;
        }
    };
    tracing::info!(%peer, fingerprint = %fp, session, as_host = %host, "a runtime's session");
    let hello = AgentToRuntime::Hello {
        protocol: PROTOCOL_VERSION,
        name,
        version: env!("CARGO_PKG_VERSION").to_owned(),
    };
    if frame::write(&mut a.stream, &hello).await.is_err() {
        return;
    }
    loop {
        match frame::read::<RuntimeToAgent>(&mut a.stream, "runtime message", MAX_FRAME).await {
            Ok(RuntimeToAgent::Ping { n }) => {
                if frame::write(&mut a.stream, &AgentToRuntime::Pong { n })
                    .await
                    .is_err()
                {
                    break;
                }
            }
            Ok(RuntimeToAgent::Hello { .. }) => {
                tracing::warn!(%peer, "a second hello; closed");
                break;
            }
            Err(frame::FrameError::Io(_)) => break,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "a malformed frame from the runtime; closed");
                break;
            }
        }
    }
    tracing::info!(%peer, session, "the runtime's session ended");
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
    match talk(identity, host, session, pings.max(1)).await {
        Ok(c) => c,
        Err(why) => HostCheck::Unreachable(why),
    }
}

async fn talk(
    identity: &Identity,
    host: &HostPlan,
    session: u64,
    pings: usize,
) -> Result<HostCheck, String> {
    let config = tls::client_config(identity, host.fingerprint).map_err(|e| format!("TLS: {e}"))?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let tcp = tokio::time::timeout(
        Duration::from_secs(3),
        tokio::net::TcpStream::connect(&host.address),
    )
    .await
    .map_err(|_| format!("connecting to {} timed out after 3 s", host.address))?
    .map_err(|e| format!("connecting to {}: {e}", host.address))?;
    let _ = tcp.set_nodelay(true);
    let mut tls = tokio::time::timeout(HELLO_TIMEOUT, connector.connect(tls::server_name(), tcp))
        .await
        .map_err(|_| format!("the TLS handshake with {} timed out", host.address))?
        .map_err(|e| tls::explain(&e, &identity.fingerprint))?;
    let explain = |e: std::io::Error| tls::explain(&e, &identity.fingerprint);
    frame::write(
        &mut tls,
        &RuntimeToAgent::Hello {
            protocol: PROTOCOL_VERSION,
            session,
            host: host.name.clone(),
        },
    )
    .await
    .map_err(explain)?;
    let read = |e: frame::FrameError| match e {
        frame::FrameError::Io(e) => explain(e),
        other => other.to_string(),
    };
    let (name, version) = match tokio::time::timeout(
        HELLO_TIMEOUT,
        frame::read::<AgentToRuntime>(&mut tls, "agent hello", MAX_FRAME),
    )
    .await
    .map_err(|_| "the agent did not say hello within 5 s".to_owned())?
    .map_err(read)?
    {
        AgentToRuntime::Hello {
            name,
            version,
            protocol,
        } if protocol == PROTOCOL_VERSION => (name, version),
        AgentToRuntime::Hello { protocol, .. } => {
            return Err(format!(
                "the agent speaks protocol v{protocol}, this runtime v{PROTOCOL_VERSION}"
            ));
        }
        AgentToRuntime::Refused { message } => return Err(format!("the agent refused: {message}")),
        other => {
            return Err(format!(
                "the agent's first frame was {other:?}, not its hello"
            ));
        }
    };
    let mut rtts = Vec::with_capacity(pings);
    for n in 1..=pings as u64 {
        let t = Instant::now();
        frame::write(&mut tls, &RuntimeToAgent::Ping { n })
            .await
            .map_err(explain)?;
        match frame::read::<AgentToRuntime>(&mut tls, "agent answer", MAX_FRAME)
            .await
            .map_err(read)?
        {
            AgentToRuntime::Pong { n: m } if m == n => rtts.push(t.elapsed()),
            other => return Err(format!("the agent answered ping {n} with {other:?}")),
        }
    }
    Ok(HostCheck::Reachable {
        name,
        version,
        rtts,
    })
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
