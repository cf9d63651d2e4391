//! What the renderer publishes and how it sees the worlds: the frame stream's header, the
//! camera and the look of an entity. Anyone who wants to know where an entity lands on a
//! frame (a test, a picking tool, a thumbnail cropper) computes it from these, with the same
//! numbers the renderer's shader uses.

use glam::{Mat4, Vec3, Vec4};
use serde::{Deserialize, Serialize};

/// The renderer's frame stream: `renderer/frame` (a bulk stream: a [`FrameHeader`] and the
/// pixels, RGBA8, row by row from the top, `width × 4` bytes a row).
pub const FRAME_STREAM: &str = "frame";

/// Half the side of the cube every entity is drawn as, metres.
pub const ENTITY_HALF_SIZE: f32 = 2.0;

/// Light every face gets, whatever its direction (0..1).
pub const AMBIENT: f32 = 0.35;

/// Direction towards the light (normalised in the shader): from above, front right.
pub const LIGHT_TOWARDS: [f32; 3] = [0.4, 1.0, 0.6];

/// What the frame behind a frame-stream message is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrameHeader {
    /// Pixels across.
    pub width: u32,
    /// Pixels down.
    pub height: u32,
    /// The renderer's frame number (it goes on across its restarts: the stream's sequence).
    pub sequence: u64,
    /// The worlds drawn, left to right, each with the tick it shows.
    pub worlds: Vec<WorldView>,
}

crate::message!(FrameHeader = "syncra.renderer.frame/1");

/// One world on a frame: its name, the tick shown, and the columns it takes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorldView {
    /// The world's name.
    pub world: String,
    /// The tick of the scene drawn.
    pub tick: u64,
    /// First pixel column of its viewport.
    pub x: u32,
    /// Its viewport's width, pixels (the full frame height).
    pub width: u32,
}

/// A perspective camera looking at the arena.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Camera {
    /// Where it is, metres.
    pub eye: [f32; 3],
    /// What it looks at.
    pub target: [f32; 3],
    /// Vertical field of view, degrees.
    pub fov_y_deg: f32,
    /// Near and far planes, metres.
    pub near: f32,
    /// Far plane, metres.
    pub far: f32,
}

impl Default for Camera {
    /// Above and in front of the arena (±50 m), all of it in view at 16:9.
    fn default() -> Self {
        Camera {
            eye: [0.0, 70.0, 150.0],
            target: [0.0, 0.0, 0.0],
            fov_y_deg: 45.0,
            near: 1.0,
            far: 500.0,
        }
    }
}

impl Camera {
    /// World → clip space for a viewport of `aspect` (width / height), depth 0..1 (wgpu's).
    pub fn view_proj(&self, aspect: f32) -> Mat4 {
        let view = Mat4::look_at_rh(self.eye.into(), self.target.into(), Vec3::Y);
        let proj = Mat4::perspective_rh(
            self.fov_y_deg.to_radians(),
            aspect.max(1e-3),
            self.near,
            self.far,
        );
        proj * view
    }

    /// Where `point` lands in a `width × height` viewport: pixel x, pixel y (from the top)
    /// and depth (0 near .. 1 far); `None` behind the camera or out of the depth range.
    pub fn project(&self, point: [f32; 3], width: u32, height: u32) -> Option<[f32; 3]> {
        let clip =
            self.view_proj(width as f32 / height as f32) * Vec4::from((Vec3::from(point), 1.0));
        clip_to_pixel(clip, width, height)
    }

    /// About the radius, pixels, of a sphere of `radius` metres at `point` in a viewport
    /// `height` pixels high, seen head-on (off the axis it stretches a little: add a margin
    /// when deciding what may overlap what).
    pub fn pixel_radius(&self, point: [f32; 3], radius: f32, height: u32) -> f32 {
        let distance = (Vec3::from(point) - Vec3::from(self.eye)).length();
        let per_unit = height as f32 / (2.0 * (self.fov_y_deg.to_radians() / 2.0).tan());
        per_unit * radius / (distance - radius).max(self.near)
    }
}

/// Where a point at `clip` (clip space, depth 0..1) lands in a `width × height` image: pixel
/// x, pixel y (from the top) and depth; `None` behind the eye or out of the depth range.
pub fn clip_to_pixel(clip: Vec4, width: u32, height: u32) -> Option<[f32; 3]> {
    if clip.w <= 0.0 {
        return None;
    }
    let ndc = clip.truncate() / clip.w;
    if !(0.0..=1.0).contains(&ndc.z) {
        return None;
    }
    Some([
        (ndc.x + 1.0) * 0.5 * width as f32,
        (1.0 - ndc.y) * 0.5 * height as f32,
        ndc.z,
    ])
}

/// The lit colour of a face with normal `normal` (world space) of an entity of `colour`
/// (linear RGB): what the renderer's shader computes.
pub fn shade(colour: [f32; 3], normal: [f32; 3]) -> [f32; 3] {
    let light = Vec3::from(LIGHT_TOWARDS).normalize();
    let k = AMBIENT + (1.0 - AMBIENT) * Vec3::from(normal).normalize().dot(light).max(0.0);
    colour.map(|c| (c * k).clamp(0.0, 1.0))
}

/// The spectrum strip the renderer draws along the bottom of a frame from `audio/fft`: this
/// many bands, spaced evenly in log frequency from [`SPECTRUM_LOW_HZ`] to Nyquist
/// ([`crate::audio::Spectrum::bands`]).
pub const SPECTRUM_BANDS: usize = 32;
/// The lowest frequency of the strip, Hz.
pub const SPECTRUM_LOW_HZ: f32 = 40.0;
/// The strip's height, a fraction of the frame's.
pub const SPECTRUM_HEIGHT: f32 = 0.15;
/// A bar's colour (linear RGB, written as is to an RGBA8 frame).
pub const SPECTRUM_RGB: [f32; 3] = [0.25, 0.95, 0.55];
/// The level a bar shows, 0 ..= 1, of a band magnitude: 60 dB of range, full at 0 dBFS.
pub fn spectrum_level(magnitude: f32) -> f32 {
    if magnitude <= 0.0 || !magnitude.is_finite() {
        return 0.0;
    }
    ((20.0 * magnitude.log10() + 60.0) / 60.0).clamp(0.0, 1.0)
}

/// Band `i`'s bar on a `width × height` frame at `level`: (first column, last column
/// exclusive, top row, bottom row exclusive). Bars leave a pixel gap between them.
pub fn spectrum_bar(i: usize, width: u32, height: u32, level: f32) -> (u32, u32, u32, u32) {
    let n = SPECTRUM_BANDS as u32;
    let x0 = width * i as u32 / n;
    let x1 = (width * (i as u32 + 1) / n).saturating_sub(1).max(x0 + 1);
    let strip = (height as f32 * SPECTRUM_HEIGHT).round() as u32;
    let h = (strip as f32 * level.clamp(0.0, 1.0)).round() as u32;
    (x0, x1, height - h, height)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_camera_sees_the_whole_arena_and_puts_its_target_in_the_middle() {
        let cam = Camera::default();
        let [x, y, _] = cam
            .project(cam.target, 1280, 720)
            .expect("the target is in view");
        assert!(
            (x - 640.0).abs() < 0.5 && (y - 360.0).abs() < 0.5,
            "{x},{y}"
        );
        for corner in [
            [-50.0, -50.0, -50.0],
            [50.0, 50.0, 50.0],
            [-50.0, 50.0, 50.0],
            [50.0, -50.0, -50.0],
        ] {
            let [x, y, d] = cam.project(corner, 1280, 720).expect("a corner is in view");
            assert!(
                (0.0..1280.0).contains(&x) && (0.0..720.0).contains(&y),
                "{corner:?} → {x},{y}"
            );
            assert!((0.0..1.0).contains(&d));
        }
        assert_eq!(
            cam.project([0.0, 70.0, 300.0], 1280, 720),
            None,
            "behind the eye"
        );
    }

    #[test]
    fn nearer_is_less_deep_and_bigger() {
        let cam = Camera::default();
        let near = cam.project([0.0, 0.0, 40.0], 640, 360).expect("in view");
        let far = cam.project([0.0, 0.0, -40.0], 640, 360).expect("in view");
        assert!(near[2] < far[2]);
        assert!(
            cam.pixel_radius([0.0, 0.0, 40.0], 2.0, 360)
                > cam.pixel_radius([0.0, 0.0, -40.0], 2.0, 360)
        );
    }

    #[test]
    fn a_face_towards_the_light_is_brightest_and_one_away_gets_the_ambient() {
        let lit = shade([1.0, 0.5, 0.0], LIGHT_TOWARDS);
        assert!((lit[0] - 1.0).abs() < 1e-5 && (lit[1] - 0.5).abs() < 1e-5);
        let dark = shade([1.0, 0.5, 0.0], LIGHT_TOWARDS.map(|c| -c));
        assert!((dark[0] - AMBIENT).abs() < 1e-5);
    }
}
