//! The runtime embedded in a host application: started from a config built in code, driven
//! through the API, observed through events and hook callbacks.

use std::sync::{Arc, Mutex};
use syncra_integration_tests::{PATIENCE, workspace_bin};
use syncra_protocol::NodeState;
use syncra_protocol::status::EventKind;
use syncra_runtime::config::{HookPoint, SyncraConfig};
use syncra_runtime::{RuntimeBuilder, ShutdownCause};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_application_drives_the_supervisor() {
    let scratch = tempfile::tempdir().unwrap();
    let mut config = SyncraConfig::default();
    config.runtime.watch_interval_ms = 250;
    config.runtime.run_dir = Some(scratch.path().join("run"));
    config.runtime.log_dir = scratch.path().join("logs");
    config.worlds.count = Some(2);
    config.worlds.defaults.entities = Some(16);

    let ready_calls = Arc::new(Mutex::new(Vec::new()));
    let seen = ready_calls.clone();
    let bin_dir = workspace_bin("syncra-world").parent().unwrap().to_owned();
    let runtime = RuntimeBuilder::new(&config)
        .bin_dir(bin_dir)
        .hook(HookPoint::AfterReady, move |ctx| {
            seen.lock()
                .unwrap()
                .push((ctx.node.to_string(), ctx.incarnation, ctx.pid))
        })
        .start()
        .await
        .expect("start");
    let status = runtime.wait_ready(PATIENCE).await.expect("all ready");
    let mut events = runtime.subscribe();
    assert_eq!(status.nodes.len(), 2);

    runtime.restart("world/main-2").await.expect("restart");
    let mut seen_kinds = Vec::new();
    loop {
        let ev = tokio::time::timeout(PATIENCE, events.recv())
            .await
            .expect("an event")
            .expect("the channel");
        // The first incarnation's `up` may still be on its way: the state changes before the
        // event is sent, and we subscribed after seeing the state.
        if ev.node.as_str() != "world/main-2"
            || (ev.incarnation == 1 && matches!(ev.what, EventKind::Up { .. }))
        {
            continue;
        }
        seen_kinds.push(match ev.what {
            EventKind::Spawned => "spawned",
            EventKind::Up { .. } => "up",
            EventKind::Down { .. } => "down",
            EventKind::Restarting { .. } => "restarting",
            _ => "other",
        });
        if ev.incarnation == 2 && matches!(ev.what, EventKind::Up { .. }) {
            break;
        }
    }
    assert_eq!(
        seen_kinds,
        ["down", "restarting", "spawned", "up"],
        "the restart, as events"
    );

    let after = runtime.status();
    let n = after.node("world/main-2").unwrap();
    assert_eq!((n.state, n.incarnation), (NodeState::Ready, 2));
    assert_eq!(after.node("world/main").unwrap().incarnation, 1);

    let unknown = runtime.restart("world/none").await.unwrap_err();
    assert!(
        unknown.message.contains("no node is called `world/none`"),
        "{unknown}"
    );

    let report = runtime.shutdown(ShutdownCause::Requested).await;
    assert_eq!(report.exit_code(), 0);
    assert!(report.killed.is_empty(), "{report:?}");
    assert!(
        runtime
            .status()
            .nodes
            .iter()
            .all(|n| n.pid.is_none() && n.state == NodeState::Stopped)
    );

    // The after_ready callback ran for both worlds and for the new incarnation (it runs in
    // the background; shutdown waited for it).
    let calls = ready_calls.lock().unwrap().clone();
    assert!(
        calls
            .iter()
            .any(|(n, inc, pid)| n == "world/main-2" && *inc == 2 && pid.is_some()),
        "{calls:?}"
    );
    assert!(calls.iter().any(|(n, _, _)| n == "world/main"), "{calls:?}");
}
