//! A node without a runtime, for development: `my-driver --standalone [--set key=value]`.
//!
//! The node is the same [`Node`] with the same API; what the runtime would provide is local:
//!
//! - settings come from `--settings FILE` (a TOML table, as the `settings` of its
//!   `[drivers.<name>]` table) and `--set key=value` (a TOML value; a bare word is a string),
//!   decoded by the driver exactly as under the runtime, so a typo fails the same way;
//! - streams it declares are real rings in this process, written as usual and read by no one;
//!   streams it subscribes to lazily never attach (no other node produces them), and one it
//!   subscribes to eagerly is refused, saying so;
//! - messages and calls to other nodes fail at once (no node has the name);
//! - SIGINT and SIGTERM request the shutdown, as the runtime would;
//! - once a second it prints a status line to stdout: the loop's ticks per second, tick time,
//!   overruns, and the node's figures — what `syncra status` would show.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use syncra_protocol::boot::{Boot, ClusterJoin, HeartbeatPlan, Token};
use syncra_protocol::broker::{self, BrokerToNode, NodeToBroker, RefusalKind, StreamInfo};
use syncra_protocol::page::NodePage;
use syncra_protocol::ring::{self, RingMap};
use syncra_protocol::status::FigureKind;
use syncra_protocol::{NodeName, StepError, wire};

use crate::{JoinError, Node};

/// The command line of a driver run by hand.
#[derive(Debug, clap::Parser)]
#[command(
    about = "Run this Syncra driver without a runtime, for development",
    long_about = None
)]
struct Args {
    /// Run without a runtime.
    #[arg(long)]
    standalone: bool,
    /// The node's name (default: the program's name without `syncra-`).
    #[arg(long)]
    name: Option<String>,
    /// A TOML file holding the driver's settings table.
    #[arg(long, value_name = "FILE")]
    settings: Option<std::path::PathBuf>,
    /// One setting, over the file's: `rate_hz=30`, `mode=fast`, `size.w=64`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

/// `Some` when this process was started with `--standalone`: the node, or what is wrong with
/// the command line or the settings.
pub(crate) fn from_args() -> Option<Result<Node, String>> {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if !argv.iter().skip(1).any(|a| a == "--standalone") {
        return None;
    }
    let args = match <Args as clap::Parser>::try_parse_from(&argv) {
        Ok(a) => a,
        Err(e) => {
            // `--help` included: clap prints and picks the exit code.
            e.exit();
        }
    };
    Some(node_from(args))
}

fn node_from(args: Args) -> Result<Node, String> {
    let name = match args.name {
        Some(n) => n,
        None => program_name(),
    };
    let mut table = match &args.settings {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("--settings {}: {e}", path.display()))?;
            text.parse::<toml::Table>()
                .map_err(|e| format!("--settings {}: {e}", path.display()))?
        }
        None => toml::Table::new(),
    };
    for kv in &args.set {
        set(&mut table, kv).map_err(|e| format!("--set {kv}: {e}"))?;
    }
    Node::standalone(&name, &table).map_err(|e| e.to_string())
}

/// The program's file name, less a `syncra-` prefix: `syncra-hologram` runs as `hologram`.
fn program_name() -> String {
    let exe = std::env::args_os().next().unwrap_or_default();
    let file = std::path::Path::new(&exe)
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    file.strip_prefix("syncra-").unwrap_or(&file).to_owned()
}

/// Apply `key=value` to `table`: the value as TOML (`30`, `true`, `[1, 2]`, `"x"`), or a bare
/// word as a string; dotted keys reach into tables.
fn set(table: &mut toml::Table, kv: &str) -> Result<(), String> {
    let (key, value) = kv
        .split_once('=')
        .ok_or("expected KEY=VALUE, e.g. --set rate_hz=30")?;
    let key = key.trim();
    let parsed = format!("{key} = {value}")
        .parse::<toml::Table>()
        .or_else(|_| {
            let quoted = toml::Value::String(value.to_owned()).to_string();
            format!("{key} = {quoted}").parse::<toml::Table>()
        });
    let one = parsed.map_err(|e| format!("`{key}` is not a valid key: {}", e.message()))?;
    merge(table, one);
    Ok(())
}

fn merge(into: &mut toml::Table, from: toml::Table) {
    for (k, v) in from {
        match (into.get_mut(&k), v) {
            (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge(a, b),
            (_, v) => {
                into.insert(k, v);
            }
        }
    }
}

impl Node {
    /// Join the runtime that started this process or, with `--standalone` on the command
    /// line, run without one ([`Node::standalone`]); on failure, say why and exit. What
    /// [`crate::driver::run`] starts with, for a driver whose loop belongs to a library.
    pub fn join_or_standalone() -> Node {
        match from_args() {
            Some(Ok(node)) => node,
            Some(Err(why)) => {
                eprintln!("{why}");
                std::process::exit(2)
            }
            None => Node::join().unwrap_or_else(|e| e.exit()),
        }
    }

    /// This process as node `name` with no runtime, its config chunk `settings` (any value
    /// that serializes as the driver's settings table would). For development: what the
    /// runtime would provide is local (see [`crate::driver`]'s `--standalone`): streams are
    /// rings in this process, other nodes do not exist, SIGINT/SIGTERM request the shutdown,
    /// and a status line goes to stdout once a second. [`crate::driver::run`] calls it when
    /// the program is started with `--standalone`.
    pub fn standalone(name: &str, settings: &impl Serialize) -> Result<Node, JoinError> {
        // Logs go to stderr, as under a runtime (`SYNCRA_LOG` filters them).
        crate::init_logging();
        let fail =
            |step: &'static str| move |e: StepError| JoinError::Standalone(StepError::new(step, e));
        let node = NodeName::parse(name)
            .map_err(|e| JoinError::Standalone(StepError::new("naming the node", e)))?;
        let boot = Boot {
            node: node.clone(),
            incarnation: 1,
            cluster: ClusterJoin {
                cookie: String::new(),
                node_name: node.to_string(),
                hub_name: String::new(),
                token: Token([0; 16]),
            },
            heartbeat: HeartbeatPlan {
                interval_ms: 1000,
                deadline_ms: 0,
            },
            page_fd: None,
            settings: wire::encode(settings),
            broker_fd: None,
            directory: vec![node.clone()],
            seal_fd: None,
            direct_links: false,
            crash_fd: None,
        };
        let shared = crate::new_shared(boot.cluster.token)?;
        let (page, _page_fd) = NodePage::create(&format!("syncra-page:{node}"))
            .map_err(|e| JoinError::Standalone(StepError::new("creating the node page", e)))?;
        let page = Arc::new(page);
        let (ours, theirs) = rustix::net::socketpair(
            rustix::net::AddressFamily::UNIX,
            rustix::net::SocketType::SEQPACKET,
            rustix::net::SocketFlags::CLOEXEC,
            None,
        )
        .map_err(|e| JoinError::Standalone(StepError::new("creating the local broker link", e)))?;
        spawn("syncra-standalone-broker", {
            let node = node.clone();
            move || local_broker(&node, theirs)
        })
        .map_err(fail("starting the local broker"))?;
        let broker = crate::streams::BrokerClient::start(
            ours,
            1,
            shared.loop_bell.clone(),
            Arc::downgrade(&shared),
        )
        .map_err(|e| JoinError::Standalone(StepError::new("starting the broker client", e)))?;
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        spawn("syncra-standalone", {
            let shared = shared.clone();
            move || signals(shared, handle_tx)
        })
        .map_err(fail("starting the signal thread"))?;
        if let Ok(handle) = handle_rx.recv() {
            let _ = shared.runtime.set(handle);
        }
        spawn("syncra-standalone-status", {
            let (node, page) = (node.clone(), page.clone());
            move || report(&node, &page)
        })
        .map_err(fail("starting the status line"))?;
        tracing::info!(node = %node, "running standalone: no runtime");
        Ok(Node {
            beat_interval: Duration::from_secs(1),
            boot,
            broker: Some(broker),
            shared,
            started: Instant::now(),
            page: Some(page),
        })
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<(), StepError> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map(drop)
        .map_err(StepError::at("spawning a thread"))
}

/// SIGINT and SIGTERM request the shutdown; the thread's tokio runtime serves
/// [`Node::spawn`].
fn signals(shared: Arc<crate::Shared>, handle: std::sync::mpsc::Sender<tokio::runtime::Handle>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        tracing::warn!("no tokio runtime: Ctrl-C ends the process at once");
        return;
    };
    let _ = handle.send(rt.handle().clone());
    rt.block_on(async move {
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::warn!("could not install SIGTERM/SIGINT handlers");
            return std::future::pending().await;
        };
        loop {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
                _ = int.recv() => tracing::info!("SIGINT: shutting down"),
            }
            shared.request_shutdown(0);
        }
    });
}

/// Once a second, what `syncra status` would show for this node.
fn report(node: &NodeName, page: &NodePage) {
    let mut last: Option<(Instant, u64)> = None;
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let line = status_line(node, page, &mut last);
        println!("{line}");
    }
}

fn status_line(node: &NodeName, page: &NodePage, last: &mut Option<(Instant, u64)>) -> String {
    let now = Instant::now();
    let metrics = page.vitals().metrics().unwrap_or_default();
    let mut parts = vec![format!("{node} (standalone)")];
    if let Some((then, ticks)) = *last {
        let dt = now.duration_since(then).as_secs_f64();
        if dt > 0.0 {
            parts.push(format!(
                "{:.1} ticks/s",
                metrics.tick.saturating_sub(ticks) as f64 / dt
            ));
        }
    }
    *last = Some((now, metrics.tick));
    if metrics.tick > 0 {
        parts.push(format!(
            "tick {:.2} ms (max {:.2} ms)",
            f64::from(metrics.tick_us) / 1000.0,
            f64::from(metrics.tick_us_max) / 1000.0
        ));
        parts.push(format!("{} overruns", metrics.overruns));
    }
    for f in page.figures() {
        let value = match f.kind {
            FigureKind::Counter => format!("{}", f.value),
            FigureKind::Gauge => format!("{:.2}", f.value),
        };
        parts.push(format!("{} {value}", f.name));
    }
    parts.join(" · ")
}

/// The Broker of a node alone: its declarations get real rings (no consumer ever attaches),
/// lazy and pattern subscriptions wait for ever, an eager one is refused.
fn local_broker(node: &NodeName, socket: OwnedFd) {
    // The rings' fds stay open for the life of the process.
    let mut rings: Vec<(OwnedFd, OwnedFd)> = Vec::new();
    loop {
        let (req, _) = match broker::recv::<NodeToBroker>(&socket) {
            Ok(got) => got,
            Err(broker::RecvError::Decode(e)) => {
                tracing::warn!(error = %e, "dropped a malformed broker request");
                continue;
            }
            Err(_) => return,
        };
        match req {
            NodeToBroker::Declare { id, spec } => match declare(node, &spec) {
                Ok((memfd, space)) => {
                    let reply = BrokerToNode::Declared {
                        id,
                        stream: StreamInfo {
                            spec,
                            producer: node.clone(),
                        },
                        bells: Vec::new(),
                    };
                    send(&socket, &reply, &[memfd.as_fd(), space.as_fd()]);
                    rings.push((memfd, space));
                }
                Err((kind, message)) => {
                    send(&socket, &BrokerToNode::Refused { id, kind, message }, &[]);
                }
            },
            NodeToBroker::Subscribe {
                id, pattern, lazy, ..
            } => {
                let reply = if lazy || broker::is_pattern(&pattern) {
                    BrokerToNode::Subscribed {
                        id,
                        streams: Vec::new(),
                    }
                } else {
                    BrokerToNode::Refused {
                        id,
                        kind: RefusalKind::NotDeclared,
                        message: format!(
                            "no stream `{pattern}`: running standalone, no other node produces streams"
                        ),
                    }
                };
                send(&socket, &reply, &[]);
            }
            NodeToBroker::Unsubscribe { .. } => {}
            NodeToBroker::Link { to } => {
                let message = "running standalone: there is no other node".to_owned();
                send(&socket, &BrokerToNode::LinkRefused { to, message }, &[]);
            }
        }
    }
}

fn declare(
    node: &NodeName,
    spec: &syncra_protocol::broker::StreamSpec,
) -> Result<(OwnedFd, OwnedFd), (RefusalKind, String)> {
    let invalid = |m: String| (RefusalKind::Invalid, m);
    let rest = spec.name.strip_prefix(&format!("{node}/")).unwrap_or("");
    if rest.is_empty()
        || rest
            .split('/')
            .any(|s| s.is_empty() || s == "*" || s == "**")
    {
        return Err(invalid(format!(
            "stream name `{}`: a stream of {node} must be named `{node}/<name>`",
            spec.name
        )));
    }
    spec.geometry
        .check()
        .map_err(|e| invalid(format!("stream `{}`: {e}", spec.name)))?;
    let (_map, memfd) = RingMap::create(&format!("syncra-stream:{}", spec.name), spec.geometry)
        .map_err(|e| {
            (
                RefusalKind::Internal,
                format!("stream `{}`: {e}", spec.name),
            )
        })?;
    let space = ring::doorbell().map_err(|e| {
        (
            RefusalKind::Internal,
            format!("stream `{}`: eventfd: {e}", spec.name),
        )
    })?;
    Ok((memfd, space))
}

fn send(socket: &OwnedFd, msg: &BrokerToNode, fds: &[std::os::fd::BorrowedFd<'_>]) {
    if let Err(e) = broker::send(socket, msg, fds) {
        tracing::warn!(error = %e, "the local broker could not answer");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_takes_toml_values_bare_words_and_dotted_keys() {
        let mut t = toml::Table::new();
        for kv in [
            "rate_hz=30",
            "mode=fast",
            "size.w=64",
            "size.h=32",
            "on=true",
            "name=\"x y\"",
        ] {
            set(&mut t, kv).unwrap();
        }
        assert_eq!(t["rate_hz"].as_integer(), Some(30));
        assert_eq!(t["mode"].as_str(), Some("fast"));
        assert_eq!(t["size"]["w"].as_integer(), Some(64));
        assert_eq!(t["size"]["h"].as_integer(), Some(32));
        assert_eq!(t["on"].as_bool(), Some(true));
        assert_eq!(t["name"].as_str(), Some("x y"));
        let e = set(&mut t, "no-equals-sign").unwrap_err();
        assert!(e.contains("KEY=VALUE"), "{e}");
        let e = set(&mut t, "a b=1").unwrap_err();
        assert!(e.contains("`a b` is not a valid key"), "{e}");
    }
}
