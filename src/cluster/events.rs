//! Kubernetes Events about an environment, in `tenantsync-system`.

use super::Cluster;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::Api;

use crate::object::MANAGER;
use crate::sync::inventory::{self, SYSTEM_NAMESPACE};

impl Cluster {
    /// Records a Warning Event in `tenantsync-system` (best effort: a failure
    /// to record is logged, never fatal).
    pub async fn record_event(&self, environment: &str, reason: &str, message: &str) {
        self.record_event_of_type(environment, "Warning", reason, message)
            .await;
    }

    /// Records a Normal Event (an approval, a revision waiting for one).
    pub async fn record_normal_event(&self, environment: &str, reason: &str, message: &str) {
        self.record_event_of_type(environment, "Normal", reason, message)
            .await;
    }

    async fn record_event_of_type(
        &self,
        environment: &str,
        type_: &str,
        reason: &str,
        message: &str,
    ) {
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
            type_: Some(type_.into()),
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
}
