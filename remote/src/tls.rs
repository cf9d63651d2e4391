//! Mutual TLS between a runtime and an agent, each trusting exactly the fingerprints it was
//! given: no certificate authority, no names, no expiry games — the way ssh pins host keys. A
//! certificate whose fingerprint is not pinned is refused during the handshake, with the
//! fingerprint in the error, and the handshake still proves the peer holds the key.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::identity::{Fingerprint, Identity};

/// The crypto every Syncra TLS config uses (aws-lc-rs, as ractor_cluster's rustls has it).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The name a runtime gives the agent's end (certificates are pinned, so it is not checked).
pub fn server_name() -> ServerName<'static> {
    ServerName::try_from("syncra-agent").expect("a valid DNS name")
}

/// The message in a refusal of a certificate that is not pinned: it names the fingerprint
/// seen and the ones trusted, so the operator knows which to add.
pub fn not_trusted(seen: &Fingerprint, trusted: &[Fingerprint]) -> String {
    let trusted = if trusted.is_empty() {
        "none".to_owned()
    } else {
        trusted
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!("certificate not trusted: fingerprint {seen}; trusted: {trusted}")
}

/// A certificate that is not pinned, in words ([`not_trusted`]).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NotTrusted(pub String);

/// A TLS failure of our own side, in words: a refused certificate gives its [`NotTrusted`].
pub fn describe(e: &rustls::Error) -> String {
    match e {
        rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other)) => {
            other.0.to_string()
        }
        other => format!("TLS: {other}"),
    }
}

/// The fingerprints a side accepts: a fixed list (the hosts or runtimes it was told to trust),
/// and, for an agent, the node-link certificates the runtime announced, each added for one
/// incarnation and taken away when it ends.
#[derive(Debug, Default)]
pub struct TrustList {
    fixed: Vec<Fingerprint>,
    passing: std::sync::Mutex<std::collections::HashSet<Fingerprint>>,
}

impl TrustList {
    /// Trust exactly `fixed`.
    pub fn new(fixed: Vec<Fingerprint>) -> TrustList {
        TrustList {
            fixed,
            passing: Default::default(),
        }
    }

    fn passing(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<Fingerprint>> {
        self.passing.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Trust `fp` too, until [`TrustList::revoke`].
    pub fn admit(&self, fp: Fingerprint) {
        self.passing().insert(fp);
    }

    /// Stop trusting a fingerprint [`TrustList::admit`] added.
    pub fn revoke(&self, fp: &Fingerprint) {
        self.passing().remove(fp);
    }

    /// Whether `fp` is one of the fixed list.
    pub fn is_fixed(&self, fp: &Fingerprint) -> bool {
        self.fixed.contains(fp)
    }

    /// Whether `fp` is trusted now.
    pub fn contains(&self, fp: &Fingerprint) -> bool {
        self.is_fixed(fp) || self.passing().contains(fp)
    }
}

#[derive(Debug)]
struct Pinned {
    trusted: Arc<TrustList>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl Pinned {
    fn check(&self, cert: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        let seen = crate::identity::fingerprint_of(cert);
        if self.trusted.contains(&seen) {
            Ok(())
        } else {
            // An invalid certificate: the other side is told "certificate unknown". Only the
            // fixed list is named (the passing ones are one-time certificates).
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Other(rustls::OtherError(Arc::new(NotTrusted(
                    not_trusted(&seen, &self.trusted.fixed),
                )))),
            ))
        }
    }
}

/// The handshake-signature half of a verifier, the same on both sides.
macro_rules! signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.algorithms.supported_schemes()
        }
    };
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity)
            .map(|()| ServerCertVerified::assertion())
    }
    signatures!();
}

impl ClientCertVerifier for Pinned {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity)
            .map(|()| ClientCertVerified::assertion())
    }
    signatures!();
}

/// The agent's side: present `identity`, require a client certificate, accept only `trusted`.
pub fn server_config(
    identity: &Identity,
    trusted: Vec<Fingerprint>,
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    server_config_with(identity, Arc::new(TrustList::new(trusted)))
}

/// [`server_config`] with a trust list that may change while it serves.
pub fn server_config_with(
    identity: &Identity,
    trusted: Arc<TrustList>,
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let provider = provider();
    let verifier = Arc::new(Pinned {
        trusted,
        algorithms: provider.signature_verification_algorithms,
    });
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![identity.cert.clone()], identity.key())?;
    Ok(Arc::new(config))
}

/// The runtime's side: present `identity`, accept only the agent whose fingerprint is `agent`.
pub fn client_config(
    identity: &Identity,
    agent: Fingerprint,
) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    let provider = provider();
    let verifier = Arc::new(Pinned {
        trusted: Arc::new(TrustList::new(vec![agent])),
        algorithms: provider.signature_verification_algorithms,
    });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(vec![identity.cert.clone()], identity.key())?;
    Ok(Arc::new(config))
}

/// Whether the identity's key is the certificate's.
pub(crate) fn check_pair(identity: &Identity) -> Result<(), String> {
    rustls::sign::CertifiedKey::from_der(vec![identity.cert.clone()], identity.key(), &provider())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// A TLS failure in words for the person who runs the runtime: a refusal by the other side
/// says what to do about it.
pub fn explain(e: &std::io::Error, ours: &Fingerprint) -> String {
    let tls = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match tls {
        Some(rustls::Error::AlertReceived(
            rustls::AlertDescription::BadCertificate
            | rustls::AlertDescription::CertificateUnknown
            | rustls::AlertDescription::UnknownCA
            | rustls::AlertDescription::AccessDenied
            | rustls::AlertDescription::DecryptError,
        )) => format!(
            "the other side does not trust this certificate ({ours}): add it to its trust list (`syncra agent --trust {ours}`, or a line in its state directory's `trusted`)"
        ),
        Some(other) => describe(other),
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;
    use crate::accept::{Accepted, Limits, serve};

    fn identity(name: &str) -> (tempfile::TempDir, Identity) {
        let dir = tempfile::tempdir().unwrap();
        let (id, _) = Identity::load_or_create(dir.path(), name).unwrap();
        (dir, id)
    }

    /// An echo server that trusts `trusted`, on loopback; its address.
    async fn echo_agent(
        agent: &Identity,
        trusted: Vec<Fingerprint>,
        limits: Limits,
    ) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let config = server_config(agent, trusted).unwrap();
        tokio::spawn(serve(
            listener,
            config,
            limits,
            |mut a: Accepted| async move {
                let mut b = [0u8; 1];
                if a.stream.read_exact(&mut b).await.is_ok() {
                    let _ = a.stream.write_all(&b).await;
                }
            },
        ));
        addr
    }

    async fn dial(
        runtime: &Identity,
        agent: Fingerprint,
        addr: std::net::SocketAddr,
    ) -> Result<u8, String> {
        let connector = tokio_rustls::TlsConnector::from(client_config(runtime, agent).unwrap());
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let mut tls = connector
            .connect(server_name(), tcp)
            .await
            .map_err(|e| explain(&e, &runtime.fingerprint))?;
        tls.write_all(&[42])
            .await
            .map_err(|e| explain(&e, &runtime.fingerprint))?;
        let mut b = [0u8; 1];
        tls.read_exact(&mut b)
            .await
            .map_err(|e| explain(&e, &runtime.fingerprint))?;
        Ok(b[0])
    }

    #[tokio::test]
    async fn only_pinned_certificates_on_both_sides_get_through() {
        let ((_a, agent), (_r, runtime), (_s, stranger)) =
            (identity("agent"), identity("runtime"), identity("stranger"));
        let addr = echo_agent(&agent, vec![runtime.fingerprint], Limits::default()).await;
        // Both pinned.
        assert_eq!(dial(&runtime, agent.fingerprint, addr).await, Ok(42));
        // The runtime expects another agent.
        let e = dial(&runtime, stranger.fingerprint, addr)
            .await
            .unwrap_err();
        assert!(
            e.contains(&format!(
                "certificate not trusted: fingerprint {}",
                agent.fingerprint
            )) && e.contains(&format!("trusted: {}", stranger.fingerprint)),
            "{e}"
        );
        // The agent does not trust this client.
        let e = dial(&stranger, agent.fingerprint, addr).await.unwrap_err();
        assert!(e.contains("does not trust this certificate"), "{e}");
        assert!(e.contains(&stranger.fingerprint.to_string()), "{e}");
    }

    #[tokio::test]
    async fn a_silent_peer_and_garbage_block_nobody_and_time_out() {
        let ((_a, agent), (_r, runtime)) = (identity("agent"), identity("runtime"));
        let limits = Limits {
            handshake_timeout: Duration::from_millis(300),
            ..Limits::default()
        };
        let addr = echo_agent(&agent, vec![runtime.fingerprint], limits).await;
        let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut garbage = tokio::net::TcpStream::connect(addr).await.unwrap();
        garbage.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
        let t = Instant::now();
        assert_eq!(dial(&runtime, agent.fingerprint, addr).await, Ok(42));
        assert!(
            t.elapsed() < Duration::from_millis(300),
            "{:?}",
            t.elapsed()
        );
        // The silent one is closed at its timeout.
        let mut b = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut b))
            .await
            .expect("closed within the timeout");
        assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    }
}
