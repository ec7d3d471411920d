//! `tenantsync sync`: make the cluster match the environment, under the
//! environment's lock, and record the result on its inventory.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use super::args::{PlanOutput, SyncArgs};
use super::{
    desired_state, print_diagnostics, runtime, scopes_admitted, selection_known, write_stdout,
};
use crate::cluster::Cluster;
use crate::cluster::execute::{self as cluster_sync, Progress, SyncError};
use crate::cluster::lock::{EnvLock, LockError};
use crate::declare::diag::Diagnostic;
use crate::pipeline::{self, Deletes, DesiredState, LivePlan, PlanOptions};
use crate::print;
use crate::sync::SyncOptions;
use crate::sync::health::HealthOptions;
use crate::sync::report::SyncReport;

pub(super) fn sync_cmd(args: &SyncArgs) -> anyhow::Result<ExitCode> {
    let live_args = &args.live;
    let (mut state, digest) = match desired_state(
        live_args,
        live_args.rev.clone(),
        Some(args.skip_invalid),
        None,
    )? {
        Ok(desired) => desired,
        Err(code) => return Ok(code),
    };
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
    let runtime = runtime()?;
    let cluster = runtime.block_on(Cluster::connect(&live_args.cluster.options()))?;
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
    options.lock_lost = lock.as_ref().map(EnvLock::lost_flag);
    let result = runtime.block_on(execute(&cluster, &state, &options, args));
    // The result goes into the inventory's status (as the daemon's does),
    // then the lock is released; neither may hang on a dead API server.
    if let Some(lock) = lock {
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

/// Plans under the lock, applies with progress on stderr and, with
/// `--wait`, waits for health.
async fn execute(
    cluster: &Cluster,
    state: &DesiredState,
    options: &SyncOptions,
    args: &SyncArgs,
) -> Result<SyncReport, SyncError> {
    let inventory = cluster.read_inventory(&state.name).await?;
    // A sync needs the changes, not their diff text.
    let plan_options = PlanOptions {
        diffs: false,
        deletes: Deletes::RecordedOrAll,
        settle: Some(args.live.adopt),
        health: false,
    };
    let LivePlan {
        plan,
        inventory,
        undeclared,
        ..
    } = pipeline::plan_live(cluster, state, inventory, plan_options).await?;
    let interactive =
        std::io::stderr().is_terminal() && !matches!(args.live.output, PlanOutput::Json);
    let total = plan.changes.iter().filter(|c| c.is_apply()).count() as u64;
    let bar = (interactive && total > 0).then(|| progress_bar(total));
    let report = cluster_sync::sync(
        cluster,
        &plan,
        &state.objects,
        inventory,
        &undeclared,
        options,
        state.revision.clone(),
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
    let transport = matches!(result, Err(SyncError::Cluster(e)) if e.is_transport())
        || matches!(result, Ok(r) if r.aborted.is_some());
    if !transport {
        let fields = cli_status_fields(result, state.revision.as_deref(), &lock.identity, skipped);
        let write = cluster.write_status(&state.name, &fields);
        if let Ok(Err(e)) = tokio::time::timeout(Duration::from_secs(5), write).await {
            eprintln!("warning: cannot record the sync's result in the inventory: {e}");
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
