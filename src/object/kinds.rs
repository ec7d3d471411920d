//! The catalogue of kinds: what tenantsync renders (and so lists to find its
//! live objects), and the order kinds are applied in.

/// A kind tenantsync renders, as the API server serves it.
#[derive(Clone, Copy, Debug)]
pub struct ManagedKind {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub namespaced: bool,
}

/// Every kind `render` can produce: what `plan` lists (one LIST each) to
/// find tenantsync's live objects, including those no longer declared.
pub const MANAGED_KINDS: &[ManagedKind] = &[
    ManagedKind {
        group: "",
        version: "v1",
        kind: "Namespace",
        plural: "namespaces",
        namespaced: false,
    },
    ManagedKind {
        group: "",
        version: "v1",
        kind: "ServiceAccount",
        plural: "serviceaccounts",
        namespaced: true,
    },
    ManagedKind {
        group: "",
        version: "v1",
        kind: "ConfigMap",
        plural: "configmaps",
        namespaced: true,
    },
    ManagedKind {
        group: "",
        version: "v1",
        kind: "Service",
        plural: "services",
        namespaced: true,
    },
    ManagedKind {
        group: "apps",
        version: "v1",
        kind: "Deployment",
        plural: "deployments",
        namespaced: true,
    },
    ManagedKind {
        group: "policy",
        version: "v1",
        kind: "PodDisruptionBudget",
        plural: "poddisruptionbudgets",
        namespaced: true,
    },
    ManagedKind {
        group: "networking.k8s.io",
        version: "v1",
        kind: "Ingress",
        plural: "ingresses",
        namespaced: true,
    },
    ManagedKind {
        group: "networking.k8s.io",
        version: "v1",
        kind: "NetworkPolicy",
        plural: "networkpolicies",
        namespaced: true,
    },
];

/// Apply order of kinds: definitions first, exposure last (also the order of
/// `render` output within a workspace).
pub fn kind_rank(kind: &str) -> u8 {
    match kind {
        "Namespace" => 0,
        "CustomResourceDefinition" => 1,
        "ServiceAccount" => 2,
        // The Key Vault objects the pods mount, before the pods.
        "ConfigMap" | "Secret" | "SecretProviderClass" => 3,
        "Service" => 4,
        "Deployment" => 5,
        "PodDisruptionBudget" => 6,
        "Ingress" => 7,
        "NetworkPolicy" => 8,
        _ => 9,
    }
}
