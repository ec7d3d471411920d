//! Waiting for applied objects to become healthy (`sync --wait`).
//!
//! Polls the objects not yet healthy every [`POLL_INTERVAL`] (one GET
//! each, or one LIST of a kind with many of them pending; a poll that took
//! long waits three times its length before the next), and judges each
//! with [`health::assess`]. Healthy is final: an object is
//! not read again once healthy, so a long wait costs only the stragglers.
//! Degraded is not final (a controller may still recover, a user may fix a
//! quota), so the wait goes on, except when every object left is Degraded
//! for [`DEGRADED_POLLS`] polls in a row: then nothing is making progress.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject};
use tokio::time::Instant;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

use super::{Cluster, ClusterError, api_resource};
use crate::object;
use crate::object::Name;
use crate::object::Object;
use crate::sync::health::{self, Health, HealthOptions, HealthStatus};
use crate::sync::inventory::ObjectRef;
use crate::sync::report::{HealthReport, ObjectHealth};

/// Time between two reads of an object not yet healthy.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Polls in a row with every unhealthy object Degraded before giving up early.
pub const DEGRADED_POLLS: u32 = 3;
/// GETs in flight at once.
const CONCURRENCY: usize = 16;
/// Objects of one kind pending at once from which a poll lists the kind
/// (one request a page) instead of reading each (a GET each).
const LIST_AT: usize = 32;

/// Waits until every object is Healthy, or `timeout` passes, or every object
/// not healthy stayed Degraded for [`DEGRADED_POLLS`] polls. Returns the last
/// health of each object, in the order given; the caller decides what a
/// Progressing or Degraded result means (the exit code).
///
/// `on_change` is called each time an object's health (status or message)
/// differs from what was last seen, the first reading included, so a caller
/// can print `Progressing` then `Healthy`. An object not found is
/// Progressing; one never read before the timeout is Progressing too.
pub async fn wait_healthy(
    cluster: &Cluster,
    listing: Option<&Listing>,
    objects: &[ObjectRef],
    options: &HealthOptions,
    timeout: Duration,
    mut on_change: impl FnMut(&ObjectRef, &Health),
) -> Result<Vec<(ObjectRef, Health)>, ClusterError> {
    let deadline = Instant::now() + timeout;
    let resources = resolve_kinds(cluster, objects).await?;
    // Kinds read one by one for the rest of the wait: their LIST was
    // refused, or failed twice in a row.
    let mut unlisted = Unlisted::default();
    let mut last: Vec<Option<Health>> = vec![None; objects.len()];
    // Why an object could not be read at the last poll, if it could not.
    let mut unread: Vec<Option<String>> = vec![None; objects.len()];
    let mut degraded_polls = 0;
    loop {
        let pending: Vec<usize> = (0..objects.len())
            .filter(|&i| !matches!(&last[i], Some(h) if h.status == HealthStatus::Healthy))
            .collect();
        if pending.is_empty() {
            break;
        }
        let polled = Instant::now();
        let reads = read_pending(
            cluster,
            listing,
            &mut unlisted,
            objects,
            &pending,
            &resources,
            options,
        );
        let Ok((mut results, not_listed)) = tokio::time::timeout_at(deadline, reads).await else {
            break;
        };
        for (i, why) in not_listed {
            unread[i] = Some(why);
        }
        // Changes reported in the objects' order, however they were read.
        results.sort_unstable_by_key(|(i, _)| *i);
        for (i, result) in results {
            // A read the server did not answer (a dropped connection, 429,
            // 5xx) is tried again at the next poll until the deadline; a
            // refusal (no permission, no such kind) is final.
            let health = match result {
                Ok(health) => health,
                Err(e) if e.is_permission() || !retryable(&e) => return Err(e),
                Err(e) => {
                    unread[i] = Some(e.to_string());
                    continue;
                }
            };
            unread[i] = None;
            if last[i].as_ref() != Some(&health) {
                on_change(&objects[i], &health);
                last[i] = Some(health);
            }
        }
        let unhealthy: Vec<HealthStatus> = last
            .iter()
            .flatten()
            .map(|h| h.status)
            .filter(|s| *s != HealthStatus::Healthy)
            .collect();
        // All Healthy only once every object was read: one the server did
        // not answer is read again, never taken for Healthy or failed.
        let all_seen = last.iter().all(Option::is_some);
        if unhealthy.is_empty() && all_seen {
            break;
        }
        // Given up early only on what was read: not while an object was
        // never read, or could not be read at this poll.
        let all_read = all_seen && unread.iter().all(Option::is_none);
        if all_read
            && !unhealthy.is_empty()
            && unhealthy.iter().all(|s| *s == HealthStatus::Degraded)
        {
            degraded_polls += 1;
            if degraded_polls >= DEGRADED_POLLS {
                break;
            }
        } else {
            degraded_polls = 0;
        }
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        // A poll that took long (thousands of objects pending) is not
        // repeated at once: the reads take at most a quarter of the time.
        // The last one still starts about its length before the deadline,
        // so what became Healthy late is seen.
        let took = now.duration_since(polled);
        let mut next = now + POLL_INTERVAL.max(took.saturating_mul(3));
        if next + took > deadline {
            // The last poll, if one as long can still end in time.
            next = deadline.checked_sub(took).unwrap_or(now);
            if next < now + POLL_INTERVAL {
                tokio::time::sleep_until(deadline).await;
                break;
            }
        }
        tokio::time::sleep_until(next).await;
        if Instant::now() >= deadline {
            break;
        }
    }
    Ok(objects
        .iter()
        .zip(last)
        .zip(unread)
        .map(|((r, h), unread)| {
            let health = h.unwrap_or_else(|| match unread {
                Some(why) => Health::progressing(format!("could not be read: {why}")),
                None => Health::progressing("not read before the timeout passed"),
            });
            (r.clone(), health)
        })
        .collect())
}

type Resources = HashMap<(Name, Name), (ApiResource, bool)>;

/// Where a wait may list objects instead of reading them one by one: the
/// environment whose label they carry, and how many objects of each kind
/// (`apiVersion`, `kind`) it declares, so that a LIST is made only where
/// much of what it returns is waited for.
pub struct Listing {
    environment: String,
    declared: HashMap<(Name, Name), usize>,
}

impl Listing {
    /// `declared`: every object of the environment.
    pub fn new<'o>(environment: &str, declared: impl IntoIterator<Item = &'o Object>) -> Self {
        let mut counts: HashMap<(Name, Name), usize> = HashMap::new();
        for o in declared {
            let r = ObjectRef::of(o);
            *counts.entry((r.api_version, r.kind)).or_default() += 1;
        }
        Listing {
            environment: environment.to_string(),
            declared: counts,
        }
    }

    /// Whether to list `kind` with `pending` of its objects waited for: at
    /// least [`LIST_AT`] of them, and at least a quarter of the
    /// environment's objects of that kind (a LIST returns them all).
    fn lists(&self, kind: &(Name, Name), pending: usize) -> bool {
        let declared = self.declared.get(kind).copied().unwrap_or(0);
        pending >= LIST_AT && pending.saturating_mul(4) >= declared
    }
}

/// One poll's reads of the `pending` objects (indices into `objects`), each
/// judged, in no particular order. A kind with many objects pending
/// ([`Listing::lists`]) is read with one LIST of the environment's label (a
/// page at a time), not a GET each: the thousands of Deployments a large
/// first sync waits for cost a few requests a poll, not thousands. An
/// object the LIST did not return (not created yet, or not labelled) is
/// read with a GET, so a missing object is judged as it always was. A LIST
/// the server did not answer (or answered 429 or 5xx) leaves that kind's
/// objects unread until the next poll (returned apart, with why: no burst
/// of GETs at a busy server), and a second failure in a row, or a refusal
/// (403, 404), makes the kind read one by one for the rest of the wait
/// (`unlisted`).
async fn read_pending(
    cluster: &Cluster,
    listing: Option<&Listing>,
    unlisted: &mut Unlisted,
    objects: &[ObjectRef],
    pending: &[usize],
    resources: &Resources,
    options: &HealthOptions,
) -> (
    Vec<(usize, Result<Health, ClusterError>)>,
    Vec<(usize, String)>,
) {
    let mut by_kind: HashMap<(Name, Name), Vec<usize>> = HashMap::new();
    for &i in pending {
        let r = &objects[i];
        by_kind
            .entry((r.api_version.clone(), r.kind.clone()))
            .or_default()
            .push(i);
    }
    let mut out = Vec::with_capacity(pending.len());
    let mut not_listed = Vec::new();
    let mut get = Vec::new();
    for (key, indices) in by_kind {
        let Some(listing) =
            listing.filter(|l| !unlisted.refused.contains(&key) && l.lists(&key, indices.len()))
        else {
            get.extend(indices);
            continue;
        };
        let Some((resource, namespaced)) = resources.get(&key) else {
            get.extend(indices);
            continue;
        };
        // By name, then namespace (a few objects share a name); what the
        // LIST returns is taken out, what is left it did not return.
        let mut wanted: HashMap<&str, Vec<usize>> = HashMap::with_capacity(indices.len());
        for &i in &indices {
            wanted.entry(&*objects[i].name).or_default().push(i);
        }
        let mut judged = Vec::new();
        let listed = cluster
            .for_each_labelled(&listing.environment, resource.clone(), &key.1, |item| {
                let meta = &item["metadata"];
                let Some(candidates) = meta["name"].as_str().and_then(|n| wanted.get_mut(n)) else {
                    return;
                };
                let namespace = meta["namespace"].as_str();
                if let Some(at) = candidates
                    .iter()
                    .position(|&i| !namespaced || objects[i].namespace.as_deref() == namespace)
                {
                    let i = candidates.swap_remove(at);
                    judged.push((i, Ok(health::assess(&item, options))));
                }
            })
            .await;
        match listed {
            Ok(()) => {
                unlisted.failed.remove(&key);
                out.append(&mut judged);
                get.extend(wanted.into_values().flatten());
            }
            Err(e) if retryable(&e) && unlisted.failed.insert(key.clone()) => {
                // Not a GET each now: the server is busy or away.
                let why = e.to_string();
                not_listed.extend(indices.into_iter().map(|i| (i, why.clone())));
            }
            Err(e) => {
                tracing::info!(kind = %key.1, error = %e, "cannot list for health; reading each object instead");
                unlisted.refused.insert(key);
                get.extend(indices);
            }
        }
    }
    let reads = futures::stream::iter(get.into_iter().filter_map(|i| {
        let r = &objects[i];
        let resource = resources.get(&(r.api_version.clone(), r.kind.clone()))?;
        Some(async move { (i, read_health(cluster, r, resource, options).await) })
    }))
    .buffered(CONCURRENCY)
    .collect::<Vec<_>>()
    .await;
    out.extend(reads);
    (out, not_listed)
}

/// Kinds a wait no longer lists ([`read_pending`]).
#[derive(Default)]
struct Unlisted {
    /// Whose LIST failed at the last try (once more, and they are refused).
    failed: HashSet<(Name, Name)>,
    /// Read one by one for the rest of the wait.
    refused: HashSet<(Name, Name)>,
}

/// Whether a failed read may succeed if tried again: the server did not
/// answer, or answered that it is busy or failing (429, 5xx).
fn retryable(e: &ClusterError) -> bool {
    e.is_transport() || matches!(e, ClusterError::Api { code, .. } if *code == 429 || *code >= 500)
}

/// The API resource of every kind among `objects`, resolved once: the kinds
/// tenantsync renders and CustomResourceDefinition without a request, other
/// kinds by API discovery. A kind the server does not serve is an error.
async fn resolve_kinds(
    cluster: &Cluster,
    objects: &[ObjectRef],
) -> Result<Resources, ClusterError> {
    let mut out = HashMap::new();
    for r in objects {
        let key = (r.api_version.clone(), r.kind.clone());
        if out.contains_key(&key) {
            continue;
        }
        let found = match known_kind(&r.api_version, &r.kind) {
            Some(found) => Some(found),
            None => cluster.resolve_kind(&r.api_version, &r.kind).await?,
        };
        let Some(found) = found else {
            return Err(ClusterError::NotServed {
                server: cluster.server.clone(),
                verb: "wait for".into(),
                resource: format!("{} {} ({})", r.api_version, r.kind, r.id()),
                consequence: ", so its health cannot be read".into(),
            });
        };
        out.insert(key, found);
    }
    Ok(out)
}

fn known_kind(api_version: &str, kind: &str) -> Option<(ApiResource, bool)> {
    if api_version == "apiextensions.k8s.io/v1" && kind == "CustomResourceDefinition" {
        return Some((
            ApiResource {
                group: "apiextensions.k8s.io".into(),
                version: "v1".into(),
                api_version: api_version.into(),
                kind: kind.into(),
                plural: "customresourcedefinitions".into(),
            },
            false,
        ));
    }
    object::MANAGED_KINDS
        .iter()
        .map(|k| (api_resource(k), k.namespaced))
        .find(|(resource, _)| resource.api_version == api_version && resource.kind == kind)
}

/// One GET, judged. Not found is Progressing: it may not be visible yet.
async fn read_health(
    cluster: &Cluster,
    r: &ObjectRef,
    (resource, namespaced): &(ApiResource, bool),
    options: &HealthOptions,
) -> Result<Health, ClusterError> {
    let api: Api<DynamicObject> = match &r.namespace {
        Some(ns) if *namespaced => Api::namespaced_with(cluster.client.clone(), ns, resource),
        _ => Api::all_with(cluster.client.clone(), resource),
    };
    cluster.count(false);
    let live = api
        .get_opt(&r.name)
        .await
        .map_err(|e| cluster.classify(e, "get", &r.id()))?;
    let Some(live) = live else {
        return Ok(Health::progressing("not found"));
    };
    let mut value = serde_json::to_value(&live).map_err(|e| ClusterError::Unreadable {
        server: cluster.server.clone(),
        verb: "read".into(),
        resource: r.id(),
        reason: e.to_string(),
    })?;
    // The rules go by kind; make sure it is there whatever the response held.
    if let Some(map) = value.as_object_mut() {
        map.insert("kind".into(), r.kind.to_string().into());
        map.insert("apiVersion".into(), r.api_version.to_string().into());
    }
    Ok(health::assess(&value, options))
}

impl Cluster {
    /// Waits until a CustomResourceDefinition is Established, so objects of
    /// its kind can be applied. Returns false on timeout.
    pub async fn wait_established(
        &self,
        name: &str,
        timeout: Duration,
    ) -> Result<bool, ClusterError> {
        let api: Api<CustomResourceDefinition> = Api::all(self.client.clone());
        let start = Instant::now();
        while start.elapsed() < timeout {
            self.count(false);
            let crd = api
                .get_opt(name)
                .await
                .map_err(|e| self.classify(e, "get", "customresourcedefinitions"))?;
            let established = crd
                .and_then(|c| c.status)
                .and_then(|s| s.conditions)
                .is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c.type_ == "Established" && c.status == "True")
                });
            if established {
                return Ok(true);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(false)
    }
}

/// Waits (up to `timeout`) until the desired objects are healthy, and
/// summarises per workspace (worst wins).
/// `environment`: the environment `desired` is all of, if it is (then a
/// kind with many objects waited for is listed; see [`Listing`]).
pub async fn wait_for_health(
    cluster: &Cluster,
    environment: Option<&str>,
    desired: &[Object],
    options: &HealthOptions,
    timeout: Duration,
    on_change: impl FnMut(&ObjectRef, &Health),
) -> Result<HealthReport, ClusterError> {
    let refs: Vec<ObjectRef> = desired.iter().map(ObjectRef::of).collect();
    let results = super::wait::wait_healthy(
        cluster,
        environment.map(|env| Listing::new(env, desired)).as_ref(),
        &refs,
        options,
        timeout,
        on_change,
    )
    .await?;
    let mut workspaces: std::collections::BTreeMap<String, Vec<Health>> =
        std::collections::BTreeMap::new();
    let mut objects = Vec::new();
    for ((r, h), o) in results.into_iter().zip(desired) {
        workspaces
            .entry(o.workspace.to_string())
            .or_default()
            .push(h.clone());
        objects.push(ObjectHealth {
            id: r.id(),
            workspace: o.workspace.to_string(),
            status: h.status,
            message: h.message,
        });
    }
    let status = crate::sync::health::aggregate(workspaces.values().flatten());
    Ok(HealthReport {
        status,
        workspaces: workspaces
            .iter()
            .map(|(w, hs)| (w.clone(), crate::sync::health::aggregate(hs.iter())))
            .collect(),
        objects,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kind_is_listed_only_with_many_of_its_objects_and_a_quarter_of_the_environments_waited_for()
    {
        let objects: Vec<Object> = (0..400)
            .filter_map(|i| {
                Object::from_value(
                    "ws",
                    &serde_json::json!({
                        "apiVersion": "apps/v1", "kind": "Deployment",
                        "metadata": {"name": format!("d{i}"), "namespace": "n"}
                    }),
                )
            })
            .collect();
        let listing = Listing::new("prod", &objects);
        let deployments = (Name::from("apps/v1"), Name::from("Deployment"));
        // A few, or a small part of 400: a GET each.
        assert!(!listing.lists(&deployments, LIST_AT - 1));
        assert!(!listing.lists(&deployments, 99));
        // A quarter or more: one LIST.
        assert!(listing.lists(&deployments, 100));
        assert!(listing.lists(&deployments, 400));
        // A kind the environment does not declare (as counted): by count.
        let other = (Name::from("v1"), Name::from("ConfigMap"));
        assert!(listing.lists(&other, LIST_AT));
    }

    #[test]
    fn a_read_the_server_did_not_answer_is_tried_again_a_refusal_is_not() {
        let api = |code: u16| ClusterError::Api {
            server: "s".into(),
            verb: "get".into(),
            resource: "deployments".into(),
            message: "m".into(),
            code,
        };
        let unreachable = ClusterError::Unreachable {
            server: "s".into(),
            reason: "connection reset".into(),
        };
        assert!(retryable(&unreachable));
        assert!(retryable(&api(429)) && retryable(&api(500)) && retryable(&api(503)));
        assert!(!retryable(&api(400)) && !retryable(&api(404)) && !retryable(&api(409)));
    }

    #[test]
    fn known_kinds_cover_rendered_kinds_and_crds() {
        for k in object::MANAGED_KINDS {
            let resource = api_resource(k);
            let found = known_kind(&resource.api_version, k.kind);
            assert_eq!(
                found.map(|(r, n)| (r.plural, n)),
                Some((k.plural.to_string(), k.namespaced)),
                "{}",
                k.kind
            );
        }
        let crd = known_kind("apiextensions.k8s.io/v1", "CustomResourceDefinition");
        assert_eq!(
            crd.map(|(r, n)| (r.plural, n)),
            Some(("customresourcedefinitions".to_string(), false))
        );
        assert!(known_kind("example.com/v1", "Widget").is_none());
        assert!(known_kind("apps/v1beta1", "Deployment").is_none());
    }
}
