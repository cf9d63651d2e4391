//! Lifecycle hooks: shell commands from config, and Rust callbacks from an embedder, run at
//! before-start, after-ready, on-crash, on-give-up and after-stop.
//!
//! A hook runs as `/bin/sh -c <command>` through the one spawn path, with `SYNCRA_*`
//! variables describing the event ([`HookContext::env`]). It has a timeout, after which it is
//! killed. A failing or slow hook is logged and never blocks supervision beyond its timeout.
//! Global hooks (`[hooks]`) run first, then the node's own, then embedder callbacks.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use syncra_config::{HookPoint, Hooks};
use syncra_protocol::crash::Reason;
use syncra_protocol::{NodeKind, NodeName};
use tokio::io::AsyncReadExt;

use crate::spawn::{SpawnSpec, Spawner};

/// Most bytes of a hook's output logged.
const MAX_HOOK_OUTPUT: usize = 8 * 1024;

/// Read `r` to its end, keeping the first [`MAX_HOOK_OUTPUT`] bytes and draining the rest
/// (a hook blocked on a full pipe would look like a hang).
async fn keep_head(r: &mut (impl tokio::io::AsyncRead + Unpin), head: &mut Vec<u8>) {
    let _ = (&mut *r)
        .take(MAX_HOOK_OUTPUT as u64)
        .read_to_end(head)
        .await;
    let _ = tokio::io::copy(r, &mut tokio::io::sink()).await;
}

/// What a hook is told about the event.
#[derive(Debug, Clone)]
pub struct HookContext {
    /// The lifecycle point.
    pub point: HookPoint,
    /// The node.
    pub node: NodeName,
    /// Driver or world.
    pub kind: NodeKind,
    /// The incarnation concerned (for before-start: the one about to be spawned).
    pub incarnation: u64,
    /// Its pid, when it has one.
    pub pid: Option<u32>,
    /// Its exit code, when it exited.
    pub exit_code: Option<i32>,
    /// The signal that ended it (`SIGKILL`), when one did.
    pub signal: Option<String>,
    /// Why it ended, for on-crash, on-give-up and after-stop.
    pub reason: Option<Reason>,
    /// The crash record written for it.
    pub crash_record: Option<PathBuf>,
    /// Restarts of the node so far.
    pub restarts: u64,
    /// The supervisor's decision, in words.
    pub decision: Option<String>,
}

impl HookContext {
    /// The environment a hook command runs with: `SYNCRA_HOOK`, `SYNCRA_NODE`,
    /// `SYNCRA_NODE_KIND`, `SYNCRA_INCARNATION`, `SYNCRA_RESTARTS`, and when known
    /// `SYNCRA_PID`, `SYNCRA_EXIT_CODE`, `SYNCRA_SIGNAL`, `SYNCRA_REASON`,
    /// `SYNCRA_CRASH_RECORD`, `SYNCRA_DECISION`.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            ("SYNCRA_HOOK".to_owned(), self.point.key().to_owned()),
            ("SYNCRA_NODE".to_owned(), self.node.to_string()),
            ("SYNCRA_NODE_KIND".to_owned(), self.kind.to_string()),
            (
                "SYNCRA_INCARNATION".to_owned(),
                self.incarnation.to_string(),
            ),
            ("SYNCRA_RESTARTS".to_owned(), self.restarts.to_string()),
        ];
        let mut opt = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                env.push((k.to_owned(), v));
            }
        };
        opt("SYNCRA_PID", self.pid.map(|p| p.to_string()));
        opt("SYNCRA_EXIT_CODE", self.exit_code.map(|c| c.to_string()));
        opt("SYNCRA_SIGNAL", self.signal.clone());
        opt("SYNCRA_REASON", self.reason.map(|r| r.to_string()));
        opt(
            "SYNCRA_CRASH_RECORD",
            self.crash_record.as_ref().map(|p| p.display().to_string()),
        );
        opt("SYNCRA_DECISION", self.decision.clone());
        env
    }
}

/// A Rust callback run at a hook point (see [`crate::RuntimeBuilder::hook`]).
pub type HookFn = Arc<dyn Fn(&HookContext) + Send + Sync>;

/// Runs hooks. Cheap to clone.
#[derive(Clone)]
pub(crate) struct HookRunner {
    spawner: Spawner,
    global: Hooks,
    callbacks: Arc<Vec<(HookPoint, HookFn)>>,
    extra_env: Arc<Vec<(String, String)>>,
}

impl std::fmt::Debug for HookRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HookRunner")
            .field("global", &self.global)
            .field("callbacks", &self.callbacks.len())
            .finish()
    }
}

impl HookRunner {
    pub(crate) fn new(
        spawner: Spawner,
        global: Hooks,
        callbacks: Vec<(HookPoint, HookFn)>,
        extra_env: Vec<(String, String)>,
    ) -> Self {
        Self {
            spawner,
            global,
            callbacks: Arc::new(callbacks),
            extra_env: Arc::new(extra_env),
        }
    }

    /// Whether anything runs at `point` for a node with `own` hooks.
    pub(crate) fn any(&self, point: HookPoint, own: &Hooks) -> bool {
        self.global.get(point).is_some()
            || own.get(point).is_some()
            || self.callbacks.iter().any(|(p, _)| *p == point)
    }

    /// Run every hook for `ctx.point`: global, the node's own (`own`), then callbacks. Each is
    /// bounded by its timeout; failures are logged.
    pub(crate) async fn run(&self, ctx: &HookContext, own: &Hooks) {
        let timeout_of = |h: &Hooks| {
            Duration::from_millis(
                h.timeout_ms
                    .or(self.global.timeout_ms)
                    .unwrap_or(syncra_config::DEFAULT_HOOK_TIMEOUT_MS),
            )
        };
        for (hooks, scope) in [(&self.global, "global"), (own, "node")] {
            if let Some(cmd) = hooks.get(ctx.point) {
                self.run_command(ctx, cmd, scope, timeout_of(hooks)).await;
            }
        }
        for (point, f) in self.callbacks.iter() {
            if *point != ctx.point {
                continue;
            }
            let (f, c) = (f.clone(), ctx.clone());
            let timeout = timeout_of(own);
            match tokio::time::timeout(timeout, tokio::task::spawn_blocking(move || f(&c))).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(node = %ctx.node, hook = %ctx.point, error = %e, "hook callback panicked")
                }
                Err(_) => {
                    tracing::warn!(node = %ctx.node, hook = %ctx.point, timeout_ms = timeout.as_millis() as u64, "hook callback timed out; supervision goes on")
                }
            }
        }
    }

    async fn run_command(&self, ctx: &HookContext, cmd: &str, scope: &str, timeout: Duration) {
        let mut env = ctx.env();
        env.extend(self.extra_env.iter().cloned());
        let spec = SpawnSpec {
            program: PathBuf::from("/bin/sh"),
            args: vec!["-c".into(), cmd.to_owned()],
            env,
            fds: Vec::new(),
            capture_output: true,
            sandbox: None,
        };
        let started = std::time::Instant::now();
        let spawned = match self.spawner.spawn(spec).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(node = %ctx.node, hook = %ctx.point, scope, error = %e, "hook could not be started");
                return;
            }
        };
        let (mut stdout, mut stderr, process) = (spawned.stdout, spawned.stderr, spawned.process);
        let run = async {
            let mut out = Vec::new();
            let mut err = Vec::new();
            let read_out = async {
                if let Some(s) = stdout.as_mut() {
                    keep_head(s, &mut out).await;
                }
            };
            let read_err = async {
                if let Some(s) = stderr.as_mut() {
                    keep_head(s, &mut err).await;
                }
            };
            // Waiting goes on beside the reads: when the hook ends, what it left running is
            // killed with it, which closes the pipes those leftovers held.
            let ((), (), status) = tokio::join!(read_out, read_err, process.wait());
            (status, out, err)
        };
        match tokio::time::timeout(timeout, run).await {
            Ok((Ok(status), out, err)) => {
                let output = String::from_utf8_lossy(&[out, err].concat())
                    .trim_end()
                    .to_owned();
                if status == crate::spawn::Exit::Code(0) {
                    tracing::info!(node = %ctx.node, hook = %ctx.point, scope, ms = started.elapsed().as_millis() as u64, output = %output, "hook ran");
                } else {
                    tracing::warn!(node = %ctx.node, hook = %ctx.point, scope, status = ?status, output = %output, command = cmd, "hook failed; supervision goes on");
                }
            }
            Ok((Err(e), _, _)) => {
                tracing::warn!(node = %ctx.node, hook = %ctx.point, scope, error = %e, "waiting for the hook failed")
            }
            Err(_) => {
                // Dropping the wait killed the hook and what it started.
                tracing::warn!(node = %ctx.node, hook = %ctx.point, scope, timeout_ms = timeout.as_millis() as u64, command = cmd, "hook timed out and was killed; supervision goes on");
            }
        }
    }
}
