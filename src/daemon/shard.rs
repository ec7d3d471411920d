//! Sharded replicas (`run --shard`): each environment has its own Lease,
//! `<lease-name>-<env>` in tenantsync-system, and only its holder writes
//! the environment (and takes its lock, as the one leader does without
//! sharding). Each replica renews a heartbeat Lease of its own,
//! `<lease-name>.member-<id>`; the live ones are the members among which
//! `sync::shard` splits the environments.
//!
//! Holding is bounded in time, as client-go's renew deadline: a renewal
//! the API server confirmed lets this replica write the environment until
//! [`HOLD`] after the renewal was *sent* (well before another replica can
//! see the Lease expire), so a replica whose renewals stall, however slow
//! the server, stops writing on its own clock before anyone takes over.
//!
//! Every [`WATCH_PERIOD`] a replica LISTs the Leases of tenantsync-system
//! (one request): it sees the members, who holds what, and the trigger a
//! webhook left on an environment's Lease; every [`RETRY_PERIOD`] it renews
//! what it holds. Every change to a Lease goes through the API server's
//! optimistic concurrency (`resourceVersion`), so two replicas never both
//! hold one. An environment over this replica's share is handed over
//! soon: at the end of the reconcile in flight, or, once asked for
//! [`HAND_OVER_GRACE`], at the next write of a sync in flight (its fence);
//! the environment's loop lets go of its lock, then this gives up the
//! Lease.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, PostParams, Preconditions};
use tokio::sync::watch;

use super::Shared;
use super::leader::{self, LEASE_DURATION, RETRY_PERIOD};
use crate::sync::Fence;
use crate::sync::inventory::SYSTEM_NAMESPACE;
use crate::sync::shard;

/// How often a replica looks at the Leases (membership, takeovers and
/// webhook triggers): a webhook received by another replica is acted on
/// within this, plus the reconcile.
pub const WATCH_PERIOD: Duration = Duration::from_millis(250);

/// The annotation a replica that received a webhook sets on the Lease of
/// an environment it does not hold: its holder reads the repository now.
pub const TRIGGER_ANNOTATION: &str = "tenantsync.io/trigger";

/// How long after a confirmed renewal was sent this replica keeps writing
/// the environment: the Lease's duration less two renewal periods, room
/// for a renewal or two lost and for clocks a few seconds apart.
pub const HOLD: Duration = LEASE_DURATION.saturating_sub(RETRY_PERIOD.saturating_mul(2));

/// The longest one look at the Leases (LIST, renewals, acquisitions) may
/// take before it is given up and counted as failed.
const TICK_TIMEOUT: Duration = Duration::from_secs(5);

/// A member Lease unrenewed this long belongs to a replica that died
/// without leaving (SIGKILL, a lost node): the others delete it.
const DEAD_MEMBER_AFTER: Duration = LEASE_DURATION.saturating_mul(2);

/// Renewals sent at once.
const RENEWALS_IN_FLIGHT: usize = 8;

/// How long a hand-over is asked for before it stops the sync in flight
/// (at its next write): a replica that joins and dies at once, or shares
/// that change back within it (members coming and going in a rolling
/// update), stop no sync. Two renewal periods: a newcomer has renewed its
/// member Lease at least once by then.
pub const HAND_OVER_GRACE: Duration = RETRY_PERIOD.saturating_mul(2);

/// Why a sharded replica's sync stopped writing when its share changed.
pub const HANDED_OVER: &str = "this replica handed the environment over to another one (--shard: the replicas' shares changed)";

/// One environment as this replica sees it.
struct Slot {
    /// This replica holds the environment's Lease and may write it.
    owned: AtomicBool,
    /// Until when the last confirmed renewal lets this replica write.
    valid_until: Mutex<Option<Instant>>,
    /// Asked to hand the environment over: at the end of the reconcile in
    /// flight, or sooner once asked for [`HAND_OVER_GRACE`] (see
    /// [`Owners::handing_over`]).
    hand_over: AtomicBool,
    /// Since when the hand-over is asked for.
    hand_over_since: Mutex<Option<Instant>>,
    /// Wakes the environment's loop (a takeover, a hand-over, a trigger).
    poke: watch::Sender<u64>,
}

/// Which environments this replica holds (all of them without `--shard`:
/// the one leader's `leading` decides then).
pub struct Owners {
    sharded: bool,
    base: String,
    identity: String,
    slots: BTreeMap<String, Slot>,
    client: OnceLock<kube::Client>,
    /// A round of trigger annotations is being written.
    announcing: AtomicBool,
    /// Another webhook arrived during that round: one more round follows.
    announce_again: AtomicBool,
}

impl Owners {
    pub fn new(sharded: bool, base: &str, identity: &str, environments: &[String]) -> Owners {
        Owners {
            sharded,
            base: base.to_string(),
            identity: identity.to_string(),
            slots: environments
                .iter()
                .map(|e| {
                    let slot = Slot {
                        owned: AtomicBool::new(false),
                        valid_until: Mutex::new(None),
                        hand_over: AtomicBool::new(false),
                        hand_over_since: Mutex::new(None),
                        poke: watch::channel(0).0,
                    };
                    (e.clone(), slot)
                })
                .collect(),
            client: OnceLock::new(),
            announcing: AtomicBool::new(false),
            announce_again: AtomicBool::new(false),
        }
    }

    pub fn sharded(&self) -> bool {
        self.sharded
    }

    /// Whether this replica holds the environment's Lease, and its last
    /// confirmed renewal still lets it write.
    pub fn owns(&self, env: &str) -> bool {
        self.slots
            .get(env)
            .is_some_and(|s| s.writable(Instant::now()))
    }

    /// The environments this replica holds, in name order.
    pub fn owned(&self) -> Vec<String> {
        let now = Instant::now();
        self.slots
            .iter()
            .filter(|(_, s)| s.writable(now))
            .map(|(e, _)| e.clone())
            .collect()
    }

    /// The API server confirmed a renewal (or acquisition) of `env`'s
    /// Lease sent at `sent`: writable until [`HOLD`] after it.
    fn confirm(&self, env: &str, sent: Instant) {
        if let Some(slot) = self.slots.get(env)
            && let Ok(mut until) = slot.valid_until.lock()
        {
            let next = sent + HOLD;
            *until = Some(until.map_or(next, |u| u.max(next)));
        }
    }

    /// Held environments whose last confirmed renewal is too old to write
    /// on.
    fn lapsed(&self, now: Instant) -> Vec<String> {
        self.slots
            .iter()
            .filter(|(_, s)| s.owned.load(Ordering::SeqCst) && !s.writable(now))
            .map(|(e, _)| e.clone())
            .collect()
    }

    /// The environment's own trigger (its loop reads the source when it
    /// changes).
    pub fn subscribe(&self, env: &str) -> Option<watch::Receiver<u64>> {
        self.slots.get(env).map(|s| s.poke.subscribe())
    }

    fn poke(&self, env: &str) {
        if let Some(s) = self.slots.get(env) {
            s.poke.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Called by the environment's loop between two reconciles: when asked
    /// to hand the environment over, it stops writing it (its lock already
    /// given up by the caller) and `true` says so.
    pub fn hand_over_requested(&self, env: &str) -> bool {
        self.slots
            .get(env)
            .is_some_and(|s| s.hand_over.load(Ordering::SeqCst))
    }

    /// A hand-over asked for at least [`HAND_OVER_GRACE`]: this replica no
    /// longer leads the environment, and a sync in flight stops at its
    /// next write (its fence) rather than finish first (a long first sync
    /// would keep the replica that joined idle).
    pub fn handing_over(&self, env: &str) -> bool {
        self.slots.get(env).is_some_and(|s| {
            s.hand_over.load(Ordering::SeqCst)
                && s.hand_over_since
                    .lock()
                    .ok()
                    .and_then(|since| *since)
                    .is_some_and(|since| since.elapsed() >= HAND_OVER_GRACE)
        })
    }

    /// `fence` for a sync of `env` by this replica: also lost once it no
    /// longer holds the environment's Lease, and once a hand-over has been
    /// asked for [`HAND_OVER_GRACE`] ([`HANDED_OVER`]), unless `waits` (a
    /// sync that must finish here: an approved plan, a rollback; the
    /// replica taking over waits for its Lease meanwhile).
    pub fn fence(self: &Arc<Self>, fence: Fence, env: &str, waits: Arc<AtomicBool>) -> Fence {
        let (owners, env_) = (self.clone(), env.to_string());
        let fence = fence.with_reason(
            move || !waits.load(Ordering::SeqCst) && owners.handing_over(&env_),
            HANDED_OVER,
        );
        let (owners, env) = (self.clone(), env.to_string());
        fence.with(move || !owners.owns(&env))
    }

    /// Asks for a hand-over (`true`: it was not asked yet), or withdraws
    /// one the shares no longer need.
    fn ask_hand_over(&self, env: &str, ask: bool) -> bool {
        let Some(slot) = self.slots.get(env) else {
            return false;
        };
        if let Ok(mut since) = slot.hand_over_since.lock() {
            match (ask, since.is_some()) {
                (true, false) => *since = Some(Instant::now()),
                (false, true) => *since = None,
                _ => {}
            }
        }
        let before = slot.hand_over.swap(ask, Ordering::SeqCst);
        ask && !before
    }

    /// The loop let go of the environment: the campaign gives its Lease up.
    pub fn handed_over(&self, env: &str) {
        if let Some(s) = self.slots.get(env) {
            s.owned.store(false, Ordering::SeqCst);
        }
        self.ask_hand_over(env, false);
    }

    /// A webhook arrived here: the holders of the environments this replica
    /// does not hold are told through their Leases (its own loops are poked
    /// by the caller). Runs in the background; failures are logged.
    /// Webhooks arriving while a round is written make one more round after
    /// it, at least [`WATCH_PERIOD`] later.
    pub fn announce(self: &Arc<Self>) {
        let Some(client) = self.client.get().cloned().filter(|_| self.sharded) else {
            return;
        };
        // Asked first, then the round claimed: a round ending meanwhile
        // sees the request (or this call starts the next round).
        self.announce_again.store(true, Ordering::SeqCst);
        if self.announcing.swap(true, Ordering::SeqCst) {
            return;
        }
        let owners = self.clone();
        tokio::spawn(async move {
            let api: Api<Lease> = Api::namespaced(client, SYSTEM_NAMESPACE);
            loop {
                owners.announce_again.store(false, Ordering::SeqCst);
                let others: Vec<String> = owners
                    .slots
                    .keys()
                    .filter(|e| !owners.owns(e))
                    .map(|e| shard::environment_lease(&owners.base, e))
                    .collect();
                let at = Timestamp::now().to_string();
                for name in others {
                    if let Err(e) = annotate(&api, &name, &at).await {
                        tracing::warn!(lease = %name, error = %e, "cannot pass the webhook on to the environment's holder; it reads the repository at its next poll");
                    }
                }
                // Rounds at least WATCH_PERIOD apart (the holders look no
                // more often): a stream of webhooks writes each Lease at
                // most once per round and WATCH_PERIOD.
                tokio::time::sleep(WATCH_PERIOD).await;
                if owners.announce_again.load(Ordering::SeqCst) {
                    continue;
                }
                owners.announcing.store(false, Ordering::SeqCst);
                // A webhook between the load and the store found the round
                // still running: take it on, unless a new round started.
                if !owners.announce_again.load(Ordering::SeqCst)
                    || owners.announcing.swap(true, Ordering::SeqCst)
                {
                    break;
                }
            }
        });
    }
}

impl Slot {
    fn writable(&self, now: Instant) -> bool {
        self.owned.load(Ordering::SeqCst)
            && self
                .valid_until
                .lock()
                .is_ok_and(|u| u.is_some_and(|u| now < u))
    }
}

/// What one renewal of an environment's Lease came to.
enum Renewal {
    Confirmed,
    /// Another replica holds it now.
    Taken(String),
    /// It changed between read and write twice (a webhook's trigger
    /// annotations): still this replica's, not renewed this time.
    Busy,
    Failed(kube::Error),
}

/// Renews the Lease `name` as last read; a 409 (a trigger written since
/// the LIST) reads it again and retries once.
async fn renew_one(api: &Api<Lease>, name: &str, me: &str, current: Option<Lease>) -> Renewal {
    match leader::acquire(api, name, me, current).await {
        Ok(true) => return Renewal::Confirmed,
        Ok(false) => {}
        Err(e) => return Renewal::Failed(e),
    }
    let current = match api.get_opt(name).await {
        Ok(current) => current,
        Err(e) => return Renewal::Failed(e),
    };
    let now = Timestamp::now();
    if let Some(holder) = current
        .as_ref()
        .and_then(|l| leader::live_holder(l, now))
        .filter(|h| h != me)
    {
        return Renewal::Taken(holder);
    }
    match leader::acquire(api, name, me, current).await {
        Ok(true) => Renewal::Confirmed,
        Ok(false) => Renewal::Busy,
        Err(e) => Renewal::Failed(e),
    }
}

/// Sets the trigger annotation on a Lease (read, then written with its
/// `resourceVersion`; a renewal in between is a 409, and it tries again).
async fn annotate(api: &Api<Lease>, name: &str, at: &str) -> Result<(), kube::Error> {
    for _ in 0..5 {
        let Some(mut lease) = api.get_opt(name).await? else {
            // Nobody ever held it: whoever takes it reads the repository then.
            return Ok(());
        };
        lease
            .metadata
            .annotations
            .get_or_insert_default()
            .insert(TRIGGER_ANNOTATION.to_string(), at.to_string());
        match api.replace(name, &PostParams::default(), &lease).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The campaign's memory between two looks at the Leases.
struct Campaign {
    api: Api<Lease>,
    shared: Arc<Shared>,
    member: String,
    /// Lease name → environment.
    leases: BTreeMap<String, String>,
    /// Environments whose Lease this replica holds.
    held: BTreeSet<String>,
    /// The trigger annotation last seen per environment.
    triggers: BTreeMap<String, String>,
}

/// What one LIST of tenantsync-system's Leases shows.
struct Seen {
    members: BTreeSet<String>,
    member_lease: Option<Lease>,
    /// Per environment: its Lease as read (absent: never created).
    environments: BTreeMap<String, Lease>,
    /// Member Leases of replicas that died without leaving: name and
    /// `resourceVersion` as read.
    dead_members: Vec<(String, String)>,
}

impl Campaign {
    fn owners(&self) -> &Owners {
        &self.shared.owners
    }

    fn me(&self) -> &str {
        &self.shared.owners.identity
    }

    async fn look(&self) -> Result<Seen, kube::Error> {
        let now = Timestamp::now();
        let prefix = shard::member_prefix(&self.owners().base);
        // Member Leases named before the dot (`<base>-member-<id>`): the
        // replicas of an older tenantsync during a rolling upgrade count,
        // and a dead one's Lease is swept too.
        let old_prefix = format!("{}-member-", self.owners().base);
        let mut seen = Seen {
            members: BTreeSet::new(),
            member_lease: None,
            environments: BTreeMap::new(),
            dead_members: Vec::new(),
        };
        for lease in self.api.list(&ListParams::default()).await?.items {
            let name = lease.metadata.name.clone().unwrap_or_default();
            if name == self.member {
                seen.member_lease = Some(lease.clone());
            }
            if let Some(env) = self.leases.get(&name) {
                seen.environments.insert(env.clone(), lease);
            } else if name.starts_with(&prefix) || name.starts_with(&old_prefix) {
                if let Some(holder) = leader::live_holder(&lease, now) {
                    seen.members.insert(holder);
                } else if name != self.member
                    && leader::unrenewed_for(&lease, now)
                        .is_none_or(|idle| idle >= DEAD_MEMBER_AFTER)
                    && let Some(version) = lease.metadata.resource_version.clone()
                {
                    seen.dead_members.push((name, version));
                }
            }
        }
        Ok(seen)
    }

    /// This replica gained (`true`) or lost the environment.
    fn set_owned(&mut self, env: &str, owned: bool) {
        let shared = self.shared.clone();
        let Some(slot) = shared.owners.slots.get(env) else {
            return;
        };
        slot.owned.store(owned, Ordering::SeqCst);
        if owned {
            self.held.insert(env.to_string());
        } else {
            self.held.remove(env);
            shared.owners.ask_hand_over(env, false);
            if let Ok(mut until) = slot.valid_until.lock() {
                *until = None;
            }
        }
        tracing::info!(identity = %self.me(), environment = env, holds = owned, "sharding");
        self.shared.metrics.set_leader(env, owned);
        self.owners().poke(env);
        self.publish();
    }

    /// `/status`'s `leader` (holds any) and `owns`.
    fn publish(&self) {
        let owned = self.owners().owned();
        if let Ok(mut status) = self.shared.status.write() {
            status.leader = !owned.is_empty();
            status.owns = Some(owned);
        }
    }

    /// Renews the heartbeat and every environment held, several at once
    /// (one slow renewal does not hold the others back); one that cannot
    /// be renewed (taken by another) is lost, one the server did not answer
    /// stays held until its last renewal lapses.
    async fn renew(&mut self, seen: &Seen) -> Result<(), kube::Error> {
        let me = self.me().to_string();
        let base = self.owners().base.clone();
        let api = &self.api;
        let owners = self.shared.owners.clone();
        let renewals: Vec<(String, Renewal)> = futures::stream::iter(self.held.clone())
            .map(|env| {
                let name = shard::environment_lease(&base, &env);
                let current = seen.environments.get(&env).cloned();
                let (me, owners) = (me.as_str(), &owners);
                async move {
                    let sent = Instant::now();
                    let renewal = renew_one(api, &name, me, current).await;
                    // Confirmed here, as each answer comes: a look given up
                    // for its time keeps the renewals already confirmed.
                    if matches!(renewal, Renewal::Confirmed) {
                        owners.confirm(&env, sent);
                    }
                    (env, renewal)
                }
            })
            .buffer_unordered(RENEWALS_IN_FLIGHT)
            .collect()
            .await;
        let mut failed = None;
        for (env, renewal) in renewals {
            match renewal {
                Renewal::Confirmed => {}
                Renewal::Taken(holder) => {
                    tracing::warn!(environment = %env, holder = %holder, "sharding: the environment's Lease was taken by another replica");
                    self.set_owned(&env, false);
                }
                Renewal::Busy => {
                    tracing::debug!(environment = %env, "sharding: the environment's Lease changed twice while renewing; renewed at the next look");
                }
                Renewal::Failed(e) => {
                    tracing::warn!(environment = %env, error = %e, "sharding: cannot renew the environment's Lease");
                    failed.get_or_insert(e);
                }
            }
        }
        // The heartbeat last: it never holds the environments' renewals up.
        // (Gone since the LIST, swept while this replica was away: made
        // again at the next look.)
        if let Err(e) =
            leader::acquire(&self.api, &self.member, &me, seen.member_lease.clone()).await
        {
            failed.get_or_insert(e);
        }
        failed.map_or(Ok(()), Err)
    }

    /// Deletes the member Leases of replicas that died without leaving
    /// (each only as read: one renewed since is kept).
    async fn sweep(&self, seen: &Seen) {
        for (name, version) in &seen.dead_members {
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    resource_version: Some(version.clone()),
                    uid: None,
                }),
                ..DeleteParams::default()
            };
            match self.api.delete(name, &params).await {
                Ok(_) => {
                    tracing::info!(lease = %name, "sharding: removed the member Lease of a replica gone for good")
                }
                // Removed by another replica, or renewed since it was read.
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                Err(e) => {
                    tracing::debug!(lease = %name, error = %e, "cannot remove a dead member Lease")
                }
            }
        }
    }

    async fn tick(&mut self, renew_due: bool) -> Result<(), kube::Error> {
        let seen = self.look().await?;
        let now = Timestamp::now();
        let me = self.me().to_string();
        // Lost to another replica (this one was cut off past the expiry).
        for env in self.held.clone() {
            let holder = seen
                .environments
                .get(&env)
                .and_then(|l| leader::live_holder(l, now));
            if holder.as_deref().is_some_and(|h| h != me) {
                tracing::warn!(environment = %env, holder = ?holder, "sharding: the environment's Lease is held by another replica");
                self.set_owned(&env, false);
            }
        }
        if renew_due {
            self.renew(&seen).await?;
            self.sweep(&seen).await;
        }
        // A webhook received by another replica.
        for (env, lease) in &seen.environments {
            let trigger = lease
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(TRIGGER_ANNOTATION))
                .cloned()
                .unwrap_or_default();
            let before = self.triggers.insert(env.clone(), trigger.clone());
            if before.is_some_and(|b| b != trigger) && self.held.contains(env) {
                tracing::info!(environment = %env, "webhook passed on by another replica: reading the repository now");
                self.owners().poke(env);
            }
        }
        // Handed over by the loop: give the Lease up.
        for env in self.held.clone() {
            if !self.owners().owns(&env) {
                let name = shard::environment_lease(&self.owners().base, &env);
                leader::release(&self.api, &name, &me).await?;
                self.set_owned(&env, false);
            }
        }
        let mut members = seen.members.clone();
        members.insert(me.clone());
        let holders: BTreeMap<String, Option<String>> = self
            .leases
            .values()
            .map(|env| {
                let holder = if self.held.contains(env) {
                    Some(me.clone())
                } else {
                    // A Lease naming this replica that it does not count
                    // as held (its renewal lapsed, or an acquisition's
                    // answer was lost) is free to take back: no one else
                    // has it.
                    seen.environments
                        .get(env)
                        .and_then(|l| leader::live_holder(l, now))
                        .filter(|h| *h != me)
                };
                (env.clone(), holder)
            })
            .collect();
        let environments: Vec<String> = self.leases.values().cloned().collect();
        let decision = shard::decide(&environments, &members, &holders, &me);
        // A hand-over the shares no longer need is withdrawn (a replica
        // that joined and left) before it stops anything.
        for env in self.held.clone() {
            if !decision.release.contains(&env) && self.owners().hand_over_requested(&env) {
                tracing::info!(environment = %env, "sharding: the hand-over is no longer needed; keeping the environment");
                self.owners().ask_hand_over(&env, false);
            }
        }
        for env in decision.release {
            if self.owners().ask_hand_over(&env, true) {
                tracing::info!(environment = %env, grace = ?HAND_OVER_GRACE, "sharding: handing the environment over (a sync in flight stops at its next write once the hand-over is this old)");
                self.owners().poke(&env);
            }
        }
        for env in decision.acquire {
            let name = shard::environment_lease(&self.owners().base, &env);
            let current = seen.environments.get(&env).cloned();
            let sent = Instant::now();
            if leader::acquire(&self.api, &name, &me, current).await? {
                self.owners().confirm(&env, sent);
                self.set_owned(&env, true);
            }
        }
        Ok(())
    }

    /// Gives every Lease up and removes the heartbeat (on shutdown, after
    /// the loops stopped).
    async fn leave(&mut self) {
        let me = self.me().to_string();
        for env in self.held.clone() {
            let name = shard::environment_lease(&self.owners().base, &env);
            if let Err(e) = leader::release(&self.api, &name, &me).await {
                tracing::warn!(environment = %env, error = %e, "cannot release the environment's Lease");
            }
            self.set_owned(&env, false);
        }
        match self
            .api
            .delete(&self.member, &DeleteParams::default())
            .await
        {
            Ok(_) | Err(kube::Error::Api(_)) => {}
            Err(e) => tracing::warn!(error = %e, "cannot remove this replica's member Lease"),
        }
        tracing::info!("released the environments' Leases");
    }
}

/// Campaigns for this replica's share of the environments until
/// `shutdown`; on shutdown gives every Lease up.
pub async fn campaign(
    client: kube::Client,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let _ = shared.owners.client.set(client.clone());
    let owners = &shared.owners;
    let mut campaign = Campaign {
        api: Api::namespaced(client, SYSTEM_NAMESPACE),
        member: shard::member_lease(&owners.base, &owners.identity),
        leases: owners
            .slots
            .keys()
            .map(|e| (shard::environment_lease(&owners.base, e), e.clone()))
            .collect(),
        shared: shared.clone(),
        held: BTreeSet::new(),
        triggers: BTreeMap::new(),
    };
    campaign.publish();
    for env in owners.slots.keys() {
        shared.metrics.set_leader(env, false);
    }
    let mut last_renewal = None::<Instant>;
    loop {
        let renew_due = last_renewal.is_none_or(|t: Instant| t.elapsed() >= RETRY_PERIOD);
        if renew_due {
            last_renewal = Some(Instant::now());
        }
        match tokio::time::timeout(TICK_TIMEOUT, campaign.tick(renew_due)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "sharding: cannot reach the Leases"),
            Err(_) => tracing::warn!(
                timeout = ?TICK_TIMEOUT,
                "sharding: the API server did not answer about the Leases in time"
            ),
        }
        // Without a confirmed renewal a holder stops writing before its
        // Leases can expire and another replica take over (its loops
        // already see it through `owns`; this makes status and metrics
        // say so).
        for env in campaign.owners().lapsed(Instant::now()) {
            tracing::warn!(environment = %env, "sharding: no renewal confirmed in time; stopped writing the environment");
            campaign.set_owned(&env, false);
        }
        tokio::select! {
            _ = tokio::time::sleep(WATCH_PERIOD) => {},
            _ = shutdown.changed() => {},
        }
        if *shutdown.borrow() {
            break;
        }
    }
    campaign.leave().await;
}

/// Refuses a start whose Leases would share names: an environment's Lease
/// (`<lease-name>-<env>` with `--shard`, or the leader's `<lease-name>`)
/// that is also an environment's lock (`tenantsync-sync-<env>`) or another
/// environment's Lease, or a lock that could be a replica's member Lease
/// (`<lease-name>.member-…`). Two holders of one Lease would each believe
/// they hold something else.
pub fn check_lease_names(base: &str, sharded: bool, environments: &[String]) -> Result<(), String> {
    let mut names: BTreeMap<String, String> = BTreeMap::new();
    let mut claim = |name: String, what: String| -> Result<(), String> {
        match names.get(&name) {
            Some(other) if *other != what => Err(format!(
                "Lease `{name}` would be both {other} and {what}: pick another --lease-name (or leaseName in the daemon configuration)"
            )),
            _ => {
                names.insert(name, what);
                Ok(())
            }
        }
    };
    for env in environments {
        claim(
            crate::cluster::lock::lease_name(env),
            format!("the lock of environment `{env}`"),
        )?;
    }
    if sharded {
        for env in environments {
            claim(
                shard::environment_lease(base, env),
                format!("the sharding Lease of environment `{env}`"),
            )?;
        }
        let members = shard::member_prefix(base);
        if let Some((name, what)) = names.iter().find(|(name, _)| name.starts_with(&members)) {
            return Err(format!(
                "Lease `{name}` would be both {what} and a replica's member Lease (`{members}<replica>`): pick another --lease-name (or leaseName in the daemon configuration)"
            ));
        }
    } else {
        claim(base.to_string(), "the leader Lease".to_string())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envs(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_lease_name_that_makes_an_environment_lease_a_lock_is_refused() {
        // `<lease-name>-<env>` = `tenantsync-sync-<env>`: the holder of the
        // environment and the writer holding its lock would share a Lease.
        let e = check_lease_names("tenantsync-sync", true, &envs(&["prod"])).unwrap_err();
        assert!(
            e.contains("tenantsync-sync-prod") && e.contains("--lease-name"),
            "{e}"
        );
        let e = check_lease_names("tenantsync", true, &envs(&["prod", "sync-prod"])).unwrap_err();
        assert!(e.contains("`sync-prod`") && e.contains("`prod`"), "{e}");
        let e = check_lease_names("tenantsync-sync-dev", false, &envs(&["dev"])).unwrap_err();
        assert!(e.contains("leader Lease"), "{e}");
        // An environment with a dot in its name whose lock reads as a
        // member Lease of the base.
        let e = check_lease_names("tenantsync-sync-prod", true, &envs(&["prod.member-h-1"]))
            .unwrap_err();
        assert!(e.contains("member Lease"), "{e}");
        assert_eq!(
            check_lease_names(leader::LEASE_NAME, true, &envs(&["dev", "prod"])),
            Ok(())
        );
        assert_eq!(
            check_lease_names(leader::LEASE_NAME, false, &envs(&["dev", "prod"])),
            Ok(())
        );
    }

    #[test]
    fn a_hand_over_stops_a_sync_only_once_asked_for_its_grace_and_can_be_withdrawn() {
        let owners = Owners::new(true, "l", "me", &envs(&["dev"]));
        assert!(owners.ask_hand_over("dev", true), "asked now");
        assert!(!owners.ask_hand_over("dev", true), "already asked");
        assert!(owners.hand_over_requested("dev"));
        assert!(!owners.handing_over("dev"), "not within its grace");
        // Asked long enough ago: a sync in flight stops.
        if let Ok(mut since) = owners.slots["dev"].hand_over_since.lock() {
            *since = Instant::now().checked_sub(HAND_OVER_GRACE);
        }
        assert!(owners.handing_over("dev"));
        // No longer needed: withdrawn, nothing stops.
        owners.ask_hand_over("dev", false);
        assert!(!owners.hand_over_requested("dev") && !owners.handing_over("dev"));
        assert!(owners.ask_hand_over("dev", true), "asked again, from now");
        assert!(!owners.handing_over("dev"));
    }

    #[test]
    fn a_hand_over_stops_a_syncs_fence_unless_the_sync_must_finish_and_a_lost_lease_always_does() {
        let owners = Arc::new(Owners::new(true, "l", "me", &envs(&["dev"])));
        owners.slots["dev"].owned.store(true, Ordering::SeqCst);
        owners.confirm("dev", Instant::now());
        let handing_over = || {
            owners.ask_hand_over("dev", true);
            if let Ok(mut since) = owners.slots["dev"].hand_over_since.lock() {
                *since = Instant::now().checked_sub(HAND_OVER_GRACE);
            }
            assert!(owners.handing_over("dev"));
        };
        let waits = Arc::new(AtomicBool::new(false));
        let fence = |waits: &Arc<AtomicBool>| owners.fence(Fence::default(), "dev", waits.clone());
        // Held and not handing over: held.
        assert!(!fence(&waits).lost());
        // Handing over: an ordinary sync stops, saying why.
        handing_over();
        let ordinary = fence(&waits);
        assert!(ordinary.lost());
        assert_eq!(ordinary.why(), HANDED_OVER);
        // One that must finish (an approved plan, a rollback) goes on
        // while the Lease is held (before: stopped as a lost lock).
        waits.store(true, Ordering::SeqCst);
        let finishing = fence(&waits);
        assert!(!finishing.lost());
        // ... and stops once the Lease is no longer held.
        owners.slots["dev"].owned.store(false, Ordering::SeqCst);
        assert!(finishing.lost());
        assert_ne!(finishing.why(), HANDED_OVER);
    }

    #[test]
    fn an_environment_is_writable_only_until_its_last_confirmed_renewal_lapses() {
        let owners = Owners::new(true, "l", "me", &envs(&["dev", "prod"]));
        for slot in owners.slots.values() {
            slot.owned.store(true, Ordering::SeqCst);
        }
        // Held but never confirmed: not writable.
        assert!(!owners.owns("dev"));
        let now = Instant::now();
        owners.confirm("dev", now);
        owners.confirm("prod", now);
        assert!(owners.owns("dev") && owners.owned() == ["dev", "prod"]);
        let slot = |e: &str| &owners.slots[e];
        // HOLD after the renewal was sent, with no renewal confirmed since,
        // it no longer writes: a replica whose renewals stall stops before
        // the Lease can expire.
        assert!(slot("prod").writable(now + HOLD - Duration::from_millis(1)));
        assert!(!slot("prod").writable(now + HOLD));
        // A renewal sent a second later extends dev's hold from then.
        owners.confirm("dev", now + Duration::from_secs(1));
        assert_eq!(
            owners.lapsed(now + HOLD),
            ["prod".to_string()],
            "only prod lapsed"
        );
        // An older confirmation arriving late never shortens a newer one.
        owners.confirm("dev", now);
        assert!(slot("dev").writable(now + HOLD));
        assert!(HOLD + RETRY_PERIOD * 2 <= LEASE_DURATION);
    }
}
