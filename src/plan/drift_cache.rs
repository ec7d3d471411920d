//! What the daemon keeps of each watched object to tell drift from its own
//! writes: the object's identity and a few 64-bit digests, never the body.
//!
//! A watch delivers every write to a managed object: tenantsync's own
//! applies, controllers updating `status`, and the hand edits that are drift.
//! Only the last kind should start a drift check. The API server records who
//! wrote what in `metadata.managedFields`, and stamps a manager's entry with
//! a new `time` whenever that manager changes the object; so an entry of
//! another manager (not the environment's own, not a `status` subresource
//! write) that is new or newly stamped is a change by someone else. A field
//! taken back by tenantsync shrinks the other manager's entry without
//! stamping it, so a heal does not set off another check. An edit that
//! only removes fields leaves no entry of its writer (it owns nothing
//! new): it shows as tenantsync's own entries owning fewer fields while
//! their `time` stays. (tenantsync's own writes that remove fields restamp
//! them, but for one that only drops a field another manager also owns,
//! or a second write within the same second: rare, and then one needless
//! check. A takeover of fields, which adds to tenantsync's entry without
//! restamping it, is not a loss.) An object
//! without managed fields falls back to a digest of its body without
//! `status` and server-kept metadata. A deleted object is always a change.
//!
//! The cache is pure: the watch edge (`cluster::watch`) feeds it events and
//! acts on what it answers.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use serde_json::Value;

/// The digests of one object: what [`DriftCache`] keeps per identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fingerprint {
    /// One digest per managed-fields entry of another writer (manager,
    /// operation, subresource and time), sorted.
    others: Box<[u64]>,
    /// The body without `status` and server-kept metadata, for objects
    /// without managed fields.
    content: u64,
    /// How many fields tenantsync's own entries own, and their times.
    own_fields: u32,
    own_times: u64,
    tracked: bool,
}

/// The managers whose writes are tenantsync's own: the environment's field
/// manager and the one of tenantsync's own objects.
#[derive(Clone, Debug)]
pub struct OwnManagers(Vec<String>);

impl OwnManagers {
    pub fn new(environment: &str) -> OwnManagers {
        OwnManagers(vec![
            crate::object::FIELD_MANAGER.to_string(),
            crate::object::field_manager(environment),
        ])
    }

    fn contains(&self, manager: &str) -> bool {
        self.0.iter().any(|m| m == manager)
    }
}

fn digest(value: &impl Hash) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    value.hash(&mut h);
    h.finish()
}

/// How many fields a `fieldsV1` set holds (its empty objects: the leaves;
/// a set is a tree of objects). Walked with a stack of its own, so any
/// depth is safe.
fn leaves(set: &Value) -> u32 {
    let mut count = 0u32;
    let mut stack = vec![set];
    while let Some(v) = stack.pop() {
        match v.as_object() {
            Some(map) if map.is_empty() => count = count.saturating_add(1),
            Some(map) => stack.extend(map.values()),
            None => {}
        }
    }
    count
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or_default()
}

impl Fingerprint {
    /// The fingerprint of a live object's body.
    pub fn of(body: &Value, own: &OwnManagers) -> Fingerprint {
        let entries = body
            .pointer("/metadata/managedFields")
            .and_then(Value::as_array);
        let mut others: Vec<u64> = entries
            .into_iter()
            .flatten()
            .filter(|e| !own.contains(str_of(e, "manager")) && str_of(e, "subresource") != "status")
            .map(|e| {
                digest(&(
                    str_of(e, "manager"),
                    str_of(e, "operation"),
                    str_of(e, "subresource"),
                    str_of(e, "time"),
                ))
            })
            .collect();
        others.sort_unstable();
        others.dedup();
        let mut own_entries: Vec<(&str, &str, &Value)> = entries
            .into_iter()
            .flatten()
            .filter(|e| own.contains(str_of(e, "manager")) && str_of(e, "subresource") != "status")
            .map(|e| {
                (
                    str_of(e, "manager"),
                    str_of(e, "time"),
                    e.get("fieldsV1").unwrap_or(&Value::Null),
                )
            })
            .collect();
        own_entries.sort_by(|a, b| a.0.cmp(b.0));
        let own_fields = own_entries
            .iter()
            .map(|(_, _, f)| leaves(f))
            .fold(0u32, u32::saturating_add);
        let own_times = digest(
            &own_entries
                .iter()
                .map(|(m, t, _)| (*m, *t))
                .collect::<Vec<_>>(),
        );
        let mut shape = body.clone();
        if let Some(map) = shape.as_object_mut() {
            map.remove("status");
        }
        if let Some(meta) = shape.get_mut("metadata").and_then(Value::as_object_mut) {
            for key in ["resourceVersion", "generation", "managedFields"] {
                meta.remove(key);
            }
        }
        Fingerprint {
            others: others.into_boxed_slice(),
            content: digest(&shape.to_string()),
            own_fields,
            own_times,
            tracked: entries.is_some_and(|e| !e.is_empty()),
        }
    }

    /// Whether going from `self` to `new` is somebody else's write.
    fn changed_by_others(&self, new: &Fingerprint) -> bool {
        if new.tracked {
            new.others
                .iter()
                .any(|d| self.others.binary_search(d).is_err())
                // tenantsync lost fields without a write of its own.
                || (new.own_fields < self.own_fields && new.own_times == self.own_times)
        } else {
            new.content != self.content
        }
    }
}

/// Identity → fingerprint for the objects one watch sees, with the watch's
/// relists (after a 410 Gone or a reconnect that could not resume) folded in:
/// what changed or vanished while the watch was away counts as changed.
/// `K`: an object's identity within the watch.
#[derive(Debug)]
pub struct DriftCache<K> {
    objects: HashMap<K, Fingerprint>,
    /// While a relist runs: what it has seen so far.
    relist: Option<HashMap<K, Fingerprint>>,
    /// Whether the first list has completed (what it finds is the baseline,
    /// not a change).
    primed: bool,
}

impl<K> Default for DriftCache<K> {
    fn default() -> Self {
        DriftCache {
            objects: HashMap::new(),
            relist: None,
            primed: false,
        }
    }
}

impl<K: std::hash::Hash + Eq + Clone> DriftCache<K> {
    pub fn new() -> DriftCache<K> {
        DriftCache::default()
    }

    /// Objects known.
    pub fn len(&self) -> usize {
        self.objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// An object added or modified: whether another writer changed it.
    /// A new object is only a change when another writer made it (and the
    /// first list is never one).
    pub fn applied(&mut self, id: K, fingerprint: Fingerprint) -> bool {
        let changed = match self.objects.get(&id) {
            Some(old) => old.changed_by_others(&fingerprint),
            None => self.primed && !fingerprint.others.is_empty(),
        };
        match self.relist.as_mut() {
            Some(seen) => {
                seen.insert(id, fingerprint);
            }
            None => {
                self.objects.insert(id, fingerprint);
            }
        }
        changed
    }

    /// An object deleted: a change when it was known.
    pub fn deleted(&mut self, id: &K) -> bool {
        self.objects.remove(id).is_some()
    }

    /// A (re)list starts: objects seen until [`DriftCache::relisted`] replace
    /// what is known.
    pub fn relisting(&mut self) {
        self.relist = Some(HashMap::new());
    }

    /// A (re)list is complete: the identities known before and not seen
    /// again, which vanished while the watch was away (none after the
    /// first list).
    pub fn relisted(&mut self) -> Vec<K> {
        let Some(seen) = self.relist.take() else {
            return Vec::new();
        };
        let gone = if self.primed {
            self.objects
                .keys()
                .filter(|k| !seen.contains_key(*k))
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        self.objects = seen;
        self.primed = true;
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn own() -> OwnManagers {
        OwnManagers::new("dev")
    }

    fn deployment(replicas: u64, managers: &[(&str, &str, &str)]) -> Value {
        let entries: Vec<Value> = managers
            .iter()
            .map(|(m, sub, time)| {
                json!({"manager": m, "operation": "Update", "subresource": sub, "time": time,
                       "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {}}})
            })
            .collect();
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "fhir", "namespace": "ws", "resourceVersion": replicas.to_string(),
                         "managedFields": entries},
            "spec": {"replicas": replicas},
            "status": {"replicas": replicas}
        })
    }

    fn primed(body: &Value) -> DriftCache<&'static str> {
        let mut cache = DriftCache::new();
        cache.relisting();
        assert!(!cache.applied("Deployment/ws/fhir", Fingerprint::of(body, &own())));
        assert!(cache.relisted().is_empty());
        cache
    }

    const APPLIED: (&str, &str, &str) = ("tenantsync/dev", "", "2026-01-01T00:00:00Z");

    #[test]
    fn a_kubectl_scale_is_a_change_but_our_own_apply_and_a_status_update_are_not() {
        let mut cache = primed(&deployment(1, &[APPLIED]));
        // The controller-manager writes status.
        let status = deployment(
            1,
            &[
                APPLIED,
                ("kube-controller-manager", "status", "2026-01-01T00:00:01Z"),
            ],
        );
        assert!(!cache.applied("Deployment/ws/fhir", Fingerprint::of(&status, &own())));
        // tenantsync applies again (a new revision).
        let ours = deployment(2, &[("tenantsync/dev", "", "2026-01-01T00:00:02Z")]);
        assert!(!cache.applied("Deployment/ws/fhir", Fingerprint::of(&ours, &own())));
        // kubectl scale.
        let scaled = deployment(
            5,
            &[
                ("tenantsync/dev", "", "2026-01-01T00:00:02Z"),
                ("kubectl", "scale", "2026-01-01T00:00:03Z"),
            ],
        );
        assert!(cache.applied("Deployment/ws/fhir", Fingerprint::of(&scaled, &own())));
        // Healed: our entry stamped, kubectl's shrinks but keeps its time.
        let healed = deployment(
            2,
            &[
                ("tenantsync/dev", "", "2026-01-01T00:00:04Z"),
                ("kubectl", "scale", "2026-01-01T00:00:03Z"),
            ],
        );
        assert!(!cache.applied("Deployment/ws/fhir", Fingerprint::of(&healed, &own())));
        // A second scale by the same manager stamps its entry again.
        let again = deployment(
            7,
            &[
                ("tenantsync/dev", "", "2026-01-01T00:00:04Z"),
                ("kubectl", "scale", "2026-01-01T00:00:05Z"),
            ],
        );
        assert!(cache.applied("Deployment/ws/fhir", Fingerprint::of(&again, &own())));
        assert_eq!(cache.len(), 1);
    }

    /// A Deployment whose only entry is tenantsync's, owning `fields`.
    fn owned(fields: Value, time: &str) -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "fhir", "namespace": "ws", "managedFields": [
                {"manager": "tenantsync/dev", "operation": "Apply", "time": time,
                 "fieldsType": "FieldsV1", "fieldsV1": fields}]},
            "spec": {"replicas": 1}
        })
    }

    #[test]
    fn an_edit_that_only_removes_our_fields_is_a_change_but_our_own_removal_and_a_takeover_are_not()
    {
        let both = json!({"f:metadata": {"f:labels": {"f:a": {}, "f:b": {}}}});
        let one = json!({"f:metadata": {"f:labels": {"f:a": {}}}});
        let t0 = "2026-01-01T00:00:00Z";
        let mut cache = primed(&owned(both.clone(), t0));
        // `kubectl label deployment fhir b-`: no entry of kubectl's (it owns
        // nothing), ours loses a field, its time unchanged.
        assert!(cache.applied(
            "Deployment/ws/fhir",
            Fingerprint::of(&owned(one.clone(), t0), &own())
        ));
        // The heal: ours gets the field back and a new time.
        let t1 = "2026-01-01T00:00:05Z";
        assert!(!cache.applied(
            "Deployment/ws/fhir",
            Fingerprint::of(&owned(both, t1), &own())
        ));
        // A takeover (a merge patch of managedFields moving another
        // manager's fields into ours, our old time kept) is not a loss.
        let more = json!({"f:metadata": {"f:labels": {"f:a": {}, "f:b": {}}}, "f:spec": {"f:replicas": {}}});
        assert!(!cache.applied(
            "Deployment/ws/fhir",
            Fingerprint::of(&owned(more, t1), &own())
        ));
        // A new revision that stops declaring `b`: ours shrinks and is
        // restamped by our own write.
        let t2 = "2026-01-01T00:00:09Z";
        assert!(!cache.applied(
            "Deployment/ws/fhir",
            Fingerprint::of(&owned(one, t2), &own())
        ));
    }

    #[test]
    fn a_deleted_object_is_a_change_and_an_unknown_one_is_not() {
        let mut cache = primed(&deployment(1, &[APPLIED]));
        assert!(cache.deleted(&"Deployment/ws/fhir"));
        assert!(!cache.deleted(&"Deployment/ws/fhir"));
        assert!(cache.is_empty());
    }

    #[test]
    fn objects_new_after_the_first_list_are_changes_only_when_someone_else_made_them() {
        let mut cache = primed(&deployment(1, &[APPLIED]));
        let ours = deployment(1, &[APPLIED]);
        assert!(!cache.applied("Deployment/ws/other", Fingerprint::of(&ours, &own())));
        let theirs = deployment(1, &[("kubectl-create", "", "2026-01-01T00:00:09Z")]);
        assert!(cache.applied("Deployment/ws/third", Fingerprint::of(&theirs, &own())));
    }

    #[test]
    fn a_relist_reports_what_changed_or_vanished_while_the_watch_was_away() {
        let mut cache = primed(&deployment(1, &[APPLIED]));
        assert!(!cache.applied(
            "Deployment/ws/other",
            Fingerprint::of(&deployment(1, &[APPLIED]), &own())
        ));
        // 410 Gone: relist. fhir was edited meanwhile, other was deleted.
        cache.relisting();
        let edited = deployment(3, &[APPLIED, ("kubectl-edit", "", "2026-01-01T00:01:00Z")]);
        assert!(cache.applied("Deployment/ws/fhir", Fingerprint::of(&edited, &own())));
        assert_eq!(cache.relisted(), vec!["Deployment/ws/other"]);
        assert_eq!(cache.len(), 1);
        // A relist that finds everything as it was reports nothing.
        cache.relisting();
        assert!(!cache.applied("Deployment/ws/fhir", Fingerprint::of(&edited, &own())));
        assert!(cache.relisted().is_empty());
    }

    #[test]
    fn without_managed_fields_a_body_change_outside_status_is_a_change() {
        let bare = |replicas: u64, status: u64| {
            json!({"kind": "ConfigMap", "metadata": {"name": "c", "resourceVersion": status.to_string()},
                   "data": {"n": replicas.to_string()}, "status": {"x": status}})
        };
        let mut cache = primed(&bare(1, 1));
        assert!(!cache.applied("ConfigMap/c", Fingerprint::of(&bare(1, 2), &own())));
        assert!(cache.applied("ConfigMap/c", Fingerprint::of(&bare(2, 2), &own())));
    }
}
