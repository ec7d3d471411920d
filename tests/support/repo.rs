//! A temporary repository with one environment of a test's own over the
//! shipped `base`, and ways to run tenantsync on it against the control plane.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

use super::{control_plane, unique_name};

pub struct TestRepo {
    dir: tempfile::TempDir,
    pub env: String,
}

impl TestRepo {
    /// The shipped base with one environment layer of our own.
    pub fn new(test: &str) -> TestRepo {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let base = dir.path().join("environments/base/workspaces");
        std::fs::create_dir_all(&base).expect("mkdir");
        std::fs::copy(
            root.join("environments/base/environment.yaml"),
            dir.path().join("environments/base/environment.yaml"),
        )
        .expect("copy");
        for entry in std::fs::read_dir(root.join("environments/base/workspaces")).expect("read") {
            let entry = entry.expect("entry");
            std::fs::copy(entry.path(), base.join(entry.file_name())).expect("copy");
        }
        let env = unique_name(test)
            .chars()
            .take(28)
            .collect::<String>()
            .trim_end_matches('-')
            .to_string();
        let repo = TestRepo { dir, env };
        repo.write(
            "environment.yaml",
            &format!(
                "apiVersion: tenantsync.io/v1alpha1\nkind: Environment\nmetadata:\n  name: {}\nspec:\n  base: base\n  ingress:\n    domain: test.example.com\n",
                repo.env
            ),
        );
        repo
    }

    /// Writes a file of the test's environment layer.
    pub fn write(&self, rel: &str, text: &str) {
        let path = self
            .dir
            .path()
            .join("environments")
            .join(&self.env)
            .join(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    }

    /// Removes a file of the test's environment layer.
    pub fn remove(&self, rel: &str) {
        let path = self
            .dir
            .path()
            .join("environments")
            .join(&self.env)
            .join(rel);
        std::fs::remove_file(&path).unwrap_or_else(|e| panic!("rm {}: {e}", path.display()));
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn run(&self, verb: &str, context: &str, extra: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_tenantsync"))
            .arg(verb)
            .args(["--env", &self.env, "--context", context, "--repo"])
            .arg(self.path())
            .arg("--kubeconfig")
            .arg(control_plane().kubeconfig())
            .args(extra)
            .output()
            .expect("run tenantsync")
    }

    pub fn plan_json(&self, context: &str) -> Value {
        let out = self.run("plan", context, &["--output", "json"]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("plan JSON")
    }

    pub fn namespace(&self, workspace: &str) -> String {
        format!("{workspace}-{}", self.env)
    }

    /// Syncs the environment with `tenantsync sync` (server-side apply as
    /// field manager tenantsync, inventory recorded); returns how many
    /// objects were created.
    pub async fn apply_rendered(&self) -> usize {
        let out = self.run("sync", "admin", &["--output", "json"]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "sync failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: Value = serde_json::from_slice(&out.stdout).expect("sync report");
        report["created"].as_array().map_or(0, Vec::len)
    }
}
