//! Running a sync: inventory first, staged apply, prune last, inventory again.
//!
//! Crash safety comes from the order of writes. Before anything is applied
//! the inventory is widened to everything already recorded plus everything
//! about to be applied, so an object is never created outside it; it is only
//! narrowed after prune, and objects whose delete did not succeed stay in it.
//! A sync killed at any point therefore leaves an inventory that covers every
//! object tenantsync created, and the next sync converges from there.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::{FutureExt as _, StreamExt};
use serde_json::Value;

use super::apply::ApplyError;
use super::inventory::Stored;
use super::{Cluster, ClusterError};
use crate::object::{Object, ObjectKey};
use crate::plan::field_policy::Heal;
use crate::plan::{Action, Change, LiveVersion, Plan};
use crate::sync::inventory::{Inventory, ObjectRef};
use crate::sync::report::{Conflict, ConflictField, Failure, SyncReport};
use crate::sync::{self, MassPrune, SyncOptions};

/// Lookups (reads) in flight at once; writes follow the connection's
/// window ([`super::throttle`]).
pub const APPLY_CONCURRENCY: usize = 8;
const RECREATE_TIMEOUT: Duration = Duration::from_secs(60);
const ESTABLISH_TIMEOUT: Duration = Duration::from_secs(60);
/// Consecutive transport failures (connect timeouts, resets, no answer)
/// after which a sync stops sending: the API server is down or frozen.
pub const MAX_TRANSPORT_FAILURES: usize = 3;
/// The longest one object's write may take in all, a safety net: each of
/// its requests waits at most [`WRITE_TIMEOUT`] for an answer, and 429s are
/// retried for at most [`super::throttle::BUSY_FOR`]; a recreate waits up
/// to [`RECREATE_TIMEOUT`] for the object to go.
pub const WRITE_DEADLINE: Duration = Duration::from_secs(180);
pub use super::throttle::WRITE_TIMEOUT;

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
/// declares, as [`crate::plan::Planner::finish`] returns them.
#[allow(clippy::too_many_arguments)]
pub async fn sync(
    cluster: &Cluster,
    plan: &Plan,
    desired: &[Object],
    inventory: Option<Inventory>,
    undeclared: &[Value],
    options: &SyncOptions,
    revision: Option<String>,
    pinned: &BTreeMap<String, String>,
    mut progress: impl FnMut(Progress<'_>),
) -> Result<SyncReport, SyncError> {
    let throttled_before = cluster.throttle().throttled_total();
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
    let unmanaged = unmanaged(plan, &mut report);
    let desired_refs: BTreeSet<ObjectRef> = desired
        .iter()
        .filter(|o| !unmanaged.contains(&o.key()))
        .map(ObjectRef::of)
        .collect();

    // 1. Widen the inventory before creating anything. It is written with
    // the resourceVersion it was read at: an entry another writer added
    // meanwhile is merged in, never dropped.
    let mut stored = if options.dry_run {
        None
    } else {
        Some(cluster.read_inventory_stored(&plan.environment).await?)
    };
    // Widened is the old inventory itself, not a copy, when everything
    // declared is recorded (a sync that changes nothing, at any size).
    let widened = crate::sync::inventory::widen(&old, &desired_refs);
    if stored.is_some() && lock_lost(options) {
        // Nothing is applied that the inventory would not cover.
        report.aborted = Some(format!(
            "{} before anything was written",
            options.fence.why()
        ));
    }
    if let Some(current) = stored.as_mut()
        && report.aborted.is_none()
        && let Some(merged) = crate::sync::inventory::merge_if_changed(
            &old,
            Cow::Borrowed(&*widened),
            &current.inventory,
        )
    {
        match cluster
            .write_inventory_checked(current, &merged, &options.fence)
            .await
        {
            Ok(stored) => {
                *current = stored;
                report.inventory_written = true;
            }
            Err(e @ crate::cluster::ClusterError::NotHeld { .. }) => {
                report.aborted = Some(format!("{e}: nothing was applied"));
            }
            Err(e) => return Err(e.into()),
        }
    }

    // 2. Apply, stage by stage; 3. prune, only after everything applied.
    let mut run = Run {
        cluster,
        options,
        report,
        transport_failures: 0,
    };
    run.apply(plan, desired, &steps, &mut progress).await?;
    let pruned = run.prune(&steps, &mut progress).await;
    let mut report = run.report;
    report.kept = steps
        .kept
        .iter()
        .map(|(r, why)| Failure {
            id: r.id(),
            message: why.clone(),
        })
        .collect();
    let not_deleted = still_ours(&old, &desired_refs, &steps, &pruned, &report);

    // 4. Narrow the inventory to what exists and is ours; not when the sync
    // stopped half-way (the widened inventory covers what may exist), nor
    // once the writer lost its hold on the environment: its successor may
    // have recorded or re-created since what this sync would drop.
    if stored.is_some() && report.aborted.is_none() && lock_lost(options) {
        report.aborted = Some(format!(
            "{} before the inventory was narrowed: \
             it still records every object this sync may have written, and the next sync records the revision",
            options.fence.why()
        ));
    }
    if let Some(current) = stored.as_mut()
        && report.aborted.is_none()
    {
        // The revision is recorded once it applied in full: drift compares
        // the cluster with what the inventory's revision declares.
        let mut final_inventory = Inventory {
            environment: plan.environment.clone(),
            revision: old.revision.clone(),
            last_applied_at: old.last_applied_at.clone(),
            objects: desired_refs,
            workspaces: old.workspaces.clone(),
            rollout: old.rollout.clone(),
            rollout_unreadable: None,
        };
        if report.succeeded()
            && let Some(revision) = revision
        {
            // Each workspace at the revision its objects came from.
            let changed: HashSet<&str> = plan
                .changes
                .iter()
                .filter(|c| c.action != Action::Unchanged)
                .map(|c| &*c.workspace)
                .collect();
            let workspaces: BTreeSet<&str> = desired
                .iter()
                .map(|o| &*o.workspace)
                .chain(
                    options
                        .also_applied
                        .iter()
                        .flat_map(|a| a.iter().map(String::as_str)),
                )
                .filter(|ws| !ws.is_empty())
                .collect();
            final_inventory.record_applied(workspaces.into_iter().map(|ws| {
                crate::sync::inventory::AppliedWorkspace {
                    workspace: ws,
                    revision: pinned.get(ws).map_or(revision.as_str(), String::as_str),
                    changed: changed.contains(ws),
                }
            }));
            final_inventory.record_revision(revision);
        }
        if report.succeeded()
            && let Some(record) = &options.rollout_record
        {
            final_inventory.rollout = Some(record.clone().capped());
        }
        final_inventory.objects.extend(not_deleted);
        narrow(
            cluster,
            current,
            &widened,
            final_inventory,
            &options.fence,
            &mut report,
        )
        .await;
    }
    report.api_requests = cluster.requests();
    report.write_requests = cluster.writes();
    report.throttled = cluster.throttle().throttled_total() - throttled_before;
    Ok(report)
}

/// Never adopt: objects that exist without being this environment's are
/// neither applied nor recorded; each fails the sync, so nothing is pruned
/// either.
fn unmanaged<'p>(plan: &'p Plan, report: &mut SyncReport) -> HashSet<ObjectKey<'p>> {
    plan.changes
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
        .collect()
}

/// What stays ours besides everything declared: every earlier object not
/// deleted now, not found any more, nor released by `prune: disabled`. A
/// namespace kept for its foreign contents stays ours.
fn still_ours(
    old: &Inventory,
    desired_refs: &BTreeSet<ObjectRef>,
    steps: &sync::Steps<'_>,
    pruned: &[&ObjectRef],
    report: &SyncReport,
) -> Vec<ObjectRef> {
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
        .chain(pruned.iter().copied())
        .map(ObjectRef::key)
        .collect();
    let declared: HashSet<ObjectKey<'_>> = desired_refs.iter().map(ObjectRef::key).collect();
    old.objects
        .iter()
        .filter(|r| !declared.contains(&r.key()) && !released.contains(&r.key()))
        .cloned()
        .collect()
}

/// Writes the final inventory, merged with what another writer added
/// since the widening; a sync that changed nothing writes nothing, not even
/// a timestamp. A refused write is reported with the rest, not instead of it.
async fn narrow(
    cluster: &Cluster,
    current: &mut Stored,
    widened: &Inventory,
    mut final_inventory: Inventory,
    fence: &crate::sync::Fence,
    report: &mut SyncReport,
) {
    let changed_cluster = !(report.created.is_empty()
        && report.updated.is_empty()
        && report.recreated.is_empty()
        && report.pruned.is_empty());
    if changed_cluster {
        final_inventory.last_applied_at = Some(k8s_openapi::jiff::Timestamp::now().to_string());
    }
    // Computed from what was stored after the widening: what another
    // writer added since is merged in by the checked write.
    let name = crate::sync::inventory::name_of(&final_inventory.environment);
    let Some(merged) = crate::sync::inventory::merge_if_changed(
        widened,
        Cow::Owned(final_inventory),
        &current.inventory,
    ) else {
        return;
    };
    match cluster
        .write_inventory_checked(current, &merged, fence)
        .await
    {
        Ok(stored) => {
            *current = stored;
            report.inventory_written = true;
        }
        Err(e @ crate::cluster::ClusterError::NotHeld { .. }) => {
            report.aborted = Some(e.to_string());
        }
        Err(e) => report.failures.push(Failure {
            id: crate::object::id((
                "ConfigMap",
                Some(crate::sync::inventory::SYSTEM_NAMESPACE),
                &name,
            )),
            message: format!("cannot record the inventory: {e}"),
        }),
    }
}

/// Requests in flight, answered in any order and handed back in the order
/// they were sent: one waiting (a 429's `Retry-After`) holds back neither
/// the next sends nor the others' answers, and the report keeps the
/// stage's order. `K`: what names a request (to report one never answered).
struct InOrder<K, F: Future> {
    in_flight: FuturesUnordered<futures::future::Join<futures::future::Ready<usize>, F>>,
    /// Answers not handed back yet, by the order they were sent in.
    answered: BTreeMap<usize, F::Output>,
    /// What was sent and not handed back yet, oldest first.
    keys: VecDeque<K>,
    /// How many were handed back (the sequence number of `keys`' first).
    handed: usize,
}

impl<K: Copy, F: Future> InOrder<K, F> {
    fn new() -> Self {
        InOrder {
            in_flight: FuturesUnordered::new(),
            answered: BTreeMap::new(),
            keys: VecDeque::new(),
            handed: 0,
        }
    }

    /// Requests sent and not answered yet.
    fn unanswered(&self) -> usize {
        self.in_flight.len()
    }

    fn push(&mut self, key: K, request: F) {
        let seq = self.handed + self.keys.len();
        self.keys.push_back(key);
        self.in_flight
            .push(futures::future::join(futures::future::ready(seq), request));
    }

    /// The next answer to come, whichever it is, to look at (it is handed
    /// back in order by [`InOrder::next_in_order`]); `None` when nothing is
    /// in flight.
    async fn answer(&mut self) -> Option<&F::Output> {
        let (seq, output) = self.in_flight.next().await?;
        Some(self.answered.entry(seq).or_insert(output))
    }

    /// The oldest answer, once every earlier one was handed back.
    fn next_in_order(&mut self) -> Option<F::Output> {
        let output = self.answered.remove(&self.handed)?;
        self.handed += 1;
        self.keys.pop_front();
        Some(output)
    }

    /// Stops waiting: what was sent and not handed back, oldest first, with
    /// its answer if it came (now included), else `None`.
    fn stop(&mut self) -> Vec<(K, Option<F::Output>)> {
        while let Some(Some((seq, output))) = self.in_flight.next().now_or_never() {
            self.answered.insert(seq, output);
        }
        let first = self.handed;
        self.handed += self.keys.len();
        self.keys
            .drain(..)
            .enumerate()
            .map(|(i, key)| (key, self.answered.remove(&(first + i))))
            .collect()
    }
}

/// Whether the writer lost its hold on the environment (its lock taken or
/// unrenewed, with `--shard` its Lease).
fn lock_lost(options: &SyncOptions) -> bool {
    options.fence.lost()
}

/// A sync's writes in progress: what they reported so far, and how many
/// consecutive writes could not reach the API server.
struct Run<'a> {
    cluster: &'a Cluster,
    options: &'a SyncOptions,
    report: SyncReport,
    transport_failures: usize,
}

impl Run<'_> {
    /// Counts a write that could not reach the API server (`Some`, with the
    /// error) or that did (`None`); after [`MAX_TRANSPORT_FAILURES`] in a
    /// row the sync stops, saying what happens to what was not written.
    fn count_transport(&mut self, failure: Option<&dyn std::fmt::Display>, unsent: &str) {
        let Some(e) = failure else {
            self.transport_failures = 0;
            return;
        };
        self.transport_failures += 1;
        if self.transport_failures >= MAX_TRANSPORT_FAILURES && self.report.aborted.is_none() {
            self.report.aborted = Some(format!(
                "stopped after {} consecutive failures to reach the API server ({e}); \
                 {unsent}, and the next sync continues from here",
                self.transport_failures
            ));
        }
    }

    /// Applies stage by stage. A dry run cannot send objects whose namespace
    /// or CRD it would only create: they are listed as not validated.
    async fn apply(
        &mut self,
        plan: &Plan,
        desired: &[Object],
        steps: &sync::Steps<'_>,
        progress: &mut impl FnMut(Progress<'_>),
    ) -> Result<(), ClusterError> {
        let cx = ApplyContext::of(plan, desired, self.options);
        // A verb and kind refused once (403) is not sent again.
        let mut refused: BTreeMap<(String, String), (Failure, usize)> = BTreeMap::new();
        for stage in &steps.stages {
            if self.report.aborted.is_some() {
                self.report
                    .not_sent
                    .extend(stage.objects.iter().map(|o| o.id()));
                continue;
            }
            progress(Progress::Stage {
                wave: stage.wave,
                kind: stage.objects.first().map_or("", |o| &*o.kind),
                objects: stage.objects.len(),
            });
            let (unsendable, sendable): (Vec<&Object>, Vec<&Object>) =
                stage.objects.iter().partition(|o| cx.unsendable(o));
            for o in unsendable {
                self.report.created.push(o.id());
                self.report.not_validated.push(o.id());
            }
            self.apply_stage(&cx, sendable, &mut refused, progress)
                .await?;
        }
        for ((_, kind), (mut failure, more)) in refused {
            if more > 0 {
                failure.message.push_str(&format!(
                    "; {more} more {kind} object(s) were refused or not sent (the same permission is missing)"
                ));
            }
            self.report.failures.push(failure);
        }
        if lock_lost(self.options) && self.report.aborted.is_none() {
            self.report.aborted = Some(format!(
                "{}: nothing more was written",
                self.options.fence.why()
            ));
        }
        Ok(())
    }

    /// One stage: a window of requests in flight (as many as the
    /// connection's [`super::throttle::Throttle::limit`] says when each is
    /// sent), answers taken as they come and recorded in the order sent
    /// ([`InOrder`]).
    async fn apply_stage(
        &mut self,
        cx: &ApplyContext<'_>,
        sendable: Vec<&Object>,
        refused: &mut BTreeMap<(String, String), (Failure, usize)>,
        progress: &mut impl FnMut(Progress<'_>),
    ) -> Result<(), ClusterError> {
        let (cluster, options) = (self.cluster, self.options);
        let lock_lost = || lock_lost(options);
        let mut queue = sendable.into_iter();
        let mut window = InOrder::new();
        loop {
            // As many as the window holds now (it may have grown or shrunk).
            while window.unanswered() < cluster.throttle().limit() {
                let Some(o) = next_sendable(&mut queue, refused, &mut self.report, &lock_lost)
                else {
                    break;
                };
                window.push(o, applied(cluster, o, options, cx));
            }
            let Some((_, result)) = window.answer().await else {
                break;
            };
            // Classified as it comes, so that the next object sent knows.
            match result {
                Err(ApplyError::Cluster { source, .. })
                    if source.is_transport() || source.is_busy() =>
                {
                    self.count_transport(
                        Some(source),
                        "what was not sent is listed, the inventory still covers it",
                    )
                }
                _ => self.count_transport(None, ""),
            }
            while let Some((o, result)) = window.next_in_order() {
                // Objects of a CRD's kind wait until it is Established.
                if &*o.kind == "CustomResourceDefinition"
                    && result.is_ok()
                    && !options.dry_run
                    && !cluster.wait_established(&o.name, ESTABLISH_TIMEOUT).await?
                {
                    self.report.failures.push(Failure {
                        id: o.id(),
                        message: format!("not Established after {ESTABLISH_TIMEOUT:?}"),
                    });
                }
                let id = o.id();
                progress(Progress::Applied {
                    id: &id,
                    ok: result.is_ok(),
                });
                record_applied(&mut self.report, refused, cx, o, result);
            }
            if self.report.aborted.is_some() {
                // Stopped: answers already in are recorded as they are; the
                // writes still in flight are not waited for (each could
                // take WRITE_TIMEOUT more of a frozen server).
                for (o, answer) in window.stop() {
                    match answer {
                        Some((o, result)) => {
                            record_applied(&mut self.report, refused, cx, o, result)
                        }
                        None => self.report.failures.push(unanswered(o.id())),
                    }
                }
                break;
            }
        }
        Ok(())
    }

    /// A prune's delete answered.
    fn record_pruned<'s>(
        &mut self,
        r: &'s ObjectRef,
        result: Result<bool, ClusterError>,
        pruned: &mut Vec<&'s ObjectRef>,
    ) {
        match result {
            Ok(_) => {
                self.report.pruned.push(r.id());
                pruned.push(r);
            }
            Err(ClusterError::Fenced) => self.report.not_sent.push(r.id()),
            Err(e) => self.report.failures.push(Failure {
                id: r.id(),
                message: format!("prune failed: {e}"),
            }),
        }
    }

    /// Deletes what the steps prune, stage after stage (children before
    /// their namespaces), a window of deletes in flight within a stage (as
    /// for applies); not when anything failed to apply. Returns what was
    /// deleted.
    async fn prune<'s>(
        &mut self,
        steps: &'s sync::Steps<'_>,
        progress: &mut impl FnMut(Progress<'_>),
    ) -> Vec<&'s ObjectRef> {
        let mut pruned: Vec<&ObjectRef> = Vec::new();
        if !self.report.succeeded() && !steps.prune.is_empty() {
            self.report.prune_skipped =
                Some("some objects failed to apply; nothing was pruned".into());
            return pruned;
        }
        let (cluster, options) = (self.cluster, self.options);
        let lock_lost = || lock_lost(options);
        let mut refused: HashMap<String, usize> = HashMap::new();
        for stage in &steps.prune {
            if self.report.aborted.is_some() {
                self.report.not_sent.extend(stage.iter().map(ObjectRef::id));
                continue;
            }
            let mut queue = stage.iter();
            let mut window = InOrder::new();
            loop {
                while window.unanswered() < cluster.throttle().limit() {
                    let Some(r) =
                        next_deletable(&mut queue, &mut refused, &mut self.report, &lock_lost)
                    else {
                        break;
                    };
                    window.push(r, deleted(cluster, r, options));
                }
                let Some((r, result)) = window.answer().await else {
                    break;
                };
                match result {
                    Err(e) if e.is_transport() || e.is_busy() => {
                        self.count_transport(Some(e), "what was not deleted stays in the inventory")
                    }
                    Err(e) if e.is_permission() => {
                        self.count_transport(None, "");
                        refused.entry(r.kind.to_string()).or_insert(0);
                    }
                    _ => self.count_transport(None, ""),
                }
                while let Some((r, result)) = window.next_in_order() {
                    let id = r.id();
                    progress(Progress::Pruned {
                        id: &id,
                        ok: result.is_ok(),
                    });
                    self.record_pruned(r, result, &mut pruned);
                }
                if self.report.aborted.is_some() {
                    for (r, answer) in window.stop() {
                        match answer {
                            Some((r, result)) => self.record_pruned(r, result, &mut pruned),
                            None => self.report.failures.push(unanswered(r.id())),
                        }
                    }
                    break;
                }
            }
        }
        for (kind, more) in refused {
            if more > 0
                && let Some(f) = self
                    .report
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
        pruned
    }
}

/// What each apply needs to know of the plan.
struct ApplyContext<'a> {
    options: &'a SyncOptions,
    manager: String,
    created: HashSet<ObjectKey<'a>>,
    adopted: HashSet<ObjectKey<'a>>,
    /// The ownership policy's work besides each apply (field_policy::Heal).
    heals: HashMap<ObjectKey<'a>, &'a Heal>,
    /// The `uid` of each object as the plan listed it: a recreate
    /// (`--force-recreate`) deletes that object and no other.
    uids: HashMap<ObjectKey<'a>, &'a str>,
    /// Namespaces this sync creates.
    new_namespaces: BTreeSet<&'a str>,
    /// Kinds (group, kind) whose CRD this sync creates.
    new_kinds: BTreeSet<(String, String)>,
}

impl<'a> ApplyContext<'a> {
    fn of(plan: &'a Plan, desired: &'a [Object], options: &'a SyncOptions) -> ApplyContext<'a> {
        let keys = |action: Action| {
            plan.changes
                .iter()
                .filter(|c| c.action == action)
                .map(Change::key)
                .collect()
        };
        let new_namespaces = plan
            .changes
            .iter()
            .filter(|c| &*c.kind == "Namespace" && c.action == Action::Create)
            .map(|c| &*c.name)
            .collect();
        let new_kinds = desired
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
        ApplyContext {
            options,
            manager: crate::object::field_manager(&plan.environment),
            created: keys(Action::Create),
            adopted: keys(Action::Adopt),
            heals: heals_of(plan),
            uids: plan
                .changes
                .iter()
                .filter_map(|c| Some((c.key(), c.live.as_ref()?.uid.as_str())))
                .collect(),
            new_namespaces,
            new_kinds,
        }
    }

    /// A dry run cannot send an object whose namespace or CRD it would only
    /// create.
    fn unsendable(&self, o: &Object) -> bool {
        let group = o.api_version.split_once('/').map_or("", |(g, _)| g);
        self.options.dry_run
            && (o
                .namespace
                .as_deref()
                .is_some_and(|ns| self.new_namespaces.contains(ns))
                || self
                    .new_kinds
                    .contains(&(group.to_string(), o.kind.to_string())))
    }
}

/// An apply's result into the report. A permission refused (403) is
/// reported once per verb and kind, with how many more objects it kept from
/// being sent.
fn record_applied(
    report: &mut SyncReport,
    refused: &mut BTreeMap<(String, String), (Failure, usize)>,
    cx: &ApplyContext<'_>,
    o: &Object,
    result: Result<bool, ApplyError>,
) {
    let id = o.id();
    match result {
        Err(ApplyError::Cluster {
            source: ClusterError::Fenced,
            ..
        }) => report.not_sent.push(id),
        Ok(false) if cx.created.contains(&o.key()) => report.created.push(id),
        Ok(false) if cx.adopted.contains(&o.key()) => report.adopted.push(id),
        Ok(false) => report.updated.push(id),
        Ok(true) => report.recreated.push(id),
        Err(ApplyError::Conflict { id, fields }) => report.conflicts.push(Conflict { id, fields }),
        Err(ApplyError::Cluster { source, .. }) if source.is_permission() => {
            let key = ("patch".to_string(), o.kind.to_string());
            match refused.get_mut(&key) {
                Some((_, n)) => {
                    *n += 1;
                    report.not_sent.push(id);
                }
                None => {
                    let message = format!("{id}: {source}");
                    refused.insert(key, (Failure { id, message }, 0));
                }
            }
        }
        Err(e) => report.failures.push(Failure {
            id,
            message: e.to_string(),
        }),
    }
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
    cx: &ApplyContext<'_>,
) -> (&'a Object, Result<bool, ApplyError>) {
    // Adopting takes the declared fields over from whoever wrote them.
    let force = options.force_conflicts || cx.adopted.contains(&object.key());
    let heal = cx.heals.get(&object.key()).copied();
    let precondition = precondition_of(options, &object.id());
    let uid = cx.uids.get(&object.key()).copied();
    let result = match tokio::time::timeout(
        WRITE_DEADLINE,
        apply_one(
            cluster,
            object,
            options,
            &cx.manager,
            force,
            heal,
            precondition,
            uid,
        ),
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

/// A write sent but not answered when the sync stopped.
fn unanswered(id: String) -> Failure {
    Failure {
        id,
        message: "sent, but the sync stopped before the API server answered: it may or may not \
                  have been written (the inventory still covers it; the next sync finds out)"
            .to_string(),
    }
}

/// A saved plan's precondition of object `id`, if the sync has any.
fn precondition_of<'o>(options: &'o SyncOptions, id: &str) -> Option<&'o LiveVersion> {
    options.preconditions.as_ref()?.get(id)
}

async fn deleted<'a>(
    cluster: &Cluster,
    r: &'a ObjectRef,
    options: &SyncOptions,
) -> (&'a ObjectRef, Result<bool, ClusterError>) {
    let precondition = precondition_of(options, &r.id());
    let delete = cluster.delete_if(r, precondition, options.dry_run, &options.fence);
    let result = match tokio::time::timeout(WRITE_DEADLINE, delete).await {
        Ok(r) => r,
        Err(_) => Err(no_answer(cluster)),
    };
    (r, result)
}

fn no_answer(cluster: &Cluster) -> ClusterError {
    ClusterError::Unreachable {
        server: cluster.server().to_string(),
        reason: format!("no answer within {}s", WRITE_DEADLINE.as_secs()),
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
            .all(|f| f.manager == crate::object::FIELD_MANAGER)
}

/// Applies one object; `Ok(true)` when it had to be recreated. `uid` is
/// the object's as planned: a recreate deletes only that object (one
/// replaced meanwhile by someone else is refused, not deleted).
#[allow(clippy::too_many_arguments)]
async fn apply_one(
    cluster: &Cluster,
    object: &Object,
    options: &SyncOptions,
    manager: &str,
    force: bool,
    heal: Option<&Heal>,
    precondition: Option<&LiveVersion>,
    uid: Option<&str>,
) -> Result<bool, ApplyError> {
    let first = cluster
        .apply_healed(
            object,
            heal,
            precondition,
            options.dry_run,
            force,
            manager,
            &options.fence,
        )
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
                .apply_healed(
                    object,
                    rest,
                    precondition,
                    options.dry_run,
                    true,
                    manager,
                    &options.fence,
                )
                .await
        }
        other => other,
    };
    match first {
        Err(ApplyError::Immutable { id, message })
            if options.force_recreate && !options.dry_run =>
        {
            // An object the plan did not list (it was to be created) is
            // someone else's since: never deleted to be recreated.
            let Some(uid) = uid else {
                return Err(ApplyError::Invalid {
                    id,
                    message: format!(
                        "{message}; it was not there when the sync planned it (someone created it since), so it is not deleted to be recreated: run the sync again"
                    ),
                });
            };
            let uid = Some(uid);
            let r = ObjectRef::of(object);
            cluster
                .delete_uid(&r, uid, &options.fence)
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
                .apply(object, false, force, manager, &options.fence)
                .await
                .map(|()| true)
        }
        other => other.map(|()| false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn answers_are_handed_back_in_the_order_sent_while_a_late_one_holds_back_no_send() {
        let (tx, rx): (Vec<_>, Vec<_>) = (0..3)
            .map(|_| tokio::sync::oneshot::channel::<u32>())
            .unzip();
        type Answer = std::pin::Pin<Box<dyn Future<Output = u32>>>;
        let mut window: InOrder<usize, Answer> = InOrder::new();
        for (key, rx) in rx.into_iter().enumerate() {
            window.push(key, Box::pin(async move { rx.await.unwrap_or(0) }));
        }
        let mut tx = tx.into_iter();
        let (first, second, third) = (tx.next(), tx.next(), tx.next());
        // The second answers first: seen at once, handed back only after
        // the first; it no longer counts as in flight.
        second.map(|t| t.send(2));
        assert_eq!(window.answer().await, Some(&2));
        assert_eq!(window.unanswered(), 2);
        assert_eq!(window.next_in_order(), None);
        first.map(|t| t.send(1));
        assert_eq!(window.answer().await, Some(&1));
        assert_eq!(window.next_in_order(), Some(1));
        assert_eq!(window.next_in_order(), Some(2));
        assert_eq!(window.next_in_order(), None);
        // Stopped with the third unanswered: named, with no answer.
        window.push(3, Box::pin(async { 4 }));
        let rest = window.stop();
        assert_eq!(rest, vec![(2, None), (3, Some(4))]);
        drop(third);
    }

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
