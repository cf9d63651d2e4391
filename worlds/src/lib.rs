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

/// Where an entity is, how large and how it is turned. Plain bytes (no padding): a durable
/// state copies the ECS column of them whole.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Transform {
    /// Position, metres.
    pub position: Vec3,
    /// Uniform scale (1: as modelled).
    pub scale: f32,
    /// Orientation.
    pub rotation: Quat,
}

impl Transform {
    /// At `position`, turned by `rotation`, at scale 1.
    pub fn new(position: Vec3, rotation: Quat) -> Transform {
        Transform {
            position,
            scale: 1.0,
            rotation,
        }
    }
}

/// How an entity moves (plain bytes, like [`Transform`]).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Velocity {
    /// Metres per second.
    pub linear: Vec3,
    /// Radians per second about the Y axis.
    pub spin: f32,
}

/// An entity's colour, linear RGBA.
#[repr(transparent)]
#[derive(Debug, Clone, Copy, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Colour(pub [f32; 4]);

/// The player's entity: moved by input rather than by the seed.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Player {
    /// The `move` action: x right, y forward (away from the camera, -Z), length ≤ 1.
    pub wish: [f32; 2],
    /// Ticks until another bump may sound.
    pub bump_cooldown: u32,
}

/// The player's colour: white, to stand out among the seeded entities.
pub const PLAYER_COLOUR: [f32; 4] = [1.0, 1.0, 1.0, 1.0];
/// The player's running speed, metres per second.
pub const PLAYER_SPEED: f32 = 15.0;
/// The player's take-off speed, metres per second.
pub const JUMP_SPEED: f32 = 25.0;
/// Gravity on the player, metres per second².
pub const GRAVITY: f32 = 40.0;

/// What the player did in a tick, for sounds and haptics.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PlayerEvents {
    /// It ran into a wall, there.
    pub bumped: Option<Vec3>,
}

pub mod state;

/// One world's simulation state.
pub struct Scene {
    world: hecs::World,
    tick: u64,
    dt: f32,
    player: Option<hecs::Entity>,
    /// The scene's random generator, where building it left it (kept in its durable state).
    rng: ChaCha8Rng,
    /// Every entity's handle bits, in the order a query walks them: a scene's entities are
    /// fixed once it is built (`step` neither spawns nor despawns), so its durable state
    /// copies this column instead of asking the ECS for each handle.
    handles: Vec<u64>,
    /// What it was built from: a durable state records them, and is resumed only by a world
    /// of the same.
    seed: u64,
    configured: u32,
    tick_hz: f64,
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
                Transform::new(position, Quat::IDENTITY),
                Velocity { linear, spin },
                colour,
            )
        }));
        let player = settings.game.player.then(|| {
            world.spawn((
                Transform::new(Vec3::new(0.0, -ARENA_HALF_EXTENT, 0.0), Quat::IDENTITY),
                Velocity {
                    linear: Vec3::ZERO,
                    spin: 0.0,
                },
                Colour(PLAYER_COLOUR),
                Player::default(),
            ))
        });
        Scene::from_parts(world, 0, player, rng, settings)
    }

    /// A scene of `world` at `tick`, for a world of `settings`.
    fn from_parts(
        world: hecs::World,
        tick: u64,
        player: Option<hecs::Entity>,
        rng: ChaCha8Rng,
        settings: &WorldSettings,
    ) -> Scene {
        let handles = world
            .query::<hecs::Entity>()
            .iter()
            .map(|e| e.to_bits().get())
            .collect();
        Scene {
            world,
            tick,
            dt: (1.0 / settings.tick_hz) as f32,
            player,
            handles,
            rng,
            seed: settings.seed,
            configured: settings.entities,
            tick_hz: settings.tick_hz,
        }
    }

    /// The player's `move` action from now on (x right, y forward; clamped to length 1).
    pub fn set_move(&mut self, x: f32, y: f32) {
        let v = glam::Vec2::new(x, y);
        let v = if v.is_finite() {
            v.clamp_length_max(1.0)
        } else {
            glam::Vec2::ZERO
        };
        if let Some(p) = self.player
            && let Ok(mut player) = self.world.get::<&mut Player>(p)
        {
            player.wish = v.to_array();
        }
    }

    /// The player jumps, if it stands on the floor: where it took off from.
    pub fn jump(&mut self) -> Option<Vec3> {
        let p = self.player?;
        let (t, v) = self
            .world
            .query_one_mut::<(&Transform, &mut Velocity)>(p)
            .ok()?;
        (t.position.y <= -ARENA_HALF_EXTENT + 1e-3 && v.linear.y <= 0.0).then(|| {
            v.linear.y = JUMP_SPEED;
            t.position
        })
    }

    /// Where the player is.
    pub fn player_position(&self) -> Option<Vec3> {
        let p = self.player?;
        self.world.get::<&Transform>(p).ok().map(|t| t.position)
    }

    /// Advance the simulation by one fixed tick: move, spin, bounce off the arena's walls;
    /// the player runs where its `move` points, falls, and stops at the walls.
    pub fn step(&mut self) -> PlayerEvents {
        let dt = self.dt;
        let mut events = PlayerEvents::default();
        for (transform, velocity, player) in self
            .world
            .query_mut::<(&mut Transform, &mut Velocity, &mut Player)>()
        {
            velocity.linear.x = player.wish[0] * PLAYER_SPEED;
            velocity.linear.z = -player.wish[1] * PLAYER_SPEED;
            velocity.linear.y -= GRAVITY * dt;
            transform.position += velocity.linear * dt;
            if transform.position.y < -ARENA_HALF_EXTENT {
                transform.position.y = -ARENA_HALF_EXTENT;
                velocity.linear.y = 0.0;
            }
            player.bump_cooldown = player.bump_cooldown.saturating_sub(1);
            for axis in [0, 2] {
                let p = transform.position[axis];
                if p.abs() > ARENA_HALF_EXTENT {
                    transform.position[axis] = p.signum() * ARENA_HALF_EXTENT;
                    if player.bump_cooldown == 0 {
                        events.bumped = Some(transform.position);
                        player.bump_cooldown = 15;
                    }
                }
            }
        }
        for (transform, velocity) in self
            .world
            .query_mut::<hecs::Without<(&mut Transform, &mut Velocity), &Player>>()
        {
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
        events
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
        out.player = self.player.map(|p| p.to_bits().get());
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
            game: Default::default(),
            state: Default::default(),
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
    fn the_player_runs_where_move_points_jumps_from_the_floor_and_stops_at_walls() {
        let mut s = Scene::new(&WorldSettings {
            game: syncra_protocol::world::WorldGame {
                player: true,
                ..Default::default()
            },
            ..settings(4)
        });
        assert_eq!(s.entities(), 501);
        let start = s.player_position().unwrap();
        s.set_move(1.0, 0.0);
        for _ in 0..60 {
            assert_eq!(s.step().bumped, None);
        }
        let moved = s.player_position().unwrap();
        assert!((moved.x - start.x - PLAYER_SPEED).abs() < 0.01, "{moved:?}");
        assert!(s.jump().is_some());
        assert!(s.jump().is_none(), "not in the air");
        s.step();
        assert!(s.player_position().unwrap().y > start.y);
        let mut bumped = None;
        for _ in 0..600 {
            bumped = bumped.or(s.step().bumped);
        }
        let p = s.player_position().unwrap();
        assert_eq!(p.x, ARENA_HALF_EXTENT);
        assert_eq!(p.y, -ARENA_HALF_EXTENT, "landed");
        assert_eq!(bumped.map(|b| b.x), Some(ARENA_HALF_EXTENT));
        let mut snap = SceneSnapshot {
            world: String::new(),
            tick: 0,
            entities: Vec::new(),
            player: None,
        };
        s.snapshot_into("t", &mut snap);
        let id = snap.player.unwrap();
        let e = snap.entities.iter().find(|e| e.id == id).unwrap();
        assert_eq!(e.colour, PLAYER_COLOUR);
        // Without a player, nothing moves by input.
        let mut plain = Scene::new(&settings(4));
        plain.set_move(1.0, 1.0);
        assert!(plain.jump().is_none() && plain.player_position().is_none());
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
