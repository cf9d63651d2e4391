//! (xr) The XR driver against the simulated headset (`integration-tests/simxr`, loaded by the
//! system's OpenXR loader), Vulkan on whatever device the machine has (lavapipe here), the
//! headset at 90 Hz with 320×320 eyes, a world of 256 entities:
//!
//! - (xr a) pose located (xrLocateViews) → the eye pair drawn from it submitted (xrEndFrame),
//!   as the headset times it, beside the renderer's own drawing and readback of the same pair
//!   in one process (`syncra-renderer-bare --eyes`) and the 11.1 ms of a 90 Hz frame;
//! - (xr b) headset frames missed over the run (vsyncs the driver did not wait for in time)
//!   and frames submitted after their display time, beside the same driver with no renderer;
//! - (xr c) XR driver SIGKILL → eye frames submitted again by its next incarnation, beside
//!   SIGKILL → that incarnation ready (the restart alone).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use syncra_integration_tests::{Harness, percentile, send, simxr_library, workspace_bin};
use syncra_protocol::status::EventKind;
use syncra_simxr::control::{Script, SimDir};

use super::{Row, events, ms, until, verdict};

const EYE: u32 = 320;
const RATE_HZ: f64 = 90.0;

fn monotonic_ns() -> i64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec * 1_000_000_000 + t.tv_nsec
}

/// A runtime with the XR driver on a simulated headset in `dir`, a world of 256 entities
/// and, with `renderer`, a renderer drawing for it.
fn start(dir: &Path, renderer: bool) -> (SimDir, Harness) {
    let sim = SimDir::new(dir.join("headset")).expect("headset dir");
    sim.write_script(&Script {
        rate_hz: RATE_HZ,
        eye_width: EYE,
        eye_height: EYE,
        ..Script::default()
    })
    .expect("script");
    let json = sim.manifest(&simxr_library()).expect("manifest");
    let renderer = if renderer {
        format!(
            "[drivers.renderer]\ncommand = \"{}\"\n\
             settings = {{ width = 160, height = 90, rate_hz = 5.0, spectrum = \"\" }}\n",
            workspace_bin("syncra-renderer").display()
        )
    } else {
        String::new()
    };
    let h = Harness::start(
        &super::config(
            1000,
            &format!(
                "[drivers.xr]\ncommand = \"{}\"\nsettings = {{ retry_ms = 50 }}\n\
                 env = {{ XR_RUNTIME_JSON = \"{}\", SYNCRA_SIMXR_DIR = \"{}\" }}\n\
                 {renderer}[worlds]\nentities = 256\n",
                workspace_bin("syncra-xr").display(),
                json.display(),
                sim.path().display(),
            ),
        ),
        &[],
    );
    h.wait_ready(&["xr", "world/main"]);
    h.wait_until("the XR session is focused", Duration::from_secs(30), |_| {
        h.node("xr").note.filter(|n| n.contains("session focused"))
    });
    (sim, h)
}

/// The headset's counters, waiting until it has written them.
fn status(sim: &SimDir) -> syncra_simxr::control::SimStatus {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(s) = sim.status() {
            return s;
        }
        assert!(Instant::now() < deadline, "the headset wrote no status");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Run for `seconds`: the pose → submitted latencies (ms) of the frames that carried eyes,
/// frames ended, missed and late.
fn run_for(sim: &SimDir, seconds: u64) -> (Vec<f64>, u64, u64, u64) {
    let before = status(sim);
    let from = sim.frames().len();
    // A measurement window, not synchronisation: the headset counts what happens in it.
    std::thread::sleep(Duration::from_secs(seconds));
    let after = status(sim);
    let latencies = sim
        .frames()
        .iter()
        .skip(from)
        .filter(|f| f.layers > 0 && f.pose_latency_ns > 0)
        .map(|f| f.pose_latency_ns as f64 / 1e6)
        .collect();
    (
        latencies,
        after.frames_ended - before.frames_ended,
        after.missed - before.missed,
        after.late - before.late,
    )
}

/// Every XR row.
pub(crate) fn all(seconds: u64, kills: usize, rows: &mut Vec<Row>) {
    let budget = 1e3 / RATE_HZ;
    let bare = Command::new(workspace_bin("syncra-renderer-bare"))
        .args([&EYE.to_string(), &EYE.to_string(), "5", "256", "--eyes"])
        .output()
        .expect("syncra-renderer-bare");
    let bare: serde_json::Value = serde_json::from_slice(&bare.stdout).unwrap_or_else(|_| {
        panic!(
            "syncra-renderer-bare failed: {}",
            String::from_utf8_lossy(&bare.stderr)
        )
    });
    let (b50, b99) = (
        bare["frame_ms_p50"].as_f64().unwrap_or(0.0),
        bare["frame_ms_p99"].as_f64().unwrap_or(0.0),
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let (sim, h) = start(dir.path(), true);
    let (mut lat, ended, missed, late) = run_for(&sim, seconds);
    let (l50, l99) = (percentile(&mut lat, 50.0), percentile(&mut lat, 99.0));
    rows.push(Row {
        measure: format!(
            "(xr a) pose located → eye pair drawn from it submitted to the headset, {EYE}×{EYE} eyes at {RATE_HZ} Hz, 256 entities ({} frames)",
            lat.len()
        ),
        p50: ms(l50),
        p99: ms(l99),
        baseline: format!(
            "the same pair drawn and read back in one process: p50 {} p99 {} ({})",
            ms(b50),
            ms(b99),
            bare["adapter"].as_str().unwrap_or("?")
        ),
        target: format!("≤ {} (one 90 Hz frame)", ms(budget)),
        verdict: verdict(l99 <= budget, format!("p50 {:.1}× bare", l50 / b50.max(1e-9))),
    });
    let rate = |n: u64| 100.0 * n as f64 / ended.max(1) as f64;

    // (xr c) on the same runtime.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut stream = rt.block_on(events(&h));
    let (mut again, mut ready) = (Vec::new(), Vec::new());
    for _ in 0..kills {
        // Past the stability threshold, so that the restart is immediate.
        std::thread::sleep(Duration::from_millis(150));
        let node = h.node("xr");
        let t0 = monotonic_ns();
        let i0 = Instant::now();
        send(node.pid.expect("pid"), libc::SIGKILL);
        let (t1, ()) = rt.block_on(until(&mut stream, |ev| {
            matches!(ev.what, EventKind::Up { .. } if ev.incarnation > node.incarnation)
                .then_some(())
        }));
        ready.push((t1 - i0).as_secs_f64() * 1e3);
        let deadline = Instant::now() + Duration::from_secs(30);
        let first = loop {
            if let Some(f) = sim.frames().iter().find(|f| f.end_ns > t0 && f.layers > 0) {
                break f.end_ns;
            }
            assert!(Instant::now() < deadline, "no eye frame after the kill");
            std::thread::sleep(Duration::from_millis(5));
        };
        again.push((first - t0) as f64 / 1e6);
    }
    drop(h);
    let (a50, a99) = (percentile(&mut again, 50.0), percentile(&mut again, 99.0));
    let (r50, r99) = (percentile(&mut ready, 50.0), percentile(&mut ready, 99.0));

    // (xr b)'s baseline: the driver alone, poses only.
    let alone = tempfile::tempdir().expect("tempdir");
    let (sim_alone, h_alone) = start(alone.path(), false);
    let (_, ended_alone, missed_alone, late_alone) = run_for(&sim_alone, seconds.div_ceil(3));
    drop(h_alone);
    rows.push(Row {
        measure: format!(
            "(xr b) headset frames missed (and submitted late) over {seconds} s at {RATE_HZ} Hz with eyes ({ended} frames)"
        ),
        p50: format!("{missed} missed ({:.2} %)", rate(missed)),
        p99: format!("{late} late ({:.2} %)", rate(late)),
        baseline: format!(
            "the driver alone, poses only, {} s: {missed_alone} missed, {late_alone} late of {ended_alone}",
            seconds.div_ceil(3)
        ),
        target: "≤ 1 % missed".into(),
        verdict: verdict(rate(missed) <= 1.0, String::new()),
    });
    rows.push(Row {
        measure: format!("(xr c) XR driver SIGKILL → eye frames submitted again ({kills} kills)"),
        p50: ms(a50),
        p99: ms(a99),
        baseline: format!(
            "SIGKILL → the driver ready again: p50 {} p99 {}",
            ms(r50),
            ms(r99)
        ),
        target: "-".into(),
        verdict: format!("session and first frame: +{} at p50", ms(a50 - r50)),
    });
}
