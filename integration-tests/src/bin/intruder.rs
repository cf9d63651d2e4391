//! A misbehaving local process for the hardening tests: it connects to a runtime's ports and
//! sockets the way a hostile (or merely broken) program of another user would. The tests run
//! it as an unprivileged user where they can.
//!
//! ```text
//! syncra-test-intruder tcp-churn ROUNDS PORT...   connect to every port and close at once, ROUNDS times
//! syncra-test-intruder tcp-hold COUNT PORT...     open COUNT connections over the ports; hold them
//! syncra-test-intruder unix-hold COUNT PATH       open COUNT connections to a Unix socket; hold them
//! syncra-test-intruder unix-huge COUNT PATH       COUNT connections that each announce a 16 MiB
//!                                                 request and send 1 MiB of it; print the answers
//! ```
//!
//! Each mode prints one line `key=value ...` when its connections are made (`established`:
//! completed, `pending`: still connecting, `failed`: refused or in error); the holding modes
//! then keep everything open until their stdin closes.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, poll};
use rustix::io::Errno;
use rustix::net::{AddressFamily, SocketFlags, SocketType};

fn usage() -> ! {
    eprintln!(
        "usage: syncra-test-intruder tcp-churn ROUNDS PORT... | tcp-hold COUNT PORT... | unix-hold COUNT PATH | unix-huge COUNT PATH"
    );
    std::process::exit(2)
}

/// Take as many fds as the hard limit allows.
fn raise_fd_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut lim = getrlimit(Resource::Nofile);
    lim.current = lim.maximum;
    let _ = setrlimit(Resource::Nofile, lim);
}

/// Start a non-blocking connect to 127.0.0.1:`port`.
fn start_connect(port: u16) -> Option<OwnedFd> {
    let fd = rustix::net::socket_with(
        AddressFamily::INET,
        SocketType::STREAM,
        SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
        None,
    )
    .ok()?;
    match rustix::net::connect(&fd, &SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)) {
        Ok(()) | Err(Errno::INPROGRESS) => Some(fd),
        Err(_) => None,
    }
}

/// Wait up to `patience` for connects in progress; `(established, pending, failed)`.
fn settle(fds: &[OwnedFd], patience: Duration) -> (usize, usize, usize) {
    let deadline = Instant::now() + patience;
    let mut state = vec![None::<bool>; fds.len()];
    while Instant::now() < deadline && state.iter().any(Option::is_none) {
        let open: Vec<usize> = (0..fds.len()).filter(|&i| state[i].is_none()).collect();
        let mut polls: Vec<PollFd<'_>> = open
            .iter()
            .map(|&i| PollFd::new(&fds[i], PollFlags::OUT))
            .collect();
        let left = deadline.saturating_duration_since(Instant::now());
        let timeout = rustix::time::Timespec {
            tv_sec: left.as_secs() as i64,
            tv_nsec: i64::from(left.subsec_nanos()),
        };
        if poll(&mut polls, Some(&timeout)).unwrap_or(0) == 0 {
            break;
        }
        for (k, p) in polls.iter().enumerate() {
            if !p.revents().is_empty() {
                let i = open[k];
                state[i] = Some(matches!(
                    rustix::net::sockopt::socket_error(&fds[i]),
                    Ok(Ok(()))
                ));
            }
        }
    }
    let established = state.iter().filter(|s| **s == Some(true)).count();
    let failed = state.iter().filter(|s| **s == Some(false)).count();
    (established, fds.len() - established - failed, failed)
}

fn hold_until_stdin_closes() {
    let mut sink = [0u8; 64];
    while matches!(std::io::stdin().read(&mut sink), Ok(n) if n > 0) {}
}

fn ports(args: &[String]) -> Vec<u16> {
    let ports: Vec<u16> = args.iter().filter_map(|p| p.parse().ok()).collect();
    if ports.is_empty() || ports.len() != args.len() {
        usage()
    }
    ports
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(mode), Some(n)) = (
        args.first(),
        args.get(1).and_then(|n| n.parse::<usize>().ok()),
    ) else {
        usage()
    };
    raise_fd_limit();
    let mut out = std::io::stdout();
    match mode.as_str() {
        "tcp-churn" => {
            let ports = ports(&args[2..]);
            let (mut e, mut p, mut f) = (0, 0, 0);
            for _ in 0..n {
                let fds: Vec<OwnedFd> = ports.iter().filter_map(|&p| start_connect(p)).collect();
                f += ports.len() - fds.len();
                let (e1, p1, f1) = settle(&fds, Duration::from_millis(200));
                (e, p, f) = (e + e1, p + p1, f + f1);
                drop(fds); // close at once, before any handshake
            }
            let _ = writeln!(out, "established={e} pending={p} failed={f}");
        }
        "tcp-hold" => {
            let ports = ports(&args[2..]);
            let mut fds = Vec::with_capacity(n);
            let mut refused = 0;
            for i in 0..n {
                match start_connect(ports[i % ports.len()]) {
                    Some(fd) => fds.push(fd),
                    None => refused += 1,
                }
            }
            let (e, p, f) = settle(&fds, Duration::from_millis(500));
            let _ = writeln!(out, "established={e} pending={p} failed={}", f + refused);
            let _ = out.flush();
            hold_until_stdin_closes();
        }
        "unix-hold" => {
            let Some(path) = args.get(2) else { usage() };
            let mut held = Vec::with_capacity(n);
            let mut failed = 0;
            for _ in 0..n {
                match std::os::unix::net::UnixStream::connect(path) {
                    Ok(s) => held.push(s),
                    Err(_) => failed += 1,
                }
            }
            let _ = writeln!(out, "established={} pending=0 failed={failed}", held.len());
            let _ = out.flush();
            hold_until_stdin_closes();
        }
        "unix-huge" => {
            let Some(path) = args.get(2) else { usage() };
            let mut held = Vec::with_capacity(n);
            for _ in 0..n {
                let Ok(mut s) = std::os::unix::net::UnixStream::connect(path) else {
                    continue;
                };
                let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
                let _ = s.write_all(&(16u32 << 20).to_be_bytes());
                let _ = s.write_all(&vec![0u8; 1 << 20]);
                held.push(s);
            }
            let mut answers = Vec::new();
            for mut s in held {
                let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                let mut reply = Vec::new();
                let _ = s.read_to_end(&mut reply);
                answers.push(String::from_utf8_lossy(&reply).into_owned());
            }
            let refused = answers
                .iter()
                .filter(|a| a.contains("exceeds the limit"))
                .count();
            let _ = writeln!(out, "established={} too_large={refused}", answers.len());
            if let Some(a) = answers.iter().find(|a| a.contains("exceeds the limit")) {
                let _ = writeln!(out, "answer: {a}");
            }
        }
        _ => usage(),
    }
}
