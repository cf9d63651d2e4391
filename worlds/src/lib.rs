//! `syncra-world`: the engine process that simulates one world.
//!
//! A world is an ECS ([`hecs`]) scene of entities with a [`Transform`], a [`Velocity`] and a
//! [`Colour`], built deterministically from a seed and advanced at a fixed tick rate. The
//! same seed and the same number of ticks give the same scene, bit for bit
//! ([`Scene::state_hash`]). The binary (`src/main.rs`) runs a [`Scene`] under a runtime as a
//! node; this library holds the simulation so it can be tested without processes.

#![warn(missing_docs)]

use glam::{Quat, Vec3};
use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};
use syncra_protocol::world::{EntitySnapshot, SceneSnapshot, WorldSettings};

/// Half the side of the cube entities move in, metres.
pub const ARENA_HALF_EXTENT: f32 = 50.0;
/// Fastest initial speed of an entity, metres per second.
pub const MAX_SPEED: f32 = 8.0;

/// Where an entity is and how it is turned.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Transform {
    /// Position, metres.
    pub position: Vec3,
    /// Orientation.
    pub rotation: Quat,
}

/// How an entity moves.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Velocity {
    /// Metres per second.
    pub linear: Vec3,
    /// Radians per second about the Y axis.
    pub spin: f32,
}

/// An entity's colour, linear RGBA.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Colour(pub [f32; 4]);

/// One world's simulation state.
pub struct Scene {
    world: hecs::World,
    tick: u64,
    dt: f32,
}

impl std::fmt::Debug for Scene {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scene")
            .field("entities", &self.world.len())
            .field("tick", &self.tick)
            .finish()
    }
}

fn unit(rng: &mut ChaCha8Rng) -> f32 {
    // 24 random bits → [0, 1), exactly representable, the same on every platform.
    (rng.next_u32() >> 8) as f32 / (1u32 << 24) as f32
}

fn signed(rng: &mut ChaCha8Rng) -> f32 {
    unit(rng) * 2.0 - 1.0
}

impl Scene {
    /// Build the seeded scene `settings` describe.
    pub fn new(settings: &WorldSettings) -> Scene {
        let mut rng = ChaCha8Rng::seed_from_u64(settings.seed);
        let mut world = hecs::World::new();
        world.spawn_batch((0..settings.entities).map(|_| {
            let position =
                Vec3::new(signed(&mut rng), signed(&mut rng), signed(&mut rng)) * ARENA_HALF_EXTENT;
            let direction = Vec3::new(signed(&mut rng), signed(&mut rng), signed(&mut rng))
                .normalize_or(Vec3::X);
            let linear = direction * unit(&mut rng) * MAX_SPEED;
            let spin = signed(&mut rng) * std::f32::consts::PI;
            let colour = Colour([unit(&mut rng), unit(&mut rng), unit(&mut rng), 1.0]);
            (
                Transform {
                    position,
                    rotation: Quat::IDENTITY,
                },
                Velocity { linear, spin },
                colour,
            )
        }));
        Scene {
            world,
            tick: 0,
            dt: (1.0 / settings.tick_hz) as f32,
        }
    }

    /// Advance the simulation by one fixed tick: move, spin, bounce off the arena's walls.
    pub fn step(&mut self) {
        let dt = self.dt;
        for (transform, velocity) in self.world.query_mut::<(&mut Transform, &mut Velocity)>() {
            transform.position += velocity.linear * dt;
            for axis in 0..3 {
                let p = transform.position[axis];
                if p.abs() > ARENA_HALF_EXTENT {
                    transform.position[axis] = p.signum() * (2.0 * ARENA_HALF_EXTENT - p.abs());
                    velocity.linear[axis] = -velocity.linear[axis];
                }
            }
            transform.rotation =
                (Quat::from_rotation_y(velocity.spin * dt) * transform.rotation).normalize();
        }
        self.tick += 1;
    }

    /// Ticks simulated so far.
    pub fn tick(&self) -> u64 {
        self.tick
    }

    /// Entities in the scene.
    pub fn entities(&self) -> u64 {
        self.world.len() as u64
    }

    /// The scene as published on the world's scene stream: every entity's id, transform and
    /// colour, into `out` (reused between ticks).
    pub fn snapshot_into(&self, name: &str, out: &mut SceneSnapshot) {
        out.world.clear();
        out.world.push_str(name);
        out.tick = self.tick;
        out.entities.clear();
        let mut query = self.world.query::<(hecs::Entity, &Transform, &Colour)>();
        out.entities
            .extend(query.iter().map(|(e, t, c)| EntitySnapshot {
                id: e.to_bits().get(),
                position: t.position.to_array(),
                rotation: t.rotation.to_array(),
                colour: c.0,
            }));
    }

    /// A hash of every entity's transform, colour and velocity (FNV-1a over their bits, in
    /// entity order): equal for equal states.
    pub fn state_hash(&self) -> u64 {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        let mut feed = |x: f32| {
            for b in x.to_bits().to_le_bytes() {
                hash ^= b as u64;
                hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
            }
        };
        let mut query = self.world.query::<(&Transform, &Velocity, &Colour)>();
        for (t, v, c) in query.iter() {
            t.position.to_array().into_iter().for_each(&mut feed);
            t.rotation.to_array().into_iter().for_each(&mut feed);
            v.linear.to_array().into_iter().for_each(&mut feed);
            c.0.into_iter().for_each(&mut feed);
        }
        hash
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(seed: u64) -> WorldSettings {
        WorldSettings {
            name: "t".into(),
            tick_hz: 60.0,
            entities: 500,
            seed,
        }
    }

    #[test]
    fn same_seed_same_simulation() {
        let mut a = Scene::new(&settings(7));
        let mut b = Scene::new(&settings(7));
        for _ in 0..600 {
            a.step();
            b.step();
        }
        assert_eq!(a.state_hash(), b.state_hash());
        assert_eq!(a.tick(), 600);
    }

    #[test]
    fn different_seeds_different_scenes() {
        assert_ne!(
            Scene::new(&settings(1)).state_hash(),
            Scene::new(&settings(2)).state_hash()
        );
    }

    #[test]
    fn the_scene_moves_and_stays_in_the_arena() {
        let mut s = Scene::new(&settings(3));
        let before = s.state_hash();
        for _ in 0..10_000 {
            s.step();
        }
        assert_ne!(s.state_hash(), before);
        assert_eq!(s.entities(), 500);
        let mut q = s.world.query::<&Transform>();
        for t in q.iter() {
            assert!(
                t.position.abs().max_element() <= ARENA_HALF_EXTENT + 1e-3,
                "{:?}",
                t.position
            );
        }
    }
}
