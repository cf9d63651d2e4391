//! Layering through the real environment: defaults → file → `SYNCRA_*` → flags.
//! One test in its own process, because the environment is process-global.

use syncra_config::{Loader, Overrides};

#[test]
fn environment_sits_between_file_and_flags() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        "[runtime]\nwatch_interval_ms = 200\nmissed_beats = 4\n[worlds]\ncount = 2\n",
    )
    .unwrap();

    // SAFETY: this test binary runs this one test; no other thread reads the environment.
    unsafe {
        std::env::set_var("SYNCRA_RUNTIME__WATCH_INTERVAL_MS", "300");
        std::env::set_var("SYNCRA_WORLDS__COUNT", "3");
        std::env::set_var("SYNCRA_LOG", "debug"); // not config: ignored
    }
    let loaded = Loader::new().file(&path).load().unwrap();
    assert_eq!(
        loaded.config.runtime.watch_interval_ms, 300,
        "environment beats the file"
    );
    assert_eq!(
        loaded.config.runtime.missed_beats, 4,
        "the file beats the defaults"
    );
    assert_eq!(loaded.plan.worlds.nodes.len(), 3);

    let flags = Overrides {
        worlds: Some(5),
        ..Default::default()
    };
    let loaded = Loader::new().file(&path).overrides(flags).load().unwrap();
    assert_eq!(
        loaded.plan.worlds.nodes.len(),
        5,
        "flags beat the environment"
    );

    // SAFETY: as above.
    unsafe { std::env::set_var("SYNCRA_RUNTIME__WATCH_INTERVAL_MS", "soon") };
    let err = Loader::new().file(&path).load().unwrap_err().to_string();
    assert!(
        err.contains("environment variable SYNCRA_RUNTIME__WATCH_INTERVAL_MS")
            && err.contains("`runtime.watch_interval_ms`"),
        "{err}"
    );
    // SAFETY: as above.
    unsafe { std::env::set_var("SYNCRA_RUNTIME__WATCH_INTERVAL_MS", "300") };

    // SAFETY: as above.
    unsafe { std::env::set_var("SYNCRA_RUNTIME__NO_SUCH_KEY", "1") };
    let err = Loader::new().file(&path).load().unwrap_err().to_string();
    assert!(
        err.contains("SYNCRA_RUNTIME__NO_SUCH_KEY") && err.contains("unknown key"),
        "{err}"
    );
}
