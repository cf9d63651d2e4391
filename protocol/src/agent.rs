//! The link between the runtime and `syncra agent` on another host: mutual TLS (identities
//! pinned by fingerprint both ways, `syncra-remote`), then length-prefixed MessagePack frames
//! ([`MAX_FRAME`] at most), each side's first frame its `Hello`.

use serde::{Deserialize, Serialize};

/// The SHA-256 of a certificate (DER), written `sha256:` and 64 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("sha256:")?;
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl std::fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// A fingerprint that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{text}` is not a fingerprint: expected `sha256:` and 64 hex digits, as `syncra agent` and `syncra identity` print them"
)]
pub struct BadFingerprint {
    /// What was given.
    pub text: String,
}

impl std::str::FromStr for Fingerprint {
    type Err = BadFingerprint;
    fn from_str(s: &str) -> Result<Fingerprint, BadFingerprint> {
        let bad = || BadFingerprint { text: s.to_owned() };
        let hex = s.trim().strip_prefix("sha256:").ok_or_else(bad)?;
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(Fingerprint(out))
    }
}

/// Largest frame on the agent link.
pub const MAX_FRAME: usize = 16 << 20;

/// What the runtime says to an agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RuntimeToAgent {
    /// First frame: who the runtime is.
    Hello {
        /// This build's [`crate::PROTOCOL_VERSION`].
        protocol: u32,
        /// The runtime's session, random per run (an agent fences what an ended session left).
        session: u64,
        /// The host name the runtime's config gives the agent.
        host: String,
    },
    /// Answered by [`AgentToRuntime::Pong`] with the same `n`.
    Ping {
        /// Echoed.
        n: u64,
    },
}

/// What an agent says to the runtime.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AgentToRuntime {
    /// First frame: who the agent is.
    Hello {
        /// This build's [`crate::PROTOCOL_VERSION`].
        protocol: u32,
        /// The agent's own name for its host (`--name`, else its hostname).
        name: String,
        /// The agent's version.
        version: String,
    },
    /// The answer to [`RuntimeToAgent::Ping`].
    Pong {
        /// The ping's `n`.
        n: u64,
    },
    /// The agent will not go on with this runtime: why, in words.
    Refused {
        /// What is wrong.
        message: String,
    },
}
