//! Where gamepads come from. [`PadSource`] is the seam: real machines use [`Gilrs`]; tests
//! (and a machine with no pads) use [`Script`], which follows a JSON-lines file — events
//! written to it, now or later, are the pads' events, and the rumble it is asked for is
//! appended to a log a test can read.

use std::collections::HashMap;
use std::io::{BufRead, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Deserialize;
use syncra_node::audio::monotonic_ns;

/// One thing a pad did.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum PadChange {
    /// It appeared (or came back), with its name.
    Connected(String),
    /// It went away.
    Disconnected,
    /// A button, by gilrs's name ("South", "DPadUp", …).
    Button(String, bool),
    /// An axis, by gilrs's name ("LeftStickX", …), -1 ..= 1.
    Axis(String, f32),
}

/// An event of the pad with stable identity `uuid`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PadEvent {
    /// The pad's stable identity (the same when it is plugged back).
    pub(crate) uuid: String,
    /// `CLOCK_MONOTONIC` ns when the source saw it.
    pub(crate) time_ns: u64,
    /// What it did.
    pub(crate) change: PadChange,
}

/// A source of gamepad events.
pub(crate) trait PadSource {
    /// What it is, for status: "gilrs", "script <path>".
    fn describe(&self) -> String;
    /// Events since the last call (never blocks).
    fn poll(&mut self, out: &mut Vec<PadEvent>);
    /// Rumble pad `uuid`: `strong`/`weak` motors 0 ..= 1 for `duration`. Whether the pad took it.
    fn rumble(&mut self, uuid: &str, strong: f32, weak: f32, duration: Duration) -> bool;
}

/// Real gamepads, through gilrs (evdev on Linux).
pub(crate) struct Gilrs {
    gilrs: gilrs::Gilrs,
    /// The pads connected before the first poll are announced by it.
    announced: bool,
    /// Effects playing, kept until they end (dropping one stops it).
    effects: Vec<(gilrs::ff::Effect, Instant)>,
}

impl Gilrs {
    pub(crate) fn open() -> Result<Gilrs, String> {
        match gilrs::Gilrs::new() {
            Ok(gilrs) => Ok(Gilrs {
                gilrs,
                announced: false,
                effects: Vec::new(),
            }),
            Err(gilrs::Error::NotImplemented(_)) => {
                Err("gilrs has no gamepad backend on this platform".into())
            }
            Err(e) => Err(format!("gilrs: {e}")),
        }
    }

    fn uuid(&self, id: gilrs::GamepadId) -> String {
        let u = self.gilrs.gamepad(id).uuid();
        u.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl PadSource for Gilrs {
    fn describe(&self) -> String {
        format!(
            "gilrs ({} gamepads connected)",
            self.gilrs.gamepads().count()
        )
    }

    fn poll(&mut self, out: &mut Vec<PadEvent>) {
        let now = Instant::now();
        self.effects.retain(|(_, until)| *until > now);
        if !self.announced {
            self.announced = true;
            let present: Vec<(String, String)> = self
                .gilrs
                .gamepads()
                .map(|(id, pad)| (self.uuid(id), pad.name().to_owned()))
                .collect();
            for (uuid, name) in present {
                out.push(PadEvent {
                    uuid,
                    time_ns: monotonic_ns(),
                    change: PadChange::Connected(name),
                });
            }
        }
        while let Some(ev) = self.gilrs.next_event() {
            use gilrs::EventType as E;
            let change = match ev.event {
                E::Connected => PadChange::Connected(self.gilrs.gamepad(ev.id).name().to_owned()),
                E::Disconnected => PadChange::Disconnected,
                E::ButtonPressed(b, _) => PadChange::Button(format!("{b:?}"), true),
                E::ButtonReleased(b, _) => PadChange::Button(format!("{b:?}"), false),
                E::AxisChanged(a, v, _) => PadChange::Axis(format!("{a:?}"), v),
                _ => continue,
            };
            out.push(PadEvent {
                uuid: self.uuid(ev.id),
                time_ns: monotonic_ns(),
                change,
            });
        }
    }

    fn rumble(&mut self, uuid: &str, strong: f32, weak: f32, duration: Duration) -> bool {
        use gilrs::ff::{BaseEffect, BaseEffectType, EffectBuilder, Replay, Ticks};
        let Some((id, _)) = self
            .gilrs
            .gamepads()
            .find(|(id, pad)| pad.is_ff_supported() && self.uuid(*id) == uuid)
        else {
            return false;
        };
        let ms = duration.as_millis().min(10_000) as u32;
        let motor = |kind| BaseEffect {
            kind,
            scheduling: Replay {
                play_for: Ticks::from_ms(ms),
                ..Default::default()
            },
            ..Default::default()
        };
        let effect = EffectBuilder::new()
            .add_effect(motor(BaseEffectType::Strong {
                magnitude: (strong.clamp(0.0, 1.0) * f32::from(u16::MAX)) as u16,
            }))
            .add_effect(motor(BaseEffectType::Weak {
                magnitude: (weak.clamp(0.0, 1.0) * f32::from(u16::MAX)) as u16,
            }))
            .gamepads(&[id])
            .finish(&mut self.gilrs);
        match effect {
            Ok(e) if e.play().is_ok() => {
                self.effects.push((e, Instant::now() + duration));
                true
            }
            Ok(_) => false,
            Err(e) => {
                tracing::warn!(error = %e, pad = uuid, "rumble refused");
                false
            }
        }
    }
}

/// No gamepads (there is no backend, or config says so).
pub(crate) struct NoPads(pub(crate) String);

impl PadSource for NoPads {
    fn describe(&self) -> String {
        format!("none ({})", self.0)
    }
    fn poll(&mut self, _: &mut Vec<PadEvent>) {}
    fn rumble(&mut self, _: &str, _: f32, _: f32, _: Duration) -> bool {
        false
    }
}

/// One line of a pad script.
#[derive(Debug, Deserialize)]
struct ScriptLine {
    /// When, milliseconds after the driver started; absent: as soon as it is read.
    #[serde(default)]
    at_ms: Option<u64>,
    /// The pad's stable identity.
    pad: String,
    /// What it does.
    #[serde(flatten)]
    event: ScriptEvent,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "event", rename_all = "lowercase")]
enum ScriptEvent {
    Connected {
        #[serde(default = "pad_name")]
        name: String,
    },
    Disconnected,
    Button {
        button: String,
        pressed: bool,
    },
    Axis {
        axis: String,
        value: f32,
    },
}

fn pad_name() -> String {
    "Scripted Gamepad".into()
}

/// Scripted gamepads: a JSON-lines file followed as it grows, each line one event
/// (`{"pad":"p1","event":"button","button":"South","pressed":true}`); the rumble asked for is
/// appended to `rumble_log` as JSON lines.
pub(crate) struct Script {
    path: PathBuf,
    offset: u64,
    partial: String,
    line_no: usize,
    started: Instant,
    pending: Vec<(Instant, PadEvent)>,
    rumble_log: Option<PathBuf>,
    connected: HashMap<String, bool>,
}

impl Script {
    /// Follow the script at `path`. `resume`: a restarted driver does not replay what the
    /// script already said; like gilrs at start, it announces the pads connected by then.
    pub(crate) fn open(
        path: &Path,
        rumble_log: Option<PathBuf>,
        resume: bool,
    ) -> Result<Script, String> {
        std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut script = Script {
            path: path.to_owned(),
            offset: 0,
            partial: String::new(),
            line_no: 0,
            started: Instant::now(),
            pending: Vec::new(),
            rumble_log,
            connected: HashMap::new(),
        };
        if resume {
            let mut said = Vec::new();
            script.poll(&mut said);
            script.pending.clear();
            let mut present: Vec<(String, String)> = Vec::new();
            for ev in said {
                match ev.change {
                    PadChange::Connected(name) => present.push((ev.uuid, name)),
                    PadChange::Disconnected => present.retain(|(u, _)| *u != ev.uuid),
                    _ => {}
                }
            }
            let now = Instant::now();
            script.pending = present
                .into_iter()
                .map(|(uuid, name)| {
                    (
                        now,
                        PadEvent {
                            uuid,
                            time_ns: 0,
                            change: PadChange::Connected(name),
                        },
                    )
                })
                .collect();
        }
        Ok(script)
    }

    fn read_new_lines(&mut self) -> Vec<String> {
        let Ok(mut f) = std::fs::File::open(&self.path) else {
            return Vec::new();
        };
        if f.seek(std::io::SeekFrom::Start(self.offset)).is_err() {
            return Vec::new();
        }
        let mut reader = std::io::BufReader::new(f);
        let mut lines = Vec::new();
        loop {
            let mut buf = String::new();
            match reader.read_line(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    self.offset += n as u64;
                    if buf.ends_with('\n') {
                        self.partial.push_str(&buf);
                        lines.push(std::mem::take(&mut self.partial));
                    } else {
                        self.partial.push_str(&buf); // the rest is still being written
                    }
                }
            }
        }
        lines
    }
}

impl PadSource for Script {
    fn describe(&self) -> String {
        format!("script {}", self.path.display())
    }

    fn poll(&mut self, out: &mut Vec<PadEvent>) {
        for line in self.read_new_lines() {
            self.line_no += 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let parsed: ScriptLine = match serde_json::from_str(line) {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(file = %self.path.display(), line = self.line_no, error = %e, "a pad script line was skipped");
                    continue;
                }
            };
            let change = match parsed.event {
                ScriptEvent::Connected { name } => PadChange::Connected(name),
                ScriptEvent::Disconnected => PadChange::Disconnected,
                ScriptEvent::Button { button, pressed } => PadChange::Button(button, pressed),
                ScriptEvent::Axis { axis, value } => PadChange::Axis(
                    axis,
                    if value.is_finite() {
                        value.clamp(-1.0, 1.0)
                    } else {
                        0.0
                    },
                ),
            };
            let due = parsed.at_ms.map_or(Instant::now(), |ms| {
                self.started + Duration::from_millis(ms)
            });
            self.pending.push((
                due,
                PadEvent {
                    uuid: parsed.pad,
                    time_ns: 0,
                    change,
                },
            ));
        }
        let now = Instant::now();
        let mut i = 0;
        while i < self.pending.len() {
            if self.pending[i].0 <= now {
                let (_, mut ev) = self.pending.remove(i);
                ev.time_ns = monotonic_ns();
                match ev.change {
                    PadChange::Connected(_) => {
                        self.connected.insert(ev.uuid.clone(), true);
                    }
                    PadChange::Disconnected => {
                        self.connected.insert(ev.uuid.clone(), false);
                    }
                    _ => {}
                }
                out.push(ev);
            } else {
                i += 1;
            }
        }
    }

    fn rumble(&mut self, uuid: &str, strong: f32, weak: f32, duration: Duration) -> bool {
        if self.connected.get(uuid) != Some(&true) {
            return false;
        }
        if let Some(log) = &self.rumble_log {
            let line = serde_json::json!({
                "pad": uuid,
                "strong": strong,
                "weak": weak,
                "duration_ms": duration.as_millis() as u64,
            });
            let wrote = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .and_then(|mut f| writeln!(f, "{line}"));
            if let Err(e) = wrote {
                tracing::warn!(file = %log.display(), error = %e, "the rumble log could not be written");
            }
        }
        true
    }
}
