//! A saved plan as a contract, against the real control plane: `plan --out`
//! then `sync --plan` applies exactly the planned changes; a cluster that
//! changed in between, a plan of another revision and an edited plan file
//! are refused with nothing applied; the preconditions hold per write.

use std::path::Path;
use std::process::Output;
use tenantsync::sync::Fence;

use serde_json::{Value, json};
use tenantsync::plan::LiveVersion;
use tenantsync::plan::contract::PlanFile;

use crate::support::repo::TestRepo;
use crate::support::{control_plane, git, live_versions};

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A Git repository of the test's environment with the baseline committed
/// and synced; returns the baseline commit.
async fn synced_git_repo(repo: &TestRepo) -> String {
    git(repo.path(), &["init", "-q"]);
    git(repo.path(), &["add", "-A"]);
    git(repo.path(), &["commit", "-q", "-m", "baseline"]);
    repo.apply_rendered().await;
    git(repo.path(), &["rev-parse", "HEAD"])
}

/// Commits a change with an update (woodgrove's replicas), deletes (contoso's
/// IoT connector) and creates (a new workspace); returns the commit.
fn commit_changes(repo: &TestRepo) -> String {
    repo.write(
        "workspaces/woodgrove.yaml",
        "apiVersion: tenantsync.io/v1alpha1\nkind: WorkspacePatch\nmetadata: {name: woodgrove}\nspec:\n  fhirServices:\n    - name: api\n      replicas: 3\n",
    );
    repo.write(
        "workspaces/contoso.yaml",
        "apiVersion: tenantsync.io/v1alpha1\nkind: WorkspacePatch\nmetadata: {name: contoso}\nspec:\n  iotConnectors:\n    - name: vitals\n      $patch: delete\n",
    );
    repo.write(
        "workspaces/tailspin.yaml",
        "apiVersion: tenantsync.io/v1alpha1\nkind: Workspace\nmetadata: {name: tailspin}\nspec:\n  fhirServices:\n    - name: records\n      fhirVersion: R4\n",
    );
    git(repo.path(), &["add", "-A"]);
    git(
        repo.path(),
        &[
            "commit",
            "-q",
            "-m",
            "scale, drop an IoT connector, onboard",
        ],
    );
    git(repo.path(), &["rev-parse", "HEAD"])
}

fn save_plan(repo: &TestRepo, rev: &str, file: &Path) -> Value {
    let out = repo.run(
        "plan",
        "admin",
        &[
            "--rev",
            rev,
            "--output",
            "json",
            "--out",
            file.to_str().expect("utf-8 path"),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("saved the plan to"),
        "{}",
        stderr(&out)
    );
    serde_json::from_str(&std::fs::read_to_string(file).expect("plan file")).expect("plan JSON")
}

fn ids_of(plan: &Value, action: &str) -> Vec<String> {
    let mut ids: Vec<String> = plan["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .filter(|c| c["action"] == action)
        .map(|c| match c["namespace"].as_str() {
            Some(ns) => format!(
                "{}/{ns}/{}",
                c["kind"].as_str().unwrap(),
                c["name"].as_str().unwrap()
            ),
            None => format!(
                "{}/{}",
                c["kind"].as_str().unwrap(),
                c["name"].as_str().unwrap()
            ),
        })
        .collect();
    ids.sort();
    ids
}

fn sorted(report: &Value, key: &str) -> Vec<String> {
    let mut ids: Vec<String> = report[key]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

fn sync_plan(repo: &TestRepo, file: &Path, extra: &[&str]) -> (Output, Value) {
    let mut args = vec![
        "--output",
        "json",
        "--plan",
        file.to_str().expect("utf-8 path"),
    ];
    args.extend_from_slice(extra);
    let out = repo.run("sync", "admin", &args);
    let report = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out, report)
}

#[tokio::test]
async fn saved_plan_applies_exactly_its_changes_then_plan_is_clean() {
    let repo = TestRepo::new("saved-plan-apply");
    synced_git_repo(&repo).await;
    let head = commit_changes(&repo);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("plan.json");
    let plan = save_plan(&repo, "HEAD", &file);

    // What the file holds: the revision, digests, preconditions.
    assert_eq!(plan["formatVersion"], 1);
    assert_eq!(plan["kind"], "TenantsyncPlan");
    assert_eq!(plan["revision"], head.as_str());
    let (creates, updates, deletes) = (
        ids_of(&plan, "create"),
        ids_of(&plan, "update"),
        ids_of(&plan, "delete"),
    );
    let woodgrove = repo.namespace("woodgrove");
    assert_eq!(updates, [format!("Deployment/{woodgrove}/fhir-api")]);
    assert!(!deletes.is_empty() && !creates.is_empty(), "{plan:#}");
    for c in plan["changes"].as_array().unwrap() {
        let digest = c["digest"].as_str().unwrap_or_default();
        match c["action"].as_str().unwrap() {
            "delete" => assert!(c["digest"].is_null(), "{c:#}"),
            _ => assert!(digest.starts_with("sha256:") && digest.len() == 71, "{c:#}"),
        }
        match c["action"].as_str().unwrap() {
            "update" | "delete" => {
                assert!(
                    c["live"]["uid"].as_str().is_some_and(|u| !u.is_empty()),
                    "{c:#}"
                );
                assert!(c["live"]["resourceVersion"].as_str().is_some(), "{c:#}");
            }
            "create" => assert!(c["live"].is_null(), "{c:#}"),
            _ => {}
        }
    }

    // Applied exactly: what was created, updated and pruned is the plan's
    // (its deletes are applied without --prune: they are part of the plan).
    let (out, report) = sync_plan(&repo, &file, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(sorted(&report, "created"), creates);
    assert_eq!(sorted(&report, "updated"), updates);
    assert_eq!(sorted(&report, "pruned"), deletes);
    assert_eq!(report["revision"], head.as_str());

    // And then there is nothing left to do.
    let out = repo.run("plan", "admin", &["--rev", "HEAD", "--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let after: Value = serde_json::from_slice(&out.stdout).expect("plan JSON");
    let s = &after["summary"];
    assert_eq!(
        (
            s["create"].as_u64(),
            s["update"].as_u64(),
            s["delete"].as_u64()
        ),
        (Some(0), Some(0), Some(0)),
        "{:#}",
        after["changes"]
    );
    // A plan applied once is stale: its creates exist now.
    let before = live_versions(&repo.env);
    let (out, _) = sync_plan(&repo, &file, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("planned to create, now exists"),
        "{}",
        stderr(&out)
    );
    assert_eq!(live_versions(&repo.env), before);
}

#[tokio::test]
async fn saved_plan_is_refused_when_the_cluster_changed_since_and_nothing_is_applied() {
    let repo = TestRepo::new("saved-plan-stale");
    synced_git_repo(&repo).await;
    commit_changes(&repo);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("plan.json");
    save_plan(&repo, "HEAD", &file);

    // Someone scales the Deployment the plan updates.
    let woodgrove = repo.namespace("woodgrove");
    let scale = control_plane()
        .kubectl()
        .args([
            "--context",
            "admin",
            "-n",
            &woodgrove,
            "scale",
            "deployment/fhir-api",
            "--replicas=5",
        ])
        .output()
        .expect("kubectl");
    assert!(scale.status.success(), "{}", stderr(&scale));
    let before = live_versions(&repo.env);
    let inventory_before = crate::support::inventory_record(&repo.env).await;

    let (out, _) = sync_plan(&repo, &file, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("is stale"), "{err}");
    assert!(err.contains("nothing was applied"), "{err}");
    assert!(err.contains("make a new plan"), "{err}");
    assert!(
        err.contains(&format!(
            "Deployment/{woodgrove}/fhir-api: changed since the plan (resourceVersion"
        )),
        "{err}"
    );
    // Nothing written: no object, not the inventory's record.
    assert_eq!(live_versions(&repo.env), before);
    assert_eq!(
        crate::support::inventory_record(&repo.env).await.0,
        inventory_before.0
    );

    // A new plan, made after the change, applies.
    save_plan(&repo, "HEAD", &file);
    let (out, report) = sync_plan(&repo, &file, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        sorted(&report, "updated"),
        [format!("Deployment/{woodgrove}/fhir-api")]
    );
}

#[tokio::test]
async fn a_plan_of_another_revision_or_an_edited_plan_file_is_refused() {
    let repo = TestRepo::new("saved-plan-refused");
    let base = synced_git_repo(&repo).await;
    commit_changes(&repo);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("plan.json");
    save_plan(&repo, "HEAD", &file);
    let text = std::fs::read_to_string(&file).expect("plan file");
    let before = live_versions(&repo.env);
    let refused = |file: &Path, extra: &[&str], says: &str| {
        let (out, _) = sync_plan(&repo, file, extra);
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        assert!(stderr(&out).contains(says), "{says}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("nothing was changed"),
            "{}",
            stderr(&out)
        );
    };

    // Another revision than the plan's.
    refused(&file, &["--rev", &base], "was planned at revision");
    // The file edited by hand: its checksum no longer matches.
    let edited = dir.path().join("edited.json");
    std::fs::write(
        &edited,
        text.replacen("\"action\": \"update\"", "\"action\": \"unchanged\"", 1),
    )
    .expect("write");
    refused(&edited, &[], "was changed after tenantsync wrote it");
    // Edited and sealed again (its checksum recomputed), to say that the
    // baseline was planned: the baseline does not render what it lists.
    let mut forged = PlanFile::parse(&text).expect("plan file");
    forged.revision = base.clone();
    let forged_path = dir.path().join("forged.json");
    std::fs::write(&forged_path, forged.sealed().to_json()).expect("write");
    let woodgrove = repo.namespace("woodgrove");
    refused(
        &forged_path,
        &[],
        &format!("Deployment/{woodgrove}/fhir-api: renders differently than when planned"),
    );
    // Not a plan file at all, and a plan of another environment.
    let other = dir.path().join("other.json");
    std::fs::write(&other, "{\"formatVersion\": 1, \"changes\": []}").expect("write");
    refused(&other, &[], "not a tenantsync plan file");
    let out = control_plane_sync_other_env(&repo, &file);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("is a plan of environment"),
        "{}",
        stderr(&out)
    );
    assert_eq!(live_versions(&repo.env), before, "nothing was applied");
}

fn control_plane_sync_other_env(repo: &TestRepo, file: &Path) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_tenantsync"))
        .args(["sync", "--env", "qa", "--context", "admin", "--repo"])
        .arg(repo.path())
        .arg("--kubeconfig")
        .arg(control_plane().kubeconfig())
        .arg("--plan")
        .arg(file)
        .output()
        .expect("run tenantsync")
}

/// The writes of `sync --plan` carry their preconditions: an apply or a
/// delete of an object changed after the plan (a race between the check
/// and the write) is refused by the API server, and the object is left as
/// it is.
#[tokio::test]
async fn preconditions_refuse_a_write_to_an_object_changed_since_the_plan() {
    let ns = control_plane().namespace("saved-plan-race").await;
    let cluster = tenantsync::cluster::Cluster::connect(&tenantsync::cluster::ClusterOptions {
        kubeconfig: Some(control_plane().kubeconfig().to_path_buf()),
        context: Some("admin".into()),
        ..Default::default()
    })
    .await
    .expect("connect");
    let body = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "raced", "namespace": ns}, "data": {"k": "planned"}});
    let object = tenantsync::object::Object::from_value("ws", &body).expect("object");
    let manager = "tenantsync/saved-plan-race";
    cluster
        .apply(&object, false, false, manager, &Fence::default())
        .await
        .expect("create");
    let get = || {
        let out = control_plane()
            .kubectl()
            .args([
                "--context",
                "admin",
                "-n",
                &ns,
                "get",
                "configmap",
                "raced",
                "-o",
                "json",
            ])
            .output()
            .expect("kubectl");
        serde_json::from_slice::<Value>(&out.stdout).expect("configmap JSON")
    };
    let planned = LiveVersion::of(&get()).expect("uid and resourceVersion");
    // Someone writes it after the plan.
    let edit = control_plane()
        .kubectl()
        .args([
            "--context",
            "admin",
            "-n",
            &ns,
            "label",
            "configmap",
            "raced",
            "edited=yes",
        ])
        .output()
        .expect("kubectl");
    assert!(edit.status.success(), "{}", stderr(&edit));
    let edited = get();

    let changed = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "raced", "namespace": ns}, "data": {"k": "applied"}});
    let changed = tenantsync::object::Object::from_value("ws", &changed).expect("object");
    let e = cluster
        .apply_healed(
            &changed,
            None,
            Some(&planned),
            false,
            false,
            manager,
            &Fence::default(),
        )
        .await
        .expect_err("a stale apply is refused");
    assert!(
        e.to_string().contains("changed since the plan was made"),
        "{e}"
    );
    let r = tenantsync::sync::inventory::ObjectRef::of(&object);
    let e = cluster
        .delete_if(&r, Some(&planned), false, &Fence::default())
        .await
        .expect_err("a stale delete is refused");
    assert!(e.to_string().contains("so it was not deleted"), "{e}");
    assert_eq!(get(), edited, "left as it was");

    // At the current version both go through.
    let current = LiveVersion::of(&edited).expect("versions");
    cluster
        .apply_healed(
            &changed,
            None,
            Some(&current),
            false,
            false,
            manager,
            &Fence::default(),
        )
        .await
        .expect("apply at the current version");
    assert_eq!(get()["data"]["k"], "applied");
    let current = LiveVersion::of(&get()).expect("versions");
    assert!(
        cluster
            .delete_if(&r, Some(&current), false, &Fence::default())
            .await
            .expect("delete")
    );
}

/// Review: flags given at sync time changed what an approved plan does
/// (--force-recreate turned an update into a delete and create,
/// --prune-foreign deleted what a namespace holds besides the plan's
/// objects); they are refused with --plan before anything is read.
#[test]
fn flags_that_would_change_a_saved_plan_are_refused_with_it() {
    for flag in [
        "--force-recreate",
        "--prune-foreign",
        "--force-conflicts",
        "--skip-invalid",
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tenantsync"))
            .args(["sync", "--env", "prod", "--plan", "plan.json", flag])
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(2), "{flag}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("'--plan <FILE>' cannot be used with '{flag}")),
            "{err}"
        );
    }
}

/// A plan that only creates objects has no live object to be stale
/// against: it records the cluster it was made against (the `uid` of
/// `kube-system`) and is refused on any other.
#[tokio::test]
async fn a_creates_only_plan_is_refused_on_another_cluster_and_nothing_is_applied() {
    let repo = TestRepo::new("saved-plan-cluster");
    git(repo.path(), &["init", "-q"]);
    git(repo.path(), &["add", "-A"]);
    git(repo.path(), &["commit", "-q", "-m", "baseline"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("plan.json");
    let plan = save_plan(&repo, "HEAD", &file);
    assert!(!ids_of(&plan, "create").is_empty());
    assert!(ids_of(&plan, "update").is_empty() && ids_of(&plan, "delete").is_empty());
    let uid = |kubeconfig: &Path| {
        let out = std::process::Command::new(crate::support::kubectl_path())
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["--context", "admin", "get", "namespace", "kube-system"])
            .args(["-o", "jsonpath={.metadata.uid}"])
            .output()
            .expect("kubectl");
        assert!(out.status.success(), "{}", stderr(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let here = uid(control_plane().kubeconfig());
    assert_eq!(plan["cluster"]["kubeSystemUid"], json!(here));

    let other = crate::support::bare_control_plane("saved-plan-other");
    assert_ne!(uid(other.kubeconfig()), here);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tenantsync"))
        .args(["sync", "--env", &repo.env, "--context", "admin", "--repo"])
        .arg(repo.path())
        .arg("--kubeconfig")
        .arg(other.kubeconfig())
        .args(["--output", "json", "--plan"])
        .arg(&file)
        .output()
        .expect("sync");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("the plan was made against cluster")
            && err.contains(&here)
            && err.contains("nothing was changed"),
        "{err}"
    );
    // Nothing was created on the other cluster.
    let namespaces = std::process::Command::new(crate::support::kubectl_path())
        .arg("--kubeconfig")
        .arg(other.kubeconfig())
        .args(["--context", "admin", "get", "namespaces", "-o", "name"])
        .output()
        .expect("kubectl");
    let names = String::from_utf8_lossy(&namespaces.stdout);
    assert!(!names.contains(&repo.env), "{names}");

    // On the cluster it was made against, it applies.
    let (out, report) = sync_plan(&repo, &file, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(sorted(&report, "created"), ids_of(&plan, "create"));
}
