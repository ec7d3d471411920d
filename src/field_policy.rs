//! The field ownership policy (pure: no client, no I/O).
//!
//! Server-side apply only looks at the fields tenantsync declares, so a
//! hand edit that *adds* something (an env var, a container, a label, a
//! ConfigMap key) is invisible to it and never undone. The policy of an
//! environment ([`Ownership`], `spec.ownership`) says instead:
//! - fields owned by a `revert` field manager (kubectl by default) are
//!   drift: [`crate::diff`] reports each one with its manager and time, and
//!   before a sync applies, their ownership is moved to the environment's
//!   field manager ([`take_over`]), so the apply removes what Git does not
//!   declare, as Flux's kustomize-controller does;
//! - fields an `ignore` rule matches are never drift and never overwritten:
//!   the apply leaves them out ([`Heal::strip`]).

use serde_json::{Map, Value};

pub use crate::model::{IgnoreRule, Ownership};

/// How deep a `managedFields` trie is walked; deeper entries are left as
/// they are (no Kubernetes object nests this deep).
pub const MAX_DEPTH: usize = 64;

/// `*` matches any run of characters, everything else itself.
pub fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, rest) = (parts[0], &parts[1..]);
    let Some(mut remaining) = text.strip_prefix(first) else {
        return false;
    };
    let last = rest.len() - 1;
    for (i, part) in rest.iter().enumerate() {
        if i == last {
            return remaining.ends_with(part);
        }
        match remaining.find(part) {
            Some(at) => remaining = &remaining[at + part.len()..],
            None => return false,
        }
    }
    true
}

/// Why a field manager pattern is refused: only `*` is special here, so a
/// character other glob dialects treat as special (`?`, `[`, `{`, `\`)
/// would silently match only itself.
pub fn pattern_problem(pattern: &str) -> Option<String> {
    let c = pattern.chars().find(|c| "?[]{}\\".contains(*c))?;
    Some(format!(
        "`{pattern}` uses `{c}`, which is not a wildcard here (only `*` is: any characters), so it would match only a field manager of exactly that name; remove it"
    ))
}

/// Why an ignore rule's JSON pointer is refused: a `~` that is not the
/// escape `~0` (for `~`) or `~1` (for `/`) (RFC 6901).
pub fn pointer_problem(pointer: &str) -> Option<String> {
    let mut chars = pointer.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '~' && !matches!(chars.peek(), Some('0' | '1')) {
            let bad: String = std::iter::once('~').chain(chars.next()).collect();
            return Some(format!(
                "`{pointer}` has `{bad}`, which is not a JSON pointer escape (`~0` stands for `~`, `~1` for `/`)"
            ));
        }
    }
    None
}

/// One step of a field's path, as an ignore rule's pointer matches it: a
/// field by name, a list item by its `name` or position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Token<'a> {
    Field(&'a str),
    Item {
        name: Option<&'a str>,
        index: Option<usize>,
    },
}

fn segment_matches(segment: &str, token: &Token<'_>) -> bool {
    if segment == "*" {
        return true;
    }
    // JSON pointer escapes.
    let segment = segment.replace("~1", "/").replace("~0", "~");
    match token {
        Token::Field(f) => *f == segment,
        Token::Item { name, index } => {
            name.is_some_and(|n| n == segment)
                || index.is_some_and(|i| segment.parse::<usize>().ok() == Some(i))
        }
    }
}

/// Whether the pointer covers the path (the field itself or one above it).
fn pointer_covers(pointer: &str, path: &[Token<'_>]) -> bool {
    let segments: Vec<&str> = pointer.split('/').skip(1).collect();
    segments.len() <= path.len()
        && segments
            .iter()
            .zip(path)
            .all(|(s, t)| segment_matches(s, t))
}

impl Ownership {
    /// Whether `manager`'s edits are drift. The environment's own manager
    /// and tenantsync's legacy one never are.
    pub fn reverts(&self, manager: &str) -> bool {
        !manager.starts_with(crate::diff::FIELD_MANAGER)
            && self.revert.iter().any(|p| glob(p, manager))
    }

    /// Whether the field at `path` of a `kind` object, owned live by
    /// `owners`, is left to others.
    pub fn ignores(&self, kind: &str, path: &[Token<'_>], owners: &[&str]) -> bool {
        self.ignore
            .iter()
            .any(|rule| rule.covers(kind, path, owners))
    }
}

impl IgnoreRule {
    fn covers(&self, kind: &str, path: &[Token<'_>], owners: &[&str]) -> bool {
        (self.kinds.is_empty() || self.kinds.iter().any(|k| k == kind))
            && (self.paths.is_empty() || self.paths.iter().any(|p| pointer_covers(p, path)))
            && (self.managers.is_empty()
                || self
                    .managers
                    .iter()
                    .any(|m| owners.iter().any(|o| glob(m, o))))
            && !(self.paths.is_empty() && self.managers.is_empty())
    }
}

/// A step into a desired body, for [`Heal::strip`].
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Step {
    Field(String),
    /// A list item by its position in the desired list.
    Item(usize),
}

/// What a sync does to an object besides applying it, worked out by the
/// plan from the listed object (so no further reads).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Heal {
    /// The reverting managers' fields moved to the environment's manager.
    pub takeover: Option<Takeover>,
    /// Declared fields an ignore rule leaves to others: left out of the
    /// applied body, so they are neither overwritten nor a conflict.
    pub strip: Vec<Vec<Step>>,
}

impl Heal {
    pub fn is_empty(&self) -> bool {
        self.takeover.is_none() && self.strip.is_empty()
    }
}

/// `metadata.managedFields` to write before the apply, on the condition
/// that the object is still at `resource_version`.
#[derive(Clone, Debug, PartialEq)]
pub struct Takeover {
    pub resource_version: String,
    pub managed_fields: Value,
    /// The managers whose fields are taken (for messages).
    pub from: Vec<String>,
}

/// The desired body without the stripped fields.
pub fn strip(mut body: Value, paths: &[Vec<Step>]) -> Value {
    // Later list items first, so earlier positions stay valid.
    let mut paths: Vec<&Vec<Step>> = paths.iter().collect();
    paths.sort_by_key(|p| std::cmp::Reverse(*p));
    for path in paths {
        remove_at(&mut body, path);
    }
    body
}

fn remove_at(node: &mut Value, path: &[Step]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut node = node;
    for step in parents {
        let next = match step {
            Step::Field(f) => node.get_mut(f.as_str()),
            Step::Item(i) => node.get_mut(*i),
        };
        match next {
            Some(n) => node = n,
            None => return,
        }
    }
    match (last, node) {
        (Step::Field(f), Value::Object(map)) => {
            map.remove(f);
        }
        (Step::Item(i), Value::Array(items)) if *i < items.len() => {
            items.remove(*i);
        }
        _ => {}
    }
}

/// Union of two fieldsV1 tries, into `into`.
pub fn merge_fields(into: &mut Value, from: &Value, depth: usize) {
    let (Some(into), Some(from)) = (into.as_object_mut(), from.as_object()) else {
        return;
    };
    for (k, v) in from {
        match into.get_mut(k) {
            Some(existing) if depth < MAX_DEPTH => merge_fields(existing, v, depth + 1),
            Some(_) => {}
            None => {
                into.insert(k.clone(), v.clone());
            }
        }
    }
}

/// Whether a fieldsV1 trie holds no field.
pub fn is_empty_trie(v: &Value) -> bool {
    v.as_object().is_none_or(Map::is_empty)
}

/// `managedFields` with the `taken` tries moved from their managers'
/// entries (by position) into `manager`'s Apply entry, created when
/// missing. `kept` replaces an entry's fields with what stays its own
/// (ignored fields); an entry left empty is dropped.
pub fn take_over(
    managed_fields: &[Value],
    moves: &[(usize, Value, Value)],
    manager: &str,
    api_version: &str,
) -> Value {
    let mut own: Option<Value> = None;
    let mut out: Vec<Value> = Vec::new();
    for (i, entry) in managed_fields.iter().enumerate() {
        let is_own = entry.get("manager").and_then(Value::as_str) == Some(manager)
            && entry.get("operation").and_then(Value::as_str) == Some("Apply")
            && entry.get("subresource").is_none();
        if is_own && own.is_none() {
            own = Some(entry.clone());
            out.push(Value::Null); // placeholder: own entry keeps its place
            continue;
        }
        match moves.iter().find(|(at, _, _)| *at == i) {
            Some((_, _, kept)) if is_empty_trie(kept) => {}
            Some((_, _, kept)) => {
                let mut e = entry.clone();
                e["fieldsV1"] = kept.clone();
                out.push(e);
            }
            None => out.push(entry.clone()),
        }
    }
    let mut own = own.unwrap_or_else(|| {
        out.push(Value::Null);
        serde_json::json!({
            "manager": manager,
            "operation": "Apply",
            "apiVersion": api_version,
            "fieldsType": "FieldsV1",
            "fieldsV1": {},
        })
    });
    if own.get("fieldsV1").is_none_or(|f| !f.is_object()) {
        own["fieldsV1"] = Value::Object(Map::new());
    }
    for (_, taken, _) in moves {
        if let Some(fields) = own.get_mut("fieldsV1") {
            merge_fields(fields, taken, 0);
        }
    }
    let out: Vec<Value> = out
        .into_iter()
        .map(|e| if e.is_null() { own.clone() } else { e })
        .collect();
    Value::Array(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn globs_match_kubectl_managers() {
        assert!(glob("kubectl*", "kubectl-patch"));
        assert!(glob("kubectl*", "kubectl"));
        assert!(!glob("kubectl*", "my-kubectl"));
        assert!(glob("*-injector", "istio-injector"));
        assert!(glob("a*b*c", "aXXbYYc"));
        assert!(!glob("a*b*c", "aXXbYY"));
        assert!(glob("before-first-apply", "before-first-apply"));
        assert!(!glob("before-first-apply", "before-first-apply2"));
    }

    #[test]
    fn the_default_policy_reverts_kubectl_but_never_tenantsync() {
        let p = Ownership::default();
        for m in [
            "kubectl-edit",
            "kubectl-patch",
            "kubectl-label",
            "before-first-apply",
        ] {
            assert!(p.reverts(m), "{m}");
        }
        for m in [
            "tenantsync/dev",
            "tenantsync",
            "kube-controller-manager",
            "horizontal-pod-autoscaler",
        ] {
            assert!(!p.reverts(m), "{m}");
        }
        let none = Ownership {
            revert: vec![],
            ignore: vec![],
        };
        assert!(!none.reverts("kubectl-patch"));
    }

    #[test]
    fn ignore_rules_match_kind_pointer_and_owner() {
        let p = Ownership {
            revert: vec![],
            ignore: vec![
                IgnoreRule {
                    kinds: vec!["Deployment".into()],
                    paths: vec!["/spec/replicas".into()],
                    managers: vec!["horizontal-pod-autoscaler".into()],
                },
                IgnoreRule {
                    kinds: vec![],
                    paths: vec!["/spec/template/spec/containers/*/image".into()],
                    managers: vec![],
                },
                IgnoreRule {
                    kinds: vec![],
                    paths: vec![],
                    managers: vec!["*-injector".into()],
                },
            ],
        };
        let replicas = [Token::Field("spec"), Token::Field("replicas")];
        assert!(p.ignores("Deployment", &replicas, &["horizontal-pod-autoscaler"]));
        assert!(!p.ignores("Deployment", &replicas, &["kubectl"]));
        assert!(!p.ignores("StatefulSet", &replicas, &["horizontal-pod-autoscaler"]));
        let image = [
            Token::Field("spec"),
            Token::Field("template"),
            Token::Field("spec"),
            Token::Field("containers"),
            Token::Item {
                name: Some("fhir"),
                index: Some(0),
            },
            Token::Field("image"),
        ];
        assert!(p.ignores("Deployment", &image, &[]));
        assert!(
            !p.ignores("Deployment", &image[..4], &[]),
            "above the pointer"
        );
        assert!(p.ignores("Service", &image[..2], &["istio-injector"]));
        // A rule with neither paths nor managers matches nothing.
        let empty = Ownership {
            revert: vec![],
            ignore: vec![IgnoreRule::default()],
        };
        assert!(!empty.ignores("Deployment", &replicas, &["x"]));
    }

    #[test]
    fn stripping_removes_fields_and_items_back_to_front() {
        let body = json!({"spec": {"replicas": 2, "template": {"spec": {"containers": [
            {"name": "a", "image": "x"}, {"name": "b", "image": "y"}, {"name": "c"}]}}}});
        let c = |i| {
            vec![
                Step::Field("spec".into()),
                Step::Field("template".into()),
                Step::Field("spec".into()),
                Step::Field("containers".into()),
                Step::Item(i),
            ]
        };
        let mut image = c(1);
        image.push(Step::Field("image".into()));
        let out = strip(
            body,
            &[
                vec![Step::Field("spec".into()), Step::Field("replicas".into())],
                c(0),
                image,
                c(2),
                vec![Step::Field("nothing".into()), Step::Item(9)],
            ],
        );
        assert_eq!(
            out,
            json!({"spec": {"template": {"spec": {"containers": [{"name": "b"}]}}}})
        );
    }

    #[test]
    fn taking_over_merges_into_the_environments_entry_and_keeps_the_rest() {
        let entries = vec![
            json!({"manager": "tenantsync/dev", "operation": "Apply", "apiVersion": "v1",
                   "fieldsType": "FieldsV1", "fieldsV1": {"f:data": {"f:a": {}}}}),
            json!({"manager": "kubectl-patch", "operation": "Update", "apiVersion": "v1",
                   "fieldsType": "FieldsV1", "fieldsV1": {"f:data": {"f:extra": {}}, "f:metadata": {"f:labels": {"f:x": {}}}}}),
            json!({"manager": "hpa", "operation": "Update", "apiVersion": "v1",
                   "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:replicas": {}}}}),
        ];
        let moves = vec![(
            1,
            json!({"f:data": {"f:extra": {}}}),
            json!({"f:metadata": {"f:labels": {"f:x": {}}}}),
        )];
        let out = take_over(&entries, &moves, "tenantsync/dev", "v1");
        let out = out.as_array().unwrap();
        assert_eq!(out.len(), 3);
        assert_eq!(
            out[0]["fieldsV1"],
            json!({"f:data": {"f:a": {}, "f:extra": {}}})
        );
        assert_eq!(out[1]["manager"], "kubectl-patch");
        assert_eq!(
            out[1]["fieldsV1"],
            json!({"f:metadata": {"f:labels": {"f:x": {}}}})
        );
        assert_eq!(out[2], entries[2]);
        // Everything taken: the entry goes; no own entry yet: one is made.
        let out = take_over(
            &entries[1..],
            &[(0, entries[1]["fieldsV1"].clone(), json!({}))],
            "tenantsync/dev",
            "v1",
        );
        let out = out.as_array().unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out[0]["manager"], "hpa");
        assert_eq!(out[1]["manager"], "tenantsync/dev");
        assert_eq!(out[1]["operation"], "Apply");
        assert_eq!(out[1]["fieldsV1"], entries[1]["fieldsV1"]);
    }
}
