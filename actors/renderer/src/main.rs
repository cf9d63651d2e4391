//! `syncra-renderer`: the renderer driver. It reads the worlds' scene streams and draws them
//! with wgpu — lit, instanced cubes with a depth buffer, one viewport per world — at a fixed
//! rate, and publishes every frame on `renderer/frame` (RGBA8 behind a `FrameHeader`: size,
//! sequence, and the tick of each world shown). Only this process touches the GPU.
//!
//! `syncra call renderer syncra.renderer.get-info/1` says which adapter, backend and target it
//! draws with, and how fast.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use syncra_node::audio::{FFT_STREAM, Spectrum};
use syncra_node::driver::{self, Context, Driver};
use syncra_node::events::{NodeEvent, StreamKey};
use syncra_node::render::{
    Camera, FRAME_STREAM, FrameHeader, SPECTRUM_BANDS, SPECTRUM_LOW_HZ, spectrum_level,
};
use syncra_node::streams::{BulkProducer, Consumer, Producer, StreamOptions, Subscription};
use syncra_node::window::{IDENTITY_STREAM, Present, WindowIdentity};
use syncra_node::world::{ALL_SCENES, SceneSnapshot, scene_stream};
use syncra_node::xr::{EYES_STREAM, EyeFrame, POSE_STREAM, Placement, XrPose, eye_view_proj};
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
    /// GPU devices lost (and replaced in-process) by this incarnation.
    pub device_losses: u64,
    /// Draw + readback + publish of the last frame, milliseconds.
    pub frame_ms: f64,
}
syncra_node::message!(RendererInfo = "syncra.renderer.info/1");
syncra_node::message!(GetInfo = "syncra.renderer.get-info/1" => RendererInfo, cli);

/// Destroy the renderer's GPU device, as a driver reset or a removed GPU would: it recovers
/// in-process with a new device (`syncra call renderer syncra.renderer.lose-device/1`, for
/// testing what a device loss does; Chromium has `chrome://gpucrash` for the same).
#[derive(Debug, Serialize, Deserialize)]
pub struct LoseDevice;
/// What it answers.
#[derive(Debug, Serialize, Deserialize)]
pub struct DeviceLost {
    /// Devices lost before this one.
    pub losses_before: u64,
}
syncra_node::message!(DeviceLost = "syncra.renderer.device-lost/1");
syncra_node::message!(LoseDevice = "syncra.renderer.lose-device/1" => DeviceLost, cli);

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
    /// The audio driver whose spectrum (`<spectrum>/fft`) is drawn as a bar strip along
    /// the bottom; empty: no strip.
    spectrum: String,
    /// The XR driver whose poses (`<xr>/pose`) are drawn for, once per eye, on
    /// `renderer/eyes`, whenever its session is visible (the arena where the pose's
    /// `placement` says); empty: no XR.
    xr: String,
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
            spectrum: "audio".into(),
            xr: "xr".into(),
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

/// Device losses in a row (without a frame drawn in between) before the renderer gives up.
const MAX_LOSSES_IN_A_ROW: u32 = 3;

/// Most worlds drawn side by side. Each one's `WorldView` goes in the frame's header, which a
/// bulk stream keeps small (4 views with the longest world names fit).
const MAX_VIEWS: usize = 4;

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

/// Pictures drawn offscreen and published on a bulk stream with header `H`: the frames on
/// `renderer/frame` ([`FrameOut`]), the eye pairs on `renderer/eyes` ([`EyeOut`]).
struct Drawn<H> {
    draw: SceneDraw,
    target: Offscreen,
    out: BulkProducer<H>,
}

/// Frames drawn offscreen and published on `renderer/frame`.
type FrameOut = Drawn<FrameHeader>;

/// Eye pairs drawn for the XR driver's poses and published on `renderer/eyes` (both eyes side
/// by side in one target).
type EyeOut = Drawn<EyeFrame>;

impl<H: syncra_node::Message> Drawn<H> {
    /// Declare `stream` with slots for `width × height` pictures.
    fn new(
        node: &syncra_node::Node,
        gpu: &Gpu,
        stream: &str,
        (width, height): (u32, u32),
        camera: Camera,
    ) -> Result<Drawn<H>, String> {
        let target = Offscreen::new(&gpu.device, width, height);
        let out = node
            .declare_bulk(
                stream,
                // Three slots, not four: pictures are big, and a reader holds one at most
                // while the renderer fills another.
                StreamOptions {
                    slot_count: 3,
                    ..StreamOptions::latest_only(target.frame_len() as u32)
                },
            )
            .map_err(|e| e.to_string())?;
        Ok(Drawn {
            draw: SceneDraw::new(&gpu.device, offscreen::FORMAT, camera),
            target,
            out,
        })
    }

    /// The same target and stream on a new device.
    fn rebuild(&mut self, gpu: &Gpu, camera: Camera) {
        let (w, h) = self.target.size();
        self.target = Offscreen::new(&gpu.device, w, h);
        self.draw = SceneDraw::new(&gpu.device, offscreen::FORMAT, camera);
    }
}

impl FrameOut {
    /// Draw into a target of `width × height` from now on, as large as the slots allow
    /// (scaled down, keeping the aspect ratio, when the window outgrows them).
    fn resize(&mut self, gpu: &Gpu, width: u32, height: u32) {
        let fit = (self.out.capacity() as f64 / (4.0 * f64::from(width) * f64::from(height)))
            .sqrt()
            .min(1.0);
        let size = (
            ((f64::from(width) * fit) as u32).max(1),
            ((f64::from(height) * fit) as u32).max(1),
        );
        if size != self.target.size() {
            self.target = Offscreen::new(&gpu.device, size.0, size.1);
        }
    }

    /// Draw, read back and publish one frame.
    fn frame(&mut self, gpu: &Gpu, scenes: &[&SceneSnapshot]) -> Result<bool, String> {
        let FrameOut { draw, target, out } = self;
        let mut encoder = gpu.device.create_command_encoder(&Default::default());
        let views = draw.draw(
            &gpu.device,
            &gpu.queue,
            &mut encoder,
            target.view(),
            target.size(),
            scenes,
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
}

impl EyeOut {
    /// Draw `scene` from both eyes of `pose`, read the pair back and publish it.
    fn frame(
        &mut self,
        gpu: &Gpu,
        pose: &XrPose,
        placement: &Placement,
        scene: Option<&SceneSnapshot>,
    ) -> Result<(), String> {
        // The runtime's size, as large as the slots allow (scaled down keeping the aspect).
        let [w, h] = pose.eye_size.map(|v| v.clamp(1, MAX_SIDE / 2));
        let fit = (self.out.capacity() as f64 / (8.0 * f64::from(w) * f64::from(h)))
            .sqrt()
            .min(1.0);
        let (w, h) = (
            ((f64::from(w) * fit) as u32).max(1),
            ((f64::from(h) * fit) as u32).max(1),
        );
        if self.target.size() != (2 * w, h) {
            self.target = Offscreen::new(&gpu.device, 2 * w, h);
        }
        let view_projs = pose.views.map(|v| eye_view_proj(&v, placement));
        let mut encoder = gpu.device.create_command_encoder(&Default::default());
        self.draw.draw_eyes(
            &gpu.device,
            &gpu.queue,
            &mut encoder,
            self.target.view(),
            (w, h),
            scene,
            view_projs,
        );
        self.target.copy(&mut encoder);
        gpu.queue.submit([encoder.finish()]);
        let mut header = EyeFrame {
            pose_frame: pose.frame,
            display_time: pose.display_time,
            located_ns: pose.located_ns,
            drawn_ns: 0,
            width: w,
            height: h,
            views: pose.views,
            placement: *placement,
            world: scene.map(|s| s.world.clone()).unwrap_or_default(),
            tick: scene.map_or(0, |s| s.tick),
        };
        // The header goes into the slot before the pixels: wait for the GPU first, so that
        // `drawn_ns` says when the pair was there.
        gpu.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| format!("waiting for the GPU: {e}"))?;
        header.drawn_ns = syncra_node::audio::monotonic_ns();
        let target = &self.target;
        let mut failed = None;
        self.out
            .publish_with(&header, |slot| match target.read_into(&gpu.device, slot) {
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
        Ok(())
    }
}

/// The frame slots of a window in frames mode hold at least this (and the window's size when
/// it opens); a window grown past them gets frames scaled down to fit, which it scales up.
const MIN_WINDOW_FRAME: (u32, u32) = (1920, 1080);

/// Where frames go, and what that needs.
#[allow(
    clippy::large_enum_variant,
    reason = "one per process, never moved after start"
)]
enum Output {
    Offscreen(FrameOut),
    Window {
        identity: Consumer<WindowIdentity>,
        /// The newest identity read.
        latest: Option<WindowIdentity>,
        /// The surface on that window, and a pipeline for its format.
        attached: Option<(Attached, SceneDraw)>,
        /// A generation that could not be attached to (not tried again).
        refused: Option<u64>,
        presented: Producer<FrameHeader>,
        /// A window in frames mode shows `renderer/frame`: drawn offscreen at its size.
        frames: Option<FrameOut>,
    },
}

struct Renderer {
    s: Settings,
    gpu: Gpu,
    /// Set when the device is lost.
    lost: Arc<AtomicBool>,
    /// Devices lost, and lost again before a frame was drawn on the new one.
    losses: u64,
    losses_in_a_row: u32,
    fig_losses: Figure,
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
    /// The audio driver's spectrum, and when the newest came.
    spectrum: Option<Consumer<Spectrum>>,
    levels: Vec<f32>,
    levels_at: Instant,
    /// The XR driver's poses, and the eye pairs drawn for them (declared with the first).
    poses: Option<Consumer<XrPose>>,
    eyes: Option<EyeOut>,
    eye_frames: u64,
    eye_ms: f64,
    fig_eye_frames: Figure,
    fig_eye_ms: Figure,
}

/// A spectrum older than this is not drawn (the audio driver stopped or went away).
const SPECTRUM_STALE: Duration = Duration::from_secs(1);

/// Open the GPU and watch its device: a loss sets `lost` (the loop recovers in-process), and
/// errors nobody captured are logged instead of ending the process.
fn open_watched(s: &Settings, lost: &Arc<AtomicBool>) -> Result<Gpu, String> {
    let gpu = open_gpu(s)?;
    let flag = lost.clone();
    gpu.device.set_device_lost_callback(move |reason, message| {
        tracing::error!(?reason, message, "the GPU device was lost");
        flag.store(true, Ordering::Release);
    });
    gpu.device.on_uncaptured_error(Arc::new(|e| {
        tracing::error!(error = %e, "GPU error");
    }));
    lost.store(false, Ordering::Release);
    Ok(gpu)
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
        // A value out of range is a settings error: permanent, like a typo.
        for (key, v) in [("width", s.width), ("height", s.height)] {
            if v == 0 || v > MAX_SIDE {
                refuse(
                    ctx.node(),
                    &format!("settings.{key} = {v}: must be 1 ..= {MAX_SIDE} pixels"),
                );
            }
        }
        if s.worlds.len() > MAX_VIEWS {
            refuse(
                ctx.node(),
                &format!(
                    "settings.worlds names {} worlds: at most {MAX_VIEWS} are drawn side by side",
                    s.worlds.len()
                ),
            );
        }
        if !(s.rate_hz > 0.0 && s.rate_hz <= 1000.0) {
            refuse(
                ctx.node(),
                &format!("settings.rate_hz = {}: must be in (0, 1000]", s.rate_hz),
            );
        }
        // No adapter is a fact of this machine: say so and do not be restarted into it.
        let lost = Arc::new(AtomicBool::new(false));
        let gpu = open_watched(&s, &lost).unwrap_or_else(|why| {
            ctx.node().exit_with(
                syncra_node::exit_code::NO_DEVICE,
                &format!("could not start: {why}"),
            )
        });
        tracing::info!(adapter = %gpu.adapter_name(), backend = %gpu.backend, "GPU open");
        let node = ctx.node();
        let output = match s.target {
            Target::Offscreen => Output::Offscreen(FrameOut::new(
                node,
                &gpu,
                FRAME_STREAM,
                (s.width, s.height),
                s.camera,
            )?),
            Target::Window => {
                let identity = node
                    .subscribe(&format!("{}/{IDENTITY_STREAM}", s.window))
                    .map_err(|e| e.to_string())?;
                ctx.watch(&identity);
                let sample = FrameHeader {
                    width: 0,
                    height: 0,
                    sequence: 0,
                    worlds: (0..MAX_VIEWS)
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
                    frames: None,
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
        let spectrum = if s.spectrum.is_empty() {
            None
        } else {
            let c = node
                .subscribe::<Spectrum>(&format!("{}/{FFT_STREAM}", s.spectrum))
                .map_err(|e| e.to_string())?;
            ctx.watch(&c);
            Some(c)
        };
        let poses = if s.xr.is_empty() {
            None
        } else {
            let c = node
                .subscribe::<XrPose>(&format!("{}/{POSE_STREAM}", s.xr))
                .map_err(|e| e.to_string())?;
            ctx.watch(&c);
            Some(c)
        };
        Ok(Renderer {
            poses,
            eyes: None,
            eye_frames: 0,
            eye_ms: 0.0,
            fig_eye_frames: node.figure("eye_frames", FigureKind::Counter),
            fig_eye_ms: node.figure("eye_ms", FigureKind::Gauge),
            spectrum,
            levels: Vec::new(),
            levels_at: Instant::now(),
            fig_fps: node.figure("fps", FigureKind::Gauge),
            fig_frame_ms: node.figure("frame_ms", FigureKind::Gauge),
            fig_frames: node.figure("frames", FigureKind::Counter),
            s,
            gpu,
            output,
            scenes,
            latest: BTreeMap::new(),
            lost,
            losses: 0,
            losses_in_a_row: 0,
            fig_losses: node.figure("device_losses", FigureKind::Counter),
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
                self.read_spectrum()?;
                self.read_poses(ctx.node())?;
            }
            NodeEvent::Message(incoming) => {
                let (target, (width, height), present_mode, window) = match &self.output {
                    Output::Offscreen(f) => ("offscreen", f.target.size(), String::new(), None),
                    Output::Window {
                        frames: Some(f), ..
                    } => ("window (frames)", f.target.size(), String::new(), None),
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
                    device_losses: self.losses,
                    frame_ms: self.frame_ms,
                };
                let incoming = match incoming.answer_with(|GetInfo| Ok(info)) {
                    Ok(()) => return Ok(()),
                    Err(other) => other,
                };
                let losses_before = self.losses;
                let device = self.gpu.device.clone();
                let _ = incoming.answer_with(|LoseDevice| {
                    device.destroy();
                    Ok(DeviceLost { losses_before })
                });
            }
            _ => {}
        }
        Ok(())
    }

    fn tick(&mut self, ctx: &mut Context<'_>) -> Result<(), String> {
        let t = Instant::now();
        self.read_scenes()?;
        self.read_spectrum()?;
        if self.lost.load(Ordering::Acquire) {
            return self.recover();
        }
        let drew = match &mut self.output {
            Output::Offscreen(_) => self.offscreen_frame(),
            Output::Window { .. } => self.window_frame(ctx.node()),
        };
        let drew = match drew {
            // A frame failed because the device went away under it.
            Err(_) if self.lost.load(Ordering::Acquire) => return self.recover(),
            other => other?,
        };
        if !drew {
            return Ok(());
        }
        self.losses_in_a_row = 0;
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

/// Leave as a node whose settings were refused (not restarted: it would fail the same way).
fn refuse(node: &syncra_node::Node, why: &str) -> ! {
    node.exit_with(
        syncra_node::exit_code::BAD_SETTINGS,
        &format!("the settings do not fit this node: {why}"),
    )
}

/// The scenes to draw, in order: the configured worlds, or the first [`MAX_VIEWS`] by name.
fn in_order<'a>(
    scenes: &Scenes,
    s: &Settings,
    latest: &'a BTreeMap<String, SceneSnapshot>,
) -> Vec<&'a SceneSnapshot> {
    match scenes {
        Scenes::Named(_) => s.worlds.iter().filter_map(|w| latest.get(w)).collect(),
        Scenes::All(..) => latest.values().take(MAX_VIEWS).collect(),
    }
}

impl Renderer {
    /// The device was lost: open a new one and rebuild what lives on it, keeping the streams
    /// (the frame sequence goes on). Three losses in a row without a frame between: give up.
    fn recover(&mut self) -> Result<(), String> {
        self.losses += 1;
        self.losses_in_a_row += 1;
        self.fig_losses.add(1.0);
        if self.losses_in_a_row > MAX_LOSSES_IN_A_ROW {
            return Err(format!(
                "the GPU device was lost {MAX_LOSSES_IN_A_ROW} times in a row; giving up"
            ));
        }
        let gpu = open_watched(&self.s, &self.lost)
            .map_err(|e| format!("the GPU device was lost and no new one opened: {e}"))?;
        tracing::info!(adapter = %gpu.adapter_name(), backend = %gpu.backend, losses = self.losses, "a new GPU device after the loss");
        if let Some(e) = &mut self.eyes {
            e.rebuild(&gpu, self.s.camera);
        }
        match &mut self.output {
            Output::Offscreen(f) => f.rebuild(&gpu, self.s.camera),
            Output::Window {
                attached,
                refused,
                frames,
                ..
            } => {
                *attached = None;
                *refused = None;
                if let Some(f) = frames {
                    f.rebuild(&gpu, self.s.camera);
                }
            }
        }
        self.gpu = gpu;
        Ok(())
    }

    /// Draw, read back and publish one offscreen frame.
    fn offscreen_frame(&mut self) -> Result<bool, String> {
        let scenes = in_order(&self.scenes, &self.s, &self.latest);
        match &mut self.output {
            Output::Offscreen(f) => f.frame(&self.gpu, &scenes),
            Output::Window { .. } => Ok(false),
        }
    }

    /// Present one frame into the window, attaching to it first if it is new.
    fn window_frame(&mut self, node: &syncra_node::Node) -> Result<bool, String> {
        self.read_identity()?;
        let scenes = in_order(&self.scenes, &self.s, &self.latest);
        let gpu = &self.gpu;
        let camera = self.s.camera;
        let mode = self.s.present_mode;
        let Output::Window {
            latest,
            attached,
            refused,
            presented,
            frames,
            ..
        } = &mut self.output
        else {
            return Ok(false);
        };
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
        if id.present == Present::Frames {
            // The window shows renderer/frame itself: draw offscreen at its size.
            *attached = None;
            if frames.is_none() {
                tracing::info!(
                    "the window shows renderer/frame itself (frames mode): drawing offscreen at its size"
                );
                let (w, h) = MIN_WINDOW_FRAME;
                *frames = Some(FrameOut::new(
                    node,
                    gpu,
                    FRAME_STREAM,
                    (w.max(id.width), h.max(id.height)),
                    camera,
                )?);
            }
            let f = frames.as_mut().expect("set above");
            f.resize(gpu, id.width.max(1), id.height.max(1));
            return f.frame(gpu, &scenes);
        }
        if attached.is_none() && *refused != Some(id.generation) {
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

    /// Keep the newest spectrum's band levels, and hand them to every draw.
    fn read_spectrum(&mut self) -> Result<(), String> {
        let Some(c) = self.spectrum.as_mut() else {
            return Ok(());
        };
        while let Some(sp) = c.try_recv().map_err(|e| e.to_string())? {
            self.levels = sp
                .value
                .bands(SPECTRUM_BANDS, SPECTRUM_LOW_HZ)
                .into_iter()
                .map(spectrum_level)
                .collect();
            self.levels_at = Instant::now();
        }
        if !self.levels.is_empty() && self.levels_at.elapsed() > SPECTRUM_STALE {
            self.levels.clear();
        }
        // Every frame: a draw made since (a new window, a new device) gets them too.
        {
            let levels = &self.levels;
            match &mut self.output {
                Output::Offscreen(f) => f.draw.set_spectrum(levels),
                Output::Window {
                    attached, frames, ..
                } => {
                    if let Some((_, d)) = attached {
                        d.set_spectrum(levels);
                    }
                    if let Some(f) = frames {
                        f.draw.set_spectrum(levels);
                    }
                }
            }
        }
        Ok(())
    }

    /// The newest pose from the XR driver: while its session is visible, draw the world
    /// from both eyes at once (the driver waits for this pair to submit it with its frame).
    fn read_poses(&mut self, node: &syncra_node::Node) -> Result<(), String> {
        let Some(c) = self.poses.as_mut() else {
            return Ok(());
        };
        let mut newest = None;
        while let Some(p) = c.try_recv().map_err(|e| e.to_string())? {
            newest = Some(p.value);
        }
        let Some(pose) = newest.filter(|p| p.should_render) else {
            return Ok(());
        };
        if self.lost.load(Ordering::Acquire) {
            return Ok(()); // the next tick recovers the device
        }
        let t = Instant::now();
        self.read_scenes()?;
        if self.eyes.is_none() {
            let [w, h] = pose.eye_size.map(|v| v.clamp(1, MAX_SIDE / 2));
            tracing::info!(width = w, height = h, "drawing for the XR driver's eyes");
            self.eyes = Some(EyeOut::new(
                node,
                &self.gpu,
                EYES_STREAM,
                (2 * w, h),
                self.s.camera,
            )?);
        }
        let scene = in_order(&self.scenes, &self.s, &self.latest)
            .first()
            .copied();
        let eyes = self.eyes.as_mut().expect("made above");
        match eyes.frame(&self.gpu, &pose, &pose.placement, scene) {
            Ok(()) => {}
            // The device went away under it: the next tick recovers.
            Err(_) if self.lost.load(Ordering::Acquire) => return Ok(()),
            Err(e) => return Err(e),
        }
        self.eye_frames += 1;
        self.eye_ms = t.elapsed().as_secs_f64() * 1e3;
        self.fig_eye_frames.add(1.0);
        self.fig_eye_ms.set(self.eye_ms);
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
