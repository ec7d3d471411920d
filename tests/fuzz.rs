//! A structure-aware fuzzer of `validate` and `render` (issue 13: no input
//! aborts or hangs, ever).
//!
//! It takes the shipped `environments/`, replaces one value at a time (in
//! any file, at any depth) with `[]`, `{}`, `null`, scalars of the wrong
//! type, huge strings, deep nesting, `$patch` keys, duplicated named items
//! or unicode, and runs what `tenantsync validate` and `tenantsync render`
//! run on each: every case must finish within a few seconds, without a
//! panic, and an environment `validate` accepts must render. A fixed seed
//! gives the same cases on every run; `TENANTSYNC_FUZZ_CASES` sets how many
//! (a few hundred by default, thousands for a longer hunt) and
//! `TENANTSYNC_FUZZ_SEED` another seed. A few cases also go through the
//! binary. Each abort found has a regression test below, run through the
//! binary (an abort cannot be caught in process).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tenantsync::declare::repo::SourceTree;
use tenantsync::declare::validate;
use tenantsync::declare::yaml::{FileId, Limits, parse};
use tenantsync::render;

const DEFAULT_CASES: usize = 300;
const DEFAULT_SEED: u64 = 0x007e_4a17_5eed;
/// What one case may take (both commands, every environment), in a debug build.
const CASE_BUDGET: Duration = Duration::from_secs(5);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// splitmix64: a fixed seed gives the same cases everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// The shipped declarations, as JSON values by path.
fn shipped() -> BTreeMap<String, Value> {
    let mut files = BTreeMap::new();
    let mut stack = vec![root().join("environments")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let rel = path
                .strip_prefix(root())
                .expect("under the root")
                .to_string_lossy()
                .replace('\\', "/");
            let text = std::fs::read_to_string(&path).expect("read");
            let node = parse(FileId(0), &text, Limits::default()).expect("shipped files parse");
            files.insert(rel, node.to_json());
        }
    }
    files
}

/// Every JSON pointer of a value (the root included).
fn pointers(value: &Value, at: String, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                pointers(
                    v,
                    format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")),
                    out,
                );
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                pointers(v, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
    out.push(at);
}

fn nested(depth: usize, map: bool) -> Value {
    let mut v = json!("x");
    for _ in 0..depth {
        v = if map {
            json!({ "name": v })
        } else {
            json!([v])
        };
    }
    v
}

/// Replaces (or changes) the value at `pointer`; returns what was done.
fn mutate(doc: &mut Value, pointer: &str, rng: &mut Rng) -> String {
    let Some(target) = doc.pointer_mut(pointer) else {
        return "nothing".into();
    };
    let choice = rng.below(27);
    let (what, new): (&str, Option<Value>) = match choice {
        0 => ("[]", Some(json!([]))),
        1 => ("{}", Some(json!({}))),
        2 => ("null", Some(Value::Null)),
        3 => ("true", Some(json!(true))),
        4 => ("0", Some(json!(0))),
        5 => ("-1", Some(json!(-1))),
        6 => ("i64::MAX", Some(json!(i64::MAX))),
        7 => ("1e300", Some(json!(1e300))),
        8 => ("a number as a string", Some(json!("7"))),
        9 => ("an empty string", Some(json!(""))),
        10 => ("a huge string", Some(json!("a".repeat(200_000)))),
        11 => ("a long DNS label", Some(json!("a".repeat(70)))),
        12 => ("unicode", Some(json!("ünïcødé-名前-🙂\u{202e}"))),
        13 => ("deep list nesting (60)", Some(nested(60, false))),
        14 => ("deep map nesting (62)", Some(nested(62, true))),
        15 => ("nesting past the limit (200)", Some(nested(200, false))),
        16 => ("{$patch: delete}", Some(json!({"$patch": "delete"}))),
        17 => ("{name: []}", Some(json!({"name": []}))),
        18 => (
            "[{name: x, $patch: delete}]",
            Some(json!([{"name": "x", "$patch": "delete"}])),
        ),
        19 => (
            "a named list",
            Some(json!([{"name": "shared"}, {"name": "a-b"}])),
        ),
        24 => ("`shared`", Some(json!("shared"))),
        25 => ("`a-b`", Some(json!("a-b"))),
        26 => ("`main-config`", Some(json!("main-config"))),
        _ => ("", None),
    };
    if let Some(v) = new {
        *target = v;
        return what.to_string();
    }
    match (choice, target) {
        (20, Value::Object(map)) => {
            map.insert("$patch".into(), json!("delete"));
            "$patch: delete added".into()
        }
        (21, Value::Object(map)) => {
            map.insert("$patch".into(), json!("replace"));
            "$patch: replace added".into()
        }
        (22, Value::Array(items)) if !items.is_empty() => {
            let first = items[0].clone();
            items.push(first);
            "first item duplicated".into()
        }
        (23, Value::Object(map)) if !map.is_empty() => {
            let key = map
                .keys()
                .nth(rng.below(map.len()))
                .cloned()
                .unwrap_or_default();
            let v = map.remove(&key).unwrap_or(Value::Null);
            map.insert(format!("{key}x"), v);
            format!("key `{key}` renamed")
        }
        (_, target) => {
            *target = json!([]);
            "[]".into()
        }
    }
}

fn tree_of(files: &BTreeMap<String, Value>) -> SourceTree {
    let mut tree = SourceTree::new();
    for (path, value) in files {
        // JSON is YAML: the loader reads it the same way.
        tree.insert(path, serde_json::to_vec_pretty(value).expect("encode"));
    }
    tree
}

/// What `tenantsync validate` then `tenantsync render --env E` (every
/// environment) do, in process: the same library calls as src/cli/.
/// Whether every environment is valid, or what went wrong.
fn validate_and_render(tree: &SourceTree) -> Result<bool, String> {
    let repository = validate::load_on_all_cores(tree);
    let report = repository.validate(&[]);
    for d in &report.diagnostics {
        if d.file.is_empty() || d.line == 0 {
            return Err(format!("diagnostic without a position: {d}"));
        }
    }
    for name in repository.environment_names() {
        let Ok(env) = repository.resolve(&name) else {
            continue;
        };
        // Rendered identities are unique in an environment validate accepts.
        let objects = render::render(&env)
            .map_err(|e| format!("environment {name} is valid but does not render: {e}"))?;
        let mut seen = std::collections::BTreeSet::new();
        for o in &objects {
            let group = o.api_version.split_once('/').map_or("", |(g, _)| g);
            if !seen.insert((group.to_string(), o.id())) {
                return Err(format!("environment {name} renders {} twice", o.id()));
            }
        }
        let mut text = String::new();
        render::render_map_each(
            &env,
            |batch| {
                let mut t = String::new();
                for o in batch {
                    render::push_yaml(&mut t, o);
                }
                t
            },
            |t| {
                text.push_str(&t);
                Ok::<_, render::RenderError>(())
            },
        )
        .map_err(|e| format!("environment {name} is valid but does not render: {e}"))?;
        if !report.environments.iter().any(|e| e.name == name) {
            return Err(format!(
                "render accepts environment {name}, validate does not"
            ));
        }
    }
    Ok(report.diagnostics.is_empty())
}

fn case_count() -> usize {
    std::env::var("TENANTSYNC_FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(DEFAULT_CASES)
}

fn seed() -> u64 {
    std::env::var("TENANTSYNC_FUZZ_SEED")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(DEFAULT_SEED)
}

/// The cases: one mutation each, of one value of one file.
fn cases(n: usize, seed: u64) -> Vec<(String, String, BTreeMap<String, Value>)> {
    let base = shipped();
    let mut all: Vec<(String, String)> = Vec::new();
    for (path, value) in &base {
        let mut ps = Vec::new();
        pointers(value, String::new(), &mut ps);
        all.extend(ps.into_iter().map(|p| (path.clone(), p)));
    }
    let mut rng = Rng(seed);
    (0..n)
        .map(|_| {
            // Mostly one change; sometimes two or three, anywhere.
            let mut files = base.clone();
            let mut described = Vec::new();
            let mut first = String::new();
            let changes = [1, 1, 1, 2, 3][rng.below(5)];
            for _ in 0..changes {
                let (path, pointer) = all[rng.below(all.len())].clone();
                // Now and then a whole file: gone, or copied into another
                // layer (a workspace defined twice, a patch elsewhere).
                match rng.below(20) {
                    0 => {
                        files.remove(&path);
                        described.push(format!("{path} removed"));
                        continue;
                    }
                    1 => {
                        let layer = ["base", "dev", "qa", "staging", "prod", "dr"][rng.below(6)];
                        let rest = path.splitn(3, '/').nth(2).unwrap_or("environment.yaml");
                        let target = format!("environments/{layer}/{rest}");
                        if let Some(doc) = files.get(&path).cloned() {
                            files.insert(target.clone(), doc);
                        }
                        described.push(format!("{path} copied to {target}"));
                        continue;
                    }
                    _ => {}
                }
                let what = files
                    .get_mut(&path)
                    .map(|doc| mutate(doc, &pointer, &mut rng))
                    .unwrap_or_default();
                described.push(format!("{path} at `{pointer}`: {what}"));
                if first.is_empty() {
                    first = path;
                }
            }
            (described.join("; "), first, files)
        })
        .collect()
}

#[test]
fn fuzz_validate_and_render_never_panic_nor_hang() {
    let (n, seed) = (case_count(), seed());
    let mut failures = Vec::new();
    let mut valid = 0;
    for (i, (description, _, files)) in cases(n, seed).into_iter().enumerate() {
        let tree = tree_of(&files);
        let started = Instant::now();
        let outcome = std::panic::catch_unwind(|| validate_and_render(&tree));
        let took = started.elapsed();
        let problem = match outcome {
            Err(_) => Some("panicked".to_string()),
            Ok(Err(e)) => Some(e),
            Ok(Ok(_)) if took > CASE_BUDGET => Some(format!("took {took:?}")),
            Ok(Ok(true)) => {
                valid += 1;
                None
            }
            Ok(Ok(false)) => None,
        };
        if let Some(p) = problem {
            failures.push(format!("case {i} (seed {seed}): {description}: {p}"));
        }
    }
    // Both paths are exercised: mutations that stay valid (render runs)
    // and mutations validate refuses.
    eprintln!("{valid} of {n} fuzz cases valid (seed {seed})");
    assert!(
        n < 50 || (valid > n / 20 && valid < n - n / 20),
        "{valid} of {n} valid"
    );
    assert!(
        failures.is_empty(),
        "{} of {n} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn write_tree(files: &BTreeMap<String, Value>, dir: &Path) {
    for (path, value) in files {
        let target = dir.join(path);
        std::fs::create_dir_all(target.parent().expect("parent")).expect("mkdir");
        std::fs::write(target, serde_json::to_vec_pretty(value).expect("encode")).expect("write");
    }
}

/// Runs the binary; it must exit 0 or 1 within 10 s and print no panic.
fn run_binary(args: &[&str], repo: &Path) -> (i32, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tenantsync"))
        .args(args)
        .arg("--repo")
        .arg(repo)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tenantsync");
    // stderr is read while the child runs: a long report must not fill the
    // pipe and pass for a hang.
    let mut pipe = child.stderr.take();
    let reader = std::thread::spawn(move || {
        use std::io::Read;
        let mut stderr = String::new();
        if let Some(e) = pipe.as_mut() {
            let _ = e.read_to_string(&mut stderr);
        }
        stderr
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("tenantsync {args:?} ran over 10 s on {}", repo.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = reader.join().unwrap_or_default();
    let code = status.code().unwrap_or(-1);
    assert!(
        code == 0 || code == 1,
        "tenantsync {args:?} exited with {status} on {}:\n{stderr}",
        repo.display()
    );
    assert!(
        !stderr.contains("panicked") && !stderr.contains("overflow"),
        "tenantsync {args:?}:\n{stderr}"
    );
    (code, stderr)
}

/// A few of the same cases through the real binary.
#[test]
fn fuzz_cases_through_the_binary_exit_0_or_1() {
    for (description, _, files) in cases(6, seed() ^ 1) {
        let dir = tempfile::tempdir().expect("tempdir");
        write_tree(&files, dir.path());
        eprintln!("case: {description}");
        run_binary(&["validate"], dir.path());
        run_binary(&["render", "--env", "prod"], dir.path());
    }
}

/// A copy of the shipped examples with `edit` applied to one file's text.
fn repo_with(path: &str, edit: impl FnOnce(&str) -> String) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    copy_dir(
        &root().join("environments"),
        &dir.path().join("environments"),
    );
    let target = dir.path().join(path);
    let text = std::fs::read_to_string(&target).unwrap_or_default();
    std::fs::create_dir_all(target.parent().expect("parent")).expect("mkdir");
    std::fs::write(&target, edit(&text)).expect("write");
    dir
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create dir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("dir entry");
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy file");
        }
    }
}

/// Both commands on the repository, through the binary: exit 0 or 1 (an
/// abort is 134), no panic. Returns validate's exit code and stderr.
fn no_abort(repo: &Path) -> (i32, String) {
    for env in ["dev", "qa", "staging", "prod", "dr"] {
        run_binary(&["render", "--env", env], repo);
    }
    run_binary(&["validate"], repo)
}

#[test]
fn empty_patches_list_in_environment_yaml_does_not_abort() {
    let repo = repo_with("environments/prod/environment.yaml", |t| {
        let cut = t.find("  patches:").map_or(t.len(), |i| i);
        format!("{}  patches: []\n", &t[..cut])
    });
    let (code, stderr) = no_abort(repo.path());
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn empty_cors_origins_in_a_prod_patch_does_not_abort() {
    let repo = repo_with("environments/prod/workspaces/contoso.yaml", |_| {
        "apiVersion: tenantsync.io/v1alpha1\nkind: WorkspacePatch\nmetadata: {name: contoso}\nspec:\n  fhirServices:\n    - name: main\n      cors: {origins: []}\n".into()
    });
    let (code, stderr) = no_abort(repo.path());
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn empty_dicom_services_list_does_not_abort() {
    let repo = repo_with("environments/prod/workspaces/contoso.yaml", |_| {
        "apiVersion: tenantsync.io/v1alpha1\nkind: WorkspacePatch\nmetadata: {name: contoso}\nspec:\n  dicomServices: []\n".into()
    });
    let (code, stderr) = no_abort(repo.path());
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn empty_template_in_a_patch_adding_an_iot_connector_does_not_abort() {
    let repo = repo_with("environments/prod/workspaces/contoso.yaml", |_| {
        "apiVersion: tenantsync.io/v1alpha1\nkind: WorkspacePatch\nmetadata: {name: contoso}\nspec:\n  iotConnectors:\n    - name: extra\n      identity: {clientId: 6d3cae74-1b2f-4a3c-9da5-4e7a9f1b3d32}\n      ingestionEndpointConfiguration: {eventHubName: hub, fullyQualifiedEventHubNamespace: extraingest.servicebus.windows.net}\n      deviceMapping: {content: {templateType: CollectionContent, template: []}}\n".into()
    });
    // Since issue 17 an empty template is refused (it maps nothing), where
    // it is written; still no abort.
    let (code, stderr) = no_abort(repo.path());
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.starts_with("environments/prod/workspaces/contoso.yaml:9:76: error: /spec/iotConnectors/1/deviceMapping/content/template: an empty template maps nothing"),
        "{stderr}"
    );
    assert!(stderr.ends_with("1 error(s)\n"), "{stderr}");
}

#[test]
fn a_value_of_environment_yaml_replaced_with_an_empty_list_or_name_list_does_not_abort() {
    for replacement in ["[]", "{name: []}"] {
        let repo = repo_with("environments/prod/environment.yaml", |_| {
            format!(
                "apiVersion: tenantsync.io/v1alpha1\nkind: Environment\nmetadata: {{name: prod}}\nspec:\n  base: base\n  ingress: {replacement}\n  images: {replacement}\n  defaults: {replacement}\n  syncPolicy: {replacement}\n"
            )
        });
        let (code, stderr) = no_abort(repo.path());
        assert_eq!(code, 1, "{stderr}");
    }
}

/// An alias chain nesting anchors deeper and deeper: refused at parse time
/// (else every walk over the document would risk the stack).
#[test]
fn an_alias_chain_past_the_depth_limit_is_refused_not_an_abort() {
    let repo = repo_with("environments/dev/workspaces/deep.yaml", |_| {
        let mut t = String::from(
            "apiVersion: tenantsync.io/v1alpha1\nkind: Workspace\nmetadata: {name: deep}\nx0: &a0 [[[[[[[[x]]]]]]]]\n",
        );
        for i in 1..200 {
            t.push_str(&format!("x{i}: &a{i} [[[[[[[[*a{}]]]]]]]]\n", i - 1));
        }
        t
    });
    let (code, stderr) = no_abort(repo.path());
    assert_eq!(code, 1);
    assert!(
        stderr.contains("nesting deeper than 64 levels (through an alias)"),
        "{stderr}"
    );
}
