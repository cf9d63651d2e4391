//! `syncra-renderer`: the renderer driver. It reads the worlds' scene streams and draws them
//! with wgpu — lit, instanced cubes with a depth buffer, one viewport per world — at a fixed
//! rate, and publishes every frame on `renderer/frame` (RGBA8 behind a `FrameHeader`: size,
//! sequence, and the tick of each world shown). Only this process touches the GPU.
//!
//! `syncra call renderer syncra.renderer.get-info/1` says which adapter, backend and target it
//! draws with, and how fast.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use syncra_node::driver::{self, Context, Driver};
use syncra_node::events::{NodeEvent, StreamKey};
use syncra_node::render::{Camera, FRAME_STREAM, FrameHeader};
use syncra_node::streams::{BulkProducer, Consumer, StreamOptions, Subscription};
use syncra_node::world::{ALL_SCENES, SceneSnapshot, scene_stream};
use syncra_node::{Figure, FigureKind};
use syncra_renderer::draw::SceneDraw;
use syncra_renderer::gpu::{Backend, Gpu};
use syncra_renderer::offscreen::{self, Offscreen};

/// Ask the renderer what it draws with.
#[derive(Debug, Serialize, Deserialize)]
pub struct GetInfo;

/// What it answers.
#[derive(Debug, Serialize, Deserialize)]
pub struct RendererInfo {
    /// The adapter, e.g. "llvmpipe (LLVM 15.0.6, 256 bits)".
    pub adapter: String,
    /// "Cpu", "DiscreteGpu", …
    pub device_type: String,
    /// "vulkan" or "gl".
    pub backend: String,
    /// Where frames go: "offscreen".
    pub target: String,
    /// Frame size.
    pub width: u32,
    /// Frame size.
    pub height: u32,
    /// Frames this incarnation drew.
    pub frames: u64,
    /// Frames per second over the last second.
    pub fps: f64,
    /// Draw + readback + publish of the last frame, milliseconds.
    pub frame_ms: f64,
}
syncra_node::message!(RendererInfo = "syncra.renderer.info/1");
syncra_node::message!(GetInfo = "syncra.renderer.get-info/1" => RendererInfo, cli);

/// Where frames go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Target {
    /// Drawn offscreen and published on `renderer/frame` (headless servers, thumbnails,
    /// tests, and a window driver in `frames` mode).
    Offscreen,
}

/// `[drivers.renderer] settings = { .. }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Settings {
    /// The worlds to draw, side by side, in this order; empty: every world, by name.
    worlds: Vec<String>,
    /// Where frames go.
    target: Target,
    /// Frame size, pixels.
    width: u32,
    /// Frame size, pixels.
    height: u32,
    /// Frames per second.
    rate_hz: f64,
    /// The graphics API.
    backend: Backend,
    /// Tried when `backend` has no adapter or device; `"none"`: fail with the reason.
    fallback: Fallback,
    /// The camera.
    camera: Camera,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            worlds: Vec::new(),
            target: Target::Offscreen,
            width: 1280,
            height: 720,
            rate_hz: 60.0,
            backend: Backend::Vulkan,
            fallback: Fallback::Gl,
            camera: Camera::default(),
        }
    }
}

/// The backend to try when the configured one cannot be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Fallback {
    /// None: the renderer fails, with the reason in status.
    None,
    /// Vulkan.
    Vulkan,
    /// GL.
    Gl,
}

impl Fallback {
    fn backend(self) -> Option<Backend> {
        match self {
            Fallback::None => None,
            Fallback::Vulkan => Some(Backend::Vulkan),
            Fallback::Gl => Some(Backend::Gl),
        }
    }
}

/// Largest frame side accepted, pixels.
const MAX_SIDE: u32 = 8192;

enum Scenes {
    /// The configured worlds, in order.
    Named(Vec<Consumer<SceneSnapshot>>),
    /// Every world: the subscription and the consumers it gave.
    All(
        Subscription<SceneSnapshot>,
        StreamKey,
        Vec<Consumer<SceneSnapshot>>,
    ),
}

struct Renderer {
    s: Settings,
    gpu: Gpu,
    draw: SceneDraw,
    target: Offscreen,
    scenes: Scenes,
    latest: BTreeMap<String, SceneSnapshot>,
    out: BulkProducer<FrameHeader>,
    frames: u64,
    fps: f64,
    frame_ms: f64,
    second: (Instant, u64),
    fig_fps: Figure,
    fig_frame_ms: Figure,
    fig_frames: Figure,
}

fn open_gpu(s: &Settings) -> Result<Gpu, String> {
    match Gpu::open(s.backend, None, None) {
        Ok(gpu) => Ok(gpu),
        Err(first) => match s.fallback.backend() {
            Some(fallback) if fallback != s.backend => {
                tracing::warn!(error = %first, %fallback, "falling back");
                Gpu::open(fallback, None, None)
                    .map_err(|second| format!("{first}; the fallback failed too: {second}"))
            }
            None => Err(format!(
                "{first} (no fallback: settings.fallback = \"none\")"
            )),
            Some(_) => Err(first.to_string()),
        },
    }
}

impl Driver for Renderer {
    type Settings = Settings;

    fn start(ctx: &mut Context<'_>, s: Settings) -> Result<Self, String> {
        for (key, v) in [("width", s.width), ("height", s.height)] {
            if v == 0 || v > MAX_SIDE {
                return Err(format!(
                    "settings.{key} = {v}: must be 1 ..= {MAX_SIDE} pixels"
                ));
            }
        }
        if !(s.rate_hz > 0.0 && s.rate_hz <= 1000.0) {
            return Err(format!(
                "settings.rate_hz = {}: must be in (0, 1000]",
                s.rate_hz
            ));
        }
        // No adapter is a fact of this machine: say so and do not be restarted into it.
        let gpu = open_gpu(&s).unwrap_or_else(|why| {
            ctx.node().exit_with(
                syncra_node::exit_code::NO_DEVICE,
                &format!("could not start: {why}"),
            )
        });
        tracing::info!(adapter = %gpu.adapter_name(), backend = %gpu.backend, "GPU open");
        let draw = SceneDraw::new(&gpu.device, offscreen::FORMAT, s.camera);
        let target = Offscreen::new(&gpu.device, s.width, s.height);
        let node = ctx.node();
        let scenes = if s.worlds.is_empty() {
            let sub = node
                .subscribe_pattern(ALL_SCENES)
                .map_err(|e| e.to_string())?;
            let key = ctx.watch(&sub);
            Scenes::All(sub, key, Vec::new())
        } else {
            let mut named = Vec::new();
            for w in &s.worlds {
                let c = node
                    .subscribe(&scene_stream(w))
                    .map_err(|e| e.to_string())?;
                ctx.watch(&c);
                named.push(c);
            }
            Scenes::Named(named)
        };
        let out = node
            .declare_bulk(
                FRAME_STREAM,
                StreamOptions::latest_only(target.frame_len() as u32),
            )
            .map_err(|e| e.to_string())?;
        Ok(Renderer {
            fig_fps: node.figure("fps", FigureKind::Gauge),
            fig_frame_ms: node.figure("frame_ms", FigureKind::Gauge),
            fig_frames: node.figure("frames", FigureKind::Counter),
            s,
            gpu,
            draw,
            target,
            scenes,
            latest: BTreeMap::new(),
            out,
            frames: 0,
            fps: 0.0,
            frame_ms: 0.0,
            second: (Instant::now(), 0),
        })
    }

    fn rate(&self) -> Option<f64> {
        Some(self.s.rate_hz)
    }

    fn event(&mut self, ctx: &mut Context<'_>, event: NodeEvent) -> Result<(), String> {
        match event {
            NodeEvent::Stream(key) if matches!(&self.scenes, Scenes::All(_, k, _) if *k == key) => {
                let Scenes::All(sub, _, consumers) = &mut self.scenes else {
                    unreachable!("matched above")
                };
                while let Some(c) = sub.next_stream(Duration::ZERO).map_err(|e| e.to_string())? {
                    ctx.watch(&c);
                    consumers.push(c);
                }
            }
            NodeEvent::Stream(_) => self.read_scenes()?,
            NodeEvent::Message(incoming) => {
                let info = RendererInfo {
                    adapter: self.gpu.adapter_name(),
                    device_type: self.gpu.device_type(),
                    backend: self.gpu.backend.to_string(),
                    target: "offscreen".into(),
                    width: self.s.width,
                    height: self.s.height,
                    frames: self.frames,
                    fps: self.fps,
                    frame_ms: self.frame_ms,
                };
                let _ = incoming.answer_with(|GetInfo| Ok(info));
            }
            _ => {}
        }
        Ok(())
    }

    fn tick(&mut self, _: &mut Context<'_>) -> Result<(), String> {
        let t = Instant::now();
        self.read_scenes()?;
        let scenes: Vec<&SceneSnapshot> = match &self.scenes {
            Scenes::Named(_) => self
                .s
                .worlds
                .iter()
                .filter_map(|w| self.latest.get(w))
                .collect(),
            Scenes::All(..) => self.latest.values().collect(),
        };
        let mut encoder = self.gpu.device.create_command_encoder(&Default::default());
        let views = self.draw.draw(
            &self.gpu.device,
            &self.gpu.queue,
            &mut encoder,
            self.target.view(),
            self.target.size(),
            &scenes,
        );
        self.target.copy(&mut encoder);
        self.gpu.queue.submit([encoder.finish()]);
        let (width, height) = self.target.size();
        let header = FrameHeader {
            width,
            height,
            sequence: self.out.next_seq(),
            worlds: views,
        };
        let (target, device) = (&self.target, &self.gpu.device);
        let mut failed = None;
        self.out
            .publish_with(&header, |slot| match target.read_into(device, slot) {
                Ok(n) => n,
                Err(e) => {
                    failed = Some(e);
                    0
                }
            })
            .map_err(|e| e.to_string())?;
        if let Some(e) = failed {
            return Err(e);
        }
        self.frames += 1;
        self.frame_ms = t.elapsed().as_secs_f64() * 1e3;
        self.fig_frame_ms.set(self.frame_ms);
        self.fig_frames.add(1.0);
        let (since, at) = self.second;
        let elapsed = since.elapsed();
        if elapsed >= Duration::from_secs(1) {
            self.fps = (self.frames - at) as f64 / elapsed.as_secs_f64();
            self.fig_fps.set(self.fps);
            self.second = (Instant::now(), self.frames);
        }
        Ok(())
    }
}

impl Renderer {
    /// Keep the newest scene of every world.
    fn read_scenes(&mut self) -> Result<(), String> {
        let consumers = match &mut self.scenes {
            Scenes::Named(c) => c,
            Scenes::All(_, _, c) => c,
        };
        for c in consumers {
            while let Some(scene) = c.try_recv().map_err(|e| e.to_string())? {
                self.latest.insert(scene.value.world.clone(), scene.value);
            }
        }
        Ok(())
    }
}

fn main() {
    driver::run::<Renderer>()
}
