//! The field ownership policy on the real control plane, each test from a
//! synced environment: hand edits (kubectl) are drift, named with their
//! manager, and undone by sync and the daemon's self-heal; fields an
//! ignore rule leaves to others are never drift and never overwritten.

use std::process::{Command, Output, Stdio};
use std::time::Duration;
use tenantsync::sync::Fence;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};

use crate::daemon_e2e::{Guard, free_port, status, wait_for};
use crate::support::repo::TestRepo;
use crate::support::{User, control_plane};

const ENV_HEAD: &str = "apiVersion: tenantsync.io/v1alpha1\nkind: Environment\nmetadata:\n  name: {env}\nspec:\n  base: base\n  ingress:\n    domain: test.example.com\n";

fn environment(repo: &TestRepo, ownership: &str) {
    repo.write(
        "environment.yaml",
        &format!("{}{ownership}", ENV_HEAD.replace("{env}", &repo.env)),
    );
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn kubectl(ns: &str, args: &[&str]) {
    let out = control_plane()
        .kubectl()
        .args(["--context", "admin", "-n", ns])
        .args(args)
        .output()
        .expect("kubectl");
    assert!(out.status.success(), "kubectl {args:?}: {}", text(&out));
}

fn sync(repo: &TestRepo) -> (Output, Value) {
    let out = repo.run("sync", "admin", &["--output", "json"]);
    let report = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out, report)
}

fn synced(repo: &TestRepo) -> Value {
    let (out, report) = sync(repo);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    report
}

/// The plan's changes other than unchanged.
fn changed(plan: &Value) -> Vec<Value> {
    plan["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .filter(|c| c["action"] != "unchanged")
        .cloned()
        .collect()
}

fn drift(repo: &TestRepo) -> Output {
    repo.run("drift", "readonly", &["--detailed-exitcode", "--no-color"])
}

async fn deployments(ns: &str) -> Api<Deployment> {
    Api::namespaced(control_plane().client(User::Admin).await, ns)
}

async fn containers(api: &Api<Deployment>, name: &str) -> Vec<Value> {
    let d = api.get(name).await.expect("deployment");
    serde_json::to_value(d).expect("json")["spec"]["template"]["spec"]["containers"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

async fn main_container(api: &Api<Deployment>) -> String {
    containers(api, "fhir-main").await[0]["name"]
        .as_str()
        .expect("container name")
        .to_string()
}

fn has_env(containers: &[Value], name: &str) -> bool {
    containers.iter().any(|c| {
        c["env"]
            .as_array()
            .is_some_and(|env| env.iter().any(|e| e["name"] == name))
    })
}

#[tokio::test]
async fn a_hand_added_env_var_is_drift_named_with_its_manager_and_sync_removes_it() {
    let repo = TestRepo::new("own-env");
    synced(&repo);
    let ns = repo.namespace("contoso");
    let api = deployments(&ns).await;
    let c = main_container(&api).await;
    kubectl(
        &ns,
        &[
            "patch",
            "deployment/fhir-main",
            "-p",
            &json!({"spec": {"template": {"spec": {"containers": [
                {"name": c, "env": [{"name": "DEBUG", "value": "1"}]}]}}}})
            .to_string(),
        ],
    );
    assert!(has_env(&containers(&api, "fhir-main").await, "DEBUG"));

    let out = drift(&repo);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let shown = text(&out);
    assert!(
        shown.contains(&format!(
            "spec.template.spec.containers[name={c}].env[name=DEBUG]"
        )),
        "{shown}"
    );
    assert!(
        shown.contains("DEBUG") && shown.contains("kubectl-patch"),
        "{shown}"
    );
    let plan = repo.plan_json("readonly");
    let updates = changed(&plan);
    assert_eq!(updates.len(), 1, "{updates:#?}");
    let field = &updates[0]["fields"][0];
    assert_eq!(field["action"], "remove");
    assert_eq!(field["manager"], "kubectl-patch");
    assert_eq!(field["live"], json!({"name": "DEBUG", "value": "1"}));
    assert!(field["since"].as_str().is_some_and(|t| t.contains('T')));

    let report = synced(&repo);
    assert_eq!(
        report["updated"],
        json!([format!("Deployment/{ns}/fhir-main")])
    );
    assert!(!has_env(&containers(&api, "fhir-main").await, "DEBUG"));
    let plan = repo.plan_json("readonly");
    assert!(changed(&plan).is_empty(), "{plan:#}");
    assert_eq!(drift(&repo).status.code(), Some(0));
}

#[tokio::test]
async fn a_hand_added_sidecar_is_removed_and_an_ignored_managers_sidecar_stays() {
    let repo = TestRepo::new("own-sidecar");
    synced(&repo);
    let ns = repo.namespace("contoso");
    let api = deployments(&ns).await;
    let sidecar = json!({"spec": {"template": {"spec": {"containers": [
        {"name": "sidecar", "image": "busybox:1.36"}]}}}});
    kubectl(
        &ns,
        &["patch", "deployment/fhir-main", "-p", &sidecar.to_string()],
    );
    assert_eq!(containers(&api, "fhir-main").await.len(), 2);
    let out = drift(&repo);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("spec.template.spec.containers[name=sidecar]"),
        "{}",
        text(&out)
    );
    synced(&repo);
    assert_eq!(containers(&api, "fhir-main").await.len(), 1);

    // The same sidecar from an injector the policy leaves alone.
    environment(
        &repo,
        "  ownership:\n    ignore:\n      - kinds: [Deployment]\n        paths: [/spec/template/spec/containers/sidecar]\n        managers: [sidecar-injector]\n",
    );
    let mut applied = sidecar.clone();
    applied["apiVersion"] = json!("apps/v1");
    applied["kind"] = json!("Deployment");
    applied["metadata"] = json!({"name": "fhir-main"});
    api.patch(
        "fhir-main",
        &PatchParams::apply("sidecar-injector"),
        &Patch::Apply(&applied),
    )
    .await
    .expect("the injector applies its sidecar");
    assert_eq!(containers(&api, "fhir-main").await.len(), 2);
    let plan = repo.plan_json("readonly");
    assert!(changed(&plan).is_empty(), "{plan:#}");
    assert_eq!(drift(&repo).status.code(), Some(0));
    synced(&repo);
    assert_eq!(containers(&api, "fhir-main").await.len(), 2);
}

#[tokio::test]
async fn a_hand_changed_service_port_is_foreseen_and_healed_on_the_same_service() {
    let repo = TestRepo::new("own-port");
    synced(&repo);
    let ns = repo.namespace("contoso");
    let services: Api<Service> = Api::namespaced(control_plane().client(User::Admin).await, &ns);
    let uid = services
        .get("fhir-main")
        .await
        .expect("service")
        .metadata
        .uid;
    let patch = || {
        kubectl(
            &ns,
            &[
                "patch",
                "service/fhir-main",
                "--type=json",
                "-p",
                r#"[{"op":"replace","path":"/spec/ports/0/port","value":81}]"#,
            ],
        )
    };
    let ports = async || -> Vec<i32> {
        services
            .get("fhir-main")
            .await
            .expect("service")
            .spec
            .and_then(|s| s.ports)
            .unwrap_or_default()
            .iter()
            .map(|p| p.port)
            .collect()
    };

    // Without reverting kubectl (server-side apply's own behaviour), plan
    // says the apply will be refused and names the foreign port and its
    // manager; the sync fails saying what to do.
    environment(&repo, "  ownership:\n    revert: []\n");
    patch();
    let plan = repo.plan_json("readonly");
    let svc = changed(&plan)
        .into_iter()
        .find(|c| c["kind"] == "Service")
        .expect("service update");
    let note = svc["note"].as_str().expect("note");
    assert!(
        note.contains(r#""port":81"#) && note.contains("kubectl-patch"),
        "{note}"
    );
    let (out, report) = sync(&repo);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let failure = report["failures"][0]["message"]
        .as_str()
        .expect("failure")
        .to_string();
    assert!(
        failure.contains("Duplicate value") && failure.contains("tenantsync plan names"),
        "{failure}"
    );
    assert_eq!(ports().await, [81]);

    // With the default policy: the foreign port is shown, then taken over
    // and removed; the Service is the same one.
    environment(&repo, "");
    let plan = repo.plan_json("readonly");
    let svc = changed(&plan)
        .into_iter()
        .find(|c| c["kind"] == "Service")
        .expect("service update");
    let foreign = svc["fields"]
        .as_array()
        .expect("fields")
        .iter()
        .find(|f| f["action"] == "remove")
        .expect("the foreign port")
        .clone();
    assert_eq!(foreign["path"], "spec.ports[name=http]");
    assert_eq!(foreign["live"]["port"], 81);
    assert_eq!(foreign["manager"], "kubectl-patch");
    synced(&repo);
    assert_eq!(ports().await, [80]);
    assert_eq!(
        services
            .get("fhir-main")
            .await
            .expect("service")
            .metadata
            .uid,
        uid
    );
    assert!(changed(&repo.plan_json("readonly")).is_empty());
}

#[tokio::test]
async fn replicas_an_ignored_autoscaler_sets_are_never_drift_nor_overwritten() {
    let repo = TestRepo::new("own-replicas");
    environment(
        &repo,
        "  ownership:\n    ignore:\n      - kinds: [Deployment]\n        paths: [/spec/replicas]\n        managers: [horizontal-pod-autoscaler]\n",
    );
    synced(&repo);
    let ns = repo.namespace("contoso");
    let api = deployments(&ns).await;
    // What an autoscaler does: an update of the scale subresource.
    api.patch_scale(
        "fhir-main",
        &PatchParams {
            field_manager: Some("horizontal-pod-autoscaler".into()),
            ..PatchParams::default()
        },
        &Patch::Merge(json!({"spec": {"replicas": 3}})),
    )
    .await
    .expect("scale");
    let replicas = async || api.get("fhir-main").await.expect("get").spec?.replicas;
    assert_eq!(replicas().await, Some(3));
    assert_eq!(drift(&repo).status.code(), Some(0));
    assert!(changed(&repo.plan_json("readonly")).is_empty());
    // Syncs, one of them applying the Deployment for another change, leave
    // the autoscaler's replicas.
    synced(&repo);
    repo.write(
        "workspaces/contoso.yaml",
        "apiVersion: tenantsync.io/v1alpha1\nkind: WorkspacePatch\nmetadata: {name: contoso}\nspec:\n  fhirServices:\n    - name: main\n      image: {tag: \"9.9.9\"}\n",
    );
    let report = synced(&repo);
    assert!(
        report["updated"]
            .as_array()
            .is_some_and(|u| u.contains(&json!(format!("Deployment/{ns}/fhir-main")))),
        "{report:#}"
    );
    synced(&repo);
    assert_eq!(replicas().await, Some(3));
    assert!(changed(&repo.plan_json("readonly")).is_empty());
}

#[tokio::test]
async fn a_hand_added_label_is_removed_by_default_and_left_with_revert_empty() {
    let repo = TestRepo::new("own-label");
    synced(&repo);
    let ns = repo.namespace("contoso");
    let api = deployments(&ns).await;
    let label = async || -> Option<String> {
        api.get("fhir-main")
            .await
            .expect("get")
            .metadata
            .labels?
            .get("hand")
            .cloned()
    };
    kubectl(&ns, &["label", "deployment/fhir-main", "hand=yes"]);
    // And a key added to a ConfigMap by hand.
    kubectl(
        &ns,
        &[
            "patch",
            "configmap/fhir-main-config",
            "-p",
            r#"{"data":{"EXTRA":"1"}}"#,
        ],
    );
    let out = drift(&repo);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out)
            .contains("metadata.labels.hand: \"yes\" -> (removed) (changed by kubectl-label at "),
        "{}",
        text(&out)
    );
    assert!(
        text(&out).contains("data.EXTRA: \"1\" -> (removed) (changed by kubectl-patch at "),
        "{}",
        text(&out)
    );
    synced(&repo);
    assert_eq!(label().await, None);
    let configmaps: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(control_plane().client(User::Admin).await, &ns);
    let data = configmaps
        .get("fhir-main-config")
        .await
        .expect("configmap")
        .data
        .unwrap_or_default();
    assert!(!data.contains_key("EXTRA") && !data.is_empty(), "{data:?}");
    assert_eq!(drift(&repo).status.code(), Some(0));

    environment(&repo, "  ownership:\n    revert: []\n");
    kubectl(&ns, &["label", "deployment/fhir-main", "hand=yes"]);
    assert_eq!(drift(&repo).status.code(), Some(0));
    synced(&repo);
    assert_eq!(label().await.as_deref(), Some("yes"));
}

#[tokio::test]
async fn the_daemon_with_self_heal_removes_a_hand_added_env_var() {
    let repo = TestRepo::new("own-daemon");
    let env = repo.env.clone();
    let cache = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let daemon = Command::new(env!("CARGO_BIN_EXE_tenantsync"))
        .args(["run", "--env", &env, "--repo"])
        .arg(repo.path())
        .args(["--interval", "2s", "--drift-interval", "1s", "--self-heal"])
        .arg(format!("--listen=127.0.0.1:{port}"))
        .arg("--kubeconfig")
        .arg(control_plane().kubeconfig())
        .args(["--context", "admin"])
        .env("XDG_CACHE_HOME", cache.path())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(cache.path().join("daemon.log")).expect("log file"))
        .spawn()
        .expect("tenantsync run");
    let _daemon = Guard(daemon);
    wait_for("the first sync", Duration::from_secs(60), async || {
        status(port, &env)
            .await
            .is_some_and(|s| s["syncStatus"] == "Synced")
    })
    .await;
    let ns = repo.namespace("contoso");
    let api = deployments(&ns).await;
    let c = main_container(&api).await;
    kubectl(
        &ns,
        &[
            "patch",
            "deployment/fhir-main",
            "-p",
            &json!({"spec": {"template": {"spec": {"containers": [
                {"name": c, "env": [{"name": "DEBUG", "value": "1"}]}]}}}})
            .to_string(),
        ],
    );
    wait_for(
        "self-heal to remove DEBUG",
        Duration::from_secs(20),
        async || !has_env(&containers(&api, "fhir-main").await, "DEBUG"),
    )
    .await;
    assert!(changed(&repo.plan_json("readonly")).is_empty());
}

#[test]
fn the_policy_is_inherited_along_the_base_chain_and_defaults_to_reverting_kubectl() {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let tree = tenantsync::source::folder::read(&root).expect("read the shipped repository");
    let repository = tenantsync::declare::validate::load(&tree);
    let prod = repository.resolve("prod").expect("prod");
    // dr builds on prod and says nothing of ownership: prod's policy.
    let dr = repository.resolve("dr").expect("dr");
    assert_eq!(dr.settings.ownership, prod.settings.ownership);
    assert_eq!(prod.settings.ownership.ignore.len(), 1);
    assert_eq!(
        prod.settings.ownership.ignore[0].paths,
        ["/spec/replicas".to_string()]
    );
    // qa sets nothing: the default.
    let qa = repository.resolve("qa").expect("qa");
    assert_eq!(
        qa.settings.ownership,
        tenantsync::declare::model::Ownership::default()
    );
    assert_eq!(
        qa.settings.ownership.revert,
        ["kubectl*".to_string(), "before-first-apply".to_string()]
    );
}

/// The takeover holds only while the object is at the listed
/// resourceVersion: an object changed since is not rewritten, and the
/// failure says to run the sync again.
#[tokio::test]
async fn a_takeover_on_a_changed_object_is_refused_and_says_to_sync_again() {
    use tenantsync::cluster::apply::ApplyError;
    use tenantsync::cluster::{Cluster, ClusterOptions};
    use tenantsync::object::field_manager;
    use tenantsync::plan::diff::diff_object;

    let ns = control_plane().namespace("own-moved").await;
    let manager = field_manager("moved");
    let body = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "c", "namespace": ns}, "data": {"a": "1"}});
    let object = tenantsync::object::Object::from_value("w", &body).expect("object");
    let cluster = Cluster::connect(&ClusterOptions {
        kubeconfig: Some(control_plane().kubeconfig().to_path_buf()),
        context: Some("admin".into()),
        ..Default::default()
    })
    .await
    .expect("connect");
    cluster
        .apply(&object, false, false, &manager, &Fence::default())
        .await
        .expect("first apply");
    kubectl(
        &ns,
        &["patch", "configmap/c", "-p", r#"{"data":{"extra":"2"}}"#],
    );
    let api: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(control_plane().client(User::Admin).await, &ns);
    let listed = serde_json::to_value(api.get("c").await.expect("get")).expect("json");
    let mut listed = listed;
    listed["apiVersion"] = json!("v1");
    listed["kind"] = json!("ConfigMap");
    let change = diff_object(&object, Some(&listed), false, &manager);
    let heal = change.heal.expect("a takeover");
    // Someone writes in between.
    kubectl(&ns, &["label", "configmap/c", "between=yes"]);
    let err = cluster
        .apply_healed(
            &object,
            Some(&heal),
            None,
            false,
            false,
            &manager,
            &Fence::default(),
        )
        .await
        .expect_err("a stale takeover");
    assert!(matches!(err, ApplyError::Moved { .. }), "{err}");
    assert!(
        err.to_string().contains("run the sync again") && err.to_string().contains("kubectl-patch"),
        "{err}"
    );
    let data = api.get("c").await.expect("get").data.expect("data");
    assert_eq!(data.get("extra").map(String::as_str), Some("2"));
}
