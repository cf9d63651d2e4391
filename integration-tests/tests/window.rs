//! The window driver and the renderer presenting into its window, on a private Xvfb with
//! lavapipe: screenshots of the window (`import -window ID`, as a user would take them) are
//! checked pixel by pixel against the world's scene at the tick the renderer says it
//! presented. The world ticks slowly (4 Hz) so that a screenshot taken between two reads of
//! `renderer/presented` that name the same tick shows that tick.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use syncra_integration_tests::picture::{Check, Xvfb, check, scene_at};
use syncra_integration_tests::{Harness, Options, PATIENCE, send, workspace_bin};
use syncra_protocol::NodeState;
use syncra_protocol::world::{DEFAULT_SEED, WorldSettings};

const PEER: &str = env!("CARGO_BIN_EXE_syncra-test-peer");
const ENTITIES: u32 = 24;
const TICK_HZ: f64 = 4.0;

fn main_world() -> WorldSettings {
    WorldSettings {
        entities: ENTITIES,
        seed: DEFAULT_SEED,
        tick_hz: TICK_HZ,
        ..WorldSettings::new("main")
    }
}

/// A runtime with a window, a renderer and the world `main`; `renderer` and `window` are
/// extra settings of each.
fn config(window: &str, renderer: &str, extra: &str) -> String {
    format!(
        "[runtime]\nwatch_interval_ms = 500\n[supervisor]\nintensity = 100\n\
         [drivers.window]\ncommand = \"{}\"\nsettings = {{ width = 640, height = 360{window} }}\n\
         [drivers.renderer]\ncommand = \"{}\"\nsettings = {{ rate_hz = 30.0{renderer} }}\n{extra}\n\
         [worlds]\nentities = {ENTITIES}\ntick_hz = {TICK_HZ}\n",
        workspace_bin("syncra-window").display(),
        workspace_bin("syncra-renderer").display(),
    )
}

fn start(x: &Xvfb, config: &str) -> Harness {
    let h = Harness::start_with(
        config,
        &[],
        Options {
            env: vec![("DISPLAY".into(), x.display.clone())],
            ..Options::default()
        },
    );
    h.wait_ready(&["window", "renderer", "world/main"]);
    h
}

fn tap(h: &Harness, stream: &str) -> Option<Value> {
    h.tap(stream)
}

/// Wait until `stream`'s newest message satisfies `f`; that message.
fn wait_tap(h: &Harness, stream: &str, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let t = tap(h, stream);
        if let Some(t) = t.as_ref().filter(|t| f(t)) {
            return t.clone();
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting until {what}; last: {t:?}"
        );
    }
}

/// The window's X11 id and generation, from `window/identity`.
fn identity(h: &Harness) -> (u64, u64) {
    let t = wait_tap(h, "window/identity", "the window has an identity", |t| {
        t["value"]["x11_window"].as_u64().is_some_and(|id| id != 0)
    });
    (
        t["value"]["x11_window"].as_u64().unwrap(),
        t["value"]["generation"].as_u64().unwrap(),
    )
}

/// Screenshot window `id` until one is taken between two presented frames of the same tick
/// (and size), then check it against the scene at that tick. `newer_than`: only frames
/// presented by this renderer incarnation or later count. Returns the check and the frame.
fn shows_the_world(
    x: &Xvfb,
    h: &Harness,
    id: u64,
    newer_than: (u64, u64),
    stream: &str,
) -> (Check, Value) {
    let deadline = Instant::now() + PATIENCE;
    let fresh = |t: &Value| {
        let inc = t["producer_incarnation"].as_u64().unwrap_or(0);
        let seq = t["seq"].as_u64().unwrap_or(0);
        (inc, seq) > newer_than
    };
    let mut last = String::new();
    loop {
        assert!(
            Instant::now() < deadline,
            "no screenshot of window {id} showed the world: {last}"
        );
        let Some(before) = tap(h, stream).filter(|t| fresh(t)) else {
            continue;
        };
        let shot = match x.screenshot(id) {
            Ok(p) => p,
            Err(e) => {
                last = e;
                continue;
            }
        };
        let Some(after) = tap(h, stream) else {
            continue;
        };
        let tick = |t: &Value| t["value"]["worlds"][0]["tick"].as_u64();
        let size = |t: &Value| (t["value"]["width"].as_u64(), t["value"]["height"].as_u64());
        if tick(&before) != tick(&after)
            || size(&before) != (Some(shot.width.into()), Some(shot.height.into()))
        {
            last = format!("the world moved on during the screenshot ({before} / {after})");
            continue;
        }
        let c = check(&shot, &scene_at(&main_world(), tick(&before).unwrap_or(0)));
        if c.passed((ENTITIES / 2) as usize) {
            return (c, after);
        }
        last = format!("tick {:?}: {c:#?}", tick(&before));
    }
}

#[test]
fn the_window_shows_the_world_and_keeps_its_id_through_a_renderer_kill() {
    let x = Xvfb::start();
    let h = start(&x, &config("", ", target = \"window\"", ""));
    let (id, generation) = identity(&h);
    let (_, frame) = shows_the_world(&x, &h, id, (0, 0), "renderer/presented");
    let window_pid = h.node("window").pid;
    let info = h.cli(&["call", "renderer", "syncra.renderer.get-info/1"]);
    let info: Value = serde_json::from_slice(&info.stdout).expect("info JSON");
    assert_eq!(
        (info["target"].as_str(), info["window"].as_u64()),
        (Some("window"), Some(id)),
        "{info}"
    );
    assert!(
        info["present_mode"].as_str().is_some_and(|m| !m.is_empty()),
        "{info}"
    );

    send(h.node("renderer").pid.expect("a pid"), libc::SIGKILL);
    let seen = (frame["producer_incarnation"].as_u64().unwrap(), u64::MAX);
    let (_, after) = shows_the_world(&x, &h, id, seen, "renderer/presented");
    assert_eq!(
        after["producer_incarnation"], 2,
        "drawn by the new renderer: {after}"
    );
    assert_eq!(identity(&h), (id, generation), "the same window");
    assert_eq!(h.node("window").pid, window_pid, "the same window process");
    assert_eq!(
        h.node("world/main").incarnation,
        1,
        "the world was not restarted"
    );
}

#[test]
fn a_killed_window_driver_comes_back_as_a_new_window_the_same_renderer_draws() {
    let x = Xvfb::start();
    let h = start(&x, &config("", ", target = \"window\"", ""));
    let (_, generation) = identity(&h);
    let renderer_pid = h.node("renderer").pid;
    send(h.node("window").pid.expect("a pid"), libc::SIGKILL);
    h.wait_ready_incarnation("window", 2);
    let t = wait_tap(&h, "window/identity", "a new window", |t| {
        t["value"]["generation"]
            .as_u64()
            .is_some_and(|g| g != generation)
    });
    let id = t["value"]["x11_window"].as_u64().unwrap();
    let now = tap(&h, "renderer/presented").expect("frames");
    let seen = (1, now["seq"].as_u64().unwrap());
    let (_, after) = shows_the_world(&x, &h, id, seen, "renderer/presented");
    assert_eq!(
        after["producer_incarnation"], 1,
        "the same renderer: {after}"
    );
    assert_eq!(h.node("renderer").pid, renderer_pid);
    assert_eq!(
        h.node("world/main").incarnation,
        1,
        "the world was not restarted"
    );
}

#[test]
fn a_resized_window_is_drawn_all_over() {
    let x = Xvfb::start();
    let h = start(&x, &config("", ", target = \"window\"", ""));
    let (id, _) = identity(&h);
    x.xdotool(&["windowsize", &id.to_string(), "900", "500"])
        .expect("resize");
    let t = wait_tap(&h, "renderer/presented", "frames of the new size", |t| {
        (t["value"]["width"].as_u64(), t["value"]["height"].as_u64()) == (Some(900), Some(500))
    });
    let (c, _) = shows_the_world(
        &x,
        &h,
        id,
        (0, t["seq"].as_u64().unwrap()),
        "renderer/presented",
    );
    // The background check covers the whole new area on a grid.
    assert!(c.background > 400, "{c:?}");
    let t = tap(&h, "window/identity").expect("identity");
    assert_eq!(
        (t["value"]["width"].as_u64(), t["value"]["height"].as_u64()),
        (Some(900), Some(500))
    );
}

#[test]
fn frames_mode_shows_the_same_picture_copied_by_the_window() {
    let x = Xvfb::start();
    let dir = tempfile::tempdir().unwrap();
    // The window shows renderer/frame itself, which the renderer (target = "window", as on the
    // desktop) draws at the window's size once it sees the window is in frames mode; a peer
    // grabs the same frames' headers.
    let grab = format!(
        "[drivers.grab]\ncommand = \"{PEER}\"\nargs = [\"frame-grab\", \"stream=renderer/frame\", \"out={}\", \"dir={}\", \"save_every=1000000\"]\n",
        dir.path().join("grab.jsonl").display(),
        dir.path().display()
    );
    let h = start(
        &x,
        &config(", present = \"frames\"", ", target = \"window\"", &grab),
    );
    let (id, _) = identity(&h);
    let t = tap(&h, "window/identity").expect("identity");
    assert_eq!(t["value"]["present"], "frames");
    let deadline = Instant::now() + PATIENCE;
    let last_tick = |p: &Path| -> Option<u64> {
        let text = std::fs::read_to_string(p).ok()?;
        let line: Value = serde_json::from_str(text.lines().last()?).ok()?;
        line["header"]["worlds"][0]["tick"].as_u64()
    };
    let grabbed = dir.path().join("grab.jsonl");
    loop {
        let before = last_tick(&grabbed);
        let shot = x.screenshot(id).expect("screenshot");
        let after = last_tick(&grabbed);
        if let (Some(b), Some(a)) = (before, after)
            && a == b
        {
            let c = check(&shot, &scene_at(&main_world(), b));
            if c.passed((ENTITIES / 2) as usize) {
                break;
            }
            assert!(Instant::now() < deadline, "tick {b}: {c:#?}");
            continue;
        }
        assert!(
            Instant::now() < deadline,
            "no frames shown: {before:?} {after:?}"
        );
    }
    let shown = h
        .node("window")
        .figures
        .iter()
        .find(|f| f.name == "frames_shown")
        .cloned();
    assert!(
        shown.is_some_and(|f| f.value > 0.0),
        "{:?}",
        h.node("window").figures
    );
}

#[test]
fn closing_the_window_stops_the_runtime_in_order() {
    use x11rb::connection::Connection;
    use x11rb::protocol::xproto::{ClientMessageEvent, ConnectionExt, EventMask};
    let x = Xvfb::start();
    let mut h = start(&x, &config("", ", target = \"window\"", ""));
    let (id, _) = identity(&h);
    // What a window manager sends when the user clicks the close button.
    let (conn, _) = x11rb::connect(Some(&x.display)).expect("X connection");
    let atom = |name: &[u8]| conn.intern_atom(false, name).unwrap().reply().unwrap().atom;
    let (protocols, delete) = (atom(b"WM_PROTOCOLS"), atom(b"WM_DELETE_WINDOW"));
    let event = ClientMessageEvent::new(32, id as u32, protocols, [delete, 0, 0, 0, 0]);
    conn.send_event(false, id as u32, EventMask::NO_EVENT, event)
        .unwrap();
    conn.flush().unwrap();
    let status = h.wait_exit(PATIENCE);
    assert_eq!(
        status.code(),
        Some(0),
        "a user quitting is a clean exit:\n{}",
        h.output()
    );
    assert!(
        h.output().contains("the window was closed"),
        "{}",
        h.output()
    );
    h.wait_no_processes_left(Duration::from_secs(10));
}

#[test]
fn without_a_display_the_window_driver_fails_once_saying_how_to_run_headless() {
    let h = Harness::start(
        &config("", "", "").replace(
            "[drivers.renderer]",
            "[drivers.window.env]\nDISPLAY = \"\"\nWAYLAND_DISPLAY = \"\"\n[drivers.renderer]",
        ),
        &[],
    );
    let failed = h.wait_state("window", NodeState::Failed);
    assert_eq!(
        failed.restarts, 0,
        "a missing display is not retried: {failed:?}"
    );
    let detail = failed.detail.unwrap_or_default();
    assert!(
        detail.contains("no display") && detail.contains("run-server") && detail.contains("Xvfb"),
        "{detail}"
    );
    // The rest runs.
    h.wait_ready(&["renderer", "world/main"]);
}

#[test]
fn keys_and_clicks_in_the_window_come_out_on_window_events() {
    let x = Xvfb::start();
    let h = start(&x, &config("", ", target = \"window\"", ""));
    let (id, _) = identity(&h);
    let id = id.to_string();
    // Real input through the X server, as a user's (xdotool's synthetic events are ignored).
    x.xdotool(&["windowfocus", "--sync", &id]).expect("focus");
    x.xdotool(&["key", "a"]).expect("a key");
    let key = wait_tap(&h, "window/events", "the key's release", |t| {
        t["value"]["Key"]["code"] == "KeyA" && t["value"]["Key"]["pressed"] == false
    });
    assert_eq!(key["value"]["Key"]["key"], "a", "{key}");
    x.xdotool(&["mousemove", "--window", &id, "100", "50", "click", "1"])
        .expect("a click");
    wait_tap(&h, "window/events", "the button's release", |t| {
        t["value"]["MouseButton"]["button"] == "left"
            && t["value"]["MouseButton"]["pressed"] == false
    });
}
