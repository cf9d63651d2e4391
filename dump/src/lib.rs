//! Native crash dumps of Syncra nodes, written out of process as Crashpad writes them.
//!
//! A node's crash handler (in `syncra-node`) catches SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT
//! and SIGTRAP, sends the crashing thread's context ([`CrashContext`]) over the crash socket it
//! inherited ([`syncra_protocol::boot::CRASH_FD`], a `SOCK_SEQPACKET` socketpair made by
//! [`socketpair`]) and waits. Here, [`serve`] reads that one message, checks it against the
//! process it knows (the pid is its own, never the message's; the thread must be one of the
//! process's), writes the minidump by ptrace (`minidump-writer`) into the dump directory —
//! bounded in size ([`Limits::max_bytes`]) and in count per node ([`Limits::keep`]) — and
//! answers, so the process goes on to die by its signal. The node writes nothing itself: a
//! process with a corrupt heap, or a sandbox that lets it write nowhere, is dumped all the
//! same.
//!
//! [`analyse`] reads a dump back: `minidump-processor` walks the crashing thread's stack (CFI
//! from the binaries on disk, by `framehop`), and [`Symbols`] names each frame from the
//! binaries' debug info (`addr2line`; the symbol table when there is no DWARF).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use minidump::Module;
use minidump_unwind::{FileError, FileKind, FillSymbolError, FrameSymbolizer, FrameWalker};
use minidump_writer::crash_context::CrashContext;
use syncra_protocol::crash::{DumpInfo, StackFrame};

/// How many dumps to keep and how large one may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Dumps kept per node: the oldest go when a new one is written (at least 1).
    pub keep: usize,
    /// Largest dump written, bytes: a larger one is removed and the crash record says so.
    pub max_bytes: u64,
}

/// Frames of the crashing thread reported at most.
pub const MAX_FRAMES: usize = 64;

/// How long after its process ended a dump still being written is waited for.
const DUMP_WAIT: Duration = Duration::from_secs(30);

/// How long after its process ended an unread crash message is looked for.
const UNREAD_GRACE: Duration = Duration::from_millis(200);

/// A crash socketpair: (ours, the node's), both close-on-exec (the spawn path places the
/// node's end at its fd number).
pub fn socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    rustix::net::socketpair(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::SEQPACKET,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )
    .map_err(io::Error::from)
}

/// Whose crash socket is served, and where its dumps go.
#[derive(Debug, Clone)]
pub struct Target {
    /// The process: the only one ever dumped through this socket.
    pub pid: u32,
    /// The dump directory (made 0700 when missing).
    pub dir: PathBuf,
    /// The node's file stem (`world-main`): dumps are `<time>_<stem>_<pid>.dmp`.
    pub stem: String,
    /// Bounds.
    pub limits: Limits,
}

/// What came of a crash handler's request.
#[derive(Debug, Clone, PartialEq)]
pub struct Dumped {
    /// The minidump, if one was kept.
    pub path: Option<PathBuf>,
    /// Its size.
    pub bytes: u64,
    /// From the request to the dump written.
    pub took: Duration,
    /// Why none was kept.
    pub error: Option<String>,
}

impl Dumped {
    fn failed(took: Duration, why: String) -> Dumped {
        Dumped {
            path: None,
            bytes: 0,
            took,
            error: Some(why),
        }
    }

    /// As a crash record carries it (its stack still to be read: [`analyse`]).
    pub fn info(&self) -> DumpInfo {
        DumpInfo {
            path: self.path.as_ref().map(|p| p.display().to_string()),
            bytes: self.bytes,
            write_ms: self.took.as_millis() as u64,
            error: self.error.clone(),
            ..DumpInfo::default()
        }
    }
}

/// A crash socket being served: [`Watch::finish`] once its process has ended.
#[derive(Debug)]
pub struct Watch {
    task: tokio::task::JoinHandle<Option<Dumped>>,
    busy: Arc<AtomicBool>,
}

impl Watch {
    /// The dump its process asked for before it ended, if it asked: waits for a dump being
    /// written (bounded), looks briefly for a request not yet read, and otherwise stops serving.
    pub async fn finish(mut self) -> Option<Dumped> {
        let grace = tokio::time::sleep(UNREAD_GRACE);
        tokio::pin!(grace);
        tokio::select! {
            r = &mut self.task => return r.ok().flatten(),
            () = &mut grace => {}
        }
        if !self.busy.load(Ordering::Acquire) {
            self.task.abort();
            return None;
        }
        match tokio::time::timeout(DUMP_WAIT, &mut self.task).await {
            Ok(r) => r.ok().flatten(),
            Err(_) => {
                self.task.abort();
                Some(Dumped::failed(
                    DUMP_WAIT,
                    format!("its dump was not written within {} s", DUMP_WAIT.as_secs()),
                ))
            }
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serve `ours`, the runtime's end of `target`'s crash socket, until its process sends a
/// crash context (then dump it, answer, and end) or its end closes. Needs a tokio runtime.
pub fn serve(ours: OwnedFd, target: Target) -> io::Result<Watch> {
    rustix::io::ioctl_fionbio(&ours, true)?;
    // SAFETY: the socket is moved into the AsyncFd, which keeps it open and unchanged until it
    // drops it.
    let fd = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(ours, tokio::io::Interest::READABLE)
    }
    .map_err(|e| e.into_parts().1)?;
    let busy = Arc::new(AtomicBool::new(false));
    let task = tokio::spawn(run(fd, target, busy.clone()));
    Ok(Watch { task, busy })
}

async fn run(
    fd: tokio::io::unix::AsyncFd<OwnedFd>,
    target: Target,
    busy: Arc<AtomicBool>,
) -> Option<Dumped> {
    let size = std::mem::size_of::<CrashContext>();
    let mut buf = vec![0u8; size + 1];
    let n = loop {
        let mut ready = fd.readable().await.ok()?;
        match ready.try_io(|fd| recv_message(fd.get_ref(), &mut buf)) {
            Ok(Ok(0)) => return None,
            Ok(Ok(n)) => break n,
            Ok(Err(e)) => {
                tracing::debug!(pid = target.pid, error = %e, "crash socket");
                return None;
            }
            Err(_would_block) => continue,
        }
    };
    busy.store(true, Ordering::Release);
    let started = Instant::now();
    let dumped = if n != size {
        Dumped::failed(
            started.elapsed(),
            format!(
                "its crash handler sent {n} bytes, not a crash context ({size} bytes): no dump"
            ),
        )
    } else {
        match CrashContext::from_bytes(&buf[..n]) {
            Some(context) => {
                let t = target.clone();
                tokio::task::spawn_blocking(move || write_dump(&t, context, started))
                    .await
                    .unwrap_or_else(|e| {
                        Dumped::failed(started.elapsed(), format!("writing its dump failed: {e}"))
                    })
            }
            None => Dumped::failed(started.elapsed(), "an unreadable crash context".into()),
        }
    };
    match &dumped.error {
        None => {
            tracing::info!(pid = target.pid, path = ?dumped.path, bytes = dumped.bytes, ms = dumped.took.as_millis() as u64, "minidump written")
        }
        Some(e) => tracing::warn!(pid = target.pid, "no minidump: {e}"),
    }
    // Let the crash handler go on (to die by its signal).
    let _ = rustix::net::send(
        fd.get_ref(),
        b"d",
        rustix::net::SendFlags::DONTWAIT | rustix::net::SendFlags::NOSIGNAL,
    );
    Some(dumped)
}

/// One message; its whole length even when longer than `buf` (then it is cut).
fn recv_message(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of its length; the fd is open for the call.
    let n = unsafe {
        libc::recv(
            std::os::fd::AsRawFd::as_raw_fd(fd),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT | libc::MSG_TRUNC,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Write the minidump of `target.pid`, blaming the thread `context` names.
fn write_dump(target: &Target, mut context: CrashContext, started: Instant) -> Dumped {
    let pid = target.pid;
    let tid = context.tid;
    let failed = |why: String| Dumped::failed(started.elapsed(), why);
    if !alive(pid) {
        return failed("the process ended before its dump could be written".into());
    }
    if tid <= 0 || !Path::new(&format!("/proc/{pid}/task/{tid}")).exists() {
        return failed(format!(
            "its crash handler named thread {tid}, which is not one of the process's own: no dump"
        ));
    }
    // The process is the one this socket was made for, whatever the message says.
    context.pid = pid as i32;
    if let Err(e) = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&target.dir)
    {
        return failed(format!("creating {}: {e}", target.dir.display()));
    }
    prune(
        &target.dir,
        &target.stem,
        target.limits.keep.saturating_sub(1),
    );
    let stamp = humantime::format_rfc3339_millis(SystemTime::now())
        .to_string()
        .replace(':', "-");
    let path = target
        .dir
        .join(format!("{stamp}_{}_{pid}.dmp", target.stem));
    let file = match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) => return failed(format!("creating {}: {e}", path.display())),
    };
    let mut out = Bounded {
        file,
        pos: 0,
        end: 0,
        max: target.limits.max_bytes,
        over: false,
    };
    let mut config = minidump_writer::minidump_writer::MinidumpWriterConfig::new(pid as i32, tid);
    config
        .set_crash_context(minidump_writer::CrashContextExt { inner: context })
        .set_minidump_size_limit(target.limits.max_bytes);
    let written = config.write(&mut out);
    // The process waits in its crash handler until it is answered: gone by now, it was
    // killed during the dump, which may then hold anything (a dump "succeeds" of a dying
    // process) — not kept.
    let alive = alive(pid);
    match written {
        Ok(_) if !out.over && alive => Dumped {
            path: Some(path),
            bytes: out.end,
            took: started.elapsed(),
            error: None,
        },
        result => {
            let _ = std::fs::remove_file(&path);
            failed(if out.over {
                format!(
                    "its minidump passed the bound of {} bytes (crash_dump_max_bytes) and was removed",
                    target.limits.max_bytes
                )
            } else if !alive {
                "the process ended while its dump was being written".into()
            } else {
                format!(
                    "writing its minidump failed: {}",
                    result.err().map(|e| e.to_string()).unwrap_or_default()
                )
            })
        }
    }
}

/// Whether process `pid` still runs (not a zombie waiting to be reaped).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let (_, rest) = stat.rsplit_once(')')?;
            rest.trim_start().chars().next()
        })
        .is_some_and(|state| !matches!(state, 'Z' | 'X' | 'x'))
}

/// Remove the oldest dumps of `stem` in `dir` until `keep` are left.
fn prune(dir: &Path, stem: &str, keep: usize) {
    let mut mine: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| dump_stem(n))
                .is_some_and(|s| s == stem)
        })
        .collect();
    // Names start with the time: sorted by name is sorted by age.
    mine.sort();
    let excess = mine.len().saturating_sub(keep);
    for p in mine.into_iter().take(excess) {
        if let Err(e) = std::fs::remove_file(&p) {
            tracing::warn!(path = %p.display(), error = %e, "could not remove an old minidump");
        }
    }
}

/// The node stem of a dump file's name (`<time>_<stem>_<pid>.dmp`).
fn dump_stem(name: &str) -> Option<&str> {
    let rest = name.strip_suffix(".dmp")?;
    let (_, rest) = rest.split_once('_')?;
    let (stem, pid) = rest.rsplit_once('_')?;
    pid.parse::<u32>().ok()?;
    Some(stem)
}

/// A file that refuses to grow past `max` bytes.
struct Bounded {
    file: File,
    pos: u64,
    end: u64,
    max: u64,
    over: bool,
}

impl Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.pos.saturating_add(buf.len() as u64) > self.max {
            self.over = true;
            return Err(io::Error::new(
                io::ErrorKind::FileTooLarge,
                "the dump passed its bound",
            ));
        }
        let n = self.file.write(buf)?;
        self.pos += n as u64;
        self.end = self.end.max(self.pos);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Seek for Bounded {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        self.pos = self.file.seek(to)?;
        Ok(self.pos)
    }
}

/// What a minidump says about its crash.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Analysis {
    /// `SIGSEGV / SEGV_MAPERR at 0x0`.
    pub crash: Option<String>,
    /// The crashing thread's name.
    pub thread: Option<String>,
    /// Its stack, innermost first (inlined calls as frames of their own), at most
    /// [`MAX_FRAMES`].
    pub stack: Vec<StackFrame>,
}

impl Analysis {
    /// Fold into what a crash record carries.
    pub fn fill(self, info: &mut DumpInfo) {
        info.crash = self.crash;
        info.thread = self.thread;
        info.stack = self.stack;
    }
}

/// Read the minidump at `path`: the crash and its thread's stack, symbolized from the binaries
/// (as the dump names them, on this host). CPU-bound: run it off any latency-sensitive thread.
pub async fn analyse(path: &Path) -> Result<Analysis, String> {
    let dump = minidump::Minidump::read_path(path).map_err(|e| format!("reading it: {e}"))?;
    let system = dump
        .get_stream::<minidump::MinidumpSystemInfo>()
        .map_err(|e| format!("its system info: {e}"))?;
    let modules = dump
        .get_stream::<minidump::MinidumpModuleList>()
        .map_err(|e| format!("its module list: {e}"))?;
    let unwind = minidump_unwind::debuginfo::DebugInfoSymbolProvider::new(&system, &modules).await;
    let provider = Symbols {
        unwind,
        modules: Mutex::new(HashMap::new()),
    };
    let state = minidump_processor::process_minidump(&dump, &provider)
        .await
        .map_err(|e| format!("processing it: {e}"))?;
    let crash = state
        .exception_info
        .as_ref()
        .map(|e| format!("{} at {:#x}", e.reason, e.address.0));
    let Some(thread) = state.requesting_thread.and_then(|i| state.threads.get(i)) else {
        return Ok(Analysis {
            crash,
            ..Analysis::default()
        });
    };
    let mut stack = Vec::new();
    for f in &thread.frames {
        let module = f.module.as_ref().map(|m| m.code_file().into_owned());
        for inline in &f.inlines {
            stack.push(StackFrame {
                address: f.instruction,
                function: Some(inline.function_name.clone()),
                file: inline.source_file_name.clone(),
                line: inline.source_line,
                module: module.clone(),
            });
        }
        stack.push(StackFrame {
            address: f.instruction,
            function: f.function_name.clone(),
            file: f.source_file_name.clone(),
            line: f.source_line,
            module,
        });
        if stack.len() >= MAX_FRAMES {
            stack.truncate(MAX_FRAMES);
            break;
        }
    }
    Ok(Analysis {
        crash,
        thread: thread.thread_name.clone(),
        stack,
    })
}

/// Symbols for `minidump-processor`: unwinding by CFI from the binaries on disk, names and
/// lines from their DWARF (or their symbol table) through `addr2line`.
struct Symbols {
    unwind: minidump_unwind::debuginfo::DebugInfoSymbolProvider,
    /// Each module's debug info by path (`None`: it could not be read), loaded on first use.
    modules: Mutex<HashMap<String, Option<ModuleSymbols>>>,
}

/// One module's debug info.
struct ModuleSymbols {
    loader: addr2line::Loader,
    /// Added to an offset from the module's load address to get an address in the file's own
    /// terms (the first segment's virtual address: 0 for position-independent code).
    bias: u64,
}

impl ModuleSymbols {
    fn load(path: &str) -> Option<ModuleSymbols> {
        let loader = addr2line::Loader::new(path).ok()?;
        // Only the headers are read for the segments (a binary with its debug info can be
        // tens of megabytes; addr2line maps it itself).
        let cache = object::ReadCache::new(File::open(path).ok()?);
        let object = object::File::parse(&cache).ok()?;
        use object::{Object, ObjectSegment};
        let bias = object
            .segments()
            .find(|s| s.file_range().0 == 0)
            .map(|s| s.address())
            .unwrap_or(0);
        Some(ModuleSymbols { loader, bias })
    }

    /// Fill `frame` from this module's debug info; false when nothing names its address.
    fn fill(&self, base: u64, frame: &mut (dyn FrameSymbolizer + Send)) -> bool {
        let probe = frame
            .get_instruction()
            .wrapping_sub(base)
            .wrapping_add(self.bias);
        let mut found: Vec<(Option<String>, Option<String>, Option<u32>)> = Vec::new();
        if let Ok(mut frames) = self.loader.find_frames(probe) {
            while let Ok(Some(f)) = frames.next() {
                let name = f
                    .function
                    .as_ref()
                    .and_then(|n| n.demangle().ok())
                    .map(|s| s.into_owned());
                let (file, line) = f
                    .location
                    .map(|l| (l.file.map(str::to_owned), l.line))
                    .unwrap_or((None, None));
                found.push((name, file, line));
            }
        }
        // Innermost first; the last is the function the address is physically in.
        match found.split_last() {
            Some(((Some(name), file, line), inlined)) => {
                frame.set_function(name, base, 0);
                if let (Some(file), Some(line)) = (file, line) {
                    frame.set_source_file(file, *line, base);
                }
                for (name, file, line) in inlined.iter().rev() {
                    if let Some(name) = name {
                        frame.add_inline_frame(name, file.as_deref(), *line);
                    }
                }
                true
            }
            _ => match self.loader.find_symbol(probe) {
                Some(name) => {
                    let name = addr2line::demangle_auto(name.into(), None);
                    frame.set_function(&name, base, 0);
                    true
                }
                None => false,
            },
        }
    }
}

#[async_trait::async_trait]
impl minidump_unwind::SymbolProvider for Symbols {
    async fn fill_symbol(
        &self,
        module: &(dyn Module + Sync),
        frame: &mut (dyn FrameSymbolizer + Send),
    ) -> Result<(), FillSymbolError> {
        let path = module.code_file().into_owned();
        let mut modules = self.modules.lock().unwrap_or_else(|e| e.into_inner());
        let symbols = modules
            .entry(path)
            .or_insert_with_key(|p| ModuleSymbols::load(p));
        match symbols {
            Some(s) if s.fill(module.base_address(), frame) => Ok(()),
            _ => Err(FillSymbolError {}),
        }
    }

    async fn walk_frame(
        &self,
        module: &(dyn Module + Sync),
        walker: &mut (dyn FrameWalker + Send),
    ) -> Option<()> {
        self.unwind.walk_frame(module, walker).await
    }

    async fn get_file_path(
        &self,
        module: &(dyn Module + Sync),
        kind: FileKind,
    ) -> Result<PathBuf, FileError> {
        self.unwind.get_file_path(module, kind).await
    }
}

/// Keep `fd` from being inherited by what the holder execs.
pub fn cloexec(fd: impl AsFd) -> io::Result<()> {
    rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::CLOEXEC).map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dump_names_give_back_their_node() {
        assert_eq!(
            dump_stem("2026-12-07T03-12-55.123Z_world-main_4242.dmp"),
            Some("world-main")
        );
        assert_eq!(
            dump_stem("2026-12-07T03-12-55.123Z_my_driver_7.dmp"),
            Some("my_driver")
        );
        assert_eq!(dump_stem("2026-12-07T03-12-55.123Z_world-main_x.dmp"), None);
        assert_eq!(dump_stem("notes.txt"), None);
    }

    #[test]
    fn only_the_newest_dumps_of_a_node_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let names = [
            "2026-01-01T00-00-01.000Z_renderer_10.dmp",
            "2026-01-01T00-00-02.000Z_renderer_11.dmp",
            "2026-01-01T00-00-03.000Z_renderer_12.dmp",
            "2026-01-01T00-00-01.500Z_audio_13.dmp",
            "2026-01-01T00-00-00.000Z_renderer.txt",
        ];
        for n in names {
            std::fs::write(dir.path().join(n), b"x").unwrap();
        }
        prune(dir.path(), "renderer", 1);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "2026-01-01T00-00-00.000Z_renderer.txt",
                "2026-01-01T00-00-01.500Z_audio_13.dmp",
                "2026-01-01T00-00-03.000Z_renderer_12.dmp",
            ]
        );
    }

    #[test]
    fn a_bounded_file_refuses_to_pass_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = Bounded {
            file: File::create(dir.path().join("d")).unwrap(),
            pos: 0,
            end: 0,
            max: 10,
            over: false,
        };
        b.write_all(b"12345678").unwrap();
        b.seek(SeekFrom::Start(2)).unwrap();
        b.write_all(b"ab").unwrap();
        assert_eq!(b.end, 8);
        assert!(b.write_all(b"xyzxyzxyz").is_err());
        assert!(b.over);
    }
}
