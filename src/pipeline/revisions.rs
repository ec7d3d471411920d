//! A desired state whose workspaces come from several revisions (pure).
//!
//! The inventory records, per workspace, the revision its objects were last
//! applied at ([`crate::sync::inventory::Inventory::pinned`]): after a
//! rollback, or a rollout that moves workspaces one at a time, they differ.
//! Self-heal, drift and plans must then compare the cluster with what each
//! workspace is at, never with a mix no record describes. The caller renders
//! the environment once at each revision [`needed`] (with [`super::desired`])
//! and [`compose`] takes each workspace's objects from its revision; shared
//! objects (`resources/`) come from the newest revision.

use std::collections::{BTreeMap, BTreeSet};

use super::DesiredState;

/// The revisions to render besides `newest` to compose `pinned` (workspace
/// → revision).
pub fn needed(pinned: &BTreeMap<String, String>, newest: &str) -> BTreeSet<String> {
    pinned
        .values()
        .filter(|r| r.as_str() != newest)
        .cloned()
        .collect()
}

/// `newest` with each workspace of `pinned` taken from its revision: its
/// objects are those `at[revision]` renders for it, recorded in
/// [`DesiredState::workspace_revisions`] (a sync records them so in the
/// inventory). A workspace pinned to a revision missing from `at` (it could
/// not be read or rendered) or that does not render it there is held (left
/// as it is, neither applied nor pruned), with why. A workspace `newest` no
/// longer declares, or holds, is left as `newest` says.
pub fn compose(
    mut newest: DesiredState,
    at: &BTreeMap<String, DesiredState>,
    pinned: &BTreeMap<String, String>,
) -> DesiredState {
    let newest_revision = newest.revision.clone().unwrap_or_default();
    let declared: BTreeSet<String> = newest
        .objects
        .iter()
        .map(|o| o.workspace.to_string())
        .filter(|ws| !ws.is_empty())
        .collect();
    for (ws, revision) in pinned {
        if *revision == newest_revision || !declared.contains(ws) || newest.held.contains_key(ws) {
            continue;
        }
        let namespace = namespace_of(&newest, ws);
        newest.objects.retain(|o| &*o.workspace != ws.as_str());
        let from = at.get(revision).filter(|s| !s.held.contains_key(ws));
        let objects: Vec<_> = from
            .map(|s| {
                s.objects
                    .iter()
                    .filter(|o| &*o.workspace == ws.as_str())
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        if objects.is_empty() {
            newest.held.entry(ws.clone()).or_default().push(format!(
                "workspace `{ws}` is recorded at revision {revision}, which cannot be read or does not render it: it is left as it is until a newer revision is applied"
            ));
            if let Some(ns) = namespace {
                newest.scope.held.insert(ns);
            }
            continue;
        }
        newest.objects.extend(objects);
        newest
            .workspace_revisions
            .insert(ws.clone(), revision.clone());
    }
    newest
}

/// The namespace a workspace's objects are rendered into.
fn namespace_of(state: &DesiredState, ws: &str) -> Option<String> {
    state
        .objects
        .iter()
        .find(|o| &*o.workspace == ws && &*o.kind == "Namespace")
        .map(|o| o.name.to_string())
        .or_else(|| {
            state
                .objects
                .iter()
                .find(|o| &*o.workspace == ws)
                .and_then(|o| o.namespace.as_deref().map(str::to_string))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::declare::repo::SourceTree;
    use crate::pipeline::{Intake, desired};
    use crate::sync::tenancy::Operator;

    fn tree(alpha_replicas: u32, with_gamma: bool) -> SourceTree {
        let mut files = vec![
            (
                "environments/dev/environment.yaml".to_string(),
                "apiVersion: tenantsync.io/v1alpha1\nkind: Environment\nmetadata: {name: dev}\nspec:\n  ingress: {domain: dev.example.com}\n  images:\n    fhir: {repository: example.azurecr.io/fhir-server, tag: '4.3.1'}\n".to_string(),
            ),
        ];
        let ws = |name: &str, replicas: u32| {
            (
                format!("environments/dev/workspaces/{name}.yaml"),
                format!(
                    "apiVersion: tenantsync.io/v1alpha1\nkind: Workspace\nmetadata: {{name: {name}}}\nspec:\n  fhirServices:\n    - name: api\n      replicas: {replicas}\n"
                ),
            )
        };
        files.push(ws("alpha", alpha_replicas));
        files.push(ws("beta", alpha_replicas));
        if with_gamma {
            files.push(ws("gamma", 1));
        }
        let mut tree = SourceTree::new();
        for (path, text) in files {
            tree.insert(&path, text.into_bytes());
        }
        tree
    }

    fn state(tree: SourceTree, revision: &str) -> DesiredState {
        desired(
            tree,
            "dev",
            Some(revision.into()),
            &Intake::strict(&Operator::default()),
        )
        .unwrap()
    }

    fn deployment_of<'a>(s: &'a DesiredState, ws: &str) -> &'a crate::object::Object {
        s.objects
            .iter()
            .find(|o| &*o.workspace == ws && &*o.kind == "Deployment")
            .unwrap()
    }

    #[test]
    fn each_pinned_workspace_comes_from_its_revision_and_the_others_from_the_newest() {
        let old = state(tree(1, false), "r1");
        let new = state(tree(3, true), "r2");
        let old_alpha = deployment_of(&old, "alpha").clone();
        let new_beta = deployment_of(&new, "beta").clone();
        let pinned = BTreeMap::from([
            ("alpha".to_string(), "r1".to_string()),
            ("beta".to_string(), "r2".to_string()),
        ]);
        assert_eq!(needed(&pinned, "r2"), BTreeSet::from(["r1".to_string()]));
        let of =
            |s: &DesiredState, ws: &str| s.objects.iter().filter(|o| &*o.workspace == ws).count();
        // One replica renders no PodDisruptionBudget: alpha has one object fewer at r1.
        let count = new.objects.len() - of(&new, "alpha") + of(&old, "alpha");
        let composed = compose(new, &BTreeMap::from([("r1".to_string(), old)]), &pinned);
        assert_eq!(deployment_of(&composed, "alpha"), &old_alpha);
        assert_eq!(deployment_of(&composed, "beta"), &new_beta);
        assert_eq!(composed.objects.len(), count, "no object lost or doubled");
        assert_eq!(
            composed.workspace_revisions,
            BTreeMap::from([("alpha".to_string(), "r1".to_string())])
        );
        assert_eq!(composed.revision.as_deref(), Some("r2"));
        assert!(composed.held.is_empty());
    }

    #[test]
    fn a_workspace_pinned_to_a_revision_that_cannot_be_had_is_held_not_taken_from_the_newest() {
        let new = state(tree(3, true), "r2");
        let pinned = BTreeMap::from([("gamma".to_string(), "r0".to_string())]);
        let composed = compose(new, &BTreeMap::new(), &pinned);
        assert!(composed.objects.iter().all(|o| &*o.workspace != "gamma"));
        assert!(
            composed.held["gamma"][0].contains("revision r0"),
            "{:?}",
            composed.held
        );
        let ns = namespace_of(&state(tree(3, true), "r2"), "gamma").unwrap();
        assert!(
            !composed.scope.contains("ConfigMap", Some(&ns), "any"),
            "{ns} not out of scope"
        );
        assert!(composed.workspace_revisions.is_empty());
    }
}
