//! How an incarnation ended, decided by a pure function: from what is known of its end (its
//! exit, whether it had been ready, why the runtime ended it, why it never ran, what it said
//! itself) to the [`Reason`] recorded, whether trying again cannot help, and the sentence
//! shown in status, the log and the crash record. The node supervisor acts on the result.

use std::time::Duration;

use syncra_protocol::boot::exit_code;
use syncra_protocol::crash::Reason;

use super::policy::{self, Termination};
use crate::spawn::SpawnError;

/// Why the runtime itself ended an incarnation.
#[derive(Debug, Clone)]
pub(crate) enum Forced {
    Hung {
        silent: Duration,
    },
    StartTimeout,
    Refused(String),
    Requested,
    /// Its host was unreachable past its deadline: why, in words.
    Lost(String),
}

/// Why an incarnation never had a process.
#[derive(Debug)]
pub(crate) enum NotStarted {
    /// Creating the process failed.
    Spawn(SpawnError),
    /// A dependency cannot become ready.
    Dependency(String),
    /// Its host's link failed after the spawn request went out: it may have started there,
    /// and is treated as lost (why, in words).
    Lost(String),
}

/// What is known about the end of an incarnation.
#[derive(Debug)]
pub(crate) struct Facts<'a> {
    pub(crate) termination: Termination,
    pub(crate) was_ready: bool,
    pub(crate) forced: Option<&'a Forced>,
    pub(crate) not_started: Option<&'a NotStarted>,
    pub(crate) panicked: bool,
    /// Why the node said it left (its exit note).
    pub(crate) note: Option<&'a str>,
    pub(crate) deadline_ms: u64,
    pub(crate) start_timeout: Duration,
    /// The sandbox limit that ended it ("memory limit 256 MiB"), when one did.
    pub(crate) limit: Option<&'a str>,
}

/// The verdict on an end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Assessment {
    pub(crate) reason: Reason,
    /// Why trying again cannot help, when it cannot.
    pub(crate) permanent: Option<String>,
    /// The end in words.
    pub(crate) detail: String,
}

/// Decide how an incarnation ended.
pub(crate) fn assess(f: &Facts<'_>) -> Assessment {
    let (code, sig) = match f.termination {
        Termination::Code(c) => (Some(c), None),
        Termination::Signal(s) => (None, Some(s)),
        Termination::NotStarted | Termination::Lost => (None, None),
    };
    // A node that panicked or crashed while being asked to stop crashed all the same.
    let crashed_anyway =
        f.panicked || matches!(f.termination, Termination::Signal(s) if policy::is_crash_signal(s));
    let reason = match f.forced {
        Some(Forced::Hung { .. }) => Reason::Hung,
        Some(Forced::Lost(_)) => Reason::Lost,
        Some(Forced::StartTimeout) | Some(Forced::Refused(_)) => Reason::FailedToStart,
        Some(Forced::Requested) if !crashed_anyway => Reason::Requested,
        _ => policy::classify(f.termination, f.was_ready),
    };
    let permanent: Option<String> = match (f.not_started, f.forced) {
        (Some(NotStarted::Spawn(e)), _) if e.is_permanent() => Some(e.to_string()),
        (_, Some(Forced::Refused(why))) => Some(why.clone()),
        _ => policy::is_permanent_start_failure(f.termination).map(str::to_owned),
    };
    let permanent = match (permanent, f.note) {
        (Some(why), Some(note)) => Some(format!("{why}: {note}")),
        (permanent, _) => permanent,
    };
    let detail = match (f.forced, f.not_started) {
        (_, Some(NotStarted::Spawn(e))) => format!("could not be started: {e}"),
        (_, Some(NotStarted::Dependency(why))) => format!("not started: {why}"),
        (_, Some(NotStarted::Lost(why))) => format!("lost while it was starting: {why}"),
        (Some(Forced::Hung { silent }), _) => format!(
            "no heartbeat for {} ms (deadline {} ms)",
            silent.as_millis(),
            f.deadline_ms
        ),
        (Some(Forced::StartTimeout), _) => format!(
            "not ready within its start timeout of {} ms",
            f.start_timeout.as_millis()
        ),
        (Some(Forced::Refused(why)), _) => why.clone(),
        (Some(Forced::Lost(why)), _) => format!("lost: {why}"),
        (Some(Forced::Requested), _) if reason == Reason::Requested => "stopped on request".into(),
        _ => match (code, sig, f.was_ready) {
            (Some(c), _, false) => match exit_code::describe(c) {
                Some(why) => format!("exited with code {c} before it was ready: {why}"),
                None => format!("exited with code {c} before it was ready"),
            },
            (None, Some(s), false) => {
                format!(
                    "killed by {} before it was ready",
                    super::node::signal_name(s)
                )
            }
            (Some(c), _, true) if c == exit_code::LINK_LOST => {
                format!("lost its link to the runtime and left (exit code {c})")
            }
            (Some(c), _, true) => format!("exited with code {c}"),
            (None, Some(s), true) => format!("terminated by {}", super::node::signal_name(s)),
            _ => "ended".into(),
        },
    };
    let detail = match f.limit {
        Some(limit) => format!("killed: {limit} reached ({detail})"),
        None => detail,
    };
    // What the node said about its own exit (a refused setting, a failed start).
    let detail = match f.note {
        Some(note) if reason != Reason::Requested => format!("{detail}: {note}"),
        _ => detail,
    };
    Assessment {
        reason,
        permanent,
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(termination: Termination, was_ready: bool) -> Facts<'static> {
        Facts {
            termination,
            was_ready,
            forced: None,
            not_started: None,
            panicked: false,
            note: None,
            deadline_ms: 300,
            start_timeout: Duration::from_secs(10),
            limit: None,
        }
    }

    #[test]
    fn a_hang_is_a_hang_whatever_signal_ended_it() {
        let forced = Forced::Hung {
            silent: Duration::from_millis(320),
        };
        let a = assess(&Facts {
            forced: Some(&forced),
            ..facts(Termination::Signal(libc::SIGABRT), true)
        });
        assert_eq!(a.reason, Reason::Hung);
        assert_eq!(a.detail, "no heartbeat for 320 ms (deadline 300 ms)");
        assert_eq!(a.permanent, None);
    }

    #[test]
    fn a_requested_stop_is_requested_unless_the_node_crashed_on_the_way_out() {
        let forced = Forced::Requested;
        let clean = assess(&Facts {
            forced: Some(&forced),
            ..facts(Termination::Code(0), true)
        });
        assert_eq!(
            (clean.reason, clean.detail.as_str()),
            (Reason::Requested, "stopped on request")
        );
        let panicked = assess(&Facts {
            forced: Some(&forced),
            panicked: true,
            ..facts(Termination::Code(101), true)
        });
        assert_eq!(panicked.reason, Reason::Crashed);
        assert_eq!(panicked.detail, "exited with code 101");
        let segv = assess(&Facts {
            forced: Some(&forced),
            ..facts(Termination::Signal(libc::SIGSEGV), true)
        });
        assert_eq!(segv.reason, Reason::Crashed);
    }

    #[test]
    fn a_refused_setting_is_permanent_and_says_what_the_node_said() {
        let a = assess(&Facts {
            note: Some("its settings do not fit: unknown field `widht`"),
            ..facts(Termination::Code(exit_code::BAD_SETTINGS), false)
        });
        assert_eq!(a.reason, Reason::FailedToStart);
        let permanent = a.permanent.unwrap();
        assert!(
            permanent.ends_with(": its settings do not fit: unknown field `widht`"),
            "{permanent}"
        );
        assert!(
            a.detail
                .starts_with("exited with code 88 before it was ready: "),
            "{}",
            a.detail
        );
        assert!(a.detail.ends_with("unknown field `widht`"), "{}", a.detail);
    }

    #[test]
    fn a_lost_link_and_plain_exits_read_as_such() {
        let lost = assess(&facts(Termination::Code(exit_code::LINK_LOST), true));
        assert_eq!(
            lost.detail,
            "lost its link to the runtime and left (exit code 89)"
        );
        let killed = assess(&facts(Termination::Signal(libc::SIGKILL), true));
        assert_eq!(
            (killed.reason, killed.detail.as_str()),
            (Reason::Killed, "terminated by SIGKILL")
        );
        let early = assess(&facts(Termination::Signal(libc::SIGKILL), false));
        assert_eq!(early.detail, "killed by SIGKILL before it was ready");
    }

    #[test]
    fn a_start_that_never_happened_says_why_and_a_missing_program_is_permanent() {
        let missing = NotStarted::Spawn(SpawnError::NotFound {
            program: "syncra-window".into(),
            searched: String::new(),
        });
        let a = assess(&Facts {
            not_started: Some(&missing),
            ..facts(Termination::NotStarted, false)
        });
        assert_eq!(a.reason, Reason::FailedToStart);
        assert!(a.permanent.is_some());
        assert_eq!(
            a.detail,
            "could not be started: executable `syncra-window` not found"
        );
        let dep = NotStarted::Dependency("dependency window failed".into());
        let b = assess(&Facts {
            not_started: Some(&dep),
            ..facts(Termination::NotStarted, false)
        });
        assert_eq!(b.detail, "not started: dependency window failed");
        let timeout = Forced::StartTimeout;
        let c = assess(&Facts {
            forced: Some(&timeout),
            ..facts(Termination::Signal(libc::SIGKILL), false)
        });
        assert_eq!(c.detail, "not ready within its start timeout of 10000 ms");
    }
}
