//! The renderer driver under a real runtime, drawing on a real wgpu device (lavapipe, Mesa's
//! CPU Vulkan, or its GL): its frames, read from `renderer/frame` by a test peer, are checked
//! pixel by pixel against the world's deterministic scene at the tick each frame says it
//! shows, through the camera every frame is drawn with. Nothing in the expected picture is
//! hard-coded: where each entity lands and its colour come from the scene and the camera.

use std::path::Path;
use std::time::Instant;

use serde_json::Value;
use syncra_integration_tests::picture::{Picture, check, scene_at};
use syncra_integration_tests::{Harness, PATIENCE, send, workspace_bin};
use syncra_protocol::NodeState;
use syncra_protocol::world::{DEFAULT_SEED, WorldSettings};

const PEER: &str = env!("CARGO_BIN_EXE_syncra-test-peer");
const ENTITIES: u32 = 24;
const WIDTH: u32 = 640;
const HEIGHT: u32 = 360;

/// A runtime with the world `main`, the renderer and a peer grabbing its frames.
fn config(dir: &Path, settings: &str, env: &str) -> String {
    format!(
        "[runtime]\nwatch_interval_ms = 500\n[supervisor]\nintensity = 100\n\
         [drivers.renderer]\ncommand = \"{renderer}\"\n\
         settings = {{ worlds = [\"main\"], width = {WIDTH}, height = {HEIGHT}, rate_hz = 30.0{settings} }}\n{env}\n\
         [drivers.grab]\ncommand = \"{PEER}\"\n\
         args = [\"frame-grab\", \"stream=renderer/frame\", \"out={out}\", \"dir={dir}\", \"save_every=5\"]\n\
         [worlds]\nentities = {ENTITIES}\n",
        renderer = workspace_bin("syncra-renderer").display(),
        out = dir.join("grab.jsonl").display(),
        dir = dir.display(),
    )
}

fn lines(dir: &Path) -> Vec<Value> {
    syncra_integration_tests::jsonl(&dir.join("grab.jsonl"))
}

/// The first saved frame that `pick` accepts: its line and its pixels.
fn saved_frame(dir: &Path, what: &str, pick: impl Fn(&Value) -> bool) -> (Value, Vec<u8>) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let l = lines(dir);
        if let Some(e) = l.iter().find(|v| v.get("error").is_some()) {
            panic!("the frame grabber failed: {e}");
        }
        for v in l.iter().rev().filter(|v| v["saved"].is_string() && pick(v)) {
            if let Ok(pixels) = std::fs::read(v["saved"].as_str().unwrap_or_default()) {
                return (v.clone(), pixels);
            }
        }
        assert!(
            Instant::now() < deadline,
            "no saved frame {what}; the last lines:\n{}",
            l.iter()
                .rev()
                .take(5)
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// The world `main`'s settings (the default seed, as the runtime gives the first world).
fn main_world() -> WorldSettings {
    WorldSettings {
        entities: ENTITIES,
        seed: DEFAULT_SEED,
        ..WorldSettings::new("main")
    }
}

/// Check a grabbed frame line and its pixels against the scene at the tick it shows.
fn assert_shows_its_tick(line: &Value, pixels: &[u8]) -> u64 {
    let h = &line["header"];
    assert_eq!(
        (h["width"].as_u64(), h["height"].as_u64()),
        (Some(WIDTH.into()), Some(HEIGHT.into()))
    );
    let view = &h["worlds"][0];
    assert_eq!(view["world"], "main", "{h}");
    assert_eq!(
        (view["x"].as_u64(), view["width"].as_u64()),
        (Some(0), Some(WIDTH.into()))
    );
    let tick = view["tick"].as_u64().expect("the tick shown");
    let c = check(
        &Picture::from_rgba(WIDTH, HEIGHT, pixels),
        &scene_at(&main_world(), tick),
    );
    assert!(
        c.passed((ENTITIES / 2) as usize),
        "tick {tick}: the frame does not show the scene: {c:#?}"
    );
    tick
}

#[test]
fn offscreen_frames_show_each_entity_where_the_camera_puts_it_at_the_tick_they_say() {
    let t = tempfile::tempdir().unwrap();
    let h = Harness::start(&config(t.path(), "", ""), &[]);
    h.wait_ready(&["renderer", "grab", "world/main"]);
    // Two seconds in, entities have moved well past their size since tick 0.
    let (line, pixels) = saved_frame(t.path(), "two seconds into the world", |v| {
        v["header"]["worlds"][0]["tick"]
            .as_u64()
            .is_some_and(|t| t >= 120)
    });
    let tick = assert_shows_its_tick(&line, &pixels);
    // The check can fail: the same frame against the scene of two seconds earlier does.
    let stale = check(
        &Picture::from_rgba(WIDTH, HEIGHT, &pixels),
        &scene_at(&main_world(), tick - 120),
    );
    assert!(
        stale.wrong.len() * 2 >= stale.checked,
        "a frame should not match the scene of 2 s before: {stale:?}"
    );
    // What it draws with, by the CLI.
    let out = h.cli(&["call", "renderer", "syncra.renderer.get-info/1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info: Value = serde_json::from_slice(&out.stdout).expect("info JSON");
    assert_eq!(info["backend"], "vulkan", "{info}");
    assert!(
        info["adapter"].as_str().is_some_and(|a| !a.is_empty()),
        "{info}"
    );
    assert_eq!(
        (info["width"].as_u64(), info["target"].as_str()),
        (Some(WIDTH.into()), Some("offscreen"))
    );
    let figures = h.node("renderer");
    assert!(
        figures.figures.iter().any(|f| f.name == "fps"),
        "status shows the frame rate: {:?}",
        figures.figures
    );
}

#[test]
fn a_killed_renderer_is_replaced_and_draws_on_without_the_world_noticing() {
    let t = tempfile::tempdir().unwrap();
    let h = Harness::start(&config(t.path(), "", ""), &[]);
    h.wait_ready(&["renderer", "grab", "world/main"]);
    let (before, _) = saved_frame(t.path(), "from the first renderer", |v| v["inc"] == 1);
    let world = h.node("world/main");
    send(h.node("renderer").pid.expect("a pid"), libc::SIGKILL);
    let (after, pixels) = saved_frame(t.path(), "from the second renderer", |v| v["inc"] == 2);
    assert!(
        after["seq"].as_u64() > before["seq"].as_u64(),
        "frame numbers go on: {before} then {after}"
    );
    assert_shows_its_tick(&after, &pixels);
    let now = h.node("world/main");
    assert_eq!(
        now.incarnation, world.incarnation,
        "the world was not restarted"
    );
    assert!(h.crashes(Some("world/main")).is_empty());
    assert_eq!(h.crashes(Some("renderer")).len(), 1, "the kill is recorded");
}

#[test]
fn without_vulkan_the_renderer_falls_back_to_gl_or_fails_saying_why() {
    let no_vulkan = "env = { VK_ICD_FILENAMES = \"/dev/null\" }";
    // Falling back (the default): the same picture, drawn with GL.
    let t = tempfile::tempdir().unwrap();
    let h = Harness::start(&config(t.path(), "", no_vulkan), &[]);
    h.wait_ready(&["renderer", "grab", "world/main"]);
    let (line, pixels) = saved_frame(t.path(), "drawn with GL", |v| {
        v["header"]["worlds"][0]["tick"]
            .as_u64()
            .is_some_and(|t| t > 0)
    });
    assert_shows_its_tick(&line, &pixels);
    let out = h.cli(&["call", "renderer", "syncra.renderer.get-info/1"]);
    let info: Value = serde_json::from_slice(&out.stdout).expect("info JSON");
    assert_eq!(info["backend"], "gl", "{info}");
    drop(h);
    // No fallback: the renderer fails for good (no retries into the same machine), and
    // status says it has no Vulkan adapter.
    let t = tempfile::tempdir().unwrap();
    let h = Harness::start(&config(t.path(), ", fallback = \"none\"", no_vulkan), &[]);
    let failed = h.wait_until("the renderer says why it failed", PATIENCE, |s| {
        s.node("renderer")
            .and_then(|n| n.detail.clone())
            .filter(|d| d.contains("no vulkan adapter"))
    });
    assert!(failed.contains("fallback = \"none\""), "{failed}");
    let node = h.wait_state("renderer", NodeState::Failed);
    assert_eq!(
        node.restarts, 0,
        "a missing device is not retried: {node:?}"
    );
}

#[test]
fn a_crash_looping_renderer_ends_failed_and_nothing_else_is_touched() {
    let t = tempfile::tempdir().unwrap();
    // At most 3 restarts a minute, then the supervisor gives up on it.
    let config = config(t.path(), "", "").replace(
        "intensity = 100",
        "intensity = 3\nperiod_ms = 60000\nbackoff_initial_ms = 10\nstable_after_ms = 60000",
    );
    let h = Harness::start(&config, &[]);
    h.wait_ready(&["renderer", "grab", "world/main"]);
    let world = h.node("world/main");
    for incarnation in 1..=4 {
        let node = h.wait_ready_incarnation("renderer", incarnation);
        send(node.pid.expect("a pid"), libc::SIGKILL);
    }
    let failed = h.wait_state("renderer", NodeState::Failed);
    assert!(
        failed
            .detail
            .as_deref()
            .is_some_and(|d| d.contains("gave up")),
        "{failed:?}"
    );
    // The runtime is up and answers; the world and the frame grabber were never touched.
    let now = h.node("world/main");
    assert_eq!(
        (now.state, now.incarnation),
        (NodeState::Ready, world.incarnation)
    );
    assert!(
        now.tick > world.tick,
        "the world ticks on: {world:?} then {now:?}"
    );
    assert_eq!(h.node("grab").incarnation, 1);
}

#[test]
fn a_setting_out_of_range_is_refused_once_naming_it() {
    let t = tempfile::tempdir().unwrap();
    let h = Harness::start(
        &config(t.path(), "", "").replace("width = 640", "width = 0"),
        &[],
    );
    let failed = h.wait_state("renderer", NodeState::Failed);
    assert_eq!(failed.restarts, 0, "not retried: {failed:?}");
    let detail = failed.detail.unwrap_or_default();
    assert!(detail.contains("settings.width = 0"), "{detail}");
}

#[test]
fn a_lost_gpu_device_is_replaced_in_process_and_drawing_goes_on() {
    let t = tempfile::tempdir().unwrap();
    let h = Harness::start(&config(t.path(), "", ""), &[]);
    h.wait_ready(&["renderer", "grab", "world/main"]);
    let (before, _) = saved_frame(t.path(), "before the loss", |v| v["inc"] == 1);
    let out = h.cli(&["call", "renderer", "syncra.renderer.lose-device/1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seq = before["seq"].as_u64().unwrap();
    // Frames go on from the same process (the same incarnation), drawn right.
    let (after, pixels) = saved_frame(t.path(), "after the loss", |v| {
        v["inc"] == 1 && v["seq"].as_u64().is_some_and(|s| s > seq + 10)
    });
    assert_shows_its_tick(&after, &pixels);
    let out = h.cli(&["call", "renderer", "syncra.renderer.get-info/1"]);
    let info: Value = serde_json::from_slice(&out.stdout).expect("info JSON");
    assert_eq!(info["device_losses"], 1, "{info}");
    assert_eq!(h.node("renderer").incarnation, 1, "recovered in-process");
    assert!(h.crashes(Some("renderer")).is_empty());
}

#[test]
fn every_world_is_drawn_side_by_side_in_its_own_viewport() {
    let t = tempfile::tempdir().unwrap();
    // `worlds = []`: every world, by name; two worlds of different seeds.
    let config = config(t.path(), "", "")
        .replace("worlds = [\"main\"], ", "worlds = [], ")
        .replace("[worlds]\n", "[worlds]\ncount = 2\n");
    let h = Harness::start(&config, &[]);
    h.wait_ready(&["renderer", "grab", "world/main", "world/main-2"]);
    let (line, pixels) = saved_frame(t.path(), "with both worlds", |v| {
        v["header"]["worlds"]
            .as_array()
            .is_some_and(|w| w.len() == 2)
    });
    let picture = Picture::from_rgba(WIDTH, HEIGHT, &pixels);
    let views = line["header"]["worlds"].as_array().unwrap();
    for (i, view) in views.iter().enumerate() {
        let name = view["world"].as_str().unwrap();
        assert_eq!(name, ["main", "main-2"][i], "in name order: {views:?}");
        let (x, w) = (
            view["x"].as_u64().unwrap() as u32,
            view["width"].as_u64().unwrap() as u32,
        );
        assert_eq!((x, w), (i as u32 * WIDTH / 2, WIDTH / 2), "{view}");
        // The second world has the next seed, as the runtime gives it.
        let settings = WorldSettings {
            name: name.into(),
            seed: DEFAULT_SEED + i as u64,
            ..main_world()
        };
        let c = check(
            &picture.columns(x, w),
            &scene_at(&settings, view["tick"].as_u64().unwrap()),
        );
        assert!(c.passed((ENTITIES / 3) as usize), "{name}: {c:#?}");
    }
}

#[test]
fn with_more_worlds_than_viewports_the_first_four_by_name_are_drawn() {
    let t = tempfile::tempdir().unwrap();
    let config = config(t.path(), "", "")
        .replace("worlds = [\"main\"], ", "worlds = [], ")
        .replace("[worlds]\n", "[worlds]\ncount = 5\n");
    let h = Harness::start(&config, &[]);
    h.wait_ready(&["renderer", "grab", "world/main-5"]);
    let (line, _) = saved_frame(t.path(), "with four worlds", |v| {
        v["header"]["worlds"]
            .as_array()
            .is_some_and(|w| w.len() >= 4)
    });
    let names: Vec<&str> = line["header"]["worlds"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|w| w["world"].as_str())
        .collect();
    assert_eq!(names, ["main", "main-2", "main-3", "main-4"]);
    // Frames keep coming from the same renderer: the header fits.
    assert_eq!(h.node("renderer").incarnation, 1);
}
