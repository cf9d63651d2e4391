//! Chaos: random SIGKILL and SIGSTOP across a runtime's worlds, and what the runtime must
//! show afterwards — still up, every node back, one crash record per fault, its fd count
//! back to where it was, no zombie, and never two live processes for one name at any moment.
//! The bounded test (`tests/chaos.rs`) and `just chaos` (`syncra-chaos`, 60 s) both run it.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use syncra_protocol::NodeState;

use crate::{Harness, PATIENCE, fd_count, send};

/// A config for chaos: fast hang detection, quick restarts, and an intensity no run reaches.
pub fn config(worlds: usize) -> String {
    format!(
        "[runtime]\nwatch_interval_ms = 100\nmissed_beats = 3\nabort_grace_ms = 100\n\n\
         [supervisor]\nintensity = 100000\nperiod_ms = 1000\nbackoff_initial_ms = 5\nbackoff_max_ms = 100\n\n\
         [worlds]\ncount = {worlds}\nentities = 64\n"
    )
}

/// What a chaos run did and found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// How long faults were injected.
    pub duration: Duration,
    /// The random seed (a run is repeatable from it as far as timing allows).
    pub seed: u64,
    /// SIGKILLs sent.
    pub kills: usize,
    /// SIGSTOPs sent (each must be found hung and replaced).
    pub stops: usize,
    /// Crash record files on disk at the end.
    pub crash_records: usize,
    /// Whether the runtime process was alive and answering at the end.
    pub runtime_up: bool,
    /// Nodes not ready at the end (after waiting).
    pub not_back: Vec<String>,
    /// The runtime's fds before the first fault, and once everything was back.
    pub fds_before: usize,
    /// See `fds_before`.
    pub fds_after: usize,
    /// Zombie children of the runtime at the end.
    pub zombies: usize,
    /// The most live processes seen at once for one node name, over every sample.
    pub max_live_per_name: usize,
    /// Samples of the process table taken.
    pub samples: usize,
    /// SIGKILL to replacement ready, milliseconds, per kill (as often as the status poll sees).
    pub kill_recovery_ms: Vec<f64>,
    /// SIGSTOP to replacement ready, milliseconds, per stop (the hang deadline included).
    pub stop_recovery_ms: Vec<f64>,
}

impl Report {
    /// Faults injected.
    pub fn faults(&self) -> usize {
        self.kills + self.stops
    }

    /// Everything that must hold, as a list of what does not.
    pub fn violations(&self) -> Vec<String> {
        let mut v = Vec::new();
        if !self.runtime_up {
            v.push("the runtime is not up".to_owned());
        }
        if !self.not_back.is_empty() {
            v.push(format!("not back: {}", self.not_back.join(", ")));
        }
        if self.crash_records != self.faults() {
            v.push(format!(
                "{} crash records for {} faults",
                self.crash_records,
                self.faults()
            ));
        }
        if self.fds_after != self.fds_before {
            v.push(format!(
                "runtime fds {} before, {} after",
                self.fds_before, self.fds_after
            ));
        }
        if self.zombies != 0 {
            v.push(format!("{} zombies", self.zombies));
        }
        if self.max_live_per_name > 1 {
            v.push(format!(
                "{} live processes for one name at once",
                self.max_live_per_name
            ));
        }
        v
    }
}

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Live (non-zombie) processes of this runtime per node name, from their environment.
fn live_per_name(h: &Harness) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for pid in h.tagged_processes() {
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        if let Some(name) = env
            .split(|b| *b == 0)
            .find_map(|kv| kv.strip_prefix(b"SYNCRA_NODE="))
        {
            *counts
                .entry(String::from_utf8_lossy(name).into_owned())
                .or_insert(0) += 1;
        }
    }
    counts
}

/// Zombie children of `pid`.
fn zombies_of(pid: u32) -> usize {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
                return false;
            };
            // "pid (comm) S ppid ..." — comm may hold spaces; parse after the last ')'.
            let rest: Vec<&str> = stat
                .rsplit_once(')')
                .map(|(_, r)| r.split_whitespace().collect())
                .unwrap_or_default();
            rest.first() == Some(&"Z") && rest.get(1) == Some(&pid.to_string().as_str())
        })
        .count()
}

fn crash_files(h: &Harness) -> usize {
    std::fs::read_dir(h.log_dir().join("crashes"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                .count()
        })
        .unwrap_or(0)
}

/// Inject faults into the worlds `names` of `h` for `duration`, then check the runtime.
pub fn run(h: &Harness, names: &[String], duration: Duration, seed: u64) -> Report {
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    h.wait_ready(&refs);
    let mut report = Report {
        seed,
        fds_before: fd_count(h.pid()),
        ..Report::default()
    };
    let mut rng = Rng(seed | 1);
    let mut faulted: HashSet<(String, u64)> = HashSet::new();
    // Faults whose replacement is not ready yet: (name, incarnation faulted, when, a stop).
    let mut pending: Vec<(String, u64, Instant, bool)> = Vec::new();
    let start = Instant::now();
    let mut next_fault = start;
    while start.elapsed() < duration {
        let live = live_per_name(h);
        report.samples += 1;
        report.max_live_per_name = report
            .max_live_per_name
            .max(live.values().copied().max().unwrap_or(0));
        let Some(status) = h.try_status() else {
            continue;
        };
        recovered(&mut pending, &status, &mut report);
        if Instant::now() >= next_fault {
            let name = &names[rng.below(names.len() as u64) as usize];
            if let Some(v) = status.node(name)
                && v.state == NodeState::Ready
                && let Some(pid) = v.pid
                && faulted.insert((name.clone(), v.incarnation))
            {
                let stop = rng.below(3) == 0;
                if stop {
                    send(pid, libc::SIGSTOP);
                    report.stops += 1;
                } else {
                    send(pid, libc::SIGKILL);
                    report.kills += 1;
                }
                pending.push((name.clone(), v.incarnation, Instant::now(), stop));
            }
            next_fault = Instant::now() + Duration::from_millis(10 + rng.below(60));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    report.duration = start.elapsed();

    // Settle: everything back, every record written, fds and zombies gone.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let live = live_per_name(h);
        report.samples += 1;
        report.max_live_per_name = report
            .max_live_per_name
            .max(live.values().copied().max().unwrap_or(0));
        let status = h.try_status();
        report.runtime_up = status.is_some();
        report.not_back = match &status {
            Some(s) => names
                .iter()
                .filter(|n| s.node(n).is_none_or(|v| v.state != NodeState::Ready))
                .cloned()
                .collect(),
            None => names.to_vec(),
        };
        if let Some(s) = &status {
            recovered(&mut pending, s, &mut report);
        }
        report.crash_records = crash_files(h);
        report.fds_after = fd_count(h.pid());
        report.zombies = zombies_of(h.pid());
        if report.violations().is_empty() || Instant::now() > deadline {
            return report;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Take the faults whose node is back (a later incarnation ready) out of `pending`, noting
/// how long each took.
fn recovered(
    pending: &mut Vec<(String, u64, Instant, bool)>,
    status: &syncra_protocol::status::StatusReport,
    report: &mut Report,
) {
    pending.retain(|(name, inc, at, stop)| {
        let back = status
            .node(name)
            .is_some_and(|v| v.state == NodeState::Ready && v.incarnation > *inc);
        if back {
            let ms = at.elapsed().as_secs_f64() * 1e3;
            if *stop {
                report.stop_recovery_ms.push(ms);
            } else {
                report.kill_recovery_ms.push(ms);
            }
        }
        !back
    });
}

/// A seed from the clock.
pub fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0x5EED)
}
