//! The control directory: how a test drives the simulated headset and reads what it saw.
//!
//! The runtime finds the directory through [`DIR_ENV`]. The test writes `script.json`
//! (before the instance is created), appends input lines, creates or removes `unplugged`
//! and `capture`; the runtime writes `status.json`, `frames.log` and the capture files.
//! The serde types here are the only definition of those formats: the runtime side and
//! [`SimDir`] (the test side) both use them.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The environment variable naming the control directory. Unset: defaults, nothing written.
pub const DIR_ENV: &str = "SYNCRA_SIMXR_DIR";
/// The script, read at `xrCreateInstance`.
pub const SCRIPT_FILE: &str = "script.json";
/// Input lines ([`InputLine`]), appended by the test and followed by the runtime.
pub const INPUTS_FILE: &str = "inputs.jsonl";
/// While this file exists the headset is unplugged.
pub const UNPLUGGED_FILE: &str = "unplugged";
/// Created by the test to ask for a capture of the next projection layer.
pub const CAPTURE_REQUEST_FILE: &str = "capture";
/// The capture's metadata ([`CaptureMeta`]), written after the images.
pub const CAPTURE_META_FILE: &str = "capture.json";
/// The runtime's counters ([`SimStatus`]).
pub const STATUS_FILE: &str = "status.json";
/// One [`FrameLine`] per `xrEndFrame`.
pub const FRAMES_FILE: &str = "frames.log";

/// The name of the capture image for view `index`.
pub fn capture_image_file(index: usize) -> String {
    format!("capture-{index}.rgba")
}

/// What the simulated headset looks like and how its head moves. Every key is optional.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Script {
    /// Display refresh rate.
    pub rate_hz: f64,
    /// Recommended swapchain width per eye (the maximum is twice this).
    pub eye_width: u32,
    /// Recommended swapchain height per eye (the maximum is twice this).
    pub eye_height: u32,
    /// Distance between the eyes in metres.
    pub ipd_m: f32,
    /// The head's motion.
    pub head: HeadScript,
    /// Each eye's field of view.
    pub fov: Fov,
    /// The system name reported by `xrGetSystemProperties`.
    pub name: String,
}

impl Default for Script {
    fn default() -> Self {
        Self {
            rate_hz: 90.0,
            eye_width: 320,
            eye_height: 320,
            ipd_m: 0.064,
            head: HeadScript::default(),
            fov: Fov::default(),
            name: "Syncra simulated headset".to_owned(),
        }
    }
}

/// The head sits at `position` and yaws as `yaw_amplitude_deg · sin(2π·t/period_s)`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HeadScript {
    /// Head position in STAGE space, metres.
    pub position: [f32; 3],
    /// Peak yaw in degrees.
    pub yaw_amplitude_deg: f32,
    /// Period of the yaw oscillation in seconds.
    pub period_s: f32,
}

impl Default for HeadScript {
    fn default() -> Self {
        Self {
            position: [0.0, 1.6, 0.0],
            yaw_amplitude_deg: 10.0,
            period_s: 4.0,
        }
    }
}

/// A field of view as four angles in radians (left and down negative).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Fov {
    /// Angle of the left edge.
    pub left: f32,
    /// Angle of the right edge.
    pub right: f32,
    /// Angle of the top edge.
    pub up: f32,
    /// Angle of the bottom edge.
    pub down: f32,
}

impl Default for Fov {
    fn default() -> Self {
        Self {
            left: -0.785,
            right: 0.785,
            up: 0.785,
            down: -0.785,
        }
    }
}

/// One line of `inputs.jsonl`: a scalar (`value`; a button is 0 or 1) or a stick (`x`, `y`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputLine {
    /// The input's path, e.g. `/user/hand/right/input/trigger/value`.
    pub path: String,
    /// A scalar value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f32>,
    /// A stick's x.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x: Option<f32>,
    /// A stick's y.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y: Option<f32>,
}

impl InputLine {
    /// The (x, y) the line sets: a scalar goes in x. `None` when the line sets nothing.
    pub fn xy(&self) -> Option<[f32; 2]> {
        match (self.value, self.x, self.y) {
            (Some(v), None, None) => Some([v, 0.0]),
            (None, Some(x), Some(y)) => Some([x, y]),
            _ => None,
        }
    }
}

/// A pose as written in `capture.json`: orientation is a quaternion `[x, y, z, w]`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PoseJson {
    /// Position in metres.
    pub position: [f32; 3],
    /// Orientation quaternion `[x, y, z, w]`.
    pub orientation: [f32; 4],
}

/// One haptic pulse the application applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HapticRecord {
    /// The hand (`/user/hand/left` or `/user/hand/right`).
    pub path: String,
    /// Amplitude 0..1.
    pub amplitude: f32,
    /// Duration in nanoseconds (-1: the minimum the device supports).
    pub duration_ns: i64,
    /// Frequency in Hz (0: unspecified).
    pub frequency: f32,
}

/// `status.json`: counters over the whole process, and the current session's state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SimStatus {
    /// The process the runtime lives in.
    pub pid: u32,
    /// Instances created so far.
    pub instances: u64,
    /// Sessions created so far.
    pub sessions: u64,
    /// The current session's state (`FOCUSED`, ...), or `NONE`.
    pub state: String,
    /// `xrWaitFrame` calls that returned.
    pub frames_waited: u64,
    /// `xrEndFrame` calls that succeeded.
    pub frames_ended: u64,
    /// Of those, frames with at least one layer.
    pub frames_with_layers: u64,
    /// Display periods skipped because the application came late to `xrWaitFrame`.
    pub missed: u64,
    /// Frames whose `xrEndFrame` came after their predicted display time.
    pub late: u64,
    /// The last 16 haptic pulses.
    pub haptics: Vec<HapticRecord>,
    /// Haptic pulses so far.
    pub haptic_count: u64,
    /// The current interaction profile, empty before action sets are attached.
    pub profile: String,
    /// Input lines applied so far.
    pub inputs_applied: u64,
}

/// One view in `capture.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaptureViewMeta {
    /// Width of the image rect.
    pub width: u32,
    /// Height of the image rect.
    pub height: u32,
    /// The view pose the layer carried.
    pub pose: PoseJson,
    /// The field of view the layer carried.
    pub fov: Fov,
}

/// `capture.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaptureMeta {
    /// Index of the frame (its `xrEndFrame` count before it, over the process).
    pub frame: u64,
    /// The frame's display time.
    pub display_time_ns: i64,
    /// The swapchain's Vulkan format (the images are converted to RGBA order).
    pub format: u32,
    /// The views, in layer order.
    pub views: Vec<CaptureViewMeta>,
}

/// A captured view with its pixels.
#[derive(Debug, Clone, PartialEq)]
pub struct CapturedView {
    /// Width of the image rect.
    pub width: u32,
    /// Height of the image rect.
    pub height: u32,
    /// The view pose the layer carried.
    pub pose: PoseJson,
    /// The field of view the layer carried.
    pub fov: Fov,
    /// RGBA8 rows, top row first, `width * height * 4` bytes.
    pub rgba: Vec<u8>,
}

impl CapturedView {
    /// The RGBA value at (x, y), or `None` outside the image.
    pub fn pixel(&self, x: u32, y: u32) -> Option<[u8; 4]> {
        if x >= self.width || y >= self.height {
            return None;
        }
        let i = ((y * self.width + x) * 4) as usize;
        self.rgba.get(i..i + 4).and_then(|p| p.try_into().ok())
    }
}

/// A capture of one submitted projection layer.
#[derive(Debug, Clone, PartialEq)]
pub struct Capture {
    /// Index of the frame (its `xrEndFrame` count before it, over the process).
    pub frame: u64,
    /// The frame's display time.
    pub display_time_ns: i64,
    /// The swapchain's Vulkan format.
    pub format: u32,
    /// The views with their pixels.
    pub views: Vec<CapturedView>,
}

/// One line of `frames.log`: `frame display_time_ns end_ns layers pose_latency_ns late`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLine {
    /// Index of the frame (its `xrEndFrame` count before it, over the process).
    pub frame: u64,
    /// The display time the application submitted.
    pub display_time_ns: i64,
    /// CLOCK_MONOTONIC time of the `xrEndFrame` call.
    pub end_ns: i64,
    /// Number of layers submitted.
    pub layers: u32,
    /// `end_ns` minus the time the first view's pose was first returned by `xrLocateViews`
    /// (for the latest display time it was returned for: the swinging head comes back to the
    /// same pose), or -1 (no layer, or a pose the runtime never returned).
    pub pose_latency_ns: i64,
    /// The frame ended after its predicted display time.
    pub late: bool,
}

impl FrameLine {
    /// Parses one line; `None` when it is not a frame line.
    pub fn parse(line: &str) -> Option<Self> {
        let mut it = line.split_whitespace();
        let line = Self {
            frame: it.next()?.parse().ok()?,
            display_time_ns: it.next()?.parse().ok()?,
            end_ns: it.next()?.parse().ok()?,
            layers: it.next()?.parse().ok()?,
            pose_latency_ns: it.next()?.parse().ok()?,
            late: match it.next()? {
                "0" => false,
                "1" => true,
                _ => return None,
            },
        };
        it.next().is_none().then_some(line)
    }
}

impl std::fmt::Display for FrameLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} {} {} {} {}",
            self.frame,
            self.display_time_ns,
            self.end_ns,
            self.layers,
            self.pose_latency_ns,
            u8::from(self.late)
        )
    }
}

/// The test's handle on a control directory.
#[derive(Debug, Clone)]
pub struct SimDir {
    path: PathBuf,
}

impl SimDir {
    /// Uses (and creates) the directory at `path`.
    pub fn new(path: impl Into<PathBuf>) -> io::Result<Self> {
        let path = path.into();
        fs::create_dir_all(&path)?;
        Ok(Self { path })
    }

    /// The directory: set [`DIR_ENV`] to this.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `manifest.json` naming `library` (made absolute) and returns its path: set
    /// `XR_RUNTIME_JSON` to it.
    pub fn manifest(&self, library: &Path) -> io::Result<PathBuf> {
        let library = std::path::absolute(library)?;
        let manifest = serde_json::json!({
            "file_format_version": "1.0.0",
            "runtime": { "name": "syncra-simxr", "library_path": library },
        });
        let path = std::path::absolute(self.path.join("manifest.json"))?;
        write_atomic(&path, manifest.to_string().as_bytes())?;
        Ok(path)
    }

    /// Writes `script.json`; the next instance uses it.
    pub fn write_script(&self, script: &Script) -> io::Result<()> {
        let text = serde_json::to_string_pretty(script).map_err(io::Error::other)?;
        write_atomic(&self.path.join(SCRIPT_FILE), text.as_bytes())
    }

    /// Sets a scalar input (a button is 0 or 1), e.g. `/user/hand/right/input/trigger/value`.
    pub fn press(&self, path: &str, value: f32) -> io::Result<()> {
        self.append_input(&InputLine {
            path: path.to_owned(),
            value: Some(value),
            x: None,
            y: None,
        })
    }

    /// Sets a stick, e.g. `/user/hand/left/input/thumbstick`.
    pub fn stick(&self, path: &str, x: f32, y: f32) -> io::Result<()> {
        self.append_input(&InputLine {
            path: path.to_owned(),
            value: None,
            x: Some(x),
            y: Some(y),
        })
    }

    fn append_input(&self, line: &InputLine) -> io::Result<()> {
        let mut text = serde_json::to_string(line).map_err(io::Error::other)?;
        text.push('\n');
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path.join(INPUTS_FILE))?;
        file.write_all(text.as_bytes())
    }

    /// Unplugs the headset: sessions are lost and `xrGetSystem` fails until [`SimDir::plug`].
    pub fn unplug(&self) -> io::Result<()> {
        File::create(self.path.join(UNPLUGGED_FILE)).map(drop)
    }

    /// Plugs the headset back in.
    pub fn plug(&self) -> io::Result<()> {
        match fs::remove_file(self.path.join(UNPLUGGED_FILE)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Removes any previous capture and asks for one of the next projection layer.
    pub fn request_capture(&self) -> io::Result<()> {
        for name in [
            CAPTURE_META_FILE.to_owned(),
            capture_image_file(0),
            capture_image_file(1),
        ] {
            match fs::remove_file(self.path.join(name)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        File::create(self.path.join(CAPTURE_REQUEST_FILE)).map(drop)
    }

    /// The finished capture, or `None` while there is none.
    pub fn capture(&self) -> Option<Capture> {
        let meta: CaptureMeta =
            serde_json::from_slice(&fs::read(self.path.join(CAPTURE_META_FILE)).ok()?).ok()?;
        let views = meta
            .views
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let rgba = fs::read(self.path.join(capture_image_file(i))).ok()?;
                let complete = rgba.len() == v.width as usize * v.height as usize * 4;
                complete.then_some(CapturedView {
                    width: v.width,
                    height: v.height,
                    pose: v.pose,
                    fov: v.fov,
                    rgba,
                })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Capture {
            frame: meta.frame,
            display_time_ns: meta.display_time_ns,
            format: meta.format,
            views,
        })
    }

    /// The last `status.json`, or `None` before the runtime wrote one.
    pub fn status(&self) -> Option<SimStatus> {
        serde_json::from_slice(&fs::read(self.path.join(STATUS_FILE)).ok()?).ok()
    }

    /// Every complete line of `frames.log`.
    pub fn frames(&self) -> Vec<FrameLine> {
        let Ok(file) = File::open(self.path.join(FRAMES_FILE)) else {
            return Vec::new();
        };
        BufReader::new(file)
            .lines()
            .map_while(Result::ok)
            .filter_map(|l| FrameLine::parse(&l))
            .collect()
    }
}

/// Writes `bytes` to a temporary name beside `path`, then renames it into place.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    fs::write(&tmp, bytes)?;
    fs::rename(&tmp, path)
}

/// Follows `inputs.jsonl` as it grows, handing out each complete line once.
#[derive(Debug)]
pub(crate) struct InputFollower {
    path: PathBuf,
    offset: u64,
    partial: String,
}

impl InputFollower {
    pub(crate) fn new(path: PathBuf) -> Self {
        Self {
            path,
            offset: 0,
            partial: String::new(),
        }
    }

    /// The lines completed since the last poll: each parsed, or the parse error.
    pub(crate) fn poll(&mut self) -> Vec<Result<InputLine, String>> {
        let Ok(mut file) = File::open(&self.path) else {
            return Vec::new();
        };
        let mut bytes = Vec::new();
        if file.seek(SeekFrom::Start(self.offset)).is_err() || file.read_to_end(&mut bytes).is_err()
        {
            return Vec::new();
        }
        self.offset += bytes.len() as u64;
        self.partial.push_str(&String::from_utf8_lossy(&bytes));
        let Some(end) = self.partial.rfind('\n') else {
            return Vec::new();
        };
        let complete: String = self.partial.drain(..=end).collect();
        complete
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let line: InputLine = serde_json::from_str(l).map_err(|e| format!("{l:?}: {e}"))?;
                match line.xy() {
                    Some(_) => Ok(line),
                    None => Err(format!("{l:?}: needs \"value\", or both \"x\" and \"y\"")),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> SimDir {
        let dir = std::env::temp_dir().join(format!("simxr-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        SimDir::new(dir).unwrap()
    }

    #[test]
    fn an_empty_script_is_all_defaults() {
        let script: Script = serde_json::from_str("{}").unwrap();
        assert_eq!(script, Script::default());
        let partial: Script = serde_json::from_str(r#"{"head": {"period_s": 2.0}}"#).unwrap();
        assert_eq!(partial.head.period_s, 2.0);
        assert_eq!(partial.head.position, [0.0, 1.6, 0.0]);
    }

    #[test]
    fn a_misspelt_script_key_is_an_error() {
        assert!(serde_json::from_str::<Script>(r#"{"rate": 60}"#).is_err());
    }

    #[test]
    fn a_frame_line_round_trips() {
        let line = FrameLine {
            frame: 7,
            display_time_ns: 123,
            end_ns: 100,
            layers: 1,
            pose_latency_ns: -1,
            late: true,
        };
        assert_eq!(FrameLine::parse(&line.to_string()), Some(line));
        assert_eq!(FrameLine::parse("1 2 3"), None);
    }

    #[test]
    fn the_follower_applies_lines_as_they_complete_and_skips_bad_ones() {
        let dir = temp_dir("follow");
        let mut follower = InputFollower::new(dir.path().join(INPUTS_FILE));
        assert!(follower.poll().is_empty());
        dir.press("/user/hand/right/input/trigger/value", 1.0)
            .unwrap();
        let lines = follower.poll();
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].as_ref().unwrap().xy(), Some([1.0, 0.0]));
        assert!(follower.poll().is_empty());

        let mut file = OpenOptions::new()
            .append(true)
            .open(dir.path().join(INPUTS_FILE))
            .unwrap();
        file.write_all(b"not json\n{\"path\": \"/a\", \"x\": 0.5")
            .unwrap();
        let lines = follower.poll();
        assert_eq!(lines.len(), 1);
        assert!(lines[0].is_err());
        file.write_all(b", \"y\": -0.25}\n").unwrap();
        let lines = follower.poll();
        assert_eq!(lines[0].as_ref().unwrap().xy(), Some([0.5, -0.25]));
    }

    #[test]
    fn status_and_capture_read_back_what_the_runtime_writes() {
        let dir = temp_dir("roundtrip");
        assert!(dir.status().is_none());
        let status = SimStatus {
            instances: 2,
            state: "FOCUSED".into(),
            ..SimStatus::default()
        };
        write_atomic(
            &dir.path().join(STATUS_FILE),
            &serde_json::to_vec(&status).unwrap(),
        )
        .unwrap();
        assert_eq!(dir.status(), Some(status));

        dir.request_capture().unwrap();
        assert!(dir.path().join(CAPTURE_REQUEST_FILE).exists());
        assert!(dir.capture().is_none());
        let view = CaptureViewMeta {
            width: 1,
            height: 2,
            pose: PoseJson {
                position: [0.0; 3],
                orientation: [0.0, 0.0, 0.0, 1.0],
            },
            fov: Fov::default(),
        };
        fs::write(
            dir.path().join(capture_image_file(0)),
            [1, 2, 3, 4, 5, 6, 7, 8],
        )
        .unwrap();
        let meta = CaptureMeta {
            frame: 3,
            display_time_ns: 9,
            format: 43,
            views: vec![view],
        };
        write_atomic(
            &dir.path().join(CAPTURE_META_FILE),
            &serde_json::to_vec(&meta).unwrap(),
        )
        .unwrap();
        let capture = dir.capture().unwrap();
        assert_eq!(capture.views[0].pixel(0, 1), Some([5, 6, 7, 8]));
        assert_eq!(capture.views[0].pixel(1, 0), None);
    }

    #[test]
    fn the_manifest_names_the_library_absolutely() {
        let dir = temp_dir("manifest");
        let manifest = dir.manifest(Path::new("/lib/libx.so")).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&fs::read(manifest).unwrap()).unwrap();
        assert_eq!(v["runtime"]["library_path"], "/lib/libx.so");
        assert_eq!(v["file_format_version"], "1.0.0");
    }
}
