//! Inventory writes that never lose another writer's update: every write
//! carries the `resourceVersion` it was computed from (server-side apply
//! checks it; a first write is a create, which fails if someone created it
//! first). On a conflict the stored inventory is read again and merged
//! ([`inventory::merge_concurrent`]: every object another writer added is
//! kept), then written again.

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams, PostParams};

use super::{Cluster, ClusterError};
use crate::object::FIELD_MANAGER;
use crate::sync::inventory::{self, Inventory, SYSTEM_NAMESPACE};

/// Attempts before a conflicting inventory write gives up.
const WRITE_ATTEMPTS: usize = 8;

/// An inventory as stored, with the `resourceVersion` it was read at
/// (`None`: there was none).
#[derive(Clone, Debug)]
pub struct Stored {
    pub inventory: Inventory,
    pub resource_version: Option<String>,
}

impl Cluster {
    /// Reads an environment's inventory and its `resourceVersion`.
    pub async fn read_inventory_stored(&self, environment: &str) -> Result<Stored, ClusterError> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), SYSTEM_NAMESPACE);
        self.count(false);
        let name = inventory::name_of(environment);
        let cm = api
            .get_opt(&name)
            .await
            .map_err(|e| self.classify(e, "get", "configmaps"))?;
        match cm {
            None => Ok(Stored {
                inventory: Inventory::new(environment),
                resource_version: None,
            }),
            Some(cm) => {
                let resource_version = cm.metadata.resource_version.clone();
                let inventory =
                    Inventory::from_config_map(&cm).map_err(|e| ClusterError::Unreadable {
                        server: self.server.clone(),
                        verb: "read".into(),
                        resource: format!("configmap {SYSTEM_NAMESPACE}/{name}"),
                        reason: e.to_string(),
                    })?;
                Ok(Stored {
                    inventory,
                    resource_version,
                })
            }
        }
    }

    /// Writes `ours`, computed from `base`; returns what was stored (the
    /// merge, when another writer wrote since `base` was read).
    pub async fn write_inventory_checked(
        &self,
        base: &Stored,
        ours: &Inventory,
    ) -> Result<Stored, ClusterError> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), SYSTEM_NAMESPACE);
        let name = inventory::name_of(&ours.environment);
        let mut version = base.resource_version.clone();
        let mut to_write = ours.clone();
        for _ in 0..WRITE_ATTEMPTS {
            let mut cm = to_write.to_config_map().map_err(|e| ClusterError::Encode {
                environment: to_write.environment.clone(),
                reason: e.to_string(),
            })?;
            self.count(true);
            let written = match &version {
                None => {
                    self.ensure_system_namespace(false).await?;
                    api.create(&PostParams::default(), &cm).await
                }
                Some(rv) => {
                    cm.metadata.resource_version = Some(rv.clone());
                    let mut value = serde_json::to_value(&cm).unwrap_or_default();
                    value["apiVersion"] = "v1".into();
                    value["kind"] = "ConfigMap".into();
                    let mut params = PatchParams::apply(FIELD_MANAGER);
                    params.force = true;
                    api.patch(&name, &params, &Patch::Apply(&value)).await
                }
            };
            match written {
                Ok(cm) => {
                    return Ok(Stored {
                        inventory: to_write,
                        resource_version: cm.metadata.resource_version,
                    });
                }
                // Changed (409) or deleted (404) since read: merge again.
                Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => {
                    let theirs = self.read_inventory_stored(&ours.environment).await?;
                    tracing::info!(
                        inventory = %name,
                        "the inventory changed since it was read; merging and writing again"
                    );
                    to_write =
                        inventory::merge_concurrent(&base.inventory, &to_write, &theirs.inventory);
                    version = theirs.resource_version;
                }
                Err(e) => return Err(self.classify(e, "patch", "configmaps")),
            }
        }
        Err(ClusterError::Contended {
            server: self.server.clone(),
            resource: format!("configmap {SYSTEM_NAMESPACE}/{name}"),
            attempts: WRITE_ATTEMPTS,
        })
    }
}
