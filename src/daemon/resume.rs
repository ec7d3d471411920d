//! Health judgements another daemon left unfinished (a restart, a leader or
//! shard handover mid-watch), taken up: the inventory records, per
//! workspace, since when its applied revision's health is judged
//! (`sync::resume::Judging`, written when a watch starts); the writer that
//! takes an environment over watches every workspace applied at the
//! inventory's revision and not known Healthy at it, for what is left of
//! `syncPolicy.healthDeadline`, and judges it as the first would have
//! (recorded Healthy, or rolled back with `syncPolicy.rollback`).
//!
//! The rollout's own record is `daemon/rollout.rs`'s.

use super::*;
use crate::sync::resume as recorded;

/// The least a resumed watch runs, so that a judgement whose deadline
/// passed while no daemon watched (a daemon down longer than the deadline,
/// the first start after an upgrade) still reads every object, even of a
/// large environment (a poll cut by the deadline reads nothing: each object
/// would read as not read in time, and its workspace as failed), and sees a
/// Degraded one confirmed (`cluster::wait::DEGRADED_POLLS`).
const RESUMED_AT_LEAST: Duration = Duration::from_secs(60);

impl Reconciler {
    /// Once per term as the writer: the unfinished judgements of the
    /// revision the inventory records, watched again with the deadline
    /// left. A read of the inventory that fails is tried again at the next
    /// reconcile.
    pub(super) async fn resume_health(&mut self, state: &Arc<Desired>, writer: &Writer) {
        if !writer.may_write {
            // Not this replica's to judge now; again when it is. What it
            // kept of its term as the writer (a health watch, a rollout) is
            // dropped: the next writer may roll back or move on meanwhile,
            // and the inventory's record is taken up again when this
            // replica is the writer again.
            self.resumed = false;
            self.health_watch = None;
            if self.rollout.take().is_some() {
                self.shared.update(&self.env, |s| s.rollout = None);
                self.shared.metrics.set_rollout(&self.env, None);
            }
            return;
        }
        if self.resumed {
            return;
        }
        if self.health_watch.is_some() {
            self.resumed = true;
            return;
        }
        let Some(c) = self.cluster.as_ref() else {
            return;
        };
        let inventory = match c.read_inventory(&self.env).await {
            Ok(Some(inventory)) => inventory,
            Ok(None) => {
                self.resumed = true;
                return;
            }
            Err(e) => {
                tracing::warn!(environment = %self.env, error = %e, "cannot read the inventory to resume its health judgements; tried again at the next reconcile");
                return;
            }
        };
        self.resumed = true;
        // A newer revision than the inventory's is applied by this
        // reconcile, which watches these workspaces with it.
        if inventory.revision.as_deref() != Some(state.revision()) {
            return;
        }
        let declared: BTreeSet<&str> = state
            .state
            .objects
            .iter()
            .map(|o| &*o.workspace)
            .filter(|ws| !ws.is_empty())
            .collect();
        let unjudged = recorded::unjudged(&inventory, declared);
        if unjudged.is_empty() {
            return;
        }
        let deadline = state.state.sync_policy.health_deadline();
        let now = jiff::Timestamp::now();
        // One watch for all: it ends at the latest deadline left (they
        // share one as a rule: the sync that applied them).
        let left = unjudged
            .values()
            .map(|since| recorded::remaining(deadline, since.as_deref(), now))
            .max()
            .unwrap_or(deadline)
            .max(RESUMED_AT_LEAST);
        let workspaces: BTreeSet<String> = unjudged.into_keys().collect();
        tracing::info!(environment = %self.env, revision = %state.revision(), workspaces = %workspaces.iter().cloned().collect::<Vec<_>>().join(", "), left = ?left, "resuming the health judgement of workspaces not known Healthy at their applied revision");
        self.watch_health_within(state, workspaces, left);
    }

    /// Writes down that the health of `workspaces` at `revision` is judged
    /// from now (those applied at it; a judgement under way keeps its
    /// start), so that another daemon resumes it with the deadline left.
    /// Only while `fence` holds, and only this change on the inventory as
    /// stored at the write (`Cluster::update_inventory`).
    pub(super) async fn note_judging(
        &self,
        revision: &str,
        workspaces: &BTreeSet<String>,
        fence: &crate::sync::Fence,
    ) {
        if workspaces.is_empty() || !self.shared.leads(&self.env) {
            return;
        }
        let Some(c) = self.cluster.as_ref() else {
            return;
        };
        let since = jiff::Timestamp::now().to_string();
        let list: Vec<String> = workspaces.iter().cloned().collect();
        match c
            .record_judging(&self.env, fence, &list, revision, &since)
            .await
        {
            Ok(crate::cluster::inventory::Updated::NotHeld) => {
                tracing::info!(environment = %self.env, "no longer the writer: the start of the health judgement is not recorded");
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(environment = %self.env, error = %e, "cannot record since when the health is judged; a restarted daemon would judge from the inventory's lastAppliedAt");
            }
        }
    }
}
