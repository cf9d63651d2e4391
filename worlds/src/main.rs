//! The `syncra-world` binary: one world as a node of a Syncra runtime.
//!
//! Under a runtime (the normal case) it joins the cluster, builds the scene its config chunk
//! describes, announces readiness and ticks at a fixed rate, beating from the tick loop and
//! reporting tick count, entity count and tick duration with each beat.
//!
//! `syncra-world --standalone` runs the same simulation without a runtime, printing a status
//! line per second — for profiling a world alone, and as the bare-spawn baseline of the
//! benchmarks (its first line is printed when the scene is built).

use std::time::{Duration, Instant};

use clap::Parser;
use syncra_node::audio::{Emitter, Play, SetListener};
use syncra_node::input::{ACTIONS_STREAM, ActionEvent, ActionValue, Rumble};
use syncra_node::render::Camera;
use syncra_node::xr::{POSE_STREAM, XrPose};
use syncra_node::{Node, RawProducer, StreamOptions};
use syncra_protocol::ring::Policy;
use syncra_protocol::status::NodeMetrics;
use syncra_protocol::world::WorldGame;
use syncra_protocol::world::{
    DEFAULT_ENTITIES, DEFAULT_SEED, DEFAULT_TICK_HZ, POISONED, SCENE_STREAM, STATE_STREAM,
    STATE_TAG, SceneSnapshot, WorldSettings, scene_slot_size,
};
use syncra_world::state::state_size;
use syncra_world::{PlayerEvents, Scene};

/// A Syncra world process. Started by the `syncra` runtime; run it by hand only with --standalone.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// Simulate without a runtime, printing status to stdout.
    #[arg(long)]
    standalone: bool,
    /// With --standalone: stop after this many ticks (default: run until Ctrl-C).
    #[arg(long, requires = "standalone")]
    ticks: Option<u64>,
    /// With --standalone: ticks per second.
    #[arg(long, default_value_t = DEFAULT_TICK_HZ, requires = "standalone", value_parser = parse_hz)]
    tick_hz: f64,
    /// With --standalone: entities in the scene.
    #[arg(long, default_value_t = DEFAULT_ENTITIES, requires = "standalone")]
    entities: u32,
    /// With --standalone: scene seed.
    #[arg(long, default_value_t = DEFAULT_SEED, requires = "standalone")]
    seed: u64,
}

fn parse_hz(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(hz) if hz.is_finite() && hz > 0.0 => Ok(hz),
        _ => Err(format!(
            "`{s}` is not a tick rate: expected a number of ticks per second above 0"
        )),
    }
}

fn main() {
    let cli = Cli::parse();
    if cli.standalone {
        let settings = WorldSettings {
            name: "standalone".into(),
            tick_hz: cli.tick_hz,
            entities: cli.entities,
            seed: cli.seed,
            game: Default::default(),
            state: Default::default(),
        };
        return standalone(&settings, cli.ticks);
    }
    let node = Node::join().unwrap_or_else(|e| e.exit());
    let settings: WorldSettings = node.settings().unwrap_or_else(|e| e.exit());
    let mut durable = Durable::open(&node, &settings);
    let (scene, resumed) = match durable.as_ref().map(|d| d.resume(&settings)) {
        Some(Ok((scene, input_seq))) => (scene, Some(input_seq)),
        Some(Err(why)) => {
            // A first start has nothing to resume, and nothing to explain.
            if why.is_some() || node.incarnation() > 1 {
                let why = why.as_deref().unwrap_or("no durable state yet");
                node.set_note(&format!("started from its seed: {why}"));
            }
            (Scene::new(&settings), None)
        }
        None => (Scene::new(&settings), None),
    };
    tracing::info!(world = %settings.name, entities = scene.entities(), seed = settings.seed, tick_hz = settings.tick_hz, tick = scene.tick(), "scene built");
    // The scene goes out on `world/<name>/scene` every tick; without it the world still runs.
    let mut producer = match node.declare::<SceneSnapshot>(
        SCENE_STREAM,
        StreamOptions::latest_only(scene_slot_size(settings.entities)),
    ) {
        Ok(p) => Some(p),
        Err(e) => {
            tracing::warn!(error = %e, "the scene stream is not available; running without it");
            None
        }
    };
    // `SYNCRA_WORLD_FAULT=poison-at:TICK` (for tests): a state at or past that tick kills the
    // world that resumes from it, as a state that breaks an invariant would.
    let poison_at = std::env::var("SYNCRA_WORLD_FAULT").ok().and_then(|f| {
        f.strip_prefix("poison-at:")
            .and_then(|t| t.parse::<u64>().ok())
    });
    if resumed.is_some() && poison_at.is_some_and(|t| scene.tick() >= t) {
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    }
    if resumed.is_some() {
        // What players saw last: the previous incarnation's newest scene.
        let shown = producer
            .as_ref()
            .and_then(|p| p.newest())
            .map(|(_, s)| s.tick);
        let lost = shown.map_or(0, |t| t.saturating_sub(scene.tick()));
        node.set_note(&format!(
            "resumed at tick {} from its durable state, {lost} tick{} lost",
            scene.tick(),
            if lost == 1 { "" } else { "s" }
        ));
    }
    let mut snapshot = SceneSnapshot {
        world: settings.name.clone(),
        tick: 0,
        entities: Vec::new(),
        player: None,
    };
    let game = std::cell::RefCell::new(Game::new(&node, &settings.game, resumed));
    node.ready();
    let ticks = run(
        scene,
        &settings,
        |deadline| node.sleep_until(deadline),
        |scene| game.borrow_mut().input(scene),
        |scene, events, m| {
            game.borrow_mut().sounds(events);
            game.borrow_mut().follow_head();
            // The state first: no one ever sees a tick that a crash could take back.
            if let Some(d) = durable.as_mut() {
                d.write(scene, game.borrow().applied);
            }
            if let Some(p) = producer.as_mut() {
                scene.snapshot_into(&settings.name, &mut snapshot);
                if let Err(e) = p.publish(&snapshot) {
                    tracing::warn!(error = %e, "publishing the scene failed");
                }
            }
            // A world answers no messages yet: each one is refused (a call with an error naming
            // its tag) rather than left to its sender's timeout.
            while let Some(m) = node.recv_timeout(Duration::ZERO) {
                drop(m);
            }
            node.heartbeat(Some(m))
        },
    );
    tracing::info!(world = %settings.name, ticks, "stopped");
}

/// The world as a game: the player's actions from the input driver, and the sounds and
/// rumble it asks the audio and input drivers for. Every request is a message, never a call:
/// a tick never waits on a driver, and a world runs the same with no driver at all.
struct Game<'a> {
    node: &'a Node,
    game: WorldGame,
    actions: Option<syncra_node::Consumer<ActionEvent>>,
    /// Whether a request to a driver was refused already (said once, not every tick).
    said: bool,
    /// The sequence of the last action read (and applied) from the actions stream: kept in
    /// the durable state, so that each action is applied once across a crash.
    applied: u64,
    /// Resumed from a state that had applied the actions up to this one: the actions read
    /// after it are read again, once the stream is attached.
    rewind: Option<u64>,
    /// The XR driver's poses: while its session is visible the listener is the head.
    poses: Option<syncra_node::Consumer<XrPose>>,
    /// The newest pose's frame (`xr_frame` in status), and when the listener last moved.
    fig_xr_frame: Option<syncra_node::Figure>,
    listener_at: Option<std::time::Instant>,
}

/// The world's own ids for its sounds (each id replaces its previous sound).
const AMBIENCE_ID: u64 = 1;
const JUMP_ID: u64 = 2;
const BUMP_ID: u64 = 3;

impl<'a> Game<'a> {
    fn new(node: &'a Node, game: &WorldGame, resumed: Option<u64>) -> Game<'a> {
        let actions = game.player.then(|| {
            node.subscribe::<ActionEvent>(&format!("{}/{ACTIONS_STREAM}", game.input))
                .map_err(|e| tracing::warn!(error = %e, "no actions: the player stands still"))
                .ok()
        });
        let hears = game.player || !game.ambience.is_empty();
        let poses = (hears && !game.xr.is_empty())
            .then(|| {
                node.subscribe::<XrPose>(&format!("{}/{POSE_STREAM}", game.xr))
                    .map_err(|e| tracing::warn!(error = %e, "no XR poses: sound is heard from the camera"))
                    .ok()
            })
            .flatten();
        let mut g = Game {
            node,
            game: game.clone(),
            actions: actions.flatten(),
            said: false,
            applied: resumed.unwrap_or(0),
            rewind: resumed,
            fig_xr_frame: poses
                .as_ref()
                .map(|_| node.figure("xr_frame", syncra_node::FigureKind::Gauge)),
            poses,
            listener_at: None,
        };
        // A resumed world's sounds are still playing (the audio driver did not die with it).
        if resumed.is_some() {
            return g;
        }
        if g.game.player || !g.game.ambience.is_empty() {
            // Heard from where the renderer's camera looks from.
            let cam = Camera::default();
            g.send(SetListener::looking_at(cam.eye, cam.target));
        }
        if !g.game.ambience.is_empty() {
            g.send(Play {
                looping: true,
                volume_db: -12.0,
                fade_in_ms: 500,
                ..Play::new(AMBIENCE_ID, g.game.ambience.clone())
            });
        }
        g
    }

    fn send<M: syncra_node::Message>(&mut self, m: M) {
        let to = self.game.audio.clone();
        self.send_to(&to, m);
    }

    fn send_to<M: syncra_node::Message>(&mut self, to: &str, m: M) {
        if let Err(e) = self.node.send(to, m)
            && !self.said
        {
            self.said = true;
            tracing::info!(to, reason = ?e.reason, "a driver is not there; the world goes on without it");
        }
    }

    /// Apply player 0's actions that arrived since the last tick.
    fn input(&mut self, scene: &mut Scene) {
        let Some(actions) = self.actions.as_mut() else {
            return;
        };
        if let Some(applied) = self.rewind {
            match actions.rewind_to(applied + 1) {
                Ok(None) => {}
                Ok(Some(moved)) => {
                    self.rewind = None;
                    if !moved {
                        tracing::warn!(
                            applied,
                            "the actions read after the durable state are no longer in the stream: some are lost"
                        );
                    }
                }
                Err(e) => {
                    self.rewind = None;
                    tracing::warn!(error = %e, "cannot read the actions again");
                }
            }
        }
        let mut jumped = None;
        while let Ok(Some(a)) = actions.try_recv() {
            self.applied = a.seq;
            tracing::debug!(seq = a.seq, action = %a.value.action, "applied an action");
            if a.value.player != 0 {
                continue;
            }
            match (a.value.action.as_str(), a.value.value) {
                ("move", ActionValue::Axis { x, y }) => scene.set_move(x, y),
                ("jump", ActionValue::Pressed) => jumped = jumped.or(scene.jump()),
                _ => {}
            }
        }
        if let Some(at) = jumped {
            if !self.game.jump_sound.is_empty() {
                self.send(Play {
                    emitter: Some(Emitter {
                        position: at.to_array(),
                    }),
                    ..Play::new(JUMP_ID, self.game.jump_sound.clone())
                });
            }
            let input = self.game.input.clone();
            self.send_to(
                &input,
                Rumble {
                    player: Some(0),
                    strong: 0.2,
                    weak: 0.6,
                    duration_ms: 120,
                },
            );
        }
    }

    /// While the XR driver's session is visible, hear from the headset: the listener moves
    /// to the head (in arena metres), ten times a second at most.
    fn follow_head(&mut self) {
        let Some(poses) = self.poses.as_mut() else {
            return;
        };
        let mut newest = None;
        while let Ok(Some(p)) = poses.try_recv() {
            newest = Some(p.value);
        }
        let Some(pose) = newest else {
            return;
        };
        if let Some(f) = &self.fig_xr_frame {
            f.set(pose.frame as f64);
        }
        if !pose.should_render {
            // XR went away: heard from where the renderer's camera looks from again.
            if self.listener_at.take().is_some() {
                let cam = Camera::default();
                self.send(SetListener::looking_at(cam.eye, cam.target));
            }
            return;
        }
        if self
            .listener_at
            .is_some_and(|t| t.elapsed() < Duration::from_millis(100))
        {
            return;
        }
        let to_arena = pose.placement.matrix().inverse();
        let head = pose.head.matrix();
        let eye = to_arena.transform_point3(head.transform_point3(glam::Vec3::ZERO));
        let ahead = to_arena.transform_point3(head.transform_point3(glam::Vec3::NEG_Z));
        if !(eye.is_finite() && ahead.is_finite()) {
            return;
        }
        self.listener_at = Some(std::time::Instant::now());
        self.send(SetListener::looking_at(eye.to_array(), ahead.to_array()));
    }

    /// Sounds for what happened in the tick.
    fn sounds(&mut self, events: PlayerEvents) {
        if let Some(at) = events.bumped
            && !self.game.bump_sound.is_empty()
        {
            self.send(Play {
                emitter: Some(Emitter {
                    position: at.to_array(),
                }),
                ..Play::new(BUMP_ID, self.game.bump_sound.clone())
            });
        }
    }
}

/// A world's durable state: its ring, where its states go and where its next incarnation
/// finds them.
struct Durable {
    ring: RawProducer,
    interval: u64,
    /// `SYNCRA_WORLD_FAULT=die-writing-state:TICK` (for tests): the first incarnation
    /// SIGKILLs itself in the middle of writing the state of that tick;
    /// `die-writing-state-after-input:TICK`: of the first state at or after that tick whose
    /// tick applied an input (so that inputs read since the state before are lost with it).
    die_writing: Option<(u64, bool)>,
    /// The last input applied in the last state written.
    written_input: u64,
    /// `state_us` in `syncra status`: how long the last state took to write.
    cost: syncra_node::Figure,
    /// Said once that a state does not fit.
    said: bool,
}

impl Durable {
    fn open(node: &Node, settings: &WorldSettings) -> Option<Durable> {
        if !settings.state.durable {
            return None;
        }
        let slot = state_size(settings.entities).next_multiple_of(64);
        let options = StreamOptions {
            slot_size: u32::try_from(slot).unwrap_or(u32::MAX),
            slot_count: settings.state.kept.max(2),
            policy: Policy::LatestOnly,
            block_timeout: Duration::ZERO,
        };
        let die_writing = std::env::var("SYNCRA_WORLD_FAULT")
            .ok()
            .filter(|_| node.incarnation() == 1)
            .and_then(|f| {
                let (after_input, tick) = match f.strip_prefix("die-writing-state-after-input:") {
                    Some(t) => (true, t),
                    None => (false, f.strip_prefix("die-writing-state:")?),
                };
                Some((tick.parse().ok()?, after_input))
            });
        match node.declare_raw(STATE_STREAM, STATE_TAG, options) {
            Ok(ring) => Some(Durable {
                ring,
                interval: u64::from(settings.state.interval.max(1)),
                die_writing,
                written_input: 0,
                cost: node.figure("state_us", syncra_protocol::status::FigureKind::Gauge),
                said: false,
            }),
            Err(e) => {
                tracing::warn!(error = %e, "no durable state: a crash will start this world from its seed");
                node.set_note(&format!("no durable state: {e}"));
                None
            }
        }
    }

    /// The newest complete state that is this world's: the scene and the last input it had
    /// applied; or why there is none (`None`: there is no state at all).
    fn resume(&self, settings: &WorldSettings) -> Result<(Scene, u64), Option<String>> {
        let mut refused = Vec::new();
        let found = self.ring.newest_first(|seq, bytes| {
            // The runtime set this world's state aside: it kept crashing right after resuming.
            if let Some(path) = bytes.strip_prefix(POISONED) {
                return Some(Err(format!(
                    "its last state was set aside after it crashed again and again right after resuming (kept in {})",
                    String::from_utf8_lossy(path)
                )));
            }
            match Scene::restore(settings, bytes) {
                Ok(found) => Some(Ok((seq, found))),
                Err(e) => {
                    refused.push((seq, e));
                    None
                }
            }
        });
        match found {
            Some(Ok((seq, (scene, info)))) => {
                for (skipped, why) in &refused {
                    tracing::warn!(state = skipped, "skipped a newer state: {why}");
                }
                tracing::info!(
                    tick = info.tick,
                    state = seq,
                    bytes = info.bytes,
                    input_seq = info.input_seq,
                    "resumed from its durable state"
                );
                Ok((scene, info.input_seq))
            }
            Some(Err(poisoned)) => Err(Some(poisoned)),
            None => Err(refused.first().map(|(_, why)| why.to_string())),
        }
    }

    fn write(&mut self, scene: &Scene, input_seq: u64) {
        if !scene.tick().is_multiple_of(self.interval) {
            return;
        }
        let die = match self.die_writing {
            Some((tick, false)) => scene.tick() == tick,
            Some((tick, true)) => scene.tick() >= tick && input_seq > self.written_input,
            None => false,
        };
        let started = Instant::now();
        let written = self.ring.publish_with(|buf| {
            let len = scene.save_into(input_seq, buf);
            if die {
                // Half-way through the write, as far as the ring can tell: never published.
                let _ = rustix::process::kill_process(
                    rustix::process::getpid(),
                    rustix::process::Signal::KILL,
                );
            }
            len
        });
        match written {
            Ok(Some(_)) => {
                self.written_input = input_seq;
                self.cost.set(started.elapsed().as_secs_f64() * 1e6);
            }
            Ok(None) if !self.said => {
                self.said = true;
                tracing::warn!(
                    capacity = self.ring.capacity(),
                    entities = scene.entities(),
                    "the state does not fit its ring: not kept"
                );
            }
            Ok(None) => {}
            Err(e) if !self.said => {
                self.said = true;
                tracing::warn!(error = %e, "writing the durable state failed");
            }
            Err(_) => {}
        }
    }
}

/// The fixed-rate tick loop. `sleep` waits for the next tick (true: stop); `input` applies
/// what arrived before each tick; `beat` gets what the tick did and the heartbeat's metrics.
/// Returns the ticks simulated.
fn run(
    mut scene: Scene,
    settings: &WorldSettings,
    mut sleep: impl FnMut(Instant) -> bool,
    mut input: impl FnMut(&mut Scene),
    mut beat: impl FnMut(&Scene, PlayerEvents, &NodeMetrics),
) -> u64 {
    let period = Duration::from_secs_f64(1.0 / settings.tick_hz);
    let mut next = Instant::now();
    let mut overruns = 0u64;
    loop {
        let started = Instant::now();
        input(&mut scene);
        let events = scene.step();
        let tick_us = started.elapsed().as_micros().min(u32::MAX as u128) as u32;
        beat(
            &scene,
            events,
            &NodeMetrics {
                tick: scene.tick(),
                entities: Some(scene.entities()),
                tick_us,
                tick_us_max: tick_us,
                overruns,
            },
        );
        next += period;
        let now = Instant::now();
        if now > next + period {
            // More than a whole tick behind: count it and drop the backlog rather than spiral.
            overruns += 1;
            next = now;
        }
        if sleep(next) {
            return scene.tick();
        }
    }
}

fn standalone(settings: &WorldSettings, ticks: Option<u64>) {
    let scene = Scene::new(settings);
    println!(
        "ready: {} entities, seed {}, {} Hz",
        scene.entities(),
        settings.seed,
        settings.tick_hz
    );
    let status = |m: &NodeMetrics| {
        println!(
            "tick {} entities {} tick_us {} overruns {}",
            m.tick,
            m.entities.unwrap_or(0),
            m.tick_us,
            m.overruns
        );
    };
    let last = std::cell::Cell::new(NodeMetrics::default());
    let mut last_print = Instant::now();
    let done = run(
        scene,
        settings,
        |deadline| {
            if ticks.is_some_and(|t| last.take().tick >= t) {
                return true;
            }
            std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
            false
        },
        |_| {},
        |_, _, m| {
            if last_print.elapsed() >= Duration::from_secs(1) || ticks.is_some_and(|t| m.tick >= t)
            {
                last_print = Instant::now();
                status(m);
            }
            last.set(m.clone());
        },
    );
    println!("stopped after {done} ticks");
}
