//! Golden files of `render` for every example environment.
//!
//! Regenerate with `TENANTSYNC_UPDATE_GOLDEN=1 cargo test --test tests golden`;
//! never silently: without the variable set to `1` (`0` or any other value
//! compares) a difference fails the test.

use std::path::PathBuf;

use tenantsync::declare::validate;
use tenantsync::{render, source::folder};

const ENVIRONMENTS: [&str; 5] = ["dev", "qa", "staging", "prod", "dr"];

#[test]
fn rendered_examples_match_golden_files() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let update = crate::support::update_golden();
    let tree = folder::read(&root).expect("read examples");
    let repo = validate::load(&tree);
    let mut failures = Vec::new();
    for env in ENVIRONMENTS {
        let resolved = repo
            .resolve(env)
            .unwrap_or_else(|d| panic!("{env} invalid: {d:?}"));
        let objects = render::render(&resolved).expect("render");
        let yaml = render::to_yaml(&objects);
        let path = root.join("tests/golden").join(format!("{env}.yaml"));
        if update {
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(&path, &yaml).expect("write golden");
            continue;
        }
        match std::fs::read_to_string(&path) {
            Ok(expected) if expected == yaml => {}
            Ok(expected) => {
                let diff = similar::TextDiff::from_lines(&expected, &yaml);
                failures.push(format!(
                    "{} differs from the rendered output:\n{}",
                    path.display(),
                    diff.unified_diff()
                        .context_radius(2)
                        .header("golden", "rendered")
                ));
            }
            Err(e) => failures.push(format!("{}: {e}", path.display())),
        }
    }
    assert!(
        failures.is_empty(),
        "{}\n(regenerate with TENANTSYNC_UPDATE_GOLDEN=1 if the change is intended)",
        failures.join("\n")
    );
}

/// Only `1` regenerates: `0`, empty or any other value compares.
#[test]
fn only_update_golden_1_regenerates() {
    use crate::support::update_golden_from;
    use std::ffi::OsStr;
    assert!(update_golden_from(Some(OsStr::new("1"))));
    for value in ["0", "", "true", "yes", "01", " 1"] {
        assert!(
            !update_golden_from(Some(OsStr::new(value))),
            "TENANTSYNC_UPDATE_GOLDEN={value:?} would regenerate"
        );
    }
    assert!(!update_golden_from(None));
}
