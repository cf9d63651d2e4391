//! Framing and defensive decoding shared by every link.
//!
//! A frame is `len: u32 big-endian` followed by `len` bytes of MessagePack (rmp-serde, named
//! fields). Frames larger than the link's limit are refused before any allocation.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Largest control-socket frame accepted (a status report of thousands of nodes fits easily).
pub const MAX_CONTROL_FRAME: usize = 16 * 1024 * 1024;

/// Why bytes from another process could not be turned into a message.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The bytes are not a valid encoding of the expected type.
    #[error("malformed {what}: {source}")]
    Malformed {
        /// The type that was expected.
        what: &'static str,
        /// What the decoder saw.
        #[source]
        source: rmp_serde::decode::Error,
    },
    /// A length prefix announced more bytes than the link allows.
    #[error("{what} frame of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The frame kind.
        what: &'static str,
        /// The announced length.
        len: usize,
        /// The limit on this link.
        limit: usize,
    },
    /// The message is shorter than its fixed header.
    #[error("truncated {what}: {len} bytes")]
    Truncated {
        /// The message kind.
        what: &'static str,
        /// Bytes received.
        len: usize,
    },
    /// The bytes break a rule of the format (not of the encoding).
    #[error("invalid {what}: {message}")]
    Invalid {
        /// The message kind.
        what: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The peer speaks another protocol version.
    #[error(
        "protocol version mismatch: peer speaks v{peer}, this build speaks v{ours}; rebuild both from the same Syncra version"
    )]
    Version {
        /// The peer's version.
        peer: u32,
        /// Ours, [`crate::PROTOCOL_VERSION`].
        ours: u32,
    },
}

/// Encode a message as MessagePack with named fields (robust to field reordering).
///
/// Encoding into memory only fails for types whose `Serialize` impl fails, which no type in
/// this crate does; such a failure is a bug and is reported as an empty payload that the
/// receiver refuses, never a panic.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    rmp_serde::to_vec_named(msg).unwrap_or_default()
}

/// Decode a message of type `T`, naming `what` in the error.
pub fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, DecodeError> {
    rmp_serde::from_slice(bytes).map_err(|source| DecodeError::Malformed { what, source })
}

/// Prefix `payload` with its big-endian `u32` length.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Check a frame length read from a peer against a limit.
pub fn check_len(what: &'static str, len: u32, limit: usize) -> Result<usize, DecodeError> {
    let len = len as usize;
    if len > limit {
        Err(DecodeError::TooLarge { what, len, limit })
    } else {
        Ok(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Sample {
        a: u32,
        b: String,
    }

    #[test]
    fn round_trip_named_fields() {
        let s = Sample {
            a: 7,
            b: "x".into(),
        };
        assert_eq!(decode::<Sample>("sample", &encode(&s)).unwrap(), s);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bytes in [&b""[..], b"\xff\xff\xff", b"\x92\x01", &[0xc1; 64]] {
            let err = decode::<Sample>("sample", bytes).unwrap_err();
            assert!(err.to_string().starts_with("malformed sample"), "{err}");
        }
    }

    #[test]
    fn oversized_frame_is_refused() {
        let err = check_len("control", 17 << 20, MAX_CONTROL_FRAME).unwrap_err();
        assert!(err.to_string().contains("exceeds the limit"), "{err}");
        assert_eq!(check_len("control", 10, MAX_CONTROL_FRAME).unwrap(), 10);
    }
}
