//! Golden files of the plan printers: one fixed, hand-built plan rendered as
//! text (plan and drift, no colour), Markdown and JSON.
//!
//! Regenerate with `TENANTSYNC_UPDATE_GOLDEN=1 cargo test --test tests print_golden`;
//! never silently: without the variable a difference fails the test.

use std::path::PathBuf;

use serde_json::json;
use tenantsync::plan::{
    Action, Change, FieldAction, FieldChange, PLAN_FORMAT_VERSION, Plan, Summary,
};
use tenantsync::print::{self, Verb};

/// A unified diff as `diff` makes it: live to desired, headed by the object.
fn unified(live: &str, desired: &str, id: &str) -> String {
    similar::TextDiff::from_lines(live, desired)
        .unified_diff()
        .context_radius(3)
        .header(&format!("live/{id}"), &format!("desired/{id}"))
        .to_string()
}

const INGRESS: &str = "\
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  labels:
    app.kubernetes.io/managed-by: tenantsync
    tenantsync.io/environment: dev
    tenantsync.io/workspace: contoso
  name: fhir-main
  namespace: contoso-dev
spec:
  ingressClassName: nginx
  rules:
  - host: contoso-main.fhir.dev.example.net
    http:
      paths:
      - backend:
          service:
            name: fhir-main
            port:
              name: http
        path: /
        pathType: Prefix
  tls:
  - hosts:
    - contoso-main.fhir.dev.example.net
    secretName: wildcard-dev-tls
";

fn deployment(replicas: u32, tag: &str) -> String {
    format!(
        "\
apiVersion: apps/v1
kind: Deployment
metadata:
  labels:
    app.kubernetes.io/managed-by: tenantsync
    tenantsync.io/environment: dev
    tenantsync.io/workspace: contoso
  name: fhir-main
  namespace: contoso-dev
spec:
  replicas: {replicas}
  selector:
    matchLabels:
      app.kubernetes.io/instance: fhir-main
  template:
    metadata:
      labels:
        app.kubernetes.io/instance: fhir-main
    spec:
      containers:
      - image: mcr.microsoft.com/healthcareapis/r4-fhir-server:{tag}
        name: fhir-server
        ports:
        - containerPort: 8080
          name: http
"
    )
}

const ORPHAN_SERVICE: &str = "\
apiVersion: v1
kind: Service
metadata:
  labels:
    app.kubernetes.io/managed-by: tenantsync
    tenantsync.io/environment: dev
    tenantsync.io/workspace: fabrikam
  name: dicom-imaging
  namespace: fabrikam-dev
spec:
  ports:
  - name: http
    port: 80
    targetPort: http
  selector:
    app.kubernetes.io/instance: dicom-imaging
";

fn object(action: Action, api_version: &str, kind: &str, ws: &str, name: &str) -> Change {
    Change {
        action,
        api_version: api_version.into(),
        kind: kind.into(),
        namespace: Some(format!("{ws}-dev").into()),
        name: name.into(),
        workspace: ws.into(),
        fields: Vec::new(),
        diff: String::new(),
        note: None,
        heal: None,
        live: None,
    }
}

/// Two workspaces: contoso gets an Ingress and has its Deployment scaled by
/// hand and its image bumped in Git; fabrikam lost its DICOM service.
fn fixed_plan() -> Plan {
    let mut ingress = object(
        Action::Create,
        "networking.k8s.io/v1",
        "Ingress",
        "contoso",
        "fhir-main",
    );
    ingress.diff = unified("", INGRESS, &ingress.id());

    let mut deploy = object(
        Action::Update,
        "apps/v1",
        "Deployment",
        "contoso",
        "fhir-main",
    );
    deploy.fields = vec![
        FieldChange {
            path: "spec.replicas".to_string(),
            action: FieldAction::Change,
            live: Some(json!(5)),
            desired: Some(json!(2)),
            manager: Some("kubectl".to_string()),
            since: None,
        },
        FieldChange {
            path: "spec.template.spec.containers[name=fhir-server].image".to_string(),
            action: FieldAction::Change,
            live: Some(json!(
                "mcr.microsoft.com/healthcareapis/r4-fhir-server:4.3.1"
            )),
            desired: Some(json!(
                "mcr.microsoft.com/healthcareapis/r4-fhir-server:4.3.2"
            )),
            manager: None,
            since: None,
        },
    ];
    deploy.diff = unified(
        &deployment(5, "4.3.1"),
        &deployment(2, "4.3.2"),
        &deploy.id(),
    );

    let mut orphan = object(Action::Delete, "v1", "Service", "fabrikam", "dicom-imaging");
    orphan.diff = unified(ORPHAN_SERVICE, "", &orphan.id());

    let changes = vec![
        object(
            Action::Unchanged,
            "v1",
            "ServiceAccount",
            "contoso",
            "fhir-main",
        ),
        object(Action::Unchanged, "v1", "Service", "contoso", "fhir-main"),
        deploy,
        ingress,
        object(
            Action::Unchanged,
            "v1",
            "ServiceAccount",
            "fabrikam",
            "fhir-records",
        ),
        orphan,
        object(
            Action::Unchanged,
            "apps/v1",
            "Deployment",
            "fabrikam",
            "fhir-records",
        ),
        object(
            Action::Unchanged,
            "networking.k8s.io/v1",
            "NetworkPolicy",
            "fabrikam",
            "default",
        ),
    ];
    Plan {
        format_version: PLAN_FORMAT_VERSION,
        environment: "dev".to_string(),
        revision: Some("3f9c2a1e8b7d4c6f5a0e9d8c7b6a5f4e3d2c1b0a".to_string()),
        summary: Summary::of(&changes),
        changes,
        api_requests: 9,
    }
}

#[test]
fn printed_plan_matches_golden_files() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let update = crate::support::update_golden();
    let plan = fixed_plan();
    let outputs = [
        ("plan.txt", print::text(&plan, false, Verb::Plan)),
        ("drift.txt", print::text(&plan, false, Verb::Drift)),
        ("plan.md", print::markdown(&plan, Verb::Plan)),
        ("plan.json", print::json(&plan)),
    ];
    let mut failures = Vec::new();
    for (file, actual) in outputs {
        let path = root.join(file);
        if update {
            std::fs::create_dir_all(&root).expect("mkdir");
            std::fs::write(&path, &actual).expect("write golden");
            continue;
        }
        match std::fs::read_to_string(&path) {
            Ok(expected) if expected == actual => {}
            Ok(expected) => {
                let diff = similar::TextDiff::from_lines(&expected, &actual);
                failures.push(format!(
                    "{} differs from the printed output:\n{}",
                    path.display(),
                    diff.unified_diff()
                        .context_radius(2)
                        .header("golden", "printed")
                ));
            }
            Err(e) => failures.push(format!("{}: {e}", path.display())),
        }
    }
    assert!(
        failures.is_empty(),
        "{}\n(regenerate with TENANTSYNC_UPDATE_GOLDEN=1 if the change is intended)",
        failures.join("\n")
    );
}

/// An image change in `base` over ten workspaces, rolled out 20% then
/// 100% with a pilot, plus an onboarded workspace that is not held back.
fn rollout_plan() -> (Plan, tenantsync::sync::rollout::RolloutPlan) {
    let mut changes: Vec<Change> = (0..10)
        .map(|i| {
            let ws = format!("hospital-{i:02}");
            let mut c = object(Action::Update, "apps/v1", "Deployment", &ws, "fhir-main");
            c.fields = vec![FieldChange {
                path: "spec.template.spec.containers[name=fhir-server].image".into(),
                action: FieldAction::Change,
                live: Some(json!("example.azurecr.io/fhir-server:4.3.1")),
                desired: Some(json!("example.azurecr.io/fhir-server:4.4.0")),
                manager: None,
                since: None,
            }];
            c
        })
        .collect();
    changes.push(object(
        Action::Create,
        "v1",
        "Namespace",
        "newcomer",
        "newcomer-prod",
    ));
    let plan = Plan {
        format_version: PLAN_FORMAT_VERSION,
        environment: "prod".into(),
        revision: Some("0123456789abcdef0123456789abcdef01234567".into()),
        summary: Summary::of(&changes),
        changes,
        api_requests: 4,
    };
    let policy = tenantsync::declare::model::Rollout {
        steps: vec!["20%".into(), "100%".into()],
        pilot: vec!["hospital-07".into()],
        pause_between: Some("10m".into()),
        ..Default::default()
    }
    .checked()
    .expect("a valid policy");
    let rollout = tenantsync::sync::rollout::plan_rollout(&policy, &plan, &Default::default())
        .expect("ten workspaces roll out");
    (plan, rollout)
}

#[test]
fn printed_rollout_matches_golden_files() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let update = crate::support::update_golden();
    let (plan, rollout) = rollout_plan();
    assert_eq!(rollout.steps.len(), 2);
    assert_eq!(rollout.steps[0].workspaces.len(), 2);
    assert_eq!(
        rollout.steps[0].workspaces[0], "hospital-07",
        "the pilot first"
    );
    assert_eq!(rollout.steps[1].workspaces.len(), 8);
    assert_eq!(rollout.not_held_back, ["newcomer"]);
    let outputs = [
        (
            "rollout.txt",
            print::with_rollout(
                print::text(&plan, false, Verb::Plan),
                &rollout,
                print::Output::Text,
            ),
        ),
        (
            "rollout.md",
            print::with_rollout(
                print::markdown(&plan, Verb::Plan),
                &rollout,
                print::Output::Markdown,
            ),
        ),
        (
            "rollout.json",
            print::with_rollout(print::json(&plan), &rollout, print::Output::Json),
        ),
    ];
    for (file, actual) in outputs {
        let path = root.join(file);
        if update {
            std::fs::write(&path, &actual).expect("write golden");
            continue;
        }
        let expected = std::fs::read_to_string(&path).unwrap_or_default();
        if expected != actual {
            let diff = similar::TextDiff::from_lines(&expected, &actual);
            panic!(
                "{} differs from the printed output (regenerate with TENANTSYNC_UPDATE_GOLDEN=1 if intended):\n{}",
                path.display(),
                diff.unified_diff()
                    .context_radius(2)
                    .header("golden", "printed")
            );
        }
    }
}
