//! `tenantsync validate` and `render` as a user runs them: the real binary on
//! the shipped examples, on broken variants, and on hostile input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tenantsync"))
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create dir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("dir entry");
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy file");
        }
    }
}

/// A temporary repository holding a copy of the shipped examples.
fn example_repo() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    copy_dir(
        &root().join("environments"),
        &dir.path().join("environments"),
    );
    dir
}

fn validate(repo: &Path) -> Output {
    bin()
        .arg("validate")
        .arg("--repo")
        .arg(repo)
        .output()
        .expect("run tenantsync")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn shipped_examples_are_valid() {
    let out = validate(&root());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("5 environment(s) valid (dev, dr, prod, qa, staging)"),
        "{stdout}"
    );
}

/// Each folder in tests/broken/ overlays files on the examples; validation
/// must fail with exactly the lines in its expected.txt.
#[test]
fn broken_variants_fail_with_the_expected_messages() {
    let cases = std::fs::read_dir(root().join("tests/broken")).expect("tests/broken");
    let mut checked = 0;
    for case in cases {
        let case = case.expect("case").path();
        let repo = example_repo();
        copy_dir(
            &case.join("environments"),
            &repo.path().join("environments"),
        );
        let out = validate(repo.path());
        let expected = std::fs::read_to_string(case.join("expected.txt")).expect("expected.txt");
        assert_eq!(
            out.status.code(),
            Some(1),
            "{}: {}",
            case.display(),
            stderr(&out)
        );
        assert_eq!(stderr(&out), expected, "case {}", case.display());
        checked += 1;
    }
    assert!(checked >= 15, "only {checked} broken variants found");
}

#[test]
fn json_output_lists_the_same_errors() {
    let repo = example_repo();
    copy_dir(
        &root().join("tests/broken/typo-field/environments"),
        &repo.path().join("environments"),
    );
    let out = bin()
        .args(["validate", "--output", "json", "--repo"])
        .arg(repo.path())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON array");
    let errors = json.as_array().expect("array");
    assert_eq!(errors.len(), 1);
    assert_eq!(
        errors[0]["file"],
        "environments/base/workspaces/woodgrove.yaml"
    );
    assert_eq!(errors[0]["line"], 9);
    assert_eq!(errors[0]["column"], 7);
    assert_eq!(errors[0]["pointer"], "/spec/fhirServices/0/replcas");
}

#[test]
fn non_utf8_file_is_located() {
    let repo = example_repo();
    let path = repo
        .path()
        .join("environments/base/workspaces/woodgrove.yaml");
    std::fs::write(
        &path,
        b"apiVersion: tenantsync.io/v1alpha1\nkind: Workspace\nmetadata:\n  name: caf\xe9\n",
    )
    .expect("write");
    let out = validate(repo.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).starts_with(
            "environments/base/workspaces/woodgrove.yaml:4:12: error: file is not valid UTF-8\n"
        ),
        "{}",
        stderr(&out)
    );
}

#[test]
fn oversize_file_is_refused_without_parsing() {
    let repo = example_repo();
    let path = repo.path().join("environments/dev/workspaces/huge.yaml");
    std::fs::write(&path, vec![b'#'; 2 * 1024 * 1024]).expect("write");
    let out = validate(repo.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(
            "environments/dev/workspaces/huge.yaml:1:1: error: file is 1048577 bytes, over the 1048576 byte limit for a declaration"
        ),
        "{}",
        stderr(&out)
    );
}

#[cfg(unix)]
#[test]
fn symlink_leaving_the_repository_is_not_followed() {
    let repo = example_repo();
    let outside = tempfile::tempdir().expect("tempdir");
    let secret = outside.path().join("secret.yaml");
    std::fs::write(
        &secret,
        "apiVersion: tenantsync.io/v1alpha1\nkind: Workspace\nmetadata: {name: leak}\nspec: {}\n",
    )
    .expect("write");
    std::os::unix::fs::symlink(
        &secret,
        repo.path().join("environments/dev/workspaces/leak.yaml"),
    )
    .expect("symlink");
    let out = validate(repo.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(
            "environments/dev/workspaces/leak.yaml:1:1: error: symlink points outside the repository; it is not read"
        ),
        "{}",
        stderr(&out)
    );
    // A symlink that stays inside is read as usual.
    std::fs::remove_file(repo.path().join("environments/dev/workspaces/leak.yaml")).expect("rm");
    std::os::unix::fs::symlink(
        "sandbox.yaml",
        repo.path().join("environments/dev/workspaces/again.yaml"),
    )
    .expect("symlink");
    let out = validate(repo.path());
    assert!(
        stderr(&out).contains("this file is named after workspace `again` but declares `sandbox`"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn deep_nesting_is_refused() {
    // 100 levels: over tenantsync's own cap; 5000: over the parser's.
    for (depth, message) in [
        (100, "nesting deeper than 64 levels"),
        (5000, "recursion limit exceeded"),
    ] {
        let repo = example_repo();
        let text = format!(
            "apiVersion: tenantsync.io/v1alpha1\nkind: Workspace\nmetadata: {{name: deep}}\nspec: {}{}\n",
            "[".repeat(depth),
            "]".repeat(depth)
        );
        std::fs::write(
            repo.path().join("environments/dev/workspaces/deep.yaml"),
            text,
        )
        .expect("write");
        let out = validate(repo.path());
        assert_eq!(out.status.code(), Some(1));
        assert!(
            stderr(&out).starts_with("environments/dev/workspaces/deep.yaml:4:"),
            "{}",
            stderr(&out)
        );
        assert!(stderr(&out).contains(message), "{}", stderr(&out));
    }
}

#[test]
fn render_is_byte_identical_across_runs() {
    let run = || {
        bin()
            .args(["render", "--env", "prod", "--repo"])
            .arg(root())
            .output()
            .expect("run")
    };
    let (a, b) = (run(), run());
    assert_eq!(a.status.code(), Some(0), "{}", stderr(&a));
    assert!(!a.stdout.is_empty());
    assert_eq!(a.stdout, b.stdout);
}

#[test]
fn render_of_an_invalid_environment_prints_errors_and_nothing_else() {
    let repo = example_repo();
    copy_dir(
        &root().join("tests/broken/cast-names-unknown-fhir/environments"),
        &repo.path().join("environments"),
    );
    let out = bin()
        .args(["render", "--env", "dev", "--repo"])
        .arg(repo.path())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert!(
        stderr(&out).contains("names FHIR service `apii`"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn unknown_environment_names_the_known_ones() {
    let out = bin()
        .args(["render", "--env", "prd", "--repo"])
        .arg(root())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(
            "environment `prd` not found; environments: dev, dr, prod, qa, staging (abstract, only built on: base)"
        ),
        "{}",
        stderr(&out)
    );
}

/// A thousand generated workspaces validate and render.
#[test]
fn a_thousand_workspaces_validate_and_render() {
    let repo = example_repo();
    let dir = repo.path().join("environments/qa/workspaces");
    std::fs::create_dir_all(&dir).expect("mkdir");
    for i in 0..1000 {
        let text = format!(
            "apiVersion: tenantsync.io/v1alpha1\nkind: Workspace\nmetadata:\n  name: tenant-{i:04}\nspec:\n  fhirServices:\n    - name: main\n  dicomServices:\n    - name: pacs\n      dicomCast: {{fhirService: main, tableEndpoint: \"https://tenantcast{i:04}.table.core.windows.net/\", identity: {{clientId: 5c2b9d63-0a1e-4f2b-8c94-3d6f8e0a2c21}}}}\n  iotConnectors:\n    - name: vitals\n      identity: {{clientId: 6d3cae74-1b2f-4a3c-9da5-4e7a9f1b3d32}}\n      ingestionEndpointConfiguration: {{eventHubName: hub, fullyQualifiedEventHubNamespace: tenantiot{i:04}.servicebus.windows.net}}\n      deviceMapping: {{content: {{templateType: CollectionContent, template: [{{templateType: JsonPathContent, template: {{}}}}]}}}}\n      fhirDestinations:\n        - {{name: main, resourceIdentityResolutionType: Create, fhirService: main, fhirMapping: {{content: {{templateType: CollectionFhirTemplate, template: [{{templateType: CodeValueFhir, template: {{}}}}]}}}}}}\n"
        );
        std::fs::write(dir.join(format!("tenant-{i:04}.yaml")), text).expect("write");
    }
    let out = bin()
        .args(["validate", "--env", "qa", "--repo"])
        .arg(repo.path())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = bin()
        .args(["render", "--env", "qa", "--output", "json", "--repo"])
        .arg(repo.path())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let objects: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("json");
    let namespaces = objects.iter().filter(|o| o["kind"] == "Namespace").count();
    assert_eq!(namespaces, 1004);
}

#[test]
fn a_daemon_configuration_with_mistakes_is_refused_with_positions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tenantsync.yaml");
    std::fs::write(
        &path,
        "apiVersion: tenantsync.io/v1alpha1\nkind: DaemonConfig\nrepo: .\nenvironments: [{name: dev}]\nintervall: 30s\n",
    )
    .expect("write");
    let out = bin()
        .arg("run")
        .arg("--config")
        .arg(&path)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!(
            "{}:5:1: error: /intervall: unknown field `intervall`; did you mean `interval`?",
            path.display()
        )),
        "{}",
        stderr(&out)
    );
}

/// Issue 13: a schema error in a workspace no longer hides its rule errors
/// (the README promises every problem is reported).
#[test]
fn schema_errors_do_not_hide_rule_errors() {
    let repo = example_repo();
    std::fs::write(
        repo.path().join("environments/base/workspaces/woodgrove.yaml"),
        "apiVersion: tenantsync.io/v1alpha1\nkind: Workspace\nmetadata:\n  name: woodgrove\nspec:\n  fhirServices:\n    - name: api\n      replicas: many\n  dicomServices:\n    - name: scans\n      dicomCast:\n        fhirService: apii\n",
    )
    .expect("write");
    let out = validate(repo.path());
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("woodgrove.yaml:8:17: error: /spec/fhirServices/0/replicas: expected integer, found string\n"),
        "{err}"
    );
    assert!(
        err.contains("woodgrove.yaml:12:22: error: /spec/dicomServices/0/dicomCast/fhirService: the dicomCast of DICOM service `scans` names FHIR service `apii`"),
        "{err}"
    );
}

/// Collisions are found by `validate`, so `plan` and `sync` refuse them
/// too, with both positions, before contacting any cluster.
#[test]
fn plan_and_sync_refuse_a_rendered_collision_naming_both_declarations() {
    let repo = example_repo();
    copy_dir(
        &root().join("tests/broken/iot-connector-and-destination-collide/environments"),
        &repo.path().join("environments"),
    );
    let expected = "environments/dev/workspaces/collide.yaml:15:13: error: /spec/iotConnectors/1/name: IoT connector `a-b` renders ConfigMap collide-dev/iot-a-b, which FHIR destination `b` of IoT connector `a` (environments/dev/workspaces/collide.yaml:14:18) also renders";
    for command in ["plan", "sync"] {
        let out = bin()
            .args([
                command,
                "--env",
                "dev",
                "--kubeconfig",
                "/nonexistent/kubeconfig",
                "--repo",
            ])
            .arg(repo.path())
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(1), "{command}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(err.starts_with(expected), "{command}: {err}");
        assert!(
            err.contains("the cluster was not contacted"),
            "{command}: {err}"
        );
    }
}

/// `render --env base` named the abstract layer's missing settings (four
/// errors about an ingress domain) instead of saying it is only built on.
#[test]
fn rendering_an_abstract_layer_says_it_is_only_built_on() {
    for command in ["render", "validate"] {
        let out = bin()
            .args([command, "--env", "base", "--repo"])
            .arg(root())
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(1));
        let err = stderr(&out);
        assert!(
            err.starts_with(
                "environments/base/environment.yaml:8:13: error: /spec/abstract: `base` is abstract: \
                 it is only built on, never rendered or synced; environments: dev, dr, prod, qa, staging\n"
            ),
            "{command}: {err}"
        );
        assert_eq!(
            err.lines().filter(|l| l.contains("error:")).count(),
            1,
            "{err}"
        );
        assert!(out.stdout.is_empty() || command == "validate");
    }
}

/// Outside a repository the error said what was missing, not how to point
/// tenantsync at the repository.
#[test]
fn no_environments_found_says_to_use_repo() {
    let empty = tempfile::tempdir().expect("tempdir");
    for args in [&["validate"][..], &["render", "--env", "dev"][..]] {
        let out = bin()
            .args(args)
            .current_dir(empty.path())
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = stderr(&out);
        assert!(
            err.contains("no environments found: expected environments/<name>/environment.yaml; run tenantsync in the repository's root folder or name it with --repo DIR"),
            "{args:?}: {err}"
        );
    }
}

/// Custom YAML tags and several documents in one file are refused by the
/// binary, with their positions; so is a path with `..`, which a folder
/// cannot hold but a Git tree can (`git mktree` writes one): `plan --rev`
/// refuses it before contacting any cluster.
#[test]
fn custom_tags_several_documents_and_dotdot_paths_are_refused_through_the_cli() {
    let repo = example_repo();
    let qa = repo.path().join("environments/qa/workspaces");
    std::fs::create_dir_all(&qa).expect("mkdir");
    std::fs::write(
        qa.join("tagged.yaml"),
        "apiVersion: tenantsync.io/v1alpha1\nkind: Workspace\nmetadata: {name: tagged}\nspec: !custom {fhirServices: [{name: api}]}\n",
    )
    .expect("write");
    std::fs::write(
        qa.join("scalar-tag.yaml"),
        "apiVersion: tenantsync.io/v1alpha1\nkind: Workspace\nmetadata: {name: !!python/object:os.system scalar}\nspec: {}\n",
    )
    .expect("write");
    std::fs::write(
        qa.join("two.yaml"),
        "apiVersion: tenantsync.io/v1alpha1\nkind: Workspace\nmetadata: {name: one}\nspec: {}\n---\napiVersion: tenantsync.io/v1alpha1\nkind: Workspace\nmetadata: {name: two}\nspec: {}\n",
    )
    .expect("write");
    let out = validate(repo.path());
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    for expected in [
        "environments/qa/workspaces/tagged.yaml:4:7: error: YAML tags are not supported",
        "environments/qa/workspaces/scalar-tag.yaml:3:18: error: YAML tag `tag:yaml.org,2002:python/object:os.system` is not supported here",
        "environments/qa/workspaces/two.yaml:5:1: error: a declaration file holds exactly one YAML document",
    ] {
        assert!(err.contains(expected), "{expected}\n{err}");
    }

    // A commit whose tree has a folder named `..` beside the others.
    let repo = example_repo();
    let dir = repo.path();
    let git = |args: &[&str], input: Option<&str>| -> String {
        use std::io::Write;
        let mut child = Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
            .args(args)
            .current_dir(dir)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("git");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.unwrap_or_default().as_bytes())
            .expect("write");
        let out = child.wait_with_output().expect("git");
        assert!(out.status.success(), "git {args:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    git(&["init", "-q"], None);
    git(&["add", "-A"], None);
    git(&["commit", "-qm", "examples"], None);
    let blob = git(
        &["hash-object", "-w", "--stdin"],
        Some(
            "apiVersion: tenantsync.io/v1alpha1\nkind: Workspace\nmetadata: {name: evil}\nspec: {}\n",
        ),
    );
    let evil = git(
        &["mktree"],
        Some(&format!("100644 blob {blob}\tevil.yaml\n")),
    );
    // Replaces (or adds) `name` in the listing of `tree` with `entry`.
    let with = |tree: &str, name: &str, entry: &str| -> String {
        let mut lines: Vec<String> = git(&["ls-tree", tree], None)
            .lines()
            .filter(|l| !l.ends_with(&format!("\t{name}")))
            .map(String::from)
            .collect();
        lines.push(entry.to_string());
        git(&["mktree"], Some(&(lines.join("\n") + "\n")))
    };
    let qa = with(
        "HEAD:environments/qa",
        "..",
        &format!("040000 tree {evil}\t.."),
    );
    let environments = with("HEAD:environments", "qa", &format!("040000 tree {qa}\tqa"));
    let root = with(
        "HEAD",
        "environments",
        &format!("040000 tree {environments}\tenvironments"),
    );
    let commit = git(&["commit-tree", &root, "-p", "HEAD", "-m", "dotdot"], None);
    let out = bin()
        .args(["plan", "--env", "qa", "--rev", &commit])
        .args(["--kubeconfig", "/nonexistent/kubeconfig", "--repo"])
        .arg(dir)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("environments/qa/..:1:1: error: path with `..`"),
        "{err}"
    );
    assert!(err.contains("the cluster was not contacted"), "{err}");
}

/// `{environment}` in the template does not keep every two environments
/// apart: with `{workspace}-{environment}`, workspace `contoso-eu` of `qa`
/// and workspace `contoso` of `eu-qa` both render `contoso-eu-qa`. Only a
/// validation of both environments together can see it.
#[test]
fn validate_reports_two_environments_rendering_one_namespace() {
    let repo = example_repo();
    let envs = repo.path().join("environments");
    std::fs::create_dir_all(envs.join("qa/workspaces")).expect("mkdir");
    std::fs::write(
        envs.join("qa/workspaces/contoso-eu.yaml"),
        "apiVersion: tenantsync.io/v1alpha1\nkind: Workspace\nmetadata:\n  name: contoso-eu\nspec:\n  fhirServices:\n    - name: main\n",
    )
    .expect("write workspace");
    std::fs::create_dir_all(envs.join("eu-qa")).expect("mkdir");
    std::fs::write(
        envs.join("eu-qa/environment.yaml"),
        "apiVersion: tenantsync.io/v1alpha1\nkind: Environment\nmetadata:\n  name: eu-qa\nspec:\n  base: base\n  ingress:\n    domain: eu-qa.health.example.com\n",
    )
    .expect("write environment");
    let out = validate(repo.path());
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let shown = stderr(&out);
    assert!(
        shown.contains(
            "environments/qa: error: Namespace/contoso-eu-qa (operator guardrail): namespace `contoso-eu-qa` is rendered by workspace `contoso-eu` of environment `qa` and by workspace `contoso` of environment `eu-qa`"
        ) && shown.contains("rename a workspace or change a namespaceTemplate"),
        "{shown}"
    );
    assert_eq!(shown.matches("(operator guardrail)").count(), 1, "{shown}");
    // Each environment alone is valid; so are both when the operator keeps
    // environments on clusters of their own.
    for args in [
        &["--env", "qa"][..],
        &["--env", "eu-qa"][..],
        &["--allow-shared-namespace-template"][..],
    ] {
        let out = bin()
            .arg("validate")
            .args(args)
            .arg("--repo")
            .arg(repo.path())
            .output()
            .expect("run tenantsync");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
    }
}

/// Hostile review D4: a setting of the wrong type in prod/environment.yaml
/// made `validate --env prod` print 16 false errors against the base
/// workspaces ("no image for FHIR service", "sets no spec.ingress.domain"),
/// the real error last. Now it is the only one.
#[test]
fn a_type_error_in_environment_settings_is_reported_alone_without_false_rule_errors() {
    for (from, to, expected) in [
        (
            "vaultName: kv-health-prod",
            "vaultName: 5",
            "environments/prod/environment.yaml:41:16: error: /spec/keyVault/vaultName: expected string, found number",
        ),
        (
            "domain: health.example.com",
            "domain: []",
            "environments/prod/environment.yaml:8:13: error: /spec/ingress/domain: expected string, found array",
        ),
        (
            "prune: true",
            "prune: []",
            "environments/prod/environment.yaml:18:12: error: /spec/syncPolicy/prune: expected boolean, found array",
        ),
    ] {
        let repo = example_repo();
        let path = repo.path().join("environments/prod/environment.yaml");
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.contains(from), "{from}");
        std::fs::write(&path, text.replace(from, to)).expect("write");
        for env in ["prod", "dr"] {
            let out = bin()
                .args(["validate", "--env", env, "--repo"])
                .arg(repo.path())
                .output()
                .expect("run tenantsync");
            assert_eq!(out.status.code(), Some(1), "{to}");
            assert_eq!(
                stderr(&out),
                format!("{expected}\n1 error(s)\n"),
                "{to} in {env}"
            );
        }
    }
}

/// Hostile review (minor): a guardrail broken by a resources/ manifest said
/// only `environments/dev: error: ...`; it names the manifest's file.
#[test]
fn a_guardrail_broken_by_a_resources_manifest_names_the_manifest_file() {
    let repo = example_repo();
    let dir = repo.path().join("environments/dev/resources");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(
        dir.join("backdoor.yaml"),
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: backdoor\n  namespace: kube-system\nspec: {}\n",
    )
    .expect("write");
    let out = bin()
        .args(["validate", "--env", "dev", "--repo"])
        .arg(repo.path())
        .output()
        .expect("run tenantsync");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).starts_with(
            "environments/dev/resources/backdoor.yaml:1:1: error: Deployment/kube-system/backdoor (operator guardrail): a resources/ manifest writes into reserved namespace `kube-system`"
        ),
        "{}",
        stderr(&out)
    );
}

/// Hostile review (minor): an ownership policy with a broken glob, an
/// unknown kind or a bad JSON-pointer escape passed validate and matched
/// nothing; each is refused where it is written.
#[test]
fn ownership_policy_broken_glob_unknown_kind_and_bad_pointer_escape_are_refused() {
    let repo = example_repo();
    let path = repo.path().join("environments/prod/environment.yaml");
    let text = std::fs::read_to_string(&path).expect("read");
    let policy = "  ownership:\n    revert: [\"kubectl*\", \"before-first-apply\"]\n    ignore:\n      - kinds: [Deployment]\n        paths: [/spec/replicas]\n";
    assert!(text.contains(policy));
    std::fs::write(
        &path,
        text.replace(
            policy,
            "  ownership:\n    revert: [\"[\"]\n    ignore:\n      - kinds: [Nosuch]\n        paths: [\"/spec/x~2\"]\n",
        ),
    )
    .expect("write");
    let out = validate(repo.path());
    assert_eq!(out.status.code(), Some(1));
    let shown = stderr(&out);
    let lines: Vec<&str> = shown.lines().collect();
    assert_eq!(lines.len(), 4, "{shown}");
    for (line, start) in lines.iter().zip([
        "environments/prod/environment.yaml:32:14: error: /spec/ownership/revert/0: `[` uses `[`, which is not a wildcard here",
        "environments/prod/environment.yaml:34:17: error: /spec/ownership/ignore/0/kinds/0: kind `Nosuch` is not one tenantsync manages here",
        "environments/prod/environment.yaml:35:17: error: /spec/ownership/ignore/0/paths/0: `/spec/x~2` has `~2`, which is not a JSON pointer escape",
        "3 error(s)",
    ]) {
        assert!(line.starts_with(start), "{line}\n{shown}");
    }
}

/// A missing repository folder said its reason twice (`No such file or
/// directory (os error 2): No such file or directory (os error 2)`) and not
/// what to do; a URL given to validate was read as a folder name.
#[test]
fn an_unreadable_repository_folder_is_said_once_with_what_to_do() {
    let out = bin()
        .args(["validate", "--repo", "/nonexistent/tenants"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
    assert!(
        err.contains("cannot read repository folder /nonexistent/tenants")
            && err.contains("with --repo DIR"),
        "{err}"
    );
    let out = bin()
        .args([
            "render",
            "--env",
            "dev",
            "--repo",
            "https://git.example.com/tenants.git",
        ])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("validate and render read a folder: clone the repository, or use plan, drift or sync, which fetch a URL"),
        "{err}"
    );
}

/// Key Vault declarations (issue 17): a service reading a Key Vault the
/// environment does not declare, and malformed references, are refused
/// where they are written.
#[test]
fn key_vault_mistakes_are_refused_with_positions() {
    let repo = example_repo();
    let env_file = repo.path().join("environments/qa/environment.yaml");
    let text = std::fs::read_to_string(&env_file).unwrap();
    // qa without a Key Vault; its workspace patch still reads one.
    let start = text.find("  # Certificates and secrets").unwrap();
    std::fs::write(&env_file, &text[..start]).unwrap();
    std::fs::create_dir_all(repo.path().join("environments/qa/workspaces")).unwrap();
    std::fs::write(
        repo.path().join("environments/qa/workspaces/woodgrove.yaml"),
        "apiVersion: tenantsync.io/v1alpha1\nkind: WorkspacePatch\nmetadata:\n  name: woodgrove\nspec:\n  fhirServices:\n    - name: api\n      keyVault:\n        certificate: woodgrove-api\n",
    )
    .unwrap();
    // staging: a secret without its variable, a vault name Azure refuses.
    let staging = repo.path().join("environments/staging/environment.yaml");
    let text = std::fs::read_to_string(&staging)
        .unwrap()
        .replace("vaultName: kv-health-staging", "vaultName: kv_health")
        .replace(
            "- { objectName: appinsights-connection, env: ApplicationInsights__ConnectionString }",
            "- { objectName: appinsights-connection }",
        );
    std::fs::write(&staging, text).unwrap();
    let out = validate(repo.path());
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("environments/qa/workspaces/woodgrove.yaml:9:9: error: /spec/fhirServices/0/keyVault: FHIR service `api` reads from a Key Vault, but environment `qa` declares none and this keyVault gives no vaultName, tenantId, clientId: add spec.keyVault"),
        "{err}"
    );
    assert!(
        err.contains(
            "environments/staging/environment.yaml:22:16: error: /spec/keyVault/vaultName"
        ),
        "{err}"
    );
    assert!(
        err.contains("environments/staging/environment.yaml:28:9: error: /spec/keyVault/secrets/0: missing required field `env`"),
        "{err}"
    );
}
