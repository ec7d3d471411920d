//! The change set: what it takes to make the live cluster match the desired
//! objects. A value produced by [`crate::plan::diff`], rendered by printers; the
//! same value will drive `sync`.

use serde::{Deserialize, Serialize};

use crate::object::Name;

/// What happens to one object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Create,
    Update,
    Delete,
    Unchanged,
    /// Exists without being tenantsync's; taken over because the operator
    /// said `--adopt`.
    Adopt,
    /// Exists and is not tenantsync's (or belongs to another environment):
    /// never applied, recorded or pruned. [`Change::note`] says why.
    Unmanaged,
}

/// How one field differs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldAction {
    /// Declared, absent from the live object.
    Add,
    /// Declared with another value than the live one.
    Change,
    /// Set by tenantsync earlier, no longer declared: it will be removed.
    Remove,
}

/// One field-level difference of an update.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FieldChange {
    /// Dotted path; list items by key: `spec.template.spec.containers[name=fhir-server].image`.
    pub path: String,
    pub action: FieldAction,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub live: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub desired: Option<serde_json::Value>,
    /// The field manager, other than tenantsync, that owns the live value
    /// (who changed it behind Git's back), when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manager: Option<String>,
    /// When that manager last wrote the object (its `managedFields` time).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
}

/// One object of the change set.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Change {
    pub action: Action,
    pub api_version: Name,
    pub kind: Name,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<Name>,
    pub name: Name,
    pub workspace: Name,
    /// Field-level differences (updates only).
    pub fields: Vec<FieldChange>,
    /// Unified diff of the object's YAML, live (managed fields) to desired;
    /// empty when unchanged.
    pub diff: String,
    /// Why an object is adopted or left unmanaged (who owns it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// What a sync does besides the apply (taking hand-edited fields over,
    /// leaving ignored ones out), worked out from the listed object.
    #[serde(skip)]
    pub heal: Option<Box<crate::plan::field_policy::Heal>>,
    /// The live object's `uid` and `resourceVersion` as listed, when there
    /// is one: a saved plan's preconditions (`plan --out`).
    #[serde(skip)]
    pub live: Option<LiveVersion>,
}

/// Which version of a live object a change was computed against.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LiveVersion {
    pub uid: String,
    pub resource_version: String,
}

impl LiveVersion {
    /// The `metadata.uid` and `metadata.resourceVersion` of a live object.
    pub fn of(live: &serde_json::Value) -> Option<LiveVersion> {
        let meta = live.get("metadata")?;
        Some(LiveVersion {
            uid: meta.get("uid")?.as_str()?.to_string(),
            resource_version: meta.get("resourceVersion")?.as_str()?.to_string(),
        })
    }
}

impl Change {
    pub fn key(&self) -> crate::object::ObjectKey<'_> {
        (&self.kind, self.namespace.as_deref(), &self.name)
    }

    /// Whether a sync applies this object.
    pub fn is_apply(&self) -> bool {
        matches!(self.action, Action::Create | Action::Update | Action::Adopt)
    }
}

impl Change {
    /// `Kind/namespace/name`, or `Kind/name` for cluster-scoped objects.
    pub fn id(&self) -> String {
        crate::object::id(self.key())
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub create: usize,
    pub update: usize,
    pub delete: usize,
    pub unchanged: usize,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub adopt: usize,
    /// Objects that exist and are not tenantsync's: a sync leaves them
    /// alone and fails.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unmanaged: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl Summary {
    pub fn of<'a>(changes: impl IntoIterator<Item = &'a Change>) -> Summary {
        let mut s = Summary::default();
        for c in changes {
            match c.action {
                Action::Create => s.create += 1,
                Action::Update => s.update += 1,
                Action::Delete => s.delete += 1,
                Action::Unchanged => s.unchanged += 1,
                Action::Adopt => s.adopt += 1,
                Action::Unmanaged => s.unmanaged += 1,
            }
        }
        s
    }

    pub fn has_changes(&self) -> bool {
        self.create + self.update + self.delete + self.adopt + self.unmanaged > 0
    }
}

/// The full plan of one environment.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    /// Schema version of this JSON document.
    pub format_version: u32,
    pub environment: String,
    /// The Git commit the desired state came from, when read from Git.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    pub summary: Summary,
    /// Every object, sorted by workspace, apply order and name.
    pub changes: Vec<Change>,
    /// API requests made to compute the plan.
    pub api_requests: u32,
}

pub const PLAN_FORMAT_VERSION: u32 = 1;
