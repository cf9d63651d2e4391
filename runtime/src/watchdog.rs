//! The watchdog: sees hangs by sampling every ready node's heartbeat counter in its shared
//! page, once per period for the whole runtime (no message and no wakeup per beat).
//!
//! A node is hung when its counter has not moved for its deadline: the watchdog tells its
//! supervisor, which aborts and replaces it. Detection comes at most one period after the
//! deadline. If the watchdog itself was held up for longer than half a deadline (the runtime
//! was stopped, the machine suspended), that sweep only takes new baselines, so a stall of the
//! runtime is never blamed on the nodes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use syncra_protocol::NodeName;
use syncra_protocol::page::NodePage;

/// Told that an incarnation is hung: its number and how long it was silent.
pub(crate) type OnHung = Box<dyn Fn(u64, Duration) + Send>;

struct Watched {
    incarnation: u64,
    page: Arc<NodePage>,
    deadline: Duration,
    last_beats: u64,
    last_change: Instant,
    on_hung: OnHung,
}

/// The watched nodes and the sampling period.
pub(crate) struct Watchdog {
    period: Duration,
    watched: Mutex<HashMap<NodeName, Watched>>,
}

impl std::fmt::Debug for Watchdog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watchdog")
            .field("period", &self.period)
            .finish_non_exhaustive()
    }
}

impl Watchdog {
    /// A watchdog sampling every `period`.
    pub(crate) fn new(period: Duration) -> Arc<Watchdog> {
        Arc::new(Watchdog {
            period: period.max(Duration::from_millis(5)),
            watched: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<NodeName, Watched>> {
        self.watched.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Watch `incarnation` of `node` from now on (it just became ready).
    pub(crate) fn watch(
        &self,
        node: NodeName,
        incarnation: u64,
        page: Arc<NodePage>,
        deadline: Duration,
        on_hung: OnHung,
    ) {
        let last_beats = page.vitals().beats();
        self.lock().insert(
            node,
            Watched {
                incarnation,
                page,
                deadline,
                last_beats,
                last_change: Instant::now(),
                on_hung,
            },
        );
    }

    /// Stop watching `node` (it is stopping, or gone).
    pub(crate) fn unwatch(&self, node: &NodeName) {
        self.lock().remove(node);
    }

    /// Sample forever.
    pub(crate) async fn run(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(self.period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut previous = Instant::now();
        loop {
            ticker.tick().await;
            let now = Instant::now();
            let stalled = now.duration_since(previous);
            previous = now;
            self.sweep(now, stalled);
        }
    }

    /// One sample of every watched node.
    fn sweep(&self, now: Instant, since_previous: Duration) {
        let mut watched = self.lock();
        let mut hung = Vec::new();
        for (name, w) in watched.iter_mut() {
            let beats = w.page.vitals().beats();
            if beats != w.last_beats || since_previous > w.deadline / 2 {
                w.last_beats = beats;
                w.last_change = now;
            } else if now.duration_since(w.last_change) >= w.deadline {
                hung.push(name.clone());
            }
        }
        for name in hung {
            if let Some(w) = watched.remove(&name) {
                (w.on_hung)(w.incarnation, now.duration_since(w.last_change));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    fn watched(
        dog: &Watchdog,
        deadline_ms: u64,
    ) -> (Arc<NodePage>, mpsc::Receiver<(u64, Duration)>) {
        let (page, _fd) = NodePage::create("watchdog-test").unwrap();
        let page = Arc::new(page);
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        dog.watch(
            NodeName::world("w"),
            7,
            page.clone(),
            Duration::from_millis(deadline_ms),
            Box::new(move |inc, silent| {
                let _ = tx.lock().unwrap().send((inc, silent));
            }),
        );
        (page, rx)
    }

    #[test]
    fn a_node_silent_for_its_deadline_is_reported_hung_once() {
        let dog = Watchdog::new(Duration::from_millis(25));
        let (_page, hung) = watched(&dog, 100);
        let t0 = Instant::now();
        let tick = Duration::from_millis(25);
        for i in 1..=3 {
            dog.sweep(t0 + tick * i, tick);
        }
        assert!(hung.try_recv().is_err(), "reported before its deadline");
        dog.sweep(t0 + Duration::from_millis(125), tick);
        let (inc, silent) = hung.try_recv().expect("reported at its deadline");
        assert_eq!(inc, 7);
        assert!(silent >= Duration::from_millis(100), "{silent:?}");
        dog.sweep(t0 + Duration::from_millis(400), tick);
        assert!(hung.try_recv().is_err(), "reported twice");
    }

    #[test]
    fn a_beating_node_is_never_hung_and_a_stalled_watchdog_only_rebaselines() {
        let dog = Watchdog::new(Duration::from_millis(25));
        let (page, hung) = watched(&dog, 100);
        let t0 = Instant::now();
        let tick = Duration::from_millis(25);
        for i in 1..=20 {
            page.vitals().beat(None);
            dog.sweep(t0 + tick * i, tick);
        }
        assert!(hung.try_recv().is_err());
        // The runtime itself was stopped for a second: no beats seen, but no blame either.
        dog.sweep(t0 + Duration::from_millis(1500), Duration::from_secs(1));
        assert!(
            hung.try_recv().is_err(),
            "a stall of the runtime was blamed on the node"
        );
    }
}
