//! The inventory ConfigMap: read, written, and the status fields on it.
//!
//! Checked writes never lose another writer's update: every write
//! carries the `resourceVersion` it was computed from (server-side apply
//! checks it; a first write is a create, which fails if someone created it
//! first). On a conflict the stored inventory is read again and merged
//! ([`inventory::merge_concurrent`]: every object another writer added is
//! kept), then written again.
//!
//! A long object list is split into chunk ConfigMaps
//! (`inventory-<env>.<generation>.<n>`, [`inventory::Encoded`]): each write
//! writes chunks of a generation of its own first, then the inventory that
//! names them (checked as above), then deletes the chunks it replaced. A
//! reader never sees an inventory naming chunks not yet written; a process
//! killed mid-write leaves the inventory as it was, and its unnamed chunks
//! are deleted by a later write once they are old.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};

use super::{Cluster, ClusterError};
use crate::object::FIELD_MANAGER;
use crate::sync::inventory::{self, ChunkRef, Inventory, SYSTEM_NAMESPACE};
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::object::{MANAGED_BY, MANAGER};

/// Attempts before a conflicting inventory write gives up.
const WRITE_ATTEMPTS: usize = 8;
/// Reads of an inventory whose chunks were replaced while it was read.
const READ_ATTEMPTS: usize = 3;
/// Chunks the inventory does not name that were made this long before a
/// write (by the API server's clock) are left-overs of a write that stopped
/// mid-way (a killed process) and are deleted by that write; younger ones
/// may be another writer's, not yet named by its inventory.
const ORPHAN_AGE: Duration = Duration::from_secs(600);
/// The environment variable that sets a smaller chunk size (bytes): for
/// tests that need several chunks without tens of thousands of objects.
pub const CHUNK_BYTES_ENV: &str = "TENANTSYNC_INVENTORY_CHUNK_BYTES";

/// What a record-only change of the inventory did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Updated {
    Written,
    /// Nothing to change (or no inventory yet).
    Unchanged,
    /// The writer no longer holds the environment: nothing written.
    NotHeld,
}

/// What setting the rollout record did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RolloutWrite {
    Written,
    /// Already so, or no inventory yet.
    Unchanged,
    /// Another writer set or cleared the record since this one last saw
    /// it: left as the other writer recorded it.
    Stale,
    /// The writer no longer holds the environment: nothing written.
    NotHeld,
}

/// An inventory as stored, with the `resourceVersion` it was read at
/// (`None`: there was none) and the chunks its head named.
#[derive(Clone, Debug)]
pub struct Stored {
    pub inventory: Inventory,
    pub resource_version: Option<String>,
    pub chunks: Option<ChunkRef>,
}

/// The compressed size of one chunk: [`inventory::CHUNK_BYTES`], or less
/// when [`CHUNK_BYTES_ENV`] says so.
fn chunk_bytes() -> usize {
    std::env::var(CHUNK_BYTES_ENV)
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n >= 256)
        .map_or(inventory::CHUNK_BYTES, |n| n.min(inventory::CHUNK_BYTES))
}

/// A generation name unique to one write: chunks written by two writers,
/// or by two attempts of one, never share a name.
fn new_generation() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{nanos:x}{:x}{:x}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

impl Cluster {
    fn inventory_unreadable(&self, name: &str, reason: String) -> ClusterError {
        ClusterError::Unreadable {
            server: self.server.clone(),
            verb: "read".into(),
            resource: format!("configmap {SYSTEM_NAMESPACE}/{name}"),
            reason,
        }
    }

    async fn get_config_map(
        &self,
        api: &Api<ConfigMap>,
        name: &str,
    ) -> Result<Option<ConfigMap>, ClusterError> {
        self.count(false);
        api.get_opt(name)
            .await
            .map_err(|e| self.classify(e, "get", "configmaps"))
    }

    /// Reads an environment's inventory (its ConfigMap, and the chunks it
    /// names when its list is long) and its `resourceVersion`. A chunk that
    /// is gone was replaced by a newer write since the head was read: the
    /// head is read again.
    pub async fn read_inventory_stored(&self, environment: &str) -> Result<Stored, ClusterError> {
        self.read_inventory_with(environment, None).await
    }

    /// The environment's inventory holding only the objects `keep` keeps
    /// (a plan of some workspaces: those in their namespaces), read
    /// without building a record of every other object; `None` before the
    /// first sync. For reading only: never written back.
    pub async fn read_inventory_keeping(
        &self,
        environment: &str,
        keep: &inventory::Keep<'_>,
    ) -> Result<Option<Inventory>, ClusterError> {
        let stored = self.read_inventory_with(environment, Some(keep)).await?;
        Ok(stored.resource_version.map(|_| stored.inventory))
    }

    async fn read_inventory_with(
        &self,
        environment: &str,
        keep: Option<&inventory::Keep<'_>>,
    ) -> Result<Stored, ClusterError> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), SYSTEM_NAMESPACE);
        let name = inventory::name_of(environment);
        let mut missing = String::new();
        'read: for _ in 0..READ_ATTEMPTS {
            let Some(head) = self.get_config_map(&api, &name).await? else {
                return Ok(Stored {
                    inventory: Inventory::new(environment),
                    resource_version: None,
                    chunks: None,
                });
            };
            let named = Inventory::chunks_of(&head)
                .map_err(|e| self.inventory_unreadable(&name, e.to_string()))?;
            let mut chunks = Vec::new();
            for chunk in named.iter().flat_map(|r| r.names(environment)) {
                match self.get_config_map(&api, &chunk).await? {
                    Some(c) => chunks.push(c),
                    None => {
                        missing = chunk;
                        continue 'read;
                    }
                }
            }
            let inventory = Inventory::from_config_maps_keeping(&head, &chunks, keep)
                .map_err(|e| self.inventory_unreadable(&name, e.to_string()))?;
            return Ok(Stored {
                inventory,
                resource_version: head.metadata.resource_version,
                chunks: named,
            });
        }
        Err(self.inventory_unreadable(
            &name,
            format!(
                "its chunk {missing} is missing ({READ_ATTEMPTS} reads): if no other sync is running, \
                 it was deleted by hand; `kubectl -n {SYSTEM_NAMESPACE} delete configmap {name}` and \
                 a `tenantsync sync --adopt` records the environment's objects again"
            ),
        ))
    }

    /// Writes `ours`, computed from `base`; returns what was stored (the
    /// merge, when another writer wrote since `base` was read). A long
    /// object list goes into chunks of a generation of this write's own,
    /// written before the inventory that names them; the chunks it
    /// replaced are deleted after.
    pub async fn write_inventory_checked(
        &self,
        base: &Stored,
        ours: &Inventory,
        fence: &crate::sync::Fence,
    ) -> Result<Stored, ClusterError> {
        let name = inventory::name_of(&ours.environment);
        let mut against = base.clone();
        let mut to_write = ours.clone();
        for _ in 0..WRITE_ATTEMPTS {
            if fence.lost() {
                return Err(ClusterError::NotHeld {
                    environment: ours.environment.clone(),
                });
            }
            if let Some(stored) = self.write_inventory_once(&against, &to_write).await? {
                return Ok(stored);
            }
            // Changed (409) or deleted (404) since read: merge again.
            let theirs = self.read_inventory_stored(&ours.environment).await?;
            tracing::info!(
                inventory = %name,
                "the inventory changed since it was read; merging and writing again"
            );
            to_write = inventory::merge_concurrent(&base.inventory, &to_write, &theirs.inventory);
            against = theirs;
        }
        Err(ClusterError::Contended {
            server: self.server.clone(),
            resource: format!("configmap {SYSTEM_NAMESPACE}/{name}"),
            attempts: WRITE_ATTEMPTS,
        })
    }

    /// A record-only change of the stored inventory (a health judgement's
    /// start, the rollout record): read, `change`d, written at the version
    /// read; on a conflict read again and `change` the fresh copy, so that
    /// nothing else another writer recorded is overwritten. Nothing is
    /// written once `fence` is lost (the writer no longer holds the
    /// environment), nor before the first sync, nor when `change` says
    /// there is nothing to change (it returns whether it changed anything).
    pub async fn update_inventory(
        &self,
        environment: &str,
        fence: &crate::sync::Fence,
        mut change: impl FnMut(&mut Inventory) -> bool,
    ) -> Result<Updated, ClusterError> {
        for _ in 0..WRITE_ATTEMPTS {
            if fence.lost() {
                return Ok(Updated::NotHeld);
            }
            let stored = self.read_inventory_stored(environment).await?;
            if stored.resource_version.is_none() {
                return Ok(Updated::Unchanged);
            }
            let mut ours = stored.inventory.clone();
            if !change(&mut ours) {
                return Ok(Updated::Unchanged);
            }
            if fence.lost() {
                return Ok(Updated::NotHeld);
            }
            if self.write_inventory_once(&stored, &ours).await?.is_some() {
                return Ok(Updated::Written);
            }
        }
        Err(ClusterError::Contended {
            server: self.server.clone(),
            resource: format!(
                "configmap {SYSTEM_NAMESPACE}/{}",
                inventory::name_of(environment)
            ),
            attempts: WRITE_ATTEMPTS,
        })
    }

    /// One write of `ours` at `base`'s `resourceVersion` (chunks first, the
    /// head, then the chunks `base` named deleted); `None` when another
    /// writer changed (409) or deleted (404) it since, this attempt's chunks
    /// deleted again.
    async fn write_inventory_once(
        &self,
        base: &Stored,
        ours: &Inventory,
    ) -> Result<Option<Stored>, ClusterError> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), SYSTEM_NAMESPACE);
        let name = inventory::name_of(&ours.environment);
        let version = base.resource_version.clone();
        let replaced = base.chunks.clone();
        let to_write = ours.clone();
        let encode_error = |e: inventory::EncodeError| ClusterError::Encode {
            environment: ours.environment.clone(),
            reason: e.to_string(),
        };
        // A write that leaves the object list as stored (a health
        // judgement, the rollout record) keeps the stored chunks: only the
        // head is written.
        let kept = base
            .chunks
            .clone()
            .filter(|_| version.is_some() && to_write.objects == base.inventory.objects);
        let encoded = match &kept {
            Some(kept) => inventory::Encoded {
                head: to_write.encode_head_keeping(kept).map_err(encode_error)?,
                chunks: Vec::new(),
            },
            None => to_write
                .encode(chunk_bytes(), &new_generation())
                .map_err(encode_error)?,
        };
        let reused = kept.is_some();
        let written_chunks = Inventory::chunks_of(&encoded.head)
            .map_err(|e| self.inventory_unreadable(&name, e.to_string()))?;
        if version.is_none() {
            self.ensure_system_namespace(false).await?;
        }
        for chunk in &encoded.chunks {
            self.apply_config_map(&api, chunk).await?;
        }
        let mut cm = encoded.head;
        self.count(true);
        let written = match &version {
            None => api.create(&PostParams::default(), &cm).await,
            Some(rv) => {
                cm.metadata.resource_version = Some(rv.clone());
                let value = config_map_value(&cm);
                let mut params = PatchParams::apply(FIELD_MANAGER);
                params.force = true;
                api.patch(&name, &params, &Patch::Apply(&value)).await
            }
        };
        match written {
            Ok(cm) => {
                // The chunks replaced are deleted only when the stored
                // inventory names exactly what was written.
                let stored = Inventory::chunks_of(&cm).ok();
                if stored.as_ref() == Some(&written_chunks) {
                    if let Some(old) = replaced.filter(|old| Some(old) != written_chunks.as_ref()) {
                        self.delete_chunks(&api, &old.names(&ours.environment))
                            .await;
                    }
                    if let Some(at) = written_at(&cm) {
                        self.delete_orphan_chunks(
                            &api,
                            &ours.environment,
                            written_chunks.as_ref(),
                            at,
                        )
                        .await;
                    }
                } else {
                    tracing::warn!(
                        inventory = %name,
                        "the inventory as stored does not name the chunks just written; no chunk is deleted"
                    );
                }
                Ok(Some(Stored {
                    inventory: to_write,
                    resource_version: cm.metadata.resource_version,
                    chunks: written_chunks,
                }))
            }
            // Changed (409) or deleted (404) since read.
            Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => {
                // This attempt's chunks are named by nothing (unless they
                // are the stored ones, kept).
                if let Some(mine) = written_chunks.as_ref().filter(|_| !reused) {
                    self.delete_chunks(&api, &mine.names(&ours.environment))
                        .await;
                }
                Ok(None)
            }
            Err(e) => Err(self.classify(e, "patch", "configmaps")),
        }
    }

    async fn apply_config_map(
        &self,
        api: &Api<ConfigMap>,
        cm: &ConfigMap,
    ) -> Result<(), ClusterError> {
        let name = cm.metadata.name.clone().unwrap_or_default();
        let mut params = PatchParams::apply(FIELD_MANAGER);
        params.force = true;
        self.count(true);
        api.patch(&name, &params, &Patch::Apply(&config_map_value(cm)))
            .await
            .map_err(|e| self.classify(e, "patch", "configmaps"))?;
        Ok(())
    }

    /// Deletes chunks no inventory names any more. A failure is logged, not
    /// fatal: a later write deletes what is left once it is old.
    async fn delete_chunks(&self, api: &Api<ConfigMap>, names: &[String]) {
        for name in names {
            self.count(true);
            match api.delete(name, &Default::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => tracing::warn!(
                    chunk = %name,
                    error = %self.classify(e, "delete", "configmaps"),
                    "cannot delete an inventory chunk no longer used; a later sync deletes it"
                ),
            }
        }
    }

    /// Deletes the environment's chunks that no inventory names and that
    /// are older than [`ORPHAN_AGE`] (left by a write that was killed).
    async fn delete_orphan_chunks(
        &self,
        api: &Api<ConfigMap>,
        environment: &str,
        current: Option<&ChunkRef>,
        written_at: SystemTime,
    ) {
        let params =
            ListParams::default().labels(&format!("{}={environment}", inventory::CHUNK_LABEL));
        self.count(false);
        let listed = match api.list_metadata(&params).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list inventory chunks to delete left-overs");
                return;
            }
        };
        let keep: Vec<String> = current.map(|c| c.names(environment)).unwrap_or_default();
        let orphans = inventory::orphan_chunks(
            listed
                .items
                .into_iter()
                .filter_map(|m| Some((m.metadata.name?, m.metadata.creation_timestamp?.0.into()))),
            &keep,
            written_at,
            ORPHAN_AGE,
        );
        self.delete_chunks(api, &orphans).await;
    }

    /// Records that `workspaces` were Healthy at `revision` (those still
    /// applied at it): only that, on the stored inventory as it is at the
    /// write (compare-and-set, never a merge of an older copy), and only
    /// while `fence` holds. Nothing before the first sync.
    pub async fn record_healthy(
        &self,
        environment: &str,
        fence: &crate::sync::Fence,
        workspaces: &[String],
        revision: &str,
    ) -> Result<Updated, ClusterError> {
        self.update_inventory(environment, fence, |inv| {
            inv.record_healthy(workspaces, revision)
        })
        .await
    }

    /// Records that the health of `workspaces` at `revision` is judged
    /// since `since` (those applied at it and not judged yet; a judgement
    /// under way keeps its start): only that, on the stored inventory as
    /// it is at the write, and only while `fence` holds.
    pub async fn record_judging(
        &self,
        environment: &str,
        fence: &crate::sync::Fence,
        workspaces: &[String],
        revision: &str,
        since: &str,
    ) -> Result<Updated, ClusterError> {
        self.update_inventory(environment, fence, |inv| {
            inv.record_judging(workspaces, revision, since)
        })
        .await
    }

    /// Sets the rollout record to `new` (`None`: none) if the stored one
    /// is still `expected`, the one this writer last saw
    /// ([`crate::sync::resume::set_rollout`]), and only while `fence`
    /// holds; nothing else of the inventory is written.
    pub async fn record_rollout(
        &self,
        environment: &str,
        fence: &crate::sync::Fence,
        expected: Option<&crate::sync::resume::RolloutRecord>,
        new: Option<&crate::sync::resume::RolloutRecord>,
    ) -> Result<RolloutWrite, ClusterError> {
        use crate::sync::resume::{RecordSet, set_rollout};
        let mut found = RecordSet::Same;
        let updated = self
            .update_inventory(environment, fence, |inv| {
                found = set_rollout(inv, expected, new);
                found == RecordSet::Changed
            })
            .await?;
        Ok(match (updated, found) {
            (Updated::NotHeld, _) => RolloutWrite::NotHeld,
            (_, RecordSet::Stale) => RolloutWrite::Stale,
            (Updated::Written, _) => RolloutWrite::Written,
            (Updated::Unchanged, _) => RolloutWrite::Unchanged,
        })
    }

    /// Reads an environment's inventory; `None` before the first sync.
    pub async fn read_inventory(
        &self,
        environment: &str,
    ) -> Result<Option<Inventory>, ClusterError> {
        let stored = self.read_inventory_stored(environment).await?;
        Ok(stored.resource_version.map(|_| stored.inventory))
    }

    /// The inventory's data as stored: the status fields and the summary.
    pub async fn inventory_data(
        &self,
        environment: &str,
    ) -> Result<Option<BTreeMap<String, String>>, ClusterError> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), SYSTEM_NAMESPACE);
        let cm = self
            .get_config_map(&api, &inventory::name_of(environment))
            .await?;
        Ok(cm.map(|c| c.data.unwrap_or_default()))
    }

    /// Writes the daemon's status fields (`status.*` keys) onto an existing
    /// inventory, as field manager `tenantsync-status`; does nothing before
    /// the first sync created the inventory.
    pub async fn write_status(
        &self,
        environment: &str,
        fields: &BTreeMap<String, String>,
    ) -> Result<(), ClusterError> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), SYSTEM_NAMESPACE);
        let data: serde_json::Map<String, serde_json::Value> = fields
            .iter()
            .map(|(k, v)| {
                (
                    format!("status.{k}"),
                    inventory::bounded_status_value(v).into(),
                )
            })
            .collect();
        let patch = serde_json::json!({ "data": data });
        self.count(true);
        match api
            .patch(
                &inventory::name_of(environment),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(self.classify(e, "patch", "configmaps")),
        }
    }

    /// Creates `tenantsync-system` (inventories, Events, the leader Lease)
    /// if it is missing.
    pub async fn ensure_system_namespace(&self, dry_run: bool) -> Result<(), ClusterError> {
        let mut params = PatchParams::apply(FIELD_MANAGER);
        params.force = true;
        params.dry_run = dry_run;
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(SYSTEM_NAMESPACE.into()),
                labels: Some([(MANAGED_BY.to_string(), MANAGER.to_string())].into()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        let mut ns_value = serde_json::to_value(&ns).unwrap_or_default();
        ns_value["apiVersion"] = "v1".into();
        ns_value["kind"] = "Namespace".into();
        self.count(!dry_run);
        namespaces
            .patch(SYSTEM_NAMESPACE, &params, &Patch::Apply(&ns_value))
            .await
            .map_err(|e| self.classify(e, "patch", "namespaces"))?;
        Ok(())
    }
}

/// The API server's time of the latest write of `cm` (its newest
/// managedFields entry): what chunk ages are measured against.
fn written_at(cm: &ConfigMap) -> Option<SystemTime> {
    cm.metadata
        .managed_fields
        .iter()
        .flatten()
        .filter_map(|f| f.time.as_ref())
        .map(|t| SystemTime::from(t.0))
        .max()
}

/// A ConfigMap as a server-side apply body.
fn config_map_value(cm: &ConfigMap) -> serde_json::Value {
    let mut value = serde_json::to_value(cm).unwrap_or_default();
    value["apiVersion"] = "v1".into();
    value["kind"] = "ConfigMap".into();
    value
}
