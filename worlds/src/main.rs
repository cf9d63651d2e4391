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
use syncra_node::{Node, StreamOptions};
use syncra_protocol::status::NodeMetrics;
use syncra_protocol::world::{
    DEFAULT_ENTITIES, DEFAULT_SEED, DEFAULT_TICK_HZ, SCENE_STREAM, SceneSnapshot, WorldSettings,
    scene_slot_size,
};
use syncra_world::Scene;

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
        };
        return standalone(&settings, cli.ticks);
    }
    let node = Node::join().unwrap_or_else(|e| e.exit());
    let settings: WorldSettings = node.settings().unwrap_or_else(|e| e.exit());
    let scene = Scene::new(&settings);
    tracing::info!(world = %settings.name, entities = scene.entities(), seed = settings.seed, tick_hz = settings.tick_hz, "scene built");
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
    let mut snapshot = SceneSnapshot {
        world: settings.name.clone(),
        tick: 0,
        entities: Vec::new(),
    };
    node.ready();
    let ticks = run(
        scene,
        &settings,
        |deadline| node.sleep_until(deadline),
        |scene, m| {
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

/// The fixed-rate tick loop. `sleep` waits for the next tick (true: stop); `beat` is the
/// heartbeat with this tick's metrics. Returns the ticks simulated.
fn run(
    mut scene: Scene,
    settings: &WorldSettings,
    mut sleep: impl FnMut(Instant) -> bool,
    mut beat: impl FnMut(&Scene, &NodeMetrics),
) -> u64 {
    let period = Duration::from_secs_f64(1.0 / settings.tick_hz);
    let mut next = Instant::now();
    let mut overruns = 0u64;
    loop {
        let started = Instant::now();
        scene.step();
        let tick_us = started.elapsed().as_micros().min(u32::MAX as u128) as u32;
        beat(
            &scene,
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
        |_, m| {
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
