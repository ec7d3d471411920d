//! The inventory ConfigMap: read, written, and the status fields on it.
//!
//! Checked writes never lose another writer's update: every write
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
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::object::{MANAGED_BY, MANAGER};

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

impl Cluster {
    /// Reads an environment's inventory; `None` before the first sync.
    pub async fn read_inventory(
        &self,
        environment: &str,
    ) -> Result<Option<Inventory>, ClusterError> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), SYSTEM_NAMESPACE);
        self.count(false);
        let cm = match api.get_opt(&inventory::name_of(environment)).await {
            Ok(cm) => cm,
            Err(e) => return Err(self.classify(e, "get", "configmaps")),
        };
        match cm {
            None => Ok(None),
            Some(cm) => {
                Inventory::from_config_map(&cm)
                    .map(Some)
                    .map_err(|e| ClusterError::Unreadable {
                        server: self.server.clone(),
                        verb: "read".into(),
                        resource: format!(
                            "configmap {SYSTEM_NAMESPACE}/{}",
                            inventory::name_of(environment)
                        ),
                        reason: e.to_string(),
                    })
            }
        }
    }

    /// The inventory's data as stored: the status fields and the summary.
    pub async fn inventory_data(
        &self,
        environment: &str,
    ) -> Result<Option<BTreeMap<String, String>>, ClusterError> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), SYSTEM_NAMESPACE);
        self.count(false);
        let cm = api
            .get_opt(&inventory::name_of(environment))
            .await
            .map_err(|e| self.classify(e, "get", "configmaps"))?;
        Ok(cm.map(|c| c.data.unwrap_or_default()))
    }

    /// Writes the inventory (creating `tenantsync-system` when needed).
    pub async fn write_inventory(
        &self,
        inventory: &Inventory,
        dry_run: bool,
    ) -> Result<(), ClusterError> {
        let cm = inventory
            .to_config_map()
            .map_err(|e| ClusterError::Encode {
                environment: inventory.environment.clone(),
                reason: e.to_string(),
            })?;
        let mut params = PatchParams::apply(FIELD_MANAGER);
        params.force = true;
        params.dry_run = dry_run;
        self.ensure_system_namespace(dry_run).await?;
        let mut value = serde_json::to_value(&cm).unwrap_or_default();
        value["apiVersion"] = "v1".into();
        value["kind"] = "ConfigMap".into();
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), SYSTEM_NAMESPACE);
        self.count(!dry_run);
        api.patch(
            &inventory::name_of(&inventory.environment),
            &params,
            &Patch::Apply(&value),
        )
        .await
        .map_err(|e| self.classify(e, "patch", "configmaps"))?;
        Ok(())
    }

    /// Writes the daemon's status fields (`status.*` keys) onto an existing
    /// inventory, as field manager `tenantsync-status`; does nothing before
    /// the first sync created the inventory.
    pub async fn write_status(
        &self,
        environment: &str,
        fields: &BTreeMap<String, String>,
    ) -> Result<(), ClusterError> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), SYSTEM_NAMESPACE);
        let data: serde_json::Map<String, serde_json::Value> = fields
            .iter()
            .map(|(k, v)| {
                (
                    format!("status.{k}"),
                    inventory::bounded_status_value(v).into(),
                )
            })
            .collect();
        let patch = serde_json::json!({ "data": data });
        self.count(true);
        match api
            .patch(
                &inventory::name_of(environment),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(self.classify(e, "patch", "configmaps")),
        }
    }

    /// Creates `tenantsync-system` (inventories, Events, the leader Lease)
    /// if it is missing.
    pub async fn ensure_system_namespace(&self, dry_run: bool) -> Result<(), ClusterError> {
        let mut params = PatchParams::apply(FIELD_MANAGER);
        params.force = true;
        params.dry_run = dry_run;
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(SYSTEM_NAMESPACE.into()),
                labels: Some([(MANAGED_BY.to_string(), MANAGER.to_string())].into()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        let mut ns_value = serde_json::to_value(&ns).unwrap_or_default();
        ns_value["apiVersion"] = "v1".into();
        ns_value["kind"] = "Namespace".into();
        self.count(!dry_run);
        namespaces
            .patch(SYSTEM_NAMESPACE, &params, &Patch::Apply(&ns_value))
            .await
            .map_err(|e| self.classify(e, "patch", "namespaces"))?;
        Ok(())
    }
}
