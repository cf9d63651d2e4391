//! A test node that runs normally until told otherwise: SIGUSR1 makes it panic (a crash with
//! a panic message for the crash record), SIGUSR2 makes it leave cleanly with code 0.

use std::time::{Duration, Instant};

use syncra_integration_tests::signals;
use syncra_node::Node;
use syncra_protocol::status::NodeMetrics;

fn main() {
    let crash = signals::flag(libc::SIGUSR1);
    let finish = signals::flag(libc::SIGUSR2);
    let node = Node::join().unwrap_or_else(|e| e.exit());
    node.ready();
    let mut tick = 0;
    loop {
        if crash.load(std::sync::atomic::Ordering::SeqCst) {
            panic!("crash requested by the test (SIGUSR1)");
        }
        if finish.load(std::sync::atomic::Ordering::SeqCst) {
            node.leave(0, "finished (SIGUSR2)");
            return;
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
