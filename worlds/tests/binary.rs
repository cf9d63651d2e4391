//! The `syncra-world` binary on its own: standalone simulation, and refusing to run as a node
//! without a runtime or with a runtime of another protocol version.

#![allow(
    clippy::disallowed_methods,
    reason = "the tests run the real `syncra-world` binary"
)]

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

use syncra_protocol::PROTOCOL_VERSION;
use syncra_protocol::boot::{BOOT_MAGIC, exit_code};

const WORLD: &str = env!("CARGO_BIN_EXE_syncra-world");

#[test]
fn standalone_runs_the_requested_ticks() {
    let out = Command::new(WORLD)
        .args([
            "--standalone",
            "--ticks",
            "30",
            "--tick-hz",
            "1000",
            "--entities",
            "100",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("ready: 100 entities"), "{text}");
    assert!(text.contains("tick 30 entities 100"), "{text}");
}

#[test]
fn by_hand_it_says_it_needs_a_runtime() {
    let out = Command::new(WORLD).output().unwrap();
    assert_eq!(out.status.code(), Some(exit_code::BAD_BOOT));
    assert!(String::from_utf8_lossy(&out.stderr).contains("started by the `syncra` runtime"));
}

/// Start the world with fd 3 connected to a socket carrying `frame`.
fn with_boot_frame(frame: &[u8]) -> std::process::Output {
    let (ours, theirs): (OwnedFd, OwnedFd) = {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        (a.into(), b.into())
    };
    std::io::Write::write_all(
        &mut std::os::unix::net::UnixStream::from(ours.try_clone().unwrap()),
        frame,
    )
    .unwrap();
    let fd = theirs.as_raw_fd();
    let mut cmd = Command::new(WORLD);
    // SAFETY: dup2 is async-signal-safe; the closure allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(fd, 3) < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(())
            }
        });
    }
    let out = cmd.output().unwrap();
    drop(ours);
    out
}

#[test]
fn another_protocol_version_is_refused_by_name() {
    let mut frame = BOOT_MAGIC.to_vec();
    frame.extend_from_slice(&(PROTOCOL_VERSION + 1).to_be_bytes());
    frame.extend_from_slice(&0u32.to_be_bytes());
    let out = with_boot_frame(&frame);
    assert_eq!(out.status.code(), Some(exit_code::PROTOCOL_MISMATCH));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "peer speaks v{}, this build speaks v{PROTOCOL_VERSION}",
            PROTOCOL_VERSION + 1
        )),
        "{err}"
    );
}

#[test]
fn garbage_on_the_boot_socket_is_refused() {
    let out = with_boot_frame(b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(out.status.code(), Some(exit_code::BAD_BOOT));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not carry a Syncra boot frame"));
}
