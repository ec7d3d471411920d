//! Object identity: the one home of what every stage calls an object.
//!
//! [`Object`] (a rendered object, its body kept as deflated compact JSON text, and
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

/// An object's body as held: its compact JSON text, or that text deflated
/// ([`Object::pack`]). Rendered bodies are most of what a plan or a sync
/// holds (about 860 bytes of text an object; 266,660 objects at 20,000
/// workspaces); deflated at the fastest level they take about a quarter of
/// that, for a little CPU where a body is read (once to diff, once to
/// apply). `render`, which holds a workspace at a time, keeps the text.
#[derive(Clone)]
enum Body {
    Text(Box<RawValue>),
    Deflated(Box<[u8]>),
}

impl PartialEq for Body {
    fn eq(&self, other: &Body) -> bool {
        match (self, other) {
            (Body::Text(a), Body::Text(b)) => a.get() == b.get(),
            // The same text always deflates to the same bytes.
            (Body::Deflated(a), Body::Deflated(b)) => a == b,
            _ => self.text() == other.text(),
        }
    }
}

impl Body {
    fn deflate(text: &str) -> Body {
        use std::io::Write;
        let mut out = flate2::write::DeflateEncoder::new(
            Vec::with_capacity(text.len() / 3 + 16),
            flate2::Compression::fast(),
        );
        // Writing into a Vec cannot fail.
        match out.write_all(text.as_bytes()).and_then(|()| out.finish()) {
            Ok(bytes) => Body::Deflated(bytes.into_boxed_slice()),
            Err(_) => Body::Text(RawValue::from_string(text.to_string()).unwrap_or_default()),
        }
    }

    fn text(&self) -> std::borrow::Cow<'_, str> {
        use std::io::Read;
        match self {
            Body::Text(raw) => std::borrow::Cow::Borrowed(raw.get()),
            Body::Deflated(bytes) => {
                let mut text = String::new();
                // What `deflate` wrote inflates.
                let _ = flate2::read::DeflateDecoder::new(&bytes[..]).read_to_string(&mut text);
                std::borrow::Cow::Owned(text)
            }
        }
    }

    fn json(&self) -> Box<RawValue> {
        match self {
            Body::Text(raw) => raw.clone(),
            // The text was written by serde_json: it is JSON.
            Body::Deflated(_) => {
                RawValue::from_string(self.text().into_owned()).unwrap_or_default()
            }
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
    /// (deflated once packed: [`Body`]). Text, not a `serde_json::Value`: an environment
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

    /// The same object with its body held deflated ([`Body`]): for objects
    /// held for as long as a plan, a sync or the daemon runs.
    pub fn pack(self) -> Object {
        let body = match self.body {
            Body::Text(raw) => Body::deflate(raw.get()),
            deflated => deflated,
        };
        Object { body, ..self }
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

    #[test]
    fn a_body_is_held_deflated_and_read_back_as_written() {
        let body = deployment(2);
        let text = serde_json::to_string(&body).unwrap();
        let object = Object::from_value("a", &body).unwrap();
        assert!(matches!(object.body, Body::Text(_)));
        let packed = object.clone().pack();
        assert!(matches!(packed.body, Body::Deflated(_)));
        assert_eq!(packed.value(), body);
        assert_eq!(packed.json().get(), text);
        assert_eq!(packed, object);
        assert_eq!(packed.clone().pack(), packed);
        // Held smaller than its text once there is anything to share.
        let big = json!({"items": vec![deployment(3); 20]}).to_string();
        let Body::Deflated(bytes) = Body::deflate(&big) else {
            panic!("not deflated")
        };
        assert!(bytes.len() * 4 < big.len(), "{}", bytes.len());
        assert_eq!(Body::Deflated(bytes).text(), big);
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
        assert_eq!(parts.pack().json().get(), text);
    }

    #[test]
    fn objects_compare_by_their_bodies_and_serialize_them_as_json() {
        let a = Object::from_value("a", &deployment(2)).unwrap().pack();
        assert_eq!(a, Object::from_value("a", &deployment(2)).unwrap().pack());
        assert_ne!(a, Object::from_value("a", &deployment(3)).unwrap().pack());
        assert_ne!(a, Object::from_value("a", &deployment(3)).unwrap());
        let written = serde_json::to_value(&a).unwrap();
        assert_eq!(written["body"], deployment(2));
        assert_eq!(written["kind"], "Deployment");
        assert!(format!("{a:?}").contains("\"replicas\":2"));
    }
}
