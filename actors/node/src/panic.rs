//! The panic hook: a panic on any thread leaves its report for the crash record and ends the
//! process at once, so the runtime restarts a whole node instead of keeping a half-dead one.

use std::backtrace::Backtrace;
use std::os::fd::BorrowedFd;

use syncra_protocol::boot::Boot;
use syncra_protocol::crash::PanicReport;
use syncra_protocol::wire;

/// Exit code of a node that panicked (Rust's own convention).
pub(crate) const PANIC_EXIT_CODE: i32 = 101;

pub(crate) fn install(boot: &Boot) {
    let fd = boot.panic_fd;
    if let Some(fd) = fd {
        // SAFETY: the panic fd is inherited for this purpose and stays open for the life of
        // the process; it is only borrowed to set CLOEXEC so our own children don't inherit it.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        let _ = rustix::io::fcntl_setfd(borrowed, rustix::io::FdFlags::CLOEXEC);
    }
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let report = PanicReport {
            message: info.payload_as_str().unwrap_or("(a panic payload that is not a string)").to_owned(),
            location: info.location().map(|l| l.to_string()),
            thread: std::thread::current().name().map(str::to_owned),
            backtrace: Backtrace::force_capture().to_string(),
        };
        if let Some(fd) = fd {
            let framed = wire::frame(&wire::encode(&report));
            // SAFETY: as above; the fd outlives the process's use of it.
            let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
            let _ = rustix::io::pwrite(borrowed, &framed, 0);
        }
        previous(info);
        // SAFETY: `_exit` ends the process without unwinding or running atexit handlers, which
        // could deadlock while other threads hold locks; nothing here needs them.
        unsafe { libc::_exit(PANIC_EXIT_CODE) }
    }));
}
