//! Embedding the Syncra runtime in a host application.
//!
//! Starts a supervisor from a config built in code (two worlds and a driver whose executable
//! does not exist), prints the status, restarts a world through the API, prints the lifecycle
//! events that follow (up, down, restarting, failed) and shuts down.
//!
//! Run it with `just embed`, or `cargo build -p syncra-world && cargo run -p syncra-runtime --example embed`.

use std::time::Duration;

use syncra_runtime::config::{DriverEntry, HookPoint, NodeSpec, SyncraConfig};
use syncra_runtime::protocol::status::{EventKind, LifecycleEvent};
use syncra_runtime::{RuntimeBuilder, ShutdownCause};

fn describe(ev: &LifecycleEvent) -> String {
    let what = match &ev.what {
        EventKind::Spawned => "spawned".to_owned(),
        EventKind::Up { startup_ms } => format!("up ({startup_ms:.1} ms from spawn)"),
        EventKind::Hung { silent_ms } => format!("hung ({silent_ms} ms silent)"),
        EventKind::Down { exit } => format!("down ({})", exit.reason),
        EventKind::Restarting { delay_ms, cause } => {
            format!("restarting in {delay_ms} ms ({cause})")
        }
        EventKind::Failed { message, .. } => format!("failed: {message}"),
        EventKind::Stopped => "stopped".to_owned(),
    };
    format!("{}#{} {what}", ev.node, ev.incarnation)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // A config built in code: two worlds, and a custom driver that cannot start.
    let scratch = tempfile::tempdir()?;
    let mut config = SyncraConfig::default();
    config.runtime.watch_interval_ms = 200;
    config.runtime.run_dir = Some(scratch.path().join("run"));
    config.runtime.log_dir = scratch.path().join("logs");
    config.worlds.count = Some(2);
    config.drivers.set(
        "telemetry",
        DriverEntry::Spec(Box::new(NodeSpec {
            command: Some("/opt/nowhere/telemetry".into()),
            ..NodeSpec::default()
        })),
    );

    // syncra-world is found next to this example's own directory (target/<profile>/).
    let exe = std::env::current_exe()?;
    let bin_dir = exe
        .parent()
        .and_then(|examples| examples.parent())
        .map(|d| d.to_owned())
        .unwrap_or_default();
    let runtime = RuntimeBuilder::new(&config)
        .bin_dir(bin_dir)
        .hook(HookPoint::OnGiveUp, |ctx| {
            println!("[hook] gave up on {} ({:?})", ctx.node, ctx.reason)
        })
        .start()
        .await?;
    let mut events = runtime.subscribe();

    let status = match runtime.wait_ready(Duration::from_secs(10)).await {
        Ok(s) | Err(s) => s,
    };
    println!("status:");
    for n in &status.nodes {
        println!(
            "  {:<14} {:<7} {:<8} pid {:?}  {}",
            n.name.to_string(),
            n.kind.to_string(),
            n.state.to_string(),
            n.pid,
            n.detail.clone().unwrap_or_default()
        );
    }

    println!("events so far:");
    while let Ok(ev) = events.try_recv() {
        println!("  {}", describe(&ev));
    }

    println!(
        "restarting world/main-2 through the API: {}",
        runtime.restart("world/main-2").await?
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while let Ok(Ok(ev)) = tokio::time::timeout_at(deadline, events.recv()).await {
        println!("  {}", describe(&ev));
        if ev.node.as_str() == "world/main-2"
            && ev.incarnation == 2
            && matches!(ev.what, EventKind::Up { .. })
        {
            break;
        }
    }

    let report = runtime.shutdown(ShutdownCause::Requested).await;
    println!(
        "shut down in {} ms, exit code {}",
        report.took.as_millis(),
        report.exit_code()
    );
    Ok(())
}
