//! Event-driven drift: an environment's loop keeps one watch set
//! (`cluster::watch`) on the kinds it manages and checks drift as soon as
//! another writer changes one of its objects, instead of waiting for the
//! drift interval (which stays, as a safety net).
//!
//! The check reads only the changed objects' workspaces where that is the
//! same as comparing everything (`Reconciler::check_changed`), and compares
//! everything otherwise; either way the same plan, field ownership policy,
//! gate (sync windows, the environment's lock, a guardrail hold) and apply
//! path as the periodic check, so self-heal re-applies the drifted objects
//! only, and never where the periodic check would not.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::cluster::Cluster;
use crate::cluster::watch::{ChangeSink, ChangeSource, DriftWatch, watched_kinds};
use crate::object::Object;
use crate::sync::inventory::ObjectRef;

/// Changes arriving this soon after the first are checked together (a
/// `kubectl apply` of several objects, an edit that touches a Deployment
/// and its Service).
const SETTLE: Duration = Duration::from_millis(50);

/// Changes queued before the loop looks (more are dropped, and the loop
/// told so: it then checks the whole environment).
const QUEUE: usize = 1024;

/// The objects changed by other writers since the loop last looked.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Changes {
    pub(super) objects: BTreeSet<ObjectRef>,
    /// Some changes were dropped (the queue was full): which objects
    /// changed is not known in full.
    pub(super) overflowed: bool,
}

impl Changes {
    /// Adds `more`; past `limit` objects only "many" is kept (the loop
    /// then checks the whole environment).
    pub(super) fn merge(&mut self, more: Changes, limit: usize) {
        self.overflowed |= more.overflowed;
        if !self.overflowed {
            self.objects.extend(more.objects);
        }
        if self.objects.len() > limit {
            self.overflowed = true;
        }
        if self.overflowed {
            self.objects.clear();
        }
    }
}

pub(super) struct DriftWatcher {
    env: String,
    sink: ChangeSink,
    source: ChangeSource,
    current: Option<DriftWatch>,
    /// A change received and settling: kept here, not in the future, so a
    /// `select!` that drops [`DriftWatcher::changed`] loses nothing.
    pending: Option<(ObjectRef, tokio::time::Instant)>,
    /// How many changes [`DriftWatcher::changed`] has handed out.
    handed_out: u64,
}

impl DriftWatcher {
    pub(super) fn new(env: &str) -> DriftWatcher {
        let (sink, source) = ChangeSink::new(QUEUE);
        DriftWatcher {
            env: env.to_string(),
            sink,
            source,
            current: None,
            pending: None,
            handed_out: 0,
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
        match cluster
            .watch_drift(&self.env, kinds, self.sink.clone())
            .await
        {
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

    /// How many changes of other writers the watches ever reported (read
    /// it twice: the same count, no change in between).
    pub(super) fn sent(&self) -> std::sync::Arc<std::sync::atomic::AtomicU64> {
        self.source.sent()
    }

    /// How many changes [`DriftWatcher::changed`] has handed out: equal to
    /// [`DriftWatcher::sent`], none waits (nor was dropped).
    pub(super) fn handed_out(&self) -> u64 {
        self.handed_out
    }

    /// Since when the watches have seen every change (listed, open, no
    /// break); `None` when not watching.
    pub(super) fn complete_since(&self) -> Option<std::time::Instant> {
        self.current.as_ref()?.complete_since()
    }

    /// The objects changed by other writers, once changes have settled:
    /// every one queued (or, when some were dropped, that they were).
    /// Cancel-safe: dropped before it returns, the change stays pending.
    pub(super) async fn changed(&mut self) -> Changes {
        let since = match &self.pending {
            Some((_, since)) => *since,
            None => {
                let Some(first) = self.source.recv().await else {
                    // The loop holds a sink: never closed.
                    return std::future::pending().await;
                };
                let since = tokio::time::Instant::now();
                self.pending = Some((first, since));
                since
            }
        };
        tokio::time::sleep_until(since + SETTLE).await;
        let mut objects = BTreeSet::new();
        while let Some(more) = self.source.try_recv() {
            objects.insert(more);
            self.handed_out += 1;
        }
        match self.pending.take() {
            Some((first, _)) => {
                objects.insert(first);
                self.handed_out += 1;
                Changes {
                    objects,
                    overflowed: self.source.take_overflowed(),
                }
            }
            None => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(ns: &str, name: &str) -> ObjectRef {
        ObjectRef {
            api_version: "apps/v1".into(),
            kind: "Deployment".into(),
            namespace: Some(ns.into()),
            name: name.into(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_change_is_not_lost_when_another_branch_wins_while_it_settles() {
        let mut w = DriftWatcher::new("dev");
        w.sink.send(deployment("ws", "fhir"));
        // Another `select!` branch wins during the settle time.
        tokio::select! {
            _ = w.changed() => panic!("settled too soon"),
            () = tokio::time::sleep(SETTLE / 2) => {},
        }
        w.sink.send(deployment("ws", "dicom"));
        let changes = tokio::time::timeout(SETTLE * 2, w.changed())
            .await
            .expect("the change was lost");
        assert_eq!(
            changes,
            Changes {
                objects: BTreeSet::from([deployment("ws", "fhir"), deployment("ws", "dicom")]),
                overflowed: false
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn changes_dropped_by_a_full_queue_are_reported_as_overflowed_never_silently_lost() {
        let mut w = DriftWatcher::new("dev");
        for i in 0..=QUEUE {
            w.sink.send(deployment("ws", &format!("d{i}")));
        }
        let changes = w.changed().await;
        assert!(changes.overflowed, "a dropped change went unreported");
        assert_eq!(changes.objects.len(), QUEUE);
        let sent = w.sent().load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(sent, QUEUE as u64 + 1);
        assert_eq!(
            w.handed_out(),
            QUEUE as u64,
            "a dropped change counts as waiting"
        );
        // The mark is cleared once reported.
        w.sink.send(deployment("ws", "again"));
        assert!(!w.changed().await.overflowed);
    }

    #[test]
    fn merged_changes_past_the_limit_or_overflowed_become_many() {
        let one = |name: &str| Changes {
            objects: BTreeSet::from([deployment("ws", name)]),
            overflowed: false,
        };
        let mut pending = Changes::default();
        pending.merge(one("a"), 2);
        pending.merge(one("b"), 2);
        assert_eq!(pending.objects.len(), 2);
        assert!(!pending.overflowed);
        pending.merge(one("c"), 2);
        assert!(pending.overflowed && pending.objects.is_empty());
        // Once many, always many until taken.
        pending.merge(one("d"), 2);
        assert!(pending.overflowed && pending.objects.is_empty());
        let mut other = Changes::default();
        other.merge(
            Changes {
                objects: BTreeSet::new(),
                overflowed: true,
            },
            10,
        );
        assert!(other.overflowed);
    }
}
