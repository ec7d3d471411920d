//! What a sync did: the one value printers, the inventory's status, logs,
//! Events and metrics are all built from (pure data; the `cluster` edge
//! fills it in).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::sync::health::HealthStatus;

/// A field another manager owns, as a server-side apply conflict reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConflictField {
    pub field: String,
    pub manager: String,
}

/// A namespace's contents tenantsync did not make.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Foreign {
    /// `Kind/namespace/name` of each foreign object.
    pub objects: Vec<String>,
    /// Kinds this credential may not list there (not checked).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unchecked_kinds: Vec<String>,
}

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
    pub foreign: BTreeMap<String, Foreign>,
    /// With `--wait`: health after the sync, per workspace and per object.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthReport>,
    pub api_requests: u32,
    pub write_requests: u32,
    /// Answers `429 Too Many Requests` from the API server during the sync
    /// (refused requests are sent again after the `Retry-After`, for up to
    /// 60 s each).
    #[serde(skip_serializing_if = "is_zero")]
    pub throttled: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
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
    pub workspaces: BTreeMap<String, HealthStatus>,
    pub objects: Vec<ObjectHealth>,
}
