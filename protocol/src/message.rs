//! Stable identity for what nodes exchange: every message, request, response and stream
//! payload names itself with an explicit, versioned **tag** (`syncra.world.scene/1`) instead
//! of its Rust type path. Two crates that define the same message independently — the same
//! tag, the same shape — interoperate; a payload whose tag is not the one expected is refused,
//! naming both.
//!
//! ```
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Serialize, Deserialize)]
//! struct GetStats;
//! #[derive(Debug, Serialize, Deserialize)]
//! struct Stats { frames: u64 }
//!
//! syncra_protocol::message!(Stats = "studio.hologram.stats/1");
//! // A request names its response: `node.call(to, GetStats)` returns a `Stats`.
//! syncra_protocol::message!(GetStats = "studio.hologram.get-stats/1" => Stats);
//! # use syncra_protocol::message::{Message, Request};
//! # assert_eq!(<GetStats as Request>::Response::TAG, "studio.hologram.stats/1");
//! ```
//!
//! A tag is `NAME/VERSION`: NAME is 1 to [`MAX_TAG_NAME`] ASCII letters, digits, `.`, `_` and
//! `-` (by convention `owner.thing.kind`), VERSION a number. Change the version whenever the
//! shape changes. [`message!`](crate::message!) checks the tag when the crate compiles.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A type that travels between nodes (a message, a request, a response, a stream payload).
pub trait Message: Serialize + DeserializeOwned {
    /// Its tag, `NAME/VERSION` (see the module docs).
    const TAG: &'static str;
}

/// A message that asks for an answer of type [`Request::Response`].
pub trait Request: Message {
    /// What the callee answers with.
    type Response: Message;
    /// Whether `syncra call` may send this request from the command line (JSON in, JSON
    /// out). Off unless the type says so (`message!(T = "…" => R, cli)`).
    const CLI: bool = false;
}

/// Longest tag name (before the `/`).
pub const MAX_TAG_NAME: usize = 96;

/// Whether `tag` is a valid tag: `NAME/VERSION` (see the module docs). Usable in constants.
pub const fn is_valid_tag(tag: &str) -> bool {
    let b = tag.as_bytes();
    let mut i = 0;
    while i < b.len() && b[i] != b'/' {
        let c = b[i];
        if !(c.is_ascii_alphanumeric() || c == b'.' || c == b'_' || c == b'-') {
            return false;
        }
        i += 1;
    }
    if i == 0 || i > MAX_TAG_NAME || i + 1 >= b.len() || b.len() - i - 1 > 9 {
        return false;
    }
    let mut j = i + 1;
    while j < b.len() {
        if !b[j].is_ascii_digit() {
            return false;
        }
        j += 1;
    }
    true
}

/// Give a type its tag: `message!(Scene = "studio.scene/1")` implements [`Message`];
/// `message!(GetStats = "studio.get-stats/1" => Stats)` also makes it a [`Request`] answered
/// by `Stats`, and `message!(GetStats = "…" => Stats, cli)` one that `syncra call` may send.
/// An invalid tag fails the build.
#[macro_export]
macro_rules! message {
    ($ty:ty = $tag:literal) => {
        impl $crate::message::Message for $ty {
            const TAG: &'static str = {
                assert!(
                    $crate::message::is_valid_tag($tag),
                    concat!(
                        "invalid message tag `",
                        $tag,
                        "`: expected NAME/VERSION, e.g. studio.scene/1"
                    )
                );
                $tag
            };
        }
    };
    ($ty:ty = $tag:literal => $response:ty) => {
        $crate::message!($ty = $tag);
        impl $crate::message::Request for $ty {
            type Response = $response;
        }
    };
    ($ty:ty = $tag:literal => $response:ty, cli) => {
        $crate::message!($ty = $tag);
        impl $crate::message::Request for $ty {
            type Response = $response;
            const CLI: bool = true;
        }
    };
}

/// The tag a bulk stream's header carries: the header type's tag, marked as bulk.
pub fn bulk_tag<H: Message>() -> String {
    format!("bulk:{}", H::TAG)
}

/// A payload was tagged otherwise than the receiver expects.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tag mismatch: the payload is `{got}`, expected `{expected}`")]
pub struct TagMismatch {
    /// The payload's tag.
    pub got: String,
    /// The tag the receiver expects.
    pub expected: String,
}

/// Check that a payload tagged `got` is an `M`.
pub fn expect_tag<M: Message>(got: &str) -> Result<(), TagMismatch> {
    if got == M::TAG {
        Ok(())
    } else {
        Err(TagMismatch {
            got: got.to_owned(),
            expected: M::TAG.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tag_is_a_name_and_a_version() {
        for good in ["syncra.world.scene/1", "a/0", "studio_x-y.z/123456789"] {
            assert!(is_valid_tag(good), "{good}");
        }
        for bad in [
            "",
            "/1",
            "scene",
            "scene/",
            "scene/v1",
            "sce ne/1",
            "world::Scene/1",
            "scene/1/2",
            "scene/1234567890",
            &format!("{}/1", "x".repeat(MAX_TAG_NAME + 1)),
        ] {
            assert!(!is_valid_tag(bad), "{bad:?} was accepted");
        }
    }

    #[derive(serde::Serialize, serde::Deserialize)]
    struct Ours;
    crate::message!(Ours = "test.ours/1");

    #[test]
    fn a_mismatch_names_both_tags() {
        assert!(expect_tag::<Ours>("test.ours/1").is_ok());
        let err = expect_tag::<Ours>("test.theirs/2").unwrap_err();
        assert_eq!(
            err.to_string(),
            "tag mismatch: the payload is `test.theirs/2`, expected `test.ours/1`"
        );
        assert_eq!(bulk_tag::<Ours>(), "bulk:test.ours/1");
    }
}
