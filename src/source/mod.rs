//! Edges that read repositories into [`crate::repo::SourceTree`]s: a folder
//! as it is, a revision of a local Git repository, or a remote fetched into
//! a cache.

use std::path::{Path, PathBuf};

pub mod folder;
pub mod git;

use crate::repo::SourceTree;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Folder(#[from] folder::FolderError),
    #[error(transparent)]
    Git(#[from] git::GitError),
    #[error("cannot read {var}: {source}")]
    Secret {
        var: String,
        #[source]
        source: std::io::Error,
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
    if git::is_remote_url(repo) {
        let cache = git::RemoteCache::at_default_location()?;
        let repository = cache.fetch(repo, auth)?;
        let (tree, revision) = git::read_tree(&repository, rev.unwrap_or("HEAD"))?;
        return Ok((tree, Some(revision)));
    }
    match rev {
        None => Ok((folder::read(Path::new(repo))?, None)),
        Some(rev) => {
            let repository = git::open_local(Path::new(repo))?;
            let (tree, revision) = git::read_tree(&repository, rev)?;
            Ok((tree, Some(revision)))
        }
    }
}

/// Git credentials from the environment, never from arguments (which other
/// users can read in the process list): `TENANTSYNC_GIT_TOKEN` or
/// `TENANTSYNC_GIT_TOKEN_FILE` (with `TENANTSYNC_GIT_USERNAME`, default
/// `git`) for https; `TENANTSYNC_GIT_SSH_KEY` (a key file, with
/// `TENANTSYNC_GIT_SSH_PASSPHRASE`) for ssh.
pub fn auth_from_env() -> Result<git::Auth, SourceError> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let username = var("TENANTSYNC_GIT_USERNAME").unwrap_or_else(|| "git".to_string());
    if let Some(token) = var("TENANTSYNC_GIT_TOKEN") {
        return Ok(git::Auth::Token { username, token });
    }
    if let Some(file) = var("TENANTSYNC_GIT_TOKEN_FILE") {
        let token = std::fs::read_to_string(&file).map_err(|source| SourceError::Secret {
            var: "TENANTSYNC_GIT_TOKEN_FILE".into(),
            source,
        })?;
        return Ok(git::Auth::Token {
            username,
            token: token.trim().to_string(),
        });
    }
    if let Some(key) = var("TENANTSYNC_GIT_SSH_KEY") {
        return Ok(git::Auth::SshKey {
            username,
            private_key: PathBuf::from(key),
            passphrase: var("TENANTSYNC_GIT_SSH_PASSPHRASE"),
        });
    }
    Ok(git::Auth::None)
}
