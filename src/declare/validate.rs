//! Loading, merging and checking a repository of declarations.
//!
//! `load` parses every declaration once; `Repository::resolve` builds one
//! environment from its base chain (settings, then each layer's workspaces,
//! then its patches) and checks the result against the schemas and the
//! platform's rules. Every problem is reported with its file and position.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use crate::declare::diag::Diagnostic;
use crate::declare::model::{self, Environment, Settings, Workspace};
use crate::declare::names::{self, Identity, Origin, identities};
use crate::declare::overlay;
use crate::declare::repo::{FileTable, SourceTree};
use crate::declare::schema::{self, SchemaKind};
use crate::declare::yaml::{self, FileId, Key, Limits, Node, Pos, Value};
use crate::object::MANAGED_KINDS;

/// The folder of a repository that holds the layers.
pub const ENVIRONMENTS_DIR: &str = "environments";
pub const ENVIRONMENT_FILE: &str = "environment.yaml";
pub const WORKSPACES_DIR: &str = "workspaces";
/// Plain Kubernetes manifests applied as they are (CRDs, policies, ...).
pub const RESOURCES_DIR: &str = "resources";

/// A parsed document (its nodes carry their file).
#[derive(Clone, Debug)]
struct Doc {
    node: Node,
}

#[derive(Clone, Debug, Default)]
struct Layer {
    env: Option<Doc>,
    workspaces: Vec<Doc>,
    patches: Vec<Doc>,
    resources: Vec<Doc>,
    /// Workspaces (by file name) whose file in this layer could not be
    /// used: a patch may miss its target for that reason alone, so such
    /// follow-on errors are not reported.
    unreadable: BTreeSet<String>,
    /// Workspaces (by file name) whose files in this layer a focused load
    /// ([`load_focused`]) did not read: neither defined nor reported.
    skipped: BTreeSet<String>,
    /// Top-level keys of this layer's `spec` that break the schema (`*`:
    /// its environment.yaml cannot be read): the rules that depend on them
    /// are not checked, so only the real error is reported.
    invalid_settings: BTreeSet<String>,
    /// Diagnostics of this layer's files on their own that concern the
    /// whole environment (its `environment.yaml`, a manifest, a file
    /// outside the layout).
    problems: Vec<Diagnostic>,
    /// Diagnostics of a workspace file on its own, by the workspace its
    /// file is named after: they hold that workspace only.
    workspace_problems: Vec<(String, Diagnostic)>,
}

/// A parsed repository: every layer's files, each parsed and checked once.
#[derive(Clone, Debug, Default)]
pub struct Repository {
    files: FileTable,
    layers: BTreeMap<String, Layer>,
    problems: Vec<Diagnostic>,
}

/// Parses every declaration of the tree, on this thread: what a process
/// that goes on to hold many objects wants (`plan`, `sync`, the daemon),
/// since memory a worker thread allocated and freed stays with that
/// thread's allocator arena instead of serving the objects that follow.
pub fn load(tree: &SourceTree) -> Repository {
    load_with(tree, false, None)
}

/// [`load`] on all cores, for commands that only check or print
/// (`validate`, `render`): files are parsed and checked against their schema
/// in parallel, each on its own; what they add to their layers is then taken
/// in path order, so the result and the order of problems are the same.
pub fn load_on_all_cores(tree: &SourceTree) -> Repository {
    load_with(tree, true, None)
}

/// [`load`] of every declaration but the workspace files of workspaces not
/// in `focus`: those are not parsed, and the environments resolved from the
/// result neither define nor check them (see [`Repository::focus`] for
/// which workspaces a selection must be read with).
pub fn load_focused(tree: &SourceTree, focus: &BTreeSet<String>) -> Repository {
    load_unfocused(tree).read_workspaces(Some(focus))
}

/// The first half of a focused load: every declaration of the tree read
/// but its workspace files, which wait for [`Unfocused::read_workspaces`]
/// (so nothing is parsed twice). Enough to tell an environment's chain and
/// which workspaces a selection must be read with ([`Unfocused::focus`]).
pub struct Unfocused<'t> {
    repo: Repository,
    /// The workspace files not read yet.
    workspace_jobs: Vec<Job<'t>>,
}

/// Reads every declaration of `tree` but its workspace files, each of
/// which is known by its workspace's name only (see [`Unfocused`]).
pub fn load_unfocused(tree: &SourceTree) -> Unfocused<'_> {
    let mut repo = Repository {
        problems: tree.problems().to_vec(),
        ..Repository::default()
    };
    let (workspace_jobs, jobs): (Vec<Job<'_>>, Vec<Job<'_>>) = jobs_of(tree, &mut repo)
        .into_iter()
        .partition(|job| matches!(job.role, Some(Role::Workspace)));
    for job in &workspace_jobs {
        let layer = repo.layers.entry(job.layer_name.to_string()).or_default();
        layer
            .skipped
            .insert(workspace_of_file(job.path).to_string());
    }
    read_jobs(&mut repo, &jobs, false);
    Unfocused {
        repo,
        workspace_jobs,
    }
}

impl Unfocused<'_> {
    /// [`Repository::chain_of`].
    pub fn chain_of(&self, name: &str) -> Option<Vec<String>> {
        self.repo.chain_of(name)
    }

    /// [`Repository::focus`].
    pub fn focus(&self, name: &str, selected: &BTreeSet<String>) -> Option<BTreeSet<String>> {
        self.repo.focus(name, selected)
    }

    /// The workspace files [`Unfocused::read_workspaces`] with `focus`
    /// parses whose content the tree does not hold
    /// ([`SourceTree::defer`]): the ones to read before it.
    pub fn deferred_in(&self, focus: Option<&BTreeSet<String>>) -> Vec<String> {
        self.workspace_jobs
            .iter()
            .filter(|job| job.deferred && in_focus(job, focus))
            .map(|job| job.path.to_string())
            .collect()
    }

    /// The load completed: the files of the workspaces in `focus` read
    /// (every workspace's when `None`: a whole [`load`]), the others left
    /// unread.
    pub fn read_workspaces(self, focus: Option<&BTreeSet<String>>) -> Repository {
        let Unfocused {
            mut repo,
            workspace_jobs,
        } = self;
        let jobs: Vec<Job<'_>> = workspace_jobs
            .into_iter()
            .filter(|job| in_focus(job, focus))
            .collect();
        for job in &jobs {
            if let Some(layer) = repo.layers.get_mut(job.layer_name) {
                layer.skipped.remove(workspace_of_file(job.path));
            }
        }
        read_jobs(&mut repo, &jobs, false);
        finish(&mut repo);
        repo
    }
}

/// Whether a workspace file is parsed by a load focused on `focus` (every
/// one when `None`).
fn in_focus(job: &Job<'_>, focus: Option<&BTreeSet<String>>) -> bool {
    focus.is_none_or(|f| f.contains(workspace_of_file(job.path)))
}

fn load_with(tree: &SourceTree, parallel: bool, focus: Option<&BTreeSet<String>>) -> Repository {
    if focus.is_some() {
        return load_unfocused(tree).read_workspaces(focus);
    }
    let mut repo = Repository {
        problems: tree.problems().to_vec(),
        ..Repository::default()
    };
    let jobs = jobs_of(tree, &mut repo);
    read_jobs(&mut repo, &jobs, parallel);
    finish(&mut repo);
    repo
}

/// Parses and checks `jobs` (on all cores when `parallel`), and adds what
/// they declare to their layers in order.
fn read_jobs(repo: &mut Repository, jobs: &[Job<'_>], parallel: bool) {
    // A thread costs more than a few files do.
    let checked = if !parallel || jobs.len() < 64 {
        jobs.iter()
            .map(|job| check_file(job, &repo.files))
            .collect()
    } else {
        crate::par::map(jobs, |job| check_file(job, &repo.files))
    };
    for (job, (parsed, checks)) in jobs.iter().zip(checked) {
        let layer_name = job.layer_name.to_string();
        let layer = repo.layers.entry(layer_name.clone()).or_default();
        let Some(role) = job.role else {
            layer.problems.push(at_file(
                job.path,
                "unexpected file: a layer holds environment.yaml, workspaces/*.yaml and resources/*.yaml",
            ));
            continue;
        };
        if let Role::Workspace = role {
            add_workspace_file(layer, &repo.files, job, parsed, checks);
            continue;
        }
        let node = match parsed {
            Some(Ok(node)) => node,
            Some(Err(e)) => {
                layer.problems.push(repo.files.diag(e.pos, None, e.message));
                if let Role::Environment = role {
                    layer.invalid_settings.insert("*".into());
                }
                continue;
            }
            None => continue,
        };
        if let Role::Environment = role {
            layer
                .invalid_settings
                .extend(checks.iter().filter_map(setting_of));
            let mut ownership = check_ownership(&node, &repo.files);
            ownership.extend(check_windows(&node, &repo.files));
            ownership.extend(check_rollout(&node, &repo.files));
            layer
                .invalid_settings
                .extend(ownership.iter().filter_map(setting_of));
            layer.problems.extend(ownership);
        }
        layer.problems.extend(checks);
        let doc = Doc { node };
        match role {
            Role::Environment => {
                if let Some(name) = doc.node.get("metadata").and_then(|m| m.get("name"))
                    && name.as_str().is_some_and(|n| n != layer_name)
                {
                    layer.problems.push(repo.files.diag(
                        name.pos,
                        Some("/metadata/name".into()),
                        format!("environment name must equal its folder name `{layer_name}`"),
                    ));
                }
                // Inline patches are WorkspacePatch documents too.
                if let Some(Value::Seq(items)) = doc
                    .node
                    .get("spec")
                    .and_then(|s| s.get("patches"))
                    .map(|p| &p.value)
                {
                    for item in items {
                        layer.patches.push(Doc { node: item.clone() });
                    }
                }
                layer.env = Some(doc);
            }
            Role::Resource => layer.resources.push(doc),
            Role::Workspace => {}
        }
    }
}

/// What is checked once every file is read: an ignore rule's kinds, a
/// layer without its environment.yaml, a repository without layers.
fn finish(repo: &mut Repository) {
    // An ignore rule's kinds are checked against every kind the repository
    // can make tenantsync manage (any layer's manifests may be inherited).
    let kinds = managed_kinds(repo);
    for layer in repo.layers.values_mut() {
        if let Some(doc) = &layer.env {
            let unknown = check_ignored_kinds(&doc.node, &kinds, &repo.files);
            layer
                .invalid_settings
                .extend(unknown.iter().filter_map(setting_of));
            layer.problems.extend(unknown);
        }
    }
    // Whatever its workspace files say (a focused load reads only some of
    // them), so that every load reports it alike.
    for (name, layer) in &mut repo.layers {
        if layer.env.is_none() && layer.problems.is_empty() {
            layer.problems.push(at_file(
                &format!("{ENVIRONMENTS_DIR}/{name}/{ENVIRONMENT_FILE}"),
                format!("layer `{name}` has no {ENVIRONMENT_FILE}"),
            ));
        }
    }
    if repo.layers.is_empty() {
        repo.problems.push(at_file(
            ENVIRONMENTS_DIR,
            "no environments found: expected environments/<name>/environment.yaml; \
             run tenantsync in the repository's root folder or name it with --repo DIR",
        ));
    }
}

/// The files of `environments/<layer>/` to read, each with its role; a
/// YAML file outside a layer is a problem of the repository.
fn jobs_of<'t>(tree: &'t SourceTree, repo: &mut Repository) -> Vec<Job<'t>> {
    let prefix = format!("{ENVIRONMENTS_DIR}/");
    let mut jobs: Vec<Job<'_>> = Vec::with_capacity(tree.len());
    repo.files.reserve(tree.len());
    for path in tree.paths() {
        let Some(rest) = path.strip_prefix(&prefix) else {
            continue;
        };
        let is_yaml = path.ends_with(".yaml") || path.ends_with(".yml");
        let Some((layer_name, inner)) = rest.split_once('/') else {
            if is_yaml {
                repo.problems.push(at_file(
                    path,
                    "declarations live in environments/<layer>/; this file is not read",
                ));
            }
            continue;
        };
        if !is_yaml {
            continue;
        }
        jobs.push(Job {
            layer_name,
            path,
            role: role_in_layer(inner),
            id: repo.files.add(path),
            bytes: tree.get(path).unwrap_or_default(),
            deferred: tree.is_deferred(path),
        });
    }
    jobs
}

/// What a YAML file at `inner` (its path inside its layer's folder) is.
fn role_in_layer(inner: &str) -> Option<Role> {
    if inner == ENVIRONMENT_FILE {
        Some(Role::Environment)
    } else if inner.starts_with(&format!("{WORKSPACES_DIR}/")) {
        Some(Role::Workspace)
    } else if inner.starts_with(&format!("{RESOURCES_DIR}/")) {
        Some(Role::Resource)
    } else {
        None
    }
}

/// Whether `path` is a workspace file (`environments/<layer>/workspaces/…`
/// .yaml or .yml): one a focused load ([`load_focused`]) may leave unparsed,
/// so one whose content a source may leave unread
/// ([`SourceTree::defer`]) until [`Unfocused::deferred_in`] asks for it.
pub fn is_workspace_file(path: &str) -> bool {
    let Some(rest) = path.strip_prefix(&format!("{ENVIRONMENTS_DIR}/")) else {
        return false;
    };
    let is_yaml = path.ends_with(".yaml") || path.ends_with(".yml");
    is_yaml
        && rest
            .split_once('/')
            .is_some_and(|(_, inner)| matches!(role_in_layer(inner), Some(Role::Workspace)))
}

/// A workspace file is about the workspace it is named after: its
/// own problems hold that workspace only, whatever it says inside
/// (a name that cannot be read, another workspace's name).
fn add_workspace_file(
    layer: &mut Layer,
    files: &FileTable,
    job: &Job<'_>,
    parsed: Option<Result<Node, yaml::YamlError>>,
    checks: Vec<Diagnostic>,
) {
    let file_ws = workspace_of_file(job.path).to_string();
    match parsed {
        Some(Ok(node)) => {
            let (usable, mut problems) = check_workspace_file(&node, &file_ws, files);
            problems.extend(checks);
            for d in problems {
                layer.workspace_problems.push((file_ws.clone(), d));
            }
            if !usable {
                layer.unreadable.insert(file_ws);
            } else if node.get("kind").and_then(Node::as_str) == Some("Workspace") {
                layer.workspaces.push(Doc { node });
            } else {
                layer.patches.push(Doc { node });
            }
        }
        Some(Err(e)) => {
            let d = files.diag(e.pos, None, e.message);
            layer.workspace_problems.push((file_ws.clone(), d));
            layer.unreadable.insert(file_ws);
        }
        None => {}
    }
}

/// The workspace a file in `workspaces/` is about: its name up to the
/// first `.` (`contoso.yaml`, `contoso.scale.yaml`); a workspace's name
/// has no dot.
pub(crate) fn workspace_of_file(path: &str) -> &str {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.split('.').next().unwrap_or(file)
}

/// Whether a parsed file of `workspaces/` can be used, and its problems
/// beyond its schema's: a kind other than Workspace or WorkspacePatch, or
/// a `metadata.name` that is not the workspace the file is named after (a
/// file edited to another tenant's name must not change, hold or remove
/// that tenant: it holds its own).
fn check_workspace_file(node: &Node, file_ws: &str, files: &FileTable) -> (bool, Vec<Diagnostic>) {
    let kind = node.get("kind");
    if !matches!(
        kind.and_then(Node::as_str),
        Some("Workspace" | "WorkspacePatch")
    ) {
        let found = kind
            .and_then(Node::as_str)
            .map_or_else(|| "none".to_string(), |k| format!("`{k}`"));
        let d = files.diag(
            kind.map_or(node.pos, |k| k.pos),
            Some("/kind".into()),
            format!(
                "files in workspaces/ have kind `Workspace` or `WorkspacePatch`, found {found}"
            ),
        );
        return (false, vec![d]);
    }
    match doc_name(node) {
        Some((name, _)) if name == file_ws => (true, Vec::new()),
        // Not a name at all: the schema says so.
        Some((name, _)) if names::check_label(&name).is_err() => (false, Vec::new()),
        Some((name, at)) => {
            let d = files.diag(
                at.pos,
                Some("/metadata/name".into()),
                format!(
                    "this file is named after workspace `{file_ws}` but declares `{name}`: a file in workspaces/ declares or patches the workspace it is named after (`{file_ws}.yaml`, `{file_ws}.<anything>.yaml`); fix metadata.name or rename the file"
                ),
            );
            (false, vec![d])
        }
        None => (false, Vec::new()),
    }
}

/// The top-level setting of `spec` an environment.yaml's diagnostic is
/// about (`*`: all of them), `None` when it is about no setting.
fn setting_of(d: &Diagnostic) -> Option<String> {
    let pointer = d.pointer.as_deref().unwrap_or_default();
    if pointer.is_empty() || pointer == "/spec" {
        return Some("*".into());
    }
    let key = pointer.strip_prefix("/spec/")?.split('/').next()?;
    Some(key.replace("~1", "/").replace("~0", "~"))
}

/// The items of the list at `key` of a node, if it is a list.
fn items<'a>(node: Option<&'a Node>, key: &str) -> &'a [Node] {
    match node.and_then(|n| n.get(key)).map(|n| &n.value) {
        Some(Value::Seq(items)) => items,
        _ => &[],
    }
}

/// `spec.ownership` beyond its schema: field manager patterns that only
/// use `*`, and JSON pointers whose `~` escapes are valid.
fn check_ownership(env: &Node, files: &FileTable) -> Vec<Diagnostic> {
    let ownership = env.get("spec").and_then(|s| s.get("ownership"));
    let mut out = Vec::new();
    let mut patterns: Vec<(String, &Node)> = items(ownership, "revert")
        .iter()
        .enumerate()
        .map(|(i, n)| (format!("/spec/ownership/revert/{i}"), n))
        .collect();
    for (j, rule) in items(ownership, "ignore").iter().enumerate() {
        for (k, n) in items(Some(rule), "managers").iter().enumerate() {
            patterns.push((format!("/spec/ownership/ignore/{j}/managers/{k}"), n));
        }
        for (k, n) in items(Some(rule), "paths").iter().enumerate() {
            if let Some(why) = n.as_str().and_then(model::pointer_problem) {
                let pointer = format!("/spec/ownership/ignore/{j}/paths/{k}");
                out.push(files.diag(n.pos, Some(pointer), why));
            }
        }
    }
    for (pointer, n) in patterns {
        if let Some(why) = n.as_str().and_then(model::pattern_problem) {
            out.push(files.diag(n.pos, Some(pointer), why));
        }
    }
    out
}

/// `spec.syncPolicy.windows` beyond their schema: a cron schedule, a
/// positive duration and a known time zone, each refused where written.
fn check_windows(env: &Node, files: &FileTable) -> Vec<Diagnostic> {
    let policy = env.get("spec").and_then(|s| s.get("syncPolicy"));
    let mut out = Vec::new();
    if let Some(n) = policy.and_then(|p| p.get("healthDeadline"))
        && let Some(Err(why)) = n.as_str().map(model::parse_health_deadline)
    {
        let pointer = "/spec/syncPolicy/healthDeadline".to_string();
        out.push(files.diag(n.pos, Some(pointer), why));
    }
    for (i, n) in items(policy, "windows").iter().enumerate() {
        let text = |key: &str| n.get(key).and_then(Node::as_str).map(str::to_string);
        let (Some(schedule), Some(duration)) = (text("schedule"), text("duration")) else {
            continue;
        };
        let window = model::SyncWindow {
            kind: model::WindowKind::Allow,
            schedule,
            duration,
            time_zone: text("timeZone"),
        };
        if let Err((field, why)) = window.checked() {
            let at = n.get(field).map_or(n.pos, |f| f.pos);
            let pointer = format!("/spec/syncPolicy/windows/{i}/{field}");
            out.push(files.diag(at, Some(pointer), why));
        }
    }
    out
}

/// `spec.syncPolicy.rollout` beyond its schema: steps that increase and
/// end at 100%, durations in bounds, each refused where written.
fn check_rollout(env: &Node, files: &FileTable) -> Vec<Diagnostic> {
    let Some(rollout) = env
        .get("spec")
        .and_then(|s| s.get("syncPolicy"))
        .and_then(|p| p.get("rollout"))
    else {
        return Vec::new();
    };
    let text = |key: &str| rollout.get(key).and_then(Node::as_str).map(str::to_string);
    let steps = items(Some(rollout), "steps");
    let written = model::Rollout {
        steps: steps
            .iter()
            .map(|n| n.as_str().unwrap_or_default().to_string())
            .collect(),
        pause_between: text("pauseBetween"),
        health_deadline: text("healthDeadline"),
        ..model::Rollout::default()
    };
    // A rollout the schema refused (no steps, a step not a share) says so
    // already.
    let share = |n: &Node| {
        n.as_str()
            .and_then(|s| s.strip_suffix('%'))
            .and_then(|p| p.parse::<u8>().ok())
            .is_some_and(|p| (1..=100).contains(&p))
    };
    if rollout.get("steps").is_none() || !steps.iter().all(share) {
        return Vec::new();
    }
    match written.checked() {
        Ok(_) => Vec::new(),
        Err((field, why)) => {
            let at = match field.strip_prefix("steps/") {
                Some(i) => i
                    .parse::<usize>()
                    .ok()
                    .and_then(|i| steps.get(i))
                    .map_or(rollout.pos, |n| n.pos),
                None => rollout.get(&field).map_or(rollout.pos, |f| f.pos),
            };
            vec![files.diag(at, Some(format!("/spec/syncPolicy/rollout/{field}")), why)]
        }
    }
}

/// Every kind tenantsync can manage in this repository: those it renders,
/// those of any layer's `resources/` manifests, and the kinds their
/// CustomResourceDefinitions define.
fn managed_kinds(repo: &Repository) -> BTreeSet<String> {
    let mut kinds: BTreeSet<String> = MANAGED_KINDS.iter().map(|k| k.kind.to_string()).collect();
    for doc in repo.layers.values().flat_map(|l| &l.resources) {
        if let Some(kind) = doc.node.get("kind").and_then(Node::as_str) {
            kinds.insert(kind.to_string());
        }
        if let Some(kind) = doc
            .node
            .get("spec")
            .and_then(|s| s.get("names"))
            .and_then(|n| n.get("kind"))
            .and_then(Node::as_str)
        {
            kinds.insert(kind.to_string());
        }
    }
    kinds
}

/// An ignore rule's `kinds` must name kinds tenantsync manages: any other
/// (a typo, a plural) would silently match nothing.
fn check_ignored_kinds(env: &Node, kinds: &BTreeSet<String>, files: &FileTable) -> Vec<Diagnostic> {
    let ownership = env.get("spec").and_then(|s| s.get("ownership"));
    let known: Vec<String> = kinds.iter().cloned().collect();
    let mut out = Vec::new();
    for (j, rule) in items(ownership, "ignore").iter().enumerate() {
        for (k, n) in items(Some(rule), "kinds").iter().enumerate() {
            let Some(kind) = n.as_str() else { continue };
            if kinds.contains(kind) {
                continue;
            }
            let hint = crate::declare::schema::did_you_mean(kind, &known)
                .map(|k| format!("; did you mean `{k}`?"))
                .unwrap_or_default();
            out.push(files.diag(
                n.pos,
                Some(format!("/spec/ownership/ignore/{j}/kinds/{k}")),
                format!(
                    "kind `{kind}` is not one tenantsync manages here (it renders {}, and manages the kinds of the resources/ manifests), so the rule would match nothing{hint}",
                    MANAGED_KINDS
                        .iter()
                        .map(|k| k.kind)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
    }
    out
}

#[derive(Clone, Copy)]
enum Role {
    Environment,
    Workspace,
    Resource,
}

/// One file of a layer, to parse and check.
struct Job<'a> {
    layer_name: &'a str,
    path: &'a str,
    /// `None`: a file a layer does not hold.
    role: Option<Role>,
    id: FileId,
    bytes: &'a [u8],
    /// Its content was not read ([`SourceTree::defer`]): it must not be
    /// parsed.
    deferred: bool,
}

/// A file parsed (`None` when it is not read) and its own problems: its
/// schema's, or a manifest's.
type Checked = (Option<Result<Node, yaml::YamlError>>, Vec<Diagnostic>);

fn check_file(job: &Job<'_>, files: &FileTable) -> Checked {
    let Some(role) = job.role else {
        return (None, Vec::new());
    };
    if job.deferred {
        // Never reached: whoever defers a file reads the ones a check
        // needs first (`pipeline::files_to_read`). Refused, not parsed as
        // the empty text it is held as.
        let pos = yaml::Pos {
            file: job.id,
            line: 1,
            col: 1,
        };
        let message = "this file's content was not read (tenantsync skipped it as unchanged and then needed it): a bug; plan without --changed-since".to_string();
        return (Some(Err(yaml::YamlError { pos, message })), Vec::new());
    }
    let node = match yaml::decode_utf8(job.id, job.bytes)
        .and_then(|text| yaml::parse(job.id, text, Limits::default()))
    {
        Ok(node) => node,
        Err(e) => return (Some(Err(e)), Vec::new()),
    };
    let checks = match role {
        // `null` deletes an inherited setting: not a schema error.
        Role::Environment => schema::validate(
            SchemaKind::Environment,
            &overlay::without_deletions(&node),
            files,
        ),
        Role::Resource => check_manifest(&node, files),
        Role::Workspace => match node.get("kind").and_then(Node::as_str) {
            Some("Workspace") => schema::validate(SchemaKind::Workspace, &node, files),
            Some("WorkspacePatch") => schema::validate(SchemaKind::WorkspacePatch, &node, files),
            _ => Vec::new(),
        },
    };
    (Some(Ok(node)), checks)
}

fn at_file(path: &str, message: impl Into<String>) -> Diagnostic {
    Diagnostic {
        file: path.to_string(),
        line: 1,
        column: 1,
        pointer: None,
        message: message.into(),
    }
}

/// A problem found while resolving an environment.
#[derive(Debug)]
struct Found {
    diag: Diagnostic,
    /// The workspaces it holds; none: the whole environment.
    workspaces: Vec<String>,
    /// `None`: a file's own problem, printed as it is. Otherwise found in
    /// one environment (named in the line) after merging, with the layers
    /// that made the workspace when there were several.
    context: Option<String>,
}

impl Found {
    /// Found in one environment after merging; `layers`: the layers that
    /// made the workspace when there were several.
    fn in_env(diag: Diagnostic, workspaces: Vec<String>, layers: String) -> Found {
        Found {
            diag,
            workspaces,
            context: Some(layers),
        }
    }

    fn file(diag: Diagnostic) -> Found {
        Found {
            diag,
            workspaces: Vec::new(),
            context: None,
        }
    }
}

/// The JSON pointer of what declares a rendered object.
fn origin_pointer(origin: Origin) -> Option<String> {
    Some(match origin {
        Origin::Workspace => "/metadata/name".to_string(),
        Origin::Fhir(i) => format!("/spec/fhirServices/{i}/name"),
        Origin::Dicom(i) => format!("/spec/dicomServices/{i}/name"),
        Origin::DicomCast(i) => format!("/spec/dicomServices/{i}/dicomCast"),
        Origin::IotShared => "/spec/iotConnectors".to_string(),
        Origin::Iot(i) => format!("/spec/iotConnectors/{i}/name"),
        Origin::IotDestination(i, j) => {
            format!("/spec/iotConnectors/{i}/fhirDestinations/{j}/name")
        }
    })
}

/// `MESSAGE (in environment `qa`; layers: ...)`.
fn with_context(mut d: Diagnostic, envs: &[String], layers: &str) -> Diagnostic {
    let names: Vec<String> = envs.iter().map(|e| format!("`{e}`")).collect();
    let envs = if names.len() == 1 {
        format!("environment {}", names[0])
    } else {
        format!("environments {}", names.join(", "))
    };
    d.message = if layers.is_empty() {
        format!("{} (in {envs})", d.message)
    } else {
        format!("{} (in {envs}; layers: {layers})", d.message)
    };
    d
}

/// The merged settings that are valid: the top-level keys of `spec` not
/// named in the set (`*`: none is).
#[derive(Clone, Copy)]
struct Usable<'a>(&'a BTreeSet<String>);

impl Usable<'_> {
    fn has(self, key: &str) -> bool {
        !self.0.contains("*") && !self.0.contains(key)
    }
}

/// An environment resolved as far as it goes (see
/// [`Repository::resolve_partial`]).
#[derive(Debug)]
pub struct Partial {
    /// The environment with its valid workspaces only.
    pub environment: Environment,
    /// Problems that hold the whole environment.
    pub environment_errors: Vec<Diagnostic>,
    /// Problems that hold one workspace (listed under each it holds).
    pub workspace_errors: BTreeMap<String, Vec<Diagnostic>>,
}

impl Partial {
    /// Every problem, sorted, each once.
    pub fn errors(&self) -> Vec<Diagnostic> {
        let mut all = self.environment_errors.clone();
        all.extend(self.workspace_errors.values().flatten().cloned());
        all.sort();
        all.dedup();
        all
    }
}

/// The outcome of validating several environments.
#[derive(Debug, Default)]
pub struct Report {
    pub environments: Vec<Environment>,
    pub diagnostics: Vec<Diagnostic>,
}

impl Repository {
    /// Layers that can be rendered (not `abstract`).
    pub fn environment_names(&self) -> Vec<String> {
        self.layers
            .keys()
            .filter(|n| self.abstract_flag(n).is_none())
            .cloned()
            .collect()
    }

    /// The `abstract: true` of a layer's environment.yaml, if it has one.
    fn abstract_flag(&self, name: &str) -> Option<&Node> {
        self.layers
            .get(name)?
            .env
            .as_ref()?
            .node
            .get("spec")?
            .get("abstract")
            .filter(|a| a.as_bool() == Some(true))
    }

    /// What to tell a user who named a layer that cannot be rendered: the
    /// environments that can, and (`with_abstract`) the abstract layers apart.
    fn known_environments(&self, with_abstract: bool) -> String {
        let names = self.environment_names();
        let abstract_layers: Vec<&str> = self
            .layers
            .keys()
            .filter(|n| self.abstract_flag(n).is_some())
            .map(String::as_str)
            .collect();
        let mut text = if names.is_empty() {
            "there are no environments to render".to_string()
        } else {
            format!("environments: {}", names.join(", "))
        };
        if with_abstract && !abstract_layers.is_empty() {
            text.push_str(&format!(
                " (abstract, only built on: {})",
                abstract_layers.join(", ")
            ));
        }
        text
    }

    /// Problems that concern the repository as a whole.
    pub fn problems(&self) -> &[Diagnostic] {
        &self.problems
    }

    /// Validates the named environments (all renderable ones when empty).
    pub fn validate(&self, names: &[String]) -> Report {
        let names = if names.is_empty() {
            self.environment_names()
        } else {
            names.to_vec()
        };
        let mut report = Report {
            diagnostics: self.problems.clone(),
            ..Report::default()
        };
        // Abstract layers are checked file by file even when nothing renders them.
        for layer in self.layers.values() {
            report.diagnostics.extend(layer.problems.iter().cloned());
            report
                .diagnostics
                .extend(layer.workspace_problems.iter().map(|(_, d)| d.clone()));
        }
        // The same problem found in several environments is one line
        // naming them all.
        let mut grouped: BTreeMap<(Diagnostic, String), Vec<String>> = BTreeMap::new();
        for name in &names {
            let (env, found) = self.resolve_found(name);
            if found.is_empty() {
                report.environments.push(env);
            }
            for f in found {
                match f.context {
                    None => report.diagnostics.push(f.diag),
                    Some(layers) => grouped
                        .entry((f.diag, layers))
                        .or_default()
                        .push(name.clone()),
                }
            }
        }
        for ((diag, layers), envs) in grouped {
            report.diagnostics.push(with_context(diag, &envs, &layers));
        }
        report.diagnostics.sort();
        report.diagnostics.dedup();
        report
    }

    /// Builds one environment and checks it: the environment, or every
    /// problem found.
    pub fn resolve(&self, name: &str) -> Result<Environment, Vec<Diagnostic>> {
        let partial = self.resolve_partial(name);
        let errors = partial.errors();
        if errors.is_empty() {
            Ok(partial.environment)
        } else {
            Err(errors)
        }
    }

    /// Builds one environment as far as it can: its valid workspaces, the
    /// problems that hold the whole environment, and those that hold one
    /// workspace each (references never cross workspaces, so the others do
    /// not depend on them).
    pub fn resolve_partial(&self, name: &str) -> Partial {
        let (environment, found) = self.resolve_found(name);
        let mut partial = Partial {
            environment,
            environment_errors: Vec::new(),
            workspace_errors: BTreeMap::new(),
        };
        for f in found {
            let diag = match &f.context {
                Some(layers) => with_context(f.diag, &[name.to_string()], layers),
                None => f.diag,
            };
            if f.workspaces.is_empty() {
                partial.environment_errors.push(diag);
            } else {
                for ws in f.workspaces {
                    partial
                        .workspace_errors
                        .entry(ws)
                        .or_default()
                        .push(diag.clone());
                }
            }
        }
        partial.environment_errors.sort();
        partial.environment_errors.dedup();
        for diags in partial.workspace_errors.values_mut() {
            diags.sort();
            diags.dedup();
        }
        partial
    }

    /// The environment with the workspaces that have no problem, and every
    /// problem found, each with what it holds and where it came from.
    fn resolve_found(&self, name: &str) -> (Environment, Vec<Found>) {
        let mut found: Vec<Found> = self.problems.iter().cloned().map(Found::file).collect();
        let mut env = Environment {
            name: name.to_string(),
            chain: Vec::new(),
            settings: Settings::default(),
            workspaces: Vec::new(),
            resources: Vec::new(),
        };
        let chain = match self.chain(name) {
            Ok(chain) => chain,
            Err(d) => {
                found.extend(d.into_iter().map(Found::file));
                return (env, found);
            }
        };
        env.chain = chain.clone();
        // A file's own problems, as they are (they name their file).
        let mut file_level: std::collections::BTreeSet<Diagnostic> = Default::default();
        for layer_name in &chain {
            if let Some(layer) = self.layers.get(layer_name) {
                found.extend(layer.problems.iter().cloned().map(Found::file));
                for (ws, d) in &layer.workspace_problems {
                    file_level.insert(d.clone());
                    found.push(Found {
                        diag: d.clone(),
                        workspaces: vec![ws.clone()],
                        context: None,
                    });
                }
            }
        }
        let layers: Vec<(&String, &Layer)> = chain
            .iter()
            .rev()
            .filter_map(|n| Some((n, self.layers.get(n)?)))
            .collect();
        // A patch of a workspace whose files were not read (unreadable, or
        // not in a focused load's focus) may target what those files define.
        let unreadable: BTreeSet<&String> = layers
            .iter()
            .flat_map(|(_, l)| l.unreadable.iter().chain(&l.skipped))
            .collect();
        // A layer whose environment.yaml cannot be read names no base: its
        // patches' targets may be in the layers it would have named.
        let chain_known = layers.iter().all(|(_, l)| l.env.is_some());

        // Settings: each layer's spec over the previous, minus per-layer keys.
        let mut settings = Node::new(Value::Map(Vec::new()), Default::default());
        let mut overlay_errors = Vec::new();
        for (_, layer) in &layers {
            if let Some(spec) = layer.env.as_ref().and_then(|d| d.node.get("spec")) {
                let own = without_keys(spec, &["base", "abstract", "patches"]);
                overlay::merge(&mut settings, &own, "/spec", &mut overlay_errors);
            }
        }
        // Settings that break their schema: the rules that depend on them
        // are not checked (they would only report its consequences).
        let mut invalid: BTreeSet<String> = layers
            .iter()
            .flat_map(|(_, l)| l.invalid_settings.iter().cloned())
            .collect();
        for e in overlay_errors {
            let d = self.files.diag(e.pos, Some(e.pointer), e.message);
            invalid.extend(setting_of(&d));
            found.push(Found::in_env(d, Vec::new(), String::new()));
        }

        let (workspaces, sources) =
            self.merge_workspaces(name, &chain, &layers, chain_known, &unreadable, &mut found);
        let resources = self.merge_resources(&layers, &mut found);

        env.settings = self.typed_settings(name, &layers, &settings, &mut invalid, &mut found);
        let usable = Usable(&invalid);

        let typed =
            self.check_workspaces(&env, usable, &workspaces, &sources, &file_level, &mut found);
        let namespaces = if usable.has("namespaceTemplate") {
            self.check_namespaces(&env, &workspaces)
        } else {
            Vec::new()
        };
        for (d, a, b) in namespaces {
            found.push(Found::in_env(d, vec![a, b], String::new()));
        }
        if !resources.is_empty() && usable.has("namespaceTemplate") {
            self.check_manifests(&env, &resources, &typed, &workspaces, &mut found);
        }

        let held: std::collections::BTreeSet<&String> =
            found.iter().flat_map(|f| f.workspaces.iter()).collect();
        env.workspaces = typed
            .into_iter()
            .filter(|(n, _)| !held.contains(n))
            .map(|(_, ws)| ws)
            .collect();
        env.resources = resources
            .into_values()
            .map(|(body, pos)| model::Manifest {
                body,
                source: self.files.location(pos),
            })
            .collect();
        found.sort_by(|a, b| a.diag.cmp(&b.diag));
        (env, found)
    }

    /// The merged settings as typed, leaving out those that break their
    /// schema; a merge that breaks them is reported (unless a layer's own
    /// file already was), and none is usable then.
    fn typed_settings(
        &self,
        name: &str,
        layers: &[(&String, &Layer)],
        settings: &Node,
        invalid: &mut BTreeSet<String>,
        found: &mut Vec<Found>,
    ) -> Settings {
        let mut settings_json = settings.to_json();
        if let Some(fields) = settings_json.as_object_mut() {
            fields.retain(|key, _| !invalid.contains(key) && !invalid.contains("*"));
        }
        match serde_json::from_value(settings_json) {
            Ok(s) => s,
            Err(e) => {
                // A layer's environment.yaml that breaks its schema is
                // reported at the value; this would only repeat it.
                let reported = layers.iter().any(|(_, l)| !l.problems.is_empty());
                if !reported {
                    let own = self
                        .layers
                        .get(name)
                        .and_then(|l| l.env.as_ref())
                        .map_or(settings.pos, |d| d.node.get("spec").unwrap_or(&d.node).pos);
                    let d = self.files.diag(
                        own,
                        Some("/spec".into()),
                        format!("invalid settings after merging the base chain: {e}"),
                    );
                    found.push(Found::in_env(d, Vec::new(), String::new()));
                }
                invalid.insert("*".into());
                Settings::default()
            }
        }
    }

    /// Workspaces: a layer's new workspaces, then its patches; and what each
    /// merged workspace came from.
    #[allow(clippy::type_complexity)]
    fn merge_workspaces<'l>(
        &self,
        name: &str,
        chain: &[String],
        layers: &[(&String, &'l Layer)],
        chain_known: bool,
        unreadable: &BTreeSet<&String>,
        found: &mut Vec<Found>,
    ) -> (
        BTreeMap<String, Cow<'l, Node>>,
        BTreeMap<String, Vec<String>>,
    ) {
        // A workspace no patch changes is the parsed document itself, not a
        // copy: at 20,000 workspaces the copies were a second tree of every
        // declaration held through validation.
        let mut workspaces: BTreeMap<String, Cow<'l, Node>> = BTreeMap::new();
        let mut sources: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (layer_name, layer) in layers {
            for doc in &layer.workspaces {
                let Some((ws_name, name_node)) = doc_name(&doc.node) else {
                    continue;
                };
                if let Some(existing) = workspaces.get(&ws_name) {
                    let first = existing.pos;
                    let d = self.files.diag(
                        name_node.pos,
                        Some("/metadata/name".into()),
                        format!(
                            "workspace `{ws_name}` is already defined in {}; change it with kind: WorkspacePatch",
                            self.files.path(first.file)
                        ),
                    );
                    found.push(Found {
                        diag: d,
                        workspaces: vec![ws_name],
                        context: None,
                    });
                    continue;
                }
                sources.insert(
                    ws_name.clone(),
                    vec![format!(
                        "{} (Workspace in {layer_name})",
                        self.at(name_node.pos)
                    )],
                );
                workspaces.insert(ws_name, Cow::Borrowed(&doc.node));
            }
            for doc in &layer.patches {
                let Some((ws_name, name_node)) = doc_name(&doc.node) else {
                    continue;
                };
                let delete =
                    doc.node.get(overlay::PATCH_KEY).and_then(Node::as_str) == Some("delete");
                match workspaces.get_mut(&ws_name) {
                    None if !chain_known || unreadable.contains(&ws_name) => {}
                    None => found.push(Found {
                        diag: self.files.diag(
                            name_node.pos,
                            Some("/metadata/name".into()),
                            format!(
                                "patch targets workspace `{ws_name}`, which environment `{name}` (layers {}) does not define",
                                chain.join(" -> ")
                            ),
                        ),
                        workspaces: vec![ws_name],
                        context: None,
                    }),
                    Some(_) if delete => {
                        workspaces.remove(&ws_name);
                        sources.remove(&ws_name);
                    }
                    Some(target) => {
                        let inline = self
                            .files
                            .path(doc.node.pos.file)
                            .ends_with(ENVIRONMENT_FILE);
                        let what = if inline {
                            format!("patch in {ENVIRONMENT_FILE} of {layer_name}")
                        } else {
                            format!("WorkspacePatch in {layer_name}")
                        };
                        sources
                            .entry(ws_name.clone())
                            .or_default()
                            .push(format!("{} ({what})", self.at(name_node.pos)));
                        if let Some(spec) = doc.node.get("spec") {
                            let wrapped = Node::new(
                                Value::Map(vec![(Key { name: "spec".into(), pos: doc.node.pos }, spec.clone())]),
                                doc.node.pos,
                            );
                            let mut errors = Vec::new();
                            overlay::merge(target.to_mut(), &wrapped, "", &mut errors);
                            for e in errors {
                                let d = self.files.diag(e.pos, Some(e.pointer), e.message);
                                found.push(Found::in_env(d, vec![ws_name.clone()], String::new()));
                            }
                        }
                    }
                }
            }
        }
        (workspaces, sources)
    }

    /// Manifests: a layer's replace the same object of a layer below it.
    #[allow(clippy::type_complexity)]
    fn merge_resources(
        &self,
        layers: &[(&String, &Layer)],
        found: &mut Vec<Found>,
    ) -> BTreeMap<(String, Option<String>, String), (serde_json::Value, Pos)> {
        let mut resources: BTreeMap<(String, Option<String>, String), (serde_json::Value, Pos)> =
            BTreeMap::new();
        for (_, layer) in layers {
            let mut seen = BTreeMap::new();
            for doc in &layer.resources {
                let json = doc.node.to_json();
                let key = (
                    json["kind"].as_str().unwrap_or_default().to_string(),
                    json["metadata"]["namespace"].as_str().map(str::to_string),
                    json["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                );
                if let Some(first) = seen.insert(key.clone(), doc.node.pos) {
                    let d = self.files.diag(
                        doc.node.pos,
                        None,
                        format!(
                            "{} {} is also declared in {} of the same layer",
                            key.0,
                            key.2,
                            self.files.path(first.file)
                        ),
                    );
                    found.push(Found::file(d));
                }
                resources.insert(key, (json, doc.node.pos));
            }
        }
        resources
    }

    /// Each merged workspace: its schema (what only the merge shows), the
    /// rules (also where the schema check failed, as far as they can go),
    /// then the names it renders. Returns the typed workspaces.
    fn check_workspaces(
        &self,
        env: &Environment,
        usable: Usable<'_>,
        workspaces: &BTreeMap<String, Cow<'_, Node>>,
        sources: &BTreeMap<String, Vec<String>>,
        file_level: &BTreeSet<Diagnostic>,
        found: &mut Vec<Found>,
    ) -> BTreeMap<String, Workspace> {
        let mut typed: BTreeMap<String, Workspace> = BTreeMap::new();
        let layers_of = |ws: &str| match sources.get(ws) {
            Some(list) if list.len() > 1 => list.join(", "),
            _ => String::new(),
        };
        for (ws_name, node) in workspaces {
            let mut diags = Vec::new();
            let schema_diags = schema::validate(SchemaKind::Workspace, node, &self.files);
            let schema_ok = schema_diags.is_empty();
            diags.extend(schema_diags.into_iter().filter(|d| !file_level.contains(d)));
            self.check_rules(env, usable, node, &mut diags);
            if schema_ok {
                self.check_rendered_names(env, usable, node, &mut diags);
                match serde_json::from_value::<Workspace>(node.to_json()) {
                    Ok(ws) => {
                        self.check_identities(env, &ws, node, &mut diags);
                        typed.insert(ws_name.clone(), ws);
                    }
                    Err(e) => diags.push(self.files.diag(
                        node.pos,
                        None,
                        format!("invalid workspace: {e}"),
                    )),
                }
            }
            let layers = layers_of(ws_name);
            found.extend(
                diags
                    .into_iter()
                    .map(|d| Found::in_env(d, vec![ws_name.clone()], layers.clone())),
            );
        }
        typed
    }

    /// A plain manifest must not be one of the objects a workspace renders.
    #[allow(clippy::type_complexity)]
    fn check_manifests(
        &self,
        env: &Environment,
        resources: &BTreeMap<(String, Option<String>, String), (serde_json::Value, Pos)>,
        typed: &BTreeMap<String, Workspace>,
        workspaces: &BTreeMap<String, Cow<'_, Node>>,
        found: &mut Vec<Found>,
    ) {
        let mut rendered: BTreeMap<Identity, (&String, Origin)> = BTreeMap::new();
        for (ws_name, ws) in typed {
            for (id, origin) in identities(env, ws) {
                rendered.entry(id).or_insert((ws_name, origin));
            }
        }
        for (json, pos) in resources.values() {
            let text = |p: &str| json.pointer(p).and_then(serde_json::Value::as_str);
            let Some(kind) = MANAGED_KINDS
                .iter()
                .map(|k| k.kind)
                .find(|k| Some(*k) == text("/kind"))
            else {
                continue;
            };
            let id = Identity {
                group: MANAGED_KINDS
                    .iter()
                    .find(|k| k.kind == kind)
                    .map_or("", |k| k.group),
                kind,
                namespace: text("/metadata/namespace").map(str::to_string),
                name: text("/metadata/name").unwrap_or_default().to_string(),
            };
            let group = text("/apiVersion")
                .and_then(|v| v.split_once('/'))
                .map_or("", |(g, _)| g);
            let Some((ws_name, origin)) = rendered.get(&id).filter(|_| group == id.group) else {
                continue;
            };
            let (Some(ws), Some(node)) = (typed.get(*ws_name), workspaces.get(*ws_name)) else {
                continue;
            };
            let (at, what) = self.origin(node, ws, *origin);
            let d = self.files.diag(
                *pos,
                None,
                format!(
                    "manifest {} is also rendered for {what} of workspace `{ws_name}` ({}); on a cluster one would overwrite the other: rename or remove one",
                    id.describe(),
                    self.at(at)
                ),
            );
            found.push(Found::in_env(d, Vec::new(), String::new()));
        }
    }

    /// The namespaces an environment's workspaces render into, each with
    /// its workspace and where that is declared (`file:line:col`): the
    /// merged workspace names and the namespace template, without the
    /// checks of [`Repository::resolve`] (cheap).
    pub fn namespaces(&self, name: &str) -> BTreeMap<String, (String, String)> {
        let Ok(chain) = self.chain(name) else {
            return BTreeMap::new();
        };
        let layers: Vec<&Layer> = chain
            .iter()
            .rev()
            .filter_map(|n| self.layers.get(n))
            .collect();
        let mut workspaces: BTreeMap<String, String> = BTreeMap::new();
        for layer in &layers {
            for doc in &layer.workspaces {
                if let Some((ws, node)) = doc_name(&doc.node) {
                    workspaces.entry(ws).or_insert_with(|| self.at(node.pos));
                }
            }
            for doc in &layer.patches {
                if doc.node.get(overlay::PATCH_KEY).and_then(Node::as_str) == Some("delete")
                    && let Some((ws, _)) = doc_name(&doc.node)
                {
                    workspaces.remove(&ws);
                }
            }
        }
        let env = self.namer(name, &layers);
        workspaces
            .into_iter()
            .map(|(ws, at)| (env.namespace_of(&ws), (ws, at)))
            .collect()
    }

    /// An environment `name` with no workspaces and only its namespace
    /// template (that of the nearest of `layers`, root first, that sets one;
    /// `null` unsets): what [`Environment::namespace_of`] needs.
    fn namer(&self, name: &str, layers: &[&Layer]) -> Environment {
        let mut template: Option<String> = None;
        for layer in layers {
            if let Some(t) = layer
                .env
                .as_ref()
                .and_then(|d| d.node.get("spec"))
                .and_then(|s| s.get("namespaceTemplate"))
            {
                template = t.as_str().map(str::to_string);
            }
        }
        Environment {
            name: name.to_string(),
            chain: Vec::new(),
            settings: Settings {
                namespace_template: template,
                ..Settings::default()
            },
            workspaces: Vec::new(),
            resources: Vec::new(),
        }
    }

    /// The layers of environment `name`, from itself to its root; `None`
    /// when they cannot be worked out (resolving says why).
    pub fn chain_of(&self, name: &str) -> Option<Vec<String>> {
        self.chain(name).ok()
    }

    /// The workspaces environment `name` must be read with so that its
    /// `selected` workspaces are checked as a whole load checks them, from
    /// a load that read no workspace file ([`load_unfocused`]; every
    /// workspace known by its file names only). Besides the
    /// selected ones, the only workspaces a check relates them to: those
    /// rendering into a namespace a selected one renders into (two
    /// workspaces in one namespace; a template without `{workspace}` puts
    /// every workspace there), and those whose namespace a `resources/`
    /// manifest of the chain writes into (a manifest that is also a
    /// workspace's object; the guardrails' own namespaces). Rendered
    /// objects live in their workspace's namespace (the Namespace itself
    /// named after it), so no other workspace can collide with them, and
    /// references never cross workspaces. `None`: the chain cannot be
    /// resolved (read everything; resolving reports why).
    pub fn focus(&self, name: &str, selected: &BTreeSet<String>) -> Option<BTreeSet<String>> {
        let chain = self.chain(name).ok()?;
        let layers: Vec<&Layer> = chain
            .iter()
            .rev()
            .filter_map(|n| self.layers.get(n))
            .collect();
        let env = self.namer(name, &layers);
        let mut namespaces: BTreeSet<String> =
            selected.iter().map(|ws| env.namespace_of(ws)).collect();
        for doc in layers.iter().flat_map(|l| &l.resources) {
            let meta = |key: &str| {
                doc.node
                    .get("metadata")
                    .and_then(|m| m.get(key))
                    .and_then(Node::as_str)
            };
            let namespace = match doc.node.get("kind").and_then(Node::as_str) {
                Some("Namespace") => meta("name"),
                _ => meta("namespace"),
            };
            namespaces.extend(namespace.map(str::to_string));
        }
        let mut focus = selected.clone();
        focus.extend(
            layers
                .iter()
                .flat_map(|l| &l.skipped)
                .filter(|ws| namespaces.contains(&env.namespace_of(ws)))
                .cloned(),
        );
        Some(focus)
    }

    /// The workspaces of environment `name` a focused load left unread,
    /// known by their file names only.
    pub fn unread(&self, name: &str) -> BTreeSet<String> {
        self.chain(name)
            .unwrap_or_default()
            .iter()
            .filter_map(|n| self.layers.get(n))
            .flat_map(|l| l.skipped.iter().cloned())
            .collect()
    }

    /// `file:line:col` of a position.
    fn at(&self, pos: Pos) -> String {
        format!("{}:{}:{}", self.files.path(pos.file), pos.line, pos.col)
    }

    /// Where in a workspace's document a rendered object is declared, and
    /// what declares it.
    fn origin(&self, node: &Node, ws: &Workspace, origin: Origin) -> (Pos, String) {
        let at = |pointer: &str| node.pointer(pointer).map_or(node.pos, |(n, _)| n.pos);
        let spec = &ws.spec;
        match origin {
            Origin::Workspace => (
                at("/metadata/name"),
                format!("workspace `{}`", ws.metadata.name),
            ),
            Origin::Fhir(i) => (
                at(&format!("/spec/fhirServices/{i}/name")),
                format!(
                    "FHIR service `{}`",
                    spec.fhir_services.get(i).map_or("", |f| &f.name)
                ),
            ),
            Origin::Dicom(i) => (
                at(&format!("/spec/dicomServices/{i}/name")),
                format!(
                    "DICOM service `{}`",
                    spec.dicom_services.get(i).map_or("", |d| &d.name)
                ),
            ),
            Origin::DicomCast(i) => (
                at(&format!("/spec/dicomServices/{i}/dicomCast")),
                format!(
                    "the dicomCast of DICOM service `{}`",
                    spec.dicom_services.get(i).map_or("", |d| &d.name)
                ),
            ),
            Origin::IotShared => (
                at("/spec/iotConnectors"),
                format!("the workspace-wide IoT set-up `{}`", names::IOT_SHARED),
            ),
            Origin::Iot(i) => (
                at(&format!("/spec/iotConnectors/{i}/name")),
                format!(
                    "IoT connector `{}`",
                    spec.iot_connectors.get(i).map_or("", |c| &c.name)
                ),
            ),
            Origin::IotDestination(i, j) => {
                let c = spec.iot_connectors.get(i);
                (
                    at(&format!(
                        "/spec/iotConnectors/{i}/fhirDestinations/{j}/name"
                    )),
                    format!(
                        "FHIR destination `{}` of IoT connector `{}`",
                        c.and_then(|c| c.fhir_destinations.get(j))
                            .map_or("", |d| &d.name),
                        c.map_or("", |c| &c.name)
                    ),
                )
            }
        }
    }

    /// Two objects a workspace renders must not share group, kind,
    /// namespace and name: on a cluster one would overwrite the other.
    fn check_identities(
        &self,
        env: &Environment,
        ws: &Workspace,
        node: &Node,
        diags: &mut Vec<Diagnostic>,
    ) {
        let mut seen: BTreeMap<Identity, Origin> = BTreeMap::new();
        let mut reported = std::collections::BTreeSet::new();
        for (id, origin) in identities(env, ws) {
            let Some(first) = seen.get(&id).copied() else {
                seen.insert(id, origin);
                continue;
            };
            let (first_at, first_what) = self.origin(node, ws, first);
            let (at, what) = self.origin(node, ws, origin);
            // Two items of one list with one name: reported as a duplicate name.
            if first_what == what || !reported.insert((first, origin)) {
                continue;
            }
            diags.push(self.files.diag(
                at,
                origin_pointer(origin),
                format!(
                    "{what} renders {}, which {first_what} ({}) also renders; on a cluster one would overwrite the other: rename one of them",
                    id.describe(),
                    self.at(first_at)
                ),
            ));
        }
    }

    /// The layers of an environment, from itself to its root.
    fn chain(&self, name: &str) -> Result<Vec<String>, Vec<Diagnostic>> {
        if !self.layers.contains_key(name) {
            return Err(vec![at_file(
                &format!("{ENVIRONMENTS_DIR}/{name}"),
                format!(
                    "environment `{name}` not found; {}",
                    self.known_environments(true)
                ),
            )]);
        }
        if let Some(flag) = self.abstract_flag(name) {
            return Err(vec![self.files.diag(
                flag.pos,
                Some("/spec/abstract".into()),
                format!(
                    "`{name}` is abstract: it is only built on, never rendered or synced; {}",
                    self.known_environments(false)
                ),
            )]);
        }
        let mut chain = vec![name.to_string()];
        let mut current = name.to_string();
        while let Some(layer) = self.layers.get(&current) {
            let Some(base) = layer
                .env
                .as_ref()
                .and_then(|d| d.node.get("spec"))
                .and_then(|s| s.get("base"))
            else {
                break;
            };
            let Some(base_name) = base.as_str() else {
                break;
            };
            if chain.iter().any(|c| c == base_name) {
                chain.push(base_name.to_string());
                return Err(vec![self.files.diag(
                    base.pos,
                    Some("/spec/base".into()),
                    format!("base chain has a cycle: {}", chain.join(" -> ")),
                )]);
            }
            if !self.layers.contains_key(base_name) {
                return Err(vec![self.files.diag(
                    base.pos,
                    Some("/spec/base".into()),
                    format!("base layer `{base_name}` not found under {ENVIRONMENTS_DIR}/"),
                )]);
            }
            chain.push(base_name.to_string());
            current = base_name.to_string();
        }
        Ok(chain)
    }

    /// Platform rules that a schema cannot express, on a merged workspace.
    /// What needs a setting that breaks its schema is not checked
    /// (`usable`): with the setting unknown, it would be a false error.
    fn check_rules(
        &self,
        env: &Environment,
        usable: Usable<'_>,
        ws: &Node,
        diags: &mut Vec<Diagnostic>,
    ) {
        let ws_name = doc_name(ws).map(|(n, _)| n).unwrap_or_default();
        let spec = ws.get("spec");
        let list = |key: &str| -> Vec<&Node> {
            match spec.and_then(|s| s.get(key)).map(|n| &n.value) {
                Some(Value::Seq(items)) => items.iter().collect(),
                _ => Vec::new(),
            }
        };
        let fhir = list("fhirServices");
        let dicom = list("dicomServices");
        let iot = list("iotConnectors");
        for (key, items, what) in [
            ("fhirServices", &fhir, "FHIR service"),
            ("dicomServices", &dicom, "DICOM service"),
            ("iotConnectors", &iot, "IoT connector"),
        ] {
            self.unique_names(items, what, &format!("/spec/{key}"), diags);
        }
        let fhir_names: Vec<&str> = fhir
            .iter()
            .filter_map(|f| f.get("name").and_then(Node::as_str))
            .collect();
        let mut require_fhir = |node: Option<&Node>, pointer: String, owner: String| {
            let Some(node) = node else { return };
            let Some(target) = node.as_str() else { return };
            if !fhir_names.contains(&target) {
                let have = if fhir_names.is_empty() {
                    "none".to_string()
                } else {
                    fhir_names.join(", ")
                };
                diags.push(self.files.diag(
                    node.pos,
                    Some(pointer),
                    format!(
                        "{owner} names FHIR service `{target}`, which workspace `{ws_name}` does not have (its FHIR services: {have})"
                    ),
                ));
            }
        };
        for (i, d) in dicom.iter().enumerate() {
            let dname = d.get("name").and_then(Node::as_str).unwrap_or("?");
            require_fhir(
                d.get("dicomCast").and_then(|c| c.get("fhirService")),
                format!("/spec/dicomServices/{i}/dicomCast/fhirService"),
                format!("the dicomCast of DICOM service `{dname}`"),
            );
        }
        let mut dest_lists = Vec::new();
        for (i, c) in iot.iter().enumerate() {
            let cname = c.get("name").and_then(Node::as_str).unwrap_or("?");
            let dests: Vec<&Node> = match c.get("fhirDestinations").map(|n| &n.value) {
                Some(Value::Seq(items)) => items.iter().collect(),
                _ => Vec::new(),
            };
            for (j, d) in dests.iter().enumerate() {
                let dname = d.get("name").and_then(Node::as_str).unwrap_or("?");
                require_fhir(
                    d.get("fhirService"),
                    format!("/spec/iotConnectors/{i}/fhirDestinations/{j}/fhirService"),
                    format!("FHIR destination `{dname}` of IoT connector `{cname}`"),
                );
            }
            dest_lists.push((i, dests));
        }
        for (i, dests) in dest_lists {
            self.unique_names(
                &dests,
                "FHIR destination",
                &format!("/spec/iotConnectors/{i}/fhirDestinations"),
                diags,
            );
        }

        // What rendering needs from the environment.
        let s = &env.settings;
        if usable.has("ingress")
            && (!fhir.is_empty() || !dicom.is_empty())
            && s.ingress.domain.is_none()
        {
            diags.push(self.files.diag(
                ws.pos,
                None,
                format!(
                    "workspace `{ws_name}` exposes services but the environment sets no spec.ingress.domain"
                ),
            ));
        }
        if usable.has("images") {
            self.check_images(&s.images, &fhir, &dicom, &iot, diags);
        }
        self.check_scaling(env, usable, [&fhir, &dicom, &iot], diags);
        if usable.has("auth") && env.auth_required() {
            self.check_auth_declared(env, &fhir, diags);
        }
        if usable.has("keyVault") && s.key_vault.is_none() {
            self.check_key_vault_declared(env, &fhir, &dicom, diags);
        }
    }

    /// An autoscaler's bounds are in order, and no FHIR or DICOM service or
    /// IoT connector runs fewer replicas than the environment's floor
    /// (unless it is a standby, which runs its standby count).
    fn check_scaling(
        &self,
        env: &Environment,
        usable: Usable<'_>,
        [fhir, dicom, iot]: [&[&Node]; 3],
        diags: &mut Vec<Diagnostic>,
    ) {
        let int = |n: Option<&Node>| match n.map(|n| &n.value) {
            Some(Value::Int(i)) => i32::try_from(*i).ok(),
            _ => None,
        };
        let s = &env.settings;
        let floor = s
            .replica_floor
            .filter(|_| {
                usable.has("replicaFloor") && usable.has("defaults") && usable.has("standby")
            })
            .filter(|_| env.standby_replicas().is_none());
        for (key, items, what, defaults) in [
            ("fhirServices", fhir, "FHIR service", Some(&s.defaults.fhir)),
            (
                "dicomServices",
                dicom,
                "DICOM service",
                Some(&s.defaults.dicom),
            ),
            ("iotConnectors", iot, "IoT connector", None),
        ] {
            for (i, node) in items.iter().enumerate() {
                let name = node.get("name").and_then(Node::as_str).unwrap_or("?");
                let auto = node.get("autoscaling");
                let (min, max) = (
                    int(auto.and_then(|a| a.get("minReplicas"))),
                    int(auto.and_then(|a| a.get("maxReplicas"))),
                );
                if let (Some(auto), Some(min), Some(max)) = (auto, min, max)
                    && min > max
                {
                    diags.push(self.files.diag(
                        auto.pos,
                        Some(format!("/spec/{key}/{i}/autoscaling")),
                        format!("{what} `{name}` autoscales between minReplicas {min} and maxReplicas {max}: the minimum must not be over the maximum"),
                    ));
                }
                let Some(floor) = floor else { continue };
                let replicas = int(node.get("replicas"));
                let least = match defaults {
                    Some(d) => {
                        let own =
                            min.zip(max)
                                .map(|(min_replicas, max_replicas)| model::Autoscaling {
                                    min_replicas,
                                    max_replicas,
                                    target_cpu_utilization_percentage: 70,
                                });
                        env.scale_of(replicas, own, d).least()
                    }
                    None => replicas.or(s.defaults.iot_connector.replicas).unwrap_or(1),
                };
                if least < floor {
                    let at = auto
                        .or(node.get("replicas"))
                        .or(node.get("name"))
                        .map_or(node.pos, |n| n.pos);
                    diags.push(self.files.diag(
                        at,
                        Some(format!("/spec/{key}/{i}")),
                        format!(
                            "{what} `{name}` runs {least} replica(s), under the environment's spec.replicaFloor of {floor}: raise its replicas (or autoscaling.minReplicas), or declare the environment a standby (spec.standby)"
                        ),
                    ));
                }
            }
        }
    }

    /// Where the environment requires authentication, every FHIR service
    /// declares `auth` (else its Ingress publishes it without).
    fn check_auth_declared(&self, env: &Environment, fhir: &[&Node], diags: &mut Vec<Diagnostic>) {
        for (i, node) in fhir.iter().enumerate() {
            if node.get("auth").is_some() {
                continue;
            }
            let name = node.get("name");
            let at = name.map_or(node.pos, |n| n.pos);
            let name = name.and_then(Node::as_str).unwrap_or("?");
            let why = if env.settings.auth.required.is_some() {
                "its spec.auth.required is true"
            } else {
                "staging, prod and dr require it unless spec.auth.required is false"
            };
            diags.push(self.files.diag(
                at,
                Some(format!("/spec/fhirServices/{i}")),
                format!(
                    "FHIR service `{name}` declares no auth, which the environment requires ({why}): its Ingress would publish it without authentication; add auth (authority, audience)"
                ),
            ));
        }
    }

    /// A service that reads the Key Vault needs the environment to declare
    /// one (vault, tenant, identity).
    fn check_key_vault_declared(
        &self,
        env: &Environment,
        fhir: &[&Node],
        dicom: &[&Node],
        diags: &mut Vec<Diagnostic>,
    ) {
        for (key, items, what) in [
            ("fhirServices", fhir, "FHIR service"),
            ("dicomServices", dicom, "DICOM service"),
        ] {
            for (i, node) in items.iter().enumerate() {
                let Some(kv) = node.get("keyVault") else {
                    continue;
                };
                let missing: Vec<&str> = ["vaultName", "tenantId", "clientId"]
                    .into_iter()
                    .filter(|k| kv.get(k).is_none())
                    .collect();
                if missing.is_empty() {
                    // A vault of its own, complete.
                    continue;
                }
                let name = node.get("name").and_then(Node::as_str).unwrap_or("?");
                diags.push(self.files.diag(
                    kv.pos,
                    Some(format!("/spec/{key}/{i}/keyVault")),
                    format!(
                        "{what} `{name}` reads from a Key Vault, but environment `{}` declares none and this keyVault gives no {}: add spec.keyVault (vaultName, tenantId, clientId) to its environment.yaml or a layer it builds on, or give them here",
                        env.name,
                        missing.join(", ")
                    ),
                ));
            }
        }
    }

    /// Every service, cast, connector and destination has an image: its
    /// own or the environment's.
    fn check_images(
        &self,
        images: &model::Images,
        fhir: &[&Node],
        dicom: &[&Node],
        iot: &[&Node],
        diags: &mut Vec<Diagnostic>,
    ) {
        let kinds: [(&str, &[&Node], Option<&model::Image>, &str); 3] = [
            ("FHIR service", fhir, images.fhir.as_ref(), "fhir"),
            ("DICOM service", dicom, images.dicom.as_ref(), "dicom"),
            (
                "IoT connector",
                iot,
                images.iot_connector.as_ref(),
                "iotConnector",
            ),
        ];
        for (what, items, default, key) in kinds {
            for item in items {
                self.require_image(item, item.get("image"), default, what, key, diags);
            }
        }
        for d in dicom {
            if let Some(cast) = d.get("dicomCast") {
                self.require_image(
                    cast,
                    cast.get("image"),
                    images.dicom_cast.as_ref(),
                    "DICOM-cast",
                    "dicomCast",
                    diags,
                );
            }
        }
        for c in iot {
            if let Some(Value::Seq(dests)) = c.get("fhirDestinations").map(|n| &n.value) {
                for d in dests {
                    self.require_image(
                        d,
                        None,
                        images.iot_fhir_destination.as_ref(),
                        "FHIR destination",
                        "iotFhirDestination",
                        diags,
                    );
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn require_image(
        &self,
        item: &Node,
        own: Option<&Node>,
        default: Option<&model::Image>,
        what: &str,
        key: &str,
        diags: &mut Vec<Diagnostic>,
    ) {
        let has = |field: &str| {
            own.and_then(|i| i.get(field)).is_some()
                || default.is_some_and(|d| {
                    if field == "tag" {
                        d.tag.is_some()
                    } else {
                        d.repository.is_some()
                    }
                })
        };
        if !(has("repository") && has("tag")) {
            let name = item.get("name").and_then(Node::as_str).unwrap_or("");
            diags.push(self.files.diag(
                item.pos,
                None,
                format!(
                    "no image for {what} `{name}`: set spec.images.{key} (repository and tag) in the environment or `image` on the item"
                ),
            ));
        }
    }

    fn unique_names(
        &self,
        items: &[&Node],
        what: &str,
        pointer: &str,
        diags: &mut Vec<Diagnostic>,
    ) {
        let mut seen: BTreeMap<&str, &Node> = BTreeMap::new();
        for (i, item) in items.iter().enumerate() {
            let Some(name_node) = item.get("name") else {
                continue;
            };
            let Some(name) = name_node.as_str() else {
                continue;
            };
            if let Some(first) = seen.get(name) {
                diags.push(self.files.diag(
                    name_node.pos,
                    Some(format!("{pointer}/{i}/name")),
                    format!(
                        "duplicate {what} name `{name}` (first at line {})",
                        first.pos.line
                    ),
                ));
            } else {
                seen.insert(name, name_node);
            }
        }
    }

    /// Two workspaces must not land in one namespace.
    fn check_namespaces(
        &self,
        env: &Environment,
        nodes: &BTreeMap<String, Cow<'_, Node>>,
    ) -> Vec<(Diagnostic, String, String)> {
        let mut out = Vec::new();
        let mut seen: BTreeMap<String, (String, Pos)> = BTreeMap::new();
        for (ws, node) in nodes {
            let ns = env.namespace_of(ws);
            let pos = doc_name(node).map_or(node.pos, |(_, n)| n.pos);
            if let Some((other, other_pos)) = seen.insert(ns.clone(), (ws.clone(), pos)) {
                out.push((
                    self.files.diag(
                        pos,
                        Some("/metadata/name".into()),
                        format!(
                            "workspaces `{other}` ({}) and `{ws}` both render into namespace `{ns}`; check spec.namespaceTemplate",
                            self.at(other_pos)
                        ),
                    ),
                    other,
                    ws.clone(),
                ));
            }
        }
        out
    }

    /// Rendered names must stay within Kubernetes limits (63 for names
    /// used as label values and DNS labels, 253 for ingress hosts).
    fn check_rendered_names(
        &self,
        env: &Environment,
        usable: Usable<'_>,
        ws: &Node,
        diags: &mut Vec<Diagnostic>,
    ) {
        let Some((ws_name, name_node)) = doc_name(ws) else {
            return;
        };
        let ns = env.namespace_of(&ws_name);
        if usable.has("namespaceTemplate")
            && let Err(why) = names::check_label(&ns)
        {
            diags.push(self.files.diag(
                name_node.pos,
                Some("/metadata/name".into()),
                format!("namespace `{ns}` rendered for workspace `{ws_name}` {why}"),
            ));
        }
        let domain = env.settings.ingress.domain.clone().unwrap_or_default();
        let mut check =
            |node: &Node, pointer: String, rendered: Vec<String>, host: Option<String>| {
                for name in rendered {
                    if let Err(why) = names::check_label(&name) {
                        diags.push(self.files.diag(
                            node.pos,
                            Some(pointer.clone()),
                            format!("rendered object name `{name}` {why}"),
                        ));
                    }
                }
                if let Some(host) = host
                    && usable.has("ingress")
                    && host.len() > 253
                {
                    diags.push(self.files.diag(
                        node.pos,
                        Some(pointer.clone()),
                        format!("ingress host `{host}` is longer than 253 characters"),
                    ));
                }
            };
        let spec = ws.get("spec");
        let items = |key: &str| -> Vec<(usize, &Node)> {
            match spec.and_then(|s| s.get(key)).map(|n| &n.value) {
                Some(Value::Seq(items)) => items.iter().enumerate().collect(),
                _ => Vec::new(),
            }
        };
        let name_of = |n: &Node| {
            n.get("name")
                .and_then(Node::as_str)
                .unwrap_or("")
                .to_string()
        };
        for (i, f) in items("fhirServices") {
            let n = name_of(f);
            let at = f.get("name").unwrap_or(f);
            check(
                at,
                format!("/spec/fhirServices/{i}/name"),
                vec![names::fhir(&n)],
                Some(names::host(&n, "fhir", &ws_name, &domain)),
            );
        }
        for (i, d) in items("dicomServices") {
            let n = name_of(d);
            let at = d.get("name").unwrap_or(d);
            let mut rendered = vec![names::dicom(&n)];
            if d.get("dicomCast").is_some() {
                rendered.push(names::dicom_cast(&n));
            }
            check(
                at,
                format!("/spec/dicomServices/{i}/name"),
                rendered,
                Some(names::host(&n, "dicom", &ws_name, &domain)),
            );
        }
        for (i, c) in items("iotConnectors") {
            let n = name_of(c);
            let at = c.get("name").unwrap_or(c);
            check(
                at,
                format!("/spec/iotConnectors/{i}/name"),
                vec![names::iot(&n)],
                None,
            );
            if let Some(Value::Seq(dests)) = c.get("fhirDestinations").map(|x| &x.value) {
                for (j, d) in dests.iter().enumerate() {
                    let at = d.get("name").unwrap_or(d);
                    check(
                        at,
                        format!("/spec/iotConnectors/{i}/fhirDestinations/{j}/name"),
                        vec![names::iot_destination(&n, &name_of(d))],
                        None,
                    );
                }
            }
        }
    }
}

/// A plain manifest needs an identity; its content is the API server's to check.
fn check_manifest(node: &Node, files: &FileTable) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    if !matches!(node.value, Value::Map(_)) {
        out.push(files.diag(
            node.pos,
            None,
            format!("a manifest is an object, found {}", node.type_name()),
        ));
        return out;
    }
    for field in ["apiVersion", "kind"] {
        if node
            .get(field)
            .and_then(Node::as_str)
            .is_none_or(str::is_empty)
        {
            out.push(files.diag(
                node.pos,
                Some(format!("/{field}")),
                format!("missing required field `{field}`"),
            ));
        }
    }
    match node.get("metadata").and_then(|m| m.get("name")) {
        Some(n) => match n.as_str() {
            Some(name) if is_dns_subdomain(name) => {}
            _ => out.push(files.diag(
                n.pos,
                Some("/metadata/name".into()),
                "metadata.name must be a DNS-1123 subdomain (lowercase letters, digits, '-' and '.', at most 253)",
            )),
        },
        None => out.push(files.diag(node.pos, Some("/metadata/name".into()), "missing required field `metadata.name`")),
    }
    if let Some(ns) = node.get("metadata").and_then(|m| m.get("namespace"))
        && ns.as_str().is_none_or(|n| names::check_label(n).is_err())
    {
        out.push(files.diag(
            ns.pos,
            Some("/metadata/namespace".into()),
            "metadata.namespace must be a DNS-1123 label",
        ));
    }
    out
}

fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        })
}

fn doc_name(node: &Node) -> Option<(String, &Node)> {
    let name = node.get("metadata")?.get("name")?;
    Some((name.as_str()?.to_string(), name))
}

fn without_keys(node: &Node, keys: &[&str]) -> Node {
    match &node.value {
        Value::Map(entries) => Node::new(
            Value::Map(
                entries
                    .iter()
                    .filter(|(k, _)| !keys.contains(&k.name.as_str()))
                    .cloned()
                    .collect(),
            ),
            node.pos,
        ),
        _ => node.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENVIRONMENT: &str = "apiVersion: tenantsync.io/v1alpha1
kind: Environment
metadata:
  name: dev
spec:
  ingress: { domain: dev.example.com }
  images:
    fhir: { repository: example.azurecr.io/fhir-server, tag: '4.3.1' }
";

    fn workspace(name: &str, typo: bool) -> Vec<u8> {
        let field = if typo { "replcas" } else { "replicas" };
        format!(
            "apiVersion: tenantsync.io/v1alpha1
kind: Workspace
metadata:
  name: {name}
spec:
  fhirServices:
    - name: main
      {field}: 2
"
        )
        .into_bytes()
    }

    /// Files are checked on several threads past a few dozen; the problems
    /// still come in path order, each once.
    #[test]
    fn problems_come_in_path_order_however_many_files() {
        for n in [10, 300] {
            let mut tree = SourceTree::new();
            tree.insert("environments/dev/environment.yaml", ENVIRONMENT.into());
            for i in 0..n {
                let name = format!("ws-{i:04}");
                tree.insert(
                    &format!("environments/dev/workspaces/{name}.yaml"),
                    workspace(&name, i % 7 == 3),
                );
            }
            let report = load_on_all_cores(&tree).validate(&[]);
            assert_eq!(report.diagnostics, load(&tree).validate(&[]).diagnostics);
            // Read in two steps (workspace files last, as a focused load
            // does): the same.
            assert_eq!(
                report.diagnostics,
                load_unfocused(&tree)
                    .read_workspaces(None)
                    .validate(&[])
                    .diagnostics
            );
            let files: Vec<&str> = report.diagnostics.iter().map(|d| d.file.as_str()).collect();
            let expected: Vec<String> = (0..n)
                .filter(|i| i % 7 == 3)
                .map(|i| format!("environments/dev/workspaces/ws-{i:04}.yaml"))
                .collect();
            assert_eq!(files, expected, "{:?}", report.diagnostics);
            assert!(
                report
                    .diagnostics
                    .iter()
                    .all(|d| d.message.contains("did you mean `replicas`")),
                "{:?}",
                report.diagnostics
            );
        }
    }

    /// Issue 19 (a one-workspace pull request planned in milliseconds): a
    /// load focused on one workspace ([`Repository::focus`]) finds for it
    /// exactly what a whole load finds (its definition merged across
    /// layers and inline patches, its problems, those of the environment),
    /// reads no unrelated workspace, and does read those it can collide
    /// with: a manifest's namespace, a shared namespace.
    #[test]
    fn a_focused_load_checks_a_workspace_as_a_whole_load_does() {
        let base_env = "apiVersion: tenantsync.io/v1alpha1
kind: Environment
metadata: {name: base}
spec:
  abstract: true
  ingress: { domain: dev.example.com }
  images:
    fhir: { repository: example.azurecr.io/fhir-server, tag: '4.3.1' }
    dicom: { repository: example.azurecr.io/dicom-server, tag: '2.1.0' }
    dicomCast: { repository: example.azurecr.io/dicom-cast, tag: '2.1.0' }
";
        let dev_env = |template: &str| {
            format!(
                "apiVersion: tenantsync.io/v1alpha1
kind: Environment
metadata: {{name: dev}}
spec:
  base: base
  namespaceTemplate: \"{template}\"
  patches:
    - metadata: {{name: c}}
      spec:
        fhirServices:
          - {{name: main, replicas: 3}}
    - metadata: {{name: nowhere}}
"
            )
        };
        let cast = |name: &str, fhir: &str| {
            format!(
                "apiVersion: tenantsync.io/v1alpha1
kind: WorkspacePatch
metadata: {{name: {name}}}
spec:
  dicomServices:
    - name: imaging
      dicomCast:
        fhirService: {fhir}
        tableEndpoint: https://cast.table.core.windows.net/
        identity: {{clientId: 5c2b9d63-0a1e-4f2b-8c94-3d6f8e0a2c21}}
"
            )
            .into_bytes()
        };
        let manifest = |name: &str| {
            format!(
                "apiVersion: v1
kind: ConfigMap
metadata: {{name: {name}, namespace: e-dev}}
data: {{a: b}}
"
            )
        };
        let tree = |template: &str| {
            let mut tree = SourceTree::new();
            for (path, bytes) in [
                ("base/environment.yaml", base_env.as_bytes().to_vec()),
                ("dev/environment.yaml", dev_env(template).into_bytes()),
                // a: defined in base, its dicomCast (patched in dev) names
                // base's FHIR service.
                ("base/workspaces/a.yaml", workspace("a", false)),
                ("dev/workspaces/a.cast.yaml", cast("a", "main")),
                ("dev/workspaces/b.yaml", workspace("b", true)),
                ("dev/workspaces/c.yaml", workspace("c", false)),
                ("dev/workspaces/d.yaml", workspace("d", false)),
                ("dev/workspaces/d.cast.yaml", cast("d", "records")),
                ("dev/workspaces/e.yaml", workspace("e", false)),
                (
                    "dev/resources/config.yaml",
                    manifest("settings").into_bytes(),
                ),
            ] {
                tree.insert(&format!("environments/{path}"), bytes);
            }
            tree
        };
        let only = |p: &Partial, ws: &str| {
            let defined: Vec<&Workspace> = p
                .environment
                .workspaces
                .iter()
                .filter(|w| w.metadata.name == ws)
                .collect();
            (
                format!("{defined:?}"),
                p.workspace_errors.get(ws).cloned(),
                p.environment_errors.clone(),
            )
        };
        let tree = tree("{workspace}-{environment}");
        let whole = load(&tree).resolve_partial("dev");
        assert!(whole.environment_errors.is_empty(), "{whole:?}");
        assert_eq!(held(&whole), ["b", "d", "nowhere"], "{whole:?}");
        let names = load_focused(&tree, &BTreeSet::new());
        assert_eq!(
            names.chain_of("dev"),
            Some(vec!["dev".into(), "base".into()])
        );
        for ws in ["a", "b", "c", "d", "e", "gone"] {
            let selected = BTreeSet::from([ws.to_string()]);
            let focus = names.focus("dev", &selected).expect("focus");
            // e's namespace is the manifest's: it is read with any selection.
            assert_eq!(focus, BTreeSet::from([ws.to_string(), "e".to_string()]));
            let focused = load_focused(&tree, &focus).resolve_partial("dev");
            assert_eq!(only(&focused, ws), only(&whole, ws), "{ws}");
            // Nothing unrelated is read: no other workspace is defined or
            // held (`nowhere`: an inline patch of environment.yaml).
            let read: BTreeSet<&str> = focused
                .environment
                .workspaces
                .iter()
                .map(|w| w.metadata.name.as_str())
                .chain(held(&focused))
                .filter(|w| *w != "nowhere")
                .collect();
            assert!(
                read.iter().all(|w| focus.contains(*w)),
                "{ws}: read {read:?}, focus {focus:?}"
            );
            assert_eq!(
                load_unfocused(&tree)
                    .read_workspaces(Some(&focus))
                    .unread("dev"),
                ["a", "b", "c", "d", "e"]
                    .into_iter()
                    .filter(|w| !focus.contains(*w))
                    .map(str::to_string)
                    .collect::<BTreeSet<_>>(),
                "{ws}"
            );
        }
        // d's dicomCast names a FHIR service d does not have: placed in the patch.
        let d = &whole.workspace_errors["d"];
        assert!(
            d.iter()
                .any(|d| d.file == "environments/dev/workspaces/d.cast.yaml"
                    && d.message.contains("names FHIR service `records`")),
            "{d:?}"
        );
        // The manifest made one of e's objects: refused with any selection.
        let clash = tree_with(
            &tree,
            "dev/resources/config.yaml",
            manifest("fhir-main-config"),
        );
        let names = load_focused(&clash, &BTreeSet::new());
        let focus = names
            .focus("dev", &BTreeSet::from(["c".to_string()]))
            .expect("focus");
        let whole = load(&clash).resolve_partial("dev");
        let focused = load_focused(&clash, &focus).resolve_partial("dev");
        assert_eq!(focused.environment_errors, whole.environment_errors);
        assert!(
            whole.environment_errors.iter().any(|d| d
                .message
                .contains("is also rendered for FHIR service `main` of workspace `e`")),
            "{:?}",
            whole.environment_errors
        );
        // A template without {workspace}: every workspace shares the
        // namespace, so every one is read with the selection.
        let shared = tree_with(
            &tree,
            "dev/environment.yaml",
            dev_env("shared-{environment}"),
        );
        let names = load_focused(&shared, &BTreeSet::new());
        let focus = names
            .focus("dev", &BTreeSet::from(["c".to_string()]))
            .expect("focus");
        assert_eq!(focus.len(), 5, "{focus:?}");
        let whole = load(&shared).resolve_partial("dev");
        let focused = load_focused(&shared, &focus).resolve_partial("dev");
        assert_eq!(only(&focused, "c"), only(&whole, "c"));
        assert!(
            whole.workspace_errors["c"].iter().any(|d| d
                .message
                .contains("both render into namespace `shared-dev`")),
            "{:?}",
            whole.workspace_errors["c"]
        );
    }

    fn tree_with(tree: &SourceTree, path: &str, text: String) -> SourceTree {
        let mut out = SourceTree::new();
        for p in tree.paths() {
            out.insert(p, tree.get(p).unwrap_or_default().to_vec());
        }
        out.insert(&format!("environments/{path}"), text.into_bytes());
        out
    }

    /// Review of issue 19: a focused load refused what a whole load
    /// accepted. dev's base `lib` has no environment.yaml and two workspace
    /// files, one broken: the whole load reported only the broken one (a
    /// layer with workspace problems was not said to lack its
    /// environment.yaml), a load focused on the valid one, which skips the
    /// broken file, said the layer has none. Both say it now, alike.
    #[test]
    fn a_layer_without_environment_yaml_is_reported_alike_by_whole_and_focused_loads() {
        let mut tree = SourceTree::new();
        tree.insert(
            "environments/dev/environment.yaml",
            ENVIRONMENT
                .replace("spec:\n", "spec:\n  base: lib\n")
                .into_bytes(),
        );
        tree.insert(
            "environments/lib/workspaces/alpha.yaml",
            workspace("alpha", false),
        );
        tree.insert(
            "environments/lib/workspaces/broken.yaml",
            workspace("broken", true),
        );
        let whole = load(&tree).resolve_partial("dev");
        let missing = "layer `lib` has no environment.yaml";
        assert!(
            whole
                .environment_errors
                .iter()
                .any(|d| d.message == missing && d.file == "environments/lib/environment.yaml"),
            "{whole:?}"
        );
        for focus in [&["alpha"][..], &["broken"], &[]] {
            let focus: BTreeSet<String> = focus.iter().map(|w| w.to_string()).collect();
            let focused = load_focused(&tree, &focus).resolve_partial("dev");
            assert_eq!(
                focused.environment_errors, whole.environment_errors,
                "{focus:?}"
            );
        }
    }

    fn dev_tree(files: &[(&str, Vec<u8>)]) -> SourceTree {
        let mut tree = SourceTree::new();
        tree.insert("environments/dev/environment.yaml", ENVIRONMENT.into());
        for (path, bytes) in files {
            tree.insert(&format!("environments/dev/{path}"), bytes.clone());
        }
        tree
    }

    fn held(p: &Partial) -> Vec<&str> {
        p.workspace_errors.keys().map(String::as_str).collect()
    }

    /// Issue 13: a workspace's own mistake holds that workspace only.
    #[test]
    fn an_invalid_workspace_holds_only_itself() {
        let tree = dev_tree(&[
            ("workspaces/a.yaml", workspace("a", false)),
            ("workspaces/b.yaml", workspace("b", true)),
        ]);
        let p = load(&tree).resolve_partial("dev");
        assert!(
            p.environment_errors.is_empty(),
            "{:?}",
            p.environment_errors
        );
        assert_eq!(held(&p), ["b"]);
        let names: Vec<&str> = p
            .environment
            .workspaces
            .iter()
            .map(|w| w.metadata.name.as_str())
            .collect();
        assert_eq!(names, ["a"]);
        assert!(load(&tree).resolve("dev").is_err(), "resolve stays strict");
    }

    #[test]
    fn problems_of_the_environment_hold_all_of_it() {
        let mut tree = dev_tree(&[("workspaces/a.yaml", workspace("a", false))]);
        tree.insert(
            "environments/dev/environment.yaml",
            format!("{ENVIRONMENT}  ingres: {{}}\n").into_bytes(),
        );
        let p = load(&tree).resolve_partial("dev");
        assert!(!p.environment_errors.is_empty());
    }

    /// Hostile review D1b: a workspace file that is not YAML holds the
    /// workspace it is named after, not the environment.
    #[test]
    fn malformed_yaml_in_a_workspace_file_holds_only_that_workspace() {
        let tree = dev_tree(&[
            ("workspaces/a.yaml", workspace("a", false)),
            ("workspaces/b.yaml", b"a: [\n".to_vec()),
            ("workspaces/c.yaml", b"apiVersion: tenantsync.io/v1alpha1\nkind: Workspace\nmetadata: {name: 7}\nspec: {}\n".to_vec()),
            ("workspaces/d.yaml", b"apiVersion: tenantsync.io/v1alpha1\nkind: Workspce\nmetadata: {name: d}\nspec: {}\n".to_vec()),
        ]);
        let p = load(&tree).resolve_partial("dev");
        assert!(
            p.environment_errors.is_empty(),
            "{:?}",
            p.environment_errors
        );
        assert_eq!(held(&p), ["b", "c", "d"]);
        assert!(
            p.workspace_errors["b"][0]
                .message
                .starts_with("malformed YAML"),
            "{p:?}"
        );
        let names: Vec<&str> = p
            .environment
            .workspaces
            .iter()
            .map(|w| w.metadata.name.as_str())
            .collect();
        assert_eq!(names, ["a"]);
    }

    #[test]
    fn a_name_that_is_not_a_name_also_holds_the_workspace_its_file_is_named_after() {
        let tree = dev_tree(&[
            ("workspaces/a.yaml", workspace("a", false)),
            ("workspaces/woodgrove.yaml", workspace("Woodgrove", false)),
        ]);
        let p = load(&tree).resolve_partial("dev");
        assert!(
            p.environment_errors.is_empty(),
            "{:?}",
            p.environment_errors
        );
        assert_eq!(held(&p), ["woodgrove"]);
    }

    /// Hostile review D1a: a file edited to another workspace's name is the
    /// invalid one; it holds the workspace it is named after, and the
    /// workspace whose own file is fine goes on, in the same layer or
    /// across layers.
    #[test]
    fn a_file_declaring_another_workspaces_name_holds_its_own_not_the_other() {
        let mut base = dev_tree(&[]);
        base.insert(
            "environments/base/environment.yaml",
            b"apiVersion: tenantsync.io/v1alpha1\nkind: Environment\nmetadata: {name: base}\nspec: {abstract: true}\n".to_vec(),
        );
        base.insert(
            "environments/dev/environment.yaml",
            format!("{ENVIRONMENT}  base: base\n").into_bytes(),
        );
        for (woodgrove_at, sandbox_at) in [("dev", "dev"), ("base", "dev"), ("dev", "base")] {
            let mut tree = base.clone();
            tree.insert(
                &format!("environments/{woodgrove_at}/workspaces/woodgrove.yaml"),
                workspace("woodgrove", false),
            );
            tree.insert(
                &format!("environments/{sandbox_at}/workspaces/sandbox.yaml"),
                workspace("woodgrove", false),
            );
            let p = load(&tree).resolve_partial("dev");
            assert!(p.environment_errors.is_empty(), "{p:?}");
            assert_eq!(held(&p), ["sandbox"], "{p:?}");
            let error = &p.workspace_errors["sandbox"][0];
            assert_eq!(
                (error.file.as_str(), error.line, error.column),
                (
                    format!("environments/{sandbox_at}/workspaces/sandbox.yaml").as_str(),
                    4,
                    9
                ),
                "{error}"
            );
            let names: Vec<&str> = p
                .environment
                .workspaces
                .iter()
                .map(|w| w.metadata.name.as_str())
                .collect();
            assert_eq!(names, ["woodgrove"]);
        }
        // A second Workspace of one name in its own file, in a layer above:
        // that workspace's own file, so that workspace is held.
        let mut tree = base.clone();
        for layer in ["base", "dev"] {
            tree.insert(
                &format!("environments/{layer}/workspaces/woodgrove.yaml"),
                workspace("woodgrove", false),
            );
        }
        tree.insert(
            "environments/dev/workspaces/sandbox.yaml",
            workspace("sandbox", false),
        );
        let p = load(&tree).resolve_partial("dev");
        assert_eq!(held(&p), ["woodgrove"], "{p:?}");
        assert_eq!(p.environment.workspaces.len(), 1);
    }

    /// Hostile review D4: a setting of the wrong type is the one error
    /// reported; the rules that need it are not run on defaults.
    #[test]
    fn a_setting_of_the_wrong_type_is_the_only_error_reported() {
        for bad in [
            "  ingress: { domain: dev.example.com, tlsSecretName: 5 }\n",
            "  ingress: { domain: [] }\n",
            "  ingress: { domain: dev.example.com }\n  syncPolicy: { prune: [] }\n",
            "  ingress: { domain: dev.example.com }\n  namespaceTemplate: []\n",
        ] {
            let env = ENVIRONMENT.replace("  ingress: { domain: dev.example.com }\n", bad);
            let mut tree = dev_tree(&[("workspaces/a.yaml", workspace("a", false))]);
            tree.insert("environments/dev/environment.yaml", env.into_bytes());
            let report = load(&tree).validate(&[]);
            assert_eq!(
                report.diagnostics.len(),
                1,
                "{bad}: {:?}",
                report.diagnostics
            );
            assert_eq!(
                report.diagnostics[0].file, "environments/dev/environment.yaml",
                "{bad}: {:?}",
                report.diagnostics
            );
        }
    }

    #[test]
    fn ownership_patterns_pointers_and_kinds_are_checked_where_written() {
        let env = format!(
            "{ENVIRONMENT}  ownership:\n    revert: [\"[\"]\n    ignore:\n      - kinds: [Nosuch, Deployment]\n        paths: [\"/spec/x~2\", \"/a~0b~1c\"]\n        managers: [\"hpa?\"]\n"
        );
        let mut tree = dev_tree(&[("workspaces/a.yaml", workspace("a", false))]);
        tree.insert("environments/dev/environment.yaml", env.into_bytes());
        let report = load(&tree).validate(&[]);
        let found: Vec<(u32, u32, &str)> = report
            .diagnostics
            .iter()
            .map(|d| (d.line, d.column, d.pointer.as_deref().unwrap_or_default()))
            .collect();
        assert_eq!(
            found,
            [
                (10, 14, "/spec/ownership/revert/0"),
                (12, 17, "/spec/ownership/ignore/0/kinds/0"),
                (13, 17, "/spec/ownership/ignore/0/paths/0"),
                (14, 20, "/spec/ownership/ignore/0/managers/0"),
            ],
            "{:?}",
            report.diagnostics
        );
        // A kind a resources/ manifest declares (here: a CRD's) is known.
        let env = format!(
            "{ENVIRONMENT}  ownership:\n    ignore:\n      - kinds: [Widget]\n        paths: [/spec]\n"
        );
        let mut tree = dev_tree(&[
            ("workspaces/a.yaml", workspace("a", false)),
            (
                "resources/crd.yaml",
                b"apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata: {name: widgets.example.com}\nspec: {names: {kind: Widget}}\n".to_vec(),
            ),
        ]);
        tree.insert("environments/dev/environment.yaml", env.into_bytes());
        let report = load(&tree).validate(&[]);
        assert!(
            report
                .diagnostics
                .iter()
                .all(|d| !d.message.contains("Widget")),
            "{:?}",
            report.diagnostics
        );
    }

    #[test]
    fn namespaces_follow_the_merged_workspaces_and_template() {
        let mut tree = dev_tree(&[
            ("workspaces/a.yaml", workspace("a", false)),
            ("workspaces/b.yaml", workspace("b", false)),
        ]);
        tree.insert(
            "environments/qa/environment.yaml",
            b"apiVersion: tenantsync.io/v1alpha1\nkind: Environment\nmetadata: {name: qa}\nspec:\n  base: dev\n  namespaceTemplate: 't-{workspace}'\n  patches:\n    - {metadata: {name: b}, $patch: delete}\n".to_vec(),
        );
        let repo = load(&tree);
        let names = |env: &str| -> Vec<(String, String)> {
            repo.namespaces(env)
                .into_iter()
                .map(|(ns, (ws, _))| (ns, ws))
                .collect()
        };
        assert_eq!(
            names("dev"),
            [
                ("a-dev".to_string(), "a".to_string()),
                ("b-dev".into(), "b".into())
            ]
        );
        assert_eq!(names("qa"), [("t-a".to_string(), "a".to_string())]);
        assert_eq!(
            repo.namespaces("qa")["t-a"].1,
            "environments/dev/workspaces/a.yaml:4:9"
        );
    }

    #[test]
    fn sync_mode_is_inherited_along_the_base_chain_and_a_bad_one_is_placed() {
        use crate::declare::model::SyncMode;
        let manual = ENVIRONMENT.replace(
            "  ingress: { domain: dev.example.com }\n",
            "  ingress: { domain: dev.example.com }\n  syncPolicy: { mode: manual }\n",
        );
        let mut tree = dev_tree(&[("workspaces/a.yaml", workspace("a", false))]);
        tree.insert("environments/dev/environment.yaml", manual.into_bytes());
        let qa = |mode: &str| {
            format!(
                "apiVersion: tenantsync.io/v1alpha1\nkind: Environment\nmetadata: {{name: qa}}\nspec:\n  base: dev\n{mode}"
            )
            .into_bytes()
        };
        tree.insert("environments/qa/environment.yaml", qa(""));
        let repo = load(&tree);
        let mode = |env: &str| repo.resolve(env).map(|e| e.settings.sync_policy.mode);
        assert_eq!(mode("dev"), Ok(SyncMode::Manual));
        assert_eq!(mode("qa"), Ok(SyncMode::Manual), "inherited from dev");
        tree.insert(
            "environments/qa/environment.yaml",
            qa("  syncPolicy: { mode: auto }\n"),
        );
        assert_eq!(
            load(&tree)
                .resolve("qa")
                .map(|e| e.settings.sync_policy.mode),
            Ok(SyncMode::Auto),
            "a layer overrides its base"
        );
        tree.insert(
            "environments/qa/environment.yaml",
            qa("  syncPolicy: { mode: manaul }\n"),
        );
        let report = load(&tree).validate(&["qa".to_string()]);
        assert_eq!(report.diagnostics.len(), 1, "{:?}", report.diagnostics);
        let d = &report.diagnostics[0];
        assert_eq!(
            (d.file.as_str(), d.line),
            ("environments/qa/environment.yaml", 6),
            "{d}"
        );
        assert!(d.to_string().contains("manaul"), "{d}");
    }

    #[test]
    fn rollback_and_its_health_deadline_are_inherited_and_a_bad_deadline_is_placed() {
        let policy = ENVIRONMENT.replace(
            "  ingress: { domain: dev.example.com }\n",
            "  ingress: { domain: dev.example.com }\n  syncPolicy: { rollback: true, healthDeadline: 10m }\n",
        );
        let mut tree = dev_tree(&[("workspaces/a.yaml", workspace("a", false))]);
        tree.insert("environments/dev/environment.yaml", policy.into_bytes());
        let qa = |extra: &str| {
            format!(
                "apiVersion: tenantsync.io/v1alpha1\nkind: Environment\nmetadata: {{name: qa}}\nspec:\n  base: dev\n{extra}"
            )
            .into_bytes()
        };
        tree.insert("environments/qa/environment.yaml", qa(""));
        let repo = load(&tree);
        let qa_policy = repo.resolve("qa").map(|e| e.settings.sync_policy).unwrap();
        assert!(qa_policy.rollback, "inherited from dev");
        assert_eq!(
            qa_policy.health_deadline(),
            std::time::Duration::from_secs(600)
        );
        assert_eq!(
            crate::declare::model::SyncPolicy::default().health_deadline(),
            std::time::Duration::from_secs(300),
            "default 5m"
        );
        tree.insert(
            "environments/qa/environment.yaml",
            qa("  syncPolicy: { rollback: false, healthDeadline: soon }\n"),
        );
        let repo = load(&tree);
        let report = repo.validate(&["qa".to_string()]);
        assert_eq!(report.diagnostics.len(), 1, "{:?}", report.diagnostics);
        let d = &report.diagnostics[0];
        assert_eq!(
            (d.file.as_str(), d.line, d.pointer.as_deref()),
            (
                "environments/qa/environment.yaml",
                6,
                Some("/spec/syncPolicy/healthDeadline")
            ),
            "{d}"
        );
        assert!(
            d.message.contains("`soon`") && d.message.contains("10m"),
            "{d}"
        );
    }

    #[test]
    fn a_bad_sync_window_is_refused_at_its_field() {
        let env = ENVIRONMENT.replace(
            "  ingress: { domain: dev.example.com }\n",
            "  ingress: { domain: dev.example.com }\n  syncPolicy:\n    windows:\n      - kind: allow\n        schedule: '0 0 * * 1'\n        duration: 3h\n      - kind: deny\n        schedule: '0 0 * * 1'\n        duration: 3h\n        timeZone: Mars/Olympus\n      - {kind: deny, schedule: 'every day', duration: 1h}\n",
        );
        let mut tree = dev_tree(&[("workspaces/a.yaml", workspace("a", false))]);
        tree.insert("environments/dev/environment.yaml", env.into_bytes());
        let report = load(&tree).validate(&[]);
        let got: Vec<(u32, String)> = report
            .diagnostics
            .iter()
            .map(|d| (d.line, d.pointer.clone().unwrap_or_default()))
            .collect();
        assert_eq!(
            got,
            [
                (15, "/spec/syncPolicy/windows/1/timeZone".to_string()),
                (16, "/spec/syncPolicy/windows/2/schedule".to_string()),
            ],
            "{:?}",
            report.diagnostics
        );
        assert!(report.diagnostics[0].message.contains("`Mars/Olympus`"));
    }

    #[test]
    fn a_rollout_is_inherited_and_bad_steps_or_durations_are_refused_where_written() {
        let with = |rollout: &str| {
            ENVIRONMENT.replace(
                "  ingress: { domain: dev.example.com }\n",
                &format!("  ingress: {{ domain: dev.example.com }}\n  syncPolicy:\n    rollout:\n{rollout}"),
            )
        };
        let mut tree = dev_tree(&[("workspaces/a.yaml", workspace("a", false))]);
        tree.insert(
            "environments/dev/environment.yaml",
            with("      steps: [10%, 50%, 100%]\n      pilot: [a]\n      pauseBetween: 10m\n")
                .into_bytes(),
        );
        tree.insert(
            "environments/qa/environment.yaml",
            b"apiVersion: tenantsync.io/v1alpha1\nkind: Environment\nmetadata: {name: qa}\nspec:\n  base: dev\n  syncPolicy:\n    rollout: { steps: [50%, 100%], healthDeadline: 5m }\n".to_vec(),
        );
        let repo = load(&tree);
        assert!(
            repo.validate(&[]).diagnostics.is_empty(),
            "{:?}",
            repo.validate(&[]).diagnostics
        );
        let qa = repo
            .resolve("qa")
            .ok()
            .and_then(|e| e.settings.sync_policy.rollout)
            .map(|r| r.checked());
        let Some(Ok(policy)) = qa else {
            panic!("qa's rollout: {qa:?}")
        };
        assert_eq!(policy.steps, [50, 100], "qa's own");
        assert_eq!(policy.pilot, ["a"], "inherited from dev");
        assert_eq!(policy.pause_between.as_secs(), 600, "inherited from dev");
        assert_eq!(policy.health_deadline.as_secs(), 300, "qa's own");
        for (rollout, line, pointer, says) in [
            (
                "      steps: [50%, 10%, 100%]\n",
                9,
                "/spec/syncPolicy/rollout/steps/1",
                "does not increase",
            ),
            (
                "      steps: [10%, 50%]\n",
                9,
                "/spec/syncPolicy/rollout/steps/1",
                "must be 100%",
            ),
            (
                "      steps: [100%]\n      pauseBetween: 3d\n",
                10,
                "/spec/syncPolicy/rollout/pauseBetween",
                "`3d`",
            ),
            (
                "      steps: [100%]\n      healthDeadline: 1s\n",
                10,
                "/spec/syncPolicy/rollout/healthDeadline",
                "from 10s to 24h",
            ),
            (
                "      steps: [0%, 100%]\n",
                9,
                "/spec/syncPolicy/rollout/steps/0",
                "",
            ),
        ] {
            tree.insert(
                "environments/dev/environment.yaml",
                with(rollout).into_bytes(),
            );
            let report = load(&tree).validate(&["dev".to_string()]);
            assert_eq!(
                report.diagnostics.len(),
                1,
                "{rollout}: {:?}",
                report.diagnostics
            );
            let d = &report.diagnostics[0];
            assert_eq!(d.file, "environments/dev/environment.yaml", "{d}");
            assert_eq!(d.line, line, "{rollout}: {d}");
            assert_eq!(d.pointer.as_deref(), Some(pointer), "{rollout}: {d}");
            assert!(d.message.contains(says), "{rollout}: {d}");
        }
    }

    /// Review of issue 16: an allow window on 30 February validated and
    /// never opened (the environment never synced), and six-field schedules
    /// passed though five are documented.
    #[test]
    fn a_window_that_never_opens_or_has_six_fields_is_refused() {
        for (schedule, says) in [
            ("0 0 30 2 *", "never fires"),
            ("0 0 0 * * 1", "has 6 fields"),
        ] {
            let window = model::SyncWindow {
                kind: model::WindowKind::Allow,
                schedule: schedule.into(),
                duration: "3h".into(),
                time_zone: None,
            };
            match window.checked() {
                Err(("schedule", why)) => assert!(why.contains(says), "{why}"),
                other => panic!("{schedule}: {:?}", other.map(|_| ())),
            }
        }
        // 29 February fires, every four years.
        let leap = model::SyncWindow {
            kind: model::WindowKind::Allow,
            schedule: "0 0 29 2 *".into(),
            duration: "3h".into(),
            time_zone: Some("Europe/Berlin".into()),
        };
        assert!(leap.checked().is_ok());
    }
}
