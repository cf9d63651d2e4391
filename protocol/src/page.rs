//! The node page: a small shared-memory file (a sealed memfd) between the runtime and one
//! child incarnation, inherited by the child as fd [`crate::boot::PAGE_FD`].
//!
//! ```text
//! offset 0     Vitals: heartbeat counter and main-loop metrics (atomics, written by the child)
//! offset 1024  Figures: up to MAX_FIGURES named gauges and counters (atomics, written by the
//!              child, read by the runtime for `syncra status`)
//! offset 2560  status note: a seqlock-framed sentence the child keeps current ("output: null,
//!              no audio device"), read by the runtime for `syncra status`
//! offset 3072  exit note: u32 BE length + UTF-8, why the node is leaving (written by the
//!              child just before it exits — a refused setting, a failed start — read by the
//!              runtime after the child exits, for status and the crash record)
//! offset 4096  panic report: u32 BE length + MessagePack PanicReport (written by the child's
//!              panic hook, read by the runtime after the child exits)
//! ```
//!
//! A heartbeat is an atomic increment in the child's main loop; the runtime's watchdog samples
//! the counters. No message, no wakeup per beat, whatever the number of nodes.
//!
//! **Invariant:** every field the runtime reads is an atomic integer, for which any bit
//! pattern is valid, and the runtime seals the file against shrinking before handing it out:
//! a misbehaving child can lie about its metrics but cannot crash the runtime.

use std::os::fd::{AsFd, BorrowedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::status::NodeMetrics;

/// Where the panic report starts.
pub const PANIC_OFFSET: usize = 4096;
/// Largest panic report.
pub const PANIC_MAX: usize = 60 * 1024;
/// Size of the page file.
pub const PAGE_SIZE: usize = PANIC_OFFSET + PANIC_MAX;

/// `Vitals::magic` of an initialised page.
pub const VITALS_MAGIC: u32 = 0x5359_4e56; // "SYNV"

/// Sentinel of [`Vitals::entities`] meaning "not reported".
const NO_ENTITIES: u64 = u64::MAX;

/// The child's heartbeat counter and metrics.
#[repr(C)]
#[derive(Debug)]
pub struct Vitals {
    /// [`VITALS_MAGIC`], set by the runtime.
    pub magic: AtomicU32,
    /// [`crate::PROTOCOL_VERSION`], set by the runtime.
    pub version: AtomicU32,
    /// Incremented by every heartbeat.
    pub beats: AtomicU64,
    /// Main-loop iterations.
    pub tick: AtomicU64,
    /// Entities, or `u64::MAX` when not reported.
    pub entities: AtomicU64,
    /// Duration of the last iteration, µs.
    pub tick_us: AtomicU32,
    /// Longest iteration since the runtime last looked, µs.
    pub tick_us_max: AtomicU32,
    /// Iterations that overran their period.
    pub overruns: AtomicU64,
    /// The node's lease, `CLOCK_MONOTONIC` ns ([`crate::audio::monotonic_ns`]): a node of an
    /// agent on another host, whose agent keeps it in the future while the runtime answers,
    /// ends itself once it has passed ([`Vitals::lease_expired`]), so a node cut off from
    /// the runtime never runs beside its replacement. 0: no lease (a local node).
    pub lease_until_ns: AtomicU64,
}

impl Vitals {
    /// A heartbeat, with the main loop's metrics when it has them.
    pub fn beat(&self, metrics: Option<&NodeMetrics>) {
        if let Some(m) = metrics {
            self.tick.store(m.tick, Ordering::Relaxed);
            self.entities
                .store(m.entities.unwrap_or(NO_ENTITIES), Ordering::Relaxed);
            self.tick_us.store(m.tick_us, Ordering::Relaxed);
            self.tick_us_max
                .fetch_max(m.tick_us_max.max(m.tick_us), Ordering::Relaxed);
            self.overruns.store(m.overruns, Ordering::Relaxed);
        }
        self.beats.fetch_add(1, Ordering::Release);
    }

    /// Set the lease (for the agent).
    pub fn renew_lease(&self, until_ns: u64) {
        self.lease_until_ns.fetch_max(until_ns, Ordering::Release);
    }

    /// The lease, if the node has one.
    pub fn lease(&self) -> Option<u64> {
        Some(self.lease_until_ns.load(Ordering::Acquire)).filter(|l| *l != 0)
    }

    /// Whether the node has a lease and it has passed at `now_ns`.
    pub fn lease_expired(&self, now_ns: u64) -> bool {
        self.lease().is_some_and(|until| now_ns >= until)
    }

    /// The heartbeat counter.
    pub fn beats(&self) -> u64 {
        self.beats.load(Ordering::Acquire)
    }

    /// The metrics last reported, `None` before any. Resets the running maximum.
    pub fn metrics(&self) -> Option<NodeMetrics> {
        let tick = self.tick.load(Ordering::Relaxed);
        let entities = self.entities.load(Ordering::Relaxed);
        if tick == 0 && entities == 0 {
            return None;
        }
        Some(NodeMetrics {
            tick,
            entities: (entities != NO_ENTITIES).then_some(entities),
            tick_us: self.tick_us.load(Ordering::Relaxed),
            tick_us_max: self.tick_us_max.swap(0, Ordering::Relaxed),
            overruns: self.overruns.load(Ordering::Relaxed),
        })
    }
}

/// Where the figure slots start.
pub const FIGURES_OFFSET: usize = 1024;
/// Most figures one node reports.
pub const MAX_FIGURES: usize = 24;
/// Longest figure name, bytes.
pub const MAX_FIGURE_NAME: usize = 48;

const SLOT_EMPTY: u32 = 0;
const SLOT_WRITING: u32 = 1;
const SLOT_READY: u32 = 2;

/// One named figure: a gauge (a value now: fps, queue depth) or a counter (grows: frames).
#[repr(C)]
#[derive(Debug)]
pub struct FigureSlot {
    state: AtomicU32,
    kind: AtomicU32,
    /// `f64` bits.
    value: AtomicU64,
    name: [AtomicU64; MAX_FIGURE_NAME / 8],
}

/// Where the exit note starts.
pub const EXIT_NOTE_OFFSET: usize = 3072;
/// Largest exit note, bytes (with its length).
pub const EXIT_NOTE_MAX: usize = 1024;

/// Where the status note starts.
pub const STATUS_NOTE_OFFSET: usize = 2560;
/// Largest status note, bytes.
pub const STATUS_NOTE_MAX: usize = 480;

/// The status note: a sentence the child rewrites at will and the runtime reads at any time.
/// A seqlock (odd while written) over atomic words, so a racing read is detected, never torn.
#[repr(C)]
#[derive(Debug)]
pub struct StatusNote {
    seq: AtomicU32,
    len: AtomicU32,
    words: [AtomicU64; STATUS_NOTE_MAX / 8],
}

impl StatusNote {
    /// Replace the note (for the child; one writer). Cut at a character boundary to fit; an
    /// empty note clears it.
    pub fn write(&self, note: &str) {
        let mut end = note.len().min(STATUS_NOTE_MAX);
        while !note.is_char_boundary(end) {
            end -= 1;
        }
        let mut bytes = [0u8; STATUS_NOTE_MAX];
        bytes[..end].copy_from_slice(&note.as_bytes()[..end]);
        let seq = self.seq.load(Ordering::Relaxed);
        self.seq.store(seq.wrapping_add(1) | 1, Ordering::Relaxed);
        std::sync::atomic::fence(Ordering::Release);
        for (w, chunk) in self.words.iter().zip(bytes.chunks(8)) {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            w.store(u64::from_le_bytes(word), Ordering::Relaxed);
        }
        self.len.store(end as u32, Ordering::Relaxed);
        self.seq
            .store((seq.wrapping_add(1) | 1).wrapping_add(1), Ordering::Release);
    }

    /// The note, if any (for the runtime): `None` when empty, being written, or not UTF-8.
    pub fn read(&self) -> Option<String> {
        let before = self.seq.load(Ordering::Acquire);
        if before % 2 == 1 {
            return None;
        }
        let len = (self.len.load(Ordering::Relaxed) as usize).min(STATUS_NOTE_MAX);
        let mut bytes = Vec::with_capacity(STATUS_NOTE_MAX);
        for w in &self.words {
            bytes.extend_from_slice(&w.load(Ordering::Relaxed).to_le_bytes());
        }
        std::sync::atomic::fence(Ordering::Acquire);
        if self.seq.load(Ordering::Relaxed) != before || len == 0 {
            return None;
        }
        bytes.truncate(len);
        String::from_utf8(bytes).ok()
    }
}

const _: () = assert!(FIGURES_OFFSET + MAX_FIGURES * size_of::<FigureSlot>() <= STATUS_NOTE_OFFSET);
const _: () = assert!(STATUS_NOTE_OFFSET + size_of::<StatusNote>() <= EXIT_NOTE_OFFSET);
const _: () = assert!(EXIT_NOTE_OFFSET + EXIT_NOTE_MAX <= PANIC_OFFSET);
const _: () = assert!(size_of::<Vitals>() <= FIGURES_OFFSET);

impl FigureSlot {
    /// Set a gauge's value.
    pub fn set(&self, value: f64) {
        self.value.store(value.to_bits(), Ordering::Relaxed);
    }

    /// Add to a counter.
    pub fn add(&self, by: f64) {
        let _ = self
            .value
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + by).to_bits())
            });
    }

    fn name(&self) -> Option<String> {
        let mut bytes = Vec::with_capacity(MAX_FIGURE_NAME);
        for w in &self.name {
            bytes.extend_from_slice(&w.load(Ordering::Relaxed).to_le_bytes());
        }
        let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
        let name = std::str::from_utf8(&bytes[..end]).ok()?;
        crate::status::validate_figure_name(name).ok()?;
        Some(name.to_owned())
    }
}

/// Why a page could not be created or mapped.
#[derive(Debug, thiserror::Error)]
#[error("node page: {what}: {source}")]
pub struct PageError {
    what: &'static str,
    #[source]
    source: std::io::Error,
}

impl From<PageError> for std::io::Error {
    /// The OS error, its kind and errno kept, with the step in its message.
    fn from(e: PageError) -> std::io::Error {
        match e.source.raw_os_error() {
            Some(errno) => std::io::Error::from_raw_os_error(errno),
            None => std::io::Error::new(e.source.kind(), format!("{}: {}", e.what, e.source)),
        }
    }
}

fn err(what: &'static str) -> impl FnOnce(rustix::io::Errno) -> PageError {
    move |e| PageError {
        what,
        source: e.into(),
    }
}

/// A mapping of a node page.
#[derive(Debug)]
pub struct NodePage {
    ptr: NonNull<u8>,
}

// SAFETY: the mapping is plain shared memory accessed only through atomics (`Vitals`) or
// copied out by value; it may be used from any thread.
unsafe impl Send for NodePage {}
// SAFETY: as above.
unsafe impl Sync for NodePage {}

impl NodePage {
    /// Create a page file for a new incarnation: a memfd of [`PAGE_SIZE`] bytes, sealed against
    /// resizing, with initialised vitals. Returns the mapping and the fd to hand to the child.
    pub fn create(name: &str) -> Result<(NodePage, std::os::fd::OwnedFd), PageError> {
        use rustix::fs::{MemfdFlags, SealFlags};
        let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
            .map_err(err("memfd_create"))?;
        rustix::fs::ftruncate(&fd, PAGE_SIZE as u64).map_err(err("sizing"))?;
        rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)
            .map_err(err("sealing"))?;
        let page = NodePage::map(fd.as_fd())?;
        page.vitals().magic.store(VITALS_MAGIC, Ordering::Relaxed);
        page.vitals()
            .version
            .store(crate::PROTOCOL_VERSION, Ordering::Release);
        Ok((page, fd))
    }

    /// Map the page file `fd` (for the child: its inherited fd; checked for size).
    pub fn map(fd: BorrowedFd<'_>) -> Result<NodePage, PageError> {
        let size = rustix::fs::fstat(fd).map_err(err("fstat"))?.st_size;
        if (size as usize) < PAGE_SIZE {
            return Err(PageError {
                what: "size check",
                source: std::io::Error::other(format!(
                    "{size} bytes, expected at least {PAGE_SIZE}"
                )),
            });
        }
        // SAFETY: a fresh shared mapping of an fd we were handed; nothing else is mapped at the
        // address the kernel picks. The file cannot shrink below PAGE_SIZE (sealed by the
        // runtime; checked above for the child), so every access within PAGE_SIZE is valid.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                PAGE_SIZE,
                rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                rustix::mm::MapFlags::SHARED,
                fd,
                0,
            )
        }
        .map_err(err("mmap"))?;
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or(PageError {
            what: "mmap",
            source: std::io::Error::other("null mapping"),
        })?;
        Ok(NodePage { ptr })
    }

    fn figure_slots(&self) -> &[FigureSlot] {
        // SAFETY: FIGURES_OFFSET + MAX_FIGURES slots lie within the mapping (checked at compile
        // time above), 8-byte aligned (the mapping is page-aligned, the offset and the slot
        // size multiples of 8); FigureSlot is repr(C) atomics, valid for any bit pattern.
        unsafe {
            std::slice::from_raw_parts(
                self.ptr.as_ptr().add(FIGURES_OFFSET).cast::<FigureSlot>(),
                MAX_FIGURES,
            )
        }
    }

    /// The slot number of the figure `name` of `kind`, claiming a free slot the first time
    /// (for the child). `None` when all [`MAX_FIGURES`] are taken or the name is invalid.
    pub fn figure(&self, name: &str, kind: crate::status::FigureKind) -> Option<usize> {
        crate::status::validate_figure_name(name).ok()?;
        let slots = self.figure_slots();
        if let Some(existing) = slots.iter().position(|s| {
            s.state.load(Ordering::Acquire) == SLOT_READY && s.name().as_deref() == Some(name)
        }) {
            return Some(existing);
        }
        let index = slots.iter().position(|s| {
            s.state
                .compare_exchange(
                    SLOT_EMPTY,
                    SLOT_WRITING,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_ok()
        })?;
        let slot = &slots[index];
        let mut bytes = [0u8; MAX_FIGURE_NAME];
        bytes[..name.len()].copy_from_slice(name.as_bytes());
        for (w, chunk) in slot.name.iter().zip(bytes.chunks(8)) {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            w.store(u64::from_le_bytes(word), Ordering::Relaxed);
        }
        slot.kind.store(kind as u32, Ordering::Relaxed);
        slot.value.store(0f64.to_bits(), Ordering::Relaxed);
        slot.state.store(SLOT_READY, Ordering::Release);
        Some(index)
    }

    /// Figure slot `index` (from [`NodePage::figure`]).
    pub fn figure_slot(&self, index: usize) -> Option<&FigureSlot> {
        self.figure_slots().get(index)
    }

    /// Every figure the child reported, in the order it declared them (for the runtime). A
    /// slot whose name is not valid is left out.
    pub fn figures(&self) -> Vec<crate::status::Figure> {
        self.figure_slots()
            .iter()
            .filter(|s| s.state.load(Ordering::Acquire) == SLOT_READY)
            .filter_map(|s| {
                Some(crate::status::Figure {
                    name: s.name()?,
                    kind: crate::status::FigureKind::from_raw(s.kind.load(Ordering::Relaxed)),
                    value: f64::from_bits(s.value.load(Ordering::Relaxed)),
                })
            })
            .collect()
    }

    /// The status note.
    pub fn status_note(&self) -> &StatusNote {
        // SAFETY: STATUS_NOTE_OFFSET + size_of::<StatusNote>() lies within the mapping (checked
        // at compile time above), 8-byte aligned; StatusNote is repr(C) atomics, valid for any
        // bit pattern and for shared access.
        unsafe {
            &*self
                .ptr
                .as_ptr()
                .add(STATUS_NOTE_OFFSET)
                .cast::<StatusNote>()
        }
    }

    /// The vitals at the start of the page.
    pub fn vitals(&self) -> &Vitals {
        // SAFETY: the mapping is page-aligned, at least PAGE_SIZE long and lives as long as
        // `self`; Vitals is repr(C) atomics, valid for any bit pattern and for shared access.
        unsafe { &*self.ptr.as_ptr().cast::<Vitals>() }
    }

    /// The panic report bytes the child left (MessagePack, not yet decoded), if any. Call it
    /// once the child is gone; a length that does not fit the area yields `None`.
    pub fn panic_bytes(&self) -> Option<Vec<u8>> {
        let mut len = [0u8; 4];
        // SAFETY: PANIC_OFFSET + PANIC_MAX <= PAGE_SIZE, all within the live mapping; the
        // writer is gone, so the copy races with nobody (and any bytes are acceptable input
        // to the defensive decoder).
        unsafe {
            std::ptr::copy_nonoverlapping(self.ptr.as_ptr().add(PANIC_OFFSET), len.as_mut_ptr(), 4)
        };
        let len = u32::from_be_bytes(len) as usize;
        if len == 0 || len > PANIC_MAX - 4 {
            return None;
        }
        let mut body = vec![0u8; len];
        // SAFETY: as above; `len` was checked against the area's size.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.ptr.as_ptr().add(PANIC_OFFSET + 4),
                body.as_mut_ptr(),
                len,
            )
        };
        Some(body)
    }

    /// Leave `note`, why this node is about to exit, for the runtime (for the child, just
    /// before it exits; cut at a character boundary to fit).
    pub fn write_exit_note(&self, note: &str) {
        let mut end = note.len().min(EXIT_NOTE_MAX - 4);
        while !note.is_char_boundary(end) {
            end -= 1;
        }
        let mut framed = Vec::with_capacity(end + 4);
        framed.extend_from_slice(&(end as u32).to_be_bytes());
        framed.extend_from_slice(&note.as_bytes()[..end]);
        // SAFETY: EXIT_NOTE_OFFSET + EXIT_NOTE_MAX <= PAGE_SIZE (checked at compile time), and
        // `framed` is at most EXIT_NOTE_MAX bytes; the runtime reads the area only once this
        // process is gone.
        unsafe {
            std::ptr::copy_nonoverlapping(
                framed.as_ptr(),
                self.ptr.as_ptr().add(EXIT_NOTE_OFFSET),
                framed.len(),
            )
        };
    }

    /// The exit note the child left, if any (for the runtime, once the child is gone). Bytes
    /// that are not UTF-8 are shown replaced; a length that does not fit gives `None`.
    pub fn exit_note(&self) -> Option<String> {
        let mut len = [0u8; 4];
        // SAFETY: within the mapping (as above); the writer is gone.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.ptr.as_ptr().add(EXIT_NOTE_OFFSET),
                len.as_mut_ptr(),
                4,
            )
        };
        let len = u32::from_be_bytes(len) as usize;
        if len == 0 || len > EXIT_NOTE_MAX - 4 {
            return None;
        }
        let mut body = vec![0u8; len];
        // SAFETY: as above; `len` was checked against the area's size.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.ptr.as_ptr().add(EXIT_NOTE_OFFSET + 4),
                body.as_mut_ptr(),
                len,
            )
        };
        Some(String::from_utf8_lossy(&body).into_owned())
    }

    /// Whether the runtime initialised this page for this protocol version.
    pub fn is_initialised(&self) -> bool {
        self.vitals().magic.load(Ordering::Relaxed) == VITALS_MAGIC
            && self.vitals().version.load(Ordering::Acquire) == crate::PROTOCOL_VERSION
    }
}

impl Drop for NodePage {
    fn drop(&mut self) {
        // SAFETY: `ptr` is the start of a mapping of PAGE_SIZE bytes made in `map`, and no
        // reference into it outlives `self`.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), PAGE_SIZE) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::FigureKind;

    #[test]
    fn figures_cross_two_mappings_in_declaration_order() {
        let (runtime_side, fd) = NodePage::create("test-page").unwrap();
        let child_side = NodePage::map(fd.as_fd()).unwrap();
        assert!(runtime_side.figures().is_empty());
        let fps = child_side.figure("fps", FigureKind::Gauge).unwrap();
        let frames = child_side.figure("frames", FigureKind::Counter).unwrap();
        assert_eq!(
            child_side.figure("fps", FigureKind::Gauge),
            Some(fps),
            "the same name, the same slot"
        );
        child_side.figure_slot(fps).unwrap().set(59.5);
        child_side.figure_slot(frames).unwrap().add(2.0);
        child_side.figure_slot(frames).unwrap().add(3.0);
        let seen = runtime_side.figures();
        let brief: Vec<(&str, FigureKind, f64)> = seen
            .iter()
            .map(|f| (f.name.as_str(), f.kind, f.value))
            .collect();
        assert_eq!(
            brief,
            [
                ("fps", FigureKind::Gauge, 59.5),
                ("frames", FigureKind::Counter, 5.0)
            ]
        );
    }

    #[test]
    fn an_exit_note_crosses_to_the_runtime_and_a_bad_length_reads_as_none() {
        let (runtime_side, fd) = NodePage::create("test-page").unwrap();
        let child_side = NodePage::map(fd.as_fd()).unwrap();
        assert_eq!(runtime_side.exit_note(), None);
        child_side.write_exit_note("settings: `rate`: expected u32");
        assert_eq!(
            runtime_side.exit_note().as_deref(),
            Some("settings: `rate`: expected u32")
        );
        let long = "é".repeat(EXIT_NOTE_MAX);
        child_side.write_exit_note(&long);
        let cut = runtime_side.exit_note().unwrap();
        assert!(cut.len() <= EXIT_NOTE_MAX - 4 && cut.chars().all(|c| c == 'é'));
        rustix::io::pwrite(&fd, &u32::MAX.to_be_bytes(), EXIT_NOTE_OFFSET as u64).unwrap();
        assert_eq!(runtime_side.exit_note(), None);
    }

    #[test]
    fn a_status_note_crosses_while_the_child_runs_and_is_replaced_and_cleared() {
        let (runtime_side, fd) = NodePage::create("test-page").unwrap();
        let child_side = NodePage::map(fd.as_fd()).unwrap();
        assert_eq!(runtime_side.status_note().read(), None);
        child_side
            .status_note()
            .write("output: null (no audio device)");
        assert_eq!(
            runtime_side.status_note().read().as_deref(),
            Some("output: null (no audio device)")
        );
        child_side.status_note().write("output: device");
        assert_eq!(
            runtime_side.status_note().read().as_deref(),
            Some("output: device")
        );
        let long = "é".repeat(STATUS_NOTE_MAX);
        child_side.status_note().write(&long);
        let cut = runtime_side.status_note().read().unwrap();
        assert!(cut.len() <= STATUS_NOTE_MAX && long.starts_with(&cut));
        child_side.status_note().write("");
        assert_eq!(runtime_side.status_note().read(), None);
    }

    #[test]
    fn figures_are_bounded_and_a_garbled_name_is_left_out() {
        let (page, _fd) = NodePage::create("test-page").unwrap();
        assert_eq!(page.figure("bad name", FigureKind::Gauge), None);
        assert_eq!(
            page.figure(&"x".repeat(MAX_FIGURE_NAME + 1), FigureKind::Gauge),
            None
        );
        for i in 0..MAX_FIGURES {
            assert!(page.figure(&format!("f{i}"), FigureKind::Counter).is_some());
        }
        assert_eq!(page.figure("one-too-many", FigureKind::Gauge), None);
        // A child writes bytes that are not a name into a slot: the runtime skips it.
        page.figure_slots()[3].name[0]
            .store(u64::from_le_bytes(*b"\xff\xfe bad\0\0"), Ordering::Relaxed);
        assert_eq!(page.figures().len(), MAX_FIGURES - 1);
    }

    #[test]
    fn beats_and_metrics_cross_two_mappings() {
        let (runtime_side, fd) = NodePage::create("test-page").unwrap();
        let child_side = NodePage::map(fd.as_fd()).unwrap();
        assert!(child_side.is_initialised());
        assert_eq!(runtime_side.vitals().metrics(), None);
        child_side.vitals().beat(None);
        child_side.vitals().beat(Some(&NodeMetrics {
            tick: 9,
            entities: Some(4),
            tick_us: 12,
            tick_us_max: 30,
            overruns: 1,
        }));
        assert_eq!(runtime_side.vitals().beats(), 2);
        let m = runtime_side.vitals().metrics().unwrap();
        assert_eq!(
            (m.tick, m.entities, m.tick_us_max, m.overruns),
            (9, Some(4), 30, 1)
        );
        assert_eq!(
            runtime_side.vitals().metrics().unwrap().tick_us_max,
            0,
            "the maximum resets when read"
        );
    }

    #[test]
    fn panic_reports_are_length_checked() {
        let (page, fd) = NodePage::create("test-page").unwrap();
        assert_eq!(page.panic_bytes(), None);
        rustix::io::pwrite(&fd, &crate::wire::frame(b"report"), PANIC_OFFSET as u64).unwrap();
        assert_eq!(page.panic_bytes().as_deref(), Some(&b"report"[..]));
        rustix::io::pwrite(&fd, &u32::MAX.to_be_bytes(), PANIC_OFFSET as u64).unwrap();
        assert_eq!(page.panic_bytes(), None);
    }

    #[test]
    fn the_page_cannot_be_shrunk() {
        let (_page, fd) = NodePage::create("test-page").unwrap();
        assert!(
            rustix::fs::ftruncate(&fd, 0).is_err(),
            "a child must not be able to SIGBUS the runtime"
        );
    }
}
