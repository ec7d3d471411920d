//! Reading a folder into a [`SourceTree`].
//!
//! Only `environments/` is read. Symlinks are followed only while they stay
//! inside the repository; one that leaves it is reported, not read. Files over
//! the size cap are reported without being read whole.

use std::collections::BTreeSet;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::declare::repo::{MAX_FILE_BYTES, SourceTree};
use crate::declare::validate::ENVIRONMENTS_DIR;

#[derive(Debug, thiserror::Error)]
pub enum FolderError {
    // The cause is in the message and not a `#[source]`, or an error chain
    // printed whole (`{:#}`) would say it twice.
    #[error("cannot read repository folder {path}: {cause}{hint}", hint = root_hint(path, cause))]
    Root {
        path: PathBuf,
        cause: std::io::Error,
    },
}

/// What to do about a repository folder that cannot be read.
fn root_hint(path: &Path, cause: &std::io::Error) -> &'static str {
    let text = path.to_string_lossy();
    if crate::source::git::is_remote_url(&text) {
        "; validate and render read a folder: clone the repository, or use plan, drift or sync, which fetch a URL"
    } else if cause.kind() == std::io::ErrorKind::NotFound {
        "; name the repository's root folder (the one holding environments/) with --repo DIR"
    } else {
        ""
    }
}

/// Reads `root/environments/**` into a tree. Unreadable entries become
/// problems in the tree (reported with validation errors), not failures.
pub fn read(root: &Path) -> Result<SourceTree, FolderError> {
    read_deferring(root, &BTreeSet::new())
}

/// [`read`], but the files named in `unchanged` (paths from the root,
/// known to hold what a base revision holds) that are plain files are
/// added by path only ([`SourceTree::defer`]): [`read_deferred`] reads the
/// ones a check needs. Every folder is still listed, so the tree's paths
/// and problems are [`read`]'s.
pub fn read_deferring(
    root: &Path,
    unchanged: &BTreeSet<String>,
) -> Result<SourceTree, FolderError> {
    let canonical_root = canonical(root)?;
    let mut tree = SourceTree::new();
    let envs = canonical_root.join(ENVIRONMENTS_DIR);
    if envs.is_dir() {
        walk(
            &canonical_root,
            &envs,
            ENVIRONMENTS_DIR,
            &mut tree,
            0,
            unchanged,
        );
    }
    Ok(tree)
}

/// Reads the deferred files `paths` of a tree [`read_deferring`] read
/// from `root` into it (a file that cannot be read is a problem of the
/// tree, as in [`read`]).
pub fn read_deferred(
    root: &Path,
    tree: &mut SourceTree,
    paths: &[String],
) -> Result<(), FolderError> {
    let canonical_root = canonical(root)?;
    for path in paths {
        if !tree.is_deferred(path) {
            continue;
        }
        let file = canonical_root.join(path);
        // Deferred as a plain file: one replaced since (by a symlink that
        // could lead out of the repository) is not followed.
        match fs::symlink_metadata(&file) {
            Ok(meta) if meta.file_type().is_file() => {}
            Ok(_) => {
                tree.unreadable(
                    path,
                    "changed while the repository was read (no longer a plain file); plan again",
                );
                continue;
            }
            Err(e) => {
                tree.unreadable(path, format!("cannot read: {e}"));
                continue;
            }
        }
        match read_capped(&file) {
            Ok(bytes) => tree.insert(path, bytes),
            Err(e) => tree.unreadable(path, format!("cannot read: {e}")),
        }
    }
    Ok(())
}

fn canonical(root: &Path) -> Result<PathBuf, FolderError> {
    root.canonicalize().map_err(|cause| FolderError::Root {
        path: root.to_path_buf(),
        cause,
    })
}

fn walk(
    root: &Path,
    dir: &Path,
    rel: &str,
    tree: &mut SourceTree,
    depth: usize,
    unchanged: &BTreeSet<String>,
) {
    if depth > 16 {
        tree.problem(rel, "folders nested more than 16 levels deep are not read");
        return;
    }
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            tree.problem(rel, format!("cannot read folder: {e}"));
            return;
        }
    };
    let mut entries: Vec<_> = entries.filter_map(Result::ok).collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            tree.problem(
                rel,
                format!("file name {:?} is not UTF-8", entry.file_name()),
            );
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        let rel_path = format!("{rel}/{name}");
        let path = entry.path();
        // The directory entry's type (no stat), except through symlinks.
        let file_type = match entry.file_type() {
            Ok(t) => t,
            Err(e) => {
                tree.problem(&rel_path, format!("cannot read: {e}"));
                continue;
            }
        };
        let (target, is_dir, is_file) = if file_type.is_symlink() {
            match path.canonicalize() {
                Ok(t) if t.starts_with(root) => {
                    let (d, f) = (t.is_dir(), t.is_file());
                    (t, d, f)
                }
                Ok(_) => {
                    tree.problem(
                        &rel_path,
                        "symlink points outside the repository; it is not read",
                    );
                    continue;
                }
                Err(e) => {
                    tree.problem(&rel_path, format!("broken symlink: {e}"));
                    continue;
                }
            }
        } else {
            (path, file_type.is_dir(), file_type.is_file())
        };
        if is_dir {
            walk(root, &target, &rel_path, tree, depth + 1, unchanged);
        } else if file_type.is_file() && unchanged.contains(&rel_path) {
            tree.defer(&rel_path);
        } else if is_file {
            match read_capped(&target) {
                Ok(bytes) => tree.insert(&rel_path, bytes),
                Err(e) => tree.problem(&rel_path, format!("cannot read: {e}")),
            }
        }
    }
}

/// Reads at most one byte past the cap, so an oversize file is detected
/// without being loaded whole.
fn read_capped(path: &Path) -> std::io::Result<Vec<u8>> {
    let file = fs::File::open(path)?;
    let size = file
        .metadata()
        .map_or(0, |m| m.len())
        .min(MAX_FILE_BYTES as u64 + 1);
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0) + 1);
    file.take(MAX_FILE_BYTES as u64 + 1)
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}
