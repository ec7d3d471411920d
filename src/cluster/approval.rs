//! The approval ConfigMap of a manual environment
//! (`tenantsync-system/approval-<env>`, [`crate::sync::approval`]): the
//! daemon publishes the pending revision on it, `tenantsync approve`
//! records an approval on it. Who may patch it may approve.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams, PostParams};

use super::{Cluster, ClusterError};
use crate::object::{FIELD_MANAGER, MANAGED_BY, MANAGER};
use crate::sync::approval::{self, Record};
use crate::sync::inventory::SYSTEM_NAMESPACE;

/// The field manager of `tenantsync approve`'s writes.
pub const APPROVE_FIELD_MANAGER: &str = "tenantsync-approve";

/// The approval record as read, with the `resourceVersion` it was read at.
#[derive(Clone, Debug)]
pub struct StoredApproval {
    pub record: Record,
    pub resource_version: Option<String>,
}

impl Cluster {
    /// Reads an environment's approval ConfigMap; `None` when there is none
    /// (the environment never had a pending revision).
    pub async fn read_approval(
        &self,
        environment: &str,
    ) -> Result<Option<StoredApproval>, ClusterError> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), SYSTEM_NAMESPACE);
        self.count(false);
        let cm = api
            .get_opt(&approval::name_of(environment))
            .await
            .map_err(|e| self.classify(e, "get", "configmaps"))?;
        Ok(cm.map(|cm| StoredApproval {
            record: Record::from_data(&cm.data.unwrap_or_default()),
            resource_version: cm.metadata.resource_version,
        }))
    }

    /// The approval ConfigMap's data as stored (`tenantsync status`).
    pub async fn approval_data(
        &self,
        environment: &str,
    ) -> Result<Option<BTreeMap<String, String>>, ClusterError> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), SYSTEM_NAMESPACE);
        self.count(false);
        let cm = api
            .get_opt(&approval::name_of(environment))
            .await
            .map_err(|e| self.classify(e, "get", "configmaps"))?;
        Ok(cm.map(|c| c.data.unwrap_or_default()))
    }

    /// Publishes the pending revision (or, with `None`, that nothing is
    /// pending) on the approval ConfigMap, creating it when missing. The
    /// daemon's server-side apply owns only the `pending*` keys, so an
    /// approval recorded meanwhile is kept.
    pub async fn write_pending(
        &self,
        environment: &str,
        pending: Option<(&str, &str)>,
    ) -> Result<(), ClusterError> {
        let (revision, plan) = pending.unwrap_or_default();
        // Already published (by this daemon before a restart, or by the
        // replica that led before): left as it is, so that its
        // `pendingSince` stays true and an approval read against it (its
        // resourceVersion) is not refused for a write that changed nothing.
        if let Some(stored) = self.approval_data(environment).await? {
            let has = |key: &str, value: &str| {
                stored.get(key).map(String::as_str).unwrap_or_default() == value
            };
            if has(approval::PENDING_REVISION, revision)
                && has(approval::PENDING_PLAN, plan)
                && pending.is_some() != has(approval::PENDING_SINCE, "")
            {
                return Ok(());
            }
        }
        let since = if pending.is_some() {
            k8s_openapi::jiff::Timestamp::now().to_string()
        } else {
            String::new()
        };
        let body = serde_json::json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": approval::name_of(environment),
                "namespace": SYSTEM_NAMESPACE,
                "labels": { MANAGED_BY: MANAGER },
            },
            "data": {
                approval::PENDING_REVISION: revision,
                approval::PENDING_SINCE: since,
                approval::PENDING_PLAN: plan,
            },
        });
        self.ensure_system_namespace(false).await?;
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), SYSTEM_NAMESPACE);
        let mut params = PatchParams::apply(FIELD_MANAGER);
        params.force = true;
        self.count(true);
        api.patch(
            &approval::name_of(environment),
            &params,
            &Patch::Apply(&body),
        )
        .await
        .map_err(|e| self.classify(e, "patch", "configmaps"))?;
        Ok(())
    }

    /// Records the approval of `approval.revision`, checked against the
    /// record it was decided on (`resource_version`): if the daemon
    /// published another pending revision meanwhile, the API server refuses
    /// (409) and nothing is recorded.
    pub async fn write_approval(
        &self,
        environment: &str,
        approval: &approval::Approval,
        resource_version: Option<&str>,
    ) -> Result<(), ClusterError> {
        let data = BTreeMap::from([
            (approval::APPROVED_REVISION, approval.revision.as_str()),
            (approval::APPROVED_USER, approval.user.as_str()),
            (approval::APPROVED_BY, approval.by.as_str()),
            (approval::APPROVED_AT, approval.at.as_str()),
        ]);
        let patch = serde_json::json!({
            "metadata": { "resourceVersion": resource_version },
            "data": data,
        });
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), SYSTEM_NAMESPACE);
        self.count(true);
        api.patch(
            &approval::name_of(environment),
            &PatchParams {
                field_manager: Some(APPROVE_FIELD_MANAGER.into()),
                ..PatchParams::default()
            },
            &Patch::Merge(&patch),
        )
        .await
        .map_err(|e| self.classify(e, "patch", "configmaps"))?;
        Ok(())
    }

    /// The user name the API server authenticates this client as
    /// (SelfSubjectReview, allowed to every authenticated user); `None`
    /// when the API server does not say.
    pub async fn user_name(&self) -> Option<String> {
        use k8s_openapi::api::authentication::v1::SelfSubjectReview;
        let api: Api<SelfSubjectReview> = Api::all(self.client.clone());
        self.count(false);
        let review = api
            .create(&PostParams::default(), &SelfSubjectReview::default())
            .await
            .ok()?;
        review.status?.user_info?.username
    }
}
