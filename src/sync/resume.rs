//! What the daemon writes down in the inventory so that another daemon (a
//! restart, or the next leader or shard holder) resumes where it stopped
//! (pure: encoding and arithmetic, no clock read here):
//!
//! - per workspace, since when the health of its applied revision is being
//!   judged ([`Judging`], in the workspace's record): a resumed health
//!   watch gets only what is left of the health deadline;
//! - the rollout under way ([`RolloutRecord`], the inventory head's
//!   `rollout.json.gz`, failed messages cut to
//!   [`MAX_FAILED_MESSAGE_CHARS`]): its revision, its steps as planned, how many were
//!   applied and when, when the last became Healthy, and a rollback still
//!   to apply; a resumed rollout goes on at its recorded step.
//!
//! Both are record-only changes of the inventory as stored (the edge
//! re-reads on a conflict and makes the change again, never writing other
//! fields back); the rollout record is set only over the one the writer
//! last saw ([`set_rollout`]). An inventory written before they
//! existed has neither: every workspace not known Healthy at its applied
//! revision is judged from the inventory's `lastAppliedAt`, and no rollout
//! is under way.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::plan::{Action, Plan};
use crate::sync::inventory::Inventory;
use crate::sync::rollout::{RolloutPhase, RolloutStep};

/// The judgement of a workspace's health at `revision`, under way since
/// `since` (RFC 3339).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Judging {
    pub revision: String,
    pub since: String,
}

/// A rollout as far as it went, in the inventory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutRecord {
    pub revision: String,
    /// The steps as planned when the rollout began (a plan made again
    /// later sees the reached workspaces as unchanged and would start
    /// over with the rest).
    pub steps: Vec<RolloutStep>,
    /// New and removed workspaces applied with the first step.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_held_back: Vec<String>,
    /// Steps applied (1-based count).
    pub applied: usize,
    /// When the last step applied was applied (RFC 3339).
    pub applied_at: String,
    /// When its workspaces were first seen all Healthy (RFC 3339): the
    /// pause runs from then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_at: Option<String>,
    pub phase: RolloutPhase,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub failed: BTreeMap<String, String>,
    /// Workspaces of a failed step whose rollback is not applied yet.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rolling_back: Vec<String>,
}

/// The most characters of one failed workspace's message a record keeps
/// (a Degraded condition's text can be of any length; status and Events
/// carry it whole).
pub const MAX_FAILED_MESSAGE_CHARS: usize = 300;

impl RolloutRecord {
    /// Whether a daemon can take this record up: it has steps, and no more
    /// of them applied than it has (a record this version never writes
    /// otherwise: damaged, or another version's).
    pub fn resumable(&self) -> bool {
        !self.steps.is_empty() && self.applied <= self.steps.len()
    }

    /// This record with each failed message cut to
    /// [`MAX_FAILED_MESSAGE_CHARS`] (what the inventory stores, so what is
    /// compared when the record is set again).
    pub fn capped(mut self) -> RolloutRecord {
        for message in self.failed.values_mut() {
            if message.chars().count() > MAX_FAILED_MESSAGE_CHARS {
                let mut cut: String = message.chars().take(MAX_FAILED_MESSAGE_CHARS - 1).collect();
                cut.push('…');
                *message = cut;
            }
        }
        self
    }

    /// The record as JSON (compressed by the inventory into its head's
    /// `rollout.json.gz`); empty for none.
    pub fn encode(record: Option<&RolloutRecord>) -> Vec<u8> {
        record
            .and_then(|r| serde_json::to_vec(&r.clone().capped()).ok())
            .unwrap_or_default()
    }

    /// Reads the record's JSON (missing or empty: none).
    pub fn decode(value: Option<&[u8]>) -> Result<Option<RolloutRecord>, String> {
        match value {
            None => Ok(None),
            Some(json) if json.trim_ascii().is_empty() => Ok(None),
            Some(json) => serde_json::from_slice(json)
                .map(Some)
                .map_err(|e| RolloutRecord::unreadable(&e.to_string())),
        }
    }

    /// What an unreadable record means, with why it is not read.
    pub fn unreadable(why: &str) -> String {
        format!(
            "its rollout record (`rollout.json.gz`) is not one this tenantsync reads ({why}): the daemon does not resume it and starts the revision's rollout over from its first step; the next write replaces it"
        )
    }
}

/// What setting the rollout record found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordSet {
    /// Set.
    Changed,
    /// Already so: nothing to write.
    Same,
    /// The stored record is not the one the writer last saw (another
    /// writer set or cleared it): left as it is.
    Stale,
}

/// Sets the inventory's rollout record to `new`, only if it is still
/// `expected` (what this writer last saw): compare-and-set, so a writer
/// that lost its hold never puts back an older record. Nothing else of the
/// inventory is touched.
pub fn set_rollout(
    inventory: &mut Inventory,
    expected: Option<&RolloutRecord>,
    new: Option<&RolloutRecord>,
) -> RecordSet {
    let new = new.map(|r| r.clone().capped());
    if inventory.rollout == new {
        return RecordSet::Same;
    }
    if inventory.rollout.as_ref() != expected.map(|r| r.clone().capped()).as_ref() {
        return RecordSet::Stale;
    }
    inventory.rollout = new;
    RecordSet::Changed
}

/// The workspaces a recorded rollout reached (its applied steps) whose
/// objects no longer match its revision in `plan` (the revision's plan
/// against the cluster now): someone else applied another revision to them
/// while no daemon ran. Non-empty: the record is not resumed and the
/// rollout starts again from step one. Only a step under way (Progressing,
/// Pausing) is checked: a failed step's workspaces were set back on purpose.
pub fn reached_elsewhere(record: &RolloutRecord, plan: &Plan) -> Vec<String> {
    if !matches!(
        record.phase,
        RolloutPhase::Progressing | RolloutPhase::Pausing
    ) {
        return Vec::new();
    }
    let changed: BTreeSet<&str> = plan
        .changes
        .iter()
        .filter(|c| c.action != Action::Unchanged)
        .map(|c| &*c.workspace)
        .collect();
    record.steps[..record.applied.min(record.steps.len())]
        .iter()
        .flat_map(|s| s.workspaces.iter())
        .filter(|ws| changed.contains(ws.as_str()))
        .cloned()
        .collect()
}

/// How long since `since` (RFC 3339) at `now`; `None` when it is not a
/// time. A time in the future (another machine's clock) counts as now.
pub fn elapsed(since: &str, now: Timestamp) -> Option<Duration> {
    let since: Timestamp = since.parse().ok()?;
    let span = now.duration_since(since);
    Some(Duration::try_from(span).unwrap_or(Duration::ZERO))
}

/// What is left of `deadline` for a judgement begun at `since`; all of it
/// when the start is unknown or unreadable (a workspace is never judged
/// before its full deadline on a guess).
pub fn remaining(deadline: Duration, since: Option<&str>, now: Timestamp) -> Duration {
    since
        .and_then(|s| elapsed(s, now))
        .map_or(deadline, |e| deadline.saturating_sub(e))
}

/// The workspaces of `declared` applied at a revision they are not known
/// Healthy at (not judged yet, or judged failed and left), each with since
/// when: its [`Judging`] of that revision, else the inventory's
/// `lastAppliedAt`, else unknown.
pub fn unjudged<'a>(
    inventory: &Inventory,
    declared: impl IntoIterator<Item = &'a str>,
) -> BTreeMap<String, Option<String>> {
    declared
        .into_iter()
        .filter(|ws| inventory.applied_revision(ws) != inventory.healthy_revision(ws))
        .map(|ws| {
            let applied = inventory.applied_revision(ws);
            let since = inventory
                .workspaces
                .get(ws)
                .and_then(|w| w.judging.as_ref())
                .filter(|j| Some(j.revision.as_str()) == applied)
                .map(|j| j.since.clone())
                .or_else(|| inventory.last_applied_at.clone());
            (ws.to_string(), since)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::inventory::WorkspaceRevisions;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn a_resumed_judgement_gets_only_what_is_left_of_its_deadline() {
        let deadline = Duration::from_secs(600);
        let now = at("2026-12-03T10:10:00Z");
        assert_eq!(
            remaining(deadline, Some("2026-12-03T10:05:00Z"), now),
            Duration::from_secs(300)
        );
        // Past it: judged at once.
        assert_eq!(
            remaining(deadline, Some("2026-12-03T09:00:00Z"), now),
            Duration::ZERO
        );
        // Unknown, unreadable or ahead of this clock: the whole deadline
        // at most, never less on a guess.
        assert_eq!(remaining(deadline, None, now), deadline);
        assert_eq!(remaining(deadline, Some("yesterday"), now), deadline);
        assert_eq!(
            remaining(deadline, Some("2026-12-03T10:20:00Z"), now),
            deadline
        );
    }

    fn record() -> RolloutRecord {
        RolloutRecord {
            revision: "r2".into(),
            steps: vec![
                RolloutStep {
                    percent: 20,
                    workspaces: vec!["a".into(), "b".into()],
                },
                RolloutStep {
                    percent: 100,
                    workspaces: vec!["c".into()],
                },
            ],
            not_held_back: vec!["new".into()],
            applied: 1,
            applied_at: "2026-12-03T10:00:00Z".into(),
            healthy_at: Some("2026-12-03T10:01:00Z".into()),
            phase: RolloutPhase::Pausing,
            failed: BTreeMap::new(),
            rolling_back: Vec::new(),
        }
    }

    /// Hostile review: a record that parsed but had no steps made a resumed
    /// daemon index step one of nothing (a panic).
    #[test]
    fn a_record_of_no_steps_or_of_more_applied_than_it_has_is_not_resumed() {
        let r = record();
        assert!(r.resumable());
        let mut empty = record();
        empty.steps.clear();
        empty.applied = 0;
        assert!(!empty.resumable());
        let mut beyond = record();
        beyond.applied = beyond.steps.len() + 1;
        assert!(!beyond.resumable());
    }

    #[test]
    fn a_rollout_record_round_trips_and_none_is_an_empty_key() {
        let r = record();
        let text = RolloutRecord::encode(Some(&r));
        assert_eq!(RolloutRecord::decode(Some(&text)), Ok(Some(r)));
        assert!(RolloutRecord::encode(None).is_empty());
        assert_eq!(RolloutRecord::decode(Some(b"")), Ok(None));
        // An inventory written before the record existed has no key.
        assert_eq!(RolloutRecord::decode(None), Ok(None));
    }

    /// Hostile review of the persisted rollout: a replica that lost its
    /// hold wrote its whole copy back and could put an older record over
    /// the one the new writer had set. Setting the record is now a
    /// compare-and-set against what this writer last saw, and touches
    /// nothing else of the inventory.
    #[test]
    fn a_rollout_record_is_set_only_over_the_one_this_writer_last_saw() {
        let mut inv = Inventory::new("prod");
        inv.revision = Some("r1".into());
        let seen = record();
        let mut newer = record();
        newer.applied = 2;
        newer.phase = RolloutPhase::Progressing;
        // Another writer moved it on to step 2: ours (still step 1) is
        // stale, and neither the record nor the revision changes.
        inv.rollout = Some(newer.clone());
        let before = inv.clone();
        let mut ours = record();
        ours.phase = RolloutPhase::Failed;
        assert_eq!(
            set_rollout(&mut inv, Some(&seen), Some(&ours)),
            RecordSet::Stale
        );
        assert_eq!(inv, before);
        assert_eq!(set_rollout(&mut inv, Some(&seen), None), RecordSet::Stale);
        assert_eq!(inv, before);
        // Over the one it saw: set; again: nothing to write.
        assert_eq!(
            set_rollout(&mut inv, Some(&newer), Some(&ours)),
            RecordSet::Changed
        );
        assert_eq!(inv.rollout, Some(ours.clone()));
        assert_eq!(inv.revision.as_deref(), Some("r1"));
        assert_eq!(
            set_rollout(&mut inv, Some(&newer), Some(&ours)),
            RecordSet::Same
        );
        // A record with a long failed message compares as stored (cut).
        let mut long = ours.clone();
        long.failed.insert("a".into(), "y".repeat(5_000));
        assert_eq!(
            set_rollout(&mut inv, Some(&ours), Some(&long)),
            RecordSet::Changed
        );
        assert_eq!(
            inv.rollout.as_ref().unwrap().failed["a"].chars().count(),
            MAX_FAILED_MESSAGE_CHARS
        );
        assert_eq!(set_rollout(&mut inv, Some(&long), None), RecordSet::Changed);
        assert_eq!(inv.rollout, None);
    }

    /// Hostile review of the persisted rollout: a record resumed after
    /// someone else set the reached workspaces to another revision went on
    /// at its step and applied steps 1..k+1 in one sync without a gate.
    #[test]
    fn a_record_whose_reached_workspaces_were_changed_since_is_not_resumed() {
        use crate::plan::{Change, PLAN_FORMAT_VERSION, Summary};
        let change = |ws: &str, action: Action| Change {
            action,
            api_version: "apps/v1".into(),
            kind: "Deployment".into(),
            namespace: Some(format!("{ws}-prod").into()),
            name: "web".into(),
            workspace: ws.into(),
            fields: Vec::new(),
            diff: String::new(),
            note: None,
            heal: None,
            live: None,
        };
        let plan = |changes: Vec<Change>| Plan {
            format_version: PLAN_FORMAT_VERSION,
            environment: "prod".into(),
            revision: None,
            summary: Summary::of(&changes),
            changes,
            api_requests: 0,
        };
        let mut r = record();
        r.phase = RolloutPhase::Progressing;
        // Step 1 (a, b) still at r2, c not reached yet: resumed.
        let as_left = plan(vec![
            change("a", Action::Unchanged),
            change("b", Action::Unchanged),
            change("c", Action::Update),
        ]);
        assert!(reached_elsewhere(&r, &as_left).is_empty());
        // b set back by someone else: not resumed.
        let changed = plan(vec![
            change("a", Action::Unchanged),
            change("b", Action::Update),
            change("c", Action::Update),
        ]);
        assert_eq!(reached_elsewhere(&r, &changed), vec!["b".to_string()]);
        r.phase = RolloutPhase::Pausing;
        assert_eq!(reached_elsewhere(&r, &changed), vec!["b".to_string()]);
        // A failed step's workspaces were set back on purpose.
        r.phase = RolloutPhase::RolledBack;
        assert!(reached_elsewhere(&r, &changed).is_empty());
    }

    #[test]
    fn a_damaged_rollout_record_says_which_key_and_what_to_do() {
        let e = RolloutRecord::decode(Some(b"{\"revision\": 3")).unwrap_err();
        assert!(
            e.contains("rollout.json.gz") && e.contains("starts the revision's rollout over"),
            "{e}"
        );
    }

    #[test]
    fn unjudged_workspaces_are_those_not_healthy_at_their_applied_revision_with_since_when() {
        let mut inv = Inventory::new("dev");
        inv.revision = Some("r2".into());
        inv.last_applied_at = Some("2026-12-03T10:00:00Z".into());
        inv.workspaces.insert(
            "judged".into(),
            WorkspaceRevisions {
                applied: "r2".into(),
                healthy: Some("r2".into()),
                judging: None,
            },
        );
        inv.workspaces.insert(
            "watched".into(),
            WorkspaceRevisions {
                applied: "r2".into(),
                healthy: Some("r1".into()),
                judging: Some(Judging {
                    revision: "r2".into(),
                    since: "2026-12-03T10:00:05Z".into(),
                }),
            },
        );
        // A judgement of an older revision says nothing of this one.
        inv.workspaces.insert(
            "stale".into(),
            WorkspaceRevisions {
                applied: "r2".into(),
                healthy: None,
                judging: Some(Judging {
                    revision: "r1".into(),
                    since: "2026-12-01T00:00:00Z".into(),
                }),
            },
        );
        let got = unjudged(&inv, ["judged", "watched", "stale", "unrecorded"]);
        assert_eq!(
            got,
            BTreeMap::from([
                ("stale".into(), Some("2026-12-03T10:00:00Z".into())),
                ("unrecorded".into(), Some("2026-12-03T10:00:00Z".into())),
                ("watched".into(), Some("2026-12-03T10:00:05Z".into())),
            ])
        );
    }
}
