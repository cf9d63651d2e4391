//! The action map: what a game calls its inputs ("jump", "move") and which keys, buttons and
//! sticks make them.
//!
//! ```toml
//! [drivers.input.settings.actions]
//! jump = ["Space", "Gamepad.South"]
//! fire = ["Mouse.Left", "Gamepad.RightTrigger2"]
//! move = { axis = "LeftStick", keys = ["W", "A", "S", "D"] }   # up, left, down, right
//! ```
//!
//! Keys are physical keys named as on a US keyboard ("W" is the key labelled W there, also on
//! an AZERTY layout): a letter, a digit, "F1" … "F24", or a name such as "Space",
//! "ArrowLeft", "Enter", "Escape", "ShiftLeft". Mouse buttons are "Mouse.Left", "Mouse.Right",
//! "Mouse.Middle"; gamepad buttons "Gamepad.South" (A on Xbox, ✕ on PlayStation), "East",
//! "North", "West", "LeftTrigger", "LeftTrigger2", "RightTrigger", "RightTrigger2",
//! "Select", "Start", "Mode", "LeftThumb", "RightThumb", "DPadUp", "DPadDown", "DPadLeft",
//! "DPadRight"; XR controller buttons (from the XR driver's `xr/actions`) "XR.A", "XR.B",
//! "XR.X", "XR.Y", "XR.Menu", "XR.LeftTrigger", "XR.RightTrigger", "XR.LeftSqueeze",
//! "XR.RightSqueeze" (a trigger or squeeze is down from half way). An axis is "LeftStick",
//! "RightStick" or "DPad"; an XR controller's thumbsticks are its left and right sticks, so an
//! axis action moves from a keyboard, a gamepad or a headset's controller alike.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Deserialize;
use syncra_node::input::ActionValue;

/// One action as config writes it.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum ActionSpec {
    /// A button action: any of these bindings.
    Buttons(Vec<String>),
    /// An axis action: a stick, and/or four keys (up, left, down, right).
    Axis {
        /// "LeftStick", "RightStick", "DPad".
        #[serde(default)]
        axis: Option<String>,
        /// Up, left, down, right.
        #[serde(default)]
        keys: Vec<String>,
    },
}

/// The default map: WASD / arrows / left stick move, Space / South jump.
pub(crate) fn default_actions() -> BTreeMap<String, ActionSpec> {
    let mut m = BTreeMap::new();
    m.insert(
        "jump".into(),
        ActionSpec::Buttons(vec![
            "Space".into(),
            "Gamepad.South".into(),
            "XR.A".into(),
            "XR.RightTrigger".into(),
        ]),
    );
    m.insert(
        "move".into(),
        ActionSpec::Axis {
            axis: Some("LeftStick".into()),
            keys: vec!["W".into(), "A".into(), "S".into(), "D".into()],
        },
    );
    m
}

/// An input a binding names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Binding {
    /// A physical key, by winit's code name ("KeyW", "Space").
    Key(String),
    /// A mouse button ("left").
    Mouse(String),
    /// A gamepad button, by gilrs's name ("South").
    Pad(String),
    /// An XR controller's button or trigger, by the XR driver's control name ("A",
    /// "RightTrigger").
    Xr(String),
}

/// Where held inputs come from, for [`ActionMap::release`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// The window's keyboard and mouse.
    Window,
    /// Gamepads.
    Pads,
    /// The XR controllers.
    Xr,
}

impl Source {
    fn holds(self, b: &Binding) -> bool {
        match b {
            Binding::Key(_) | Binding::Mouse(_) => self == Source::Window,
            Binding::Pad(_) => self == Source::Pads,
            Binding::Xr(_) => self == Source::Xr,
        }
    }
}

/// The prefix of an XR controller's stick axes in [`ActionMap::axis`] ("XR.LeftStickX"): the
/// same sticks as a pad's, kept apart so that either going away releases only its own.
pub(crate) const XR_STICK: &str = "XR.";

/// The XR controls a button binding may name (`XR.<name>`).
pub(crate) const XR_BUTTONS: &[&str] = &[
    "A",
    "B",
    "X",
    "Y",
    "Menu",
    "LeftTrigger",
    "RightTrigger",
    "LeftSqueeze",
    "RightSqueeze",
];

const PAD_BUTTONS: &[&str] = &[
    "South",
    "East",
    "North",
    "West",
    "C",
    "Z",
    "LeftTrigger",
    "LeftTrigger2",
    "RightTrigger",
    "RightTrigger2",
    "Select",
    "Start",
    "Mode",
    "LeftThumb",
    "RightThumb",
    "DPadUp",
    "DPadDown",
    "DPadLeft",
    "DPadRight",
];

const NAMED_KEYS: &[&str] = &[
    "Space",
    "Enter",
    "Escape",
    "Tab",
    "Backspace",
    "Delete",
    "Insert",
    "Home",
    "End",
    "PageUp",
    "PageDown",
    "ArrowUp",
    "ArrowDown",
    "ArrowLeft",
    "ArrowRight",
    "ShiftLeft",
    "ShiftRight",
    "ControlLeft",
    "ControlRight",
    "AltLeft",
    "AltRight",
    "SuperLeft",
    "SuperRight",
    "CapsLock",
    "Minus",
    "Equal",
    "BracketLeft",
    "BracketRight",
    "Backslash",
    "Semicolon",
    "Quote",
    "Backquote",
    "Comma",
    "Period",
    "Slash",
    "Numpad0",
    "Numpad1",
    "Numpad2",
    "Numpad3",
    "Numpad4",
    "Numpad5",
    "Numpad6",
    "Numpad7",
    "Numpad8",
    "Numpad9",
    "NumpadEnter",
];

/// Parse one binding name.
pub(crate) fn binding(name: &str) -> Result<Binding, String> {
    if let Some(b) = name.strip_prefix("XR.") {
        return XR_BUTTONS
            .contains(&b)
            .then(|| Binding::Xr(b.to_owned()))
            .ok_or_else(|| {
                format!(
                    "`{name}` is not an XR controller button (they are XR.{})",
                    XR_BUTTONS.join(", XR.")
                )
            });
    }
    if let Some(b) = name.strip_prefix("Gamepad.") {
        return PAD_BUTTONS
            .contains(&b)
            .then(|| Binding::Pad(b.to_owned()))
            .ok_or_else(|| {
                format!(
                    "`{name}` is not a gamepad button (they are Gamepad.{})",
                    PAD_BUTTONS.join(", Gamepad.")
                )
            });
    }
    if let Some(b) = name.strip_prefix("Mouse.") {
        let b = b.to_ascii_lowercase();
        return matches!(b.as_str(), "left" | "right" | "middle" | "back" | "forward")
            .then_some(Binding::Mouse(b))
            .ok_or_else(|| {
                format!("`{name}` is not a mouse button (Mouse.Left, Right, Middle, Back, Forward)")
            });
    }
    let mut chars = name.chars();
    if let (Some(c), None) = (chars.next(), chars.next()) {
        if c.is_ascii_alphabetic() {
            return Ok(Binding::Key(format!("Key{}", c.to_ascii_uppercase())));
        }
        if c.is_ascii_digit() {
            return Ok(Binding::Key(format!("Digit{c}")));
        }
    }
    if let Some(n) = name.strip_prefix('F').and_then(|n| n.parse::<u32>().ok())
        && (1..=24).contains(&n)
    {
        return Ok(Binding::Key(name.to_owned()));
    }
    if NAMED_KEYS.contains(&name) || name.starts_with("Key") && name.len() == 4 {
        return Ok(Binding::Key(name.to_owned()));
    }
    Err(format!(
        "`{name}` is not a key, mouse button or gamepad button (keys: a letter, a digit, F1..F24, \
         or a name such as Space, Enter, ArrowLeft, ShiftLeft; Mouse.Left; Gamepad.South; XR.A)"
    ))
}

/// A compiled axis action.
#[derive(Debug, Clone)]
struct AxisAction {
    name: String,
    /// The stick's x and y axis names as gilrs gives them.
    stick: Option<(String, String)>,
    /// Up, left, down, right.
    keys: Option<[Binding; 4]>,
}

/// The action map, compiled, and the state it keeps per player.
#[derive(Debug, Default)]
pub(crate) struct ActionMap {
    buttons: Vec<(String, Vec<Binding>)>,
    axes: Vec<AxisAction>,
    /// What each player holds.
    held: HashMap<u32, HashSet<Binding>>,
    /// Each player's stick axes.
    sticks: HashMap<(u32, String), f32>,
    /// Last value of each (player, axis action), to publish changes only.
    last_axis: HashMap<(u32, usize), (f32, f32)>,
    /// Button actions down, per player.
    down: HashSet<(u32, usize)>,
}

/// A stick closer to its centre than this counts as centred.
pub(crate) const DEADZONE: f32 = 0.15;

impl ActionMap {
    /// Compile `spec`; an error names the action and the binding.
    pub(crate) fn new(spec: &BTreeMap<String, ActionSpec>) -> Result<ActionMap, String> {
        let mut map = ActionMap::default();
        for (name, s) in spec {
            let at = |e: String| format!("settings.actions.{name}: {e}");
            match s {
                ActionSpec::Buttons(list) => {
                    if list.is_empty() {
                        return Err(at("no bindings".into()));
                    }
                    let b = list
                        .iter()
                        .map(|n| binding(n))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(at)?;
                    map.buttons.push((name.clone(), b));
                }
                ActionSpec::Axis { axis, keys } => {
                    let stick = match axis.as_deref() {
                        None => None,
                        Some("LeftStick") => Some(("LeftStickX".into(), "LeftStickY".into())),
                        Some("RightStick") => Some(("RightStickX".into(), "RightStickY".into())),
                        Some("DPad") => Some(("DPadX".into(), "DPadY".into())),
                        Some(other) => {
                            return Err(at(format!(
                                "axis `{other}` is not LeftStick, RightStick or DPad"
                            )));
                        }
                    };
                    let keys = match keys.len() {
                        0 => None,
                        4 => {
                            let b = keys
                                .iter()
                                .map(|n| binding(n))
                                .collect::<Result<Vec<_>, _>>()
                                .map_err(at)?;
                            Some([b[0].clone(), b[1].clone(), b[2].clone(), b[3].clone()])
                        }
                        n => {
                            return Err(at(format!(
                                "keys has {n} keys: an axis takes four (up, left, down, right)"
                            )));
                        }
                    };
                    if stick.is_none() && keys.is_none() {
                        return Err(at("an axis needs `axis`, `keys` or both".into()));
                    }
                    map.axes.push(AxisAction {
                        name: name.clone(),
                        stick,
                        keys,
                    });
                }
            }
        }
        Ok(map)
    }

    /// The actions' names.
    pub(crate) fn names(&self) -> Vec<String> {
        self.buttons
            .iter()
            .map(|(n, _)| n.clone())
            .chain(self.axes.iter().map(|a| a.name.clone()))
            .collect()
    }

    /// A binding of `player` went down or up: the actions that changed.
    pub(crate) fn press(
        &mut self,
        player: u32,
        b: Binding,
        pressed: bool,
        out: &mut Vec<(String, ActionValue)>,
    ) {
        let held = self.held.entry(player).or_default();
        let changed = if pressed {
            held.insert(b.clone())
        } else {
            held.remove(&b)
        };
        if !changed {
            return; // a repeat, or a release of something never pressed
        }
        for (i, (name, bindings)) in self.buttons.iter().enumerate() {
            if !bindings.contains(&b) {
                continue;
            }
            let any = bindings.iter().any(|x| held.contains(x));
            let was = self.down.contains(&(player, i));
            if any && !was {
                self.down.insert((player, i));
                out.push((name.clone(), ActionValue::Pressed));
            } else if !any && was {
                self.down.remove(&(player, i));
                out.push((name.clone(), ActionValue::Released));
            }
        }
        self.update_axes(player, out);
    }

    /// A stick axis of `player` moved.
    pub(crate) fn axis(
        &mut self,
        player: u32,
        axis: &str,
        value: f32,
        out: &mut Vec<(String, ActionValue)>,
    ) {
        self.sticks.insert((player, axis.to_owned()), value);
        self.update_axes(player, out);
    }

    /// What `player` holds of one source goes up — the keyboard and mouse (the window lost
    /// focus), its pads (a pad went away) or the XR controllers (the headset went away) — and
    /// that source's sticks go back to rest: nothing stays stuck.
    pub(crate) fn release(
        &mut self,
        player: u32,
        from: Source,
        out: &mut Vec<(String, ActionValue)>,
    ) {
        let held: Vec<Binding> = self
            .held
            .get(&player)
            .map(|h| h.iter().filter(|b| from.holds(b)).cloned().collect())
            .unwrap_or_default();
        for b in held {
            self.press(player, b, false, out);
        }
        match from {
            Source::Window => {}
            Source::Pads => self
                .sticks
                .retain(|(p, n), _| *p != player || n.starts_with(XR_STICK)),
            Source::Xr => self
                .sticks
                .retain(|(p, n), _| *p != player || !n.starts_with(XR_STICK)),
        }
        self.update_axes(player, out);
    }

    fn update_axes(&mut self, player: u32, out: &mut Vec<(String, ActionValue)>) {
        let held = self.held.get(&player);
        for (i, a) in self.axes.iter().enumerate() {
            let stick = a.stick.as_ref().map(|(x, y)| {
                let get = |n: String| self.sticks.get(&(player, n)).copied().unwrap_or(0.0);
                // A pad's stick and an XR controller's: whichever is pushed further.
                let pad = (get(x.clone()), get(y.clone()));
                let xr = (get(format!("{XR_STICK}{x}")), get(format!("{XR_STICK}{y}")));
                if xr.0 * xr.0 + xr.1 * xr.1 > pad.0 * pad.0 + pad.1 * pad.1 {
                    xr
                } else {
                    pad
                }
            });
            let keys = a.keys.as_ref().map(|[up, left, down, right]| {
                let on = |b: &Binding| held.is_some_and(|h| h.contains(b)) as i32 as f32;
                (on(right) - on(left), on(up) - on(down))
            });
            let (x, y) = match (stick, keys) {
                (Some(s), _) if (s.0 * s.0 + s.1 * s.1).sqrt() > DEADZONE => s,
                (_, Some(k)) => k,
                _ => (0.0, 0.0),
            };
            let len = (x * x + y * y).sqrt();
            let (x, y) = if len > 1.0 {
                (x / len, y / len)
            } else {
                (x, y)
            };
            let last = self
                .last_axis
                .get(&(player, i))
                .copied()
                .unwrap_or((0.0, 0.0));
            if (x, y) != last {
                self.last_axis.insert((player, i), (x, y));
                out.push((a.name.clone(), ActionValue::Axis { x, y }));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map() -> ActionMap {
        ActionMap::new(&default_actions()).unwrap()
    }

    #[test]
    fn keys_and_pad_buttons_make_the_same_action_once() {
        let mut m = map();
        let mut out = Vec::new();
        m.press(0, binding("Space").unwrap(), true, &mut out);
        m.press(0, binding("Gamepad.South").unwrap(), true, &mut out);
        m.press(0, binding("Space").unwrap(), true, &mut out); // a repeat
        assert_eq!(out, vec![("jump".into(), ActionValue::Pressed)]);
        out.clear();
        m.press(0, binding("Space").unwrap(), false, &mut out);
        assert!(out.is_empty(), "South is still down");
        m.press(0, binding("Gamepad.South").unwrap(), false, &mut out);
        assert_eq!(out, vec![("jump".into(), ActionValue::Released)]);
    }

    #[test]
    fn wasd_and_the_stick_move_and_diagonals_are_not_faster() {
        let mut m = map();
        let mut out = Vec::new();
        m.press(0, binding("W").unwrap(), true, &mut out);
        m.press(0, binding("D").unwrap(), true, &mut out);
        let Some((_, ActionValue::Axis { x, y })) = out.last().cloned() else {
            panic!("{out:?}")
        };
        assert!((x - y).abs() < 1e-6 && ((x * x + y * y).sqrt() - 1.0).abs() < 1e-5);
        out.clear();
        m.axis(0, "LeftStickX", -0.5, &mut out);
        assert_eq!(
            out,
            vec![("move".into(), ActionValue::Axis { x: -0.5, y: 0.0 })]
        );
        out.clear();
        m.axis(0, "LeftStickX", 0.05, &mut out); // inside the dead zone: the keys again
        assert!(matches!(out[0].1, ActionValue::Axis { x, .. } if x > 0.5));
    }

    #[test]
    fn players_are_apart_and_a_lost_focus_or_pad_unsticks_only_its_own() {
        let mut m = map();
        let mut out = Vec::new();
        m.press(1, binding("Gamepad.South").unwrap(), true, &mut out);
        m.press(0, binding("A").unwrap(), true, &mut out);
        m.press(0, binding("Gamepad.South").unwrap(), true, &mut out);
        assert_eq!(out.len(), 3);
        out.clear();
        m.release(0, Source::Window, &mut out);
        assert_eq!(
            out,
            vec![("move".into(), ActionValue::Axis { x: 0.0, y: 0.0 })],
            "the keys go up, player 0's pad button stays"
        );
        out.clear();
        m.release(0, Source::Pads, &mut out);
        assert_eq!(out, vec![("jump".into(), ActionValue::Released)]);
    }

    #[test]
    fn a_bad_binding_is_named_with_its_action() {
        let mut spec = default_actions();
        spec.insert("fire".into(), ActionSpec::Buttons(vec!["Spcae".into()]));
        let e = ActionMap::new(&spec).unwrap_err();
        assert!(
            e.starts_with("settings.actions.fire: `Spcae` is not a key"),
            "{e}"
        );
        spec.remove("fire");
        spec.insert(
            "look".into(),
            ActionSpec::Axis {
                axis: Some("Stick".into()),
                keys: vec![],
            },
        );
        assert!(ActionMap::new(&spec).unwrap_err().contains("axis `Stick`"));
        assert_eq!(binding("w").unwrap(), Binding::Key("KeyW".into()));
        assert_eq!(binding("F12").unwrap(), Binding::Key("F12".into()));
        assert!(binding("Gamepad.Jump").is_err());
    }

    #[test]
    fn an_xr_controller_acts_like_a_pad_and_lets_go_only_of_its_own() {
        let mut m = map();
        let mut out = Vec::new();
        m.press(0, binding("XR.RightTrigger").unwrap(), true, &mut out);
        assert_eq!(out, vec![("jump".into(), ActionValue::Pressed)]);
        out.clear();
        // The window losing focus does not let go of the controller's trigger…
        m.release(0, Source::Window, &mut out);
        assert!(out.is_empty(), "{out:?}");
        // …the XR driver going away does.
        m.release(0, Source::Xr, &mut out);
        assert_eq!(out, vec![("jump".into(), ActionValue::Released)]);
        out.clear();
        // The thumbstick moves `move`; a pad's stick pushed further wins, and each source
        // going away takes only its own stick back to rest.
        m.axis(0, &format!("{XR_STICK}LeftStickY"), 0.5, &mut out);
        assert_eq!(
            out,
            vec![("move".into(), ActionValue::Axis { x: 0.0, y: 0.5 })]
        );
        out.clear();
        m.axis(0, "LeftStickX", -0.9, &mut out);
        assert_eq!(
            out,
            vec![("move".into(), ActionValue::Axis { x: -0.9, y: 0.0 })]
        );
        out.clear();
        m.release(0, Source::Pads, &mut out);
        assert_eq!(
            out,
            vec![("move".into(), ActionValue::Axis { x: 0.0, y: 0.5 })]
        );
        out.clear();
        m.release(0, Source::Xr, &mut out);
        assert_eq!(
            out,
            vec![("move".into(), ActionValue::Axis { x: 0.0, y: 0.0 })]
        );
        assert!(
            binding("XR.Trigger")
                .unwrap_err()
                .contains("XR.RightTrigger")
        );
    }
}
