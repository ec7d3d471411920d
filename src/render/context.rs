//! What rendering one workspace carries along: the environment, the
//! workspace and its namespace, the objects made so far, the first error,
//! shared names; and the labels, metadata and pushes every renderer uses.
//! Its own file so that the renderers (`workload`, `keyvault`, ...) import
//! it and not each other.

use std::collections::BTreeMap;

use k8s_openapi::Resource;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;

use super::RenderError;
use crate::declare::model::{Environment, Probes};
use crate::object::{ENVIRONMENT_LABEL, MANAGED_BY, MANAGER, Names, Object, WORKSPACE_LABEL};

pub(super) struct Ctx<'a> {
    pub(super) env: &'a Environment,
    pub(super) ws: &'a str,
    pub(super) namespace: String,
    pub(super) out: Vec<Object>,
    pub(super) error: Option<RenderError>,
    pub(super) names: Names,
    /// Whether the workspace reads the environment's Key Vault
    /// (`names::reads_key_vault`).
    pub(super) key_vault: bool,
}

impl Ctx<'_> {
    pub(super) fn labels(
        &self,
        name: &str,
        instance: &str,
        component: &str,
    ) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("app.kubernetes.io/name".to_string(), name.to_string()),
            (
                "app.kubernetes.io/instance".to_string(),
                instance.to_string(),
            ),
            (
                "app.kubernetes.io/component".to_string(),
                component.to_string(),
            ),
            ("app.kubernetes.io/part-of".to_string(), self.ws.to_string()),
            (MANAGED_BY.to_string(), MANAGER.to_string()),
            (ENVIRONMENT_LABEL.to_string(), self.env.name.clone()),
            (WORKSPACE_LABEL.to_string(), self.ws.to_string()),
        ])
    }

    pub(super) fn meta(&self, name: &str, labels: BTreeMap<String, String>) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(self.namespace.clone()),
            labels: Some(labels),
            ..ObjectMeta::default()
        }
    }

    pub(super) fn push<T: Resource + Serialize>(
        &mut self,
        object: &T,
        namespaced: bool,
        name: &str,
    ) {
        let namespace = namespaced.then(|| self.names.get(&self.namespace));
        // k8s-openapi writes apiVersion and kind (from `Resource`) itself.
        match serde_json::value::to_raw_value(object) {
            Ok(body) => {
                self.out.push(Object::from_parts(
                    self.names.get(T::API_VERSION),
                    self.names.get(T::KIND),
                    namespace,
                    self.names.get(name),
                    self.names.get(self.ws),
                    body,
                ));
            }
            Err(e) => {
                self.error.get_or_insert(RenderError {
                    object: format!("{}/{name}", T::KIND),
                    message: e.to_string(),
                });
            }
        }
    }
}

impl Ctx<'_> {
    /// A workload's probes: its own over the environment's (seed 002's
    /// timings fill the rest when the container is built).
    pub(super) fn probes(&self, own: Option<Probes>) -> Probes {
        own.unwrap_or_default().over(self.env.settings.probes)
    }

    /// A workload's replicas: the standby's in a standby environment.
    pub(super) fn replicas(&self, normal: i32) -> i32 {
        self.env.standby_replicas().unwrap_or(normal)
    }

    /// Adds an object of a kind k8s-openapi has no type for (a custom
    /// resource), written as JSON.
    pub(super) fn push_value(
        &mut self,
        api_version: &str,
        kind: &str,
        name: &str,
        body: &serde_json::Value,
    ) {
        match serde_json::value::to_raw_value(body) {
            Ok(raw) => {
                let namespace = Some(self.names.get(&self.namespace));
                self.out.push(Object::from_parts(
                    self.names.get(api_version),
                    self.names.get(kind),
                    namespace,
                    self.names.get(name),
                    self.names.get(self.ws),
                    raw,
                ));
            }
            Err(e) => {
                self.error.get_or_insert(RenderError {
                    object: format!("{kind}/{name}"),
                    message: e.to_string(),
                });
            }
        }
    }
}
