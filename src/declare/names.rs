//! The names a declaration gives its rendered objects: shared by rendering
//! (which makes them) and validation (which checks them before anything is
//! rendered: lengths, collisions).

pub fn fhir(service: &str) -> String {
    format!("fhir-{service}")
}
pub fn dicom(service: &str) -> String {
    format!("dicom-{service}")
}
pub fn dicom_cast(dicom_service: &str) -> String {
    format!("dicomcast-{dicom_service}")
}
/// The ConfigMap of a workload's settings.
pub fn config(name: &str) -> String {
    format!("{name}-config")
}
pub fn iot(connector: &str) -> String {
    format!("iot-{connector}")
}
pub fn iot_destination(connector: &str, destination: &str) -> String {
    format!("iot-{connector}-{destination}")
}
/// The workspace-wide IoT identity and settings (seed 004: one per workspace).
pub const IOT_SHARED: &str = "iot-shared";
pub const NETWORK_POLICY: &str = "workspace-ingress";
/// The workspace's `SecretProviderClass`: what it reads from the
/// environment's Key Vault.
pub const SECRET_PROVIDER_CLASS: &str = "workspace-keyvault";
/// The Secret the CSI driver syncs the workspace-wide certificate into.
pub const WORKSPACE_TLS: &str = "workspace-tls";
/// The Secret the CSI driver syncs the Key Vault secrets into (one key per
/// secret object, named after it).
pub const WORKSPACE_SECRETS: &str = "workspace-secrets";
/// The `SecretProviderClass` of a service reading a vault of its own.
pub fn service_key_vault(name: &str) -> String {
    format!("{name}-keyvault")
}
/// The Secret the CSI driver syncs the secrets of a service's own vault into.
pub fn service_secrets(name: &str) -> String {
    format!("{name}-secrets")
}
/// The Secret the CSI driver syncs a service's own certificate into.
pub fn tls(name: &str) -> String {
    format!("{name}-tls")
}
/// `<service>.<fhir|dicom>.<workspace>.<domain>` (seed 001).
pub fn host(service: &str, kind: &str, workspace: &str, domain: &str) -> String {
    format!("{service}.{kind}.{workspace}.{domain}")
}
/// A name used as a DNS label and a label value: at most 63 characters.
pub fn check_label(name: &str) -> Result<(), String> {
    if name.len() > 63 {
        return Err(format!(
            "is {} characters long, over Kubernetes' limit of 63",
            name.len()
        ));
    }
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err("is not a DNS-1123 label".to_string())
    }
}

use crate::declare::model::{Environment, Scale, Workspace};

/// What in a workspace declares a rendered object (indexes into its lists).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Origin {
    Workspace,
    Fhir(usize),
    Dicom(usize),
    DicomCast(usize),
    /// The workspace-wide IoT ServiceAccount and ConfigMap.
    IotShared,
    Iot(usize),
    IotDestination(usize, usize),
}

/// A rendered object's identity on a cluster: group, kind, namespace, name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Identity {
    pub group: &'static str,
    pub kind: &'static str,
    pub namespace: Option<String>,
    pub name: String,
}

impl Identity {
    /// `ConfigMap contoso-prod/iot-shared` (with the group when there is one).
    pub fn describe(&self) -> String {
        let kind = if self.group.is_empty() {
            self.kind.to_string()
        } else {
            format!("{}.{}", self.kind, self.group)
        };
        match &self.namespace {
            Some(ns) => format!("{kind} {ns}/{}", self.name),
            None => format!("{kind} {}", self.name),
        }
    }
}

/// The identities of the objects `render::render_workspace` makes, each with what
/// declares it: what validation checks for collisions. Kept in step with
/// rendering by a test that compares the two.
pub fn identities(env: &Environment, ws: &Workspace) -> Vec<(Identity, Origin)> {
    let ns = env.namespace_of(&ws.metadata.name);
    let mut out = Vec::new();
    let mut add = |group: &'static str, kind: &'static str, name: String, origin: Origin| {
        let namespace = (kind != "Namespace").then(|| ns.clone());
        out.push((
            Identity {
                group,
                kind,
                namespace,
                name,
            },
            origin,
        ));
    };
    add("", "Namespace", ns.clone(), Origin::Workspace);
    add(
        "networking.k8s.io",
        "NetworkPolicy",
        NETWORK_POLICY.to_string(),
        Origin::Workspace,
    );
    let settings = &env.settings;
    if reads_key_vault(env, ws) {
        add(
            "secrets-store.csi.x-k8s.io",
            "SecretProviderClass",
            SECRET_PROVIDER_CLASS.to_string(),
            Origin::Workspace,
        );
    }
    let exposed = |add: &mut dyn FnMut(&'static str, &'static str, String, Origin),
                   name: String,
                   scale: Scale,
                   origin: Origin| {
        add("", "ServiceAccount", name.clone(), origin);
        add("", "ConfigMap", config(&name), origin);
        add("apps", "Deployment", name.clone(), origin);
        add("", "Service", name.clone(), origin);
        add("networking.k8s.io", "Ingress", name.clone(), origin);
        if let Scale::Auto(_) = scale {
            add(
                "autoscaling",
                "HorizontalPodAutoscaler",
                name.clone(),
                origin,
            );
        }
        if scale.least() > 1 {
            add("policy", "PodDisruptionBudget", name, origin);
        }
    };
    let own_vault = |add: &mut dyn FnMut(&'static str, &'static str, String, Origin),
                     name: &str,
                     kv: Option<&crate::declare::model::ServiceKeyVault>,
                     origin: Origin| {
        if kv.is_some_and(|kv| kv.own_vault(settings.key_vault.as_ref()).is_some()) {
            add(
                "secrets-store.csi.x-k8s.io",
                "SecretProviderClass",
                service_key_vault(name),
                origin,
            );
        }
    };
    for (i, f) in ws.spec.fhir_services.iter().enumerate() {
        let scale = env.scale_of(f.replicas, f.autoscaling, &settings.defaults.fhir);
        own_vault(
            &mut add,
            &fhir(&f.name),
            f.key_vault.as_ref(),
            Origin::Fhir(i),
        );
        exposed(&mut add, fhir(&f.name), scale, Origin::Fhir(i));
    }
    for (i, d) in ws.spec.dicom_services.iter().enumerate() {
        let scale = env.scale_of(d.replicas, d.autoscaling, &settings.defaults.dicom);
        own_vault(
            &mut add,
            &dicom(&d.name),
            d.key_vault.as_ref(),
            Origin::Dicom(i),
        );
        exposed(&mut add, dicom(&d.name), scale, Origin::Dicom(i));
        if d.dicom_cast.is_some() {
            let cast = dicom_cast(&d.name);
            add("", "ServiceAccount", cast.clone(), Origin::DicomCast(i));
            add("", "ConfigMap", config(&cast), Origin::DicomCast(i));
            add("apps", "Deployment", cast, Origin::DicomCast(i));
        }
    }
    if !ws.spec.iot_connectors.is_empty() {
        add(
            "",
            "ServiceAccount",
            IOT_SHARED.to_string(),
            Origin::IotShared,
        );
        add("", "ConfigMap", IOT_SHARED.to_string(), Origin::IotShared);
    }
    for (i, c) in ws.spec.iot_connectors.iter().enumerate() {
        add("", "ServiceAccount", iot(&c.name), Origin::Iot(i));
        add("", "ConfigMap", iot(&c.name), Origin::Iot(i));
        add("apps", "Deployment", iot(&c.name), Origin::Iot(i));
        for (j, d) in c.fhir_destinations.iter().enumerate() {
            let name = iot_destination(&c.name, &d.name);
            add("", "ConfigMap", name.clone(), Origin::IotDestination(i, j));
            add("apps", "Deployment", name, Origin::IotDestination(i, j));
        }
    }
    out
}

/// Whether a workspace reads the environment's Key Vault: the environment
/// declares one, the workspace exposes a service, and something (a
/// certificate or a secret) is read. Then it gets a `SecretProviderClass`.
pub fn reads_key_vault(env: &Environment, ws: &Workspace) -> bool {
    let Some(kv) = &env.settings.key_vault else {
        return false;
    };
    let spec = &ws.spec;
    // What services read from the environment's vault (not one of their own).
    let own = spec
        .fhir_services
        .iter()
        .map(|f| f.key_vault.as_ref())
        .chain(spec.dicom_services.iter().map(|d| d.key_vault.as_ref()))
        .any(|k| k.is_some_and(|k| k.reads() && k.vault_name.is_none()));
    let exposes = !spec.fhir_services.is_empty() || !spec.dicom_services.is_empty();
    exposes && (kv.certificate.is_some() || !kv.secrets.is_empty() || own)
}
