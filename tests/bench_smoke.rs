//! `scripts/bench` at a tiny size, so the benchmark cannot rot: it runs end to
//! end against the test run's control plane and writes a result for every
//! step, on both sides. How fast it runs is the benchmark's business, not
//! this test's: no time is asserted.

use std::path::Path;
use std::process::Command;

use crate::support::control_plane;

const STEPS: &[&str] = &["render", "first-sync", "noop-plan", "noop-sync", "prune"];

#[test]
fn bench_script_measures_every_step_at_a_small_size() {
    let kubeconfig = control_plane().kubeconfig();
    let out = tempfile::tempdir().unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let output = Command::new(repo.join("scripts/bench"))
        .args(["--sizes", "5", "--quick", "--out"])
        .arg(out.path())
        // The test run's binary and cluster: no release build, no second
        // control plane.
        .env("TENANTSYNC_BENCH_BIN", env!("CARGO_BIN_EXE_tenantsync"))
        .env("TENANTSYNC_BENCH_KUBECONFIG", kubeconfig)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "scripts/bench failed ({}):\n{stdout}\n{stderr}",
        output.status
    );

    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("results.json")).unwrap()).unwrap();
    for key in ["date", "machine", "versions", "results"] {
        assert!(results.get(key).is_some(), "results.json lacks {key}");
    }
    let rows = results["results"].as_array().unwrap();
    for step in STEPS {
        let row = rows
            .iter()
            .find(|r| r["n"] == 5 && r["step"] == *step)
            .unwrap_or_else(|| panic!("no result for step {step}:\n{stdout}"));
        for tool in ["tenantsync", "kubectl"] {
            assert!(
                row[tool]["wallSeconds"].as_f64().is_some_and(|s| s > 0.0),
                "step {step} has no wall time for {tool}: {row}"
            );
        }
        assert!(
            row["tenantsync"]["peakRssMiB"].as_f64().is_some(),
            "step {step} has no peak RSS for tenantsync: {row}"
        );
        assert!(stdout.contains(&format!("| 5 | {step} |")), "{stdout}");
    }
    let step = |name: &str| rows.iter().find(|r| r["step"] == name).unwrap();
    // Both tools got the same objects: kubectl kustomize prints as many as
    // tenantsync renders, kubectl diff finds nothing after kubectl's own
    // apply, and both prune the same objects of the removed workspace.
    let render = step("render");
    assert!(
        render["tenantsync"]["objects"].as_u64().unwrap() > 0,
        "{render}"
    );
    assert_eq!(
        render["tenantsync"]["objects"],
        render["kubectl"]["objects"]
    );
    assert_eq!(step("noop-plan")["tenantsync"]["changes"], 0);
    assert_eq!(step("noop-plan")["kubectl"]["changes"], 0);
    let prune = step("prune");
    assert!(
        prune["tenantsync"]["pruned"].as_u64().unwrap() > 0,
        "{prune}"
    );
    assert_eq!(prune["tenantsync"]["pruned"], prune["kubectl"]["pruned"]);
    // The figures the targets are about: request counts on both sides, and
    // no write at all in tenantsync's no-op sync.
    assert_eq!(step("noop-sync")["tenantsync"]["writeRequests"], 0);
    // A one-workspace pull request's plan plans that workspace only, and
    // finds its edit; its CPU time is recorded.
    let pr = step("pr-plan");
    assert_eq!(pr["tenantsync"]["workspacesPlanned"], 1, "{pr}");
    assert!(pr["tenantsync"]["changes"].as_u64().unwrap() > 0, "{pr}");
    assert!(
        pr["tenantsync"]["cpuSeconds"].as_f64().unwrap() > 0.0,
        "{pr}"
    );
    assert!(stdout.contains("| 5 | pr-plan |"), "{stdout}");
    assert!(step("noop-plan")["kubectl"]["requests"].as_u64().unwrap() > 0);
    assert!(
        step("noop-plan")["tenantsync"]["apiRequests"]
            .as_u64()
            .unwrap()
            > 0
    );
}
