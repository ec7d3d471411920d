//! Bakes the Git commit into the binary, for `tenantsync --version`.
//!
//! The commit comes from `TENANTSYNC_GIT_COMMIT` when set (the container
//! build passes it as a build argument: the image has no `.git`), else from
//! `git rev-parse HEAD` in this checkout, else it is `unknown` (a source
//! tarball, no git). Cargo reruns this only when that variable, `.git/HEAD`
//! or the branch it points to changes, so an edit to the sources does not
//! rerun it.

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

const COMMIT_VAR: &str = "TENANTSYNC_GIT_COMMIT";

fn main() {
    println!("cargo:rerun-if-env-changed={COMMIT_VAR}");
    let from_env = std::env::var(COMMIT_VAR)
        .ok()
        .map(|c| c.trim().to_string())
        .filter(|c| !c.is_empty());
    let commit = match from_env {
        Some(commit) => Some(commit),
        None => {
            watch_git_head();
            git(&["rev-parse", "HEAD"])
        }
    };
    let commit = commit
        .filter(|c| c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=TENANTSYNC_COMMIT={commit}");
}

/// Runs git in the package folder; `None` when git is missing or fails.
fn git(args: &[&str]) -> Option<String> {
    let dir = std::env::var_os("CARGO_MANIFEST_DIR")?;
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!text.is_empty()).then_some(text)
}

/// Asks Cargo to rerun when HEAD moves: `HEAD` itself (a checkout), the
/// branch it names (a commit), and `packed-refs` (a `git gc`). Only paths
/// that exist are named: Cargo reruns on every build for a missing one.
fn watch_git_head() {
    let (Some(git_dir), Some(common_dir)) = (
        git(&["rev-parse", "--absolute-git-dir"]).map(PathBuf::from),
        git(&["rev-parse", "--git-common-dir"]).map(PathBuf::from),
    ) else {
        // No repository (a source tarball, an image build) or git failed
        // this once: name a path that does not exist, so that Cargo runs
        // this again on the next build instead of keeping `unknown` for good.
        println!("cargo:rerun-if-changed=.git/HEAD-not-found");
        return;
    };
    // --git-common-dir may be relative to the package folder.
    let common_dir = match std::env::var_os("CARGO_MANIFEST_DIR") {
        Some(root) if common_dir.is_relative() => Path::new(&root).join(common_dir),
        _ => common_dir,
    };
    let head = git_dir.join("HEAD");
    watch(&head);
    let branch = std::fs::read_to_string(&head)
        .ok()
        .and_then(|h| h.strip_prefix("ref:").map(|r| r.trim().to_string()));
    if let Some(branch) = branch {
        let loose = common_dir.join(&branch);
        if loose.is_file() {
            watch(&loose);
        } else if let Some(parent) = loose.parent() {
            // A packed ref becomes a loose file on the next commit: watch
            // the folder it will appear in.
            watch(parent);
        }
    }
    watch(&common_dir.join("packed-refs"));
}

fn watch(path: &Path) {
    if path.exists() {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}
