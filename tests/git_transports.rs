//! Git over ssh and https as users run it: the `tenantsync` binary against
//! real servers on loopback started by each test (tests/support/git_servers.rs:
//! OpenSSH's sshd, nginx + fcgiwrap + `git http-backend` over TLS with a CA
//! made for the test). Credentials and settings come from the environment,
//! as for users; HOME is a temp dir, so `~/.ssh/known_hosts` is the test's.

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::daemon_e2e::{Guard, free_port, status, wait_for};
use crate::support::git;
use crate::support::git_servers::{GitHttps, Sshd, TestCa, current_user, ssh_keygen};

/// Every variable tenantsync's Git source reads, cleared so the caller's
/// environment never leaks in.
const GIT_VARS: [&str; 8] = [
    "TENANTSYNC_GIT_TOKEN",
    "TENANTSYNC_GIT_TOKEN_FILE",
    "TENANTSYNC_GIT_USERNAME",
    "TENANTSYNC_GIT_SSH_KEY",
    "TENANTSYNC_GIT_SSH_PASSPHRASE",
    "TENANTSYNC_GIT_KNOWN_HOSTS",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
];

/// An environment no repository here declares: `plan` fetches, reads the
/// revision, reports the environment missing and stops before the cluster.
const NO_SUCH_ENV: &str = "not-declared";

/// A bare repository `root/repo.git` with one commit; returns its id.
fn served_repo(root: &Path) -> String {
    std::fs::create_dir_all(root).unwrap();
    let work = root.join("work");
    std::fs::create_dir_all(work.join("environments/base")).unwrap();
    std::fs::write(
        work.join("environments/base/environment.yaml"),
        "apiVersion: tenantsync.io/v1alpha1\nkind: Environment\nmetadata:\n  name: base\nspec: {}\n",
    )
    .unwrap();
    git(&work, &["init", "-q", "-b", "main"]);
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-qm", "first"]);
    let commit = git(&work, &["rev-parse", "HEAD"]);
    git(
        root,
        &[
            "clone",
            "-q",
            "--bare",
            work.to_str().unwrap(),
            root.join("repo.git").to_str().unwrap(),
        ],
    );
    commit
}

/// `tenantsync plan --repo URL` with only `vars` set (HOME and the cache in
/// `home`).
fn tenantsync_fetch(url: &str, home: &Path, vars: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tenantsync"));
    cmd.args(["plan", "--repo", url, "--env", NO_SUCH_ENV, "--kubeconfig"])
        .arg(home.join("no-kubeconfig"))
        .env("HOME", home)
        .env("XDG_CACHE_HOME", home.join("cache"))
        .stdin(Stdio::null());
    for var in GIT_VARS {
        cmd.env_remove(var);
    }
    for (k, v) in vars {
        cmd.env(k, v);
    }
    cmd.output().expect("run tenantsync")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The commit `main` has in the cache under `home` (the only cached repo).
fn cached_main(home: &Path) -> Option<String> {
    let cache = home.join("cache/tenantsync/git");
    for entry in std::fs::read_dir(cache).ok()? {
        let path = entry.ok()?.path();
        let out = Command::new("git")
            .arg("--git-dir")
            .arg(&path)
            .args(["rev-parse", "main"])
            .output()
            .ok()?;
        if out.status.success() {
            return Some(String::from_utf8_lossy(&out.stdout).trim().to_string());
        }
    }
    None
}

/// The fetch worked: the revision was read (the missing environment is what
/// stopped `plan`) and the cache holds the served commit.
#[track_caller]
fn assert_fetched(out: &Output, home: &Path, commit: &str) {
    let err = stderr(out);
    assert!(!err.contains("cannot fetch"), "{err}");
    assert!(err.contains(NO_SUCH_ENV), "{err}");
    assert_eq!(cached_main(home).as_deref(), Some(commit), "{err}");
}

#[track_caller]
fn assert_fails_with(out: &Output, url_shown: &str, words: &[&str]) -> String {
    assert_eq!(out.status.code(), Some(1), "{}", stderr(out));
    let err = stderr(out);
    assert!(
        err.contains(&format!("cannot fetch {url_shown}: ")),
        "{err}"
    );
    for w in words {
        assert!(err.contains(w), "expected {w:?} in: {err}");
    }
    // The cause is said once, not repeated ("X: X").
    let reason = err
        .split_once(&format!("cannot fetch {url_shown}: "))
        .map(|(_, r)| r.trim())
        .unwrap_or_default()
        .to_string();
    let half = reason.len() / 2;
    assert!(
        reason.len() < 20 || !reason[half..].contains(&reason[..half.min(40)]),
        "repeated cause: {err}"
    );
    err
}

fn home() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[test]
fn ssh_fetches_with_and_without_a_user_in_the_url_with_every_key_type() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("served");
    let commit = served_repo(&root);
    let keys = tmp.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let ed25519 = ssh_keygen(&keys, "id_ed25519", "ed25519", "");
    let rsa = ssh_keygen(&keys, "id_rsa", "rsa", "");
    let ecdsa = ssh_keygen(&keys, "id_ecdsa", "ecdsa", "");
    let locked = ssh_keygen(&keys, "id_locked", "ed25519", "open sesame");
    let stranger = ssh_keygen(&keys, "id_stranger", "ed25519", "");
    let sshd = Sshd::start(&tmp.path().join("sshd"), &[&ed25519, &rsa, &ecdsa, &locked]);
    let user = current_user();
    let known_hosts = tmp.path().join("known_hosts");
    std::fs::write(&known_hosts, &sshd.known_hosts_line).unwrap();
    let kh = known_hosts.to_str().unwrap();
    let path = root.join("repo.git");
    let with_user = format!("ssh://{user}@127.0.0.1:{}{}", sshd.port, path.display());
    let without_user = format!("ssh://127.0.0.1:{}{}", sshd.port, path.display());

    for key in [&ed25519, &rsa, &ecdsa] {
        let key = key.to_str().unwrap();
        let h = home();
        let out = tenantsync_fetch(
            &with_user,
            h.path(),
            &[
                ("TENANTSYNC_GIT_SSH_KEY", key),
                ("TENANTSYNC_GIT_KNOWN_HOSTS", kh),
            ],
        );
        assert_fetched(&out, h.path(), &commit);
        // No user in the URL: TENANTSYNC_GIT_USERNAME is the ssh user.
        let h = home();
        let out = tenantsync_fetch(
            &without_user,
            h.path(),
            &[
                ("TENANTSYNC_GIT_SSH_KEY", key),
                ("TENANTSYNC_GIT_USERNAME", &user),
                ("TENANTSYNC_GIT_KNOWN_HOSTS", kh),
            ],
        );
        assert_fetched(&out, h.path(), &commit);
    }

    // ~/.ssh/known_hosts when TENANTSYNC_GIT_KNOWN_HOSTS is not set; a
    // token set beside the key does not get in the way of ssh.
    let h = home();
    std::fs::create_dir_all(h.path().join(".ssh")).unwrap();
    std::fs::write(h.path().join(".ssh/known_hosts"), &sshd.known_hosts_line).unwrap();
    let out = tenantsync_fetch(
        &with_user,
        h.path(),
        &[
            ("TENANTSYNC_GIT_SSH_KEY", ed25519.to_str().unwrap()),
            ("TENANTSYNC_GIT_TOKEN", "an-https-token"),
        ],
    );
    assert_fetched(&out, h.path(), &commit);

    // A passphrase-protected key: right, missing, wrong.
    let locked_key = locked.to_str().unwrap();
    let h = home();
    let out = tenantsync_fetch(
        &without_user,
        h.path(),
        &[
            ("TENANTSYNC_GIT_SSH_KEY", locked_key),
            ("TENANTSYNC_GIT_SSH_PASSPHRASE", "open sesame"),
            ("TENANTSYNC_GIT_USERNAME", &user),
            ("TENANTSYNC_GIT_KNOWN_HOSTS", kh),
        ],
    );
    assert_fetched(&out, h.path(), &commit);
    let shown = format!("ssh://***@127.0.0.1:{}{}", sshd.port, path.display());
    let out = tenantsync_fetch(
        &with_user,
        home().path(),
        &[
            ("TENANTSYNC_GIT_SSH_KEY", locked_key),
            ("TENANTSYNC_GIT_KNOWN_HOSTS", kh),
        ],
    );
    assert_fails_with(
        &out,
        &shown,
        &[
            locked_key,
            "protected by a passphrase",
            "TENANTSYNC_GIT_SSH_PASSPHRASE",
        ],
    );
    let out = tenantsync_fetch(
        &with_user,
        home().path(),
        &[
            ("TENANTSYNC_GIT_SSH_KEY", locked_key),
            ("TENANTSYNC_GIT_SSH_PASSPHRASE", "wrong"),
            ("TENANTSYNC_GIT_KNOWN_HOSTS", kh),
        ],
    );
    let err = assert_fails_with(
        &out,
        &shown,
        &[locked_key, "wrong TENANTSYNC_GIT_SSH_PASSPHRASE"],
    );
    assert!(!err.contains("Unsupported"), "{err}");

    // A key the server does not know: refused quickly, naming key and user.
    let start = Instant::now();
    let out = tenantsync_fetch(
        &with_user,
        home().path(),
        &[
            ("TENANTSYNC_GIT_SSH_KEY", stranger.to_str().unwrap()),
            ("TENANTSYNC_GIT_KNOWN_HOSTS", kh),
        ],
    );
    assert_fails_with(
        &out,
        &shown,
        &[
            "refused the ssh key",
            stranger.to_str().unwrap(),
            &format!("user `{user}`"),
        ],
    );
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );

    // ~/.ssh/config is not read, and an scp-like URL is port 22: a host
    // alias defined there (with the right port, user and key) is not found.
    let h = home();
    std::fs::create_dir_all(h.path().join(".ssh")).unwrap();
    std::fs::write(
        h.path().join(".ssh/config"),
        format!(
            "Host tenantsync-alias.invalid\n  HostName 127.0.0.1\n  Port {}\n  User {user}\n  IdentityFile {}\n",
            sshd.port,
            ed25519.display()
        ),
    )
    .unwrap();
    std::fs::write(h.path().join(".ssh/known_hosts"), &sshd.known_hosts_line).unwrap();
    let scp = format!("{user}@tenantsync-alias.invalid:{}", path.display());
    let out = tenantsync_fetch(
        &scp,
        h.path(),
        &[("TENANTSYNC_GIT_SSH_KEY", ed25519.to_str().unwrap())],
    );
    assert_fails_with(
        &out,
        &format!("***@tenantsync-alias.invalid:{}", path.display()),
        &["cannot connect to tenantsync-alias.invalid:22"],
    );

    // A missing key file is named.
    let missing = tmp.path().join("no-such-key");
    let out = tenantsync_fetch(
        &with_user,
        home().path(),
        &[
            ("TENANTSYNC_GIT_SSH_KEY", missing.to_str().unwrap()),
            ("TENANTSYNC_GIT_KNOWN_HOSTS", kh),
        ],
    );
    assert_fails_with(
        &out,
        &shown,
        &["cannot read the ssh key", missing.to_str().unwrap()],
    );
}

#[test]
fn unknown_and_changed_ssh_host_keys_are_refused_before_any_key_is_offered() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("served");
    served_repo(&root);
    let keys = tmp.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let key = ssh_keygen(&keys, "id_ed25519", "ed25519", "");
    let sshd = Sshd::start(&tmp.path().join("sshd"), &[&key]);
    let url = format!(
        "ssh://{}@127.0.0.1:{}{}",
        current_user(),
        sshd.port,
        root.join("repo.git").display()
    );
    let shown = format!(
        "ssh://***@127.0.0.1:{}{}",
        sshd.port,
        root.join("repo.git").display()
    );

    // Unknown: the file has no key for the host (other hosts only).
    let known_hosts = tmp.path().join("known_hosts");
    std::fs::write(
        &known_hosts,
        "example.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n",
    )
    .unwrap();
    let vars = [
        ("TENANTSYNC_GIT_SSH_KEY", key.to_str().unwrap()),
        ("TENANTSYNC_GIT_KNOWN_HOSTS", known_hosts.to_str().unwrap()),
    ];
    let out = tenantsync_fetch(&url, home().path(), &vars);
    let unknown = assert_fails_with(
        &out,
        &shown,
        &[
            "is unknown",
            known_hosts.to_str().unwrap(),
            &format!("[127.0.0.1]:{}", sshd.port),
            "SHA256:",
            "ssh-keyscan",
        ],
    );
    assert!(!unknown.contains("CHANGED"), "{unknown}");

    // Changed: the file holds another ed25519 key for this host and port.
    let other = ssh_keygen(&keys, "other_host", "ed25519", "");
    let other_pub = std::fs::read_to_string(other.with_extension("pub")).unwrap();
    let other_key = other_pub.split_whitespace().nth(1).unwrap();
    std::fs::write(
        &known_hosts,
        format!("[127.0.0.1]:{} ssh-ed25519 {other_key}\n", sshd.port),
    )
    .unwrap();
    let out = tenantsync_fetch(&url, home().path(), &vars);
    let changed = assert_fails_with(
        &out,
        &shown,
        &["has CHANGED", "intercepting", known_hosts.to_str().unwrap()],
    );
    assert!(!changed.contains("is unknown"), "{changed}");

    // A key of another type for this host (the server offers ed25519) is
    // not taken for a changed key: the host is unknown for that type.
    let ecdsa = ssh_keygen(&keys, "other_ecdsa", "ecdsa", "");
    let ecdsa_pub = std::fs::read_to_string(ecdsa.with_extension("pub")).unwrap();
    let mut fields = ecdsa_pub.split_whitespace();
    let (kind, blob) = (fields.next().unwrap(), fields.next().unwrap());
    std::fs::write(
        &known_hosts,
        format!("[127.0.0.1]:{} {kind} {blob}\n", sshd.port),
    )
    .unwrap();
    let out = tenantsync_fetch(&url, home().path(), &vars);
    assert_fails_with(&out, &shown, &["is unknown", "has no ssh-ed25519 key"]);

    // No key was ever offered to the server.
    let log = sshd.log();
    assert!(!log.contains("publickey"), "{log}");

    // With the right line the same fetch works.
    std::fs::write(&known_hosts, &sshd.known_hosts_line).unwrap();
    let h = home();
    let out = tenantsync_fetch(&url, h.path(), &vars);
    assert!(!stderr(&out).contains("cannot fetch"), "{}", stderr(&out));
}

const TOKEN: &str = "S3cr3t-T0ken-4-tests";

/// The https server with users `deploy` (password `TOKEN`) and `TOKEN`
/// (empty password: a token as the user part of the URL).
fn https_server(tmp: &Path) -> (GitHttps, TestCa, String) {
    let root = tmp.join("served");
    let commit = served_repo(&root);
    let ca = TestCa::new(&tmp.join("ca"));
    let server = GitHttps::start(
        &tmp.join("nginx"),
        &ca,
        &root,
        &[("deploy", TOKEN), (TOKEN, "")],
    );
    (server, ca, commit)
}

#[test]
fn https_with_a_token_basic_auth_and_a_private_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let (server, ca, commit) = https_server(tmp.path());
    let ca_file = ca.cert.to_str().unwrap();
    let private = format!("https://127.0.0.1:{}/private/repo.git", server.port);
    let public = format!("https://127.0.0.1:{}/public/repo.git", server.port);

    // The private CA through SSL_CERT_FILE: anonymous, token, basic auth.
    let h = home();
    let out = tenantsync_fetch(&public, h.path(), &[("SSL_CERT_FILE", ca_file)]);
    assert_fetched(&out, h.path(), &commit);
    let h = home();
    let out = tenantsync_fetch(
        &private,
        h.path(),
        &[
            ("SSL_CERT_FILE", ca_file),
            ("TENANTSYNC_GIT_USERNAME", "deploy"),
            ("TENANTSYNC_GIT_TOKEN", TOKEN),
        ],
    );
    assert_fetched(&out, h.path(), &commit);
    let token_file = tmp.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let h = home();
    let out = tenantsync_fetch(
        &private,
        h.path(),
        &[
            ("SSL_CERT_FILE", ca_file),
            ("TENANTSYNC_GIT_USERNAME", "deploy"),
            ("TENANTSYNC_GIT_TOKEN_FILE", token_file.to_str().unwrap()),
        ],
    );
    assert_fetched(&out, h.path(), &commit);
    let h = home();
    let basic = format!(
        "https://deploy:{TOKEN}@127.0.0.1:{}/private/repo.git",
        server.port
    );
    let out = tenantsync_fetch(&basic, h.path(), &[("SSL_CERT_FILE", ca_file)]);
    assert_fetched(&out, h.path(), &commit);
    // Credentials in the URL win over the token of the environment.
    let h = home();
    let out = tenantsync_fetch(
        &basic,
        h.path(),
        &[
            ("SSL_CERT_FILE", ca_file),
            ("TENANTSYNC_GIT_TOKEN", "another-token"),
        ],
    );
    assert_fetched(&out, h.path(), &commit);
    // An ssh key set beside does not get in the way of https.
    let h = home();
    let out = tenantsync_fetch(
        &private,
        h.path(),
        &[
            ("SSL_CERT_FILE", ca_file),
            ("TENANTSYNC_GIT_USERNAME", "deploy"),
            ("TENANTSYNC_GIT_TOKEN", TOKEN),
            ("TENANTSYNC_GIT_SSH_KEY", "/nonexistent/id_ed25519"),
        ],
    );
    assert_fetched(&out, h.path(), &commit);

    // Wrong credentials fail within a second or two, saying where they came from.
    let start = Instant::now();
    let out = tenantsync_fetch(
        &private,
        home().path(),
        &[
            ("SSL_CERT_FILE", ca_file),
            ("TENANTSYNC_GIT_USERNAME", "deploy"),
            ("TENANTSYNC_GIT_TOKEN", "wrong"),
        ],
    );
    assert_fails_with(
        &out,
        &private,
        &[
            "refused the credentials",
            "TENANTSYNC_GIT_TOKEN",
            "`deploy`",
        ],
    );
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    let wrong_in_url = format!(
        "https://deploy:wrong@127.0.0.1:{}/private/repo.git",
        server.port
    );
    let out = tenantsync_fetch(&wrong_in_url, home().path(), &[("SSL_CERT_FILE", ca_file)]);
    let shown = format!("https://***@127.0.0.1:{}/private/repo.git", server.port);
    let err = assert_fails_with(&out, &shown, &["refused the credentials", "in the URL"]);
    assert!(!err.contains("none were given"), "{err}");
    let out = tenantsync_fetch(&private, home().path(), &[("SSL_CERT_FILE", ca_file)]);
    assert_fails_with(&out, &private, &["none were given", "TENANTSYNC_GIT_TOKEN"]);

    // A missing token file is named.
    let missing = tmp.path().join("no-such-token");
    let out = tenantsync_fetch(
        &private,
        home().path(),
        &[("TENANTSYNC_GIT_TOKEN_FILE", missing.to_str().unwrap())],
    );
    let err = stderr(&out);
    assert!(
        err.contains("TENANTSYNC_GIT_TOKEN_FILE") && err.contains(missing.to_str().unwrap()),
        "{err}"
    );

    // Untrusted: the CA is not in the store without SSL_CERT_FILE; the
    // credentials are never sent.
    let before = server.access_log();
    let out = tenantsync_fetch(
        &private,
        home().path(),
        &[
            ("TENANTSYNC_GIT_USERNAME", "deploy"),
            ("TENANTSYNC_GIT_TOKEN", TOKEN),
        ],
    );
    assert_fails_with(
        &out,
        &private,
        &["certificate", "not trusted", "SSL_CERT_FILE"],
    );
    assert_eq!(server.access_log(), before, "a request got through");

    // A certificate made for another address.
    let wrong_ip = format!("https://127.0.0.1:{}/public/repo.git", server.wrong_ip_port);
    let out = tenantsync_fetch(&wrong_ip, home().path(), &[("SSL_CERT_FILE", ca_file)]);
    let err = assert_fails_with(&out, &wrong_ip, &["certificate is not made for 127.0.0.1"]);
    assert!(!err.contains("early EOF"), "{err}");
}

/// Every file under `dir`, read as bytes.
fn files_under(dir: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files_under(&path, out);
        } else if let Ok(bytes) = std::fs::read(&path) {
            out.push((path, bytes));
        }
    }
}

#[track_caller]
fn assert_no_token(what: &str, haystack: &[u8]) {
    let hay = String::from_utf8_lossy(haystack);
    assert!(!hay.contains(TOKEN), "the token appears in {what}: {hay}");
}

#[tokio::test]
async fn a_token_in_the_url_never_appears_in_output_logs_status_or_the_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let (server, ca, commit) = https_server(tmp.path());
    let ca_file = ca.cert.to_str().unwrap();
    let url = format!("https://{TOKEN}@127.0.0.1:{}/private/repo.git", server.port);
    let shown = format!("https://***@127.0.0.1:{}/private/repo.git", server.port);

    // The CLI: a fetch that works (the cache is grepped), and ones that fail.
    let h = home();
    let out = tenantsync_fetch(&url, h.path(), &[("SSL_CERT_FILE", ca_file)]);
    assert_fetched(&out, h.path(), &commit);
    assert_no_token("plan's output", &[out.stdout, out.stderr].concat());
    let mut cached = Vec::new();
    files_under(&h.path().join("cache"), &mut cached);
    assert!(!cached.is_empty());
    for (path, bytes) in &cached {
        assert_no_token(
            &path.display().to_string(),
            path.to_string_lossy().as_bytes(),
        );
        assert_no_token(&path.display().to_string(), bytes);
    }
    let missing = format!(
        "https://{TOKEN}@127.0.0.1:{}/private/missing.git",
        server.port
    );
    let out = tenantsync_fetch(&missing, home().path(), &[("SSL_CERT_FILE", ca_file)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no repository at this URL"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("https://***@127.0.0.1"),
        "{}",
        stderr(&out)
    );
    assert_no_token("plan's output", &[out.stdout, out.stderr].concat());
    let out = tenantsync_fetch(&url, home().path(), &[]);
    assert!(
        stderr(&out).contains(&format!("cannot fetch {shown}")),
        "{}",
        stderr(&out)
    );
    assert_no_token("plan's output", &[out.stdout, out.stderr].concat());

    // The daemon: every log line and /status.
    let h = home();
    let port = free_port();
    let log = h.path().join("daemon.log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tenantsync"));
    cmd.args([
        "run",
        "--repo",
        &missing,
        "--env",
        NO_SUCH_ENV,
        "--interval",
        "1s",
    ])
    .arg(format!("--listen=127.0.0.1:{port}"))
    .arg("--kubeconfig")
    .arg(h.path().join("no-kubeconfig"))
    .env("HOME", h.path())
    .env("XDG_CACHE_HOME", h.path().join("cache"))
    .env("SSL_CERT_FILE", ca_file)
    .stdout(Stdio::null())
    .stderr(std::fs::File::create(&log).unwrap());
    for var in GIT_VARS.iter().filter(|v| **v != "SSL_CERT_FILE") {
        cmd.env_remove(var);
    }
    let mut daemon = Guard(cmd.spawn().expect("tenantsync run"));
    let mut last_error = String::new();
    wait_for("two failed polls", Duration::from_secs(30), async || {
        let Some(s) = status(port, NO_SUCH_ENV).await else {
            return false;
        };
        last_error = s["lastError"].as_str().unwrap_or_default().to_string();
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.matches("reconcile failed").count() >= 2
    })
    .await;
    // /status also hides the host and port (the daemon's redaction).
    assert!(
        last_error.contains("cannot fetch https://…/private/missing.git"),
        "{last_error}"
    );
    let full_status = crate::daemon_e2e::http(port, "GET", "/status", &[], "")
        .await
        .unwrap();
    assert_no_token("/status", full_status.as_bytes());
    daemon.terminate().await;
    let text = std::fs::read(&log).unwrap();
    assert!(String::from_utf8_lossy(&text).contains("***@127.0.0.1"));
    assert_no_token("the daemon's log", &text);
    let mut cached = Vec::new();
    files_under(&h.path().join("cache"), &mut cached);
    for (path, bytes) in &cached {
        assert_no_token(&path.display().to_string(), bytes);
    }
}

#[test]
fn credentials_never_follow_a_redirect_to_another_host() {
    let tmp = tempfile::tempdir().unwrap();
    let (server, ca, _) = https_server(tmp.path());
    let ca_file = ca.cert.to_str().unwrap();
    let redirect = format!("https://127.0.0.1:{}/redirect/repo.git", server.port);
    let out = tenantsync_fetch(
        &redirect,
        home().path(),
        &[
            ("SSL_CERT_FILE", ca_file),
            ("TENANTSYNC_GIT_USERNAME", "deploy"),
            ("TENANTSYNC_GIT_TOKEN", TOKEN),
        ],
    );
    assert_fails_with(&out, &redirect, &["redirected", "127.0.0.2"]);
    let in_url = format!(
        "https://deploy:{TOKEN}@127.0.0.1:{}/redirect/repo.git",
        server.port
    );
    let out = tenantsync_fetch(&in_url, home().path(), &[("SSL_CERT_FILE", ca_file)]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("redirected"), "{}", stderr(&out));

    // Behind basic auth: the first host gets the credentials, then
    // redirects; the second host must not get them.
    let authenticated = format!(
        "https://127.0.0.1:{}/authenticated-redirect/repo.git",
        server.port
    );
    let out = tenantsync_fetch(
        &authenticated,
        home().path(),
        &[
            ("SSL_CERT_FILE", ca_file),
            ("TENANTSYNC_GIT_USERNAME", "deploy"),
            ("TENANTSYNC_GIT_TOKEN", TOKEN),
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("redirected"), "{}", stderr(&out));
    let first = server.access_log();
    assert!(
        first
            .lines()
            .any(|l| l.contains("/authenticated-redirect/repo.git/info/refs")
                && l.contains(" 302 authorization=\"Basic ")),
        "the first host did not redirect an authenticated request: {first}"
    );

    // The second host was reached, and never saw credentials.
    let seen = server.second_host_log();
    assert!(seen.contains("/private/repo.git"), "{seen}");
    assert!(
        seen.lines().all(|l| l.ends_with("authorization=\"-\"")),
        "{seen}"
    );
    assert!(!seen.contains("Basic"), "{seen}");
}

#[test]
fn credentials_are_never_sent_over_plain_http() {
    // Nothing listens on this port: the refusal comes before any connection.
    let port = free_port();
    let url = format!("http://{TOKEN}@127.0.0.1:{port}/repo.git");
    let out = tenantsync_fetch(&url, home().path(), &[]);
    let err = assert_fails_with(
        &out,
        &format!("http://***@127.0.0.1:{port}/repo.git"),
        &["never sent over plain http://", "https://"],
    );
    assert!(!err.contains(TOKEN), "{err}");
    let url = format!("http://127.0.0.1:{port}/repo.git");
    let out = tenantsync_fetch(&url, home().path(), &[("TENANTSYNC_GIT_TOKEN", TOKEN)]);
    assert_fails_with(
        &out,
        &url,
        &["never sent over plain http://", "TENANTSYNC_GIT_TOKEN"],
    );
}

/// A TCP server that accepts connections and never answers, counting the
/// connections its peers still hold open.
fn silent_server() -> (u16, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let open = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let (o, m) = (Arc::clone(&open), Arc::clone(&most));
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let now = o.fetch_add(1, Ordering::SeqCst) + 1;
            m.fetch_max(now, Ordering::SeqCst);
            let o = Arc::clone(&o);
            std::thread::spawn(move || {
                let mut stream = stream;
                let mut buf = [0u8; 1024];
                // Reads what the client sends, answers nothing, and notes
                // when the client closes.
                while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
                o.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (port, open, most)
}

/// Threads and open file descriptors of a process.
fn threads_and_fds(pid: u32) -> (usize, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let threads = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    (threads, fds)
}

#[tokio::test]
async fn a_silent_server_polled_for_a_minute_leaves_threads_and_connections_flat() {
    let (silent, open, most) = silent_server();
    let h = home();
    let port = free_port();
    let log = h.path().join("daemon.log");
    let url = format!("git://127.0.0.1:{silent}/repo.git");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tenantsync"));
    // Two environments of one repository: one fetch in flight, shared.
    cmd.args(["run", "--repo", &url, "--env", "one", "--env", "two"])
        .args(["--interval", "1s"])
        .arg(format!("--listen=127.0.0.1:{port}"))
        .arg("--kubeconfig")
        .arg(h.path().join("no-kubeconfig"))
        .env("HOME", h.path())
        .env("XDG_CACHE_HOME", h.path().join("cache"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    for var in GIT_VARS {
        cmd.env_remove(var);
    }
    let mut daemon = Guard(cmd.spawn().expect("tenantsync run"));
    let pid = daemon.0.id();
    wait_for(
        "the first given-up fetch",
        Duration::from_secs(30),
        async || {
            status(port, "one")
                .await
                .and_then(|s| {
                    s["lastError"]
                        .as_str()
                        .map(|e| e.contains("did not answer"))
                })
                .unwrap_or(false)
        },
    )
    .await;
    let start = Instant::now();
    let mut first_half = (0, 0);
    let mut second_half = (0, 0);
    // The fewest file descriptors open at any sample: the resting level,
    // which a leak raises whatever the timing of the fetches.
    let mut resting = (usize::MAX, usize::MAX);
    while start.elapsed() < Duration::from_secs(60) {
        let (t, f) = threads_and_fds(pid);
        let first = start.elapsed() < Duration::from_secs(30);
        let half = if first {
            &mut first_half
        } else {
            &mut second_half
        };
        half.0 = half.0.max(t);
        half.1 = half.1.max(f);
        if first {
            resting.0 = resting.0.min(f);
        } else {
            resting.1 = resting.1.min(f);
        }
        assert!(
            open.load(Ordering::SeqCst) <= 2,
            "{} connections open to the silent server",
            open.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let given_up = text.matches("did not answer").count();
    assert!(given_up >= 4, "only {given_up} given-up polls: {text}");
    assert!(
        second_half.0 <= first_half.0,
        "threads grew: {first_half:?} then {second_half:?}"
    );
    // A fetch given up closes what it opened: the resting level does not
    // grow, and the peak (a fetch starting while the last one's socket is
    // still closing, on a loaded machine) by at most one.
    assert!(
        resting.1 <= resting.0 && second_half.1 <= first_half.1 + 1,
        "file descriptors grew: at rest {resting:?}, at most {first_half:?} then {second_half:?}"
    );
    assert!(
        most.load(Ordering::SeqCst) <= 2,
        "{}",
        most.load(Ordering::SeqCst)
    );
    // Stopping does not wait for the fetch in flight to be given up.
    wait_for("a fetch in flight", Duration::from_secs(20), async || {
        open.load(Ordering::SeqCst) > 0
    })
    .await;
    let stopping = Instant::now();
    let status = daemon.terminate().await;
    assert!(status.success(), "{status}");
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "took {:?} to stop",
        stopping.elapsed()
    );
    // Once the daemon is gone, every connection it made is closed.
    let closed = Instant::now();
    while open.load(Ordering::SeqCst) > 0 {
        assert!(
            closed.elapsed() < Duration::from_secs(5),
            "a connection outlived the daemon"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_revision_not_found_names_the_url_not_the_cache_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("served");
    served_repo(&root);
    let url = format!("file://{}", root.join("repo.git").display());
    let h = home();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tenantsync"));
    let out = cmd
        .args(["plan", "--repo", &url, "--rev", "v9", "--env", NO_SUCH_ENV])
        .arg("--kubeconfig")
        .arg(h.path().join("no-kubeconfig"))
        .env("HOME", h.path())
        .env("XDG_CACHE_HOME", h.path().join("cache"))
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("revision `v9` not found in {url}: ")),
        "{err}"
    );
    assert!(!err.contains("cache"), "{err}");
}

/// The `tenantsync` process never contacts a remote itself (its fetches run
/// in a fetch helper, which reads `SSL_CERT_FILE` as the user set it:
/// `https_with_a_token_basic_auth_and_a_private_ca`), so it starts libgit2
/// without reading the CA bundle, which was a quarter of the CPU of a
/// one-workspace pull request's plan. A FIFO as `SSL_CERT_FILE` blocks
/// whoever opens it for reading, as the bundle was read before.
#[test]
fn a_plan_of_a_local_repository_does_not_read_the_ca_bundle() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("served");
    served_repo(&root);
    let fifo = tmp.path().join("ca.pem");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success(), "mkfifo {}", fifo.display());
    let h = home();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tenantsync"));
    cmd.args(["plan", "--changed-since", "HEAD", "--env", NO_SUCH_ENV])
        .arg("--repo")
        .arg(root.join("work"))
        .arg("--kubeconfig")
        .arg(h.path().join("no-kubeconfig"))
        .env("HOME", h.path())
        .env("XDG_CACHE_HOME", h.path().join("cache"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for var in GIT_VARS {
        cmd.env_remove(var);
    }
    let mut child = cmd.env("SSL_CERT_FILE", &fifo).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("the plan blocked opening SSL_CERT_FILE (a FIFO) for 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("environment `{NO_SUCH_ENV}` not found")),
        "{err}"
    );
}
