//! `syncra-window`: the window driver. It owns the desktop window (winit): title, size and
//! fullscreen from config. It publishes the window's identity on `window/identity` — what a
//! renderer needs to present into it, with a generation that is new for every window, since
//! X11 reuses window ids — and its keyboard, mouse, resize, focus and close events on
//! `window/events`. Closing the window asks the runtime to stop in order, as a user quitting.
//!
//! Where one process cannot present into another's window (native Wayland), or when config
//! says `present = "frames"`, the window shows the frames the renderer publishes on
//! `renderer/frame` itself, copied into the window by the CPU (softbuffer).
//!
//! With no display it fails at once, saying how to run headless or under Xvfb, and the
//! runtime does not retry it (a missing display is a fact of the machine).

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use syncra_node::render::FrameHeader;
use syncra_node::streams::{BulkConsumer, Producer, StreamOptions};
use syncra_node::window::{
    EVENTS_STREAM, FrameShown, IDENTITY_STREAM, Modifiers, Present, SHOWN_STREAM, WindowEvent,
    WindowIdentity,
};
use syncra_node::{Figure, FigureKind, Heartbeat, Node, exit_code};
use winit::application::ApplicationHandler;
use winit::event::{ElementState, MouseButton, MouseScrollDelta};
use winit::event_loop::{ActiveEventLoop, ControlFlow, EventLoop, EventLoopProxy};
use winit::keyboard::ModifiersState;
use winit::raw_window_handle::{HasWindowHandle, RawWindowHandle};
use winit::window::{Fullscreen, Window, WindowId};

/// How the window gets its pictures, by config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum PresentSetting {
    /// The renderer presents into the window where it can (X11, XWayland), else frames.
    Auto,
    /// The renderer presents into the window (X11 only).
    Surface,
    /// The window shows `renderer/frame` itself.
    Frames,
}

/// `[drivers.window] settings = { .. }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Settings {
    /// The window's title.
    title: String,
    /// Inner size, pixels.
    width: u32,
    /// Inner size, pixels.
    height: u32,
    /// Borderless fullscreen on the current monitor.
    fullscreen: bool,
    /// How the window gets its pictures.
    present: PresentSetting,
    /// In frames mode: the stream shown.
    frames: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            title: "Syncra".into(),
            width: 1280,
            height: 720,
            fullscreen: false,
            present: PresentSetting::Auto,
            frames: "renderer/frame".into(),
        }
    }
}

/// Largest window side accepted, pixels.
const MAX_SIDE: u32 = 16384;
/// How often the loop wakes with nothing to do: the heartbeat's pace.
const IDLE_WAKE: Duration = Duration::from_millis(100);
/// How often it looks for a new frame in frames mode.
const FRAME_POLL: Duration = Duration::from_millis(4);

/// Posted into the event loop from other threads.
#[derive(Debug)]
enum Wake {
    /// The runtime asked this node to stop.
    Shutdown,
}

/// Frames mode: the renderer's frames, copied into the window.
struct Frames {
    rx: BulkConsumer<FrameHeader>,
    out: Producer<FrameShown>,
    surface: softbuffer::Surface<Arc<Window>, Arc<Window>>,
    shown: Figure,
    blit_ms: Figure,
}

struct App {
    node: Arc<Node>,
    s: Settings,
    present: Present,
    beat: Heartbeat,
    identity: Producer<WindowIdentity>,
    events: Producer<WindowEvent>,
    window: Option<Arc<Window>>,
    frames: Option<Frames>,
    modifiers: ModifiersState,
    windows_opened: u64,
    generation: u64,
    lost_events: Figure,
}

fn fail(node: &Node, code: i32, why: &str) -> ! {
    node.exit_with(code, why)
}

/// What to tell a user whose machine has no display.
fn no_display(detail: &str) -> String {
    format!(
        "no display to open a window on ({detail}): run headless with `cargo run-server` \
         (no window), or give this driver a display, e.g. under Xvfb: \
         `Xvfb :99 & DISPLAY=:99 cargo run-desktop`"
    )
}

impl App {
    fn open(&mut self, el: &ActiveEventLoop) -> Result<(), String> {
        let mut attrs = Window::default_attributes()
            .with_title(self.s.title.clone())
            .with_inner_size(winit::dpi::PhysicalSize::new(self.s.width, self.s.height));
        if self.s.fullscreen {
            attrs = attrs.with_fullscreen(Some(Fullscreen::Borderless(None)));
        }
        let window = Arc::new(
            el.create_window(attrs)
                .map_err(|e| format!("could not create the window: {e}"))?,
        );
        let x11 = x11_id(&window);
        self.present = match (self.s.present, x11) {
            (PresentSetting::Frames, _) | (PresentSetting::Auto, None) => Present::Frames,
            (PresentSetting::Surface | PresentSetting::Auto, Some(_)) => Present::Surface,
            (PresentSetting::Surface, None) => {
                return Err(
                    "present = \"surface\" needs an X11 window (this is not one): use present = \"frames\" or \"auto\"".into(),
                );
            }
        };
        self.windows_opened += 1;
        // New for every window, across restarts of this driver too.
        self.generation = (self.node.incarnation() << 20) | self.windows_opened;
        if self.present == Present::Frames {
            let context = softbuffer::Context::new(window.clone())
                .map_err(|e| format!("could not draw into the window: {e}"))?;
            let surface = softbuffer::Surface::new(&context, window.clone())
                .map_err(|e| format!("could not draw into the window: {e}"))?;
            let rx = self
                .node
                .subscribe_bulk::<FrameHeader>(&self.s.frames)
                .map_err(|e| e.to_string())?;
            let out = self
                .node
                .declare(SHOWN_STREAM, StreamOptions::drop_oldest(256, 64))
                .map_err(|e| e.to_string())?;
            self.frames = Some(Frames {
                rx,
                out,
                surface,
                shown: self.node.figure("frames_shown", FigureKind::Counter),
                blit_ms: self.node.figure("blit_ms", FigureKind::Gauge),
            });
        }
        tracing::info!(x11_window = ?x11, present = ?self.present, generation = self.generation, "window open");
        self.window = Some(window);
        self.publish_identity();
        Ok(())
    }

    fn publish_identity(&mut self) {
        let Some(window) = &self.window else { return };
        let size = window.inner_size();
        let x11 = x11_id(window).unwrap_or(0);
        let identity = WindowIdentity {
            x11_window: x11,
            display: if x11 != 0 {
                std::env::var("DISPLAY").unwrap_or_default()
            } else {
                String::new()
            },
            width: size.width,
            height: size.height,
            present: self.present,
            generation: self.generation,
        };
        if let Err(e) = self.identity.publish(&identity) {
            tracing::warn!(error = %e, "publishing the window's identity failed");
        }
    }

    fn publish(&mut self, event: WindowEvent) {
        if self.events.publish(&event).is_err() {
            self.lost_events.add(1.0);
        }
    }

    /// Frames mode: show the newest frame, if there is one.
    fn show_frame(&mut self) {
        let (Some(frames), Some(window)) = (&mut self.frames, &self.window) else {
            return;
        };
        let size = window.inner_size();
        let (Some(w), Some(h)) = (NonZeroU32::new(size.width), NonZeroU32::new(size.height)) else {
            return;
        };
        let surface = &mut frames.surface;
        let got = frames.rx.read_with(Duration::ZERO, |header, rgba| {
            if surface.resize(w, h).is_err() {
                return None;
            }
            let Ok(mut buffer) = surface.buffer_mut() else {
                return None;
            };
            let t = Instant::now();
            if !blit(header, rgba, &mut buffer, size.width, size.height) {
                return None;
            }
            let blit = t.elapsed();
            buffer
                .present()
                .is_ok()
                .then_some((blit, header.width, header.height))
        });
        if let Ok(Some((m, Some((blit, width, height))))) = got {
            frames.shown.add(1.0);
            frames.blit_ms.set(blit.as_secs_f64() * 1e3);
            let _ = frames.out.publish(&FrameShown {
                seq: m.seq,
                published_ns: m.publish_ns,
                shown_ns: monotonic_ns(),
                blit_us: blit.as_micros() as u64,
                width,
                height,
            });
        }
    }
}

/// CLOCK_MONOTONIC now, ns (the rings' clock).
fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// The window's X11 id, if it is an X11 window.
fn x11_id(window: &Window) -> Option<u64> {
    match window.window_handle().map(|h| h.as_raw()) {
        Ok(RawWindowHandle::Xlib(h)) => Some(h.window),
        Ok(RawWindowHandle::Xcb(h)) => Some(u64::from(h.window.get())),
        _ => None,
    }
}

/// Copy an RGBA8 frame into a window buffer of 0RGB pixels, scaled to fit (nearest pixel).
/// A frame whose bytes do not match its header (another process wrote both) is not shown:
/// false, and the window keeps its last picture.
fn blit(header: &FrameHeader, rgba: &[u8], out: &mut [u32], width: u32, height: u32) -> bool {
    let (fw, fh) = (header.width as usize, header.height as usize);
    let need = fw.checked_mul(fh).and_then(|n| n.checked_mul(4));
    if fw == 0 || fh == 0 || need.is_none_or(|n| rgba.len() < n) {
        return false;
    }
    let (w, h) = (width as usize, height as usize);
    let xs: Vec<usize> = (0..w).map(|x| x * fw / w).collect();
    for (y, row) in out.chunks_exact_mut(w).take(h).enumerate() {
        let src = &rgba[(y * fh / h) * fw * 4..][..fw * 4];
        for (px, &sx) in row.iter_mut().zip(&xs) {
            let p = &src[sx * 4..sx * 4 + 3];
            *px = (u32::from(p[0]) << 16) | (u32::from(p[1]) << 8) | u32::from(p[2]);
        }
    }
    true
}

fn key_name(key: &winit::keyboard::Key) -> String {
    use winit::keyboard::Key;
    match key {
        Key::Character(c) => c.to_string(),
        Key::Named(n) => format!("{n:?}"),
        Key::Unidentified(_) => "Unidentified".into(),
        Key::Dead(c) => format!("Dead({c:?})"),
    }
}

fn button_name(b: MouseButton) -> String {
    match b {
        MouseButton::Left => "left".into(),
        MouseButton::Right => "right".into(),
        MouseButton::Middle => "middle".into(),
        MouseButton::Back => "back".into(),
        MouseButton::Forward => "forward".into(),
        MouseButton::Other(n) => format!("other {n}"),
    }
}

impl ApplicationHandler<Wake> for App {
    fn resumed(&mut self, el: &ActiveEventLoop) {
        if self.window.is_some() {
            return;
        }
        if let Err(why) = self.open(el) {
            fail(
                &self.node,
                exit_code::NO_DEVICE,
                &format!("could not start: {why}"),
            );
        }
        self.node.ready();
    }

    fn window_event(&mut self, _: &ActiveEventLoop, _: WindowId, event: winit::event::WindowEvent) {
        use winit::event::WindowEvent as W;
        let out = match event {
            W::KeyboardInput { event: k, .. } => WindowEvent::Key {
                key: key_name(&k.logical_key),
                code: match k.physical_key {
                    winit::keyboard::PhysicalKey::Code(c) => format!("{c:?}"),
                    winit::keyboard::PhysicalKey::Unidentified(_) => "Unidentified".into(),
                },
                pressed: k.state == ElementState::Pressed,
                repeat: k.repeat,
                text: k.text.map(|t| t.to_string()),
                modifiers: Modifiers {
                    shift: self.modifiers.shift_key(),
                    ctrl: self.modifiers.control_key(),
                    alt: self.modifiers.alt_key(),
                    logo: self.modifiers.super_key(),
                },
            },
            W::ModifiersChanged(m) => {
                self.modifiers = m.state();
                return;
            }
            W::CursorMoved { position, .. } => WindowEvent::CursorMoved {
                x: position.x,
                y: position.y,
            },
            W::MouseInput { state, button, .. } => WindowEvent::MouseButton {
                button: button_name(button),
                pressed: state == ElementState::Pressed,
            },
            W::MouseWheel { delta, .. } => {
                let (dx, dy) = match delta {
                    MouseScrollDelta::LineDelta(x, y) => (x, y),
                    MouseScrollDelta::PixelDelta(p) => (p.x as f32 / 100.0, p.y as f32 / 100.0),
                };
                WindowEvent::Wheel { dx, dy }
            }
            W::Resized(size) => {
                self.publish_identity();
                WindowEvent::Resized {
                    width: size.width,
                    height: size.height,
                }
            }
            W::Focused(f) => WindowEvent::Focused(f),
            W::CloseRequested => {
                self.publish(WindowEvent::CloseRequested);
                // The runtime stops everything in order; this driver's own stop comes with it.
                self.node.quit("the window was closed");
                return;
            }
            W::RedrawRequested => {
                self.show_frame();
                return;
            }
            _ => return,
        };
        self.publish(out);
    }

    fn user_event(&mut self, el: &ActiveEventLoop, wake: Wake) {
        match wake {
            Wake::Shutdown => el.exit(),
        }
    }

    fn about_to_wait(&mut self, el: &ActiveEventLoop) {
        self.beat.beat(None);
        if self.node.shutdown_requested() {
            el.exit();
            return;
        }
        let wait = if self.frames.is_some() {
            self.show_frame();
            FRAME_POLL
        } else {
            IDLE_WAKE
        };
        el.set_control_flow(ControlFlow::WaitUntil(Instant::now() + wait));
    }
}

fn main() {
    let node = Arc::new(Node::join_or_standalone());
    let s: Settings = node.settings().unwrap_or_else(|e| e.exit());
    for (key, v) in [("width", s.width), ("height", s.height)] {
        if v == 0 || v > MAX_SIDE {
            fail(
                &node,
                exit_code::BAD_SETTINGS,
                &format!("settings.{key} = {v}: must be 1 ..= {MAX_SIDE} pixels"),
            );
        }
    }
    let set = |name: &str| std::env::var_os(name).is_some_and(|v| !v.is_empty());
    if !set("DISPLAY") && !set("WAYLAND_DISPLAY") {
        fail(
            &node,
            exit_code::NO_DEVICE,
            &no_display("neither DISPLAY nor WAYLAND_DISPLAY is set"),
        );
    }
    let mut builder = EventLoop::<Wake>::with_user_event();
    // Where X11 is there (XWayland too), the renderer can present into the window.
    if s.present != PresentSetting::Frames && set("DISPLAY") {
        use winit::platform::x11::EventLoopBuilderExtX11;
        builder.with_x11();
    }
    let el = match builder.build() {
        Ok(el) => el,
        Err(e) => fail(&node, exit_code::NO_DEVICE, &no_display(&e.to_string())),
    };
    let proxy: EventLoopProxy<Wake> = el.create_proxy();
    node.on_shutdown(move || {
        let _ = proxy.send_event(Wake::Shutdown);
    });
    let declare = |name: &str, options: StreamOptions| -> Producer<_> {
        node.declare(name, options)
            .unwrap_or_else(|e| fail(&node, 1, &format!("could not start: {e}")))
    };
    let identity = declare(IDENTITY_STREAM, StreamOptions::latest_only(1024));
    let events: Producer<WindowEvent> = node
        .declare(EVENTS_STREAM, StreamOptions::drop_oldest(512, 256))
        .unwrap_or_else(|e| fail(&node, 1, &format!("could not start: {e}")));
    let mut app = App {
        beat: node.heartbeat_handle(),
        lost_events: node.figure("lost_events", FigureKind::Counter),
        node: node.clone(),
        present: Present::Surface,
        s,
        identity,
        events,
        window: None,
        frames: None,
        modifiers: ModifiersState::empty(),
        windows_opened: 0,
        generation: 0,
    };
    if let Err(e) = el.run_app(&mut app) {
        fail(&node, 1, &format!("the window's event loop failed: {e}"));
    }
    // Closed in order: the window goes with this process.
    drop(app);
    tracing::info!("stopped");
    std::process::exit(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(width: u32, height: u32) -> FrameHeader {
        FrameHeader {
            width,
            height,
            sequence: 0,
            worlds: Vec::new(),
        }
    }

    #[test]
    fn a_frame_is_scaled_to_the_window_and_a_frame_that_lies_about_its_size_is_not_shown() {
        // 2×1: red, blue → a 4×2 window.
        let rgba = [255, 0, 0, 255, 0, 0, 255, 255];
        let mut out = vec![7u32; 8];
        assert!(blit(&header(2, 1), &rgba, &mut out, 4, 2));
        assert_eq!(
            out,
            [
                0xff0000, 0xff0000, 0xff, 0xff, 0xff0000, 0xff0000, 0xff, 0xff
            ]
        );
        // A header bigger than its bytes, or so big that its size overflows: left alone.
        let mut out = vec![7u32; 8];
        assert!(!blit(&header(3, 1), &rgba, &mut out, 4, 2));
        assert!(!blit(&header(u32::MAX, u32::MAX), &rgba, &mut out, 4, 2));
        assert_eq!(out, [7; 8]);
    }
}
