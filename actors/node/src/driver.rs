//! The driver skeleton. Every driver is a [`Driver`] run by [`run`], which does everything a
//! driver owes the runtime, in order:
//!
//! join → settings (a settings error is reported to the runtime, naming the key, and ends the
//! node as a permanent start failure) → [`Driver::start`] (subscribe, declare, open devices;
//! an error ends the node with its reason in status) → ready → one loop: fixed-rate ticks
//! ([`Driver::rate`], timed by a [`Ticker`] that fills the node's metrics) and events
//! ([`Driver::event`]: messages, calls, returned messages, watched streams), with the
//! heartbeat from that loop → on shutdown, [`Driver::stop`] and a clean exit.
//!
//! ```no_run
//! use syncra_node::driver::{self, Context, Driver};
//! use syncra_node::events::NodeEvent;
//!
//! #[derive(serde::Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct Settings { rate_hz: f64 }
//!
//! struct Blinker { rate: f64, on: bool }
//!
//! impl Driver for Blinker {
//!     type Settings = Settings;
//!     fn start(_: &mut Context<'_>, s: Settings) -> Result<Self, String> {
//!         Ok(Blinker { rate: s.rate_hz, on: false })
//!     }
//!     fn rate(&self) -> Option<f64> { Some(self.rate) }
//!     fn tick(&mut self, _: &mut Context<'_>) -> Result<(), String> {
//!         self.on = !self.on;
//!         Ok(())
//!     }
//! }
//!
//! fn main() { driver::run::<Blinker>() }
//! ```
//!
//! Started with `--standalone` (by hand, for development), [`run`] runs the same driver with
//! no runtime ([`crate::Node::standalone`]): settings from `--settings FILE` and
//! `--set key=value`, a status line on stdout once a second, Ctrl-C to stop.
//!
//! A driver whose loop belongs to a library (winit's event loop, an audio callback) takes a
//! [`crate::Heartbeat`] into that loop ([`crate::Node::heartbeat_handle`]) and asks to be told
//! of shutdown there ([`crate::Node::on_shutdown`]) instead.

use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use syncra_protocol::status::NodeMetrics;

use crate::Node;
use crate::events::{Events, NodeEvent, StreamKey, Watch};

/// Exit code of a driver whose start or loop failed (restarted by the runtime's policy).
pub const FAILED: i32 = 1;

/// A driver: its own state and what it does with its time.
pub trait Driver: Sized {
    /// The driver's config chunk (`settings = { .. }` in its `[drivers.<name>]` table).
    type Settings: DeserializeOwned;

    /// Set up before the node is ready: subscribe to streams (a subscription returns at once,
    /// also for streams that do not exist yet), declare streams, open devices, and watch what
    /// the loop should wake for ([`Context::watch`]). An `Err` ends the node, its reason shown
    /// in `syncra status`.
    fn start(ctx: &mut Context<'_>, settings: Self::Settings) -> Result<Self, String>;

    /// Ticks per second of [`Driver::tick`]; `None` (the default): driven by events only.
    fn rate(&self) -> Option<f64> {
        None
    }

    /// One fixed-rate iteration (a frame, a poll of a device).
    fn tick(&mut self, ctx: &mut Context<'_>) -> Result<(), String> {
        let _ = ctx;
        Ok(())
    }

    /// A message or call ([`NodeEvent::Message`]; a call left unanswered is answered with an
    /// error), a returned message, or a watched stream with something to read.
    fn event(&mut self, ctx: &mut Context<'_>, event: NodeEvent) -> Result<(), String> {
        let _ = (ctx, event);
        Ok(())
    }

    /// The node is stopping: finish up (flush, close devices). It exits 0 afterwards.
    fn stop(&mut self, ctx: &mut Context<'_>) {
        let _ = ctx;
    }
}

/// What a driver's callbacks get: the node, the event loop and the ticker.
#[derive(Debug)]
pub struct Context<'a> {
    node: &'a Node,
    events: Events,
    ticker: Ticker,
}

impl<'a> Context<'a> {
    /// The node.
    pub fn node(&self) -> &'a Node {
        self.node
    }

    /// Wake the loop when `consumer` has something ([`NodeEvent::Stream`] with the key).
    pub fn watch(&mut self, consumer: &impl Watch) -> StreamKey {
        self.events.watch(consumer)
    }

    /// The fixed-rate ticker (its tick count and timings).
    pub fn ticker(&self) -> &Ticker {
        &self.ticker
    }
}

/// Times a fixed-rate loop and keeps the metrics a node reports with its heartbeat: ticks,
/// the last tick's duration, the longest since the runtime last looked, and overruns (ticks
/// that took longer than their period).
#[derive(Debug, Clone)]
pub struct Ticker {
    period: Option<Duration>,
    next: Instant,
    metrics: NodeMetrics,
}

impl Ticker {
    /// A ticker for `hz` ticks per second (`None`, or a rate that is not a positive number:
    /// no ticks).
    pub fn new(hz: Option<f64>) -> Ticker {
        let period = hz
            .filter(|h| h.is_finite() && *h > 0.0)
            .map(|h| Duration::from_secs_f64(1.0 / h));
        Ticker {
            period,
            next: Instant::now(),
            metrics: NodeMetrics::default(),
        }
    }

    /// When the next tick is due; `None` without a rate.
    pub fn deadline(&self) -> Option<Instant> {
        self.period.map(|_| self.next)
    }

    /// Record a tick that took `took`, and schedule the next one. A late loop skips the ticks
    /// it missed rather than running them back to back, but does not wait either: its next
    /// tick is due at once (a renderer whose frame takes longer than its period draws as fast
    /// as it can, not every other period).
    pub fn ticked(&mut self, took: Duration) {
        let Some(period) = self.period else { return };
        let us = took.as_micros().min(u128::from(u32::MAX)) as u32;
        self.metrics.tick += 1;
        self.metrics.tick_us = us;
        self.metrics.tick_us_max = self.metrics.tick_us_max.max(us);
        if took > period {
            self.metrics.overruns += 1;
        }
        self.next += period;
        let now = Instant::now();
        if self.next < now {
            self.next = now;
        }
    }

    /// The metrics for the heartbeat.
    pub fn metrics(&self) -> &NodeMetrics {
        &self.metrics
    }

    /// Ticks so far.
    pub fn ticks(&self) -> u64 {
        self.metrics.tick
    }
}

/// Run driver `D` as this process's node: join, settings, start, ready, the loop, leave.
/// Never returns: the process exits 0 after a requested stop, or with the code that says why
/// it could not go on.
pub fn run<D: Driver>() -> ! {
    let node = Node::join_or_standalone();
    let settings: D::Settings = node.settings().unwrap_or_else(|e| e.exit());
    let mut ctx = Context {
        node: &node,
        events: node.events(),
        ticker: Ticker::new(None),
    };
    let mut driver = match D::start(&mut ctx, settings) {
        Ok(d) => d,
        Err(why) => node.exit_with(FAILED, &format!("could not start: {why}")),
    };
    ctx.ticker = Ticker::new(driver.rate());
    node.ready();
    loop {
        let deadline = ctx.ticker.deadline();
        let outcome = match ctx.events.next(deadline) {
            NodeEvent::Shutdown => {
                driver.stop(&mut ctx);
                drop(driver);
                tracing::info!(node = %node.name(), "stopped");
                std::process::exit(0);
            }
            NodeEvent::Deadline => {
                let t0 = Instant::now();
                let done = driver.tick(&mut ctx);
                ctx.ticker.ticked(t0.elapsed());
                done
            }
            event => driver.event(&mut ctx, event),
        };
        if let Err(why) = outcome {
            node.exit_with(FAILED, &why);
        }
        node.heartbeat(Some(ctx.ticker.metrics()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticker_counts_ticks_and_overruns_and_keeps_its_period() {
        let mut t = Ticker::new(Some(100.0));
        let first = t.deadline().unwrap();
        t.ticked(Duration::from_millis(1));
        assert_eq!(t.deadline().unwrap() - first, Duration::from_millis(10));
        t.ticked(Duration::from_millis(25));
        let m = t.metrics();
        assert_eq!(
            (m.tick, m.tick_us, m.tick_us_max, m.overruns),
            (2, 25_000, 25_000, 1)
        );
        // A loop 50 ms late: the next tick is due at once, not a period from now.
        t.next = Instant::now() - Duration::from_millis(50);
        t.ticked(Duration::from_millis(1));
        assert!(t.deadline().unwrap() <= Instant::now());
        assert_eq!(Ticker::new(None).deadline(), None);
        assert_eq!(Ticker::new(Some(0.0)).deadline(), None);
        assert_eq!(Ticker::new(Some(f64::NAN)).deadline(), None);
    }
}
