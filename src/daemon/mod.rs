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
//!
//! Here: the options, the status it publishes, the shared state and
//! startup; `reconcile` (one environment's loop: typed steps, an `Action`,
//! one backoff policy), `http` (status, metrics, probes, webhook),
//! `leader` (leader election), `shard` (sharded replicas: a Lease per
//! environment), `metrics`, `config` (the configuration
//! file). Imports: the core, `source`, `cluster` and `pipeline`; only `cli`
//! imports it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::watch;

use crate::cluster::{Cluster, ClusterOptions};
use crate::source;

pub mod config;
mod drift_watch;
pub mod http;
pub mod leader;
pub mod metrics;
mod reconcile;
pub mod shard;

pub use crate::sync::status::{DaemonStatus, EnvironmentStatus, SyncStatus, WorkspaceStatus};
pub use reconcile::{Action, Backoff, ReconcileError, Schedule};

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
    /// The read-only status page (`GET /`, `/environments/...`) on `listen`.
    pub ui: bool,
    pub prune: bool,
    pub self_heal: bool,
    /// The operator's guardrails and sync ceiling (never the repository's).
    pub operator: crate::sync::tenancy::Operator,
    pub cluster: ClusterOptions,
    /// Shared secret of `POST /hooks/git` (GitHub HMAC or GitLab token).
    pub webhook_secret: Option<String>,
    /// Elect a leader among replicas with a Lease; only the leader writes.
    pub leader_elect: bool,
    /// The Lease's name in `tenantsync-system`.
    pub lease_name: String,
    /// With leader election: a Lease per environment
    /// (`<lease_name>-<env>`), the environments spread over the replicas.
    pub shard: bool,
    /// Allow revisions that delete whole workspaces or much of an inventory.
    pub allow_mass_prune: bool,
    /// Delete a removed workspace's namespace even when it holds objects
    /// tenantsync did not make (`run --prune-foreign`, the configuration's
    /// `syncPolicy.pruneForeign`): the operator's choice, never the
    /// repository's.
    pub prune_foreign: bool,
    /// Kubeconfig context per environment (the default one otherwise).
    pub contexts: BTreeMap<String, String>,
    /// Per environment: only commits signed by these keys are read.
    pub trust: BTreeMap<String, EnvTrust>,
}

/// An environment's source trust (`--verify-signatures`, or the
/// configuration's `verifySignatures` of the environment).
#[derive(Clone, Debug)]
pub struct EnvTrust {
    pub keys: std::sync::Arc<crate::source::trust::Trust>,
    /// Every commit since the revision last applied, not only the new one.
    pub all_since: bool,
}

/// State shared by the loops and the HTTP server.
pub struct Shared {
    pub status: RwLock<DaemonStatus>,
    pub metrics: metrics::Metrics,
    /// Bumped to make every loop look at the source now.
    pub trigger: watch::Sender<u64>,
    pub options: RunOptions,
    /// Whether this replica may write (without `--shard`).
    pub leading: watch::Receiver<bool>,
    /// With `--shard`: the environments this replica may write.
    pub owners: Arc<shard::Owners>,
}

impl Shared {
    fn update(&self, env: &str, f: impl FnOnce(&mut EnvironmentStatus)) {
        if let Ok(mut status) = self.status.write() {
            if !self.owners.sharded() {
                status.leader = *self.leading.borrow();
            }
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

    /// Whether this replica may write the environment: it leads, or with
    /// `--shard` it holds the environment's Lease and is not handing it
    /// over.
    pub fn leads(&self, env: &str) -> bool {
        self.writes(env, false)
    }

    /// [`Shared::leads`], or with `finishing` (a sync that must finish
    /// here: an approved plan, a rollback) while it still holds the
    /// environment's Lease though handing it over.
    pub fn writes(&self, env: &str, finishing: bool) -> bool {
        if self.owners.sharded() {
            self.owners.owns(env) && (finishing || !self.owners.handing_over(env))
        } else {
            *self.leading.borrow()
        }
    }

    pub fn poke(&self) {
        self.trigger.send_modify(|n| *n = n.wrapping_add(1));
    }
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now().to_string()
}

/// Runs the daemon until SIGTERM or Ctrl-C.
pub async fn run(options: RunOptions) -> anyhow::Result<()> {
    let (trigger, _) = watch::channel(0u64);
    let identity = leader::identity();
    let (leading_tx, leading) = watch::channel(!options.leader_elect);
    let (stop_campaign, campaign_stop) = watch::channel(false);
    if options.leader_elect {
        shard::check_lease_names(&options.lease_name, options.shard, &options.environments)
            .map_err(anyhow::Error::msg)?;
    }
    let campaign = if options.leader_elect {
        let cluster = Cluster::connect(&options.cluster).await?;
        // The Lease lives in tenantsync-system: created when missing only,
        // so that a replica that does not lead writes nothing but its bids
        // for the Lease (one LIST: the daemon's role has no `get` on
        // namespaces).
        let namespaces: kube::Api<k8s_openapi::api::core::v1::Namespace> =
            kube::Api::all(cluster.client().clone());
        let system = kube::api::ListParams::default().fields(&format!(
            "metadata.name={}",
            crate::sync::inventory::SYSTEM_NAMESPACE
        ));
        if !namespaces
            .list_metadata(&system)
            .await
            .is_ok_and(|l| !l.items.is_empty())
        {
            cluster.ensure_system_namespace(false).await?;
        }
        Some(cluster.client().clone())
    } else {
        None
    };
    let owners = Arc::new(shard::Owners::new(
        options.shard,
        &options.lease_name,
        &identity,
        &options.environments,
    ));
    let shared = Arc::new(Shared {
        status: RwLock::new(DaemonStatus::new(
            identity.clone(),
            !options.leader_elect,
            &options.environments,
        )),
        metrics: metrics::Metrics::new(),
        trigger,
        options: options.clone(),
        leading,
        owners,
    });
    let campaign = match campaign {
        Some(client) if options.shard => Some(tokio::spawn(shard::campaign(
            client,
            shared.clone(),
            campaign_stop,
        ))),
        Some(client) => {
            let (metrics_shared, mut leading) = (shared.clone(), shared.leading.clone());
            // The one leader writes every environment: `tenantsync_leader`
            // follows it.
            tokio::spawn(async move {
                loop {
                    let lead = *leading.borrow_and_update();
                    for env in &metrics_shared.options.environments {
                        metrics_shared.metrics.set_leader(env, lead);
                    }
                    if leading.changed().await.is_err() {
                        break;
                    }
                }
            });
            Some(tokio::spawn(leader::campaign(
                client,
                options.lease_name.clone(),
                identity,
                leading_tx,
                campaign_stop,
            )))
        }
        None => {
            for env in &options.environments {
                shared.metrics.set_leader(env, true);
            }
            None
        }
    };
    let (shutdown_tx, shutdown) = watch::channel(false);
    let server = http::start(&options, shared.clone(), shutdown.clone()).await?;
    let _watcher = watch_folder(&options, shared.clone());

    let mut loops = tokio::task::JoinSet::new();
    for env in &options.environments {
        let window = crate::cluster::throttle::start_of(
            options
                .cluster
                .max_writes_in_flight
                .unwrap_or(crate::cluster::throttle::MAX_IN_FLIGHT),
        );
        shared.metrics.init_environment_writing(env, window);
        loops.spawn(reconcile::reconcile_loop(
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

/// A folder's file events are taken as one change once they pause this long
/// (a checkout or a copy of many files writes them with shorter pauses) ...
const FOLDER_PAUSE: Duration = Duration::from_millis(100);
/// ... or once they have come for this long without a pause.
const FOLDER_SETTLE_MAX: Duration = Duration::from_secs(1);

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
    let path = std::path::Path::new(&options.repo).join(crate::declare::validate::ENVIRONMENTS_DIR);
    if let Err(e) = watcher.watch(&path, notify::RecursiveMode::Recursive) {
        tracing::warn!(path = %path.display(), error = %e, "cannot watch the folder; polling only");
        return None;
    }
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            if !settle(&mut rx).await {
                return;
            }
            shared.poke();
        }
    });
    Some(watcher)
}

/// Debounces a folder's file events after the first: an editor's save is
/// several, a checkout many. Returns once they pause for [`FOLDER_PAUSE`],
/// or [`FOLDER_SETTLE_MAX`] after it started while they keep coming (a
/// later event starts another wait); false when the watch has ended.
async fn settle(rx: &mut tokio::sync::mpsc::UnboundedReceiver<()>) -> bool {
    let started = tokio::time::Instant::now();
    loop {
        let pause = tokio::time::timeout(FOLDER_PAUSE, rx.recv());
        match tokio::time::timeout_at(started + FOLDER_SETTLE_MAX, pause).await {
            Ok(Ok(Some(()))) => continue,
            Ok(Ok(None)) => return false,
            Ok(Err(_)) | Err(_) => return true,
        }
    }
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
    if !shared.leads(env) {
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
    let approval = status.approval.clone().unwrap_or_default();
    let mut fields = BTreeMap::from([
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
        (
            "mode".to_string(),
            status.mode.unwrap_or_default().to_string(),
        ),
        (
            "pendingRevision".to_string(),
            status.pending_revision.unwrap_or_default(),
        ),
        (
            "pendingReason".to_string(),
            status.pending_reason.unwrap_or_default().to_string(),
        ),
        (
            "syncWindow".to_string(),
            status.sync_window.unwrap_or_default(),
        ),
        (
            "pendingPlan".to_string(),
            status.pending_plan.unwrap_or_default(),
        ),
        (
            "failedHealth".to_string(),
            status
                .failed_health
                .as_ref()
                .map(|f| f.summary())
                .unwrap_or_default(),
        ),
        ("approvedRevision".to_string(), approval.revision.clone()),
        ("approvedBy".to_string(), approval.by.clone()),
        ("approvedUser".to_string(), approval.user.clone()),
        ("approvedAt".to_string(), approval.at.clone()),
        (
            "rollout".to_string(),
            status
                .rollout
                .as_ref()
                .map(crate::sync::rollout::RolloutStatus::summary)
                .unwrap_or_default(),
        ),
        // The daemon's heartbeat: `tenantsync status` calls a status older
        // than staleAfterSeconds stale.
        ("heartbeatAt".to_string(), now()),
        (
            "staleAfterSeconds".to_string(),
            stale_after(&shared.options).to_string(),
        ),
    ]);
    // Change control's fields are short (a revision, a name, a time, one
    // line of plan or window), and kept short: the inventory's room is the
    // object list's (sync::inventory::CHUNK_BYTES).
    for key in CHANGE_CONTROL_FIELDS {
        if let Some(v) = fields.get_mut(key)
            && v.len() > MAX_CHANGE_CONTROL_VALUE
        {
            *v = v.chars().take(MAX_CHANGE_CONTROL_VALUE / 4).collect();
        }
    }
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

/// The status fields of change control (manual mode, approvals, sync
/// windows) on the inventory.
pub const CHANGE_CONTROL_FIELDS: [&str; 9] = [
    "mode",
    "pendingRevision",
    "pendingReason",
    "syncWindow",
    "pendingPlan",
    "approvedRevision",
    "approvedBy",
    "approvedUser",
    "approvedAt",
];

/// The most bytes one of [`CHANGE_CONTROL_FIELDS`] takes on the inventory.
pub const MAX_CHANGE_CONTROL_VALUE: usize = 512;

/// Seconds after which a daemon's status with no newer heartbeat is stale.
fn stale_after(options: &RunOptions) -> u64 {
    options
        .interval
        .as_secs()
        .saturating_mul(3)
        .saturating_add(15)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    #[tokio::test(start_paused = true)]
    async fn one_save_is_read_after_a_short_pause_and_a_stream_of_events_after_the_longest_wait() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        // One save: a few events at once.
        for _ in 0..3 {
            tx.send(()).unwrap();
        }
        let started = Instant::now();
        assert!(settle(&mut rx).await);
        assert_eq!(started.elapsed(), FOLDER_PAUSE);

        // Events every 20 ms for three seconds (a long checkout): read
        // after the longest wait, not when they end.
        let sender = tx.clone();
        let events = tokio::spawn(async move {
            for _ in 0..150 {
                tokio::time::sleep(Duration::from_millis(20)).await;
                let _ = sender.send(());
            }
        });
        let started = Instant::now();
        assert!(settle(&mut rx).await);
        let waited = started.elapsed();
        assert!(
            waited >= FOLDER_SETTLE_MAX && waited < FOLDER_SETTLE_MAX + FOLDER_PAUSE,
            "{waited:?}"
        );
        events.await.unwrap();

        // The watch ended.
        drop(tx);
        while rx.try_recv().is_ok() {}
        assert!(!settle(&mut rx).await);
    }
}
