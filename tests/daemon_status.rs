//! The daemon's status never lies: a revision blocked by the mass-prune
//! guard is reported by `/status`, `tenantsync status` and `/metrics` alike
//! while drift of the last applied revision is still healed; a daemon
//! killed mid-reconcile leaves a status shown as stale, and a CLI `sync`
//! waits for the environment's lock the dead daemon held.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::Api;

use crate::daemon_e2e::{Guard, free_port, http, status, wait_for};
use crate::support::repo::TestRepo;
use crate::support::{User, control_plane, git};

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn start_daemon(repo: &TestRepo, port: u16, log: &Path, extra: &[&str]) -> Guard {
    let child = Command::new(env!("CARGO_BIN_EXE_tenantsync"))
        .args([
            "run",
            "--env",
            &repo.env,
            "--interval",
            "1s",
            "--drift-interval",
            "2s",
        ])
        .arg("--repo")
        .arg(repo.path())
        .arg(format!("--listen=127.0.0.1:{port}"))
        .arg("--kubeconfig")
        .arg(control_plane().kubeconfig())
        .args(["--context", "admin"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("log file"))
        .spawn()
        .expect("tenantsync run");
    Guard(child)
}

fn shown_status(repo: &TestRepo) -> String {
    shown_status_as(repo, "readonly")
}

fn shown_status_as(repo: &TestRepo, context: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tenantsync"))
        .args([
            "status",
            "--env",
            &repo.env,
            "--context",
            context,
            "--kubeconfig",
        ])
        .arg(control_plane().kubeconfig())
        .output()
        .expect("tenantsync status");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn workspace(name: &str) -> String {
    format!(
        "apiVersion: tenantsync.io/v1alpha1\nkind: Workspace\nmetadata:\n  name: {name}\nspec:\n  fhirServices:\n    - name: api\n"
    )
}

#[tokio::test]
async fn a_blocked_revision_is_reported_everywhere_and_drift_of_the_last_applied_one_is_healed() {
    let repo = TestRepo::new("status-blocked");
    let port = free_port();
    let log = tempfile::NamedTempFile::new().expect("log");
    let mut daemon = start_daemon(&repo, port, log.path(), &["--prune", "--self-heal"]);
    let env = repo.env.clone();
    wait_for("the first sync", Duration::from_secs(60), async || {
        status(port, &env)
            .await
            .is_some_and(|s| s["syncStatus"] == "Synced" && s["lastAppliedRevision"].is_string())
    })
    .await;

    // A revision removing a workspace: the guard blocks it.
    repo.write(
        "workspaces/woodgrove.yaml",
        "apiVersion: tenantsync.io/v1alpha1\nkind: WorkspacePatch\nmetadata: {name: woodgrove}\n$patch: delete\n",
    );
    wait_for(
        "the block to be reported",
        Duration::from_secs(30),
        async || {
            status(port, &env).await.is_some_and(|s| {
                s["syncStatus"] == "Failed"
                    && s["lastErrorReason"] == "guard"
                    && s["lastError"].as_str().is_some_and(|e| {
                        e.contains("is blocked") && e.contains("--allow-mass-prune")
                    })
            })
        },
    )
    .await;
    wait_for(
        "tenantsync status to agree",
        Duration::from_secs(15),
        async || {
            let shown = shown_status(&repo);
            shown.contains("sync status:        Failed") && shown.contains("is blocked")
        },
    )
    .await;
    // And an Event on the inventory says why.
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(
        control_plane().client(User::Admin).await,
        tenantsync::sync::inventory::SYSTEM_NAMESPACE,
    );
    let inventory_name = tenantsync::sync::inventory::name_of(&env);
    wait_for("a SyncFailed Event", Duration::from_secs(15), async || {
        events.list(&Default::default()).await.is_ok_and(|l| {
            l.items.iter().any(|e| {
                e.reason.as_deref() == Some("SyncFailed")
                    && e.involved_object.name.as_deref() == Some(inventory_name.as_str())
                    && e.message
                        .as_deref()
                        .is_some_and(|m| m.contains("is blocked"))
            })
        })
    })
    .await;
    let metrics = http(port, "GET", "/metrics", &[], "")
        .await
        .expect("metrics");
    assert!(
        metrics.contains(&format!(
            "tenantsync_sync_status{{environment=\"{env}\",status=\"Failed\"}} 1"
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "tenantsync_reconcile_errors_total{{environment=\"{env}\",reason=\"guard\"}}"
        )),
        "{metrics}"
    );

    // Meanwhile a `kubectl scale` of the last applied revision is healed.
    let ns = repo.namespace("contoso");
    let deployments: Api<Deployment> =
        Api::namespaced(control_plane().client(User::Admin).await, &ns);
    let before = deployments
        .get("fhir-main")
        .await
        .expect("deployment")
        .spec
        .and_then(|s| s.replicas);
    let scale = control_plane()
        .kubectl()
        .args([
            "--context",
            "admin",
            "-n",
            &ns,
            "scale",
            "deployment/fhir-main",
            "--replicas=7",
        ])
        .output()
        .expect("kubectl");
    assert!(scale.status.success(), "{}", text(&scale));
    wait_for(
        "the scale to be healed",
        Duration::from_secs(30),
        async || {
            deployments
                .get("fhir-main")
                .await
                .ok()
                .and_then(|d| d.spec?.replicas)
                == before
        },
    )
    .await;
    wait_for(
        "the heal to be logged",
        Duration::from_secs(15),
        async || {
            std::fs::read_to_string(log.path())
                .unwrap_or_default()
                .contains("drift of the last applied revision while a newer one is blocked")
        },
    )
    .await;
    // Still blocked, and said so; the drift metric is current drift, as
    // /status reports it (healed: 0).
    let s = status(port, &env).await.expect("status");
    assert_eq!(s["syncStatus"], "Failed", "{s}");
    wait_for(
        "the drift metric to be current",
        Duration::from_secs(10),
        async || {
            let metrics = http(port, "GET", "/metrics", &[], "")
                .await
                .unwrap_or_default();
            let s = status(port, &env).await.unwrap_or_default();
            s["workspaces"]["contoso"]["driftedObjects"] == 0
                && metrics.contains(&format!(
                    "tenantsync_drifted_objects{{environment=\"{env}\",workspace=\"contoso\"}} 0"
                ))
        },
    )
    .await;
    let code = daemon.terminate().await;
    assert!(code.success(), "exit status {code}");
}

#[tokio::test]
async fn a_daemon_killed_mid_reconcile_is_shown_as_stale_and_its_lock_expires_sigterm_finishes_it()
{
    let repo = TestRepo::new("status-killed");
    let port = free_port();
    let log = tempfile::NamedTempFile::new().expect("log");
    let mut daemon = start_daemon(&repo, port, log.path(), &[]);
    let env = repo.env.clone();
    wait_for("the first sync", Duration::from_secs(60), async || {
        status(port, &env)
            .await
            .is_some_and(|s| s["syncStatus"] == "Synced" && s["lastAppliedRevision"].is_string())
    })
    .await;
    // A large revision: the daemon is Syncing it for a while.
    for i in 0..150 {
        repo.write(
            &format!("workspaces/ws-{i:03}.yaml"),
            &workspace(&format!("ws-{i:03}")),
        );
    }
    wait_for("Syncing to be shown", Duration::from_secs(60), async || {
        shown_status(&repo).contains("sync status:        Syncing folder-")
    })
    .await;
    let killed = Command::new("kill")
        .args(["-KILL", &daemon.0.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let _ = daemon.0.wait();
    // Never `Synced` while the sync is not done; stale once the heartbeat
    // is older than the daemon promised (3 intervals + 15 s).
    assert!(!shown_status(&repo).contains("sync status:        Synced"));
    wait_for(
        "the status to be shown as stale",
        Duration::from_secs(40),
        async || {
            let shown = shown_status(&repo);
            shown.contains("sync status:        Unknown (stale: the daemon has not reported for")
                && shown.contains("it last reported Syncing")
        },
    )
    .await;
    // A CLI sync takes over the dead daemon's lock (expired) and converges.
    let out = repo.run("sync", "admin", &["--lock-timeout", "60s"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let plan = repo.run("plan", "admin", &["--detailed-exitcode"]);
    assert_eq!(plan.status.code(), Some(0), "{}", text(&plan));
    let shown = shown_status(&repo);
    assert!(shown.contains("last CLI sync:"), "{shown}");

    // SIGTERM, by contrast, lets the reconcile in flight finish: a new
    // image for every FHIR server, SIGTERM while most are still to be
    // updated, and every one is updated before the daemon exits 0.
    let port = free_port();
    let mut daemon = start_daemon(&repo, port, log.path(), &[]);
    wait_for(
        "the daemon's first reconcile",
        Duration::from_secs(60),
        async || {
            status(port, &env)
                .await
                .is_some_and(|s| s["syncStatus"] == "Synced")
        },
    )
    .await;
    repo.write(
        "environment.yaml",
        &format!("apiVersion: tenantsync.io/v1alpha1\nkind: Environment\nmetadata:\n  name: {env}\nspec:\n  base: base\n  ingress:\n    domain: test.example.com\n  images:\n    fhir: {{tag: \"9.9.9\"}}\n"),
    );
    let deployments: Api<Deployment> = Api::all(control_plane().client(User::Admin).await);
    let old_images = async || {
        deployments
            .list(
                &kube::api::ListParams::default()
                    .labels(&format!("tenantsync.io/environment={env}")),
            )
            .await
            .expect("list")
            .items
            .iter()
            .filter(|d| {
                d.spec.as_ref().is_some_and(|s| {
                    s.template.spec.as_ref().is_some_and(|p| {
                        p.containers.iter().any(|c| {
                            c.image.as_deref().is_some_and(|i| {
                                i.starts_with("healthplatform.azurecr.io/fhir-server:")
                                    && !i.ends_with(":9.9.9")
                            })
                        })
                    })
                })
            })
            .count()
    };
    let total = old_images().await;
    assert!(total > 150, "{total}");
    let mut remaining = total;
    wait_for(
        "the update to be under way",
        Duration::from_secs(60),
        async || {
            remaining = old_images().await;
            remaining < total
        },
    )
    .await;
    assert!(
        remaining > 20,
        "the update was nearly done already ({remaining} left)"
    );
    let terminated = Command::new("kill")
        .args(["-TERM", &daemon.0.id().to_string()])
        .status()
        .expect("kill");
    assert!(terminated.success());
    let exited = wait_for("the daemon to exit", Duration::from_secs(120), async || {
        daemon.0.try_wait().expect("wait").is_some()
    })
    .await;
    let code = daemon.0.wait().expect("wait");
    assert!(code.success(), "exit status {code} after {exited:?}");
    assert_eq!(
        old_images().await,
        0,
        "SIGTERM cut the reconcile in flight short"
    );
    let plan = repo.run("plan", "admin", &["--detailed-exitcode"]);
    assert_eq!(plan.status.code(), Some(0), "{}", text(&plan));
    // And the environment's lock was released.
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> = Api::namespaced(
        control_plane().client(User::Admin).await,
        tenantsync::sync::inventory::SYSTEM_NAMESPACE,
    );
    let lock = leases
        .get(&format!("tenantsync-sync-{env}"))
        .await
        .expect("the lock's Lease");
    assert_eq!(lock.spec.and_then(|s| s.holder_identity), None);
}

#[tokio::test]
async fn a_cli_sync_refuses_while_a_daemon_holds_the_environment() {
    let repo = TestRepo::new("status-daemon-lock");
    let port = free_port();
    let log = tempfile::NamedTempFile::new().expect("log");
    let mut daemon = start_daemon(&repo, port, log.path(), &[]);
    let env = repo.env.clone();
    wait_for("the first sync", Duration::from_secs(60), async || {
        status(port, &env)
            .await
            .is_some_and(|s| s["syncStatus"] == "Synced")
    })
    .await;
    // A quiet, successful daemon still shows it is alive: the last
    // successful reconcile's time moves with every no-op reconcile.
    let last_ok = async || {
        let metrics = http(port, "GET", "/metrics", &[], "")
            .await
            .unwrap_or_default();
        let prefix = format!(
            "tenantsync_last_successful_reconcile_timestamp_seconds{{environment=\"{env}\"}} "
        );
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|v| v.trim().parse::<i64>().ok())
    };
    let first = last_ok().await.expect("the metric");
    wait_for(
        "the timestamp to move",
        Duration::from_secs(10),
        async || last_ok().await.is_some_and(|t| t > first),
    )
    .await;
    let shown = shown_status_as(&repo, "admin");
    assert!(
        shown.contains("locked by:          tenantsync run "),
        "{shown}"
    );
    let out = repo.run("sync", "admin", &["--lock-timeout", "3s"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "environment {env} is being synced by tenantsync run "
        )) && err.contains(" since "),
        "{err}"
    );
    // Once the daemon stops (releasing the lock), the CLI may sync.
    let code = daemon.terminate().await;
    assert!(code.success(), "exit status {code}");
    let out = repo.run("sync", "admin", &["--lock-timeout", "0s"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[tokio::test]
async fn after_a_restart_drift_of_the_last_applied_git_revision_is_healed_while_a_newer_one_is_blocked()
 {
    let repo = TestRepo::new("status-restart");
    git(repo.path(), &["init", "-q"]);
    git(repo.path(), &["add", "-A"]);
    git(repo.path(), &["commit", "-qm", "first"]);
    let first = git(repo.path(), &["rev-parse", "HEAD"]);
    let flags = ["--branch", "main", "--prune", "--self-heal"];
    let port = free_port();
    let log = tempfile::NamedTempFile::new().expect("log");
    let mut daemon = start_daemon(&repo, port, log.path(), &flags);
    let env = repo.env.clone();
    wait_for("the first sync", Duration::from_secs(60), async || {
        status(port, &env)
            .await
            .is_some_and(|s| s["lastAppliedRevision"] == first.as_str())
    })
    .await;
    repo.write(
        "workspaces/woodgrove.yaml",
        "apiVersion: tenantsync.io/v1alpha1\nkind: WorkspacePatch\nmetadata: {name: woodgrove}\n$patch: delete\n",
    );
    git(repo.path(), &["add", "-A"]);
    git(repo.path(), &["commit", "-qm", "remove woodgrove"]);
    let blocked = |port: u16| {
        let env = env.clone();
        async move {
            status(port, &env)
                .await
                .is_some_and(|s| s["syncStatus"] == "Failed" && s["lastErrorReason"] == "guard")
        }
    };
    wait_for("the block", Duration::from_secs(30), async || {
        blocked(port).await
    })
    .await;
    let code = daemon.terminate().await;
    assert!(code.success(), "exit status {code}");

    // A new daemon never applied anything itself: it finds the last applied
    // revision in the inventory and keeps healing it.
    let port = free_port();
    let log = tempfile::NamedTempFile::new().expect("log");
    let mut daemon = start_daemon(&repo, port, log.path(), &flags);
    wait_for(
        "the block, after the restart",
        Duration::from_secs(30),
        async || blocked(port).await,
    )
    .await;
    let ns = repo.namespace("contoso");
    let deployments: Api<Deployment> =
        Api::namespaced(control_plane().client(User::Admin).await, &ns);
    let before = deployments
        .get("fhir-main")
        .await
        .expect("deployment")
        .spec
        .and_then(|s| s.replicas);
    let scale = control_plane()
        .kubectl()
        .args([
            "--context",
            "admin",
            "-n",
            &ns,
            "scale",
            "deployment/fhir-main",
            "--replicas=6",
        ])
        .output()
        .expect("kubectl");
    assert!(scale.status.success(), "{}", text(&scale));
    wait_for(
        "the scale to be healed",
        Duration::from_secs(30),
        async || {
            deployments
                .get("fhir-main")
                .await
                .ok()
                .and_then(|d| d.spec?.replicas)
                == before
        },
    )
    .await;
    let code = daemon.terminate().await;
    assert!(code.success(), "exit status {code}");
}
