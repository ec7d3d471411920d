//! What a namespace holds that tenantsync never made, before prune deletes
//! the namespace (and with it everything inside). Every namespaced kind the
//! API server serves (aggregated discovery) that this credential may list is
//! listed, metadata only (so a Secret's contents are never read): one LIST
//! per kind across the cluster when more than three namespaces go, else one
//! per namespace (also when the credential may list only there). Not foreign: what the inventory records, what the cluster made for
//! tenantsync's objects (anything with an owner, the `default`
//! ServiceAccount, the `kube-root-ca.crt` ConfigMap, a Service's
//! Endpoints) and Events.

use std::collections::BTreeMap;

use kube::api::{Api, DynamicObject, ListParams};
use kube::discovery::{Discovery, Scope};

use super::{Cluster, ClusterError};
use crate::sync::inventory::Inventory;
use crate::sync::report::Foreign;

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
        let wanted: std::collections::BTreeSet<&str> =
            namespaces.iter().map(String::as_str).collect();
        let mut found: BTreeMap<String, Foreign> = namespaces
            .iter()
            .map(|ns| (ns.clone(), Foreign::default()))
            .collect();
        for resource in &kinds {
            // Many namespaces: one LIST of the kind across the cluster (pages
            // of PAGE_SIZE); a few, or no cluster-wide right: one per namespace.
            let mut items = Vec::new();
            let mut across = namespaces.len() > 3;
            if across {
                let api: Api<DynamicObject> = Api::all_with(self.client.clone(), resource);
                let mut params = ListParams::default().limit(super::PAGE_SIZE);
                loop {
                    self.count(false);
                    match api.list_metadata(&params).await {
                        Ok(page) => {
                            let token = page.metadata.continue_.clone().filter(|t| !t.is_empty());
                            items.extend(page.items.into_iter().filter(|i| {
                                i.metadata
                                    .namespace
                                    .as_deref()
                                    .is_some_and(|ns| wanted.contains(ns))
                            }));
                            match token {
                                Some(t) => params = params.continue_token(&t),
                                None => break,
                            }
                        }
                        Err(kube::Error::Api(s)) if s.code == 403 => {
                            items.clear();
                            across = false;
                            break;
                        }
                        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 405 => break,
                        Err(e) => return Err(self.classify(e, "list", &resource.plural)),
                    }
                }
            }
            if !across {
                for ns in namespaces {
                    let api: Api<DynamicObject> =
                        Api::namespaced_with(self.client.clone(), ns, resource);
                    self.count(false);
                    match api.list_metadata(&ListParams::default()).await {
                        Ok(l) => items.extend(l.items.into_iter().map(|mut i| {
                            i.metadata.namespace = Some(ns.clone());
                            i
                        })),
                        Err(kube::Error::Api(s)) if s.code == 403 => {
                            if let Some(f) = found.get_mut(ns) {
                                f.unchecked_kinds.push(resource.plural.clone());
                            }
                        }
                        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 405 => {}
                        Err(e) => return Err(self.classify(e, "list", &resource.plural)),
                    }
                }
            }
            for item in items {
                let meta = &item.metadata;
                let (Some(name), Some(ns)) = (meta.name.as_deref(), meta.namespace.as_deref())
                else {
                    continue;
                };
                let owned = meta
                    .owner_references
                    .as_ref()
                    .is_some_and(|o| !o.is_empty());
                let endpoints =
                    resource.kind == "Endpoints" && recorded.contains(&("Service", Some(ns), name));
                let ours = recorded.contains(&(&*resource.kind, Some(ns), name));
                if owned || endpoints || ours || made_by_the_cluster(&resource.kind, name) {
                    continue;
                }
                if let Some(f) = found.get_mut(ns) {
                    f.objects
                        .push(crate::object::id((&resource.kind, Some(ns), name)));
                }
            }
        }
        for (ns, mut foreign) in found {
            foreign.objects.sort();
            foreign.objects.dedup();
            if !foreign.objects.is_empty() || !foreign.unchecked_kinds.is_empty() {
                out.insert(ns, foreign);
            }
        }
        Ok(out)
    }
}
