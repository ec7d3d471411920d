//! The builders every service family shares: the rendering context, a
//! workload (Deployment) with its ConfigMap, and an exposed service
//! (ServiceAccount, ConfigMap, Deployment, Service, Ingress, PDB).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec, MetricSpec,
    MetricTarget, ResourceMetricSource,
};
use k8s_openapi::api::core::v1::{
    CSIVolumeSource, Capabilities, ConfigMap, ConfigMapEnvSource, ConfigMapVolumeSource, Container,
    ContainerPort, EmptyDirVolumeSource, EnvFromSource, EnvVar, EnvVarSource, HTTPGetAction,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile,
    SecretKeySelector, SecurityContext, Service, ServiceAccount, ServicePort, ServiceSpec, Volume,
    VolumeMount,
};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule,
    IngressServiceBackend, IngressSpec, IngressTLS, ServiceBackendPort,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use sha2::{Digest, Sha256};

use super::context::Ctx;
use super::keyvault;
use crate::declare::model::{self, Image, KindDefaults, Probes, Resources, Scale};
use crate::declare::names;

pub(super) const HTTP_PORT: i32 = 8080;
pub const CONFIG_HASH_ANNOTATION: &str = "tenantsync.io/config-hash";
pub const WORKLOAD_IDENTITY_CLIENT_ID: &str = "azure.workload.identity/client-id";
pub const WORKLOAD_IDENTITY_USE: &str = "azure.workload.identity/use";

/// Everything a workload needs, for one Deployment.
pub(super) struct Workload<'a> {
    pub(super) name: String,
    pub(super) app: &'static str,
    pub(super) component: &'static str,
    pub(super) image: String,
    /// None: a HorizontalPodAutoscaler owns them.
    pub(super) replicas: Option<i32>,
    pub(super) resources: Option<&'a Resources>,
    pub(super) probes: Probes,
    pub(super) service_account: Option<String>,
    /// ConfigMap whose keys become environment variables.
    pub(super) env_from: Option<String>,
    pub(super) env: Vec<(String, String)>,
    /// (variable, Secret, key) read from Secrets the CSI driver syncs.
    pub(super) secret_env: Vec<(String, String, String)>,
    /// Mount the workspace's Key Vault (CSI) volume.
    pub(super) key_vault: bool,
    /// Mount the class of the service's own vault.
    pub(super) own_key_vault: Option<String>,
    /// ConfigMap mounted read-only at a path.
    pub(super) mount: Option<(String, &'static str)>,
    pub(super) identity: bool,
    pub(super) config_hash: String,
}

/// A FHIR or DICOM service: a workload exposed through a Service and Ingress.
pub(super) struct Exposed<'a> {
    pub(super) app: &'static str,
    /// `fhir` or `dicom`, the second label of the ingress host.
    pub(super) host_kind: &'static str,
    /// The declared service name.
    pub(super) short: &'a str,
    /// The rendered object name.
    pub(super) name: &'a str,
    pub(super) image: String,
    pub(super) scale: Scale,
    pub(super) resources: Option<&'a Resources>,
    pub(super) probes: Probes,
    pub(super) identity: Option<&'a model::Identity>,
    pub(super) key_vault: Option<&'a model::ServiceKeyVault>,
}

/// What a FHIR or DICOM service declares of its workload.
pub(super) struct Declared<'a> {
    pub(super) image: Option<&'a Image>,
    pub(super) replicas: Option<i32>,
    pub(super) autoscaling: Option<model::Autoscaling>,
    pub(super) resources: Option<&'a Resources>,
    pub(super) probes: Option<Probes>,
    pub(super) identity: Option<&'a model::Identity>,
    pub(super) key_vault: Option<&'a model::ServiceKeyVault>,
}

impl<'a> Exposed<'a> {
    /// Service `short` (rendered as `name`) of `app`, its own settings over
    /// the environment's image and defaults for its kind.
    pub(super) fn of(
        cx: &Ctx<'_>,
        (app, host_kind): (&'static str, &'static str),
        (short, name): (&'a str, &'a str),
        own: Declared<'a>,
        default_image: Option<&Image>,
        defaults: &'a KindDefaults,
    ) -> Exposed<'a> {
        Exposed {
            app,
            host_kind,
            short,
            name,
            image: image_ref(own.image, default_image),
            scale: cx.env.scale_of(own.replicas, own.autoscaling, defaults),
            resources: own.resources.or(defaults.resources.as_ref()),
            probes: cx.probes(own.probes),
            identity: own.identity,
            key_vault: own.key_vault,
        }
    }
}

/// ServiceAccount, ConfigMap, Deployment, Service, Ingress and (replicas > 1)
/// PodDisruptionBudget of a FHIR or DICOM service.
pub(super) fn exposed_service(cx: &mut Ctx<'_>, e: Exposed<'_>, data: BTreeMap<String, String>) {
    let Exposed {
        app,
        host_kind,
        short,
        name,
        image,
        scale,
        resources,
        probes,
        identity,
        key_vault,
    } = e;
    let secrets = super::keyvault::of_service(cx, name, key_vault);
    let labels = cx.labels(app, name, "api");
    service_account(cx, name, labels.clone(), identity);
    let config_hash = config_map(cx, &names::config(name), app, name, "api", data);
    deployment(
        cx,
        Workload {
            name: name.to_string(),
            app,
            component: "api",
            image,
            replicas: match scale {
                Scale::Fixed(n) => Some(n),
                Scale::Auto(_) => None,
            },
            resources,
            probes,
            service_account: Some(name.to_string()),
            env_from: Some(names::config(name)),
            env: Vec::new(),
            secret_env: secrets.env,
            key_vault: secrets.mount,
            own_key_vault: secrets.own_class,
            mount: None,
            identity: identity.is_some(),
            config_hash,
        },
    );

    let selector = selector_labels(app, name);
    let svc = Service {
        metadata: cx.meta(name, labels.clone()),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector.clone()),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                target_port: Some(IntOrString::String("http".into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };
    cx.push(&svc, true, name);

    ingress(
        cx,
        name,
        labels.clone(),
        (short, host_kind),
        secrets.tls_secret,
    );

    if let Scale::Auto(a) = scale {
        autoscaler(cx, name, labels.clone(), a);
    }
    if scale.least() > 1 {
        let pdb = PodDisruptionBudget {
            metadata: cx.meta(name, labels),
            spec: Some(PodDisruptionBudgetSpec {
                max_unavailable: Some(IntOrString::Int(1)),
                selector: Some(LabelSelector {
                    match_labels: Some(selector),
                    ..LabelSelector::default()
                }),
                ..PodDisruptionBudgetSpec::default()
            }),
            ..PodDisruptionBudget::default()
        };
        cx.push(&pdb, true, name);
    }
}

/// The HorizontalPodAutoscaler of a service: CPU utilisation between the
/// declared bounds (the Deployment then declares no replicas).
fn autoscaler(
    cx: &mut Ctx<'_>,
    name: &str,
    labels: BTreeMap<String, String>,
    a: model::Autoscaling,
) {
    let hpa = HorizontalPodAutoscaler {
        metadata: cx.meta(name, labels),
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".into()),
                kind: "Deployment".into(),
                name: name.to_string(),
            },
            min_replicas: Some(a.min_replicas),
            max_replicas: a.max_replicas,
            metrics: Some(vec![MetricSpec {
                type_: "Resource".into(),
                resource: Some(ResourceMetricSource {
                    name: "cpu".into(),
                    target: MetricTarget {
                        type_: "Utilization".into(),
                        average_utilization: Some(a.target_cpu_utilization_percentage),
                        ..MetricTarget::default()
                    },
                }),
                ..MetricSpec::default()
            }]),
            ..HorizontalPodAutoscalerSpec::default()
        }),
        ..HorizontalPodAutoscaler::default()
    };
    cx.push(&hpa, true, name);
}

/// The Ingress of an exposed service: `<service>.<fhir|dicom>.<workspace>.<domain>`,
/// with TLS.
fn ingress(
    cx: &mut Ctx<'_>,
    name: &str,
    labels: BTreeMap<String, String>,
    (short, host_kind): (&str, &str),
    tls_secret: Option<String>,
) {
    let ingress_settings = &cx.env.settings.ingress;
    let host = names::host(
        short,
        host_kind,
        cx.ws,
        ingress_settings.domain.as_deref().unwrap_or("local"),
    );
    let ingress = Ingress {
        metadata: cx.meta(name, labels),
        spec: Some(IngressSpec {
            ingress_class_name: ingress_settings.class_name.clone(),
            rules: Some(vec![IngressRule {
                host: Some(host.clone()),
                http: Some(HTTPIngressRuleValue {
                    paths: vec![HTTPIngressPath {
                        path: Some("/".into()),
                        path_type: "Prefix".into(),
                        backend: IngressBackend {
                            service: Some(IngressServiceBackend {
                                name: name.to_string(),
                                port: Some(ServiceBackendPort {
                                    number: Some(80),
                                    ..ServiceBackendPort::default()
                                }),
                            }),
                            ..IngressBackend::default()
                        },
                    }],
                }),
            }]),
            tls: Some(vec![IngressTLS {
                hosts: Some(vec![host]),
                secret_name: tls_secret,
            }]),
            ..IngressSpec::default()
        }),
        ..Ingress::default()
    };
    cx.push(&ingress, true, name);
}

/// A workload's own ServiceAccount, with the client id of its Azure
/// workload identity when it has one.
pub(super) fn service_account(
    cx: &mut Ctx<'_>,
    name: &str,
    labels: BTreeMap<String, String>,
    identity: Option<&model::Identity>,
) {
    let mut meta = cx.meta(name, labels);
    if let Some(id) = identity {
        meta.annotations = Some(BTreeMap::from([(
            WORKLOAD_IDENTITY_CLIENT_ID.to_string(),
            id.client_id.clone(),
        )]));
    }
    cx.push(
        &ServiceAccount {
            metadata: meta,
            ..ServiceAccount::default()
        },
        true,
        name,
    );
}

/// Adds a ConfigMap; returns the hash of its data, which goes into the pod
/// template so that a content change rolls the Deployment.
pub(super) fn config_map(
    cx: &mut Ctx<'_>,
    name: &str,
    app: &str,
    instance: &str,
    component: &str,
    data: BTreeMap<String, String>,
) -> String {
    let mut hasher = Sha256::new();
    for (k, v) in &data {
        hasher.update(k.as_bytes());
        hasher.update([0]);
        hasher.update(v.as_bytes());
        hasher.update([0]);
    }
    let digest = hasher.finalize();
    let hash: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    let cm = ConfigMap {
        metadata: cx.meta(name, cx.labels(app, instance, component)),
        data: Some(data),
        ..ConfigMap::default()
    };
    cx.push(&cm, true, name);
    hash
}

pub(super) fn deployment(cx: &mut Ctx<'_>, mut w: Workload<'_>) {
    let labels = cx.labels(w.app, &w.name, w.component);
    let selector = selector_labels(w.app, &w.name);
    let mut pod_labels = labels.clone();
    if w.identity {
        pod_labels.insert(WORKLOAD_IDENTITY_USE.to_string(), "true".to_string());
    }
    let (container, volumes) = container(&mut w);
    let deploy = Deployment {
        metadata: cx.meta(&w.name, labels),
        spec: Some(DeploymentSpec {
            replicas: w.replicas,
            selector: LabelSelector {
                match_labels: Some(selector),
                ..LabelSelector::default()
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(1)),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(BTreeMap::from([
                        (CONFIG_HASH_ANNOTATION.to_string(), w.config_hash),
                        // Seed 002: Prometheus scrapes every workload.
                        ("prometheus.io/scrape".to_string(), "true".to_string()),
                        ("prometheus.io/port".to_string(), HTTP_PORT.to_string()),
                        ("prometheus.io/path".to_string(), "/metrics".to_string()),
                    ])),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: w.service_account,
                    containers: vec![container],
                    volumes: Some(volumes),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            ..SeccompProfile::default()
                        }),
                        ..PodSecurityContext::default()
                    }),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    };
    cx.push(&deploy, true, &w.name);
}

/// The workload's one container (its image, settings, probes, a writable
/// /tmp on a read-only root file system, the mounted mapping) and the
/// pod's volumes.
fn container(w: &mut Workload<'_>) -> (Container, Vec<Volume>) {
    let probe = |t: model::ProbeTiming, (initial, period): (i32, i32)| Probe {
        http_get: Some(HTTPGetAction {
            path: Some("/health".into()),
            port: IntOrString::String("http".into()),
            ..HTTPGetAction::default()
        }),
        initial_delay_seconds: Some(t.initial_delay_seconds.unwrap_or(initial)),
        period_seconds: Some(t.period_seconds.unwrap_or(period)),
        ..Probe::default()
    };
    let mut mounts = vec![VolumeMount {
        name: "tmp".into(),
        mount_path: "/tmp".into(),
        ..VolumeMount::default()
    }];
    let mut volumes = vec![Volume {
        name: "tmp".into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    }];
    let classes = w
        .key_vault
        .then(|| {
            (
                keyvault::VOLUME,
                keyvault::MOUNT_PATH,
                names::SECRET_PROVIDER_CLASS.to_string(),
            )
        })
        .into_iter()
        .chain(
            w.own_key_vault
                .take()
                .map(|class| (keyvault::OWN_VOLUME, keyvault::OWN_MOUNT_PATH, class)),
        );
    for (volume, path, class) in classes {
        mounts.push(VolumeMount {
            name: volume.into(),
            mount_path: path.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
        volumes.push(Volume {
            name: volume.into(),
            csi: Some(CSIVolumeSource {
                driver: keyvault::CSI_DRIVER.into(),
                read_only: Some(true),
                volume_attributes: Some(BTreeMap::from([(
                    "secretProviderClass".to_string(),
                    class,
                )])),
                ..CSIVolumeSource::default()
            }),
            ..Volume::default()
        });
    }
    if let Some((cm, path)) = &w.mount {
        mounts.push(VolumeMount {
            name: "mapping".into(),
            mount_path: (*path).to_string(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
        volumes.push(Volume {
            name: "mapping".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: cm.clone(),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        });
    }
    let container = Container {
        name: w.app.to_string(),
        image: Some(std::mem::take(&mut w.image)),
        ports: Some(vec![ContainerPort {
            name: Some("http".into()),
            container_port: HTTP_PORT,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        env_from: w.env_from.take().map(|cm| {
            vec![EnvFromSource {
                config_map_ref: Some(ConfigMapEnvSource {
                    name: cm,
                    ..ConfigMapEnvSource::default()
                }),
                ..EnvFromSource::default()
            }]
        }),
        env: (!w.env.is_empty() || !w.secret_env.is_empty()).then(|| {
            let plain = std::mem::take(&mut w.env)
                .into_iter()
                .map(|(name, value)| EnvVar {
                    name,
                    value: Some(value),
                    ..EnvVar::default()
                });
            let secret =
                std::mem::take(&mut w.secret_env)
                    .into_iter()
                    .map(|(name, secret, key)| EnvVar {
                        name,
                        value_from: Some(EnvVarSource {
                            secret_key_ref: Some(SecretKeySelector {
                                name: secret,
                                key,
                                ..SecretKeySelector::default()
                            }),
                            ..EnvVarSource::default()
                        }),
                        ..EnvVar::default()
                    });
            plain.chain(secret).collect()
        }),
        resources: w.resources.map(resource_requirements),
        readiness_probe: Some(probe(w.probes.readiness, model::READINESS_PROBE)),
        liveness_probe: Some(probe(w.probes.liveness, model::LIVENESS_PROBE)),
        volume_mounts: Some(mounts),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    };
    (container, volumes)
}

pub(super) fn selector_labels(app: &str, instance: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), app.to_string()),
        (
            "app.kubernetes.io/instance".to_string(),
            instance.to_string(),
        ),
    ])
}

pub(super) fn service_url(service: &str, namespace: &str) -> String {
    format!("http://{service}.{namespace}.svc.cluster.local")
}

pub(super) fn image_ref(own: Option<&Image>, default: Option<&Image>) -> String {
    let pick = |f: fn(&Image) -> Option<&String>| {
        own.and_then(f)
            .or_else(|| default.and_then(f))
            .cloned()
            .unwrap_or_default()
    };
    format!(
        "{}:{}",
        pick(|i| i.repository.as_ref()),
        pick(|i| i.tag.as_ref())
    )
}

pub(super) fn resource_requirements(r: &Resources) -> ResourceRequirements {
    let list = |m: &BTreeMap<String, model::Quantity>| {
        (!m.is_empty()).then(|| {
            m.iter()
                .map(|(k, v)| (k.clone(), Quantity(v.as_string())))
                .collect()
        })
    };
    ResourceRequirements {
        requests: list(&r.requests),
        limits: list(&r.limits),
        ..ResourceRequirements::default()
    }
}

/// `30s` / `5m` / `1h` / `250ms` as a .NET TimeSpan (`00:00:30`,
/// `d.hh:mm:ss` from a day on), which the DICOM-cast worker reads (seed 003:
/// DicomCastWorker.PollInterval). The schema allows 1 to 999,999,999 units.
pub(super) fn timespan(duration: &str) -> String {
    let digits: String = duration.chars().take_while(char::is_ascii_digit).collect();
    let unit = &duration[digits.len()..];
    let n: u64 = digits.parse().unwrap_or(0);
    let (secs, millis) = match unit {
        "ms" => (n / 1000, n % 1000),
        "m" => (n.saturating_mul(60), 0),
        "h" => (n.saturating_mul(3600), 0),
        _ => (n, 0),
    };
    // .NET's TimeSpan format: hours run 0-23, whole days go before a dot
    // (`100h` is `4.04:00:00`; `100:00:00` would not parse).
    let days = secs / 86_400;
    let clock = format!(
        "{:02}:{:02}:{:02}",
        (secs / 3600) % 24,
        (secs / 60) % 60,
        secs % 60
    );
    let base = if days > 0 {
        format!("{days}.{clock}")
    } else {
        clock
    };
    if millis > 0 {
        format!("{base}.{millis:03}")
    } else {
        base
    }
}

pub(super) fn pretty(value: &serde_json::Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}
