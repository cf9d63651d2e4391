//! Native crash dumps: a node that dies of a signal its Rust panic hook never sees (a null
//! pointer in C, an abort) leaves a minidump the runtime wrote out of process, and its crash
//! record (and `syncra crashes`) names the crashing function. Dumps are bounded in count and
//! size; a crash handler that lies, sends garbage or vanishes mid-dump gets a sentence in the
//! record, and the runtime and the node's restart go on.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use syncra_integration_tests::{Harness, Options, PATIENCE, STRANGER_UID, Staged, is_root};
use syncra_protocol::control::CrashEntry;
use syncra_protocol::crash::DumpInfo;

fn config(mode: &str, runtime: &str) -> String {
    format!(
        r#"
[runtime]
watch_interval_ms = 250
{runtime}
[supervisor]
backoff_initial_ms = 50
[drivers.native]
command = "syncra-test-native"
args = ["{mode}"]
[worlds]
entities = 16
"#
    )
}

/// SIGUSR1 to the node's process: it crashes the way its mode says.
fn crash(h: &Harness, incarnation: u64) {
    let pid = h.wait_ready_incarnation("native", incarnation).pid.unwrap();
    // SAFETY: a signal to a process of this test.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGUSR1) }, 0);
}

/// The crash record of incarnation `incarnation`, once its dump is settled: its stack read, or
/// an error said.
fn settled(h: &Harness, incarnation: u64) -> (CrashEntry, DumpInfo) {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        if let Some(c) = h
            .crashes(Some("native"))
            .into_iter()
            .find(|c| c.record.incarnation == incarnation)
            && let Some(d) = c.record.dump.clone()
            && (!d.stack.is_empty() || d.error.is_some())
        {
            return (c, d);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no settled dump for native#{incarnation}: {:#?}\n{}",
            h.crashes(Some("native")),
            h.output()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn dumps_in(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "dmp"))
        .collect();
    v.sort();
    v
}

fn functions(d: &DumpInfo) -> Vec<String> {
    d.stack.iter().filter_map(|f| f.function.clone()).collect()
}

/// A null pointer dereferenced in C: the dump is a minidump only the runtime's user can read,
/// its stack starts in the C function, goes on into the Rust that called it, and `syncra
/// crashes` prints it. The node restarts as after any crash.
fn null_deref_is_dumped_and_symbolized(options: Options) {
    let h = Harness::start_with(&config("null", ""), &[], options);
    h.wait_ready(&["native", "world/main"]);
    crash(&h, 1);
    let (c, d) = settled(&h, 1);
    assert_eq!(c.record.signal.as_deref(), Some("SIGSEGV"), "{c:#?}");
    assert_eq!(d.error, None, "{d:#?}");
    let path = PathBuf::from(d.path.as_deref().expect("a dump path"));
    assert_eq!(path.parent(), Some(&*h.log_dir().join("crashes/dumps")));
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(&bytes[..4], b"MDMP", "a minidump");
    assert_eq!(bytes.len() as u64, d.bytes);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "only the runtime's user reads a dump");
    assert!(
        d.crash.as_deref().is_some_and(|c| c.starts_with("SIGSEGV")),
        "{d:#?}"
    );
    let names = functions(&d);
    assert!(
        names
            .first()
            .is_some_and(|f| f.contains("syncra_native_null_deref")),
        "the innermost frame is the C function that crashed: {names:#?}"
    );
    assert!(
        names.iter().any(|f| f.contains("native::main")),
        "the stack goes on into the Rust that called it: {names:#?}"
    );
    // The record on disk carries it too, once written.
    let on_disk = h.wait_until("the record on disk has the stack", PATIENCE, |_| {
        let r: syncra_protocol::crash::CrashRecord =
            serde_json::from_slice(&std::fs::read(&c.path).ok()?).ok()?;
        r.dump.filter(|d| !d.stack.is_empty())
    });
    assert_eq!(on_disk.path, d.path);
    let out = h.cli(&["crashes", "native"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("minidump: ")
            && text.contains("stack:")
            && text.contains("#0  syncra_native_null_deref"),
        "{text}"
    );
    h.wait_ready_incarnation("native", 2);
    assert_eq!(
        h.node("world/main").incarnation,
        1,
        "nothing else restarted"
    );
}

#[test]
fn a_null_pointer_in_c_is_dumped_and_its_stack_names_the_function() {
    null_deref_is_dumped_and_symbolized(Options::default());
}

#[test]
fn an_ordinary_users_runtime_dumps_its_sandboxed_nodes_too() {
    if !is_root() {
        eprintln!("note: not root, so the test above already ran as an ordinary user");
        return;
    }
    let staged = Staged::copy(&["syncra-test-native"]);
    null_deref_is_dumped_and_symbolized(Options {
        user: Some((STRANGER_UID, staged)),
        ..Options::default()
    });
}

#[test]
fn an_abort_in_c_is_dumped_and_only_the_newest_dump_is_kept() {
    let h = Harness::start(&config("abort", "crash_dumps_kept = 1"), &[]);
    h.wait_ready(&["native"]);
    crash(&h, 1);
    let (c, first) = settled(&h, 1);
    assert_eq!(c.record.signal.as_deref(), Some("SIGABRT"), "{c:#?}");
    let names = functions(&first);
    assert!(
        names.iter().any(|f| f.contains("syncra_native_abort")),
        "{names:#?}"
    );
    crash(&h, 2);
    let (_, second) = settled(&h, 2);
    assert!(second.path.is_some(), "{second:#?}");
    assert_eq!(
        dumps_in(&h.log_dir().join("crashes/dumps")),
        [PathBuf::from(second.path.unwrap())],
        "crash_dumps_kept = 1 keeps the newest dump only"
    );
}

#[test]
fn a_dump_past_its_bound_is_removed_and_the_record_says_so() {
    let h = Harness::start(&config("null", "crash_dump_max_bytes = 4096"), &[]);
    h.wait_ready(&["native"]);
    crash(&h, 1);
    let (c, d) = settled(&h, 1);
    assert_eq!(c.record.signal.as_deref(), Some("SIGSEGV"));
    assert_eq!(d.path, None, "{d:#?}");
    assert!(
        d.error
            .as_deref()
            .is_some_and(|e| e.contains("bound of 4096 bytes")),
        "{d:#?}"
    );
    assert!(dumps_in(&h.log_dir().join("crashes/dumps")).is_empty());
    h.wait_ready_incarnation("native", 2);
}

#[test]
fn a_lying_or_garbled_or_vanishing_crash_handler_gets_a_sentence_not_a_dump() {
    for (mode, says) in [
        ("liar", "not one of the process's own"),
        ("garbage", "not a crash context"),
        ("vanish", "ended"),
    ] {
        let h = Harness::start(&config(mode, ""), &[]);
        h.wait_ready(&["native", "world/main"]);
        crash(&h, 1);
        let (_, d) = settled(&h, 1);
        // `vanish` SIGKILLs itself right after sending a real context: the runtime may still
        // attach first (the thread is stopped before its `raise`), and then the dump of a
        // process that was alive throughout is whole and kept. Either way, never a dump of a
        // dead process, and a sentence when there is none.
        if mode == "vanish" && d.path.is_some() {
            assert_eq!(d.error, None, "{d:#?}");
            h.wait_ready_incarnation("native", 2);
            assert_eq!(h.node("world/main").incarnation, 1, "{mode}");
            continue;
        }
        assert_eq!(d.path, None, "{mode}: {d:#?}");
        assert!(
            d.error.as_deref().is_some_and(|e| e.contains(says)),
            "{mode}: {d:#?}"
        );
        assert!(dumps_in(&h.log_dir().join("crashes/dumps")).is_empty());
        // The runtime is not the worse for it: it answers and restarts the node.
        h.wait_ready_incarnation("native", 2);
        assert_eq!(h.node("world/main").incarnation, 1, "{mode}");
    }
}

#[test]
fn with_crash_dumps_off_a_native_crash_has_no_dump() {
    let h = Harness::start(&config("null", "crash_dumps = false"), &[]);
    h.wait_ready(&["native"]);
    crash(&h, 1);
    h.wait_ready_incarnation("native", 2);
    let c = h.crashes(Some("native")).pop().expect("a crash record");
    assert_eq!(c.record.signal.as_deref(), Some("SIGSEGV"));
    assert_eq!(c.record.dump, None);
}
