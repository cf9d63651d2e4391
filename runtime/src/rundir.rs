//! The run directory: private (mode 0700), holding the control socket and a lock that makes
//! one runtime its only user. Several runtimes run side by side with different run directories.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use syncra_protocol::control::SOCKET_NAME;

/// Name of the lock file inside the run directory.
const LOCK_NAME: &str = "runtime.lock";

/// Why the run directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RunDirError {
    /// Another runtime holds the lock.
    #[error(
        "another syncra runtime (pid {pid}) is running with run dir {}; stop it (`syncra shutdown`) or choose another with --run-dir or SYNCRA_RUN_DIR",
        dir.display()
    )]
    InUse {
        /// The directory.
        dir: PathBuf,
        /// The other runtime's pid, as it wrote it.
        pid: String,
    },
    /// The directory belongs to another user.
    #[error("run dir {} belongs to uid {owner}, not to this user (uid {us}); choose another with --run-dir", dir.display())]
    NotOurs {
        /// The directory.
        dir: PathBuf,
        /// Its owner.
        owner: u32,
        /// Our uid.
        us: u32,
    },
    /// Creating or locking failed.
    #[error("run dir {}: {what}: {source}", dir.display())]
    Io {
        /// The directory.
        dir: PathBuf,
        /// The step that failed.
        what: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// A run directory held by this runtime. Dropping it removes the socket and releases the lock.
#[derive(Debug)]
pub(crate) struct RunDir {
    path: PathBuf,
    _lock: File,
}

impl RunDir {
    /// Create (mode 0700) and lock `path`.
    pub(crate) fn acquire(path: &Path) -> Result<RunDir, RunDirError> {
        let io = |what, source| RunDirError::Io {
            dir: path.to_owned(),
            what,
            source,
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .map_err(|e| io("creating it", e))?;
        let meta = std::fs::metadata(path).map_err(|e| io("reading its metadata", e))?;
        let us = rustix::process::getuid().as_raw();
        if meta.uid() != us {
            return Err(RunDirError::NotOurs {
                dir: path.to_owned(),
                owner: meta.uid(),
                us,
            });
        }
        if meta.permissions().mode() & 0o077 != 0 {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| io("making it private (0700)", e))?;
        }
        let mut lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path.join(LOCK_NAME))
            .map_err(|e| io("opening its lock file", e))?;
        if rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
            let mut pid = String::new();
            let _ = lock.read_to_string(&mut pid);
            return Err(RunDirError::InUse {
                dir: path.to_owned(),
                pid: pid.trim().to_owned(),
            });
        }
        lock.set_len(0)
            .and_then(|()| lock.rewind())
            .and_then(|()| writeln!(lock, "{}", std::process::id()))
            .map_err(|e| io("writing its lock file", e))?;
        let socket = path.join(SOCKET_NAME);
        if socket.exists() {
            // A socket left by a runtime that died: the lock proves nobody serves it.
            std::fs::remove_file(&socket).map_err(|e| io("removing a stale control socket", e))?;
        }
        Ok(RunDir {
            path: path.to_owned(),
            _lock: lock,
        })
    }

    /// The control socket's path.
    pub(crate) fn socket(&self) -> PathBuf {
        self.path.join(SOCKET_NAME)
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.socket());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let held = RunDir::acquire(&run).unwrap();
        assert_eq!(
            std::fs::metadata(&run).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let err = RunDir::acquire(&run).unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        drop(held);
        // Released at once — though a child being spawned by another thread of this process
        // holds a copy of every fd until its exec closes them, so allow a moment.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while let Err(e) = RunDir::acquire(&run) {
            assert!(
                std::time::Instant::now() < deadline,
                "the lock was not released: {e}"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}
