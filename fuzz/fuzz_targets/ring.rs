//! A stream's ring as a hostile producer leaves it: every byte of the shared file past the
//! runtime's own fields (magic, version, geometry) is the fuzzer's — the cursors, the consumer
//! cells, every slot header (stamp, length, kind) and payload. Reading it (a consumer, a tap)
//! returns messages, gaps, torn reads or nothing; it never panics or spins.
#![no_main]
use std::os::fd::AsFd;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use syncra_protocol::ring::{self, Geometry, Policy, RingMap, RingReader};

/// magic, version, policy, slot_size, slot_count, block timeout, producer_live.
const FIXED: usize = 32;

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let geometry = Geometry {
        slot_size: 1 + u32::from(data[0]) % 256,
        slot_count: 1 + u32::from(data[1]) % 8,
        policy: match data[2] % 3 {
            0 => Policy::LatestOnly,
            1 => Policy::DropOldest,
            _ => Policy::Block,
        },
        block_timeout_ms: 1,
    };
    let resume = data[3] & 1 == 1;
    let Ok((_, fd)) = RingMap::create("syncra-fuzz-ring", geometry) else {
        return;
    };
    // The producer's view: write everything but the runtime's fields.
    let size = geometry.file_size();
    // SAFETY: a fresh shared mapping of the whole ring file, unmapped below.
    let Ok(ptr) = (unsafe {
        rustix::mm::mmap(
            std::ptr::null_mut(),
            size,
            rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
            rustix::mm::MapFlags::SHARED,
            &fd,
            0,
        )
    }) else {
        return;
    };
    let rest = &data[4..];
    let n = rest.len().min(size - FIXED);
    // SAFETY: FIXED + n <= size, inside the mapping; nothing else uses it meanwhile.
    unsafe {
        std::ptr::copy_nonoverlapping(rest.as_ptr(), ptr.cast::<u8>().add(FIXED), n);
        let _ = rustix::mm::munmap(ptr, size);
    }
    let Ok(map) = RingMap::map(fd.as_fd(), geometry) else {
        return;
    };
    let map = Arc::new(map);
    let _ = ring::peek_latest(&map, |bytes, kind| (bytes.len(), kind));
    let published = map
        .header()
        .published
        .load(std::sync::atomic::Ordering::Relaxed);
    let _ = ring::was_published(&map, published);
    let (Ok(bell), Ok(space)) = (ring::doorbell(), ring::doorbell()) else {
        return;
    };
    let Ok(mut reader) =
        RingReader::attach(map, usize::from(data[3] >> 1) % 4, bell, space, resume)
    else {
        return;
    };
    for _ in 0..4 {
        let _ = reader.try_read(|bytes, kind| {
            syncra_protocol::wire::decode::<syncra_protocol::status::NodeMetrics>("slot", bytes)
                .map(|_| kind)
        });
    }
});
