//! The daemon's read-only status page, end to end: the daemon against the
//! real control plane, its pages loaded in Debian's headless Chromium
//! through chromedriver (WebDriver). The environment list, a workspace
//! showing a field a `kubectl scale` drifted, a failed workspace's error,
//! a hostile value shown and not run, keyboard focus, phone width and dark
//! mode.
//!
//! `TENANTSYNC_UPDATE_SCREENSHOTS=1` writes the screenshots the same test
//! takes (each page at a phone's and a desktop's width, light and dark)
//! into `docs/status-page/`; without it nothing is written.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

use crate::daemon_e2e::{Guard, free_port, http, status, wait_for};
use crate::support::repo::TestRepo;
use crate::support::{control_plane, git};

/// A workspace whose declaration carries markup: its error names the
/// unknown field, so the page shows the markup as text.
const HOSTILE_FIELD: &str = "<script>document.title='pwned'</script>";

/// Phone (an iPhone 12's CSS viewport) and desktop widths.
const SIZES: [(&str, u32, u32); 2] = [("phone", 390, 844), ("desktop", 1280, 900)];

fn chromedriver(port: u16) -> Guard {
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver (Debian's chromium-driver; .ci/run installs it)");
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "chromedriver did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Guard(child)
}

/// A headless Chromium session; `dark`: the system prefers dark colours.
async fn browser(driver: u16, dark: bool) -> Client {
    let mut args = vec![
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--window-size=1280,900",
    ];
    if dark {
        args.push("--blink-settings=preferredColorScheme=0");
    } else {
        args.push("--blink-settings=preferredColorScheme=1");
    }
    let capabilities = json!({
        "browserName": "chrome",
        "goog:chromeOptions": { "binary": "/usr/bin/chromium", "args": args },
    });
    let Value::Object(capabilities) = capabilities else {
        unreachable!()
    };
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&format!("http://127.0.0.1:{driver}"))
        .await
        .expect("a WebDriver session")
}

async fn text(c: &Client, css: &str) -> String {
    let url = c.current_url().await.map(|u| u.to_string());
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no `{css}` on {url:?}: {e}"))
        .text()
        .await
        .expect("text")
}

async fn eval(c: &Client, script: &str) -> Value {
    c.execute(script, vec![]).await.expect("execute")
}

fn screenshots_dir() -> Option<PathBuf> {
    std::env::var_os("TENANTSYNC_UPDATE_SCREENSHOTS")
        .filter(|v| v == "1")
        .map(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/status-page"))
}

/// Loads `url` at each width: the page must fit the width (tables scroll
/// in their own box) and is screenshotted.
async fn at_each_width(c: &Client, url: &str, name: &str, theme: &str, out: Option<&Path>) {
    for (size, width, height) in SIZES {
        c.set_window_size(width, height).await.expect("resize");
        c.goto(url).await.expect("goto");
        let overflow = eval(
            c,
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth",
        )
        .await;
        assert_eq!(
            overflow,
            json!(0),
            "{url} is wider than a {width}px {size} screen"
        );
        let png = c.screenshot().await.expect("screenshot");
        assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot of {url}");
        if let Some(dir) = out {
            std::fs::create_dir_all(dir).expect("mkdir docs/status-page");
            std::fs::write(dir.join(format!("{name}-{size}-{theme}.png")), png)
                .expect("write screenshot");
        }
    }
    c.set_window_size(1280, 900).await.expect("resize");
}

fn start_daemon(repo: &TestRepo, port: u16, log: &Path) -> Guard {
    let child = Command::new(env!("CARGO_BIN_EXE_tenantsync"))
        .args([
            "run",
            "--env",
            &repo.env,
            "--interval",
            "1s",
            "--branch",
            "main",
        ])
        .args(["--drift-interval", "2s"])
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

#[tokio::test]
async fn the_status_page_shows_environments_drift_and_errors_in_a_real_browser() {
    let repo = TestRepo::new("status-page");
    let env = repo.env.clone();
    repo.write(
        "workspaces/hostile.yaml",
        &format!(
            "apiVersion: tenantsync.io/v1alpha1\nkind: Workspace\nmetadata:\n  name: hostile\nspec:\n  fhirServices:\n    - name: api\n      \"{HOSTILE_FIELD}\": 1\n"
        ),
    );
    // A Git source: the page shows the applied commit's subject and author.
    git(repo.path(), &["init", "-q"]);
    git(repo.path(), &["add", "-A"]);
    git(
        repo.path(),
        &[
            "commit",
            "-qm",
            "Onboard contoso",
            "--author",
            "Ada Lovelace <ada@example.com>",
        ],
    );
    let commit = git(repo.path(), &["rev-parse", "HEAD"]);
    let port = free_port();
    let log = tempfile::NamedTempFile::new().expect("log");
    let _daemon = start_daemon(&repo, port, log.path());
    let log_text = || std::fs::read_to_string(log.path()).unwrap_or_default();
    wait_for(
        "the first sync, with workspace hostile held",
        Duration::from_secs(90),
        async || {
            status(port, &env).await.is_some_and(|s| {
                s["lastAppliedRevision"].is_string()
                    && s["workspaces"]["hostile"]["syncStatus"] == "Failed"
                    && s["workspaces"]["contoso"]["objects"].is_array()
            })
        },
    )
    .await;

    // Drift by hand: the daemon (without self-heal) reports it.
    let ns = repo.namespace("contoso");
    let scale = control_plane()
        .kubectl()
        .args(["--context", "admin", "-n", &ns, "scale"])
        .args(["deployment/fhir-main", "--replicas=5"])
        .output()
        .expect("kubectl");
    assert!(scale.status.success(), "{scale:?}");
    wait_for(
        "the drift in /status",
        Duration::from_secs(30),
        async || {
            status(port, &env)
                .await
                .is_some_and(|s| s["workspaces"]["contoso"]["driftedObjects"] == 1)
        },
    )
    .await;
    // At least two reconciles for the timeline.
    wait_for("two reconciles", Duration::from_secs(30), async || {
        status(port, &env).await.is_some_and(|s| {
            s["recentReconciles"]
                .as_array()
                .is_some_and(|r| r.len() >= 2)
        })
    })
    .await;

    let driver_port = free_port();
    let _driver = chromedriver(driver_port);
    let c = browser(driver_port, false).await;
    let base = format!("http://127.0.0.1:{port}");

    // The environment list: this environment, its status and counts, linked.
    c.goto(&format!("{base}/")).await.expect("goto /");
    assert_eq!(c.title().await.expect("title"), "Environments · tenantsync");
    let row = text(&c, "tbody tr").await;
    assert!(row.contains(&env), "{row}");
    assert!(row.contains("Failed"), "the held workspace fails it: {row}");
    assert!(
        row.contains(&format!("{} Onboard contoso by Ada Lovelace", &commit[..7])),
        "{row}"
    );
    // Keyboard: the first Tab reaches the skip link, which leads to the
    // content.
    c.find(Locator::Css("body"))
        .await
        .expect("body")
        .send_keys("\u{E004}")
        .await
        .expect("Tab");
    let focused = c.active_element().await.expect("focus");
    assert_eq!(focused.text().await.expect("text"), "Skip to content");
    // The link an alert would point at.
    c.find(Locator::LinkText(&env))
        .await
        .expect("a link to the environment")
        .click()
        .await
        .expect("click");
    assert_eq!(
        c.current_url().await.expect("url").path(),
        format!("/environments/{env}")
    );

    // The environment: the timeline, one bar per reconcile, and its
    // workspaces.
    let bars = c
        .find_all(Locator::Css("svg.timeline rect"))
        .await
        .expect("bars");
    assert!(bars.len() >= 2, "{} bars", bars.len());
    let workspaces = text(&c, "#workspaces + div table").await;
    assert!(workspaces.contains("contoso"), "{workspaces}");
    assert!(workspaces.contains("hostile"), "{workspaces}");

    // A workspace with a drifted field: path, live value, declared value,
    // who changed it.
    c.goto(&format!("{base}/environments/{env}/workspaces/contoso"))
        .await
        .expect("goto contoso");
    let changes = text(&c, "#changes + div table").await;
    assert!(
        changes.contains("Deployment/") && changes.contains("fhir-main"),
        "{changes}"
    );
    let drifted_row = changes
        .lines()
        .find(|l| l.contains("spec.replicas"))
        .unwrap_or_else(|| panic!("no spec.replicas row: {changes}"));
    assert!(drifted_row.contains(" 5 "), "live value 5: {drifted_row}");
    assert!(drifted_row.contains("kubectl"), "changed by: {drifted_row}");
    let objects = text(&c, "#objects + div table").await;
    assert!(objects.contains("in sync"), "{objects}");
    // Health as listed: the namespace Active, the scaled Deployment
    // Progressing (the test control plane has no nodes to run its pods).
    let namespace_row = objects
        .lines()
        .find(|l| l.starts_with("Namespace"))
        .unwrap_or_else(|| panic!("no Namespace row: {objects}"));
    assert!(namespace_row.contains("Healthy Active"), "{namespace_row}");
    let deployment_row = objects
        .lines()
        .find(|l| l.starts_with("Deployment") && l.contains("fhir-main"))
        .unwrap_or_else(|| panic!("no fhir-main row: {objects}"));
    assert!(deployment_row.contains("Progressing"), "{deployment_row}");

    // A failed workspace: its error with file:line:col, the hostile field
    // shown as text, never run.
    c.goto(&format!("{base}/environments/{env}/workspaces/hostile"))
        .await
        .expect("goto hostile");
    let errors = text(&c, "#errors ~ pre").await;
    assert!(
        errors.contains(&format!("environments/{env}/workspaces/hostile.yaml:8:")),
        "{errors}"
    );
    assert!(errors.contains(HOSTILE_FIELD), "shown as text: {errors}");
    assert_eq!(
        c.title().await.expect("title"),
        format!("Workspace hostile in {env} · tenantsync")
    );
    assert_eq!(
        eval(&c, "return document.querySelectorAll('script').length").await,
        json!(0)
    );

    // An unknown workspace: a 404 page, not an empty one.
    let missing = http(
        port,
        "GET",
        &format!("/environments/{env}/workspaces/nope"),
        &[],
        "",
    )
    .await
    .expect("answer");
    assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");

    // Each page fits a phone's width; screenshots on request.
    let out = screenshots_dir();
    let pages = [
        ("environments", format!("{base}/")),
        ("environment", format!("{base}/environments/{env}")),
        (
            "workspace-drifted",
            format!("{base}/environments/{env}/workspaces/contoso"),
        ),
        (
            "workspace-failed",
            format!("{base}/environments/{env}/workspaces/hostile"),
        ),
    ];
    for (name, url) in &pages {
        at_each_width(&c, url, name, "light", out.as_deref()).await;
    }
    let light = eval(&c, "return getComputedStyle(document.body).backgroundColor").await;
    c.close().await.expect("close");

    // Dark mode: the system's preference gives dark colours.
    let c = browser(driver_port, true).await;
    c.goto(&format!("{base}/")).await.expect("goto /");
    let dark = eval(&c, "return getComputedStyle(document.body).backgroundColor").await;
    assert_eq!(light, json!("rgb(255, 255, 255)"));
    assert_eq!(dark, json!("rgb(13, 17, 23)"), "{}", log_text());
    for (name, url) in &pages {
        at_each_width(&c, url, name, "dark", out.as_deref()).await;
    }
    c.close().await.expect("close");
}

#[tokio::test]
async fn ui_false_serves_no_page_and_status_still_answers() {
    // No cluster needed: the endpoints answer before any reconcile.
    let repo = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let _daemon = Guard(
        Command::new(env!("CARGO_BIN_EXE_tenantsync"))
            .args(["run", "--env", "dev", "--ui=false", "--repo"])
            .arg(repo.path())
            .arg(format!("--listen=127.0.0.1:{port}"))
            .args(["--kubeconfig", "/nonexistent/tenantsync-kubeconfig"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tenantsync run"),
    );
    wait_for(
        "the daemon to listen",
        Duration::from_secs(20),
        async || http(port, "GET", "/healthz", &[], "").await.is_some(),
    )
    .await;
    let root = http(port, "GET", "/", &[], "").await.expect("answer");
    assert!(root.starts_with("HTTP/1.1 404"), "{root}");
    assert!(!root.contains("<html"), "{root}");
    let env = http(port, "GET", "/environments/dev", &[], "")
        .await
        .expect("answer");
    assert!(env.starts_with("HTTP/1.1 404"), "{env}");
    assert!(http(port, "GET", "/status", &[], "").await.is_some());
}

#[tokio::test]
async fn the_page_forbids_scripts_and_framing_and_is_never_cached() {
    let repo = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let _daemon = Guard(
        Command::new(env!("CARGO_BIN_EXE_tenantsync"))
            .args(["run", "--env", "dev", "--repo"])
            .arg(repo.path())
            .arg(format!("--listen=127.0.0.1:{port}"))
            .args(["--kubeconfig", "/nonexistent/tenantsync-kubeconfig"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tenantsync run"),
    );
    wait_for(
        "the daemon to listen",
        Duration::from_secs(20),
        async || http(port, "GET", "/healthz", &[], "").await.is_some(),
    )
    .await;
    let head = raw_head(port, "/").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(
        lower.contains("content-type: text/html; charset=utf-8"),
        "{head}"
    );
    assert!(
        lower.contains("content-security-policy: default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"),
        "{head}"
    );
    assert!(lower.contains("cache-control: no-store"), "{head}");
    let missing = raw_head(port, "/environments/prod").await;
    assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
}

/// The status line and headers of a GET.
async fn raw_head(port: u16, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .expect("write");
    let mut out = String::new();
    stream.read_to_string(&mut out).await.expect("read");
    out.split("\r\n\r\n").next().unwrap_or_default().to_string()
}
