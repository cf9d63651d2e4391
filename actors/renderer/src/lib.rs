//! `syncra-renderer`'s drawing, without the driver: a GPU ([`gpu::Gpu`]: instance, adapter,
//! device, with the backend chosen by config), the worlds drawn as lit, instanced cubes
//! ([`draw::SceneDraw`]), and offscreen frames read back row by row ([`offscreen::Offscreen`]).
//! The driver (`src/main.rs`) and the bare benchmark loop (`src/bin/bare.rs`) both use it, so
//! the benchmark's baseline draws exactly what the driver draws.
//!
//! The look is defined in `syncra_node::render` (camera, cube size, light): whoever wants to
//! know where an entity lands on a frame computes it from there.

pub mod draw;
pub mod gpu;
pub mod offscreen;
pub mod window;

/// The frame's background, linear RGB.
pub const CLEAR: [f64; 3] = [0.02, 0.025, 0.035];
