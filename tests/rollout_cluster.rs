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
use crate::rollback_cluster::inventory;
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
    ten_workspaces_pausing(test, "1s")
}

/// [`ten_workspaces`] with `pause` between the steps.
fn ten_workspaces_pausing(test: &str, pause: &str) -> TestRepo {
    let repo = TestRepo::new(test);
    repo.write(
        "environment.yaml",
        &format!(
            "apiVersion: tenantsync.io/v1alpha1\nkind: Environment\nmetadata:\n  name: {}\nspec:\n  base: base\n  ingress:\n    domain: test.example.com\n  syncPolicy:\n    rollout:\n      steps: [20%, 100%]\n      pauseBetween: {pause}\n      healthDeadline: 10m\n",
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

/// Announces `revision` and waits until the daemon reports its rollout at
/// step 1.
async fn push_and_reach_step_one(port: u16, env: &str, revision: &str) {
    push(port, revision).await;
    wait_for("step 1", Duration::from_secs(30), async || {
        status(port, env)
            .await
            .is_some_and(|s| s["rollout"]["revision"] == revision && s["rollout"]["step"] == 1)
    })
    .await;
}

#[tokio::test]
async fn an_image_change_over_ten_workspaces_reaches_two_then_the_other_eight_once_they_are_healthy()
 {
    let repo = ten_workspaces("rollout-ok");
    let env = repo.env.clone();
    let logs = tempfile::tempdir().expect("tempdir");
    let (port, _daemon) = started(&repo, &logs.path().join("daemon.log")).await;

    let revision = bump_image(&repo);
    // Step 1: two workspaces, the other eight untouched.
    push_and_reach_step_one(port, &env, &revision).await;
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
    push_and_reach_step_one(port, &env, &revision).await;
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

/// Review of issue 26: the rollout lived only in the daemon's memory, so a
/// daemon started after one killed at step 1 of 2 planned again, saw eight
/// workspaces still changed and began a new rollout of them at once
/// (beyond the pause, and with a health deadline started over). Now the
/// inventory records the rollout, and the next daemon goes on at step 1,
/// applying step 2 only once the recorded pause is over.
#[tokio::test]
async fn a_daemon_killed_during_a_rollouts_pause_is_followed_by_one_that_goes_on_at_its_step() {
    let repo = ten_workspaces_pausing("rollout-restart", "30s");
    let env = repo.env.clone();
    let logs = tempfile::tempdir().expect("tempdir");
    let (port, first_daemon) = started(&repo, &logs.path().join("first.log")).await;

    let revision = bump_image(&repo);
    push_and_reach_step_one(port, &env, &revision).await;
    let first = running(&repo, NEW).await;
    assert_eq!(first.len(), 2, "{first:?}");
    for ws in &first {
        make_healthy(&repo.namespace(ws)).await;
    }
    wait_for("the pause", Duration::from_secs(30), async || {
        status(port, &env)
            .await
            .is_some_and(|s| s["rollout"]["phase"] == "Pausing")
    })
    .await;
    let s = status(port, &env).await.expect("status");
    let next_step_at: jiff::Timestamp = s["rollout"]["nextStepAt"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no nextStepAt: {s}"));
    // The inventory records the rollout at step 1, pausing.
    wait_for(
        "the rollout recorded at step 1",
        Duration::from_secs(10),
        async || {
            inventory(&env).await.is_some_and(|i| {
                i.rollout.as_ref().is_some_and(|r| {
                    r.revision == revision && r.applied == 1 && r.healthy_at.is_some()
                })
            })
        },
    )
    .await;

    // kill -9 mid-pause; another daemon starts (it waits for the dead
    // one's lock to expire).
    drop(first_daemon);
    let port = free_port();
    let second_log = logs.path().join("second.log");
    let _second = start_daemon(&repo, port, &second_log);
    wait_for(
        "the new daemon to show the rollout at step 1",
        Duration::from_secs(60),
        async || {
            status(port, &env).await.is_some_and(|s| {
                s["rollout"]["revision"] == revision.as_str() && s["rollout"]["step"] == 1
            })
        },
    )
    .await;
    let s = status(port, &env).await.expect("status");
    assert_eq!(strings(&s["rollout"]["pending"]).len(), 8, "{s}");
    // Until the recorded pause is over, step 2 is not applied.
    let margin = jiff::SignedDuration::from_secs(1);
    let mut watched = 0;
    while jiff::Timestamp::now() < next_step_at - margin {
        let reached = running(&repo, NEW).await;
        assert_eq!(
            reached,
            first,
            "applied beyond step 1 before the pause ended:\n{}",
            std::fs::read_to_string(&second_log).unwrap_or_default()
        );
        watched += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        watched > 0,
        "the new daemon took over after the pause ended"
    );

    // Then step 2: every workspace, the rollout completed, the record gone.
    wait_for("step 2", Duration::from_secs(60), async || {
        status(port, &env).await.is_some_and(|s| {
            s["lastAppliedRevision"] == revision.as_str()
                && s["rollout"]["step"] == 2
                && s["rollout"]["phase"] == "Completed"
        })
    })
    .await;
    assert_eq!(running(&repo, NEW).await.len(), 10);
    wait_for(
        "the finished rollout cleared from the inventory",
        Duration::from_secs(10),
        async || inventory(&env).await.is_some_and(|i| i.rollout.is_none()),
    )
    .await;
    let events = crate::change_control_cluster::events_of(&env).await;
    assert!(
        events
            .iter()
            .any(|(reason, message)| reason == "RolloutResumed" && message.contains("step 1/2")),
        "{events:?}"
    );
}

/// An admission policy refusing every update of a Deployment back to the
/// old image in `namespaces`; returns its name. Waits until it refuses.
async fn refuse_rollback_in(namespaces: &[String], test: &str) -> String {
    let name = crate::support::unique_name(test);
    let values = namespaces
        .iter()
        .map(|n| format!("\"{n}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let yaml = format!(
        "apiVersion: admissionregistration.k8s.io/v1\nkind: ValidatingAdmissionPolicy\nmetadata: {{name: {name}}}\nspec:\n  failurePolicy: Fail\n  matchConstraints:\n    resourceRules:\n    - apiGroups: [apps]\n      apiVersions: [v1]\n      operations: [UPDATE]\n      resources: [deployments]\n  validations:\n  - expression: \"!object.spec.template.spec.containers.exists(c, c.image.endsWith(':4.3.1'))\"\n    message: change freeze (test), no rollback to 4.3.1\n---\napiVersion: admissionregistration.k8s.io/v1\nkind: ValidatingAdmissionPolicyBinding\nmetadata: {{name: {name}}}\nspec:\n  policyName: {name}\n  validationActions: [Deny]\n  matchResources:\n    namespaceSelector:\n      matchExpressions:\n      - {{key: kubernetes.io/metadata.name, operator: In, values: [{values}]}}\n"
    );
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), yaml).expect("write policy");
    crate::deploy_cluster::kubectl(&["apply", "-f", &file.path().display().to_string()]);
    let probe =
        json!([{"op": "replace", "path": "/spec/template/spec/containers/0/image", "value": OLD}]);
    wait_for(
        "the policy to refuse",
        Duration::from_secs(30),
        async || {
            let out = control_plane()
                .kubectl()
                .args([
                    "--context",
                    "admin",
                    "-n",
                    &namespaces[0],
                    "patch",
                    "deployment",
                    "fhir-api",
                ])
                .args(["--dry-run=server", "--type=json", "-p", &probe.to_string()])
                .output()
                .expect("kubectl");
            !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("change freeze")
        },
    )
    .await;
    name
}

/// Review of issue 26: a failed step whose rollback was refused once (an
/// admission policy here; a held lock or an API error alike) stayed
/// unapplied for good, and status said only that it failed. Now the
/// rollback is recorded as pending (`rollingBack`, `rollbackError`, in
/// status and the inventory) and tried again at each reconcile until it
/// applies.
#[tokio::test]
async fn a_failed_steps_rollback_refused_once_is_retried_until_applied_and_status_says_so() {
    let repo = ten_workspaces("rollout-rollback-retry");
    let env = repo.env.clone();
    let logs = tempfile::tempdir().expect("tempdir");
    let (port, _daemon) = started(&repo, &logs.path().join("daemon.log")).await;

    let revision = bump_image(&repo);
    push_and_reach_step_one(port, &env, &revision).await;
    let first = running(&repo, NEW).await;
    assert_eq!(first.len(), 2, "{first:?}");
    let namespaces: Vec<String> = first.iter().map(|ws| repo.namespace(ws)).collect();
    let policy = refuse_rollback_in(&namespaces, "rollback-freeze").await;

    make_degraded(&namespaces[1]).await;
    wait_for(
        "the refused rollback",
        Duration::from_secs(30),
        async || {
            status(port, &env).await.is_some_and(|s| {
                s["rollout"]["phase"] == "Failed"
                    && s["rollout"]["rollbackError"]
                        .as_str()
                        .is_some_and(|e| e.contains("change freeze"))
            })
        },
    )
    .await;
    let s = status(port, &env).await.expect("status");
    let mut rolling_back = strings(&s["rollout"]["rollingBack"]);
    rolling_back.sort();
    assert_eq!(rolling_back, first, "{s}");
    assert_eq!(s["syncStatus"], "Failed", "{s}");
    assert!(
        s["lastError"]
            .as_str()
            .is_some_and(|e| e.contains("tried again")),
        "{s}"
    );
    let shown = tenantsync_status(&env);
    assert!(shown.contains("rolling back"), "{shown}");
    let inv = inventory(&env).await.expect("inventory");
    let record = inv.rollout.expect("the rollout recorded");
    assert_eq!(record.rolling_back.len(), 2, "{record:?}");
    // Still refused a few reconciles later: nothing rolled back, nothing
    // claimed.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(running(&repo, NEW).await, first);
    let s = status(port, &env).await.expect("status");
    assert_eq!(s["rollout"]["phase"], "Failed", "{s}");

    // The freeze lifted: the next try applies it.
    crate::deploy_cluster::kubectl(&["delete", "validatingadmissionpolicybinding", &policy]);
    crate::deploy_cluster::kubectl(&["delete", "validatingadmissionpolicy", &policy]);
    wait_for("the rollback", Duration::from_secs(60), async || {
        status(port, &env)
            .await
            .is_some_and(|s| s["rollout"]["phase"] == "RolledBack")
    })
    .await;
    let s = status(port, &env).await.expect("status");
    assert!(s["rollout"]["rollingBack"].is_null(), "{s}");
    assert!(s["rollout"]["rollbackError"].is_null(), "{s}");
    assert_eq!(running(&repo, OLD).await.len(), 10);
    let events = crate::change_control_cluster::events_of(&env).await;
    assert!(
        events
            .iter()
            .any(|(reason, _)| reason == "RolloutRolledBack"),
        "{events:?}"
    );
}

/// Hostile review of the persisted rollout: a CLI sync of another revision
/// while no daemon ran kept the rollout record, and the next daemon resumed
/// it at its step: after the recorded pause it applied step 2, which in one
/// sync also set back every workspace step 1 had reached, without a gate.
/// Now that sync clears the record and the next daemon starts from step one.
#[tokio::test]
async fn a_cli_sync_of_another_revision_while_no_daemon_runs_restarts_the_rollout_from_step_one() {
    let repo = ten_workspaces_pausing("rollout-cli-between", "3s");
    let env = repo.env.clone();
    let before = git(repo.path(), &["rev-parse", "HEAD"]);
    let logs = tempfile::tempdir().expect("tempdir");
    let (port, first_daemon) = started(&repo, &logs.path().join("first.log")).await;
    let revision = bump_image(&repo);
    push_and_reach_step_one(port, &env, &revision).await;
    for ws in &running(&repo, NEW).await {
        make_healthy(&repo.namespace(ws)).await;
    }
    wait_for(
        "the rollout recorded at step 1, pausing",
        Duration::from_secs(30),
        async || {
            inventory(&env).await.is_some_and(|i| {
                i.rollout
                    .as_ref()
                    .is_some_and(|r| r.revision == revision && r.healthy_at.is_some())
            })
        },
    )
    .await;
    drop(first_daemon);

    // While no daemon runs, the revision before is synced by hand.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tenantsync"))
        .args(["sync", "--env", &env, "--rev", &before, "--repo"])
        .arg(repo.path())
        .arg("--kubeconfig")
        .arg(control_plane().kubeconfig())
        .args(["--context", "admin"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("tenantsync sync");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(running(&repo, NEW).await.is_empty());
    let inv = inventory(&env).await.expect("inventory");
    assert_eq!(inv.revision.as_deref(), Some(before.as_str()));
    assert_eq!(inv.rollout, None, "the record of {revision} is cleared");

    // The next daemon rolls the newer revision out from step one: two
    // workspaces, held there while they are not Healthy, long past the
    // recorded pause.
    let port = free_port();
    let second_log = logs.path().join("second.log");
    let _second = start_daemon(&repo, port, &second_log);
    wait_for(
        "the new daemon's step 1",
        Duration::from_secs(90),
        async || {
            status(port, &env).await.is_some_and(|s| {
                s["rollout"]["revision"] == revision.as_str() && s["rollout"]["step"] == 1
            })
        },
    )
    .await;
    for _ in 0..16 {
        let reached = running(&repo, NEW).await;
        assert_eq!(
            reached.len(),
            2,
            "{reached:?}:\n{}",
            std::fs::read_to_string(&second_log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let events = crate::change_control_cluster::events_of(&env).await;
    assert!(
        !events
            .iter()
            .any(|(reason, message)| reason == "RolloutResumed" && message.contains(&revision)),
        "{events:?}"
    );
}

/// What a daemon killed during step 1 leaves in the inventory: a rollout
/// of `revision` in two steps (`first`, then `rest`), none applied.
async fn record_no_step_applied(
    env: &str,
    revision: &str,
    first: &[String],
    rest: &[String],
) -> tenantsync::sync::resume::RolloutRecord {
    use tenantsync::sync::rollout::{RolloutPhase, RolloutStep};
    let record = tenantsync::sync::resume::RolloutRecord {
        revision: revision.to_string(),
        steps: vec![
            RolloutStep {
                percent: 20,
                workspaces: first.to_vec(),
            },
            RolloutStep {
                percent: 100,
                workspaces: rest.to_vec(),
            },
        ],
        not_held_back: Vec::new(),
        applied: 0,
        applied_at: jiff::Timestamp::now().to_string(),
        healthy_at: None,
        phase: RolloutPhase::Progressing,
        failed: Default::default(),
        rolling_back: Vec::new(),
    };
    let cluster = tenantsync::cluster::Cluster::connect(&tenantsync::cluster::ClusterOptions {
        kubeconfig: Some(control_plane().kubeconfig().to_path_buf()),
        context: Some("admin".into()),
        ..Default::default()
    })
    .await
    .expect("connect");
    cluster
        .record_rollout(
            env,
            &tenantsync::sync::Fence::default(),
            None,
            Some(&record),
        )
        .await
        .expect("record");
    record
}

/// Hostile review of the persisted rollout: a daemon killed during step 1,
/// before anything was recorded, left the next daemon no record: it planned
/// again, saw step 1's workspaces unchanged and never judged them. The
/// record is now written before step 1 (no step applied yet) and the step
/// with its record in one write; the next daemon applies step 1 of the
/// recorded steps.
#[tokio::test]
async fn a_record_of_no_step_applied_yet_is_resumed_with_step_one_of_its_recorded_steps() {
    let repo = ten_workspaces_pausing("rollout-step-zero", "30s");
    let env = repo.env.clone();
    let logs = tempfile::tempdir().expect("tempdir");
    let (port, _daemon) = started(&repo, &logs.path().join("daemon.log")).await;
    // What a daemon killed during step 1 left: steps planned, none applied
    // (step 1 here: the last two tenants, not what a new plan would pick).
    let all = tenants();
    let (rest, first) = all.split_at(all.len() - 2);
    let revision = bump_image(&repo);
    let record = record_no_step_applied(&env, &revision, first, rest).await;
    push_and_reach_step_one(port, &env, &revision).await;
    let mut reached = running(&repo, NEW).await;
    reached.sort();
    let mut wanted = first.to_vec();
    wanted.sort();
    assert_eq!(reached, wanted);
    // Recorded with the step, in the step's own inventory write.
    let inv = inventory(&env).await.expect("inventory");
    let recorded = inv.rollout.expect("the record");
    assert_eq!(recorded.applied, 1);
    assert_eq!(recorded.steps, record.steps);
}

/// A rollout record of no step applied (left by a daemon stopped before
/// its step 1) taken up by a successor applies nothing of a revision the
/// cluster refuses: a manifest of a custom kind that is cluster-scoped on
/// the API server but declared with a namespace. (The planner's own scope
/// check refuses this case before the rollout's checks before step 1,
/// which since session 32 also run for a resumed or retried step 1; no
/// test here reaches those alone.)
#[tokio::test]
async fn a_resumed_rollout_of_no_step_applied_applies_nothing_of_a_revision_the_cluster_scope_check_refuses()
 {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let repo = ten_workspaces_pausing("rollout-resume-scope", "30s");
    let env = repo.env.clone();
    // A cluster-scoped kind of this test's own: only discovery tells its
    // scope, so only the cluster-side check refuses it.
    let group = format!("{env}.example.com");
    let crds: Api<CustomResourceDefinition> = Api::all(control_plane().client(User::Admin).await);
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("gadgets.{group}")},
        "spec": {
            "group": group,
            "scope": "Cluster",
            "names": {"plural": "gadgets", "singular": "gadget", "kind": "Gadget"},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object",
                    "x-kubernetes-preserve-unknown-fields": true}}}]
        }
    }))
    .expect("crd");
    crds.create(&Default::default(), &crd)
        .await
        .expect("create crd");
    wait_for(
        "the CRD to be established",
        Duration::from_secs(30),
        async || {
            crds.get(&format!("gadgets.{group}"))
                .await
                .ok()
                .is_some_and(|c| {
                    c.status
                        .and_then(|s| s.conditions)
                        .unwrap_or_default()
                        .iter()
                        .any(|c| c.type_ == "Established" && c.status == "True")
                })
        },
    )
    .await;
    let logs = tempfile::tempdir().expect("tempdir");
    let (port, _daemon) = started(&repo, &logs.path().join("daemon.log")).await;
    // Committed on a branch the daemon does not follow, so that it sees
    // the revision only once the record is written (as a successor would).
    git(repo.path(), &["checkout", "-q", "-b", "next"]);
    repo.write(
        "resources/gadget.yaml",
        // With a namespace of the environment's own: the repository alone
        // cannot tell the kind ignores it.
        &format!(
            "apiVersion: {group}/v1\nkind: Gadget\nmetadata:\n  name: {env}-gadget\n  namespace: {}\n",
            repo.namespace("tenant-0")
        ),
    );
    let revision = bump_image(&repo);
    let all = tenants();
    let (rest, first) = all.split_at(all.len() - 2);
    record_no_step_applied(&env, &revision, first, rest).await;
    git(repo.path(), &["checkout", "-q", "main"]);
    git(repo.path(), &["merge", "-q", "--ff-only", "next"]);
    push(port, &revision).await;
    wait_for(
        "the revision to be refused",
        Duration::from_secs(30),
        async || {
            status(port, &env).await.is_some_and(|s| {
                s["lastError"]
                    .as_str()
                    .is_some_and(|e| e.contains("is cluster-scoped on this API server"))
            })
        },
    )
    .await;
    let s = status(port, &env).await.expect("status");
    assert!(
        s["lastError"]
            .as_str()
            .is_some_and(|e| e.contains("Gadget")),
        "{s}"
    );
    assert!(running(&repo, NEW).await.is_empty(), "no step was applied");
    crds.delete(&format!("gadgets.{group}"), &Default::default())
        .await
        .ok();
}
