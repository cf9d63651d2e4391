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
    for preset in ["config/server.toml", "config/desktop.toml"] {
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
