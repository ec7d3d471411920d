//! `cluster::wait::wait_healthy` against the real control plane.
//!
//! The control plane runs no deployment controller and no ingress
//! controller: each test drives progress by writing the status subresource
//! itself, in its own namespace.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};
use tenantsync::cluster::wait::{Listing, wait_healthy};
use tenantsync::cluster::{Cluster, ClusterOptions};
use tenantsync::object::Object;
use tenantsync::sync::health::{Health, HealthOptions, HealthStatus};
use tenantsync::sync::inventory::ObjectRef;

use crate::support::{User, control_plane};

async fn connect() -> Cluster {
    Cluster::connect(&ClusterOptions {
        kubeconfig: Some(control_plane().kubeconfig().to_path_buf()),
        context: Some(User::Admin.context().to_string()),
        ..Default::default()
    })
    .await
    .unwrap()
}

fn object(api_version: &str, kind: &str, namespace: Option<&str>, name: &str) -> ObjectRef {
    ObjectRef {
        api_version: api_version.into(),
        kind: kind.into(),
        namespace: namespace.map(Into::into),
        name: name.into(),
    }
}

/// Creates Deployment `fhir-main` with two replicas by server-side apply.
async fn apply_deployment(ns: &str) -> (Api<Deployment>, ObjectRef) {
    let api: Api<Deployment> = Api::namespaced(control_plane().client(User::Admin).await, ns);
    let body = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": "fhir-main", "namespace": ns },
        "spec": {
            "replicas": 2,
            "selector": { "matchLabels": { "app": "fhir-main" } },
            "template": {
                "metadata": { "labels": { "app": "fhir-main" } },
                "spec": { "containers": [{ "name": "fhir", "image": "registry.k8s.io/pause:3.10" }] }
            }
        }
    });
    let applied = api
        .patch(
            "fhir-main",
            &PatchParams::apply("health-test"),
            &Patch::Apply(&body),
        )
        .await
        .unwrap();
    assert_eq!(applied.metadata.generation, Some(1));
    (api, object("apps/v1", "Deployment", Some(ns), "fhir-main"))
}

async fn write_status(api: &Api<Deployment>, status: Value) {
    api.patch_status(
        "fhir-main",
        &PatchParams::default(),
        &Patch::Merge(&json!({ "status": status })),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn deployment_reports_progressing_then_healthy_as_status_is_written() {
    let ns = control_plane().namespace("health-rollout").await;
    let (api, deployment) = apply_deployment(&ns).await;
    let namespace = object("v1", "Namespace", None, &ns);
    let cluster = connect().await;
    let seen: Mutex<Vec<(String, Health)>> = Mutex::new(Vec::new());
    // The wait's own callback drives the rollout: each status is written
    // once the wait reported the previous one, so every step is seen
    // however slow the machine is (no sleeps).
    let (reported, mut reports) = tokio::sync::mpsc::unbounded_channel::<String>();

    let objects = [namespace.clone(), deployment.clone()];
    let options = HealthOptions::default();
    let wait = wait_healthy(
        &cluster,
        None,
        &objects,
        &options,
        Duration::from_secs(120),
        |r, h| {
            seen.lock().unwrap().push((r.id(), h.clone()));
            if *r == deployment {
                let _ = reported.send(h.to_string());
            }
        },
    );
    let drive = async {
        let steps = [
            (
                "observe generation 1",
                json!({ "observedGeneration": 1, "replicas": 1, "updatedReplicas": 1 }),
            ),
            (
                "1 of 2 replicas updated",
                json!({ "replicas": 2, "updatedReplicas": 2 }),
            ),
            (
                "0 of 2 updated replicas available",
                json!({ "readyReplicas": 2, "availableReplicas": 2 }),
            ),
        ];
        for (after, status) in steps {
            while let Some(message) = reports.recv().await {
                if message.contains(after) {
                    break;
                }
            }
            write_status(&api, status).await;
        }
    };
    let (result, ()) = tokio::join!(wait, drive);
    let result = result.unwrap();

    assert_eq!(
        result
            .iter()
            .map(|(r, h)| (r.clone(), h.status))
            .collect::<Vec<_>>(),
        vec![
            (namespace.clone(), HealthStatus::Healthy),
            (deployment.clone(), HealthStatus::Healthy),
        ],
        "{result:?}"
    );
    let seen = seen.into_inner().unwrap();
    let of = |id: String| -> Vec<Health> {
        seen.iter()
            .filter(|(i, _)| *i == id)
            .map(|(_, h)| h.clone())
            .collect()
    };
    assert_eq!(of(namespace.id()), vec![Health::healthy("Active")]);
    let deployment_seen = of(deployment.id());
    let messages: Vec<String> = deployment_seen.iter().map(ToString::to_string).collect();
    assert_eq!(
        messages,
        vec![
            "Progressing: waiting for the controller to observe generation 1 (observed 0)",
            "Progressing: 1 of 2 replicas updated",
            "Progressing: 0 of 2 updated replicas available",
            "Healthy: 2 of 2 replicas available",
        ],
        "on_change calls: {seen:?}"
    );
}

#[tokio::test]
async fn deployment_past_its_progress_deadline_is_degraded_with_the_condition_message() {
    let ns = control_plane().namespace("health-degraded").await;
    let (api, deployment) = apply_deployment(&ns).await;
    let message = "ReplicaSet \"fhir-main-5d8c\" has timed out progressing.";
    write_status(
        &api,
        json!({
            "observedGeneration": 1, "replicas": 2, "updatedReplicas": 2,
            "conditions": [{
                "type": "Progressing", "status": "False",
                "reason": "ProgressDeadlineExceeded", "message": message
            }]
        }),
    )
    .await;
    let cluster = connect().await;
    let mut seen = Vec::new();
    let timeout = Duration::from_secs(300);
    let started = Instant::now();
    let result = wait_healthy(
        &cluster,
        None,
        std::slice::from_ref(&deployment),
        &HealthOptions::default(),
        timeout,
        |_, h| seen.push(h.clone()),
    )
    .await
    .unwrap();
    let elapsed = started.elapsed();

    let expected = Health::degraded(format!("ProgressDeadlineExceeded: {message}"));
    assert_eq!(result, vec![(deployment, expected.clone())]);
    assert_eq!(seen, vec![expected]);
    // Every object left Degraded for three polls in a row: no need to wait
    // out the timeout (three GETs, one per poll; the time is a generous
    // liveness bound, not a target).
    assert_eq!(cluster.requests(), 3, "one GET per poll");
    assert!(elapsed < timeout / 2, "{elapsed:?}");
}

#[tokio::test]
async fn a_wait_that_times_out_returns_the_last_states_on_time() {
    let ns = control_plane().namespace("health-timeout").await;
    let (_api, deployment) = apply_deployment(&ns).await;
    let missing = object("v1", "ConfigMap", Some(&ns), "not-there");
    let cluster = connect().await;
    let timeout = Duration::from_millis(2500);
    let started = Instant::now();
    let result = wait_healthy(
        &cluster,
        None,
        &[deployment.clone(), missing.clone()],
        &HealthOptions::default(),
        timeout,
        |_, _| {},
    )
    .await
    .unwrap();
    let elapsed = started.elapsed();

    // It waits the timeout out, then returns (a generous bound: a wait
    // that ignored its timeout would run for ever).
    assert!(elapsed >= timeout, "{elapsed:?}");
    assert!(elapsed < timeout + Duration::from_secs(30), "{elapsed:?}");
    assert_eq!(
        result,
        vec![
            (
                deployment,
                Health::progressing(
                    "waiting for the controller to observe generation 1 (observed 0)"
                )
            ),
            (missing, Health::progressing("not found")),
        ]
    );
}

#[tokio::test]
async fn ingress_without_address_waits_unless_told_not_to() {
    let ns = control_plane().namespace("health-ingress").await;
    let api: Api<Ingress> = Api::namespaced(control_plane().client(User::Admin).await, &ns);
    let body = json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": { "name": "fhir-main", "namespace": ns },
        "spec": { "rules": [{ "host": "main.fhir.contoso.example.com", "http": { "paths": [{
            "path": "/", "pathType": "Prefix",
            "backend": { "service": { "name": "fhir-main", "port": { "number": 80 } } }
        }] } }] }
    });
    api.patch(
        "fhir-main",
        &PatchParams::apply("health-test"),
        &Patch::Apply(&body),
    )
    .await
    .unwrap();
    let ingress = object("networking.k8s.io/v1", "Ingress", Some(&ns), "fhir-main");
    let objects = std::slice::from_ref(&ingress);

    let cluster = connect().await;
    let result = wait_healthy(
        &cluster,
        None,
        objects,
        &HealthOptions::default(),
        Duration::from_millis(1500),
        |_, _| {},
    )
    .await
    .unwrap();
    assert_eq!(
        result[0].1,
        Health::progressing("waiting for a load-balancer address")
    );

    let cluster = connect().await;
    let not_waiting = HealthOptions {
        wait_for_ingress_address: false,
    };
    let result = wait_healthy(
        &cluster,
        None,
        objects,
        &not_waiting,
        Duration::from_secs(30),
        |_, _| {},
    )
    .await
    .unwrap();
    assert_eq!(result[0].1.status, HealthStatus::Healthy);
    assert_eq!(cluster.requests(), 1, "healthy on the first read");

    // Once an address is published, it is healthy by default too.
    api.patch_status(
        "fhir-main",
        &PatchParams::default(),
        &Patch::Merge(
            &json!({ "status": { "loadBalancer": { "ingress": [{ "ip": "10.0.0.7" }] } } }),
        ),
    )
    .await
    .unwrap();
    let result = wait_healthy(
        &cluster,
        None,
        objects,
        &HealthOptions::default(),
        Duration::from_secs(30),
        |_, _| {},
    )
    .await
    .unwrap();
    assert_eq!(result[0].1, Health::healthy("10.0.0.7"));
}

#[tokio::test]
async fn a_kind_the_server_does_not_serve_is_an_error() {
    let cluster = connect().await;
    let widget = object("example.com/v1", "Widget", Some("default"), "w");
    let err = wait_healthy(
        &cluster,
        None,
        &[widget],
        &HealthOptions::default(),
        Duration::from_secs(5),
        |_, _| {},
    )
    .await
    .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("example.com/v1 Widget") && text.contains("does not serve this kind"),
        "{text}"
    );
}

/// Creates ConfigMap `name` in `ns`, labelled as tenantsync's in
/// `environment` when one is given.
async fn apply_config_map(ns: &str, name: &str, environment: Option<&str>) -> ObjectRef {
    use k8s_openapi::api::core::v1::ConfigMap;
    let api: Api<ConfigMap> = Api::namespaced(control_plane().client(User::Admin).await, ns);
    let labels = match environment {
        Some(env) => json!({
            "app.kubernetes.io/managed-by": "tenantsync",
            "tenantsync.io/environment": env,
        }),
        None => json!({}),
    };
    let body = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": { "name": name, "namespace": ns, "labels": labels },
        "data": { "k": "v" }
    });
    api.patch(
        name,
        &PatchParams::apply("health-test"),
        &Patch::Apply(&body),
    )
    .await
    .unwrap();
    object("v1", "ConfigMap", Some(ns), name)
}

/// `objects` as an environment declares them (for its [`Listing`]).
fn declared_as(objects: &[ObjectRef]) -> Vec<Object> {
    objects
        .iter()
        .filter_map(|r| {
            Object::from_value(
                "ws",
                &json!({
                    "apiVersion": &*r.api_version, "kind": &*r.kind,
                    "metadata": {"name": &*r.name, "namespace": r.namespace.as_deref()}
                }),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_wait_for_many_objects_of_one_kind_lists_them_and_still_reads_an_unlabelled_and_a_missing_one()
 {
    let ns = control_plane().namespace("health-list").await;
    // An environment of this test alone: the LIST's label selector finds
    // only these objects whatever other tests create.
    let env = ns.clone();
    let mut objects = Vec::new();
    for i in 0..40 {
        objects.push(apply_config_map(&ns, &format!("cm-{i:02}"), Some(&env)).await);
    }
    let unlabelled = apply_config_map(&ns, "unlabelled", None).await;
    let missing = object("v1", "ConfigMap", Some(&ns), "not-there");
    objects.push(unlabelled.clone());
    objects.push(missing.clone());

    let wait = |listing: Option<Listing>| {
        let objects = objects.clone();
        async move {
            let cluster = connect().await;
            let result = wait_healthy(
                &cluster,
                listing.as_ref(),
                &objects,
                &HealthOptions::default(),
                Duration::from_millis(2500),
                |_, _| {},
            )
            .await
            .unwrap();
            (result, cluster.requests())
        }
    };
    // The environment declares these objects alone: most of what a LIST
    // returns is waited for.
    let declared = declared_as(&objects);
    assert_eq!(declared.len(), objects.len());
    let (listed, list_requests) = wait(Some(Listing::new(&env, &declared))).await;
    let (read, get_requests) = wait(None).await;

    // The same judgement either way: every existing object Healthy (the
    // unlabelled one read by a GET after the LIST missed it), the missing
    // one not found.
    assert_eq!(listed, read);
    assert_eq!(listed.len(), 42);
    for (r, h) in &listed[..41] {
        assert_eq!(h.status, HealthStatus::Healthy, "{}: {h}", r.id());
    }
    assert_eq!(listed[41], (missing, Health::progressing("not found")));
    // The first poll: one LIST for the 42 pending ConfigMaps, then a GET
    // each for the two it did not return; later polls (about one a second
    // for 2.5 s) a GET of the missing one. Read one by one, the first poll
    // alone is 42 GETs.
    assert!(
        list_requests <= 3 + 4,
        "{list_requests} requests with a LIST"
    );
    assert!(get_requests >= 42, "{get_requests} requests without");
}

/// Session 35's LIST of a kind's health, untested then: a writer that may
/// GET a kind but not LIST it (a refused LIST, 403) reads every object one
/// by one for the rest of the wait, with the same judgement, and does not
/// ask for the LIST again at every poll.
#[tokio::test]
async fn a_wait_whose_list_is_refused_reads_each_object_with_a_get_and_lists_once() {
    use k8s_openapi::api::rbac::v1::ClusterRole;
    let ns = control_plane().namespace("health-nolist").await;
    let env = ns.clone();
    let mut objects = Vec::new();
    for i in 0..40 {
        objects.push(apply_config_map(&ns, &format!("cm-{i:02}"), Some(&env)).await);
    }
    let role = format!("{ns}-get-only");
    let roles: Api<ClusterRole> = Api::all(control_plane().client(User::Admin).await);
    let body = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": { "name": role },
        "rules": [{ "apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"] }]
    });
    roles
        .patch(
            &role,
            &PatchParams::apply("health-test"),
            &Patch::Apply(&body),
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let who = crate::support::audit::identity("health-nolist", &role, dir.path());
    let declared = declared_as(&objects);
    let cursor = crate::support::audit::cursor();
    let cluster = Cluster::connect(&ClusterOptions {
        kubeconfig: Some(who.kubeconfig.clone()),
        context: None,
        ..Default::default()
    })
    .await
    .unwrap();
    let listing = Listing::new(&env, &declared);
    // One that never turns up keeps the wait polling to its deadline.
    let missing = object("v1", "ConfigMap", Some(&ns), "not-there");
    let mut waited = objects.clone();
    waited.push(missing.clone());
    let judged = wait_healthy(
        &cluster,
        Some(&listing),
        &waited,
        &HealthOptions::default(),
        Duration::from_millis(3500),
        |_, _| {},
    )
    .await
    .unwrap();
    assert_eq!(judged.len(), 41);
    for (r, h) in &judged[..40] {
        assert_eq!(h.status, HealthStatus::Healthy, "{}: {h}", r.id());
    }
    assert_eq!(judged[40], (missing, Health::progressing("not found")));
    let requests = who.requests_since(&cursor);
    let lists = requests
        .iter()
        .filter(|r| r.verb == "list" && r.resource == "configmaps")
        .count();
    let gets = requests
        .iter()
        .filter(|r| r.verb == "get" && r.resource == "configmaps" && r.code == 200)
        .count();
    assert!(
        requests
            .iter()
            .any(|r| r.verb == "list" && r.resource == "configmaps" && r.code == 403),
        "the LIST was tried and refused: {requests:#?}"
    );
    let missing_gets = requests
        .iter()
        .filter(|r| r.verb == "get" && r.name == "not-there")
        .count();
    assert!(missing_gets >= 2, "the wait polled more than once");
    assert_eq!(lists, 1, "a refused LIST is not asked for again");
    assert!(gets >= 40, "{gets} GETs");
}
