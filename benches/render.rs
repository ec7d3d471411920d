//! In-process micro-benchmarks of the pure core at the size of issue 8's
//! targets: validate + render of 1,000 workspaces, and the plan of those
//! objects against themselves as live objects (the no-op plan's CPU part).
//!
//! The tree is built in memory from the templates `scripts/gen-workspaces`
//! uses (`benches/workspaces/`: FHIR only; FHIR + DICOM with a cast; FHIR +
//! an IoT connector with a FHIR destination), so no file system is read.
//!
//! `cargo bench --bench render`; the end-to-end figures against a cluster
//! come from `scripts/bench` (docs/benchmarks.md).

#![forbid(unsafe_code)]
// A benchmark fails by panicking, like a test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::Value;
use tenantsync::declare::repo::SourceTree;
use tenantsync::declare::validate;
use tenantsync::{object, plan, render};

const WORKSPACES: usize = 1_000;
const ENV: &str = "bench";

// The templates scripts/gen-workspaces writes its repositories from.
const BASE: &str = include_str!("workspaces/base-environment.yaml");
const ENVIRONMENT: &str = include_str!("workspaces/environment.yaml");
const FHIR: &str = include_str!("workspaces/fhir.yaml");
const DICOM: &str = include_str!("workspaces/dicom.yaml");
const IOT: &str = include_str!("workspaces/iot.yaml");

/// The repository `scripts/gen-workspaces 1000` writes, in memory.
fn tree(workspaces: usize) -> SourceTree {
    let mut tree = SourceTree::new();
    tree.insert("environments/base/environment.yaml", BASE.into());
    tree.insert(
        "environments/bench/environment.yaml",
        ENVIRONMENT.replace("@ENV@", ENV).into_bytes(),
    );
    for i in 0..workspaces {
        let ws = format!("ws-{i:05}");
        let mut text = FHIR.replace("@WS@", &ws);
        match i % 3 {
            1 => text.push_str(DICOM),
            2 => text.push_str(&IOT.replace("@WS@", &ws)),
            _ => {}
        }
        tree.insert(
            &format!("environments/bench/workspaces/{ws}.yaml"),
            text.into_bytes(),
        );
    }
    tree
}

/// What `tenantsync validate --env bench && tenantsync render --env bench`
/// compute, minus reading files and printing.
fn validate_and_render(tree: &SourceTree) -> Vec<object::Object> {
    let report = validate::load(tree).validate(&[ENV.to_string()]);
    assert!(report.diagnostics.is_empty(), "{:?}", report.diagnostics);
    let env = report.environments.first().expect("the bench environment");
    render::render(env).expect("renders")
}

fn benches(c: &mut Criterion) {
    let tree = tree(WORKSPACES);
    let objects = validate_and_render(&tree);
    let live: Vec<Value> = objects.iter().map(object::Object::value).collect();

    let mut group = c.benchmark_group("1000 workspaces");
    group.sample_size(20);
    group.bench_function("validate+render", |b| {
        b.iter(|| validate_and_render(black_box(&tree)));
    });
    group.bench_function("plan (no-op)", |b| {
        b.iter(|| {
            let plan = plan::plan(ENV, black_box(&objects), black_box(&live), None, None, 0);
            assert!(!plan.summary.has_changes());
            plan
        });
    });
    group.finish();
}

criterion_group!(render_benches, benches);
criterion_main!(render_benches);
