//! Tenancy lockdown on the real control plane: a commit to the tenants
//! repository touches only what its environment owns. The guardrails refuse
//! backdoors before any write (and deploy/'s admission policy refuses them
//! if tenantsync's check were bypassed); objects tenantsync did not create
//! are never adopted, applied or pruned without `--adopt`; environments never
//! take objects from each other.

use std::path::Path;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, ListParams};
use serde_json::Value;

use crate::deploy_cluster::{deployed, kubectl, service_account_kubeconfig, tenantsync, text};
use crate::support::repo::TestRepo;
use crate::support::{User, control_plane};

const SYSTEM: &str = tenantsync::sync::inventory::SYSTEM_NAMESPACE;

/// A pod template every guardrail refuses: kube-system, a cluster-admin
/// ServiceAccount, the host's PIDs and root file system, privileged.
const BACKDOOR: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: backdoor
  namespace: kube-system
spec:
  selector: {matchLabels: {app: backdoor}}
  template:
    metadata: {labels: {app: backdoor}}
    spec:
      serviceAccountName: cluster-admin-sa
      hostPID: true
      volumes: [{name: root, hostPath: {path: /}}]
      containers:
        - name: shell
          image: busybox
          securityContext: {privileged: true}
";

const SELF_PATCH: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: tenantsync
  namespace: tenantsync-system
spec:
  selector: {matchLabels: {app.kubernetes.io/name: tenantsync, app.kubernetes.io/component: daemon}}
  template:
    metadata: {labels: {app.kubernetes.io/name: tenantsync, app.kubernetes.io/component: daemon}}
    spec:
      containers:
        - name: tenantsync
          image: evil.example.com/tenantsync:owned
          args: [run, --allow-mass-prune]
";

const CLUSTER_ROLE_BINDING: &str = "apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: tenants-are-admins
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: cluster-admin}
subjects: [{kind: ServiceAccount, name: default, namespace: default}]
";

const OTHER_INVENTORY: &str = "apiVersion: v1
kind: ConfigMap
metadata:
  name: inventory-prod
  namespace: tenantsync-system
data: {}
";

fn environment_yaml(env: &str, extra: &str) -> String {
    format!(
        "apiVersion: tenantsync.io/v1alpha1\nkind: Environment\nmetadata:\n  name: {env}\nspec:\n  base: base\n  ingress:\n    domain: test.example.com\n{extra}"
    )
}

/// Nothing labelled for the environment exists and it has no inventory.
async fn nothing_written(env: &str) {
    let client = control_plane().client(User::Admin).await;
    let inventories: Api<ConfigMap> = Api::namespaced(client.clone(), SYSTEM);
    assert!(
        inventories
            .get_opt(&tenantsync::sync::inventory::name_of(env))
            .await
            .expect("get inventory")
            .is_none(),
        "an inventory was written for {env}"
    );
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let labelled = namespaces
        .list(&ListParams::default().labels(&format!("tenantsync.io/environment={env}")))
        .await
        .expect("list namespaces");
    assert!(
        labelled.items.is_empty(),
        "namespaces were created for {env}"
    );
    let config_maps: Api<ConfigMap> = Api::all(client);
    let labelled = config_maps
        .list(&ListParams::default().labels(&format!("tenantsync.io/environment={env}")))
        .await
        .expect("list config maps");
    assert!(
        labelled.items.is_empty(),
        "config maps were created for {env}"
    );
}

#[tokio::test]
async fn tenancy_guardrails_refuse_each_backdoor_before_any_write() {
    deployed();
    let dir = tempfile::tempdir().expect("tempdir");
    // The daemon's own credentials, as deploy/ ships them.
    let kubeconfig = service_account_kubeconfig("tenantsync", dir.path());
    let template = |t: &str| format!("  namespaceTemplate: \"{t}\"\n");
    let workspace = "apiVersion: tenantsync.io/v1alpha1\nkind: Workspace\nmetadata:\n  name: kube-system\nspec:\n  fhirServices:\n    - name: main\n      fhirVersion: R4\n";
    type Case<'a> = (&'a str, Vec<(&'a str, String)>, Vec<&'a str>);
    let cases: Vec<Case> = vec![
        (
            "backdoor",
            vec![("resources/backdoor.yaml", BACKDOOR.into())],
            vec![
                "Deployment/kube-system/backdoor",
                "reserved namespace `kube-system`",
                "hostPID: true",
                "hostPath volume `root`",
                "container `shell` is privileged",
                "ServiceAccount `cluster-admin-sa`",
            ],
        ),
        (
            "self-patch",
            vec![("resources/self.yaml", SELF_PATCH.into())],
            vec![
                "Deployment/tenantsync-system/tenantsync",
                "reserved namespace `tenantsync-system`",
            ],
        ),
        (
            "crb",
            vec![("resources/crb.yaml", CLUSTER_ROLE_BINDING.into())],
            vec![
                "ClusterRoleBinding/tenants-are-admins",
                "cluster-scoped kind ClusterRoleBinding",
                "--allow-kind ClusterRoleBinding",
            ],
        ),
        (
            "inventory",
            vec![("resources/inventory.yaml", OTHER_INVENTORY.into())],
            vec![
                "ConfigMap/tenantsync-system/inventory-prod",
                "reserved namespace `tenantsync-system`",
            ],
        ),
        (
            "kube-ws",
            vec![
                ("environment.yaml", template("{workspace}")),
                ("workspaces/kube-system.yaml", workspace.into()),
            ],
            vec![
                "Namespace/kube-system",
                "reserved namespace `kube-system`",
                "spec.namespaceTemplate",
            ],
        ),
        (
            "other-env",
            vec![("environment.yaml", template("{workspace}-prod"))],
            vec!["`{workspace}-prod` has no `{environment}`"],
        ),
        (
            "force",
            vec![(
                "environment.yaml",
                "  syncPolicy:\n    forceConflicts: true\n".into(),
            )],
            vec![
                "spec.syncPolicy.forceConflicts",
                "loosens the operator's setting",
            ],
        ),
    ];
    for (what, files, expected) in cases {
        let repo = TestRepo::new(&format!("guard-{what}"));
        for (rel, content) in &files {
            let content = if *rel == "environment.yaml" {
                environment_yaml(&repo.env, content)
            } else {
                content.clone()
            };
            repo.write(rel, &content);
        }
        for verb in ["validate", "plan", "sync"] {
            let mut command = tenantsync(&kubeconfig);
            command
                .args([verb, "--env", &repo.env, "--repo"])
                .arg(repo.path());
            let out = command.output().expect("run tenantsync");
            let shown = text(&out);
            assert_eq!(out.status.code(), Some(1), "{what}: {verb}: {shown}");
            for needle in &expected {
                assert!(
                    shown.contains(needle),
                    "{what}: {verb} does not say {needle:?}:\n{shown}"
                );
            }
            assert!(shown.contains("(operator guardrail)"), "{what}: {shown}");
            if verb != "validate" {
                assert!(
                    shown.contains("the cluster was not contacted"),
                    "{what}: {shown}"
                );
            }
        }
        nothing_written(&repo.env).await;
    }

    // The operator can open what the repository cannot: a pattern of
    // namespaces, a kind by name (never a reserved namespace).
    let repo = TestRepo::new("guard-open");
    repo.write("resources/crb.yaml", CLUSTER_ROLE_BINDING);
    let out = tenantsync(&kubeconfig)
        .args([
            "validate",
            "--env",
            &repo.env,
            "--allow-kind",
            "ClusterRoleBinding",
            "--repo",
        ])
        .arg(repo.path())
        .output()
        .expect("run tenantsync");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    repo.write("resources/backdoor.yaml", BACKDOOR);
    let out = tenantsync(&kubeconfig)
        .args([
            "validate",
            "--env",
            &repo.env,
            "--allow-kind",
            "ClusterRoleBinding",
            "--allow-namespace",
            "kube-*",
            "--allow-privileged-pods",
            "--repo",
        ])
        .arg(repo.path())
        .output()
        .expect("run tenantsync");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("reserved namespace `kube-system`"),
        "{}",
        text(&out)
    );

    // Defence in depth: the same writes sent straight to the API server with
    // the daemon's token (tenantsync's own check bypassed) are refused by
    // deploy/'s admission policy, or by RBAC. (Not another environment's
    // inventory: the daemon writes every environment's, so only
    // tenantsync's own check tells them apart.)
    for (what, manifest, refusal) in [
        ("backdoor", BACKDOOR, "tenantsync-writes"),
        ("self-patch", SELF_PATCH, "tenantsync-writes"),
        ("crb", CLUSTER_ROLE_BINDING, "forbidden"),
    ] {
        let file = dir.path().join(format!("{what}.yaml"));
        std::fs::write(&file, manifest).expect("write manifest");
        let out = apply_as(&kubeconfig, &file);
        assert!(!out.status.success(), "{what} was accepted: {}", text(&out));
        assert!(text(&out).contains(refusal), "{what}: {}", text(&out));
    }
    // A namespace tenantsync did not create, with the token: refused too.
    let foreign = format!("foreign-{}", std::process::id());
    kubectl(&["create", "namespace", &foreign]);
    let file = dir.path().join("foreign.yaml");
    std::fs::write(
        &file,
        format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n  namespace: {foreign}\n"),
    )
    .expect("write");
    let out = apply_as(&kubeconfig, &file);
    assert!(text(&out).contains("tenantsync-writes"), "{}", text(&out));
    kubectl(&["delete", "namespace", &foreign, "--wait=false"]);
}

/// `kubectl apply --server-side` with only `kubeconfig`'s credentials.
fn apply_as(kubeconfig: &Path, file: &Path) -> std::process::Output {
    control_plane()
        .kubectl()
        .env("KUBECONFIG", kubeconfig)
        .args(["apply", "--server-side", "-f"])
        .arg(file)
        .output()
        .expect("run kubectl")
}

fn run(repo: &TestRepo, verb: &str, extra: &[&str]) -> (std::process::Output, Value) {
    let out = repo.run(verb, "admin", &[&["--output", "json"], extra].concat());
    let report = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out, report)
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn a_preexisting_object_is_not_managed_left_alone_by_sync_and_prune_and_adopted_only_with_adopt()
 {
    let repo = TestRepo::new("never-adopt");
    repo.apply_rendered().await;
    let ns = repo.namespace("contoso");
    let id = format!("ConfigMap/{ns}/legacy-settings");
    kubectl(&[
        "-n",
        &ns,
        "create",
        "configmap",
        "legacy-settings",
        "--from-literal=owner=hand",
    ]);
    let manifest = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: legacy-settings\n  namespace: {ns}\ndata:\n  owner: git\n"
    );
    repo.write("resources/legacy.yaml", &manifest);
    let api: Api<ConfigMap> = Api::namespaced(control_plane().client(User::Admin).await, &ns);
    let untouched = |cm: ConfigMap| {
        let owner = cm.data.unwrap_or_default().get("owner").cloned();
        let labelled = cm
            .metadata
            .labels
            .unwrap_or_default()
            .contains_key("tenantsync.io/environment");
        owner.as_deref() == Some("hand") && !labelled
    };

    // plan: shown as existing and not managed, never as a create.
    let plan = repo.plan_json("readonly");
    assert_eq!(plan["summary"]["create"], 0, "{plan:#}");
    assert_eq!(plan["summary"]["unmanaged"], 1, "{plan:#}");
    let change = plan["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .find(|c| c["action"] == "unmanaged")
        .expect("the unmanaged object");
    assert_eq!(change["name"], "legacy-settings");
    let note = change["note"].as_str().expect("note");
    assert!(
        note.contains("not created by tenantsync") && note.contains("kubectl-create"),
        "{note}"
    );
    let out = repo.run("plan", "readonly", &["--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("! exists, not managed {id}")),
        "{}",
        text(&out)
    );

    // sync: refused for that object, which stays as it was and unrecorded.
    let (out, report) = run(&repo, "sync", &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let failures = report["failures"].to_string();
    assert!(
        failures.contains(&id) && failures.contains("exists, not managed"),
        "{report:#}"
    );
    assert!(untouched(api.get("legacy-settings").await.expect("get")));
    let inventory = tenantsync::sync::inventory::Inventory::from_config_map(
        &Api::<ConfigMap>::namespaced(control_plane().client(User::Admin).await, SYSTEM)
            .get(&tenantsync::sync::inventory::name_of(&repo.env))
            .await
            .expect("inventory"),
    )
    .expect("decode inventory");
    assert!(
        !inventory.objects.iter().any(|r| r.id() == id),
        "an object tenantsync did not create was recorded"
    );

    // Dropping the manifest and pruning never deletes it.
    repo.remove("resources/legacy.yaml");
    let (out, report) = run(&repo, "sync", &["--prune"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(strings(&report["pruned"]).is_empty(), "{report:#}");
    assert!(untouched(
        api.get("legacy-settings").await.expect("still there")
    ));

    // --adopt takes it over: labelled, recorded, declared content.
    repo.write("resources/legacy.yaml", &manifest);
    let (out, report) = run(&repo, "sync", &["--adopt"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        strings(&report["adopted"]),
        std::slice::from_ref(&id),
        "{report:#}"
    );
    let cm = api.get("legacy-settings").await.expect("get");
    assert_eq!(cm.data.unwrap_or_default()["owner"], "git");
    assert_eq!(
        cm.metadata.labels.unwrap_or_default()["tenantsync.io/environment"],
        repo.env
    );
    // Now it is tenantsync's: dropping it prunes it.
    repo.remove("resources/legacy.yaml");
    let (out, report) = run(&repo, "sync", &["--prune"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(strings(&report["pruned"]), [id], "{report:#}");
}

#[tokio::test]
async fn two_environments_never_take_an_object_from_each_other() {
    let first = TestRepo::new("owner-a");
    first.apply_rendered().await;
    let ns = first.namespace("contoso");
    let api: Api<ConfigMap> = Api::namespaced(control_plane().client(User::Admin).await, &ns);
    let before = api.get("fhir-main-config").await.expect("get");
    // Each environment applies as a field manager of its own.
    let managers: Vec<String> = before
        .metadata
        .managed_fields
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| m.manager)
        .collect();
    assert_eq!(managers, [format!("tenantsync/{}", first.env)]);

    // A second environment declares the same object (the operator let it
    // write into the first one's namespace).
    let second = TestRepo::new("owner-b");
    second.write(
        "resources/steal.yaml",
        &format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: fhir-main-config\n  namespace: {ns}\ndata:\n  FhirServer__Version: stolen\n"
        ),
    );
    let allow = ["--allow-namespace", ns.as_str()];
    let out = second.run(
        "plan",
        "admin",
        &[&["--output", "json"][..], &allow].concat(),
    );
    let plan: Value = serde_json::from_slice(&out.stdout).expect("plan JSON");
    let change = plan["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .find(|c| c["name"] == "fhir-main-config" && c["namespace"] == ns.as_str())
        .expect("the object")
        .clone();
    assert_eq!(change["action"], "unmanaged", "{change:#}");
    assert!(
        change["note"]
            .as_str()
            .expect("note")
            .contains(&format!("environment `{}`", first.env)),
        "{change:#}"
    );
    for adopt in [&[][..], &["--adopt"][..]] {
        let out = second.run("sync", "admin", &[&allow[..], adopt].concat());
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(text(&out).contains("exists, not managed"), "{}", text(&out));
    }
    let after = api.get("fhir-main-config").await.expect("get");
    assert_eq!(after.data, before.data);
    assert_eq!(after.metadata.labels, before.metadata.labels);
    assert_eq!(
        after.metadata.resource_version,
        before.metadata.resource_version
    );
}

/// `kubectl ARGS` with only `kubeconfig`'s credentials.
fn kubectl_as(kubeconfig: &Path, args: &[&str]) -> std::process::Output {
    control_plane()
        .kubectl()
        .env("KUBECONFIG", kubeconfig)
        .args(args)
        .output()
        .expect("run kubectl")
}

/// Asserts that `out` is the admission policy refusing, with `message`.
fn refused_by_policy(what: &str, out: &std::process::Output, message: &str) {
    let shown = text(out);
    assert!(!out.status.success(), "{what} was accepted: {shown}");
    assert!(
        shown.contains("ValidatingAdmissionPolicy 'tenantsync-writes'") && shown.contains(message),
        "{what}: not refused by the admission policy with {message:?}: {shown}"
    );
}

/// A namespace made by the admin, labelled as tenantsync's when `ours`.
fn admin_namespace(test: &str, ours: bool) -> String {
    let name = crate::support::unique_name(test);
    let labels = if ours {
        "\n    app.kubernetes.io/managed-by: tenantsync\n    tenantsync.io/environment: policy-test"
    } else {
        ""
    };
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(
        file.path(),
        format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n  labels:\n    {}: \"true\"{labels}\n",
            crate::support::NAMESPACE_LABEL
        ),
    )
    .expect("write namespace");
    kubectl(&["apply", "-f", &file.path().display().to_string()]);
    name
}

const PODS_REFUSED: &str = "(tenancy guardrail: pods)";

#[tokio::test]
async fn admission_policy_checks_init_and_ephemeral_containers_and_every_pod_template() {
    deployed();
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = service_account_kubeconfig("tenantsync", dir.path());
    let ns = admin_namespace("policy-pods", true);
    // The daemon's ClusterRole has no Pods, CronJobs or
    // ReplicationControllers: granted here, in this namespace only, so that
    // the policy (not RBAC) is what answers.
    kubectl(&[
        "-n",
        &ns,
        "create",
        "role",
        "pods",
        "--verb=get,create,patch,update",
        "--resource=pods,pods/ephemeralcontainers,replicationcontrollers,cronjobs.batch",
    ]);
    kubectl(&[
        "-n",
        &ns,
        "create",
        "rolebinding",
        "pods",
        "--role=pods",
        "--serviceaccount=tenantsync-system:tenantsync",
    ]);
    let cases = [
        (
            "a Deployment with a privileged init container",
            format!(
                "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: init-priv, namespace: {ns}}}\nspec:\n  selector: {{matchLabels: {{app: x}}}}\n  template:\n    metadata: {{labels: {{app: x}}}}\n    spec:\n      initContainers: [{{name: init, image: busybox, securityContext: {{privileged: true}}}}]\n      containers: [{{name: c, image: busybox}}]\n"
            ),
        ),
        (
            "a Deployment with a host port on an init container",
            format!(
                "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: init-port, namespace: {ns}}}\nspec:\n  selector: {{matchLabels: {{app: x}}}}\n  template:\n    metadata: {{labels: {{app: x}}}}\n    spec:\n      initContainers: [{{name: init, image: busybox, ports: [{{containerPort: 80, hostPort: 80}}]}}]\n      containers: [{{name: c, image: busybox}}]\n"
            ),
        ),
        (
            "a CronJob whose init container adds a capability",
            format!(
                "apiVersion: batch/v1\nkind: CronJob\nmetadata: {{name: cron-cap, namespace: {ns}}}\nspec:\n  schedule: \"* * * * *\"\n  jobTemplate:\n    spec:\n      template:\n        spec:\n          restartPolicy: Never\n          initContainers: [{{name: init, image: busybox, securityContext: {{capabilities: {{add: [SYS_ADMIN]}}}}}}]\n          containers: [{{name: c, image: busybox}}]\n"
            ),
        ),
        (
            "a ReplicationController on the host's network",
            format!(
                "apiVersion: v1\nkind: ReplicationController\nmetadata: {{name: rc-host, namespace: {ns}}}\nspec:\n  selector: {{app: x}}\n  template:\n    metadata: {{labels: {{app: x}}}}\n    spec:\n      hostNetwork: true\n      containers: [{{name: c, image: busybox}}]\n"
            ),
        ),
    ];
    for (what, manifest) in cases {
        let file = dir.path().join("workload.yaml");
        std::fs::write(&file, manifest).expect("write manifest");
        refused_by_policy(what, &apply_as(&kubeconfig, &file), PODS_REFUSED);
    }
    // A harmless Pod is accepted; a privileged ephemeral container added to
    // it (as `kubectl debug` does, through the pods/ephemeralcontainers
    // subresource) is refused, a harmless one accepted.
    let file = dir.path().join("pod.yaml");
    std::fs::write(
        &file,
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: fine, namespace: {ns}}}\nspec:\n  containers: [{{name: c, image: busybox}}]\n"
        ),
    )
    .expect("write pod");
    let out = apply_as(&kubeconfig, &file);
    assert!(out.status.success(), "a harmless Pod: {}", text(&out));
    let debug = |name: &str, security: &str| {
        kubectl_as(
            &kubeconfig,
            &[
                "-n",
                &ns,
                "patch",
                "pod",
                "fine",
                "--subresource=ephemeralcontainers",
                "--type=strategic",
                "-p",
                &format!(
                    "{{\"spec\":{{\"ephemeralContainers\":[{{\"name\":\"{name}\",\"image\":\"busybox\"{security}}}]}}}}"
                ),
            ],
        )
    };
    refused_by_policy(
        "a privileged ephemeral container",
        &debug("root", ",\"securityContext\":{\"privileged\":true}"),
        PODS_REFUSED,
    );
    let out = debug("look", "");
    assert!(
        out.status.success(),
        "a harmless ephemeral container: {}",
        text(&out)
    );
    kubectl(&["delete", "namespace", &ns, "--wait=false"]);
}

#[tokio::test]
async fn admission_policy_never_deletes_or_relabels_tenantsync_system_or_a_namespace_not_its_own() {
    deployed();
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = service_account_kubeconfig("tenantsync", dir.path());
    let ours = admin_namespace("policy-ours", true);
    let foreign = admin_namespace("policy-foreign", false);
    let namespace_file = |name: &str, labels: &str| {
        let file = dir.path().join(format!("{name}.yaml"));
        std::fs::write(
            &file,
            format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n  labels: {{{labels}}}\n"),
        )
        .expect("write namespace");
        file.display().to_string()
    };
    const DELETE: &str = "never deletes tenantsync-system, nor a namespace not labelled";
    const RELABEL: &str =
        "never changes a namespace's app.kubernetes.io/managed-by or tenantsync.io/* labels";
    // tenantsync-system is only ever asked as a server-side dry run: were
    // the policy to let it through, nothing would be deleted or changed.
    refused_by_policy(
        "deleting tenantsync-system",
        &kubectl_as(
            &kubeconfig,
            &[
                "delete",
                "namespace",
                SYSTEM,
                "--dry-run=server",
                "--wait=false",
            ],
        ),
        DELETE,
    );
    refused_by_policy(
        "relabelling tenantsync-system",
        &kubectl_as(
            &kubeconfig,
            &[
                "apply",
                "--server-side",
                "--dry-run=server",
                "-f",
                &namespace_file(SYSTEM, "tenantsync.io/environment: stolen"),
            ],
        ),
        RELABEL,
    );
    refused_by_policy(
        "deleting a namespace not labelled as tenantsync's",
        &kubectl_as(
            &kubeconfig,
            &["delete", "namespace", &foreign, "--wait=false"],
        ),
        DELETE,
    );
    for (what, labels) in [
        (
            "moving a namespace to another environment",
            "tenantsync.io/environment: stolen",
        ),
        (
            "handing a namespace to another manager",
            "app.kubernetes.io/managed-by: someone-else",
        ),
        (
            "adding a tenantsync.io label",
            "tenantsync.io/workspace: stolen",
        ),
    ] {
        refused_by_policy(
            what,
            &kubectl_as(
                &kubeconfig,
                &[
                    "apply",
                    "--server-side",
                    "--force-conflicts",
                    "-f",
                    &namespace_file(&ours, labels),
                ],
            ),
            RELABEL,
        );
    }
    // Nothing changed; and what the daemon does is still allowed: another
    // label on its namespace, deleting it (as a dry run).
    let labels: Value = serde_json::from_str(&kubectl(&[
        "get",
        "namespace",
        &ours,
        "-o",
        "jsonpath={.metadata.labels}",
    ]))
    .expect("labels JSON");
    assert_eq!(
        labels["tenantsync.io/environment"], "policy-test",
        "{labels}"
    );
    assert_eq!(
        labels["app.kubernetes.io/managed-by"], "tenantsync",
        "{labels}"
    );
    assert!(labels.get("tenantsync.io/workspace").is_none(), "{labels}");
    kubectl(&["get", "namespace", &foreign]);
    let out = kubectl_as(
        &kubeconfig,
        &[
            "apply",
            "--server-side",
            "--dry-run=server",
            "-f",
            &namespace_file(&ours, "example.com/team: clinical"),
        ],
    );
    assert!(out.status.success(), "another label: {}", text(&out));
    let out = kubectl_as(
        &kubeconfig,
        &[
            "delete",
            "namespace",
            &ours,
            "--dry-run=server",
            "--wait=false",
        ],
    );
    assert!(out.status.success(), "deleting its own: {}", text(&out));
    kubectl(&["delete", "namespace", &ours, &foreign, "--wait=false"]);
}

/// A cluster-scoped kind the static list of Kubernetes' own does not know
/// (here a CRD's), declared with a `metadata.namespace`: API discovery says
/// what it is, and plan and sync refuse it before any write instead of
/// applying it cluster-wide over an existing object.
#[tokio::test]
async fn a_cluster_scoped_kind_declared_with_a_namespace_is_refused_not_applied_cluster_wide() {
    let repo = TestRepo::new("cluster-scoped");
    let group = format!("{}.tenantsync.test", repo.env);
    let crd = format!("clusterwidgets.{group}");
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(
        file.path(),
        format!(
            "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata: {{name: {crd}}}\nspec:\n  group: {group}\n  scope: Cluster\n  names: {{kind: ClusterWidget, plural: clusterwidgets, singular: clusterwidget}}\n  versions:\n    - name: v1\n      served: true\n      storage: true\n      schema: {{openAPIV3Schema: {{type: object, x-kubernetes-preserve-unknown-fields: true}}}}\n---\n"
        ),
    )
    .expect("write CRD");
    let path = file.path().display().to_string();
    kubectl(&["apply", "-f", &path]);
    kubectl(&[
        "wait",
        "--for=condition=Established",
        &format!("crd/{crd}"),
        "--timeout=60s",
    ]);
    // Someone else's object of that kind, cluster-wide.
    let widget = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(
        widget.path(),
        format!("apiVersion: {group}/v1\nkind: ClusterWidget\nmetadata: {{name: shared}}\nowner: platform\n"),
    )
    .expect("write widget");
    kubectl(&["create", "-f", &widget.path().display().to_string()]);
    let live = || -> Value {
        serde_json::from_str(&kubectl(&[
            "get",
            &format!("clusterwidgets.{group}"),
            "shared",
            "-o",
            "json",
        ]))
        .expect("widget JSON")
    };
    let before = live();

    let ns = repo.namespace("contoso");
    let id = format!("ClusterWidget/{ns}/shared");
    repo.write(
        "resources/widget.yaml",
        &format!(
            "apiVersion: {group}/v1\nkind: ClusterWidget\nmetadata:\n  name: shared\n  namespace: {ns}\nowner: tenant\n"
        ),
    );
    // Offline, nothing tells it from a namespaced kind.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tenantsync"))
        .args(["validate", "--env", &repo.env, "--repo"])
        .arg(repo.path())
        .output()
        .expect("run tenantsync");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    for (verb, extra) in [
        ("plan", &[][..]),
        ("sync", &[][..]),
        ("sync", &["--allow-kind", "ClusterWidget"][..]),
    ] {
        let out = repo.run(verb, "admin", extra);
        let shown = text(&out);
        assert_eq!(out.status.code(), Some(1), "{verb} {extra:?}: {shown}");
        for needle in [
            format!("{id} (operator guardrail)"),
            "serves as cluster-scoped".into(),
            "remove metadata.namespace".into(),
            "--allow-kind ClusterWidget".into(),
            "nothing was written to the cluster".into(),
        ] {
            assert!(
                shown.contains(&needle),
                "{verb} {extra:?} does not say {needle:?}:\n{shown}"
            );
        }
    }
    nothing_written(&repo.env).await;
    let after = live();
    assert_eq!(
        after["metadata"]["resourceVersion"],
        before["metadata"]["resourceVersion"]
    );
    assert_eq!(after["owner"], "platform");
    assert!(after["metadata"]["labels"].is_null(), "{after}");

    // Without a namespace it is cluster-scoped like any other kind: only
    // the operator can allow it.
    repo.write(
        "resources/widget.yaml",
        &format!("apiVersion: {group}/v1\nkind: ClusterWidget\nmetadata:\n  name: shared\nowner: tenant\n"),
    );
    let out = repo.run("plan", "admin", &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("cluster-scoped kind ClusterWidget; only the operator can allow it (--allow-kind ClusterWidget)"),
        "{}",
        text(&out)
    );
    kubectl(&["delete", "-f", &path, "--wait=false"]);
}

/// `{environment}` in the template does not keep two environments from
/// rendering one namespace (workspace `contoso` of A and workspace
/// `contoso-ts` of an environment named A without its `ts-`): `validate` of
/// both together reports it, and on the cluster the second to sync leaves
/// the first one's namespace and objects alone.
#[tokio::test]
async fn two_environments_rendering_one_namespace_leave_each_other_alone_and_validate_says_so() {
    let first = TestRepo::new("ns-clash");
    first.apply_rendered().await;
    let ns = first.namespace("contoso");
    let second = first
        .env
        .strip_prefix("ts-")
        .expect("test environments start with ts-")
        .to_string();
    let layer = first.path().join("environments").join(&second);
    std::fs::create_dir_all(layer.join("workspaces")).expect("mkdir");
    std::fs::write(
        layer.join("environment.yaml"),
        format!(
            "apiVersion: tenantsync.io/v1alpha1\nkind: Environment\nmetadata:\n  name: {second}\nspec:\n  base: base\n  ingress:\n    domain: test.example.com\n  patches:\n{}",
            ["contoso", "fabrikam", "northwind", "woodgrove"]
                .map(|w| format!("    - metadata: {{name: {w}}}\n      $patch: delete\n"))
                .concat()
        ),
    )
    .expect("write environment");
    std::fs::write(
        layer.join("workspaces/contoso-ts.yaml"),
        "apiVersion: tenantsync.io/v1alpha1\nkind: Workspace\nmetadata:\n  name: contoso-ts\nspec:\n  fhirServices:\n    - name: main\n",
    )
    .expect("write workspace");
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_tenantsync"))
            .args(args)
            .arg("--repo")
            .arg(first.path())
            .output()
            .expect("run tenantsync")
    };
    let out = run(&["validate"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains(&format!(
            "namespace `{ns}` is rendered by workspace `contoso` of environment `{}` and by workspace `contoso-ts` of environment `{second}`",
            first.env
        )),
        "{}",
        text(&out)
    );

    let api: Api<ConfigMap> = Api::namespaced(control_plane().client(User::Admin).await, &ns);
    let namespaces: Api<Namespace> = Api::all(control_plane().client(User::Admin).await);
    let config_before = api.get("fhir-main-config").await.expect("get");
    let namespace_before = namespaces.get(&ns).await.expect("get namespace");
    let kubeconfig = control_plane().kubeconfig().display().to_string();
    let out = run(&[
        "sync",
        "--env",
        &second,
        "--kubeconfig",
        &kubeconfig,
        "--context",
        "admin",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains(&format!(
            "exists and belongs to tenantsync environment `{}`",
            first.env
        )),
        "{}",
        text(&out)
    );
    let config_after = api.get("fhir-main-config").await.expect("get");
    let namespace_after = namespaces.get(&ns).await.expect("get namespace");
    assert_eq!(
        config_after.metadata.resource_version,
        config_before.metadata.resource_version
    );
    assert_eq!(
        namespace_after.metadata.resource_version,
        namespace_before.metadata.resource_version
    );
}

/// Review of issue 16: the shipped admission policy refused the daemon's
/// write of a manual environment's pending revision (`approval-<env>`), so
/// nothing could be approved in a standard install; allowing that write
/// must not let the daemon's token approve. It may publish a pending
/// revision, never write an approval.
#[tokio::test]
async fn admission_policy_lets_the_daemon_publish_a_pending_revision_but_never_approve() {
    deployed();
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = service_account_kubeconfig("tenantsync", dir.path());
    let name = format!(
        "approval-{}",
        crate::support::unique_name("policy-approval")
            .chars()
            .take(40)
            .collect::<String>()
            .trim_end_matches('-')
    );
    let file = |data: &str| {
        let path = dir.path().join(format!("{}.yaml", data.len()));
        std::fs::write(
            &path,
            format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: {SYSTEM}\ndata:\n{data}"),
        )
        .expect("write");
        path.display().to_string()
    };
    const APPROVES: &str = "never approves one";
    let pending = "  pendingRevision: 0123456789abcdef0123456789abcdef01234567\n";
    let out = kubectl_as(
        &kubeconfig,
        &[
            "apply",
            "--server-side",
            "--field-manager=tenantsync",
            "-f",
            &file(pending),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    // Asked as a server-side dry run (admission runs, nothing is stored),
    // until the policy just applied is in force.
    let approving = file(&format!(
        "{pending}  approvedRevision: 0123456789abcdef0123456789abcdef01234567\n"
    ));
    let approve = || {
        kubectl_as(
            &kubeconfig,
            &[
                "apply",
                "--server-side",
                "--dry-run=server",
                "--field-manager=tenantsync",
                "-f",
                &approving,
            ],
        )
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut out = approve();
    while out.status.success() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(500));
        out = approve();
    }
    refused_by_policy("the daemon approving", &out, APPROVES);
    // An approval recorded by someone else stays as it is under the
    // daemon's next write of the pending revision.
    kubectl(&[
        "-n",
        SYSTEM,
        "patch",
        "configmap",
        &name,
        "--type=merge",
        "-p",
        r#"{"data":{"approvedRevision":"0123456789abcdef0123456789abcdef01234567","approvedBy":"Dana","approvedUser":"admin"}}"#,
    ]);
    let out = kubectl_as(
        &kubeconfig,
        &[
            "-n",
            SYSTEM,
            "patch",
            "configmap",
            &name,
            "--type=merge",
            "-p",
            r#"{"data":{"pendingPlan":"1 to update"}}"#,
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    refused_by_policy(
        "the daemon changing an approval",
        &kubectl_as(
            &kubeconfig,
            &[
                "-n",
                SYSTEM,
                "patch",
                "configmap",
                &name,
                "--dry-run=server",
                "--type=merge",
                "-p",
                r#"{"data":{"approvedBy":"mallory"}}"#,
            ],
        ),
        APPROVES,
    );
    kubectl(&["-n", SYSTEM, "delete", "configmap", &name]);
}
