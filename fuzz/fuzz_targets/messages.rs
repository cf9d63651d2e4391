//! What nodes send the runtime (its gateway, its broker), what the runtime sends nodes, what
//! nodes send each other on a direct link, and what a runtime and an agent on another host
//! send each other: every message type decoded from the same bytes, and the bytes cut into
//! link packets.
#![no_main]
use libfuzzer_sys::fuzz_target;
use syncra_protocol::{broker, node, wire};

fuzz_target!(|data: &[u8]| {
    let _ = wire::decode::<node::Envelope>("node message", data);
    let _ = wire::decode::<node::RuntimeToNode>("runtime message", data);
    let _ = wire::decode::<broker::NodeToBroker>("broker request", data);
    let _ = wire::decode::<broker::BrokerToNode>("broker answer", data);
    let _ = wire::decode::<syncra_protocol::crash::PanicReport>("panic report", data);
    let _ = wire::decode::<syncra_protocol::status::NodeMetrics>("metrics", data);
    let _ = wire::decode::<syncra_protocol::direct::LinkFrame>("link frame", data);
    let _ = wire::decode::<syncra_protocol::agent::AgentToRuntime>("agent message", data);
    let _ = wire::decode::<syncra_protocol::agent::RuntimeToAgent>("runtime message", data);
    let _ = wire::decode::<syncra_protocol::agent::BridgeFrame>("bridge frame", data);
    let _ = wire::decode::<syncra_protocol::agent::Opening>("link opening", data);
    // As a run of link packets: the first byte of each piece is its length.
    let mut asm = syncra_protocol::direct::Assembler::default();
    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        let n = (len as usize).min(tail.len());
        let _ = asm.push(&tail[..n]);
        rest = &tail[n..];
    }
});
