//! Running a sync: inventory first, staged apply, prune last, inventory again.
//!
//! Crash safety comes from the order of writes. Before anything is applied
//! the inventory is widened to everything already recorded plus everything
//! about to be applied, so an object is never created outside it; it is only
//! narrowed after prune, and objects whose delete did not succeed stay in it.
//! A sync killed at any point therefore leaves an inventory that covers every
//! object tenantsync created, and the next sync converges from there.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesOrdered;
use serde::Serialize;
use serde_json::Value;

use super::apply::{ApplyError, ConflictField};
use super::{Cluster, ClusterError};
use crate::field_policy::Heal;
use crate::health::{Health, HealthOptions, HealthStatus};
use crate::inventory::{Inventory, ObjectRef};
use crate::plan::{Action, Change, Plan};
use crate::render::{Object, ObjectKey};
use crate::sync::{self, MassPrune, SyncOptions};

/// Write requests (applies, prune deletes) in flight at once within a stage.
pub const APPLY_CONCURRENCY: usize = 8;
const RECREATE_TIMEOUT: Duration = Duration::from_secs(60);
const ESTABLISH_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone, Debug, Serialize)]
pub struct Conflict {
    pub id: String,
    pub fields: Vec<ConflictField>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Failure {
    pub id: String,
    pub message: String,
}

/// What a sync did: the value printers, status and metrics are built from.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncReport {
    pub environment: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    pub dry_run: bool,
    pub created: Vec<String>,
    pub updated: Vec<String>,
    /// Existing objects taken over with `--adopt`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub adopted: Vec<String>,
    /// Deleted and recreated (`--force-recreate`).
    pub recreated: Vec<String>,
    pub pruned: Vec<String>,
    pub unchanged: usize,
    /// No longer declared but kept, with the reason.
    pub kept: Vec<Failure>,
    pub conflicts: Vec<Conflict>,
    pub failures: Vec<Failure>,
    /// Why prune did not run although it was asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prune_skipped: Option<String>,
    /// Dry run only: objects in namespaces this sync would create, which the
    /// server cannot validate before the namespace exists.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_validated: Vec<String>,
    pub inventory_written: bool,
    /// With `--wait`: health after the sync, per workspace and per object.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthReport>,
    pub api_requests: u32,
    pub write_requests: u32,
}

impl SyncReport {
    pub fn succeeded(&self) -> bool {
        self.conflicts.is_empty() && self.failures.is_empty()
    }

    /// Applied, and (when waited for) healthy.
    pub fn healthy(&self) -> bool {
        self.succeeded()
            && self
                .health
                .as_ref()
                .is_none_or(|h| h.status == HealthStatus::Healthy)
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct ObjectHealth {
    pub id: String,
    pub workspace: String,
    pub status: HealthStatus,
    pub message: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct HealthReport {
    pub status: HealthStatus,
    pub workspaces: std::collections::BTreeMap<String, HealthStatus>,
    pub objects: Vec<ObjectHealth>,
}

/// Waits (up to `timeout`) until the desired objects are healthy, and
/// summarises per workspace (worst wins).
pub async fn wait_for_health(
    cluster: &Cluster,
    desired: &[Object],
    options: &HealthOptions,
    timeout: Duration,
    on_change: impl FnMut(&ObjectRef, &Health),
) -> Result<HealthReport, ClusterError> {
    let refs: Vec<ObjectRef> = desired.iter().map(ObjectRef::of).collect();
    let results = super::wait::wait_healthy(cluster, &refs, options, timeout, on_change).await?;
    let mut workspaces: std::collections::BTreeMap<String, Vec<Health>> =
        std::collections::BTreeMap::new();
    let mut objects = Vec::new();
    for ((r, h), o) in results.into_iter().zip(desired) {
        workspaces
            .entry(o.workspace.to_string())
            .or_default()
            .push(h.clone());
        objects.push(ObjectHealth {
            id: r.id(),
            workspace: o.workspace.to_string(),
            status: h.status,
            message: h.message,
        });
    }
    let status = crate::health::aggregate(workspaces.values().flatten());
    Ok(HealthReport {
        status,
        workspaces: workspaces
            .iter()
            .map(|(w, hs)| (w.clone(), crate::health::aggregate(hs.iter())))
            .collect(),
        objects,
    })
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("nothing was changed: {}", .0.message)]
    MassPrune(MassPrune),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
}

/// Progress events, for a progress bar or log lines.
pub enum Progress<'a> {
    Stage {
        wave: i32,
        kind: &'a str,
        objects: usize,
    },
    Applied {
        id: &'a str,
        ok: bool,
    },
    Pruned {
        id: &'a str,
        ok: bool,
    },
}

/// Makes the cluster match `desired`. `undeclared`: the live objects nothing
/// declares, as [`crate::diff::Planner::finish`] returns them.
#[allow(clippy::too_many_arguments)]
pub async fn sync(
    cluster: &Cluster,
    plan: &Plan,
    desired: &[Object],
    inventory: Option<Inventory>,
    undeclared: &[Value],
    options: &SyncOptions,
    revision: Option<String>,
    mut progress: impl FnMut(Progress<'_>),
) -> Result<SyncReport, SyncError> {
    let steps = sync::steps(plan, desired, inventory.as_ref(), undeclared, options)
        .map_err(SyncError::MassPrune)?;
    let mut report = SyncReport {
        environment: plan.environment.clone(),
        revision: revision.clone(),
        dry_run: options.dry_run,
        unchanged: plan
            .changes
            .iter()
            .filter(|c| c.action == Action::Unchanged)
            .count(),
        ..SyncReport::default()
    };
    let old = inventory.unwrap_or_else(|| Inventory::new(&plan.environment));
    let manager = crate::diff::field_manager(&plan.environment);
    // Never adopt: objects that exist without being this environment's are
    // neither applied nor recorded; each fails the sync, so nothing is
    // pruned either.
    let unmanaged: HashSet<ObjectKey<'_>> = plan
        .changes
        .iter()
        .filter(|c| c.action == Action::Unmanaged)
        .map(|c| {
            report.failures.push(Failure {
                id: c.id(),
                message: format!(
                    "{}: exists, not managed: {}",
                    c.id(),
                    c.note.as_deref().unwrap_or("not tenantsync's")
                ),
            });
            c.key()
        })
        .collect();
    let desired_refs: BTreeSet<ObjectRef> = desired
        .iter()
        .filter(|o| !unmanaged.contains(&o.key()))
        .map(ObjectRef::of)
        .collect();
    let created: HashSet<ObjectKey<'_>> = plan
        .changes
        .iter()
        .filter(|c| c.action == Action::Create)
        .map(Change::key)
        .collect();
    let adopted: HashSet<ObjectKey<'_>> = plan
        .changes
        .iter()
        .filter(|c| c.action == Action::Adopt)
        .map(Change::key)
        .collect();
    // The ownership policy's work besides each apply (field_policy::Heal).
    let heals = heals_of(plan);

    // 1. Widen the inventory before creating anything.
    let mut widened = old.clone();
    let recorded = old.keys();
    for r in &desired_refs {
        if !recorded.contains(&r.key()) {
            widened.objects.insert(r.clone());
        }
    }
    if widened.objects != old.objects && !options.dry_run {
        cluster.write_inventory(&widened, false).await?;
        report.inventory_written = true;
    }

    // 2. Apply, stage by stage. A dry run cannot send objects whose namespace
    // it would only create: they are listed as not validated.
    let new_namespaces: BTreeSet<&str> = plan
        .changes
        .iter()
        .filter(|c| &*c.kind == "Namespace" && c.action == Action::Create)
        .map(|c| &*c.name)
        .collect();
    // Kinds whose CRD this sync creates: a dry run cannot send their objects.
    let new_kinds: BTreeSet<(String, String)> = desired
        .iter()
        .filter(|o| &*o.kind == "CustomResourceDefinition")
        .filter(|o| {
            plan.changes
                .iter()
                .any(|c| c.action == Action::Create && c.kind == o.kind && c.name == o.name)
        })
        .filter_map(|o| {
            let body = o.value();
            let spec = body.get("spec")?;
            Some((
                spec.get("group")?.as_str()?.to_string(),
                spec.pointer("/names/kind")?.as_str()?.to_string(),
            ))
        })
        .collect();
    for stage in &steps.stages {
        progress(Progress::Stage {
            wave: stage.wave,
            kind: stage.objects.first().map_or("", |o| &*o.kind),
            objects: stage.objects.len(),
        });
        let (unsendable, sendable): (Vec<&Object>, Vec<&Object>) =
            stage.objects.iter().partition(|o| {
                let group = o.api_version.split_once('/').map_or("", |(g, _)| g);
                options.dry_run
                    && (o
                        .namespace
                        .as_deref()
                        .is_some_and(|ns| new_namespaces.contains(ns))
                        || new_kinds.contains(&(group.to_string(), o.kind.to_string())))
            });
        for o in unsendable {
            report.created.push(o.id());
            report.not_validated.push(o.id());
        }
        // A window of APPLY_CONCURRENCY requests in flight, results in order.
        // (FuturesOrdered rather than `buffered`: a stream holding a closure
        // that returns borrowing futures is not Send for the daemon's spawn.)
        let mut queue = sendable.into_iter();
        let mut in_flight = FuturesOrdered::new();
        for o in queue.by_ref().take(APPLY_CONCURRENCY) {
            in_flight.push_back(applied(cluster, o, options, &manager, &adopted, &heals));
        }
        while let Some((o, result)) = in_flight.next().await {
            if let Some(next) = queue.next() {
                in_flight.push_back(applied(cluster, next, options, &manager, &adopted, &heals));
            }
            // Objects of a CRD's kind wait until it is Established.
            if &*o.kind == "CustomResourceDefinition"
                && result.is_ok()
                && !options.dry_run
                && !cluster.wait_established(&o.name, ESTABLISH_TIMEOUT).await?
            {
                report.failures.push(Failure {
                    id: o.id(),
                    message: format!("not Established after {ESTABLISH_TIMEOUT:?}"),
                });
            }
            let id = o.id();
            progress(Progress::Applied {
                id: &id,
                ok: result.is_ok(),
            });
            match result {
                Ok(false) if created.contains(&o.key()) => report.created.push(id),
                Ok(false) if adopted.contains(&o.key()) => report.adopted.push(id),
                Ok(false) => report.updated.push(id),
                Ok(true) => report.recreated.push(id),
                Err(ApplyError::Conflict { id, fields }) => {
                    report.conflicts.push(Conflict { id, fields })
                }
                Err(e) => report.failures.push(Failure {
                    id,
                    message: e.to_string(),
                }),
            }
        }
    }

    // 3. Prune, only after everything applied.
    let mut pruned: Vec<&ObjectRef> = Vec::new();
    if !report.succeeded() && !steps.prune.is_empty() {
        report.prune_skipped = Some("some objects failed to apply; nothing was pruned".into());
    } else {
        // Stage after stage (children before their namespaces), a window
        // of APPLY_CONCURRENCY deletes in flight within a stage.
        for stage in &steps.prune {
            let mut queue = stage.iter();
            let mut in_flight = FuturesOrdered::new();
            for r in queue.by_ref().take(APPLY_CONCURRENCY) {
                in_flight.push_back(deleted(cluster, r, options.dry_run));
            }
            while let Some((r, result)) = in_flight.next().await {
                if let Some(next) = queue.next() {
                    in_flight.push_back(deleted(cluster, next, options.dry_run));
                }
                let id = r.id();
                match result {
                    Ok(_) => {
                        progress(Progress::Pruned { id: &id, ok: true });
                        report.pruned.push(id);
                        pruned.push(r);
                    }
                    Err(e) => {
                        progress(Progress::Pruned { id: &id, ok: false });
                        report.failures.push(Failure {
                            id,
                            message: format!("prune failed: {e}"),
                        });
                    }
                }
            }
        }
    }
    report.kept = steps
        .kept
        .iter()
        .map(|(r, why)| Failure {
            id: r.id(),
            message: why.clone(),
        })
        .collect();
    // What stays ours: everything declared, and every earlier object not
    // deleted now, not found any more, nor released by `prune: disabled`.
    let released: HashSet<ObjectKey<'_>> = steps
        .gone
        .iter()
        .chain(steps.kept.iter().map(|(r, _)| r))
        .chain(pruned)
        .map(ObjectRef::key)
        .collect();
    let declared: HashSet<ObjectKey<'_>> = desired_refs.iter().map(ObjectRef::key).collect();
    let not_deleted: Vec<ObjectRef> = old
        .objects
        .iter()
        .filter(|r| !declared.contains(&r.key()) && !released.contains(&r.key()))
        .cloned()
        .collect();

    // 4. Narrow the inventory to what exists and is ours.
    if !options.dry_run {
        let mut final_inventory = Inventory {
            environment: plan.environment.clone(),
            revision: revision.or(old.revision.clone()),
            last_applied_at: old.last_applied_at.clone(),
            objects: desired_refs,
        };
        final_inventory.objects.extend(not_deleted);
        let changed_cluster = !(report.created.is_empty()
            && report.updated.is_empty()
            && report.recreated.is_empty()
            && report.pruned.is_empty());
        if changed_cluster {
            final_inventory.last_applied_at = Some(k8s_openapi::jiff::Timestamp::now().to_string());
        }
        // A sync that changed nothing writes nothing, not even a timestamp.
        if final_inventory != old {
            cluster.write_inventory(&final_inventory, false).await?;
            report.inventory_written = true;
        }
    }
    report.api_requests = cluster.requests();
    report.write_requests = cluster.writes();
    Ok(report)
}

/// The ownership policy's work of each object to apply, by key.
fn heals_of(plan: &Plan) -> HashMap<ObjectKey<'_>, &Heal> {
    plan.changes
        .iter()
        .filter(|c| c.is_apply())
        .filter_map(|c| Some((c.key(), c.heal.as_deref()?)))
        .collect()
}

async fn applied<'a>(
    cluster: &Cluster,
    object: &'a Object,
    options: &SyncOptions,
    manager: &str,
    adopted: &HashSet<ObjectKey<'_>>,
    heals: &HashMap<ObjectKey<'_>, &Heal>,
) -> (&'a Object, Result<bool, ApplyError>) {
    // Adopting takes the declared fields over from whoever wrote them.
    let force = options.force_conflicts || adopted.contains(&object.key());
    let heal = heals.get(&object.key()).copied();
    (
        object,
        apply_one(cluster, object, options, manager, force, heal).await,
    )
}

async fn deleted<'a>(
    cluster: &Cluster,
    r: &'a ObjectRef,
    dry_run: bool,
) -> (&'a ObjectRef, Result<bool, ClusterError>) {
    (r, cluster.delete(r, dry_run).await)
}

/// Applies one object; `Ok(true)` when it had to be recreated.
async fn apply_one(
    cluster: &Cluster,
    object: &Object,
    options: &SyncOptions,
    manager: &str,
    force: bool,
    heal: Option<&Heal>,
) -> Result<bool, ApplyError> {
    let first = cluster
        .apply_healed(object, heal, options.dry_run, force, manager)
        .await;
    // Retries apply the same body; the fields were taken over already.
    let rest = heal.map(|h| Heal {
        takeover: None,
        strip: h.strip.clone(),
    });
    let rest = rest.as_ref();
    // Fields held only by the field manager every environment shared
    // before each had its own are tenantsync's: taken over, not a conflict.
    let first = match first {
        Err(ApplyError::Conflict { fields, .. })
            if fields
                .iter()
                .all(|f| f.manager == crate::diff::FIELD_MANAGER) =>
        {
            cluster
                .apply_healed(object, rest, options.dry_run, true, manager)
                .await
        }
        other => other,
    };
    match first {
        Err(ApplyError::Immutable { id, message })
            if options.force_recreate && !options.dry_run =>
        {
            let r = ObjectRef::of(object);
            cluster
                .delete(&r, false)
                .await
                .map_err(|source| ApplyError::Cluster {
                    id: id.clone(),
                    source,
                })?;
            let gone = cluster
                .wait_deleted(&r, RECREATE_TIMEOUT)
                .await
                .map_err(|source| ApplyError::Cluster {
                    id: id.clone(),
                    source,
                })?;
            if !gone {
                return Err(ApplyError::Invalid {
                    id,
                    message: format!(
                        "deleted to recreate it ({message}), but it was still there after {RECREATE_TIMEOUT:?}"
                    ),
                });
            }
            // A new object: everything declared, ignored fields too.
            cluster
                .apply(object, false, force, manager)
                .await
                .map(|()| true)
        }
        other => other.map(|()| false),
    }
}
