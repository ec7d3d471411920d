//! Object identity: the one home of what every stage calls an object.
//!
//! [`Object`] (a rendered object, its body kept as compact JSON text, packed once rendered for a plan or a sync, and
//! where a manifest of it is written, [`Location`]), the shared [`Name`]s
//! of an identity, [`ObjectKey`], the one ID format
//! (`Kind/namespace/name`, [`id`]) and the one reader of an identity from a
//! JSON body ([`live_key`]); the labels that mark tenantsync's objects and
//! the [`selector`] that finds them; the sync wave annotation; the catalogue
//! of managed kinds ([`kinds`]); and `yaml_emit`, the YAML writer of object
//! bodies.
//!
//! Imports: nothing of the crate. Every other module may import it.

use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;

pub mod kinds;
pub mod yaml_emit;

pub use kinds::{CUSTOM_KINDS, CustomKind, MANAGED_KINDS, ManagedKind, kind_rank, not_served_hint};

pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const MANAGER: &str = "tenantsync";
pub const ENVIRONMENT_LABEL: &str = "tenantsync.io/environment";
pub const WORKSPACE_LABEL: &str = "tenantsync.io/workspace";
pub const CONFIG_HASH_ANNOTATION: &str = "tenantsync.io/config-hash";
pub const WORKLOAD_IDENTITY_CLIENT_ID: &str = "azure.workload.identity/client-id";
pub const WORKLOAD_IDENTITY_USE: &str = "azure.workload.identity/use";

/// The field manager of tenantsync's own objects (inventories, its
/// namespace), and the one every environment applied with before each had
/// its own ([`field_manager`]).
pub const FIELD_MANAGER: &str = "tenantsync";

/// The field manager an environment's objects are applied with: one per
/// environment, so two environments writing one object conflict visibly
/// instead of taking it from each other.
pub fn field_manager(environment: &str) -> String {
    format!("{FIELD_MANAGER}/{environment}")
}

/// The label selector of the objects tenantsync manages in an environment.
pub fn selector(environment: &str) -> String {
    format!("{MANAGED_BY}={MANAGER},{ENVIRONMENT_LABEL}={environment}")
}

pub const SYNC_WAVE_ANNOTATION: &str = "tenantsync.io/sync-wave";

/// The sync wave an object's annotation `tenantsync.io/sync-wave` gives it
/// (default 0): waves apply in increasing order, prune in decreasing order.
pub fn wave_of(body: &Value) -> i32 {
    body.pointer("/metadata/annotations")
        .and_then(|a| a.get(SYNC_WAVE_ANNOTATION))
        .and_then(Value::as_str)
        .and_then(|w| w.trim().parse().ok())
        .unwrap_or(0)
}

/// An object's identity whatever API version serves it: kind, namespace,
/// name. Sets and maps of keys keep pairing objects linear at any size.
pub type ObjectKey<'a> = (&'a str, Option<&'a str>, &'a str);

/// `Kind/namespace/name`, or `Kind/name` for cluster-scoped objects: the
/// one ID format of messages, plans, reports and logs.
pub fn id((kind, namespace, name): ObjectKey<'_>) -> String {
    match namespace {
        Some(ns) => format!("{kind}/{ns}/{name}"),
        None => format!("{kind}/{name}"),
    }
}

/// The identity of an object's JSON body (a live object as listed or read,
/// or a manifest): kind, namespace, name. `None` without a kind or a name.
/// The one place an identity is read from a body.
pub fn live_key(body: &Value) -> Option<ObjectKey<'_>> {
    let meta = body.get("metadata")?;
    Some((
        body.get("kind")?.as_str()?,
        meta.get("namespace").and_then(Value::as_str),
        meta.get("name")?.as_str()?,
    ))
}

/// The `apiVersion` of an object's JSON body.
pub fn api_version_of(body: &Value) -> Option<&str> {
    body.get("apiVersion")?.as_str()
}

/// A name in an object's identity (kind, API version, namespace, name,
/// workspace). Shared: the same few kinds and names, and each workspace's
/// namespace, recur across tens of thousands of objects, their changes and
/// their inventory entries, which then hold a pointer each, not a copy.
pub type Name = std::sync::Arc<str>;

/// Hands out one shared [`Name`] per distinct string.
#[derive(Debug, Default)]
pub struct Names(std::collections::HashSet<Name>);

impl Names {
    pub fn get(&mut self, s: &str) -> Name {
        if let Some(name) = self.0.get(s) {
            return name.clone();
        }
        let name = Name::from(s);
        self.0.insert(name.clone());
        name
    }
}

/// Where a declaration is written, as `file:line:col` (a `resources/`
/// manifest's, kept with its object so that what is said about it can
/// point at its file).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Location {
    pub file: String,
    pub line: u32,
    pub column: u32,
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// An object's body as held: its compact JSON text, or that text packed
/// ([`Object::pack`]). Rendered bodies are most of what a plan or a sync
/// holds (about 860 bytes of text an object; 266,665 objects at 20,000
/// workspaces). Packed, they are compressed (zstd) against a [`Packing`]
/// dictionary made of the first rendered bodies: objects of one environment
/// differ in a few names and values, so a body takes about a tenth of its
/// text, for a little CPU where it is read (once to diff, once to apply).
/// `render`, which holds a workspace at a time, keeps the text.
#[derive(Clone)]
enum Body {
    Text(Box<RawValue>),
    Packed(Box<[u8]>, std::sync::Arc<Packing>),
}

impl PartialEq for Body {
    fn eq(&self, other: &Body) -> bool {
        match (self, other) {
            (Body::Text(a), Body::Text(b)) => a.get() == b.get(),
            // The same text packed with the same dictionary is the same
            // bytes.
            (Body::Packed(a, p), Body::Packed(b, q)) if std::sync::Arc::ptr_eq(p, q) => a == b,
            _ => self.text() == other.text(),
        }
    }
}

/// The dictionary rendered bodies are packed with ([`Body`]): the text of
/// the first objects an environment renders (zstd's raw-content
/// dictionary), so that what the others share with them is not held again.
pub struct Packing {
    compress: zstd::zstd_safe::CDict<'static>,
    decompress: zstd::zstd_safe::DDict<'static>,
}

impl std::fmt::Debug for Packing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Packing")
    }
}

/// How much sample text a [`Packing`] dictionary holds at most.
pub const PACKING_SAMPLE_BYTES: usize = 64 * 1024;

/// zstd's level for packed bodies: fast, and with the dictionary doing
/// most of the work, higher levels gain little.
const PACKING_LEVEL: i32 = 3;

thread_local! {
    static COMPRESS: std::cell::RefCell<Option<zstd::zstd_safe::CCtx<'static>>> =
        const { std::cell::RefCell::new(None) };
    static DECOMPRESS: std::cell::RefCell<Option<zstd::zstd_safe::DCtx<'static>>> =
        const { std::cell::RefCell::new(None) };
}

impl Packing {
    /// A dictionary of `samples` (bodies' text), up to
    /// [`PACKING_SAMPLE_BYTES`]; `None` when there is too little of it to
    /// be worth one, or zstd cannot make it.
    pub fn of<'a>(samples: impl IntoIterator<Item = &'a str>) -> Option<std::sync::Arc<Packing>> {
        let mut text = Vec::with_capacity(PACKING_SAMPLE_BYTES);
        for sample in samples {
            if text.len() + sample.len() > PACKING_SAMPLE_BYTES {
                break;
            }
            text.extend_from_slice(sample.as_bytes());
        }
        if text.len() < 256 {
            return None;
        }
        Some(std::sync::Arc::new(Packing {
            compress: zstd::zstd_safe::CDict::try_create(&text, PACKING_LEVEL)?,
            decompress: zstd::zstd_safe::DDict::try_create(&text)?,
        }))
    }

    fn pack(&self, text: &str) -> Option<Box<[u8]>> {
        COMPRESS.with(|cell| {
            let mut cell = cell.try_borrow_mut().ok()?;
            if cell.is_none() {
                *cell = Some(zstd::zstd_safe::CCtx::try_create()?);
            }
            let cctx = cell.as_mut()?;
            let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(text.len()));
            cctx.compress_using_cdict(&mut out, text.as_bytes(), &self.compress)
                .ok()?;
            Some(out.into_boxed_slice())
        })
    }

    fn unpack(&self, bytes: &[u8]) -> Option<String> {
        let size = zstd::zstd_safe::get_frame_content_size(bytes).ok()??;
        DECOMPRESS.with(|cell| {
            let mut cell = cell.try_borrow_mut().ok()?;
            if cell.is_none() {
                *cell = Some(zstd::zstd_safe::DCtx::try_create()?);
            }
            let dctx = cell.as_mut()?;
            let mut out = Vec::with_capacity(usize::try_from(size).ok()?);
            dctx.decompress_using_ddict(&mut out, bytes, &self.decompress)
                .ok()?;
            String::from_utf8(out).ok()
        })
    }
}

impl Body {
    fn text(&self) -> std::borrow::Cow<'_, str> {
        match self {
            Body::Text(raw) => std::borrow::Cow::Borrowed(raw.get()),
            // What `Packing::pack` wrote unpacks with the same dictionary.
            Body::Packed(bytes, packing) => {
                std::borrow::Cow::Owned(packing.unpack(bytes).unwrap_or_default())
            }
        }
    }

    fn json(&self) -> Box<RawValue> {
        match self {
            Body::Text(raw) => raw.clone(),
            // The text was written by serde_json: it is JSON.
            Body::Packed(..) => RawValue::from_string(self.text().into_owned()).unwrap_or_default(),
        }
    }
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text())
    }
}

impl Serialize for Body {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.json().serialize(s)
    }
}

/// One rendered object and its identity.
#[derive(Clone, Debug, Serialize)]
pub struct Object {
    pub api_version: Name,
    pub kind: Name,
    pub namespace: Option<Name>,
    pub name: Name,
    pub workspace: Name,
    /// Sync wave (annotation `tenantsync.io/sync-wave`, default 0).
    pub wave: i32,
    /// The full object as compact JSON text, as sent to the API server
    /// (compressed once packed: [`Body`]). Text, not a `serde_json::Value`: an environment
    /// holds tens of thousands of objects for as long as a sync or the
    /// daemon runs, and a Value of a Deployment (a B-tree node per map)
    /// takes about ten times the bytes.
    body: Body,
    /// Where a `resources/` manifest is written (`None` for what a
    /// workspace renders and for live objects), so that what is said about
    /// it can point at its file.
    #[serde(skip)]
    pub source: Option<std::sync::Arc<Location>>,
}

impl PartialEq for Object {
    fn eq(&self, other: &Object) -> bool {
        (self.key(), &self.api_version, &self.workspace, &self.body)
            == (
                other.key(),
                &other.api_version,
                &other.workspace,
                &other.body,
            )
    }
}

impl Object {
    /// An object of `workspace` from its body; its identity and sync wave are
    /// read from it. `None` without a kind, an apiVersion or a name.
    pub fn from_value(workspace: &str, body: &Value) -> Option<Object> {
        let (kind, namespace, name) = live_key(body)?;
        Some(Object {
            api_version: Name::from(api_version_of(body)?),
            kind: Name::from(kind),
            namespace: namespace.map(Name::from),
            name: Name::from(name),
            workspace: Name::from(workspace),
            wave: wave_of(body),
            body: Body::Text(serde_json::value::to_raw_value(body).ok()?),
            source: None,
        })
    }

    /// An object from its identity and body as JSON text, as rendering makes
    /// it (sync wave 0: rendered objects carry no wave annotation).
    pub fn from_parts(
        api_version: Name,
        kind: Name,
        namespace: Option<Name>,
        name: Name,
        workspace: Name,
        body: Box<RawValue>,
    ) -> Object {
        Object {
            api_version,
            kind,
            namespace,
            name,
            workspace,
            wave: 0,
            body: Body::Text(body),
            source: None,
        }
    }

    /// The body as a value to read or compare.
    pub fn value(&self) -> Value {
        // The text was written by serde_json from a value: it parses.
        serde_json::from_str(&self.body.text()).unwrap_or(Value::Null)
    }

    /// The body as JSON text.
    pub fn json(&self) -> Box<RawValue> {
        self.body.json()
    }

    /// The same object with its body packed with `packing` ([`Body`]):
    /// for objects held for as long as a plan, a sync or the daemon runs.
    /// A body zstd does not pack stays text.
    pub fn pack(self, packing: &std::sync::Arc<Packing>) -> Object {
        let body = match self.body {
            Body::Text(raw) => match packing.pack(raw.get()) {
                Some(bytes) => Body::Packed(bytes, packing.clone()),
                None => Body::Text(raw),
            },
            packed => packed,
        };
        Object { body, ..self }
    }

    /// The body as held, when it is text (not packed): what a [`Packing`]
    /// is made of.
    pub fn text(&self) -> Option<&str> {
        match &self.body {
            Body::Text(raw) => Some(raw.get()),
            Body::Packed(..) => None,
        }
    }

    pub fn key(&self) -> ObjectKey<'_> {
        (&self.kind, self.namespace.as_deref(), &self.name)
    }

    /// `Kind/namespace/name`, or `Kind/name` for cluster-scoped objects.
    pub fn id(&self) -> String {
        id(self.key())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment(replicas: u32) -> Value {
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "fhir-main", "namespace": "ws-a", "labels": {"a": "é ✓"}},
            "spec": {"replicas": replicas, "template": {"spec": {"containers": [{"name": "fhir", "image": "fhir:1"}]}}}
        })
    }

    fn packing() -> std::sync::Arc<Packing> {
        let samples: Vec<String> = (0..4).map(|r| deployment(r).to_string()).collect();
        Packing::of(samples.iter().map(String::as_str)).unwrap()
    }

    #[test]
    fn a_body_is_held_packed_and_read_back_as_written() {
        let packing = packing();
        let body = deployment(2);
        let text = serde_json::to_string(&body).unwrap();
        let object = Object::from_value("a", &body).unwrap();
        assert!(matches!(object.body, Body::Text(_)));
        assert_eq!(object.text(), Some(text.as_str()));
        let packed = object.clone().pack(&packing);
        assert!(matches!(packed.body, Body::Packed(..)));
        assert_eq!(packed.text(), None);
        assert_eq!(packed.value(), body);
        assert_eq!(packed.json().get(), text);
        assert_eq!(packed, object);
        assert_eq!(packed.clone().pack(&packing), packed);
        // Another dictionary's bytes differ; the objects are still equal.
        let other = Packing::of([deployment(9).to_string().repeat(3).as_str()]).unwrap();
        assert_eq!(object.clone().pack(&other), packed);
        assert_ne!(
            Object::from_value("a", &deployment(3))
                .unwrap()
                .pack(&other),
            packed
        );
        // What the dictionary shares is not held again: a tenth of the text.
        let Body::Packed(bytes, _) = &packed.body else {
            panic!("not packed")
        };
        assert!(
            bytes.len() * 5 < text.len(),
            "{} of {}",
            bytes.len(),
            text.len()
        );
        // Any text, however unlike the samples, is read back as written.
        let odd = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"},
            "data": {"k": "\u{0}é✓ ".repeat(500)}});
        let odd_object = Object::from_value("a", &odd).unwrap();
        assert_eq!(odd_object.clone().pack(&packing).value(), odd);
        assert_eq!(odd_object.clone().pack(&packing), odd_object);
        // Rendered parts are held the same way.
        let parts = Object::from_parts(
            "apps/v1".into(),
            "Deployment".into(),
            Some("ws-a".into()),
            "fhir-main".into(),
            "a".into(),
            serde_json::value::to_raw_value(&body).unwrap(),
        );
        assert_eq!(parts.json().get(), text);
        assert_eq!(parts.pack(&packing).json().get(), text);
    }

    #[test]
    fn too_little_sample_text_makes_no_dictionary() {
        assert!(Packing::of([]).is_none());
        assert!(Packing::of(["{}"]).is_none());
    }

    #[test]
    fn objects_compare_by_their_bodies_and_serialize_them_as_json() {
        let packing = packing();
        let a = Object::from_value("a", &deployment(2))
            .unwrap()
            .pack(&packing);
        assert_eq!(
            a,
            Object::from_value("a", &deployment(2))
                .unwrap()
                .pack(&packing)
        );
        assert_ne!(
            a,
            Object::from_value("a", &deployment(3))
                .unwrap()
                .pack(&packing)
        );
        assert_ne!(a, Object::from_value("a", &deployment(3)).unwrap());
        let written = serde_json::to_value(&a).unwrap();
        assert_eq!(written["body"], deployment(2));
        assert_eq!(written["kind"], "Deployment");
        assert!(format!("{a:?}").contains("\"replicas\":2"));
    }
}
