//! Checking what the renderer drew: a picture (an offscreen frame, a screenshot of a window)
//! against a world's deterministic scene at the tick the picture says it shows, through the
//! camera it was drawn with. Nothing expected is hard-coded: where each entity lands and its
//! colour come from the scene and the camera. And a private X server (Xvfb) to open windows on.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};

use syncra_protocol::render::{AMBIENT, Camera, ENTITY_HALF_SIZE};
use syncra_protocol::world::{SceneSnapshot, WorldSettings};

/// A picture: `width × height` RGB pixels, row by row from the top.
#[derive(Debug, Clone)]
pub struct Picture {
    /// Pixels across.
    pub width: u32,
    /// Pixels down.
    pub height: u32,
    /// RGB, 3 bytes a pixel.
    pub rgb: Vec<u8>,
}

impl Picture {
    /// From RGBA8 bytes (the frame stream's pixels).
    pub fn from_rgba(width: u32, height: u32, rgba: &[u8]) -> Picture {
        assert_eq!(
            rgba.len(),
            (width * height * 4) as usize,
            "a whole RGBA8 frame"
        );
        Picture {
            width,
            height,
            rgb: rgba
                .chunks_exact(4)
                .flat_map(|p| [p[0], p[1], p[2]])
                .collect(),
        }
    }

    /// From a binary PPM (P6, maxval 255), as `import … ppm:-` writes.
    pub fn from_ppm(bytes: &[u8]) -> Result<Picture, String> {
        let mut fields = Vec::new();
        let mut at = 0;
        // "P6", width, height, maxval, each followed by whitespace (no comments from import).
        while fields.len() < 4 {
            while bytes.get(at).is_some_and(|b| b.is_ascii_whitespace()) {
                at += 1;
            }
            let start = at;
            while bytes.get(at).is_some_and(|b| !b.is_ascii_whitespace()) {
                at += 1;
            }
            if start == at {
                return Err("a PPM header cut short".into());
            }
            fields.push(String::from_utf8_lossy(&bytes[start..at]).into_owned());
        }
        at += 1;
        let num = |i: usize| -> Result<u32, String> {
            fields[i]
                .parse()
                .map_err(|_| format!("PPM header field {:?}", fields[i]))
        };
        if fields[0] != "P6" || num(3)? != 255 {
            return Err(format!("not an 8-bit P6 PPM: {fields:?}"));
        }
        let (width, height) = (num(1)?, num(2)?);
        let rgb = bytes
            .get(at..at + (width * height * 3) as usize)
            .ok_or("a PPM cut short")?
            .to_vec();
        Ok(Picture { width, height, rgb })
    }

    /// The columns `x .. x + width` (one world's viewport).
    pub fn columns(&self, x: u32, width: u32) -> Picture {
        let rgb = (0..self.height)
            .flat_map(|y| {
                let row = ((y * self.width + x) * 3) as usize;
                self.rgb[row..row + (width * 3) as usize].iter().copied()
            })
            .collect();
        Picture {
            width,
            height: self.height,
            rgb,
        }
    }

    /// The pixel at (x, y).
    pub fn px(&self, x: u32, y: u32) -> [u8; 3] {
        let i = ((y * self.width + x) * 3) as usize;
        [self.rgb[i], self.rgb[i + 1], self.rgb[i + 2]]
    }
}

/// A world's scene at `tick`, simulated here from its settings.
pub fn scene_at(settings: &WorldSettings, tick: u64) -> SceneSnapshot {
    let mut scene = syncra_world::Scene::new(settings);
    for _ in 0..tick {
        scene.step();
    }
    let mut out = SceneSnapshot {
        world: String::new(),
        tick: 0,
        entities: Vec::new(),
        player: None,
    };
    scene.snapshot_into(&settings.name, &mut out);
    out
}

/// What a picture shows against what a scene says it should.
#[derive(Debug, Default)]
pub struct Check {
    /// Entities whose centre pixel could be checked (in view, nothing nearer overlapping).
    pub checked: usize,
    /// Those whose centre pixel is not their colour, lit.
    pub wrong: Vec<String>,
    /// Background pixels checked, far from every entity.
    pub background: usize,
    /// Those that were not the background colour.
    pub background_wrong: Vec<String>,
}

impl Check {
    /// Whether the picture shows the scene: enough entities checked, none wrong, enough
    /// background seen and all of it right.
    pub fn passed(&self, min_entities: usize) -> bool {
        self.checked >= min_entities
            && self.wrong.is_empty()
            && self.background > 100
            && self.background_wrong.is_empty()
    }
}

/// The background the renderer clears to, 8-bit.
pub const CLEAR_RGB: [u8; 3] = [5, 6, 9];

/// Check `picture` against `scene`, drawn with the default camera over the whole picture.
pub fn check(picture: &Picture, scene: &SceneSnapshot) -> Check {
    let (width, height) = (picture.width, picture.height);
    let cam = Camera::default();
    // Each entity's centre on screen, its depth, and a generous radius (the cube's corners).
    let reach = ENTITY_HALF_SIZE * 3f32.sqrt();
    let placed: Vec<_> = scene
        .entities
        .iter()
        .filter_map(|e| {
            let [x, y, d] = cam.project(e.position, width, height)?;
            let r = cam.pixel_radius(e.position, reach, height) * 1.3 + 2.0;
            Some((e, x, y, d, r))
        })
        .collect();
    let mut c = Check::default();
    for &(e, x, y, d, r) in &placed {
        let inside = x >= 2.0 && y >= 2.0 && x < width as f32 - 2.0 && y < height as f32 - 2.0;
        let covered = placed
            .iter()
            .any(|&(o, ox, oy, od, or)| o.id != e.id && od < d && (ox - x).hypot(oy - y) < r + or);
        if !inside || covered {
            continue;
        }
        c.checked += 1;
        let got = picture.px(x as u32, y as u32).map(|v| v as f32 / 255.0);
        let want = [e.colour[0], e.colour[1], e.colour[2]];
        // The lit colour is the entity's colour times one factor in AMBIENT..=1.
        let k = got.iter().zip(&want).map(|(g, w)| g * w).sum::<f32>()
            / want.iter().map(|w| w * w).sum::<f32>().max(1e-6);
        let off = got
            .iter()
            .zip(&want)
            .map(|(g, w)| (g - k * w).abs())
            .fold(0.0, f32::max);
        if !(AMBIENT - 0.03..=1.03).contains(&k) || off > 6.0 / 255.0 {
            c.wrong.push(format!(
                "entity {} at ({x:.0},{y:.0}): pixel {:?}, colour {want:?} (factor {k:.2}, off {off:.3})",
                e.id,
                picture.px(x as u32, y as u32)
            ));
        }
    }
    // The background, on a grid over the whole picture, wherever no entity can reach.
    for y in (4..height).step_by(23) {
        for x in (4..width).step_by(29) {
            let near = placed
                .iter()
                .any(|&(_, ex, ey, _, r)| (ex - x as f32).hypot(ey - y as f32) < r + 2.0);
            if near {
                continue;
            }
            c.background += 1;
            let got = picture.px(x, y);
            if got
                .iter()
                .zip(CLEAR_RGB)
                .any(|(&g, w)| (i32::from(g) - i32::from(w)).abs() > 1)
            {
                c.background_wrong.push(format!("({x},{y}): {got:?}"));
            }
        }
    }
    c
}

/// A private X server for one test: `Xvfb` on a display number it picks itself.
#[derive(Debug)]
pub struct Xvfb {
    child: Child,
    /// `:N`, for `DISPLAY`.
    pub display: String,
}

impl Xvfb {
    /// Start one (1600×1000, 24-bit) and wait until it takes connections.
    pub fn start() -> Xvfb {
        // -displayfd 1: it picks a free display number and writes it to stdout once it is
        // ready for connections.
        let mut child = Command::new("Xvfb")
            .args([
                "-displayfd",
                "1",
                "-screen",
                "0",
                "1600x1000x24",
                "-nolisten",
                "tcp",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("Xvfb (`cargo test-all` installs the xvfb package)");
        let mut line = String::new();
        let mut out = BufReader::new(child.stdout.take().expect("piped"));
        out.read_line(&mut line).expect("Xvfb's display number");
        let n: u32 = line.trim().parse().unwrap_or_else(|_| {
            let _ = child.kill();
            let mut rest = String::new();
            let _ = out.read_to_string(&mut rest);
            panic!("Xvfb did not start: {line:?} {rest}")
        });
        Xvfb {
            child,
            display: format!(":{n}"),
        }
    }

    /// A screenshot of window `id`, as a user would take it (`import -window ID`).
    pub fn screenshot(&self, id: u64) -> Result<Picture, String> {
        let out = Command::new("import")
            .args(["-window", &id.to_string(), "-depth", "8", "ppm:-"])
            .env("DISPLAY", &self.display)
            .output()
            .map_err(|e| format!("import (imagemagick): {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "import -window {id}: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Picture::from_ppm(&out.stdout)
    }

    /// Run `xdotool` with `args` on this display; its stdout.
    pub fn xdotool(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("xdotool")
            .args(args)
            .env("DISPLAY", &self.display)
            .output()
            .map_err(|e| format!("xdotool: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "xdotool {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Xvfb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
