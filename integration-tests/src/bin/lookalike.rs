//! A node whose message types are its own, not shared with any other crate: `Ping` and
//! `Pong` of the same tags and shapes as `syncra-test-peer`'s, and a `Ping` of another version.
//! It calls `to=NAME` (an echo) with each and reports what came back as JSON lines in `out=PATH`:
//! `{"same_tag": n}` or `{"same_tag_error": ..}`, then `{"other_tag_error": ..}`.

use std::io::Write;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use syncra_node::Node;

/// Not the peer's `Ping`: another type in another crate, under the same tag.
#[derive(Debug, Serialize, Deserialize)]
struct MyPing(u64);

/// The answer, again a type of this crate only.
#[derive(Debug, Serialize, Deserialize)]
struct MyPong {
    n: u64,
    incarnation: u64,
}

/// A ping of a later version the echo does not know.
#[derive(Debug, Serialize, Deserialize)]
struct PingV2(u64);

syncra_node::message!(MyPong = "syncra.test.pong/1");
syncra_node::message!(MyPing = "syncra.test.ping/1" => MyPong);
syncra_node::message!(PingV2 = "syncra.test.ping/2" => MyPong);

fn main() {
    let opts: std::collections::HashMap<String, String> = std::env::args()
        .skip(1)
        .filter_map(|a| a.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect();
    let node = Node::join().unwrap_or_else(|e| e.exit());
    let mut out = std::fs::File::create(&opts["out"]).expect("the out file");
    let mut line = |v: serde_json::Value| {
        let _ = writeln!(out, "{v}");
    };
    node.ready();
    let to = &opts["to"];
    let patience = Duration::from_secs(10);
    match node.call(to, MyPing(41), patience) {
        Ok(MyPong { n, .. }) => line(serde_json::json!({ "same_tag": n })),
        Err(e) => line(serde_json::json!({ "same_tag_error": e.to_string() })),
    }
    match node.call(to, PingV2(42), patience) {
        Ok(p) => line(serde_json::json!({ "other_tag": p.n })),
        Err(e) => line(serde_json::json!({ "other_tag_error": e.to_string() })),
    }
    while !node.shutdown_requested() {
        node.heartbeat(None);
        if node.sleep_until(std::time::Instant::now() + Duration::from_millis(50)) {
            break;
        }
    }
}
