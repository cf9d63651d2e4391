//! What a reload changes: two plans compared, node by node, as a pure function. `syncra
//! check-config --diff` prints it; `syncra reload` (and SIGHUP) applies it — removed nodes
//! stop in reverse start order, changed nodes restart one at a time, new nodes start in
//! dependency order, group policies change in place, and nothing else is touched.
//!
//! What only a new runtime can take (its directories, stream limits, the hosts it knows) is
//! listed, not applied: a reload says so instead of pretending.

use syncra_protocol::NodeName;

use crate::plan::{GroupPolicy, NodePlan, Plan};

/// One node whose own config changed, and which parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeChange {
    /// The node.
    pub node: NodeName,
    /// What changed (`command`, `settings`, `sandbox`, …), in a fixed order.
    pub what: Vec<&'static str>,
}

/// The difference between the running plan and a new one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlanDiff {
    /// Nodes only the new plan has, in its start order.
    pub added: Vec<NodeName>,
    /// Nodes only the old plan has, in stop order (the reverse of its start order).
    pub removed: Vec<NodeName>,
    /// Nodes whose own config changed, in the new plan's start order.
    pub changed: Vec<NodeChange>,
    /// Group policies that changed (`drivers: intensity 5 → 3`): applied in place, nothing
    /// restarts for them.
    pub policies: Vec<String>,
    /// What changed that only a new runtime takes (`runtime.log_dir`): not applied.
    pub not_live: Vec<String>,
}

impl PlanDiff {
    /// Whether the new plan asks for nothing the running one does not do.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.removed.is_empty()
            && self.changed.is_empty()
            && self.policies.is_empty()
            && self.not_live.is_empty()
    }

    /// One line per change, as `syncra reload` and `check-config --diff` print them.
    pub fn lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        for n in &self.removed {
            out.push(format!("- {n}: removed (stopped)"));
        }
        for c in &self.changed {
            out.push(format!(
                "~ {}: {} changed (restarted alone)",
                c.node,
                c.what.join(", ")
            ));
        }
        for n in &self.added {
            out.push(format!("+ {n}: new (started)"));
        }
        for p in &self.policies {
            out.push(format!("~ {p} (applied in place, nothing restarts)"));
        }
        for k in &self.not_live {
            out.push(format!(
                "! {k} changed: only a new runtime takes it (not applied)"
            ));
        }
        if out.is_empty() {
            out.push("no change".to_owned());
        }
        out
    }
}

/// What changed between two plans.
pub fn diff(old: &Plan, new: &Plan) -> PlanDiff {
    let old_nodes: Vec<&NodePlan> = old.nodes().collect();
    let new_nodes: Vec<&NodePlan> = new.nodes().collect();
    let find = |nodes: &[&NodePlan], name: &NodeName| nodes.iter().position(|n| n.name == *name);
    let mut d = PlanDiff::default();
    for n in &new_nodes {
        match find(&old_nodes, &n.name) {
            None => d.added.push(n.name.clone()),
            Some(i) => {
                let what = node_changes(old_nodes[i], n);
                if !what.is_empty() {
                    d.changed.push(NodeChange {
                        node: n.name.clone(),
                        what,
                    });
                }
            }
        }
    }
    for n in old_nodes.iter().rev() {
        if find(&new_nodes, &n.name).is_none() {
            d.removed.push(n.name.clone());
        }
    }
    for (label, a, b) in [
        ("drivers", &old.drivers.policy, &new.drivers.policy),
        ("worlds", &old.worlds.policy, &new.worlds.policy),
    ] {
        d.policies.extend(policy_changes(label, a, b));
    }
    let (a, b) = (&old.runtime, &new.runtime);
    for (key, same) in [
        (
            "runtime.watch_interval_ms",
            a.watch_interval == b.watch_interval,
        ),
        (
            "runtime.auto_restart_crashed_processes",
            a.auto_restart == b.auto_restart,
        ),
        ("runtime.abort_grace_ms", a.abort_grace == b.abort_grace),
        ("runtime.log_dir", a.log_dir == b.log_dir),
        ("runtime.crash_dir", a.crash_dir == b.crash_dir),
        ("runtime.run_dir", a.run_dir == b.run_dir),
        ("runtime.state_dir", a.state_dir == b.state_dir),
        ("supervisor.on_give_up", a.on_give_up == b.on_give_up),
        ("streams", a.streams == b.streams),
        ("runtime.direct_links", a.direct_links == b.direct_links),
        ("runtime.max_links", a.max_links == b.max_links),
        ("runtime.crash_dumps", a.dumps == b.dumps),
        ("dashboard", a.dashboard == b.dashboard),
        ("hooks", old.hooks == new.hooks),
        ("hosts", old.hosts == new.hosts),
    ] {
        if !same {
            d.not_live.push(key.to_owned());
        }
    }
    d
}

/// The parts of a node's own config that differ.
fn node_changes(a: &NodePlan, b: &NodePlan) -> Vec<&'static str> {
    let mut what = Vec::new();
    let mut check = |name, same: bool| {
        if !same {
            what.push(name);
        }
    };
    check("command", a.command == b.command);
    check("args", a.args == b.args);
    check("env", a.env == b.env);
    check("settings", a.settings == b.settings && a.world == b.world);
    check("restart", a.restart == b.restart);
    check("depends_on", a.depends_on == b.depends_on);
    check("heartbeat", a.heartbeat == b.heartbeat);
    check(
        "timeouts",
        a.start_timeout == b.start_timeout && a.stop_timeout == b.stop_timeout,
    );
    check("hooks", a.hooks == b.hooks);
    check("sandbox", a.sandbox == b.sandbox);
    check(
        "host",
        a.host == b.host && a.fallback_host == b.fallback_host,
    );
    check("rollback", a.rollback == b.rollback);
    what
}

/// A group's policy changes, in words.
fn policy_changes(label: &str, a: &GroupPolicy, b: &GroupPolicy) -> Vec<String> {
    let mut out = Vec::new();
    let mut say = |what: &str, from: String, to: String| {
        if from != to {
            out.push(format!("{label}: {what} {from} → {to}"));
        }
    };
    say("strategy", a.strategy.to_string(), b.strategy.to_string());
    say(
        "intensity",
        a.intensity.to_string(),
        b.intensity.to_string(),
    );
    say(
        "period",
        format!("{} ms", a.period.as_millis()),
        format!("{} ms", b.period.as_millis()),
    );
    say(
        "backoff",
        format!("{:?}", a.backoff),
        format!("{:?}", b.backoff),
    );
    say(
        "stable_after",
        format!("{} ms", a.stable_after.as_millis()),
        format!("{} ms", b.stable_after.as_millis()),
    );
    say(
        "warm_spare",
        a.warm_spare.to_string(),
        b.warm_spare.to_string(),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Loader, Plan};

    fn plan(text: &str) -> Plan {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).unwrap();
        Loader::new()
            .without_env()
            .file(&path)
            .load()
            .unwrap_or_else(|e| panic!("{e}"))
            .plan
    }

    const BASE: &str =
        "[drivers.a]\ncommand = \"x\"\n[drivers.b]\ncommand = \"y\"\n[worlds]\nnames = [\"one\"]\n";

    #[test]
    fn the_same_config_is_no_change() {
        let d = diff(&plan(BASE), &plan(BASE));
        assert!(d.is_empty(), "{d:?}");
        assert_eq!(d.lines(), ["no change"]);
    }

    #[test]
    fn nodes_added_removed_and_changed_are_named_in_the_order_they_are_applied() {
        let new = "[drivers.b]\ncommand = \"y2\"\nsettings = { k = 1 }\n[drivers.c]\ncommand = \"z\"\n[worlds]\nnames = [\"one\", \"two\"]\nentities = 16\n";
        let d = diff(&plan(BASE), &plan(new));
        assert_eq!(d.removed, [NodeName::driver("a")]);
        assert_eq!(
            d.added,
            [NodeName::driver("c"), NodeName::world("two")],
            "new ones in start order: drivers, then worlds"
        );
        let changed: Vec<(String, Vec<&str>)> = d
            .changed
            .iter()
            .map(|c| (c.node.to_string(), c.what.clone()))
            .collect();
        assert_eq!(
            changed,
            [
                ("b".to_owned(), vec!["command", "settings"]),
                ("world/main".to_owned(), vec!["settings"]),
                ("world/one".to_owned(), vec!["settings"]),
            ]
        );
        assert!(d.not_live.is_empty(), "{d:?}");
        assert_eq!(d.lines()[0], "- a: removed (stopped)");
    }

    #[test]
    fn what_only_a_new_runtime_takes_is_listed_and_policies_change_in_place() {
        let new = format!(
            "{BASE}[runtime]\nlog_dir = \"elsewhere\"\n[supervisor]\nintensity = 9\n[supervisor.worlds]\nstrategy = \"one_for_all\"\n"
        );
        let d = diff(&plan(BASE), &plan(&new));
        assert_eq!(d.not_live, ["runtime.log_dir", "runtime.crash_dir"]);
        assert_eq!(
            d.policies,
            [
                "drivers: intensity 5 → 9",
                "worlds: strategy one_for_one → one_for_all",
                "worlds: intensity 5 → 9",
            ]
        );
        assert!(d.changed.is_empty() && d.added.is_empty() && d.removed.is_empty());
    }
}
