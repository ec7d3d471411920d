//! A revision rolled out step by step (`syncPolicy.rollout`, issue 26): the
//! daemon applies the first step's workspaces, waits until they are Healthy
//! and `pauseBetween` has passed, then the next step; the last step is the
//! ordinary sync of the whole revision, which records it in the inventory.
//! Which workspaces go in which step is `sync::rollout`'s (pure); this is
//! the edge that applies, watches and reports.
//!
//! Written down in the inventory (`sync::resume::RolloutRecord`) after a
//! step's apply (not the last's), its first Healthy, its failure and its
//! rollback, compare-and-set against the record this daemon last saw and
//! only while the writer's fence holds: a daemon that restarts mid-rollout,
//! or the next leader or shard holder, goes on at the recorded step with
//! the recorded steps (the step's health judged again, the pause counted
//! from when it was first Healthy), never applying the next step before its
//! gate. A replica that stops being the writer drops what it kept; the
//! inventory's record wins over memory whenever they differ.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::*;
use crate::cluster::inventory::RolloutWrite;
use crate::declare::model::RolloutPolicy;
use crate::object::Object;
use crate::plan::Summary;
use crate::sync::Scope;
use crate::sync::resume::{self as recorded, RolloutRecord};
use crate::sync::rollout::{RolloutPhase, RolloutPlan, RolloutStatus, StepHealth, judge};

/// How often a rollout under way is looked at (the step's health, the end
/// of the pause).
pub(super) const ROLLOUT_CHECK: Duration = Duration::from_secs(2);

/// One revision's rollout, as far as it went.
pub(super) struct RolloutRun {
    pub(super) revision: String,
    plan: RolloutPlan,
    /// Each workspace's namespace.
    namespaces: BTreeMap<String, String>,
    /// Steps applied.
    applied: usize,
    applied_at: Instant,
    healthy_at: Option<Instant>,
    next_step_at: Option<jiff::Timestamp>,
    phase: RolloutPhase,
    failed: BTreeMap<String, String>,
    /// Reached workspaces not Healthy yet.
    progressing: Vec<String>,
    rollback: bool,
    pause: Duration,
    deadline: Duration,
    /// `applied_at` and `healthy_at` by the wall clock, as recorded.
    applied_wall: jiff::Timestamp,
    healthy_wall: Option<jiff::Timestamp>,
    /// A failed step's workspaces whose rollback is not applied yet, and
    /// why: tried again at each reconcile.
    rolling_back: Vec<String>,
    rollback_error: Option<String>,
    /// What the inventory records of it, as last written.
    saved: Option<RolloutRecord>,
}

impl RolloutRun {
    /// Whether it waits for health or a pause (looked at every
    /// [`ROLLOUT_CHECK`]).
    pub(super) fn active(&self) -> bool {
        matches!(
            self.phase,
            RolloutPhase::Progressing | RolloutPhase::Pausing
        )
    }

    /// Whether it has work at the next reconcile: a step under way, or a
    /// failed step's rollback still to apply.
    pub(super) fn has_work(&self) -> bool {
        self.active() || !self.rolling_back.is_empty()
    }

    /// A new rollout of `revision`, nothing applied yet.
    fn new(revision: &str, plan: RolloutPlan, live: &Plan, policy: &RolloutPolicy) -> RolloutRun {
        RolloutRun {
            revision: revision.to_string(),
            namespaces: namespaces_of(live),
            plan,
            applied: 0,
            applied_at: Instant::now(),
            healthy_at: None,
            next_step_at: None,
            phase: RolloutPhase::Progressing,
            failed: BTreeMap::new(),
            progressing: Vec::new(),
            rollback: policy.rollback,
            pause: policy.pause_between,
            deadline: policy.health_deadline,
            applied_wall: jiff::Timestamp::now(),
            healthy_wall: None,
            rolling_back: Vec::new(),
            rollback_error: None,
            saved: None,
        }
    }

    /// The rollout the inventory records, taken up again: its steps as
    /// planned, its clocks by the recorded wall times, the policy's
    /// switches as they are now.
    fn resumed(record: RolloutRecord, live: &Plan, policy: &RolloutPolicy) -> RolloutRun {
        let now = jiff::Timestamp::now();
        let applied_wall = record.applied_at.parse().unwrap_or(now);
        let healthy_wall: Option<jiff::Timestamp> =
            record.healthy_at.as_deref().and_then(|t| t.parse().ok());
        let ago = |t: &str| {
            let elapsed = recorded::elapsed(t, now).unwrap_or_default();
            Instant::now()
                .checked_sub(elapsed)
                .unwrap_or_else(Instant::now)
        };
        let plan = RolloutPlan {
            steps: record.steps.clone(),
            not_held_back: record.not_held_back.clone(),
            shared_objects: 0,
            pause_between_seconds: policy.pause_between.as_secs(),
            health_deadline_seconds: policy.health_deadline.as_secs(),
        };
        let mut run = RolloutRun::new(&record.revision, plan, live, policy);
        run.applied = record.applied.min(run.plan.steps.len());
        run.applied_at = ago(&record.applied_at);
        run.applied_wall = applied_wall;
        run.healthy_at = record.healthy_at.as_deref().map(ago);
        run.healthy_wall = healthy_wall;
        run.next_step_at = healthy_wall.and_then(|t| t.checked_add(policy.pause_between).ok());
        run.phase = record.phase;
        run.progressing = if record.phase == RolloutPhase::Progressing {
            run.reached()
        } else {
            Vec::new()
        };
        run.failed = record.failed.clone();
        run.rolling_back = record.rolling_back.clone();
        run.saved = Some(record);
        run
    }

    /// What the inventory is to record of it (as stored: failed messages
    /// cut, so it compares equal to what is read back).
    fn record(&self) -> RolloutRecord {
        RolloutRecord {
            revision: self.revision.clone(),
            steps: self.plan.steps.clone(),
            not_held_back: self.plan.not_held_back.clone(),
            applied: self.applied,
            applied_at: self.applied_wall.to_string(),
            healthy_at: self.healthy_wall.map(|t| t.to_string()),
            phase: self.phase,
            failed: self.failed.clone(),
            rolling_back: self.rolling_back.clone(),
        }
        .capped()
    }

    fn reached(&self) -> Vec<String> {
        self.plan.steps[..self.applied.min(self.plan.steps.len())]
            .iter()
            .flat_map(|s| s.workspaces.iter().cloned())
            .collect()
    }

    fn status(&self) -> RolloutStatus {
        let reached = self.reached();
        let done = reached
            .iter()
            .filter(|w| !self.progressing.contains(w) && !self.failed.contains_key(*w))
            .cloned()
            .collect();
        let pending = self.plan.steps[self.applied.min(self.plan.steps.len())..]
            .iter()
            .flat_map(|s| s.workspaces.iter().cloned())
            .collect();
        RolloutStatus {
            revision: self.revision.clone(),
            step: self.applied,
            steps: self.plan.steps.len(),
            phase: self.phase,
            done,
            progressing: self.progressing.clone(),
            pending,
            failed: self.failed.clone(),
            next_step_at: self.next_step_at.map(|t| t.to_string()),
            rolling_back: self.rolling_back.clone(),
            rollback_error: self.rollback_error.clone(),
        }
    }

    /// The scope of a sync of steps 1 to `through` (1-based): their
    /// workspaces' namespaces and those not held back; the state's held
    /// workspaces stay held.
    fn scope(&self, through: usize, held: &BTreeSet<String>) -> Scope {
        let workspaces = self.plan.steps[..through.min(self.plan.steps.len())]
            .iter()
            .flat_map(|s| s.workspaces.iter())
            .chain(self.plan.not_held_back.iter());
        Scope {
            only: Some(
                workspaces
                    .filter_map(|w| self.namespaces.get(w).cloned())
                    .collect(),
            ),
            held: held.clone(),
        }
    }
}

/// Each workspace's namespace, from a plan's changes.
fn namespaces_of(plan: &Plan) -> BTreeMap<String, String> {
    plan.changes
        .iter()
        .filter(|c| !c.workspace.is_empty())
        .filter_map(|c| {
            let ns = match (&c.namespace, &*c.kind) {
                (Some(ns), _) => ns.to_string(),
                (None, "Namespace") => c.name.to_string(),
                (None, _) => return None,
            };
            Some((c.workspace.to_string(), ns))
        })
        .collect()
}

/// `live` narrowed to `scope`: the plan's changes, the objects and the
/// undeclared live objects in it.
fn narrowed(live: LivePlan, objects: &[Object], scope: &Scope) -> (LivePlan, Vec<Object>) {
    let mut live = live;
    live.plan
        .changes
        .retain(|c| scope.contains(&c.kind, c.namespace.as_deref(), &c.name));
    live.plan.summary = Summary::of(&live.plan.changes);
    live.undeclared.retain(|v: &Value| scope.contains_live(v));
    let objects = objects
        .iter()
        .filter(|o| scope.contains_object(o))
        .cloned()
        .collect();
    (live, objects)
}

impl Reconciler {
    /// Whether a rollout is under way (looked at every [`ROLLOUT_CHECK`]).
    pub(super) fn rolling(&self) -> bool {
        self.rollout.as_ref().is_some_and(RolloutRun::has_work)
    }

    /// The rollout's turn in this reconcile: `Ok(true)` when it handled
    /// it (a step applied, watched, failed or rolled back), `Ok(false)`
    /// when the ordinary sync goes on (no rollout policy, a revision that
    /// changes at most one workspace, the last step, or already applied).
    pub(super) async fn roll(
        &mut self,
        state: &Arc<Desired>,
        writer: &Writer,
        approved_plan: Option<&str>,
    ) -> Result<bool, ReconcileError> {
        let policy = state
            .state
            .sync_policy
            .rollout
            .as_ref()
            .and_then(|r| r.checked().ok());
        let (env, shared) = (self.env.clone(), self.shared.clone());
        let (env, shared) = (env.as_str(), &*shared);
        let Some(policy) = policy else {
            if self.rollout.take().is_some() {
                shared.update(env, |s| s.rollout = None);
                shared.metrics.set_rollout(env, None);
            }
            return Ok(false);
        };
        let Some(c) = self.cluster.as_ref() else {
            return Ok(false);
        };
        if !writer.may_write {
            // Not this replica's to roll out now (`resume_health` drops
            // what it kept when its term as the writer ends).
            return Ok(false);
        }
        let inv = c.read_inventory(env).await?;
        let applied_revision = inv.as_ref().and_then(|i| i.revision.clone());
        let record = inv.as_ref().and_then(|i| i.rollout.clone());
        if let Some(why) = inv.as_ref().and_then(|i| i.rollout_unreadable.as_deref()) {
            tracing::warn!(
                environment = env,
                "the inventory's rollout record is not resumed: {why}"
            );
        }
        // The inventory's record is the truth: another writer (this one's
        // successor while it did not hold the environment) may have moved
        // the rollout on, failed it, rolled it back or cleared it since.
        if let Some(run) = &self.rollout
            && run.saved != record
        {
            tracing::info!(environment = env, revision = %run.revision, "the inventory's rollout record is not the one this daemon last wrote or read: taking it up instead of what was kept in memory");
            self.rollout = None;
        }
        if applied_revision.as_deref() == Some(state.revision()) {
            // A rollout recorded of this revision or an older one is over.
            if record.is_some() {
                match c
                    .record_rollout(env, &writer.fence, record.as_ref(), None)
                    .await
                {
                    Ok(RolloutWrite::Written | RolloutWrite::Unchanged) => {
                        if let Some(run) = self.rollout.as_mut() {
                            run.saved = None;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(environment = env, error = %e, "cannot clear the finished rollout from the inventory");
                    }
                }
            }
            // The last step's sync recorded the revision: completed.
            if let Some(run) = self.rollout.as_mut()
                && run.revision == state.revision()
                && run.phase != RolloutPhase::Completed
            {
                run.phase = RolloutPhase::Completed;
                run.applied = run.plan.steps.len();
                run.progressing.clear();
                run.next_step_at = None;
                let status = run.status();
                c.record_normal_event(
                    env,
                    "RolloutCompleted",
                    &format!(
                        "revision {} reached every workspace of its rollout ({} in {} steps)",
                        run.revision,
                        status.done.len(),
                        status.steps
                    ),
                )
                .await;
                shared.update(env, |s| s.rollout = Some(status));
                shared.metrics.set_rollout(env, None);
            }
            return Ok(false);
        }
        if let Some(run) = &self.rollout
            && run.revision != state.revision()
        {
            if run.active() {
                c.record_normal_event(
                    env,
                    "RolloutAbandoned",
                    &format!(
                        "the rollout of revision {} stopped after step {}/{}: revision {} starts from step one (workspaces the older one reached keep it until the newer one reaches them)",
                        run.revision,
                        run.applied,
                        run.plan.steps.len(),
                        state.revision()
                    ),
                )
                .await;
            }
            self.rollout = None;
        }
        let plan_options = PlanOptions {
            diffs: false,
            deletes: Deletes::Recorded,
            settle: Some(false),
            health: true,
        };
        let live = pipeline::plan_live(c, &state.state, inv, plan_options).await?;
        // Another daemon's rollout of this revision (a restart, a new
        // leader or shard holder): taken up at its recorded step.
        // Not when someone else set a workspace it reached to another
        // revision since (a CLI sync while no daemon ran): then it starts
        // again from step one, never applying steps past a gate at once.
        let reached_elsewhere = record
            .as_ref()
            .filter(|r| r.revision == state.revision())
            .map(|r| recorded::reached_elsewhere(r, &live.plan))
            .unwrap_or_default();
        if self.rollout.is_none() && !reached_elsewhere.is_empty() {
            let message = format!(
                "revision {}: the rollout the inventory records is not resumed: {} it reached no longer match the revision (changed by another sync since); the rollout starts again from step one",
                state.revision(),
                crate::sync::name_some(&reached_elsewhere)
            );
            tracing::warn!(environment = env, "{message}");
            c.record_event(env, "RolloutRestarted", &message).await;
        }
        if self.rollout.is_none()
            && reached_elsewhere.is_empty()
            && let Some(record) = record.clone().filter(|r| r.revision == state.revision())
            // A record of no steps, or of more applied than it has, is not
            // one this daemon wrote: the rollout starts again.
            && record.resumable()
        {
            let run = RolloutRun::resumed(record, &live.plan, &policy);
            let message = format!(
                "revision {}: the rollout goes on at step {}/{} ({}) as the inventory records it",
                run.revision,
                run.applied,
                run.plan.steps.len(),
                run.phase.as_str()
            );
            tracing::info!(environment = env, "{message}");
            c.record_normal_event(env, "RolloutResumed", &message).await;
            // A rollout that had stopped still says why.
            let stopped = matches!(run.phase, RolloutPhase::Failed | RolloutPhase::RolledBack)
                .then(|| {
                    let why: Vec<String> = run
                        .failed
                        .iter()
                        .map(|(ws, why)| format!("{ws}: {why}"))
                        .collect();
                    format!(
                        "the rollout of revision {} stopped at step {}/{} ({}); later steps never see it. {}",
                        run.revision,
                        run.applied,
                        run.plan.steps.len(),
                        run.phase.as_str(),
                        crate::sync::name_some(&why)
                    )
                });
            self.rollout = Some(run);
            self.report_rollout(stopped);
        }
        let Some(c) = self.cluster.as_ref() else {
            return Ok(false);
        };
        let Some(run) = self.rollout.as_mut() else {
            let Some(plan) = state
                .state
                .rollout(&live.plan)
                .filter(|p| p.steps.len() > 1)
            else {
                return Ok(false);
            };
            before_first_step(c, shared, state, &live.plan, approved_plan).await?;
            let mut run = RolloutRun::new(state.revision(), plan, &live.plan, &policy);
            // What the inventory records now (an older revision's, a stale
            // or unreadable one): this rollout's record replaces it, with
            // no step applied yet, before step 1 is: a daemon killed during
            // step 1 leaves the next one the steps as planned (it applies
            // step 1 again and judges it).
            run.saved = record;
            self.rollout = Some(run);
            self.save_rollout(writer).await;
            if self
                .rollout
                .as_ref()
                .is_some_and(|r| r.saved.as_ref() != Some(&r.record()))
            {
                // Not recorded (the inventory unwritable, the hold lost):
                // no step is applied that another daemon could not resume.
                self.rollout = None;
                return Err(ReconcileError::Apply(format!(
                    "revision {}: the rollout cannot be recorded in the inventory before its first step, so no step is applied; tried again at the next reconcile (the daemon's log says why)",
                    state.revision()
                )));
            }
            self.apply_step(state, live, writer).await?;
            return Ok(true);
        };
        match run.phase {
            // A failed step whose rollback is not applied yet: tried again.
            RolloutPhase::Failed if !run.rolling_back.is_empty() => {
                self.retry_step_rollback(writer).await;
                return Ok(true);
            }
            // Nothing more of this revision: a newer one starts over.
            RolloutPhase::Failed | RolloutPhase::RolledBack => {
                self.report_rollout(None);
                return Ok(true);
            }
            RolloutPhase::Completed => return Ok(false),
            RolloutPhase::Progressing | RolloutPhase::Pausing => {}
        }
        // A record of no step applied yet (a daemon stopped during step 1):
        // step 1 now, with the steps as recorded.
        if run.applied == 0 {
            // Checked before step 1 whenever it is tried, as a new rollout
            // is: one resumed from a record (this replica or another was
            // stopped there), and one whose step 1 failed and is tried
            // again, meet the cluster as it is now.
            if let Some(c) = self.cluster.as_ref() {
                before_first_step(c, shared, state, &live.plan, approved_plan).await?;
            }
            self.apply_step(state, live, writer).await?;
            return Ok(true);
        }
        let rows: Vec<_> = live
            .plan
            .changes
            .iter()
            .filter_map(|ch| {
                let h = live.health.get(&ch.id())?;
                Some((
                    ch.workspace.to_string(),
                    ch.id(),
                    h.status,
                    h.message.clone(),
                ))
            })
            .collect();
        match judge(
            &run.reached(),
            &rows,
            run.applied_at.elapsed(),
            run.deadline,
        ) {
            StepHealth::Waiting(waiting) => {
                run.phase = RolloutPhase::Progressing;
                run.progressing = waiting;
                self.report_rollout(None);
                Ok(true)
            }
            StepHealth::Failed(failed) => {
                self.fail_step(state, failed, writer).await;
                Ok(true)
            }
            StepHealth::Healthy => {
                run.progressing.clear();
                let now = Instant::now();
                let healthy_at = *run.healthy_at.get_or_insert_with(|| {
                    let wall = jiff::Timestamp::now();
                    run.healthy_wall = Some(wall);
                    run.next_step_at = wall.checked_add(run.pause).ok();
                    now
                });
                if now < healthy_at + run.pause {
                    run.phase = RolloutPhase::Pausing;
                    self.report_rollout(None);
                    self.save_rollout(writer).await;
                    return Ok(true);
                }
                if run.applied + 1 >= run.plan.steps.len() {
                    // The last step: the ordinary sync of the whole
                    // revision, which records it.
                    run.applied = run.plan.steps.len();
                    run.next_step_at = None;
                    let message = format!(
                        "revision {}: step {}/{} applies the rest ({} workspaces)",
                        run.revision,
                        run.applied,
                        run.plan.steps.len(),
                        run.plan.steps.last().map_or(0, |s| s.workspaces.len())
                    );
                    c.record_normal_event(env, "RolloutStep", &message).await;
                    return Ok(false);
                }
                self.apply_step(state, live, writer).await?;
                Ok(true)
            }
        }
    }

    /// Applies the next step (with the steps before it, which are
    /// unchanged, and the workspaces not held back), without recording
    /// the revision.
    async fn apply_step(
        &mut self,
        state: &Arc<Desired>,
        live: LivePlan,
        writer: &Writer,
    ) -> Result<(), ReconcileError> {
        let (env, shared) = (self.env.clone(), self.shared.clone());
        let (env, shared) = (env.as_str(), &*shared);
        let (Some(c), Some(run)) = (self.cluster.as_ref(), self.rollout.as_mut()) else {
            return Ok(());
        };
        let through = run.applied + 1;
        let scope = run.scope(through, &state.sync.scope.held);
        let (live, objects) = narrowed(live, &state.state.objects, &scope);
        let mut options = state.sync.clone();
        options.scope = scope;
        options.fence = writer.fence.clone();
        // The step and its record in one inventory write (the step's own,
        // once it applied in full): no kill between them.
        let applied_wall = jiff::Timestamp::now();
        let mut stepped = run.record();
        stepped.applied = through;
        stepped.applied_at = applied_wall.to_string();
        stepped.healthy_at = None;
        stepped.phase = RolloutPhase::Progressing;
        options.rollout_record = Some(stepped.clone());
        let report = cluster_sync::sync(
            c,
            &live.plan,
            &objects,
            live.inventory,
            &live.undeclared,
            &options,
            None,
            &BTreeMap::new(),
            |_| {},
        )
        .await;
        let report = match report {
            Ok(report) => report,
            Err(cluster_sync::SyncError::MassPrune(m)) => {
                return Err(ReconcileError::Blocked {
                    revision: state.revision().to_string(),
                    message: m.message,
                });
            }
            Err(cluster_sync::SyncError::Cluster(e)) => return Err(e.into()),
        };
        shared.metrics.record_sync(env, &report);
        self.changed += changed_objects(&report);
        if stopped_for_hand_over(&report) {
            // Stopped part way for a hand-over (`--shard`): no failure. The
            // step is not recorded as applied (its record goes with its
            // last write), so the replica taking the environment over
            // applies it again from the inventory's record.
            tracing::info!(environment = env, revision = %run.revision, step = through, "rollout step stopped part way for the hand-over; the replica taking the environment over applies it again");
            self.report_rollout(None);
            return Ok(());
        }
        if !report.succeeded() {
            // The step is tried again (with the backoff), not advanced.
            return Err(ReconcileError::Apply(crate::print::sync_errors(&report)));
        }
        run.applied = through;
        run.applied_at = Instant::now();
        run.applied_wall = applied_wall;
        run.saved = Some(stepped);
        run.healthy_at = None;
        run.healthy_wall = None;
        run.next_step_at = None;
        run.phase = RolloutPhase::Progressing;
        let Some(step) = run.plan.steps.get(through.saturating_sub(1)) else {
            return Err(ReconcileError::NoRevision);
        };
        run.progressing = step.workspaces.clone();
        let message = format!(
            "revision {}: step {through}/{} ({}%) applied to {} workspace(s): {}; the next step waits until they are Healthy (within {}) and {} more",
            run.revision,
            run.plan.steps.len(),
            step.percent,
            step.workspaces.len(),
            crate::sync::name_some(&step.workspaces),
            crate::sync::rollout::duration_text(run.deadline.as_secs()),
            crate::sync::rollout::duration_text(run.pause.as_secs()),
        );
        tracing::info!(environment = env, revision = %run.revision, step = through, "rollout step applied");
        c.record_normal_event(env, "RolloutStep", &message).await;
        self.report_rollout(None);
        self.save_rollout(writer).await;
        Ok(())
    }

    /// A step went Degraded or missed its deadline: the rollout stops and,
    /// with `rollback`, the step's workspaces are set back to the revision
    /// applied before (the inventory's).
    async fn fail_step(
        &mut self,
        state: &Arc<Desired>,
        failed: BTreeMap<String, String>,
        writer: &Writer,
    ) {
        let (env, shared) = (self.env.clone(), self.shared.clone());
        let (env, shared) = (env.as_str(), &*shared);
        let Some(run) = self.rollout.as_mut() else {
            return;
        };
        run.phase = RolloutPhase::Failed;
        run.failed = failed;
        run.progressing.retain(|w| !run.failed.contains_key(w));
        run.next_step_at = None;
        let step_workspaces: Vec<String> = run
            .plan
            .steps
            .get(run.applied.saturating_sub(1))
            .map(|s| s.workspaces.clone())
            .unwrap_or_default();
        let why: Vec<String> = run
            .failed
            .iter()
            .map(|(ws, why)| format!("{ws}: {why}"))
            .collect();
        let message = format!(
            "the rollout of revision {} failed at step {}/{}; later steps never see it. {}",
            run.revision,
            run.applied,
            run.plan.steps.len(),
            crate::sync::name_some(&why)
        );
        let rollback = run.rollback;
        if let Some(c) = self.cluster.as_ref() {
            c.record_event(env, "RolloutFailed", &message).await;
        }
        tracing::warn!(environment = env, revision = %state.revision(), "{message}");
        if !rollback {
            self.report_rollout(Some(format!(
                "{message} (syncPolicy.rollout.rollback is false: the step's workspaces stay at it; a newer revision starts over)"
            )));
            self.save_rollout(writer).await;
            return;
        }
        if let Some(run) = self.rollout.as_mut() {
            run.rolling_back = step_workspaces;
            run.rollback_error = Some("the rollback has not been applied yet".into());
        }
        // Recorded before it is tried: a daemon that stops now leaves the
        // rollback for the next one to apply. From here the rollback
        // finishes before a hand-over stops it (`step_rollback`).
        let _finishing = Finishing::start(&self.hand_over_waits);
        self.save_rollout(writer).await;
        self.step_rollback(message, writer).await;
        shared.metrics.set_status(env, "Failed");
    }

    /// A failed step's rollback that was not applied (the lock held, an
    /// apply refused), tried again.
    async fn retry_step_rollback(&mut self, writer: &Writer) {
        let Some(run) = self.rollout.as_ref() else {
            return;
        };
        let message = format!(
            "the rollout of revision {} failed at step {}/{}; later steps never see it.",
            run.revision,
            run.applied,
            run.plan.steps.len()
        );
        self.step_rollback(message, writer).await;
    }

    /// Rolls the failed step's workspaces (`rolling_back`) back; status,
    /// the inventory's record and an Event say whether it is applied.
    async fn step_rollback(&mut self, message: String, writer: &Writer) {
        let env = self.env.clone();
        let workspaces = match self.rollout.as_ref() {
            Some(run) if !run.rolling_back.is_empty() => run.rolling_back.clone(),
            _ => return,
        };
        // A rollback finishes before a hand-over (`--shard`) stops it, as a
        // health rollback does: the replica taking over would find the
        // step half set back. Until this returns, its record included.
        let _finishing = Finishing::start(&self.hand_over_waits);
        let outcome = self.roll_back_step(&workspaces, writer).await;
        let Some(run) = self.rollout.as_mut() else {
            return;
        };
        let error = match outcome {
            Ok(previous) => {
                run.phase = RolloutPhase::RolledBack;
                run.progressing.clear();
                run.rolling_back.clear();
                run.rollback_error = None;
                let text = format!(
                    "{message} Rolled back {} to revision {previous}.",
                    crate::sync::name_some(&workspaces)
                );
                if let Some(c) = self.cluster.as_ref() {
                    c.record_event(&env, "RolloutRolledBack", &text).await;
                }
                text
            }
            Err(e) => {
                let why = format!("rolling the step back failed: {e}");
                tracing::warn!(environment = %env, error = %e, "the rollback of the failed step is not applied; the next reconcile tries again");
                run.rollback_error = Some(why.clone());
                format!(
                    "{message} Rolling the step back failed (tried again at each reconcile): {e}"
                )
            }
        };
        self.shared.metrics.set_status(&env, "Failed");
        self.report_rollout(Some(error));
        // Recorded before the hand-over goes on: the replica taking the
        // environment over reads whether the rollback was applied.
        self.save_rollout(writer).await;
    }

    /// Writes the rollout onto the inventory when it changed since last
    /// written: only while `writer`'s fence holds, only the record, and
    /// only over the record this daemon last saw (compare-and-set). A
    /// write that fails is tried again at the next change or reconcile; a
    /// record another writer changed meanwhile wins, and is taken up at the
    /// next reconcile instead of what this daemon kept.
    async fn save_rollout(&mut self, writer: &Writer) {
        if !self
            .shared
            .writes(&self.env, self.hand_over_waits.load(Ordering::SeqCst))
        {
            return;
        }
        let (Some(c), Some(run)) = (self.cluster.as_ref(), self.rollout.as_mut()) else {
            return;
        };
        let record = run.record();
        if run.saved.as_ref() == Some(&record) {
            return;
        }
        match c
            .record_rollout(&self.env, &writer.fence, run.saved.as_ref(), Some(&record))
            .await
        {
            Ok(RolloutWrite::Written | RolloutWrite::Unchanged) => run.saved = Some(record),
            Ok(RolloutWrite::NotHeld) => {
                tracing::info!(environment = %self.env, "no longer the writer: the rollout is not recorded");
            }
            Ok(RolloutWrite::Stale) => {
                tracing::warn!(environment = %self.env, revision = %run.revision, "another writer changed the inventory's rollout record since this daemon last saw it; its record is taken up at the next reconcile");
                self.rollout = None;
            }
            Err(e) => {
                tracing::warn!(environment = %self.env, error = %e, "cannot record the rollout in the inventory; tried again at the next reconcile")
            }
        }
    }

    /// Syncs the revision the inventory records (the one before the
    /// rollout) to `workspaces`; returns that revision.
    async fn roll_back_step(
        &mut self,
        workspaces: &[String],
        writer: &Writer,
    ) -> Result<String, ReconcileError> {
        let (env, shared) = (self.env.clone(), self.shared.clone());
        let (env, shared) = (env.as_str(), &*shared);
        let Some(c) = self.cluster.as_ref() else {
            return Err(ReconcileError::NoRevision);
        };
        if self.held.applied.is_none() {
            self.held.applied = last_applied_from_inventory(&shared.options, env, c).await;
        }
        let Some(previous) = self.held.applied.clone() else {
            return Err(ReconcileError::Apply(
                "the revision applied before the rollout cannot be read again (a folder has no history, or it is gone): set the workspaces back by hand with `tenantsync sync --rev REV --workspace NAME`".into(),
            ));
        };
        let Some(run) = self.rollout.as_ref() else {
            return Err(ReconcileError::NoRevision);
        };
        let scope = Scope {
            only: Some(
                workspaces
                    .iter()
                    .filter_map(|w| run.namespaces.get(w).cloned())
                    .collect(),
            ),
            held: previous.sync.scope.held.clone(),
        };
        let inv = c.read_inventory(env).await?;
        let plan_options = PlanOptions {
            diffs: false,
            deletes: Deletes::Recorded,
            settle: Some(false),
            health: false,
        };
        let live = pipeline::plan_live(c, &previous.state, inv, plan_options).await?;
        let (live, objects) = narrowed(live, &previous.state.objects, &scope);
        let mut options = previous.sync.clone();
        options.scope = scope;
        options.fence = writer.fence.clone();
        // Taking back what the failed revision set.
        options.force_conflicts = true;
        let report = cluster_sync::sync(
            c,
            &live.plan,
            &objects,
            live.inventory,
            &live.undeclared,
            &options,
            None,
            &previous.state.workspace_revisions,
            |_| {},
        )
        .await
        .map_err(|e| match e {
            cluster_sync::SyncError::MassPrune(m) => ReconcileError::Blocked {
                revision: previous.revision().to_string(),
                message: m.message,
            },
            cluster_sync::SyncError::Cluster(e) => e.into(),
        })?;
        shared.metrics.record_sync(env, &report);
        self.changed += changed_objects(&report);
        if !report.succeeded() {
            return Err(ReconcileError::Apply(crate::print::sync_errors(&report)));
        }
        Ok(previous.revision().to_string())
    }

    /// The rollout's status where the daemon's status goes: `/status`, the
    /// status page, the inventory's status (by `publish_status`), the
    /// metric. `error`: why it stopped, when it did.
    fn report_rollout(&mut self, error: Option<String>) {
        let (env, shared) = (self.env.as_str(), &*self.shared);
        let Some(run) = self.rollout.as_ref() else {
            return;
        };
        let status = run.status();
        let stopped = matches!(run.phase, RolloutPhase::Failed | RolloutPhase::RolledBack);
        shared
            .metrics
            .set_rollout(env, Some((run.applied, run.phase.as_str())));
        let sync_status = if stopped {
            SyncStatus::Failed
        } else {
            SyncStatus::OutOfSync
        };
        shared.metrics.set_status(env, &format!("{sync_status:?}"));
        shared.update(env, |s| {
            s.rollout = Some(status);
            s.sync_status = sync_status;
            s.target_revision = None;
            s.last_reconcile_at = Some(now());
            s.compared = true;
            if let Some(e) = &error {
                s.last_error = Some(e.clone());
                s.last_error_reason = Some("RolloutFailed".into());
                s.last_error_at = Some(now());
            } else if !stopped {
                s.last_error = None;
                s.last_error_reason = None;
                s.last_error_at = None;
            }
        });
    }
}

/// While it lives, a hand-over (`--shard`) waits for this replica's writes
/// (the fence's hand-over hold and [`Shared::writes`]); dropped on every
/// way out, so no early return leaves hand-overs waiting.
struct Finishing(Arc<std::sync::atomic::AtomicBool>);

impl Finishing {
    fn start(waits: &Arc<std::sync::atomic::AtomicBool>) -> Finishing {
        waits.store(true, Ordering::SeqCst);
        Finishing(waits.clone())
    }
}

impl Drop for Finishing {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// What a whole sync checks before its first write, a rollout checks
/// before its first step, new or resumed: the operator's guardrails only
/// the cluster can judge, and an approval of a plan (`approve --plan`)
/// against the whole revision's plan now.
async fn before_first_step(
    c: &crate::cluster::Cluster,
    shared: &super::Shared,
    state: &Desired,
    plan: &crate::plan::Plan,
    approved_plan: Option<&str>,
) -> Result<(), ReconcileError> {
    if let Err(diagnostics) =
        pipeline::check_scopes(c, &shared.options.operator, &state.state).await?
    {
        return Err(ReconcileError::Guardrail(format!(
            "revision {} breaks the operator's guardrails; nothing is applied until a revision that keeps them arrives:\n{}",
            state.revision(),
            diagnostics
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        )));
    }
    if let Some(approved) = approved_plan {
        let now = crate::plan::contract::PlanFile::change_set_of(plan, &state.state.objects);
        if now != approved {
            return Err(ReconcileError::PlanNotApproved(format!(
                "revision {} is approved with a plan whose change set is {approved}, but its plan now is {now}: the cluster or the rendering changed since the plan was approved, so no step of its rollout is applied; make a new plan and approve it again with --plan",
                state.revision()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rollback_lets_hand_overs_wait_only_until_it_returns_however_it_returns() {
        let waits = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let early = |w: &Arc<std::sync::atomic::AtomicBool>, leave: bool| -> Option<()> {
            let _finishing = Finishing::start(w);
            assert!(w.load(Ordering::SeqCst));
            if leave {
                return None;
            }
            Some(())
        };
        assert_eq!(early(&waits, true), None);
        assert!(!waits.load(Ordering::SeqCst), "an early return reset it");
        assert_eq!(early(&waits, false), Some(()));
        assert!(!waits.load(Ordering::SeqCst));
    }
}
