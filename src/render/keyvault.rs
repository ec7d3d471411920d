//! What a workspace reads from the environment's Azure Key Vault (seed 001):
//! one `SecretProviderClass` (Secrets Store CSI driver, Azure provider)
//! naming the certificates and secrets, and the Secrets the driver syncs
//! them into: `workspace-tls` (the workspace-wide certificate),
//! `<service>-tls` (a service's own), `workspace-secrets` (one key per
//! secret object). The pods that need them mount the CSI volume (the driver
//! syncs Secrets only while a pod mounts it).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use super::context::Ctx;
use crate::declare::model::{KeyVault, ServiceKeyVault, Workspace};
use crate::declare::names;

pub const API_VERSION: &str = "secrets-store.csi.x-k8s.io/v1";
pub const KIND: &str = "SecretProviderClass";
/// The CSI driver's name, as pods' volumes name it.
pub const CSI_DRIVER: &str = "secrets-store.csi.k8s.io";
pub(super) const VOLUME: &str = "secrets-store";
pub(super) const MOUNT_PATH: &str = "/mnt/secrets-store";
/// The volume of a service's own vault, and where it is mounted.
pub(super) const OWN_VOLUME: &str = "secrets-store-own";
pub(super) const OWN_MOUNT_PATH: &str = "/mnt/secrets-store-own";

/// What one exposed service reads: the Secret its Ingress names, its
/// `secretKeyRef` environment variables and the CSI volumes its pods mount.
pub(super) struct ServiceSecrets {
    pub(super) tls_secret: Option<String>,
    /// (variable, Secret, key), the service's over the environment's for
    /// one variable.
    pub(super) env: Vec<(String, String, String)>,
    /// Mount the workspace's class.
    pub(super) mount: bool,
    /// Mount the class of the service's own vault (its name).
    pub(super) own_class: Option<String>,
}

/// What service `name` (rendered name) reads, given its own declaration.
pub(super) fn of_service(
    cx: &Ctx<'_>,
    name: &str,
    own: Option<&ServiceKeyVault>,
) -> ServiceSecrets {
    let env_kv = cx.env.settings.key_vault.as_ref();
    let workspace = env_kv.filter(|_| cx.key_vault);
    let own_vault = own.and_then(|k| k.own_vault(env_kv));
    let own_cert = own
        .and_then(|k| k.certificate.as_ref())
        .filter(|_| own_vault.is_some() || workspace.is_some());
    let workspace_cert = workspace.and_then(|kv| kv.certificate.as_ref());
    let tls_secret = match (own_cert, workspace_cert) {
        (Some(_), _) => Some(names::tls(name)),
        (None, Some(_)) => Some(names::WORKSPACE_TLS.to_string()),
        (None, None) => cx.env.settings.ingress.tls_secret_name.clone(),
    };
    let mut by_var: BTreeMap<&str, (String, &str)> = BTreeMap::new();
    let mut from_workspace = false;
    for s in workspace
        .map(|kv| kv.secrets.as_slice())
        .unwrap_or_default()
    {
        by_var.insert(
            &s.env,
            (names::WORKSPACE_SECRETS.to_string(), &s.object_name),
        );
    }
    let own_secrets = own.map(|k| k.secrets.as_slice()).unwrap_or_default();
    let own_secret_name = match (&own_vault, workspace) {
        (Some(_), _) => Some(names::service_secrets(name)),
        (None, Some(_)) => Some(names::WORKSPACE_SECRETS.to_string()),
        (None, None) => None,
    };
    if let Some(secret) = &own_secret_name {
        for s in own_secrets {
            by_var.insert(&s.env, (secret.clone(), &s.object_name));
        }
    }
    let env: Vec<(String, String, String)> = by_var
        .into_iter()
        .map(|(var, (secret, key))| {
            from_workspace |= secret == names::WORKSPACE_SECRETS;
            (var.to_string(), secret, key.to_string())
        })
        .collect();
    let own_class = own_vault.as_ref().map(|_| names::service_key_vault(name));
    let mount = workspace.is_some()
        && (from_workspace
            || (own_cert.is_none() && workspace_cert.is_some())
            || (own_cert.is_some() && own_vault.is_none()));
    ServiceSecrets {
        tls_secret,
        env,
        mount,
        own_class,
    }
}

/// The workspace's `SecretProviderClass` (when it reads the environment's
/// Key Vault) and one per service reading a vault of its own.
pub(super) fn render(cx: &mut Ctx<'_>, ws: &Workspace) {
    let env_kv = cx.env.settings.key_vault.as_ref();
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
    let own_vault = |own: Option<&ServiceKeyVault>| own.and_then(|k| k.own_vault(env_kv));
    if let Some(kv) = env_kv.filter(|_| cx.key_vault) {
        let mut certs = Vec::new();
        let uses_workspace_cert = services
            .iter()
            .any(|(_, own)| own.and_then(|k| k.certificate.as_ref()).is_none());
        if let Some(cert) = kv.certificate.as_deref().filter(|_| uses_workspace_cert) {
            let cert = cert
                .replace("{workspace}", cx.ws)
                .replace("{environment}", &cx.env.name);
            certs.push((names::WORKSPACE_TLS.to_string(), cert));
        }
        let mut secrets: BTreeSet<String> =
            kv.secrets.iter().map(|s| s.object_name.clone()).collect();
        for (name, own) in services.iter().filter(|(_, own)| own_vault(*own).is_none()) {
            if let Some(own) = own {
                if let Some(cert) = &own.certificate {
                    certs.push((names::tls(name), cert.clone()));
                }
                secrets.extend(own.secrets.iter().map(|s| s.object_name.clone()));
            }
        }
        let body = provider_class(kv, &certs, &secrets, names::WORKSPACE_SECRETS);
        push_class(cx, names::SECRET_PROVIDER_CLASS, "workspace", body);
    }
    for (name, own) in &services {
        let (Some(own), Some(vault)) = (own, own_vault(*own)) else {
            continue;
        };
        let certs: Vec<(String, String)> = own
            .certificate
            .iter()
            .map(|c| (names::tls(name), c.clone()))
            .collect();
        let secrets: BTreeSet<String> = own.secrets.iter().map(|s| s.object_name.clone()).collect();
        let body = provider_class(&vault, &certs, &secrets, &names::service_secrets(name));
        push_class(cx, &names::service_key_vault(name), name, body);
    }
}

fn push_class(cx: &mut Ctx<'_>, class: &str, instance_of: &str, spec: Value) {
    let labels = cx.labels(instance_of, class, "secrets");
    let meta = cx.meta(class, labels);
    let object = json!({
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": meta,
        "spec": spec,
    });
    cx.push_value(API_VERSION, KIND, class, &object);
}

/// A class's spec: `certs` as (Secret, certificate object) and `secrets`
/// synced into the Secret `secrets_name`, one key per object.
fn provider_class(
    vault: &KeyVault,
    certs: &[(String, String)],
    secrets: &BTreeSet<String>,
    secrets_name: &str,
) -> Value {
    // Key Vault objects, each once; certificates are read as `secret`
    // objects, which give the private key with the certificate chain (what
    // a `kubernetes.io/tls` Secret needs).
    let mut objects: BTreeSet<&str> = secrets.iter().map(String::as_str).collect();
    let mut secret_objects: Vec<Value> = certs
        .iter()
        .map(|(secret, object)| {
            objects.insert(object);
            json!({
                "secretName": secret,
                "type": "kubernetes.io/tls",
                "data": [
                    { "objectName": object, "key": "tls.key" },
                    { "objectName": object, "key": "tls.crt" },
                ],
            })
        })
        .collect();
    if !secrets.is_empty() {
        let data: Vec<Value> = secrets
            .iter()
            .map(|s| json!({ "objectName": s, "key": s }))
            .collect();
        secret_objects.push(json!({
            "secretName": secrets_name,
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
            "clientID": vault.client_id,
            "keyvaultName": vault.vault_name,
            "tenantId": vault.tenant_id,
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
                            ..ServiceKeyVault::default()
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

    /// A service may read a vault of its own: it gets a class of its own
    /// (the environment's tenant and identity unless it gives them), and
    /// its pods mount both classes when they read from both.
    #[test]
    fn a_service_with_a_vault_of_its_own_gets_its_own_class() {
        let (mut env, mut ws) = setup(Some(vault()));
        ws.spec.fhir_services[1].key_vault = Some(ServiceKeyVault {
            vault_name: Some("kv-other".into()),
            client_id: Some("9e5fa096-3d4b-4c5e-8f07-6a9bcd3e5f54".into()),
            certificate: Some("other-cert".into()),
            secrets: vec![secret("other-db", "Db")],
            ..ServiceKeyVault::default()
        });
        env.workspaces = vec![ws.clone()];
        let objects = render_workspace(&env, &ws).unwrap();
        let own = find(&objects, "SecretProviderClass", "fhir-other-keyvault");
        let params = &own["spec"]["parameters"];
        assert_eq!(params["keyvaultName"], "kv-other");
        assert_eq!(params["clientID"], "9e5fa096-3d4b-4c5e-8f07-6a9bcd3e5f54");
        assert_eq!(params["tenantId"], "72f988bf-86f1-41af-91ab-2d7cd011db47");
        let listed = params["objects"].as_str().unwrap();
        assert!(
            listed.contains("objectName: other-cert\n")
                && listed.contains("objectName: other-db\n")
        );
        assert!(!listed.contains("insights"), "{listed}");
        // The workspace's class no longer reads other's objects.
        let workspace = find(&objects, "SecretProviderClass", "workspace-keyvault");
        let listed = workspace["spec"]["parameters"]["objects"].as_str().unwrap();
        assert!(!listed.contains("other-"), "{listed}");
        let ingress = find(&objects, "Ingress", "fhir-other");
        assert_eq!(ingress["spec"]["tls"][0]["secretName"], "fhir-other-tls");
        let pod = &find(&objects, "Deployment", "fhir-other")["spec"]["template"]["spec"];
        let classes: Vec<&str> = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v["csi"]["volumeAttributes"]["secretProviderClass"].as_str())
            .collect();
        assert_eq!(classes, ["workspace-keyvault", "fhir-other-keyvault"]);
        let env_vars = pod["containers"][0]["env"].to_string();
        assert!(
            env_vars.contains("{\"name\":\"Db\",\"valueFrom\":{\"secretKeyRef\":{\"key\":\"other-db\",\"name\":\"fhir-other-secrets\"}}}"),
            "{env_vars}"
        );
        let mut listed: Vec<String> = identities(&env, &ws)
            .into_iter()
            .map(|(id, _)| format!("{}/{}", id.kind, id.name))
            .collect();
        let mut rendered: Vec<String> = objects
            .iter()
            .map(|o| format!("{}/{}", o.kind, o.name))
            .collect();
        listed.sort();
        rendered.sort();
        assert_eq!(listed, rendered);
    }
}
