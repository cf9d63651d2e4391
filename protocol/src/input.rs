//! What the input driver publishes — every device's events on one stream, and the actions a
//! game's action map makes of them — and the haptics worlds ask for.
//!
//! Timestamps are `CLOCK_MONOTONIC` nanoseconds ([`crate::audio::monotonic_ns`]): when the
//! source saw the event (for a key, when the window driver published it).

use serde::{Deserialize, Serialize};

/// `input/events`: every device's events, merged ([`InputEvent`], drop-oldest).
pub const EVENTS_STREAM: &str = "events";
/// `input/actions`: the action map applied to them ([`ActionEvent`], drop-oldest).
pub const ACTIONS_STREAM: &str = "actions";

/// Which device an event came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Device {
    /// The window's keyboard.
    Keyboard,
    /// The window's mouse.
    Mouse,
    /// A gamepad, by the driver's id for it: the same physical pad keeps its id when it is
    /// unplugged and plugged back.
    Gamepad(u32),
    /// The XR headset's controllers (player 0's: the one wearing the headset).
    XrController,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum InputKind {
    /// A key, by its physical code ("KeyW", "Space") and its layout name ("w").
    Key {
        /// Physical code.
        code: String,
        /// As the layout names it.
        key: String,
        /// Down (true) or up.
        pressed: bool,
        /// An auto-repeat.
        repeat: bool,
    },
    /// A mouse button: "left", "right", "middle", ….
    MouseButton {
        /// The button.
        button: String,
        /// Down or up.
        pressed: bool,
    },
    /// The cursor moved, window pixels.
    CursorMoved {
        /// x.
        x: f64,
        /// y.
        y: f64,
    },
    /// The wheel turned, lines.
    Wheel {
        /// Horizontal.
        dx: f32,
        /// Vertical.
        dy: f32,
    },
    /// A gamepad appeared (or came back).
    Connected {
        /// Its name, as the OS gives it.
        name: String,
        /// Its stable identity (a UUID from its vendor, product and version).
        uuid: String,
    },
    /// A gamepad went away.
    Disconnected,
    /// A gamepad button: "South", "East", "North", "West", "LeftTrigger", "Start", ….
    Button {
        /// The button.
        button: String,
        /// Down or up.
        pressed: bool,
    },
    /// A gamepad axis: "LeftStickX", "LeftStickY", "RightStickX", "RightStickY",
    /// "LeftZ", "RightZ"; -1 ..= 1 (sticks: +Y up).
    Axis {
        /// The axis.
        axis: String,
        /// Its value.
        value: f32,
    },
}

/// One event of one device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputEvent {
    /// When the source saw it, `CLOCK_MONOTONIC` ns.
    pub time_ns: u64,
    /// The device.
    pub device: Device,
    /// The player the device belongs to.
    pub player: u32,
    /// What happened.
    pub kind: InputKind,
}

crate::message!(InputEvent = "syncra.input.event/1");

/// The value of an action.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum ActionValue {
    /// A button action went down.
    Pressed,
    /// A button action went up.
    Released,
    /// An axis action's value: x right, y up (forward), each -1 ..= 1, length at most 1.
    Axis {
        /// Right.
        x: f32,
        /// Up / forward.
        y: f32,
    },
}

/// An action of the action map happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionEvent {
    /// When the source saw the event that made it, `CLOCK_MONOTONIC` ns.
    pub time_ns: u64,
    /// The player.
    pub player: u32,
    /// The device it came from.
    pub device: Device,
    /// The action's name in the map ("jump", "move").
    pub action: String,
    /// Its value.
    pub value: ActionValue,
}

crate::message!(ActionEvent = "syncra.input.action/1");

/// Rumble a player's gamepads (or every gamepad). Answered with [`Rumbling`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rumble {
    /// The player; `None`: every pad.
    #[serde(default)]
    pub player: Option<u32>,
    /// The strong (low-frequency) motor, 0 ..= 1.
    #[serde(default)]
    pub strong: f32,
    /// The weak (high-frequency) motor, 0 ..= 1.
    #[serde(default)]
    pub weak: f32,
    /// How long, milliseconds (at most 10 s).
    pub duration_ms: u32,
}

/// Pads that rumble.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rumbling {
    /// The pads that took the command (a pad without force feedback does not count).
    pub pads: u32,
}

crate::message!(Rumbling = "syncra.input.rumbling/1");
crate::message!(Rumble = "syncra.input.rumble/1" => Rumbling, cli);

/// Ask the input driver what it has. Answered with [`InputInfo`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GetInputInfo;

/// One gamepad the driver knows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PadInfo {
    /// Its device id.
    pub id: u32,
    /// Its player.
    pub player: u32,
    /// Its name.
    pub name: String,
    /// Its stable identity.
    pub uuid: String,
    /// Whether it is plugged in now.
    pub connected: bool,
}

/// What the input driver has.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputInfo {
    /// Where gamepads come from: "gilrs", "script", or "none" (and why).
    pub gamepads_from: String,
    /// Every pad seen by this incarnation.
    pub pads: Vec<PadInfo>,
    /// The action map's actions.
    pub actions: Vec<String>,
    /// Events published.
    pub events: u64,
}

crate::message!(InputInfo = "syncra.input.info/1");
crate::message!(GetInputInfo = "syncra.input.get-info/1" => InputInfo, cli);

/// `input/pads`: every pad the driver has seen and the player it belongs to ([`PadTable`],
/// latest only). The runtime keeps the ring across the driver's restarts, so a pad keeps its
/// id and player through a crash of the driver as through an unplug.
pub const PADS_STREAM: &str = "pads";

/// Every pad seen, with its id and player.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PadTable {
    /// The pads.
    pub pads: Vec<PadInfo>,
}

crate::message!(PadTable = "syncra.input.pads/1");
