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
    /// Kubeconfig context per environment (the default one otherwise).
    pub contexts: BTreeMap<String, String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub enum SyncStatus {
    #[default]
    Unknown,
    Synced,
    OutOfSync,
    Failed,
}

#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkspaceStatus {
    pub sync_status: SyncStatus,
    pub drifted_objects: usize,
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
    pub drifted_objects: usize,
    pub workspaces: BTreeMap<String, WorkspaceStatus>,
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

    /// Ready once every environment has been reconciled at least once.
    pub fn ready(&self) -> bool {
        self.status.read().is_ok_and(|s| {
            self.options.environments.iter().all(|e| {
                s.environments
                    .get(e)
                    .is_some_and(|st| st.last_reconcile_at.is_some())
            })
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
fn revision_of(tree: &SourceTree, git: Option<source::git::Revision>) -> String {
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
        cluster.ensure_system_namespace(false).await?;
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
    let mut desired: Option<Desired> = None;
    // Why the newest revision cannot be applied (unreadable or invalid):
    // kept, and the status kept Failed, until a good revision arrives.
    let mut source_problem: Option<String> = None;
    // The status fields last written onto the inventory.
    let mut written: BTreeMap<String, String> = BTreeMap::new();
    let mut backoff = Duration::from_secs(1);
    let mut next_poll = Instant::now();
    let mut next_drift = Instant::now() + options.drift_interval;
    loop {
        let now_i = Instant::now();
        let poll = now_i >= next_poll;
        let drift = now_i >= next_drift;
        if poll || drift {
            let started = Instant::now();
            let ok = reconcile(
                &env,
                &shared,
                &mut cluster,
                &mut desired,
                &mut source_problem,
                poll,
            )
            .await;
            shared.metrics.observe_reconcile(&env, started.elapsed());
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
        let wake = tokio::time::Instant::from_std(next_poll.min(next_drift));
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {},
            changed = trigger.changed() => {
                if changed.is_ok() { next_poll = Instant::now(); }
            },
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
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

/// One reconcile. `from_source`: read the source (a poll or a trigger);
/// otherwise only check the cluster against the last good revision.
async fn reconcile(
    env: &str,
    shared: &Shared,
    cluster: &mut Option<Cluster>,
    desired: &mut Option<Desired>,
    source_problem: &mut Option<String>,
    from_source: bool,
) -> bool {
    let options = &shared.options;
    let fail = |message: String| {
        tracing::warn!(environment = env, error = %message, "reconcile failed");
        shared.update(env, |s| {
            s.sync_status = SyncStatus::Failed;
            s.last_error = Some(message.clone());
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
                return fail(message);
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
                    let resolved = repository.resolve(env);
                    drop(repository);
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
                            return fail(message);
                        }
                        Ok(environment) => match render::render(&environment) {
                            Err(e) => {
                                return fail(format!("cannot render revision {revision}: {e}"));
                            }
                            Ok(objects) => {
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
                                        return fail(message);
                                    }
                                };
                                *source_problem = None;
                                *desired = Some(Desired {
                                    revision: revision.clone(),
                                    objects,
                                    sync: SyncOptions {
                                        prune: options.prune || policy.prune,
                                        force_conflicts: effective.force_conflicts,
                                        max_prune_percent: effective.max_prune_percent,
                                        allow_mass_prune: options.allow_mass_prune,
                                        ..SyncOptions::default()
                                    },
                                    ownership: environment.settings.ownership.clone(),
                                });
                            }
                        },
                    }
                }
            }
        }
    }
    let Some(state) = desired.as_ref() else {
        return fail("no valid revision yet".into());
    };

    if cluster.is_none() {
        let mut cluster_options = options.cluster.clone();
        if let Some(context) = options.contexts.get(env) {
            cluster_options.context = Some(context.clone());
        }
        match Cluster::connect(&cluster_options).await {
            Ok(c) => *cluster = Some(c),
            Err(e) => return fail(format!("{e}")),
        }
    }
    let Some(c) = cluster.as_ref() else {
        return false;
    };
    let result: Result<(Plan, Option<cluster_sync::SyncReport>), String> = async {
        let inv = c.read_inventory(env).await.map_err(|e| e.to_string())?;
        let kinds = inventory::kinds_to_list(&state.objects, inv.as_ref());
        let mut planner =
            diff::Planner::new(env, &state.objects, false).with_ownership(state.ownership.clone());
        c.for_each_managed(env, &kinds, |o| planner.observe(o))
            .await
            .map_err(|e| e.to_string())?;
        let empty = inventory::Inventory::new(env);
        let (mut plan, undeclared) = planner.finish(
            Some(inv.as_ref().unwrap_or(&empty)),
            Some(state.revision.clone()),
            0,
        );
        // Never adopt: what exists without being this environment's is
        // left alone (the daemon has no --adopt).
        let existing = c.find_existing(&plan).await.map_err(|e| e.to_string())?;
        crate::tenancy::settle_ownership(
            &mut plan,
            inv.as_ref().unwrap_or(&empty),
            &existing,
            false,
        );
        // A revision not yet applied is synced; between revisions, drift is
        // re-applied only with self-heal.
        let applied_rev = inv.as_ref().and_then(|i| i.revision.clone());
        let new_revision = applied_rev.as_deref() != Some(state.revision.as_str());
        // A replica that does not lead only reports.
        if !*shared.leading.borrow() {
            return Ok((plan, None));
        }
        let heal = options.self_heal && plan.summary.has_changes();
        if !new_revision && !heal {
            return Ok((plan, None));
        }
        // Healing takes the drifted fields back from whoever changed them.
        let mut sync_options = state.sync.clone();
        sync_options.force_conflicts |= heal && !new_revision;
        let report = cluster_sync::sync(
            c,
            &plan,
            &state.objects,
            inv,
            &undeclared,
            &sync_options,
            Some(state.revision.clone()),
            |_| {},
        )
        .await
        .map_err(|e| e.to_string())?;
        Ok((plan, Some(report)))
    }
    .await;

    match result {
        Err(e) => {
            // A connection may be broken: reconnect next time.
            *cluster = None;
            fail(e)
        }
        Ok((plan, report)) => {
            let drifted = drift_by_workspace(&plan);
            for (ws, n) in &drifted {
                shared.metrics.set_drift(env, ws, *n);
            }
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
            } else if plan.summary.has_changes() {
                tracing::warn!(
                    environment = env,
                    drifted = plan.summary.update + plan.summary.create + plan.summary.delete,
                    "drift detected (self-heal is off)"
                );
            }
            let sync_error = report.as_ref().filter(|r| !r.succeeded()).map(|r| {
                let mut lines: Vec<String> = r.failures.iter().map(|f| f.message.clone()).collect();
                lines.extend(r.conflicts.iter().map(|c| format!("{}: conflict", c.id)));
                lines.join("\n")
            });
            let error = source_problem.clone().or(sync_error);
            let status = if source_problem.is_some() {
                SyncStatus::Failed
            } else {
                status
            };
            shared.update(env, |s| {
                s.sync_status = status;
                s.last_reconcile_at = Some(now());
                if let Some(r) = &report {
                    s.last_sync_at = Some(now());
                    if r.succeeded() {
                        s.last_applied_revision = Some(state.revision.clone());
                    }
                } else if status == SyncStatus::Synced {
                    s.last_applied_revision = Some(state.revision.clone());
                }
                s.drifted_objects = if report.is_some() {
                    0
                } else {
                    drifted.values().sum()
                };
                s.workspaces = drifted
                    .iter()
                    .map(|(ws, n)| {
                        let n = if report.is_some() { 0 } else { *n };
                        (
                            ws.clone(),
                            WorkspaceStatus {
                                sync_status: if n > 0 { SyncStatus::OutOfSync } else { status },
                                drifted_objects: n,
                            },
                        )
                    })
                    .collect();
                match &error {
                    Some(e) => {
                        s.last_error = Some(e.clone());
                        s.last_error_at = Some(now());
                    }
                    None => s.last_error = None,
                }
            });
            error.is_none()
        }
    }
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
