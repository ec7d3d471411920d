//! Secret values never appear in a plan, a diff or a drift report: every
//! value under a `Secret`'s `data` or `stringData` is shown as a keyed
//! digest of its bytes (`hmac:` and the first 16 hex digits of an
//! HMAC-SHA-256, the same for a value written in `data`, base64-encoded,
//! and in `stringData`), so a change is still seen as one without the value
//! being shown. The key is random per process unless the operator installs
//! one ([`install_key`], `TENANTSYNC_DIGEST_KEY`): a plain hash of a short
//! password could be reversed by trying candidates offline; a keyed one
//! cannot without the key.

use std::sync::OnceLock;

use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

use crate::plan::FieldChange;

/// The fields of a Secret that hold its values.
const VALUE_FIELDS: [&str; 2] = ["data", "stringData"];

/// The environment variable an operator sets to a secret of their own to
/// get digests that compare across runs (`tenantsync plan` today and
/// tomorrow, the daemon after a restart).
pub const KEY_VARIABLE: &str = "TENANTSYNC_DIGEST_KEY";

/// The key of [`digest`]: installed once, else random at first use.
static KEY: OnceLock<Vec<u8>> = OnceLock::new();

/// Installs the digest key (the edges do, from `TENANTSYNC_DIGEST_KEY`,
/// before anything is shown). Returns false when a key was already in use.
pub fn install_key(key: &[u8]) -> bool {
    KEY.set(key.to_vec()).is_ok()
}

fn key() -> &'static [u8] {
    KEY.get_or_init(|| {
        let mut key = vec![0u8; 32];
        if getrandom::fill(&mut key).is_err() {
            // No system randomness (never seen): a key nobody outside this
            // process knows all of, still not the unkeyed hash.
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default();
            let state = std::collections::hash_map::RandomState::new();
            let mixed = std::hash::BuildHasher::hash_one(&state, (now, std::process::id()));
            key = [now.to_le_bytes().as_slice(), &mixed.to_le_bytes()].concat();
        }
        key
    })
}

/// Whether objects of this kind hold secret values.
pub fn is_secret(api_version: &str, kind: &str) -> bool {
    kind == "Secret" && api_version == "v1"
}

/// The digest shown in place of a secret value.
pub fn digest(bytes: &[u8]) -> String {
    let hex: String = match Hmac::<Sha256>::new_from_slice(key()) {
        Ok(mut mac) => {
            mac.update(bytes);
            mac.finalize()
                .into_bytes()
                .iter()
                .take(8)
                .map(|b| format!("{b:02x}"))
                .collect()
        }
        // HMAC takes keys of any length: never reached.
        Err(_) => "0".repeat(16),
    };
    format!("hmac:{hex}")
}

/// One value of `data` (base64) or `stringData` (text) as its digest.
fn conceal_value(field: &str, value: &mut Value) {
    match value {
        Value::String(text) => {
            let bytes = if field == "data" {
                base64::engine::general_purpose::STANDARD
                    .decode(text.as_bytes())
                    .unwrap_or_else(|_| text.as_bytes().to_vec())
            } else {
                text.as_bytes().to_vec()
            };
            *value = Value::String(digest(&bytes));
        }
        Value::Object(map) => map.values_mut().for_each(|v| conceal_value(field, v)),
        Value::Array(items) => items.iter_mut().for_each(|v| conceal_value(field, v)),
        Value::Null => {}
        other => *other = Value::String(digest(other.to_string().as_bytes())),
    }
}

/// The annotation `kubectl apply` leaves: the whole object as applied,
/// a Secret's values in plain text among it.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// A Secret's body with its values as digests.
pub fn conceal_body(body: &mut Value) {
    if let Some(map) = body.as_object_mut() {
        for field in VALUE_FIELDS {
            if let Some(v) = map.get_mut(field) {
                conceal_value(field, v);
            }
        }
    }
    conceal_last_applied(body.get_mut("metadata"), "metadata");
}

/// Conceals `kubectl apply`'s copy of the object within `value`, the value
/// of the field at `path` (`metadata`, `metadata.annotations`, or the
/// annotation itself).
fn conceal_last_applied(value: Option<&mut Value>, path: &str) {
    let Some(value) = value else { return };
    let target = match path {
        "metadata" => value
            .get_mut("annotations")
            .and_then(|a| a.get_mut(LAST_APPLIED)),
        "metadata.annotations" => value.get_mut(LAST_APPLIED),
        _ if path.contains(LAST_APPLIED) => Some(value),
        _ => None,
    };
    if let Some(v) = target {
        conceal_value("stringData", v);
    }
}

/// A Secret's field changes with their values as digests.
pub fn conceal_fields(fields: &mut [FieldChange]) {
    for f in fields.iter_mut() {
        if f.path == "metadata" || f.path.starts_with("metadata.annotations") {
            let path = f.path.clone();
            for v in [&mut f.live, &mut f.desired] {
                conceal_last_applied(v.as_mut(), &path);
            }
        }
    }
    for f in fields {
        let Some(field) = VALUE_FIELDS.into_iter().find(|v| {
            f.path == *v
                || f.path.starts_with(&format!("{v}."))
                || f.path.starts_with(&format!("{v}["))
        }) else {
            continue;
        };
        for v in [&mut f.live, &mut f.desired].into_iter().flatten() {
            conceal_value(field, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::FieldAction;
    use serde_json::json;

    /// Review: a Secret edited with `kubectl apply` carries its values in
    /// plain text in the last-applied-configuration annotation, which a
    /// plan showed as a hand edit (and a prune's diff kept).
    #[test]
    fn kubectl_s_last_applied_copy_of_a_secret_is_concealed_too() {
        let copy = r#"{"apiVersion":"v1","kind":"Secret","stringData":{"password":"hunter2"}}"#;
        let mut body = json!({
            "metadata": {"name": "db", "annotations": {LAST_APPLIED: copy}},
        });
        conceal_body(&mut body);
        assert!(!body.to_string().contains("hunter2"), "{body}");
        for (path, value) in [
            (format!("metadata.annotations.{LAST_APPLIED}"), json!(copy)),
            (
                "metadata.annotations".to_string(),
                json!({LAST_APPLIED: copy}),
            ),
            (
                "metadata".to_string(),
                json!({"annotations": {LAST_APPLIED: copy}}),
            ),
        ] {
            let mut fields = vec![FieldChange {
                path: path.clone(),
                action: FieldAction::Remove,
                live: Some(value),
                desired: None,
                manager: None,
                since: None,
            }];
            conceal_fields(&mut fields);
            assert!(
                !serde_json::to_string(&fields[0].live)
                    .unwrap()
                    .contains("hunter2"),
                "{path}"
            );
        }
    }

    #[test]
    fn data_and_string_data_show_the_same_digest_for_the_same_value_and_never_the_value() {
        let mut body = json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "db"},
            "data": {"password": "aHVudGVyMg=="},
            "stringData": {"password": "hunter2"},
            "type": "Opaque"
        });
        conceal_body(&mut body);
        let text = body.to_string();
        assert!(
            !text.contains("hunter2") && !text.contains("aHVudGVyMg=="),
            "{text}"
        );
        assert_eq!(body["data"]["password"], body["stringData"]["password"]);
        assert_eq!(body["data"]["password"], digest(b"hunter2"));
        assert_eq!(body["type"], "Opaque");
        assert_eq!(body["metadata"]["name"], "db");
    }

    #[test]
    fn field_changes_under_data_show_digests_and_others_are_left() {
        let change = |path: &str, live: Value, desired: Value| FieldChange {
            path: path.into(),
            action: FieldAction::Change,
            live: Some(live),
            desired: Some(desired),
            manager: None,
            since: None,
        };
        let mut fields = vec![
            change(
                "data.password",
                json!("aHVudGVyMg=="),
                json!("c3dvcmRmaXNo"),
            ),
            change(
                "stringData",
                json!({"token": "s3cr3t"}),
                json!({"token": "0ther"}),
            ),
            change("metadata.labels.team", json!("a"), json!("b")),
        ];
        conceal_fields(&mut fields);
        let text = serde_json::to_string(&fields).unwrap();
        for value in ["aHVudGVyMg==", "c3dvcmRmaXNo", "s3cr3t", "0ther"] {
            assert!(!text.contains(value), "{value} in {text}");
        }
        assert_eq!(fields[0].live, Some(json!(digest(b"hunter2"))));
        assert_ne!(fields[0].live, fields[0].desired);
        assert_eq!(fields[2].desired, Some(json!("b")));
    }
}
