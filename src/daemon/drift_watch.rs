//! Event-driven drift: an environment's loop keeps one watch set
//! (`cluster::watch`) on the kinds it manages and checks drift as soon as
//! another writer changes one of its objects, instead of waiting for the
//! drift interval (which stays, as a safety net).
//!
//! The check is the loop's ordinary drift check: the same plan, field
//! ownership policy, gate (sync windows, the environment's lock, a guardrail
//! hold) and apply path as the periodic one, so self-heal re-applies the
//! drifted objects only, and never where the periodic check would not.

use std::time::Duration;

use tokio::sync::mpsc;

use crate::cluster::Cluster;
use crate::cluster::watch::{DriftWatch, watched_kinds};
use crate::object::Object;

/// Changes arriving this soon after the first are checked together (a
/// `kubectl apply` of several objects, an edit that touches a Deployment
/// and its Service).
const SETTLE: Duration = Duration::from_millis(50);

/// Changes queued before the loop looks (more are dropped: a check is
/// already due and covers them).
const QUEUE: usize = 1024;

pub(super) struct DriftWatcher {
    env: String,
    tx: mpsc::Sender<Box<str>>,
    rx: mpsc::Receiver<Box<str>>,
    current: Option<DriftWatch>,
}

impl DriftWatcher {
    pub(super) fn new(env: &str) -> DriftWatcher {
        let (tx, rx) = mpsc::channel(QUEUE);
        DriftWatcher {
            env: env.to_string(),
            tx,
            rx,
            current: None,
        }
    }

    /// Watches the kinds of `objects` (and every kind tenantsync renders),
    /// starting the watches on first use and again when the kinds change.
    pub(super) async fn ensure(&mut self, cluster: &Cluster, objects: &[Object]) {
        let extra = crate::sync::inventory::kinds_to_list(objects, None);
        let kinds = watched_kinds(&extra);
        if self.current.as_ref().is_some_and(|w| *w.kinds() == kinds) {
            return;
        }
        // The old watches stop before the new ones start.
        self.current = None;
        match cluster.watch_drift(&self.env, kinds, self.tx.clone()).await {
            Ok(watch) => {
                tracing::info!(
                    environment = %self.env,
                    kinds = watch.kinds().len(),
                    "watching the environment's objects for drift"
                );
                self.current = Some(watch);
            }
            Err(e) => {
                tracing::warn!(environment = %self.env, error = %e, "cannot watch for drift; it is checked every --drift-interval")
            }
        }
    }

    /// Since when the watches have seen every change (listed, open, no
    /// break); `None` when not watching.
    pub(super) fn complete_since(&self) -> Option<std::time::Instant> {
        self.current.as_ref()?.complete_since()
    }

    /// The next object changed by another writer, once changes have
    /// settled: the first one's identity and how many came with it.
    pub(super) async fn changed(&mut self) -> (Box<str>, usize) {
        let Some(first) = self.rx.recv().await else {
            // The loop holds a sender: never closed.
            return std::future::pending().await;
        };
        tokio::time::sleep(SETTLE).await;
        let mut more = 0;
        while self.rx.try_recv().is_ok() {
            more += 1;
        }
        (first, more)
    }
}
