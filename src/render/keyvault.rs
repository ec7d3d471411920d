//! What a workspace reads from the environment's Azure Key Vault (seed 001):
//! one `SecretProviderClass` (Secrets Store CSI driver, Azure provider)
//! naming the certificates and secrets, and the Secrets the driver syncs
//! them into: `workspace-tls` (the workspace-wide certificate),
//! `<service>-tls` (a service's own), `workspace-secrets` (one key per
//! secret object). The pods that need them mount the CSI volume (the driver
//! syncs Secrets only while a pod mounts it).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use super::workload::Ctx;
use crate::declare::model::{KeyVault, SecretRef, ServiceKeyVault, Workspace};
use crate::declare::names;

pub const API_VERSION: &str = "secrets-store.csi.x-k8s.io/v1";
pub const KIND: &str = "SecretProviderClass";
/// The CSI driver's name, as pods' volumes name it.
pub const CSI_DRIVER: &str = "secrets-store.csi.k8s.io";
pub(super) const VOLUME: &str = "secrets-store";
pub(super) const MOUNT_PATH: &str = "/mnt/secrets-store";

/// What one exposed service reads: the Secret its Ingress names, its
/// `secretKeyRef` environment variables and whether its pods mount the
/// CSI volume.
pub(super) struct ServiceSecrets {
    pub(super) tls_secret: Option<String>,
    /// (variable, key in `workspace-secrets`), the service's over the
    /// environment's for one variable.
    pub(super) env: Vec<(String, String)>,
    pub(super) mount: bool,
}

/// What service `name` (rendered name) reads, given its own declaration.
pub(super) fn of_service(
    cx: &Ctx<'_>,
    name: &str,
    own: Option<&ServiceKeyVault>,
) -> ServiceSecrets {
    let fallback = cx.env.settings.ingress.tls_secret_name.clone();
    let Some(kv) = cx.env.settings.key_vault.as_ref().filter(|_| cx.key_vault) else {
        return ServiceSecrets {
            tls_secret: fallback,
            env: Vec::new(),
            mount: false,
        };
    };
    let own_cert = own.and_then(|k| k.certificate.as_ref());
    let tls_secret = match (own_cert, &kv.certificate) {
        (Some(_), _) => Some(names::tls(name)),
        (None, Some(_)) => Some(names::WORKSPACE_TLS.to_string()),
        (None, None) => fallback,
    };
    let mut by_var: BTreeMap<&str, &str> = BTreeMap::new();
    let own_secrets = own.map(|k| k.secrets.as_slice()).unwrap_or_default();
    for s in kv.secrets.iter().chain(own_secrets) {
        by_var.insert(&s.env, &s.object_name);
    }
    let env: Vec<(String, String)> = by_var
        .into_iter()
        .map(|(var, key)| (var.to_string(), key.to_string()))
        .collect();
    let mount = !env.is_empty() || own_cert.is_some() || kv.certificate.is_some();
    ServiceSecrets {
        tls_secret,
        env,
        mount,
    }
}

/// The workspace's `SecretProviderClass`, when it reads the Key Vault.
pub(super) fn render(cx: &mut Ctx<'_>, ws: &Workspace) {
    let Some(kv) = cx.env.settings.key_vault.as_ref().filter(|_| cx.key_vault) else {
        return;
    };
    let spec = &ws.spec;
    let services: Vec<(String, Option<&ServiceKeyVault>)> = spec
        .fhir_services
        .iter()
        .map(|f| (names::fhir(&f.name), f.key_vault.as_ref()))
        .chain(
            spec.dicom_services
                .iter()
                .map(|d| (names::dicom(&d.name), d.key_vault.as_ref())),
        )
        .collect();
    let body = provider_class((cx.ws, &cx.env.name), kv, &services);
    let labels = cx.labels("workspace", names::SECRET_PROVIDER_CLASS, "secrets");
    let meta = cx.meta(names::SECRET_PROVIDER_CLASS, labels);
    let mut object = json!({
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": meta,
    });
    if let Some(map) = object.as_object_mut() {
        map.insert("spec".into(), body);
    }
    cx.push_value(API_VERSION, KIND, names::SECRET_PROVIDER_CLASS, &object);
}

fn provider_class(
    (ws, environment): (&str, &str),
    kv: &KeyVault,
    services: &[(String, Option<&ServiceKeyVault>)],
) -> Value {
    // Key Vault objects, each once; certificates are read as `secret`
    // objects, which give the private key with the certificate chain (what
    // a `kubernetes.io/tls` Secret needs).
    let mut objects: BTreeSet<&str> = BTreeSet::new();
    let mut secret_objects = Vec::new();
    let tls = |secret: String, object: &str| {
        json!({
            "secretName": secret,
            "type": "kubernetes.io/tls",
            "data": [
                { "objectName": object, "key": "tls.key" },
                { "objectName": object, "key": "tls.crt" },
            ],
        })
    };
    let used_workspace_cert = services
        .iter()
        .any(|(_, own)| own.and_then(|k| k.certificate.as_ref()).is_none());
    let workspace_cert = kv
        .certificate
        .as_deref()
        .filter(|_| used_workspace_cert)
        .map(|c| {
            c.replace("{workspace}", ws)
                .replace("{environment}", environment)
        });
    if let Some(cert) = &workspace_cert {
        objects.insert(cert);
        secret_objects.push(tls(names::WORKSPACE_TLS.to_string(), cert));
    }
    for (name, own) in services {
        if let Some(cert) = own.and_then(|k| k.certificate.as_deref()) {
            objects.insert(cert);
            secret_objects.push(tls(names::tls(name), cert));
        }
    }
    let mut secrets: BTreeSet<&str> = BTreeSet::new();
    let own_secrets = services
        .iter()
        .flat_map(|(_, own)| own.map(|k| k.secrets.as_slice()).unwrap_or_default());
    for SecretRef { object_name, .. } in kv.secrets.iter().chain(own_secrets) {
        objects.insert(object_name);
        secrets.insert(object_name);
    }
    if !secrets.is_empty() {
        let data: Vec<Value> = secrets
            .iter()
            .map(|s| json!({ "objectName": s, "key": s }))
            .collect();
        secret_objects.push(json!({
            "secretName": names::WORKSPACE_SECRETS,
            "type": "Opaque",
            "data": data,
        }));
    }
    // The Azure provider's `objects` parameter: a YAML string holding an
    // `array` of YAML strings, one per object.
    let mut list = String::from("array:\n");
    for o in &objects {
        list.push_str(&format!(
            "  - |\n    objectName: {o}\n    objectType: secret\n"
        ));
    }
    json!({
        "provider": "azure",
        "parameters": {
            "usePodIdentity": "false",
            "clientID": kv.client_id,
            "keyvaultName": kv.vault_name,
            "tenantId": kv.tenant_id,
            "objects": list,
        },
        "secretObjects": secret_objects,
    })
}

#[cfg(test)]
mod tests {
    use crate::declare::model::{
        self, Environment, FhirService, KeyVault, Metadata, SecretRef, ServiceKeyVault, Settings,
        Workspace, WorkspaceSpec,
    };
    use crate::declare::names::identities;
    use crate::render::render_workspace;

    fn fhir(name: &str, key_vault: Option<ServiceKeyVault>) -> FhirService {
        FhirService {
            name: name.into(),
            fhir_version: "R4".into(),
            image: None,
            replicas: Some(1),
            resources: None,
            auth: None,
            cors: None,
            identity: None,
            key_vault,
            probes: None,
            autoscaling: None,
        }
    }

    fn secret(object_name: &str, env: &str) -> SecretRef {
        SecretRef {
            object_name: object_name.into(),
            env: env.into(),
        }
    }

    fn setup(key_vault: Option<KeyVault>) -> (Environment, Workspace) {
        let ws = Workspace {
            api_version: model::API_VERSION.into(),
            kind: "Workspace".into(),
            metadata: Metadata {
                name: "acme".into(),
                ..Metadata::default()
            },
            spec: WorkspaceSpec {
                fhir_services: vec![
                    fhir(
                        "main",
                        Some(ServiceKeyVault {
                            certificate: Some("acme-main-cert".into()),
                            secrets: vec![
                                secret("acme-sql", "SqlServer__ConnectionString"),
                                secret("acme-insights", "Shared"),
                            ],
                        }),
                    ),
                    fhir("other", None),
                ],
                ..WorkspaceSpec::default()
            },
        };
        let env = Environment {
            name: "prod".into(),
            chain: vec!["prod".into()],
            settings: Settings {
                key_vault,
                ..Settings::default()
            },
            workspaces: vec![ws.clone()],
            resources: Vec::new(),
        };
        (env, ws)
    }

    fn vault() -> KeyVault {
        KeyVault {
            vault_name: "kv-prod".into(),
            tenant_id: "72f988bf-86f1-41af-91ab-2d7cd011db47".into(),
            client_id: "3f1a8c52-6d0e-4b7a-9a43-2c5f7e9d1b10".into(),
            certificate: Some("{workspace}-{environment}-tls".into()),
            secrets: vec![secret("insights", "Shared")],
        }
    }

    fn find(objects: &[crate::object::Object], kind: &str, name: &str) -> serde_json::Value {
        objects
            .iter()
            .find(|o| &*o.kind == kind && &*o.name == name)
            .unwrap_or_else(|| panic!("no {kind}/{name}"))
            .value()
    }

    #[test]
    fn a_workspace_reading_the_key_vault_gets_its_provider_class_volumes_tls_and_secret_env() {
        let (env, ws) = setup(Some(vault()));
        let objects = render_workspace(&env, &ws).unwrap();
        let spc = find(&objects, "SecretProviderClass", "workspace-keyvault");
        assert_eq!(spc["apiVersion"], "secrets-store.csi.x-k8s.io/v1");
        let params = &spc["spec"]["parameters"];
        assert_eq!(params["keyvaultName"], "kv-prod");
        assert_eq!(params["clientID"], "3f1a8c52-6d0e-4b7a-9a43-2c5f7e9d1b10");
        assert_eq!(params["tenantId"], "72f988bf-86f1-41af-91ab-2d7cd011db47");
        let listed = params["objects"].as_str().unwrap();
        for o in [
            "acme-prod-tls",
            "acme-main-cert",
            "acme-sql",
            "acme-insights",
            "insights",
        ] {
            assert!(
                listed.contains(&format!("objectName: {o}\n")),
                "{o} in {listed}"
            );
        }
        let synced: Vec<&str> = spc["spec"]["secretObjects"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["secretName"].as_str().unwrap())
            .collect();
        assert_eq!(
            synced,
            ["workspace-tls", "fhir-main-tls", "workspace-secrets"]
        );
        // Per-host certificate for main, the workspace's for the other.
        let tls =
            |name: &str| find(&objects, "Ingress", name)["spec"]["tls"][0]["secretName"].clone();
        assert_eq!(tls("fhir-main"), "fhir-main-tls");
        assert_eq!(tls("fhir-other"), "workspace-tls");
        // main's own `Shared` wins over the environment's.
        let main = find(&objects, "Deployment", "fhir-main");
        let pod = &main["spec"]["template"]["spec"];
        let env_vars = pod["containers"][0]["env"].as_array().unwrap();
        let refs: Vec<(String, String)> = env_vars
            .iter()
            .map(|e| {
                let r = &e["valueFrom"]["secretKeyRef"];
                assert_eq!(r["name"], "workspace-secrets");
                (
                    e["name"].as_str().unwrap().into(),
                    r["key"].as_str().unwrap().into(),
                )
            })
            .collect();
        assert_eq!(
            refs,
            [
                ("Shared".to_string(), "acme-insights".to_string()),
                ("SqlServer__ConnectionString".into(), "acme-sql".into())
            ]
        );
        let volume = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "secrets-store")
            .expect("CSI volume");
        assert_eq!(volume["csi"]["driver"], "secrets-store.csi.k8s.io");
        assert_eq!(
            volume["csi"]["volumeAttributes"]["secretProviderClass"],
            "workspace-keyvault"
        );
        // What validation checks for collisions lists the class too.
        assert!(
            identities(&env, &ws)
                .iter()
                .any(|(id, _)| id.kind == "SecretProviderClass")
        );
    }

    #[test]
    fn without_a_key_vault_nothing_is_mounted_and_the_ingress_keeps_its_secret_name() {
        let (mut env, ws) = setup(None);
        env.settings.ingress.tls_secret_name = Some("wildcard".into());
        // A service's keyVault without the environment's is refused by
        // validation; rendering reads nothing.
        let objects = render_workspace(&env, &ws).unwrap();
        assert!(objects.iter().all(|o| &*o.kind != "SecretProviderClass"));
        let ingress = find(&objects, "Ingress", "fhir-main");
        assert_eq!(ingress["spec"]["tls"][0]["secretName"], "wildcard");
        let main = find(&objects, "Deployment", "fhir-main");
        assert!(!main.to_string().contains("secrets-store"));
    }
}
