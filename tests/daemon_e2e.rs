//! `tenantsync run` end to end: a real Git remote on loopback (`git daemon`),
//! the real control plane, and the daemon's HTTP endpoints.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::Api;
use serde_json::Value;

use crate::support::repo::TestRepo;
use crate::support::{User, control_plane, git};

const SECRET: &str = "webhook-secret-for-tests";

pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A child process killed when the test ends, however it ends.
pub(crate) struct Guard(pub(crate) Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Guard {
    /// SIGTERM, then the exit status (which must come within 15 s).
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        assert!(
            Command::new("kill")
                .args(["-TERM", &self.0.id().to_string()])
                .status()
                .expect("kill")
                .success()
        );
        let start = Instant::now();
        loop {
            if let Some(code) = self.0.try_wait().expect("wait") {
                return code;
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "no exit within 15 s of SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn git_daemon(base: &Path, port: u16) -> Guard {
    // git-daemon itself, not the `git daemon` wrapper, so that killing it
    // really takes the remote away.
    let exec_path = git(base, &["--exec-path"]);
    let child = Command::new(Path::new(&exec_path).join("git-daemon"))
        .args([
            "--reuseaddr",
            "--export-all",
            "--enable=receive-pack",
            "--listen=127.0.0.1",
        ])
        .arg(format!("--port={port}"))
        .arg(format!("--base-path={}", base.display()))
        .arg(base)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("git daemon");
    // Wait until it accepts connections.
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "git daemon did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Guard(child)
}

pub(crate) async fn status(port: u16, env: &str) -> Option<Value> {
    let text = http(port, "GET", "/status", &[], "").await?;
    let v: Value = serde_json::from_str(&text).ok()?;
    Some(v["environments"][env].clone())
}

/// A tiny HTTP/1.1 client over TCP, enough for the daemon's endpoints.
pub(crate) async fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    stream.write_all(req.as_bytes()).await.ok()?;
    let mut out = String::new();
    stream.read_to_string(&mut out).await.ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    let status_line = head.lines().next()?.to_string();
    Some(if path == "/status" || path == "/metrics" {
        body.to_string()
    } else {
        format!("{status_line}\n{body}")
    })
}

pub(crate) async fn wait_for(
    what: &str,
    timeout: Duration,
    mut check: impl AsyncFnMut() -> bool,
) -> Duration {
    let start = Instant::now();
    loop {
        if check().await {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_daemon_follows_a_git_remote_heals_drift_and_survives_bad_commits_and_outages() {
    let repo = TestRepo::new("run-e2e");
    let env = repo.env.clone();
    let served = tempfile::tempdir().expect("tempdir");
    let cache = tempfile::tempdir().expect("tempdir");
    // The work tree is the test repo; the remote is a bare clone served by git daemon.
    git(repo.path(), &["init", "-q"]);
    git(repo.path(), &["add", "-A"]);
    git(repo.path(), &["commit", "-qm", "initial"]);
    let first = git(repo.path(), &["rev-parse", "HEAD"]);
    let bare = served.path().join("tenants.git");
    git(
        served.path(),
        &[
            "clone",
            "-q",
            "--bare",
            &repo.path().display().to_string(),
            &bare.display().to_string(),
        ],
    );
    let git_port = free_port();
    let mut remote = Some(git_daemon(served.path(), git_port));
    let url = format!("git://127.0.0.1:{git_port}/tenants.git");
    git(repo.path(), &["remote", "add", "origin", &url]);

    let http_port = free_port();
    let daemon = Command::new(env!("CARGO_BIN_EXE_tenantsync"))
        .args(["run", "--repo", &url, "--branch", "main", "--env", &env])
        .args([
            "--interval",
            "2s",
            "--drift-interval",
            "1s",
            "--self-heal",
            "--prune",
        ])
        .arg(format!("--listen=127.0.0.1:{http_port}"))
        .arg("--kubeconfig")
        .arg(control_plane().kubeconfig())
        .args(["--context", "admin"])
        .env("XDG_CACHE_HOME", cache.path())
        .env("TENANTSYNC_WEBHOOK_SECRET", SECRET)
        .stdout(Stdio::null())
        // Logs to a file: an unread pipe would fill up and block the daemon.
        .stderr(std::fs::File::create(cache.path().join("daemon.log")).expect("log file"))
        .spawn()
        .expect("tenantsync run");
    let mut daemon = Guard(daemon);

    // 1. The first revision is applied.
    wait_for(
        "the first revision to be applied",
        Duration::from_secs(60),
        async || {
            status(http_port, &env).await.is_some_and(|s| {
                s["lastAppliedRevision"] == first.as_str() && s["syncStatus"] == "Synced"
            })
        },
    )
    .await;
    let ready = http(http_port, "GET", "/readyz", &[], "")
        .await
        .expect("readyz");
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");

    // 2. A pushed commit onboarding a workspace, announced by a webhook, is
    //    applied at once (the poll interval is 2 s; the webhook is faster).
    repo.write(
        "workspaces/acme.yaml",
        "apiVersion: tenantsync.io/v1alpha1\nkind: Workspace\nmetadata: {name: acme}\nspec:\n  fhirServices:\n    - name: api\n",
    );
    git(repo.path(), &["add", "-A"]);
    git(repo.path(), &["commit", "-qm", "onboard acme"]);
    let second = git(repo.path(), &["rev-parse", "HEAD"]);
    git(repo.path(), &["push", "-q", "origin", "HEAD:main"]);
    let rejected = http(
        http_port,
        "POST",
        "/hooks/git",
        &[("X-Gitlab-Token", "wrong")],
        "{}",
    )
    .await
    .expect("hook");
    assert!(rejected.starts_with("HTTP/1.1 401"), "{rejected}");
    let accepted = http(
        http_port,
        "POST",
        "/hooks/git",
        &[("X-Gitlab-Token", SECRET)],
        "{}",
    )
    .await
    .expect("hook");
    assert!(accepted.starts_with("HTTP/1.1 202"), "{accepted}");
    let took = wait_for(
        "the pushed commit to be applied",
        Duration::from_secs(10),
        async || {
            status(http_port, &env)
                .await
                .is_some_and(|s| s["lastAppliedRevision"] == second.as_str())
        },
    )
    .await;
    assert!(
        took < Duration::from_secs(2),
        "webhook to applied took {took:?}"
    );
    let namespaces: Api<Namespace> = Api::all(control_plane().client(User::Admin).await);
    assert!(
        namespaces
            .get_opt(&repo.namespace("acme"))
            .await
            .expect("get")
            .is_some()
    );

    // 3. Out-of-band scaling is healed.
    let deployments: Api<Deployment> = Api::namespaced(
        control_plane().client(User::Admin).await,
        &repo.namespace("acme"),
    );
    let scale = control_plane()
        .kubectl()
        .args([
            "--context",
            "admin",
            "-n",
            &repo.namespace("acme"),
            "scale",
            "deployment/fhir-api",
            "--replicas=4",
        ])
        .output()
        .expect("kubectl");
    assert!(scale.status.success());
    wait_for(
        "self-heal to restore the replicas",
        Duration::from_secs(15),
        async || {
            deployments
                .get("fhir-api")
                .await
                .ok()
                .and_then(|d| d.spec?.replicas)
                == Some(1)
        },
    )
    .await;

    // 4. An invalid commit is refused; the cluster stays as it was.
    repo.write(
        // A manifest whose name cannot be read: the whole revision is
        // invalid (a broken workspace file would hold only its workspace).
        "resources/broken.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: 7}\n",
    );
    git(repo.path(), &["add", "-A"]);
    git(repo.path(), &["commit", "-qm", "broken"]);
    let broken = git(repo.path(), &["rev-parse", "HEAD"]);
    git(repo.path(), &["push", "-q", "origin", "HEAD:main"]);
    wait_for(
        "the invalid revision to be reported",
        Duration::from_secs(15),
        async || {
            status(http_port, &env).await.is_some_and(|s| {
                s["syncStatus"] == "Failed"
                    && s["lastSeenRevision"] == broken.as_str()
                    && s["lastError"]
                        .as_str()
                        .is_some_and(|e| e.contains("resources/broken.yaml:3:18: error"))
            })
        },
    )
    .await;
    let s = status(http_port, &env).await.expect("status");
    assert_eq!(s["lastAppliedRevision"], second.as_str());
    // An operator sees the same from the cluster, read-only (the daemon
    // publishes right after each reconcile).
    let show = || {
        Command::new(env!("CARGO_BIN_EXE_tenantsync"))
            .args([
                "status",
                "--env",
                &env,
                "--context",
                "readonly",
                "--kubeconfig",
            ])
            .arg(control_plane().kubeconfig())
            .output()
            .expect("tenantsync status")
    };
    wait_for(
        "the status to reach the inventory",
        Duration::from_secs(10),
        async || String::from_utf8_lossy(&show().stdout).contains("Failed"),
    )
    .await;
    let shown = show();
    let text = String::from_utf8_lossy(&shown.stdout);
    assert_eq!(
        shown.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&shown.stderr)
    );
    assert!(text.contains("sync status:        Failed"), "{text}");
    assert!(
        text.contains(&format!("applied revision:   {second}")),
        "{text}"
    );
    assert!(
        text.contains(&format!("seen revision:      {broken}")),
        "{text}"
    );
    assert!(text.contains("resources/broken.yaml:3:18: error"), "{text}");
    assert!(
        namespaces
            .get_opt(&repo.namespace("acme"))
            .await
            .expect("get")
            .is_some()
    );

    // 5. The remote goes away: reported, nothing removed; it comes back with a fix.
    drop(remote.take());
    wait_for(
        "the fetch failure to be reported",
        Duration::from_secs(15),
        async || {
            status(http_port, &env).await.is_some_and(|s| {
                s["lastError"]
                    .as_str()
                    .is_some_and(|e| e.contains("cannot read the repository"))
            })
        },
    )
    .await;
    assert!(
        namespaces
            .get_opt(&repo.namespace("acme"))
            .await
            .expect("get")
            .is_some()
    );
    git(
        repo.path(),
        &[
            "rm",
            "-q",
            &format!("environments/{env}/resources/broken.yaml"),
        ],
    );
    git(repo.path(), &["commit", "-qm", "fix"]);
    let fixed = git(repo.path(), &["rev-parse", "HEAD"]);
    remote = Some(git_daemon(served.path(), git_port));
    git(repo.path(), &["push", "-q", "origin", "HEAD:main"]);
    wait_for(
        "recovery once the remote is back",
        Duration::from_secs(30),
        async || {
            status(http_port, &env).await.is_some_and(|s| {
                s["lastAppliedRevision"] == fixed.as_str() && s["syncStatus"] == "Synced"
            })
        },
    )
    .await;

    // 6. Metrics.
    let metrics = http(http_port, "GET", "/metrics", &[], "")
        .await
        .expect("metrics");
    for name in [
        "tenantsync_reconcile_duration_seconds_bucket",
        "tenantsync_objects_applied_total",
        "tenantsync_git_fetch_failures_total",
        "tenantsync_last_successful_sync_timestamp_seconds",
        "tenantsync_drifted_objects",
    ] {
        assert!(
            metrics.contains(&format!("{name}{{")),
            "{name} missing:\n{metrics}"
        );
    }

    // 7. SIGTERM: a clean exit.
    let code = daemon.terminate().await;
    assert!(code.success(), "exit status {code}");
    drop(remote);
}

fn start_daemon(repo: &TestRepo, port: u16, log: &Path) -> Guard {
    let child = Command::new(env!("CARGO_BIN_EXE_tenantsync"))
        .args([
            "run",
            "--leader-elect",
            "--env",
            &repo.env,
            "--interval",
            "2s",
            "--drift-interval",
            "2s",
        ])
        .arg("--repo")
        .arg(repo.path())
        .arg(format!("--listen=127.0.0.1:{port}"))
        .arg("--kubeconfig")
        .arg(control_plane().kubeconfig())
        .args(["--context", "admin"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("log file"))
        .spawn()
        .expect("tenantsync run");
    Guard(child)
}

async fn leads(port: u16) -> Option<bool> {
    let text = http(port, "GET", "/status", &[], "").await?;
    serde_json::from_str::<Value>(&text).ok()?["leader"].as_bool()
}

#[tokio::test]
async fn two_daemons_elect_one_leader_and_fail_over() {
    use k8s_openapi::api::coordination::v1::Lease;
    let repo = TestRepo::new("run-leader");
    let logs = tempfile::tempdir().expect("tempdir");
    let (pa, pb) = (free_port(), free_port());
    let mut a = Some(start_daemon(&repo, pa, &logs.path().join("a.log")));
    let mut b = Some(start_daemon(&repo, pb, &logs.path().join("b.log")));
    // A Lease left by an earlier run expires within its 15 s.
    wait_for(
        "exactly one leader",
        Duration::from_secs(40),
        async || matches!((leads(pa).await, leads(pb).await), (Some(x), Some(y)) if x != y),
    )
    .await;
    let (leader_port, follower_port) = if leads(pa).await == Some(true) {
        (pa, pb)
    } else {
        (pb, pa)
    };
    wait_for("the leader to sync", Duration::from_secs(30), async || {
        status(leader_port, &repo.env)
            .await
            .is_some_and(|s| s["syncStatus"] == "Synced")
    })
    .await;
    let leases: Api<Lease> = Api::namespaced(
        control_plane().client(User::Admin).await,
        tenantsync::sync::inventory::SYSTEM_NAMESPACE,
    );
    assert_eq!(leads(follower_port).await, Some(false));

    // The leader dies without a word: the other takes over once the Lease expires.
    let leader = if leader_port == pa {
        a.take()
    } else {
        b.take()
    };
    drop(leader); // SIGKILL
    let took = wait_for(
        "the follower to take over",
        Duration::from_secs(30),
        async || leads(follower_port).await == Some(true),
    )
    .await;
    assert!(took <= Duration::from_secs(20), "fail-over took {took:?}");

    // SIGTERM: the new leader releases the Lease and exits cleanly.
    let mut last = a.take().or(b.take()).expect("the follower");
    let code = last.terminate().await;
    assert!(code.success(), "{code}");
    let lease = leases
        .get(tenantsync::daemon::leader::LEASE_NAME)
        .await
        .expect("lease");
    assert_eq!(
        lease.spec.and_then(|s| s.holder_identity),
        None,
        "the Lease was not released"
    );
}

#[tokio::test]
async fn a_configuration_file_sets_up_the_daemon_with_a_context_per_environment() {
    let repo = TestRepo::new("run-config");
    let logs = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let config = logs.path().join("tenantsync.yaml");
    // The environment's context is the read-only user: the daemon must use
    // it, and so be refused writes.
    std::fs::write(
        &config,
        format!(
            "apiVersion: tenantsync.io/v1alpha1\nkind: DaemonConfig\nrepo: {}\nenvironments:\n  - name: {}\n    context: readonly\ninterval: 2s\ndriftInterval: 2s\nlisten: 127.0.0.1:{port}\nkubeconfig: {}\nsyncPolicy: {{prune: true}}\n",
            repo.path().display(),
            repo.env,
            control_plane().kubeconfig().display()
        ),
    )
    .expect("write");
    let _daemon = Guard(
        Command::new(env!("CARGO_BIN_EXE_tenantsync"))
            .arg("run")
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(logs.path().join("daemon.log")).expect("log"))
            .spawn()
            .expect("tenantsync run"),
    );
    wait_for(
        "the read-only context to be refused",
        Duration::from_secs(30),
        async || {
            status(port, &repo.env).await.is_some_and(|s| {
                s["syncStatus"] == "Failed"
                    && s["lastError"]
                        .as_str()
                        .is_some_and(|e| e.contains("permission denied") || e.contains("forbidden"))
            })
        },
    )
    .await;
}

#[tokio::test]
async fn an_edit_in_a_watched_folder_is_applied_within_about_a_second() {
    use k8s_openapi::api::core::v1::ConfigMap;
    let repo = TestRepo::new("run-watch");
    let logs = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    // A poll interval of a minute: only the file-system watch can be this fast.
    let _daemon = Guard(
        Command::new(env!("CARGO_BIN_EXE_tenantsync"))
            .args([
                "run",
                "--env",
                &repo.env,
                "--interval",
                "60s",
                "--drift-interval",
                "60s",
                "--repo",
            ])
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
    wait_for("the first sync", Duration::from_secs(30), async || {
        status(port, &repo.env)
            .await
            .is_some_and(|s| s["syncStatus"] == "Synced")
    })
    .await;
    repo.write(
        "workspaces/woodgrove.yaml",
        "apiVersion: tenantsync.io/v1alpha1\nkind: WorkspacePatch\nmetadata: {name: woodgrove}\nspec:\n  fhirServices:\n    - name: api\n      fhirVersion: R5\n",
    );
    let configs: Api<ConfigMap> = Api::namespaced(
        control_plane().client(User::Admin).await,
        &repo.namespace("woodgrove"),
    );
    let took = wait_for(
        "the edit to be applied",
        Duration::from_secs(10),
        async || {
            configs
                .get("fhir-api-config")
                .await
                .ok()
                .and_then(|c| c.data)
                .is_some_and(|d| d.get("FhirServer__Version").map(String::as_str) == Some("R5"))
        },
    )
    .await;
    assert!(
        took < Duration::from_secs(3),
        "edit to applied took {took:?}"
    );
}
