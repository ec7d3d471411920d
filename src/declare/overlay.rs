//! Kustomize-style overlay merge of positioned documents.
//!
//! Rules, applied recursively (documented in README, "Overlays"):
//! - mapping over mapping: keys merge deeply; a `null` value deletes the key
//!   (RFC 7386 JSON Merge Patch);
//! - list of named items over list of named items (every item a mapping with
//!   a string `name`): items merge by `name`, new names are appended in patch
//!   order, and an item `{name: x, $patch: delete}` removes `x`;
//! - anything else: the patch value replaces the base value.
//!
//! Merged nodes keep the position of the file they came from, so errors found
//! after the merge still point at the right file and line.

use crate::declare::yaml::{Key, Node, Pos, Value};

/// The marker that deletes a named list item (as in strategic merge patch).
pub const PATCH_KEY: &str = "$patch";

/// A patch that cannot be applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OverlayError {
    pub pos: Pos,
    pub pointer: String,
    pub message: String,
}

/// How deep a merge descends. Parsed documents are at most
/// [`crate::declare::yaml::Limits::max_depth`] deep, so this is never reached by
/// them; it bounds the recursion whatever a caller hands in.
pub const MAX_MERGE_DEPTH: usize = 256;

/// Merges `patch` into `base` in place. Errors are collected, merging goes on.
pub fn merge(base: &mut Node, patch: &Node, pointer: &str, errors: &mut Vec<OverlayError>) {
    merge_at(base, patch, pointer, errors, 0);
}

fn too_deep(patch: &Node, pointer: &str, errors: &mut Vec<OverlayError>) {
    errors.push(OverlayError {
        pos: patch.pos,
        pointer: pointer.to_string(),
        message: format!("patch nests deeper than {MAX_MERGE_DEPTH} levels"),
    });
}

fn merge_at(
    base: &mut Node,
    patch: &Node,
    pointer: &str,
    errors: &mut Vec<OverlayError>,
    depth: usize,
) {
    if depth > MAX_MERGE_DEPTH {
        too_deep(patch, pointer, errors);
        return;
    }
    let next = depth + 1;
    match (&mut base.value, &patch.value) {
        (Value::Map(base_entries), Value::Map(patch_entries)) => {
            for (key, value) in patch_entries {
                let child = format!("{pointer}/{}", escape(&key.name));
                let existing = base_entries.iter().position(|(k, _)| k.name == key.name);
                match (existing, value.is_null()) {
                    (Some(i), true) => {
                        base_entries.remove(i);
                    }
                    (None, true) => {}
                    (Some(i), false) => {
                        merge_at(&mut base_entries[i].1, value, &child, errors, next)
                    }
                    (None, false) => {
                        base_entries.push((key.clone(), fresh(value, &child, errors, next)));
                    }
                }
            }
        }
        (Value::Seq(base_items), Value::Seq(patch_items))
            if is_named_list(base_items)
                && is_named_list(patch_items)
                && !patch_items.is_empty() =>
        {
            for item in patch_items {
                let name = item_name(item).unwrap_or_default().to_string();
                let child = format!("{pointer}/{}", escape(&name));
                let existing = base_items
                    .iter()
                    .position(|b| item_name(b) == Some(name.as_str()));
                match (existing, patch_marker(item, &child, errors)) {
                    (Some(i), Marker::Delete) => {
                        base_items.remove(i);
                    }
                    (None, Marker::Delete) => errors.push(OverlayError {
                        pos: item.pos,
                        pointer: child,
                        message: format!("patch deletes `{name}`, which the base does not have"),
                    }),
                    (Some(i), Marker::Merge) => {
                        let stripped = without_marker(item);
                        merge_at(&mut base_items[i], &stripped, &child, errors, next);
                    }
                    (None, Marker::Merge) => {
                        base_items.push(fresh(&without_marker(item), &child, errors, next));
                    }
                    (_, Marker::Invalid) => {}
                }
            }
        }
        _ => *base = fresh(patch, pointer, errors, next),
    }
}

/// A patch as it reads on its own: `null`s (deletions) dropped. Used to
/// check a layer file against its schema, where `null` is a valid marker.
pub fn without_deletions(patch: &Node) -> Node {
    fresh(patch, "", &mut Vec::new(), 0)
}

/// A patch value placed where the base has nothing: merged into an empty
/// value of its own type so that nulls and markers inside it are handled.
///
/// An empty list is taken as it is: it is "named" (no item lacks a name) but
/// merging it into an empty list would hand it back here forever (the stack
/// overflow of issue 13).
fn fresh(patch: &Node, pointer: &str, errors: &mut Vec<OverlayError>, depth: usize) -> Node {
    if depth > MAX_MERGE_DEPTH {
        too_deep(patch, pointer, errors);
        return Node::new(Value::Null, patch.pos);
    }
    match &patch.value {
        Value::Map(_) => {
            let mut node = Node::new(Value::Map(Vec::new()), patch.pos);
            merge_at(&mut node, patch, pointer, errors, depth);
            node
        }
        Value::Seq(items) if !items.is_empty() && is_named_list(items) => {
            let mut node = Node::new(Value::Seq(Vec::new()), patch.pos);
            merge_at(&mut node, patch, pointer, errors, depth);
            node
        }
        _ => patch.clone(),
    }
}

enum Marker {
    Merge,
    Delete,
    Invalid,
}

fn patch_marker(item: &Node, pointer: &str, errors: &mut Vec<OverlayError>) -> Marker {
    match item.get(PATCH_KEY) {
        None => Marker::Merge,
        Some(v) if v.as_str() == Some("delete") => Marker::Delete,
        Some(v) => {
            errors.push(OverlayError {
                pos: v.pos,
                pointer: format!("{pointer}/{PATCH_KEY}"),
                message: "`$patch` only accepts `delete`".to_string(),
            });
            Marker::Invalid
        }
    }
}

fn without_marker(item: &Node) -> Node {
    match &item.value {
        Value::Map(entries) => Node::new(
            Value::Map(
                entries
                    .iter()
                    .filter(|(k, _)| k.name != PATCH_KEY)
                    .cloned()
                    .collect::<Vec<(Key, Node)>>(),
            ),
            item.pos,
        ),
        _ => item.clone(),
    }
}

fn item_name(item: &Node) -> Option<&str> {
    item.get("name").and_then(Node::as_str)
}

fn is_named_list(items: &[Node]) -> bool {
    items.iter().all(|i| item_name(i).is_some())
}

fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::declare::yaml::{FileId, Limits, parse};
    use proptest::prelude::*;

    fn y(text: &str) -> Node {
        parse(FileId(0), text, Limits::default()).unwrap()
    }

    fn merged(base: &str, patch: &str) -> (serde_json::Value, Vec<OverlayError>) {
        let mut b = y(base);
        let mut errors = Vec::new();
        merge(&mut b, &y(patch), "", &mut errors);
        (b.to_json(), errors)
    }

    #[test]
    fn an_empty_list_where_the_base_has_none_does_not_overflow_the_stack() {
        let (j, e) = merged("a: 1\n", "revert: []\nb: {c: []}\n");
        assert!(e.is_empty());
        assert_eq!(j, serde_json::json!({"a": 1, "revert": [], "b": {"c": []}}));
        assert_eq!(
            without_deletions(&y("x: []\n")).to_json(),
            serde_json::json!({"x": []})
        );
        // Over a base list, an empty one replaces it.
        let (j, _) = merged("revert: [kubectl]\n", "revert: []\n");
        assert_eq!(j, serde_json::json!({"revert": []}));
    }

    #[test]
    fn maps_merge_deeply_and_null_deletes() {
        let (j, e) = merged(
            "a: {b: 1, c: 2}\nd: 3\n",
            "a: {c: 5, x: {y: null, z: 1}}\nd: null\n",
        );
        assert!(e.is_empty());
        assert_eq!(j, serde_json::json!({"a": {"b": 1, "c": 5, "x": {"z": 1}}}));
    }

    #[test]
    fn named_lists_merge_by_name_and_delete_with_marker() {
        let (j, e) = merged(
            "s: [{name: a, r: 1}, {name: b, r: 1}, {name: c}]\n",
            "s: [{name: b, r: 3}, {name: a, $patch: delete}, {name: d, r: 4}]\n",
        );
        assert!(e.is_empty(), "{e:?}");
        assert_eq!(
            j,
            serde_json::json!({"s": [{"name": "b", "r": 3}, {"name": "c"}, {"name": "d", "r": 4}]})
        );
    }

    #[test]
    fn deleting_a_missing_item_is_an_error_with_position() {
        let (_, e) = merged("s: [{name: a}]\n", "s:\n  - name: zz\n    $patch: delete\n");
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].pointer, "/s/zz");
        assert_eq!(e[0].pos.line, 2);
        assert!(e[0].message.contains("`zz`"));
    }

    /// Issue 13: an empty list counts as a named list, and `merge` and
    /// `fresh` handed it to each other until the stack overflowed.
    #[test]
    fn empty_lists_replace_without_recursing_forever() {
        for (base, patch, expected) in [
            ("p: [{name: a}]\n", "p: []\n", serde_json::json!({"p": []})),
            ("x: 1\n", "p: []\n", serde_json::json!({"x": 1, "p": []})),
            (
                "p: {o: [a]}\n",
                "p: {o: []}\n",
                serde_json::json!({"p": {"o": []}}),
            ),
            (
                "p: 3\n",
                "p: {name: []}\n",
                serde_json::json!({"p": {"name": []}}),
            ),
            (
                "p: [{name: a}]\n",
                "p: [{name: b, t: []}]\n",
                serde_json::json!({"p": [{"name": "a"}, {"name": "b", "t": []}]}),
            ),
            ("{}", "[]", serde_json::json!([])),
        ] {
            let (j, e) = merged(base, patch);
            assert!(e.is_empty(), "{e:?}");
            assert_eq!(j, expected, "{base} + {patch}");
        }
        assert_eq!(
            without_deletions(&y("a: []\n")).to_json(),
            serde_json::json!({"a": []})
        );
    }

    #[test]
    fn merging_past_the_depth_bound_is_an_error_not_a_crash() {
        let mut deep = Node::new(Value::Str("x".into()), Pos::default());
        for _ in 0..(MAX_MERGE_DEPTH + 10) {
            deep = Node::new(
                Value::Map(vec![(
                    Key {
                        name: "k".into(),
                        pos: Pos::default(),
                    },
                    deep,
                )]),
                Pos::default(),
            );
        }
        let mut base = y("{}");
        let mut errors = Vec::new();
        merge(&mut base, &deep, "", &mut errors);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].message.contains("deeper than 256"), "{errors:?}");
    }

    #[test]
    fn other_lists_and_scalars_are_replaced() {
        let (j, _) = merged("o: [x, y]\nn: 1\n", "o: [z]\nn: {k: 1}\n");
        assert_eq!(j, serde_json::json!({"o": ["z"], "n": {"k": 1}}));
    }

    #[test]
    fn merged_values_keep_the_patch_position() {
        let mut b = y("a:\n  b: 1\n");
        let patch = parse(FileId(7), "a:\n  c: 2\n", Limits::default()).unwrap();
        merge(&mut b, &patch, "", &mut Vec::new());
        let (c, _) = b.pointer("/a/c").unwrap();
        assert_eq!(c.pos.file, FileId(7));
        let (bb, _) = b.pointer("/a/b").unwrap();
        assert_eq!(bb.pos.file, FileId(0));
    }

    fn arb_json() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i32>().prop_map(serde_json::Value::from),
            "[a-z]{0,6}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                prop::collection::btree_map("[a-z]{1,4}", inner, 0..4)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn merging_an_empty_patch_is_the_identity(value in arb_json()) {
            let text = serde_json::to_string(&serde_json::json!({"root": value})).unwrap();
            let mut base = y(&text);
            let before = base.clone();
            let mut errors = Vec::new();
            merge(&mut base, &y("{}"), "", &mut errors);
            prop_assert!(errors.is_empty());
            prop_assert!(base.same_value(&before));
        }
    }
}
