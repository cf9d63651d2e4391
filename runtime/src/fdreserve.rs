//! A few file descriptors held in reserve, for the work that must go on when the process
//! has run out of them: answering `syncra status` and writing crash records.
//!
//! The reserve is a handful of `/dev/null` fds opened when the runtime starts, so they hold
//! low numbers. When an operation fails with EMFILE (this process's limit) or ENFILE (the
//! system's), [`FdReserve::relieve`] closes one of them and tries again: the operation takes
//! the freed number, which lies under any limit the process started with. [`FdReserve::refill`]
//! opens them again once the pressure is gone.

use std::os::fd::OwnedFd;
use std::sync::Mutex;

/// Fds held in reserve.
pub(crate) const RESERVE: usize = 8;

/// The reserve.
#[derive(Debug)]
pub(crate) struct FdReserve {
    held: Mutex<Vec<OwnedFd>>,
}

/// Whether `e` says the process or the system is out of file descriptors.
pub(crate) fn is_fd_shortage(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

fn open_one() -> std::io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        "/dev/null",
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?)
}

impl FdReserve {
    /// Open the reserve (as many fds as the process can spare, up to [`RESERVE`]).
    pub(crate) fn new() -> FdReserve {
        let reserve = FdReserve {
            held: Mutex::new(Vec::with_capacity(RESERVE)),
        };
        reserve.refill();
        reserve
    }

    /// Fds in reserve now.
    pub(crate) fn held(&self) -> usize {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Close one reserved fd, so that the next fd this process opens can succeed; false if
    /// the reserve is empty.
    pub(crate) fn release_one(&self) -> bool {
        let released = self
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
            .is_some();
        if released {
            tracing::warn!(
                left = self.held(),
                "out of file descriptors: used one from the reserve"
            );
        }
        released
    }

    /// Run `op`; each time it fails for lack of fds, release one reserved fd and try again.
    pub(crate) fn relieve<T>(
        &self,
        mut op: impl FnMut() -> std::io::Result<T>,
    ) -> std::io::Result<T> {
        loop {
            match op() {
                Err(e) if is_fd_shortage(&e) && self.release_one() => continue,
                other => return other,
            }
        }
    }

    /// Open reserved fds again up to [`RESERVE`], as far as the process can.
    pub(crate) fn refill(&self) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        while held.len() < RESERVE {
            match open_one() {
                Ok(fd) => held.push(fd),
                Err(_) => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relieve_retries_an_operation_that_ran_out_of_fds() {
        let reserve = FdReserve::new();
        assert_eq!(reserve.held(), RESERVE);
        let mut failures = 2;
        let got = reserve.relieve(|| {
            if failures > 0 {
                failures -= 1;
                Err(std::io::Error::from_raw_os_error(libc::EMFILE))
            } else {
                Ok(7)
            }
        });
        assert_eq!(got.unwrap(), 7);
        assert_eq!(reserve.held(), RESERVE - 2);
        reserve.refill();
        assert_eq!(reserve.held(), RESERVE);
    }

    #[test]
    fn other_errors_are_not_retried_and_an_empty_reserve_gives_up() {
        let reserve = FdReserve::new();
        let mut calls = 0;
        let err = reserve
            .relieve(|| -> std::io::Result<()> {
                calls += 1;
                Err(std::io::Error::from_raw_os_error(libc::ENOSPC))
            })
            .unwrap_err();
        assert_eq!((err.raw_os_error(), calls), (Some(libc::ENOSPC), 1));
        let mut calls = 0;
        let err = reserve
            .relieve(|| -> std::io::Result<()> {
                calls += 1;
                Err(std::io::Error::from_raw_os_error(libc::EMFILE))
            })
            .unwrap_err();
        assert_eq!(
            (err.raw_os_error(), calls),
            (Some(libc::EMFILE), RESERVE + 1)
        );
        assert_eq!(reserve.held(), 0);
    }
}
