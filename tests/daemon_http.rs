//! The daemon's HTTP servers under abuse, on the real binary (`tenantsync
//! run` against the real control plane): held and idle connections, huge
//! and replayed webhooks, pushes of other branches, SIGTERM with stalled
//! clients, and what `/status` publishes.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::daemon_e2e::{Guard, free_port, http, status, wait_for};
use crate::support::repo::TestRepo;
use crate::support::{control_plane, git};

const SECRET: &str = "http-hardening-secret";

/// The daemon on a local Git repository's `main`, polling only hourly, so
/// every reconcile after the first comes from a webhook.
struct Daemon {
    guard: Guard,
    env: String,
    port: u16,
    hooks: u16,
    log: std::path::PathBuf,
    _repo: TestRepo,
    _dir: tempfile::TempDir,
}

fn start(test: &str, kubeconfig: &Path, context: Option<&str>) -> Daemon {
    let repo = TestRepo::new(test);
    git(repo.path(), &["init", "-q"]);
    git(repo.path(), &["add", "-A"]);
    git(repo.path(), &["commit", "-qm", "initial"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("daemon.log");
    let (port, hooks) = (free_port(), free_port());
    let mut command = Command::new(env!("CARGO_BIN_EXE_tenantsync"));
    command
        .args(["run", "--env", &repo.env, "--branch", "main"])
        .args(["--interval", "1h", "--drift-interval", "1h", "--repo"])
        .arg(repo.path())
        .arg(format!("--listen=127.0.0.1:{port}"))
        .arg(format!("--webhook-listen=127.0.0.1:{hooks}"))
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .env_remove("KUBECONFIG")
        .env("TENANTSYNC_WEBHOOK_SECRET", SECRET)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"));
    if let Some(context) = context {
        command.args(["--context", context]);
    }
    let guard = Guard(command.spawn().expect("tenantsync run"));
    Daemon {
        guard,
        env: repo.env.clone(),
        port,
        hooks,
        log,
        _repo: repo,
        _dir: dir,
    }
}

impl Daemon {
    fn rss_mb(&self) -> f64 {
        let text = std::fs::read_to_string(format!("/proc/{}/status", self.guard.0.id()))
            .expect("/proc/PID/status");
        let kb: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS");
        kb / 1024.0
    }

    /// Reconciles so far, from `/metrics`.
    async fn reconciles(&self) -> u64 {
        let metrics = http(self.port, "GET", "/metrics", &[], "")
            .await
            .unwrap_or_default();
        let prefix = format!(
            "tenantsync_reconcile_duration_seconds_count{{environment=\"{}\"}} ",
            self.env
        );
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok())
            .unwrap_or(0)
    }

    async fn synced(&self) {
        wait_for(
            "the first reconcile to sync",
            Duration::from_secs(60),
            async || {
                status(self.port, &self.env)
                    .await
                    .is_some_and(|s| s["syncStatus"] == "Synced")
            },
        )
        .await;
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn signature(body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("hmac");
    mac.update(body);
    let tag = mac.finalize().into_bytes();
    format!(
        "sha256={}",
        tag.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

/// A GitHub push delivery of `git_ref` padded to about `size` bytes.
fn push_body(git_ref: &str, size: usize, salt: &str) -> String {
    let mut body = json!({"ref": git_ref, "after": salt, "padding": ""}).to_string();
    let pad = size.saturating_sub(body.len());
    body.insert_str(body.len() - 2, &"x".repeat(pad));
    body
}

async fn github(port: u16, event: &str, delivery: &str, body: &str) -> String {
    let sig = signature(body.as_bytes());
    http(
        port,
        "POST",
        "/hooks/git",
        &[
            ("X-GitHub-Event", event),
            ("X-GitHub-Delivery", delivery),
            ("X-Hub-Signature-256", &sig),
            ("Content-Type", "application/json"),
        ],
        body,
    )
    .await
    .expect("webhook answered")
}

/// Waits until the reconcile count stops moving and returns it.
async fn settled(d: &Daemon) -> u64 {
    let mut last = d.reconciles().await;
    loop {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let now = d.reconciles().await;
        if now == last {
            return now;
        }
        last = now;
    }
}

#[tokio::test]
async fn webhooks_trigger_only_fresh_pushes_of_the_tracked_branch_and_stream_big_bodies() {
    let d = start("http-hooks", control_plane().kubeconfig(), Some("admin"));
    d.synced().await;
    let before = settled(&d).await;
    assert!(before >= 1, "no reconcile counted");

    // Each listener serves its own endpoints only.
    let on_hooks = http(d.hooks, "GET", "/status", &[], "")
        .await
        .expect("answer");
    assert!(!on_hooks.contains("environments"), "{on_hooks}");
    let on_hooks = http(d.hooks, "GET", "/metrics", &[], "")
        .await
        .expect("answer");
    assert!(!on_hooks.contains("tenantsync_"), "{on_hooks}");
    let on_main = http(d.port, "POST", "/hooks/git", &[], "{}")
        .await
        .expect("answer");
    assert!(on_main.starts_with("HTTP/1.1 404"), "{on_main}");

    // A push of main triggers one reconcile.
    let body = push_body("refs/heads/main", 0, "1111");
    let first = github(d.hooks, "push", "delivery-1", &body).await;
    assert!(first.starts_with("HTTP/1.1 202"), "{first}");
    wait_for(
        "the webhook's reconcile",
        Duration::from_secs(10),
        async || d.reconciles().await > before,
    )
    .await;
    let after_first = settled(&d).await;

    // Its replay (same id, or the same signed body under a new id), a push
    // of another branch and a non-push event trigger nothing.
    for (event, delivery, body, expect) in [
        ("push", "delivery-1", body.clone(), "seen in the last hour"),
        ("push", "delivery-2", body.clone(), "seen in the last hour"),
        (
            "push",
            "delivery-3",
            push_body("refs/heads/feature", 0, "2222"),
            "not of `main`",
        ),
        (
            "issues",
            "delivery-4",
            json!({"action": "opened"}).to_string(),
            "not a push",
        ),
        (
            "ping",
            "delivery-5",
            json!({"zen": "hi"}).to_string(),
            "pong",
        ),
    ] {
        let answer = github(d.hooks, event, delivery, &body).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.contains(expect), "{expect}: {answer}");
    }
    for _ in 0..20 {
        let replay = github(d.hooks, "push", "delivery-1", &body).await;
        assert!(replay.starts_with("HTTP/1.1 200"), "{replay}");
    }
    assert_eq!(
        settled(&d).await,
        after_first,
        "an ignored delivery reconciled"
    );

    // A GitLab push (token, no signature) of main triggers.
    let gitlab = json!({"object_kind": "push", "ref": "refs/heads/main", "after": "3333"});
    let answer = http(
        d.hooks,
        "POST",
        "/hooks/git",
        &[
            ("X-Gitlab-Token", SECRET),
            ("X-Gitlab-Event", "Push Hook"),
            ("X-Gitlab-Event-UUID", "gitlab-1"),
        ],
        &gitlab.to_string(),
    )
    .await
    .expect("answer");
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    wait_for(
        "the GitLab push's reconcile",
        Duration::from_secs(10),
        async || d.reconciles().await > after_first,
    )
    .await;
    let after_gitlab = settled(&d).await;

    // A correctly signed 22 MB push is accepted, streamed: 20 MB into it,
    // the daemon has not grown by their size.
    let rss = d.rss_mb();
    let big = push_body("refs/heads/main", 22 * 1024 * 1024, "4444");
    let mut stream = TcpStream::connect(("127.0.0.1", d.hooks))
        .await
        .expect("connect");
    let head = format!(
        "POST /hooks/git HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-GitHub-Event: push\r\nX-GitHub-Delivery: delivery-big\r\nX-Hub-Signature-256: {}\r\nContent-Length: {}\r\n\r\n",
        signature(big.as_bytes()),
        big.len()
    );
    stream.write_all(head.as_bytes()).await.expect("write");
    let split = 20 * 1024 * 1024;
    stream
        .write_all(&big.as_bytes()[..split])
        .await
        .expect("write");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let grew = d.rss_mb() - rss;
    eprintln!("RSS growth 20 MB into a 22 MB webhook: {grew:.1} MB");
    assert!(
        grew < 10.0,
        "20 MB of a webhook grew the daemon by {grew:.1} MB"
    );
    stream
        .write_all(&big.as_bytes()[split..])
        .await
        .expect("write");
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut answer))
        .await
        .expect("an answer")
        .expect("read");
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    wait_for(
        "the big push's reconcile",
        Duration::from_secs(10),
        async || d.reconciles().await > after_gitlab,
    )
    .await;
    drop(big);

    // 26 MB: refused on its Content-Length before any byte of the body...
    let mut stream = TcpStream::connect(("127.0.0.1", d.hooks))
        .await
        .expect("connect");
    let head = format!(
        "POST /hooks/git HTTP/1.1\r\nHost: x\r\nX-GitHub-Event: push\r\nX-Hub-Signature-256: {}\r\nContent-Length: {}\r\n\r\n",
        signature(b"whatever"),
        26 * 1024 * 1024
    );
    stream.write_all(head.as_bytes()).await.expect("write");
    let mut answer = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer))
        .await
        .expect("an answer before the body")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    // ...and, sent chunked (no length up front), cut at 25 MB as it streams.
    let rss = d.rss_mb();
    let stream = TcpStream::connect(("127.0.0.1", d.hooks))
        .await
        .expect("connect");
    let (mut read, mut write) = stream.into_split();
    let reader = tokio::spawn(async move {
        let mut out = Vec::new();
        let _ = read.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    });
    let head = format!(
        "POST /hooks/git HTTP/1.1\r\nHost: x\r\nX-GitHub-Event: push\r\nX-Hub-Signature-256: {}\r\nTransfer-Encoding: chunked\r\n\r\n",
        signature(b"whatever")
    );
    write.write_all(head.as_bytes()).await.expect("write");
    let chunk = format!("10000\r\n{}\r\n", "y".repeat(0x10000));
    let mut sent = 0usize;
    let mut grew = None;
    while sent < 26 * 1024 * 1024 {
        if write.write_all(chunk.as_bytes()).await.is_err() {
            break;
        }
        sent += 0x10000;
        if sent == 24 * 1024 * 1024 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            grew = Some(d.rss_mb() - rss);
        }
    }
    let answer = tokio::time::timeout(Duration::from_secs(10), reader)
        .await
        .expect("an answer")
        .expect("reader");
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    let grew = grew.expect("24 MB sent before the answer");
    eprintln!("RSS growth 24 MB into a 26 MB chunked webhook: {grew:.1} MB");
    assert!(
        grew < 10.0,
        "24 MB of a webhook grew the daemon by {grew:.1} MB"
    );
    assert_eq!(
        settled(&d).await,
        after_gitlab + 1,
        "a refused body reconciled"
    );
}

/// Opens a connection and sends `text`, keeping the connection open.
async fn hold(port: u16, text: &str) -> Option<TcpStream> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    s.write_all(text.as_bytes()).await.ok()?;
    Some(s)
}

/// How long until the server closes `s`, and what it sent before.
async fn closed_after(mut s: TcpStream, limit: Duration) -> Option<(Duration, String)> {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    let mut got = Vec::new();
    loop {
        match tokio::time::timeout(limit.saturating_sub(start.elapsed()), s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => {
                return Some((start.elapsed(), String::from_utf8_lossy(&got).into_owned()));
            }
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn held_and_idle_connections_cost_little_and_sigterm_does_not_wait_for_them() {
    let mut d = start("http-held", control_plane().kubeconfig(), Some("admin"));
    d.synced().await;
    let rss = d.rss_mb();

    // 300 webhook calls holding partial bodies, and 200 connections holding
    // partial headers on the main listener (under its cap of 256).
    let partial_body = format!(
        "POST /hooks/git HTTP/1.1\r\nHost: x\r\nX-GitHub-Event: push\r\nX-Hub-Signature-256: {}\r\nContent-Length: 2000000\r\n\r\n{{\"ref\":\"refs/heads/main\",\"padding\":\"{}",
        signature(b"anything"),
        "z".repeat(4000)
    );
    let mut held = Vec::new();
    let body_started = Instant::now();
    // The first call takes one of the 8 webhook body slots before the
    // others arrive (which of 300 calls racing in gets a slot is not
    // ordered: the test once held one answered 503).
    let first_body = hold(d.hooks, &partial_body)
        .await
        .expect("the first webhook call");
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..300 {
        if i > 0 {
            held.extend(hold(d.hooks, &partial_body).await);
        }
        if i < 200 {
            held.extend(hold(d.port, "GET /status HTTP/1.1\r\nHost: x\r\nX-Slow").await);
        }
    }
    // 56 more fill the main listener's 256 connections: the next one is
    // closed at once, unanswered.
    let mut extra = Vec::new();
    for _ in 0..56 {
        extra.extend(hold(d.port, "GET /status HTTP/1.1\r\nHost: x\r\nX-Slow").await);
    }
    let over = TcpStream::connect(("127.0.0.1", d.port))
        .await
        .expect("connect");
    let (took, answer) = closed_after(over, Duration::from_secs(2))
        .await
        .expect("a connection over the cap was kept");
    assert!(answer.is_empty(), "{answer}");
    eprintln!("a connection over the cap closed after {took:?}");
    drop(extra);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let grown = d.rss_mb();
    eprintln!(
        "RSS with {} held connections: {rss:.1} MB -> {grown:.1} MB",
        held.len()
    );
    assert!(
        grown < 100.0,
        "500 held connections took the daemon from {rss:.1} MB to {grown:.1} MB"
    );
    // The probes still answer, at once.
    let healthz = tokio::time::timeout(
        Duration::from_secs(2),
        http(d.port, "GET", "/healthz", &[], ""),
    )
    .await
    .expect("/healthz within 2 s while connections are held")
    .expect("/healthz answered");
    assert!(healthz.starts_with("HTTP/1.1 200"), "{healthz}");
    // A signed push finds the 8 webhook body slots taken: 503 at once.
    let busy = github(
        d.hooks,
        "push",
        "busy-1",
        &push_body("refs/heads/main", 0, "5555"),
    )
    .await;
    assert!(busy.starts_with("HTTP/1.1 503"), "{busy}");
    assert!(busy.contains("retry later"), "{busy}");
    drop(held);

    // An idle connection, and a keep-alive one after its answer, are closed
    // within the header-read timeout (10 s).
    let idle = TcpStream::connect(("127.0.0.1", d.port))
        .await
        .expect("connect");
    let (took, _) = closed_after(idle, Duration::from_secs(14))
        .await
        .expect("an idle connection stayed open over 14 s");
    // Held until the timeout, not refused.
    assert!(took >= Duration::from_secs(9), "closed after {took:?}");
    let keep_alive = hold(d.port, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("connect");
    let (took, answer) = closed_after(keep_alive, Duration::from_secs(14))
        .await
        .expect("a keep-alive connection stayed open over 14 s");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(took >= Duration::from_secs(9), "closed after {took:?}");
    eprintln!("idle connections closed after {took:?}");

    // The webhook body that never completed is answered 408 after 30 s.
    let (_, answer) = closed_after(
        first_body,
        Duration::from_secs(36).saturating_sub(body_started.elapsed()),
    )
    .await
    .expect("a stalled webhook body was kept over 36 s");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    let took = body_started.elapsed();
    assert!(took >= Duration::from_secs(29), "408 after {took:?}");

    // SIGTERM with 40 stalled clients (bodies and headers): exit within 15 s.
    let mut stalled = Vec::new();
    for _ in 0..20 {
        stalled.extend(hold(d.hooks, &partial_body).await);
        stalled.extend(hold(d.port, "GET /status HTTP/1.1\r\nHost: x\r\nX-Slow").await);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let code = d.guard.terminate().await;
    eprintln!("SIGTERM to exit: {:?}", started.elapsed());
    assert!(code.success(), "exit status {code}\n{}", d.log_text());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "SIGTERM took {:?}",
        started.elapsed()
    );
    drop(stalled);
}

#[tokio::test]
async fn status_texts_name_neither_the_api_server_nor_the_service_account() {
    // A ServiceAccount without any right: every reconcile is refused, naming
    // it and the server in the error the API server and client give.
    let namespace = control_plane().namespace("http-redact").await;
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
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    kubectl(&["-n", &namespace, "create", "serviceaccount", "nobody"]);
    let token = kubectl(&["-n", &namespace, "create", "token", "nobody"]);
    let admin =
        kube::config::Kubeconfig::read_from(control_plane().kubeconfig()).expect("kubeconfig");
    let cluster = admin
        .clusters
        .first()
        .and_then(|c| c.cluster.clone())
        .expect("a cluster");
    let server = cluster.server.clone().expect("a server URL");
    let authority = server
        .split("://")
        .nth(1)
        .expect("scheme")
        .trim_end_matches('/')
        .to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("nobody.kubeconfig");
    std::fs::write(
        &kubeconfig,
        json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "c", "cluster": cluster}],
            "users": [{"name": "nobody", "user": {"token": token}}],
            "contexts": [{"name": "nobody", "context": {"cluster": "c", "user": "nobody"}}],
            "current-context": "nobody",
        })
        .to_string(),
    )
    .expect("write");
    let d = start("http-redact", &kubeconfig, None);
    wait_for(
        "the refusal to be reported",
        Duration::from_secs(60),
        async || {
            status(d.port, &d.env).await.is_some_and(|s| {
                s["lastError"]
                    .as_str()
                    .is_some_and(|e| e.contains("permission denied") || e.contains("forbidden"))
            })
        },
    )
    .await;
    let shown = http(d.port, "GET", "/status", &[], "")
        .await
        .expect("status");
    assert!(!shown.contains("system:serviceaccount"), "{shown}");
    assert!(!shown.contains(&namespace), "{shown}");
    assert!(!shown.contains(&authority), "{shown}");
    assert!(shown.contains("permission denied by https://…:"), "{shown}");
    assert!(shown.contains("User \\\"[identity]\\\""), "{shown}");
    let metrics = http(d.port, "GET", "/metrics", &[], "")
        .await
        .expect("metrics");
    assert!(
        !metrics.contains(&authority) && !metrics.contains("nobody"),
        "{metrics}"
    );
    // The log keeps the full text for the operator.
    let log = d.log_text();
    assert!(log.contains("system:serviceaccount"), "{log}");
}

#[test]
fn the_webhook_listener_cannot_be_the_main_one() {
    let port = free_port();
    let out = Command::new(env!("CARGO_BIN_EXE_tenantsync"))
        .args(["run", "--repo", ".", "--env", "dev"])
        .arg(format!("--listen=127.0.0.1:{port}"))
        .arg(format!("--webhook-listen=127.0.0.1:{port}"))
        .output()
        .expect("tenantsync run");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("give the webhook a port of its own"),
        "{stderr}"
    );
}
