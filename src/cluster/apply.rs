//! Server-side apply: an object with the environment's field manager,
//! taking hand-edited fields over first when the plan says so, and the
//! errors an apply names (conflicts, immutable fields, refusals).

use std::time::Duration;

use kube::api::{Api, DynamicObject, Patch, PatchParams};

use super::{Cluster, ClusterError};
use crate::object::Object;
use crate::plan::LiveVersion;
use crate::plan::field_policy::{Heal, Takeover};
use crate::sync::Fence;
use crate::sync::report::ConflictField;

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
    /// A saved plan's precondition failed: the object is not the one the
    /// plan was made against any more.
    #[error(
        "{id}: changed since the plan was made (it is no longer at resourceVersion {resource_version}), so it was not written; make a new plan"
    )]
    Stale {
        id: String,
        resource_version: String,
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
    pub(super) async fn api_for(
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
            return Err(ClusterError::NotServed {
                server: self.server.clone(),
                verb: "find".into(),
                resource: format!("{api_version} {kind}"),
                consequence: crate::object::not_served_hint(api_version, kind),
            });
        };
        super::scope_check(id, api_version, kind, namespaced, namespace)?;
        Ok(match namespace {
            Some(ns) if namespaced => Api::namespaced_with(self.client.clone(), ns, &resource),
            _ => Api::all_with(self.client.clone(), &resource),
        })
    }

    /// Server-side apply as field manager `manager`
    /// ([`crate::object::field_manager`] of the object's environment).
    pub async fn apply(
        &self,
        object: &Object,
        dry_run: bool,
        force: bool,
        manager: &str,
        fence: &Fence,
    ) -> Result<(), ApplyError> {
        self.apply_inner(object, None, None, (dry_run, force, manager), fence)
            .await
    }

    /// [`Cluster::apply`] of another body than the object's own; with a
    /// `precondition` (which the body carries), a 409 is the plan's
    /// staleness.
    async fn apply_body(
        &self,
        object: &Object,
        body: &serde_json::Value,
        precondition: Option<&LiveVersion>,
        how: (bool, bool, &str),
        fence: &Fence,
    ) -> Result<(), ApplyError> {
        self.apply_inner(object, Some(body), precondition, how, fence)
            .await
    }

    async fn apply_inner(
        &self,
        object: &Object,
        body: Option<&serde_json::Value>,
        precondition: Option<&LiveVersion>,
        (dry_run, force, manager): (bool, bool, &str),
        fence: &Fence,
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
        let lost = || fence.lost();
        let result = match body {
            Some(body) => {
                let patch = Patch::Apply(body);
                self.write(!dry_run, &lost, || api.patch(&object.name, &params, &patch))
                    .await
            }
            None => {
                let json = object.json();
                let patch = Patch::Apply(&json);
                self.write(!dry_run, &lost, || api.patch(&object.name, &params, &patch))
                    .await
            }
        };
        match result {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 409 => {
                let fields = conflict_fields(&status);
                if let Some(p) = precondition
                    && fields.is_empty()
                {
                    Err(ApplyError::Stale {
                        id,
                        resource_version: p.resource_version.clone(),
                    })
                } else if fields.is_empty() {
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
    /// out of the applied body. With a saved plan's `precondition`, the
    /// applied body carries its `uid` and `resourceVersion` (the one after
    /// the takeover, when there is one): the API server refuses the apply
    /// if the object changed since the plan.
    #[allow(clippy::too_many_arguments)]
    pub async fn apply_healed(
        &self,
        object: &Object,
        heal: Option<&Heal>,
        precondition: Option<&LiveVersion>,
        dry_run: bool,
        force: bool,
        manager: &str,
        fence: &Fence,
    ) -> Result<(), ApplyError> {
        let mut precondition = precondition.cloned();
        if let Some(takeover) = heal.and_then(|h| h.takeover.as_ref())
            && !dry_run
        {
            match self.take_over(object, takeover, fence).await {
                Ok(resource_version) => {
                    if let Some(p) = precondition.as_mut() {
                        p.resource_version = resource_version;
                    }
                }
                Err(ApplyError::Moved { id, .. }) if precondition.is_some() => {
                    return Err(ApplyError::Stale {
                        id,
                        resource_version: takeover.resource_version.clone(),
                    });
                }
                Err(e) => return Err(e),
            }
        }
        let strip = heal.map(|h| h.strip.as_slice()).unwrap_or_default();
        if strip.is_empty() && precondition.is_none() {
            return self.apply(object, dry_run, force, manager, fence).await;
        }
        let mut body = crate::plan::field_policy::strip(object.value(), strip);
        if let Some(p) = &precondition
            && let Some(meta) = body
                .get_mut("metadata")
                .and_then(serde_json::Value::as_object_mut)
        {
            meta.insert("uid".into(), p.uid.clone().into());
            meta.insert("resourceVersion".into(), p.resource_version.clone().into());
        }
        self.apply_body(
            object,
            &body,
            precondition.as_ref(),
            (dry_run, force, manager),
            fence,
        )
        .await
    }

    /// Moves the reverting managers' fields; returns the object's new
    /// `resourceVersion`.
    async fn take_over(
        &self,
        object: &Object,
        takeover: &Takeover,
        fence: &Fence,
    ) -> Result<String, ApplyError> {
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
        let params = PatchParams::default();
        let patch = Patch::Merge(&patch);
        match self
            .write(true, &|| fence.lost(), || {
                api.patch(&object.name, &params, &patch)
            })
            .await
        {
            Ok(patched) => Ok(patched.metadata.resource_version.unwrap_or_default()),
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
