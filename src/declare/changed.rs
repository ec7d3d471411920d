//! Which workspaces of an environment a change of the repository touches
//! (`plan --changed-since`): what each changed file (`source::git::changed_since`)
//! reaches through the environment's layer chain.

use std::collections::{BTreeMap, BTreeSet};

use super::validate::{ENVIRONMENTS_DIR, WORKSPACES_DIR, workspace_of_file};

/// What a change reaches in one environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Impact {
    /// Every workspace: a file they all depend on changed (the layer's
    /// `environment.yaml`, with its settings and inline patches, or a
    /// `resources/` manifest). Holds that file's path.
    Everything(String),
    /// Only these workspaces (none: the change does not reach the
    /// environment), each with the changed files that reach it.
    Workspaces(BTreeMap<String, Vec<String>>),
}

/// What `plan --changed-since` plans: the change's reach, within the
/// workspaces `--workspace` names, if it names any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selection {
    pub impact: Impact,
    pub named: Option<BTreeSet<String>>,
}

impl Selection {
    /// The workspaces planned; every one when `None`.
    pub fn planned(&self) -> Option<BTreeSet<String>> {
        match (&self.impact, &self.named) {
            (Impact::Everything(_), named) => named.clone(),
            (Impact::Workspaces(reached), named) => Some(
                reached
                    .keys()
                    .filter(|w| named.as_ref().is_none_or(|n| n.contains(*w)))
                    .cloned()
                    .collect(),
            ),
        }
    }

    /// Workspaces the change reaches that `--workspace` leaves out.
    pub fn not_named(&self) -> Vec<String> {
        match (&self.impact, &self.named) {
            (Impact::Workspaces(reached), Some(named)) => reached
                .keys()
                .filter(|w| !named.contains(*w))
                .cloned()
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// What the changed `paths` reach in an environment whose layers are
/// `chain` (the environment, then its bases). A file outside `environments/`
/// or in a layer outside the chain is not read for it; a workspace file
/// reaches the workspace it is named after (in whichever layer of the
/// chain); any other declaration of the chain reaches everything.
pub fn impact(paths: &[String], chain: &[String]) -> Impact {
    let prefix = format!("{ENVIRONMENTS_DIR}/");
    let mut workspaces: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for path in paths {
        let Some((layer, inner)) = path
            .strip_prefix(&prefix)
            .and_then(|rest| rest.split_once('/'))
        else {
            continue;
        };
        if !chain.iter().any(|l| l == layer) {
            continue;
        }
        // Only YAML files are declarations (README.md beside them is not).
        if !(inner.ends_with(".yaml") || inner.ends_with(".yml")) {
            continue;
        }
        if inner.starts_with(&format!("{WORKSPACES_DIR}/")) {
            workspaces
                .entry(workspace_of_file(inner).to_string())
                .or_default()
                .push(path.clone());
        } else {
            return Impact::Everything(path.clone());
        }
    }
    Impact::Workspaces(workspaces)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspace_names_narrow_what_is_planned_and_say_what_they_left_out() {
        let reached = Impact::Workspaces(BTreeMap::from([
            ("alpha".to_string(), vec!["a".to_string()]),
            ("beta".to_string(), vec!["b".to_string()]),
        ]));
        let named = |n: &[&str]| Some(n.iter().map(|s| s.to_string()).collect());
        let s = Selection {
            impact: reached.clone(),
            named: named(&["beta", "gamma"]),
        };
        assert_eq!(s.planned(), named(&["beta"]));
        assert_eq!(s.not_named(), ["alpha"]);
        let s = Selection {
            impact: reached,
            named: None,
        };
        assert_eq!(s.planned(), named(&["alpha", "beta"]));
        assert!(s.not_named().is_empty());
        let s = Selection {
            impact: Impact::Everything("e".into()),
            named: named(&["gamma"]),
        };
        assert_eq!(s.planned(), named(&["gamma"]));
        let s = Selection {
            impact: Impact::Everything("e".into()),
            named: None,
        };
        assert_eq!(s.planned(), None);
    }

    fn chain() -> Vec<String> {
        vec!["prod".into(), "base".into()]
    }

    #[test]
    fn a_workspace_file_in_any_layer_of_the_chain_reaches_that_workspace_only() {
        let paths: Vec<String> = [
            "environments/base/workspaces/contoso.yaml",
            "environments/prod/workspaces/contoso.scale.yaml",
            "environments/prod/workspaces/fabrikam.yml",
            "environments/dev/workspaces/woodgrove.yaml",
            "environments/prod/README.md",
            "docs/onboarding.md",
        ]
        .map(String::from)
        .to_vec();
        let Impact::Workspaces(ws) = impact(&paths, &chain()) else {
            panic!("expected workspaces");
        };
        assert_eq!(ws.keys().collect::<Vec<_>>(), ["contoso", "fabrikam"]);
        assert_eq!(ws["contoso"].len(), 2);
    }

    #[test]
    fn an_environment_file_or_a_resource_of_the_chain_reaches_everything() {
        for path in [
            "environments/prod/environment.yaml",
            "environments/base/environment.yaml",
            "environments/base/resources/quota.yaml",
        ] {
            let paths = vec![
                "environments/prod/workspaces/contoso.yaml".to_string(),
                path.to_string(),
            ];
            assert_eq!(impact(&paths, &chain()), Impact::Everything(path.into()));
        }
        // Another environment's settings do not reach this one.
        let paths = vec!["environments/dev/environment.yaml".to_string()];
        assert_eq!(
            impact(&paths, &chain()),
            Impact::Workspaces(BTreeMap::new())
        );
    }
}
