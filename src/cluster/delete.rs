//! Deleting: one object (a prune), and waiting until it is gone (a
//! recreate).

use std::time::{Duration, Instant};

use kube::api::{DeleteParams, Preconditions, PropagationPolicy};

use super::{Cluster, ClusterError};
use crate::plan::LiveVersion;
use crate::sync::Fence;
use crate::sync::inventory::ObjectRef;

impl Cluster {
    /// Deletes an object (dependents in the background, as kubectl does);
    /// returns false when it was already gone. With a `precondition` (a
    /// saved plan's), only if it still has that `uid` and `resourceVersion`:
    /// a 409 then is [`ClusterError::Stale`].
    pub async fn delete_if(
        &self,
        r: &ObjectRef,
        precondition: Option<&LiveVersion>,
        dry_run: bool,
        fence: &Fence,
    ) -> Result<bool, ClusterError> {
        let api = self
            .api_for(&r.id(), &r.api_version, &r.kind, r.namespace.as_deref())
            .await?;
        let params = DeleteParams {
            dry_run,
            propagation_policy: Some(PropagationPolicy::Background),
            preconditions: precondition.map(|p| Preconditions {
                uid: Some(p.uid.clone()),
                resource_version: Some(p.resource_version.clone()),
            }),
            ..DeleteParams::default()
        };
        match self
            .write(!dry_run, &|| fence.lost(), || api.delete(&r.name, &params))
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(false),
            Err(kube::Error::Api(status)) if status.code == 409 && precondition.is_some() => {
                Err(ClusterError::Stale {
                    object: r.id(),
                    resource_version: precondition
                        .map(|p| p.resource_version.clone())
                        .unwrap_or_default(),
                })
            }
            Err(e) => Err(self.classify(e, "delete", &r.kind)),
        }
    }

    /// Deletes an object to recreate it, on the condition that it is still
    /// the object planned (`uid`, when it was listed): a 409 (it was
    /// replaced meanwhile) is [`ClusterError::Replaced`] and nothing is
    /// deleted. Returns false when it was already gone.
    pub async fn delete_uid(
        &self,
        r: &ObjectRef,
        uid: Option<&str>,
        fence: &Fence,
    ) -> Result<bool, ClusterError> {
        let api = self
            .api_for(&r.id(), &r.api_version, &r.kind, r.namespace.as_deref())
            .await?;
        let params = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Background),
            preconditions: uid.map(|uid| Preconditions {
                uid: Some(uid.to_string()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match self
            .write(true, &|| fence.lost(), || api.delete(&r.name, &params))
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(false),
            Err(kube::Error::Api(status)) if status.code == 409 && uid.is_some() => {
                Err(ClusterError::Replaced { object: r.id() })
            }
            Err(e) => Err(self.classify(e, "delete", &r.kind)),
        }
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
}
