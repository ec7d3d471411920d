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
//! timeout, and the fetch runs on a thread of its own, given up on when the
//! remote stays silent too long. A given-up thread blocked on a silent
//! connection cannot be stopped from outside, so the `tenantsync` binary runs
//! each fetch in a child process of its own ([`use_fetch_helper`]), which
//! ends (closing its connection) when the fetch is given up; and at most one
//! fetch per cache folder is in flight at a time.
//!
//! Secrets: any user information in a URL is masked ([`redact`]) wherever
//! the URL is shown; credentials are sent only to the URL's own scheme, host
//! and port (never after a redirect to another host) and never over plain
//! `http://`; ssh host keys are checked against a `known_hosts` file before
//! any credential is offered.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use base64::Engine as _;
use git2::{
    AutotagOption, CertificateCheckStatus, Cred, CredentialType, ErrorClass, ErrorCode,
    FetchOptions, FetchPrune, ObjectType, RemoteCallbacks, Repository, Tree,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::declare::repo::{MAX_FILE_BYTES, SourceTree};
use crate::declare::validate::{self, ENVIRONMENTS_DIR};

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
    /// The commit's author's name.
    pub author: String,
}

/// What went wrong reading from Git. Messages name the repository (a URL
/// with any user information masked, or a folder) and say what to do; the
/// underlying cause is part of the message, not repeated as a source.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("cannot open Git repository at {path}: {cause}")]
    Open { path: PathBuf, cause: String },
    #[error(
        "revision `{rev}` not found in {repo}: name a branch, a tag or a commit id that exists there"
    )]
    RevisionNotFound {
        rev: String,
        repo: String,
        cause: String,
    },
    #[error("revision `{rev}` in {repo} is not a commit: {cause}")]
    NotACommit {
        rev: String,
        repo: String,
        cause: String,
    },
    #[error("cannot read commit {commit} in {repo}: {cause}")]
    Read {
        commit: String,
        repo: String,
        cause: String,
    },
    #[error("`{url}` is not a Git URL tenantsync can fetch: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("no Git cache folder: set XDG_CACHE_HOME or HOME")]
    NoCacheRoot,
    #[error("cannot prepare Git cache {dir}: {cause}")]
    CacheIo { dir: PathBuf, cause: std::io::Error },
    #[error("cannot prepare Git cache {dir}: {cause}")]
    CacheRepo { dir: PathBuf, cause: String },
    #[error("cannot fetch {url}: cannot connect to {endpoint} within {timeout:?}: {cause}")]
    Unreachable {
        url: String,
        endpoint: String,
        timeout: Duration,
        cause: std::io::Error,
    },
    #[error("cannot fetch {url}: the remote did not answer for {timeout:?}")]
    Stalled { url: String, timeout: Duration },
    #[error("cannot fetch {url}: not finished within {timeout:?}")]
    FetchTimeout { url: String, timeout: Duration },
    #[error(
        "cannot fetch {url}: credentials are never sent over plain http:// ({origin} given): use the https:// URL, or for an anonymous remote give none"
    )]
    InsecureCredentials { url: String, origin: String },
    #[error("cannot fetch {url}: {reason}")]
    Fetch { url: String, reason: String },
    /// The outcome of a fetch of the same URL that was in flight when this
    /// one was asked for, shared rather than fetched again.
    #[error("{0}")]
    Shared(Arc<GitError>),
    /// An error's message alone (a shared copy).
    #[error("{0}")]
    Message(String),
}

impl GitError {
    /// The error with the repository named `name` (the URL a cache was
    /// fetched from, rather than the cache folder).
    pub fn naming(self, name: &str) -> GitError {
        match self {
            GitError::RevisionNotFound { rev, cause, .. } => GitError::RevisionNotFound {
                rev,
                repo: name.to_string(),
                cause,
            },
            GitError::NotACommit { rev, cause, .. } => GitError::NotACommit {
                rev,
                repo: name.to_string(),
                cause,
            },
            GitError::Read { commit, cause, .. } => GitError::Read {
                commit,
                repo: name.to_string(),
                cause,
            },
            other => other,
        }
    }
}

/// Starts git2 and libgit2 (once per process: later calls, and their
/// start on first use, do nothing). git2 first points `SSL_CERT_FILE` and
/// `SSL_CERT_DIR` at the system's certificates where they are unset or
/// name nothing (`openssl_probe`, which sets environment variables: from
/// here, while the process has one thread, not from the first Git read of
/// a daemon's worker), then libgit2 fixes OpenSSL's trusted certificates
/// for HTTPS remotes from them, loading the whole CA file at once (about
/// 25 ms of CPU with Debian's bundle). The `tenantsync` binary starts it
/// with both pointing at nothing, since its fetches run in a fetch helper
/// ([`use_fetch_helper`]), a process of its own that loads them;
/// src/main.rs.
pub fn start() {
    drop(git2::Buf::new());
}

/// Opens the repository containing `path` (a work tree, a folder inside
/// one, or a bare repository).
pub fn open_local(path: &Path) -> Result<Repository, GitError> {
    Repository::discover(path).map_err(|e| GitError::Open {
        path: path.to_path_buf(),
        cause: e.message().to_string(),
    })
}

/// Resolves `rev` (branch, tag, full or short commit id, `HEAD`,
/// `origin/main`, any `git rev-parse` expression) to a commit and reads the
/// `environments/**` files of its tree. Entries that cannot be read become
/// problems in the tree, as for folders.
pub fn read_tree(repo: &Repository, rev: &str) -> Result<(SourceTree, Revision), GitError> {
    let commit = commit_of(repo, rev)?;
    let revision = Revision {
        commit: commit.id().to_string(),
        summary: commit
            .summary_bytes()
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .unwrap_or_default(),
        author: String::from_utf8_lossy(commit.author().name_bytes()).into_owned(),
    };
    let mut tree = SourceTree::new();
    walk_environments(repo, &commit, &mut tree, &mut |id, path, tree| {
        read_blob(repo, id, path, tree);
    })?;
    Ok((tree, revision))
}

/// The paths of `environments/` whose content differs between revision
/// `rev` and `tree` (added, removed or changed), in order: what a pull
/// request changes since its base ([`base_files`], then [`changed_from`]).
pub fn changed_since(
    repo: &Repository,
    rev: &str,
    tree: &SourceTree,
) -> Result<Vec<String>, GitError> {
    Ok(changed_from(base_files(repo, rev)?, tree))
}

/// The files of `environments/` at revision `rev`, by path: their Git blob
/// ids, not their content (see [`changed_from`]). Resolving `rev` first
/// lets a revision that does not exist be reported before anything else
/// is read.
pub fn base_files(repo: &Repository, rev: &str) -> Result<BTreeMap<String, git2::Oid>, GitError> {
    let commit = commit_of(repo, rev)?;
    let mut ids: BTreeMap<String, git2::Oid> = BTreeMap::new();
    // What a read of `rev` would report as a problem is no file of it.
    walk_environments(repo, &commit, &mut SourceTree::new(), &mut |id, path, _| {
        ids.insert(path.to_string(), id);
    })?;
    Ok(ids)
}

/// The paths whose content differs between the files `base` names
/// ([`base_files`]) and `tree` (added, removed or changed), in order.
/// Compared by Git blob id (`tree`'s files hashed as Git hashes them), so
/// no file of the base is read: at 5,000 workspaces, reading them was
/// about 10% of a one-workspace plan's CPU (docs/benchmarks.md).
/// A file `tree` holds unread ([`SourceTree::defer`]) is one the base
/// holds unchanged ([`unchanged_in_work_tree`]).
pub fn changed_from(mut base: BTreeMap<String, git2::Oid>, tree: &SourceTree) -> Vec<String> {
    let mut changed: Vec<String> = Vec::new();
    for path in tree.paths() {
        let same = base.remove(path).is_some_and(|id| {
            tree.is_deferred(path)
                || git2::Oid::hash_object(ObjectType::Blob, tree.get(path).unwrap_or_default())
                    .is_ok_and(|hashed| hashed == id)
        });
        if !same {
            changed.push(path.to_string());
        }
    }
    changed.extend(base.into_keys());
    changed.sort_unstable();
    changed
}

/// The workspace files of `base` (from [`base_files`]) that the work
/// tree of `repo` holds unchanged since revision `rev`, by Git's own
/// account: a diff of `rev`'s tree with the work tree through the index,
/// which takes a file whose size and times match its index entry as the
/// index's blob without reading it (and reads one changed within the
/// index's own second, as `git status` does). These need not be read or
/// hashed by a plan of what changed (a one-workspace pull request at 5,000
/// workspaces: 5,000 files). Only plain files (a symlink is read, as the
/// folder reader checks where it leads) of at most the size limit (an
/// oversize one is read, to be reported; so is one whose index entry has
/// no size). Git's word is not taken where it can differ from the bytes
/// a full read compares: an entry marked `assume-unchanged` or
/// `skip-worktree` (Git does not look at the file), and any repository
/// where attributes or `core.autocrlf` may convert line endings or filter
/// content (Git compares the converted text). `None` when Git cannot tell
/// or is not trusted: then every file is read.
pub fn unchanged_in_work_tree(
    repo: &Repository,
    rev: &str,
    base: &BTreeMap<String, git2::Oid>,
) -> Option<BTreeSet<String>> {
    if may_convert(repo) {
        return None;
    }
    let tree = commit_of(repo, rev).ok()?.tree().ok()?;
    let index = repo.index().ok()?;
    if index.iter().any(|e| is_attributes_file(&e.path)) {
        return None;
    }
    let mut options = git2::DiffOptions::new();
    options
        .pathspec(format!("{ENVIRONMENTS_DIR}/"))
        .include_untracked(true)
        .recurse_untracked_dirs(true)
        .include_ignored(true)
        .recurse_ignored_dirs(true)
        .include_typechange(true)
        .ignore_submodules(true);
    let diff = repo
        .diff_tree_to_workdir_with_index(Some(&tree), Some(&mut options))
        .ok()?;
    let mut touched: BTreeSet<&[u8]> = BTreeSet::new();
    for delta in diff.deltas() {
        for file in [delta.old_file(), delta.new_file()] {
            if let Some(path) = file.path_bytes() {
                // An untracked .gitattributes among the declarations.
                if is_attributes_file(path) {
                    return None;
                }
                touched.insert(path);
            }
        }
    }
    let unchanged = base
        .iter()
        .filter(|(path, id)| {
            validate::is_workspace_file(path)
                && !touched.contains(path.as_bytes())
                && index
                    .get_path(Path::new(path.as_str()), 0)
                    .is_some_and(|entry| {
                        entry.id == **id
                            && entry.file_size > 0
                            && (entry.file_size as usize) <= MAX_FILE_BYTES
                            && entry.flags & git2::IndexEntryFlag::VALID.bits() == 0
                            && entry.flags_extended
                                & git2::IndexEntryExtendedFlag::SKIP_WORKTREE.bits()
                                == 0
                    })
        })
        .map(|(path, _)| path.clone())
        .collect();
    Some(unchanged)
}

/// Whether `path` names a `.gitattributes` file.
fn is_attributes_file(path: &[u8]) -> bool {
    path == b".gitattributes" || path.ends_with(b"/.gitattributes")
}

/// Whether Git may compare a work-tree file after converting it
/// (`core.autocrlf`, or attributes from outside the index: the work tree's
/// root, the repository's `info/attributes`, `core.attributesFile` or the
/// user's default attributes file). Tracked `.gitattributes` files are
/// looked for in the index. An unreadable configuration counts as yes.
fn may_convert(repo: &Repository) -> bool {
    let Ok(config) = repo.config() else {
        return true;
    };
    let autocrlf = config.get_string("core.autocrlf").unwrap_or_default();
    if !matches!(
        autocrlf.to_ascii_lowercase().as_str(),
        "" | "false" | "no" | "off" | "0"
    ) {
        return true;
    }
    let mut sources: Vec<PathBuf> = vec![repo.path().join("info").join("attributes")];
    if let Some(root) = repo.workdir() {
        sources.push(root.join(".gitattributes"));
    }
    match config.get_path("core.attributesFile") {
        Ok(path) => sources.push(path),
        Err(_) => {
            let base = std::env::var_os("XDG_CONFIG_HOME")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")));
            if let Some(base) = base {
                sources.push(base.join("git").join("attributes"));
            }
        }
    }
    sources.iter().any(|p| p.exists())
}

/// The commit `rev` names.
fn commit_of<'r>(repo: &'r Repository, rev: &str) -> Result<git2::Commit<'r>, GitError> {
    let object = repo
        .revparse_single(rev)
        .map_err(|e| GitError::RevisionNotFound {
            rev: rev.to_string(),
            repo: describe(repo),
            cause: e.message().to_string(),
        })?;
    object.peel_to_commit().map_err(|e| GitError::NotACommit {
        rev: rev.to_string(),
        repo: describe(repo),
        cause: e.message().to_string(),
    })
}

/// A file of a Git tree: its blob id and path, and the tree being read
/// (for its problems).
type OnBlob<'a> = dyn FnMut(git2::Oid, &str, &mut SourceTree) + 'a;

/// Walks `environments/` of `commit`: each file to `on_blob`, what is not
/// read to `tree`'s problems.
fn walk_environments(
    repo: &Repository,
    commit: &git2::Commit<'_>,
    tree: &mut SourceTree,
    on_blob: &mut OnBlob<'_>,
) -> Result<(), GitError> {
    let read_err = |e: git2::Error| GitError::Read {
        commit: commit.id().to_string(),
        repo: describe(repo),
        cause: e.message().to_string(),
    };
    let root = commit.tree().map_err(read_err)?;
    if let Some(entry) = root.get_name(ENVIRONMENTS_DIR)
        && entry.kind() == Some(ObjectType::Tree)
    {
        let envs = repo.find_tree(entry.id()).map_err(read_err)?;
        walk(repo, &envs, ENVIRONMENTS_DIR, tree, 0, on_blob);
    }
    Ok(())
}

/// Git file modes (the `kind()` of a tree entry does not tell a symlink from
/// a file: both are blobs).
const MODE_TREE: i32 = 0o040_000;
const MODE_FILE: i32 = 0o100_644;
const MODE_EXECUTABLE: i32 = 0o100_755;
const MODE_SYMLINK: i32 = 0o120_000;
const MODE_SUBMODULE: i32 = 0o160_000;

fn walk(
    repo: &Repository,
    dir: &Tree<'_>,
    rel: &str,
    tree: &mut SourceTree,
    depth: usize,
    on_blob: &mut OnBlob<'_>,
) {
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
        let rel_path = format!("{rel}/{name}");
        // A tree entry `..` or `.` (git mktree writes them; git fsck calls
        // them hasDotdot/hasDot) is hostile, not hidden: refused, as
        // SourceTree refuses such a path.
        if name == ".." || name == "." {
            tree.problem(
                &rel_path,
                "path with `..`, `.` or empty components is refused",
            );
            continue;
        }
        if name.starts_with('.') {
            continue;
        }
        match entry.filemode() {
            MODE_TREE => match repo.find_tree(entry.id()) {
                Ok(sub) => walk(repo, &sub, &rel_path, tree, depth + 1, on_blob),
                Err(e) => tree.problem(&rel_path, format!("cannot read folder from Git: {e}")),
            },
            MODE_FILE | MODE_EXECUTABLE => on_blob(entry.id(), &rel_path, tree),
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
    if host.contains('\0') {
        return Err(bad("NUL in host"));
    }
    let port = match port {
        Some(p) if !p.is_empty() => p.parse().map_err(|_| bad("port is not a number"))?,
        _ => default_port,
    };
    Ok(Some((host.to_string(), port)))
}

/// Where a URL's user information (`user`, `user:password`, a token) is:
/// the byte range of `userinfo@` in `url`.
fn userinfo_span(url: &str) -> Option<std::ops::Range<usize>> {
    if let Some(at) = url.find("://") {
        let start = at + 3;
        let rest = &url[start..];
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let at = rest[..end].rfind('@')?;
        return Some(start..start + at + 1);
    }
    let (user_host, _) = url.split_once(':')?;
    if user_host.contains('/') {
        return None;
    }
    let at = user_host.rfind('@')?;
    Some(0..at + 1)
}

/// The URL with any user information (a user name, a password, a token)
/// masked as `***@`: how every URL is shown in messages, logs, status,
/// Events, and what names its cache folder.
pub fn redact(url: &str) -> String {
    let masked = match userinfo_span(url) {
        Some(span) => format!("{}***@{}", &url[..span.start], &url[span.end..]),
        None => url.to_string(),
    };
    mask_query(&masked)
}

/// A URL's query masked (`?***`): some hosts take a token there
/// (`?private_token=...`), and a repository's query is never needed to
/// recognise it.
fn mask_query(url: &str) -> String {
    match url.find('?') {
        Some(q) => {
            let end = url[q..].find('#').map_or(url.len(), |h| q + h);
            format!("{}?***{}", &url[..q], &url[end..])
        }
        None => url.to_string(),
    }
}

/// `text` with the user information of every `scheme://…@host` URL in it
/// masked, for messages that may quote a URL from elsewhere.
pub fn redact_in_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let start = at + 3;
        out.push_str(&rest[..start]);
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| c == '/' || c == '?' || c == '#' || c.is_whitespace())
            .unwrap_or(tail.len());
        match tail[..end].rfind('@') {
            Some(a) => {
                out.push_str("***");
                out.push_str(&tail[a..end]);
            }
            None => out.push_str(&tail[..end]),
        }
        rest = &tail[end..];
        // The rest of this URL (path, query, fragment) ends at whitespace or
        // a quote; its query is masked as `redact` does.
        let url_end = rest
            .find(|c: char| c.is_whitespace() || c == '"' || c == '\'' || c == '`')
            .unwrap_or(rest.len());
        out.push_str(&mask_query(&rest[..url_end]));
        rest = &rest[url_end..];
    }
    out.push_str(rest);
    out
}

/// `%XX` escapes of a URL's user information decoded, as Git does.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = s.get(i + 1..i + 3)
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scheme {
    Https,
    Http,
    Ssh,
    Git,
    File,
}

/// A remote URL taken apart: what libgit2 is given, what is shown, where
/// credentials may go.
#[derive(Clone, Debug)]
struct Remote {
    /// Handed to libgit2: for http(s) without user information (credentials
    /// are given by the callback, only to this host), for ssh without a
    /// password.
    fetch_url: String,
    /// For messages: user information masked.
    shown: String,
    scheme: Scheme,
    /// Host and port; `None` for `file://`.
    endpoint: Option<(String, u16)>,
    /// User and password from the URL, decoded.
    user: Option<String>,
    password: Option<String>,
}

impl Remote {
    fn parse(url: &str) -> Result<Remote, GitError> {
        let endpoint = endpoint(url)?;
        let scheme = match url.split_once("://") {
            None => Scheme::Ssh,
            Some((s, _)) => match s.to_ascii_lowercase().as_str() {
                "https" => Scheme::Https,
                "http" => Scheme::Http,
                "git" => Scheme::Git,
                "file" => Scheme::File,
                _ => Scheme::Ssh,
            },
        };
        let (mut user, mut password) = (None, None);
        let mut fetch_url = url.to_string();
        if let Some(span) = userinfo_span(url) {
            let info = &url[span.start..span.end - 1];
            let (u, p) = match info.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (info, None),
            };
            // `https://:token@host` is a password with an empty user.
            user = Some(percent_decode(u)).filter(|u| !u.is_empty() || p.is_some());
            password = p.map(percent_decode);
            fetch_url = match scheme {
                Scheme::Ssh => format!("{}{u}@{}", &url[..span.start], &url[span.end..]),
                _ => format!("{}{}", &url[..span.start], &url[span.end..]),
            };
            if scheme == Scheme::Ssh && u.is_empty() {
                fetch_url = format!("{}{}", &url[..span.start], &url[span.end..]);
            }
        }
        Ok(Remote {
            fetch_url,
            shown: redact(url),
            scheme,
            endpoint,
            user,
            password,
        })
    }

    /// Whether `url` (where libgit2 is now, after any redirect) is this
    /// remote's scheme, host and port.
    fn same_origin(&self, url: &str) -> bool {
        let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
        let ours = self
            .fetch_url
            .split_once("://")
            .map(|(s, _)| s.to_ascii_lowercase());
        let lower = |e: Option<(String, u16)>| e.map(|(h, p)| (h.to_ascii_lowercase(), p));
        scheme == ours && lower(endpoint(url).ok().flatten()) == lower(self.endpoint.clone())
    }
}

/// Credentials for a remote, from the environment ([`crate::source::auth_from_env`]).
/// The one matching the URL's scheme is used: the token for https, the key
/// for ssh; credentials inside an https URL win over the token. Secrets are
/// never printed (`Debug` masks them).
#[derive(Clone, Default, Serialize, Deserialize)]
pub struct Auth {
    /// The user for the token, and for ssh when the URL names none
    /// (`TENANTSYNC_GIT_USERNAME`; `git` when empty).
    pub username: String,
    /// https token or password (`TENANTSYNC_GIT_TOKEN`, `…_TOKEN_FILE`).
    pub token: Option<String>,
    /// Where the token came from, for messages.
    pub token_origin: String,
    /// ssh private key file (`TENANTSYNC_GIT_SSH_KEY`).
    pub ssh_key: Option<PathBuf>,
    /// Its passphrase (`TENANTSYNC_GIT_SSH_PASSPHRASE`).
    pub ssh_passphrase: Option<String>,
    /// The `known_hosts` file ssh host keys are checked against
    /// (`TENANTSYNC_GIT_KNOWN_HOSTS`; `~/.ssh/known_hosts` when `None`).
    pub known_hosts: Option<PathBuf>,
}

impl Auth {
    /// Anonymous: no token, no key (host keys still checked against
    /// `~/.ssh/known_hosts`).
    pub fn none() -> Auth {
        Auth::default()
    }

    /// https with `username` and `token`.
    pub fn token(username: &str, token: &str) -> Auth {
        Auth {
            username: username.to_string(),
            token: Some(token.to_string()),
            token_origin: "TENANTSYNC_GIT_TOKEN".to_string(),
            ..Auth::default()
        }
    }

    /// ssh with a private key file.
    pub fn ssh_key(private_key: impl Into<PathBuf>, passphrase: Option<&str>) -> Auth {
        Auth {
            ssh_key: Some(private_key.into()),
            ssh_passphrase: passphrase.map(str::to_string),
            ..Auth::default()
        }
    }

    /// The same, checking ssh host keys against `file`.
    pub fn with_known_hosts(mut self, file: impl Into<PathBuf>) -> Auth {
        self.known_hosts = Some(file.into());
        self
    }

    fn user(&self) -> &str {
        if self.username.is_empty() {
            "git"
        } else {
            &self.username
        }
    }

    /// The `known_hosts` file in use.
    fn known_hosts_file(&self) -> Option<PathBuf> {
        self.known_hosts.clone().or_else(|| {
            std::env::var_os("HOME")
                .filter(|h| !h.is_empty())
                .map(|h| PathBuf::from(h).join(".ssh").join("known_hosts"))
        })
    }
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Auth")
            .field("username", &self.username)
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("ssh_key", &self.ssh_key)
            .field(
                "ssh_passphrase",
                &self.ssh_passphrase.as_ref().map(|_| "***"),
            )
            .field("known_hosts", &self.known_hosts)
            .finish()
    }
}

/// The program (the `tenantsync` binary itself) that runs each fetch in a
/// child process, when set.
static FETCH_HELPER: OnceLock<PathBuf> = OnceLock::new();

/// The hidden first argument that makes `tenantsync` a fetch helper
/// ([`fetch_helper_main`]).
pub const FETCH_HELPER_ARG: &str = "__git-fetch";

/// Makes every fetch of this process run in a child process of `program`
/// (the `tenantsync` binary, started as `program __git-fetch`), so a fetch
/// given up on a silent remote ends with its connection closed instead of
/// leaving a thread blocked on it. Without it fetches run on threads.
pub fn use_fetch_helper(program: PathBuf) {
    let _ = FETCH_HELPER.set(program);
}

/// Set once the process is shutting down: fetch helpers in flight are
/// stopped rather than waited for.
static CANCELLED: AtomicBool = AtomicBool::new(false);

/// Stops every fetch helper in flight (and any started later) of this
/// process: for a daemon shutting down, which should not wait up to
/// [`STALL_TIMEOUT`] for a silent remote.
pub fn cancel_fetches() {
    CANCELLED.store(true, Ordering::Relaxed);
}

/// What a fetch helper is asked to do (on its standard input).
#[derive(Serialize, Deserialize)]
struct HelperJob {
    dir: PathBuf,
    url: String,
    auth: Auth,
}

/// What a fetch helper answers (on its standard output).
#[derive(Serialize, Deserialize)]
struct HelperAnswer {
    /// `ok`, `stalled`, `timeout` or `failed`.
    outcome: String,
    reason: String,
}

/// `tenantsync __git-fetch`: reads a [`HelperJob`] from standard input,
/// fetches, writes a [`HelperAnswer`] to standard output and exits (which
/// ends a fetch thread still blocked on a silent remote).
pub fn fetch_helper_main() -> std::process::ExitCode {
    let mut input = String::new();
    let answer = match std::io::stdin().read_to_string(&mut input) {
        Err(e) => HelperAnswer {
            outcome: "failed".into(),
            reason: format!("the fetch helper cannot read its job: {e}"),
        },
        Ok(_) => match serde_json::from_str::<HelperJob>(&input) {
            Err(e) => HelperAnswer {
                outcome: "failed".into(),
                reason: format!("the fetch helper cannot read its job: {e}"),
            },
            Ok(job) => match Remote::parse(&job.url)
                .and_then(|remote| fetch_into(&job.dir, &remote, &job.auth))
            {
                Ok(()) => HelperAnswer {
                    outcome: "ok".into(),
                    reason: String::new(),
                },
                Err(GitError::Stalled { .. }) => HelperAnswer {
                    outcome: "stalled".into(),
                    reason: String::new(),
                },
                Err(GitError::FetchTimeout { .. }) => HelperAnswer {
                    outcome: "timeout".into(),
                    reason: String::new(),
                },
                Err(GitError::Fetch { reason, .. }) => HelperAnswer {
                    outcome: "failed".into(),
                    reason,
                },
                Err(e) => HelperAnswer {
                    outcome: "failed".into(),
                    reason: e.to_string(),
                },
            },
        },
    };
    let text = serde_json::to_string(&answer).unwrap_or_default();
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
    // Exit at once: a fetch thread blocked on a silent remote must not keep
    // the process (and its connection) alive.
    std::process::exit(if answer.outcome == "ok" { 0 } else { 1 })
}

/// Runs the fetch in a child process of the helper; kills it if it outlives
/// the longest a fetch may take.
fn fetch_in_helper(
    program: &Path,
    dir: &Path,
    remote: &Remote,
    auth: &Auth,
) -> Result<(), GitError> {
    let failed = |reason: String| GitError::Fetch {
        url: remote.shown.clone(),
        reason,
    };
    let job = serde_json::to_string(&HelperJob {
        dir: dir.to_path_buf(),
        url: remote.fetch_url_with_user(),
        auth: auth.clone(),
    })
    .map_err(|e| failed(format!("cannot prepare the fetch: {e}")))?;
    let child = Command::new(program)
        .arg(FETCH_HELPER_ARG)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            failed(format!(
                "cannot start the fetch helper {}: {e}",
                program.display()
            ))
        })?;
    let mut child = KillOnDrop(child);
    if let Some(mut stdin) = child.0.stdin.take() {
        // A helper that died at once is reported below, from its exit.
        let _ = stdin.write_all(job.as_bytes());
    }
    let deadline = Instant::now() + FETCH_TIMEOUT + STALL_TIMEOUT;
    let status = loop {
        match child.0.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if CANCELLED.load(Ordering::Relaxed) => {
                let _ = child.0.kill();
                let _ = child.0.wait();
                return Err(failed("stopped: tenantsync is shutting down".into()));
            }
            Ok(None) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(25));
            }
            Ok(None) => {
                let _ = child.0.kill();
                let _ = child.0.wait();
                return Err(GitError::FetchTimeout {
                    url: remote.shown.clone(),
                    timeout: FETCH_TIMEOUT,
                });
            }
            Err(e) => return Err(failed(format!("cannot wait for the fetch helper: {e}"))),
        }
    };
    let mut stdout = String::new();
    if let Some(mut out) = child.0.stdout.take() {
        let _ = out.read_to_string(&mut stdout);
    }
    let Ok(answer) = serde_json::from_str::<HelperAnswer>(stdout.trim()) else {
        let mut stderr = String::new();
        if let Some(mut err) = child.0.stderr.take() {
            let _ = err.read_to_string(&mut stderr);
        }
        return Err(failed(format!(
            "the fetch helper ended ({status}) without an answer: {}",
            redact_in_text(stderr.trim())
        )));
    };
    match answer.outcome.as_str() {
        "ok" => Ok(()),
        "stalled" => Err(GitError::Stalled {
            url: remote.shown.clone(),
            timeout: STALL_TIMEOUT,
        }),
        "timeout" => Err(GitError::FetchTimeout {
            url: remote.shown.clone(),
            timeout: FETCH_TIMEOUT,
        }),
        _ => Err(failed(answer.reason)),
    }
}

impl Remote {
    /// The URL as the user gave it (for a fetch helper, which parses it
    /// again).
    fn fetch_url_with_user(&self) -> String {
        match (&self.user, &self.password, self.scheme) {
            (_, _, Scheme::Ssh) | (None, _, _) => self.fetch_url.clone(),
            (Some(user), password, _) => {
                let Some((scheme, rest)) = self.fetch_url.split_once("://") else {
                    return self.fetch_url.clone();
                };
                let enc = |s: &str| {
                    s.bytes()
                        .map(|b| {
                            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                                (b as char).to_string()
                            } else {
                                format!("%{b:02X}")
                            }
                        })
                        .collect::<String>()
                };
                match password {
                    Some(p) => format!("{scheme}://{}:{}@{rest}", enc(user), enc(p)),
                    None => format!("{scheme}://{}@{rest}", enc(user)),
                }
            }
        }
    }
}

/// A child process killed (and reaped) when dropped.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// One fetch per cache folder at a time: the last outcome, and a given-up
/// fetch thread that may still be blocked on its remote.
#[derive(Default)]
struct Flight {
    last: Option<(Instant, Result<(), Arc<GitError>>)>,
    lingering: Option<Arc<Watch>>,
}

fn flight(dir: &Path) -> Arc<Mutex<Flight>> {
    static FLIGHTS: OnceLock<Mutex<BTreeMap<PathBuf, Arc<Mutex<Flight>>>>> = OnceLock::new();
    let flights = FLIGHTS.get_or_init(Mutex::default);
    let mut map = match flights.lock() {
        Ok(m) => m,
        Err(poisoned) => poisoned.into_inner(),
    };
    Arc::clone(map.entry(dir.to_path_buf()).or_default())
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
    /// user information (so neither holds a secret, and a changed token
    /// keeps the cache).
    pub fn repo_dir(&self, url: &str) -> PathBuf {
        let public = redact(url);
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
    ///
    /// At most one fetch of a URL is in flight: a call made while another
    /// is fetching the same URL waits for it and shares its outcome.
    pub fn fetch(&self, url: &str, auth: &Auth) -> Result<Repository, GitError> {
        let asked = Instant::now();
        let remote = Remote::parse(url)?;
        let dir = self.repo_dir(url);
        let flight = flight(&dir);
        let mut state = match flight.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some((at, result)) = &state.last
            && *at > asked
        {
            let result = result.clone();
            drop(state);
            return match result {
                Ok(()) => Repository::open_bare(&dir).map_err(|e| GitError::CacheRepo {
                    dir,
                    cause: e.message().to_string(),
                }),
                Err(e) => Err(GitError::Shared(e)),
            };
        }
        // A given-up fetch thread still blocked on this remote: do not start
        // a second one beside it.
        if let Some(watch) = &state.lingering {
            if watch.finished.load(Ordering::Relaxed) {
                state.lingering = None;
            } else {
                return Err(GitError::Stalled {
                    url: remote.shown.clone(),
                    timeout: STALL_TIMEOUT,
                });
            }
        }
        let result = self.fetch_now(&dir, &remote, auth, &mut state.lingering);
        state.last = Some((
            Instant::now(),
            match &result {
                Ok(_) => Ok(()),
                Err(e) => Err(Arc::new(clone_error(e))),
            },
        ));
        result
    }

    fn fetch_now(
        &self,
        dir: &Path,
        remote: &Remote,
        auth: &Auth,
        lingering: &mut Option<Arc<Watch>>,
    ) -> Result<Repository, GitError> {
        if remote.scheme == Scheme::Http {
            let origin = if remote.user.is_some() {
                Some("the user information in the URL".to_string())
            } else {
                auth.token.as_ref().map(|_| auth.token_origin.clone())
            };
            if let Some(origin) = origin {
                return Err(GitError::InsecureCredentials {
                    url: remote.shown.clone(),
                    origin: if origin.is_empty() {
                        "TENANTSYNC_GIT_TOKEN".into()
                    } else {
                        origin
                    },
                });
            }
        }
        if let Some((host, port)) = &remote.endpoint {
            probe(&remote.shown, host, *port)?;
        }
        let run = |target: &Path, lingering: &mut Option<Arc<Watch>>| match FETCH_HELPER.get() {
            Some(program) => fetch_in_helper(program, target, remote, auth),
            None => fetch_on_thread(target, remote, auth, lingering),
        };
        if let Ok(repo) = Repository::open_bare(dir) {
            run(dir, lingering)?;
            return Ok(repo);
        }
        // Absent, or damaged (an interrupted first clone is never left
        // behind, so only outside damage): start afresh.
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(|cause| GitError::CacheIo {
                dir: dir.to_path_buf(),
                cause,
            })?;
        }
        std::fs::create_dir_all(&self.dir).map_err(|cause| GitError::CacheIo {
            dir: self.dir.clone(),
            cause,
        })?;
        // Clone into a temporary folder renamed into place once complete,
        // so a failed first fetch leaves nothing half-made.
        let tmp = tempdir_in(&self.dir)?;
        Repository::init_bare(tmp.path()).map_err(|e| GitError::CacheRepo {
            dir: tmp.path().to_path_buf(),
            cause: e.message().to_string(),
        })?;
        run(tmp.path(), lingering)?;
        let staged = tmp.keep();
        if let Err(cause) = std::fs::rename(&staged, dir) {
            let _ = std::fs::remove_dir_all(&staged);
            // Another process fetching the same URL finished first: use its
            // clone.
            if !dir.exists() {
                return Err(GitError::CacheIo {
                    dir: dir.to_path_buf(),
                    cause,
                });
            }
        }
        Repository::open_bare(dir).map_err(|e| GitError::CacheRepo {
            dir: dir.to_path_buf(),
            cause: e.message().to_string(),
        })
    }
}

/// A copy of an error, to share one fetch's outcome with the calls that
/// waited for it.
fn clone_error(e: &GitError) -> GitError {
    match e {
        GitError::Stalled { url, timeout } => GitError::Stalled {
            url: url.clone(),
            timeout: *timeout,
        },
        GitError::FetchTimeout { url, timeout } => GitError::FetchTimeout {
            url: url.clone(),
            timeout: *timeout,
        },
        GitError::Shared(inner) => GitError::Shared(Arc::clone(inner)),
        other => GitError::Message(other.to_string()),
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
    std::fs::create_dir(&path).map_err(|cause| GitError::CacheIo {
        dir: path.clone(),
        cause,
    })?;
    Ok(TempDir(Some(path)))
}

/// Fails fast when nothing answers at the remote's address: libgit2 would
/// otherwise wait for the system's TCP timeout (minutes).
fn probe(shown: &str, host: &str, port: u16) -> Result<(), GitError> {
    let endpoint = format!("{host}:{port}");
    let unreachable = |cause| GitError::Unreachable {
        url: shown.to_string(),
        endpoint: endpoint.clone(),
        timeout: CONNECT_TIMEOUT,
        cause,
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
/// remote, whether the caller gave up on it, and whether it has ended.
struct Watch {
    start: Instant,
    /// Milliseconds from `start` to the last callback from libgit2.
    last_heard: AtomicU64,
    abandoned: AtomicBool,
    finished: AtomicBool,
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
/// callback (before updating any ref); one blocked on a silent connection
/// lingers until the system drops the connection, and is handed back in
/// `lingering` so that no second fetch starts beside it (the fetch helper
/// process ends it instead).
fn fetch_on_thread(
    dir: &Path,
    remote: &Remote,
    auth: &Auth,
    lingering: &mut Option<Arc<Watch>>,
) -> Result<(), GitError> {
    let watch = Arc::new(Watch {
        start: Instant::now(),
        last_heard: AtomicU64::new(0),
        abandoned: AtomicBool::new(false),
        finished: AtomicBool::new(false),
    });
    let (tx, rx) = mpsc::channel();
    let job = (
        dir.to_path_buf(),
        remote.clone(),
        auth.clone(),
        Arc::clone(&watch),
    );
    std::thread::Builder::new()
        .name("git-fetch".into())
        .spawn(move || {
            let (dir, remote, auth, watch) = job;
            let result = fetch_blocking(&dir, &remote, &auth, &watch);
            watch.finished.store(true, Ordering::Relaxed);
            let _ = tx.send(result);
        })
        .map_err(|cause| GitError::CacheIo {
            dir: dir.to_path_buf(),
            cause,
        })?;
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(result) => return result,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(GitError::Fetch {
                    url: remote.shown.clone(),
                    reason: "the fetch thread ended without a result".into(),
                });
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let error = if watch.silent_for() > STALL_TIMEOUT {
                    GitError::Stalled {
                        url: remote.shown.clone(),
                        timeout: STALL_TIMEOUT,
                    }
                } else if watch.start.elapsed() > FETCH_TIMEOUT {
                    GitError::FetchTimeout {
                        url: remote.shown.clone(),
                        timeout: FETCH_TIMEOUT,
                    }
                } else {
                    continue;
                };
                watch.abandoned.store(true, Ordering::Relaxed);
                *lingering = Some(watch);
                return Err(error);
            }
        }
    }
}

/// In the fetch helper: the same, on a thread, the process exiting after.
fn fetch_into(dir: &Path, remote: &Remote, auth: &Auth) -> Result<(), GitError> {
    let mut lingering = None;
    fetch_on_thread(dir, remote, auth, &mut lingering)
}

/// Why the credential or certificate callback refused, told to the user
/// instead of libgit2's own wording.
#[derive(Default)]
struct Refusal(Mutex<Option<String>>);

impl Refusal {
    fn set(&self, reason: String) -> git2::Error {
        let error = git2::Error::from_str(&reason);
        if let Ok(mut r) = self.0.lock()
            && r.is_none()
        {
            *r = Some(reason);
        }
        error
    }

    fn take(&self) -> Option<String> {
        self.0.lock().ok().and_then(|mut r| r.take())
    }
}

fn fetch_blocking(dir: &Path, remote: &Remote, auth: &Auth, watch: &Watch) -> Result<(), GitError> {
    let repo = Repository::open_bare(dir).map_err(|e| GitError::CacheRepo {
        dir: dir.to_path_buf(),
        cause: e.message().to_string(),
    })?;
    let refusal = Refusal::default();
    let mut callbacks = RemoteCallbacks::new();
    let mut asked = Asked::default();
    callbacks.credentials(|url, username_from_url, allowed| {
        if !watch.heard() {
            return Err(git2::Error::from_str("fetch given up"));
        }
        credentials(remote, auth, url, username_from_url, allowed, &mut asked)
            .map_err(|reason| refusal.set(reason))
    });
    callbacks.certificate_check(|cert, host| {
        if !watch.heard() {
            return Err(git2::Error::from_str("fetch given up"));
        }
        match cert.as_hostkey() {
            Some(key) => check_host_key(remote, auth, host, key)
                .map(|()| CertificateCheckStatus::CertificateOk)
                .map_err(|reason| refusal.set(reason)),
            // TLS: OpenSSL's verification against the CA store decides.
            None => Ok(CertificateCheckStatus::CertificatePassthrough),
        }
    });
    callbacks.transfer_progress(|_| watch.heard());
    callbacks.sideband_progress(|_| watch.heard());
    callbacks.update_tips(|_, _, _| watch.heard());
    let mut options = FetchOptions::new();
    options
        .remote_callbacks(callbacks)
        .prune(FetchPrune::On)
        .download_tags(AutotagOption::None)
        // FETCH_HEAD would record the URL in the cache; nothing reads it.
        .update_fetchhead(false);
    let failed = |e: git2::Error| GitError::Fetch {
        url: remote.shown.clone(),
        reason: explain(&e, remote, auth, refusal.take()),
    };
    let mut git_remote = repo.remote_anonymous(&remote.fetch_url).map_err(failed)?;
    git_remote
        .fetch(&FETCH_REFSPECS, Some(&mut options), None)
        .map_err(failed)?;
    // Follow the remote's default branch, so `HEAD` means what it means there.
    if let Ok(head) = git_remote.default_branch()
        && let Ok(head) = head.as_str()
    {
        repo.set_head(head).map_err(failed)?;
    }
    Ok(())
}

/// Which credentials libgit2 was already given in this fetch (it asks again
/// after a refusal; each is answered once).
#[derive(Default)]
struct Asked {
    userpass: bool,
    username: bool,
    key: bool,
}

fn credentials(
    remote: &Remote,
    auth: &Auth,
    url: &str,
    username_from_url: Option<&str>,
    allowed: CredentialType,
    asked: &mut Asked,
) -> Result<Cred, String> {
    if allowed.contains(CredentialType::USER_PASS_PLAINTEXT) {
        if !remote.same_origin(url) {
            return Err(format!(
                "the remote redirected to {}, which asks for credentials: they are sent only to the host of the URL given; use the URL the redirect points to",
                redact(url)
            ));
        }
        let (user, secret, origin) = match (&remote.user, &auth.token) {
            (Some(user), _) => (
                user.clone(),
                remote.password.clone().unwrap_or_default(),
                "the user information in the URL".to_string(),
            ),
            (None, Some(token)) => (
                auth.user().to_string(),
                token.clone(),
                if auth.token_origin.is_empty() {
                    "TENANTSYNC_GIT_TOKEN".to_string()
                } else {
                    auth.token_origin.clone()
                },
            ),
            (None, None) => {
                return Err("the remote asks for credentials and none were given: set TENANTSYNC_GIT_TOKEN (or TENANTSYNC_GIT_TOKEN_FILE), with TENANTSYNC_GIT_USERNAME if the host needs a particular user".to_string());
            }
        };
        if asked.userpass {
            // The user of a URL may be the token itself: never shown.
            let given = if remote.user.is_some() {
                origin
            } else {
                format!("user `{user}` and the token from {origin}")
            };
            return Err(format!(
                "the remote refused the credentials ({given}): check them and their access to this repository"
            ));
        }
        asked.userpass = true;
        return Cred::userpass_plaintext(&user, &secret).map_err(|e| e.message().to_string());
    }
    let user = username_from_url
        .filter(|u| !u.is_empty())
        .map(str::to_string)
        .or_else(|| remote.user.clone())
        .unwrap_or_else(|| auth.user().to_string());
    if allowed.contains(CredentialType::USERNAME) {
        if asked.username {
            return Err(format!("the remote refused the user `{user}`"));
        }
        asked.username = true;
        return Cred::username(&user).map_err(|e| e.message().to_string());
    }
    if allowed.contains(CredentialType::SSH_KEY) {
        let Some(key) = &auth.ssh_key else {
            let token = if auth.token.is_some() {
                " (the token is used for https only)"
            } else {
                ""
            };
            return Err(format!(
                "the remote asks for an ssh key and none was given{token}: set TENANTSYNC_GIT_SSH_KEY to a private key file"
            ));
        };
        let encrypted = key_is_encrypted(key)?;
        if encrypted && auth.ssh_passphrase.is_none() {
            return Err(format!(
                "the ssh key {} is protected by a passphrase: set TENANTSYNC_GIT_SSH_PASSPHRASE",
                key.display()
            ));
        }
        if asked.key {
            return Err(format!(
                "the remote refused the ssh key {} for user `{user}`: check that its public key is authorized there (and, when the URL names no user, TENANTSYNC_GIT_USERNAME)",
                key.display()
            ));
        }
        asked.key = true;
        return Cred::ssh_key(&user, None, key, auth.ssh_passphrase.as_deref())
            .map_err(|e| e.message().to_string());
    }
    Err(match remote.scheme {
        Scheme::Ssh => "the remote asks for credentials other than an ssh key".to_string(),
        _ => "the remote asks for credentials other than a user and token".to_string(),
    })
}

/// Whether a private key file is encrypted (needs a passphrase): an
/// OpenSSH-format key whose cipher is not `none`, or a PEM key marked
/// `ENCRYPTED`. Errors name the file.
fn key_is_encrypted(path: &Path) -> Result<bool, String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "cannot read the ssh key {} (TENANTSYNC_GIT_SSH_KEY): {e}",
            path.display()
        )
    })?;
    if text.contains("ENCRYPTED") {
        return Ok(true);
    }
    const OPENSSH: &str = "-----BEGIN OPENSSH PRIVATE KEY-----";
    let Some(start) = text.find(OPENSSH) else {
        return Ok(false);
    };
    let body: String = text[start + OPENSSH.len()..]
        .lines()
        .take_while(|l| !l.starts_with("-----END"))
        .collect::<String>()
        .split_whitespace()
        .collect();
    let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(body) else {
        return Ok(false);
    };
    // "openssh-key-v1\0", then the cipher name as a length-prefixed string.
    let rest = bytes.get(15..).unwrap_or_default();
    let cipher = rest
        .get(..4)
        .and_then(|n| <[u8; 4]>::try_from(n).ok())
        .map(|n| u32::from_be_bytes(n) as usize)
        .and_then(|n| rest.get(4..4 + n));
    Ok(cipher.is_some_and(|c| c != b"none"))
}

/// Checks an ssh host key against the `known_hosts` file before any
/// credential is offered: refused when the host is not there (unknown) or
/// is there with another key of the same type (changed).
fn check_host_key(
    remote: &Remote,
    auth: &Auth,
    host: &str,
    key: &git2::cert::CertHostkey<'_>,
) -> Result<(), String> {
    let port = remote.endpoint.as_ref().map_or(22, |(_, p)| *p);
    let Some(file) = auth.known_hosts_file() else {
        return Err(
            "cannot check the ssh host key: set TENANTSYNC_GIT_KNOWN_HOSTS (or HOME, for ~/.ssh/known_hosts)"
                .into(),
        );
    };
    let Some(raw) = key.hostkey() else {
        return Err("the ssh server sent no host key".into());
    };
    let key_type = key_type_name(raw).unwrap_or("unknown");
    let fingerprint = key
        .hash_sha256()
        .map(|h| {
            format!(
                "SHA256:{}",
                base64::engine::general_purpose::STANDARD_NO_PAD.encode(h)
            )
        })
        .unwrap_or_default();
    let name = if port == 22 {
        host.to_string()
    } else {
        format!("[{host}]:{port}")
    };
    let scan = if port == 22 {
        format!("ssh-keyscan -t {key_type} {host}")
    } else {
        format!("ssh-keyscan -t {key_type} -p {port} {host}")
    };
    let text = match std::fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => {
            return Err(format!(
                "cannot read the known_hosts file {}: {e}",
                file.display()
            ));
        }
    };
    let session = ssh2::Session::new()
        .map_err(|e| format!("cannot check the ssh host key: {}", e.message()))?;
    let mut known = session
        .known_hosts()
        .map_err(|e| format!("cannot check the ssh host key: {}", e.message()))?;
    // Line by line, keys of the server's type only: a line libssh2 does not
    // understand is skipped rather than failing the whole file, and a key of
    // another type is not mistaken for a changed one.
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let line_type = match fields.first() {
            Some(m) if m.starts_with('@') => fields.get(2),
            Some(f) if !f.starts_with('#') => fields.get(1),
            _ => None,
        };
        if line_type == Some(&key_type) && !line.contains('\0') {
            let _ = known.read_str(line, ssh2::KnownHostFileKind::OpenSSH);
        }
    }
    match known.check_port(host, port, raw) {
        ssh2::CheckResult::Match => Ok(()),
        ssh2::CheckResult::Mismatch => Err(format!(
            "the ssh host key of {name} has CHANGED: the server sent {key_type} {fingerprint}, which is not the {key_type} key {} holds for it. Someone may be intercepting the connection, or the host's key was replaced; nothing was sent. If the change is expected, replace the host's line in {} (from `{scan}`, after checking the fingerprint with the host's owner)",
            file.display(),
            file.display()
        )),
        ssh2::CheckResult::NotFound => Err(format!(
            "the ssh host key of {name} ({key_type} {fingerprint}) is unknown: {} has no {key_type} key for it, so nothing was sent. Add the host's key to that file (from `{scan}`, after checking the fingerprint), or point TENANTSYNC_GIT_KNOWN_HOSTS at a file that has it",
            file.display()
        )),
        ssh2::CheckResult::Failure => Err(format!(
            "cannot check the ssh host key of {name} against {}",
            file.display()
        )),
    }
}

/// The type name at the start of an ssh public key blob (`ssh-ed25519`).
fn key_type_name(blob: &[u8]) -> Option<&str> {
    let n = u32::from_be_bytes(blob.get(..4)?.try_into().ok()?) as usize;
    std::str::from_utf8(blob.get(4..4 + n)?).ok()
}

/// A libgit2 error in words a user can act on. `refusal`: why one of our
/// callbacks refused, which is the real reason when there is one.
fn explain(e: &git2::Error, remote: &Remote, auth: &Auth, refusal: Option<String>) -> String {
    if let Some(reason) = refusal {
        return reason;
    }
    let message = redact_in_text(e.message());
    let lower = message.to_ascii_lowercase();
    if e.class() == ErrorClass::Ssh
        && (lower.contains("private key") || lower.contains("passphrase"))
        && let Some(key) = &auth.ssh_key
    {
        return if key_is_encrypted(key).unwrap_or(false) {
            format!(
                "cannot decrypt the ssh key {}: wrong TENANTSYNC_GIT_SSH_PASSPHRASE",
                key.display()
            )
        } else {
            format!(
                "cannot use the ssh key {}: not a private key libssh2 reads ({message})",
                key.display()
            )
        };
    }
    if lower.contains("hostname does not match") {
        let host = remote.endpoint.as_ref().map_or("", |(h, _)| h.as_str());
        return format!(
            "the server's TLS certificate is not made for {host} ({message}): use a URL with a name or address the certificate names, or have the certificate reissued"
        );
    }
    if e.class() == ErrorClass::Ssl || e.code() == ErrorCode::Certificate {
        return format!(
            "the server's TLS certificate is not trusted ({message}): if it is signed by a private certificate authority, set SSL_CERT_FILE to a PEM file holding that authority's certificate (Git's GIT_SSL_CAINFO and http.sslCAInfo are not read)"
        );
    }
    if remote.scheme == Scheme::Https && lower.contains("early eof") {
        return format!(
            "the TLS connection ended early ({message}): the server's certificate may not be valid for this host name or address, or the server closed the connection"
        );
    }
    if lower.contains("status code: 404") {
        return format!("the server has no repository at this URL ({message}): check the path");
    }
    if lower.contains("status code: 403") {
        return format!(
            "the server refuses access to this repository ({message}): check the credentials' access to it"
        );
    }
    if e.code() == ErrorCode::Auth {
        return format!("the remote refused the credentials ({message})");
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 19: what changed since a revision is told by blob ids, the
    /// revision's files unread: added, removed and edited files are
    /// changed, identical ones (and files outside environments/) are not.
    #[test]
    fn changed_since_compares_by_blob_id_and_finds_added_removed_and_edited_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = Repository::init(dir.path()).expect("init");
        let files = [
            ("environments/a/x.yaml", "1"),
            ("environments/a/y.yaml", "2"),
            ("environments/b/z.yaml", "3"),
            ("README.md", "notes"),
        ];
        let mut index = repo.index().expect("index");
        for (path, text) in files {
            let id = repo.blob(text.as_bytes()).expect("blob");
            let entry = git2::IndexEntry {
                ctime: git2::IndexTime::new(0, 0),
                mtime: git2::IndexTime::new(0, 0),
                dev: 0,
                ino: 0,
                mode: 0o100_644,
                uid: 0,
                gid: 0,
                file_size: 0,
                id,
                flags: 0,
                flags_extended: 0,
                path: path.as_bytes().to_vec(),
            };
            index.add(&entry).expect("add");
        }
        let tree = repo
            .find_tree(index.write_tree().expect("tree"))
            .expect("tree");
        let who = git2::Signature::now("t", "t@example.com").expect("signature");
        repo.commit(Some("HEAD"), &who, &who, "base", &tree, &[])
            .expect("commit");
        let head = |files: &[(&str, &str)]| {
            let mut t = SourceTree::new();
            for (p, text) in files {
                t.insert(p, text.as_bytes().to_vec());
            }
            t
        };
        let same = head(&files[..3]);
        assert!(
            changed_since(&repo, "HEAD", &same)
                .expect("diff")
                .is_empty()
        );
        let pr = head(&[
            ("environments/a/x.yaml", "1"),
            ("environments/a/y.yaml", "two"),
            ("environments/c/w.yaml", "4"),
        ]);
        assert_eq!(
            changed_since(&repo, "HEAD", &pr).expect("diff"),
            [
                "environments/a/y.yaml",
                "environments/b/z.yaml",
                "environments/c/w.yaml"
            ]
        );
        assert!(matches!(
            changed_since(&repo, "no-such-rev", &pr),
            Err(GitError::RevisionNotFound { .. })
        ));
    }

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
    fn masks_any_user_information() {
        assert_eq!(redact("https://me:s3cret@h/r"), "https://***@h/r");
        assert_eq!(redact("https://S3cr3t-T0ken@h/r"), "https://***@h/r");
        assert_eq!(redact("ssh://git@h:22/r"), "ssh://***@h:22/r");
        assert_eq!(redact("git@h:org/r.git"), "***@h:org/r.git");
        assert_eq!(redact("https://h/a@b"), "https://h/a@b");
        assert_eq!(redact("file:///r"), "file:///r");
        assert_eq!(
            redact_in_text("cannot fetch https://tok@h/r: x\nsee git://u:p@h2/r."),
            "cannot fetch https://***@h/r: x\nsee git://***@h2/r."
        );
        let auth = Auth::token("me", "s3cret");
        assert!(!format!("{auth:?}").contains("s3cret"));
    }

    /// A token in a URL's query (`?private_token=...`) was shown as is.
    #[test]
    fn masks_a_urls_query() {
        assert_eq!(
            redact("https://h/r.git?private_token=S3cr3t#main"),
            "https://h/r.git?***#main"
        );
        assert_eq!(
            redact("https://u:p@h/r?access_token=S3cr3t"),
            "https://***@h/r?***"
        );
        assert_eq!(
            redact_in_text("cannot fetch 'https://h/r?token=S3cr3t': refused, retry https://h/r"),
            "cannot fetch 'https://h/r?***': refused, retry https://h/r"
        );
    }

    #[test]
    fn the_remote_cache_names_no_user_information() {
        let cache = RemoteCache::new("/c");
        assert_eq!(
            cache.repo_dir("https://me:a@h/org/repo.git"),
            cache.repo_dir("https://other@h/org/repo.git")
        );
        assert!(cache.repo_dir("https://h/org/repo.git").starts_with("/c"));
        assert!(
            !cache
                .repo_dir("https://S3cr3t@h/S3cr3t")
                .to_string_lossy()
                .contains("S3cr3t@")
        );
    }

    #[test]
    fn takes_user_information_out_of_the_url_given_to_libgit2() {
        let r = Remote::parse("https://to%40ken:p%3Aw@h:8443/r.git").unwrap();
        assert_eq!(r.fetch_url, "https://h:8443/r.git");
        assert_eq!(r.user.as_deref(), Some("to@ken"));
        assert_eq!(r.password.as_deref(), Some("p:w"));
        assert_eq!(
            Remote::parse(&r.fetch_url_with_user()).unwrap().password,
            r.password
        );
        assert!(r.same_origin("https://h:8443/r.git/info/refs"));
        assert!(!r.same_origin("https://127.0.0.2:8443/r.git/info/refs"));
        assert!(!r.same_origin("http://h:8443/r.git"));
        assert!(r.same_origin("https://H:8443/r.git"));
        assert!(!r.same_origin("https://h/r.git"));
        let empty_user = Remote::parse("https://:tok@h/r.git").unwrap();
        assert_eq!(empty_user.user.as_deref(), Some(""));
        assert_eq!(empty_user.password.as_deref(), Some("tok"));
        let again = Remote::parse(&empty_user.fetch_url_with_user()).unwrap();
        assert_eq!(again.password.as_deref(), Some("tok"));
        let s = Remote::parse("ssh://git:pw@h:2222/r.git").unwrap();
        assert_eq!(s.fetch_url, "ssh://git@h:2222/r.git");
        let scp = Remote::parse("git@h:org/r.git").unwrap();
        assert_eq!(scp.fetch_url, "git@h:org/r.git");
        assert_eq!(scp.scheme, Scheme::Ssh);
    }
}
