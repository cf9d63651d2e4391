//! `syncra new-driver` writes a driver crate that builds as written, outside this workspace,
//! and runs under a runtime: it answers `syncra call` and reports its figure.
//!
//! The build is a real `cargo build` of a fresh crate (its own target directory under this
//! workspace's, kept between runs), so this test takes minutes the first time.

#![allow(
    clippy::disallowed_methods,
    reason = "the test runs cargo and the real syncra binary, as a user would"
)]

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;
use syncra_integration_tests::{Harness, PATIENCE, workspace_bin};
use syncra_protocol::NodeState;

#[test]
fn a_new_driver_builds_outside_the_workspace_and_runs_as_written() {
    let scratch = tempfile::tempdir().unwrap();
    let made = Command::new(workspace_bin("syncra"))
        .args(["new-driver", "probe-lamp", "--path"])
        .arg(scratch.path())
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let krate = scratch.path().join("probe-lamp");
    for file in ["Cargo.toml", "src/main.rs", "probe-lamp.toml"] {
        assert!(krate.join(file).is_file(), "{file} was not written");
    }
    // Refuses to write over an existing crate, and a name that is no driver name.
    let again = Command::new(workspace_bin("syncra"))
        .args(["new-driver", "probe-lamp", "--path"])
        .arg(scratch.path())
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(2));
    let bad = Command::new(workspace_bin("syncra"))
        .args(["new-driver", "no/slash", "--path"])
        .arg(scratch.path())
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));

    // Build it as its author would, with cargo, in a target directory of its own.
    let target: PathBuf = workspace_bin("syncra")
        .parent()
        .and_then(|d| d.parent())
        .unwrap()
        .join("new-driver-test");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let built = Command::new(cargo)
        .arg("build")
        .current_dir(&krate)
        .env("CARGO_TARGET_DIR", &target)
        .env_remove("RUSTFLAGS")
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "the generated driver does not build:\n{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let warnings = String::from_utf8_lossy(&built.stderr)
        .lines()
        .filter(|l| l.starts_with("warning"))
        .count();
    assert_eq!(warnings, 0, "{}", String::from_utf8_lossy(&built.stderr));

    let bin = target.join("debug/probe-lamp");
    let h = Harness::start(
        &format!(
            "[drivers.probe-lamp]\ncommand = \"{}\"\nsettings = {{ rate_hz = 50.0 }}\n[worlds]\nentities = 16\n",
            bin.display()
        ),
        &[],
    );
    h.wait_until("probe-lamp has ticked", PATIENCE, |s| {
        s.node("probe-lamp")
            .filter(|n| n.state == NodeState::Ready)
            .and_then(|n| {
                n.figures
                    .iter()
                    .find(|f| f.name == "ticks" && f.value >= 5.0)
            })
            .cloned()
    });
    let out = h.cli(&["call", "probe-lamp", "driver.probe-lamp.stats-request/1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stats: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(stats["ticks"].as_u64().unwrap_or(0) >= 5, "{stats}");
}
