//! Durable world state (issue 15): the state write per tick into a real ring, beside a memcpy
//! of the same bytes into the same ring; SIGKILL → the world ticking again from its state,
//! beside the same world restarted from its seed; ticks lost per crash.

use std::sync::Arc;
use std::time::{Duration, Instant};

use syncra_integration_tests::{Harness, percentile, send};
use syncra_protocol::ring::{Geometry, Policy, RingMap, RingWriter, doorbell};
use syncra_protocol::status::EventKind;
use syncra_protocol::world::WorldSettings;
use syncra_world::Scene;
use syncra_world::state::state_size;

use super::{Row, events, ms, until, verdict};

/// Milliseconds as microseconds, for figures well under one.
fn us(d: f64) -> String {
    format!("{:.1} µs", d * 1e3)
}

/// Every durable-state row.
pub(crate) fn all(writes: usize, kills: usize, rows: &mut Vec<Row>) {
    for entities in [256, 4096, 65_536] {
        state_write(entities, writes, rows);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    resume(&rt, kills, rows);
}

/// The real path: a ring the size the world declares, a scene of `entities` a few ticks in,
/// its state written in place into the next slot (seqlock stamps and all).
fn state_write(entities: u32, n: usize, rows: &mut Vec<Row>) {
    let settings = WorldSettings {
        entities,
        ..WorldSettings::new("bench")
    };
    let mut scene = Scene::new(&settings);
    for _ in 0..3 {
        scene.step();
    }
    let geometry = Geometry {
        slot_size: state_size(entities).next_multiple_of(64) as u32,
        slot_count: 3,
        policy: Policy::LatestOnly,
        block_timeout_ms: 0,
    };
    let (map, _fd) = RingMap::create("bench-state", geometry).expect("ring");
    let mut writer = RingWriter::attach(
        Arc::new(map),
        doorbell().expect("eventfd"),
        Arc::new(std::sync::Mutex::new(Vec::new())),
        1,
    );
    let bytes = scene.save(0);
    let (mut save, mut copy) = (Vec::new(), Vec::new());
    // Warm both paths (page faults of the ring's first writes are not the steady state).
    for _ in 0..6 {
        let _ = writer.write(0, |buf| scene.save_into(0, buf).ok_or(()));
        let _ = writer.write(0, |buf| {
            buf[..bytes.len()].copy_from_slice(&bytes);
            Ok::<_, ()>(bytes.len())
        });
    }
    for _ in 0..n {
        let t0 = Instant::now();
        let _ = writer.write(0, |buf| scene.save_into(0, buf).ok_or(()));
        save.push(t0.elapsed().as_secs_f64() * 1e3);
        let t0 = Instant::now();
        let _ = writer.write(0, |buf| {
            buf[..bytes.len()].copy_from_slice(&bytes);
            Ok::<_, ()>(bytes.len())
        });
        copy.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    let (s50, s99) = (percentile(&mut save, 50.0), percentile(&mut save, 99.0));
    let (c50, c99) = (percentile(&mut copy, 50.0), percentile(&mut copy, 99.0));
    let budget = 1000.0 / 60.0 * 0.1;
    let ratio = s50 / c50;
    let (target, ok) = if entities == 4096 {
        (
            "≤ 2 × memcpy, < 10 % of a 60 Hz tick (1.67 ms)".to_owned(),
            ratio <= 2.0 && s99 < budget,
        )
    } else {
        ("≤ 2 × memcpy".to_owned(), ratio <= 2.0)
    };
    rows.push(Row {
        measure: format!(
            "(state a) state write per tick, {entities} entities ({} KiB, {n} writes into the world's ring)",
            bytes.len() / 1024
        ),
        p50: us(s50),
        p99: us(s99),
        baseline: format!(
            "memcpy of the same bytes into the same ring: p50 {} p99 {}",
            us(c50),
            us(c99)
        ),
        target,
        verdict: verdict(ok, format!("{ratio:.2} × at p50")),
    });
}

/// The tick in a world's note "resumed at tick N …, K ticks lost", and K.
fn resumed(note: Option<&str>) -> Option<(u64, u64)> {
    let rest = note?.strip_prefix("resumed at tick ")?;
    let tick = rest.split_whitespace().next()?.parse().ok()?;
    let lost = rest
        .split(", ")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some((tick, lost))
}

/// (state b) SIGKILL of a 4096-entity world → ready again, from its durable state and (the
/// baseline) from its seed; (state c) ticks lost per crash, as the resumed world counts them
/// (the newest scene its previous incarnation published, minus the tick it resumed at).
fn resume(rt: &tokio::runtime::Runtime, kills: usize, rows: &mut Vec<Row>) {
    let mut times = Vec::new();
    let mut lost = Vec::new();
    for state in ["durable", "off"] {
        let h = Harness::start(
            &super::config(
                1000,
                // Killed every 120 ms on purpose: not a poison state.
                &format!(
                    "[worlds]\nentities = 4096\nstate = \"{state}\"\nstate_poison_crashes = 1000\n"
                ),
            ),
            &[],
        );
        h.wait_ready(&["world/main"]);
        let mut stream = rt.block_on(events(&h));
        let mut took = Vec::new();
        for _ in 0..kills {
            // Past the stability threshold, so that the restart is immediate.
            std::thread::sleep(Duration::from_millis(120));
            let node = h.node("world/main");
            let t0 = Instant::now();
            send(node.pid.unwrap(), libc::SIGKILL);
            let (t1, ()) = rt.block_on(until(&mut stream, |ev| {
                matches!(ev.what, EventKind::Up { .. } if ev.incarnation > node.incarnation)
                    .then_some(())
            }));
            took.push((t1 - t0).as_secs_f64() * 1e3);
            if state == "durable" {
                let view = h.wait_until(
                    "the world says where it resumed",
                    Duration::from_secs(10),
                    |s| {
                        s.node("world/main")
                            .filter(|n| n.incarnation > node.incarnation)
                            .and_then(|n| n.note.clone())
                    },
                );
                let (_, k) = resumed(Some(&view))
                    .unwrap_or_else(|| panic!("the world did not resume: {view}"));
                lost.push(k as f64);
            }
        }
        times.push(took);
    }
    let (mut durable, mut fresh) = (times.remove(0), times.remove(0));
    let (d50, d99) = (
        percentile(&mut durable, 50.0),
        percentile(&mut durable, 99.0),
    );
    let (f50, f99) = (percentile(&mut fresh, 50.0), percentile(&mut fresh, 99.0));
    rows.push(Row {
        measure: format!(
            "(state b) SIGKILL of a 4096-entity world → ready again, resumed from its durable state ({kills} kills)"
        ),
        p50: ms(d50),
        p99: ms(d99),
        baseline: format!("the same world with `state = \"off\"` (from its seed): p50 {} p99 {}", ms(f50), ms(f99)),
        target: "-".into(),
        verdict: format!("{:+.2} ms at p50", d50 - f50),
    });
    let max = lost.iter().copied().fold(0.0, f64::max);
    let (l50, l99) = (percentile(&mut lost, 50.0), percentile(&mut lost, 99.0));
    rows.push(Row {
        measure: format!(
            "(state c) ticks lost per crash ({kills} kills at 60 Hz, state every tick)"
        ),
        p50: format!("{l50:.0} ticks"),
        p99: format!("{l99:.0} ticks"),
        baseline: "newest scene published before the kill − tick resumed at".into(),
        target: "≤ 1".into(),
        verdict: verdict(max <= 1.0, format!("max {max:.0}")),
    });
}
