//! What a sync may do and in which order (pure: no client, no I/O).
//!
//! | module | role |
//! |---|---|
//! | [`approval`] | a manual environment's pending revision and its approval |
//! | [`steps`] | stages (sync wave, then kind), the prune set and its guards, the scope of a sync |
//! | [`inventory`] | the record of what tenantsync applied: encoding, set logic, merges |
//! | [`health`] | per-kind health rules, worst-wins aggregation |
//! | [`report`] | what a sync did: the value printers, status and metrics are built from |
//! | [`shard`] | sharded replicas: which replica syncs which environment, the Leases' names |
//! | [`status`] | what the daemon knows of each environment (`/status`, the status page), the ring of recent reconciles |
//! | [`resume`] | what the daemon records so another resumes its health judgements and rollout |
//! | [`rollout`] | progressive rollout: which workspaces a revision changes, which step each is in |
//! | [`windows`] | sync windows: whether a new revision may be applied now |
//! | [`tenancy`] | the operator's guardrails, the effective policy, who owns an object |
//!
//! Imports: `object`, `declare`, `plan`. The edges (`cluster`) execute what
//! it decides.

pub mod approval;
pub mod health;
pub mod inventory;
pub mod report;
pub mod resume;
pub mod rollout;
pub mod shard;
pub mod status;
pub mod steps;
pub mod tenancy;
pub mod windows;

pub use steps::{
    Fence, MassPrune, PRUNE_ANNOTATION, Scope, Stage, Steps, SyncOptions, name_some,
    namespaces_to_prune, steps, steps_with_foreign,
};
