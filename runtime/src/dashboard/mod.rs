//! The web dashboard (`syncra run --dashboard`): the process family in a browser — nodes,
//! streams, events live, crash records — with buttons to restart, stop and start a node; a
//! small JSON API with server-sent events under it, and `/metrics` in Prometheus' text format.
//!
//! It listens on 127.0.0.1 only. Every request for data or an action carries a token the
//! runtime makes at start and writes into its run directory, mode 0600 ([`TOKEN_FILE`]):
//! `Authorization: Bearer …` (an action must use the header, which no other page can make a
//! browser send), or `?token=…` on a read (an `EventSource` cannot set headers). The `Host`
//! header must name this address (a page of another site that a DNS name rebinds to 127.0.0.1
//! is refused), and an action's `Origin`, when there is one, must be this origin. The page and
//! its script and style are served to anyone: they hold no data, and no external asset.
//!
//! Bounded like the control socket: at most `dashboard.max_clients` connections (past it the
//! oldest idle one closes; when none is idle the newcomer gets 503), at most half of them
//! event streams, request heads of at most [`MAX_HEAD`] bytes read within
//! [`HEAD_TIMEOUT`], no request body at all, and a client that stops reading its event stream
//! is dropped.

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::{Body, Bytes, Frame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use syncra_config::plan::DashboardPlan;
use syncra_protocol::control::{ControlErrorKind, ControlReply, ControlRequest};
use syncra_protocol::status::{FigureKind, StatusReport};
use tokio::net::TcpListener;

use crate::Runtime;

/// The token's file in the run directory (mode 0600).
pub const TOKEN_FILE: &str = "dashboard.token";
/// Largest request head (request line and headers), bytes.
pub const MAX_HEAD: usize = 16 * 1024;
/// How long a client may take to send a request's head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a connection is safe from eviction after it connects or finishes a request.
const EVICTABLE_AFTER: Duration = Duration::from_millis(100);
/// How often an idle event stream gets a comment, so that proxies and the browser keep it.
const KEEPALIVE: Duration = Duration::from_secs(15);
/// How long a client may take to read one event before it is dropped.
const EVENT_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most crash records one request returns.
const MAX_CRASHES: usize = 100;

const INDEX_HTML: &str = include_str!("index.html");
const APP_JS: &str = include_str!("app.js");
const APP_CSS: &str = include_str!("app.css");

type ResBody = BoxBody<Bytes, Infallible>;

/// The dashboard while it serves: its address; dropping it does not stop it (see
/// [`Dashboard::stop`]).
#[derive(Debug)]
pub(crate) struct Dashboard {
    addr: SocketAddr,
    task: tokio::task::AbortHandle,
}

/// A bound dashboard, not serving yet (the runtime it serves does not exist yet).
#[derive(Debug)]
pub(crate) struct Bound {
    listener: TcpListener,
    token: String,
    max_clients: usize,
}

impl Bound {
    /// Bind 127.0.0.1:`plan.port` and write a new token into `run_dir`.
    pub(crate) async fn bind(
        plan: DashboardPlan,
        run_dir: &crate::rundir::RunDir,
    ) -> Result<Bound, String> {
        let listener = TcpListener::bind(("127.0.0.1", plan.port))
            .await
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::AddrInUse {
                    format!(
                        "the dashboard's port 127.0.0.1:{} is in use (another runtime's dashboard?): set `dashboard.port` (or --dashboard-port), 0 for any free port",
                        plan.port
                    )
                } else {
                    format!("the dashboard cannot listen on 127.0.0.1:{}: {e}", plan.port)
                }
            })?;
        let token = new_token().map_err(|e| format!("making the dashboard's token: {e}"))?;
        run_dir
            .write_secret(TOKEN_FILE, &format!("{token}\n"))
            .map_err(|e| {
                format!(
                    "writing the dashboard's token to {}: {e}",
                    run_dir.path().join(TOKEN_FILE).display()
                )
            })?;
        Ok(Bound {
            listener,
            token,
            max_clients: plan.max_clients,
        })
    }

    /// Its address.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Serve `runtime` until [`Dashboard::stop`].
    pub(crate) fn serve(self, runtime: Runtime) -> Dashboard {
        let addr = self.addr();
        let shared = Arc::new(Shared {
            runtime,
            uid: rustix::process::getuid().as_raw(),
            token: self.token,
            port: addr.port(),
            max_clients: self.max_clients,
            conns: Mutex::new(Conns::default()),
            streams: AtomicUsize::new(0),
            refusals: Mutex::new(Refusals::default()),
        });
        let task = tokio::spawn(accept_loop(self.listener, shared));
        tracing::info!(
            "dashboard on http://{addr}/ (token in the run directory's {TOKEN_FILE}; `syncra dashboard` prints a link with it)"
        );
        Dashboard {
            addr,
            task: task.abort_handle(),
        }
    }
}

impl Dashboard {
    /// Its address, `http://127.0.0.1:PORT/`.
    pub(crate) fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Stop serving: the listener closes, and the connections with it.
    pub(crate) fn stop(&self) {
        self.task.abort();
    }
}

/// 32 random bytes, in hex.
fn new_token() -> std::io::Result<String> {
    let mut bytes = [0u8; 32];
    let mut filled = 0;
    while filled < bytes.len() {
        filled +=
            rustix::rand::getrandom(&mut bytes[filled..], rustix::rand::GetRandomFlags::empty())
                .map_err(std::io::Error::from)?;
    }
    Ok(bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    }))
}

/// What the connections share.
struct Shared {
    runtime: Runtime,
    /// The runtime's user: only it (and root) may connect.
    uid: u32,
    token: String,
    port: u16,
    max_clients: usize,
    conns: Mutex<Conns>,
    /// Event streams open now.
    streams: AtomicUsize,
    refusals: Mutex<Refusals>,
}

/// Refusals are logged once a second at most, with their count: a flood is one line.
#[derive(Default)]
struct Refusals {
    count: u64,
    last: Option<Instant>,
}

impl Shared {
    fn refused(&self, why: &str) {
        let mut r = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        r.count += 1;
        if r.last.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            tracing::warn!(count = r.count, "dashboard refused requests: {why}");
            r.count = 0;
            r.last = Some(Instant::now());
        }
    }

    fn conns(&self) -> std::sync::MutexGuard<'_, Conns> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The open connections, for the bound and for eviction.
#[derive(Default)]
struct Conns {
    next: u64,
    open: HashMap<u64, Conn>,
}

struct Conn {
    /// Since when it has been idle (no request in progress); `None` while one is.
    idle_since: Option<Instant>,
    /// Requests in progress, and event streams it carries (never idle while one is open).
    busy: usize,
    evict: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Conns {
    /// Admit a connection, closing the oldest idle one if the bound is reached; `None`: every
    /// place is taken by a connection in use.
    fn admit(&mut self, max: usize) -> Option<(u64, tokio::sync::oneshot::Receiver<()>)> {
        let now = Instant::now();
        if self.open.len() >= max {
            let oldest = self
                .open
                .iter()
                .filter_map(|(id, c)| {
                    let since = c.idle_since?;
                    (c.busy == 0 && now.duration_since(since) >= EVICTABLE_AFTER)
                        .then_some((since, *id))
                })
                .min()?;
            let mut gone = self.open.remove(&oldest.1)?;
            if let Some(evict) = gone.evict.take() {
                let _ = evict.send(());
            }
        }
        self.next += 1;
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.open.insert(
            self.next,
            Conn {
                idle_since: Some(now),
                busy: 0,
                evict: Some(tx),
            },
        );
        Some((self.next, rx))
    }

    fn busy(&mut self, id: u64, delta: isize) {
        if let Some(c) = self.open.get_mut(&id) {
            c.busy = c.busy.saturating_add_signed(delta);
            c.idle_since = (c.busy == 0).then(Instant::now);
        }
    }
}

/// A connection's place; dropping it frees the place.
struct Place {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for Place {
    fn drop(&mut self) {
        self.shared.conns().open.remove(&self.id);
    }
}

/// A request (or an event stream) in progress on a connection; dropping it ends it.
struct Busy {
    shared: Arc<Shared>,
    id: u64,
}

impl Busy {
    fn new(shared: &Arc<Shared>, id: u64) -> Busy {
        shared.conns().busy(id, 1);
        Busy {
            shared: shared.clone(),
            id,
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.shared.conns().busy(self.id, -1);
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e)
                if crate::fdreserve::is_fd_shortage(&e) && shared.runtime.fds().release_one() =>
            {
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "accepting a dashboard connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                shared.runtime.fds().refill();
                continue;
            }
        };
        // Another local user may reach the port, but not take a place: a connection whose
        // socket another user owns is closed at once (its token could not be theirs anyway).
        if let Ok(local) = stream.local_addr()
            && let Some(uid) = peer_uid(peer, local)
            && uid != shared.uid
            && uid != 0
        {
            shared.refused("a connection from another user");
            let body = "the dashboard serves only the user that runs its runtime\n";
            let _ = stream.try_write(
                format!(
                    "HTTP/1.1 403 Forbidden\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            );
            continue;
        }
        let _ = stream.set_nodelay(true);
        let admitted = shared.conns().admit(shared.max_clients);
        let Some((id, evicted)) = admitted else {
            shared.refused("every connection is in use");
            // One non-blocking write into the fresh socket's empty buffer, then close: a flood
            // of newcomers holds nothing open.
            let body = format!(
                "the dashboard serves {} connections at once (dashboard.max_clients) and none has been idle long enough to give way; try again in a moment\n",
                shared.max_clients
            );
            let reply = format!(
                "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.try_write(reply.as_bytes());
            drop(stream);
            continue;
        };
        let place = Place {
            shared: shared.clone(),
            id,
        };
        tokio::spawn(async move {
            let shared = place.shared.clone();
            let service = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move {
                    let busy = Busy::new(&shared, id);
                    Ok::<_, Infallible>(respond(&shared, req, busy).await)
                }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .max_buf_size(MAX_HEAD)
                .keep_alive(true);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                Ok(()) = evicted => {
                    tracing::debug!("closed an idle dashboard connection to admit a newer one");
                }
            }
            place.shared.runtime.fds().refill();
            drop(place);
        });
    }
}

/// The user owning the other end of a loopback TCP connection: the socket in
/// `/proc/net/tcp` whose local address is `peer` and remote address `local`. `None` when it
/// cannot be told (the table is not readable, the client is gone already).
fn peer_uid(peer: SocketAddr, local: SocketAddr) -> Option<u32> {
    let hex = |a: SocketAddr| match a {
        SocketAddr::V4(v4) => Some(format!(
            "{:08X}:{:04X}",
            u32::from_ne_bytes(v4.ip().octets()),
            v4.port()
        )),
        SocketAddr::V6(_) => None,
    };
    let (want_local, want_remote) = (hex(peer)?, hex(local)?);
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.get(1) == Some(&want_local.as_str()) && f.get(2) == Some(&want_remote.as_str()))
            .then(|| f.get(7)?.parse().ok())
            .flatten()
    })
}

fn full(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<ResBody> {
    let mut res = Response::new(Full::new(body.into()).boxed());
    *res.status_mut() = status;
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    res
}

fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<ResBody> {
    let body = serde_json::to_vec(value).unwrap_or_else(|e| {
        format!(r#"{{"error":{{"kind":"internal","message":"encoding the answer: {e}"}}}}"#)
            .into_bytes()
    });
    full(status, "application/json", body)
}

/// `{"error": {"kind": …, "message": …}}`.
fn error(status: StatusCode, kind: &str, message: impl Into<String>) -> Response<ResBody> {
    #[derive(serde::Serialize)]
    struct Err<'a> {
        kind: &'a str,
        message: String,
    }
    #[derive(serde::Serialize)]
    struct Wrap<'a> {
        error: Err<'a>,
    }
    json(
        status,
        &Wrap {
            error: Err {
                kind,
                message: message.into(),
            },
        },
    )
}

/// The value of `key` in a query string, percent-decoded (`world%2Fmain` is `world/main`).
fn query(uri: &hyper::Uri, key: &str) -> Option<String> {
    uri.query()?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| decode(&v.replace('+', " ")))
}

/// `s` percent-decoded; bytes that are not UTF-8 become U+FFFD (and then name no node).
fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// Equal, in time that does not depend on where they differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A refusal of a request whose `Host` is not this dashboard's address (DNS rebinding).
fn wrong_host(shared: &Shared, req: &Request<Incoming>) -> Option<Response<ResBody>> {
    let port = shared.port;
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let ours = [format!("127.0.0.1:{port}"), format!("localhost:{port}")];
    if !ours.iter().any(|o| o.eq_ignore_ascii_case(host)) {
        shared.refused("a Host header that is not the dashboard's");
        return Some(error(
            StatusCode::MISDIRECTED_REQUEST,
            "host",
            format!(
                "Host `{host}` is not this dashboard's address (127.0.0.1:{port} or localhost:{port}): a name that resolves to 127.0.0.1 is not enough"
            ),
        ));
    }
    None
}

/// Why a request for data or an action (`action`: it must carry the token in its header)
/// may not proceed, if it may not.
fn refuse(shared: &Shared, req: &Request<Incoming>, action: bool) -> Option<Response<ResBody>> {
    if let Some(r) = wrong_host(shared, req) {
        return Some(r);
    }
    let port = shared.port;
    if let Some(len) = req.headers().get(header::CONTENT_LENGTH)
        && len.as_bytes() != b"0"
    {
        shared.refused("a request with a body");
        return Some(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body",
            "no dashboard request takes a body",
        ));
    }
    if req.headers().contains_key(header::TRANSFER_ENCODING) {
        shared.refused("a request with a body");
        return Some(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body",
            "no dashboard request takes a body",
        ));
    }
    // The scheme's name is case-insensitive (RFC 9110).
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.to_owned());
    let given = match (bearer, action) {
        (Some(t), _) => Some(t),
        (None, false) => query(req.uri(), "token"),
        (None, true) => None,
    };
    let Some(given) = given else {
        shared.refused("no token");
        let message = if action {
            "an action needs the token in an `Authorization: Bearer …` header (the run directory's dashboard.token; `syncra dashboard` prints it)"
        } else {
            "this needs the token: `Authorization: Bearer …` or `?token=…` (the run directory's dashboard.token; `syncra dashboard` prints a link with it)"
        };
        let mut res = error(StatusCode::UNAUTHORIZED, "token", message);
        res.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"syncra\""),
        );
        return Some(res);
    };
    if !same_secret(given.trim().as_bytes(), shared.token.as_bytes()) {
        shared.refused("a wrong token");
        let mut res = error(
            StatusCode::UNAUTHORIZED,
            "token",
            "the token is wrong: this runtime's is in its run directory's dashboard.token (a new one at every start)",
        );
        res.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"syncra\", error=\"invalid_token\""),
        );
        return Some(res);
    }
    if action && let Some(origin) = req.headers().get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        let ours = [
            format!("http://127.0.0.1:{port}"),
            format!("http://localhost:{port}"),
        ];
        if !ours.iter().any(|o| o.eq_ignore_ascii_case(origin)) {
            shared.refused("an action from another origin");
            return Some(error(
                StatusCode::FORBIDDEN,
                "origin",
                format!(
                    "an action from `{origin}` is refused: only this dashboard's own page may act"
                ),
            ));
        }
    }
    None
}

async fn respond(shared: &Arc<Shared>, req: Request<Incoming>, busy: Busy) -> Response<ResBody> {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    // The page and its script and style: no data in them, served to anyone on this address.
    let asset = match path.as_str() {
        "/" | "/index.html" => Some(("text/html; charset=utf-8", INDEX_HTML)),
        "/app.js" => Some(("text/javascript; charset=utf-8", APP_JS)),
        "/app.css" => Some(("text/css; charset=utf-8", APP_CSS)),
        "/favicon.ico" => Some(("image/x-icon", "")),
        _ => None,
    };
    if let Some((content_type, body)) = asset {
        // Assets need no token, but the right Host all the same.
        if let Some(r) = wrong_host(shared, &req) {
            return r;
        }
        if method != Method::GET && method != Method::HEAD {
            return not_allowed("GET");
        }
        if body.is_empty() {
            return full(StatusCode::NO_CONTENT, content_type, Bytes::new());
        }
        return full(
            StatusCode::OK,
            content_type,
            Bytes::from_static(body.as_bytes()),
        );
    }
    if let Some(r) = refuse(shared, &req, path.starts_with("/api/nodes/")) {
        return r;
    }
    let rt = &shared.runtime;
    if let Some(rest) = path.strip_prefix("/api/nodes/") {
        if method != Method::POST {
            return not_allowed("POST");
        }
        let Some((node, verb)) = rest.rsplit_once('/') else {
            return error(
                StatusCode::NOT_FOUND,
                "path",
                format!("`{path}` is not an action: POST /api/nodes/NODE/restart, /stop or /start"),
            );
        };
        let node = decode(node);
        let request = match verb {
            "restart" => ControlRequest::Restart { node },
            "stop" => ControlRequest::Stop { node },
            "start" => ControlRequest::Start { node },
            other => {
                return error(
                    StatusCode::NOT_FOUND,
                    "path",
                    format!("`{other}` is not an action: restart, stop or start"),
                );
            }
        };
        return match rt.control(request).await {
            ControlReply::Done { message } => {
                json(StatusCode::OK, &serde_json::json!({ "ok": message }))
            }
            ControlReply::Error(e) => control_error(&e),
            other => error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("unexpected answer: {other:?}"),
            ),
        };
    }
    if method != Method::GET && method != Method::HEAD {
        return not_allowed("GET");
    }
    match path.as_str() {
        "/api/status" => json(StatusCode::OK, &status(shared)),
        "/api/streams" => json(StatusCode::OK, &rt.streams()),
        "/api/crashes" => {
            let node = query(req.uri(), "node").filter(|n| !n.is_empty());
            let node = node.as_deref();
            let limit = match query(req.uri(), "limit").map(|l| l.parse::<usize>()) {
                None => 20,
                Some(Ok(n)) => n.min(MAX_CRASHES),
                Some(Err(_)) => {
                    return error(StatusCode::BAD_REQUEST, "query", "`limit` must be a number");
                }
            };
            if let Some(node) = node
                && rt.status().node(node).is_none()
            {
                return error(
                    StatusCode::NOT_FOUND,
                    "unknown-node",
                    format!("no node is called `{node}`"),
                );
            }
            json(StatusCode::OK, &rt.crashes(node, limit))
        }
        "/api/events" => events(shared, busy),
        "/metrics" => full(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics(&status(shared), &rt.streams()),
        ),
        _ => error(
            StatusCode::NOT_FOUND,
            "path",
            format!(
                "`{path}` is not on the dashboard: /api/status, /api/streams, /api/crashes, /api/events, /api/nodes/NODE/ACTION, /metrics"
            ),
        ),
    }
}

fn status(shared: &Shared) -> StatusReport {
    shared.runtime.status()
}

fn not_allowed(allow: &'static str) -> Response<ResBody> {
    let mut res = error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method",
        format!("use {allow} here"),
    );
    res.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    res
}

fn control_error(e: &syncra_protocol::control::ControlError) -> Response<ResBody> {
    let (status, kind) = match e.kind {
        ControlErrorKind::UnknownNode => (StatusCode::NOT_FOUND, "unknown-node"),
        ControlErrorKind::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting-down"),
        ControlErrorKind::Timeout => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
        ControlErrorKind::Busy => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
        ControlErrorKind::Forbidden => (StatusCode::FORBIDDEN, "forbidden"),
        _ => (StatusCode::CONFLICT, "refused"),
    };
    error(status, kind, e.message.clone())
}

/// An event stream's body: what its task sends.
struct EventBody {
    rx: tokio::sync::mpsc::Receiver<Bytes>,
    _busy: Busy,
    _slot: StreamSlot,
}

impl Body for EventBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

/// A place among the event streams; dropping it frees it.
struct StreamSlot(Arc<Shared>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.streams.fetch_sub(1, Ordering::Relaxed);
    }
}

/// `GET /api/events`: lifecycle events as server-sent events (`event: lifecycle`, the event as
/// JSON), from now on.
fn events(shared: &Arc<Shared>, busy: Busy) -> Response<ResBody> {
    let most = (shared.max_clients / 2).max(1);
    if shared
        .streams
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
            (n < most).then_some(n + 1)
        })
        .is_err()
    {
        shared.refused("too many event streams");
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            format!(
                "{most} event streams are open, the most the dashboard serves (half of dashboard.max_clients); close one"
            ),
        );
    }
    let slot = StreamSlot(shared.clone());
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    let mut events = shared.runtime.subscribe();
    tokio::spawn(async move {
        let send = async |tx: &tokio::sync::mpsc::Sender<Bytes>, b: String| {
            matches!(
                tokio::time::timeout(EVENT_WRITE_TIMEOUT, tx.send(Bytes::from(b))).await,
                Ok(Ok(()))
            )
        };
        // Tell the browser how soon to come back, and that the stream is open.
        if !send(&tx, "retry: 1000\n: open\n\n".to_owned()).await {
            return;
        }
        let mut seq = 0u64;
        loop {
            let chunk = tokio::select! {
                ev = events.recv() => match ev {
                    Ok(ev) => {
                        seq += 1;
                        match serde_json::to_string(&ev) {
                            Ok(data) => format!("id: {seq}\nevent: lifecycle\ndata: {data}\n\n"),
                            Err(_) => continue,
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        format!("event: lagged\ndata: {{\"missed\":{n}}}\n\n")
                    }
                    Err(_) => return,
                },
                _ = tokio::time::sleep(KEEPALIVE) => ": keep-alive\n\n".to_owned(),
                _ = tx.closed() => return,
            };
            if !send(&tx, chunk).await {
                return;
            }
        }
    });
    let mut res = Response::new(
        EventBody {
            rx,
            _busy: busy,
            _slot: slot,
        }
        .boxed(),
    );
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    res
}

/// A sample value as the text format writes it (`+Inf`, `-Inf`, `NaN`).
fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        v.to_string()
    }
}

/// A label value, escaped for the text format.
fn label(v: &str) -> String {
    v.replace('\\', r"\\")
        .replace('"', r#"\""#)
        .replace('\n', r"\n")
}

/// One metric family: its name, type, help, and its value for one item (none: no sample).
struct Family<T> {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    value: fn(&T) -> Option<f64>,
}

impl<T> Family<T> {
    const fn new(
        name: &'static str,
        kind: &'static str,
        help: &'static str,
        value: fn(&T) -> Option<f64>,
    ) -> Self {
        Family {
            name,
            kind,
            help,
            value,
        }
    }

    /// Its `# HELP` and `# TYPE` lines, and a sample per item that has a value.
    fn write<'a>(&self, out: &mut String, items: impl IntoIterator<Item = (String, &'a T)>)
    where
        T: 'a,
    {
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} {}", self.name, self.kind);
        for (labels, item) in items {
            match (self.value)(item) {
                Some(v) if labels.is_empty() => {
                    let _ = writeln!(out, "{} {}", self.name, number(v));
                }
                Some(v) => {
                    let _ = writeln!(out, "{}{{{labels}}} {}", self.name, number(v));
                }
                None => {}
            }
        }
    }
}

type NodeView = syncra_protocol::status::NodeView;
type StreamView = syncra_protocol::control::StreamView;
type ConsumerView = syncra_protocol::control::ConsumerView;

const NODE_FAMILIES: &[Family<NodeView>] = &[
    Family::new(
        "syncra_node_restarts_total",
        "counter",
        "Restarts of the node (spawns after the first).",
        |n| Some(n.restarts as f64),
    ),
    Family::new(
        "syncra_node_incarnation",
        "gauge",
        "Number of the node's current (or last) incarnation.",
        |n| Some(n.incarnation as f64),
    ),
    Family::new(
        "syncra_node_uptime_seconds",
        "gauge",
        "Seconds since the node's current incarnation became ready.",
        |n| n.uptime_ms.map(|ms| ms as f64 / 1000.0),
    ),
    Family::new(
        "syncra_node_tick",
        "gauge",
        "Ticks of a world (frames of a driver) at its last heartbeat.",
        |n| n.tick.map(|t| t as f64),
    ),
    Family::new(
        "syncra_node_entities",
        "gauge",
        "Entities in a world at its last heartbeat.",
        |n| n.entities.map(|e| e as f64),
    ),
    Family::new(
        "syncra_node_tick_seconds",
        "gauge",
        "Duration of the node's last tick.",
        |n| n.tick_us.map(|us| f64::from(us) / 1e6),
    ),
];

const STREAM_FAMILIES: &[Family<StreamView>] = &[
    Family::new(
        "syncra_stream_published_total",
        "counter",
        "Messages the stream's producers published.",
        |s| Some(s.published as f64),
    ),
    Family::new(
        "syncra_stream_rate_hz",
        "gauge",
        "Messages per second over the last sampling period.",
        |s| Some(s.rate_hz),
    ),
    Family::new(
        "syncra_stream_attachments_total",
        "counter",
        "Producers that attached to the stream (1 + restarts).",
        |s| Some(s.attachments as f64),
    ),
    Family::new(
        "syncra_stream_blocked_total",
        "counter",
        "Writes that waited for space.",
        |s| Some(s.blocked as f64),
    ),
    Family::new(
        "syncra_stream_timeouts_total",
        "counter",
        "Writes that gave up after the block timeout.",
        |s| Some(s.timeouts as f64),
    ),
];

const CONSUMER_FAMILIES: &[Family<ConsumerView>] = &[
    Family::new(
        "syncra_stream_consumer_lag",
        "gauge",
        "Messages published but not yet read by the consumer.",
        |c| Some(c.lag as f64),
    ),
    Family::new(
        "syncra_stream_consumer_received_total",
        "counter",
        "Messages the consumer received.",
        |c| Some(c.received as f64),
    ),
    Family::new(
        "syncra_stream_consumer_dropped_total",
        "counter",
        "Messages the consumer lost (lapped, superseded, abandoned).",
        |c| Some(c.dropped as f64),
    ),
    Family::new(
        "syncra_stream_consumer_torn_total",
        "counter",
        "Torn reads the consumer discarded.",
        |c| Some(c.torn as f64),
    ),
];

/// The figures of `status` and `streams` in Prometheus' text format (version 0.0.4).
pub(crate) fn metrics(status: &StatusReport, streams: &[StreamView]) -> String {
    let mut out = String::new();
    Family::<StatusReport>::new(
        "syncra_runtime_uptime_seconds",
        "gauge",
        "Seconds since the runtime started.",
        |s| Some(s.runtime.uptime_ms as f64 / 1000.0),
    )
    .write(&mut out, [(String::new(), status)]);

    let node = |n: &NodeView| {
        let kind = match n.kind {
            syncra_protocol::NodeKind::Driver => "driver",
            syncra_protocol::NodeKind::World => "world",
        };
        format!("node=\"{}\",kind=\"{kind}\"", label(n.name.as_str()))
    };
    Family::<NodeView>::new(
        "syncra_node_state",
        "gauge",
        "1 for the state each node is in (starting, ready, stopping, backoff, failed, stopped).",
        |_| Some(1.0),
    )
    .write(
        &mut out,
        status
            .nodes
            .iter()
            .map(|n| (format!("{},state=\"{}\"", node(n), n.state), n)),
    );
    for family in NODE_FAMILIES {
        family.write(&mut out, status.nodes.iter().map(|n| (node(n), n)));
    }
    // The nodes' own figures: gauges and counters, each named by a label.
    for (name, kind, which, help) in [
        (
            "syncra_node_figure",
            "gauge",
            FigureKind::Gauge,
            "A gauge the node reports (its own figures: fps, queue depth, …).",
        ),
        (
            "syncra_node_figure_total",
            "counter",
            FigureKind::Counter,
            "A counter the node reports (its own figures: frames, …).",
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for n in &status.nodes {
            // A node may report one name twice (two slots): one series each, the first.
            let mut seen = std::collections::HashSet::new();
            for f in n.figures.iter().filter(|f| f.kind == which) {
                if !seen.insert(f.name.as_str()) {
                    continue;
                }
                let _ = writeln!(
                    out,
                    "{name}{{{},figure=\"{}\"}} {}",
                    node(n),
                    label(&f.name),
                    number(f.value)
                );
            }
        }
    }

    let stream = |s: &StreamView| {
        format!(
            "stream=\"{}\",producer=\"{}\"",
            label(&s.name),
            label(s.producer.as_str())
        )
    };
    for family in STREAM_FAMILIES {
        family.write(&mut out, streams.iter().map(|s| (stream(s), s)));
    }
    for family in CONSUMER_FAMILIES {
        family.write(
            &mut out,
            streams.iter().flat_map(|s| {
                s.consumers.iter().map(move |c| {
                    (
                        format!("{},consumer=\"{}\"", stream(s), label(c.node.as_str())),
                        c,
                    )
                })
            }),
        );
    }
    out
}

/// The token of the dashboard of the runtime whose run directory is `run_dir`.
pub fn read_token(run_dir: &Path) -> std::io::Result<String> {
    Ok(std::fs::read_to_string(run_dir.join(TOKEN_FILE))?
        .trim()
        .to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use syncra_protocol::status::{Figure, NodeView, RuntimeInfo};

    #[test]
    fn metrics_write_infinities_as_the_format_says_and_each_series_once() {
        let mut node: NodeView = serde_json::from_value(serde_json::json!({
            "name": "figs", "kind": "driver", "pid": 7, "state": "ready", "incarnation": 1,
            "restarts": 0, "uptime_ms": 5, "last_exit": null, "tick": null, "entities": null,
            "tick_us": null, "detail": null
        }))
        .unwrap();
        node.figures = vec![
            Figure {
                name: "fps".into(),
                kind: FigureKind::Gauge,
                value: f64::INFINITY,
            },
            Figure {
                name: "fps".into(),
                kind: FigureKind::Gauge,
                value: 1.0,
            },
            Figure {
                name: "lag".into(),
                kind: FigureKind::Gauge,
                value: f64::NEG_INFINITY,
            },
            Figure {
                name: "odd".into(),
                kind: FigureKind::Gauge,
                value: f64::NAN,
            },
        ];
        let status = StatusReport {
            runtime: RuntimeInfo {
                pid: 1,
                version: "0".into(),
                protocol: 1,
                uptime_ms: 1500,
                run_dir: String::new(),
                log_dir: String::new(),
                crash_dir: String::new(),
                shutting_down: false,
                dashboard: None,
            },
            nodes: vec![node],
        };
        let text = metrics(&status, &[]);
        assert!(text.contains("figure=\"fps\"} +Inf\n"), "{text}");
        assert!(
            !text.contains("figure=\"fps\"} 1\n"),
            "one series per name: {text}"
        );
        assert!(text.contains("figure=\"lag\"} -Inf\n"), "{text}");
        assert!(text.contains("figure=\"odd\"} NaN\n"), "{text}");
        assert!(
            text.contains("syncra_runtime_uptime_seconds 1.5\n"),
            "{text}"
        );
        assert!(
            text.contains("syncra_node_state{node=\"figs\",kind=\"driver\",state=\"ready\"} 1\n"),
            "{text}"
        );
    }

    #[test]
    fn names_and_tokens_are_percent_decoded() {
        let uri: hyper::Uri = "/api/crashes?node=world%2Fmain&limit=3&token=a%20b"
            .parse()
            .unwrap();
        assert_eq!(query(&uri, "node").as_deref(), Some("world/main"));
        assert_eq!(query(&uri, "limit").as_deref(), Some("3"));
        assert_eq!(query(&uri, "token").as_deref(), Some("a b"));
        assert_eq!(query(&uri, "nothing"), None);
    }
}
