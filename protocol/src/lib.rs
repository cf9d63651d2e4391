//! `syncra-protocol`: every type that crosses a Syncra process boundary.
//!
//! Three links exist between processes, and each has its module here:
//!
//! - [`boot`]: the frame a child reads from its inherited cluster socket before it joins:
//!   who it is, its session secrets and its own config chunk.
//! - [`node`]: messages between the runtime (the hub node) and a child node over
//!   ractor_cluster, and the ractor message enums that carry them.
//! - [`control`]: requests and replies on the runtime's control socket (the CLI, embedders).
//!
//! Between two nodes, a [`direct`] link the runtime brokers carries one's messages and calls
//! to the other without the hub.
//!
//! A fourth link is memory: the [`page`] a child shares with the runtime for its heartbeat,
//! metrics and panic report.
//!
//! What nodes say to each other is identified by [`message`](mod@message) tags (`syncra.world.scene/1`),
//! never by Rust type paths.
//!
//! The shared vocabulary — node identity and state ([`status`]), crash records ([`crash`]),
//! the world's config chunk ([`world`]) — lives beside them, and [`wire`] holds the framing
//! and the defensive decoding every link uses.
//!
//! **Invariant:** decoding bytes from another process never panics: every decoder returns a
//! [`wire::DecodeError`] naming what was wrong. Every link carries [`PROTOCOL_VERSION`] and
//! refuses a peer that speaks another one.

#![warn(missing_docs)]

pub mod agent;
pub mod audio;
pub mod boot;
pub mod broker;
pub mod control;
pub mod crash;
pub mod direct;
pub mod input;
pub mod link;
pub mod listener;
pub mod message;
pub mod node;
pub mod page;
pub mod render;
pub mod ring;
pub mod sandbox;
pub mod status;
pub mod step;
pub mod window;
pub mod wire;
pub mod world;
pub mod world_state;
pub mod xr;

/// Version of every message format in this crate. Bump it whenever a serialized type changes
/// shape; a node built against another version is refused when it joins.
pub const PROTOCOL_VERSION: u32 = 10;

pub use status::{NodeKind, NodeName, NodeState};
pub use step::{BoxError, StepError};
