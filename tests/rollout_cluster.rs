//! Progressive rollout across workspaces (issue 26) on the real control
//! plane: the daemon applies an image change in `base` over ten workspaces
//! 20% first, then the rest once those are Healthy; a step that goes
//! Degraded stops the rollout and is rolled back. The control plane runs no
//! deployment or ingress controller: the test writes the status
//! subresources that make a workspace Healthy or Degraded.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};

use crate::change_control_cluster::{push, start_daemon};
use crate::daemon_e2e::{free_port, metric, status, wait_for};
use crate::support::repo::TestRepo;
use crate::support::{User, control_plane, git};

const OLD: &str = "healthplatform.azurecr.io/fhir-server:4.3.1";
const NEW: &str = "healthplatform.azurecr.io/fhir-server:4.4.0";

fn tenants() -> Vec<String> {
    (0..10).map(|i| format!("tenant-{i}")).collect()
}

/// Ten workspaces of one FHIR service each (the shipped base's removed),
/// rolled out 20% then 100%.
fn ten_workspaces(test: &str) -> TestRepo {
    let repo = TestRepo::new(test);
    repo.write(
        "environment.yaml",
        &format!(
            "apiVersion: tenantsync.io/v1alpha1\nkind: Environment\nmetadata:\n  name: {}\nspec:\n  base: base\n  ingress:\n    domain: test.example.com\n  syncPolicy:\n    rollout:\n      steps: [20%, 100%]\n      pauseBetween: 1s\n      healthDeadline: 10m\n",
            repo.env
        ),
    );
    for ws in ["contoso", "fabrikam", "northwind", "woodgrove"] {
        repo.write(
            &format!("workspaces/{ws}.yaml"),
            &format!("apiVersion: tenantsync.io/v1alpha1\nkind: WorkspacePatch\nmetadata: {{name: {ws}}}\n$patch: delete\n"),
        );
    }
    for ws in tenants() {
        repo.write(
            &format!("workspaces/{ws}.yaml"),
            &format!("apiVersion: tenantsync.io/v1alpha1\nkind: Workspace\nmetadata: {{name: {ws}}}\nspec:\n  fhirServices:\n    - name: api\n      replicas: 1\n"),
        );
    }
    git(repo.path(), &["init", "-q", "-b", "main"]);
    commit(&repo, "ten workspaces");
    repo
}

fn commit(repo: &TestRepo, message: &str) -> String {
    git(repo.path(), &["add", "-A"]);
    git(repo.path(), &["commit", "-qm", message]);
    git(repo.path(), &["rev-parse", "HEAD"])
}

/// The FHIR image in `base` bumped, committed.
fn bump_image(repo: &TestRepo) -> String {
    let base = repo.path().join("environments/base/environment.yaml");
    let text = std::fs::read_to_string(&base).expect("read base");
    let bumped = text.replace("fhir-server, tag: \"4.3.1\"", "fhir-server, tag: \"4.4.0\"");
    assert_ne!(bumped, text);
    std::fs::write(&base, bumped).expect("write base");
    commit(repo, "fhir-server 4.4.0")
}

async fn deployments(ns: &str) -> Api<Deployment> {
    Api::namespaced(control_plane().client(User::Admin).await, ns)
}

async fn image(ns: &str) -> Option<String> {
    let d = deployments(ns).await.get_opt("fhir-api").await.ok()??;
    d.spec?.template.spec?.containers.first()?.image.clone()
}

/// Workspaces (of `tenants()`) whose FHIR Deployment runs `wanted`.
async fn running(repo: &TestRepo, wanted: &str) -> Vec<String> {
    let mut out = Vec::new();
    for ws in tenants() {
        if image(&repo.namespace(&ws)).await.as_deref() == Some(wanted) {
            out.push(ws);
        }
    }
    out
}

/// What a deployment controller and an ingress controller would write once
/// the workspace's pods are up: the Deployment rolled out at its current
/// generation, the Ingress with an address.
async fn make_healthy(ns: &str) {
    let api = deployments(ns).await;
    let generation = api
        .get("fhir-api")
        .await
        .expect("deployment")
        .metadata
        .generation
        .unwrap_or(1);
    write_status(
        &api,
        json!({
            "observedGeneration": generation,
            "replicas": 1, "updatedReplicas": 1, "readyReplicas": 1, "availableReplicas": 1,
            "conditions": [{"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable", "message": "up"}],
        }),
    )
    .await;
    let ingresses: Api<Ingress> = Api::namespaced(control_plane().client(User::Admin).await, ns);
    ingresses
        .patch_status(
            "fhir-api",
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": {"loadBalancer": {"ingress": [{"ip": "10.0.0.1"}]}}})),
        )
        .await
        .expect("ingress status");
}

/// What a deployment controller writes when the new pods never come up.
async fn make_degraded(ns: &str) {
    let api = deployments(ns).await;
    let generation = api
        .get("fhir-api")
        .await
        .expect("deployment")
        .metadata
        .generation
        .unwrap_or(1);
    write_status(
        &api,
        json!({
            "observedGeneration": generation,
            "replicas": 1, "updatedReplicas": 1, "readyReplicas": 0, "availableReplicas": 0,
            "conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                            "message": "ReplicaSet \"fhir-api-7c9\" has timed out progressing."}],
        }),
    )
    .await;
}

async fn write_status(api: &Api<Deployment>, status: Value) {
    api.patch_status(
        "fhir-api",
        &PatchParams::default(),
        &Patch::Merge(&json!({ "status": status })),
    )
    .await
    .expect("deployment status");
}

/// Starts the daemon on `repo`, waits for the first revision to be
/// applied (new workspaces are not held back) and makes every workspace
/// Healthy.
async fn started(repo: &TestRepo, log: &std::path::Path) -> (u16, crate::daemon_e2e::Guard) {
    let port = free_port();
    let daemon = start_daemon(repo, port, log);
    let env = repo.env.clone();
    wait_for(
        "the first revision to be applied at once",
        Duration::from_secs(60),
        async || {
            status(port, &env)
                .await
                .is_some_and(|s| s["syncStatus"] == "Synced")
        },
    )
    .await;
    assert_eq!(running(repo, OLD).await.len(), 10);
    for ws in tenants() {
        make_healthy(&repo.namespace(&ws)).await;
    }
    (port, daemon)
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn tenantsync_status(env: &str) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tenantsync"))
        .args(["status", "--env", env, "--context", "admin", "--kubeconfig"])
        .arg(control_plane().kubeconfig())
        .output()
        .expect("tenantsync status");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn an_image_change_over_ten_workspaces_reaches_two_then_the_other_eight_once_they_are_healthy()
 {
    let repo = ten_workspaces("rollout-ok");
    let env = repo.env.clone();
    let logs = tempfile::tempdir().expect("tempdir");
    let (port, _daemon) = started(&repo, &logs.path().join("daemon.log")).await;

    let revision = bump_image(&repo);
    push(port, &revision).await;
    // Step 1: two workspaces, the other eight untouched.
    wait_for("step 1", Duration::from_secs(30), async || {
        status(port, &env).await.is_some_and(|s| {
            s["rollout"]["revision"] == revision.as_str() && s["rollout"]["step"] == 1
        })
    })
    .await;
    let first = running(&repo, NEW).await;
    assert_eq!(first.len(), 2, "{first:?}");
    let s = status(port, &env).await.expect("status");
    let r = &s["rollout"];
    assert_eq!(r["steps"], 2, "{r}");
    assert_eq!(r["phase"], "Progressing", "{r}");
    let mut progressing = strings(&r["progressing"]);
    progressing.sort();
    assert_eq!(progressing, first, "{r}");
    assert_eq!(strings(&r["pending"]).len(), 8, "{r}");
    assert_eq!(s["syncStatus"], "OutOfSync", "{s}");
    assert_ne!(s["lastAppliedRevision"], revision.as_str());
    let step = format!("tenantsync_rollout_step{{environment=\"{env}\",phase=\"Progressing\"}}");
    assert_eq!(metric(port, &step).await, Some(1.0));
    let shown = tenantsync_status(&env);
    assert!(
        shown.contains("rollout:") && shown.contains("step 1/2 Progressing"),
        "{shown}"
    );
    // While they are not Healthy, the rest waits.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(running(&repo, NEW).await, first, "the gate holds");

    // Step 1 Healthy: after the pause, the other eight.
    for ws in &first {
        make_healthy(&repo.namespace(ws)).await;
    }
    wait_for("the rest", Duration::from_secs(30), async || {
        status(port, &env)
            .await
            .is_some_and(|s| s["lastAppliedRevision"] == revision.as_str())
    })
    .await;
    assert_eq!(running(&repo, NEW).await.len(), 10);
    wait_for(
        "the rollout to complete",
        Duration::from_secs(10),
        async || {
            status(port, &env).await.is_some_and(|s| {
                s["rollout"]["phase"] == "Completed" && s["syncStatus"] == "Synced"
            })
        },
    )
    .await;
    let s = status(port, &env).await.expect("status");
    assert_eq!(strings(&s["rollout"]["done"]).len(), 10, "{s}");
}

#[tokio::test]
async fn a_step_that_goes_degraded_stops_the_rollout_at_two_workspaces_and_rolls_them_back() {
    let repo = ten_workspaces("rollout-degraded");
    let env = repo.env.clone();
    let logs = tempfile::tempdir().expect("tempdir");
    let (port, _daemon) = started(&repo, &logs.path().join("daemon.log")).await;

    let revision = bump_image(&repo);
    push(port, &revision).await;
    wait_for("step 1", Duration::from_secs(30), async || {
        status(port, &env).await.is_some_and(|s| {
            s["rollout"]["revision"] == revision.as_str() && s["rollout"]["step"] == 1
        })
    })
    .await;
    let first = running(&repo, NEW).await;
    assert_eq!(first.len(), 2, "{first:?}");
    make_healthy(&repo.namespace(&first[0])).await;
    make_degraded(&repo.namespace(&first[1])).await;
    wait_for("the rollback", Duration::from_secs(30), async || {
        status(port, &env)
            .await
            .is_some_and(|s| s["rollout"]["phase"] == "RolledBack")
    })
    .await;
    let s = status(port, &env).await.expect("status");
    let r = &s["rollout"];
    assert_eq!(r["step"], 1, "{r}");
    assert!(
        r["failed"][&first[1]]
            .as_str()
            .is_some_and(|why| why.contains("Degraded")),
        "{r}"
    );
    assert_eq!(strings(&r["pending"]).len(), 8, "{r}");
    assert_eq!(s["syncStatus"], "Failed", "{s}");
    assert!(
        s["lastError"]
            .as_str()
            .is_some_and(|e| e.contains("Rolled back")),
        "{s}"
    );
    // Both step-1 workspaces are back on the old image; the rest never saw
    // the new one, and still do not.
    assert_eq!(running(&repo, OLD).await.len(), 10);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(running(&repo, NEW).await.is_empty());
    let rolled = format!("tenantsync_rollout_step{{environment=\"{env}\",phase=\"RolledBack\"}}");
    assert_eq!(metric(port, &rolled).await, Some(1.0));
    let shown = tenantsync_status(&env);
    assert!(shown.contains("step 1/2 RolledBack"), "{shown}");
}
