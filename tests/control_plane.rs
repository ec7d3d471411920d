//! The Kubernetes behaviour tenantsync relies on, checked against the real
//! control plane from `scripts/control-plane` (no fakes): server-side apply and
//! its conflicts, dry runs, RBAC, CRDs, optimistic concurrency, and the
//! namespace, garbage-collector and service-account controllers.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, MicroTime};
use k8s_openapi::jiff::Timestamp;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
};
use kube::core::Status;
use serde_json::{Value, json};

use crate::support::{NAMESPACE_LABEL, User, control_plane, eventually, unique_name};

const MANAGER: &str = "tenantsync";

/// The API error a call must have failed with.
fn api_error<T: std::fmt::Debug>(result: Result<T, kube::Error>, call: &str) -> Box<Status> {
    match result {
        Err(kube::Error::Api(status)) => status,
        other => panic!("{call}: expected an API error, got {other:?}"),
    }
}

fn deployment(name: &str, replicas: i32) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": name },
        "spec": {
            "replicas": replicas,
            "selector": { "matchLabels": { "app": name } },
            "template": {
                "metadata": { "labels": { "app": name } },
                "spec": { "containers": [{ "name": "app", "image": "registry.example/app:1" }] }
            }
        }
    })
}

fn config_map(name: &str, data: Value) -> Value {
    json!({ "apiVersion": "v1", "kind": "ConfigMap", "metadata": { "name": name }, "data": data })
}

/// The managedFields entry of `manager`, if it manages anything.
fn managed_by<'a>(
    entries: Option<&'a Vec<ManagedFieldsEntry>>,
    manager: &str,
) -> Option<&'a ManagedFieldsEntry> {
    entries?
        .iter()
        .find(|entry| entry.manager.as_deref() == Some(manager))
}

fn owns_replicas(entry: Option<&ManagedFieldsEntry>) -> bool {
    entry
        .and_then(|entry| entry.fields_v1.as_ref())
        .is_some_and(|fields| fields.0.pointer("/f:spec/f:replicas").is_some())
}

#[tokio::test]
async fn apiserver_reports_the_pinned_kubernetes_version() {
    let client = control_plane().client(User::Admin).await;
    let gomod = include_str!("../testenv/kube/go.mod");
    let pinned = gomod
        .lines()
        .find_map(|line| line.strip_prefix("require k8s.io/kubernetes "))
        .expect("testenv/kube/go.mod requires k8s.io/kubernetes on one line");
    let version = client
        .apiserver_version()
        .await
        .expect("GET /version succeeds");
    assert_eq!(
        version.git_version,
        pinned.trim(),
        "/version of the built kube-apiserver"
    );
}

#[tokio::test]
async fn server_side_apply_records_tenantsync_in_managed_fields() {
    let cp = control_plane();
    let client = cp.client(User::Admin).await;
    let ns = unique_name("ssa");

    let namespaces: Api<Namespace> = Api::all(client.clone());
    let applied = namespaces
        .patch(
            &ns,
            &PatchParams::apply(MANAGER),
            &Patch::Apply(json!({
                "apiVersion": "v1", "kind": "Namespace",
                "metadata": { "name": ns, "labels": { NAMESPACE_LABEL: "true" } }
            })),
        )
        .await
        .expect("server-side apply creates the namespace");
    let entry = managed_by(applied.metadata.managed_fields.as_ref(), MANAGER)
        .expect("tenantsync manages the namespace");
    assert_eq!(entry.operation.as_deref(), Some("Apply"));
    let fields = entry.fields_v1.as_ref().map(|fields| &fields.0);
    assert!(
        fields
            .and_then(|f| f.pointer("/f:metadata/f:labels"))
            .is_some(),
        "tenantsync owns the labels it applied: {fields:?}"
    );

    let deployments: Api<Deployment> = Api::namespaced(client, &ns);
    deployments
        .patch(
            "web",
            &PatchParams::apply(MANAGER),
            &Patch::Apply(deployment("web", 2)),
        )
        .await
        .expect("server-side apply creates the deployment");
    let live = deployments.get("web").await.expect("the deployment exists");
    let entry = managed_by(live.metadata.managed_fields.as_ref(), MANAGER)
        .expect("tenantsync manages the deployment");
    assert_eq!(entry.operation.as_deref(), Some("Apply"));
    assert!(
        owns_replicas(Some(entry)),
        "tenantsync owns spec.replicas: {entry:?}"
    );
    assert_eq!(live.spec.and_then(|spec| spec.replicas), Some(2));

    namespaces
        .delete(&ns, &DeleteParams::default())
        .await
        .expect("delete the namespace");
}

#[tokio::test]
async fn second_manager_conflicts_on_tenantsync_fields_unless_forced() {
    let cp = control_plane();
    let ns = cp.namespace("conflict").await;
    let deployments: Api<Deployment> = Api::namespaced(cp.client(User::Admin).await, &ns);
    deployments
        .patch(
            "web",
            &PatchParams::apply(MANAGER),
            &Patch::Apply(deployment("web", 1)),
        )
        .await
        .expect("tenantsync applies the deployment");

    let intruder = PatchParams::apply("intruder");
    let status = api_error(
        deployments
            .patch("web", &intruder, &Patch::Apply(deployment("web", 3)))
            .await,
        "unforced apply of a field tenantsync owns",
    );
    assert!(
        status.is_conflict(),
        "expected 409 Conflict, got {status:?}"
    );
    assert!(
        status.message.contains(MANAGER),
        "the conflict names the owner: {}",
        status.message
    );
    let live = deployments.get("web").await.expect("get the deployment");
    assert_eq!(
        live.spec.and_then(|spec| spec.replicas),
        Some(1),
        "the conflict changed nothing"
    );

    let forced = deployments
        .patch(
            "web",
            &intruder.force(),
            &Patch::Apply(deployment("web", 3)),
        )
        .await
        .expect("a forced apply takes the field over");
    assert_eq!(forced.spec.as_ref().and_then(|spec| spec.replicas), Some(3));
    let managed = forced.metadata.managed_fields.as_ref();
    assert!(
        owns_replicas(managed_by(managed, "intruder")),
        "intruder owns spec.replicas now"
    );
    assert!(
        !owns_replicas(managed_by(managed, MANAGER)),
        "tenantsync lost spec.replicas"
    );
}

#[tokio::test]
async fn dry_run_all_changes_nothing() {
    let cp = control_plane();
    let ns = cp.namespace("dry-run").await;
    let config_maps: Api<ConfigMap> = Api::namespaced(cp.client(User::Admin).await, &ns);

    let dry = PatchParams::apply(MANAGER).dry_run();
    let answer = config_maps
        .patch(
            "absent",
            &dry,
            &Patch::Apply(config_map("absent", json!({ "k": "v" }))),
        )
        .await
        .expect("a dry-run create is answered");
    assert_eq!(
        answer
            .data
            .and_then(|data| data.get("k").cloned())
            .as_deref(),
        Some("v")
    );
    let absent = config_maps
        .get_opt("absent")
        .await
        .expect("get the config map");
    assert!(absent.is_none(), "a dry-run create created {absent:?}");

    config_maps
        .patch(
            "present",
            &PatchParams::apply(MANAGER),
            &Patch::Apply(config_map("present", json!({ "k": "1" }))),
        )
        .await
        .expect("apply the config map");
    let answer = config_maps
        .patch(
            "present",
            &dry,
            &Patch::Apply(config_map("present", json!({ "k": "2" }))),
        )
        .await
        .expect("a dry-run update is answered");
    assert_eq!(
        answer
            .data
            .and_then(|data| data.get("k").cloned())
            .as_deref(),
        Some("2")
    );
    let live = config_maps
        .get("present")
        .await
        .expect("get the config map");
    assert_eq!(
        live.data.and_then(|data| data.get("k").cloned()).as_deref(),
        Some("1"),
        "a dry-run update changed the object"
    );
}

#[tokio::test]
async fn readonly_context_can_list_but_not_patch() {
    let cp = control_plane();
    let ns = cp.namespace("readonly").await;
    let admin: Api<ConfigMap> = Api::namespaced(cp.client(User::Admin).await, &ns);
    admin
        .patch(
            "settings",
            &PatchParams::apply(MANAGER),
            &Patch::Apply(config_map("settings", json!({ "k": "v" }))),
        )
        .await
        .expect("admin applies the config map");

    let readonly: Api<ConfigMap> = Api::namespaced(cp.client(User::Readonly).await, &ns);
    let listed = readonly
        .list(&ListParams::default())
        .await
        .expect("readonly may list config maps");
    assert!(
        listed
            .items
            .iter()
            .any(|cm| cm.metadata.name.as_deref() == Some("settings")),
        "readonly sees the config map"
    );
    let status = api_error(
        readonly
            .patch(
                "settings",
                &PatchParams::apply(MANAGER),
                &Patch::Apply(config_map("settings", json!({ "k": "w" }))),
            )
            .await,
        "readonly patch",
    );
    assert!(
        status.is_forbidden(),
        "expected 403 Forbidden, got {status:?}"
    );
    assert_eq!(status.code, 403);
    let namespaces: Api<Namespace> = Api::all(cp.client(User::Readonly).await);
    let status = api_error(
        namespaces.delete(&ns, &DeleteParams::default()).await,
        "readonly delete",
    );
    assert!(
        status.is_forbidden(),
        "expected 403 Forbidden on delete, got {status:?}"
    );
}

#[test]
fn kubectl_sees_both_contexts_with_their_rights() {
    let can_i = |context: &str, verb: &str| {
        let output = control_plane()
            .kubectl()
            .args([
                "--context",
                context,
                "auth",
                "can-i",
                verb,
                "configmaps",
                "--all-namespaces",
            ])
            .output()
            .expect("run kubectl");
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    };
    assert_eq!(can_i("admin", "patch"), "yes");
    assert_eq!(can_i("readonly", "watch"), "yes");
    assert_eq!(can_i("readonly", "patch"), "no");
    assert_eq!(can_i("readonly", "delete"), "no");
}

#[tokio::test]
async fn crd_becomes_established_and_custom_objects_apply() {
    let cp = control_plane();
    let ns = cp.namespace("crd").await;
    let client = cp.client(User::Admin).await;
    // A group of its own, so runs sharing a control plane don't interfere.
    let group = format!("{}.test.tenantsync.io", unique_name("crd"));
    let widgets = ApiResource {
        group: group.clone(),
        version: "v1".into(),
        api_version: format!("{group}/v1"),
        kind: "Widget".into(),
        plural: "widgets".into(),
    };
    let crd_name = format!("widgets.{group}");
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(
        &crd_name,
        &PatchParams::apply(MANAGER),
        &Patch::Apply(json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": { "name": crd_name },
            "spec": {
                "group": group,
                "scope": "Namespaced",
                "names": { "kind": "Widget", "plural": "widgets", "singular": "widget", "listKind": "WidgetList" },
                "versions": [{
                    "name": "v1", "served": true, "storage": true,
                    "schema": { "openAPIV3Schema": {
                        "type": "object",
                        "properties": { "spec": {
                            "type": "object",
                            "required": ["size"],
                            "properties": {
                                "size": { "type": "string", "enum": ["small", "large"] },
                                "replicas": { "type": "integer", "default": 1 }
                            }
                        }}
                    }}
                }]
            }
        })),
    )
    .await
    .expect("apply the CRD");

    eventually(
        "the CRD to become Established",
        Duration::from_secs(30),
        || async {
            let crd = crds.get(&crd_name).await.expect("get the CRD");
            crd.status?
                .conditions?
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
                .then_some(())
        },
    )
    .await;

    let objects: Api<DynamicObject> = Api::namespaced_with(client, &ns, &widgets);
    let widget = |spec: Value| {
        Patch::Apply(json!({
            "apiVersion": widgets.api_version, "kind": "Widget",
            "metadata": { "name": "w1" }, "spec": spec
        }))
    };
    // Established can precede the resource being served by a moment.
    let applied = eventually(
        "the Widget resource to be served",
        Duration::from_secs(15),
        || async {
            match objects
                .patch(
                    "w1",
                    &PatchParams::apply(MANAGER),
                    &widget(json!({ "size": "large" })),
                )
                .await
            {
                Ok(object) => Some(object),
                Err(kube::Error::Api(status)) if status.is_not_found() => None,
                Err(e) => panic!("apply a Widget: {e}"),
            }
        },
    )
    .await;
    assert_eq!(applied.data["spec"]["size"], "large");
    assert_eq!(
        applied.data["spec"]["replicas"], 1,
        "the schema default was applied"
    );
    assert!(managed_by(applied.metadata.managed_fields.as_ref(), MANAGER).is_some());

    let status = api_error(
        objects
            .patch(
                "w1",
                &PatchParams::apply(MANAGER),
                &widget(json!({ "size": "huge" })),
            )
            .await,
        "apply a Widget violating the schema",
    );
    assert!(status.is_invalid(), "expected 422 Invalid, got {status:?}");
    assert!(
        status.message.contains("spec.size"),
        "the error names the field: {}",
        status.message
    );

    crds.delete(&crd_name, &DeleteParams::default())
        .await
        .expect("delete the CRD");
}

#[tokio::test]
async fn lease_is_renewed_only_from_the_current_resource_version() {
    let cp = control_plane();
    let ns = cp.namespace("lease").await;
    let leases: Api<Lease> = Api::namespaced(cp.client(User::Admin).await, &ns);
    let lease: Lease = serde_json::from_value(json!({
        "metadata": { "name": "tenantsync-leader" },
        "spec": {
            "holderIdentity": "replica-a",
            "leaseDurationSeconds": 15,
            "acquireTime": Timestamp::now().to_string(),
            "renewTime": Timestamp::now().to_string()
        }
    }))
    .expect("a lease literal deserializes");
    let created = leases
        .create(&PostParams::default(), &lease)
        .await
        .expect("create the lease");
    let first_renew = created
        .spec
        .as_ref()
        .and_then(|spec| spec.renew_time.clone());

    let mut renewal = created.clone();
    // MicroTime has microsecond precision on the wire.
    let later = Timestamp::from_microsecond(Timestamp::now().as_microsecond() + 5_000_000)
        .expect("a timestamp five seconds from now");
    renewal
        .spec
        .as_mut()
        .expect("the lease has a spec")
        .renew_time = Some(MicroTime(later));
    let renewed = leases
        .replace("tenantsync-leader", &PostParams::default(), &renewal)
        .await
        .expect("renew with the current resourceVersion");
    assert_ne!(
        renewed.metadata.resource_version,
        created.metadata.resource_version
    );
    let renew_time = renewed
        .spec
        .as_ref()
        .and_then(|spec| spec.renew_time.clone());
    assert_ne!(renew_time, first_renew, "renewTime moved");
    assert_eq!(renew_time, Some(MicroTime(later)));

    // Another replica still holding the first version must not win.
    let mut stale = created;
    stale
        .spec
        .as_mut()
        .expect("the lease has a spec")
        .holder_identity = Some("replica-b".into());
    let status = api_error(
        leases
            .replace("tenantsync-leader", &PostParams::default(), &stale)
            .await,
        "update with a stale resourceVersion",
    );
    assert!(
        status.is_conflict(),
        "expected 409 Conflict, got {status:?}"
    );
    let live = leases
        .get("tenantsync-leader")
        .await
        .expect("get the lease");
    assert_eq!(
        live.spec.and_then(|spec| spec.holder_identity).as_deref(),
        Some("replica-a")
    );
}

#[tokio::test]
async fn deleted_namespace_disappears_with_its_contents() {
    let cp = control_plane();
    let ns = cp.namespace("delete").await;
    let client = cp.client(User::Admin).await;
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    config_maps
        .patch(
            "doomed",
            &PatchParams::apply(MANAGER),
            &Patch::Apply(config_map("doomed", json!({}))),
        )
        .await
        .expect("apply a config map");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .delete(&ns, &DeleteParams::default())
        .await
        .expect("delete the namespace");

    eventually(
        "the namespace controller to remove the namespace",
        Duration::from_secs(60),
        || async {
            namespaces
                .get_opt(&ns)
                .await
                .expect("get the namespace")
                .is_none()
                .then_some(())
        },
    )
    .await;
    // Namespaced objects are keyed by namespace in etcd: a namespace
    // recreated with the same name would show leftovers.
    let leftovers = config_maps
        .list(&ListParams::default())
        .await
        .expect("list config maps of the deleted namespace");
    assert!(
        leftovers.items.is_empty(),
        "left behind: {:?}",
        leftovers.items
    );
}

#[tokio::test]
async fn garbage_collector_deletes_dependents_of_a_deleted_owner() {
    let cp = control_plane();
    let ns = cp.namespace("gc").await;
    let config_maps: Api<ConfigMap> = Api::namespaced(cp.client(User::Admin).await, &ns);
    let owner = config_maps
        .patch(
            "owner",
            &PatchParams::apply(MANAGER),
            &Patch::Apply(config_map("owner", json!({}))),
        )
        .await
        .expect("apply the owner");
    let uid = owner.metadata.uid.expect("the owner has a uid");
    let mut dependent = config_map("dependent", json!({}));
    dependent["metadata"]["ownerReferences"] =
        json!([{ "apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid }]);
    config_maps
        .patch(
            "dependent",
            &PatchParams::apply(MANAGER),
            &Patch::Apply(dependent),
        )
        .await
        .expect("apply the dependent");

    config_maps
        .delete("owner", &DeleteParams::background())
        .await
        .expect("delete the owner");
    eventually(
        "the garbage collector to delete the dependent",
        Duration::from_secs(60),
        || async {
            config_maps
                .get_opt("dependent")
                .await
                .expect("get the dependent")
                .is_none()
                .then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn new_namespace_gets_a_default_service_account() {
    let cp = control_plane();
    let ns = cp.namespace("service-account").await;
    let service_accounts: Api<ServiceAccount> = Api::namespaced(cp.client(User::Admin).await, &ns);
    eventually(
        "the serviceaccount controller to create default",
        Duration::from_secs(30),
        || async {
            service_accounts
                .get_opt("default")
                .await
                .expect("get the service account")
                .map(|_| ())
        },
    )
    .await;
}
