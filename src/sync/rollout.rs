//! Progressive rollout across workspaces (`syncPolicy.rollout`, issue 26):
//! which workspaces a revision changes, and in which step each one gets it.
//!
//! Pure: a plan and the workspaces' labels in, a [`RolloutPlan`] out. The
//! order is pilot workspaces first (`pilot` as listed, then those the
//! `selector` matches), then every other one by the SHA-256 of its name: the
//! same tenants are the canaries of every rollout of an environment, and
//! adding or removing a workspace moves no other one.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::declare::model::RolloutPolicy;
use crate::plan::{Action, Plan};

/// What a plan changes, per workspace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changed {
    /// Workspaces with objects to update, or some to create or delete
    /// beside ones that stay.
    pub changed: BTreeSet<String>,
    /// Workspaces every object of which is created: new (onboarding).
    pub added: BTreeSet<String>,
    /// Workspaces every object of which is deleted (offboarding).
    pub removed: BTreeSet<String>,
    /// Objects of no workspace (the layers' `resources/`) that change.
    pub shared: usize,
}

/// Sorts each workspace of `plan` by what happens to its objects.
pub fn changed_workspaces(plan: &Plan) -> Changed {
    #[derive(Default)]
    struct Seen {
        created: bool,
        deleted: bool,
        other: bool,
    }
    let mut seen: BTreeMap<&str, Seen> = BTreeMap::new();
    let mut out = Changed::default();
    for c in &plan.changes {
        if c.workspace.is_empty() {
            if c.action != Action::Unchanged {
                out.shared += 1;
            }
            continue;
        }
        let s = seen.entry(&c.workspace).or_default();
        match c.action {
            Action::Create | Action::Adopt => s.created = true,
            Action::Delete => s.deleted = true,
            Action::Update | Action::Unmanaged => s.other = true,
            // An unchanged object makes a create or delete beside it a
            // change of a workspace that stays.
            Action::Unchanged => s.other = true,
        }
    }
    for (ws, s) in seen {
        let ws = ws.to_string();
        match (s.created, s.deleted, s.other) {
            (true, false, false) => {
                out.added.insert(ws);
            }
            (false, true, false) => {
                out.removed.insert(ws);
            }
            _ => {
                out.changed.insert(ws);
            }
        }
    }
    // An unchanged workspace with only unchanged objects is not changed.
    out.changed.retain(|ws| {
        plan.changes
            .iter()
            .any(|c| &*c.workspace == ws.as_str() && c.action != Action::Unchanged)
    });
    out
}

/// One step of a rollout: the share it reaches and the workspaces it adds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStep {
    /// The cumulative share of the rolled-out workspaces reached once this
    /// step is done.
    pub percent: u8,
    pub workspaces: Vec<String>,
}

/// How a revision rolls out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutPlan {
    pub steps: Vec<RolloutStep>,
    /// New and removed workspaces the policy does not hold back: applied
    /// with the first step.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_held_back: Vec<String>,
    /// Objects of no workspace that change: applied with the last step
    /// (the ordinary sync of the whole revision).
    #[serde(skip_serializing_if = "is_zero")]
    pub shared_objects: usize,
    pub pause_between_seconds: u64,
    pub health_deadline_seconds: u64,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// The order workspaces are rolled out in: `pilot` as listed, then those
/// `match_labels` selects (by name), then the rest by the SHA-256 of their
/// names (ties, which do not happen, by name).
pub fn order(
    policy: &RolloutPolicy,
    workspaces: &BTreeSet<String>,
    labels: &BTreeMap<String, BTreeMap<String, String>>,
) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(workspaces.len());
    let mut placed: BTreeSet<&str> = BTreeSet::new();
    for ws in &policy.pilot {
        if workspaces.contains(ws) && placed.insert(ws) {
            out.push(ws.clone());
        }
    }
    if !policy.match_labels.is_empty() {
        for ws in workspaces {
            let selected = labels
                .get(ws)
                .is_some_and(|l| policy.match_labels.iter().all(|(k, v)| l.get(k) == Some(v)));
            if selected && placed.insert(ws) {
                out.push(ws.clone());
            }
        }
    }
    let mut rest: Vec<([u8; 32], &String)> = workspaces
        .iter()
        .filter(|ws| !placed.contains(ws.as_str()))
        .map(|ws| (Sha256::digest(ws.as_bytes()).into(), ws))
        .collect();
    rest.sort();
    out.extend(rest.into_iter().map(|(_, ws)| ws.clone()));
    out
}

/// Cuts `ordered` into steps: step `p%` reaches the first
/// ceil(p × n / 100) workspaces, and at least one more than the step before;
/// a step with nothing left to add is dropped.
pub fn assign(percents: &[u8], ordered: &[String]) -> Vec<RolloutStep> {
    let n = ordered.len();
    let mut steps = Vec::new();
    let mut reached = 0usize;
    for &p in percents {
        if reached >= n {
            break;
        }
        let share = (usize::from(p.min(100)) * n).div_ceil(100);
        let to = share.max(reached + 1).min(n);
        // The last step takes everything left, whatever it says.
        let to = if Some(&p) == percents.last() { n } else { to };
        steps.push(RolloutStep {
            percent: p,
            workspaces: ordered[reached..to].to_vec(),
        });
        reached = to;
    }
    steps
}

/// How `plan` rolls out under `policy`, or `None` when it does not: it
/// changes at most one workspace the rollout holds back.
pub fn plan_rollout(
    policy: &RolloutPolicy,
    plan: &Plan,
    labels: &BTreeMap<String, BTreeMap<String, String>>,
) -> Option<RolloutPlan> {
    let changed = changed_workspaces(plan);
    let mut rolled = changed.changed.clone();
    let mut not_held_back = Vec::new();
    for (ws, include) in changed
        .added
        .iter()
        .map(|ws| (ws, policy.include_new_workspaces))
        .chain(
            changed
                .removed
                .iter()
                .map(|ws| (ws, policy.include_deletions)),
        )
    {
        if include {
            rolled.insert(ws.clone());
        } else {
            not_held_back.push(ws.clone());
        }
    }
    if rolled.len() < 2 {
        return None;
    }
    let ordered = order(policy, &rolled, labels);
    Some(RolloutPlan {
        steps: assign(&policy.steps, &ordered),
        not_held_back,
        shared_objects: changed.shared,
        pause_between_seconds: policy.pause_between.as_secs(),
        health_deadline_seconds: policy.health_deadline.as_secs(),
    })
}

/// A duration as the policy is written: `10m`, `1h30m`, `45s`, `0s`.
pub fn duration_text(seconds: u64) -> String {
    let (h, m, s) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 || out.is_empty() {
        out.push_str(&format!("{s}s"));
    }
    out
}

/// Where a rollout stands, as `/status`, the inventory's status and the
/// status page show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    pub revision: String,
    /// The step applied last (1-based), of `steps`.
    pub step: usize,
    pub steps: usize,
    pub phase: RolloutPhase,
    /// Workspaces the revision reached and found Healthy.
    pub done: Vec<String>,
    /// Workspaces the revision reached, not Healthy yet.
    pub progressing: Vec<String>,
    /// Workspaces of later steps: they have not seen the revision.
    pub pending: Vec<String>,
    /// Workspaces whose step failed, with why.
    pub failed: BTreeMap<String, String>,
    /// When the next step may start (RFC 3339), once this one is Healthy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_step_at: Option<String>,
    /// A failed step's workspaces whose rollback is not applied yet (tried
    /// again at each reconcile); empty once rolled back.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rolling_back: Vec<String>,
    /// Why that rollback has not been applied yet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollback_error: Option<String>,
}

impl RolloutStatus {
    /// One line, at most about 500 bytes: the inventory's status field and
    /// `tenantsync status`.
    pub fn summary(&self) -> String {
        let short: String = self.revision.chars().take(12).collect();
        let mut out = format!(
            "revision {short} step {}/{} {}: {} Healthy, {} progressing, {} pending, {} failed",
            self.step,
            self.steps,
            self.phase.as_str(),
            self.done.len(),
            self.progressing.len(),
            self.pending.len(),
            self.failed.len(),
        );
        if let Some(at) = &self.next_step_at {
            out.push_str(&format!("; next step at {at}"));
        }
        if !self.failed.is_empty() {
            let names: Vec<String> = self.failed.keys().cloned().collect();
            out.push_str(&format!(" ({})", crate::sync::name_some(&names)));
        }
        if !self.rolling_back.is_empty() {
            out.push_str(&format!(
                "; rolling back {}, not applied yet (tried again at each reconcile)",
                crate::sync::name_some(&self.rolling_back)
            ));
        }
        out.chars().take(500).collect()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub enum RolloutPhase {
    /// The step's workspaces are applied; waiting for them to be Healthy.
    Progressing,
    /// The step is Healthy; waiting for `pauseBetween`.
    Pausing,
    /// Every step applied and Healthy.
    Completed,
    /// A step went Degraded or missed its deadline: the rollout stopped.
    Failed,
    /// Failed, and the step's workspaces were set back to the revision
    /// applied before.
    RolledBack,
}

impl RolloutPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutPhase::Progressing => "Progressing",
            RolloutPhase::Pausing => "Pausing",
            RolloutPhase::Completed => "Completed",
            RolloutPhase::Failed => "Failed",
            RolloutPhase::RolledBack => "RolledBack",
        }
    }
}

/// What a step's workspaces say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StepHealth {
    /// Every object of every workspace Healthy.
    Healthy,
    /// Some still Progressing, within the deadline: the workspaces not
    /// Healthy yet.
    Waiting(Vec<String>),
    /// Degraded, or not Healthy by the deadline: each failed workspace
    /// with why (the first object that is not Healthy).
    Failed(BTreeMap<String, String>),
}

/// Judges the workspaces a rollout reached from the health of their
/// objects (`health`: workspace, object id, status, message), `elapsed`
/// since their step was applied against `deadline`. A Degraded object
/// fails its workspace at once; one still Progressing fails it only
/// past the deadline.
pub fn judge(
    workspaces: &[String],
    health: &[(String, String, crate::sync::health::HealthStatus, String)],
    elapsed: std::time::Duration,
    deadline: std::time::Duration,
) -> StepHealth {
    use crate::sync::health::HealthStatus;
    let reached: BTreeSet<&str> = workspaces.iter().map(String::as_str).collect();
    let mut failed = BTreeMap::new();
    let mut waiting = BTreeSet::new();
    for (ws, id, status, message) in health {
        if !reached.contains(ws.as_str()) {
            continue;
        }
        match status {
            HealthStatus::Healthy => {}
            HealthStatus::Degraded => {
                failed
                    .entry(ws.clone())
                    .or_insert_with(|| format!("{id} is Degraded: {message}"));
            }
            HealthStatus::Progressing if elapsed > deadline => {
                failed.entry(ws.clone()).or_insert_with(|| {
                    format!(
                        "{id} is not Healthy after the health deadline {}: {message}",
                        duration_text(deadline.as_secs())
                    )
                });
            }
            HealthStatus::Progressing => {
                waiting.insert(ws.clone());
            }
        }
    }
    if !failed.is_empty() {
        StepHealth::Failed(failed)
    } else if !waiting.is_empty() {
        StepHealth::Waiting(waiting.into_iter().collect())
    } else {
        StepHealth::Healthy
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::plan::{Change, PLAN_FORMAT_VERSION, Summary};

    fn policy(steps: &[u8]) -> RolloutPolicy {
        RolloutPolicy {
            steps: steps.to_vec(),
            pilot: Vec::new(),
            match_labels: BTreeMap::new(),
            pause_between: Duration::from_secs(600),
            health_deadline: Duration::from_secs(300),
            include_new_workspaces: false,
            include_deletions: false,
            rollback: true,
        }
    }

    fn change(ws: &str, action: Action, name: &str) -> Change {
        Change {
            action,
            api_version: "apps/v1".into(),
            kind: "Deployment".into(),
            namespace: (!ws.is_empty()).then(|| format!("{ws}-prod").into()),
            name: name.into(),
            workspace: ws.into(),
            fields: Vec::new(),
            diff: String::new(),
            note: None,
            heal: None,
            live: None,
        }
    }

    fn plan(changes: Vec<Change>) -> Plan {
        Plan {
            format_version: PLAN_FORMAT_VERSION,
            environment: "prod".into(),
            revision: None,
            summary: Summary::of(&changes),
            changes,
            api_requests: 0,
        }
    }

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("hospital-{i:02}")).collect()
    }

    #[test]
    fn ten_workspaces_at_20_and_100_percent_go_two_then_eight() {
        let steps = assign(&[20, 100], &names(10));
        assert_eq!(steps.len(), 2);
        assert_eq!(steps[0].workspaces, names(10)[..2]);
        assert_eq!(steps[1].workspaces, names(10)[2..]);
    }

    #[test]
    fn shares_round_up_and_every_step_adds_at_least_one_workspace() {
        let sizes = |percents: &[u8], n| -> Vec<usize> {
            assign(percents, &names(n))
                .iter()
                .map(|s| s.workspaces.len())
                .collect()
        };
        assert_eq!(
            sizes(&[10, 50, 100], 3),
            [1, 1, 1],
            "ceil(0.3) = 1, ceil(1.5) = 2"
        );
        assert_eq!(sizes(&[10, 50, 100], 25), [3, 10, 12]);
        assert_eq!(
            sizes(&[1, 2, 3, 100], 2),
            [1, 1],
            "nothing left for two steps"
        );
        assert_eq!(sizes(&[100], 7), [7]);
    }

    #[test]
    fn pilots_come_first_then_the_selected_then_a_stable_hash_order() {
        let all: BTreeSet<String> = names(10).into_iter().collect();
        let mut labels = BTreeMap::new();
        labels.insert(
            "hospital-07".to_string(),
            BTreeMap::from([("ring".to_string(), "canary".to_string())]),
        );
        let mut p = policy(&[20, 100]);
        p.pilot = vec![
            "hospital-05".into(),
            "not-changed".into(),
            "hospital-05".into(),
        ];
        p.match_labels = BTreeMap::from([("ring".to_string(), "canary".to_string())]);
        let ordered = order(&p, &all, &labels);
        assert_eq!(ordered[..2], ["hospital-05", "hospital-07"]);
        assert_eq!(ordered.len(), 10, "each once: {ordered:?}");
        // Without pilots the order depends on the names alone: a workspace
        // more or less moves no other one.
        let plain = order(&policy(&[100]), &all, &BTreeMap::new());
        let mut fewer = all.clone();
        fewer.remove(&plain[0]);
        assert_eq!(order(&policy(&[100]), &fewer, &BTreeMap::new()), plain[1..]);
    }

    #[test]
    fn only_changed_workspaces_roll_out_and_new_or_removed_ones_are_not_held_back() {
        let mut changes = vec![
            change("a", Action::Update, "fhir"),
            change("b", Action::Update, "fhir"),
            change("c", Action::Unchanged, "fhir"),
            change("new", Action::Create, "fhir"),
            change("gone", Action::Delete, "fhir"),
            change("d", Action::Create, "extra"),
            change("d", Action::Unchanged, "fhir"),
            change("", Action::Update, "shared-crd"),
        ];
        let got = changed_workspaces(&plan(changes.clone()));
        assert_eq!(
            got.changed,
            BTreeSet::from(["a".into(), "b".into(), "d".into()])
        );
        assert_eq!(got.added, BTreeSet::from(["new".to_string()]));
        assert_eq!(got.removed, BTreeSet::from(["gone".to_string()]));
        assert_eq!(got.shared, 1);
        let Some(rollout) = plan_rollout(
            &policy(&[50, 100]),
            &plan(changes.clone()),
            &BTreeMap::new(),
        ) else {
            panic!("three workspaces change")
        };
        let rolled: BTreeSet<&String> = rollout.steps.iter().flat_map(|s| &s.workspaces).collect();
        assert_eq!(
            rolled,
            BTreeSet::from([&"a".to_string(), &"b".into(), &"d".into()])
        );
        assert_eq!(rollout.not_held_back, ["new", "gone"]);
        assert_eq!(rollout.shared_objects, 1);
        let mut held = policy(&[50, 100]);
        held.include_new_workspaces = true;
        held.include_deletions = true;
        let Some(all) = plan_rollout(&held, &plan(changes.clone()), &BTreeMap::new()) else {
            panic!("five workspaces")
        };
        assert_eq!(
            all.steps.iter().map(|s| s.workspaces.len()).sum::<usize>(),
            5
        );
        assert!(all.not_held_back.is_empty());
        // One changed workspace: nothing to roll out.
        changes.retain(|c| &*c.workspace == "a");
        assert_eq!(
            plan_rollout(&policy(&[50, 100]), &plan(changes), &BTreeMap::new()),
            None
        );
    }

    #[test]
    fn a_step_is_healthy_waits_or_fails_on_degraded_or_past_its_deadline() {
        use crate::sync::health::HealthStatus::{Degraded, Healthy, Progressing};
        let reached = vec!["a".to_string(), "b".to_string()];
        let h = |ws: &str, status| {
            (
                ws.to_string(),
                format!("Deployment/{ws}-prod/fhir"),
                status,
                "why".to_string(),
            )
        };
        let (early, late) = (Duration::from_secs(5), Duration::from_secs(301));
        let deadline = Duration::from_secs(300);
        let healthy = [h("a", Healthy), h("b", Healthy), h("c", Degraded)];
        assert_eq!(
            judge(&reached, &healthy, early, deadline),
            StepHealth::Healthy,
            "c is not reached"
        );
        let waiting = [h("a", Healthy), h("b", Progressing)];
        assert_eq!(
            judge(&reached, &waiting, early, deadline),
            StepHealth::Waiting(vec!["b".into()])
        );
        let StepHealth::Failed(failed) = judge(&reached, &waiting, late, deadline) else {
            panic!("past the deadline")
        };
        assert!(
            failed["b"].contains("after the health deadline 5m"),
            "{failed:?}"
        );
        let StepHealth::Failed(failed) = judge(
            &reached,
            &[h("a", Degraded), h("b", Progressing)],
            early,
            deadline,
        ) else {
            panic!("degraded")
        };
        assert_eq!(failed.keys().collect::<Vec<_>>(), ["a"]);
        assert!(failed["a"].starts_with("Deployment/a-prod/fhir is Degraded"));
    }

    #[test]
    fn durations_print_as_written() {
        assert_eq!(duration_text(0), "0s");
        assert_eq!(duration_text(600), "10m");
        assert_eq!(duration_text(5400), "1h30m");
        assert_eq!(duration_text(3605), "1h5s");
    }
}
