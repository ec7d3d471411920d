//! The in-cluster inventory of an environment (pure: encoding and set logic).
//!
//! One ConfigMap per environment in `tenantsync-system` records every object
//! tenantsync applied there, the Git revision and the time of the last sync
//! that changed something. Prune deletes only what the inventory lists, so an
//! object tenantsync did not create is never deleted, whatever its labels.
//! The object list is gzip-compressed JSON in `binaryData`, so environments
//! with thousands of workspaces stay far below the 1 MiB object size limit.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::{Read, Write};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::object::{MANAGED_BY, MANAGER, Name, Object, ObjectKey};

/// The namespace holding inventories (and, later, the daemon).
pub const SYSTEM_NAMESPACE: &str = "tenantsync-system";
/// Label naming the environment an inventory belongs to. Not the
/// environment label of managed objects, so `plan` never lists it.
pub const INVENTORY_LABEL: &str = "tenantsync.io/inventory";
const OBJECTS_KEY: &str = "objects.json.gz";
/// The most the compressed object list may take. The API server refuses a
/// ConfigMap over 1 MiB (1,048,576 bytes, all of its data and metadata
/// together), and the daemon's status fields share the object: checked
/// before writing, so a full inventory is said plainly instead of as the
/// API server's `Too long` (422) after part of a sync.
pub const MAX_OBJECTS_BYTES: usize = 900 * 1024;
/// The most one status field (`status.*`) may take on the inventory.
pub const MAX_STATUS_VALUE_BYTES: usize = 8 * 1024;

/// Why an inventory cannot be written.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(
        "it would take {bytes} bytes compressed for {objects} objects, more than the {limit} bytes one inventory ConfigMap holds (the API server refuses a ConfigMap over 1 MiB); nothing was written. Spread the workspaces over more environments or shorten the rendered names (a namespaceTemplate change records old and new names together: make it in steps)"
    )]
    TooLarge {
        objects: usize,
        bytes: usize,
        limit: usize,
    },
}

pub fn name_of(environment: &str) -> String {
    format!("inventory-{environment}")
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
    pub revision: Option<String>,
    /// RFC 3339 time of the last sync that changed the cluster.
    pub last_applied_at: Option<String>,
    pub objects: BTreeSet<ObjectRef>,
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

    /// The ConfigMap that stores this inventory.
    pub fn to_config_map(&self) -> Result<ConfigMap, EncodeError> {
        let json = serde_json::to_vec(&self.objects).map_err(std::io::Error::other)?;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&json)?;
        let compressed = gz.finish()?;
        // The API server counts data and binaryData's raw bytes.
        let bytes = compressed.len();
        if bytes > MAX_OBJECTS_BYTES {
            return Err(EncodeError::TooLarge {
                objects: self.objects.len(),
                bytes,
                limit: MAX_OBJECTS_BYTES,
            });
        }
        let mut data = BTreeMap::from([
            ("environment".to_string(), self.environment.clone()),
            ("objectCount".to_string(), self.objects.len().to_string()),
        ]);
        if let Some(r) = &self.revision {
            data.insert("revision".into(), r.clone());
        }
        if let Some(t) = &self.last_applied_at {
            data.insert("lastAppliedAt".into(), t.clone());
        }
        Ok(ConfigMap {
            metadata: ObjectMeta {
                name: Some(name_of(&self.environment)),
                namespace: Some(SYSTEM_NAMESPACE.to_string()),
                labels: Some(BTreeMap::from([
                    (MANAGED_BY.to_string(), MANAGER.to_string()),
                    (INVENTORY_LABEL.to_string(), self.environment.clone()),
                ])),
                ..ObjectMeta::default()
            },
            data: Some(data),
            binary_data: Some(BTreeMap::from([(
                OBJECTS_KEY.to_string(),
                ByteString(compressed),
            )])),
            ..ConfigMap::default()
        })
    }

    /// Reads an inventory from its ConfigMap.
    pub fn from_config_map(cm: &ConfigMap) -> Result<Inventory, InventoryError> {
        let corrupt = |reason: String| InventoryError::Corrupt {
            namespace: SYSTEM_NAMESPACE.to_string(),
            name: cm.metadata.name.clone().unwrap_or_default(),
            reason,
        };
        let data = cm.data.clone().unwrap_or_default();
        let environment = data
            .get("environment")
            .cloned()
            .ok_or_else(|| corrupt("no `environment` key".into()))?;
        let bytes = cm
            .binary_data
            .as_ref()
            .and_then(|b| b.get(OBJECTS_KEY))
            .ok_or_else(|| corrupt(format!("no `{OBJECTS_KEY}` key")))?;
        let mut json = Vec::new();
        flate2::read::GzDecoder::new(bytes.0.as_slice())
            .take(64 * 1024 * 1024)
            .read_to_end(&mut json)
            .map_err(|e| corrupt(format!("cannot decompress the object list: {e}")))?;
        let listed: Vec<ObjectRef> = serde_json::from_slice(&json)
            .map_err(|e| corrupt(format!("object list is not valid JSON: {e}")))?;
        // Kinds, API versions, namespaces and names recur: share them.
        let mut names = crate::object::Names::default();
        let objects = listed
            .into_iter()
            .map(|r| ObjectRef {
                api_version: names.get(&r.api_version),
                kind: names.get(&r.kind),
                namespace: r.namespace.map(|ns| names.get(&ns)),
                name: names.get(&r.name),
            })
            .collect();
        Ok(Inventory {
            environment,
            revision: data.get("revision").cloned(),
            last_applied_at: data.get("lastAppliedAt").cloned(),
            objects,
        })
    }
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

/// The inventory to write when `ours` was computed from `base` but the
/// stored one is now `theirs` (another writer wrote meanwhile): ours, plus
/// every object `theirs` recorded that `base` did not. An object any writer
/// added is never dropped; one another writer removed may stay recorded
/// (harmless: the next prune finds it gone and drops it).
pub fn merge_concurrent(base: &Inventory, ours: &Inventory, theirs: &Inventory) -> Inventory {
    let known = base.keys();
    let mut merged = ours.clone();
    let mine = ours.keys();
    let added: Vec<ObjectRef> = theirs
        .objects
        .iter()
        .filter(|r| !known.contains(&r.key()) && !mine.contains(&r.key()))
        .cloned()
        .collect();
    merged.objects.extend(added);
    merged
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

    #[test]
    fn an_inventory_over_what_a_config_map_holds_is_refused_with_what_to_do() {
        let mut inv = Inventory::new("prod");
        for i in 0..40_000 {
            inv.objects
                .insert(r("ConfigMap", Some("ns-prod"), &incompressible(i)));
        }
        let message = match inv.to_config_map() {
            Err(e @ EncodeError::TooLarge { .. }) => e.to_string(),
            other => panic!("expected TooLarge, got {other:?}"),
        };
        assert!(message.contains("40000 objects"), "{message}");
        assert!(message.contains("more environments"), "{message}");
        // Well under the limit: written as before.
        inv.objects = inv.objects.into_iter().take(1_000).collect();
        assert!(inv.to_config_map().is_ok());
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

    #[test]
    fn keys_ignore_the_api_version() {
        let a = r("Deployment", Some("n"), "x");
        let mut b = a.clone();
        b.api_version = "apps/v1".into();
        let mut inv = Inventory::new("dev");
        inv.objects.insert(a);
        assert!(inv.keys().contains(&b.key()));
        assert!(!inv.keys().contains(&r("Deployment", Some("m"), "x").key()));
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
}
