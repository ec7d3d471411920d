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
    /// A change received and settling: kept here, not in the future, so a
    /// `select!` that drops [`DriftWatcher::changed`] loses nothing.
    pending: Option<(Box<str>, tokio::time::Instant)>,
}

impl DriftWatcher {
    pub(super) fn new(env: &str) -> DriftWatcher {
        let (tx, rx) = mpsc::channel(QUEUE);
        DriftWatcher {
            env: env.to_string(),
            tx,
            rx,
            current: None,
            pending: None,
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
    /// Cancel-safe: dropped before it returns, the change stays pending.
    pub(super) async fn changed(&mut self) -> (Box<str>, usize) {
        let since = match &self.pending {
            Some((_, since)) => *since,
            None => {
                let Some(first) = self.rx.recv().await else {
                    // The loop holds a sender: never closed.
                    return std::future::pending().await;
                };
                let since = tokio::time::Instant::now();
                self.pending = Some((first, since));
                since
            }
        };
        tokio::time::sleep_until(since + SETTLE).await;
        let mut more = 0;
        while self.rx.try_recv().is_ok() {
            more += 1;
        }
        match self.pending.take() {
            Some((first, _)) => (first, more),
            None => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_change_is_not_lost_when_another_branch_wins_while_it_settles() {
        let mut w = DriftWatcher::new("dev");
        w.tx.try_send("Deployment/ws/fhir".into()).expect("send");
        // Another `select!` branch wins during the settle time.
        tokio::select! {
            _ = w.changed() => panic!("settled too soon"),
            () = tokio::time::sleep(SETTLE / 2) => {},
        }
        let (first, more) = w.changed().await;
        assert_eq!((&*first, more), ("Deployment/ws/fhir", 0));
    }
}
