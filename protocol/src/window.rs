//! What the window driver publishes: the window's identity (what a renderer needs to draw
//! into it) and its input and window events.

use serde::{Deserialize, Serialize};

/// The window driver's identity stream: `window/identity` ([`WindowIdentity`], latest only,
/// published again on every resize).
pub const IDENTITY_STREAM: &str = "identity";
/// The window driver's event stream: `window/events` ([`WindowEvent`], drop-oldest).
pub const EVENTS_STREAM: &str = "events";

/// How the window gets its pictures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Present {
    /// The renderer presents into the window itself (X11, XWayland).
    Surface,
    /// The window shows the frames the renderer publishes on `renderer/frame` (where one
    /// process cannot present into another's window, as on native Wayland).
    Frames,
}

/// The window, as a renderer attaches to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowIdentity {
    /// The X11 window id (0 when the window is not an X11 window).
    pub x11_window: u64,
    /// The X display it is on (`DISPLAY`), empty when not X11.
    pub display: String,
    /// Inner size, pixels.
    pub width: u32,
    /// Inner size, pixels.
    pub height: u32,
    /// How it gets its pictures.
    pub present: Present,
    /// Which window this is: new for every window the driver opens. X11 reuses window ids,
    /// so a renderer compares this, never the id, to know it must attach again.
    pub generation: u64,
}

crate::message!(WindowIdentity = "syncra.window.identity/1");

/// Keyboard modifiers held.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Modifiers {
    /// Shift.
    pub shift: bool,
    /// Control.
    pub ctrl: bool,
    /// Alt.
    pub alt: bool,
    /// Super / Windows / Command.
    pub logo: bool,
}

/// One event of the window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum WindowEvent {
    /// A key went down or up.
    Key {
        /// The key as the layout names it: "a", "A", "Escape", "ArrowLeft".
        key: String,
        /// The physical key, layout-independent: "KeyA", "Escape".
        code: String,
        /// Down (true) or up.
        pressed: bool,
        /// An auto-repeat of a held key.
        repeat: bool,
        /// Text it produces, if any.
        text: Option<String>,
        /// Modifiers held.
        modifiers: Modifiers,
    },
    /// The cursor moved, pixels from the window's top left.
    CursorMoved {
        /// x.
        x: f64,
        /// y.
        y: f64,
    },
    /// A mouse button went down or up: "left", "right", "middle", "back", "forward", "other N".
    MouseButton {
        /// The button.
        button: String,
        /// Down (true) or up.
        pressed: bool,
    },
    /// The wheel turned, in lines (or pixels / 100 for touchpads).
    Wheel {
        /// Horizontal.
        dx: f32,
        /// Vertical.
        dy: f32,
    },
    /// The window's inner size changed.
    Resized {
        /// Pixels.
        width: u32,
        /// Pixels.
        height: u32,
    },
    /// The window gained (true) or lost focus.
    Focused(bool),
    /// The user asked to close the window (the runtime is asked to stop in order).
    CloseRequested,
}

crate::message!(WindowEvent = "syncra.window.event/1");

/// In frames mode, the window's stream `window/shown`: each frame it showed, when.
pub const SHOWN_STREAM: &str = "shown";

/// A frame of `renderer/frame` the window showed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrameShown {
    /// The frame's sequence on `renderer/frame`.
    pub seq: u64,
    /// When the renderer published it (CLOCK_MONOTONIC ns).
    pub published_ns: u64,
    /// When the window had it on screen (presented; CLOCK_MONOTONIC ns).
    pub shown_ns: u64,
    /// The CPU copy into the window's buffer, scaling included, microseconds.
    pub blit_us: u64,
    /// The frame's size.
    pub width: u32,
    /// The frame's size.
    pub height: u32,
}

crate::message!(FrameShown = "syncra.window.shown/1");
