//! An environment's desired state: validated, rendered and admitted by the
//! operator's guardrails (pure: a tree in memory in, a value out).

use std::collections::{BTreeMap, BTreeSet};

use crate::declare::changed::{self, Selection};
use crate::declare::diag::Diagnostic;
use crate::declare::model::{Environment, Ownership, SyncPolicy};
use crate::declare::repo::SourceTree;
use crate::declare::validate::{self, Partial, Repository};
use crate::object::Object;
use crate::render::{self, RenderError};
use crate::sync::rollout::{self, RolloutPlan};
use crate::sync::tenancy::{self, EffectivePolicy, Operator};
use crate::sync::{Scope, SyncOptions};

/// Workspaces of a repository to hold, each with why.
pub type AlsoHold<'a> = dyn Fn(&Repository) -> BTreeMap<String, String> + Sync + 'a;

/// What the caller accepts of a revision: the CLI's flags, the daemon's
/// way of holding what it cannot apply.
pub struct Intake<'a> {
    /// The operator's guardrails and sync ceiling (never the repository's).
    pub operator: &'a Operator,
    /// Hold invalid workspaces (their namespaces out of scope: neither
    /// applied nor pruned) instead of refusing the environment: the daemon,
    /// `sync --skip-invalid`. Problems of the environment itself still
    /// refuse it.
    pub hold_invalid: bool,
    /// Hold a workspace that cannot be rendered instead of failing (the
    /// daemon).
    pub hold_unrendered: bool,
    /// Only these workspaces (`--workspace`); every one when empty.
    pub only: &'a [String],
    /// Only the workspaces these changed files reach (`plan
    /// --changed-since`; [`changed::impact`]), within `only`.
    pub changed: Option<&'a [String]>,
    /// Workspaces to hold for reasons beyond the repository's own rules,
    /// each with why (the daemon: a namespace two environments it syncs to
    /// one cluster both render).
    pub also_hold: Option<&'a AlsoHold<'a>>,
}

impl<'a> Intake<'a> {
    /// Every workspace valid and rendered, or the environment is refused.
    pub fn strict(operator: &'a Operator) -> Intake<'a> {
        Intake {
            operator,
            hold_invalid: false,
            hold_unrendered: false,
            only: &[],
            changed: None,
            also_hold: None,
        }
    }
}

/// Why an environment's desired state cannot be had.
#[derive(Debug)]
pub enum Refused {
    /// The environment is invalid, or (not holding them) some of its
    /// workspaces are: every problem, sorted. `workspaces_only`: the
    /// environment itself is valid.
    Invalid {
        diagnostics: Vec<Diagnostic>,
        workspaces_only: bool,
    },
    /// What the environment renders breaks the operator's guardrails.
    Guardrails(Vec<Diagnostic>),
    /// An object could not be rendered (not holding such workspaces).
    Render(RenderError),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let lines = |diagnostics: &[Diagnostic]| {
            let lines: Vec<String> = diagnostics.iter().map(ToString::to_string).collect();
            lines.join("\n")
        };
        match self {
            Refused::Invalid { diagnostics, .. } => {
                write!(f, "{} error(s):\n{}", diagnostics.len(), lines(diagnostics))
            }
            Refused::Guardrails(diagnostics) => write!(
                f,
                "the operator's guardrails are broken:\n{}",
                lines(diagnostics)
            ),
            Refused::Render(e) => write!(f, "cannot render: {e}"),
        }
    }
}

impl std::error::Error for Refused {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Refused::Render(e) => Some(e),
            _ => None,
        }
    }
}

/// An environment's name and policies, its rendered objects, and what is
/// held. Not the model: at thousands of workspaces it is large, and nothing
/// after rendering needs it.
#[derive(Clone, Debug)]
pub struct DesiredState {
    pub name: String,
    /// The revision the objects came from, as plans and inventories record it.
    pub revision: Option<String>,
    /// Workspaces whose objects came from another revision than `revision`,
    /// each with its revision ([`super::compose`]); empty for a state
    /// rendered from one revision.
    pub workspace_revisions: BTreeMap<String, String>,
    pub sync_policy: SyncPolicy,
    /// The operator's settings tightened by the repository's.
    pub effective: EffectivePolicy,
    /// `spec.ownership`: whose fields are drift, which are left alone.
    pub ownership: Ownership,
    /// The rendered objects of the workspaces not held (and the layers'
    /// plain manifests).
    pub objects: Vec<Object>,
    /// What may be planned, applied and pruned.
    pub scope: Scope,
    /// The selected invalid workspaces held, with their problems.
    pub invalid: BTreeMap<String, Vec<Diagnostic>>,
    /// Every held workspace with why, a line each: its problems, then any
    /// other reason (a namespace clash, an object that does not render).
    pub held: BTreeMap<String, Vec<String>>,
    /// Selected workspaces Git does not declare ([`Unresolved`]).
    pub unresolved: Unresolved,
    /// What the changed files reach and what was planned, when only they
    /// were selected.
    pub changed: Option<Selection>,
    /// Each rendered workspace's `metadata.labels` (a rollout's selector).
    pub workspace_labels: BTreeMap<String, BTreeMap<String, String>>,
    /// Workspaces read but not selected that break the operator's
    /// guardrails or do not render, with why (a line each): they do not
    /// decide the plan (what else a selection reads must not), their
    /// objects are left out, and the CLI notes them on stderr.
    pub unselected_refused: BTreeMap<String, Vec<String>>,
}

impl DesiredState {
    /// Drops the objects out of [`DesiredState::scope`] (the CLI plans and
    /// syncs only what is in scope).
    pub fn keep_in_scope(&mut self) {
        if !self.scope.is_everything() {
            let scope = &self.scope;
            self.objects.retain(|o| scope.contains_object(o));
        }
    }

    /// This state narrowed to the workspaces whose namespaces are
    /// `namespaces` (a check of what a watch saw change): only their
    /// objects, planned, applied and pruned only in those namespaces.
    /// `None` when one of them is no namespace a workspace in scope renders
    /// into, a held workspace's included (what is there is for a check of
    /// everything to judge and report).
    pub fn narrowed(&self, namespaces: &BTreeSet<&str>) -> Option<DesiredState> {
        let mut rendered: BTreeSet<&str> = BTreeSet::new();
        for o in &self.objects {
            if o.workspace.is_empty() || !self.scope.contains_object(o) {
                continue;
            }
            match o.namespace.as_deref() {
                Some(ns) => rendered.insert(ns),
                None if &*o.kind == "Namespace" => rendered.insert(&o.name),
                None => false,
            };
        }
        let mut only = BTreeSet::new();
        for ns in namespaces {
            if !rendered.contains(ns) {
                return None;
            }
            only.insert((*ns).to_string());
        }
        let scope = Scope {
            only: Some(only),
            held: self.scope.held.clone(),
        };
        let objects: Vec<Object> = self
            .objects
            .iter()
            .filter(|o| scope.contains_object(o))
            .cloned()
            .collect();
        let workspaces: BTreeSet<&str> = objects.iter().map(|o| &*o.workspace).collect();
        fn of_workspaces<V: Clone>(
            m: &BTreeMap<String, V>,
            workspaces: &BTreeSet<&str>,
        ) -> BTreeMap<String, V> {
            m.iter()
                .filter(|(ws, _)| workspaces.contains(ws.as_str()))
                .map(|(ws, v)| (ws.clone(), v.clone()))
                .collect()
        }
        Some(DesiredState {
            name: self.name.clone(),
            revision: self.revision.clone(),
            workspace_revisions: of_workspaces(&self.workspace_revisions, &workspaces),
            sync_policy: self.sync_policy.clone(),
            effective: self.effective,
            ownership: self.ownership.clone(),
            workspace_labels: of_workspaces(&self.workspace_labels, &workspaces),
            objects,
            scope,
            invalid: BTreeMap::new(),
            held: BTreeMap::new(),
            unresolved: Unresolved::default(),
            changed: None,
            unselected_refused: BTreeMap::new(),
        })
    }

    /// The namespaces whose objects differ between `before` and this state
    /// (a workspace's namespace, with the Namespace itself): what a new
    /// revision changes, where the rest renders exactly as before. `None`
    /// when a cluster-scoped object (other than a Namespace) differs, or a
    /// namespace `before` rendered into is gone (something to prune that
    /// only a sync of everything judges), or more than `limit` namespaces
    /// differ.
    pub fn changed_namespaces(
        &self,
        before: &DesiredState,
        limit: usize,
    ) -> Option<BTreeSet<String>> {
        fn by_namespace(objects: &[Object]) -> BTreeMap<Option<&str>, Vec<&Object>> {
            let mut out: BTreeMap<Option<&str>, Vec<&Object>> = BTreeMap::new();
            for o in objects {
                let ns = match o.namespace.as_deref() {
                    Some(ns) => Some(ns),
                    None if &*o.kind == "Namespace" => Some(&*o.name),
                    None => None,
                };
                out.entry(ns).or_default().push(o);
            }
            for objects in out.values_mut() {
                objects.sort_by(|a, b| a.key().cmp(&b.key()));
            }
            out
        }
        let old = by_namespace(&before.objects);
        let new = by_namespace(&self.objects);
        if old.get(&None) != new.get(&None) {
            return None;
        }
        let mut changed = BTreeSet::new();
        for (ns, objects) in &old {
            let Some(ns) = ns else { continue };
            match new.get(&Some(*ns)) {
                None => return None,
                Some(now) if now != objects => {
                    changed.insert((*ns).to_string());
                }
                Some(_) => {}
            }
            if changed.len() > limit {
                return None;
            }
        }
        for ns in new.keys().flatten() {
            if !old.contains_key(&Some(*ns)) {
                changed.insert((*ns).to_string());
            }
        }
        (changed.len() <= limit).then_some(changed)
    }

    /// How a plan of this state rolls out (`syncPolicy.rollout`), when it
    /// does: the policy is set and the plan changes more than one
    /// workspace it holds back.
    pub fn rollout(&self, plan: &crate::plan::Plan) -> Option<RolloutPlan> {
        // Validation refuses a policy that does not check.
        let policy = self.sync_policy.rollout.as_ref()?.checked().ok()?;
        rollout::plan_rollout(&policy, plan, &self.workspace_labels)
    }

    /// The options of a sync of this state: the caller's `flags` (only
    /// `prune` may also come from the repository's policy), the
    /// repository's policy as far as the operator allows it, the scope.
    pub fn sync_options(&self, flags: SyncOptions) -> SyncOptions {
        SyncOptions {
            prune: flags.prune || self.sync_policy.prune,
            force_conflicts: self.effective.force_conflicts,
            max_prune_percent: self.effective.max_prune_percent,
            scope: self.scope.clone(),
            ..flags
        }
    }
}

/// The desired state of environment `env` in `tree` (read at `revision`):
/// [`select`], then [`desired_of`].
pub fn desired(
    tree: SourceTree,
    env: &str,
    revision: Option<String>,
    intake: &Intake<'_>,
) -> Result<DesiredState, Refused> {
    desired_of(select(tree, env, intake)?, revision, intake)
}

/// Selected workspaces Git does not declare (each with its namespace: one
/// being offboarded is known only from the inventory), and the workspaces
/// it does, for the message when one is not that either.
#[derive(Clone, Debug, Default)]
pub struct Unresolved {
    pub workspaces: Vec<(String, String)>,
    pub known: String,
}

/// An environment resolved and its workspaces selected: the first half of
/// [`desired`], before anything is rendered.
pub struct Selected {
    environment: Environment,
    /// Every invalid workspace, with its problems (all are held).
    workspace_errors: BTreeMap<String, Vec<Diagnostic>>,
    /// The selected invalid workspaces (held when the intake holds them).
    invalid: BTreeMap<String, Vec<Diagnostic>>,
    /// Invalid workspaces not selected, left as they are.
    pub unselected: Vec<String>,
    clashes: BTreeMap<String, String>,
    unresolved: Unresolved,
    /// The selected workspaces; every one when `None`.
    only: Option<BTreeSet<String>>,
    changed: Option<Selection>,
}

/// Loads `tree`, resolves environment `env`, and selects its workspaces
/// (`intake.only`): only the selected ones need to be valid; the others
/// are out of scope and left as they are.
pub fn select(tree: SourceTree, env: &str, intake: &Intake<'_>) -> Result<Selected, Refused> {
    let named = named_of(intake);
    // Each stage's input goes as soon as the next stage has what it needs:
    // the files once parsed, the parsed files once resolved.
    let (repository, changed) = load_selection(&tree, env, intake, named.as_ref());
    drop(tree);
    let partial = repository.resolve_partial(env);
    let clashes = intake
        .also_hold
        .map(|also_hold| also_hold(&repository))
        .unwrap_or_default();
    let unread = repository.unread(env);
    drop(repository);
    let only: Option<BTreeSet<String>> = match &changed {
        Some(selection) => selection.planned(),
        None => named,
    };
    let selected = |ws: &str| only.as_ref().is_none_or(|only| only.contains(ws));
    let (invalid, unselected): (BTreeMap<_, _>, BTreeMap<_, _>) = partial
        .workspace_errors
        .iter()
        .map(|(ws, diags)| (ws.clone(), diags.clone()))
        .partition(|(ws, _)| selected(ws));
    if !partial.environment_errors.is_empty() || (!intake.hold_invalid && !invalid.is_empty()) {
        let mut diagnostics = partial.environment_errors.clone();
        diagnostics.extend(invalid.values().flatten().cloned());
        diagnostics.sort();
        diagnostics.dedup();
        return Err(Refused::Invalid {
            workspaces_only: partial.environment_errors.is_empty(),
            diagnostics,
        });
    }
    let Partial {
        environment,
        workspace_errors,
        ..
    } = partial;
    let mut known: Vec<&str> = environment
        .workspaces
        .iter()
        .map(|w| w.metadata.name.as_str())
        .chain(workspace_errors.keys().map(String::as_str))
        .chain(unread.iter().map(String::as_str))
        .collect();
    known.sort_unstable();
    known.dedup();
    let unresolved = Unresolved {
        workspaces: intake
            .only
            .iter()
            .filter(|w| !known.contains(&w.as_str()))
            .map(|w| (w.clone(), environment.namespace_of(w)))
            .collect(),
        known: known.join(", "),
    };
    Ok(Selected {
        unselected: unselected.into_keys().collect(),
        environment,
        workspace_errors,
        invalid,
        clashes,
        unresolved,
        only,
        changed,
    })
}

/// The repository read for `intake`, and what its changed files reach
/// (`plan --changed-since`). When they reach only some workspaces, only
/// their files and those of the workspaces they are checked with
/// ([`validate::Repository::focus`]) are parsed, besides every
/// environment.yaml and manifest: a one-workspace pull request costs one
/// workspace, not the environment.
fn load_selection(
    tree: &SourceTree,
    env: &str,
    intake: &Intake<'_>,
    named: Option<&BTreeSet<String>>,
) -> (Repository, Option<Selection>) {
    let Some(paths) = intake.changed else {
        return (validate::load(tree), None);
    };
    // Every declaration but the workspace files first: enough to tell
    // the chain, what the change reaches and what that must be read with.
    let layers = validate::load_unfocused(tree);
    let (selection, focus) = focus_of(&layers, env, intake, paths, named);
    let repository = layers.read_workspaces(focus.as_ref());
    (repository, Some(selection))
}

/// What `changed` files reach in environment `env`, and the workspaces a
/// load must parse for it (every one when `None`).
fn focus_of(
    layers: &validate::Unfocused<'_>,
    env: &str,
    intake: &Intake<'_>,
    changed: &[String],
    named: Option<&BTreeSet<String>>,
) -> (Selection, Option<BTreeSet<String>>) {
    let chain = layers.chain_of(env).unwrap_or_default();
    let selection = Selection {
        impact: changed::impact(changed, &chain),
        named: named.cloned(),
    };
    let focus = selection
        .planned()
        .filter(|_| intake.also_hold.is_none())
        .and_then(|planned| layers.focus(env, &planned));
    (selection, focus)
}

/// The workspaces `--workspace` names; every one when `None`.
fn named_of(intake: &Intake<'_>) -> Option<BTreeSet<String>> {
    (!intake.only.is_empty()).then(|| intake.only.iter().cloned().collect())
}

/// The files of `tree` whose content was not read ([`SourceTree::defer`])
/// that [`select`] with the same `env` and `intake` parses: the ones a
/// source must read into the tree first. A one-workspace pull request's
/// plan reads that workspace's files, not the environment's thousands.
pub fn files_to_read(tree: &SourceTree, env: &str, intake: &Intake<'_>) -> Vec<String> {
    if !tree.has_deferred() {
        return Vec::new();
    }
    let named = named_of(intake);
    let layers = validate::load_unfocused(tree);
    let focus = match intake.changed {
        Some(paths) => focus_of(&layers, env, intake, paths, named.as_ref()).1,
        None => None,
    };
    layers.deferred_in(focus.as_ref())
}

/// Renders and admits a selection: the second half of [`desired`].
pub fn desired_of(
    selected: Selected,
    revision: Option<String>,
    intake: &Intake<'_>,
) -> Result<DesiredState, Refused> {
    let Selected {
        mut environment,
        workspace_errors,
        invalid,
        clashes,
        unresolved,
        only,
        changed,
        ..
    } = selected;
    environment
        .workspaces
        .retain(|w| !clashes.contains_key(&w.metadata.name));
    let workspace_labels = environment
        .workspaces
        .iter()
        .filter(|w| !w.metadata.labels.is_empty())
        .map(|w| (w.metadata.name.clone(), w.metadata.labels.clone()))
        .collect();
    let (mut objects, mut unrendered) = render::render_partial(&environment);
    // A workspace read but not selected (a selection's other workspaces,
    // or those a focused load reads to check the selected ones with) does
    // not decide the plan: whether it is read at all depends on what else
    // the repository holds.
    let selected = |ws: &str| only.as_ref().is_none_or(|only| only.contains(ws));
    let mut unselected_refused: BTreeMap<String, Vec<String>> = BTreeMap::new();
    unrendered.retain(|ws, e| {
        if selected(ws) {
            return true;
        }
        unselected_refused
            .entry(ws.clone())
            .or_default()
            .push(format!("cannot render: {e}"));
        false
    });
    if !intake.hold_unrendered
        && let Some((_, e)) = unrendered.pop_first()
    {
        return Err(Refused::Render(e));
    }
    let effective = match tenancy::admit(
        intake.operator,
        &environment.name,
        environment.settings.namespace_template.as_deref(),
        &environment.settings.sync_policy,
        &objects,
    ) {
        Ok(effective) => effective,
        Err(violations) => {
            // The workspace of each object a violation is about.
            let workspace_of: BTreeMap<String, &str> = objects
                .iter()
                .filter(|o| !o.workspace.is_empty())
                .map(|o| (o.id(), &*o.workspace))
                .collect();
            let mut refused = Vec::new();
            for v in violations {
                match workspace_of.get(&v.subject) {
                    Some(ws) if !selected(ws) => unselected_refused
                        .entry((*ws).to_string())
                        .or_default()
                        .push(format!("{} (operator guardrail): {}", v.subject, v.message)),
                    _ => refused.push(v.diagnostic(&environment.name)),
                }
            }
            if !refused.is_empty() {
                return Err(Refused::Guardrails(refused));
            }
            tenancy::effective_policy(intake.operator.policy, &environment.settings.sync_policy)
                .map_err(|more| {
                    Refused::Guardrails(
                        more.iter()
                            .map(|v| v.diagnostic(&environment.name))
                            .collect(),
                    )
                })?
        }
    };
    objects.retain(|o| !unselected_refused.contains_key(&*o.workspace));
    let mut held: BTreeMap<String, Vec<String>> = workspace_errors
        .iter()
        .map(|(ws, d)| (ws.clone(), d.iter().map(ToString::to_string).collect()))
        .collect();
    for (ws, why) in clashes {
        held.entry(ws).or_default().push(why);
    }
    for (ws, e) in unrendered {
        held.entry(ws).or_default().push(format!(
            "cannot render revision {}: {e}",
            revision.as_deref().unwrap_or_default()
        ));
    }
    let scope = Scope {
        only: only.map(|only| only.iter().map(|w| environment.namespace_of(w)).collect()),
        held: held.keys().map(|ws| environment.namespace_of(ws)).collect(),
    };
    Ok(DesiredState {
        name: environment.name,
        revision,
        workspace_revisions: BTreeMap::new(),
        sync_policy: environment.settings.sync_policy,
        effective,
        ownership: environment.settings.ownership,
        objects,
        scope,
        invalid,
        held,
        unresolved,
        changed,
        workspace_labels,
        unselected_refused,
    })
}

/// [`tenancy::admit`] of a resolved environment's objects, its violations
/// as diagnostics.
pub fn admit(
    operator: &Operator,
    environment: &Environment,
    objects: &[Object],
) -> Result<EffectivePolicy, Vec<Diagnostic>> {
    tenancy::admit(
        operator,
        &environment.name,
        environment.settings.namespace_template.as_deref(),
        &environment.settings.sync_policy,
        objects,
    )
    .map_err(|violations| {
        violations
            .iter()
            .map(|v| v.diagnostic(&environment.name))
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> DesiredState {
        with_replicas(2, None)
    }

    fn namespace_of(s: &DesiredState, ws: &str) -> String {
        s.objects
            .iter()
            .find(|o| &*o.workspace == ws && o.namespace.is_some())
            .and_then(|o| o.namespace.as_deref())
            .expect("a namespaced object")
            .to_string()
    }

    #[test]
    fn a_state_narrowed_to_a_namespace_holds_only_that_workspace_and_plans_only_there() {
        let full = state();
        let alpha = namespace_of(&full, "alpha");
        let beta = namespace_of(&full, "beta");
        let narrowed = full
            .narrowed(&BTreeSet::from([alpha.as_str()]))
            .expect("alpha's namespace is a workspace's");
        let alpha_objects: Vec<&Object> = full
            .objects
            .iter()
            .filter(|o| &*o.workspace == "alpha")
            .collect();
        assert!(!alpha_objects.is_empty());
        assert_eq!(
            narrowed.objects.iter().collect::<Vec<_>>(),
            alpha_objects,
            "exactly alpha's objects, its Namespace included"
        );
        assert!(narrowed.objects.iter().any(|o| &*o.kind == "Namespace"));
        assert!(narrowed.scope.contains("Deployment", Some(&alpha), "x"));
        assert!(narrowed.scope.contains("Namespace", None, &alpha));
        assert!(!narrowed.scope.contains("Deployment", Some(&beta), "x"));
        assert!(!narrowed.scope.contains("ClusterRole", None, "x"));
        assert_eq!(narrowed.revision.as_deref(), Some("r"));
        assert!(narrowed.workspace_labels.keys().all(|ws| ws == "alpha"));
    }

    #[test]
    fn a_namespace_no_workspace_renders_into_is_not_narrowed_to() {
        let full = state();
        assert!(full.narrowed(&BTreeSet::from(["kube-system"])).is_none());
        let alpha = namespace_of(&full, "alpha");
        assert!(
            full.narrowed(&BTreeSet::from([alpha.as_str(), "default"]))
                .is_none()
        );
    }

    #[test]
    fn a_held_namespace_is_not_narrowed_to() {
        let mut full = state();
        let alpha = namespace_of(&full, "alpha");
        let beta = namespace_of(&full, "beta");
        full.scope.held.insert(alpha.clone());
        assert!(
            full.narrowed(&BTreeSet::from([alpha.as_str()])).is_none(),
            "a check of a held workspace alone would report it in step"
        );
        assert!(
            full.narrowed(&BTreeSet::from([beta.as_str()])).is_some(),
            "another workspace is still narrowed to"
        );
    }

    fn with_replicas(alpha: u32, extra: Option<&str>) -> DesiredState {
        let mut tree = SourceTree::new();
        tree.insert(
            "environments/dev/environment.yaml",
            b"apiVersion: tenantsync.io/v1alpha1\nkind: Environment\nmetadata: {name: dev}\nspec:\n  ingress: {domain: dev.example.com}\n  images:\n    fhir: {repository: example.azurecr.io/fhir-server, tag: '4.3.1'}\n".to_vec(),
        );
        let mut names = vec![("alpha", alpha), ("beta", 2)];
        if let Some(extra) = extra {
            names.push((extra, 2));
        }
        for (name, replicas) in names {
            tree.insert(
                &format!("environments/dev/workspaces/{name}.yaml"),
                format!("apiVersion: tenantsync.io/v1alpha1\nkind: Workspace\nmetadata: {{name: {name}}}\nspec:\n  fhirServices:\n    - name: api\n      replicas: {replicas}\n").into_bytes(),
            );
        }
        desired(
            tree,
            "dev",
            Some("r".into()),
            &Intake::strict(&Operator::default()),
        )
        .expect("desired")
    }

    /// Issue 19 (a one-workspace pull request's plan): a source may leave
    /// unchanged workspace files unread; `files_to_read` names the ones the
    /// selection's checks parse, and only those: the changed workspace's,
    /// and those sharing its namespace; every one for a change of the
    /// environment's settings or without `--changed-since`.
    #[test]
    fn files_to_read_names_the_deferred_workspace_files_a_changed_since_selection_parses() {
        let tree = |template: &str| {
            let mut tree = SourceTree::new();
            tree.insert(
                "environments/dev/environment.yaml",
                format!("apiVersion: tenantsync.io/v1alpha1\nkind: Environment\nmetadata: {{name: dev}}\nspec:\n  namespaceTemplate: \"{template}\"\n  ingress: {{domain: dev.example.com}}\n").into_bytes(),
            );
            tree.insert(
                "environments/dev/workspaces/alpha.yaml",
                b"apiVersion: tenantsync.io/v1alpha1\nkind: Workspace\nmetadata: {name: alpha}\nspec: {}\n".to_vec(),
            );
            for name in ["beta", "gamma"] {
                tree.defer(&format!("environments/dev/workspaces/{name}.yaml"));
            }
            tree
        };
        let operator = Operator::default();
        let alpha_changed = ["environments/dev/workspaces/alpha.yaml".to_string()];
        let intake = Intake {
            changed: Some(&alpha_changed),
            ..Intake::strict(&operator)
        };
        let own = tree("{environment}-{workspace}");
        assert_eq!(files_to_read(&own, "dev", &intake), Vec::<String>::new());
        let shared = tree("shared-{environment}");
        assert_eq!(
            files_to_read(&shared, "dev", &intake),
            [
                "environments/dev/workspaces/beta.yaml",
                "environments/dev/workspaces/gamma.yaml"
            ]
        );
        let settings = ["environments/dev/environment.yaml".to_string()];
        let everything = Intake {
            changed: Some(&settings),
            ..Intake::strict(&operator)
        };
        assert_eq!(files_to_read(&own, "dev", &everything).len(), 2);
        assert_eq!(
            files_to_read(&own, "dev", &Intake::strict(&operator)).len(),
            2
        );
        // Left unread by mistake, a file is refused, never parsed as the
        // empty text it is held as.
        let unread = pipeline_refusal(own, &Intake::strict(&operator));
        assert!(
            unread.contains("environments/dev/workspaces/beta.yaml:1:1")
                && unread.contains("this file's content was not read"),
            "{unread}"
        );
    }

    fn pipeline_refusal(tree: SourceTree, intake: &Intake<'_>) -> String {
        match select(tree, "dev", intake) {
            Err(Refused::Invalid { diagnostics, .. }) => diagnostics
                .iter()
                .map(|d| format!("{}:{}:{}: {}", d.file, d.line, d.column, d.message))
                .collect::<Vec<_>>()
                .join("\n"),
            Err(other) => format!("{other:?}"),
            Ok(_) => "selected".to_string(),
        }
    }

    #[test]
    fn a_revision_changing_one_workspace_changes_only_its_namespace() {
        let before = with_replicas(2, None);
        let alpha = namespace_of(&before, "alpha");
        assert_eq!(
            with_replicas(3, None).changed_namespaces(&before, 4),
            Some(BTreeSet::from([alpha.clone()]))
        );
        assert_eq!(
            with_replicas(2, None).changed_namespaces(&before, 4),
            Some(BTreeSet::new()),
            "the same rendering changes nothing"
        );
        // A workspace added: its namespace, nothing else.
        let added = with_replicas(2, Some("gamma"));
        let gamma = namespace_of(&added, "gamma");
        assert_eq!(
            added.changed_namespaces(&before, 4),
            Some(BTreeSet::from([gamma]))
        );
        // A workspace removed: something to prune, judged in full.
        assert_eq!(before.changed_namespaces(&added, 4), None);
        // More namespaces than the limit: none.
        assert_eq!(
            with_replicas(3, Some("gamma")).changed_namespaces(&before, 1),
            None
        );
    }

    #[test]
    fn a_changed_cluster_scoped_object_is_not_a_namespace_change() {
        let before = with_replicas(2, None);
        let mut after = with_replicas(2, None);
        let role = Object::from_value(
            "",
            &serde_json::json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "reader"}}),
        )
        .expect("object");
        after.objects.push(role);
        assert_eq!(after.changed_namespaces(&before, 4), None);
    }
}
