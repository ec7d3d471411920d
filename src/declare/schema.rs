//! The JSON Schemas (draft 2020-12) of every file kind, embedded in the binary,
//! and validation of positioned documents against them.

use std::sync::OnceLock;

use jsonschema::Validator;
use jsonschema::error::{TypeKind, ValidationErrorKind};
use serde_json::Value as Json;

use crate::declare::diag::Diagnostic;
use crate::declare::repo::FileTable;
use crate::declare::yaml::Node;

/// The file kinds users write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SchemaKind {
    Environment,
    Workspace,
    WorkspacePatch,
    DaemonConfig,
}

pub const ENVIRONMENT_SCHEMA: &str = include_str!("../../schemas/environment.schema.json");
pub const WORKSPACE_SCHEMA: &str = include_str!("../../schemas/workspace.schema.json");
pub const WORKSPACE_PATCH_SCHEMA: &str = include_str!("../../schemas/workspace-patch.schema.json");
pub const DAEMON_CONFIG_SCHEMA: &str = include_str!("../../schemas/daemon-config.schema.json");

const DNS_LABEL_PATTERN: &str = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

struct Compiled {
    raw: Json,
    validator: Validator,
}

impl SchemaKind {
    pub fn source(self) -> &'static str {
        match self {
            SchemaKind::Environment => ENVIRONMENT_SCHEMA,
            SchemaKind::Workspace => WORKSPACE_SCHEMA,
            SchemaKind::WorkspacePatch => WORKSPACE_PATCH_SCHEMA,
            SchemaKind::DaemonConfig => DAEMON_CONFIG_SCHEMA,
        }
    }

    pub fn file_name(self) -> &'static str {
        match self {
            SchemaKind::Environment => "environment.schema.json",
            SchemaKind::Workspace => "workspace.schema.json",
            SchemaKind::WorkspacePatch => "workspace-patch.schema.json",
            SchemaKind::DaemonConfig => "daemon-config.schema.json",
        }
    }

    fn compiled(self) -> Result<&'static Compiled, String> {
        static ENV: OnceLock<Result<Compiled, String>> = OnceLock::new();
        static WS: OnceLock<Result<Compiled, String>> = OnceLock::new();
        static PATCH: OnceLock<Result<Compiled, String>> = OnceLock::new();
        static DAEMON: OnceLock<Result<Compiled, String>> = OnceLock::new();
        let cell = match self {
            SchemaKind::Environment => &ENV,
            SchemaKind::Workspace => &WS,
            SchemaKind::WorkspacePatch => &PATCH,
            SchemaKind::DaemonConfig => &DAEMON,
        };
        cell.get_or_init(|| {
            let raw: Json = serde_json::from_str(self.source())
                .map_err(|e| format!("embedded schema {} is not JSON: {e}", self.file_name()))?;
            let validator = jsonschema::draft202012::new(&raw).map_err(|e| {
                format!("embedded schema {} does not compile: {e}", self.file_name())
            })?;
            Ok(Compiled { raw, validator })
        })
        .as_ref()
        .map_err(Clone::clone)
    }
}

/// Validates `doc` against the schema of `kind`. `base_pointer` is prefixed
/// to reported pointers when `doc` is a part of a larger document.
pub fn validate(kind: SchemaKind, doc: &Node, files: &FileTable) -> Vec<Diagnostic> {
    let compiled = match kind.compiled() {
        Ok(c) => c,
        Err(message) => return vec![files.diag(doc.pos, None, message)],
    };
    let instance = doc.to_json();
    let mut out = Vec::new();
    for error in compiled.validator.iter_errors(&instance) {
        let pointer = error.instance_path().to_string();
        let (node, key_pos) = doc.pointer(&pointer).unwrap_or((doc, None));
        match error.kind() {
            ValidationErrorKind::AdditionalProperties { unexpected } => {
                let allowed = allowed_properties(&compiled.raw, doc, &pointer);
                for name in unexpected {
                    let pos = node.get_key(name).map_or(node.pos, |k| k.pos);
                    let mut message = format!("unknown field `{name}`");
                    if pointer.ends_with("/defaults/dicomCast") && name == "replicas" {
                        message.push_str(
                            ": a DICOM-cast always runs one replica (one poller of its DICOM service's change feed, seed 003); remove it",
                        );
                    } else if let Some(best) = did_you_mean(name, &allowed) {
                        message.push_str(&format!("; did you mean `{best}`?"));
                    } else if !allowed.is_empty() {
                        message.push_str(&format!("; expected one of {}", allowed.join(", ")));
                    }
                    out.push(files.diag(pos, Some(format!("{pointer}/{name}")), message));
                }
            }
            kind => {
                let message = describe(kind, node, &pointer, &error.to_string());
                let pos = if matches!(kind, ValidationErrorKind::Required { .. }) {
                    node.pos
                } else {
                    // Point at the value; for a null or scalar the key reads better.
                    match (&node.value, key_pos) {
                        (crate::declare::yaml::Value::Null, Some(k)) => k,
                        _ => node.pos,
                    }
                };
                out.push(files.diag(pos, Some(pointer), message));
            }
        }
    }
    out
}

fn type_name(kind: &TypeKind) -> String {
    match kind {
        TypeKind::Single(t) => t.to_string(),
        TypeKind::Multiple(ts) => {
            let names: Vec<String> = ts.iter().map(|t| t.to_string()).collect();
            names.join(" or ")
        }
    }
}

/// The most characters of a value an error quotes: a hostile 200,000
/// character string is named by its start and length, not repeated.
const MAX_QUOTED: usize = 100;

/// A string value in backquotes, shortened past [`MAX_QUOTED`].
fn quoted(s: &str) -> String {
    let n = s.chars().count();
    if n <= MAX_QUOTED {
        return format!("`{s}`");
    }
    let start: String = s.chars().take(60).collect();
    format!("`{start}…` ({n} characters)")
}

fn describe(kind: &ValidationErrorKind, node: &Node, pointer: &str, fallback: &str) -> String {
    let found = || match &node.value {
        crate::declare::yaml::Value::Str(s) => quoted(s),
        _ => {
            let json = node.to_json().to_string();
            if json.chars().count() > MAX_QUOTED {
                node.type_name().to_string()
            } else {
                json
            }
        }
    };
    match kind {
        ValidationErrorKind::Required { property } => {
            format!(
                "missing required field `{}`",
                property.as_str().unwrap_or("?")
            )
        }
        ValidationErrorKind::Type { kind } => {
            let mut m = format!("expected {}, found {}", type_name(kind), node.type_name());
            if pointer.ends_with("/dicomCast") && node.type_name() == "array" {
                m.push_str(" (a DICOM service has at most one dicomCast)");
            }
            m
        }
        ValidationErrorKind::Enum { options } => {
            let opts: Vec<String> = options
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|o| o.as_str().map_or(o.to_string(), str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            format!("{} is not one of: {}", found(), opts.join(", "))
        }
        ValidationErrorKind::Constant { expected_value } => {
            format!(
                "must be `{}`, found {}",
                expected_value.as_str().unwrap_or("?"),
                found()
            )
        }
        ValidationErrorKind::Pattern { pattern } if pattern == DNS_LABEL_PATTERN => format!(
            "{} is not a valid name: use lowercase letters, digits and '-', starting and ending with a letter or digit (DNS-1123 label)",
            found()
        ),
        ValidationErrorKind::Pattern { .. } if pointer.ends_with("/pollInterval") => format!(
            "{} is not a duration over zero: a whole number of ms, s, m or h, such as 30s, 5m or 250ms",
            found()
        ),
        ValidationErrorKind::Pattern { pattern } => {
            format!("{} does not match the expected format `{pattern}`", found())
        }
        ValidationErrorKind::MaxLength { limit } => {
            format!("{} is longer than {limit} characters", found())
        }
        ValidationErrorKind::MaxItems { limit } if pointer.ends_with("/fhirDestinations") => {
            let n = match &node.value {
                crate::declare::yaml::Value::Seq(items) => items.len(),
                _ => 0,
            };
            format!("an IoT connector has at most {limit} FHIR destinations (one Event Hub consumer group each), found {n}")
        }
        ValidationErrorKind::MaxItems { limit } => {
            let n = match &node.value {
                crate::declare::yaml::Value::Seq(items) => items.len(),
                _ => 0,
            };
            if pointer.ends_with("/iotConnectors") {
                format!("a workspace has at most {limit} IoT connectors, found {n}")
            } else {
                format!("at most {limit} items allowed, found {n}")
            }
        }
        ValidationErrorKind::MinItems { limit } if pointer.ends_with("/template") => format!(
            "an empty template maps nothing: give it at least {limit} template (a {} for each kind of measurement)",
            if pointer.contains("fhirMapping") { "CodeValueFhir" } else { "JsonPathContent, CalculatedContent, IotJsonPathContent or IotCentralJsonPathContent" }
        ),
        ValidationErrorKind::Minimum { limit } => {
            format!("{} is less than the minimum {limit}", found())
        }
        ValidationErrorKind::Maximum { limit } => {
            format!("{} is more than the maximum {limit}", found())
        }
        ValidationErrorKind::MinLength { limit } => {
            format!("{} is shorter than {limit} characters", found())
        }
        ValidationErrorKind::AnyOf { .. } if pointer.contains("/ownership/ignore/") => {
            "an ignore rule names the fields it leaves to others: give it `paths`, `managers` or both".to_string()
        }
        _ => fallback.to_string(),
    }
}

/// The property names the schema allows at `pointer` in `doc`, found by
/// walking the (project's own, simple) schema along the instance path.
fn allowed_properties(schema: &Json, doc: &Node, pointer: &str) -> Vec<String> {
    let mut at = resolve(schema, schema);
    let mut node = doc;
    if !pointer.is_empty() {
        for raw in pointer.trim_start_matches('/').split('/') {
            let token = raw.replace("~1", "/").replace("~0", "~");
            let next = match &node.value {
                crate::declare::yaml::Value::Seq(items) => {
                    node = match token.parse::<usize>().ok().and_then(|i| items.get(i)) {
                        Some(n) => n,
                        None => return Vec::new(),
                    };
                    at.get("items")
                }
                _ => {
                    node = match node.get(&token) {
                        Some(n) => n,
                        None => return Vec::new(),
                    };
                    at.get("properties").and_then(|p| p.get(&token))
                }
            };
            at = match next {
                Some(s) => resolve(schema, s),
                None => return Vec::new(),
            };
        }
    }
    at.get("properties")
        .and_then(Json::as_object)
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default()
}

fn resolve<'a>(root: &'a Json, mut schema: &'a Json) -> &'a Json {
    for _ in 0..16 {
        match schema.get("$ref").and_then(Json::as_str) {
            Some(r) => match r.strip_prefix('#').and_then(|p| root.pointer(p)) {
                Some(s) => schema = s,
                None => return schema,
            },
            None => return schema,
        }
    }
    schema
}

/// The closest allowed name, if it is close enough to be a likely typo.
pub fn did_you_mean<'a>(name: &str, allowed: &'a [String]) -> Option<&'a str> {
    allowed
        .iter()
        .map(|a| {
            (
                strsim::jaro_winkler(&name.to_lowercase(), &a.to_lowercase()),
                a,
            )
        })
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, a)| a.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::declare::yaml::{FileId, Limits, parse};

    fn check(kind: SchemaKind, text: &str) -> Vec<Diagnostic> {
        let mut files = FileTable::default();
        let id = files.add("environments/base/workspaces/a.yaml");
        assert_eq!(id, FileId(0));
        let doc = parse(id, text, Limits::default()).unwrap();
        validate(kind, &doc, &files)
    }

    #[test]
    fn embedded_schemas_compile() {
        for kind in [
            SchemaKind::Environment,
            SchemaKind::Workspace,
            SchemaKind::WorkspacePatch,
            SchemaKind::DaemonConfig,
        ] {
            assert!(kind.compiled().is_ok(), "{}", kind.file_name());
        }
    }

    #[test]
    fn unknown_field_gets_position_and_suggestion() {
        let d = check(
            SchemaKind::Workspace,
            "apiVersion: tenantsync.io/v1alpha1\nkind: Workspace\nmetadata:\n  name: a\nspec:\n  fhirServices:\n    - name: x\n      replcas: 2\n",
        );
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!((d[0].line, d[0].column), (8, 7));
        assert_eq!(
            d[0].pointer.as_deref(),
            Some("/spec/fhirServices/0/replcas")
        );
        assert!(
            d[0].message.contains("did you mean `replicas`"),
            "{}",
            d[0].message
        );
    }

    #[test]
    fn reports_every_error_not_just_the_first() {
        let d = check(
            SchemaKind::Workspace,
            "apiVersion: tenantsync.io/v1alpha1\nkind: Workspace\nmetadata:\n  name: Bad_Name\nspec:\n  fhirServices:\n    - name: x\n      replicas: many\n      fhirVersion: R9\n",
        );
        let msgs: Vec<_> = d
            .iter()
            .map(|d| format!("{}:{} {}", d.line, d.column, d.message))
            .collect();
        assert_eq!(d.len(), 3, "{msgs:?}");
        assert!(
            msgs.iter()
                .any(|m| m.starts_with("4:9 `Bad_Name` is not a valid name")),
            "{msgs:?}"
        );
        assert!(
            msgs.iter()
                .any(|m| m.starts_with("8:17 expected integer, found string")),
            "{msgs:?}"
        );
        assert!(
            msgs.iter()
                .any(|m| m.starts_with("9:20 `R9` is not one of: STU3, R4, R4B, R5")),
            "{msgs:?}"
        );
    }

    #[test]
    fn missing_required_fields_point_at_the_object() {
        let d = check(
            SchemaKind::Workspace,
            "apiVersion: tenantsync.io/v1alpha1\nkind: Workspace\nmetadata:\n  name: a\nspec:\n  iotConnectors:\n    - name: c\n      identity: {clientId: 6d3cae74-1b2f-4a3c-9da5-4e7a9f1b3d32}\n      deviceMapping: {content: {templateType: CollectionContent, template: [{templateType: JsonPathContent, template: {}}]}}\n",
        );
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].line, 7);
        assert!(
            d[0].message
                .contains("missing required field `ingestionEndpointConfiguration`")
        );
    }

    #[test]
    fn more_than_ten_iot_connectors_is_refused() {
        let mut text = String::from(
            "apiVersion: tenantsync.io/v1alpha1\nkind: Workspace\nmetadata:\n  name: a\nspec:\n  iotConnectors:\n",
        );
        for i in 0..11 {
            text.push_str(&format!("    - name: c{i}\n      identity: {{clientId: 6d3cae74-1b2f-4a3c-9da5-4e7a9f1b3d32}}\n      ingestionEndpointConfiguration: {{eventHubName: h, fullyQualifiedEventHubNamespace: myhubns.servicebus.windows.net}}\n      deviceMapping: {{content: {{templateType: CollectionContent, template: [{{templateType: JsonPathContent, template: {{}}}}]}}}}\n"));
        }
        let d = check(SchemaKind::Workspace, &text);
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(
            d[0].message,
            "a workspace has at most 10 IoT connectors, found 11"
        );
        assert_eq!(d[0].line, 7);
    }

    #[test]
    fn two_dicom_casts_are_refused_with_a_hint() {
        let d = check(
            SchemaKind::Workspace,
            "apiVersion: tenantsync.io/v1alpha1\nkind: Workspace\nmetadata:\n  name: a\nspec:\n  dicomServices:\n    - name: d\n      dicomCast:\n        - {fhirService: f}\n        - {fhirService: g}\n",
        );
        assert_eq!(d.len(), 1, "{d:?}");
        assert!(
            d[0].message.contains("at most one dicomCast"),
            "{}",
            d[0].message
        );
    }

    /// Fuzzing (issue 16's examples): a 200,000-character name was quoted
    /// whole in its error, 200 KB of stderr for one line.
    #[test]
    fn a_huge_value_is_quoted_shortened_in_its_error() {
        let name = "a".repeat(200_000);
        let diags = check(
            SchemaKind::Environment,
            &format!(
                "apiVersion: tenantsync.io/v1alpha1\nkind: Environment\nmetadata:\n  name: {name}\nspec: {{}}\n"
            ),
        );
        assert!(!diags.is_empty());
        for d in &diags {
            assert!(d.message.len() < 500, "{}", d.message.len());
        }
        assert!(
            diags
                .iter()
                .any(|d| d.message.contains("(200000 characters)")),
            "{diags:?}"
        );
    }

    #[test]
    fn suggestion_only_when_close() {
        let allowed = vec!["replicas".to_string(), "resources".to_string()];
        assert_eq!(did_you_mean("replica", &allowed), Some("replicas"));
        assert_eq!(did_you_mean("zzz", &allowed), None);
    }
}
