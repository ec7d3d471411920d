//! `tenantsync plan` and `drift` against the real control plane.
//!
//! Each test gets its own environment (a layer named after the test over the
//! shipped `base`), so its namespaces and labels never meet another test's.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::repo::TestRepo;
use crate::support::{control_plane, git};

fn summary(plan: &Value) -> (u64, u64, u64, u64) {
    let s = &plan["summary"];
    let n = |k: &str| s[k].as_u64().expect("count");
    (n("create"), n("update"), n("delete"), n("unchanged"))
}

fn changes<'a>(plan: &'a Value, action: &str) -> Vec<&'a Value> {
    plan["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .filter(|c| c["action"] == action)
        .collect()
}

#[tokio::test]
async fn plan_on_an_empty_cluster_lists_only_creates_then_nothing_after_apply() {
    let repo = TestRepo::new("plan-empty");
    let plan = repo.plan_json("admin");
    let (create, update, delete, unchanged) = summary(&plan);
    assert!(create > 40, "{create} creates");
    assert_eq!((update, delete, unchanged), (0, 0, 0));
    assert_eq!(plan["environment"], repo.env.as_str());
    assert_eq!(plan["formatVersion"], 1);

    let applied = repo.apply_rendered().await as u64;
    assert_eq!(applied, create);
    // Deployments, Services and Ingresses now carry server defaults; none of
    // them is a change.
    let plan = repo.plan_json("admin");
    assert_eq!(summary(&plan), (0, 0, 0, applied), "{:#}", plan["changes"]);
    // One LIST per kind, nothing per object.
    let kinds = tenantsync::object::MANAGED_KINDS.len() as u64;
    assert!(
        plan["apiRequests"].as_u64().expect("count") <= kinds + 2,
        "{}",
        plan["apiRequests"]
    );

    let out = repo.run("plan", "admin", &["--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!(
            "Plan: 0 to create, 0 to update, 0 to delete, {applied} unchanged."
        )),
        "{text}"
    );
}

#[tokio::test]
async fn out_of_band_changes_show_with_field_and_manager_in_plan_and_drift() {
    let repo = TestRepo::new("plan-drift");
    repo.apply_rendered().await;
    let ns = repo.namespace("contoso");
    let scale = control_plane()
        .kubectl()
        .args([
            "--context",
            "admin",
            "-n",
            &ns,
            "scale",
            "deployment/fhir-main",
            "--replicas=4",
        ])
        .output()
        .expect("kubectl");
    assert!(
        scale.status.success(),
        "{}",
        String::from_utf8_lossy(&scale.stderr)
    );
    let edit = control_plane()
        .kubectl()
        .args([
            "--context",
            "admin",
            "-n",
            &ns,
            "patch",
            "configmap/fhir-main-config",
            "--type=merge",
        ])
        .args(["-p", r#"{"data":{"FhirServer__Version":"R5"}}"#])
        .output()
        .expect("kubectl");
    assert!(
        edit.status.success(),
        "{}",
        String::from_utf8_lossy(&edit.stderr)
    );

    for context in ["admin", "readonly"] {
        let plan = repo.plan_json(context);
        let updates = changes(&plan, "update");
        assert_eq!(updates.len(), 2, "{updates:#?}");
        let deploy = updates
            .iter()
            .find(|c| c["kind"] == "Deployment")
            .expect("deployment update");
        let field = &deploy["fields"][0];
        assert_eq!(field["path"], "spec.replicas");
        assert_eq!(
            (field["live"].clone(), field["desired"].clone()),
            (serde_json::json!(4), serde_json::json!(1))
        );
        assert!(
            field["manager"]
                .as_str()
                .is_some_and(|m| m.starts_with("kubectl")),
            "{field}"
        );
        let cm = updates
            .iter()
            .find(|c| c["kind"] == "ConfigMap")
            .expect("configmap update");
        assert_eq!(cm["fields"][0]["path"], "data.FhirServer__Version");
        assert!(
            cm["fields"][0]["manager"]
                .as_str()
                .is_some_and(|m| m.starts_with("kubectl"))
        );
    }

    let out = repo.run("drift", "readonly", &["--detailed-exitcode", "--no-color"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("spec.replicas"), "{text}");
    assert!(text.contains("kubectl"), "{text}");
}

#[tokio::test]
async fn removed_fields_and_workspaces_show_as_changes_and_deletes() {
    let repo = TestRepo::new("plan-removed");
    repo.apply_rendered().await;
    // contoso's FHIR service loses its workload identity; woodgrove goes away.
    repo.write(
        "workspaces/contoso.yaml",
        "apiVersion: tenantsync.io/v1alpha1\nkind: WorkspacePatch\nmetadata: {name: contoso}\nspec:\n  fhirServices:\n    - name: main\n      identity: null\n",
    );
    repo.write(
        "workspaces/woodgrove.yaml",
        "apiVersion: tenantsync.io/v1alpha1\nkind: WorkspacePatch\nmetadata: {name: woodgrove}\n$patch: delete\n",
    );
    let plan = repo.plan_json("readonly");
    let deletes = changes(&plan, "delete");
    assert!(!deletes.is_empty());
    assert!(
        deletes.iter().all(|c| c["workspace"] == "woodgrove"),
        "{deletes:#?}"
    );
    assert!(
        deletes
            .iter()
            .any(|c| c["kind"] == "Namespace" && c["name"] == repo.namespace("woodgrove"))
    );
    let sa = changes(&plan, "update")
        .into_iter()
        .find(|c| c["kind"] == "ServiceAccount" && c["name"] == "fhir-main")
        .expect("service account update");
    assert_eq!(
        sa["fields"][0]["path"],
        "metadata.annotations.azure.workload.identity/client-id"
    );
    assert_eq!(sa["fields"][0]["action"], "remove");
    assert!(
        sa["diff"]
            .as_str()
            .expect("diff")
            .contains("-    azure.workload.identity/client-id"),
        "{}",
        sa["diff"]
    );
}

#[tokio::test]
async fn an_invalid_repository_fails_without_contacting_the_cluster() {
    let repo = TestRepo::new("plan-invalid");
    repo.write(
        "workspaces/bad.yaml",
        "apiVersion: tenantsync.io/v1alpha1\nkind: Workspace\nmetadata: {name: Bad}\nspec: {}\n",
    );
    let out = Command::new(env!("CARGO_BIN_EXE_tenantsync"))
        .args([
            "plan",
            "--env",
            &repo.env,
            "--kubeconfig",
            "/nonexistent/kubeconfig",
            "--repo",
        ])
        .arg(repo.path())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.yaml:3:18: error: /metadata/name: `Bad` is not a valid name"),
        "{err}"
    );
    assert!(err.contains("the cluster was not contacted"), "{err}");
}

#[test]
fn an_unreachable_api_server_fails_fast_naming_it() {
    let repo = TestRepo::new("plan-unreachable");
    let kubeconfig = repo.path().join("kubeconfig");
    // A loopback port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: gone\n  cluster:\n    server: https://127.0.0.1:{port}\n    insecure-skip-tls-verify: true\nusers:\n- name: u\n  user:\n    token: t\ncontexts:\n- name: gone\n  context: {{cluster: gone, user: u}}\ncurrent-context: gone\n"
        ),
    )
    .expect("write");
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_tenantsync"))
        .args(["plan", "--env", &repo.env, "--repo"])
        .arg(repo.path())
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .output()
        .expect("run");
    let elapsed = start.elapsed();
    assert_eq!(out.status.code(), Some(1));
    assert!(elapsed < Duration::from_secs(15), "took {elapsed:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "cannot reach the Kubernetes API server at https://127.0.0.1:{port}"
        )),
        "{err}"
    );
}

#[tokio::test]
async fn plan_at_an_older_git_revision_differs_as_expected() {
    let repo = TestRepo::new("plan-rev");
    git(repo.path(), &["init", "-q"]);
    git(repo.path(), &["add", "-A"]);
    git(repo.path(), &["commit", "-qm", "onboard"]);
    let old = git(repo.path(), &["rev-parse", "HEAD"]);
    repo.write(
        "workspaces/woodgrove.yaml",
        "apiVersion: tenantsync.io/v1alpha1\nkind: WorkspacePatch\nmetadata: {name: woodgrove}\nspec:\n  fhirServices:\n    - name: api\n      replicas: 3\n",
    );
    git(repo.path(), &["add", "-A"]);
    git(repo.path(), &["commit", "-qm", "scale woodgrove"]);
    let new = git(repo.path(), &["rev-parse", "HEAD"]);
    // An uncommitted edit in the work tree must not be read with --rev.
    repo.write("workspaces/junk.yaml", "not: [valid\n");

    let out = repo.run("sync", "admin", &["--rev", "HEAD", "--output", "json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("report");
    assert_eq!(report["revision"], new.as_str());

    let out = repo.run("plan", "readonly", &["--rev", &old, "--output", "json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: Value = serde_json::from_slice(&out.stdout).expect("plan");
    assert_eq!(plan["revision"], old.as_str());
    let updates = changes(&plan, "update");
    assert_eq!(updates.len(), 1, "{updates:#?}");
    assert_eq!(updates[0]["name"], "fhir-api");
    assert_eq!(updates[0]["fields"][0]["path"], "spec.replicas");
    assert_eq!(updates[0]["fields"][0]["desired"], 1);
    let deletes = changes(&plan, "delete");
    assert_eq!(
        deletes.len(),
        1,
        "the PodDisruptionBudget only exists with 3 replicas"
    );
    assert_eq!(deletes[0]["kind"], "PodDisruptionBudget");
    // drift compares with what was last applied (the inventory's revision),
    // not with a newer commit nobody synced yet.
    let out = repo.run(
        "drift",
        "readonly",
        &["--output", "json", "--detailed-exitcode"],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let drift: Value = serde_json::from_slice(&out.stdout).expect("drift");
    assert_eq!(drift["revision"], new.as_str());
    // And the work tree is as it was.
    assert!(
        repo.path()
            .join("environments")
            .join(&repo.env)
            .join("workspaces/junk.yaml")
            .exists()
    );
    assert_eq!(
        git(repo.path(), &["status", "--porcelain"]),
        format!("?? environments/{}/workspaces/junk.yaml", repo.env)
    );
}
