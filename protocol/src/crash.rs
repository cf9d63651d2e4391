//! Crash records: why an incarnation ended and what the supervisor decided.
//!
//! The runtime writes one [`CrashRecord`] per failure as JSON in its crash directory. A child
//! that panics leaves a [`PanicReport`] in the panic buffer it inherited, which the runtime
//! folds into the record.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::status::{NodeKind, NodeName};

/// Why an incarnation ended, as the supervisor classifies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// Exited with a non-zero code, or was terminated by a crash signal (SIGSEGV, SIGABRT,
    /// SIGBUS, ...) after it was ready.
    Crashed,
    /// Stopped heartbeating past its deadline; the runtime aborted and killed it.
    Hung,
    /// Never became ready: the executable could not be started, it exited before announcing
    /// readiness, or it did not announce readiness within its start timeout.
    FailedToStart,
    /// Terminated by a signal the runtime did not send (SIGKILL from a user, the OOM killer).
    Killed,
    /// Exited with code 0 although nobody asked it to stop.
    Exited,
    /// Stopped because the runtime asked it to (shutdown, `syncra stop`, a sibling restart).
    Requested,
    /// Its host became unreachable past the host's deadline: its agent kills it there
    /// (fencing), and the runtime counts it as ended.
    Lost,
}

impl Reason {
    /// Whether this ending counts as a failure (writes a crash record, counts towards the
    /// restart intensity).
    pub fn is_failure(self) -> bool {
        !matches!(self, Reason::Requested | Reason::Exited)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reason::Crashed => "crashed",
            Reason::Hung => "hung",
            Reason::FailedToStart => "failed-to-start",
            Reason::Killed => "killed",
            Reason::Exited => "exited",
            Reason::Requested => "requested",
            Reason::Lost => "lost",
        })
    }
}

/// How a process ended: its exit code or the signal that terminated it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExitSummary {
    /// Wall-clock time of the exit, milliseconds since the Unix epoch.
    pub unix_ms: u64,
    /// The pid that exited (absent when the executable could not be started at all).
    pub pid: Option<u32>,
    /// Exit code, when it exited.
    pub code: Option<i32>,
    /// Name of the terminating signal (`SIGKILL`), when a signal ended it.
    pub signal: Option<String>,
    /// The supervisor's classification.
    pub reason: Reason,
    /// Crash record written for it, if any.
    pub record: Option<String>,
}

/// What a child's panic hook leaves behind for the crash record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PanicReport {
    /// The panic message.
    pub message: String,
    /// `file:line:column` of the panic.
    pub location: Option<String>,
    /// Name of the panicking thread.
    pub thread: Option<String>,
    /// The captured backtrace, as text.
    pub backtrace: String,
}

/// What the supervisor decided after a failure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Decision {
    /// A new incarnation will be spawned after a delay.
    Restart {
        /// Delay before the spawn, milliseconds.
        after_ms: u64,
        /// Failures in a row without a stable run.
        attempt: u32,
        /// Siblings restarted with it under one_for_all / rest_for_one.
        siblings: Vec<NodeName>,
    },
    /// The node exceeded its restart intensity or cannot be started: it is `failed`.
    GaveUp {
        /// Why, in words.
        why: String,
    },
    /// The node is not restarted, by its restart type or by config.
    NotRestarted {
        /// Why, in words.
        why: String,
    },
    /// The runtime shuts down because of this failure (`on_give_up = "shutdown"`).
    Shutdown {
        /// Why, in words.
        why: String,
    },
}

/// `ms` milliseconds in words: `850 ms`, `12.4 s`, `3m05s`, `2h10m`.
pub fn human_duration(ms: u64) -> String {
    match ms {
        0..=999 => format!("{ms} ms"),
        1000..=59_999 => format!("{:.1} s", ms as f64 / 1000.0),
        60_000..=3_599_999 => format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60),
        _ => format!("{}h{:02}m", ms / 3_600_000, (ms / 60_000) % 60),
    }
}

impl std::fmt::Display for Decision {
    /// The decision as a sentence: `restarted after 400 ms (failure 3 in a row)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Decision::Restart {
                after_ms,
                attempt,
                siblings,
            } => {
                match (after_ms, attempt) {
                    (0, 0) => write!(f, "restarted at once: it had been running stably")?,
                    (0, _) => write!(f, "restarted at once")?,
                    (ms, 1) => write!(f, "restarted after {}", human_duration(*ms))?,
                    (ms, n) => write!(
                        f,
                        "restarted after {} (failure {n} in a row)",
                        human_duration(*ms)
                    )?,
                }
                if !siblings.is_empty() {
                    let names: Vec<String> = siblings.iter().map(|s| s.to_string()).collect();
                    write!(f, ", and with it {}", names.join(", "))?;
                }
                Ok(())
            }
            Decision::GaveUp { why } => write!(f, "gave up: {why}"),
            Decision::NotRestarted { why } => write!(f, "not restarted: {why}"),
            Decision::Shutdown { why } => write!(f, "shut the runtime down: {why}"),
        }
    }
}

/// One failure of one incarnation: the JSON file written to the crash directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CrashRecord {
    /// RFC 3339 time of the failure.
    pub timestamp: String,
    /// The node.
    pub node: NodeName,
    /// Driver or world.
    pub kind: NodeKind,
    /// The host it ran on, when not the runtime's (`[hosts.<name>]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Pid of the failed incarnation, if it was running (on its host).
    pub pid: Option<u32>,
    /// The failed incarnation.
    pub incarnation: u64,
    /// Exit code, if it exited.
    pub exit_code: Option<i32>,
    /// Terminating signal (`SIGSEGV`), if a signal ended it.
    pub signal: Option<String>,
    /// Classification.
    pub reason: Reason,
    /// A sentence for the reader: what happened.
    pub detail: String,
    /// Milliseconds the incarnation ran.
    pub ran_ms: u64,
    /// The panic, when the child's panic hook recorded one.
    pub panic: Option<PanicReport>,
    /// Last lines the child wrote to stderr.
    pub stderr_tail: Vec<String>,
    /// The child's log file.
    pub log_file: Option<String>,
    /// What the supervisor decided.
    pub decision: Decision,
    /// The minidump written when the process crashed natively (a signal its crash handler
    /// caught: SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT, SIGTRAP), and its crashing thread's
    /// stack.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dump: Option<DumpInfo>,
}

/// A native crash's minidump: written out of process by the runtime (or the agent of the
/// node's host) while the crashed process waited in its crash handler, then read back for the
/// crashing thread's stack, symbolized from the binaries' debug info.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DumpInfo {
    /// The minidump file, on the node's host; `None` when none was kept (see `error`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Its size in bytes.
    #[serde(default)]
    pub bytes: u64,
    /// Milliseconds from the crash handler's request to the dump written.
    #[serde(default)]
    pub write_ms: u64,
    /// Why no dump was kept, or why its stack could not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What the processor says happened (`SIGSEGV / SEGV_MAPERR at 0x0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crash: Option<String>,
    /// The crashing thread's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread: Option<String>,
    /// The crashing thread's stack, innermost frame first (empty until processed, or when it
    /// could not be).
    #[serde(default)]
    pub stack: Vec<StackFrame>,
}

/// One frame of a crashed thread's stack.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StackFrame {
    /// Instruction address.
    pub address: u64,
    /// Function, demangled, when symbols were found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    /// Source file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Source line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
    /// The module (executable or library) the address lies in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
}

impl fmt::Display for StackFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.function {
            Some(func) => write!(f, "{func}")?,
            None => write!(f, "{:#x}", self.address)?,
        }
        if let Some(file) = &self.file {
            write!(f, " at {file}")?;
            if let Some(line) = self.line {
                write!(f, ":{line}")?;
            }
        }
        if let Some(m) = &self.module {
            let short = m.rsplit('/').next().unwrap_or(m);
            write!(f, " ({short})")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_read_as_sentences() {
        let restart = |after_ms, attempt, siblings: Vec<&str>| Decision::Restart {
            after_ms,
            attempt,
            siblings: siblings.into_iter().map(NodeName::driver).collect(),
        };
        assert_eq!(
            restart(0, 0, vec![]).to_string(),
            "restarted at once: it had been running stably"
        );
        assert_eq!(
            restart(100, 1, vec![]).to_string(),
            "restarted after 100 ms"
        );
        assert_eq!(
            restart(1600, 5, vec!["audio", "input"]).to_string(),
            "restarted after 1.6 s (failure 5 in a row), and with it audio, input"
        );
        assert_eq!(
            Decision::GaveUp {
                why: "too many".into()
            }
            .to_string(),
            "gave up: too many"
        );
        assert_eq!(human_duration(91_000), "1m31s");
        assert_eq!(human_duration(7_800_000), "2h10m");
    }
}
