//! The pipeline the CLI and the daemon share: a source tree to an
//! environment's desired state ([`desired`], pure), then that state against
//! the cluster ([`plan_live`]), and the options a sync and a connection are
//! built from, each in one place.
//!
//! Imports: the core, and the `cluster` edge (for [`plan_live`]); never
//! `daemon` or `cli`, which sit on top of it.

mod desired;
mod live;
mod revisions;

pub use desired::{
    DesiredState, Intake, Refused, Selected, Unresolved, admit, desired, desired_of, files_to_read,
    select,
};
pub use live::{Deletes, LivePlan, PlanOptions, check_scopes, plan_live, unrecorded};
pub use revisions::{compose, needed};
