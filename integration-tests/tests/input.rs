//! The input driver under a real runtime: gamepads from a scripted source behind the same
//! trait as gilrs (no virtual gamepad can be made on these machines), keys typed into a real
//! window on a private Xvfb, both turned into the actions of the action map, and a world
//! whose player moves and jumps with them — and asks for rumble and sounds in return.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use serde_json::{Value, json};
use syncra_integration_tests::picture::Xvfb;
use syncra_integration_tests::{Harness, Options, PATIENCE, jsonl, send, workspace_bin};
use syncra_protocol::NodeState;

const PEER: &str = env!("CARGO_BIN_EXE_syncra-test-peer");

/// The input driver (`gamepads` its gamepad setting), a world with a player, and a peer
/// logging `input/actions` and `input/events` to `actions.jsonl`; `extra` config.
fn config(dir: &Path, gamepads: &str, extra: &str) -> String {
    format!(
        "[runtime]\nwatch_interval_ms = 500\n[supervisor]\nintensity = 100\n\
         [drivers.input]\ncommand = \"{input}\"\nsettings = {{ gamepads = {gamepads} }}\n\
         [drivers.log]\ncommand = \"{PEER}\"\nargs = [\"action-log\", \"out={out}\"]\n\
         {extra}\n\
         [worlds]\nentities = 4\nsettings = {{ player = true }}\n",
        input = workspace_bin("syncra-input").display(),
        out = dir.join("actions.jsonl").display(),
    )
}

fn script(dir: &Path, line: Value) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("pad.jsonl"))
        .unwrap();
    writeln!(f, "{line}").unwrap();
}

/// Wait for a line of `file` that `pick` accepts (after the first `skip` lines).
fn line_where(file: &Path, skip: usize, what: &str, pick: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let lines = jsonl(file);
        if let Some(v) = lines.iter().skip(skip).find(|v| pick(v)) {
            return v.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no line of {} shows {what}; the last:\n{}",
            file.display(),
            lines
                .iter()
                .rev()
                .take(6)
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn player_where(h: &Harness, what: &str, f: impl Fn([f64; 3]) -> bool) -> [f64; 3] {
    h.wait_until(what, PATIENCE, |_| h.player("main").filter(|p| f(*p)))
}

#[test]
fn a_scripted_gamepad_makes_the_mapped_actions_moves_the_player_and_is_rumbled() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("pad.jsonl"), "").unwrap();
    let pads = format!(
        "{{ script = \"{}\", rumble_log = \"{}\" }}",
        d.join("pad.jsonl").display(),
        d.join("rumble.jsonl").display()
    );
    // The audio driver too, on its null output, and a peer measuring its mix.
    let empty = d.join("no-sound-card.conf");
    std::fs::write(&empty, "").unwrap();
    let audio = format!(
        "[drivers.audio]\ncommand = \"{}\"\nenv = {{ ALSA_CONFIG_PATH = \"{}\" }}\n\
         settings = {{ assets = \"{}\", spatial = {{ max_distance = 400.0 }} }}\n\
         [drivers.grab]\ncommand = \"{PEER}\"\n\
         args = [\"audio-grab\", \"stream=audio/samples\", \"out={}\", \"window=2400\"]\n",
        workspace_bin("syncra-audio").display(),
        empty.display(),
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../assets/sounds")
            .display(),
        d.join("grab.jsonl").display(),
    );
    let h = Harness::start(&config(d, &pads, &audio), &[]);
    h.wait_ready(&["input", "log", "world/main", "audio", "grab"]);
    let log = d.join("actions.jsonl");
    let start = player_where(&h, "the player on the floor", |_| true);

    script(
        d,
        json!({ "pad": "pad-a", "event": "connected", "name": "Test Pad" }),
    );
    let c = line_where(&log, 0, "pad-a connected", |v| {
        v["kind"]["Connected"].is_object()
    });
    assert_eq!(c["device"], json!({ "Gamepad": 1 }));
    assert_eq!(c["player"], 0);

    // South is `jump`: the world's player jumps, and the world rumbles the pad back.
    script(
        d,
        json!({ "pad": "pad-a", "event": "button", "button": "South", "pressed": true }),
    );
    let a = line_where(&log, 0, "jump pressed", |v| v["action"] == "jump");
    assert_eq!(a["value"], "Pressed");
    assert_eq!(a["device"], json!({ "Gamepad": 1 }));
    player_where(&h, "the player in the air", |p| p[1] > start[1] + 1.0);
    let rumble = line_where(&d.join("rumble.jsonl"), 0, "a rumble", |_| true);
    assert_eq!(rumble["pad"], "pad-a");
    assert_eq!(rumble["duration_ms"], 120);
    // …and asks the audio driver for the jump's sound where the player took off: heard.
    line_where(
        &d.join("grab.jsonl"),
        0,
        "the jump's sound in the mix",
        |v| v["peak"].as_f64().is_some_and(|p| p > 0.01),
    );
    script(
        d,
        json!({ "pad": "pad-a", "event": "button", "button": "South", "pressed": false }),
    );
    line_where(&log, 0, "jump released", |v| {
        v["action"] == "jump" && v["value"] == "Released"
    });

    // The left stick is `move`: right, and the player runs right.
    script(
        d,
        json!({ "pad": "pad-a", "event": "axis", "axis": "LeftStickX", "value": 1.0 }),
    );
    line_where(&log, 0, "move right", |v| {
        v["action"] == "move" && v["value"]["Axis"]["x"] == 1.0
    });
    player_where(&h, "the player to the right", |p| p[0] > start[0] + 5.0);

    // Unplugged, the stick's move is let go; plugged back, the same id and player.
    let n = jsonl(&log).len();
    script(d, json!({ "pad": "pad-a", "event": "disconnected" }));
    line_where(&log, n, "move let go", |v| {
        v["action"] == "move" && v["value"]["Axis"]["x"] == 0.0
    });
    script(d, json!({ "pad": "pad-b", "event": "connected" }));
    script(d, json!({ "pad": "pad-a", "event": "connected" }));
    let b = line_where(&log, n, "pad-b connected", |v| {
        v["kind"]["Connected"]["uuid"] == "pad-b"
    });
    assert_eq!(
        (b["device"].clone(), b["player"].clone()),
        (json!({ "Gamepad": 2 }), json!(1))
    );
    let a = line_where(&log, n, "pad-a back", |v| {
        v["kind"]["Connected"]["uuid"] == "pad-a"
    });
    assert_eq!(
        (a["device"].clone(), a["player"].clone()),
        (json!({ "Gamepad": 1 }), json!(0))
    );

    // Rumble by player: pad-b is player 1's.
    let out = h.cli(&[
        "call",
        "input",
        "syncra.input.rumble/1",
        r#"{"player": 1, "strong": 1.0, "duration_ms": 50}"#,
    ]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        serde_json::from_slice::<Value>(&out.stdout).unwrap()["pads"],
        1
    );
    line_where(&d.join("rumble.jsonl"), 1, "pad-b rumbled", |v| {
        v["pad"] == "pad-b"
    });
    let out = h.cli(&[
        "call",
        "input",
        "syncra.input.rumble/1",
        r#"{"strong": 2.0, "duration_ms": 50}"#,
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("strong = 2"));

    // kill -9 the driver: the next incarnation knows both pads, by the same ids.
    send(h.node("input").pid.unwrap(), libc::SIGKILL);
    h.wait_ready_incarnation("input", 2);
    let n = jsonl(&log).len();
    script(
        d,
        json!({ "pad": "pad-b", "event": "button", "button": "East", "pressed": true }),
    );
    let e = line_where(&log, n, "pad-b's button after the restart", |v| {
        v["kind"]["Button"]["button"] == "East"
    });
    assert_eq!(
        (e["device"].clone(), e["player"].clone()),
        (json!({ "Gamepad": 2 }), json!(1))
    );
    assert_eq!(
        h.node("world/main").incarnation,
        1,
        "the world never restarted"
    );
}

#[test]
fn keys_typed_into_the_window_travel_to_the_world_and_move_the_player() {
    let x = Xvfb::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let extra = format!(
        "[drivers.window]\ncommand = \"{}\"\nsettings = {{ width = 320, height = 240, present = \"frames\" }}\n",
        workspace_bin("syncra-window").display()
    );
    let h = Harness::start_with(
        &config(d, "\"none\"", &extra),
        &[],
        Options {
            env: vec![("DISPLAY".into(), x.display.clone())],
            ..Options::default()
        },
    );
    h.wait_ready(&["window", "input", "log", "world/main"]);
    let id = h.wait_until("the window's id", PATIENCE, |_| {
        h.tap("window/identity")
            .and_then(|t| t["value"]["x11_window"].as_u64())
            .filter(|id| *id != 0)
    });
    let start = player_where(&h, "the player on the floor", |_| true);
    let log = d.join("actions.jsonl");
    x.xdotool(&["windowfocus", "--sync", &id.to_string()])
        .expect("focus");
    // D held: `move` right, the player runs right until it is let go.
    x.xdotool(&["keydown", "d"]).expect("d down");
    let a = line_where(&log, 0, "move right from the keyboard", |v| {
        v["action"] == "move" && v["value"]["Axis"]["x"] == 1.0
    });
    assert_eq!(a["device"], "Keyboard");
    let key = line_where(&log, 0, "the key event", |v| v["kind"]["Key"].is_object());
    assert_eq!(key["kind"]["Key"]["code"], "KeyD");
    player_where(&h, "the player running right", |p| p[0] > start[0] + 2.0);
    x.xdotool(&["keyup", "d"]).expect("d up");
    line_where(&log, 0, "move let go", |v| {
        v["action"] == "move" && v["value"]["Axis"]["x"] == 0.0
    });
    let stopped = player_where(&h, "the player stopped", |p| p[0] > start[0] + 2.0);
    // Space: `jump`.
    x.xdotool(&["key", "space"]).expect("space");
    line_where(&log, 0, "jump", |v| v["action"] == "jump");
    player_where(&h, "the player jumping", |p| p[1] > stopped[1] + 1.0);
    let now = h.player("main").unwrap();
    assert!(
        (now[0] - stopped[0]).abs() < 0.5,
        "it stopped running: {now:?} {stopped:?}"
    );
}

#[test]
fn a_bad_action_map_or_gamepad_setting_is_named_and_not_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let input = workspace_bin("syncra-input");
    let extra = format!(
        "[drivers.typo]\ncommand = \"{i}\"\nsettings = {{ gamepads = \"none\", actions = {{ fire = [\"Spcae\"] }} }}\n\
         [drivers.axis]\ncommand = \"{i}\"\nsettings = {{ gamepads = \"none\", actions = {{ look = {{ axis = \"Stick\" }} }} }}\n\
         [drivers.pads]\ncommand = \"{i}\"\nsettings = {{ gamepads = \"joystick\" }}\n\
         [drivers.real]\ncommand = \"{i}\"\nsettings = {{ gamepads = \"gilrs\" }}\n",
        i = input.display()
    );
    let h = Harness::start(&config(dir.path(), "\"none\"", &extra), &[]);
    for (node, needle) in [
        ("typo", "settings.actions.fire: `Spcae` is not a key"),
        ("axis", "settings.actions.look: axis `Stick`"),
        ("pads", "settings.gamepads = \"joystick\""),
    ] {
        let v = h.wait_state(node, NodeState::Failed);
        let said = v.detail.clone().unwrap_or_default();
        assert!(said.contains(needle), "{node}: {said}");
        assert_eq!(v.restarts, 0);
    }
    let input = h.wait_ready(&["input"])[0].clone();
    let note = input.note.unwrap_or_default();
    assert!(
        note.contains("gamepads: none") && note.contains("jump, move"),
        "{note}"
    );
}

/// The sequences in a world's log lines "applied an action seq=N", in order.
fn applied(log: &str) -> Vec<u64> {
    log.lines()
        .filter(|l| l.contains("applied an action"))
        .filter_map(|l| {
            l.split("seq=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

#[test]
fn each_input_is_applied_once_across_a_world_crash() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("pad.jsonl"), "").unwrap();
    let pads = format!("{{ script = \"{}\" }}", d.join("pad.jsonl").display());
    // The world's first incarnation dies in the middle of writing the first state after a
    // tick that applied an input: what it had read since its last state is lost with it.
    let world = "env = { SYNCRA_LOG = \"info,syncra_world=debug\", SYNCRA_WORLD_FAULT = \"die-writing-state-after-input:1\" }\n";
    let h = Harness::start(&(config(d, &pads, "") + world), &[]);
    h.wait_ready(&["input", "log", "world/main"]);
    script(d, json!({ "pad": "pad-a", "event": "connected" }));
    // Presses and releases of `jump`, paced like a player's, through the crash and after.
    for i in 0..40 {
        script(
            d,
            json!({ "pad": "pad-a", "event": "button", "button": "South", "pressed": i % 2 == 0 }),
        );
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    let log = d.join("actions.jsonl");
    let published = |_: &Value| true;
    line_where(&log, 0, "the actions", published);
    let deadline = Instant::now() + PATIENCE;
    let (expected, first, second) = loop {
        let expected: Vec<u64> = jsonl(&log)
            .iter()
            .filter(|v| v["k"] == "action")
            .filter_map(|v| v["seq"].as_u64())
            .collect();
        let now = h.node("world/main");
        let crashes = h.crashes(Some("world/main"));
        if now.incarnation >= 2 && !crashes.is_empty() && expected.len() >= 40 {
            let first =
                std::fs::read_to_string(crashes[0].record.log_file.as_deref().unwrap()).unwrap();
            let second = std::fs::read_to_string(now.log_file.as_deref().unwrap()).unwrap();
            if applied(&second).last() == expected.last() {
                break (expected, first, second);
            }
        }
        assert!(
            Instant::now() < deadline,
            "the world never applied every action: {} published, world at {now:?}",
            expected.len()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(
        h.crashes(Some("world/main"))[0].record.signal.as_deref(),
        Some("SIGKILL")
    );
    // Where the second incarnation resumed: its state had applied the inputs up to here.
    let resumed: u64 = second
        .lines()
        .find(|l| l.contains("resumed from its durable state"))
        .and_then(|l| {
            l.split("input_seq=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("not resumed:\n{second}"));
    let (before, lost): (Vec<u64>, Vec<u64>) =
        applied(&first).into_iter().partition(|s| *s <= resumed);
    assert!(
        !lost.is_empty(),
        "the first incarnation died with inputs applied after its state"
    );
    // The history that survived: what the first applied up to its state, then the second.
    let history: Vec<u64> = before.into_iter().chain(applied(&second)).collect();
    assert_eq!(
        history, expected,
        "each input applied once, in order, none lost"
    );
}
