//! The seeds' platform on the real control plane (issue 17): Key Vault
//! references synced as `SecretProviderClass` objects (their CRD installed
//! as the Secrets Store CSI driver would) and pruned; Secret values never
//! shown by `plan` or `drift`.

use std::process::Output;

use base64::Engine;
use serde_json::Value;

use crate::support::control_plane;
use crate::support::repo::TestRepo;

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn kubectl_json(args: &[&str]) -> Option<Value> {
    let out = control_plane()
        .kubectl()
        .args(args)
        .args(["-o", "json"])
        .output()
        .expect("kubectl");
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).expect("kubectl JSON"))
}

fn environment(repo: &TestRepo, key_vault: &str) -> String {
    format!(
        "apiVersion: tenantsync.io/v1alpha1\nkind: Environment\nmetadata:\n  name: {}\nspec:\n  base: base\n  ingress:\n    domain: test.example.com\n{key_vault}",
        repo.env
    )
}

const KEY_VAULT: &str = "  keyVault:
    vaultName: kv-health-test
    tenantId: 72f988bf-86f1-41af-91ab-2d7cd011db47
    clientId: 0d7c4e1a-5b2f-4c8e-9a31-6e2f8b4d7c10
    certificate: \"{workspace}-{environment}-tls\"
    secrets:
      - { objectName: appinsights-connection, env: ApplicationInsights__ConnectionString }
";

#[tokio::test]
async fn a_workspace_with_key_vault_autoscaling_and_connector_identities_syncs_and_prunes() {
    let repo = TestRepo::new("keyvault-sync");
    repo.write("environment.yaml", &environment(&repo, KEY_VAULT));
    repo.write(
        "workspaces/contoso.yaml",
        "apiVersion: tenantsync.io/v1alpha1\nkind: WorkspacePatch\nmetadata:\n  name: contoso\nspec:\n  fhirServices:\n    - name: main\n      autoscaling: { minReplicas: 2, maxReplicas: 6 }\n      keyVault:\n        certificate: contoso-fhir-main\n        secrets:\n          - { objectName: contoso-fhir-sql, env: SqlServer__ConnectionString }\n",
    );
    let out = repo.run("sync", "admin", &["--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let ns = repo.namespace("contoso");
    let spc = kubectl_json(&[
        "-n",
        &ns,
        "get",
        "secretproviderclass",
        "workspace-keyvault",
    ])
    .expect("the SecretProviderClass is on the cluster");
    assert_eq!(spc["spec"]["provider"], "azure");
    assert_eq!(spc["spec"]["parameters"]["keyvaultName"], "kv-health-test");
    let objects = spc["spec"]["parameters"]["objects"].as_str().unwrap();
    for o in [
        "contoso-fhir-main",
        "contoso-fhir-sql",
        &format!("contoso-{}-tls", repo.env),
    ] {
        assert!(objects.contains(&format!("objectName: {o}\n")), "{objects}");
    }
    // The Ingress names the Secret the driver syncs the certificate into,
    // the pods mount the CSI volume and read the secrets by reference.
    let ingress = kubectl_json(&["-n", &ns, "get", "ingress", "fhir-main"]).unwrap();
    assert_eq!(ingress["spec"]["tls"][0]["secretName"], "fhir-main-tls");
    let deploy = kubectl_json(&["-n", &ns, "get", "deployment", "fhir-main"]).unwrap();
    let pod = &deploy["spec"]["template"]["spec"];
    assert!(
        pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["csi"]["volumeAttributes"]["secretProviderClass"] == "workspace-keyvault"),
        "{pod}"
    );
    let env = pod["containers"][0]["env"].to_string();
    assert!(env.contains("\"SqlServer__ConnectionString\""), "{env}");
    assert!(
        env.contains(
            "\"secretKeyRef\":{\"key\":\"contoso-fhir-sql\",\"name\":\"workspace-secrets\"}"
        ),
        "{env}"
    );
    // The autoscaler owns the replicas: tenantsync declares none.
    let hpa =
        kubectl_json(&["-n", &ns, "get", "hpa", "fhir-main"]).expect("the HPA is on the cluster");
    assert_eq!(hpa["spec"]["minReplicas"], 2);
    assert_eq!(hpa["spec"]["maxReplicas"], 6);
    assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], "fhir-main");
    let deploy = kubectl_json(&[
        "-n",
        &ns,
        "get",
        "deployment",
        "fhir-main",
        "--show-managed-fields",
    ])
    .unwrap();
    let ours = deploy["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| {
            m["manager"]
                .as_str()
                .is_some_and(|m| m.starts_with("tenantsync"))
        })
        .expect("tenantsync's fields")
        .to_string();
    assert!(!ours.contains("f:replicas"), "{ours}");
    // The connector runs as its own identity.
    let sa = kubectl_json(&["-n", &ns, "get", "serviceaccount", "iot-vitals"]).unwrap();
    assert_eq!(
        sa["metadata"]["annotations"]["azure.workload.identity/client-id"],
        "6d3cae74-1b2f-4a3c-9da5-4e7a9f1b3d32"
    );
    let connector = kubectl_json(&["-n", &ns, "get", "deployment", "iot-vitals"]).unwrap();
    assert_eq!(
        connector["spec"]["template"]["spec"]["serviceAccountName"],
        "iot-vitals"
    );
    // Recorded in the inventory: a second sync changes nothing.
    let plan = repo.plan_json("admin");
    assert_eq!(plan["summary"]["create"], 0, "{plan}");
    assert_eq!(plan["summary"]["update"], 0, "{plan}");

    // The environment stops reading the Key Vault: the classes are pruned.
    repo.write("environment.yaml", &environment(&repo, ""));
    repo.remove("workspaces/contoso.yaml");
    let out = repo.run(
        "sync",
        "admin",
        &["--prune", "--allow-mass-prune", "--output", "json"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        kubectl_json(&[
            "-n",
            &ns,
            "get",
            "secretproviderclass",
            "workspace-keyvault"
        ])
        .is_none(),
        "pruned"
    );
    assert!(
        kubectl_json(&["-n", &ns, "get", "hpa", "fhir-main"]).is_none(),
        "HPA pruned"
    );
    let deploy = kubectl_json(&["-n", &ns, "get", "deployment", "fhir-main"]).unwrap();
    assert!(!deploy.to_string().contains("secrets-store"), "{deploy}");
    assert_eq!(
        deploy["spec"]["replicas"], 1,
        "declared again: the kind's default"
    );
    // The connector's identity goes with the connector.
    let out = repo.run(
        "sync",
        "admin",
        &["--prune", "--allow-mass-prune", "--output", "json"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    repo.write(
        "workspaces/contoso.yaml",
        "apiVersion: tenantsync.io/v1alpha1\nkind: WorkspacePatch\nmetadata:\n  name: contoso\nspec:\n  iotConnectors:\n    - name: vitals\n      $patch: delete\n",
    );
    let out = repo.run(
        "sync",
        "admin",
        &["--prune", "--allow-mass-prune", "--output", "json"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(kubectl_json(&["-n", &ns, "get", "serviceaccount", "iot-vitals"]).is_none());
}

#[tokio::test]
async fn plan_and_drift_over_a_secret_show_digests_never_the_value() {
    let repo = TestRepo::new("secret-digest");
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let declared = "hunter2-declared-value";
    let secret = |value: &str| {
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: legacy-db\n  namespace: contoso-{}\ntype: Opaque\ndata:\n  password: {}\n",
            repo.env,
            b64(value)
        )
    };
    repo.write("resources/legacy-db.yaml", &secret(declared));
    let out = repo.run("sync", "admin", &["--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // Changed by hand (drift), and changed in Git (an update).
    let edited = "edited-by-hand-s3cret";
    let patch = format!("{{\"data\":{{\"password\":\"{}\"}}}}", b64(edited));
    let ns = repo.namespace("contoso");
    let out = control_plane()
        .kubectl()
        .args(["-n", &ns, "patch", "secret", "legacy-db", "-p", &patch])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let changed = "changed-in-git-value";
    repo.write("resources/legacy-db.yaml", &secret(changed));
    let mut shown = String::new();
    for (verb, output) in [
        ("plan", "text"),
        ("plan", "json"),
        ("plan", "markdown"),
        ("drift", "text"),
        ("drift", "json"),
    ] {
        let out = repo.run(verb, "admin", &["--output", output]);
        shown.push_str(&stdout(&out));
        shown.push_str(&stderr(&out));
    }
    assert!(shown.contains("Secret"), "{shown}");
    for value in [declared, edited, changed] {
        assert!(!shown.contains(value), "{value} shown:\n{shown}");
        assert!(
            !shown.contains(&b64(value)),
            "{value} (base64) shown:\n{shown}"
        );
    }
    // The change is still seen, as digests keyed by TENANTSYNC_DIGEST_KEY
    // (an operator's secret) when it is set...
    let keyed = |key: &str, value: &str| {
        use hmac::Mac;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).expect("key");
        mac.update(value.as_bytes());
        let hex: String = mac.finalize().into_bytes()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("hmac:{hex}")
    };
    let plan_with_key = |key: Option<&str>| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_tenantsync"));
        command
            .args([
                "plan",
                "--env",
                &repo.env,
                "--context",
                "admin",
                "--output",
                "json",
                "--repo",
            ])
            .arg(repo.path())
            .arg("--kubeconfig")
            .arg(control_plane().kubeconfig());
        if let Some(key) = key {
            command.env("TENANTSYNC_DIGEST_KEY", key);
        }
        let out = command.output().expect("run tenantsync");
        let plan: serde_json::Value = serde_json::from_slice(&out.stdout).expect("plan json");
        let field = plan["changes"]
            .as_array()
            .expect("changes")
            .iter()
            .find(|c| c["kind"] == "Secret")
            .and_then(|c| {
                c["fields"]
                    .as_array()?
                    .iter()
                    .find(|f| f["path"] == "data.password")
                    .cloned()
            })
            .unwrap_or_else(|| panic!("no change of data.password: {plan:#}"));
        (field["live"].to_string(), field["desired"].to_string())
    };
    let (live, desired) = plan_with_key(Some("operators-secret"));
    assert_eq!(live, format!("\"{}\"", keyed("operators-secret", edited)));
    assert_eq!(
        desired,
        format!("\"{}\"", keyed("operators-secret", changed))
    );
    assert_eq!(
        plan_with_key(Some("operators-secret")),
        (live.clone(), desired.clone())
    );
    // ...and by a key of its own per run otherwise: not the unkeyed SHA-256
    // anyone could compute from a guessed password, nor the same twice.
    let (live_a, desired_a) = plan_with_key(None);
    let (live_b, desired_b) = plan_with_key(None);
    assert_ne!(live_a, desired_a, "the change is still seen");
    assert_ne!((live_a.clone(), desired_a.clone()), (live_b, desired_b));
    for value in [edited, changed] {
        use sha2::Digest;
        let plain: String = sha2::Sha256::digest(value.as_bytes())[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert!(
            !shown.contains(&plain),
            "unkeyed digest of {value} shown:\n{shown}"
        );
        assert!(!live_a.contains(&plain) && !desired_a.contains(&plain));
    }
}

/// A cluster without the Secrets Store CSI driver: the sync fails naming
/// the missing CRD and what installs it.
#[tokio::test]
async fn a_cluster_without_the_secret_provider_class_crd_gets_an_error_naming_it() {
    let bare = crate::support::bare_control_plane("no-crds");
    let repo = TestRepo::new("keyvault-no-crd");
    repo.write("environment.yaml", &environment(&repo, KEY_VAULT));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tenantsync"))
        .args(["sync", "--env", &repo.env, "--context", "admin", "--repo"])
        .arg(repo.path())
        .arg("--kubeconfig")
        .arg(bare.kubeconfig())
        .output()
        .expect("run tenantsync");
    assert_ne!(out.status.code(), Some(0), "{}", stdout(&out));
    let shown = format!("{}{}", stdout(&out), stderr(&out));
    assert!(
        shown.contains(
            "the CustomResourceDefinition secretproviderclasses.secrets-store.csi.x-k8s.io is not installed; install the Secrets Store CSI driver"
        ),
        "{shown}"
    );
    assert!(shown.contains("SecretProviderClass"), "{shown}");
}

/// Seed 003: a DICOM-cast whose FHIR service is removed puts the cast in an
/// error state without failing everything. Here the removal holds only that
/// workspace, with a message naming the service the cast needs; the other
/// workspaces sync.
#[tokio::test]
async fn a_cast_whose_fhir_service_is_removed_fails_only_its_workspace_naming_the_service() {
    let repo = TestRepo::new("cast-loses-fhir");
    repo.write(
        "workspaces/contoso.yaml",
        "apiVersion: tenantsync.io/v1alpha1\nkind: WorkspacePatch\nmetadata:\n  name: contoso\nspec:\n  fhirServices:\n    - name: main\n      $patch: delete\n",
    );
    let out = repo.run("sync", "admin", &["--skip-invalid", "--output", "json"]);
    let shown = format!("{}{}", stdout(&out), stderr(&out));
    assert!(
        shown.contains("the dicomCast of DICOM service `imaging` names FHIR service `main`, which workspace `contoso` does not have"),
        "{shown}"
    );
    assert_ne!(
        out.status.code(),
        Some(0),
        "held workspaces are reported: {shown}"
    );
    // The others are on the cluster; contoso is not.
    for ws in ["fabrikam", "northwind", "woodgrove"] {
        assert!(
            kubectl_json(&["get", "namespace", &repo.namespace(ws)]).is_some(),
            "{ws}: {shown}"
        );
    }
    assert!(kubectl_json(&["get", "namespace", &repo.namespace("contoso")]).is_none());
}
