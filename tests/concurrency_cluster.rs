//! One writer per environment and no lost inventory update, against the real
//! control plane: two `sync`s of one environment at once (repeated, with
//! different revisions), a sync facing a lock another writer holds (or held,
//! then died), and a removed workspace whose namespace holds objects
//! tenantsync never made.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

use crate::support::repo::TestRepo;
use crate::support::{User, control_plane, eventually, git, live_labelled};

const SYSTEM: &str = tenantsync::sync::inventory::SYSTEM_NAMESPACE;

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

pub(crate) fn sync_command(repo: &TestRepo, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tenantsync"));
    c.args(["sync", "--env", &repo.env, "--context", "admin", "--repo"])
        .arg(repo.path())
        .arg("--kubeconfig")
        .arg(control_plane().kubeconfig())
        .args(["--output", "json"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

fn workspace(name: &str) -> String {
    format!(
        "apiVersion: tenantsync.io/v1alpha1\nkind: Workspace\nmetadata:\n  name: {name}\nspec:\n  fhirServices:\n    - name: api\n"
    )
}

fn removed(name: &str) -> String {
    format!(
        "apiVersion: tenantsync.io/v1alpha1\nkind: WorkspacePatch\nmetadata: {{name: {name}}}\n$patch: delete\n"
    )
}

async fn admin() -> tenantsync::cluster::Cluster {
    tenantsync::cluster::Cluster::connect(&tenantsync::cluster::ClusterOptions {
        kubeconfig: Some(control_plane().kubeconfig().to_path_buf()),
        context: Some("admin".into()),
        ..Default::default()
    })
    .await
    .expect("connect")
}

/// The environment's inventory as tenantsync reads it (its chunks too).
pub(crate) async fn inventory(env: &str) -> tenantsync::sync::inventory::Inventory {
    admin()
        .await
        .read_inventory(env)
        .await
        .expect("a readable inventory")
        .expect("an inventory")
}

/// The names of the environment's inventory chunks in the cluster.
async fn chunk_names(env: &str) -> BTreeSet<String> {
    chunk_versions(env).await.into_keys().collect()
}

#[tokio::test]
async fn concurrent_syncs_of_different_revisions_never_leave_a_live_object_outside_the_inventory() {
    let repo = TestRepo::new("lock-concurrent");
    // Enough objects that two syncs overlap unless one waits.
    for i in 0..40 {
        repo.write(
            &format!("workspaces/ws-{i:02}.yaml"),
            &workspace(&format!("ws-{i:02}")),
        );
    }
    git(repo.path(), &["init", "-q"]);
    // Revision A adds workspace extra-a; revision B removes woodgrove.
    git(repo.path(), &["add", "-A"]);
    git(repo.path(), &["commit", "-qm", "base"]);
    let base = git(repo.path(), &["rev-parse", "HEAD"]);
    repo.write("workspaces/extra-a.yaml", &workspace("extra-a"));
    // A also updates every workspace's Deployment: a slow sync.
    for i in 0..40 {
        let ws = format!("ws-{i:02}");
        repo.write(
            &format!("workspaces/{ws}.yaml"),
            &workspace(&ws).replace("- name: api\n", "- name: api\n      replicas: 2\n"),
        );
    }
    git(repo.path(), &["add", "-A"]);
    git(repo.path(), &["commit", "-qm", "A"]);
    let rev_a = git(repo.path(), &["rev-parse", "HEAD"]);
    git(repo.path(), &["checkout", "-q", &base]);
    repo.write("workspaces/woodgrove.yaml", &removed("woodgrove"));
    git(repo.path(), &["add", "-A"]);
    git(repo.path(), &["commit", "-qm", "B"]);
    let rev_b = git(repo.path(), &["rev-parse", "HEAD"]);

    let flags = ["--prune", "--allow-mass-prune"];
    let first = sync_command(&repo, &["--rev", &base])
        .output()
        .expect("sync");
    assert_eq!(first.status.code(), Some(0), "{}", text(&first));
    let mut waited = 0;
    let namespaces: Api<Namespace> = Api::all(control_plane().client(User::Admin).await);
    for round in 0..4 {
        // A workspace pruned in the last round is re-added in this one: its
        // namespace must be gone first (the API server refuses new content
        // in a namespace being deleted).
        eventually("pruned namespaces to go", Duration::from_secs(60), || {
            let namespaces = namespaces.clone();
            let env = repo.env.clone();
            async move {
                let list = namespaces.list(&Default::default()).await.ok()?;
                let terminating = list.items.iter().any(|n| {
                    n.metadata
                        .name
                        .as_deref()
                        .is_some_and(|name| name.ends_with(&env))
                        && n.metadata.deletion_timestamp.is_some()
                });
                (!terminating).then_some(())
            }
        })
        .await;
        let (one, two) = if round % 2 == 0 {
            (&rev_a, &rev_b)
        } else {
            (&rev_b, &rev_a)
        };
        let mut extra_one = vec!["--rev", one.as_str()];
        extra_one.extend(flags);
        let mut extra_two = vec!["--rev", two.as_str()];
        extra_two.extend(flags);
        let a = sync_command(&repo, &extra_one).spawn().expect("sync one");
        tokio::time::sleep(Duration::from_millis(150)).await;
        let b = sync_command(&repo, &extra_two).spawn().expect("sync two");
        let a = a.wait_with_output().expect("wait");
        let b = b.wait_with_output().expect("wait");
        // Each runs alone: both succeed, one after the other.
        assert_eq!(a.status.code(), Some(0), "round {round}: {}", text(&a));
        assert_eq!(b.status.code(), Some(0), "round {round}: {}", text(&b));
        let waits = |o: &Output| {
            String::from_utf8_lossy(&o.stderr).contains("waiting for the lock of environment")
        };
        for o in [&a, &b] {
            if waits(o) {
                waited += 1;
                assert!(
                    String::from_utf8_lossy(&o.stderr).contains("held by tenantsync sync by "),
                    "the holder is named: {}",
                    text(o)
                );
            }
        }
        // The one that waited wrote last.
        let last = if waits(&a) && !waits(&b) { one } else { two };
        // Every live labelled object is in the inventory.
        let inv = inventory(&repo.env).await;
        let recorded: BTreeSet<String> = inv.objects.iter().map(|r| r.id()).collect();
        let live = live_labelled(&repo.env);
        let outside: Vec<&String> = live.difference(&recorded).collect();
        assert!(
            outside.is_empty(),
            "round {round}: live, labelled and in no inventory: {outside:?}"
        );
        // The last writer's revision is what the cluster has: a plan of it
        // is empty.
        let plan = Command::new(env!("CARGO_BIN_EXE_tenantsync"))
            .args(["plan", "--env", &repo.env, "--context", "admin", "--repo"])
            .arg(repo.path())
            .args(["--rev", last, "--detailed-exitcode", "--kubeconfig"])
            .arg(control_plane().kubeconfig())
            .output()
            .expect("plan");
        assert_eq!(
            plan.status.code(),
            Some(0),
            "round {round}: {}",
            text(&plan)
        );
    }
    assert!(waited > 0, "no sync ever waited for the other's lock");
}

async fn hold_lock(env: &str, holder: &str, renewed_secs_ago: i64) {
    let leases: Api<Lease> = Api::namespaced(control_plane().client(User::Admin).await, SYSTEM);
    let now = k8s_openapi::jiff::Timestamp::now();
    let renewed = k8s_openapi::jiff::Timestamp::from_second(now.as_second() - renewed_secs_ago)
        .expect("time");
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": tenantsync::cluster::lock::lease_name(env)},
        "spec": {
            "holderIdentity": holder,
            "leaseDurationSeconds": 15,
            "acquireTime": renewed.to_string(),
            "renewTime": renewed.to_string(),
        }
    }))
    .expect("lease");
    let _ = leases
        .delete(
            &lease.metadata.name.clone().unwrap_or_default(),
            &Default::default(),
        )
        .await;
    leases
        .create(&PostParams::default(), &lease)
        .await
        .expect("create lease");
}

#[tokio::test]
async fn a_sync_waits_for_a_held_lock_names_the_holder_and_takes_over_a_dead_holders_lock() {
    let repo = TestRepo::new("lock-held");
    // The environment's first sync creates tenantsync-system if needed.
    repo.apply_rendered().await;
    hold_lock(&repo.env, "daemon:replica-1", 0).await;
    let start = Instant::now();
    let out = sync_command(&repo, &["--lock-timeout", "4s"])
        .output()
        .expect("sync");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("waiting for the lock of environment")
            && err.contains("held by daemon:replica-1 since "),
        "{err}"
    );
    assert!(
        err.contains("nothing was changed") && err.contains("--lock-timeout"),
        "{err}"
    );
    assert!(start.elapsed() >= Duration::from_secs(4));
    // plan and dry runs take no lock.
    let plan = repo.run("plan", "admin", &[]);
    assert_eq!(plan.status.code(), Some(0), "{}", text(&plan));
    let dry = sync_command(&repo, &["--dry-run", "--lock-timeout", "0s"])
        .output()
        .expect("sync");
    assert_eq!(dry.status.code(), Some(0), "{}", text(&dry));

    // A holder that stopped renewing 20 s ago (killed) has lost it.
    hold_lock(&repo.env, "daemon:replica-1", 20).await;
    let out = sync_command(&repo, &["--lock-timeout", "0s"])
        .output()
        .expect("sync");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // And it released it at the end.
    let leases: Api<Lease> = Api::namespaced(control_plane().client(User::Admin).await, SYSTEM);
    let lease = leases
        .get(&tenantsync::cluster::lock::lease_name(&repo.env))
        .await
        .expect("lease");
    assert_eq!(lease.spec.and_then(|s| s.holder_identity), None);
}

#[tokio::test]
async fn a_removed_workspace_namespace_holding_hand_made_objects_is_kept_and_they_are_named() {
    let repo = TestRepo::new("foreign");
    repo.apply_rendered().await;
    let ns = repo.namespace("woodgrove");
    let kubectl = |args: &[&str]| {
        let out = control_plane()
            .kubectl()
            .args(["--context", "admin", "-n", &ns])
            .args(args)
            .output()
            .expect("kubectl");
        assert!(out.status.success(), "{}", text(&out));
    };
    kubectl(&["create", "configmap", "by-hand", "--from-literal=a=b"]);
    kubectl(&[
        "create",
        "secret",
        "generic",
        "by-hand-secret",
        "--from-literal=password=s3cr3t-value",
    ]);
    repo.write("workspaces/woodgrove.yaml", &removed("woodgrove"));

    // plan names them.
    let plan = repo.run("plan", "admin", &[]);
    assert_eq!(plan.status.code(), Some(0), "{}", text(&plan));
    let plan_text = String::from_utf8_lossy(&plan.stdout);
    assert!(
        plan_text.contains(&format!(
            "Namespace {ns} holds 2 object(s) tenantsync did not make: ConfigMap/{ns}/by-hand, Secret/{ns}/by-hand-secret"
        )),
        "{plan_text}"
    );
    let plan_json = repo.plan_json("admin");
    assert_eq!(
        plan_json["foreign"][&ns]["objects"],
        json!([
            format!("ConfigMap/{ns}/by-hand"),
            format!("Secret/{ns}/by-hand-secret")
        ])
    );

    // The guard names them.
    let out = sync_command(&repo, &["--prune"]).output().expect("sync");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "{ns} holds 2 object(s) tenantsync did not make (ConfigMap/{ns}/by-hand, Secret/{ns}/by-hand-secret), so the namespace is kept"
        )),
        "{err}"
    );

    // Pruned except for the namespace, which is kept and reported.
    let out = sync_command(&repo, &["--prune", "--allow-mass-prune"])
        .output()
        .expect("sync");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(!text(&out).contains("s3cr3t"), "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).expect("report");
    let pruned: Vec<&str> = report["pruned"]
        .as_array()
        .expect("pruned")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        pruned.contains(&format!("Deployment/{ns}/fhir-api").as_str()),
        "{report:#}"
    );
    assert!(
        !pruned.contains(&format!("Namespace/{ns}").as_str()),
        "{report:#}"
    );
    let kept = report["kept"].to_string();
    assert!(
        kept.contains(&format!("Namespace/{ns}"))
            && kept.contains(&format!("ConfigMap/{ns}/by-hand")),
        "{report:#}"
    );
    let namespaces: Api<Namespace> = Api::all(control_plane().client(User::Admin).await);
    assert!(namespaces.get_opt(&ns).await.expect("get").is_some());
    let configmaps: Api<ConfigMap> =
        Api::namespaced(control_plane().client(User::Admin).await, &ns);
    assert!(configmaps.get_opt("by-hand").await.expect("get").is_some());
    // The kept namespace stays in the inventory, so a later sync can go on.
    assert!(
        inventory(&repo.env)
            .await
            .objects
            .iter()
            .any(|r| r.id() == format!("Namespace/{ns}"))
    );

    // With --prune-foreign the namespace goes, with them.
    let out = sync_command(&repo, &["--prune", "--allow-mass-prune", "--prune-foreign"])
        .output()
        .expect("sync");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).expect("report");
    assert_eq!(
        report["pruned"],
        json!([format!("Namespace/{ns}")]),
        "{report:#}"
    );
    assert!(
        report["foreign"][&ns]["objects"]
            .to_string()
            .contains("by-hand-secret"),
        "{report:#}"
    );
    eventually("the namespace to go", Duration::from_secs(60), || {
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
    })
    .await;
}

fn status_text(repo: &TestRepo) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tenantsync"))
        .args([
            "status",
            "--env",
            &repo.env,
            "--context",
            "readonly",
            "--kubeconfig",
        ])
        .arg(control_plane().kubeconfig())
        .output()
        .expect("tenantsync status");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn a_cli_sync_records_its_result_and_drift_calls_never_applied_objects_pending() {
    let repo = TestRepo::new("cli-status");
    repo.apply_rendered().await;
    let shown = status_text(&repo);
    assert!(shown.contains("sync status:        Synced"), "{shown}");
    assert!(shown.contains("applied revision:   folder-"), "{shown}");
    assert!(shown.contains("last CLI sync:      "), "{shown}");
    assert!(shown.contains(" by tenantsync sync by "), "{shown}");

    // A newly declared workspace is pending in drift, not missing.
    repo.write("workspaces/newcomer.yaml", &workspace("newcomer"));
    let drift = repo.run("drift", "admin", &["--detailed-exitcode"]);
    let out = String::from_utf8_lossy(&drift.stdout);
    assert!(
        !out.contains("missing (deleted by hand)"),
        "{}",
        text(&drift)
    );
    assert!(
        out.contains("Pending: ") && out.contains(&format!("Namespace/newcomer-{}", repo.env)),
        "{}",
        text(&drift)
    );
    assert_eq!(drift.status.code(), Some(0), "{}", text(&drift));

    // A ConfigMap labelled as tenantsync's by hand was never declared.
    let ns = repo.namespace("contoso");
    let env_label = format!("tenantsync.io/environment={}", repo.env);
    for args in [
        vec!["create", "configmap", "labelled-by-hand"],
        vec![
            "label",
            "configmap",
            "labelled-by-hand",
            "app.kubernetes.io/managed-by=tenantsync",
            &env_label,
        ],
    ] {
        let out = control_plane()
            .kubectl()
            .args(["--context", "admin", "-n", &ns])
            .args(&args)
            .output()
            .expect("kubectl");
        assert!(out.status.success(), "{}", text(&out));
    }
    let drift = repo.run("drift", "admin", &[]);
    let out = String::from_utf8_lossy(&drift.stdout);
    assert!(
        out.contains("were never declared")
            && out.contains(&format!("ConfigMap/{ns}/labelled-by-hand")),
        "{}",
        text(&drift)
    );

    // A failed sync says Failed, with the object and the reason.
    let scale = control_plane()
        .kubectl()
        .args([
            "--context",
            "admin",
            "-n",
            &ns,
            "patch",
            "deployment/fhir-main",
            "--type=merge",
            "-p",
            r#"{"spec":{"replicas":5}}"#,
            // Not kubectl's own manager name: those are reverted by the
            // default ownership policy, this one conflicts.
            "--field-manager=scaler",
        ])
        .output()
        .expect("kubectl");
    assert!(scale.status.success(), "{}", text(&scale));
    repo.write(
        "workspaces/contoso.yaml",
        "apiVersion: tenantsync.io/v1alpha1\nkind: WorkspacePatch\nmetadata: {name: contoso}\nspec:\n  fhirServices:\n    - name: main\n      replicas: 3\n",
    );
    let out = repo.run("sync", "admin", &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let shown = status_text(&repo);
    assert!(shown.contains("sync status:        Failed"), "{shown}");
    assert!(
        shown.contains(&format!(
            "Deployment/{ns}/fhir-main: conflict: .spec.replicas"
        )),
        "{shown}"
    );
}

#[tokio::test]
async fn an_inventory_write_from_a_stale_read_merges_what_another_writer_added() {
    let repo = TestRepo::new("inventory-merge");
    repo.apply_rendered().await;
    let cluster = tenantsync::cluster::Cluster::connect(&tenantsync::cluster::ClusterOptions {
        kubeconfig: Some(control_plane().kubeconfig().to_path_buf()),
        context: Some("admin".into()),
        ..Default::default()
    })
    .await
    .expect("connect");
    let base = cluster
        .read_inventory_stored(&repo.env)
        .await
        .expect("read");
    let other = |name: &str| tenantsync::sync::inventory::ObjectRef {
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        namespace: Some(repo.namespace("contoso").as_str().into()),
        name: name.into(),
    };
    // Another writer adds an entry after our read...
    let mut theirs = base.inventory.clone();
    theirs.objects.insert(other("added-by-them"));
    cluster
        .write_inventory_checked(&base, &theirs, &tenantsync::sync::Fence::default())
        .await
        .expect("their write");
    // ...and ours, computed from the stale read, must not drop it.
    let mut ours = base.inventory.clone();
    ours.objects.insert(other("added-by-us"));
    let stored = cluster
        .write_inventory_checked(&base, &ours, &tenantsync::sync::Fence::default())
        .await
        .expect("our write");
    let names: Vec<String> = inventory(&repo.env)
        .await
        .objects
        .iter()
        .map(|r| r.name.to_string())
        .collect();
    assert!(
        names.contains(&"added-by-them".to_string()) && names.contains(&"added-by-us".to_string()),
        "{names:?}"
    );
    assert!(stored.inventory.objects.contains(&other("added-by-them")));
}

#[tokio::test]
async fn removing_many_workspaces_keeps_only_the_namespace_holding_a_hand_made_object() {
    let repo = TestRepo::new("foreign-many");
    for i in 0..5 {
        repo.write(
            &format!("workspaces/gone-{i}.yaml"),
            &workspace(&format!("gone-{i}")),
        );
    }
    repo.apply_rendered().await;
    let keep = repo.namespace("gone-2");
    let out = control_plane()
        .kubectl()
        .args([
            "--context",
            "admin",
            "-n",
            &keep,
            "create",
            "configmap",
            "by-hand",
        ])
        .output()
        .expect("kubectl");
    assert!(out.status.success(), "{}", text(&out));
    for i in 0..5 {
        std::fs::remove_file(
            repo.path()
                .join("environments")
                .join(&repo.env)
                .join(format!("workspaces/gone-{i}.yaml")),
        )
        .expect("remove");
    }
    let out = sync_command(&repo, &["--prune", "--allow-mass-prune"])
        .output()
        .expect("sync");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).expect("report");
    assert_eq!(
        report["foreign"][&keep]["objects"],
        json!([format!("ConfigMap/{keep}/by-hand")]),
        "{report:#}"
    );
    let pruned: Vec<&str> = report["pruned"]
        .as_array()
        .expect("pruned")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for i in [0, 1, 3, 4] {
        let ns = format!("Namespace/{}", repo.namespace(&format!("gone-{i}")));
        assert!(pruned.contains(&ns.as_str()), "{ns} not pruned: {report:#}");
    }
    assert!(
        !pruned.contains(&format!("Namespace/{keep}").as_str()),
        "{report:#}"
    );
}

#[tokio::test]
async fn a_sync_whose_lock_is_taken_over_stops_writing() {
    let repo = TestRepo::new("lock-lost");
    for i in 0..300 {
        repo.write(
            &format!("workspaces/ws-{i:03}.yaml"),
            &workspace(&format!("ws-{i:03}")),
        );
    }
    let mut child = sync_command(&repo, &[]).spawn().expect("sync");
    // Once it applies, another writer takes the Lease (as if this one had
    // been frozen past its expiry).
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut all = String::new();
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line.clone());
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the sync reached its Namespaces");
        if line.contains(" Namespaces") {
            break;
        }
    }
    let leases: Api<Lease> = Api::namespaced(control_plane().client(User::Admin).await, SYSTEM);
    let name = tenantsync::cluster::lock::lease_name(&repo.env);
    let mut lease = leases.get(&name).await.expect("the sync's lease");
    if let Some(spec) = lease.spec.as_mut() {
        spec.holder_identity = Some("thief".into());
    }
    leases
        .replace(&name, &PostParams::default(), &lease)
        .await
        .expect("take the lease");
    let output = child.wait_with_output().expect("wait");
    let err = reader.join().expect("reader");
    let report: Value = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
    assert_eq!(output.status.code(), Some(1), "{report:#}\n{err}");
    assert!(
        report["aborted"]
            .as_str()
            .is_some_and(|a| a.contains("lock was lost")),
        "{report:#}\n{err}"
    );
    assert!(
        report["notSent"].as_array().is_some_and(|a| !a.is_empty()),
        "{report:#}"
    );
}

/// Syncs racing for a released Lease: the loser named the previous holder,
/// often nobody (`held by  (up to 180s ...)`). Every waiting line names
/// who holds the lock.
#[tokio::test]
async fn syncs_racing_for_the_lock_name_the_winner_not_an_empty_holder() {
    let repo = TestRepo::new("lock-race");
    repo.apply_rendered().await;
    let mut waited = 0;
    for round in 0..3 {
        let children: Vec<_> = (0..3)
            .map(|_| sync_command(&repo, &[]).spawn().expect("sync"))
            .collect();
        for child in children {
            let out = child.wait_with_output().expect("sync");
            assert_eq!(out.status.code(), Some(0), "round {round}: {}", text(&out));
            let err = String::from_utf8_lossy(&out.stderr);
            for line in err.lines().filter(|l| l.contains("waiting for the lock")) {
                waited += 1;
                let holder = line
                    .split("held by ")
                    .nth(1)
                    .and_then(|rest| rest.split(" (up to").next())
                    .unwrap_or_default();
                assert!(
                    holder.starts_with("tenantsync sync ") || holder.starts_with("another writer"),
                    "round {round}: {line}"
                );
            }
        }
    }
    assert!(waited > 0, "no sync ever waited: the race was not run");
}

/// Names that barely compress, as real tenants' names do at scale.
fn incompressible(i: usize) -> String {
    let mut x = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    (0..40)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b'a' + (x % 26) as u8)
        })
        .collect()
}

/// Issue 19: an inventory past what one ConfigMap holds failed every sync
/// with the API server's `Too long: may not be more than 1048576 bytes`
/// (422). A long object list is now written in chunks, each of which the
/// API server accepts (the inventory's own object with every status field at
/// its longest too), read back whole, and a chunk no longer named is deleted.
#[tokio::test]
async fn a_long_inventory_is_written_in_chunks_the_api_server_accepts_and_read_back_whole() {
    use tenantsync::sync::inventory::{CHUNK_BYTES, MAX_STATUS_VALUE_BYTES, ObjectRef};
    let repo = TestRepo::new("inventory-chunks");
    repo.apply_rendered().await;
    let cluster = admin().await;
    let base = cluster
        .read_inventory_stored(&repo.env)
        .await
        .expect("read");
    let namespace = repo.namespace("contoso");
    let mut long = base.inventory.clone();
    // The most a head holds, then past it: both are accepted.
    let mut i = 0;
    let mut largest_head = None;
    while long
        .encode(CHUNK_BYTES, "t")
        .expect("encode")
        .chunks
        .is_empty()
    {
        largest_head = Some(long.clone());
        for _ in 0..500 {
            long.objects.insert(ObjectRef {
                api_version: "v1".into(),
                kind: "ConfigMap".into(),
                namespace: Some(namespace.as_str().into()),
                name: incompressible(i).into(),
            });
            i += 1;
        }
    }
    let largest_head = largest_head.expect("a head that holds its list");
    let stored = cluster
        .write_inventory_checked(&base, &largest_head, &tenantsync::sync::Fence::default())
        .await
        .expect("the largest list one ConfigMap holds is accepted");
    assert!(stored.chunks.is_none());
    let status: std::collections::BTreeMap<String, String> = [
        "syncStatus",
        "lastSeenRevision",
        "lastError",
        "lastErrorAt",
        "driftedObjects",
        "targetRevision",
        "heartbeatAt",
        "staleAfterSeconds",
        "lastSyncAt",
        "lastSyncBy",
    ]
    .iter()
    .map(|k| (k.to_string(), "x".repeat(MAX_STATUS_VALUE_BYTES * 2)))
    .collect();
    cluster
        .write_status(&repo.env, &status)
        .await
        .expect("status at its longest beside the largest list");

    for _ in 0..30_000 {
        long.objects.insert(ObjectRef {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            namespace: Some(namespace.as_str().into()),
            name: incompressible(i).into(),
        });
        i += 1;
    }
    let stored = cluster
        .write_inventory_checked(&stored, &long, &tenantsync::sync::Fence::default())
        .await
        .expect("a list in chunks is accepted");
    let named = stored.chunks.clone().expect("chunks");
    assert!(named.count >= 2, "{named:?}");
    assert_eq!(inventory(&repo.env).await, long);
    assert_eq!(
        chunk_names(&repo.env).await,
        named.names(&repo.env).into_iter().collect()
    );
    // Another long write replaces the chunks: the old ones are deleted.
    long.objects.pop_last();
    let again = cluster
        .write_inventory_checked(&stored, &long, &tenantsync::sync::Fence::default())
        .await
        .expect("written again");
    let renamed = again.chunks.clone().expect("chunks");
    assert_ne!(renamed.generation, named.generation);
    assert_eq!(
        chunk_names(&repo.env).await,
        renamed.names(&repo.env).into_iter().collect()
    );
    assert_eq!(inventory(&repo.env).await, long);
    // Short again: the list is back in the inventory, no chunk is left.
    let short = base.inventory.clone();
    cluster
        .write_inventory_checked(&again, &short, &tenantsync::sync::Fence::default())
        .await
        .expect("short again");
    assert!(chunk_names(&repo.env).await.is_empty());
    assert_eq!(inventory(&repo.env).await, short);
}

/// Issue 19: an environment whose inventory needs several chunks (a small
/// chunk size set for the test) syncs and prunes, and a sync killed at any
/// point of its writes never leaves a live object outside a readable
/// inventory; the next sync converges and leaves only the chunks named.
#[tokio::test]
async fn a_chunked_inventory_syncs_prunes_and_a_killed_write_loses_no_entry() {
    let repo = TestRepo::new("inventory-chunk-sync");
    for i in 0..40 {
        repo.write(
            &format!("workspaces/t{i:02}.yaml"),
            &workspace(&format!("t{i:02}")),
        );
    }
    let chunked = |extra: &[&str]| {
        let mut c = sync_command(&repo, extra);
        c.env(tenantsync::cluster::inventory::CHUNK_BYTES_ENV, "256");
        c
    };
    let out = chunked(&[]).output().expect("sync");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let first = admin()
        .await
        .read_inventory_stored(&repo.env)
        .await
        .expect("read");
    let named = first.chunks.clone().expect("several chunks");
    assert!(named.count >= 10, "{named:?}");
    assert_eq!(
        chunk_names(&repo.env).await,
        named.names(&repo.env).into_iter().collect()
    );
    let plan = repo.plan_json("admin");
    assert_eq!(plan["summary"]["create"], 0, "{}", plan["summary"]);
    assert_eq!(plan["summary"]["delete"], 0, "{}", plan["summary"]);

    // Kill syncs at different points, each adding a workspace.
    let leases: Api<Lease> = Api::namespaced(control_plane().client(User::Admin).await, SYSTEM);
    for (round, delay_ms) in [30u64, 80, 150, 250, 400, 700].into_iter().enumerate() {
        let name = format!("k{round}");
        repo.write(&format!("workspaces/{name}.yaml"), &workspace(&name));
        let mut child = chunked(&[]).spawn().expect("spawn");
        std::thread::sleep(Duration::from_millis(delay_ms));
        child.kill().expect("kill -9");
        let _ = child.wait();
        let recorded: BTreeSet<String> = inventory(&repo.env)
            .await
            .objects
            .iter()
            .map(|o| o.id())
            .collect();
        let outside: Vec<String> = live_labelled(&repo.env)
            .difference(&recorded)
            .cloned()
            .collect();
        assert!(
            outside.is_empty(),
            "round {round} ({delay_ms} ms): live but not inventoried: {outside:?}"
        );
        // The killed sync's lock would expire in 15 s: not what this tests.
        let _ = leases
            .delete(
                &format!("tenantsync-sync-{}", repo.env),
                &Default::default(),
            )
            .await;
    }
    // Killed mid-write for certain: as soon as the first chunk of a new
    // generation exists, before the inventory names it.
    let before = chunk_names(&repo.env).await;
    repo.write("workspaces/mid.yaml", &workspace("mid"));
    let mut child = chunked(&[]).spawn().expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(60);
    while chunk_names(&repo.env).await.is_subset(&before) {
        assert!(Instant::now() < deadline, "no new chunk was written");
    }
    child.kill().expect("kill -9");
    let _ = child.wait();
    let stored = admin()
        .await
        .read_inventory_stored(&repo.env)
        .await
        .expect("the inventory stays readable");
    let named: BTreeSet<String> = stored
        .chunks
        .expect("chunks")
        .names(&repo.env)
        .into_iter()
        .collect();
    assert!(
        !chunk_names(&repo.env).await.is_subset(&named),
        "the kill landed after the write was complete"
    );
    let recorded: BTreeSet<String> = stored.inventory.objects.iter().map(|o| o.id()).collect();
    let outside: Vec<String> = live_labelled(&repo.env)
        .difference(&recorded)
        .cloned()
        .collect();
    assert!(outside.is_empty(), "live but not inventoried: {outside:?}");
    let _ = leases
        .delete(
            &format!("tenantsync-sync-{}", repo.env),
            &Default::default(),
        )
        .await;

    // Remove three workspaces: pruned, and gone from the inventory.
    for i in 0..3 {
        repo.remove(&format!("workspaces/t{i:02}.yaml"));
    }
    let out = chunked(&["--prune", "--allow-mass-prune"])
        .output()
        .expect("sync");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stored = admin()
        .await
        .read_inventory_stored(&repo.env)
        .await
        .expect("read");
    let gone = repo.namespace("t00");
    assert!(
        !stored
            .inventory
            .objects
            .iter()
            .any(|o| o.namespace.as_deref() == Some(gone.as_str()) || *o.name == *gone),
        "pruned objects stay recorded"
    );
    let plan = repo.plan_json("admin");
    assert_eq!(
        (
            &plan["summary"]["create"],
            &plan["summary"]["update"],
            &plan["summary"]["delete"]
        ),
        (&json!(0), &json!(0), &json!(0)),
        "{}",
        plan["summary"]
    );
    assert_eq!(
        stored.inventory.objects.len() as u64,
        plan["summary"]["unchanged"].as_u64().expect("n")
    );
    // Only the named chunks remain, besides left-overs of killed writes
    // (deleted once older than ten minutes, which this test does not wait).
    let named = stored.chunks.expect("chunks");
    let listed = chunk_names(&repo.env).await;
    for name in named.names(&repo.env) {
        assert!(listed.contains(&name), "{name} missing from {listed:?}");
    }
}

/// Review of issue 19, defect 1: a first write is a create, whose keys the
/// server-side applies after it do not own; an inventory created in chunks
/// kept naming them once its list fit in the head again, and the chunks
/// were deleted: the inventory could never be read again.
#[tokio::test]
async fn an_inventory_created_in_chunks_stays_readable_once_its_list_fits_again() {
    use tenantsync::sync::inventory::{Inventory, ObjectRef};
    let env = tenantsync_env_name("inv-created-chunked");
    let cluster = admin().await;
    let base = cluster.read_inventory_stored(&env).await.expect("read");
    assert!(base.resource_version.is_none(), "a fresh environment");
    let object = |name: String| ObjectRef {
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        namespace: Some("ns".into()),
        name: name.into(),
    };
    let mut long = Inventory::new(&env);
    long.objects
        .extend((0..40_000).map(|i| object(incompressible(i))));
    let stored = cluster
        .write_inventory_checked(&base, &long, &tenantsync::sync::Fence::default())
        .await
        .expect("a first write in chunks (a create)");
    assert!(stored.chunks.is_some());
    let mut short = Inventory::new(&env);
    short.objects.insert(object("kept".into()));
    let stored = cluster
        .write_inventory_checked(&stored, &short, &tenantsync::sync::Fence::default())
        .await
        .expect("a short write");
    assert!(stored.chunks.is_none());
    assert_eq!(inventory(&env).await, short);
    assert!(chunk_names(&env).await.is_empty());
    // And back to chunks, then short again.
    let stored = cluster
        .write_inventory_checked(&stored, &long, &tenantsync::sync::Fence::default())
        .await
        .expect("chunks again");
    assert_eq!(inventory(&env).await, long);
    cluster
        .write_inventory_checked(&stored, &short, &tenantsync::sync::Fence::default())
        .await
        .expect("short again");
    assert_eq!(inventory(&env).await, short);
    assert!(chunk_names(&env).await.is_empty());
    let api: Api<ConfigMap> = Api::namespaced(control_plane().client(User::Admin).await, SYSTEM);
    let _ = api
        .delete(
            &tenantsync::sync::inventory::name_of(&env),
            &Default::default(),
        )
        .await;
}

/// An environment name of the test's own (no repository needed).
fn tenantsync_env_name(test: &str) -> String {
    crate::support::unique_name(test)
        .chars()
        .take(28)
        .collect::<String>()
        .trim_end_matches('-')
        .to_string()
}

fn rollout_record(
    applied: usize,
    phase: tenantsync::sync::rollout::RolloutPhase,
    workspaces: &[String],
) -> tenantsync::sync::resume::RolloutRecord {
    tenantsync::sync::resume::RolloutRecord {
        revision: "r2".into(),
        steps: workspaces
            .chunks(workspaces.len().div_ceil(10).max(1))
            .enumerate()
            .map(|(i, part)| tenantsync::sync::rollout::RolloutStep {
                percent: ((i + 1) * 10).min(100) as u8,
                workspaces: part.to_vec(),
            })
            .collect(),
        not_held_back: Vec::new(),
        applied,
        applied_at: "2026-12-03T10:00:00Z".into(),
        healthy_at: None,
        phase,
        failed: Default::default(),
        rolling_back: Vec::new(),
    }
}

/// Hostile review of the persisted rollout: the rollout record and
/// judgement writes (and, session 32, the Healthy judgement) were not fenced and, on a conflict, wrote the whole
/// stale copy back over the other writer's revision and record. Now a
/// replica that last saw an older record, or lost its hold, changes
/// nothing.
#[tokio::test]
async fn a_replica_that_lost_its_hold_never_puts_an_older_rollout_record_back_nor_records_health() {
    use tenantsync::cluster::inventory::{RolloutWrite, Updated};
    use tenantsync::sync::Fence;
    use tenantsync::sync::rollout::RolloutPhase;
    let repo = TestRepo::new("rollout-record-cas");
    repo.apply_rendered().await;
    let cluster = admin().await;
    let env = repo.env.clone();
    let names: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
    let held = Fence::default();
    let first = rollout_record(1, RolloutPhase::Pausing, &names);
    assert_eq!(
        cluster
            .record_rollout(&env, &held, None, Some(&first))
            .await
            .expect("first record"),
        RolloutWrite::Written
    );
    // A stale sync's copy, read now (before the other writer moves on).
    let stale_base = cluster.read_inventory_stored(&env).await.expect("read");
    // The new writer moves the rollout on and records a revision.
    let moved = rollout_record(2, RolloutPhase::Progressing, &names);
    assert_eq!(
        cluster
            .record_rollout(&env, &held, Some(&first), Some(&moved))
            .await
            .expect("new writer"),
        RolloutWrite::Written
    );
    // The old writer, which last saw `first`, fails its step: refused.
    let failed = rollout_record(1, RolloutPhase::Failed, &names);
    assert_eq!(
        cluster
            .record_rollout(&env, &held, Some(&first), Some(&failed))
            .await
            .expect("old writer"),
        RolloutWrite::Stale
    );
    assert_eq!(inventory(&env).await.rollout, Some(moved.clone()));
    // Nor can it clear it.
    assert_eq!(
        cluster
            .record_rollout(&env, &held, Some(&first), None)
            .await
            .expect("old writer clears"),
        RolloutWrite::Stale
    );
    // A writer whose hold is lost writes nothing at all.
    let lost = Fence::default().with(|| true);
    assert_eq!(
        cluster
            .record_rollout(&env, &lost, Some(&moved), Some(&failed))
            .await
            .expect("lost hold"),
        RolloutWrite::NotHeld
    );
    let before = inventory(&env).await;
    let ws = before
        .workspaces
        .keys()
        .next()
        .cloned()
        .expect("a workspace record");
    let applied = before.applied_revision(&ws).unwrap_or_default().to_string();
    assert_eq!(
        cluster
            .record_judging(
                &env,
                &lost,
                std::slice::from_ref(&ws),
                &applied,
                "2026-12-03T10:00:00Z"
            )
            .await
            .expect("lost hold judging"),
        Updated::NotHeld
    );
    // Nor a Healthy judgement (session 32: it was written unfenced, and on
    // a conflict merged its stale copy over the other writer's).
    assert_eq!(
        cluster
            .record_healthy(&env, &lost, std::slice::from_ref(&ws), &applied)
            .await
            .expect("lost hold healthy"),
        Updated::NotHeld
    );
    assert_eq!(inventory(&env).await, before);
    // A sync's write from the stale copy (it carried `first` unchanged)
    // merges on its conflict without putting `first` back.
    let mut ours = stale_base.inventory.clone();
    ours.last_applied_at = Some("2026-12-03T11:00:00Z".into());
    cluster
        .write_inventory_checked(&stale_base, &ours, &tenantsync::sync::Fence::default())
        .await
        .expect("stale sync write");
    assert_eq!(inventory(&env).await.rollout, Some(moved));
    // While held, the judgement alone is written.
    assert_eq!(
        cluster
            .record_healthy(&env, &held, std::slice::from_ref(&ws), &applied)
            .await
            .expect("held healthy"),
        Updated::Written
    );
    let after = inventory(&env).await;
    assert_eq!(after.healthy_revision(&ws), Some(applied.as_str()));
    assert_eq!(after.objects, before.objects);
}

/// Hostile review of the persisted rollout: the record was plain JSON in
/// the inventory head's `data`, outside the chunk budget, so at thousands
/// of workspaces every inventory write failed. A record of 20,000
/// workspaces in 10 steps is written and read back by the API server.
#[tokio::test]
async fn a_rollout_record_of_20000_workspaces_is_accepted_by_the_api_server() {
    use tenantsync::sync::Fence;
    use tenantsync::sync::rollout::RolloutPhase;
    let repo = TestRepo::new("rollout-record-size");
    repo.apply_rendered().await;
    let cluster = admin().await;
    let env = repo.env.clone();
    let names: Vec<String> = (0..20_000)
        .map(|i| format!("clinic-{i:05}-{}", &incompressible(i)[..8]))
        .collect();
    let mut record = rollout_record(1, RolloutPhase::Failed, &names);
    record.failed = names[..2_000]
        .iter()
        .map(|w| (w.clone(), format!("Degraded: {}", "x".repeat(20_000))))
        .collect();
    record.rolling_back = names[..2_000].to_vec();
    // The per-workspace revisions of 20,000 workspaces too.
    let stored = cluster.read_inventory_stored(&env).await.expect("read");
    let mut many = stored.inventory.clone();
    many.record_applied(
        names
            .iter()
            .map(|ws| tenantsync::sync::inventory::AppliedWorkspace {
                workspace: ws,
                revision: "0123456789abcdef0123456789abcdef01234567",
                changed: true,
            }),
    );
    cluster
        .write_inventory_checked(&stored, &many, &tenantsync::sync::Fence::default())
        .await
        .expect("20,000 workspace records written");
    cluster
        .record_rollout(&env, &Fence::default(), None, Some(&record))
        .await
        .expect("the record is written");
    let read = inventory(&env).await;
    let back = read.rollout.expect("the record reads back");
    assert_eq!(back.steps.len(), 10);
    assert_eq!(back.failed.len(), 2_000);
    assert!(back.failed.values().all(|m| m.chars().count() <= 300));
    assert_eq!(read.workspaces.len(), many.workspaces.len());
}

/// Hostile review (session 32): a sync whose hold on the environment was
/// lost during its prune still narrowed the inventory afterwards, a write
/// no fence checked, so it could drop entries its successor recorded. Now
/// a lost hold leaves the inventory as widened (a superset of what may
/// exist) and the sync says it stopped.
#[tokio::test]
async fn a_sync_that_loses_its_hold_during_prune_does_not_narrow_the_inventory() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tenantsync::cluster::execute::{self, Progress};
    use tenantsync::pipeline::{self, Deletes, Intake, PlanOptions};
    use tenantsync::sync::tenancy::Operator;
    use tenantsync::sync::{Fence, SyncOptions};
    let repo = TestRepo::new("narrow-fence");
    repo.apply_rendered().await;
    let before = inventory(&repo.env).await;
    let woodgrove = before
        .objects
        .iter()
        .filter(|r| r.namespace.as_deref() == Some(repo.namespace("woodgrove").as_str()))
        .count();
    assert!(woodgrove > 1, "woodgrove has objects to prune");
    repo.write("workspaces/woodgrove.yaml", &removed("woodgrove"));

    let cluster = admin().await;
    let operator = Operator::default();
    let tree = tenantsync::source::folder::read(repo.path()).expect("read the repository");
    let state = pipeline::desired(tree, &repo.env, None, &Intake::strict(&operator))
        .unwrap_or_else(|_| panic!("the environment is valid"));
    let stored = cluster.read_inventory(&repo.env).await.expect("inventory");
    let live = pipeline::plan_live(
        &cluster,
        &state,
        stored,
        PlanOptions {
            diffs: false,
            deletes: Deletes::RecordedOrAll,
            settle: Some(false),
            health: false,
        },
    )
    .await
    .unwrap_or_else(|e| panic!("plan: {e}"));
    let lost = Arc::new(AtomicBool::new(false));
    let fence = {
        let lost = lost.clone();
        Fence::default().with(move || lost.load(Ordering::SeqCst))
    };
    let options = state.sync_options(SyncOptions {
        prune: true,
        allow_mass_prune: true,
        fence,
        ..SyncOptions::default()
    });
    // The hold is lost once the first delete is answered.
    let report = execute::sync(
        &cluster,
        &live.plan,
        &state.objects,
        live.inventory,
        &live.undeclared,
        &options,
        state.revision.clone(),
        &state.workspace_revisions,
        |event| {
            if let Progress::Pruned { .. } = event {
                lost.store(true, Ordering::SeqCst);
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("sync: {e}"));
    assert!(
        !report.pruned.is_empty(),
        "a delete was sent before the hold was lost"
    );
    let aborted = report.aborted.clone().unwrap_or_default();
    assert!(
        aborted.contains("lock was lost"),
        "the report says the sync stopped: {aborted:?}"
    );
    // Nothing of woodgrove's was dropped from the inventory.
    let after = inventory(&repo.env).await;
    for r in before.objects.iter() {
        assert!(
            after.objects.contains(r),
            "{} is still recorded: a sync that lost its hold never narrows",
            r.id()
        );
    }
    assert_eq!(after.revision, before.revision);
}

/// The chunk ConfigMaps of `env`, each with its resourceVersion.
async fn chunk_versions(env: &str) -> BTreeMap<String, String> {
    let api: Api<ConfigMap> = Api::namespaced(control_plane().client(User::Admin).await, SYSTEM);
    api.list_metadata(&kube::api::ListParams::default().labels(&format!(
        "{}={env}",
        tenantsync::sync::inventory::CHUNK_LABEL
    )))
    .await
    .expect("list chunks")
    .items
    .into_iter()
    .filter_map(|m| Some((m.metadata.name?, m.metadata.resource_version?)))
    .collect()
}

/// Session 32: recording a health judgement (or the rollout record) read
/// and rewrote every chunk of the object list, once per applied revision:
/// at 20,000 workspaces megabytes for one timestamp. A record-only write
/// now writes the head alone and keeps the stored chunks, untouched.
#[tokio::test]
async fn a_health_judgement_on_a_chunked_inventory_rewrites_only_its_head() {
    use tenantsync::cluster::inventory::Updated;
    use tenantsync::sync::Fence;
    let repo = TestRepo::new("inventory-chunk-keep");
    for i in 0..30 {
        repo.write(
            &format!("workspaces/t{i:02}.yaml"),
            &workspace(&format!("t{i:02}")),
        );
    }
    let mut sync = sync_command(&repo, &[]);
    sync.env(tenantsync::cluster::inventory::CHUNK_BYTES_ENV, "256");
    let out = sync.output().expect("sync");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let cluster = admin().await;
    let before = cluster
        .read_inventory_stored(&repo.env)
        .await
        .expect("read");
    let named = before.chunks.clone().expect("several chunks");
    assert!(named.count >= 5, "{named:?}");
    let chunks = chunk_versions(&repo.env).await;
    assert_eq!(chunks.len(), named.count);

    let ws = "t07".to_string();
    let applied = before
        .inventory
        .applied_revision(&ws)
        .expect("t07 is recorded at a revision")
        .to_string();
    let fence = Fence::default();
    let judged = cluster
        .record_judging(
            &repo.env,
            &fence,
            std::slice::from_ref(&ws),
            &applied,
            "2026-12-03T14:00:00Z",
        )
        .await
        .expect("judging");
    assert_eq!(judged, Updated::Written);
    let healthy = cluster
        .record_healthy(&repo.env, &fence, std::slice::from_ref(&ws), &applied)
        .await
        .expect("healthy");
    assert_eq!(healthy, Updated::Written);

    // The same chunks, never written again, and the whole list read back.
    assert_eq!(chunk_versions(&repo.env).await, chunks);
    let after = cluster
        .read_inventory_stored(&repo.env)
        .await
        .expect("read");
    assert_eq!(after.chunks, Some(named));
    assert_eq!(after.inventory.objects, before.inventory.objects);
    assert_eq!(
        after.inventory.healthy_revision(&ws),
        Some(applied.as_str())
    );
    // A plan still sees every object as recorded.
    let plan = repo.plan_json("admin");
    assert_eq!(plan["summary"]["create"], 0, "{}", plan["summary"]);
    assert_eq!(plan["summary"]["delete"], 0, "{}", plan["summary"]);
}

/// An inventory that would need more than 512 chunks (here of 256 bytes,
/// so a few thousand objects suffice) refuses the sync before anything is
/// written or applied: the message says how many objects and what to do,
/// no object of the environment exists, no inventory was written.
#[tokio::test]
async fn an_inventory_past_512_chunks_refuses_the_sync_before_anything_is_written() {
    let repo = TestRepo::new("inventory-full");
    for i in 0..2100 {
        repo.write(
            &format!("workspaces/t{i:04}.yaml"),
            &workspace(&format!("t{i:04}")),
        );
    }
    let mut sync = sync_command(&repo, &[]);
    sync.env(tenantsync::cluster::inventory::CHUNK_BYTES_ENV, "256");
    let out = sync.output().expect("sync");
    let err = text(&out);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("more than 512 chunks of 256 bytes compressed for ")
            && err.contains("nothing was written")
            && err.contains("Spread the workspaces over more environments")
            && err.contains(&repo.env),
        "{err}"
    );
    assert!(
        live_labelled(&repo.env).is_empty(),
        "objects were applied: {:?}",
        live_labelled(&repo.env)
    );
    let stored = admin()
        .await
        .read_inventory_stored(&repo.env)
        .await
        .expect("read");
    assert!(stored.inventory.objects.is_empty() && stored.chunks.is_none());
    assert!(chunk_names(&repo.env).await.is_empty());
}
