//! `tenantsync sync` against the real control plane: order, inventory,
//! idempotence, prune and its guards, conflicts, immutable fields, dry-run
//! and crash safety.

use std::process::{Command, Output, Stdio};
use std::time::Duration;
use tenantsync::sync::Fence;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};

use crate::support::repo::TestRepo;
use crate::support::{User, audit, control_plane, eventually};

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

async fn inventory(repo: &TestRepo) -> Option<tenantsync::sync::inventory::Inventory> {
    let api: Api<ConfigMap> = Api::namespaced(
        control_plane().client(User::Admin).await,
        tenantsync::sync::inventory::SYSTEM_NAMESPACE,
    );
    let cm = api
        .get_opt(&tenantsync::sync::inventory::name_of(&repo.env))
        .await
        .expect("get inventory")?;
    Some(tenantsync::sync::inventory::Inventory::from_config_map(&cm).expect("valid inventory"))
}

async fn exists<K>(namespace: &str, name: &str) -> bool
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    <K as kube::Resource>::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(control_plane().client(User::Admin).await, namespace);
    api.get_opt(name).await.expect("get").is_some()
}

/// README's stage order within a wave: Namespaces (and CRDs),
/// ServiceAccounts, ConfigMaps and Secrets, Services, Deployments,
/// PodDisruptionBudgets, Ingresses, NetworkPolicies.
fn kind_rank(resource: &str) -> usize {
    [
        &["namespaces", "customresourcedefinitions"][..],
        &["serviceaccounts"],
        &["configmaps", "secrets"],
        &["services"],
        &["deployments"],
        &["poddisruptionbudgets"],
        &["ingresses"],
        &["networkpolicies"],
    ]
    .iter()
    .position(|group| group.contains(&resource))
    .unwrap_or_else(|| panic!("{resource} has no place in the order"))
}

#[tokio::test]
async fn first_sync_creates_everything_and_records_it_second_writes_nothing() {
    let repo = TestRepo::new("sync-first");
    // Enough objects per stage to fill the eight requests in flight.
    for i in 0..12 {
        repo.write(
            &format!("workspaces/t{i:02}.yaml"),
            &format!("apiVersion: tenantsync.io/v1alpha1\nkind: Workspace\nmetadata: {{name: t{i:02}}}\nspec:\n  fhirServices:\n    - name: api\n      replicas: 2\n    - name: web\n      replicas: 2\n"),
        );
    }
    // Sync waves: one manifest before everything (in a namespace of the
    // operator's that exists already), one after.
    let early_ns = control_plane().namespace("sync-first-early").await;
    repo.write(
        "resources/early.yaml",
        &format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: early\n  namespace: {early_ns}\n  annotations: {{tenantsync.io/sync-wave: \"-1\"}}\ndata: {{a: b}}\n"),
    );
    let contoso = repo.namespace("contoso");
    repo.write(
        "resources/late.yaml",
        &format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: late\n  namespace: {contoso}\n  annotations: {{tenantsync.io/sync-wave: \"1\"}}\ndata: {{a: b}}\n"),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let caller = audit::identity("sync-first", "cluster-admin", dir.path());
    let from = audit::cursor();
    let out = Command::new(env!("CARGO_BIN_EXE_tenantsync"))
        .args(["sync", "--env", &repo.env, "--output", "json"])
        .args(["--allow-namespace", &early_ns, "--repo"])
        .arg(repo.path())
        .arg("--kubeconfig")
        .arg(&caller.kubeconfig)
        .output()
        .expect("sync");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).expect("report");
    let created = ids(&report, "created");
    assert!(created.len() > 100, "{}", created.len());
    assert_eq!(
        created.first(),
        Some(&format!("ConfigMap/{early_ns}/early"))
    );
    assert_eq!(created.last(), Some(&format!("ConfigMap/{contoso}/late")));

    // As the API server saw it: every write of a stage answered before the
    // first of the next stage arrived, waves first, then kinds in order;
    // at most eight writes in flight, and that many at once.
    let writes: Vec<audit::Request> = caller
        .requests_since(&from)
        .into_iter()
        .filter(|r| r.user_agent.starts_with("tenantsync/") && r.is_write())
        .filter(|r| r.namespace != tenantsync::sync::inventory::SYSTEM_NAMESPACE)
        .collect();
    assert_eq!(writes.len(), created.len(), "one write per object");
    assert!(
        writes.iter().all(|w| w.verb == "patch" && w.code == 201),
        "{writes:#?}"
    );
    let stage_of = |w: &audit::Request| -> (i32, usize) {
        let wave = match w.name.as_str() {
            "early" => -1,
            "late" => 1,
            _ => 0,
        };
        (wave, kind_rank(&w.resource))
    };
    let mut stages: std::collections::BTreeMap<(i32, usize), Vec<&audit::Request>> =
        std::collections::BTreeMap::new();
    for w in &writes {
        stages.entry(stage_of(w)).or_default().push(w);
    }
    assert_eq!(stages.len(), 10, "{:?}", stages.keys().collect::<Vec<_>>());
    let stages: Vec<(&(i32, usize), &Vec<&audit::Request>)> = stages.iter().collect();
    for pair in stages.windows(2) {
        let ((before, earlier), (after, later)) = (pair[0], pair[1]);
        let done = earlier.iter().map(|w| w.completed).max().expect("a write");
        let next = later.iter().map(|w| w.received).min().expect("a write");
        assert!(
            done <= next,
            "stage {after:?} began {} µs before stage {before:?} was done",
            done - next
        );
    }
    let all: Vec<&audit::Request> = writes.iter().collect();
    assert_eq!(audit::most_in_flight(&all), 8, "requests in flight at once");

    let inv = inventory(&repo).await.expect("inventory written");
    assert_eq!(inv.objects.len(), created.len());
    assert!(inv.last_applied_at.is_some());

    let (out, report) = sync(&repo, &["--allow-namespace", &early_ns]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(report["writeRequests"], 0, "{report:#}");
    assert_eq!(report["unchanged"].as_u64(), Some(created.len() as u64));
}

#[tokio::test]
async fn a_changed_declaration_updates_only_the_affected_objects() {
    let repo = TestRepo::new("sync-change");
    let (out, _) = sync(&repo, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    repo.write(
        "workspaces/woodgrove.yaml",
        "apiVersion: tenantsync.io/v1alpha1\nkind: WorkspacePatch\nmetadata: {name: woodgrove}\nspec:\n  fhirServices:\n    - name: api\n      replicas: 3\n",
    );
    let (out, report) = sync(&repo, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let ns = repo.namespace("woodgrove");
    assert_eq!(
        ids(&report, "updated"),
        [format!("Deployment/{ns}/fhir-api")]
    );
    assert_eq!(
        ids(&report, "created"),
        [format!("PodDisruptionBudget/{ns}/fhir-api")]
    );
    let api: Api<Deployment> = Api::namespaced(control_plane().client(User::Admin).await, &ns);
    let d = api.get("fhir-api").await.expect("deployment");
    assert_eq!(d.spec.and_then(|s| s.replicas), Some(3));
}

#[tokio::test]
async fn removing_workspaces_prunes_only_with_prune_and_stops_mass_prune() {
    let repo = TestRepo::new("sync-prune");
    let (out, _) = sync(&repo, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let ns = repo.namespace("woodgrove");
    // A ConfigMap labelled like tenantsync's but never applied by it.
    let hand = control_plane()
        .kubectl()
        .args([
            "--context",
            "admin",
            "-n",
            &repo.namespace("contoso"),
            "create",
            "configmap",
            "by-hand",
        ])
        .output()
        .expect("kubectl");
    assert!(hand.status.success());
    let label = control_plane()
        .kubectl()
        .args([
            "--context",
            "admin",
            "-n",
            &repo.namespace("contoso"),
            "label",
            "configmap",
            "by-hand",
        ])
        .arg("app.kubernetes.io/managed-by=tenantsync")
        .arg(format!("tenantsync.io/environment={}", repo.env))
        .output()
        .expect("kubectl");
    assert!(label.status.success());

    repo.write(
        "workspaces/woodgrove.yaml",
        "apiVersion: tenantsync.io/v1alpha1\nkind: WorkspacePatch\nmetadata: {name: woodgrove}\n$patch: delete\n",
    );
    // Without --prune nothing goes.
    let (out, report) = sync(&repo, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(ids(&report, "pruned").is_empty());
    assert!(exists::<Deployment>(&ns, "fhir-api").await);
    // Deleting a workspace's namespace needs --allow-mass-prune; nothing changes.
    let (out, _) = sync(&repo, &["--prune"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!("would delete the namespace(s) {ns}")),
        "{}",
        stderr(&out)
    );
    assert!(exists::<Deployment>(&ns, "fhir-api").await);

    let (out, report) = sync(&repo, &["--prune", "--allow-mass-prune"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let pruned = ids(&report, "pruned");
    assert!(
        pruned.iter().all(|id| id.contains("woodgrove")),
        "{pruned:?}"
    );
    assert_eq!(
        pruned.last().map(String::as_str),
        Some(format!("Namespace/{ns}").as_str())
    );
    assert!(pruned.contains(&format!("Deployment/{ns}/fhir-api")));
    let namespaces: Api<Namespace> = Api::all(control_plane().client(User::Admin).await);
    eventually(
        "the pruned namespace to disappear",
        Duration::from_secs(60),
        || {
            let namespaces = namespaces.clone();
            let ns = ns.clone();
            async move {
                namespaces
                    .get_opt(&ns)
                    .await
                    .ok()
                    .flatten()
                    .is_none()
                    .then_some(())
            }
        },
    )
    .await;
    assert!(
        exists::<ConfigMap>(&repo.namespace("contoso"), "by-hand").await,
        "hand-made object was pruned"
    );
    assert!(
        !inventory(&repo)
            .await
            .expect("inventory")
            .objects
            .iter()
            .any(|o| o.name.contains("woodgrove"))
    );

    // Dropping most of what is left is a mass prune.
    for ws in ["contoso", "fabrikam"] {
        repo.write(
            &format!("workspaces/{ws}.yaml"),
            &format!("apiVersion: tenantsync.io/v1alpha1\nkind: WorkspacePatch\nmetadata: {{name: {ws}}}\n$patch: delete\n"),
        );
    }
    let (out, _) = sync(&repo, &["--prune"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("--allow-mass-prune"),
        "{}",
        stderr(&out)
    );
    assert!(exists::<Deployment>(&repo.namespace("contoso"), "fhir-main").await);
}

#[tokio::test]
async fn a_conflicting_manager_is_reported_then_overwritten_when_forced() {
    let repo = TestRepo::new("sync-conflict");
    let (out, _) = sync(&repo, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // The progress lines use English plurals ("7 Ingress(s)" once).
    assert!(
        stderr(&out).contains(" Deployments\n") && !stderr(&out).contains("(s)\n"),
        "{}",
        stderr(&out)
    );
    // status --output json gives the object count as a number ("59" once).
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_tenantsync"))
        .args([
            "status",
            "--env",
            &repo.env,
            "--output",
            "json",
            "--kubeconfig",
        ])
        .arg(control_plane().kubeconfig())
        .output()
        .expect("tenantsync status");
    assert_eq!(status.status.code(), Some(0), "{}", stderr(&status));
    let status: Value = serde_json::from_slice(&status.stdout).expect("status JSON");
    assert!(
        status["objectCount"].as_u64().is_some_and(|n| n > 0),
        "{status}"
    );
    let ns = repo.namespace("contoso");
    let api: Api<ConfigMap> = Api::namespaced(control_plane().client(User::Admin).await, &ns);
    // Another tool takes over a field tenantsync set.
    let other = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "fhir-main-config"},
        "data": {"FhirServer__Version": "R5"}});
    api.patch(
        "fhir-main-config",
        &PatchParams::apply("other-tool").force(),
        &Patch::Apply(&other),
    )
    .await
    .expect("other manager applies");
    // The declaration changes that field's neighbour, so tenantsync must write.
    repo.write(
        "workspaces/contoso.yaml",
        "apiVersion: tenantsync.io/v1alpha1\nkind: WorkspacePatch\nmetadata: {name: contoso}\nspec:\n  fhirServices:\n    - name: main\n      fhirVersion: R4B\n",
    );
    let (out, report) = sync(&repo, &[]);
    assert_eq!(out.status.code(), Some(1));
    // A conflict is not called a failure while the summary counts none.
    assert!(
        stderr(&out).contains(&format!(
            "not applied: ConfigMap/{ns}/fhir-main-config (see below)"
        )) && !stderr(&out).contains("apply failed"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        report["failures"].as_array().map(Vec::len),
        Some(0),
        "{report:#}"
    );
    let conflicts = report["conflicts"].as_array().expect("conflicts");
    assert_eq!(conflicts.len(), 1, "{report:#}");
    assert_eq!(
        conflicts[0]["id"],
        format!("ConfigMap/{ns}/fhir-main-config")
    );
    assert_eq!(conflicts[0]["fields"][0]["manager"], "other-tool");
    assert!(
        conflicts[0]["fields"][0]["field"]
            .as_str()
            .expect("field")
            .contains("FhirServer__Version")
    );
    assert_eq!(
        api.get("fhir-main-config")
            .await
            .expect("get")
            .data
            .expect("data")["FhirServer__Version"],
        "R5"
    );

    // The repository's syncPolicy.forceConflicts: false tightens the
    // operator's --force-conflicts: still a conflict, left alone.
    environment_with(&repo, "  syncPolicy: {forceConflicts: false}\n");
    let (out, report) = sync(&repo, &["--force-conflicts"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(report["conflicts"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        api.get("fhir-main-config")
            .await
            .expect("get")
            .data
            .expect("data")["FhirServer__Version"],
        "R5"
    );
    // Both say force: taken over.
    environment_with(&repo, "  syncPolicy: {forceConflicts: true}\n");
    let (out, _) = sync(&repo, &["--force-conflicts"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        api.get("fhir-main-config")
            .await
            .expect("get")
            .data
            .expect("data")["FhirServer__Version"],
        "R4B"
    );
}

#[tokio::test]
async fn an_immutable_field_fails_clearly_then_recreates_when_asked() {
    let repo = TestRepo::new("sync-immutable");
    let ns = repo.namespace("woodgrove");
    let (out, _) = sync(&repo, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // As if an earlier version had rendered another selector.
    let api: Api<Deployment> = Api::namespaced(control_plane().client(User::Admin).await, &ns);
    api.delete("fhir-api", &Default::default())
        .await
        .expect("delete");
    let old = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "fhir-api",
        "labels": {"app.kubernetes.io/managed-by": "tenantsync", "tenantsync.io/environment": repo.env}},
        "spec": {"selector": {"matchLabels": {"legacy": "fhir-api"}},
            "template": {"metadata": {"labels": {"legacy": "fhir-api"}},
                "spec": {"containers": [{"name": "fhir-server", "image": "old:1"}]}}}});
    api.patch(
        "fhir-api",
        &PatchParams::apply("tenantsync"),
        &Patch::Apply(&old),
    )
    .await
    .expect("old apply");

    let (out, report) = sync(&repo, &[]);
    assert_eq!(out.status.code(), Some(1));
    let failure = report["failures"][0]["message"]
        .as_str()
        .expect("failure")
        .to_string();
    assert!(
        failure.contains(&format!("Deployment/{ns}/fhir-api")),
        "{failure}"
    );
    assert!(
        failure.contains("immutable") && failure.contains("--force-recreate"),
        "{failure}"
    );

    let (out, report) = sync(&repo, &["--force-recreate"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        ids(&report, "recreated"),
        [format!("Deployment/{ns}/fhir-api")]
    );
    let d = api.get("fhir-api").await.expect("get");
    let selector = d.spec.expect("spec").selector.match_labels.expect("labels");
    assert_eq!(
        selector
            .get("app.kubernetes.io/instance")
            .map(String::as_str),
        Some("fhir-api")
    );
}

/// Known gap of issue 15 closed: the delete of `--force-recreate` had no
/// precondition, so an object replaced by someone else between the plan's
/// listing and the recreate (same name, another uid) was deleted. It is now
/// deleted only while it has the uid the plan listed.
#[tokio::test]
async fn a_recreate_deletes_only_the_object_planned_not_one_that_replaced_it() {
    let cp = control_plane();
    let ns = cp.namespace("recreate-uid").await;
    let client = cp.client(User::Admin).await;
    let api: Api<ConfigMap> = Api::namespaced(client, &ns);
    let body = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "fhir-config", "namespace": ns}, "data": {"a": "1"}});
    let planned = api
        .patch(
            "fhir-config",
            &PatchParams::apply("test"),
            &Patch::Apply(&body),
        )
        .await
        .expect("apply");
    let planned_uid = planned.metadata.uid.clone().expect("uid");
    // Someone replaces it after the plan listed it.
    api.delete("fhir-config", &Default::default())
        .await
        .expect("delete");
    let replaced = api
        .patch(
            "fhir-config",
            &PatchParams::apply("someone"),
            &Patch::Apply(&body),
        )
        .await
        .expect("recreate");
    let replaced_uid = replaced.metadata.uid.clone().expect("uid");
    assert_ne!(planned_uid, replaced_uid);

    let cluster = tenantsync::cluster::Cluster::connect(&tenantsync::cluster::ClusterOptions {
        kubeconfig: Some(cp.kubeconfig().to_path_buf()),
        context: Some(User::Admin.context().to_string()),
        ..Default::default()
    })
    .await
    .expect("connect");
    let r = tenantsync::sync::inventory::ObjectRef {
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        namespace: Some(ns.clone().into()),
        name: "fhir-config".into(),
    };
    let refused = cluster
        .delete_uid(&r, Some(&planned_uid), &Fence::default())
        .await
        .expect_err("the replacement must not be deleted");
    let said = refused.to_string();
    assert!(
        said.contains(&format!("ConfigMap/{ns}/fhir-config")) && said.contains("replaced"),
        "{said}"
    );
    let still = api
        .get("fhir-config")
        .await
        .expect("the replacement is still there");
    assert_eq!(still.metadata.uid.as_deref(), Some(replaced_uid.as_str()));

    // The object the plan listed is deleted.
    assert!(
        cluster
            .delete_uid(&r, Some(&replaced_uid), &Fence::default())
            .await
            .expect("delete")
    );
}

#[tokio::test]
async fn dry_run_reports_and_changes_nothing() {
    let repo = TestRepo::new("sync-dry");
    let (out, report) = sync(&repo, &["--dry-run"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let created = ids(&report, "created");
    assert!(created.len() > 40);
    // Only namespaces can be checked before they exist; the rest is listed.
    assert_eq!(
        ids(&report, "notValidated").len(),
        created
            .iter()
            .filter(|id| !id.starts_with("Namespace/"))
            .count()
    );
    assert_eq!(report["writeRequests"], 0);
    assert!(inventory(&repo).await.is_none());
    let namespaces: Api<Namespace> = Api::all(control_plane().client(User::Admin).await);
    assert!(
        namespaces
            .get_opt(&repo.namespace("contoso"))
            .await
            .expect("get")
            .is_none()
    );

    // Once the namespaces exist, the server's own validation speaks through a dry run.
    let (out, _) = sync(&repo, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    repo.write(
        "workspaces/contoso.yaml",
        "apiVersion: tenantsync.io/v1alpha1\nkind: WorkspacePatch\nmetadata: {name: contoso}\nspec:\n  fhirServices:\n    - name: main\n      replicas: 4\n      resources: {requests: {cpu: 2}, limits: {cpu: 1}}\n",
    );
    let (out, report) = sync(&repo, &["--dry-run"]);
    assert_eq!(out.status.code(), Some(1));
    let failures = report["failures"].as_array().expect("failures");
    assert!(
        failures.iter().any(|f| f["message"]
            .as_str()
            .is_some_and(|m| m.contains("must be less than or equal to cpu limit"))),
        "{failures:#?}"
    );
    let api: Api<Deployment> = Api::namespaced(
        control_plane().client(User::Admin).await,
        &repo.namespace("contoso"),
    );
    let d = api.get("fhir-main").await.expect("get");
    assert_eq!(
        d.spec.and_then(|s| s.replicas),
        Some(1),
        "a dry run changed the cluster"
    );
}

#[tokio::test]
async fn a_sync_killed_midway_converges_on_the_next_run_and_prunes_nothing_desired() {
    let repo = TestRepo::new("sync-kill");
    // Enough workspaces for the kill to land in the middle.
    for i in 0..150 {
        repo.write(
            &format!("workspaces/t{i:03}.yaml"),
            &format!("apiVersion: tenantsync.io/v1alpha1\nkind: Workspace\nmetadata: {{name: t{i:03}}}\nspec:\n  fhirServices:\n    - name: api\n"),
        );
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_tenantsync"))
        .args(["sync", "--env", &repo.env, "--context", "admin", "--repo"])
        .arg(repo.path())
        .arg("--kubeconfig")
        .arg(control_plane().kubeconfig())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    // Kill once some Deployments exist: past the first stages, before the
    // last ones.
    let deployments: Api<Deployment> = Api::all(control_plane().client(User::Admin).await);
    let env = repo.env.clone();
    eventually("the sync to be under way", Duration::from_secs(120), || {
        let deployments = deployments.clone();
        let env = env.clone();
        async move {
            let list = deployments
                .list_metadata(
                    &kube::api::ListParams::default()
                        .labels(&format!("tenantsync.io/environment={env}")),
                )
                .await
                .ok()?;
            (list.items.len() >= 20).then_some(())
        }
    })
    .await;
    child.kill().expect("kill -9");
    let _ = child.wait();
    let partial = inventory(&repo)
        .await
        .expect("inventory widened before applying");
    assert!(
        partial.objects.len() > 150 * 5,
        "inventory lists everything about to be applied"
    );
    assert_eq!(
        partial.revision, None,
        "a revision is recorded only once it applied in full"
    );
    // The kill landed mid-sync: objects are still to be created...
    let plan = repo.plan_json("admin");
    assert!(
        plan["summary"]["create"].as_u64().expect("n") > 0,
        "the sync finished before it was killed: {}",
        plan["summary"]
    );
    // ...and nothing was created outside the inventory.
    let recorded: std::collections::BTreeSet<String> =
        partial.objects.iter().map(|o| o.id()).collect();
    let live = crate::support::live_labelled(&repo.env);
    assert!(!live.is_empty());
    let outside: Vec<&String> = live.difference(&recorded).collect();
    assert!(outside.is_empty(), "live but not inventoried: {outside:?}");

    let (out, report) = sync(&repo, &["--prune", "--allow-mass-prune"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        ids(&report, "pruned").is_empty(),
        "nothing desired may be pruned: {report:#}"
    );
    let plan = repo.plan_json("admin");
    assert_eq!(plan["summary"]["create"], 0);
    assert_eq!(plan["summary"]["update"], 0);
    assert_eq!(
        inventory(&repo).await.expect("inventory").objects.len() as u64,
        plan["summary"]["unchanged"].as_u64().expect("n")
    );
}

#[tokio::test]
async fn a_crd_and_its_custom_object_apply_in_one_sync_and_prune_later() {
    let repo = TestRepo::new("sync-crd");
    // CRDs are cluster-wide: a group of this test's own.
    let group = format!("{}.example.com", repo.env);
    let crd_name = format!("backuppolicies.{group}");
    repo.write(
        "resources/backuppolicy-crd.yaml",
        &format!(
            "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: {crd_name}\nspec:\n  group: {group}\n  scope: Namespaced\n  names: {{plural: backuppolicies, singular: backuppolicy, kind: BackupPolicy}}\n  versions:\n    - name: v1\n      served: true\n      storage: true\n      schema:\n        openAPIV3Schema:\n          type: object\n          properties:\n            spec:\n              type: object\n              properties:\n                schedule: {{type: string}}\n                retentionDays: {{type: integer, default: 30}}\n"
        ),
    );
    let ns = repo.namespace("contoso");
    repo.write(
        "resources/contoso-backup.yaml",
        &format!(
            "apiVersion: {group}/v1\nkind: BackupPolicy\nmetadata:\n  name: nightly\n  namespace: {ns}\nspec:\n  schedule: \"0 2 * * *\"\n"
        ),
    );
    // A cluster-scoped kind: only the operator lets a repository declare it.
    let (out, _) = sync(&repo, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("cluster-scoped kind CustomResourceDefinition"),
        "{}",
        stderr(&out)
    );
    let allow = ["--allow-kind", "CustomResourceDefinition"];
    let (out, report) = sync(&repo, &allow);
    assert_eq!(out.status.code(), Some(0), "{}\n{report:#}", stderr(&out));
    let created = ids(&report, "created");
    let crd_at = created
        .iter()
        .position(|id| id == &format!("CustomResourceDefinition/{crd_name}"))
        .expect("CRD created");
    let cr_at = created
        .iter()
        .position(|id| id == &format!("BackupPolicy/{ns}/nightly"))
        .expect("custom object created");
    assert!(crd_at < cr_at);
    // With --wait, the CRD counts as healthy once Established (the
    // Deployments once rolled out: the control plane runs no deployment
    // controller, so the test writes their status).
    roll_out(&repo.env, None).await;
    let (out, report) = sync(
        &repo,
        &[
            allow[0],
            allow[1],
            "--wait",
            "--timeout",
            "60s",
            "--no-ingress-address-wait",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}\n{report:#}", stderr(&out));
    let crd_health = report["health"]["objects"]
        .as_array()
        .expect("objects")
        .iter()
        .find(|o| o["id"] == format!("CustomResourceDefinition/{crd_name}"))
        .cloned()
        .unwrap_or_else(|| panic!("{report:#}"));
    assert_eq!(crd_health["status"], "Healthy", "{crd_health}");
    assert_eq!(crd_health["message"], "Established", "{crd_health}");
    // The server filled in the schema default; that is not a change.
    let plan = repo.run(
        "plan",
        "readonly",
        &["--output", "json", allow[0], allow[1]],
    );
    assert_eq!(plan.status.code(), Some(0), "{}", stderr(&plan));
    let plan: Value = serde_json::from_slice(&plan.stdout).expect("plan JSON");
    assert_eq!(plan["summary"]["create"], 0, "{:#}", plan["changes"]);
    assert_eq!(plan["summary"]["update"], 0, "{:#}", plan["changes"]);

    std::fs::remove_file(
        repo.path()
            .join("environments")
            .join(&repo.env)
            .join("resources/contoso-backup.yaml"),
    )
    .expect("rm");
    let (out, report) = sync(&repo, &["--prune", allow[0], allow[1]]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        ids(&report, "pruned"),
        [format!("BackupPolicy/{ns}/nightly")]
    );
}

/// Writes every Deployment's status of the environment as a controller would.
async fn roll_out(env: &str, condition: Option<Value>) {
    let client = control_plane().client(User::Admin).await;
    let all: Api<Deployment> = Api::all(client.clone());
    let list = all
        .list(&kube::api::ListParams::default().labels(&format!("tenantsync.io/environment={env}")))
        .await
        .expect("list deployments");
    for d in list.items {
        let ns = d.metadata.namespace.clone().expect("namespace");
        let name = d.metadata.name.clone().expect("name");
        let replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let mut status = json!({"status": {
            "observedGeneration": d.metadata.generation, "replicas": replicas,
            "updatedReplicas": replicas, "readyReplicas": replicas, "availableReplicas": replicas}});
        if let Some(c) = &condition {
            status["status"]["conditions"] = json!([c]);
        }
        let api: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .expect("status");
    }
}

#[tokio::test]
async fn wait_reports_progressing_then_healthy_and_degraded_on_a_failed_rollout() {
    let repo = TestRepo::new("sync-wait");
    let mut child = Command::new(env!("CARGO_BIN_EXE_tenantsync"))
        .args([
            "sync",
            "--env",
            &repo.env,
            "--context",
            "admin",
            "--wait",
            "--timeout",
            "120s",
        ])
        .args(["--no-ingress-address-wait", "--output", "json", "--repo"])
        .arg(repo.path())
        .arg("--kubeconfig")
        .arg(control_plane().kubeconfig())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    // Act as the deployment controller once the sync reports its
    // Deployments Progressing (its own output, not a sleep, says when).
    let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
    let stderr_pipe = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut all = String::new();
        for line in std::io::BufReader::new(stderr_pipe)
            .lines()
            .map_while(Result::ok)
        {
            all.push_str(&line);
            all.push('\n');
            let _ = lines_tx.send(line);
        }
        all
    });
    let lines = tokio::task::spawn_blocking(move || {
        lines
            .iter()
            .any(|line| line.starts_with("Progressing Deployment/"))
    });
    assert!(
        lines.await.expect("join"),
        "no Deployment reported Progressing"
    );
    roll_out(&repo.env, None).await;
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .expect("join")
        .expect("wait");
    let err = reader.join().expect("stderr reader");
    assert_eq!(out.status.code(), Some(0), "{err}");
    let progressing = err
        .find("Progressing Deployment/")
        .expect("Progressing reported");
    let healthy = err
        .rfind("Healthy     Deployment/")
        .expect("Healthy reported");
    assert!(progressing < healthy, "{err}");
    let report: Value = serde_json::from_slice(&out.stdout).expect("report");
    assert_eq!(report["health"]["status"], "Healthy");
    assert_eq!(report["health"]["workspaces"]["contoso"], "Healthy");

    // A rollout nobody completes: the wait gives up at --timeout and the
    // sync exits 1, the Deployment still Progressing.
    repo.write(
        "workspaces/contoso.yaml",
        "apiVersion: tenantsync.io/v1alpha1\nkind: WorkspacePatch\nmetadata: {name: contoso}\nspec:\n  fhirServices:\n    - name: main\n      replicas: 3\n",
    );
    let (out, report) = sync(
        &repo,
        &["--wait", "--timeout", "3s", "--no-ingress-address-wait"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(report["health"]["status"], "Progressing", "{report:#}");
    let ns = repo.namespace("contoso");
    assert!(
        report["health"]["objects"]
            .as_array()
            .expect("objects")
            .iter()
            .any(
                |o| o["id"] == format!("Deployment/{ns}/fhir-main") && o["status"] == "Progressing"
            ),
        "{report:#}"
    );

    // A rollout past its deadline is Degraded, with the reason, and fails the sync.
    roll_out(
        &repo.env,
        Some(
            json!({"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
            "message": "ReplicaSet \"fhir-main-abc\" has timed out progressing."}),
        ),
    )
    .await;
    let (out, report) = sync(
        &repo,
        &["--wait", "--timeout", "30s", "--no-ingress-address-wait"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(report["health"]["status"], "Degraded");
    let degraded: Vec<&Value> = report["health"]["objects"]
        .as_array()
        .expect("objects")
        .iter()
        .filter(|o| o["status"] == "Degraded")
        .collect();
    assert!(!degraded.is_empty());
    assert!(
        degraded[0]["message"]
            .as_str()
            .expect("message")
            .contains("ProgressDeadlineExceeded"),
        "{degraded:?}"
    );
}

fn fhir_workspace(name: &str, services: &[&str]) -> String {
    let mut text = format!(
        "apiVersion: tenantsync.io/v1alpha1\nkind: Workspace\nmetadata: {{name: {name}}}\nspec:\n  fhirServices:\n"
    );
    for s in services {
        text.push_str(&format!("    - name: {s}\n"));
    }
    text
}

fn environment_with(repo: &TestRepo, extra: &str) {
    repo.write(
        "environment.yaml",
        &format!(
            "apiVersion: tenantsync.io/v1alpha1\nkind: Environment\nmetadata:\n  name: {}\nspec:\n  base: base\n  ingress:\n    domain: test.example.com\n{extra}",
            repo.env
        ),
    );
}

/// `Kind/ns/name` of the live objects of FHIR service `service` in `ns`.
fn service_objects(env: &str, ns: &str, service: &str) -> Vec<String> {
    crate::support::live_labelled(env)
        .into_iter()
        .filter(|id| {
            id.split('/').nth(1) == Some(ns)
                && id
                    .rsplit('/')
                    .next()
                    .is_some_and(|n| n.starts_with(&format!("fhir-{service}")))
        })
        .collect()
}

/// The repository's `syncPolicy` as `sync` reads it: `prune: true` prunes
/// without `--prune`; `maxPrunePercent` lowers the operator's ceiling (and
/// the operator's `--max-prune-percent` lowers it again); an object
/// annotated `tenantsync.io/prune: disabled` is kept and released from
/// the inventory.
#[tokio::test]
async fn the_repositorys_sync_policy_and_the_prune_annotation_are_honoured() {
    let repo = TestRepo::new("sync-policy");
    let acme = repo.namespace("acme");
    repo.write(
        "workspaces/acme.yaml",
        &fhir_workspace("acme", &["api", "extra"]),
    );
    let contoso = repo.namespace("contoso");
    repo.write(
        "resources/keep.yaml",
        &format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: keep\n  namespace: {contoso}\n  annotations: {{tenantsync.io/prune: disabled}}\ndata: {{a: b}}\n"),
    );
    // The text report ends with the summary line README shows.
    let out = repo.run("sync", "admin", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let live = crate::support::live_labelled(&repo.env).len();
    let text = String::from_utf8_lossy(&out.stdout);
    let summary = text.lines().last().unwrap_or_default();
    // `at` the revision's first 12 characters (a folder's: `folder-<digest>`).
    let revision = summary
        .strip_prefix(&format!("Sync of environment {} at ", repo.env))
        .and_then(|rest| rest.get(..12))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(revision.starts_with("folder-"), "{text}");
    let expected = format!(
        "Sync of environment {} at {revision}: {live} created, 0 updated, 0 recreated, 0 pruned, 0 unchanged, 0 conflicts, 0 failures; ",
        repo.env
    );
    assert!(
        summary.starts_with(&expected) && summary.ends_with(" write requests."),
        "{text}"
    );
    let writes: usize = summary
        .trim_start_matches(&expected)
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .expect("a number of writes");
    assert!(writes >= live, "{summary}");

    // acme loses a service: about 7% of the inventory.
    let extra = service_objects(&repo.env, &acme, "extra");
    assert_eq!(extra.len(), 5, "{extra:?}");
    repo.write("workspaces/acme.yaml", &fhir_workspace("acme", &["api"]));
    // The repository's ceiling, 5%, is below that: refused, nothing pruned.
    environment_with(&repo, "  syncPolicy: {prune: true, maxPrunePercent: 5}\n");
    let (out, _) = sync(&repo, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--allow-mass-prune"),
        "{}",
        stderr(&out)
    );
    assert_eq!(service_objects(&repo.env, &acme, "extra"), extra);
    // 20% lets it through, but not the operator's 5%.
    environment_with(&repo, "  syncPolicy: {prune: true, maxPrunePercent: 20}\n");
    let (out, _) = sync(&repo, &["--max-prune-percent", "5"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(service_objects(&repo.env, &acme, "extra"), extra);
    // syncPolicy.prune: no --prune needed.
    let (out, report) = sync(&repo, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let mut pruned = ids(&report, "pruned");
    pruned.sort();
    assert_eq!(pruned, extra, "{report:#}");
    assert!(service_objects(&repo.env, &acme, "extra").is_empty());

    // A manifest annotated prune: disabled outlives its declaration, and
    // leaves the inventory.
    repo.remove("resources/keep.yaml");
    let (out, report) = sync(&repo, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let keep = format!("ConfigMap/{contoso}/keep");
    assert!(!ids(&report, "pruned").contains(&keep), "{report:#}");
    assert!(exists::<ConfigMap>(&contoso, "keep").await);
    assert!(
        !inventory(&repo)
            .await
            .expect("inventory")
            .objects
            .iter()
            .any(|o| o.id() == keep),
        "still in the inventory"
    );
    let plan = repo.plan_json("admin");
    assert_eq!(plan["summary"]["delete"], 0, "{:#}", plan["changes"]);
}

/// `sync` sends no write when the repository is invalid (a schema error,
/// two declarations rendering one object) or `--rev` cannot be read.
#[tokio::test]
async fn nothing_is_written_when_validation_fails_or_the_revision_cannot_be_read() {
    let repo = TestRepo::new("sync-nowrite");
    crate::support::git(repo.path(), &["init", "-q"]);
    crate::support::git(repo.path(), &["add", "-A"]);
    crate::support::git(repo.path(), &["commit", "-qm", "first"]);
    let (out, _) = sync(&repo, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let versions = crate::support::live_versions(&repo.env);
    let dir = tempfile::tempdir().expect("tempdir");
    let caller = audit::identity("sync-nowrite", "cluster-admin", dir.path());
    let from = audit::cursor();
    let run = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_tenantsync"))
            .args(["sync", "--env", &repo.env, "--prune", "--allow-mass-prune"])
            .args(extra)
            .arg("--repo")
            .arg(repo.path())
            .arg("--kubeconfig")
            .arg(&caller.kubeconfig)
            .output()
            .expect("sync")
    };
    // A schema error (and the removal of a workspace beside it).
    repo.write(
        "workspaces/woodgrove.yaml",
        "apiVersion: tenantsync.io/v1alpha1\nkind: WorkspacePatch\nmetadata: {name: woodgrove}\n$patch: delete\n",
    );
    repo.write(
        "workspaces/bad.yaml",
        "apiVersion: tenantsync.io/v1alpha1\nkind: Workspace\nmetadata: {name: bad}\nspec: {fhirServices: [{name: api, replicas: many}]}\n",
    );
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("bad.yaml"), "{}", stderr(&out));
    // Two declarations rendering one object.
    repo.write(
        "workspaces/bad.yaml",
        "apiVersion: tenantsync.io/v1alpha1\nkind: Workspace\nmetadata: {name: bad}\nspec:\n  iotConnectors:\n    - name: shared\n      identity: {clientId: 6d3cae74-1b2f-4a3c-9da5-4e7a9f1b3d32}\n      ingestionEndpointConfiguration: {eventHubName: h, fullyQualifiedEventHubNamespace: badingest.servicebus.windows.net}\n      deviceMapping: {content: {templateType: CollectionContent, template: [{templateType: JsonPathContent, template: {}}]}}\n",
    );
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("also renders"), "{}", stderr(&out));
    // A revision that does not exist.
    let out = run(&["--rev", "no-such-branch"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("no-such-branch"), "{}", stderr(&out));

    let sent: Vec<audit::Request> = caller
        .requests_since(&from)
        .into_iter()
        .filter(|r| r.user_agent.starts_with("tenantsync/"))
        .collect();
    let writes: Vec<&audit::Request> = sent.iter().filter(|r| r.is_write()).collect();
    assert!(writes.is_empty(), "{writes:#?}");
    assert_eq!(crate::support::live_versions(&repo.env), versions);
}

/// If any object fails to apply, nothing is pruned; an object whose delete
/// fails stays in the inventory, and a later sync deletes it.
#[tokio::test]
async fn a_failed_apply_prunes_nothing_and_an_undeletable_object_stays_in_the_inventory() {
    let repo = TestRepo::new("sync-failprune");
    let acme = repo.namespace("acme");
    repo.write(
        "workspaces/acme.yaml",
        &fhir_workspace("acme", &["api", "extra"]),
    );
    let (out, _) = sync(&repo, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let extra = service_objects(&repo.env, &acme, "extra");
    assert_eq!(extra.len(), 5, "{extra:?}");
    repo.write("workspaces/acme.yaml", &fhir_workspace("acme", &["api"]));
    // The API server refuses contoso's Deployment (a request above its limit).
    repo.write(
        "workspaces/contoso.yaml",
        "apiVersion: tenantsync.io/v1alpha1\nkind: WorkspacePatch\nmetadata: {name: contoso}\nspec:\n  fhirServices:\n    - name: main\n      resources: {requests: {cpu: 2}, limits: {cpu: 1}}\n",
    );
    let (out, report) = sync(&repo, &["--prune"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(!report["failures"].as_array().expect("failures").is_empty());
    assert!(ids(&report, "pruned").is_empty(), "{report:#}");
    assert_eq!(service_objects(&repo.env, &acme, "extra"), extra);

    // A credential that may delete everything but Services.
    repo.remove("workspaces/contoso.yaml");
    let dir = tempfile::tempdir().expect("tempdir");
    let role = crate::support::unique_name("no-service-delete");
    let rules = serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": role},
        "rules": [
            {"apiGroups": ["*"], "resources": ["*"], "verbs": ["get", "list", "watch", "create", "update", "patch"]},
            {"apiGroups": [""], "resources": ["namespaces", "serviceaccounts", "configmaps"], "verbs": ["delete"]},
            {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["delete"]},
            {"apiGroups": ["policy"], "resources": ["poddisruptionbudgets"], "verbs": ["delete"]},
            {"apiGroups": ["networking.k8s.io"], "resources": ["ingresses", "networkpolicies"], "verbs": ["delete"]},
        ]
    });
    let file = dir.path().join("role.json");
    std::fs::write(&file, rules.to_string()).expect("write");
    let applied = control_plane()
        .kubectl()
        .args(["--context", "admin", "apply", "-f"])
        .arg(&file)
        .output()
        .expect("kubectl");
    assert!(applied.status.success(), "{}", stderr(&applied));
    let caller = audit::identity("sync-failprune", &role, dir.path());
    let out = Command::new(env!("CARGO_BIN_EXE_tenantsync"))
        .args(["sync", "--env", &repo.env, "--prune", "--output", "json"])
        .arg("--repo")
        .arg(repo.path())
        .arg("--kubeconfig")
        .arg(&caller.kubeconfig)
        .output()
        .expect("sync");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    assert_eq!(out.status.code(), Some(1), "{}\n{report:#}", stderr(&out));
    let service = format!("Service/{acme}/fhir-extra");
    let mut pruned = ids(&report, "pruned");
    pruned.sort();
    let others: Vec<String> = extra.iter().filter(|id| **id != service).cloned().collect();
    assert_eq!(pruned, others, "{report:#}");
    assert_eq!(
        service_objects(&repo.env, &acme, "extra"),
        std::slice::from_ref(&service)
    );
    let recorded = |inv: tenantsync::sync::inventory::Inventory| {
        inv.objects.iter().map(|o| o.id()).collect::<Vec<_>>()
    };
    let inv = recorded(inventory(&repo).await.expect("inventory"));
    assert!(inv.contains(&service), "{inv:?}");
    assert!(!inv.iter().any(|id| others.contains(id)), "{inv:?}");

    // With the right to delete it, the next sync does.
    let (out, report) = sync(&repo, &["--prune"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(ids(&report, "pruned"), std::slice::from_ref(&service));
    assert!(!recorded(inventory(&repo).await.expect("inventory")).contains(&service));
}

/// A sync of `workspaces` new workspaces by a token of its own with
/// `extra` flags; the most writes the API server had in flight from it at
/// once (its audit log), outside tenantsync's own namespace.
fn most_writes_in_flight(test: &str, workspaces: usize, extra: &[&str]) -> usize {
    let repo = TestRepo::new(test);
    for i in 0..workspaces {
        repo.write(
            &format!("workspaces/w{i:03}.yaml"),
            &format!(
                "apiVersion: tenantsync.io/v1alpha1\nkind: Workspace\nmetadata: {{name: w{i:03}}}\nspec:\n  fhirServices:\n    - name: api\n"
            ),
        );
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let caller = audit::identity(test, "cluster-admin", dir.path());
    let from = audit::cursor();
    let out = Command::new(env!("CARGO_BIN_EXE_tenantsync"))
        .args(["sync", "--env", &repo.env, "--output", "json"])
        .args(extra)
        .arg("--repo")
        .arg(repo.path())
        .arg("--kubeconfig")
        .arg(&caller.kubeconfig)
        .output()
        .expect("sync");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).expect("report");
    assert_eq!(report["failures"], json!([]), "{report:#}");
    let writes: Vec<audit::Request> = caller
        .requests_since(&from)
        .into_iter()
        .filter(|r| r.user_agent.starts_with("tenantsync/") && r.is_write())
        .filter(|r| r.namespace != tenantsync::sync::inventory::SYSTEM_NAMESPACE)
        .collect();
    assert_eq!(
        writes.len(),
        ids(&report, "created").len(),
        "one write per object"
    );
    let all: Vec<&audit::Request> = writes.iter().collect();
    audit::most_in_flight(&all)
}

/// `--max-writes-in-flight` bounds the window of writes in flight and lets
/// it grow past its start of 8 while the API server answers as fast as
/// usual (issue 19: start at 8, grow while latency holds); 2 keeps it at 2.
#[tokio::test]
async fn max_writes_in_flight_lets_the_window_grow_past_8_or_holds_it_lower() {
    let most = most_writes_in_flight("inflight-16", 80, &["--max-writes-in-flight", "16"]);
    eprintln!("--max-writes-in-flight 16: {most} writes in flight at most");
    assert!(
        (9..=16).contains(&most),
        "{most} writes in flight at once with --max-writes-in-flight 16"
    );
    let most = most_writes_in_flight("inflight-2", 20, &["--max-writes-in-flight", "2"]);
    assert_eq!(
        most, 2,
        "writes in flight at once with --max-writes-in-flight 2"
    );
}
