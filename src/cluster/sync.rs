//! Running a sync: inventory first, staged apply, prune last, inventory again.
//!
//! Crash safety comes from the order of writes. Before anything is applied
//! the inventory is widened to everything already recorded plus everything
//! about to be applied, so an object is never created outside it; it is only
//! narrowed after prune, and objects whose delete did not succeed stay in it.
//! A sync killed at any point therefore leaves an inventory that covers every
//! object tenantsync created, and the next sync converges from there.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::Ordering;
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
/// Consecutive transport failures (connect timeouts, resets, no answer)
/// after which a sync stops sending: the API server is down or frozen.
pub const MAX_TRANSPORT_FAILURES: usize = 3;
/// A write with no answer after this long counts as a transport failure
/// (a frozen API server accepts connections and never answers).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(15);

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
    /// Why the sync stopped before the end (the API server stopped
    /// answering); what was not sent is in `notSent`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aborted: Option<String>,
    /// Objects not written: the sync stopped, or their verb and kind were
    /// refused (403) for an earlier object.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_sent: Vec<String>,
    /// Per namespace about to be deleted: what it holds that tenantsync did
    /// not make (kind/name only; Secret contents are never read).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub foreign: BTreeMap<String, super::foreign::Foreign>,
    /// With `--wait`: health after the sync, per workspace and per object.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthReport>,
    pub api_requests: u32,
    pub write_requests: u32,
}

impl SyncReport {
    pub fn succeeded(&self) -> bool {
        self.conflicts.is_empty()
            && self.failures.is_empty()
            && self.aborted.is_none()
            && self.not_sent.is_empty()
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
    // What a namespace about to be deleted holds that tenantsync never made.
    let foreign = match (&inventory, options.prune) {
        (Some(inv), true) => {
            let namespaces = sync::namespaces_to_prune(desired, inv, undeclared);
            cluster.foreign_objects(&namespaces, inv).await?
        }
        _ => BTreeMap::new(),
    };
    let foreign_ids: BTreeMap<String, Vec<String>> = foreign
        .iter()
        .map(|(ns, f)| (ns.clone(), f.objects.clone()))
        .collect();
    let steps = sync::steps_with_foreign(
        plan,
        desired,
        inventory.as_ref(),
        undeclared,
        options,
        &foreign_ids,
    )
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
        foreign,
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

    // 1. Widen the inventory before creating anything. It is written with
    // the resourceVersion it was read at: an entry another writer added
    // meanwhile is merged in, never dropped.
    let mut stored = if options.dry_run {
        None
    } else {
        Some(cluster.read_inventory_stored(&plan.environment).await?)
    };
    let mut widened = old.clone();
    let recorded = old.keys();
    for r in &desired_refs {
        if !recorded.contains(&r.key()) {
            widened.objects.insert(r.clone());
        }
    }
    if let Some(current) = stored.as_mut() {
        let merged = crate::inventory::merge_concurrent(&old, &widened, &current.inventory);
        if merged != current.inventory {
            *current = cluster.write_inventory_checked(current, &merged).await?;
            report.inventory_written = true;
        }
    }
    let lock_lost = || {
        options
            .lock_lost
            .as_ref()
            .is_some_and(|l| l.load(Ordering::Relaxed))
    };

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
    // Fail fast: consecutive transport failures stop the sync; a verb and
    // kind refused once (403) is not sent again.
    let mut transport_failures = 0usize;
    let mut refused: BTreeMap<(String, String), (Failure, usize)> = BTreeMap::new();
    for stage in &steps.stages {
        if report.aborted.is_some() {
            report.not_sent.extend(stage.objects.iter().map(|o| o.id()));
            continue;
        }
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
        for _ in 0..APPLY_CONCURRENCY {
            match next_sendable(&mut queue, &mut refused, &mut report, &lock_lost) {
                Some(o) => {
                    in_flight.push_back(applied(cluster, o, options, &manager, &adopted, &heals))
                }
                None => break,
            }
        }
        while let Some((o, result)) = in_flight.next().await {
            let id = o.id();
            // Classify first, so that the next object sent knows.
            match &result {
                Err(ApplyError::Cluster { source, .. }) if source.is_transport() => {
                    transport_failures += 1;
                    if transport_failures >= MAX_TRANSPORT_FAILURES && report.aborted.is_none() {
                        report.aborted = Some(format!(
                            "stopped after {transport_failures} consecutive failures to reach the API server ({source}); \
                             what was not sent is listed, the inventory still covers it, and the next sync continues from here"
                        ));
                    }
                }
                _ => transport_failures = 0,
            }
            if let Some(next) = next_sendable(&mut queue, &mut refused, &mut report, &lock_lost) {
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
                Err(ApplyError::Cluster { source, .. }) if source.is_permission() => {
                    // Reported once per verb and kind, with how many more
                    // objects it kept from being sent.
                    let key = ("patch".to_string(), o.kind.to_string());
                    match refused.get_mut(&key) {
                        Some((_, n)) => {
                            *n += 1;
                            report.not_sent.push(id);
                        }
                        None => {
                            refused.insert(
                                key,
                                (
                                    Failure {
                                        id: id.clone(),
                                        message: format!("{id}: {source}"),
                                    },
                                    0,
                                ),
                            );
                        }
                    }
                }
                Err(e) => report.failures.push(Failure {
                    id,
                    message: e.to_string(),
                }),
            }
        }
    }
    for ((_, kind), (mut failure, more)) in std::mem::take(&mut refused) {
        if more > 0 {
            failure.message.push_str(&format!(
                "; {more} more {kind} object(s) were refused or not sent (the same permission is missing)"
            ));
        }
        report.failures.push(failure);
    }
    if lock_lost() && report.aborted.is_none() {
        report.aborted = Some(
            "the environment's lock was lost (another writer took it): nothing more was written"
                .into(),
        );
    }

    // 3. Prune, only after everything applied.
    let mut pruned: Vec<&ObjectRef> = Vec::new();
    if !report.succeeded() && !steps.prune.is_empty() {
        report.prune_skipped = Some("some objects failed to apply; nothing was pruned".into());
    } else {
        // Stage after stage (children before their namespaces), a window
        // of APPLY_CONCURRENCY deletes in flight within a stage.
        let mut refused_deletes: HashMap<String, usize> = HashMap::new();
        for stage in &steps.prune {
            if report.aborted.is_some() {
                report.not_sent.extend(stage.iter().map(ObjectRef::id));
                continue;
            }
            let mut queue = stage.iter();
            let mut in_flight = FuturesOrdered::new();
            for _ in 0..APPLY_CONCURRENCY {
                match next_deletable(&mut queue, &mut refused_deletes, &mut report, &lock_lost) {
                    Some(r) => in_flight.push_back(deleted(cluster, r, options.dry_run)),
                    None => break,
                }
            }
            while let Some((r, result)) = in_flight.next().await {
                match &result {
                    Err(e) if e.is_transport() => {
                        transport_failures += 1;
                        if transport_failures >= MAX_TRANSPORT_FAILURES && report.aborted.is_none()
                        {
                            report.aborted = Some(format!(
                                "stopped after {transport_failures} consecutive failures to reach the API server ({e}); \
                                 what was not deleted stays in the inventory, and the next sync continues from here"
                            ));
                        }
                    }
                    Err(e) if e.is_permission() => {
                        transport_failures = 0;
                        refused_deletes.entry(r.kind.to_string()).or_insert(0);
                    }
                    _ => transport_failures = 0,
                }
                if let Some(next) =
                    next_deletable(&mut queue, &mut refused_deletes, &mut report, &lock_lost)
                {
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
        for (kind, more) in refused_deletes {
            if more > 0
                && let Some(f) = report
                    .failures
                    .iter_mut()
                    .rev()
                    .find(|f| f.id.starts_with(&format!("{kind}/")))
            {
                f.message.push_str(&format!(
                    "; {more} more {kind} object(s) were not deleted (the same permission is missing)"
                ));
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
    // A namespace kept for its foreign contents stays ours.
    let released: HashSet<ObjectKey<'_>> = steps
        .gone
        .iter()
        .chain(
            steps
                .kept
                .iter()
                .filter(|(r, _)| {
                    !(&*r.kind == "Namespace" && report.foreign.contains_key(&*r.name))
                })
                .map(|(r, _)| r),
        )
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

    // 4. Narrow the inventory to what exists and is ours; not when the sync
    // stopped half-way (the widened inventory covers what may exist).
    if let Some(current) = stored.as_mut()
        && report.aborted.is_none()
    {
        // The revision is recorded once it applied in full: drift compares
        // the cluster with what the inventory's revision declares.
        let recorded_revision = if report.succeeded() {
            revision.or(old.revision.clone())
        } else {
            old.revision.clone()
        };
        let mut final_inventory = Inventory {
            environment: plan.environment.clone(),
            revision: recorded_revision,
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
        // Computed from what was stored after the widening: what another
        // writer added since is merged in by the checked write.
        let base = current.inventory.clone();
        let merged = crate::inventory::merge_concurrent(&widened, &final_inventory, &base);
        // A sync that changed nothing writes nothing, not even a timestamp.
        if merged != base {
            // A refused write is reported with the rest, not instead of it.
            match cluster.write_inventory_checked(current, &merged).await {
                Ok(stored) => {
                    *current = stored;
                    report.inventory_written = true;
                }
                Err(e) => report.failures.push(Failure {
                    id: format!(
                        "ConfigMap/{}/{}",
                        crate::inventory::SYSTEM_NAMESPACE,
                        crate::inventory::name_of(&plan.environment)
                    ),
                    message: format!("cannot record the inventory: {e}"),
                }),
            }
        }
    }
    report.api_requests = cluster.requests();
    report.write_requests = cluster.writes();
    Ok(report)
}

/// The next object of `queue` to send, recording as not sent those that
/// must not be (the sync stopped, the lock is lost, their kind was refused).
fn next_sendable<'o>(
    queue: &mut impl Iterator<Item = &'o Object>,
    refused: &mut BTreeMap<(String, String), (Failure, usize)>,
    report: &mut SyncReport,
    lock_lost: &dyn Fn() -> bool,
) -> Option<&'o Object> {
    for o in queue.by_ref() {
        if report.aborted.is_some() || lock_lost() {
            report.not_sent.push(o.id());
            continue;
        }
        if let Some((_, n)) = refused.get_mut(&("patch".to_string(), o.kind.to_string())) {
            *n += 1;
            report.not_sent.push(o.id());
            continue;
        }
        return Some(o);
    }
    None
}

/// As [`next_sendable`], for prune's deletes.
fn next_deletable<'o>(
    queue: &mut impl Iterator<Item = &'o ObjectRef>,
    refused: &mut HashMap<String, usize>,
    report: &mut SyncReport,
    lock_lost: &dyn Fn() -> bool,
) -> Option<&'o ObjectRef> {
    for r in queue.by_ref() {
        if report.aborted.is_some() || lock_lost() {
            report.not_sent.push(r.id());
            continue;
        }
        if let Some(n) = refused.get_mut(&*r.kind) {
            *n += 1;
            report.not_sent.push(r.id());
            continue;
        }
        return Some(r);
    }
    None
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
    let result = match tokio::time::timeout(
        WRITE_TIMEOUT,
        apply_one(cluster, object, options, manager, force, heal),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => Err(ApplyError::Cluster {
            id: object.id(),
            source: no_answer(cluster),
        }),
    };
    (object, result)
}

async fn deleted<'a>(
    cluster: &Cluster,
    r: &'a ObjectRef,
    dry_run: bool,
) -> (&'a ObjectRef, Result<bool, ClusterError>) {
    let result = match tokio::time::timeout(WRITE_TIMEOUT, cluster.delete(r, dry_run)).await {
        Ok(r) => r,
        Err(_) => Err(no_answer(cluster)),
    };
    (r, result)
}

fn no_answer(cluster: &Cluster) -> ClusterError {
    ClusterError::Unreachable {
        server: cluster.server().to_string(),
        reason: format!("no answer within {}s", WRITE_TIMEOUT.as_secs()),
    }
}

/// Whether a conflict names fields, all held by the field manager every
/// environment shared before each had its own (`tenantsync`): those are
/// taken over without --force-conflicts. A conflict naming no field is not
/// one of those (`all` of nothing would say yes).
fn only_legacy_manager(fields: &[ConflictField]) -> bool {
    !fields.is_empty()
        && fields
            .iter()
            .all(|f| f.manager == crate::diff::FIELD_MANAGER)
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
        Err(ApplyError::Conflict { fields, .. }) if only_legacy_manager(&fields) => {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn field(manager: &str) -> ConflictField {
        ConflictField {
            field: ".data.x".into(),
            manager: manager.into(),
        }
    }

    #[test]
    fn a_conflict_without_causes_is_not_forced_as_the_legacy_managers() {
        assert!(!only_legacy_manager(&[]));
        assert!(only_legacy_manager(&[
            field("tenantsync"),
            field("tenantsync")
        ]));
        assert!(!only_legacy_manager(&[
            field("tenantsync"),
            field("kubectl-edit")
        ]));
        assert!(!only_legacy_manager(&[field("tenantsync/prod")]));
    }
}
