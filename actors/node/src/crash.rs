//! The crash handler: a native crash — a signal no Rust panic covers (SIGSEGV in a C library
//! or a GPU driver, SIGABRT, SIGBUS, SIGILL, SIGFPE, SIGTRAP) — is dumped out of process. The
//! handler sends the crashing thread's context over the crash socket the node inherited
//! ([`syncra_protocol::boot::CRASH_FD`]) and waits while the runtime (or the agent of its host)
//! writes the minidump by ptrace; then the process dies by its signal as it would have. Nothing
//! in the handler allocates or takes a lock of the crashed program, and the node needs no
//! right to write anywhere: a corrupt heap or a strict sandbox still gets its dump.

use std::os::fd::{BorrowedFd, RawFd};

use crash_handler::{CrashContext, CrashEvent, CrashEventResult, CrashHandler};
use syncra_protocol::boot::Boot;

/// How long a crashed process waits for its dump to be written, milliseconds. The runtime
/// answers once it is written, or at once when it will not write one; a runtime that is gone
/// closes its end, which ends the wait too.
const DUMP_WAIT_MS: i32 = 30_000;

/// Sends the crash context and waits for the answer.
struct ToRuntime {
    fd: RawFd,
}

// SAFETY: `on_crash` only makes async-signal-safe system calls (send, poll) on an fd this
// process keeps open for this purpose; it neither allocates nor locks.
unsafe impl CrashEvent for ToRuntime {
    fn on_crash(&self, context: &CrashContext) -> CrashEventResult {
        let bytes = context.as_bytes();
        // SAFETY: `bytes` is valid for its length; `pollfd` is a plain struct on the stack.
        unsafe {
            let sent = libc::send(
                self.fd,
                bytes.as_ptr().cast(),
                bytes.len(),
                libc::MSG_NOSIGNAL,
            );
            if sent == bytes.len() as isize {
                let mut answer = libc::pollfd {
                    fd: self.fd,
                    events: libc::POLLIN,
                    revents: 0,
                };
                libc::poll(&mut answer, 1, DUMP_WAIT_MS);
            }
        }
        // Not handled: the previous disposition takes the signal, and the process ends by it.
        CrashEventResult::Handled(false)
    }
}

/// Install the crash handler when the runtime passed a crash socket.
pub(crate) fn install(boot: &Boot) {
    let Some(fd) = boot.crash_fd else {
        return;
    };
    // SAFETY: the crash fd is inherited for this purpose and stays open for the process's life.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    // Not for what this node execs.
    if rustix::io::fcntl_setfd(borrowed, rustix::io::FdFlags::CLOEXEC).is_err() {
        tracing::warn!(fd, "no crash dumps: the crash socket is not open");
        return;
    }
    match CrashHandler::attach(Box::new(ToRuntime { fd })) {
        Ok(handler) => {
            // Only the process that spawned this one (the runtime, or its host's agent) may
            // ptrace it while it waits, where Yama asks.
            handler.set_ptracer(Some(std::os::unix::process::parent_id()));
            // Installed for the life of the process.
            std::mem::forget(handler);
        }
        Err(e) => tracing::warn!(error = %e, "no crash dumps: the crash handler"),
    }
}
