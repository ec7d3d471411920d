//! Rendering: a resolved environment to the Kubernetes objects it should have.
//!
//! A pure, deterministic function: the same environment always gives the same
//! objects in the same order. Objects are built with k8s-openapi types and
//! carried as JSON values with their identity, so later stages (plan, apply,
//! prune) need not know each type.
//!
//! One file per service family (`fhir`, `dicom`, `iot`) and one for
//! the workspace-wide objects (`workspace`), over the builders they share
//! (`workload`). Imports: `object` and `declare` (the model and the names
//! it gives objects), nothing later in the pipeline.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use crate::declare::model::{Environment, Workspace};
use crate::object::{
    ENVIRONMENT_LABEL, MANAGED_BY, MANAGER, Names, Object, PACKING_SAMPLE_BYTES, Packing, kind_rank,
};

mod context;
mod dicom;
mod fhir;
mod iot;
mod keyvault;
mod workload;
mod workspace;

pub use workload::{CONFIG_HASH_ANNOTATION, WORKLOAD_IDENTITY_CLIENT_ID, WORKLOAD_IDENTITY_USE};

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
    // Held for as long as a plan, a sync or the daemon runs: packed
    // against the first bodies rendered, once there are enough of them
    // for a dictionary, then a workspace at a time.
    let mut packing = None;
    let mut sampled = text_len(&all);
    for ws in sorted_workspaces(env) {
        match render_workspace_with(env, ws, &mut names) {
            Ok(objects) => match &packing {
                Some(Some(packing)) => all.extend(objects.into_iter().map(|o| o.pack(packing))),
                Some(None) => all.extend(objects),
                None => {
                    sampled += text_len(&objects);
                    all.extend(objects);
                    if sampled >= PACKING_SAMPLE_BYTES {
                        packing = Some(pack_all(&mut all));
                    }
                }
            },
            Err(e) => {
                failed.insert(ws.metadata.name.clone(), e);
            }
        }
    }
    if packing.is_none() {
        pack_all(&mut all);
    }
    // Held for as long as a plan or a sync runs: not with up to twice the
    // room its growth left.
    all.shrink_to_fit();
    (all, failed)
}

fn text_len(objects: &[Object]) -> usize {
    objects.iter().filter_map(Object::text).map(str::len).sum()
}

/// Packs `all` against a dictionary of their bodies ([`Packing`]), and
/// returns it; leaves them text when there is none.
fn pack_all(all: &mut Vec<Object>) -> Option<Arc<Packing>> {
    let packing = Packing::of(all.iter().filter_map(Object::text))?;
    let objects = std::mem::take(all);
    *all = objects.into_iter().map(|o| o.pack(&packing)).collect();
    Some(packing)
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
    let mut cx = context::Ctx {
        env,
        ws: &ws.metadata.name,
        namespace: env.namespace_of(&ws.metadata.name),
        out: Vec::new(),
        error: None,
        names: std::mem::take(names),
        key_vault: crate::declare::names::reads_key_vault(env, ws),
    };
    workspace::namespace(&mut cx, ws);
    workspace::network_policy(&mut cx);
    keyvault::render(&mut cx, ws);
    for f in &ws.spec.fhir_services {
        fhir::render(&mut cx, f);
    }
    for d in &ws.spec.dicom_services {
        dicom::render(&mut cx, d);
    }
    iot::render(&mut cx, &ws.spec.iot_connectors);
    *names = cx.names;
    if let Some(e) = cx.error {
        return Err(e);
    }
    let mut out = cx.out;
    out.sort_by(|a, b| (kind_rank(&a.kind), &a.name).cmp(&(kind_rank(&b.kind), &b.name)));
    Ok(out)
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
    crate::object::yaml_emit::write(out, &object.value());
}

#[cfg(test)]
mod tests {
    use super::workload::timespan;
    use super::*;
    use crate::declare::model;
    use crate::declare::model::{
        DicomCast, DicomService, FhirService, IngestionEndpoint, IotConnector, Mapping, Metadata,
        Settings, WorkspaceSpec,
    };
    use crate::declare::names::{self, identities};
    use crate::object::WORKSPACE_LABEL;
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
            key_vault: None,
            probes: None,
            autoscaling: None,
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
                    key_vault: None,
                    probes: None,
                    autoscaling: None,
                    dicom_cast: (i % 2 == 0).then(|| DicomCast {
                        fhir_service: "f0".into(),
                        poll_interval: "30s".into(),
                        image: None,
                        resources: None,
                        table_endpoint: "https://castsstate.table.core.windows.net/".into(),
                        identity: None,
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
                    c.fhir_destinations.push(crate::declare::model::FhirDestination {
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

    /// Regression (issue 17): `100h` rendered as `100:00:00`, which .NET's
    /// TimeSpan does not parse; whole days go before a dot.
    #[test]
    fn timespan_of_a_day_or_more_puts_the_days_before_a_dot() {
        assert_eq!(timespan("100h"), "4.04:00:00");
        assert_eq!(timespan("24h"), "1.00:00:00");
        assert_eq!(timespan("1440m"), "1.00:00:00");
        assert_eq!(timespan("86401s"), "1.00:00:01");
        assert_eq!(timespan("23h"), "23:00:00");
        assert_eq!(timespan("999999999h"), "41666666.15:00:00");
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

    fn find(objects: &[Object], kind: &str, name: &str) -> serde_json::Value {
        objects
            .iter()
            .find(|o| &*o.kind == kind && &*o.name == name)
            .unwrap_or_else(|| panic!("no {kind}/{name}"))
            .value()
    }

    /// Seeds 003 and 004: each IoT connector and each DICOM-cast runs as a
    /// ServiceAccount of its own carrying its identity's client id.
    #[test]
    fn each_connector_and_cast_runs_as_its_own_identity() {
        let connectors: Vec<serde_json::Value> = ["a", "b"]
            .iter()
            .enumerate()
            .map(|(i, n)| serde_json::json!({
                "name": n,
                "identity": {"clientId": format!("6d3cae74-1b2f-4a3c-9da5-4e7a9f1b3d3{i}")},
                "ingestionEndpointConfiguration": {"eventHubName": "hub", "fullyQualifiedEventHubNamespace": "acmeingest.servicebus.windows.net"},
                "deviceMapping": {"content": {"templateType": "CollectionContent", "template": []}}
            }))
            .collect();
        let ws: Workspace = serde_json::from_value(serde_json::json!({
            "apiVersion": model::API_VERSION, "kind": "Workspace",
            "metadata": {"name": "acme"},
            "spec": {
                "fhirServices": [{"name": "main"}],
                "dicomServices": [{"name": "pacs", "dicomCast": {
                    "fhirService": "main",
                    "tableEndpoint": "https://acmecast.table.core.windows.net/",
                    "identity": {"clientId": "5c2b9d63-0a1e-4f2b-8c94-3d6f8e0a2c21"}
                }}],
                "iotConnectors": connectors
            }
        }))
        .unwrap();
        let env = env_of(vec![ws.clone()]);
        let objects = render_workspace(&env, &ws).unwrap();
        for (i, c) in ["iot-a", "iot-b"].iter().enumerate() {
            let sa = find(&objects, "ServiceAccount", c);
            assert_eq!(
                sa["metadata"]["annotations"][WORKLOAD_IDENTITY_CLIENT_ID],
                format!("6d3cae74-1b2f-4a3c-9da5-4e7a9f1b3d3{i}")
            );
            let pod = &find(&objects, "Deployment", c)["spec"]["template"];
            assert_eq!(pod["spec"]["serviceAccountName"], *c);
            assert_eq!(pod["metadata"]["labels"][WORKLOAD_IDENTITY_USE], "true");
        }
        let sa = find(&objects, "ServiceAccount", "dicomcast-pacs");
        assert_eq!(
            sa["metadata"]["annotations"][WORKLOAD_IDENTITY_CLIENT_ID],
            "5c2b9d63-0a1e-4f2b-8c94-3d6f8e0a2c21"
        );
        let cast = &find(&objects, "Deployment", "dicomcast-pacs")["spec"]["template"];
        assert_eq!(cast["spec"]["serviceAccountName"], "dicomcast-pacs");
        assert_eq!(cast["metadata"]["labels"][WORKLOAD_IDENTITY_USE], "true");
        let config = find(&objects, "ConfigMap", "dicomcast-pacs-config");
        assert_eq!(
            config["data"]["TableStore__EndpointUri"],
            "https://acmecast.table.core.windows.net/"
        );
        assert_eq!(
            config["data"]["TableStore__ManagedIdentityClientId"],
            "5c2b9d63-0a1e-4f2b-8c94-3d6f8e0a2c21"
        );
        // What validation checks for collisions lists the same objects.
        let mut rendered: Vec<String> = objects
            .iter()
            .map(|o| format!("{}/{}", o.kind, o.name))
            .collect();
        let mut listed: Vec<String> = crate::declare::names::identities(&env, &ws)
            .into_iter()
            .map(|(id, _)| format!("{}/{}", id.kind, id.name))
            .collect();
        rendered.sort();
        listed.sort();
        assert_eq!(rendered, listed);
    }

    /// `auth` is required by default where it matters most.
    #[test]
    fn auth_is_required_by_default_in_staging_prod_and_dr_only() {
        let mut env = env_of(Vec::new());
        for (name, required) in [
            ("dev", false),
            ("qa", false),
            ("staging", true),
            ("prod", true),
            ("dr", true),
        ] {
            env.name = name.into();
            assert_eq!(env.auth_required(), required, "{name}");
        }
        env.settings.auth.required = Some(false);
        assert!(!env.auth_required());
        env.name = "dev".into();
        env.settings.auth.required = Some(true);
        assert!(env.auth_required());
    }

    fn platform_workspace() -> Workspace {
        serde_json::from_value(serde_json::json!({
            "apiVersion": model::API_VERSION, "kind": "Workspace",
            "metadata": {"name": "acme"},
            "spec": {
                "fhirServices": [
                    {"name": "scaled", "autoscaling": {"minReplicas": 3, "maxReplicas": 9, "targetCPUUtilizationPercentage": 65}},
                    {"name": "slow", "replicas": 2, "probes": {"liveness": {"initialDelaySeconds": 120}}}
                ],
                "dicomServices": [{"name": "pacs", "dicomCast": {
                    "fhirService": "slow",
                    "tableEndpoint": "https://acmecast.table.core.windows.net/",
                    "identity": {"clientId": "5c2b9d63-0a1e-4f2b-8c94-3d6f8e0a2c21"}
                }}]
            }
        }))
        .unwrap()
    }

    fn probe(deploy: &serde_json::Value, which: &str) -> (i64, i64) {
        let p = &deploy["spec"]["template"]["spec"]["containers"][0][which];
        assert_eq!(p["httpGet"]["path"], "/health");
        (
            p["initialDelaySeconds"].as_i64().unwrap(),
            p["periodSeconds"].as_i64().unwrap(),
        )
    }

    /// Seed 002: probes 30/10 and 60/20 unless the environment or the
    /// service says otherwise; an autoscaled service has an HPA and no
    /// replicas on its Deployment; every pod is scraped by Prometheus.
    #[test]
    fn probes_autoscaling_and_scrape_annotations_follow_seed_002() {
        let ws = platform_workspace();
        let mut env = env_of(vec![ws.clone()]);
        env.settings.probes.readiness.period_seconds = Some(5);
        let objects = render_workspace(&env, &ws).unwrap();
        let scaled = find(&objects, "Deployment", "fhir-scaled");
        assert_eq!(probe(&scaled, "readinessProbe"), (30, 5));
        assert_eq!(probe(&scaled, "livenessProbe"), (60, 20));
        let slow = find(&objects, "Deployment", "fhir-slow");
        assert_eq!(probe(&slow, "livenessProbe"), (120, 20));
        let cast = find(&objects, "Deployment", "dicomcast-pacs");
        assert_eq!(probe(&cast, "readinessProbe"), (30, 5));
        // The autoscaler owns the replicas.
        assert!(scaled["spec"].get("replicas").is_none(), "{scaled}");
        assert_eq!(slow["spec"]["replicas"], 2);
        let hpa = find(&objects, "HorizontalPodAutoscaler", "fhir-scaled");
        assert_eq!(hpa["apiVersion"], "autoscaling/v2");
        assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], "fhir-scaled");
        assert_eq!(hpa["spec"]["scaleTargetRef"]["kind"], "Deployment");
        assert_eq!(hpa["spec"]["minReplicas"], 3);
        assert_eq!(hpa["spec"]["maxReplicas"], 9);
        assert_eq!(
            hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"],
            65
        );
        // Its minimum above one keeps a PodDisruptionBudget.
        find(&objects, "PodDisruptionBudget", "fhir-scaled");
        for d in objects.iter().filter(|o| &*o.kind == "Deployment") {
            let annotations = &d.value()["spec"]["template"]["metadata"]["annotations"];
            assert_eq!(annotations["prometheus.io/scrape"], "true", "{}", d.id());
            assert_eq!(annotations["prometheus.io/port"], "8080", "{}", d.id());
            assert_eq!(annotations["prometheus.io/path"], "/metrics", "{}", d.id());
        }
        let mut rendered: Vec<String> = objects
            .iter()
            .map(|o| format!("{}/{}", o.kind, o.name))
            .collect();
        let mut listed: Vec<String> = crate::declare::names::identities(&env, &ws)
            .into_iter()
            .map(|(id, _)| format!("{}/{}", id.kind, id.name))
            .collect();
        rendered.sort();
        listed.sort();
        assert_eq!(rendered, listed);
    }

    /// A standby keeps every object but runs its standby replicas, with no
    /// autoscaler and no disruption budget; promoting it is one setting.
    #[test]
    fn a_standby_environment_runs_its_standby_replicas_until_promoted() {
        let ws = platform_workspace();
        let mut env = env_of(vec![ws.clone()]);
        env.settings.standby = Some(model::Standby {
            enabled: true,
            replicas: 0,
        });
        let standby = render_workspace(&env, &ws).unwrap();
        for d in standby.iter().filter(|o| &*o.kind == "Deployment") {
            assert_eq!(d.value()["spec"]["replicas"], 0, "{}", d.id());
        }
        assert!(
            standby
                .iter()
                .all(|o| !matches!(&*o.kind, "HorizontalPodAutoscaler" | "PodDisruptionBudget"))
        );
        for kind in ["Ingress", "Service", "ConfigMap", "ServiceAccount"] {
            assert!(standby.iter().any(|o| &*o.kind == kind), "{kind}");
        }
        env.settings.standby = Some(model::Standby {
            enabled: false,
            replicas: 0,
        });
        let promoted = render_workspace(&env, &ws).unwrap();
        assert_eq!(
            find(&promoted, "Deployment", "fhir-slow")["spec"]["replicas"],
            2
        );
        find(&promoted, "HorizontalPodAutoscaler", "fhir-scaled");
    }
}
