//! The plan: desired objects paired with live ones, and the change set
//! (pure: no client, no I/O; its printers are in `print`).
//!
//! | module | role |
//! |---|---|
//! | [`types`] | the change set: [`Plan`], [`Change`], [`Action`], [`Summary`] |
//! | [`diff`] | one desired object against its live counterpart, over managed fields |
//! | [`pair`] | the [`Planner`]: live objects paired with desired ones a page at a time |
//! | [`contract`] | a saved plan (`plan --out`, `sync --plan`): digests, preconditions, staleness |
//! | [`field_policy`] | the field ownership policy: managers reverted, fields ignored, takeover |
//!
//! Imports: `object`, `declare` (the model's policy types). Nothing in it
//! knows the inventory or the cluster: the caller passes the keys an
//! inventory records.

pub mod conceal;
pub mod contract;
pub mod diff;
pub mod drift_cache;
pub mod field_policy;
pub mod pair;
pub mod types;

pub use pair::{Planner, plan};
pub use types::{
    Action, Change, FieldAction, FieldChange, LiveVersion, PLAN_FORMAT_VERSION, Plan, Summary,
};
