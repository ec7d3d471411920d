//! Watching an environment's objects for drift.
//!
//! One WATCH per kind tenantsync manages, across namespaces, with the
//! environment's label selector (the same as its LISTs), through
//! kube-runtime's watcher: bookmarks on, a watch resumed from the last
//! `resourceVersion` it saw, a relist on `410 Gone`, and a backoff (0.25 s
//! doubling up to 5 s) while the API server cannot be reached. Per object
//! only a [`DriftCache`] fingerprint is kept, never the body. An object
//! changed or deleted by someone other than tenantsync is sent, by its
//! identity ([`ObjectRef`]), to the daemon, which then checks drift at once
//! (a full queue is flagged, never silent).
//! A quiet environment costs one open WATCH per kind: no LIST.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{Cluster, ClusterError, api_resource, api_version_of};
use crate::object;
use crate::plan::drift_cache::{DriftCache, Fingerprint, OwnManagers};
use crate::sync::inventory::ObjectRef;

/// Where the watches send the objects another writer changed or deleted.
/// Bounded: a change that finds it full is dropped and the sink marked
/// overflowed, so the receiver knows it missed some and checks everything.
#[derive(Clone)]
pub struct ChangeSink {
    tx: mpsc::Sender<ObjectRef>,
    overflowed: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
}

impl ChangeSink {
    /// A sink holding up to `capacity` changes, and its receiving end.
    pub fn new(capacity: usize) -> (ChangeSink, ChangeSource) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let overflowed = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        (
            ChangeSink {
                tx,
                overflowed: overflowed.clone(),
                sent: sent.clone(),
            },
            ChangeSource {
                rx,
                overflowed,
                sent,
            },
        )
    }

    /// Queues a change; when the queue is full, marks the sink overflowed.
    pub fn send(&self, changed: ObjectRef) {
        self.sent.fetch_add(1, Ordering::SeqCst);
        if self.tx.try_send(changed).is_err() {
            self.overflowed.store(true, Ordering::SeqCst);
        }
    }
}

/// The receiving end of a [`ChangeSink`].
pub struct ChangeSource {
    rx: mpsc::Receiver<ObjectRef>,
    overflowed: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
}

impl ChangeSource {
    /// The next change; waits for one (never ends while a sink lives).
    pub async fn recv(&mut self) -> Option<ObjectRef> {
        self.rx.recv().await
    }

    /// A change already queued, without waiting.
    pub fn try_recv(&mut self) -> Option<ObjectRef> {
        self.rx.try_recv().ok()
    }

    /// How many changes were ever sent (dropped ones too): unchanged
    /// between two readings, no other writer changed anything meanwhile.
    pub fn sent(&self) -> Arc<AtomicU64> {
        self.sent.clone()
    }

    /// Whether changes were dropped since the last call (the queue was
    /// full); clears the mark.
    pub fn take_overflowed(&self) -> bool {
        self.overflowed.swap(false, Ordering::SeqCst)
    }
}

/// The API server ends each WATCH after this long (the watcher then
/// resumes from the last `resourceVersion`: a WATCH, not a LIST). Shorter
/// than [`WATCH_READ_TIMEOUT`], so a quiet watch is never taken for a dead
/// connection.
const WATCH_SECONDS: u32 = 100;

/// How long a watch connection may stay silent before it is taken for dead
/// and reopened (the API server sends a bookmark about every minute).
pub(super) const WATCH_READ_TIMEOUT: Duration = Duration::from_secs(120);

/// The watches of one environment; dropping it stops them.
pub struct DriftWatch {
    kinds: BTreeSet<(String, String)>,
    tasks: Vec<JoinHandle<()>>,
    health: Health,
}

impl DriftWatch {
    /// The kinds (`apiVersion`, `kind`) watched.
    pub fn kinds(&self) -> &BTreeSet<(String, String)> {
        &self.kinds
    }

    /// Since when every watch has been listed and open without a break:
    /// a change by another writer since then has been seen. `None` while
    /// one is (re)listing or failing.
    pub fn complete_since(&self) -> Option<Instant> {
        self.health.complete_since()
    }
}

/// Whether an environment's watches can vouch for what they saw: each
/// listed (not relisting) and not failing lately. A watch that fails retries
/// at least every [`BACKOFF_MAX`] plus a connect timeout, so one with no
/// failure for [`SETTLED`] is open again; it lost nothing meanwhile (it
/// resumed from its last `resourceVersion`, or relisted and reported what
/// changed), yet the first poll after is a full comparison.
#[derive(Clone, Default)]
struct Health(Arc<Mutex<Vec<KindHealth>>>);

#[derive(Clone, Copy, Default)]
struct KindHealth {
    listed_at: Option<Instant>,
    failed_at: Option<Instant>,
}

/// A failing watch's longest wait before it tries again.
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// How long after its last failure a watch counts as open again.
const SETTLED: Duration = Duration::from_secs(15);

impl Health {
    /// A new watch's slot.
    fn add(&self) -> usize {
        self.0
            .lock()
            .map(|mut v| {
                v.push(KindHealth::default());
                v.len() - 1
            })
            .unwrap_or(usize::MAX)
    }

    fn set(&self, slot: usize, f: impl FnOnce(&mut KindHealth)) {
        if let Ok(mut v) = self.0.lock()
            && let Some(k) = v.get_mut(slot)
        {
            f(k);
        }
    }

    fn complete_since(&self) -> Option<Instant> {
        let now = Instant::now();
        let kinds = self.0.lock().ok()?;
        let mut since: Option<Instant> = None;
        for k in kinds.iter() {
            let mut at = k.listed_at?;
            if let Some(failed) = k.failed_at {
                if now.saturating_duration_since(failed) < SETTLED {
                    return None;
                }
                at = at.max(failed);
            }
            since = Some(since.map_or(at, |s| s.max(at)));
        }
        since
    }
}

/// The watcher's wait between attempts: 250 ms doubling up to
/// [`BACKOFF_MAX`], from the start again once an event arrives.
struct WatchBackoff(Duration);

const BACKOFF_MIN: Duration = Duration::from_millis(250);

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let wait = self.0;
        self.0 = (self.0 * 2).min(BACKOFF_MAX);
        Some(wait)
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.0 = BACKOFF_MIN;
    }
}

impl Drop for DriftWatch {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// The kinds an environment's watch covers: every kind tenantsync renders,
/// and the further kinds `extra` names (plain manifests' kinds).
pub fn watched_kinds(extra: &[(String, String)]) -> BTreeSet<(String, String)> {
    object::MANAGED_KINDS
        .iter()
        .map(|k| (api_version_of(k), k.kind.to_string()))
        .chain(extra.iter().cloned())
        .collect()
}

impl Cluster {
    /// Starts one WATCH per kind of `kinds` (see [`watched_kinds`]) on the
    /// objects of `environment`; each object another writer changes or
    /// deletes goes to `changed`. A kind the API server does not
    /// serve (a CRD not installed yet) is not watched; the periodic drift
    /// check still covers it.
    pub async fn watch_drift(
        &self,
        environment: &str,
        kinds: BTreeSet<(String, String)>,
        changed: ChangeSink,
    ) -> Result<DriftWatch, ClusterError> {
        let own = OwnManagers::new(environment);
        let selector = object::selector(environment);
        let mut tasks = Vec::new();
        let health = Health::default();
        for (api_version, kind) in &kinds {
            let resource = match object::MANAGED_KINDS
                .iter()
                .find(|k| k.kind == kind && api_version_of(k) == *api_version)
            {
                Some(k) => api_resource(k),
                None => match self.resolve_kind(api_version, kind).await? {
                    Some((resource, _)) => resource,
                    None => continue,
                },
            };
            tasks.push(tokio::spawn(watch_kind(
                (health.clone(), health.add()),
                self.watch_client.clone(),
                (resource, kind.clone(), selector.clone()),
                own.clone(),
                environment.to_string(),
                changed.clone(),
            )));
        }
        Ok(DriftWatch {
            kinds,
            tasks,
            health,
        })
    }
}

async fn watch_kind(
    (health, slot): (Health, usize),
    client: kube::Client,
    (resource, kind, selector): (ApiResource, String, String),
    own: OwnManagers,
    environment: String,
    changed: ChangeSink,
) {
    let api_version: crate::object::Name = resource.api_version.as_str().into();
    let api: Api<DynamicObject> = Api::all_with(client, &resource);
    let config = watcher::Config::default()
        .labels(&selector)
        .timeout(WATCH_SECONDS);
    let mut events =
        std::pin::pin!(watcher::watcher(api, config).backoff(WatchBackoff(BACKOFF_MIN)));
    let mut cache: DriftCache<WatchedId> = DriftCache::new();
    // The last failure logged, so a server away for minutes is one line.
    let mut failing: Option<String> = None;
    let kind_name: crate::object::Name = kind.as_str().into();
    let notify = |(namespace, name): &WatchedId| {
        changed.send(ObjectRef {
            api_version: api_version.clone(),
            kind: kind_name.clone(),
            namespace: namespace.clone(),
            name: name.as_ref().into(),
        });
    };
    // Each namespace's name held once across its objects.
    let mut names = object::Names::default();
    while let Some(event) = events.next().await {
        let event = match event {
            Ok(event) => event,
            Err(e) => {
                health.set(slot, |k| k.failed_at = Some(Instant::now()));
                let message = watch_error(&e, &resource);
                if failing.as_deref() != Some(message.as_str()) {
                    tracing::warn!(environment = %environment, kind = %kind, error = %message, "watch failed; retrying with backoff (drift is still checked every --drift-interval)");
                    failing = Some(message);
                }
                continue;
            }
        };
        if failing.take().is_some() {
            tracing::info!(environment = %environment, kind = %kind, "watch resumed");
        }
        match event {
            Event::Init => {
                health.set(slot, |k| k.listed_at = None);
                cache.relisting();
            }
            Event::InitApply(o) | Event::Apply(o) => {
                if let Some(id) = identity(&o, &mut names) {
                    let fingerprint = fingerprint(&o, &own);
                    if cache.applied(id.clone(), fingerprint) {
                        notify(&id);
                    }
                }
            }
            Event::Delete(o) => {
                if let Some(id) = identity(&o, &mut names)
                    && cache.deleted(&id)
                {
                    notify(&id);
                }
            }
            Event::InitDone => {
                for id in cache.relisted() {
                    notify(&id);
                }
                health.set(slot, |k| k.listed_at = Some(Instant::now()));
                tracing::info!(environment = %environment, kind = %kind, objects = cache.len(), "watch listed");
            }
        }
    }
}

/// An object's identity within its kind's watch: namespace and name.
type WatchedId = (Option<crate::object::Name>, Box<str>);

/// An object's [`WatchedId`]; `None` for tenantsync's own objects in its
/// namespace (inventories, approvals), which are not drift.
fn identity(o: &DynamicObject, names: &mut object::Names) -> Option<WatchedId> {
    let namespace = o.metadata.namespace.as_deref();
    if namespace == Some(crate::sync::inventory::SYSTEM_NAMESPACE) {
        return None;
    }
    let name = o.metadata.name.as_deref()?;
    Some((namespace.map(|ns| names.get(ns)), name.into()))
}

fn fingerprint(o: &DynamicObject, own: &OwnManagers) -> Fingerprint {
    let body = serde_json::to_value(o).unwrap_or_default();
    Fingerprint::of(&body, own)
}

/// A watch failure in words, with what to do about a refused one.
fn watch_error(e: &watcher::Error, resource: &ApiResource) -> String {
    let status = match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => Some(s.code),
        watcher::Error::WatchError(s) => Some(s.code),
        _ => None,
    };
    let plural = if resource.group.is_empty() {
        resource.plural.clone()
    } else {
        format!("{}.{}", resource.plural, resource.group)
    };
    match status {
        Some(403) => format!(
            "{e}: the daemon's credentials may not `watch` {plural}; grant it (deploy/rbac.yaml does)"
        ),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_up_to_five_seconds_and_starts_over_on_reset() {
        use kube::runtime::utils::Backoff;
        let mut b = WatchBackoff(BACKOFF_MIN);
        let waits: Vec<_> = (0..7).filter_map(|_| b.next()).collect();
        assert_eq!(waits[0], Duration::from_millis(250));
        assert_eq!(waits[1], Duration::from_millis(500));
        assert_eq!(waits[5], BACKOFF_MAX);
        assert_eq!(waits[6], BACKOFF_MAX);
        b.reset();
        assert_eq!(b.next(), Some(BACKOFF_MIN));
    }

    #[test]
    fn watches_vouch_only_once_all_listed_and_none_failed_lately() {
        let health = Health::default();
        let (a, b) = (health.add(), health.add());
        assert_eq!(health.complete_since(), None);
        let listed = Instant::now();
        health.set(a, |k| k.listed_at = Some(listed));
        assert_eq!(health.complete_since(), None, "one kind not listed yet");
        health.set(b, |k| k.listed_at = Some(listed));
        assert_eq!(health.complete_since(), Some(listed));
        // A failure just now: nothing vouched for until it settles.
        health.set(b, |k| k.failed_at = Some(Instant::now()));
        assert_eq!(health.complete_since(), None);
        // Settled: vouched for since the failure, not since the listing.
        let long_ago = Instant::now() - SETTLED - Duration::from_secs(1);
        health.set(b, |k| k.failed_at = Some(long_ago));
        assert_eq!(health.complete_since(), Some(listed.max(long_ago)));
        // A relist in progress.
        health.set(a, |k| k.listed_at = None);
        assert_eq!(health.complete_since(), None);
    }
}
