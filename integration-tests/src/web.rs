//! The web dashboard as its clients meet it: raw HTTP/1.1 on loopback (so that a test can send
//! what no browser would: another `Host`, a wrong token, a body, a flood), its event stream
//! read as a browser's `EventSource` reads it, and Debian's headless Chromium driven over
//! WebDriver (chromedriver, through fantoccini) for the page itself.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::PATIENCE;

/// An HTTP answer.
#[derive(Debug)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Headers, names in lower case.
    pub headers: Vec<(String, String)>,
    /// Body (de-chunked).
    pub body: Vec<u8>,
}

impl Reply {
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Read a response head from `r`: status and headers.
fn read_head(r: &mut impl BufRead) -> std::io::Result<(u16, Vec<(String, String)>)> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP status line: {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            return Ok((status, headers));
        }
        if let Some((n, v)) = l.split_once(':') {
            headers.push((n.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
}

/// Send `raw` (a whole request; it should say `Connection: close`) to `addr` and read the
/// answer.
pub fn exchange(addr: SocketAddr, raw: &str) -> std::io::Result<Reply> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(PATIENCE))?;
    s.write_all(raw.as_bytes())?;
    let mut r = BufReader::new(s);
    let (status, headers) = read_head(&mut r)?;
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    let length = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok());
    let mut body = Vec::new();
    if chunked {
        while let Some(chunk) = read_chunk(&mut r)? {
            body.extend_from_slice(&chunk);
        }
    } else if let Some(n) = length {
        body.resize(n, 0);
        r.read_exact(&mut body)?;
    } else {
        r.read_to_end(&mut body)?;
    }
    Ok(Reply {
        status,
        headers,
        body,
    })
}

/// One chunk of a chunked body; `None` at its end.
fn read_chunk(r: &mut impl BufRead) -> std::io::Result<Option<Vec<u8>>> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
        .map_err(|e| std::io::Error::other(format!("chunk size {line:?}: {e}")))?;
    if size == 0 {
        return Ok(None);
    }
    let mut chunk = vec![0u8; size + 2];
    r.read_exact(&mut chunk)?;
    chunk.truncate(size);
    Ok(Some(chunk))
}

/// The request line and headers of a request to the dashboard at `addr`, with the token in an
/// `Authorization` header when there is one.
fn head(method: &str, addr: SocketAddr, path: &str, token: Option<&str>) -> String {
    let mut raw = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(t) = token {
        raw.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    raw
}

/// `GET path`, with the token in the header when given.
pub fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> Reply {
    exchange(addr, &(head("GET", addr, path, token) + "\r\n"))
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// `POST path` with no body, the token in the header when given, and `extra` headers (each
/// ending in CRLF).
pub fn post(addr: SocketAddr, path: &str, token: Option<&str>, extra: &str) -> Reply {
    exchange(
        addr,
        &(head("POST", addr, path, token) + "Content-Length: 0\r\n" + extra + "\r\n"),
    )
    .unwrap_or_else(|e| panic!("POST {path}: {e}"))
}

/// A server-sent event.
#[derive(Debug, Clone)]
pub struct Sse {
    /// Its `event:` field (`message` when it has none).
    pub event: String,
    /// Its `data:` lines, joined.
    pub data: String,
}

/// `GET /api/events` as an `EventSource` reads it.
#[derive(Debug)]
pub struct EventStream {
    reader: BufReader<TcpStream>,
    /// Decoded bytes not yet parsed into events.
    pending: String,
    /// The status of the answer.
    pub status: u16,
}

impl EventStream {
    /// Open the dashboard's event stream, with the token in the query as a browser does.
    pub fn open(addr: SocketAddr, token: &str) -> std::io::Result<EventStream> {
        let mut s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(PATIENCE))?;
        write!(
            s,
            "GET /api/events?token={token} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
        )?;
        let mut reader = BufReader::new(s);
        let (status, _) = read_head(&mut reader)?;
        Ok(EventStream {
            reader,
            pending: String::new(),
            status,
        })
    }

    /// The next event (comments skipped), or `None` when the stream ends or `PATIENCE` passes.
    pub fn next_event(&mut self) -> Option<Sse> {
        loop {
            if let Some(end) = self.pending.find("\n\n") {
                let block: String = self.pending.drain(..end + 2).collect();
                let (mut event, mut data) = (String::from("message"), Vec::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push(v.trim_start().to_owned());
                    }
                }
                if data.is_empty() {
                    continue;
                }
                return Some(Sse {
                    event,
                    data: data.join("\n"),
                });
            }
            let chunk = read_chunk(&mut self.reader).ok()??;
            self.pending.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

/// Headless Chromium (Debian's `chromium`), driven by `chromedriver` over WebDriver.
pub struct Browser {
    rt: tokio::runtime::Runtime,
    client: Option<fantoccini::Client>,
    _driver: Reaped,
    _profile: tempfile::TempDir,
}

/// A child process killed and reaped when dropped (also when a test panics).
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl std::fmt::Debug for Browser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Browser").finish_non_exhaustive()
    }
}

/// Where Debian puts Chromium and its driver (`cargo test-all` installs both).
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// See [`CHROMIUM`].
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

impl Browser {
    /// Start chromedriver on a free port and a headless Chromium session through it.
    pub fn start() -> Browser {
        let mut driver = Reaped(
            Command::new(CHROMEDRIVER)
                .arg("--port=0")
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("{CHROMEDRIVER}: {e} (`cargo test-all` installs chromium-driver)")
                }),
        );
        // "ChromeDriver was started successfully on port 36287."
        let mut out = BufReader::new(driver.0.stdout.take().expect("stdout"));
        let port = {
            let mut line = String::new();
            loop {
                line.clear();
                if out.read_line(&mut line).unwrap_or(0) == 0 {
                    panic!("chromedriver exited before it said its port");
                }
                if let Some(rest) = line.split("started successfully on port ").nth(1) {
                    break rest
                        .trim()
                        .trim_end_matches('.')
                        .parse::<u16>()
                        .expect("port");
                }
            }
        };
        // Keep draining its output, so that it never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = out.read_to_end(&mut sink);
        });
        let profile = tempfile::Builder::new()
            .prefix("syncra-chromium-")
            .tempdir()
            .expect("tempdir");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio");
        let caps = serde_json::json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
        });
        let serde_json::Value::Object(caps) = caps else {
            unreachable!()
        };
        let deadline = Instant::now() + PATIENCE;
        let client = loop {
            let tried = rt.block_on(
                fantoccini::ClientBuilder::new(
                    hyper_util::client::legacy::connect::HttpConnector::new(),
                )
                .capabilities(caps.clone())
                .connect(&format!("http://127.0.0.1:{port}")),
            );
            match tried {
                Ok(c) => break c,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("chromedriver not ready yet: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("no Chromium session: {e}"),
            }
        };
        Browser {
            rt,
            client: Some(client),
            _driver: driver,
            _profile: profile,
        }
    }

    fn client(&self) -> &fantoccini::Client {
        self.client.as_ref().expect("session")
    }

    /// Open `url`.
    pub fn goto(&self, url: &str) {
        self.rt
            .block_on(self.client().goto(url))
            .unwrap_or_else(|e| panic!("opening {url}: {e}"));
    }

    /// Run `script` in the page (a function body: `return …`), with `args`.
    pub fn eval(&self, script: &str, args: Vec<serde_json::Value>) -> serde_json::Value {
        self.rt
            .block_on(self.client().execute(script, args))
            .unwrap_or_else(|e| panic!("running {script}: {e}"))
    }

    /// Run `script` in the page as an asynchronous script: its last argument is the function
    /// to call with the answer (WebDriver's "execute async").
    pub fn eval_async(&self, script: &str, args: Vec<serde_json::Value>) -> serde_json::Value {
        self.rt
            .block_on(self.client().execute_async(script, args))
            .unwrap_or_else(|e| panic!("running {script}: {e}"))
    }

    /// Wait until `f` gives `Some` (asked every 20 ms); panic after [`PATIENCE`] with the
    /// page's text.
    pub fn until<T>(&self, what: &str, mut f: impl FnMut(&Browser) -> Option<T>) -> T {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(t) = f(self) {
                return t;
            }
            if Instant::now() >= deadline {
                let text = self.eval("return document.body.innerText", vec![]);
                panic!(
                    "timed out waiting until {what}; the page says:\n{}",
                    text.as_str().unwrap_or("")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The text of the first element matching `css`, if there is one.
    pub fn text(&self, css: &str) -> Option<String> {
        self.eval(
            "const e = document.querySelector(arguments[0]); return e ? e.innerText : null",
            vec![css.into()],
        )
        .as_str()
        .map(str::to_owned)
    }

    /// Click the first element matching `css`, as a user does (WebDriver's element click).
    ///
    /// A live page replaces its rows as events arrive, so the element found can be replaced
    /// before the click reaches it (a stale element: nothing was clicked); then it is found
    /// again, as a user's next click would, until [`PATIENCE`] runs out.
    pub fn click(&self, css: &str) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let clicked = self.rt.block_on(async {
                self.client()
                    .find(fantoccini::Locator::Css(css))
                    .await?
                    .click()
                    .await
            });
            match clicked {
                Ok(()) => return,
                Err(e) if e.is_stale_element_reference() && Instant::now() < deadline => {}
                Err(e) => panic!("clicking {css}: {e}"),
            }
        }
    }

    /// A PNG of the page.
    pub fn screenshot(&self) -> Vec<u8> {
        self.rt
            .block_on(self.client().screenshot())
            .unwrap_or_else(|e| panic!("screenshot: {e}"))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(c) = self.client.take() {
            let _ = self
                .rt
                .block_on(async { tokio::time::timeout(Duration::from_secs(5), c.close()).await });
        }
    }
}
