//! What worlds say to the audio driver, and what it publishes: the mix (`audio/samples`) and
//! its spectrum (`audio/fft`).
//!
//! A sound is named by its asset (a file in the driver's assets directory, without its
//! extension: `tone-440` for `tone-440.wav`) and owned by its sender under an id the sender
//! picks, so a world can adjust or stop what it started without waiting for an answer. The
//! same id again replaces the sound. Every request is a [`crate::message::Request`]: a world
//! may `call` it (and learn of a missing asset) or `send` it (and not wait).

use serde::{Deserialize, Serialize};

/// `audio/samples`: the main mix, stereo f32 blocks (a bulk stream: [`SamplesHeader`], then
/// `frames × 2` little-endian f32, left then right), drop-oldest so a reader can keep up
/// with every block.
pub const SAMPLES_STREAM: &str = "samples";
/// `audio/fft`: the spectrum of the mix ([`Spectrum`], latest only).
pub const FFT_STREAM: &str = "fft";
/// `audio/playing`: what the driver plays (its [`PlayingTable`], latest only). The runtime
/// keeps the ring across the driver's restarts; its next incarnation reads it back and
/// resumes what is still wanted.
pub const PLAYING_STREAM: &str = "playing";

/// Where a sound is heard from: a point in the world, heard by the listener.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Emitter {
    /// Position, metres, in the world's coordinates.
    pub position: [f32; 3],
}

/// Play a sound. Answered with [`Playing`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Play {
    /// The sender's id for this sound (to adjust or stop it later). The same id again
    /// replaces the sound.
    pub id: u64,
    /// The asset's name, without extension.
    pub sound: String,
    /// Gain, decibels (0: as recorded; -60 and below: silent).
    #[serde(default)]
    pub volume_db: f32,
    /// Stereo position, -1 (left) ..= 1 (right); 0: centre. Ignored for a spatial sound.
    #[serde(default)]
    pub pan: f32,
    /// Playback rate: 1 as recorded, 2 an octave up (and twice as fast).
    #[serde(default = "one")]
    pub pitch: f64,
    /// Loop the whole sound until stopped.
    #[serde(default)]
    pub looping: bool,
    /// Fade in over this many milliseconds (0: start at full volume).
    #[serde(default)]
    pub fade_in_ms: u32,
    /// Spatial: heard from here by the listener ([`SetListener`]) instead of panned.
    #[serde(default)]
    pub emitter: Option<Emitter>,
}

fn one() -> f64 {
    1.0
}

impl Play {
    /// Play `sound` once, centred, as recorded, under `id`.
    pub fn new(id: u64, sound: impl Into<String>) -> Play {
        Play {
            id,
            sound: sound.into(),
            volume_db: 0.0,
            pan: 0.0,
            pitch: 1.0,
            looping: false,
            fade_in_ms: 0,
            emitter: None,
        }
    }
}

/// A sound started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Playing {
    /// The sender's id.
    pub id: u64,
    /// Length of one pass through the sound at its pitch, seconds.
    pub duration_s: f64,
    /// The mix's frame counter when the sound was started: its first samples are in the
    /// `audio/samples` block holding this frame or a later one.
    pub at_frame: u64,
}

/// Stop a sound, fading out over `fade_out_ms`. Answered with [`Stopped`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stop {
    /// The sender's id.
    pub id: u64,
    /// Fade-out, milliseconds (0: at once).
    #[serde(default)]
    pub fade_out_ms: u32,
}

/// A sound stopped (or was not playing).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stopped {
    /// The sender's id.
    pub id: u64,
    /// Whether it was playing.
    pub was_playing: bool,
}

/// Change a playing sound: each field that is set, over `tween_ms`. Answered with
/// [`Adjusted`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Adjust {
    /// The sender's id.
    pub id: u64,
    /// New gain, decibels.
    #[serde(default)]
    pub volume_db: Option<f32>,
    /// New stereo position.
    #[serde(default)]
    pub pan: Option<f32>,
    /// New playback rate.
    #[serde(default)]
    pub pitch: Option<f64>,
    /// New emitter position (a spatial sound only).
    #[serde(default)]
    pub emitter: Option<Emitter>,
    /// Transition, milliseconds.
    #[serde(default)]
    pub tween_ms: u32,
}

/// A sound was adjusted (or was not playing).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Adjusted {
    /// The sender's id.
    pub id: u64,
    /// Whether it was playing.
    pub was_playing: bool,
}

/// Where spatial sounds are heard from: a position and an orientation (the listener's right
/// ear points along its +X, it looks along its -Z, as a camera does). Answered with
/// [`ListenerSet`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetListener {
    /// Position, metres.
    pub position: [f32; 3],
    /// Orientation, quaternion xyzw.
    pub orientation: [f32; 4],
}

impl SetListener {
    /// A listener at `eye` looking at `target` with +Y up (the way a camera is placed).
    pub fn looking_at(eye: [f32; 3], target: [f32; 3]) -> SetListener {
        use glam::{Mat3, Quat, Vec3};
        let eye_v = Vec3::from(eye);
        let forward = (Vec3::from(target) - eye_v).normalize_or(Vec3::NEG_Z);
        let right = forward.cross(Vec3::Y).normalize_or(Vec3::X);
        let up = right.cross(forward);
        let q = Quat::from_mat3(&Mat3::from_cols(right, up, -forward)).normalize();
        SetListener {
            position: eye,
            orientation: q.to_array(),
        }
    }
}

/// The listener was placed.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ListenerSet;

/// Ask the audio driver what it plays on and how it goes. Answered with [`AudioInfo`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GetAudioInfo;

/// What the audio driver plays on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AudioInfo {
    /// `"device"` (the system's audio device, through cpal) or `"null"` (a real-time-paced
    /// output that goes nowhere).
    pub output: String,
    /// Why the null output, when it is.
    pub reason: String,
    /// The device's name, when on a device.
    pub device: String,
    /// Frames per second.
    pub sample_rate: u32,
    /// Frames per period of the null output (the device chooses its own).
    pub period_frames: u32,
    /// Frames mixed so far.
    pub frames: u64,
    /// Periods that came later than the output needed them (an underrun on a device).
    pub deadline_misses: u64,
    /// Sounds playing.
    pub playing: u32,
    /// Sounds resumed from the previous incarnation's table at start.
    pub resumed: u32,
    /// The assets it can play, by name.
    pub assets: Vec<String>,
}

crate::message!(Playing = "syncra.audio.playing/1");
crate::message!(Play = "syncra.audio.play/1" => Playing, cli);
crate::message!(Stopped = "syncra.audio.stopped/1");
crate::message!(Stop = "syncra.audio.stop/1" => Stopped, cli);
crate::message!(Adjusted = "syncra.audio.adjusted/1");
crate::message!(Adjust = "syncra.audio.adjust/1" => Adjusted, cli);
crate::message!(ListenerSet = "syncra.audio.listener-set/1");
crate::message!(SetListener = "syncra.audio.set-listener/1" => ListenerSet, cli);
crate::message!(AudioInfo = "syncra.audio.info/1");
crate::message!(GetAudioInfo = "syncra.audio.get-info/1" => AudioInfo, cli);

/// The header of one `audio/samples` block.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SamplesHeader {
    /// The mix's frame counter at the block's first frame (continuous within an incarnation
    /// of the driver).
    pub first_frame: u64,
    /// Stereo frames in the block.
    pub frames: u32,
    /// Frames per second.
    pub sample_rate: u32,
}

crate::message!(SamplesHeader = "syncra.audio.samples/1");

/// Decode the bytes of an `audio/samples` block into interleaved f32 (left, right, …).
pub fn samples_from_bytes(bytes: &[u8], out: &mut Vec<f32>) {
    out.clear();
    out.extend(
        bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
    );
}

/// The spectrum of the mix over the last `size` frames.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Spectrum {
    /// The mix's frame counter at the window's last frame.
    pub at_frame: u64,
    /// Frames per second.
    pub sample_rate: u32,
    /// FFT length, frames (a Hann window over the mono mix).
    pub size: u32,
    /// Width of one bin, Hz (`sample_rate / size`); bin `i` is centred on `i × bin_hz`.
    pub bin_hz: f32,
    /// Magnitude of each bin from 0 Hz up to just below Nyquist, scaled so that a sine of
    /// amplitude `a` centred on a bin reads `a` there.
    pub magnitudes: Vec<f32>,
}

crate::message!(Spectrum = "syncra.audio.fft/1");

impl Spectrum {
    /// The centre frequency of bin `i`, Hz.
    pub fn frequency(&self, i: usize) -> f32 {
        i as f32 * self.bin_hz
    }

    /// The bin holding `hz`.
    pub fn bin_of(&self, hz: f32) -> usize {
        (hz / self.bin_hz).round().max(0.0) as usize
    }

    /// The strongest bin above DC: (bin, magnitude).
    pub fn peak(&self) -> Option<(usize, f32)> {
        self.magnitudes
            .iter()
            .copied()
            .enumerate()
            .skip(1)
            .max_by(|a, b| a.1.total_cmp(&b.1))
    }

    /// `n` bands spaced evenly in log frequency from `low` Hz to Nyquist, each the largest
    /// magnitude in it — what a spectrum bar strip shows.
    pub fn bands(&self, n: usize, low: f32) -> Vec<f32> {
        let nyquist = self.sample_rate as f32 / 2.0;
        let (lo, hi) = (low.max(self.bin_hz).ln(), nyquist.ln());
        (0..n)
            .map(|b| {
                let f0 = (lo + (hi - lo) * b as f32 / n as f32).exp();
                let f1 = (lo + (hi - lo) * (b + 1) as f32 / n as f32).exp();
                let (i0, i1) = (self.bin_of(f0), self.bin_of(f1).max(self.bin_of(f0) + 1));
                self.magnitudes
                    .get(i0..i1.min(self.magnitudes.len()))
                    .unwrap_or(&[])
                    .iter()
                    .copied()
                    .fold(0.0, f32::max)
            })
            .collect()
    }
}

/// One sound in the driver's [`PlayingTable`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlayingEntry {
    /// Who asked for it (a node name).
    pub owner: String,
    /// What it asked for.
    pub play: Play,
    /// Where in the sound it was at `at_mono_ns`, seconds.
    pub position_s: f64,
    /// `CLOCK_MONOTONIC` when `position_s` was read, nanoseconds (the same clock in every
    /// process on the host).
    pub at_mono_ns: u64,
    /// Length of the sound, seconds (as recorded).
    pub length_s: f64,
}

/// What the audio driver plays, as its next incarnation needs it to resume.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PlayingTable {
    /// Every sound playing.
    pub entries: Vec<PlayingEntry>,
    /// The listener, if one was set.
    pub listener: Option<SetListener>,
}

crate::message!(PlayingTable = "syncra.audio.playing-table/1");

impl PlayingEntry {
    /// Where the sound would be at `now_mono_ns` had it kept playing: `None` for a one-shot
    /// that would have ended by then.
    pub fn position_at(&self, now_mono_ns: u64) -> Option<f64> {
        let elapsed = now_mono_ns.saturating_sub(self.at_mono_ns) as f64 / 1e9;
        let pos = self.position_s + elapsed * self.play.pitch.max(0.0);
        if self.play.looping && self.length_s > 0.0 {
            Some(pos % self.length_s)
        } else if pos < self.length_s {
            Some(pos)
        } else {
            None
        }
    }
}

/// `CLOCK_MONOTONIC` now, nanoseconds: the clock timestamps between processes use.
pub fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(looping: bool) -> PlayingEntry {
        PlayingEntry {
            owner: "world/main".into(),
            play: Play {
                looping,
                ..Play::new(1, "hum")
            },
            position_s: 0.5,
            at_mono_ns: 1_000_000_000,
            length_s: 2.0,
        }
    }

    #[test]
    fn a_loop_resumes_where_it_would_be_and_an_ended_one_shot_does_not() {
        // 3 s later: 0.5 + 3 = 3.5 → 1.5 into a 2 s loop.
        assert_eq!(entry(true).position_at(4_000_000_000), Some(1.5));
        assert_eq!(entry(false).position_at(4_000_000_000), None);
        assert_eq!(entry(false).position_at(2_000_000_000), Some(1.5));
    }

    #[test]
    fn a_listener_looking_down_minus_z_is_unrotated_and_its_right_is_plus_x() {
        let l = SetListener::looking_at([0.0, 0.0, 10.0], [0.0, 0.0, 0.0]);
        let q = glam::Quat::from_array(l.orientation);
        assert!((q * glam::Vec3::X - glam::Vec3::X).length() < 1e-5);
        let l = SetListener::looking_at([10.0, 0.0, 0.0], [0.0, 0.0, 0.0]);
        let q = glam::Quat::from_array(l.orientation);
        // Looking along -X, the right ear points along -Z.
        assert!((q * glam::Vec3::X - glam::Vec3::NEG_Z).length() < 1e-5);
    }

    #[test]
    fn bands_take_the_loudest_bin_of_each() {
        let mut magnitudes = vec![0.0; 1024];
        magnitudes[19] = 0.5;
        let s = Spectrum {
            at_frame: 0,
            sample_rate: 48_000,
            size: 2048,
            bin_hz: 48_000.0 / 2048.0,
            magnitudes,
        };
        assert_eq!(s.peak(), Some((19, 0.5)));
        assert_eq!(s.bin_of(440.0), 19);
        let bands = s.bands(16, 40.0);
        assert_eq!(bands.iter().filter(|b| **b == 0.5).count(), 1);
    }
}
