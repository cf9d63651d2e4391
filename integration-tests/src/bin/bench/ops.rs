//! Operations (issue 14): a reload with nothing to change, a driver's executable swapped live
//! until its consumer has the new binary's first message, and a native crash until its
//! minidump is written and its stack recorded — each beside the same run's baseline.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use syncra_integration_tests::peers::{self, driver};
use syncra_integration_tests::{Harness, percentile, send};
use syncra_protocol::control::{ControlReply, ControlRequest};
use syncra_protocol::status::EventKind;
use syncra_runtime::ControlClient;

use super::{Row, events, ms, until};

/// Every operations row.
pub(crate) fn all(
    reloads: usize,
    swaps: usize,
    crashes: usize,
    page_events: usize,
    rows: &mut Vec<Row>,
) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    reload_no_change(&rt, reloads, rows);
    swap(&rt, swaps, rows);
    crash_dumps(&rt, crashes, rows);
    dashboard_page(&rt, page_events, rows);
}

/// Milliseconds since the Unix epoch, now (the clock the page's
/// `performance.timeOrigin + performance.now()` counts on).
fn unix_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        * 1e3
}

/// (ops d) A lifecycle event until the dashboard's page in headless Chromium shows it (SSE,
/// then the page's script): a restart asked over the control socket, until the page lists
/// the node's `down` — beside a control-socket subscriber (`syncra events`) getting the same
/// event in the same run.
fn dashboard_page(rt: &tokio::runtime::Runtime, n: usize, rows: &mut Vec<Row>) {
    use syncra_integration_tests::web::{Browser, CHROMEDRIVER, CHROMIUM};
    let measure =
        "(ops d) dashboard: restart asked → its `down` event shown in the page (Chromium, SSE)";
    if !Path::new(CHROMIUM).exists() || !Path::new(CHROMEDRIVER).exists() {
        rows.push(Row {
            measure: measure.into(),
            p50: "-".into(),
            p99: "-".into(),
            baseline: "-".into(),
            target: "-".into(),
            verdict: format!(
                "not measured: {CHROMIUM} or {CHROMEDRIVER} missing (`cargo test-all` installs them)"
            ),
        });
        return;
    }
    let h = Harness::start(
        &super::config(
            1000,
            "[worlds]\nentities = 64\n[dashboard]\nenabled = true\nport = 0\n",
        ),
        &[],
    );
    h.wait_ready(&["world/main"]);
    let (addr, token) = h.dashboard();
    let browser = Browser::start();
    browser.goto(&format!("http://{addr}/#token={token}"));
    browser.until("the page is live", |b| {
        b.text("#link").filter(|t| t == "live")
    });
    // The page's clock against ours: a script's answer lies between the two readings around it.
    let (before, page, after) = (
        unix_ms(),
        browser
            .eval("return performance.timeOrigin + performance.now()", vec![])
            .as_f64()
            .unwrap(),
        unix_ms(),
    );
    assert!(
        page >= before - 1.0 && page <= after + 1.0,
        "the page's clock is off ours by more than a millisecond: {before} {page} {after}"
    );
    let mut events = rt.block_on(events(&h));
    let (mut shown, mut received) = (Vec::new(), Vec::new());
    for i in 1..=n as u64 {
        let t0 = unix_ms();
        let _ = request(
            rt,
            &h,
            ControlRequest::Restart {
                node: "world/main".into(),
            },
        );
        rt.block_on(until(&mut events, |ev| {
            (ev.node.as_str() == "world/main"
                && ev.incarnation == i
                && matches!(ev.what, EventKind::Down { .. }))
            .then_some(())
        }));
        received.push(unix_ms() - t0);
        // Waited for inside the page (a MutationObserver), so that no polling script competes
        // with the page's own for its main thread.
        let at = browser
            .eval_async(
                "const [inc, done] = arguments;
                 const sel = `#events li[data-node=\"world/main\"][data-event=\"down\"][data-incarnation=\"${inc}\"]`;
                 const found = () => {
                   const e = document.querySelector(sel);
                   if (e) done(Number(e.dataset.shownAt));
                   return !!e;
                 };
                 if (!found()) {
                   const o = new MutationObserver(() => { if (found()) o.disconnect(); });
                   o.observe(document.getElementById('events'), { childList: true });
                 }",
                vec![i.into()],
            )
            .as_f64()
            .expect("the time the page showed the event");
        shown.push(at - t0);
        h.wait_ready_incarnation("world/main", i + 1);
    }
    rows.push(Row {
        measure: format!("{measure} ({n} restarts)"),
        p50: ms(percentile(&mut shown, 50.0)),
        p99: ms(percentile(&mut shown, 99.0)),
        baseline: format!(
            "same event on a control-socket subscriber: p50 {} p99 {}",
            ms(percentile(&mut received, 50.0)),
            ms(percentile(&mut received, 99.0))
        ),
        target: "-".into(),
        verdict: "measured".into(),
    });
}

fn request(rt: &tokio::runtime::Runtime, h: &Harness, req: ControlRequest) -> ControlReply {
    rt.block_on(async {
        ControlClient::connect(&h.run_dir())
            .await
            .expect("connect")
            .request(req)
            .await
            .expect("request")
    })
}

/// (ops a) `syncra reload` of an unchanged config over the control socket: read, validated,
/// compared, nothing restarted — beside a `status` round trip on the same socket.
fn reload_no_change(rt: &tokio::runtime::Runtime, n: usize, rows: &mut Vec<Row>) {
    let h = Harness::start(
        &super::config(
            1000,
            "[worlds]\nentities = 64\nnames = [\"a\", \"b\", \"c\"]\n",
        ),
        &[],
    );
    h.wait_ready(&["world/main", "world/a", "world/b", "world/c"]);
    let before: Vec<_> = h
        .try_status()
        .unwrap()
        .nodes
        .iter()
        .map(|v| v.pid)
        .collect();
    let (mut reload, mut status) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let t0 = Instant::now();
        let reply = request(
            rt,
            &h,
            ControlRequest::Reload {
                config: None,
                dry_run: false,
            },
        );
        reload.push(t0.elapsed().as_secs_f64() * 1e3);
        assert!(
            matches!(&reply, ControlReply::Reloaded { changes, .. } if changes == &["no change"]),
            "{reply:?}"
        );
        let t0 = Instant::now();
        request(rt, &h, ControlRequest::Status);
        status.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    let after: Vec<_> = h
        .try_status()
        .unwrap()
        .nodes
        .iter()
        .map(|v| v.pid)
        .collect();
    let restarts = before.iter().zip(&after).filter(|(a, b)| a != b).count();
    let (r50, r99) = (percentile(&mut reload, 50.0), percentile(&mut reload, 99.0));
    rows.push(Row {
        measure: format!("(ops a) `syncra reload`, nothing changed ({n} reloads, 4 worlds)"),
        p50: ms(r50),
        p99: ms(r99),
        baseline: format!(
            "`syncra status` round trip: p50 {} p99 {}",
            ms(percentile(&mut status, 50.0)),
            ms(percentile(&mut status, 99.0))
        ),
        target: "0 restarts".into(),
        verdict: super::verdict(restarts == 0, format!("{restarts} restarts")),
    });
}

/// Lines a peer appends to its report file, read as they come.
struct Tail {
    path: PathBuf,
    at: u64,
    partial: String,
}

impl Tail {
    fn new(path: PathBuf) -> Tail {
        let at = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        Tail {
            path,
            at,
            partial: String::new(),
        }
    }

    /// Wait until a line satisfies `f`.
    fn until(&mut self, mut f: impl FnMut(&serde_json::Value) -> bool) -> Instant {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(mut file) = std::fs::File::open(&self.path) {
                let _ = file.seek(SeekFrom::Start(self.at));
                let mut more = String::new();
                if let Ok(n) = file.read_to_string(&mut more) {
                    self.at += n as u64;
                    self.partial.push_str(&more);
                }
                let text = std::mem::take(&mut self.partial);
                let (whole, rest) = match text.rfind('\n') {
                    Some(i) => text.split_at(i + 1),
                    None => ("", text.as_str()),
                };
                self.partial = rest.to_owned();
                for line in whole.lines() {
                    if let Ok(v) = serde_json::from_str::<serde_json::Value>(line)
                        && f(&v)
                    {
                        return Instant::now();
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "no such line in {}",
                self.path.display()
            );
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

/// (ops b) `syncra upgrade` of a stream's producer → its consumer has the new binary's first
/// message; the baseline is the same driver SIGKILLed → its replacement's first message.
fn swap(rt: &tokio::runtime::Runtime, n: usize, rows: &mut Vec<Row>) {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path();
    let versions = [
        peers::copy(dir, "producer-v1"),
        peers::copy(dir, "producer-v2"),
    ];
    let producer = peers::driver_running(
        &versions[0],
        dir,
        "producer",
        "producer",
        &[
            "stream=producer/ticks",
            "policy=drop",
            "slots=64",
            "rate=1000",
        ],
    );
    let config = super::config(
        1000,
        &format!(
            "{producer}{}[worlds]\nentities = 16\n",
            driver(
                dir,
                "consumer",
                "consumer",
                &["stream=producer/ticks"],
                None
            )
        ),
    );
    let h = Harness::start(&config, &[]);
    h.wait_ready(&["producer", "consumer", "world/main"]);
    let mut tail = Tail::new(dir.join("consumer.jsonl"));
    let mut stream = rt.block_on(events(&h));
    let (mut swapped, mut killed) = (Vec::new(), Vec::new());
    for i in 0..n {
        let node = h.wait_ready_incarnation("producer", (2 * i + 1) as u64);
        let next = node.incarnation + 1;
        // An upgrade to the other version.
        let to = versions[(i + 1) % 2].clone();
        let run_dir = h.run_dir();
        let t0 = Instant::now();
        // The request answers once the new one is ready; its first message is watched for
        // meanwhile.
        let upgrade = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async {
                    ControlClient::connect(&run_dir)
                        .await
                        .expect("connect")
                        .request(ControlRequest::Upgrade {
                            node: "producer".into(),
                            command: to,
                        })
                        .await
                        .expect("upgrade")
                })
        });
        let t1 = tail.until(|v| v["inc"].as_u64() == Some(next));
        let reply = upgrade.join().unwrap();
        assert!(matches!(reply, ControlReply::Reloaded { .. }), "{reply:?}");
        swapped.push((t1 - t0).as_secs_f64() * 1e3);
        // The same driver killed: its replacement's first message.
        let node = h.wait_ready_incarnation("producer", next);
        std::thread::sleep(Duration::from_millis(60));
        let t0 = Instant::now();
        send(node.pid.unwrap(), libc::SIGKILL);
        let t1 = tail.until(|v| v["inc"].as_u64() == Some(next + 1));
        killed.push((t1 - t0).as_secs_f64() * 1e3);
        rt.block_on(until(&mut stream, |ev| {
            (matches!(ev.what, EventKind::Up { .. }) && ev.incarnation == next + 1).then_some(())
        }));
    }
    let (s50, s99) = (
        percentile(&mut swapped, 50.0),
        percentile(&mut swapped, 99.0),
    );
    let (k50, k99) = (percentile(&mut killed, 50.0), percentile(&mut killed, 99.0));
    rows.push(Row {
        measure: format!(
            "(ops b) `syncra upgrade` of a producer → its consumer has the new binary's first message ({n} swaps, 1 kHz stream)"
        ),
        p50: ms(s50),
        p99: ms(s99),
        baseline: format!(
            "the same driver SIGKILLed → its replacement's first message: p50 {} p99 {}",
            ms(k50),
            ms(k99)
        ),
        target: "a swap costs a graceful stop more than a crash restart".into(),
        verdict: format!("+{:.1} ms at p50", s50 - k50),
    });
}

/// (ops c) A null pointer in C → the process is gone with its minidump written (the Down
/// event), and → its crash record on disk has the symbolized stack; the baseline is SIGKILL
/// of the same node → Down (no dump).
fn crash_dumps(rt: &tokio::runtime::Runtime, n: usize, rows: &mut Vec<Row>) {
    let h = Harness::start(
        &super::config(
            1000,
            "[drivers.native]\ncommand = \"syncra-test-native\"\nargs = [\"null\"]\n[worlds]\nentities = 16\n",
        ),
        &[],
    );
    h.wait_ready(&["native", "world/main"]);
    let mut stream = rt.block_on(events(&h));
    let (mut dumped, mut recorded, mut killed, mut bytes) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..n {
        let inc = (2 * i + 1) as u64;
        let node = h.wait_ready_incarnation("native", inc);
        std::thread::sleep(Duration::from_millis(60));
        let t0 = Instant::now();
        send(node.pid.unwrap(), libc::SIGUSR1);
        let (t1, ()) = rt.block_on(until(&mut stream, |ev| {
            (matches!(ev.what, EventKind::Down { .. }) && ev.incarnation == inc).then_some(())
        }));
        dumped.push((t1 - t0).as_secs_f64() * 1e3);
        let record = h
            .crashes(Some("native"))
            .into_iter()
            .find(|c| c.record.incarnation == inc)
            .map(|c| PathBuf::from(c.path))
            .expect("a crash record");
        let (t2, size) = stack_on_disk(&record);
        recorded.push((t2 - t0).as_secs_f64() * 1e3);
        bytes.push(size as f64);
        // The baseline: the next incarnation SIGKILLed.
        let node = h.wait_ready_incarnation("native", inc + 1);
        std::thread::sleep(Duration::from_millis(60));
        let t0 = Instant::now();
        send(node.pid.unwrap(), libc::SIGKILL);
        let (t1, ()) = rt.block_on(until(&mut stream, |ev| {
            (matches!(ev.what, EventKind::Down { .. }) && ev.incarnation == inc + 1).then_some(())
        }));
        killed.push((t1 - t0).as_secs_f64() * 1e3);
    }
    let (k50, k99) = (percentile(&mut killed, 50.0), percentile(&mut killed, 99.0));
    let (d50, d99) = (percentile(&mut dumped, 50.0), percentile(&mut dumped, 99.0));
    let size = percentile(&mut bytes, 50.0);
    rows.push(Row {
        measure: format!(
            "(ops c) SIGSEGV in C → process gone, minidump written ({n} crashes, {:.0} KiB dumps)",
            size / 1024.0
        ),
        p50: ms(d50),
        p99: ms(d99),
        baseline: format!(
            "SIGKILL of the same node → gone: p50 {} p99 {}",
            ms(k50),
            ms(k99)
        ),
        target: "-".into(),
        verdict: format!("+{:.1} ms at p50", d50 - k50),
    });
    rows.push(Row {
        measure: "(ops c) … → crash record on disk with the symbolized stack".into(),
        p50: ms(percentile(&mut recorded, 50.0)),
        p99: ms(percentile(&mut recorded, 99.0)),
        baseline: "(off the restart's path)".into(),
        target: "-".into(),
        verdict: "-".into(),
    });
}

/// Wait until the crash record at `path` has its dump's stack: when, and the dump's size.
fn stack_on_disk(path: &Path) -> (Instant, u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(bytes) = std::fs::read(path)
            && let Ok(r) = serde_json::from_slice::<syncra_protocol::crash::CrashRecord>(&bytes)
            && let Some(d) = r.dump
            && (!d.stack.is_empty() || d.error.is_some())
        {
            assert_eq!(d.error, None, "{}", path.display());
            return (Instant::now(), d.bytes);
        }
        assert!(Instant::now() < deadline, "no stack in {}", path.display());
        std::thread::sleep(Duration::from_micros(500));
    }
}
