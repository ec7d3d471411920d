//! tenantsync: a declarative GitOps reconciler for healthcare-API tenant workspaces.
//!
//! The folders follow the pipeline: declarations → objects → plan → sync,
//! then the edges that read sources and talk to the cluster, and the two
//! front ends on top.
//!
//! | module | layer | role |
//! |---|---|---|
//! | [`object`] | core | object identity: `Object`, names, keys, the one ID format, kinds, labels |
//! | [`declare`] | core | repository files → checked, resolved environments |
//! | [`render`] | core | an environment → its Kubernetes objects, one file per service family |
//! | [`plan`] | core | desired vs live: the change set and its diff; a saved plan (`contract`) |
//! | [`sync`] | core | sync steps, inventory, health, tenancy guardrails, the sync report |
//! | [`print`](mod@print) | core | every printer: plans, sync reports, status (text, Markdown, JSON) |
//! | [`par`] | core | the same function over many items on all cores |
//! | [`source`] | edge | folders and Git revisions → in-memory file trees |
//! | [`cluster`] | edge | the API server, one verb per file: list, apply, delete, wait, inventory, events, lock, execute (a sync) |
//! | [`pipeline`] | edge | the steps the CLI and the daemon share: desired state, live plan |
//! | [`daemon`] | front | reconcile loops (typed steps, an `Action`, one backoff), triggers, status, metrics, HTTP |
//! | [`cli`] | front | raw arguments (`args`), then one file per command |
//!
//! Imports point one way: the core never imports an edge (no tokio, kube,
//! git2 or file system in it); the edges import the core and never each
//! other, except `pipeline`, which joins `source` and `cluster`; `daemon`
//! and `cli` sit on top (`cli` starts the daemon) and nothing imports them. See docs/architecture.md.

#![forbid(unsafe_code)]

pub mod cli;
pub mod cluster;
pub mod daemon;
pub mod declare;
pub mod object;
pub mod par;
pub mod pipeline;
pub mod plan;
pub mod print;
pub mod render;
pub mod source;
pub mod sync;
