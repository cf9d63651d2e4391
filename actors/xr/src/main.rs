//! `syncra-xr`: the XR driver. It runs an OpenXR session on whatever runtime the system has
//! (Monado, SteamVR, a vendor's; in the tests, the simulated headset in
//! `integration-tests/simxr`), paced by the runtime: each headset frame it publishes the
//! head, eye and hand poses at the frame's predicted display time on `xr/pose`, each change of
//! a controller on `xr/actions`, waits briefly for the renderer's eye pair drawn for that pose
//! (`renderer/eyes`), copies the newest pair into the runtime's swapchain and submits it with
//! the views it was drawn from.
//!
//! With no loader, no runtime or no headset it says why in `syncra status` and keeps looking
//! every `retry_ms`: the engine runs flat meanwhile (the window and renderer go on as ever),
//! and when a headset appears XR starts without restarting anything else. A headset that goes
//! away (the session's loss pending) ends the session, and the same search begins again.
//!
//! `syncra call xr syncra.xr.get-info/1` says where it stands; `syncra.xr.haptic/1` vibrates
//! a controller.

mod headset;
mod vulkan;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::Deserialize;
use syncra_node::audio::monotonic_ns;
use syncra_node::driver::Ticker;
use syncra_node::events::{Events, NodeEvent};
use syncra_node::exit_code;
use syncra_node::streams::{BulkConsumer, Producer, StreamOptions};
use syncra_node::xr::{
    CONTROLS_STREAM, EYES_STREAM, EyeFrame, EyeView, Fov, GetXrInfo, Haptic, HapticSent,
    POSE_STREAM, Placement, Pose, SessionState, XrControl, XrInfo, XrPose,
};
use syncra_node::{Figure, FigureKind, Node};

use headset::{Change, Headset, Submit};

/// The longest wait between two looks for an OpenXR runtime that is not installed.
const MAX_RUNTIME_WAIT: Duration = Duration::from_secs(30);

/// `[drivers.xr] settings = { .. }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Settings {
    /// Use the system's OpenXR runtime; `false`: stay flat and say so.
    openxr: bool,
    /// The renderer whose eye frames are submitted (`<renderer>/eyes`); empty: poses only.
    renderer: String,
    /// How often to look again for a runtime or a headset, milliseconds.
    retry_ms: u64,
    /// How long a frame waits for the eye pair drawn for its own pose, as a fraction of the
    /// display period (the rest is the copy and the runtime's); after that the newest pair
    /// goes, and the compositor reprojects it.
    eye_wait: f64,
    /// An eye pair drawn for a pose more than this many frames old is not submitted (the
    /// frame goes empty): the renderer has stopped or gone.
    max_eye_age_frames: u64,
    /// The name the runtime shows for this application.
    application: String,
    /// Where the arena stands in the headset's space (a table-top model by default); it goes
    /// out with every pose, so the renderer and the worlds place it alike.
    placement: Placement,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            openxr: true,
            renderer: "renderer".into(),
            retry_ms: 1000,
            eye_wait: 0.6,
            max_eye_age_frames: 9,
            application: "Syncra".into(),
            placement: Placement::default(),
        }
    }
}

/// Leave as a node whose settings were refused (not restarted: it would fail the same way).
fn refuse(node: &Node, why: &str) -> ! {
    node.exit_with(
        exit_code::BAD_SETTINGS,
        &format!("the settings do not fit this node: {why}"),
    )
}

fn validate(node: &Node, s: &Settings) {
    if !(10..=60_000).contains(&s.retry_ms) {
        refuse(
            node,
            &format!("settings.retry_ms = {}: must be 10 ..= 60000", s.retry_ms),
        );
    }
    if !(0.0..=0.9).contains(&s.eye_wait) {
        refuse(
            node,
            &format!(
                "settings.eye_wait = {}: must be 0 ..= 0.9 (of a frame)",
                s.eye_wait
            ),
        );
    }
    let p = s.placement;
    if !(p.origin.iter().all(|v| v.is_finite()) && p.scale.is_finite() && p.scale > 0.0) {
        refuse(
            node,
            &format!(
                "settings.placement = {{ origin = {:?}, scale = {} }}: needs a finite origin and a scale above 0",
                p.origin, p.scale
            ),
        );
    }
    if !(1..=1000).contains(&s.max_eye_age_frames) {
        refuse(
            node,
            &format!(
                "settings.max_eye_age_frames = {}: must be 1 ..= 1000",
                s.max_eye_age_frames
            ),
        );
    }
}

struct XrDriver {
    node: &'static Node,
    s: Settings,
    events: Events,
    ticker: Ticker,
    poses: Producer<XrPose>,
    controls: Producer<XrControl>,
    eyes: Option<BulkConsumer<EyeFrame>>,
    headset: Option<Headset>,
    /// Why there is no session (empty while one runs), when to look again, and how many
    /// looks in a row found no runtime at all (each doubles the wait, up to
    /// [`MAX_RUNTIME_WAIT`]).
    why: String,
    next_try: Instant,
    no_runtime: u32,
    /// The XR frame number: the pose stream's sequence, so it goes on across restarts.
    frame: u64,
    /// The newest eye pair received (also staged into the headset's GPU while there is one).
    staged: Option<EyeFrame>,
    /// Pixels of the newest pair (both eyes), and whether the headset's staging buffer has
    /// yet to get them.
    pixels: Vec<u8>,
    dirty: bool,
    last_controls: HashMap<&'static str, (f32, f32)>,
    /// Publish every control on the next frame, changed or not (a session newly focused: a
    /// new incarnation tells the input driver what is held, and what is not).
    publish_all: bool,
    /// The runtime asked the application to leave (the session is exiting).
    exiting: bool,
    /// The last pose published, for the "XR is off" pose when the session goes.
    last_pose: Option<XrPose>,
    /// The last warning about the eye stream (said once, not every frame).
    eyes_warning: String,
    /// A scratch buffer: a pair is read into it and kept only if the read was not torn.
    scratch: Vec<u8>,
    frames: u64,
    submitted: u64,
    empty: u64,
    missed: u64,
    sessions: u64,
    rate_hz: f64,
    fig_frames: Figure,
    fig_submitted: Figure,
    fig_missed: Figure,
    fig_latency: Figure,
    fig_state: Figure,
    fig_looks: Figure,
}

fn main() {
    let node: &'static Node = Box::leak(Box::new(Node::join_or_standalone()));
    let s: Settings = node.settings().unwrap_or_else(|e| e.exit());
    validate(node, &s);
    let mut d = XrDriver::start(node, s).unwrap_or_else(|why| {
        node.exit_with(
            syncra_node::driver::FAILED,
            &format!("could not start: {why}"),
        )
    });
    node.ready();
    d.run();
}

/// A pose message as large as any: for the stream's slot size.
fn pose_sample() -> XrPose {
    let view = EyeView {
        pose: Pose::default(),
        fov: Fov {
            left: -1.0,
            right: 1.0,
            up: 1.0,
            down: -1.0,
        },
    };
    XrPose {
        frame: u64::MAX,
        display_time: i64::MAX,
        display_monotonic_ns: u64::MAX,
        located_ns: u64::MAX,
        period_ns: u64::MAX,
        state: SessionState::LossPending,
        should_render: true,
        head: Pose::default(),
        views: [view; 2],
        hands: [Some(Pose::default()); 2],
        eye_size: [u32::MAX; 2],
        placement: Placement::default(),
    }
}

impl XrDriver {
    fn start(node: &'static Node, s: Settings) -> Result<XrDriver, String> {
        let mut events = node.events();
        let poses = node
            .declare(POSE_STREAM, StreamOptions::latest_only_like(&pose_sample()))
            .map_err(|e| e.to_string())?;
        let control_sample = XrControl {
            time_ns: u64::MAX,
            control: "RightThumbstick".into(),
            x: -1.0,
            y: -1.0,
        };
        let controls = node
            .declare(
                CONTROLS_STREAM,
                StreamOptions::drop_oldest(
                    syncra_node::streams::slot_for(&control_sample, 2.0),
                    256,
                ),
            )
            .map_err(|e| e.to_string())?;
        let eyes = if s.renderer.is_empty() {
            None
        } else {
            let c = node
                .subscribe_bulk::<EyeFrame>(&format!("{}/{EYES_STREAM}", s.renderer))
                .map_err(|e| e.to_string())?;
            events.watch(&c);
            Some(c)
        };
        let frame = poses.next_seq();
        let why = if s.openxr {
            "looking for an OpenXR runtime".to_owned()
        } else {
            "OpenXR is off in this node's settings (openxr = false): the engine runs flat"
                .to_owned()
        };
        node.set_note(&why);
        Ok(XrDriver {
            node,
            events,
            ticker: Ticker::new(None),
            poses,
            controls,
            eyes,
            headset: None,
            why,
            next_try: Instant::now(),
            no_runtime: 0,
            frame,
            staged: None,
            pixels: Vec::new(),
            dirty: false,
            last_controls: HashMap::new(),
            publish_all: false,
            exiting: false,
            last_pose: None,
            eyes_warning: String::new(),
            scratch: Vec::new(),
            frames: 0,
            submitted: 0,
            empty: 0,
            missed: 0,
            sessions: 0,
            rate_hz: 0.0,
            fig_frames: node.figure("frames", FigureKind::Counter),
            fig_submitted: node.figure("submitted", FigureKind::Counter),
            fig_missed: node.figure("missed", FigureKind::Counter),
            fig_latency: node.figure("pose_to_submit_ms", FigureKind::Gauge),
            fig_state: node.figure("session", FigureKind::Gauge),
            fig_looks: node.figure("looks", FigureKind::Counter),
            s,
        })
    }

    fn run(&mut self) -> ! {
        loop {
            // What came for the node: calls, shutdown, eye frames. Without a running session
            // this is also where the loop waits (until the next look for a headset).
            let deadline = match &self.headset {
                Some(h) if h.running() => Some(Instant::now()),
                Some(_) => Some(Instant::now() + Duration::from_millis(10)),
                None if self.s.openxr => Some(self.next_try),
                // Flat on purpose: nothing to do but answer.
                None => None,
            };
            let mut wait_until = deadline;
            loop {
                match self.events.next(wait_until) {
                    NodeEvent::Deadline => break,
                    NodeEvent::Shutdown => self.stop(),
                    NodeEvent::Message(incoming) => self.answer(incoming),
                    NodeEvent::Stream(_) => {
                        let _ = self.take_eyes(Duration::ZERO);
                    }
                    _ => {}
                }
                wait_until = Some(Instant::now());
            }
            if self.headset.is_none() && self.s.openxr && Instant::now() >= self.next_try {
                self.look_for_headset();
            }
            if self.headset.is_some() {
                let t0 = Instant::now();
                match self.step() {
                    Ok(busy) => self.ticker.ticked(t0.elapsed().saturating_sub(busy)),
                    Err(why) => {
                        let exiting = std::mem::take(&mut self.exiting);
                        self.lose(why, exiting)
                    }
                }
            }
            self.node.heartbeat(Some(self.ticker.metrics()));
        }
    }

    /// Try to open a session; on failure say why (once per reason) and look again later:
    /// after `retry_ms` for a headset, less and less often for a runtime that is not there.
    fn look_for_headset(&mut self) {
        self.fig_looks.add(1.0);
        let opened = Headset::open(&self.s.application);
        self.no_runtime = match &opened {
            Err(e) if e.no_runtime => self.no_runtime.saturating_add(1),
            _ => 0,
        };
        let wait = Duration::from_millis(self.s.retry_ms)
            .saturating_mul(1 << self.no_runtime.saturating_sub(1).min(8))
            .min(MAX_RUNTIME_WAIT.max(Duration::from_millis(self.s.retry_ms)));
        self.next_try = Instant::now() + wait;
        match opened {
            Ok(h) => {
                self.sessions += 1;
                self.dirty = self.staged.is_some();
                tracing::info!(runtime = %h.runtime, system = %h.system, eye_size = ?h.eye_size, gpu = %h.gpu.name, "XR session created");
                self.why.clear();
                self.note(&h);
                self.headset = Some(h);
            }
            Err(e) => {
                let why = e.why;
                if why != self.why {
                    tracing::warn!(reason = %why, "no XR session");
                    self.node.set_note(&why);
                    self.why = why;
                }
            }
        }
    }

    /// The session is gone: say why, publish that XR is off, and look again.
    fn lose(&mut self, why: String, exiting: bool) {
        tracing::warn!(reason = %why, "XR session ended");
        self.headset = None;
        self.release_controls();
        self.publish_off(SessionState::LossPending);
        // A pair drawn for the old session is not the new one's.
        self.staged = None;
        self.dirty = false;
        self.why = why;
        self.node.set_note(&self.why);
        self.fig_state.set(0.0);
        // A runtime that asked the application to leave is not asked again at once.
        let wait = if exiting {
            MAX_RUNTIME_WAIT
        } else {
            Duration::from_millis(self.s.retry_ms)
        };
        self.next_try = Instant::now() + wait;
    }

    /// Whatever the controllers held goes up: no action stays pressed.
    fn release_controls(&mut self) {
        let held: Vec<_> = self
            .last_controls
            .iter()
            .filter(|(_, v)| **v != (0.0, 0.0))
            .map(|(k, _)| (*k, 0.0, 0.0))
            .collect();
        if let Err(e) = self.publish_controls(&held) {
            tracing::warn!(error = %e, "could not release the controllers' controls");
        }
    }

    /// Say on `xr/pose` that nothing is to be drawn any more (the session went): the
    /// renderer stops drawing eyes, a world hears from its camera again.
    fn publish_off(&mut self, state: SessionState) {
        if let Some(mut pose) = self.last_pose.take() {
            pose.frame = self.frame;
            self.frame += 1;
            pose.state = state;
            pose.should_render = false;
            pose.located_ns = monotonic_ns();
            if let Err(e) = self.poses.publish(&pose) {
                tracing::warn!(error = %e, "could not say that XR is off");
            }
        }
    }

    fn note(&self, h: &Headset) {
        self.node.set_note(&format!(
            "{} on {} ({}): session {}",
            h.system,
            h.runtime,
            h.gpu.name,
            h.state.as_str()
        ));
        self.fig_state.set(state_number(h.state));
    }

    /// One turn with a session: its events, then a frame if it runs. Returns the time spent
    /// blocked in the runtime's frame wait (not work).
    fn step(&mut self) -> Result<Duration, String> {
        let h = self.headset.as_mut().expect("checked by the caller");
        let changes = h.events()?;
        for c in &changes {
            match c {
                Change::State(SessionState::LossPending) => {
                    return Err(format!(
                        "the headset went away ({} says the session's loss is pending); looking for it again",
                        h.runtime
                    ));
                }
                Change::State(SessionState::Exiting) => {
                    self.exiting = true;
                    return Err(format!(
                        "{} ended the session (exiting); looking again in {} s",
                        h.runtime,
                        MAX_RUNTIME_WAIT.as_secs()
                    ));
                }
                Change::InstanceLoss => {
                    return Err(format!(
                        "{} is going away (instance loss pending)",
                        h.runtime
                    ));
                }
                Change::State(s) => tracing::info!(state = s.as_str(), "XR session"),
            }
        }
        if !changes.is_empty() {
            let h = self.headset.as_ref().expect("still there");
            self.note(h);
            // Out of focus the controllers act no more: let go of what they held. Back in
            // focus, say every control once (a new incarnation's first word to the input
            // driver, which then lets go of what the last one held).
            if h.state == SessionState::Focused {
                self.publish_all = true;
            } else {
                self.release_controls();
            }
        }
        let h = self.headset.as_mut().expect("still there");
        if !h.running() {
            return Ok(Duration::ZERO);
        }
        let w0 = Instant::now();
        let fs = h.wait()?;
        let waited = w0.elapsed();
        let seen = h.locate(&fs)?;
        self.frames += 1;
        self.fig_frames.add(1.0);
        if seen.skipped > 0 {
            self.missed += seen.skipped;
            self.fig_missed.add(seen.skipped as f64);
        }
        self.rate_hz = 1e9 / seen.period_ns as f64;
        let frame = self.frame;
        self.frame += 1;
        let pose = XrPose {
            frame,
            display_time: seen.display_time,
            display_monotonic_ns: h.monotonic(seen.display_time),
            located_ns: seen.located_ns,
            period_ns: seen.period_ns,
            state: h.state,
            should_render: seen.should_render,
            head: seen.head,
            views: seen.views,
            hands: seen.hands,
            eye_size: h.eye_size,
            placement: self.s.placement,
        };
        self.poses.publish(&pose).map_err(|e| e.to_string())?;
        self.last_pose = Some(pose);
        self.publish_controls(&seen.controls)?;
        // Give the renderer part of the frame to draw this pose; the newest pair goes then.
        if seen.should_render && self.eyes.is_some() {
            let budget = Duration::from_nanos((seen.period_ns as f64 * self.s.eye_wait) as u64);
            let until = Instant::now() + budget;
            loop {
                let fresh = self.staged.as_ref().is_some_and(|s| s.pose_frame >= frame);
                let left = until.saturating_duration_since(Instant::now());
                if fresh || left.is_zero() || self.take_eyes(left).is_err() {
                    break;
                }
            }
        }
        let submit = self.staged.as_ref().and_then(|s| {
            (frame.saturating_sub(s.pose_frame) <= self.s.max_eye_age_frames).then_some(Submit {
                views: s.views,
                width: s.width,
                height: s.height,
            })
        });
        let latency = self.staged.as_ref().map(|s| s.located_ns);
        let h = self.headset.as_mut().expect("still there");
        if submit.is_some() && self.dirty {
            h.gpu.stage(&self.pixels)?;
            self.dirty = false;
        }
        let submitted = submit.is_some() && seen.should_render;
        h.end(&fs, submit)?;
        if submitted {
            self.submitted += 1;
            self.fig_submitted.add(1.0);
            if let Some(located) = latency {
                self.fig_latency
                    .set(monotonic_ns().saturating_sub(located) as f64 / 1e6);
            }
        } else {
            self.empty += 1;
        }
        Ok(waited)
    }

    /// Publish the controls whose value changed since the last frame.
    fn publish_controls(&mut self, now: &[(&'static str, f32, f32)]) -> Result<(), String> {
        let t = monotonic_ns();
        let all = std::mem::take(&mut self.publish_all) && !now.is_empty();
        if !all && now.is_empty() {
            return Ok(());
        }
        for &(name, x, y) in now {
            let last = self.last_controls.get(name).copied().unwrap_or((0.0, 0.0));
            if (x, y) == last && !all {
                continue;
            }
            self.last_controls.insert(name, (x, y));
            self.controls
                .publish(&XrControl {
                    time_ns: t,
                    control: name.into(),
                    x,
                    y,
                })
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Read the eye pairs that came (waiting up to `timeout` for one), keeping the newest
    /// that passes [`check_eyes`]. `Ok(true)`: a new pair; `Ok(false)`: none came; `Err`: the
    /// stream cannot be read (refused, gone) — said once, and no use waiting on it.
    fn take_eyes(&mut self, timeout: Duration) -> Result<bool, ()> {
        let Some(c) = self.eyes.as_mut() else {
            return Err(());
        };
        let max = self
            .headset
            .as_ref()
            .map_or([MAX_EYE_SIDE; 2], |h| h.max_size());
        let newest_pose = self.frame;
        let mut timeout = timeout;
        let mut took = false;
        loop {
            // Into the scratch buffer: a torn read's bytes never reach the staged pair.
            let scratch = &mut self.scratch;
            let got = c.read_with(timeout, |h: &EyeFrame, bytes: &[u8]| {
                let need = check_eyes(h, bytes.len(), max, newest_pose)?;
                scratch.clear();
                scratch.extend_from_slice(&bytes[..need]);
                Ok::<_, String>(h.clone())
            });
            timeout = Duration::ZERO;
            match got {
                Ok(Some((_, Ok(header)))) => {
                    std::mem::swap(&mut self.pixels, &mut self.scratch);
                    self.staged = Some(header);
                    self.dirty = true;
                    took = true;
                }
                Ok(Some((_, Err(why)))) => warn_once(
                    &mut self.eyes_warning,
                    &format!("an eye frame was refused: {why}"),
                ),
                Ok(None) => return Ok(took),
                Err(e) => {
                    warn_once(
                        &mut self.eyes_warning,
                        &format!("reading the renderer's eye frames: {e}"),
                    );
                    return if took { Ok(true) } else { Err(()) };
                }
            }
        }
    }

    fn answer(&mut self, incoming: syncra_node::Incoming) {
        let h = self.headset.as_ref();
        let info = XrInfo {
            runtime: h.map(|h| h.runtime.clone()).unwrap_or_default(),
            system: h.map(|h| h.system.clone()).unwrap_or_default(),
            session: h.map(|h| h.state),
            reason: self.why.clone(),
            frames: self.frames,
            submitted: self.submitted,
            empty: self.empty,
            missed: self.missed,
            sessions: self.sessions,
            eye_size: h.map(|h| h.eye_size).unwrap_or_default(),
            rate_hz: self.rate_hz,
        };
        let incoming = match incoming.answer_with(|GetXrInfo| Ok(info)) {
            Ok(()) => return,
            Err(other) => other,
        };
        let headset = self.headset.as_ref();
        let unknown = incoming.answer_with(|p: Haptic| {
            if !(0.0..=1.0).contains(&p.amplitude) {
                return Err(format!("amplitude {} is not in 0 ..= 1", p.amplitude));
            }
            if p.duration_ms > 10_000 {
                return Err(format!("duration_ms {} is over 10000", p.duration_ms));
            }
            let hands = match headset {
                Some(h) if h.running() => h.haptic(
                    p.hand,
                    p.amplitude,
                    Duration::from_millis(u64::from(p.duration_ms)),
                    p.frequency_hz,
                )?,
                _ => 0,
            };
            Ok(HapticSent { hands })
        });
        if let Err(m) = unknown {
            let tag = m.tag().to_owned();
            m.reply_error(format!(
                "the XR driver does not know `{tag}`: it takes syncra.xr.haptic/1 and syncra.xr.get-info/1"
            ));
        }
    }

    /// The node is stopping: end the session as OpenXR asks, then leave.
    fn stop(&mut self) -> ! {
        if let Some(h) = &self.headset {
            h.request_exit();
        }
        self.headset = None;
        self.publish_off(SessionState::Exiting);
        tracing::info!(node = %self.node.name(), "stopped");
        std::process::exit(0);
    }
}

/// Log `what` once (until another warning comes); `last` is the last one logged.
fn warn_once(last: &mut String, what: &str) {
    if last != what {
        tracing::warn!("{what}");
        *last = what.to_owned();
    }
}

/// The largest eye side taken before a headset says its own.
const MAX_EYE_SIDE: u32 = 8192;

/// Check an eye pair's header against the bytes that came with it and what the headset
/// takes; the bytes to keep. `newest_pose` is the next pose frame: a pair cannot have been
/// drawn for it yet.
fn check_eyes(h: &EyeFrame, len: usize, max: [u32; 2], newest_pose: u64) -> Result<usize, String> {
    if h.width == 0 || h.height == 0 || h.width > max[0] || h.height > max[1] {
        return Err(format!(
            "eyes of {}×{}: must be 1×1 ..= {}×{}",
            h.width, h.height, max[0], max[1]
        ));
    }
    let need = h.frame_len().filter(|n| *n <= len).ok_or_else(|| {
        format!(
            "eyes of {}×{} came with {len} bytes, not {}",
            h.width,
            h.height,
            8 * u128::from(h.width) * u128::from(h.height)
        )
    })?;
    if h.pose_frame >= newest_pose {
        return Err(format!(
            "drawn for pose {} when the newest is {}",
            h.pose_frame,
            newest_pose.saturating_sub(1)
        ));
    }
    let finite = |v: &EyeView| {
        v.pose
            .position
            .iter()
            .chain(&v.pose.orientation)
            .chain(&[v.fov.left, v.fov.right, v.fov.up, v.fov.down])
            .all(|x| x.is_finite())
    };
    if !h.views.iter().all(finite) {
        return Err("views that are not finite numbers".into());
    }
    Ok(need)
}

fn state_number(s: SessionState) -> f64 {
    match s {
        SessionState::Idle => 1.0,
        SessionState::Ready => 2.0,
        SessionState::Synchronized => 3.0,
        SessionState::Visible => 4.0,
        SessionState::Focused => 5.0,
        SessionState::Stopping => 6.0,
        SessionState::LossPending => 7.0,
        SessionState::Exiting => 8.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(width: u32, height: u32, pose_frame: u64) -> EyeFrame {
        let v = pose_sample().views[0];
        EyeFrame {
            pose_frame,
            display_time: 1,
            located_ns: 1,
            drawn_ns: 2,
            width,
            height,
            views: [v, v],
            placement: Placement::default(),
            world: "main".into(),
            tick: 1,
        }
    }

    #[test]
    fn an_eye_pair_is_taken_only_when_its_header_and_bytes_agree_and_fit_the_headset() {
        let max = [640, 640];
        assert_eq!(
            check_eyes(&pair(320, 200, 4), 320 * 200 * 8, max, 5),
            Ok(320 * 200 * 8)
        );
        // More bytes than the pair (a slot's padding): only the pair is kept.
        assert_eq!(check_eyes(&pair(2, 2, 4), 1000, max, 5), Ok(32));
        for (h, len, why) in [
            (pair(0, 200, 4), 0, "1×1"),
            (pair(641, 200, 4), usize::MAX, "640×640"),
            (pair(u32::MAX, u32::MAX, 4), usize::MAX, "640×640"),
            (pair(320, 200, 4), 320 * 200 * 8 - 1, "came with"),
            (pair(320, 200, 5), 320 * 200 * 8, "drawn for pose 5"),
            (pair(320, 200, u64::MAX), 320 * 200 * 8, "drawn for pose"),
        ] {
            let e = check_eyes(&h, len, max, 5).unwrap_err();
            assert!(e.contains(why), "{e}");
        }
        let mut nan = pair(2, 2, 1);
        nan.views[1].fov.up = f32::NAN;
        assert!(check_eyes(&nan, 32, max, 5).unwrap_err().contains("finite"));
        // A header whose size overflows is refused, never wrapped.
        let huge = pair(u32::MAX, u32::MAX, 1);
        assert!(check_eyes(&huge, usize::MAX, [u32::MAX; 2], 5).is_err());
    }
}
