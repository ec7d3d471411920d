//! Printers: render a [`Plan`] as text for a terminal, Markdown for a
//! pull-request comment, or JSON for machines. Pure functions returning
//! strings; the caller decides where they go (the engine never prints).
//!
//! `plan` and `drift` compute the same [`Plan`] value; [`Verb`] only changes
//! the words: what `plan` calls a create, `drift` calls an object missing
//! from the cluster.

use std::collections::BTreeMap;

use crate::declare::changed::{Impact, Selection};
use crate::plan::{Action, Change, FieldAction, FieldChange, Plan, Summary};
use crate::sync::name_some;
use crate::sync::report::Foreign;
use crate::sync::rollout::{RolloutPlan, duration_text};

/// Which command the plan is printed for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    /// `tenantsync plan`: what a sync would do.
    Plan,
    /// `tenantsync drift`: how the cluster strayed from what was applied.
    Drift,
}

impl Verb {
    fn command(self) -> &'static str {
        match self {
            Verb::Plan => "plan",
            Verb::Drift => "drift",
        }
    }

    fn word(self, action: Action) -> &'static str {
        match (self, action) {
            (Verb::Plan, Action::Create) => "create",
            (Verb::Plan, Action::Update) => "update",
            (Verb::Plan, Action::Delete) => "delete",
            (Verb::Plan, Action::Unchanged) => "unchanged",
            (Verb::Drift, Action::Create) => "missing (deleted by hand)",
            (Verb::Drift, Action::Update) => "modified",
            (Verb::Drift, Action::Delete) => "not declared any more (orphaned)",
            (Verb::Drift, Action::Unchanged) => "in sync",
            (_, Action::Adopt) => "adopt",
            (_, Action::Unmanaged) => "exists, not managed",
        }
    }

    /// The counts, in this verb's words and order, without a prefix:
    /// `1 to create, 0 to update, ...` or `1 modified, 0 missing, ...`.
    pub fn counts(self, s: &Summary) -> String {
        let mut ownership = String::new();
        if s.adopt > 0 {
            ownership.push_str(&format!(", {} to adopt", s.adopt));
        }
        if s.unmanaged > 0 {
            ownership.push_str(&format!(", {} not managed", s.unmanaged));
        }
        let counts = match self {
            Verb::Plan => format!(
                "{} to create, {} to update, {} to delete, {} unchanged",
                s.create, s.update, s.delete, s.unchanged
            ),
            Verb::Drift => format!(
                "{} modified, {} missing, {} orphaned, {} in sync",
                s.update, s.create, s.delete, s.unchanged
            ),
        };
        counts + &ownership
    }

    /// `Plan: 3 to create, 1 to update, 2 to delete, 40 unchanged.`
    fn summary_line(self, s: &Summary) -> String {
        match self {
            Verb::Plan => format!("Plan: {}.", self.counts(s)),
            Verb::Drift => format!("Drift: {}.", self.counts(s)),
        }
    }

    /// The sentence printed before the summary line when nothing differs.
    fn nothing_line(self, environment: &str) -> String {
        match self {
            Verb::Plan => format!("No changes. The cluster matches environment {environment}."),
            Verb::Drift => format!("No drift in environment {environment}."),
        }
    }
}

fn marker(action: Action) -> char {
    match action {
        Action::Create => '+',
        Action::Update => '~',
        Action::Delete => '-',
        Action::Unchanged => ' ',
        Action::Adopt => '>',
        Action::Unmanaged => '!',
    }
}

fn changed(plan: &Plan) -> impl Iterator<Item = &Change> {
    plan.changes
        .iter()
        .filter(|c| c.action != Action::Unchanged)
}

/// The changes grouped by workspace, workspaces in order of first appearance
/// (the plan is sorted by workspace already; this does not rely on it).
fn by_workspace(plan: &Plan) -> Vec<(&str, Vec<&Change>)> {
    let mut groups: Vec<(&str, Vec<&Change>)> = Vec::new();
    for c in &plan.changes {
        match groups.iter_mut().find(|(ws, _)| *ws == &*c.workspace) {
            Some((_, list)) => list.push(c),
            None => groups.push((&c.workspace, vec![c])),
        }
    }
    groups
}

/// The counts of a group of changes.
fn count(changes: &[&Change]) -> Summary {
    Summary::of(changes.iter().copied())
}

fn workspace_label(ws: &str) -> &str {
    if ws.is_empty() { "(no workspace)" } else { ws }
}

/// A JSON value on one line; a long one keeps its start and its end (where
/// an image tag or a suffix differs) around an ellipsis.
fn value(v: &serde_json::Value) -> String {
    const MAX: usize = 100;
    const KEEP: usize = (MAX - 1) / 2;
    let s = v.to_string();
    let n = s.chars().count();
    if n <= MAX {
        return s;
    }
    let head: String = s.chars().take(KEEP).collect();
    let tail: String = s.chars().skip(n - KEEP).collect();
    format!("{head}…{tail}")
}

/// `(live, desired)` of a field as shown: values, or `(unset)`/`(removed)`.
fn transition(f: &FieldChange) -> (String, String) {
    let live = f.live.as_ref().map_or_else(|| "(unset)".to_string(), value);
    let desired = match f.action {
        FieldAction::Remove => "(removed)".to_string(),
        FieldAction::Add | FieldAction::Change => f
            .desired
            .as_ref()
            .map_or_else(|| "(unset)".to_string(), value),
    };
    (live, desired)
}

fn manager_note(f: &FieldChange) -> String {
    match (&f.manager, &f.since) {
        (Some(m), Some(t)) => format!(" (changed by {m} at {t})"),
        (Some(m), None) => format!(" (changed by {m})"),
        _ => String::new(),
    }
}

// ---------------------------------------------------------------- text

const BOLD: &str = "\x1b[1m";
const RED: &str = "\x1b[31m";
const GREEN: &str = "\x1b[32m";
const CYAN: &str = "\x1b[36m";
const RESET: &str = "\x1b[0m";

struct Painter {
    color: bool,
}

impl Painter {
    fn line(&self, out: &mut String, style: &str, text: &str) {
        if self.color && !style.is_empty() {
            out.push_str(style);
            out.push_str(text);
            out.push_str(RESET);
        } else {
            out.push_str(text);
        }
        out.push('\n');
    }

    fn diff(&self, out: &mut String, diff: &str) {
        for l in diff.lines() {
            let style = if l.starts_with("---") || l.starts_with("+++") {
                BOLD
            } else if l.starts_with('-') {
                RED
            } else if l.starts_with('+') {
                GREEN
            } else if l.starts_with("@@") {
                CYAN
            } else {
                ""
            };
            self.line(out, style, l);
        }
    }
}

/// One changed object: header, field list (updates), unified diff.
fn text_object(out: &mut String, p: &Painter, c: &Change, verb: Verb) {
    let header = match verb {
        Verb::Plan => format!(
            "{} {} {} (workspace {})",
            marker(c.action),
            verb.word(c.action),
            c.id(),
            workspace_label(&c.workspace)
        ),
        // Drift groups by workspace already.
        Verb::Drift => format!("{} {} {}", marker(c.action), verb.word(c.action), c.id()),
    };
    p.line(out, BOLD, &header);
    if let Some(note) = &c.note {
        p.line(out, "", &format!("  {note}"));
    }
    for f in &c.fields {
        let (live, desired) = transition(f);
        p.line(
            out,
            "",
            &format!("  {}: {live} -> {desired}{}", f.path, manager_note(f)),
        );
    }
    p.diff(out, &c.diff);
    out.push('\n');
}

/// The plan for a terminal: per changed object a header, its changed fields
/// and its unified diff, then the summary line. ANSI colour only when
/// `color` is true.
pub fn text(plan: &Plan, color: bool, verb: Verb) -> String {
    let p = Painter { color };
    let mut out = String::new();
    match verb {
        Verb::Plan => {
            for c in changed(plan) {
                text_object(&mut out, &p, c, verb);
            }
        }
        Verb::Drift => {
            for (ws, changes) in by_workspace(plan) {
                let summary = count(&changes);
                if !summary.has_changes() {
                    continue;
                }
                p.line(
                    &mut out,
                    BOLD,
                    &format!(
                        "Workspace {}: {}",
                        workspace_label(ws),
                        verb.counts(&summary)
                    ),
                );
                out.push('\n');
                for c in changes.iter().filter(|c| c.action != Action::Unchanged) {
                    text_object(&mut out, &p, c, verb);
                }
            }
        }
    }
    if !plan.summary.has_changes() {
        out.push_str(&verb.nothing_line(&plan.environment));
        out.push('\n');
    }
    out.push_str(&verb.summary_line(&plan.summary));
    out.push('\n');
    out
}

// ------------------------------------------------------------ markdown

/// The whole comment stays under this many bytes (hence characters too):
/// GitHub refuses comments over 65,536 characters; the margin leaves room
/// for whatever a CI step wraps around it.
pub const MARKDOWN_LIMIT: usize = 60_000;

/// Room kept for the closing notes, which are written last.
const NOTE_RESERVE: usize = 600;

/// A table cell: `|` escaped, kept on one line.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace(['\n', '\r'], " ")
}

/// A code span that survives backticks in its content.
fn code(s: &str) -> String {
    let longest = longest_backtick_run(s);
    if longest == 0 {
        return format!("`{s}`");
    }
    let ticks = "`".repeat(longest + 1);
    format!("{ticks} {s} {ticks}")
}

fn longest_backtick_run(s: &str) -> usize {
    let (mut longest, mut run) = (0, 0);
    for ch in s.chars() {
        run = if ch == '`' { run + 1 } else { 0 };
        longest = longest.max(run);
    }
    longest
}

fn html(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn short_revision(rev: &str) -> &str {
    if rev.len() > 7 && rev.chars().all(|c| c.is_ascii_hexdigit()) {
        &rev[..7]
    } else {
        rev
    }
}

fn fields_cell(c: &Change) -> String {
    c.fields
        .iter()
        .map(|f| {
            let (live, desired) = transition(f);
            format!(
                "{}: {} → {}{}",
                code(&f.path),
                code(&live),
                code(&desired),
                manager_note(f)
            )
        })
        .collect::<Vec<_>>()
        .join("<br>")
}

fn table(verb: Verb, changes: &[&Change]) -> String {
    let mut t = match verb {
        Verb::Plan => "| Action | Kind | Namespace | Name | Fields |\n".to_string(),
        Verb::Drift => "| Drift | Kind | Namespace | Name | Fields |\n".to_string(),
    };
    t.push_str("| --- | --- | --- | --- | --- |\n");
    for c in changes.iter().filter(|c| c.action != Action::Unchanged) {
        t.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            cell(&format!("{} {}", marker(c.action), verb.word(c.action))),
            cell(&c.kind),
            cell(c.namespace.as_deref().unwrap_or("(cluster)")),
            cell(&c.name),
            cell(&match &c.note {
                Some(note) => note.clone(),
                None => fields_cell(c),
            }),
        ));
    }
    t
}

fn details(verb: Verb, c: &Change) -> String {
    let target = match &c.namespace {
        Some(ns) => format!("{ns}/{}", c.name),
        None => c.name.to_string(),
    };
    let fence = "`".repeat(longest_backtick_run(&c.diff).max(2) + 1);
    let mut diff = c.diff.clone();
    if !diff.ends_with('\n') {
        diff.push('\n');
    }
    format!(
        "<details><summary>{} {} {} {}</summary>\n\n{fence}diff\n{diff}{fence}\n\n</details>\n\n",
        marker(c.action),
        verb.word(c.action),
        html(&c.kind),
        html(&target),
    )
}

/// The plan as a pull-request comment: title, summary line, a table of the
/// changed objects per workspace, then each object's diff in a collapsible
/// block. Unchanged objects are counted, never listed.
///
/// The result stays under [`MARKDOWN_LIMIT`]: the summary always, the tables
/// whenever they fit (else one count line per workspace), then diffs in plan
/// order until the budget is spent; a closing note says what was left out.
pub fn markdown(plan: &Plan, verb: Verb) -> String {
    let budget = MARKDOWN_LIMIT - NOTE_RESERVE;
    let mut out = format!("### tenantsync {}: {}", verb.command(), plan.environment);
    if let Some(rev) = &plan.revision {
        out.push_str(&format!(" @ {}", code(short_revision(rev))));
    }
    out.push_str("\n\n");
    if !plan.summary.has_changes() {
        out.push_str(&verb.nothing_line(&plan.environment));
        out.push_str("\n\n");
    }
    out.push_str(&format!("**{}**\n\n", verb.summary_line(&plan.summary)));

    let mut quiet = Vec::new();
    let mut sections = Vec::new();
    for (ws, changes) in by_workspace(plan) {
        let summary = count(&changes);
        if !summary.has_changes() {
            quiet.push((ws, summary.unchanged));
            continue;
        }
        let heading = format!(
            "#### Workspace {}: {}\n\n",
            code(workspace_label(ws)),
            verb.counts(&summary)
        );
        let full = format!("{heading}{}\n", table(verb, &changes));
        sections.push((heading, full));
    }
    // A table is shown while it fits beside the headings of all the workspaces
    // after it, so every workspace stays named if at all possible; once one
    // table does not fit, the rest are counted only, so the cut is in one place.
    let mut rest: usize = sections.iter().map(|(h, _)| h.len()).sum();
    let (mut compacted, mut unlisted) = (0usize, 0usize);
    for (heading, full) in &sections {
        rest -= heading.len();
        if compacted + unlisted == 0 && out.len() + full.len() + rest <= budget {
            out.push_str(full);
        } else if out.len() + heading.len() <= budget {
            out.push_str(heading);
            compacted += 1;
        } else {
            unlisted += 1;
        }
    }
    if !quiet.is_empty() {
        let names = quiet
            .iter()
            .map(|(ws, n)| format!("{} ({n})", code(workspace_label(ws))))
            .collect::<Vec<_>>()
            .join(", ");
        let word = match verb {
            Verb::Plan => "Workspaces without changes",
            Verb::Drift => "Workspaces in sync",
        };
        let line = format!("{word}: {names}.\n\n");
        let count = format!("{word}: {}.\n\n", quiet.len());
        if out.len() + line.len() <= budget {
            out.push_str(&line);
        } else if out.len() + count.len() <= budget {
            out.push_str(&count);
        }
    }

    let total = changed(plan).count();
    let mut shown = 0usize;
    for c in changed(plan) {
        let block = details(verb, c);
        if out.len() + block.len() > budget {
            break;
        }
        out.push_str(&block);
        shown += 1;
    }

    let omitted = total - shown;
    let mut notes = Vec::new();
    if compacted + unlisted > 0 {
        let unnamed = if unlisted > 0 {
            format!(" ({unlisted} of them not even named)")
        } else {
            String::new()
        };
        notes.push(format!(
            "> Tables truncated: the last {} workspaces with changes show their counts only, \
             not their objects{unnamed}.",
            compacted + unlisted,
        ));
    }
    if omitted > 0 {
        notes.push(format!(
            "> Output truncated: {omitted} of {total} object diffs omitted to stay under \
             GitHub's 65,536-character comment limit. Run `tenantsync {} --env {}` locally \
             for the full diff.",
            verb.command(),
            plan.environment
        ));
    }
    out.push_str(&notes.join("\n\n"));
    let end = out.trim_end().len();
    out.truncate(end);
    out.push('\n');
    out
}

// ---------------------------------------------------------------- json

/// The plan as pretty JSON with a trailing newline. This is the stable,
/// documented schema (`formatVersion` 1), keys as in [`Plan`]'s `Serialize`:
///
/// - `formatVersion`: schema version (1).
/// - `environment`: the environment's name.
/// - `revision`: the Git commit the desired state came from; absent when read
///   from a plain folder.
/// - `summary`: `{create, update, delete, unchanged}` counts.
/// - `changes`: every object, unchanged ones included, sorted by workspace,
///   apply order and name; each `{action, apiVersion, kind, namespace, name,
///   workspace, fields, diff}` with `action` one of `create`, `update`,
///   `delete`, `unchanged`, `namespace` absent for cluster-scoped objects,
///   `diff` the unified diff text (empty when unchanged) and `fields` (updates
///   only) a list of `{path, action, live, desired, manager}` with `action`
///   one of `add`, `change`, `remove` and `live`, `desired`, `manager` absent
///   when not applicable.
/// - `apiRequests`: API requests made to compute the plan.
///
/// [`json_to`] writes the same text as it is serialized.
pub fn json(plan: &Plan) -> String {
    #[allow(
        clippy::expect_used,
        reason = "a Plan has only string map keys and derived Serialize impls: it cannot fail"
    )]
    let mut s = serde_json::to_string_pretty(plan).expect("a Plan always serializes");
    s.push('\n');
    s
}

/// [`json`], written to `out` as it is serialized (no text of the whole
/// plan held).
pub fn json_to(plan: &Plan, out: &mut dyn std::io::Write) -> std::io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, plan).map_err(std::io::Error::from)?;
    out.write_all(b"\n")
}

/// The plan's text with what the namespaces it deletes hold that tenantsync
/// did not make (kind and name only): `foreign` in JSON, a note otherwise.
pub fn with_foreign(text: String, foreign: &BTreeMap<String, Foreign>, json: bool) -> String {
    if json {
        let Ok(mut value) = serde_json::from_str::<serde_json::Value>(&text) else {
            return text;
        };
        value["foreign"] = serde_json::to_value(foreign).unwrap_or_default();
        return serde_json::to_string_pretty(&value).map_or(text, |t| t + "\n");
    }
    let mut out = text;
    for (ns, f) in foreign {
        if !f.objects.is_empty() {
            out.push_str(&format!(
                "\nNamespace {ns} holds {} object(s) tenantsync did not make: {}.\n\
                 sync --prune deletes its managed objects but keeps the namespace (--prune-foreign deletes them with it).\n",
                f.objects.len(),
                f.objects.join(", ")
            ));
        }
        if !f.unchecked_kinds.is_empty() {
            out.push_str(&format!(
                "\nNamespace {ns}: {} kind(s) could not be checked (no list permission): {}.\n",
                f.unchecked_kinds.len(),
                name_some(&f.unchecked_kinds)
            ));
        }
    }
    out
}

/// A drift's text with what is not drift: `pending` (declared, never
/// applied: the next sync creates them) and `never_declared` (labelled as
/// tenantsync's, never in its inventory): fields in JSON, notes otherwise.
pub fn with_drift_notes(
    text: String,
    pending: &[String],
    never_declared: &[String],
    json: bool,
) -> String {
    if json {
        let Ok(mut value) = serde_json::from_str::<serde_json::Value>(&text) else {
            return text;
        };
        value["pending"] = serde_json::json!(pending);
        value["neverDeclared"] = serde_json::json!(never_declared);
        return serde_json::to_string_pretty(&value).map_or(text, |t| t + "\n");
    }
    let mut out = text;
    if !pending.is_empty() {
        out.push_str(&format!(
            "\nPending: {} object(s) declared but never applied (not drift; the next sync creates them): {}\n",
            pending.len(),
            name_some(pending)
        ));
    }
    if !never_declared.is_empty() {
        out.push_str(&format!(
            "\nOf the orphaned, {} were never declared (labelled as tenantsync's but never in its inventory; prune leaves them): {}\n",
            never_declared.len(),
            name_some(never_declared)
        ));
    }
    out
}

/// The forms a plan is printed in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Text,
    Markdown,
    Json,
}

/// How many workspaces, and files of each, the `--changed-since` note
/// lists in text and markdown (JSON lists all): a pull request touching
/// hundreds of workspaces still gives a comment under GitHub's limit.
const CHANGED_WORKSPACES_SHOWN: usize = 20;
const CHANGED_FILES_SHOWN: usize = 3;

/// A file name or workspace as the note shows it: control characters
/// escaped (a file name may hold a newline), at most 160 characters.
fn shown(s: &str) -> String {
    let escaped: String = s
        .chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect();
    if escaped.chars().count() > 160 {
        let cut: String = escaped.chars().take(157).collect();
        format!("{cut}...")
    } else {
        escaped
    }
}

/// Adds to a plan what `--changed-since REV` planned and why: every
/// workspace (a shared file changed), some (the files that reach each), or
/// none; and what `--workspace` left out. First in the text (a reviewer
/// reads the scope before the changes), after the heading in markdown,
/// `changedSince` in JSON.
pub fn with_changed(text: String, since: &str, selection: &Selection, output: Output) -> String {
    let planned = selection.planned();
    let not_named = selection.not_named();
    if output == Output::Json {
        let Ok(mut value) = serde_json::from_str::<serde_json::Value>(&text) else {
            return text;
        };
        let mut note = serde_json::json!({ "revision": since });
        match &selection.impact {
            Impact::Everything(path) => note["everything"] = path.as_str().into(),
            Impact::Workspaces(reached) => {
                let planned: BTreeMap<&String, &Vec<String>> = reached
                    .iter()
                    .filter(|(ws, _)| planned.as_ref().is_none_or(|p| p.contains(*ws)))
                    .collect();
                note["workspaces"] = serde_json::json!(planned);
            }
        }
        if let Some(named) = &selection.named {
            note["named"] = serde_json::json!(named);
        }
        if !not_named.is_empty() {
            note["notNamed"] = serde_json::json!(not_named);
        }
        value["changedSince"] = note;
        return serde_json::to_string_pretty(&value).map_or(text, |t| t + "\n");
    }
    let md = output == Output::Markdown;
    let quote = |s: &str| {
        if md { code(&shown(s)) } else { shown(s) }
    };
    let list = |names: &[String]| {
        let mut out: Vec<String> = names
            .iter()
            .take(CHANGED_WORKSPACES_SHOWN)
            .map(|n| quote(n))
            .collect();
        if names.len() > CHANGED_WORKSPACES_SHOWN {
            out.push(format!(
                "and {} more",
                names.len() - CHANGED_WORKSPACES_SHOWN
            ));
        }
        out.join(", ")
    };
    let since_q = quote(since);
    let mut note = match (&selection.impact, &planned) {
        (Impact::Everything(path), None) => format!(
            "Planned every workspace: {} changed since {since_q}.\n",
            quote(path)
        ),
        (Impact::Everything(path), Some(named)) => format!(
            "Planned only the workspaces --workspace names ({}): {} changed since {since_q}, which reaches every workspace.\n",
            list(&named.iter().cloned().collect::<Vec<_>>()),
            quote(path)
        ),
        (Impact::Workspaces(reached), planned) => {
            let planned: Vec<(&String, &Vec<String>)> = reached
                .iter()
                .filter(|(ws, _)| planned.as_ref().is_none_or(|p| p.contains(*ws)))
                .collect();
            if planned.is_empty() && not_named.is_empty() {
                format!(
                    "Planned no workspace: nothing changed since {since_q} reaches this environment.\n"
                )
            } else if planned.is_empty() {
                format!(
                    "Planned no workspace: what changed since {since_q} reaches only workspaces --workspace does not name.\n"
                )
            } else {
                let what = if planned.len() == 1 {
                    "the workspace".to_string()
                } else {
                    format!("the {} workspaces", planned.len())
                };
                let mut out =
                    format!("Planned only {what} reached by what changed since {since_q}:\n");
                for (ws, paths) in planned.iter().take(CHANGED_WORKSPACES_SHOWN) {
                    let mut files: Vec<String> = paths
                        .iter()
                        .take(CHANGED_FILES_SHOWN)
                        .map(|p| quote(p))
                        .collect();
                    if paths.len() > CHANGED_FILES_SHOWN {
                        files.push(format!("and {} more", paths.len() - CHANGED_FILES_SHOWN));
                    }
                    let bullet = if md { "- " } else { "  " };
                    out.push_str(&format!("{bullet}{}: {}\n", quote(ws), files.join(", ")));
                }
                if planned.len() > CHANGED_WORKSPACES_SHOWN {
                    out.push_str(&format!(
                        "{}and {} more workspaces\n",
                        if md { "- " } else { "  " },
                        planned.len() - CHANGED_WORKSPACES_SHOWN
                    ));
                }
                out
            }
        }
    };
    if !not_named.is_empty() {
        note.push_str(&format!(
            "Reached but not planned (--workspace does not name them): {}.\n",
            list(&not_named)
        ));
    }
    note.push('\n');
    if md {
        // After the heading line, which names the environment.
        match text.split_once("\n\n") {
            Some((heading, rest)) => format!("{heading}\n\n{note}{rest}"),
            None => note + &text,
        }
    } else {
        note + &text
    }
}

/// Workspaces a rollout step lists in text and markdown (JSON lists all).
const ROLLOUT_WORKSPACES_SHOWN: usize = 20;

/// Adds to a plan how its revision rolls out (`syncPolicy.rollout`): the
/// steps and their workspaces, the pace, what is not held back. A section
/// at the end in text, after the summary line in markdown, `rollout` in
/// JSON.
pub fn with_rollout(text: String, rollout: &RolloutPlan, output: Output) -> String {
    if output == Output::Json {
        let Ok(mut value) = serde_json::from_str::<serde_json::Value>(&text) else {
            return text;
        };
        value["rollout"] = serde_json::to_value(rollout).unwrap_or_default();
        return serde_json::to_string_pretty(&value).map_or(text, |t| t + "\n");
    }
    let md = output == Output::Markdown;
    let list = |names: &[String]| {
        let mut out: Vec<String> = names
            .iter()
            .take(ROLLOUT_WORKSPACES_SHOWN)
            .map(|n| if md { code(&shown(n)) } else { shown(n) })
            .collect();
        if names.len() > ROLLOUT_WORKSPACES_SHOWN {
            out.push(format!(
                "and {} more",
                names.len() - ROLLOUT_WORKSPACES_SHOWN
            ));
        }
        out.join(", ")
    };
    let total: usize = rollout.steps.iter().map(|s| s.workspaces.len()).sum();
    let pace = format!(
        "{total} workspaces in {} steps; each step Healthy within {}, then {} before the next (syncPolicy.rollout)",
        rollout.steps.len(),
        duration_text(rollout.health_deadline_seconds),
        duration_text(rollout.pause_between_seconds),
    );
    let mut section = if md {
        format!("**Rollout:** {pace}.\n\n| Step | Reaches | Workspaces |\n|---|---|---|\n")
    } else {
        format!("\nRollout: {pace}:\n")
    };
    for (i, step) in rollout.steps.iter().enumerate() {
        let n = step.workspaces.len();
        if md {
            section.push_str(&format!(
                "| {} | {}% | {} ({n}) |\n",
                i + 1,
                step.percent,
                list(&step.workspaces)
            ));
        } else {
            section.push_str(&format!(
                "  step {} ({}%, {n}): {}\n",
                i + 1,
                step.percent,
                list(&step.workspaces)
            ));
        }
    }
    let mut first = Vec::new();
    if !rollout.not_held_back.is_empty() {
        first.push(format!(
            "new or removed workspaces {}",
            list(&rollout.not_held_back)
        ));
    }
    let mut notes = String::new();
    if !first.is_empty() {
        notes.push_str(&format!(
            "Not held back, applied with step 1: {}.\n",
            first.join("; ")
        ));
    }
    if rollout.shared_objects > 0 {
        notes.push_str(&format!(
            "Applied with the last step: {} object(s) of no workspace.\n",
            rollout.shared_objects
        ));
    }
    if !notes.is_empty() {
        if md {
            section.push('\n');
        }
        section.push_str(&notes);
    }
    if !md {
        return text + &section;
    }
    // After the summary line: a reviewer reads the pace before the diffs.
    match text.find("**\n\n") {
        Some(at) => {
            let at = at + "**\n\n".len();
            format!("{}{section}\n{}", &text[..at], &text[at..])
        }
        None => text + "\n" + &section,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::PLAN_FORMAT_VERSION;
    use crate::print::kind_plural;
    use serde_json::json;

    fn change(action: Action, kind: &str, name: &str, workspace: &str, diff: &str) -> Change {
        Change {
            action,
            api_version: "v1".into(),
            kind: kind.into(),
            namespace: Some(format!("{workspace}-dev").into()),
            name: name.into(),
            workspace: workspace.into(),
            fields: Vec::new(),
            diff: diff.to_string(),
            note: None,
            heal: None,
            live: None,
        }
    }

    fn plan_of(changes: Vec<Change>) -> Plan {
        Plan {
            format_version: PLAN_FORMAT_VERSION,
            environment: "dev".to_string(),
            revision: None,
            summary: Summary::of(&changes),
            changes,
            api_requests: 7,
        }
    }

    const DIFF: &str = "--- live/Deployment/contoso-dev/fhir-main\n+++ desired/Deployment/contoso-dev/fhir-main\n@@ -1,3 +1,3 @@\n spec:\n-  replicas: 5\n+  replicas: 2\n";

    fn update(name: &str, workspace: &str) -> Change {
        let mut c = change(Action::Update, "Deployment", name, workspace, DIFF);
        c.fields.push(FieldChange {
            path: "spec.replicas".to_string(),
            action: FieldAction::Change,
            live: Some(json!(5)),
            desired: Some(json!(2)),
            manager: Some("kubectl".to_string()),
            since: None,
        });
        c
    }

    fn mixed() -> Plan {
        plan_of(vec![
            change(
                Action::Create,
                "Service",
                "fhir-main",
                "contoso",
                "+++ x\n+a: 1\n",
            ),
            update("fhir-main", "contoso"),
            change(
                Action::Unchanged,
                "ServiceAccount",
                "quiet-object",
                "contoso",
                "",
            ),
            change(
                Action::Delete,
                "Service",
                "dicom-old",
                "fabrikam",
                "--- x\n-a: 1\n",
            ),
            change(
                Action::Delete,
                "ConfigMap",
                "old-config",
                "fabrikam",
                "--- x\n-a: 1\n",
            ),
            change(Action::Unchanged, "Service", "also-quiet", "fabrikam", ""),
            change(Action::Unchanged, "Service", "quiet-three", "northwind", ""),
        ])
    }

    fn last_line(s: &str) -> &str {
        s.lines().last().unwrap_or_default()
    }

    #[test]
    fn summary_line_counts_zero_one_and_many_without_plural_forms() {
        let p = mixed();
        assert_eq!(
            last_line(&text(&p, false, Verb::Plan)),
            "Plan: 1 to create, 1 to update, 2 to delete, 3 unchanged."
        );
        assert_eq!(
            last_line(&text(&p, false, Verb::Drift)),
            "Drift: 1 modified, 1 missing, 2 orphaned, 3 in sync."
        );
        let empty = plan_of(Vec::new());
        assert_eq!(
            text(&empty, false, Verb::Plan),
            "No changes. The cluster matches environment dev.\n\
             Plan: 0 to create, 0 to update, 0 to delete, 0 unchanged.\n"
        );
        let quiet = plan_of(vec![change(
            Action::Unchanged,
            "Service",
            "a",
            "contoso",
            "",
        )]);
        assert_eq!(
            text(&quiet, false, Verb::Drift),
            "No drift in environment dev.\nDrift: 0 modified, 0 missing, 0 orphaned, 1 in sync.\n"
        );
        assert!(
            markdown(&quiet, Verb::Plan)
                .contains("No changes. The cluster matches environment dev.")
        );
    }

    #[test]
    fn plan_text_has_headers_fields_and_diffs_in_order() {
        let t = text(&mixed(), false, Verb::Plan);
        let create = t.find("+ create Service/contoso-dev/fhir-main (workspace contoso)");
        let update = t.find("~ update Deployment/contoso-dev/fhir-main (workspace contoso)");
        let field = t.find("  spec.replicas: 5 -> 2 (changed by kubectl)\n");
        let hunk = t.find("@@ -1,3 +1,3 @@\n spec:\n-  replicas: 5\n+  replicas: 2\n");
        let delete = t.find("- delete Service/fabrikam-dev/dicom-old (workspace fabrikam)");
        assert!(
            create < update && update < field && field < hunk && hunk < delete,
            "{t}"
        );
        assert!(create.is_some());
        assert!(
            !t.contains("quiet"),
            "unchanged objects are not listed:\n{t}"
        );
    }

    #[test]
    fn colour_only_when_asked() {
        let p = mixed();
        assert!(!text(&p, false, Verb::Plan).contains('\x1b'));
        assert!(!text(&p, false, Verb::Drift).contains('\x1b'));
        assert!(!markdown(&p, Verb::Plan).contains('\x1b'));
        let c = text(&p, true, Verb::Plan);
        assert!(
            c.contains(
                "\x1b[1m~ update Deployment/contoso-dev/fhir-main (workspace contoso)\x1b[0m\n"
            ),
            "{c}"
        );
        assert!(c.contains("\x1b[31m-  replicas: 5\x1b[0m\n"), "{c}");
        assert!(c.contains("\x1b[32m+  replicas: 2\x1b[0m\n"), "{c}");
        assert!(c.contains("\x1b[36m@@ -1,3 +1,3 @@\x1b[0m\n"), "{c}");
        assert!(
            c.contains("\x1b[1m--- live/Deployment/contoso-dev/fhir-main\x1b[0m\n"),
            "{c}"
        );
        // Context lines and the summary stay plain.
        assert!(c.contains("\n spec:\n"), "{c}");
        assert!(c.ends_with("\nPlan: 1 to create, 1 to update, 2 to delete, 3 unchanged.\n"));
    }

    #[test]
    fn drift_uses_its_words_and_groups_by_workspace() {
        let t = text(&mixed(), false, Verb::Drift);
        assert_eq!(t.matches("Workspace contoso:").count(), 1, "{t}");
        let contoso = t.find("Workspace contoso: 1 modified, 1 missing, 0 orphaned, 1 in sync\n");
        let missing = t.find("+ missing (deleted by hand) Service/contoso-dev/fhir-main\n");
        let modified = t.find("~ modified Deployment/contoso-dev/fhir-main\n");
        let fabrikam = t.find("Workspace fabrikam: 0 modified, 0 missing, 2 orphaned, 1 in sync\n");
        let orphaned =
            t.find("- not declared any more (orphaned) Service/fabrikam-dev/dicom-old\n");
        assert!(
            contoso.is_some() && contoso < missing && missing < modified,
            "{t}"
        );
        assert!(modified < fabrikam && fabrikam < orphaned, "{t}");
        assert!(t.contains("  spec.replicas: 5 -> 2 (changed by kubectl)\n"));
        // A workspace without drift is not listed.
        assert!(!t.contains("northwind"), "{t}");
        let md = markdown(&mixed(), Verb::Drift);
        assert!(md.starts_with("### tenantsync drift: dev\n"), "{md}");
        assert!(
            md.contains("| + missing (deleted by hand) | Service | contoso-dev | fhir-main |  |\n"),
            "{md}"
        );
        assert!(md.contains(
            "<summary>- not declared any more (orphaned) Service fabrikam-dev/dicom-old</summary>"
        ));
        assert!(md.contains("Workspaces in sync: `northwind` (1)."), "{md}");
    }

    #[test]
    fn field_transitions_name_added_and_removed_values() {
        let mut c = change(Action::Update, "Service", "a", "contoso", DIFF);
        c.fields = vec![
            FieldChange {
                path: "metadata.labels.team".to_string(),
                action: FieldAction::Add,
                live: None,
                desired: Some(json!("imaging")),
                manager: None,
                since: None,
            },
            FieldChange {
                path: "spec.sessionAffinity".to_string(),
                action: FieldAction::Remove,
                live: Some(json!("ClientIP")),
                desired: None,
                manager: None,
                since: None,
            },
        ];
        let t = text(&plan_of(vec![c]), false, Verb::Plan);
        assert!(
            t.contains("  metadata.labels.team: (unset) -> \"imaging\"\n"),
            "{t}"
        );
        assert!(
            t.contains("  spec.sessionAffinity: \"ClientIP\" -> (removed)\n"),
            "{t}"
        );
        let long = value(&json!(format!(
            "registry.example/{}:4.3.2",
            "x".repeat(200)
        )));
        assert_eq!(long.chars().count(), 99, "{long}");
        assert!(
            long.starts_with("\"registry.example/x") && long.ends_with("x:4.3.2\""),
            "{long}"
        );
    }

    #[test]
    fn markdown_lists_changed_objects_and_only_counts_unchanged() {
        let mut p = mixed();
        p.revision = Some("3f9c2a1e8b7d4c6f5a0e9d8c7b6a5f4e3d2c1b0a".to_string());
        let md = markdown(&p, Verb::Plan);
        assert!(
            md.starts_with("### tenantsync plan: dev @ `3f9c2a1`\n\n"),
            "{md}"
        );
        assert!(md.contains("**Plan: 1 to create, 1 to update, 2 to delete, 3 unchanged.**"));
        assert!(md.contains(
            "| Action | Kind | Namespace | Name | Fields |\n| --- | --- | --- | --- | --- |\n"
        ));
        assert!(md.contains(
            "| ~ update | Deployment | contoso-dev | fhir-main | `spec.replicas`: `5` → `2` (changed by kubectl) |\n"
        ), "{md}");
        assert!(md.contains("<details><summary>~ update Deployment contoso-dev/fhir-main</summary>\n\n```diff\n--- live/"));
        assert!(!md.contains("quiet"), "{md}");
        assert!(!md.contains("truncated"), "{md}");
        assert_eq!(md.matches("<details>").count(), 4);
    }

    #[test]
    fn pipes_in_table_cells_are_escaped() {
        let mut c = update("fhir-main", "contoso");
        c.fields[0].path = "metadata.annotations.a|b".to_string();
        c.fields[0].desired = Some(json!("x | y"));
        let md = markdown(&plan_of(vec![c]), Verb::Plan);
        let row = md
            .lines()
            .find(|l| l.starts_with("| ~ update"))
            .unwrap_or_default();
        assert!(
            row.contains(r#"`metadata.annotations.a\|b`: `5` → `"x \| y"`"#),
            "{row}"
        );
        let unescaped = row
            .match_indices('|')
            .filter(|(i, _)| !row[..*i].ends_with('\\'))
            .count();
        assert_eq!(unescaped, 6, "{row}");
    }

    #[test]
    fn backticks_in_diffs_and_values_keep_their_fences() {
        assert_eq!(code("a`b"), "`` a`b ``");
        let mut c = change(
            Action::Create,
            "ConfigMap",
            "docs",
            "contoso",
            "+x: |\n+  ```sh\n+  run\n+  ```\n",
        );
        c.diff.push_str("+  ````\n");
        let md = markdown(&plan_of(vec![c]), Verb::Plan);
        assert!(md.contains("\n`````diff\n"), "{md}");
        assert!(md.contains("\n`````\n\n</details>"), "{md}");
    }

    #[test]
    fn markdown_truncates_diffs_but_keeps_tables_and_summary_complete() {
        let big: String = (0..200)
            .map(|i| format!("+  line-{i}: some rendered value\n"))
            .collect();
        let changes: Vec<Change> = (0..40)
            .map(|i| {
                let ws = if i < 20 { "contoso" } else { "fabrikam" };
                change(
                    Action::Create,
                    "ConfigMap",
                    &format!("object-{i:02}"),
                    ws,
                    &big,
                )
            })
            .chain([change(Action::Unchanged, "Service", "quiet", "contoso", "")])
            .collect();
        let md = markdown(&plan_of(changes), Verb::Plan);
        assert!(md.len() < MARKDOWN_LIMIT, "{}", md.len());
        assert!(md.contains("**Plan: 40 to create, 0 to update, 0 to delete, 1 unchanged.**"));
        for i in 0..40 {
            let row = format!(
                "| + create | ConfigMap | {}-dev | object-{i:02} |  |\n",
                if i < 20 { "contoso" } else { "fabrikam" }
            );
            assert!(md.contains(&row), "missing row {row}");
        }
        let shown = md.matches("<details>").count();
        assert!(shown > 0 && shown < 40, "{shown}");
        // Diffs are kept in plan order: the first ones, never a later one.
        assert!(md.contains("<summary>+ create ConfigMap contoso-dev/object-00</summary>"));
        assert!(!md.contains("<summary>+ create ConfigMap fabrikam-dev/object-39</summary>"));
        let note = format!(
            "> Output truncated: {} of 40 object diffs omitted to stay under GitHub's 65,536-character \
             comment limit. Run `tenantsync plan --env dev` locally for the full diff.\n",
            40 - shown
        );
        assert!(md.ends_with(&note), "{}", &md[md.len() - 400..]);
    }

    #[test]
    fn markdown_stays_under_the_limit_even_when_tables_do_not_fit() {
        let changes: Vec<Change> = (0..3000)
            .map(|i| {
                change(
                    Action::Create,
                    "ConfigMap",
                    &format!("object-{i:04}"),
                    &format!("ws{:03}", i / 10),
                    "+a\n",
                )
            })
            .collect();
        let md = markdown(&plan_of(changes), Verb::Plan);
        assert!(md.len() < MARKDOWN_LIMIT, "{}", md.len());
        assert!(md.contains("**Plan: 3000 to create, 0 to update, 0 to delete, 0 unchanged.**"));
        // Every workspace is still named with its counts; the tables of the
        // first ones are complete, the rest are cut in one place.
        for w in 0..300 {
            let heading = format!(
                "#### Workspace `ws{w:03}`: 10 to create, 0 to update, 0 to delete, 0 unchanged\n"
            );
            assert!(md.contains(&heading), "{heading}");
        }
        assert!(md.contains("| + create | ConfigMap | ws000-dev | object-0000 |  |\n"));
        assert!(!md.contains("object-2999"));
        let tables = md.matches("| Action | Kind |").count();
        assert!(tables > 0 && tables < 300, "{tables}");
        let shown = md.matches("<details>").count();
        let notes = format!(
            "> Tables truncated: the last {} workspaces with changes show their counts only, \
             not their objects.\n\n> Output truncated: {} of 3000 object diffs omitted",
            300 - tables,
            3000 - shown
        );
        assert!(md.contains(&notes), "{}", &md[md.len() - 600..]);
    }

    #[test]
    fn json_is_the_serialized_plan() {
        let p = mixed();
        let s = json(&p);
        assert!(s.ends_with("}\n"));
        let v: serde_json::Value = serde_json::from_str(&s).expect("valid JSON");
        assert_eq!(v["environment"], "dev");
        assert_eq!(v["summary"]["delete"], 2);
        assert_eq!(v["changes"][1]["fields"][0]["manager"], "kubectl");
        assert_eq!(v["apiRequests"], 7);
    }

    #[test]
    fn json_written_as_serialized_is_the_same_text() {
        let p = mixed();
        let mut written = Vec::new();
        json_to(&p, &mut written).unwrap();
        assert_eq!(String::from_utf8(written).unwrap(), json(&p));
    }

    #[test]
    fn kinds_are_pluralised_as_english_words() {
        assert_eq!(kind_plural("Ingress", 7), "Ingresses");
        assert_eq!(kind_plural("Ingress", 1), "Ingress");
        assert_eq!(kind_plural("NetworkPolicy", 2), "NetworkPolicies");
        assert_eq!(kind_plural("Deployment", 3), "Deployments");
        assert_eq!(kind_plural("Gateway", 2), "Gateways");
        assert_eq!(kind_plural("Namespace", 0), "Namespaces");
    }

    fn reaching(n: usize) -> Selection {
        Selection {
            impact: Impact::Workspaces(
                (0..n)
                    .map(|i| {
                        (
                            format!("ws{i:04}"),
                            (0..5)
                                .map(|j| {
                                    format!(
                                        "environments/prod/workspaces/ws{i:04}.{j}.{}.yaml",
                                        "x".repeat(300)
                                    )
                                })
                                .collect(),
                        )
                    })
                    .collect(),
            ),
            named: None,
        }
    }

    /// Review of issue 19, defect 4: the note was unbounded (a pull request
    /// touching a hundred workspaces pushed the comment past GitHub's limit)
    /// and printed file names raw (a newline and `<!--` in a file name hid
    /// the rest of the comment).
    #[test]
    fn the_changed_since_note_is_bounded_and_never_writes_markdown_from_a_file_name() {
        let plan = plan_of(Vec::new());
        let md = with_changed(
            markdown(&plan, Verb::Plan),
            "main",
            &reaching(500),
            Output::Markdown,
        );
        assert!(md.len() < 12_000, "{}", md.len());
        assert!(md.contains("and 480 more workspaces"), "{md}");
        assert!(md.contains("and 2 more"), "{md}");
        let hostile = Selection {
            impact: Impact::Workspaces(BTreeMap::from([(
                "contoso".to_string(),
                vec!["environments/prod/workspaces/contoso.\n<!--\n.yaml".to_string()],
            )])),
            named: None,
        };
        let md = with_changed(
            markdown(&plan, Verb::Plan),
            "main",
            &hostile,
            Output::Markdown,
        );
        assert!(!md.lines().any(|l| l.starts_with("<!--")), "{md}");
        assert!(
            md.contains("`environments/prod/workspaces/contoso.\\n<!--\\n.yaml`"),
            "{md}"
        );
        let text = with_changed(
            text(&plan, false, Verb::Plan),
            "main",
            &hostile,
            Output::Text,
        );
        assert!(text.lines().all(|l| !l.starts_with("<!--")), "{text}");
        // JSON keeps every name as it is.
        let json = with_changed(json(&plan), "main", &hostile, Output::Json);
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(
            value["changedSince"]["workspaces"]["contoso"][0],
            "environments/prod/workspaces/contoso.\n<!--\n.yaml"
        );
    }
}
