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
    /// Other users can write into the directory: one could replace the control socket or
    /// the lock.
    #[error(
        "run dir {} is writable by other users (mode {mode:04o}): another user could replace the control socket in it. Syncra never changes the mode of a directory it did not create; use a private directory (created if missing, mode 0700), e.g. --run-dir {}, or leave --run-dir out for the default",
        dir.display(),
        suggestion.display()
    )]
    Shared {
        /// The directory.
        dir: PathBuf,
        /// Its mode bits.
        mode: u32,
        /// A private directory to use instead.
        suggestion: PathBuf,
    },
    /// The path exists and is not a directory.
    #[error("run dir {} exists and is not a directory", dir.display())]
    NotADirectory {
        /// The path.
        dir: PathBuf,
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
    /// Private files written into it (the dashboard's token), removed with the socket.
    secrets: std::sync::Mutex<Vec<PathBuf>>,
}

impl RunDir {
    /// Lock `path`, creating it (mode 0700) if it does not exist. An existing directory is
    /// used as it is, never chmod-ed: it must belong to this user and be writable by nobody
    /// else.
    pub(crate) fn acquire(path: &Path) -> Result<RunDir, RunDirError> {
        let io = |what, source| RunDirError::Io {
            dir: path.to_owned(),
            what,
            source,
        };
        if path.as_os_str().is_empty() {
            return Err(io(
                "checking it",
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "the path is empty"),
            ));
        }
        match std::fs::symlink_metadata(path) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(path)
                .map_err(|e| io("creating it", e))?,
            Err(e) => return Err(io("reading its metadata", e)),
        }
        // Followed through a symlink: what matters is the directory the socket lands in.
        let meta = std::fs::metadata(path).map_err(|e| io("reading its metadata", e))?;
        if !meta.is_dir() {
            return Err(RunDirError::NotADirectory {
                dir: path.to_owned(),
            });
        }
        let us = rustix::process::getuid().as_raw();
        if meta.uid() != us {
            return Err(RunDirError::NotOurs {
                dir: path.to_owned(),
                owner: meta.uid(),
                us,
            });
        }
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o022 != 0 {
            return Err(RunDirError::Shared {
                dir: path.to_owned(),
                mode,
                suggestion: syncra_config::default_run_dir(),
            });
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
            secrets: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// Write `contents` into a new file `name` of the directory, readable by this user only
    /// (mode 0600 from its creation on; whatever was there is replaced, never written
    /// through), removed when the directory is released.
    pub(crate) fn write_secret(&self, name: &str, contents: &str) -> std::io::Result<PathBuf> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.path.join(name);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)?;
        // The umask cannot widen 0600, but say it outright.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        file.write_all(contents.as_bytes())?;
        self.secrets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(path.clone());
        Ok(path)
    }

    /// The directory.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The control socket's path.
    pub(crate) fn socket(&self) -> PathBuf {
        self.path.join(SOCKET_NAME)
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.socket());
        for secret in self
            .secrets
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            let _ = std::fs::remove_file(secret);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_others_can_write_into_is_refused_and_keeps_its_mode() {
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let err = RunDir::acquire(&shared).unwrap_err();
        assert!(
            matches!(err, RunDirError::Shared { mode: 0o1777, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("writable by other users"), "{err}");
        assert_eq!(
            std::fs::metadata(&shared).unwrap().permissions().mode() & 0o7777,
            0o1777
        );
        assert!(!shared.join(LOCK_NAME).exists());
    }

    #[test]
    fn an_existing_private_enough_directory_is_used_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let mine = dir.path().join("mine");
        std::fs::create_dir(&mine).unwrap();
        std::fs::set_permissions(&mine, std::fs::Permissions::from_mode(0o755)).unwrap();
        let held = RunDir::acquire(&mine).unwrap();
        assert_eq!(
            std::fs::metadata(&mine).unwrap().permissions().mode() & 0o7777,
            0o755
        );
        drop(held);
        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        assert!(matches!(
            RunDir::acquire(&file),
            Err(RunDirError::NotADirectory { .. })
        ));
        assert!(RunDir::acquire(Path::new("")).is_err());
    }

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
