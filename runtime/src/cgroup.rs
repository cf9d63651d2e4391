//! A pids cgroup per node, for a root runtime: root is exempt from `RLIMIT_NPROC`, so the
//! kernel's pids controller is what bounds how many tasks (processes and threads) a node of a
//! root runtime may have.
//!
//! Each runtime makes `syncra-<pid>` in its own cgroup of the pids hierarchy (v1, or v2 where
//! its cgroup may delegate the controller), and one cgroup per node inside it with its
//! `pids.max`. The parent opens the node's `cgroup.procs`; the child writes `0` to it between
//! clone and exec, so it is counted before it can fork. A node's cgroup is kept for its next
//! incarnation and removed when the runtime lets go of it; cgroups of runtimes that died
//! without removing theirs are swept at the next start.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

/// A node's pids cgroup, with its `cgroup.procs` open for the child to enter.
#[derive(Debug)]
pub(crate) struct NodeCgroup {
    dir: PathBuf,
    /// `cgroup.procs`, write-only, close-on-exec.
    pub(crate) procs: OwnedFd,
    _base: Arc<Base>,
}

impl Drop for NodeCgroup {
    fn drop(&mut self) {
        // Fails (EBUSY) while a process is still in it; a later start sweeps it then.
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// This runtime's `syncra-<pid>` cgroup, removed when its last node's goes.
#[derive(Debug)]
struct Base(PathBuf);

impl Drop for Base {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// A pids cgroup for the node whose private name is `stem`, with at most `max` tasks.
pub(crate) fn for_node(stem: &str, max: u64) -> Result<NodeCgroup, String> {
    let base = base()?;
    let dir = base.0.join(stem);
    match std::fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("creating {}: {e}", dir.display())),
    }
    let max_path = dir.join("pids.max");
    std::fs::write(&max_path, max.to_string())
        .map_err(|e| format!("writing {}: {e}", max_path.display()))?;
    let procs_path = dir.join("cgroup.procs");
    let procs = rustix::fs::open(
        &procs_path,
        rustix::fs::OFlags::WRONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| format!("opening {}: {e}", procs_path.display()))?;
    Ok(NodeCgroup {
        dir,
        procs,
        _base: base,
    })
}

/// This runtime's base cgroup, made on first use (and again after the last node let go).
fn base() -> Result<Arc<Base>, String> {
    static BASE: Mutex<Weak<Base>> = Mutex::new(Weak::new());
    let mut held = BASE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(base) = held.upgrade() {
        return Ok(base);
    }
    let own = own_pids_cgroup()?;
    sweep(&own);
    let dir = own.join(format!("syncra-{}", std::process::id()));
    match std::fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("creating {}: {e}", dir.display())),
    }
    let base = Arc::new(Base(dir));
    *held = Arc::downgrade(&base);
    Ok(base)
}

/// The directory of this process's own cgroup in the hierarchy that has the pids controller.
fn own_pids_cgroup() -> Result<PathBuf, String> {
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
                .find(|[_, controllers, _]: &[&str; 3]| {
                    controllers.split(',').any(|c| c == "pids")
                })
                .map(|[_, _, path]| path)
                .ok_or("/proc/self/cgroup names no pids cgroup")?;
            return Ok(under_mount(mount_point, root, own));
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
        return Ok(dir);
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
    fn a_nodes_cgroup_bounds_its_tasks_and_goes_with_the_runtimes_hold() {
        if !rustix::process::geteuid().is_root() {
            // Only root may make cgroups here; an ordinary user's nodes get RLIMIT_NPROC.
            assert!(for_node("unit-test", 8).is_err());
            return;
        }
        let cg = for_node("unit-test", 8).expect("a pids cgroup as root");
        let dir = cg.dir.clone();
        assert_eq!(
            std::fs::read_to_string(dir.join("pids.max")).unwrap().trim(),
            "8"
        );
        let base = dir.parent().unwrap().file_name().unwrap().to_owned();
        assert_eq!(base, *format!("syncra-{}", std::process::id()));
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
