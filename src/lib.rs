//! tenantsync: a declarative GitOps reconciler for healthcare-API tenant workspaces.
//!
//! The pure core (no I/O) is `yaml`, `repo`, `diag`, `schema`, `overlay`,
//! `model`, `validate` and `render`; the edges (`source`, later `cluster`,
//! `daemon`) depend on it, never the other way round.

pub mod cli;
pub mod cluster;
pub mod daemon;
pub mod diag;
pub mod diff;
pub mod field_policy;
pub mod health;
pub mod inventory;
pub mod model;
pub mod overlay;
pub mod par;
pub mod plan;
pub mod print;
pub mod render;
pub mod repo;
pub mod schema;
pub mod source;
pub mod sync;
pub mod tenancy;
pub mod validate;
pub mod yaml;
pub mod yaml_emit;
