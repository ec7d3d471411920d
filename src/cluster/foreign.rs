//! What a namespace holds that tenantsync never made, before prune deletes
//! the namespace (and with it everything inside). Every namespaced kind the
//! API server serves (aggregated discovery) that this credential may list is
//! listed in the namespace, metadata only (so a Secret's contents are never
//! read). Not foreign: what the inventory records, what the cluster made for
//! tenantsync's objects (anything with an owner, the `default`
//! ServiceAccount, the `kube-root-ca.crt` ConfigMap, a Service's
//! Endpoints) and Events.

use std::collections::{BTreeMap, HashSet};

use kube::api::{Api, DynamicObject, ListParams};
use kube::discovery::{Discovery, Scope};

use super::{Cluster, ClusterError};
use crate::inventory::Inventory;

/// A namespace's contents tenantsync did not make.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Foreign {
    /// `Kind/namespace/name` of each foreign object.
    pub objects: Vec<String>,
    /// Kinds this credential may not list there (not checked).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unchecked_kinds: Vec<String>,
}

/// Made by the cluster itself in every namespace.
fn made_by_the_cluster(kind: &str, name: &str) -> bool {
    matches!(
        (kind, name),
        ("ConfigMap", "kube-root-ca.crt") | ("ServiceAccount", "default")
    )
}

impl Cluster {
    /// The foreign contents of each of `namespaces` (only those holding
    /// something foreign, or with kinds that could not be checked, appear).
    pub async fn foreign_objects(
        &self,
        namespaces: &[String],
        inventory: &Inventory,
    ) -> Result<BTreeMap<String, Foreign>, ClusterError> {
        let mut out = BTreeMap::new();
        if namespaces.is_empty() {
            return Ok(out);
        }
        self.count(false);
        let discovery = Discovery::new(self.client.clone())
            .run_aggregated()
            .await
            .map_err(|e| self.classify(e, "discover", "API resources"))?;
        let mut kinds = Vec::new();
        for group in discovery.groups() {
            for (resource, caps) in group.recommended_resources() {
                let listable = caps.operations.iter().any(|o| o == "list");
                let event = resource.kind == "Event";
                if caps.scope == Scope::Namespaced && listable && !event {
                    kinds.push(resource);
                }
            }
        }
        let recorded = inventory.keys();
        for ns in namespaces {
            let mut foreign = Foreign::default();
            let services: HashSet<&str> = inventory
                .objects
                .iter()
                .filter(|r| &*r.kind == "Service" && r.namespace.as_deref() == Some(ns.as_str()))
                .map(|r| &*r.name)
                .collect();
            for resource in &kinds {
                let api: Api<DynamicObject> =
                    Api::namespaced_with(self.client.clone(), ns, resource);
                self.count(false);
                let listed = match api.list_metadata(&ListParams::default()).await {
                    Ok(l) => l,
                    Err(kube::Error::Api(s)) if s.code == 403 => {
                        foreign.unchecked_kinds.push(resource.plural.clone());
                        continue;
                    }
                    Err(kube::Error::Api(s)) if s.code == 404 || s.code == 405 => continue,
                    Err(e) => return Err(self.classify(e, "list", &resource.plural)),
                };
                for item in listed.items {
                    let meta = &item.metadata;
                    let Some(name) = meta.name.as_deref() else {
                        continue;
                    };
                    let owned = meta
                        .owner_references
                        .as_ref()
                        .is_some_and(|o| !o.is_empty());
                    let endpoints = resource.kind == "Endpoints" && services.contains(name);
                    let ours = recorded.contains(&(&*resource.kind, Some(ns.as_str()), name));
                    if owned || endpoints || ours || made_by_the_cluster(&resource.kind, name) {
                        continue;
                    }
                    foreign
                        .objects
                        .push(format!("{}/{ns}/{name}", resource.kind));
                }
            }
            foreign.objects.sort();
            foreign.objects.dedup();
            if !foreign.objects.is_empty() || !foreign.unchecked_kinds.is_empty() {
                out.insert(ns.clone(), foreign);
            }
        }
        Ok(out)
    }
}
