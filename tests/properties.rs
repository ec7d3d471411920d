//! Property tests of the core against independent references: the overlay
//! merge against RFC 7386 (with README's named-list rule), and rendering
//! against README's promises on widely generated workspaces.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use proptest::test_runner::Config;
use serde_json::{Map, Value as J, json};
use tenantsync::declare::overlay::{self, PATCH_KEY};
use tenantsync::declare::yaml::{self, FileId, Limits, Node, Pos, Value};

// ---------------------------------------------------------------- overlay

/// README, "Overlays": RFC 7386 (maps merge deeply, `null` deletes a key,
/// anything else replaces), except that a list of named items (every item a
/// mapping with a string `name`) over another merges by name: new names are
/// appended, `{name: x, $patch: delete}` removes `x`. Written over
/// `serde_json::Value` from the RFC's pseudo-code, independently of
/// `overlay`. Returns the merged value and the number of errors (a delete of
/// a name the base lacks, a `$patch` other than `delete`).
fn reference(target: &J, patch: &J, errors: &mut usize) -> J {
    match patch {
        J::Object(entries) => {
            let mut out = match target {
                J::Object(t) => t.clone(),
                _ => Map::new(),
            };
            for (key, value) in entries {
                if value.is_null() {
                    out.remove(key);
                } else {
                    let merged = reference(out.get(key).unwrap_or(&J::Null), value, errors);
                    out.insert(key.clone(), merged);
                }
            }
            J::Object(out)
        }
        J::Array(items) if named(items) && !items.is_empty() => {
            let mut out = match target {
                J::Array(t) if named(t) => t.clone(),
                _ => Vec::new(),
            };
            for item in items {
                let name = &item["name"];
                let at = out.iter().position(|o| o["name"] == *name);
                match item.get(PATCH_KEY) {
                    Some(marker) if marker == "delete" => match at {
                        Some(i) => {
                            out.remove(i);
                        }
                        None => *errors += 1,
                    },
                    Some(_) => *errors += 1,
                    None => match at {
                        Some(i) => out[i] = reference(&out[i], item, errors),
                        None => out.push(reference(&J::Null, item, errors)),
                    },
                }
            }
            J::Array(out)
        }
        other => other.clone(),
    }
}

fn named(items: &[J]) -> bool {
    items.iter().all(|i| i["name"].is_string())
}

/// Values, with keys and names from small pools so that base and patch
/// meet: nulls, scalars, maps, named lists (with `$patch` markers, now and
/// then a wrong one), plain lists.
fn tree() -> impl Strategy<Value = J> {
    let leaf = prop_oneof![
        2 => Just(J::Null),
        1 => any::<bool>().prop_map(J::from),
        2 => (-3i64..4).prop_map(J::from),
        2 => prop::sample::select(vec!["x", "y", "", "no", "1"]).prop_map(J::from),
    ];
    leaf.prop_recursive(4, 48, 4, |inner| {
        let key = prop::sample::select(vec!["a", "b", "c", "name", "$patch"]);
        let name = prop::sample::select(vec!["p", "q", "r"]);
        let marker = prop_oneof![
            6 => Just(None),
            3 => Just(Some(J::from("delete"))),
            1 => Just(Some(J::from("keep"))),
        ];
        prop_oneof![
            3 => prop::collection::btree_map(key, inner.clone(), 0..4)
                .prop_map(|m| J::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect())),
            3 => prop::collection::vec(
                (name, prop::collection::btree_map(
                    prop::sample::select(vec!["a", "b"]), inner.clone(), 0..3), marker),
                0..4,
            )
            .prop_map(|items| {
                J::Array(
                    items
                        .into_iter()
                        .map(|(name, fields, marker)| {
                            let mut item: Map<String, J> =
                                fields.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
                            item.insert("name".into(), J::from(name));
                            if let Some(m) = marker {
                                item.insert(PATCH_KEY.into(), m);
                            }
                            J::Object(item)
                        })
                        .collect(),
                )
            }),
            1 => prop::collection::vec(inner, 0..3).prop_map(J::Array),
        ]
    })
}

/// Drops the later items of a name from every named list: validation
/// refuses two items of one name in a declaration (a base), and with them
/// a `$patch: delete` would remove one at a time.
fn unique_names(value: &mut J) {
    match value {
        J::Object(m) => m.values_mut().for_each(unique_names),
        J::Array(items) => {
            if named(items) {
                let mut seen = BTreeSet::new();
                items.retain(|i| seen.insert(i["name"].to_string()));
            }
            items.iter_mut().for_each(unique_names);
        }
        _ => {}
    }
}

/// Parses JSON text (which is YAML) into a positioned tree of file `file`.
fn parse(file: u32, value: &J) -> Node {
    let text = serde_json::to_string(&json!({ "root": value })).expect("JSON");
    yaml::parse(FileId(file), &text, Limits::default()).expect("JSON is YAML")
}

/// Every node's position, with its value.
fn positions(node: &Node, out: &mut BTreeMap<Pos, J>) {
    out.insert(node.pos, node.to_json());
    match &node.value {
        Value::Seq(items) => items.iter().for_each(|i| positions(i, out)),
        Value::Map(entries) => entries.iter().for_each(|(_, v)| positions(v, out)),
        _ => {}
    }
}

/// Every node of `merged` points at a node of base or patch that wrote it:
/// a scalar at one holding the same value, a collection at a collection.
fn check_positions(merged: &Node, sources: &BTreeMap<Pos, J>, at: &str) -> Result<(), String> {
    let source = sources
        .get(&merged.pos)
        .ok_or_else(|| format!("{at}: position {:?} is in neither file", merged.pos))?;
    match &merged.value {
        Value::Seq(items) => {
            if !source.is_array() {
                return Err(format!("{at}: a list points at {source}"));
            }
            for (i, item) in items.iter().enumerate() {
                check_positions(item, sources, &format!("{at}/{i}"))?;
            }
        }
        Value::Map(entries) => {
            if !source.is_object() {
                return Err(format!("{at}: a map points at {source}"));
            }
            for (k, v) in entries {
                check_positions(v, sources, &format!("{at}/{}", k.name))?;
            }
        }
        _ => {
            if *source != merged.to_json() {
                return Err(format!(
                    "{at}: {} points at a node holding {source}",
                    merged.to_json()
                ));
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(Config { cases: 512, failure_persistence: None, ..Config::default() })]

    /// The merge gives what RFC 7386 (and the named-list rule) gives, with
    /// as many errors; merging the same patch again changes nothing; and
    /// every merged value keeps the position of the file that wrote it.
    #[test]
    fn overlay_merges_as_rfc_7386_is_idempotent_and_keeps_positions(mut base in tree(), patch in tree()) {
        unique_names(&mut base);
        let mut merged = parse(0, &base);
        let patch_node = parse(1, &patch);
        let mut errors = Vec::new();
        overlay::merge(&mut merged, &patch_node, "", &mut errors);
        let mut expected_errors = 0;
        let expected = reference(&json!({ "root": base }), &json!({ "root": patch }), &mut expected_errors);
        prop_assert_eq!(merged.to_json(), expected);
        prop_assert_eq!(errors.len(), expected_errors, "{:?}", errors);

        // Idempotent: a patch naming each item once (one deleting and
        // re-adding an item moves it to the end each time).
        let mut once = patch.clone();
        unique_names(&mut once);
        let once = parse(1, &once);
        let mut first = parse(0, &base);
        overlay::merge(&mut first, &once, "", &mut Vec::new());
        let mut again = first.clone();
        overlay::merge(&mut again, &once, "", &mut Vec::new());
        prop_assert_eq!(again.to_json(), first.to_json(), "not idempotent");

        let mut sources = BTreeMap::new();
        positions(&parse(0, &base), &mut sources);
        positions(&patch_node, &mut sources);
        if let Err(e) = check_positions(&merged, &sources, "") {
            prop_assert!(false, "{}", e);
        }
    }
}

/// The reference itself, on README's examples.
#[test]
fn the_reference_merge_follows_readme_and_rfc_7386() {
    let mut errors = 0;
    // RFC 7386's own example.
    let target = json!({"title": "Goodbye!", "author": {"givenName": "John", "familyName": "Doe"},
        "tags": ["example", "sample"], "content": "This will be unchanged"});
    let patch = json!({"title": "Hello!", "phoneNumber": "+01-123-456-7890",
        "author": {"familyName": null}, "tags": ["example"]});
    assert_eq!(
        reference(&target, &patch, &mut errors),
        json!({"title": "Hello!", "author": {"givenName": "John"}, "tags": ["example"],
            "content": "This will be unchanged", "phoneNumber": "+01-123-456-7890"})
    );
    // Named lists merge by name; `$patch: delete` removes.
    let base = json!({"s": [{"name": "a", "r": 1}, {"name": "b", "r": 1}]});
    let patch =
        json!({"s": [{"name": "b", "r": 3}, {"name": "a", "$patch": "delete"}, {"name": "c"}]});
    assert_eq!(
        reference(&base, &patch, &mut errors),
        json!({"s": [{"name": "b", "r": 3}, {"name": "c"}]})
    );
    assert_eq!(errors, 0);
}

// ----------------------------------------------------------------- render

use tenantsync::declare::model::{
    self, Auth, Cors, DicomCast, DicomService, Environment, FhirDestination, FhirService, Identity,
    Image, IngestionEndpoint, IotConnector, Mapping, Metadata, Settings, Workspace, WorkspaceSpec,
};
use tenantsync::render;

fn image() -> impl Strategy<Value = Option<Image>> {
    prop_oneof![
        2 => Just(None),
        1 => (
            prop::option::of(prop::sample::select(vec!["registry.example/own", "mirror.example/fhir"])),
            prop::option::of(prop::sample::select(vec!["1.0.0", "2.3.4"])),
        )
            .prop_map(|(repository, tag)| Some(Image {
                repository: repository.map(String::from),
                tag: tag.map(String::from),
            })),
    ]
}

fn replicas() -> impl Strategy<Value = Option<i32>> {
    prop_oneof![Just(None), (1i32..4).prop_map(Some)]
}

fn identity() -> impl Strategy<Value = Option<Identity>> {
    prop::option::of(Just(Identity {
        client_id: "3f1a8c52-6d0e-4b7a-9a43-2c5f7e9d1b10".into(),
    }))
}

fn fhir(name: String) -> impl Strategy<Value = FhirService> {
    (
        prop::sample::select(vec!["STU3", "R4", "R4B", "R5"]),
        image(),
        replicas(),
        prop::option::of(Just(Auth {
            authority: "https://login.microsoftonline.com/tenant".into(),
            audience: "https://api.fhir.example".into(),
            smart_proxy_enabled: false,
        })),
        prop::option::of(Just(Cors {
            origins: vec!["https://portal.example".into()],
            headers: Vec::new(),
            methods: vec!["GET".into()],
            max_age: Some(600),
            allow_credentials: false,
        })),
        identity(),
    )
        .prop_map(
            move |(version, image, replicas, auth, cors, identity)| FhirService {
                name: name.clone(),
                fhir_version: version.into(),
                image,
                replicas,
                resources: None,
                auth,
                cors,
                identity,
                key_vault: None,
                probes: None,
                autoscaling: None,
            },
        )
}

/// A workspace with 1-3 FHIR services, 0-2 DICOM services (some with a
/// cast), 0-2 IoT connectors with 0-2 destinations, images, replicas,
/// identities, auth and CORS here and there.
fn workspace(name: String) -> impl Strategy<Value = Workspace> {
    (
        prop::collection::vec(0..1u8, 1..4).prop_flat_map(|v| {
            v.iter()
                .enumerate()
                .map(|(i, _)| fhir(format!("f{i}")))
                .collect::<Vec<_>>()
        }),
        prop::collection::vec((image(), replicas(), identity(), any::<bool>()), 0..3),
        prop::collection::vec((image(), replicas(), identity(), 0usize..3), 0..3),
    )
        .prop_map(move |(fhir_services, dicoms, iots)| {
            let fhir_names: Vec<String> = fhir_services.iter().map(|f| f.name.clone()).collect();
            let dicom_services = dicoms
                .into_iter()
                .enumerate()
                .map(|(i, (image, replicas, identity, cast))| DicomService {
                    name: format!("d{i}"),
                    image,
                    replicas,
                    resources: None,
                    identity,
                    key_vault: None,
                    probes: None,
                    autoscaling: None,
                    dicom_cast: cast.then(|| DicomCast {
                        fhir_service: fhir_names[i % fhir_names.len()].clone(),
                        poll_interval: "30s".into(),
                        image: None,
                        resources: None,
                        table_endpoint: "https://castsstate.table.core.windows.net/".into(),
                        identity: None,
                    }),
                })
                .collect();
            let iot_connectors = iots
                .into_iter()
                .enumerate()
                .map(
                    |(i, (image, replicas, identity, destinations))| IotConnector {
                        name: format!("c{i}"),
                        image,
                        replicas,
                        resources: None,
                        identity,
                        ingestion_endpoint_configuration: IngestionEndpoint {
                            event_hub_name: "hub".into(),
                            consumer_group: None,
                            fully_qualified_event_hub_namespace: "ingest.servicebus.windows.net"
                                .into(),
                        },
                        device_mapping: Mapping {
                            content: json!({"templateType": "CollectionContent", "template": [i]}),
                        },
                        fhir_destinations: (0..destinations)
                            .map(|j| FhirDestination {
                                name: format!("x{j}"),
                                resource_identity_resolution_type: if j % 2 == 0 {
                                    "Create".into()
                                } else {
                                    "Lookup".into()
                                },
                                fhir_service: fhir_names[j % fhir_names.len()].clone(),
                                fhir_mapping: Mapping {
                                    content: json!({"templateType": "CollectionFhirTemplate"}),
                                },
                                resources: None,
                            })
                            .collect(),
                    },
                )
                .collect();
            Workspace {
                api_version: model::API_VERSION.into(),
                kind: "Workspace".into(),
                metadata: Metadata {
                    name: name.clone(),
                    ..Metadata::default()
                },
                spec: WorkspaceSpec {
                    fhir_services,
                    dicom_services,
                    iot_connectors,
                },
            }
        })
}

fn settings() -> impl Strategy<Value = Settings> {
    (
        prop::sample::select(vec!["example.com", "health.example.org", "a.b.c.example"]),
        prop::option::of(1i32..4),
    )
        .prop_map(|(domain, default_replicas)| {
            let image = |repository: &str| {
                Some(Image {
                    repository: Some(repository.into()),
                    tag: Some("9.9".into()),
                })
            };
            let mut s = Settings::default();
            s.ingress.domain = Some(domain.into());
            s.images.fhir = image("default.example/fhir");
            s.images.dicom = image("default.example/dicom");
            s.images.dicom_cast = image("default.example/cast");
            s.images.iot_connector = image("default.example/iot");
            s.images.iot_fhir_destination = image("default.example/dest");
            s.defaults.fhir.replicas = default_replicas;
            s.defaults.dicom.replicas = default_replicas;
            s
        })
}

fn environment() -> impl Strategy<Value = (Environment, Vec<usize>)> {
    (prop::collection::btree_set("[a-z]{1,6}", 1..5), settings())
        .prop_flat_map(|(names, settings)| {
            let n = names.len();
            (
                names.into_iter().map(workspace).collect::<Vec<_>>(),
                Just(settings),
                Just((0..n).collect::<Vec<usize>>()).prop_shuffle(),
            )
        })
        .prop_map(|(workspaces, settings, order)| {
            (
                Environment {
                    name: "qa".into(),
                    chain: vec!["qa".into()],
                    settings,
                    workspaces,
                    resources: Vec::new(),
                },
                order,
            )
        })
}

fn image_of(own: Option<&Image>, default: Option<&Image>) -> String {
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

proptest! {
    #![proptest_config(Config { cases: 128, failure_persistence: None, ..Config::default() })]

    /// README, "What render produces", on generated environments: the same
    /// objects whatever order the workspaces come in; every object labelled
    /// and in its workspace's namespace; no two of one identity; the item's
    /// image (part by part over the environment's), the workload identity,
    /// the ingress host; a PodDisruptionBudget exactly for a FHIR or DICOM
    /// service with more than one replica.
    #[test]
    fn rendering_keeps_readmes_promises((env, order) in environment()) {
        let objects = render::render(&env).expect("render");
        let text = render::to_yaml(&objects);
        let mut shuffled = env.clone();
        shuffled.workspaces = order.iter().map(|&i| env.workspaces[i].clone()).collect();
        prop_assert_eq!(&text, &render::to_yaml(&render::render(&shuffled).expect("render")));

        let mut ids = BTreeSet::new();
        let mut by_id: BTreeMap<(String, String, String), J> = BTreeMap::new();
        for o in &objects {
            let v = o.value();
            let ws = o.workspace.to_string();
            let namespace = format!("{ws}-qa");
            let labels = &v["metadata"]["labels"];
            prop_assert_eq!(&labels["app.kubernetes.io/managed-by"], "tenantsync");
            prop_assert_eq!(&labels["tenantsync.io/environment"], "qa");
            prop_assert_eq!(&labels["tenantsync.io/workspace"], ws.as_str());
            for key in ["name", "instance", "component", "part-of"] {
                prop_assert!(labels[format!("app.kubernetes.io/{key}")].is_string(), "{} lacks {}", o.id(), key);
            }
            match o.namespace.as_deref() {
                Some(ns) => prop_assert_eq!(ns, namespace.as_str()),
                None => {
                    prop_assert_eq!(&*o.kind, "Namespace");
                    prop_assert_eq!(&*o.name, namespace.as_str());
                }
            }
            let group = o.api_version.split_once('/').map_or("", |(g, _)| g).to_string();
            prop_assert!(
                ids.insert((group, o.kind.to_string(), o.namespace.as_deref().map(String::from), o.name.to_string())),
                "two objects {}", o.id()
            );
            by_id.insert((o.kind.to_string(), namespace, o.name.to_string()), v);
        }

        let s = &env.settings;
        let domain = s.ingress.domain.clone().unwrap_or_default();
        for ws in &env.workspaces {
            let ns = format!("{}-qa", ws.metadata.name);
            let get = |kind: &str, name: &str| by_id.get(&(kind.to_string(), ns.clone(), name.to_string()));
            let exposed = ws.spec.fhir_services.iter().map(|f| {
                (format!("fhir-{}", f.name), "fhir", f.name.clone(), f.replicas.or(s.defaults.fhir.replicas).unwrap_or(1),
                 image_of(f.image.as_ref(), s.images.fhir.as_ref()), f.identity.is_some())
            }).chain(ws.spec.dicom_services.iter().map(|d| {
                (format!("dicom-{}", d.name), "dicom", d.name.clone(), d.replicas.or(s.defaults.dicom.replicas).unwrap_or(1),
                 image_of(d.image.as_ref(), s.images.dicom.as_ref()), d.identity.is_some())
            }));
            for (name, kind, short, replicas, image, identity) in exposed {
                let deployment = get("Deployment", &name).unwrap_or_else(|| panic!("no Deployment {name}"));
                prop_assert_eq!(&deployment["spec"]["replicas"], &J::from(replicas));
                prop_assert_eq!(&deployment["spec"]["template"]["spec"]["containers"][0]["image"], &J::from(image));
                prop_assert_eq!(get("PodDisruptionBudget", &name).is_some(), replicas > 1, "{}", name);
                let sa = get("ServiceAccount", &name).unwrap_or_else(|| panic!("no ServiceAccount {name}"));
                prop_assert_eq!(
                    sa["metadata"]["annotations"]["azure.workload.identity/client-id"].is_string(),
                    identity
                );
                let ingress = get("Ingress", &name).unwrap_or_else(|| panic!("no Ingress {name}"));
                prop_assert_eq!(
                    &ingress["spec"]["rules"][0]["host"],
                    &J::from(format!("{short}.{kind}.{}.{domain}", ws.metadata.name))
                );
            }
            for c in &ws.spec.iot_connectors {
                let deployment = get("Deployment", &format!("iot-{}", c.name)).expect("connector Deployment");
                prop_assert_eq!(
                    &deployment["spec"]["template"]["spec"]["containers"][0]["image"],
                    &J::from(image_of(c.image.as_ref(), s.images.iot_connector.as_ref()))
                );
                for x in &c.fhir_destinations {
                    let name = format!("iot-{}-{}", c.name, x.name);
                    prop_assert!(get("Deployment", &name).is_some(), "no Deployment {}", name);
                    prop_assert!(get("ConfigMap", &name).is_some(), "no ConfigMap {}", name);
                }
            }
            // No PodDisruptionBudget but those of FHIR and DICOM services.
            let pdbs = by_id.keys().filter(|(k, n, _)| k == "PodDisruptionBudget" && *n == ns).count();
            let expected = ws.spec.fhir_services.iter().filter(|f| f.replicas.or(s.defaults.fhir.replicas).unwrap_or(1) > 1).count()
                + ws.spec.dicom_services.iter().filter(|d| d.replicas.or(s.defaults.dicom.replicas).unwrap_or(1) > 1).count();
            prop_assert_eq!(pdbs, expected);
            // The shared IoT objects only with a connector.
            prop_assert_eq!(get("ConfigMap", "iot-shared").is_some(), !ws.spec.iot_connectors.is_empty());
        }
    }
}
