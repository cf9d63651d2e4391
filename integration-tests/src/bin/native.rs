//! A test node that crashes natively when it gets SIGUSR1, the way its first argument says:
//!
//! - `null`: dereferences a null pointer in C (SIGSEGV);
//! - `abort`: calls `abort()` from C (SIGABRT);
//! - `liar`: its "crash handler" sends a crash context naming a thread of another process
//!   (the runtime's), then exits with code 3;
//! - `garbage`: sends 5 bytes on its crash socket, then exits with code 3;
//! - `vanish`: sends a real crash context, then SIGKILLs itself before any dump can be written.

use std::time::{Duration, Instant};

use syncra_integration_tests::signals;
use syncra_node::Node;
use syncra_protocol::boot::CRASH_FD;
use syncra_protocol::status::NodeMetrics;

unsafe extern "C" {
    fn syncra_native_null_deref();
    fn syncra_native_abort();
}

fn main() {
    let mode = std::env::args().nth(1).unwrap_or_else(|| "null".into());
    let crash = signals::flag(libc::SIGUSR1);
    let node = Node::join().unwrap_or_else(|e| e.exit());
    node.ready();
    let mut tick = 0;
    loop {
        if crash.load(std::sync::atomic::Ordering::SeqCst) {
            match mode.as_str() {
                // SAFETY: crashing is what this node is for.
                "null" => unsafe { syncra_native_null_deref() },
                // SAFETY: as above.
                "abort" => unsafe { syncra_native_abort() },
                "liar" => {
                    // SAFETY: getppid cannot fail.
                    let runtime = unsafe { libc::getppid() };
                    send_context(runtime);
                    wait_answer();
                    std::process::exit(3);
                }
                "garbage" => {
                    send(b"hello");
                    wait_answer();
                    std::process::exit(3);
                }
                "vanish" => {
                    send_context(rustix::thread::gettid().as_raw_nonzero().get());
                    // SAFETY: ends this process.
                    unsafe { libc::raise(libc::SIGKILL) };
                }
                other => panic!("unknown mode {other}"),
            }
        }
        tick += 1;
        node.heartbeat(Some(&NodeMetrics {
            tick,
            ..NodeMetrics::default()
        }));
        if node.sleep_until(Instant::now() + Duration::from_millis(5)) {
            return;
        }
    }
}

/// A crash context naming thread `tid`, as a crash handler would send it.
fn send_context(tid: i32) {
    // SAFETY: a crash context is plain data; all zeroes is a valid (if empty) one.
    let mut context: crash_context::CrashContext = unsafe { std::mem::zeroed() };
    context.pid = std::process::id() as i32;
    context.tid = tid;
    send(context.as_bytes());
}

fn send(bytes: &[u8]) {
    // SAFETY: the crash socket is inherited on CRASH_FD; `bytes` is valid for its length.
    let sent = unsafe { libc::send(CRASH_FD, bytes.as_ptr().cast(), bytes.len(), 0) };
    assert_eq!(sent, bytes.len() as isize, "sending on the crash socket");
}

fn wait_answer() {
    let mut answer = libc::pollfd {
        fd: CRASH_FD,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: a plain struct on the stack.
    unsafe { libc::poll(&mut answer, 1, Duration::from_secs(30).as_millis() as i32) };
}
