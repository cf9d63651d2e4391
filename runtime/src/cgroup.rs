//! A pids cgroup per node, for a root runtime: root is exempt from `RLIMIT_NPROC`, so the
//! kernel's pids controller is what bounds how many tasks (processes and threads) a node of a
//! root runtime may have.
//!
//! Each runtime makes `syncra-<pid>` in its own cgroup of the pids hierarchy (v1, or v2 where
//! its cgroup may delegate the controller), and one cgroup per node inside it with its
//! `pids.max`. The child is counted before it can fork:
//!
//! - **v1**: a thread of the runtime lives in the node's cgroup (cgroups are per thread in v1)
//!   and clones the node's every incarnation, which is born in it. Moving a process into a
//!   cgroup waits for an RCU grace period (5–20 ms measured here), so it is paid once per
//!   node, by that thread, not at every spawn.
//! - **v2**: the child writes `0` to the cgroup's `cgroup.procs` between clone and exec (a
//!   migration per spawn; not on this machine, whose pids controller is v1).
//!
//! A node's cgroup is kept for its next incarnation and removed when the runtime lets go of
//! it; cgroups of runtimes that died without removing theirs are swept at the next start.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, Weak};

/// A node's pids cgroup, and how its child enters it.
#[derive(Debug)]
pub(crate) struct NodeCgroup {
    dir: PathBuf,
    entry: Entry,
    _base: Arc<Base>,
}

#[derive(Debug)]
enum Entry {
    /// v1: a thread in the cgroup that clones the node.
    Thread(Helper),
    /// v2: `cgroup.procs`, write-only and close-on-exec, for the child to write `0` to.
    Procs(OwnedFd),
}

type HelperJob = Box<dyn FnOnce() + Send + 'static>;

#[derive(Debug)]
struct Helper {
    tx: Option<mpsc::Sender<HelperJob>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NodeCgroup {
    /// The `cgroup.procs` fd the child writes `0` to, when it enters by itself (v2).
    pub(crate) fn procs_fd(&self) -> Option<RawFd> {
        match &self.entry {
            Entry::Procs(fd) => Some(fd.as_raw_fd()),
            Entry::Thread(_) => None,
        }
    }

    /// Run `f` where a process it clones is born in the node's cgroup: on the node's thread
    /// (v1), waiting for it, or here (v2). `None` if that thread is gone.
    pub(crate) fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> Option<R> {
        let Entry::Thread(helper) = &self.entry else {
            return Some(f());
        };
        let (done, result) = mpsc::sync_channel(1);
        let job: Box<dyn FnOnce() + Send + '_> = Box::new(move || {
            let _ = done.send(f());
        });
        // SAFETY: only the lifetime is erased. The job borrows from this call's caller, and
        // this call does not return until the job has run or been dropped: `result` yields
        // only once the job's `done` has sent (after `f` returned) or was dropped (the job
        // dropped unrun: the thread gone, or `f` panicked and unwound).
        let job: HelperJob =
            unsafe { std::mem::transmute::<Box<dyn FnOnce() + Send + '_>, HelperJob>(job) };
        helper.tx.as_ref()?.send(job).ok()?;
        result.recv().ok()
    }
}

impl Drop for NodeCgroup {
    fn drop(&mut self) {
        if let Entry::Thread(helper) = &mut self.entry {
            helper.tx = None;
            if let Some(thread) = helper.thread.take() {
                let _ = thread.join();
            }
        }
        // A thread that just ended may still be counted for a moment.
        let t0 = std::time::Instant::now();
        while let Err(e) = std::fs::remove_dir(&self.dir) {
            if e.raw_os_error() != Some(libc::EBUSY)
                || t0.elapsed() > std::time::Duration::from_millis(200)
            {
                // Zombies count until they are reaped: the orphans of a node that forked are
                // init's to reap, and some inits are slow at it.
                tracing::debug!(dir = %self.dir.display(), error = %e, "a node's cgroup is left for the next start to sweep");
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}

/// This runtime's `syncra-<pid>` cgroup, removed when its last node's goes.
#[derive(Debug)]
struct Base(PathBuf, bool);

impl Drop for Base {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// A pids cgroup for the node whose private name is `stem`, with at most `max` tasks: the one
/// already held for it (its limit set to `max`: a profile that changed), or a new one. Call it
/// on a thread that has entered the tokio runtime (the node's thread enters it too).
pub(crate) fn for_node(stem: &str, max: u64) -> Result<Arc<NodeCgroup>, String> {
    static HELD: Mutex<Vec<Weak<NodeCgroup>>> = Mutex::new(Vec::new());
    let (base, v1) = base()?;
    let dir = base.0.join(stem);
    let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
    held.retain(|w| w.strong_count() > 0);
    if let Some(cg) = held.iter().filter_map(Weak::upgrade).find(|c| c.dir == dir) {
        set_max(&dir, max, v1)?;
        return Ok(cg);
    }
    let cg = Arc::new(make(dir, base, v1, stem, max)?);
    held.push(Arc::downgrade(&cg));
    Ok(cg)
}

/// `pids.max` of `dir`: `max`, and one more for the node's thread (v1).
fn set_max(dir: &Path, max: u64, v1: bool) -> Result<(), String> {
    let max_path = dir.join("pids.max");
    let max = if v1 { max + 1 } else { max };
    std::fs::write(&max_path, max.to_string())
        .map_err(|e| format!("writing {}: {e}", max_path.display()))
}

fn make(
    dir: PathBuf,
    base: Arc<Base>,
    v1: bool,
    stem: &str,
    max: u64,
) -> Result<NodeCgroup, String> {
    match std::fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("creating {}: {e}", dir.display())),
    }
    set_max(&dir, max, v1)?;
    let entry = if v1 {
        Entry::Thread(helper(stem, &dir)?)
    } else {
        let procs_path = dir.join("cgroup.procs");
        Entry::Procs(
            rustix::fs::open(
                &procs_path,
                rustix::fs::OFlags::WRONLY | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )
            .map_err(|e| format!("opening {}: {e}", procs_path.display()))?,
        )
    };
    Ok(NodeCgroup {
        dir,
        entry,
        _base: base,
    })
}

/// Start the thread that lives in the v1 cgroup `dir` and runs what it is given.
fn helper(stem: &str, dir: &Path) -> Result<Helper, String> {
    let tasks = dir.join("tasks");
    let handle = tokio::runtime::Handle::try_current().ok();
    let (tx, rx) = mpsc::channel::<HelperJob>();
    let (entered, entering) = mpsc::sync_channel(1);
    let thread = std::thread::Builder::new()
        .name(format!("syncra-cg-{stem}"))
        .spawn(move || {
            let _enter = handle.as_ref().map(|h| h.enter());
            crate::spawn::block_all_signals();
            // `0` in v1's `tasks`: this thread alone.
            let r = std::fs::write(&tasks, "0")
                .map_err(|e| format!("moving a thread into {}: {e}", tasks.display()));
            let ok = r.is_ok();
            let _ = entered.send(r);
            if ok {
                while let Ok(job) = rx.recv() {
                    job();
                }
            }
        })
        .map_err(|e| format!("starting the node's cgroup thread: {e}"))?;
    entering
        .recv()
        .map_err(|_| "the node's cgroup thread died".to_owned())??;
    Ok(Helper {
        tx: Some(tx),
        thread: Some(thread),
    })
}

/// This runtime's base cgroup, made on first use (and again after the last node let go).
/// And whether it is cgroup v1.
fn base() -> Result<(Arc<Base>, bool), String> {
    static BASE: Mutex<Weak<Base>> = Mutex::new(Weak::new());
    let mut held = BASE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(base) = held.upgrade() {
        let v1 = base.1;
        return Ok((base, v1));
    }
    let (own, v1) = own_pids_cgroup()?;
    sweep(&own);
    let dir = own.join(format!("syncra-{}", std::process::id()));
    match std::fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("creating {}: {e}", dir.display())),
    }
    let base = Arc::new(Base(dir, v1));
    *held = Arc::downgrade(&base);
    Ok((base, v1))
}

/// The directory of this process's own cgroup in the hierarchy that has the pids controller,
/// and whether that is cgroup v1.
fn own_pids_cgroup() -> Result<(PathBuf, bool), String> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("reading /proc/self/mountinfo: {e}"))?;
    let cgroups = std::fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| format!("reading /proc/self/cgroup: {e}"))?;
    // v1: a `cgroup` mount whose super options name `pids`, and our line listing `pids`.
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mut right = right.split_whitespace();
        let (Some(fstype), _, Some(options)) = (right.next(), right.next(), right.next()) else {
            continue;
        };
        let mut left = left.split_whitespace().skip(3);
        let (Some(root), Some(mount_point)) = (left.next(), left.next()) else {
            continue;
        };
        if fstype == "cgroup" && options.split(',').any(|o| o == "pids") {
            let own = cgroups
                .lines()
                .filter_map(|l| l.splitn(3, ':').collect::<Vec<_>>().try_into().ok())
                .find(|[_, controllers, _]: &[&str; 3]| controllers.split(',').any(|c| c == "pids"))
                .map(|[_, _, path]| path)
                .ok_or("/proc/self/cgroup names no pids cgroup")?;
            return Ok((under_mount(mount_point, root, own), true));
        }
    }
    // v2: the unified hierarchy, if our cgroup may hand the controller to its children.
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if right.split_whitespace().next() != Some("cgroup2") {
            continue;
        }
        let mut left = left.split_whitespace().skip(3);
        let (Some(root), Some(mount_point)) = (left.next(), left.next()) else {
            continue;
        };
        let own = cgroups
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .ok_or("/proc/self/cgroup names no unified cgroup")?;
        let dir = under_mount(mount_point, root, own);
        let controllers =
            std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
        if !controllers.split_whitespace().any(|c| c == "pids") {
            return Err(format!(
                "the pids controller is not available in {}",
                dir.display()
            ));
        }
        std::fs::write(dir.join("cgroup.subtree_control"), "+pids").map_err(|e| {
            format!(
                "enabling the pids controller below {} (a cgroup with processes of its own cannot, \
                 in cgroup v2; run the runtime in a cgroup of its own, e.g. systemd-run --scope): {e}",
                dir.display()
            )
        })?;
        return Ok((dir, false));
    }
    Err("this machine has no pids cgroup controller mounted".to_owned())
}

/// Where the cgroup `own` (as /proc/self/cgroup names it) is, in a hierarchy whose `root`
/// is mounted at `mount_point` (a container's mount may start below the hierarchy's root).
fn under_mount(mount_point: &str, root: &str, own: &str) -> PathBuf {
    let relative = own
        .strip_prefix(root)
        .filter(|_| root != "/")
        .unwrap_or(own);
    Path::new(mount_point).join(relative.trim_start_matches('/'))
}

/// Remove the cgroups of runtimes that died without removing theirs (empty ones only).
fn sweep(own: &Path) {
    let Ok(entries) = std::fs::read_dir(own) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("syncra-"))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let dir = entry.path();
        if let Ok(nodes) = std::fs::read_dir(&dir) {
            for node in nodes.flatten() {
                if node.file_type().is_ok_and(|t| t.is_dir()) {
                    let _ = std::fs::remove_dir(node.path());
                }
            }
        }
        let _ = std::fs::remove_dir(&dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(
        clippy::disallowed_methods,
        reason = "a plain child to see which cgroup a process is born in"
    )]
    fn a_nodes_cgroup_counts_what_its_thread_clones_and_goes_when_dropped() {
        let cg = match for_node("unit-test", 8) {
            Ok(cg) => cg,
            // An ordinary user may make cgroups only where one is delegated to them.
            Err(_) if !rustix::process::geteuid().is_root() => return,
            Err(e) => panic!("no pids cgroup as root: {e}"),
        };
        let dir = cg.dir.clone();
        let base = dir.parent().unwrap().file_name().unwrap().to_owned();
        assert_eq!(base, *format!("syncra-{}", std::process::id()));
        // Asked again (a profile that changed): the same cgroup and thread, the new limit.
        let again = for_node("unit-test", 16).unwrap();
        assert!(Arc::ptr_eq(&cg, &again));
        assert_eq!(
            std::fs::read_to_string(dir.join("pids.max"))
                .unwrap()
                .trim(),
            "17"
        );
        drop(again);
        let procs = || std::fs::read_to_string(dir.join("cgroup.procs")).unwrap();
        // What runs there forks into the cgroup; what runs here does not.
        let me = std::process::id().to_string();
        let child = cg
            .run(|| {
                std::process::Command::new("sleep")
                    .arg("5")
                    .spawn()
                    .unwrap()
            })
            .expect("the cgroup's thread");
        let mut child = child;
        let listed = procs();
        assert!(
            listed.lines().any(|l| l == child.id().to_string()),
            "{listed}"
        );
        let outside = std::process::Command::new("true").spawn().unwrap();
        assert!(!procs().lines().any(|l| l == outside.id().to_string()));
        let _ = child.kill();
        let _ = child.wait();
        let _ = { outside }.wait();
        assert!(procs().lines().all(|l| l == me), "{}", procs());
        drop(cg);
        assert!(!dir.exists(), "{} left behind", dir.display());
    }

    #[test]
    fn a_containers_mount_root_is_taken_off_its_cgroup_path() {
        assert_eq!(
            under_mount("/sys/fs/cgroup/pids", "/", "/user.slice"),
            Path::new("/sys/fs/cgroup/pids/user.slice")
        );
        assert_eq!(
            under_mount("/sys/fs/cgroup/pids", "/docker/ab", "/docker/ab/x"),
            Path::new("/sys/fs/cgroup/pids/x")
        );
        assert_eq!(
            under_mount("/sys/fs/cgroup", "/", "/"),
            Path::new("/sys/fs/cgroup")
        );
    }

    #[test]
    fn a_dead_runtimes_cgroups_are_swept() {
        let own = std::env::temp_dir().join(format!("syncra-sweep-{}", std::process::id()));
        let dead = own.join("syncra-999999999");
        std::fs::create_dir_all(dead.join("world-main")).unwrap();
        let alive = own.join(format!("syncra-{}", std::process::id()));
        std::fs::create_dir_all(alive.join("renderer")).unwrap();
        let other = own.join("user.slice");
        std::fs::create_dir_all(&other).unwrap();
        sweep(&own);
        assert!(!dead.exists());
        assert!(alive.join("renderer").exists());
        assert!(other.exists());
        std::fs::remove_dir_all(&own).unwrap();
    }
}
