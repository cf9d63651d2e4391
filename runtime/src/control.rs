//! The control socket: the server inside the runtime, and [`ControlClient`], which the CLI,
//! the tests and the benchmarks use to reach a running runtime.
//!
//! Only the user who runs the runtime can connect: the socket sits in the 0700 run directory
//! and every peer's uid is checked again on accept. Even that user's runaway scripts cannot
//! exhaust it: connections ([`MAX_CONNECTIONS`], the oldest idle one gives way to a newcomer),
//! subscribers ([`MAX_SUBSCRIBERS`]), request size ([`MAX_REQUEST`]) and the time to send a
//! request are bounded, and accepting uses the fd reserve when the process is out of fds.

use std::path::{Path, PathBuf};

use syncra_protocol::PROTOCOL_VERSION;
use syncra_protocol::control::{
    ControlError, ControlErrorKind, ControlFrame, ControlReply, ControlRequest, SOCKET_NAME,
};
use syncra_protocol::status::LifecycleEvent;
use syncra_protocol::wire::{self, DecodeError, MAX_CONTROL_FRAME};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

use crate::Runtime;
use crate::fdreserve::is_fd_shortage;

/// Most control connections open at once. A newcomer over the limit closes the oldest
/// connection that has waited `EVICTABLE_AFTER` (100 ms) without sending its request; when there is
/// none, the newcomer is refused as busy.
pub const MAX_CONNECTIONS: usize = 128;
/// How long a connection is safe from eviction while it has not sent its request (a real
/// client sends it as soon as it connects).
const EVICTABLE_AFTER: std::time::Duration = std::time::Duration::from_millis(100);
/// Most event subscribers at once (`syncra events`, [`ControlClient::subscribe`]).
pub const MAX_SUBSCRIBERS: usize = 32;
/// Largest request a client may send, bytes (requests are a few dozen bytes; replies may be
/// up to [`MAX_CONTROL_FRAME`]).
pub const MAX_REQUEST: usize = 64 * 1024;
/// How long a client may take to send its request after connecting.
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// How long a subscriber may take to read one event before it is dropped.
const WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Read one request frame, beginning with the bytes `have` already read from `s`.
async fn read_request(s: &mut UnixStream, mut have: Vec<u8>) -> std::io::Result<Option<Vec<u8>>> {
    let mut chunk = [0u8; 4096];
    let mut fill = async |have: &mut Vec<u8>, want: usize| -> std::io::Result<bool> {
        while have.len() < want {
            let n = s.read(&mut chunk[..(want - have.len()).min(4096)]).await?;
            if n == 0 {
                return Ok(false);
            }
            have.extend_from_slice(&chunk[..n]);
        }
        Ok(true)
    };
    if !fill(&mut have, 4).await? {
        return if have.is_empty() {
            Ok(None)
        } else {
            Err(std::io::ErrorKind::UnexpectedEof.into())
        };
    }
    let len = wire::check_len(
        "control request",
        u32::from_be_bytes([have[0], have[1], have[2], have[3]]),
        MAX_REQUEST,
    )
    .map_err(std::io::Error::other)?;
    if !fill(&mut have, 4 + len).await? {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    have.drain(..4);
    have.truncate(len);
    Ok(Some(have))
}

/// Whether `bytes` hold a whole frame.
fn is_whole_frame(bytes: &[u8]) -> bool {
    bytes.len() >= 4
        && bytes.len() - 4 >= u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize
}

async fn read_frame(s: &mut UnixStream, limit: usize) -> std::io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match s.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = wire::check_len("control", u32::from_be_bytes(len), limit)
        .map_err(std::io::Error::other)?;
    let mut buf = vec![0u8; len];
    s.read_exact(&mut buf).await?;
    Ok(Some(buf))
}

async fn write_frame(s: &mut UnixStream, payload: &[u8]) -> std::io::Result<()> {
    s.write_all(&wire::frame(payload)).await
}

/// Who is connected: the bounds on connections and subscribers.
#[derive(Debug, Default)]
struct Gate {
    state: std::sync::Mutex<GateState>,
}

#[derive(Debug, Default)]
struct GateState {
    open: usize,
    subscribers: usize,
    next: u64,
    /// Connections that have not sent their request, oldest first: since when, and their
    /// eviction.
    waiting:
        std::collections::VecDeque<(u64, std::time::Instant, tokio::sync::oneshot::Sender<()>)>,
}

/// One admitted connection; dropping it frees its place.
#[derive(Debug)]
struct Admitted {
    gate: std::sync::Arc<Gate>,
    id: u64,
    subscriber: bool,
}

impl Gate {
    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admit a connection, closing the oldest waiting one if the limit is reached; `None`:
    /// every place is taken by a connection that is being served.
    fn admit(
        self: &std::sync::Arc<Self>,
    ) -> Option<(Admitted, tokio::sync::oneshot::Receiver<()>)> {
        let mut st = self.lock();
        let now = std::time::Instant::now();
        if st.open >= MAX_CONNECTIONS {
            match st.waiting.front() {
                Some((_, since, _)) if now.duration_since(*since) >= EVICTABLE_AFTER => {}
                _ => return None,
            }
            if let Some((_, _, evict)) = st.waiting.pop_front() {
                let _ = evict.send(());
            }
        }
        st.open += 1;
        st.next += 1;
        let id = st.next;
        let (tx, rx) = tokio::sync::oneshot::channel();
        st.waiting.push_back((id, now, tx));
        Some((
            Admitted {
                gate: self.clone(),
                id,
                subscriber: false,
            },
            rx,
        ))
    }
}

impl Admitted {
    /// The request has arrived: this connection can no longer be evicted.
    fn served(&self) {
        self.gate.lock().waiting.retain(|(id, _, _)| *id != self.id);
    }

    /// Become an event subscriber, if there is room.
    fn subscribe(&mut self) -> Result<(), usize> {
        let mut st = self.gate.lock();
        if st.subscribers >= MAX_SUBSCRIBERS {
            return Err(st.subscribers);
        }
        st.subscribers += 1;
        self.subscriber = true;
        Ok(())
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut st = self.gate.lock();
        st.open -= 1;
        if self.subscriber {
            st.subscribers -= 1;
        }
        st.waiting.retain(|(id, _, _)| *id != self.id);
    }
}

/// The node whose process group `pid` belongs to: every node leads its own group, and its
/// sandbox keeps it and its children from leaving it (`setsid` and `setpgid` are refused).
fn node_of(runtime: &Runtime, pid: rustix::process::Pid) -> Option<String> {
    // A peer that is already gone (it connected and exited, for its parent to use the
    // socket) cannot be placed: refused like a node's.
    let Ok(group) = rustix::process::getpgid(Some(pid)) else {
        return Some("a process that exited before it could be identified".to_owned());
    };
    runtime
        .node_of_group(group.as_raw_nonzero().get() as u32)
        .map(|name| format!("node `{name}`"))
}

/// Serve the control socket until the task is aborted.
pub(crate) async fn serve(listener: UnixListener, runtime: Runtime) {
    let us = rustix::process::getuid();
    let gate = std::sync::Arc::new(Gate::default());
    // Refusals are logged once a second at most, with their count: a flood is one line.
    let (mut refused, mut last_warned) = (0u64, None::<std::time::Instant>);
    loop {
        let mut stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            // Out of fds: take one from the reserve, so that `syncra status` still answers.
            Err(e) if is_fd_shortage(&e) && runtime.fds().release_one() => continue,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a control connection failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                runtime.fds().refill();
                continue;
            }
        };
        match rustix::net::sockopt::socket_peercred(&stream) {
            // The runtime's own user, or root, but not one of the runtime's own nodes (or what
            // a node started): a sandboxed node shares the runtime's user, and Landlock does
            // not keep it from connecting to a socket by its path.
            Ok(cred) if cred.uid == us || cred.uid.is_root() => {
                if let Some(who) = node_of(&runtime, cred.pid) {
                    tracing::warn!(%who, pid = cred.pid.as_raw_nonzero().get(), "refused a control connection from a process of a node");
                    let reply = error(
                        ControlErrorKind::Forbidden,
                        format!("the processes of {who} may not control the runtime"),
                    );
                    tokio::spawn(async move {
                        let _ = tokio::time::timeout(
                            WRITE_TIMEOUT,
                            write_frame(&mut stream, &wire::encode(&reply)),
                        )
                        .await;
                    });
                    continue;
                }
            }
            _ => {
                tracing::warn!("refused a control connection from another user");
                continue;
            }
        }
        match gate.admit() {
            Some((admitted, evicted)) => {
                // A real client has usually sent its request by now: take it at once, so
                // that no flood of newcomers can evict it before its task runs.
                let mut have = vec![0u8; 4096];
                match stream.try_read(&mut have) {
                    Ok(n) => have.truncate(n),
                    Err(_) => have.clear(),
                }
                if is_whole_frame(&have) {
                    admitted.served();
                }
                let runtime = runtime.clone();
                tokio::spawn(async move {
                    handle(stream, have, &runtime, admitted, evicted).await;
                    runtime.fds().refill();
                });
            }
            None => {
                refused += 1;
                if last_warned.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(1)) {
                    tracing::warn!(
                        limit = MAX_CONNECTIONS,
                        refused,
                        "refused control connections: every place is taken"
                    );
                    (refused, last_warned) = (0, Some(std::time::Instant::now()));
                }
                let reply = error(
                    ControlErrorKind::Busy,
                    format!(
                        "the runtime is serving {MAX_CONNECTIONS} control connections (the most it takes); try again when some have closed"
                    ),
                );
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(
                        WRITE_TIMEOUT,
                        write_frame(&mut stream, &wire::encode(&reply)),
                    )
                    .await;
                });
            }
        }
    }
}

async fn handle(
    mut stream: UnixStream,
    have: Vec<u8>,
    runtime: &Runtime,
    mut admitted: Admitted,
    evicted: tokio::sync::oneshot::Receiver<()>,
) {
    let request = tokio::select! {
        r = tokio::time::timeout(REQUEST_TIMEOUT, read_request(&mut stream, have)) => match r {
            Ok(r) => r,
            Err(_) => {
                tracing::debug!("closed a control connection that sent no request within {} s", REQUEST_TIMEOUT.as_secs());
                return;
            }
        },
        Ok(()) = evicted => {
            tracing::debug!("closed a waiting control connection to admit a newer one");
            return;
        }
    };
    admitted.served();
    let reply = match request {
        Ok(Some(bytes)) => match wire::decode::<ControlFrame>("control request", &bytes) {
            Ok(frame) if frame.protocol != PROTOCOL_VERSION => error(
                ControlErrorKind::Version,
                format!(
                    "this client speaks protocol v{}, the runtime v{PROTOCOL_VERSION}; use the `syncra` that started the runtime",
                    frame.protocol
                ),
            ),
            Ok(ControlFrame {
                request: ControlRequest::Subscribe,
                ..
            }) => match admitted.subscribe() {
                Ok(()) => return subscribe(stream, runtime).await,
                Err(n) => error(
                    ControlErrorKind::Busy,
                    format!(
                        "{n} event subscribers are connected, the most the runtime takes; close one (`syncra events`)"
                    ),
                ),
            },
            Ok(ControlFrame {
                request: ControlRequest::Tap { stream: name },
                ..
            }) => return tap(stream, runtime, &name).await,
            Ok(frame) => runtime.control(frame.request).await,
            Err(e) => error(ControlErrorKind::BadRequest, e.to_string()),
        },
        Ok(None) => return,
        Err(e) => error(
            ControlErrorKind::BadRequest,
            format!("reading the request: {e}"),
        ),
    };
    let _ = tokio::time::timeout(
        WRITE_TIMEOUT,
        write_frame(&mut stream, &wire::encode(&reply)),
    )
    .await;
}

async fn subscribe(mut stream: UnixStream, runtime: &Runtime) {
    let mut events = runtime.subscribe();
    let mut closed = [0u8; 1];
    loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Ok(ev) => {
                    // A subscriber that stopped reading is dropped, not waited for.
                    let frame = wire::encode(&ControlReply::Event(ev));
                    let sent = tokio::time::timeout(WRITE_TIMEOUT, write_frame(&mut stream, &frame)).await;
                    if !matches!(sent, Ok(Ok(()))) {
                        return;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "an event subscriber is too slow; it missed events");
                }
                Err(_) => return,
            },
            // The client hangs up (or writes, which it should not): end the stream.
            _ = stream.read(&mut closed) => return,
        }
    }
}

/// Answer a tap: the stream's view in one frame, the ring's fd attached to its first byte.
async fn tap(mut stream: UnixStream, runtime: &Runtime, name: &str) {
    let Some((view, fd)) = runtime.tap(name) else {
        let known: Vec<String> = runtime.streams().into_iter().map(|s| s.name).collect();
        let reply = error(
            ControlErrorKind::UnknownStream,
            format!(
                "no stream `{name}` is declared (declared: {})",
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            ),
        );
        let _ = write_frame(&mut stream, &wire::encode(&reply)).await;
        return;
    };
    let frame = wire::frame(&wire::encode(&ControlReply::Tap(view)));
    let sent = stream
        .async_io(tokio::io::Interest::WRITABLE, || {
            use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
            let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
            let mut control = SendAncillaryBuffer::new(&mut space);
            let fds = [std::os::fd::AsFd::as_fd(&fd)];
            control.push(SendAncillaryMessage::ScmRights(&fds));
            rustix::net::sendmsg(
                &stream,
                &[std::io::IoSlice::new(&frame[..1])],
                &mut control,
                SendFlags::NOSIGNAL,
            )
            .map_err(std::io::Error::from)
        })
        .await;
    if sent.is_ok() {
        let _ = tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(&frame[1..])).await;
    }
}

fn error(kind: ControlErrorKind, message: String) -> ControlReply {
    ControlReply::Error(ControlError { kind, message })
}

/// Why a client could not talk to a runtime.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No runtime serves that run directory.
    #[error(
        "no syncra runtime is running with run dir {} (start one with `syncra run`, or point at another with --run-dir / SYNCRA_RUN_DIR)",
        .0.display()
    )]
    NotRunning(PathBuf),
    /// The connection failed mid-way.
    #[error("talking to the runtime: {0}")]
    Io(#[from] std::io::Error),
    /// The runtime's answer could not be decoded.
    #[error("the runtime's answer: {0}")]
    Decode(#[from] DecodeError),
    /// The runtime refused the request.
    #[error("{0}")]
    Refused(ControlError),
    /// The runtime answered something unexpected.
    #[error("unexpected answer from the runtime: {0}")]
    Unexpected(String),
}

/// A connection to a running runtime's control socket.
#[derive(Debug)]
pub struct ControlClient {
    stream: UnixStream,
}

impl ControlClient {
    /// Connect to the runtime whose run directory is `run_dir`.
    pub async fn connect(run_dir: &Path) -> Result<ControlClient, ClientError> {
        let path = run_dir.join(SOCKET_NAME);
        match UnixStream::connect(&path).await {
            Ok(stream) => Ok(ControlClient { stream }),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) =>
            {
                Err(ClientError::NotRunning(run_dir.to_owned()))
            }
            Err(e) => Err(ClientError::Io(e)),
        }
    }

    /// Send one request and read its reply. Refusals come back as [`ClientError::Refused`].
    pub async fn request(mut self, request: ControlRequest) -> Result<ControlReply, ClientError> {
        self.send(request).await?;
        match self.read().await? {
            ControlReply::Error(e) => Err(ClientError::Refused(e)),
            reply => Ok(reply),
        }
    }

    /// Ask for a tap on `stream`: its view and its ring's fd, to map and peek at.
    pub async fn tap(
        mut self,
        stream: &str,
    ) -> Result<(syncra_protocol::control::StreamView, std::os::fd::OwnedFd), ClientError> {
        self.send(ControlRequest::Tap {
            stream: stream.to_owned(),
        })
        .await?;
        // The first byte carries the fd.
        let mut first = [0u8; 1];
        let fd = loop {
            self.stream.readable().await?;
            let got = self.stream.try_io(tokio::io::Interest::READABLE, || {
                use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
                let mut space =
                    [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
                let mut control = RecvAncillaryBuffer::new(&mut space);
                let mut iov = [std::io::IoSliceMut::new(&mut first)];
                let got = rustix::net::recvmsg(
                    &self.stream,
                    &mut iov,
                    &mut control,
                    RecvFlags::CMSG_CLOEXEC,
                )
                .map_err(std::io::Error::from)?;
                let mut fd = None;
                for m in control.drain() {
                    if let RecvAncillaryMessage::ScmRights(fds) = m {
                        fd = fds.into_iter().next();
                    }
                }
                Ok((got.bytes, fd))
            });
            match got {
                Ok((0, _)) => {
                    return Err(ClientError::Io(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the runtime closed the connection",
                    )));
                }
                Ok((_, fd)) => break fd,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(ClientError::Io(e)),
            }
        };
        let mut rest = [0u8; 3];
        self.stream.read_exact(&mut rest).await?;
        let len = wire::check_len(
            "control",
            u32::from_be_bytes([first[0], rest[0], rest[1], rest[2]]),
            MAX_CONTROL_FRAME,
        )?;
        let mut buf = vec![0u8; len];
        self.stream.read_exact(&mut buf).await?;
        match wire::decode::<ControlReply>("control reply", &buf)? {
            ControlReply::Tap(view) => match fd {
                Some(fd) => Ok((view, fd)),
                None => Err(ClientError::Unexpected(
                    "a tap answer without its fd".into(),
                )),
            },
            ControlReply::Error(e) => Err(ClientError::Refused(e)),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Subscribe to lifecycle events; read them with [`EventStream::next`].
    pub async fn subscribe(mut self) -> Result<EventStream, ClientError> {
        self.send(ControlRequest::Subscribe).await?;
        Ok(EventStream { client: self })
    }

    async fn send(&mut self, request: ControlRequest) -> Result<(), ClientError> {
        let frame = ControlFrame {
            protocol: PROTOCOL_VERSION,
            request,
        };
        write_frame(&mut self.stream, &wire::encode(&frame)).await?;
        Ok(())
    }

    async fn read(&mut self) -> Result<ControlReply, ClientError> {
        match read_frame(&mut self.stream, MAX_CONTROL_FRAME).await? {
            Some(bytes) => Ok(wire::decode("control reply", &bytes)?),
            None => Err(ClientError::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the runtime closed the connection",
            ))),
        }
    }
}

/// A stream of lifecycle events from a running runtime.
#[derive(Debug)]
pub struct EventStream {
    client: ControlClient,
}

impl EventStream {
    /// The next event (waits for it).
    pub async fn next(&mut self) -> Result<LifecycleEvent, ClientError> {
        match self.client.read().await? {
            ControlReply::Event(ev) => Ok(ev),
            ControlReply::Error(e) => Err(ClientError::Refused(e)),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }
}
