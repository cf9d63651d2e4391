//! What nodes send the runtime (its gateway, its broker) and what the runtime sends nodes:
//! every message type decoded from the same bytes.
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
});
