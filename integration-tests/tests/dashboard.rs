//! The web dashboard (`syncra run --dashboard`) as its users meet it: the page in headless
//! Chromium (the link `syncra dashboard` prints, nodes and streams live, a restart clicked on
//! the page, a native crash's stack), its JSON API and event stream, `/metrics` read by a
//! Prometheus text-format parser — and as another local user or a hostile page meets it: no
//! token, a wrong one, another `Host`, another `Origin`, a body, a flood of connections.

#![allow(
    clippy::disallowed_methods,
    reason = "the tests run Chromium, chromedriver and the CLI as a user does"
)]

use std::collections::HashMap;
use std::net::TcpStream;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::{Duration, Instant};

use syncra_integration_tests::web::{Browser, EventStream, exchange, get, post};
use syncra_integration_tests::{Harness, PATIENCE, STRANGER_UID, is_root, send};

const FAMILY: &str = "[runtime]\nwatch_interval_ms = 250\n[supervisor]\nbackoff_initial_ms = 50\n[drivers.native]\ncommand = \"syncra-test-native\"\nargs = [\"null\"]\n[worlds]\ncount = 2\nentities = 16\n[dashboard]\nenabled = true\nport = 0\n";

/// A node's row in the page: its state and incarnation, if shown.
fn row(b: &Browser, node: &str) -> Option<(String, u64, String)> {
    let v = b.eval(
        "const r = document.querySelector(`tr[data-node=\"${arguments[0]}\"]`);
         if (!r) return null;
         return [r.querySelector('[data-state]').dataset.state,
                 Number(r.querySelector('[data-incarnation]').dataset.incarnation),
                 r.innerText];",
        vec![node.into()],
    );
    let a = v.as_array()?;
    Some((
        a[0].as_str()?.to_owned(),
        a[1].as_u64()?,
        a[2].as_str()?.to_owned(),
    ))
}

#[test]
fn the_page_shows_the_family_live_and_restarts_a_node_when_its_button_is_clicked() {
    let h = Harness::start(FAMILY, &[]);
    let views = h.wait_ready(&["native", "world/main", "world/main-2"]);
    let (addr, token) = h.dashboard();

    // The link a user opens: `syncra dashboard` prints it, with the token after `#`.
    let out = h.cli(&["dashboard"]);
    assert!(out.status.success(), "{out:?}");
    let link = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert_eq!(link, format!("http://{addr}/#token={token}"));
    let status = h.cli(&["status"]);
    assert!(
        String::from_utf8_lossy(&status.stdout).contains(&format!("dashboard: http://{addr}/")),
        "{status:?}"
    );

    let b = Browser::start();
    // Without the token the page says where to find it, and shows nothing.
    b.goto(&format!("http://{addr}/"));
    b.until("the page asks for the token", |b| {
        b.text("#no-token")
            .filter(|t| t.contains("needs the runtime's token"))
    });
    assert_eq!(
        b.eval(
            "return document.querySelectorAll('#nodes tbody tr').length",
            vec![]
        ),
        0
    );

    b.goto(&link);
    let main_pid = views[1].pid.unwrap().to_string();
    b.until("every node is shown ready, with its pid", |b| {
        let (state, inc, text) = row(b, "world/main")?;
        (state == "ready"
            && inc == 1
            && text.contains(&main_pid)
            && row(b, "native")?.0 == "ready"
            && row(b, "world/main-2")?.0 == "ready")
            .then_some(())
    });
    b.until("the worlds' streams are shown with their rate", |b| {
        b.text("tr[data-stream=\"world/main/scene\"]")
            .filter(|t| t.contains("Hz") && t.contains("world/main"))
    });
    b.until("the event stream is live", |b| {
        b.text("#link").filter(|t| t == "live")
    });

    // A click on world/main's restart: it alone restarts, and the page follows.
    b.click("button[data-action=\"restart\"][data-node=\"world/main\"]");
    let again = h.wait_ready_incarnation("world/main", 2);
    assert_ne!(again.pid, views[1].pid);
    assert_eq!(
        h.node("world/main-2").incarnation,
        1,
        "only world/main restarted"
    );
    assert_eq!(h.node("native").incarnation, 1, "only world/main restarted");
    let new_pid = again.pid.unwrap().to_string();
    b.until("the new incarnation and its events are shown", |b| {
        let (state, inc, text) = row(b, "world/main")?;
        let up = b.eval(
            "return !!document.querySelector('#events li[data-node=\"world/main\"][data-event=\"up\"][data-incarnation=\"2\"]')",
            vec![],
        );
        (state == "ready" && inc == 2 && text.contains(&new_pid) && up == true).then_some(())
    });
    b.until("the action's answer is shown", |b| {
        b.text("#message").filter(|t| t.contains("world/main"))
    });

    // The native driver dies of a null pointer; its crash record opens with the stack.
    send(views[0].pid.unwrap(), libc::SIGUSR1);
    h.wait_ready_incarnation("native", 2);
    b.click("button[data-crashes=\"native\"]");
    b.until("the crash record shows the crashing function", |b| {
        b.text("#crashes")
            .filter(|t| t.contains("syncra_native_null_deref") && t.contains("SIGSEGV"))
    });

    let png = b.screenshot();
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    std::fs::write(&shot, png).unwrap();
    eprintln!("screenshot: {}", shot.display());
}

#[test]
fn the_api_answers_only_with_the_token_from_its_own_host_and_origin() {
    let mut h = Harness::start(FAMILY, &[]);
    h.wait_ready(&["native", "world/main", "world/main-2"]);
    let (addr, token) = h.dashboard();
    let token_file = h.run_dir().join("dashboard.token");
    let meta = std::fs::metadata(&token_file).unwrap();
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o600,
        "the token is private"
    );
    assert_eq!(meta.uid(), rustix::process::getuid().as_raw());

    // Reads: with the token in the header or the query.
    let status = get(addr, "/api/status", Some(&token));
    assert_eq!(status.status, 200, "{}", status.text());
    let nodes = status.json()["nodes"].as_array().unwrap().len();
    assert_eq!(nodes, 3);
    assert_eq!(
        get(addr, &format!("/api/streams?token={token}"), None).status,
        200
    );
    let crashes = get(addr, "/api/crashes?node=native", Some(&token));
    assert_eq!(crashes.json(), serde_json::json!([]));
    // Names and tokens as a client that encodes them sends them; the scheme in any case.
    let crashes = get(addr, "/api/crashes?node=world%2Fmain&limit=5", Some(&token));
    assert_eq!(crashes.status, 200, "{}", crashes.text());
    let lower = exchange(
        addr,
        &format!("GET /api/status HTTP/1.1\r\nHost: {addr}\r\nAuthorization: bearer {token}\r\nConnection: close\r\n\r\n"),
    )
    .unwrap();
    assert_eq!(lower.status, 200, "{}", lower.text());
    // The page itself holds no data: anyone on this address gets it.
    let page = get(addr, "/", None);
    assert_eq!(page.status, 200);
    assert!(page.text().contains("<title>Syncra</title>"));
    assert!(
        page.header("content-security-policy")
            .is_some_and(|c| c.contains("default-src 'none'")),
        "{:?}",
        page.headers
    );

    // No token, a wrong one, one of the same length: 401 with the reason.
    for (path, given) in [
        ("/api/status", None),
        ("/metrics", None),
        ("/api/events", None),
        ("/api/status", Some("not-the-token")),
        ("/api/status", Some(&*"0".repeat(64))),
    ] {
        let r = get(addr, path, given);
        assert_eq!(r.status, 401, "{path} with {given:?}: {}", r.text());
        assert_eq!(r.json()["error"]["kind"], "token");
        assert!(r.header("www-authenticate").is_some());
    }
    let wrong = get(addr, "/api/status?token=abc", None);
    assert!(
        wrong.text().contains("the token is wrong"),
        "{}",
        wrong.text()
    );

    // An action needs the header: a token in the query (a link another page could make the
    // browser follow) is not enough, and nothing restarts.
    let r = post(
        addr,
        &format!("/api/nodes/world/main/restart?token={token}"),
        None,
        "",
    );
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(r.text().contains("Authorization: Bearer"), "{}", r.text());
    // From another origin, even with the token: refused.
    let r = post(
        addr,
        "/api/nodes/world/main/restart",
        Some(&token),
        "Origin: http://evil.example\r\n",
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("evil.example"), "{}", r.text());
    assert_eq!(h.node("world/main").incarnation, 1, "nothing restarted");

    // Another Host (a name rebound to 127.0.0.1): refused, the page too.
    for path in ["/", "/api/status"] {
        let r = exchange(
            addr,
            &format!(
                "GET {path} HTTP/1.1\r\nHost: evil.example:{}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n",
                addr.port()
            ),
        )
        .unwrap();
        assert_eq!(r.status, 421, "{}", r.text());
        assert!(r.text().contains("evil.example"), "{}", r.text());
    }
    // A body, a wrong method, an unknown node, an unknown path, an unknown action.
    let r = exchange(
        addr,
        &format!(
            "POST /api/nodes/world/main/restart HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
        ),
    )
    .unwrap();
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(
        get(addr, "/api/nodes/world/main/restart", Some(&token)).status,
        405
    );
    let r = post(addr, "/api/nodes/world%2Fnowhere/restart", Some(&token), "");
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(r.text().contains("world/nowhere"), "{}", r.text());
    assert_eq!(get(addr, "/api/secrets", Some(&token)).status, 404);
    assert_eq!(
        post(addr, "/api/nodes/world/main/explode", Some(&token), "").status,
        404
    );
    // A head larger than the bound: the connection is refused, not buffered.
    let big = format!(
        "GET /api/status HTTP/1.1\r\nHost: {addr}\r\nX-Pad: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let r = exchange(addr, &big);
    assert!(r.as_ref().map_or(true, |r| r.status == 431), "{r:?}");
    assert_eq!(h.node("world/main").incarnation, 1, "nothing restarted");

    // The events, as a browser's EventSource reads them: a restart through the API is seen.
    let mut events = EventStream::open(addr, &token).unwrap();
    assert_eq!(events.status, 200);
    let r = post(
        addr,
        "/api/nodes/world/main/restart",
        Some(&token),
        &format!("Origin: http://{addr}\r\n"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["ok"].as_str().unwrap().contains("world/main"));
    let deadline = Instant::now() + PATIENCE;
    loop {
        let ev = events.next_event().expect("the event stream ended");
        if ev.event == "lifecycle" {
            let v: serde_json::Value = serde_json::from_str(&ev.data).unwrap();
            if v["node"] == "world/main" && v["what"]["event"] == "up" && v["incarnation"] == 2 {
                break;
            }
        }
        assert!(Instant::now() < deadline, "no `up` of world/main #2");
    }

    // Another local user cannot read the token, and cannot use it either: its connections are
    // refused before they take a place (as root, the test can be that user).
    if is_root() {
        use std::os::unix::process::CommandExt;
        let out = std::process::Command::new("bash")
            .arg("-c")
            .arg(format!(
                "exec 3<>/dev/tcp/127.0.0.1/{}; printf 'GET /api/status HTTP/1.1\\r\\nHost: {addr}\\r\\nAuthorization: Bearer {token}\\r\\nConnection: close\\r\\n\\r\\n' >&3; cat <&3",
                addr.port()
            ))
            .uid(STRANGER_UID)
            .gid(STRANGER_UID)
            .output()
            .unwrap();
        let answer = String::from_utf8_lossy(&out.stdout);
        assert!(
            answer.starts_with("HTTP/1.1 403") && answer.contains("only the user"),
            "another user, with the token: {answer:?} {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    if is_root() {
        use std::os::unix::process::CommandExt;
        let out = std::process::Command::new("cat")
            .arg(&token_file)
            .uid(STRANGER_UID)
            .gid(STRANGER_UID)
            .output()
            .unwrap();
        assert!(!out.status.success(), "another user read the token");
        assert!(out.stdout.is_empty());
    }

    // At shutdown the token goes with the runtime.
    let out = h.cli(&["shutdown"]);
    assert!(out.status.success(), "{out:?}");
    h.wait_exit(PATIENCE);
    assert!(!token_file.exists(), "the token file outlived the runtime");
    assert!(
        TcpStream::connect(addr).is_err(),
        "the dashboard outlived the runtime"
    );
}

#[test]
fn metrics_are_prometheus_text_with_every_node_and_stream() {
    let h = Harness::start(FAMILY, &[]);
    h.wait_ready(&["native", "world/main", "world/main-2"]);
    let (addr, token) = h.dashboard();
    h.cli(&["restart", "world/main-2"]);
    h.wait_ready_incarnation("world/main-2", 2);
    // Wait for the scene stream to have a rate (its first sampling period).
    h.wait_until("the scene stream has a rate", PATIENCE, |_| {
        let streams = get(addr, "/api/streams", Some(&token)).json();
        streams
            .as_array()?
            .iter()
            .any(|s| {
                s["name"] == "world/main/scene" && s["rate_hz"].as_f64().is_some_and(|r| r > 0.0)
            })
            .then_some(())
    });
    let r = get(addr, "/metrics", Some(&token));
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("text/plain; version=0.0.4")),
        "{:?}",
        r.headers
    );
    let text = r.text();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .unwrap_or_else(|e| panic!("not Prometheus text ({e}):\n{text}"));
    let value = |name: &str, labels: &[(&str, &str)]| -> Option<f64> {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            })
    };
    for node in ["native", "world/main", "world/main-2"] {
        assert_eq!(
            value("syncra_node_state", &[("node", node), ("state", "ready")]),
            Some(1.0),
            "{text}"
        );
    }
    assert_eq!(
        value("syncra_node_restarts_total", &[("node", "world/main-2")]),
        Some(1.0)
    );
    assert_eq!(
        value(
            "syncra_node_incarnation",
            &[("node", "world/main-2"), ("kind", "world")]
        ),
        Some(2.0)
    );
    assert_eq!(
        value("syncra_node_restarts_total", &[("node", "world/main")]),
        Some(0.0)
    );
    assert_eq!(
        value("syncra_node_entities", &[("node", "world/main")]),
        Some(16.0)
    );
    assert!(value("syncra_node_tick", &[("node", "world/main")]).unwrap() > 0.0);
    assert!(
        value(
            "syncra_stream_published_total",
            &[("stream", "world/main/scene"), ("producer", "world/main")]
        )
        .unwrap()
            > 0.0
    );
    assert!(value("syncra_stream_rate_hz", &[("stream", "world/main/scene")]).unwrap() > 0.0);
    assert!(value("syncra_runtime_uptime_seconds", &[]).unwrap() > 0.0);
    // Types as declared: counters are counters.
    let types: HashMap<_, _> = scrape
        .samples
        .iter()
        .map(|s| (s.metric.as_str(), std::mem::discriminant(&s.value)))
        .collect();
    assert_eq!(
        types["syncra_node_restarts_total"],
        std::mem::discriminant(&prometheus_parse::Value::Counter(0.0))
    );
}

#[test]
fn a_flood_of_clients_is_refused_boundedly_and_the_dashboard_still_answers() {
    let h = Harness::start(
        &FAMILY.replace("port = 0\n", "port = 0\nmax_clients = 8\n"),
        &[],
    );
    let before = h.wait_ready(&["native", "world/main", "world/main-2"]);
    let (addr, token) = h.dashboard();

    // 200 connections that never send a request: the oldest idle ones give way, so a real
    // request is still answered.
    let idle: Vec<TcpStream> = (0..200)
        .map(|_| TcpStream::connect(addr).unwrap())
        .collect();
    let deadline = Instant::now() + PATIENCE;
    loop {
        match exchange(
            addr,
            &format!(
                "GET /api/status HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
            ),
        ) {
            Ok(r) if r.status == 200 => break,
            other => {
                assert!(
                    Instant::now() < deadline,
                    "the dashboard never answered: {other:?}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    // The newcomers past the bound that found no idle connection to replace were told why.
    let refused = idle
        .into_iter()
        .filter(|s| {
            use std::io::Read;
            s.set_nonblocking(true).unwrap();
            let mut answer = String::new();
            let _ = (&*s).read_to_string(&mut answer);
            answer.starts_with("HTTP/1.1 503") && answer.contains("dashboard.max_clients")
        })
        .count();
    assert!(refused > 0, "no newcomer was refused with a 503");

    // Event streams are busy connections: half the bound at most; the next is refused with
    // the reason, and one more connection past the bound gets 503.
    let mut streams = Vec::new();
    for _ in 0..4 {
        let s = EventStream::open(addr, &token).unwrap();
        assert_eq!(s.status, 200);
        streams.push(s);
    }
    let r = get(addr, "/api/events", Some(&token));
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("event streams"), "{}", r.text());
    let r = get(addr, "/api/status", Some(&token));
    assert_eq!(r.status, 200, "{}", r.text());

    // Every node kept running, untouched.
    let after = h.try_status().expect("the runtime answers");
    for v in &before {
        let now = after.node(v.name.as_str()).unwrap();
        assert_eq!(
            (now.pid, now.incarnation),
            (v.pid, v.incarnation),
            "{}",
            v.name
        );
    }
}

#[test]
fn a_dashboard_port_in_use_is_a_start_error_that_names_it() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let mut h = Harness::start(
        &FAMILY.replace("port = 0\n", &format!("port = {port}\n")),
        &[],
    );
    let status = h.wait_exit(PATIENCE);
    assert!(!status.success());
    let out = h.output();
    assert!(
        out.contains(&format!("127.0.0.1:{port} is in use")) && out.contains("dashboard.port"),
        "{out}"
    );
}
