//! What `scripts/control-plane` tells a newcomer: the export lines put the
//! kubectl built with the server first on PATH (the machine's own kubectl
//! may be minors away), and the default state dir is per user and checkout,
//! so a second clone never reuses (or stops) another's control plane.

use crate::support::{KUBECONFIG_ENV, control_plane};
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A checkout holding just what the script reads: itself and the pinned
/// go.mod files.
fn fake_checkout(parent: &Path, name: &str) -> PathBuf {
    let root = parent.join(name);
    for file in [
        "scripts/control-plane",
        "testenv/kube/go.mod",
        "testenv/etcd/go.mod",
    ] {
        let to = root.join(file);
        std::fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
        std::fs::copy(repo().join(file), &to).expect("copy");
    }
    root
}

/// The state dir `env` names when nothing runs there.
fn default_state_dir(checkout: &Path, runtime_dir: &Path) -> String {
    let out = Command::new(checkout.join("scripts/control-plane"))
        .arg("env")
        .env_remove("TENANTSYNC_CP_DIR")
        .env("XDG_RUNTIME_DIR", runtime_dir)
        .output()
        .expect("run scripts/control-plane env");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    err.split("no control plane is running in ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("no state dir named in: {err}"))
        .to_string()
}

/// Every checkout shared `${XDG_RUNTIME_DIR:-/tmp}/tenantsync-control-plane`.
#[test]
fn two_checkouts_get_different_default_state_dirs() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let runtime = tmp.path().join("run");
    std::fs::create_dir_all(&runtime).expect("mkdir");
    let a = default_state_dir(&fake_checkout(tmp.path(), "one/tenantsync"), &runtime);
    let b = default_state_dir(&fake_checkout(tmp.path(), "two/tenantsync"), &runtime);
    assert_ne!(a, b);
    // This user's uid: the owner of a folder this process just made.
    let uid = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&runtime).expect("stat").uid()
    };
    for dir in [&a, &b] {
        let name = dir
            .strip_prefix(&format!("{}/", runtime.display()))
            .unwrap_or_else(|| panic!("{dir} is not in XDG_RUNTIME_DIR"));
        assert!(
            name.starts_with(&format!("tenantsync-cp-{uid}-tenantsync-")),
            "{name}"
        );
    }
    // The same checkout keeps its dir from run to run.
    assert_eq!(
        a,
        default_state_dir(&tmp.path().join("one/tenantsync"), &runtime)
    );
}

/// The binary cache has its own variable: a user's XDG_CACHE_HOME (set for
/// tenantsync's Git cache) need not move it and rebuild for 9 minutes.
#[test]
fn the_binary_cache_follows_tenantsync_cp_cache() {
    let out = Command::new(repo().join("scripts/control-plane"))
        .arg("bin-dir")
        .env("TENANTSYNC_CP_CACHE", "/somewhere/bin")
        .env("XDG_CACHE_HOME", "/elsewhere")
        .output()
        .expect("run scripts/control-plane bin-dir");
    assert_eq!(out.status.code(), Some(0));
    let dir = String::from_utf8_lossy(&out.stdout);
    assert!(dir.starts_with("/somewhere/bin/k8s-v1."), "{dir}");
}

/// README's `eval "$(scripts/control-plane up)"` left the machine's kubectl
/// (1.32 here) on PATH against a 1.34 server: a skew warning on every
/// command a newcomer copied.
#[test]
fn the_export_lines_put_the_matching_kubectl_first_on_path() {
    if std::env::var_os(KUBECONFIG_ENV).is_some() {
        // A control plane not started by the script: no state dir to ask.
        return;
    }
    let state_dir = control_plane()
        .kubeconfig()
        .parent()
        .expect("the kubeconfig is in the state dir")
        .to_path_buf();
    let out = Command::new("bash")
        .arg("-c")
        .arg(r#"eval "$("$0" env)" && command -v kubectl && kubectl version -o json"#)
        .arg(repo().join("scripts/control-plane"))
        .env("TENANTSYNC_CP_DIR", &state_dir)
        .env_remove("KUBECONFIG")
        .output()
        .expect("run bash");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    let (path, json) = stdout.split_once('\n').expect("two outputs");
    let bin_dir = Command::new(repo().join("scripts/control-plane"))
        .arg("bin-dir")
        .output()
        .expect("bin-dir");
    let bin_dir = String::from_utf8_lossy(&bin_dir.stdout).trim().to_string();
    assert_eq!(path, format!("{bin_dir}/kubectl"));
    let version: serde_json::Value = serde_json::from_str(json).expect("kubectl version JSON");
    assert_eq!(
        version["clientVersion"]["minor"], version["serverVersion"]["minor"],
        "{version}"
    );
    assert!(!stderr.contains("version difference"), "{stderr}");
}
