//! `syncra-remote`: what a runtime and the agents on other hosts need to trust each other —
//! host [`identity`] (a key and a self-signed certificate kept in a state directory, known by
//! its fingerprint), mutual [`tls`] that accepts exactly the pinned fingerprints, [`frame`]d
//! MessagePack over the TLS stream, and an [`accept`] loop whose handshakes are bounded in time
//! and number (one silent peer never blocks the others).
//!
//! **Invariant:** nothing is read from a peer before its certificate's fingerprint was found
//! in the trust list, and every read is bounded (frame size, handshake time).

pub mod accept;
pub mod frame;
pub mod identity;
pub mod tls;

pub use identity::{Fingerprint, Identity};
