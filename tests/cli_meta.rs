//! What the binary says about itself: `--version` with the Git commit it
//! was built from, shell completion scripts, and long help a man page would
//! hold (examples, exit status, environment).

use std::process::{Command, Output};

fn tenantsync(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tenantsync"))
        .args(args)
        .output()
        .expect("run tenantsync")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

const SUBCOMMANDS: &[&str] = &[
    "validate",
    "render",
    "plan",
    "drift",
    "sync",
    "run",
    "status",
    "completions",
];

#[test]
fn version_names_the_package_version_and_the_commit() {
    let out = tenantsync(&["--version"]);
    assert_eq!(out.status.code(), Some(0));
    let version = stdout(&out);
    assert!(
        version.starts_with(&format!(
            "tenantsync {} (commit ",
            env!("CARGO_PKG_VERSION")
        )),
        "{version}"
    );
    // build.rs asks git (unless TENANTSYNC_GIT_COMMIT is set, as in the
    // container build); outside a Git checkout the commit is unknown.
    let expected = std::env::var("TENANTSYNC_GIT_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .map(|c| c.trim().to_string())
        .or_else(|| {
            Command::new("git")
                .args(["rev-parse", "HEAD"])
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| stdout(&o).trim().to_string())
        })
        .unwrap_or_else(|| "unknown".to_string());
    assert!(
        version
            .trim_end()
            .ends_with(&format!("(commit {expected})")),
        "{version} does not name the commit {expected}"
    );
    // Subcommands report the same.
    let sub = stdout(&tenantsync(&["plan", "--version"]));
    assert!(sub.contains(&format!("(commit {expected})")), "{sub}");
}

#[test]
fn completions_cover_every_subcommand_in_bash_zsh_and_fish() {
    for shell in ["bash", "zsh", "fish"] {
        let out = tenantsync(&["completions", shell]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{shell}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let script = stdout(&out);
        for sub in SUBCOMMANDS {
            assert!(script.contains(sub), "{shell} completion lacks {sub}");
        }
        // Options (fish writes them without the dashes) and their values.
        for word in ["detailed-exitcode", "leader-elect", "markdown"] {
            assert!(script.contains(word), "{shell} completion lacks {word}");
        }
    }
    // What each shell needs to load it.
    assert!(stdout(&tenantsync(&["completions", "bash"])).contains("complete -F _tenantsync"));
    assert!(stdout(&tenantsync(&["completions", "zsh"])).starts_with("#compdef tenantsync"));
    assert!(stdout(&tenantsync(&["completions", "fish"])).contains("complete -c tenantsync"));

    let out = tenantsync(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("possible values"));
}

#[test]
fn every_subcommand_has_long_help_with_examples_and_exit_status() {
    for sub in SUBCOMMANDS {
        let out = tenantsync(&[sub, "--help"]);
        assert_eq!(out.status.code(), Some(0), "{sub} --help");
        let help = stdout(&out);
        assert!(help.contains("Examples:"), "{sub} --help has no examples");
        assert!(
            help.contains("Exit status"),
            "{sub} --help has no exit status"
        );
        assert!(
            help.contains(&format!("tenantsync {sub}")),
            "{sub} --help shows no invocation of it"
        );
        // -h stays short.
        let short = stdout(&tenantsync(&[sub, "-h"]));
        assert!(
            !short.contains("Examples:"),
            "{sub} -h is not the short form"
        );
    }
    let top = stdout(&tenantsync(&["--help"]));
    for var in [
        "TENANTSYNC_KUBECONFIG",
        "TENANTSYNC_GIT_TOKEN",
        "TENANTSYNC_GIT_SSH_KEY",
        "XDG_CACHE_HOME",
        "NO_COLOR",
    ] {
        assert!(
            top.contains(var),
            "tenantsync --help does not explain {var}"
        );
    }
    let run = stdout(&tenantsync(&["run", "--help"]));
    for item in [
        "TENANTSYNC_WEBHOOK_SECRET",
        "/readyz",
        "/healthz",
        "--lease-name",
    ] {
        assert!(run.contains(item), "run --help does not explain {item}");
    }
}
