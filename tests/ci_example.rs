//! `examples/github/plan.yml`: its shell step run as GitHub runs it (bash
//! with `-eo pipefail`) with the real binary, on a pull request whose
//! declarations carry hostile text; and the pins a reviewer relies on.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn workflow() -> Value {
    let text = std::fs::read_to_string(root().join("examples/github/plan.yml")).expect("read");
    serde_norway::from_str(&text).expect("the workflow is YAML")
}

fn steps(workflow: &Value) -> Vec<Value> {
    workflow["jobs"]["plan"]["steps"]
        .as_array()
        .expect("steps")
        .clone()
}

fn longest_backtick_run(s: &str) -> usize {
    s.split(|c| c != '`').map(str::len).max().unwrap_or(0)
}

#[test]
fn ci_example_keeps_pull_request_text_inside_its_code_fence() {
    let workflow = workflow();
    let script = steps(&workflow)
        .iter()
        .find(|s| s["name"] == "Validate and plan")
        .and_then(|s| s["run"].as_str().map(str::to_string))
        .expect("the Validate and plan step");
    let dir = tempfile::tempdir().expect("tempdir");
    let copy = Command::new("cp")
        .arg("-r")
        .arg(root().join("environments"))
        .arg(dir.path())
        .status()
        .expect("cp");
    assert!(copy.success());
    // A key that tries to close the fence and write into the comment.
    std::fs::write(
        dir.path().join("environments/dev/workspaces/evil.yaml"),
        "apiVersion: tenantsync.io/v1alpha1\nkind: Workspace\nmetadata:\n  name: evil\nspec:\n  \"x\\n`````\\n## Approved by the platform team\\n`````\": 1\n",
    )
    .expect("write");
    let runner = tempfile::tempdir().expect("runner temp");
    let output = runner.path().join("github_output");
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_tenantsync"));
    let path = format!(
        "{}:{}",
        bin.parent().expect("bin dir").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let run = Command::new("bash")
        .args(["--noprofile", "--norc", "-eo", "pipefail", "-c", &script])
        .current_dir(dir.path())
        .env("PATH", path)
        .env("ENVIRONMENT", "dev")
        .env("KUBECONFIG_DATA", "")
        .env("RUNNER_TEMP", runner.path())
        .env("GITHUB_OUTPUT", &output)
        .output()
        .expect("run the step");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        std::fs::read_to_string(&output)
            .expect("outputs")
            .contains("code=1")
    );
    let comment = std::fs::read_to_string(dir.path().join("plan.md")).expect("plan.md");
    let lines: Vec<&str> = comment.lines().collect();
    let open = lines
        .iter()
        .position(|l| l.starts_with("```"))
        .expect("a code fence");
    let fence = lines[open].trim_end_matches("text");
    let close = lines
        .iter()
        .rposition(|l| *l == fence)
        .expect("the closing fence");
    let inside = lines[open + 1..close].join("\n");
    assert!(
        inside.contains("Approved by the platform team"),
        "{comment}"
    );
    assert!(
        fence.len() > longest_backtick_run(&inside),
        "the fence {fence} can be closed from inside:\n{comment}"
    );
    assert!(
        lines[open + 1..close].iter().all(|l| !l.starts_with('#')),
        "a line of the declarations became markdown:\n{comment}"
    );
    assert_eq!(close, lines.len() - 1, "{comment}");
}

#[test]
fn ci_example_pins_actions_by_sha_and_updates_only_its_own_comment() {
    let workflow = workflow();
    let all_steps: Vec<Value> = workflow["jobs"]
        .as_object()
        .expect("jobs")
        .values()
        .flat_map(|job| job["steps"].as_array().cloned().unwrap_or_default())
        .collect();
    assert!(
        all_steps.len() > steps(&workflow).len(),
        "the apply job's steps"
    );
    for step in all_steps {
        if let Some(uses) = step["uses"].as_str() {
            let (_, pin) = uses.split_once('@').expect("a pinned action");
            assert!(
                pin.len() == 40 && pin.bytes().all(|b| b.is_ascii_hexdigit()),
                "{uses} is not pinned by commit SHA"
            );
        }
    }
    assert!(
        workflow["env"]["TENANTSYNC_IMAGE"]
            .as_str()
            .expect("image")
            .contains("@sha256:"),
        "the image is not pinned by digest"
    );
    let script = steps(&workflow)
        .iter()
        .find_map(|s| s["with"]["script"].as_str().map(str::to_string))
        .expect("the comment script");
    assert!(
        script.contains("c.user.login === 'github-actions[bot]'"),
        "{script}"
    );
}

/// The saved plan's round trip in the workflow: the plan job saves it at
/// the pull request's head commit and uploads it; after the merge the apply
/// job, gated by a GitHub environment, applies exactly it with `sync --plan`.
#[test]
fn ci_example_saves_the_plan_and_applies_exactly_it_after_merge() {
    let workflow = workflow();
    let plan_steps = steps(&workflow);
    let run_of = |steps: &[Value], name: &str| {
        steps
            .iter()
            .find(|s| s["name"] == name)
            .and_then(|s| s["run"].as_str().map(str::to_string))
            .unwrap_or_else(|| panic!("step {name}"))
    };
    let plan = run_of(&plan_steps, "Validate and plan");
    assert!(
        plan.contains("--rev HEAD --out \"plan-$ENVIRONMENT.json\""),
        "{plan}"
    );
    let upload = plan_steps
        .iter()
        .find(|s| s["name"] == "Upload the saved plan")
        .expect("the upload step");
    assert_eq!(upload["with"]["path"], "plan-${{ matrix.env }}.json");
    assert_eq!(upload["with"]["name"], "tenantsync-plan-${{ matrix.env }}");
    let apply = &workflow["jobs"]["apply"];
    assert!(
        apply["if"].as_str().is_some_and(|c| c.contains("merged")),
        "{apply:#}"
    );
    assert_eq!(apply["environment"], "${{ matrix.env }}");
    let apply_steps = apply["steps"].as_array().expect("apply steps").clone();
    let fetch = run_of(
        &apply_steps,
        "Fetch the plan saved for the pull request's head commit",
    );
    assert!(
        fetch.contains("-n \"tenantsync-plan-$ENVIRONMENT\""),
        "{fetch}"
    );
    let sync = run_of(&apply_steps, "Apply exactly the approved plan");
    assert!(
        sync.contains("tenantsync sync")
            && sync.contains("--plan \"$RUNNER_TEMP/plan/plan-$ENVIRONMENT.json\""),
        "{sync}"
    );
}
