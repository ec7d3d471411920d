//! A saved plan (`plan --out FILE`, `sync --plan FILE`): the change set a
//! reviewer approved, with what it takes to apply exactly that later and
//! nothing else, as Terraform's saved plans.
//!
//! The file records the revision the desired state was read at, a digest of
//! every rendered object (so `sync --plan` can tell that the revision still
//! renders the same objects) and the `uid` and `resourceVersion` of every
//! live object the plan updates or deletes (the preconditions of those
//! writes). It holds digests, never an object's body: no Secret value is
//! written to it (a Secret's field values and diff are left out too).
//!
//! Pure: the caller reads and writes the file, renders, and plans again
//! against the cluster; this module compares.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::types::{Action, Change, FieldChange, LiveVersion, Plan, Summary};
use crate::object::Object;

/// The saved plan's schema version.
pub const PLAN_FILE_FORMAT_VERSION: u32 = 1;

/// What `kind` a saved plan says it is (a JSON file of something else is
/// refused with that said).
pub const PLAN_FILE_KIND: &str = "TenantsyncPlan";

/// A saved plan, as written to and read from its JSON file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanFile {
    pub format_version: u32,
    pub kind: String,
    pub environment: String,
    /// The Git commit the desired state was read at (`folder-<digest>` for a
    /// folder: the digest of its files).
    pub revision: String,
    /// What the plan was made with besides the revision.
    pub options: PlanFileOptions,
    /// The cluster the plan was made against (absent from files made
    /// before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterId>,
    pub summary: Summary,
    /// Every object of the plan, unchanged ones included.
    pub changes: Vec<SavedChange>,
    /// SHA-256 of the file with this field empty: an edited file is refused.
    /// (A checksum, not a signature: see README, "Signing a saved plan".)
    pub plan_digest: String,
}

/// The options of the plan that decide its change set.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanFileOptions {
    /// `--workspace` selection (empty: the whole environment).
    #[serde(default)]
    pub workspaces: Vec<String>,
    /// `--adopt`.
    #[serde(default)]
    pub adopt: bool,
}

/// Which cluster a plan was made against: the `uid` of its `kube-system`
/// namespace (made once when the cluster is created, the same whatever
/// address or credentials reach it), and the address it was reached at
/// (shown, not compared).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterId {
    pub server: String,
    pub kube_system_uid: String,
}

/// One object of a saved plan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SavedChange {
    pub action: Action,
    pub api_version: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
    pub workspace: String,
    /// `sha256:<hex>` of the rendered object (every action but delete).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// The live object's `uid` and `resourceVersion` when the plan was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live: Option<LiveVersion>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<FieldChange>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub diff: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl SavedChange {
    pub fn id(&self) -> String {
        crate::object::id((&self.kind, self.namespace.as_deref(), &self.name))
    }
}

/// Why a plan file cannot be used at all.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PlanFileError {
    #[error("line {line}, column {column}: not a tenantsync plan file: {message}")]
    Syntax {
        line: usize,
        column: usize,
        message: String,
    },
    #[error(
        "not a tenantsync plan file (kind `{0}`, expected `{PLAN_FILE_KIND}`); write one with `tenantsync plan --out FILE`"
    )]
    Kind(String),
    #[error(
        "formatVersion {0} is not one this tenantsync reads ({PLAN_FILE_FORMAT_VERSION}); make the plan again with this version"
    )]
    Version(u32),
    #[error(
        "the file was changed after tenantsync wrote it (its planDigest does not match its contents); make a new plan with `tenantsync plan --out`"
    )]
    Tampered,
}

fn sha256(bytes: &[u8]) -> String {
    let hash = Sha256::digest(bytes);
    let mut hex = String::with_capacity(7 + 64);
    hex.push_str("sha256:");
    for b in hash {
        hex.push_str(&format!("{b:02x}"));
    }
    hex
}

/// The digest of a rendered object: of the JSON text sent to the API server.
pub fn object_digest(object: &Object) -> String {
    sha256(object.json().get().as_bytes())
}

impl PlanFile {
    /// The saved form of `plan`, made from `desired` at `revision`.
    pub fn new(
        plan: &Plan,
        desired: &[Object],
        revision: String,
        options: PlanFileOptions,
    ) -> PlanFile {
        let digests: HashMap<_, _> = desired
            .iter()
            .map(|o| (o.key(), object_digest(o)))
            .collect();
        let changes = plan
            .changes
            .iter()
            .map(|c| saved(c, digests.get(&c.key()).cloned()))
            .collect();
        PlanFile {
            format_version: PLAN_FILE_FORMAT_VERSION,
            kind: PLAN_FILE_KIND.to_string(),
            environment: plan.environment.clone(),
            revision,
            options,
            cluster: None,
            summary: plan.summary,
            changes,
            plan_digest: String::new(),
        }
        .sealed()
    }

    /// What an approval of this plan pins (`approve --plan`): every
    /// object's identity, action and rendered digest, not the live
    /// objects' resourceVersions (which move with every status update). The
    /// daemon applies an approved revision only while its own plan has this
    /// change set: the same objects, to be changed the same way, into the
    /// same bodies.
    pub fn change_set_digest(&self) -> String {
        let mut lines: Vec<String> = self
            .changes
            .iter()
            .map(|c| {
                format!(
                    "{} {} {} {}\n",
                    verb(c.action),
                    c.api_version,
                    c.id(),
                    c.digest.as_deref().unwrap_or("-")
                )
            })
            .collect();
        lines.sort();
        sha256(lines.concat().as_bytes())
    }

    /// [`PlanFile::change_set_digest`] of a plan made now from `desired`.
    pub fn change_set_of(plan: &Plan, desired: &[Object]) -> String {
        PlanFile::new(plan, desired, String::new(), PlanFileOptions::default()).change_set_digest()
    }

    /// The file recording the cluster it was planned against.
    pub fn against(mut self, cluster: Option<ClusterId>) -> PlanFile {
        self.cluster = cluster;
        self.sealed()
    }

    /// Refuses to apply the plan to another cluster than the one it was
    /// made against (`now`: the cluster reached, `None` when it has no
    /// `kube-system` namespace to tell it by). A plan that creates objects
    /// only has no live object to be stale against: without this, it
    /// would apply to whatever cluster the context names.
    pub fn check_cluster(&self, now: Option<&ClusterId>) -> Result<(), String> {
        let Some(planned) = &self.cluster else {
            return Ok(());
        };
        match now {
            Some(now) if now.kube_system_uid == planned.kube_system_uid => Ok(()),
            Some(now) => Err(format!(
                "the plan was made against cluster {} (kube-system uid {}), but this is {} (kube-system uid {}): check --context/--kubeconfig, or make a plan against this cluster (tenantsync plan --out)",
                planned.server, planned.kube_system_uid, now.server, now.kube_system_uid
            )),
            None => Err(format!(
                "the plan was made against cluster {} (kube-system uid {}), and the cluster reached has no kube-system namespace to tell it by: make a plan against this cluster (tenantsync plan --out)",
                planned.server, planned.kube_system_uid
            )),
        }
    }

    /// The file with its `planDigest` computed again (after a change).
    pub fn sealed(mut self) -> PlanFile {
        self.plan_digest = self.own_digest();
        self
    }

    /// The digest of the file with `planDigest` empty.
    fn own_digest(&self) -> String {
        let mut unsealed = self.clone();
        unsealed.plan_digest.clear();
        // Serialising plain data (strings, numbers, JSON values) cannot fail.
        sha256(&serde_json::to_vec(&unsealed).unwrap_or_default())
    }

    /// The file's text: indented JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default() + "\n"
    }

    /// Reads a plan file's text; refuses another kind of JSON, another
    /// format version and an edited file.
    pub fn parse(text: &str) -> Result<PlanFile, PlanFileError> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| PlanFileError::Syntax {
                line: e.line(),
                column: e.column(),
                message: e.to_string(),
            })?;
        let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or("");
        if kind != PLAN_FILE_KIND {
            return Err(PlanFileError::Kind(kind.to_string()));
        }
        let version = value
            .get("formatVersion")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0);
        if version != u64::from(PLAN_FILE_FORMAT_VERSION) {
            return Err(PlanFileError::Version(
                u32::try_from(version).unwrap_or(u32::MAX),
            ));
        }
        let file: PlanFile = serde_json::from_str(text).map_err(|e| PlanFileError::Syntax {
            line: e.line(),
            column: e.column(),
            message: e.to_string(),
        })?;
        if file.plan_digest != file.own_digest() {
            return Err(PlanFileError::Tampered);
        }
        Ok(file)
    }

    /// Whether the plan deletes anything.
    pub fn deletes(&self) -> usize {
        self.changes
            .iter()
            .filter(|c| c.action == Action::Delete)
            .count()
    }

    /// How the rendering of the recorded revision differs from the plan's
    /// digests, one line per object (none: it renders exactly the planned
    /// objects).
    pub fn rendering_differs(&self, desired: &[Object]) -> Vec<String> {
        let planned: BTreeMap<String, &SavedChange> = self
            .changes
            .iter()
            .filter(|c| c.action != Action::Delete)
            .map(|c| (c.id(), c))
            .collect();
        let mut differs = Vec::new();
        let mut rendered = std::collections::BTreeSet::new();
        for o in desired {
            let id = o.id();
            match planned.get(&id) {
                None => differs.push(format!("{id}: rendered, but not in the plan")),
                Some(c) if c.digest.as_deref() != Some(object_digest(o).as_str()) => {
                    differs.push(format!("{id}: renders differently than when planned"))
                }
                Some(_) => {}
            }
            rendered.insert(id);
        }
        for id in planned.keys() {
            if !rendered.contains(id) {
                differs.push(format!("{id}: in the plan, but not rendered"));
            }
        }
        differs.sort();
        differs
    }

    /// The objects whose state in the cluster is not what the plan was made
    /// against, comparing it with `now`, the same plan made again: one line
    /// per object, naming what changed (none: the plan still holds).
    pub fn stale(&self, now: &Plan) -> Vec<String> {
        let then: BTreeMap<String, &SavedChange> =
            self.changes.iter().map(|c| (c.id(), c)).collect();
        let current: BTreeMap<String, &Change> = now.changes.iter().map(|c| (c.id(), c)).collect();
        let mut stale = Vec::new();
        let ids: std::collections::BTreeSet<&String> = then.keys().chain(current.keys()).collect();
        for id in ids {
            let was = then.get(id).map(|c| (c.action, c.live.as_ref()));
            let is = current.get(id).map(|c| (c.action, c.live.as_ref()));
            let line = match (was, is) {
                (Some((Action::Unchanged, _)), None) | (None, Some((Action::Unchanged, _))) => None,
                (Some((a, _)), None) => Some(format!(
                    "{id}: planned to {}, now nothing to do (it changed since the plan)",
                    verb(a)
                )),
                (None, Some((b, _))) => Some(format!(
                    "{id}: not in the plan, now to {} (it changed since the plan)",
                    verb(b)
                )),
                (Some((a, _)), Some((b, _))) if a != b => Some(match (a, b) {
                    (Action::Create, _) => format!("{id}: planned to create, now exists"),
                    (_, Action::Create) => format!("{id}: deleted since the plan"),
                    _ => format!(
                        "{id}: planned to {}, now to {} (it changed since the plan)",
                        verb(a),
                        verb(b)
                    ),
                }),
                (Some((a, Some(then))), Some((_, Some(now))))
                    if a != Action::Unchanged && then != now =>
                {
                    Some(if then.uid != now.uid {
                        format!(
                            "{id}: deleted and created again since the plan (uid {} then, {} now)",
                            then.uid, now.uid
                        )
                    } else {
                        format!(
                            "{id}: changed since the plan (resourceVersion {} then, {} now)",
                            then.resource_version, now.resource_version
                        )
                    })
                }
                _ => None,
            };
            stale.extend(line);
        }
        stale
    }

    /// The preconditions of the plan's updates and deletes, by object id.
    pub fn preconditions(&self) -> HashMap<String, LiveVersion> {
        self.changes
            .iter()
            .filter(|c| matches!(c.action, Action::Update | Action::Delete | Action::Adopt))
            .filter_map(|c| Some((c.id(), c.live.clone()?)))
            .collect()
    }
}

fn verb(action: Action) -> &'static str {
    match action {
        Action::Create => "create",
        Action::Update => "update",
        Action::Delete => "delete",
        Action::Unchanged => "leave unchanged",
        Action::Adopt => "adopt",
        Action::Unmanaged => "leave alone (not managed)",
    }
}

/// One change as saved: a Secret's values (field values, diff) left out.
fn saved(c: &Change, digest: Option<String>) -> SavedChange {
    let secret = &*c.kind == "Secret";
    let fields = c
        .fields
        .iter()
        .map(|f| {
            let mut f = f.clone();
            if secret {
                f.live = None;
                f.desired = None;
            }
            f
        })
        .collect();
    SavedChange {
        action: c.action,
        api_version: c.api_version.to_string(),
        kind: c.kind.to_string(),
        namespace: c.namespace.as_deref().map(str::to_string),
        name: c.name.to_string(),
        workspace: c.workspace.to_string(),
        digest: if c.action == Action::Delete {
            None
        } else {
            digest
        },
        live: c.live.clone(),
        fields,
        diff: if secret {
            String::new()
        } else {
            c.diff.clone()
        },
        note: c.note.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::pair::plan;
    use serde_json::{Value, json};

    fn object(body: Value) -> Object {
        Object::from_value("acme", &body).unwrap()
    }

    fn config_map(name: &str, value: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": name, "namespace": "acme-qa",
                            "labels": {crate::object::WORKSPACE_LABEL: "acme"}},
               "data": {"k": value}})
    }

    fn live(body: Value, rv: &str) -> Value {
        let mut l = body;
        l["metadata"]["uid"] = json!(format!("uid-{}", l["metadata"]["name"].as_str().unwrap()));
        l["metadata"]["resourceVersion"] = json!(rv);
        l["metadata"]["managedFields"] = json!([{
            "manager": crate::object::field_manager("qa"), "operation": "Apply",
            "apiVersion": "v1", "fieldsType": "FieldsV1",
            "fieldsV1": {"f:data": {"f:k": {}}, "f:metadata": {"f:labels": {}}}
        }]);
        l
    }

    fn saved_plan() -> (Vec<Object>, Vec<Value>, PlanFile) {
        let desired = vec![
            object(config_map("a", "new")),
            object(config_map("b", "same")),
            object(config_map("c", "fresh")),
        ];
        let live = vec![
            live(config_map("a", "old"), "10"),
            live(config_map("b", "same"), "11"),
        ];
        let p = plan("qa", &desired, &live, None, Some("abc".into()), 0);
        let file = PlanFile::new(&p, &desired, "abc".into(), PlanFileOptions::default());
        (desired, live, file)
    }

    #[test]
    fn a_saved_plan_reads_back_as_written_and_holds_the_preconditions() {
        let (_, _, file) = saved_plan();
        let back = PlanFile::parse(&file.to_json()).unwrap();
        assert_eq!(back, file);
        let pre = back.preconditions();
        assert_eq!(pre.len(), 1, "{pre:?}");
        assert_eq!(pre["ConfigMap/acme-qa/a"].resource_version, "10");
        assert_eq!(pre["ConfigMap/acme-qa/a"].uid, "uid-a");
    }

    #[test]
    fn a_plan_is_refused_on_another_cluster_and_an_edited_cluster_is_tampering() {
        let (_, _, file) = saved_plan();
        let here = ClusterId {
            server: "https://a:6443".into(),
            kube_system_uid: "1111".into(),
        };
        let file = file.against(Some(here.clone()));
        let back = PlanFile::parse(&file.to_json()).unwrap();
        // Another address of the same cluster is the same cluster.
        let same = ClusterId {
            server: "https://a.private:443".into(),
            ..here.clone()
        };
        assert_eq!(back.check_cluster(Some(&same)), Ok(()));
        let other = ClusterId {
            server: "https://b:6443".into(),
            kube_system_uid: "2222".into(),
        };
        let e = back.check_cluster(Some(&other)).unwrap_err();
        assert!(e.contains("https://a:6443") && e.contains("2222"), "{e}");
        assert!(back.check_cluster(None).is_err());
        // The cluster is sealed with the rest: moving a plan to another
        // cluster by editing the file is refused.
        let moved = file.to_json().replace("1111", "2222");
        assert!(matches!(
            PlanFile::parse(&moved),
            Err(PlanFileError::Tampered)
        ));
        // A file from before the cluster was recorded still reads (and
        // keeps its digest) and is not tied to one.
        let (_, _, old) = saved_plan();
        let old = PlanFile::parse(&old.to_json()).unwrap();
        assert_eq!(old.cluster, None);
        assert_eq!(old.check_cluster(Some(&other)), Ok(()));
    }

    #[test]
    fn an_edited_plan_file_is_refused_as_tampered() {
        let (_, _, file) = saved_plan();
        let text = file
            .to_json()
            .replace("\"action\": \"create\"", "\"action\": \"unchanged\"");
        assert_eq!(PlanFile::parse(&text), Err(PlanFileError::Tampered));
        let other = file.to_json().replace(PLAN_FILE_KIND, "Other");
        assert_eq!(
            PlanFile::parse(&other),
            Err(PlanFileError::Kind("Other".into()))
        );
        let e = PlanFile::parse("{\n  \"kind\": ").unwrap_err();
        assert!(matches!(e, PlanFileError::Syntax { line: 2, .. }), "{e:?}");
        let v2 = file
            .to_json()
            .replace("\"formatVersion\": 1", "\"formatVersion\": 2");
        assert_eq!(PlanFile::parse(&v2), Err(PlanFileError::Version(2)));
    }

    #[test]
    fn another_rendering_is_named_object_by_object() {
        let (mut desired, _, file) = saved_plan();
        assert!(file.rendering_differs(&desired).is_empty());
        desired[0] = object(config_map("a", "other"));
        desired.pop();
        desired.push(object(config_map("d", "x")));
        assert_eq!(
            file.rendering_differs(&desired),
            [
                "ConfigMap/acme-qa/a: renders differently than when planned",
                "ConfigMap/acme-qa/c: in the plan, but not rendered",
                "ConfigMap/acme-qa/d: rendered, but not in the plan",
            ]
        );
    }

    #[test]
    fn a_cluster_changed_since_the_plan_makes_it_stale_naming_each_object() {
        let (desired, mut live, file) = saved_plan();
        let same = plan("qa", &desired, &live, None, Some("abc".into()), 0);
        assert!(file.stale(&same).is_empty());
        // `a` written again by someone; `b` edited (now an update); `c`
        // created meanwhile.
        live[0]["metadata"]["resourceVersion"] = json!("12");
        live[1]["data"]["k"] = json!("edited");
        live.push(live_c());
        let now = plan("qa", &desired, &live, None, Some("abc".into()), 0);
        assert_eq!(
            file.stale(&now),
            [
                "ConfigMap/acme-qa/a: changed since the plan (resourceVersion 10 then, 12 now)",
                "ConfigMap/acme-qa/b: planned to leave unchanged, now to update (it changed since the plan)",
                "ConfigMap/acme-qa/c: planned to create, now exists",
            ]
        );
        // Recreated: another uid.
        let (desired, mut live, file) = saved_plan();
        live[0]["metadata"]["uid"] = json!("uid-new");
        let now = plan("qa", &desired, &live, None, Some("abc".into()), 0);
        assert_eq!(
            file.stale(&now),
            [
                "ConfigMap/acme-qa/a: deleted and created again since the plan (uid uid-a then, uid-new now)"
            ]
        );
    }

    fn live_c() -> Value {
        live(config_map("c", "fresh"), "13")
    }

    #[test]
    fn a_secret_s_values_never_reach_the_plan_file() {
        let secret = json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "s", "namespace": "acme-qa",
                         "labels": {crate::object::WORKSPACE_LABEL: "acme"}},
            "stringData": {"password": "hunter2-very-secret"}});
        let mut old = secret.clone();
        old["stringData"]["password"] = json!("old-secret-value");
        let desired = vec![object(secret)];
        let live = vec![live(old, "5")];
        let p = plan("qa", &desired, &live, None, None, 0);
        let text = PlanFile::new(&p, &desired, "abc".into(), PlanFileOptions::default()).to_json();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(!text.contains("old-secret-value"), "{text}");
        assert!(text.contains("sha256:"), "{text}");
    }
}
