//! An environment's desired state against the cluster: the live objects
//! tenantsync manages, listed a page at a time and paired with the desired
//! ones, and who owns what the plan would create.

use std::collections::BTreeMap;

use serde_json::Value;

use super::DesiredState;
use crate::cluster::{Cluster, ClusterError};
use crate::declare::diag::Diagnostic;
use crate::plan::{Plan, Planner};
use crate::sync::health::{Health, HealthOptions, assess};
use crate::sync::inventory::{self, Inventory, ObjectRef};
use crate::sync::tenancy::{self, Operator};

/// Which live objects nothing declares are deletes in the plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deletes {
    /// Those the inventory records (none without an inventory): what
    /// `sync --prune` would delete.
    Recorded,
    /// Those the inventory records; without an inventory, every one.
    RecordedOrAll,
    /// Every labelled object nothing declares (what `drift` calls orphaned).
    Undeclared,
}

/// How to plan.
#[derive(Clone, Copy, Debug)]
pub struct PlanOptions {
    /// Whether changes carry their unified diff (printers need it, a sync
    /// does not).
    pub diffs: bool,
    pub deletes: Deletes,
    /// Settle who owns what the plan would create (`Some(adopt)`: take over
    /// objects that are not tenantsync's, or mark them unmanaged); `None`
    /// leaves creates as they are.
    pub settle: Option<bool>,
    /// Assess the health of each live object listed (the daemon's status
    /// shows it; a plan does not need it).
    pub health: bool,
}

/// A plan and what a sync of it needs besides.
pub struct LivePlan {
    pub plan: Plan,
    /// The environment's inventory, as read before planning.
    pub inventory: Option<Inventory>,
    /// The live objects in scope nothing declares (what a prune looks at).
    pub undeclared: Vec<Value>,
    /// The health of each live object listed, by `Kind/namespace/name`
    /// (with [`PlanOptions::health`] only).
    pub health: BTreeMap<String, Health>,
}

/// The guardrails only the cluster can judge: each `resources/` manifest's
/// namespace against the scope API discovery gives its kind. Checked before
/// anything is written; the broken ones as diagnostics.
pub async fn check_scopes(
    cluster: &Cluster,
    operator: &Operator,
    desired: &DesiredState,
) -> Result<Result<(), Vec<Diagnostic>>, ClusterError> {
    let violations = cluster
        .check_scopes(&operator.guardrails, &desired.objects)
        .await?;
    if violations.is_empty() {
        return Ok(Ok(()));
    }
    Ok(Err(violations
        .iter()
        .map(|v| v.diagnostic(&desired.name))
        .collect()))
}

/// A selected workspace that Git does not declare is one known only from
/// the inventory (removed from Git, still on the cluster): its namespace
/// must be recorded there. The first that is not, as (workspace,
/// namespace): the name is a mistake, refused before anything is written.
pub async fn unrecorded(
    cluster: &Cluster,
    desired: &DesiredState,
) -> Result<Option<(String, String)>, ClusterError> {
    let unresolved = &desired.unresolved.workspaces;
    if unresolved.is_empty() {
        return Ok(None);
    }
    let inventory = cluster.read_inventory(&desired.name).await?;
    let recorded = |ns: &str| {
        inventory.as_ref().is_some_and(|i| {
            i.objects.iter().any(|r| {
                r.namespace.as_deref() == Some(ns) || (&*r.kind == "Namespace" && &*r.name == ns)
            })
        })
    };
    Ok(unresolved.iter().find(|(_, ns)| !recorded(ns)).cloned())
}

/// Plans `desired` against the cluster. `inventory`: the environment's, as
/// the caller read it (under the environment's lock, for a sync).
pub async fn plan_live(
    cluster: &Cluster,
    desired: &DesiredState,
    inventory: Option<Inventory>,
    options: PlanOptions,
) -> Result<LivePlan, ClusterError> {
    let name = &desired.name;
    let scope = &desired.scope;
    let kinds = inventory::kinds_to_list(&desired.objects, inventory.as_ref());
    let mut planner = Planner::new(name, &desired.objects, options.diffs)
        .with_ownership(desired.ownership.clone());
    let mut health = BTreeMap::new();
    // The daemon's view of health (its status, a rollout's gate) does not
    // wait for an Ingress's load-balancer address, as its health watch
    // does not: a cluster whose ingress controller publishes none would
    // otherwise never see a workspace Healthy (`sync --wait` waits for it
    // unless --no-ingress-address-wait).
    let health_options = HealthOptions {
        wait_for_ingress_address: false,
    };
    // Held workspaces are out of scope: not planned, applied nor pruned.
    // A selection is listed namespace by namespace (its own objects only).
    cluster
        .for_each_managed_in(name, scope.only.as_ref(), &kinds, |o| {
            if scope.contains_live(&o) {
                if options.health
                    && let Some(key) = crate::object::live_key(&o)
                {
                    health.insert(crate::object::id(key), assess(&o, &health_options));
                }
                planner.observe(o)
            }
        })
        .await?;
    let empty = Inventory::new(name);
    let scoped = scope.inventory(inventory.as_ref().unwrap_or(&empty));
    let recorded = || planner.recorded_undeclared(scoped.objects.iter().map(ObjectRef::key));
    let recorded = match options.deletes {
        Deletes::Recorded => Some(recorded()),
        Deletes::RecordedOrAll => inventory.as_ref().map(|_| recorded()),
        Deletes::Undeclared => None,
    };
    let (mut plan, undeclared) = planner.finish(recorded.as_ref(), desired.revision.clone(), 0);
    if let Some(adopt) = options.settle {
        let existing = cluster.find_existing(&plan).await?;
        tenancy::settle_ownership(
            &mut plan,
            inventory.as_ref().unwrap_or(&empty),
            &existing,
            adopt,
        );
    }
    plan.api_requests = cluster.requests();
    Ok(LivePlan {
        plan,
        inventory,
        undeclared,
        health,
    })
}
