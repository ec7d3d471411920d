//! An in-memory tree of repository files: the input of the pure core.
//!
//! Folders and Git revisions are both read into a [`SourceTree`] by the
//! `source` edge, so validation and rendering never touch the file system.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use crate::declare::diag::Diagnostic;
use crate::declare::yaml::{FileId, Pos};

/// Files larger than this are refused before parsing.
pub const MAX_FILE_BYTES: usize = 1024 * 1024;

/// Repository files by `/`-separated relative path.
#[derive(Clone, Debug, Default)]
pub struct SourceTree {
    files: BTreeMap<String, Vec<u8>>,
    /// Problems found while reading (unsafe paths, symlinks leaving the
    /// repository, oversize files), reported with the validation errors.
    problems: Vec<Diagnostic>,
    /// Files known by path whose content was not read (held in `files`
    /// as empty): a work tree's files Git knows to be unchanged since the
    /// revision a pull request is planned against, read only if a check
    /// needs them (see [`SourceTree::defer`]).
    deferred: BTreeSet<String>,
}

impl SourceTree {
    pub fn new() -> SourceTree {
        SourceTree::default()
    }

    /// Adds a file. Paths with `..`, absolute paths and oversize files are
    /// recorded as problems instead.
    pub fn insert(&mut self, path: &str, bytes: Vec<u8>) {
        // A deferred file's place is taken whatever is read: the content,
        // or the problem that it could not be held.
        if self.deferred.remove(path) {
            self.files.remove(path);
        }
        if let Err(message) = check_path(path) {
            self.problem(path, message);
            return;
        }
        if bytes.len() > MAX_FILE_BYTES {
            self.problem(
                path,
                format!(
                    "file is {} bytes, over the {} byte limit for a declaration",
                    bytes.len(),
                    MAX_FILE_BYTES
                ),
            );
            return;
        }
        self.files.insert(path.to_string(), bytes);
    }

    /// A deferred file that could not be read after all: no longer in the
    /// tree, `message` its problem (as a full read reports it).
    pub fn unreadable(&mut self, path: &str, message: impl Into<String>) {
        if self.deferred.remove(path) {
            self.files.remove(path);
        }
        self.problem(path, message);
    }

    /// Adds a file by its path only, its content not read: one the source
    /// knows to be the same as in a base revision, which only a check that
    /// needs it reads ([`SourceTree::insert`] then replaces it). Its content
    /// is empty until then: whoever parses a file must ask
    /// [`SourceTree::is_deferred`] first.
    pub fn defer(&mut self, path: &str) {
        if let Err(message) = check_path(path) {
            self.problem(path, message);
            return;
        }
        self.files.insert(path.to_string(), Vec::new());
        self.deferred.insert(path.to_string());
    }

    /// Whether `path`'s content was not read ([`SourceTree::defer`]).
    pub fn is_deferred(&self, path: &str) -> bool {
        self.deferred.contains(path)
    }

    /// Whether any file's content was not read: a digest of the tree's
    /// content cannot be made.
    pub fn has_deferred(&self) -> bool {
        !self.deferred.is_empty()
    }

    /// Records a problem found while reading the tree.
    pub fn problem(&mut self, path: &str, message: impl Into<String>) {
        self.problems.push(Diagnostic {
            file: path.to_string(),
            line: 1,
            column: 1,
            pointer: None,
            message: message.into(),
        });
    }

    pub fn problems(&self) -> &[Diagnostic] {
        &self.problems
    }

    /// A file's content; `None` for a file not read ([`SourceTree::defer`]).
    pub fn get(&self, path: &str) -> Option<&[u8]> {
        if !self.deferred.is_empty() && self.deferred.contains(path) {
            return None;
        }
        self.files.get(path).map(Vec::as_slice)
    }

    /// Paths under `dir/` (not recursive into deeper folders unless `deep`).
    pub fn list(&self, dir: &str) -> impl Iterator<Item = &str> {
        let prefix = format!("{}/", dir.trim_end_matches('/'));
        self.files
            .range(prefix.clone()..)
            .take_while(move |(p, _)| p.starts_with(&prefix))
            .map(|(p, _)| p.as_str())
    }

    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.files.keys().map(String::as_str)
    }

    /// How many files the tree holds (read or deferred).
    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

fn check_path(path: &str) -> Result<(), String> {
    if path.starts_with('/') || path.contains('\\') {
        return Err("path must be relative to the repository".into());
    }
    if path
        .split('/')
        .any(|c| c == ".." || c == "." || c.is_empty())
    {
        return Err("path with `..`, `.` or empty components is refused".into());
    }
    Ok(())
}

/// Maps [`FileId`]s to paths so positions can be printed.
#[derive(Clone, Debug, Default)]
pub struct FileTable {
    /// Each path once, shared with `ids`.
    paths: Vec<Arc<str>>,
    /// Each path's id: looking a path up by scanning `paths` made adding
    /// 5,000 workspace files about 3% of a one-workspace plan's CPU before
    /// the focused load, about a quarter once it was focused
    /// (docs/benchmarks.md).
    ids: HashMap<Arc<str>, FileId>,
}

impl FileTable {
    pub fn add(&mut self, path: &str) -> FileId {
        if let Some(id) = self.ids.get(path) {
            return *id;
        }
        let id = FileId(u32::try_from(self.paths.len()).unwrap_or(u32::MAX));
        let path: Arc<str> = Arc::from(path);
        self.paths.push(path.clone());
        self.ids.insert(path, id);
        id
    }

    /// Room for `more` paths (one growth, not one per doubling).
    pub fn reserve(&mut self, more: usize) {
        self.paths.reserve(more);
        self.ids.reserve(more);
    }

    pub fn path(&self, id: FileId) -> &str {
        self.paths.get(id.0 as usize).map_or("<unknown>", |p| p)
    }

    /// `pos` as `file:line:col`.
    pub fn location(&self, pos: Pos) -> crate::declare::diag::Location {
        crate::declare::diag::Location {
            file: self.path(pos.file).to_string(),
            line: pos.line,
            column: pos.col,
        }
    }

    /// A diagnostic at `pos`.
    pub fn diag(
        &self,
        pos: Pos,
        pointer: Option<String>,
        message: impl Into<String>,
    ) -> Diagnostic {
        Diagnostic {
            file: self.path(pos.file).to_string(),
            line: pos.line,
            column: pos.col,
            pointer,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Review of issue 19: a deferred file that turns out oversize or
    /// unreadable when it is read is a problem, as in a full read, and no
    /// longer a deferred file (which a load would report as a bug).
    #[test]
    fn a_deferred_file_read_oversize_or_unreadable_leaves_only_its_problem() {
        let mut t = SourceTree::new();
        t.defer("environments/dev/workspaces/a.yaml");
        t.defer("environments/dev/workspaces/b.yaml");
        t.defer("environments/dev/workspaces/c.yaml");
        assert!(t.is_deferred("environments/dev/workspaces/a.yaml"));
        assert_eq!(t.get("environments/dev/workspaces/a.yaml"), None);
        t.insert(
            "environments/dev/workspaces/a.yaml",
            vec![b'x'; MAX_FILE_BYTES + 1],
        );
        t.unreadable("environments/dev/workspaces/b.yaml", "cannot read: gone");
        t.insert(
            "environments/dev/workspaces/c.yaml",
            b"kind: Workspace".to_vec(),
        );
        assert!(!t.has_deferred());
        assert_eq!(
            t.paths().collect::<Vec<_>>(),
            ["environments/dev/workspaces/c.yaml"]
        );
        assert_eq!(
            t.get("environments/dev/workspaces/c.yaml"),
            Some(&b"kind: Workspace"[..])
        );
        let problems: Vec<&str> = t.problems().iter().map(|d| d.file.as_str()).collect();
        assert_eq!(
            problems,
            [
                "environments/dev/workspaces/a.yaml",
                "environments/dev/workspaces/b.yaml"
            ]
        );
    }

    #[test]
    fn refuses_escaping_and_oversize_paths() {
        let mut t = SourceTree::new();
        t.insert("environments/../etc/passwd", b"x".to_vec());
        t.insert("/abs.yaml", b"x".to_vec());
        t.insert("environments/big.yaml", vec![b'a'; MAX_FILE_BYTES + 1]);
        t.insert("environments/ok.yaml", b"a: 1".to_vec());
        assert_eq!(t.paths().collect::<Vec<_>>(), vec!["environments/ok.yaml"]);
        assert_eq!(t.problems().len(), 3);
        assert_eq!(t.problems()[0].file, "environments/../etc/passwd");
        assert!(
            t.problems()[0].message.contains("`..`"),
            "{}",
            t.problems()[0].message
        );
        assert!(t.problems()[1].message.contains("relative"));
        assert!(t.problems()[2].message.contains("byte limit"));
    }

    #[test]
    fn lists_a_folder() {
        let mut t = SourceTree::new();
        t.insert("environments/dev/environment.yaml", vec![]);
        t.insert("environments/dev/workspaces/a.yaml", vec![]);
        t.insert("environments/devx/environment.yaml", vec![]);
        assert_eq!(t.list("environments/dev").count(), 2);
    }
}
