//! `tenantsync plan` and `drift` against the real control plane.
//!
//! Each test gets its own environment (a layer named after the test over the
//! shipped `base`), so its namespaces and labels never meet another test's.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::repo::TestRepo;
use crate::support::{audit, control_plane, git};

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
    // A steady-state plan makes one LIST per kind (pages of 3,000, across
    // namespaces, by label) and one GET of the inventory, nothing per
    // object: as the API server recorded it, with a token of its own that
    // may only read, and as the plan reports it.
    let dir = tempfile::tempdir().expect("tempdir");
    let reader = audit::identity("plan-steady", "test-readonly", dir.path());
    let from = audit::cursor();
    let out = Command::new(env!("CARGO_BIN_EXE_tenantsync"))
        .args(["plan", "--env", &repo.env, "--output", "json", "--repo"])
        .arg(repo.path())
        .arg("--kubeconfig")
        .arg(&reader.kubeconfig)
        .output()
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: Value = serde_json::from_slice(&out.stdout).expect("plan JSON");
    assert_eq!(summary(&plan), (0, 0, 0, applied), "{:#}", plan["changes"]);
    let requests: Vec<audit::Request> = reader
        .requests_since(&from)
        .into_iter()
        .filter(|r| r.user_agent.starts_with("tenantsync/"))
        .collect();
    let kinds = tenantsync::object::MANAGED_KINDS.len();
    assert_eq!(requests.len(), kinds + 1, "{requests:#?}");
    assert_eq!(
        plan["apiRequests"],
        requests.len(),
        "apiRequests is what was sent"
    );
    let selector = format!("tenantsync.io%2Fenvironment%3D{}", repo.env);
    let lists: Vec<&audit::Request> = requests.iter().filter(|r| r.verb == "list").collect();
    assert_eq!(lists.len(), kinds, "{requests:#?}");
    for kind in tenantsync::object::MANAGED_KINDS {
        let of_kind: Vec<&&audit::Request> =
            lists.iter().filter(|r| r.resource == kind.plural).collect();
        assert_eq!(of_kind.len(), 1, "{kind:?}: {lists:#?}");
        let uri = &of_kind[0].uri;
        assert!(
            // Across namespaces (no namespace in the path).
            !uri.split('?')
                .next()
                .unwrap_or_default()
                .contains("/namespaces/")
                && uri.contains(&selector)
                && uri.contains("limit=3000")
                && !uri.contains("continue="),
            "{uri}"
        );
    }
    let gets: Vec<&audit::Request> = requests.iter().filter(|r| r.verb == "get").collect();
    assert_eq!(gets.len(), 1, "{requests:#?}");
    assert_eq!(
        (
            gets[0].resource.as_str(),
            gets[0].namespace.as_str(),
            gets[0].name.clone()
        ),
        (
            "configmaps",
            tenantsync::sync::inventory::SYSTEM_NAMESPACE,
            tenantsync::sync::inventory::name_of(&repo.env)
        )
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

    // Missing: applied, in the inventory, deleted by hand. Orphaned:
    // labelled for the environment and declared by nothing (here removed
    // from Git, not pruned yet; and one never recorded, listed again as
    // never declared).
    let kubectl = |args: &[&str]| {
        let out = control_plane()
            .kubectl()
            .args(["--context", "admin"])
            .args(args)
            .output()
            .expect("kubectl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    kubectl(&["-n", &ns, "delete", "service", "fhir-main"]);
    kubectl(&["-n", &ns, "create", "configmap", "by-hand"]);
    kubectl(&[
        "-n",
        &ns,
        "label",
        "configmap",
        "by-hand",
        "app.kubernetes.io/managed-by=tenantsync",
        &format!("tenantsync.io/environment={}", repo.env),
        "tenantsync.io/workspace=contoso",
    ]);
    repo.write(
        "workspaces/woodgrove.yaml",
        "apiVersion: tenantsync.io/v1alpha1\nkind: WorkspacePatch\nmetadata: {name: woodgrove}\nspec:\n  fhirServices:\n    - name: api\n      $patch: delete\n",
    );
    let out = repo.run("drift", "readonly", &["--output", "json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let drift: Value = serde_json::from_slice(&out.stdout).expect("drift JSON");
    let ids = |action: &str| -> Vec<String> {
        changes(&drift, action)
            .iter()
            .map(|c| {
                format!(
                    "{}/{}/{}",
                    c["kind"].as_str().unwrap_or_default(),
                    c["namespace"].as_str().unwrap_or_default(),
                    c["name"].as_str().unwrap_or_default()
                )
            })
            .collect()
    };
    assert_eq!(
        ids("create"),
        [format!("Service/{ns}/fhir-main")],
        "missing"
    );
    let woodgrove = repo.namespace("woodgrove");
    let orphaned = ids("delete");
    assert!(
        orphaned.contains(&format!("ConfigMap/{ns}/by-hand")),
        "{orphaned:?}"
    );
    assert!(
        orphaned.contains(&format!("Deployment/{woodgrove}/fhir-api")),
        "{orphaned:?}"
    );
    assert_eq!(
        drift["neverDeclared"],
        serde_json::json!([format!("ConfigMap/{ns}/by-hand")])
    );
    let out = repo.run("drift", "readonly", &["--no-color"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!(
            "+ missing (deleted by hand) Service/{ns}/fhir-main"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "- not declared any more (orphaned) Deployment/{woodgrove}/fhir-api"
        )),
        "{text}"
    );
    let (_, update, delete, _) = summary(&drift);
    assert!(
        text.contains(&format!(
            "Drift: {update} modified, 1 missing, {delete} orphaned, "
        )),
        "{text}"
    );
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
    // A newer commit nobody synced is not drift either: drift still reads
    // the inventory's revision, while plan reads HEAD.
    repo.remove("workspaces/junk.yaml");
    repo.write(
        "workspaces/woodgrove.yaml",
        "apiVersion: tenantsync.io/v1alpha1\nkind: WorkspacePatch\nmetadata: {name: woodgrove}\nspec:\n  fhirServices:\n    - name: api\n      replicas: 5\n",
    );
    git(repo.path(), &["add", "-A"]);
    git(repo.path(), &["commit", "-qm", "scale woodgrove again"]);
    let newest = git(repo.path(), &["rev-parse", "HEAD"]);
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
    let out = repo.run("plan", "readonly", &["--output", "json", "--rev", "HEAD"]);
    let plan: Value = serde_json::from_slice(&out.stdout).expect("plan");
    assert_eq!(plan["revision"], newest.as_str());
    assert_eq!(changes(&plan, "update").len(), 1, "{:#}", plan["changes"]);
    repo.write("workspaces/junk.yaml", "not: [valid\n");
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

/// More objects of one kind than a page holds: the LIST goes on with the
/// continue token the API server gives, and every object is read.
#[tokio::test]
async fn a_kind_with_more_objects_than_a_page_is_read_page_by_page() {
    use futures::StreamExt;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::{Api, PostParams};

    let repo = TestRepo::new("plan-pages");
    repo.apply_rendered().await;
    let rendered = crate::support::live_labelled(&repo.env)
        .iter()
        .filter(|id| id.starts_with("ConfigMap/"))
        .count();
    // Labelled for the environment, never in its inventory: drift lists
    // each as never declared. With the rendered ones, one more ConfigMap
    // than a page holds.
    let page = tenantsync::cluster::PAGE_SIZE as usize;
    assert_eq!(page, 3000, "README: pages of 3,000");
    let extra = page + 1 - rendered;
    let ns = control_plane().namespace("plan-pages").await;
    let api: Api<ConfigMap> = Api::namespaced(
        control_plane().client(crate::support::User::Admin).await,
        &ns,
    );
    let env = repo.env.clone();
    let created = futures::stream::iter(0..extra)
        .map(|i| {
            let api = api.clone();
            let env = env.clone();
            async move {
                let cm: ConfigMap = serde_json::from_value(serde_json::json!({
                    "metadata": {"name": format!("by-hand-{i:04}"), "labels": {
                        "app.kubernetes.io/managed-by": "tenantsync",
                        "tenantsync.io/environment": env,
                    }}
                }))
                .expect("a ConfigMap");
                api.create(&PostParams::default(), &cm).await.is_ok()
            }
        })
        .buffer_unordered(16)
        .filter(|ok| std::future::ready(*ok))
        .count()
        .await;
    assert_eq!(created, extra);

    let dir = tempfile::tempdir().expect("tempdir");
    let reader = audit::identity("plan-pages", "test-readonly", dir.path());
    let from = audit::cursor();
    let out = Command::new(env!("CARGO_BIN_EXE_tenantsync"))
        .args(["drift", "--env", &repo.env, "--output", "json", "--repo"])
        .arg(repo.path())
        .arg("--kubeconfig")
        .arg(&reader.kubeconfig)
        .output()
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let drift: Value = serde_json::from_slice(&out.stdout).expect("drift JSON");
    // Every object of both pages read: nothing tenantsync applied looks
    // missing, and every hand-made one is found.
    let (missing, modified, _, _) = summary(&drift);
    assert_eq!((missing, modified), (0, 0), "{:#}", drift["summary"]);
    let never = drift["neverDeclared"].as_array().expect("neverDeclared");
    assert_eq!(
        never.len(),
        extra,
        "objects of the second page were not read"
    );
    assert!(
        never
            .iter()
            .any(|id| id == &format!("ConfigMap/{ns}/by-hand-{:04}", extra - 1)),
        "{never:?}"
    );
    let lists: Vec<audit::Request> = reader
        .requests_since(&from)
        .into_iter()
        .filter(|r| r.user_agent.starts_with("tenantsync/") && r.resource == "configmaps")
        .filter(|r| r.verb == "list")
        .collect();
    assert_eq!(lists.len(), 2, "{lists:#?}");
    assert!(
        lists[0].uri.contains("limit=3000") && !lists[0].uri.contains("continue="),
        "{}",
        lists[0].uri
    );
    assert!(
        lists[1].uri.contains("limit=3000") && lists[1].uri.contains("continue="),
        "{}",
        lists[1].uri
    );
    let kinds = tenantsync::object::MANAGED_KINDS.len();
    assert_eq!(
        drift["apiRequests"],
        kinds + 2,
        "one request more: the second page"
    );
    // Gone with the namespace.
    let _ = control_plane()
        .kubectl()
        .args([
            "--context",
            "admin",
            "delete",
            "namespace",
            &ns,
            "--wait=false",
        ])
        .output();
}

/// Colour only on a terminal, never with `--no-color` or `NO_COLOR`; a
/// cluster that refuses to be read fails the plan (exit 1).
#[tokio::test]
async fn plan_colours_only_a_terminal_and_fails_when_the_cluster_refuses() {
    let repo = TestRepo::new("plan-colour");
    repo.apply_rendered().await;
    let ns = repo.namespace("contoso");
    let scale = control_plane()
        .kubectl()
        .args(["--context", "admin", "-n", &ns, "scale"])
        .args(["deployment/fhir-main", "--replicas=3"])
        .output()
        .expect("kubectl");
    assert!(scale.status.success());
    let command = format!(
        "{} plan --env {} --repo {} --kubeconfig {} --context readonly",
        env!("CARGO_BIN_EXE_tenantsync"),
        repo.env,
        repo.path().display(),
        control_plane().kubeconfig().display()
    );
    // `script` runs it on a pseudo-terminal.
    let on_terminal = |extra: &str, no_color: bool| {
        let mut script = Command::new("script");
        script
            .args(["-qec", &format!("{command} {extra}"), "/dev/null"])
            .env_remove("NO_COLOR");
        if no_color {
            script.env("NO_COLOR", "1");
        }
        let out = script.output().expect("script");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(text.contains("spec.replicas: 3 -> 1"), "{text}");
        text
    };
    assert!(
        on_terminal("", false).contains("\x1b["),
        "no colour on a terminal"
    );
    assert!(!on_terminal("--no-color", false).contains('\x1b'));
    assert!(!on_terminal("", true).contains('\x1b'));
    let piped = repo.run("plan", "readonly", &[]);
    let text = String::from_utf8_lossy(&piped.stdout);
    assert!(
        text.contains("spec.replicas: 3 -> 1") && !text.contains('\x1b'),
        "{text}"
    );

    // A credential that may read nothing: the plan fails, naming why.
    let dir = tempfile::tempdir().expect("tempdir");
    let nobody = audit::identity("plan-refused", "system:basic-user", dir.path());
    let out = Command::new(env!("CARGO_BIN_EXE_tenantsync"))
        .args(["plan", "--env", &repo.env, "--detailed-exitcode", "--repo"])
        .arg(repo.path())
        .arg("--kubeconfig")
        .arg(&nobody.kubeconfig)
        .output()
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("permission denied by https://") && err.contains("is forbidden"),
        "{err}"
    );
}

fn api_workspace(name: &str, replicas: u32) -> String {
    format!(
        "apiVersion: tenantsync.io/v1alpha1\nkind: Workspace\nmetadata: {{name: {name}}}\nspec:\n  fhirServices:\n    - name: api\n      replicas: {replicas}\n"
    )
}

fn plan_changed(repo: &TestRepo, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["--output", "json"];
    args.extend_from_slice(extra);
    repo.run("plan", "admin", &args)
}

fn namespaces_changed(plan: &Value) -> std::collections::BTreeSet<String> {
    plan["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .filter(|c| c["action"] != "unchanged")
        .map(|c| {
            c["namespace"]
                .as_str()
                .or(c["name"].as_str())
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}

/// Issue 19: a pull request's plan covers what the pull request changes.
/// `plan --changed-since REV` plans only the workspaces the changed files
/// reach (the work tree, or `--rev`, against REV), every workspace when an
/// environment.yaml of the chain changed, none when nothing reaches the
/// environment; a removed workspace file plans its workspace's deletes.
#[tokio::test]
async fn plan_changed_since_plans_only_the_workspaces_a_change_reaches() {
    let repo = TestRepo::new("plan-changed");
    for name in ["alpha", "beta", "gamma"] {
        repo.write(&format!("workspaces/{name}.yaml"), &api_workspace(name, 1));
    }
    repo.apply_rendered().await;
    let dir = repo.path();
    git(dir, &["init", "-q", "-b", "main"]);
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", "synced"]);
    // Committed but never synced: a whole plan shows it, a changed-since
    // plan from this commit does not.
    repo.write("workspaces/beta.yaml", &api_workspace("beta", 2));
    git(dir, &["commit", "-q", "-am", "beta: 2 replicas"]);
    let base = git(dir, &["rev-parse", "HEAD"]).trim().to_string();
    let whole = repo.plan_json("admin");
    assert_eq!(
        namespaces_changed(&whole),
        [repo.namespace("beta")].into(),
        "{}",
        whole["changes"]
    );

    // The pull request: alpha scaled (in the work tree), a README and
    // another environment's workspace added.
    repo.write("workspaces/alpha.yaml", &api_workspace("alpha", 3));
    repo.write("README.md", "# notes\n");
    std::fs::create_dir_all(dir.join("environments/elsewhere/workspaces")).expect("mkdir");
    std::fs::write(
        dir.join("environments/elsewhere/workspaces/zeta.yaml"),
        api_workspace("zeta", 1),
    )
    .expect("write");
    let out = plan_changed(&repo, &["--changed-since", &base]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: Value = serde_json::from_slice(&out.stdout).expect("plan JSON");
    let alpha_file = format!("environments/{}/workspaces/alpha.yaml", repo.env);
    assert_eq!(
        plan["changedSince"],
        serde_json::json!({"revision": base, "workspaces": {"alpha": [alpha_file]}})
    );
    assert_eq!(
        namespaces_changed(&plan),
        [repo.namespace("alpha")].into(),
        "{}",
        plan["changes"]
    );
    // It reads only what it plans: every namespaced kind in alpha's
    // namespace, the Namespace by name, nothing across namespaces (the API
    // server's audit log, a read-only token of its own); and sees there
    // exactly what a whole plan sees.
    let alpha = repo.namespace("alpha");
    let dir_audit = tempfile::tempdir().expect("tempdir");
    let reader = audit::identity("plan-changed-lists", "test-readonly", dir_audit.path());
    let from = audit::cursor();
    let out = Command::new(env!("CARGO_BIN_EXE_tenantsync"))
        .args([
            "plan",
            "--env",
            &repo.env,
            "--output",
            "json",
            "--changed-since",
            &base,
            "--repo",
        ])
        .arg(repo.path())
        .arg("--kubeconfig")
        .arg(&reader.kubeconfig)
        .output()
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let scoped: Value = serde_json::from_slice(&out.stdout).expect("plan JSON");
    let lists: Vec<audit::Request> = reader
        .requests_since(&from)
        .into_iter()
        .filter(|r| r.user_agent.starts_with("tenantsync/") && r.verb == "list")
        // (Objects to create are looked for by name, as in any plan.)
        .filter(|r| r.uri.contains("labelSelector="))
        .collect();
    let namespaced = tenantsync::object::MANAGED_KINDS
        .iter()
        .filter(|k| k.namespaced)
        .count();
    assert_eq!(lists.len(), namespaced + 1, "{lists:#?}");
    for list in &lists {
        let path = list.uri.split('?').next().unwrap_or_default();
        if list.resource == "namespaces" {
            assert!(
                list.uri
                    .contains(&format!("fieldSelector=metadata.name%3D{alpha}")),
                "{list:?}"
            );
        } else {
            assert!(path.contains(&format!("/namespaces/{alpha}/")), "{list:?}");
        }
    }
    let ids = |plan: &Value| -> std::collections::BTreeSet<String> {
        plan["changes"]
            .as_array()
            .expect("changes")
            .iter()
            .filter(|c| c["namespace"] == alpha.as_str() || c["name"] == alpha.as_str())
            .map(|c| {
                format!(
                    "{} {} {} {}",
                    c["action"], c["kind"], c["namespace"], c["name"]
                )
            })
            .collect()
    };
    let whole_now = repo.plan_json("admin");
    assert_eq!(ids(&scoped), ids(&whole_now));
    assert_eq!(
        scoped["changes"].as_array().map(Vec::len),
        Some(ids(&scoped).len()),
        "only alpha's objects: {}",
        scoped["changes"]
    );
    let text = repo.run("plan", "admin", &["--changed-since", &base, "--no-color"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.starts_with(&format!(
            "Planned only the workspace reached by what changed since {base}:\n  alpha: {alpha_file}\n"
        )),
        "{text}"
    );

    // With --workspace: only the named workspaces the change reaches, and
    // the note says which reached ones it left out.
    let out = plan_changed(&repo, &["--changed-since", &base, "--workspace", "beta"]);
    let plan: Value = serde_json::from_slice(&out.stdout).expect("plan JSON");
    assert_eq!(summary(&plan), (0, 0, 0, 0), "{}", plan["changes"]);
    assert_eq!(plan["changedSince"]["workspaces"], serde_json::json!({}));
    assert_eq!(
        plan["changedSince"]["notNamed"],
        serde_json::json!(["alpha"])
    );
    let text = repo.run(
        "plan",
        "admin",
        &[
            "--changed-since",
            &base,
            "--workspace",
            "beta",
            "--no-color",
        ],
    );
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.starts_with(&format!(
            "Planned no workspace: what changed since {base} reaches only workspaces --workspace does not name.\nReached but not planned (--workspace does not name them): alpha.\n"
        )),
        "{text}"
    );
    let out = plan_changed(
        &repo,
        &[
            "--changed-since",
            &base,
            "--workspace",
            "beta",
            "--workspace",
            "alpha",
        ],
    );
    let plan: Value = serde_json::from_slice(&out.stdout).expect("plan JSON");
    assert_eq!(namespaces_changed(&plan), [repo.namespace("alpha")].into());

    // Committed, read with --rev: the same, from the commit (the work
    // tree's alpha set back to the base's meanwhile, so reading the work
    // tree instead would plan nothing).
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", "alpha: 3 replicas"]);
    let alpha_path = format!("environments/{}/workspaces/alpha.yaml", repo.env);
    git(dir, &["checkout", &base, "--", &alpha_path]);
    let out = plan_changed(&repo, &["--changed-since", &base, "--rev", "HEAD"]);
    let plan: Value = serde_json::from_slice(&out.stdout).expect("plan JSON");
    assert_eq!(namespaces_changed(&plan), [repo.namespace("alpha")].into());
    git(dir, &["checkout", "HEAD", "--", &alpha_path]);

    // Nothing reaching this environment: nothing planned.
    let head = git(dir, &["rev-parse", "HEAD"]).trim().to_string();
    std::fs::write(
        dir.join("environments/elsewhere/workspaces/zeta.yaml"),
        api_workspace("zeta", 2),
    )
    .expect("write");
    let out = plan_changed(&repo, &["--changed-since", &head]);
    let plan: Value = serde_json::from_slice(&out.stdout).expect("plan JSON");
    assert_eq!(plan["changedSince"]["workspaces"], serde_json::json!({}));
    assert_eq!(summary(&plan), (0, 0, 0, 0), "{}", plan["changes"]);

    // gamma's file removed: its objects are planned for deletion, only them.
    repo.remove("workspaces/gamma.yaml");
    let out = plan_changed(&repo, &["--changed-since", &head]);
    let plan: Value = serde_json::from_slice(&out.stdout).expect("plan JSON");
    assert_eq!(
        namespaces_changed(&plan),
        [repo.namespace("gamma")].into(),
        "{}",
        plan["changes"]
    );
    assert!(changes(&plan, "create").is_empty() && !changes(&plan, "delete").is_empty());

    // The environment's own settings changed: everything is planned.
    repo.write(
        "environment.yaml",
        &format!(
            "apiVersion: tenantsync.io/v1alpha1\nkind: Environment\nmetadata:\n  name: {}\nspec:\n  base: base\n  ingress:\n    domain: test.example.com\n# reviewed\n",
            repo.env
        ),
    );
    let text = repo.run(
        "plan",
        "admin",
        &["--changed-since", &head, "--output", "markdown"],
    );
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains(&format!(
            "\n\nPlanned every workspace: `environments/{}/environment.yaml` changed since `{head}`.\n",
            repo.env
        )) && text.starts_with("### tenantsync plan"),
        "{text}"
    );
    let out = plan_changed(&repo, &["--changed-since", &head]);
    let plan: Value = serde_json::from_slice(&out.stdout).expect("plan JSON");
    assert_eq!(
        plan["changedSince"]["everything"],
        format!("environments/{}/environment.yaml", repo.env)
    );
    assert_eq!(
        namespaces_changed(&plan),
        [
            repo.namespace("alpha"),
            repo.namespace("beta"),
            repo.namespace("gamma")
        ]
        .into(),
        "{}",
        plan["changes"]
    );
    // The same change committed, as a pull request's head: planned from
    // the commit (`--rev HEAD`; the work tree's environment.yaml set back
    // meanwhile, so only the commit holds the change), everything again.
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", "environment settings"]);
    let settings = format!("environments/{}/environment.yaml", repo.env);
    git(dir, &["checkout", &head, "--", &settings]);
    let out = plan_changed(&repo, &["--changed-since", &head, "--rev", "HEAD"]);
    let plan: Value = serde_json::from_slice(&out.stdout).expect("plan JSON");
    assert_eq!(
        plan["changedSince"]["everything"],
        format!("environments/{}/environment.yaml", repo.env)
    );
    assert_eq!(
        namespaces_changed(&plan),
        [
            repo.namespace("alpha"),
            repo.namespace("beta"),
            repo.namespace("gamma")
        ]
        .into(),
        "{}",
        plan["changes"]
    );
    git(dir, &["checkout", "HEAD", "--", &settings]);

    // Not a Git repository: said, exit 1.
    let folder = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_tenantsync"))
        .args([
            "plan",
            "--env",
            &repo.env,
            "--changed-since",
            "main",
            "--repo",
        ])
        .arg(folder.path())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--changed-since main needs a revision of the Git repository"),
        "{err}"
    );
}

/// The plan JSON's changes in these namespaces (and their Namespaces).
fn changes_in(plan: &Value, namespaces: &[String]) -> Vec<Value> {
    plan["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .filter(|c| {
            namespaces.iter().any(|ns| {
                c["namespace"] == ns.as_str()
                    || (c["kind"] == "Namespace" && c["name"] == ns.as_str())
            })
        })
        .cloned()
        .collect()
}

/// Commits the test repository's files as they are; returns the commit.
fn commit_all(dir: &std::path::Path, message: &str) -> String {
    if !dir.join(".git").exists() {
        git(dir, &["init", "-q", "-b", "main"]);
    }
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", message]);
    git(dir, &["rev-parse", "HEAD"]).trim().to_string()
}

/// Issue 19 (a one-workspace pull request planned in milliseconds): a
/// changed-since plan reads only the changed workspaces' files (and those
/// they are checked with), and plans for them exactly what a whole plan
/// plans: the same changes, diffs included. The pull request scales alpha
/// and patches contoso, which the base layer defines, in a file of its own
/// whose dicomCast names the FHIR service contoso's base file declares;
/// beta's namespace holds a resources/ manifest.
#[tokio::test]
async fn changed_since_plan_is_the_whole_plan_filtered_to_the_changed_workspaces() {
    let repo = TestRepo::new("plan-changed-same");
    for name in ["alpha", "beta", "gamma"] {
        repo.write(&format!("workspaces/{name}.yaml"), &api_workspace(name, 1));
    }
    repo.write(
        "resources/beta-settings.yaml",
        &format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: settings, namespace: {}}}\ndata: {{a: b}}\n",
            repo.namespace("beta")
        ),
    );
    repo.apply_rendered().await;
    let base = commit_all(repo.path(), "synced");

    repo.write("workspaces/alpha.yaml", &api_workspace("alpha", 3));
    let cast = |fhir: &str| {
        format!(
            "apiVersion: tenantsync.io/v1alpha1\nkind: WorkspacePatch\nmetadata: {{name: contoso}}\nspec:\n  dicomServices:\n    - name: imaging\n      dicomCast: {{fhirService: {fhir}, pollInterval: 45s}}\n"
        )
    };
    repo.write("workspaces/contoso.cast.yaml", &cast("main"));
    let out = plan_changed(&repo, &["--changed-since", &base]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    let scoped: Value = serde_json::from_slice(&out.stdout).expect("plan JSON");
    assert_eq!(
        scoped["changedSince"]["workspaces"]
            .as_object()
            .map(|w| w.keys().cloned().collect::<Vec<_>>()),
        Some(vec!["alpha".to_string(), "contoso".to_string()]),
        "{}",
        scoped["changedSince"]
    );
    let planned = [repo.namespace("alpha"), repo.namespace("contoso")];
    let whole = repo.plan_json("admin");
    let expected = changes_in(&whole, &planned);
    assert!(
        expected.iter().any(|c| c["action"] == "update"),
        "the pull request changes something: {expected:#?}"
    );
    assert_eq!(scoped["changes"], Value::Array(expected));
    for key in ["create", "update", "delete", "unchanged"] {
        let n = scoped["changes"]
            .as_array()
            .expect("changes")
            .iter()
            .filter(|c| c["action"] == key)
            .count() as u64;
        assert_eq!(scoped["summary"][key], n, "{key}: {}", scoped["summary"]);
    }

    // The dicomCast naming a FHIR service contoso does not have: refused
    // at the patch's line and column, as the whole plan refuses it.
    repo.write("workspaces/contoso.cast.yaml", &cast("records"));
    let scoped = plan_changed(&repo, &["--changed-since", &base]);
    let whole = repo.run("plan", "admin", &[]);
    assert_eq!(scoped.status.code(), Some(1), "{}", stderr_of(&scoped));
    let file = format!("environments/{}/workspaces/contoso.cast.yaml:7:", repo.env);
    assert!(
        stderr_of(&scoped).contains(&file)
            && stderr_of(&scoped)
                .contains("names FHIR service `records`, which workspace `contoso` does not have"),
        "{}",
        stderr_of(&scoped)
    );
    assert_eq!(stderr_of(&scoped), stderr_of(&whole));
}

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Issue 19: a changed-since plan reads only the changed workspace's files,
/// yet a pull request that makes it collide with what it does not change is
/// refused as a whole plan refuses it, at the file, line and column: alpha's
/// FHIR service renamed so that its ConfigMap is an unchanged resources/
/// manifest; a workspace added where the namespace template (no
/// `{workspace}`) puts it in the namespace of an unchanged one.
#[test]
fn changed_since_plan_refuses_a_changed_workspace_colliding_with_what_it_does_not_change() {
    let repo = TestRepo::new("plan-changed-clash");
    repo.write("workspaces/alpha.yaml", &api_workspace("alpha", 1));
    repo.write("workspaces/beta.yaml", &api_workspace("beta", 1));
    repo.write(
        "resources/records.yaml",
        &format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: fhir-records-config, namespace: {}}}\ndata: {{a: b}}\n",
            repo.namespace("alpha")
        ),
    );
    let base = commit_all(repo.path(), "base");
    repo.write(
        "workspaces/alpha.yaml",
        &api_workspace("alpha", 1).replace("name: api", "name: records"),
    );
    let scoped = plan_changed(&repo, &["--changed-since", &base]);
    assert_eq!(scoped.status.code(), Some(1), "{}", stderr_of(&scoped));
    let expected = format!(
        "manifest ConfigMap {ns}/fhir-records-config is also rendered for FHIR service `records` of workspace `alpha` (environments/{env}/workspaces/alpha.yaml:6:13)",
        env = repo.env,
        ns = repo.namespace("alpha")
    );
    let err = stderr_of(&scoped);
    assert!(
        err.lines().any(|l| l.starts_with(&format!(
            "environments/{}/resources/records.yaml:1:",
            repo.env
        )) && l.contains(&expected)),
        "{err}"
    );
    assert_eq!(
        stderr_of(&scoped),
        stderr_of(&repo.run("plan", "admin", &[]))
    );

    // One namespace for every workspace: gamma, added, lands in beta's.
    let repo = TestRepo::new("plan-changed-shared");
    repo.write(
        "environment.yaml",
        &format!(
            "apiVersion: tenantsync.io/v1alpha1\nkind: Environment\nmetadata:\n  name: {}\nspec:\n  base: base\n  namespaceTemplate: \"shared-{{environment}}\"\n  ingress:\n    domain: test.example.com\n",
            repo.env
        ),
    );
    repo.write("workspaces/beta.yaml", &api_workspace("beta", 1));
    let base = commit_all(repo.path(), "base");
    repo.write("workspaces/gamma.yaml", &api_workspace("gamma", 1));
    let scoped = plan_changed(&repo, &["--changed-since", &base]);
    assert_eq!(scoped.status.code(), Some(1), "{}", stderr_of(&scoped));
    let at = format!(
        "environments/{}/workspaces/gamma.yaml:3:18: error: ",
        repo.env
    );
    let clash = format!(
        "workspaces `fabrikam` (environments/base/workspaces/fabrikam.yaml:5:9) and `gamma` both render into namespace `shared-{}`",
        repo.env
    );
    let line = stderr_of(&scoped)
        .lines()
        .find(|l| l.starts_with(&at) && l.contains(&clash))
        .map(str::to_string)
        .unwrap_or_else(|| panic!("{}", stderr_of(&scoped)));
    assert!(stderr_of(&repo.run("plan", "admin", &[])).contains(&line));
}

/// Issue 26: an image change in `base` over ten workspaces, with a rollout
/// of 20% then 100% and a pilot, is planned as two steps (the pilot and
/// one more, then the other eight), in JSON and text; `--workspace` plans
/// show no steps; a step synced by hand leaves the rest to roll out.
#[tokio::test]
async fn plan_shows_which_workspaces_each_rollout_step_reaches() {
    let repo = TestRepo::new("plan-rollout");
    for i in 0..6 {
        repo.write(
            &format!("workspaces/tenant-{i}.yaml"),
            &api_workspace(&format!("tenant-{i}"), 1),
        );
    }
    repo.write(
        "environment.yaml",
        &format!(
            "apiVersion: tenantsync.io/v1alpha1\nkind: Environment\nmetadata:\n  name: {}\nspec:\n  base: base\n  ingress:\n    domain: test.example.com\n  syncPolicy:\n    rollout:\n      steps: [20%, 100%]\n      pilot: [tenant-3]\n      pauseBetween: 10m\n",
            repo.env
        ),
    );
    repo.apply_rendered().await;
    let plan = repo.plan_json("readonly");
    assert!(
        plan.get("rollout").is_none(),
        "nothing changes: {:#}",
        plan["rollout"]
    );
    // The FHIR image changes in base: every workspace's FHIR Deployments.
    let base = repo.path().join("environments/base/environment.yaml");
    let text = std::fs::read_to_string(&base).expect("read base");
    let bumped = text.replace("fhir-server, tag: \"4.3.1\"", "fhir-server, tag: \"4.4.0\"");
    assert_ne!(bumped, text);
    std::fs::write(&base, bumped).expect("write base");
    let plan = repo.plan_json("readonly");
    let steps: Vec<Vec<String>> = plan["rollout"]["steps"]
        .as_array()
        .unwrap_or_else(|| panic!("no rollout: {plan:#}"))
        .iter()
        .map(|s| {
            s["workspaces"]
                .as_array()
                .expect("workspaces")
                .iter()
                .map(|w| w.as_str().expect("name").to_string())
                .collect()
        })
        .collect();
    assert_eq!(steps.len(), 2, "{:#}", plan["rollout"]);
    assert_eq!(steps[0].len(), 2, "20% of 10");
    assert_eq!(steps[0][0], "tenant-3", "the pilot first");
    assert_eq!(steps[1].len(), 8);
    let mut all: Vec<&String> = steps.iter().flatten().collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 10, "every changed workspace once: {steps:?}");
    assert_eq!(plan["rollout"]["pauseBetweenSeconds"], 600);
    let out = repo.run("plan", "readonly", &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("  step 1 (20%, 2): {}\n", steps[0].join(", "))),
        "{text}"
    );
    // A plan of some workspaces is not the environment's rollout.
    let out = repo.run(
        "plan",
        "readonly",
        &["--output", "json", "--workspace", &steps[0][0]],
    );
    let some: Value = serde_json::from_slice(&out.stdout).expect("plan JSON");
    assert!(some.get("rollout").is_none(), "{:#}", some["rollout"]);
    // Step 1 by hand: the other eight are left to roll out.
    let mut args = vec!["--output", "json"];
    for ws in &steps[0] {
        args.extend(["--workspace", ws.as_str()]);
    }
    let out = repo.run("sync", "admin", &args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan = repo.plan_json("readonly");
    let left: usize = plan["rollout"]["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| s["workspaces"].as_array().map_or(0, Vec::len))
        .sum();
    assert_eq!(left, 8, "{:#}", plan["rollout"]);
}

/// Review of issue 19: what a selection's plan decides must not depend on
/// which unselected workspaces happen to be read. `kube` renders into
/// `kube-<env>` (a reserved namespace: the operator's guardrails refuse
/// it) and `broken` is invalid; both unchanged. A whole plan refuses them;
/// a pull request editing alpha is planned (neither is read: no note
/// names them); `--workspace alpha`, which reads every workspace, plans
/// the same and notes both on stderr instead of refusing; so does a change
/// to environment.yaml planned with `--workspace alpha` (only alpha read).
#[test]
fn an_unselected_workspaces_guardrail_breach_is_noted_whatever_else_is_read() {
    let repo = TestRepo::new("plan-changed-unselected");
    for name in ["alpha", "kube"] {
        repo.write(&format!("workspaces/{name}.yaml"), &api_workspace(name, 1));
    }
    repo.write(
        "workspaces/broken.yaml",
        &api_workspace("broken", 1).replace("replicas", "replcas"),
    );
    let base = commit_all(repo.path(), "base");
    repo.write("workspaces/alpha.yaml", &api_workspace("alpha", 2));
    let reserved = format!("reserved namespace `kube-{}`", repo.env);
    let kube_note = "note: workspace `kube` is not selected, left as it is; a whole plan and `tenantsync validate` refuse it: ";
    let broken_note = "note: invalid workspace(s) not selected, left as they are: broken";

    // The whole plan refuses both; without broken, the guardrail breach.
    let whole = repo.run("plan", "admin", &[]);
    assert_eq!(whole.status.code(), Some(1), "{}", stderr_of(&whole));
    assert!(
        stderr_of(&whole).contains("replcas"),
        "{}",
        stderr_of(&whole)
    );
    let valid = TestRepo::new("plan-changed-unselected-v");
    valid.write("workspaces/kube.yaml", &api_workspace("kube", 1));
    let out = valid.run("plan", "admin", &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains(&format!("reserved namespace `kube-{}`", valid.env)),
        "{}",
        stderr_of(&out)
    );

    // The pull request: only alpha is read, nothing else is said.
    let scoped = plan_changed(&repo, &["--changed-since", &base]);
    assert_eq!(scoped.status.code(), Some(0), "{}", stderr_of(&scoped));
    let err = stderr_of(&scoped);
    assert!(
        !err.contains("note:") && !err.contains("broken") && !err.contains("kube"),
        "{err}"
    );
    let scoped: Value = serde_json::from_slice(&scoped.stdout).expect("plan JSON");
    assert_eq!(
        scoped["changedSince"]["workspaces"]
            .as_object()
            .map(|w| w.keys().cloned().collect::<Vec<_>>()),
        Some(vec!["alpha".to_string()])
    );
    assert_eq!(
        namespaces_changed(&scoped),
        [repo.namespace("alpha")].into()
    );

    // --workspace alpha reads every workspace: the same plan, both noted.
    let named = plan_changed(&repo, &["--workspace", "alpha"]);
    assert_eq!(named.status.code(), Some(0), "{}", stderr_of(&named));
    let err = stderr_of(&named);
    assert!(err.contains(broken_note), "{err}");
    assert!(
        err.lines()
            .any(|l| l.starts_with(kube_note) && l.contains(&reserved)),
        "{err}"
    );
    let named: Value = serde_json::from_slice(&named.stdout).expect("plan JSON");
    assert_eq!(named["changes"], scoped["changes"]);

    // environment.yaml changed too, planned with --workspace alpha: only
    // alpha (and what it is checked with) is read; nothing else is said.
    repo.write(
        "environment.yaml",
        &format!(
            "apiVersion: tenantsync.io/v1alpha1\nkind: Environment\nmetadata:\n  name: {}\nspec:\n  base: base\n  ingress:\n    domain: test.example.com\n  syncPolicy:\n    maxPrunePercent: 20\n",
            repo.env
        ),
    );
    let both = plan_changed(&repo, &["--changed-since", &base, "--workspace", "alpha"]);
    assert_eq!(both.status.code(), Some(0), "{}", stderr_of(&both));
    let err = stderr_of(&both);
    assert!(
        !err.contains("note:") && !err.contains("broken") && !err.contains("kube"),
        "{err}"
    );
    let both: Value = serde_json::from_slice(&both.stdout).expect("plan JSON");
    assert_eq!(
        both["changedSince"]["everything"],
        format!("environments/{}/environment.yaml", repo.env)
    );
    assert_eq!(both["changedSince"]["named"], serde_json::json!(["alpha"]));
    assert_eq!(both["changes"], scoped["changes"]);
}

/// Review of issue 19: the base revision is resolved first, so a
/// `--changed-since REV` that does not exist is the error reported, not a
/// signature failure of the commit planned (read later).
#[test]
fn a_missing_changed_since_revision_is_reported_before_the_signature_check() {
    let repo = TestRepo::new("plan-changed-bad-rev");
    let keys = tempfile::tempdir().expect("tempdir");
    let alice = crate::signed_commits::signer(keys.path(), "alice");
    let signers = crate::signed_commits::allowed_signers(keys.path(), &[&alice]);
    git(repo.path(), &["init", "-q", "-b", "main"]);
    let unsigned = crate::signed_commits::commit(repo.path(), "unsigned", None);
    let signers = signers.to_str().expect("utf-8 path");
    let plan = |since: &str| {
        repo.run(
            "plan",
            "admin",
            &[
                "--rev",
                "HEAD",
                "--allowed-signers",
                signers,
                "--verify-signatures",
                "--changed-since",
                since,
            ],
        )
    };
    let out = plan("no-such-rev");
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    let err = stderr_of(&out);
    assert!(
        err.contains("--changed-since no-such-rev") && !err.contains("not trusted"),
        "{err}"
    );
    // An existing one: the signature is checked.
    let out = plan("HEAD");
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains(&format!("commit {unsigned} is not trusted")),
        "{}",
        stderr_of(&out)
    );
}
