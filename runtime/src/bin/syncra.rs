//! `syncra`: the command-line interface, a thin layer over the `syncra-runtime` library.
//!
//! `syncra run` runs a runtime in the foreground; every other command reaches a running
//! runtime through the control socket in its run directory.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

#[path = "syncra/top.rs"]
mod top;
use syncra_runtime::config::{Loader, Overrides, default_run_dir};
use syncra_runtime::protocol::control::{ControlReply, ControlRequest, CrashEntry};
use syncra_runtime::protocol::status::{EventKind, LifecycleEvent, NodeView, StatusReport};
use syncra_runtime::{ClientError, ControlClient, RuntimeBuilder, ShutdownCause};

/// The config file read when none is named and it exists in the working directory.
const DEFAULT_CONFIG_FILE: &str = "SyncraConfig.toml";

/// Exit code for a bad config or bad arguments.
const EXIT_USAGE: u8 = 2;

/// Syncra runtime: runs drivers and worlds as supervised processes.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct ConfigArgs {
    /// Config file (TOML). Default: ./SyncraConfig.toml if it exists, else built-in defaults.
    #[arg(long, short, env = "SYNCRA_CONFIG")]
    config: Option<PathBuf>,
    /// Number of worlds: the default world plus generated names.
    #[arg(long, value_name = "N")]
    worlds: Option<u32>,
    /// Directory of logs and crash records.
    #[arg(long, value_name = "DIR")]
    log_dir: Option<PathBuf>,
    /// Directory of the control socket (selects a runtime instance).
    #[arg(long, value_name = "DIR")]
    run_dir: Option<PathBuf>,
    /// Spread the worlds over these hosts in turn (`[hosts.<name>]` entries; `local` is this one).
    #[arg(long, value_name = "HOST,HOST", value_delimiter = ',')]
    hosts: Option<Vec<String>>,
    /// Where the runtime keeps its identity for other hosts (default: $XDG_STATE_HOME/syncra, else ~/.local/state/syncra).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Serve the web dashboard on 127.0.0.1 (`[dashboard]`; `syncra dashboard` prints its link).
    #[arg(long)]
    dashboard: bool,
    /// The dashboard's port (`dashboard.port`; 0: any free port).
    #[arg(long, value_name = "PORT")]
    dashboard_port: Option<u16>,
}

#[derive(Debug, Args)]
struct Target {
    /// Run directory of the runtime to talk to (default: $XDG_RUNTIME_DIR/syncra, else /tmp/syncra-UID).
    #[arg(long, value_name = "DIR", env = "SYNCRA_RUN_DIR")]
    run_dir: Option<PathBuf>,
}

impl Target {
    fn dir(&self) -> PathBuf {
        self.run_dir.clone().unwrap_or_else(default_run_dir)
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the runtime in the foreground until SIGTERM, SIGINT or `syncra shutdown`.
    Run(ConfigArgs),
    /// Validate a config and print the effective config and what would start; with `--diff`,
    /// what `syncra reload` would change in the runtime running now.
    CheckConfig {
        #[command(flatten)]
        config: ConfigArgs,
        /// Compare with the running runtime (of `--run-dir`, else the config's) instead.
        #[arg(long)]
        diff: bool,
    },
    /// Read the config again and apply what changed: new nodes start, removed ones stop, a
    /// node whose own config changed restarts alone; a bad config changes nothing. SIGHUP to
    /// `syncra run` does the same.
    Reload {
        /// Another config file than the one the runtime runs.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Only say what would change.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Give a node a new executable and restart it alone with it (worlds keep running); with
    /// `rollback = true` on the node, a command that fails to start gives way to the previous
    /// one by itself.
    Upgrade {
        /// Node name.
        name: String,
        /// The new executable: a path, or a name looked up as a config's `command`.
        #[arg(long)]
        command: String,
        #[command(flatten)]
        target: Target,
    },
    /// Save a world's newest durable state into a file (default: `world-NAME.state` here).
    Snapshot {
        /// The world (`world/arena`).
        name: String,
        /// Where to write it (it must not exist).
        #[arg(long, short)]
        out: Option<PathBuf>,
        #[command(flatten)]
        target: Target,
    },
    /// Restart a world from a state saved by `syncra snapshot`, checked first: a state of
    /// another format or config, or a damaged one, is refused with the reason.
    Restore {
        /// The world (`world/arena`).
        name: String,
        /// The state file.
        file: PathBuf,
        #[command(flatten)]
        target: Target,
    },
    /// Show every node's state.
    Status {
        #[command(flatten)]
        target: Target,
        /// Print JSON: an object with a `nodes` array.
        #[arg(long)]
        json: bool,
    },
    /// Restart a node now (`world/arena`, `renderer`).
    Restart {
        /// Node name.
        name: String,
        #[command(flatten)]
        target: Target,
    },
    /// Stop a node; it stays stopped until `syncra start`.
    Stop {
        /// Node name.
        name: String,
        #[command(flatten)]
        target: Target,
    },
    /// Start a stopped or failed node.
    Start {
        /// Node name.
        name: String,
        #[command(flatten)]
        target: Target,
    },
    /// Stop everything in order and exit the runtime.
    Shutdown {
        #[command(flatten)]
        target: Target,
    },
    /// List this session's crash records.
    Crashes {
        /// Only this node's.
        name: Option<String>,
        /// At most this many (the newest).
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Print the records as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: Target,
    },
    /// List every stream: producer, consumers, rate, lag and drops.
    Streams {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Watch a live stream: its rate, the age of its newest message, gaps and latest value, decoded, once per
    /// interval. Passive: it holds no consumer cell and never slows the producer.
    Tap {
        /// The stream (`world/main/scene`).
        stream: String,
        /// Stop after this many reports (default: until Ctrl-C).
        #[arg(long)]
        count: Option<u64>,
        /// Milliseconds between reports.
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
        /// Print each report as one JSON line.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Call a node by name with a request given as JSON and print its answer as JSON
    /// (`syncra call hologram syncra.hologram.get-stats/1`). Only request types that allow
    /// the command line answer.
    Call {
        /// The node.
        name: String,
        /// The request's tag (`NAME/VERSION`).
        tag: String,
        /// The request, as JSON (default `null`, for a request without fields).
        #[arg(default_value = "null")]
        json: String,
        /// How long to wait for the answer, milliseconds.
        #[arg(long, default_value_t = 5000)]
        timeout_ms: u64,
        #[command(flatten)]
        target: Target,
    },
    /// Send a node a message given as JSON.
    Send {
        /// The node.
        name: String,
        /// The message's tag (`NAME/VERSION`).
        tag: String,
        /// The message, as JSON.
        #[arg(default_value = "null")]
        json: String,
        #[command(flatten)]
        target: Target,
    },
    /// Write a new driver crate, on the driver skeleton, that builds and runs as written
    /// (outside this workspace): `Cargo.toml`, `src/main.rs` and a config snippet.
    NewDriver {
        /// The driver's name (its package, binary and `[drivers.NAME]` table).
        name: String,
        /// Where to create it (the crate goes in `DIR/NAME`).
        #[arg(long, value_name = "DIR", default_value = ".")]
        path: PathBuf,
    },
    /// The whole process family live: nodes, streams and events, with keys to restart, stop
    /// and start a node and to read its crash records (q quits).
    Top {
        #[command(flatten)]
        target: Target,
    },
    /// Print the link to the running runtime's web dashboard, with its token (`syncra run
    /// --dashboard`): open it in a browser on this machine.
    Dashboard {
        #[command(flatten)]
        target: Target,
    },
    /// Follow lifecycle events (spawned, up, hung, down, restarting, failed) until Ctrl-C.
    Events {
        /// Print each event as one JSON line.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Run this host's agent, for runtimes on other hosts (each pinned by its fingerprint).
    Agent {
        /// `host:port` to listen on (e.g. `0.0.0.0:7800`).
        #[arg(long, value_name = "ADDR")]
        listen: String,
        /// Its identity (made on first start) and its `trusted` file.
        #[arg(long, value_name = "DIR")]
        state_dir: PathBuf,
        /// A runtime it trusts, as `syncra identity` prints it (repeat for more).
        #[arg(long = "trust", value_name = "FINGERPRINT")]
        trust: Vec<String>,
        /// Its name for this host (default: the host name).
        #[arg(long)]
        name: Option<String>,
        /// TCP accept → TLS handshake done, at most.
        #[arg(long, value_name = "MS", default_value_t = 5000)]
        handshake_timeout_ms: u64,
    },
    /// Print this runtime's identity (its fingerprint, for agents' `--trust`), made on first use.
    Identity {
        /// Where the identity is kept (default: $XDG_STATE_HOME/syncra, else ~/.local/state/syncra).
        #[arg(long, value_name = "DIR", env = "SYNCRA_STATE_DIR")]
        state_dir: Option<PathBuf>,
    },
    /// Check every `[hosts]` entry: its agent answers, and each side trusts the other.
    Hosts {
        #[command(flatten)]
        config: ConfigArgs,
        /// Ping each agent N times, one after another, and print the round trip's p50 and p99.
        #[arg(long, value_name = "N", default_value_t = 1)]
        pings: usize,
    },
    /// Print a node's log: its current (or last) incarnation's, wherever it runs (a node on
    /// another host has a copy here, `<node>@<host>_<pid>.log`).
    Logs {
        /// Node name.
        name: String,
        /// The last N lines.
        #[arg(long, short = 'n', default_value_t = 40)]
        lines: usize,
        /// Keep printing what it writes, until Ctrl-C.
        #[arg(long, short)]
        follow: bool,
        #[command(flatten)]
        target: Target,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run(_) | Command::Agent { .. }) {
        quiet_broken_pipe();
    }
    // One thread drives the whole runtime: supervising is never CPU-bound, and a message
    // handled on the thread that received it costs half of one handed to another thread.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("syncra: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        match cli.command {
            Command::Run(args) => run(args).await,
            Command::Agent {
                listen,
                state_dir,
                trust,
                name,
                handshake_timeout_ms,
            } => agent(listen, state_dir, trust, name, handshake_timeout_ms).await,
            Command::Identity { state_dir } => identity(state_dir),
            Command::Hosts { config, pings } => hosts(config, pings).await,
            Command::Logs {
                name,
                lines,
                follow,
                target,
            } => logs(&target.dir(), &name, lines, follow).await,
            Command::CheckConfig {
                config,
                diff: false,
            } => check_config(config),
            Command::CheckConfig { config, diff: true } => check_diff(config).await,
            Command::Reload {
                config,
                dry_run,
                target,
            } => reload(&target.dir(), config, dry_run).await,
            Command::Upgrade {
                name,
                command,
                target,
            } => {
                let reply = request(
                    &target.dir(),
                    ControlRequest::Upgrade {
                        node: name,
                        command,
                    },
                )
                .await;
                print_reloaded(reply)
            }
            Command::Status { target, json } => status(&target.dir(), json).await,
            Command::Restart { name, target } => {
                simple(&target.dir(), ControlRequest::Restart { node: name }).await
            }
            Command::Stop { name, target } => {
                simple(&target.dir(), ControlRequest::Stop { node: name }).await
            }
            Command::Start { name, target } => {
                simple(&target.dir(), ControlRequest::Start { node: name }).await
            }
            Command::Shutdown { target } => simple(&target.dir(), ControlRequest::Shutdown).await,
            Command::Crashes {
                name,
                limit,
                json,
                target,
            } => crashes(&target.dir(), name, limit, json).await,
            Command::Events { json, target } => events(&target.dir(), json).await,
            Command::Dashboard { target } => dashboard(&target.dir()).await,
            Command::Snapshot { name, out, target } => {
                let out = out
                    .unwrap_or_else(|| PathBuf::from(format!("{}.state", name.replace('/', "-"))));
                match absolute(&out) {
                    Ok(out) => {
                        simple(&target.dir(), ControlRequest::Snapshot { node: name, out }).await
                    }
                    Err(code) => code,
                }
            }
            Command::Restore { name, file, target } => match absolute(&file) {
                Ok(file) => {
                    simple(&target.dir(), ControlRequest::Restore { node: name, file }).await
                }
                Err(code) => code,
            },
            Command::Top { target } => match top::run(target.dir()).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("syncra top: {e}");
                    ExitCode::FAILURE
                }
            },
            Command::NewDriver { name, path } => new_driver(&name, &path),
            Command::Call {
                name,
                tag,
                json,
                timeout_ms,
                target,
            } => {
                call(
                    &target.dir(),
                    ControlRequest::Call {
                        node: name,
                        tag,
                        json,
                        timeout_ms,
                    },
                )
                .await
            }
            Command::Send {
                name,
                tag,
                json,
                target,
            } => {
                simple(
                    &target.dir(),
                    ControlRequest::Send {
                        node: name,
                        tag,
                        json,
                    },
                )
                .await
            }
            Command::Streams { json, target } => streams(&target.dir(), json).await,
            Command::Tap {
                stream,
                count,
                interval_ms,
                json,
                target,
            } => tap(&target.dir(), &stream, count, interval_ms, json).await,
        }
    })
}

/// A client command whose output is cut short (`syncra status | head`) ends quietly, as
/// other command-line tools do, instead of panicking on the broken pipe. Not for the
/// runtime or the agent, which must outlive any reader.
fn quiet_broken_pipe() {
    // SAFETY: restoring a signal's default disposition, before any thread is started.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn loader(args: &ConfigArgs) -> Loader {
    let mut loader = Loader::new().overrides(Overrides {
        worlds: args.worlds,
        log_dir: args.log_dir.clone(),
        run_dir: args.run_dir.clone(),
        hosts: args.hosts.clone(),
        state_dir: args.state_dir.clone(),
        dashboard: args.dashboard.then_some(true),
        dashboard_port: args.dashboard_port,
    });
    match &args.config {
        Some(path) => loader = loader.file(path),
        None if Path::new(DEFAULT_CONFIG_FILE).is_file() => {
            loader = loader.file(DEFAULT_CONFIG_FILE)
        }
        None => {}
    }
    loader
}

fn check_config(args: ConfigArgs) -> ExitCode {
    let loaded = loader(&args).load().and_then(|loaded| {
        // Commands are checked as a spawn would find them: next to `syncra`, then on PATH.
        let bin_dirs: Vec<PathBuf> = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_owned))
            .into_iter()
            .collect();
        let (problems, warnings) = syncra_runtime::command_problems(&loaded, &bin_dirs);
        for w in &warnings {
            eprintln!("syncra: warning: {w}");
        }
        if problems.is_empty() {
            Ok(loaded)
        } else {
            Err(syncra_runtime::config::ConfigError::Invalid(problems))
        }
    });
    match loaded {
        Ok(loaded) => {
            let source = loaded
                .file
                .as_ref()
                .map(|f| f.display().to_string())
                .unwrap_or_else(|| "built-in defaults".into());
            println!("# {source}: valid. Effective config:\n");
            print!("{}", loaded.config.to_toml());
            println!("\n# Start order:");
            for n in loaded.plan.nodes() {
                let deps = if n.depends_on.is_empty() {
                    String::new()
                } else {
                    format!(
                        ", after {}",
                        n.depends_on
                            .iter()
                            .map(|d| d.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                };
                let host = match (&n.host, &n.fallback_host) {
                    (Some(h), Some(Some(f))) => format!(", on host {h}, else {f}"),
                    (Some(h), Some(None)) => format!(", on host {h}, else here"),
                    (Some(h), None) => format!(", on host {h}"),
                    (None, _) => String::new(),
                };
                println!(
                    "#   {:<20} {:<7} {} (restart {}, heartbeat deadline {} ms{deps}{host})",
                    n.name.to_string(),
                    n.kind.to_string(),
                    n.command,
                    n.restart,
                    n.heartbeat.deadline_ms
                );
            }
            print_sandboxes(&loaded);
            println!(
                "# run dir {}, logs {}, crash records {}",
                loaded.plan.runtime.run_dir.display(),
                loaded.plan.runtime.log_dir.display(),
                loaded.plan.runtime.crash_dir.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("syncra: {e}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

/// Each node's effective sandbox profile, and what this machine can enforce of it.
fn print_sandboxes(loaded: &syncra_runtime::config::Loaded) {
    let support = syncra_runtime::sandbox::support();
    println!(
        "\n# Sandboxes (this machine: Landlock ABI {}{}, seccomp {}, {}):",
        support.landlock_abi,
        if support.landlock_abi == 0 {
            " (none)"
        } else {
            ""
        },
        if support.seccomp { "yes" } else { "no" },
        if support.root {
            "root: network namespaces without user namespaces; RLIMIT_NPROC does not apply"
        } else {
            "an ordinary user: network namespaces through user namespaces"
        }
    );
    let bin_dirs: Vec<PathBuf> = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_owned))
        .into_iter()
        .collect();
    for n in loaded.plan.nodes() {
        let program = syncra_runtime::resolve_program(&n.command, &bin_dirs)
            .unwrap_or_else(|_| PathBuf::from(&n.command));
        let node_dir = loaded
            .plan
            .runtime
            .run_dir
            .join("nodes")
            .join(n.name.file_stem());
        let p = syncra_runtime::sandbox::effective(&n.sandbox, &program, Some(&node_dir));
        println!("# - {:<20} {}", n.name.to_string(), p.describe());
    }
}

async fn agent(
    listen: String,
    state_dir: PathBuf,
    trust: Vec<String>,
    name: Option<String>,
    handshake_timeout_ms: u64,
) -> ExitCode {
    use syncra_runtime::remote;
    let mut trusted = Vec::new();
    for t in &trust {
        match t.parse() {
            Ok(fp) => trusted.push(fp),
            Err(e) => {
                eprintln!("syncra agent: --trust: {e}");
                return ExitCode::from(EXIT_USAGE);
            }
        }
    }
    syncra_runtime::logs::init_console_logging();
    let options = remote::AgentOptions {
        listen,
        state_dir,
        trust: trusted,
        name: name.unwrap_or_else(remote::host_name),
        handshake_timeout: Duration::from_millis(handshake_timeout_ms.max(1)),
    };
    let name = options.name.clone();
    let dir = options.state_dir.clone();
    let agent = match remote::Agent::start(options).await {
        Ok(a) => a,
        Err(e) => {
            eprintln!("syncra agent: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let addr = agent
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "?".into());
    if agent.new_identity {
        println!(
            "syncra agent {name}: made a new identity in {}",
            dir.display()
        );
    }
    println!(
        "syncra agent {name}: listening on {addr}, trusting {} runtime(s)\nfingerprint {}",
        agent.trusted, agent.fingerprint
    );
    match agent.serve().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("syncra agent: {e}");
            ExitCode::FAILURE
        }
    }
}

fn identity(state_dir: Option<PathBuf>) -> ExitCode {
    let dir = state_dir.unwrap_or_else(syncra_runtime::remote::default_state_dir);
    match syncra_runtime::remote::runtime_identity(&dir) {
        Ok((identity, made)) => {
            if made {
                eprintln!("syncra: made a new identity in {}", dir.display());
            }
            println!("{}", identity.fingerprint);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("syncra: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn hosts(args: ConfigArgs, pings: usize) -> ExitCode {
    use syncra_runtime::remote::{self, HostCheck};
    let loaded = match loader(&args).load() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("syncra: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if loaded.plan.hosts.is_empty() {
        println!("no hosts: the config has no [hosts.<name>] section");
        return ExitCode::SUCCESS;
    }
    let dir = loaded.plan.runtime.state_dir.clone();
    let identity = match remote::runtime_identity(&dir) {
        Ok((i, _)) => i,
        Err(e) => {
            eprintln!("syncra: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("this runtime: {}", identity.fingerprint);
    let session = remote::new_session();
    let mut failed = false;
    for host in &loaded.plan.hosts {
        match remote::check_host(&identity, host, session, pings).await {
            HostCheck::Reachable {
                name,
                version,
                mut rtts,
            } => {
                rtts.sort();
                let ms = |d: Duration| d.as_secs_f64() * 1e3;
                let at = |p: f64| rtts[((rtts.len() - 1) as f64 * p).round() as usize];
                let trip = if rtts.len() > 1 {
                    format!(
                        "round trip p50 {:.3} ms p99 {:.3} ms ({} pings)",
                        ms(at(0.5)),
                        ms(at(0.99)),
                        rtts.len()
                    )
                } else {
                    format!("round trip {:.2} ms", ms(rtts[0]))
                };
                println!(
                    "{:<16} {:<24} ok: agent {name} {version}, {trip}",
                    host.name, host.address
                );
            }
            HostCheck::Unreachable(why) => {
                failed = true;
                println!("{:<16} {:<24} UNREACHABLE: {why}", host.name, host.address);
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

async fn run(args: ConfigArgs) -> ExitCode {
    let loaded = match loader(&args).load() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("syncra: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let plan = loaded.plan;
    let log_file = match syncra_runtime::logs::init_logging(&plan.runtime.log_dir) {
        Ok(p) => p,
        Err(e) => {
            eprintln!(
                "syncra: cannot write logs to {}: {e}",
                plan.runtime.log_dir.display()
            );
            return ExitCode::FAILURE;
        }
    };
    let source = loaded
        .file
        .map(|f| f.display().to_string())
        .unwrap_or_else(|| "built-in defaults".into());
    tracing::info!(
        config = %source,
        drivers = plan.drivers.nodes.len(),
        worlds = plan.worlds.nodes.len(),
        run_dir = %plan.runtime.run_dir.display(),
        log = %log_file.display(),
        "syncra {} starting",
        env!("CARGO_PKG_VERSION")
    );
    let runtime = match RuntimeBuilder::from_plan(plan)
        .loader(loader(&args))
        .start()
        .await
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        runtime.shutdown(ShutdownCause::Requested).await;
        return ExitCode::FAILURE;
    };
    // SIGHUP: read the config again and apply what changed.
    let mut hup = signal(SignalKind::hangup()).ok();
    let cause = loop {
        tokio::select! {
            _ = term.recv() => break ShutdownCause::Signal("SIGTERM"),
            _ = int.recv() => break ShutdownCause::Signal("SIGINT"),
            cause = runtime.shutdown_requested() => break cause,
            Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                match runtime.reload(None).await {
                    Ok(r) => {
                        for line in r.outcomes {
                            tracing::info!("reload (SIGHUP): {line}");
                        }
                    }
                    Err(e) => tracing::error!("reload (SIGHUP): nothing changed: {e}"),
                }
            }
        }
    };
    // A second signal while stopping: kill everything now.
    let impatient = runtime.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::warn!("second signal: killing every node now");
        impatient.kill_all();
        std::process::exit(130);
    });
    let report = runtime.shutdown(cause).await;
    ExitCode::from(report.exit_code() as u8)
}

/// `syncra reload`.
async fn reload(run_dir: &Path, config: Option<PathBuf>, dry_run: bool) -> ExitCode {
    let config = match config
        .map(|c| std::path::absolute(&c).map_err(|e| (c, e)))
        .transpose()
    {
        Ok(c) => c.map(|c| c.display().to_string()),
        Err((c, e)) => {
            eprintln!("syncra: {}: {e}", c.display());
            return ExitCode::from(EXIT_USAGE);
        }
    };
    print_reloaded(request(run_dir, ControlRequest::Reload { config, dry_run }).await)
}

/// `syncra check-config --diff`: what a reload of this config would change in the runtime
/// running now.
async fn check_diff(args: ConfigArgs) -> ExitCode {
    // Validate here first: a bad file is reported as `check-config` reports it.
    let loaded = match loader(&args).load() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("syncra: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let config = loaded
        .file
        .as_ref()
        .and_then(|f| std::path::absolute(f).ok())
        .map(|f| f.display().to_string());
    let run_dir = args
        .run_dir
        .clone()
        .unwrap_or_else(|| loaded.plan.runtime.run_dir.clone());
    print_reloaded(
        request(
            &run_dir,
            ControlRequest::Reload {
                config,
                dry_run: true,
            },
        )
        .await,
    )
}

/// Print what a reload or upgrade changed.
fn print_reloaded(reply: Result<ControlReply, ClientError>) -> ExitCode {
    match reply {
        Ok(ControlReply::Reloaded {
            changes,
            applied,
            outcomes,
        }) => {
            println!(
                "{}",
                if applied {
                    "changes applied:"
                } else {
                    "a reload would change:"
                }
            );
            for c in changes {
                println!("  {c}");
            }
            for o in &outcomes {
                println!("  {o}");
            }
            ExitCode::SUCCESS
        }
        Ok(ControlReply::Error(e)) => {
            eprintln!("syncra: {}", e.message);
            ExitCode::from(EXIT_USAGE)
        }
        Ok(other) => fail(ClientError::Unexpected(format!("{other:?}"))),
        Err(e) => fail(e),
    }
}

/// Print a client error and pick the exit code.
fn fail(e: ClientError) -> ExitCode {
    eprintln!("syncra: {e}");
    match e {
        ClientError::Refused(_) => ExitCode::from(EXIT_USAGE),
        _ => ExitCode::FAILURE,
    }
}

async fn request(run_dir: &Path, req: ControlRequest) -> Result<ControlReply, ClientError> {
    // A reload restarts changed nodes one after another, each waited for.
    let limit = match req {
        ControlRequest::Reload { dry_run: false, .. } | ControlRequest::Upgrade { .. } => 600,
        _ => 60,
    };
    let client = ControlClient::connect(run_dir).await?;
    tokio::time::timeout(Duration::from_secs(limit), client.request(req))
        .await
        .map_err(|_| {
            ClientError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {limit} s"),
            ))
        })?
}

async fn simple(run_dir: &Path, req: ControlRequest) -> ExitCode {
    match request(run_dir, req).await {
        Ok(ControlReply::Done { message }) => {
            println!("{message}");
            ExitCode::SUCCESS
        }
        Ok(other) => fail(ClientError::Unexpected(format!("{other:?}"))),
        Err(e) => fail(e),
    }
}

/// The driver template of `syncra new-driver`: `{name}`, `{crate_name}` and `{tag}` are
/// filled in.
const DRIVER_MAIN: &str = r#"//! `{name}`: a Syncra driver, on the driver skeleton (`syncra_node::driver`).
//!
//! It counts the scenes of every world, ticks at `rate_hz`, reports a `ticks` figure in
//! `syncra status`, and answers `syncra call {name} {tag}.stats-request/1`.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use syncra_node::driver::{self, Context, Driver};
use syncra_node::events::{NodeEvent, StreamKey};
use syncra_node::streams::{Consumer, Subscription};
use syncra_node::world::{ALL_SCENES, SceneSnapshot};
use syncra_node::{Figure, FigureKind};

/// Ask the driver how it is doing.
#[derive(Debug, Serialize, Deserialize)]
pub struct StatsRequest;
/// What it answers.
#[derive(Debug, Serialize, Deserialize)]
pub struct Stats {
    pub ticks: u64,
    pub scenes: u64,
}
syncra_node::message!(Stats = "{tag}.stats/1");
syncra_node::message!(StatsRequest = "{tag}.stats-request/1" => Stats, cli);

/// `[drivers.{name}] settings = { .. }`: a misspelt key is refused, and `syncra status` says so.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Settings {
    rate_hz: f64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { rate_hz: 10.0 }
    }
}

struct {crate_name} {
    rate_hz: f64,
    worlds: Subscription<SceneSnapshot>,
    worlds_key: StreamKey,
    scenes: Vec<Consumer<SceneSnapshot>>,
    seen: u64,
    ticks: Figure,
}

impl Driver for {crate_name} {
    type Settings = Settings;

    fn start(ctx: &mut Context<'_>, settings: Settings) -> Result<Self, String> {
        let worlds = ctx.node().subscribe_pattern(ALL_SCENES).map_err(|e| e.to_string())?;
        let worlds_key = ctx.watch(&worlds);
        let ticks = ctx.node().figure("ticks", FigureKind::Counter);
        Ok({crate_name} { rate_hz: settings.rate_hz, worlds, worlds_key, scenes: Vec::new(), seen: 0, ticks })
    }

    fn rate(&self) -> Option<f64> {
        Some(self.rate_hz)
    }

    fn event(&mut self, ctx: &mut Context<'_>, event: NodeEvent) -> Result<(), String> {
        match event {
            NodeEvent::Stream(key) if key == self.worlds_key => {
                while let Some(c) = self.worlds.next_stream(Duration::ZERO).map_err(|e| e.to_string())? {
                    ctx.watch(&c);
                    self.scenes.push(c);
                }
            }
            NodeEvent::Stream(_) => {
                for c in &mut self.scenes {
                    while c.try_recv().map_err(|e| e.to_string())?.is_some() {
                        self.seen += 1;
                    }
                }
            }
            NodeEvent::Message(incoming) => {
                let stats = Stats { ticks: ctx.ticker().ticks(), scenes: self.seen };
                let _ = incoming.answer_with(|StatsRequest| Ok(stats));
            }
            _ => {}
        }
        Ok(())
    }

    fn tick(&mut self, _: &mut Context<'_>) -> Result<(), String> {
        self.ticks.add(1.0);
        Ok(())
    }
}

fn main() {
    driver::run::<{crate_name}>()
}
"#;

/// `syncra new-driver NAME --path DIR`.
fn new_driver(name: &str, path: &Path) -> ExitCode {
    if let Err(e) = syncra_runtime::protocol::status::validate_component("driver name", name) {
        eprintln!("syncra: {e}");
        return ExitCode::from(EXIT_USAGE);
    }
    let dir = path.join(name);
    if dir.exists() {
        eprintln!(
            "syncra: {} exists already; choose another name or --path",
            dir.display()
        );
        return ExitCode::from(EXIT_USAGE);
    }
    // This workspace's syncra-node, when `syncra` runs from a build of it; else from git.
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_owned);
    let node_crate = workspace
        .as_ref()
        .map(|w| w.join("actors/node"))
        .filter(|p| p.is_dir());
    let node_dep = match &node_crate {
        Some(p) => format!("{{ path = \"{}\" }}", p.display()),
        None => "{ git = \"https://github.com/syncra/syncra-runtime\" }".to_owned(),
    };
    let crate_name: String = name
        .split(['-', '_', '.'])
        .map(|part| {
            let mut c = part.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect();
    let crate_name = if crate_name.starts_with(|c: char| c.is_ascii_digit()) {
        format!("Driver{crate_name}")
    } else {
        crate_name
    };
    let tag = format!("driver.{}", name.replace('_', "-"));
    let cargo_toml = format!(
        "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2024\"\npublish = false\n\n\
         [dependencies]\nsyncra-node = {node_dep}\nserde = {{ version = \"1\", features = [\"derive\"] }}\n\n\
         # A crate of its own, even inside another workspace's tree.\n[workspace]\n\n\
         # Dependencies optimised in debug builds, as in the Syncra workspace: drivers run at speed.\n\
         [profile.dev.package.\"*\"]\nopt-level = 2\ndebug = false\n"
    );
    let main_rs = DRIVER_MAIN
        .replace("{name}", name)
        .replace("{crate_name}", &crate_name)
        .replace("{tag}", &tag);
    let snippet = format!(
        "# Add to your SyncraConfig.toml (after `cargo build` in {dir}):\n\
         [drivers.{name}]\ncommand = \"{bin}\"\nsettings = {{ rate_hz = 10.0 }}\n",
        dir = dir.display(),
        bin = dir.join("target/debug").join(name).display()
    );
    let written = std::fs::create_dir_all(dir.join("src"))
        .and_then(|()| std::fs::write(dir.join("Cargo.toml"), cargo_toml))
        .and_then(|()| std::fs::write(dir.join("src/main.rs"), main_rs))
        .and_then(|()| std::fs::write(dir.join(format!("{name}.toml")), &snippet))
        .and_then(|()| match workspace.map(|w| w.join("Cargo.lock")) {
            // The versions this Syncra was built and tested with.
            Some(lock) if lock.is_file() && node_crate.is_some() => {
                std::fs::copy(lock, dir.join("Cargo.lock")).map(|_| ())
            }
            _ => Ok(()),
        });
    match written {
        Ok(()) => {
            println!(
                "created driver `{name}` in {}:\n  cd {} && cargo build\nthen add {name}.toml to your config; `syncra call {name} {tag}.stats-request/1` asks it for its stats.\nWithout a runtime: `cargo run -- --standalone --set rate_hz=10`.",
                dir.display(),
                dir.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("syncra: writing {}: {e}", dir.display());
            ExitCode::FAILURE
        }
    }
}

async fn call(run_dir: &Path, req: ControlRequest) -> ExitCode {
    match request(run_dir, req).await {
        Ok(ControlReply::Answer { json, .. }) => {
            let pretty = serde_json::from_str::<serde_json::Value>(&json)
                .ok()
                .and_then(|v| serde_json::to_string_pretty(&v).ok())
                .unwrap_or(json);
            println!("{pretty}");
            ExitCode::SUCCESS
        }
        Ok(other) => fail(ClientError::Unexpected(format!("{other:?}"))),
        Err(e) => fail(e),
    }
}

async fn status(run_dir: &Path, json: bool) -> ExitCode {
    match request(run_dir, ControlRequest::Status).await {
        Ok(ControlReply::Status(report)) => {
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).unwrap_or_default()
                );
            } else {
                print_status(&report);
            }
            ExitCode::SUCCESS
        }
        Ok(other) => fail(ClientError::Unexpected(format!("{other:?}"))),
        Err(e) => fail(e),
    }
}

/// `path` made absolute here (the runtime, which reads or writes it, runs elsewhere), or the
/// usage error, said.
fn absolute(path: &Path) -> Result<String, ExitCode> {
    std::path::absolute(path)
        .map(|p| p.display().to_string())
        .map_err(|e| {
            eprintln!("syncra: {}: {e}", path.display());
            ExitCode::from(EXIT_USAGE)
        })
}

/// `syncra dashboard`.
async fn dashboard(run_dir: &Path) -> ExitCode {
    let report = match request(run_dir, ControlRequest::Status).await {
        Ok(ControlReply::Status(report)) => report,
        Ok(other) => return fail(ClientError::Unexpected(format!("{other:?}"))),
        Err(e) => return fail(e),
    };
    let Some(url) = report.runtime.dashboard else {
        eprintln!(
            "syncra: the runtime (pid {}) serves no dashboard: start it with `syncra run --dashboard`, or `enabled = true` under `[dashboard]`",
            report.runtime.pid
        );
        return ExitCode::FAILURE;
    };
    match syncra_runtime::dashboard::read_token(run_dir) {
        Ok(token) => {
            println!("{url}#token={token}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "syncra: the dashboard is at {url}, but its token cannot be read from {}: {e}",
                run_dir
                    .join(syncra_runtime::dashboard::TOKEN_FILE)
                    .display()
            );
            ExitCode::FAILURE
        }
    }
}

async fn streams(run_dir: &Path, json: bool) -> ExitCode {
    match request(run_dir, ControlRequest::Streams).await {
        Ok(ControlReply::Streams(list)) => {
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&list).unwrap_or_default()
                );
            } else if list.is_empty() {
                println!("no streams declared");
            } else {
                println!(
                    "{:<28} {:<18} {:<12} {:>10} {:>9} {:>9}  CONSUMERS (lag/dropped/torn)",
                    "STREAM", "PRODUCER", "POLICY", "SEQ", "RATE/S", "RING"
                );
                for s in &list {
                    let consumers = s
                        .consumers
                        .iter()
                        .map(|c| {
                            format!(
                                "{}{}{} ({}/{}/{})",
                                c.node,
                                c.host
                                    .as_ref()
                                    .map(|h| format!("@{h} [bridged]"))
                                    .unwrap_or_default(),
                                if c.active { "" } else { " [down]" },
                                c.lag,
                                c.dropped,
                                c.torn
                            )
                        })
                        .collect::<Vec<_>>()
                        .join(", ");
                    println!(
                        "{:<28} {:<18} {:<12} {:>10} {:>9.1} {:>8}K  {}",
                        s.name,
                        format!(
                            "{}{}#{}{}",
                            s.producer,
                            s.producer_host
                                .as_ref()
                                .map(|h| format!("@{h}"))
                                .unwrap_or_default(),
                            s.producer_incarnation,
                            if s.producer_live { "" } else { " down" }
                        ),
                        s.geometry.policy.to_string(),
                        s.published,
                        s.rate_hz,
                        s.ring_bytes / 1024,
                        if consumers.is_empty() {
                            "-".into()
                        } else {
                            consumers
                        }
                    );
                }
            }
            ExitCode::SUCCESS
        }
        Ok(other) => fail(ClientError::Unexpected(format!("{other:?}"))),
        Err(e) => fail(e),
    }
}

/// One `syncra tap` report.
#[derive(serde::Serialize)]
struct TapReport {
    stream: String,
    seq: u64,
    rate_hz: f64,
    /// How long ago the newest message was published.
    age_ms: Option<f64>,
    gaps: u64,
    producer_incarnation: u64,
    producer_live: bool,
    value: serde_json::Value,
}

async fn tap(
    run_dir: &Path,
    stream: &str,
    count: Option<u64>,
    interval_ms: u64,
    json: bool,
) -> ExitCode {
    use std::sync::atomic::Ordering;
    use syncra_runtime::protocol::ring::{self, RingMap};
    let client = match ControlClient::connect(run_dir).await {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let (view, fd) = match client.tap(stream).await {
        Ok(t) => t,
        Err(e) => return fail(e),
    };
    let map = match RingMap::map(std::os::fd::AsFd::as_fd(&fd), view.geometry) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("syncra: {e}");
            return ExitCode::FAILURE;
        }
    };
    let bulk = view.type_tag.starts_with("bulk:");
    let state = view.type_tag == syncra_runtime::protocol::world::STATE_TAG;
    if !json {
        println!(
            "tapping {} ({}, {}, {} x {} B) from {}; Ctrl-C to stop",
            view.name,
            view.type_tag,
            view.geometry.policy,
            view.geometry.slot_count,
            view.geometry.slot_size,
            view.producer
        );
    }
    let interval = Duration::from_millis(interval_ms.max(10));
    let h = map.header();
    let mut last_seq = h.published.load(Ordering::Acquire);
    let mut last_t = std::time::Instant::now();
    let mut gaps = 0u64;
    let mut reports = 0u64;
    let poll = Duration::from_millis(5).min(interval);
    loop {
        // Poll often enough to see every slot before the producer reuses it.
        let until = std::time::Instant::now() + interval;
        let mut scanned = last_seq;
        while std::time::Instant::now() < until {
            let published = h.published.load(Ordering::Acquire);
            for seq in (scanned + 1)..=published {
                if ring::was_published(&map, seq) == Some(false) {
                    gaps += 1;
                }
            }
            scanned = scanned.max(published);
            tokio::time::sleep(poll).await;
        }
        let latest = ring::peek_latest(&map, |bytes, _| {
            if bulk {
                let raw = bytes.len().saturating_sub(512);
                serde_json::json!({ "raw_bytes": raw })
            } else if state {
                // A world's durable state: its own format, summed up.
                match syncra_runtime::protocol::world_state::inspect(bytes) {
                    Ok(i) => serde_json::json!({ "tick": i.tick, "entities": i.entities,
                        "input_seq": i.input_seq, "bytes": i.bytes, "format": i.format }),
                    Err(e) => serde_json::json!({ "not_a_state": e.to_string() }),
                }
            } else {
                syncra_runtime::protocol::wire::decode::<serde_json::Value>("stream message", bytes)
                    .unwrap_or_else(|e| serde_json::json!({ "undecodable": e.to_string() }))
            }
        });
        let published = h.published.load(Ordering::Acquire);
        let now = std::time::Instant::now();
        let rate =
            published.saturating_sub(last_seq) as f64 / now.duration_since(last_t).as_secs_f64();
        last_seq = published;
        last_t = now;
        let report = TapReport {
            stream: view.name.clone(),
            seq: published,
            rate_hz: rate,
            age_ms: latest
                .as_ref()
                .map(|(m, _)| ring::monotonic_ns().saturating_sub(m.publish_ns) as f64 / 1e6),
            gaps,
            producer_incarnation: h.producer_incarnation.load(Ordering::Relaxed),
            producer_live: h.producer_live.load(Ordering::Relaxed) != 0,
            value: latest.map(|(_, v)| v).unwrap_or(serde_json::Value::Null),
        };
        if json {
            println!("{}", serde_json::to_string(&report).unwrap_or_default());
        } else {
            let value = shorten(&report.value.to_string(), 300);
            println!(
                "seq {:>8}  {:>7.1}/s  age {}  gaps {}  producer #{}{}\n  latest: {value}",
                report.seq,
                report.rate_hz,
                report
                    .age_ms
                    .map(|l| format!("{l:.3} ms"))
                    .unwrap_or_else(|| "-".into()),
                report.gaps,
                report.producer_incarnation,
                if report.producer_live { "" } else { " (down)" },
            );
        }
        reports += 1;
        if count.is_some_and(|c| reports >= c) {
            return ExitCode::SUCCESS;
        }
    }
}

/// A figure's value as people write it: `1234`, `59.83`, `0.0012`.
fn figure_value(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else if v.abs() >= 0.01 {
        format!("{v:.2}")
    } else {
        format!("{v:.3e}")
    }
}

/// `text` cut to at most `max` bytes, on a character boundary, marked with ` …` when cut.
fn shorten(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{} …", &text[..end])
}

fn human_ms(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0 => format!("{ms}ms"),
        1..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

fn print_status(r: &StatusReport) {
    let rt = &r.runtime;
    println!(
        "syncra {} (pid {}), up {}{}",
        rt.version,
        rt.pid,
        human_ms(rt.uptime_ms),
        if rt.shutting_down {
            ", shutting down"
        } else {
            ""
        }
    );
    if let Some(url) = &rt.dashboard {
        println!("dashboard: {url} (`syncra dashboard` prints the link with its token)");
    }
    println!(
        "{:<22} {:<7} {:<9} {:>8} {:>4} {:>8} {:>8} {:>9} {:>8}  LAST EXIT / DETAIL",
        "NODE", "KIND", "STATE", "PID", "INC", "RESTARTS", "UPTIME", "TICK", "ENTITIES"
    );
    let dash = || "-".to_owned();
    for n in &r.nodes {
        let NodeView {
            name,
            kind,
            host,
            pid,
            state,
            incarnation,
            restarts,
            uptime_ms,
            last_exit,
            tick,
            entities,
            detail,
            spare_pid,
            note: said,
            ..
        } = n;
        let last = last_exit.as_ref().map(|e| {
            let how = e
                .signal
                .clone()
                .or_else(|| e.code.map(|c| format!("code {c}")))
                .unwrap_or_default();
            if how.is_empty() {
                e.reason.to_string()
            } else {
                format!("{} ({how})", e.reason)
            }
        });
        let spare = spare_pid.map(|p| format!("warm spare pid {p}"));
        let note = [said.clone(), last, detail.clone(), spare]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join("; ");
        let shown = match host {
            Some(host) => format!("{name}@{host}"),
            None => name.to_string(),
        };
        println!(
            "{:<22} {:<7} {:<9} {:>8} {:>4} {:>8} {:>8} {:>9} {:>8}  {}",
            shown,
            kind.to_string(),
            state.to_string(),
            pid.map(|p| p.to_string()).unwrap_or_else(dash),
            incarnation,
            restarts,
            uptime_ms.map(human_ms).unwrap_or_else(dash),
            tick.map(|t| t.to_string()).unwrap_or_else(dash),
            entities.map(|e| e.to_string()).unwrap_or_else(dash),
            if note.is_empty() { "-".into() } else { note },
        );
    }
    let with_figures: Vec<&NodeView> = r.nodes.iter().filter(|n| !n.figures.is_empty()).collect();
    if !with_figures.is_empty() {
        println!("\nFIGURES");
        for n in with_figures {
            let figures: Vec<String> = n
                .figures
                .iter()
                .map(|f| format!("{} {}", f.name, figure_value(f.value)))
                .collect();
            println!("{:<22} {}", n.name.to_string(), figures.join(", "));
        }
    }
    let partial: Vec<&NodeView> = r
        .nodes
        .iter()
        .filter(|n| {
            n.sandbox
                .as_ref()
                .is_some_and(|s| !s.not_enforced.is_empty())
        })
        .collect();
    if !partial.is_empty() {
        println!("\nSANDBOX NOT ENFORCED HERE (`syncra status --json` for what is)");
        for n in partial {
            if let Some(s) = &n.sandbox {
                println!("{:<22} {}", n.name.to_string(), s.not_enforced.join("; "));
            }
        }
    }
    let with_streams: Vec<&NodeView> = r
        .nodes
        .iter()
        .filter(|n| !n.produces.is_empty() || !n.consumes.is_empty())
        .collect();
    if !with_streams.is_empty() {
        println!("\nSTREAMS (`syncra streams` for rates and drops)");
        for n in with_streams {
            println!(
                "{:<22} produces: {}  consumes: {}",
                n.name.to_string(),
                if n.produces.is_empty() {
                    "-".into()
                } else {
                    n.produces.join(", ")
                },
                if n.consumes.is_empty() {
                    "-".into()
                } else {
                    n.consumes.join(", ")
                },
            );
        }
    }
}

async fn crashes(run_dir: &Path, node: Option<String>, limit: usize, json: bool) -> ExitCode {
    match request(run_dir, ControlRequest::Crashes { node, limit }).await {
        Ok(ControlReply::Crashes(list)) => {
            let unwritten = list.iter().filter(|c| c.not_written.is_some()).count();
            if unwritten > 0 {
                eprintln!(
                    "syncra: {unwritten} of these crash records could not be written to disk; they are kept in memory (see `not_written`)"
                );
            }
            if json {
                let records: Vec<&CrashEntry> = list.iter().collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(&records).unwrap_or_default()
                );
            } else if list.is_empty() {
                println!("no crashes this session");
            } else {
                for c in &list {
                    let r = &c.record;
                    let how = r
                        .signal
                        .clone()
                        .or_else(|| r.exit_code.map(|x| format!("code {x}")))
                        .unwrap_or_default();
                    let node = match &r.host {
                        Some(host) => format!("{}@{host}", r.node),
                        None => r.node.to_string(),
                    };
                    println!(
                        "{}  {:<20} {:<15} {how:<10} {}",
                        r.timestamp,
                        node,
                        r.reason.to_string(),
                        r.detail
                    );
                    if let Some(p) = &r.panic {
                        println!(
                            "    panic: {} at {}",
                            p.message,
                            p.location.as_deref().unwrap_or("?")
                        );
                    }
                    if let Some(d) = &r.dump {
                        print_dump(d);
                    }
                    println!(
                        "    decision: {} (it ran {})",
                        r.decision,
                        syncra_runtime::protocol::crash::human_duration(r.ran_ms)
                    );
                    match &c.not_written {
                        None => println!("    record: {}", c.path),
                        Some(why) => println!("    record: not written to {}: {why}", c.path),
                    }
                }
            }
            ExitCode::SUCCESS
        }
        Ok(other) => fail(ClientError::Unexpected(format!("{other:?}"))),
        Err(e) => fail(e),
    }
}

/// A crash record's minidump and its crashing thread's stack.
fn print_dump(d: &syncra_runtime::protocol::crash::DumpInfo) {
    match &d.path {
        Some(p) => println!(
            "    minidump: {p} ({} KiB, written in {} ms)",
            d.bytes.div_ceil(1024),
            d.write_ms
        ),
        None => println!("    minidump: none"),
    }
    if let Some(e) = &d.error {
        println!("    minidump: {e}");
    }
    if let Some(c) = &d.crash {
        match &d.thread {
            Some(t) => println!("    crash: {c} on thread `{t}`"),
            None => println!("    crash: {c}"),
        }
    }
    if !d.stack.is_empty() {
        println!("    stack:");
        for (i, f) in d.stack.iter().enumerate() {
            println!("      #{i:<2} {f}");
        }
    }
}

/// `syncra logs NODE`: the last `lines` lines of its current (or last) incarnation's log, and
/// with `follow` what it writes next (a restart moves on to the next incarnation's log).
async fn logs(run_dir: &Path, name: &str, lines: usize, follow: bool) -> ExitCode {
    let log_file = |report: &StatusReport| -> Result<Option<PathBuf>, String> {
        let node = report.node(name).ok_or_else(|| {
            let names: Vec<String> = report.nodes.iter().map(|n| n.name.to_string()).collect();
            format!("no node `{name}`; the nodes are {}", names.join(", "))
        })?;
        Ok(node.log_file.as_ref().map(PathBuf::from))
    };
    let status = || async {
        match request(run_dir, ControlRequest::Status).await {
            Ok(ControlReply::Status(report)) => Ok(report),
            Ok(other) => Err(ClientError::Unexpected(format!("{other:?}"))),
            Err(e) => Err(e),
        }
    };
    let report = match status().await {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    let mut path = match log_file(&report) {
        Ok(Some(p)) => p,
        Ok(None) => {
            eprintln!("syncra: {name} has not run yet: no log");
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("syncra: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("syncra: {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    };
    let text = String::from_utf8_lossy(&text);
    let all: Vec<&str> = text.lines().collect();
    println!("==> {} <==", path.display());
    for l in &all[all.len().saturating_sub(lines)..] {
        println!("{l}");
    }
    if !follow {
        return ExitCode::SUCCESS;
    }
    let mut offset = text.len() as u64;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if let Ok(Ok(Some(now))) = status().await.map(|r| log_file(&r))
            && now != path
        {
            path = now;
            offset = 0;
            println!("==> {} <==", path.display());
        }
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        if (bytes.len() as u64) > offset {
            print!("{}", String::from_utf8_lossy(&bytes[offset as usize..]));
            offset = bytes.len() as u64;
        }
    }
}

fn describe(ev: &LifecycleEvent) -> String {
    let what = match &ev.what {
        EventKind::Spawned => "spawned".to_owned(),
        EventKind::Up { startup_ms } => format!("up after {startup_ms:.1} ms"),
        EventKind::Hung { silent_ms } => format!("hung: silent for {silent_ms} ms"),
        EventKind::Down { exit } => {
            let how = exit
                .signal
                .clone()
                .or_else(|| exit.code.map(|c| format!("code {c}")))
                .unwrap_or_default();
            if how.is_empty() {
                format!("down: {}", exit.reason)
            } else {
                format!("down: {} ({how})", exit.reason)
            }
        }
        EventKind::Restarting { delay_ms, cause } => {
            format!("restarting in {delay_ms} ms: {cause}")
        }
        EventKind::Failed { reason, message } => format!("failed ({reason}): {message}"),
        EventKind::Stopped => "stopped".to_owned(),
    };
    let pid = ev.pid.map(|p| format!(" pid {p}")).unwrap_or_default();
    format!(
        "{} {}#{}{pid}: {what}",
        humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(ev.unix_ms)),
        ev.node,
        ev.incarnation
    )
}

async fn events(run_dir: &Path, json: bool) -> ExitCode {
    let mut stream = match ControlClient::connect(run_dir).await {
        Ok(c) => match c.subscribe().await {
            Ok(s) => s,
            Err(e) => return fail(e),
        },
        Err(e) => return fail(e),
    };
    loop {
        match stream.next().await {
            Ok(ev) if json => println!("{}", serde_json::to_string(&ev).unwrap_or_default()),
            Ok(ev) => println!("{}", describe(&ev)),
            Err(ClientError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                println!("the runtime has stopped");
                return ExitCode::SUCCESS;
            }
            Err(e) => return fail(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shorten_cuts_on_a_character_boundary() {
        let text = "é".repeat(200); // 400 bytes, two per character
        let cut = shorten(&text, 301);
        assert!(cut.ends_with(" …"), "{cut}");
        assert_eq!(cut.trim_end_matches(" …").len(), 300);
        assert_eq!(shorten("short", 300), "short");
    }
}
