//! The panic hook: a panic on any thread leaves its report for the crash record and ends the
//! process at once, so the runtime restarts a whole node instead of keeping a half-dead one.

use std::backtrace::Backtrace;
use std::os::fd::BorrowedFd;

use syncra_protocol::boot::Boot;
use syncra_protocol::crash::PanicReport;
use syncra_protocol::page::{PANIC_MAX, PANIC_OFFSET};
use syncra_protocol::wire;

/// Exit code of a node that panicked (Rust's own convention).
pub(crate) const PANIC_EXIT_CODE: i32 = 101;

pub(crate) fn install(boot: &Boot) {
    let fd = boot.page_fd;
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let report = PanicReport {
            message: info
                .payload_as_str()
                .unwrap_or("(a panic payload that is not a string)")
                .to_owned(),
            location: info.location().map(|l| l.to_string()),
            thread: std::thread::current().name().map(str::to_owned),
            backtrace: Backtrace::force_capture().to_string(),
        };
        if let Some(fd) = fd {
            let mut report = report.clone();
            let mut framed = wire::frame(&wire::encode(&report));
            if framed.len() > PANIC_MAX {
                // Cut to fit the page: the backtrace first, then the message (at character
                // boundaries: a panic inside the panic hook would abort and lose everything).
                let excess = framed.len() - PANIC_MAX + 64;
                let keep = report.backtrace.len().saturating_sub(excess);
                cut(&mut report.backtrace, keep, "\n[backtrace cut to fit]");
                cut(&mut report.message, PANIC_MAX / 2, " [message cut to fit]");
                framed = wire::frame(&wire::encode(&report));
            }
            // SAFETY: the page fd is inherited for this purpose and stays open for the life of
            // the process (the node keeps it); it is only borrowed for this write.
            let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
            if framed.len() <= PANIC_MAX {
                let _ = rustix::io::pwrite(borrowed, &framed, PANIC_OFFSET as u64);
            }
        }
        previous(info);
        // SAFETY: `_exit` ends the process without unwinding or running atexit handlers, which
        // could deadlock while other threads hold locks; nothing here needs them.
        unsafe { libc::_exit(PANIC_EXIT_CODE) }
    }));
}

/// Cut `s` to at most `max` bytes, at a character boundary, marking the cut with `note`.
fn cut(s: &mut String, max: usize, note: &str) {
    if s.len() <= max {
        return;
    }
    let mut at = max;
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    s.truncate(at);
    s.push_str(note);
}

#[cfg(test)]
mod tests {
    use super::cut;

    #[test]
    fn cuts_respect_character_boundaries() {
        let mut s = "ééé".to_owned(); // 2 bytes each
        cut(&mut s, 3, "…");
        assert_eq!(s, "é…");
        let mut short = "ok".to_owned();
        cut(&mut short, 10, "…");
        assert_eq!(short, "ok");
    }
}
