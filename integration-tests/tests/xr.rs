//! The XR driver end to end against the simulated headset (`integration-tests/simxr`): a real
//! OpenXR loader loads it through `XR_RUNTIME_JSON`, the XR driver runs a Vulkan session on it
//! (lavapipe), the renderer draws both eyes from the poses it publishes, the driver submits
//! them into the headset's swapchain, and the headset keeps what it was given so the test can
//! look at the pixels. Its controller's trigger reaches a world as `jump`.

use std::path::Path;
use std::time::Duration;

use syncra_integration_tests::{
    Harness, Options, PATIENCE, jsonl, send, simxr_library, workspace_bin,
};
use syncra_protocol::NodeState;
use syncra_protocol::render::AMBIENT;
use syncra_protocol::xr::{EyeView, Fov, Placement, Pose, project};
use syncra_simxr::control::{CapturedView, Script, SimDir};

const PEER: &str = env!("CARGO_BIN_EXE_syncra-test-peer");

/// Where the tests put the arena: larger than the default table top, so that one cube is
/// several pixels across in a small eye image, its floor (where the player stands, −50 m)
/// at 1 m, 1.5 m ahead.
const PLACEMENT: Placement = Placement {
    origin: [0.0, 3.5, -1.5],
    scale: 0.05,
};

/// The headset's control directory, its script (30 Hz and small eyes: several of these
/// tests run at once on two cores) and its manifest.
fn headset(dir: &Path) -> SimDir {
    let sim = SimDir::new(dir.join("headset")).expect("headset dir");
    sim.write_script(&Script {
        rate_hz: 30.0,
        eye_width: 192,
        eye_height: 192,
        ..Script::default()
    })
    .expect("script");
    sim.manifest(&simxr_library()).expect("manifest");
    sim
}

/// A runtime with the XR driver on `sim` (its `XR_RUNTIME_JSON`), a renderer drawing
/// offscreen (and for the headset), the input driver, an action log, and one world with a
/// player and no other entity.
fn config(dir: &Path, runtime_json: &Path, sim: &Path) -> String {
    format!(
        "[runtime]\nwatch_interval_ms = 500\n[supervisor]\nintensity = 100\n\
         [drivers.xr]\ncommand = \"{xr}\"\n\
         settings = {{ retry_ms = 100, placement = {{ origin = {origin:?}, scale = {scale} }} }}\n\
         env = {{ XR_RUNTIME_JSON = \"{json}\", SYNCRA_SIMXR_DIR = \"{sim}\" }}\n\
         [drivers.renderer]\ncommand = \"{renderer}\"\n\
         settings = {{ width = 160, height = 90, rate_hz = 5.0, spectrum = \"\" }}\n\
         [drivers.input]\ncommand = \"{input}\"\nsettings = {{ gamepads = \"none\" }}\n\
         [drivers.log]\ncommand = \"{PEER}\"\nargs = [\"action-log\", \"out={out}\"]\n\
         [worlds]\nentities = 0\nsettings = {{ player = true }}\n",
        xr = workspace_bin("syncra-xr").display(),
        renderer = workspace_bin("syncra-renderer").display(),
        input = workspace_bin("syncra-input").display(),
        json = runtime_json.display(),
        sim = sim.display(),
        origin = PLACEMENT.origin,
        scale = PLACEMENT.scale,
        out = dir.join("actions.jsonl").display(),
    )
}

/// Start a runtime with the headset plugged in; wait for the session to be focused and eye
/// frames to reach the headset.
fn start() -> (tempfile::TempDir, SimDir, Harness) {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = headset(dir.path());
    let json = sim.path().join("manifest.json");
    let h = Harness::start(&config(dir.path(), &json, sim.path()), &[]);
    h.wait_ready(&["xr", "renderer", "input", "world/main"]);
    h.wait_until("the XR session is focused", PATIENCE, |_| {
        h.node("xr").note.filter(|n| n.contains("session focused"))
    });
    frames_with_eyes(&sim, 10);
    (dir, sim, h)
}

/// Wait until the headset has been given `more` frames with eye images than it has now.
fn frames_with_eyes(sim: &SimDir, more: u64) -> u64 {
    let from = sim.status().map_or(0, |s| s.frames_with_layers);
    wait("the headset to get eye frames", || {
        sim.status()
            .map(|s| s.frames_with_layers)
            .filter(|n| *n >= from + more)
    })
}

fn wait<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        if let Some(t) = f() {
            return t;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The player's position in the world's newest scene.
fn player(h: &Harness) -> Option<[f32; 3]> {
    h.player("main").map(|p| p.map(|v| v as f32))
}

/// The pair the headset was given, side by side, at `target/tmp/xr-eyes.ppm`: to look at.
fn save_pair(views: &[CapturedView]) {
    let (w, h) = (views[0].width, views[0].height);
    let mut ppm = format!("P6\n{} {h}\n255\n", 2 * w).into_bytes();
    for y in 0..h {
        for v in views {
            for x in 0..w {
                ppm.extend_from_slice(&v.pixel(x, y).unwrap_or_default()[..3]);
            }
        }
    }
    let out = workspace_bin("syncra").parent().unwrap().join("../tmp");
    let _ = std::fs::create_dir_all(&out);
    let _ = std::fs::write(out.join("xr-eyes.ppm"), ppm);
}

fn eye_view(v: &CapturedView) -> EyeView {
    EyeView {
        pose: Pose {
            position: v.pose.position,
            orientation: v.pose.orientation,
        },
        fov: Fov {
            left: v.fov.left,
            right: v.fov.right,
            up: v.fov.up,
            down: v.fov.down,
        },
    }
}

/// Whether `px` is the renderer's clear colour (the background).
fn background(px: [u8; 4]) -> bool {
    let clear = syncra_renderer_clear();
    px[..3]
        .iter()
        .zip(clear)
        .all(|(&c, k)| (i32::from(c) - i32::from(k)).abs() <= 2)
}

/// The renderer's clear colour as RGBA8 bytes (`syncra_renderer::CLEAR`, written as is).
fn syncra_renderer_clear() -> [u8; 3] {
    [0.02f64, 0.025, 0.035].map(|c| (c * 255.0).round() as u8)
}

#[test]
fn the_headset_shows_the_world_from_each_eye_and_its_trigger_makes_the_player_jump() {
    let (dir, sim, h) = start();
    // Poses reach the world too (it hears from the head while the session is visible).
    h.wait_until("the world reads the headset's poses", PATIENCE, |_| {
        h.node("world/main")
            .figures
            .iter()
            .find(|f| f.name == "xr_frame" && f.value > 0.0)
            .map(|_| ())
    });

    // What the headset was given: both eyes, each the size it asked for, each showing the
    // player's cube where that eye sees it — a little apart, as two eyes see one thing.
    let at = h.wait_until("the player", PATIENCE, |_| player(&h));
    sim.request_capture().expect("capture request");
    let capture = wait("a capture", || sim.capture());
    assert_eq!(capture.views.len(), 2);
    save_pair(&capture.views);
    let mut seen_at = Vec::new();
    for (i, v) in capture.views.iter().enumerate() {
        assert_eq!((v.width, v.height), (192, 192), "eye {i}'s image size");
        let [x, y, _] = project(&eye_view(v), &PLACEMENT, at, v.width, v.height)
            .unwrap_or_else(|| panic!("the player is not in eye {i}'s view"));
        let px = v.pixel(x as u32, y as u32).unwrap_or_else(|| {
            panic!("the player at {at:?} lands at ({x:.0}, {y:.0}) in eye {i}: off its image")
        });
        // A lit white cube: grey, at least the ambient light.
        let floor = (AMBIENT * 255.0 * 0.9) as u8;
        assert!(
            px[0] >= floor && px[0].abs_diff(px[1]) <= 3 && px[1].abs_diff(px[2]) <= 3,
            "eye {i} at ({x:.0}, {y:.0}) shows {px:?}, not the player's white cube"
        );
        let corner = v.pixel(2, 2).expect("in the image");
        assert!(
            background(corner),
            "eye {i}'s corner is {corner:?}, not the background"
        );
        seen_at.push(x);
    }
    assert!(
        seen_at[0] > seen_at[1] + 1.0,
        "the left eye sees the cube further right than the right eye does: {seen_at:?}"
    );
    assert_ne!(capture.views[0].rgba, capture.views[1].rgba);

    // The right controller's trigger is `jump` (the default action map): the world's player
    // jumps.
    sim.press("/user/hand/right/input/trigger/value", 1.0)
        .expect("press");
    let log = dir.path().join("actions.jsonl");
    wait("jump from the XR controller", || {
        jsonl(&log)
            .into_iter()
            .find(|v| v["action"] == "jump" && v["device"] == "XrController")
    });
    h.wait_until("the player jumping", PATIENCE, |_| {
        player(&h).filter(|p| p[1] > at[1] + 1.0)
    });
    // The world rumbles player 0 on a jump: the input driver passes it to the controllers.
    wait("the jump's rumble at the controllers", || {
        sim.status()?
            .haptics
            .iter()
            .find(|p| (p.amplitude - 0.6).abs() < 1e-6)
            .cloned()
    });
    sim.press("/user/hand/right/input/trigger/value", 0.0)
        .expect("release");
    wait("jump released", || {
        jsonl(&log)
            .into_iter()
            .find(|v| v["action"] == "jump" && v["value"] == "Released")
    });

    // A haptic pulse asked of the driver reaches the right controller.
    let out = h.cli(&[
        "call",
        "xr",
        "syncra.xr.haptic/1",
        r#"{"hand": "right", "amplitude": 0.5, "duration_ms": 80}"#,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait("the pulse at the headset", || {
        sim.status()?
            .haptics
            .iter()
            .find(|p| p.path == "/user/hand/right" && (p.amplitude - 0.5).abs() < 1e-6)
            .cloned()
    });
}

#[test]
fn a_headset_that_goes_away_leaves_the_engine_running_and_xr_comes_back_when_it_returns() {
    let (_dir, sim, h) = start();
    let world = h.node("world/main");
    sim.unplug().expect("unplug");
    h.wait_until("the driver to say the headset went away", PATIENCE, |_| {
        h.node("xr")
            .note
            .filter(|n| n.contains("went away") || n.contains("no headset"))
    });
    // The rest goes on: the world ticks on in its first incarnation, nothing restarted.
    h.wait_until("the world ticking on", PATIENCE, |_| {
        h.node("world/main")
            .tick
            .filter(|t| *t > world.tick.unwrap_or(0) + 30)
    });
    for name in ["xr", "renderer", "world/main"] {
        let n = h.node(name);
        assert_eq!((n.incarnation, n.state), (1, NodeState::Ready), "{name}");
    }
    let sessions = sim.status().map_or(0, |s| s.sessions);
    sim.plug().expect("plug");
    h.wait_until("the session to be back", PATIENCE, |_| {
        h.node("xr").note.filter(|n| n.contains("session focused"))
    });
    frames_with_eyes(&sim, 10);
    assert!(sim.status().expect("status").sessions > sessions);
    assert_eq!(h.node("xr").incarnation, 1, "the driver was not restarted");
    assert_eq!(h.node("world/main").incarnation, 1);
}

#[test]
fn with_no_openxr_runtime_the_driver_says_why_and_is_not_restarted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("no-such-runtime.json");
    let h = Harness::start(&config(dir.path(), &missing, dir.path()), &[]);
    h.wait_ready(&["xr", "renderer", "world/main"]);
    h.wait_until("three looks for a runtime", PATIENCE, |_| {
        h.node("xr")
            .figures
            .iter()
            .find(|f| f.name == "looks" && f.value >= 3.0)
            .map(|_| ())
    });
    let xr = h.node("xr");
    let note = xr.note.unwrap_or_default();
    assert!(note.contains("no OpenXR runtime"), "{note}");
    assert_eq!((xr.incarnation, xr.state), (1, NodeState::Ready));
    assert_eq!(h.node("renderer").incarnation, 1);
}

#[test]
fn a_killed_xr_driver_or_renderer_comes_back_to_a_headset_showing_eye_frames_and_no_world_restarts()
{
    let (_dir, sim, h) = start();
    let xr = h.node("xr");
    send(xr.pid.expect("pid"), libc::SIGKILL);
    let again = h.wait_ready_incarnation("xr", 2);
    // The new incarnation made its own session, and the renderer's eye frames reach it.
    wait("the new incarnation's session", || {
        sim.status()
            .filter(|s| Some(s.pid) == again.pid && s.frames_with_layers >= 10)
    });

    let renderer = h.node("renderer");
    send(renderer.pid.expect("pid"), libc::SIGKILL);
    h.wait_ready_incarnation("renderer", 2);
    let sessions = sim.status().expect("status").sessions;
    frames_with_eyes(&sim, 15);
    let st = sim.status().expect("status");
    assert_eq!(
        (st.pid, st.sessions),
        (again.pid.expect("pid"), sessions),
        "the XR session lived through the renderer's restart"
    );
    assert_eq!(h.node("world/main").incarnation, 1, "no world restarted");
    assert_eq!(h.node("xr").incarnation, 2);
}

#[test]
fn the_xr_drivers_sandbox_lets_it_read_the_runtime_its_manifest_names() {
    // The headset's library and manifest where no grant reaches (the test grants only the
    // binaries and the headset's control directory): the XR driver reads them through its
    // device class `xr`, which follows the runtime's XR_RUNTIME_JSON.
    let dir = tempfile::tempdir().expect("tempdir");
    let elsewhere = dir.path().join("runtime");
    std::fs::create_dir_all(&elsewhere).expect("dir");
    let library = elsewhere.join("libsyncra_simxr.so");
    std::fs::copy(simxr_library(), &library).expect("copy the headset's library");
    let sim = headset(dir.path());
    let manifest = sim.manifest(&library).expect("manifest");
    let json = elsewhere.join("manifest.json");
    std::fs::rename(&manifest, &json).expect("move the manifest");
    let bins = workspace_bin("syncra")
        .parent()
        .unwrap()
        .display()
        .to_string();
    let config = format!(
        "[runtime]\nwatch_interval_ms = 500\n\
         [sandbox]\nread = [{bins:?}]\nwrite = [{sim:?}]\n\
         [drivers.xr]\ncommand = \"{xr}\"\nsettings = {{ retry_ms = 100, renderer = \"\" }}\n\
         env = {{ SYNCRA_SIMXR_DIR = \"{sim}\" }}\n\
         [worlds]\nentities = 0\n",
        sim = sim.path().display(),
        xr = workspace_bin("syncra-xr").display(),
    );
    let h = Harness::start_with(
        &config,
        &[],
        Options {
            env: vec![("XR_RUNTIME_JSON".into(), json.display().to_string())],
            ..Options::default()
        },
    );
    h.wait_ready(&["xr", "world/main"]);
    h.wait_until("the XR session is focused", PATIENCE, |_| {
        h.node("xr").note.filter(|n| n.contains("session focused"))
    });
}

/// CPU time (user + system) of process `pid` so far, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let after = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

#[test]
fn with_openxr_off_the_driver_stays_flat_and_idle() {
    let config = format!(
        "[runtime]\nwatch_interval_ms = 500\n\
         [drivers.xr]\ncommand = \"{}\"\nsettings = {{ openxr = false }}\n\
         [worlds]\nentities = 0\ntick_hz = 60\n",
        workspace_bin("syncra-xr").display()
    );
    let h = Harness::start(&config, &[]);
    let views = h.wait_ready(&["xr", "world/main"]);
    let note = h.node("xr").note.unwrap_or_default();
    assert!(note.contains("OpenXR is off"), "{note}");
    let pid = views[0].pid.expect("pid");
    let before = cpu_ticks(pid);
    let tick = h.node("world/main").tick.unwrap_or(0);
    // A second of the world's ticks: the driver, with nothing to do, used next to no CPU.
    h.wait_until("a second of ticks", PATIENCE, |_| {
        h.node("world/main").tick.filter(|t| *t >= tick + 60)
    });
    let used = cpu_ticks(pid) - before;
    assert!(
        used < 20,
        "the flat XR driver used {used} ticks of CPU in a second"
    );
    assert_eq!(h.node("xr").incarnation, 1);
}
