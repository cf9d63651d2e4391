//! `syncra-audio`: the audio driver. Worlds ask it for sounds by name (files in its assets
//! directory, wav and ogg decoded by kira), with volume, pan, pitch, looping, fades, stop, and
//! spatial playback from an emitter heard by a listener. It mixes them with kira and plays the
//! mix on the system's audio device through cpal — or, with no device, on a real-time-paced
//! null output, saying so in `syncra status`, so worlds keep a true audio timeline.
//!
//! A tap on the main mix publishes `audio/samples` (stereo f32 blocks) and `audio/fft` (the
//! spectrum). The heartbeat comes from the audio thread's period (the tap beats while the
//! control loop is alive too), so a stuck mixer is a hang the runtime sees.
//!
//! What it plays is kept on `audio/playing`, a stream the runtime holds across the driver's
//! restarts: after a crash the next incarnation reads it back and resumes what is still
//! wanted — a loop at the place it would have reached, a one-shot that had not ended at its
//! place; a one-shot that ended meanwhile is not played again.

mod output;
mod spectrum;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use kira::listener::ListenerHandle;
use kira::sound::PlaybackState;
use kira::sound::static_sound::{StaticSoundData, StaticSoundHandle, StaticSoundSettings};
use kira::track::{SpatialTrackBuilder, SpatialTrackDistances, SpatialTrackHandle};
use kira::{Decibels, Panning, PlaybackRate, Tween};
use serde::Deserialize;
use syncra_node::audio::{
    Adjust, Adjusted, AudioInfo, FFT_STREAM, GetAudioInfo, ListenerSet, PLAYING_STREAM, Play,
    Playing, PlayingEntry, PlayingTable, SAMPLES_STREAM, SamplesHeader, SetListener, Spectrum,
    Stop, Stopped, monotonic_ns,
};
use syncra_node::streams::{BulkProducer, Producer, StreamOptions};
use syncra_node::{Figure, FigureKind, Incoming, Node, exit_code};

use crate::output::{Clock, Mixer, NullSettings, TapBuilder};
use crate::spectrum::Analyser;

/// Where the mix goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum OutputKind {
    /// The system's audio device; the null output (said in status) when there is none.
    Auto,
    /// The system's audio device, or the driver does not start (exit code 90, not restarted).
    Device,
    /// The null output: real-time paced, heard by nobody (servers, tests).
    Null,
}

/// Spatial sound: how loudness falls with distance.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Spatial {
    /// Closer than this, full volume (metres).
    min_distance: f32,
    /// Farther than this, silent (metres).
    max_distance: f32,
    /// 0: no left/right difference; 1: a sound at the listener's side is silent in the far ear.
    strength: f32,
}

impl Default for Spatial {
    fn default() -> Self {
        Spatial {
            min_distance: 1.0,
            max_distance: 100.0,
            strength: 0.75,
        }
    }
}

/// `[drivers.audio] settings = { .. }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Settings {
    /// The directory of sound files (wav, ogg, flac, mp3), relative to the runtime's working
    /// directory; a sound is named by its file name without extension.
    assets: PathBuf,
    /// Where the mix goes.
    output: OutputKind,
    /// Frames per second of the null output (a device uses its own rate).
    sample_rate: u32,
    /// Frames per period of the null output: its deadline, and how often the heartbeat beats.
    period_frames: u32,
    /// Frames per FFT (`audio/fft`).
    fft_size: u32,
    /// `audio/fft` messages per second.
    fft_hz: f64,
    /// Most sounds playing at once.
    max_sounds: usize,
    /// Spatial sound.
    spatial: Spatial,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            assets: PathBuf::from("assets/sounds"),
            output: OutputKind::Auto,
            sample_rate: 48_000,
            period_frames: 256,
            fft_size: 2048,
            fft_hz: 30.0,
            max_sounds: 128,
            spatial: Spatial::default(),
        }
    }
}

/// Largest sound file loaded, bytes.
const MAX_ASSET_BYTES: u64 = 64 << 20;
/// Largest `audio/samples` block, frames.
const MAX_BLOCK: usize = 2048;
/// How often `audio/playing` is rewritten while sounds play.
const TABLE_EVERY: Duration = Duration::from_millis(100);
/// Fade used when a resumed sound comes back (no click).
const RESUME_FADE: Duration = Duration::from_millis(20);

/// One sound playing.
struct Voice {
    handle: StaticSoundHandle,
    /// Its own spatial track, for a spatial sound.
    track: Option<SpatialTrackHandle>,
    play: Play,
    length_s: f64,
}

struct Audio {
    node: Node,
    s: Settings,
    assets_dir: PathBuf,
    assets: BTreeMap<String, StaticSoundData>,
    mixer: Mixer,
    /// Why the null output, when it is.
    null_reason: String,
    listener: ListenerHandle,
    listener_at: Option<SetListener>,
    voices: HashMap<(String, u64), Voice>,
    /// Spatial tracks of stopped sounds, kept until their fade-out is over.
    fading: Vec<(Instant, SpatialTrackHandle)>,
    clock: Arc<Clock>,
    tap: rtrb::Consumer<f32>,
    sample_rate: u32,
    samples: BulkProducer<SamplesHeader>,
    fft: Producer<Spectrum>,
    table: Producer<PlayingTable>,
    analyser: Analyser,
    spectrum: Spectrum,
    /// Frames handed over by the tap so far.
    read_frames: u64,
    block: Vec<f32>,
    bytes: Vec<u8>,
    next_fft: Instant,
    next_table: Instant,
    table_dirty: bool,
    resumed: u32,
    fig_playing: Figure,
    fig_misses: Figure,
    fig_dropped: Figure,
}

fn main() {
    let node = Node::join_or_standalone();
    let s: Settings = node.settings().unwrap_or_else(|e| e.exit());
    let mut audio = Audio::start(node, s);
    audio.node.ready();
    audio.run();
}

/// Leave as a node whose settings were refused (not restarted: it would fail the same way).
fn refuse(node: &Node, why: &str) -> ! {
    node.exit_with(
        exit_code::BAD_SETTINGS,
        &format!("the settings do not fit this node: {why}"),
    )
}

fn validate(node: &Node, s: &Settings) {
    if !(8_000..=192_000).contains(&s.sample_rate) {
        refuse(
            node,
            &format!(
                "settings.sample_rate = {}: must be 8000 ..= 192000",
                s.sample_rate
            ),
        );
    }
    if !(16..=8192).contains(&s.period_frames) {
        refuse(
            node,
            &format!(
                "settings.period_frames = {}: must be 16 ..= 8192",
                s.period_frames
            ),
        );
    }
    if !(64..=16384).contains(&s.fft_size) {
        refuse(
            node,
            &format!("settings.fft_size = {}: must be 64 ..= 16384", s.fft_size),
        );
    }
    if !(s.fft_hz > 0.0 && s.fft_hz <= 240.0) {
        refuse(
            node,
            &format!("settings.fft_hz = {}: must be in (0, 240]", s.fft_hz),
        );
    }
    if !(1..=1024).contains(&s.max_sounds) {
        refuse(
            node,
            &format!("settings.max_sounds = {}: must be 1 ..= 1024", s.max_sounds),
        );
    }
    let sp = s.spatial;
    if !(sp.min_distance > 0.0 && sp.max_distance > sp.min_distance && sp.max_distance.is_finite())
    {
        refuse(
            node,
            &format!(
                "settings.spatial: min_distance = {}, max_distance = {}: need 0 < min < max",
                sp.min_distance, sp.max_distance
            ),
        );
    }
    if !(0.0..=1.0).contains(&sp.strength) {
        refuse(
            node,
            &format!(
                "settings.spatial.strength = {}: must be 0 ..= 1",
                sp.strength
            ),
        );
    }
}

/// Decode every sound file in `dir` (a file that does not decode is left out, and said).
fn load_assets(dir: &Path) -> (BTreeMap<String, StaticSoundData>, Vec<String>) {
    let mut assets = BTreeMap::new();
    let mut problems = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (assets, problems);
    };
    let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    paths.sort();
    for path in paths {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or_default()
            .to_ascii_lowercase();
        if !matches!(ext.as_str(), "wav" | "ogg" | "flac" | "mp3") {
            continue;
        }
        let Some(name) = path.file_stem().and_then(|s| s.to_str()).map(str::to_owned) else {
            continue;
        };
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        if size > MAX_ASSET_BYTES {
            problems.push(format!(
                "{}: {size} bytes, larger than {MAX_ASSET_BYTES}",
                path.display()
            ));
            continue;
        }
        if assets.contains_key(&name) {
            problems.push(format!(
                "{}: another file is already named `{name}`",
                path.display()
            ));
            continue;
        }
        match StaticSoundData::from_file(&path) {
            Ok(data) => {
                assets.insert(name, data);
            }
            Err(e) => problems.push(format!("{}: {e}", path.display())),
        }
    }
    (assets, problems)
}

impl Audio {
    fn start(node: Node, s: Settings) -> Audio {
        validate(&node, &s);
        let assets_dir = std::env::current_dir().unwrap_or_default().join(&s.assets);
        if !assets_dir.is_dir() {
            refuse(
                &node,
                &format!(
                    "settings.assets = {:?}: {} is not a directory",
                    s.assets,
                    assets_dir.display()
                ),
            );
        }
        let (assets, problems) = load_assets(&assets_dir);
        for p in &problems {
            tracing::warn!(problem = %p, "a sound file was left out");
        }
        tracing::info!(dir = %assets_dir.display(), sounds = assets.len(), "assets loaded");

        // What the previous incarnation played, if there was one: read before declaring.
        let previous = previous_table(&node);

        let clock = Arc::new(Clock::default());
        clock.loop_alive_ns.store(monotonic_ns(), Ordering::Relaxed);
        // Half a second of stereo between the tap and the control loop.
        let ring_len = (s.sample_rate as usize).max(48_000);
        let tap = |clock: &Arc<Clock>| {
            let (producer, consumer) = rtrb::RingBuffer::new(ring_len);
            let builder = TapBuilder::new(
                producer,
                clock.clone(),
                node.heartbeat_handle(),
                s.period_frames,
            );
            (builder, consumer)
        };
        let null_settings = |clock: &Arc<Clock>| NullSettings {
            sample_rate: s.sample_rate,
            period_frames: s.period_frames,
            clock: clock.clone(),
        };
        let (mixer, tap_out, null_reason) = match s.output {
            OutputKind::Null => {
                let (b, c) = tap(&clock);
                let m = output::null(b, null_settings(&clock), s.max_sounds)
                    .unwrap_or_else(|e| node.exit_with(1, &e));
                (m, c, "as settings.output = \"null\" says".to_owned())
            }
            OutputKind::Device | OutputKind::Auto => {
                let (b, c) = tap(&clock);
                match output::device(b, s.max_sounds) {
                    Ok(m) => (m, c, String::new()),
                    Err(why) if s.output == OutputKind::Device => node.exit_with(
                        exit_code::NO_DEVICE,
                        &format!("could not start: no audio device: {why}"),
                    ),
                    Err(why) => {
                        tracing::warn!(error = %why, "no audio device: playing on the null output");
                        let (b, c) = tap(&clock);
                        let m = output::null(b, null_settings(&clock), s.max_sounds)
                            .unwrap_or_else(|e| node.exit_with(1, &e));
                        (m, c, format!("no audio device: {why}"))
                    }
                }
            }
        };
        let mut mixer = mixer;
        // kira mixes at the device's rate (and resamples the sounds to it): the tap was told.
        let sample_rate = match clock.sample_rate.load(Ordering::Relaxed) {
            0 => s.sample_rate,
            r => r,
        };
        let listener = mixer
            .listener()
            .unwrap_or_else(|e| node.exit_with(1, &format!("no listener: {e}")));

        let samples = node
            .declare_bulk::<SamplesHeader>(
                SAMPLES_STREAM,
                StreamOptions::drop_oldest((MAX_BLOCK * 8 + 256) as u32, 64),
            )
            .unwrap_or_else(|e| node.exit_with(1, &format!("could not declare samples: {e}")));
        let spectrum = Spectrum {
            at_frame: 0,
            sample_rate,
            size: s.fft_size,
            bin_hz: sample_rate as f32 / s.fft_size as f32,
            magnitudes: vec![1.0; s.fft_size as usize / 2],
        };
        let fft = node
            .declare(FFT_STREAM, StreamOptions::latest_only_like(&spectrum))
            .unwrap_or_else(|e| node.exit_with(1, &format!("could not declare fft: {e}")));
        let table = node
            .declare(
                PLAYING_STREAM,
                StreamOptions::latest_only(table_slot(s.max_sounds)),
            )
            .unwrap_or_else(|e| node.exit_with(1, &format!("could not declare playing: {e}")));

        let mut audio = Audio {
            fig_playing: node.figure("playing", FigureKind::Gauge),
            fig_misses: node.figure("deadline_misses", FigureKind::Counter),
            fig_dropped: node.figure("tap_dropped_frames", FigureKind::Counter),
            node,
            analyser: Analyser::new(s.fft_size as usize, sample_rate),
            s,
            assets_dir,
            assets,
            mixer,
            null_reason,
            listener,
            listener_at: None,
            voices: HashMap::new(),
            fading: Vec::new(),
            clock,
            tap: tap_out,
            sample_rate,
            samples,
            fft,
            table,
            spectrum,
            read_frames: 0,
            block: Vec::with_capacity(MAX_BLOCK * 2),
            bytes: Vec::with_capacity(MAX_BLOCK * 8),
            next_fft: Instant::now(),
            next_table: Instant::now(),
            table_dirty: true,
            resumed: 0,
        };
        if let Some(table) = previous {
            audio.resume(table);
        }
        audio.say();
        audio
    }

    /// Put the output in `syncra status`.
    fn say(&self) {
        let mut note = if self.mixer.is_null() {
            format!(
                "output: null (real-time paced, {} Hz), {}",
                self.sample_rate, self.null_reason
            )
        } else {
            "output: the system's audio device".to_owned()
        };
        if self.resumed > 0 {
            note.push_str(&format!(
                "; resumed {} sounds after a restart",
                self.resumed
            ));
        }
        self.node.set_note(&note);
    }

    /// Resume what the previous incarnation played and is still wanted.
    fn resume(&mut self, table: PlayingTable) {
        if let Some(l) = table.listener {
            self.set_listener(l);
        }
        let now = monotonic_ns();
        for entry in table.entries {
            let Some(position) = entry.position_at(now) else {
                continue; // a one-shot that ended meanwhile
            };
            match self.start_voice(&entry.owner, entry.play.clone(), position, true) {
                Ok(_) => self.resumed += 1,
                Err(e) => tracing::warn!(sound = %entry.play.sound, error = %e, "not resumed"),
            }
        }
        if self.resumed > 0 {
            tracing::info!(
                sounds = self.resumed,
                "resumed what the previous incarnation played"
            );
        }
    }

    fn run(&mut self) {
        let period =
            Duration::from_secs_f64(f64::from(self.s.period_frames) / f64::from(self.sample_rate));
        while !self.node.shutdown_requested() {
            self.clock
                .loop_alive_ns
                .store(monotonic_ns(), Ordering::Relaxed);
            // Requests, then the mix: both every period.
            let deadline = Instant::now() + period;
            while let Some(m) = self
                .node
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                self.request(m);
                if Instant::now() >= deadline {
                    break;
                }
            }
            if let Err(e) = self.pump() {
                self.node.exit_with(1, &e);
            }
        }
        tracing::info!("stopped");
        let _ = self.publish_table();
        std::process::exit(0);
    }

    /// Hand the tap's frames on: `audio/samples`, `audio/fft`, and the bookkeeping.
    fn pump(&mut self) -> Result<(), String> {
        loop {
            let n = self.tap.slots().min(MAX_BLOCK * 2) & !1;
            if n == 0 {
                break;
            }
            let chunk = self.tap.read_chunk(n).map_err(|e| e.to_string())?;
            self.block.clear();
            let (a, b) = chunk.as_slices();
            self.block.extend_from_slice(a);
            self.block.extend_from_slice(b);
            chunk.commit_all();
            let frames = self.block.len() / 2;
            self.bytes.clear();
            for v in &self.block {
                self.bytes.extend_from_slice(&v.to_le_bytes());
            }
            let header = SamplesHeader {
                first_frame: self.read_frames,
                frames: frames as u32,
                sample_rate: self.sample_rate,
            };
            self.samples
                .publish(&header, &self.bytes)
                .map_err(|e| format!("publishing samples: {e}"))?;
            self.read_frames += frames as u64;
            self.analyser.push(&self.block);
        }
        let now = Instant::now();
        if now >= self.next_fft {
            self.next_fft = now + Duration::from_secs_f64(1.0 / self.s.fft_hz);
            if self.analyser.spectrum(self.read_frames, &mut self.spectrum) {
                self.fft
                    .publish(&self.spectrum)
                    .map_err(|e| format!("publishing the spectrum: {e}"))?;
            }
        }
        // Forget what ended.
        self.fading.retain(|(until, _)| *until > now);
        let before = self.voices.len();
        self.voices
            .retain(|_, v| v.handle.state() != PlaybackState::Stopped);
        if self.voices.len() != before {
            self.table_dirty = true;
        }
        if self.table_dirty || (!self.voices.is_empty() && now >= self.next_table) {
            self.publish_table()?;
        }
        for e in self.mixer.device_errors() {
            tracing::warn!(error = %e, "audio device error");
        }
        self.fig_playing.set(self.voices.len() as f64);
        self.fig_misses
            .set(self.clock.misses.load(Ordering::Relaxed) as f64);
        self.fig_dropped
            .set(self.clock.dropped.load(Ordering::Relaxed) as f64);
        Ok(())
    }

    fn publish_table(&mut self) -> Result<(), String> {
        let at = monotonic_ns();
        let entries = self
            .voices
            .iter()
            .map(|((owner, _), v)| PlayingEntry {
                owner: owner.clone(),
                play: v.play.clone(),
                position_s: v.handle.position(),
                at_mono_ns: at,
                length_s: v.length_s,
            })
            .collect();
        let table = PlayingTable {
            entries,
            listener: self.listener_at,
        };
        self.table
            .publish(&table)
            .map_err(|e| format!("publishing what plays: {e}"))?;
        self.table_dirty = false;
        self.next_table = Instant::now() + TABLE_EVERY;
        Ok(())
    }

    fn request(&mut self, m: Incoming) {
        let owner = m.from().to_string();
        let m = match m.answer_with(|p: Play| self.play(&owner, p)) {
            Ok(()) => return,
            Err(m) => m,
        };
        let m = match m.answer_with(|s: Stop| Ok(self.stop(&owner, s))) {
            Ok(()) => return,
            Err(m) => m,
        };
        let m = match m.answer_with(|a: Adjust| self.adjust(&owner, a)) {
            Ok(()) => return,
            Err(m) => m,
        };
        let m = match m.answer_with(|l: SetListener| {
            check_point(&l.position, "position")?;
            if !l.orientation.iter().all(|v| v.is_finite())
                || l.orientation.iter().map(|v| v * v).sum::<f32>() < 1e-6
            {
                return Err(format!(
                    "orientation {:?} is not a rotation (a quaternion xyzw of length 1)",
                    l.orientation
                ));
            }
            self.set_listener(l);
            Ok(ListenerSet)
        }) {
            Ok(()) => return,
            Err(m) => m,
        };
        let info = self.info();
        if let Err(m) = m.answer_with(|GetAudioInfo| Ok(info)) {
            let tag = m.tag().to_owned();
            tracing::debug!(%tag, from = %m.from(), "a message the audio driver does not know");
            m.reply_error(format!(
                "the audio driver does not know `{tag}`: it takes syncra.audio.play/1, stop/1, adjust/1, set-listener/1 and get-info/1"
            ));
        }
    }

    fn info(&self) -> AudioInfo {
        AudioInfo {
            output: if self.mixer.is_null() {
                "null"
            } else {
                "device"
            }
            .into(),
            reason: self.null_reason.clone(),
            device: if self.mixer.is_null() {
                String::new()
            } else {
                "default".into()
            },
            sample_rate: self.sample_rate,
            period_frames: self.s.period_frames,
            frames: self.clock.frames.load(Ordering::Relaxed),
            deadline_misses: self.clock.misses.load(Ordering::Relaxed),
            playing: self.voices.len() as u32,
            resumed: self.resumed,
            assets: self.assets.keys().cloned().collect(),
        }
    }

    fn set_listener(&mut self, l: SetListener) {
        let [x, y, z] = l.position;
        let [qx, qy, qz, qw] = l.orientation;
        let norm = (qx * qx + qy * qy + qz * qz + qw * qw).sqrt().max(1e-6);
        self.listener
            .set_position(mint::Vector3 { x, y, z }, Tween::default());
        self.listener.set_orientation(
            mint::Quaternion {
                v: mint::Vector3 {
                    x: qx / norm,
                    y: qy / norm,
                    z: qz / norm,
                },
                s: qw / norm,
            },
            Tween::default(),
        );
        self.listener_at = Some(l);
        self.table_dirty = true;
    }

    fn play(&mut self, owner: &str, p: Play) -> Result<Playing, String> {
        check_play(&p)?;
        let id = p.id;
        let at_frame = self.clock.frames.load(Ordering::Relaxed);
        let duration_s = self.start_voice(owner, p, 0.0, false)?;
        Ok(Playing {
            id,
            duration_s,
            at_frame,
        })
    }

    /// Start `p` for `owner` at `position` seconds into it; returns its length at its pitch.
    fn start_voice(
        &mut self,
        owner: &str,
        p: Play,
        position: f64,
        resumed: bool,
    ) -> Result<f64, String> {
        let Some(data) = self.assets.get(&p.sound) else {
            let have: Vec<&str> = self.assets.keys().map(String::as_str).collect();
            return Err(format!(
                "no sound `{}` in {} (it has: {})",
                p.sound,
                self.assets_dir.display(),
                if have.is_empty() {
                    "nothing".to_owned()
                } else {
                    have.join(", ")
                }
            ));
        };
        let key = (owner.to_owned(), p.id);
        if let Some(mut old) = self.voices.remove(&key) {
            old.handle.stop(Tween::default());
        } else if self.voices.len() >= self.s.max_sounds {
            return Err(format!(
                "{} sounds are playing, the most settings.max_sounds allows: stop one first",
                self.voices.len()
            ));
        }
        let length_s = data.duration().as_secs_f64();
        let fade = if resumed {
            Some(RESUME_FADE)
        } else {
            (p.fade_in_ms > 0).then(|| Duration::from_millis(u64::from(p.fade_in_ms)))
        };
        let mut settings = StaticSoundSettings::new()
            .volume(Decibels(p.volume_db))
            .playback_rate(PlaybackRate(p.pitch))
            .start_position(position)
            .fade_in_tween(fade.map(|duration| Tween {
                duration,
                ..Tween::default()
            }));
        if p.emitter.is_none() {
            settings = settings.panning(Panning(p.pan));
        }
        if p.looping {
            settings = settings.loop_region(..);
        }
        let data = data.with_settings(settings);
        let (handle, track) = match p.emitter {
            Some(e) => {
                let sp = self.s.spatial;
                let builder = SpatialTrackBuilder::new()
                    .distances(SpatialTrackDistances {
                        min_distance: sp.min_distance,
                        max_distance: sp.max_distance,
                    })
                    .spatialization_strength(sp.strength);
                let mut track =
                    self.mixer
                        .spatial_track(self.listener.id(), e.position, builder)?;
                let handle = track.play(data).map_err(|e| e.to_string())?;
                (handle, Some(track))
            }
            None => (self.mixer.play(data)?, None),
        };
        let pitch = p.pitch;
        self.voices.insert(
            key,
            Voice {
                handle,
                track,
                play: p,
                length_s,
            },
        );
        self.table_dirty = true;
        Ok(length_s / pitch)
    }

    fn stop(&mut self, owner: &str, s: Stop) -> Stopped {
        let key = (owner.to_owned(), s.id);
        let was_playing = match self.voices.remove(&key) {
            Some(mut v) => {
                v.handle.stop(tween_ms(s.fade_out_ms.min(60_000)));
                // The track goes when its handle does: keep it until the fade is over.
                if let Some(track) = v.track.take() {
                    let fade = Duration::from_millis(u64::from(s.fade_out_ms.min(60_000)));
                    self.fading
                        .push((Instant::now() + fade + Duration::from_millis(50), track));
                }
                true
            }
            None => false,
        };
        self.table_dirty = true;
        Stopped {
            id: s.id,
            was_playing,
        }
    }

    fn adjust(&mut self, owner: &str, a: Adjust) -> Result<Adjusted, String> {
        let Some(v) = self.voices.get_mut(&(owner.to_owned(), a.id)) else {
            return Ok(Adjusted {
                id: a.id,
                was_playing: false,
            });
        };
        let tween = tween_ms(a.tween_ms.min(60_000));
        if let Some(db) = a.volume_db {
            check_volume(db)?;
            v.handle.set_volume(Decibels(db), tween);
            v.play.volume_db = db;
        }
        if let Some(pan) = a.pan {
            check_pan(pan)?;
            v.handle.set_panning(Panning(pan), tween);
            v.play.pan = pan;
        }
        if let Some(pitch) = a.pitch {
            check_pitch(pitch)?;
            v.handle.set_playback_rate(PlaybackRate(pitch), tween);
            v.play.pitch = pitch;
        }
        if let Some(e) = a.emitter {
            check_point(&e.position, "emitter.position")?;
            match v.track.as_mut() {
                Some(track) => {
                    let [x, y, z] = e.position;
                    track.set_position(mint::Vector3 { x, y, z }, tween);
                    v.play.emitter = Some(e);
                }
                None => {
                    return Err(format!(
                        "sound {} is not spatial (it was played without an emitter)",
                        a.id
                    ));
                }
            }
        }
        self.table_dirty = true;
        Ok(Adjusted {
            id: a.id,
            was_playing: true,
        })
    }
}

fn tween_ms(ms: u32) -> Tween {
    Tween {
        duration: Duration::from_millis(u64::from(ms)),
        ..Tween::default()
    }
}

fn check_volume(db: f32) -> Result<(), String> {
    if db.is_finite() && db <= 24.0 {
        Ok(())
    } else {
        Err(format!(
            "volume_db = {db}: must be a number of decibels up to 24"
        ))
    }
}

fn check_pan(pan: f32) -> Result<(), String> {
    if (-1.0..=1.0).contains(&pan) {
        Ok(())
    } else {
        Err(format!("pan = {pan}: must be -1 (left) ..= 1 (right)"))
    }
}

fn check_pitch(pitch: f64) -> Result<(), String> {
    if pitch > 0.0 && pitch <= 16.0 {
        Ok(())
    } else {
        Err(format!(
            "pitch = {pitch}: must be in (0, 16] (1 is as recorded)"
        ))
    }
}

fn check_point(p: &[f32; 3], what: &str) -> Result<(), String> {
    if p.iter().all(|v| v.is_finite() && v.abs() < 1e7) {
        Ok(())
    } else {
        Err(format!("{what} {p:?} is not a point (finite metres)"))
    }
}

fn check_play(p: &Play) -> Result<(), String> {
    check_volume(p.volume_db)?;
    check_pan(p.pan)?;
    check_pitch(p.pitch)?;
    if p.fade_in_ms > 60_000 {
        return Err(format!("fade_in_ms = {}: at most 60000", p.fade_in_ms));
    }
    if let Some(e) = &p.emitter {
        check_point(&e.position, "emitter.position")?;
    }
    Ok(())
}

/// A slot for a table of `max_sounds` sounds with long names.
fn table_slot(max_sounds: usize) -> u32 {
    let entry = PlayingEntry {
        owner: "w".repeat(64),
        play: Play {
            emitter: Some(syncra_node::audio::Emitter {
                position: [f32::MAX; 3],
            }),
            ..Play::new(u64::MAX, "s".repeat(64))
        },
        position_s: f64::MAX,
        at_mono_ns: u64::MAX,
        length_s: f64::MAX,
    };
    let table = PlayingTable {
        entries: vec![entry; max_sounds],
        listener: Some(SetListener {
            position: [f32::MAX; 3],
            orientation: [f32::MAX; 4],
        }),
    };
    syncra_node::streams::slot_for(&table, 1.0)
}

/// What the previous incarnation of this node played: the newest `audio/playing` the runtime
/// kept, if any.
fn previous_table(node: &Node) -> Option<PlayingTable> {
    if node.incarnation() <= 1 {
        return None;
    }
    let name = format!("{}/{PLAYING_STREAM}", node.name());
    let mut consumer = match node.subscribe_existing::<PlayingTable>(&name) {
        Ok(c) => c,
        Err(e) => {
            tracing::info!(error = %e, "nothing to resume");
            return None;
        }
    };
    let t = std::time::Instant::now();
    match consumer.recv_timeout(Duration::from_millis(200)) {
        Ok(Some(sample)) => {
            tracing::info!(
                took_us = t.elapsed().as_micros() as u64,
                sounds = sample.value.entries.len(),
                "read what the previous incarnation played"
            );
            Some(sample.value)
        }
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(error = %e, "what the previous incarnation played could not be read");
            None
        }
    }
}
