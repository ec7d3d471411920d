//! The cluster edge: connecting with the usual kubeconfig conventions and
//! discovery (here), then one file per verb on [`Cluster`]:
//!
//! | file | verb |
//! |---|---|
//! | `list` | list the live objects tenantsync manages, a page at a time |
//! | `apply` | server-side apply, taking hand-edited fields over first |
//! | `delete` | delete an object, wait until it is gone |
//! | `wait` | wait for health, for a CRD to be Established |
//! | `inventory` | read and write the inventory ConfigMap and its status |
//! | `events` | record a Kubernetes Event |
//! | `approval` | a manual environment's pending revision and approval |
//! | `lock` | the environment's lock (one writer at a time) |
//! | `foreign` | what a namespace holds that tenantsync did not make |
//! | `ownership` | the objects that exist under the names a plan would create |
//! | `scope` | the guardrails that need discovery (a kind's scope) |
//! | `execute` | a sync: its stages, prune and inventory writes, in order |
//!
//! Imports: the core (`object`, `plan`, `sync`) only; never `source`,
//! `pipeline`, `daemon` or `cli`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use std::collections::HashMap;
use std::sync::Mutex;

use kube::api::{ApiResource, GroupVersionKind};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::discovery::Scope;
use kube::{Client, Config};

use crate::object::{self, ManagedKind};

pub mod apply;
pub mod approval;
mod delete;
mod events;
pub mod execute;
pub mod foreign;
pub mod inventory;
mod list;
pub use list::MAX_NAMESPACES_LISTED_APART;
pub mod lock;
mod ownership;
mod scope;
pub mod throttle;
pub mod wait;
pub mod watch;

/// How to reach the cluster: kubeconfig file and context, or in-cluster.
#[derive(Clone, Debug, Default)]
pub struct ClusterOptions {
    /// A kubeconfig file; else `KUBECONFIG`, `~/.kube/config`, or in-cluster.
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
    /// The most writes kept in flight: the window starts at
    /// [`throttle::START_IN_FLIGHT`] (or this, when less) and grows up to
    /// it while answers stay fast; [`throttle::MAX_IN_FLIGHT`] when unset.
    pub max_writes_in_flight: Option<usize>,
}

/// Connect and request timeouts: an unreachable API server fails fast.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// The User-Agent of every request to the API server.
pub const USER_AGENT: &str = concat!("tenantsync/", env!("CARGO_PKG_VERSION"));
/// Page size of LIST requests. Large, so that an environment's objects of
/// one kind take one request up to thousands of workspaces: a page is read
/// an item at a time (`list`), so it costs little more memory than its text.
pub const PAGE_SIZE: u32 = 3000;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot load kubeconfig {path}: {reason}")]
    Kubeconfig { path: String, reason: String },
    #[error("{at}: invalid kubeconfig YAML: {message}")]
    KubeconfigYaml { at: String, message: String },
    #[error(
        "no cluster configured: no kubeconfig (KUBECONFIG, --kubeconfig, ~/.kube/config) and not running in a pod"
    )]
    Infer,
    #[error("cannot create a client for {server}")]
    Client {
        server: String,
        #[source]
        source: kube::Error,
    },
    #[error("permission denied by {server}: cannot {verb} {resource}: {message}")]
    Forbidden {
        server: String,
        verb: String,
        resource: String,
        message: String,
    },
    #[error("the API server at {server} refused to {verb} {resource}: {message} ({code})")]
    Api {
        server: String,
        verb: String,
        resource: String,
        message: String,
        code: u16,
    },
    #[error("cannot reach the Kubernetes API server at {server}: {reason}")]
    Unreachable { server: String, reason: String },
    /// A write not sent: this writer no longer holds the environment (its
    /// lock or Lease), checked before each attempt.
    #[error(
        "not sent: this writer no longer holds the environment (its lock or Lease was taken by another writer or handed over to another replica, or could not be renewed in time)"
    )]
    Fenced,
    /// A saved plan's precondition failed on a delete.
    #[error(
        "{object}: changed since the plan was made (it is no longer at resourceVersion {resource_version}), so it was not deleted; make a new plan"
    )]
    Stale {
        object: String,
        resource_version: String,
    },
    /// A recreate's delete found another object under the planned one's
    /// name (its `uid` changed since the plan listed it).
    #[error(
        "{object}: replaced by another object since it was listed, so it was not deleted to be recreated; run the sync again to plan against the new object"
    )]
    Replaced { object: String },
    /// A kind the API server does not serve (not in its discovery).
    #[error(
        "cannot {verb} {resource}: the API server at {server} does not serve this kind{consequence}"
    )]
    NotServed {
        server: String,
        verb: String,
        resource: String,
        /// What follows for the caller, said after the fact.
        consequence: String,
    },
    /// What the API server sent (or was to be sent) cannot be read or
    /// built: a request, a response, a stored inventory. Not a refusal.
    #[error("cannot {verb} {resource} on {server}: {reason}")]
    Unreadable {
        server: String,
        verb: String,
        resource: String,
        reason: String,
    },
    /// An inventory that cannot be encoded for writing.
    #[error("cannot encode the inventory of environment {environment}: {reason}")]
    Encode { environment: String, reason: String },
    /// The inventory kept changing under a write: another writer is active.
    #[error(
        "cannot write {resource} on {server}: the inventory kept changing under this write ({attempts} attempts); another writer is active"
    )]
    Contended {
        server: String,
        resource: String,
        attempts: usize,
    },
    #[error(
        "the inventory of environment {environment} was not written: this writer no longer holds the environment (its lock or Lease was taken by another writer or handed over to another replica, or could not be renewed in time); it still records every object this writer may have written, and the next sync records the rest"
    )]
    NotHeld { environment: String },
    #[error(
        "the API server at {server} refused the credentials of {user} (401 Unauthorized): the token or certificate is invalid or expired; renew them (or pick another --context)"
    )]
    Unauthorized { server: String, user: String },
    /// An object whose namespace disagrees with the scope the API server
    /// gives its kind ([`scope_check`]).
    #[error("{object}: {reason}")]
    Scope { object: String, reason: String },
}

impl ClusterError {
    /// A failure to talk to the API server at all (connect, reset, no
    /// answer), as opposed to an answer refusing something.
    pub fn is_transport(&self) -> bool {
        matches!(self, ClusterError::Unreachable { .. })
    }

    /// The API server kept answering 429 Too Many Requests (after the
    /// retries [`throttle`] makes): busy rather than refusing.
    pub fn is_busy(&self) -> bool {
        matches!(self, ClusterError::Api { code: 429, .. })
    }

    /// A 403 for want of a permission (RBAC), not one about this object
    /// (the API server also answers 403 to a write into a namespace being
    /// deleted).
    pub fn is_permission(&self) -> bool {
        matches!(self, ClusterError::Forbidden { message, .. } if !message.contains("being terminated"))
    }
}

/// A kubeconfig error, once (kube's errors repeat their source in their own
/// text), with the file and line of a YAML error.
fn kubeconfig_error(path: &str, e: &kube::config::KubeconfigError) -> ClusterError {
    if let kube::config::KubeconfigError::Parse(yaml) = e {
        let text = yaml.to_string();
        // Only the message: its caret snippet names no file, and its
        // `error: line L column C:` prefix is said as FILE:LINE:COL.
        let mut message = text.lines().next().unwrap_or("").trim();
        message = message.strip_prefix("error: ").unwrap_or(message);
        if message.starts_with("line ")
            && let Some((_, rest)) = message.split_once(": ")
        {
            message = rest;
        }
        let at = match yaml.location() {
            Some(l) => format!("{path}:{}:{}", l.line(), l.column()),
            None => path.to_string(),
        };
        return ClusterError::KubeconfigYaml {
            at,
            message: message.into(),
        };
    }
    if let kube::config::KubeconfigError::ReadConfig(io, _) = e {
        return ClusterError::Kubeconfig {
            path: path.into(),
            reason: io.to_string(),
        };
    }
    // `failed to X: <source>` already holds its source: said once.
    let mut reason = error_chain(e);
    if reason.is_empty() {
        reason = "unknown error".into();
    }
    ClusterError::Kubeconfig {
        path: path.into(),
        reason,
    }
}

/// The kubeconfig files read without `--kubeconfig` (each of `KUBECONFIG`,
/// else `~/.kube/config`), checked one by one so that a broken one is named
/// (kube's own loading says only that none could be used).
fn check_default_kubeconfigs() -> Result<(), ClusterError> {
    let paths: Vec<PathBuf> = match std::env::var_os("KUBECONFIG") {
        Some(list) if !list.is_empty() => std::env::split_paths(&list).collect(),
        _ => std::env::var_os("HOME")
            .map(|home| vec![PathBuf::from(home).join(".kube/config")])
            .unwrap_or_default(),
    };
    for path in paths.iter().filter(|p| p.is_file()) {
        Kubeconfig::read_from(path)
            .map_err(|e| kubeconfig_error(&path.display().to_string(), &e))?;
    }
    Ok(())
}

/// `user U (context C)` of a kubeconfig, for messages.
fn user_of(kubeconfig: Option<&Kubeconfig>, context: Option<&str>) -> String {
    let Some(kc) = kubeconfig else {
        return "this pod's service account".into();
    };
    let context = context
        .map(str::to_string)
        .or_else(|| kc.current_context.clone())
        .unwrap_or_default();
    let user = kc
        .contexts
        .iter()
        .find(|c| c.name == context)
        .and_then(|c| c.context.as_ref())
        .and_then(|c| c.user.clone())
        .unwrap_or_else(|| "?".into());
    format!("user {user} (context {context})")
}

/// A connection to one cluster, counting the requests it makes.
pub struct Cluster {
    client: Client,
    /// The same credentials for long-lived WATCH requests (`watch`): a read
    /// timeout longer than a quiet watch lasts.
    watch_client: Client,
    server: String,
    requests: AtomicU32,
    writes: AtomicU32,
    /// Kinds found by discovery (those outside [`object::MANAGED_KINDS`]).
    discovered: Mutex<HashMap<(String, String), (ApiResource, bool)>>,
    /// `user U (context C)`, for a refused credential's message.
    user: String,
    /// How many writes to keep in flight, and what the 429s said.
    throttle: std::sync::Arc<throttle::Throttle>,
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

impl Cluster {
    pub async fn connect(options: &ClusterOptions) -> Result<Cluster, ClusterError> {
        let kube_options = KubeConfigOptions {
            context: options.context.clone(),
            ..KubeConfigOptions::default()
        };
        let (mut config, user) = match (&options.kubeconfig, &options.context) {
            (Some(path), _) => {
                let shown = path.display().to_string();
                let file = Kubeconfig::read_from(path).map_err(|e| kubeconfig_error(&shown, &e))?;
                let user = user_of(Some(&file), options.context.as_deref());
                let config = Config::from_custom_kubeconfig(file, &kube_options)
                    .await
                    .map_err(|e| kubeconfig_error(&shown, &e))?;
                (config, user)
            }
            (None, Some(_)) => {
                check_default_kubeconfigs()?;
                let shown = "from KUBECONFIG or ~/.kube/config";
                let file = Kubeconfig::read().ok();
                let config = Config::from_kubeconfig(&kube_options)
                    .await
                    .map_err(|e| kubeconfig_error(shown, &e))?;
                (config, user_of(file.as_ref(), options.context.as_deref()))
            }
            (None, None) => {
                check_default_kubeconfigs()?;
                let config = Config::infer().await.map_err(|_| ClusterError::Infer)?;
                let file = Kubeconfig::read().ok();
                (config, user_of(file.as_ref(), None))
            }
        };
        config.connect_timeout = Some(CONNECT_TIMEOUT);
        // Named in the API server's audit log and metrics (kube-rs sends none).
        config.headers.push((
            hyper::header::USER_AGENT,
            hyper::header::HeaderValue::from_static(USER_AGENT),
        ));
        let mut watch_config = config.clone();
        watch_config.read_timeout = Some(watch::WATCH_READ_TIMEOUT);
        config.read_timeout = Some(READ_TIMEOUT);
        // 429s are sent again by this client's own layers (throttle.rs):
        // kube's default would wait any Retry-After, up to 15 times, unseen
        // by the write window and past the lock's checks.
        config.default_retry = false;
        let server = config
            .cluster_url
            .to_string()
            .trim_end_matches('/')
            .to_string();
        let throttle = std::sync::Arc::new(throttle::Throttle::with_max(
            options
                .max_writes_in_flight
                .unwrap_or(throttle::MAX_IN_FLIGHT),
        ));
        let client = kube::client::ClientBuilder::try_from(config)
            .map_err(|source| ClusterError::Client {
                server: server.clone(),
                source,
            })?
            .with_layer(&throttle.layer())
            // tower's Retry needs a service it can clone.
            .with_layer(&tower::buffer::BufferLayer::new(1024))
            .with_layer(&tower::retry::RetryLayer::new(throttle::Resend::new(
                throttle.clone(),
            )))
            .build();
        let watch_client =
            Client::try_from(watch_config).map_err(|source| ClusterError::Client {
                server: server.clone(),
                source,
            })?;
        Ok(Cluster {
            client,
            watch_client,
            server,
            requests: AtomicU32::new(0),
            writes: AtomicU32::new(0),
            discovered: Mutex::new(HashMap::new()),
            user,
            throttle,
        })
    }

    pub fn server(&self) -> &str {
        &self.server
    }

    /// How many writes to keep in flight to this API server now, and how
    /// many 429s it answered.
    pub fn throttle(&self) -> &throttle::Throttle {
        &self.throttle
    }

    /// Which cluster this is (a saved plan records it): the `uid` of
    /// `kube-system`, read with one LIST of that namespace's metadata (the
    /// read-only role and the daemon's may list namespaces, not get them).
    /// `None` when the cluster has no `kube-system`.
    pub async fn identity(&self) -> Result<Option<crate::plan::contract::ClusterId>, ClusterError> {
        let namespaces: kube::Api<k8s_openapi::api::core::v1::Namespace> =
            kube::Api::all(self.client.clone());
        let params = kube::api::ListParams::default().fields("metadata.name=kube-system");
        self.count(false);
        let list = namespaces
            .list_metadata(&params)
            .await
            .map_err(|e| self.classify(e, "list", "namespaces"))?;
        Ok(list
            .items
            .into_iter()
            .find_map(|n| n.metadata.uid)
            .map(|uid| crate::plan::contract::ClusterId {
                server: self.server.clone(),
                kube_system_uid: uid,
            }))
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Write requests (apply, delete) made so far.
    pub fn writes(&self) -> u32 {
        self.writes.load(Ordering::Relaxed)
    }

    fn count(&self, write: bool) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if write {
            self.writes.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// API requests made so far through this connection.
    pub fn requests(&self) -> u32 {
        self.requests.load(Ordering::Relaxed)
    }

    pub(crate) fn classify(&self, e: kube::Error, verb: &str, resource: &str) -> ClusterError {
        match e {
            kube::Error::Api(status) if status.code == 401 => ClusterError::Unauthorized {
                server: self.server.clone(),
                user: self.user.clone(),
            },
            kube::Error::Api(status) if status.code == 403 => ClusterError::Forbidden {
                server: self.server.clone(),
                verb: verb.into(),
                resource: resource.into(),
                message: status.message.clone(),
            },
            kube::Error::Api(status) => ClusterError::Api {
                server: self.server.clone(),
                verb: verb.into(),
                resource: resource.into(),
                message: status.message.clone(),
                code: status.code,
            },
            kube::Error::Service(e) if e.is::<throttle::Fenced>() => ClusterError::Fenced,
            kube::Error::Service(e) if e.is::<throttle::NoAnswer>() => ClusterError::Unreachable {
                server: self.server.clone(),
                reason: e.to_string(),
            },
            other => ClusterError::Unreachable {
                server: self.server.clone(),
                reason: error_chain(&other),
            },
        }
    }

    /// The API resource of a kind and whether it is namespaced: the fixed
    /// kinds tenantsync renders, else API discovery (cached). `None` when the
    /// API server does not serve the kind (yet: a CRD not installed).
    pub async fn resolve_kind(
        &self,
        api_version: &str,
        kind: &str,
    ) -> Result<Option<(ApiResource, bool)>, ClusterError> {
        if let Some(k) = object::MANAGED_KINDS
            .iter()
            .find(|k| k.kind == kind && api_version_of(k) == api_version)
        {
            return Ok(Some((api_resource(k), k.namespaced)));
        }
        let key = (api_version.to_string(), kind.to_string());
        if let Some(found) = self
            .discovered
            .lock()
            .ok()
            .and_then(|m| m.get(&key).cloned())
        {
            return Ok(Some(found));
        }
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let gvk = GroupVersionKind::gvk(group, version, kind);
        self.count(false);
        match kube::discovery::pinned_kind(&self.client, &gvk).await {
            Ok((resource, caps)) => {
                let found = (resource, caps.scope == Scope::Namespaced);
                if let Ok(mut m) = self.discovered.lock() {
                    m.insert(key, found.clone());
                }
                Ok(Some(found))
            }
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(None),
            Err(kube::Error::Discovery(_)) => Ok(None),
            Err(e) => Err(self.classify(e, "discover", &format!("{api_version} {kind}"))),
        }
    }
}

/// Refuses an object whose namespace disagrees with its kind's scope as the
/// API server serves it: a cluster-scoped kind with a namespace would be
/// written (and looked up) cluster-wide under a key that is not the
/// object's, a namespaced kind without one at no namespace at all.
pub(crate) fn scope_check(
    object: &str,
    api_version: &str,
    kind: &str,
    namespaced: bool,
    namespace: Option<&str>,
) -> Result<(), ClusterError> {
    let reason = match (namespaced, namespace) {
        (false, Some(ns)) => format!(
            "{kind} ({api_version}) is cluster-scoped on this API server, but the object has namespace `{ns}`: refused, as it would be written cluster-wide; remove metadata.namespace from its manifest (the operator must also allow the kind with --allow-kind {kind})"
        ),
        (true, None) => format!(
            "{kind} ({api_version}) is namespaced on this API server, but the object has no namespace: refused; give its manifest a metadata.namespace"
        ),
        _ => return Ok(()),
    };
    Err(ClusterError::Scope {
        object: object.to_string(),
        reason,
    })
}

pub(crate) fn api_resource(kind: &ManagedKind) -> ApiResource {
    ApiResource {
        group: kind.group.into(),
        version: kind.version.into(),
        api_version: api_version_of(kind),
        kind: kind.kind.into(),
        plural: kind.plural.into(),
    }
}

fn api_version_of(kind: &ManagedKind) -> String {
    if kind.group.is_empty() {
        kind.version.to_string()
    } else {
        format!("{}/{}", kind.group, kind.version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_object_whose_namespace_disagrees_with_its_kinds_scope_is_refused() {
        let e = scope_check(
            "ClusterWidget/contoso-qa/shared",
            "example.com/v1",
            "ClusterWidget",
            false,
            Some("contoso-qa"),
        )
        .map_err(|e| e.to_string());
        let Err(e) = e else {
            panic!("a cluster-scoped kind with a namespace was let through");
        };
        assert!(
            e.starts_with(
                "ClusterWidget/contoso-qa/shared: ClusterWidget (example.com/v1) is cluster-scoped"
            ) && e.contains("remove metadata.namespace")
                && e.contains("--allow-kind ClusterWidget"),
            "{e}"
        );
        let e =
            scope_check("ConfigMap/x", "v1", "ConfigMap", true, None).map_err(|e| e.to_string());
        assert!(
            matches!(&e, Err(e) if e.contains("is namespaced") && e.contains("give its manifest a metadata.namespace")),
            "{e:?}"
        );
        assert!(scope_check("ConfigMap/ns/x", "v1", "ConfigMap", true, Some("ns")).is_ok());
        assert!(scope_check("Namespace/ns", "v1", "Namespace", false, None).is_ok());
    }
}
