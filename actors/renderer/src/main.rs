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
use syncra_node::streams::{BulkProducer, Consumer, Producer, StreamOptions, Subscription};
use syncra_node::window::{IDENTITY_STREAM, Present, WindowIdentity};
use syncra_node::world::{ALL_SCENES, SceneSnapshot, scene_stream};
use syncra_node::{Figure, FigureKind};
use syncra_renderer::draw::SceneDraw;
use syncra_renderer::gpu::{Backend, Gpu};
use syncra_renderer::offscreen::{self, Offscreen};
use syncra_renderer::window::{Attached, Next, PresentMode};

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
    /// Where frames go: "offscreen" or "window".
    pub target: String,
    /// Presenting into a window: the present mode ("Immediate", "Fifo", …); empty otherwise.
    pub present_mode: String,
    /// The X11 window presented into, once attached.
    pub window: Option<u64>,
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
    /// Presented into the window driver's window (X11, XWayland); each presented frame's
    /// header goes on `renderer/presented`.
    Window,
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
    /// With `target = "window"`: the window driver's node name.
    window: String,
    /// With `target = "window"`: how frames are queued.
    present_mode: PresentMode,
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
            window: "window".into(),
            present_mode: PresentMode::Auto,
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

/// With `target = "window"`: the header of every frame presented, `renderer/presented`.
const PRESENTED_STREAM: &str = "presented";

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

/// Where frames go, and what that needs.
enum Output {
    Offscreen {
        draw: SceneDraw,
        target: Offscreen,
        out: BulkProducer<FrameHeader>,
    },
    Window {
        identity: Consumer<WindowIdentity>,
        /// The newest identity read.
        latest: Option<WindowIdentity>,
        /// The surface on that window, and a pipeline for its format.
        attached: Option<(Attached, SceneDraw)>,
        /// A generation that could not be attached to (not tried again).
        refused: Option<u64>,
        presented: Producer<FrameHeader>,
    },
}

struct Renderer {
    s: Settings,
    gpu: Gpu,
    output: Output,
    scenes: Scenes,
    latest: BTreeMap<String, SceneSnapshot>,
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
        let node = ctx.node();
        let output = match s.target {
            Target::Offscreen => {
                let target = Offscreen::new(&gpu.device, s.width, s.height);
                let out = node
                    .declare_bulk(
                        FRAME_STREAM,
                        StreamOptions::latest_only(target.frame_len() as u32),
                    )
                    .map_err(|e| e.to_string())?;
                Output::Offscreen {
                    draw: SceneDraw::new(&gpu.device, offscreen::FORMAT, s.camera),
                    target,
                    out,
                }
            }
            Target::Window => {
                let identity = node
                    .subscribe(&format!("{}/{IDENTITY_STREAM}", s.window))
                    .map_err(|e| e.to_string())?;
                ctx.watch(&identity);
                let sample = FrameHeader {
                    width: 0,
                    height: 0,
                    sequence: 0,
                    worlds: (0..16)
                        .map(|_| syncra_node::render::WorldView {
                            world: "w".repeat(64),
                            tick: u64::MAX,
                            x: 0,
                            width: 0,
                        })
                        .collect(),
                };
                let presented = node
                    .declare(PRESENTED_STREAM, StreamOptions::latest_only_like(&sample))
                    .map_err(|e| e.to_string())?;
                Output::Window {
                    identity,
                    latest: None,
                    attached: None,
                    refused: None,
                    presented,
                }
            }
        };
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
        Ok(Renderer {
            fig_fps: node.figure("fps", FigureKind::Gauge),
            fig_frame_ms: node.figure("frame_ms", FigureKind::Gauge),
            fig_frames: node.figure("frames", FigureKind::Counter),
            s,
            gpu,
            output,
            scenes,
            latest: BTreeMap::new(),
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
            NodeEvent::Stream(_) => {
                self.read_scenes()?;
                self.read_identity()?;
            }
            NodeEvent::Message(incoming) => {
                let (target, (width, height), present_mode, window) = match &self.output {
                    Output::Offscreen { target, .. } => {
                        ("offscreen", target.size(), String::new(), None)
                    }
                    Output::Window { attached, .. } => match attached {
                        Some((a, _)) => (
                            "window",
                            a.size(),
                            format!("{:?}", a.present_mode()),
                            Some(u64::from(a.window())),
                        ),
                        None => ("window", (0, 0), String::new(), None),
                    },
                };
                let info = RendererInfo {
                    adapter: self.gpu.adapter_name(),
                    device_type: self.gpu.device_type(),
                    backend: self.gpu.backend.to_string(),
                    target: target.into(),
                    width,
                    height,
                    present_mode,
                    window,
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
        let drew = match &mut self.output {
            Output::Offscreen { .. } => self.offscreen_frame()?,
            Output::Window { .. } => self.window_frame()?,
        };
        if !drew {
            return Ok(());
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

/// The scenes to draw, in order.
fn in_order<'a>(
    scenes: &Scenes,
    s: &Settings,
    latest: &'a BTreeMap<String, SceneSnapshot>,
) -> Vec<&'a SceneSnapshot> {
    match scenes {
        Scenes::Named(_) => s.worlds.iter().filter_map(|w| latest.get(w)).collect(),
        Scenes::All(..) => latest.values().collect(),
    }
}

impl Renderer {
    /// Draw, read back and publish one offscreen frame.
    fn offscreen_frame(&mut self) -> Result<bool, String> {
        let scenes = in_order(&self.scenes, &self.s, &self.latest);
        let Output::Offscreen { draw, target, out } = &mut self.output else {
            return Ok(false);
        };
        let gpu = &self.gpu;
        let mut encoder = gpu.device.create_command_encoder(&Default::default());
        let views = draw.draw(
            &gpu.device,
            &gpu.queue,
            &mut encoder,
            target.view(),
            target.size(),
            &scenes,
        );
        target.copy(&mut encoder);
        gpu.queue.submit([encoder.finish()]);
        let (width, height) = target.size();
        let header = FrameHeader {
            width,
            height,
            sequence: out.next_seq(),
            worlds: views,
        };
        let mut failed = None;
        out.publish_with(&header, |slot| match target.read_into(&gpu.device, slot) {
            Ok(n) => n,
            Err(e) => {
                failed = Some(e);
                0
            }
        })
        .map_err(|e| e.to_string())?;
        failed.map_or(Ok(true), Err)
    }

    /// Present one frame into the window, attaching to it first if it is new.
    fn window_frame(&mut self) -> Result<bool, String> {
        let scenes = in_order(&self.scenes, &self.s, &self.latest);
        let gpu = &self.gpu;
        let camera = self.s.camera;
        let mode = self.s.present_mode;
        let Output::Window {
            identity,
            latest,
            attached,
            refused,
            presented,
        } = &mut self.output
        else {
            return Ok(false);
        };
        while let Some(id) = identity.try_recv().map_err(|e| e.to_string())? {
            *latest = Some(id.value);
        }
        let Some(id) = latest.as_ref() else {
            return Ok(false); // no window yet
        };
        if attached
            .as_ref()
            .is_some_and(|(a, _)| a.generation != id.generation)
        {
            tracing::info!(generation = id.generation, "a new window: attaching to it");
            *attached = None;
        }
        if attached.is_none() && *refused != Some(id.generation) {
            if id.present != Present::Surface {
                tracing::info!(
                    "the window shows renderer/frame itself (present = frames); nothing to present into"
                );
                *refused = Some(id.generation);
                return Ok(false);
            }
            match Attached::attach(gpu, id, mode) {
                Ok(a) => {
                    tracing::info!(window = format!("{:#x}", a.window()), size = ?a.size(), present_mode = ?a.present_mode(), "attached to the window");
                    let draw = SceneDraw::new(&gpu.device, a.format(), camera);
                    *attached = Some((a, draw));
                }
                Err(e) => {
                    tracing::warn!(error = %e, generation = id.generation, "could not attach to the window; waiting for the next one");
                    *refused = Some(id.generation);
                }
            }
        }
        let Some((a, draw)) = attached.as_mut() else {
            return Ok(false);
        };
        let frame = match a.next(&gpu.device) {
            Next::Frame(f) => f,
            Next::Skip => return Ok(false),
            Next::Gone(why) => {
                tracing::info!(reason = %why, "the window went away; waiting for the next one");
                *attached = None;
                return Ok(false);
            }
        };
        let view = frame.texture.create_view(&Default::default());
        let mut encoder = gpu.device.create_command_encoder(&Default::default());
        let size = (frame.texture.width(), frame.texture.height());
        let views = draw.draw(&gpu.device, &gpu.queue, &mut encoder, &view, size, &scenes);
        gpu.queue.submit([encoder.finish()]);
        gpu.queue.present(frame);
        let header = FrameHeader {
            width: size.0,
            height: size.1,
            sequence: presented.next_seq(),
            worlds: views,
        };
        presented.publish(&header).map_err(|e| e.to_string())?;
        Ok(true)
    }

    /// Keep the window's newest identity.
    fn read_identity(&mut self) -> Result<(), String> {
        if let Output::Window {
            identity, latest, ..
        } = &mut self.output
        {
            while let Some(id) = identity.try_recv().map_err(|e| e.to_string())? {
                *latest = Some(id.value);
            }
        }
        Ok(())
    }

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
