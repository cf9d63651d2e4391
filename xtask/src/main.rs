//! Project tasks, in plain Rust so a fresh machine needs only the Rust toolchain.
//!
//! ```text
//! cargo run-server [--release] [SYNCRA RUN ARGS]   headless server (config/server.toml)
//! cargo run-desktop [--release] [SYNCRA RUN ARGS]  desktop preset (config/desktop.toml)
//! cargo test-all                                    install system packages, run every test
//! cargo bench-all                                   the benchmark table (release build)
//! cargo chaos [--seconds S] [--worlds N]            a minute of random kills and stops (release)
//! ```
//!
//! The aliases live in `.cargo/config.toml`; the justfile calls the same tasks.

#![allow(
    clippy::disallowed_methods,
    reason = "xtask runs cargo and the built binaries"
)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

/// Debian packages the test suite needs, beyond the Rust toolchain and gcc. Each entry is
/// (package, a command or file that shows it is installed).
const TEST_PACKAGES: &[(&str, &str)] = &[
    // The renderer's tests draw for real on Mesa's CPU Vulkan (lavapipe) and its GL (EGL).
    (
        "mesa-vulkan-drivers",
        "/usr/share/vulkan/icd.d/lvp_icd.x86_64.json",
    ),
    ("libegl-mesa0", "/usr/lib/x86_64-linux-gnu/libEGL_mesa.so.0"),
    // The window's tests: a private X server, screenshots, resizes, and what winit loads.
    ("xvfb", "Xvfb"),
    ("imagemagick", "import"),
    ("xdotool", "xdotool"),
    // Other hosts' tests: two network namespaces joined by a veth pair (util-linux's
    // `unshare` and `nsenter` are always there).
    ("iproute2", "ip"),
    // `syncra top` is tested as a person uses it: in a terminal.
    ("tmux", "tmux"),
    // …and the web dashboard in a browser: headless Chromium driven over WebDriver.
    ("chromium", "/usr/bin/chromium"),
    ("chromium-driver", "/usr/bin/chromedriver"),
    // The XR driver loads the system's OpenXR loader, which loads the simulated headset.
    (
        "libopenxr-loader1",
        "/usr/lib/x86_64-linux-gnu/libopenxr_loader.so.1",
    ),
    // …and what the audio and input drivers build against (DESKTOP_BUILD), and every
    // library the window and renderer load (DESKTOP_LIBRARIES).
];

/// What building the audio driver (cpal links ALSA) and the input driver (gilrs links
/// libudev) needs.
const DESKTOP_BUILD: &[(&str, &str)] = &[
    ("pkg-config", "pkg-config"),
    ("libasound2-dev", "/usr/include/alsa/asoundlib.h"),
    ("libudev-dev", "/usr/include/libudev.h"),
];

/// The binaries every run needs: the runtime and the world.
const CORE_PACKAGES: &[&str] = &["syncra-runtime", "syncra-world"];

/// Driver binaries of the desktop preset, by package and executable. Each later issue adds
/// its own here.
const DESKTOP_DRIVERS: &[(&str, &str)] = &[
    ("syncra-window", "syncra-window"),
    ("syncra-renderer", "syncra-renderer"),
    ("syncra-audio", "syncra-audio"),
    ("syncra-input", "syncra-input"),
    ("syncra-xr", "syncra-xr"),
];

/// Drivers config/desktop.toml enables and the executable each needs.
const DESKTOP_EXECUTABLES: &[(&str, &str)] = &[
    ("window", "syncra-window"),
    ("renderer", "syncra-renderer"),
    ("audio", "syncra-audio"),
    ("input", "syncra-input"),
    ("xr", "syncra-xr"),
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned()
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(root());
    c
}

fn target_dir(release: bool) -> PathBuf {
    let base = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    base.join(if release { "release" } else { "debug" })
}

fn run(mut cmd: Command) -> Result<(), String> {
    let shown = format!("{cmd:?}");
    match cmd.status() {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!("{shown} failed ({s})")),
        Err(e) => Err(format!("{shown} could not start: {e}")),
    }
}

fn build(packages: &[&str], release: bool) -> Result<(), String> {
    let mut cmd = cargo();
    cmd.arg("build").arg("--bins");
    if release {
        cmd.arg("--release");
    }
    for p in packages {
        cmd.args(["-p", p]);
    }
    run(cmd)
}

/// Build and `exec` `syncra run --config <preset> ARGS`.
fn run_preset(preset: &str, mut args: Vec<String>, extra_packages: &[&str]) -> Result<(), String> {
    let release = take_flag(&mut args, "--release");
    let packages: Vec<&str> = CORE_PACKAGES
        .iter()
        .chain(extra_packages)
        .copied()
        .collect();
    build(&packages, release)?;
    let syncra = target_dir(release).join("syncra");
    let config = root().join("config").join(preset);
    let mut cmd = Command::new(&syncra);
    cmd.arg("run").arg("--config").arg(&config).args(&args);
    Err(format!("exec {}: {}", syncra.display(), cmd.exec()))
}

fn take_flag(args: &mut Vec<String>, flag: &str) -> bool {
    let before = args.len();
    args.retain(|a| a != flag);
    args.len() != before
}

fn is_installed(probe: &str) -> bool {
    if probe.starts_with('/') {
        return Path::new(probe).exists();
    }
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(probe).is_file()))
}

/// Install the Debian packages the tests need (as root, or through sudo).
fn install_test_packages() -> Result<(), String> {
    let missing: Vec<&str> = TEST_PACKAGES
        .iter()
        .chain(DESKTOP_BUILD)
        .chain(DESKTOP_LIBRARIES)
        .filter(|(_, probe)| !is_installed(probe))
        .map(|(p, _)| *p)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    let root_user = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false);
    let apt = |args: &[&str]| {
        let mut cmd = if root_user {
            Command::new("apt-get")
        } else {
            Command::new("sudo")
        };
        if !root_user {
            cmd.arg("apt-get");
        }
        cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        cmd
    };
    run(apt(&["update", "-q"]))?;
    let mut install = apt(&["install", "-y", "-q", "--no-install-recommends"]);
    install.args(&missing);
    run(install)
}

fn test_all(args: Vec<String>) -> Result<(), String> {
    install_test_packages()?;
    // Style and lints first: they fail fast. A toolchain without rustfmt or clippy skips them.
    for (tool, lint) in [
        ("rustfmt", vec!["fmt", "--all", "--check"]),
        (
            "clippy-driver",
            vec![
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ],
        ),
    ] {
        let mut probe = cargo();
        probe
            .args([lint[0], "--version"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        if probe.status().is_ok_and(|s| s.success()) {
            let mut cmd = cargo();
            cmd.args(&lint);
            run(cmd)?;
        } else {
            eprintln!(
                "xtask: {tool} is not installed; skipping `cargo {}`",
                lint.join(" ")
            );
        }
    }
    // Every binary first: the end-to-end tests run drivers (the hologram example) that no
    // test target of their own package would make cargo build; and the simulated headset's
    // library, which the XR driver's tests load.
    let mut bins = cargo();
    bins.args(["build", "--workspace", "--bins"]);
    run(bins)?;
    let mut headset = cargo();
    headset.args(["build", "-p", "syncra-simxr", "--lib"]);
    run(headset)?;
    let mut cmd = cargo();
    cmd.args(["test", "--workspace"]).args(&args);
    run(cmd)?;
    // Then every fuzz target for a short time: no panic, hang or runaway allocation from
    // anything another process can hand us.
    fuzz(&["--seconds".into(), FUZZ_SECONDS_IN_TESTS.into()])
}

/// The cargo-fuzz targets in `fuzz/fuzz_targets`: every decoder of bytes from another process.
const FUZZ_TARGETS: &[&str] = &["boot", "messages", "control", "ring", "config"];

/// How long `cargo test-all` fuzzes each target, seconds (`cargo xtask fuzz`: 60 unless told).
const FUZZ_SECONDS_IN_TESTS: &str = "10";

/// Run each fuzz target for `--seconds N` (default 60) with libFuzzer's memory limits; installs
/// the nightly toolchain and cargo-fuzz when they are missing. A crash leaves its input in
/// `fuzz/artifacts/<target>/` and fails the run.
fn fuzz(args: &[String]) -> Result<(), String> {
    let seconds = args
        .iter()
        .position(|a| a == "--seconds")
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| "60".into());
    if seconds.parse::<u32>().is_err() {
        return Err(format!(
            "--seconds {seconds}: expected a whole number of seconds"
        ));
    }
    // The rustup proxy, which understands `+nightly` (not `$CARGO`, a toolchain's own cargo).
    let proxy = || {
        let mut c = Command::new("cargo");
        c.current_dir(root()).env_remove("RUSTUP_TOOLCHAIN");
        c
    };
    let has_nightly = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--version"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_nightly {
        let mut install = Command::new("rustup");
        install.args(["toolchain", "install", "nightly", "--profile", "minimal"]);
        run(install)?;
    }
    let has_fuzz = proxy()
        .args(["+nightly", "fuzz", "--version"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_fuzz {
        let mut install = proxy();
        install.args(["install", "cargo-fuzz", "--locked"]);
        run(install)?;
    }
    for target in FUZZ_TARGETS {
        let mut cmd = proxy();
        cmd.args(["+nightly", "fuzz", "run", target, "--"]).args([
            format!("-max_total_time={seconds}"),
            "-rss_limit_mb=2048".into(),
            "-malloc_limit_mb=512".into(),
            "-timeout=10".into(),
            "-print_final_stats=0".into(),
        ]);
        run(cmd)?;
    }
    Ok(())
}

/// Build the release binaries of the runtime, the world and the integration tests, then run
/// the integration tests' program `bin` with `args` (the benchmark, the chaos run).
fn run_release_tool(bin: &str, args: Vec<String>) -> Result<(), String> {
    build(
        &[
            "syncra-runtime",
            "syncra-world",
            "syncra-integration-tests",
            "syncra-renderer",
            "syncra-window",
            "syncra-audio",
            "syncra-input",
            "syncra-xr",
        ],
        true,
    )?;
    // The simulated headset the XR rows run against (a library: `--bins` leaves it out).
    let mut headset = cargo();
    headset.args(["build", "--release", "-p", "syncra-simxr", "--lib"]);
    run(headset)?;
    let mut cmd = Command::new(target_dir(true).join(bin));
    cmd.args(&args);
    run(cmd)
}

/// System libraries the desktop drivers load at run time (winit and wgpu open them
/// themselves), as Debian names them, with a file that shows each is there.
const DESKTOP_LIBRARIES: &[(&str, &str)] = &[
    ("libvulkan1", "/usr/lib/x86_64-linux-gnu/libvulkan.so.1"),
    ("libegl1", "/usr/lib/x86_64-linux-gnu/libEGL.so.1"),
    (
        "libxkbcommon-x11-0",
        "/usr/lib/x86_64-linux-gnu/libxkbcommon-x11.so.0",
    ),
    ("libxcursor1", "/usr/lib/x86_64-linux-gnu/libXcursor.so.1"),
    ("libxrandr2", "/usr/lib/x86_64-linux-gnu/libXrandr.so.2"),
    ("libxi6", "/usr/lib/x86_64-linux-gnu/libXi.so.6"),
    ("libx11-xcb1", "/usr/lib/x86_64-linux-gnu/libX11-xcb.so.1"),
];

fn run_desktop(args: Vec<String>) -> Result<(), String> {
    // Nothing is installed behind the user's back: say what looks missing, and go on (the
    // paths are Debian's; elsewhere the drivers themselves say what they could not load).
    if Path::new("/etc/debian_version").exists() {
        let unbuildable: Vec<&str> = DESKTOP_BUILD
            .iter()
            .filter(|(_, probe)| !is_installed(probe))
            .map(|(p, _)| *p)
            .collect();
        if !unbuildable.is_empty() {
            return Err(format!(
                "run-desktop: building the audio and input drivers needs {}. \
                 Install them with: sudo apt-get install {}",
                unbuildable.join(", "),
                unbuildable.join(" ")
            ));
        }
        let missing: Vec<&str> = DESKTOP_LIBRARIES
            .iter()
            .filter(|(_, probe)| !is_installed(probe))
            .map(|(p, _)| *p)
            .collect();
        if !missing.is_empty() {
            eprintln!(
                "run-desktop: these libraries the window and renderer load look missing: {}.\n\
                 Install them with: sudo apt-get install {}",
                missing.join(", "),
                missing.join(" ")
            );
        }
        if !is_installed("/usr/share/vulkan/icd.d") {
            eprintln!(
                "run-desktop: no Vulkan driver is installed; the renderer falls back to GL. \
                 For Vulkan without a GPU: sudo apt-get install mesa-vulkan-drivers"
            );
        }
    }
    let has = |v: &str| std::env::var_os(v).is_some_and(|d| !d.is_empty());
    if !has("DISPLAY") && !has("WAYLAND_DISPLAY") {
        return Err(
            "run-desktop needs a display (DISPLAY or WAYLAND_DISPLAY is not set). \
             Run headless with `cargo run-server`, or under Xvfb: \
             `Xvfb :99 & DISPLAY=:99 cargo run-desktop`"
                .into(),
        );
    }
    let drivers: Vec<&str> = DESKTOP_DRIVERS.iter().map(|(p, _)| *p).collect();
    let release = args.iter().any(|a| a == "--release");
    let dir = target_dir(release);
    let missing: Vec<String> = DESKTOP_EXECUTABLES
        .iter()
        .filter(|(_, exe)| {
            !DESKTOP_DRIVERS.iter().any(|(_, built)| built == exe) && !dir.join(exe).exists()
        })
        .map(|(driver, exe)| format!("{driver} ({exe})"))
        .collect();
    if !missing.is_empty() {
        eprintln!(
            "run-desktop: these drivers of config/desktop.toml are not built yet: {}.\n\
             The runtime marks them failed and runs the rest (see `syncra status`).",
            missing.join(", ")
        );
    }
    run_preset("desktop.toml", args, &drivers)
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let task = args.next().unwrap_or_default();
    let rest: Vec<String> = args.collect();
    let result = match task.as_str() {
        "run-server" => run_preset("server.toml", rest, &[]),
        "run-desktop" => run_desktop(rest),
        "test" => test_all(rest),
        "bench" => run_release_tool("syncra-bench", rest),
        "chaos" => run_release_tool("syncra-chaos", rest),
        "deps" => install_test_packages(),
        "fuzz" => fuzz(&rest),
        _ => Err(format!(
            "unknown task `{task}`; tasks: run-server, run-desktop, test, bench, chaos, fuzz, deps (see .cargo/config.toml for the aliases)"
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}
