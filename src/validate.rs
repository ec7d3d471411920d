//! Loading, merging and checking a repository of declarations.
//!
//! `load` parses every declaration once; `Repository::resolve` builds one
//! environment from its base chain (settings, then each layer's workspaces,
//! then its patches) and checks the result against the schemas and the
//! platform's rules. Every problem is reported with its file and position.

use std::collections::BTreeMap;

use crate::diag::Diagnostic;
use crate::model::{self, Environment, Settings, Workspace};
use crate::overlay::{self, OverlayError};
use crate::render::names;
use crate::repo::{FileTable, SourceTree};
use crate::schema::{self, SchemaKind};
use crate::yaml::{self, FileId, Key, Limits, Node, Value};

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
    /// A workspace file could not be parsed, so a patch may miss its target
    /// for that reason alone: such follow-on errors are not reported.
    unreadable_workspace: bool,
    /// Diagnostics of this layer's files on their own.
    problems: Vec<Diagnostic>,
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
    load_with(tree, false)
}

/// [`load`] on all cores, for commands that only check or print
/// (`validate`, `render`): files are parsed and checked against their schema
/// in parallel, each on its own; what they add to their layers is then taken
/// in path order, so the result and the order of problems are the same.
pub fn load_on_all_cores(tree: &SourceTree) -> Repository {
    load_with(tree, true)
}

fn load_with(tree: &SourceTree, parallel: bool) -> Repository {
    let mut repo = Repository {
        problems: tree.problems().to_vec(),
        ..Repository::default()
    };
    let prefix = format!("{ENVIRONMENTS_DIR}/");
    let mut jobs: Vec<Job<'_>> = Vec::new();
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
        let role = if inner == ENVIRONMENT_FILE {
            Some(Role::Environment)
        } else if inner.starts_with(&format!("{WORKSPACES_DIR}/")) {
            Some(Role::Workspace)
        } else if inner.starts_with(&format!("{RESOURCES_DIR}/")) {
            Some(Role::Resource)
        } else {
            None
        };
        jobs.push(Job {
            layer_name,
            path,
            role,
            id: repo.files.add(path),
            bytes: tree.get(path).unwrap_or_default(),
        });
    }
    // A thread costs more than a few files do.
    let checked = if !parallel || jobs.len() < 64 {
        jobs.iter()
            .map(|job| check_file(job, &repo.files))
            .collect()
    } else {
        crate::par::map(&jobs, |job| check_file(job, &repo.files))
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
        let node = match parsed {
            Some(Ok(node)) => node,
            Some(Err(e)) => {
                layer.problems.push(repo.files.diag(e.pos, None, e.message));
                layer.unreadable_workspace |= matches!(role, Role::Workspace);
                continue;
            }
            None => continue,
        };
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
            Role::Workspace => match doc.node.get("kind").and_then(Node::as_str) {
                Some("Workspace") => layer.workspaces.push(doc),
                Some("WorkspacePatch") => layer.patches.push(doc),
                other => {
                    let pos = doc.node.get("kind").map_or(doc.node.pos, |k| k.pos);
                    let found = other.map_or_else(|| "none".to_string(), |k| format!("`{k}`"));
                    layer.problems.push(repo.files.diag(
                        pos,
                        Some("/kind".into()),
                        format!("files in workspaces/ have kind `Workspace` or `WorkspacePatch`, found {found}"),
                    ));
                }
            },
        }
    }
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
    repo
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
}

/// A file parsed (`None` when it is not read) and its own problems: its
/// schema's, or a manifest's.
type Checked = (Option<Result<Node, yaml::YamlError>>, Vec<Diagnostic>);

fn check_file(job: &Job<'_>, files: &FileTable) -> Checked {
    let Some(role) = job.role else {
        return (None, Vec::new());
    };
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
        }
        for name in &names {
            match self.resolve(name) {
                Ok(env) => report.environments.push(env),
                Err(d) => report.diagnostics.extend(d),
            }
        }
        report.diagnostics.sort();
        report.diagnostics.dedup();
        report
    }

    /// Builds one environment and checks it.
    pub fn resolve(&self, name: &str) -> Result<Environment, Vec<Diagnostic>> {
        let mut diags = self.problems.clone();
        // The repository's own problems first: "no environments found" says
        // more than "environment `dev` not found" outside a repository.
        let chain = self.chain(name).map_err(|e| {
            let mut all = self.problems.clone();
            all.extend(e);
            all
        })?;
        for layer_name in &chain {
            if let Some(layer) = self.layers.get(layer_name) {
                diags.extend(layer.problems.iter().cloned());
            }
        }
        let layers: Vec<&Layer> = chain
            .iter()
            .rev()
            .filter_map(|n| self.layers.get(n))
            .collect();
        let some_unreadable = layers.iter().any(|l| l.unreadable_workspace);

        // Settings: each layer's spec over the previous, minus per-layer keys.
        let mut settings = Node::new(Value::Map(Vec::new()), Default::default());
        let mut overlay_errors = Vec::new();
        for layer in &layers {
            if let Some(spec) = layer.env.as_ref().and_then(|d| d.node.get("spec")) {
                let own = without_keys(spec, &["base", "abstract", "patches"]);
                overlay::merge(&mut settings, &own, "/spec", &mut overlay_errors);
            }
        }

        // Workspaces: a layer's new workspaces, then its patches.
        let mut workspaces: BTreeMap<String, Node> = BTreeMap::new();
        for layer in &layers {
            for doc in &layer.workspaces {
                let Some((ws_name, name_node)) = doc_name(&doc.node) else {
                    continue;
                };
                if let Some(existing) = workspaces.get(&ws_name) {
                    let first = existing.pos;
                    diags.push(self.files.diag(
                        name_node.pos,
                        Some("/metadata/name".into()),
                        format!(
                            "workspace `{ws_name}` is already defined in {}; change it with kind: WorkspacePatch",
                            self.files.path(first.file)
                        ),
                    ));
                    continue;
                }
                workspaces.insert(ws_name, doc.node.clone());
            }
            for doc in &layer.patches {
                let Some((ws_name, name_node)) = doc_name(&doc.node) else {
                    continue;
                };
                let delete =
                    doc.node.get(overlay::PATCH_KEY).and_then(Node::as_str) == Some("delete");
                match workspaces.get_mut(&ws_name) {
                    None if some_unreadable => {}
                    None => diags.push(self.files.diag(
                        name_node.pos,
                        Some("/metadata/name".into()),
                        format!(
                            "patch targets workspace `{ws_name}`, which environment `{name}` (layers {}) does not define",
                            chain.join(" -> ")
                        ),
                    )),
                    Some(_) if delete => {
                        workspaces.remove(&ws_name);
                    }
                    Some(target) => {
                        if let Some(spec) = doc.node.get("spec") {
                            let wrapped = Node::new(
                                Value::Map(vec![(Key { name: "spec".into(), pos: doc.node.pos }, spec.clone())]),
                                doc.node.pos,
                            );
                            overlay::merge(target, &wrapped, "", &mut overlay_errors);
                        }
                    }
                }
            }
        }
        // Manifests: a layer's replace the same object of a layer below it.
        let mut resources: BTreeMap<(String, Option<String>, String), serde_json::Value> =
            BTreeMap::new();
        for layer in &layers {
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
                    diags.push(self.files.diag(
                        doc.node.pos,
                        None,
                        format!(
                            "{} {} is also declared in {} of the same layer",
                            key.0,
                            key.2,
                            self.files.path(first.file)
                        ),
                    ));
                }
                resources.insert(key, json);
            }
        }
        diags.extend(
            overlay_errors
                .into_iter()
                .map(|e: OverlayError| self.files.diag(e.pos, Some(e.pointer), e.message)),
        );

        let settings_json = settings.to_json();
        let settings: Settings = match serde_json::from_value(settings_json) {
            Ok(s) => s,
            Err(e) => {
                diags.push(self.files.diag(
                    settings.pos,
                    Some("/spec".into()),
                    format!("invalid settings: {e}"),
                ));
                Settings::default()
            }
        };
        let mut env = Environment {
            name: name.to_string(),
            chain: chain.clone(),
            settings,
            workspaces: Vec::new(),
            resources: resources.into_values().collect(),
        };

        for node in workspaces.values() {
            let schema_diags = schema::validate(SchemaKind::Workspace, node, &self.files);
            if !schema_diags.is_empty() {
                diags.extend(schema_diags);
                continue;
            }
            self.check_rules(&env, node, &mut diags);
            self.check_rendered_names(&env, node, &mut diags);
            match serde_json::from_value::<Workspace>(node.to_json()) {
                Ok(ws) => env.workspaces.push(ws),
                Err(e) => diags.push(self.files.diag(
                    node.pos,
                    None,
                    format!("invalid workspace: {e}"),
                )),
            }
        }
        self.check_namespaces(&env, &workspaces, &mut diags);
        if diags.is_empty() {
            Ok(env)
        } else {
            diags.sort();
            diags.dedup();
            Err(diags)
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
    fn check_rules(&self, env: &Environment, ws: &Node, diags: &mut Vec<Diagnostic>) {
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
        if (!fhir.is_empty() || !dicom.is_empty()) && s.ingress.domain.is_none() {
            diags.push(self.files.diag(
                ws.pos,
                None,
                format!(
                    "workspace `{ws_name}` exposes services but environment `{}` sets no spec.ingress.domain",
                    env.name
                ),
            ));
        }
        let images: [(&str, &[&Node], Option<&model::Image>, &str); 3] = [
            ("FHIR service", &fhir, s.images.fhir.as_ref(), "fhir"),
            ("DICOM service", &dicom, s.images.dicom.as_ref(), "dicom"),
            (
                "IoT connector",
                &iot,
                s.images.iot_connector.as_ref(),
                "iotConnector",
            ),
        ];
        for (what, items, default, key) in images {
            for item in items {
                self.require_image(env, item, item.get("image"), default, what, key, diags);
            }
        }
        for d in &dicom {
            if let Some(cast) = d.get("dicomCast") {
                self.require_image(
                    env,
                    cast,
                    cast.get("image"),
                    s.images.dicom_cast.as_ref(),
                    "DICOM-cast",
                    "dicomCast",
                    diags,
                );
            }
        }
        for c in &iot {
            if let Some(Value::Seq(dests)) = c.get("fhirDestinations").map(|n| &n.value) {
                for d in dests {
                    self.require_image(
                        env,
                        d,
                        None,
                        s.images.iot_fhir_destination.as_ref(),
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
        env: &Environment,
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
                    "no image for {what} `{name}`: set spec.images.{key} (repository and tag) in environment `{}` or `image` on the item",
                    env.name
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
        nodes: &BTreeMap<String, Node>,
        diags: &mut Vec<Diagnostic>,
    ) {
        let mut seen: BTreeMap<String, String> = BTreeMap::new();
        for (ws, node) in nodes {
            let ns = env.namespace_of(ws);
            if let Some(other) = seen.insert(ns.clone(), ws.clone()) {
                let pos = doc_name(node).map_or(node.pos, |(_, n)| n.pos);
                diags.push(self.files.diag(
                    pos,
                    Some("/metadata/name".into()),
                    format!("workspaces `{other}` and `{ws}` both render into namespace `{ns}`; check spec.namespaceTemplate"),
                ));
            }
        }
    }

    /// Rendered names must stay within Kubernetes limits (63 for names
    /// used as label values and DNS labels, 253 for ingress hosts).
    fn check_rendered_names(&self, env: &Environment, ws: &Node, diags: &mut Vec<Diagnostic>) {
        let Some((ws_name, name_node)) = doc_name(ws) else {
            return;
        };
        let ns = env.namespace_of(&ws_name);
        if let Err(why) = names::check_label(&ns) {
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
}
