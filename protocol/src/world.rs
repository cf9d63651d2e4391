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
    /// The game: a player, sounds (the world's own `settings = { .. }` table in config).
    #[serde(default)]
    pub game: WorldGame,
    /// Durable state: whether, how often and how many of its states the world keeps where
    /// its own death cannot reach them.
    #[serde(default)]
    pub state: WorldState,
}

/// A world's durable state (`state`, `state_interval`, `states_kept` in config): every
/// `interval` ticks the world writes its whole simulation state into a ring the runtime holds
/// for it (`world/<name>/state`), and its next incarnation resumes from the newest complete
/// one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorldState {
    /// Write states (`state = "durable"`); `false` (`"off"`): every incarnation starts from
    /// the seed.
    pub durable: bool,
    /// Ticks between states (1: every tick; a crash loses at most this many).
    pub interval: u32,
    /// States kept (the ring's slots, at least 2: one is always complete while the next is
    /// written).
    pub kept: u32,
    /// Crashes in a row, each within `poison_window_ms` of its incarnation's start, after
    /// which the newest state is taken for what kills the world: set aside, and the next
    /// incarnation starts from the seed.
    pub poison_crashes: u32,
    /// See `poison_crashes`, milliseconds.
    pub poison_window_ms: u64,
}

impl Default for WorldState {
    fn default() -> Self {
        WorldState {
            durable: true,
            interval: 1,
            kept: 3,
            poison_crashes: 3,
            poison_window_ms: 5000,
        }
    }
}

/// The stream a world keeps its durable state on: `world/<name>/state`. Only the world
/// writes it and reads it back; the runtime holds it across the world's restarts.
pub const STATE_STREAM: &str = "state";

/// What the runtime writes over every state of a world it set aside as poison, followed by
/// the path of the file it keeps it in: the world's next incarnation starts from its seed
/// and says why.
pub const POISONED: &[u8] = b"SYNPOISN";

/// The state stream's type tag.
pub const STATE_TAG: &str = "syncra.world.state/1";

/// What a world does beyond its seeded scene: `[worlds] settings = { .. }` (or a world's own).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorldGame {
    /// A player entity besides the seeded ones, moved by the input driver's `move` action
    /// and `jump` (player 0's). Off by default (a headless server has no one to play).
    pub player: bool,
    /// Looping ambience asked of the audio driver when the world starts (an asset name);
    /// empty: none.
    pub ambience: String,
    /// The sound of the player jumping; empty: none.
    pub jump_sound: String,
    /// The sound of the player hitting a wall; empty: none.
    pub bump_sound: String,
    /// The audio driver's node name.
    pub audio: String,
    /// The input driver's node name.
    pub input: String,
    /// The XR driver's node name: while its session is visible, sound is heard from the
    /// headset (the listener follows `<xr>/pose`, the arena where its `placement` says);
    /// empty: never.
    pub xr: String,
}

impl Default for WorldGame {
    fn default() -> Self {
        WorldGame {
            player: false,
            ambience: String::new(),
            jump_sound: "jump".into(),
            bump_sound: "bump".into(),
            audio: "audio".into(),
            input: "input".into(),
            xr: "xr".into(),
        }
    }
}

impl WorldSettings {
    /// Settings with the defaults for a world called `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            tick_hz: DEFAULT_TICK_HZ,
            entities: DEFAULT_ENTITIES,
            seed: DEFAULT_SEED,
            game: WorldGame::default(),
            state: WorldState::default(),
        }
    }
}

/// The stream every world publishes its scene on: `world/<name>/scene`.
pub const SCENE_STREAM: &str = "scene";

/// A world's scene at one tick, as published on its scene stream every tick.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SceneSnapshot {
    /// The world's name.
    pub world: String,
    /// The tick it shows.
    pub tick: u64,
    /// Every entity.
    pub entities: Vec<EntitySnapshot>,
    /// The player's entity id, if the world has a player.
    #[serde(default)]
    pub player: Option<u64>,
}

crate::message!(SceneSnapshot = "syncra.world.scene/2");

/// One entity of a [`SceneSnapshot`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EntitySnapshot {
    /// The entity's id (stable for its life).
    pub id: u64,
    /// Position, metres.
    pub position: [f32; 3],
    /// Orientation, quaternion xyzw.
    pub rotation: [f32; 4],
    /// Linear RGBA.
    pub colour: [f32; 4],
}

/// Slot size that holds a snapshot of `entities` entities.
pub fn scene_slot_size(entities: u32) -> u32 {
    256u32.saturating_add(entities.saturating_mul(128))
}
