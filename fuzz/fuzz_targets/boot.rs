//! A boot frame is the first thing a node reads, from the runtime — or from whoever holds
//! the other end of fd 3. Any bytes: an error, never a panic or a huge allocation.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = syncra_protocol::boot::Boot::read_from(&mut std::io::Cursor::new(data), 3);
});
