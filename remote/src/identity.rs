//! A host's identity: a key pair and a self-signed certificate made on first start and kept
//! in its state directory, known to others by the certificate's SHA-256 fingerprint — pinned
//! the way ssh pins host keys, with no certificate authority.

use std::fmt;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::Digest as _;

/// The key's file in a state directory (PKCS#8 PEM, mode 0600).
pub const KEY_FILE: &str = "identity.key";

/// The certificate's file in a state directory (PEM).
pub const CERT_FILE: &str = "identity.crt";

pub use syncra_protocol::agent::{BadFingerprint, Fingerprint};

/// The fingerprint of `cert` (DER).
pub fn fingerprint_of(cert: &[u8]) -> Fingerprint {
    Fingerprint(sha2::Sha256::digest(cert).into())
}

/// A host's key and certificate.
pub struct Identity {
    /// The certificate (DER).
    pub cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
    /// The certificate's fingerprint.
    pub fingerprint: Fingerprint,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

/// Why an identity could not be loaded or made.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A file or the directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The key file may be read by other users.
    #[error(
        "{path} may be read by other users (mode {mode:04o}): its key is this host's identity; `chmod 600 {path}`"
    )]
    KeyExposed {
        /// The key file.
        path: PathBuf,
        /// Its mode.
        mode: u32,
    },
    /// A file does not hold what it should.
    #[error("{path}: {message}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Making the key pair or certificate failed.
    #[error("making a key pair and certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

impl Identity {
    /// Load the identity kept in `dir`, or make one (named `name` in its certificate) when
    /// `dir` has none. `true` with it: it was made now.
    pub fn load_or_create(dir: &Path, name: &str) -> Result<(Identity, bool), IdentityError> {
        let (key_path, cert_path) = (dir.join(KEY_FILE), dir.join(CERT_FILE));
        if key_path.exists() || cert_path.exists() {
            return Identity::load(&key_path, &cert_path).map(|i| (i, false));
        }
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| IdentityError::Io { path, source }
        };
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(io(dir))?;
        }
        let made = rcgen::generate_simple_self_signed(vec![name.to_owned()])?;
        let key_pem = made.signing_key.serialize_pem();
        let cert_pem = made.cert.pem();
        let mut key_file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&key_path)
            .map_err(io(&key_path))?;
        key_file
            .write_all(key_pem.as_bytes())
            .and_then(|()| key_file.sync_all())
            .map_err(io(&key_path))?;
        std::fs::write(&cert_path, cert_pem).map_err(io(&cert_path))?;
        Identity::load(&key_path, &cert_path).map(|i| (i, true))
    }

    /// A new identity kept in memory only (a node link's certificate: one incarnation's, for
    /// one connection), named `name` in its certificate.
    pub fn ephemeral(name: &str) -> Result<Identity, IdentityError> {
        let made = rcgen::generate_simple_self_signed(vec![name.to_owned()])?;
        let cert = made.cert.der().clone();
        let key = PrivatePkcs8KeyDer::from(made.signing_key.serialize_der());
        Ok(Identity {
            fingerprint: fingerprint_of(&cert),
            cert,
            key,
        })
    }

    fn load(key_path: &Path, cert_path: &Path) -> Result<Identity, IdentityError> {
        let meta = std::fs::metadata(key_path).map_err(|source| IdentityError::Io {
            path: key_path.to_owned(),
            source,
        })?;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(IdentityError::KeyExposed {
                path: key_path.to_owned(),
                mode,
            });
        }
        let malformed = |path: &Path, what: &str| {
            let path = path.to_owned();
            let what = what.to_owned();
            move |e: rustls::pki_types::pem::Error| IdentityError::Malformed {
                path,
                message: format!("not a PEM {what}: {e}"),
            }
        };
        let key = PrivatePkcs8KeyDer::from_pem_file(key_path)
            .map_err(malformed(key_path, "PKCS#8 private key"))?;
        let cert = CertificateDer::from_pem_file(cert_path)
            .map_err(malformed(cert_path, "certificate"))?;
        let fingerprint = fingerprint_of(&cert);
        let identity = Identity {
            cert,
            key,
            fingerprint,
        };
        // The two files belong together: the key signs for the certificate.
        crate::tls::check_pair(&identity).map_err(|message| IdentityError::Malformed {
            path: cert_path.to_owned(),
            message: format!("does not match {}: {message}", key_path.display()),
        })?;
        Ok(identity)
    }

    /// The private key, for a TLS config.
    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_identity_is_made_once_kept_private_and_known_by_its_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let (first, made) = Identity::load_or_create(&state, "gpu-box").unwrap();
        assert!(made);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&state.join(KEY_FILE)), 0o600);
        assert_eq!(mode(&state), 0o700);
        let (again, made) = Identity::load_or_create(&state, "gpu-box").unwrap();
        assert!(!made);
        assert_eq!(first.fingerprint, again.fingerprint);
        let text = first.fingerprint.to_string();
        assert!(text.starts_with("sha256:") && text.len() == 71, "{text}");
        assert_eq!(text.parse::<Fingerprint>().unwrap(), first.fingerprint);
        // Another directory, another identity.
        let (other, _) = Identity::load_or_create(&dir.path().join("other"), "x").unwrap();
        assert_ne!(other.fingerprint, first.fingerprint);
    }

    #[test]
    fn an_exposed_key_a_broken_file_and_a_mismatched_pair_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let (_, _) = Identity::load_or_create(dir.path(), "a").unwrap();
        let key = dir.path().join(KEY_FILE);
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Identity::load_or_create(dir.path(), "a").unwrap_err();
        assert!(
            e.to_string()
                .contains("may be read by other users (mode 0644)"),
            "{e}"
        );
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(dir.path().join(CERT_FILE), "garbage").unwrap();
        let e = Identity::load_or_create(dir.path(), "a").unwrap_err();
        assert!(e.to_string().contains("not a PEM certificate"), "{e}");
        // The certificate of another identity beside this key.
        let other = tempfile::tempdir().unwrap();
        Identity::load_or_create(other.path(), "b").unwrap();
        std::fs::copy(other.path().join(CERT_FILE), dir.path().join(CERT_FILE)).unwrap();
        let e = Identity::load_or_create(dir.path(), "a").unwrap_err();
        assert!(e.to_string().contains("does not match"), "{e}");
    }

    #[test]
    fn fingerprints_parse_only_in_their_own_form() {
        for bad in [
            "",
            "sha256:",
            "md5:00",
            "sha256:zz",
            &format!("sha256:{}", "0".repeat(63)),
        ] {
            let e = bad.parse::<Fingerprint>().unwrap_err();
            assert!(
                e.to_string()
                    .contains("expected `sha256:` and 64 hex digits"),
                "{e}"
            );
        }
        let ok = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(ok.parse::<Fingerprint>().unwrap().to_string(), ok);
    }
}
