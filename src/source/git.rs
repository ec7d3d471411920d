//! Reading a Git revision into a [`SourceTree`], from a local repository or a
//! remote fetched into a cache.
//!
//! Revisions are read straight from the object database: no checkout, the
//! work tree (if any) is never looked at or changed. The guarantees are the
//! folder reader's: only `environments/` is read, hidden names are skipped,
//! oversize blobs are reported without being loaded, and anything that is not
//! a plain file (symlinks, submodules) is reported, not followed.
//!
//! Remotes are fetched into a bare repository per URL ([`RemoteCache`]), so
//! a long-running daemon clones once and then fetches. Every network step is
//! bounded: libgit2's timeout options are `unsafe fn`s (the crate forbids
//! `unsafe`), so the remote's TCP endpoint is probed first with a connect
//! timeout, and the fetch runs on its own thread, given up on when the
//! remote stays silent too long.

use std::fmt;
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use git2::{
    AutotagOption, CertificateCheckStatus, Cred, CredentialType, FetchOptions, FetchPrune,
    ObjectType, RemoteCallbacks, Repository, Tree,
};
use sha2::{Digest, Sha256};

use crate::repo::{MAX_FILE_BYTES, SourceTree};
use crate::validate::ENVIRONMENTS_DIR;

/// How long connecting to a remote may take before the fetch fails.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a remote may stay silent (no answer, no progress) before the
/// fetch is given up.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(12);

/// How long a whole fetch may take.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(300);

/// Refs a cache mirrors. Forced (`+`) so a force-pushed branch replaces the
/// cached one instead of failing the fetch.
const FETCH_REFSPECS: [&str; 2] = ["+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"];

/// Folder nesting read at most, as for folders.
const MAX_DEPTH: usize = 16;

/// The commit a [`SourceTree`] was read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revision {
    /// Full hex object id of the commit.
    pub commit: String,
    /// First line of the commit message.
    pub summary: String,
}

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("cannot open Git repository at {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: git2::Error,
    },
    #[error("revision `{rev}` not found in {repo}: {source}")]
    RevisionNotFound {
        rev: String,
        repo: String,
        #[source]
        source: git2::Error,
    },
    #[error("revision `{rev}` in {repo} is not a commit: {source}")]
    NotACommit {
        rev: String,
        repo: String,
        #[source]
        source: git2::Error,
    },
    #[error("cannot read commit {commit} in {repo}: {source}")]
    Read {
        commit: String,
        repo: String,
        #[source]
        source: git2::Error,
    },
    #[error("`{url}` is not a Git URL tenantsync can fetch: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("no Git cache folder: set XDG_CACHE_HOME or HOME")]
    NoCacheRoot,
    #[error("cannot prepare Git cache {dir}: {source}")]
    CacheIo {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot prepare Git cache {dir}: {source}")]
    CacheRepo {
        dir: PathBuf,
        #[source]
        source: git2::Error,
    },
    #[error("cannot fetch {url}: cannot connect to {endpoint} within {timeout:?}: {source}")]
    Unreachable {
        url: String,
        endpoint: String,
        timeout: Duration,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot fetch {url}: the remote did not answer for {timeout:?}")]
    Stalled { url: String, timeout: Duration },
    #[error("cannot fetch {url}: not finished within {timeout:?}")]
    FetchTimeout { url: String, timeout: Duration },
    #[error("cannot fetch {url}: {source}")]
    Fetch {
        url: String,
        #[source]
        source: git2::Error,
    },
}

/// Opens the repository containing `path` (a work tree, a folder inside
/// one, or a bare repository).
pub fn open_local(path: &Path) -> Result<Repository, GitError> {
    Repository::discover(path).map_err(|source| GitError::Open {
        path: path.to_path_buf(),
        source,
    })
}

/// Resolves `rev` (branch, tag, full or short commit id, `HEAD`,
/// `origin/main`, any `git rev-parse` expression) to a commit and reads the
/// `environments/**` files of its tree. Entries that cannot be read become
/// problems in the tree, as for folders.
pub fn read_tree(repo: &Repository, rev: &str) -> Result<(SourceTree, Revision), GitError> {
    let object = repo
        .revparse_single(rev)
        .map_err(|source| GitError::RevisionNotFound {
            rev: rev.to_string(),
            repo: describe(repo),
            source,
        })?;
    let commit = object
        .peel_to_commit()
        .map_err(|source| GitError::NotACommit {
            rev: rev.to_string(),
            repo: describe(repo),
            source,
        })?;
    let read_err = |source| GitError::Read {
        commit: commit.id().to_string(),
        repo: describe(repo),
        source,
    };
    let revision = Revision {
        commit: commit.id().to_string(),
        summary: commit
            .summary_bytes()
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .unwrap_or_default(),
    };
    let mut tree = SourceTree::new();
    let root = commit.tree().map_err(read_err)?;
    if let Some(entry) = root.get_name(ENVIRONMENTS_DIR)
        && entry.kind() == Some(ObjectType::Tree)
    {
        let envs = repo.find_tree(entry.id()).map_err(read_err)?;
        walk(repo, &envs, ENVIRONMENTS_DIR, &mut tree, 0);
    }
    Ok((tree, revision))
}

/// Git file modes (the `kind()` of a tree entry does not tell a symlink from
/// a file: both are blobs).
const MODE_TREE: i32 = 0o040_000;
const MODE_FILE: i32 = 0o100_644;
const MODE_EXECUTABLE: i32 = 0o100_755;
const MODE_SYMLINK: i32 = 0o120_000;
const MODE_SUBMODULE: i32 = 0o160_000;

fn walk(repo: &Repository, dir: &Tree<'_>, rel: &str, tree: &mut SourceTree, depth: usize) {
    if depth > MAX_DEPTH {
        tree.problem(rel, "folders nested more than 16 levels deep are not read");
        return;
    }
    for entry in dir.iter() {
        let Ok(name) = entry.name() else {
            tree.problem(
                rel,
                format!(
                    "file name {:?} is not UTF-8",
                    String::from_utf8_lossy(entry.name_bytes())
                ),
            );
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        let rel_path = format!("{rel}/{name}");
        match entry.filemode() {
            MODE_TREE => match repo.find_tree(entry.id()) {
                Ok(sub) => walk(repo, &sub, &rel_path, tree, depth + 1),
                Err(e) => tree.problem(&rel_path, format!("cannot read folder from Git: {e}")),
            },
            MODE_FILE | MODE_EXECUTABLE => read_blob(repo, entry.id(), &rel_path, tree),
            MODE_SYMLINK => tree.problem(&rel_path, "symlink in Git is not followed"),
            MODE_SUBMODULE => tree.problem(&rel_path, "submodule in Git is not followed"),
            mode => tree.problem(&rel_path, format!("Git entry of mode {mode:o} is not read")),
        }
    }
}

/// Checks the blob's size from its header first, so an oversize blob is
/// never loaded.
fn read_blob(repo: &Repository, id: git2::Oid, rel_path: &str, tree: &mut SourceTree) {
    let size = match repo.odb().and_then(|odb| odb.read_header(id)) {
        Ok((size, _)) => size,
        Err(e) => {
            tree.problem(rel_path, format!("cannot read from Git: {e}"));
            return;
        }
    };
    if size > MAX_FILE_BYTES {
        tree.problem(
            rel_path,
            format!("file is {size} bytes, over the {MAX_FILE_BYTES} byte limit for a declaration"),
        );
        return;
    }
    match repo.find_blob(id) {
        Ok(blob) => tree.insert(rel_path, blob.content().to_vec()),
        Err(e) => tree.problem(rel_path, format!("cannot read from Git: {e}")),
    }
}

/// How a repository is named in messages: its work tree, else its Git dir.
fn describe(repo: &Repository) -> String {
    repo.workdir()
        .unwrap_or_else(|| repo.path())
        .display()
        .to_string()
}

/// Whether `--repo` names a remote (`https://`, `http://`, `ssh://`,
/// `git://`, `file://`, or scp-like `user@host:path`) rather than a folder.
pub fn is_remote_url(s: &str) -> bool {
    if let Some((scheme, rest)) = s.split_once("://") {
        return scheme_port(scheme).is_some() && !rest.is_empty();
    }
    scp_like(s).is_some()
}

/// The default port of a supported scheme (`Some(None)` for `file`).
fn scheme_port(scheme: &str) -> Option<Option<u16>> {
    match scheme.to_ascii_lowercase().as_str() {
        "https" => Some(Some(443)),
        "http" => Some(Some(80)),
        "ssh" | "git+ssh" | "ssh+git" => Some(Some(22)),
        "git" => Some(Some(9418)),
        "file" => Some(None),
        _ => None,
    }
}

/// `user@host:path` (ssh without a scheme): `(host, path)`.
fn scp_like(s: &str) -> Option<(&str, &str)> {
    let (user_host, path) = s.split_once(':')?;
    let (user, host) = user_host.split_once('@')?;
    let ok = !user.is_empty() && !host.is_empty() && !path.is_empty() && !user_host.contains('/');
    ok.then_some((host, path))
}

/// The network endpoint (`host`, `port`) of a URL; `None` for `file://`.
fn endpoint(url: &str) -> Result<Option<(String, u16)>, GitError> {
    let bad = |reason: &str| GitError::BadUrl {
        url: redact(url),
        reason: reason.to_string(),
    };
    let Some((scheme, rest)) = url.split_once("://") else {
        return match scp_like(url) {
            Some((host, _)) => Ok(Some((host.to_string(), 22))),
            None => Err(bad(
                "expected https://, http://, ssh://, git://, file:// or user@host:path",
            )),
        };
    };
    let Some(default_port) = scheme_port(scheme).ok_or_else(|| bad("unsupported scheme"))? else {
        return Ok(None);
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = if let Some(v6) = host_port.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| bad("unclosed `[` in host"))?;
        (host, after.strip_prefix(':'))
    } else {
        match host_port.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (host_port, None),
        }
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    let port = match port {
        Some(p) if !p.is_empty() => p.parse().map_err(|_| bad("port is not a number"))?,
        _ => default_port,
    };
    Ok(Some((host.to_string(), port)))
}

/// The URL with any password or token in it masked, for messages.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            let masked = if userinfo.contains(':') { ":***" } else { "" };
            format!("{scheme}://{user}{masked}@{host}{path}")
        }
        None => url.to_string(),
    }
}

/// Credentials for a remote. Secrets are never printed (`Debug` masks them).
#[derive(Clone, Default)]
pub enum Auth {
    /// Anonymous (public https, `git://`, `file://`; ssh with the agent is
    /// not used).
    #[default]
    None,
    /// https with a username and a token (or password).
    Token { username: String, token: String },
    /// ssh with a private key file. The host key is checked against
    /// `~/.ssh/known_hosts` by libgit2; an unknown host is refused.
    SshKey {
        /// Used when the URL names no user (`ssh://host/..`); `git` if empty.
        username: String,
        private_key: PathBuf,
        passphrase: Option<String>,
    },
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Auth::None => f.write_str("Auth::None"),
            Auth::Token { username, .. } => f
                .debug_struct("Auth::Token")
                .field("username", username)
                .field("token", &"***")
                .finish(),
            Auth::SshKey {
                username,
                private_key,
                passphrase,
            } => f
                .debug_struct("Auth::SshKey")
                .field("username", username)
                .field("private_key", private_key)
                .field("passphrase", &passphrase.as_ref().map(|_| "***"))
                .finish(),
        }
    }
}

/// Bare mirrors of remotes, one folder per URL, under one cache root.
#[derive(Clone, Debug)]
pub struct RemoteCache {
    dir: PathBuf,
}

impl RemoteCache {
    /// A cache under `dir` (created on first fetch).
    pub fn new(dir: impl Into<PathBuf>) -> RemoteCache {
        RemoteCache { dir: dir.into() }
    }

    /// The default cache: `${XDG_CACHE_HOME:-~/.cache}/tenantsync/git`.
    pub fn at_default_location() -> Result<RemoteCache, GitError> {
        let base = std::env::var_os("XDG_CACHE_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME")
                    .filter(|v| !v.is_empty())
                    .map(|h| PathBuf::from(h).join(".cache"))
            })
            .ok_or(GitError::NoCacheRoot)?;
        Ok(RemoteCache::new(base.join("tenantsync").join("git")))
    }

    /// The bare repository a URL is cached in: the URL's last path component
    /// (for people looking at the folder) and a hash of the URL without its
    /// credentials.
    pub fn repo_dir(&self, url: &str) -> PathBuf {
        let public = redact(url).replace(":***@", "@");
        let hash = Sha256::digest(public.as_bytes());
        let hex: String = hash.iter().take(8).map(|b| format!("{b:02x}")).collect();
        let name: String = public
            .trim_end_matches('/')
            .rsplit(['/', ':'])
            .next()
            .unwrap_or_default()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .take(40)
            .collect();
        self.dir
            .join(format!("{}-{hex}", name.trim_start_matches('.')))
    }

    /// Brings the cache of `url` up to date and opens it: the first call
    /// clones (bare), later ones fetch all branches and tags, forced, and
    /// prune the deleted ones. Branch and tag names are then local names in
    /// the returned repository (`main`, `v1`), ready for [`read_tree`].
    pub fn fetch(&self, url: &str, auth: &Auth) -> Result<Repository, GitError> {
        let endpoint = endpoint(url)?;
        if let Some((host, port)) = &endpoint {
            probe(url, host, *port)?;
        }
        let dir = self.repo_dir(url);
        if let Ok(repo) = Repository::open_bare(&dir) {
            fetch_into(&dir, url, auth)?;
            return Ok(repo);
        }
        // Absent, or damaged (an interrupted first clone is never left
        // behind, so only outside damage): start afresh.
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|source| GitError::CacheIo {
                dir: dir.clone(),
                source,
            })?;
        }
        std::fs::create_dir_all(&self.dir).map_err(|source| GitError::CacheIo {
            dir: self.dir.clone(),
            source,
        })?;
        // Clone into a temporary folder renamed into place once complete,
        // so a failed first fetch leaves nothing half-made.
        let tmp = tempdir_in(&self.dir)?;
        Repository::init_bare(tmp.path()).map_err(|source| GitError::CacheRepo {
            dir: tmp.path().to_path_buf(),
            source,
        })?;
        fetch_into(tmp.path(), url, auth)?;
        let staged = tmp.keep();
        if let Err(source) = std::fs::rename(&staged, &dir) {
            let _ = std::fs::remove_dir_all(&staged);
            // Another fetch of the same URL finished first: use its clone.
            if !dir.exists() {
                return Err(GitError::CacheIo { dir, source });
            }
        }
        Repository::open_bare(&dir).map_err(|source| GitError::CacheRepo { dir, source })
    }
}

/// A folder removed on drop unless kept.
struct TempDir(Option<PathBuf>);

impl TempDir {
    fn path(&self) -> &Path {
        self.0.as_deref().unwrap_or(Path::new(""))
    }
    fn keep(mut self) -> PathBuf {
        self.0.take().unwrap_or_default()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

fn tempdir_in(parent: &Path) -> Result<TempDir, GitError> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let path = parent.join(format!(".tmp-{}-{nanos}", std::process::id()));
    std::fs::create_dir(&path).map_err(|source| GitError::CacheIo {
        dir: path.clone(),
        source,
    })?;
    Ok(TempDir(Some(path)))
}

/// Fails fast when nothing answers at the remote's address: libgit2 would
/// otherwise wait for the system's TCP timeout (minutes).
fn probe(url: &str, host: &str, port: u16) -> Result<(), GitError> {
    let endpoint = format!("{host}:{port}");
    let unreachable = |source| GitError::Unreachable {
        url: redact(url),
        endpoint: endpoint.clone(),
        timeout: CONNECT_TIMEOUT,
        source,
    };
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    let addrs = (host, port).to_socket_addrs().map_err(unreachable)?;
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "host has no address");
    for addr in addrs {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            last = std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out");
            break;
        }
        match TcpStream::connect_timeout(&addr, left) {
            Ok(_) => return Ok(()),
            Err(e) => last = e,
        }
    }
    Err(unreachable(last))
}

/// Tracks a fetch running on its own thread: when it last heard from the
/// remote, and whether the caller gave up on it.
struct Watch {
    start: Instant,
    /// Milliseconds from `start` to the last callback from libgit2.
    last_heard: AtomicU64,
    abandoned: AtomicBool,
}

impl Watch {
    /// Notes that the remote answered; `false` once the caller gave up, which
    /// makes libgit2 abort at this callback.
    fn heard(&self) -> bool {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_heard.store(ms, Ordering::Relaxed);
        !self.abandoned.load(Ordering::Relaxed)
    }

    fn silent_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_heard.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }
}

/// Fetches into the repository at `dir`, bounded in time. libgit2 has no
/// safe read timeout, so the fetch runs on a thread of its own and is given
/// up on when the remote is silent for [`STALL_TIMEOUT`] or the fetch takes
/// longer than [`FETCH_TIMEOUT`]. A given-up thread aborts at libgit2's next
/// callback (before updating any ref); one blocked on a dead connection
/// lingers until the system drops the connection.
fn fetch_into(dir: &Path, url: &str, auth: &Auth) -> Result<(), GitError> {
    let watch = Arc::new(Watch {
        start: Instant::now(),
        last_heard: AtomicU64::new(0),
        abandoned: AtomicBool::new(false),
    });
    let (tx, rx) = mpsc::channel();
    let job = (
        dir.to_path_buf(),
        url.to_string(),
        auth.clone(),
        Arc::clone(&watch),
    );
    std::thread::Builder::new()
        .name("git-fetch".into())
        .spawn(move || {
            let (dir, url, auth, watch) = job;
            let _ = tx.send(fetch_blocking(&dir, &url, &auth, &watch));
        })
        .map_err(|source| GitError::CacheIo {
            dir: dir.to_path_buf(),
            source,
        })?;
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(result) => return result,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(GitError::Fetch {
                    url: redact(url),
                    source: git2::Error::from_str("the fetch thread ended without a result"),
                });
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let error = if watch.silent_for() > STALL_TIMEOUT {
                    GitError::Stalled {
                        url: redact(url),
                        timeout: STALL_TIMEOUT,
                    }
                } else if watch.start.elapsed() > FETCH_TIMEOUT {
                    GitError::FetchTimeout {
                        url: redact(url),
                        timeout: FETCH_TIMEOUT,
                    }
                } else {
                    continue;
                };
                watch.abandoned.store(true, Ordering::Relaxed);
                return Err(error);
            }
        }
    }
}

fn fetch_blocking(dir: &Path, url: &str, auth: &Auth, watch: &Watch) -> Result<(), GitError> {
    let fetch_err = |source| GitError::Fetch {
        url: redact(url),
        source,
    };
    let repo = Repository::open_bare(dir).map_err(|source| GitError::CacheRepo {
        dir: dir.to_path_buf(),
        source,
    })?;
    let mut callbacks = RemoteCallbacks::new();
    let mut attempts = 0;
    callbacks.credentials(move |_url, username_from_url, allowed| {
        if !watch.heard() {
            return Err(git2::Error::from_str("fetch given up"));
        }
        // libgit2 asks again after a refused credential: answer once.
        attempts += 1;
        if attempts > 1 {
            return Err(git2::Error::from_str("the remote refused the credentials"));
        }
        credentials(auth, username_from_url, allowed)
    });
    callbacks.certificate_check(|_, _| {
        if watch.heard() {
            // libgit2's own checks (CA store, ~/.ssh/known_hosts) decide.
            Ok(CertificateCheckStatus::CertificatePassthrough)
        } else {
            Err(git2::Error::from_str("fetch given up"))
        }
    });
    callbacks.transfer_progress(|_| watch.heard());
    callbacks.sideband_progress(|_| watch.heard());
    callbacks.update_tips(|_, _, _| watch.heard());
    let mut options = FetchOptions::new();
    options
        .remote_callbacks(callbacks)
        .prune(FetchPrune::On)
        .download_tags(AutotagOption::None);
    let mut remote = repo.remote_anonymous(url).map_err(fetch_err)?;
    remote
        .fetch(&FETCH_REFSPECS, Some(&mut options), None)
        .map_err(fetch_err)?;
    // Follow the remote's default branch, so `HEAD` means what it means there.
    if let Ok(head) = remote.default_branch()
        && let Ok(head) = head.as_str()
    {
        repo.set_head(head).map_err(fetch_err)?;
    }
    Ok(())
}

fn credentials(
    auth: &Auth,
    username_from_url: Option<&str>,
    allowed: CredentialType,
) -> Result<Cred, git2::Error> {
    match auth {
        Auth::Token { username, token }
            if allowed.contains(CredentialType::USER_PASS_PLAINTEXT) =>
        {
            Cred::userpass_plaintext(username, token)
        }
        Auth::SshKey {
            username,
            private_key,
            passphrase,
        } => {
            let user = username_from_url
                .filter(|u| !u.is_empty())
                .or(Some(username.as_str()).filter(|u| !u.is_empty()))
                .unwrap_or("git");
            if allowed.contains(CredentialType::USERNAME) {
                return Cred::username(user);
            }
            if allowed.contains(CredentialType::SSH_KEY) {
                return Cred::ssh_key(user, None, private_key, passphrase.as_deref());
            }
            Err(git2::Error::from_str(
                "the remote asks for credentials other than an ssh key",
            ))
        }
        Auth::Token { .. } => Err(git2::Error::from_str(
            "the remote asks for credentials other than a username and token",
        )),
        Auth::None => Err(git2::Error::from_str(
            "the remote asks for credentials and none were given",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_urls_from_folders() {
        for url in [
            "https://example.com/org/repo.git",
            "http://127.0.0.1:8080/repo",
            "ssh://git@example.com:2222/org/repo.git",
            "git://127.0.0.1:9418/repo.git",
            "file:///srv/git/repo.git",
            "git@example.com:org/repo.git",
        ] {
            assert!(is_remote_url(url), "{url}");
        }
        for path in [
            ".",
            "repo",
            "/srv/repo",
            "./a:b",
            "C:/x",
            "ftp://x/y",
            "https://",
        ] {
            assert!(!is_remote_url(path), "{path}");
        }
    }

    #[test]
    fn finds_endpoints() {
        let ep = |u| endpoint(u).ok().flatten();
        assert_eq!(ep("https://h/r"), Some(("h".into(), 443)));
        assert_eq!(ep("https://u:t@h:8443/r"), Some(("h".into(), 8443)));
        assert_eq!(ep("git://[::1]:9/r"), Some(("::1".into(), 9)));
        assert_eq!(ep("git@h:org/r"), Some(("h".into(), 22)));
        assert_eq!(ep("file:///r"), None);
        assert!(endpoint("https://h:x/r").is_err());
    }

    #[test]
    fn masks_secrets() {
        assert_eq!(redact("https://me:s3cret@h/r"), "https://me:***@h/r");
        assert_eq!(redact("ssh://git@h/r"), "ssh://git@h/r");
        let auth = Auth::Token {
            username: "me".into(),
            token: "s3cret".into(),
        };
        assert!(!format!("{auth:?}").contains("s3cret"));
        let cache = RemoteCache::new("/c");
        assert_eq!(
            cache.repo_dir("https://me:a@h/org/repo.git"),
            cache.repo_dir("https://me:b@h/org/repo.git")
        );
        assert!(cache.repo_dir("https://h/org/repo.git").starts_with("/c"));
    }
}
