//! Worlds that survive their own crash: a world's state is kept in a ring the runtime holds,
//! and its next incarnation resumes from it — at the tick after its last state, with the very
//! scene a world that never crashed has at that tick; a state torn by a death mid-write is
//! skipped for the one before it; a state of another config is refused with the reason.

use syncra_integration_tests::{Harness, PATIENCE, send};
use syncra_protocol::status::NodeView;
use syncra_protocol::world::{DEFAULT_SEED, WorldSettings};
use syncra_world::Scene;

const WORLD: &str = "[runtime]\nwatch_interval_ms = 250\n[supervisor]\nbackoff_initial_ms = 20\n[worlds]\nentities = 48\n";

fn settings() -> WorldSettings {
    WorldSettings {
        entities: 48,
        seed: DEFAULT_SEED,
        ..WorldSettings::new("main")
    }
}

/// The tick in a note "resumed at tick N from its durable state, …".
fn resumed_at(view: &NodeView) -> Option<u64> {
    view.note
        .as_deref()?
        .strip_prefix("resumed at tick ")?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The newest scene on `world/main/scene`, checked against a world that never crashed:
/// a scene built from the same seed and stepped to the same tick. Its tick.
fn scene_matches_a_world_that_never_crashed(h: &Harness) -> u64 {
    let tapped = h.tap("world/main/scene").expect("a scene on the stream");
    let value = &tapped["value"];
    let tick = value["tick"].as_u64().unwrap();
    let mut never = Scene::new(&settings());
    for _ in 0..tick {
        never.step();
    }
    let mut expected = syncra_protocol::world::SceneSnapshot {
        world: String::new(),
        tick: 0,
        entities: Vec::new(),
        player: None,
    };
    never.snapshot_into("main", &mut expected);
    let entities = value["entities"].as_array().unwrap();
    assert_eq!(entities.len(), expected.entities.len());
    for (got, want) in entities.iter().zip(&expected.entities) {
        assert_eq!(got["id"].as_u64(), Some(want.id));
        let position: Vec<f32> = got["position"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(position, want.position, "entity {} at tick {tick}", want.id);
    }
    tick
}

#[test]
fn a_killed_world_resumes_after_its_last_state_with_the_scene_of_a_world_that_never_crashed() {
    let h = Harness::start(WORLD, &[]);
    let first = h.wait_ready(&["world/main"]).remove(0);
    let before = h.wait_until("the world has ticked a while", PATIENCE, |s| {
        s.node("world/main")
            .and_then(|n| n.tick)
            .filter(|t| *t >= 90)
    });
    send(first.pid.unwrap(), libc::SIGKILL);
    let second = h.wait_ready_incarnation("world/main", 2);
    let view = h.wait_until("the world says where it resumed", PATIENCE, |s| {
        s.node("world/main")
            .filter(|n| n.incarnation == 2 && n.note.is_some())
            .cloned()
    });
    let at = resumed_at(&view).unwrap_or_else(|| panic!("not resumed: {:?}", view.note));
    assert!(
        at >= before,
        "resumed at {at}, but the world had reached {before}"
    );
    assert!(
        view.note.as_deref().unwrap().contains("0 ticks lost")
            || view.note.as_deref().unwrap().contains("1 tick lost"),
        "{:?}",
        view.note
    );
    // It ticks on from there, never from 0: the scene is that of a world that never crashed.
    let tick = scene_matches_a_world_that_never_crashed(&h);
    assert!(tick >= at, "the scene is at {tick}, before {at}");
    assert_eq!(h.node("world/main").pid, second.pid);
    let log = std::fs::read_to_string(second.log_file.as_deref().unwrap()).unwrap();
    assert!(log.contains("resumed from its durable state"), "{log}");
    // `syncra tap` sums a state up rather than misreading it.
    let tapped = h.tap("world/main/state").expect("a state on the stream");
    assert!(tapped["value"]["tick"].as_u64().is_some(), "{tapped}");
    assert_eq!(tapped["value"]["entities"], 48, "{tapped}");
    // What a state costs it, in `syncra status`.
    h.wait_until("the world reports its state's cost", PATIENCE, |s| {
        s.node("world/main")?
            .figures
            .iter()
            .find(|f| f.name == "state_us" && f.value > 0.0)
            .cloned()
    });
}

#[test]
fn a_state_torn_by_a_death_mid_write_is_skipped_for_the_one_before() {
    let h = Harness::start(
        &format!("{WORLD}env = {{ SYNCRA_WORLD_FAULT = \"die-writing-state:150\" }}\n"),
        &[],
    );
    // The first incarnation dies in the middle of writing tick 150's state.
    let second = h.wait_ready_incarnation("world/main", 2);
    let crashes = h.crashes(Some("world/main"));
    assert_eq!(crashes[0].record.signal.as_deref(), Some("SIGKILL"));
    let view = h.wait_until("the world says where it resumed", PATIENCE, |s| {
        s.node("world/main")
            .filter(|n| n.incarnation == 2 && n.note.is_some())
            .cloned()
    });
    assert_eq!(resumed_at(&view), Some(149), "{:?}", view.note);
    assert_eq!(h.node("world/main").pid, second.pid);
    scene_matches_a_world_that_never_crashed(&h);
}

#[test]
fn a_state_of_another_config_is_not_resumed_and_the_world_says_why() {
    let h = Harness::start(WORLD, &[]);
    h.wait_ready(&["world/main"]);
    h.wait_until("the world has ticked", PATIENCE, |s| {
        s.node("world/main")
            .and_then(|n| n.tick)
            .filter(|t| *t >= 30)
    });
    // Another seed: the same shape of state, but not this world's simulation.
    h.write_config(&format!("{WORLD}seed = 99\n"));
    let out = h.cli(&["reload"]);
    assert!(out.status.success(), "{out:?}");
    h.wait_ready_incarnation("world/main", 2);
    let view = h.wait_until(
        "the world says why it started from its seed",
        PATIENCE,
        |s| {
            s.node("world/main")
                .filter(|n| n.incarnation == 2 && n.note.is_some())
                .cloned()
        },
    );
    let note = view.note.unwrap();
    assert!(
        note.starts_with("started from its seed: state from another config (seed 24301")
            && note.contains("this world runs seed 99"),
        "{note}"
    );
}

#[test]
fn with_state_off_a_killed_world_starts_again_from_its_seed() {
    let h = Harness::start(&format!("{WORLD}state = \"off\"\n"), &[]);
    let first = h.wait_ready(&["world/main"]).remove(0);
    let reached = h.wait_until("the world has ticked", PATIENCE, |s| {
        s.node("world/main")
            .and_then(|n| n.tick)
            .filter(|t| *t >= 60)
    });
    send(first.pid.unwrap(), libc::SIGKILL);
    h.wait_ready_incarnation("world/main", 2);
    let view = h.node("world/main");
    assert_eq!(view.note, None, "no state, nothing to say");
    assert!(view.tick.unwrap_or(0) < reached, "{view:?}");
    let streams = h.cli(&["streams"]);
    assert!(
        !String::from_utf8_lossy(&streams.stdout).contains("world/main/state"),
        "no state ring when state is off"
    );
}

#[test]
fn a_snapshot_restores_its_world_and_a_damaged_or_foreign_one_is_refused_with_the_reason() {
    use std::os::unix::fs::PermissionsExt;
    let h = Harness::start(
        &WORLD.replace("entities = 48\n", "entities = 48\ncount = 2\n"),
        &[],
    );
    h.wait_ready(&["world/main", "world/main-2"]);
    h.wait_until("the world has ticked", PATIENCE, |s| {
        s.node("world/main")
            .and_then(|n| n.tick)
            .filter(|t| *t >= 60)
    });
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("main.state");
    let out = h.cli(&["snapshot", "world/main", "--out", file.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    let tick: u64 = said
        .strip_prefix("saved world/main at tick ")
        .and_then(|r| r.split_whitespace().next())
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("{said}"));
    let bytes = std::fs::read(&file).unwrap();
    assert!(bytes.starts_with(b"SYNSTATE"));
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // Not over a file that exists.
    let again = h.cli(&["snapshot", "world/main", "--out", file.to_str().unwrap()]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("exists"),
        "{again:?}"
    );

    // Refused, each with its reason, and the world untouched: damaged, of another world's
    // config, not a state at all.
    let damaged = dir.path().join("damaged.state");
    let mut flipped = bytes.clone();
    flipped[200] ^= 1;
    std::fs::write(&damaged, &flipped).unwrap();
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "hello").unwrap();
    for (world, path, reason) in [
        ("world/main", &damaged, "checksum"),
        (
            "world/main-2",
            &file,
            "state from another config (seed 24301",
        ),
        ("world/main", &text, "not a world state"),
    ] {
        let out = h.cli(&["restore", world, path.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(reason) && err.contains("was not restored"),
            "{err}"
        );
    }
    assert_eq!(h.node("world/main").incarnation, 1);
    assert_eq!(h.node("world/main-2").incarnation, 1);

    // Later, the world goes back to the snapshot's tick, and on exactly as before.
    h.wait_until("the world has gone on", PATIENCE, |s| {
        s.node("world/main")
            .and_then(|n| n.tick)
            .filter(|t| *t >= tick + 60)
    });
    let out = h.cli(&["restore", "world/main", file.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("at tick {tick}")),
        "{out:?}"
    );
    let view = h.wait_until("the world says where it resumed", PATIENCE, |s| {
        s.node("world/main")
            .filter(|n| n.incarnation == 2 && n.note.is_some())
            .cloned()
    });
    assert_eq!(resumed_at(&view), Some(tick), "{:?}", view.note);
    scene_matches_a_world_that_never_crashed(&h);
    assert_eq!(
        h.node("world/main-2").incarnation,
        1,
        "the other world is untouched"
    );
}

#[test]
fn a_state_that_kills_its_world_again_and_again_is_set_aside_and_the_world_starts_fresh() {
    let h = Harness::start(
        "[runtime]\nwatch_interval_ms = 250\n[supervisor]\nbackoff_initial_ms = 20\nintensity = 20\n[worlds]\nentities = 48\nstate_poison_window_ms = 1000\nenv = { SYNCRA_WORLD_FAULT = \"poison-at:90\" }\n",
        &[],
    );
    let first = h.wait_ready(&["world/main"]).remove(0);
    h.wait_until("the world has run past its poison window", PATIENCE, |s| {
        s.node("world/main")
            .and_then(|n| n.tick)
            .filter(|t| *t >= 100)
    });
    // From now on, every incarnation that resumes from its state dies at once.
    send(first.pid.unwrap(), libc::SIGKILL);
    let fresh = h.wait_until("a fresh incarnation runs", PATIENCE, |s| {
        s.node("world/main")
            .filter(|n| n.state == syncra_protocol::NodeState::Ready && n.incarnation > 1)
            .filter(|n| {
                n.note
                    .as_deref()
                    .is_some_and(|t| t.starts_with("started from its seed"))
            })
            .cloned()
    });
    assert_eq!(
        fresh.incarnation, 5,
        "the killed one, 3 poisoned, then a fresh one"
    );
    let note = fresh.note.unwrap();
    assert!(note.contains("set aside"), "{note}");
    let kept = note
        .split("kept in ")
        .nth(1)
        .map(|p| p.trim_end_matches(')'))
        .unwrap_or_else(|| panic!("{note}"));
    let state = std::fs::read(kept).unwrap_or_else(|e| panic!("{kept}: {e}"));
    let info = syncra_protocol::world_state::inspect(&state).unwrap();
    assert!(info.tick >= 90, "{info:?}");
    // The crash record of the last crash says so, and `syncra crashes` shows it.
    let crashes = h.crashes(Some("world/main"));
    assert_eq!(crashes.len(), 4, "{crashes:#?}");
    let last = &crashes.last().unwrap().record;
    assert!(
        last.detail.contains("set aside") && last.detail.contains(kept),
        "{}",
        last.detail
    );
    let out = h.cli(&["crashes", "world/main"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(kept),
        "{out:?}"
    );
    // And it runs on from its seed, not dying again.
    h.wait_until("the fresh world ticks past the poison", PATIENCE, |s| {
        s.node("world/main")
            .filter(|n| n.incarnation == 5)
            .and_then(|n| n.tick)
            .filter(|t| *t >= 95)
    });
    assert_eq!(h.node("world/main").incarnation, 5);
}
