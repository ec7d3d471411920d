//! `deploy/` on the real control plane: the manifests apply server-side, a
//! token of the daemon's ServiceAccount (minted with the TokenRequest API)
//! is enough for `tenantsync run` to sync, prune, record Events and elect a
//! leader, and a token of the read-only one plans and reports drift but is
//! refused a sync, naming the verb it lacks.
//!
//! The deploy is applied once per run and shared (cluster-scoped names are
//! fixed by the manifests); each test has its own environment, and the
//! daemon its own Lease, so nothing collides with the other tests.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Namespace};
use kube::api::{Api, ListParams};
use serde_json::{Value, json};

use crate::daemon_e2e::{Guard, free_port, http, status, wait_for};
use crate::support::audit;
use crate::support::repo::TestRepo;
use crate::support::{User, control_plane, git, unique_name};

const SYSTEM: &str = tenantsync::sync::inventory::SYSTEM_NAMESPACE;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub(crate) fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs kubectl as the control plane's admin; panics with its output unless
/// it succeeds.
pub(crate) fn kubectl(args: &[&str]) -> String {
    let out = control_plane()
        .kubectl()
        .args(["--context", "admin"])
        .args(args)
        .output()
        .expect("run kubectl");
    assert!(
        out.status.success(),
        "kubectl {args:?} failed:\n{}",
        text(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `kubectl apply --server-side -k deploy`, first as a server-side dry run,
/// once per test run. Returns the dry run's output.
pub(crate) fn deployed() -> &'static str {
    static DEPLOYED: OnceLock<String> = OnceLock::new();
    DEPLOYED.get_or_init(|| {
        let deploy = root().join("deploy");
        let deploy = deploy.to_str().expect("UTF-8 path");
        // Namespaced objects cannot be dry-run into a namespace that does
        // not exist yet: the Namespace goes first, for real.
        kubectl(&[
            "apply",
            "--server-side",
            "-f",
            &format!("{deploy}/namespace.yaml"),
        ]);
        let dry_run = kubectl(&["apply", "--server-side", "--dry-run=server", "-k", deploy]);
        kubectl(&["apply", "--server-side", "-k", deploy]);
        wait_for_admission_policy();
        dry_run
    })
}

/// Waits (up to 60 s) until the API server enforces the admission policy
/// just applied: it loads a ValidatingAdmissionPolicy and its binding a
/// moment after they are stored, and a test writing as the daemon before
/// then was let through (the policy tests failed when they ran first).
fn wait_for_admission_policy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = service_account_kubeconfig("tenantsync", dir.path());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // A write the policy refuses the daemon (never into `default`),
        // which its ClusterRole allows: refused by the policy once loaded.
        let out = control_plane()
            .kubectl()
            .env("KUBECONFIG", &kubeconfig)
            .args([
                "-n",
                "default",
                "create",
                "configmap",
                "admission-policy-probe",
                "--dry-run=server",
            ])
            .output()
            .expect("run kubectl");
        if !out.status.success() && text(&out).contains("tenantsync-writes") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the admission policy tenantsync-writes is not enforced 60 s after it was applied: {}",
            text(&out)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A kubeconfig holding only a fresh TokenRequest token of `service_account`
/// in tenantsync-system, for the control plane's server and CA.
pub(crate) fn service_account_kubeconfig(service_account: &str, dir: &Path) -> PathBuf {
    let token = kubectl(&[
        "-n",
        SYSTEM,
        "create",
        "token",
        service_account,
        "--duration=1h",
    ]);
    let admin = kube::config::Kubeconfig::read_from(control_plane().kubeconfig())
        .expect("read the test kubeconfig");
    let cluster = admin
        .clusters
        .first()
        .and_then(|c| c.cluster.clone())
        .expect("a cluster in the test kubeconfig");
    // JSON is YAML: kube and kubectl read it as a kubeconfig.
    let kubeconfig = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "cluster", "cluster": cluster}],
        "users": [{"name": service_account, "user": {"token": token.trim()}}],
        "contexts": [{"name": service_account, "context": {"cluster": "cluster", "user": service_account}}],
        "current-context": service_account,
    });
    let path = dir.join(format!("{service_account}.kubeconfig"));
    std::fs::write(&path, kubeconfig.to_string()).expect("write kubeconfig");
    path
}

/// tenantsync with only the given kubeconfig (no ambient KUBECONFIG).
pub(crate) fn tenantsync(kubeconfig: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tenantsync"));
    command
        .env_remove("KUBECONFIG")
        .env_remove("TENANTSYNC_KUBECONFIG")
        .env("TENANTSYNC_KUBECONFIG", kubeconfig);
    command
}

/// Waits for the daemon's status of `env` to satisfy `check`; on timeout
/// panics with the last status and the daemon's log.
async fn wait_status(
    what: &str,
    port: u16,
    env: &str,
    log: &Path,
    timeout: Duration,
    check: impl Fn(&Value) -> bool,
) {
    let start = Instant::now();
    loop {
        let last = status(port, env).await;
        if last.as_ref().is_some_and(&check) {
            return;
        }
        if start.elapsed() > timeout {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            panic!(
                "timed out after {timeout:?} waiting for {what}; status: {last:?}\nend of the daemon's log:\n{}",
                lines[lines.len().saturating_sub(20)..].join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn commit(repo: &TestRepo, message: &str) -> String {
    git(repo.path(), &["add", "-A"]);
    git(repo.path(), &["commit", "-qm", message]);
    git(repo.path(), &["rev-parse", "HEAD"])
}

#[test]
fn deploy_manifests_pass_a_server_side_dry_run_and_apply() {
    let dry_run = deployed();
    for object in [
        "namespace/tenantsync-system",
        "serviceaccount/tenantsync ",
        "serviceaccount/tenantsync-readonly",
        "clusterrole.rbac.authorization.k8s.io/tenantsync ",
        "clusterrole.rbac.authorization.k8s.io/tenantsync-readonly",
        "clusterrolebinding.rbac.authorization.k8s.io/tenantsync ",
        "role.rbac.authorization.k8s.io/tenantsync ",
        "rolebinding.rbac.authorization.k8s.io/tenantsync ",
        "deployment.apps/tenantsync ",
        "service/tenantsync ",
        "networkpolicy.networking.k8s.io/tenantsync ",
        "configmap/tenantsync-config-",
    ] {
        assert!(
            dry_run.contains(object),
            "{object} missing from the dry run:\n{dry_run}"
        );
    }
    assert!(dry_run.contains("(server dry run)"), "{dry_run}");
    // Applied for real: the Deployment as written, its ConfigMap the
    // generated one, holding a configuration the daemon accepts.
    let deployment: Value = serde_json::from_str(&kubectl(&[
        "-n",
        SYSTEM,
        "get",
        "deployment/tenantsync",
        "-o",
        "json",
    ]))
    .expect("JSON");
    let spec = &deployment["spec"]["template"]["spec"];
    assert_eq!(deployment["spec"]["replicas"], 2);
    assert_eq!(spec["serviceAccountName"], "tenantsync");
    let container = &spec["containers"][0];
    assert!(
        container["args"]
            .as_array()
            .expect("args")
            .contains(&json!("--leader-elect"))
            && container["args"]
                .as_array()
                .expect("args")
                .contains(&json!("--shard")),
        "{container}"
    );
    // What README's table promises of the Deployment, as the API server
    // holds it: probes, resources, and a locked-down container.
    assert_eq!(
        (
            &container["livenessProbe"]["httpGet"]["path"],
            &container["livenessProbe"]["httpGet"]["port"]
        ),
        (&json!("/healthz"), &json!("http"))
    );
    assert_eq!(
        (
            &container["readinessProbe"]["httpGet"]["path"],
            &container["readinessProbe"]["httpGet"]["port"]
        ),
        (&json!("/readyz"), &json!("http"))
    );
    assert!(
        container["ports"]
            .as_array()
            .expect("ports")
            .contains(&json!({"name": "http", "containerPort": 8080, "protocol": "TCP"})),
        "{container}"
    );
    assert_eq!(
        container["resources"],
        json!({"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}})
    );
    let security = &container["securityContext"];
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["capabilities"], json!({"drop": ["ALL"]}));
    assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
    assert_eq!(spec["securityContext"]["runAsUser"], 65532);
    assert_eq!(
        spec["securityContext"]["seccompProfile"],
        json!({"type": "RuntimeDefault"})
    );
    // The Git cache and /tmp are emptyDir volumes (the root file system
    // is read-only), the cache where XDG_CACHE_HOME points.
    let volumes = spec["volumes"].as_array().expect("volumes");
    let mounts = container["volumeMounts"].as_array().expect("mounts");
    for path in ["/var/cache/tenantsync", "/tmp"] {
        let mount = mounts
            .iter()
            .find(|m| m["mountPath"] == path)
            .unwrap_or_else(|| panic!("nothing mounted at {path}"));
        assert!(
            volumes
                .iter()
                .any(|v| v["name"] == mount["name"] && v["emptyDir"].is_object()),
            "{path} is not an emptyDir"
        );
    }
    assert!(
        container["env"]
            .as_array()
            .expect("env")
            .contains(&json!({"name": "XDG_CACHE_HOME", "value": "/var/cache/tenantsync"})),
        "{container}"
    );
    let config_map = spec["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find_map(|v| v["configMap"]["name"].as_str())
        .expect("a ConfigMap volume");
    assert!(config_map.starts_with("tenantsync-config-"), "{config_map}");
    let data: Value = serde_json::from_str(&kubectl(&[
        "-n",
        SYSTEM,
        "get",
        "configmap",
        config_map,
        "-o",
        "json",
    ]))
    .expect("JSON");
    let file = data["data"]["tenantsync.yaml"].as_str().expect("the file");
    let config = tenantsync::daemon::config::parse("tenantsync.yaml", file.as_bytes())
        .unwrap_or_else(|e| panic!("the shipped configuration is refused: {e:?}"));
    assert_eq!(config.listen.as_deref(), Some("0.0.0.0:8080"));
    assert_eq!(config.webhook_listen.as_deref(), Some("0.0.0.0:8081"));
}

/// The NetworkPolicy the API server accepted selects the daemon's pods and
/// opens exactly the webhook port to one namespace and the metrics port to
/// another; the Service routes each port to the container port of that
/// name. (The test control plane enforces no NetworkPolicy: only what it
/// selects is checked here.)
#[test]
fn deploy_network_policy_selects_the_daemon_and_opens_its_two_ports_apart() {
    deployed();
    let get = |what: &str| -> Value {
        serde_json::from_str(&kubectl(&["-n", SYSTEM, "get", what, "-o", "json"])).expect("JSON")
    };
    let deployment = get("deployment/tenantsync");
    let template = &deployment["spec"]["template"];
    let pod_labels = template["metadata"]["labels"]
        .as_object()
        .expect("pod labels");
    let container_ports: Vec<(String, i64)> = template["spec"]["containers"][0]["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .map(|p| {
            (
                p["name"].as_str().expect("a named port").to_string(),
                p["containerPort"].as_i64().expect("a port number"),
            )
        })
        .collect();
    assert_eq!(
        container_ports,
        [("http".to_string(), 8080), ("webhook".to_string(), 8081)]
    );

    let policy = get("networkpolicy/tenantsync");
    let selector = policy["spec"]["podSelector"]["matchLabels"]
        .as_object()
        .expect("a podSelector by labels");
    assert!(!selector.is_empty());
    for (k, v) in selector {
        assert_eq!(pod_labels.get(k), Some(v), "podSelector {k}={v}");
    }
    assert_eq!(policy["spec"]["policyTypes"], json!(["Ingress"]));
    let rules = policy["spec"]["ingress"].as_array().expect("ingress rules");
    let opened: Vec<(String, String)> = rules
        .iter()
        .flat_map(|r| {
            let from =
                r["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                    .as_str()
                    .expect("a namespace selector by name")
                    .to_string();
            r["ports"]
                .as_array()
                .expect("ports")
                .iter()
                .map(move |p| {
                    (
                        from.clone(),
                        p["port"].as_str().expect("a port name").to_string(),
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(
        opened,
        [
            ("ingress-nginx".to_string(), "webhook".to_string()),
            ("monitoring".to_string(), "http".to_string())
        ]
    );

    let service = get("service/tenantsync");
    let routed: Vec<(String, String)> = service["spec"]["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .map(|p| {
            (
                p["name"].as_str().expect("name").to_string(),
                p["targetPort"]
                    .as_str()
                    .expect("a named target")
                    .to_string(),
            )
        })
        .collect();
    assert_eq!(
        routed,
        [
            ("http".to_string(), "http".to_string()),
            ("webhook".to_string(), "webhook".to_string())
        ]
    );
}

#[tokio::test]
async fn deploy_service_account_is_enough_for_the_daemon_to_sync_prune_and_report() {
    deployed();
    let dir = tempfile::tempdir().expect("tempdir");
    // A token of its own: the API server's audit log shows what this
    // daemon asked, to hold deploy/rbac.yaml to it.
    let caller = audit::token_identity(SYSTEM, "tenantsync", dir.path());
    let from = audit::cursor();
    let kubeconfig = caller.kubeconfig.clone();
    let repo = TestRepo::new("deploy-daemon");
    let env = repo.env.clone();
    // Autoscaled from two replicas, with Key Vault: the workspace removed
    // below has objects of every kind tenantsync renders, a
    // PodDisruptionBudget, a HorizontalPodAutoscaler and a
    // SecretProviderClass included (deploy/rbac.yaml once lacked the last
    // two: a deployed daemon was refused them).
    repo.write(
        "environment.yaml",
        &format!(
            "apiVersion: tenantsync.io/v1alpha1\nkind: Environment\nmetadata:\n  name: {env}\nspec:\n  base: base\n  ingress:\n    domain: test.example.com\n  keyVault:\n    vaultName: kv-deploy-test\n    tenantId: 72f988bf-86f1-41af-91ab-2d7cd011db47\n    clientId: 0d7c4e1a-5b2f-4c8e-9a31-6e2f8b4d7c10\n"
        ),
    );
    repo.write(
        "workspaces/woodgrove.yaml",
        "apiVersion: tenantsync.io/v1alpha1\nkind: WorkspacePatch\nmetadata: {name: woodgrove}\nspec:\n  fhirServices:\n    - name: api\n      autoscaling: { minReplicas: 2, maxReplicas: 4 }\n      keyVault:\n        secrets:\n          - { objectName: woodgrove-sql, env: SqlServer__ConnectionString }\n",
    );
    git(repo.path(), &["init", "-q"]);
    let first = commit(&repo, "initial");
    let port = free_port();
    let lease_name = unique_name("deploy-lease");
    let log = dir.path().join("daemon.log");
    // The shipped configuration file, with this test's repository,
    // environment, address and Lease; pruning as a removed workspace needs.
    let daemon = tenantsync(&kubeconfig)
        .arg("run")
        .arg("--config")
        .arg(root().join("deploy/tenantsync.yaml"))
        .arg("--repo")
        .arg(repo.path())
        .args([
            "--env",
            &env,
            "--leader-elect",
            "--shard",
            "--lease-name",
            &lease_name,
        ])
        .args(["--interval", "1s", "--drift-interval", "2s"])
        .args(["--prune", "--allow-mass-prune"])
        .arg(format!("--listen=127.0.0.1:{port}"))
        .arg(format!("--webhook-listen=127.0.0.1:{}", free_port()))
        .env("XDG_CACHE_HOME", dir.path().join("cache"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("tenantsync run");
    let mut daemon = Guard(daemon);
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();

    // 1. It holds the environment (sharded as deploy/deployment.yaml is:
    //    a Lease of its own) and applies the first revision.
    wait_status(
        "the daemon to lead and apply the first revision",
        port,
        &env,
        &log,
        Duration::from_secs(60),
        |s| s["lastAppliedRevision"] == first.as_str() && s["syncStatus"] == "Synced",
    )
    .await;
    let ready = http(port, "GET", "/readyz", &[], "").await.expect("readyz");
    assert!(
        ready.starts_with("HTTP/1.1 200") && ready.ends_with(&format!("\nready\nowns: {env}\n")),
        "{ready}"
    );
    let all = http(port, "GET", "/status", &[], "").await.expect("status");
    let all: Value = serde_json::from_str(&all).expect("JSON");
    assert_eq!(all["leader"], true, "{all}");
    assert_eq!(all["owns"], json!([env]), "{all}");
    let leases: Api<Lease> = Api::namespaced(control_plane().client(User::Admin).await, SYSTEM);
    let env_lease = tenantsync::sync::shard::environment_lease(&lease_name, &env);
    let identity = all["identity"].as_str().expect("identity").to_string();
    let member_lease = tenantsync::sync::shard::member_lease(&lease_name, &identity);
    for name in [&env_lease, &member_lease] {
        let lease = leases.get(name).await.expect("the Lease");
        assert_eq!(
            lease.spec.and_then(|s| s.holder_identity).as_deref(),
            Some(identity.as_str()),
            "{name}"
        );
    }
    let deployments: Api<Deployment> = Api::namespaced(
        control_plane().client(User::Admin).await,
        &repo.namespace("contoso"),
    );
    assert!(
        deployments
            .get_opt("fhir-main")
            .await
            .expect("get")
            .is_some()
    );
    // The status the daemon publishes onto the inventory got there too.
    let inventories: Api<ConfigMap> =
        Api::namespaced(control_plane().client(User::Admin).await, SYSTEM);
    let inventory_name = tenantsync::sync::inventory::name_of(&env);
    wait_for(
        "the status on the inventory",
        Duration::from_secs(10),
        async || {
            inventories
                .get_opt(&inventory_name)
                .await
                .ok()
                .flatten()
                .and_then(|cm| cm.data)
                .is_some_and(|d| d.get("status.syncStatus").map(String::as_str) == Some("Synced"))
        },
    )
    .await;

    // 2. A commit removing a workspace: pruned, its namespace included.
    repo.write(
        "workspaces/woodgrove.yaml",
        "apiVersion: tenantsync.io/v1alpha1\nkind: WorkspacePatch\nmetadata: {name: woodgrove}\n$patch: delete\n",
    );
    let second = commit(&repo, "offboard woodgrove");
    wait_status(
        "the removal to be applied",
        port,
        &env,
        &log,
        Duration::from_secs(30),
        |s| s["lastAppliedRevision"] == second.as_str() && s["syncStatus"] == "Synced",
    )
    .await;
    let namespaces: Api<Namespace> = Api::all(control_plane().client(User::Admin).await);
    let woodgrove = namespaces
        .get_opt(&repo.namespace("woodgrove"))
        .await
        .expect("get");
    assert!(
        woodgrove.is_none_or(|ns| ns.metadata.deletion_timestamp.is_some()),
        "the removed workspace's namespace was not deleted"
    );
    let inventory = tenantsync::sync::inventory::Inventory::from_config_map(
        &inventories.get(&inventory_name).await.expect("inventory"),
    )
    .expect("inventory");
    let gone = repo.namespace("woodgrove");
    assert!(
        inventory.objects.iter().all(|o| !o.id().contains(&gone)),
        "{:?}",
        inventory.objects
    );
    assert!(
        inventory
            .objects
            .iter()
            .any(|o| o.id().contains(&repo.namespace("contoso")))
    );

    // 3. An invalid commit: refused, with a Warning Event.
    repo.write(
        // A manifest whose name cannot be read: the whole revision is
        // invalid (a broken workspace file would hold only its workspace).
        "resources/broken.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: 7}\n",
    );
    let broken = commit(&repo, "broken");
    wait_status(
        "the invalid revision to be reported",
        port,
        &env,
        &log,
        Duration::from_secs(30),
        |s| s["syncStatus"] == "Failed" && s["lastSeenRevision"] == broken.as_str(),
    )
    .await;
    // The Event is recorded before the status says Failed.
    let events: Api<Event> = Api::namespaced(control_plane().client(User::Admin).await, SYSTEM);
    let event = events
        .list(&ListParams::default().fields(&format!("involvedObject.name={inventory_name}")))
        .await
        .expect("list Events")
        .items
        .into_iter()
        .find(|e| e.reason.as_deref() == Some("InvalidRevision"))
        .unwrap_or_else(|| panic!("no InvalidRevision Event\n{}", log_text()));
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert!(
        event
            .message
            .as_deref()
            .is_some_and(|m| m.contains(&broken) && m.contains("resources/broken.yaml")),
        "{:?}",
        event.message
    );

    // 4. SIGTERM: a clean exit that releases the Lease. Nothing was refused
    //    along the way.
    let code = daemon.terminate().await;
    assert!(code.success(), "{code}\n{}", log_text());
    let lease = leases.get(&env_lease).await.expect("the Lease");
    assert_eq!(
        lease.spec.and_then(|s| s.holder_identity),
        None,
        "the environment's Lease was not released"
    );
    assert!(
        leases.get_opt(&member_lease).await.expect("get").is_none(),
        "the member Lease was not removed"
    );
    let log = log_text();
    // The shipped configuration's logFormat: json, one object per line.
    for line in log.lines() {
        assert!(
            serde_json::from_str::<Value>(line).is_ok_and(|v| v["level"].is_string()),
            "not a JSON log line: {line}"
        );
    }
    for refusal in ["forbidden", "permission denied", "cannot write status"] {
        assert!(
            !log.to_lowercase().contains(refusal),
            "the daemon was refused something:\n{log}"
        );
    }

    // 5. deploy/rbac.yaml is minimal, not only sufficient: every verb it
    //    grants on every resource, the daemon used in this run (a
    //    server-side apply that created an object, answered 201, used
    //    `create` too). Nothing it asked was refused, but for the look
    //    into the removed workspace's namespace before deleting it, which
    //    tries every kind the API server serves (those it may not list are
    //    reported as not checked).
    let requests: Vec<audit::Request> = caller
        .requests_since(&from)
        .into_iter()
        .filter(|r| r.user_agent.starts_with("tenantsync/"))
        .collect();
    let refused: Vec<&audit::Request> = requests
        .iter()
        .filter(|r| r.code == 403)
        .filter(|r| !(r.verb == "list" && r.namespace == gone))
        .collect();
    assert!(refused.is_empty(), "{refused:#?}");
    let mut used: std::collections::BTreeSet<(bool, String, String, String)> =
        std::collections::BTreeSet::new();
    for r in &requests {
        let in_system = r.namespace == SYSTEM;
        let mut verbs = vec![r.verb.clone()];
        if r.verb == "patch" && r.code == 201 {
            verbs.push("create".into());
        }
        for verb in verbs {
            used.insert((in_system, r.group.clone(), r.resource.clone(), verb));
        }
    }
    let rbac = std::fs::read_to_string(root().join("deploy/rbac.yaml")).expect("rbac.yaml");
    let mut unused = Vec::new();
    for doc in serde_norway::Deserializer::from_str(&rbac) {
        let doc: Value = serde::Deserialize::deserialize(doc).expect("a YAML document");
        let cluster_wide = match doc["kind"].as_str() {
            Some("ClusterRole") => true,
            Some("Role") => false,
            _ => continue,
        };
        for rule in doc["rules"].as_array().expect("rules") {
            for group in rule["apiGroups"].as_array().expect("apiGroups") {
                for resource in rule["resources"].as_array().expect("resources") {
                    for verb in rule["verbs"].as_array().expect("verbs") {
                        let (group, resource, verb) = (
                            group.as_str().unwrap_or_default().to_string(),
                            resource.as_str().unwrap_or_default().to_string(),
                            verb.as_str().unwrap_or_default().to_string(),
                        );
                        // A cluster-wide grant is used by a request in any
                        // namespace; the Role's only in tenantsync-system.
                        let hit = used.iter().any(|(in_system, g, r, v)| {
                            (cluster_wide || *in_system)
                                && *g == group
                                && *r == resource
                                && *v == verb
                        });
                        if !hit {
                            unused.push(format!(
                                "{} {verb} {resource}.{group}",
                                doc["kind"].as_str().unwrap_or_default()
                            ));
                        }
                    }
                }
            }
        }
    }
    assert!(
        unused.is_empty(),
        "deploy/rbac.yaml grants what the daemon never used: {unused:?}\nused: {used:#?}"
    );
}

#[tokio::test]
async fn deploy_readonly_role_plans_and_drifts_but_sync_is_refused_naming_the_verb() {
    deployed();
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = service_account_kubeconfig("tenantsync-readonly", dir.path());
    let repo = TestRepo::new("deploy-readonly");
    repo.apply_rendered().await;
    // Drift made by hand.
    let ns = repo.namespace("contoso");
    kubectl(&["-n", &ns, "scale", "deployment/fhir-main", "--replicas=5"]);
    let run = |verb: &str, extra: &[&str]| {
        tenantsync(&kubeconfig)
            .args([verb, "--env", &repo.env, "--repo"])
            .arg(repo.path())
            .args(extra)
            .output()
            .expect("run tenantsync")
    };

    let plan = run("plan", &["--output", "json", "--detailed-exitcode"]);
    assert_eq!(plan.status.code(), Some(2), "{}", text(&plan));
    let plan: Value = serde_json::from_slice(&plan.stdout).expect("plan JSON");
    assert_eq!(plan["summary"]["update"], 1, "{plan}");
    let change = plan["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .find(|c| c["action"] == "update")
        .expect("the update");
    assert_eq!(change["name"], "fhir-main");
    assert_eq!(change["fields"][0]["path"], "spec.replicas", "{change}");

    let drift = run("drift", &["--detailed-exitcode"]);
    assert_eq!(drift.status.code(), Some(2), "{}", text(&drift));
    assert!(
        text(&drift).contains("Drift: 1 modified, 0 missing, 0 orphaned"),
        "{}",
        text(&drift)
    );
    let shown = tenantsync(&kubeconfig)
        .args(["status", "--env", &repo.env])
        .output()
        .expect("tenantsync status");
    assert_eq!(shown.status.code(), Some(0), "{}", text(&shown));

    // sync: refused at its first write (taking the environment's lock),
    // saying which verb is missing.
    let inventories: Api<ConfigMap> =
        Api::namespaced(control_plane().client(User::Admin).await, SYSTEM);
    let inventory_name = tenantsync::sync::inventory::name_of(&repo.env);
    let before = inventories
        .get(&inventory_name)
        .await
        .expect("inventory")
        .metadata
        .resource_version;
    let sync = run("sync", &["--prune"]);
    let out = text(&sync);
    assert_eq!(sync.status.code(), Some(1), "{out}");
    assert!(
        out.contains("permission denied by https://")
            && out.contains("cannot take the lock (Lease) leases tenantsync-sync-")
            && out.contains("cannot get resource \"leases\""),
        "{out}"
    );
    assert!(
        out.contains("system:serviceaccount:tenantsync-system:tenantsync-readonly"),
        "{out}"
    );
    // Nothing was written.
    let deployments: Api<Deployment> =
        Api::namespaced(control_plane().client(User::Admin).await, &ns);
    let replicas = deployments
        .get("fhir-main")
        .await
        .expect("get")
        .spec
        .and_then(|s| s.replicas);
    assert_eq!(replicas, Some(5));
    let after = inventories
        .get(&inventory_name)
        .await
        .expect("inventory")
        .metadata
        .resource_version;
    assert_eq!(before, after, "the inventory was written");
}
