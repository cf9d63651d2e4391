//! The `syncra` binary's config handling: every bad config is refused before anything starts,
//! with a message naming the file, the key and what was expected.

#![allow(
    clippy::disallowed_methods,
    reason = "the tests run the real `syncra` binary"
)]

use std::path::Path;
use std::process::{Command, Output};

fn syncra(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_syncra"))
        .args(args)
        .current_dir(dir)
        .env_remove("SYNCRA_CONFIG")
        .env("SYNCRA_RUN_DIR", dir.join("run"))
        .output()
        .expect("run syncra")
}

/// Write `config`, check it with `check-config` and `run`: both must refuse with every needle.
fn refused(config: &str, needles: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, config).unwrap();
    for cmd in ["check-config", "run"] {
        let log_dir = dir.path().join("logs");
        let out = syncra(
            &[
                cmd,
                "--config",
                path.to_str().unwrap(),
                "--log-dir",
                log_dir.to_str().unwrap(),
            ],
            dir.path(),
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "`syncra {cmd}` must exit 2 on:\n{config}\nstderr: {err}"
        );
        for needle in needles.iter().chain(&["bad.toml"]) {
            assert!(
                err.contains(needle),
                "`syncra {cmd}` stderr lacks {needle:?}:\n{err}"
            );
        }
        assert!(
            !log_dir.exists() && !dir.path().join("run").exists(),
            "`syncra {cmd}` started something"
        );
    }
}

#[test]
fn syntax_error() {
    refused("[runtime\nwatch_interval_ms = 100\n", &["line 1"]);
}

#[test]
fn unknown_key() {
    refused(
        "[runtime]\nwatch_interval = 100\n",
        &[
            "`runtime.watch_interval`",
            "unknown key",
            "watch_interval_ms",
        ],
    );
}

#[test]
fn wrong_type() {
    refused(
        "[runtime]\nauto_restart_crashed_processes = \"yes\"\n",
        &[
            "`runtime.auto_restart_crashed_processes`",
            "expected a boolean",
        ],
    );
}

#[test]
fn unknown_strategy() {
    refused(
        "[supervisor]\nstrategy = \"all_for_one\"\n",
        &[
            "`supervisor.strategy`",
            "`all_for_one`",
            "one_for_one, one_for_all, rest_for_one",
        ],
    );
}

#[test]
fn zero_interval() {
    refused(
        "[runtime]\nwatch_interval_ms = 0\n",
        &["`runtime.watch_interval_ms`", "must be at least 10"],
    );
}

#[test]
fn duplicate_world_names() {
    refused(
        "[worlds]\ndefault_world = \"arena\"\nnames = [\"lobby\", \"arena\"]\n",
        &["`worlds.names[1]`", "duplicate world name `arena`"],
    );
}

#[test]
fn dependency_cycle() {
    refused(
        "[drivers.a]\ncommand = \"/bin/true\"\ndepends_on = [\"b\"]\n[drivers.b]\ncommand = \"/bin/true\"\ndepends_on = [\"a\"]\n",
        &["dependency cycle", "a → b → a"],
    );
}

#[test]
fn unknown_dependency() {
    refused(
        "[drivers.renderer]\ndepends_on = [\"windoww\"]\n",
        &["`drivers.renderer.depends_on[0]`", "unknown node `windoww`"],
    );
}

#[test]
fn missing_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = syncra(&["check-config", "--config", "nope.toml"], dir.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("config file nope.toml not found"));
}

#[test]
fn bad_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let out = syncra(&["run", "--worlds", "four"], dir.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("invalid value 'four' for '--worlds <N>'")
    );
    let out = syncra(&["check-config", "--worlds", "0"], dir.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("command-line flag --worlds: `worlds.count`: 0 is out of range")
    );
}

#[test]
fn check_config_prints_the_effective_config_and_start_order() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("SyncraConfig.toml"),
        "[runtime]\nwatch_interval_ms = 1000\nauto_restart_crashed_processes = true\n\n[drivers]\nwindow = true\naudio = true\nopenxr = false\n\n[worlds]\ndefault_world = \"my_base_world\"\n",
    )
    .unwrap();
    let out = syncra(&["check-config", "--worlds", "2"], dir.path());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("SyncraConfig.toml: valid"),
        "the file in the working directory is read:\n{text}"
    );
    assert!(
        text.contains("watch_interval_ms = 1000") && text.contains("count = 2"),
        "{text}"
    );
    let order: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("#   "))
        .map(|l| l.split_whitespace().nth(1).unwrap())
        .collect();
    assert_eq!(
        order,
        [
            "window",
            "audio",
            "world/my_base_world",
            "world/my_base_world-2"
        ]
    );
}

#[test]
fn shipped_presets_are_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    for preset in [
        "config/server.toml",
        "config/desktop.toml",
        "config/hologram.toml",
    ] {
        let out = syncra(
            &[
                "check-config",
                "--config",
                root.join(preset).to_str().unwrap(),
            ],
            root,
        );
        assert!(
            out.status.success(),
            "{preset}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn every_bad_value_is_reported_at_once_even_type_errors() {
    refused(
        "[runtime]\nwatch_interval_ms = -5\nmissed_beats = -1\nstop_timeout_ms = \"soon\"\n\n[supervisor]\nstrategy = \"all_for_one\"\nbackoff_max_ms = 0\n",
        &[
            "`runtime.watch_interval_ms`: expected u64, found signed int `-5`",
            "`runtime.missed_beats`: expected u32, found signed int `-1`",
            "`runtime.stop_timeout_ms`: expected u64, found string \"soon\"",
            "`supervisor.strategy`: unknown value `all_for_one`",
            "`supervisor.backoff_max_ms`: must be at least 1",
        ],
    );
}

#[test]
fn durations_and_counts_have_upper_bounds() {
    refused(
        "[runtime]\nwatch_interval_ms = 1000000000000\nstart_timeout_ms = 99999999999\n\n[supervisor]\nbackoff_max_ms = 8857767766330545000\nintensity = 4000000000\nbackoff_multiplier = 1e300\n\n[hooks]\ntimeout_ms = 100000000000\n\n[drivers.x]\ncommand = \"/bin/true\"\nheartbeat_deadline_ms = 1000000000000\n\n[streams]\nmax_streams = 4000000000\n",
        &[
            "`runtime.watch_interval_ms`: 1000000000000 is too large: must be at most 3600000",
            "`runtime.start_timeout_ms`: 99999999999 is too large: must be at most 86400000",
            "`supervisor.backoff_max_ms`: 8857767766330545000 is too large",
            "`supervisor.intensity`: 4000000000 is too large",
            "`supervisor.backoff_multiplier`",
            "`hooks.timeout_ms`: 100000000000 is too large",
            "`drivers.x.heartbeat_deadline_ms`: 1000000000000 is too large",
            "`streams.max_streams`: 4000000000 is too large",
        ],
    );
    refused(
        "[runtime]\nwatch_interval_ms = 3600000\nmissed_beats = 1000\n",
        &["`runtime.missed_beats`", "more than a day"],
    );
}

#[test]
fn empty_directories_are_refused_by_key_not_taken_as_the_config_directory() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[runtime]\nrun_dir = \"\"\nlog_dir = \"\"\ncrash_dir = \"\"\n",
    )
    .unwrap();
    for cmd in ["check-config", "run"] {
        let out = Command::new(env!("CARGO_BIN_EXE_syncra"))
            .args([cmd, "--config", path.to_str().unwrap()])
            .current_dir(dir.path())
            .env_remove("SYNCRA_CONFIG")
            .env_remove("SYNCRA_RUN_DIR")
            .env_remove("SYNCRA_LOG_DIR")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "`syncra {cmd}`: {err}");
        for needle in [
            "bad.toml: `runtime.run_dir`: is empty",
            "bad.toml: `runtime.log_dir`: is empty",
            "bad.toml: `runtime.crash_dir`: is empty",
        ] {
            assert!(
                err.contains(needle),
                "`syncra {cmd}` lacks {needle:?}:\n{err}"
            );
        }
    }
    let mode = std::fs::metadata(dir.path()).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o755, "the config's directory changed mode");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "something was created"
    );
}

#[test]
fn check_config_refuses_a_command_that_is_a_directory_or_not_executable() {
    let dir = tempfile::tempdir().unwrap();
    let not_exec = dir.path().join("tool");
    std::fs::write(&not_exec, "#!/bin/sh\n").unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        format!(
            "[drivers.telemetry]\ncommand = \"{}\"\n[drivers.tool]\ncommand = \"{}\"\n[drivers.gone]\ncommand = \"/nonexistent/driver\"\n",
            dir.path().display(),
            not_exec.display()
        ),
    )
    .unwrap();
    let out = syncra(
        &["check-config", "--config", path.to_str().unwrap()],
        dir.path(),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    for needle in [
        "`drivers.telemetry.command`",
        "it is not a file",
        "`drivers.tool.command`",
        "it is not marked executable",
        "`drivers.gone.command`",
        "not found",
    ] {
        assert!(err.contains(needle), "stderr lacks {needle:?}:\n{err}");
    }
}

#[test]
fn check_config_only_warns_about_a_built_in_driver_that_is_not_installed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("SyncraConfig.toml");
    std::fs::write(&path, "[drivers]\nhologram = false\n[drivers.window]\ncommand = \"syncra-window-not-installed\"\n[drivers.audio]\n").unwrap();
    // A copy of `syncra` alone in a directory of its own, with no drivers beside it (the
    // build's own directory has them all) and none on PATH.
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    // Copied by `cp`, not by this process: a file this multi-threaded test process had open
    // for writing would be inherited by any child another test forks meanwhile, and exec'ing
    // it would fail with ETXTBSY.
    let copied = Command::new("cp")
        .arg(env!("CARGO_BIN_EXE_syncra"))
        .arg(bin.join("syncra"))
        .status()
        .unwrap();
    assert!(copied.success());
    let out = Command::new(bin.join("syncra"))
        .arg("check-config")
        .current_dir(dir.path())
        .env_remove("SYNCRA_CONFIG")
        .env("SYNCRA_RUN_DIR", dir.path().join("run"))
        .env("PATH", &bin)
        .output()
        .expect("run syncra");
    let err = String::from_utf8_lossy(&out.stderr);
    // `window` names its command (a problem); `audio` is built in (a warning).
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("warning:") && err.contains("`drivers.audio.command`"),
        "{err}"
    );
    assert!(err.contains("`drivers.window.command`"), "{err}");
}

#[test]
fn a_shared_run_directory_is_refused_and_keeps_its_mode() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_syncra"))
        .args([
            "run",
            "--worlds",
            "1",
            "--run-dir",
            shared.to_str().unwrap(),
        ])
        .arg("--log-dir")
        .arg(dir.path().join("logs"))
        .current_dir(dir.path())
        .env_remove("SYNCRA_CONFIG")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("is writable by other users (mode 1777)") && err.contains("--run-dir"),
        "{err}"
    );
    let mode = std::fs::metadata(&shared).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o1777, "the shared directory's mode was changed");
    assert_eq!(
        std::fs::read_dir(&shared).unwrap().count(),
        0,
        "something was created in it"
    );
}
