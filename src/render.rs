//! Rendering: a resolved environment to the Kubernetes objects it should have.
//!
//! A pure, deterministic function: the same environment always gives the same
//! objects in the same order. Objects are built with k8s-openapi types and
//! carried as JSON values with their identity, so later stages (plan, apply,
//! prune) need not know each type.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::Value;
use serde_json::value::RawValue;

use k8s_openapi::Resource;
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapEnvSource, ConfigMapVolumeSource, Container, ContainerPort,
    EmptyDirVolumeSource, EnvFromSource, EnvVar, HTTPGetAction, Namespace, PodSecurityContext,
    PodSpec, PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile, SecurityContext,
    Service, ServiceAccount, ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule,
    IngressServiceBackend, IngressSpec, IngressTLS, NetworkPolicy, NetworkPolicyIngressRule,
    NetworkPolicyPeer, NetworkPolicySpec, ServiceBackendPort,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::model::{
    self, DEFAULT_INGRESS_CONTROLLER_NAMESPACE, Environment, Image, KindDefaults, Resources,
    Workspace,
};

pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const MANAGER: &str = "tenantsync";
pub const ENVIRONMENT_LABEL: &str = "tenantsync.io/environment";
pub const WORKSPACE_LABEL: &str = "tenantsync.io/workspace";
pub const CONFIG_HASH_ANNOTATION: &str = "tenantsync.io/config-hash";
pub const WORKLOAD_IDENTITY_CLIENT_ID: &str = "azure.workload.identity/client-id";
pub const WORKLOAD_IDENTITY_USE: &str = "azure.workload.identity/use";
const HTTP_PORT: i32 = 8080;

/// Names of rendered objects, shared by rendering and validation.
pub mod names {
    pub fn fhir(service: &str) -> String {
        format!("fhir-{service}")
    }
    pub fn dicom(service: &str) -> String {
        format!("dicom-{service}")
    }
    pub fn dicom_cast(dicom_service: &str) -> String {
        format!("dicomcast-{dicom_service}")
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
}

pub const SYNC_WAVE_ANNOTATION: &str = "tenantsync.io/sync-wave";

/// The sync wave an object's annotation `tenantsync.io/sync-wave` gives it
/// (default 0): waves apply in increasing order, prune in decreasing order.
pub fn wave_of(body: &Value) -> i32 {
    body.pointer("/metadata/annotations")
        .and_then(|a| a.get(SYNC_WAVE_ANNOTATION))
        .and_then(Value::as_str)
        .and_then(|w| w.trim().parse().ok())
        .unwrap_or(0)
}

/// An object's identity whatever API version serves it: kind, namespace,
/// name. Sets and maps of keys keep pairing objects linear at any size.
pub type ObjectKey<'a> = (&'a str, Option<&'a str>, &'a str);

/// A name in an object's identity (kind, API version, namespace, name,
/// workspace). Shared: the same few kinds and names, and each workspace's
/// namespace, recur across tens of thousands of objects, their changes and
/// their inventory entries, which then hold a pointer each, not a copy.
pub type Name = std::sync::Arc<str>;

/// Hands out one shared [`Name`] per distinct string.
#[derive(Debug, Default)]
pub struct Names(std::collections::HashSet<Name>);

impl Names {
    pub fn get(&mut self, s: &str) -> Name {
        if let Some(name) = self.0.get(s) {
            return name.clone();
        }
        let name = Name::from(s);
        self.0.insert(name.clone());
        name
    }
}

/// One rendered object and its identity.
#[derive(Clone, Debug, Serialize)]
pub struct Object {
    pub api_version: Name,
    pub kind: Name,
    pub namespace: Option<Name>,
    pub name: Name,
    pub workspace: Name,
    /// Sync wave (annotation `tenantsync.io/sync-wave`, default 0).
    pub wave: i32,
    /// The full object as compact JSON text, as sent to the API server. Text,
    /// not a `serde_json::Value`: an environment holds tens of thousands of
    /// objects for as long as a sync or the daemon runs, and a Value of a
    /// Deployment (a B-tree node per map) takes about ten times the bytes.
    body: Box<RawValue>,
    /// Where a `resources/` manifest is written (`None` for what a
    /// workspace renders and for live objects), so that what is said about
    /// it can point at its file.
    #[serde(skip)]
    pub source: Option<std::sync::Arc<crate::diag::Location>>,
}

impl PartialEq for Object {
    fn eq(&self, other: &Object) -> bool {
        (
            self.key(),
            &self.api_version,
            &self.workspace,
            self.body.get(),
        ) == (
            other.key(),
            &other.api_version,
            &other.workspace,
            other.body.get(),
        )
    }
}

impl Object {
    /// An object of `workspace` from its body; its identity and sync wave are
    /// read from it. `None` without a kind, an apiVersion or a name.
    pub fn from_value(workspace: &str, body: &Value) -> Option<Object> {
        let text = |v: &Value| v.as_str().map(Name::from);
        let meta = body.get("metadata")?;
        Some(Object {
            api_version: text(body.get("apiVersion")?)?,
            kind: text(body.get("kind")?)?,
            namespace: meta.get("namespace").and_then(text),
            name: text(meta.get("name")?)?,
            workspace: Name::from(workspace),
            wave: wave_of(body),
            body: serde_json::value::to_raw_value(body).ok()?,
            source: None,
        })
    }

    /// The body as a value to read or compare.
    pub fn value(&self) -> Value {
        // The text was written by serde_json from a value: it parses.
        serde_json::from_str(self.body.get()).unwrap_or(Value::Null)
    }

    /// The body as JSON text.
    pub fn json(&self) -> &RawValue {
        &self.body
    }

    pub fn key(&self) -> ObjectKey<'_> {
        (&self.kind, self.namespace.as_deref(), &self.name)
    }

    /// `Kind/namespace/name`, or `Kind/name` for cluster-scoped objects.
    pub fn id(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{}/{}/{}", self.kind, ns, self.name),
            None => format!("{}/{}", self.kind, self.name),
        }
    }
}

#[derive(Debug)]
pub struct RenderError {
    pub object: String,
    pub message: String,
}

impl fmt::Display for RenderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.object, self.message)
    }
}

impl std::error::Error for RenderError {}

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

/// The label selector of the objects tenantsync manages in an environment.
pub fn selector(environment: &str) -> String {
    format!("{MANAGED_BY}={MANAGER},{ENVIRONMENT_LABEL}={environment}")
}

/// Apply order of kinds: definitions first, exposure last (also the order of
/// `render` output within a workspace).
pub fn kind_rank(kind: &str) -> u8 {
    match kind {
        "Namespace" => 0,
        "CustomResourceDefinition" => 1,
        "ServiceAccount" => 2,
        "ConfigMap" | "Secret" => 3,
        "Service" => 4,
        "Deployment" => 5,
        "PodDisruptionBudget" => 6,
        "Ingress" => 7,
        "NetworkPolicy" => 8,
        _ => 9,
    }
}

struct Ctx<'a> {
    env: &'a Environment,
    ws: &'a str,
    namespace: String,
    out: Vec<Object>,
    error: Option<RenderError>,
    names: Names,
}

impl Ctx<'_> {
    fn labels(&self, name: &str, instance: &str, component: &str) -> BTreeMap<String, String> {
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

    fn meta(&self, name: &str, labels: BTreeMap<String, String>) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(self.namespace.clone()),
            labels: Some(labels),
            ..ObjectMeta::default()
        }
    }

    fn push<T: Resource + Serialize>(&mut self, object: &T, namespaced: bool, name: &str) {
        let namespace = namespaced.then(|| self.names.get(&self.namespace));
        // k8s-openapi writes apiVersion and kind (from `Resource`) itself.
        match serde_json::value::to_raw_value(object) {
            Ok(body) => {
                self.out.push(Object {
                    api_version: self.names.get(T::API_VERSION),
                    kind: self.names.get(T::KIND),
                    namespace,
                    name: self.names.get(name),
                    workspace: self.names.get(self.ws),
                    wave: 0,
                    body,
                    source: None,
                });
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

/// Everything a workload needs, for one Deployment.
struct Workload<'a> {
    name: String,
    app: &'static str,
    component: &'static str,
    image: String,
    replicas: i32,
    resources: Option<&'a Resources>,
    service_account: Option<String>,
    /// ConfigMap whose keys become environment variables.
    env_from: Option<String>,
    env: Vec<(String, String)>,
    /// ConfigMap mounted read-only at a path.
    mount: Option<(String, &'static str)>,
    identity: bool,
    config_hash: String,
}

/// Renders every workspace of an environment, in a stable order.
pub fn render(env: &Environment) -> Result<Vec<Object>, RenderError> {
    let mut all = Vec::new();
    render_each(env, |batch| {
        all.extend(batch);
        Ok::<_, RenderError>(())
    })?;
    Ok(all)
}

/// [`render`], workspace by workspace: what renders, and the workspaces
/// that do not with why (so that one workspace failing to render does not
/// hold the others).
pub fn render_partial(env: &Environment) -> (Vec<Object>, BTreeMap<String, RenderError>) {
    let mut all = environment_resources(env);
    let mut failed = BTreeMap::new();
    let mut names = Names::default();
    for ws in sorted_workspaces(env) {
        match render_workspace_with(env, ws, &mut names) {
            Ok(objects) => all.extend(objects),
            Err(e) => {
                failed.insert(ws.metadata.name.clone(), e);
            }
        }
    }
    (all, failed)
}

/// [`render`] a batch at a time: the layers' plain manifests, then each
/// workspace in name order (the same objects in the same order), for a
/// caller that writes objects out rather than keeps them all.
pub fn render_each<E: From<RenderError>>(
    env: &Environment,
    mut each: impl FnMut(Vec<Object>) -> Result<(), E>,
) -> Result<(), E> {
    each(environment_resources(env))?;
    let mut names = Names::default();
    for ws in sorted_workspaces(env) {
        each(render_workspace_with(env, ws, &mut names)?)?;
    }
    Ok(())
}

fn sorted_workspaces(env: &Environment) -> Vec<&Workspace> {
    let mut workspaces: Vec<&Workspace> = env.workspaces.iter().collect();
    workspaces.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    workspaces
}

/// Workspaces one thread renders (and `map`s) at a time in
/// [`render_map_each`].
const CHUNK: usize = 32;

/// [`render_each`] on all cores, for output: batches of workspaces are
/// rendered and turned into `T` by `map` (their text, say) in parallel, and
/// `each` gets the results in order. Only a few batches are held at once.
pub fn render_map_each<T: Send, E: From<RenderError>>(
    env: &Environment,
    map: impl Fn(&[Object]) -> T + Sync,
    mut each: impl FnMut(T) -> Result<(), E>,
) -> Result<(), E> {
    each(map(&environment_resources(env)))?;
    let workspaces = sorted_workspaces(env);
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    for round in workspaces.chunks(CHUNK * threads) {
        let batches: Vec<&[&Workspace]> = round.chunks(CHUNK).collect();
        let results = crate::par::map(&batches, |batch| {
            let (mut objects, mut names) = (Vec::new(), Names::default());
            for ws in *batch {
                objects.extend(render_workspace_with(env, ws, &mut names)?);
            }
            Ok::<_, RenderError>(map(&objects))
        });
        for result in results {
            each(result?)?;
        }
    }
    Ok(())
}

/// The layers' plain manifests, labelled as tenantsync's, first in the output
/// (they hold what workspaces may build on, such as CRDs).
fn environment_resources(env: &Environment) -> Vec<Object> {
    let mut out: Vec<Object> = env
        .resources
        .iter()
        .filter_map(|manifest| {
            let mut body = manifest.body.clone();
            if let Some(meta) = body
                .get_mut("metadata")
                .and_then(serde_json::Value::as_object_mut)
            {
                let labels = meta
                    .entry("labels")
                    .or_insert_with(|| serde_json::json!({}));
                if let Some(labels) = labels.as_object_mut() {
                    labels.insert(MANAGED_BY.into(), MANAGER.into());
                    labels.insert(ENVIRONMENT_LABEL.into(), env.name.clone().into());
                }
            }
            // Validation made sure every manifest has a kind, apiVersion and name.
            let mut object = Object::from_value("", &body)?;
            object.source = Some(std::sync::Arc::new(manifest.source.clone()));
            Some(object)
        })
        .collect();
    out.sort_by(|a, b| {
        (kind_rank(&a.kind), &a.namespace, &a.name).cmp(&(
            kind_rank(&b.kind),
            &b.namespace,
            &b.name,
        ))
    });
    out
}

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

/// The identities of the objects [`render_workspace`] makes, each with what
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
        names::NETWORK_POLICY.to_string(),
        Origin::Workspace,
    );
    let settings = &env.settings;
    let exposed = |add: &mut dyn FnMut(&'static str, &'static str, String, Origin),
                   name: String,
                   replicas: i32,
                   origin: Origin| {
        add("", "ServiceAccount", name.clone(), origin);
        add("", "ConfigMap", config_name(&name), origin);
        add("apps", "Deployment", name.clone(), origin);
        add("", "Service", name.clone(), origin);
        add("networking.k8s.io", "Ingress", name.clone(), origin);
        if replicas > 1 {
            add("policy", "PodDisruptionBudget", name, origin);
        }
    };
    for (i, f) in ws.spec.fhir_services.iter().enumerate() {
        let replicas = f.replicas.or(settings.defaults.fhir.replicas).unwrap_or(1);
        exposed(&mut add, names::fhir(&f.name), replicas, Origin::Fhir(i));
    }
    for (i, d) in ws.spec.dicom_services.iter().enumerate() {
        let replicas = d.replicas.or(settings.defaults.dicom.replicas).unwrap_or(1);
        exposed(&mut add, names::dicom(&d.name), replicas, Origin::Dicom(i));
        if d.dicom_cast.is_some() {
            let cast = names::dicom_cast(&d.name);
            add("", "ConfigMap", config_name(&cast), Origin::DicomCast(i));
            add("apps", "Deployment", cast, Origin::DicomCast(i));
        }
    }
    if !ws.spec.iot_connectors.is_empty() {
        add(
            "",
            "ServiceAccount",
            names::IOT_SHARED.to_string(),
            Origin::IotShared,
        );
        add(
            "",
            "ConfigMap",
            names::IOT_SHARED.to_string(),
            Origin::IotShared,
        );
    }
    for (i, c) in ws.spec.iot_connectors.iter().enumerate() {
        add("", "ConfigMap", names::iot(&c.name), Origin::Iot(i));
        add("apps", "Deployment", names::iot(&c.name), Origin::Iot(i));
        for (j, d) in c.fhir_destinations.iter().enumerate() {
            let name = names::iot_destination(&c.name, &d.name);
            add("", "ConfigMap", name.clone(), Origin::IotDestination(i, j));
            add("apps", "Deployment", name, Origin::IotDestination(i, j));
        }
    }
    out
}

/// Renders one workspace.
pub fn render_workspace(env: &Environment, ws: &Workspace) -> Result<Vec<Object>, RenderError> {
    render_workspace_with(env, ws, &mut Names::default())
}

/// [`render_workspace`], with the objects' names shared through `names`.
fn render_workspace_with(
    env: &Environment,
    ws: &Workspace,
    names: &mut Names,
) -> Result<Vec<Object>, RenderError> {
    let mut cx = Ctx {
        env,
        ws: &ws.metadata.name,
        namespace: env.namespace_of(&ws.metadata.name),
        out: Vec::new(),
        error: None,
        names: std::mem::take(names),
    };
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
    network_policy(&mut cx);

    let settings = &env.settings;
    for f in &ws.spec.fhir_services {
        let name = names::fhir(&f.name);
        let mut data = BTreeMap::from([
            (
                "ASPNETCORE_URLS".to_string(),
                format!("http://+:{HTTP_PORT}"),
            ),
            ("FhirServer__Version".to_string(), f.fhir_version.clone()),
            (
                "FhirServer__Security__Enabled".to_string(),
                f.auth.is_some().to_string(),
            ),
        ]);
        if let Some(auth) = &f.auth {
            data.insert(
                "FhirServer__Security__Authentication__Authority".into(),
                auth.authority.clone(),
            );
            data.insert(
                "FhirServer__Security__Authentication__Audience".into(),
                auth.audience.clone(),
            );
            data.insert(
                "FhirServer__Security__EnableAadSmartOnFhirProxy".into(),
                auth.smart_proxy_enabled.to_string(),
            );
        }
        if let Some(cors) = &f.cors {
            data.insert("FhirServer__Cors__Origins".into(), cors.origins.join(","));
            data.insert("FhirServer__Cors__Headers".into(), cors.headers.join(","));
            data.insert("FhirServer__Cors__Methods".into(), cors.methods.join(","));
            data.insert(
                "FhirServer__Cors__AllowCredentials".into(),
                cors.allow_credentials.to_string(),
            );
            if let Some(age) = cors.max_age {
                data.insert("FhirServer__Cors__MaxAge".into(), age.to_string());
            }
        }
        exposed_service(
            &mut cx,
            Exposed {
                app: "fhir-server",
                host_kind: "fhir",
                short: &f.name,
                name: &name,
                image: image_ref(f.image.as_ref(), settings.images.fhir.as_ref()),
                replicas: f.replicas.or(settings.defaults.fhir.replicas).unwrap_or(1),
                resources: f
                    .resources
                    .as_ref()
                    .or(settings.defaults.fhir.resources.as_ref()),
                identity: f.identity.as_ref(),
            },
            data,
        );
    }

    for d in &ws.spec.dicom_services {
        let name = names::dicom(&d.name);
        let data = BTreeMap::from([
            (
                "ASPNETCORE_URLS".to_string(),
                format!("http://+:{HTTP_PORT}"),
            ),
            (
                "DicomServer__Features__EnableChangeFeed".to_string(),
                "true".to_string(),
            ),
        ]);
        exposed_service(
            &mut cx,
            Exposed {
                app: "dicom-server",
                host_kind: "dicom",
                short: &d.name,
                name: &name,
                image: image_ref(d.image.as_ref(), settings.images.dicom.as_ref()),
                replicas: d.replicas.or(settings.defaults.dicom.replicas).unwrap_or(1),
                resources: d
                    .resources
                    .as_ref()
                    .or(settings.defaults.dicom.resources.as_ref()),
                identity: d.identity.as_ref(),
            },
            data,
        );
        if let Some(cast) = &d.dicom_cast {
            let cast_name = names::dicom_cast(&d.name);
            let data = BTreeMap::from([
                (
                    "DicomWeb__Endpoint".to_string(),
                    service_url(&name, &cx.namespace),
                ),
                (
                    "Fhir__Endpoint".to_string(),
                    service_url(&names::fhir(&cast.fhir_service), &cx.namespace),
                ),
                (
                    "DicomCastWorker__PollInterval".to_string(),
                    timespan(&cast.poll_interval),
                ),
            ]);
            let hash = config_map(
                &mut cx,
                &config_name(&cast_name),
                "dicom-cast",
                &cast_name,
                "cast",
                data,
            );
            deployment(
                &mut cx,
                Workload {
                    name: cast_name.clone(),
                    app: "dicom-cast",
                    component: "cast",
                    image: image_ref(cast.image.as_ref(), settings.images.dicom_cast.as_ref()),
                    replicas: 1,
                    resources: cast.resources.as_ref().or(settings
                        .defaults
                        .dicom_cast
                        .resources
                        .as_ref()),
                    service_account: None,
                    env_from: Some(config_name(&cast_name)),
                    env: Vec::new(),
                    mount: None,
                    identity: false,
                    config_hash: hash,
                },
            );
        }
    }

    if !ws.spec.iot_connectors.is_empty() {
        // Workspace-wide IoT identity and settings exist only while the
        // workspace has a connector (seed 004).
        let labels = cx.labels("iot-connector", names::IOT_SHARED, "shared");
        let sa = ServiceAccount {
            metadata: cx.meta(names::IOT_SHARED, labels.clone()),
            ..ServiceAccount::default()
        };
        cx.push(&sa, true, names::IOT_SHARED);
        let data = BTreeMap::from([(
            "NormalizedEventHub__Namespace".to_string(),
            format!("{}-iot", cx.namespace),
        )]);
        config_map(
            &mut cx,
            names::IOT_SHARED,
            "iot-connector",
            names::IOT_SHARED,
            "shared",
            data,
        );
    }
    for c in &ws.spec.iot_connectors {
        let name = names::iot(&c.name);
        let mapping = pretty(&c.device_mapping.content);
        let hash = config_map(
            &mut cx,
            &name,
            "iot-connector",
            &name,
            "ingestion",
            BTreeMap::from([("devicecontent.json".to_string(), mapping)]),
        );
        let ingest = &c.ingestion_endpoint_configuration;
        let iot_defaults: &KindDefaults = &settings.defaults.iot_connector;
        deployment(
            &mut cx,
            Workload {
                name: name.clone(),
                app: "iot-connector",
                component: "ingestion",
                image: image_ref(c.image.as_ref(), settings.images.iot_connector.as_ref()),
                replicas: c.replicas.or(iot_defaults.replicas).unwrap_or(1),
                resources: c.resources.as_ref().or(iot_defaults.resources.as_ref()),
                service_account: Some(names::IOT_SHARED.to_string()),
                env_from: Some(names::IOT_SHARED.to_string()),
                env: vec![
                    ("EventHub__Name".into(), ingest.event_hub_name.clone()),
                    (
                        "EventHub__FullyQualifiedNamespace".into(),
                        ingest.fully_qualified_event_hub_namespace.clone(),
                    ),
                    (
                        "EventHub__ConsumerGroup".into(),
                        ingest
                            .consumer_group
                            .clone()
                            .unwrap_or_else(|| "$Default".to_string()),
                    ),
                    (
                        "Normalization__EventHubName".into(),
                        format!("{name}-normalized"),
                    ),
                    (
                        "Template__DeviceMappingPath".into(),
                        "/etc/tenantsync/mapping/devicecontent.json".into(),
                    ),
                ],
                mount: Some((name.clone(), "/etc/tenantsync/mapping")),
                identity: c.identity.is_some(),
                config_hash: hash,
            },
        );
        for dest in &c.fhir_destinations {
            let namespace = cx.namespace.clone();
            let dname = names::iot_destination(&c.name, &dest.name);
            let hash = config_map(
                &mut cx,
                &dname,
                "iot-fhir-destination",
                &dname,
                "destination",
                BTreeMap::from([(
                    "fhirmapping.json".to_string(),
                    pretty(&dest.fhir_mapping.content),
                )]),
            );
            let dest_defaults = &settings.defaults.iot_fhir_destination;
            deployment(
                &mut cx,
                Workload {
                    name: dname.clone(),
                    app: "iot-fhir-destination",
                    component: "destination",
                    image: image_ref(None, settings.images.iot_fhir_destination.as_ref()),
                    replicas: dest_defaults.replicas.unwrap_or(1),
                    resources: dest.resources.as_ref().or(dest_defaults.resources.as_ref()),
                    service_account: Some(names::IOT_SHARED.to_string()),
                    env_from: Some(names::IOT_SHARED.to_string()),
                    env: vec![
                        (
                            "Fhir__Endpoint".into(),
                            service_url(&names::fhir(&dest.fhir_service), &namespace),
                        ),
                        (
                            "Fhir__ResourceIdentityResolutionType".into(),
                            dest.resource_identity_resolution_type.clone(),
                        ),
                        (
                            "Normalization__EventHubName".into(),
                            format!("{name}-normalized"),
                        ),
                        ("Normalization__ConsumerGroup".into(), dname.clone()),
                        (
                            "Template__FhirMappingPath".into(),
                            "/etc/tenantsync/mapping/fhirmapping.json".into(),
                        ),
                    ],
                    mount: Some((dname.clone(), "/etc/tenantsync/mapping")),
                    identity: false,
                    config_hash: hash,
                },
            );
        }
    }

    *names = cx.names;
    if let Some(e) = cx.error {
        return Err(e);
    }
    let mut out = cx.out;
    out.sort_by(|a, b| (kind_rank(&a.kind), &a.name).cmp(&(kind_rank(&b.kind), &b.name)));
    Ok(out)
}

/// A FHIR or DICOM service: a workload exposed through a Service and Ingress.
struct Exposed<'a> {
    app: &'static str,
    /// `fhir` or `dicom`, the second label of the ingress host.
    host_kind: &'static str,
    /// The declared service name.
    short: &'a str,
    /// The rendered object name.
    name: &'a str,
    image: String,
    replicas: i32,
    resources: Option<&'a Resources>,
    identity: Option<&'a model::Identity>,
}

/// ServiceAccount, ConfigMap, Deployment, Service, Ingress and (replicas > 1)
/// PodDisruptionBudget of a FHIR or DICOM service.
fn exposed_service(cx: &mut Ctx<'_>, e: Exposed<'_>, data: BTreeMap<String, String>) {
    let Exposed {
        app,
        host_kind,
        short,
        name,
        image,
        replicas,
        resources,
        identity,
    } = e;
    let labels = cx.labels(app, name, "api");
    let mut sa_meta = cx.meta(name, labels.clone());
    if let Some(id) = identity {
        sa_meta.annotations = Some(BTreeMap::from([(
            WORKLOAD_IDENTITY_CLIENT_ID.to_string(),
            id.client_id.clone(),
        )]));
    }
    cx.push(
        &ServiceAccount {
            metadata: sa_meta,
            ..ServiceAccount::default()
        },
        true,
        name,
    );
    let config_hash = config_map(cx, &config_name(name), app, name, "api", data);
    deployment(
        cx,
        Workload {
            name: name.to_string(),
            app,
            component: "api",
            image,
            replicas,
            resources,
            service_account: Some(name.to_string()),
            env_from: Some(config_name(name)),
            env: Vec::new(),
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

    let ingress_settings = &cx.env.settings.ingress;
    let host = names::host(
        short,
        host_kind,
        cx.ws,
        ingress_settings.domain.as_deref().unwrap_or("local"),
    );
    let ingress = Ingress {
        metadata: cx.meta(name, labels.clone()),
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
                secret_name: ingress_settings.tls_secret_name.clone(),
            }]),
            ..IngressSpec::default()
        }),
        ..Ingress::default()
    };
    cx.push(&ingress, true, name);

    if replicas > 1 {
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

fn network_policy(cx: &mut Ctx<'_>) {
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

/// Adds a ConfigMap; returns the hash of its data, which goes into the pod
/// template so that a content change rolls the Deployment.
fn config_map(
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

fn deployment(cx: &mut Ctx<'_>, w: Workload<'_>) {
    let labels = cx.labels(w.app, &w.name, w.component);
    let selector = selector_labels(w.app, &w.name);
    let mut pod_labels = labels.clone();
    if w.identity {
        pod_labels.insert(WORKLOAD_IDENTITY_USE.to_string(), "true".to_string());
    }
    let probe = |initial: i32, period: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some("/health".into()),
            port: IntOrString::String("http".into()),
            ..HTTPGetAction::default()
        }),
        initial_delay_seconds: Some(initial),
        period_seconds: Some(period),
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
        image: Some(w.image),
        ports: Some(vec![ContainerPort {
            name: Some("http".into()),
            container_port: HTTP_PORT,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        env_from: w.env_from.map(|cm| {
            vec![EnvFromSource {
                config_map_ref: Some(ConfigMapEnvSource {
                    name: cm,
                    ..ConfigMapEnvSource::default()
                }),
                ..EnvFromSource::default()
            }]
        }),
        env: (!w.env.is_empty()).then(|| {
            w.env
                .into_iter()
                .map(|(name, value)| EnvVar {
                    name,
                    value: Some(value),
                    ..EnvVar::default()
                })
                .collect()
        }),
        resources: w.resources.map(resource_requirements),
        readiness_probe: Some(probe(5, 10)),
        liveness_probe: Some(probe(30, 20)),
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
    let deploy = Deployment {
        metadata: cx.meta(&w.name, labels),
        spec: Some(DeploymentSpec {
            replicas: Some(w.replicas),
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
                    annotations: Some(BTreeMap::from([(
                        CONFIG_HASH_ANNOTATION.to_string(),
                        w.config_hash,
                    )])),
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

fn selector_labels(app: &str, instance: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), app.to_string()),
        (
            "app.kubernetes.io/instance".to_string(),
            instance.to_string(),
        ),
    ])
}

fn config_name(name: &str) -> String {
    format!("{name}-config")
}

fn service_url(service: &str, namespace: &str) -> String {
    format!("http://{service}.{namespace}.svc.cluster.local")
}

fn image_ref(own: Option<&Image>, default: Option<&Image>) -> String {
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

fn resource_requirements(r: &Resources) -> ResourceRequirements {
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

/// `30s` / `5m` / `1h` / `250ms` as a .NET TimeSpan (`00:00:30`), which the
/// DICOM-cast worker reads (seed 003: DicomCastWorker.PollInterval).
fn timespan(duration: &str) -> String {
    let digits: String = duration.chars().take_while(char::is_ascii_digit).collect();
    let unit = &duration[digits.len()..];
    let n: u64 = digits.parse().unwrap_or(0);
    let (secs, millis) = match unit {
        "ms" => (n / 1000, n % 1000),
        "m" => (n.saturating_mul(60), 0),
        "h" => (n.saturating_mul(3600), 0),
        _ => (n, 0),
    };
    let base = format!(
        "{:02}:{:02}:{:02}",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60
    );
    if millis > 0 {
        format!("{base}.{millis:03}")
    } else {
        base
    }
}

fn pretty(value: &serde_json::Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

/// Objects as one multi-document YAML stream.
pub fn to_yaml(objects: &[Object]) -> String {
    let mut out = String::new();
    for o in objects {
        push_yaml(&mut out, o);
    }
    out
}

/// Appends one object as a YAML document (`---` and its body).
pub fn push_yaml(out: &mut String, object: &Object) {
    out.push_str("---\n");
    crate::yaml_emit::write(out, &object.value());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{
        DicomCast, DicomService, FhirService, IngestionEndpoint, IotConnector, Mapping, Metadata,
        Settings, WorkspaceSpec,
    };
    use proptest::prelude::*;

    fn fhir(name: &str, replicas: i32) -> FhirService {
        FhirService {
            name: name.into(),
            fhir_version: "R4".into(),
            image: None,
            replicas: Some(replicas),
            resources: None,
            auth: None,
            cors: None,
            identity: None,
        }
    }

    fn arb_workspace() -> impl Strategy<Value = Workspace> {
        ("[a-z]{1,8}", 1usize..4, 0usize..3, 0usize..3, 1i32..4).prop_map(|(name, nf, nd, ni, replicas)| {
            let fhir_services: Vec<_> = (0..nf).map(|i| fhir(&format!("f{i}"), replicas)).collect();
            let dicom_services = (0..nd)
                .map(|i| DicomService {
                    name: format!("d{i}"),
                    image: None,
                    replicas: None,
                    resources: None,
                    identity: None,
                    dicom_cast: (i % 2 == 0).then(|| DicomCast {
                        fhir_service: "f0".into(),
                        poll_interval: "30s".into(),
                        image: None,
                        resources: None,
                    }),
                })
                .collect();
            let iot_connectors = (0..ni)
                .map(|i| IotConnector {
                    name: format!("c{i}"),
                    image: None,
                    replicas: None,
                    resources: None,
                    identity: None,
                    ingestion_endpoint_configuration: IngestionEndpoint {
                        event_hub_name: "hub".into(),
                        consumer_group: None,
                        fully_qualified_event_hub_namespace: "ns.servicebus.windows.net".into(),
                    },
                    device_mapping: Mapping { content: serde_json::json!({"templateType": "CollectionContent", "template": [i]}) },
                    fhir_destinations: Vec::new(),
                })
                .collect();
            Workspace {
                api_version: model::API_VERSION.into(),
                kind: "Workspace".into(),
                metadata: Metadata { name, ..Metadata::default() },
                spec: WorkspaceSpec { fhir_services, dicom_services, iot_connectors },
            }
        })
    }

    fn env_of(workspaces: Vec<Workspace>) -> Environment {
        Environment {
            name: "dev".into(),
            chain: vec!["dev".into()],
            settings: Settings::default(),
            workspaces,
            resources: Vec::new(),
        }
    }

    proptest! {
        /// Same input, byte-identical output; the order workspaces are
        /// declared in does not matter either.
        #[test]
        fn rendering_is_deterministic(mut wss in prop::collection::vec(arb_workspace(), 1..5)) {
            wss.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
            wss.dedup_by(|a, b| a.metadata.name == b.metadata.name);
            let env = env_of(wss.clone());
            let first = to_yaml(&render(&env).unwrap());
            prop_assert_eq!(&first, &to_yaml(&render(&env.clone()).unwrap()));
            wss.reverse();
            prop_assert_eq!(&first, &to_yaml(&render(&env_of(wss)).unwrap()));
        }

        /// `identities` (what validation checks for collisions) lists
        /// exactly the objects rendering makes.
        #[test]
        fn identities_are_the_rendered_objects(mut ws in arb_workspace(), destinations in 0usize..3) {
            for c in &mut ws.spec.iot_connectors {
                for j in 0..destinations {
                    c.fhir_destinations.push(crate::model::FhirDestination {
                        name: format!("d{j}"),
                        resource_identity_resolution_type: "Create".into(),
                        fhir_service: "f0".into(),
                        fhir_mapping: Mapping { content: serde_json::json!({}) },
                        resources: None,
                    });
                }
            }
            let env = env_of(vec![ws.clone()]);
            let mut rendered: Vec<(String, String, Option<String>, String)> = render_workspace(&env, &ws)
                .unwrap()
                .iter()
                .map(|o| {
                    let group = o.api_version.split_once('/').map_or("", |(g, _)| g).to_string();
                    (group, o.kind.to_string(), o.namespace.as_deref().map(str::to_string), o.name.to_string())
                })
                .collect();
            let mut listed: Vec<(String, String, Option<String>, String)> = identities(&env, &ws)
                .into_iter()
                .map(|(id, _)| (id.group.to_string(), id.kind.to_string(), id.namespace, id.name))
                .collect();
            rendered.sort();
            listed.sort();
            prop_assert_eq!(rendered, listed);
        }
    }

    /// The parallel, batched rendering for output gives what `render` does,
    /// in the same order, across many batches.
    #[test]
    fn rendering_in_parallel_batches_matches_rendering_at_once() {
        // Out of name order on purpose: both sort.
        let workspaces: Vec<Workspace> = (0..CHUNK * 5 + 3)
            .rev()
            .map(|i| Workspace {
                api_version: model::API_VERSION.into(),
                kind: "Workspace".into(),
                metadata: Metadata {
                    name: format!("ws-{i:03}"),
                    ..Metadata::default()
                },
                spec: WorkspaceSpec {
                    fhir_services: vec![fhir("api", 1 + (i % 3) as i32)],
                    ..WorkspaceSpec::default()
                },
            })
            .collect();
        let env = env_of(workspaces);
        let mut batched = String::new();
        render_map_each(&env, to_yaml, |text| {
            batched.push_str(&text);
            Ok::<_, RenderError>(())
        })
        .unwrap();
        assert_eq!(batched, to_yaml(&render(&env).unwrap()));
        // Workspace by workspace (the daemon's way) gives the same too.
        let (partial, failed) = render_partial(&env);
        assert!(failed.is_empty());
        assert_eq!(batched, to_yaml(&partial));
        for ws in ["ws-000", "ws-162"] {
            assert!(batched.contains(&format!("tenantsync.io/workspace: {ws}\n")));
        }
    }

    #[test]
    fn every_object_carries_the_tracking_labels() {
        let env = env_of(vec![Workspace {
            api_version: model::API_VERSION.into(),
            kind: "Workspace".into(),
            metadata: Metadata {
                name: "acme".into(),
                ..Metadata::default()
            },
            spec: WorkspaceSpec {
                fhir_services: vec![fhir("api", 2)],
                ..WorkspaceSpec::default()
            },
        }]);
        let objects = render(&env).unwrap();
        let kinds: Vec<_> = objects.iter().map(|o| &*o.kind).collect();
        assert_eq!(
            kinds,
            [
                "Namespace",
                "ServiceAccount",
                "ConfigMap",
                "Service",
                "Deployment",
                "PodDisruptionBudget",
                "Ingress",
                "NetworkPolicy"
            ]
        );
        for o in &objects {
            let labels = &o.value()["metadata"]["labels"];
            assert_eq!(labels[MANAGED_BY], "tenantsync", "{}", o.id());
            assert_eq!(labels[ENVIRONMENT_LABEL], "dev", "{}", o.id());
            assert_eq!(labels[WORKSPACE_LABEL], "acme", "{}", o.id());
            assert_eq!(o.value()["apiVersion"], &*o.api_version);
        }
        let deploy = objects.iter().find(|o| &*o.kind == "Deployment").unwrap();
        assert_eq!(deploy.namespace.as_deref(), Some("acme-dev"));
        assert_eq!(
            deploy.value()["spec"]["strategy"]["rollingUpdate"]["maxSurge"],
            1
        );
        assert_eq!(
            deploy.value()["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"],
            0
        );
        let container = &deploy.value()["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/health");
        let ingress = objects.iter().find(|o| &*o.kind == "Ingress").unwrap();
        assert_eq!(
            ingress.value()["spec"]["rules"][0]["host"],
            "api.fhir.acme.local"
        );
    }

    #[test]
    fn config_change_rolls_the_deployment_and_pdb_needs_two_replicas() {
        let ws = |version: &str, replicas: i32| {
            let mut f = fhir("api", replicas);
            f.fhir_version = version.into();
            env_of(vec![Workspace {
                api_version: model::API_VERSION.into(),
                kind: "Workspace".into(),
                metadata: Metadata {
                    name: "acme".into(),
                    ..Metadata::default()
                },
                spec: WorkspaceSpec {
                    fhir_services: vec![f],
                    ..WorkspaceSpec::default()
                },
            }])
        };
        let hash = |env: &Environment| {
            let objects = render(env).unwrap();
            let d = objects
                .iter()
                .find(|o| &*o.kind == "Deployment")
                .unwrap()
                .clone();
            d.value()["spec"]["template"]["metadata"]["annotations"][CONFIG_HASH_ANNOTATION].clone()
        };
        assert_ne!(hash(&ws("R4", 1)), hash(&ws("R5", 1)));
        assert_eq!(hash(&ws("R4", 1)), hash(&ws("R4", 3)));
        assert!(
            !render(&ws("R4", 1))
                .unwrap()
                .iter()
                .any(|o| &*o.kind == "PodDisruptionBudget")
        );
    }

    #[test]
    fn iot_shared_objects_exist_only_with_a_connector() {
        let mut env = env_of(vec![Workspace {
            api_version: model::API_VERSION.into(),
            kind: "Workspace".into(),
            metadata: Metadata {
                name: "acme".into(),
                ..Metadata::default()
            },
            spec: WorkspaceSpec::default(),
        }]);
        let shared = |env: &Environment| {
            render(env)
                .unwrap()
                .iter()
                .filter(|o| &*o.name == names::IOT_SHARED)
                .count()
        };
        assert_eq!(shared(&env), 0);
        env.workspaces[0].spec.iot_connectors = vec![IotConnector {
            name: "c".into(),
            image: None,
            replicas: None,
            resources: None,
            identity: None,
            ingestion_endpoint_configuration: IngestionEndpoint {
                event_hub_name: "hub".into(),
                consumer_group: None,
                fully_qualified_event_hub_namespace: "ns.servicebus.windows.net".into(),
            },
            device_mapping: Mapping {
                content: serde_json::json!({}),
            },
            fhir_destinations: Vec::new(),
        }];
        assert_eq!(shared(&env), 2);
    }

    #[test]
    fn timespans() {
        assert_eq!(timespan("30s"), "00:00:30");
        assert_eq!(timespan("5m"), "00:05:00");
        assert_eq!(timespan("2h"), "02:00:00");
        assert_eq!(timespan("1500ms"), "00:00:01.500");
    }

    #[test]
    fn label_limits() {
        assert!(names::check_label(&"a".repeat(63)).is_ok());
        assert!(
            names::check_label(&"a".repeat(64))
                .unwrap_err()
                .contains("63")
        );
        assert!(names::check_label("Upper").is_err());
    }
}
