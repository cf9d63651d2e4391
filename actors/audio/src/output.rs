//! Where the mix goes — the system's audio device (kira's cpal backend) or the null output,
//! a thread that pulls the mixer at real-time pace and throws the samples away — and the tap
//! on the main track that sees every mixed frame, whichever it is.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kira::backend::cpal::CpalBackend;
use kira::backend::{Backend, Renderer};
use kira::effect::{Effect, EffectBuilder};
use kira::info::Info;
use kira::listener::{ListenerHandle, ListenerId};
use kira::sound::static_sound::{StaticSoundData, StaticSoundHandle};
use kira::track::{MainTrackBuilder, SpatialTrackBuilder, SpatialTrackHandle};
use kira::{AudioManager, AudioManagerSettings, Capacities, Frame};
use syncra_node::{Heartbeat, NodeMetrics};

/// What the audio thread shares with the control loop.
#[derive(Debug, Default)]
pub(crate) struct Clock {
    /// Frames mixed.
    pub(crate) frames: AtomicU64,
    /// Frames the tap could not hand over (the control loop fell behind).
    pub(crate) dropped: AtomicU64,
    /// Periods rendered later than the output needed them.
    pub(crate) misses: AtomicU64,
    /// Time the null output took to render its last period, µs.
    pub(crate) render_us: AtomicU64,
    /// `CLOCK_MONOTONIC` ns when the control loop last went round. The audio thread beats
    /// only while this is recent: a hung control loop stops the heartbeat too.
    pub(crate) loop_alive_ns: AtomicU64,
    /// The mix's frames per second, as kira tells the main track (a device picks its own).
    pub(crate) sample_rate: std::sync::atomic::AtomicU32,
}

/// The control loop counts as hung after this long without going round.
const LOOP_HUNG: u64 = 2_000_000_000;

/// The main-track effect that copies every mixed frame into a lock-free ring for the control
/// loop and beats the heartbeat from the audio thread's period.
struct Tap {
    ring: rtrb::Producer<f32>,
    clock: Arc<Clock>,
    heartbeat: Heartbeat,
    period_frames: u64,
    chunks: u64,
}

/// Builds the tap.
pub(crate) struct TapBuilder(Tap);

impl TapBuilder {
    /// A tap writing into `ring`.
    pub(crate) fn new(
        ring: rtrb::Producer<f32>,
        clock: Arc<Clock>,
        heartbeat: Heartbeat,
        period_frames: u32,
    ) -> TapBuilder {
        TapBuilder(Tap {
            ring,
            clock,
            heartbeat,
            period_frames: u64::from(period_frames.max(1)),
            chunks: 0,
        })
    }
}

impl EffectBuilder for TapBuilder {
    type Handle = ();
    fn build(self) -> (Box<dyn Effect>, ()) {
        (Box::new(self.0), ())
    }
}

impl Effect for Tap {
    fn init(&mut self, sample_rate: u32, _internal_buffer_size: usize) {
        self.clock.sample_rate.store(sample_rate, Ordering::Relaxed);
    }

    fn on_change_sample_rate(&mut self, sample_rate: u32) {
        self.clock.sample_rate.store(sample_rate, Ordering::Relaxed);
    }

    fn process(&mut self, input: &mut [Frame], _dt: f64, _info: &Info) {
        // Real-time thread: no allocation, no lock, no blocking.
        match self.ring.write_chunk_uninit(input.len() * 2) {
            Ok(chunk) => {
                chunk.fill_from_iter(input.iter().flat_map(|f| [f.left, f.right]));
            }
            Err(_) => {
                self.clock
                    .dropped
                    .fetch_add(input.len() as u64, Ordering::Relaxed);
            }
        }
        let frames = self
            .clock
            .frames
            .fetch_add(input.len() as u64, Ordering::Relaxed)
            + input.len() as u64;
        self.chunks += 1;
        let alive = self.clock.loop_alive_ns.load(Ordering::Relaxed);
        if syncra_node::audio::monotonic_ns().saturating_sub(alive) < LOOP_HUNG {
            let render_us = self.clock.render_us.load(Ordering::Relaxed);
            self.heartbeat.beat(Some(&NodeMetrics {
                tick: frames / self.period_frames,
                entities: None,
                tick_us: render_us.min(u64::from(u32::MAX)) as u32,
                tick_us_max: render_us.min(u64::from(u32::MAX)) as u32,
                overruns: self.clock.misses.load(Ordering::Relaxed),
            }));
        }
    }
}

/// The null output: pulls the mixer one period at a time at real-time pace. Its virtual
/// device plays period `n` while the thread renders period `n + 1`; a period finished after
/// its turn to play has come is a deadline miss (an underrun on a real device).
pub(crate) struct NullBackend {
    sample_rate: u32,
    period_frames: u32,
    clock: Arc<Clock>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// What the null output needs.
pub(crate) struct NullSettings {
    /// Frames per second.
    pub(crate) sample_rate: u32,
    /// Frames per period.
    pub(crate) period_frames: u32,
    /// Shared with the control loop.
    pub(crate) clock: Arc<Clock>,
}

impl Backend for NullBackend {
    type Settings = NullSettings;
    type Error = std::io::Error;

    fn setup(s: NullSettings, _internal_buffer_size: usize) -> Result<(Self, u32), Self::Error> {
        Ok((
            NullBackend {
                sample_rate: s.sample_rate,
                period_frames: s.period_frames,
                clock: s.clock,
                stop: Arc::new(AtomicBool::new(false)),
                thread: None,
            },
            s.sample_rate,
        ))
    }

    fn start(&mut self, mut renderer: Renderer) -> Result<(), Self::Error> {
        let (rate, frames) = (self.sample_rate, self.period_frames as usize);
        let (clock, stop) = (self.clock.clone(), self.stop.clone());
        let period = Duration::from_secs_f64(frames as f64 / f64::from(rate));
        let thread = std::thread::Builder::new()
            .name("audio-null".into())
            .spawn(move || {
                let mut buf = vec![0.0f32; frames * 2];
                let mut start = Instant::now();
                let mut played: u32 = 0;
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    renderer.on_start_processing();
                    renderer.process(&mut buf, 2);
                    let done = Instant::now();
                    clock
                        .render_us
                        .store(done.duration_since(t).as_micros() as u64, Ordering::Relaxed);
                    // This period plays from `start + played × period`.
                    let due = start + period * played;
                    if done > due + period / 8 && played > 0 {
                        clock.misses.fetch_add(1, Ordering::Relaxed);
                        // The device ran dry: it starts again from now.
                        start = done;
                        played = 0;
                    }
                    played += 1;
                    if played > 1 << 20 {
                        start += period * (played - 1);
                        played = 1;
                    }
                    // Render the next period while this one plays.
                    let wake = start + period * (played - 1);
                    if let Some(d) = wake.checked_duration_since(Instant::now()) {
                        std::thread::sleep(d);
                    }
                }
            })?;
        self.thread = Some(thread);
        Ok(())
    }
}

impl Drop for NullBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The mixer, on whichever output it plays.
pub(crate) enum Mixer {
    /// The system's audio device.
    Device(AudioManager<CpalBackend>),
    /// The null output.
    Null(AudioManager<NullBackend>),
}

macro_rules! with {
    ($self:expr, $m:ident => $e:expr) => {
        match $self {
            Mixer::Device($m) => $e,
            Mixer::Null($m) => $e,
        }
    };
}

impl std::fmt::Debug for Mixer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mixer::Device(_) => "Mixer::Device",
            Mixer::Null(_) => "Mixer::Null",
        })
    }
}

/// How many sounds, listeners and tracks the mixer makes room for.
pub(crate) fn capacities(max_sounds: usize) -> Capacities {
    Capacities {
        sub_track_capacity: max_sounds + 8,
        listener_capacity: 4,
        ..Capacities::default()
    }
}

/// Open the system's audio device, with `tap` on the main track (consumed either way: a
/// failed device leaves the caller to make a new tap for the null output).
pub(crate) fn device(tap: TapBuilder, max_sounds: usize) -> Result<Mixer, String> {
    let s = AudioManagerSettings::<CpalBackend> {
        capacities: capacities(max_sounds),
        main_track_builder: MainTrackBuilder::new().with_effect(tap),
        ..Default::default()
    };
    AudioManager::<CpalBackend>::new(s)
        .map(Mixer::Device)
        .map_err(|e| e.to_string())
}

/// The null output, with `tap` on the main track.
pub(crate) fn null(
    tap: TapBuilder,
    settings: NullSettings,
    max_sounds: usize,
) -> Result<Mixer, String> {
    let s = AudioManagerSettings::<NullBackend> {
        capacities: capacities(max_sounds),
        main_track_builder: MainTrackBuilder::new().with_effect(tap),
        internal_buffer_size: 128,
        backend_settings: settings,
    };
    AudioManager::<NullBackend>::new(s)
        .map(Mixer::Null)
        .map_err(|e| format!("the null output did not start: {e}"))
}

/// An error from the mixer, as text.
fn text(e: impl std::fmt::Display) -> String {
    e.to_string()
}

impl Mixer {
    /// Play `data` on the main track.
    pub(crate) fn play(&mut self, data: StaticSoundData) -> Result<StaticSoundHandle, String> {
        with!(self, m => m.play(data).map_err(text))
    }

    /// A spatial track at `position`, heard by `listener`.
    pub(crate) fn spatial_track(
        &mut self,
        listener: ListenerId,
        position: [f32; 3],
        builder: SpatialTrackBuilder,
    ) -> Result<SpatialTrackHandle, String> {
        let p = mint::Vector3 {
            x: position[0],
            y: position[1],
            z: position[2],
        };
        with!(self, m => m.add_spatial_sub_track(listener, p, builder).map_err(text))
    }

    /// A listener at the origin, looking down -Z.
    pub(crate) fn listener(&mut self) -> Result<ListenerHandle, String> {
        let p = mint::Vector3 {
            x: 0.0,
            y: 0.0,
            z: 0.0,
        };
        let q = mint::Quaternion {
            v: mint::Vector3 {
                x: 0.0,
                y: 0.0,
                z: 0.0,
            },
            s: 1.0,
        };
        with!(self, m => m.add_listener(p, q).map_err(text))
    }

    /// Whether this is the null output.
    pub(crate) fn is_null(&self) -> bool {
        matches!(self, Mixer::Null(_))
    }

    /// Errors the device reported since the last call (none for the null output).
    pub(crate) fn device_errors(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        if let Mixer::Device(m) = self {
            while let Some(e) = m.backend_mut().pop_error() {
                out.push(e.to_string());
            }
        }
        out
    }
}
