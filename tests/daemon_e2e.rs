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

/// A port free now and never handed out before in this test run: the OS
/// may give a port just released again (a test asking twice got the same
/// port for --listen and --webhook-listen, and the daemon refused to start).
pub(crate) fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
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

/// The value of one series of `/metrics` (`name{labels}`), if present.
pub(crate) async fn metric(port: u16, series: &str) -> Option<f64> {
    let metrics = http(port, "GET", "/metrics", &[], "").await?;
    metrics.lines().find_map(|line| {
        line.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// GitHub's `X-Hub-Signature-256` of `body` under `secret`.
pub(crate) fn github_signature(secret: &str, body: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("hmac");
    mac.update(body);
    let tag = mac.finalize().into_bytes();
    format!(
        "sha256={}",
        tag.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

fn workspace_with_services(name: &str, services: &[&str]) -> String {
    let mut text = format!(
        "apiVersion: tenantsync.io/v1alpha1\nkind: Workspace\nmetadata: {{name: {name}}}\nspec:\n  fhirServices:\n"
    );
    for s in services {
        text.push_str(&format!("    - name: {s}\n"));
    }
    text
}

#[tokio::test]
async fn the_daemon_follows_a_git_remote_heals_drift_and_survives_bad_commits_and_outages() {
    let repo = TestRepo::new("run-e2e");
    let env = repo.env.clone();
    let served = tempfile::tempdir().expect("tempdir");
    let cache = tempfile::tempdir().expect("tempdir");
    // The work tree is the test repo; the remote is a bare clone served by
    // git daemon. Its default branch is `trunk`; a branch `main` carries a
    // commit the daemon must never apply (it follows the remote's default
    // branch when no --branch is given).
    git(repo.path(), &["init", "-q"]);
    git(repo.path(), &["checkout", "-q", "-b", "trunk"]);
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
    // Pushes go to the bare repository's path, so they work while git
    // daemon is down; the daemon reads it over git://.
    git(
        repo.path(),
        &["remote", "add", "origin", &bare.display().to_string()],
    );
    git(repo.path(), &["checkout", "-q", "-b", "main"]);
    repo.write(
        "workspaces/decoy.yaml",
        &workspace_with_services("decoy", &["api"]),
    );
    git(repo.path(), &["add", "-A"]);
    git(repo.path(), &["commit", "-qm", "not on the default branch"]);
    git(repo.path(), &["push", "-q", "origin", "main"]);
    git(repo.path(), &["checkout", "-q", "trunk"]);
    let git_port = free_port();
    let url = format!("git://127.0.0.1:{git_port}/tenants.git");

    // 0. The daemon starts while the remote is unreachable. The poll
    //    interval is a minute: every reconcile below that reads the source
    //    comes from a retry or a webhook, never from a poll.
    let http_port = free_port();
    let log = cache.path().join("daemon.log");
    let started = Instant::now();
    let daemon = Command::new(env!("CARGO_BIN_EXE_tenantsync"))
        .args(["run", "--repo", &url, "--env", &env])
        .args([
            "--interval",
            "60s",
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
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        // Logs to a file: an unread pipe would fill up and block the daemon.
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("tenantsync run");
    let mut daemon = Guard(daemon);
    let series = |name: &str| format!("{name}{{environment=\"{env}\"}}");
    wait_for("/healthz to answer", Duration::from_secs(30), async || {
        http(http_port, "GET", "/healthz", &[], "")
            .await
            .is_some_and(|r| r.starts_with("HTTP/1.1 200"))
    })
    .await;
    let not_ready = http(http_port, "GET", "/readyz", &[], "")
        .await
        .expect("readyz");
    assert!(not_ready.starts_with("HTTP/1.1 503"), "{not_ready}");
    // A failed fetch is retried long before the next poll, backing off: the
    // k-th retry comes at least 2^k - 1 s after the first attempt, so by t
    // seconds at most log2(t + 1) + 1 attempts failed (a retry every second
    // would make t + 1).
    let failures = series("tenantsync_git_fetch_failures_total");
    wait_for(
        "fetches to be retried",
        Duration::from_secs(45),
        async || metric(http_port, &failures).await >= Some(4.0),
    )
    .await;
    let failed = metric(http_port, &failures).await.expect("failures");
    let elapsed = started.elapsed().as_secs_f64();
    assert!(
        failed <= (elapsed + 1.0).log2().floor() + 1.0,
        "{failed} failed fetches in {elapsed:.1} s: retried without backing off"
    );
    let s = status(http_port, &env).await.expect("status");
    assert_eq!(s["syncStatus"], "Failed", "{s}");
    assert_eq!(s["lastErrorReason"], "source", "{s}");
    assert!(s["lastErrorAt"].is_string(), "{s}");
    let not_ready = http(http_port, "GET", "/readyz", &[], "")
        .await
        .expect("readyz");
    assert!(not_ready.starts_with("HTTP/1.1 503"), "{not_ready}");

    // 1. The remote comes up: the next retry applies the default branch.
    let mut remote = Some(git_daemon(served.path(), git_port));
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
    let first_synced = Instant::now();
    let ready = http(http_port, "GET", "/readyz", &[], "")
        .await
        .expect("readyz");
    assert!(
        ready.starts_with("HTTP/1.1 200") && ready.ends_with("\nready\n"),
        "{ready}"
    );
    let namespaces: Api<Namespace> = Api::all(control_plane().client(User::Admin).await);
    assert!(
        namespaces
            .get_opt(&repo.namespace("decoy"))
            .await
            .expect("get")
            .is_none(),
        "a branch other than the remote's default was applied"
    );
    let s = status(http_port, &env).await.expect("status");
    for ws in ["contoso", "fabrikam", "northwind", "woodgrove"] {
        assert_eq!(s["workspaces"][ws]["syncStatus"], "Synced", "{s}");
        assert_eq!(s["workspaces"][ws]["driftedObjects"], 0, "{s}");
    }
    // Every object was created once, and counted once.
    let applied = series("tenantsync_objects_applied_total");
    let recorded = || async { crate::support::live_labelled(&env).len() as f64 };
    assert_eq!(metric(http_port, &applied).await, Some(recorded().await));
    assert_eq!(metric(http_port, &failures).await, Some(failed));

    // 2. A pushed commit onboarding a workspace, announced by a GitHub-signed
    //    webhook, is applied long before the next poll.
    repo.write(
        "workspaces/acme.yaml",
        &workspace_with_services("acme", &["api", "extra"]),
    );
    git(repo.path(), &["add", "-A"]);
    git(repo.path(), &["commit", "-qm", "onboard acme"]);
    let second = git(repo.path(), &["rev-parse", "HEAD"]);
    git(repo.path(), &["push", "-q", "origin", "HEAD:trunk"]);
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
    let body = r#"{"ref":"refs/heads/trunk","after":"acme"}"#;
    let signature = github_signature(SECRET, body.as_bytes());
    let accepted = http(
        http_port,
        "POST",
        "/hooks/git",
        &[
            ("X-GitHub-Event", "push"),
            ("X-GitHub-Delivery", "e2e-acme"),
            ("X-Hub-Signature-256", &signature),
        ],
        body,
    )
    .await
    .expect("hook");
    assert!(accepted.starts_with("HTTP/1.1 202"), "{accepted}");
    // The next poll is due a minute after the first sync: well within it.
    let before_poll = Duration::from_secs(45).saturating_sub(first_synced.elapsed());
    wait_for(
        "the pushed commit to be applied by the webhook",
        before_poll,
        async || {
            status(http_port, &env)
                .await
                .is_some_and(|s| s["lastAppliedRevision"] == second.as_str())
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
    assert_eq!(metric(http_port, &applied).await, Some(recorded().await));

    // 3. Out-of-band scaling is healed, and only that object is written.
    let acme = repo.namespace("acme");
    let deployments: Api<Deployment> =
        Api::namespaced(control_plane().client(User::Admin).await, &acme);
    let applied_before = metric(http_port, &applied).await.expect("applied");
    let versions = crate::support::live_versions(&env);
    let scale = control_plane()
        .kubectl()
        .args([
            "--context",
            "admin",
            "-n",
            &acme,
            "scale",
            "deployment/fhir-api",
            "--replicas=4",
        ])
        .output()
        .expect("kubectl");
    assert!(scale.status.success());
    wait_for(
        "self-heal to restore the replicas",
        Duration::from_secs(30),
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
    wait_for(
        "the heal to be counted",
        Duration::from_secs(10),
        async || metric(http_port, &applied).await == Some(applied_before + 1.0),
    )
    .await;
    let healed = format!("Deployment/{acme}/fhir-api");
    let after = crate::support::live_versions(&env);
    let rewritten: Vec<&String> = after
        .iter()
        .filter(|(id, v)| versions.get(*id) != Some(*v))
        .map(|(id, _)| id)
        .collect();
    assert_eq!(
        rewritten,
        [&healed],
        "self-heal wrote more than the drifted object"
    );

    // 4. An invalid commit is refused; the cluster stays as it was: no
    //    object and not the inventory's record is written, through several
    //    drift checks and retries.
    let versions = crate::support::live_versions(&env);
    let (record, _) = crate::support::inventory_record(&env).await;
    repo.write(
        // A manifest whose name cannot be read: the whole revision is
        // invalid (a broken workspace file would hold only its workspace).
        "resources/broken.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: 7}\n",
    );
    git(repo.path(), &["add", "-A"]);
    git(repo.path(), &["commit", "-qm", "broken"]);
    let broken = git(repo.path(), &["rev-parse", "HEAD"]);
    git(repo.path(), &["push", "-q", "origin", "HEAD:trunk"]);
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
    wait_for(
        "the invalid revision to be reported",
        Duration::from_secs(30),
        async || {
            status(http_port, &env).await.is_some_and(|s| {
                s["syncStatus"] == "Failed"
                    && s["lastSeenRevision"] == broken.as_str()
                    && s["lastErrorReason"] == "invalid"
                    && s["lastErrorAt"].is_string()
                    && s["lastError"]
                        .as_str()
                        .is_some_and(|e| e.contains("resources/broken.yaml:3:18: error"))
            })
        },
    )
    .await;
    let s = status(http_port, &env).await.expect("status");
    assert_eq!(s["lastAppliedRevision"], second.as_str());
    let reconciles = series("tenantsync_reconcile_duration_seconds_count");
    let so_far = metric(http_port, &reconciles).await.expect("reconciles");
    wait_for(
        "a few more reconciles",
        Duration::from_secs(30),
        async || metric(http_port, &reconciles).await >= Some(so_far + 3.0),
    )
    .await;
    assert_eq!(
        crate::support::live_versions(&env),
        versions,
        "an invalid revision changed the cluster"
    );
    assert_eq!(
        crate::support::inventory_record(&env).await.0,
        record,
        "an invalid revision changed the inventory's record"
    );
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
    let json = Command::new(env!("CARGO_BIN_EXE_tenantsync"))
        .args(["status", "--env", &env, "--context", "readonly"])
        .args(["--output", "json", "--kubeconfig"])
        .arg(control_plane().kubeconfig())
        .output()
        .expect("tenantsync status");
    let json: Value = serde_json::from_slice(&json.stdout).expect("status JSON");
    assert_eq!(json["status.syncStatus"], "Failed", "{json:#}");
    assert!(
        json["status.lastErrorAt"]
            .as_str()
            .is_some_and(|t| !t.is_empty()),
        "{json:#}"
    );
    assert_eq!(json["status.driftedObjects"], 0, "{json:#}");
    assert_eq!(json["revision"], second.as_str(), "{json:#}");

    // 5. The remote goes away: reported, nothing removed.
    drop(remote.take());
    let accepted = http(
        http_port,
        "POST",
        "/hooks/git",
        &[("X-Gitlab-Token", SECRET)],
        r#"{"ref":"refs/heads/trunk","checkout_sha":"outage"}"#,
    )
    .await
    .expect("hook");
    assert!(accepted.starts_with("HTTP/1.1 202"), "{accepted}");
    wait_for(
        "the fetch failure to be reported",
        Duration::from_secs(30),
        async || {
            status(http_port, &env).await.is_some_and(|s| {
                s["lastErrorReason"] == "source"
                    && s["lastError"]
                        .as_str()
                        .is_some_and(|e| e.contains("cannot read the repository"))
            })
        },
    )
    .await;
    assert_eq!(crate::support::live_versions(&env), versions);

    // 6. It comes back with a fix, which also drops acme's `extra` service:
    //    its objects are pruned, and counted.
    let extra: Vec<String> = crate::support::live_labelled(&env)
        .into_iter()
        .filter(|id| {
            id.split('/').nth(1) == Some(acme.as_str())
                && id
                    .rsplit('/')
                    .next()
                    .is_some_and(|n| n.starts_with("fhir-extra"))
        })
        .collect();
    assert!(extra.len() >= 4, "{extra:?}");
    git(
        repo.path(),
        &[
            "rm",
            "-q",
            &format!("environments/{env}/resources/broken.yaml"),
        ],
    );
    repo.write(
        "workspaces/acme.yaml",
        &workspace_with_services("acme", &["api"]),
    );
    git(repo.path(), &["add", "-A"]);
    git(repo.path(), &["commit", "-qm", "fix"]);
    let fixed = git(repo.path(), &["rev-parse", "HEAD"]);
    git(repo.path(), &["push", "-q", "origin", "HEAD:trunk"]);
    remote = Some(git_daemon(served.path(), git_port));
    let accepted = http(
        http_port,
        "POST",
        "/hooks/git",
        &[("X-Gitlab-Token", SECRET)],
        r#"{"ref":"refs/heads/trunk","checkout_sha":"fix"}"#,
    )
    .await
    .expect("hook");
    assert!(accepted.starts_with("HTTP/1.1 202"), "{accepted}");
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

    // 7. Metrics: values, not only names.
    let pruned = series("tenantsync_objects_pruned_total");
    assert_eq!(metric(http_port, &pruned).await, Some(extra.len() as f64));
    assert_eq!(
        metric(http_port, &series("tenantsync_objects_failed_total")).await,
        Some(0.0)
    );
    assert!(metric(http_port, &failures).await > Some(failed));
    for (reason, at_least) in [("source", 2.0), ("invalid", 1.0)] {
        let errors = format!(
            "tenantsync_reconcile_errors_total{{environment=\"{env}\",reason=\"{reason}\"}}"
        );
        assert!(
            metric(http_port, &errors).await >= Some(at_least),
            "{errors}"
        );
    }
    for state in tenantsync::daemon::metrics::STATUSES {
        let gauge = format!("tenantsync_sync_status{{environment=\"{env}\",status=\"{state}\"}}");
        let expected = if state == "Synced" { 1.0 } else { 0.0 };
        assert_eq!(metric(http_port, &gauge).await, Some(expected), "{gauge}");
    }
    assert_eq!(
        metric(
            http_port,
            &format!("tenantsync_drifted_objects{{environment=\"{env}\",workspace=\"acme\"}}")
        )
        .await,
        Some(0.0)
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    let last_sync = metric(
        http_port,
        &series("tenantsync_last_successful_sync_timestamp_seconds"),
    )
    .await
    .expect("last sync");
    assert!(
        last_sync <= now && last_sync >= now - started.elapsed().as_secs_f64() - 1.0,
        "{last_sync} vs {now}"
    );
    assert!(metric(http_port, &reconciles).await > Some(5.0));
    // The API server never answered 429 here: no throttled answer is
    // counted, and the window of writes in flight is between 1 and its
    // start, 8 (a quarter less after much slower answers, which a machine
    // loaded by the rest of the suite can give).
    let window = metric(http_port, &series("tenantsync_api_write_concurrency")).await;
    assert!(
        window.is_some_and(|w| (1.0..=8.0).contains(&w)),
        "{window:?}"
    );
    assert_eq!(
        metric(
            http_port,
            &series("tenantsync_api_throttled_responses_total")
        )
        .await,
        Some(0.0)
    );

    // 8. Logs: human-readable lines at the default level (info), nothing
    //    at debug without RUST_LOG.
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(text.contains(" INFO "), "{text}");
    assert!(!text.contains("DEBUG"), "{text}");
    assert!(!text.trim_start().starts_with('{'), "{text}");

    // 9. SIGTERM: a clean exit.
    let code = daemon.terminate().await;
    assert!(code.success(), "exit status {code}");
    drop(remote);
}

fn start_daemon(repo: &TestRepo, port: u16, log: &Path, kubeconfig: &Path, lease: &str) -> Guard {
    let child = Command::new(env!("CARGO_BIN_EXE_tenantsync"))
        .args([
            "run",
            "--leader-elect",
            "--lease-name",
            lease,
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
        .arg(kubeconfig)
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
async fn two_daemons_elect_one_leader_only_the_leader_writes_and_fail_over() {
    use k8s_openapi::api::coordination::v1::Lease;
    use tenantsync::daemon::leader::{LEASE_DURATION, RETRY_PERIOD};
    let repo = TestRepo::new("run-leader");
    let logs = tempfile::tempdir().expect("tempdir");
    // Each daemon with a token of its own, so the API server's audit log
    // tells their requests apart; a Lease of this test's own.
    let ida = crate::support::audit::identity("run-leader-a", "cluster-admin", logs.path());
    let idb = crate::support::audit::identity("run-leader-b", "cluster-admin", logs.path());
    let lease = crate::support::unique_name("run-leader");
    let from = crate::support::audit::cursor();
    let (pa, pb) = (free_port(), free_port());
    let mut a = Some(start_daemon(
        &repo,
        pa,
        &logs.path().join("a.log"),
        &ida.kubeconfig,
        &lease,
    ));
    let mut b = Some(start_daemon(
        &repo,
        pb,
        &logs.path().join("b.log"),
        &idb.kubeconfig,
        &lease,
    ));
    wait_for(
        "exactly one leader",
        Duration::from_secs(40),
        async || matches!((leads(pa).await, leads(pb).await), (Some(x), Some(y)) if x != y),
    )
    .await;
    let a_leads = leads(pa).await == Some(true);
    let (leader_port, follower_port) = if a_leads { (pa, pb) } else { (pb, pa) };
    let (leader_id, follower_id) = if a_leads { (&ida, &idb) } else { (&idb, &ida) };
    wait_for("the leader to sync", Duration::from_secs(30), async || {
        status(leader_port, &repo.env)
            .await
            .is_some_and(|s| s["syncStatus"] == "Synced")
    })
    .await;
    // The follower compares too (so it is ready) and reports, never writes.
    wait_for(
        "the follower to compare",
        Duration::from_secs(30),
        async || {
            http(follower_port, "GET", "/readyz", &[], "")
                .await
                .is_some_and(|r| r.starts_with("HTTP/1.1 200"))
        },
    )
    .await;
    assert_eq!(leads(follower_port).await, Some(false));
    let leases: Api<Lease> = Api::namespaced(
        control_plane().client(User::Admin).await,
        tenantsync::sync::inventory::SYSTEM_NAMESPACE,
    );
    let leader_writes = leader_id
        .requests_since(&from)
        .into_iter()
        .filter(|r| r.user_agent.starts_with("tenantsync/") && r.is_write())
        .count();
    assert!(leader_writes > 50, "{leader_writes} writes by the leader");
    let follower_writes: Vec<crate::support::audit::Request> = follower_id
        .requests_since(&from)
        .into_iter()
        .filter(|r| r.user_agent.starts_with("tenantsync/") && r.is_write())
        .collect();
    // At most a try for the leader Lease, refused (409) while it is held.
    assert!(
        follower_writes
            .iter()
            .all(|w| w.resource == "leases" && w.name == lease && w.code == 409),
        "the follower wrote: {follower_writes:#?}"
    );

    // The leader dies without a word: the other takes over once the Lease
    // expires: not before the last renewal (at most RETRY_PERIOD before
    // the kill) plus LEASE_DURATION, and soon after (a generous bound).
    let leader = if a_leads { a.take() } else { b.take() };
    drop(leader); // SIGKILL
    let took = wait_for(
        "the follower to take over",
        LEASE_DURATION + RETRY_PERIOD * 2 + Duration::from_secs(20),
        async || leads(follower_port).await == Some(true),
    )
    .await;
    assert!(
        took + RETRY_PERIOD >= LEASE_DURATION,
        "took over after {took:?}, before the Lease of {LEASE_DURATION:?} expired"
    );
    // The new leader writes: its status onto the inventory at least.
    let from = crate::support::audit::cursor();
    wait_for(
        "the new leader to write",
        Duration::from_secs(30),
        async || {
            follower_id.requests_since(&from).iter().any(|r| {
                r.user_agent.starts_with("tenantsync/") && r.is_write() && r.resource != "leases"
            })
        },
    )
    .await;

    // SIGTERM: the new leader releases the Lease and exits cleanly.
    let mut last = a.take().or(b.take()).expect("the follower");
    let code = last.terminate().await;
    assert!(code.success(), "{code}");
    let held = leases.get(&lease).await.expect("lease");
    assert_eq!(
        held.spec.and_then(|s| s.holder_identity),
        None,
        "the Lease was not released"
    );
}

/// An API server that completes the TLS handshake and never answers:
/// `openssl s_server` with the control plane's own serving certificate (its
/// stdin held open, or it hangs up).
fn stalled_api_server(port: u16) -> Guard {
    let certs = control_plane()
        .kubeconfig()
        .parent()
        .expect("state dir")
        .join("certs");
    let child = Command::new("openssl")
        .args(["s_server", "-quiet", "-accept"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("-cert")
        .arg(certs.join("apiserver.crt"))
        .arg("-key")
        .arg(certs.join("apiserver.key"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl s_server");
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "s_server did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Guard(child)
}

/// The test kubeconfig with a context `stalled` (admin's credentials, an
/// API server at `server` that never answers).
fn kubeconfig_with_stalled_context(server: &str, dir: &Path) -> std::path::PathBuf {
    use kube::config::{Context, Kubeconfig, NamedCluster, NamedContext};
    let mut kc = Kubeconfig::read_from(control_plane().kubeconfig()).expect("kubeconfig");
    let mut cluster = kc.clusters[0].cluster.clone().expect("a cluster");
    cluster.server = Some(server.to_string());
    kc.clusters.push(NamedCluster {
        name: "stalled".into(),
        cluster: Some(cluster),
        other: Default::default(),
    });
    let admin = kc
        .contexts
        .iter()
        .find(|c| c.name == "admin")
        .and_then(|c| c.context.clone())
        .expect("the admin context");
    kc.contexts.push(NamedContext {
        name: "stalled".into(),
        context: Some(Context {
            cluster: "stalled".into(),
            ..admin
        }),
        other: Default::default(),
    });
    let path = dir.join("kubeconfig");
    // JSON is YAML.
    std::fs::write(&path, serde_json::to_string(&kc).expect("JSON")).expect("write");
    path
}

#[tokio::test]
async fn a_configuration_file_sets_up_the_daemon_and_one_stuck_environment_blocks_no_other() {
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::api::core::v1::ConfigMap;
    // Environment `stuck` (the test repo's) goes to an API server that never
    // answers; environment `live`, beside it in the same repository, to the
    // control plane, where one object it declares already exists (made by
    // hand: a failure, never adopted).
    let repo = TestRepo::new("run-config");
    let stuck = repo.env.clone();
    let live = format!("{}-b", &stuck[..stuck.len().min(26)]);
    let layer = repo.path().join("environments").join(&live);
    let hand = control_plane().namespace("run-config-hand").await;
    std::fs::create_dir_all(layer.join("resources")).expect("mkdir");
    std::fs::write(
        layer.join("environment.yaml"),
        format!("apiVersion: tenantsync.io/v1alpha1\nkind: Environment\nmetadata:\n  name: {live}\nspec:\n  base: base\n  ingress:\n    domain: test.example.com\n"),
    )
    .expect("write");
    std::fs::write(
        layer.join("resources/taken.yaml"),
        format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: taken\n  namespace: {hand}\ndata: {{a: b}}\n"),
    )
    .expect("write");
    let made = control_plane()
        .kubectl()
        .args([
            "--context",
            "admin",
            "-n",
            &hand,
            "create",
            "configmap",
            "taken",
        ])
        .output()
        .expect("kubectl");
    assert!(made.status.success());

    let logs = tempfile::tempdir().expect("tempdir");
    let stalled_port = free_port();
    let stalled = stalled_api_server(stalled_port);
    let kubeconfig =
        kubeconfig_with_stalled_context(&format!("https://127.0.0.1:{stalled_port}"), logs.path());
    let port = free_port();
    let lease = crate::support::unique_name("run-config-lease");
    let config = logs.path().join("tenantsync.yaml");
    std::fs::write(
        &config,
        format!(
            "apiVersion: tenantsync.io/v1alpha1\nkind: DaemonConfig\nrepo: {}\nenvironments:\n  - name: {stuck}\n    context: stalled\n  - name: {live}\n    context: admin\ninterval: 2s\ndriftInterval: 2s\nlisten: 127.0.0.1:{port}\nkubeconfig: {}\nleaderElect: true\nleaseName: {lease}\nsyncPolicy: {{prune: true}}\nguardrails: {{allowedNamespaces: [{hand}]}}\n",
            repo.path().display(),
            kubeconfig.display()
        ),
    )
    .expect("write");
    let log = logs.path().join("daemon.log");
    let mut daemon = Guard(
        Command::new(env!("CARGO_BIN_EXE_tenantsync"))
            .arg("run")
            .arg("--config")
            .arg(&config)
            .args(["--log-format", "json"])
            // RUST_LOG sets the level: warnings and errors only.
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("tenantsync run"),
    );
    // `live` is synced (all but the object it may not take) while `stuck`
    // has not finished its first reconcile: the first request to its API
    // server waits 30 s for an answer.
    let reconciles =
        |env: &str| format!("tenantsync_reconcile_duration_seconds_count{{environment=\"{env}\"}}");
    wait_for(
        "environment live to be synced, failing on one object",
        Duration::from_secs(25),
        async || {
            status(port, &live).await.is_some_and(|s| {
                s["lastErrorReason"] == "apply"
                    && s["lastError"].as_str().is_some_and(|e| {
                        e.contains(&format!("ConfigMap/{hand}/taken"))
                            && e.contains("exists, not managed")
                    })
            })
        },
    )
    .await;
    assert_eq!(
        metric(port, &reconciles(&stuck)).await.unwrap_or(0.0),
        0.0,
        "environment stuck finished a reconcile already"
    );
    let s = status(port, &stuck).await.expect("status");
    assert!(s["lastReconcileAt"].is_null(), "{s}");
    let namespaces: Api<Namespace> = Api::all(control_plane().client(User::Admin).await);
    for (env, expected) in [(&live, true), (&stuck, false)] {
        assert_eq!(
            namespaces
                .get_opt(&format!("contoso-{env}"))
                .await
                .expect("get")
                .is_some(),
            expected,
            "{env}"
        );
    }
    // The hand-made object stays as it was; each reconcile that met it
    // counts one failed object.
    let taken: Api<ConfigMap> = Api::namespaced(control_plane().client(User::Admin).await, &hand);
    assert!(
        taken
            .get("taken")
            .await
            .expect("get")
            .metadata
            .labels
            .is_none()
    );
    let failed = metric(
        port,
        &format!("tenantsync_objects_failed_total{{environment=\"{live}\"}}"),
    )
    .await
    .expect("failed");
    let apply_errors = metric(
        port,
        &format!("tenantsync_reconcile_errors_total{{environment=\"{live}\",reason=\"apply\"}}"),
    )
    .await
    .expect("apply errors");
    assert!(
        failed >= 1.0 && failed == apply_errors,
        "{failed} vs {apply_errors}"
    );
    // The Lease of the configuration's leaseName, held by this daemon.
    let identity = http(port, "GET", "/status", &[], "")
        .await
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .and_then(|s| s["identity"].as_str().map(String::from))
        .expect("identity");
    let leases: Api<Lease> = Api::namespaced(
        control_plane().client(User::Admin).await,
        tenantsync::sync::inventory::SYSTEM_NAMESPACE,
    );
    let held = leases.get(&lease).await.expect("the configured Lease");
    assert_eq!(
        held.spec.and_then(|s| s.holder_identity),
        Some(identity.clone())
    );
    // `stuck` fails in the end, naming the API server of its own context.
    wait_for(
        "environment stuck to fail",
        Duration::from_secs(60),
        async || {
            status(port, &stuck)
                .await
                .is_some_and(|s| s["syncStatus"] == "Failed" && s["lastErrorReason"] == "cluster")
        },
    )
    .await;
    // Its next reconcile would wait 30 s again, and SIGTERM lets a
    // reconcile in flight finish: the server goes first.
    drop(stalled);
    let code = daemon.terminate().await;
    assert!(code.success(), "exit status {code}");
    // --log-format json: one object per line; RUST_LOG=warn: no info lines.
    let text = std::fs::read_to_string(&log).expect("log");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.iter().any(|l| l["level"] == "WARN"), "{text}");
    assert!(
        lines
            .iter()
            .all(|l| l["level"] == "WARN" || l["level"] == "ERROR"),
        "{text}"
    );
}

#[tokio::test]
async fn an_edit_in_a_watched_folder_is_applied_and_drift_without_self_heal_is_only_reported() {
    use k8s_openapi::api::core::v1::ConfigMap;
    let repo = TestRepo::new("run-watch");
    let logs = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    // A poll interval of a minute: only the file-system watch applies an
    // edit before it. No webhook secret: the endpoint is off.
    let _daemon = Guard(
        Command::new(env!("CARGO_BIN_EXE_tenantsync"))
            .args([
                "run",
                "--env",
                &repo.env,
                "--interval",
                "60s",
                "--drift-interval",
                "1s",
                "--repo",
            ])
            .arg(repo.path())
            .arg(format!("--listen=127.0.0.1:{port}"))
            .arg("--kubeconfig")
            .arg(control_plane().kubeconfig())
            .args(["--context", "admin"])
            .env_remove("TENANTSYNC_WEBHOOK_SECRET")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(logs.path().join("daemon.log")).expect("log"))
            .spawn()
            .expect("tenantsync run"),
    );
    wait_for("the first sync", Duration::from_secs(60), async || {
        status(port, &repo.env)
            .await
            .is_some_and(|s| s["syncStatus"] == "Synced")
    })
    .await;
    let first_synced = Instant::now();
    let hook = http(
        port,
        "POST",
        "/hooks/git",
        &[("X-Gitlab-Token", SECRET)],
        "{}",
    )
    .await
    .expect("hook");
    assert!(hook.starts_with("HTTP/1.1 404"), "{hook}");

    repo.write(
        "workspaces/woodgrove.yaml",
        "apiVersion: tenantsync.io/v1alpha1\nkind: WorkspacePatch\nmetadata: {name: woodgrove}\nspec:\n  fhirServices:\n    - name: api\n      fhirVersion: R5\n",
    );
    let configs: Api<ConfigMap> = Api::namespaced(
        control_plane().client(User::Admin).await,
        &repo.namespace("woodgrove"),
    );
    // Well before the next poll (a minute after the first sync).
    wait_for(
        "the edit to be applied",
        Duration::from_secs(45).saturating_sub(first_synced.elapsed()),
        async || fhir_version(&configs).await.as_deref() == Some("R5"),
    )
    .await;

    // Without --self-heal, drift is reported in /status and the metrics,
    // and left alone.
    let ns = repo.namespace("contoso");
    let scale = control_plane()
        .kubectl()
        .args(["--context", "admin", "-n", &ns, "scale"])
        .args(["deployment/fhir-main", "--replicas=5"])
        .output()
        .expect("kubectl");
    assert!(scale.status.success());
    let env = repo.env.clone();
    let drifted =
        format!("tenantsync_drifted_objects{{environment=\"{env}\",workspace=\"contoso\"}}");
    let out_of_sync =
        format!("tenantsync_sync_status{{environment=\"{env}\",status=\"OutOfSync\"}}");
    wait_for(
        "the drift to be reported",
        Duration::from_secs(30),
        async || {
            status(port, &env).await.is_some_and(|s| {
                s["syncStatus"] == "OutOfSync"
                    && s["driftedObjects"] == 1
                    && s["workspaces"]["contoso"]["syncStatus"] == "OutOfSync"
                    && s["workspaces"]["contoso"]["driftedObjects"] == 1
                    && s["workspaces"]["woodgrove"]["driftedObjects"] == 0
            })
        },
    )
    .await;
    assert_eq!(metric(port, &drifted).await, Some(1.0));
    assert_eq!(metric(port, &out_of_sync).await, Some(1.0));
    let reconciles =
        format!("tenantsync_reconcile_duration_seconds_count{{environment=\"{env}\"}}");
    let so_far = metric(port, &reconciles).await.expect("reconciles");
    wait_for("more drift checks", Duration::from_secs(30), async || {
        metric(port, &reconciles).await >= Some(so_far + 3.0)
    })
    .await;
    let deployments: Api<Deployment> =
        Api::namespaced(control_plane().client(User::Admin).await, &ns);
    assert_eq!(
        deployments
            .get("fhir-main")
            .await
            .expect("deployment")
            .spec
            .and_then(|s| s.replicas),
        Some(5),
        "drift was healed without --self-heal"
    );
    assert_eq!(metric(port, &drifted).await, Some(1.0));
}

/// The FHIR version `fhir-api-config` configures (a workspace's `api`
/// service), as the cluster has it.
pub(crate) async fn fhir_version(
    configs: &Api<k8s_openapi::api::core::v1::ConfigMap>,
) -> Option<String> {
    configs
        .get("fhir-api-config")
        .await
        .ok()?
        .data?
        .remove("FhirServer__Version")
}
