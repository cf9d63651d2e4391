//! Stream benchmarks: the data plane between two real processes, with the same ring and
//! doorbell code nodes use. The rings are created here as the Broker creates them and the
//! fds are inherited by a child `syncra-bench --ring-child …` instead of passed over the
//! broker socket (the Broker is not on the data path).

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use syncra_integration_tests::percentile;
use syncra_protocol::ring::{
    self, Bells, Geometry, MAX_CONSUMERS, Policy, ReadOutcome, RingMap, RingReader, RingWriter,
};

use super::{Row, verdict};

const FRAME: usize = 3840 * 2160 * 4;

fn geometry(slot_size: usize, slot_count: u32, policy: Policy) -> Geometry {
    Geometry {
        slot_size: slot_size as u32,
        slot_count,
        policy,
        block_timeout_ms: 5000,
    }
}

fn bells_with(cell: usize, fd: OwnedFd) -> Bells {
    let mut v: Vec<Option<OwnedFd>> = (0..MAX_CONSUMERS).map(|_| None).collect();
    v[cell] = Some(fd);
    Arc::new(Mutex::new(v))
}

fn inheritable(fd: &OwnedFd) -> String {
    let _ = rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty());
    fd.as_raw_fd().to_string()
}

fn take(arg: &str) -> OwnedFd {
    // SAFETY: the parent passed this fd number for this purpose; it is ours alone.
    unsafe { OwnedFd::from_raw_fd(arg.parse().expect("fd")) }
}

fn child(args: &[String]) -> Command {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.arg("--ring-child").args(args);
    c
}

/// The child side: `--ring-child ROLE …`.
pub(crate) fn run_child(args: &[String]) {
    match args[0].as_str() {
        // pong memfd_in memfd_out bell_in bell_peer space_in space_out
        "pong" => {
            let g = geometry(64, 64, Policy::DropOldest);
            let inm = Arc::new(RingMap::map(take(&args[1]).as_fd(), g).unwrap());
            let outm = Arc::new(RingMap::map(take(&args[2]).as_fd(), g).unwrap());
            let mut r = RingReader::attach(inm, 0, take(&args[3]), take(&args[5]), false).unwrap();
            let mut w = RingWriter::attach(outm, take(&args[6]), bells_with(0, take(&args[4])), 1);
            let rounds: u64 = args[7].parse().unwrap();
            let mut buf = [0u8; 64];
            for _ in 0..rounds {
                match r.read_timeout(None, |b, _| buf[..b.len()].copy_from_slice(b)) {
                    ReadOutcome::Message(..) => {
                        w.write_bytes(0, &buf).unwrap();
                    }
                    _ => continue,
                }
            }
        }
        // frames memfd space bell_consumer count
        "frames" => {
            let g = geometry(FRAME, 3, Policy::Block);
            let m = Arc::new(RingMap::map(take(&args[1]).as_fd(), g).unwrap());
            let mut w = RingWriter::attach(m, take(&args[2]), bells_with(0, take(&args[3])), 1);
            let n: usize = args[4].parse().unwrap();
            for i in 0..n {
                // The producer writes the frame in place, as a renderer writes its pixels.
                w.write(0, |buf| {
                    buf[..FRAME].fill(i as u8);
                    Ok::<_, ()>(FRAME)
                })
                .unwrap()
                .unwrap();
            }
        }
        // fan memfd bell space cell millis
        "fan" => {
            let g = geometry(64, 4096, Policy::DropOldest);
            let m = Arc::new(RingMap::map(take(&args[1]).as_fd(), g).unwrap());
            let cell: usize = args[4].parse().unwrap();
            let mut r = RingReader::attach(m, cell, take(&args[2]), take(&args[3]), false).unwrap();
            let until = Instant::now() + Duration::from_millis(args[5].parse().unwrap());
            let mut got = 0u64;
            while Instant::now() < until {
                if let ReadOutcome::Message(..) =
                    r.read_timeout(Some(Duration::from_millis(10)), |b, _| b.len())
                {
                    got += 1;
                }
            }
            println!(
                "{got} {}",
                r.cell().dropped.load(std::sync::atomic::Ordering::Relaxed)
            );
        }
        other => panic!("unknown ring child {other}"),
    }
}

fn us(v: f64) -> String {
    format!("{v:.1} µs")
}

/// (a) 64 B producer → consumer latency (half a ping-pong) beside a raw socket's.
fn latency(rounds: usize, rows: &mut Vec<Row>) {
    // Baseline: a Unix socketpair ping-pong.
    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    let echo = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let mut b = b;
        let mut buf = [0u8; 64];
        while b.read_exact(&mut buf).is_ok() {
            if b.write_all(&buf).is_err() {
                return;
            }
        }
    });
    let mut base = Vec::with_capacity(rounds);
    {
        use std::io::{Read, Write};
        let mut a = &a;
        let mut buf = [1u8; 64];
        for _ in 0..rounds {
            let t = Instant::now();
            a.write_all(&buf).unwrap();
            a.read_exact(&mut buf).unwrap();
            base.push(t.elapsed().as_secs_f64() * 1e6 / 2.0);
        }
    }
    drop(a);
    let _ = echo.join();
    // Note: the baseline's echo is a thread; a second process costs about the same wakeup.

    let g = geometry(64, 64, Policy::DropOldest);
    let (ping, ping_fd) = RingMap::create("bench-ping", g).unwrap();
    let (pong, pong_fd) = RingMap::create("bench-pong", g).unwrap();
    let (bell_c, bell_p) = (ring::doorbell().unwrap(), ring::doorbell().unwrap());
    let (space_ping, space_pong) = (ring::doorbell().unwrap(), ring::doorbell().unwrap());
    let mut w = RingWriter::attach(
        Arc::new(ping),
        space_ping.try_clone().unwrap(),
        bells_with(0, bell_c.try_clone().unwrap()),
        1,
    );
    let mut r = RingReader::attach(
        Arc::new(pong),
        0,
        bell_p.try_clone().unwrap(),
        space_pong.try_clone().unwrap(),
        false,
    )
    .unwrap();
    let mut kid = child(&[
        "pong".into(),
        inheritable(&ping_fd),
        inheritable(&pong_fd),
        inheritable(&bell_c),
        inheritable(&bell_p),
        inheritable(&space_ping),
        inheritable(&space_pong),
        rounds.to_string(),
    ])
    .spawn()
    .unwrap();
    let mut samples = Vec::with_capacity(rounds);
    let msg = [3u8; 64];
    for _ in 0..rounds {
        let t = Instant::now();
        w.write_bytes(0, &msg).unwrap();
        loop {
            if let ReadOutcome::Message(..) =
                r.read_timeout(Some(Duration::from_secs(5)), |b, _| b.len())
            {
                break;
            }
        }
        samples.push(t.elapsed().as_secs_f64() * 1e6 / 2.0);
    }
    let _ = kid.wait();
    let (p50, p99) = (
        percentile(&mut samples, 50.0),
        percentile(&mut samples, 99.0),
    );
    let (b50, b99) = (percentile(&mut base, 50.0), percentile(&mut base, 99.0));
    rows.push(Row {
        measure: format!(
            "(streams a) 64 B message producer → consumer, other process ({rounds} round trips / 2)"
        ),
        p50: us(p50),
        p99: us(p99),
        baseline: format!(
            "raw Unix socket ping-pong / 2: p50 {} p99 {}",
            us(b50),
            us(b99)
        ),
        target: "≤ 1.5× raw socket".into(),
        verdict: verdict(p50 <= 1.5 * b50, format!("{:.2}×", p50 / b50)),
    });
}

/// Read every byte of a frame (what a consumer using it in place does at least once).
fn checksum(b: &[u8]) -> u64 {
    b.chunks_exact(8).fold(0u64, |a, c| {
        a.wrapping_add(u64::from_ne_bytes(c.try_into().expect("8 bytes")))
    })
}

/// (b) 4K RGBA frames: producer write + consumer read throughput beside memcpy of the same
/// bytes (which reads them once and writes them once, as the pair does). The producer writes
/// each frame in place; the consumer either reads it in place (a checksum over every byte, as
/// a consumer that uses the slot directly touches it) or copies it out.
fn frames(n: usize, in_place: bool, rows: &mut Vec<Row>) {
    let n = n.max(8);
    let src = vec![5u8; FRAME];
    let mut dst = vec![0u8; FRAME];
    let mut copies = Vec::new();
    for _ in 0..n.max(10) {
        let t = Instant::now();
        dst.copy_from_slice(std::hint::black_box(&src));
        copies.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let memcpy_ms = percentile(&mut copies, 50.0);
    // The same work in one process, without a ring: write the frame, then read it (or copy it).
    let mut alone = Vec::new();
    for i in 0..n.max(10) {
        let t = Instant::now();
        dst.fill(i as u8);
        if in_place {
            std::hint::black_box(checksum(std::hint::black_box(&dst)));
        } else {
            let mut out = std::mem::take(&mut dst);
            out.copy_from_slice(std::hint::black_box(&src));
            dst = out;
        }
        alone.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let alone_ms = percentile(&mut alone, 50.0);
    let g = geometry(FRAME, 3, Policy::Block);
    let (map, fd) = RingMap::create("bench-frames", g).unwrap();
    let (bell, space) = (ring::doorbell().unwrap(), ring::doorbell().unwrap());
    let mut r = RingReader::attach(
        Arc::new(map),
        0,
        bell.try_clone().unwrap(),
        space.try_clone().unwrap(),
        false,
    )
    .unwrap();
    let mut kid = child(&[
        "frames".into(),
        inheritable(&fd),
        inheritable(&space),
        inheritable(&bell),
        n.to_string(),
    ])
    .spawn()
    .unwrap();
    let mut per = Vec::new();
    let mut got = 0;
    let mut last = Instant::now();
    // Throughput is counted once every slot has been written once (the first touch of the
    // ring's pages is a one-off cost of creating it).
    let warm = g.slot_count as usize;
    let mut start = Instant::now();
    // Hand-off: publish → the consumer's first look at the frame, for frames published while
    // the consumer was already waiting for them (so the figure is the doorbell and the wakeup,
    // not a queue).
    let mut handoff = Vec::new();
    while got < n {
        let waiting_since = ring::monotonic_ns();
        let mut begin = 0;
        if let ReadOutcome::Message(m, ()) = r.read_timeout(Some(Duration::from_secs(5)), |b, _| {
            begin = ring::monotonic_ns();
            if in_place {
                // Every word of a frame is the same: a torn or changed frame would show.
                let first = u64::from_ne_bytes(b[..8].try_into().expect("8 bytes"));
                let words = (b.len() / 8) as u64;
                assert_eq!(
                    checksum(b),
                    first.wrapping_mul(words),
                    "a frame arrived changed"
                );
            } else {
                dst[..b.len()].copy_from_slice(b);
            }
        }) {
            if m.publish_ns > waiting_since {
                handoff.push(begin.saturating_sub(m.publish_ns) as f64 / 1e3);
            }
            got += 1;
            let now = Instant::now();
            if got > warm {
                per.push(now.duration_since(last).as_secs_f64() * 1e3);
            }
            if got == warm {
                start = now;
            }
            last = now;
        }
    }
    let total = start.elapsed().as_secs_f64();
    let n = n - warm;
    let _ = kid.wait();
    let frame_ms = percentile(&mut per.clone(), 50.0);
    let p99 = percentile(&mut per, 99.0);
    let gbps = (n * FRAME) as f64 / total / 1e9;
    let base_gbps = FRAME as f64 / (memcpy_ms / 1e3) / 1e9;
    let handoff_us = percentile(&mut handoff, 50.0);
    rows.push(Row {
        measure: format!(
            "(streams b) 3840×2160 RGBA frames, producer writes + consumer {}, {n} frames",
            if in_place {
                "reads in place (checksum)"
            } else {
                "copies out"
            }
        ),
        p50: format!("{frame_ms:.2} ms/frame ({gbps:.1} GB/s)"),
        p99: format!("{p99:.2} ms/frame"),
        baseline: format!(
            "memcpy of one frame: {memcpy_ms:.2} ms ({base_gbps:.1} GB/s); the same write and {} in one process, no ring: {alone_ms:.2} ms",
            if in_place { "read" } else { "copy" }
        ),
        target: "≥ 0.8× memcpy; hand-off < 100 µs/frame".into(),
        verdict: verdict(
            gbps >= 0.8 * base_gbps && handoff_us < 100.0,
            format!(
                "{:.2}× memcpy; hand-off (publish → consumer reading, {} frames) p50 {handoff_us:.0} µs",
                gbps / base_gbps,
                handoff.len()
            ),
        ),
    });
}

/// (d) 64 B messages per second, one producer to four consumer processes.
fn fan_out(rows: &mut Vec<Row>) {
    let g = geometry(64, 4096, Policy::DropOldest);
    let (map, fd) = RingMap::create("bench-fan", g).unwrap();
    let map = Arc::new(map);
    let space = ring::doorbell().unwrap();
    let bells: Bells = Arc::new(Mutex::new((0..MAX_CONSUMERS).map(|_| None).collect()));
    let millis = 1000u64;
    let mut kids = Vec::new();
    for cell in 0..4 {
        let bell = ring::doorbell().unwrap();
        bells.lock().unwrap()[cell] = Some(bell.try_clone().unwrap());
        kids.push(
            child(&[
                "fan".into(),
                inheritable(&fd),
                inheritable(&bell),
                inheritable(&space),
                cell.to_string(),
                (millis + 300).to_string(),
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
        );
    }
    // Let the consumers attach.
    let deadline = Instant::now() + Duration::from_secs(5);
    while (0..4).any(|i| {
        map.consumer(i)
            .active
            .load(std::sync::atomic::Ordering::Acquire)
            == 0
    }) && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut w = RingWriter::attach(map.clone(), space, bells, 1);
    let msg = [9u8; 64];
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < Duration::from_millis(millis) {
        w.write_bytes(0, &msg).unwrap();
        sent += 1;
    }
    let rate = sent as f64 / start.elapsed().as_secs_f64();
    let mut received = Vec::new();
    for k in kids {
        let out = k.wait_with_output().unwrap();
        let s = String::from_utf8_lossy(&out.stdout);
        let got: f64 = s
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        received.push(got);
    }
    let min = received.iter().cloned().fold(f64::MAX, f64::min);
    rows.push(Row {
        measure: "(streams d) 64 B messages/s, one producer → 4 consumer processes (drop-oldest, 4096 slots)".into(),
        p50: format!("{:.2} M msg/s published", rate / 1e6),
        p99: "-".into(),
        baseline: format!("slowest consumer received {:.2} M in ~1 s ({:.0}% of published)", min / 1e6, 100.0 * min / sent as f64),
        target: "report".into(),
        verdict: "measured".into(),
    });
}

/// (e) fds and shared memory per stream, as the Broker holds them.
fn cost(rows: &mut Vec<Row>) {
    let count = |p: &str| std::fs::read_dir(p).map(|d| d.count()).unwrap_or(0);
    let before = count("/proc/self/fd");
    let mut keep = Vec::new();
    for i in 0..100 {
        let g = geometry(64, 64, Policy::LatestOnly);
        let (map, fd) = RingMap::create(&format!("bench-cost-{i}"), g).unwrap();
        keep.push((
            map,
            fd,
            ring::doorbell().unwrap(),
            ring::doorbell().unwrap(),
        ));
    }
    let per = (count("/proc/self/fd") - before) as f64 / 100.0;
    let g = geometry(64, 64, Policy::LatestOnly);
    let scene = geometry(
        syncra_protocol::world::scene_slot_size(256) as usize,
        4,
        Policy::LatestOnly,
    );
    rows.push(Row {
        measure: "(streams e) cost per stream in the runtime (1 consumer)".into(),
        p50: format!("{per:.1} fds (ring memfd, producer doorbell, 1 per consumer)"),
        p99: "-".into(),
        baseline: format!(
            "shared memory: {} KiB for 64 × 64 B; {} KiB for a 256-entity scene × 4",
            g.file_size() / 1024,
            scene.file_size() / 1024
        ),
        target: "report".into(),
        verdict: "measured".into(),
    });
}

pub(crate) fn all(rows: &mut Vec<Row>, rounds: usize, frames_n: usize) {
    latency(rounds, rows);
    frames(frames_n, true, rows);
    frames(frames_n, false, rows);
    fan_out(rows);
    cost(rows);
}
