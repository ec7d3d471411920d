//! Command-line interface: raw arguments (`args`) → a command, one file
//! each (`validate`, `render`, `plan` and `drift`, `sync`, `status`,
//! `approve`, `run`), each running the pipeline and handing values to the printers.
//!
//! Imports: everything below it (the core, `source`, `cluster`,
//! `pipeline`, `daemon`); nothing imports it but `main`.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use clap::CommandFactory;

use crate::cluster::{Cluster, ClusterError};
use crate::declare::diag::Diagnostic;
use crate::pipeline::{self, DesiredState, Intake, Refused};
use crate::source;

mod approve;
mod args;
mod help;
mod plan;
mod render;
mod run;
mod status;
mod sync;
mod validate;

pub use args::{
    ApproveArgs, Cli, ClusterArgs, Command, GuardArgs, LiveArgs, LogFormat, PlanArgs, PlanOutput,
    RenderOutput, RunArgs, StatusArgs, SyncArgs, TrustArgs, ValidateOutput, parse_duration,
};
pub use help::VERSION;

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Validate {
            repo,
            envs,
            output,
            guard,
        } => validate::validate_cmd(&repo, &envs, output, &guard.operator(None)),
        Command::Render { repo, env, output } => render::render_cmd(&repo, &env, output),
        Command::Plan(args) => plan::live_cmd(
            &args.live,
            args.changed_since.as_deref(),
            crate::print::Verb::Plan,
            args.out.as_deref(),
        ),
        Command::Drift(args) => plan::live_cmd(&args, None, crate::print::Verb::Drift, None),
        Command::Sync(args) => sync::sync_cmd(&args),
        Command::Run(args) => run::run_cmd(args),
        Command::Status(args) => status::status_cmd(&args),
        Command::Approve(args) => approve::approve_cmd(&args),
        Command::Completions { shell } => completions_cmd(shell),
    }
}

fn completions_cmd(shell: clap_complete::Shell) -> anyhow::Result<ExitCode> {
    let mut command = Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, "tenantsync", &mut script);
    write_stdout(&String::from_utf8_lossy(&script))?;
    Ok(ExitCode::SUCCESS)
}

/// The environment's desired state (in scope only) read at `rev`, and the
/// digest of the files read (a folder's revision; only with `need_digest`:
/// without it, a plan of what changed since a revision leaves the files of
/// the workspaces it does not plan unread); or the validation errors
/// and broken guardrails (printed) and exit code 1. `sync`:
/// `Some(skip_invalid)` for sync, which may hold invalid workspaces (see
/// [`crate::sync::Scope`]) instead of failing the whole environment;
/// problems of the environment itself still do. plan and drift are strict.
/// `changed_since`: plan only the workspaces the files changed since that
/// revision reach (`plan --changed-since`).
pub(super) fn desired_state(
    args: &LiveArgs,
    rev: Option<String>,
    sync: Option<bool>,
    changed_since: Option<&str>,
    need_digest: bool,
) -> anyhow::Result<Result<(DesiredState, Option<String>), ExitCode>> {
    let auth = source::auth_from_env()?;
    let trust = args.trust.trust()?;
    let trust = trust.as_ref().map(|(t, v)| (t, v));
    let (tree, revision, changed) = match changed_since {
        None => {
            let (tree, revision) = source::read_trusted(&args.repo, rev.as_deref(), &auth, trust)?;
            (tree, revision, None)
        }
        Some(since) => {
            let context = || {
                format!(
                    "--changed-since {since} needs a revision of the Git repository {}",
                    source::git::redact(&args.repo)
                )
            };
            let (tree, revision, changed) = source::read_with_base(
                &args.repo,
                rev.as_deref(),
                since,
                &auth,
                trust,
                !need_digest,
            )
            .with_context(context)?;
            (tree, revision, Some(changed))
        }
    };
    let operator = args.guard.operator(None);
    let intake = Intake {
        hold_invalid: sync == Some(true),
        only: &args.workspaces,
        changed: changed.as_deref(),
        ..Intake::strict(&operator)
    };
    let refuse = |diags: &[Diagnostic], why: &str| {
        print_diagnostics(diags);
        eprintln!(
            "{} error(s){why}; the cluster was not contacted",
            diags.len()
        );
        Ok(Err(ExitCode::from(1)))
    };
    let refused = |refused: Refused| match refused {
        Refused::Invalid {
            diagnostics,
            workspaces_only,
        } => {
            let why = if workspaces_only && sync.is_some() {
                " (sync --skip-invalid applies the valid workspaces)"
            } else {
                ""
            };
            refuse(&diagnostics, why)
        }
        Refused::Guardrails(diagnostics) => refuse(&diagnostics, ""),
        Refused::Render(e) => Err(e.into()),
    };
    // The files left unread that the checks of this selection need.
    let mut tree = tree;
    let needed = pipeline::files_to_read(&tree, &args.env, &intake);
    if tree.has_deferred() {
        tracing::debug!(
            needed = needed.len(),
            "workspace files unchanged since --changed-since were left unread; reading those the planned workspaces are checked with"
        );
    }
    source::read_deferred(&args.repo, &mut tree, &needed)?;
    let digest = (!tree.has_deferred()).then(|| source::revision_of(&tree, None));
    let selected = match pipeline::select(tree, &args.env, &intake) {
        Ok(selected) => selected,
        Err(e) => return refused(e),
    };
    if !selected.unselected.is_empty() {
        eprintln!(
            "note: invalid workspace(s) not selected, left as they are: {}",
            selected.unselected.join(", ")
        );
    }
    match pipeline::desired_of(selected, revision.map(|r| r.commit), &intake) {
        Ok(mut state) => {
            for (ws, why) in &state.unselected_refused {
                for line in why {
                    eprintln!(
                        "note: workspace `{ws}` is not selected, left as it is; a whole plan and `tenantsync validate` refuse it: {line}"
                    );
                }
            }
            state.keep_in_scope();
            Ok(Ok((state, digest)))
        }
        Err(e) => refused(e),
    }
}

/// A selected workspace Git does not declare must be one the inventory
/// records (being offboarded); otherwise the name is a mistake, printed,
/// and exit code 1 before anything is written.
pub(super) async fn selection_known(
    cluster: &Cluster,
    desired: &DesiredState,
) -> Result<Result<(), ExitCode>, ClusterError> {
    let Some((ws, ns)) = pipeline::unrecorded(cluster, desired).await? else {
        return Ok(Ok(()));
    };
    eprintln!(
        "error: environment {} has no workspace `{ws}` (its workspaces: {}), and its inventory records nothing in namespace `{ns}`; nothing was changed",
        desired.name, desired.unresolved.known
    );
    Ok(Err(ExitCode::from(1)))
}

/// The guardrails only the cluster can judge ([`pipeline::check_scopes`]),
/// before anything is written; broken ones are printed and give exit code 1.
pub(super) async fn scopes_admitted(
    cluster: &Cluster,
    args: &LiveArgs,
    desired: &DesiredState,
) -> Result<Result<(), ExitCode>, ClusterError> {
    let Err(diags) = pipeline::check_scopes(cluster, &args.guard.operator(None), desired).await?
    else {
        return Ok(Ok(()));
    };
    print_diagnostics(&diags);
    eprintln!(
        "{} error(s); nothing was written to the cluster",
        diags.len()
    );
    Ok(Err(ExitCode::from(1)))
}

pub(super) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Writes to stdout; a closed pipe (`| head`) is not an error worth a message.
/// Writes to stdout through `write` (buffered); a reader that went away
/// (a closed pipe) is not an error.
pub(super) fn write_stdout_with(
    write: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<()>,
) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    match write(&mut out).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e).context("writing output"),
        _ => Ok(()),
    }
}

pub(super) fn write_stdout(text: &str) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e).context("writing output"),
        _ => Ok(()),
    }
}

pub(super) fn print_diagnostics(diags: &[Diagnostic]) {
    let stderr = std::io::stderr();
    let mut err = stderr.lock();
    for d in diags {
        let _ = writeln!(err, "{d}");
    }
}
