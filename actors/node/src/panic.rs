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
            backtrace: from_the_panic(&Backtrace::force_capture().to_string()),
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

/// Frames of the machinery between a panic and this hook (capturing, the hook, the panic
/// runtime, the standard library's unwrap/expect failures).
const MACHINERY: &[&str] = &[
    "std::backtrace",
    "std::panicking::",
    "core::panicking::",
    "std::sys::backtrace::",
    "rust_begin_unwind",
    "syncra_node::panic::",
    "core::ops::function::Fn",
    "core::result::unwrap_failed",
    "core::option::unwrap_failed",
    "core::option::expect_failed",
];

/// `backtrace` from the frame that panicked on: the frames above it, from the capture down
/// to the panic's entry (`rust_begin_unwind`, `panic_fmt`) and the standard library frames
/// right under it, are dropped; the rest keep their numbers. A backtrace without such an
/// entry in its first 40 frames is left whole.
fn from_the_panic(backtrace: &str) -> String {
    let lines: Vec<&str> = backtrace.lines().collect();
    let is_frame = |l: &str| {
        l.trim_start()
            .split_once(": ")
            .is_some_and(|(n, _)| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
    };
    let frames: Vec<usize> = (0..lines.len()).filter(|&i| is_frame(lines[i])).collect();
    let (mut entry_seen, mut last) = (false, None);
    for (k, &i) in frames.iter().enumerate().take(40) {
        if MACHINERY.iter().any(|m| lines[i].contains(m)) {
            last = Some(k);
            entry_seen |= lines[i].contains("rust_begin_unwind") || lines[i].contains("panic_fmt");
        } else if entry_seen {
            break;
        }
    }
    match last.filter(|_| entry_seen).and_then(|k| frames.get(k + 1)) {
        Some(&start) => lines[start..].join("\n"),
        None => backtrace.to_owned(),
    }
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
    use super::{cut, from_the_panic};

    #[test]
    fn a_backtrace_starts_at_the_code_that_panicked() {
        let bt = "   0: std::backtrace::Backtrace::create\n             at /rustc/x/backtrace.rs:331:13\n   1: syncra_node::panic::install::{{closure}}\n   2: <alloc::boxed::Box<F,A> as core::ops::function::Fn<Args>>::call\n   3: std::panicking::rust_panic_with_hook\n   4: __rustc::rust_begin_unwind\n   5: core::panicking::panic_fmt\n   6: core::result::unwrap_failed\n   7: my_driver::render\n             at ./src/main.rs:10:5\n   8: std::panicking::catch_unwind\n   9: main";
        assert_eq!(
            from_the_panic(bt),
            "   7: my_driver::render\n             at ./src/main.rs:10:5\n   8: std::panicking::catch_unwind\n   9: main"
        );
        let plain = "   0: my_driver::render\n   1: main";
        assert_eq!(from_the_panic(plain), plain);
    }

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
