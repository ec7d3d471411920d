//! Workspace-wide objects: the workspace's Namespace and the NetworkPolicy
//! that admits traffic from its own pods and the ingress controller only.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

use super::context::Ctx;
use crate::declare::model::{DEFAULT_INGRESS_CONTROLLER_NAMESPACE, Workspace};
use crate::declare::names;

/// The workspace's Namespace, with its declared labels and annotations.
pub(super) fn namespace(cx: &mut Ctx<'_>, ws: &Workspace) {
    let mut ns_labels = cx.labels("workspace", &ws.metadata.name, "namespace");
    ns_labels.extend(ws.metadata.labels.clone());
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(cx.namespace.clone()),
            labels: Some(ns_labels),
            annotations: (!ws.metadata.annotations.is_empty())
                .then(|| ws.metadata.annotations.clone()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    let ns_name = cx.namespace.clone();
    cx.push(&ns, false, &ns_name);
}

pub(super) fn network_policy(cx: &mut Ctx<'_>) {
    let controller_ns = cx
        .env
        .settings
        .ingress
        .controller_namespace
        .clone()
        .unwrap_or_else(|| DEFAULT_INGRESS_CONTROLLER_NAMESPACE.to_string());
    let labels = cx.labels("workspace", names::NETWORK_POLICY, "network-policy");
    let policy = NetworkPolicy {
        metadata: cx.meta(names::NETWORK_POLICY, labels),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector::default()),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: Some(vec![
                    NetworkPolicyPeer {
                        pod_selector: Some(LabelSelector::default()),
                        ..NetworkPolicyPeer::default()
                    },
                    NetworkPolicyPeer {
                        namespace_selector: Some(LabelSelector {
                            match_labels: Some(BTreeMap::from([(
                                "kubernetes.io/metadata.name".to_string(),
                                controller_ns,
                            )])),
                            ..LabelSelector::default()
                        }),
                        ..NetworkPolicyPeer::default()
                    },
                ]),
                ..NetworkPolicyIngressRule::default()
            }]),
            ..NetworkPolicySpec::default()
        }),
    };
    cx.push(&policy, true, names::NETWORK_POLICY);
}
