//! The daemon's read-only status page: HTML drawn from what `/status`
//! already holds ([`DaemonStatus`]), nothing else. Pure functions returning
//! strings; `daemon::http` serves them.
//!
//! Templates are [`maud`]'s, checked at compile time: every value spliced in
//! is HTML-escaped (a `<script>` in a workspace's error is shown, not run);
//! only the page's own style sheet is inserted as is. No JavaScript: the
//! page refreshes itself with a meta refresh. Links are stable URLs an alert
//! can point at: `/`, `/environments/<env>`,
//! `/environments/<env>/workspaces/<workspace>`.
//!
//! A new status (say, a pending approval) is one arm in [`status_class`]
//! and one in the `SyncStatus` it comes from; the pages show it as a badge
//! with its name, so nothing else has to change.

use maud::{DOCTYPE, Markup, PreEscaped, html};

use crate::plan::{Action, FieldAction, FieldChange};
use crate::sync::health::Health;
use crate::sync::status::{
    Commit, DaemonStatus, EnvironmentStatus, ObjectStatus, RECENT_RECONCILES, ReconcileRecord,
    SyncStatus, WorkspaceStatus,
};

/// Seconds between the page's own reloads.
pub const REFRESH_SECONDS: u32 = 10;

const STYLE: &str = r#"
:root{color-scheme:light dark;--bg:#fff;--fg:#1b1f24;--muted:#57606a;--line:#d0d7de;--card:#f6f8fa;
--ok:#1a7f37;--warn:#9a6700;--bad:#cf222e;--info:#0969da;--unknown:#6e7781;--link:#0969da;--focus:#bf8700}
@media (prefers-color-scheme:dark){:root{--bg:#0d1117;--fg:#e6edf3;--muted:#9198a1;--line:#30363d;--card:#161b22;
--ok:#3fb950;--warn:#d29922;--bad:#f85149;--info:#58a6ff;--unknown:#8b949e;--link:#58a6ff;--focus:#e3b341}}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif}
header,main,footer{max-width:72rem;margin:0 auto;padding:.75rem 1rem}
header{border-bottom:1px solid var(--line)}
h1{font-size:1.35rem;margin:.5rem 0}h2{font-size:1.1rem;margin:1.25rem 0 .5rem}
a{color:var(--link)}a:focus-visible{outline:3px solid var(--focus);outline-offset:2px}
.skip{position:absolute;left:-999px}.skip:focus{left:1rem;top:.5rem;background:var(--bg);padding:.25rem .5rem}
nav ol{list-style:none;margin:0;padding:0;display:flex;flex-wrap:wrap;gap:.25rem}
nav li+li::before{content:"/";margin-right:.25rem;color:var(--muted)}
.table{overflow-x:auto;border:1px solid var(--line);border-radius:6px}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:.4rem .6rem;border-bottom:1px solid var(--line);vertical-align:top}
th{background:var(--card);font-weight:600;white-space:nowrap}
tr:last-child td{border-bottom:0}
td.n{text-align:right;font-variant-numeric:tabular-nums}
code,pre{font:13px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
pre{background:var(--card);border:1px solid var(--line);border-radius:6px;padding:.6rem;white-space:pre-wrap;overflow-wrap:anywhere}
.badge{display:inline-block;padding:0 .5rem;border-radius:1rem;border:1px solid currentColor;font-weight:600;font-size:.85rem;white-space:nowrap}
.Synced,.Healthy{color:var(--ok)}.Progressing{color:var(--info)}.Degraded{color:var(--bad)}.OutOfSync{color:var(--warn)}.Failed{color:var(--bad)}.RolledBack{color:var(--bad)}.Syncing{color:var(--info)}.Unknown{color:var(--unknown)}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.25rem 1rem;margin:0}dt{color:var(--muted)}dd{margin:0;overflow-wrap:anywhere}
.muted{color:var(--muted)}
svg.timeline{width:100%;max-width:40rem;height:auto;display:block}
svg .Synced{fill:var(--ok)}svg .OutOfSync{fill:var(--warn)}svg .Failed{fill:var(--bad)}svg .RolledBack{fill:var(--bad)}svg .Syncing{fill:var(--info)}svg .Unknown{fill:var(--unknown)}
svg text{fill:var(--muted);font-size:10px}svg line{stroke:var(--line)}
tr.error td{border-top:0;padding-top:0;color:var(--bad)}
@media (max-width:40rem){body{font-size:14px}dl{grid-template-columns:1fr}dt{margin-top:.4rem}
.table{border:0}table thead{display:none}table tr{display:block;border:1px solid var(--line);border-radius:6px;margin-bottom:.5rem}
table td,table th[scope=row]{display:block;border:0;padding:.15rem .6rem;text-align:left}
table td[data-label]::before{content:attr(data-label) ": ";color:var(--muted)}td.n{text-align:left}}
"#;

/// How an error is shown: the daemon leaves URLs' host:port and Kubernetes
/// identities out, as in `/status`.
pub type Redact<'a> = &'a dyn Fn(&str) -> String;

/// `GET /`: every environment with its status, revisions, last error and
/// counts.
pub fn environments_page(status: &DaemonStatus, redact: Redact<'_>) -> String {
    let body = html! {
        h1 { "Environments" }
        p.muted {
            "Replica " code { (status.identity) } ": "
            @if status.leader { "leader (writes)" } @else { "not the leader (reports only)" }
        }
        @if status.environments.is_empty() {
            p { "No environment has been reconciled yet." }
        } @else {
            div.table { table {
                caption.skip { "Environments and their sync status" }
                thead { tr {
                    th scope="col" { "Environment" } th scope="col" { "Status" }
                    th scope="col" { "Applied revision" } th scope="col" { "Seen revision" }
                    th scope="col" { "Workspaces" } th scope="col" { "Objects" }
                    th scope="col" { "Drifted" } th scope="col" { "Failed" }
                    th scope="col" { "Last reconcile" }
                } }
                tbody {
                    @for (name, env) in &status.environments {
                        tr {
                            th scope="row" { a href=(env_url(name)) { (name) } }
                            td data-label="Status" { (badge(env.sync_status))
                                @if let Some(why) = waiting(env) { " " span.muted { (why) } } }
                            td data-label="Applied revision" { (commit(env.last_applied_revision.as_deref(), env.last_applied_commit.as_ref())) }
                            td data-label="Seen revision" { (commit(env.last_seen_revision.as_deref(), env.last_seen_commit.as_ref())) }
                            td.n data-label="Workspaces" { (env.workspaces.len()) }
                            td.n data-label="Objects" { (env.object_count()) }
                            td.n data-label="Drifted" { (env.drifted_objects) }
                            td.n data-label="Failed" { (env.failed_workspaces()) }
                            td data-label="Last reconcile" { (when(env.last_reconcile_at.as_deref())) }
                        }
                        @if let Some(error) = &env.last_error {
                            tr.error { td colspan="9" data-label="Last error" {
                                (redact(error.lines().next().unwrap_or_default()))
                                @if let Some(t) = &env.last_error_at { " " span.muted { "(" (short_time(t)) ")" } }
                            } }
                        }
                    }
                }
            } }
        }
    };
    layout("Environments", &[], body)
}

/// `GET /environments/<env>`; `None` when the daemon does not sync it.
pub fn environment_page(status: &DaemonStatus, env: &str, redact: Redact<'_>) -> Option<String> {
    let e = status.environments.get(env)?;
    let body = html! {
        h1 { "Environment " (env) " " (badge(e.sync_status)) }
        (environment_facts(e))
        h2 #timeline { "Recent reconciles" }
        (timeline(&e.recent_reconciles))
        @if let Some(error) = &e.last_error {
            h2 #last-error { "Last error" }
            p.muted { (when(e.last_error_at.as_deref()))
                @if let Some(r) = &e.last_error_reason { " (" (r) ")" } }
            pre { (redact(error)) }
        }
        h2 #workspaces { "Workspaces" }
        @if e.workspaces.is_empty() {
            p { "No workspace yet." }
        } @else {
            div.table { table {
                thead { tr {
                    th scope="col" { "Workspace" } th scope="col" { "Status" }
                    th scope="col" { "Objects" } th scope="col" { "Drifted" } th scope="col" { "Errors" }
                } }
                tbody {
                    @for (name, ws) in &e.workspaces {
                        tr {
                            th scope="row" { a href=(workspace_url(env, name)) { (name) } }
                            td data-label="Status" { (badge(ws.sync_status)) }
                            td.n data-label="Objects" { (ws.objects.len()) }
                            td.n data-label="Drifted" { (ws.drifted_objects) }
                            td.n data-label="Errors" { (ws.errors.len()) }
                        }
                    }
                }
            } }
        }
    };
    Some(layout(
        &format!("Environment {env}"),
        &[(env.to_string(), env_url(env))],
        body,
    ))
}

/// `GET /environments/<env>/workspaces/<ws>`; `None` when unknown.
pub fn workspace_page(status: &DaemonStatus, env: &str, ws: &str) -> Option<String> {
    let e = status.environments.get(env)?;
    let w = e.workspaces.get(ws)?;
    let pending: Vec<&ObjectStatus> = w
        .objects
        .iter()
        .filter(|o| o.action != Action::Unchanged)
        .collect();
    let body = html! {
        h1 { "Workspace " (ws) " " (badge(w.sync_status)) }
        dl {
            dt { "Environment" } dd { a href=(env_url(env)) { (env) } }
            dt { "Applied revision" } dd { (commit(e.last_applied_revision.as_deref(), e.last_applied_commit.as_ref())) }
            dt { "Objects" } dd { (w.objects.len()) }
            dt { "Drifted objects" } dd { (w.drifted_objects) }
        }
        @if !w.errors.is_empty() {
            h2 #errors { "Errors" }
            p { "This workspace is held at its last applied state until its declarations are fixed:" }
            pre { @for line in &w.errors { (line) "\n" } }
        }
        @if !pending.is_empty() {
            h2 #changes { "Out of step (" (pending.len()) ")" }
            (changes_table(&pending))
        }
        h2 #objects { "Objects" }
        (objects_table(w))
    };
    Some(layout(
        &format!("Workspace {ws} in {env}"),
        &[
            (env.to_string(), env_url(env)),
            (ws.to_string(), workspace_url(env, ws)),
        ],
        body,
    ))
}

/// Any other path (or an environment or workspace the daemon does not know).
pub fn not_found_page(what: &str) -> String {
    layout(
        "Not found",
        &[],
        html! {
            h1 { "Not found" }
            p { (what) }
            p { a href="/" { "All environments" } }
        },
    )
}

fn layout(title: &str, crumbs: &[(String, String)], body: Markup) -> String {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta http-equiv="refresh" content=(REFRESH_SECONDS);
                title { (title) " · tenantsync" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header {
                    nav aria-label="Breadcrumb" { ol {
                        li { a href="/" { "tenantsync" } }
                        @for (i, (label, url)) in crumbs.iter().enumerate() {
                            li { a href=(url) aria-current=[(i + 1 == crumbs.len()).then_some("page")] { (label) } }
                        }
                    } }
                }
                main #main { (body) }
                footer.muted {
                    "Read-only. Refreshes every " (REFRESH_SECONDS) " s. Also as JSON: "
                    a href="/status" { "/status" } "."
                }
            }
        }
    }
    .into_string()
}

fn environment_facts(e: &EnvironmentStatus) -> Markup {
    html! {
        dl {
            dt { "Status" } dd { (badge(e.sync_status))
                @if let Some(t) = &e.target_revision { " " (revision(Some(t))) } }
            dt { "Applied revision" } dd { (commit(e.last_applied_revision.as_deref(), e.last_applied_commit.as_ref())) }
            dt { "Seen revision" } dd { (commit(e.last_seen_revision.as_deref(), e.last_seen_commit.as_ref())) }
            @if let Some(mode) = e.mode { dt { "Sync mode" } dd { (mode) } }
            @if let Some(pending) = &e.pending_revision {
                dt { "Pending revision" } dd { (revision(Some(pending)))
                    @if let Some(why) = waiting(e) { " " (why) }
                    @if let Some(plan) = &e.pending_plan { br; span.muted { (plan) } } }
            }
            @if let Some(window) = &e.sync_window { dt { "Sync window" } dd { (window) } }
            @if let Some(f) = &e.failed_health {
                dt { "Failed health" } dd { (revision(Some(&f.revision)))
                    @for (ws, reasons) in &f.workspaces {
                        br; strong { (ws) } ": " (reasons.join("; "))
                        @if let Some(to) = f.rolled_back.get(ws) { " " span.muted { "rolled back to " (to) } }
                        @else if let Some(to) = f.rolling_back.get(ws) { " " span.muted { "to be rolled back to " (to) " (not applied yet)" } }
                        @else { " " span.muted { "left as it is" } }
                    }
                    @if let Some(why) = &f.rollback_error { br; span.muted { (why) } } }
            }
            @if let Some(r) = &e.rollout {
                dt { "Rollout" } dd { (revision(Some(&r.revision)))
                    " step " (r.step) "/" (r.steps) " " strong { (r.phase.as_str()) }
                    @if let Some(at) = &r.next_step_at { " " span.muted { "next step at " (short_time(at)) } }
                    br; span.muted { (r.done.len()) " Healthy, " (r.progressing.len()) " progressing, "
                        (r.pending.len()) " pending, " (r.failed.len()) " failed" }
                    @for (ws, why) in &r.failed { br; strong { (ws) } ": " (why) }
                    @if !r.rolling_back.is_empty() { br; span.muted { "to be rolled back (not applied yet): " (r.rolling_back.join(", ")) } }
                    @if let Some(why) = &r.rollback_error { br; span.muted { (why) } } }
            }
            @if let Some(a) = &e.approval {
                dt { "Last approval" } dd { (revision(Some(&a.revision))) " by " (a.by)
                    @if a.by != a.user { " (" (a.user) ")" } " " span.muted { (short_time(&a.at)) } }
            }
            dt { "Last reconcile" } dd { (when(e.last_reconcile_at.as_deref())) }
            dt { "Last sync" } dd { (when(e.last_sync_at.as_deref())) }
            dt { "Workspaces" } dd { (e.workspaces.len()) " (" (e.failed_workspaces()) " failed)" }
            dt { "Objects" } dd { (e.object_count()) " (" (e.drifted_objects) " drifted)" }
        }
    }
}

fn changes_table(pending: &[&ObjectStatus]) -> Markup {
    html! {
        div.table { table {
            thead { tr {
                th scope="col" { "Object" } th scope="col" { "Next sync" } th scope="col" { "Field" }
                th scope="col" { "Live" } th scope="col" { "Declared" } th scope="col" { "Changed by" }
            } }
            tbody {
                @for o in pending {
                    @if o.fields.is_empty() {
                        tr { td data-label="Object" { (object_id(o)) } td data-label="Next sync" { (action_text(o.action)) }
                             td colspan="4" { (o.note.as_deref().unwrap_or("")) } }
                    }
                    @for f in &o.fields {
                        tr {
                            td data-label="Object" { (object_id(o)) }
                            td data-label="Next sync" { (action_text(o.action)) }
                            td data-label="Field" { code { (f.path) } " " span.muted { (field_action(f)) } }
                            td data-label="Live" { (value(o, f.live.as_ref())) }
                            td data-label="Declared" { (value(o, f.desired.as_ref())) }
                            td data-label="Changed by" { (f.manager.as_deref().unwrap_or("-"))
                                 @if let Some(t) = &f.since { " " span.muted { "(" (short_time(t)) ")" } } }
                        }
                    }
                }
            }
        } }
    }
}

fn objects_table(w: &WorkspaceStatus) -> Markup {
    html! {
        @if w.objects.is_empty() && !w.errors.is_empty() {
            p { "While it is invalid, its objects keep their last applied state and are not compared with the cluster." }
        } @else if w.objects.is_empty() {
            p { "No object seen yet." }
        } @else {
            div.table { table {
                thead { tr {
                    th scope="col" { "Kind" } th scope="col" { "Namespace" }
                    th scope="col" { "Name" } th scope="col" { "State" }
                    th scope="col" { "Health (when last listed)" }
                } }
                tbody {
                    @for o in &w.objects {
                        tr {
                            td data-label="Kind" { (o.kind) }
                            td data-label="Namespace" { (o.namespace.as_deref().unwrap_or("-")) }
                            td data-label="Name" { (o.name) }
                            td data-label="State" { (action_text(o.action)) }
                            td data-label="Health" { (health(o.health.as_ref())) }
                        }
                    }
                }
            } }
        }
    }
}

/// The recent reconciles as bars: height the duration (log scale), colour
/// and tooltip the result, a dot when objects changed.
fn timeline(recent: &std::collections::VecDeque<ReconcileRecord>) -> Markup {
    const SLOT: u32 = 20;
    // Room for every reconcile the ring keeps.
    const W: u32 = RECENT_RECONCILES as u32 * SLOT;
    const H: u32 = 90;
    if recent.is_empty() {
        return html! { p { "No reconcile yet." } };
    }
    let longest = recent
        .iter()
        .map(|r| r.duration_ms)
        .max()
        .unwrap_or(1)
        .max(1);
    let scale = |ms: u64| {
        let h = ((ms.max(1) as f64).ln_1p() / (longest as f64).ln_1p()) * 60.0;
        h.clamp(3.0, 60.0).round() as u32
    };
    let failed = recent
        .iter()
        .filter(|r| r.result == SyncStatus::Failed)
        .count();
    let changed: usize = recent.iter().map(|r| r.changed).sum();
    let label = format!(
        "{} recent reconciles, {} failed, {} objects changed; longest {} ms",
        recent.len(),
        failed,
        changed,
        longest
    );
    html! {
        svg.timeline xmlns="http://www.w3.org/2000/svg" viewBox={"0 0 " (W) " " (H)} role="img" aria-label=(label) {
            title { (label) }
            line x1="0" y1="72" x2=(W) y2="72" {}
            @for (i, r) in recent.iter().enumerate() {
                @let x = u32::try_from(i).unwrap_or(0) * SLOT + 4;
                @let h = scale(r.duration_ms);
                g {
                    title { (record_text(r)) }
                    rect class=(status_class(r.result)) x=(x) y=(72 - h) width=(SLOT - 6) height=(h) rx="2" {}
                    @if r.changed > 0 {
                        circle class="Syncing" cx=(x + (SLOT - 6) / 2) cy=(72 - h - 6) r="3" {}
                    }
                }
            }
            @if let (Some(first), Some(last)) = (recent.front(), recent.back()) {
                text x="0" y="86" { (short_time(&first.at)) }
                text x=(W) y="86" text-anchor="end" { (short_time(&last.at)) }
            }
        }
        p.muted { (label) ". Bar height: duration; dot: objects changed. Hover a bar for its details." }
        details {
            summary { "As a table" }
            div.table { table {
                thead { tr { th scope="col" { "Ended" } th scope="col" { "Result" }
                    th scope="col" { "Duration" } th scope="col" { "Objects changed" } } }
                tbody { @for r in recent.iter().rev() {
                    tr { td data-label="Ended" { (short_time(&r.at)) } td data-label="Result" { (badge(r.result))
                            @if let Some(why) = &r.error_reason { " " span.muted { (why) } } }
                         td.n data-label="Duration" { (r.duration_ms) " ms" } td.n data-label="Objects changed" { (r.changed) } }
                } }
            } }
        }
    }
}

fn record_text(r: &ReconcileRecord) -> String {
    let why = r
        .error_reason
        .as_deref()
        .map(|w| format!(" ({w})"))
        .unwrap_or_default();
    format!(
        "{}: {}{} in {} ms, {} objects changed",
        r.at, r.result, why, r.duration_ms, r.changed
    )
}

/// The CSS class of a status (its name, so a new status is one new line of
/// style at most).
/// What a pending revision waits for, in words (change control).
fn waiting(e: &EnvironmentStatus) -> Option<&'static str> {
    e.pending_revision.as_ref()?;
    Some(match e.pending_reason {
        Some("window") => "pending: waits for a sync window",
        _ => "pending approval",
    })
}

fn status_class(s: SyncStatus) -> &'static str {
    match s {
        SyncStatus::Unknown => "Unknown",
        SyncStatus::Synced => "Synced",
        SyncStatus::OutOfSync => "OutOfSync",
        SyncStatus::Syncing => "Syncing",
        SyncStatus::Failed => "Failed",
        SyncStatus::RolledBack => "RolledBack",
    }
}

fn badge(s: SyncStatus) -> Markup {
    html! { span class={"badge " (status_class(s))} { (s) } }
}

fn health(h: Option<&Health>) -> Markup {
    html! {
        @match h {
            Some(h) => {
                span class={"badge " (h.status)} { (h.status) }
                @if !h.message.is_empty() { " " span.muted { (h.message) } }
            }
            None => span.muted { "-" },
        }
    }
}

fn action_text(a: Action) -> &'static str {
    match a {
        Action::Unchanged => "in sync",
        Action::Create => "missing: created by the next sync",
        Action::Update => "modified: updated by the next sync",
        Action::Delete => "not declared: pruned by the next sync (with prune)",
        Action::Adopt => "exists unmanaged: adopted by the next sync",
        Action::Unmanaged => "exists, not managed by tenantsync: left alone",
    }
}

fn field_action(f: &FieldChange) -> &'static str {
    match f.action {
        FieldAction::Add => "(missing)",
        FieldAction::Change => "(changed)",
        FieldAction::Remove => "(no longer declared)",
    }
}

fn value(o: &ObjectStatus, v: Option<&serde_json::Value>) -> Markup {
    html! {
        @if o.kind == "Secret" {
            span.muted { "(secret value hidden)" }
        } @else {
            @match v {
                Some(serde_json::Value::String(s)) => code { (s) },
                Some(other) => code { (other.to_string()) },
                None => span.muted { "-" },
            }
        }
    }
}

fn object_id(o: &ObjectStatus) -> String {
    match &o.namespace {
        Some(ns) => format!("{}/{}/{}", o.kind, ns, o.name),
        None => format!("{}/{}", o.kind, o.name),
    }
}

/// A revision: a Git commit shortened to 7 characters (the full one in its
/// tooltip), anything else as is.
fn revision(r: Option<&str>) -> Markup {
    html! {
        @match r {
            Some(r) if r.len() == 40 && r.bytes().all(|b| b.is_ascii_hexdigit()) => {
                code title=(r) { (r.get(..7).unwrap_or(r)) }
            }
            Some(r) => code { (r) },
            None => span.muted { "-" },
        }
    }
}

/// A revision with its commit's subject and author, when from Git.
fn commit(r: Option<&str>, c: Option<&Commit>) -> Markup {
    html! {
        (revision(r))
        @if let Some(c) = c {
            " " (c.subject) " " span.muted { "by " (c.author) }
        }
    }
}

/// A time to the second (`2026-12-03 04:43:51Z`), or a dash.
fn when(t: Option<&str>) -> Markup {
    html! { @match t { Some(t) => time datetime=(t) { (short_time(t)) }, None => span.muted { "-" } } }
}

/// An RFC 3339 time without its fraction of a second, `T` as a space.
fn short_time(t: &str) -> String {
    let t = match (t.find('.'), t.rfind(['Z', '+'])) {
        (Some(dot), Some(zone)) if dot < zone => {
            format!(
                "{}{}",
                t.get(..dot).unwrap_or(t),
                t.get(zone..).unwrap_or("")
            )
        }
        _ => t.to_string(),
    };
    t.replacen('T', " ", 1)
}

/// A path segment: names are DNS labels, but a stray character still
/// makes a working link.
fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn env_url(env: &str) -> String {
    format!("/environments/{}", segment(env))
}

fn workspace_url(env: &str, ws: &str) -> String {
    format!("{}/workspaces/{}", env_url(env), segment(ws))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::FieldAction;

    fn status() -> DaemonStatus {
        let mut env = EnvironmentStatus {
            sync_status: SyncStatus::OutOfSync,
            last_applied_revision: Some("0123456789abcdef0123456789abcdef01234567".into()),
            last_applied_commit: Some(Commit {
                subject: "Onboard <b>contoso</b>".into(),
                author: "Ada".into(),
            }),
            last_error: Some("revision x is invalid:\n<script>alert(1)</script>".into()),
            drifted_objects: 1,
            ..EnvironmentStatus::default()
        };
        env.workspaces.insert(
            "contoso".into(),
            WorkspaceStatus {
                sync_status: SyncStatus::OutOfSync,
                drifted_objects: 1,
                errors: Vec::new(),
                objects: vec![ObjectStatus {
                    kind: "Deployment".into(),
                    namespace: Some("contoso-dev".into()),
                    name: "fhir-api".into(),
                    action: Action::Update,
                    fields: vec![FieldChange {
                        path: "spec.replicas".into(),
                        action: FieldAction::Change,
                        live: Some(5.into()),
                        desired: Some(1.into()),
                        manager: Some("kubectl".into()),
                        since: Some("2026-12-03T05:00:00Z".into()),
                    }],
                    note: None,
                    health: Some(Health::degraded("ProgressDeadlineExceeded: <i>stuck</i>")),
                }],
            },
        );
        env.workspaces.insert(
            "broken".into(),
            WorkspaceStatus {
                sync_status: SyncStatus::Failed,
                errors: vec!["environments/dev/workspaces/broken.yaml:3:5: error: /spec/<img src=x onerror=alert(1)>: unknown field".into()],
                ..WorkspaceStatus::default()
            },
        );
        for (i, result) in [
            SyncStatus::Synced,
            SyncStatus::Failed,
            SyncStatus::OutOfSync,
        ]
        .into_iter()
        .enumerate()
        {
            env.record_reconcile(ReconcileRecord {
                at: format!("2026-12-03T05:00:0{i}Z"),
                duration_ms: 10 * (i as u64 + 1),
                result,
                changed: i,
                error_reason: None,
            });
        }
        DaemonStatus {
            identity: "pod-1".into(),
            leader: true,
            owns: None,
            environments: [("dev".to_string(), env)].into(),
        }
    }

    #[test]
    fn the_environment_list_links_each_environment_with_its_status_and_counts() {
        let html = environments_page(&status(), &str::to_string);
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert!(
            html.contains(r#"<a href="/environments/dev">dev</a>"#),
            "{html}"
        );
        assert!(html.contains(r#"<span class="badge OutOfSync">OutOfSync</span>"#));
        assert!(
            html.contains(
                r#"<code title="0123456789abcdef0123456789abcdef01234567">0123456</code>"#
            )
        );
        assert!(html.contains(r#"http-equiv="refresh""#));
        assert!(
            html.contains(
                r#"</code> Onboard &lt;b&gt;contoso&lt;/b&gt; <span class="muted">by Ada</span>"#
            ),
            "{html}"
        );
        // Only the first line of the error, escaped.
        assert!(html.contains("revision x is invalid:"));
        assert!(!html.contains("alert(1)"));
    }

    #[test]
    fn hostile_values_are_escaped_on_every_page() {
        let s = status();
        let env = environment_page(&s, "dev", &str::to_string).unwrap();
        assert!(!env.contains("<script>alert"), "{env}");
        assert!(env.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        let ws = workspace_page(&s, "dev", "broken").unwrap();
        assert!(!ws.contains("<img"), "{ws}");
        assert!(ws.contains("/spec/&lt;img src=x onerror=alert(1)&gt;: unknown field"));
        assert!(ws.contains("keep their last applied state and are not compared"));
        let missing = not_found_page("<b>x</b>");
        assert!(missing.contains("&lt;b&gt;x&lt;/b&gt;"));
    }

    #[test]
    fn a_workspace_page_shows_a_drifted_field_with_live_value_and_manager() {
        let html = workspace_page(&status(), "dev", "contoso").unwrap();
        assert!(html.contains("<code>spec.replicas</code>"), "{html}");
        assert!(html.contains(r#"<td data-label="Live"><code>5</code></td><td data-label="Declared"><code>1</code></td><td data-label="Changed by">kubectl "#), "{html}");
        assert!(html.contains("Deployment/contoso-dev/fhir-api"));
        assert!(html.contains(r#"<span class="badge Degraded">Degraded</span> <span class="muted">ProgressDeadlineExceeded: &lt;i&gt;stuck&lt;/i&gt;</span>"#), "{html}");
        assert!(
            html.contains(r#"href="/environments/dev/workspaces/contoso" aria-current="page""#)
        );
    }

    #[test]
    fn the_last_error_is_shown_as_the_daemon_redacts_it() {
        let hide = |e: &str| e.replace("revision x", "revision …");
        let list = environments_page(&status(), &hide);
        let env = environment_page(&status(), "dev", &hide).unwrap();
        for html in [list, env] {
            assert!(html.contains("revision … is invalid:"), "{html}");
            assert!(!html.contains("revision x"), "{html}");
        }
    }

    #[test]
    fn times_are_shown_to_the_second() {
        assert_eq!(
            short_time("2026-12-03T04:43:51.266240073Z"),
            "2026-12-03 04:43:51Z"
        );
        assert_eq!(short_time("2026-12-03T04:43:51Z"), "2026-12-03 04:43:51Z");
        assert_eq!(short_time("soon"), "soon");
    }

    #[test]
    fn unknown_environments_and_workspaces_have_no_page() {
        assert!(environment_page(&status(), "prod", &str::to_string).is_none());
        assert!(workspace_page(&status(), "dev", "nope").is_none());
    }

    #[test]
    fn the_timeline_draws_one_bar_per_reconcile_with_its_result() {
        let html = environment_page(&status(), "dev", &str::to_string).unwrap();
        assert_eq!(html.matches("<rect ").count(), 3, "{html}");
        assert!(html.contains(r#"<rect class="Failed""#));
        // A dot for each reconcile that changed objects.
        assert_eq!(html.matches("<circle ").count(), 2);
        assert!(html.contains("3 recent reconciles, 1 failed, 3 objects changed"));
    }

    #[test]
    fn a_secrets_values_are_never_shown() {
        let mut s = status();
        let ws = s
            .environments
            .get_mut("dev")
            .and_then(|e| e.workspaces.get_mut("contoso"))
            .unwrap();
        ws.objects[0].kind = "Secret".into();
        let html = workspace_page(&s, "dev", "contoso").unwrap();
        assert!(html.contains("(secret value hidden)"));
        assert!(!html.contains("<code>5</code>"), "{html}");
    }

    #[test]
    fn a_rollout_shows_its_step_phase_counts_and_failed_workspaces_escaped() {
        use crate::sync::rollout::{RolloutPhase, RolloutStatus};
        let mut status = DaemonStatus::default();
        let e = EnvironmentStatus {
            sync_status: SyncStatus::Failed,
            rollout: Some(RolloutStatus {
                revision: "0123456789abcdef0123456789abcdef01234567".into(),
                step: 1,
                steps: 2,
                phase: RolloutPhase::RolledBack,
                done: vec!["a".into()],
                progressing: Vec::new(),
                pending: (0..8).map(|i| format!("p{i}")).collect(),
                failed: std::collections::BTreeMap::from([(
                    "b".to_string(),
                    "<i>Degraded</i>".to_string(),
                )]),
                next_step_at: None,
                rolling_back: Vec::new(),
                rollback_error: None,
            }),
            ..EnvironmentStatus::default()
        };
        status.environments.insert("prod".into(), e);
        let page = environment_page(&status, "prod", &|s: &str| s.to_string()).unwrap();
        assert!(page.contains("Rollout"), "{page}");
        assert!(
            page.contains("step 1/2 <strong>RolledBack</strong>"),
            "{page}"
        );
        assert!(
            page.contains("1 Healthy, 0 progressing, 8 pending, 1 failed"),
            "{page}"
        );
        assert!(page.contains("&lt;i&gt;Degraded&lt;/i&gt;"), "{page}");
    }

    #[test]
    fn a_pending_revision_shows_what_it_waits_for_and_the_last_approval() {
        let mut status = DaemonStatus::default();
        let mut e = EnvironmentStatus {
            sync_status: SyncStatus::OutOfSync,
            mode: Some("manual"),
            pending_revision: Some("0123456789abcdef0123456789abcdef01234567".into()),
            pending_reason: Some("approval"),
            pending_plan: Some("1 to update".into()),
            approval: Some(crate::sync::approval::Approval {
                revision: "fedcba9876543210fedcba9876543210fedcba98".into(),
                user: "system:serviceaccount:ops:approver".into(),
                by: "<b>ada</b>".into(),
                at: "2026-12-03T06:00:00Z".into(),
                plan: None,
            }),
            ..EnvironmentStatus::default()
        };
        status.environments.insert("prod".into(), e.clone());
        let list = environments_page(&status, &|s: &str| s.to_string());
        assert!(list.contains("pending approval"), "{list}");
        let page = environment_page(&status, "prod", &|s: &str| s.to_string()).unwrap();
        assert!(
            page.contains("Pending revision") && page.contains("1 to update"),
            "{page}"
        );
        assert!(page.contains("&lt;b&gt;ada&lt;/b&gt;"), "{page}");
        e.pending_reason = Some("window");
        status.environments.insert("prod".into(), e);
        let list = environments_page(&status, &|s: &str| s.to_string());
        assert!(list.contains("waits for a sync window"), "{list}");
    }

    #[test]
    fn a_rolled_back_revision_shows_its_workspaces_reasons_and_where_they_went() {
        let mut status = DaemonStatus::default();
        let failed = crate::sync::status::FailedHealth {
            revision: "0123456789abcdef0123456789abcdef01234567".into(),
            workspaces: std::collections::BTreeMap::from([
                (
                    "alpha".to_string(),
                    vec!["Deployment/a/api: Degraded: ProgressDeadlineExceeded".to_string()],
                ),
                (
                    "gamma".to_string(),
                    vec!["Deployment/g/api: Progressing: 0 of 1".to_string()],
                ),
            ]),
            rolled_back: std::collections::BTreeMap::from([(
                "alpha".to_string(),
                "fedcba98".to_string(),
            )]),
            left: vec!["gamma".to_string()],
            rollback: true,
            ..Default::default()
        };
        let e = EnvironmentStatus {
            sync_status: SyncStatus::RolledBack,
            failed_health: Some(failed),
            ..EnvironmentStatus::default()
        };
        status.environments.insert("prod".into(), e);
        let page = environment_page(&status, "prod", &|s: &str| s.to_string()).unwrap();
        assert!(page.contains("badge RolledBack"), "{page}");
        assert!(
            page.contains("Failed health") && page.contains("ProgressDeadlineExceeded"),
            "{page}"
        );
        assert!(
            page.contains("rolled back to fedcba98") && page.contains("left as it is"),
            "{page}"
        );
    }
}
