//! Paths, interaction profiles and action state: the interning path table, which binding
//! paths each supported profile has, the input table fed by `inputs.jsonl`, and how an
//! action's value is resolved through its bindings. Pure: no OpenXR types.

use std::collections::HashMap;

use crate::poses::Hand;

/// The Oculus Touch profile (preferred when suggested).
pub(crate) const OCULUS_TOUCH: &str = "/interaction_profiles/oculus/touch_controller";
/// The Khronos simple controller profile.
pub(crate) const SIMPLE: &str = "/interaction_profiles/khr/simple_controller";
/// Profiles in order of preference.
pub(crate) const PROFILES: [&str; 2] = [OCULUS_TOUCH, SIMPLE];
/// The left hand's top-level path.
pub(crate) const LEFT: &str = "/user/hand/left";
/// The right hand's top-level path.
pub(crate) const RIGHT: &str = "/user/hand/right";

/// Interned path strings; `XrPath` values are indices + 1 (0 is `XR_NULL_PATH`).
#[derive(Debug, Default)]
pub(crate) struct PathTable {
    strings: Vec<String>,
    ids: HashMap<String, u64>,
}

impl PathTable {
    /// The path's id, interning it; `None` when the string is not a well-formed path.
    pub(crate) fn intern(&mut self, s: &str) -> Option<u64> {
        if !well_formed_path(s) {
            return None;
        }
        if let Some(&id) = self.ids.get(s) {
            return Some(id);
        }
        self.strings.push(s.to_owned());
        let id = self.strings.len() as u64;
        self.ids.insert(s.to_owned(), id);
        Some(id)
    }

    /// The string of path `id`, if it was interned.
    pub(crate) fn get(&self, id: u64) -> Option<&str> {
        let index = usize::try_from(id.checked_sub(1)?).ok()?;
        self.strings.get(index).map(String::as_str)
    }
}

/// OpenXR path syntax: `/`-separated non-empty segments of `[a-z0-9-_.]`, not all dots.
pub(crate) fn well_formed_path(s: &str) -> bool {
    let Some(rest) = s.strip_prefix('/') else {
        return false;
    };
    s.len() < 256
        && rest.split('/').all(|seg| {
            !seg.is_empty()
                && seg.chars().any(|c| c != '.')
                && seg
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c))
        })
}

/// Action and action set names: non-empty `[a-z0-9-_.]`.
pub(crate) fn well_formed_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c))
}

/// The hand a path belongs to.
pub(crate) fn hand_of(path: &str) -> Option<Hand> {
    let under =
        |top: &str| path == top || path.strip_prefix(top).is_some_and(|r| r.starts_with('/'));
    if under(LEFT) {
        Some(Hand::Left)
    } else if under(RIGHT) {
        Some(Hand::Right)
    } else {
        None
    }
}

/// The top-level path of `hand`.
pub(crate) fn hand_path(hand: Hand) -> &'static str {
    match hand {
        Hand::Left => LEFT,
        Hand::Right => RIGHT,
    }
}

const BOTH_TOUCH: &[&str] = &[
    "input/squeeze",
    "input/squeeze/value",
    "input/trigger",
    "input/trigger/value",
    "input/trigger/touch",
    "input/thumbstick",
    "input/thumbstick/x",
    "input/thumbstick/y",
    "input/thumbstick/click",
    "input/thumbstick/touch",
    "input/thumbrest/touch",
    "input/grip",
    "input/grip/pose",
    "input/aim",
    "input/aim/pose",
    "output/haptic",
];
const LEFT_TOUCH: &[&str] = &[
    "input/x",
    "input/x/click",
    "input/x/touch",
    "input/y",
    "input/y/click",
    "input/y/touch",
    "input/menu",
    "input/menu/click",
];
const RIGHT_TOUCH: &[&str] = &[
    "input/a",
    "input/a/click",
    "input/a/touch",
    "input/b",
    "input/b/click",
    "input/b/touch",
    "input/system",
    "input/system/click",
];
const BOTH_SIMPLE: &[&str] = &[
    "input/select",
    "input/select/click",
    "input/menu",
    "input/menu/click",
    "input/grip",
    "input/grip/pose",
    "input/aim",
    "input/aim/pose",
    "output/haptic",
];

/// The profile named `name`, if this headset has it.
pub(crate) fn profile(name: &str) -> Option<&'static str> {
    PROFILES.into_iter().find(|p| *p == name)
}

/// Whether `binding` is a path of `profile`'s controllers.
pub(crate) fn binding_supported(profile: &str, binding: &str) -> bool {
    let Some(hand) = hand_of(binding) else {
        return false;
    };
    let Some(component) = binding
        .strip_prefix(hand_path(hand))
        .and_then(|r| r.strip_prefix('/'))
    else {
        return false;
    };
    let lists: &[&[&str]] = match (profile, hand) {
        (OCULUS_TOUCH, Hand::Left) => &[BOTH_TOUCH, LEFT_TOUCH],
        (OCULUS_TOUCH, Hand::Right) => &[BOTH_TOUCH, RIGHT_TOUCH],
        (SIMPLE, _) => &[BOTH_SIMPLE],
        _ => &[],
    };
    lists.iter().any(|list| list.contains(&component))
}

/// The kinds of action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Boolean,
    Float,
    Vector2,
    Pose,
    Vibration,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Stored {
    Scalar(f32),
    Stick([f32; 2]),
}

/// Input path → value, as set by `inputs.jsonl`.
#[derive(Debug, Default)]
pub(crate) struct Inputs {
    values: HashMap<String, Stored>,
}

impl Inputs {
    pub(crate) fn set_scalar(&mut self, path: &str, value: f32) {
        self.values.insert(path.to_owned(), Stored::Scalar(value));
    }

    pub(crate) fn set_stick(&mut self, path: &str, xy: [f32; 2]) {
        self.values.insert(path.to_owned(), Stored::Stick(xy));
    }

    /// What a binding reads: the exact path, else a scalar under the binding's
    /// identifier (`…/trigger` ↔ `…/trigger/value`), else a stick's component
    /// (`…/thumbstick/x`). Unset inputs read zero.
    pub(crate) fn read(&self, binding: &str) -> [f32; 2] {
        let stored = |p: &str| self.values.get(p).copied();
        let scalar = |p: &str| match stored(p) {
            Some(Stored::Scalar(v)) => Some([v, 0.0]),
            _ => None,
        };
        if let Some(v) = stored(binding) {
            return match v {
                Stored::Scalar(v) => [v, 0.0],
                Stored::Stick(xy) => xy,
            };
        }
        let parent = binding.rsplit_once('/').map(|(p, _)| p).unwrap_or_default();
        let found = match binding.rsplit('/').next() {
            Some("value" | "click") => scalar(parent),
            Some(c @ ("x" | "y")) => match stored(parent) {
                Some(Stored::Stick([x, y])) => Some([if c == "x" { x } else { y }, 0.0]),
                _ => None,
            },
            _ => None,
        };
        found
            .or_else(|| scalar(&format!("{binding}/value")))
            .or_else(|| scalar(&format!("{binding}/click")))
            .unwrap_or_default()
    }

    /// The value an action of `kind` gets from `bindings` (already narrowed to the current
    /// profile and the subaction path): the reading of largest magnitude. `None` when there
    /// is no binding (the action is inactive).
    pub(crate) fn resolve<'a>(
        &self,
        kind: Kind,
        bindings: impl IntoIterator<Item = &'a str>,
    ) -> Option<[f32; 2]> {
        let mut best: Option<[f32; 2]> = None;
        for binding in bindings {
            let [x, y] = self.read(binding);
            let v = match kind {
                Kind::Boolean => [if x > 0.5 { 1.0 } else { 0.0 }, 0.0],
                Kind::Float => [x, 0.0],
                Kind::Vector2 => [x, y],
                Kind::Pose | Kind::Vibration => [0.0, 0.0],
            };
            let magnitude = |v: [f32; 2]| v[0].hypot(v[1]);
            if best.is_none_or(|b| magnitude(v) > magnitude(b)) {
                best = Some(v);
            }
        }
        best
    }
}

/// An action's state for one subaction path, as of the last `xrSyncActions`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct ActionValue {
    pub(crate) value: [f32; 2],
    pub(crate) active: bool,
    pub(crate) changed: bool,
    pub(crate) last_change_ns: i64,
}

impl ActionValue {
    /// Takes the value resolved at a sync at `now_ns` (`None`: inactive).
    pub(crate) fn sync(&mut self, resolved: Option<[f32; 2]>, now_ns: i64) {
        let value = resolved.unwrap_or_default();
        self.changed = resolved.is_some() && value != self.value;
        if self.changed {
            self.last_change_ns = now_ns;
        }
        self.value = value;
        self.active = resolved.is_some();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_intern_to_stable_nonzero_ids() {
        let mut t = PathTable::default();
        let a = t.intern("/user/hand/left").unwrap();
        assert_ne!(a, 0);
        assert_eq!(t.intern("/user/hand/left"), Some(a));
        assert_ne!(t.intern("/user/hand/right"), Some(a));
        assert_eq!(t.get(a), Some("/user/hand/left"));
        assert_eq!(t.get(0), None);
        assert_eq!(t.get(99), None);
    }

    #[test]
    fn malformed_paths_are_refused() {
        for bad in [
            "",
            "user",
            "/",
            "/user/",
            "/user//hand",
            "/User",
            "/user/..",
            "/a b",
        ] {
            assert!(!well_formed_path(bad), "{bad:?}");
        }
        assert!(well_formed_path(
            "/interaction_profiles/khr/simple_controller"
        ));
    }

    #[test]
    fn bindings_are_checked_against_the_profile_and_hand() {
        assert!(binding_supported(
            OCULUS_TOUCH,
            "/user/hand/right/input/a/click"
        ));
        assert!(!binding_supported(
            OCULUS_TOUCH,
            "/user/hand/left/input/a/click"
        ));
        assert!(binding_supported(
            SIMPLE,
            "/user/hand/left/input/select/click"
        ));
        assert!(!binding_supported(
            SIMPLE,
            "/user/hand/left/input/trigger/value"
        ));
        assert!(!binding_supported(OCULUS_TOUCH, "/user/head/input/trigger"));
        assert_eq!(hand_of("/user/hand/leftover"), None);
    }

    #[test]
    fn a_binding_reads_its_identifier_and_a_sticks_components() {
        let mut i = Inputs::default();
        i.set_scalar("/user/hand/right/input/trigger/value", 0.75);
        i.set_stick("/user/hand/left/input/thumbstick", [0.5, -0.25]);
        assert_eq!(i.read("/user/hand/right/input/trigger/value"), [0.75, 0.0]);
        assert_eq!(i.read("/user/hand/right/input/trigger"), [0.75, 0.0]);
        assert_eq!(i.read("/user/hand/left/input/thumbstick"), [0.5, -0.25]);
        assert_eq!(i.read("/user/hand/left/input/thumbstick/y"), [-0.25, 0.0]);
        // A stick's click is its own input, not the stick.
        assert_eq!(i.read("/user/hand/left/input/thumbstick/click"), [0.0, 0.0]);
        i.set_scalar("/user/hand/left/input/trigger", 0.25);
        assert_eq!(i.read("/user/hand/left/input/trigger/value"), [0.25, 0.0]);
    }

    #[test]
    fn both_hands_combine_to_the_larger_magnitude() {
        let mut i = Inputs::default();
        i.set_scalar("/user/hand/left/input/trigger/value", 0.3);
        i.set_scalar("/user/hand/right/input/trigger/value", -0.6);
        let both = [
            "/user/hand/left/input/trigger/value",
            "/user/hand/right/input/trigger/value",
        ];
        assert_eq!(i.resolve(Kind::Float, both), Some([-0.6, 0.0]));
        assert_eq!(i.resolve(Kind::Boolean, both), Some([0.0, 0.0]));
        assert_eq!(i.resolve(Kind::Float, []), None);
    }

    #[test]
    fn a_sync_marks_changes_once() {
        let mut v = ActionValue::default();
        v.sync(Some([1.0, 0.0]), 10);
        assert!(v.changed && v.active && v.last_change_ns == 10);
        v.sync(Some([1.0, 0.0]), 20);
        assert!(!v.changed && v.last_change_ns == 10);
        v.sync(None, 30);
        assert!(!v.changed && !v.active);
    }
}
