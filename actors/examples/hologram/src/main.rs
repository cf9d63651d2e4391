//! `syncra-hologram`: the seed's example of a driver anyone can write ("Creating a New
//! Driver", `seeds/drivers.rst`): a holographic display. It reads every world's scene, draws
//! where the entities are as a height map seen from above, publishes it on `hologram/frame`
//! at a fixed rate, and answers a stats request. All of it on the driver skeleton
//! ([`syncra_node::driver`]); the message types below are its own, known to others by their
//! tags.

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use syncra_node::driver::{self, Context, Driver};
use syncra_node::events::{NodeEvent, StreamKey};
use syncra_node::streams::{Consumer, Producer, StreamOptions, Subscription};
use syncra_node::world::{ALL_SCENES, SceneSnapshot};
use syncra_node::{Figure, FigureKind};

/// One hologram: for each cell of a `width` × `height` grid over the worlds' floor, the
/// highest entity above it (metres; 0 where there is none).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HologramFrame {
    /// Its number: the stream's sequence (it goes on across the driver's restarts).
    pub frame: u64,
    /// Grid columns.
    pub width: u32,
    /// Grid rows.
    pub height: u32,
    /// `width × height` heights, row by row.
    pub heights: Vec<f32>,
}
syncra_node::message!(HologramFrame = "syncra.hologram.frame/1");

/// Ask the hologram how it is doing.
#[derive(Debug, Serialize, Deserialize)]
pub struct GetStats;
/// What it answers.
#[derive(Debug, Serialize, Deserialize)]
pub struct Stats {
    /// Frames this incarnation published.
    pub frames: u64,
    /// Scenes read.
    pub scenes: u64,
    /// Worlds seen.
    pub worlds: usize,
}
syncra_node::message!(Stats = "syncra.hologram.stats/1");
// `cli`: `syncra call hologram syncra.hologram.get-stats/1` may ask it too.
syncra_node::message!(GetStats = "syncra.hologram.get-stats/1" => Stats, cli);

/// `[drivers.hologram] settings = { .. }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Settings {
    /// Grid size, cells.
    width: u32,
    height: u32,
    /// Half the floor's side, metres: the grid covers −extent..extent on x and z.
    extent: f32,
    /// Frames per second.
    rate_hz: f64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            width: 32,
            height: 32,
            extent: 50.0,
            rate_hz: 30.0,
        }
    }
}

struct Hologram {
    s: Settings,
    worlds: Subscription<SceneSnapshot>,
    worlds_key: StreamKey,
    scenes: Vec<Consumer<SceneSnapshot>>,
    latest: HashMap<String, SceneSnapshot>,
    out: Producer<HologramFrame>,
    frames: Figure,
    published: u64,
    scenes_read: u64,
}

impl Driver for Hologram {
    type Settings = Settings;

    fn start(ctx: &mut Context<'_>, s: Settings) -> Result<Self, String> {
        let node = ctx.node();
        let worlds = node
            .subscribe_pattern(ALL_SCENES)
            .map_err(|e| e.to_string())?;
        let worlds_key = ctx.watch(&worlds);
        let sample = HologramFrame {
            frame: 0,
            width: s.width,
            height: s.height,
            heights: vec![0.0; (s.width * s.height) as usize],
        };
        let out = node
            .declare("frame", StreamOptions::latest_only_like(&sample))
            .map_err(|e| e.to_string())?;
        let frames = node.figure("frames", FigureKind::Counter);
        Ok(Hologram {
            s,
            worlds,
            worlds_key,
            scenes: Vec::new(),
            latest: HashMap::new(),
            out,
            frames,
            published: 0,
            scenes_read: 0,
        })
    }

    fn rate(&self) -> Option<f64> {
        Some(self.s.rate_hz)
    }

    fn event(&mut self, ctx: &mut Context<'_>, event: NodeEvent) -> Result<(), String> {
        match event {
            // A world appeared: read its scenes too.
            NodeEvent::Stream(key) if key == self.worlds_key => {
                while let Some(scenes) = self
                    .worlds
                    .next_stream(Duration::ZERO)
                    .map_err(|e| e.to_string())?
                {
                    ctx.watch(&scenes);
                    self.scenes.push(scenes);
                }
            }
            NodeEvent::Stream(_) => {
                for scenes in &mut self.scenes {
                    while let Some(scene) = scenes.try_recv().map_err(|e| e.to_string())? {
                        self.scenes_read += 1;
                        self.latest.insert(scene.value.world.clone(), scene.value);
                    }
                }
            }
            NodeEvent::Message(incoming) => {
                let stats = Stats {
                    frames: self.published,
                    scenes: self.scenes_read,
                    worlds: self.latest.len(),
                };
                let _ = incoming.answer_with(|GetStats| Ok(stats));
            }
            _ => {}
        }
        Ok(())
    }

    fn tick(&mut self, _: &mut Context<'_>) -> Result<(), String> {
        let (w, h, e) = (self.s.width as usize, self.s.height as usize, self.s.extent);
        let mut heights = vec![0.0f32; w * h];
        for entity in self.latest.values().flat_map(|s| &s.entities) {
            let [x, y, z] = entity.position;
            let (u, v) = ((x + e) / (2.0 * e), (z + e) / (2.0 * e));
            if (0.0..1.0).contains(&u) && (0.0..1.0).contains(&v) {
                let cell = (v * h as f32) as usize * w + (u * w as f32) as usize;
                heights[cell] = heights[cell].max(y);
            }
        }
        let frame = HologramFrame {
            frame: self.out.next_seq() - 1,
            width: w as u32,
            height: h as u32,
            heights,
        };
        self.out.publish(&frame).map_err(|e| e.to_string())?;
        self.published += 1;
        self.frames.add(1.0);
        Ok(())
    }
}

fn main() {
    driver::run::<Hologram>()
}
