//! What the daemon writes down in the inventory so that another daemon (a
//! restart, or the next leader or shard holder) resumes where it stopped
//! (pure: encoding and arithmetic, no clock read here):
//!
//! - per workspace, since when the health of its applied revision is being
//!   judged ([`Judging`], in the workspace's record): a resumed health
//!   watch gets only what is left of the health deadline;
//! - the rollout under way ([`RolloutRecord`], the inventory head's
//!   `rollout` key): its revision, its steps as planned, how many were
//!   applied and when, when the last became Healthy, and a rollback still
//!   to apply; a resumed rollout goes on at its recorded step.
//!
//! Both are written with the inventory's optimistic concurrency (the
//! `resourceVersion` it was read at). An inventory written before they
//! existed has neither: every workspace not known Healthy at its applied
//! revision is judged from the inventory's `lastAppliedAt`, and no rollout
//! is under way.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

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

impl RolloutRecord {
    /// The head's `rollout` value: JSON, or empty for none (the key is
    /// written every time, so a server-side apply never leaves a stale one).
    pub fn encode(record: Option<&RolloutRecord>) -> String {
        record
            .and_then(|r| serde_json::to_string(r).ok())
            .unwrap_or_default()
    }

    /// Reads the head's `rollout` value (missing or empty: none).
    pub fn decode(value: Option<&str>) -> Result<Option<RolloutRecord>, String> {
        match value.map(str::trim) {
            None | Some("") => Ok(None),
            Some(json) => serde_json::from_str(json).map(Some).map_err(|e| {
                format!(
                    "its `rollout` key is not a rollout record ({e}); remove the key (`kubectl edit`) and the daemon starts the revision's rollout over from its first step"
                )
            }),
        }
    }
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

    #[test]
    fn a_rollout_record_round_trips_and_none_is_an_empty_key() {
        let r = record();
        let text = RolloutRecord::encode(Some(&r));
        assert_eq!(RolloutRecord::decode(Some(&text)), Ok(Some(r)));
        assert_eq!(RolloutRecord::encode(None), "");
        assert_eq!(RolloutRecord::decode(Some("")), Ok(None));
        // An inventory written before the record existed has no key.
        assert_eq!(RolloutRecord::decode(None), Ok(None));
    }

    #[test]
    fn a_damaged_rollout_record_says_which_key_and_what_to_do() {
        let e = RolloutRecord::decode(Some("{\"revision\": 3")).unwrap_err();
        assert!(
            e.contains("`rollout` key") && e.contains("remove the key"),
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
