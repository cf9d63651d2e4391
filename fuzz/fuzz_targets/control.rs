//! The control socket's frames (length prefix, then a request) from any local process of the
//! runtime's user, and the replies a client decodes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use syncra_protocol::{control, wire};

fuzz_target!(|data: &[u8]| {
    if data.len() >= 4 {
        let len = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
        if let Ok(n) = wire::check_len("control", len, wire::MAX_CONTROL_FRAME) {
            let body = &data[4..];
            let _ = wire::decode::<control::ControlRequest>(
                "control request",
                &body[..n.min(body.len())],
            );
        }
    }
    let _ = wire::decode::<control::ControlRequest>("control request", data);
    let _ = wire::decode::<control::ControlReply>("control reply", data);
});
