//! Declarations: from a repository's files to resolved, checked environments.
//!
//! | module | role |
//! |---|---|
//! | [`repo`] | the in-memory file tree (the core's input) |
//! | [`changed`] | which workspaces a change of the files reaches (`plan --changed-since`) |
//! | [`yaml`] | YAML → positioned tree (limits, duplicate keys) |
//! | [`diag`] | diagnostics, `file:line:col` |
//! | [`schema`] | embedded JSON Schemas, validation with positions |
//! | [`overlay`] | Kustomize-style merge of positioned trees |
//! | [`model`] | typed declarations |
//! | [`names`] | the names and identities a declaration gives its objects |
//! | [`validate`] | loads layers, resolves base chains, merges, checks rules |
//!
//! Imports: `object` and `par` only (pure: no client, no Git, no file
//! system). Everything after it in the pipeline may import it.

pub mod changed;
pub mod diag;
pub mod model;
pub mod names;
pub mod overlay;
pub mod repo;
pub mod schema;
pub mod validate;
pub mod yaml;
