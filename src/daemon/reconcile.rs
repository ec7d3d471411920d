//! One environment's reconcile loop, kube-runtime style: a reconcile is a
//! sequence of steps (read the source, connect and lock, plan and apply,
//! report) that either succeeds or fails with a typed [`ReconcileError`];
//! what the loop does next is an [`Action`], and failures are retried by
//! one error policy ([`Backoff`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::drift_watch::Changes;
use super::{EnvironmentStatus, RunOptions, Shared, SyncStatus, WorkspaceStatus, now};
use super::{publish_status, stale_after};
use crate::cluster::execute::{self as cluster_sync};
use crate::cluster::lock::LockError;
use crate::cluster::wait::Listing;
use crate::cluster::{Cluster, ClusterError, ClusterOptions};
use crate::declare::model::SyncMode;
use crate::declare::repo::SourceTree;
use crate::declare::validate;
use crate::pipeline::{self, Deletes, DesiredState, Intake, LivePlan, PlanOptions, Refused};
use crate::plan::{Action as ChangeAction, Plan};
use crate::source;
use crate::sync::SyncOptions;
use crate::sync::health::{self, Health, HealthOptions};
use crate::sync::inventory::{Inventory, ObjectRef};
use crate::sync::report::SyncReport;
use crate::sync::status::{
    Commit, FailedHealth, ObjectStatus, ReconcileRecord, objects_by_workspace,
};
use crate::sync::windows;

#[path = "resume.rs"]
mod resume;
#[path = "rollout.rs"]
mod rollout;

/// Why a reconcile failed. [`ReconcileError::reason`] names it in one word
/// for the status, the logs and the metrics.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The repository cannot be read (the message has any URL's user
    /// information masked).
    #[error("cannot read the repository (the last good revision stays applied): {0}")]
    Source(String),
    /// No revision has been valid yet.
    #[error("no valid revision yet")]
    NoRevision,
    /// The newest revision cannot be applied (unreadable or invalid): the
    /// last good one is still checked, and this said until a good one
    /// arrives.
    #[error("{0}")]
    Newest(String),
    /// The newest revision is invalid.
    #[error("{0}")]
    Invalid(String),
    /// The newest revision breaks the operator's guardrails.
    #[error("{0}")]
    Guardrail(String),
    /// The cluster cannot be reached, or refused a read.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// The revision would prune more than the guard allows.
    #[error("revision {revision} is blocked: nothing was changed: {message}")]
    Blocked { revision: String, message: String },
    /// Objects were not applied (one line each).
    #[error("{0}")]
    Apply(String),
    /// Another writer holds the environment's lock.
    #[error(
        "environment {environment} is locked by {holder}: another writer is syncing it; this daemon writes again once the lock is released"
    )]
    Locked { environment: String, holder: String },
    /// Some workspaces are held (invalid) while the others were applied.
    #[error("{0}")]
    Held(String),
    /// The new revision is not signed by a trusted key (the last good one
    /// stays applied).
    #[error("{0}")]
    Untrusted(String),
    /// The revision is approved with a plan (`approve --plan`) that is not
    /// its plan now.
    #[error("{0}")]
    PlanNotApproved(String),
}

impl ReconcileError {
    /// The reason in one word: source, invalid, guardrail, cluster, guard,
    /// apply, locked.
    pub fn reason(&self) -> &'static str {
        match self {
            ReconcileError::Source(_) | ReconcileError::NoRevision | ReconcileError::Newest(_) => {
                "source"
            }
            ReconcileError::Invalid(_) | ReconcileError::Held(_) => "invalid",
            ReconcileError::Guardrail(_) => "guardrail",
            ReconcileError::Cluster(_) => "cluster",
            ReconcileError::Blocked { .. } => "guard",
            ReconcileError::Apply(_) => "apply",
            ReconcileError::Locked { .. } => "locked",
            ReconcileError::Untrusted(_) => "untrusted",
            ReconcileError::PlanNotApproved(_) => "approval",
        }
    }

    /// The connection may be broken: reconnect next time.
    fn is_transport(&self) -> bool {
        matches!(self, ReconcileError::Cluster(e) if e.is_transport())
    }
}

/// What the loop does after a reconcile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Read the source again after this long (or sooner, on a trigger).
    Requeue(Duration),
    /// Leave the next read where it was: wait for it, a trigger or the drift
    /// interval.
    AwaitChange,
}

/// The one error policy: a failed read of the source is retried sooner,
/// from 1 s, doubling up to the poll interval; a success starts it over.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_secs(1);

    pub fn new(max: Duration) -> Backoff {
        Backoff {
            next: Backoff::FIRST,
            max,
        }
    }

    /// The action after a reconcile that read the source (`polled`) or only
    /// checked the cluster: only a read of the source moves the next read,
    /// so a drift check (which fails while the newest revision is bad) never
    /// keeps postponing it.
    pub fn action(&mut self, polled: bool, result: &Result<(), ReconcileError>) -> Action {
        match (polled, result) {
            (false, _) => Action::AwaitChange,
            (true, Ok(())) => {
                self.next = Backoff::FIRST;
                Action::Requeue(self.max)
            }
            (true, Err(_)) => {
                let wait = self.next.min(self.max);
                self.next = (self.next * 2).min(self.max);
                Action::Requeue(wait)
            }
        }
    }
}

/// The least time between two drift checks set off by the watches: a
/// writer that fights tenantsync over a field (re-writing it as soon as it
/// is healed) gets at most one heal a second, not one per write.
pub const WATCH_CHECK_GAP: Duration = Duration::from_secs(1);

/// When the loop next reads the source and checks for drift.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    next_poll: Instant,
    next_drift: Instant,
    drift_interval: Duration,
    /// When the objects the watches saw change are next checked (only
    /// their workspaces), if any wait.
    next_changes: Option<Instant>,
    /// When the last drift check (of everything, or of changes) ran.
    last_drift_run: Option<Instant>,
}

impl Schedule {
    /// A read now, a drift check one drift interval from now.
    pub fn new(now: Instant, drift_interval: Duration) -> Schedule {
        Schedule {
            next_poll: now,
            next_drift: now + drift_interval,
            drift_interval,
            next_changes: None,
            last_drift_run: None,
        }
    }

    /// Whether a read of the source, and a drift check, are due. Drift is
    /// checked against a revision already read (`read`): until one is, only
    /// the source's reads run, backed off (a drift tick would read the
    /// source too, every drift interval).
    pub fn due(&self, now: Instant, read: bool) -> (bool, bool) {
        (now >= self.next_poll, read && now >= self.next_drift)
    }

    /// After a reconcile: the next read as `action` says, the next drift
    /// check a drift interval on.
    pub fn after(&mut self, now: Instant, action: Action) {
        if let Action::Requeue(wait) = action {
            self.next_poll = now + wait;
        }
        self.next_drift = now + self.drift_interval;
    }

    /// After a quiet poll (one that compared nothing, the watches vouching
    /// for the cluster): the next read as `action` says, the next drift
    /// check where it was, so the periodic full comparison, the safety net
    /// for what a watch may miss, still comes every drift interval.
    pub fn after_quiet(&mut self, now: Instant, action: Action) {
        if let Action::Requeue(wait) = action {
            self.next_poll = now + wait;
        }
    }

    /// A trigger (webhook, file change): read now.
    pub fn poll_now(&mut self, now: Instant) {
        self.next_poll = now;
    }

    /// A check of everything now, as soon as the loop looks (a check of
    /// changes found it could not stand for one).
    pub fn drift_at_once(&mut self, now: Instant) {
        self.next_drift = self.next_drift.min(now);
    }

    /// A drift check of everything ran (started) at `at`: it covers the
    /// changes seen before it.
    pub fn drift_ran(&mut self, at: Instant) {
        self.last_drift_run = Some(at);
        self.next_changes = None;
    }

    /// The objects a watch saw another writer change are to be checked
    /// now: not sooner than [`WATCH_CHECK_GAP`] after the last drift check
    /// ran (changes arriving meanwhile join the check already due, and
    /// never push it further away). The periodic check stays where it is.
    pub fn changes_now(&mut self, now: Instant) {
        let at = self
            .last_drift_run
            .map_or(now, |last| now.max(last + WATCH_CHECK_GAP));
        self.next_changes = Some(self.next_changes.map_or(at, |due| due.min(at)));
    }

    /// Whether a check of changed objects is due (against a revision
    /// already read, `read`).
    pub fn changes_due(&self, now: Instant, read: bool) -> bool {
        read && self.next_changes.is_some_and(|at| now >= at)
    }

    /// A check of changed objects ran (started) at `at`.
    pub fn changes_ran(&mut self, at: Instant) {
        self.last_drift_run = Some(at);
        self.next_changes = None;
    }

    /// When to wake next: the next read, or the next drift check (of
    /// everything, or of changes) once a revision was read.
    pub fn wake_at(&self, read: bool) -> Instant {
        if read {
            let at = self.next_poll.min(self.next_drift);
            self.next_changes.map_or(at, |changes| at.min(changes))
        } else {
            self.next_poll
        }
    }
}

/// The most objects seen changed that one check covers by their
/// workspaces alone; more are checked with everything.
const MAX_CHANGES_CHECKED: usize = 64;

/// The most namespaces one check of changes lists (one LIST per kind and
/// namespace, one after another); objects of more are checked with
/// everything. Within what the cluster lists namespace by namespace.
const MAX_NAMESPACES_CHECKED: usize = 4;
const _: () = assert!(MAX_NAMESPACES_CHECKED <= crate::cluster::MAX_NAMESPACES_LISTED_APART);

/// What a check of the changes the watches saw did.
enum Narrowed {
    /// It checked (and healed) the changed objects' workspaces.
    Checked(Result<(), ReconcileError>),
    /// Its heal failed: reported as a failed sync; everything is checked
    /// next.
    HealFailed(Result<(), ReconcileError>),
    /// It could not stand for a check of everything, for this reason.
    Everything(&'static str),
}

/// The environment's sync status now: put back
/// ([`put_back_sync_status`]) when a narrowed sync gives way to a full one.
fn sync_status_now(shared: &Shared, env: &str) -> Option<SyncStatus> {
    let status = shared.status.read().ok()?;
    status.environments.get(env).map(|e| e.sync_status)
}

/// Puts back the sync status `before` a narrowed sync's `Syncing`.
fn put_back_sync_status(shared: &Shared, env: &str, before: Option<SyncStatus>) {
    shared.update(env, |s| {
        s.sync_status = before.unwrap_or(s.sync_status);
        s.target_revision = None;
    });
}

/// A reconcile's entry in the environment's history.
fn record_reconcile(
    env: &str,
    shared: &Shared,
    started: Instant,
    changed: usize,
    result: &Result<(), ReconcileError>,
) {
    let record = ReconcileRecord {
        at: now(),
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        result: SyncStatus::Unknown,
        changed,
        error_reason: result.as_ref().err().map(|e| e.reason().to_string()),
    };
    shared.update(env, |s| {
        s.record_reconcile(ReconcileRecord {
            result: s.sync_status,
            ..record
        });
    });
}

/// The connection's write window and its 429s not counted yet into the
/// metrics.
fn publish_throttle(env: &str, shared: &Shared, cluster: Option<&Cluster>) {
    let Some(cluster) = cluster else { return };
    let throttle = cluster.throttle();
    shared
        .metrics
        .set_api_throttle(env, throttle.limit(), throttle.take_unpublished());
}

use super::shard::HANDED_OVER;

/// Whether a sync stopped part way because this replica handed its
/// environment over (`--shard`): no failure.
fn stopped_for_hand_over(report: &crate::sync::report::SyncReport) -> bool {
    report
        .aborted
        .as_deref()
        .is_some_and(|why| why.starts_with(HANDED_OVER))
}

/// How often the approval of a revision waiting for one is looked for.
const APPROVAL_CHECK: Duration = Duration::from_secs(1);

pub(super) async fn reconcile_loop(
    env: String,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let options = shared.options.clone();
    let mut trigger = shared.trigger.subscribe();
    // With --shard: a takeover, a hand-over or a webhook passed on.
    let mut own_trigger = shared.owners.subscribe(&env);
    let mut reconciler = Reconciler::new(env.clone(), shared.clone());
    // The status fields last written onto the inventory.
    let mut written: BTreeMap<String, String> = BTreeMap::new();
    let mut backoff = Backoff::new(options.interval);
    let mut schedule = Schedule::new(Instant::now(), options.drift_interval);
    let mut drift_watch = super::drift_watch::DriftWatcher::new(&env);
    reconciler.watch_changes = drift_watch.sent();
    // What the watches saw change since the last check.
    let mut seen = Changes::default();
    loop {
        // A reconcile boundary: an environment over this replica's share
        // is handed over here (a sync in flight stopped at its next write:
        // its fence).
        if shared.owners.hand_over_requested(&env) {
            reconciler.release().await;
            shared.owners.handed_over(&env);
        }
        let read = reconciler.desired.is_some();
        let (poll, drift) = schedule.due(Instant::now(), read);
        if !poll && !drift && schedule.changes_due(Instant::now(), read) {
            // Only the workspaces of what changed: no LIST of everything.
            let started = Instant::now();
            schedule.changes_ran(started);
            let changes = std::mem::take(&mut seen);
            reconciler.changed = 0;
            let handed_out = drift_watch.handed_out();
            match reconciler.check_changed(&changes, handed_out).await {
                Narrowed::Everything(why) => {
                    tracing::debug!(environment = %env, why, "checking everything for the changes seen");
                    schedule.drift_at_once(Instant::now());
                }
                Narrowed::Checked(result) => {
                    shared.metrics.observe_reconcile(&env, started.elapsed());
                    record_reconcile(&env, &shared, started, reconciler.changed, &result);
                    publish_throttle(&env, &shared, reconciler.cluster.as_ref());
                    publish_status(&env, &shared, reconciler.cluster.as_ref(), &mut written).await;
                }
                Narrowed::HealFailed(result) => {
                    shared.metrics.observe_reconcile(&env, started.elapsed());
                    record_reconcile(&env, &shared, started, reconciler.changed, &result);
                    publish_throttle(&env, &shared, reconciler.cluster.as_ref());
                    publish_status(&env, &shared, reconciler.cluster.as_ref(), &mut written).await;
                    // Everything is compared next, a drift check's gap on.
                    schedule.drift_at_once(started + WATCH_CHECK_GAP);
                }
            }
            continue;
        }
        if poll || drift {
            let started = Instant::now();
            reconciler.changed = 0;
            // A poll between drift checks need not compare again what the
            // watches vouch for.
            let watched = (poll && !drift)
                .then(|| drift_watch.complete_since())
                .flatten()
                .map(Instant::from_std);
            if drift {
                schedule.drift_ran(started);
                seen = Changes::default();
            }
            let result = reconciler.reconcile(poll, watched).await;
            shared.metrics.observe_reconcile(&env, started.elapsed());
            record_reconcile(&env, &shared, started, reconciler.changed, &result);
            publish_throttle(&env, &shared, reconciler.cluster.as_ref());
            // The status must reach the inventory even when the reconcile
            // dropped its connection.
            reconciler.reconnect().await;
            publish_status(&env, &shared, reconciler.cluster.as_ref(), &mut written).await;
            if reconciler.skipped {
                schedule.after_quiet(Instant::now(), backoff.action(poll, &result));
            } else {
                schedule.after(Instant::now(), backoff.action(poll, &result));
            }
            if let (Some(c), Some(d)) = (reconciler.cluster.as_ref(), reconciler.desired.as_ref()) {
                drift_watch.ensure(c, &d.state.objects).await;
            }
            continue;
        }
        let mut watching = reconciler.health_watch.take();
        let mut settled = None;
        tokio::select! {
            outcome = wait_watch(&mut watching), if watching.is_some() => settled = Some(outcome),
            _ = tokio::time::sleep_until(schedule.wake_at(reconciler.desired.is_some())) => {},
            changed = trigger.changed() => {
                if changed.is_ok() { schedule.poll_now(Instant::now()); }
            },
            () = tokio::time::sleep(rollout::ROLLOUT_CHECK), if reconciler.rolling() => {
                schedule.poll_now(Instant::now());
            },
            Some(Ok(())) = async { match own_trigger.as_mut() {
                Some(t) => Some(t.changed().await),
                None => None,
            } } => schedule.poll_now(Instant::now()),
            more = drift_watch.changed() => {
                let first = more.objects.first().map(ObjectRef::id).unwrap_or_default();
                tracing::info!(environment = %env, object = %first, objects = more.objects.len(), overflowed = more.overflowed, "changed by another writer: checking drift now");
                shared.metrics.watch_change(&env);
                seen.merge(more, MAX_CHANGES_CHECKED);
                schedule.changes_now(Instant::now());
            },
            () = tokio::time::sleep(APPROVAL_CHECK), if reconciler.waiting.is_some() => {
                if reconciler.may_apply_now().await { schedule.poll_now(Instant::now()); }
            },
            _ = shutdown.changed() => {},
        }
        match (watching, settled) {
            (Some(watch), Some(outcome)) => {
                reconciler.health_settled(&watch.revision, outcome).await;
                reconciler.reconnect().await;
                publish_status(&env, &shared, reconciler.cluster.as_ref(), &mut written).await;
            }
            (watch, _) => reconciler.health_watch = watch,
        }
        if *shutdown.borrow() {
            reconciler.release().await;
            return;
        }
    }
}

/// Whether this replica may write in this reconcile, and who holds the
/// environment's lock when another writer does.
struct Writer {
    may_write: bool,
    locked_by: Option<String>,
    /// Lost when this replica no longer holds the environment: its lock,
    /// and with `--shard` its Lease (checked before every write).
    fence: crate::sync::Fence,
}

/// One environment's reconciles and what they keep between them.
struct Reconciler {
    env: String,
    shared: Arc<Shared>,
    cluster: Option<Cluster>,
    desired: Option<Arc<Desired>>,
    /// Why the newest revision cannot be applied (unreadable or invalid):
    /// kept, and the status kept Failed, until a good revision arrives.
    source_problem: Option<String>,
    held: Held,
    /// Objects created, updated or pruned by the reconcile in flight.
    changed: usize,
    /// The revision waiting for an approval or a sync window.
    waiting: Option<String>,
    /// Whether self-heal may re-apply drift now (the sync windows).
    heal_allowed: bool,
    /// The rollout of the newest revision (`syncPolicy.rollout`).
    rollout: Option<rollout::RolloutRun>,
    /// The health of the workspaces the last applied revision changed, being
    /// watched until its health deadline.
    health_watch: Option<HealthWatch>,
    /// The desired revision's failed health (and what was rolled back):
    /// said in status until a newer revision arrives.
    failed_health: Option<FailedHealth>,
    /// A rollback is composed (the desired state) but not applied in full
    /// yet: each reconcile applies it until one does.
    rollback_pending: bool,
    /// The sync in flight finishes before a hand-over (`--shard`): one
    /// applying an approved plan (that the approval's check passed is this
    /// replica's to know) or a rollback (decided here, recorded once it
    /// applied).
    hand_over_waits: Arc<AtomicBool>,
    /// The revision and approved plan (`approve --plan`) whose check passed
    /// and whose sync began.
    plan_passed: Option<(String, String)>,
    /// The `RolledBack` Event of a rollback a later reconcile completed,
    /// to record.
    rollback_event: Option<String>,
    /// The desired state was just read: it is still to be matched with the
    /// inventory's per-workspace revisions ([`Reconciler::pin_to_inventory`]).
    needs_pinning: bool,
    /// The revision last compared with the cluster and found in sync, and
    /// when that compare started.
    clean: Option<(String, Instant)>,
    /// How many changes of other writers the watches had reported when
    /// that compare started ([`Reconciler::watch_changes`] then).
    clean_changes: u64,
    /// How many changes of other writers the drift watches ever reported.
    watch_changes: Arc<std::sync::atomic::AtomicU64>,
    /// The reconcile in flight compared nothing (see [`Reconciler::quiet`]).
    skipped: bool,
    /// The health judgements the inventory records as unfinished were
    /// taken up in this term as the writer ([`Reconciler::resume_health`]).
    resumed: bool,
    /// Workspaces judged Healthy at a revision whose record in the
    /// inventory failed: the write is tried again at each reconcile while
    /// that revision is the desired one (never the judgement).
    healthy_unrecorded: Option<(String, Vec<String>)>,
}

impl Reconciler {
    fn new(env: String, shared: Arc<Shared>) -> Reconciler {
        Reconciler {
            env,
            shared,
            cluster: None,
            desired: None,
            source_problem: None,
            held: Held::default(),
            changed: 0,
            waiting: None,
            heal_allowed: true,
            healthy_unrecorded: None,
            rollout: None,
            health_watch: None,
            failed_health: None,
            rollback_pending: false,
            hand_over_waits: Arc::new(AtomicBool::new(false)),
            plan_passed: None,
            rollback_event: None,
            needs_pinning: false,
            clean: None,
            clean_changes: 0,
            watch_changes: Arc::default(),
            skipped: false,
            resumed: false,
        }
    }

    /// One reconcile. `from_source`: read the source (a poll or a trigger);
    /// otherwise only check the cluster against the last good revision.
    /// `watched`: since when the drift watches have seen every change.
    async fn reconcile(
        &mut self,
        from_source: bool,
        watched: Option<Instant>,
    ) -> Result<(), ReconcileError> {
        let started = Instant::now();
        let changes = self.watch_changes.load(std::sync::atomic::Ordering::SeqCst);
        self.skipped = false;
        let result = self.compare(from_source, watched).await;
        if !self.skipped {
            self.clean_changes = changes;
            let synced = self.shared.status.read().is_ok_and(|s| {
                s.environments
                    .get(&self.env)
                    .is_some_and(|e| e.sync_status == SyncStatus::Synced)
            });
            self.clean = match (&result, self.desired.as_ref()) {
                (Ok(()), Some(d)) if synced && self.waiting.is_none() => {
                    Some((d.revision().to_string(), started))
                }
                _ => None,
            };
        }
        result
    }

    /// A poll that found the revision last compared and found in sync,
    /// still the one the inventory records, while the watches have seen
    /// every change since that compare (any would have started a drift
    /// check): nothing to compare, so no LIST.
    async fn quiet(&mut self, state: &Desired, writer: &Writer, watched: Option<Instant>) -> bool {
        let unchanged = self.clean.as_ref().is_some_and(|(revision, at)| {
            revision == state.revision() && watched.is_some_and(|since| since <= *at)
        });
        // A rollback still to apply, or a rollout under way, has work a
        // quiet poll would skip (a health watch runs on its own).
        if !unchanged
            || writer.locked_by.is_some()
            || self.source_problem.is_some()
            || self.rollback_pending
            || self.rollout.as_ref().is_some_and(|r| r.has_work())
        {
            return false;
        }
        // A `tenantsync sync` of another revision writes as this
        // environment's field manager, unseen by the watches; the revision
        // its inventory records tells (one GET).
        let Some(c) = self.cluster.as_ref() else {
            return false;
        };
        match c.inventory_data(&self.env).await {
            Ok(Some(data))
                if data.get("revision").map(String::as_str) == Some(state.revision()) => {}
            _ => return false,
        }
        self.skipped = true;
        self.record_outcome(None).await;
        self.shared
            .update(&self.env, |s| s.last_reconcile_at = Some(now()));
        true
    }

    /// A check of only the workspaces whose objects the watches saw
    /// another writer change: their namespaces listed, their drift healed
    /// (with self-heal), and nothing else listed. It stands for a check of
    /// everything only where that would do the same: the revision is the
    /// one last compared and found in sync and the inventory still records
    /// it, nothing waits (a rollout, a rollback, an approval, a failed
    /// health judgement), and what changed is in a few workspaces'
    /// namespaces, none held. Anywhere else, and where drift is to be
    /// reported rather than healed, [`Narrowed::Everything`]: the loop
    /// checks everything at once, which reports as a drift check always
    /// has.
    ///
    /// `handed_out`: how many changes the watches had handed to the loop
    /// (all of them, `changes` and those a check covered before).
    async fn check_changed(&mut self, changes: &Changes, handed_out: u64) -> Narrowed {
        use Narrowed::Everything;
        let sent = self.watch_changes.load(std::sync::atomic::Ordering::SeqCst);
        if changes.overflowed || changes.objects.len() > MAX_CHANGES_CHECKED {
            return Everything("more objects changed than one check of their workspaces covers");
        }
        let Some(state) = self.desired.clone() else {
            return Everything("no revision read yet");
        };
        let in_sync = self
            .clean
            .as_ref()
            .is_some_and(|(revision, _)| revision == state.revision());
        if !in_sync {
            return Everything("the revision was not last found in sync");
        }
        if self.needs_pinning
            || self.source_problem.is_some()
            || self.rollback_pending
            || self.waiting.is_some()
            || self.failed_health.is_some()
            || self.rollout.as_ref().is_some_and(|r| r.has_work())
        {
            return Everything("a rollout, rollback, approval or health judgement waits");
        }
        let mut namespaces: BTreeSet<&str> = BTreeSet::new();
        for o in &changes.objects {
            match (o.namespace.as_deref(), &*o.kind) {
                (Some(ns), _) => namespaces.insert(ns),
                (None, "Namespace") => namespaces.insert(&*o.name),
                (None, _) => return Everything("a cluster-scoped object changed"),
            };
        }
        if namespaces.len() > MAX_NAMESPACES_CHECKED {
            return Everything("objects of too many namespaces changed");
        }
        let Some(narrowed) = state.state.narrowed(&namespaces) else {
            return Everything("an object changed outside the namespaces of workspaces in scope");
        };
        if self.cluster.is_none() {
            return Everything("not connected");
        }
        let writer = match self.lock().await {
            Ok(writer) if writer.locked_by.is_none() => writer,
            Ok(_) => return Everything("another writer holds the environment's lock"),
            Err(_) => return Everything("the environment's lock could not be had"),
        };
        let Ok(gate) = self.gate(&state).await else {
            return Everything("the approval could not be read");
        };
        let Some(c) = self.cluster.as_ref() else {
            return Everything("not connected");
        };
        let scoped = state.narrowed_to(narrowed, state.sync.clone());
        let (env, shared) = (self.env.clone(), self.shared.clone());
        let before = sync_status_now(&shared, &env);
        let checked = match heal_narrowed(&env, &shared, c, &scoped, &writer, gate.heal).await {
            Ok(Ok(checked)) => checked,
            Ok(Err(why)) => return Everything(why),
            Err(e) => {
                tracing::info!(environment = %env, error = %e, "cannot check the changed objects' workspaces alone; checking everything");
                // A heal's `Syncing` is not left standing meanwhile.
                put_back_sync_status(&shared, &env, before);
                return Everything("the check of the changed workspaces failed");
            }
        };
        let Checked {
            plan,
            report,
            health,
            ..
        } = checked;
        log_outcome(&env, &scoped, &plan, report.as_ref());
        if let Some(r) = report.as_ref().filter(|r| stopped_for_hand_over(r)) {
            // Stopped for a hand-over (`--shard`): no failure; the replica
            // taking the environment over compares everything.
            shared.metrics.record_sync(&env, r);
            self.changed += changed_objects(r);
            self.clean = None;
            put_back_sync_status(&shared, &env, before);
            return Everything("the environment is handed over to another replica");
        }
        if let Some(r) = report.as_ref().filter(|r| !r.succeeded()) {
            // Its writes happened: counted, and reported as a failed sync
            // until the check of everything that follows (a drift check's
            // gap later, so a refused heal is not sent twice at once).
            shared.metrics.record_sync(&env, r);
            self.changed += changed_objects(r);
            self.clean = None;
            let e = ReconcileError::Apply(crate::print::sync_errors(r));
            self.record_outcome(Some(&e)).await;
            shared.metrics.set_status(&env, "Failed");
            shared.update(&env, |s| {
                s.sync_status = SyncStatus::Failed;
                s.target_revision = None;
                s.last_reconcile_at = Some(now());
                s.last_sync_at = Some(now());
                s.last_error = Some(e.to_string());
                s.last_error_reason = Some(e.reason().to_string());
                s.last_error_at = Some(now());
            });
            return Narrowed::HealFailed(Err(e));
        }
        if let Some(r) = &report {
            shared.metrics.record_sync(&env, r);
            self.changed += changed_objects(r);
        }
        tracing::info!(
            environment = %env,
            workspaces = plan.changes.iter().map(|c| &*c.workspace).collect::<BTreeSet<_>>().len(),
            compared = plan.changes.len(),
            healed = report.as_ref().map_or(0, changed_objects),
            "checked the changed objects' workspaces"
        );
        self.record_outcome(None).await;
        // Every change reported so far is covered (none waits, none was
        // dropped): the cluster is again as the revision declares, as far
        // as the watches tell.
        if sent == handed_out && self.clean_changes <= sent {
            self.clean_changes = sent;
        }
        // The status was Synced with no drift (the revision was last found
        // in sync, nothing waits): it stays so, with these workspaces'
        // objects as just read.
        let mut objects = objects_by_workspace(&plan, true, &health);
        shared.metrics.set_status(&env, "Synced");
        shared.update(&env, |s| {
            s.sync_status = SyncStatus::Synced;
            s.target_revision = None;
            s.last_reconcile_at = Some(now());
            if report.is_some() {
                s.last_sync_at = Some(now());
            }
            for (ws, w) in s.workspaces.iter_mut() {
                if let Some(objects) = objects.remove(ws) {
                    w.objects = objects;
                }
            }
        });
        Narrowed::Checked(Ok(()))
    }

    /// A new revision that renders only a few namespaces differently from
    /// the revision last applied and found in sync: synced by listing and
    /// applying only those namespaces (their workspaces recorded at the new
    /// revision, the others recorded unchanged at it), not the whole
    /// environment. Only where that is the same as a sync of everything:
    /// the cluster is as the last revision declares (found in sync, the
    /// watches open since and no change of another writer waiting, the
    /// inventory records that revision), the environment applies on its own
    /// (`auto`, no sync windows, no rollout policy, nothing waiting), the
    /// policies, held and pinned workspaces are as before, and the plan has
    /// nothing to prune and nothing that is not tenantsync's. `None`
    /// otherwise, or when it fails: the ordinary sync of everything follows.
    async fn apply_changed(
        &mut self,
        state: &Arc<Desired>,
        writer: &Writer,
        gate: &Gate,
        watched: Option<Instant>,
    ) -> Option<Result<(), ReconcileError>> {
        let previous = self.held.applied.clone()?;
        if previous.revision() == state.revision() {
            return None;
        }
        // No change by another writer since (one the watches reported,
        // waiting or settling, or checked by a narrowed check: which
        // covers only its workspaces).
        let untouched =
            self.watch_changes.load(std::sync::atomic::Ordering::SeqCst) == self.clean_changes;
        let vouched = untouched
            && self.clean.as_ref().is_some_and(|(revision, at)| {
                revision == previous.revision() && watched.is_some_and(|since| since <= *at)
            });
        let (old, new) = (&previous.state, &state.state);
        let same_terms = old.sync_policy == new.sync_policy
            && old.ownership == new.ownership
            && old.effective == new.effective
            && old.held.is_empty()
            && new.held.is_empty()
            && old.workspace_revisions.is_empty()
            && new.workspace_revisions.is_empty()
            && old.scope.is_everything()
            && new.scope.is_everything();
        if !vouched
            || !same_terms
            || new.sync_policy.rollout.is_some()
            || gate.manual
            || gate.windowed
            || !gate.may_apply()
            || !writer.may_write
            || writer.locked_by.is_some()
            || self.rollback_pending
            || self.failed_health.is_some()
            || self.waiting.is_some()
            || self.rollout.as_ref().is_some_and(|r| r.has_work())
        {
            return None;
        }
        let namespaces = new.changed_namespaces(old, MAX_NAMESPACES_CHECKED)?;
        let narrowed = new.narrowed(&namespaces.iter().map(String::as_str).collect())?;
        let all: BTreeSet<&str> = new
            .objects
            .iter()
            .map(|o| &*o.workspace)
            .filter(|ws| !ws.is_empty())
            .collect();
        let all: BTreeSet<String> = all.into_iter().map(str::to_string).collect();
        let sync = SyncOptions {
            also_applied: Some(Arc::new(all)),
            fence: writer.fence.clone(),
            ..state.sync.clone()
        };
        let scoped = state.narrowed_to(narrowed, sync);
        let (env, shared) = (self.env.clone(), self.shared.clone());
        let c = self.cluster.as_ref()?;
        let before = sync_status_now(&shared, &env);
        let declared: std::collections::HashSet<_> = new.objects.iter().map(|o| o.key()).collect();
        let planned = plan_narrowed(
            &env,
            &shared,
            c,
            &scoped,
            previous.revision(),
            Some(&declared),
        )
        .await;
        drop(declared);
        let (live, health) = match planned {
            Ok(Ok(planned)) => planned,
            Ok(Err(why)) => {
                tracing::debug!(environment = %env, why, "syncing the new revision in full");
                return None;
            }
            Err(e) => {
                tracing::info!(environment = %env, error = %e, "cannot sync only what the new revision changed; syncing it in full");
                return None;
            }
        };
        let (plan, report) =
            sync_with_heartbeat(&env, &shared, c, &scoped, live, &scoped.sync).await;
        let report = match report {
            Ok(report) => report,
            Err(e) => {
                tracing::info!(environment = %env, error = %e, "cannot sync only what the new revision changed; syncing it in full");
                put_back_sync_status(&shared, &env, before);
                return None;
            }
        };
        log_outcome(&env, state, &plan, Some(&report));
        shared.metrics.record_sync(&env, &report);
        self.changed += changed_objects(&report);
        if !report.succeeded() {
            // Its writes are counted; the sync of everything that follows
            // reports what failed.
            put_back_sync_status(&shared, &env, before);
            return None;
        }
        tracing::info!(
            environment = %env,
            revision = %state.revision(),
            namespaces = namespaces.len(),
            "synced only what the new revision changed"
        );
        self.held.applied = Some(state.clone());
        self.settle_pending(state, Some(&report), gate).await;
        self.record_outcome(None).await;
        let mut objects = objects_by_workspace(&plan, true, &health);
        shared.metrics.set_status(&env, "Synced");
        shared.update(&env, |s| {
            s.sync_status = SyncStatus::Synced;
            s.target_revision = None;
            s.last_reconcile_at = Some(now());
            s.last_sync_at = Some(now());
            s.compared = true;
            s.last_applied_revision = Some(state.revision().to_string());
            s.last_applied_commit = state.commit.clone();
            s.last_error = None;
            s.last_error_reason = None;
            s.last_error_at = None;
            s.failed_health = None;
            for (ws, objects) in std::mem::take(&mut objects) {
                let w = s.workspaces.entry(ws).or_insert_with(|| WorkspaceStatus {
                    sync_status: SyncStatus::Synced,
                    drifted_objects: 0,
                    errors: Vec::new(),
                    objects: Vec::new(),
                });
                w.objects = objects;
            }
        });
        let current: BTreeMap<String, usize> = shared
            .status
            .read()
            .ok()
            .and_then(|s| {
                s.environments.get(&env).map(|e| {
                    e.workspaces
                        .iter()
                        .map(|(ws, w)| (ws.clone(), w.drifted_objects))
                        .collect()
                })
            })
            .unwrap_or_default();
        shared.metrics.set_current_drift(&env, &current);
        // As after a sync of everything: what changed, and every workspace
        // not known Healthy at what it is applied at, is watched.
        let mut changed = changed_workspaces(&plan);
        if let Some(c) = self.cluster.as_ref()
            && let Ok(Some(inventory)) = c.read_inventory(&env).await
        {
            changed.extend(unproven_workspaces(state, &inventory));
        }
        self.note_judging(state.revision(), &changed, &writer.fence)
            .await;
        self.watch_health(state, changed);
        Some(Ok(()))
    }

    async fn compare(
        &mut self,
        from_source: bool,
        watched: Option<Instant>,
    ) -> Result<(), ReconcileError> {
        let (state, writer) = match self.prepare(from_source).await {
            Ok(prepared) => prepared,
            Err(e) => {
                self.publish_failure(&e);
                return Err(e);
            }
        };
        self.resume_health(&state, &writer).await;
        self.record_unrecorded_healthy(&state).await;
        if from_source && self.quiet(&state, &writer, watched).await {
            return Ok(());
        }
        let gate = match self.gate(&state).await {
            Ok(gate) => gate,
            Err(e) => return Err(self.blocked(e, &writer).await),
        };
        if from_source
            && let Some(result) = self.apply_changed(&state, &writer, &gate, watched).await
        {
            return result;
        }
        let approved_plan = gate.approval.as_ref().and_then(|a| a.plan.clone());
        if gate.may_apply() {
            match self.roll(&state, &writer, approved_plan.as_deref()).await {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => return Err(self.blocked(e, &writer).await),
            }
        }
        let Some(c) = self.cluster.as_ref() else {
            return Err(ReconcileError::NoRevision);
        };
        // A sync that must finish here: of an approved plan (a retry after
        // a partial sync passes without a new check only on this replica)
        // or a rollback.
        let must_finish = approved_plan.is_some() || self.rollback_pending;
        let apply = Apply {
            hold_new: !gate.may_apply(),
            heal_allowed: gate.heal,
            force: self.rollback_pending,
            // A rollout checked the approved plan against the whole
            // revision before its first step; its last step's plan (the
            // earlier steps now unchanged) is not that plan.
            approved_plan: approved_plan
                .filter(|_| {
                    self.rollout
                        .as_ref()
                        .is_none_or(|r| r.revision != state.revision())
                })
                // Checked once: a sync of the approved plan that failed part
                // way (a webhook, a quota) is retried without a new approval,
                // though the objects it applied now plan as unchanged.
                .filter(|d| {
                    self.plan_passed.as_ref() != Some(&(state.revision().to_string(), d.clone()))
                }),
        };
        let checked_plan = apply.approved_plan.clone();
        self.hand_over_waits.store(must_finish, Ordering::SeqCst);
        let outcome = check_and_sync(&self.env, &self.shared, c, &state, &writer, apply).await;
        self.hand_over_waits.store(false, Ordering::SeqCst);
        // Only a sync that went past the check (it may have failed part
        // way) counts; an error before it (a guardrail, the cluster) not.
        if let Some(digest) = checked_plan
            && matches!(outcome, Ok(Checked { held: false, .. }))
        {
            self.plan_passed = Some((state.revision().to_string(), digest));
        }
        match outcome {
            Ok(checked) if checked.held => self.hold(&state, checked, &writer, &gate).await,
            Ok(checked) => {
                let changed = checked
                    .applied_new_revision()
                    .then(|| changed_workspaces(&checked.plan));
                let rolled = self.rollback_pending
                    && !checked.new_revision
                    && checked.report.as_ref().is_some_and(|r| r.succeeded());
                let result = self.report(&state, checked, writer.locked_by, &gate).await;
                // Besides what the revision changed, every workspace not
                // known Healthy at what it is applied at is watched: one a
                // failed earlier revision left unhealthy, and one whose
                // change an earlier, partly failed sync applied.
                let changed = match (changed, self.cluster.as_ref()) {
                    (Some(mut changed), Some(c)) => {
                        if let Ok(Some(inventory)) = c.read_inventory(&self.env).await {
                            changed.extend(unproven_workspaces(&state, &inventory));
                        }
                        Some(changed)
                    }
                    (changed, _) => changed,
                };
                if rolled && result.is_ok() {
                    self.rollback_done();
                    if let (Some(summary), Some(c)) =
                        (self.rollback_event.take(), self.cluster.as_ref())
                        && writer.may_write
                    {
                        c.record_event(&self.env, "RolledBack", &summary).await;
                    }
                }
                if let Some(changed) = changed {
                    self.note_judging(state.revision(), &changed, &writer.fence)
                        .await;
                    self.watch_health(&state, changed);
                }
                result
            }
            Err(e) => Err(self.blocked(e, &writer).await),
        }
    }

    /// Watches the health of the workspaces `state` changed, off the loop,
    /// until the health deadline (a newer revision's watch replaces it).
    fn watch_health(&mut self, state: &Desired, workspaces: BTreeSet<String>) {
        let deadline = state.state.sync_policy.health_deadline();
        self.watch_health_within(state, workspaces, deadline);
    }

    /// [`Reconciler::watch_health`] until `deadline` from now.
    fn watch_health_within(
        &mut self,
        state: &Desired,
        workspaces: BTreeSet<String>,
        deadline: Duration,
    ) {
        if workspaces.is_empty() {
            self.health_watch = None;
            return;
        }
        let objects: Vec<(ObjectRef, String)> = state
            .state
            .objects
            .iter()
            .filter(|o| workspaces.contains(&*o.workspace))
            .map(|o| (ObjectRef::of(o), o.workspace.to_string()))
            .collect();
        let options = cluster_options(&self.shared.options, &self.env);
        let listing = Listing::new(&self.env, &state.state.objects);
        let handle = tokio::spawn(watch_objects(options, listing, objects, deadline));
        tracing::info!(environment = %self.env, revision = %state.revision(), workspaces = workspaces.len(), deadline = ?deadline, "watching the health of the changed workspaces");
        self.health_watch = Some(HealthWatch {
            revision: state.revision().to_string(),
            handle,
        });
    }

    /// Records `healthy` as Healthy at `revision` in the inventory, as the
    /// environment's writer only: under its lock (and with `--shard` its
    /// Lease), fenced like a sync's writes, so that a replica that lost the
    /// environment meanwhile never writes a judgement over its successor's.
    ///
    /// Returns whether to try the write again ([`Reconciler::healthy_unrecorded`]):
    /// it failed while this replica still holds the environment (a network
    /// error, a 409 storm).
    async fn record_healthy(&mut self, revision: &str, healthy: &[String]) -> bool {
        use crate::cluster::inventory::Updated;
        let env = self.env.clone();
        // Only in the term the watch was started in: a lock lapsed since
        // (and taken again now) may have let another writer judge anew.
        if self.held.lock.as_ref().is_none_or(|l| l.lost()) {
            tracing::info!(environment = %env, revision, "not recording the healthy revision: this replica's hold on the environment lapsed during the judgement");
            return false;
        }
        let writer = match self.lock().await {
            Ok(writer) => writer,
            Err(e) => {
                tracing::warn!(environment = %env, error = %e, "cannot take the lock to record the healthy revision; judged again");
                return true;
            }
        };
        if !writer.may_write {
            tracing::info!(environment = %env, revision, "not recording the healthy revision: another writer holds the environment");
            return false;
        }
        let Some(c) = self.cluster.as_ref() else {
            return true;
        };
        match c
            .record_healthy(&env, &writer.fence, healthy, revision)
            .await
        {
            Ok(Updated::NotHeld) => {
                tracing::info!(environment = %env, revision, "not recording the healthy revision: this replica no longer holds the environment");
                false
            }
            Ok(_) => false,
            Err(e) => {
                tracing::warn!(environment = %env, error = %e, "cannot record the healthy revision in the inventory; judged again");
                true
            }
        }
    }

    /// Writes a Healthy judgement whose record failed, while its revision
    /// is still the desired one.
    async fn record_unrecorded_healthy(&mut self, state: &Desired) {
        let Some((revision, healthy)) = self.healthy_unrecorded.take() else {
            return;
        };
        if revision != state.revision() || !self.shared.leads(&self.env) {
            return;
        }
        if self.record_healthy(&revision, &healthy).await {
            self.healthy_unrecorded = Some((revision, healthy));
        }
    }

    /// The health watch of `revision` ended: Healthy workspaces record it as
    /// their last healthy revision; failed ones are rolled back (with
    /// `syncPolicy.rollback`) or said to have failed.
    async fn health_settled(&mut self, revision: &str, outcome: WatchOutcome) {
        let (env, shared) = (self.env.clone(), self.shared.clone());
        let (env, shared) = (env.as_str(), &*shared);
        let Some(state) = self.desired.clone().filter(|d| d.revision() == revision) else {
            return;
        };
        let (healthy, failed) = match outcome {
            Ok(Ok(judged)) => judged,
            Ok(Err(e)) => {
                tracing::warn!(environment = env, revision, error = %e, "cannot watch the health of the changed workspaces");
                return;
            }
            Err(e) => {
                tracing::warn!(environment = env, revision, error = %e, "the health watch stopped");
                return;
            }
        };
        let leading = shared.leads(env);
        if !healthy.is_empty() && leading {
            tracing::info!(environment = env, revision, workspaces = %healthy.join(", "), "healthy");
            self.healthy_unrecorded = self
                .record_healthy(revision, &healthy)
                .await
                .then(|| (revision.to_string(), healthy.clone()));
        }
        if failed.is_empty() {
            return;
        }
        let rollback = state.state.sync_policy.rollback;
        let mut failure = FailedHealth {
            revision: revision.to_string(),
            workspaces: failed,
            rollback,
            ..FailedHealth::default()
        };
        if rollback && leading {
            self.roll_back(&state, &mut failure).await;
        } else {
            failure.left = failure.workspaces.keys().cloned().collect();
        }
        let summary = failure.summary();
        tracing::warn!(environment = env, revision, "{summary}");
        if leading && let Some(c) = self.cluster.as_ref() {
            let reason = if failure.rolled_back.is_empty() {
                "HealthCheckFailed"
            } else {
                "RolledBack"
            };
            c.record_event(env, reason, &summary).await;
        }
        if !failure.rolled_back.is_empty() {
            shared.metrics.rolled_back(env);
        }
        self.failed_health = Some(failure);
        // What the cluster holds is no longer what was last found in sync.
        self.clean = None;
        let status = self.health_status();
        shared.metrics.set_status(env, &format!("{status:?}"));
        let failure = self.failed_health.clone();
        shared.update(env, |s| {
            s.sync_status = status;
            s.last_error = Some(summary.clone());
            s.last_error_reason = Some("health".to_string());
            s.last_error_at = Some(now());
            s.failed_health = failure;
        });
    }

    /// The status a revision whose health failed keeps: RolledBack when a
    /// workspace was rolled back, Failed otherwise.
    fn health_status(&self) -> SyncStatus {
        match &self.failed_health {
            Some(f) if !f.rolled_back.is_empty() => SyncStatus::RolledBack,
            _ => SyncStatus::Failed,
        }
    }

    /// Re-applies the failed workspaces of `state` at their last healthy
    /// revision (the others stay at `state`'s); a workspace with none known,
    /// or whose healthy revision cannot be rendered, is left as it is. The
    /// result becomes the desired state: drift and self-heal compare with
    /// it, and the failed revision is not applied again until a newer one.
    async fn roll_back(&mut self, state: &Arc<Desired>, failure: &mut FailedHealth) {
        // It writes: what was last found in sync is so no more.
        self.clean = None;
        let (env, shared) = (self.env.clone(), self.shared.clone());
        let (env, shared) = (env.as_str(), &*shared);
        let Some(c) = self.cluster.as_ref() else {
            failure.left = failure.workspaces.keys().cloned().collect();
            return;
        };
        let inventory = match c.read_inventory(env).await {
            Ok(Some(inventory)) => inventory,
            Ok(None) => Inventory::new(env),
            Err(e) => {
                tracing::warn!(environment = env, error = %e, "cannot read the inventory to roll back");
                failure.left = failure.workspaces.keys().cloned().collect();
                return;
            }
        };
        let mut to: BTreeMap<String, String> = BTreeMap::new();
        for ws in failure.workspaces.keys() {
            match inventory.healthy_revision(ws) {
                Some(healthy) if healthy != failure.revision => {
                    to.insert(ws.clone(), healthy.to_string());
                }
                _ => failure.left.push(ws.clone()),
            }
        }
        if to.is_empty() {
            return;
        }
        let mut pinned = inventory.pinned();
        pinned.extend(to.clone());
        let composed = compose_at(&shared.options, env, state.state.clone(), &pinned).await;
        for (ws, healthy) in to {
            if composed.workspace_revisions.get(&ws) == Some(&healthy) {
                failure.rolling_back.insert(ws, healthy);
            } else {
                failure.left.push(ws);
            }
        }
        failure.left.sort();
        if failure.rolling_back.is_empty() {
            return;
        }
        let mut desired = Desired::new(composed, &shared.options);
        desired.commit = state.commit.clone();
        let desired = Arc::new(desired);
        self.desired = Some(desired.clone());
        // Until the rollback is applied in full, every reconcile applies
        // the composed state (not only with self-heal), and status says it
        // is still to be done, never RolledBack.
        self.rollback_pending = true;
        failure.rollback_error = Some("the rollback has not been applied yet".to_string());
        let writer = match self.lock().await {
            Ok(writer) => writer,
            Err(e) => {
                tracing::warn!(environment = env, error = %e, "cannot take the lock to roll back; the next reconcile applies the rollback");
                failure.rollback_error = Some(format!("cannot take the environment's lock: {e}"));
                return;
            }
        };
        let Some(c) = self.cluster.as_ref() else {
            return;
        };
        let apply = Apply {
            hold_new: false,
            heal_allowed: true,
            force: true,
            approved_plan: None,
        };
        let gate = Gate {
            manual: false,
            windowed: false,
            approval: None,
            window: windows::Verdict::Open,
            heal: true,
        };
        match check_and_sync(env, shared, c, &desired, &writer, apply).await {
            Ok(checked) => {
                let applied = checked.report.as_ref().is_none_or(|r| r.succeeded());
                match self
                    .report(&desired, checked, writer.locked_by, &gate)
                    .await
                {
                    Ok(()) if applied => {
                        self.rollback_pending = false;
                        failure.rollback_error = None;
                        failure.rolled_back = std::mem::take(&mut failure.rolling_back);
                    }
                    Ok(()) => {
                        failure.rollback_error = Some("the rollback did not apply in full".into());
                    }
                    Err(e) => {
                        tracing::warn!(environment = env, error = %e, "the rollback did not apply in full");
                        failure.rollback_error =
                            Some(format!("the rollback did not apply in full: {e}"));
                    }
                }
            }
            Err(e) => {
                let e = self.blocked(e, &writer).await;
                tracing::warn!(environment = env, error = %e, "the rollback failed; the next reconcile tries again");
                failure.rollback_error = Some(format!("the rollback failed: {e}"));
            }
        }
    }

    /// A reconcile applied the pending rollback in full (`report` of a
    /// forced sync that succeeded): what was to be rolled back is now.
    fn rollback_done(&mut self) {
        self.rollback_pending = false;
        let Some(f) = self.failed_health.as_mut() else {
            return;
        };
        if f.rolling_back.is_empty() {
            return;
        }
        f.rollback_error = None;
        let done = std::mem::take(&mut f.rolling_back);
        f.rolled_back.extend(done);
        let summary = f.summary();
        let (env, shared) = (self.env.clone(), self.shared.clone());
        shared.metrics.rolled_back(&env);
        let failure = self.failed_health.clone();
        let status = self.health_status();
        shared.metrics.set_status(&env, &format!("{status:?}"));
        shared.update(&env, |s| {
            s.sync_status = status;
            s.last_error = Some(summary.clone());
            s.failed_health = failure;
        });
        tracing::warn!(environment = %env, "{summary}");
        self.rollback_event = Some(summary);
    }

    /// A desired state just read, matched with what the inventory says each
    /// workspace is at: when the inventory's revision is this one and some
    /// workspaces are recorded at another (rolled back), they are taken
    /// from theirs, so drift and self-heal compare with what is applied.
    async fn pin_to_inventory(&mut self) {
        let (Some(c), Some(state)) = (self.cluster.as_ref(), self.desired.clone()) else {
            return;
        };
        let inventory = match c.read_inventory(&self.env).await {
            Ok(Some(inventory)) => inventory,
            Ok(None) => {
                self.needs_pinning = false;
                return;
            }
            Err(e) => {
                tracing::warn!(environment = %self.env, error = %e, "cannot read the inventory's per-workspace revisions");
                return;
            }
        };
        self.needs_pinning = false;
        let pinned = inventory.pinned();
        if inventory.revision.as_deref() != Some(state.revision()) || pinned.is_empty() {
            return;
        }
        let options = &self.shared.options;
        let composed = compose_at(options, &self.env, state.state.clone(), &pinned).await;
        tracing::info!(environment = %self.env, revision = %state.revision(), pinned = ?composed.workspace_revisions, "workspaces at the revisions the inventory records");
        let mut desired = Desired::new(composed, options);
        desired.commit = state.commit.clone();
        self.desired = Some(Arc::new(desired));
    }

    /// Whether the revision may be applied: in a `manual` environment only
    /// once approved (the approval ConfigMap names exactly this revision),
    /// and only while its sync windows let it through.
    /// Whether `state` needs an approval, and what the sync windows say,
    /// by the stricter of its own policy and the last applied revision's: a
    /// commit cannot lift its own approval or freeze (a revision turning
    /// `manual` into `auto`, or deleting a deny window, waits as the
    /// policy it replaces says).
    fn strictest(&self, state: &Desired) -> (bool, windows::Verdict) {
        let now = jiff::Timestamp::now();
        let policy = &state.state.sync_policy;
        let applied = self
            .held
            .applied
            .as_ref()
            .filter(|a| a.revision() != state.revision())
            .map(|a| &a.state.sync_policy);
        let manual =
            policy.mode == SyncMode::Manual || applied.is_some_and(|p| p.mode == SyncMode::Manual);
        let window = match windows::verdict(&policy.windows, now) {
            windows::Verdict::Open => applied
                .map(|p| windows::verdict(&p.windows, now))
                .unwrap_or(windows::Verdict::Open),
            closed => closed,
        };
        (manual, window)
    }

    async fn gate(&mut self, state: &Desired) -> Result<Gate, ReconcileError> {
        let policy = &state.state.sync_policy;
        let mode = policy.mode;
        let (manual, window) = self.strictest(state);
        let record = match (manual, self.cluster.as_ref()) {
            (true, Some(c)) => c
                .read_approval(&self.env)
                .await?
                .map(|stored| stored.record)
                .unwrap_or_default(),
            _ => Default::default(),
        };
        let windowed = !policy.windows.is_empty()
            || self
                .held
                .applied
                .as_ref()
                .is_some_and(|a| !a.state.sync_policy.windows.is_empty());
        let gate = Gate {
            manual,
            windowed,
            approval: record.approval_of(state.revision()).cloned(),
            heal: window.is_open() || policy.self_heal_outside_windows(),
            window,
        };
        self.heal_allowed = gate.heal;
        self.shared.update(&self.env, |s| {
            s.mode = Some(mode.as_str());
            s.sync_window = match &gate.window {
                windows::Verdict::Open => None,
                windows::Verdict::Closed(why) => Some(why.clone()),
            };
            if manual {
                s.approval = record.approval.clone();
            } else {
                s.approval = None;
            }
        });
        Ok(gate)
    }

    /// Whether the revision waiting (for an approval or a sync window) may
    /// be applied now: checked every second while one waits, so an
    /// approval, or a window opening, takes effect within about a second.
    async fn may_apply_now(&self) -> bool {
        let (Some(waiting), Some(c), Some(state)) = (
            self.waiting.as_deref(),
            self.cluster.as_ref(),
            self.desired.as_ref(),
        ) else {
            return false;
        };
        let (manual, window) = self.strictest(state);
        if !window.is_open() {
            return false;
        }
        if !manual {
            return true;
        }
        c.read_approval(&self.env)
            .await
            .ok()
            .flatten()
            .is_some_and(|stored| stored.record.approval_of(waiting).is_some())
    }

    /// A new revision of a manual environment, not approved: its plan is
    /// published as pending (status, inventory status, the approval
    /// ConfigMap, the `pending` metric, an Event once), nothing of it is
    /// applied; drift is still checked against the last approved revision
    /// (and healed, with self-heal).
    async fn hold(
        &mut self,
        state: &Arc<Desired>,
        checked: Checked,
        writer: &Writer,
        gate: &Gate,
    ) -> Result<(), ReconcileError> {
        let (env, shared) = (self.env.clone(), self.shared.clone());
        let (env, shared) = (env.as_str(), &*shared);
        let revision = state.revision().to_string();
        let plan = crate::print::Verb::Plan.counts(&checked.plan.summary);
        let (reason, waits_for) = match (&gate.window, gate.manual && gate.approval.is_none()) {
            (_, true) => (
                "RevisionPending",
                format!(
                    "approval (syncPolicy.mode: manual); approve it with `tenantsync approve --env {env} --revision {revision}`"
                ),
            ),
            (windows::Verdict::Closed(why), false) => {
                ("SyncWindowClosed", format!("its sync window: {why}"))
            }
            (windows::Verdict::Open, false) => ("RevisionPending", "its turn".to_string()),
        };
        if writer.may_write
            && let Some(c) = self.cluster.as_ref()
        {
            if self.held.pending_written.as_deref() != Some(revision.as_str()) {
                match c.write_pending(env, Some((&revision, &plan))).await {
                    Ok(()) => self.held.pending_written = Some(revision.clone()),
                    Err(e) => {
                        tracing::warn!(environment = env, error = %e, "cannot publish the pending revision")
                    }
                }
            }
            let said = format!("{revision} {reason}");
            if self.held.pending_event.as_deref() != Some(said.as_str()) {
                let message =
                    format!("revision {revision} waits for {waits_for}; its plan: {plan}");
                c.record_normal_event(env, reason, &message).await;
                self.held.pending_event = Some(said);
            }
        }
        tracing::info!(environment = env, revision = %revision, plan = %plan, waits_for = %waits_for, "revision waits");
        shared.metrics.set_pending(env, true);
        self.waiting = Some(revision.clone());
        self.check_last_applied(writer, SyncStatus::OutOfSync).await;
        let waiting_for = if reason == "SyncWindowClosed" {
            "window"
        } else {
            "approval"
        };
        shared.update(env, |s| {
            s.pending_revision = Some(revision.clone());
            s.pending_plan = Some(plan.clone());
            s.pending_reason = Some(waiting_for);
            s.sync_status = SyncStatus::OutOfSync;
            s.last_reconcile_at = Some(now());
            s.compared = true;
        });
        if let Some(problem) = self.source_problem.clone() {
            let e = ReconcileError::Newest(problem);
            self.record_outcome(Some(&e)).await;
            shared.update(env, |s| {
                s.last_error = Some(e.to_string());
                s.last_error_reason = Some(e.reason().to_string());
                s.last_error_at = Some(now());
            });
            return Err(e);
        }
        self.record_outcome(None).await;
        shared.update(env, |s| {
            s.last_error = None;
            s.last_error_reason = None;
            s.last_error_at = None;
        });
        Ok(())
    }

    /// Read the source (when asked, or with no good revision yet), connect,
    /// take or release the environment's lock.
    async fn prepare(
        &mut self,
        from_source: bool,
    ) -> Result<(Arc<Desired>, Writer), ReconcileError> {
        if from_source || self.desired.is_none() {
            self.read_source().await?;
        }
        if self.desired.is_none() {
            return Err(ReconcileError::NoRevision);
        }
        if self.cluster.is_none() {
            let options = cluster_options(&self.shared.options, &self.env);
            self.cluster = Some(Cluster::connect(&options).await?);
        }
        if self.needs_pinning {
            self.pin_to_inventory().await;
        }
        let state = self.desired.clone().ok_or(ReconcileError::NoRevision)?;
        let writer = self.lock().await?;
        Ok((state, writer))
    }

    /// Reads the source; a new revision becomes the desired state when it is
    /// valid (its invalid workspaces held), and is reported when not.
    async fn read_source(&mut self) -> Result<(), ReconcileError> {
        let (env, shared) = (self.env.as_str(), &*self.shared);
        // With all-since, every commit since the last good revision.
        let trust = shared.options.trust.get(env).map(|t| {
            let since = self.desired.as_ref().map(|d| d.revision().to_string());
            let verify = match since {
                Some(since) if t.all_since => source::trust::Verify::AllSince(since),
                _ => source::trust::Verify::Tip,
            };
            (t.keys.clone(), verify)
        });
        let t0 = Instant::now();
        let (tree, revision, commit) = match read_source(&shared.options, trust).await {
            Ok(read) => read,
            Err(ReadError::Untrusted(message)) => {
                let e = ReconcileError::Untrusted(format!(
                    "{message} (the last good revision stays applied)"
                ));
                let message = e.to_string();
                // One Event per refused commit, not one per poll.
                if self.source_problem.as_deref() != Some(message.as_str())
                    && shared.leads(env)
                    && let Some(c) = self.cluster.as_ref()
                {
                    c.record_event(env, "UntrustedRevision", &message).await;
                }
                self.source_problem = Some(message);
                return Err(e);
            }
            Err(ReadError::Source(e)) => {
                shared.metrics.git_fetch_failed(env);
                let e = ReconcileError::Source(e);
                self.source_problem = Some(e.to_string());
                return Err(e);
            }
        };
        shared.update(env, |s| {
            s.last_seen_revision = Some(revision.clone());
            s.last_seen_commit = commit.clone();
        });
        if self
            .desired
            .as_ref()
            .is_some_and(|d| d.revision() == revision)
        {
            self.source_problem = None;
            return Ok(());
        }
        let read_in = t0.elapsed();
        let t1 = Instant::now();
        let desired = self.desire(tree, &revision);
        tracing::debug!(environment = %env, %revision, read = ?read_in, validated_and_rendered = ?t1.elapsed(), "read a new revision");
        let (event, e) = match desired {
            Ok(mut state) => {
                self.source_problem = None;
                state.commit = commit;
                self.desired = Some(Arc::new(state));
                self.needs_pinning = true;
                // A newer revision: the last one's watch and failure are over.
                self.health_watch = None;
                self.failed_health = None;
                self.rollback_pending = false;
                shared.update(env, |s| s.failed_health = None);
                return Ok(());
            }
            Err(refused) => refused,
        };
        let message = e.to_string();
        // One Event per bad revision, not one per poll.
        if self.source_problem.as_deref() != Some(message.as_str())
            && shared.leads(env)
            && let Some(c) = self.cluster.as_ref()
        {
            c.record_event(env, event, &message).await;
        }
        self.source_problem = Some(message);
        Err(e)
    }

    /// The desired state of a new revision, or why it is refused (with the
    /// reason of the Event that says so).
    fn desire(
        &self,
        tree: SourceTree,
        revision: &str,
    ) -> Result<Desired, (&'static str, ReconcileError)> {
        let (env, shared) = (self.env.as_str(), &*self.shared);
        let options = &shared.options;
        // Per workspace: an invalid one is held, the others go on; a problem
        // of the environment itself holds everything.
        let clashes =
            |repository: &validate::Repository| namespace_clashes(options, repository, env);
        let intake = Intake {
            hold_invalid: true,
            hold_unrendered: true,
            also_hold: Some(&clashes),
            ..Intake::strict(&options.operator)
        };
        match pipeline::desired(tree, env, Some(revision.to_string()), &intake) {
            Ok(state) => {
                let before = self.desired.as_ref().map(|d| &d.state.held);
                for ws in before.iter().flat_map(|b| b.keys()) {
                    if !state.held.contains_key(ws) {
                        shared.metrics.set_workspace_failed(env, ws, false);
                    }
                }
                for ws in state.held.keys() {
                    shared.metrics.set_workspace_failed(env, ws, true);
                }
                Ok(Desired::new(state, options))
            }
            Err(Refused::Invalid { diagnostics, .. }) => Err((
                "InvalidRevision",
                ReconcileError::Invalid(format!(
                    "revision {revision} is invalid; nothing is applied until a valid one arrives:\n{}",
                    lines(&diagnostics)
                )),
            )),
            Err(Refused::Guardrails(diagnostics)) => Err((
                "GuardrailViolated",
                ReconcileError::Guardrail(format!(
                    "revision {revision} breaks the operator's guardrails; nothing is applied until a revision that keeps them arrives:\n{}",
                    lines(&diagnostics)
                )),
            )),
            // Neither happens with every workspace selected and unrenderable
            // ones held.
            Err(other) => Err((
                "InvalidRevision",
                ReconcileError::Invalid(format!("revision {revision} is refused: {other}")),
            )),
        }
    }

    /// One writer per environment: the leader holds the environment's lock
    /// (a CLI `sync` waits for it); a replica that does not lead releases it.
    async fn lock(&mut self) -> Result<Writer, ReconcileError> {
        let Some(c) = self.cluster.as_ref() else {
            return Err(ReconcileError::NoRevision);
        };
        let leading = self.shared.leads(&self.env);
        let mut locked_by: Option<String> = None;
        if leading {
            if self.held.lock.as_ref().is_none_or(|l| l.lost()) {
                self.held.lock = None;
                let identity = self
                    .shared
                    .status
                    .read()
                    .map(|s| s.identity.clone())
                    .unwrap_or_default();
                let me = format!("tenantsync run {identity}");
                match c
                    .lock_environment(&self.env, &me, Duration::ZERO, |_| {})
                    .await
                {
                    Ok(lock) => {
                        // A new term: another writer may have written
                        // since this replica last found the cluster in sync.
                        self.clean = None;
                        self.held.lock = Some(lock);
                    }
                    Err(LockError::Held { holder, .. }) => locked_by = Some(holder.to_string()),
                    Err(LockError::Cluster(e)) => {
                        if e.is_transport() {
                            self.cluster = None;
                        }
                        return Err(e.into());
                    }
                }
            }
        } else if let Some(lock) = self.held.lock.take() {
            lock.release(c).await;
        }
        Ok(Writer {
            may_write: leading && locked_by.is_none(),
            locked_by,
            fence: {
                let mut fence = crate::sync::Fence::default();
                if let Some(lock) = self.held.lock.as_ref() {
                    fence = fence.with(lock.lost_check());
                }
                if self.shared.owners.sharded() {
                    fence =
                        self.shared
                            .owners
                            .fence(fence, &self.env, self.hand_over_waits.clone());
                }
                fence
            },
        })
    }

    /// A reconcile failed before its report: logged, counted, and the
    /// environment's status Failed with why.
    fn publish_failure(&self, e: &ReconcileError) {
        let (env, shared) = (self.env.as_str(), &*self.shared);
        let (reason, message) = (e.reason(), e.to_string());
        tracing::warn!(environment = env, reason, error = %message, "reconcile failed");
        shared.metrics.reconcile_failed(env, reason);
        shared.metrics.set_status(env, "Failed");
        shared.update(env, |s| {
            s.sync_status = SyncStatus::Failed;
            s.target_revision = None;
            s.last_error = Some(message.clone());
            s.last_error_reason = Some(reason.to_string());
            s.last_error_at = Some(now());
            s.last_reconcile_at = Some(now());
        });
    }

    /// The plan or the sync failed: published; while a revision is blocked
    /// (the guard), the last one applied is still compared with the cluster
    /// (drift reported, and healed with self-heal).
    async fn blocked(&mut self, e: ReconcileError, writer: &Writer) -> ReconcileError {
        if e.is_transport() {
            self.cluster = None;
        }
        self.publish_failure(&e);
        if matches!(
            e,
            ReconcileError::Blocked { .. } | ReconcileError::PlanNotApproved(_)
        ) {
            self.check_last_applied(writer, SyncStatus::Failed).await;
        }
        // Still failed, whatever the drift check did meanwhile.
        let (env, shared) = (self.env.as_str(), &*self.shared);
        shared.metrics.set_status(env, "Failed");
        shared.update(env, |s| {
            s.sync_status = SyncStatus::Failed;
            s.target_revision = None;
        });
        let message = e.to_string();
        if self.held.last_event.as_deref() != Some(message.as_str())
            && writer.may_write
            && let Some(c) = self.cluster.as_ref()
        {
            c.record_event(env, "SyncFailed", &message).await;
            self.held.last_event = Some(message);
        }
        e
    }

    /// The drift of the last revision applied in full, while a newer one is
    /// blocked: reported, healed with self-heal; the status stays Failed.
    async fn check_last_applied(&mut self, writer: &Writer, still: SyncStatus) {
        let (env, shared) = (self.env.as_str(), &*self.shared);
        let Some(c) = self.cluster.as_ref() else {
            return;
        };
        if self.held.applied.is_none() {
            self.held.applied = last_applied_from_inventory(&shared.options, env, c).await;
        }
        let Some(applied) = self.held.applied.clone() else {
            return;
        };
        let heal_allowed = self.heal_allowed;
        let Checked {
            plan,
            report,
            health,
            ..
        } = match check_and_sync(
            env,
            shared,
            c,
            &applied,
            writer,
            Apply {
                hold_new: false,
                heal_allowed,
                force: false,
                approved_plan: None,
            },
        )
        .await
        {
            Ok(checked) => checked,
            Err(e) => {
                tracing::warn!(environment = env, error = %e, "cannot check drift of the last applied revision");
                return;
            }
        };
        let drifted = drift_by_workspace(&plan);
        let healed = report.as_ref().is_some_and(|r| r.succeeded());
        let objects = objects_by_workspace(&plan, healed, &health);
        self.changed += report.as_ref().map_or(0, changed_objects);
        let current: BTreeMap<String, usize> = drifted
            .iter()
            .map(|(w, n)| (w.clone(), if healed { 0 } else { *n }))
            .collect();
        shared.metrics.set_current_drift(env, &current);
        if let Some(r) = &report {
            shared.metrics.record_sync(env, r);
            log_failures(env, r);
        }
        // Still blocked (Failed) or waiting (OutOfSync), whatever the heal
        // did.
        shared.metrics.set_status(env, &format!("{still:?}"));
        shared.update(env, |s| {
            s.sync_status = still;
            s.target_revision = None;
            set_drift(s, &current, objects, |_| still);
        });
        if drifted.values().any(|n| *n > 0) {
            tracing::warn!(
                environment = env,
                revision = %applied.revision(),
                drifted = drifted.values().sum::<usize>(),
                healed,
                "drift of the last applied revision while a newer one is blocked or waits"
            );
        }
    }

    /// The outcome of a plan (and sync) of `state`: logs, metrics, Events
    /// and the environment's status, per workspace. A newest revision that
    /// cannot be applied, a failed sync, another writer's lock and held
    /// workspaces fail the reconcile, in that order.
    async fn report(
        &mut self,
        state: &Arc<Desired>,
        checked: Checked,
        locked_by: Option<String>,
        gate: &Gate,
    ) -> Result<(), ReconcileError> {
        let (env, shared) = (self.env.clone(), self.shared.clone());
        let (env, shared) = (env.as_str(), &*shared);
        let Checked {
            plan,
            report,
            health,
            ..
        } = checked;
        self.settle_pending(state, report.as_ref(), gate).await;
        log_outcome(env, state, &plan, report.as_ref());
        if let Some(r) = &report {
            shared.metrics.record_sync(env, r);
        }
        // A sync stopped part way for a hand-over (`--shard`) is no
        // failure: the replica taking the environment over syncs it from
        // there. Out of sync here, without an error, an error metric or a
        // SyncFailed Event.
        let handed_over = report.as_ref().is_some_and(stopped_for_hand_over);
        if handed_over {
            tracing::info!(
                environment = env,
                "sync stopped part way for the hand-over; the replica taking the environment over syncs it from here"
            );
        }
        let error = self
            .source_problem
            .clone()
            .map(ReconcileError::Newest)
            .or_else(|| {
                let failed = report.as_ref().filter(|r| !r.succeeded() && !handed_over);
                failed.map(|r| ReconcileError::Apply(crate::print::sync_errors(r)))
            })
            .or_else(|| {
                locked_by.map(|holder| ReconcileError::Locked {
                    environment: env.to_string(),
                    holder,
                })
            })
            .or_else(|| {
                (!state.state.held.is_empty()).then(|| {
                    ReconcileError::Held(held_message(state.revision(), &state.state.held))
                })
            });
        let status = match (&error, &report) {
            (Some(_), _) => SyncStatus::Failed,
            (None, Some(_)) if handed_over => SyncStatus::OutOfSync,
            (None, Some(r)) if !r.succeeded() => SyncStatus::Failed,
            (None, Some(_)) => SyncStatus::Synced,
            (None, None) if plan.summary.has_changes() => SyncStatus::OutOfSync,
            (None, None) => SyncStatus::Synced,
        };
        // A revision whose health failed stays RolledBack (or Failed) until
        // a newer one arrives, however well its rollback syncs.
        let failed_health = self
            .failed_health
            .clone()
            .filter(|f| f.revision == state.revision());
        let status = match (&failed_health, status) {
            (Some(_), SyncStatus::Synced) => self.health_status(),
            (_, status) => status,
        };
        self.record_outcome(error.as_ref()).await;
        // Current drift: what is out of step now (nothing, once a sync
        // healed it).
        let synced = report.as_ref().is_some_and(|r| r.succeeded());
        let objects = objects_by_workspace(&plan, synced, &health);
        self.changed += report.as_ref().map_or(0, changed_objects);
        let current: BTreeMap<String, usize> = drift_by_workspace(&plan)
            .into_iter()
            .map(|(ws, n)| (ws, if synced { 0 } else { n }))
            .collect();
        shared.metrics.set_current_drift(env, &current);
        shared.metrics.set_status(env, &format!("{status:?}"));
        if synced || (report.is_none() && status == SyncStatus::Synced) {
            self.held.applied = Some(state.clone());
        }
        let only_held = matches!(error, Some(ReconcileError::Held(_)));
        shared.update(env, |s| {
            s.sync_status = status;
            s.target_revision = None;
            s.last_reconcile_at = Some(now());
            s.compared = true;
            if let Some(r) = &report {
                s.last_sync_at = Some(now());
                if r.succeeded() {
                    s.last_applied_revision = Some(state.revision().to_string());
                    s.last_applied_commit = state.commit.clone();
                }
            } else if status == SyncStatus::Synced {
                s.last_applied_revision = Some(state.revision().to_string());
                s.last_applied_commit = state.commit.clone();
            }
            // Held workspaces aside, only they failed.
            set_drift(s, &current, objects, |_| {
                if only_held {
                    SyncStatus::Synced
                } else {
                    status
                }
            });
            for (ws, errors) in &state.state.held {
                s.workspaces.insert(
                    ws.clone(),
                    WorkspaceStatus {
                        sync_status: SyncStatus::Failed,
                        drifted_objects: 0,
                        errors: errors.clone(),
                        objects: Vec::new(),
                    },
                );
            }
            s.last_error = error.as_ref().map(ToString::to_string);
            s.last_error_reason = error.as_ref().map(|e| e.reason().to_string());
            s.last_error_at = error.as_ref().map(|_| now());
            if let Some(f) = &failed_health
                && error.is_none()
            {
                s.last_error = Some(f.summary());
                s.last_error_reason = Some("health".to_string());
                s.last_error_at = s.last_error_at.clone().or_else(|| Some(now()));
            }
            s.failed_health = failed_health.clone();
        });
        error.map_or(Ok(()), Err)
    }

    /// A manual environment's revision went through (applied once approved,
    /// or already applied): nothing waits any more; the approval it was
    /// applied under is an Event (once per revision).
    async fn settle_pending(&mut self, state: &Desired, report: Option<&SyncReport>, gate: &Gate) {
        let (env, shared) = (self.env.as_str(), &*self.shared);
        self.waiting = None;
        shared.metrics.set_pending(env, false);
        shared.update(env, |s| {
            s.pending_revision = None;
            s.pending_plan = None;
            s.pending_reason = None;
        });
        if !gate.manual && !gate.windowed {
            return;
        }
        let Some(c) = self.cluster.as_ref() else {
            return;
        };
        if !shared.leads(env) {
            return;
        }
        if self.held.pending_written.as_deref() != Some("") {
            match c.write_pending(env, None).await {
                Ok(()) => self.held.pending_written = Some(String::new()),
                Err(e) => {
                    tracing::warn!(environment = env, error = %e, "cannot clear the pending revision")
                }
            }
        }
        if let (Some(a), Some(r)) = (&gate.approval, report) {
            let outcome = if r.succeeded() {
                "applied"
            } else {
                "applied with failures"
            };
            let message = format!(
                "revision {} approved by {} (API user {}, at {}) {outcome}",
                state.revision(),
                a.by,
                a.user,
                a.at
            );
            tracing::info!(environment = env, revision = %state.revision(), approved_by = %a.by, user = %a.user, "approved revision synced");
            c.record_normal_event(env, "RevisionApproved", &message)
                .await;
        }
    }

    /// Logs and counts a reconcile's outcome; a failed sync is an Event
    /// (once per distinct failure).
    async fn record_outcome(&mut self, error: Option<&ReconcileError>) {
        let (env, shared) = (self.env.as_str(), &*self.shared);
        let Some(e) = error else {
            shared.metrics.reconcile_succeeded(env);
            self.held.last_event = None;
            return;
        };
        let (reason, message) = (e.reason(), e.to_string());
        tracing::warn!(environment = env, reason, error = %message, "reconcile failed");
        shared.metrics.reconcile_failed(env, reason);
        if matches!(e, ReconcileError::Apply(_))
            && self.held.last_event.as_deref() != Some(message.as_str())
            && let Some(c) = self.cluster.as_ref()
        {
            c.record_event(env, "SyncFailed", &message).await;
            self.held.last_event = Some(message);
        }
    }

    /// Connects again when a reconcile dropped the connection.
    async fn reconnect(&mut self) {
        if self.cluster.is_none() {
            let options = cluster_options(&self.shared.options, &self.env);
            self.cluster = Cluster::connect(&options).await.ok();
        }
    }

    /// Gives the environment's lock up (on shutdown).
    async fn release(&mut self) {
        if let (Some(lock), Some(c)) = (self.held.lock.take(), self.cluster.as_ref()) {
            lock.release(c).await;
        }
    }
}

/// A sync's outcome, or drift seen with self-heal off, in the log.
fn log_outcome(env: &str, state: &Desired, plan: &Plan, report: Option<&SyncReport>) {
    if let Some(r) = report {
        tracing::info!(
            environment = env,
            revision = %state.revision(),
            created = r.created.len(),
            updated = r.updated.len(),
            pruned = r.pruned.len(),
            failures = r.failures.len() + r.conflicts.len(),
            "synced"
        );
        log_failures(env, r);
    } else if plan.summary.has_changes() {
        tracing::warn!(
            environment = env,
            drifted = plan.summary.update + plan.summary.create + plan.summary.delete,
            "drift detected (self-heal is off)"
        );
    }
}

/// The drift per workspace onto the status: a workspace with drift is
/// OutOfSync, one without gets `in_step`'s status.
fn set_drift(
    s: &mut EnvironmentStatus,
    current: &BTreeMap<String, usize>,
    mut objects: BTreeMap<String, Vec<ObjectStatus>>,
    in_step: impl Fn(&str) -> SyncStatus,
) {
    s.drifted_objects = current.values().sum();
    s.workspaces = current
        .iter()
        .map(|(ws, n)| {
            (
                ws.clone(),
                WorkspaceStatus {
                    sync_status: if *n > 0 {
                        SyncStatus::OutOfSync
                    } else {
                        in_step(ws)
                    },
                    drifted_objects: *n,
                    errors: Vec::new(),
                    objects: objects.remove(ws).unwrap_or_default(),
                },
            )
        })
        .collect();
}

/// Why the source was not read.
enum ReadError {
    Source(String),
    /// The new commit (or one since the last good one) is not signed by a
    /// trusted key.
    Untrusted(String),
}

/// Reads the source (blocking I/O off the async threads); with `trust`,
/// only a commit signed by a trusted key.
async fn read_source(
    options: &RunOptions,
    trust: Option<(Arc<source::trust::Trust>, source::trust::Verify)>,
) -> Result<(SourceTree, String, Option<Commit>), ReadError> {
    let repo = options.repo.clone();
    let branch = options.branch.clone();
    tokio::task::spawn_blocking(move || {
        // Any URL in a message has its user information (a token) masked.
        let masked = |e: &dyn std::fmt::Display| source::git::redact_in_text(&format!("{e:#}"));
        let auth = source::auth_from_env().map_err(|e| ReadError::Source(masked(&e)))?;
        let checked = trust.as_ref().map(|(t, v)| (&**t, v));
        let (tree, git) = source::read_trusted(&repo, branch.as_deref(), &auth, checked).map_err(
            |e| match e {
                source::SourceError::Untrusted(_) => ReadError::Untrusted(masked(&e)),
                e => ReadError::Source(masked(&e)),
            },
        )?;
        let commit = git.as_ref().map(|g| Commit {
            subject: g.summary.clone(),
            author: g.author.clone(),
        });
        let revision = source::revision_of(&tree, git);
        Ok((tree, revision, commit))
    })
    .await
    .map_err(|e| ReadError::Source(format!("source reader stopped: {e}")))?
}

/// The last good desired state of an environment, and how to sync it.
struct Desired {
    /// Invalid, clashing or unrenderable workspaces of this revision are held
    /// at their last applied state (their namespaces out of `sync.scope`):
    /// `state.held` says why.
    state: DesiredState,
    sync: SyncOptions,
    /// The Warning Event about the held workspaces is still to be recorded
    /// (once per revision, by the leader, as soon as the cluster is
    /// reachable).
    event_pending: std::sync::atomic::AtomicBool,
    /// The revision's commit, when read from Git.
    commit: Option<Commit>,
}

impl Desired {
    fn new(state: DesiredState, options: &RunOptions) -> Desired {
        let sync = state.sync_options(SyncOptions {
            prune: options.prune,
            prune_foreign: options.prune_foreign,
            allow_mass_prune: options.allow_mass_prune,
            ..SyncOptions::default()
        });
        Desired {
            event_pending: std::sync::atomic::AtomicBool::new(!state.held.is_empty()),
            state,
            sync,
            commit: None,
        }
    }

    /// This revision narrowed to `narrowed` (a [`DesiredState::narrowed`]
    /// of it), synced with `sync` within the narrowed scope.
    fn narrowed_to(&self, narrowed: DesiredState, sync: SyncOptions) -> Desired {
        Desired {
            sync: SyncOptions {
                scope: narrowed.scope.clone(),
                ..sync
            },
            state: narrowed,
            event_pending: std::sync::atomic::AtomicBool::new(false),
            commit: self.commit.clone(),
        }
    }

    /// The revision the objects came from (the daemon always knows it).
    fn revision(&self) -> &str {
        self.state.revision.as_deref().unwrap_or_default()
    }
}

/// What a reconcile loop keeps between reconciles besides the desired state.
#[derive(Default)]
struct Held {
    /// The environment's lock, while this replica leads.
    lock: Option<crate::cluster::lock::EnvLock>,
    /// The last revision applied in full: while a newer one is blocked, its
    /// drift is still detected and healed.
    applied: Option<Arc<Desired>>,
    /// The last failure recorded as an Event (one per distinct failure).
    last_event: Option<String>,
    /// The pending revision last published on the approval ConfigMap
    /// (`Some("")`: published that none is pending).
    pending_written: Option<String>,
    /// The revision and reason of the last Event about a waiting revision.
    pending_event: Option<String>,
}

/// Whether a new revision may be applied now (`syncPolicy.mode` and
/// `syncPolicy.windows`).
struct Gate {
    manual: bool,
    /// The environment has sync windows.
    windowed: bool,
    /// The approval of this very revision (manual environments).
    approval: Option<crate::sync::approval::Approval>,
    window: windows::Verdict,
    /// Self-heal may re-apply drift now.
    heal: bool,
}

impl Gate {
    fn may_apply(&self) -> bool {
        (!self.manual || self.approval.is_some()) && self.window.is_open()
    }
}

fn cluster_options(options: &RunOptions, env: &str) -> ClusterOptions {
    let mut cluster_options = options.cluster.clone();
    if let Some(context) = options.contexts.get(env) {
        cluster_options.context = Some(context.clone());
    }
    cluster_options
}

/// What the inventory records as applied, read again from Git (a daemon
/// that restarted while a newer revision is blocked still knows what to
/// compare the cluster with), each workspace at its recorded revision.
/// `None` for a folder (no history) or when that revision cannot be read or
/// rendered.
async fn last_applied_from_inventory(
    options: &RunOptions,
    env: &str,
    c: &Cluster,
) -> Option<Arc<Desired>> {
    let inventory = c.read_inventory(env).await.ok()??;
    let revision = inventory.revision.clone()?;
    let (options, env) = (options.clone(), env.to_string());
    let state = tokio::task::spawn_blocking(move || {
        let state = desired_at(&options, &env, &revision)?;
        let composed = compose_blocking(&options, &env, state, &inventory.pinned());
        Some(Desired::new(composed, &options))
    })
    .await
    .ok()??;
    Some(Arc::new(state))
}

/// Environment `env` at Git revision `revision` (blocking: reads Git), when
/// it can be read, trusted and rendered.
fn desired_at(options: &RunOptions, env: &str, revision: &str) -> Option<DesiredState> {
    if revision.len() != 40 || !revision.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let auth = source::auth_from_env().ok()?;
    // A recorded revision is only re-applied when it is trusted as a new one
    // would be (a CLI sync without --verify-signatures, or a hand-written
    // inventory, may have recorded any commit).
    let trust = options
        .trust
        .get(env)
        .map(|t| (&*t.keys, &source::trust::Verify::Tip));
    let (tree, _) = source::read_trusted(&options.repo, Some(revision), &auth, trust).ok()?;
    let intake = Intake::strict(&options.operator);
    pipeline::desired(tree, env, Some(revision.to_string()), &intake).ok()
}

/// `state` with the workspaces of `pinned` taken from their revisions
/// (blocking: each revision needed is read from Git and rendered once).
fn compose_blocking(
    options: &RunOptions,
    env: &str,
    state: DesiredState,
    pinned: &BTreeMap<String, String>,
) -> DesiredState {
    let newest = state.revision.clone().unwrap_or_default();
    let at: BTreeMap<String, DesiredState> = pipeline::needed(pinned, &newest)
        .into_iter()
        .filter_map(|r| Some((r.clone(), desired_at(options, env, &r)?)))
        .collect();
    pipeline::compose(state, &at, pinned)
}

/// [`compose_blocking`] off the async threads.
async fn compose_at(
    options: &RunOptions,
    env: &str,
    state: DesiredState,
    pinned: &BTreeMap<String, String>,
) -> DesiredState {
    let (options, env, pinned) = (options.clone(), env.to_string(), pinned.clone());
    let fallback = state.clone();
    tokio::task::spawn_blocking(move || compose_blocking(&options, &env, state, &pinned))
        .await
        .unwrap_or(fallback)
}

/// Every failed object, with its reason, in the log.
fn log_failures(env: &str, r: &SyncReport) {
    for f in &r.failures {
        tracing::warn!(environment = env, object = %f.id, error = %f.message, "object failed");
    }
    for c in &r.conflicts {
        let fields = crate::print::conflict_fields(c);
        tracing::warn!(environment = env, object = %c.id, fields = %fields, "conflict");
    }
    if let Some(a) = &r.aborted {
        tracing::warn!(environment = env, error = %a, not_sent = r.not_sent.len(), "sync stopped");
    }
}

/// A plan of a desired state, and the report of its sync when there was one.
struct Checked {
    plan: Plan,
    report: Option<SyncReport>,
    /// The health of each live object as listed for the plan.
    health: BTreeMap<String, Health>,
    /// A new revision not applied because it waits for approval.
    held: bool,
    /// The sync applied a revision the inventory did not record yet.
    new_revision: bool,
}

impl Checked {
    /// A new revision was applied in full: its health is to be watched.
    fn applied_new_revision(&self) -> bool {
        self.new_revision && self.report.as_ref().is_some_and(SyncReport::succeeded)
    }
}

/// What [`check_and_sync`] may do besides reporting.
#[derive(Clone, Debug)]
struct Apply {
    /// Do not apply a revision the inventory does not record yet (it waits
    /// for an approval or a window).
    hold_new: bool,
    /// Self-heal may re-apply drift now.
    heal_allowed: bool,
    /// Apply whatever differs now (a rollback).
    force: bool,
    /// The change set of the plan approved with the revision (`approve
    /// --plan`): a new revision is applied only while its plan is that one.
    approved_plan: Option<String>,
}

/// The workspaces of `state` whose applied revision (by the inventory) is
/// not the last one they were Healthy at.
fn unproven_workspaces(state: &Desired, inventory: &Inventory) -> BTreeSet<String> {
    let declared: BTreeSet<&str> = state.state.objects.iter().map(|o| &*o.workspace).collect();
    declared
        .into_iter()
        .filter(|ws| inventory.applied_revision(ws) != inventory.healthy_revision(ws))
        .map(str::to_string)
        .collect()
}

/// The health of a revision's changed workspaces, watched off the loop.
struct HealthWatch {
    revision: String,
    handle: tokio::task::JoinHandle<Result<Judged, String>>,
}

impl Drop for HealthWatch {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

/// Workspaces Healthy, and those failed with why.
type Judged = (Vec<String>, BTreeMap<String, Vec<String>>);
type WatchOutcome = Result<Result<Judged, String>, tokio::task::JoinError>;

/// The outcome of a health watch; never, without one.
async fn wait_watch(watch: &mut Option<HealthWatch>) -> WatchOutcome {
    match watch {
        Some(w) => (&mut w.handle).await,
        None => std::future::pending().await,
    }
}

/// Waits until `objects` (each with its workspace) are Healthy or
/// `deadline` passes, and judges each workspace.
async fn watch_objects(
    options: ClusterOptions,
    listing: Listing,
    objects: Vec<(ObjectRef, String)>,
    deadline: Duration,
) -> Result<Judged, String> {
    let c = Cluster::connect(&options)
        .await
        .map_err(|e| e.to_string())?;
    let refs: Vec<ObjectRef> = objects.iter().map(|(r, _)| r.clone()).collect();
    // An Ingress's address is not waited for: clusters whose ingress
    // controller never publishes one would roll back every revision.
    let health_options = HealthOptions {
        wait_for_ingress_address: false,
    };
    let results = crate::cluster::wait::wait_healthy(
        &c,
        Some(&listing),
        &refs,
        &health_options,
        deadline,
        ignore_change,
    )
    .await
    .map_err(|e| e.to_string())?;
    let mut judged = Vec::with_capacity(results.len());
    for ((_, ws), (r, h)) in objects.iter().zip(&results) {
        judged.push((ws.as_str(), r.id(), h));
    }
    Ok(health::judge_workspaces(judged))
}

fn ignore_change(_: &ObjectRef, _: &Health) {}

/// Workspaces a plan creates or updates objects of.
fn changed_workspaces(plan: &Plan) -> BTreeSet<String> {
    plan.changes
        .iter()
        .filter(|c| matches!(c.action, ChangeAction::Create | ChangeAction::Update))
        .map(|c| c.workspace.to_string())
        .filter(|ws| !ws.is_empty())
        .collect()
}

/// Plans `state` against the cluster and, when this replica may write and
/// the revision is new (or drifted, with self-heal), syncs it.
async fn check_and_sync(
    env: &str,
    shared: &Shared,
    c: &Cluster,
    state: &Desired,
    writer: &Writer,
    apply: Apply,
) -> Result<Checked, ReconcileError> {
    let Apply {
        hold_new,
        heal_allowed,
        force,
        approved_plan,
    } = apply;
    let options = &shared.options;
    // The guardrails only the cluster can judge: each resources/ manifest's
    // namespace against the scope API discovery gives its kind.
    if let Err(diagnostics) = pipeline::check_scopes(c, &options.operator, &state.state).await? {
        return Err(ReconcileError::Guardrail(format!(
            "revision {} breaks the operator's guardrails; nothing is applied until a revision that keeps them arrives:\n{}",
            state.revision(),
            lines(&diagnostics)
        )));
    }
    let inv = c.read_inventory(env).await?;
    if writer.may_write
        && state
            .event_pending
            .swap(false, std::sync::atomic::Ordering::Relaxed)
    {
        c.record_event(
            env,
            "InvalidWorkspace",
            &held_message(state.revision(), &state.state.held),
        )
        .await;
    }
    // Never adopt: what exists without being this environment's is left
    // alone (the daemon has no --adopt).
    let plan_options = PlanOptions {
        diffs: false,
        deletes: Deletes::Recorded,
        settle: Some(false),
        health: true,
    };
    let mut live = pipeline::plan_live(c, &state.state, inv, plan_options).await?;
    let health = std::mem::take(&mut live.health);
    // A revision not yet applied is synced; between revisions, drift is
    // re-applied only with self-heal.
    let applied_rev = live.inventory.as_ref().and_then(|i| i.revision.clone());
    let new_revision = applied_rev.as_deref() != Some(state.revision());
    if new_revision && hold_new {
        return Ok(Checked {
            plan: live.plan,
            report: None,
            health,
            held: true,
            new_revision,
        });
    }
    // An approval of a plan (`approve --plan`) lets through only that plan.
    if new_revision && let Some(approved) = approved_plan {
        let now = crate::plan::contract::PlanFile::change_set_of(&live.plan, &state.state.objects);
        if now != approved {
            return Err(ReconcileError::PlanNotApproved(format!(
                "revision {} is approved with a plan whose change set is {approved}, but its plan now is {now} ({}): the cluster or the rendering changed since the plan was approved, so nothing is applied; make a new plan (`tenantsync plan --env {env} --rev {} --out plan.json`) and approve it again with --plan",
                state.revision(),
                crate::print::Verb::Plan.counts(&live.plan.summary),
                state.revision(),
            )));
        }
    }
    // A replica that does not lead (or a leader waiting for the lock) only
    // reports.
    let heal = options.self_heal && heal_allowed && live.plan.summary.has_changes();
    let forced = force && live.plan.summary.has_changes();
    if !writer.may_write || (!new_revision && !heal && !forced) {
        return Ok(Checked {
            plan: live.plan,
            report: None,
            health,
            held: false,
            new_revision: false,
        });
    }
    // Healing takes the drifted fields back from whoever changed them.
    let mut sync_options = state.sync.clone();
    sync_options.force_conflicts |= heal && !new_revision;
    sync_options.fence = writer.fence.clone();
    let (plan, report) = sync_with_heartbeat(env, shared, c, state, live, &sync_options).await;
    Ok(Checked {
        plan,
        report: Some(report?),
        health,
        held: false,
        new_revision,
    })
}

/// The plan of a narrowed state ([`DesiredState::narrowed`]) while the
/// inventory records revision `recorded`, with the health of what it
/// listed; why not where it cannot be settled within its namespaces: a
/// guardrail breaks, the inventory records another revision, something is
/// to be pruned or is not tenantsync's. `declared` (a new revision's
/// narrowed sync): every object the new revision declares; the inventory
/// must then record nothing outside the namespaces that it does not
/// declare (a sync of everything would prune it), nor a pinned workspace
/// or a rollout (another writer's rollback or rollout).
async fn plan_narrowed(
    env: &str,
    shared: &Shared,
    c: &Cluster,
    scoped: &Desired,
    recorded: &str,
    declared: Option<&std::collections::HashSet<crate::object::ObjectKey<'_>>>,
) -> Result<Result<(LivePlan, BTreeMap<String, Health>), &'static str>, ReconcileError> {
    if pipeline::check_scopes(c, &shared.options.operator, &scoped.state)
        .await?
        .is_err()
    {
        return Ok(Err("a manifest breaks the operator's guardrails"));
    }
    let Some(inventory) = c.read_inventory(env).await? else {
        return Ok(Err("there is no inventory"));
    };
    if inventory.revision.as_deref() != Some(recorded) {
        return Ok(Err("the inventory records another revision"));
    }
    if let Some(declared) = declared {
        if !inventory.pinned().is_empty() || inventory.rollout.is_some() {
            return Ok(Err("the inventory records a pinned workspace or a rollout"));
        }
        let scope = &scoped.state.scope;
        let undeclared = inventory
            .objects
            .iter()
            .any(|r| !scope.contains_ref(r) && !declared.contains(&r.key()));
        if undeclared {
            return Ok(Err(
                "the inventory records an object the new revision does not declare",
            ));
        }
    }
    let plan_options = PlanOptions {
        diffs: false,
        deletes: Deletes::Recorded,
        settle: Some(false),
        health: true,
    };
    let mut live = pipeline::plan_live(c, &scoped.state, Some(inventory), plan_options).await?;
    let health = std::mem::take(&mut live.health);
    let unmanaged = live
        .plan
        .changes
        .iter()
        .any(|c| c.action == ChangeAction::Unmanaged);
    if live.plan.summary.delete > 0 || unmanaged {
        return Ok(Err(
            "there is something to prune, or that is not tenantsync's",
        ));
    }
    Ok(Ok((live, health)))
}

/// [`Reconciler::check_changed`]'s plan of a narrowed state, and its heal;
/// why not, where the plan cannot be settled within it (the inventory
/// records another revision, something is to be pruned or is not
/// tenantsync's, a guardrail breaks), or there is drift this replica may
/// not heal now (it is reported by a check of everything).
async fn heal_narrowed(
    env: &str,
    shared: &Shared,
    c: &Cluster,
    scoped: &Desired,
    writer: &Writer,
    heal_allowed: bool,
) -> Result<Result<Checked, &'static str>, ReconcileError> {
    let planned = plan_narrowed(env, shared, c, scoped, scoped.revision(), None).await?;
    let (live, health) = match planned {
        Ok(planned) => planned,
        Err(why) => return Ok(Err(why)),
    };
    if !live.plan.summary.has_changes() {
        return Ok(Ok(Checked {
            plan: live.plan,
            report: None,
            health,
            held: false,
            new_revision: false,
        }));
    }
    if !(shared.options.self_heal && heal_allowed && writer.may_write) {
        return Ok(Err("drift is to be reported, not healed"));
    }
    // Healing takes the drifted fields back from whoever changed them.
    let mut sync_options = scoped.sync.clone();
    sync_options.force_conflicts = true;
    sync_options.fence = writer.fence.clone();
    let (plan, report) = sync_with_heartbeat(env, shared, c, scoped, live, &sync_options).await;
    Ok(Ok(Checked {
        plan,
        report: Some(report?),
        health,
        held: false,
        new_revision: false,
    }))
}

/// Syncs a live plan, `Syncing` with the target revision while it runs; the
/// heartbeat keeps beating so a long sync is not taken for a dead daemon.
async fn sync_with_heartbeat(
    env: &str,
    shared: &Shared,
    c: &Cluster,
    state: &Desired,
    live: LivePlan,
    sync_options: &SyncOptions,
) -> (Plan, Result<SyncReport, ReconcileError>) {
    let options = &shared.options;
    shared.update(env, |s| {
        s.sync_status = SyncStatus::Syncing;
        s.target_revision = Some(state.revision().to_string());
    });
    shared.metrics.set_status(env, "Syncing");
    let beat = |status: &str| {
        BTreeMap::from([
            ("syncStatus".to_string(), status.to_string()),
            ("targetRevision".to_string(), state.revision().to_string()),
            ("heartbeatAt".to_string(), now()),
            (
                "staleAfterSeconds".to_string(),
                stale_after(options).to_string(),
            ),
        ])
    };
    if let Err(e) = c.write_status(env, &beat("Syncing")).await {
        tracing::warn!(environment = env, error = %e, "cannot write status onto the inventory");
    }
    let heartbeat = async {
        loop {
            tokio::time::sleep(options.interval.max(Duration::from_secs(1))).await;
            let _ = c.write_status(env, &beat("Syncing")).await;
        }
    };
    let sync = cluster_sync::sync(
        c,
        &live.plan,
        &state.state.objects,
        live.inventory,
        &live.undeclared,
        sync_options,
        Some(state.revision().to_string()),
        &state.state.workspace_revisions,
        |_| {},
    );
    let report = tokio::select! {
        r = sync => r,
        () = heartbeat => unreachable_heartbeat(),
    };
    let report = match report {
        Ok(report) => Ok(report),
        Err(cluster_sync::SyncError::MassPrune(m)) => Err(ReconcileError::Blocked {
            revision: state.revision().to_string(),
            message: m.message,
        }),
        Err(cluster_sync::SyncError::Cluster(e)) => Err(e.into()),
    };
    (live.plan, report)
}

/// The heartbeat loop never ends; this keeps `select!`'s arms one type.
fn unreachable_heartbeat() -> Result<SyncReport, cluster_sync::SyncError> {
    Err(cluster_sync::SyncError::Cluster(
        crate::cluster::ClusterError::Unreachable {
            server: String::new(),
            reason: "heartbeat stopped".into(),
        },
    ))
}

/// Namespaces are cluster-wide: two environments this daemon syncs to one
/// cluster (the same kubeconfig context) must not render one namespace, or
/// each would take the other's objects over. Such a workspace is held in
/// both environments (each loop finds the same clash in the same revision),
/// with why. Returns those workspaces of `env`.
fn namespace_clashes(
    options: &RunOptions,
    repository: &validate::Repository,
    env: &str,
) -> BTreeMap<String, String> {
    let context = |e: &str| {
        options
            .contexts
            .get(e)
            .cloned()
            .or_else(|| options.cluster.context.clone())
            .unwrap_or_default()
    };
    let mine = context(env);
    let others: Vec<&String> = options
        .environments
        .iter()
        .filter(|e| e.as_str() != env && context(e) == mine)
        .collect();
    let mut clashes = BTreeMap::new();
    if others.is_empty() {
        return clashes;
    }
    let cluster = if mine.is_empty() {
        "the same cluster".to_string()
    } else {
        format!("the same cluster (context `{mine}`)")
    };
    let theirs: Vec<_> = others
        .into_iter()
        .map(|e| (e, repository.namespaces(e)))
        .collect();
    for (ns, (ws, at)) in repository.namespaces(env) {
        if let Some((other_env, (other_ws, other_at))) = theirs
            .iter()
            .find_map(|(e, namespaces)| Some((e, namespaces.get(&ns)?)))
        {
            clashes.insert(
                ws.clone(),
                format!(
                    "{at}: workspace `{ws}` renders into namespace `{ns}`, which workspace `{other_ws}` of environment `{other_env}` ({other_at}) renders into on {cluster}: both are held until the environments get distinct namespaces (`{{environment}}` in spec.namespaceTemplate)"
                ),
            );
        }
    }
    clashes
}

/// Diagnostics, one line each.
fn lines(diagnostics: &[crate::declare::diag::Diagnostic]) -> String {
    let lines: Vec<String> = diagnostics.iter().map(ToString::to_string).collect();
    lines.join("\n")
}

/// Why some workspaces of a revision are held at their last applied state.
fn held_message(revision: &str, failed: &BTreeMap<String, Vec<String>>) -> String {
    let mut lines = vec![format!(
        "revision {revision}: {} invalid workspace(s) ({}) keep their last applied state, nothing of theirs is updated or pruned; the other workspaces are applied:",
        failed.len(),
        failed.keys().cloned().collect::<Vec<_>>().join(", ")
    )];
    lines.extend(failed.values().flatten().cloned());
    lines.join("\n")
}

/// Objects a sync created, updated or pruned.
fn changed_objects(r: &SyncReport) -> usize {
    r.created.len() + r.updated.len() + r.pruned.len()
}

/// Objects out of step, per workspace (every workspace listed).
fn drift_by_workspace(plan: &Plan) -> BTreeMap<String, usize> {
    let mut out: BTreeMap<String, usize> = BTreeMap::new();
    for c in &plan.changes {
        let n = out.entry(c.workspace.to_string()).or_default();
        if c.action != ChangeAction::Unchanged {
            *n += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::RwLock;

    use super::*;
    use crate::daemon::DaemonStatus;
    use crate::daemon::metrics::Metrics;

    #[test]
    fn a_failed_read_backs_off_doubling_up_to_the_interval_and_a_success_starts_over() {
        let mut backoff = Backoff::new(Duration::from_secs(10));
        let failed = Err(ReconcileError::NoRevision);
        let waits: Vec<Action> = (0..6).map(|_| backoff.action(true, &failed)).collect();
        let secs = |s| Action::Requeue(Duration::from_secs(s));
        assert_eq!(
            waits,
            [secs(1), secs(2), secs(4), secs(8), secs(10), secs(10)]
        );
        assert_eq!(backoff.action(true, &Ok(())), secs(10));
        assert_eq!(backoff.action(true, &failed), secs(1));
        // A drift check never moves the next read, failed or not.
        assert_eq!(backoff.action(false, &failed), Action::AwaitChange);
        assert_eq!(backoff.action(false, &Ok(())), Action::AwaitChange);
        assert_eq!(backoff.action(true, &failed), secs(2));
    }

    /// Review of issue 19: every quiet poll moved the drift check a whole
    /// interval on, so with polls more frequent than the drift interval the
    /// periodic full comparison never came.
    #[tokio::test(start_paused = true)]
    async fn quiet_polls_leave_the_periodic_drift_check_where_it_was() {
        let start = Instant::now();
        let mut schedule = Schedule::new(start, Duration::from_secs(600));
        schedule.after(Instant::now(), Action::Requeue(Duration::from_secs(60)));
        for _ in 0..9 {
            tokio::time::advance(Duration::from_secs(60)).await;
            assert!(schedule.due(Instant::now(), true).0);
            schedule.after_quiet(Instant::now(), Action::Requeue(Duration::from_secs(60)));
        }
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(schedule.due(Instant::now(), true), (true, true));
    }

    #[tokio::test(start_paused = true)]
    async fn the_schedule_reads_on_requeue_or_trigger_and_checks_drift_on_its_interval() {
        let start = Instant::now();
        let mut schedule = Schedule::new(start, Duration::from_secs(300));
        assert_eq!(schedule.due(Instant::now(), true), (true, false));
        schedule.after(Instant::now(), Action::Requeue(Duration::from_secs(60)));
        assert_eq!(schedule.wake_at(true), start + Duration::from_secs(60));
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(schedule.due(Instant::now(), true), (false, false));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(schedule.due(Instant::now(), true), (true, false));
        // A drift check leaves the next read where it was.
        schedule.after(Instant::now(), Action::AwaitChange);
        assert_eq!(schedule.due(Instant::now(), true), (true, false));
        schedule.after(Instant::now(), Action::Requeue(Duration::from_secs(600)));
        tokio::time::advance(Duration::from_secs(300)).await;
        assert_eq!(schedule.due(Instant::now(), true), (false, true));
        schedule.poll_now(Instant::now());
        assert_eq!(schedule.due(Instant::now(), true), (true, true));
    }

    #[tokio::test(start_paused = true)]
    async fn a_change_seen_by_a_watch_makes_a_check_of_changes_due_now_and_leaves_the_next_read_and_the_periodic_check()
     {
        let start = Instant::now();
        let mut s = Schedule::new(start, Duration::from_secs(600));
        s.after(start, Action::Requeue(Duration::from_secs(60)));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(!s.changes_due(Instant::now(), true));
        s.changes_now(Instant::now());
        assert!(s.changes_due(Instant::now(), true));
        assert!(
            !s.changes_due(Instant::now(), false),
            "no revision read yet"
        );
        assert_eq!(s.due(Instant::now(), true), (false, false));
        assert_eq!(s.wake_at(true), Instant::now());
        s.changes_ran(Instant::now());
        assert!(!s.changes_due(Instant::now(), true));
        assert_eq!(s.wake_at(true), start + Duration::from_secs(60));
        // A check of changes that cannot stand for a check of everything
        // asks for one at once.
        s.drift_at_once(Instant::now());
        assert_eq!(s.due(Instant::now(), true), (false, true));
        // A check of everything covers the changes waiting.
        s.changes_now(Instant::now() + WATCH_CHECK_GAP);
        s.drift_ran(Instant::now());
        s.after(Instant::now(), Action::AwaitChange);
        assert!(!s.changes_due(Instant::now() + WATCH_CHECK_GAP, true));
        assert_eq!(s.wake_at(true), start + Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn a_writer_fighting_the_heals_gets_at_most_one_watch_triggered_check_a_second() {
        let start = Instant::now();
        let mut s = Schedule::new(start, Duration::from_secs(600));
        s.after(start, Action::Requeue(Duration::from_secs(60)));
        s.changes_now(start);
        assert!(s.changes_due(start, true));
        s.changes_ran(start);
        // The writer puts its value back 100 ms after the heal, and again
        // and again (two objects, every 50 ms): the next check comes one
        // second after the last one ran, never later.
        for _ in 0..10 {
            tokio::time::advance(Duration::from_millis(50)).await;
            s.changes_now(Instant::now());
            assert!(!s.changes_due(Instant::now(), true));
            assert_eq!(s.wake_at(true), start + WATCH_CHECK_GAP);
        }
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(s.changes_due(Instant::now(), true));
        s.changes_ran(Instant::now());
        // A change long after the last check is checked at once.
        tokio::time::advance(Duration::from_secs(30)).await;
        s.changes_now(Instant::now());
        assert!(s.changes_due(Instant::now(), true));
        // A check of everything counts as the last check too.
        s.drift_ran(Instant::now());
        tokio::time::advance(Duration::from_millis(100)).await;
        s.changes_now(Instant::now());
        assert!(!s.changes_due(Instant::now(), true));
    }

    #[tokio::test(start_paused = true)]
    async fn no_drift_check_is_due_before_a_revision_was_read() {
        let start = Instant::now();
        let mut schedule = Schedule::new(start, Duration::from_secs(30));
        // The first read failed: retried in 8 s, no drift tick meanwhile.
        schedule.after(Instant::now(), Action::Requeue(Duration::from_secs(8)));
        tokio::time::advance(Duration::from_secs(31)).await;
        schedule.after(Instant::now(), Action::Requeue(Duration::from_secs(60)));
        tokio::time::advance(Duration::from_secs(31)).await;
        assert_eq!(schedule.due(Instant::now(), false), (false, false));
        assert_eq!(schedule.wake_at(false), start + Duration::from_secs(91));
        assert_eq!(schedule.due(Instant::now(), true), (false, true));
    }

    fn shared_state(repo: &str, interval: Duration) -> (Arc<Shared>, watch::Sender<bool>) {
        let (leading_tx, leading) = watch::channel(true);
        let (trigger, _) = watch::channel(0u64);
        let options = RunOptions {
            repo: repo.to_string(),
            branch: None,
            environments: vec!["dev".to_string()],
            interval,
            drift_interval: Duration::from_secs(3600),
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            webhook_listen: None,
            ui: true,
            prune: false,
            self_heal: false,
            operator: crate::sync::tenancy::Operator::default(),
            // No cluster: a kubeconfig that does not exist fails at once.
            cluster: ClusterOptions {
                kubeconfig: Some("/nonexistent/tenantsync-test-kubeconfig".into()),
                context: None,
                ..Default::default()
            },
            webhook_secret: None,
            leader_elect: false,
            lease_name: "tenantsync-leader".to_string(),
            shard: false,
            allow_mass_prune: false,
            prune_foreign: false,
            contexts: BTreeMap::new(),
            trust: BTreeMap::new(),
        };
        let shared = Arc::new(Shared {
            status: RwLock::new(DaemonStatus::default()),
            metrics: Metrics::new(),
            trigger,
            owners: Arc::new(crate::daemon::shard::Owners::new(
                false,
                "tenantsync-leader",
                "test",
                &options.environments,
            )),
            options,
            leading,
        });
        (shared, leading_tx)
    }

    fn fetch_failures(shared: &Shared) -> u64 {
        shared
            .metrics
            .render()
            .lines()
            .find(|l| l.starts_with("tenantsync_git_fetch_failures_total{"))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0)
    }

    #[tokio::test(start_paused = true)]
    async fn an_unreadable_source_fails_with_its_reason_and_is_retried_with_backoff() {
        let repo = tempfile::tempdir().unwrap();
        let missing = repo.path().join("missing");
        let (shared, _leading) =
            shared_state(&missing.display().to_string(), Duration::from_secs(10));
        shared.metrics.init_environment("dev");
        let mut reconciler = Reconciler::new("dev".to_string(), shared.clone());
        let e = reconciler.reconcile(true, None).await.unwrap_err();
        assert!(matches!(e, ReconcileError::Source(_)), "{e}");
        assert_eq!(e.reason(), "source");
        let status = shared.status.read().unwrap().environments["dev"].clone();
        assert_eq!(status.sync_status, SyncStatus::Failed);
        assert_eq!(status.last_error_reason.as_deref(), Some("source"));
        assert!(
            status
                .last_error
                .unwrap()
                .starts_with("cannot read the repository")
        );
        // Without a good revision a drift check fails too, and says so.
        let e = reconciler.reconcile(false, None).await.unwrap_err();
        assert!(matches!(e, ReconcileError::Source(_)), "{e}");

        // The loop retries after 1, 2, 4, 8 s, then every 10 s (the
        // interval): reads at 0, 1, 3, 7, 15, 25 s within the first 30.
        let (shared, _leading) =
            shared_state(&missing.display().to_string(), Duration::from_secs(10));
        shared.metrics.init_environment("dev");
        let (stop, shutdown) = watch::channel(false);
        let running = tokio::spawn(reconcile_loop("dev".into(), shared.clone(), shutdown));
        let mut seen = Vec::new();
        for _ in 0..30 {
            tokio::time::sleep(Duration::from_millis(999)).await;
            seen.push(fetch_failures(&shared));
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let _ = stop.send(true);
        running.await.unwrap();
        assert_eq!(seen[0], 1, "{seen:?}");
        assert_eq!(seen[1], 2, "{seen:?}");
        assert_eq!(seen[3], 3, "{seen:?}");
        assert_eq!(seen[7], 4, "{seen:?}");
        assert_eq!(seen[15], 5, "{seen:?}");
        assert_eq!(seen[24], 5, "{seen:?}");
        assert_eq!(seen[25], 6, "{seen:?}");
        assert_eq!(seen[29], 6, "{seen:?}");
    }
}
