//! IoT connectors: the workspace-wide identity and settings they share, and
//! per connector its ingestion workload and one workload per FHIR
//! destination.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ServiceAccount;

use super::context::Ctx;
use super::workload::{
    Workload, config_map, deployment, image_ref, pretty, service_account, service_url,
};
use crate::declare::model::{FhirDestination, IotConnector, KindDefaults};
use crate::declare::names;

pub(super) fn render(cx: &mut Ctx<'_>, connectors: &[IotConnector]) {
    let settings = &cx.env.settings;
    if !connectors.is_empty() {
        shared(cx);
    }
    for c in connectors {
        let name = names::iot(&c.name);
        let mapping = pretty(&c.device_mapping.content);
        let hash = config_map(
            cx,
            &name,
            "iot-connector",
            &name,
            "ingestion",
            BTreeMap::from([("devicecontent.json".to_string(), mapping)]),
        );
        // One identity per connector (seed 004: its external managed
        // identity, which the customer grants access to the Event Hub).
        let labels = cx.labels("iot-connector", &name, "ingestion");
        service_account(cx, &name, labels, c.identity.as_ref());
        let ingest = &c.ingestion_endpoint_configuration;
        let iot_defaults: &KindDefaults = &settings.defaults.iot_connector;
        deployment(
            cx,
            Workload {
                name: name.clone(),
                app: "iot-connector",
                component: "ingestion",
                image: image_ref(c.image.as_ref(), settings.images.iot_connector.as_ref()),
                replicas: Some(cx.replicas(c.replicas.or(iot_defaults.replicas).unwrap_or(1))),
                probes: cx.probes(None),
                resources: c.resources.as_ref().or(iot_defaults.resources.as_ref()),
                service_account: Some(name.clone()),
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
                secret_env: Vec::new(),
                key_vault: false,
                own_key_vault: None,
                mount: Some((name.clone(), "/etc/tenantsync/mapping")),
                identity: c.identity.is_some(),
                config_hash: hash,
            },
        );
        for dest in &c.fhir_destinations {
            destination(cx, c, dest, &name);
        }
    }
}

/// One FHIR destination of connector `c` (`name`: the connector's
/// rendered name): its mapping and the workload that writes to the FHIR
/// service.
fn destination(cx: &mut Ctx<'_>, c: &IotConnector, dest: &FhirDestination, name: &str) {
    let settings = &cx.env.settings;
    let namespace = cx.namespace.clone();
    let dname = names::iot_destination(&c.name, &dest.name);
    let hash = config_map(
        cx,
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
        cx,
        Workload {
            name: dname.clone(),
            app: "iot-fhir-destination",
            component: "destination",
            image: image_ref(None, settings.images.iot_fhir_destination.as_ref()),
            replicas: Some(cx.replicas(dest_defaults.replicas.unwrap_or(1))),
            probes: cx.probes(None),
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
            secret_env: Vec::new(),
            key_vault: false,
            own_key_vault: None,
            mount: Some((dname.clone(), "/etc/tenantsync/mapping")),
            identity: false,
            config_hash: hash,
        },
    );
}

/// Workspace-wide IoT identity and settings: they exist only while the
/// workspace has a connector (seed 004).
fn shared(cx: &mut Ctx<'_>) {
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
        cx,
        names::IOT_SHARED,
        "iot-connector",
        names::IOT_SHARED,
        "shared",
        data,
    );
}
