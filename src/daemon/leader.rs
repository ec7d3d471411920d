//! Leader election with a `coordination.k8s.io` Lease, so that of several
//! replicas only one writes. Every change to the Lease goes through the API
//! server's optimistic concurrency (`resourceVersion`): two candidates can
//! never both believe they won.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use tokio::sync::watch;

use crate::sync::inventory::SYSTEM_NAMESPACE;

/// The Lease's default name (`run --lease-name` picks another, so that
/// several installations can share `tenantsync-system`).
pub const LEASE_NAME: &str = "tenantsync-leader";
/// A leader that stops renewing loses the Lease after this long.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How often the leader renews (and candidates retry).
pub const RETRY_PERIOD: Duration = Duration::from_secs(2);

/// This process's identity as a candidate: host name and process id.
pub fn identity() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .unwrap_or_else(|| "tenantsync".to_string());
    format!("{host}-{}", std::process::id())
}

fn expired(spec: &LeaseSpec, now: Timestamp) -> bool {
    let Some(renewed) = spec.renew_time.as_ref().map(|t| t.0) else {
        return true;
    };
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(0));
    now.as_second() > renewed.as_second() + duration
}

/// One attempt to acquire or renew; `Ok(true)` when this candidate holds
/// the Lease afterwards.
async fn try_acquire(api: &Api<Lease>, name: &str, me: &str) -> Result<bool, kube::Error> {
    let current = api.get_opt(name).await?;
    acquire(api, name, me, current).await
}

/// Acquires or renews the Lease `name` as last read (`current`, `None` when
/// missing): `Ok(true)` when this candidate holds it afterwards. A change
/// since that read makes it `Ok(false)` (the API server's 409).
pub(super) async fn acquire(
    api: &Api<Lease>,
    name: &str,
    me: &str,
    current: Option<Lease>,
) -> Result<bool, kube::Error> {
    let now = Timestamp::now();
    let mine = |acquired: Option<MicroTime>, transitions: i32| LeaseSpec {
        holder_identity: Some(me.to_string()),
        lease_duration_seconds: Some(i32::try_from(LEASE_DURATION.as_secs()).unwrap_or(15)),
        acquire_time: acquired.or(Some(MicroTime(now))),
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(transitions),
        ..LeaseSpec::default()
    };
    match current {
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    ..ObjectMeta::default()
                },
                spec: Some(mine(None, 0)),
            };
            match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
        Some(mut lease) => {
            let spec = lease.spec.clone().unwrap_or_default();
            let holder = spec.holder_identity.clone().unwrap_or_default();
            let transitions = spec.lease_transitions.unwrap_or(0);
            let next = if holder == me {
                mine(spec.acquire_time.clone(), transitions)
            } else if holder.is_empty() || expired(&spec, now) {
                mine(None, transitions.saturating_add(1))
            } else {
                return Ok(false);
            };
            lease.spec = Some(next);
            // resourceVersion is kept: a concurrent change makes this a 409.
            match api.replace(name, &PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
    }
}

/// The holder of a Lease while it has not expired.
pub(super) fn live_holder(lease: &Lease, now: Timestamp) -> Option<String> {
    let spec = lease.spec.as_ref()?;
    let holder = spec.holder_identity.as_deref().filter(|h| !h.is_empty())?;
    (!expired(spec, now)).then(|| holder.to_string())
}

/// How long ago the Lease was last renewed (`None`: never, or cleared).
pub(super) fn unrenewed_for(lease: &Lease, now: Timestamp) -> Option<Duration> {
    let renewed = lease.spec.as_ref()?.renew_time.as_ref()?.0;
    let seconds = now.as_second().saturating_sub(renewed.as_second());
    Some(Duration::from_secs(u64::try_from(seconds).unwrap_or(0)))
}

/// Gives the Lease `name` up when `me` holds it (holder and renewal
/// cleared, so another candidate takes it at once).
pub(super) async fn release(api: &Api<Lease>, name: &str, me: &str) -> Result<(), kube::Error> {
    let Some(mut lease) = api.get_opt(name).await? else {
        return Ok(());
    };
    if lease
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.as_deref())
        != Some(me)
    {
        return Ok(());
    }
    if let Some(spec) = lease.spec.as_mut() {
        spec.holder_identity = None;
        spec.renew_time = None;
    }
    api.replace(name, &PostParams::default(), &lease).await?;
    Ok(())
}

/// Campaigns for the Lease `name` until `shutdown`, publishing whether this
/// process leads. On shutdown a leader releases the Lease so another takes
/// over at once.
pub async fn campaign(
    client: kube::Client,
    name: String,
    me: String,
    leading: watch::Sender<bool>,
    mut shutdown: watch::Receiver<bool>,
) {
    let api: Api<Lease> = Api::namespaced(client, SYSTEM_NAMESPACE);
    loop {
        let lead = match try_acquire(&api, &name, &me).await {
            Ok(lead) => lead,
            Err(e) => {
                tracing::warn!(error = %e, "leader election: cannot reach the Lease");
                // Without a renewal a leader must step down before the Lease
                // can expire and another replica take over.
                false
            }
        };
        if *leading.borrow() != lead {
            tracing::info!(identity = %me, leading = lead, "leader election");
            let _ = leading.send(lead);
        }
        tokio::select! {
            _ = tokio::time::sleep(RETRY_PERIOD) => {},
            _ = shutdown.changed() => break,
        }
        if *shutdown.borrow() {
            break;
        }
    }
    if *leading.borrow() {
        let _ = leading.send(false);
        match release(&api, &name, &me).await {
            Ok(()) => tracing::info!("released the leader Lease"),
            Err(e) => tracing::warn!(error = %e, "cannot release the leader Lease"),
        }
    }
}
