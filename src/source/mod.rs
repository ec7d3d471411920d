//! Edges that read repositories into [`crate::declare::repo::SourceTree`]s: a folder
//! as it is, a revision of a local Git repository, or a remote fetched into
//! a cache.
//!
//! Imports: the core's `declare` (the file tree it fills) only; never
//! `cluster`, `daemon` or `cli`.

use std::path::{Path, PathBuf};

pub mod folder;
pub mod git;
pub mod trust;

use sha2::{Digest, Sha256};

use crate::declare::repo::SourceTree;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Folder(#[from] folder::FolderError),
    #[error(transparent)]
    Git(#[from] git::GitError),
    #[error(transparent)]
    Untrusted(#[from] trust::VerifyError),
    #[error(
        "{repo} is read as a folder, whose files are not a commit: signatures cannot be verified; give --rev (a local Git repository) or a Git URL, or leave out --verify-signatures"
    )]
    Unverifiable { repo: String },
    /// The revision a `--changed-since` compares with cannot be read.
    #[error("--changed-since {rev}: {reason}")]
    Base { rev: String, reason: String },
    #[error("cannot read {var} {path}: {cause}")]
    Secret {
        var: String,
        path: String,
        cause: std::io::Error,
    },
}

/// Reads the declarations: `repo` is a folder (read as it is unless `rev`
/// is given), a local Git repository (with `rev`), or a remote URL (fetched
/// into the cache, then `rev`, default `HEAD`, is read).
pub fn read(
    repo: &str,
    rev: Option<&str>,
    auth: &git::Auth,
) -> Result<(SourceTree, Option<git::Revision>), SourceError> {
    read_trusted(repo, rev, auth, None)
}

/// [`read`], and with `trust` the commit read (and with
/// [`trust::Verify::AllSince`] every commit since) must be signed by a
/// trusted key: the tree of a commit that is not is never returned. A folder
/// cannot be verified and is refused.
pub fn read_trusted(
    repo: &str,
    rev: Option<&str>,
    auth: &git::Auth,
    trust: Option<(&trust::Trust, &trust::Verify)>,
) -> Result<(SourceTree, Option<git::Revision>), SourceError> {
    let verified = |repository: &git2::Repository, revision: &git::Revision| match trust {
        Some((trust, verify)) => trust.verify(repository, &revision.commit, verify),
        None => Ok(()),
    };
    if git::is_remote_url(repo) {
        let cache = git::RemoteCache::at_default_location()?;
        let repository = cache.fetch(repo, auth)?;
        let (tree, revision) = git::read_tree(&repository, rev.unwrap_or("HEAD"))
            .map_err(|e| e.naming(&git::redact(repo)))?;
        verified(&repository, &revision)?;
        return Ok((tree, Some(revision)));
    }
    match rev {
        None if trust.is_some() => Err(SourceError::Unverifiable {
            repo: repo.to_string(),
        }),
        None => Ok((folder::read(Path::new(repo))?, None)),
        Some(rev) => {
            let repository = git::open_local(Path::new(repo))?;
            let (tree, revision) = git::read_tree(&repository, rev)?;
            verified(&repository, &revision)?;
            Ok((tree, Some(revision)))
        }
    }
}

/// [`read`], and the paths whose files differ from those at revision `base`
/// of the same Git repository ([`git::changed_since`]; `plan
/// --changed-since`): a remote's cached clone, fetched once, or a local
/// repository (or the repository a work tree belongs to). `defer`: a
/// work tree's workspace files Git knows to be unchanged since `base`
/// are not read ([`folder::read_deferring`]; read the ones a check needs
/// with [`read_deferred`]), so the tree has no digest of its content.
#[allow(clippy::type_complexity)]
pub fn read_with_base(
    repo: &str,
    rev: Option<&str>,
    base: &str,
    auth: &git::Auth,
    trust: Option<(&trust::Trust, &trust::Verify)>,
    defer: bool,
) -> Result<(SourceTree, Option<git::Revision>, Vec<String>), SourceError> {
    let base_error = |reason: String| SourceError::Base {
        rev: base.to_string(),
        reason,
    };
    let remote = git::is_remote_url(repo);
    let name = git::redact(repo);
    let repository = if remote {
        git::RemoteCache::at_default_location()?.fetch(repo, auth)?
    } else {
        let repository = git::open_local(Path::new(repo)).map_err(|e| {
            base_error(format!(
                "it compares with a revision of a Git repository, and {repo} is not in one ({e})"
            ))
        })?;
        // The folder read must be the tree the revision is read from: the
        // work tree's root, not a folder inside it (a monorepo's subfolder
        // would be compared with the root's environments/).
        if rev.is_none() {
            let root = repository.workdir().and_then(|w| w.canonicalize().ok());
            let here = Path::new(repo).canonicalize().ok();
            if root.is_none() || root != here {
                return Err(base_error(format!(
                    "{repo} must be the root of a Git work tree{}, whose environments/ a revision holds",
                    root.map(|r| format!(" (here: {})", r.display()))
                        .unwrap_or_default()
                )));
            }
        }
        repository
    };
    // The base first: a revision that does not exist is reported before
    // the work tree is read or a signature checked.
    let base_files =
        git::base_files(&repository, base).map_err(|e| base_error(e.naming(&name).to_string()))?;
    let (tree, revision) = match (remote, rev) {
        (false, None) if trust.is_some() => {
            return Err(SourceError::Unverifiable {
                repo: repo.to_string(),
            });
        }
        (false, None) if defer => {
            let unchanged =
                git::unchanged_in_work_tree(&repository, base, &base_files).unwrap_or_default();
            (folder::read_deferring(Path::new(repo), &unchanged)?, None)
        }
        (false, None) => (folder::read(Path::new(repo))?, None),
        (_, rev) => {
            let (tree, revision) =
                git::read_tree(&repository, rev.unwrap_or("HEAD")).map_err(|e| e.naming(&name))?;
            if let Some((trust, verify)) = trust {
                trust.verify(&repository, &revision.commit, verify)?;
            }
            (tree, Some(revision))
        }
    };
    let changed = git::changed_from(base_files, &tree);
    Ok((tree, revision, changed))
}

/// Reads the files `paths` of a work tree `repo` that [`read_with_base`]
/// left unread into `tree` (the pipeline's `files_to_read` tells which a
/// check needs).
pub fn read_deferred(
    repo: &str,
    tree: &mut SourceTree,
    paths: &[String],
) -> Result<(), SourceError> {
    if paths.is_empty() {
        return Ok(());
    }
    Ok(folder::read_deferred(Path::new(repo), tree, paths)?)
}

/// A source revision: the Git commit, or a digest of a folder's files (a
/// tree with files left unread has none: see [`SourceTree::has_deferred`]).
pub fn revision_of(tree: &SourceTree, git: Option<git::Revision>) -> String {
    match git {
        Some(r) => r.commit,
        None => {
            let mut h = Sha256::new();
            for p in tree.paths() {
                h.update(p.as_bytes());
                h.update([0]);
                h.update(tree.get(p).unwrap_or_default());
                h.update([0]);
            }
            let digest = h.finalize();
            format!(
                "folder-{}",
                digest
                    .iter()
                    .take(6)
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
            )
        }
    }
}

/// Git credentials from the environment, never from arguments (which other
/// users can read in the process list): `TENANTSYNC_GIT_TOKEN` or
/// `TENANTSYNC_GIT_TOKEN_FILE` (with `TENANTSYNC_GIT_USERNAME`, default
/// `git`) for https; `TENANTSYNC_GIT_SSH_KEY` (a key file, with
/// `TENANTSYNC_GIT_SSH_PASSPHRASE`) for ssh, whose host keys are checked
/// against `TENANTSYNC_GIT_KNOWN_HOSTS` (default `~/.ssh/known_hosts`).
/// Both a token and a key may be set: each is used for its own scheme.
pub fn auth_from_env() -> Result<git::Auth, SourceError> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let mut auth = git::Auth {
        username: var("TENANTSYNC_GIT_USERNAME").unwrap_or_else(|| "git".to_string()),
        ssh_key: var("TENANTSYNC_GIT_SSH_KEY").map(PathBuf::from),
        ssh_passphrase: var("TENANTSYNC_GIT_SSH_PASSPHRASE"),
        known_hosts: var("TENANTSYNC_GIT_KNOWN_HOSTS").map(PathBuf::from),
        ..git::Auth::default()
    };
    if let Some(token) = var("TENANTSYNC_GIT_TOKEN") {
        auth.token = Some(token);
        auth.token_origin = "TENANTSYNC_GIT_TOKEN".into();
    } else if let Some(file) = var("TENANTSYNC_GIT_TOKEN_FILE") {
        let token = std::fs::read_to_string(&file).map_err(|cause| SourceError::Secret {
            var: "TENANTSYNC_GIT_TOKEN_FILE".into(),
            path: file.clone(),
            cause,
        })?;
        auth.token = Some(token.trim().to_string());
        auth.token_origin = format!("TENANTSYNC_GIT_TOKEN_FILE ({file})");
    }
    Ok(auth)
}
