//! `syncra-runtime`: the Syncra runtime, a library first.
//!
//! It runs a game engine as a family of OS processes — one per driver and one per world —
//! joined into one ractor_cluster cluster with the runtime as its hub. It starts them in
//! order, watches every one (exit and heartbeat), restarts the ones that fail under
//! Erlang-style policies, records why, and stops them in reverse order.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use syncra_runtime::{Runtime, ShutdownCause};
//!
//! let mut config = syncra_config::SyncraConfig::default();
//! config.worlds.count = Some(2);
//! let runtime = Runtime::start(&config).await?;
//! let mut events = runtime.subscribe();
//! runtime.wait_ready(std::time::Duration::from_secs(10)).await.ok();
//! println!("{:?}", runtime.status());
//! runtime.restart("world/main").await?;
//! println!("{:?}", events.recv().await?);
//! runtime.shutdown(ShutdownCause::Requested).await;
//! # Ok(()) }
//! ```
//!
//! The `syncra` binary (feature `cli`) is a thin layer over this API; [`ControlClient`]
//! reaches a running runtime through its control socket.
//!
//! Modules, from the outside in: [`runtime`] (the API), `control` (the socket), `supervisor`
//! (the actors and the restart policy), `cluster` (the hub node and gateway), `spawn` (the one
//! spawn path), [`sandbox`] (what the spawn path confines each node to), `registry` (node
//! state), [`hooks`] and [`logs`].

#![warn(missing_docs)]

mod broker;
mod cgroup;
mod cluster;
mod control;
#[cfg(feature = "dashboard")]
pub mod dashboard;
mod fdreserve;
pub mod hooks;
mod launch;
pub mod logs;
mod registry;
pub mod remote;
mod root;
mod router;
mod rundir;
pub mod runtime;
pub mod sandbox;
mod spawn;
mod supervisor;
mod watchdog;

pub use control::{
    ClientError, ControlClient, EventStream, MAX_CONNECTIONS, MAX_REQUEST, MAX_SUBSCRIBERS,
};
pub use hooks::{HookContext, HookFn};
pub use rundir::RunDirError;
pub use runtime::{ReloadError, ReloadReport, Runtime, RuntimeBuilder, ShutdownReport, StartError};
pub use spawn::{RemoteFailure, SpawnError, command_problems, resolve_program};
pub use supervisor::ShutdownCause;
pub use syncra_config as config;
pub use syncra_protocol as protocol;
