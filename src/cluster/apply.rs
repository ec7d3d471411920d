//! Writes: server-side apply, delete, and the inventory object.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PropagationPolicy};

use super::{Cluster, ClusterError};
use crate::diff::FIELD_MANAGER;
use crate::field_policy::{Heal, Takeover};
use crate::inventory::{self, Inventory, ObjectRef, SYSTEM_NAMESPACE};
use crate::render::{MANAGED_BY, MANAGER, Object};

/// A field another manager owns, as a server-side apply conflict reports it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ConflictField {
    pub field: String,
    pub manager: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("{id}: {} owned by another field manager ({}); re-run with --force-conflicts to take them over", fields_text(.fields), managers(.fields))]
    Conflict {
        id: String,
        fields: Vec<ConflictField>,
    },
    #[error(
        "{id}: the API server refuses to change an immutable field: {message}; re-run with --force-recreate to delete and recreate the object"
    )]
    Immutable { id: String, message: String },
    #[error(
        "{id}: rejected by the API server: {message}; fix the declaration in Git, or undo the hand edit it collides with (tenantsync plan names a foreign list item and its field manager)"
    )]
    Invalid { id: String, message: String },
    #[error(
        "{id}: changed since it was read (resourceVersion {resource_version}), so the fields of {from} were not taken over; run the sync again"
    )]
    Moved {
        id: String,
        resource_version: String,
        from: String,
    },
    /// The object's namespace disagrees with its kind's scope
    /// ([`super::scope_check`]).
    #[error("{id}: {reason}")]
    Scope { id: String, reason: String },
    #[error("{id}: {source}")]
    Cluster {
        id: String,
        #[source]
        source: ClusterError,
    },
}

fn fields_text(fields: &[ConflictField]) -> String {
    let names: Vec<&str> = fields.iter().map(|f| f.field.as_str()).collect();
    if names.len() == 1 {
        format!("field {} is", names[0])
    } else {
        format!("fields {} are", names.join(", "))
    }
}

fn managers(fields: &[ConflictField]) -> String {
    let mut m: Vec<&str> = fields.iter().map(|f| f.manager.as_str()).collect();
    m.sort_unstable();
    m.dedup();
    m.join(", ")
}

/// The fields a server-side apply conflict names, each with its manager.
fn conflict_fields(status: &kube::core::Status) -> Vec<ConflictField> {
    status
        .details
        .as_ref()
        .map(|d| {
            d.causes
                .iter()
                .map(|c| ConflictField {
                    field: c.field.clone(),
                    manager: manager_of(&c.message),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `conflict with "kubectl-edit" using apps/v1` -> `kubectl-edit`.
fn manager_of(message: &str) -> String {
    message.split('"').nth(1).unwrap_or(message).to_string()
}

impl Cluster {
    /// The API of object `id`'s kind, at its namespace; an object whose
    /// namespace disagrees with the kind's scope is refused.
    async fn api_for(
        &self,
        id: &str,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
    ) -> Result<Api<DynamicObject>, ClusterError> {
        let mut found = self.resolve_kind(api_version, kind).await?;
        for _ in 0..10 {
            if found.is_some() {
                break;
            }
            // Discovery can lag a CRD that just became Established.
            tokio::time::sleep(Duration::from_millis(300)).await;
            found = self.resolve_kind(api_version, kind).await?;
        }
        let Some((resource, namespaced)) = found else {
            return Err(ClusterError::Api {
                server: self.server.clone(),
                verb: "find".into(),
                resource: format!("{api_version} {kind}"),
                message: "the API server does not serve this kind (is its CRD installed?)".into(),
                code: 404,
            });
        };
        super::scope_check(id, api_version, kind, namespaced, namespace)?;
        Ok(match namespace {
            Some(ns) if namespaced => Api::namespaced_with(self.client.clone(), ns, &resource),
            _ => Api::all_with(self.client.clone(), &resource),
        })
    }

    /// Server-side apply as field manager `manager`
    /// ([`crate::diff::field_manager`] of the object's environment).
    pub async fn apply(
        &self,
        object: &Object,
        dry_run: bool,
        force: bool,
        manager: &str,
    ) -> Result<(), ApplyError> {
        self.apply_inner(object, None, dry_run, force, manager)
            .await
    }

    /// [`Cluster::apply`] of another body than the object's own.
    async fn apply_body(
        &self,
        object: &Object,
        body: &serde_json::Value,
        dry_run: bool,
        force: bool,
        manager: &str,
    ) -> Result<(), ApplyError> {
        self.apply_inner(object, Some(body), dry_run, force, manager)
            .await
    }

    async fn apply_inner(
        &self,
        object: &Object,
        body: Option<&serde_json::Value>,
        dry_run: bool,
        force: bool,
        manager: &str,
    ) -> Result<(), ApplyError> {
        let id = object.id();
        let api = self
            .api_for(
                &id,
                &object.api_version,
                &object.kind,
                object.namespace.as_deref(),
            )
            .await
            .map_err(|source| match source {
                ClusterError::Scope { object, reason } => ApplyError::Scope { id: object, reason },
                source => ApplyError::Cluster {
                    id: id.clone(),
                    source,
                },
            })?;
        let mut params = PatchParams::apply(manager);
        params.force = force;
        params.dry_run = dry_run;
        self.count(!dry_run);
        let result = match body {
            Some(body) => api.patch(&object.name, &params, &Patch::Apply(body)).await,
            None => {
                api.patch(&object.name, &params, &Patch::Apply(object.json()))
                    .await
            }
        };
        match result {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 409 => {
                let fields = conflict_fields(&status);
                if fields.is_empty() {
                    // A 409 that names no field is not a field manager
                    // conflict (nothing to take over with --force-conflicts):
                    // the API server's answer as it is.
                    Err(ApplyError::Cluster {
                        id,
                        source: self.classify(kube::Error::Api(status), "patch", &object.kind),
                    })
                } else {
                    Err(ApplyError::Conflict { id, fields })
                }
            }
            Err(kube::Error::Api(status))
                if status.code == 422 && status.message.contains("immutable") =>
            {
                Err(ApplyError::Immutable {
                    id,
                    message: status.message.clone(),
                })
            }
            Err(kube::Error::Api(status)) if status.code == 422 || status.code == 400 => {
                Err(ApplyError::Invalid {
                    id,
                    message: status.message.clone(),
                })
            }
            Err(e) => Err(ApplyError::Cluster {
                id,
                source: self.classify(e, "patch", &object.kind),
            }),
        }
    }

    /// Server-side apply after the ownership policy's [`Heal`]: the
    /// reverting managers' fields are first made the environment's (one
    /// merge patch of `managedFields` on the condition that the object is
    /// still at the listed `resourceVersion`, as Flux's SSA manager does),
    /// so the apply removes what is not declared; ignored fields are left
    /// out of the applied body.
    pub async fn apply_healed(
        &self,
        object: &Object,
        heal: Option<&Heal>,
        dry_run: bool,
        force: bool,
        manager: &str,
    ) -> Result<(), ApplyError> {
        let Some(heal) = heal else {
            return self.apply(object, dry_run, force, manager).await;
        };
        if let Some(takeover) = &heal.takeover
            && !dry_run
        {
            self.take_over(object, takeover).await?;
        }
        if heal.strip.is_empty() {
            return self.apply(object, dry_run, force, manager).await;
        }
        let body = crate::field_policy::strip(object.value(), &heal.strip);
        self.apply_body(object, &body, dry_run, force, manager)
            .await
    }

    async fn take_over(&self, object: &Object, takeover: &Takeover) -> Result<(), ApplyError> {
        let id = object.id();
        let api = self
            .api_for(
                &id,
                &object.api_version,
                &object.kind,
                object.namespace.as_deref(),
            )
            .await
            .map_err(|source| ApplyError::Cluster {
                id: id.clone(),
                source,
            })?;
        let patch = serde_json::json!({
            "metadata": {
                "resourceVersion": takeover.resource_version,
                "managedFields": takeover.managed_fields,
            }
        });
        self.count(true);
        match api
            .patch(&object.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 409 => Err(ApplyError::Moved {
                id,
                resource_version: takeover.resource_version.clone(),
                from: takeover.from.join(", "),
            }),
            Err(e) => Err(ApplyError::Cluster {
                id,
                source: self.classify(e, "patch", &object.kind),
            }),
        }
    }

    /// Deletes an object (dependents in the background, as kubectl does).
    /// Returns false when it was already gone.
    pub async fn delete(&self, r: &ObjectRef, dry_run: bool) -> Result<bool, ClusterError> {
        let api = self
            .api_for(&r.id(), &r.api_version, &r.kind, r.namespace.as_deref())
            .await?;
        let params = DeleteParams {
            dry_run,
            propagation_policy: Some(PropagationPolicy::Background),
            ..DeleteParams::default()
        };
        self.count(!dry_run);
        match api.delete(&r.name, &params).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(false),
            Err(e) => Err(self.classify(e, "delete", &r.kind)),
        }
    }

    /// Records a Warning Event in `tenantsync-system` (best effort: a failure
    /// to record is logged, never fatal).
    pub async fn record_event(&self, environment: &str, reason: &str, message: &str) {
        use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
        let inventory_name = inventory::name_of(environment);
        let event = Event {
            metadata: ObjectMeta {
                generate_name: Some(format!("{inventory_name}-")),
                namespace: Some(SYSTEM_NAMESPACE.into()),
                ..ObjectMeta::default()
            },
            involved_object: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("ConfigMap".into()),
                name: Some(inventory_name),
                namespace: Some(SYSTEM_NAMESPACE.into()),
                ..ObjectReference::default()
            },
            reason: Some(reason.into()),
            // The API server caps messages at 1 KiB.
            message: Some(message.chars().take(1000).collect()),
            type_: Some("Warning".into()),
            source: Some(EventSource {
                component: Some(MANAGER.into()),
                ..EventSource::default()
            }),
            first_timestamp: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::now(),
            )),
            ..Event::default()
        };
        let api: Api<k8s_openapi::api::core::v1::Event> =
            Api::namespaced(self.client.clone(), SYSTEM_NAMESPACE);
        self.count(true);
        if let Err(e) = api.create(&Default::default(), &event).await {
            tracing::warn!(error = %e, "cannot record an Event");
        }
    }

    /// Waits until a CustomResourceDefinition is Established, so objects of
    /// its kind can be applied. Returns false on timeout.
    pub async fn wait_established(
        &self,
        name: &str,
        timeout: Duration,
    ) -> Result<bool, ClusterError> {
        let api: Api<CustomResourceDefinition> = Api::all(self.client.clone());
        let start = Instant::now();
        while start.elapsed() < timeout {
            self.count(false);
            let crd = api
                .get_opt(name)
                .await
                .map_err(|e| self.classify(e, "get", "customresourcedefinitions"))?;
            let established = crd
                .and_then(|c| c.status)
                .and_then(|s| s.conditions)
                .is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c.type_ == "Established" && c.status == "True")
                });
            if established {
                return Ok(true);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(false)
    }

    /// Waits until an object is gone (after a delete), for recreation.
    pub async fn wait_deleted(
        &self,
        r: &ObjectRef,
        timeout: Duration,
    ) -> Result<bool, ClusterError> {
        let api = self
            .api_for(&r.id(), &r.api_version, &r.kind, r.namespace.as_deref())
            .await?;
        let start = Instant::now();
        while start.elapsed() < timeout {
            self.count(false);
            match api.get_opt(&r.name).await {
                Ok(None) => return Ok(true),
                Ok(Some(_)) => tokio::time::sleep(Duration::from_millis(250)).await,
                Err(e) => return Err(self.classify(e, "get", &r.kind)),
            }
        }
        Ok(false)
    }

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
            Some(cm) => Inventory::from_config_map(&cm)
                .map(Some)
                .map_err(|e| ClusterError::Api {
                    server: self.server.clone(),
                    verb: "read".into(),
                    resource: format!(
                        "configmap {SYSTEM_NAMESPACE}/{}",
                        inventory::name_of(environment)
                    ),
                    message: e.to_string(),
                    code: 0,
                }),
        }
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
            .map(|(k, v)| (format!("status.{k}"), v.clone().into()))
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

    /// Writes the inventory (creating `tenantsync-system` when needed).
    pub async fn write_inventory(
        &self,
        inventory: &Inventory,
        dry_run: bool,
    ) -> Result<(), ClusterError> {
        let cm = inventory.to_config_map().map_err(|e| ClusterError::Api {
            server: self.server.clone(),
            verb: "encode".into(),
            resource: "inventory".into(),
            message: e.to_string(),
            code: 0,
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflict_messages_name_fields_and_managers() {
        let e = ApplyError::Conflict {
            id: "Deployment/ns/fhir-main".into(),
            fields: vec![ConflictField {
                field: ".spec.replicas".into(),
                manager: manager_of("conflict with \"kubectl-edit\" using apps/v1"),
            }],
        };
        assert_eq!(
            e.to_string(),
            "Deployment/ns/fhir-main: field .spec.replicas is owned by another field manager (kubectl-edit); re-run with --force-conflicts to take them over"
        );
    }

    #[test]
    fn a_conflict_without_causes_names_no_field_to_take_over() {
        let bare: kube::core::Status = serde_json::from_value(serde_json::json!({
            "status": "Failure", "code": 409, "reason": "Conflict",
            "message": "Operation cannot be fulfilled: the object has been modified",
            "details": {"name": "x", "kind": "configmaps"}
        }))
        .unwrap_or_else(|e| panic!("status: {e}"));
        assert!(conflict_fields(&bare).is_empty());
        let fields: kube::core::Status = serde_json::from_value(serde_json::json!({
            "status": "Failure", "code": 409, "reason": "Conflict", "message": "Apply failed",
            "details": {"causes": [{"reason": "FieldManagerConflict",
                "message": "conflict with \"tenantsync\"", "field": ".data.x"}]}
        }))
        .unwrap_or_else(|e| panic!("status: {e}"));
        assert_eq!(
            conflict_fields(&fields),
            [ConflictField {
                field: ".data.x".into(),
                manager: "tenantsync".into()
            }]
        );
    }
}
