//! A DICOM service, exposed as an API (see `exposed_service`), and its
//! DICOM-cast worker, which copies its change feed into a FHIR service.

use std::collections::BTreeMap;

use super::context::Ctx;
use super::workload::{
    Declared, Exposed, HTTP_PORT, Workload, config_map, deployment, exposed_service, image_ref,
    service_account, service_url, timespan,
};
use crate::declare::model::DicomService;
use crate::declare::names;

pub(super) fn render(cx: &mut Ctx<'_>, d: &DicomService) {
    let settings = &cx.env.settings;
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
    let own = Declared {
        image: d.image.as_ref(),
        replicas: d.replicas,
        autoscaling: d.autoscaling,
        resources: d.resources.as_ref(),
        probes: d.probes,
        identity: d.identity.as_ref(),
        key_vault: d.key_vault.as_ref(),
    };
    let (image, defaults) = (settings.images.dicom.as_ref(), &settings.defaults.dicom);
    let exposed = Exposed::of(
        cx,
        ("dicom-server", "dicom"),
        (&d.name, &name),
        own,
        image,
        defaults,
    );
    exposed_service(cx, exposed, data);
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
            // Table storage through the cast's identity (seed 003).
            (
                "TableStore__EndpointUri".to_string(),
                cast.table_endpoint.clone(),
            ),
        ]);
        let mut data = data;
        if let Some(id) = &cast.identity {
            data.insert(
                "TableStore__ManagedIdentityClientId".to_string(),
                id.client_id.clone(),
            );
        }
        let labels = cx.labels("dicom-cast", &cast_name, "cast");
        service_account(cx, &cast_name, labels, cast.identity.as_ref());
        let hash = config_map(
            cx,
            &names::config(&cast_name),
            "dicom-cast",
            &cast_name,
            "cast",
            data,
        );
        deployment(
            cx,
            Workload {
                name: cast_name.clone(),
                app: "dicom-cast",
                component: "cast",
                image: image_ref(cast.image.as_ref(), settings.images.dicom_cast.as_ref()),
                // One poller of the change feed (seed 003); none in standby.
                replicas: Some(cx.replicas(1)),
                probes: cx.probes(None),
                resources: cast.resources.as_ref().or(settings
                    .defaults
                    .dicom_cast
                    .resources
                    .as_ref()),
                service_account: Some(cast_name.clone()),
                env_from: Some(names::config(&cast_name)),
                env: Vec::new(),
                secret_env: Vec::new(),
                key_vault: false,
                own_key_vault: None,
                mount: None,
                identity: cast.identity.is_some(),
                config_hash: hash,
            },
        );
    }
}
