//! Printers: every text, Markdown and JSON a command prints, rendered
//! from the values the pipeline produces ([`crate::plan::Plan`],
//! [`crate::sync::report::SyncReport`], an inventory's status). Pure
//! functions returning strings; the caller decides where they go (the
//! engine never prints).
//!
//! | module | prints |
//! |---|---|
//! | `plan` | a plan (text, Markdown, JSON) for `plan` and `drift`, with drift's notes, a deleted namespace's foreign objects and a revision's rollout steps |
//! | `report` | a sync's report, and why a sync failed one line per object |
//! | `page` | the daemon's read-only status page (HTML) from its `/status` |
//! | `status` | an environment's recorded status (`tenantsync status`) |
//!
//! Imports: the core (`plan`, `sync`); it sits at the top of the core, so
//! that every value it prints is below it. Nothing in the core imports it.

pub mod page;
mod plan;
mod report;
mod status;

pub use plan::{
    Output, Verb, json, json_to, markdown, text, with_changed, with_drift_notes, with_foreign,
    with_rollout,
};
pub use report::{conflict_fields, sync_errors, sync_text};
pub use status::{status_json, status_text};

/// `n` objects of a Kubernetes kind in English: `1 Ingress`, `7 Ingresses`,
/// `2 NetworkPolicies`, `3 Deployments`.
pub fn kind_plural(kind: &str, n: usize) -> String {
    if n == 1 {
        return kind.to_string();
    }
    let lower = kind.to_ascii_lowercase();
    if let Some(stem) = kind.strip_suffix('y')
        && !stem.ends_with(['a', 'e', 'i', 'o', 'u'])
    {
        return format!("{stem}ies");
    }
    if ["s", "x", "z", "ch", "sh"]
        .iter()
        .any(|e| lower.ends_with(e))
    {
        return format!("{kind}es");
    }
    format!("{kind}s")
}
