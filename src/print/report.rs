//! Printers of a sync's [`SyncReport`]: the text `sync` prints, and the
//! one-line-per-object reasons a failed sync records and logs.

use super::kind_plural;
use crate::sync::health::HealthStatus;
use crate::sync::name_some;
use crate::sync::report::{Conflict, SyncReport};

/// A conflict's fields, each with the manager that owns it.
pub fn conflict_fields(c: &Conflict) -> String {
    let fields: Vec<String> = c
        .fields
        .iter()
        .map(|f| format!("{} (owned by {})", f.field, f.manager))
        .collect();
    fields.join(", ")
}

/// Why a sync did not succeed, one line per object.
pub fn sync_errors(r: &SyncReport) -> String {
    let mut lines: Vec<String> = Vec::new();
    if let Some(a) = &r.aborted {
        lines.push(a.clone());
    }
    lines.extend(r.failures.iter().map(|f| f.message.clone()));
    lines.extend(
        r.conflicts
            .iter()
            .map(|c| format!("{}: conflict: {}", c.id, conflict_fields(c))),
    );
    if !r.not_sent.is_empty() {
        lines.push(format!(
            "{} object(s) not sent: {}",
            r.not_sent.len(),
            name_some(&r.not_sent)
        ));
    }
    lines.join("\n")
}

/// The text `sync` prints: what did not go as planned, object by object,
/// then the health and a summary line.
pub fn sync_text(r: &SyncReport) -> String {
    let mut out = String::new();
    for c in &r.conflicts {
        out.push_str(&format!(
            "conflict: {}: {}; re-run with --force-conflicts to take them over\n",
            c.id,
            conflict_fields(c)
        ));
    }
    for f in &r.failures {
        out.push_str(&format!("failed: {}\n", f.message));
    }
    for k in &r.kept {
        out.push_str(&format!("kept: {} ({})\n", k.id, k.message));
    }
    for id in &r.adopted {
        out.push_str(&format!("adopted: {id}\n"));
    }
    for (ns, f) in &r.foreign {
        if !f.objects.is_empty() {
            out.push_str(&format!(
                "namespace {ns} holds {} object(s) tenantsync did not make: {}\n",
                f.objects.len(),
                f.objects.join(", ")
            ));
        }
        if !f.unchecked_kinds.is_empty() {
            out.push_str(&format!(
                "namespace {ns}: {} kind(s) could not be checked (no list permission): {}\n",
                f.unchecked_kinds.len(),
                name_some(&f.unchecked_kinds)
            ));
        }
    }
    if let Some(a) = &r.aborted {
        out.push_str(&format!("stopped: {a}\n"));
    }
    if !r.not_sent.is_empty() {
        out.push_str(&format!(
            "not sent: {} object(s): {}\n",
            r.not_sent.len(),
            name_some(&r.not_sent)
        ));
    }
    if let Some(why) = &r.prune_skipped {
        out.push_str(&format!("prune skipped: {why}\n"));
    }
    if let Some(h) = &r.health {
        for o in h
            .objects
            .iter()
            .filter(|o| o.status != HealthStatus::Healthy)
        {
            out.push_str(&format!("{}: {} ({})\n", o.status, o.id, o.message));
        }
        let per_ws: Vec<String> = h
            .workspaces
            .iter()
            .map(|(w, s)| format!("{w}: {s}"))
            .collect();
        out.push_str(&format!("Health: {} ({})\n", h.status, per_ws.join(", ")));
    }
    if r.throttled > 0 {
        out.push_str(&format!(
            "The API server answered 429 Too Many Requests {} {} during the sync: refused requests were sent again after its Retry-After (for up to 60 s each), with fewer writes in flight.\n",
            r.throttled,
            kind_plural("time", usize::try_from(r.throttled).unwrap_or(usize::MAX)),
        ));
    }
    out.push_str(&format!(
        "{}Sync of environment {}{}: {} created, {} updated, {} recreated, {} pruned, {} unchanged, {} {}, {} {}; {} write {}.\n",
        if r.dry_run { "(dry run) " } else { "" },
        r.environment,
        r.revision.as_deref().map(|v| format!(" at {}", v.get(..12).unwrap_or(v))).unwrap_or_default(),
        r.created.len(),
        r.updated.len(),
        r.recreated.len(),
        r.pruned.len(),
        r.unchanged,
        r.conflicts.len(),
        kind_plural("conflict", r.conflicts.len()),
        r.failures.len(),
        kind_plural("failure", r.failures.len()),
        r.write_requests,
        kind_plural("request", r.write_requests as usize),
    ));
    out
}
