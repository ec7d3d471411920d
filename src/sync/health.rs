//! Health of live objects (pure: no I/O), with per-kind rules like Argo CD's.
//!
//! `assess` looks at one live object as the API server returns it and says
//! whether it is Healthy, still Progressing, or Degraded (with the reason
//! from its conditions). `cluster::wait` polls the cluster and feeds it here.
//!
//! Kinds without a rule (ConfigMap, Secret, ServiceAccount, ClusterIP
//! Service, PodDisruptionBudget, NetworkPolicy, custom objects) are healthy
//! once they exist.

use std::fmt;

use serde::Serialize;
use serde_json::Value;

/// How healthy an object is. Ordered from best to worst, so the worst of
/// several is their maximum.
///
/// Serialized in PascalCase (`"Healthy"`, `"Progressing"`, `"Degraded"`), as
/// Argo CD and `kubectl` users read them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum HealthStatus {
    Healthy,
    Progressing,
    Degraded,
}

impl fmt::Display for HealthStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HealthStatus::Healthy => "Healthy",
            HealthStatus::Progressing => "Progressing",
            HealthStatus::Degraded => "Degraded",
        })
    }
}

/// The health of one object and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Health {
    pub status: HealthStatus,
    pub message: String,
}

impl Health {
    pub fn healthy(message: impl Into<String>) -> Health {
        Health {
            status: HealthStatus::Healthy,
            message: message.into(),
        }
    }

    pub fn progressing(message: impl Into<String>) -> Health {
        Health {
            status: HealthStatus::Progressing,
            message: message.into(),
        }
    }

    pub fn degraded(message: impl Into<String>) -> Health {
        Health {
            status: HealthStatus::Degraded,
            message: message.into(),
        }
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.message.is_empty() {
            write!(f, "{}", self.status)
        } else {
            write!(f, "{}: {}", self.status, self.message)
        }
    }
}

/// What counts as healthy where a cluster may lack a controller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthOptions {
    /// Wait until an Ingress (or a Service of type LoadBalancer) has a
    /// load-balancer address. Off for clusters whose ingress controller
    /// never publishes one.
    pub wait_for_ingress_address: bool,
}

impl Default for HealthOptions {
    fn default() -> HealthOptions {
        HealthOptions {
            wait_for_ingress_address: true,
        }
    }
}

/// The health of one live object.
pub fn assess(live: &Value, options: &HealthOptions) -> Health {
    match live.get("kind").and_then(Value::as_str).unwrap_or("") {
        "Deployment" => deployment(live),
        "Namespace" => namespace(live),
        "CustomResourceDefinition" => crd(live),
        "Ingress" => load_balanced(live, options),
        "Service" if str_at(live, "/spec/type") == Some("LoadBalancer") => {
            load_balanced(live, options)
        }
        _ => Health::healthy(""),
    }
}

/// The worst of several: Degraded over Progressing over Healthy; Healthy
/// when there are none.
pub fn aggregate<'a>(items: impl Iterator<Item = &'a Health>) -> HealthStatus {
    items
        .map(|h| h.status)
        .max()
        .unwrap_or(HealthStatus::Healthy)
}

/// Workspaces judged by their objects' health (`workspace`, object ID,
/// health): Healthy when every object is, failed otherwise, with one line
/// per object that is not (`--wait` semantics: Degraded, or still
/// Progressing when the wait ended, is failure).
pub fn judge_workspaces<'a>(
    objects: impl IntoIterator<Item = (&'a str, String, &'a Health)>,
) -> (Vec<String>, std::collections::BTreeMap<String, Vec<String>>) {
    let mut failed: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    let mut seen = std::collections::BTreeSet::new();
    for (ws, id, health) in objects {
        seen.insert(ws.to_string());
        if health.status != HealthStatus::Healthy {
            failed
                .entry(ws.to_string())
                .or_default()
                .push(format!("{id}: {health}"));
        }
    }
    let healthy = seen
        .into_iter()
        .filter(|ws| !failed.contains_key(ws))
        .collect();
    (healthy, failed)
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Value::as_str)
}

/// An integer status field; the API server omits zeros.
fn int_at(v: &Value, pointer: &str) -> i64 {
    v.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
}

/// The condition of type `type_` in `status.conditions`.
fn condition<'a>(live: &'a Value, type_: &str) -> Option<&'a Value> {
    live.pointer("/status/conditions")
        .and_then(Value::as_array)?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(type_))
}

/// `Reason: message` of a condition, whichever parts it has.
fn reason_and_message(c: &Value) -> String {
    let reason = c.get("reason").and_then(Value::as_str).unwrap_or("");
    let message = c.get("message").and_then(Value::as_str).unwrap_or("");
    match (reason.is_empty(), message.is_empty()) {
        (false, false) => format!("{reason}: {message}"),
        (false, true) => reason.to_string(),
        (true, _) => message.to_string(),
    }
}

fn deployment(live: &Value) -> Health {
    let generation = int_at(live, "/metadata/generation");
    let observed = int_at(live, "/status/observedGeneration");
    // Status (conditions included) describes an older spec until the
    // controller observes this generation: a stale ProgressDeadlineExceeded
    // must not fail a rollout that just started.
    if observed < generation {
        return Health::progressing(format!(
            "waiting for the controller to observe generation {generation} (observed {observed})"
        ));
    }
    if let Some(c) = condition(live, "Progressing")
        && c.get("reason").and_then(Value::as_str) == Some("ProgressDeadlineExceeded")
    {
        return Health::degraded(reason_and_message(c));
    }
    if let Some(c) = condition(live, "ReplicaFailure")
        && c.get("status").and_then(Value::as_str) == Some("True")
    {
        return Health::degraded(reason_and_message(c));
    }
    // `spec.replicas` defaults to 1.
    let desired = live
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let replicas = int_at(live, "/status/replicas");
    let updated = int_at(live, "/status/updatedReplicas");
    let available = int_at(live, "/status/availableReplicas");
    if updated < desired {
        Health::progressing(format!("{updated} of {desired} replicas updated"))
    } else if replicas > updated {
        Health::progressing(format!(
            "{} old replicas pending termination",
            replicas - updated
        ))
    } else if available < desired {
        Health::progressing(format!(
            "{available} of {desired} updated replicas available"
        ))
    } else {
        Health::healthy(format!("{available} of {desired} replicas available"))
    }
}

fn namespace(live: &Value) -> Health {
    match str_at(live, "/status/phase") {
        Some("Active") => Health::healthy("Active"),
        Some("Terminating") => Health::progressing("Terminating"),
        Some(other) => Health::progressing(format!("phase {other}")),
        None => Health::progressing("no phase yet"),
    }
}

fn crd(live: &Value) -> Health {
    if let Some(c) = condition(live, "NamesAccepted")
        && c.get("status").and_then(Value::as_str) == Some("False")
    {
        return Health::degraded(reason_and_message(c));
    }
    match condition(live, "Established") {
        Some(c) if c.get("status").and_then(Value::as_str) == Some("True") => {
            Health::healthy("Established")
        }
        Some(c) => {
            let why = reason_and_message(c);
            Health::progressing(if why.is_empty() {
                "not Established yet".to_string()
            } else {
                format!("not Established yet: {why}")
            })
        }
        None => Health::progressing("not Established yet"),
    }
}

/// Ingresses and LoadBalancer Services: healthy once an address is published.
fn load_balanced(live: &Value, options: &HealthOptions) -> Health {
    let addresses: Vec<&str> = live
        .pointer("/status/loadBalancer/ingress")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|i| {
                    i.get("ip")
                        .or_else(|| i.get("hostname"))
                        .and_then(Value::as_str)
                })
                .collect()
        })
        .unwrap_or_default();
    if !addresses.is_empty() {
        Health::healthy(addresses.join(", "))
    } else if options.wait_for_ingress_address {
        Health::progressing("waiting for a load-balancer address")
    } else {
        Health::healthy("")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_workspace_is_healthy_only_when_every_object_is() {
        let ok = Health::healthy("");
        let bad = Health::degraded("ProgressDeadlineExceeded: timed out");
        let slow = Health::progressing("1 of 2 replicas updated");
        let (healthy, failed) = judge_workspaces([
            ("a", "Deployment/a/x".to_string(), &ok),
            ("b", "Deployment/b/x".to_string(), &bad),
            ("b", "Service/b/x".to_string(), &ok),
            ("c", "Deployment/c/x".to_string(), &slow),
        ]);
        assert_eq!(healthy, ["a"]);
        assert_eq!(
            failed["b"],
            ["Deployment/b/x: Degraded: ProgressDeadlineExceeded: timed out"]
        );
        assert_eq!(
            failed["c"],
            ["Deployment/c/x: Progressing: 1 of 2 replicas updated"]
        );
    }

    fn check(live: &Value) -> Health {
        assess(live, &HealthOptions::default())
    }

    fn deploy(generation: i64, spec_replicas: Option<i64>, status: Value) -> Value {
        let mut d = json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": { "name": "fhir-main", "namespace": "contoso", "generation": generation },
            "spec": {},
            "status": status,
        });
        if let Some(r) = spec_replicas {
            d["spec"]["replicas"] = r.into();
        }
        d
    }

    #[test]
    fn deployment_healthy_when_rolled_out() {
        let d = deploy(
            2,
            Some(3),
            json!({ "observedGeneration": 2, "replicas": 3, "updatedReplicas": 3, "availableReplicas": 3 }),
        );
        assert_eq!(
            check(&d),
            Health::healthy("3 of 3 replicas available"),
            "{d}"
        );
    }

    #[test]
    fn deployment_observed_generation_ahead_is_current() {
        let d = deploy(
            2,
            Some(1),
            json!({ "observedGeneration": 3, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 1 }),
        );
        assert_eq!(check(&d).status, HealthStatus::Healthy);
    }

    #[test]
    fn deployment_generation_lag_is_progressing_even_if_replicas_look_done() {
        let d = deploy(
            3,
            Some(2),
            json!({ "observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2 }),
        );
        assert_eq!(
            check(&d),
            Health::progressing("waiting for the controller to observe generation 3 (observed 2)")
        );
    }

    #[test]
    fn deployment_without_status_is_progressing() {
        let d = deploy(1, Some(2), Value::Null);
        assert_eq!(check(&d).status, HealthStatus::Progressing);
        let mut d = deploy(1, Some(2), Value::Null);
        d.as_object_mut().map(|m| m.remove("status"));
        assert_eq!(check(&d).status, HealthStatus::Progressing);
    }

    #[test]
    fn deployment_stale_degraded_condition_is_progressing() {
        // A failed rollout of generation 1 says nothing about generation 2.
        let d = deploy(
            2,
            Some(1),
            json!({
                "observedGeneration": 1,
                "conditions": [{ "type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded", "message": "old" }]
            }),
        );
        assert_eq!(check(&d).status, HealthStatus::Progressing);
    }

    #[test]
    fn deployment_updated_replicas_short() {
        let d = deploy(
            1,
            Some(3),
            json!({ "observedGeneration": 1, "replicas": 3, "updatedReplicas": 1, "availableReplicas": 3 }),
        );
        assert_eq!(check(&d), Health::progressing("1 of 3 replicas updated"));
    }

    #[test]
    fn deployment_old_replicas_pending_termination() {
        let d = deploy(
            1,
            Some(3),
            json!({ "observedGeneration": 1, "replicas": 5, "updatedReplicas": 3, "availableReplicas": 3 }),
        );
        assert_eq!(
            check(&d),
            Health::progressing("2 old replicas pending termination")
        );
    }

    #[test]
    fn deployment_available_short() {
        let d = deploy(
            1,
            Some(3),
            json!({ "observedGeneration": 1, "replicas": 3, "updatedReplicas": 3, "availableReplicas": 2 }),
        );
        assert_eq!(
            check(&d),
            Health::progressing("2 of 3 updated replicas available")
        );
    }

    #[test]
    fn deployment_replicas_default_to_one() {
        let d = deploy(1, None, json!({ "observedGeneration": 1 }));
        assert_eq!(check(&d), Health::progressing("0 of 1 replicas updated"));
        let d = deploy(
            1,
            None,
            json!({ "observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 1 }),
        );
        assert_eq!(check(&d).status, HealthStatus::Healthy);
    }

    #[test]
    fn deployment_scaled_to_zero_is_healthy() {
        let d = deploy(4, Some(0), json!({ "observedGeneration": 4 }));
        assert_eq!(check(&d), Health::healthy("0 of 0 replicas available"));
    }

    #[test]
    fn deployment_progress_deadline_exceeded_is_degraded_with_message() {
        let d = deploy(
            1,
            Some(2),
            json!({
                "observedGeneration": 1, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 0,
                "conditions": [
                    { "type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable" },
                    { "type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                      "message": "ReplicaSet \"fhir-main-7d4\" has timed out progressing." }
                ]
            }),
        );
        assert_eq!(
            check(&d),
            Health::degraded(
                "ProgressDeadlineExceeded: ReplicaSet \"fhir-main-7d4\" has timed out progressing."
            )
        );
    }

    #[test]
    fn deployment_progressing_condition_with_other_reason_is_not_degraded() {
        let d = deploy(
            1,
            Some(2),
            json!({
                "observedGeneration": 1, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 1,
                "conditions": [{ "type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated" }]
            }),
        );
        assert_eq!(check(&d).status, HealthStatus::Progressing);
    }

    #[test]
    fn deployment_replica_failure_is_degraded_with_message() {
        let d = deploy(
            1,
            Some(2),
            json!({
                "observedGeneration": 1,
                "conditions": [{ "type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
                                 "message": "pods \"fhir-main-x\" is forbidden: exceeded quota" }]
            }),
        );
        assert_eq!(
            check(&d),
            Health::degraded("FailedCreate: pods \"fhir-main-x\" is forbidden: exceeded quota")
        );
    }

    #[test]
    fn deployment_replica_failure_false_is_not_degraded() {
        let d = deploy(
            1,
            Some(1),
            json!({
                "observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 1,
                "conditions": [{ "type": "ReplicaFailure", "status": "False", "reason": "FailedCreate" }]
            }),
        );
        assert_eq!(check(&d).status, HealthStatus::Healthy);
    }

    #[test]
    fn degraded_condition_without_message_names_the_reason() {
        let d = deploy(
            1,
            Some(1),
            json!({
                "observedGeneration": 1,
                "conditions": [{ "type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded" }]
            }),
        );
        assert_eq!(check(&d), Health::degraded("ProgressDeadlineExceeded"));
    }

    fn ns(phase: Option<&str>) -> Value {
        let mut n =
            json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": "contoso" } });
        if let Some(p) = phase {
            n["status"] = json!({ "phase": p });
        }
        n
    }

    #[test]
    fn namespace_phases() {
        assert_eq!(check(&ns(Some("Active"))).status, HealthStatus::Healthy);
        assert_eq!(
            check(&ns(Some("Terminating"))),
            Health::progressing("Terminating")
        );
        assert_eq!(check(&ns(None)).status, HealthStatus::Progressing);
    }

    fn crd_with(conditions: Value) -> Value {
        json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": { "name": "widgets.example.com" },
            "status": { "conditions": conditions }
        })
    }

    #[test]
    fn crd_established() {
        let c = crd_with(json!([
            { "type": "NamesAccepted", "status": "True", "reason": "NoConflicts" },
            { "type": "Established", "status": "True", "reason": "InitialNamesAccepted" }
        ]));
        assert_eq!(check(&c), Health::healthy("Established"));
    }

    #[test]
    fn crd_not_established_yet() {
        assert_eq!(
            check(&crd_with(json!([]))),
            Health::progressing("not Established yet")
        );
        let c =
            crd_with(json!([{ "type": "Established", "status": "False", "reason": "Installing" }]));
        assert_eq!(
            check(&c),
            Health::progressing("not Established yet: Installing")
        );
    }

    #[test]
    fn crd_names_not_accepted_is_degraded() {
        let c = crd_with(json!([
            { "type": "NamesAccepted", "status": "False", "reason": "ListKindConflict",
              "message": "\"WidgetList\" is already in use" },
            { "type": "Established", "status": "False", "reason": "NotAccepted" }
        ]));
        assert_eq!(
            check(&c),
            Health::degraded("ListKindConflict: \"WidgetList\" is already in use")
        );
    }

    fn ingress(status: Value) -> Value {
        json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "Ingress",
            "metadata": { "name": "fhir-main", "namespace": "contoso" },
            "status": status
        })
    }

    #[test]
    fn ingress_waits_for_an_address_by_default() {
        for status in [
            json!({}),
            json!({ "loadBalancer": {} }),
            json!({ "loadBalancer": { "ingress": [] } }),
        ] {
            assert_eq!(
                check(&ingress(status.clone())),
                Health::progressing("waiting for a load-balancer address"),
                "{status}"
            );
        }
        let i = ingress(
            json!({ "loadBalancer": { "ingress": [{ "ip": "10.0.0.7" }, { "hostname": "lb.example.com" }] } }),
        );
        assert_eq!(check(&i), Health::healthy("10.0.0.7, lb.example.com"));
    }

    #[test]
    fn ingress_without_address_is_healthy_when_not_waiting() {
        let options = HealthOptions {
            wait_for_ingress_address: false,
        };
        assert_eq!(
            assess(&ingress(json!({})), &options).status,
            HealthStatus::Healthy
        );
    }

    #[test]
    fn services_cluster_ip_healthy_load_balancer_waits() {
        let svc = |t: &str| json!({ "apiVersion": "v1", "kind": "Service", "metadata": { "name": "s" }, "spec": { "type": t } });
        assert_eq!(check(&svc("ClusterIP")).status, HealthStatus::Healthy);
        assert_eq!(
            check(&svc("LoadBalancer")).status,
            HealthStatus::Progressing
        );
        let options = HealthOptions {
            wait_for_ingress_address: false,
        };
        assert_eq!(
            assess(&svc("LoadBalancer"), &options).status,
            HealthStatus::Healthy
        );
    }

    #[test]
    fn kinds_without_rules_are_healthy_once_they_exist() {
        for (api_version, kind) in [
            ("v1", "ConfigMap"),
            ("v1", "Secret"),
            ("v1", "ServiceAccount"),
            ("policy/v1", "PodDisruptionBudget"),
            ("networking.k8s.io/v1", "NetworkPolicy"),
            ("example.com/v1", "Widget"),
        ] {
            let live =
                json!({ "apiVersion": api_version, "kind": kind, "metadata": { "name": "x" } });
            assert_eq!(check(&live).status, HealthStatus::Healthy, "{kind}");
        }
    }

    #[test]
    fn aggregate_worst_wins() {
        let h = Health::healthy("");
        let p = Health::progressing("");
        let d = Health::degraded("");
        assert_eq!(aggregate(std::iter::empty()), HealthStatus::Healthy);
        assert_eq!(aggregate([&h, &h].into_iter()), HealthStatus::Healthy);
        assert_eq!(
            aggregate([&h, &p, &h].into_iter()),
            HealthStatus::Progressing
        );
        assert_eq!(aggregate([&p, &d, &h].into_iter()), HealthStatus::Degraded);
        assert_eq!(aggregate([&d, &p].iter().copied()), HealthStatus::Degraded);
    }

    #[test]
    fn serialized_pascal_case() {
        let json = serde_json::to_value(Health::degraded("x")).unwrap_or_default();
        assert_eq!(json, json!({ "status": "Degraded", "message": "x" }));
        assert_eq!(HealthStatus::Progressing.to_string(), "Progressing");
        assert_eq!(
            Health::progressing("1 of 2").to_string(),
            "Progressing: 1 of 2"
        );
        assert_eq!(Health::healthy("").to_string(), "Healthy");
    }
}
