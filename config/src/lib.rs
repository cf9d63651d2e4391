//! `syncra-config`: the `SyncraConfig.toml` model, its layered loading and its validation.
//!
//! - [`model`]: what a config may say ([`SyncraConfig`] and its sections), every default a
//!   named constant.
//! - [`load`]: [`Loader`] layers built-in defaults → file → `SYNCRA_*` environment →
//!   command-line flags with figment, and names the file, key and expectation in every error.
//! - [`sandbox`]: what each node may touch ([`sandbox::SandboxProfile`]), by kind and by config.
//! - [`plan`]: validation and resolution into a [`Plan`]: the nodes the runtime starts, in
//!   order, each with its effective settings and its own config chunk.
//!
//! The shipped presets are [`presets::SERVER`] and [`presets::DESKTOP`] (the files
//! `config/server.toml` and `config/desktop.toml`).

#![warn(missing_docs)]

pub mod diff;
pub mod load;
pub mod model;
pub mod plan;
pub mod sandbox;

pub use load::{ConfigError, Loaded, Loader, Overrides};
pub use model::*;
pub use plan::{
    Backoff, GroupPlan, GroupPolicy, HostPlan, NodePlan, Plan, Problem, RuntimePlan, StreamLimits,
    default_run_dir, default_state_dir,
};

/// The shipped presets, as text.
pub mod presets {
    /// `config/server.toml`: headless, worlds only.
    pub const SERVER: &str = include_str!("../server.toml");
    /// `config/desktop.toml`: window, renderer, audio and input drivers, one world.
    pub const DESKTOP: &str = include_str!("../desktop.toml");
}

impl SyncraConfig {
    /// Validate and resolve this config (built in code, or loaded) into a [`Plan`].
    pub fn plan(&self) -> Result<Plan, ConfigError> {
        plan::plan(self).map_err(ConfigError::Invalid)
    }

    /// The effective config as TOML, as `syncra check-config` prints it.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self)
            .unwrap_or_else(|e| format!("# could not render the config: {e}\n"))
    }
}
