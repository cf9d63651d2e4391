//! What the XR driver publishes and takes, and how an eye sees the arena.
//!
//! The XR driver (`syncra-xr`) runs an OpenXR session paced by the headset's runtime. Every
//! frame it publishes where the head, both eyes and both hands will be when that frame is
//! shown ([`XrPose`] on `xr/pose`), and each change of a controller's buttons, triggers and
//! sticks ([`XrControl`] on `xr/actions`). The renderer draws the world once per eye from
//! those views and publishes the pair on `renderer/eyes` (a bulk stream: an [`EyeFrame`]
//! header, then one RGBA8 image of both eyes side by side, rows from the top); the XR
//! driver copies them into the runtime's swapchain and submits them with the views they were
//! drawn from, so the compositor can reproject what arrived late.
//!
//! Space: OpenXR's stage space (metres, +Y up, −Z ahead of where the user stood when the
//! stage was set up). The arena (±50 m) is shown as a table-top model: [`Placement`] says
//! where its centre stands in the stage and how much smaller it is. [`eye_view_proj`] is the
//! matrix the renderer's shader uses for an eye; [`project`] says where an arena point lands
//! in an eye's image, for tests and tools.

use glam::{Mat4, Quat, Vec3, Vec4};
use serde::{Deserialize, Serialize};

/// The XR driver's pose stream: `xr/pose` (latest only: one [`XrPose`] per headset frame).
pub const POSE_STREAM: &str = "pose";

/// The XR driver's controller stream: `xr/actions` (every change, in order).
pub const CONTROLS_STREAM: &str = "actions";

/// The renderer's eye frames: `renderer/eyes` (bulk, latest only: an [`EyeFrame`] and one
/// image of both eyes side by side).
pub const EYES_STREAM: &str = "eyes";

/// A position and an orientation in stage space.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Pose {
    /// Metres.
    pub position: [f32; 3],
    /// A unit quaternion, `[x, y, z, w]` (OpenXR's order).
    pub orientation: [f32; 4],
}

impl Default for Pose {
    fn default() -> Self {
        Pose {
            position: [0.0; 3],
            orientation: [0.0, 0.0, 0.0, 1.0],
        }
    }
}

impl Pose {
    /// Pose space → stage space.
    pub fn matrix(&self) -> Mat4 {
        Mat4::from_rotation_translation(
            Quat::from_array(self.orientation).normalize(),
            Vec3::from(self.position),
        )
    }
}

/// An eye's field of view: the angles, radians, of the four sides of its image from the
/// direction it looks (left and down are negative). OpenXR's views are asymmetric.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Fov {
    /// Left side, radians (negative).
    pub left: f32,
    /// Right side, radians.
    pub right: f32,
    /// Top side, radians.
    pub up: f32,
    /// Bottom side, radians (negative).
    pub down: f32,
}

/// Where an eye is and what it sees.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EyeView {
    /// The eye, in stage space.
    pub pose: Pose,
    /// Its field of view.
    pub fov: Fov,
}

/// An OpenXR session's state, as the runtime last said.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionState {
    /// Created; the runtime is not ready for frames.
    Idle,
    /// Ready: the driver begins the session.
    Ready,
    /// Frames run; nothing is shown yet.
    Synchronized,
    /// Shown, without input focus.
    Visible,
    /// Shown, with input focus: controllers act.
    Focused,
    /// The runtime asked the session to end.
    Stopping,
    /// The headset is going away: the session must end.
    LossPending,
    /// The runtime wants the application to leave.
    Exiting,
}

impl SessionState {
    /// The name status shows.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Idle => "idle",
            SessionState::Ready => "ready",
            SessionState::Synchronized => "synchronized",
            SessionState::Visible => "visible",
            SessionState::Focused => "focused",
            SessionState::Stopping => "stopping",
            SessionState::LossPending => "loss pending",
            SessionState::Exiting => "exiting",
        }
    }
}

/// One headset frame: where everything will be when it is shown. `xr/pose`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct XrPose {
    /// The XR driver's frame number (it goes on across the driver's restarts).
    pub frame: u64,
    /// The runtime's predicted display time of this frame (`XrTime`, nanoseconds). An eye
    /// frame drawn for this pose carries it back, and the driver submits it with it.
    pub display_time: i64,
    /// The same instant on `CLOCK_MONOTONIC` ([`crate::audio::monotonic_ns`]).
    pub display_monotonic_ns: u64,
    /// When the driver located these poses, `CLOCK_MONOTONIC` nanoseconds.
    pub located_ns: u64,
    /// The headset's frame period, nanoseconds.
    pub period_ns: u64,
    /// The session's state.
    pub state: SessionState,
    /// Whether the runtime wants this frame drawn (the session is visible).
    pub should_render: bool,
    /// The head.
    pub head: Pose,
    /// Left eye, right eye.
    pub views: [EyeView; 2],
    /// Left hand, right hand (grip poses), while tracked.
    pub hands: [Option<Pose>; 2],
    /// The image size the runtime recommends per eye, pixels.
    pub eye_size: [u32; 2],
    /// Where the arena stands in the headset's space (the XR driver's `placement` setting):
    /// the renderer draws it there and a world hears from the head placed by it.
    pub placement: Placement,
}

crate::message!(XrPose = "syncra.xr.pose/1");

/// A controller input whose value changed. `xr/actions`.
///
/// Controls: `LeftTrigger`, `RightTrigger`, `LeftSqueeze`, `RightSqueeze` (0 ..= 1), `A`,
/// `B`, `X`, `Y`, `Menu` (0 or 1), `LeftThumbstick`, `RightThumbstick` (`x`, `y` in −1 ..= 1,
/// +y forward).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct XrControl {
    /// When the runtime saw the change, `CLOCK_MONOTONIC` nanoseconds.
    pub time_ns: u64,
    /// Which control.
    pub control: String,
    /// Its value (a stick's x).
    pub x: f32,
    /// A stick's y; 0 for the others.
    pub y: f32,
}

crate::message!(XrControl = "syncra.xr.control/1");

/// The controls [`XrControl::control`] names.
pub const CONTROLS: &[&str] = &[
    "LeftTrigger",
    "RightTrigger",
    "LeftSqueeze",
    "RightSqueeze",
    "A",
    "B",
    "X",
    "Y",
    "Menu",
    "LeftThumbstick",
    "RightThumbstick",
];

/// A hand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Hand {
    /// The left controller.
    Left,
    /// The right controller.
    Right,
}

/// Vibrate a controller (`syncra call xr syncra.xr.haptic/1 '{"amplitude": 0.8,
/// "duration_ms": 100}'`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Haptic {
    /// Which controller; none: both.
    #[serde(default)]
    pub hand: Option<Hand>,
    /// 0 ..= 1.
    pub amplitude: f32,
    /// How long.
    pub duration_ms: u32,
    /// Hz; 0: the runtime's choice.
    #[serde(default)]
    pub frequency_hz: f32,
}

/// What a [`Haptic`] did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HapticSent {
    /// Controllers that were sent the pulse (0 without a running session).
    pub hands: u32,
}

crate::message!(HapticSent = "syncra.xr.haptic-sent/1");
crate::message!(Haptic = "syncra.xr.haptic/1" => HapticSent, cli);

/// Ask the XR driver where it stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GetXrInfo;

/// What it answers (`syncra call xr syncra.xr.get-info/1`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct XrInfo {
    /// The OpenXR runtime and its version; empty without one.
    pub runtime: String,
    /// The headset (the system's name); empty without one.
    pub system: String,
    /// The session's state; `None` without a session.
    pub session: Option<SessionState>,
    /// Why there is no session, or what went wrong last; empty when all is well.
    pub reason: String,
    /// Frames this incarnation waited for (headset frames).
    pub frames: u64,
    /// Frames submitted with the renderer's eye images.
    pub submitted: u64,
    /// Frames submitted empty: no fresh eye frame had come.
    pub empty: u64,
    /// Headset frames missed: the runtime's frame came and went before the driver asked.
    pub missed: u64,
    /// Sessions this incarnation created (more than one: the headset came back).
    pub sessions: u64,
    /// The recommended eye image size, pixels.
    pub eye_size: [u32; 2],
    /// Display rate, Hz.
    pub rate_hz: f64,
}

crate::message!(XrInfo = "syncra.xr.info/1");
crate::message!(GetXrInfo = "syncra.xr.get-info/1" => XrInfo, cli);

/// Where the arena stands in the stage: its centre at `origin`, `scale` stage metres per
/// arena metre (the arena's ±50 m at 0.01 is a table-top model a metre across).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Placement {
    /// The arena's centre, stage metres.
    pub origin: [f32; 3],
    /// Stage metres per arena metre.
    pub scale: f32,
}

impl Default for Placement {
    /// A table-top model a metre across, its centre 1 m high and 1.6 m ahead of the stage's
    /// centre: from 0.5 m (its floor) to 1.5 m, all of it in view of a user standing there.
    fn default() -> Self {
        Placement {
            origin: [0.0, 1.0, -1.6],
            scale: 0.01,
        }
    }
}

impl Placement {
    /// Arena space → stage space.
    pub fn matrix(&self) -> Mat4 {
        Mat4::from_translation(Vec3::from(self.origin)) * Mat4::from_scale(Vec3::splat(self.scale))
    }
}

/// Near and far planes of an eye, stage metres.
pub const EYE_NEAR: f32 = 0.05;
/// Far plane, stage metres.
pub const EYE_FAR: f32 = 100.0;

/// The projection of an asymmetric field of view, looking down −Z, depth 0 (near) ..= 1
/// (far): wgpu's and Vulkan's clip space.
pub fn fov_projection(fov: Fov, near: f32, far: f32) -> Mat4 {
    let (l, r, u, d) = (
        fov.left.tan(),
        fov.right.tan(),
        fov.up.tan(),
        fov.down.tan(),
    );
    let w = r - l;
    let h = u - d;
    Mat4::from_cols(
        Vec4::new(2.0 / w, 0.0, 0.0, 0.0),
        Vec4::new(0.0, 2.0 / h, 0.0, 0.0),
        Vec4::new((r + l) / w, (u + d) / h, far / (near - far), -1.0),
        Vec4::new(0.0, 0.0, near * far / (near - far), 0.0),
    )
}

/// Arena space → an eye's clip space.
pub fn eye_view_proj(view: &EyeView, placement: &Placement) -> Mat4 {
    fov_projection(view.fov, EYE_NEAR, EYE_FAR) * view.pose.matrix().inverse() * placement.matrix()
}

/// Where an arena `point` lands in a `width × height` image of `view`: pixel x, pixel y
/// (from the top) and depth; `None` behind the eye or out of the depth range.
pub fn project(
    view: &EyeView,
    placement: &Placement,
    point: [f32; 3],
    width: u32,
    height: u32,
) -> Option<[f32; 3]> {
    let clip = eye_view_proj(view, placement) * Vec4::from((Vec3::from(point), 1.0));
    crate::render::clip_to_pixel(clip, width, height)
}

/// What an eye frame on `renderer/eyes` is: the pose it was drawn for (the XR driver submits
/// it with these views), the size of each eye's image, and the world shown. The pixels: one
/// RGBA8 image `2 × width` across and `height` down, rows from the top, the left eye in its
/// left half and the right eye in its right half (the pair can be looked at as one picture).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EyeFrame {
    /// The [`XrPose::frame`] it was drawn for.
    pub pose_frame: u64,
    /// That pose's predicted display time (`XrTime`).
    pub display_time: i64,
    /// When that pose was located, `CLOCK_MONOTONIC` nanoseconds.
    pub located_ns: u64,
    /// When the renderer had the pixels, `CLOCK_MONOTONIC` nanoseconds.
    pub drawn_ns: u64,
    /// Pixels across, each eye.
    pub width: u32,
    /// Pixels down, each eye.
    pub height: u32,
    /// The views drawn, left then right: exactly those of the pose.
    pub views: [EyeView; 2],
    /// Where the arena stood.
    pub placement: Placement,
    /// The world drawn and the tick shown; empty before any scene came.
    pub world: String,
    /// The tick shown.
    pub tick: u64,
}

crate::message!(EyeFrame = "syncra.renderer.eyes/1");

impl EyeFrame {
    /// Bytes of the side-by-side image; `None` if that does not fit a `usize` (a header
    /// from a process that lies).
    pub fn frame_len(&self) -> Option<usize> {
        (self.width as usize)
            .checked_mul(self.height as usize)?
            .checked_mul(8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(x: f32) -> EyeView {
        EyeView {
            pose: Pose {
                position: [x, 1.6, 0.0],
                ..Pose::default()
            },
            fov: Fov {
                left: -0.785,
                right: 0.785,
                up: 0.785,
                down: -0.785,
            },
        }
    }

    #[test]
    fn the_arena_sits_ahead_of_a_standing_user_and_each_eye_sees_it_from_its_side() {
        let p = Placement::default();
        let (l, r) = (view(-0.032), view(0.032));
        let centre_l = project(&l, &p, [0.0, 0.0, 0.0], 400, 400).expect("in view");
        let centre_r = project(&r, &p, [0.0, 0.0, 0.0], 400, 400).expect("in view");
        // Below the eyes (the table is lower), and each eye sees it nearer the other side.
        assert!(centre_l[1] > 200.0 && centre_r[1] > 200.0, "{centre_l:?}");
        assert!(
            centre_l[0] > 200.0 && centre_r[0] < 200.0,
            "{centre_l:?} {centre_r:?}"
        );
        assert!((centre_l[0] - 200.0 + centre_r[0] - 200.0).abs() < 0.01);
        for corner in [[-50.0, 0.0, -50.0], [50.0, 0.0, 50.0]] {
            let [x, y, d] = project(&l, &p, corner, 400, 400).expect("a corner is in view");
            assert!((0.0..400.0).contains(&x) && (0.0..400.0).contains(&y));
            assert!((0.0..1.0).contains(&d));
        }
    }

    #[test]
    fn an_asymmetric_fov_moves_the_centre_of_the_image() {
        let mut v = view(0.0);
        v.fov.left = -0.5;
        v.fov.right = 0.9;
        // A point straight ahead lands left of the middle: more of the image is on the right.
        let [x, y, _] = project(
            &v,
            &Placement {
                origin: [0.0, 1.6, -2.0],
                scale: 1.0,
            },
            [0.0, 0.0, 0.0],
            1000,
            1000,
        )
        .expect("in view");
        let expected = 1000.0 * 0.5f32.tan() / (0.9f32.tan() + 0.5f32.tan());
        assert!((x - expected).abs() < 0.5, "{x} vs {expected}");
        assert!((y - 500.0).abs() < 0.5);
    }

    #[test]
    fn a_point_behind_the_eye_is_not_in_view() {
        let p = Placement {
            origin: [0.0, 1.6, 2.0],
            scale: 1.0,
        };
        assert_eq!(project(&view(0.0), &p, [0.0, 0.0, 0.0], 100, 100), None);
    }
}
