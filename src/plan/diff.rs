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

use crate::object::Object;
use crate::plan::conceal;
use crate::plan::field_policy::{self, Heal, Ownership, Step, Takeover, Token};
use crate::plan::{Action, Change, FieldAction, FieldChange, LiveVersion};

/// One step of a path into an object.
#[derive(Clone, Debug)]
enum Seg {
    Field(String),
    /// A list item: how it is shown, and the live item (to match `k:` keys).
    Item {
        label: String,
        live: Option<Value>,
        /// Its position in the desired list (to strip it) and the live one,
        /// and its `name` (what ignore rules match).
        desired: Option<usize>,
        index: Option<usize>,
        name: Option<String>,
    },
}

/// A path as ignore rules see it.
fn tokens(path: &[Seg]) -> Vec<Token<'_>> {
    path.iter()
        .map(|seg| match seg {
            Seg::Field(f) => Token::Field(f),
            Seg::Item { name, index, .. } => Token::Item {
                name: name.as_deref(),
                index: *index,
            },
        })
        .collect()
}

/// The path into the desired body, when every item is a declared one.
fn steps(path: &[Seg]) -> Option<Vec<Step>> {
    path.iter()
        .map(|seg| match seg {
            Seg::Field(f) => Some(Step::Field(f.clone())),
            Seg::Item { desired, .. } => desired.map(Step::Item),
        })
        .collect()
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

/// For each desired item, the live item it corresponds to (and where).
fn align<'a>(desired: &[Value], live: &'a [Value]) -> Vec<(String, Option<(usize, &'a Value)>)> {
    if named_list(desired) {
        desired
            .iter()
            .map(|d| {
                let name = item_name(d).unwrap_or_default();
                let l = live
                    .iter()
                    .enumerate()
                    .find(|(_, l)| item_name(l) == Some(name));
                (format!("[name={name}]"), l)
            })
            .collect()
    } else {
        (0..desired.len())
            .map(|i| (format!("[{i}]"), live.get(i).map(|l| (i, l))))
            .collect()
    }
}

/// A declared field whose live value differs.
struct Mismatch {
    path: Vec<Seg>,
    desired: Value,
    live: Option<Value>,
}

/// What [`compare`] needs besides the two values: who owns what live, to
/// foresee lists that would end up with two items of one name.
struct Cx<'a> {
    others: &'a [(&'a str, &'a Value)],
    policy: &'a Ownership,
    kind: &'a str,
    notes: Vec<String>,
}

fn compare(
    desired: &Value,
    live: Option<&Value>,
    path: &mut Vec<Seg>,
    out: &mut Vec<Mismatch>,
    cx: &mut Cx<'_>,
) {
    if path.len() > field_policy::MAX_DEPTH {
        return;
    }
    match desired {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                path.push(Seg::Field(k.clone()));
                compare(v, live.and_then(|l| l.get(k)), path, out, cx);
                path.pop();
            }
        }
        Value::Array(items) if items.iter().any(Value::is_object) => {
            let live_items = live
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or_default();
            if named_list(items) {
                foresee_duplicates(items, live_items, path, cx);
            }
            for (i, (item, (label, l))) in items.iter().zip(align(items, live_items)).enumerate() {
                path.push(Seg::Item {
                    label,
                    live: l.map(|(_, l)| l.clone()),
                    desired: Some(i),
                    index: l.map(|(at, _)| at),
                    name: item_name(item).map(str::to_string),
                });
                compare(item, l.map(|(_, l)| l), path, out, cx);
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

/// A live item of a named list that another field manager owns under a
/// key no declared item has, yet with a declared item's name: the apply
/// adds the declared one beside it, and the API server refuses two items of
/// one name (`spec.ports[1].name: Duplicate value`). Items a reverting
/// manager owns are taken over and removed first, so only the others are
/// named.
fn foresee_duplicates(desired: &[Value], live: &[Value], path: &[Seg], cx: &mut Cx<'_>) {
    for item in live {
        let Some(name) = item_name(item) else {
            continue;
        };
        let Some(declared) = desired.iter().find(|d| item_name(d) == Some(name)) else {
            continue;
        };
        for (manager, fields) in cx.others {
            if cx.policy.reverts(manager) {
                continue;
            }
            let Some(list) = trie_at(fields, path) else {
                continue;
            };
            let Some(key) = list
                .as_object()
                .and_then(|m| m.keys().find(|k| key_matches(k, item)))
            else {
                continue;
            };
            if desired_key_matches(key, declared) {
                continue;
            }
            let mut item_path = path.to_vec();
            item_path.push(Seg::Item {
                label: String::new(),
                live: Some(item.clone()),
                desired: None,
                index: None,
                name: Some(name.to_string()),
            });
            if cx.policy.ignores(cx.kind, &tokens(&item_path), &[manager]) {
                continue;
            }
            let shown = key.strip_prefix("k:").unwrap_or(key);
            cx.notes.push(format!(
                "{}: the apply would add the declared item \"{name}\" beside the live item {shown} that {manager} owns, also named \"{name}\"; the API server refuses two items of one name. Remove that item (kubectl edit), or add {manager} to spec.ownership.revert so a sync takes it over and removes it",
                display(path)
            ));
        }
    }
}

/// The node of a fieldsV1 trie at `path` (walked along the live object).
fn trie_at<'v>(mut node: &'v Value, path: &[Seg]) -> Option<&'v Value> {
    for seg in path {
        node = match seg {
            Seg::Field(f) => node.get(format!("f:{f}"))?,
            Seg::Item {
                live: Some(item), ..
            } => node
                .as_object()
                .and_then(|m| m.iter().find(|(k, _)| key_matches(k, item)).map(|(_, v)| v))?,
            Seg::Item { live: None, .. } => return None,
        };
    }
    Some(node)
}

/// Whether a `k:{...}` key identifies a declared item: the key fields it
/// declares match, and those it leaves out are the server's defaults.
fn desired_key_matches(key: &str, item: &Value) -> bool {
    let Some(json) = key.strip_prefix("k:") else {
        return false;
    };
    let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(json) else {
        return false;
    };
    let mut declared = 0;
    for (k, v) in &fields {
        match item.get(k) {
            Some(d) if d == v => declared += 1,
            Some(_) => return false,
            None => {}
        }
    }
    declared > 0
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
        since: None,
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
                desired: None,
                index: None,
                name: None,
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

/// One reverting manager's entry being walked.
struct Revert<'a> {
    manager: &'a str,
    since: Option<&'a str>,
    policy: &'a Ownership,
    kind: &'a str,
}

/// The items of a live and a desired list that a `k:` key of
/// `managedFields` names, each with its index.
#[allow(clippy::type_complexity)]
fn keyed_items<'l, 'd>(
    key: &str,
    desired: Option<&'d Value>,
    live: Option<&'l Value>,
) -> (Option<(usize, &'l Value)>, Option<(usize, &'d Value)>) {
    let l = live
        .and_then(Value::as_array)
        .and_then(|items| items.iter().enumerate().find(|(_, i)| key_matches(key, i)));
    let d = desired.and_then(Value::as_array).and_then(|items| {
        items
            .iter()
            .enumerate()
            .find(|(_, i)| desired_key_matches(key, i))
    });
    (l, d)
}

/// The path segment of a keyed list item: `[name=...]` when it has a name,
/// its key otherwise.
fn item_segment(item_key: &str, l: Option<(usize, &Value)>, d: Option<(usize, &Value)>) -> Seg {
    let name = l
        .and_then(|(_, i)| item_name(i))
        .or(d.and_then(|(_, i)| item_name(i)));
    let label = match name {
        Some(n) => format!("[name={n}]"),
        None => format!("[{item_key}]"),
    };
    Seg::Item {
        label,
        live: l.map(|(_, i)| i.clone()),
        desired: d.map(|(at, _)| at),
        index: l.map(|(at, _)| at),
        name: name.map(str::to_string),
    }
}

/// Walks a reverting manager's fieldsV1 along the desired and live
/// objects: each field it owns that tenantsync does not declare is drift
/// (a removal, named with the manager and the time), and its fields split
/// into those taken over by the environment's manager and those an ignore
/// rule leaves it (`(taken, kept)`).
fn reverted(
    node: &Value,
    desired: Option<&Value>,
    live: Option<&Value>,
    path: &mut Vec<Seg>,
    r: &Revert<'_>,
    out: &mut Vec<FieldChange>,
) -> (Map<String, Value>, Map<String, Value>) {
    let (mut taken, mut kept) = (Map::new(), Map::new());
    let Some(map) = node.as_object() else {
        return (taken, kept);
    };
    let report = |path: &[Seg], live: &Value, out: &mut Vec<FieldChange>| {
        out.push(FieldChange {
            manager: Some(r.manager.to_string()),
            since: r.since.map(str::to_string),
            ..removal(path, live)
        });
    };
    for (key, child) in map {
        // Status is never compared; past the depth bound, left as it is.
        if key == "." {
            taken.insert(key.clone(), child.clone());
            continue;
        }
        if (path.is_empty() && key == "f:status") || path.len() >= field_policy::MAX_DEPTH {
            kept.insert(key.clone(), child.clone());
            continue;
        }
        // A field with nothing under it (or only its own presence, `.`).
        let whole = child.as_object().is_none_or(|m| m.keys().all(|k| k == "."));
        if let Some(field) = key.strip_prefix("f:") {
            let (d, l) = (
                desired.and_then(|d| d.get(field)),
                live.and_then(|l| l.get(field)),
            );
            path.push(Seg::Field(field.to_string()));
            if r.policy.ignores(r.kind, &tokens(path), &[r.manager]) {
                kept.insert(key.clone(), child.clone());
            } else if d.is_none() && whole {
                if let Some(l) = l {
                    report(path, l, out);
                }
                taken.insert(key.clone(), child.clone());
            } else if d.is_some() && whole {
                taken.insert(key.clone(), child.clone());
            } else {
                let (t, k) = reverted(child, d, l, path, r, out);
                if !t.is_empty() {
                    taken.insert(key.clone(), Value::Object(t));
                }
                if !k.is_empty() {
                    kept.insert(key.clone(), Value::Object(k));
                }
            }
            path.pop();
        } else if let Some(item_key) = key.strip_prefix("k:") {
            let (l, d) = keyed_items(key, desired, live);
            path.push(item_segment(item_key, l, d));
            if r.policy.ignores(r.kind, &tokens(path), &[r.manager]) {
                kept.insert(key.clone(), child.clone());
            } else if d.is_none() {
                if let Some((_, l)) = l {
                    report(path, l, out);
                }
                taken.insert(key.clone(), child.clone());
            } else {
                // The key's fields identify a declared item: declared too,
                // even where the server defaulted them (a port's protocol).
                let mut declared = d.map(|(_, i)| i.clone());
                if let (Some(Value::Object(item)), Ok(Value::Object(key_fields))) =
                    (declared.as_mut(), serde_json::from_str::<Value>(item_key))
                {
                    for (k, v) in key_fields {
                        item.entry(k).or_insert(v);
                    }
                }
                let (t, k) = reverted(child, declared.as_ref(), l.map(|(_, i)| i), path, r, out);
                if !t.is_empty() {
                    taken.insert(key.clone(), Value::Object(t));
                }
                if !k.is_empty() {
                    kept.insert(key.clone(), Value::Object(k));
                }
            }
            path.pop();
        } else if let Some(value) = key.strip_prefix("v:") {
            // A set of plain values (finalizers, ...).
            let value: Value = serde_json::from_str(value).unwrap_or(Value::Null);
            let declared = desired
                .and_then(Value::as_array)
                .is_some_and(|items| items.contains(&value));
            let present = live
                .and_then(Value::as_array)
                .is_some_and(|items| items.contains(&value));
            if !declared && present {
                path.push(Seg::Item {
                    label: format!("[{value}]"),
                    live: Some(value.clone()),
                    desired: None,
                    index: None,
                    name: None,
                });
                if r.policy.ignores(r.kind, &tokens(path), &[r.manager]) {
                    kept.insert(key.clone(), child.clone());
                    path.pop();
                    continue;
                }
                report(path, &value, out);
                path.pop();
            }
            taken.insert(key.clone(), child.clone());
        } else {
            taken.insert(key.clone(), child.clone());
        }
    }
    (taken, kept)
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
pub(super) fn skeleton(mut live: Value) -> Value {
    let Some(map) = live.as_object_mut() else {
        return live;
    };
    map.retain(|k, _| matches!(k.as_str(), "apiVersion" | "kind" | "metadata"));
    if let Some(meta) = map.get_mut("metadata").and_then(Value::as_object_mut) {
        // uid and resourceVersion: a saved plan's delete preconditions.
        meta.retain(|k, _| {
            matches!(
                k.as_str(),
                "name" | "namespace" | "labels" | "annotations" | "uid" | "resourceVersion"
            )
        });
    }
    live
}

/// Metadata the server and controllers own; never part of a diff.
pub(super) fn strip_noise(live: &Value) -> Value {
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

pub(super) fn yaml(v: &Value) -> String {
    crate::object::yaml_emit::to_string(v)
}

pub(super) fn unified(live: &str, desired: &str, id: &str) -> String {
    TextDiff::from_lines(live, desired)
        .unified_diff()
        .context_radius(3)
        .header(&format!("live/{id}"), &format!("desired/{id}"))
        .to_string()
}

/// Diffs one desired object against its live counterpart under the
/// default ownership policy (see [`diff_object_with`]).
pub fn diff_object(desired: &Object, live: Option<&Value>, diffs: bool, manager: &str) -> Change {
    diff_object_with(desired, live, diffs, manager, &Ownership::default())
}

/// Diffs one desired object against its live counterpart; with `diffs`
/// false the change carries no unified diff text (a sync needs only the
/// action and the fields). `policy`: which other managers' fields are
/// drift, and which fields are left to others; what a sync must do besides
/// the apply goes to [`Change::heal`].
pub fn diff_object_with(
    desired: &Object,
    live: Option<&Value>,
    diffs: bool,
    manager: &str,
    policy: &Ownership,
) -> Change {
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
        heal: None,
        live: live.and_then(LiveVersion::of),
    };
    let secret = conceal::is_secret(&desired.api_version, &desired.kind);
    let shown = |mut v: Value| {
        if secret {
            conceal::conceal_body(&mut v);
        }
        v
    };
    let Some(live) = live else {
        change.action = Action::Create;
        if diffs {
            change.diff = unified("", &yaml(&shown(desired.value())), &id);
        }
        return change;
    };
    let body = desired.value();
    let others = fields_of(live, |m| m != manager);
    let owned = fields_of(live, |m| m == manager);
    let mut heal = Heal::default();
    let mut mismatches = Vec::new();
    let mut cx = Cx {
        others: &others,
        policy,
        kind: &desired.kind,
        notes: Vec::new(),
    };
    compare(&body, Some(live), &mut Vec::new(), &mut mismatches, &mut cx);
    let notes = cx.notes;
    for m in mismatches {
        let owners: Vec<&str> = others
            .iter()
            .filter(|(_, fields)| trie_contains(fields, &m.path))
            .map(|(name, _)| *name)
            .collect();
        // Left to others: not drift, and not applied unless ours already.
        if policy.ignores(&desired.kind, &tokens(&m.path), &owners) {
            let ours = owned.iter().any(|(_, f)| trie_contains(f, &m.path));
            if !ours && let Some(steps) = steps(&m.path) {
                heal.strip.push(steps);
            }
            continue;
        }
        let manager = m
            .live
            .as_ref()
            .and_then(|_| owners.first())
            .map(|name| (*name).to_string());
        let since = manager.as_deref().and_then(|name| since_of(live, name));
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
            since,
        });
    }
    for (_, fields) in &owned {
        removed(
            fields,
            Some(&body),
            Some(live),
            &mut Vec::new(),
            &mut change.fields,
        );
    }
    // Hand edits: what reverting managers own is drift, and theirs no more
    // once a sync takes it over.
    let (taken_all, takeover) =
        hand_edits(desired, &body, live, manager, policy, &mut change.fields);
    heal.takeover = takeover;
    if secret {
        conceal::conceal_fields(&mut change.fields);
    }
    if !notes.is_empty() {
        change.note = Some(notes.join("; "));
    }
    if !heal.is_empty() {
        change.heal = Some(Box::new(heal));
    }
    if !change.fields.is_empty() {
        change.action = Action::Update;
        if !diffs {
            return change;
        }
        let mut trie = owned
            .first()
            .map(|(_, f)| (*f).clone())
            .unwrap_or_else(|| Value::Object(Map::new()));
        field_policy::merge_fields(&mut trie, &taken_all, 0);
        let view = project(live, Some(&body), Some(&trie));
        change.diff = unified(&yaml(&shown(view)), &yaml(&shown(body)), &id);
    }
    change
}

/// The fields of managers the policy reverts (hand edits), added to
/// `changes` as drift; returns the fields a sync takes over from them and
/// the takeover of their `managedFields` entries, if any.
fn hand_edits(
    desired: &Object,
    body: &Value,
    live: &Value,
    manager: &str,
    policy: &Ownership,
    changes: &mut Vec<FieldChange>,
) -> (Value, Option<Takeover>) {
    let mut moves = Vec::new();
    let mut takeover = None;
    let mut taken_all = Value::Object(Map::new());
    if let Some(entries) = live
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
    {
        for (i, entry) in entries.iter().enumerate() {
            let Some(name) = entry.get("manager").and_then(Value::as_str) else {
                continue;
            };
            if !policy.reverts(name)
                || entry.get("subresource").and_then(Value::as_str) == Some("status")
            {
                continue;
            }
            let Some(fields) = entry.get("fieldsV1") else {
                continue;
            };
            let r = Revert {
                manager: name,
                since: entry.get("time").and_then(Value::as_str),
                policy,
                kind: &desired.kind,
            };
            let mut found = Vec::new();
            let (taken, kept) = reverted(
                fields,
                Some(body),
                Some(live),
                &mut Vec::new(),
                &r,
                &mut found,
            );
            for f in found {
                if !changes.iter().any(|c| c.path == f.path) {
                    changes.push(f);
                }
            }
            if !taken.is_empty() {
                let taken = Value::Object(taken);
                field_policy::merge_fields(&mut taken_all, &taken, 0);
                moves.push((i, taken, Value::Object(kept)));
            }
        }
        if !moves.is_empty() {
            let api_version = live
                .get("apiVersion")
                .and_then(Value::as_str)
                .unwrap_or(&desired.api_version);
            takeover = Some(Takeover {
                resource_version: live
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                managed_fields: field_policy::take_over(entries, &moves, manager, api_version),
                from: moves
                    .iter()
                    .filter_map(|(i, _, _)| entries[*i].get("manager")?.as_str())
                    .map(str::to_string)
                    .collect(),
            });
        }
    }
    (taken_all, takeover)
}

/// When `manager` last wrote the object (its `managedFields` time).
fn since_of(live: &Value, manager: &str) -> Option<String> {
    live.pointer("/metadata/managedFields")
        .and_then(Value::as_array)?
        .iter()
        .filter(|e| e.get("manager").and_then(Value::as_str) == Some(manager))
        .filter_map(|e| e.get("time").and_then(Value::as_str))
        .max()
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::object::{FIELD_MANAGER, WORKSPACE_LABEL};
    use crate::plan::Summary;
    use crate::plan::pair::{Planner, plan};
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
        let empty = HashSet::new();
        let p = plan("dev", &desired, &[orphan.clone()], Some(&empty), None, 3);
        assert_eq!(p.summary.delete, 0);
        let recorded = HashSet::from([crate::object::live_key(&orphan).unwrap()]);
        let p = plan("dev", &desired, &[orphan.clone()], Some(&recorded), None, 3);
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

    fn with_entry(mut live: Value, entry: Value) -> Value {
        live["metadata"]["managedFields"]
            .as_array_mut()
            .unwrap()
            .push(entry);
        live
    }

    fn debug_env_live(desired: &Value) -> Value {
        let mut live = live_after_apply(desired);
        live["spec"]["template"]["spec"]["containers"][0]["env"] =
            json!([{"name": "DEBUG", "value": "1"}]);
        with_entry(
            live,
            json!({"manager": "kubectl-patch", "operation": "Update", "apiVersion": "apps/v1",
                "time": "2026-12-02T10:00:00Z", "fieldsType": "FieldsV1", "fieldsV1":
                {"f:spec": {"f:template": {"f:spec": {"f:containers": {"k:{\"name\":\"fhir\"}": {
                    "f:env": {".": {}, "k:{\"name\":\"DEBUG\"}": {".": {}, "f:name": {}, "f:value": {}}}}}}}}}}),
        )
    }

    #[test]
    fn a_hand_added_env_var_is_drift_with_its_manager_and_time() {
        let desired = object(deployment(2, "fhir:1"));
        let live = debug_env_live(&desired.value());
        let c = diff_object(&desired, Some(&live), true, FIELD_MANAGER);
        assert_eq!(c.action, Action::Update);
        assert_eq!(c.fields.len(), 1, "{:?}", c.fields);
        let f = &c.fields[0];
        assert_eq!(
            f.path,
            "spec.template.spec.containers[name=fhir].env[name=DEBUG]"
        );
        assert_eq!(f.action, FieldAction::Remove);
        assert_eq!(f.live, Some(json!({"name": "DEBUG", "value": "1"})));
        assert_eq!(f.manager.as_deref(), Some("kubectl-patch"));
        assert_eq!(f.since.as_deref(), Some("2026-12-02T10:00:00Z"));
        assert!(c.diff.contains("DEBUG"), "{}", c.diff);
        // The sync takes the field over: kubectl-patch's entry goes, its
        // fields are tenantsync's, on the listed resourceVersion.
        let t = c.heal.as_ref().unwrap().takeover.as_ref().unwrap();
        assert_eq!(t.resource_version, "42");
        assert_eq!(t.from, vec!["kubectl-patch".to_string()]);
        let entries = t.managed_fields.as_array().unwrap();
        assert!(entries.iter().all(|e| e["manager"] != "kubectl-patch"));
        let own = entries
            .iter()
            .find(|e| e["manager"] == FIELD_MANAGER)
            .unwrap();
        assert!(trie_contains(
            &own["fieldsV1"],
            &[
                Seg::Field("spec".into()),
                Seg::Field("template".into()),
                Seg::Field("spec".into()),
                Seg::Field("containers".into()),
                Seg::Item {
                    label: String::new(),
                    live: Some(json!({"name": "fhir"})),
                    desired: None,
                    index: None,
                    name: None
                },
                Seg::Field("env".into()),
            ]
        ));
    }

    #[test]
    fn with_revert_empty_hand_edits_are_left_alone() {
        let desired = object(deployment(2, "fhir:1"));
        let live = debug_env_live(&desired.value());
        let none = Ownership {
            revert: vec![],
            ignore: vec![],
        };
        let c = diff_object_with(&desired, Some(&live), true, FIELD_MANAGER, &none);
        assert_eq!(c.action, Action::Unchanged, "{:?}", c.fields);
        assert!(c.heal.is_none());
    }

    #[test]
    fn a_hand_added_label_and_configmap_key_are_drift() {
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "c", "namespace": "n", "labels": {"app": "x"}}, "data": {"a": "1"}});
        let mut live = cm.clone();
        live["metadata"]["resourceVersion"] = json!("7");
        live["metadata"]["labels"]["hand"] = json!("yes");
        live["data"]["extra"] = json!("2");
        live["metadata"]["managedFields"] = json!([
            {"manager": "tenantsync/dev", "operation": "Apply", "fieldsV1":
                {"f:metadata": {"f:labels": {"f:app": {}}}, "f:data": {"f:a": {}}}},
            {"manager": "kubectl-label", "operation": "Update", "time": "t1", "fieldsV1":
                {"f:metadata": {"f:labels": {"f:hand": {}}}}},
            {"manager": "kubectl-edit", "operation": "Update", "time": "t2", "fieldsV1":
                {"f:data": {"f:extra": {}}}}
        ]);
        let c = diff_object(&object(cm), Some(&live), false, "tenantsync/dev");
        let got: Vec<_> = c
            .fields
            .iter()
            .map(|f| (f.path.as_str(), f.manager.as_deref()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("metadata.labels.hand", Some("kubectl-label")),
                ("data.extra", Some("kubectl-edit"))
            ]
        );
        let t = c.heal.unwrap().takeover.unwrap();
        assert_eq!(t.managed_fields.as_array().unwrap().len(), 1);
        assert_eq!(
            t.managed_fields[0]["fieldsV1"],
            json!({"f:metadata": {"f:labels": {"f:app": {}, "f:hand": {}}}, "f:data": {"f:a": {}, "f:extra": {}}})
        );
    }

    #[test]
    fn ignored_fields_are_not_drift_and_are_left_out_of_the_apply() {
        let desired = object(deployment(2, "fhir:1"));
        let mut live = live_after_apply(&desired.value());
        live["spec"]["replicas"] = json!(5);
        // The autoscaler owns replicas now; tenantsync no more.
        live["metadata"]["managedFields"][0]["fieldsV1"]["f:spec"]
            .as_object_mut()
            .unwrap()
            .remove("f:replicas");
        let live = with_entry(
            live,
            json!({"manager": "horizontal-pod-autoscaler", "operation": "Update",
            "subresource": "scale", "fieldsV1": {"f:spec": {"f:replicas": {}}}}),
        );
        let policy = Ownership {
            ignore: vec![crate::declare::model::IgnoreRule {
                kinds: vec!["Deployment".into()],
                paths: vec!["/spec/replicas".into()],
                managers: vec!["horizontal-pod-autoscaler".into()],
            }],
            ..Ownership::default()
        };
        let c = diff_object_with(&desired, Some(&live), true, FIELD_MANAGER, &policy);
        assert_eq!(c.action, Action::Unchanged, "{:?}", c.fields);
        let heal = c.heal.unwrap();
        assert_eq!(
            heal.strip,
            vec![vec![
                Step::Field("spec".into()),
                Step::Field("replicas".into())
            ]]
        );
        assert!(heal.takeover.is_none());
        // Without the rule, the autoscaler's value is drift (as before).
        let c = diff_object(&desired, Some(&live), true, FIELD_MANAGER);
        assert_eq!(c.action, Action::Update);
        assert_eq!(
            c.fields[0].manager.as_deref(),
            Some("horizontal-pod-autoscaler")
        );
        // An ignored field a reverting manager set is neither drift nor
        // taken over.
        let mut live = live_after_apply(&desired.value());
        live["spec"]["template"]["spec"]["containers"][0]["env"] =
            json!([{"name": "DEBUG", "value": "1"}]);
        let live = with_entry(
            live,
            json!({"manager": "kubectl-patch", "operation": "Update", "fieldsV1":
            {"f:spec": {"f:template": {"f:spec": {"f:containers": {"k:{\"name\":\"fhir\"}": {
                "f:env": {"k:{\"name\":\"DEBUG\"}": {".": {}, "f:name": {}, "f:value": {}}}}}}}}}}),
        );
        let policy = Ownership {
            ignore: vec![crate::declare::model::IgnoreRule {
                paths: vec!["/spec/template/spec/containers/*/env/DEBUG".into()],
                ..Default::default()
            }],
            ..Ownership::default()
        };
        let c = diff_object_with(&desired, Some(&live), true, FIELD_MANAGER, &policy);
        assert_eq!(c.action, Action::Unchanged, "{:?}", c.fields);
        assert!(c.heal.is_none());
    }

    fn service(port: i64) -> Value {
        json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "fhir", "namespace": "n"},
            "spec": {"selector": {"app": "fhir"}, "ports": [{"name": "http", "port": port, "targetPort": 8080}]}})
    }

    fn service_after_port_patch(manager: &str) -> Value {
        let mut live = service(81);
        live["metadata"]["resourceVersion"] = json!("9");
        live["spec"]["ports"][0]["protocol"] = json!("TCP");
        live["metadata"]["managedFields"] = json!([
            {"manager": "tenantsync/dev", "operation": "Apply", "fieldsV1": {"f:spec": {"f:selector": {}, "f:ports": {}}}},
            {"manager": manager, "operation": "Update", "time": "t", "fieldsV1": {"f:spec": {"f:ports": {
                "k:{\"port\":81,\"protocol\":\"TCP\"}": {".": {}, "f:name": {}, "f:port": {}, "f:protocol": {}, "f:targetPort": {}}}}}}
        ]);
        live
    }

    #[test]
    fn a_hand_changed_service_port_is_taken_over_and_a_foreign_one_foreseen() {
        let desired = object(service(80));
        let live = service_after_port_patch("kubectl-patch");
        let c = diff_object(&desired, Some(&live), true, "tenantsync/dev");
        assert_eq!(c.action, Action::Update);
        assert!(
            c.fields.iter().any(|f| f.path == "spec.ports[name=http]"
                && f.action == FieldAction::Remove
                && f.manager.as_deref() == Some("kubectl-patch")),
            "{:?}",
            c.fields
        );
        assert!(c.note.is_none(), "{:?}", c.note);
        assert!(c.heal.unwrap().takeover.is_some());
        // A manager that is not reverted keeps its port: plan says the
        // apply will be refused, and names the item and its manager.
        let live = service_after_port_patch("port-operator");
        let c = diff_object(&desired, Some(&live), true, "tenantsync/dev");
        let note = c.note.unwrap();
        assert!(
            note.contains("spec.ports")
                && note.contains("\"port\":81")
                && note.contains("port-operator")
                && note.contains("spec.ownership.revert"),
            "{note}"
        );
    }

    #[test]
    fn a_declared_port_without_its_protocol_is_not_foreign() {
        let desired = object(service(80));
        let mut live = service(80);
        live["spec"]["ports"][0]["protocol"] = json!("TCP");
        live["metadata"]["managedFields"] = json!([
            {"manager": "before-first-apply", "operation": "Update", "fieldsV1": {"f:spec": {"f:ports": {
                "k:{\"port\":80,\"protocol\":\"TCP\"}": {".": {}, "f:name": {}, "f:port": {}, "f:protocol": {}, "f:targetPort": {}}}}}}
        ]);
        let c = diff_object(&desired, Some(&live), true, "tenantsync/dev");
        assert_eq!(c.action, Action::Unchanged, "{:?}", c.fields);
        // Taken over all the same, so later edits by hand are undone.
        let mf = c.heal.unwrap().takeover.unwrap().managed_fields;
        assert_eq!(mf.as_array().unwrap().len(), 1);
        assert_eq!(mf[0]["manager"], "tenantsync/dev");
    }
}
