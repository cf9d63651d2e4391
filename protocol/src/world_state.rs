//! A world's durable state as bytes (the format `syncra-world` writes, in
//! `syncra_world::state`): its header, checked whole here so that the runtime and the CLI can
//! tell a state of another format, another config or a damaged one without the world.
//!
//! ```text
//! 0    magic "SYNSTATE"      8   format (u32)          12  flags (u32: 1 = a player)
//! 16   tick (u64)            24  last input applied (u64, its sequence on the actions stream)
//! 32   seed (u64)            40  entities in the config (u32)   44  records (u32)
//! 48   tick_hz (f64 bits)    56  random generator's word position (u128)
//! 72   body bytes (u64)      80  checksum (u64: CRC-32 of bytes 0..80 and the body)
//! 88   player entity (u64)   96  player's wish (2 × f32)  104 bump cooldown (u32)
//! 128  body: the entities' columns, in the order the ECS iterates them (n entities):
//!      n handles (u64) | n Transform (32 bytes) | n Velocity (16) | n Colour (16)
//! ```

use crate::world::WorldSettings;

/// The state format this build writes and reads.
pub const STATE_FORMAT: u32 = 1;
/// `"SYNSTATE"`.
pub const MAGIC: [u8; 8] = *b"SYNSTATE";
/// Bytes before the body.
pub const STATE_HEADER: usize = 128;
/// Bytes of one entity across the columns (handle 8, Transform 32, Velocity 16, Colour 16).
pub const RECORD: usize = 72;
/// The header bytes the checksum covers (those before it).
pub const CHECKED_HEADER: usize = 80;

/// Bytes a state of a scene of `entities` entities (and a player) needs.
pub fn state_size(entities: u32) -> usize {
    STATE_HEADER + (entities as usize + 1) * RECORD
}

/// What a state says about itself, without its entities.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StateInfo {
    /// Its format.
    pub format: u32,
    /// The tick it holds (the scene after that many ticks).
    pub tick: u64,
    /// The sequence of the last input action applied (0: none).
    pub input_seq: u64,
    /// The seed of the world that wrote it.
    pub seed: u64,
    /// That world's configured entities.
    pub entities: u32,
    /// That world's tick rate.
    pub tick_hz: f64,
    /// Bytes in all.
    pub bytes: usize,
}

/// Why a state cannot be resumed from: each says what it found and what this world expected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StateError {
    /// Not a state at all (another file, an empty slot).
    #[error("not a world state (no SYNSTATE header)")]
    NotAState,
    /// Written by another version of the format.
    #[error("state from format {found}, this build reads {STATE_FORMAT}")]
    Format {
        /// Its format.
        found: u32,
    },
    /// Shorter than its header says: cut off.
    #[error("state cut short: {have} of {want} bytes")]
    Truncated {
        /// Bytes there.
        have: usize,
        /// Bytes it says it has.
        want: usize,
    },
    /// The checksum does not match: corrupted.
    #[error("state corrupted: its checksum does not match")]
    Checksum,
    /// Written by a world of another config: it would not be this world's simulation.
    #[error("state from another config ({found}), this world runs {expected}")]
    Config {
        /// What the state's world ran.
        found: String,
        /// What this world runs.
        expected: String,
    },
    /// Its entities are not a scene this build can hold (a duplicate or invalid id).
    #[error("state holds an invalid entity: {0}")]
    Entities(String),
}

/// The little-endian `u32` at byte `at` (0 past the end).
pub fn u32_at(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u32::from_le_bytes)
}

/// The little-endian `u64` at byte `at` (0 past the end).
pub fn u64_at(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

/// The little-endian `f32` at byte `at` (0 past the end).
pub fn f32_at(b: &[u8], at: usize) -> f32 {
    f32::from_bits(u32_at(b, at))
}

/// CRC-32 (crc32fast: carry-less multiplication where the CPU has it, about as fast as a
/// memcpy of the same bytes).
pub fn checksum(header: &[u8], body: &[u8]) -> u64 {
    let mut h = crc32fast::Hasher::new();
    h.update(&header[..CHECKED_HEADER]);
    h.update(body);
    u64::from(h.finalize())
}

/// The configuration a state must have been written under, in words.
pub fn config_words(seed: u64, entities: u32, tick_hz: f64) -> String {
    format!("seed {seed}, {entities} entities, {tick_hz} Hz")
}

/// Read a state's header and check it whole (format, length, checksum); its info.
pub fn inspect(bytes: &[u8]) -> Result<StateInfo, StateError> {
    if bytes.len() < STATE_HEADER || bytes[..8] != MAGIC {
        return Err(StateError::NotAState);
    }
    let format = u32_at(bytes, 8);
    if format != STATE_FORMAT {
        return Err(StateError::Format { found: format });
    }
    let body = u64_at(bytes, 72);
    let records = u32_at(bytes, 44) as u64;
    let want = (STATE_HEADER as u64).saturating_add(body);
    if body != records.saturating_mul(RECORD as u64) || want > bytes.len() as u64 {
        return Err(StateError::Truncated {
            have: bytes.len(),
            want: want.min(usize::MAX as u64) as usize,
        });
    }
    let want = want as usize;
    if checksum(bytes, &bytes[STATE_HEADER..want]) != u64_at(bytes, 80) {
        return Err(StateError::Checksum);
    }
    Ok(StateInfo {
        format,
        tick: u64_at(bytes, 16),
        input_seq: u64_at(bytes, 24),
        seed: u64_at(bytes, 32),
        entities: u32_at(bytes, 40),
        tick_hz: f64::from_bits(u64_at(bytes, 48)),
        bytes: want,
    })
}

/// Whether a state `info` (with `player`: it has a player) was written by a world of
/// `settings`: the same seed, entities, tick rate, and a player or not.
pub fn check_config(
    info: &StateInfo,
    player: bool,
    settings: &WorldSettings,
) -> Result<(), StateError> {
    if info.seed != settings.seed
        || info.entities != settings.entities
        || info.tick_hz.to_bits() != settings.tick_hz.to_bits()
    {
        return Err(StateError::Config {
            found: config_words(info.seed, info.entities, info.tick_hz),
            expected: config_words(settings.seed, settings.entities, settings.tick_hz),
        });
    }
    if player != settings.game.player {
        let with = |p: bool| if p { "with" } else { "without" };
        return Err(StateError::Config {
            found: format!("a world {} a player", with(player)),
            expected: format!("one {} a player", with(settings.game.player)),
        });
    }
    Ok(())
}

/// Whether the state in `bytes` (checked by [`inspect`]) has a player.
pub fn has_player(bytes: &[u8]) -> bool {
    u32_at(bytes, 12) & 1 == 1
}
