//! A test node whose main loop gets stuck on SIGUSR1: the process stays alive but stops
//! heartbeating, as a deadlocked game loop would.

use std::time::{Duration, Instant};

use syncra_integration_tests::signals;
use syncra_node::Node;

fn main() {
    let hang = signals::flag(libc::SIGUSR1);
    let node = Node::join().unwrap_or_else(|e| e.exit());
    node.ready();
    loop {
        if hang.load(std::sync::atomic::Ordering::SeqCst) {
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        node.heartbeat(None);
        if node.sleep_until(Instant::now() + Duration::from_millis(5)) {
            return;
        }
    }
}
