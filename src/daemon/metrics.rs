//! Prometheus metrics of the daemon.

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::sync::report::SyncReport;

type Labels = Vec<(String, String)>;

pub struct Metrics {
    registry: Mutex<Registry>,
    reconcile_duration: Family<Labels, Histogram>,
    applied: Family<Labels, Counter>,
    pruned: Family<Labels, Counter>,
    failed: Family<Labels, Counter>,
    drifted: Family<Labels, Gauge>,
    workspace_failed: Family<Labels, Gauge>,
    fetch_failures: Family<Labels, Counter>,
    last_success: Family<Labels, Gauge>,
    sync_status: Family<Labels, Gauge>,
    reconcile_errors: Family<Labels, Counter>,
    last_successful_reconcile: Family<Labels, Gauge>,
    pending: Family<Labels, Gauge>,
    rollout_step: Family<Labels, Gauge>,
    rollbacks: Family<Labels, Counter>,
    leader: Family<Labels, Gauge>,
    watch_changes: Family<Labels, Counter>,
    api_limit: Family<Labels, Gauge>,
    api_throttled: Family<Labels, Counter>,
    /// Workspaces with a drift series, per environment.
    drift_workspaces: Mutex<std::collections::BTreeMap<String, Vec<String>>>,
}

/// The values of the `status` label of `tenantsync_sync_status`.
pub const STATUSES: [&str; 6] = [
    "Unknown",
    "Synced",
    "OutOfSync",
    "Syncing",
    "Failed",
    "RolledBack",
];

fn env_label(env: &str) -> Labels {
    vec![("environment".to_string(), env.to_string())]
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("tenantsync");
        let reconcile_duration = Family::<Labels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.01, 2.0, 14))
        });
        let m = Metrics {
            registry: Mutex::new(Registry::default()),
            reconcile_duration,
            applied: Family::default(),
            pruned: Family::default(),
            failed: Family::default(),
            drifted: Family::default(),
            workspace_failed: Family::default(),
            fetch_failures: Family::default(),
            last_success: Family::default(),
            sync_status: Family::default(),
            reconcile_errors: Family::default(),
            last_successful_reconcile: Family::default(),
            pending: Family::default(),
            rollout_step: Family::default(),
            rollbacks: Family::default(),
            leader: Family::default(),
            watch_changes: Family::default(),
            api_limit: Family::default(),
            api_throttled: Family::default(),
            drift_workspaces: Mutex::new(std::collections::BTreeMap::new()),
        };
        registry.register(
            "reconcile_duration_seconds",
            "Duration of one reconcile of an environment",
            m.reconcile_duration.clone(),
        );
        registry.register(
            "objects_applied",
            "Objects created or updated by server-side apply",
            m.applied.clone(),
        );
        registry.register(
            "objects_pruned",
            "Objects deleted because no declaration produces them any more",
            m.pruned.clone(),
        );
        registry.register(
            "objects_failed",
            "Objects that failed to apply or prune, conflicts included",
            m.failed.clone(),
        );
        registry.register(
            "drifted_objects",
            "Objects out of step with Git, per workspace",
            m.drifted.clone(),
        );
        registry.register(
            "workspace_failed",
            "1 while a workspace is invalid and held at its last applied state, else 0",
            m.workspace_failed.clone(),
        );
        registry.register(
            "git_fetch_failures",
            "Failed reads of the repository",
            m.fetch_failures.clone(),
        );
        registry.register(
            "last_successful_sync_timestamp_seconds",
            "Unix time of the last successful sync of an environment",
            m.last_success.clone(),
        );
        registry.register(
            "sync_status",
            "1 for an environment's current sync status (Unknown, Synced, OutOfSync, Syncing, Failed, RolledBack), 0 for the others",
            m.sync_status.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconciles that failed, by reason (source, untrusted, invalid, render, cluster, guard, apply, locked)",
            m.reconcile_errors.clone(),
        );
        registry.register(
            "last_successful_reconcile_timestamp_seconds",
            "Unix time of the last reconcile of an environment that succeeded (a no-op included)",
            m.last_successful_reconcile.clone(),
        );
        registry.register(
            "pending",
            "1 while a new revision of a manual environment waits for `tenantsync approve` (or for a sync window), else 0",
            m.pending.clone(),
        );
        registry.register(
            "rollout_step",
            "The step a progressive rollout (syncPolicy.rollout) of an environment applied last, from 1, by phase (Progressing, Pausing, Failed, RolledBack); 0 when none is under way or stopped",
            m.rollout_step.clone(),
        );
        registry.register(
            "rollbacks",
            "Revisions whose failed health rolled workspaces back to their last healthy revision (syncPolicy.rollback)",
            m.rollbacks.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica may write the environment (it holds the leader Lease, or with --shard the environment's Lease; always 1 without leader election), else 0",
            m.leader.clone(),
        );
        registry.register(
            "watch_changes",
            "Changes to managed objects by another writer seen by the daemon's watches, each starting a drift check",
            m.watch_changes.clone(),
        );
        registry.register(
            "api_write_concurrency",
            "Writes the environment's syncs keep in flight to the API server, as of the last reconcile: at most --max-writes-in-flight (8 unless set), halved on 429 Too Many Requests, a quarter less on much slower answers, one more per window of answers as fast as usual",
            m.api_limit.clone(),
        );
        registry.register(
            "api_throttled_responses",
            "429 Too Many Requests answers from the API server to the environment's connection (requests are sent again after the Retry-After, for up to 60 s)",
            m.api_throttled.clone(),
        );
        if let Ok(mut r) = m.registry.lock() {
            *r = registry;
        }
        m
    }

    /// A rollout's step and phase; `None` when none is under way or stopped.
    pub fn set_rollout(&self, env: &str, step: Option<(usize, &str)>) {
        for phase in ["Progressing", "Pausing", "Failed", "RolledBack"] {
            let labels = vec![
                ("environment".to_string(), env.to_string()),
                ("phase".to_string(), phase.to_string()),
            ];
            let value = match step {
                Some((n, p)) if p == phase => i64::try_from(n).unwrap_or(i64::MAX),
                _ => 0,
            };
            self.rollout_step.get_or_create(&labels).set(value);
        }
    }

    /// Creates an environment's counters at zero, so they exist before the
    /// first event (a dashboard sees 0, not "no data").
    pub fn init_environment(&self, env: &str) {
        self.init_environment_writing(env, crate::cluster::throttle::START_IN_FLIGHT);
    }

    /// [`Metrics::init_environment`], its window of writes in flight
    /// starting at `window`.
    pub fn init_environment_writing(&self, env: &str, window: usize) {
        let l = env_label(env);
        let _ = self.applied.get_or_create(&l);
        let _ = self.pruned.get_or_create(&l);
        let _ = self.failed.get_or_create(&l);
        let _ = self.fetch_failures.get_or_create(&l);
        let _ = self.rollbacks.get_or_create(&l);
        let _ = self.watch_changes.get_or_create(&l);
        let _ = self.api_throttled.get_or_create(&l);
        self.api_limit
            .get_or_create(&l)
            .set(i64::try_from(window).unwrap_or(i64::MAX));
        self.set_status(env, "Unknown");
        self.set_pending(env, false);
    }

    /// Whether this replica may write the environment.
    pub fn set_leader(&self, env: &str, leader: bool) {
        self.leader
            .get_or_create(&env_label(env))
            .set(i64::from(leader));
    }

    /// Whether a new revision of the environment waits (approval or window).
    pub fn set_pending(&self, env: &str, pending: bool) {
        self.pending
            .get_or_create(&env_label(env))
            .set(i64::from(pending));
    }

    /// The environment's sync status: 1 for `status`, 0 for the others.
    pub fn set_status(&self, env: &str, status: &str) {
        for s in STATUSES {
            let labels = vec![
                ("environment".to_string(), env.to_string()),
                ("status".to_string(), s.to_string()),
            ];
            self.sync_status
                .get_or_create(&labels)
                .set(i64::from(s == status));
        }
    }

    pub fn reconcile_failed(&self, env: &str, reason: &str) {
        let labels = vec![
            ("environment".to_string(), env.to_string()),
            ("reason".to_string(), reason.to_string()),
        ];
        self.reconcile_errors.get_or_create(&labels).inc();
    }

    pub fn reconcile_succeeded(&self, env: &str) {
        let secs = k8s_openapi::jiff::Timestamp::now().as_second();
        self.last_successful_reconcile
            .get_or_create(&env_label(env))
            .set(secs);
    }

    /// Current drift per workspace, replacing what was there (a workspace
    /// gone from the environment drops out).
    pub fn set_current_drift(
        &self,
        env: &str,
        per_workspace: &std::collections::BTreeMap<String, usize>,
    ) {
        if let Ok(mut known) = self.drift_workspaces.lock() {
            let entry = known.entry(env.to_string()).or_default();
            for ws in entry.iter() {
                if !per_workspace.contains_key(ws) {
                    self.drifted.remove(&vec![
                        ("environment".to_string(), env.to_string()),
                        ("workspace".to_string(), ws.clone()),
                    ]);
                }
            }
            *entry = per_workspace.keys().cloned().collect();
        }
        for (ws, n) in per_workspace {
            self.set_drift(env, ws, *n);
        }
    }

    pub fn observe_reconcile(&self, env: &str, took: Duration) {
        self.reconcile_duration
            .get_or_create(&env_label(env))
            .observe(took.as_secs_f64());
    }

    pub fn rolled_back(&self, env: &str) {
        self.rollbacks.get_or_create(&env_label(env)).inc();
    }

    /// The connection's window of writes in flight, and the 429s it was
    /// answered since the last call.
    pub fn set_api_throttle(&self, env: &str, limit: usize, new_429s: u64) {
        let l = env_label(env);
        self.api_limit
            .get_or_create(&l)
            .set(i64::try_from(limit).unwrap_or(i64::MAX));
        self.api_throttled.get_or_create(&l).inc_by(new_429s);
    }

    /// A watch saw another writer change a managed object.
    pub fn watch_change(&self, env: &str) {
        self.watch_changes.get_or_create(&env_label(env)).inc();
    }

    pub fn git_fetch_failed(&self, env: &str) {
        self.fetch_failures.get_or_create(&env_label(env)).inc();
    }

    pub fn set_drift(&self, env: &str, workspace: &str, n: usize) {
        let labels = vec![
            ("environment".to_string(), env.to_string()),
            ("workspace".to_string(), workspace.to_string()),
        ];
        self.drifted
            .get_or_create(&labels)
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Whether a workspace is held at its last applied state (invalid).
    pub fn set_workspace_failed(&self, env: &str, workspace: &str, failed: bool) {
        let labels = vec![
            ("environment".to_string(), env.to_string()),
            ("workspace".to_string(), workspace.to_string()),
        ];
        self.workspace_failed
            .get_or_create(&labels)
            .set(i64::from(failed));
    }

    pub fn record_sync(&self, env: &str, r: &SyncReport) {
        let l = env_label(env);
        let n = |v: usize| u64::try_from(v).unwrap_or(u64::MAX);
        self.applied
            .get_or_create(&l)
            .inc_by(n(r.created.len() + r.updated.len() + r.recreated.len()));
        self.pruned.get_or_create(&l).inc_by(n(r.pruned.len()));
        self.failed
            .get_or_create(&l)
            .inc_by(n(r.failures.len() + r.conflicts.len()));
        if r.succeeded() {
            let secs = k8s_openapi::jiff::Timestamp::now().as_second();
            self.last_success.get_or_create(&l).set(secs);
        }
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Ok(registry) = self.registry.lock() {
            let _ = encode(&mut out, &registry);
        }
        out
    }
}
