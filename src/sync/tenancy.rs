//! Tenancy guardrails (pure): what one environment's declarations may touch.
//!
//! The tenants repository is not trusted with the cluster: whoever can push
//! to it must not reach other environments, the control plane's namespaces or
//! tenantsync itself. The limits here are the operator's (command-line flags
//! and the daemon's configuration file), never the repository's, and are
//! checked on the rendered objects before anything is sent to the cluster:
//!
//! - **Namespaces.** An environment writes only into the namespaces its
//!   `namespaceTemplate` yields for its workspaces (the template must contain
//!   `{environment}`, so that no environment names another's by a fixed
//!   suffix; environments validated together are also checked for a
//!   namespace they both render, [`Guardrails::shared_namespaces`]) and into
//!   namespaces the operator allows by pattern. Reserved namespaces
//!   (`kube-*`, `default`, the control namespace) are refused always.
//! - **Kinds.** Cluster-scoped kinds (other than the workspaces' own
//!   Namespaces) only when the operator allows them by name; RBAC kinds never
//!   unless allowed by name. Kubernetes' own cluster-scoped kinds are known
//!   here by name; any other by the scope API discovery gives it
//!   ([`Guardrails::check_scopes`], once the cluster is reached).
//! - **Pods.** A pod template in `resources/` may not be privileged, use the
//!   host's namespaces, ports or paths, or run as a ServiceAccount that no
//!   workspace renders in that namespace, unless the operator allows it.
//! - **Sync policy.** The repository may tighten `forceConflicts` and
//!   `maxPrunePercent`, never loosen what the operator set.
//!
//! Ownership of live objects (never adopt) is decided by
//! [`settle_ownership`], on what the cluster holds.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::declare::model::SyncPolicy;
use crate::object::{ENVIRONMENT_LABEL, MANAGED_BY, MANAGER, Object, ObjectKey, live_key};
use crate::plan::{Action, Plan, Summary};
use crate::sync::inventory::{Inventory, ObjectRef, SYSTEM_NAMESPACE};

/// The operator's limits for every environment of a run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Guardrails {
    /// Namespaces an environment may write into besides its workspaces'
    /// own: patterns where `*` matches any characters and `{environment}`
    /// the environment's name (`shared-{environment}`, `monitoring`).
    #[serde(default)]
    pub allowed_namespaces: Vec<String>,
    /// Kinds `resources/` may hold beyond the default (namespaced kinds
    /// other than RBAC's): cluster-scoped kinds and RBAC kinds, by name
    /// (`CustomResourceDefinition`, `Role`).
    #[serde(default)]
    pub allowed_kinds: Vec<String>,
    /// Allow privileged pod templates, host namespaces, `hostPath` volumes
    /// and ServiceAccounts no workspace renders.
    #[serde(default)]
    pub allow_privileged_pods: bool,
    /// Allow a `namespaceTemplate` without `{environment}` (one environment
    /// per cluster only: two such environments could write into each
    /// other's namespaces).
    #[serde(default)]
    pub allow_shared_namespace_template: bool,
}

/// Kinds that are cluster-scoped in Kubernetes itself. A `resources/`
/// manifest of another kind without `metadata.namespace` is taken as
/// cluster-scoped too (it cannot be applied as a namespaced one).
const CLUSTER_SCOPED: &[&str] = &[
    "Namespace",
    "Node",
    "PersistentVolume",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "APIService",
    "StorageClass",
    "CSIDriver",
    "CSINode",
    "VolumeAttachment",
    "PriorityClass",
    "RuntimeClass",
    "IngressClass",
    "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
    "MutatingAdmissionPolicy",
    "MutatingAdmissionPolicyBinding",
    "CertificateSigningRequest",
    "FlowSchema",
    "PriorityLevelConfiguration",
    "ClusterTrustBundle",
];

/// Namespaced kinds refused unless allowed by name: they grant permissions.
const RBAC_KINDS: &[&str] = &["Role", "RoleBinding"];

/// One broken rule: the object (or setting), the rule, what to do.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Violation {
    /// `Kind/namespace/name`, or the setting's path.
    pub subject: String,
    pub message: String,
    /// Where the object is written, when it comes from a file (a
    /// `resources/` manifest).
    pub source: Option<std::sync::Arc<crate::declare::diag::Location>>,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.subject, self.message)
    }
}

impl Violation {
    /// As a diagnostic at the manifest's `file:line:col`, or of
    /// environment `environment`'s folder when the object or setting is
    /// not written in one file (a rendered object, the merged settings).
    pub fn diagnostic(&self, environment: &str) -> crate::declare::diag::Diagnostic {
        let (file, line, column) = match &self.source {
            Some(at) => (at.file.clone(), at.line, at.column),
            None => (format!("environments/{environment}"), 0, 0),
        };
        crate::declare::diag::Diagnostic {
            file,
            line,
            column,
            pointer: None,
            message: format!("{} (operator guardrail): {}", self.subject, self.message),
        }
    }
}

/// Whether `namespace` is reserved: never written by any environment.
pub fn reserved(namespace: &str) -> bool {
    namespace == "default" || namespace.starts_with("kube-") || namespace == SYSTEM_NAMESPACE
}

/// `*` matches any run of characters; `{environment}` the environment.
fn matches(pattern: &str, environment: &str, namespace: &str) -> bool {
    let pattern = pattern.replace("{environment}", environment);
    let parts: Vec<&str> = pattern.split('*').collect();
    let (first, last) = match parts.as_slice() {
        [only] => return *only == namespace,
        [first, .., last] => (*first, *last),
        [] => return false,
    };
    if namespace.len() < first.len() + last.len()
        || !namespace.starts_with(first)
        || !namespace.ends_with(last)
    {
        return false;
    }
    let mut rest = &namespace[first.len()..namespace.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    true
}

impl Guardrails {
    /// Whether the operator allows writes into `namespace` beyond the
    /// workspaces' own (never a reserved one).
    pub fn allows_namespace(&self, environment: &str, namespace: &str) -> bool {
        !reserved(namespace)
            && self
                .allowed_namespaces
                .iter()
                .any(|p| matches(p, environment, namespace))
    }

    fn allows_kind(&self, kind: &str) -> bool {
        self.allowed_kinds.iter().any(|k| k == kind)
    }

    /// Checks an environment's rendered objects. `template`: its
    /// `namespaceTemplate` as written (None: the default, which has
    /// `{environment}`).
    pub fn check(
        &self,
        environment: &str,
        template: Option<&str>,
        objects: &[Object],
    ) -> Vec<Violation> {
        let mut out = Vec::new();
        let shared_template = template.is_some_and(|t| !t.contains("{environment}"));
        if shared_template && !self.allow_shared_namespace_template {
            out.push(Violation {
                subject: "spec.namespaceTemplate".into(),
                source: None,
                message: format!(
                    "`{}` has no `{{environment}}`: environment `{environment}` could write into another environment's namespaces; add `{{environment}}` to the template (or, for a cluster with one environment only, the operator allows it with --allow-shared-namespace-template)",
                    template.unwrap_or_default()
                ),
            });
        }
        // The namespaces the workspaces render (their Namespace objects).
        let own: BTreeSet<&str> = objects
            .iter()
            .filter(|o| !o.workspace.is_empty() && &*o.kind == "Namespace")
            .map(|o| &*o.name)
            .collect();
        // ServiceAccounts the workspaces render, per namespace, for pod
        // templates. Not those of resources/ manifests: such a manifest is
        // left alone when its ServiceAccount already exists (never adopt),
        // so a pod template could run as someone else's account.
        let mut accounts: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for o in objects
            .iter()
            .filter(|o| !o.workspace.is_empty() && &*o.kind == "ServiceAccount")
        {
            if let Some(ns) = o.namespace.as_deref() {
                accounts.entry(ns).or_default().insert(&o.name);
            }
        }
        for o in objects {
            let id = o.id();
            let from = if o.workspace.is_empty() {
                "a resources/ manifest".to_string()
            } else {
                format!("workspace `{}`", o.workspace)
            };
            // A workspace's objects all live in its namespace: judged once,
            // on its Namespace object.
            let namespace = match (&*o.kind, o.namespace.as_deref()) {
                ("Namespace", _) => Some(&*o.name),
                (_, _) if !o.workspace.is_empty() => None,
                (_, ns) => ns,
            };
            match namespace {
                Some(ns) if reserved(ns) => out.push(Violation {
                    subject: id.clone(),
                    source: o.source.clone(),
                    message: format!(
                        "{from} writes into reserved namespace `{ns}` (kube-*, default and {SYSTEM_NAMESPACE} are never written by a declaration); {}",
                        if o.workspace.is_empty() {
                            "change the manifest's namespace"
                        } else {
                            "rename the workspace or change spec.namespaceTemplate"
                        }
                    ),
                }),
                Some(ns) if own.contains(ns) && !shared_template => {}
                Some(ns) if own.contains(ns) && self.allow_shared_namespace_template => {}
                Some(ns) if self.allows_namespace(environment, ns) => {}
                Some(ns) if own.contains(ns) => {} // reported with the template
                Some(ns) => out.push(Violation {
                    subject: id.clone(),
                    source: o.source.clone(),
                    message: format!(
                        "{from} writes into namespace `{ns}`, which no workspace of environment `{environment}` renders; put it in a workspace's namespace, or the operator allows it with --allow-namespace"
                    ),
                }),
                None => {}
            }
            if o.workspace.is_empty() {
                let cluster_scoped = o.namespace.is_none();
                if cluster_scoped && !self.allows_kind(&o.kind) {
                    out.push(Violation {
                        subject: id.clone(),
                        source: o.source.clone(),
                        message: format!(
                            "{from} declares cluster-scoped kind {}; only the operator can allow it (--allow-kind {}), or give the manifest a metadata.namespace if the kind is namespaced",
                            o.kind, o.kind
                        ),
                    });
                } else if RBAC_KINDS.contains(&&*o.kind) && !self.allows_kind(&o.kind) {
                    out.push(Violation {
                        subject: id.clone(),
                        source: o.source.clone(),
                        message: format!(
                            "{from} declares {}, which grants permissions; only the operator can allow it (--allow-kind {})",
                            o.kind, o.kind
                        ),
                    });
                } else if !cluster_scoped && CLUSTER_SCOPED.contains(&&*o.kind) {
                    out.push(Violation {
                        subject: id.clone(),
                        source: o.source.clone(),
                        message: format!(
                            "{} is cluster-scoped: remove metadata.namespace (and the operator must allow it with --allow-kind {})",
                            o.kind, o.kind
                        ),
                    });
                }
                if !self.allow_privileged_pods {
                    let body = o.value();
                    let ns = o.namespace.as_deref().unwrap_or_default();
                    let rendered = accounts.get(ns);
                    for problem in pod_problems(&body, |sa| {
                        sa == "default" || rendered.is_some_and(|r| r.contains(sa))
                    }) {
                        out.push(Violation {
                            subject: id.clone(),
                            source: o.source.clone(),
                            message: format!(
                                "{from}: {problem}; only the operator can allow it (--allow-privileged-pods)"
                            ),
                        });
                    }
                }
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// Checks `resources/` manifests against the scope the cluster gives
    /// their kinds: `namespaced(apiVersion, kind)` is API discovery's answer
    /// (or a CRD's among the objects, [`crd_scopes`]), `None` when unknown.
    /// [`Guardrails::check`] knows Kubernetes' own cluster-scoped kinds by
    /// name; any other is known only here. A manifest of a cluster-scoped
    /// kind with a `metadata.namespace` would be applied cluster-wide under
    /// a key that is not the object's (so an existing object would look like
    /// nobody's and be taken over): refused, whatever the operator allows.
    pub fn check_scopes(
        &self,
        objects: &[Object],
        namespaced: impl Fn(&str, &str) -> Option<bool>,
    ) -> Vec<Violation> {
        let mut out = Vec::new();
        for o in objects.iter().filter(|o| o.workspace.is_empty()) {
            let (kind, api_version) = (&*o.kind, &*o.api_version);
            match (namespaced(api_version, kind), o.namespace.as_deref()) {
                // Kubernetes' own: already refused by `check`.
                (Some(false), Some(_)) if CLUSTER_SCOPED.contains(&kind) => {}
                (Some(false), Some(ns)) => out.push(Violation {
                    subject: o.id(),
                    source: o.source.clone(),
                    message: format!(
                        "a resources/ manifest declares {kind} ({api_version}), which the cluster serves as cluster-scoped, with metadata.namespace `{ns}`: it would be written cluster-wide; remove metadata.namespace, and only the operator can allow the kind (--allow-kind {kind})"
                    ),
                }),
                // Without --allow-kind, `check` already says to add one.
                (Some(true), None) if self.allows_kind(kind) => out.push(Violation {
                    subject: o.id(),
                    source: o.source.clone(),
                    message: format!(
                        "a resources/ manifest declares {kind} ({api_version}), which the cluster serves as namespaced, without metadata.namespace; give it one of the environment's namespaces"
                    ),
                }),
                _ => {}
            }
        }
        out.sort();
        out
    }

    /// Namespaces that several environments render (`environments`: each
    /// one's name and rendered objects). `{environment}` in the template
    /// does not rule it out: with `{workspace}-{environment}`, workspace
    /// `contoso-eu` of `qa` and workspace `contoso` of `eu-qa` both render
    /// `contoso-eu-qa`. Each clash is reported on the environment that comes
    /// later by name. Nothing when the operator allows shared templates
    /// (each environment on a cluster of its own).
    pub fn shared_namespaces(
        &self,
        environments: &[(&str, &[Object])],
    ) -> Vec<(String, Violation)> {
        if self.allow_shared_namespace_template {
            return Vec::new();
        }
        let mut sorted: Vec<&(&str, &[Object])> = environments.iter().collect();
        sorted.sort_by_key(|(name, _)| *name);
        // Namespace name -> (environment, what renders it).
        let mut first: BTreeMap<&str, (&str, String)> = BTreeMap::new();
        let mut out = Vec::new();
        for (environment, objects) in sorted {
            for o in objects.iter().filter(|o| &*o.kind == "Namespace") {
                let from = if o.workspace.is_empty() {
                    "a resources/ manifest".to_string()
                } else {
                    format!("workspace `{}`", o.workspace)
                };
                match first.get(&*o.name) {
                    Some((other, _)) if other == environment => {}
                    Some((other, other_from)) => out.push((
                        environment.to_string(),
                        Violation {
                            subject: o.id(),
                            source: o.source.clone(),
                            message: format!(
                                "namespace `{}` is rendered by {from} of environment `{environment}` and by {other_from} of environment `{other}`: on one cluster the second to sync finds it not its own and leaves it alone; rename a workspace or change a namespaceTemplate (for environments that never share a cluster, the operator allows it with --allow-shared-namespace-template)",
                                o.name
                            ),
                        },
                    )),
                    None => {
                        first.insert(&o.name, (environment, from));
                    }
                }
            }
        }
        out
    }
}

/// The scope the CustomResourceDefinitions among `objects` give their kinds:
/// (`group/version`, kind) -> namespaced, for each served version.
pub fn crd_scopes(objects: &[Object]) -> BTreeMap<(String, String), bool> {
    let mut out = BTreeMap::new();
    for o in objects
        .iter()
        .filter(|o| &*o.kind == "CustomResourceDefinition")
    {
        let body = o.value();
        let text = |p: &str| body.pointer(p).and_then(Value::as_str);
        let (Some(group), Some(kind), Some(scope)) = (
            text("/spec/group"),
            text("/spec/names/kind"),
            text("/spec/scope"),
        ) else {
            continue;
        };
        for version in body
            .pointer("/spec/versions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|v| v.get("name").and_then(Value::as_str))
        {
            out.insert(
                (format!("{group}/{version}"), kind.to_string()),
                scope == "Namespaced",
            );
        }
    }
    out
}

/// The pod spec of a manifest: a Pod's own, a workload's template, a
/// CronJob's job template's.
fn pod_spec(body: &Value) -> Option<&Value> {
    match body.get("kind")?.as_str()? {
        "Pod" => body.get("spec"),
        "CronJob" => body.pointer("/spec/jobTemplate/spec/template/spec"),
        _ => body.pointer("/spec/template/spec"),
    }
}

/// A field that is set: present and not `null`.
fn set(value: Option<&Value>) -> Option<&Value> {
    value.filter(|v| !v.is_null())
}

/// A switch that is on: set to anything but `false`. The API server refuses
/// a non-boolean, but the check does not count on it: a value it cannot
/// read as off (`"true"`, `1`) is taken as on.
fn switched_on(value: Option<&Value>) -> Option<&Value> {
    set(value).filter(|v| **v != Value::Bool(false))
}

/// What makes a pod spec unsafe for a tenant's declaration. Every place a
/// container can be (`containers`, `initContainers`, `ephemeralContainers`)
/// and both ServiceAccount fields are looked at; a value of an unexpected
/// type counts against the manifest, never for it.
fn pod_problems(body: &Value, known_account: impl Fn(&str) -> bool) -> Vec<String> {
    let Some(spec) = pod_spec(body) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    // hostUsers defaults to true and only false is safer: not a switch here.
    for host in ["hostNetwork", "hostPID", "hostIPC"] {
        if let Some(v) = switched_on(spec.get(host)) {
            out.push(format!("the pod template sets {host}: {v}"));
        }
    }
    if let Some(volumes) = spec.get("volumes").and_then(Value::as_array) {
        for v in volumes.iter().filter(|v| set(v.get("hostPath")).is_some()) {
            let name = v.get("name").and_then(Value::as_str).unwrap_or("?");
            out.push(format!("the pod template mounts hostPath volume `{name}`"));
        }
    }
    for (list, what) in [
        ("initContainers", "init container"),
        ("containers", "container"),
        ("ephemeralContainers", "ephemeral container"),
    ] {
        for c in spec
            .get(list)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let name = c.get("name").and_then(Value::as_str).unwrap_or("?");
            let sc = c.get("securityContext");
            let flag = |f: &str| switched_on(sc.and_then(|s| s.get(f)));
            if flag("privileged").is_some() {
                out.push(format!("{what} `{name}` is privileged"));
            }
            if flag("allowPrivilegeEscalation").is_some() {
                out.push(format!("{what} `{name}` allows privilege escalation"));
            }
            match set(sc.and_then(|s| s.pointer("/capabilities/add"))) {
                None => {}
                Some(Value::Array(added)) if added.is_empty() => {}
                Some(Value::Array(added)) => {
                    let names: Vec<String> = added
                        .iter()
                        .map(|a| a.as_str().map_or_else(|| a.to_string(), str::to_string))
                        .collect();
                    out.push(format!(
                        "{what} `{name}` adds capabilities {}",
                        names.join(", ")
                    ));
                }
                Some(other) => out.push(format!("{what} `{name}` adds capabilities {other}")),
            }
            for p in c
                .get("ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                // Any value but none and 0 (`80`, `80.0`, `"80"`): the API
                // server's reading of a float or a string is not ours to
                // guess.
                if let Some(port) = set(p.get("hostPort")).filter(|v| v.as_f64() != Some(0.0)) {
                    out.push(format!("{what} `{name}` binds host port {port}"));
                }
            }
        }
    }
    // Both fields: the API server uses the deprecated serviceAccount when
    // serviceAccountName is empty or null, so each set value is checked.
    for field in ["serviceAccountName", "serviceAccount"] {
        match set(spec.get(field)) {
            None => {}
            // Empty is the namespace's `default`.
            Some(Value::String(sa)) if sa.is_empty() || known_account(sa) => {}
            Some(Value::String(sa)) => out.push(format!(
                "the pod template runs as ServiceAccount `{sa}` ({field}), which no workspace of this environment renders in its namespace (a ServiceAccount declared in resources/ does not count: it may already exist, made by someone else, and is then left alone)"
            )),
            Some(other) => out.push(format!(
                "the pod template's {field} is {other}, not the name of a ServiceAccount"
            )),
        }
    }
    out
}

/// The operator's side of the sync policy (flags, daemon config).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OperatorPolicy {
    pub force_conflicts: bool,
    /// The most one sync may prune without `--allow-mass-prune`, in percent.
    pub max_prune_percent: u8,
}

impl Default for OperatorPolicy {
    fn default() -> Self {
        OperatorPolicy {
            force_conflicts: false,
            max_prune_percent: crate::declare::model::DEFAULT_MAX_PRUNE_PERCENT,
        }
    }
}

/// The sync settings in force: the operator's, tightened by the repository.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EffectivePolicy {
    pub force_conflicts: bool,
    pub max_prune_percent: u8,
}

/// The repository's `syncPolicy` may only tighten the operator's settings.
pub fn effective_policy(
    operator: OperatorPolicy,
    repository: &SyncPolicy,
) -> Result<EffectivePolicy, Vec<Violation>> {
    let mut errors = Vec::new();
    let force_conflicts = match repository.force_conflicts {
        Some(true) if !operator.force_conflicts => {
            errors.push(Violation {
                subject: "spec.syncPolicy.forceConflicts".into(),
                source: None,
                message: "true loosens the operator's setting (false): the repository may only tighten it; remove it, or the operator runs with --force-conflicts".into(),
            });
            false
        }
        Some(repo) => repo && operator.force_conflicts,
        None => operator.force_conflicts,
    };
    let max_prune_percent = match repository.max_prune_percent {
        Some(p) if p > operator.max_prune_percent => {
            errors.push(Violation {
                subject: "spec.syncPolicy.maxPrunePercent".into(),
                source: None,
                message: format!(
                    "{p} loosens the operator's limit ({}): the repository may only lower it; lower it, or the operator raises --max-prune-percent",
                    operator.max_prune_percent
                ),
            });
            operator.max_prune_percent
        }
        Some(p) => p,
        None => operator.max_prune_percent,
    };
    if errors.is_empty() {
        Ok(EffectivePolicy {
            force_conflicts,
            max_prune_percent,
        })
    } else {
        Err(errors)
    }
}

/// The operator's settings of a run: guardrails and the sync ceiling.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Operator {
    pub guardrails: Guardrails,
    pub policy: OperatorPolicy,
}

/// Admits an environment's rendered objects and sync policy, or says every
/// rule they break. `template`: its `namespaceTemplate` as written.
pub fn admit(
    operator: &Operator,
    environment: &str,
    template: Option<&str>,
    sync_policy: &SyncPolicy,
    objects: &[Object],
) -> Result<EffectivePolicy, Vec<Violation>> {
    let mut violations = operator.guardrails.check(environment, template, objects);
    let policy = effective_policy(operator.policy, sync_policy);
    match policy {
        Ok(p) if violations.is_empty() => Ok(p),
        Ok(_) => Err(violations),
        Err(mut more) => {
            violations.append(&mut more);
            Err(violations)
        }
    }
}

/// Who owns a live object, seen from one environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Owner {
    /// Labelled as this environment's.
    ThisEnvironment,
    /// Labelled as another tenantsync environment's.
    OtherEnvironment(String),
    /// Not tenantsync's: the field managers that wrote it.
    Foreign(Vec<String>),
}

pub fn owner_of(live: &Value, environment: &str) -> Owner {
    let labels = live.pointer("/metadata/labels");
    let label = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
    match (label(MANAGED_BY), label(ENVIRONMENT_LABEL)) {
        (Some(MANAGER), Some(env)) if env == environment => Owner::ThisEnvironment,
        (Some(MANAGER), Some(env)) => Owner::OtherEnvironment(env.to_string()),
        _ => {
            let mut managers: Vec<String> = live
                .pointer("/metadata/managedFields")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|m| m.get("manager").and_then(Value::as_str))
                .map(str::to_string)
                .collect();
            managers.sort();
            managers.dedup();
            Owner::Foreign(managers)
        }
    }
}

fn managers_text(managers: &[String]) -> String {
    if managers.is_empty() {
        "no field manager recorded".to_string()
    } else {
        format!("field managers: {}", managers.join(", "))
    }
}

/// Never adopt: marks the plan's objects that exist without being this
/// environment's. `existing`: the live objects found under the names of the
/// plan's creates (`Cluster::find_existing` of the cluster edge). An object
/// is this environment's when it is labelled so and its inventory records
/// it (a sync records every object before creating it). Others are left
/// alone ([`Action::Unmanaged`]), unless `adopt` (the operator's `--adopt`)
/// takes over those no other environment owns ([`Action::Adopt`]).
pub fn settle_ownership(plan: &mut Plan, inventory: &Inventory, existing: &[Value], adopt: bool) {
    let environment = plan.environment.clone();
    let found: HashMap<ObjectKey<'_>, &Value> = existing
        .iter()
        .filter_map(|v| Some((live_key(v)?, v)))
        .collect();
    let inventoried = inventory.lookup();
    let take = |note: String| {
        if adopt {
            (Action::Adopt, format!("{note}; taken over (--adopt)"))
        } else {
            (
                Action::Unmanaged,
                format!("{note}; left alone: sync with --adopt to take it over"),
            )
        }
    };
    let mut foreign_namespaces: HashSet<String> = HashSet::new();
    let mut settled: Vec<(usize, Action, String)> = Vec::new();
    // Namespaces first: their children follow them.
    let mut order: Vec<usize> = (0..plan.changes.len()).collect();
    order.sort_by_key(|&i| &*plan.changes[i].kind != "Namespace");
    for i in order {
        let c = &plan.changes[i];
        let key = c.key();
        let decision = match c.action {
            Action::Create => match found.get(&key).map(|live| owner_of(live, &environment)) {
                Some(Owner::OtherEnvironment(other)) => Some((
                    Action::Unmanaged,
                    format!(
                        "exists and belongs to tenantsync environment `{other}`: never taken over; declare it in one environment only"
                    ),
                )),
                Some(Owner::ThisEnvironment) => Some(take(
                    "exists, labelled for this environment by hand (not in its inventory)".into(),
                )),
                Some(Owner::Foreign(managers)) => Some(take(format!(
                    "exists and was not created by tenantsync ({})",
                    managers_text(&managers)
                ))),
                None => c
                    .namespace
                    .as_deref()
                    .filter(|ns| foreign_namespaces.contains(*ns))
                    .map(|ns| {
                        (
                            Action::Unmanaged,
                            format!("its namespace `{ns}` exists and is not tenantsync's"),
                        )
                    }),
            },
            Action::Update | Action::Unchanged
                if !inventoried.contains(&ObjectRef {
                    api_version: c.api_version.clone(),
                    kind: c.kind.clone(),
                    namespace: c.namespace.clone(),
                    name: c.name.clone(),
                }) =>
            {
                Some(take(format!(
                    "labelled for environment `{environment}` but not in its inventory: tenantsync did not create it (or the inventory was lost)"
                )))
            }
            _ => None,
        };
        if let Some((action, note)) = decision {
            if &*c.kind == "Namespace" && action == Action::Unmanaged {
                foreign_namespaces.insert(c.name.to_string());
            }
            settled.push((i, action, note));
        }
    }
    for (i, action, note) in settled {
        let c = &mut plan.changes[i];
        c.action = action;
        c.note = Some(note);
        if action == Action::Unmanaged {
            c.fields.clear();
            c.diff.clear();
        }
    }
    plan.summary = Summary::of(&plan.changes);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(kind: &str, ns: Option<&str>, name: &str, ws: &str, body: Value) -> Object {
        let mut body = body;
        body["apiVersion"] = "v1".into();
        body["kind"] = kind.into();
        body["metadata"]["name"] = name.into();
        if let Some(ns) = ns {
            body["metadata"]["namespace"] = ns.into();
        }
        let mut o = Object::from_value(ws, &body).unwrap();
        o.workspace = ws.into();
        o
    }

    fn workspace(ws: &str, ns: &str) -> Vec<Object> {
        vec![
            object("Namespace", None, ns, ws, serde_json::json!({})),
            object(
                "ServiceAccount",
                Some(ns),
                "fhir",
                ws,
                serde_json::json!({}),
            ),
        ]
    }

    fn subjects(v: &[Violation]) -> Vec<&str> {
        v.iter().map(|v| v.subject.as_str()).collect()
    }

    #[test]
    fn patterns_match_with_stars_and_the_environment() {
        assert!(matches("shared-{environment}", "qa", "shared-qa"));
        assert!(!matches("shared-{environment}", "qa", "shared-prod"));
        assert!(matches("mon*", "qa", "monitoring"));
        assert!(matches("*-qa", "qa", "x-qa"));
        assert!(matches("a*b*c", "qa", "a-b-c"));
        assert!(!matches("a*b*c", "qa", "a-c"));
        assert!(!matches("ab*ba", "qa", "aba"));
        assert!(matches("*", "qa", "anything"));
    }

    #[test]
    fn workspace_namespaces_pass_and_reserved_ones_never_do() {
        let g = Guardrails::default();
        let ok = workspace("contoso", "contoso-qa");
        assert_eq!(g.check("qa", None, &ok), vec![]);
        for ns in ["kube-system", "default", "tenantsync-system"] {
            let v = g.check("qa", Some("{workspace}"), &workspace(ns, ns));
            assert!(
                v.iter()
                    .any(|v| v.message.contains("reserved namespace") && v.subject.contains(ns)),
                "{v:?}"
            );
            // Not even an operator pattern opens a reserved namespace.
            let open = Guardrails {
                allowed_namespaces: vec!["*".into()],
                allow_shared_namespace_template: true,
                ..Guardrails::default()
            };
            assert!(
                !open
                    .check("qa", Some("{workspace}"), &workspace(ns, ns))
                    .is_empty()
            );
        }
    }

    #[test]
    fn a_template_without_the_environment_is_refused_unless_allowed() {
        let g = Guardrails::default();
        let v = g.check("dev", Some("{workspace}-prod"), &workspace("a", "a-prod"));
        assert_eq!(subjects(&v), vec!["spec.namespaceTemplate"]);
        let allowed = Guardrails {
            allow_shared_namespace_template: true,
            ..Guardrails::default()
        };
        assert!(
            allowed
                .check("dev", Some("{workspace}-prod"), &workspace("a", "a-prod"))
                .is_empty()
        );
    }

    #[test]
    fn resources_outside_the_environment_and_cluster_kinds_and_rbac_are_refused() {
        let g = Guardrails::default();
        let mut objects = workspace("contoso", "contoso-qa");
        objects.push(object(
            "ConfigMap",
            Some("contoso-qa"),
            "ok",
            "",
            serde_json::json!({}),
        ));
        objects.push(object(
            "ConfigMap",
            Some("payments"),
            "x",
            "",
            serde_json::json!({}),
        ));
        objects.push(object(
            "ConfigMap",
            Some("tenantsync-system"),
            "inventory-prod",
            "",
            serde_json::json!({}),
        ));
        objects.push(object(
            "ClusterRoleBinding",
            None,
            "own",
            "",
            serde_json::json!({}),
        ));
        objects.push(object(
            "RoleBinding",
            Some("contoso-qa"),
            "rb",
            "",
            serde_json::json!({}),
        ));
        let v = g.check("qa", None, &objects);
        assert_eq!(
            subjects(&v),
            vec![
                "ClusterRoleBinding/own",
                "ConfigMap/payments/x",
                "ConfigMap/tenantsync-system/inventory-prod",
                "RoleBinding/contoso-qa/rb",
            ],
            "{v:#?}"
        );
        let allowed = Guardrails {
            allowed_namespaces: vec!["pay*".into()],
            allowed_kinds: vec!["ClusterRoleBinding".into(), "RoleBinding".into()],
            ..Guardrails::default()
        };
        assert_eq!(
            subjects(&allowed.check("qa", None, &objects)),
            vec!["ConfigMap/tenantsync-system/inventory-prod"]
        );
    }

    #[test]
    fn unsafe_pod_templates_in_resources_are_refused() {
        let g = Guardrails::default();
        let mut objects = workspace("contoso", "contoso-qa");
        let backdoor = serde_json::json!({"spec": {"template": {"spec": {
            "serviceAccountName": "cluster-admin-sa",
            "hostPID": true,
            "volumes": [{"name": "root", "hostPath": {"path": "/"}}],
            "containers": [{"name": "c", "securityContext": {"privileged": true}}]
        }}}});
        objects.push(object("Deployment", Some("contoso-qa"), "bd", "", backdoor));
        let fine = serde_json::json!({"spec": {"template": {"spec": {
            "serviceAccountName": "fhir",
            "containers": [{"name": "c", "securityContext": {"allowPrivilegeEscalation": false}}]
        }}}});
        objects.push(object("Deployment", Some("contoso-qa"), "fine", "", fine));
        let v = g.check("qa", None, &objects);
        let messages: Vec<&str> = v.iter().map(|v| v.message.as_str()).collect();
        assert_eq!(v.len(), 4, "{messages:#?}");
        assert!(v.iter().all(|v| v.subject == "Deployment/contoso-qa/bd"));
        for needle in [
            "hostPID",
            "hostPath volume `root`",
            "`c` is privileged",
            "`cluster-admin-sa`",
        ] {
            assert!(
                messages.iter().any(|m| m.contains(needle)),
                "{needle}: {messages:#?}"
            );
        }
        let allowed = Guardrails {
            allow_privileged_pods: true,
            ..Guardrails::default()
        };
        assert!(allowed.check("qa", None, &objects).is_empty());
    }

    /// The messages of the violations of one resources/ Deployment in
    /// contoso-qa whose pod spec is `spec`, with the workspace's own
    /// ServiceAccount `fhir` and `extra` objects beside it.
    fn pod_messages(spec: Value, extra: Vec<Object>) -> Vec<String> {
        let mut objects = workspace("contoso", "contoso-qa");
        objects.extend(extra);
        let body = serde_json::json!({"spec": {"template": {"spec": spec}}});
        objects.push(object("Deployment", Some("contoso-qa"), "d", "", body));
        Guardrails::default()
            .check("qa", None, &objects)
            .into_iter()
            .map(|v| v.message)
            .collect()
    }

    #[test]
    fn a_null_service_account_name_does_not_hide_the_deprecated_service_account() {
        let m = pod_messages(
            serde_json::json!({"serviceAccountName": null, "serviceAccount": "cluster-admin-sa",
                "containers": [{"name": "c"}]}),
            vec![],
        );
        assert_eq!(m.len(), 1, "{m:#?}");
        assert!(
            m[0].contains("`cluster-admin-sa` (serviceAccount)"),
            "{m:#?}"
        );
        // Both fields set: each is checked.
        let m = pod_messages(
            serde_json::json!({"serviceAccountName": "fhir", "serviceAccount": "cluster-admin-sa",
                "containers": [{"name": "c"}]}),
            vec![],
        );
        assert_eq!(m.len(), 1, "{m:#?}");
        // A value that is not a name counts against the manifest.
        let m = pod_messages(
            serde_json::json!({"serviceAccountName": ["x"], "containers": [{"name": "c"}]}),
            vec![],
        );
        assert!(
            m.iter()
                .any(|m| m.contains("serviceAccountName is [\"x\"]")),
            "{m:#?}"
        );
        // The workspace's own, `default` and an empty name (the default) pass.
        for sa in ["fhir", "default", ""] {
            let m = pod_messages(
                serde_json::json!({"serviceAccountName": sa, "serviceAccount": null,
                    "containers": [{"name": "c"}]}),
                vec![],
            );
            assert!(m.is_empty(), "{sa}: {m:#?}");
        }
    }

    #[test]
    fn a_service_account_declared_in_resources_does_not_count_as_rendered() {
        // Declared beside the Deployment, it would be `exists, not managed`
        // (and not applied) if someone else's already had that name.
        let declared = object(
            "ServiceAccount",
            Some("contoso-qa"),
            "payments-admin",
            "",
            serde_json::json!({}),
        );
        let m = pod_messages(
            serde_json::json!({"serviceAccountName": "payments-admin", "containers": [{"name": "c"}]}),
            vec![declared],
        );
        assert_eq!(m.len(), 1, "{m:#?}");
        assert!(
            m[0].contains("`payments-admin`") && m[0].contains("resources/ does not count"),
            "{m:#?}"
        );
    }

    #[test]
    fn a_host_port_given_as_a_float_or_a_string_is_refused() {
        for port in [
            serde_json::json!(80),
            serde_json::json!(80.0),
            serde_json::json!("80"),
            serde_json::json!("0"),
            serde_json::json!({"x": 1}),
        ] {
            let m = pod_messages(
                serde_json::json!({"containers": [{"name": "c", "ports": [{"containerPort": 8080, "hostPort": port}]}]}),
                vec![],
            );
            assert_eq!(m.len(), 1, "{port}: {m:#?}");
            assert!(m[0].contains("container `c` binds host port"), "{m:#?}");
        }
        for port in [serde_json::json!(0), serde_json::json!(0.0), Value::Null] {
            let m = pod_messages(
                serde_json::json!({"containers": [{"name": "c", "ports": [{"containerPort": 8080, "hostPort": port}]}]}),
                vec![],
            );
            assert!(m.is_empty(), "{port}: {m:#?}");
        }
    }

    #[test]
    fn switches_that_are_not_plain_false_count_as_on() {
        let m = pod_messages(
            serde_json::json!({"hostNetwork": "true", "hostPID": false, "hostIPC": null,
                "containers": [{"name": "c", "securityContext": {"privileged": 1,
                    "allowPrivilegeEscalation": false, "capabilities": {"add": "SYS_ADMIN"}}}]}),
            vec![],
        );
        assert_eq!(m.len(), 3, "{m:#?}");
        for needle in [
            "hostNetwork: \"true\"",
            "`c` is privileged",
            "adds capabilities \"SYS_ADMIN\"",
        ] {
            assert!(m.iter().any(|m| m.contains(needle)), "{needle}: {m:#?}");
        }
    }

    #[test]
    fn init_and_ephemeral_containers_and_every_pod_template_are_checked() {
        let bad = serde_json::json!({
            "initContainers": [{"name": "init", "securityContext": {"privileged": true}}],
            "ephemeralContainers": [{"name": "debug", "securityContext": {"capabilities": {"add": ["SYS_PTRACE"]}}}],
            "containers": [{"name": "c"}]
        });
        let m = pod_messages(bad.clone(), vec![]);
        assert_eq!(m.len(), 2, "{m:#?}");
        assert!(
            m.iter()
                .any(|m| m.contains("init container `init` is privileged")),
            "{m:#?}"
        );
        assert!(
            m.iter()
                .any(|m| m.contains("ephemeral container `debug` adds capabilities SYS_PTRACE")),
            "{m:#?}"
        );
        // A Pod's own spec, a CronJob's job template, and any kind with
        // spec.template.spec (a ReplicationController, a custom kind).
        let g = Guardrails::default();
        for (kind, body) in [
            ("Pod", serde_json::json!({"spec": bad})),
            (
                "CronJob",
                serde_json::json!({"spec": {"jobTemplate": {"spec": {"template": {"spec": bad}}}}}),
            ),
            (
                "ReplicationController",
                serde_json::json!({"spec": {"template": {"spec": bad}}}),
            ),
            (
                "Rollout",
                serde_json::json!({"spec": {"template": {"spec": bad}}}),
            ),
        ] {
            let mut objects = workspace("contoso", "contoso-qa");
            objects.push(object(kind, Some("contoso-qa"), "x", "", body));
            assert_eq!(g.check("qa", None, &objects).len(), 2, "{kind}");
        }
    }

    #[test]
    fn a_cluster_scoped_kind_unknown_to_the_static_list_is_judged_by_discovery() {
        let widget = |ns: Option<&str>| {
            let mut o = object("ClusterWidget", ns, "shared", "", serde_json::json!({}));
            o.api_version = "example.com/v1".into();
            o
        };
        let mut objects = workspace("contoso", "contoso-qa");
        objects.push(widget(Some("contoso-qa")));
        // Offline, a namespaced-looking manifest passes...
        let g = Guardrails::default();
        assert_eq!(g.check("qa", None, &objects), vec![]);
        // ...the cluster serves the kind cluster-scoped: refused, even with
        // --allow-kind (its namespace is what is wrong).
        let cluster_scoped = |_: &str, kind: &str| (kind == "ClusterWidget").then_some(false);
        let allowed = Guardrails {
            allowed_kinds: vec!["ClusterWidget".into()],
            ..Guardrails::default()
        };
        for g in [&g, &allowed] {
            let v = g.check_scopes(&objects, cluster_scoped);
            assert_eq!(subjects(&v), ["ClusterWidget/contoso-qa/shared"]);
            assert!(
                v[0].message.contains("serves as cluster-scoped")
                    && v[0].message.contains("remove metadata.namespace")
                    && v[0].message.contains("--allow-kind ClusterWidget"),
                "{v:#?}"
            );
        }
        // Without a namespace it needs --allow-kind like any cluster-scoped
        // kind, and then passes.
        let mut objects = workspace("contoso", "contoso-qa");
        objects.push(widget(None));
        assert_eq!(
            subjects(&g.check("qa", None, &objects)),
            ["ClusterWidget/shared"]
        );
        assert_eq!(g.check_scopes(&objects, cluster_scoped), vec![]);
        assert_eq!(allowed.check("qa", None, &objects), vec![]);
        assert_eq!(allowed.check_scopes(&objects, cluster_scoped), vec![]);
        // A namespaced kind allowed without a namespace: refused too.
        let namespaced = |_: &str, _: &str| Some(true);
        let v = allowed.check_scopes(&objects, namespaced);
        assert!(v[0].message.contains("serves as namespaced"), "{v:#?}");
        // Unknown to the cluster: left to the API server (and apply's own
        // scope check).
        assert_eq!(allowed.check_scopes(&objects, |_, _| None), vec![]);
    }

    #[test]
    fn a_crd_among_the_objects_gives_its_kinds_scope() {
        let crd = serde_json::json!({"spec": {"group": "example.com", "scope": "Cluster",
            "names": {"kind": "ClusterWidget", "plural": "clusterwidgets"},
            "versions": [{"name": "v1"}, {"name": "v2"}]}});
        let mut crd = object(
            "CustomResourceDefinition",
            None,
            "clusterwidgets.example.com",
            "",
            crd,
        );
        crd.api_version = "apiextensions.k8s.io/v1".into();
        let scopes = crd_scopes(&[crd]);
        assert_eq!(
            scopes.into_iter().collect::<Vec<_>>(),
            [
                (("example.com/v1".into(), "ClusterWidget".into()), false),
                (("example.com/v2".into(), "ClusterWidget".into()), false),
            ]
        );
    }

    #[test]
    fn two_environments_rendering_one_namespace_are_reported_across_environments() {
        // {workspace}-{environment}: contoso-eu of qa, contoso of eu-qa.
        let qa = workspace("contoso-eu", "contoso-eu-qa");
        let eu_qa = workspace("contoso", "contoso-eu-qa");
        let other = workspace("fabrikam", "fabrikam-eu-qa");
        let g = Guardrails::default();
        let clashes =
            g.shared_namespaces(&[("qa", &qa), ("eu-qa", &[eu_qa.clone(), other].concat())]);
        assert_eq!(clashes.len(), 1, "{clashes:#?}");
        let (environment, v) = &clashes[0];
        assert_eq!(environment, "qa");
        assert_eq!(v.subject, "Namespace/contoso-eu-qa");
        assert!(
            v.message
                .contains("workspace `contoso-eu` of environment `qa`")
                && v.message
                    .contains("workspace `contoso` of environment `eu-qa`"),
            "{}",
            v.message
        );
        // One environment alone never clashes with itself here (validate
        // checks its own workspaces), nor do environments the operator
        // keeps on clusters of their own.
        assert!(g.shared_namespaces(&[("eu-qa", &eu_qa)]).is_empty());
        let apart = Guardrails {
            allow_shared_namespace_template: true,
            ..Guardrails::default()
        };
        assert!(
            apart
                .shared_namespaces(&[("qa", &qa), ("eu-qa", &eu_qa)])
                .is_empty()
        );
    }

    #[test]
    fn the_repository_only_tightens_the_operators_sync_policy() {
        let op = OperatorPolicy::default();
        let repo = |force: Option<bool>, max: Option<u8>| SyncPolicy {
            force_conflicts: force,
            max_prune_percent: max,
            ..SyncPolicy::default()
        };
        assert_eq!(
            effective_policy(op, &repo(None, None)),
            Ok(EffectivePolicy {
                force_conflicts: false,
                max_prune_percent: 25
            })
        );
        assert_eq!(
            effective_policy(op, &repo(Some(false), Some(10))),
            Ok(EffectivePolicy {
                force_conflicts: false,
                max_prune_percent: 10
            })
        );
        let e = effective_policy(op, &repo(Some(true), Some(90))).unwrap_err();
        assert_eq!(
            subjects(&e),
            vec![
                "spec.syncPolicy.forceConflicts",
                "spec.syncPolicy.maxPrunePercent"
            ]
        );
        let forcing = OperatorPolicy {
            force_conflicts: true,
            max_prune_percent: 50,
        };
        assert_eq!(
            effective_policy(forcing, &repo(Some(false), None)),
            Ok(EffectivePolicy {
                force_conflicts: false,
                max_prune_percent: 50
            })
        );
        assert_eq!(
            effective_policy(forcing, &repo(None, Some(50))),
            Ok(EffectivePolicy {
                force_conflicts: true,
                max_prune_percent: 50
            })
        );
    }

    fn change(action: Action, kind: &str, ns: Option<&str>, name: &str) -> crate::plan::Change {
        crate::plan::Change {
            action,
            api_version: "v1".into(),
            kind: kind.into(),
            namespace: ns.map(Into::into),
            name: name.into(),
            workspace: "contoso".into(),
            fields: Vec::new(),
            diff: "+ something".into(),
            note: None,
            heal: None,
            live: None,
        }
    }

    fn plan(changes: Vec<crate::plan::Change>) -> Plan {
        Plan {
            format_version: crate::plan::PLAN_FORMAT_VERSION,
            environment: "qa".into(),
            revision: None,
            summary: Summary::of(&changes),
            changes,
            api_requests: 0,
        }
    }

    fn live(kind: &str, ns: Option<&str>, name: &str, labels: Value) -> Value {
        let mut v = serde_json::json!({"apiVersion": "v1", "kind": kind, "metadata": {
            "name": name, "labels": labels,
            "managedFields": [{"manager": "kubectl-create", "operation": "Update"}]}});
        if let Some(ns) = ns {
            v["metadata"]["namespace"] = ns.into();
        }
        v
    }

    fn actions(p: &Plan) -> Vec<(String, Action)> {
        p.changes.iter().map(|c| (c.id(), c.action)).collect()
    }

    #[test]
    fn an_existing_object_nobody_gave_us_is_never_adopted_unless_asked() {
        let changes = || {
            vec![
                change(Action::Create, "ConfigMap", Some("contoso-qa"), "legacy"),
                change(Action::Create, "ConfigMap", Some("contoso-qa"), "fresh"),
            ]
        };
        let found = [live(
            "ConfigMap",
            Some("contoso-qa"),
            "legacy",
            serde_json::json!({}),
        )];
        let inventory = Inventory::new("qa");
        let mut p = plan(changes());
        settle_ownership(&mut p, &inventory, &found, false);
        assert_eq!(
            actions(&p),
            vec![
                ("ConfigMap/contoso-qa/legacy".into(), Action::Unmanaged),
                ("ConfigMap/contoso-qa/fresh".into(), Action::Create),
            ]
        );
        let note = p.changes[0].note.as_deref().unwrap();
        assert!(
            note.contains("not created by tenantsync") && note.contains("kubectl-create"),
            "{note}"
        );
        assert!(note.contains("--adopt"), "{note}");
        assert!(p.changes[0].diff.is_empty());
        assert_eq!((p.summary.unmanaged, p.summary.create), (1, 1));
        assert!(p.summary.has_changes());

        let mut p = plan(changes());
        settle_ownership(&mut p, &inventory, &found, true);
        assert_eq!(p.changes[0].action, Action::Adopt);
        assert!(p.changes[0].is_apply());
        assert_eq!(p.summary.adopt, 1);
    }

    #[test]
    fn another_environments_object_is_never_taken_even_with_adopt() {
        let found = [live(
            "ConfigMap",
            Some("contoso-prod"),
            "x",
            serde_json::json!({MANAGED_BY: MANAGER, ENVIRONMENT_LABEL: "prod"}),
        )];
        for adopt in [false, true] {
            let mut p = plan(vec![change(
                Action::Create,
                "ConfigMap",
                Some("contoso-prod"),
                "x",
            )]);
            settle_ownership(&mut p, &Inventory::new("qa"), &found, adopt);
            assert_eq!(p.changes[0].action, Action::Unmanaged);
            assert!(
                p.changes[0]
                    .note
                    .as_deref()
                    .unwrap()
                    .contains("environment `prod`")
            );
        }
    }

    #[test]
    fn children_of_a_namespace_we_did_not_create_are_left_alone() {
        let mut p = plan(vec![
            change(Action::Create, "ConfigMap", Some("payments"), "a"),
            change(Action::Create, "Namespace", None, "payments"),
        ]);
        let found = [live("Namespace", None, "payments", serde_json::json!({}))];
        settle_ownership(&mut p, &Inventory::new("qa"), &found, false);
        assert_eq!(
            actions(&p),
            vec![
                ("ConfigMap/payments/a".into(), Action::Unmanaged),
                ("Namespace/payments".into(), Action::Unmanaged),
            ]
        );
        assert!(
            p.changes[0]
                .note
                .as_deref()
                .unwrap()
                .contains("namespace `payments`")
        );
    }

    #[test]
    fn labelled_objects_count_as_ours_only_when_the_inventory_records_them() {
        let mut inventory = Inventory::new("qa");
        let recorded = change(Action::Update, "ConfigMap", Some("contoso-qa"), "recorded");
        inventory.objects.insert(crate::sync::inventory::ObjectRef {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            namespace: Some("contoso-qa".into()),
            name: "recorded".into(),
        });
        let mut p = plan(vec![
            recorded,
            change(
                Action::Unchanged,
                "ConfigMap",
                Some("contoso-qa"),
                "by-hand",
            ),
        ]);
        settle_ownership(&mut p, &inventory, &[], false);
        assert_eq!(
            actions(&p),
            vec![
                ("ConfigMap/contoso-qa/recorded".into(), Action::Update),
                ("ConfigMap/contoso-qa/by-hand".into(), Action::Unmanaged),
            ]
        );
    }
}
