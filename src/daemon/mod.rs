//! `tenantsync run`: keep environments in step with a repository.
//!
//! One reconcile loop per environment, each independent (one failing never
//! blocks another). A loop wakes on its poll interval, on a trigger (a push
//! webhook, a file-system change of a local folder), and on its drift
//! interval. A new revision is validated and rendered; an invalid one is
//! reported and nothing is applied or pruned until a good one arrives. A good
//! one is synced as `tenantsync sync` does. Between revisions the loop
//! checks for drift and, with self-heal, re-applies what drifted (and only
//! that: sync applies only what the plan says changed).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::cluster::sync::{self as cluster_sync};
use crate::cluster::{Cluster, ClusterOptions};
use crate::plan::{Action, Plan};
use crate::render::Object;
use crate::repo::SourceTree;
use crate::sync::SyncOptions;
use crate::{diff, inventory, render, source, validate};

pub mod config;
pub mod http;
pub mod leader;
pub mod metrics;

/// What `run` was told to do.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// A folder, a local Git repository, or a remote URL.
    pub repo: String,
    /// Branch (or tag, or commit) to follow in a Git repository.
    pub branch: Option<String>,
    pub environments: Vec<String>,
    pub interval: Duration,
    pub drift_interval: Duration,
    /// Status, metrics and probes (and `POST /hooks/git` without
    /// `webhook_listen`).
    pub listen: SocketAddr,
    /// A listener of its own for `POST /hooks/git` only.
    pub webhook_listen: Option<SocketAddr>,
    pub prune: bool,
    pub self_heal: bool,
    /// The operator's guardrails and sync ceiling (never the repository's).
    pub operator: crate::tenancy::Operator,
    pub cluster: ClusterOptions,
    /// Shared secret of `POST /hooks/git` (GitHub HMAC or GitLab token).
    pub webhook_secret: Option<String>,
    /// Elect a leader among replicas with a Lease; only the leader writes.
    pub leader_elect: bool,
    /// The Lease's name in `tenantsync-system`.
    pub lease_name: String,
    /// Allow revisions that delete whole workspaces or much of an inventory.
    pub allow_mass_prune: bool,
    /// Delete a removed workspace's namespace even when it holds objects
    /// tenantsync did not make (`run --prune-foreign`, the configuration's
    /// `syncPolicy.pruneForeign`): the operator's choice, never the
    /// repository's.
    pub prune_foreign: bool,
    /// Kubeconfig context per environment (the default one otherwise).
    pub contexts: BTreeMap<String, String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub enum SyncStatus {
    #[default]
    Unknown,
    Synced,
    OutOfSync,
    /// A sync of `targetRevision` is running.
    Syncing,
    Failed,
}

#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkspaceStatus {
    pub sync_status: SyncStatus,
    pub drifted_objects: usize,
    /// Why the workspace is `Failed` (invalid: held at its last applied
    /// state), one `file:line:col: error: ...` line each.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

/// One environment's state, as `GET /status` shows it.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvironmentStatus {
    pub sync_status: SyncStatus,
    pub last_seen_revision: Option<String>,
    pub last_applied_revision: Option<String>,
    pub last_error: Option<String>,
    pub last_error_at: Option<String>,
    pub last_reconcile_at: Option<String>,
    pub last_sync_at: Option<String>,
    /// The revision being synced (while `Syncing`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_revision: Option<String>,
    /// Why the last reconcile failed, in one word (source, invalid, render,
    /// cluster, guard, apply, locked).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error_reason: Option<String>,
    pub drifted_objects: usize,
    pub workspaces: BTreeMap<String, WorkspaceStatus>,
    /// A revision was read and compared with the cluster (and synced, when
    /// leading) at least once: what `/readyz` waits for. A failed read or
    /// an invalid first revision does not count.
    #[serde(skip)]
    pub compared: bool,
}

#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DaemonStatus {
    /// This replica's identity in leader election.
    pub identity: String,
    /// Whether this replica leads (and so writes); always true without
    /// leader election.
    pub leader: bool,
    pub environments: BTreeMap<String, EnvironmentStatus>,
}

/// State shared by the loops and the HTTP server.
pub struct Shared {
    pub status: RwLock<DaemonStatus>,
    pub metrics: metrics::Metrics,
    /// Bumped to make every loop look at the source now.
    pub trigger: watch::Sender<u64>,
    pub options: RunOptions,
    /// Whether this replica may write.
    pub leading: watch::Receiver<bool>,
}

impl Shared {
    fn update(&self, env: &str, f: impl FnOnce(&mut EnvironmentStatus)) {
        if let Ok(mut status) = self.status.write() {
            status.leader = *self.leading.borrow();
            f(status.environments.entry(env.to_string()).or_default());
        }
    }

    /// Ready once every environment's source was read and compared with
    /// the cluster at least once (README: "read and synced once"): a
    /// reconcile that could not read the repository, or found its first
    /// revision invalid, does not count.
    pub fn ready(&self) -> bool {
        self.status.read().is_ok_and(|s| {
            self.options
                .environments
                .iter()
                .all(|e| s.environments.get(e).is_some_and(|st| st.compared))
        })
    }

    pub fn poke(&self) {
        self.trigger.send_modify(|n| *n = n.wrapping_add(1));
    }
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now().to_string()
}

/// A source revision: the Git commit, or a digest of a folder's files.
pub fn revision_of(tree: &SourceTree, git: Option<source::git::Revision>) -> String {
    match git {
        Some(r) => r.commit,
        None => {
            let mut h = Sha256::new();
            for p in tree.paths() {
                h.update(p.as_bytes());
                h.update([0]);
                h.update(tree.get(p).unwrap_or_default());
                h.update([0]);
            }
            let digest = h.finalize();
            format!(
                "folder-{}",
                digest
                    .iter()
                    .take(6)
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
            )
        }
    }
}

/// Reads the source (blocking I/O off the async threads).
async fn read_source(options: &RunOptions) -> Result<(SourceTree, String), String> {
    let repo = options.repo.clone();
    let branch = options.branch.clone();
    tokio::task::spawn_blocking(move || {
        // Any URL in a message has its user information (a token) masked.
        let masked = |e: &dyn std::fmt::Display| source::git::redact_in_text(&format!("{e:#}"));
        let auth = source::auth_from_env().map_err(|e| masked(&e))?;
        let (tree, git) = source::read(&repo, branch.as_deref(), &auth).map_err(|e| masked(&e))?;
        let revision = revision_of(&tree, git);
        Ok((tree, revision))
    })
    .await
    .map_err(|e| format!("source reader stopped: {e}"))?
}

/// The last good desired state of an environment.
struct Desired {
    revision: String,
    objects: Vec<Object>,
    sync: SyncOptions,
    /// Invalid workspaces of this revision, held at their last applied
    /// state (their namespaces are out of `sync.scope`), with their errors.
    failed: BTreeMap<String, Vec<String>>,
    /// The Warning Event about `failed` is still to be recorded (once per
    /// revision, by the leader, as soon as the cluster is reachable).
    event_pending: std::sync::atomic::AtomicBool,
    /// `spec.ownership`: whose fields are drift, which are left alone.
    ownership: crate::model::Ownership,
}

/// Runs the daemon until SIGTERM or Ctrl-C.
pub async fn run(options: RunOptions) -> anyhow::Result<()> {
    let (trigger, _) = watch::channel(0u64);
    let identity = leader::identity();
    let (leading_tx, leading) = watch::channel(!options.leader_elect);
    let (stop_campaign, campaign_stop) = watch::channel(false);
    let campaign = if options.leader_elect {
        let cluster = Cluster::connect(&options.cluster).await?;
        // The Lease lives in tenantsync-system: created when missing only,
        // so that a replica that does not lead writes nothing but its bids
        // for the Lease (one LIST: the daemon's role has no `get` on
        // namespaces).
        let namespaces: kube::Api<k8s_openapi::api::core::v1::Namespace> =
            kube::Api::all(cluster.client().clone());
        let system = kube::api::ListParams::default()
            .fields(&format!("metadata.name={}", inventory::SYSTEM_NAMESPACE));
        if !namespaces
            .list_metadata(&system)
            .await
            .is_ok_and(|l| !l.items.is_empty())
        {
            cluster.ensure_system_namespace(false).await?;
        }
        Some(tokio::spawn(leader::campaign(
            cluster.client().clone(),
            options.lease_name.clone(),
            identity.clone(),
            leading_tx,
            campaign_stop,
        )))
    } else {
        None
    };
    let shared = Arc::new(Shared {
        status: RwLock::new(DaemonStatus {
            identity,
            leader: !options.leader_elect,
            ..DaemonStatus::default()
        }),
        metrics: metrics::Metrics::new(),
        trigger,
        options: options.clone(),
        leading,
    });
    let (shutdown_tx, shutdown) = watch::channel(false);
    let server = http::start(&options, shared.clone(), shutdown.clone()).await?;
    let _watcher = watch_folder(&options, shared.clone());

    let mut loops = tokio::task::JoinSet::new();
    for env in &options.environments {
        shared.metrics.init_environment(env);
        loops.spawn(reconcile_loop(
            env.clone(),
            shared.clone(),
            shutdown.clone(),
        ));
    }
    wait_for_signal().await;
    tracing::info!("shutting down: finishing the reconcile in flight");
    // A fetch from a silent remote is stopped, not waited for.
    source::git::cancel_fetches();
    let _ = shutdown_tx.send(true);
    while loops.join_next().await.is_some() {}
    // Only once nothing is in flight does the leader give the Lease up.
    let _ = stop_campaign.send(true);
    if let Some(campaign) = campaign {
        let _ = campaign.await;
    }
    let _ = server.await;
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {},
                    _ = tokio::signal::ctrl_c() => {},
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// For a local folder (not a Git revision): file-system events, debounced,
/// trigger a reconcile so an edit is applied within about a second.
fn watch_folder(options: &RunOptions, shared: Arc<Shared>) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    if source::git::is_remote_url(&options.repo) || options.branch.is_some() {
        return None;
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Only changes: reading the files ourselves raises access events.
        if let Ok(e) = event
            && (e.kind.is_create() || e.kind.is_modify() || e.kind.is_remove())
        {
            let _ = tx.send(());
        }
    })
    .map_err(|e| tracing::warn!(error = %e, "cannot watch the folder; polling only"))
    .ok()?;
    let path = std::path::Path::new(&options.repo).join(validate::ENVIRONMENTS_DIR);
    if let Err(e) = watcher.watch(&path, notify::RecursiveMode::Recursive) {
        tracing::warn!(path = %path.display(), error = %e, "cannot watch the folder; polling only");
        return None;
    }
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            // Debounce: an editor's save is several events.
            tokio::time::sleep(Duration::from_millis(300)).await;
            while rx.try_recv().is_ok() {}
            shared.poke();
        }
    });
    Some(watcher)
}

async fn reconcile_loop(env: String, shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let options = shared.options.clone();
    let mut trigger = shared.trigger.subscribe();
    let mut cluster: Option<Cluster> = None;
    let mut desired: Option<Arc<Desired>> = None;
    // Why the newest revision cannot be applied (unreadable or invalid):
    // kept, and the status kept Failed, until a good revision arrives.
    let mut source_problem: Option<String> = None;
    // The status fields last written onto the inventory.
    let mut written: BTreeMap<String, String> = BTreeMap::new();
    let mut held = Held::default();
    let mut backoff = Duration::from_secs(1);
    let mut next_poll = Instant::now();
    let mut next_drift = Instant::now() + options.drift_interval;
    loop {
        let now_i = Instant::now();
        let poll = now_i >= next_poll;
        // Drift is checked against a revision already read: until one is,
        // only the source's reads run, backed off (a drift tick would read
        // the source too, every drift interval).
        let drift = now_i >= next_drift && desired.is_some();
        if poll || drift {
            let started = Instant::now();
            let ok = reconcile(
                &env,
                &shared,
                &mut cluster,
                &mut desired,
                &mut source_problem,
                &mut held,
                poll,
            )
            .await;
            shared.metrics.observe_reconcile(&env, started.elapsed());
            if cluster.is_none() {
                // The status must reach the inventory even when the
                // reconcile dropped its connection.
                cluster = Cluster::connect(&cluster_options(&options, &env))
                    .await
                    .ok();
            }
            publish_status(&env, &shared, cluster.as_ref(), &mut written).await;
            // Only a read of the source moves the next read: a drift check
            // (which fails while the newest revision is bad) must not keep
            // postponing it.
            if poll && ok {
                backoff = Duration::from_secs(1);
                next_poll = Instant::now() + options.interval;
            } else if poll {
                // Retry sooner, backing off up to the poll interval.
                next_poll = Instant::now() + backoff.min(options.interval);
                backoff = (backoff * 2).min(options.interval);
            }
            next_drift = Instant::now() + options.drift_interval;
            continue;
        }
        let wake = if desired.is_some() {
            next_poll.min(next_drift)
        } else {
            next_poll
        };
        let wake = tokio::time::Instant::from_std(wake);
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {},
            changed = trigger.changed() => {
                if changed.is_ok() { next_poll = Instant::now(); }
            },
            _ = shutdown.changed() => {},
        }
        if *shutdown.borrow() {
            if let (Some(lock), Some(c)) = (held.lock.take(), cluster.as_ref()) {
                lock.release(c).await;
            }
            return;
        }
    }
}

/// What a reconcile loop keeps between reconciles besides the desired state.
#[derive(Default)]
struct Held {
    /// The environment's lock, while this replica leads.
    lock: Option<crate::cluster::lock::EnvLock>,
    /// The last revision applied in full: while a newer one is blocked, its
    /// drift is still detected and healed.
    applied: Option<Arc<Desired>>,
    /// The last failure recorded as an Event (one per distinct failure).
    last_event: Option<String>,
}

fn cluster_options(options: &RunOptions, env: &str) -> ClusterOptions {
    let mut cluster_options = options.cluster.clone();
    if let Some(context) = options.contexts.get(env) {
        cluster_options.context = Some(context.clone());
    }
    cluster_options
}

/// Mirrors the environment's status onto its inventory object (for
/// `tenantsync status` and other readers), only when it changed.
async fn publish_status(
    env: &str,
    shared: &Shared,
    cluster: Option<&Cluster>,
    written: &mut BTreeMap<String, String>,
) {
    let Some(cluster) = cluster else { return };
    if !*shared.leading.borrow() {
        return;
    }
    let Some(status) = shared
        .status
        .read()
        .ok()
        .and_then(|s| s.environments.get(env).cloned())
    else {
        return;
    };
    let fields = BTreeMap::from([
        (
            "syncStatus".to_string(),
            format!("{:?}", status.sync_status),
        ),
        (
            "lastSeenRevision".to_string(),
            status.last_seen_revision.unwrap_or_default(),
        ),
        (
            "lastError".to_string(),
            status
                .last_error
                .unwrap_or_default()
                .chars()
                .take(2000)
                .collect(),
        ),
        (
            "lastErrorAt".to_string(),
            status.last_error_at.unwrap_or_default(),
        ),
        (
            "driftedObjects".to_string(),
            status.drifted_objects.to_string(),
        ),
        (
            "targetRevision".to_string(),
            status.target_revision.unwrap_or_default(),
        ),
        // The daemon's heartbeat: `tenantsync status` calls a status older
        // than staleAfterSeconds stale.
        ("heartbeatAt".to_string(), now()),
        (
            "staleAfterSeconds".to_string(),
            stale_after(&shared.options).to_string(),
        ),
    ]);
    if fields == *written {
        return;
    }
    match cluster.write_status(env, &fields).await {
        Ok(()) => *written = fields,
        Err(e) => {
            tracing::warn!(environment = env, error = %e, "cannot write status onto the inventory")
        }
    }
}

/// Seconds after which a daemon's status with no newer heartbeat is stale.
fn stale_after(options: &RunOptions) -> u64 {
    options
        .interval
        .as_secs()
        .saturating_mul(3)
        .saturating_add(15)
}

/// One reconcile. `from_source`: read the source (a poll or a trigger);
/// otherwise only check the cluster against the last good revision.
async fn reconcile(
    env: &str,
    shared: &Shared,
    cluster: &mut Option<Cluster>,
    desired: &mut Option<Arc<Desired>>,
    source_problem: &mut Option<String>,
    held: &mut Held,
    from_source: bool,
) -> bool {
    let options = &shared.options;
    let fail = |reason: &str, message: String| {
        tracing::warn!(environment = env, reason, error = %message, "reconcile failed");
        shared.metrics.reconcile_failed(env, reason);
        shared.metrics.set_status(env, "Failed");
        shared.update(env, |s| {
            s.sync_status = SyncStatus::Failed;
            s.target_revision = None;
            s.last_error = Some(message.clone());
            s.last_error_reason = Some(reason.to_string());
            s.last_error_at = Some(now());
            s.last_reconcile_at = Some(now());
        });
        false
    };

    if from_source || desired.is_none() {
        match read_source(options).await {
            Err(e) => {
                shared.metrics.git_fetch_failed(env);
                let message = format!(
                    "cannot read the repository (the last good revision stays applied): {e}"
                );
                *source_problem = Some(message.clone());
                return fail("source", message);
            }
            Ok((tree, revision)) => {
                shared.update(env, |s| s.last_seen_revision = Some(revision.clone()));
                if desired.as_ref().is_some_and(|d| d.revision == revision) {
                    *source_problem = None;
                }
                if desired.as_ref().is_none_or(|d| d.revision != revision) {
                    // The files go once parsed, the parsed files once
                    // resolved: only the rendered objects are kept.
                    let repository = validate::load(&tree);
                    drop(tree);
                    // Per workspace: an invalid one is held, the others go on;
                    // a problem of the environment itself holds everything.
                    let partial = repository.resolve_partial(env);
                    let clashes = namespace_clashes(options, &repository, env);
                    drop(repository);
                    let resolved = if partial.environment_errors.is_empty() {
                        Ok(partial)
                    } else {
                        Err(partial.errors())
                    };
                    match resolved {
                        Err(diags) => {
                            let lines: Vec<String> =
                                diags.iter().map(ToString::to_string).collect();
                            let message = format!(
                                "revision {revision} is invalid; nothing is applied until a valid one arrives:\n{}",
                                lines.join("\n")
                            );
                            // One Event per bad revision, not one per poll.
                            if source_problem.as_deref() != Some(message.as_str())
                                && *shared.leading.borrow()
                                && let Some(c) = cluster.as_ref()
                            {
                                c.record_event(env, "InvalidRevision", &message).await;
                            }
                            *source_problem = Some(message.clone());
                            return fail("invalid", message);
                        }
                        Ok(mut partial) => {
                            partial
                                .environment
                                .workspaces
                                .retain(|w| !clashes.contains_key(&w.metadata.name));
                            let (objects, unrendered) =
                                render::render_partial(&partial.environment);
                            {
                                let environment = &partial.environment;
                                let policy = &environment.settings.sync_policy;
                                let admitted = crate::tenancy::admit(
                                    &options.operator,
                                    env,
                                    environment.settings.namespace_template.as_deref(),
                                    policy,
                                    &objects,
                                );
                                let effective = match admitted {
                                    Ok(effective) => effective,
                                    Err(violations) => {
                                        let lines: Vec<String> = violations
                                            .iter()
                                            .map(|v| v.diagnostic(env).to_string())
                                            .collect();
                                        let message = format!(
                                            "revision {revision} breaks the operator's guardrails; nothing is applied until a revision that keeps them arrives:\n{}",
                                            lines.join("\n")
                                        );
                                        if source_problem.as_deref() != Some(message.as_str())
                                            && *shared.leading.borrow()
                                            && let Some(c) = cluster.as_ref()
                                        {
                                            c.record_event(env, "GuardrailViolated", &message)
                                                .await;
                                        }
                                        *source_problem = Some(message.clone());
                                        return fail("guardrail", message);
                                    }
                                };
                                let mut failed: BTreeMap<String, Vec<String>> = partial
                                    .workspace_errors
                                    .iter()
                                    .map(|(ws, d)| {
                                        (ws.clone(), d.iter().map(ToString::to_string).collect())
                                    })
                                    .collect();
                                for (ws, why) in clashes {
                                    failed.entry(ws).or_default().push(why);
                                }
                                for (ws, e) in unrendered {
                                    failed
                                        .entry(ws)
                                        .or_default()
                                        .push(format!("cannot render revision {revision}: {e}"));
                                }
                                let held = failed
                                    .keys()
                                    .map(|ws| environment.namespace_of(ws))
                                    .collect();
                                let before = desired.as_ref().map(|d| d.failed.clone());
                                for ws in before.iter().flat_map(|b| b.keys()) {
                                    if !failed.contains_key(ws) {
                                        shared.metrics.set_workspace_failed(env, ws, false);
                                    }
                                }
                                for ws in failed.keys() {
                                    shared.metrics.set_workspace_failed(env, ws, true);
                                }
                                let event_pending =
                                    std::sync::atomic::AtomicBool::new(!failed.is_empty());
                                *source_problem = None;
                                *desired = Some(Arc::new(Desired {
                                    revision: revision.clone(),
                                    objects,
                                    sync: SyncOptions {
                                        scope: crate::sync::Scope { only: None, held },
                                        ..sync_options_of(options, policy, &effective)
                                    },
                                    ownership: environment.settings.ownership.clone(),
                                    failed,
                                    event_pending,
                                }));
                            }
                        }
                    }
                }
            }
        }
    }
    let Some(state) = desired.clone() else {
        return fail("source", "no valid revision yet".into());
    };

    if cluster.is_none() {
        match Cluster::connect(&cluster_options(options, env)).await {
            Ok(c) => *cluster = Some(c),
            Err(e) => return fail("cluster", format!("{e}")),
        }
    }
    let Some(c) = cluster.as_ref() else {
        return false;
    };

    // One writer per environment: the leader holds the environment's lock
    // (a CLI `sync` waits for it); a replica that does not lead releases it.
    let leading = *shared.leading.borrow();
    let mut locked_by: Option<String> = None;
    if leading {
        if held.lock.as_ref().is_none_or(|l| l.lost()) {
            held.lock = None;
            let identity = shared
                .status
                .read()
                .map(|s| s.identity.clone())
                .unwrap_or_default();
            match c
                .lock_environment(
                    env,
                    &format!("tenantsync run {identity}"),
                    Duration::ZERO,
                    |_| {},
                )
                .await
            {
                Ok(lock) => held.lock = Some(lock),
                Err(crate::cluster::lock::LockError::Held { holder, .. }) => {
                    locked_by = Some(holder.to_string());
                }
                Err(crate::cluster::lock::LockError::Cluster(e)) => {
                    if e.is_transport() {
                        *cluster = None;
                    }
                    return fail("cluster", e.to_string());
                }
            }
        }
    } else if let Some(lock) = held.lock.take() {
        lock.release(c).await;
    }
    let may_write = leading && locked_by.is_none();
    let lock_lost = held.lock.as_ref().map(|l| l.lost_flag());

    let result = check_and_sync(env, shared, c, &state, may_write, lock_lost.clone()).await;
    let (plan, report) = match result {
        Err((reason, e, transport)) => {
            if transport {
                // The connection may be broken: reconnect next time.
                *cluster = None;
            }
            let failed = fail(reason, e.clone());
            // While a revision is blocked (the guard), the last one applied
            // is still compared with the cluster: drift reported, and
            // healed with self-heal.
            if reason == "guard"
                && held.applied.is_none()
                && let Some(c) = cluster.as_ref()
            {
                held.applied = last_applied_from_inventory(options, env, c).await;
            }
            if reason == "guard"
                && let Some(applied) = held.applied.clone()
                && let Some(c) = cluster.as_ref()
            {
                match check_and_sync(env, shared, c, &applied, may_write, lock_lost).await {
                    Ok((plan, report)) => {
                        let drifted = drift_by_workspace(&plan);
                        let healed = report.as_ref().is_some_and(|r| r.succeeded());
                        let current: BTreeMap<String, usize> = drifted
                            .iter()
                            .map(|(w, n)| (w.clone(), if healed { 0 } else { *n }))
                            .collect();
                        shared.metrics.set_current_drift(env, &current);
                        if let Some(r) = &report {
                            shared.metrics.record_sync(env, r);
                            log_failures(env, r);
                        }
                        // Still blocked: Failed, whatever the heal did.
                        shared.metrics.set_status(env, "Failed");
                        shared.update(env, |s| {
                            s.sync_status = SyncStatus::Failed;
                            s.target_revision = None;
                            s.drifted_objects = current.values().sum();
                            s.workspaces = current
                                .iter()
                                .map(|(ws, n)| {
                                    (
                                        ws.clone(),
                                        WorkspaceStatus {
                                            sync_status: if *n > 0 {
                                                SyncStatus::OutOfSync
                                            } else {
                                                SyncStatus::Failed
                                            },
                                            drifted_objects: *n,
                                            errors: Vec::new(),
                                        },
                                    )
                                })
                                .collect();
                        });
                        if drifted.values().any(|n| *n > 0) {
                            tracing::warn!(
                                environment = env,
                                revision = %applied.revision,
                                drifted = drifted.values().sum::<usize>(),
                                healed,
                                "drift of the last applied revision while a newer one is blocked"
                            );
                        }
                    }
                    Err((_, e, _)) => {
                        tracing::warn!(environment = env, error = %e, "cannot check drift of the last applied revision")
                    }
                }
            }
            // Still failed, whatever the drift check did meanwhile.
            shared.metrics.set_status(env, "Failed");
            shared.update(env, |s| {
                s.sync_status = SyncStatus::Failed;
                s.target_revision = None;
            });
            if held.last_event.as_deref() != Some(e.as_str())
                && may_write
                && let Some(c) = cluster.as_ref()
            {
                c.record_event(env, "SyncFailed", &e).await;
                held.last_event = Some(e);
            }
            return failed;
        }
        Ok(r) => r,
    };

    let drifted = drift_by_workspace(&plan);
    let status = match &report {
        Some(r) if !r.succeeded() => SyncStatus::Failed,
        Some(_) => SyncStatus::Synced,
        None if plan.summary.has_changes() => SyncStatus::OutOfSync,
        None => SyncStatus::Synced,
    };
    if let Some(r) = &report {
        shared.metrics.record_sync(env, r);
        tracing::info!(
            environment = env,
            revision = %state.revision,
            created = r.created.len(),
            updated = r.updated.len(),
            pruned = r.pruned.len(),
            failures = r.failures.len() + r.conflicts.len(),
            "synced"
        );
        log_failures(env, r);
    } else if plan.summary.has_changes() {
        tracing::warn!(
            environment = env,
            drifted = plan.summary.update + plan.summary.create + plan.summary.delete,
            "drift detected (self-heal is off)"
        );
    }
    let sync_error = report
        .as_ref()
        .filter(|r| !r.succeeded())
        .map(crate::cli::sync_error_text);
    let locked_error = locked_by.as_ref().map(|holder| {
        format!(
            "environment {env} is locked by {holder}: another writer is syncing it; this daemon writes again once the lock is released"
        )
    });
    let held_error =
        (!state.failed.is_empty()).then(|| held_message(&state.revision, &state.failed));
    let (error, reason) = match (source_problem.clone(), sync_error, locked_error, held_error) {
        (Some(e), _, _, _) => (Some(e), "source"),
        (None, Some(e), _, _) => (Some(e), "apply"),
        (None, None, Some(e), _) => (Some(e), "locked"),
        (None, None, None, Some(e)) => (Some(e), "invalid"),
        (None, None, None, None) => (None, ""),
    };
    let status = if error.is_some() {
        SyncStatus::Failed
    } else {
        status
    };
    if let Some(e) = &error {
        tracing::warn!(environment = env, reason, error = %e, "reconcile failed");
        shared.metrics.reconcile_failed(env, reason);
        if reason == "apply"
            && held.last_event.as_deref() != Some(e.as_str())
            && let Some(c) = cluster.as_ref()
        {
            c.record_event(env, "SyncFailed", e).await;
            held.last_event = Some(e.clone());
        }
    } else {
        shared.metrics.reconcile_succeeded(env);
        held.last_event = None;
    }
    // Current drift: what is out of step now (nothing, once a sync healed it).
    let synced = report.as_ref().is_some_and(|r| r.succeeded());
    let current: BTreeMap<String, usize> = drifted
        .iter()
        .map(|(ws, n)| (ws.clone(), if synced { 0 } else { *n }))
        .collect();
    shared.metrics.set_current_drift(env, &current);
    shared.metrics.set_status(env, &format!("{status:?}"));
    if synced || (report.is_none() && status == SyncStatus::Synced) {
        held.applied = Some(state.clone());
    }
    shared.update(env, |s| {
        s.sync_status = status;
        s.target_revision = None;
        s.last_reconcile_at = Some(now());
        s.compared = true;
        if let Some(r) = &report {
            s.last_sync_at = Some(now());
            if r.succeeded() {
                s.last_applied_revision = Some(state.revision.clone());
            }
        } else if status == SyncStatus::Synced {
            s.last_applied_revision = Some(state.revision.clone());
        }
        s.drifted_objects = current.values().sum();
        s.workspaces = current
            .iter()
            .map(|(ws, n)| {
                (
                    ws.clone(),
                    WorkspaceStatus {
                        sync_status: if *n > 0 {
                            SyncStatus::OutOfSync
                        } else if reason == "invalid" {
                            // Only the held workspaces failed.
                            SyncStatus::Synced
                        } else {
                            status
                        },
                        drifted_objects: *n,
                        errors: Vec::new(),
                    },
                )
            })
            .collect();
        for (ws, errors) in &state.failed {
            s.workspaces.insert(
                ws.clone(),
                WorkspaceStatus {
                    sync_status: SyncStatus::Failed,
                    drifted_objects: 0,
                    errors: errors.clone(),
                },
            );
        }
        match &error {
            Some(e) => {
                s.last_error = Some(e.clone());
                s.last_error_reason = Some(reason.to_string());
                s.last_error_at = Some(now());
            }
            None => {
                s.last_error = None;
                s.last_error_reason = None;
                s.last_error_at = None;
            }
        }
    });
    error.is_none()
}

/// The sync options of a revision: the daemon's flags, the repository's
/// policy as far as the operator allows it.
fn sync_options_of(
    options: &RunOptions,
    policy: &crate::model::SyncPolicy,
    effective: &crate::tenancy::EffectivePolicy,
) -> SyncOptions {
    SyncOptions {
        prune: options.prune || policy.prune,
        force_conflicts: effective.force_conflicts,
        max_prune_percent: effective.max_prune_percent,
        prune_foreign: options.prune_foreign,
        allow_mass_prune: options.allow_mass_prune,
        ..SyncOptions::default()
    }
}

/// The revision the inventory records as applied, read again from Git (a
/// daemon that restarted while a newer revision is blocked still knows what
/// to compare the cluster with). `None` for a folder (no history) or when
/// that revision cannot be read or rendered.
async fn last_applied_from_inventory(
    options: &RunOptions,
    env: &str,
    c: &Cluster,
) -> Option<Arc<Desired>> {
    let revision = c.read_inventory(env).await.ok()??.revision?;
    if revision.len() != 40 || !revision.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let (options, env) = (options.clone(), env.to_string());
    let state = tokio::task::spawn_blocking(move || {
        let auth = source::auth_from_env().ok()?;
        let (tree, _) = source::read(&options.repo, Some(&revision), &auth).ok()?;
        let repository = validate::load(&tree);
        drop(tree);
        let environment = repository.resolve(&env).ok()?;
        let objects = render::render(&environment).ok()?;
        let policy = &environment.settings.sync_policy;
        let effective = crate::tenancy::admit(
            &options.operator,
            &env,
            environment.settings.namespace_template.as_deref(),
            policy,
            &objects,
        )
        .ok()?;
        Some(Desired {
            revision,
            sync: sync_options_of(&options, policy, &effective),
            objects,
            failed: BTreeMap::new(),
            event_pending: std::sync::atomic::AtomicBool::new(false),
            ownership: environment.settings.ownership.clone(),
        })
    })
    .await
    .ok()??;
    Some(Arc::new(state))
}

/// Every failed object, with its reason, in the log.
fn log_failures(env: &str, r: &cluster_sync::SyncReport) {
    for f in &r.failures {
        tracing::warn!(environment = env, object = %f.id, error = %f.message, "object failed");
    }
    for c in &r.conflicts {
        let fields: Vec<String> = c
            .fields
            .iter()
            .map(|f| format!("{} (owned by {})", f.field, f.manager))
            .collect();
        tracing::warn!(environment = env, object = %c.id, fields = %fields.join(", "), "conflict");
    }
    if let Some(a) = &r.aborted {
        tracing::warn!(environment = env, error = %a, not_sent = r.not_sent.len(), "sync stopped");
    }
}

/// Plans `state` against the cluster and, when this replica may write and
/// the revision is new (or drifted, with self-heal), syncs it. Errors:
/// (reason, message, whether the connection may be broken).
async fn check_and_sync(
    env: &str,
    shared: &Shared,
    c: &Cluster,
    state: &Desired,
    may_write: bool,
    lock_lost: Option<Arc<std::sync::atomic::AtomicBool>>,
) -> Result<(Plan, Option<cluster_sync::SyncReport>), (&'static str, String, bool)> {
    let options = &shared.options;
    let cluster_error =
        |e: crate::cluster::ClusterError| ("cluster", e.to_string(), e.is_transport());
    // The guardrails only the cluster can judge: each resources/ manifest's
    // namespace against the scope API discovery gives its kind.
    let violations = c
        .check_scopes(&options.operator.guardrails, &state.objects)
        .await
        .map_err(cluster_error)?;
    if !violations.is_empty() {
        let lines: Vec<String> = violations
            .iter()
            .map(|v| v.diagnostic(env).to_string())
            .collect();
        return Err((
            "guardrail",
            format!(
                "revision {} breaks the operator's guardrails; nothing is applied until a revision that keeps them arrives:\n{}",
                state.revision,
                lines.join("\n")
            ),
            false,
        ));
    }
    let inv = c.read_inventory(env).await.map_err(cluster_error)?;
    let kinds = inventory::kinds_to_list(&state.objects, inv.as_ref());
    if may_write
        && state
            .event_pending
            .swap(false, std::sync::atomic::Ordering::Relaxed)
    {
        c.record_event(
            env,
            "InvalidWorkspace",
            &held_message(&state.revision, &state.failed),
        )
        .await;
    }
    let mut planner =
        diff::Planner::new(env, &state.objects, false).with_ownership(state.ownership.clone());
    // Held workspaces are out of scope: not planned, applied nor pruned.
    let scope = &state.sync.scope;
    c.for_each_managed(env, &kinds, |o| {
        if scope.contains_live(&o) {
            planner.observe(o)
        }
    })
    .await
    .map_err(cluster_error)?;
    let empty = inventory::Inventory::new(env);
    let scoped = scope.inventory(inv.as_ref().unwrap_or(&empty));
    let (mut plan, undeclared) = planner.finish(Some(&scoped), Some(state.revision.clone()), 0);
    // Never adopt: what exists without being this environment's is left
    // alone (the daemon has no --adopt).
    let existing = c.find_existing(&plan).await.map_err(cluster_error)?;
    crate::tenancy::settle_ownership(&mut plan, inv.as_ref().unwrap_or(&empty), &existing, false);
    // A revision not yet applied is synced; between revisions, drift is
    // re-applied only with self-heal.
    let applied_rev = inv.as_ref().and_then(|i| i.revision.clone());
    let new_revision = applied_rev.as_deref() != Some(state.revision.as_str());
    // A replica that does not lead (or a leader waiting for the lock) only
    // reports.
    if !may_write {
        return Ok((plan, None));
    }
    let heal = options.self_heal && plan.summary.has_changes();
    if !new_revision && !heal {
        return Ok((plan, None));
    }
    // Healing takes the drifted fields back from whoever changed them.
    let mut sync_options = state.sync.clone();
    sync_options.force_conflicts |= heal && !new_revision;
    sync_options.lock_lost = lock_lost;
    // `Syncing`, with the target revision, while the sync runs; the
    // heartbeat keeps beating so a long sync is not taken for a dead daemon.
    shared.update(env, |s| {
        s.sync_status = SyncStatus::Syncing;
        s.target_revision = Some(state.revision.clone());
    });
    shared.metrics.set_status(env, "Syncing");
    let beat = |status: &str| {
        BTreeMap::from([
            ("syncStatus".to_string(), status.to_string()),
            ("targetRevision".to_string(), state.revision.clone()),
            ("heartbeatAt".to_string(), now()),
            (
                "staleAfterSeconds".to_string(),
                stale_after(options).to_string(),
            ),
        ])
    };
    if let Err(e) = c.write_status(env, &beat("Syncing")).await {
        tracing::warn!(environment = env, error = %e, "cannot write status onto the inventory");
    }
    let heartbeat = async {
        loop {
            tokio::time::sleep(options.interval.max(Duration::from_secs(1))).await;
            let _ = c.write_status(env, &beat("Syncing")).await;
        }
    };
    let sync = cluster_sync::sync(
        c,
        &plan,
        &state.objects,
        inv,
        &undeclared,
        &sync_options,
        Some(state.revision.clone()),
        |_| {},
    );
    let report = tokio::select! {
        r = sync => r,
        () = heartbeat => unreachable_heartbeat(),
    };
    match report {
        Ok(report) => Ok((plan, Some(report))),
        Err(cluster_sync::SyncError::MassPrune(m)) => Err((
            "guard",
            format!(
                "revision {} is blocked: nothing was changed: {}",
                state.revision, m.message
            ),
            false,
        )),
        Err(cluster_sync::SyncError::Cluster(e)) => Err(cluster_error(e)),
    }
}

/// The heartbeat loop never ends; this keeps `select!`'s arms one type.
fn unreachable_heartbeat() -> Result<cluster_sync::SyncReport, cluster_sync::SyncError> {
    Err(cluster_sync::SyncError::Cluster(
        crate::cluster::ClusterError::Unreachable {
            server: String::new(),
            reason: "heartbeat stopped".into(),
        },
    ))
}

/// Namespaces are cluster-wide: two environments this daemon syncs to one
/// cluster (the same kubeconfig context) must not render one namespace, or
/// each would take the other's objects over. Such a workspace is held in
/// both environments (each loop finds the same clash in the same revision),
/// with why. Returns those workspaces of `env`.
fn namespace_clashes(
    options: &RunOptions,
    repository: &validate::Repository,
    env: &str,
) -> BTreeMap<String, String> {
    let context = |e: &str| {
        options
            .contexts
            .get(e)
            .cloned()
            .or_else(|| options.cluster.context.clone())
            .unwrap_or_default()
    };
    let mine = context(env);
    let others: Vec<&String> = options
        .environments
        .iter()
        .filter(|e| e.as_str() != env && context(e) == mine)
        .collect();
    let mut clashes = BTreeMap::new();
    if others.is_empty() {
        return clashes;
    }
    let cluster = if mine.is_empty() {
        "the same cluster".to_string()
    } else {
        format!("the same cluster (context `{mine}`)")
    };
    let theirs: Vec<_> = others
        .into_iter()
        .map(|e| (e, repository.namespaces(e)))
        .collect();
    for (ns, (ws, at)) in repository.namespaces(env) {
        if let Some((other_env, (other_ws, other_at))) = theirs
            .iter()
            .find_map(|(e, namespaces)| Some((e, namespaces.get(&ns)?)))
        {
            clashes.insert(
                ws.clone(),
                format!(
                    "{at}: workspace `{ws}` renders into namespace `{ns}`, which workspace `{other_ws}` of environment `{other_env}` ({other_at}) renders into on {cluster}: both are held until the environments get distinct namespaces (`{{environment}}` in spec.namespaceTemplate)"
                ),
            );
        }
    }
    clashes
}

/// Why some workspaces of a revision are held at their last applied state.
fn held_message(revision: &str, failed: &BTreeMap<String, Vec<String>>) -> String {
    let mut lines = vec![format!(
        "revision {revision}: {} invalid workspace(s) ({}) keep their last applied state, nothing of theirs is updated or pruned; the other workspaces are applied:",
        failed.len(),
        failed.keys().cloned().collect::<Vec<_>>().join(", ")
    )];
    lines.extend(failed.values().flatten().cloned());
    lines.join("\n")
}

/// Objects out of step, per workspace (every workspace listed).
fn drift_by_workspace(plan: &Plan) -> BTreeMap<String, usize> {
    let mut out: BTreeMap<String, usize> = BTreeMap::new();
    for c in &plan.changes {
        let n = out.entry(c.workspace.to_string()).or_default();
        if c.action != Action::Unchanged {
            *n += 1;
        }
    }
    out
}
