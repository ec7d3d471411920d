//! Change control of a manual environment (`syncPolicy.mode: manual`): the
//! record of its pending revision and of the approval of one revision, as
//! stored in the data of ConfigMap `tenantsync-system/approval-<env>`.
//!
//! The daemon writes the `pending*` keys; `tenantsync approve` writes the
//! `approved*` keys. Write permission on that one ConfigMap is the approval
//! right (README, "Change control"). Pure: the cluster edge reads and writes
//! the ConfigMap.

use std::collections::BTreeMap;

/// The ConfigMap holding an environment's approval, in `tenantsync-system`.
pub fn name_of(environment: &str) -> String {
    format!("approval-{environment}")
}

pub const PENDING_REVISION: &str = "pendingRevision";
pub const PENDING_SINCE: &str = "pendingSince";
pub const PENDING_PLAN: &str = "pendingPlan";
pub const APPROVED_REVISION: &str = "approvedRevision";
/// The user the API server authenticated `approve` as.
pub const APPROVED_USER: &str = "approvedUser";
/// The name given with `approve --by` (the user's own, without it).
pub const APPROVED_BY: &str = "approvedBy";
pub const APPROVED_AT: &str = "approvedAt";
/// `approve --plan`: the change set of the plan approved
/// ([`crate::plan::contract::PlanFile::change_set_digest`]); the daemon
/// applies the revision only while its plan has that change set.
pub const APPROVED_PLAN: &str = "approvedPlan";

/// The shortest abbreviation of a revision `approve` accepts.
pub const MIN_ABBREVIATION: usize = 7;

/// One approval: a revision, who approved it and when.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Approval {
    pub revision: String,
    /// As the API server authenticated the request.
    pub user: String,
    /// As given with `--by`, else the user.
    pub by: String,
    pub at: String,
    /// The change set of the plan approved with it (`approve --plan`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
}

/// What the approval ConfigMap says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Record {
    /// The revision the daemon holds, waiting for an approval.
    pub pending: Option<String>,
    pub pending_since: Option<String>,
    /// The pending revision's plan in one line (`2 to create, ...`).
    pub pending_plan: Option<String>,
    pub approval: Option<Approval>,
}

impl Record {
    pub fn from_data(data: &BTreeMap<String, String>) -> Record {
        let get = |k: &str| data.get(k).filter(|v| !v.is_empty()).cloned();
        Record {
            pending: get(PENDING_REVISION),
            pending_since: get(PENDING_SINCE),
            pending_plan: get(PENDING_PLAN),
            approval: get(APPROVED_REVISION).map(|revision| Approval {
                revision,
                user: get(APPROVED_USER).unwrap_or_default(),
                by: get(APPROVED_BY).unwrap_or_default(),
                at: get(APPROVED_AT).unwrap_or_default(),
                plan: get(APPROVED_PLAN),
            }),
        }
    }

    /// The approval of exactly `revision`, if there is one.
    pub fn approval_of(&self, revision: &str) -> Option<&Approval> {
        self.approval.as_ref().filter(|a| a.revision == revision)
    }
}

/// Why `approve` refuses.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "environment {environment} has no pending revision: nothing to approve (the daemon publishes a new revision of a manual environment as pending; `tenantsync status --env {environment}` shows it)"
    )]
    NothingPending { environment: String },
    #[error(
        "`{given}` is not a revision: give the commit SHA the daemon holds as pending (at least {MIN_ABBREVIATION} hexadecimal characters)"
    )]
    NotARevision { given: String },
    #[error(
        "--by is {length} characters long; give at most {max} (a name, and a ticket if you like)"
    )]
    NameTooLong { length: usize, max: usize },
    #[error(
        "the plan file is {what}; approve a plan of environment {environment}'s pending revision {pending}, made with `tenantsync plan --env {environment} --rev {pending} --out FILE` (no --workspace, no --adopt: the daemon applies the whole environment and never adopts)"
    )]
    PlanNotOfPending {
        environment: String,
        pending: String,
        what: String,
    },
    #[error(
        "revision {given} is not the pending revision of environment {environment}: the daemon holds {pending}{since}; review its plan and approve that one (an approval names the exact revision it is for)"
    )]
    Stale {
        environment: String,
        given: String,
        pending: String,
        since: String,
    },
}

/// The full pending revision `given` (a SHA or an abbreviation of one of
/// at least [`MIN_ABBREVIATION`] characters) approves, or why it does not.
pub fn match_pending(environment: &str, given: &str, record: &Record) -> Result<String, Refusal> {
    let given = given.trim();
    let Some(pending) = &record.pending else {
        return Err(Refusal::NothingPending {
            environment: environment.to_string(),
        });
    };
    if given == pending {
        return Ok(pending.clone());
    }
    let hex = given.len() >= MIN_ABBREVIATION && given.bytes().all(|b| b.is_ascii_hexdigit());
    if !hex {
        return Err(Refusal::NotARevision {
            given: given.to_string(),
        });
    }
    if pending.len() == 40 && pending.starts_with(&given.to_ascii_lowercase()) {
        return Ok(pending.clone());
    }
    Err(Refusal::Stale {
        environment: environment.to_string(),
        given: given.to_string(),
        pending: pending.clone(),
        since: record
            .pending_since
            .as_ref()
            .map(|t| format!(" (pending since {t})"))
            .unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

    fn pending(rev: &str) -> Record {
        Record::from_data(&BTreeMap::from([
            (PENDING_REVISION.to_string(), rev.to_string()),
            (
                PENDING_SINCE.to_string(),
                "2026-12-03T05:00:00Z".to_string(),
            ),
        ]))
    }

    #[test]
    fn approve_takes_the_pending_sha_or_an_abbreviation_and_refuses_a_stale_one() {
        assert_eq!(match_pending("prod", SHA, &pending(SHA)), Ok(SHA.into()));
        assert_eq!(
            match_pending("prod", "0123456", &pending(SHA)),
            Ok(SHA.into())
        );
        assert_eq!(
            match_pending("prod", "0123456789ABCDEF", &pending(SHA)),
            Ok(SHA.into())
        );
        let stale = match_pending("prod", "fedcba9876", &pending(SHA)).unwrap_err();
        let message = stale.to_string();
        assert!(
            message.contains("not the pending revision of environment prod")
                && message.contains(SHA)
                && message.contains("pending since 2026-12-03T05:00:00Z"),
            "{message}"
        );
        assert!(matches!(
            match_pending("prod", "0123", &pending(SHA)),
            Err(Refusal::NotARevision { .. })
        ));
        assert!(matches!(
            match_pending("prod", SHA, &Record::default()),
            Err(Refusal::NothingPending { .. })
        ));
    }

    #[test]
    fn an_approval_counts_only_for_its_own_revision() {
        let data = BTreeMap::from([
            (APPROVED_REVISION.to_string(), SHA.to_string()),
            (APPROVED_USER.to_string(), "alice".to_string()),
            (APPROVED_BY.to_string(), "Alice (CAB-42)".to_string()),
        ]);
        let record = Record::from_data(&data);
        assert_eq!(
            record.approval_of(SHA).map(|a| a.by.as_str()),
            Some("Alice (CAB-42)")
        );
        assert!(record.approval_of("0123456").is_none());
        assert!(record.approval_of(&SHA.replace('0', "f")).is_none());
    }
}
