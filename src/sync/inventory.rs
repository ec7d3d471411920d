//! The in-cluster inventory of an environment (pure: encoding and set logic).
//!
//! One ConfigMap per environment in `tenantsync-system` records every object
//! tenantsync applied there, the Git revision and the time of the last sync
//! that changed something. Prune deletes only what the inventory lists, so an
//! object tenantsync did not create is never deleted, whatever its labels.
//! The object list is gzip-compressed JSON in `binaryData`; a list longer
//! than one ConfigMap holds ([`CHUNK_BYTES`]) is split into chunk
//! ConfigMaps that the inventory names ([`Inventory::encode`]).

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::{Read, Write};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::object::{MANAGED_BY, MANAGER, Name, Object, ObjectKey};
use crate::sync::resume::{Judging, RolloutRecord};

/// The namespace holding inventories (and, later, the daemon).
pub const SYSTEM_NAMESPACE: &str = "tenantsync-system";
/// Label naming the environment an inventory belongs to. Not the
/// environment label of managed objects, so `plan` never lists it.
pub const INVENTORY_LABEL: &str = "tenantsync.io/inventory";
const OBJECTS_KEY: &str = "objects.json.gz";
/// The head's key for the per-workspace revisions ([`WorkspaceRevisions`]),
/// gzip-compressed JSON (a revision repeats across workspaces, so thousands
/// compress to a few kilobytes). An inventory written before it existed
/// has none: see [`Inventory::applied_revision`].
const WORKSPACES_KEY: &str = "workspaces.json.gz";
/// The head's key for the rollout under way (gzip-compressed JSON in
/// `binaryData`; empty for none).
const ROLLOUT_KEY: &str = "rollout.json.gz";
/// The most the compressed object list may take in one ConfigMap. The API
/// server refuses a ConfigMap over 1 MiB (1,048,576 bytes of data and
/// binaryData together), and the daemon's status fields share the
/// inventory's own object: a longer list is split into chunks.
pub const CHUNK_BYTES: usize = 900 * 1024;
/// The most chunks one inventory is split into (450 MiB compressed): past
/// that, writing is refused before anything is applied.
pub const MAX_CHUNKS: usize = 512;
/// The most one status field (`status.*`) may take on the inventory.
pub const MAX_STATUS_VALUE_BYTES: usize = 8 * 1024;
/// Label of an inventory's chunk ConfigMaps: the environment.
pub const CHUNK_LABEL: &str = "tenantsync.io/inventory-chunk";
/// The inventory's key naming its chunks: `<generation>/<count>`.
const CHUNKS_KEY: &str = "chunks";

/// The ConfigMap holding chunk `index` of generation `generation` of an
/// environment's inventory: `inventory-<env>.<generation>.<index>` (an
/// environment's name has no dot, so this is never another environment's
/// inventory).
pub fn chunk_name(environment: &str, generation: &str, index: usize) -> String {
    format!("{}.{generation}.{index}", name_of(environment))
}

/// Why an inventory cannot be written.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(
        "it would take more than {limit} chunks of {chunk_bytes} bytes compressed for {objects} objects; nothing was written. Spread the workspaces over more environments or shorten the rendered names (a namespaceTemplate change records old and new names together: make it in steps)"
    )]
    TooLarge {
        objects: usize,
        chunk_bytes: usize,
        limit: usize,
    },
}

/// An inventory as ConfigMaps: its own object (`head`: environment,
/// revision, status, and the object list when it fits) and, for a longer
/// list, the chunks it names. Chunks are written before the head and each
/// write has a generation of its own, so a reader never sees a head naming
/// chunks not yet written, and a crash mid-write leaves the head as it was.
#[derive(Clone, Debug)]
pub struct Encoded {
    pub head: ConfigMap,
    pub chunks: Vec<ConfigMap>,
}

/// The head's own compressed keys ([`Inventory::encode`]).
struct HeadExtras {
    workspaces: Vec<u8>,
    rollout: Vec<u8>,
}

impl HeadExtras {
    fn len(&self) -> usize {
        self.workspaces.len() + self.rollout.len()
    }
}

/// An empty object list, compressed: the head's list when the list is in
/// chunks.
fn empty_list() -> Result<Vec<u8>, EncodeError> {
    let empty: Vec<&ObjectRef> = Vec::new();
    Ok(gzip(
        &serde_json::to_vec(&empty).map_err(std::io::Error::other)?,
    )?)
}

/// The chunks an inventory's head names: their generation and count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkRef {
    pub generation: String,
    pub count: usize,
}

impl ChunkRef {
    pub fn names(&self, environment: &str) -> Vec<String> {
        (0..self.count)
            .map(|i| chunk_name(environment, &self.generation, i))
            .collect()
    }
}

fn gzip(json: &[u8]) -> Result<Vec<u8>, std::io::Error> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(json)?;
    gz.finish()
}

/// The object list in parts that each compress to at most `chunk_bytes`
/// (contiguous runs of the ordered list, so a part's names compress well
/// together).
fn split(objects: &[&ObjectRef], chunk_bytes: usize) -> Result<Vec<Vec<u8>>, EncodeError> {
    let whole = gzip(&serde_json::to_vec(objects).map_err(std::io::Error::other)?)?;
    if whole.len() <= chunk_bytes {
        return Ok(vec![whole]);
    }
    let too_large = || EncodeError::TooLarge {
        objects: objects.len(),
        chunk_bytes,
        limit: MAX_CHUNKS,
    };
    // A first guess with room to spare, then more parts until each fits.
    let mut parts = (whole.len() * 5 / 4).div_ceil(chunk_bytes).max(2);
    loop {
        if parts > MAX_CHUNKS || parts > objects.len() {
            return Err(too_large());
        }
        let per = objects.len().div_ceil(parts);
        let compressed = objects
            .chunks(per)
            .map(|part| gzip(&serde_json::to_vec(part).map_err(std::io::Error::other)?))
            .collect::<Result<Vec<_>, _>>()?;
        if compressed.iter().all(|c| c.len() <= chunk_bytes) {
            return Ok(compressed);
        }
        parts = parts.saturating_mul(2).min(MAX_CHUNKS + 1);
    }
}

fn decompress(bytes: &[u8]) -> Result<Vec<ObjectRef>, String> {
    decompress_json(bytes, "object list")
}

/// Which recorded objects a read of the inventory keeps, by kind,
/// namespace and name (a plan of some workspaces: those in their
/// namespaces).
pub type Keep<'a> = dyn Fn(&str, Option<&str>, &str) -> bool + Send + Sync + 'a;

/// An entry of the object list as read, its text borrowed where it can be.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EntryView<'a> {
    #[serde(borrow)]
    api_version: Cow<'a, str>,
    #[serde(borrow)]
    kind: Cow<'a, str>,
    // serde borrows an `Option<Cow<str>>` only through a newtype
    // (serde-rs/serde#2016).
    #[serde(default, borrow)]
    namespace: Option<Borrowed<'a>>,
    #[serde(borrow)]
    name: Cow<'a, str>,
}

#[derive(Deserialize)]
struct Borrowed<'a>(#[serde(borrow)] Cow<'a, str>);

/// An entry's place in the list's order ([`ObjectRef`]'s).
type EntryKey<'k> = (&'k str, &'k str, Option<&'k str>, &'k str);

impl EntryView<'_> {
    fn key(&self) -> EntryKey<'_> {
        (
            &self.api_version,
            &self.kind,
            self.namespace.as_ref().map(|n| &*n.0),
            &self.name,
        )
    }
}

/// What [`read_kept`] carries from one chunk to the next.
#[derive(Default)]
struct KeptState {
    /// Entries listed so far.
    listed: usize,
    /// Every entry so far came after the one before (the list as
    /// tenantsync writes it: from an ordered set, so no repeats).
    in_order: bool,
    /// The last entry of the chunk before.
    last: Option<(String, String, Option<String>, String)>,
}

/// Reads an object list, recording into `objects` only the entries `keep`
/// keeps (sharing their names through `names`), counting the entries in
/// `state`. Only what is kept is allocated: a one-workspace plan reads
/// 66,665 entries at 5,000 workspaces and keeps 13. A list not in order
/// (written by hand: it may repeat an entry) clears `state.in_order`: its
/// count of distinct entries is not known, and the caller reads it whole.
fn read_kept(
    bytes: &[u8],
    keep: &Keep<'_>,
    names: &mut crate::object::Names,
    objects: &mut BTreeSet<ObjectRef>,
    state: &mut KeptState,
) -> Result<(), String> {
    let json = decompress_bytes(bytes, "object list")?;
    let mut reader = KeptReader {
        keep,
        names,
        objects,
        state,
    };
    let mut de = serde_json::Deserializer::from_slice(&json);
    serde::de::DeserializeSeed::deserialize(&mut reader, &mut de)
        .and_then(|()| de.end())
        .map_err(|e| format!("object list is not valid JSON: {e}"))
}

/// [`read_kept`]'s reader: each entry taken as it is parsed, none held
/// but the one before (no list of every entry is built).
struct KeptReader<'r, 'k> {
    keep: &'r Keep<'k>,
    names: &'r mut crate::object::Names,
    objects: &'r mut BTreeSet<ObjectRef>,
    state: &'r mut KeptState,
}

impl<'de> serde::de::DeserializeSeed<'de> for &mut KeptReader<'_, '_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> serde::de::Visitor<'de> for &mut KeptReader<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a list of objects")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut before: Option<EntryView<'de>> = None;
        while let Some(entry) = seq.next_element::<EntryView<'de>>()? {
            let after = match (&before, &self.state.last) {
                (Some(b), _) => entry.key() > b.key(),
                (None, Some((v, k, ns, n))) => {
                    entry.key() > (v.as_str(), k.as_str(), ns.as_deref(), n.as_str())
                }
                (None, None) => true,
            };
            self.state.in_order &= after;
            self.state.listed += 1;
            if (self.keep)(
                &entry.kind,
                entry.namespace.as_ref().map(|n| &*n.0),
                &entry.name,
            ) {
                self.objects.insert(ObjectRef {
                    api_version: self.names.get(&entry.api_version),
                    kind: self.names.get(&entry.kind),
                    namespace: entry.namespace.as_ref().map(|ns| self.names.get(&ns.0)),
                    name: self.names.get(&entry.name),
                });
            }
            before = Some(entry);
        }
        if let Some(b) = before {
            let (v, k, ns, n) = b.key();
            self.state.last = Some((v.into(), k.into(), ns.map(str::to_string), n.into()));
        }
        Ok(())
    }
}

fn decompress_json<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, String> {
    let json = decompress_bytes(bytes, what)?;
    serde_json::from_slice(&json).map_err(|e| format!("{what} is not valid JSON: {e}"))
}

fn decompress_bytes(bytes: &[u8], what: &str) -> Result<Vec<u8>, String> {
    // Gzip ends with the text's length (modulo 4 GiB): one allocation, not
    // one per doubling (a hint only; capped as the read is).
    let size = bytes
        .last_chunk::<4>()
        .map_or(0, |n| u32::from_le_bytes(*n) as usize)
        .min(64 * 1024 * 1024)
        // Deflate expands at most about 1,032 times.
        .min(bytes.len().saturating_mul(1032));
    let mut json = Vec::with_capacity(size + 1);
    flate2::read::GzDecoder::new(bytes)
        .take(64 * 1024 * 1024)
        .read_to_end(&mut json)
        .map_err(|e| format!("cannot decompress the {what}: {e}"))?;
    Ok(json)
}

pub fn name_of(environment: &str) -> String {
    format!("inventory-{environment}")
}

/// Whether an inventory records an object, whatever its API version (as
/// [`Inventory::keys`] tells): by the inventory's own ordered set when it
/// records the object under the same API version, and only when it does not,
/// by a set of every key, made once. A sync that changes nothing records
/// every object it looks up as it is declared, and makes no such set (25 MB
/// at 20,000 workspaces).
pub struct Lookup<'a> {
    inventory: &'a Inventory,
    keys: std::cell::OnceCell<HashSet<ObjectKey<'a>>>,
}

impl Lookup<'_> {
    pub fn contains(&self, object: &ObjectRef) -> bool {
        self.inventory.objects.contains(object)
            || self
                .keys
                .get_or_init(|| self.inventory.keys())
                .contains(&object.key())
    }
}

/// One object, as the inventory records it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRef {
    pub api_version: Name,
    pub kind: Name,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<Name>,
    pub name: Name,
}

impl ObjectRef {
    pub fn of(object: &Object) -> ObjectRef {
        ObjectRef {
            api_version: object.api_version.clone(),
            kind: object.kind.clone(),
            namespace: object.namespace.clone(),
            name: object.name.clone(),
        }
    }

    /// From a live object (as listed or read from the API server).
    pub fn of_live(live: &Value) -> Option<ObjectRef> {
        let (kind, namespace, name) = crate::object::live_key(live)?;
        Some(ObjectRef {
            api_version: crate::object::api_version_of(live)?.into(),
            kind: kind.into(),
            namespace: namespace.map(Name::from),
            name: name.into(),
        })
    }

    /// `Kind/namespace/name`, the one ID format of messages.
    /// The same reference with its names shared through `names`.
    fn shared(self, names: &mut crate::object::Names) -> ObjectRef {
        ObjectRef {
            api_version: names.get(&self.api_version),
            kind: names.get(&self.kind),
            namespace: self.namespace.map(|ns| names.get(&ns)),
            name: names.get(&self.name),
        }
    }

    pub fn id(&self) -> String {
        crate::object::id(self.key())
    }

    pub fn key(&self) -> ObjectKey<'_> {
        (&self.kind, self.namespace.as_deref(), &self.name)
    }
}

/// Kinds to list beyond the fixed ones: those of the desired objects and of
/// the inventory (so objects of a kind no longer declared are still found).
pub fn kinds_to_list(desired: &[Object], inventory: Option<&Inventory>) -> Vec<(String, String)> {
    let mut kinds: BTreeSet<(&str, &str)> = desired
        .iter()
        .map(|o| (&*o.api_version, &*o.kind))
        .collect();
    if let Some(inv) = inventory {
        kinds.extend(inv.objects.iter().map(|o| (&*o.api_version, &*o.kind)));
    }
    kinds
        .into_iter()
        .map(|(v, k)| (v.to_string(), k.to_string()))
        .collect()
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Inventory {
    pub environment: String,
    /// The newest revision applied in full (shared objects and `resources/`
    /// come from it; a workspace may be at another: `workspaces`).
    pub revision: Option<String>,
    /// RFC 3339 time of the last sync that changed the cluster.
    pub last_applied_at: Option<String>,
    pub objects: BTreeSet<ObjectRef>,
    /// Per workspace: the revision its objects were last applied at and the
    /// last revision under which it was Healthy.
    pub workspaces: BTreeMap<String, WorkspaceRevisions>,
    /// The daemon's rollout under way (`syncPolicy.rollout`), so that
    /// another daemon goes on at its step (`crate::sync::resume`).
    pub rollout: Option<RolloutRecord>,
    /// Why the stored rollout record could not be read (another version's
    /// record, damage), when it could not: read as none, so that plan,
    /// sync and status work; the daemon says it does not resume it.
    pub rollout_unreadable: Option<String>,
}

/// What the inventory knows of one workspace's revisions.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkspaceRevisions {
    /// The revision its objects were last applied at.
    pub applied: String,
    /// The last revision under which all its objects were Healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy: Option<String>,
    /// Since when the daemon judges its health at a revision (the one
    /// applied, while it is not Healthy at it): a resumed watch gets what
    /// is left of the deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judging: Option<Judging>,
}

/// One workspace of a sync that applied in full: the revision its objects
/// came from, and whether the sync changed any of them.
#[derive(Clone, Copy, Debug)]
pub struct AppliedWorkspace<'a> {
    pub workspace: &'a str,
    pub revision: &'a str,
    pub changed: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("inventory {namespace}/{name} is unreadable: {reason}")]
    Corrupt {
        namespace: String,
        name: String,
        reason: String,
    },
}

impl Inventory {
    pub fn new(environment: &str) -> Inventory {
        Inventory {
            environment: environment.to_string(),
            ..Inventory::default()
        }
    }

    /// The recorded objects' keys (whatever their API version), to look
    /// objects up in: the set itself is ordered by API version first.
    pub fn keys(&self) -> HashSet<ObjectKey<'_>> {
        self.objects.iter().map(ObjectRef::key).collect()
    }

    /// Looks objects up in this inventory whatever their API version,
    /// without a set of every key when each is recorded as looked up
    /// ([`Lookup`]).
    pub fn lookup(&self) -> Lookup<'_> {
        Lookup {
            inventory: self,
            keys: std::cell::OnceCell::new(),
        }
    }

    /// The revision workspace `ws`'s objects were last applied at. An
    /// inventory written before per-workspace revisions existed says nothing
    /// per workspace: every workspace is then at the environment's revision.
    pub fn applied_revision(&self, ws: &str) -> Option<&str> {
        self.workspaces
            .get(ws)
            .map(|w| w.applied.as_str())
            .or(self.revision.as_deref())
    }

    /// The last revision under which workspace `ws` was Healthy (`None`:
    /// never seen Healthy, or an inventory older than the record).
    pub fn healthy_revision(&self, ws: &str) -> Option<&str> {
        self.workspaces.get(ws).and_then(|w| w.healthy.as_deref())
    }

    /// The workspaces at another revision than the environment's, each with
    /// its revision: what a desired state must take from those revisions
    /// to describe what this inventory says is applied.
    pub fn pinned(&self) -> BTreeMap<String, String> {
        self.workspaces
            .iter()
            .filter(|(_, w)| Some(w.applied.as_str()) != self.revision.as_deref())
            .map(|(ws, w)| (ws.clone(), w.applied.clone()))
            .collect()
    }

    /// Records workspaces a sync applied in full. A workspace whose objects
    /// the sync left unchanged keeps being Healthy at the new revision when
    /// it was Healthy at the one it replaces (nothing of it changed); any
    /// other's healthy revision stays what it was until it is seen Healthy.
    pub fn record_applied<'a>(&mut self, applied: impl IntoIterator<Item = AppliedWorkspace<'a>>) {
        for a in applied {
            let entry = self.workspaces.get(a.workspace).cloned();
            let before = entry
                .as_ref()
                .map(|w| w.applied.clone())
                .or_else(|| self.revision.clone());
            let judging = entry
                .as_ref()
                .and_then(|w| w.judging.clone())
                .filter(|j| j.revision == a.revision);
            let healthy = entry.and_then(|w| w.healthy);
            let still_healthy = !a.changed && healthy.is_some() && healthy == before;
            self.workspaces.insert(
                a.workspace.to_string(),
                WorkspaceRevisions {
                    applied: a.revision.to_string(),
                    healthy: if still_healthy {
                        Some(a.revision.to_string())
                    } else {
                        healthy
                    },
                    judging,
                },
            );
        }
    }

    /// Records `revision` as applied in full. A rollout record of another
    /// revision is cleared: whoever applied this one (a CLI sync while no
    /// daemon ran, another writer) changed what the rollout had reached, so
    /// no daemon resumes it.
    pub fn record_revision(&mut self, revision: String) {
        if self
            .rollout
            .as_ref()
            .is_some_and(|r| r.revision != revision)
        {
            self.rollout = None;
        }
        self.revision = Some(revision);
    }

    /// The record of `ws`, made as applied at `revision` when it has none
    /// (an inventory from before per-workspace records).
    fn record_of(&mut self, ws: &str, revision: &str) -> &mut WorkspaceRevisions {
        self.workspaces
            .entry(ws.to_string())
            .or_insert_with(|| WorkspaceRevisions {
                applied: revision.to_string(),
                healthy: None,
                judging: None,
            })
    }

    /// Records that `workspaces` were Healthy at `revision`, those still
    /// applied at it (a workspace re-applied at another revision meanwhile
    /// says nothing of this one). Returns whether anything changed.
    pub fn record_healthy(&mut self, workspaces: &[String], revision: &str) -> bool {
        let mut changed = false;
        for ws in workspaces {
            if self.applied_revision(ws) != Some(revision) {
                continue;
            }
            let entry = self.record_of(ws, revision);
            if entry.healthy.as_deref() != Some(revision) || entry.judging.is_some() {
                entry.healthy = Some(revision.to_string());
                entry.judging = None;
                changed = true;
            }
        }
        changed
    }

    /// Records that the health of `workspaces` at `revision` is judged
    /// since `since` (RFC 3339), for those applied at it and not judged
    /// already: a judgement under way keeps its start. Returns whether
    /// anything changed.
    pub fn record_judging(&mut self, workspaces: &[String], revision: &str, since: &str) -> bool {
        let mut changed = false;
        for ws in workspaces {
            if self.applied_revision(ws) != Some(revision)
                || self.healthy_revision(ws) == Some(revision)
            {
                continue;
            }
            let entry = self.record_of(ws, revision);
            if entry
                .judging
                .as_ref()
                .is_none_or(|j| j.revision != revision)
            {
                entry.judging = Some(Judging {
                    revision: revision.to_string(),
                    since: since.to_string(),
                });
                changed = true;
            }
        }
        changed
    }

    /// The ConfigMap that stores this inventory when its object list fits
    /// in one ([`CHUNK_BYTES`]).
    pub fn to_config_map(&self) -> Result<ConfigMap, EncodeError> {
        let encoded = self.encode(CHUNK_BYTES, "0")?;
        if encoded.chunks.is_empty() {
            Ok(encoded.head)
        } else {
            Err(EncodeError::TooLarge {
                objects: self.objects.len(),
                chunk_bytes: CHUNK_BYTES,
                limit: 1,
            })
        }
    }

    /// The ConfigMaps that store this inventory: the head alone while the
    /// compressed object list fits in `chunk_bytes`, otherwise the head and
    /// chunks named after `generation` (unique to this write).
    pub fn encode(&self, chunk_bytes: usize, generation: &str) -> Result<Encoded, EncodeError> {
        // The head's own keys, written every time (empty too) for the same
        // reason as `chunks` below: the per-workspace revisions and the
        // rollout under way. They count against the head's budget: the
        // object list stays in the head only when all fit.
        let extras = self.head_extras()?;
        let objects: Vec<&ObjectRef> = self.objects.iter().collect();
        let mut parts = split(&objects, chunk_bytes)?;
        let in_head = parts.len() == 1 && parts[0].len() + extras.len() <= chunk_bytes;
        // Every key is written every time, `chunks` empty when the list is
        // in the head and the head's list empty when it is in chunks: a key
        // left out of a server-side apply stays when another field manager
        // owns it (a first write is a create), and would then name chunks
        // gone, or keep a stale list.
        if in_head {
            let head = self.head(&extras, String::new(), parts.pop());
            return Ok(Encoded {
                head,
                chunks: Vec::new(),
            });
        }
        let count = parts.len();
        let chunks = parts
            .into_iter()
            .enumerate()
            .map(|(i, bytes)| {
                self.config_map(
                    chunk_name(&self.environment, generation, i),
                    CHUNK_LABEL,
                    BTreeMap::from([("environment".to_string(), self.environment.clone())]),
                    Some(bytes),
                )
            })
            .collect();
        let head = self.head(
            &extras,
            format!("{generation}/{count}"),
            Some(empty_list()?),
        );
        Ok(Encoded { head, chunks })
    }

    /// The head alone of this inventory, naming the chunks `kept` for its
    /// object list: a write that leaves the list as stored (a health
    /// judgement, the rollout record) keeps the stored chunks, which hold
    /// that list whatever their split, and rewrites only the head (the
    /// list is not encoded again).
    pub fn encode_head_keeping(&self, kept: &ChunkRef) -> Result<ConfigMap, EncodeError> {
        let extras = self.head_extras()?;
        Ok(self.head(
            &extras,
            format!("{}/{}", kept.generation, kept.count),
            Some(empty_list()?),
        ))
    }

    /// The head's own compressed keys: the per-workspace revisions and the
    /// rollout record (none: empty).
    fn head_extras(&self) -> Result<HeadExtras, EncodeError> {
        let workspaces =
            gzip(&serde_json::to_vec(&self.workspaces).map_err(std::io::Error::other)?)?;
        let rollout = match &self.rollout {
            Some(r) => gzip(&RolloutRecord::encode(Some(r)))?,
            None => Vec::new(),
        };
        Ok(HeadExtras {
            workspaces,
            rollout,
        })
    }

    /// The inventory's head: its status fields, `chunks` (empty: the list
    /// is in the head), the list (`objects`) and the head's own keys.
    fn head(&self, extras: &HeadExtras, chunks: String, objects: Option<Vec<u8>>) -> ConfigMap {
        let mut data = BTreeMap::from([
            ("environment".to_string(), self.environment.clone()),
            ("objectCount".to_string(), self.objects.len().to_string()),
            (CHUNKS_KEY.to_string(), chunks),
        ]);
        if let Some(r) = &self.revision {
            data.insert("revision".into(), r.clone());
        }
        if let Some(t) = &self.last_applied_at {
            data.insert("lastAppliedAt".into(), t.clone());
        }
        let mut head = self.config_map(name_of(&self.environment), INVENTORY_LABEL, data, objects);
        let bytes = head.binary_data.get_or_insert_with(BTreeMap::new);
        bytes.insert(
            WORKSPACES_KEY.to_string(),
            ByteString(extras.workspaces.clone()),
        );
        bytes.insert(ROLLOUT_KEY.to_string(), ByteString(extras.rollout.clone()));
        head
    }

    fn config_map(
        &self,
        name: String,
        label: &str,
        data: BTreeMap<String, String>,
        bytes: Option<Vec<u8>>,
    ) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(name),
                namespace: Some(SYSTEM_NAMESPACE.to_string()),
                labels: Some(BTreeMap::from([
                    (MANAGED_BY.to_string(), MANAGER.to_string()),
                    (label.to_string(), self.environment.clone()),
                ])),
                ..ObjectMeta::default()
            },
            data: Some(data),
            binary_data: bytes.map(|b| BTreeMap::from([(OBJECTS_KEY.to_string(), ByteString(b))])),
            ..ConfigMap::default()
        }
    }

    /// The chunks an inventory's head names, if its list is chunked.
    pub fn chunks_of(head: &ConfigMap) -> Result<Option<ChunkRef>, InventoryError> {
        let Some(value) = head
            .data
            .as_ref()
            .and_then(|d| d.get(CHUNKS_KEY))
            .filter(|v| !v.is_empty())
        else {
            return Ok(None);
        };
        let parsed = value.split_once('/').and_then(|(generation, count)| {
            let count: usize = count.parse().ok()?;
            let valid = !generation.is_empty()
                && generation
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                && (1..=MAX_CHUNKS).contains(&count);
            valid.then(|| ChunkRef {
                generation: generation.to_string(),
                count,
            })
        });
        parsed.map(Some).ok_or_else(|| InventoryError::Corrupt {
            namespace: SYSTEM_NAMESPACE.to_string(),
            name: head.metadata.name.clone().unwrap_or_default(),
            reason: format!("`{CHUNKS_KEY}` is `{value}`, not <generation>/<count>"),
        })
    }

    /// Reads an inventory from its head and the chunks the head names, in
    /// order (none when the list is in the head).
    pub fn from_config_maps(
        head: &ConfigMap,
        chunks: &[ConfigMap],
    ) -> Result<Inventory, InventoryError> {
        Inventory::from_config_maps_keeping(head, chunks, None)
    }

    /// [`Inventory::from_config_maps`], its objects only those `keep`
    /// keeps (all without it): an inventory to read, never to write back.
    /// The count the head says is checked against every object listed.
    pub(crate) fn from_config_maps_keeping(
        head: &ConfigMap,
        chunks: &[ConfigMap],
        keep: Option<&Keep<'_>>,
    ) -> Result<Inventory, InventoryError> {
        let Some(named) = Inventory::chunks_of(head)? else {
            return Inventory::from_config_map_keeping(head, keep);
        };
        let corrupt = |name: &str, reason: String| InventoryError::Corrupt {
            namespace: SYSTEM_NAMESPACE.to_string(),
            name: name.to_string(),
            reason,
        };
        let head_name = head.metadata.name.clone().unwrap_or_default();
        let mut inventory = Inventory::from_head(head)?;
        if chunks.len() != named.count {
            return Err(corrupt(
                &head_name,
                format!("names {} chunks, {} were read", named.count, chunks.len()),
            ));
        }
        let mut names = crate::object::Names::default();
        let mut state = KeptState {
            in_order: true,
            ..KeptState::default()
        };
        for (chunk, expected) in chunks.iter().zip(named.names(&inventory.environment)) {
            let name = chunk.metadata.name.clone().unwrap_or_default();
            if name != expected {
                return Err(corrupt(&name, format!("expected chunk {expected}")));
            }
            let bytes = chunk
                .binary_data
                .as_ref()
                .and_then(|b| b.get(OBJECTS_KEY))
                .ok_or_else(|| corrupt(&name, format!("no `{OBJECTS_KEY}` key")))?;
            match keep {
                None => {
                    let listed = decompress(&bytes.0).map_err(|e| corrupt(&name, e))?;
                    inventory
                        .objects
                        .extend(listed.into_iter().map(|r| r.shared(&mut names)));
                }
                Some(keep) => {
                    read_kept(
                        &bytes.0,
                        keep,
                        &mut names,
                        &mut inventory.objects,
                        &mut state,
                    )
                    .map_err(|e| corrupt(&name, e))?;
                }
            }
        }
        match keep {
            None => {
                let listed = inventory.objects.len();
                counted(head, inventory, listed)
            }
            Some(keep) if !state.in_order => Ok(kept_of(
                Inventory::from_config_maps_keeping(head, chunks, None)?,
                keep,
            )),
            Some(_) => counted(head, inventory, state.listed),
        }
    }

    /// An inventory's environment, revision and time, from its head.
    fn from_head(cm: &ConfigMap) -> Result<Inventory, InventoryError> {
        let data = cm.data.clone().unwrap_or_default();
        let environment =
            data.get("environment")
                .cloned()
                .ok_or_else(|| InventoryError::Corrupt {
                    namespace: SYSTEM_NAMESPACE.to_string(),
                    name: cm.metadata.name.clone().unwrap_or_default(),
                    reason: "no `environment` key".into(),
                })?;
        // An inventory written before per-workspace revisions has none.
        let workspaces = match cm.binary_data.as_ref().and_then(|b| b.get(WORKSPACES_KEY)) {
            None => BTreeMap::new(),
            Some(bytes) => {
                decompress_json(&bytes.0, "per-workspace revisions").map_err(|reason| {
                    InventoryError::Corrupt {
                        namespace: SYSTEM_NAMESPACE.to_string(),
                        name: cm.metadata.name.clone().unwrap_or_default(),
                        reason,
                    }
                })?
            }
        };
        // A record that does not read (another version's, damaged) is
        // none: it is the daemon's hint to resume, never a reason for plan,
        // sync or status to fail.
        let (rollout, rollout_unreadable) = match cm
            .binary_data
            .as_ref()
            .and_then(|b| b.get(ROLLOUT_KEY))
            .filter(|b| !b.0.is_empty())
        {
            None => (None, None),
            Some(bytes) => match decompress_bytes(&bytes.0, "rollout record")
                .map_err(|e| RolloutRecord::unreadable(&e))
                .and_then(|json| RolloutRecord::decode(Some(&json)))
            {
                Ok(record) => (record, None),
                Err(reason) => (
                    None,
                    Some(format!(
                        "configmap {SYSTEM_NAMESPACE}/{}: {reason}",
                        cm.metadata.name.clone().unwrap_or_default()
                    )),
                ),
            },
        };
        Ok(Inventory {
            environment,
            revision: data.get("revision").cloned(),
            last_applied_at: data.get("lastAppliedAt").cloned(),
            objects: BTreeSet::new(),
            workspaces,
            rollout,
            rollout_unreadable,
        })
    }

    /// Reads an inventory whose object list is in its one ConfigMap.
    pub fn from_config_map(cm: &ConfigMap) -> Result<Inventory, InventoryError> {
        Inventory::from_config_map_keeping(cm, None)
    }

    fn from_config_map_keeping(
        cm: &ConfigMap,
        keep: Option<&Keep<'_>>,
    ) -> Result<Inventory, InventoryError> {
        let name = cm.metadata.name.clone().unwrap_or_default();
        let corrupt = |reason: String| InventoryError::Corrupt {
            namespace: SYSTEM_NAMESPACE.to_string(),
            name: name.clone(),
            reason,
        };
        if Inventory::chunks_of(cm)?.is_some() {
            return Err(corrupt("its object list is in chunks".into()));
        }
        let mut inventory = Inventory::from_head(cm)?;
        let bytes = cm
            .binary_data
            .as_ref()
            .and_then(|b| b.get(OBJECTS_KEY))
            .ok_or_else(|| corrupt(format!("no `{OBJECTS_KEY}` key")))?;
        // Kinds, API versions, namespaces and names recur: share them.
        let mut names = crate::object::Names::default();
        match keep {
            None => {
                let listed = decompress(&bytes.0).map_err(corrupt)?;
                inventory.objects = listed.into_iter().map(|r| r.shared(&mut names)).collect();
                let listed = inventory.objects.len();
                counted(cm, inventory, listed)
            }
            Some(keep) => {
                let mut state = KeptState {
                    in_order: true,
                    ..KeptState::default()
                };
                read_kept(
                    &bytes.0,
                    keep,
                    &mut names,
                    &mut inventory.objects,
                    &mut state,
                )
                .map_err(corrupt)?;
                if state.in_order {
                    counted(cm, inventory, state.listed)
                } else {
                    Ok(kept_of(Inventory::from_config_map_keeping(cm, None)?, keep))
                }
            }
        }
    }
}

/// `inventory` holding only the objects `keep` keeps.
fn kept_of(mut inventory: Inventory, keep: &Keep<'_>) -> Inventory {
    inventory
        .objects
        .retain(|o| keep(&o.kind, o.namespace.as_deref(), &o.name));
    inventory
}

/// The inventory read, when it has as many objects as its head says (a
/// chunk or a list cut short but still readable is not a shorter
/// inventory: prune would forget what it lost).
fn counted(
    head: &ConfigMap,
    inventory: Inventory,
    listed: usize,
) -> Result<Inventory, InventoryError> {
    let said = head
        .data
        .as_ref()
        .and_then(|d| d.get("objectCount"))
        .and_then(|n| n.parse::<usize>().ok());
    match said {
        Some(n) if n != listed => Err(InventoryError::Corrupt {
            namespace: SYSTEM_NAMESPACE.to_string(),
            name: head.metadata.name.clone().unwrap_or_default(),
            reason: format!("it says {n} objects and lists {listed}"),
        }),
        _ => Ok(inventory),
    }
}

/// Of an environment's chunks (`listed`: name and creation time), those to
/// delete: not named by the inventory (`keep`) and created at least `age`
/// before `now`, the API server's time of the write that names `keep` (not
/// this machine's clock, and never later: a chunk another writer made after
/// that write, while this one was paused, is not old whatever the pause).
/// Younger ones may belong to a write still under way.
pub fn orphan_chunks(
    listed: impl IntoIterator<Item = (String, std::time::SystemTime)>,
    keep: &[String],
    now: std::time::SystemTime,
    age: std::time::Duration,
) -> Vec<String> {
    listed
        .into_iter()
        .filter(|(name, created)| {
            !keep.contains(name) && now.duration_since(*created).is_ok_and(|a| a >= age)
        })
        .map(|(name, _)| name)
        .collect()
}

/// A status field's value as written onto the inventory: at most
/// [`MAX_STATUS_VALUE_BYTES`] (a long error list is cut at a character
/// boundary and says where the rest is), so that status never crowds out
/// the object list.
pub fn bounded_status_value(value: &str) -> String {
    if value.len() <= MAX_STATUS_VALUE_BYTES {
        return value.to_string();
    }
    let mut end = MAX_STATUS_VALUE_BYTES - 128;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}\n… ({} more bytes: see the daemon's log, or run `tenantsync validate`)",
        &value[..end],
        value.len() - end
    )
}

/// The inventory to write before applying: `old` and every declared object
/// it does not record (by `Kind/namespace/name`), so whatever a sync may
/// create is recorded before it exists. `old` itself, not a copy, when it
/// records every one.
pub fn widen<'a>(
    old: &'a Inventory,
    declared: &BTreeSet<ObjectRef>,
) -> std::borrow::Cow<'a, Inventory> {
    let added: Vec<ObjectRef> = {
        let recorded = old.lookup();
        declared
            .iter()
            .filter(|r| !recorded.contains(r))
            .cloned()
            .collect()
    };
    if added.is_empty() {
        return std::borrow::Cow::Borrowed(old);
    }
    let mut widened = old.clone();
    widened.objects.extend(added);
    std::borrow::Cow::Owned(widened)
}

/// The inventory to write when `ours` was computed from `base` but the
/// stored one is now `theirs` (another writer wrote meanwhile): ours, plus
/// every object `theirs` recorded that `base` did not. An object any writer
/// added is never dropped; one another writer removed may stay recorded
/// (harmless: the next prune finds it gone and drops it).
pub fn merge_concurrent(base: &Inventory, ours: &Inventory, theirs: &Inventory) -> Inventory {
    merge_into(base, ours.clone(), theirs)
}

/// [`merge_concurrent`], or `None` when the merge is `theirs` as stored
/// (nothing to write), told without building it: a sync that changes
/// nothing then holds no further copy of a large inventory. `ours` is
/// moved into the merge when there is one (copied then if borrowed).
pub fn merge_if_changed(
    base: &Inventory,
    ours: std::borrow::Cow<'_, Inventory>,
    theirs: &Inventory,
) -> Option<Inventory> {
    if merges_to_theirs(base, &ours, theirs) {
        return None;
    }
    Some(merge_into(base, ours.into_owned(), theirs))
}

/// [`merge_concurrent`] taking `ours` by value.
fn merge_into(base: &Inventory, mut ours: Inventory, theirs: &Inventory) -> Inventory {
    let added: Vec<ObjectRef> = {
        let known = base.keys();
        let mine = ours.keys();
        theirs
            .objects
            .iter()
            .filter(|r| !known.contains(&r.key()) && !mine.contains(&r.key()))
            .cloned()
            .collect()
    };
    // A workspace only the other writer recorded keeps its record.
    let workspaces: Vec<(String, WorkspaceRevisions)> = theirs
        .workspaces
        .iter()
        .filter(|(ws, _)| !base.workspaces.contains_key(*ws) && !ours.workspaces.contains_key(*ws))
        .map(|(ws, revisions)| (ws.clone(), revisions.clone()))
        .collect();
    ours.objects.extend(added);
    ours.workspaces.extend(workspaces);
    // The rollout record is the other writer's unless this write changed
    // it: a write that merely carried it never puts an older one back.
    if ours.rollout == base.rollout {
        ours.rollout = theirs.rollout.clone();
        ours.rollout_unreadable = theirs.rollout_unreadable.clone();
    }
    ours
}

/// Whether [`merge_concurrent`] of these is `theirs`, without building it.
fn merges_to_theirs(base: &Inventory, ours: &Inventory, theirs: &Inventory) -> bool {
    if (&ours.environment, &ours.revision, &ours.last_applied_at)
        != (
            &theirs.environment,
            &theirs.revision,
            &theirs.last_applied_at,
        )
    {
        return false;
    }
    let rollout = if ours.rollout == base.rollout {
        (&theirs.rollout, &theirs.rollout_unreadable)
    } else {
        (&ours.rollout, &ours.rollout_unreadable)
    };
    if rollout != (&theirs.rollout, &theirs.rollout_unreadable) {
        return false;
    }
    // Every workspace record of ours is theirs, and each of theirs that
    // ours lacks is one the merge takes (base did not know it).
    if ours
        .workspaces
        .iter()
        .any(|(ws, r)| theirs.workspaces.get(ws) != Some(r))
        || theirs
            .workspaces
            .keys()
            .any(|ws| !ours.workspaces.contains_key(ws) && base.workspaces.contains_key(ws))
    {
        return false;
    }
    // Likewise the objects: the merge is ours and what only theirs adds.
    if !ours.objects.is_subset(&theirs.objects) {
        return false;
    }
    let mut extra = theirs.objects.difference(&ours.objects).peekable();
    if extra.peek().is_none() {
        return true;
    }
    let known = base.keys();
    let mine = ours.keys();
    extra.all(|r| !known.contains(&r.key()) && !mine.contains(&r.key()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(kind: &str, ns: Option<&str>, name: &str) -> ObjectRef {
        ObjectRef {
            api_version: "v1".into(),
            kind: kind.into(),
            namespace: ns.map(Into::into),
            name: name.into(),
        }
    }

    /// Names that barely compress, as real tenants' names do at scale.
    fn incompressible(i: usize) -> String {
        let mut x = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
        (0..40)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                char::from(b'a' + (x % 26) as u8)
            })
            .collect()
    }

    fn incompressible_inventory(n: usize) -> Inventory {
        let mut inv = Inventory::new("prod");
        inv.revision = Some("abc".into());
        for i in 0..n {
            inv.objects
                .insert(r("ConfigMap", Some("ns-prod"), &incompressible(i)));
        }
        inv
    }

    /// Issue 19 (a one-workspace pull request's plan): an inventory read
    /// keeping some namespaces' objects holds exactly the full read's
    /// objects there, chunked or not, and still refuses a list shorter
    /// than its head says.
    #[test]
    fn an_inventory_read_keeping_some_namespaces_is_the_full_read_filtered() {
        let mut inv = incompressible_inventory(2_000);
        for ns in ["ns-a", "ns-b"] {
            inv.objects.insert(r("Deployment", Some(ns), "api"));
            inv.objects.insert(r("Namespace", None, ns));
        }
        inv.objects.insert(r("ClusterRole", None, "reader"));
        let keep = |kind: &str, ns: Option<&str>, name: &str| {
            ns == Some("ns-a") || (kind == "Namespace" && name == "ns-a")
        };
        for (chunk_bytes, chunked) in [(4_096, true), (16 * 1024 * 1024, false)] {
            let encoded = inv.encode(chunk_bytes, "g1").unwrap();
            assert_eq!(encoded.chunks.len() >= 2, chunked);
            let full = Inventory::from_config_maps(&encoded.head, &encoded.chunks).unwrap();
            let kept =
                Inventory::from_config_maps_keeping(&encoded.head, &encoded.chunks, Some(&keep))
                    .unwrap();
            let mut expected = full.clone();
            expected
                .objects
                .retain(|o| keep(&o.kind, o.namespace.as_deref(), &o.name));
            assert_eq!(expected.objects.len(), 2);
            assert_eq!(kept, expected);
            if chunked {
                assert!(
                    Inventory::from_config_maps_keeping(
                        &encoded.head,
                        &encoded.chunks[1..],
                        Some(&keep)
                    )
                    .is_err()
                );
            }
        }
        // A count the list does not match is refused, kept or not.
        let mut encoded = inv.encode(16 * 1024 * 1024, "g1").unwrap();
        if let Some(data) = encoded.head.data.as_mut() {
            data.insert("objectCount".into(), "7".into());
        }
        assert!(Inventory::from_config_maps_keeping(&encoded.head, &[], Some(&keep)).is_err());
    }

    /// Review: a list written by hand (out of order, an entry repeated
    /// apart from its twin) gets the full read's verdict from a read
    /// keeping some objects: accepted when the head counts distinct
    /// entries, refused when it counts every line.
    #[test]
    fn a_hand_written_list_out_of_order_is_judged_by_a_kept_read_as_by_a_full_one() {
        let keep = |_: &str, ns: Option<&str>, _: &str| ns == Some("ns-a");
        let list = serde_json::json!([
            {"apiVersion": "v1", "kind": "ConfigMap", "namespace": "ns-b", "name": "x"},
            {"apiVersion": "v1", "kind": "ConfigMap", "namespace": "ns-a", "name": "y"},
            {"apiVersion": "v1", "kind": "ConfigMap", "namespace": "ns-b", "name": "x"}
        ]);
        let mut inv = Inventory::new("prod");
        inv.objects.insert(r("ConfigMap", Some("ns-a"), "y"));
        for (count, accepted) in [("2", true), ("3", false)] {
            let mut head = inv.encode(16 * 1024 * 1024, "g1").unwrap().head;
            head.binary_data.as_mut().unwrap().insert(
                OBJECTS_KEY.into(),
                ByteString(gzip(list.to_string().as_bytes()).unwrap()),
            );
            head.data
                .as_mut()
                .unwrap()
                .insert("objectCount".into(), count.into());
            let full = Inventory::from_config_maps(&head, &[]);
            let kept = Inventory::from_config_maps_keeping(&head, &[], Some(&keep));
            assert_eq!(full.is_ok(), accepted, "{count}: {full:?}");
            assert_eq!(kept.is_ok(), accepted, "{count}: {kept:?}");
            if let Ok(kept) = kept {
                assert_eq!(kept.objects, inv.objects);
            }
        }
    }

    /// Session 32: a health judgement or rollout record rewrote every chunk
    /// of the object list (at 20,000 workspaces, once per applied revision).
    /// The head alone now names the chunks stored, whatever their split
    /// (another chunk size) or the size the list would take now.
    #[test]
    fn a_head_keeping_the_stored_chunks_reads_back_whole_with_them() {
        let inv = incompressible_inventory(2_000);
        let stored = inv.encode(4_096, "g1").unwrap();
        assert!(stored.chunks.len() >= 2, "{}", stored.chunks.len());
        let kept = Inventory::chunks_of(&stored.head).unwrap().unwrap();
        let mut judged = inv.clone();
        let ws = "ws-judged".to_string();
        judged.record_applied([AppliedWorkspace {
            workspace: &ws,
            revision: "r1",
            changed: true,
        }]);
        assert!(judged.record_healthy(std::slice::from_ref(&ws), "r1"));
        // Whatever chunk size the writer has: the list is not split again.
        let head = judged.encode_head_keeping(&kept).unwrap();
        assert_eq!(Inventory::chunks_of(&head).unwrap(), Some(kept));
        let read = Inventory::from_config_maps(&head, &stored.chunks).unwrap();
        assert_eq!(read, judged);
        assert_eq!(read.healthy_revision(&ws), Some("r1"));
    }

    #[test]
    fn a_long_object_list_is_split_into_chunks_that_each_fit_and_read_back_whole() {
        let inv = incompressible_inventory(40_000);
        let encoded = inv.encode(CHUNK_BYTES, "g1").unwrap();
        assert!(encoded.chunks.len() >= 2, "{}", encoded.chunks.len());
        // The head's own list is written empty (never left stale).
        let head_list = &encoded.head.binary_data.as_ref().unwrap()[OBJECTS_KEY].0;
        assert_eq!(decompress(head_list).unwrap(), Vec::<ObjectRef>::new());
        assert_eq!(encoded.head.data.as_ref().unwrap()["objectCount"], "40000");
        for (i, chunk) in encoded.chunks.iter().enumerate() {
            assert_eq!(
                chunk.metadata.name.as_deref(),
                Some(&*format!("inventory-prod.g1.{i}"))
            );
            let size = chunk.binary_data.as_ref().unwrap()[OBJECTS_KEY].0.len();
            assert!(size <= CHUNK_BYTES, "chunk {i}: {size}");
            assert_eq!(chunk.metadata.labels.as_ref().unwrap()[CHUNK_LABEL], "prod");
        }
        assert_eq!(
            Inventory::from_config_maps(&encoded.head, &encoded.chunks).unwrap(),
            inv
        );
        // A head whose chunks are not all there is an error, never a
        // shorter inventory (prune would then forget objects).
        assert!(Inventory::from_config_maps(&encoded.head, &encoded.chunks[1..]).is_err());
        assert!(Inventory::from_config_map(&encoded.head).is_err());
        // A short list stays in the head, as before chunks existed.
        let short = incompressible_inventory(100);
        let encoded = short.encode(CHUNK_BYTES, "g2").unwrap();
        assert!(encoded.chunks.is_empty());
        assert_eq!(Inventory::from_config_map(&encoded.head).unwrap(), short);
    }

    #[test]
    fn an_inventory_past_the_most_chunks_is_refused_with_what_to_do() {
        let inv = incompressible_inventory(20_000);
        let message = match inv.encode(256, "g") {
            Err(e @ EncodeError::TooLarge { .. }) => e.to_string(),
            other => panic!("expected TooLarge, got {other:?}"),
        };
        assert!(message.contains("20000 objects"), "{message}");
        assert!(message.contains("more environments"), "{message}");
    }

    #[test]
    fn only_old_chunks_named_by_nothing_are_orphans() {
        use std::time::{Duration, SystemTime};
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(10_000);
        let at = |s: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        let listed = [
            ("named-old".to_string(), at(0)),
            ("orphan-old".to_string(), at(9_000)),
            ("orphan-young".to_string(), at(9_500)),
            ("from-the-future".to_string(), at(20_000)),
        ];
        assert_eq!(
            orphan_chunks(listed, &["named-old".into()], now, Duration::from_secs(600)),
            ["orphan-old"]
        );
    }

    #[test]
    fn an_inventory_listing_fewer_objects_than_it_says_is_corrupt_not_shorter() {
        let inv = incompressible_inventory(3_000);
        let encoded = inv.encode(4096, "g").unwrap();
        assert!(encoded.chunks.len() > 2);
        let mut head = encoded.head.clone();
        head.data
            .as_mut()
            .unwrap()
            .insert("objectCount".into(), "3001".into());
        assert!(Inventory::from_config_maps(&head, &encoded.chunks).is_err());
        let mut single = Inventory::new("prod").to_config_map().unwrap();
        single
            .data
            .as_mut()
            .unwrap()
            .insert("objectCount".into(), "1".into());
        assert!(Inventory::from_config_map(&single).is_err());
    }

    #[test]
    fn a_chunk_reference_that_is_not_one_is_corrupt() {
        for bad in ["../x/3", "g/0", "g/999999", "/2", "g", "G/2"] {
            let mut head = Inventory::new("dev").to_config_map().unwrap();
            head.data
                .as_mut()
                .unwrap()
                .insert("chunks".into(), bad.into());
            assert!(Inventory::chunks_of(&head).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_long_status_value_is_cut_at_a_character_boundary_and_says_so() {
        let long = "é".repeat(MAX_STATUS_VALUE_BYTES);
        let cut = bounded_status_value(&long);
        assert!(cut.len() <= MAX_STATUS_VALUE_BYTES, "{}", cut.len());
        assert!(cut.contains("more bytes: see the daemon's log"), "{cut}");
        assert_eq!(bounded_status_value("Synced"), "Synced");
    }

    #[test]
    fn round_trips_through_its_config_map() {
        let mut inv = Inventory::new("prod");
        inv.revision = Some("abc123".into());
        inv.last_applied_at = Some("2026-11-22T10:00:00Z".into());
        for i in 0..2000 {
            inv.objects.insert(r(
                "ConfigMap",
                Some(&format!("ws{i}-prod")),
                "fhir-main-config",
            ));
        }
        let cm = inv.to_config_map().unwrap();
        assert_eq!(cm.metadata.namespace.as_deref(), Some(SYSTEM_NAMESPACE));
        assert_eq!(cm.data.as_ref().unwrap()["objectCount"], "2000");
        let size = cm.binary_data.as_ref().unwrap()[OBJECTS_KEY].0.len();
        assert!(size < 40_000, "2000 refs compress to {size} bytes");
        assert_eq!(Inventory::from_config_map(&cm).unwrap(), inv);
    }

    #[test]
    fn a_damaged_inventory_is_an_error_not_an_empty_one() {
        let mut cm = Inventory::new("dev").to_config_map().unwrap();
        cm.binary_data
            .as_mut()
            .unwrap()
            .insert(OBJECTS_KEY.into(), ByteString(b"not gzip".to_vec()));
        let e = Inventory::from_config_map(&cm).unwrap_err();
        assert!(e.to_string().contains("cannot decompress"), "{e}");
    }

    fn applied<'a>(workspace: &'a str, revision: &'a str, changed: bool) -> AppliedWorkspace<'a> {
        AppliedWorkspace {
            workspace,
            revision,
            changed,
        }
    }

    #[test]
    fn per_workspace_revisions_round_trip_in_the_head_whether_chunked_or_not() {
        let mut inv = incompressible_inventory(3_000);
        inv.record_applied([applied("alpha", "r1", true), applied("beta", "r1", true)]);
        assert!(inv.record_healthy(&["alpha".into()], "r1"));
        inv.record_applied([applied("beta", "r2", true)]);
        let single = inv.encode(CHUNK_BYTES, "g").unwrap();
        assert!(single.chunks.is_empty());
        assert_eq!(Inventory::from_config_map(&single.head).unwrap(), inv);
        let chunked = inv.encode(4096, "g").unwrap();
        assert!(chunked.chunks.len() > 1);
        let read = Inventory::from_config_maps(&chunked.head, &chunked.chunks).unwrap();
        assert_eq!(read.workspaces, inv.workspaces);
        assert_eq!(read.applied_revision("beta"), Some("r2"));
        assert_eq!(read.healthy_revision("alpha"), Some("r1"));
        assert_eq!(read.healthy_revision("beta"), None);
    }

    #[test]
    fn an_old_format_inventory_reads_with_every_workspace_at_its_revision_and_none_healthy() {
        let mut inv = Inventory::new("prod");
        inv.revision = Some("old".into());
        inv.objects.insert(r("ConfigMap", Some("a"), "x"));
        let mut cm = inv.to_config_map().unwrap();
        // What a tenantsync before per-workspace revisions wrote: no key.
        cm.binary_data.as_mut().unwrap().remove(WORKSPACES_KEY);
        let read = Inventory::from_config_map(&cm).unwrap();
        assert_eq!(read, inv);
        assert_eq!(read.applied_revision("anything"), Some("old"));
        assert_eq!(read.healthy_revision("anything"), None);
        assert!(read.pinned().is_empty());
        // A damaged record is an error naming the inventory, not "none".
        cm.binary_data
            .as_mut()
            .unwrap()
            .insert(WORKSPACES_KEY.into(), ByteString(b"junk".to_vec()));
        let e = Inventory::from_config_map(&cm).unwrap_err().to_string();
        assert!(
            e.contains("inventory-prod") && e.contains("per-workspace revisions"),
            "{e}"
        );
    }

    /// Issue 16/26 review: a restarted daemon forgot the health judgements
    /// and the rollout under way; both are now in the inventory, and an
    /// inventory written before them reads with neither.
    #[test]
    fn judgements_and_the_rollout_round_trip_and_an_inventory_without_them_reads() {
        use crate::sync::resume::RolloutRecord;
        use crate::sync::rollout::{RolloutPhase, RolloutStep};
        let mut inv = Inventory::new("prod");
        inv.revision = Some("r1".into());
        inv.record_applied([applied("a", "r1", true), applied("b", "r1", true)]);
        assert!(inv.record_judging(&["a".into(), "b".into()], "r1", "2026-12-03T10:00:00Z"));
        // A judgement under way keeps its start; one of another revision,
        // or of a workspace Healthy at it, is not recorded.
        assert!(!inv.record_judging(&["a".into()], "r1", "2026-12-03T11:00:00Z"));
        assert!(!inv.record_judging(&["a".into()], "r0", "2026-12-03T11:00:00Z"));
        assert!(inv.record_healthy(&["b".into()], "r1"));
        assert_eq!(inv.workspaces["b"].judging, None, "judged: cleared");
        assert!(!inv.record_judging(&["b".into()], "r1", "2026-12-03T11:00:00Z"));
        // A sync that re-applies a at r1 keeps its judgement; at r2 drops it.
        inv.record_applied([applied("a", "r1", false)]);
        assert_eq!(
            inv.workspaces["a"]
                .judging
                .as_ref()
                .map(|j| j.since.as_str()),
            Some("2026-12-03T10:00:00Z")
        );
        inv.rollout = Some(RolloutRecord {
            revision: "r2".into(),
            steps: vec![RolloutStep {
                percent: 100,
                workspaces: vec!["a".into()],
            }],
            not_held_back: Vec::new(),
            applied: 1,
            applied_at: "2026-12-03T10:00:00Z".into(),
            healthy_at: None,
            phase: RolloutPhase::Progressing,
            failed: BTreeMap::new(),
            rolling_back: Vec::new(),
        });
        let cm = inv.to_config_map().unwrap();
        assert_eq!(Inventory::from_config_map(&cm).unwrap(), inv);
        let mut later = inv.clone();
        later.record_applied([applied("a", "r2", true)]);
        assert_eq!(later.workspaces["a"].judging, None);
        // What a tenantsync before the records wrote: no `rollout` key, no
        // `judging` in the workspaces' JSON.
        let mut old = cm.clone();
        old.binary_data.as_mut().unwrap().remove(ROLLOUT_KEY);
        let json = br#"{"a":{"applied":"r1"},"b":{"applied":"r1","healthy":"r1"}}"#;
        old.binary_data
            .as_mut()
            .unwrap()
            .insert(WORKSPACES_KEY.into(), ByteString(gzip(json).unwrap()));
        let read = Inventory::from_config_map(&old).unwrap();
        assert_eq!(read.rollout, None);
        assert_eq!(read.workspaces["a"].judging, None);
        assert_eq!(read.healthy_revision("b"), Some("r1"));
    }

    /// Hostile review of the persisted rollout: a record that did not parse
    /// (damaged, or a newer tenantsync's phase) made the whole inventory
    /// unreadable, so CLI plan, sync and status failed on a daemon-only
    /// hint.
    #[test]
    fn an_unreadable_rollout_record_leaves_the_inventory_readable() {
        let mut inv = Inventory::new("prod");
        inv.revision = Some("r1".into());
        inv.objects.insert(r("ConfigMap", Some("a"), "x"));
        let cm = inv.to_config_map().unwrap();
        let future = br#"{"revision":"r2","steps":[],"applied":1,"appliedAt":"2026-12-03T10:00:00Z","phase":"Verifying"}"#;
        for bad in [
            gzip(b"{not json").unwrap(),
            gzip(future).unwrap(),
            b"junk".to_vec(),
        ] {
            let mut damaged = cm.clone();
            damaged
                .binary_data
                .as_mut()
                .unwrap()
                .insert(ROLLOUT_KEY.into(), ByteString(bad));
            let read = Inventory::from_config_map(&damaged).unwrap();
            assert_eq!(read.rollout, None);
            assert_eq!(read.objects, inv.objects);
            assert_eq!(read.revision.as_deref(), Some("r1"));
            let why = read.rollout_unreadable.unwrap();
            assert!(
                why.contains("inventory-prod") && why.contains("rollout.json.gz"),
                "{why}"
            );
        }
    }

    /// Hostile review of the persisted rollout: the record was plain JSON
    /// in the head's `data`, every step's workspaces and failed messages
    /// of any length, outside the chunk budget: at thousands of workspaces
    /// the head passed the API server's 1 MiB and every inventory write
    /// failed.
    #[test]
    fn the_head_stays_under_the_api_servers_limit_with_a_rollout_of_20000_workspaces() {
        use crate::sync::resume::{MAX_FAILED_MESSAGE_CHARS, RolloutRecord};
        use crate::sync::rollout::{RolloutPhase, RolloutStep};
        // Workspace names as tenants name them (a word, a number, a random
        // suffix: `clinic-00042-qwhxkzpa`). Known limit: 20,000 names of 40
        // random letters each take about 1.1 MB compressed in the head
        // (per-workspace revisions and the record's steps).
        let names: Vec<String> = (0..20_000)
            .map(|i| format!("clinic-{i:05}-{}", &incompressible(i)[..8]))
            .collect();
        let mut inv = Inventory::new("prod");
        inv.revision = Some("0123456789abcdef0123456789abcdef01234567".into());
        for (i, ws) in names.iter().enumerate() {
            inv.objects
                .insert(r("ConfigMap", Some(ws), &format!("settings-{i}")));
            inv.objects.insert(r("Namespace", None, ws));
        }
        inv.record_applied(names.iter().map(|ws| applied(ws, "r1", true)));
        let steps: Vec<RolloutStep> = names
            .chunks(2_000)
            .enumerate()
            .map(|(i, part)| RolloutStep {
                percent: ((i + 1) * 10) as u8,
                workspaces: part.to_vec(),
            })
            .collect();
        let long = "Degraded: ".to_string() + &"x".repeat(100_000);
        let failed: BTreeMap<String, String> = names[..2_000]
            .iter()
            .map(|w| (w.clone(), long.clone()))
            .collect();
        inv.rollout = Some(RolloutRecord {
            revision: "r2".into(),
            steps,
            not_held_back: Vec::new(),
            applied: 1,
            applied_at: "2026-12-03T10:00:00Z".into(),
            healthy_at: None,
            phase: RolloutPhase::Failed,
            failed,
            rolling_back: names[..2_000].to_vec(),
        });
        let encoded = inv.encode(CHUNK_BYTES, "g").unwrap();
        let size = |cm: &ConfigMap| -> usize {
            let data: usize = cm
                .data
                .iter()
                .flatten()
                .map(|(k, v)| k.len() + v.len())
                .sum();
            let binary: usize = cm
                .binary_data
                .iter()
                .flatten()
                .map(|(k, v)| k.len() + v.0.len())
                .sum();
            data + binary
        };
        // Room left for the daemon's status fields (a few of
        // MAX_STATUS_VALUE_BYTES each) under the API server's 1 MiB.
        let head = size(&encoded.head);
        assert!(
            head + 16 * MAX_STATUS_VALUE_BYTES < 1_048_576,
            "head {head} bytes"
        );
        assert!(head <= CHUNK_BYTES, "head {head} bytes");
        for chunk in &encoded.chunks {
            assert!(size(chunk) <= CHUNK_BYTES + 1024);
        }
        // Read back whole, each failed message cut to what the record keeps.
        let chunks = encoded.chunks.clone();
        let read = Inventory::from_config_maps(&encoded.head, &chunks).unwrap();
        let record = read.rollout.unwrap();
        assert_eq!(record.steps.len(), 10);
        assert_eq!(record.failed.len(), 2_000);
        assert!(
            record
                .failed
                .values()
                .all(|m| m.chars().count() == MAX_FAILED_MESSAGE_CHARS)
        );
        assert_eq!(read.objects.len(), inv.objects.len());
    }

    /// A head whose own keys (per-workspace revisions, the rollout) leave
    /// no room for the object list moves the list into chunks even when
    /// the list alone would fit.
    #[test]
    fn the_heads_own_keys_count_against_the_object_lists_budget() {
        let mut inv = Inventory::new("prod");
        for i in 0..200 {
            inv.objects
                .insert(r("ConfigMap", Some("a"), &incompressible(i)));
        }
        let names: Vec<String> = (1000..1400).map(incompressible).collect();
        inv.record_applied(names.iter().map(|ws| applied(ws, "r1", true)));
        let alone = inv.encode(1 << 20, "g").unwrap();
        let list = alone.head.binary_data.as_ref().unwrap()[OBJECTS_KEY]
            .0
            .len();
        let extras = alone.head.binary_data.as_ref().unwrap()[WORKSPACES_KEY]
            .0
            .len();
        // A budget the list fits alone, but not with the head's keys.
        let budget = list + extras / 2;
        let encoded = inv.encode(budget, "g").unwrap();
        assert_eq!(encoded.chunks.len(), 1);
        let read = Inventory::from_config_maps(&encoded.head, &encoded.chunks).unwrap();
        assert_eq!(read.objects, inv.objects);
        assert_eq!(read.workspaces, inv.workspaces);
    }

    /// Hostile review of the persisted rollout: a sync that recorded
    /// another revision (a CLI `sync --rev R1` while the daemon was down)
    /// kept the rollout record of R2, and the next daemon resumed it at its
    /// step, applying the steps before it again in one sync without a gate.
    #[test]
    fn a_sync_that_records_another_revision_clears_the_rollout_record() {
        use crate::sync::resume::RolloutRecord;
        use crate::sync::rollout::RolloutPhase;
        let record = RolloutRecord {
            revision: "r2".into(),
            steps: Vec::new(),
            not_held_back: Vec::new(),
            applied: 2,
            applied_at: "2026-12-03T10:00:00Z".into(),
            healthy_at: None,
            phase: RolloutPhase::Pausing,
            failed: BTreeMap::new(),
            rolling_back: Vec::new(),
        };
        let mut inv = Inventory::new("prod");
        inv.rollout = Some(record.clone());
        // The rollout's own last step records its revision: kept (the
        // daemon clears it once it sees the revision recorded).
        inv.record_revision("r2".into());
        assert_eq!(inv.rollout, Some(record));
        inv.record_revision("r1".into());
        assert_eq!(inv.rollout, None);
        assert_eq!(inv.revision.as_deref(), Some("r1"));
    }

    /// Hostile review of the persisted rollout: on a 409 a sync's write
    /// merged by keeping "ours" for everything but added objects, so a
    /// write that merely carried the rollout record it read put an older
    /// record back over the one another writer had just set.
    #[test]
    fn a_concurrent_write_keeps_the_other_writers_rollout_record_unless_it_changed_it() {
        use crate::sync::resume::RolloutRecord;
        use crate::sync::rollout::RolloutPhase;
        let record = |applied: usize| RolloutRecord {
            revision: "r2".into(),
            steps: Vec::new(),
            not_held_back: Vec::new(),
            applied,
            applied_at: "2026-12-03T10:00:00Z".into(),
            healthy_at: None,
            phase: RolloutPhase::Progressing,
            failed: BTreeMap::new(),
            rolling_back: Vec::new(),
        };
        let mut base = Inventory::new("prod");
        base.rollout = Some(record(1));
        let mut theirs = base.clone();
        theirs.rollout = Some(record(2));
        let ours = base.clone();
        assert_eq!(
            merge_concurrent(&base, &ours, &theirs).rollout,
            Some(record(2))
        );
        // A write that cleared it (it recorded another revision) clears it.
        let mut clearing = base.clone();
        clearing.rollout = None;
        assert_eq!(merge_concurrent(&base, &clearing, &theirs).rollout, None);
    }

    #[test]
    fn healthy_revisions_follow_what_each_workspace_is_applied_at() {
        let mut inv = Inventory::new("dev");
        inv.record_applied([applied("a", "r1", true), applied("b", "r1", true)]);
        inv.revision = Some("r1".into());
        assert!(inv.record_healthy(&["a".into(), "b".into()], "r1"));
        assert!(!inv.record_healthy(&["a".into()], "r1"), "nothing new");
        // r2 changes a only: b, untouched and healthy at r1, is healthy at r2.
        inv.record_applied([applied("a", "r2", true), applied("b", "r2", false)]);
        inv.revision = Some("r2".into());
        assert_eq!(inv.healthy_revision("a"), Some("r1"));
        assert_eq!(inv.healthy_revision("b"), Some("r2"));
        // a rolled back to r1: pinned there; a late "healthy at r2" of a
        // says nothing (a is no longer at r2).
        inv.record_applied([applied("a", "r1", true)]);
        assert_eq!(inv.pinned(), BTreeMap::from([("a".into(), "r1".into())]));
        assert!(!inv.record_healthy(&["a".into()], "r2"));
        assert_eq!(inv.healthy_revision("a"), Some("r1"));
    }

    #[test]
    fn keys_ignore_the_api_version() {
        let a = r("Deployment", Some("n"), "x");
        let mut b = a.clone();
        b.api_version = "apps/v1".into();
        let mut inv = Inventory::new("dev");
        inv.objects.insert(a);
        assert!(inv.keys().contains(&b.key()));
        assert!(!inv.keys().contains(&r("Deployment", Some("m"), "x").key()));
        // A lookup tells the same, and makes no set of keys while each
        // object is recorded as looked up.
        let lookup = inv.lookup();
        assert!(lookup.contains(&r("Deployment", Some("n"), "x")));
        assert!(lookup.keys.get().is_none());
        assert!(lookup.contains(&b));
        assert!(!lookup.contains(&r("Deployment", Some("m"), "x")));
        assert!(lookup.keys.get().is_some());
    }

    #[test]
    fn a_concurrent_write_keeps_what_the_other_writer_added() {
        let mut base = Inventory::new("dev");
        base.objects.insert(r("ConfigMap", Some("a"), "old"));
        base.objects
            .insert(r("ConfigMap", Some("a"), "pruned-by-us"));
        let mut ours = base.clone();
        ours.objects
            .remove(&r("ConfigMap", Some("a"), "pruned-by-us"));
        ours.objects.insert(r("ConfigMap", Some("a"), "ours"));
        let mut theirs = base.clone();
        theirs.objects.insert(r("ConfigMap", Some("b"), "theirs"));
        let merged = merge_concurrent(&base, &ours, &theirs);
        let names: Vec<&str> = merged.objects.iter().map(|o| &*o.name).collect();
        assert_eq!(names, ["old", "ours", "theirs"]);
    }

    /// A small inventory drawn from `bits`: which of a dozen objects (two
    /// sharing each key under another apiVersion), which of three
    /// workspace records, and the revision, time and rollout fields.
    fn drawn(bits: u32) -> Inventory {
        use crate::sync::resume::RolloutRecord;
        use crate::sync::rollout::RolloutPhase;
        let mut inv = Inventory::new("dev");
        let mut i = 0;
        for api_version in ["v1", "v2"] {
            for ns in ["a", "b"] {
                for name in ["x", "y", "z"] {
                    if bits & (1 << i) != 0 {
                        let mut o = r("ConfigMap", Some(ns), name);
                        o.api_version = api_version.into();
                        inv.objects.insert(o);
                    }
                    i += 1;
                }
            }
        }
        for (j, ws) in ["w1", "w2", "w3"].into_iter().enumerate() {
            if bits & (1 << (12 + j)) != 0 {
                let applied = if bits & (1 << (15 + j)) != 0 {
                    "r1"
                } else {
                    "r2"
                };
                inv.workspaces.insert(
                    ws.into(),
                    WorkspaceRevisions {
                        applied: applied.into(),
                        ..WorkspaceRevisions::default()
                    },
                );
            }
        }
        if bits & (1 << 18) != 0 {
            inv.revision = Some("r1".into());
        }
        if bits & (1 << 19) != 0 {
            inv.last_applied_at = Some("2026-12-03T10:00:00Z".into());
        }
        if bits & (1 << 20) != 0 {
            inv.rollout = Some(RolloutRecord {
                revision: if bits & (1 << 21) != 0 { "r1" } else { "r2" }.into(),
                steps: Vec::new(),
                not_held_back: Vec::new(),
                applied: 1,
                applied_at: "2026-12-03T10:00:00Z".into(),
                healthy_at: None,
                phase: RolloutPhase::Pausing,
                failed: BTreeMap::new(),
                rolling_back: Vec::new(),
            });
        }
        if bits & (1 << 22) != 0 {
            inv.rollout_unreadable = Some("damaged".into());
        }
        inv
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4000))]
        /// `merge_if_changed` is `merge_concurrent` when that differs from
        /// what is stored, and `None` exactly when it does not.
        #[test]
        fn merge_if_changed_is_merge_concurrent_unless_that_is_theirs(
            base in 0u32..1 << 23,
            ours_flips in 0u32..1 << 23,
            theirs_flips in 0u32..1 << 23,
        ) {
            // Ours and theirs mostly as base (flipping a few things each),
            // as in a sync, where equality is the common case.
            let base_inv = drawn(base);
            let ours = drawn(base ^ (ours_flips & ours_flips.rotate_left(7)));
            let theirs = drawn(base ^ (theirs_flips & theirs_flips.rotate_left(11)));
            let merged = merge_concurrent(&base_inv, &ours, &theirs);
            let expected = (merged != theirs).then_some(merged);
            proptest::prop_assert_eq!(
                &merge_if_changed(&base_inv, std::borrow::Cow::Borrowed(&ours), &theirs),
                &expected
            );
            proptest::prop_assert_eq!(
                &merge_if_changed(&base_inv, std::borrow::Cow::Owned(ours), &theirs),
                &expected
            );
        }
    }

    #[test]
    fn a_sync_that_changes_nothing_merges_to_nothing_to_write() {
        let inv = drawn(0b111_1111_1111_1111_1111);
        assert_eq!(
            merge_if_changed(&inv, std::borrow::Cow::Borrowed(&inv), &inv),
            None
        );
        // Another writer's added object is theirs already: still nothing.
        let mut theirs = inv.clone();
        theirs.objects.insert(r("Secret", Some("c"), "theirs"));
        assert_eq!(
            merge_if_changed(&inv, std::borrow::Cow::Borrowed(&inv), &theirs),
            None
        );
        // One of ours the stored one lacks is written.
        let mut ours = inv.clone();
        ours.objects.insert(r("Secret", Some("c"), "ours"));
        let merged = merge_if_changed(&inv, std::borrow::Cow::Borrowed(&ours), &theirs);
        assert_eq!(merged.map(|m| m.objects.len()), Some(inv.objects.len() + 2));
    }

    #[test]
    fn widening_adds_what_is_not_recorded_and_borrows_when_all_is() {
        let old = drawn(0b0000_0011);
        let declared: BTreeSet<ObjectRef> = old.objects.iter().cloned().collect();
        assert!(matches!(
            widen(&old, &declared),
            std::borrow::Cow::Borrowed(_)
        ));
        // Recorded by key under another apiVersion: not added again.
        let mut moved = r("ConfigMap", Some("a"), "x");
        moved.api_version = "v2".into();
        assert!(matches!(
            widen(&old, &BTreeSet::from([moved])),
            std::borrow::Cow::Borrowed(_)
        ));
        let new = r("Secret", Some("a"), "new");
        let mut more = declared.clone();
        more.insert(new.clone());
        let widened = widen(&old, &more);
        let mut expected = old.clone();
        expected.objects.insert(new);
        assert_eq!(widened.into_owned(), expected);
    }
}
