//! Pairing: desired objects with the live ones as they are listed, a page at
//! a time; each pair is diffed ([`super::diff`]), and what nothing declares
//! becomes a delete when the inventory records it.

use std::collections::HashSet;

use serde_json::Value;

use super::diff::{diff_object, diff_object_with, skeleton, strip_noise, unified, yaml};
use super::field_policy::Ownership;
use super::types::{Action, Change, LiveVersion, PLAN_FORMAT_VERSION, Plan, Summary};
use crate::object::{self, Object, ObjectKey, WORKSPACE_LABEL, field_manager, kind_rank};

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
    policy: Ownership,
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
            policy: Ownership::default(),
        }
    }

    /// The environment's field ownership policy (`spec.ownership`); the
    /// default one otherwise.
    pub fn with_ownership(mut self, policy: Ownership) -> Planner<'a> {
        self.policy = policy;
        self
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
        let Some(key) = object::live_key(&live) else {
            return;
        };
        match self.find(key) {
            Some(i) => {
                if !self.seen[i] {
                    self.seen[i] = true;
                    self.changes.push(diff_object_with(
                        &self.desired[i],
                        Some(&live),
                        self.diffs,
                        &self.manager,
                        &self.policy,
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

    /// Of the `recorded` keys (an inventory's), those of live objects
    /// listed that nothing declares: all [`Planner::finish`] needs to know
    /// of the inventory, without a set of every key it records.
    pub fn recorded_undeclared<'i>(
        &self,
        recorded: impl IntoIterator<Item = ObjectKey<'i>>,
    ) -> HashSet<ObjectKey<'i>> {
        let undeclared: HashSet<ObjectKey<'_>> =
            self.orphans.iter().filter_map(object::live_key).collect();
        recorded
            .into_iter()
            .filter(|k| undeclared.contains(k))
            .collect()
    }

    /// The plan, and the live objects nothing declares (what a prune looks
    /// at). `recorded`: the keys the environment's inventory records (only
    /// those undeclared objects are deletes); `None`: every one is.
    pub fn finish(
        self,
        recorded: Option<&HashSet<ObjectKey<'_>>>,
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
        for l in &self.orphans {
            let Some(key) = object::live_key(l) else {
                continue;
            };
            if let Some(recorded) = recorded
                && !recorded.contains(&key)
            {
                continue;
            }
            let (kind, namespace, name) = key;
            let workspace = l
                .pointer("/metadata/labels")
                .and_then(|m| m.get(WORKSPACE_LABEL))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let api_version = object::api_version_of(l).unwrap_or_default();
            let id = object::id(key);
            let diff = if self.diffs {
                let mut shown = strip_noise(l);
                if super::conceal::is_secret(api_version, kind) {
                    super::conceal::conceal_body(&mut shown);
                }
                unified(&yaml(&shown), "", &id)
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
                heal: None,
                live: LiveVersion::of(l),
            });
        }
        // Sorted (stably) through their indices, then moved in place: a
        // stable sort of the changes themselves takes a buffer of half of
        // them, about 100 bytes a change (27 MB at 20,000 workspaces).
        let mut order: Vec<u32> = (0..changes.len() as u32).collect();
        order.sort_by(|&a, &b| {
            let (a, b) = (&changes[a as usize], &changes[b as usize]);
            (&a.workspace, kind_rank(&a.kind), &a.namespace, &a.name).cmp(&(
                &b.workspace,
                kind_rank(&b.kind),
                &b.namespace,
                &b.name,
            ))
        });
        permute(&mut changes, order);
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

/// Moves `items` into the order `order` gives: `order[i]` is the index of
/// the item that goes to position `i` (a permutation of `0..len`). In
/// place, a cycle at a time.
fn permute<T>(items: &mut [T], mut order: Vec<u32>) {
    for start in 0..items.len() {
        let mut at = start;
        while order[at] as usize != at {
            let from = order[at] as usize;
            order[at] = at as u32;
            if from == start {
                break;
            }
            items.swap(at, from);
            at = from;
        }
    }
}

/// The plan of `desired` against all of `live` at once (see [`Planner`]).
pub fn plan(
    environment: &str,
    desired: &[Object],
    live: &[Value],
    recorded: Option<&HashSet<ObjectKey<'_>>>,
    revision: Option<String>,
    api_requests: u32,
) -> Plan {
    let mut planner = Planner::new(environment, desired, true);
    for l in live {
        planner.observe(l.clone());
    }
    planner.finish(recorded, revision, api_requests).0
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    proptest! {
        /// Moving items in place by an order is collecting them in it.
        #[test]
        fn permute_puts_each_item_where_the_order_says(order in Just((0u32..200).collect::<Vec<_>>()).prop_shuffle()) {
            let mut items: Vec<String> = (0..order.len()).map(|i| format!("item {i}")).collect();
            let expected: Vec<String> = order.iter().map(|&i| items[i as usize].clone()).collect();
            permute(&mut items, order);
            prop_assert_eq!(items, expected);
        }
    }

    fn live(kind: &str, name: &str) -> Value {
        json!({"apiVersion": "v1", "kind": kind, "metadata": {"name": name, "namespace": "ws-a"}})
    }

    #[test]
    fn of_the_recorded_keys_only_those_of_undeclared_live_objects_are_kept() {
        let desired = [Object::from_value("a", &live("ConfigMap", "declared")).unwrap()];
        let mut planner = Planner::new("dev", &desired, false);
        planner.observe(live("ConfigMap", "declared"));
        planner.observe(live("ConfigMap", "left-over"));
        planner.observe(live("Secret", "never-recorded"));
        let recorded = [
            ("ConfigMap", Some("ws-a"), "declared"),
            ("ConfigMap", Some("ws-a"), "left-over"),
            ("ConfigMap", Some("ws-a"), "gone"),
        ];
        let kept = planner.recorded_undeclared(recorded);
        assert_eq!(
            kept,
            HashSet::from([("ConfigMap", Some("ws-a"), "left-over")])
        );
        // The plan deletes the recorded left-over only, as with every key.
        let (plan, undeclared) = planner.finish(Some(&kept), None, 0);
        let deletes: Vec<String> = plan
            .changes
            .iter()
            .filter(|c| c.action == Action::Delete)
            .map(Change::id)
            .collect();
        assert_eq!(deletes, ["ConfigMap/ws-a/left-over"]);
        assert_eq!(undeclared.len(), 2);
    }

    #[test]
    fn changes_come_sorted_by_workspace_kind_and_name() {
        let desired: Vec<Object> = [("b", "Deployment", "x"), ("a", "Service", "y"), ("a", "ConfigMap", "z"), ("a", "ConfigMap", "c")]
            .iter()
            .map(|(ws, kind, name)| {
                Object::from_value(
                    ws,
                    &json!({"apiVersion": "v1", "kind": kind, "metadata": {"name": name, "namespace": format!("ns-{ws}")}}),
                )
                .unwrap()
            })
            .collect();
        let (plan, _) = Planner::new("dev", &desired, false).finish(None, None, 0);
        let ids: Vec<String> = plan.changes.iter().map(Change::id).collect();
        assert_eq!(
            ids,
            [
                "ConfigMap/ns-a/c",
                "ConfigMap/ns-a/z",
                "Service/ns-a/y",
                "Deployment/ns-b/x"
            ]
        );
    }
}
