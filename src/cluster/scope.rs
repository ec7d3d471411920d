//! The scope (namespaced or cluster-wide) the API server gives the kinds of
//! plain manifests, read before anything is written: the guardrails know
//! Kubernetes' own cluster-scoped kinds by name, any other (a CRD's, a newer
//! built-in) only from API discovery.

use std::collections::{HashMap, HashSet};

use super::{Cluster, ClusterError};
use crate::render::Object;
use crate::tenancy::{Guardrails, Violation};

impl Cluster {
    /// Whether each kind of `objects`' `resources/` manifests is namespaced:
    /// API discovery (the kinds tenantsync renders without a request), else
    /// a CustomResourceDefinition among `objects` (its kind is not served
    /// before this sync installs it). Kinds neither knows are left out.
    pub async fn manifest_scopes(
        &self,
        objects: &[Object],
    ) -> Result<HashMap<(String, String), bool>, ClusterError> {
        let declared = crate::tenancy::crd_scopes(objects);
        let mut out = HashMap::new();
        let mut seen = HashSet::new();
        for o in objects.iter().filter(|o| o.workspace.is_empty()) {
            let key = (o.api_version.to_string(), o.kind.to_string());
            if !seen.insert(key.clone()) {
                continue;
            }
            let namespaced = match self.resolve_kind(&key.0, &key.1).await? {
                Some((_, namespaced)) => Some(namespaced),
                None => declared.get(&key).copied(),
            };
            if let Some(namespaced) = namespaced {
                out.insert(key, namespaced);
            }
        }
        Ok(out)
    }
}

impl Cluster {
    /// The guardrails that need the cluster ([`Guardrails::check_scopes`]):
    /// each `resources/` manifest's namespace against its kind's scope.
    pub async fn check_scopes(
        &self,
        guardrails: &Guardrails,
        objects: &[Object],
    ) -> Result<Vec<Violation>, ClusterError> {
        let scopes = self.manifest_scopes(objects).await?;
        Ok(guardrails.check_scopes(objects, |api_version, kind| {
            scopes
                .get(&(api_version.to_string(), kind.to_string()))
                .copied()
        }))
    }
}
