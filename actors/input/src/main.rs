//! `syncra-input`: the input driver. It merges gamepads (gilrs; a scripted source in tests)
//! with the window driver's keyboard and mouse events into one stream, `input/events`, each
//! event with its time and device, and applies the action map from config so worlds read
//! actions — `jump`, `move` — from `input/actions` instead of raw keys. Worlds ask it for
//! rumble (`syncra.input.rumble/1`).
//!
//! A pad is known by its stable identity (a UUID from vendor, product and version): unplugged
//! and plugged back, it keeps its id and its player. The table of pads lives on `input/pads`,
//! which the runtime keeps across the driver's restarts, so a crash of the driver does not
//! reshuffle players either.

mod actions;
mod pads;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use syncra_node::audio::monotonic_ns;
use syncra_node::driver::{self, Context, Driver};
use syncra_node::events::NodeEvent;
use syncra_node::input::{
    ACTIONS_STREAM, ActionEvent, ActionValue, Device, EVENTS_STREAM, GetInputInfo, InputEvent,
    InputInfo, InputKind, PADS_STREAM, PadInfo, PadTable, Rumble, Rumbling,
};
use syncra_node::streams::{Consumer, Producer, StreamOptions};
use syncra_node::window::WindowEvent;
use syncra_node::xr::{CONTROLS, Haptic, XrControl};
use syncra_node::{Figure, FigureKind, Node};

use crate::actions::{ActionMap, ActionSpec, Binding, Source, XR_STICK, binding, default_actions};
use crate::pads::{PadChange, PadEvent, PadSource};

/// Where gamepads come from.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum PadsSetting {
    /// `"gilrs"` (real pads) or `"none"`.
    Named(String),
    /// A scripted source: a JSON-lines file followed as it grows.
    Script {
        /// The script.
        script: PathBuf,
        /// Where the rumble asked for is written (JSON lines).
        #[serde(default)]
        rumble_log: Option<PathBuf>,
    },
}

/// `[drivers.input] settings = { .. }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Settings {
    /// The window driver whose events to read (`<window>/events`).
    window: String,
    /// Where gamepads come from.
    gamepads: PadsSetting,
    /// The action map.
    actions: BTreeMap<String, ActionSpec>,
    /// Gamepad polls per second.
    poll_hz: f64,
    /// The player of the first gamepad (the next get the next players). The keyboard and
    /// mouse are player 0's.
    first_pad_player: u32,
    /// The XR driver whose controllers (`<xr>/actions`) act for player 0; empty: none.
    xr: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            window: "window".into(),
            gamepads: PadsSetting::Named("gilrs".into()),
            actions: default_actions(),
            poll_hz: 250.0,
            first_pad_player: 0,
            xr: "xr".into(),
        }
    }
}

struct Input {
    source: Box<dyn PadSource>,
    window: Consumer<WindowEvent>,
    /// The XR driver's controller changes, and the incarnation of the driver that sent the
    /// last (a new one holds nothing the old one held).
    xr: Option<Consumer<XrControl>>,
    xr_incarnation: u64,
    /// The XR driver's node name, for haptics.
    xr_node: Option<String>,
    events: Producer<InputEvent>,
    actions: Producer<ActionEvent>,
    pads_out: Producer<PadTable>,
    map: ActionMap,
    pads: Vec<PadInfo>,
    first_pad_player: u32,
    poll_hz: f64,
    scratch: Vec<PadEvent>,
    changed: Vec<(String, ActionValue)>,
    published: u64,
    fig_events: Figure,
    fig_actions: Figure,
    fig_pads: Figure,
}

fn refuse(node: &Node, why: &str) -> ! {
    node.exit_with(
        syncra_node::exit_code::BAD_SETTINGS,
        &format!("the settings do not fit this node: {why}"),
    )
}

impl Driver for Input {
    type Settings = Settings;

    fn start(ctx: &mut Context<'_>, s: Settings) -> Result<Self, String> {
        let node = ctx.node();
        let map = ActionMap::new(&s.actions).unwrap_or_else(|e| refuse(node, &e));
        if !(s.poll_hz > 0.0 && s.poll_hz <= 2000.0) {
            refuse(
                node,
                &format!("settings.poll_hz = {}: must be in (0, 2000]", s.poll_hz),
            );
        }
        let source: Box<dyn PadSource> = match &s.gamepads {
            PadsSetting::Named(n) if n == "gilrs" => match pads::Gilrs::open() {
                Ok(g) => Box::new(g),
                Err(e) => {
                    tracing::warn!(error = %e, "no gamepads");
                    Box::new(pads::NoPads(e))
                }
            },
            PadsSetting::Named(n) if n == "none" => {
                Box::new(pads::NoPads("settings.gamepads = \"none\"".into()))
            }
            PadsSetting::Named(other) => refuse(
                node,
                &format!(
                    "settings.gamepads = {other:?}: expected \"gilrs\", \"none\" or {{ script = \"FILE\" }}"
                ),
            ),
            PadsSetting::Script { script, rumble_log } => {
                match pads::Script::open(script, rumble_log.clone(), node.incarnation() > 1) {
                    Ok(sc) => Box::new(sc),
                    Err(e) => refuse(node, &format!("settings.gamepads.script: {e}")),
                }
            }
        };
        let previous = previous_pads(node);
        let window = node
            .subscribe(&format!(
                "{}/{}",
                s.window,
                syncra_node::window::EVENTS_STREAM
            ))
            .map_err(|e| e.to_string())?;
        ctx.watch(&window);
        let xr = if s.xr.is_empty() {
            None
        } else {
            let c = node
                .subscribe(&format!("{}/{}", s.xr, syncra_node::xr::CONTROLS_STREAM))
                .map_err(|e| e.to_string())?;
            ctx.watch(&c);
            Some(c)
        };
        let sample = InputEvent {
            time_ns: u64::MAX,
            device: Device::Gamepad(u32::MAX),
            player: u32::MAX,
            kind: InputKind::Connected {
                name: "n".repeat(128),
                uuid: "u".repeat(64),
            },
        };
        let events = node
            .declare(
                EVENTS_STREAM,
                StreamOptions::drop_oldest(syncra_node::streams::slot_for(&sample, 2.0), 512),
            )
            .map_err(|e| e.to_string())?;
        let action = ActionEvent {
            time_ns: u64::MAX,
            player: u32::MAX,
            device: Device::Gamepad(u32::MAX),
            action: "a".repeat(64),
            value: ActionValue::Axis { x: 1.0, y: 1.0 },
        };
        let actions = node
            .declare(
                ACTIONS_STREAM,
                StreamOptions::drop_oldest(syncra_node::streams::slot_for(&action, 2.0), 256),
            )
            .map_err(|e| e.to_string())?;
        let pad_sample = PadTable {
            pads: vec![
                PadInfo {
                    id: u32::MAX,
                    player: u32::MAX,
                    name: "n".repeat(128),
                    uuid: "u".repeat(64),
                    connected: true,
                };
                MAX_PADS
            ],
        };
        let pads_out = node
            .declare(PADS_STREAM, StreamOptions::latest_only_like(&pad_sample))
            .map_err(|e| e.to_string())?;
        let pads: Vec<PadInfo> = previous
            .map(|t| t.pads)
            .unwrap_or_default()
            .into_iter()
            .map(|p| PadInfo {
                connected: false,
                ..p
            })
            .collect();
        node.set_note(&format!(
            "gamepads: {}; actions: {}",
            source.describe(),
            map.names().join(", ")
        ));
        Ok(Input {
            xr_node: (!s.xr.is_empty()).then(|| s.xr.clone()),
            xr,
            xr_incarnation: 0,
            fig_events: node.figure("events", FigureKind::Counter),
            fig_actions: node.figure("actions", FigureKind::Counter),
            fig_pads: node.figure("pads_connected", FigureKind::Gauge),
            source,
            window,
            events,
            actions,
            pads_out,
            map,
            pads,
            first_pad_player: s.first_pad_player,
            poll_hz: s.poll_hz,
            scratch: Vec::new(),
            changed: Vec::new(),
            published: 0,
        })
    }

    fn rate(&self) -> Option<f64> {
        Some(self.poll_hz)
    }

    fn tick(&mut self, _ctx: &mut Context<'_>) -> Result<(), String> {
        let mut events = std::mem::take(&mut self.scratch);
        self.source.poll(&mut events);
        for ev in events.drain(..) {
            self.pad_event(ev)?;
        }
        self.scratch = events;
        Ok(())
    }

    fn event(&mut self, ctx: &mut Context<'_>, event: NodeEvent) -> Result<(), String> {
        match event {
            NodeEvent::Stream(_) => {
                while let Some(s) = self.window.try_recv().map_err(|e| e.to_string())? {
                    let seen = monotonic_ns().saturating_sub(s.latency.as_nanos() as u64);
                    self.window_event(seen, s.value)?;
                }
                self.read_xr()?;
            }
            NodeEvent::Message(m) => {
                let node = ctx.node();
                let m = match m.answer_with(|r: Rumble| self.rumble(node, r)) {
                    Ok(()) => return Ok(()),
                    Err(m) => m,
                };
                let info = InputInfo {
                    gamepads_from: self.source.describe(),
                    pads: self.pads.clone(),
                    actions: self.map.names(),
                    events: self.published,
                };
                if let Err(m) = m.answer_with(|GetInputInfo| Ok(info)) {
                    let tag = m.tag().to_owned();
                    m.reply_error(format!(
                        "the input driver does not know `{tag}`: it takes syncra.input.rumble/1 and syncra.input.get-info/1"
                    ));
                }
            }
            _ => {}
        }
        let _ = ctx;
        Ok(())
    }
}

/// Most pads remembered.
const MAX_PADS: usize = 16;

impl Input {
    fn publish(
        &mut self,
        time_ns: u64,
        device: Device,
        player: u32,
        kind: InputKind,
    ) -> Result<(), String> {
        self.events
            .publish(&InputEvent {
                time_ns,
                device,
                player,
                kind,
            })
            .map_err(|e| format!("publishing an input event: {e}"))?;
        self.published += 1;
        self.fig_events.add(1.0);
        Ok(())
    }

    fn publish_actions(&mut self, time_ns: u64, player: u32, device: Device) -> Result<(), String> {
        for (action, value) in std::mem::take(&mut self.changed) {
            self.actions
                .publish(&ActionEvent {
                    time_ns,
                    player,
                    device,
                    action,
                    value,
                })
                .map_err(|e| format!("publishing an action: {e}"))?;
            self.fig_actions.add(1.0);
        }
        Ok(())
    }

    /// The XR controllers' changes: buttons and triggers press their bindings (a trigger from
    /// half way), thumbsticks move the sticks of player 0.
    fn read_xr(&mut self) -> Result<(), String> {
        loop {
            let Some(c) = self.xr.as_mut() else {
                return Ok(());
            };
            let Some(s) = c.try_recv().map_err(|e| e.to_string())? else {
                return Ok(());
            };
            if s.producer_incarnation != self.xr_incarnation {
                // A restarted XR driver: what the last one held is not held any more.
                self.xr_incarnation = s.producer_incarnation;
                self.map.release(0, Source::Xr, &mut self.changed);
                self.publish_actions(s.value.time_ns, 0, Device::XrController)?;
            }
            let XrControl {
                time_ns,
                control,
                x,
                y,
            } = s.value;
            // Only the controls the XR driver names, with values in range: whatever another
            // process sends, nothing grows without bound and no NaN reaches a world.
            if !CONTROLS.contains(&control.as_str()) || !x.is_finite() || !y.is_finite() {
                tracing::warn!(control, x, y, "an XR control that is not one was ignored");
                continue;
            }
            let (x, y) = (x.clamp(-1.0, 1.0), y.clamp(-1.0, 1.0));
            if let Some(side) = control.strip_suffix("Thumbstick") {
                let (ax, ay) = (format!("{side}StickX"), format!("{side}StickY"));
                self.map
                    .axis(0, &format!("{XR_STICK}{ax}"), x, &mut self.changed);
                self.map
                    .axis(0, &format!("{XR_STICK}{ay}"), y, &mut self.changed);
                for (axis, value) in [(ax, x), (ay, y)] {
                    self.publish(
                        time_ns,
                        Device::XrController,
                        0,
                        InputKind::Axis {
                            axis: format!("{XR_STICK}{axis}"),
                            value,
                        },
                    )?;
                }
            } else {
                let pressed = x >= 0.5;
                self.map
                    .press(0, Binding::Xr(control.clone()), pressed, &mut self.changed);
                self.publish(
                    time_ns,
                    Device::XrController,
                    0,
                    InputKind::Button {
                        button: format!("{XR_STICK}{control}"),
                        pressed,
                    },
                )?;
            }
            self.publish_actions(time_ns, 0, Device::XrController)?;
        }
    }

    fn window_event(&mut self, time_ns: u64, ev: WindowEvent) -> Result<(), String> {
        match ev {
            WindowEvent::Key {
                key,
                code,
                pressed,
                repeat,
                ..
            } => {
                if !repeat {
                    // winit's code names are the bindings' own ("KeyW", "Digit1", "Space").
                    self.map
                        .press(0, Binding::Key(code.clone()), pressed, &mut self.changed);
                }
                self.publish(
                    time_ns,
                    Device::Keyboard,
                    0,
                    InputKind::Key {
                        code,
                        key,
                        pressed,
                        repeat,
                    },
                )?;
                self.publish_actions(time_ns, 0, Device::Keyboard)
            }
            WindowEvent::MouseButton { button, pressed } => {
                self.map.press(
                    0,
                    Binding::Mouse(button.clone()),
                    pressed,
                    &mut self.changed,
                );
                self.publish(
                    time_ns,
                    Device::Mouse,
                    0,
                    InputKind::MouseButton { button, pressed },
                )?;
                self.publish_actions(time_ns, 0, Device::Mouse)
            }
            WindowEvent::CursorMoved { x, y } => {
                self.publish(time_ns, Device::Mouse, 0, InputKind::CursorMoved { x, y })
            }
            WindowEvent::Wheel { dx, dy } => {
                self.publish(time_ns, Device::Mouse, 0, InputKind::Wheel { dx, dy })
            }
            WindowEvent::Focused(false) => {
                // Keys held when focus went will never come up: let them go now.
                self.map.release(0, Source::Window, &mut self.changed);
                self.publish_actions(time_ns, 0, Device::Keyboard)
            }
            _ => Ok(()),
        }
    }

    fn pad_event(&mut self, ev: PadEvent) -> Result<(), String> {
        let (id, player) = match &ev.change {
            PadChange::Connected(name) => {
                let i = self.pad_index(&ev.uuid, name);
                let Some(i) = i else {
                    tracing::warn!(pad = %ev.uuid, "more than {MAX_PADS} gamepads: this one is ignored");
                    return Ok(());
                };
                self.pads[i].connected = true;
                self.pads[i].name = name.clone();
                self.publish_pads()?;
                (self.pads[i].id, self.pads[i].player)
            }
            _ => match self.pads.iter_mut().find(|p| p.uuid == ev.uuid) {
                Some(p) => {
                    if ev.change == PadChange::Disconnected {
                        p.connected = false;
                    }
                    (p.id, p.player)
                }
                None => return Ok(()), // a pad never announced
            },
        };
        let device = Device::Gamepad(id);
        let kind = match ev.change {
            PadChange::Connected(name) => {
                tracing::info!(pad = id, player, %name, "gamepad connected");
                InputKind::Connected {
                    name,
                    uuid: ev.uuid,
                }
            }
            PadChange::Disconnected => {
                tracing::info!(pad = id, player, "gamepad disconnected");
                self.map.release(player, Source::Pads, &mut self.changed);
                self.publish_pads()?;
                InputKind::Disconnected
            }
            PadChange::Button(button, pressed) => {
                if let Ok(b) = binding(&format!("Gamepad.{button}")) {
                    self.map.press(player, b, pressed, &mut self.changed);
                }
                InputKind::Button { button, pressed }
            }
            PadChange::Axis(axis, value) => {
                self.map.axis(player, &axis, value, &mut self.changed);
                InputKind::Axis { axis, value }
            }
        };
        self.publish(ev.time_ns, device, player, kind)?;
        self.publish_actions(ev.time_ns, player, device)
    }

    /// The pad with `uuid`, remembered or new.
    fn pad_index(&mut self, uuid: &str, name: &str) -> Option<usize> {
        if let Some(i) = self.pads.iter().position(|p| p.uuid == uuid) {
            return Some(i);
        }
        if self.pads.len() >= MAX_PADS {
            return None;
        }
        let id = self.pads.iter().map(|p| p.id).max().unwrap_or(0) + 1;
        let player = self
            .pads
            .iter()
            .map(|p| p.player + 1)
            .max()
            .unwrap_or(self.first_pad_player)
            .max(self.first_pad_player);
        self.pads.push(PadInfo {
            id,
            player,
            name: name.to_owned(),
            uuid: uuid.to_owned(),
            connected: false,
        });
        Some(self.pads.len() - 1)
    }

    fn publish_pads(&mut self) -> Result<(), String> {
        self.fig_pads
            .set(self.pads.iter().filter(|p| p.connected).count() as f64);
        self.pads_out
            .publish(&PadTable {
                pads: self.pads.clone(),
            })
            .map(|_| ())
            .map_err(|e| format!("publishing the pads: {e}"))
    }

    /// Rumble the pads of `r.player` (all: none given); player 0's rumble also goes to the
    /// XR controllers, as a haptic pulse of the stronger motor's amplitude (a message: the
    /// XR driver may not be there).
    fn rumble(&mut self, node: &Node, r: Rumble) -> Result<Rumbling, String> {
        for (what, v) in [("strong", r.strong), ("weak", r.weak)] {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("{what} = {v}: must be 0 ..= 1"));
            }
        }
        if r.duration_ms > 10_000 {
            return Err(format!("duration_ms = {}: at most 10000", r.duration_ms));
        }
        let targets: Vec<String> = self
            .pads
            .iter()
            .filter(|p| p.connected && r.player.is_none_or(|pl| pl == p.player))
            .map(|p| p.uuid.clone())
            .collect();
        let duration = Duration::from_millis(u64::from(r.duration_ms));
        let pads = targets
            .iter()
            .filter(|u| self.source.rumble(u, r.strong, r.weak, duration))
            .count() as u32;
        if let Some(xr) = &self.xr_node
            && r.player.is_none_or(|p| p == 0)
            && self.xr.as_ref().is_some_and(|c| c.is_attached())
        {
            let _ = node.send(
                xr,
                Haptic {
                    hand: None,
                    amplitude: r.strong.max(r.weak),
                    duration_ms: r.duration_ms,
                    frequency_hz: 0.0,
                },
            );
        }
        Ok(Rumbling { pads })
    }
}

/// The pads the previous incarnation knew, from the `input/pads` the runtime kept.
fn previous_pads(node: &Node) -> Option<PadTable> {
    if node.incarnation() <= 1 {
        return None;
    }
    let name = format!("{}/{PADS_STREAM}", node.name());
    let mut c = node.subscribe_existing::<PadTable>(&name).ok()?;
    c.recv_timeout(Duration::from_millis(200))
        .ok()
        .flatten()
        .map(|s| s.value)
}

fn main() {
    driver::run::<Input>()
}
