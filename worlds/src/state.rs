//! A world's durable state: its whole simulation — every entity's id and components, the
//! player, the tick, the random generator's position, the last input applied — in one flat,
//! versioned, checksummed record, written in place (into a slot of the world's state ring, or
//! a file) and read back by its next incarnation.
//!
//! ```text
//! 0    magic "SYNSTATE"      8   format (u32)          12  flags (u32: 1 = a player)
//! 16   tick (u64)            24  last input applied (u64, its sequence on the actions stream)
//! 32   seed (u64)            40  entities in the config (u32)   44  records (u32)
//! 48   tick_hz (f64 bits)    56  random generator's word position (u128)
//! 72   body bytes (u64)      80  checksum (u64: CRC-32 of bytes 0..80 and the body)
//! 88   player entity (u64)   96  player's wish (2 × f32)  104 bump cooldown (u32)
//! 128  body: the entities' columns, each in the order the ECS iterates them (n entities):
//!      n entity handles (u64) | n Transform (32 bytes) | n Velocity (16) | n Colour (16)
//! ```
//!
//! All little-endian. The components are plain bytes ([`Transform`]: position 3 × f32,
//! scale f32, rotation 4 × f32; [`Velocity`]: linear 3 × f32, spin f32; [`Colour`]: 4 × f32),
//! so each ECS column is copied whole: writing a state costs little more than a memcpy.

use rand_chacha::ChaCha8Rng;
use syncra_protocol::world::WorldSettings;

use crate::{Colour, Player, Scene, Transform, Velocity};

pub use syncra_protocol::world_state::{
    CHECKED_HEADER, RECORD, STATE_FORMAT, STATE_HEADER, StateError, StateInfo, inspect, state_size,
};
use syncra_protocol::world_state::{
    MAGIC, check_config, checksum, f32_at, has_player, u32_at, u64_at,
};

// The columns' layout assumes these sizes, and the bytes little-endian.
const _: () = assert!(
    8 + std::mem::size_of::<Transform>()
        + std::mem::size_of::<Velocity>()
        + std::mem::size_of::<Colour>()
        == RECORD
);
const _: () = assert!(cfg!(target_endian = "little"));

/// Where each column of `n` entities lies in a body.
fn columns(n: usize) -> [std::ops::Range<usize>; 4] {
    let t = 8 * n;
    let v = t + std::mem::size_of::<Transform>() * n;
    let c = v + std::mem::size_of::<Velocity>() * n;
    [0..t, t..v, v..c, c..c + std::mem::size_of::<Colour>() * n]
}

impl Scene {
    /// Write the whole simulation state into `out` (at least [`state_size`] of the configured
    /// entities), with `input_seq` the last input applied; returns the bytes written, or
    /// `None` if `out` is too small.
    pub fn save_into(&self, input_seq: u64, out: &mut [u8]) -> Option<usize> {
        let records = self.world.len() as usize;
        let len = STATE_HEADER + records * RECORD;
        if out.len() < len {
            return None;
        }
        let (header, rest) = out.split_at_mut(STATE_HEADER);
        let body = &mut rest[..records * RECORD];
        let [ids, ts, vs, cs] = columns(records);
        let mut at = 0;
        for arch in self.world.archetypes() {
            let (Some(t), Some(v), Some(c)) = (
                arch.get::<&Transform>(),
                arch.get::<&Velocity>(),
                arch.get::<&Colour>(),
            ) else {
                continue;
            };
            let k = t.len();
            if at + k > records {
                return None;
            }
            for (range, column) in [
                (&ts, bytemuck::cast_slice::<_, u8>(&t)),
                (&vs, bytemuck::cast_slice(&v)),
                (&cs, bytemuck::cast_slice(&c)),
            ] {
                let size = column.len() / k.max(1);
                body[range.start + at * size..range.start + (at + k) * size]
                    .copy_from_slice(column);
            }
            at += k;
        }
        if at != records {
            return None;
        }
        // The handles, in the same order (a query walks the archetypes as above; every entity
        // of a scene has the three components).
        if self.handles.len() != records {
            return None;
        }
        body[ids].copy_from_slice(bytemuck::cast_slice(&self.handles));
        header.fill(0);
        header[..8].copy_from_slice(&MAGIC);
        header[8..12].copy_from_slice(&STATE_FORMAT.to_le_bytes());
        let player = self
            .player
            .and_then(|p| Some((p, *self.world.get::<&Player>(p).ok()?)));
        header[12..16].copy_from_slice(&u32::from(player.is_some()).to_le_bytes());
        header[16..24].copy_from_slice(&self.tick.to_le_bytes());
        header[24..32].copy_from_slice(&input_seq.to_le_bytes());
        header[32..40].copy_from_slice(&self.seed.to_le_bytes());
        header[40..44].copy_from_slice(&self.configured.to_le_bytes());
        header[44..48].copy_from_slice(&(records as u32).to_le_bytes());
        header[48..56].copy_from_slice(&self.tick_hz.to_bits().to_le_bytes());
        header[56..72].copy_from_slice(&self.rng.get_word_pos().to_le_bytes());
        header[72..80].copy_from_slice(&((records * RECORD) as u64).to_le_bytes());
        if let Some((p, player)) = player {
            header[88..96].copy_from_slice(&p.to_bits().get().to_le_bytes());
            header[96..100].copy_from_slice(&player.wish[0].to_le_bytes());
            header[100..104].copy_from_slice(&player.wish[1].to_le_bytes());
            header[104..108].copy_from_slice(&player.bump_cooldown.to_le_bytes());
        }
        let sum = checksum(header, body);
        header[80..88].copy_from_slice(&sum.to_le_bytes());
        Some(len)
    }

    /// The whole state, in a new buffer.
    pub fn save(&self, input_seq: u64) -> Vec<u8> {
        let mut out = vec![0u8; STATE_HEADER + self.world.len() as usize * RECORD];
        let len = self.save_into(input_seq, &mut out).unwrap_or(0);
        out.truncate(len);
        out
    }

    /// Rebuild the scene a state holds, for a world of `settings`: checked whole first (its
    /// format, length and checksum, and that it was written by a world of this config).
    /// Returns the scene and what the state said.
    pub fn restore(
        settings: &WorldSettings,
        bytes: &[u8],
    ) -> Result<(Scene, StateInfo), StateError> {
        let info = inspect(bytes)?;
        let has_player = has_player(bytes);
        check_config(&info, has_player, settings)?;
        let player_bits = u64_at(bytes, 88);
        let player_state = Player {
            wish: [f32_at(bytes, 96), f32_at(bytes, 100)],
            bump_cooldown: u32_at(bytes, 104),
        };
        let mut world = hecs::World::new();
        let mut player = None;
        let body = &bytes[STATE_HEADER..info.bytes];
        let n = body.len() / RECORD;
        let [ids, ts, vs, cs] = columns(n);
        let rows = body[ids]
            .chunks_exact(8)
            .zip(body[ts].chunks_exact(std::mem::size_of::<Transform>()))
            .zip(body[vs].chunks_exact(std::mem::size_of::<Velocity>()))
            .zip(body[cs].chunks_exact(std::mem::size_of::<Colour>()));
        for (((id, t), v), c) in rows {
            let id = u64::from_le_bytes(id.try_into().unwrap_or_default());
            let entity = hecs::Entity::from_bits(id)
                .ok_or_else(|| StateError::Entities(format!("id {id:#x}")))?;
            if world.contains(entity) {
                return Err(StateError::Entities(format!("id {id:#x} twice")));
            }
            let components = (
                bytemuck::pod_read_unaligned::<Transform>(t),
                bytemuck::pod_read_unaligned::<Velocity>(v),
                bytemuck::pod_read_unaligned::<Colour>(c),
            );
            if has_player && id == player_bits {
                world.spawn_at(
                    entity,
                    (components.0, components.1, components.2, player_state),
                );
                player = Some(entity);
            } else {
                world.spawn_at(entity, components);
            }
        }
        if has_player && player.is_none() {
            return Err(StateError::Entities(
                "the player is not among the entities".into(),
            ));
        }
        let mut rng = <ChaCha8Rng as rand_core::SeedableRng>::seed_from_u64(settings.seed);
        rng.set_word_pos(u128::from_le_bytes(
            bytes[56..72].try_into().unwrap_or_default(),
        ));
        Ok((
            Scene::from_parts(world, info.tick, player, rng, settings),
            info,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use syncra_protocol::world::WorldGame;

    fn settings(player: bool) -> WorldSettings {
        WorldSettings {
            game: WorldGame {
                player,
                ..Default::default()
            },
            entities: 300,
            seed: 11,
            ..WorldSettings::new("t")
        }
    }

    #[test]
    fn a_restored_scene_runs_on_exactly_as_one_that_never_stopped() {
        for player in [false, true] {
            let s = settings(player);
            let mut original = Scene::new(&s);
            original.set_move(0.5, -1.0);
            for _ in 0..437 {
                original.step();
            }
            let bytes = original.save(99);
            assert_eq!(bytes.len(), state_size(300) - usize::from(!player) * RECORD);
            let (mut resumed, info) = Scene::restore(&s, &bytes).unwrap();
            assert_eq!((info.tick, info.input_seq), (437, 99));
            assert_eq!(resumed.tick(), 437);
            assert_eq!(resumed.state_hash(), original.state_hash());
            assert_eq!(resumed.player_position(), original.player_position());
            for _ in 0..1000 {
                assert_eq!(resumed.step(), original.step());
            }
            assert_eq!(resumed.state_hash(), original.state_hash());
            assert_eq!(resumed.rng.get_word_pos(), original.rng.get_word_pos());
            // Same entity ids: what the scene stream publishes is the same.
            let (mut a, mut b) = (empty_snapshot(), empty_snapshot());
            original.snapshot_into("t", &mut a);
            resumed.snapshot_into("t", &mut b);
            assert_eq!(a, b);
        }
    }

    fn empty_snapshot() -> syncra_protocol::world::SceneSnapshot {
        syncra_protocol::world::SceneSnapshot {
            world: String::new(),
            tick: 0,
            entities: Vec::new(),
            player: None,
        }
    }

    #[test]
    fn a_damaged_foreign_or_cut_state_is_refused_with_what_is_wrong() {
        let s = settings(false);
        let mut scene = Scene::new(&s);
        scene.step();
        let good = scene.save(0);
        let refuse = |bytes: &[u8], st: &WorldSettings| Scene::restore(st, bytes).unwrap_err();

        let mut flipped = good.clone();
        flipped[STATE_HEADER + 5 * RECORD + 9] ^= 0x40;
        assert_eq!(refuse(&flipped, &s), StateError::Checksum);
        let mut tick = good.clone();
        tick[16] ^= 1;
        assert_eq!(
            refuse(&tick, &s),
            StateError::Checksum,
            "the header is covered too"
        );

        let mut future = good.clone();
        future[8..12].copy_from_slice(&2u32.to_le_bytes());
        let e = refuse(&future, &s);
        assert_eq!(e, StateError::Format { found: 2 });
        assert_eq!(e.to_string(), "state from format 2, this build reads 1");

        assert!(matches!(
            refuse(&good[..good.len() - 1], &s),
            StateError::Truncated { .. }
        ));
        assert_eq!(refuse(b"hello", &s), StateError::NotAState);
        assert_eq!(refuse(&vec![0; 4096], &s), StateError::NotAState);

        let other = WorldSettings {
            seed: 12,
            ..s.clone()
        };
        let e = refuse(&good, &other);
        assert_eq!(
            e.to_string(),
            "state from another config (seed 11, 300 entities, 60 Hz), this world runs seed 12, 300 entities, 60 Hz"
        );
        assert!(matches!(
            refuse(&good, &settings(true)),
            StateError::Config { .. }
        ));
    }

    #[test]
    fn a_state_with_a_duplicate_or_invalid_entity_is_refused() {
        let s = settings(false);
        let mut bytes = Scene::new(&s).save(0);
        // Entity 1 gets entity 0's id; re-seal the checksum as a hostile writer would.
        let first: [u8; 8] = bytes[STATE_HEADER..STATE_HEADER + 8].try_into().unwrap();
        bytes[STATE_HEADER + 8..STATE_HEADER + 16].copy_from_slice(&first);
        let sum = checksum(&bytes, &bytes[STATE_HEADER..]);
        bytes[80..88].copy_from_slice(&sum.to_le_bytes());
        assert!(matches!(
            Scene::restore(&s, &bytes),
            Err(StateError::Entities(m)) if m.contains("twice")
        ));
        bytes[STATE_HEADER..STATE_HEADER + 8].copy_from_slice(&0u64.to_le_bytes());
        let sum = checksum(&bytes, &bytes[STATE_HEADER..]);
        bytes[80..88].copy_from_slice(&sum.to_le_bytes());
        assert!(matches!(
            Scene::restore(&s, &bytes),
            Err(StateError::Entities(_))
        ));
    }
}
