//! Presenting into the window driver's window: another process's X11 window, reached through
//! this process's own XCB connection to the same display. XCB, not Xlib: when the window goes
//! away Xlib's default error handler would end this process, XCB only returns an error.

use std::num::NonZeroU32;
use std::ptr::NonNull;

use serde::{Deserialize, Serialize};
use syncra_node::window::WindowIdentity;
use wgpu::rwh::{RawDisplayHandle, RawWindowHandle, XcbDisplayHandle, XcbWindowHandle};
use x11rb::protocol::xproto::ConnectionExt;
use x11rb::xcb_ffi::XCBConnection;

use crate::gpu::Gpu;

/// How presented frames are queued, by config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PresentMode {
    /// Immediate where the surface offers it (the renderer paces its own frames), else Fifo.
    Auto,
    /// Wait for the display's vertical blank.
    Fifo,
    /// Replace the queued frame.
    Mailbox,
    /// No waiting.
    Immediate,
}

/// A surface on the window of one generation.
pub struct Attached {
    // Dropped before the connection it was made on.
    surface: wgpu::Surface<'static>,
    config: wgpu::SurfaceConfiguration,
    conn: Box<XCBConnection>,
    window: u32,
    /// The window's generation (from its identity).
    pub generation: u64,
}

impl std::fmt::Debug for Attached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attached")
            .field("window", &self.window)
            .field("generation", &self.generation)
            .field("size", &(self.config.width, self.config.height))
            .field("present_mode", &self.config.present_mode)
            .finish()
    }
}

/// What became of asking the surface for a frame.
#[derive(Debug)]
pub enum Next {
    /// Draw into it and present it.
    Frame(wgpu::SurfaceTexture),
    /// Nothing this time (resized, not visible): try again next frame.
    Skip,
    /// The window is gone: wait for the next one.
    Gone(String),
}

impl Attached {
    /// Attach to the window `id` names.
    pub fn attach(gpu: &Gpu, id: &WindowIdentity, mode: PresentMode) -> Result<Attached, String> {
        let window = u32::try_from(id.x11_window)
            .ok()
            .and_then(NonZeroU32::new)
            .ok_or_else(|| format!("window id {} is not an X11 window id", id.x11_window))?;
        // The window must be on this renderer's own display: an identity naming another one
        // (another X server, a TCP display) is not followed.
        if let Some(own) = std::env::var("DISPLAY").ok().filter(|d| !d.is_empty())
            && own != id.display
        {
            return Err(format!(
                "the window is on display {:?}, this renderer's DISPLAY is {own:?}: not attaching",
                id.display
            ));
        }
        let name = std::ffi::CString::new(id.display.as_str())
            .map_err(|_| format!("display name {:?} holds a NUL byte", id.display))?;
        let (conn, screen) = XCBConnection::connect(Some(&name))
            .map_err(|e| format!("connecting to X display {:?}: {e}", id.display))?;
        let conn = Box::new(conn);
        let geometry = conn
            .get_geometry(window.get())
            .map_err(|e| e.to_string())
            .and_then(|c| c.reply().map_err(|e| e.to_string()))
            .map_err(|e| format!("window {:#x} on {:?}: {e}", window, id.display))?;
        let display =
            XcbDisplayHandle::new(NonNull::new(conn.get_raw_xcb_connection()), screen as i32);
        // SAFETY: the display handle is this process's own XCB connection, boxed in the
        // returned value and dropped after the surface (field order); the window handle is an
        // X11 window id, checked to exist just above. If it disappears later, XCB reports
        // errors to the surface (Lost) rather than failing the process.
        let surface = unsafe {
            gpu.instance
                .create_surface_unsafe(wgpu::SurfaceTargetUnsafe::RawHandle {
                    raw_display_handle: Some(RawDisplayHandle::Xcb(display)),
                    raw_window_handle: RawWindowHandle::Xcb(XcbWindowHandle::new(window)),
                })
        }
        .map_err(|e| format!("no surface on window {window:#x}: {e}"))?;
        if !gpu.adapter.is_surface_supported(&surface) {
            return Err(format!(
                "the {} adapter {:?} cannot present to window {window:#x} (present = \"frames\" in the window driver's settings draws without that)",
                gpu.backend,
                gpu.adapter_name()
            ));
        }
        let (w, h) = (
            u32::from(geometry.width).max(1),
            u32::from(geometry.height).max(1),
        );
        let mut config = surface
            .get_default_config(&gpu.adapter, w, h)
            .ok_or("the surface offers no configuration")?;
        let caps = surface.get_capabilities(&gpu.adapter);
        if let Some(f) = caps.formats.iter().copied().find(|f| !f.is_srgb()) {
            // The shader writes linear values as they are, like the offscreen frames.
            config.format = f;
        }
        let want = match mode {
            PresentMode::Auto | PresentMode::Immediate => wgpu::PresentMode::Immediate,
            PresentMode::Mailbox => wgpu::PresentMode::Mailbox,
            PresentMode::Fifo => wgpu::PresentMode::Fifo,
        };
        config.present_mode = if caps.present_modes.contains(&want) {
            want
        } else if mode == PresentMode::Auto {
            wgpu::PresentMode::Fifo
        } else {
            return Err(format!(
                "present_mode {want:?} is not offered by this surface (it offers {:?})",
                caps.present_modes
            ));
        };
        config.desired_maximum_frame_latency = 1;
        surface.configure(&gpu.device, &config);
        Ok(Attached {
            surface,
            config,
            conn,
            window: window.get(),
            generation: id.generation,
        })
    }

    /// The colour format frames are drawn in.
    pub fn format(&self) -> wgpu::TextureFormat {
        self.config.format
    }

    /// (width, height) configured.
    pub fn size(&self) -> (u32, u32) {
        (self.config.width, self.config.height)
    }

    /// The present mode in use.
    pub fn present_mode(&self) -> wgpu::PresentMode {
        self.config.present_mode
    }

    /// The window's X11 id.
    pub fn window(&self) -> u32 {
        self.window
    }

    /// The window's size now, asked of the X server; `None` if the window is gone.
    fn geometry(&self) -> Option<(u32, u32)> {
        let g = self.conn.get_geometry(self.window).ok()?.reply().ok()?;
        Some((u32::from(g.width).max(1), u32::from(g.height).max(1)))
    }

    /// Follow the window's size (or learn that it is gone).
    pub fn follow(&mut self, device: &wgpu::Device) -> Result<(), String> {
        let size = self
            .geometry()
            .ok_or_else(|| format!("window {:#x} is gone", self.window))?;
        if size != self.size() {
            (self.config.width, self.config.height) = size;
            self.surface.configure(device, &self.config);
        }
        Ok(())
    }

    /// The next frame to draw into.
    pub fn next(&mut self, device: &wgpu::Device) -> Next {
        match self.surface.get_current_texture() {
            wgpu::CurrentSurfaceTexture::Success(t) => Next::Frame(t),
            // Resized under us: drop the stale image, follow the new size, draw next time.
            wgpu::CurrentSurfaceTexture::Suboptimal(t) => {
                drop(t);
                match self.follow(device) {
                    Ok(()) => Next::Skip,
                    Err(e) => Next::Gone(e),
                }
            }
            wgpu::CurrentSurfaceTexture::Timeout | wgpu::CurrentSurfaceTexture::Occluded => {
                Next::Skip
            }
            wgpu::CurrentSurfaceTexture::Outdated | wgpu::CurrentSurfaceTexture::Lost => {
                match self.follow(device) {
                    Ok(()) => Next::Skip,
                    Err(e) => Next::Gone(e),
                }
            }
            other => Next::Gone(format!("the surface failed: {other:?}")),
        }
    }
}
