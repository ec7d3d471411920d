//! One writer per environment: a `coordination.k8s.io` Lease per environment
//! in `tenantsync-system` (`tenantsync-sync-<env>`), taken by `sync` and by
//! the daemon's leader before they read the inventory, renewed while held,
//! released at the end. Every change of the Lease goes through the API
//! server's optimistic concurrency (`resourceVersion`), so two writers can
//! never both hold it; a holder that stops renewing (killed, frozen) loses
//! it after [`LOCK_DURATION`]. `plan`, `drift` and `sync --dry-run` take no
//! lock.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use tokio::sync::watch;

use super::{Cluster, ClusterError};
use crate::object::{MANAGED_BY, MANAGER};
use crate::sync::inventory::SYSTEM_NAMESPACE;

/// A holder that stops renewing loses the lock after this long.
pub const LOCK_DURATION: Duration = Duration::from_secs(15);
/// How often a holder renews (and a waiting writer retries).
pub const RENEW_PERIOD: Duration = Duration::from_secs(3);
/// How long after a renewal the API server confirmed was *sent* its holder
/// still writes: the lock's duration less two renewal periods, so that a
/// holder whose renewals stall (a slow or frozen API server) stops on its
/// own clock before another writer can see the lock expire and take it.
pub const HOLD: Duration = LOCK_DURATION.saturating_sub(RENEW_PERIOD.saturating_mul(2));
/// Renewals waiting for an answer at once, at most (a frozen API server
/// gets no pile of them).
const MAX_RENEWALS_IN_FLIGHT: usize = 4;

/// A holder's standing: lost when another took the lock, or when the last
/// confirmed renewal is older than [`HOLD`].
#[derive(Debug)]
struct Standing {
    taken: AtomicBool,
    until: std::sync::Mutex<Instant>,
}

impl Standing {
    fn new(sent: Instant) -> Standing {
        Standing {
            taken: AtomicBool::new(false),
            until: std::sync::Mutex::new(sent + HOLD),
        }
    }

    fn confirmed(&self, sent: Instant) {
        if let Ok(mut until) = self.until.lock() {
            *until = (*until).max(sent + HOLD);
        }
    }

    fn lost_at(&self, now: Instant) -> bool {
        self.taken.load(Ordering::SeqCst) || self.until.lock().map_or(true, |until| now >= *until)
    }
}

/// The Lease of an environment's lock.
pub fn lease_name(environment: &str) -> String {
    format!("tenantsync-sync-{environment}")
}

/// Who holds a lock, as its Lease says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    pub identity: String,
    /// When the holder took it (RFC 3339).
    pub since: Option<String>,
    /// Seconds since its last renewal.
    pub renewed_secs_ago: Option<i64>,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.identity)?;
        if let Some(since) = &self.since {
            write!(f, " since {since}")?;
        }
        if let Some(ago) = self.renewed_secs_ago {
            write!(f, " (renewed {ago}s ago)")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "environment {environment} is being synced by {holder}: another writer holds its lock \
         (Lease {SYSTEM_NAMESPACE}/{lease}); gave up after waiting {waited}s. Try again when it is done, \
         or raise --lock-timeout; a holder that died releases it within {}s",
        LOCK_DURATION.as_secs()
    )]
    Held {
        environment: String,
        lease: String,
        holder: Holder,
        waited: u64,
    },
    #[error(transparent)]
    Cluster(#[from] ClusterError),
}

/// A held environment lock, renewed in the background until released (or
/// dropped: then it simply expires).
pub struct EnvLock {
    pub environment: String,
    pub identity: String,
    standing: Arc<Standing>,
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl EnvLock {
    /// True once a renewal found the Lease taken by another holder, or the
    /// last confirmed renewal is older than [`HOLD`]: writes must stop.
    pub fn lost(&self) -> bool {
        self.standing.lost_at(Instant::now())
    }

    /// A check that turns true when the lock is lost (a sync's fence).
    pub fn lost_check(&self) -> impl Fn() -> bool + Send + Sync + 'static {
        let standing = self.standing.clone();
        move || standing.lost_at(Instant::now())
    }

    /// Stops renewing and gives the Lease up so the next writer starts at
    /// once.
    pub async fn release(mut self, cluster: &Cluster) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        if self.lost() {
            return;
        }
        let api: Api<Lease> = Api::namespaced(cluster.client.clone(), SYSTEM_NAMESPACE);
        let name = lease_name(&self.environment);
        for _ in 0..3 {
            match api.get_opt(&name).await {
                Ok(Some(mut lease))
                    if lease
                        .spec
                        .as_ref()
                        .and_then(|s| s.holder_identity.as_deref())
                        == Some(self.identity.as_str()) =>
                {
                    if let Some(spec) = lease.spec.as_mut() {
                        spec.holder_identity = None;
                        spec.renew_time = None;
                        spec.acquire_time = None;
                    }
                    match api.replace(&name, &PostParams::default(), &lease).await {
                        Err(kube::Error::Api(s)) if s.code == 409 => continue,
                        Err(e) => {
                            tracing::warn!(lease = %name, error = %e, "cannot release the environment lock; it expires by itself")
                        }
                        Ok(_) => {}
                    }
                    return;
                }
                Ok(_) => return,
                Err(e) => {
                    tracing::warn!(lease = %name, error = %e, "cannot release the environment lock; it expires by itself");
                    return;
                }
            }
        }
    }
}

impl Drop for EnvLock {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// An identity for a CLI sync: user, host and process id.
pub fn cli_identity() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("USERNAME"))
        .unwrap_or_else(|_| "unknown".into());
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!(
        "tenantsync sync by {user}@{host} (pid {})",
        std::process::id()
    )
}

fn expired(spec: &LeaseSpec, now: Timestamp) -> bool {
    let Some(renewed) = spec.renew_time.as_ref().map(|t| t.0) else {
        return true;
    };
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(0));
    now.as_second() > renewed.as_second() + duration
}

fn holder_of(spec: &LeaseSpec, now: Timestamp) -> Holder {
    Holder {
        identity: spec
            .holder_identity
            .clone()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "another writer".into()),
        since: spec.acquire_time.as_ref().map(|t| t.0.to_string()),
        renewed_secs_ago: spec
            .renew_time
            .as_ref()
            .map(|t| now.as_second() - t.0.as_second()),
    }
}

/// One attempt to take or renew; `Ok(None)` when `me` holds the lock
/// afterwards, `Ok(Some(holder))` when another does.
/// `renewal`: by the holder's renewal loop (a take always writes).
async fn try_take(
    api: &Api<Lease>,
    name: &str,
    me: &str,
    renewal: bool,
) -> Result<Option<Holder>, kube::Error> {
    let now = Timestamp::now();
    let mine = |acquired: Option<MicroTime>, transitions: i32| LeaseSpec {
        holder_identity: Some(me.to_string()),
        lease_duration_seconds: Some(i32::try_from(LOCK_DURATION.as_secs()).unwrap_or(15)),
        acquire_time: acquired.or(Some(MicroTime(now))),
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(transitions),
        ..LeaseSpec::default()
    };
    match api.get_opt(name).await? {
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    labels: Some([(MANAGED_BY.to_string(), MANAGER.to_string())].into()),
                    ..ObjectMeta::default()
                },
                spec: Some(mine(None, 0)),
            };
            match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(None),
                // Someone created it first (another writer, or another
                // renewal of this holder's): name who.
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    current_holder(api, name).await.map(Some)
                }
                Err(e) => Err(e),
            }
        }
        Some(mut lease) => {
            let spec = lease.spec.clone().unwrap_or_default();
            let holder = spec.holder_identity.clone().unwrap_or_default();
            let transitions = spec.lease_transitions.unwrap_or(0);
            let next = if holder == me {
                // A renewal of this holder's sent later already wrote a
                // newer renewTime: writing this older one would move the
                // Lease's expiry back.
                if renewal && spec.renew_time.as_ref().is_some_and(|t| t.0 >= now) {
                    return Ok(None);
                }
                mine(spec.acquire_time.clone(), transitions)
            } else if holder.is_empty() || expired(&spec, now) {
                mine(None, transitions.saturating_add(1))
            } else {
                return Ok(Some(holder_of(&spec, now)));
            };
            lease.spec = Some(next);
            // resourceVersion is kept: a concurrent change makes this a 409.
            match api.replace(name, &PostParams::default(), &lease).await {
                Ok(_) => Ok(None),
                // Another writer changed it first (took a released or
                // expired lock): name that one, not the previous holder
                // (which was often nobody: `held by ` with no name).
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    current_holder(api, name).await.map(Some)
                }
                Err(e) => Err(e),
            }
        }
    }
}

/// Who holds the Lease now, read again after losing a race for it.
async fn current_holder(api: &Api<Lease>, name: &str) -> Result<Holder, kube::Error> {
    let spec = api.get_opt(name).await?.and_then(|l| l.spec);
    Ok(match spec {
        Some(spec)
            if spec
                .holder_identity
                .as_deref()
                .is_some_and(|h| !h.is_empty()) =>
        {
            holder_of(&spec, Timestamp::now())
        }
        _ => Holder {
            identity: "another writer".into(),
            since: None,
            renewed_secs_ago: None,
        },
    })
}

impl Cluster {
    /// Takes `environment`'s lock for `me`, waiting up to `timeout` while
    /// another writer holds it (`on_wait` hears who, once per change of
    /// holder). `tenantsync-system` is created when missing.
    pub async fn lock_environment(
        &self,
        environment: &str,
        me: &str,
        timeout: Duration,
        mut on_wait: impl FnMut(&Holder),
    ) -> Result<EnvLock, LockError> {
        let api: Api<Lease> = Api::namespaced(self.client.clone(), SYSTEM_NAMESPACE);
        let name = lease_name(environment);
        let start = Instant::now();
        let mut told: Option<String> = None;
        let mut ensured = false;
        let taken_at = loop {
            // Counted as a request, not a write: `writeRequests` counts
            // writes of objects and of the inventory.
            self.count(false);
            let sent = Instant::now();
            let attempt = try_take(&api, &name, me, false).await;
            let holder = match attempt {
                Ok(None) => break sent,
                Ok(Some(holder)) => holder,
                Err(kube::Error::Api(s)) if s.code == 404 && !ensured => {
                    // No tenantsync-system yet (a first sync).
                    self.ensure_system_namespace(false).await?;
                    ensured = true;
                    continue;
                }
                Err(e) => {
                    return Err(self
                        .classify(e, "take the lock (Lease)", &format!("leases {name}"))
                        .into());
                }
            };
            if start.elapsed() >= timeout {
                return Err(LockError::Held {
                    environment: environment.into(),
                    lease: name,
                    holder,
                    waited: start.elapsed().as_secs(),
                });
            }
            if told.as_deref() != Some(holder.identity.as_str()) {
                on_wait(&holder);
                told = Some(holder.identity.clone());
            }
            tokio::time::sleep(RENEW_PERIOD.min(timeout.saturating_sub(start.elapsed()))).await;
        };
        let standing = Arc::new(Standing::new(taken_at));
        let (stop, mut stopped) = watch::channel(false);
        let task = {
            let standing = standing.clone();
            let me = me.to_string();
            let name = name.clone();
            tokio::spawn(async move {
                // A renewal is sent every period whether or not the last
                // one was answered, and each is waited for as long as its
                // answer can still extend the hold: on a slow API server
                // (one answering in 5 s) the lock is kept, where giving
                // each renewal up after a period lost it.
                // Counted from when the take was sent, as the hold is.
                let mut ticks = tokio::time::interval_at(
                    tokio::time::Instant::from_std(taken_at) + RENEW_PERIOD,
                    RENEW_PERIOD,
                );
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut renewals = tokio::task::JoinSet::new();
                loop {
                    tokio::select! {
                        _ = stopped.changed() => {
                            renewals.abort_all();
                            return;
                        }
                        _ = ticks.tick() => {
                            if *stopped.borrow() {
                                renewals.abort_all();
                                return;
                            }
                            if renewals.len() < MAX_RENEWALS_IN_FLIGHT {
                                let (api, name, me) = (api.clone(), name.clone(), me.clone());
                                let sent = Instant::now();
                                renewals.spawn(async move {
                                    (sent, tokio::time::timeout(HOLD, try_take(&api, &name, &me, true)).await)
                                });
                            }
                        }
                        Some(done) = renewals.join_next(), if !renewals.is_empty() => match done {
                            Ok((sent, Ok(Ok(None)))) => standing.confirmed(sent),
                            // Another renewal of this holder's changed the
                            // Lease first (a 409): it confirms itself.
                            Ok((_, Ok(Ok(Some(holder))))) if holder.identity == me => {}
                            Ok((_, Ok(Ok(Some(holder))))) => {
                                tracing::error!(lease = %name, holder = %holder, "the environment lock was taken by another writer; writes stop");
                                standing.taken.store(true, Ordering::SeqCst);
                                renewals.abort_all();
                                return;
                            }
                            Ok((_, Ok(Err(e)))) => {
                                tracing::warn!(lease = %name, error = %e, "cannot renew the environment lock");
                            }
                            Ok((_, Err(_))) => {
                                tracing::warn!(lease = %name, "the API server did not answer a renewal of the environment lock in time");
                            }
                            Err(e) => {
                                tracing::warn!(lease = %name, error = %e, "a renewal of the environment lock stopped");
                            }
                        },
                    }
                    if standing.lost_at(Instant::now()) {
                        tracing::error!(lease = %name, "the environment lock could not be renewed in time; writes stop");
                        renewals.abort_all();
                        return;
                    }
                }
            })
        };
        Ok(EnvLock {
            environment: environment.to_string(),
            identity: me.to_string(),
            standing,
            stop,
            task: Some(task),
        })
    }

    /// Who holds `environment`'s lock now, if anyone (read-only).
    pub async fn lock_holder(&self, environment: &str) -> Result<Option<Holder>, ClusterError> {
        let api: Api<Lease> = Api::namespaced(self.client.clone(), SYSTEM_NAMESPACE);
        let name = lease_name(environment);
        self.count(false);
        let lease = api
            .get_opt(&name)
            .await
            .map_err(|e| self.classify(e, "get", &format!("leases {name}")))?;
        let now = Timestamp::now();
        Ok(lease.and_then(|l| l.spec).and_then(|spec| {
            let held = spec
                .holder_identity
                .as_deref()
                .is_some_and(|h| !h.is_empty())
                && !expired(&spec, now);
            held.then(|| holder_of(&spec, now))
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_is_lost_once_its_last_confirmed_renewal_is_older_than_the_hold() {
        // The hold ends well before another writer can see the Lease
        // expire: two renewal periods of room.
        assert!(HOLD + RENEW_PERIOD * 2 <= LOCK_DURATION);
        let now = Instant::now();
        let standing = Standing::new(now);
        assert!(!standing.lost_at(now));
        assert!(!standing.lost_at(now + HOLD - Duration::from_millis(1)));
        // No renewal confirmed since: lost, however slow the server is.
        assert!(standing.lost_at(now + HOLD));
        // A renewal sent at 5 s and confirmed extends it from its sending.
        standing.confirmed(now + Duration::from_secs(5));
        assert!(!standing.lost_at(now + HOLD + Duration::from_secs(4)));
        assert!(standing.lost_at(now + HOLD + Duration::from_secs(5)));
        // A late answer to an older renewal never shortens it.
        standing.confirmed(now);
        assert!(!standing.lost_at(now + HOLD + Duration::from_secs(4)));
        // Taken by another writer: lost at once.
        standing.taken.store(true, Ordering::SeqCst);
        assert!(standing.lost_at(now));
    }

    #[test]
    fn a_lease_not_renewed_within_its_duration_is_expired() {
        let now = Timestamp::now();
        let spec = |ago: i64| LeaseSpec {
            holder_identity: Some("x".into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(
                Timestamp::from_second(now.as_second() - ago).unwrap_or(now),
            )),
            ..LeaseSpec::default()
        };
        assert!(!expired(&spec(5), now));
        assert!(expired(&spec(16), now));
        assert!(expired(&LeaseSpec::default(), now));
        let h = holder_of(&spec(5), now);
        assert_eq!(h.renewed_secs_ago, Some(5));
        assert!(h.to_string().starts_with("x"), "{h}");
    }
}
