//! A FHIR service: the FHIR server's settings as environment variables,
//! exposed as an API (see `exposed_service`).

use std::collections::BTreeMap;

use super::context::Ctx;
use super::workload::{Declared, Exposed, HTTP_PORT, exposed_service};
use crate::declare::model::FhirService;
use crate::declare::names;

pub(super) fn render(cx: &mut Ctx<'_>, f: &FhirService) {
    let settings = &cx.env.settings;
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
    let own = Declared {
        image: f.image.as_ref(),
        replicas: f.replicas,
        autoscaling: f.autoscaling,
        resources: f.resources.as_ref(),
        probes: f.probes,
        identity: f.identity.as_ref(),
        key_vault: f.key_vault.as_ref(),
    };
    let (image, defaults) = (settings.images.fhir.as_ref(), &settings.defaults.fhir);
    let exposed = Exposed::of(
        cx,
        ("fhir-server", "fhir"),
        (&f.name, &name),
        own,
        image,
        defaults,
    );
    exposed_service(cx, exposed, data);
}
