//! Sync steps (pure): what to apply in which order, what to prune, and the
//! guards that stop a dangerous prune before anything is written.
//!
//! Order is data, as in Flux's `ReconcileOrder`: objects apply in stages
//! sorted by sync wave (annotation `tenantsync.io/sync-wave`, default 0),
//! then kind rank (Namespaces and CRDs first, Ingresses and policies last).
//! Prune runs after every stage applied, in the reverse order: children
//! before their namespaces.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use serde_json::Value;

use crate::object::{Object, ObjectKey, kind_rank};
pub use crate::object::{SYNC_WAVE_ANNOTATION, wave_of};
use crate::plan::{Change, LiveVersion, Plan};
use crate::sync::inventory::{Inventory, ObjectRef};

/// `tenantsync.io/prune: disabled` keeps an object when it is no longer declared.
pub const PRUNE_ANNOTATION: &str = "tenantsync.io/prune";

/// What stops a sync in flight from sending more: its writer no longer
/// holds the environment (the lock, and with `--shard` the environment's
/// Lease). Asked before every write. Once lost it stays lost, for this
/// fence and its clones: a renewal answered late must not let a sync that
/// skipped a write (its inventory widening) go on writing.
#[derive(Clone, Default)]
pub struct Fence {
    holds: Vec<(Hold, &'static str)>,
    /// Why the fence was lost (the first hold found lost), once it was.
    latched: std::sync::Arc<std::sync::OnceLock<&'static str>>,
}

type Hold = std::sync::Arc<dyn Fn() -> bool + Send + Sync>;

/// Why a fence whose hold gave no reason of its own was lost.
pub const LOCK_LOST: &str =
    "the environment's lock was lost (another writer took it, or it could not be renewed in time)";

impl Fence {
    /// This fence, also lost when `lost` says so (its lock: [`LOCK_LOST`]).
    pub fn with(self, lost: impl Fn() -> bool + Send + Sync + 'static) -> Fence {
        self.with_reason(lost, LOCK_LOST)
    }

    /// This fence, also lost when `lost` says so, for the reason `why`.
    /// Holds are asked in the order they were added.
    pub fn with_reason(
        mut self,
        lost: impl Fn() -> bool + Send + Sync + 'static,
        why: &'static str,
    ) -> Fence {
        self.holds.push((std::sync::Arc::new(lost), why));
        self
    }

    /// Whether any hold is lost, now or before: no write after that.
    pub fn lost(&self) -> bool {
        if self.latched.get().is_some() {
            return true;
        }
        match self.holds.iter().find(|(lost, _)| lost()) {
            Some((_, why)) => {
                let _ = self.latched.set(why);
                true
            }
            None => false,
        }
    }

    /// Why the fence was lost (what a sync it stopped says).
    pub fn why(&self) -> &'static str {
        self.latched.get().copied().unwrap_or(LOCK_LOST)
    }
}

impl std::fmt::Debug for Fence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Fence({} holds)", self.holds.len())
    }
}

#[derive(Clone, Debug, Default)]
pub struct SyncOptions {
    pub prune: bool,
    pub dry_run: bool,
    pub force_conflicts: bool,
    pub force_recreate: bool,
    pub allow_mass_prune: bool,
    /// Largest share of the inventory one sync may prune without
    /// `allow_mass_prune`, in percent.
    pub max_prune_percent: u8,
    /// Delete a removed workspace's namespace even when it holds objects
    /// tenantsync did not make (they go with it).
    pub prune_foreign: bool,
    /// Lost when the writer no longer holds the environment: no write
    /// after that.
    pub fence: Fence,
    /// The objects this sync may apply or prune (all by default).
    pub scope: Scope,
    /// Workspaces outside `scope` whose objects the sync's revision
    /// renders exactly as the inventory's revision did (the daemon's sync
    /// of only what a new revision changed): recorded as applied, unchanged,
    /// at the sync's revision once it succeeds, as a sync of everything
    /// would record them.
    pub also_applied: Option<std::sync::Arc<BTreeSet<String>>>,
    /// A saved plan's preconditions (`sync --plan`), by object id: an
    /// update or delete is sent only on the condition that the live object
    /// still has this `uid` and `resourceVersion`.
    pub preconditions: Option<std::sync::Arc<HashMap<String, LiveVersion>>>,
    /// The rollout record a rollout step's sync writes with its final
    /// inventory when it succeeds in full: the step and its record in one
    /// write, so no kill between them leaves the step applied and not
    /// recorded.
    pub rollout_record: Option<crate::sync::resume::RolloutRecord>,
}

/// Which objects a plan or a sync may touch, by namespace: every object a
/// workspace renders lives in its namespace (or is that namespace).
///
/// `only` is the selection of `--workspace` (their namespaces); `held`
/// are the namespaces of workspaces held at their last applied state
/// because they are invalid: nothing of theirs is applied, pruned, or
/// dropped from the inventory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scope {
    pub only: Option<BTreeSet<String>>,
    pub held: BTreeSet<String>,
}

impl Scope {
    /// Whether an object of this identity is in scope.
    pub fn contains(&self, kind: &str, namespace: Option<&str>, name: &str) -> bool {
        let ns = match namespace {
            Some(ns) => Some(ns),
            None if kind == "Namespace" => Some(name),
            None => None,
        };
        if ns.is_some_and(|ns| self.held.contains(ns)) {
            return false;
        }
        match &self.only {
            None => true,
            Some(only) => ns.is_some_and(|ns| only.contains(ns)),
        }
    }

    /// [`Scope::contains`] for a live object (one without a kind or a name
    /// is nothing a plan can pair, and is out).
    pub fn contains_live(&self, live: &Value) -> bool {
        crate::object::live_key(live).is_some_and(|(kind, ns, name)| self.contains(kind, ns, name))
    }

    pub fn contains_object(&self, o: &Object) -> bool {
        self.contains(&o.kind, o.namespace.as_deref(), &o.name)
    }

    pub fn contains_ref(&self, r: &ObjectRef) -> bool {
        self.contains(&r.kind, r.namespace.as_deref(), &r.name)
    }

    pub fn is_everything(&self) -> bool {
        self.only.is_none() && self.held.is_empty()
    }

    /// The inventory as this scope sees it (for a plan's deletes): the
    /// inventory itself, not a copy, when the scope is everything.
    pub fn inventory<'i>(&self, inventory: &'i Inventory) -> std::borrow::Cow<'i, Inventory> {
        if self.is_everything() {
            return std::borrow::Cow::Borrowed(inventory);
        }
        let mut seen = inventory.clone();
        seen.objects.retain(|r| self.contains_ref(r));
        std::borrow::Cow::Owned(seen)
    }
}

/// Objects applied together (concurrently).
#[derive(Debug)]
pub struct Stage<'a> {
    pub wave: i32,
    pub rank: u8,
    pub objects: Vec<&'a Object>,
}

#[derive(Debug, Default)]
pub struct Steps<'a> {
    pub stages: Vec<Stage<'a>>,
    /// Objects to delete, stage by stage in deletion order (later waves and
    /// child kinds first); the objects of one stage are deleted concurrently.
    pub prune: Vec<Vec<ObjectRef>>,
    /// Objects no longer declared but kept, with the reason.
    pub kept: Vec<(ObjectRef, String)>,
    /// Objects no longer declared and already gone: dropped from the inventory.
    pub gone: Vec<ObjectRef>,
}

/// A prune too large to do without `--allow-mass-prune`.
#[derive(Debug, PartialEq, Eq)]
pub struct MassPrune {
    pub message: String,
}

fn prune_disabled(live: &Value) -> bool {
    live.pointer("/metadata/annotations")
        .and_then(|a| a.get(PRUNE_ANNOTATION))
        .and_then(Value::as_str)
        == Some("disabled")
}

/// Works out the sync's steps from the plan, the inventory and the live
/// objects nothing declares (`undeclared`: what prune looks at; live
/// objects that are declared may be there too and are ignored).
pub fn steps<'a>(
    plan: &Plan,
    desired: &'a [Object],
    inventory: Option<&Inventory>,
    undeclared: &[Value],
    options: &SyncOptions,
) -> Result<Steps<'a>, MassPrune> {
    steps_with_foreign(
        plan,
        desired,
        inventory,
        undeclared,
        options,
        &BTreeMap::new(),
    )
}

/// The namespaces (kind `Namespace`, no namespace) prune would delete: what
/// the inventory records, nothing declares and is still live.
pub fn namespaces_to_prune(
    desired: &[Object],
    inventory: &Inventory,
    undeclared: &[Value],
) -> Vec<String> {
    let declared: HashSet<ObjectKey<'_>> = desired.iter().map(Object::key).collect();
    let live: HashSet<String> = undeclared
        .iter()
        .filter_map(ObjectRef::of_live)
        .filter(|r| &*r.kind == "Namespace" && r.namespace.is_none())
        .map(|r| r.name.to_string())
        .collect();
    inventory
        .objects
        .iter()
        .filter(|r| &*r.kind == "Namespace" && r.namespace.is_none())
        .filter(|r| !declared.contains(&r.key()) && live.contains(&*r.name))
        .map(|r| r.name.to_string())
        .collect()
}

/// `ConfigMap/ns/a, Secret/ns/b` (at most ten, then how many more).
pub fn name_some(ids: &[String]) -> String {
    let mut text = ids.iter().take(10).cloned().collect::<Vec<_>>().join(", ");
    if ids.len() > 10 {
        text.push_str(&format!(" and {} more", ids.len() - 10));
    }
    text
}

/// [`steps`], knowing what the namespaces about to be deleted hold that
/// tenantsync did not make (`foreign`: namespace -> `Kind/ns/name`s). Such
/// a namespace is kept (its managed objects are still pruned) unless
/// `options.prune_foreign`.
pub fn steps_with_foreign<'a>(
    plan: &Plan,
    desired: &'a [Object],
    inventory: Option<&Inventory>,
    undeclared: &[Value],
    options: &SyncOptions,
    foreign: &BTreeMap<String, Vec<String>>,
) -> Result<Steps<'a>, MassPrune> {
    let mut out = Steps {
        stages: apply_stages(plan, desired),
        ..Steps::default()
    };
    // Prune: only what the inventory lists and nothing declares.
    let Some(inventory) = inventory else {
        return Ok(out);
    };
    if !options.prune {
        return Ok(out);
    }
    let (candidates, scoped) =
        prune_candidates(&mut out, desired, inventory, undeclared, options, foreign);
    out.prune = prune_stages(candidates);
    mass_prune_guard(&out, scoped, options, foreign)?;
    Ok(out)
}

/// Apply: what the plan says is new or changed, in stages of one sync wave
/// and kind rank.
fn apply_stages<'a>(plan: &Plan, desired: &'a [Object]) -> Vec<Stage<'a>> {
    let mut stages: Vec<Stage<'a>> = Vec::new();
    let changed: HashSet<ObjectKey<'_>> = plan
        .changes
        .iter()
        .filter(|c| c.is_apply())
        .map(Change::key)
        .collect();
    let mut to_apply: Vec<&Object> = desired
        .iter()
        .filter(|o| changed.contains(&o.key()))
        .collect();
    to_apply.sort_by_key(|o| (o.wave, kind_rank(&o.kind)));
    for o in to_apply {
        let (wave, rank) = (o.wave, kind_rank(&o.kind));
        match stages.last_mut() {
            Some(s) if s.wave == wave && s.rank == rank => s.objects.push(o),
            _ => stages.push(Stage {
                wave,
                rank,
                objects: vec![o],
            }),
        }
    }
    stages
}

/// The inventoried objects in scope nothing declares any more, with their
/// sync wave; those gone, or kept (`prune: disabled`, a namespace holding
/// foreign objects) go to `out`. Also returns how many inventoried objects
/// are in scope.
fn prune_candidates(
    out: &mut Steps<'_>,
    desired: &[Object],
    inventory: &Inventory,
    undeclared: &[Value],
    options: &SyncOptions,
    foreign: &BTreeMap<String, Vec<String>>,
) -> (Vec<(ObjectRef, i32)>, usize) {
    let declared: HashSet<ObjectKey<'_>> = desired.iter().map(Object::key).collect();
    let live_refs: Vec<(ObjectRef, &Value)> = undeclared
        .iter()
        .filter_map(|l| Some((ObjectRef::of_live(l)?, l)))
        .collect();
    let live_by_key: HashMap<ObjectKey<'_>, &Value> =
        live_refs.iter().map(|(r, l)| (r.key(), *l)).collect();
    let mut candidates: Vec<(ObjectRef, i32)> = Vec::new();
    // Out of scope: neither pruned nor dropped from the inventory.
    let in_scope = inventory
        .objects
        .iter()
        .filter(|r| options.scope.contains_ref(r));
    let mut scoped = 0usize;
    for r in in_scope {
        scoped += 1;
        if declared.contains(&r.key()) {
            continue;
        }
        match live_by_key.get(&r.key()) {
            None => out.gone.push(r.clone()),
            Some(l) if prune_disabled(l) => {
                out.kept
                    .push((r.clone(), format!("annotated {PRUNE_ANNOTATION}: disabled")));
            }
            Some(_)
                if &*r.kind == "Namespace"
                    && r.namespace.is_none()
                    && !options.prune_foreign
                    && foreign.get(&*r.name).is_some_and(|f| !f.is_empty()) =>
            {
                let held = foreign.get(&*r.name).map(Vec::as_slice).unwrap_or_default();
                out.kept.push((
                    r.clone(),
                    format!(
                        "kept because it holds {} object(s) tenantsync did not make: {}; \
                         delete them, or sync with --prune-foreign (run: --prune-foreign or the configuration's syncPolicy.pruneForeign) to delete the namespace with them",
                        held.len(),
                        name_some(held)
                    ),
                ));
            }
            Some(l) => candidates.push((r.clone(), wave_of(l))),
        }
    }
    (candidates, scoped)
}

/// Prune order: by sync wave, then kind rank, both decreasing (children
/// before their namespaces), a stage per wave and kind.
fn prune_stages(mut candidates: Vec<(ObjectRef, i32)>) -> Vec<Vec<ObjectRef>> {
    let mut stages: Vec<Vec<ObjectRef>> = Vec::new();
    candidates.sort_by(|(a, wa), (b, wb)| {
        (
            std::cmp::Reverse(*wa),
            std::cmp::Reverse(kind_rank(&a.kind)),
            a,
        )
            .cmp(&(
                std::cmp::Reverse(*wb),
                std::cmp::Reverse(kind_rank(&b.kind)),
                b,
            ))
    });
    let mut stage = None;
    for (r, wave) in candidates {
        let this = Some((wave, kind_rank(&r.kind)));
        match stages.last_mut() {
            Some(objects) if stage == this => objects.push(r),
            _ => stages.push(vec![r]),
        }
        stage = this;
    }
    stages
}

/// The guard that stops a dangerous prune before anything is written: a
/// workspace's namespace, or more than `max_prune_percent` of the
/// inventory in scope, only with `allow_mass_prune`.
fn mass_prune_guard(
    out: &Steps<'_>,
    scoped: usize,
    options: &SyncOptions,
    foreign: &BTreeMap<String, Vec<String>>,
) -> Result<(), MassPrune> {
    let count = out.prune.iter().map(Vec::len).sum::<usize>();
    if !options.allow_mass_prune && count > 0 {
        let namespaces: Vec<&str> = out
            .prune
            .iter()
            .flatten()
            .filter(|r| &*r.kind == "Namespace")
            .map(|r| &*r.name)
            .collect();
        // Within the selection: what a `--workspace` sync may prune is
        // measured against that workspace's objects.
        let share = count * 100 / scoped.max(1);
        let kept_namespaces: Vec<&str> = out
            .kept
            .iter()
            .filter(|(r, _)| &*r.kind == "Namespace" && foreign.contains_key(&*r.name))
            .map(|(r, _)| &*r.name)
            .collect();
        let mut held = String::new();
        for (ns, ids) in foreign.iter().filter(|(_, ids)| !ids.is_empty()) {
            let fate = if options.prune_foreign {
                "deleted with it (--prune-foreign)"
            } else {
                "so the namespace is kept"
            };
            held.push_str(&format!(
                "; {ns} holds {} object(s) tenantsync did not make ({}), {fate}",
                ids.len(),
                name_some(ids)
            ));
        }
        if !namespaces.is_empty() {
            return Err(MassPrune {
                message: format!(
                    "this sync would delete the namespace(s) {} with everything in them ({} objects){held}; \
                     re-run with --allow-mass-prune if the workspace(s) really go",
                    namespaces.join(", "),
                    count
                ),
            });
        }
        if !kept_namespaces.is_empty() {
            return Err(MassPrune {
                message: format!(
                    "this sync would delete the workspace objects of namespace(s) {} ({} objects){held}; \
                     re-run with --allow-mass-prune if the workspace(s) really go",
                    kept_namespaces.join(", "),
                    count
                ),
            });
        }
        if share > usize::from(options.max_prune_percent) {
            return Err(MassPrune {
                message: format!(
                    "this sync would prune {} of {} inventoried objects ({share}%), over the limit of {}%; \
                     re-run with --allow-mass-prune if that is intended",
                    count, scoped, options.max_prune_percent
                ),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Action, PLAN_FORMAT_VERSION, Summary};
    use serde_json::json;

    /// Hostile review (session 32): a lock renewal answered late made a
    /// lost fence hold again, so a sync that had skipped its inventory
    /// widening went on creating objects nothing recorded.
    #[test]
    fn a_lost_fence_stays_lost_when_its_hold_comes_back_in_every_clone() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        let hold_lost = Arc::new(AtomicBool::new(false));
        let fence = {
            let hold_lost = hold_lost.clone();
            Fence::default().with(move || hold_lost.load(Ordering::SeqCst))
        };
        let clone = fence.clone();
        assert!(!fence.lost());
        hold_lost.store(true, Ordering::SeqCst);
        assert!(fence.lost());
        hold_lost.store(false, Ordering::SeqCst);
        assert!(fence.lost(), "lost once, lost for good");
        assert!(clone.lost(), "and for its clones");
        assert!(!Fence::default().lost(), "a new fence holds");
        assert_eq!(fence.why(), LOCK_LOST);
    }

    /// The stop of a sync says why its writer stopped: the first hold found
    /// lost, latched (a hand-over to another replica is not a lost lock).
    #[test]
    fn a_lost_fence_says_the_reason_of_the_first_hold_found_lost() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        let (handed, lock) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let fence = {
            let (handed, lock) = (handed.clone(), lock.clone());
            Fence::default()
                .with_reason(move || handed.load(Ordering::SeqCst), "handed over")
                .with(move || lock.load(Ordering::SeqCst))
        };
        assert!(!fence.lost());
        handed.store(true, Ordering::SeqCst);
        lock.store(true, Ordering::SeqCst);
        assert!(fence.lost());
        assert_eq!(fence.why(), "handed over");
        handed.store(false, Ordering::SeqCst);
        assert_eq!(fence.clone().why(), "handed over", "latched");
    }

    fn obj(kind: &str, ns: Option<&str>, name: &str, wave: Option<&str>) -> Object {
        let mut body = json!({"apiVersion": "v1", "kind": kind, "metadata": {"name": name}});
        if let Some(ns) = ns {
            body["metadata"]["namespace"] = json!(ns);
        }
        if let Some(w) = wave {
            body["metadata"]["annotations"] = json!({SYNC_WAVE_ANNOTATION: w});
        }
        Object::from_value("w", &body).unwrap()
    }

    fn plan_of(objects: &[Object], action: Action) -> Plan {
        let changes: Vec<Change> = objects
            .iter()
            .map(|o| Change {
                action,
                api_version: o.api_version.clone(),
                kind: o.kind.clone(),
                namespace: o.namespace.clone(),
                name: o.name.clone(),
                workspace: o.workspace.clone(),
                fields: Vec::new(),
                diff: String::new(),
                note: None,
                heal: None,
                live: None,
            })
            .collect();
        Plan {
            format_version: PLAN_FORMAT_VERSION,
            environment: "dev".into(),
            revision: None,
            summary: Summary::of(&changes),
            changes,
            api_requests: 0,
        }
    }

    fn options(prune: bool) -> SyncOptions {
        SyncOptions {
            prune,
            max_prune_percent: 25,
            prune_foreign: false,
            ..SyncOptions::default()
        }
    }

    #[test]
    fn stages_follow_waves_then_kinds() {
        let desired = vec![
            obj("Ingress", Some("n"), "i", None),
            obj("Deployment", Some("n"), "d", None),
            obj("Namespace", None, "n", None),
            obj("ConfigMap", Some("n"), "late", Some("5")),
            obj("ConfigMap", Some("n"), "c", None),
            obj("Service", Some("n"), "early", Some("-1")),
        ];
        let s = steps(
            &plan_of(&desired, Action::Create),
            &desired,
            None,
            &[],
            &options(false),
        )
        .unwrap();
        let order: Vec<Vec<&str>> = s
            .stages
            .iter()
            .map(|st| st.objects.iter().map(|o| &*o.name).collect())
            .collect();
        assert_eq!(
            order,
            vec![
                vec!["early"],
                vec!["n"],
                vec!["c"],
                vec!["d"],
                vec!["i"],
                vec!["late"]
            ]
        );
    }

    #[test]
    fn unchanged_objects_are_not_applied() {
        let desired = vec![obj("ConfigMap", Some("n"), "c", None)];
        let s = steps(
            &plan_of(&desired, Action::Unchanged),
            &desired,
            None,
            &[],
            &options(false),
        )
        .unwrap();
        assert!(s.stages.is_empty());
    }

    fn inventory_of(objects: &[Object]) -> Inventory {
        let mut inv = Inventory::new("dev");
        inv.objects = objects.iter().map(ObjectRef::of).collect();
        inv
    }

    #[test]
    fn prune_deletes_only_inventoried_objects_children_first() {
        let old = vec![
            obj("Namespace", None, "gone", None),
            obj("ConfigMap", Some("gone"), "c", None),
            obj("Deployment", Some("gone"), "d", None),
            obj("ConfigMap", Some("keep"), "k", None),
        ];
        let desired = vec![obj("ConfigMap", Some("keep"), "k", None)];
        let mut live: Vec<Value> = old.iter().map(Object::value).collect();
        // Labelled like ours, never inventoried: must survive.
        live.push(obj("ConfigMap", Some("keep"), "by-hand", None).value());
        let inv = inventory_of(&old);
        let plan = plan_of(&desired, Action::Unchanged);
        let mut opts = options(true);
        let e = steps(&plan, &desired, Some(&inv), &live, &opts).unwrap_err();
        assert!(e.message.contains("namespace(s) gone"), "{}", e.message);
        opts.allow_mass_prune = true;
        let s = steps(&plan, &desired, Some(&inv), &live, &opts).unwrap();
        let stages: Vec<Vec<String>> = s
            .prune
            .iter()
            .map(|stage| stage.iter().map(ObjectRef::id).collect())
            .collect();
        assert_eq!(
            stages,
            [
                vec!["Deployment/gone/d"],
                vec!["ConfigMap/gone/c"],
                vec!["Namespace/gone"]
            ]
        );
        assert!(s.prune.iter().flatten().all(|r| &*r.name != "by-hand"));
        // Without --prune nothing is deleted.
        let s = steps(&plan, &desired, Some(&inv), &live, &options(false)).unwrap();
        assert!(s.prune.is_empty());
    }

    #[test]
    fn share_guard_and_prune_disabled_annotation() {
        let old: Vec<Object> = (0..10)
            .map(|i| obj("ConfigMap", Some("n"), &format!("c{i}"), None))
            .collect();
        let desired: Vec<Object> = old[..7].to_vec();
        let mut live: Vec<Value> = old.iter().map(Object::value).collect();
        let inv = inventory_of(&old);
        let plan = plan_of(&desired, Action::Unchanged);
        let e = steps(&plan, &desired, Some(&inv), &live, &options(true)).unwrap_err();
        assert!(
            e.message.contains("3 of 10 inventoried objects (30%)"),
            "{}",
            e.message
        );
        live[9]["metadata"]["annotations"] = json!({PRUNE_ANNOTATION: "disabled"});
        live.remove(8); // already deleted by someone: only dropped from the inventory
        let s = steps(&plan, &desired, Some(&inv), &live, &options(true)).unwrap();
        assert_eq!(
            s.prune
                .iter()
                .flatten()
                .map(ObjectRef::id)
                .collect::<Vec<_>>(),
            ["ConfigMap/n/c7"]
        );
        assert_eq!(s.kept.len(), 1);
        assert_eq!(s.gone.len(), 1);
    }

    #[test]
    fn a_namespace_holding_foreign_objects_is_kept_unless_prune_foreign() {
        let old = vec![
            obj("Namespace", None, "gone", None),
            obj("ConfigMap", Some("gone"), "c", None),
        ];
        let desired: Vec<Object> = Vec::new();
        let live: Vec<Value> = old.iter().map(Object::value).collect();
        let inv = inventory_of(&old);
        assert_eq!(namespaces_to_prune(&desired, &inv, &live), ["gone"]);
        let foreign = BTreeMap::from([(
            "gone".to_string(),
            vec![
                "ConfigMap/gone/by-hand".to_string(),
                "Secret/gone/s".to_string(),
            ],
        )]);
        let plan = plan_of(&desired, Action::Unchanged);
        let mut opts = options(true);
        let e =
            steps_with_foreign(&plan, &desired, Some(&inv), &live, &opts, &foreign).unwrap_err();
        assert!(
            e.message.contains(
                "gone holds 2 object(s) tenantsync did not make (ConfigMap/gone/by-hand, Secret/gone/s), so the namespace is kept"
            ),
            "{}",
            e.message
        );
        opts.allow_mass_prune = true;
        let s = steps_with_foreign(&plan, &desired, Some(&inv), &live, &opts, &foreign).unwrap();
        let pruned: Vec<String> = s.prune.iter().flatten().map(ObjectRef::id).collect();
        assert_eq!(pruned, ["ConfigMap/gone/c"]);
        assert_eq!(s.kept.len(), 1);
        assert!(s.kept[0].1.contains("Secret/gone/s"), "{}", s.kept[0].1);
        opts.prune_foreign = true;
        let s = steps_with_foreign(&plan, &desired, Some(&inv), &live, &opts, &foreign).unwrap();
        let pruned: Vec<String> = s.prune.iter().flatten().map(ObjectRef::id).collect();
        assert_eq!(pruned, ["ConfigMap/gone/c", "Namespace/gone"]);
    }

    /// Issue 13: objects out of scope (another workspace, or one held while
    /// invalid) are neither pruned nor dropped from the inventory, and the
    /// mass-prune share is measured within the selection.
    #[test]
    fn objects_out_of_scope_are_not_pruned_nor_forgotten() {
        let old = vec![
            obj("Namespace", None, "a-dev", None),
            obj("ConfigMap", Some("a-dev"), "gone-a", None),
            obj("ConfigMap", Some("b-dev"), "gone-b", None),
            obj("ConfigMap", Some("b-dev"), "keep-b", None),
            obj("ConfigMap", Some("c-dev"), "gone-c", None),
        ];
        let desired = vec![obj("ConfigMap", Some("b-dev"), "keep-b", None)];
        let live: Vec<Value> = old.iter().map(Object::value).collect();
        let inv = inventory_of(&old);
        let plan = plan_of(&desired, Action::Unchanged);
        let mut opts = options(true);
        opts.max_prune_percent = 50;
        opts.scope = Scope {
            only: Some(BTreeSet::from(["b-dev".to_string(), "c-dev".to_string()])),
            held: BTreeSet::from(["c-dev".to_string()]),
        };
        // In scope: b-dev's two objects; one of two pruned is 50%.
        let s = steps(&plan, &desired, Some(&inv), &live, &opts).unwrap();
        let pruned: Vec<String> = s.prune.iter().flatten().map(ObjectRef::id).collect();
        assert_eq!(pruned, ["ConfigMap/b-dev/gone-b"]);
        assert!(s.gone.is_empty() && s.kept.is_empty());
        // Not even "already gone" when out of scope: the inventory keeps them.
        let s = steps(&plan, &desired, Some(&inv), &[], &opts).unwrap();
        assert_eq!(
            s.gone.iter().map(ObjectRef::id).collect::<Vec<_>>(),
            ["ConfigMap/b-dev/gone-b"]
        );
        opts.max_prune_percent = 49;
        let e = steps(&plan, &desired, Some(&inv), &live, &opts).unwrap_err();
        assert!(
            e.message.contains("1 of 2 inventoried objects (50%)"),
            "{}",
            e.message
        );
        assert!(opts.scope.contains("Namespace", None, "b-dev"));
        assert!(!opts.scope.contains("Namespace", None, "c-dev"));
        assert!(!opts.scope.contains("Namespace", None, "a-dev"));
        assert!(!opts.scope.contains("ClusterRole", None, "x"));
        assert!(Scope::default().contains("ClusterRole", None, "x"));
    }

    #[test]
    fn the_inventory_a_scope_sees_is_the_inventory_itself_when_everything_is() {
        let mut inventory = Inventory::new("dev");
        for (kind, ns, name) in [
            ("ConfigMap", Some("ws-a"), "c"),
            ("ConfigMap", Some("ws-b"), "c"),
            ("Namespace", None, "ws-b"),
        ] {
            inventory.objects.insert(ObjectRef {
                api_version: "v1".into(),
                kind: kind.into(),
                namespace: ns.map(Into::into),
                name: name.into(),
            });
        }
        let everything = Scope::default();
        assert!(matches!(
            everything.inventory(&inventory),
            std::borrow::Cow::Borrowed(_)
        ));
        let held = Scope {
            only: None,
            held: BTreeSet::from(["ws-b".to_string()]),
        };
        let seen = held.inventory(&inventory);
        let ids: Vec<String> = seen.objects.iter().map(ObjectRef::id).collect();
        assert_eq!(ids, ["ConfigMap/ws-a/c"]);
    }
}
