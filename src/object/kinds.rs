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

/// A custom resource kind tenantsync renders: its CRD and what installs it.
#[derive(Clone, Copy, Debug)]
pub struct CustomKind {
    pub api_version: &'static str,
    pub kind: &'static str,
    pub crd: &'static str,
    pub installed_by: &'static str,
}

/// The custom resources `render` can produce (a cluster may lack their CRD).
pub const CUSTOM_KINDS: &[CustomKind] = &[CustomKind {
    api_version: "secrets-store.csi.x-k8s.io/v1",
    kind: "SecretProviderClass",
    crd: "secretproviderclasses.secrets-store.csi.x-k8s.io",
    installed_by: "the Secrets Store CSI driver (on AKS the azure-keyvault-secrets-provider add-on; elsewhere its Helm chart; for a test cluster deploy/crds/secretproviderclasses.yaml)",
}];

/// What to say when the API server does not serve a kind: the missing CRD
/// by name, and what installs it, when tenantsync knows.
pub fn not_served_hint(api_version: &str, kind: &str) -> String {
    let group = api_version.split_once('/').map_or("", |(g, _)| g);
    match CUSTOM_KINDS
        .iter()
        .find(|c| c.kind == kind && c.api_version.starts_with(&format!("{group}/")))
    {
        Some(c) => format!(
            ": the CustomResourceDefinition {} is not installed; install {}",
            c.crd, c.installed_by
        ),
        None => " (is its CRD installed?)".to_string(),
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_secret_provider_class_crd_is_named_with_what_installs_it() {
        let hint = not_served_hint("secrets-store.csi.x-k8s.io/v1", "SecretProviderClass");
        assert!(
            hint.contains("CustomResourceDefinition secretproviderclasses.secrets-store.csi.x-k8s.io is not installed"),
            "{hint}"
        );
        assert!(hint.contains("Secrets Store CSI driver"), "{hint}");
        assert_eq!(
            not_served_hint("example.com/v1", "Widget"),
            " (is its CRD installed?)"
        );
    }
}
