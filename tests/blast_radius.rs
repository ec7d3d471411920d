//! Issue 13, per-workspace blast radius, against the real control plane:
//! `sync --workspace` touches only the selected workspaces, `sync` refuses
//! an environment with an invalid workspace, and `sync --skip-invalid`
//! applies the valid ones while the invalid one keeps its last applied
//! state (not updated, not pruned, still inventoried).

use std::process::Output;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::Api;
use serde_json::Value;

use crate::support::repo::TestRepo;
use crate::support::{User, control_plane};

fn sync(repo: &TestRepo, extra: &[&str]) -> (Output, Value) {
    let mut args = vec!["--output", "json"];
    args.extend_from_slice(extra);
    let out = repo.run("sync", "admin", &args);
    let report = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out, report)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ids(report: &Value, key: &str) -> Vec<String> {
    report[key]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

async fn replicas(namespace: &str, name: &str) -> Option<i32> {
    let api: Api<Deployment> =
        Api::namespaced(control_plane().client(User::Admin).await, namespace);
    api.get_opt(name)
        .await
        .expect("get")
        .and_then(|d| d.spec?.replicas)
}

async fn inventoried(repo: &TestRepo) -> Vec<String> {
    let api: Api<ConfigMap> = Api::namespaced(
        control_plane().client(User::Admin).await,
        tenantsync::inventory::SYSTEM_NAMESPACE,
    );
    let cm = api
        .get(&tenantsync::inventory::name_of(&repo.env))
        .await
        .expect("inventory");
    tenantsync::inventory::Inventory::from_config_map(&cm)
        .expect("valid inventory")
        .objects
        .iter()
        .map(|r| r.id())
        .collect()
}

fn patch(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: tenantsync.io/v1alpha1\nkind: WorkspacePatch\nmetadata:\n  name: {name}\nspec:\n{spec}"
    )
}

#[tokio::test]
async fn sync_workspace_applies_and_prunes_only_the_selected_workspace() {
    let repo = TestRepo::new("blast-select");
    let (out, _) = sync(&repo, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let (contoso, fabrikam) = (repo.namespace("contoso"), repo.namespace("fabrikam"));

    // contoso: one more replica and no DICOM service; fabrikam: one more
    // replica and one FHIR service fewer.
    repo.write(
        "workspaces/contoso.yaml",
        &patch(
            "contoso",
            "  fhirServices:\n    - {name: main, replicas: 2}\n  dicomServices:\n    - {name: imaging, $patch: delete}\n",
        ),
    );
    repo.write(
        "workspaces/fabrikam.yaml",
        &patch(
            "fabrikam",
            "  fhirServices:\n    - {name: records, replicas: 3}\n    - {name: research, $patch: delete}\n",
        ),
    );
    let plan = repo.run(
        "plan",
        "admin",
        &["--workspace", "contoso", "--output", "json"],
    );
    assert_eq!(plan.status.code(), Some(0), "{}", stderr(&plan));
    let plan: Value = serde_json::from_slice(&plan.stdout).expect("plan JSON");
    let changes = plan["changes"].as_array().expect("changes");
    assert!(!changes.is_empty());
    assert!(
        changes.iter().all(|c| c["namespace"] == contoso.as_str()
            || (c["kind"] == "Namespace" && c["name"] == contoso.as_str())),
        "{changes:?}"
    );

    // The prune guard counts within the selection: contoso's DICOM service
    // is over a quarter of contoso's objects.
    let (out, _) = sync(&repo, &["--prune", "--workspace", "contoso"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("inventoried objects"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        replicas(&contoso, "fhir-main").await,
        Some(1),
        "nothing applied"
    );

    let (out, report) = sync(
        &repo,
        &["--prune", "--allow-mass-prune", "--workspace", "contoso"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let pruned = ids(&report, "pruned");
    assert!(
        pruned.contains(&format!("Deployment/{contoso}/dicom-imaging")),
        "{pruned:?}"
    );
    assert!(pruned.iter().all(|id| id.contains(&contoso)), "{pruned:?}");
    assert_eq!(replicas(&contoso, "fhir-main").await, Some(2));
    // fabrikam untouched: not updated, its removed service not pruned, and
    // still in the inventory.
    assert_eq!(replicas(&fabrikam, "fhir-records").await, Some(1));
    assert_eq!(replicas(&fabrikam, "fhir-research").await, Some(1));
    let inventory = inventoried(&repo).await;
    assert!(inventory.contains(&format!("Deployment/{fabrikam}/fhir-research")));
    assert!(!inventory.contains(&format!("Deployment/{contoso}/dicom-imaging")));

    // drift sees only the selection: contoso is in step, fabrikam is not.
    let drift = |ws: &str| {
        repo.run(
            "drift",
            "admin",
            &["--workspace", ws, "--detailed-exitcode", "--output", "json"],
        )
    };
    let out = drift("contoso");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = drift("fabrikam");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).expect("drift JSON");
    let changed: Vec<&Value> = report["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .filter(|c| c["action"] != "unchanged")
        .collect();
    assert!(!changed.is_empty());
    assert!(
        changed.iter().all(|c| c["namespace"] == fabrikam.as_str()),
        "{changed:?}"
    );

    // An unknown workspace is refused naming the known ones.
    let (out, _) = sync(&repo, &["--workspace", "contosso"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(
            "has no workspace `contosso` (its workspaces: contoso, fabrikam, northwind, woodgrove)"
        ),
        "{}",
        stderr(&out)
    );
}

#[tokio::test]
async fn sync_refuses_an_invalid_workspace_and_skip_invalid_applies_the_others() {
    let repo = TestRepo::new("blast-skip");
    let (out, _) = sync(&repo, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let (contoso, fabrikam) = (repo.namespace("contoso"), repo.namespace("fabrikam"));

    // fabrikam's patch breaks the schema and drops a service; contoso's is fine.
    repo.write(
        "workspaces/fabrikam.yaml",
        &patch(
            "fabrikam",
            "  fhirServices:\n    - {name: records, replicas: many}\n    - {name: research, $patch: delete}\n",
        ),
    );
    repo.write(
        "workspaces/contoso.yaml",
        &patch(
            "contoso",
            "  fhirServices:\n    - {name: main, replicas: 2}\n",
        ),
    );
    let position = format!("environments/{}/workspaces/fabrikam.yaml:7:33", repo.env);

    let (out, _) = sync(&repo, &["--prune"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains(&position), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("sync --skip-invalid"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        replicas(&contoso, "fhir-main").await,
        Some(1),
        "nothing applied"
    );

    let (out, report) = sync(&repo, &["--prune", "--skip-invalid"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("skipped workspace fabrikam: 1 error(s)"),
        "{err}"
    );
    assert!(err.contains(&position), "{err}");
    assert!(
        err.contains("1 invalid workspace(s) skipped: fabrikam"),
        "{err}"
    );
    assert_eq!(
        ids(&report, "updated"),
        [format!("Deployment/{contoso}/fhir-main")]
    );
    assert!(ids(&report, "pruned").is_empty(), "{report}");
    assert_eq!(report["skipped"][0]["workspace"], "fabrikam", "{report}");
    assert_eq!(report["skipped"][0]["errors"][0]["line"], 7, "{report}");
    assert_eq!(replicas(&contoso, "fhir-main").await, Some(2));
    assert_eq!(replicas(&fabrikam, "fhir-research").await, Some(1));
    assert!(
        inventoried(&repo)
            .await
            .contains(&format!("Deployment/{fabrikam}/fhir-research"))
    );
    // The recorded status does not say Synced while a workspace is held
    // (it did: `tenantsync status` showed Synced with no error).
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_tenantsync"))
        .args(["status", "--env", &repo.env, "--context", "admin"])
        .args(["--output", "json", "--kubeconfig"])
        .arg(control_plane().kubeconfig())
        .output()
        .expect("tenantsync status");
    assert_eq!(status.status.code(), Some(0), "{}", stderr(&status));
    let status: Value = serde_json::from_slice(&status.stdout).expect("status JSON");
    assert_eq!(status["status.syncStatus"], "Failed", "{status}");
    let error = status["status.lastError"].as_str().unwrap_or_default();
    assert!(
        error.starts_with(
            "1 invalid workspace(s) skipped, held at their last applied state: fabrikam"
        ) && error.contains(&position),
        "{status}"
    );
}

/// The daemon on a local Git repository: one commit breaks workspace
/// contoso's file and changes fabrikam's replica count. fabrikam's change is
/// applied; contoso's objects are untouched (not updated, not pruned); the
/// status, the metrics and a Warning Event say contoso `Failed` with its
/// position; the commit fixing contoso applies it. A broken
/// `environment.yaml` still applies nothing.
#[tokio::test]
async fn the_daemon_applies_valid_workspaces_and_holds_an_invalid_one() {
    use crate::daemon_e2e::{Guard, free_port, http, status, wait_for};
    use crate::support::git;
    use k8s_openapi::api::core::v1::Event;
    use std::process::{Command, Stdio};
    use std::time::Duration;

    let repo = TestRepo::new("blast-daemon");
    let env = repo.env.clone();
    let (contoso, fabrikam) = (repo.namespace("contoso"), repo.namespace("fabrikam"));
    git(repo.path(), &["init", "-q"]);
    git(repo.path(), &["add", "-A"]);
    git(repo.path(), &["commit", "-qm", "initial"]);
    let commit = |message: &str| {
        git(repo.path(), &["add", "-A"]);
        git(repo.path(), &["commit", "-qm", message]);
    };
    let logs = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let _daemon = Guard(
        Command::new(env!("CARGO_BIN_EXE_tenantsync"))
            .args(["run", "--branch", "main", "--env", &env, "--prune"])
            .args(["--interval", "1s", "--drift-interval", "1s", "--repo"])
            .arg(repo.path())
            .arg(format!("--listen=127.0.0.1:{port}"))
            .arg("--kubeconfig")
            .arg(control_plane().kubeconfig())
            .args(["--context", "admin"])
            .env("XDG_CACHE_HOME", logs.path())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(logs.path().join("daemon.log")).expect("log"))
            .spawn()
            .expect("tenantsync run"),
    );
    let log = || std::fs::read_to_string(logs.path().join("daemon.log")).unwrap_or_default();
    wait_for("the first sync", Duration::from_secs(60), async || {
        status(port, &env)
            .await
            .is_some_and(|s| s["syncStatus"] == "Synced")
    })
    .await;
    assert_eq!(replicas(&contoso, "fhir-main").await, Some(1), "{}", log());

    // One commit: contoso's file is invalid (and would drop its DICOM
    // service and change its replicas); fabrikam gets three replicas.
    repo.write(
        "workspaces/contoso.yaml",
        &patch(
            "contoso",
            "  fhirServices:\n    - {name: main, replicas: many}\n  dicomServices:\n    - {name: imaging, $patch: delete}\n",
        ),
    );
    repo.write(
        "workspaces/fabrikam.yaml",
        &patch(
            "fabrikam",
            "  fhirServices:\n    - {name: records, replicas: 3}\n",
        ),
    );
    commit("break contoso, scale fabrikam");
    wait_for("fabrikam's change", Duration::from_secs(30), async || {
        replicas(&fabrikam, "fhir-records").await == Some(3)
    })
    .await;
    let position = format!("environments/{env}/workspaces/contoso.yaml:7:30");
    // The status is written once the reconcile that applied it ends.
    wait_for(
        "the status of that revision",
        Duration::from_secs(10),
        async || {
            status(port, &env)
                .await
                .is_some_and(|s| s["lastAppliedRevision"] == s["lastSeenRevision"])
        },
    )
    .await;
    let s = status(port, &env).await.expect("status");
    let ws = &s["workspaces"]["contoso"];
    assert_eq!(ws["syncStatus"], "Failed", "{s}");
    assert!(
        ws["errors"][0]
            .as_str()
            .is_some_and(|e| e.starts_with(&position)),
        "{s}"
    );
    assert_ne!(s["workspaces"]["fabrikam"]["syncStatus"], "Failed", "{s}");
    // An operator sees it from the cluster too (the environment's last error).
    wait_for(
        "tenantsync status to name contoso's error",
        Duration::from_secs(10),
        async || {
            let out = Command::new(env!("CARGO_BIN_EXE_tenantsync"))
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
            String::from_utf8_lossy(&out.stdout).contains(&position)
        },
    )
    .await;
    // Untouched: not updated, not pruned, over several reconciles.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(replicas(&contoso, "fhir-main").await, Some(1));
    assert!(
        replicas(&contoso, "dicom-imaging").await.is_some(),
        "{}",
        log()
    );
    let metrics = http(port, "GET", "/metrics", &[], "")
        .await
        .expect("metrics");
    assert!(
        metrics.contains(&format!(
            "tenantsync_workspace_failed{{environment=\"{env}\",workspace=\"contoso\"}} 1"
        )),
        "{metrics}"
    );
    let events: Api<Event> = Api::namespaced(
        control_plane().client(User::Admin).await,
        tenantsync::inventory::SYSTEM_NAMESPACE,
    );
    let held_event = events
        .list(&Default::default())
        .await
        .expect("events")
        .items
        .into_iter()
        .find(|e| {
            e.reason.as_deref() == Some("InvalidWorkspace")
                && e.message.as_deref().is_some_and(|m| m.contains(&position))
        })
        .expect("a Warning Event naming contoso's error");
    assert_eq!(held_event.type_.as_deref(), Some("Warning"));

    // The commit that fixes contoso applies it.
    repo.write(
        "workspaces/contoso.yaml",
        &patch(
            "contoso",
            "  fhirServices:\n    - {name: main, replicas: 2}\n",
        ),
    );
    commit("fix contoso");
    wait_for("contoso's fix", Duration::from_secs(30), async || {
        replicas(&contoso, "fhir-main").await == Some(2)
    })
    .await;
    wait_for(
        "contoso no longer failed",
        Duration::from_secs(10),
        async || {
            status(port, &env).await.is_some_and(|s| {
                s["syncStatus"] == "Synced" && s["workspaces"]["contoso"]["syncStatus"] == "Synced"
            })
        },
    )
    .await;
    let metrics = http(port, "GET", "/metrics", &[], "")
        .await
        .expect("metrics");
    assert!(
        metrics.contains(&format!(
            "tenantsync_workspace_failed{{environment=\"{env}\",workspace=\"contoso\"}} 0"
        )),
        "{metrics}"
    );

    // An object that fails to apply (another manager owns the field) does
    // not stop the other workspace's change.
    let deployments: Api<Deployment> =
        Api::namespaced(control_plane().client(User::Admin).await, &fabrikam);
    deployments
        .patch(
            "fhir-records",
            &kube::api::PatchParams::apply("someone-else").force(),
            &kube::api::Patch::Apply(serde_json::json!({
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "fhir-records", "namespace": fabrikam},
                "spec": {"replicas": 5}
            })),
        )
        .await
        .expect("take replicas over");
    repo.write(
        "workspaces/fabrikam.yaml",
        &patch(
            "fabrikam",
            "  fhirServices:\n    - {name: records, replicas: 6}\n",
        ),
    );
    repo.write(
        "workspaces/contoso.yaml",
        &patch(
            "contoso",
            "  fhirServices:\n    - {name: main, replicas: 3}\n",
        ),
    );
    commit("scale both; fabrikam's conflicts");
    wait_for("contoso's change", Duration::from_secs(30), async || {
        replicas(&contoso, "fhir-main").await == Some(3)
    })
    .await;
    assert_eq!(replicas(&fabrikam, "fhir-records").await, Some(5));
    // Give the field back, so the next revision applies cleanly.
    deployments
        .patch(
            "fhir-records",
            &kube::api::PatchParams::apply("someone-else").force(),
            &kube::api::Patch::Apply(serde_json::json!({
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "fhir-records", "namespace": fabrikam}
            })),
        )
        .await
        .expect("release replicas");
    repo.write(
        "workspaces/fabrikam.yaml",
        &patch(
            "fabrikam",
            "  fhirServices:\n    - {name: records, replicas: 3}\n",
        ),
    );
    commit("fabrikam back to three");
    wait_for(
        "fabrikam back to three",
        Duration::from_secs(30),
        async || replicas(&fabrikam, "fhir-records").await == Some(3),
    )
    .await;

    // A broken environment.yaml holds everything, fabrikam's change too.
    repo.write(
        "environment.yaml",
        &format!(
            "apiVersion: tenantsync.io/v1alpha1\nkind: Environment\nmetadata:\n  name: {env}\nspec:\n  base: base\n  ingress:\n    domian: test.example.com\n"
        ),
    );
    repo.write(
        "workspaces/fabrikam.yaml",
        &patch(
            "fabrikam",
            "  fhirServices:\n    - {name: records, replicas: 4}\n",
        ),
    );
    commit("break the environment");
    wait_for(
        "the environment to fail",
        Duration::from_secs(30),
        async || {
            status(port, &env).await.is_some_and(|s| {
                s["syncStatus"] == "Failed"
                    && s["lastError"].as_str().is_some_and(|e| {
                        e.contains("environment.yaml") && e.contains("nothing is applied")
                    })
            })
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        replicas(&fabrikam, "fhir-records").await,
        Some(3),
        "{}",
        log()
    );
}

/// Two environments the daemon syncs to one cluster that render the same
/// namespaces: each clashing workspace is held in both environments and
/// reported naming the other; nothing is taken over, and a workspace that
/// does not clash is applied.
#[tokio::test]
async fn two_environments_on_one_cluster_do_not_take_each_others_namespaces() {
    use crate::daemon_e2e::{Guard, free_port, status, wait_for};
    use k8s_openapi::api::core::v1::Namespace;
    use std::process::{Command, Stdio};
    use std::time::Duration;

    let repo = TestRepo::new("blast-shared");
    let first = repo.env.clone();
    let second = format!("{first}-b");
    // Both environments name their namespaces after the first one.
    let template = format!("{{workspace}}-{first}");
    for env in [&first, &second] {
        let dir = repo.path().join("environments").join(env);
        std::fs::create_dir_all(dir.join("workspaces")).expect("mkdir");
        std::fs::write(
            dir.join("environment.yaml"),
            format!(
                "apiVersion: tenantsync.io/v1alpha1\nkind: Environment\nmetadata:\n  name: {env}\nspec:\n  base: base\n  namespaceTemplate: \"{template}\"\n  ingress:\n    domain: test.example.com\n"
            ),
        )
        .expect("write");
    }
    std::fs::write(
        repo.path()
            .join("environments")
            .join(&second)
            .join("workspaces/solo.yaml"),
        "apiVersion: tenantsync.io/v1alpha1\nkind: Workspace\nmetadata:\n  name: solo\nspec:\n  fhirServices:\n    - name: main\n",
    )
    .expect("write");
    let logs = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let _daemon = Guard(
        Command::new(env!("CARGO_BIN_EXE_tenantsync"))
            .args(["run", "--env", &format!("{first},{second}")])
            // Without {environment} in the template (the guardrail lifted):
            // the daemon still holds the clashing workspaces.
            .arg("--allow-shared-namespace-template")
            .args(["--interval", "1s", "--drift-interval", "1s", "--repo"])
            .arg(repo.path())
            .arg(format!("--listen=127.0.0.1:{port}"))
            .arg("--kubeconfig")
            .arg(control_plane().kubeconfig())
            .args(["--context", "admin"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(logs.path().join("daemon.log")).expect("log"))
            .spawn()
            .expect("tenantsync run"),
    );
    wait_for(
        "both environments reconciled",
        Duration::from_secs(60),
        async || {
            let (a, b) = (status(port, &first).await, status(port, &second).await);
            a.zip(b).is_some_and(|(a, b)| {
                a["lastAppliedRevision"].is_string() && b["lastAppliedRevision"].is_string()
            })
        },
    )
    .await;
    for (env, other) in [(&first, &second), (&second, &first)] {
        let s = status(port, env).await.expect("status");
        assert_eq!(s["syncStatus"], "Failed", "{s}");
        let contoso = &s["workspaces"]["contoso"];
        assert_eq!(contoso["syncStatus"], "Failed", "{s}");
        let why = contoso["errors"][0].as_str().unwrap_or_default();
        assert!(
            why.starts_with(&format!(
                "environments/base/workspaces/contoso.yaml:6:9: workspace `contoso` renders into namespace `contoso-{first}`, which workspace `contoso` of environment `{other}` (environments/base/workspaces/contoso.yaml:6:9) renders into on the same cluster (context `admin`)"
            )),
            "{s}"
        );
    }
    let namespaces: Api<Namespace> = Api::all(control_plane().client(User::Admin).await);
    let solo = namespaces
        .get(&format!("solo-{first}"))
        .await
        .expect("solo's namespace");
    assert_eq!(
        solo.metadata
            .labels
            .unwrap_or_default()
            .get("tenantsync.io/environment")
            .map(String::as_str),
        Some(second.as_str())
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        namespaces
            .get_opt(&format!("contoso-{first}"))
            .await
            .expect("get")
            .is_none(),
        "neither environment may create a namespace both render"
    );
}

/// The scratch workspace dev ships (`environments/dev/workspaces/sandbox.yaml`).
const SANDBOX: &str = "apiVersion: tenantsync.io/v1alpha1\nkind: Workspace\nmetadata:\n  name: sandbox\nspec:\n  fhirServices:\n    - name: scratch\n      fhirVersion: R5\n";

/// An environment with dev's sandbox, synced; woodgrove's replicas.
async fn synced_with_sandbox(test: &str) -> TestRepo {
    let repo = TestRepo::new(test);
    repo.write("workspaces/sandbox.yaml", SANDBOX);
    let (out, _) = sync(&repo, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        replicas(&repo.namespace("sandbox"), "fhir-scratch").await,
        Some(1)
    );
    assert_eq!(
        replicas(&repo.namespace("woodgrove"), "fhir-api").await,
        Some(1)
    );
    repo
}

async fn namespace_exists(name: &str) -> bool {
    let api: Api<k8s_openapi::api::core::v1::Namespace> =
        Api::all(control_plane().client(User::Admin).await);
    api.get_opt(name)
        .await
        .expect("get namespace")
        .is_some_and(|ns| ns.metadata.deletion_timestamp.is_none())
}

/// Hostile review D1a: `workspaces/sandbox.yaml` edited to
/// `metadata.name: woodgrove` made `sync --skip-invalid --prune` hold
/// woodgrove (whose own file is fine) and prune sandbox as removed. The file
/// whose name does not match is the invalid one: sandbox is held (nothing
/// of it applied or pruned) and woodgrove goes on.
#[tokio::test]
async fn skip_invalid_prune_holds_the_workspace_whose_file_took_another_name_not_the_other() {
    let repo = synced_with_sandbox("blast-dupname").await;
    let (sandbox, woodgrove) = (repo.namespace("sandbox"), repo.namespace("woodgrove"));
    repo.write(
        "workspaces/sandbox.yaml",
        &SANDBOX
            .replace("name: sandbox", "name: woodgrove")
            .replace("fhirVersion: R5", "fhirVersion: R5\n      replicas: 3"),
    );
    repo.write(
        "workspaces/woodgrove.yaml",
        &patch(
            "woodgrove",
            "  fhirServices:\n    - {name: api, replicas: 2}\n",
        ),
    );
    let (out, report) = sync(&repo, &["--skip-invalid", "--prune", "--allow-mass-prune"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("skipped workspace sandbox: 1 error(s)")
            && err.contains(&format!(
                "environments/{}/workspaces/sandbox.yaml:4:9: error: /metadata/name: this file is named after workspace `sandbox` but declares `woodgrove`",
                repo.env
            )),
        "{err}"
    );
    let skipped: Vec<&Value> = report["skipped"]
        .as_array()
        .expect("skipped")
        .iter()
        .collect();
    assert_eq!(skipped.len(), 1, "{report}");
    assert_eq!(skipped[0]["workspace"], "sandbox", "{report}");
    assert!(ids(&report, "pruned").is_empty(), "{report}");
    assert_eq!(
        ids(&report, "updated"),
        [format!("Deployment/{woodgrove}/fhir-api")],
        "{report}"
    );
    assert_eq!(replicas(&woodgrove, "fhir-api").await, Some(2));
    assert_eq!(replicas(&sandbox, "fhir-scratch").await, Some(1));
    assert!(namespace_exists(&sandbox).await);
    let inventory = inventoried(&repo).await;
    assert!(inventory.contains(&format!("Deployment/{sandbox}/fhir-scratch")));
    assert!(inventory.contains(&format!("Namespace/{sandbox}")));
}

/// Hostile review D1b: malformed YAML in one workspace file made
/// `sync --skip-invalid` refuse the whole environment. The file's name says
/// which workspace it is: only that one is held.
#[tokio::test]
async fn skip_invalid_holds_only_the_workspace_whose_file_is_malformed_yaml() {
    let repo = synced_with_sandbox("blast-malformed").await;
    let (sandbox, woodgrove) = (repo.namespace("sandbox"), repo.namespace("woodgrove"));
    // Bad indentation, and a removed service that must not be pruned.
    repo.write(
        "workspaces/sandbox.yaml",
        "apiVersion: tenantsync.io/v1alpha1\nkind: Workspace\nmetadata:\n  name: sandbox\n spec:\n  fhirServices: []\n",
    );
    repo.write(
        "workspaces/woodgrove.yaml",
        &patch(
            "woodgrove",
            "  fhirServices:\n    - {name: api, replicas: 2}\n",
        ),
    );
    let position = format!(
        "environments/{}/workspaces/sandbox.yaml:5:2: error: malformed YAML",
        repo.env
    );
    // Strict without --skip-invalid: nothing applied.
    let (out, _) = sync(&repo, &["--prune"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&position) && stderr(&out).contains("sync --skip-invalid"),
        "{}",
        stderr(&out)
    );
    assert_eq!(replicas(&woodgrove, "fhir-api").await, Some(1));

    let (out, report) = sync(&repo, &["--skip-invalid", "--prune", "--allow-mass-prune"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("skipped workspace sandbox: 1 error(s)") && err.contains(&position),
        "{err}"
    );
    assert_eq!(report["skipped"][0]["workspace"], "sandbox", "{report}");
    assert!(ids(&report, "pruned").is_empty(), "{report}");
    assert_eq!(replicas(&woodgrove, "fhir-api").await, Some(2));
    assert_eq!(replicas(&sandbox, "fhir-scratch").await, Some(1));
    assert!(
        inventoried(&repo)
            .await
            .contains(&format!("Deployment/{sandbox}/fhir-scratch"))
    );
}

/// Hostile review D1c: `--workspace` could not select a workspace removed
/// from Git but still in the inventory (`has no workspace 'sandbox'`), so
/// one tenant could not be offboarded alone. Now it can, and nothing else
/// removed from Git is pruned with it.
#[tokio::test]
async fn sync_workspace_offboards_a_workspace_known_only_from_the_inventory() {
    let repo = synced_with_sandbox("blast-offboard").await;
    let (sandbox, woodgrove) = (repo.namespace("sandbox"), repo.namespace("woodgrove"));
    repo.remove("workspaces/sandbox.yaml");
    repo.write(
        "workspaces/woodgrove.yaml",
        "apiVersion: tenantsync.io/v1alpha1\nkind: WorkspacePatch\nmetadata: {name: woodgrove}\n$patch: delete\n",
    );
    // The plan of the selection deletes sandbox's objects and nothing else.
    let plan = repo.run(
        "plan",
        "admin",
        &["--workspace", "sandbox", "--output", "json"],
    );
    assert_eq!(plan.status.code(), Some(0), "{}", stderr(&plan));
    let plan: Value = serde_json::from_slice(&plan.stdout).expect("plan JSON");
    let deletes: Vec<&Value> = plan["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .filter(|c| c["action"] == "delete")
        .collect();
    assert!(
        deletes
            .iter()
            .any(|c| c["kind"] == "Namespace" && c["name"] == sandbox.as_str()),
        "{plan}"
    );
    assert!(
        deletes.iter().all(|c| c["namespace"] == sandbox.as_str()
            || (c["kind"] == "Namespace" && c["name"] == sandbox.as_str())),
        "{plan}"
    );
    // Removing a namespace still takes --allow-mass-prune.
    let (out, _) = sync(&repo, &["--workspace", "sandbox", "--prune"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(namespace_exists(&sandbox).await);
    let (out, report) = sync(
        &repo,
        &["--workspace", "sandbox", "--prune", "--allow-mass-prune"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let pruned = ids(&report, "pruned");
    assert!(
        pruned.contains(&format!("Namespace/{sandbox}")),
        "{pruned:?}"
    );
    assert!(pruned.iter().all(|id| id.contains(&sandbox)), "{pruned:?}");
    assert!(!namespace_exists(&sandbox).await);
    // woodgrove, removed from Git too, was not selected: still there.
    assert_eq!(replicas(&woodgrove, "fhir-api").await, Some(1));
    assert!(
        inventoried(&repo)
            .await
            .contains(&format!("Deployment/{woodgrove}/fhir-api"))
    );
    // A name neither Git nor the inventory knows is a mistake.
    let (out, _) = sync(&repo, &["--workspace", "sandbx", "--prune"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!(
            "has no workspace `sandbx` (its workspaces: contoso, fabrikam, northwind), and its inventory records nothing in namespace `sandbx-{}`; nothing was changed",
            repo.env
        )),
        "{}",
        stderr(&out)
    );
}

/// Hostile review D1c: `sync --workspace fabrikam` refused while an
/// unselected workspace was invalid. Only the selection must be valid.
#[tokio::test]
async fn sync_workspace_is_not_refused_for_an_invalid_workspace_it_does_not_select() {
    let repo = TestRepo::new("blast-unselected");
    let (out, _) = sync(&repo, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let (contoso, fabrikam) = (repo.namespace("contoso"), repo.namespace("fabrikam"));
    repo.write(
        "workspaces/contoso.yaml",
        &patch(
            "contoso",
            "  fhirServices:\n    - {name: main, replicas: many}\n",
        ),
    );
    repo.write(
        "workspaces/fabrikam.yaml",
        &patch(
            "fabrikam",
            "  fhirServices:\n    - {name: records, replicas: 2}\n",
        ),
    );
    for verb in ["plan", "sync"] {
        let out = repo.run(verb, "admin", &["--workspace", "fabrikam"]);
        assert_eq!(out.status.code(), Some(0), "{verb}: {}", stderr(&out));
        assert!(
            stderr(&out)
                .contains("note: invalid workspace(s) not selected, left as they are: contoso"),
            "{verb}: {}",
            stderr(&out)
        );
    }
    assert_eq!(replicas(&fabrikam, "fhir-records").await, Some(2));
    assert_eq!(replicas(&contoso, "fhir-main").await, Some(1));
    // Selected, the invalid workspace is refused as before.
    let (out, _) = sync(
        &repo,
        &["--workspace", "contoso", "--workspace", "fabrikam"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!(
            "environments/{}/workspaces/contoso.yaml:7:30",
            repo.env
        )),
        "{}",
        stderr(&out)
    );
}

/// Hostile review D1b, on the daemon (it resolves environments the same
/// way): a workspace file that is not YAML holds that workspace only, and
/// so does one edited to another workspace's name (D1a); the others are
/// applied, and with --prune --allow-mass-prune nothing of the held one is
/// pruned.
#[tokio::test]
async fn the_daemon_holds_only_the_workspace_whose_file_is_malformed_yaml() {
    use crate::daemon_e2e::{Guard, free_port, status, wait_for};
    use std::process::{Command, Stdio};
    use std::time::Duration;

    let repo = TestRepo::new("blast-daemon-yaml");
    repo.write("workspaces/sandbox.yaml", SANDBOX);
    let env = repo.env.clone();
    let (sandbox, woodgrove) = (repo.namespace("sandbox"), repo.namespace("woodgrove"));
    let logs = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let _daemon = Guard(
        Command::new(env!("CARGO_BIN_EXE_tenantsync"))
            .args(["run", "--env", &env, "--prune", "--allow-mass-prune"])
            .args(["--interval", "1s", "--drift-interval", "1s", "--repo"])
            .arg(repo.path())
            .arg(format!("--listen=127.0.0.1:{port}"))
            .arg("--kubeconfig")
            .arg(control_plane().kubeconfig())
            .args(["--context", "admin"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(logs.path().join("daemon.log")).expect("log"))
            .spawn()
            .expect("tenantsync run"),
    );
    let log = || std::fs::read_to_string(logs.path().join("daemon.log")).unwrap_or_default();
    wait_for("the first sync", Duration::from_secs(60), async || {
        status(port, &env)
            .await
            .is_some_and(|s| s["syncStatus"] == "Synced")
    })
    .await;
    assert_eq!(
        replicas(&sandbox, "fhir-scratch").await,
        Some(1),
        "{}",
        log()
    );

    let sandbox_failed = async |start: &str| {
        status(port, &env).await.is_some_and(|s| {
            s["workspaces"]["sandbox"]["syncStatus"] == "Failed"
                && s["workspaces"]["sandbox"]["errors"][0]
                    .as_str()
                    .is_some_and(|e| e.starts_with(start))
                && s["workspaces"]["woodgrove"]["syncStatus"] != "Failed"
        })
    };
    for (step, sandbox_text, woodgrove_replicas, error) in [
        (
            "malformed YAML",
            "apiVersion: tenantsync.io/v1alpha1\nkind: Workspace\nmetadata:\n  name: sandbox\n spec:\n  fhirServices: []\n".to_string(),
            2,
            format!("environments/{env}/workspaces/sandbox.yaml:5:2: error: malformed YAML"),
        ),
        (
            "another workspace's name",
            SANDBOX.replace("name: sandbox", "name: woodgrove"),
            3,
            format!("environments/{env}/workspaces/sandbox.yaml:4:9: error: /metadata/name: this file is named after workspace `sandbox`"),
        ),
    ] {
        repo.write("workspaces/sandbox.yaml", &sandbox_text);
        repo.write(
            "workspaces/woodgrove.yaml",
            &patch(
                "woodgrove",
                &format!("  fhirServices:\n    - {{name: api, replicas: {woodgrove_replicas}}}\n"),
            ),
        );
        wait_for(step, Duration::from_secs(30), async || {
            replicas(&woodgrove, "fhir-api").await == Some(woodgrove_replicas)
        })
        .await;
        wait_for(
            &format!("{step}: sandbox reported Failed"),
            Duration::from_secs(15),
            async || sandbox_failed(&error).await,
        )
        .await;
        // Held over several reconciles: not updated, not pruned.
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(
            replicas(&sandbox, "fhir-scratch").await,
            Some(1),
            "{step}: {}",
            log()
        );
        assert!(namespace_exists(&sandbox).await, "{step}: {}", log());
    }
    // Fixed, sandbox is applied again.
    repo.write(
        "workspaces/sandbox.yaml",
        &SANDBOX.replace("fhirVersion: R5", "fhirVersion: R5\n      replicas: 2"),
    );
    wait_for("sandbox's fix", Duration::from_secs(30), async || {
        replicas(&sandbox, "fhir-scratch").await == Some(2)
    })
    .await;
}
