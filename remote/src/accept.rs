//! Accepting TLS connections in our own code: each handshake in a task of its own under a
//! timeout, a bounded number at once, so a peer that connects and sends nothing (or sends
//! garbage) costs one slot for a few seconds and blocks nobody — ractor_cluster's listener
//! awaits each handshake in its one loop, with no timeout.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::server::TlsStream;

use crate::identity::Fingerprint;

/// Bounds on what strangers can make an acceptor hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// TCP accept → TLS handshake done, at most.
    pub handshake_timeout: Duration,
    /// Handshakes under way at once; a connection past it is closed at once.
    pub max_handshakes: usize,
    /// Sessions (after the handshake) at once; past it a new one is closed.
    pub max_sessions: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            handshake_timeout: Duration::from_secs(5),
            max_handshakes: 64,
            max_sessions: 64,
        }
    }
}

/// A connection whose peer proved it holds a trusted certificate.
#[derive(Debug)]
pub struct Accepted {
    /// The TLS stream.
    pub stream: TlsStream<TcpStream>,
    /// Where it came from.
    pub peer: SocketAddr,
    /// The peer certificate's fingerprint (one of the trusted).
    pub fingerprint: Fingerprint,
}

/// Accept on `listener` for ever, handing each trusted session to `session` in a task of its
/// own. Refusals are logged with the peer's address and the reason.
pub async fn serve<F, Fut>(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    limits: Limits,
    session: F,
) where
    F: Fn(Accepted) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let handshakes = Arc::new(Semaphore::new(limits.max_handshakes));
    let sessions = Arc::new(Semaphore::new(limits.max_sessions));
    let session = Arc::new(session);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of fds, most likely: wait a little rather than spin.
                tracing::warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = handshakes.clone().try_acquire_owned() else {
            tracing::warn!(%peer, limit = limits.max_handshakes, "too many handshakes at once; closed a connection");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, sessions, session) = (acceptor.clone(), sessions.clone(), session.clone());
        tokio::spawn(async move {
            let shaken = tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await;
            drop(permit);
            let stream = match shaken {
                Err(_) => {
                    tracing::warn!(%peer, after_ms = limits.handshake_timeout.as_millis() as u64, "a TLS handshake timed out; closed");
                    return;
                }
                Ok(Err(e)) => {
                    tracing::warn!(%peer, why = %refusal(&e), "refused a connection");
                    return;
                }
                Ok(Ok(s)) => s,
            };
            let Some(fingerprint) = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| crate::identity::fingerprint_of(c))
            else {
                tracing::warn!(%peer, "a session without a client certificate; closed");
                return;
            };
            let Ok(_slot) = sessions.try_acquire_owned() else {
                tracing::warn!(%peer, limit = limits.max_sessions, "too many sessions at once; closed a new one");
                return;
            };
            session(Accepted {
                stream,
                peer,
                fingerprint,
            })
            .await;
        });
    }
}

/// A handshake failure on the accepting side, in words.
fn refusal(e: &std::io::Error) -> String {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::AlertReceived(
            rustls::AlertDescription::CertificateUnknown
            | rustls::AlertDescription::BadCertificate
            | rustls::AlertDescription::DecryptError,
        )) => "the other side does not trust this host's certificate (its config pins another fingerprint)".to_owned(),
        Some(tls) => crate::tls::describe(tls),
        None => e.to_string(),
    }
}
