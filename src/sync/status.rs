//! What the daemon knows about each environment it syncs: the value
//! `GET /status` serializes and the status page (`print::page`) draws.
//! Pure data and the rules that fill it from a plan; the daemon publishes
//! it, nothing here does I/O.

use std::collections::{BTreeMap, VecDeque};

use serde::Serialize;

use crate::plan::{Action, FieldChange, Plan};
use crate::sync::health::Health;

/// Reconciles remembered per environment for the status page's timeline
/// (a bounded ring: the oldest goes when a new one comes).
pub const RECENT_RECONCILES: usize = 30;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub enum SyncStatus {
    #[default]
    Unknown,
    Synced,
    OutOfSync,
    /// A sync of `targetRevision` is running.
    Syncing,
    Failed,
    /// Workspaces a revision changed did not become Healthy by the health
    /// deadline and were re-applied at their last healthy revision
    /// (`syncPolicy.rollback`); the revision is not applied again until a
    /// newer one arrives.
    RolledBack,
}

/// A revision whose changed workspaces did not all become Healthy by the
/// health deadline (Degraded, or still Progressing at it).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FailedHealth {
    pub revision: String,
    /// Each workspace that failed, with why (an object not Healthy a line).
    pub workspaces: BTreeMap<String, Vec<String>>,
    /// Those re-applied at their last healthy revision, each with it.
    pub rolled_back: BTreeMap<String, String>,
    /// Those left as they are: with rollback on, no healthy revision of
    /// theirs is known (or it could not be applied); with it off, all.
    pub left: Vec<String>,
    /// `syncPolicy.rollback` was on.
    pub rollback: bool,
    /// Those to be re-applied at their last healthy revision whose rollback
    /// has not been applied yet (the lock was taken, the apply failed): the
    /// daemon tries again at each reconcile; not `rolled_back` until done.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub rolling_back: BTreeMap<String, String>,
    /// Why the rollback has not been applied yet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollback_error: Option<String>,
}

impl FailedHealth {
    /// What happened, in a few lines, for the log, an Event and status.
    pub fn summary(&self) -> String {
        let mut lines = vec![format!(
            "revision {}: {} workspace(s) did not become Healthy by the health deadline: {}",
            self.revision,
            self.workspaces.len(),
            self.workspaces
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        )];
        for (ws, reasons) in &self.workspaces {
            for r in reasons {
                lines.push(format!("  {ws}: {r}"));
            }
        }
        if !self.rolled_back.is_empty() {
            let back: Vec<String> = self
                .rolled_back
                .iter()
                .map(|(ws, r)| format!("{ws} to {r}"))
                .collect();
            lines.push(format!(
                "rolled back to their last healthy revision: {}; {} is not applied to them again until a newer revision arrives",
                back.join(", "),
                self.revision
            ));
        }
        if !self.rolling_back.is_empty() {
            let to: Vec<String> = self
                .rolling_back
                .iter()
                .map(|(ws, r)| format!("{ws} to {r}"))
                .collect();
            lines.push(format!(
                "not rolled back yet ({}): {}; tried again at each reconcile",
                self.rollback_error
                    .as_deref()
                    .unwrap_or("the rollback has not been applied"),
                to.join(", ")
            ));
        }
        if !self.left.is_empty() {
            let why = if self.rollback {
                "no revision under which they were Healthy is known"
            } else {
                "syncPolicy.rollback is off"
            };
            lines.push(format!(
                "left as they are ({why}): {}; fix them in Git, or revert the commit",
                self.left.join(", ")
            ));
        }
        lines.join("\n")
    }
}

impl std::fmt::Display for SyncStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// What a Git commit says of itself (a folder source has none).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Commit {
    /// The first line of its message.
    pub subject: String,
    /// Its author's name.
    pub author: String,
}

/// One object of a workspace as the last plan saw it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectStatus {
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
    /// What the next sync would do to it (`unchanged`: in step).
    pub action: Action,
    /// The fields out of step: path, live and desired value, the manager
    /// that changed it and when. A Secret's values are never kept.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<FieldChange>,
    /// Why an object is left unmanaged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Its health when last listed (Healthy, Progressing or Degraded, and
    /// why); none for an object not on the cluster then.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
}

#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkspaceStatus {
    pub sync_status: SyncStatus,
    pub drifted_objects: usize,
    /// Why the workspace is `Failed` (invalid: held at its last applied
    /// state), one `file:line:col: error: ...` line each.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    /// Its objects as the last plan saw them (none for a held workspace).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub objects: Vec<ObjectStatus>,
}

/// One reconcile, for the timeline.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReconcileRecord {
    /// When it ended (RFC 3339).
    pub at: String,
    pub duration_ms: u64,
    /// The environment's status it left.
    pub result: SyncStatus,
    /// Objects created, updated or pruned.
    pub changed: usize,
    /// Why it failed, in one word, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_reason: Option<String>,
}

/// One environment's state, as `GET /status` shows it.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvironmentStatus {
    pub sync_status: SyncStatus,
    pub last_seen_revision: Option<String>,
    pub last_applied_revision: Option<String>,
    /// The commits of those two revisions, when the source is Git.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_seen_commit: Option<Commit>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_applied_commit: Option<Commit>,
    pub last_error: Option<String>,
    pub last_error_at: Option<String>,
    pub last_reconcile_at: Option<String>,
    pub last_sync_at: Option<String>,
    /// The revision being synced (while `Syncing`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_revision: Option<String>,
    /// Why the last reconcile failed, in one word (source, invalid, render,
    /// cluster, guard, apply, locked).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error_reason: Option<String>,
    pub drifted_objects: usize,
    pub workspaces: BTreeMap<String, WorkspaceStatus>,
    /// The last [`RECENT_RECONCILES`] reconciles, oldest first.
    pub recent_reconciles: VecDeque<ReconcileRecord>,
    /// `auto` or `manual` (the revision's `syncPolicy.mode`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<&'static str>,
    /// A new revision of a manual environment, planned and waiting for
    /// `tenantsync approve`: nothing of it is applied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending_revision: Option<String>,
    /// What the pending revision waits for: `approval` or `window`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending_reason: Option<&'static str>,
    /// Why the sync windows hold changes back now (none: they do not).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sync_window: Option<String>,
    /// The pending revision's plan against the cluster, in one line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending_plan: Option<String>,
    /// The last approval recorded for this environment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval: Option<crate::sync::approval::Approval>,
    /// A progressive rollout under way, or the last one that stopped or
    /// completed (`syncPolicy.rollout`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollout: Option<crate::sync::rollout::RolloutStatus>,
    /// The applied revision's failed health, and what was rolled back.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_health: Option<FailedHealth>,
    /// A revision was read and compared with the cluster (and synced, when
    /// leading) at least once: what `/readyz` waits for. A failed read or
    /// an invalid first revision does not count.
    #[serde(skip)]
    pub compared: bool,
}

impl EnvironmentStatus {
    /// Remembers a reconcile, forgetting the oldest beyond
    /// [`RECENT_RECONCILES`].
    pub fn record_reconcile(&mut self, record: ReconcileRecord) {
        while self.recent_reconciles.len() >= RECENT_RECONCILES {
            self.recent_reconciles.pop_front();
        }
        self.recent_reconciles.push_back(record);
    }

    /// Objects seen by the last plan, over every workspace.
    pub fn object_count(&self) -> usize {
        self.workspaces.values().map(|w| w.objects.len()).sum()
    }

    /// Workspaces that are `Failed`.
    pub fn failed_workspaces(&self) -> usize {
        self.workspaces
            .values()
            .filter(|w| w.sync_status == SyncStatus::Failed)
            .count()
    }
}

#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DaemonStatus {
    /// This replica's identity in leader election.
    pub identity: String,
    /// Whether this replica leads (and so writes); always true without
    /// leader election.
    pub leader: bool,
    /// With `--shard`: the environments whose Lease this replica holds
    /// (it writes those only); absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owns: Option<Vec<String>>,
    pub environments: BTreeMap<String, EnvironmentStatus>,
}

impl DaemonStatus {
    /// Every environment listed from the start, `Unknown` until its first
    /// reconcile.
    pub fn new(identity: String, leader: bool, environments: &[String]) -> DaemonStatus {
        DaemonStatus {
            identity,
            leader,
            owns: None,
            environments: environments
                .iter()
                .map(|e| (e.clone(), EnvironmentStatus::default()))
                .collect(),
        }
    }
}

/// A plan's objects per workspace (every workspace of the plan listed).
/// `synced`: a sync of this plan succeeded, so every object it applied or
/// pruned is in step now and shown so, with no drifted fields.
/// `health`: each live object's, by `Kind/namespace/name`, as listed for
/// the plan (an object created since has none).
pub fn objects_by_workspace(
    plan: &Plan,
    synced: bool,
    health: &BTreeMap<String, Health>,
) -> BTreeMap<String, Vec<ObjectStatus>> {
    let mut out: BTreeMap<String, Vec<ObjectStatus>> = BTreeMap::new();
    for c in &plan.changes {
        let objects = out.entry(c.workspace.to_string()).or_default();
        if synced && c.action == Action::Delete {
            continue;
        }
        let in_step = synced && c.action != Action::Unmanaged;
        let secret = &*c.kind == "Secret";
        objects.push(ObjectStatus {
            kind: c.kind.to_string(),
            namespace: c.namespace.as_deref().map(str::to_string),
            name: c.name.to_string(),
            action: if in_step { Action::Unchanged } else { c.action },
            fields: if in_step {
                Vec::new()
            } else {
                c.fields
                    .iter()
                    .map(|f| FieldChange {
                        live: f.live.clone().filter(|_| !secret),
                        desired: f.desired.clone().filter(|_| !secret),
                        ..f.clone()
                    })
                    .collect()
            },
            note: c.note.clone(),
            health: health.get(&c.id()).cloned(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{FieldAction, Summary};

    fn change(kind: &str, name: &str, action: Action, live: i64) -> crate::plan::Change {
        crate::plan::Change {
            action,
            api_version: "v1".into(),
            kind: kind.into(),
            namespace: Some("contoso-dev".into()),
            name: name.into(),
            workspace: "contoso".into(),
            fields: vec![FieldChange {
                path: "data.password".into(),
                action: FieldAction::Change,
                live: Some(live.into()),
                desired: Some(1.into()),
                manager: Some("kubectl-edit".into()),
                since: None,
            }],
            diff: String::new(),
            note: None,
            heal: None,
            live: None,
        }
    }

    fn plan(changes: Vec<crate::plan::Change>) -> Plan {
        Plan {
            format_version: 1,
            environment: "dev".into(),
            revision: None,
            summary: Summary::of(&changes),
            changes,
            api_requests: 0,
        }
    }

    /// Review of issue 16: a rollback composed but not applied (lock held,
    /// apply refused) was reported as RolledBack.
    #[test]
    fn a_rollback_not_applied_yet_is_said_so_not_rolled_back() {
        let f = FailedHealth {
            revision: "r2".into(),
            workspaces: BTreeMap::from([("alpha".to_string(), vec!["Degraded".to_string()])]),
            rolling_back: BTreeMap::from([("alpha".to_string(), "r1".to_string())]),
            rollback_error: Some("cannot take the environment's lock: held by ci".into()),
            rollback: true,
            ..FailedHealth::default()
        };
        let summary = f.summary();
        assert!(
            !summary.contains("rolled back to their last healthy"),
            "{summary}"
        );
        assert!(
            summary.contains("not rolled back yet (cannot take the environment's lock: held by ci): alpha to r1; tried again at each reconcile"),
            "{summary}"
        );
        let json = serde_json::to_value(&f).unwrap();
        assert_eq!(json["rollingBack"]["alpha"], "r1");
        assert!(json["rolledBack"].as_object().unwrap().is_empty());
    }

    #[test]
    fn every_environment_is_listed_unknown_before_its_first_reconcile() {
        let s = DaemonStatus::new("pod".into(), true, &["dev".into(), "prod".into()]);
        assert_eq!(s.environments.len(), 2);
        assert_eq!(s.environments["prod"].sync_status, SyncStatus::Unknown);
        assert!(!s.environments["prod"].compared);
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["environments"]["dev"]["syncStatus"], "Unknown");
    }

    #[test]
    fn the_ring_of_recent_reconciles_keeps_the_newest_and_is_bounded() {
        let mut s = EnvironmentStatus::default();
        for i in 0..(RECENT_RECONCILES + 5) {
            s.record_reconcile(ReconcileRecord {
                at: format!("t{i}"),
                duration_ms: 1,
                result: SyncStatus::Synced,
                changed: i,
                error_reason: None,
            });
        }
        assert_eq!(s.recent_reconciles.len(), RECENT_RECONCILES);
        assert_eq!(s.recent_reconciles.front().map(|r| r.changed), Some(5));
        assert_eq!(
            s.recent_reconciles.back().map(|r| r.changed),
            Some(RECENT_RECONCILES + 4)
        );
    }

    #[test]
    fn a_secrets_drifted_values_are_never_kept_in_the_status() {
        let by_ws = objects_by_workspace(
            &plan(vec![
                change("Secret", "tls", Action::Update, 42),
                change("Deployment", "fhir", Action::Update, 7),
            ]),
            false,
            &BTreeMap::new(),
        );
        let objects = &by_ws["contoso"];
        assert_eq!(objects[0].fields[0].live, None);
        assert_eq!(objects[0].fields[0].desired, None);
        assert_eq!(
            objects[0].fields[0].manager.as_deref(),
            Some("kubectl-edit")
        );
        assert_eq!(objects[1].fields[0].live, Some(7.into()));
        let json = serde_json::to_string(&by_ws).unwrap();
        assert!(!json.contains("42"), "{json}");
    }

    #[test]
    fn after_a_successful_sync_objects_are_in_step_and_pruned_ones_gone() {
        let by_ws = objects_by_workspace(
            &plan(vec![
                change("Deployment", "fhir", Action::Update, 7),
                change("ConfigMap", "old", Action::Delete, 0),
            ]),
            true,
            &BTreeMap::from([(
                "Deployment/contoso-dev/fhir".to_string(),
                Health::progressing("0 of 1 replicas available"),
            )]),
        );
        let objects = &by_ws["contoso"];
        assert_eq!(objects.len(), 1);
        assert_eq!(objects[0].action, Action::Unchanged);
        assert_eq!(
            objects[0].health,
            Some(Health::progressing("0 of 1 replicas available"))
        );
        assert!(objects[0].fields.is_empty());
    }
}
