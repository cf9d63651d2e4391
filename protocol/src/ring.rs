//! A stream's ring: shared memory (a sealed memfd) between one producer and its consumers,
//! created by the runtime's Broker and handed to both sides over SCM_RIGHTS.
//!
//! ```text
//! offset 0      RingHeader: geometry, the producer's sequence counters, one ConsumerCell per
//!               consumer (cursor, counters, waiting flag) — atomics only
//! offset 4096   slot 0: SlotHeader (stamp, length, publish time) | payload (slot_size bytes)
//!               slot 1 …                      (each slot 64-byte aligned)
//! ```
//!
//! Message `s` (sequences start at 1) lives in slot `s % slot_count`. Each slot is a seqlock:
//! its stamp is `2s + 1` while the producer writes message `s` and `2s` once it is published.
//! A consumer reads the payload in place and checks the stamp again afterwards; if it changed,
//! the read was torn and is discarded, never returned.
//!
//! The producer publishes without waiting for anyone under [`Policy::LatestOnly`] and
//! [`Policy::DropOldest`] (a consumer that falls a whole ring behind skips ahead and counts
//! the drops); under [`Policy::Block`] it waits, up to the stream's timeout, until every live
//! consumer has read the slot it is about to reuse.
//!
//! Doorbells are eventfds: one per consumer (the producer rings it after publishing, only if
//! that consumer is waiting), and one for the producer (a consumer rings it after reading,
//! only if the producer waits for space under `Block`).
//!
//! **Invariants:** every field either side reads from the header is an atomic integer, valid
//! for any bit pattern; lengths read from shared memory are clamped to the slot before use;
//! the runtime seals the file's size, so a misbehaving peer can corrupt data (which the
//! seqlock reports as torn or the decoder as malformed) but never crash another process.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// `RingHeader::magic` of an initialised ring ("SYNRING1").
pub const RING_MAGIC: u64 = 0x5359_4e52_494e_4731;
/// Bytes before the first slot.
pub const HEADER_SIZE: usize = 4096;
/// Bytes of a slot's header.
pub const SLOT_HEADER: usize = 32;
/// Most consumers of one stream.
pub const MAX_CONSUMERS: usize = 32;
/// Largest slot payload.
pub const MAX_SLOT_SIZE: usize = 256 << 20;
/// Most slots in a ring.
pub const MAX_SLOT_COUNT: usize = 4096;

/// What a producer does when a consumer has not read the slot it is about to reuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// Consumers only ever see the newest message; older ones are skipped (state, frames).
    LatestOnly,
    /// Consumers read every message in order; one that falls a whole ring behind loses the
    /// oldest ones (events, audio: never stall the producer).
    DropOldest,
    /// Consumers read every message in order; the producer waits for the slowest live one, up
    /// to the stream's timeout, then the write fails (lossless pipelines).
    Block,
}

impl Policy {
    fn code(self) -> u32 {
        match self {
            Policy::LatestOnly => 1,
            Policy::DropOldest => 2,
            Policy::Block => 3,
        }
    }

    fn from_code(code: u32) -> Option<Policy> {
        match code {
            1 => Some(Policy::LatestOnly),
            2 => Some(Policy::DropOldest),
            3 => Some(Policy::Block),
            _ => None,
        }
    }
}

impl std::fmt::Display for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Policy::LatestOnly => "latest-only",
            Policy::DropOldest => "drop-oldest",
            Policy::Block => "block",
        })
    }
}

/// A ring's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Geometry {
    /// Largest payload of one message, bytes.
    pub slot_size: u32,
    /// Messages the ring holds.
    pub slot_count: u32,
    /// What the producer does when the ring is full.
    pub policy: Policy,
    /// Under [`Policy::Block`]: how long a write may wait, milliseconds.
    pub block_timeout_ms: u32,
}

impl Geometry {
    /// Bytes from one slot to the next.
    pub fn stride(&self) -> usize {
        (SLOT_HEADER + self.slot_size as usize).next_multiple_of(64)
    }

    /// Size of the ring file.
    pub fn file_size(&self) -> usize {
        HEADER_SIZE + self.stride() * self.slot_count as usize
    }

    /// Check the shape against the hard limits; the message names the offending value.
    pub fn check(&self) -> Result<(), String> {
        if self.slot_size == 0 || self.slot_size as usize > MAX_SLOT_SIZE {
            return Err(format!(
                "slot_size {} is out of range (1 ..= {MAX_SLOT_SIZE} bytes)",
                self.slot_size
            ));
        }
        if self.slot_count < 2 || self.slot_count as usize > MAX_SLOT_COUNT {
            return Err(format!(
                "slot_count {} is out of range (2 ..= {MAX_SLOT_COUNT})",
                self.slot_count
            ));
        }
        if self.policy == Policy::Block && self.block_timeout_ms == 0 {
            return Err("a block policy needs a timeout above 0 ms".into());
        }
        Ok(())
    }
}

/// One consumer's cursor and counters, written by that consumer.
#[repr(C, align(64))]
#[derive(Debug)]
pub struct ConsumerCell {
    /// 1 while a live consumer holds the cell.
    pub active: AtomicU32,
    /// 1 while the consumer sleeps on its doorbell.
    pub waiting: AtomicU32,
    /// The next sequence it will read.
    pub next: AtomicU64,
    /// Messages it received.
    pub received: AtomicU64,
    /// Messages it lost (lapped under drop-oldest, superseded under latest-only, abandoned by a
    /// producer that died mid-write).
    pub dropped: AtomicU64,
    /// Reads discarded because the producer overwrote the slot meanwhile.
    pub torn: AtomicU64,
    /// Publish time of the last message it received (CLOCK_MONOTONIC ns).
    pub last_publish_ns: AtomicU64,
    /// When it received it (CLOCK_MONOTONIC ns).
    pub last_receive_ns: AtomicU64,
}

/// The ring's header.
#[repr(C)]
#[derive(Debug)]
pub struct RingHeader {
    /// [`RING_MAGIC`], set by the runtime.
    pub magic: AtomicU64,
    /// [`crate::PROTOCOL_VERSION`], set by the runtime.
    pub version: AtomicU32,
    /// Policy code.
    pub policy: AtomicU32,
    /// Payload bytes per slot.
    pub slot_size: AtomicU32,
    /// Slots.
    pub slot_count: AtomicU32,
    /// Block timeout, ms.
    pub block_timeout_ms: AtomicU32,
    /// 1 while a live producer holds the ring.
    pub producer_live: AtomicU32,
    /// The last sequence a producer started to write.
    pub claimed: AtomicU64,
    /// The last sequence published.
    pub published: AtomicU64,
    /// Incarnation of the producer that holds (or last held) the ring.
    pub producer_incarnation: AtomicU64,
    /// Producers that attached to the ring (1 + restarts).
    pub attachments: AtomicU64,
    /// Writes that had to wait for space.
    pub blocked: AtomicU64,
    /// Writes that gave up after the block timeout.
    pub timeouts: AtomicU64,
    /// 1 while the producer sleeps waiting for space.
    pub producer_waiting: AtomicU32,
    _pad: AtomicU32,
}

const CONSUMERS_OFFSET: usize = 256;
const _: () = assert!(std::mem::size_of::<RingHeader>() <= CONSUMERS_OFFSET);
const _: () =
    assert!(CONSUMERS_OFFSET + MAX_CONSUMERS * std::mem::size_of::<ConsumerCell>() <= HEADER_SIZE);

/// A slot's header; the payload follows it.
#[repr(C)]
#[derive(Debug)]
struct SlotHeader {
    stamp: AtomicU64,
    len: AtomicU32,
    kind: AtomicU32,
    publish_ns: AtomicU64,
    incarnation: AtomicU64,
}
const _: () = assert!(std::mem::size_of::<SlotHeader>() == SLOT_HEADER);

/// Why a ring could not be created or mapped.
#[derive(Debug, thiserror::Error)]
pub enum RingError {
    /// A system call failed.
    #[error("stream ring: {what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not the ring it claims to be.
    #[error("stream ring: {0}")]
    Invalid(String),
}

fn io(what: &'static str) -> impl FnOnce(rustix::io::Errno) -> RingError {
    move |e| RingError::Io {
        what,
        source: e.into(),
    }
}

/// Now on CLOCK_MONOTONIC, nanoseconds (comparable across processes on one machine).
pub fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// A mapping of a ring file.
#[derive(Debug)]
pub struct RingMap {
    ptr: NonNull<u8>,
    len: usize,
    geometry: Geometry,
}

// SAFETY: the mapping is shared memory accessed through atomics, or through the seqlock
// protocol whose torn reads are detected and discarded; it may be used from any thread.
unsafe impl Send for RingMap {}
// SAFETY: as above.
unsafe impl Sync for RingMap {}

impl RingMap {
    /// Create a ring file of `geometry` (the runtime's Broker): a memfd sealed against
    /// resizing, header initialised. Returns the mapping and the fd to hand out.
    pub fn create(name: &str, geometry: Geometry) -> Result<(RingMap, OwnedFd), RingError> {
        use rustix::fs::{MemfdFlags, SealFlags};
        geometry.check().map_err(RingError::Invalid)?;
        let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
            .map_err(io("memfd_create"))?;
        rustix::fs::ftruncate(&fd, geometry.file_size() as u64).map_err(io("sizing"))?;
        rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)
            .map_err(io("sealing"))?;
        let map = RingMap::map_raw(fd.as_fd(), geometry)?;
        let h = map.header();
        h.policy.store(geometry.policy.code(), Ordering::Relaxed);
        h.slot_size.store(geometry.slot_size, Ordering::Relaxed);
        h.slot_count.store(geometry.slot_count, Ordering::Relaxed);
        h.block_timeout_ms
            .store(geometry.block_timeout_ms, Ordering::Relaxed);
        h.version.store(crate::PROTOCOL_VERSION, Ordering::Relaxed);
        h.magic.store(RING_MAGIC, Ordering::Release);
        Ok((map, fd))
    }

    /// Map a ring file handed over by the runtime, checking it against the `geometry` its
    /// descriptor announced.
    pub fn map(fd: BorrowedFd<'_>, geometry: Geometry) -> Result<RingMap, RingError> {
        geometry.check().map_err(RingError::Invalid)?;
        let map = RingMap::map_raw(fd, geometry)?;
        let h = map.header();
        if h.magic.load(Ordering::Acquire) != RING_MAGIC
            || h.version.load(Ordering::Relaxed) != crate::PROTOCOL_VERSION
        {
            return Err(RingError::Invalid(
                "not initialised by a runtime of this protocol version".into(),
            ));
        }
        let actual = Geometry {
            slot_size: h.slot_size.load(Ordering::Relaxed),
            slot_count: h.slot_count.load(Ordering::Relaxed),
            policy: Policy::from_code(h.policy.load(Ordering::Relaxed))
                .ok_or_else(|| RingError::Invalid("unknown policy code".into()))?,
            block_timeout_ms: h.block_timeout_ms.load(Ordering::Relaxed),
        };
        if actual != geometry {
            return Err(RingError::Invalid(format!(
                "the ring holds {actual:?}, its descriptor says {geometry:?}"
            )));
        }
        Ok(map)
    }

    fn map_raw(fd: BorrowedFd<'_>, geometry: Geometry) -> Result<RingMap, RingError> {
        let len = geometry.file_size();
        let size = rustix::fs::fstat(fd).map_err(io("fstat"))?.st_size as usize;
        if size < len {
            return Err(RingError::Invalid(format!(
                "the file has {size} bytes, the ring needs {len}"
            )));
        }
        let seals = rustix::fs::fcntl_get_seals(fd).map_err(io("reading the seals"))?;
        if !seals.contains(rustix::fs::SealFlags::SHRINK) {
            return Err(RingError::Invalid(
                "the file is not sealed against shrinking".into(),
            ));
        }
        // SAFETY: a fresh shared mapping of an fd we were handed; the kernel picks the address.
        // The file is sealed against shrinking (checked above) and at least `len` long, so every
        // access within `len` stays valid for the life of the mapping.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                rustix::mm::MapFlags::SHARED,
                fd,
                0,
            )
        }
        .map_err(io("mmap"))?;
        let ptr = NonNull::new(ptr.cast::<u8>())
            .ok_or_else(|| RingError::Invalid("null mapping".into()))?;
        Ok(RingMap { ptr, len, geometry })
    }

    /// The ring's shape.
    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    /// The header.
    pub fn header(&self) -> &RingHeader {
        // SAFETY: the mapping is page-aligned and longer than HEADER_SIZE; RingHeader is
        // repr(C) atomics, valid for any bit pattern and for shared access.
        unsafe { &*self.ptr.as_ptr().cast::<RingHeader>() }
    }

    /// Consumer cell `i` (`i < MAX_CONSUMERS`).
    pub fn consumer(&self, i: usize) -> &ConsumerCell {
        assert!(i < MAX_CONSUMERS);
        // SAFETY: the cells lie within the header page (checked at compile time above), are
        // 64-byte aligned at a 64-byte aligned offset, and are atomics valid for any pattern.
        unsafe {
            &*self
                .ptr
                .as_ptr()
                .add(CONSUMERS_OFFSET)
                .cast::<ConsumerCell>()
                .add(i)
        }
    }

    fn slot(&self, seq: u64) -> (&SlotHeader, *mut u8) {
        let index = (seq % u64::from(self.geometry.slot_count)) as usize;
        let offset = HEADER_SIZE + index * self.geometry.stride();
        debug_assert!(offset + self.geometry.stride() <= self.len);
        // SAFETY: index < slot_count, so the slot lies within the mapping; slot offsets are
        // 64-byte aligned; SlotHeader is atomics, valid for any bit pattern.
        unsafe {
            let base = self.ptr.as_ptr().add(offset);
            (&*base.cast::<SlotHeader>(), base.add(SLOT_HEADER))
        }
    }

    /// Whether a producer could write message `seq` now without overwriting a message a live
    /// consumer has not read (only [`Policy::Block`] asks).
    fn has_space(&self, seq: u64) -> bool {
        let count = u64::from(self.geometry.slot_count);
        (0..MAX_CONSUMERS).all(|i| {
            let c = self.consumer(i);
            c.active.load(Ordering::Acquire) == 0 || c.next.load(Ordering::Acquire) + count > seq
        })
    }
}

impl Drop for RingMap {
    fn drop(&mut self) {
        // SAFETY: `ptr` is the start of a mapping of `len` bytes made in `map_raw`; no reference
        // into it outlives `self`.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// A new eventfd doorbell (non-blocking, close-on-exec).
pub fn doorbell() -> std::io::Result<OwnedFd> {
    use rustix::event::EventfdFlags;
    Ok(rustix::event::eventfd(
        0,
        EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK,
    )?)
}

/// Ring a doorbell (a full or closed one is ignored: the sleeper wakes either way).
pub fn ring(bell: BorrowedFd<'_>) {
    let _ = rustix::io::write(bell, &1u64.to_ne_bytes());
}

/// Empty a doorbell after waking.
pub fn drain(bell: BorrowedFd<'_>) {
    let mut buf = [0u8; 8];
    let _ = rustix::io::read(bell, &mut buf);
}

/// Wait until `bell` rings or `timeout` passes; `None` waits without limit.
pub fn wait_bell(bell: BorrowedFd<'_>, timeout: Option<Duration>) {
    let mut fds = [rustix::event::PollFd::new(
        &bell,
        rustix::event::PollFlags::IN,
    )];
    let ts = timeout.map(|d| rustix::time::Timespec {
        tv_sec: d.as_secs() as i64,
        tv_nsec: i64::from(d.subsec_nanos()),
    });
    let _ = rustix::event::poll(&mut fds, ts.as_ref());
}

/// Why a write failed. The ring is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// The payload does not fit a slot.
    #[error("a {len}-byte message does not fit the stream's {slot_size}-byte slots")]
    TooLarge {
        /// Bytes of the message.
        len: usize,
        /// Bytes of a slot.
        slot_size: usize,
    },
    /// Under `block`, the slowest consumer did not read within the timeout.
    #[error(
        "the ring is full: consumer {consumer} has not read for {waited_ms} ms (block policy timeout)"
    )]
    Full {
        /// The consumer cell holding the producer back.
        consumer: usize,
        /// How long the write waited.
        waited_ms: u64,
    },
}

/// The producer's side of a ring.
#[derive(Debug)]
pub struct RingWriter {
    map: Arc<RingMap>,
    space_bell: OwnedFd,
    /// The consumers' doorbells, by cell; shared with whoever hears of new consumers.
    bells: Arc<std::sync::Mutex<Vec<Option<OwnedFd>>>>,
    next: u64,
    incarnation: u64,
}

/// Consumer doorbells a producer rings, by consumer cell; the Broker's client adds to it as
/// consumers subscribe.
pub type Bells = Arc<std::sync::Mutex<Vec<Option<OwnedFd>>>>;

impl RingWriter {
    /// Take the producer's side of `map` for `incarnation`. Sequences continue after the last
    /// one any earlier producer claimed, so a message a dead producer left half-written is
    /// skipped (consumers count it as dropped), never published. A producer that takes over a
    /// ring someone held before skips one more sequence: a restart always shows as a gap to
    /// consumers, whether or not the dead producer had a message in flight.
    pub fn attach(map: Arc<RingMap>, space_bell: OwnedFd, bells: Bells, incarnation: u64) -> Self {
        let h = map.header();
        let last = h
            .claimed
            .load(Ordering::Acquire)
            .max(h.published.load(Ordering::Acquire));
        let restart = h.attachments.fetch_add(1, Ordering::Relaxed) > 0;
        // Saturating: a hostile earlier producer may have left any value in the shared cursors.
        let next = last.saturating_add(if restart { 2 } else { 1 });
        h.claimed.store(next - 1, Ordering::Release);
        h.producer_incarnation.store(incarnation, Ordering::Relaxed);
        h.producer_live.store(1, Ordering::Release);
        RingWriter {
            map,
            space_bell,
            bells,
            next,
            incarnation,
        }
    }

    /// The ring.
    pub fn map(&self) -> &RingMap {
        &self.map
    }

    /// The sequence the next write gets.
    pub fn next_seq(&self) -> u64 {
        self.next
    }

    /// Write one message in place: `fill` gets the slot's payload area and returns how many
    /// bytes it used (an `Err` from `fill` abandons the write; the slot is left unpublished).
    /// `kind` is an application tag carried beside the payload. Returns the sequence.
    pub fn write<E>(
        &mut self,
        kind: u32,
        fill: impl FnOnce(&mut [u8]) -> Result<usize, E>,
    ) -> Result<Result<u64, E>, WriteError> {
        let seq = self.next;
        self.publish(seq, kind, fill, None)
    }

    /// Take the producer's side of a ring that mirrors another ring, on another host, message
    /// for message ([`RingWriter::write_at`]): the sequences are the other ring's. The ring's
    /// counters must have been set to the other's first (`claimed`, `published`,
    /// `attachments`), so that a consumer sees the same sequence numbers on both.
    pub fn mirror(map: Arc<RingMap>, space_bell: OwnedFd, bells: Bells) -> Self {
        let h = map.header();
        let next = h
            .claimed
            .load(Ordering::Acquire)
            .max(h.published.load(Ordering::Acquire))
            .saturating_add(1);
        // Counted as an attachment, so that the producer's next incarnation (whose ring on its
        // host starts from these counters) skips a sequence: a restart shows as a gap here too.
        h.attachments.fetch_add(1, Ordering::Relaxed);
        h.producer_live.store(1, Ordering::Release);
        RingWriter {
            map,
            space_bell,
            bells,
            next,
            incarnation: 0,
        }
    }

    /// Publish `payload` as message `seq` of the ring this one mirrors, as its producer
    /// (`incarnation`) published it at `publish_ns` (this host's clock). Sequences skipped
    /// since the last one are gaps here as they were there; a sequence at or below one
    /// already written is not written again (`Ok(None)`).
    pub fn write_at(
        &mut self,
        seq: u64,
        kind: u32,
        payload: &[u8],
        publish_ns: u64,
        incarnation: u64,
    ) -> Result<Option<u64>, WriteError> {
        self.fits(payload.len())?;
        // Below what this writer, or any writer of the ring, has already written: not again
        // (a bridge's late write after its successor took over must not move it back).
        let h = self.map.header();
        let written = h
            .claimed
            .load(Ordering::Acquire)
            .max(h.published.load(Ordering::Acquire));
        if seq < self.next || seq <= written || seq == u64::MAX {
            return Ok(None);
        }
        self.publish(
            seq,
            kind,
            |buf| {
                buf[..payload.len()].copy_from_slice(payload);
                Ok::<_, std::convert::Infallible>(payload.len())
            },
            Some((publish_ns, incarnation)),
        )
        .map(|r| match r {
            Ok(seq) => Some(seq),
            Err(never) => match never {},
        })
    }

    /// Write message `seq` (the next one, or a later one after a gap).
    fn publish<E>(
        &mut self,
        seq: u64,
        kind: u32,
        fill: impl FnOnce(&mut [u8]) -> Result<usize, E>,
        origin: Option<(u64, u64)>,
    ) -> Result<Result<u64, E>, WriteError> {
        let g = self.map.geometry;
        if g.policy == Policy::Block {
            self.wait_space(seq)?;
        }
        let h = self.map.header();
        h.claimed.store(seq, Ordering::Release);
        let (slot, data) = self.map.slot(seq);
        slot.stamp
            .store(seq.wrapping_mul(2).wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        // SAFETY: `data` points at this slot's payload area of slot_size bytes inside the live
        // mapping. Consumers may read it concurrently; they detect that through the stamp and
        // discard what they read.
        let buf = unsafe { std::slice::from_raw_parts_mut(data, g.slot_size as usize) };
        let len = match fill(buf) {
            Ok(len) => len.min(g.slot_size as usize),
            Err(e) => {
                // Leave the slot unpublished; the sequence is skipped like a dead producer's.
                self.next = seq + 1;
                return Ok(Err(e));
            }
        };
        let (publish_ns, incarnation) = origin.unwrap_or((monotonic_ns(), self.incarnation));
        slot.len.store(len as u32, Ordering::Relaxed);
        slot.kind.store(kind, Ordering::Relaxed);
        slot.publish_ns.store(publish_ns, Ordering::Relaxed);
        slot.incarnation.store(incarnation, Ordering::Relaxed);
        if origin.is_some() {
            h.producer_incarnation.store(incarnation, Ordering::Relaxed);
        }
        slot.stamp.store(seq.wrapping_mul(2), Ordering::Release);
        h.published.store(seq, Ordering::SeqCst);
        self.next = seq + 1;
        self.wake_consumers();
        Ok(Ok(seq))
    }

    /// `len` bytes fit a slot, or the error saying they do not.
    fn fits(&self, len: usize) -> Result<(), WriteError> {
        let slot_size = self.map.geometry.slot_size as usize;
        if len > slot_size {
            return Err(WriteError::TooLarge { len, slot_size });
        }
        Ok(())
    }

    /// Copy `payload` into the next slot and publish it.
    pub fn write_bytes(&mut self, kind: u32, payload: &[u8]) -> Result<u64, WriteError> {
        self.fits(payload.len())?;
        self.write(kind, |buf| {
            buf[..payload.len()].copy_from_slice(payload);
            Ok::<_, std::convert::Infallible>(payload.len())
        })
        .map(|r| match r {
            Ok(seq) => seq,
            Err(never) => match never {},
        })
    }

    fn wake_consumers(&self) {
        let bells = self.bells.lock().unwrap_or_else(|p| p.into_inner());
        for (i, bell) in bells.iter().enumerate() {
            if let Some(bell) = bell
                && i < MAX_CONSUMERS
                && self.map.consumer(i).waiting.load(Ordering::SeqCst) != 0
            {
                ring(bell.as_fd());
            }
        }
    }

    fn wait_space(&self, seq: u64) -> Result<(), WriteError> {
        let h = self.map.header();
        if self.map.has_space(seq) {
            return Ok(());
        }
        h.blocked.fetch_add(1, Ordering::Relaxed);
        let timeout = Duration::from_millis(u64::from(self.map.geometry.block_timeout_ms));
        let start = Instant::now();
        loop {
            h.producer_waiting.store(1, Ordering::SeqCst);
            if self.map.has_space(seq) {
                h.producer_waiting.store(0, Ordering::Relaxed);
                return Ok(());
            }
            let left = timeout.saturating_sub(start.elapsed());
            if left.is_zero() {
                h.producer_waiting.store(0, Ordering::Relaxed);
                h.timeouts.fetch_add(1, Ordering::Relaxed);
                let count = u64::from(self.map.geometry.slot_count);
                let consumer = (0..MAX_CONSUMERS)
                    .find(|&i| {
                        let c = self.map.consumer(i);
                        c.active.load(Ordering::Acquire) != 0
                            && c.next.load(Ordering::Acquire) + count <= seq
                    })
                    .unwrap_or(0);
                return Err(WriteError::Full {
                    consumer,
                    waited_ms: start.elapsed().as_millis() as u64,
                });
            }
            // Poll in short slices as well: a consumer that died while we slept frees the
            // ring without ringing.
            wait_bell(
                self.space_bell.as_fd(),
                Some(left.min(Duration::from_millis(50))),
            );
            drain(self.space_bell.as_fd());
        }
    }
}

impl Drop for RingWriter {
    fn drop(&mut self) {
        self.map.header().producer_live.store(0, Ordering::Release);
    }
}

/// One message as a consumer saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// Its sequence number.
    pub seq: u64,
    /// Messages skipped since the previous one this consumer received (0: none).
    pub gap: u64,
    /// The producer's tag.
    pub kind: u32,
    /// When it was published (CLOCK_MONOTONIC ns).
    pub publish_ns: u64,
    /// Incarnation of the producer that published it.
    pub producer_incarnation: u64,
}

/// The outcome of one read attempt.
#[derive(Debug)]
pub enum ReadOutcome<R> {
    /// A whole message, and what the reader made of it.
    Message(Received, R),
    /// Nothing new yet.
    Empty,
    /// The producer overwrote the slot while it was read: the result was discarded (the
    /// consumer moves on; the next read may succeed).
    Torn {
        /// The sequence that was torn.
        seq: u64,
    },
}

/// A consumer's side of a ring.
#[derive(Debug)]
pub struct RingReader {
    map: Arc<RingMap>,
    cell: usize,
    bell: OwnedFd,
    space_bell: OwnedFd,
    /// Sequence of the last message received, to compute gaps.
    last: u64,
}

impl RingReader {
    /// Take consumer cell `cell` of `map`. `resume`: keep the cell's cursor (a restarted
    /// consumer picks up where its previous incarnation stopped, if the ring still holds it);
    /// otherwise start at the newest published message (a late joiner sees the latest slot).
    /// A latest-only ring always starts at its newest message: it carries state, and a new
    /// incarnation has none until it reads it (a renderer restarted after reading the
    /// window's identity must see that identity again). A ring whose counters start past
    /// messages it never held (a mirror of another host's ring, [`RingWriter::mirror`]) is
    /// read from its next message, with no gap counted for what it never had.
    pub fn attach(
        map: Arc<RingMap>,
        cell: usize,
        bell: OwnedFd,
        space_bell: OwnedFd,
        resume: bool,
    ) -> Result<Self, RingError> {
        if cell >= MAX_CONSUMERS {
            return Err(RingError::Invalid(format!(
                "consumer cell {cell} is out of range"
            )));
        }
        let published = map.header().published.load(Ordering::Acquire);
        let c = map.consumer(cell);
        let mut next = c.next.load(Ordering::Acquire);
        if !resume
            || next == 0
            || next > published.saturating_add(1)
            || map.geometry.policy == Policy::LatestOnly
        {
            next = published.max(1);
            if published > 0 && map.slot(published).0.stamp.load(Ordering::Acquire) == 0 {
                next = published.saturating_add(1);
            }
        }
        c.next.store(next, Ordering::Release);
        c.waiting.store(0, Ordering::Relaxed);
        c.active.store(1, Ordering::Release);
        Ok(RingReader {
            last: next.saturating_sub(1),
            map,
            cell,
            bell,
            space_bell,
        })
    }

    /// The ring.
    pub fn map(&self) -> &RingMap {
        &self.map
    }

    /// This consumer's cell.
    pub fn cell(&self) -> &ConsumerCell {
        self.map.consumer(self.cell)
    }

    /// This consumer's doorbell (for async readiness).
    pub fn bell(&self) -> BorrowedFd<'_> {
        self.bell.as_fd()
    }

    /// Whether a message is waiting.
    pub fn has_message(&self) -> bool {
        has_message(&self.map, self.cell)
    }

    /// Move back to message `seq`, to read it and what follows again: for a consumer that
    /// lost what it read since some point (a world resuming from its last durable state
    /// re-applies the inputs it had read after it). Only within what it has read and the ring
    /// still holds; whether it moved (`seq` at its cursor: nothing to read again, `true`).
    pub fn rewind_to(&mut self, seq: u64) -> bool {
        let published = self.map.header().published.load(Ordering::Acquire);
        let oldest = published
            .saturating_sub(u64::from(self.map.geometry.slot_count))
            .saturating_add(1);
        let cell = self.map.consumer(self.cell);
        let next = cell.next.load(Ordering::Acquire);
        if seq == 0 || seq > next || seq < oldest {
            return false;
        }
        cell.next.store(seq, Ordering::Release);
        self.last = seq - 1;
        true
    }

    /// Read the next message in place, if any: `read` gets the payload and its tag and runs
    /// on the shared slot itself (no copy). Its result is returned only if the slot was not
    /// overwritten meanwhile — otherwise the outcome is [`ReadOutcome::Torn`] and the result is
    /// dropped, so `read` must tolerate garbage input (a decoder returning an error is fine).
    pub fn try_read<R>(&mut self, mut read: impl FnMut(&[u8], u32) -> R) -> ReadOutcome<R> {
        let g = self.map.geometry;
        let count = u64::from(g.slot_count);
        let h = self.map.header();
        let cell = self.map.consumer(self.cell);
        // Each turn skips one slot; a ring has `count` of them. More turns than that mean the
        // shared cursors are being rewritten under us (a hostile producer): give up for now.
        for _ in 0..=count.saturating_add(1) {
            let published = h.published.load(Ordering::Acquire);
            let mut next = cell.next.load(Ordering::Relaxed);
            if published < next {
                return ReadOutcome::Empty;
            }
            if g.policy == Policy::LatestOnly {
                next = published;
            } else if published - next >= count {
                // Lapped: the oldest message still in the ring.
                next = published - count + 1;
            }
            let (slot, data) = self.map.slot(next);
            let stamp = slot.stamp.load(Ordering::Acquire);
            if stamp != next.wrapping_mul(2) {
                if stamp > next.wrapping_mul(2).wrapping_add(1)
                    || h.published.load(Ordering::Acquire) > next
                {
                    // Overwritten by a later lap, or abandoned half-written by a producer that
                    // died: skip it.
                    cell.next.store(next.saturating_add(1), Ordering::Release);
                    self.wake_producer();
                    continue;
                }
                return ReadOutcome::Empty;
            }
            let len = (slot.len.load(Ordering::Relaxed) as usize).min(g.slot_size as usize);
            let kind = slot.kind.load(Ordering::Relaxed);
            let publish_ns = slot.publish_ns.load(Ordering::Relaxed);
            let producer_incarnation = slot.incarnation.load(Ordering::Relaxed);
            // SAFETY: `data` points at this slot's payload inside the live mapping and `len` is
            // clamped to the slot; the producer may write it concurrently, which the stamp check
            // below detects (the bytes are then discarded).
            let bytes = unsafe { std::slice::from_raw_parts(data.cast_const(), len) };
            let result = read(bytes, kind);
            fence(Ordering::Acquire);
            let after = slot.stamp.load(Ordering::Relaxed);
            cell.next.store(next.saturating_add(1), Ordering::Release);
            self.wake_producer();
            if after != stamp {
                // Counted as torn, not again as a gap.
                self.last = next;
                cell.torn.fetch_add(1, Ordering::Relaxed);
                return ReadOutcome::Torn { seq: next };
            }
            let gap = next.saturating_sub(self.last.saturating_add(1));
            self.last = next;
            if gap > 0 {
                cell.dropped.fetch_add(gap, Ordering::Relaxed);
            }
            cell.received.fetch_add(1, Ordering::Relaxed);
            cell.last_publish_ns.store(publish_ns, Ordering::Relaxed);
            cell.last_receive_ns
                .store(monotonic_ns(), Ordering::Relaxed);
            return ReadOutcome::Message(
                Received {
                    seq: next,
                    gap,
                    kind,
                    publish_ns,
                    producer_incarnation,
                },
                result,
            );
        }
        ReadOutcome::Empty
    }

    /// Read the next message, waiting up to `timeout` for one (`None`: without limit).
    /// Returns [`ReadOutcome::Empty`] on timeout.
    pub fn read_timeout<R>(
        &mut self,
        timeout: Option<Duration>,
        mut read: impl FnMut(&[u8], u32) -> R,
    ) -> ReadOutcome<R> {
        let start = Instant::now();
        loop {
            match self.try_read(&mut read) {
                ReadOutcome::Empty => {}
                other => return other,
            }
            let left = match timeout {
                Some(t) => {
                    let left = t.saturating_sub(start.elapsed());
                    if left.is_zero() {
                        return ReadOutcome::Empty;
                    }
                    Some(left)
                }
                None => None,
            };
            if self.prepare_wait() {
                wait_bell(self.bell.as_fd(), left);
                self.finish_wait();
            }
        }
    }

    /// Announce that this consumer is about to sleep on its doorbell. Returns `false` (and
    /// does not announce) if a message arrived meanwhile: read instead of sleeping.
    pub fn prepare_wait(&self) -> bool {
        prepare_wait(&self.map, self.cell)
    }

    /// After waking: empty the doorbell and clear the waiting flag.
    pub fn finish_wait(&self) {
        finish_wait(&self.map, self.cell, self.bell.as_fd());
    }

    fn wake_producer(&self) {
        if self.map.geometry.policy == Policy::Block {
            fence(Ordering::SeqCst);
            if self.map.header().producer_waiting.load(Ordering::SeqCst) != 0 {
                ring(self.space_bell.as_fd());
            }
        }
    }
}

/// What an event loop needs to wait for a reader's next message beside other things: the
/// ring, the reader's cell and a duplicate of its doorbell, which the loop polls together with
/// its other fds. [`ReaderWaker::prepare_wait`] before polling, [`ReaderWaker::finish_wait`]
/// after, exactly as the reader's own blocking read does.
#[derive(Debug)]
pub struct ReaderWaker {
    map: Arc<RingMap>,
    cell: usize,
    bell: OwnedFd,
}

/// Whether consumer `cell` of `map` has a message waiting.
fn has_message(map: &RingMap, cell: usize) -> bool {
    map.header().published.load(Ordering::SeqCst) >= map.consumer(cell).next.load(Ordering::Relaxed)
}

/// Ask the producer to ring consumer `cell`'s doorbell for its next message; `false` (and
/// nothing asked) if one is already waiting.
fn prepare_wait(map: &RingMap, cell: usize) -> bool {
    let c = map.consumer(cell);
    c.waiting.store(1, Ordering::SeqCst);
    if has_message(map, cell) {
        c.waiting.store(0, Ordering::Relaxed);
        return false;
    }
    true
}

/// After waking: empty the doorbell and clear consumer `cell`'s waiting flag.
fn finish_wait(map: &RingMap, cell: usize, bell: BorrowedFd<'_>) {
    drain(bell);
    map.consumer(cell).waiting.store(0, Ordering::Relaxed);
}

impl ReaderWaker {
    /// Whether a message is waiting for the reader.
    pub fn has_message(&self) -> bool {
        has_message(&self.map, self.cell)
    }

    /// Ask the producer to ring the doorbell for the next message; `false` if one is
    /// already waiting (then do not wait).
    pub fn prepare_wait(&self) -> bool {
        prepare_wait(&self.map, self.cell)
    }

    /// After waking: empty the doorbell and clear the waiting flag.
    pub fn finish_wait(&self) {
        finish_wait(&self.map, self.cell, self.bell.as_fd());
    }

    /// After waking for another reason (its doorbell did not ring): clear the waiting flag,
    /// leaving the doorbell as it is.
    pub fn stop_waiting(&self) {
        self.map
            .consumer(self.cell)
            .waiting
            .store(0, Ordering::Relaxed);
    }

    /// The doorbell to poll.
    pub fn bell(&self) -> BorrowedFd<'_> {
        self.bell.as_fd()
    }
}

impl RingReader {
    /// A [`ReaderWaker`] for this reader, for an event loop that waits on it beside others.
    pub fn waker(&self) -> std::io::Result<ReaderWaker> {
        Ok(ReaderWaker {
            map: self.map.clone(),
            cell: self.cell,
            bell: self.bell.try_clone()?,
        })
    }
}

impl Drop for RingReader {
    fn drop(&mut self) {
        let c = self.cell();
        c.waiting.store(0, Ordering::Relaxed);
        c.active.store(0, Ordering::Release);
        // A producer blocked on this consumer may go on.
        ring(self.space_bell.as_fd());
    }
}

/// Whether message `seq` (at most the newest published) was published: `Some(true)` if its
/// slot holds it, `Some(false)` if the producer never finished it (it died mid-write, or
/// skipped it on a restart), `None` if a later message already took the slot. For observers
/// counting gaps without a consumer cell.
pub fn was_published(map: &RingMap, seq: u64) -> Option<bool> {
    let (slot, _) = map.slot(seq);
    let stamp = slot.stamp.load(Ordering::Acquire);
    if stamp == seq.wrapping_mul(2) {
        Some(true)
    } else if stamp > seq.wrapping_mul(2).wrapping_add(1) {
        None
    } else {
        Some(false)
    }
}

/// Read message `seq` in place, if its slot still holds it whole: `read` gets its payload and
/// kind. `None` if it was never published (its producer died writing it), a later message took
/// its slot, or it changed while `read` ran (what `read` saw is then discarded). For a
/// producer reading back what it wrote before a restart (a world's durable state).
pub fn read_published<R>(map: &RingMap, seq: u64, read: impl FnOnce(&[u8], u32) -> R) -> Option<R> {
    read_whole(map, seq, |bytes, slot| read(bytes, slot.kind))
}

/// A passive view of a ring's newest message, for observers that must not hold a consumer
/// cell (`syncra tap`): it never slows the producer.
pub fn peek_latest<R>(map: &RingMap, read: impl FnOnce(&[u8], u32) -> R) -> Option<(Received, R)> {
    let seq = map.header().published.load(Ordering::Acquire);
    read_whole(map, seq, |bytes, slot| {
        let received = Received {
            seq,
            gap: 0,
            kind: slot.kind,
            publish_ns: slot.publish_ns,
            producer_incarnation: slot.incarnation,
        };
        (received, read(bytes, slot.kind))
    })
}

/// What a slot's header said about the message read from it.
struct SlotFacts {
    kind: u32,
    publish_ns: u64,
    incarnation: u64,
}

/// Message `seq` read in place under the slot's seqlock: `None` unless the slot held it
/// published before `read` and still after.
fn read_whole<R>(map: &RingMap, seq: u64, read: impl FnOnce(&[u8], &SlotFacts) -> R) -> Option<R> {
    if seq == 0 || seq == u64::MAX {
        return None;
    }
    let (slot, data) = map.slot(seq);
    let stamp = slot.stamp.load(Ordering::Acquire);
    if stamp != seq.wrapping_mul(2) {
        return None;
    }
    let len = (slot.len.load(Ordering::Relaxed) as usize).min(map.geometry.slot_size as usize);
    let facts = SlotFacts {
        kind: slot.kind.load(Ordering::Relaxed),
        publish_ns: slot.publish_ns.load(Ordering::Relaxed),
        incarnation: slot.incarnation.load(Ordering::Relaxed),
    };
    // SAFETY: as in `RingReader::try_read`: in bounds, torn reads detected below.
    let bytes = unsafe { std::slice::from_raw_parts(data.cast_const(), len) };
    let result = read(bytes, &facts);
    fence(Ordering::Acquire);
    (slot.stamp.load(Ordering::Relaxed) == stamp).then_some(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring_of(policy: Policy, count: u32) -> (Arc<RingMap>, OwnedFd) {
        let g = Geometry {
            slot_size: 64,
            slot_count: count,
            policy,
            block_timeout_ms: 30,
        };
        let (map, fd) = RingMap::create("test-ring", g).unwrap();
        (Arc::new(map), fd)
    }

    fn writer(map: &Arc<RingMap>, bells: &Bells) -> RingWriter {
        RingWriter::attach(map.clone(), doorbell().unwrap(), bells.clone(), 1)
    }

    fn reader(fd: &OwnedFd, cell: usize, bells: &Bells, resume: bool) -> RingReader {
        let g = RingMap::map(fd.as_fd(), ring_geometry(fd)).unwrap();
        let bell = doorbell().unwrap();
        {
            let mut b = bells.lock().unwrap();
            b.resize_with(MAX_CONSUMERS, || None);
            b[cell] = Some(bell.try_clone().unwrap());
        }
        RingReader::attach(Arc::new(g), cell, bell, doorbell().unwrap(), resume).unwrap()
    }

    fn ring_geometry(fd: &OwnedFd) -> Geometry {
        let size = rustix::fs::fstat(fd).unwrap().st_size as usize;
        // Tests use 64-byte slots; recover the count from the size.
        let count = ((size - HEADER_SIZE) / 128) as u32;
        let probe = RingMap::map_raw(
            fd.as_fd(),
            Geometry {
                slot_size: 64,
                slot_count: count,
                policy: Policy::LatestOnly,
                block_timeout_ms: 30,
            },
        )
        .unwrap();
        let h = probe.header();
        Geometry {
            slot_size: 64,
            slot_count: count,
            policy: Policy::from_code(h.policy.load(Ordering::Relaxed)).unwrap(),
            block_timeout_ms: 30,
        }
    }

    fn read_u64(r: &mut RingReader) -> Option<(u64, u64, u64)> {
        match r.try_read(|b, _| u64::from_le_bytes(b[..8].try_into().unwrap())) {
            ReadOutcome::Message(m, v) => Some((m.seq, m.gap, v)),
            ReadOutcome::Empty => None,
            ReadOutcome::Torn { seq } => panic!("torn read of {seq}"),
        }
    }

    #[test]
    fn a_mirror_keeps_the_sequences_it_is_given_so_gaps_and_restarts_stay_visible() {
        // The original: a producer that restarted once (a gap), then a mirror of it started
        // with the original's counters, fed what a bridge read (one message lost on the way).
        let (orig, orig_fd) = ring_of(Policy::DropOldest, 8);
        let bells: Bells = Default::default();
        let mut w = writer(&orig, &bells);
        for v in [10u64, 11] {
            w.write_bytes(0, &v.to_le_bytes()).unwrap();
        }
        drop(w);
        let mut w = writer(&orig, &bells);
        w.write_bytes(0, &12u64.to_le_bytes()).unwrap();
        let mut from = reader(&orig_fd, 0, &bells, false);
        from.cell().next.store(1, Ordering::Release);
        let mut seen = Vec::new();
        while let ReadOutcome::Message(m, v) = from.try_read(|b, _| b.to_vec()) {
            seen.push((m.seq, m.producer_incarnation, v));
        }
        assert_eq!(
            seen.iter().map(|s| s.0).collect::<Vec<_>>(),
            [1, 2, 4],
            "a producer restart skips a sequence"
        );
        let (copy, copy_fd) = ring_of(Policy::DropOldest, 8);
        // Counters as the original's were when the bridge started: nothing held yet.
        copy.header().claimed.store(0, Ordering::Release);
        let mirror_bells: Bells = Default::default();
        let mut m = RingWriter::mirror(copy.clone(), doorbell().unwrap(), mirror_bells.clone());
        let mut to = reader(&copy_fd, 3, &mirror_bells, false);
        for (seq, inc, v) in &seen {
            if *seq == 2 {
                continue; // lost on the way
            }
            assert_eq!(m.write_at(*seq, 0, v, 5, *inc).unwrap(), Some(*seq));
        }
        assert_eq!(
            m.write_at(1, 0, &0u64.to_le_bytes(), 5, 1).unwrap(),
            None,
            "an old sequence is not written again"
        );
        assert_eq!(read_u64(&mut to), Some((1, 0, 10)));
        assert_eq!(
            read_u64(&mut to),
            Some((4, 2, 12)),
            "both gaps are one gap here"
        );
        assert_eq!(read_u64(&mut to), None);
        assert_eq!(to.cell().dropped.load(Ordering::Relaxed), 2);
        // A consumer that joins a mirror whose counters start past messages it never held
        // reads from the next one, with no gap for what the mirror never had.
        let (late, late_fd) = ring_of(Policy::DropOldest, 8);
        late.header().claimed.store(41, Ordering::Release);
        late.header().published.store(41, Ordering::Release);
        let late_bells: Bells = Default::default();
        let mut m = RingWriter::mirror(late.clone(), doorbell().unwrap(), late_bells.clone());
        let mut joiner = reader(&late_fd, 0, &late_bells, false);
        assert_eq!(read_u64(&mut joiner), None);
        m.write_at(42, 0, &7u64.to_le_bytes(), 5, 1).unwrap();
        assert_eq!(read_u64(&mut joiner), Some((42, 0, 7)));
    }

    #[test]
    fn cursors_at_the_end_of_the_sequence_space_are_no_panic() {
        // A hostile producer may leave any value in the shared cursors (found by the fuzzer:
        // `published = u64::MAX` with an unstamped slot overflowed a reader's attach).
        for policy in [Policy::DropOldest, Policy::LatestOnly, Policy::Block] {
            let (map, fd) = ring_of(policy, 4);
            let bells: Bells = Default::default();
            map.header().published.store(u64::MAX, Ordering::Release);
            map.header().claimed.store(u64::MAX, Ordering::Release);
            let mut r = reader(&fd, 0, &bells, false);
            assert_eq!(read_u64(&mut r), None, "{policy:?}");
            map.header().attachments.store(1, Ordering::Relaxed);
            let w = writer(&map, &bells);
            assert_eq!(w.next_seq(), u64::MAX, "{policy:?}");
        }
    }

    #[test]
    fn drop_oldest_delivers_in_order_and_counts_laps() {
        let (map, fd) = ring_of(Policy::DropOldest, 4);
        let bells = Bells::default();
        let mut w = writer(&map, &bells);
        let mut r = reader(&fd, 0, &bells, false);
        for v in 1..=3u64 {
            w.write_bytes(0, &v.to_le_bytes()).unwrap();
        }
        assert_eq!(read_u64(&mut r), Some((1, 0, 1)));
        assert_eq!(read_u64(&mut r), Some((2, 0, 2)));
        assert_eq!(read_u64(&mut r), Some((3, 0, 3)));
        assert_eq!(read_u64(&mut r), None);
        // Fall a whole ring behind: the oldest are gone, the gap says how many.
        for v in 4..=13u64 {
            w.write_bytes(0, &v.to_le_bytes()).unwrap();
        }
        assert_eq!(read_u64(&mut r), Some((10, 6, 10)));
        assert_eq!(r.cell().dropped.load(Ordering::Relaxed), 6);
    }

    #[test]
    fn latest_only_skips_to_the_newest_and_late_joiners_see_it() {
        let (map, fd) = ring_of(Policy::LatestOnly, 2);
        let bells = Bells::default();
        let mut w = writer(&map, &bells);
        for v in 1..=5u64 {
            w.write_bytes(0, &v.to_le_bytes()).unwrap();
        }
        let mut late = reader(&fd, 1, &bells, false);
        assert_eq!(
            read_u64(&mut late),
            Some((5, 0, 5)),
            "a late joiner sees the latest slot"
        );
        w.write_bytes(0, &6u64.to_le_bytes()).unwrap();
        w.write_bytes(0, &7u64.to_le_bytes()).unwrap();
        assert_eq!(read_u64(&mut late), Some((7, 1, 7)));
    }

    #[test]
    fn a_resumed_latest_only_reader_sees_the_newest_message_again() {
        let (map, fd) = ring_of(Policy::LatestOnly, 2);
        let bells = Bells::default();
        let mut w = writer(&map, &bells);
        w.write_bytes(0, &1u64.to_le_bytes()).unwrap();
        let mut first = reader(&fd, 0, &bells, false);
        assert_eq!(read_u64(&mut first), Some((1, 0, 1)));
        assert_eq!(read_u64(&mut first), None, "read once");
        drop(first);
        // A restarted consumer taking the same cell back has no state: it gets the state.
        let mut again = reader(&fd, 0, &bells, true);
        assert_eq!(
            read_u64(&mut again).map(|(seq, _, v)| (seq, v)),
            Some((1, 1))
        );
    }

    #[test]
    fn block_waits_for_the_slowest_consumer_then_times_out() {
        let (map, fd) = ring_of(Policy::Block, 2);
        let bells = Bells::default();
        let mut w = writer(&map, &bells);
        let mut r = reader(&fd, 0, &bells, false);
        w.write_bytes(0, &1u64.to_le_bytes()).unwrap();
        w.write_bytes(0, &2u64.to_le_bytes()).unwrap();
        let err = w.write_bytes(0, &3u64.to_le_bytes()).unwrap_err();
        assert!(
            matches!(err, WriteError::Full { consumer: 0, .. }),
            "{err:?}"
        );
        assert_eq!(read_u64(&mut r), Some((1, 0, 1)));
        w.write_bytes(0, &3u64.to_le_bytes()).unwrap();
        assert_eq!(read_u64(&mut r), Some((2, 0, 2)));
        assert_eq!(
            read_u64(&mut r),
            Some((3, 0, 3)),
            "nothing lost under block"
        );
        // A consumer that leaves no longer holds the producer back.
        drop(r);
        for v in 4..10u64 {
            w.write_bytes(0, &v.to_le_bytes()).unwrap();
        }
    }

    #[test]
    fn a_read_overlapping_a_write_is_reported_torn() {
        let (map, fd) = ring_of(Policy::DropOldest, 2);
        let bells = Bells::default();
        let mut w = writer(&map, &bells);
        let mut r = reader(&fd, 0, &bells, false);
        w.write_bytes(0, &1u64.to_le_bytes()).unwrap();
        // While the consumer holds slot 1, the producer laps it twice.
        let outcome = r.try_read(|bytes, _| {
            let first = bytes[0];
            w.write_bytes(0, &2u64.to_le_bytes()).unwrap();
            w.write_bytes(0, &3u64.to_le_bytes()).unwrap();
            first
        });
        assert!(
            matches!(outcome, ReadOutcome::Torn { seq: 1 }),
            "{outcome:?}"
        );
        assert_eq!(r.cell().torn.load(Ordering::Relaxed), 1);
        assert_eq!(read_u64(&mut r), Some((2, 0, 2)));
    }

    #[test]
    fn a_producer_dying_mid_write_leaves_a_gap_not_garbage() {
        let (map, fd) = ring_of(Policy::DropOldest, 4);
        let bells = Bells::default();
        let mut w = writer(&map, &bells);
        let mut r = reader(&fd, 0, &bells, false);
        w.write_bytes(0, &1u64.to_le_bytes()).unwrap();
        // Start message 2, scribble half of it, and "die" (the fill never finishes).
        let _ = w.write(0, |buf| {
            buf[..4].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
            Err::<usize, ()>(())
        });
        drop(w);
        assert_eq!(read_u64(&mut r), Some((1, 0, 1)));
        assert_eq!(
            read_u64(&mut r),
            None,
            "the half-written message is never returned"
        );
        // The restarted producer continues the sequence after the abandoned one.
        let mut w2 = RingWriter::attach(map.clone(), doorbell().unwrap(), bells.clone(), 2);
        assert_eq!(
            w2.next_seq(),
            4,
            "one abandoned, one skipped for the restart"
        );
        w2.write_bytes(0, &4u64.to_le_bytes()).unwrap();
        assert_eq!(read_u64(&mut r), Some((4, 2, 4)), "consumers see the gap");
        assert_eq!(map.header().attachments.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_restarted_consumer_resumes_its_cursor() {
        let (map, fd) = ring_of(Policy::DropOldest, 8);
        let bells = Bells::default();
        let mut w = writer(&map, &bells);
        let mut r = reader(&fd, 3, &bells, false);
        w.write_bytes(0, &1u64.to_le_bytes()).unwrap();
        assert_eq!(read_u64(&mut r), Some((1, 0, 1)));
        drop(r);
        w.write_bytes(0, &2u64.to_le_bytes()).unwrap();
        w.write_bytes(0, &3u64.to_le_bytes()).unwrap();
        let mut again = reader(&fd, 3, &bells, true);
        assert_eq!(
            read_u64(&mut again),
            Some((2, 0, 2)),
            "nothing lost while it was down"
        );
    }

    #[test]
    fn oversized_writes_are_refused_and_geometry_is_checked() {
        let (map, _fd) = ring_of(Policy::DropOldest, 2);
        let mut w = writer(&map, &Bells::default());
        assert_eq!(
            w.write_bytes(0, &[0; 65]),
            Err(WriteError::TooLarge {
                len: 65,
                slot_size: 64
            })
        );
        let bad = Geometry {
            slot_size: 0,
            slot_count: 2,
            policy: Policy::LatestOnly,
            block_timeout_ms: 0,
        };
        assert!(bad.check().unwrap_err().contains("slot_size 0"));
    }

    #[test]
    fn a_waiting_consumer_is_woken_across_threads() {
        let (map, fd) = ring_of(Policy::DropOldest, 4);
        let bells = Bells::default();
        let mut r = reader(&fd, 0, &bells, false);
        let mut w = writer(&map, &bells);
        let t = std::thread::spawn(move || {
            r.read_timeout(Some(Duration::from_secs(10)), |b, _| b.len())
        });
        // The reader may or may not be asleep yet; either way it must get the message.
        w.write_bytes(7, &[1, 2, 3]).unwrap();
        match t.join().unwrap() {
            ReadOutcome::Message(m, len) => assert_eq!((m.seq, m.kind, len), (1, 7, 3)),
            other => panic!("{other:?}"),
        }
    }
}
