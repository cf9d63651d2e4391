//! A config file: any text is loaded, validated and planned, or refused with problems.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("syncra-fuzz-config-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("SyncraConfig.toml");
    if std::fs::write(&path, text).is_ok() {
        let _ = syncra_config::Loader::new()
            .without_env()
            .file(&path)
            .load();
    }
});
