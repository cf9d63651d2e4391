//! The audio driver under a real runtime, mixing with kira on its real-time-paced null output
//! (these machines have no sound card; each test hides any the machine has, so the fallback is
//! what is tested everywhere). Sounds are asked for the way a world asks, by message; what the
//! driver mixes is read back from its own streams — `audio/samples` by a test peer that
//! measures each channel, `audio/fft` by `syncra tap` — and compared with what the sound
//! files hold: a 440 Hz tone of amplitude 0.5 must peak in the 440 Hz bin and have an RMS of
//! 0.5/√2.

use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use syncra_integration_tests::{Harness, PATIENCE, jsonl, send, workspace_bin};
use syncra_protocol::NodeState;
use syncra_protocol::audio::{SetListener, Spectrum};

const PEER: &str = env!("CARGO_BIN_EXE_syncra-test-peer");

/// The sound assets the project ships.
fn assets() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/sounds")
}

/// A runtime with the audio driver (`settings` added to its table), a peer summarising
/// `audio/samples` into `grab.jsonl`, and `extra` config.
fn config(dir: &Path, settings: &str, extra: &str) -> String {
    let empty = dir.join("no-sound-card.conf");
    std::fs::write(&empty, "").unwrap();
    format!(
        "[runtime]\nwatch_interval_ms = 500\n[supervisor]\nintensity = 100\n\
         [drivers.audio]\ncommand = \"{audio}\"\n\
         env = {{ ALSA_CONFIG_PATH = \"{empty}\" }}\n\
         settings = {{ assets = \"{assets}\"{settings} }}\n\
         [drivers.grab]\ncommand = \"{PEER}\"\n\
         args = [\"audio-grab\", \"stream=audio/samples\", \"out={out}\", \"window=4800\"]\n\
         {extra}\n[worlds]\nentities = 4\n",
        audio = workspace_bin("syncra-audio").display(),
        empty = empty.display(),
        assets = assets().display(),
        out = dir.join("grab.jsonl").display(),
    )
}

fn call(h: &Harness, tag: &str, body: Value) -> Result<Value, String> {
    let out = h.cli(&["call", "audio", tag, &body.to_string()]);
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).unwrap_or(Value::Null))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn play(h: &Harness, body: Value) -> Value {
    call(h, "syncra.audio.play/1", body.clone())
        .unwrap_or_else(|e| panic!("playing {body} was refused: {e}"))
}

/// Wait for a window of the mix (a `grab.jsonl` line) that `pick` accepts.
fn window_where(h: &Harness, dir: &Path, what: &str, pick: impl Fn(&Value) -> bool) -> Value {
    let _ = h;
    let path = dir.join("grab.jsonl");
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let lines = jsonl(&path);
        if let Some(e) = lines.iter().find(|v| v.get("error").is_some()) {
            panic!("the audio grabber failed: {e}");
        }
        if let Some(v) = lines.iter().rev().find(|v| pick(v)) {
            return v.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no window of the mix shows {what}; the last of {}:\n{}",
            lines.len(),
            lines
                .iter()
                .rev()
                .take(4)
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn spectrum(h: &Harness) -> Option<Spectrum> {
    h.tap("audio/fft")
        .and_then(|v| serde_json::from_value(v["value"].clone()).ok())
}

/// Wait for a spectrum `pick` accepts.
fn spectrum_where(h: &Harness, what: &str, pick: impl Fn(&Spectrum) -> bool) -> Spectrum {
    h.wait_until(what, PATIENCE, |_| spectrum(h).filter(|s| pick(s)))
}

fn info(h: &Harness) -> Value {
    call(h, "syncra.audio.get-info/1", Value::Null).expect("get-info answers")
}

fn f(v: &Value, k: &str) -> f64 {
    v[k].as_f64().unwrap_or(f64::NAN)
}

#[test]
fn a_440_hz_tone_peaks_in_its_bin_at_its_level_on_the_null_output_said_in_status() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(&config(dir.path(), "", ""), &[]);
    let audio = h.wait_ready(&["audio", "grab"])[0].clone();
    // No sound card: the null output, and status says so and why.
    let note = audio.note.clone().unwrap_or_default();
    assert!(
        note.starts_with("output: null") && note.contains("no audio device"),
        "{note}"
    );
    let i = info(&h);
    assert_eq!(i["output"], "null");
    assert!(
        i["assets"].as_array().unwrap().contains(&json!("tone-440")),
        "{i}"
    );
    let out = h.cli(&["status"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("output: null"));

    let playing = play(&h, json!({ "id": 1, "sound": "tone-440", "looping": true }));
    assert_eq!(playing["duration_s"], 1.0, "{playing}");
    let at = playing["at_frame"].as_u64().unwrap();
    let s = spectrum_where(&h, "the tone in the spectrum", |s| {
        s.at_frame > at + u64::from(s.size) && s.peak().is_some_and(|(_, m)| m > 0.1)
    });
    let (bin, magnitude) = s.peak().unwrap();
    assert_eq!(bin, s.bin_of(440.0), "peak at {} Hz", s.frequency(bin));
    // 440 Hz sits a quarter bin off a bin centre: a Hann window reads it a little low.
    assert!((0.42..=0.52).contains(&magnitude), "{magnitude}");
    assert!(s.magnitudes[s.bin_of(1000.0)] < 0.01);
    // The level: a sine of amplitude 0.5 has an RMS of 0.354 on each channel.
    let w = window_where(&h, dir.path(), "a window of the tone", |v| {
        v["first_frame"].as_u64().is_some_and(|f| f > at + 4800)
    });
    for ch in ["rms_l", "rms_r"] {
        assert!((f(&w, ch) - 0.3536).abs() < 0.01, "{ch}: {w}");
    }
    assert!((f(&w, "peak") - 0.5).abs() < 0.01, "{w}");
    // Stopped with a fade, it goes silent.
    let stopped = call(
        &h,
        "syncra.audio.stop/1",
        json!({ "id": 1, "fade_out_ms": 50 }),
    )
    .unwrap();
    assert_eq!(stopped["was_playing"], true);
    let after = info(&h)["frames"].as_u64().unwrap();
    window_where(&h, dir.path(), "silence after stop", |v| {
        v["first_frame"].as_u64().is_some_and(|f| f > after + 4800) && f(v, "peak") == 0.0
    });
    // Real time: the mix advances at its sample rate, with no deadline missed at rest.
    let (f0, t0) = (
        info(&h)["frames"].as_u64().unwrap(),
        std::time::Instant::now(),
    );
    let f1 = h.wait_until("a second of mixing", PATIENCE, |_| {
        let f1 = info(&h)["frames"].as_u64().unwrap();
        (f1 >= f0 + 48_000).then_some(f1)
    });
    let rate = (f1 - f0) as f64 / t0.elapsed().as_secs_f64();
    assert!((30_000.0..=50_000.0).contains(&rate), "{rate} frames/s");
}

#[test]
fn panned_hard_left_is_on_the_left_and_an_emitter_to_the_right_is_heard_on_the_right() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(&config(dir.path(), "", ""), &[]);
    h.wait_ready(&["audio", "grab"]);
    let at = play(
        &h,
        json!({ "id": 1, "sound": "tone-440", "looping": true, "pan": -1.0 }),
    )["at_frame"]
        .as_u64()
        .unwrap();
    let w = window_where(&h, dir.path(), "a window of the panned tone", |v| {
        v["first_frame"].as_u64().is_some_and(|f| f > at + 4800)
    });
    assert!(f(&w, "rms_l") > 0.3, "{w}");
    assert!(f(&w, "rms_r") < 0.01, "{w}");
    call(&h, "syncra.audio.stop/1", json!({ "id": 1 })).unwrap();

    // Spatial: a listener at z = 10 looking at the origin has +X on its right; an emitter
    // 5 m to its right is louder in the right ear, and one 5 m to its left in the left.
    let l = SetListener::looking_at([0.0, 0.0, 10.0], [0.0, 0.0, 0.0]);
    call(
        &h,
        "syncra.audio.set-listener/1",
        serde_json::to_value(l).unwrap(),
    )
    .unwrap();
    let mut heard = Vec::new();
    for (id, x) in [(2, 5.0), (3, -5.0)] {
        let at = play(
            &h,
            json!({ "id": id, "sound": "tone-440", "looping": true,
                    "emitter": { "position": [x, 0.0, 10.0] } }),
        )["at_frame"]
            .as_u64()
            .unwrap();
        let w = window_where(&h, dir.path(), "a window of the spatial tone", |v| {
            v["first_frame"].as_u64().is_some_and(|f| f > at + 4800)
        });
        call(&h, "syncra.audio.stop/1", json!({ "id": id })).unwrap();
        heard.push((f(&w, "rms_l"), f(&w, "rms_r")));
    }
    let (right, left) = (heard[0], heard[1]);
    assert!(
        right.1 > 2.0 * right.0 && right.1 > 0.05,
        "right: {right:?}"
    );
    assert!(left.0 > 2.0 * left.1 && left.0 > 0.05, "left: {left:?}");
}

#[test]
fn after_kill_9_the_loop_comes_back_at_its_place_and_an_ended_one_shot_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(&config(dir.path(), "", ""), &[]);
    h.wait_ready(&["audio", "grab"]);
    play(
        &h,
        json!({ "id": 1, "sound": "tone-1000", "looping": true }),
    );
    // A one-shot that ends before the crash.
    play(&h, json!({ "id": 2, "sound": "tone-440" }));
    h.wait_until("the one-shot to end", PATIENCE, |_| {
        (info(&h)["playing"] == 1).then_some(())
    });
    let before: Value = h.wait_until("the table with the loop", PATIENCE, |_| {
        h.tap("audio/playing").filter(|v| {
            v["value"]["entries"]
                .as_array()
                .is_some_and(|e| e.len() == 1)
        })
    });
    let pid = h.node("audio").pid.unwrap();
    send(pid, libc::SIGKILL);
    let killed_ns = syncra_protocol::audio::monotonic_ns();
    let back = h.wait_ready_incarnation("audio", 2);
    assert_ne!(back.pid, Some(pid));
    let i = info(&h);
    assert_eq!(i["resumed"], 1, "{i}");
    assert!(
        back.note
            .clone()
            .unwrap_or_default()
            .contains("resumed 1 sounds"),
        "{back:?}"
    );
    // The loop is audible again, from the new incarnation, at full level.
    let w = window_where(&h, dir.path(), "the loop from incarnation 2", |v| {
        // Past its first window, which holds the start and a 20 ms fade-in.
        v["inc"] == 2 && v["first_frame"].as_u64().is_some_and(|f| f >= 4800)
    });
    assert!((f(&w, "rms_l") - 0.3536).abs() < 0.01, "{w}");
    let s = spectrum_where(&h, "the loop in the new spectrum", |s| {
        s.peak().is_some_and(|(_, m)| m > 0.1)
    });
    assert_eq!(s.peak().unwrap().0, s.bin_of(1000.0));
    assert!(
        s.magnitudes[s.bin_of(440.0)] < 0.01,
        "the ended one-shot is not played again"
    );
    // At its place: where the old table said it was, plus the time since, round the loop.
    let entry = |v: &Value| v["value"]["entries"][0].clone();
    let after = h.wait_until("the new incarnation's table", PATIENCE, |_| {
        h.tap("audio/playing").filter(|v| {
            entry(v)["at_mono_ns"]
                .as_u64()
                .is_some_and(|t| t > killed_ns)
        })
    });
    let (e0, e1) = (entry(&before), entry(&after));
    let elapsed =
        (e1["at_mono_ns"].as_u64().unwrap() - e0["at_mono_ns"].as_u64().unwrap()) as f64 / 1e9;
    let expected = (f(&e0, "position_s") + elapsed) % 1.0;
    let got = f(&e1, "position_s");
    let off = (got - expected).abs().min(1.0 - (got - expected).abs());
    assert!(off < 0.1, "at {got} s, expected {expected} s");
}

#[test]
fn bad_requests_are_refused_with_what_is_wrong_and_the_driver_plays_on() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(&config(dir.path(), "", ""), &[]);
    h.wait_ready(&["audio"]);
    let e = call(
        &h,
        "syncra.audio.play/1",
        json!({ "id": 1, "sound": "tone-44" }),
    )
    .unwrap_err();
    assert!(
        e.contains("no sound `tone-44`") && e.contains("tone-440"),
        "{e}"
    );
    for (body, needle) in [
        (
            json!({ "id": 1, "sound": "tone-440", "pan": 3.0 }),
            "pan = 3",
        ),
        (
            json!({ "id": 1, "sound": "tone-440", "pitch": 0.0 }),
            "pitch = 0",
        ),
        (
            json!({ "id": 1, "sound": "tone-440", "volume_db": 90.0 }),
            "volume_db = 90",
        ),
        (
            json!({ "id": 1, "sound": "tone-440", "loud": true }),
            "loud",
        ),
    ] {
        let e = call(&h, "syncra.audio.play/1", body.clone()).unwrap_err();
        assert!(e.contains(needle), "{body}: {e}");
    }
    let e = call(
        &h,
        "syncra.audio.set-listener/1",
        json!({ "position": [0.0, 0.0, 0.0], "orientation": [0.0, 0.0, 0.0, 0.0] }),
    )
    .unwrap_err();
    assert!(e.contains("not a rotation"), "{e}");
    assert_eq!(h.node("audio").state, NodeState::Ready);
    play(&h, json!({ "id": 1, "sound": "tone-440" }));
}

#[test]
fn settings_out_of_range_and_a_missing_device_are_permanent_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "[drivers.strict]\ncommand = \"{audio}\"\nenv = {{ ALSA_CONFIG_PATH = \"{empty}\" }}\n\
         settings = {{ assets = \"{assets}\", output = \"device\" }}\n\
         [drivers.odd]\ncommand = \"{audio}\"\nsettings = {{ output = \"null\", fft_size = 3 }}\n",
        audio = workspace_bin("syncra-audio").display(),
        empty = dir.path().join("no-sound-card.conf").display(),
        assets = assets().display(),
    );
    let h = Harness::start(&config(dir.path(), "", &extra), &[]);
    for (node, needle) in [
        ("strict", "no audio device"),
        ("odd", "settings.fft_size = 3"),
    ] {
        let v = h.wait_state(node, NodeState::Failed);
        let said = format!("{:?} {:?}", v.detail, v.last_exit);
        assert!(said.contains(needle), "{node}: {said}");
        assert_eq!(
            v.restarts, 0,
            "{node} is not restarted into the same failure"
        );
    }
    // The others are untouched.
    assert_eq!(h.node("audio").state, NodeState::Ready);
}

/// The height of the bar strip's bar in band `i` on a frame: the rows of bar colour in its
/// middle column, counted up from the bottom.
fn bar_height(pixels: &[u8], width: u32, height: u32, i: usize) -> u32 {
    use syncra_protocol::render::{SPECTRUM_RGB, spectrum_bar};
    let (x0, x1, _, _) = spectrum_bar(i, width, height, 1.0);
    let x = (x0 + x1) / 2;
    let want = SPECTRUM_RGB.map(|c| (c * 255.0).round() as i32);
    (0..height)
        .rev()
        .take_while(|y| {
            let p = ((y * width + x) * 4) as usize;
            (0..3).all(|c| (i32::from(pixels[p + c]) - want[c]).abs() <= 2)
        })
        .count() as u32
}

#[test]
fn the_renderer_draws_the_spectrum_of_the_mix_as_a_bar_strip() {
    use syncra_protocol::render::{SPECTRUM_BANDS, SPECTRUM_LOW_HZ, spectrum_bar, spectrum_level};
    let dir = tempfile::tempdir().unwrap();
    let (width, height) = (640u32, 360u32);
    let extra = format!(
        "[drivers.renderer]\ncommand = \"{renderer}\"\n\
         settings = {{ worlds = [\"main\"], width = {width}, height = {height}, rate_hz = 30.0 }}\n\
         [drivers.frames]\ncommand = \"{PEER}\"\n\
         args = [\"frame-grab\", \"stream=renderer/frame\", \"out={out}\", \"dir={dir}\", \"save_every=3\"]\n",
        renderer = workspace_bin("syncra-renderer").display(),
        out = dir.path().join("frames.jsonl").display(),
        dir = dir.path().display(),
    );
    let h = Harness::start(&config(dir.path(), "", &extra), &[]);
    h.wait_ready(&["audio", "renderer", "frames"]);
    play(&h, json!({ "id": 1, "sound": "tone-440", "looping": true }));
    let s = spectrum_where(&h, "the tone in the spectrum", |s| {
        s.peak().is_some_and(|(_, m)| m > 0.4)
    });
    let bands = s.bands(SPECTRUM_BANDS, SPECTRUM_LOW_HZ);
    let loudest = (0..SPECTRUM_BANDS)
        .max_by(|a, b| bands[*a].total_cmp(&bands[*b]))
        .unwrap();
    // The tone's band in a frame drawn after that spectrum: as tall as its level says.
    let since = h.wait_until("a frame", PATIENCE, |_| {
        jsonl(&dir.path().join("frames.jsonl"))
            .last()
            .and_then(|v| v["seq"].as_u64())
    });
    let (_, _, top, bottom) = spectrum_bar(loudest, width, height, spectrum_level(bands[loudest]));
    let expected = bottom - top;
    let pixels = h.wait_until("a frame with the tone's bar", PATIENCE, |_| {
        let lines = jsonl(&dir.path().join("frames.jsonl"));
        lines
            .iter()
            .rev()
            .filter(|v| v["seq"].as_u64().is_some_and(|q| q > since + 3))
            .filter_map(|v| std::fs::read(v["saved"].as_str()?).ok())
            .next()
    });
    let heights: Vec<u32> = (0..SPECTRUM_BANDS)
        .map(|i| bar_height(&pixels, width, height, i))
        .collect();
    let drawn_loudest = (0..SPECTRUM_BANDS).max_by_key(|i| heights[*i]).unwrap();
    assert_eq!(drawn_loudest, loudest, "bar heights {heights:?}");
    assert!(
        heights[loudest].abs_diff(expected) <= 3,
        "the tone's bar is {} px, its level says {expected}: {heights:?}",
        heights[loudest]
    );
    // Bands far from the tone are low: a pure tone, not noise.
    assert!(heights[SPECTRUM_BANDS - 1] < expected / 3, "{heights:?}");
}

#[test]
fn a_world_that_resumes_after_a_crash_leaves_its_sounds_playing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let h = Harness::start(
        &(config(d, "", "") + "settings = { ambience = \"tone-440\" }\n"),
        &[],
    );
    let views = h.wait_ready(&["audio", "grab", "world/main"]);
    // The ambience, heard, then a second later past its half-second fade-in: steady.
    window_where(&h, d, "the ambience", |v| {
        v["rms_l"].as_f64().is_some_and(|r| r > 0.01)
    });
    let heard = jsonl(&d.join("grab.jsonl")).len();
    let lines = h.wait_until("a second of the ambience", PATIENCE, |_| {
        let lines = jsonl(&d.join("grab.jsonl"));
        (lines.len() >= heard + 10).then_some(lines)
    });
    let steady = f(lines.last().unwrap(), "rms_l");
    assert!(steady > 0.01, "{steady}");
    let seen = jsonl(&d.join("grab.jsonl")).len();
    send(views[2].pid.unwrap(), libc::SIGKILL);
    let again = h.wait_ready_incarnation("world/main", 2);
    assert!(
        again
            .note
            .as_deref()
            .is_some_and(|n| n.starts_with("resumed at tick")),
        "{again:?}"
    );
    // Two seconds of the mix after the crash: the ambience never stopped nor faded in again
    // (asked again, it would restart with its half-second fade).
    let after = h.wait_until("two more seconds of the mix", PATIENCE, |_| {
        let lines = jsonl(&d.join("grab.jsonl"));
        (lines.len() >= seen + 20).then_some(lines)
    });
    for w in &after[seen..] {
        assert!(
            f(w, "rms_l") > steady * 0.9,
            "a dip in the ambience: {w} (steady {steady})"
        );
    }
    let audio = h.node("audio");
    assert_eq!(audio.incarnation, 1);
    let playing = audio
        .figures
        .iter()
        .find(|f| f.name == "playing")
        .map(|f| f.value);
    assert_eq!(
        playing,
        Some(1.0),
        "one voice: the ambience, never asked for twice"
    );
}
