//! A test node for routing and streams. The first argument is its role, the rest `key=value`
//! options; it reports what it sees as JSON lines in the file `out=PATH`.
//!
//! - `echo [hold=1] [hold_after=N] [hold_direct=1]`: answers `Ping(n)` calls from its main
//!   loop and `LinkPing(n)` calls on its link thread, with `Pong { n, incarnation, direct }`;
//!   with `hold`, takes every `Ping` (with `hold_after`, every one after the first N; with
//!   `hold_direct`, every one that came over a direct link) and never answers it, reporting
//!   how many it holds. Its figures: `answered` (a counter) and
//!   `holding` (a gauge).
//! - `sequencer to=A[,B…] [count=N] [burst=K] [pause_ms=MS]`: sends `Seq(1..=N)` to each, from
//!   one thread, in bursts; reports `sent`, and later any message given back.
//! - `sink [count=N]`: takes `Seq` messages and reports any out of its sender's order, then,
//!   once N have come, how many came over a direct link (`direct`) and through the hub;
//!   answers `Ping` calls.
//! - `vandal to=NAME`: calls `to` until it has a direct link to it, writes garbage straight on
//!   the link's socket (`vandalised`), then calls until `to` answers again (`answered_after`).
//! - `caller to=NAME [timeout_ms=MS]`: first sends to a name nobody has (and reports what came
//!   back), then calls `to` every 10 ms (each call waiting up to `timeout_ms`, default 3000, in
//!   all), reporting each outcome. Before that, one `LinkPing(42)` call from a task on its
//!   link thread (`link_answer`).
//! - `producer stream=NAME policy=latest|drop|block slots=N rate=HZ [size=B] [fill=1]
//!   [block_ms=MS] [grow=1]`: publishes `Tick { n, t }` (`t` its publish time) as fast as
//!   `rate` allows, reporting write errors (and a refused declaration as `declare_error`);
//!   `fill=1` pads each message to about `size` bytes; with `grow=1`, incarnations after the
//!   first declare one slot more.
//! - `bulk-producer stream=NAME abort_at=K`: publishes frames whose bytes all equal the
//!   header's `n`; the incarnation-1 process aborts in the middle of writing message `abort_at`.
//! - `looper stream=NAME [async=1]`: one event loop ([`syncra_node::events`]; `async=1`: its
//!   async form): reports each `Tick` of `stream`, answers `Ping` calls, and on shutdown
//!   reports `shutdown` and exits 0.
//! - `wake-bench stream=NAME mode=events|raw [samples=N]`: the publish → wake latency of N
//!   samples, woken by the event loop or by a blocking read (`latency_us`).
//! - `stats to=NAME`: asks the hologram driver for its stats every 100 ms, with its own types
//!   under the hologram's tags, and reports the answers.
//! - `library-loop`: its main thread lives in a "library" loop fed by a timer thread; it
//!   beats through `Node::heartbeat_handle` from inside that loop, and leaves when the
//!   `Node::on_shutdown` callback posts a quit into it (`quit_posted`).
//! - `viewer stream=NAME`: subscribes to a world's scene stream before it is ready (reporting
//!   `attached_at_ready`), then reports each scene's world, tick and entity count.
//! - `consumer stream=NAME [type=wrong] [wait=0] [delay_ms=D] [bulk=1]`: subscribes (lazily:
//!   the stream may come later; `wait=0`: only one that exists now) and reports every message
//!   (seq, gap, producer incarnation, payload, and `age_us`: publish to receive).
//! - `bench-caller to=NAME direct=PATH rounds=N`: times `rounds` routed calls to `to` from
//!   the main loop, as many from a task on the link thread (answered on the callee's link
//!   thread) and as many direct ractor_cluster calls to the echo served at `direct` (an
//!   `echo direct=PATH` in another process), in alternating blocks, and reports them as
//!   `routed_us`, `link_us` and `direct_us`.
//!
//! `echo direct=PATH` also serves a direct ractor_cluster echo on the Unix socket `PATH`.

#![allow(clippy::disallowed_methods, reason = "a test helper")]

use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use syncra_node::{CallError, Node, StreamOptions};
use syncra_protocol::status::NodeMetrics;

#[path = "peer/direct.rs"]
mod direct;

#[derive(Debug, Serialize, Deserialize)]
struct Ping(u64);

/// A ping the echo answers on its link thread ([`Node::serve_calls`]).
#[derive(Debug, Serialize, Deserialize)]
struct LinkPing(u64);

#[derive(Debug, Serialize, Deserialize)]
struct Pong {
    n: u64,
    incarnation: u64,
    /// Whether the call came over a direct link (known to a main-loop answer only).
    #[serde(default)]
    direct: bool,
}

/// One of a numbered sequence of messages (`sequencer` → `sink`).
#[derive(Debug, Serialize, Deserialize)]
struct Seq(u64);

#[derive(Debug, Serialize, Deserialize)]
struct Tick {
    n: u64,
    /// When it was published, CLOCK_MONOTONIC ns (one clock for every host of a test).
    #[serde(default)]
    t: u64,
    /// Filler, to make the message `size` bytes.
    #[serde(default, with = "serde_bytes")]
    pad: Vec<u8>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Frame {
    n: u64,
}

/// A type of the same shape as [`Tick`] under another tag: subscribing with it is refused.
#[derive(Debug, Serialize, Deserialize)]
struct NotATick {
    n: u64,
}

syncra_node::message!(Pong = "syncra.test.pong/1");
syncra_node::message!(Ping = "syncra.test.ping/1" => Pong);
syncra_node::message!(LinkPing = "syncra.test.link-ping/1" => Pong);
syncra_node::message!(Tick = "syncra.test.tick/1");
syncra_node::message!(NotATick = "syncra.test.not-a-tick/1");
syncra_node::message!(Frame = "syncra.test.frame/1");
syncra_node::message!(Seq = "syncra.test.seq/1");

struct Out(std::fs::File);

/// An actor posing as someone else (the `impostor` role: another node's agent, the
/// runtime's gateway): it counts what reaches it.
struct Counter<M>(
    std::sync::Arc<std::sync::atomic::AtomicU64>,
    std::marker::PhantomData<fn(M)>,
);

impl<M: ractor::Message> ractor::Actor for Counter<M> {
    type Msg = M;
    type State = ();
    type Arguments = ();
    async fn pre_start(
        &self,
        _: ractor::ActorRef<Self::Msg>,
        _: (),
    ) -> Result<(), ractor::ActorProcessingErr> {
        Ok(())
    }
    async fn handle(
        &self,
        _: ractor::ActorRef<Self::Msg>,
        _: Self::Msg,
        _: &mut (),
    ) -> Result<(), ractor::ActorProcessingErr> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}

impl Out {
    fn line(&mut self, v: serde_json::Value) {
        let _ = writeln!(self.0, "{v}");
        let _ = self.0.flush();
    }
}

/// When a sample `latency` old now was published (CLOCK_MONOTONIC ns, the rings' clock).
fn published_ns(latency: Duration) -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64)
        .saturating_sub(latency.as_nanos() as u64)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let role = args.first().cloned().unwrap_or_default();
    let opts: HashMap<String, String> = args
        .iter()
        .skip(1)
        .filter_map(|a| a.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect();
    let opt = |k: &str| opts.get(k).cloned().unwrap_or_default();
    let num = |k: &str, d: u64| opts.get(k).and_then(|v| v.parse().ok()).unwrap_or(d);
    let node = std::sync::Arc::new(Node::join().unwrap_or_else(|e| e.exit()));
    let mut out = Out(std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(opt("out"))
        .expect("out=PATH"));
    let inc = node.incarnation();
    let mut tick = 0u64;
    let mut beat = |node: &Node| {
        tick += 1;
        node.heartbeat(Some(&NodeMetrics {
            tick,
            ..NodeMetrics::default()
        }));
    };
    match role.as_str() {
        "echo" => {
            if opts.contains_key("direct") {
                direct::serve(opt("direct").into());
            }
            node.serve_calls(move |_, LinkPing(n)| {
                Ok(Pong {
                    n,
                    incarnation: inc,
                    direct: false,
                })
            });
            // Figures for `syncra status`: a counter and a gauge.
            let answered = node.figure("answered", syncra_node::FigureKind::Counter);
            let holding = node.figure("holding", syncra_node::FigureKind::Gauge);
            node.ready();
            // `hold`: take every call and never answer it (a callee about to die mid-call);
            // `hold_after=N`: the same once it has answered N.
            let mut held = Vec::new();
            let mut answered_n = 0u64;
            while !node.shutdown_requested() {
                if let Some(call) = node.recv_timeout(Duration::from_millis(20)) {
                    let hold = opts.contains_key("hold")
                        || (opts.contains_key("hold_after") && answered_n >= num("hold_after", 0))
                        || (opts.contains_key("hold_direct") && call.is_direct());
                    if hold {
                        held.push(call);
                        holding.set(held.len() as f64);
                        out.line(serde_json::json!({ "holding": held.len() }));
                        continue;
                    }
                    match call.decode::<Ping>() {
                        Ok(Ping(n)) => {
                            answered.add(1.0);
                            answered_n += 1;
                            let direct = call.is_direct();
                            call.reply(&Pong {
                                n,
                                incarnation: inc,
                                direct,
                            })
                        }
                        Err(e) => call.reply_error(e.to_string()),
                    }
                }
                beat(&node);
            }
        }
        // Sends `count` numbered messages to each node of `to` (comma-separated), in bursts
        // of `burst` with `pause_ms` between them, from one thread; then says so.
        "sequencer" => {
            node.ready();
            let to: Vec<String> = opt("to").split(',').map(str::to_owned).collect();
            let (count, burst) = (num("count", 2000), num("burst", 20).max(1));
            let pause = Duration::from_millis(num("pause_ms", 2));
            let mut refused = 0u64;
            for k in 1..=count {
                for t in &to {
                    if node.send(t, Seq(k)).is_err() {
                        refused += 1;
                    }
                }
                if k % burst == 0 {
                    node.sleep_until(Instant::now() + pause);
                    beat(&node);
                }
            }
            out.line(serde_json::json!({ "sent": count, "refused": refused }));
            // Messages given back (a full link, a full inbox): each said, and how many to each
            // receiver so far, so that a test can tell "not delivered, and told" from "lost".
            let mut returned: std::collections::BTreeMap<String, u64> = Default::default();
            while !node.sleep_until(Instant::now() + Duration::from_millis(20)) {
                beat(&node);
                let mut any = false;
                while let Some(r) = node.returned() {
                    any = true;
                    *returned.entry(r.to.to_string()).or_default() += 1;
                    out.line(serde_json::json!({ "returned": r.to.to_string(), "reason": format!("{:?}", r.reason) }));
                }
                if any {
                    out.line(serde_json::json!({ "returned_to": returned }));
                }
            }
        }
        // Takes `Seq` messages; reports, once `count` have come, whether each sender's were in
        // order and how many came over a direct link.
        "sink" => {
            node.ready();
            let count = num("count", 2000);
            let (mut got, mut direct, mut out_of_order, mut backwards) = (0u64, 0u64, 0u64, 0u64);
            let mut last: std::collections::HashMap<String, u64> = Default::default();
            let mut first_direct = None;
            let mut said = 0u64;
            while !node.shutdown_requested() {
                let Some(m) = node.recv_timeout(Duration::from_millis(20)) else {
                    beat(&node);
                    // Quiet for a moment: where it stands (with messages given back to their
                    // sender, `count` may never come).
                    if got != said {
                        said = got;
                        out.line(serde_json::json!({
                                "got": got, "direct": direct, "hub": got - direct,
                                "out_of_order": out_of_order, "backwards": backwards,
                                "first_direct": first_direct }));
                    }
                    continue;
                };
                if let Ok(Ping(n)) = m.decode::<Ping>() {
                    let direct = m.is_direct();
                    m.reply(&Pong {
                        n,
                        incarnation: inc,
                        direct,
                    });
                } else if let Ok(Seq(k)) = m.decode::<Seq>() {
                    got += 1;
                    if m.is_direct() {
                        direct += 1;
                        first_direct.get_or_insert(k);
                    }
                    let prev = last.insert(m.from().to_string(), k).unwrap_or(0);
                    if k != prev + 1 {
                        out_of_order += 1;
                        out.line(serde_json::json!({ "after": prev, "came": k, "direct": m.is_direct() }));
                    }
                    // Backwards: an order broken (a gap alone is a message given back).
                    if k <= prev {
                        backwards += 1;
                    }
                    if got == count {
                        out.line(serde_json::json!({
                                "received": got, "direct": direct, "hub": got - direct,
                                "out_of_order": out_of_order, "backwards": backwards,
                                "first_direct": first_direct }));
                    }
                }
                beat(&node);
            }
        }
        // Talks to `to` until it has a direct link, then writes garbage straight onto the
        // link's socket (as a node that does not use syncra-node could); then calls `to`
        // until it answers again.
        "vandal" => {
            node.ready();
            let to = opt("to");
            // A link is a SEQPACKET socket that is neither the broker socket (nor a duplicate
            // of it: the same inode), the seal nor the crash socket.
            let inode = |fd: i32| {
                // SAFETY: a borrowed fd number of this process, only inspected.
                let b = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
                rustix::fs::fstat(b).map(|st| st.st_ino).ok()
            };
            let not_links = [
                inode(syncra_protocol::broker::BROKER_FD),
                inode(syncra_protocol::listener::SEAL_FD),
                inode(syncra_protocol::boot::CRASH_FD),
            ];
            let is_link = |fd: i32| {
                // SAFETY: a borrowed fd number of this process, only inspected.
                let b = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
                !not_links.contains(&inode(fd))
                    && rustix::net::sockopt::socket_type(b)
                        .is_ok_and(|t| t == rustix::net::SocketType::SEQPACKET)
            };
            let links = || -> Vec<i32> {
                std::fs::read_dir("/proc/self/fd")
                    .into_iter()
                    .flatten()
                    .flatten()
                    .filter_map(|e| e.file_name().to_str()?.parse().ok())
                    .filter(|fd| is_link(*fd))
                    .collect()
            };
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut n = 0;
            let link = loop {
                n += 1;
                let _ = node.call::<Ping>(&to, Ping(n), Duration::from_secs(5));
                if let Some(fd) = links().first() {
                    break Some(*fd);
                }
                if Instant::now() > deadline {
                    break None;
                }
                beat(&node);
            };
            let Some(fd) = link else {
                return idle(&node, &mut out, "no direct link appeared".into());
            };
            let garbage: [&[u8]; 3] = [&[0, 0xc1, 0xc1], &[9, 9, 9], &[1; 100]];
            for g in garbage {
                // SAFETY: sending from a live buffer on a socket this process holds.
                unsafe { libc::send(fd, g.as_ptr().cast(), g.len(), libc::MSG_DONTWAIT) };
            }
            out.line(serde_json::json!({ "vandalised": fd }));
            let deadline = Instant::now() + Duration::from_secs(20);
            let answered = loop {
                n += 1;
                match node.call::<Ping>(&to, Ping(n), Duration::from_secs(2)) {
                    Ok(p) => break Ok(p.incarnation),
                    Err(e) if Instant::now() > deadline => break Err(e.to_string()),
                    Err(_) => beat(&node),
                }
            };
            out.line(serde_json::json!({ "answered_after": answered }));
            while !node.sleep_until(Instant::now() + Duration::from_millis(20)) {
                beat(&node);
            }
        }
        "caller" => {
            let to = opt("to");
            match node.send("nobody", Ping(7)) {
                Err(e) => out.line(serde_json::json!({
                    "unknown": format!("{:?}", e.reason), "returned": e.message.0 })),
                Ok(()) => out.line(serde_json::json!({ "unknown": "accepted" })),
            }
            node.ready();
            // One call from a task on the link thread, answered on the callee's link thread.
            let (tx, rx) = std::sync::mpsc::channel();
            let (n, callee) = (node.clone(), to.clone());
            node.spawn(async move {
                let pong = n
                    .call_async::<LinkPing>(&callee, LinkPing(42), Duration::from_secs(10), true)
                    .await;
                let _ = tx.send(pong.map(|p| p.n).map_err(|e| e.to_string()));
            });
            match rx.recv() {
                Ok(Ok(n)) => out.line(serde_json::json!({ "link_answer": n })),
                Ok(Err(e)) => out.line(serde_json::json!({ "link_error": e })),
                Err(_) => out.line(serde_json::json!({ "link_error": "the task died" })),
            }
            let timeout = Duration::from_millis(num("timeout_ms", 3000));
            let mut n = 0;
            while !node.shutdown_requested() {
                n += 1;
                match node.call::<Ping>(&to, Ping(n), timeout) {
                    Ok(p) => out.line(serde_json::json!({
                        "n": p.n, "incarnation": p.incarnation, "direct": p.direct })),
                    Err(e) => {
                        let returned = match &e {
                            CallError::CalleeExited { request, .. } => Some(request.0),
                            _ => None,
                        };
                        out.line(serde_json::json!({
                            "n": n, "error": e.to_string(), "returned": returned }))
                    }
                }
                beat(&node);
                node.sleep_until(Instant::now() + Duration::from_millis(10));
            }
        }
        "bench-caller" => {
            node.ready();
            let blocks = 10;
            let per_block = (num("rounds", 5000) as usize).div_ceil(blocks);
            let to = opt("to");
            // Without `direct=PATH` (a callee on another host), no direct ractor_cluster calls.
            let direct = if opt("direct").is_empty() {
                None
            } else {
                match direct::DirectCaller::connect(
                    std::path::Path::new(&opt("direct")),
                    Duration::from_secs(10),
                ) {
                    Ok(d) => Some(d),
                    Err(e) => return idle(&node, &mut out, format!("direct link: {e}")),
                }
            };
            let payload = [7u8; 16];
            // `kit_to=NODE`: also call NODE, a driver answering from its event loop with the
            // kit's typed handler (`answer_with`), in the same blocks.
            let kit_to = opt("kit_to");
            let call_to = |to: &str, n: u64| -> Result<f64, String> {
                let t = Instant::now();
                let pong: Pong = node
                    .call(to, Ping(n), Duration::from_secs(10))
                    .map_err(|e| e.to_string())?;
                let us = t.elapsed().as_secs_f64() * 1e6;
                if pong.n != n {
                    return Err(format!("asked {n}, answered {}", pong.n));
                }
                Ok(us)
            };
            let routed_call = |n: u64| call_to(&to, n);
            // `count` calls from a task on this node's link thread to `to`'s link-thread handler.
            let link_calls = |first: u64, count: usize| -> Result<Vec<f64>, String> {
                let (tx, rx) = std::sync::mpsc::channel();
                let (n, to) = (node.clone(), to.clone());
                node.spawn(async move {
                    let mut times = Vec::with_capacity(count);
                    for k in first..first + count as u64 {
                        let t = Instant::now();
                        let pong: Result<Pong, _> = n
                            .call_async(&to, LinkPing(k), Duration::from_secs(10), true)
                            .await;
                        let us = t.elapsed().as_secs_f64() * 1e6;
                        match pong {
                            Ok(p) if p.n == k => times.push(us),
                            Ok(p) => return tx.send(Err(format!("asked {k}, answered {}", p.n))),
                            Err(e) => return tx.send(Err(e.to_string())),
                        }
                    }
                    tx.send(Ok(times))
                });
                rx.recv()
                    .map_err(|_| "the link-thread task died".to_owned())?
            };
            type Times = (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>);
            let measured = (|| -> Result<Times, String> {
                // Warm up every path (the first routed call also waits for `to` to be ready).
                for n in 0..200 {
                    routed_call(n)?;
                    if let Some(direct) = &direct {
                        direct.call(&payload)?;
                    }
                    if !kit_to.is_empty() {
                        call_to(&kit_to, n)?;
                    }
                }
                link_calls(0, 200)?;
                let (mut routed, mut link, mut direct_us) = (Vec::new(), Vec::new(), Vec::new());
                let mut kit = Vec::new();
                for b in 0..blocks {
                    for i in 0..per_block {
                        routed.push(routed_call((b * per_block + i) as u64)?);
                    }
                    beat(&node);
                    if !kit_to.is_empty() {
                        for i in 0..per_block {
                            kit.push(call_to(&kit_to, (b * per_block + i) as u64)?);
                        }
                        beat(&node);
                    }
                    link.extend(link_calls((b * per_block) as u64, per_block)?);
                    beat(&node);
                    if let Some(direct) = &direct {
                        for _ in 0..per_block {
                            direct_us.push(direct.call(&payload)?);
                        }
                    }
                    beat(&node);
                }
                Ok((routed, link, direct_us, kit))
            })();
            match measured {
                Ok((routed, link, direct_us, kit)) => out.line(serde_json::json!({
                    "routed_us": routed, "link_us": link, "direct_us": direct_us, "kit_us": kit })),
                Err(e) => out.line(serde_json::json!({ "error": e })),
            }
            while !node.sleep_until(Instant::now() + Duration::from_millis(20)) {
                beat(&node);
            }
        }
        "producer" => {
            // `grow=1`: every incarnation after the first declares one slot more.
            let slots = num("slots", 8) as u32 + u32::from(num("grow", 0) == 1 && inc > 1);
            let size = num("size", 64) as u32;
            let options = match opt("policy").as_str() {
                "latest" => StreamOptions {
                    slot_count: slots,
                    ..StreamOptions::latest_only(size)
                },
                "block" => {
                    StreamOptions::block(size, slots, Duration::from_millis(num("block_ms", 50)))
                }
                _ => StreamOptions::drop_oldest(size, slots),
            };
            let mut tx = match node.declare::<Tick>(&opt("stream"), options) {
                Ok(tx) => tx,
                Err(e) => {
                    out.line(serde_json::json!({ "declare_error": e.to_string() }));
                    node.ready();
                    while !node.sleep_until(Instant::now() + Duration::from_millis(20)) {
                        beat(&node);
                    }
                    return;
                }
            };
            node.ready();
            let period = Duration::from_secs_f64(1.0 / num("rate", 200) as f64);
            // `fill=1`: messages as large as the slot allows (a scene-sized payload).
            let pad =
                vec![7u8; (size as usize).saturating_sub(64) * usize::from(num("fill", 0) == 1)];
            let mut n = 0;
            let mut next = Instant::now();
            while !node.shutdown_requested() {
                n += 1;
                let t = published_ns(Duration::ZERO);
                match tx.publish(&Tick {
                    n,
                    t,
                    pad: pad.clone(),
                }) {
                    Ok(_) => {}
                    Err(e) => out.line(serde_json::json!({ "n": n, "write_error": e.to_string() })),
                }
                beat(&node);
                next += period;
                node.sleep_until(next);
            }
        }
        "bulk-producer" => {
            let abort_at = num("abort_at", u64::MAX);
            let mut tx = node
                .declare_bulk::<Frame>(&opt("stream"), StreamOptions::drop_oldest(4096, 8))
                .expect("declare");
            node.ready();
            let mut n = 0;
            while !node.shutdown_requested() {
                n += 1;
                let dying = inc == 1 && n == abort_at;
                let _ = tx.publish_with(&Frame { n }, |raw| {
                    let half = raw.len() / 2;
                    raw[..half].fill(n as u8);
                    if dying {
                        // Killed in the middle of writing: half the frame is new bytes.
                        std::process::abort();
                    }
                    raw[half..].fill(n as u8);
                    raw.len()
                });
                beat(&node);
                node.sleep_until(Instant::now() + Duration::from_millis(5));
            }
        }
        "looper" => {
            // One event loop: ticks from `stream`, `Ping` calls, shutdown — no poll timeouts.
            // `async=1`: the same loop in async code (`Events::next_async`).
            use syncra_node::events::NodeEvent;
            let mut ticks = match node.subscribe::<Tick>(&opt("stream")) {
                Ok(rx) => rx,
                Err(e) => return idle(&node, &mut out, e.to_string()),
            };
            let mut events = node.events();
            let key = events.watch(&ticks);
            node.ready();
            let is_async = opt("async") == "1";
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime");
            let mut n = 0u64;
            loop {
                let event = if is_async {
                    rt.block_on(events.next_async(None))
                } else {
                    events.next(None)
                };
                match event {
                    NodeEvent::Stream(k) if k == key => {
                        while let Ok(Some(s)) = ticks.try_recv() {
                            out.line(serde_json::json!({ "n": s.value.n }));
                        }
                    }
                    NodeEvent::Message(call) => {
                        let _ = call.answer_with(|Ping(n): Ping| {
                            Ok(Pong {
                                n,
                                incarnation: inc,
                                direct: false,
                            })
                        });
                    }
                    NodeEvent::Shutdown => {
                        out.line(serde_json::json!({ "shutdown": true }));
                        break;
                    }
                    _ => {}
                }
                n += 1;
                node.heartbeat(Some(&NodeMetrics {
                    tick: n,
                    ..NodeMetrics::default()
                }));
            }
        }
        "wake-bench" => {
            // Publish → wake latency of `samples` samples of `stream`, read through the event
            // loop (`mode=events`) or by a blocking read on the consumer (`mode=raw`).
            use syncra_node::events::NodeEvent;
            let mut rx = match node.subscribe::<Tick>(&opt("stream")) {
                Ok(rx) => rx,
                Err(e) => return idle(&node, &mut out, e.to_string()),
            };
            let mut events = node.events();
            let key = events.watch(&rx);
            node.ready();
            // `mode=both`: blocks of 50 samples read each way in turn, so that both see the
            // same conditions (`raw_us`, `events_us`).
            let mode = opt("mode");
            let want = num("samples", 2000) as usize;
            let (mut raw_us, mut events_us) = (Vec::new(), Vec::new());
            let mut block = 0usize;
            while raw_us.len() + events_us.len() < want && !node.shutdown_requested() {
                let events_mode = match mode.as_str() {
                    "events" => true,
                    "both" => (block / 50) % 2 == 1,
                    _ => false,
                };
                let before = raw_us.len() + events_us.len();
                if events_mode {
                    match events.next(None) {
                        NodeEvent::Stream(k) if k == key => {
                            while let Ok(Some(s)) = rx.try_recv() {
                                events_us.push(s.latency.as_secs_f64() * 1e6);
                            }
                        }
                        NodeEvent::Shutdown => break,
                        _ => {}
                    }
                } else if let Ok(Some(s)) = rx.recv_timeout(Duration::from_secs(1)) {
                    raw_us.push(s.latency.as_secs_f64() * 1e6);
                }
                block += raw_us.len() + events_us.len() - before;
                node.heartbeat(None);
            }
            out.line(serde_json::json!({ "raw_us": raw_us, "events_us": events_us }));
            while !node.sleep_until(Instant::now() + Duration::from_millis(100)) {
                node.heartbeat(None);
            }
        }
        "stats" => {
            // The hologram's stats request, from types of this crate under the hologram's
            // tags: reports the answer (`frames`, `scenes`, `worlds`) every 100 ms.
            #[derive(Debug, Serialize, Deserialize)]
            struct AskStats;
            #[derive(Debug, Serialize, Deserialize)]
            struct HoloStats {
                frames: u64,
                scenes: u64,
                worlds: usize,
            }
            syncra_node::message!(HoloStats = "syncra.hologram.stats/1");
            syncra_node::message!(AskStats = "syncra.hologram.get-stats/1" => HoloStats);
            node.ready();
            let to = opt("to");
            while !node.shutdown_requested() {
                match node.call(&to, AskStats, Duration::from_secs(5)) {
                    Ok(s) => out.line(serde_json::json!({
                        "frames": s.frames, "scenes": s.scenes, "worlds": s.worlds })),
                    Err(e) => out.line(serde_json::json!({ "error": e.to_string() })),
                }
                beat(&node);
                node.sleep_until(Instant::now() + Duration::from_millis(100));
            }
        }
        "library-loop" => {
            // The main thread hands itself to a "library" loop (a channel of callbacks, as
            // winit's event loop or an audio callback would) and never comes back to the node
            // API: it beats through a heartbeat handle, and quits when the shutdown callback
            // posts a quit into the loop.
            let (tx, rx) = std::sync::mpsc::channel::<bool>();
            let quit = tx.clone();
            let poster = std::sync::Arc::new(std::sync::Mutex::new(Some(quit)));
            let slot = poster.clone();
            node.on_shutdown(move || {
                if let Some(q) = slot.lock().unwrap().take() {
                    let _ = q.send(true);
                }
            });
            let heart = node.heartbeat_handle();
            std::thread::spawn(move || {
                // The library's own timer: it drives the loop's callbacks, but never beats.
                while tx.send(false).is_ok() {
                    std::thread::sleep(Duration::from_millis(20));
                }
            });
            node.ready();
            for (rounds, quit) in rx.into_iter().enumerate() {
                if quit {
                    out.line(serde_json::json!({ "quit_posted": true }));
                    break;
                }
                heart.beat(Some(&NodeMetrics {
                    tick: rounds as u64 + 1,
                    ..NodeMetrics::default()
                }));
            }
            drop(poster);
        }
        "viewer" => {
            // Subscribes before it is ready, to a world's scene: the worlds start only once
            // every driver is ready, so the stream cannot exist yet.
            let mut rx = match node.subscribe::<syncra_node::world::SceneSnapshot>(&opt("stream")) {
                Ok(rx) => rx,
                Err(e) => return idle(&node, &mut out, e.to_string()),
            };
            out.line(serde_json::json!({ "attached_at_ready": rx.is_attached() }));
            node.ready();
            while !node.shutdown_requested() {
                match rx.recv_timeout(Duration::from_millis(20)) {
                    Ok(Some(s)) => out.line(serde_json::json!({
                        "world": s.value.world, "tick": s.value.tick,
                        "entities": s.value.entities.len() })),
                    Ok(None) => {}
                    Err(e) => out.line(serde_json::json!({ "error": e.to_string() })),
                }
                beat(&node);
            }
        }
        "pattern" => {
            // Subscribe to every `Tick` stream matching `pattern`; `drop=1`: drop the
            // subscription once the first stream came (keeping that consumer), then be ready.
            let mut sub = match node.subscribe_pattern::<Tick>(&opt("pattern")) {
                Ok(sub) => sub,
                Err(e) => return idle(&node, &mut out, e.to_string()),
            };
            let mut consumers = Vec::new();
            match sub.next_stream(Duration::from_secs(30)) {
                Ok(Some(c)) => consumers.push(c),
                other => return idle(&node, &mut out, format!("no first stream: {other:?}")),
            }
            let mut sub = (opt("drop") != "1").then_some(sub);
            node.ready();
            while !node.shutdown_requested() {
                if let Some(sub) = &mut sub
                    && let Ok(Some(c)) = sub.next_stream(Duration::from_millis(20))
                {
                    consumers.push(c);
                } else {
                    node.sleep_until(Instant::now() + Duration::from_millis(20));
                }
                out.line(serde_json::json!({ "streams": consumers.len() }));
                beat(&node);
            }
        }
        // Read the renderer's frames: a line per frame (sequence, producer incarnation, the
        // header), and every `save_every`-th frame's pixels as `dir/frame-<seq>.rgba` (written
        // whole, then renamed; only the newest 4 kept).
        "frame-grab" => {
            let stream = opt("stream");
            let dir = std::path::PathBuf::from(opt("dir"));
            let save_every = num("save_every", 10).max(1);
            let mut rx = match node.subscribe_bulk::<syncra_node::render::FrameHeader>(&stream) {
                Ok(rx) => rx,
                Err(e) => return idle(&node, &mut out, e.to_string()),
            };
            node.ready();
            let mut saved = std::collections::VecDeque::new();
            let mut read = 0u64;
            while !node.shutdown_requested() {
                let save = read.is_multiple_of(save_every);
                let got = rx.read_with(Duration::from_millis(20), |h, raw| {
                    (h.clone(), save.then(|| raw.to_vec()))
                });
                match got {
                    Ok(Some((m, (header, pixels)))) => {
                        read += 1;
                        let mut path = None;
                        if let Some(pixels) = pixels {
                            let p = dir.join(format!("frame-{}.rgba", m.seq));
                            let tmp = dir.join("frame.tmp");
                            if std::fs::write(&tmp, &pixels).is_ok()
                                && std::fs::rename(&tmp, &p).is_ok()
                            {
                                saved.push_back(p.clone());
                                path = Some(p.display().to_string());
                            }
                            while saved.len() > 4 {
                                if let Some(old) = saved.pop_front() {
                                    let _ = std::fs::remove_file(old);
                                }
                            }
                        }
                        out.line(serde_json::json!({
                            "seq": m.seq, "inc": m.producer_incarnation, "gap": m.gap,
                            "publish_ns": m.publish_ns, "header": header, "saved": path }));
                    }
                    Ok(None) => {}
                    Err(e) => out.line(serde_json::json!({ "error": e.to_string() })),
                }
                beat(&node);
            }
        }
        // Timestamps for the renderer's benchmark: every scene seen on `scene=` and every
        // frame on `frames=` (`bulk=1`: a bulk frame stream), each with the tick it shows, the
        // publisher's clock (CLOCK_MONOTONIC ns) and the producer's incarnation.
        "frame-times" => {
            use syncra_node::render::FrameHeader;
            use syncra_node::world::SceneSnapshot;
            let mut scenes = match node.subscribe::<SceneSnapshot>(&opt("scene")) {
                Ok(c) => c,
                Err(e) => return idle(&node, &mut out, e.to_string()),
            };
            let bulk = opt("bulk") == "1";
            let mut bulk_rx = None;
            let mut plain_rx = None;
            let sub = if bulk {
                node.subscribe_bulk::<FrameHeader>(&opt("frames"))
                    .map(|c| bulk_rx = Some(c))
            } else {
                node.subscribe::<FrameHeader>(&opt("frames"))
                    .map(|c| plain_rx = Some(c))
            };
            if let Err(e) = sub {
                return idle(&node, &mut out, e.to_string());
            }
            // `shown=window/shown`: also the frames the window showed (frames mode).
            let mut shown = match opt("shown").as_str() {
                "" => None,
                name => match node.subscribe::<syncra_node::window::FrameShown>(name) {
                    Ok(c) => Some(c),
                    Err(e) => return idle(&node, &mut out, e.to_string()),
                },
            };
            node.ready();
            while !node.shutdown_requested() {
                while let Some(Ok(Some(s))) = shown.as_mut().map(|c| c.try_recv()) {
                    out.line(serde_json::json!({ "k": "shown", "seq": s.value.seq,
                        "pub": s.value.published_ns, "shown": s.value.shown_ns, "blit_us": s.value.blit_us,
                        "width": s.value.width }));
                }
                while let Ok(Some(s)) = scenes.try_recv() {
                    out.line(serde_json::json!({ "k": "scene", "tick": s.value.tick, "pub": published_ns(s.latency) }));
                }
                let frame = if let Some(rx) = bulk_rx.as_mut() {
                    rx.read_with(Duration::from_millis(1), |h, _| h.clone())
                        .ok()
                        .flatten()
                        .map(|(m, h)| (m.seq, m.producer_incarnation, m.publish_ns, h))
                } else if let Some(rx) = plain_rx.as_mut() {
                    rx.recv_timeout(Duration::from_millis(1))
                        .ok()
                        .flatten()
                        .map(|s| {
                            (
                                s.seq,
                                s.producer_incarnation,
                                published_ns(s.latency),
                                s.value,
                            )
                        })
                } else {
                    None
                };
                if let Some((seq, inc, publish_ns, h)) = frame {
                    let tick = h.worlds.first().map(|w| w.tick);
                    out.line(serde_json::json!({ "k": "frame", "seq": seq, "inc": inc, "pub": publish_ns, "tick": tick }));
                }
                beat(&node);
            }
        }
        // The audio driver's mix, summarised: a line per `window=` frames of `audio/samples`
        // with each channel's RMS and peak, the first frame louder than `loud=` (×1000), the
        // producer's incarnation and the publisher's clock.
        "audio-grab" => {
            use syncra_node::audio::{SamplesHeader, samples_from_bytes};
            let mut rx = match node.subscribe_bulk::<SamplesHeader>(&opt("stream")) {
                Ok(rx) => rx,
                Err(e) => return idle(&node, &mut out, e.to_string()),
            };
            let window = num("window", 2400).max(1);
            let loud = num("loud", 10) as f32 / 1000.0;
            node.ready();
            let mut buf = Vec::new();
            let (mut sum_l, mut sum_r, mut peak, mut n) = (0f64, 0f64, 0f32, 0u64);
            let (mut first, mut first_loud, mut inc) = (None, None, 0u64);
            while !node.shutdown_requested() {
                let got = rx.read_with(Duration::from_millis(20), |h, raw| {
                    samples_from_bytes(raw, &mut buf);
                    *h
                });
                match got {
                    Ok(Some((m, h))) => {
                        if m.producer_incarnation != inc && n > 0 {
                            // A new incarnation: its frames start a window of their own.
                            n = 0;
                            (sum_l, sum_r, peak) = (0.0, 0.0, 0.0);
                            first = None;
                            first_loud = None;
                        }
                        inc = m.producer_incarnation;
                        let pub_ns = m.publish_ns;
                        first.get_or_insert(h.first_frame);
                        for (i, f) in buf.chunks_exact(2).enumerate() {
                            sum_l += f64::from(f[0] * f[0]);
                            sum_r += f64::from(f[1] * f[1]);
                            peak = peak.max(f[0].abs()).max(f[1].abs());
                            if first_loud.is_none() && (f[0].abs() > loud || f[1].abs() > loud) {
                                first_loud = Some(h.first_frame + i as u64);
                            }
                        }
                        n += u64::from(h.frames);
                        if n >= window {
                            out.line(serde_json::json!({
                                "first_frame": first, "frames": n, "inc": inc, "gap": m.gap,
                                "pub": pub_ns, "rate": h.sample_rate,
                                "rms_l": (sum_l / n as f64).sqrt(), "rms_r": (sum_r / n as f64).sqrt(),
                                "peak": peak, "first_loud": first_loud }));
                            n = 0;
                            (sum_l, sum_r, peak) = (0.0, 0.0, 0.0);
                            first = None;
                            first_loud = None;
                        }
                    }
                    Ok(None) => {}
                    Err(e) => out.line(serde_json::json!({ "error": e.to_string() })),
                }
                beat(&node);
            }
        }
        // The sound-request benchmark: `n=` times, after the mix has been silent for 100 ms,
        // ask `audio=` for `sound=` (a call) and time the request to the publish of the first
        // `audio/samples` block that holds it, beside a get-info call's round trip.
        "sound-latency" => {
            use syncra_node::audio::{GetAudioInfo, Play, SamplesHeader, samples_from_bytes};
            let audio = match opt("audio").as_str() {
                "" => "audio".to_owned(),
                a => a.to_owned(),
            };
            let mut rx = match node.subscribe_bulk::<SamplesHeader>(&format!("{audio}/samples")) {
                Ok(rx) => rx,
                Err(e) => return idle(&node, &mut out, e.to_string()),
            };
            node.ready();
            let mut buf = Vec::new();
            let mut read_block = |rx: &mut syncra_node::BulkConsumer<SamplesHeader>,
                                  node: &Node| {
                let r = rx
                    .read_with(Duration::from_millis(20), |_, raw| {
                        samples_from_bytes(raw, &mut buf);
                        buf.iter().any(|v| v.abs() > 1e-3)
                    })
                    .ok()
                    .flatten()
                    .map(|(m, loud)| (m.publish_ns, loud));
                node.heartbeat(None);
                r
            };
            for i in 0..num("n", 100) {
                if node.shutdown_requested() {
                    break;
                }
                // Silence first: 100 ms of blocks with nothing in them.
                let mut quiet_since = std::time::Instant::now();
                while quiet_since.elapsed() < Duration::from_millis(100) {
                    if let Some((_, true)) = read_block(&mut rx, &node) {
                        quiet_since = std::time::Instant::now();
                    }
                }
                let t = std::time::Instant::now();
                let _ = node.call(&audio, GetAudioInfo, Duration::from_secs(2));
                let call_ns = t.elapsed().as_nanos() as u64;
                let t0 = syncra_node::audio::monotonic_ns();
                if let Err(e) =
                    node.call(&audio, Play::new(i, opt("sound")), Duration::from_secs(2))
                {
                    out.line(serde_json::json!({ "error": format!("{e:?}") }));
                    continue;
                }
                let answered = syncra_node::audio::monotonic_ns();
                let deadline = std::time::Instant::now() + Duration::from_secs(2);
                while std::time::Instant::now() < deadline {
                    if let Some((published, true)) = read_block(&mut rx, &node) {
                        out.line(serde_json::json!({ "k": "sound", "request_ns": t0,
                            "answered_ns": answered, "published_ns": published,
                            "read_ns": syncra_node::audio::monotonic_ns(), "call_ns": call_ns }));
                        break;
                    }
                }
            }
            out.line(serde_json::json!({ "k": "done" }));
            while !node.shutdown_requested() {
                std::thread::sleep(Duration::from_millis(20));
                beat(&node);
            }
        }
        // Every input event and action, with how long after its source saw it this peer read
        // it (`lat_ns`, CLOCK_MONOTONIC).
        "action-log" => {
            use syncra_node::input::{ActionEvent, InputEvent};
            let input = match opt("input").as_str() {
                "" => "input".to_owned(),
                other => other.to_owned(),
            };
            let mut actions = match node.subscribe::<ActionEvent>(&format!("{input}/actions")) {
                Ok(c) => c,
                Err(e) => return idle(&node, &mut out, e.to_string()),
            };
            let mut events = match node.subscribe::<InputEvent>(&format!("{input}/events")) {
                Ok(c) => c,
                Err(e) => return idle(&node, &mut out, e.to_string()),
            };
            node.ready();
            // Woken by the streams themselves (no polling delay in the latencies).
            let mut loop_events = node.events();
            loop_events.watch(&actions);
            loop_events.watch(&events);
            while !node.shutdown_requested() {
                if let syncra_node::events::NodeEvent::Shutdown =
                    loop_events.next(Some(std::time::Instant::now() + Duration::from_millis(50)))
                {
                    break;
                }
                while let Ok(Some(a)) = actions.try_recv() {
                    let lat = syncra_node::audio::monotonic_ns().saturating_sub(a.value.time_ns);
                    out.line(serde_json::json!({ "k": "action", "action": a.value.action,
                        "player": a.value.player, "device": a.value.device, "value": a.value.value,
                        "time_ns": a.value.time_ns, "lat_ns": lat, "inc": a.producer_incarnation,
                        "seq": a.seq }));
                }
                while let Ok(Some(e)) = events.try_recv() {
                    out.line(serde_json::json!({ "k": "event", "player": e.value.player,
                        "device": e.value.device, "kind": e.value.kind, "time_ns": e.value.time_ns }));
                }
                beat(&node);
            }
        }
        // A node that misbehaves on purpose (the sandbox tests): every attempt and what came
        // of it goes to `out` as {"attack", "outcome"} and to its log.
        "attack" => {
            node.ready();
            let report = |out: &mut Out, attack: &str, outcome: Result<String, String>| {
                let outcome = match outcome {
                    Ok(what) => format!("ALLOWED: {what}"),
                    Err(e) => format!("denied: {e}"),
                };
                eprintln!("attack: {attack}: {outcome}");
                out.line(serde_json::json!({ "attack": attack, "outcome": outcome }));
            };
            let errno = || std::io::Error::last_os_error().to_string();
            report(
                &mut out,
                "read a secret",
                std::fs::read_to_string(opt("secret"))
                    .map(|s| format!("read {} bytes", s.len()))
                    .map_err(|e| e.to_string()),
            );
            report(
                &mut out,
                "read /etc/shadow",
                std::fs::read("/etc/shadow")
                    .map(|s| format!("read {} bytes", s.len()))
                    .map_err(|e| e.to_string()),
            );
            report(
                &mut out,
                "write outside",
                std::fs::write(opt("outside"), "pwned")
                    .map(|()| "wrote".to_owned())
                    .map_err(|e| e.to_string()),
            );
            let port: u16 = opt("port").parse().unwrap_or(1);
            report(
                &mut out,
                "tcp connect",
                std::net::TcpStream::connect_timeout(
                    &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
                    Duration::from_secs(2),
                )
                .map(|_| format!("connected to 127.0.0.1:{port}"))
                .map_err(|e| e.to_string()),
            );
            report(
                &mut out,
                "udp send",
                std::net::UdpSocket::bind("127.0.0.1:0")
                    .and_then(|u| u.send_to(b"x", ("127.0.0.1", port)))
                    .map(|n| format!("sent {n} bytes"))
                    .map_err(|e| e.to_string()),
            );
            if !opt("unix").is_empty() {
                report(
                    &mut out,
                    "unix socket by path",
                    std::os::unix::net::UnixStream::connect(opt("unix"))
                        .map(|_| format!("connected to {}", opt("unix")))
                        .map_err(|e| e.to_string()),
                );
            }
            report(
                &mut out,
                "raw socket",
                // SAFETY: socket(2) has no memory preconditions; the fd is closed at once.
                match unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) } {
                    fd if fd >= 0 => {
                        // SAFETY: closing the fd just opened.
                        unsafe { libc::close(fd) };
                        Ok("opened a packet socket".into())
                    }
                    _ => Err(errno()),
                },
            );
            // A set-user-ID file in a directory it may write (its TMPDIR): as a root
            // runtime's node it is root, and anyone who ran that file would be.
            let suid = std::env::temp_dir().join("suid");
            report(
                &mut out,
                "set-user-ID file",
                std::fs::write(&suid, "#!/bin/sh\n")
                    .and_then(|()| {
                        use std::os::unix::fs::PermissionsExt;
                        std::fs::set_permissions(&suid, std::fs::Permissions::from_mode(0o4755))
                    })
                    .map(|()| "made one".to_owned())
                    .map_err(|e| e.to_string()),
            );
            report(&mut out, "set-group-ID file by open", {
                use std::os::unix::fs::OpenOptionsExt;
                std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o2755)
                    .open(std::env::temp_dir().join("sgid"))
                    .map(|_| "made one".to_owned())
                    .map_err(|e| e.to_string())
            });
            report(
                &mut out,
                "personality",
                // SAFETY: personality(2) has no memory preconditions.
                match unsafe { libc::personality(libc::READ_IMPLIES_EXEC as libc::c_ulong) } {
                    -1 => Err(errno()),
                    _ => Ok("changed its execution domain".into()),
                },
            );
            report(
                &mut out,
                "sethostname",
                // SAFETY: a live buffer and its length.
                match unsafe { libc::sethostname(b"pwned".as_ptr().cast(), 5) } {
                    0 => Ok("renamed the host".into()),
                    _ => Err(errno()),
                },
            );
            // The runtime's control socket, found where the test keeps its run directory.
            if let Some(dir) = std::env::var_os("SYNCRA_TEST_DIR") {
                let run_dir = std::path::Path::new(&dir).join("run");
                let answer = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("tokio")
                    .block_on(async {
                        let client = syncra_runtime::ControlClient::connect(&run_dir).await?;
                        client
                            .request(syncra_protocol::control::ControlRequest::Status)
                            .await
                    });
                report(
                    &mut out,
                    "control socket",
                    match answer {
                        Ok(syncra_protocol::control::ControlReply::Status(s)) => {
                            Ok(format!("status of {} nodes", s.nodes.len()))
                        }
                        Ok(other) => Err(format!("{other:?}")),
                        Err(e) => Err(e.to_string()),
                    },
                );
            }
            // The targets (other nodes, the runtime) arrive in a file once the test knows them.
            let targets_file = opt("targets");
            let deadline = Instant::now() + Duration::from_secs(30);
            let targets = loop {
                if let Ok(t) = std::fs::read_to_string(&targets_file)
                    && t.ends_with('\n')
                {
                    break t;
                }
                if Instant::now() > deadline
                    || node.sleep_until(Instant::now() + Duration::from_millis(20))
                {
                    break String::new();
                }
                beat(&node);
            };
            for pid in targets
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
            {
                report(
                    &mut out,
                    &format!("signal {pid}"),
                    // Signal 0: the permission check of a signal, without the harm.
                    // SAFETY: kill(2) has no memory preconditions.
                    match unsafe { libc::kill(pid, 0) } {
                        0 => Ok("may signal it".into()),
                        _ => Err(errno()),
                    },
                );
                report(
                    &mut out,
                    &format!("ptrace {pid}"),
                    // SAFETY: ptrace(2) attach has no memory preconditions.
                    match unsafe { libc::ptrace(libc::PTRACE_ATTACH, pid, 0, 0) } {
                        0 => Ok("attached".into()),
                        _ => Err(errno()),
                    },
                );
                // Opening it is the kernel's permission check (a read at offset 0 would fail
                // anyway: nothing is mapped there).
                report(
                    &mut out,
                    &format!("memory {pid}"),
                    std::fs::File::open(format!("/proc/{pid}/mem"))
                        .map(|_| "opened its memory".to_owned())
                        .map_err(|e| e.to_string()),
                );
                let mut byte = 0u8;
                let local = libc::iovec {
                    iov_base: (&raw mut byte).cast(),
                    iov_len: 1,
                };
                let remote = libc::iovec {
                    iov_base: 0x1000 as *mut libc::c_void,
                    iov_len: 1,
                };
                report(
                    &mut out,
                    &format!("process_vm_readv {pid}"),
                    // SAFETY: the local iovec is one byte on this stack; the kernel checks
                    // the remote one.
                    match unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) } {
                        n if n >= 0 => Ok(format!("read {n} bytes")),
                        // EFAULT, ESRCH: past the permission check, so not denied.
                        _ => match std::io::Error::last_os_error() {
                            e if matches!(e.raw_os_error(), Some(libc::EPERM | libc::EACCES)) => {
                                Err(e.to_string())
                            }
                            e => Ok(format!("past the permission check ({e})")),
                        },
                    },
                );
            }
            out.line(serde_json::json!({ "done": true }));
            while !node.sleep_until(Instant::now() + Duration::from_millis(20)) {
                beat(&node);
            }
        }
        // Allocates until it cannot (its memory limit): Rust aborts on a failed allocation.
        "hog" => {
            node.ready();
            let mut held: Vec<Vec<u8>> = Vec::new();
            loop {
                let mut chunk = vec![0u8; 16 << 20];
                chunk.iter_mut().step_by(4096).for_each(|b| *b = 1);
                held.push(chunk);
                out.line(serde_json::json!({ "held_mb": held.len() * 16 }));
                beat(&node);
            }
        }
        // Forks until it cannot; the children wait to be killed with the node's group.
        "forkbomb" => {
            node.ready();
            let mut children = 0u64;
            let refused = loop {
                // SAFETY: the child only calls pause and _exit, both async-signal-safe.
                match unsafe { libc::fork() } {
                    // SAFETY: pause and _exit are async-signal-safe.
                    0 => unsafe {
                        libc::pause();
                        libc::_exit(0)
                    },
                    -1 => break std::io::Error::last_os_error().to_string(),
                    _ => children += 1,
                }
                if children >= num("max", 100_000) {
                    break "stopped at max".into();
                }
            };
            out.line(serde_json::json!({ "children": children, "refused": refused }));
            while !node.sleep_until(Instant::now() + Duration::from_millis(20)) {
                beat(&node);
            }
        }
        // Joins the agent groups of `victim`'s next incarnations before it starts, as if it
        // were that node, and reports every message that reaches it.
        "impostor" => {
            let stolen = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
            let victim = opt("victim");
            let count = stolen.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("tokio");
                rt.block_on(async move {
                    let (actor, _) = ractor::Actor::spawn(
                        None,
                        Counter::<syncra_protocol::node::NodeInbox>(
                            count.clone(),
                            std::marker::PhantomData,
                        ),
                        (),
                    )
                    .await
                    .expect("the impostor actor");
                    for inc in 1..=3 {
                        ractor::pg::join(
                            syncra_protocol::node::agent_group(&format!("{victim}#{inc}")),
                            vec![actor.get_cell()],
                        );
                    }
                    // …and as the runtime's gateway, for whatever other nodes send it.
                    let (gateway, _) = ractor::Actor::spawn(
                        None,
                        Counter::<syncra_protocol::node::RuntimeInbox>(
                            count,
                            std::marker::PhantomData,
                        ),
                        (),
                    )
                    .await
                    .expect("the fake gateway");
                    let group = syncra_protocol::node::RUNTIME_GROUP.to_owned();
                    ractor::pg::join(group.clone(), vec![gateway.get_cell()]);
                    // Messages with made-up tokens, asking the runtime to stop the victim's
                    // sibling (this node) and everyone: dropped.
                    let real: Vec<ractor::ActorRef<syncra_protocol::node::RuntimeInbox>> =
                        ractor::pg::get_members(&group)
                            .into_iter()
                            .filter(|c| !c.get_id().is_local())
                            .map(Into::into)
                            .collect();
                    for i in 0..100u8 {
                        let envelope = syncra_protocol::node::Envelope {
                            token: syncra_protocol::boot::Token([i; 16]),
                            body: syncra_protocol::node::NodeToRuntime::Quit {
                                reason: "forged".into(),
                            },
                        };
                        for g in &real {
                            let _ = g.cast(syncra_protocol::node::RuntimeInbox::Packet(
                                syncra_protocol::wire::encode(&envelope),
                            ));
                        }
                    }
                    std::future::pending::<()>().await;
                });
            });
            node.ready();
            while !node.shutdown_requested() {
                out.line(serde_json::json!({
                    "stolen": stolen.load(std::sync::atomic::Ordering::Relaxed)
                }));
                node.sleep_until(Instant::now() + Duration::from_millis(50));
                beat(&node);
            }
        }
        // Floods the runtime's gateway with malformed and forged messages, then corrupts its
        // own link with a frame length past any limit.
        "flooder" => {
            node.ready();
            let count = num("count", 2000);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio");
            rt.block_on(async {
                let gateways: Vec<ractor::ActorRef<syncra_protocol::node::RuntimeInbox>> =
                    ractor::pg::get_members(&syncra_protocol::node::RUNTIME_GROUP.to_owned())
                        .into_iter()
                        .filter(|c| !c.get_id().is_local())
                        .map(Into::into)
                        .collect();
                for i in 0..count {
                    let garbage: Vec<u8> =
                        (0..64).map(|j| (i as u8).wrapping_mul(31) ^ j).collect();
                    let forged = syncra_protocol::wire::encode(&syncra_protocol::node::Envelope {
                        token: syncra_protocol::boot::Token([(i % 251) as u8; 16]),
                        body: syncra_protocol::node::NodeToRuntime::Ready,
                    });
                    for g in &gateways {
                        let _ =
                            g.cast(syncra_protocol::node::RuntimeInbox::Packet(garbage.clone()));
                        let _ = g.cast(syncra_protocol::node::RuntimeInbox::Packet(forged.clone()));
                    }
                }
                out.line(serde_json::json!({ "flooded": count, "gateways": gateways.len() }));
            });
            // Frame headers announcing 2^64 - 1 bytes, straight onto the link. The cluster
            // thread may be writing a frame of its own at that moment, so enough of them that
            // whatever frame the runtime is in the middle of, the next header it reads is one.
            let junk = [0xffu8; 64 << 10];
            let mut left: &[u8] = &junk;
            let deadline = Instant::now() + Duration::from_secs(5);
            while !left.is_empty() && Instant::now() < deadline {
                // SAFETY: writing from a live buffer to fd 3, which this process holds.
                let n = unsafe {
                    libc::write(
                        syncra_protocol::boot::CLUSTER_FD,
                        left.as_ptr().cast(),
                        left.len(),
                    )
                };
                if n > 0 {
                    left = &left[n as usize..];
                } else if std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock {
                    // Full: the socket is non-blocking.
                    std::thread::sleep(Duration::from_millis(1));
                } else {
                    // Closed already: the runtime has seen enough.
                    break;
                }
            }
            out.line(serde_json::json!({ "corrupted_link": left.len() < junk.len() }));
            while !node.sleep_until(Instant::now() + Duration::from_millis(20)) {
                beat(&node);
            }
        }
        // Talks to itself over its loopback, then tries the host's (`port`).
        "loopback" => {
            node.ready();
            let own = (|| -> std::io::Result<String> {
                use std::io::{Read, Write as _};
                let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
                let addr = listener.local_addr()?;
                let mut client =
                    std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
                let (mut server, _) = listener.accept()?;
                client.write_all(b"hi")?;
                let mut buf = [0u8; 2];
                server.read_exact(&mut buf)?;
                Ok(String::from_utf8_lossy(&buf).into_owned())
            })();
            out.line(serde_json::json!({ "own": own.map_err(|e| e.to_string()) }));
            let host = std::net::TcpStream::connect_timeout(
                &std::net::SocketAddr::from(([127, 0, 0, 1], num("port", 1) as u16)),
                Duration::from_secs(2),
            );
            out.line(
                serde_json::json!({ "host": host.map(|_| "connected").map_err(|e| e.to_string()) }),
            );
            while !node.sleep_until(Instant::now() + Duration::from_millis(20)) {
                beat(&node);
            }
        }
        "consumer" => {
            let stream = opt("stream");
            // `wait=0`: only a stream that exists now; otherwise attach whenever it appears.
            let lazy = num("wait", 1) != 0;
            let delay = Duration::from_millis(num("delay_ms", 0));
            node.ready();
            if opt("bulk") == "1" {
                let mut rx = match node.subscribe_bulk::<Frame>(&stream) {
                    Ok(rx) => rx,
                    Err(e) => return idle(&node, &mut out, e.to_string()),
                };
                while !node.shutdown_requested() {
                    match rx.read_with(Duration::from_millis(20), |h, raw| {
                        raw.iter().all(|&b| b == h.n as u8).then_some(h.n)
                    }) {
                        Ok(Some((m, intact))) => out.line(serde_json::json!({
                            "seq": m.seq, "gap": m.gap, "inc": m.producer_incarnation,
                            "n": intact, "intact": intact.is_some() })),
                        Ok(None) => {}
                        Err(e) => out.line(serde_json::json!({ "error": e.to_string() })),
                    }
                    beat(&node);
                }
                return;
            }
            let sub: Result<(), syncra_node::StreamError> = if opt("type") == "wrong" {
                // Refused at once, or on the first read if the stream comes later.
                match node.subscribe::<NotATick>(&stream) {
                    Ok(mut rx) => loop {
                        match rx.recv_timeout(Duration::from_millis(20)) {
                            Err(e) => break Err(e),
                            Ok(_) if node.shutdown_requested() => return,
                            Ok(_) => beat(&node),
                        }
                    },
                    Err(e) => Err(e),
                }
            } else {
                let subscribed = if lazy {
                    node.subscribe::<Tick>(&stream)
                } else {
                    node.subscribe_existing::<Tick>(&stream)
                };
                match subscribed {
                    Ok(mut rx) => {
                        out.line(serde_json::json!({ "subscribed": rx.name() }));
                        while !node.shutdown_requested() {
                            match rx.recv_timeout(Duration::from_millis(20)) {
                                Ok(Some(s)) => out.line(serde_json::json!({
                                    "seq": s.seq, "gap": s.gap, "inc": s.producer_incarnation,
                                    "n": s.value.n,
                                    "age_us": published_ns(Duration::ZERO).saturating_sub(s.value.t) / 1000 })),
                                Ok(None) => {}
                                Err(e) => out.line(serde_json::json!({ "error": e.to_string() })),
                            }
                            beat(&node);
                            if !delay.is_zero() {
                                node.sleep_until(Instant::now() + delay);
                            }
                        }
                        return;
                    }
                    Err(e) => Err(e),
                }
            };
            if let Err(e) = sub {
                idle(&node, &mut out, e.to_string());
            }
        }
        other => panic!("unknown role `{other}`"),
    }
}

/// Report a subscribe error and idle until asked to stop.
fn idle(node: &Node, out: &mut Out, error: String) {
    out.line(serde_json::json!({ "subscribe_error": error }));
    let mut tick = 0;
    while !node.sleep_until(Instant::now() + Duration::from_millis(20)) {
        tick += 1;
        node.heartbeat(Some(&NodeMetrics {
            tick,
            ..NodeMetrics::default()
        }));
    }
}
