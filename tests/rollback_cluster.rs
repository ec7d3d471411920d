//! Automated rollback on failed health (issue 16) on the real control plane:
//! the daemon watches the workspaces a revision changed until
//! `syncPolicy.healthDeadline`; with `syncPolicy.rollback: true` a workspace
//! whose Deployment goes Degraded, or is still Progressing at the deadline,
//! is re-applied at its last healthy revision, and only it.
//!
//! The control plane runs no deployment controller: the test writes each
//! Deployment's status itself, as tests/health_cluster.rs does.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;
use tenantsync::sync::inventory::{Inventory, SYSTEM_NAMESPACE, name_of};

use crate::change_control_cluster::{push, start_daemon};
use crate::daemon_e2e::{free_port, metric, status, wait_for};
use crate::support::repo::TestRepo;
use crate::support::{User, control_plane, git};

fn environment(env: &str) -> String {
    format!(
        "apiVersion: tenantsync.io/v1alpha1\nkind: Environment\nmetadata:\n  name: {env}\nspec:\n  base: base\n  ingress:\n    domain: test.example.com\n  syncPolicy:\n    rollback: true\n    healthDeadline: 20s\n"
    )
}

fn workspace(name: &str, replicas: u32) -> String {
    format!(
        "apiVersion: tenantsync.io/v1alpha1\nkind: Workspace\nmetadata: {{name: {name}}}\nspec:\n  fhirServices:\n    - name: api\n      replicas: {replicas}\n"
    )
}

fn commit(repo: &TestRepo, message: &str) -> String {
    git(repo.path(), &["add", "-A"]);
    git(repo.path(), &["commit", "-qm", message]);
    git(repo.path(), &["rev-parse", "HEAD"])
}

async fn deployments(ns: &str) -> Api<Deployment> {
    Api::namespaced(control_plane().client(User::Admin).await, ns)
}

/// The (generation, spec replicas) of the namespace's one Deployment.
async fn deployment(ns: &str) -> Option<(String, i64, i32)> {
    let list = deployments(ns)
        .await
        .list(&ListParams::default())
        .await
        .ok()?;
    let d = list.items.first()?;
    Some((
        d.metadata.name.clone()?,
        d.metadata.generation?,
        d.spec.as_ref()?.replicas?,
    ))
}

/// Writes the status a deployment controller would: every replica of the
/// current generation available (`healthy`), or the rollout past its
/// progress deadline.
async fn drive(ns: &str, healthy: bool) {
    let (name, generation, replicas) = deployment(ns).await.expect("a deployment");
    let status = if healthy {
        json!({
            "observedGeneration": generation, "replicas": replicas,
            "updatedReplicas": replicas, "readyReplicas": replicas,
            "availableReplicas": replicas,
        })
    } else {
        json!({
            "observedGeneration": generation, "replicas": replicas,
            "updatedReplicas": replicas,
            "conditions": [{
                "type": "Progressing", "status": "False",
                "reason": "ProgressDeadlineExceeded",
                "message": format!("ReplicaSet \"{name}-7f9c\" has timed out progressing."),
            }],
        })
    };
    deployments(ns)
        .await
        .patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(&json!({ "status": status })),
        )
        .await
        .expect("patch status");
}

pub(crate) async fn inventory(env: &str) -> Option<Inventory> {
    let api: Api<ConfigMap> =
        Api::namespaced(control_plane().client(User::Admin).await, SYSTEM_NAMESPACE);
    let cm = api.get_opt(&name_of(env)).await.ok()??;
    Inventory::from_config_map(&cm).ok()
}

async fn replicas(ns: &str) -> Option<i32> {
    deployment(ns).await.map(|(_, _, r)| r)
}

#[tokio::test]
async fn a_degraded_workspace_is_rolled_back_alone_and_its_revision_not_retried() {
    let repo = TestRepo::new("rollback-degraded");
    let env = repo.env.clone();
    // Only the test's own workspaces: alpha and beta.
    std::fs::remove_dir_all(repo.path().join("environments/base/workspaces")).expect("rm");
    let (alpha, beta) = (repo.namespace("alpha"), repo.namespace("beta"));
    repo.write("environment.yaml", &environment(&env));
    repo.write("workspaces/alpha.yaml", &workspace("alpha", 1));
    repo.write("workspaces/beta.yaml", &workspace("beta", 1));
    git(repo.path(), &["init", "-q", "-b", "main"]);
    let first = commit(&repo, "alpha and beta with one replica");
    let logs = tempfile::tempdir().expect("tempdir");
    let log = logs.path().join("daemon.log");
    let port = free_port();
    let _daemon = start_daemon(&repo, port, &log);
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();

    // 1. The first revision is applied; both workspaces become Healthy and
    //    the inventory records it as their last healthy revision.
    wait_for("the first revision", Duration::from_secs(60), async || {
        deployment(&alpha).await.is_some() && deployment(&beta).await.is_some()
    })
    .await;
    drive(&alpha, true).await;
    drive(&beta, true).await;
    wait_for(
        "first recorded healthy",
        Duration::from_secs(30),
        async || {
            inventory(&env).await.is_some_and(|i| {
                i.healthy_revision("alpha") == Some(first.as_str())
                    && i.healthy_revision("beta") == Some(first.as_str())
            })
        },
    )
    .await;

    // 2. The second revision changes both; alpha goes Degraded, beta
    //    becomes Healthy.
    repo.write("workspaces/alpha.yaml", &workspace("alpha", 2));
    repo.write("workspaces/beta.yaml", &workspace("beta", 2));
    let second = commit(&repo, "two replicas each");
    push(port, &second).await;
    wait_for("the second revision", Duration::from_secs(30), async || {
        replicas(&alpha).await == Some(2) && replicas(&beta).await == Some(2)
    })
    .await;
    drive(&beta, true).await;
    drive(&alpha, false).await;

    // 3. Only alpha is rolled back, to the first revision; status says so.
    let s = wait_for_status(port, &env, "RolledBack", Duration::from_secs(40), &log_text).await;
    assert_eq!(
        replicas(&alpha).await,
        Some(1),
        "alpha back at the first revision"
    );
    assert_eq!(
        replicas(&beta).await,
        Some(2),
        "beta keeps the second revision"
    );
    let failed = &s["failedHealth"];
    assert_eq!(failed["revision"], second.as_str(), "{s}");
    assert_eq!(failed["rolledBack"]["alpha"], first.as_str(), "{s}");
    assert!(failed["workspaces"].get("beta").is_none(), "{s}");
    let reasons = failed["workspaces"]["alpha"].to_string();
    assert!(
        reasons.contains("Degraded") && reasons.contains("ProgressDeadlineExceeded"),
        "{s}"
    );
    assert_eq!(s["lastErrorReason"], "health", "{s}");
    assert_eq!(
        metric(
            port,
            &format!("tenantsync_sync_status{{environment=\"{env}\",status=\"RolledBack\"}}")
        )
        .await,
        Some(1.0)
    );
    assert_eq!(
        metric(
            port,
            &format!("tenantsync_rollbacks_total{{environment=\"{env}\"}}")
        )
        .await,
        Some(1.0)
    );
    let inv = inventory(&env).await.expect("inventory");
    assert_eq!(inv.revision.as_deref(), Some(second.as_str()));
    assert_eq!(inv.applied_revision("alpha"), Some(first.as_str()));
    assert_eq!(inv.applied_revision("beta"), Some(second.as_str()));
    assert_eq!(inv.healthy_revision("beta"), Some(second.as_str()));
    assert_eq!(inv.healthy_revision("alpha"), Some(first.as_str()));
    let shown = || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tenantsync"))
            .args([
                "status",
                "--env",
                &env,
                "--context",
                "admin",
                "--kubeconfig",
            ])
            .arg(control_plane().kubeconfig())
            .output()
            .expect("tenantsync status");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    wait_for(
        "tenantsync status to say RolledBack",
        Duration::from_secs(10),
        async || shown().contains("RolledBack"),
    )
    .await;
    let text = shown();
    assert!(
        text.contains("failed health:") && text.contains(&format!("alpha to {first}")),
        "{text}"
    );
    let events = crate::change_control_cluster::events_of(&env).await;
    assert!(
        events.iter().any(|(reason, message)| reason == "RolledBack"
            && message.contains("alpha")
            && message.contains(&first)),
        "{events:?}"
    );

    // 4. Later polls and self-heal (every second) do not re-apply the bad
    //    revision to alpha, even when told to read it again.
    let again =
        format!(r#"{{"ref":"refs/heads/main","checkout_sha":"{second}","note":"read again"}}"#);
    let accepted = crate::daemon_e2e::http(
        port,
        "POST",
        "/hooks/git",
        &[("X-Gitlab-Token", "change-control-webhook-secret")],
        &again,
    )
    .await
    .expect("hook");
    assert!(accepted.starts_with("HTTP/1.1 202"), "{accepted}");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(replicas(&alpha).await, Some(1), "{}", log_text());
    let s = status(port, &env).await.expect("status");
    assert_eq!(s["syncStatus"], "RolledBack", "{s}");

    // 5. A newer commit is applied normally (alpha at three replicas); left
    //    Progressing past the deadline, alpha is rolled back again, to the
    //    last revision under which it was Healthy.
    repo.write("workspaces/alpha.yaml", &workspace("alpha", 3));
    let third = commit(&repo, "alpha with three replicas");
    push(port, &third).await;
    wait_for("the third revision", Duration::from_secs(30), async || {
        replicas(&alpha).await == Some(3)
            && status(port, &env).await.is_some_and(|s| {
                s["lastAppliedRevision"] == third.as_str() && s["failedHealth"].is_null()
            })
    })
    .await;
    let s = wait_for_status(port, &env, "RolledBack", Duration::from_secs(60), &log_text).await;
    assert_eq!(s["failedHealth"]["revision"], third.as_str(), "{s}");
    assert_eq!(
        s["failedHealth"]["rolledBack"]["alpha"],
        first.as_str(),
        "{s}"
    );
    assert!(
        s["failedHealth"]["workspaces"]["alpha"]
            .to_string()
            .contains("Progressing"),
        "{s}"
    );
    assert_eq!(replicas(&alpha).await, Some(1));
    assert_eq!(
        replicas(&beta).await,
        Some(2),
        "beta untouched by the third"
    );
    let inv = inventory(&env).await.expect("inventory");
    assert_eq!(
        inv.healthy_revision("beta"),
        Some(third.as_str()),
        "unchanged and healthy"
    );
}

async fn wait_for_status(
    port: u16,
    env: &str,
    want: &str,
    timeout: Duration,
    log: &dyn Fn() -> String,
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let s = status(port, env).await;
        if let Some(s) = s.as_ref().filter(|s| s["syncStatus"] == want) {
            return s.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {want} after {timeout:?}: {s:?}\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn without_rollback_failed_health_is_reported_and_nothing_is_rolled_back() {
    let repo = TestRepo::new("rollback-off");
    let env = repo.env.clone();
    std::fs::remove_dir_all(repo.path().join("environments/base/workspaces")).expect("rm");
    let alpha = repo.namespace("alpha");
    repo.write(
        "environment.yaml",
        &environment(&env).replace("    rollback: true\n", ""),
    );
    repo.write("workspaces/alpha.yaml", &workspace("alpha", 1));
    git(repo.path(), &["init", "-q", "-b", "main"]);
    let first = commit(&repo, "alpha with one replica");
    let logs = tempfile::tempdir().expect("tempdir");
    let log = logs.path().join("daemon.log");
    let port = free_port();
    let _daemon = start_daemon(&repo, port, &log);
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_for("the first revision", Duration::from_secs(60), async || {
        deployment(&alpha).await.is_some()
    })
    .await;
    drive(&alpha, true).await;
    wait_for(
        "first recorded healthy",
        Duration::from_secs(30),
        async || {
            inventory(&env)
                .await
                .is_some_and(|i| i.healthy_revision("alpha") == Some(first.as_str()))
        },
    )
    .await;
    repo.write("workspaces/alpha.yaml", &workspace("alpha", 2));
    let second = commit(&repo, "alpha with two replicas");
    push(port, &second).await;
    wait_for("the second revision", Duration::from_secs(30), async || {
        replicas(&alpha).await == Some(2)
    })
    .await;
    drive(&alpha, false).await;
    let s = wait_for_status(port, &env, "Failed", Duration::from_secs(40), &log_text).await;
    assert_eq!(s["lastErrorReason"], "health", "{s}");
    assert_eq!(s["failedHealth"]["revision"], second.as_str(), "{s}");
    assert_eq!(s["failedHealth"]["left"][0], "alpha", "{s}");
    assert!(
        s["failedHealth"]["rolledBack"]
            .as_object()
            .is_none_or(|m| m.is_empty()),
        "{s}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(replicas(&alpha).await, Some(2), "nothing rolled back");
    let inv = inventory(&env).await.expect("inventory");
    assert_eq!(inv.applied_revision("alpha"), Some(second.as_str()));
    assert_eq!(inv.healthy_revision("alpha"), Some(first.as_str()));
    let events = crate::change_control_cluster::events_of(&env).await;
    assert!(
        events
            .iter()
            .any(|(reason, _)| reason == "HealthCheckFailed"),
        "{events:?}"
    );
}

/// Review of issue 16: the health watch lived only in the daemon's memory,
/// so a daemon killed after applying a revision, before judging it, was
/// followed by one that never judged it: a workspace going Degraded
/// meanwhile was never rolled back. Now the inventory records since when
/// each workspace is judged, and the next daemon watches every workspace
/// not known Healthy at its applied revision, for the deadline left.
#[tokio::test]
async fn a_daemon_killed_mid_health_watch_is_followed_by_one_that_still_rolls_the_degraded_workspace_back()
 {
    let repo = TestRepo::new("rollback-restart");
    let env = repo.env.clone();
    std::fs::remove_dir_all(repo.path().join("environments/base/workspaces")).expect("rm");
    let (alpha, beta) = (repo.namespace("alpha"), repo.namespace("beta"));
    repo.write("environment.yaml", &environment(&env));
    repo.write("workspaces/alpha.yaml", &workspace("alpha", 1));
    repo.write("workspaces/beta.yaml", &workspace("beta", 1));
    git(repo.path(), &["init", "-q", "-b", "main"]);
    let first = commit(&repo, "alpha and beta with one replica");
    let logs = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let daemon = start_daemon(&repo, port, &logs.path().join("first.log"));
    wait_for("the first revision", Duration::from_secs(60), async || {
        deployment(&alpha).await.is_some() && deployment(&beta).await.is_some()
    })
    .await;
    drive(&alpha, true).await;
    drive(&beta, true).await;
    wait_for(
        "first recorded healthy",
        Duration::from_secs(30),
        async || {
            inventory(&env).await.is_some_and(|i| {
                i.healthy_revision("alpha") == Some(first.as_str())
                    && i.healthy_revision("beta") == Some(first.as_str())
            })
        },
    )
    .await;

    // The second revision is applied and its judgement recorded as begun;
    // the daemon is killed before either workspace says anything.
    repo.write("workspaces/alpha.yaml", &workspace("alpha", 2));
    repo.write("workspaces/beta.yaml", &workspace("beta", 2));
    let second = commit(&repo, "two replicas each");
    push(port, &second).await;
    wait_for(
        "the second revision applied and being judged",
        Duration::from_secs(30),
        async || {
            inventory(&env).await.is_some_and(|i| {
                ["alpha", "beta"].iter().all(|ws| {
                    i.applied_revision(ws) == Some(second.as_str())
                        && i.workspaces[*ws]
                            .judging
                            .as_ref()
                            .is_some_and(|j| j.revision == second)
                })
            })
        },
    )
    .await;
    drop(daemon);
    drive(&beta, true).await;
    drive(&alpha, false).await;

    // The next daemon judges them: beta Healthy, alpha rolled back.
    let port = free_port();
    let log = logs.path().join("second.log");
    let _second = start_daemon(&repo, port, &log);
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    let s = wait_for_status(port, &env, "RolledBack", Duration::from_secs(60), &log_text).await;
    assert_eq!(s["failedHealth"]["revision"], second.as_str(), "{s}");
    assert_eq!(
        s["failedHealth"]["rolledBack"]["alpha"],
        first.as_str(),
        "{s}"
    );
    assert!(s["failedHealth"]["workspaces"].get("beta").is_none(), "{s}");
    assert_eq!(replicas(&alpha).await, Some(1), "alpha back at the first");
    assert_eq!(replicas(&beta).await, Some(2), "beta keeps the second");
    wait_for(
        "beta recorded healthy",
        Duration::from_secs(10),
        async || {
            inventory(&env).await.is_some_and(|i| {
                i.healthy_revision("beta") == Some(second.as_str())
                    && i.applied_revision("alpha") == Some(first.as_str())
            })
        },
    )
    .await;
}
