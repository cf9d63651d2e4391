//! The two clocks of a host link, as pure functions over plain structs: the agent's **lease**
//! on a session's nodes, and the runtime's view of whether the host is **reachable**.
//!
//! The agent pings; the runtime answers every ping at once. The agent's lease runs until the
//! moment it *sent* its newest answered ping plus the deadline — never from when the answer
//! arrived — so the runtime, which heard that ping at or after it was sent, cannot call the
//! host unreachable (its last message plus the same deadline) before the lease ran out. The
//! runtime then waits a fence grace more before a replacement starts. So a node cut off from
//! the runtime is dead (killed by its agent, or by itself when its lease passes) before its
//! replacement exists, whichever side of the partition is slow or stopped: two incarnations
//! of one name never run at once (clock drift between hosts is what the grace covers).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How often the agent pings, for a deadline: five pings per deadline, so a lost one or two
/// are no partition.
pub(crate) fn ping_interval(deadline: Duration) -> Duration {
    (deadline / 5).max(Duration::from_millis(20))
}

/// Pings whose send time is remembered (answers to older ones renew nothing).
const REMEMBERED: usize = 16;

/// The agent's lease on one session's nodes.
#[derive(Debug, Clone)]
pub(crate) struct Lease {
    length: Duration,
    until: Instant,
    next: u64,
    sent: VecDeque<(u64, Instant)>,
}

impl Lease {
    /// A lease of `length` from `now` (the runtime's hello just arrived: the runtime hears
    /// the agent's answer no earlier than now).
    pub(crate) fn new(length: Duration, now: Instant) -> Lease {
        Lease {
            length,
            until: now + length,
            next: 1,
            sent: VecDeque::with_capacity(REMEMBERED),
        }
    }

    /// A ping is sent at `now`: its number.
    pub(crate) fn ping(&mut self, now: Instant) -> u64 {
        let n = self.next;
        self.next += 1;
        if self.sent.len() == REMEMBERED {
            self.sent.pop_front();
        }
        self.sent.push_back((n, now));
        n
    }

    /// The runtime answered ping `n`: the lease runs from when that ping was sent. An answer to
    /// a ping never sent (or long forgotten) changes nothing.
    pub(crate) fn answered(&mut self, n: u64) {
        if let Some(&(_, sent)) = self.sent.iter().find(|(m, _)| *m == n) {
            self.until = self.until.max(sent + self.length);
            self.sent.retain(|(m, _)| *m > n);
        }
    }

    /// When the lease runs out.
    pub(crate) fn until(&self) -> Instant {
        self.until
    }

    /// Whether it has run out at `now`.
    pub(crate) fn expired(&self, now: Instant) -> bool {
        now >= self.until
    }
}

/// The runtime's view of one host: when it last heard from its agent.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Liveness {
    /// Silent this long, the host is unreachable.
    pub(crate) deadline: Duration,
    /// After that, the wait before a replacement starts.
    pub(crate) grace: Duration,
    /// The last time a frame arrived from the agent.
    pub(crate) last_heard: Instant,
}

impl Liveness {
    /// A frame arrived at `now`.
    pub(crate) fn heard(&mut self, now: Instant) {
        self.last_heard = self.last_heard.max(now);
    }

    /// When the host counts as unreachable, if nothing more is heard.
    pub(crate) fn lost_at(&self) -> Instant {
        self.last_heard + self.deadline
    }

    /// Whether it is unreachable at `now`.
    pub(crate) fn is_lost(&self, now: Instant) -> bool {
        now >= self.lost_at()
    }

    /// The earliest a replacement of one of its nodes may start: the agent has fenced by then.
    pub(crate) fn replace_after(&self) -> Instant {
        self.lost_at() + self.grace
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: Duration = Duration::from_millis(1000);

    #[test]
    fn a_lease_is_renewed_from_when_the_answered_ping_was_sent_not_when_the_answer_came() {
        let t0 = Instant::now();
        let mut lease = Lease::new(D, t0);
        let n = lease.ping(t0 + Duration::from_millis(200));
        // The answer takes 700 ms to come back: the lease counts from the ping's sending.
        lease.answered(n);
        assert_eq!(lease.until(), t0 + Duration::from_millis(1200));
        assert!(!lease.expired(t0 + Duration::from_millis(1199)));
        assert!(lease.expired(t0 + Duration::from_millis(1200)));
    }

    #[test]
    fn an_unanswered_or_unknown_ping_renews_nothing_and_an_old_answer_never_shortens() {
        let t0 = Instant::now();
        let mut lease = Lease::new(D, t0);
        let early = lease.ping(t0 + Duration::from_millis(100));
        let late = lease.ping(t0 + Duration::from_millis(300));
        lease.ping(t0 + Duration::from_millis(500)); // never answered
        lease.answered(late);
        assert_eq!(lease.until(), t0 + Duration::from_millis(1300));
        lease.answered(early); // forgotten once a later one was answered
        assert_eq!(lease.until(), t0 + Duration::from_millis(1300));
        lease.answered(999); // never sent
        assert_eq!(lease.until(), t0 + Duration::from_millis(1300));
    }

    #[test]
    fn the_runtime_never_calls_a_host_lost_before_the_agents_lease_ran_out() {
        // Whatever the delays on the way, the runtime hears a ping no earlier than it was
        // sent; the agent's lease is renewed only by answered pings.
        let t0 = Instant::now();
        let mut lease = Lease::new(D, t0);
        let mut seen = Liveness {
            deadline: D,
            grace: Duration::from_millis(500),
            last_heard: t0,
        };
        let delays = [0u64, 5, 300, 20, 900, 1, 60];
        let mut sent = t0;
        for (i, delay) in delays.iter().enumerate() {
            sent += Duration::from_millis(200);
            let n = lease.ping(sent);
            let heard = sent + Duration::from_millis(*delay);
            seen.heard(heard);
            if i % 3 != 2 {
                lease.answered(n); // some answers are lost
            }
            assert!(
                seen.lost_at() >= lease.until(),
                "ping {i}: the runtime would call the host lost at {:?}, before the lease ends at {:?}",
                seen.lost_at() - t0,
                lease.until() - t0
            );
            assert!(seen.replace_after() >= lease.until() + seen.grace);
        }
    }

    #[test]
    fn pings_come_five_times_a_deadline() {
        assert_eq!(ping_interval(D), Duration::from_millis(200));
        assert_eq!(
            ping_interval(Duration::from_millis(10)),
            Duration::from_millis(20)
        );
    }
}
