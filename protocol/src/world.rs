//! The world's config chunk: what a world process receives about itself.

use serde::{Deserialize, Serialize};

/// Default simulation rate of a world, ticks per second.
pub const DEFAULT_TICK_HZ: f64 = 60.0;
/// Default number of entities in a world's seeded scene.
pub const DEFAULT_ENTITIES: u32 = 256;
/// Default base seed; world `i` (0-based, in config order) uses `seed + i` unless it sets its own.
pub const DEFAULT_SEED: u64 = 0x5EED;

/// Settings a world process simulates with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorldSettings {
    /// The world's name (without the `world/` prefix).
    pub name: String,
    /// Fixed simulation rate, ticks per second.
    pub tick_hz: f64,
    /// Entities in the seeded scene.
    pub entities: u32,
    /// Seed of the scene: the same seed gives the same scene and the same simulation.
    pub seed: u64,
}

impl WorldSettings {
    /// Settings with the defaults for a world called `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            tick_hz: DEFAULT_TICK_HZ,
            entities: DEFAULT_ENTITIES,
            seed: DEFAULT_SEED,
        }
    }
}
