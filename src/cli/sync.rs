//! `tenantsync sync`: make the cluster match the environment, under the
//! environment's lock, and record the result on its inventory.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use super::args::{LiveArgs, PlanOutput, SyncArgs};
use super::{
    desired_state, print_diagnostics, runtime, scopes_admitted, selection_known, write_stdout,
};
use crate::cluster::Cluster;
use crate::cluster::execute::{self as cluster_sync, Progress, SyncError};
use crate::cluster::lock::{EnvLock, LockError};
use crate::declare::diag::Diagnostic;
use crate::declare::model::SyncMode;
use crate::pipeline::{self, Deletes, DesiredState, LivePlan, PlanOptions};
use crate::plan::contract::PlanFile;
use crate::print;
use crate::sync::SyncOptions;
use crate::sync::health::HealthOptions;
use crate::sync::report::SyncReport;
use crate::sync::windows;

pub(super) fn sync_cmd(args: &SyncArgs) -> anyhow::Result<ExitCode> {
    let saved = match &args.plan {
        Some(path) => match read_saved_plan(path, &args.live) {
            Ok(saved) => Some(saved),
            Err(message) => {
                eprintln!("error: {message}; nothing was changed");
                return Ok(ExitCode::from(1));
            }
        },
        None => None,
    };
    // A saved plan decides what is read: its revision, its workspaces.
    let planned_args;
    let (live_args, rev) = match &saved {
        Some(saved) => {
            planned_args = LiveArgs {
                workspaces: saved.file.options.workspaces.clone(),
                adopt: saved.file.options.adopt,
                ..args.live.clone()
            };
            let rev =
                args.live.rev.clone().or_else(|| {
                    is_commit(&saved.file.revision).then(|| saved.file.revision.clone())
                });
            (&planned_args, rev)
        }
        None => (&args.live, args.live.rev.clone()),
    };
    let (mut state, digest) =
        match desired_state(live_args, rev, Some(args.skip_invalid), None, true)? {
            Ok((state, Some(digest))) => (state, digest),
            Ok((_, None)) => anyhow::bail!(
                "cannot record the folder's revision: not every file of it was read; sync again"
            ),
            Err(code) => return Ok(code),
        };
    if let Some(saved) = &saved
        && let Err(message) = saved.matches(&state, &digest)
    {
        eprintln!("error: {message}; nothing was changed");
        return Ok(ExitCode::from(1));
    }
    let skipped = std::mem::take(&mut state.invalid);
    for (ws, diags) in &skipped {
        eprintln!(
            "skipped workspace {ws}: {} error(s); its objects are neither applied nor pruned:",
            diags.len()
        );
        print_diagnostics(diags);
    }
    // A sync of some workspaces only does not move the revision the
    // inventory records for the environment as a whole; a folder's revision
    // is the digest of its files, as the daemon's.
    if state.scope.only.is_some() {
        state.revision = None;
    }
    state.revision = state.revision.take().or(Some(digest));
    let mut options = state.sync_options(SyncOptions {
        prune: args.prune,
        dry_run: args.dry_run,
        force_recreate: args.force_recreate,
        allow_mass_prune: args.allow_mass_prune,
        prune_foreign: args.prune_foreign,
        ..SyncOptions::default()
    });
    // The sync windows bind a CLI sync too (a dry run writes nothing);
    // --ignore-windows is the emergency exit, and is recorded.
    let window = windows::verdict(&state.sync_policy.windows, jiff::Timestamp::now());
    let ignored_window = match &window {
        windows::Verdict::Closed(why) if !args.dry_run => {
            if !args.ignore_windows {
                eprintln!(
                    "error: nothing was changed: environment {} may not be synced now: {why} (syncPolicy.windows); wait for the window, or sync with --ignore-windows in an emergency (recorded as an Event)",
                    state.name
                );
                return Ok(ExitCode::from(1));
            }
            Some(why.clone())
        }
        _ => None,
    };
    let runtime = runtime()?;
    let cluster = runtime.block_on(Cluster::connect(
        &args.writes.apply(live_args.cluster.options()),
    ))?;
    if let Some(saved) = &saved {
        let here = runtime.block_on(cluster.identity())?;
        if let Err(message) = saved.file.check_cluster(here.as_ref()) {
            eprintln!(
                "error: {}: {message}; nothing was changed",
                saved.path.display()
            );
            return Ok(ExitCode::from(1));
        }
    }
    if let Err(code) = runtime.block_on(scopes_admitted(&cluster, live_args, &state))? {
        return Ok(code);
    }
    if let Err(code) = runtime.block_on(selection_known(&cluster, &state))? {
        return Ok(code);
    }
    // One writer per environment: the lock is taken before the inventory is
    // read, so the plan is computed under it (a dry run writes nothing and
    // takes none).
    let lock = if args.dry_run {
        None
    } else {
        match runtime.block_on(lock(&cluster, &state.name, args.lock_timeout)) {
            Ok(lock) => Some(lock),
            Err(LockError::Cluster(e)) => return Err(e.into()),
            Err(e) => {
                eprintln!("error: nothing was changed: {e}");
                return Ok(ExitCode::from(1));
            }
        }
    };
    // The windows again, under the lock: one may have closed while this
    // sync waited for it.
    let ignored_window = match (
        &lock,
        windows::verdict(&state.sync_policy.windows, jiff::Timestamp::now()),
    ) {
        (Some(_), windows::Verdict::Closed(why)) => {
            if !args.ignore_windows {
                if let Some(lock) = lock {
                    runtime.block_on(async {
                        let _ =
                            tokio::time::timeout(Duration::from_secs(5), lock.release(&cluster))
                                .await;
                    });
                }
                eprintln!(
                    "error: nothing was changed: environment {} may not be synced now: {why} (syncPolicy.windows; it closed while this sync waited for the lock); wait for the window, or sync with --ignore-windows in an emergency (recorded as an Event)",
                    state.name
                );
                return Ok(ExitCode::from(1));
            }
            Some(why)
        }
        _ => ignored_window,
    };
    if let Some(lock) = &lock {
        options.fence = options.fence.clone().with(lock.lost_check());
    }
    if let Some(saved) = &saved {
        // Exactly the plan: its deletes and no others, each write on the
        // condition that the object is as it was planned against.
        options.prune = saved.file.deletes() > 0;
        options.preconditions = Some(std::sync::Arc::new(saved.file.preconditions()));
    }
    let result = match runtime.block_on(execute(&cluster, &state, &options, args, saved.as_ref())) {
        Ok(result) => result,
        Err(Stale(objects)) => {
            if let Some(lock) = lock {
                runtime.block_on(async {
                    let _ =
                        tokio::time::timeout(Duration::from_secs(5), lock.release(&cluster)).await;
                });
            }
            let path = args.plan.as_deref().unwrap_or(std::path::Path::new(""));
            eprintln!(
                "error: the saved plan {} is stale: the cluster changed since it was made, so nothing was applied; make a new plan (tenantsync plan --out) and review it again. Changed since the plan:",
                path.display()
            );
            for line in objects {
                eprintln!("  {line}");
            }
            return Ok(ExitCode::from(1));
        }
    };
    // The result goes into the inventory's status (as the daemon's does),
    // then the lock is released; neither may hang on a dead API server.
    if let Some(lock) = lock {
        if let Some(why) = &ignored_window {
            let message = format!(
                "revision {} synced by `tenantsync sync --ignore-windows` ({}) although {why}",
                state.revision.as_deref().unwrap_or("(folder)"),
                lock.identity
            );
            let event = cluster.record_event(&state.name, "SyncWindowIgnored", &message);
            runtime.block_on(async {
                let _ = tokio::time::timeout(Duration::from_secs(5), event).await;
            });
        }
        runtime.block_on(record(&cluster, &state, lock, &result, &skipped));
    }
    let report = match result {
        Ok(report) => report,
        Err(SyncError::MassPrune(guard)) => {
            eprintln!("error: nothing was changed: {}", guard.message);
            return Ok(ExitCode::from(1));
        }
        Err(SyncError::Cluster(e)) => return Err(e.into()),
    };
    write_stdout(&report_text(&report, &skipped, live_args.output)?)?;
    if !skipped.is_empty() {
        let names: Vec<&str> = skipped.keys().map(String::as_str).collect();
        eprintln!(
            "error: {} invalid workspace(s) skipped: {} (the rest was synced)",
            names.len(),
            names.join(", ")
        );
    }
    Ok(if report.healthy() && skipped.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Takes the environment's lock, waiting up to `timeout` while another
/// writer holds it (and saying so).
async fn lock(cluster: &Cluster, name: &str, timeout: Duration) -> Result<EnvLock, LockError> {
    let me = crate::cluster::lock::cli_identity();
    cluster
        .lock_environment(name, &me, timeout, |holder| {
            eprintln!(
                "waiting for the lock of environment {name}: held by {holder} (up to {}s, --lock-timeout)",
                timeout.as_secs()
            )
        })
        .await
}

/// A saved plan the cluster moved away from: the objects that changed, one
/// line each.
struct Stale(Vec<String>);

/// Plans under the lock, applies with progress on stderr and, with
/// `--wait`, waits for health. With a saved plan, the plan made now must be
/// that one, or nothing is applied.
async fn execute(
    cluster: &Cluster,
    state: &DesiredState,
    options: &SyncOptions,
    args: &SyncArgs,
    saved: Option<&SavedPlan>,
) -> Result<Result<SyncReport, SyncError>, Stale> {
    let inventory = match cluster.read_inventory(&state.name).await {
        Ok(inventory) => inventory,
        Err(e) => return Ok(Err(e.into())),
    };
    // A sync needs the changes, not their diff text. A saved plan is
    // compared with the plan `plan` would show now.
    let plan_options = PlanOptions {
        diffs: false,
        deletes: if saved.is_some() {
            Deletes::Recorded
        } else {
            Deletes::RecordedOrAll
        },
        settle: Some(saved.map_or(args.live.adopt, |s| s.file.options.adopt)),
        health: false,
    };
    let LivePlan {
        plan,
        inventory,
        undeclared,
        ..
    } = match pipeline::plan_live(cluster, state, inventory, plan_options).await {
        Ok(live) => live,
        Err(e) => return Ok(Err(e.into())),
    };
    if let Some(saved) = saved {
        let stale = saved.file.stale(&plan);
        if !stale.is_empty() {
            return Err(Stale(stale));
        }
    }
    Ok(apply(cluster, state, options, args, plan, inventory, &undeclared).await)
}

/// Applies a plan made under the lock.
async fn apply(
    cluster: &Cluster,
    state: &DesiredState,
    options: &SyncOptions,
    args: &SyncArgs,
    plan: crate::plan::Plan,
    inventory: Option<crate::sync::inventory::Inventory>,
    undeclared: &[serde_json::Value],
) -> Result<SyncReport, SyncError> {
    let interactive =
        std::io::stderr().is_terminal() && !matches!(args.live.output, PlanOutput::Json);
    let total = plan.changes.iter().filter(|c| c.is_apply()).count() as u64;
    let bar = (interactive && total > 0).then(|| progress_bar(total));
    let report = cluster_sync::sync(
        cluster,
        &plan,
        &state.objects,
        inventory,
        undeclared,
        options,
        state.revision.clone(),
        &state.workspace_revisions,
        |event| show_progress(bar.as_ref(), event),
    )
    .await;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let mut report = report?;
    if args.wait && !args.dry_run && report.succeeded() {
        let options = HealthOptions {
            wait_for_ingress_address: !args.no_ingress_address_wait,
        };
        let health = crate::cluster::wait::wait_for_health(
            cluster,
            // All of the environment's objects, or a selection's (whose
            // counts would make a LIST of every workspace look cheap).
            state
                .scope
                .is_everything()
                .then_some(args.live.env.as_str()),
            &state.objects,
            &options,
            args.timeout,
            |r, h| {
                eprintln!("{:<11} {}: {}", h.status.to_string(), r.id(), h.message);
            },
        )
        .await?;
        report.health = Some(health);
    }
    Ok(report)
}

/// A plan file read for `sync --plan`.
struct SavedPlan {
    path: std::path::PathBuf,
    file: PlanFile,
}

/// Whether a saved plan's revision is a Git commit (else a folder's digest).
fn is_commit(revision: &str) -> bool {
    revision.len() == 40 && revision.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Reads and checks a plan file against the command line: its environment,
/// and the flags a saved plan decides itself.
fn read_saved_plan(path: &std::path::Path, args: &LiveArgs) -> Result<SavedPlan, String> {
    let shown = path.display();
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the plan file {shown}: {e}"))?;
    let file = PlanFile::parse(&text).map_err(|e| format!("{shown}: {e}"))?;
    if file.environment != args.env {
        return Err(format!(
            "{shown} is a plan of environment `{}`, not `{}`",
            file.environment, args.env
        ));
    }
    if !args.workspaces.is_empty() && args.workspaces != file.options.workspaces {
        return Err(format!(
            "{shown} was planned for workspaces [{}], not [{}] (--workspace): a saved plan applies its own selection, give no --workspace",
            file.options.workspaces.join(", "),
            args.workspaces.join(", ")
        ));
    }
    if args.adopt && !file.options.adopt {
        return Err(format!(
            "{shown} was planned without --adopt: make a new plan with --adopt to adopt objects"
        ));
    }
    Ok(SavedPlan {
        path: path.to_path_buf(),
        file,
    })
}

impl SavedPlan {
    /// Whether the desired state read for it is the planned one: the same
    /// revision, rendering the same objects.
    fn matches(&self, state: &DesiredState, digest: &str) -> Result<(), String> {
        let shown = self.path.display();
        let planned = &self.file.revision;
        let read = state.revision.as_deref().unwrap_or(digest);
        if read != planned {
            let what = if is_commit(planned) {
                "--rev names another revision"
            } else {
                "the folder's files changed since"
            };
            return Err(format!(
                "{shown} was planned at revision {planned}, but {read} was read ({what}); apply a plan of {read}: make one with `tenantsync plan --out`"
            ));
        }
        let differs = self.file.rendering_differs(&state.objects);
        if !differs.is_empty() {
            return Err(format!(
                "{shown} does not match what revision {planned} renders (the file was edited, or made by another tenantsync version or with other guardrails): {}",
                differs.join("; ")
            ));
        }
        Ok(())
    }
}

fn progress_bar(total: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} applied  {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

/// A sync's progress: on a bar on a terminal, a line per stage otherwise.
fn show_progress(bar: Option<&indicatif::ProgressBar>, event: Progress<'_>) {
    match (bar, event) {
        (Some(bar), Progress::Stage { wave, kind, .. }) => {
            bar.set_message(format!("wave {wave}: {kind}"))
        }
        (Some(bar), Progress::Applied { .. }) => bar.inc(1),
        // A conflict or a failure: the report below says which and why.
        (None, Progress::Applied { id, ok }) if !ok => {
            eprintln!("not applied: {id} (see below)")
        }
        (
            None,
            Progress::Stage {
                wave,
                kind,
                objects,
            },
        ) => {
            eprintln!(
                "applying wave {wave}: {objects} {}",
                print::kind_plural(kind, objects)
            );
        }
        (_, Progress::Pruned { id, ok }) => {
            eprintln!("{} {id}", if ok { "pruned" } else { "prune failed:" })
        }
        _ => {}
    }
}

/// Records the result on the inventory's status (unless the API server
/// stopped answering) and releases the lock, neither waiting long.
async fn record(
    cluster: &Cluster,
    state: &DesiredState,
    lock: EnvLock,
    result: &Result<SyncReport, SyncError>,
    skipped: &BTreeMap<String, Vec<Diagnostic>>,
) {
    // Nor once the lock is lost: another writer may hold the environment.
    let transport = matches!(result, Err(SyncError::Cluster(e)) if e.is_transport())
        || matches!(result, Ok(r) if r.aborted.is_some())
        || lock.lost();
    if !transport {
        let fields = cli_status_fields(result, state.revision.as_deref(), &lock.identity, skipped);
        let write = cluster.write_status(&state.name, &fields);
        if let Ok(Err(e)) = tokio::time::timeout(Duration::from_secs(5), write).await {
            eprintln!("warning: cannot record the sync's result in the inventory: {e}");
        }
        // A CLI sync of a manual environment is the operator's explicit act
        // (as Argo CD's manual sync): it needs no approval, and says so.
        if state.sync_policy.mode == SyncMode::Manual && result.is_ok() {
            let message = format!(
                "revision {} synced by `tenantsync sync` ({}) without an approval: syncPolicy.mode is manual, and a CLI sync is an operator's explicit act",
                state.revision.as_deref().unwrap_or("(folder)"),
                lock.identity
            );
            let event = cluster.record_normal_event(&state.name, "SyncedWithoutApproval", &message);
            let _ = tokio::time::timeout(Duration::from_secs(5), event).await;
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), lock.release(cluster)).await;
}

/// The report as `--output` asks; in JSON, with what `--skip-invalid` left
/// out and why.
fn report_text(
    report: &SyncReport,
    skipped: &BTreeMap<String, Vec<Diagnostic>>,
    output: PlanOutput,
) -> anyhow::Result<String> {
    Ok(match output {
        PlanOutput::Json => {
            let mut json = serde_json::to_value(report).context("encoding JSON")?;
            if !skipped.is_empty()
                && let Some(fields) = json.as_object_mut()
            {
                fields.insert(
                    "skipped".into(),
                    skipped
                        .iter()
                        .map(|(ws, diags)| serde_json::json!({"workspace": ws, "errors": diags}))
                        .collect(),
                );
            }
            serde_json::to_string_pretty(&json).context("encoding JSON")? + "\n"
        }
        PlanOutput::Text | PlanOutput::Markdown => print::sync_text(report),
    })
}

/// The status fields a CLI sync records on the inventory: result, revision,
/// time and who ran it.
fn cli_status_fields(
    result: &Result<SyncReport, SyncError>,
    revision: Option<&str>,
    by: &str,
    skipped: &BTreeMap<String, Vec<Diagnostic>>,
) -> BTreeMap<String, String> {
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let (mut status, mut error) = match result {
        Ok(r) if r.succeeded() => ("Synced", String::new()),
        Ok(r) => ("Failed", print::sync_errors(r)),
        Err(e) => ("Failed", e.to_string()),
    };
    // `--skip-invalid`: the environment is not in step with the revision
    // while a workspace of it is held.
    if !skipped.is_empty() {
        status = "Failed";
        let mut lines = vec![format!(
            "{} invalid workspace(s) skipped, held at their last applied state: {}",
            skipped.len(),
            skipped
                .keys()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        )];
        lines.extend(
            skipped
                .values()
                .flat_map(|d| d.iter().map(ToString::to_string)),
        );
        if !error.is_empty() {
            lines.push(error);
        }
        error = lines.join("\n");
    }
    let mut fields = std::collections::BTreeMap::from([
        ("syncStatus".to_string(), status.to_string()),
        (
            "lastSeenRevision".to_string(),
            revision.unwrap_or_default().to_string(),
        ),
        ("lastSyncAt".to_string(), now.clone()),
        ("lastSyncBy".to_string(), by.to_string()),
        ("lastError".to_string(), error.chars().take(2000).collect()),
        ("lastErrorAt".to_string(), String::new()),
        ("targetRevision".to_string(), String::new()),
        // No daemon holds the environment while a CLI sync runs: a heartbeat
        // left by one that stopped is not current any more.
        ("heartbeatAt".to_string(), String::new()),
        ("staleAfterSeconds".to_string(), String::new()),
    ]);
    if !error.is_empty() {
        fields.insert("lastErrorAt".into(), now);
    }
    fields
}
