//! Shared test support: one real control plane per test run, a namespace per
//! test.
//!
//! The control plane is `scripts/control-plane` (etcd, kube-apiserver and a
//! kube-controller-manager built from pinned Go modules). It is started once,
//! on first use, with its own state directory under `target/tmp` and a watchdog
//! that stops it when this test process exits, however it exits. Set
//! `TENANTSYNC_TEST_KUBECONFIG` to the kubeconfig of one already running
//! (`eval "$(scripts/control-plane up)"; export TENANTSYNC_TEST_KUBECONFIG=$KUBECONFIG`)
//! to skip the start-up. If the control plane cannot start, every test using it
//! fails with the reason: cluster tests never skip.

pub mod audit;
pub mod git_servers;
pub mod repo;

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// Names a running control plane to reuse instead of starting one.
pub const KUBECONFIG_ENV: &str = "TENANTSYNC_TEST_KUBECONFIG";

/// Label put on every namespace the tests create, so leftovers on a reused
/// control plane can be found: `kubectl delete ns -l tenantsync.test/namespace`.
pub const NAMESPACE_LABEL: &str = "tenantsync.test/namespace";

/// The users `scripts/control-plane` creates, one kubeconfig context each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum User {
    /// `admin`, in `system:masters`.
    Admin,
    /// `readonly`, bound to ClusterRole `test-readonly` (get, list, watch on
    /// everything; deploy/'s `tenantsync-readonly` is narrower).
    Readonly,
}

impl User {
    pub fn context(self) -> &'static str {
        match self {
            User::Admin => "admin",
            User::Readonly => "readonly",
        }
    }
}

/// A running control plane.
#[derive(Debug)]
pub struct ControlPlane {
    kubeconfig: PathBuf,
}

impl ControlPlane {
    /// The kubeconfig with contexts `admin` (current) and `readonly`.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// Stops this control plane's kube-apiserver (SIGTERM, as a rollout or
    /// a crash would) and starts it again on the same etcd data and port
    /// (`scripts/control-plane up` restarts what died): every open watch and
    /// connection breaks. Only for a control plane of the test's own
    /// ([`bare_control_plane`]), never the shared one.
    pub fn restart_apiserver(&self) {
        let dir = self.kubeconfig.parent().expect("state dir");
        let pid = std::fs::read_to_string(dir.join("pids/kube-apiserver"))
            .expect("the apiserver's pid")
            .trim()
            .to_string();
        let killed = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        assert!(killed.success(), "kill -TERM {pid}");
        // Stopped: gone, or a zombie nobody reaps (its starter exited).
        let running = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                stat.rsplit_once(") ")
                    .is_some_and(|(_, rest)| !rest.starts_with('Z'))
            })
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while running() {
            if Instant::now() > deadline {
                let _ = Command::new("kill").args(["-KILL", &pid]).status();
            }
            assert!(
                Instant::now() < deadline + Duration::from_secs(10),
                "kube-apiserver {pid} did not stop"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let out = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/control-plane"))
            .args(["up", "--owner-pid", &std::process::id().to_string()])
            .env("TENANTSYNC_CP_DIR", dir)
            .stdin(Stdio::null())
            .output()
            .expect("control-plane up");
        assert!(
            out.status.success(),
            "restarting the apiserver: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A client for `user`'s context.
    pub async fn client(&self, user: User) -> Client {
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig).unwrap_or_else(|e| {
            panic!("cannot read kubeconfig {}: {e}", self.kubeconfig.display())
        });
        let options = KubeConfigOptions {
            context: Some(user.context().to_owned()),
            ..KubeConfigOptions::default()
        };
        let config = Config::from_custom_kubeconfig(kubeconfig, &options)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "cannot load context {} from {}: {e}",
                    user.context(),
                    self.kubeconfig.display()
                )
            });
        Client::try_from(config)
            .unwrap_or_else(|e| panic!("cannot build a client for {}: {e}", user.context()))
    }

    /// A `kubectl` command against this control plane (admin context unless
    /// the caller passes `--context`). It is the kubectl built with the
    /// control plane, same version as the server, when the cache has it.
    pub fn kubectl(&self) -> Command {
        let mut command = Command::new(kubectl_path());
        command.env("KUBECONFIG", self.kubeconfig());
        command
    }

    /// Creates a namespace with a fresh name for `test` and returns the name.
    pub async fn namespace(&self, test: &str) -> String {
        let name = unique_name(test);
        let namespaces: Api<Namespace> = Api::all(self.client(User::Admin).await);
        let namespace = serde_json::from_value(serde_json::json!({
            "metadata": { "name": name, "labels": { NAMESPACE_LABEL: "true" } }
        }))
        .expect("a namespace literal deserializes");
        namespaces
            .create(&PostParams::default(), &namespace)
            .await
            .unwrap_or_else(|e| panic!("cannot create namespace {name}: {e}"));
        name
    }
}

/// The control plane for this test run, started on first use.
///
/// Panics with the reason (including the failing component's log) if it
/// cannot start; every later call panics with the same message.
pub fn control_plane() -> &'static ControlPlane {
    static CONTROL_PLANE: OnceLock<Result<ControlPlane, String>> = OnceLock::new();
    match CONTROL_PLANE.get_or_init(|| start_or_reuse().and_then(install_crds)) {
        Ok(control_plane) => control_plane,
        Err(reason) => panic!("the test control plane is not available: {reason}"),
    }
}

fn start_or_reuse() -> Result<ControlPlane, String> {
    if let Some(kubeconfig) = std::env::var_os(KUBECONFIG_ENV) {
        let kubeconfig = PathBuf::from(kubeconfig);
        if !kubeconfig.is_file() {
            return Err(format!(
                "{KUBECONFIG_ENV}={} is not a file; unset it to start a control plane",
                kubeconfig.display()
            ));
        }
        return Ok(ControlPlane { kubeconfig });
    }
    start()
}

/// The CustomResourceDefinitions of the custom resources tenantsync
/// renders (`deploy/crds/`), as a cluster with their drivers has them.
pub const CRDS: &[(&str, &str)] = &[(
    "deploy/crds/secretproviderclasses.yaml",
    "secretproviderclasses.secrets-store.csi.x-k8s.io",
)];

/// Installs [`CRDS`] and waits until the API server serves them.
fn install_crds(cp: ControlPlane) -> Result<ControlPlane, String> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (file, name) in CRDS {
        let path = repo.join(file).to_string_lossy().into_owned();
        let crd = format!("crd/{name}");
        for args in [
            vec!["apply", "--server-side", "-f", &path],
            vec![
                "wait",
                "--for",
                "condition=Established",
                "--timeout",
                "60s",
                &crd,
            ],
        ] {
            let out = cp
                .kubectl()
                .args(&args)
                .output()
                .map_err(|e| format!("cannot run kubectl: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "kubectl {} failed: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
    }
    Ok(cp)
}

/// Runs `scripts/control-plane up` with a state directory of its own and this
/// process as the owner, so concurrent test runs never share or leak one.
fn start() -> Result<ControlPlane, String> {
    start_in(
        Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("control-plane-{}", std::process::id())),
    )
}

/// A second control plane of this run, without the CRDs [`control_plane`]
/// installs: for a test that needs a cluster lacking them (a cluster
/// shared with parallel tests cannot lose a CRD). Stopped when the test
/// process exits, like the first.
pub fn bare_control_plane(name: &str) -> ControlPlane {
    start_in(
        Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("control-plane-{}-{name}", std::process::id())),
    )
    .unwrap_or_else(|e| panic!("the bare control plane did not start: {e}"))
}

fn start_in(state_dir: PathBuf) -> Result<ControlPlane, String> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = repo.join("scripts/control-plane");
    let started = Instant::now();
    let mut child = Command::new(&script)
        .arg("up")
        .arg("--owner-pid")
        .arg(std::process::id().to_string())
        .env("TENANTSYNC_CP_DIR", &state_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;

    // Pass the script's progress through (a cold build takes many minutes)
    // and keep it for the failure message.
    let stderr = child.stderr.take().expect("stderr is piped");
    let forward = std::thread::spawn(move || {
        let mut seen = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            // io::stderr() directly, not eprintln!: the harness would hide it.
            let _ = writeln!(std::io::stderr(), "{line}");
            seen.push_str(&line);
            seen.push('\n');
        }
        seen
    });
    let output = child
        .wait_with_output()
        .map_err(|e| format!("cannot wait for {}: {e}", script.display()))?;
    let log = forward.join().unwrap_or_default();
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(format!(
            "`{} up` failed ({}) after {:.0?}:\n{log}",
            script.display(),
            output.status,
            started.elapsed()
        ));
    }
    let kubeconfig = stdout
        .lines()
        .find_map(|line| line.strip_prefix("export KUBECONFIG="))
        .map(PathBuf::from)
        .ok_or_else(|| {
            format!(
                "`{} up` printed no export line: {stdout:?}\n{log}",
                script.display()
            )
        })?;
    if !kubeconfig.is_file() {
        return Err(format!(
            "`{} up` printed {} which is not a file",
            script.display(),
            kubeconfig.display()
        ));
    }
    Ok(ControlPlane { kubeconfig })
}

/// `kubectl` from `scripts/control-plane bin-dir`, else the one on `PATH`.
fn kubectl_path() -> &'static Path {
    static KUBECTL: OnceLock<PathBuf> = OnceLock::new();
    KUBECTL.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/control-plane");
        Command::new(script)
            .arg("bin-dir")
            .stderr(Stdio::inherit())
            .output()
            .ok()
            .filter(|output| output.status.success())
            .map(|output| {
                PathBuf::from(String::from_utf8_lossy(&output.stdout).trim()).join("kubectl")
            })
            .filter(|kubectl| kubectl.is_file())
            .unwrap_or_else(|| PathBuf::from("kubectl"))
    })
}

/// A Kubernetes name (DNS label) unique to this run: `ts-<test>-<random>`.
pub fn unique_name(test: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.write_u32(std::process::id());
    let slug: String = test
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    let slug = slug.trim_matches('-');
    format!("ts-{slug}-{:08x}", hasher.finish() as u32)
}

/// Polls `check` every 200 ms until it returns `Some`, panicking with `what`
/// after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `Kind/namespace/name` of every live object labelled for `env`, of the
/// kinds tenantsync renders (a namespace being deleted is not live).
pub fn live_labelled(env: &str) -> std::collections::BTreeSet<String> {
    live_versions(env).into_keys().collect()
}

/// `Kind/namespace/name` → `resourceVersion` of every live object labelled
/// for `env`, of the kinds tenantsync renders (a namespace being deleted is
/// not live). Any write to an object changes its `resourceVersion`.
pub fn live_versions(env: &str) -> std::collections::BTreeMap<String, String> {
    let out = control_plane()
        .kubectl()
        .args([
            "--context",
            "admin",
            "get",
            "namespaces,serviceaccounts,configmaps,services,deployments,poddisruptionbudgets,ingresses,networkpolicies",
            "-A",
            "-o",
            "json",
            "-l",
        ])
        .arg(format!("tenantsync.io/environment={env}"))
        .output()
        .expect("kubectl");
    assert!(
        out.status.success(),
        "kubectl get: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("list JSON");
    let items = list["items"].as_array().expect("items");
    // The contents of a namespace being deleted go with it: the namespace
    // controller deletes them in its own time (slowly on a loaded machine),
    // so they are not live either.
    let terminating: std::collections::BTreeSet<&str> = items
        .iter()
        .filter(|o| o["kind"] == "Namespace" && !o["metadata"]["deletionTimestamp"].is_null())
        .filter_map(|o| o["metadata"]["name"].as_str())
        .collect();
    items
        .iter()
        .filter(|o| o["metadata"]["deletionTimestamp"].is_null())
        .filter(|o| {
            o["metadata"]["namespace"]
                .as_str()
                .is_none_or(|ns| !terminating.contains(ns))
        })
        .map(|o| {
            let kind = o["kind"].as_str().unwrap_or_default();
            let name = o["metadata"]["name"].as_str().unwrap_or_default();
            let id = match o["metadata"]["namespace"].as_str() {
                Some(ns) => format!("{kind}/{ns}/{name}"),
                None => format!("{kind}/{name}"),
            };
            let version = o["metadata"]["resourceVersion"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            (id, version)
        })
        .collect()
}

/// What the inventory of `env` records (its objects, revision and time of
/// the last change: `data` and `binaryData` without the `status.*` fields
/// the daemon rewrites after every reconcile), and its `resourceVersion`.
pub async fn inventory_record(env: &str) -> (serde_json::Value, String) {
    use k8s_openapi::api::core::v1::ConfigMap;
    let api: Api<ConfigMap> = Api::namespaced(
        control_plane().client(User::Admin).await,
        tenantsync::sync::inventory::SYSTEM_NAMESPACE,
    );
    let cm = api
        .get(&tenantsync::sync::inventory::name_of(env))
        .await
        .expect("inventory");
    let data: std::collections::BTreeMap<String, String> = cm
        .data
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| !k.starts_with("status."))
        .collect();
    let record = serde_json::json!({
        "data": data,
        "binaryData": serde_json::to_value(cm.binary_data).expect("binaryData"),
    });
    (record, cm.metadata.resource_version.unwrap_or_default())
}

/// Whether golden files are to be regenerated: only when
/// `TENANTSYNC_UPDATE_GOLDEN` is exactly `1` (README). `0`, an empty value or
/// anything else compares, so that a stray variable never rewrites them.
pub fn update_golden() -> bool {
    update_golden_from(std::env::var_os("TENANTSYNC_UPDATE_GOLDEN").as_deref())
}

pub fn update_golden_from(value: Option<&std::ffi::OsStr>) -> bool {
    value.is_some_and(|v| v == "1")
}

/// Runs `git` in `dir` with a fixed identity; panics with its stderr on failure.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@example.com",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
