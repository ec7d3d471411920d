//! `tenantsync plan` and `tenantsync drift`: the environment's desired state
//! against the cluster, printed; read-only.

use std::collections::HashSet;
use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;

use super::args::{LiveArgs, PlanOutput};
use super::{
    desired_state, runtime, scopes_admitted, selection_known, write_stdout, write_stdout_with,
};
use crate::cluster::{Cluster, ClusterError};
use crate::object::ObjectKey;
use crate::pipeline::{self, Deletes, LivePlan, PlanOptions};
use crate::plan::contract::{PlanFile, PlanFileOptions};
use crate::plan::{Action, Change, Plan, Summary};
use crate::print;
use crate::source;
use crate::sync::inventory::Inventory;

/// `out`: where `plan --out` saves the plan for `sync --plan`.
pub(super) fn live_cmd(
    args: &LiveArgs,
    changed_since: Option<&str>,
    verb: print::Verb,
    out: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let runtime = runtime()?;
    let options = args.cluster.options();
    let drift = matches!(verb, print::Verb::Drift);
    // drift compares the cluster with what tenantsync last applied: the
    // revision the inventory records, when the repository is Git and no
    // --rev was given (a plain folder has no history: its current files).
    // The connection and the inventory read for it are the plan's too.
    let mut read = None;
    let mut rev = args.rev.clone();
    if drift && rev.is_none() {
        let is_git = source::git::is_remote_url(&args.repo)
            || source::git::open_local(std::path::Path::new(&args.repo)).is_ok();
        if is_git {
            let (cluster, inventory) = runtime.block_on(async {
                let cluster = Cluster::connect(&options).await?;
                let inventory = cluster.read_inventory(&args.env).await?;
                Ok::<_, ClusterError>((cluster, inventory))
            })?;
            rev = inventory
                .as_ref()
                .and_then(|inventory| inventory.revision.clone())
                .filter(|r| r.len() == 40 && r.bytes().all(|b| b.is_ascii_hexdigit()));
            read = Some((cluster, inventory));
        }
    }
    // A saved plan records a folder's revision: the digest of all its files.
    let (desired, digest) = match desired_state(args, rev, None, changed_since, out.is_some())? {
        Ok(desired) => desired,
        Err(code) => return Ok(code),
    };
    let (cluster, inventory) = match read {
        Some((cluster, inventory)) => (cluster, Some(inventory)),
        None => (runtime.block_on(Cluster::connect(&options))?, None),
    };
    if let Err(code) = runtime.block_on(scopes_admitted(&cluster, args, &desired))? {
        return Ok(code);
    }
    if let Err(code) = runtime.block_on(selection_known(&cluster, &desired))? {
        return Ok(code);
    }
    let (plan, foreign, notes) = runtime.block_on(async {
        let inventory = match inventory {
            Some(inventory) => inventory,
            // A plan of some workspaces reads only their recorded objects
            // (every other is out of its scope): at 5,000 workspaces,
            // building a record of every object was about a third of a
            // one-workspace pull request's plan.
            None if !drift && !desired.scope.is_everything() => {
                let scope = &desired.scope;
                let keep = |kind: &str, namespace: Option<&str>, name: &str| {
                    scope.contains(kind, namespace, name)
                };
                cluster.read_inventory_keeping(&desired.name, &keep).await?
            }
            None => cluster.read_inventory(&desired.name).await?,
        };
        // plan deletes what sync --prune would: inventoried objects only;
        // drift reports every labelled object nothing declares.
        let plan_options = PlanOptions {
            diffs: true,
            deletes: if drift {
                Deletes::Undeclared
            } else {
                Deletes::Recorded
            },
            settle: (!drift).then_some(args.adopt),
            health: false,
        };
        let LivePlan {
            mut plan,
            inventory,
            ..
        } = pipeline::plan_live(&cluster, &desired, inventory, plan_options).await?;
        let inventory = inventory.unwrap_or_else(|| Inventory::new(&desired.name));
        let notes = if drift {
            DriftNotes::take_from(&mut plan, &inventory)
        } else {
            DriftNotes::default()
        };
        // What a namespace the plan deletes holds that tenantsync never made.
        let namespaces: Vec<String> = plan
            .changes
            .iter()
            .filter(|c| c.action == Action::Delete && &*c.kind == "Namespace")
            .map(|c| c.name.to_string())
            .collect();
        let foreign = if !drift && !namespaces.is_empty() {
            cluster.foreign_objects(&namespaces, &inventory).await?
        } else {
            Default::default()
        };
        plan.api_requests = cluster.requests();
        Ok::<_, ClusterError>((plan, foreign, notes))
    })?;
    let color =
        !args.no_color && std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    // A plan of every workspace only: what --workspace leaves out would
    // change the steps.
    let rollout = if !drift && desired.scope.only.is_none() {
        desired.rollout(&plan)
    } else {
        None
    };
    let changed = changed_since.zip(desired.changed.as_ref());
    // JSON that nothing is added to is written as it is serialized: the
    // text is as large as the plan (16 MB at 5,000 unchanged workspaces),
    // and a String grown to hold it takes up to twice that.
    let plain_json = matches!(args.output, PlanOutput::Json)
        && foreign.is_empty()
        && notes.pending.is_empty()
        && notes.never_declared.is_empty()
        && rollout.is_none()
        && changed.is_none();
    let text = (!plain_json).then(|| {
        let mut text = match args.output {
            PlanOutput::Text => print::text(&plan, color, verb),
            PlanOutput::Markdown => print::markdown(&plan, verb),
            PlanOutput::Json => print::json(&plan),
        };
        if !foreign.is_empty() {
            text = print::with_foreign(text, &foreign, matches!(args.output, PlanOutput::Json));
        }
        if !notes.pending.is_empty() || !notes.never_declared.is_empty() {
            text = notes.add_to(text, args.output);
        }
        if let Some(rollout) = &rollout {
            text = print::with_rollout(text, rollout, print_output(args.output));
        }
        if let Some((since, selection)) = changed {
            text = print::with_changed(text, since, selection, print_output(args.output));
        }
        text
    });
    if let Some(out) = out {
        // A folder's revision is the digest of its files, as sync records.
        let revision = desired
            .revision
            .clone()
            .or(digest)
            .context("cannot record the folder's revision: not every file of it was read; save the plan without --changed-since")?;
        let options = PlanFileOptions {
            workspaces: args.workspaces.clone(),
            adopt: args.adopt,
        };
        let cluster_id = runtime.block_on(cluster.identity())?;
        let file = PlanFile::new(&plan, &desired.objects, revision, options).against(cluster_id);
        std::fs::write(out, file.to_json())
            .with_context(|| format!("cannot write the plan to {}", out.display()))?;
        eprintln!(
            "saved the plan to {}: apply exactly it with `tenantsync sync --env {} --plan {}`",
            out.display(),
            desired.name,
            out.display()
        );
    }
    match text {
        Some(text) => write_stdout(&text)?,
        None => write_stdout_with(|out| print::json_to(&plan, out))?,
    }
    Ok(if args.detailed_exitcode && plan.summary.has_changes() {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

fn print_output(output: PlanOutput) -> print::Output {
    match output {
        PlanOutput::Text => print::Output::Text,
        PlanOutput::Markdown => print::Output::Markdown,
        PlanOutput::Json => print::Output::Json,
    }
}

/// What `drift` tells apart beyond the plan's actions.
#[derive(Default)]
struct DriftNotes {
    /// Declared, never applied (not in the inventory): the next sync creates them.
    pending: Vec<String>,
    /// Labelled for the environment, never in the inventory: never declared.
    never_declared: Vec<String>,
}

impl DriftNotes {
    /// Moves out of a drift plan what is not drift: an object declared but
    /// never applied (not inventoried) is pending, not missing; a labelled
    /// object the inventory never recorded was never declared, not "no
    /// longer" declared.
    fn take_from(plan: &mut Plan, inventory: &Inventory) -> DriftNotes {
        let recorded: HashSet<ObjectKey<'_>> = inventory.keys();
        let (pending, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut plan.changes)
            .into_iter()
            .partition(|c| c.action == Action::Create && !recorded.contains(&c.key()));
        let notes = DriftNotes {
            pending: pending.iter().map(Change::id).collect(),
            never_declared: kept
                .iter()
                .filter(|c| c.action == Action::Delete && !recorded.contains(&c.key()))
                .map(Change::id)
                .collect(),
        };
        plan.changes = kept;
        plan.summary = Summary::of(&plan.changes);
        notes
    }

    fn add_to(&self, text: String, output: PlanOutput) -> String {
        print::with_drift_notes(
            text,
            &self.pending,
            &self.never_declared,
            matches!(output, PlanOutput::Json),
        )
    }
}
