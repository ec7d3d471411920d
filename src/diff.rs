//! Pairing desired objects with live ones and diffing them over the fields
//! tenantsync manages (pure: no client, no I/O).
//!
//! The comparison is the one server-side apply makes meaningful:
//! - every field tenantsync declares must have that value live; fields the
//!   server defaults, `status` and server-owned metadata are never looked at,
//!   because tenantsync does not declare them;
//! - a field tenantsync owns (its `managedFields` entry) but no longer
//!   declares will be removed by the next apply: that is a change too;
//! - when a declared field has another value live, the field manager that
//!   owns the live value is named (`kubectl`, `kubectl-edit`, ...).

use serde_json::{Map, Value};
use similar::TextDiff;

use crate::inventory::Inventory;
use crate::plan::{Action, Change, FieldAction, FieldChange, PLAN_FORMAT_VERSION, Plan, Summary};
use crate::render::{self, Object, ObjectKey, WORKSPACE_LABEL};

/// The field manager of tenantsync's own objects (inventories, its
/// namespace), and the one every environment applied with before each had
/// its own ([`field_manager`]).
pub const FIELD_MANAGER: &str = "tenantsync";

/// The field manager an environment's objects are applied with: one per
/// environment, so two environments writing one object conflict visibly
/// instead of taking it from each other.
pub fn field_manager(environment: &str) -> String {
    format!("{FIELD_MANAGER}/{environment}")
}

/// One step of a path into an object.
#[derive(Clone, Debug)]
enum Seg {
    Field(String),
    /// A list item: how it is shown, and the live item (to match `k:` keys).
    Item {
        label: String,
        live: Option<Value>,
    },
}

fn display(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Field(f) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(f);
            }
            Seg::Item { label, .. } => out.push_str(label),
        }
    }
    out
}

/// The `name` of a list item, which lists of named items are aligned by
/// (containers, env, ports, volumes, ...).
fn item_name(item: &Value) -> Option<&str> {
    item.get("name").and_then(Value::as_str)
}

fn named_list(items: &[Value]) -> bool {
    !items.is_empty() && items.iter().all(|i| item_name(i).is_some())
}

/// For each desired item, the live item it corresponds to.
fn align<'a>(desired: &[Value], live: &'a [Value]) -> Vec<(String, Option<&'a Value>)> {
    if named_list(desired) {
        desired
            .iter()
            .map(|d| {
                let name = item_name(d).unwrap_or_default();
                let l = live.iter().find(|l| item_name(l) == Some(name));
                (format!("[name={name}]"), l)
            })
            .collect()
    } else {
        (0..desired.len())
            .map(|i| (format!("[{i}]"), live.get(i)))
            .collect()
    }
}

/// A declared field whose live value differs.
struct Mismatch {
    path: Vec<Seg>,
    desired: Value,
    live: Option<Value>,
}

fn compare(desired: &Value, live: Option<&Value>, path: &mut Vec<Seg>, out: &mut Vec<Mismatch>) {
    match desired {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                path.push(Seg::Field(k.clone()));
                compare(v, live.and_then(|l| l.get(k)), path, out);
                path.pop();
            }
        }
        Value::Array(items) if items.iter().any(Value::is_object) => {
            let live_items = live
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or_default();
            for (item, (label, l)) in items.iter().zip(align(items, live_items)) {
                path.push(Seg::Item {
                    label,
                    live: l.cloned(),
                });
                compare(item, l, path, out);
                path.pop();
            }
        }
        _ => {
            let same = live.is_some_and(|l| equivalent(desired, l, path));
            if !same {
                out.push(Mismatch {
                    path: path.clone(),
                    desired: desired.clone(),
                    live: live.cloned(),
                });
            }
        }
    }
}

/// Equality as the API server sees it: an empty object declares presence
/// only, and resource quantities compare by amount (`0.5` is `500m`).
fn equivalent(desired: &Value, live: &Value, path: &[Seg]) -> bool {
    if desired == live {
        return true;
    }
    if desired.as_object().is_some_and(Map::is_empty) {
        return live.is_object();
    }
    let in_resources = path.len() >= 2
        && matches!(&path[path.len() - 2], Seg::Field(f) if f == "requests" || f == "limits");
    if in_resources && let (Some(a), Some(b)) = (quantity(desired), quantity(live)) {
        return (a - b).abs() <= f64::EPSILON * a.abs().max(1.0);
    }
    false
}

/// A Kubernetes quantity as a number.
fn quantity(v: &Value) -> Option<f64> {
    let s = match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    let split = s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let mult = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024.0_f64.powi(2),
        "Gi" => 1024.0_f64.powi(3),
        "Ti" => 1024.0_f64.powi(4),
        _ => return None,
    };
    Some(n * mult)
}

/// `managedFields[].fieldsV1` of one manager (Apply or Update), if present.
fn fields_of(live: &Value, pick: impl Fn(&str) -> bool) -> Vec<(&str, &Value)> {
    live.pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .map(|entries| {
            entries
                .iter()
                .filter_map(|e| {
                    let manager = e.get("manager")?.as_str()?;
                    let fields = e.get("fieldsV1")?;
                    pick(manager).then_some((manager, fields))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Whether a `k:{...}` key of fieldsV1 identifies `item`.
fn key_matches(key: &str, item: &Value) -> bool {
    let Some(json) = key.strip_prefix("k:") else {
        return false;
    };
    let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(json) else {
        return false;
    };
    fields.iter().all(|(k, v)| item.get(k) == Some(v))
}

/// Whether a fieldsV1 trie covers `path` (walked along the live object).
fn trie_contains(mut node: &Value, path: &[Seg]) -> bool {
    for seg in path {
        let next = match seg {
            Seg::Field(f) => node.get(format!("f:{f}")),
            Seg::Item {
                live: Some(item), ..
            } => node
                .as_object()
                .and_then(|m| m.iter().find(|(k, _)| key_matches(k, item)).map(|(_, v)| v)),
            Seg::Item { live: None, .. } => None,
        };
        match next {
            Some(n) => node = n,
            None => return false,
        }
    }
    true
}

fn removal(path: &[Seg], live: &Value) -> FieldChange {
    FieldChange {
        path: display(path),
        action: FieldAction::Remove,
        live: Some(live.clone()),
        desired: None,
        manager: None,
    }
}

/// Fields tenantsync owns live but no longer declares.
fn removed(
    owned: &Value,
    desired: Option<&Value>,
    live: Option<&Value>,
    path: &mut Vec<Seg>,
    out: &mut Vec<FieldChange>,
) {
    let Some(map) = owned.as_object() else { return };
    for (key, child) in map {
        if let Some(field) = key.strip_prefix("f:") {
            let d = desired.and_then(|d| d.get(field));
            let l = live.and_then(|l| l.get(field));
            path.push(Seg::Field(field.to_string()));
            let has_fields = child
                .as_object()
                .is_some_and(|m| m.keys().any(|k| k.starts_with("f:")));
            match (d, l) {
                // A whole map no longer declared: name each field it held.
                (None, Some(_)) if has_fields => removed(child, None, l, path, out),
                (None, Some(l)) => out.push(removal(path, l)),
                (Some(_), _) => removed(child, d, l, path, out),
                (None, None) => {}
            }
            path.pop();
        } else if let Some(item_key) = key.strip_prefix("k:") {
            let find = |v: Option<&Value>| {
                v.and_then(Value::as_array)
                    .and_then(|items| items.iter().find(|i| key_matches(key, i)).cloned())
            };
            let (d, l) = (find(desired), find(live));
            let label = match l.as_ref().or(d.as_ref()).and_then(item_name) {
                Some(n) => format!("[name={n}]"),
                None => format!("[{item_key}]"),
            };
            path.push(Seg::Item {
                label,
                live: l.clone(),
            });
            match (&d, &l) {
                (None, Some(l)) => out.push(removal(path, l)),
                (Some(_), _) => removed(child, d.as_ref(), l.as_ref(), path, out),
                (None, None) => {}
            }
            path.pop();
        }
    }
}

/// The live object as far as it matters for the diff: what tenantsync
/// declares or owns, nothing the server or other controllers added.
fn project(live: &Value, desired: Option<&Value>, owned: Option<&Value>) -> Value {
    match live {
        Value::Object(map) => {
            let mut out = Map::new();
            for (k, v) in map {
                let d = desired.and_then(|d| d.get(k));
                let o = owned.and_then(|o| o.get(format!("f:{k}")));
                if d.is_some() || o.is_some() {
                    out.insert(k.clone(), project(v, d, o));
                }
            }
            if out.is_empty() && desired.is_some_and(|d| d.as_object().is_some_and(Map::is_empty)) {
                return Value::Object(Map::new());
            }
            Value::Object(out)
        }
        Value::Array(items) if items.iter().any(Value::is_object) => {
            let desired_items = desired
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or_default();
            let named = named_list(desired_items) || named_list(items);
            let mut out = Vec::new();
            for (i, item) in items.iter().enumerate() {
                let d = if named {
                    desired_items
                        .iter()
                        .find(|d| item_name(d).is_some() && item_name(d) == item_name(item))
                } else {
                    desired_items.get(i)
                };
                let o = owned
                    .and_then(Value::as_object)
                    .and_then(|m| m.iter().find(|(k, _)| key_matches(k, item)).map(|(_, v)| v));
                if d.is_some() || o.is_some() || (!named && desired.is_some()) {
                    out.push(project(item, d, o));
                }
            }
            Value::Array(out)
        }
        other => other.clone(),
    }
}

/// A live object reduced to its identity, labels and annotations.
fn skeleton(mut live: Value) -> Value {
    let Some(map) = live.as_object_mut() else {
        return live;
    };
    map.retain(|k, _| matches!(k.as_str(), "apiVersion" | "kind" | "metadata"));
    if let Some(meta) = map.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.retain(|k, _| matches!(k.as_str(), "name" | "namespace" | "labels" | "annotations"));
    }
    live
}

/// Metadata the server and controllers own; never part of a diff.
fn strip_noise(live: &Value) -> Value {
    let mut v = live.clone();
    if let Some(map) = v.as_object_mut() {
        map.remove("status");
        if let Some(meta) = map.get_mut("metadata").and_then(Value::as_object_mut) {
            for k in [
                "managedFields",
                "uid",
                "resourceVersion",
                "generation",
                "creationTimestamp",
                "selfLink",
            ] {
                meta.remove(k);
            }
        }
    }
    v
}

fn yaml(v: &Value) -> String {
    crate::yaml_emit::to_string(v)
}

fn unified(live: &str, desired: &str, id: &str) -> String {
    TextDiff::from_lines(live, desired)
        .unified_diff()
        .context_radius(3)
        .header(&format!("live/{id}"), &format!("desired/{id}"))
        .to_string()
}

type Key = (String, Option<String>, String);

fn key_of(v: &Value) -> Option<Key> {
    let kind = v.get("kind")?.as_str()?.to_string();
    let meta = v.get("metadata")?;
    let name = meta.get("name")?.as_str()?.to_string();
    let ns = meta
        .get("namespace")
        .and_then(Value::as_str)
        .map(str::to_string);
    Some((kind, ns, name))
}

/// Diffs one desired object against its live counterpart; with `diffs`
/// false the change carries no unified diff text (a sync needs only the
/// action and the fields).
pub fn diff_object(desired: &Object, live: Option<&Value>, diffs: bool, manager: &str) -> Change {
    let id = desired.id();
    let mut change = Change {
        action: Action::Unchanged,
        api_version: desired.api_version.clone(),
        kind: desired.kind.clone(),
        namespace: desired.namespace.clone(),
        name: desired.name.clone(),
        workspace: desired.workspace.clone(),
        fields: Vec::new(),
        diff: String::new(),
        note: None,
    };
    let Some(live) = live else {
        change.action = Action::Create;
        if diffs {
            change.diff = unified("", &yaml(&desired.value()), &id);
        }
        return change;
    };
    let body = desired.value();
    let mut mismatches = Vec::new();
    compare(&body, Some(live), &mut Vec::new(), &mut mismatches);
    let others = fields_of(live, |m| m != manager);
    for m in mismatches {
        let manager = m
            .live
            .as_ref()
            .and_then(|_| {
                others
                    .iter()
                    .find(|(_, fields)| trie_contains(fields, &m.path))
            })
            .map(|(name, _)| (*name).to_string());
        change.fields.push(FieldChange {
            path: display(&m.path),
            action: if m.live.is_some() {
                FieldAction::Change
            } else {
                FieldAction::Add
            },
            live: m.live,
            desired: Some(m.desired),
            manager,
        });
    }
    let owned = fields_of(live, |m| m == manager);
    for (_, fields) in &owned {
        removed(
            fields,
            Some(&body),
            Some(live),
            &mut Vec::new(),
            &mut change.fields,
        );
    }
    if !change.fields.is_empty() {
        change.action = Action::Update;
        if !diffs {
            return change;
        }
        let owned_trie = owned.first().map(|(_, f)| *f);
        let view = project(live, Some(&body), owned_trie);
        change.diff = unified(&yaml(&view), &yaml(&body), &id);
    }
    change
}

/// Pairs desired objects with live ones as the live ones are listed, a page
/// at a time, so that only the changes are kept, not every live object: the
/// live objects nothing declares (few, normally) are the only ones held.
///
/// Live objects nothing declares are deletes when the inventory lists them
/// (what `sync --prune` would delete: tenantsync never deletes what it did
/// not record); without an inventory every such labelled object is listed,
/// which is what `drift` reports as orphaned.
pub struct Planner<'a> {
    environment: String,
    desired: &'a [Object],
    /// The desired objects by the hash of their key, sorted: 16 bytes an
    /// object where a map of borrowed keys takes over 100.
    index: Vec<(u64, u32)>,
    /// Which desired objects' live counterparts were seen.
    seen: Vec<bool>,
    changes: Vec<Change>,
    orphans: Vec<Value>,
    diffs: bool,
    /// The environment's field manager ([`field_manager`]).
    manager: String,
}

fn key_hash(key: ObjectKey<'_>) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    BuildHasherDefault::<DefaultHasher>::default().hash_one(key)
}

impl<'a> Planner<'a> {
    /// `diffs`: whether changes carry their unified diff (printers need it,
    /// a sync does not).
    pub fn new(environment: &str, desired: &'a [Object], diffs: bool) -> Planner<'a> {
        let mut index: Vec<(u64, u32)> = desired
            .iter()
            .zip(0u32..)
            .map(|(d, i)| (key_hash(d.key()), i))
            .collect();
        index.sort_unstable();
        Planner {
            environment: environment.to_string(),
            desired,
            index,
            seen: vec![false; desired.len()],
            changes: Vec::with_capacity(desired.len()),
            orphans: Vec::new(),
            diffs,
            manager: field_manager(environment),
        }
    }

    /// The desired object with this key.
    fn find(&self, key: ObjectKey<'_>) -> Option<usize> {
        let hash = key_hash(key);
        let start = self.index.partition_point(|(h, _)| *h < hash);
        self.index[start..]
            .iter()
            .take_while(|(h, _)| *h == hash)
            .map(|(_, i)| *i as usize)
            .find(|&i| self.desired[i].key() == key)
    }

    /// One live object, as listed.
    pub fn observe(&mut self, live: Value) {
        let Some((kind, namespace, name)) = key_of(&live) else {
            return;
        };
        match self.find((kind.as_str(), namespace.as_deref(), name.as_str())) {
            Some(i) => {
                if !self.seen[i] {
                    self.seen[i] = true;
                    self.changes.push(diff_object(
                        &self.desired[i],
                        Some(&live),
                        self.diffs,
                        &self.manager,
                    ));
                }
            }
            // Without diffs only the identity and metadata matter (a prune
            // reads the sync wave and `prune: disabled`): a removed
            // workspace's objects can number thousands.
            None if !self.diffs => self.orphans.push(skeleton(live)),
            None => self.orphans.push(live),
        }
    }

    /// The plan, and the live objects nothing declares (what a prune looks
    /// at).
    pub fn finish(
        self,
        inventory: Option<&Inventory>,
        revision: Option<String>,
        api_requests: u32,
    ) -> (Plan, Vec<Value>) {
        let mut changes = self.changes;
        for (d, _) in self
            .desired
            .iter()
            .zip(&self.seen)
            .filter(|(_, seen)| !**seen)
        {
            changes.push(diff_object(d, None, self.diffs, &self.manager));
        }
        let inventoried = inventory.map(Inventory::keys);
        for l in &self.orphans {
            let Some((kind, namespace, name)) = key_of(l) else {
                continue;
            };
            if let Some(inventoried) = &inventoried
                && !inventoried.contains(&(kind.as_str(), namespace.as_deref(), name.as_str()))
            {
                continue;
            }
            let workspace = l
                .pointer("/metadata/labels")
                .and_then(|m| m.get(WORKSPACE_LABEL))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let api_version = l
                .get("apiVersion")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let id = match &namespace {
                Some(ns) => format!("{kind}/{ns}/{name}"),
                None => format!("{kind}/{name}"),
            };
            let diff = if self.diffs {
                unified(&yaml(&strip_noise(l)), "", &id)
            } else {
                String::new()
            };
            changes.push(Change {
                action: Action::Delete,
                api_version: api_version.into(),
                kind: kind.into(),
                namespace: namespace.map(Into::into),
                name: name.into(),
                workspace: workspace.into(),
                fields: Vec::new(),
                diff,
                note: None,
            });
        }
        changes.sort_by(|a, b| {
            (
                &a.workspace,
                render::kind_rank(&a.kind),
                &a.namespace,
                &a.name,
            )
                .cmp(&(
                    &b.workspace,
                    render::kind_rank(&b.kind),
                    &b.namespace,
                    &b.name,
                ))
        });
        let plan = Plan {
            format_version: PLAN_FORMAT_VERSION,
            environment: self.environment,
            revision,
            summary: Summary::of(&changes),
            changes,
            api_requests,
        };
        (plan, self.orphans)
    }
}

/// The plan of `desired` against all of `live` at once (see [`Planner`]).
pub fn plan(
    environment: &str,
    desired: &[Object],
    live: &[Value],
    inventory: Option<&Inventory>,
    revision: Option<String>,
    api_requests: u32,
) -> Plan {
    let mut planner = Planner::new(environment, desired, true);
    for l in live {
        planner.observe(l.clone());
    }
    planner.finish(inventory, revision, api_requests).0
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(body: Value) -> Object {
        Object::from_value("acme", &body).unwrap()
    }

    fn deployment(replicas: i64, image: &str) -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "fhir-api", "namespace": "acme-dev", "labels": {"app": "fhir"}},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": "fhir"}},
                "template": {"metadata": {"labels": {"app": "fhir"}}, "spec": {
                    "containers": [{"name": "fhir", "image": image,
                        "resources": {"requests": {"cpu": "0.5", "memory": "1Gi"}},
                        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}]}],
                    "volumes": [{"name": "tmp", "emptyDir": {}}]
                }}
            }
        })
    }

    /// What the API server returns after a server-side apply by tenantsync:
    /// defaults filled in, status, server metadata, managedFields.
    fn live_after_apply(desired: &Value) -> Value {
        let mut live = desired.clone();
        live["metadata"]["uid"] = json!("u-1");
        live["metadata"]["resourceVersion"] = json!("42");
        live["metadata"]["annotations"] = json!({"deployment.kubernetes.io/revision": "1"});
        live["spec"]["revisionHistoryLimit"] = json!(10);
        live["spec"]["template"]["spec"]["containers"][0]["terminationMessagePath"] =
            json!("/dev/termination-log");
        live["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"] =
            json!("500m");
        live["spec"]["template"]["spec"]["dnsPolicy"] = json!("ClusterFirst");
        live["status"] = json!({"replicas": 1});
        live["metadata"]["managedFields"] = json!([
            {"manager": "tenantsync", "operation": "Apply", "fieldsType": "FieldsV1", "fieldsV1": {
                "f:metadata": {"f:labels": {"f:app": {}}},
                "f:spec": {"f:replicas": {}, "f:selector": {}, "f:template": {"f:metadata": {"f:labels": {"f:app": {}}},
                    "f:spec": {"f:containers": {"k:{\"name\":\"fhir\"}": {".": {}, "f:image": {}, "f:name": {},
                        "f:resources": {"f:requests": {"f:cpu": {}, "f:memory": {}}},
                        "f:volumeMounts": {"k:{\"mountPath\":\"/tmp\"}": {".": {}, "f:mountPath": {}, "f:name": {}}}}},
                        "f:volumes": {"k:{\"name\":\"tmp\"}": {".": {}, "f:emptyDir": {}, "f:name": {}}}}}}
            }},
            {"manager": "kube-controller-manager", "operation": "Update", "subresource": "status", "fieldsType": "FieldsV1",
             "fieldsV1": {"f:status": {"f:replicas": {}}}}
        ]);
        live
    }

    #[test]
    fn server_defaults_status_and_metadata_are_not_changes() {
        let desired = object(deployment(2, "fhir:1"));
        let live = live_after_apply(&desired.value());
        let c = diff_object(&desired, Some(&live), true, FIELD_MANAGER);
        assert_eq!(c.action, Action::Unchanged, "{:?}", c.fields);
        assert!(c.diff.is_empty());
    }

    #[test]
    fn a_field_changed_by_another_manager_names_it() {
        let desired = object(deployment(2, "fhir:1"));
        let mut live = live_after_apply(&desired.value());
        live["spec"]["replicas"] = json!(5);
        let entries = live["metadata"]["managedFields"].as_array_mut().unwrap();
        entries.push(
            json!({"manager": "kubectl", "operation": "Update", "subresource": "scale",
            "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:replicas": {}}}}),
        );
        let c = diff_object(&desired, Some(&live), true, FIELD_MANAGER);
        assert_eq!(c.action, Action::Update);
        assert_eq!(c.fields.len(), 1, "{:?}", c.fields);
        let f = &c.fields[0];
        assert_eq!(f.path, "spec.replicas");
        assert_eq!(f.action, FieldAction::Change);
        assert_eq!(
            (f.live.clone(), f.desired.clone()),
            (Some(json!(5)), Some(json!(2)))
        );
        assert_eq!(f.manager.as_deref(), Some("kubectl"));
        assert!(
            c.diff.contains("-  replicas: 5\n+  replicas: 2\n"),
            "{}",
            c.diff
        );
        assert!(!c.diff.contains("revisionHistoryLimit"), "{}", c.diff);
    }

    #[test]
    fn a_list_item_field_is_named_by_key() {
        let desired = object(deployment(2, "fhir:2"));
        let live = live_after_apply(&deployment(2, "fhir:1"));
        let c = diff_object(&desired, Some(&live), true, FIELD_MANAGER);
        assert_eq!(c.fields.len(), 1);
        assert_eq!(
            c.fields[0].path,
            "spec.template.spec.containers[name=fhir].image"
        );
        assert_eq!(c.fields[0].manager, None);
    }

    #[test]
    fn a_field_no_longer_declared_is_removed() {
        let mut body = deployment(2, "fhir:1");
        let live = live_after_apply(&body);
        body["metadata"]["labels"] = json!({});
        body["spec"]["template"]["spec"]["volumes"] = json!([]);
        let c = diff_object(&object(body), Some(&live), true, FIELD_MANAGER);
        let paths: Vec<_> = c
            .fields
            .iter()
            .map(|f| (f.path.as_str(), f.action))
            .collect();
        assert!(
            paths.contains(&("metadata.labels.app", FieldAction::Remove)),
            "{paths:?}"
        );
        assert!(
            paths.contains(&("spec.template.spec.volumes[name=tmp]", FieldAction::Remove)),
            "{paths:?}"
        );
    }

    #[test]
    fn quantities_compare_by_amount() {
        let path = [Seg::Field("requests".into()), Seg::Field("cpu".into())];
        assert!(equivalent(&json!("0.5"), &json!("500m"), &path));
        assert!(equivalent(&json!("1024Mi"), &json!("1Gi"), &path));
        assert!(!equivalent(&json!("1"), &json!("2"), &path));
        assert!(!equivalent(
            &json!("0.5"),
            &json!("500m"),
            &[Seg::Field("x".into())]
        ));
    }

    #[test]
    fn plan_pairs_creates_updates_and_deletes() {
        let desired = vec![object(deployment(2, "fhir:1"))];
        let mut orphan = live_after_apply(&deployment(1, "x"));
        orphan["metadata"]["name"] = json!("old");
        orphan["metadata"]["labels"] = json!({WORKSPACE_LABEL: "acme"});
        let p = plan(
            "dev",
            &desired,
            &[orphan.clone()],
            None,
            Some("abc".into()),
            3,
        );
        assert_eq!(
            p.summary,
            Summary {
                create: 1,
                update: 0,
                delete: 1,
                unchanged: 0,
                ..Summary::default()
            }
        );
        assert_eq!(p.changes[0].action, Action::Create);
        assert!(p.changes[0].diff.contains("+kind: Deployment"));
        let del = &p.changes[1];
        assert_eq!(
            (del.action, &*del.name, &*del.workspace),
            (Action::Delete, "old", "acme")
        );
        assert!(
            !del.diff.contains("managedFields") && !del.diff.contains("status"),
            "{}",
            del.diff
        );
        assert_eq!(p.api_requests, 3);
        // With an inventory, only what it records is deleted.
        let empty = Inventory::new("dev");
        let p = plan("dev", &desired, &[orphan.clone()], Some(&empty), None, 3);
        assert_eq!(p.summary.delete, 0);
        let mut inv = Inventory::new("dev");
        inv.objects
            .insert(crate::inventory::ObjectRef::of_live(&orphan).unwrap());
        let p = plan("dev", &desired, &[orphan], Some(&inv), None, 3);
        assert_eq!(p.summary.delete, 1);
    }

    #[test]
    fn the_planner_keeps_only_undeclared_live_objects_and_diffs_on_request() {
        let kept = deployment(2, "fhir:1");
        let mut changed = deployment(2, "fhir:1");
        changed["metadata"]["name"] = json!("changed");
        let desired = vec![object(kept.clone()), object(changed.clone())];
        let mut orphan = live_after_apply(&deployment(1, "x"));
        orphan["metadata"]["name"] = json!("old");
        let mut live_changed = live_after_apply(&changed);
        live_changed["spec"]["replicas"] = json!(5);
        let live = [live_after_apply(&kept), live_changed, orphan.clone()];

        let mut planner = Planner::new("dev", &desired, false);
        for l in &live {
            planner.observe(l.clone());
        }
        let (quiet, undeclared) = planner.finish(None, None, 0);
        // Kept as identity and metadata only.
        assert_eq!(undeclared.len(), 1);
        assert_eq!(undeclared[0]["metadata"]["name"], "old");
        assert_eq!(
            undeclared[0]["metadata"]["labels"],
            orphan["metadata"]["labels"]
        );
        assert!(undeclared[0]["metadata"].get("managedFields").is_none());
        assert!(undeclared[0].get("spec").is_none() && undeclared[0].get("status").is_none());
        // The same actions and fields as with diffs, and no diff text.
        let full = plan("dev", &desired, &live, None, None, 0);
        assert_eq!(quiet.summary, full.summary);
        assert_eq!(
            quiet.summary,
            Summary {
                create: 0,
                update: 1,
                delete: 1,
                unchanged: 1,
                ..Summary::default()
            }
        );
        for (q, f) in quiet.changes.iter().zip(&full.changes) {
            assert_eq!((q.action, &q.fields, q.id()), (f.action, &f.fields, f.id()));
            assert!(q.diff.is_empty());
        }
        assert!(full.changes.iter().any(|c| !c.diff.is_empty()));
    }
}
