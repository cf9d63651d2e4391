//! Restart policy as data: given how an incarnation ended and the node's history, what the
//! supervisor does next. Pure functions; the actors only carry their results out.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use syncra_config::{GroupPolicy, RestartType, Strategy};
use syncra_protocol::NodeName;
use syncra_protocol::boot::exit_code;
use syncra_protocol::crash::Reason;

/// How an exit looked from outside, before any policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Termination {
    /// Exited with a code.
    Code(i32),
    /// Killed by a signal.
    Signal(i32),
    /// Never ran (exec failed).
    NotStarted,
    /// Its host stopped answering: how it ended there is not known (its agent fences it).
    Lost,
}

/// Signals that mean the program itself crashed, as opposed to being killed from outside.
const CRASH_SIGNALS: &[i32] = &[
    libc::SIGSEGV,
    libc::SIGABRT,
    libc::SIGBUS,
    libc::SIGILL,
    libc::SIGFPE,
    libc::SIGSYS,
    libc::SIGTRAP,
];

/// Whether signal `s` means the program crashed (as opposed to being killed from outside).
pub(crate) fn is_crash_signal(s: i32) -> bool {
    CRASH_SIGNALS.contains(&s)
}

/// Classify an exit the runtime did not ask for. `was_ready`: whether the incarnation had
/// announced readiness.
pub(crate) fn classify(t: Termination, was_ready: bool) -> Reason {
    match (t, was_ready) {
        (Termination::NotStarted, _) => Reason::FailedToStart,
        (Termination::Lost, _) => Reason::Lost,
        (_, false) => Reason::FailedToStart,
        (Termination::Code(0), true) => Reason::Exited,
        (Termination::Code(_), true) => Reason::Crashed,
        (Termination::Signal(s), true) if CRASH_SIGNALS.contains(&s) => Reason::Crashed,
        (Termination::Signal(_), true) => Reason::Killed,
    }
}

/// Whether an exit shows that starting again would fail the same way (the node told us so
/// with one of the [`exit_code`] codes).
pub(crate) fn is_permanent_start_failure(t: Termination) -> Option<&'static str> {
    match t {
        Termination::Code(c) => exit_code::describe(c),
        _ => None,
    }
}

/// A node's recent failures, for the intensity window and the backoff.
#[derive(Debug, Default, Clone)]
pub(crate) struct History {
    restarts: VecDeque<Instant>,
    /// Failures in a row without a stable run in between.
    pub(crate) consecutive: u32,
}

impl History {
    /// Forget everything (a user restarted or started the node).
    pub(crate) fn reset(&mut self) {
        self.restarts.clear();
        self.consecutive = 0;
    }
}

/// What to do after an incarnation ended on its own.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Verdict {
    /// Start a new incarnation after `delay`.
    Restart {
        /// The delay.
        delay: Duration,
        /// Failures in a row (0 after a stable run).
        attempt: u32,
    },
    /// Stop trying: the node is failed.
    GiveUp(String),
    /// Not restarted by restart type or config; `failed` says whether the end was a failure.
    NotRestarted {
        /// Why.
        why: String,
        /// Whether the node ends `failed` (else `stopped`).
        failed: bool,
    },
}

/// Everything [`decide`] looks at.
#[derive(Debug, Clone)]
pub(crate) struct Ending {
    /// The classification.
    pub(crate) reason: Reason,
    /// Set when starting again cannot help; the sentence says why.
    pub(crate) permanent: Option<String>,
    /// How long the incarnation had been ready (`None`: never ready).
    pub(crate) ready_for: Option<Duration>,
}

/// Decide what follows an incarnation's end. `jitter_unit` is a random number in [-1, 1].
pub(crate) fn decide(
    ending: Ending,
    restart: RestartType,
    auto_restart: bool,
    policy: &GroupPolicy,
    history: &mut History,
    now: Instant,
    jitter_unit: f64,
) -> Verdict {
    let failure = ending.reason.is_failure();
    if let Some(why) = &ending.permanent {
        return Verdict::GiveUp(format!("{why}; restarting cannot help"));
    }
    match restart {
        RestartType::Temporary => {
            return Verdict::NotRestarted {
                why: "restart = \"temporary\": never restarted".into(),
                failed: failure,
            };
        }
        RestartType::Transient if !failure => {
            return Verdict::NotRestarted {
                why: "restart = \"transient\" and it exited cleanly".into(),
                failed: false,
            };
        }
        _ => {}
    }
    if !auto_restart {
        return Verdict::NotRestarted {
            why: "auto_restart_crashed_processes = false".into(),
            failed: failure,
        };
    }

    while history
        .restarts
        .front()
        .is_some_and(|t| now.duration_since(*t) > policy.period)
    {
        history.restarts.pop_front();
    }
    if history.restarts.len() as u32 >= policy.intensity {
        return Verdict::GiveUp(format!(
            "failed {} times within {} s, more than the intensity of {} restarts (supervisor.intensity, period_ms)",
            history.restarts.len() + 1,
            policy.period.as_secs_f64(),
            policy.intensity
        ));
    }
    history.restarts.push_back(now);

    let stable = ending.ready_for.is_some_and(|r| r >= policy.stable_after);
    if stable {
        history.consecutive = 0;
        return Verdict::Restart {
            delay: Duration::ZERO,
            attempt: 0,
        };
    }
    history.consecutive = history.consecutive.saturating_add(1);
    Verdict::Restart {
        delay: backoff_delay(policy, history.consecutive, jitter_unit),
        attempt: history.consecutive,
    }
}

/// The delay before attempt `attempt` (1-based): `initial × multiplier^(attempt-1)`, capped,
/// varied by ±`jitter`.
pub(crate) fn backoff_delay(policy: &GroupPolicy, attempt: u32, jitter_unit: f64) -> Duration {
    let b = &policy.backoff;
    let exp = b.multiplier.powi(attempt.saturating_sub(1).min(64) as i32);
    let base = (b.initial.as_secs_f64() * exp).min(b.max.as_secs_f64());
    let varied = base * (1.0 + b.jitter * jitter_unit.clamp(-1.0, 1.0));
    Duration::from_secs_f64(varied.clamp(0.0, b.max.as_secs_f64()))
}

/// First delay before spawning again when the machine was out of a resource.
pub(crate) const RESOURCE_RETRY_INITIAL: Duration = Duration::from_millis(100);
/// Longest such delay.
pub(crate) const RESOURCE_RETRY_MAX: Duration = Duration::from_secs(5);

/// The delay before spawn attempt `attempt` (1-based) after the machine ran out of a resource
/// (fds, memory, processes): doubling from [`RESOURCE_RETRY_INITIAL`] up to
/// [`RESOURCE_RETRY_MAX`], for as long as it takes. It is no failure of the node, so it
/// never counts toward the intensity and never makes the supervisor give up.
pub(crate) fn resource_retry_delay(attempt: u32) -> Duration {
    RESOURCE_RETRY_INITIAL
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(RESOURCE_RETRY_MAX)
}

/// The siblings that restart with `failed` under `strategy`, from `order` (start order).
pub(crate) fn siblings(strategy: Strategy, order: &[NodeName], failed: &NodeName) -> Vec<NodeName> {
    match strategy {
        Strategy::OneForOne => Vec::new(),
        Strategy::OneForAll => order.iter().filter(|n| *n != failed).cloned().collect(),
        Strategy::RestForOne => order
            .iter()
            .skip_while(|n| *n != failed)
            .skip(1)
            .cloned()
            .collect(),
    }
}

/// A random number in [-1, 1] for jitter.
pub(crate) fn jitter_unit() -> f64 {
    let mut b = [0u8; 8];
    if rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty()).is_err() {
        return 0.0;
    }
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use syncra_config::Backoff;

    fn policy() -> GroupPolicy {
        GroupPolicy {
            strategy: Strategy::OneForOne,
            intensity: 3,
            period: Duration::from_secs(10),
            backoff: Backoff {
                initial: Duration::from_millis(100),
                max: Duration::from_millis(1000),
                multiplier: 2.0,
                jitter: 0.0,
            },
            stable_after: Duration::from_secs(5),
            warm_spare: false,
        }
    }

    fn crash(ready_for: Option<Duration>) -> Ending {
        Ending {
            reason: Reason::Crashed,
            permanent: None,
            ready_for,
        }
    }

    #[test]
    fn classification() {
        assert_eq!(classify(Termination::Code(0), true), Reason::Exited);
        assert_eq!(classify(Termination::Code(101), true), Reason::Crashed);
        assert_eq!(
            classify(Termination::Signal(libc::SIGSEGV), true),
            Reason::Crashed
        );
        assert_eq!(
            classify(Termination::Signal(libc::SIGKILL), true),
            Reason::Killed
        );
        assert_eq!(classify(Termination::Code(0), false), Reason::FailedToStart);
        assert_eq!(
            classify(Termination::NotStarted, false),
            Reason::FailedToStart
        );
    }

    #[test]
    fn backoff_grows_then_caps_and_gives_up_past_intensity() {
        let (p, mut h, t) = (policy(), History::default(), Instant::now());
        let delays: Vec<_> = (0..3)
            .map(|i| {
                match decide(
                    crash(None),
                    RestartType::Permanent,
                    true,
                    &p,
                    &mut h,
                    t + Duration::from_millis(i),
                    0.0,
                ) {
                    Verdict::Restart { delay, .. } => delay.as_millis(),
                    v => panic!("{v:?}"),
                }
            })
            .collect();
        assert_eq!(delays, [100, 200, 400]);
        let v = decide(
            crash(None),
            RestartType::Permanent,
            true,
            &p,
            &mut h,
            t + Duration::from_millis(5),
            0.0,
        );
        assert!(
            matches!(&v, Verdict::GiveUp(why) if why.contains("intensity of 3")),
            "{v:?}"
        );
        assert_eq!(backoff_delay(&p, 10, 0.0), Duration::from_millis(1000));
    }

    #[test]
    fn restarts_outside_the_window_are_forgotten() {
        let (p, mut h, t) = (policy(), History::default(), Instant::now());
        for i in 0..3 {
            decide(
                crash(None),
                RestartType::Permanent,
                true,
                &p,
                &mut h,
                t + Duration::from_secs(i),
                0.0,
            );
        }
        let v = decide(
            crash(None),
            RestartType::Permanent,
            true,
            &p,
            &mut h,
            t + Duration::from_secs(30),
            0.0,
        );
        assert!(matches!(v, Verdict::Restart { .. }), "{v:?}");
    }

    #[test]
    fn a_stable_node_restarts_at_once_and_resets_its_delay() {
        let (p, mut h, t) = (policy(), History::default(), Instant::now());
        decide(
            crash(None),
            RestartType::Permanent,
            true,
            &p,
            &mut h,
            t,
            0.0,
        );
        decide(
            crash(None),
            RestartType::Permanent,
            true,
            &p,
            &mut h,
            t,
            0.0,
        );
        let v = decide(
            crash(Some(Duration::from_secs(6))),
            RestartType::Permanent,
            true,
            &p,
            &mut h,
            t,
            0.0,
        );
        assert_eq!(
            v,
            Verdict::Restart {
                delay: Duration::ZERO,
                attempt: 0
            }
        );
        assert_eq!(h.consecutive, 0);
    }

    #[test]
    fn restart_types_and_auto_restart() {
        let (p, t) = (policy(), Instant::now());
        let clean = Ending {
            reason: Reason::Exited,
            permanent: None,
            ready_for: Some(Duration::from_secs(1)),
        };
        let mut h = History::default();
        assert!(matches!(
            decide(
                clean.clone(),
                RestartType::Transient,
                true,
                &p,
                &mut h,
                t,
                0.0
            ),
            Verdict::NotRestarted { failed: false, .. }
        ));
        assert!(matches!(
            decide(clean, RestartType::Permanent, true, &p, &mut h, t, 0.0),
            Verdict::Restart { .. }
        ));
        assert!(matches!(
            decide(
                crash(None),
                RestartType::Transient,
                true,
                &p,
                &mut h,
                t,
                0.0
            ),
            Verdict::Restart { .. }
        ));
        assert!(matches!(
            decide(
                crash(None),
                RestartType::Temporary,
                true,
                &p,
                &mut h,
                t,
                0.0
            ),
            Verdict::NotRestarted { failed: true, .. }
        ));
        assert!(matches!(
            decide(
                crash(None),
                RestartType::Permanent,
                false,
                &p,
                &mut h,
                t,
                0.0
            ),
            Verdict::NotRestarted { failed: true, .. }
        ));
        let permanent = Ending {
            reason: Reason::FailedToStart,
            permanent: Some("executable not found".into()),
            ready_for: None,
        };
        assert!(matches!(
            decide(permanent, RestartType::Permanent, true, &p, &mut h, t, 0.0),
            Verdict::GiveUp(_)
        ));
    }

    #[test]
    fn jitter_stays_within_its_fraction() {
        let mut p = policy();
        p.backoff.jitter = 0.5;
        assert_eq!(backoff_delay(&p, 1, 1.0), Duration::from_millis(150));
        assert_eq!(backoff_delay(&p, 1, -1.0), Duration::from_millis(50));
        for _ in 0..100 {
            let u = jitter_unit();
            assert!((-1.0..=1.0).contains(&u));
        }
    }

    #[test]
    fn sibling_selection() {
        let order: Vec<NodeName> = ["a", "b", "c"]
            .iter()
            .map(|n| NodeName::driver(n))
            .collect();
        let b = NodeName::driver("b");
        assert!(siblings(Strategy::OneForOne, &order, &b).is_empty());
        assert_eq!(
            siblings(Strategy::OneForAll, &order, &b),
            [NodeName::driver("a"), NodeName::driver("c")]
        );
        assert_eq!(
            siblings(Strategy::RestForOne, &order, &b),
            [NodeName::driver("c")]
        );
    }

    #[test]
    fn a_machine_out_of_resources_is_waited_out_with_growing_delays_up_to_a_cap() {
        assert_eq!(resource_retry_delay(1), Duration::from_millis(100));
        assert_eq!(resource_retry_delay(2), Duration::from_millis(200));
        assert_eq!(resource_retry_delay(4), Duration::from_millis(800));
        assert_eq!(resource_retry_delay(7), RESOURCE_RETRY_MAX);
        assert_eq!(resource_retry_delay(u32::MAX), RESOURCE_RETRY_MAX);
    }
}
