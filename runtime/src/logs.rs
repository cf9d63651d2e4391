//! Logs and crash records on disk.
//!
//! - The runtime's own log: `<log_dir>/runtime_<timestamp>.txt` ([`init_logging`]), beside the
//!   console.
//! - One log per child process, `<log_dir>/<node>_<pid>.log` (`world/arena` → `world-arena`),
//!   holding everything the child wrote to stdout and stderr — its tracing output included.
//!   The runtime keeps the last lines of stderr for the crash record.
//! - One crash record per failure, `<crash_dir>/<timestamp>_<node>_<pid>.json`.

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use syncra_protocol::crash::CrashRecord;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The runtime's default log filter (overridden by `SYNCRA_LOG`).
/// ractor_cluster warns on every closed session, which here is every child exit: only its
/// errors are shown.
pub const DEFAULT_LOG_FILTER: &str = "info,ractor=warn,ractor_cluster=error";

/// Lines of a child's stderr kept for its crash record.
pub const STDERR_TAIL_LINES: usize = 40;

/// Longest line written to a child's log; longer lines are cut.
const MAX_LINE: usize = 16 * 1024;

/// A timestamp usable in file names: `2026-11-22T04-12-00Z`.
pub(crate) fn file_timestamp(t: SystemTime, millis: bool) -> String {
    let s = if millis {
        humantime::format_rfc3339_millis(t).to_string()
    } else {
        humantime::format_rfc3339_seconds(t).to_string()
    };
    s.replace(':', "-")
}

/// Milliseconds since the Unix epoch.
pub(crate) fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Create `dir` (and parents) if needed.
pub(crate) fn ensure_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)
}

/// Log to stderr only (for `syncra agent`), filtered by `SYNCRA_LOG`.
pub fn init_console_logging() {
    let filter = EnvFilter::try_from_env("SYNCRA_LOG")
        .unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER));
    let _ = tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_filter(filter),
        )
        .try_init();
}

/// Install the runtime's tracing subscriber: the console (stderr) and
/// `<log_dir>/runtime_<timestamp>.txt`, both filtered by `SYNCRA_LOG`. Returns the log file's
/// path. Call it once, before starting the runtime; embedders with their own subscriber skip it.
pub fn init_logging(log_dir: &Path) -> std::io::Result<PathBuf> {
    ensure_dir(log_dir)?;
    let stamp = file_timestamp(SystemTime::now(), false);
    let mut path = log_dir.join(format!("runtime_{stamp}.txt"));
    let file = match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            path = log_dir.join(format!("runtime_{stamp}_{}.txt", std::process::id()));
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)?
        }
        Err(e) => return Err(e),
    };
    let filter = || {
        EnvFilter::try_from_env("SYNCRA_LOG").unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER))
    };
    use std::io::IsTerminal;
    let console = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .compact()
        .with_filter(filter());
    let file = tracing_subscriber::fmt::layer()
        .with_writer(Mutex::new(file))
        .with_ansi(false)
        .with_filter(filter());
    let _ = tracing_subscriber::registry()
        .with(console)
        .with(file)
        .try_init();
    Ok(path)
}

use tracing_subscriber::Layer as _;

/// A child's captured output: the log file being written and its stderr tail.
#[derive(Debug)]
pub(crate) struct Capture {
    tail: Arc<Mutex<VecDeque<String>>>,
    done: tokio::task::JoinHandle<()>,
}

impl Capture {
    /// Wait (up to `timeout`) for the child's pipes to close, then return its stderr tail. A
    /// grandchild holding the pipes open only cuts the wait short; logging goes on.
    pub(crate) async fn finish(self, timeout: Duration) -> Vec<String> {
        let _ = tokio::time::timeout(timeout, self.done).await;
        self.tail
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}

/// Told each line a child writes (without its end): an agent forwards them to the runtime.
pub(crate) type LineSink = Arc<dyn Fn(&str) + Send + Sync>;

/// Copy a child's stdout and stderr, line by line, into `path` (and to `lines`, if given).
pub(crate) fn capture(
    stdout: Option<impl AsyncRead + Unpin + Send + 'static>,
    stderr: Option<impl AsyncRead + Unpin + Send + 'static>,
    path: PathBuf,
    lines: Option<LineSink>,
) -> Capture {
    let tail = Arc::new(Mutex::new(VecDeque::with_capacity(STDERR_TAIL_LINES)));
    let task_tail = tail.clone();
    let task_path = path;
    let done = tokio::spawn(async move {
        let mut file = match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&task_path)
        {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::warn!(path = %task_path.display(), error = %e, "cannot open the child's log file; its output is dropped");
                None
            }
        };
        let mut out = stdout.map(BufReader::new);
        let mut err = stderr.map(BufReader::new);
        let (mut out_buf, mut err_buf) = (Vec::new(), Vec::new());
        while out.is_some() || err.is_some() {
            let (line, is_err) = tokio::select! {
                r = read_line(&mut out, &mut out_buf), if out.is_some() => (r, false),
                r = read_line(&mut err, &mut err_buf), if err.is_some() => (r, true),
            };
            let buf = if is_err { &mut err_buf } else { &mut out_buf };
            if !line {
                if is_err {
                    err = None
                } else {
                    out = None
                }
                continue;
            }
            if buf.len() - usize::from(buf.ends_with(b"\n")) > MAX_LINE {
                buf.truncate(MAX_LINE);
                buf.extend_from_slice(b" [line cut]\n");
            }
            if !buf.ends_with(b"\n") {
                buf.push(b'\n');
            }
            if let Some(f) = file.as_mut() {
                let _ = f.write_all(buf);
            }
            if let Some(sink) = &lines {
                sink(String::from_utf8_lossy(buf).trim_end_matches(['\n', '\r']));
            }
            if is_err {
                let text = String::from_utf8_lossy(buf).trim_end().to_owned();
                let mut t = task_tail.lock().unwrap_or_else(|p| p.into_inner());
                if t.len() == STDERR_TAIL_LINES {
                    t.pop_front();
                }
                t.push_back(text);
            }
            buf.clear();
        }
    });
    Capture { tail, done }
}

/// Read one line into `buf`; false at end of stream (or on a read error).
async fn read_line<R: AsyncRead + Unpin>(r: &mut Option<BufReader<R>>, buf: &mut Vec<u8>) -> bool {
    let Some(r) = r else {
        return std::future::pending().await;
    };
    // At most MAX_LINE bytes of a line are kept; the rest is read and dropped, so a child
    // writing an endless line costs the runtime no memory. Cancel-safe: bytes are moved into
    // `buf` before they are consumed, and the only await is `fill_buf`.
    loop {
        let chunk = match r.fill_buf().await {
            Ok(c) => c,
            Err(_) => return !buf.is_empty(),
        };
        if chunk.is_empty() {
            return !buf.is_empty();
        }
        let (line_end, used) = match chunk.iter().position(|b| *b == b'\n') {
            Some(i) => (true, i + 1),
            None => (false, chunk.len()),
        };
        let room = (MAX_LINE + 1).saturating_sub(buf.len());
        buf.extend_from_slice(&chunk[..used.min(room)]);
        r.consume(used);
        if line_end {
            return true;
        }
    }
}
/// Where the crash record of `record` goes: `<dir>/<timestamp>_<node>_<pid>.json`.
pub(crate) fn crash_record_path(dir: &Path, record: &CrashRecord, at: SystemTime) -> PathBuf {
    let pid = record
        .pid
        .map(|p| p.to_string())
        .unwrap_or_else(|| "nopid".into());
    dir.join(format!(
        "{}_{}_{}.json",
        file_timestamp(at, true),
        record.node.file_stem(),
        pid
    ))
}

/// Write `record` to `path` as JSON (atomically: a temporary file renamed into place).
pub(crate) fn write_crash_record(path: &Path, record: &CrashRecord) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        ensure_dir(dir)?;
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let json = serde_json::to_vec_pretty(record).map_err(std::io::Error::other)?;
    let written = std::fs::write(&tmp, json).and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        // A full disk leaves no half-written file behind.
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn capture_writes_both_streams_and_keeps_the_stderr_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x_1.log");
        let out: &[u8] = b"out one\nout two\n";
        let mut err_text = String::new();
        for i in 0..100 {
            err_text.push_str(&format!("err {i}\n"));
        }
        err_text.push_str("no newline at the end");
        let cap = capture(
            Some(out),
            Some(std::io::Cursor::new(err_text.into_bytes())),
            path.clone(),
            None,
        );
        let tail = cap.finish(Duration::from_secs(5)).await;
        assert_eq!(tail.len(), STDERR_TAIL_LINES);
        assert_eq!(tail.last().unwrap(), "no newline at the end");
        assert_eq!(tail[0], format!("err {}", 100 - STDERR_TAIL_LINES + 1));
        let log = std::fs::read_to_string(&path).unwrap();
        assert!(
            log.contains("out one\n") && log.contains("err 0\n") && log.ends_with("\n"),
            "{log}"
        );
    }

    #[tokio::test]
    async fn an_endless_line_is_cut_not_buffered() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("long_1.log");
        let mut text = vec![b'x'; 10 * MAX_LINE];
        text.extend_from_slice(b"\nafter\n");
        text.extend_from_slice(&vec![b'y'; MAX_LINE]);
        text.extend_from_slice(b"\n");
        let cap = capture(
            None::<&[u8]>,
            Some(std::io::Cursor::new(text)),
            path.clone(),
            None,
        );
        let tail = cap.finish(Duration::from_secs(5)).await;
        assert_eq!(tail.len(), 3);
        assert_eq!(
            tail[2].len(),
            MAX_LINE,
            "a line of exactly MAX_LINE bytes is whole"
        );
        assert!(
            tail[0].ends_with("[line cut]") && tail[0].len() < MAX_LINE + 20,
            "{}",
            tail[0].len()
        );
        assert_eq!(tail[1], "after");
    }

    #[test]
    fn file_timestamps_have_no_colons() {
        let s = file_timestamp(SystemTime::UNIX_EPOCH + Duration::from_millis(1500), true);
        assert_eq!(s, "1970-01-01T00-00-01.500Z");
    }
}
