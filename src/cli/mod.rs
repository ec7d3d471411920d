//! Command-line interface: argument parsing and output formats only.

use std::collections::HashSet;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

use crate::cluster::execute::{self as cluster_sync, Progress, SyncError};
use crate::cluster::{Cluster, ClusterError, ClusterOptions};
use crate::declare::diag::Diagnostic;
use crate::declare::validate;
use crate::object::ObjectKey;
use crate::pipeline::{self, Deletes, DesiredState, Intake, LivePlan, PlanOptions, Refused};
use crate::plan::{Action, Change, Plan, Summary};
use crate::print;
use crate::render;
use crate::source::{self, folder};
use crate::sync::SyncOptions;
use crate::sync::inventory::Inventory;
use crate::sync::tenancy::{Operator, OperatorPolicy};

mod help;

pub use help::VERSION;

/// Declarative GitOps for healthcare-API tenant workspaces on Kubernetes.
///
/// tenantsync reads a repository of workspace declarations (environments/<layer>/),
/// checks them against its JSON Schemas and the platform's rules, merges each
/// environment over its base chain and renders the Kubernetes objects it should have.
#[derive(Debug, Parser)]
#[command(
    name = "tenantsync",
    version = VERSION,
    propagate_version = true,
    after_long_help = help::TOP
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check declarations: schemas, overlays and platform rules.
    ///
    /// Every problem is printed as FILE:LINE:COL: error: MESSAGE (the file relative
    /// to the repository) with the JSON pointer of the offending value; every problem
    /// is reported, not only the first. Exit status: 0 when valid, 1 when not.
    #[command(after_long_help = help::VALIDATE)]
    Validate {
        /// Repository root (the folder holding environments/).
        #[arg(long, default_value = ".", value_name = "DIR")]
        repo: PathBuf,
        /// Environment to check (repeatable); all non-abstract ones by default.
        #[arg(long = "env", value_name = "NAME")]
        envs: Vec<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = ValidateOutput::Text)]
        output: ValidateOutput,
        #[command(flatten)]
        guard: GuardArgs,
    },
    /// Print the Kubernetes objects of one environment.
    ///
    /// The output is deterministic: the same declarations give byte-identical output.
    /// Invalid declarations print their errors and exit 1, rendering nothing.
    #[command(after_long_help = help::RENDER)]
    Render {
        /// Repository root (the folder holding environments/).
        #[arg(long, default_value = ".", value_name = "DIR")]
        repo: PathBuf,
        /// Environment to render.
        #[arg(long = "env", value_name = "NAME")]
        env: String,
        /// Output format: a multi-document YAML stream, or a JSON list.
        #[arg(long, value_enum, default_value_t = RenderOutput::Yaml)]
        output: RenderOutput,
    },
    /// Show what a sync would change in the cluster; read-only.
    ///
    /// Renders the environment, reads the live objects tenantsync manages (one LIST
    /// per kind, by label; only get/list verbs, so read-only credentials suffice) and
    /// prints the change set: create, update (with the fields and, when another field
    /// manager changed a value, its name), delete, unchanged. Fields the server
    /// defaults, status and server-owned metadata are never reported.
    ///
    /// Exit status: 0 success, 1 error (invalid repository, unreachable or refusing
    /// cluster); with --detailed-exitcode, 2 when there are changes.
    #[command(after_long_help = help::PLAN)]
    Plan(LiveArgs),
    /// Report what changed in the cluster behind Git's back; read-only.
    ///
    /// Per workspace: objects modified (with the fields and the manager that changed
    /// them), objects deleted by hand, and objects labelled for the environment that
    /// no declaration produces any more. Exit status as for plan; with
    /// --detailed-exitcode, 2 when there is drift.
    #[command(after_long_help = help::DRIFT)]
    Drift(LiveArgs),
    /// Make the cluster match the environment: server-side apply, then prune.
    ///
    /// Applies (field manager tenantsync) only the objects the plan says are new or
    /// changed, in stages: sync wave (annotation tenantsync.io/sync-wave), then kind
    /// (Namespaces first, Ingresses and policies last). Records every applied object
    /// in the environment's inventory (ConfigMap tenantsync-system/inventory-<env>);
    /// with --prune, deletes inventoried objects no longer declared, children before
    /// namespaces, never objects it did not create or annotated
    /// tenantsync.io/prune: disabled. A prune that would delete a workspace's
    /// namespace or more than the environment's maxPrunePercent (default 25%) of the
    /// inventory stops before any change unless --allow-mass-prune.
    ///
    /// Exit status: 0 when everything applied (and, with --wait, is healthy), 1 otherwise.
    #[command(after_long_help = help::SYNC)]
    Sync(SyncArgs),
    /// Run the GitOps daemon: keep environments in step with a repository.
    ///
    /// One reconcile loop per environment, each independent: on every poll interval,
    /// push webhook (POST /hooks/git, GitHub or GitLab, verified with the secret in
    /// TENANTSYNC_WEBHOOK_SECRET) or file change of a local folder, the repository is
    /// read; a new valid revision is synced as `sync` does; an invalid one is reported
    /// (status, log, a Kubernetes Event in tenantsync-system) and nothing is applied
    /// until a valid one arrives. On the drift interval the cluster is compared with
    /// the last applied revision: drifted objects are re-applied with --self-heal,
    /// reported otherwise. Serves GET /status, /metrics, /healthz and /readyz.
    /// SIGTERM finishes the reconcile in flight and exits.
    ///
    /// In a cluster it runs from the manifests in deploy/ (two replicas with
    /// --leader-elect, the configuration file from a ConfigMap).
    #[command(after_long_help = help::RUN)]
    Run(RunArgs),
    /// Show an environment's sync state as recorded in the cluster.
    ///
    /// Reads the inventory (tenantsync-system/inventory-<env>): the revision last
    /// applied and when, how many objects tenantsync manages there, and the status
    /// the daemon publishes (Synced, OutOfSync or Failed, the last error, drift).
    /// Read-only. Exit status 1 when the environment was never synced.
    #[command(after_long_help = help::STATUS)]
    Status(StatusArgs),
    /// Print a shell completion script for bash, zsh, fish, elvish or PowerShell.
    ///
    /// The script completes subcommands, options and their fixed values
    /// (output formats, shells). Write it where the shell looks for completions.
    #[command(after_long_help = help::COMPLETIONS)]
    Completions {
        /// The shell to complete for.
        #[arg(value_enum, value_name = "SHELL")]
        shell: clap_complete::Shell,
    },
}

/// The cluster to talk to.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ClusterArgs {
    /// Kubeconfig file (default: KUBECONFIG, ~/.kube/config, or in-cluster).
    #[arg(long, value_name = "FILE", env = "TENANTSYNC_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context to use.
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,
}

impl ClusterArgs {
    /// The connection these flags ask for.
    pub fn options(&self) -> ClusterOptions {
        ClusterOptions {
            kubeconfig: self.kubeconfig.clone(),
            context: self.context.clone(),
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Environment to show.
    #[arg(long = "env", value_name = "NAME")]
    pub env: String,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Output format.
    #[arg(long, value_enum, default_value_t = ValidateOutput::Text)]
    pub output: ValidateOutput,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Configuration file (YAML, schema schemas/daemon-config.schema.json);
    /// flags given here override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Repository: a folder (watched for changes), a local Git repository, or a
    /// remote URL (cloned into a cache, then fetched). Git credentials come from
    /// TENANTSYNC_GIT_TOKEN(_FILE) or TENANTSYNC_GIT_SSH_KEY.
    #[arg(long, value_name = "DIR|URL", required_unless_present = "config")]
    pub repo: Option<String>,
    /// Branch, tag or commit to follow (Git only; a remote's default branch otherwise).
    #[arg(long, value_name = "REF")]
    pub branch: Option<String>,
    /// Environments to reconcile (comma-separated or repeated).
    #[arg(long = "env", value_name = "NAME", value_delimiter = ',')]
    pub envs: Vec<String>,
    /// How often to read the repository [default: 1m].
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub interval: Option<std::time::Duration>,
    /// How often to compare the cluster with the last applied revision [default: 5m].
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub drift_interval: Option<std::time::Duration>,
    /// Address of the status, metrics and probe endpoints (and of POST /hooks/git
    /// without --webhook-listen) [default: 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<std::net::SocketAddr>,
    /// Serve POST /hooks/git on this address only (nothing else there), so an
    /// Ingress can expose the webhook alone; /hooks/git leaves --listen.
    #[arg(long, value_name = "ADDR")]
    pub webhook_listen: Option<std::net::SocketAddr>,
    /// Delete inventoried objects no longer declared (also syncPolicy.prune).
    #[arg(long)]
    pub prune: bool,
    /// Re-apply objects that drifted from Git (report only, without it).
    #[arg(long)]
    pub self_heal: bool,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[command(flatten)]
    pub guard: GuardArgs,
    /// Log format: human-readable text or one JSON object per line.
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Let a revision delete whole workspaces (their namespaces) or more than
    /// syncPolicy.maxPrunePercent of an inventory; without it such a revision is
    /// reported as failed and nothing is pruned.
    #[arg(long)]
    pub allow_mass_prune: bool,
    /// Delete a removed workspace's namespace even when it holds objects
    /// tenantsync did not make (also syncPolicy.pruneForeign in --config);
    /// without it such a namespace is kept and its foreign objects named.
    #[arg(long)]
    pub prune_foreign: bool,
    /// Run several replicas: they elect a leader with the Lease
    /// tenantsync-system/tenantsync-leader, and only the leader writes; when it
    /// dies another takes over within the lease duration (15 s).
    #[arg(long)]
    pub leader_elect: bool,
    /// Name of the leader-election Lease in tenantsync-system [default:
    /// tenantsync-leader]; installations sharing a cluster need different names.
    #[arg(long, value_name = "NAME", value_parser = parse_lease_name)]
    pub lease_name: Option<String>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// A Lease name: a DNS subdomain, as the API server requires.
fn parse_lease_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "`{s}` is not a valid Lease name (lower-case letters, digits, `-` and `.`)"
        ))
    }
}

/// `250ms`, `30s`, `5m`, `1h`.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let digits: String = s.chars().take_while(char::is_ascii_digit).collect();
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{s}` is not a duration such as 30s, 5m or 1h"))?;
    let duration = match &s[digits.len()..] {
        "ms" => std::time::Duration::from_millis(n),
        "s" => std::time::Duration::from_secs(n),
        "m" => std::time::Duration::from_secs(n.saturating_mul(60)),
        "h" => std::time::Duration::from_secs(n.saturating_mul(3600)),
        _ => return Err(format!("`{s}` is not a duration such as 30s, 5m or 1h")),
    };
    // A timer that far out would overflow the clock (a panic, not an error).
    if duration > MAX_DURATION {
        return Err(format!("`{s}` is longer than a year"));
    }
    Ok(duration)
}

const MAX_DURATION: std::time::Duration = std::time::Duration::from_secs(366 * 24 * 3600);

#[cfg(test)]
mod duration_tests {
    use super::parse_duration;

    #[test]
    fn durations_parse_and_huge_ones_are_refused_not_overflowed() {
        assert_eq!(
            parse_duration("90s"),
            Ok(std::time::Duration::from_secs(90))
        );
        assert_eq!(
            parse_duration("2h"),
            Ok(std::time::Duration::from_secs(7200))
        );
        for huge in ["99999999999999999999h", "18446744073709551615h", "9000000h"] {
            let e = parse_duration(huge).unwrap_err();
            assert!(
                e.contains("longer than a year") || e.contains("not a duration"),
                "{e}"
            );
        }
        assert!(parse_duration("5d").is_err());
    }
}

#[derive(Debug, clap::Args)]
pub struct SyncArgs {
    #[command(flatten)]
    pub live: LiveArgs,
    /// Delete inventoried objects that are no longer declared (also on with the
    /// environment's syncPolicy.prune).
    #[arg(long)]
    pub prune: bool,
    /// Send every write with dryRun=All: report what would happen, server
    /// validation included, and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Delete and recreate objects whose update changes an immutable field.
    #[arg(long)]
    pub force_recreate: bool,
    /// Allow a prune that deletes a workspace's namespace or more than maxPrunePercent.
    #[arg(long)]
    pub allow_mass_prune: bool,
    /// After applying, wait until every object is healthy (Deployments rolled out,
    /// Namespaces Active, CRDs Established, Ingresses with an address); exit 1 when
    /// something is Degraded or the timeout passes.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits.
    #[arg(long, default_value = "5m", value_parser = parse_duration, value_name = "DURATION")]
    pub timeout: std::time::Duration,
    /// With --wait, do not wait for Ingresses to get a load-balancer address.
    #[arg(long)]
    pub no_ingress_address_wait: bool,
    /// Delete a removed workspace's namespace even when it holds objects
    /// tenantsync did not make (they are deleted with it); without it such a
    /// namespace is kept and its foreign objects are named.
    #[arg(long)]
    pub prune_foreign: bool,
    /// How long to wait while another writer (a daemon, another sync) holds
    /// the environment's lock before giving up.
    #[arg(long, default_value = "3m", value_parser = parse_duration, value_name = "DURATION")]
    pub lock_timeout: std::time::Duration,
    /// Apply the valid workspaces of an environment with invalid ones, as the
    /// daemon does: an invalid workspace's objects are neither applied nor
    /// pruned. Exits 1 when anything was skipped, after saying what and why.
    #[arg(long)]
    pub skip_invalid: bool,
}

/// The operator's limits on what the repository may touch (see README's
/// Security section). The repository cannot change them.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct GuardArgs {
    /// A namespace an environment may write into besides its workspaces' own
    /// (repeatable; `*` and `{environment}` allowed: `shared-{environment}`).
    /// kube-*, default and tenantsync-system are never allowed.
    #[arg(long = "allow-namespace", value_name = "PATTERN")]
    pub allow_namespaces: Vec<String>,
    /// A cluster-scoped or RBAC kind resources/ may declare (repeatable:
    /// CustomResourceDefinition, Role, ...); refused otherwise.
    #[arg(long = "allow-kind", value_name = "KIND")]
    pub allow_kinds: Vec<String>,
    /// Allow pod templates in resources/ that are privileged, use host
    /// namespaces, ports or paths, add capabilities, or run as a
    /// ServiceAccount tenantsync does not render.
    #[arg(long)]
    pub allow_privileged_pods: bool,
    /// Allow a namespaceTemplate without {environment} (one environment per
    /// cluster only).
    #[arg(long)]
    pub allow_shared_namespace_template: bool,
    /// Take over fields another field manager owns; without it a repository's
    /// syncPolicy.forceConflicts: true is refused.
    #[arg(long)]
    pub force_conflicts: bool,
    /// The most one sync may prune without --allow-mass-prune, in percent
    /// [default: 25]; the repository's syncPolicy.maxPrunePercent may only lower it.
    #[arg(long, value_name = "PERCENT", value_parser = clap::value_parser!(u8).range(0..=100))]
    pub max_prune_percent: Option<u8>,
}

impl GuardArgs {
    /// The operator's settings: these flags over the configuration file's.
    pub fn operator(&self, file: Option<&crate::daemon::config::DaemonConfig>) -> Operator {
        let mut guardrails = file.map(|c| c.guardrails.clone()).unwrap_or_default();
        guardrails
            .allowed_namespaces
            .extend(self.allow_namespaces.iter().cloned());
        guardrails
            .allowed_kinds
            .extend(self.allow_kinds.iter().cloned());
        guardrails.allow_privileged_pods |= self.allow_privileged_pods;
        guardrails.allow_shared_namespace_template |= self.allow_shared_namespace_template;
        let file_policy = file.map(|c| &c.sync_policy);
        Operator {
            guardrails,
            policy: OperatorPolicy {
                force_conflicts: self.force_conflicts
                    || file_policy.is_some_and(|p| p.force_conflicts),
                max_prune_percent: self
                    .max_prune_percent
                    .or(file_policy.and_then(|p| p.max_prune_percent))
                    .unwrap_or(crate::declare::model::DEFAULT_MAX_PRUNE_PERCENT),
            },
        }
    }
}

/// Where the desired state comes from, and the cluster to compare with.
#[derive(Clone, Debug, clap::Args)]
pub struct LiveArgs {
    /// Repository: a folder, a Git work tree, or a remote URL (https, ssh, git, file).
    #[arg(long, default_value = ".", value_name = "DIR|URL")]
    pub repo: String,
    /// Read the declarations at this Git revision (branch, tag, commit) from
    /// the object database, without checking it out.
    #[arg(long, value_name = "REV")]
    pub rev: Option<String>,
    /// Environment to compare.
    #[arg(long = "env", value_name = "NAME")]
    pub env: String,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Output format.
    #[arg(long, value_enum, default_value_t = PlanOutput::Text)]
    pub output: PlanOutput,
    /// Exit 2 (instead of 0) when there are changes, as Terraform's -detailed-exitcode.
    #[arg(long)]
    pub detailed_exitcode: bool,
    /// Never colour the text output (it is coloured only on a terminal anyway).
    #[arg(long)]
    pub no_color: bool,
    /// plan and sync: take over objects that exist under a declared name but
    /// are not tenantsync's (never another environment's). Without it they
    /// are shown as `exists, not managed` and left alone.
    #[arg(long)]
    pub adopt: bool,
    #[command(flatten)]
    pub guard: GuardArgs,
    /// Only this workspace's objects (repeatable): plan, apply and prune
    /// nothing else (the mass-prune guard counts within the selection).
    #[arg(long = "workspace", value_name = "NAME")]
    pub workspaces: Vec<String>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum PlanOutput {
    Text,
    Markdown,
    Json,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ValidateOutput {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum RenderOutput {
    Yaml,
    Json,
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Validate {
            repo,
            envs,
            output,
            guard,
        } => validate_cmd(&repo, &envs, output, &guard.operator(None)),
        Command::Render { repo, env, output } => render_cmd(&repo, &env, output),
        Command::Plan(args) => live_cmd(&args, print::Verb::Plan),
        Command::Drift(args) => live_cmd(&args, print::Verb::Drift),
        Command::Sync(args) => sync_cmd(&args),
        Command::Run(args) => run_cmd(args),
        Command::Status(args) => status_cmd(&args),
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

fn live_cmd(args: &LiveArgs, verb: print::Verb) -> anyhow::Result<ExitCode> {
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
    let desired = match desired_state(args, rev, None)? {
        Ok((state, _)) => state,
        Err(code) => return Ok(code),
    };
    let (cluster, inventory) = match read {
        Some((cluster, inventory)) => (cluster, Some(inventory)),
        None => (runtime.block_on(Cluster::connect(&options))?, None),
    };
    if let Err(code) = runtime.block_on(scopes_admitted(&cluster, args, &desired))? {
        return Ok(code);
    }
    let (plan, foreign, notes) = runtime.block_on(async {
        let inventory = match inventory {
            Some(inventory) => inventory,
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
    write_stdout(&text)?;
    Ok(if args.detailed_exitcode && plan.summary.has_changes() {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
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

/// The environment's desired state (in scope only) read at `rev`, and the
/// digest of the files read (a folder's revision); or the validation errors
/// and broken guardrails (printed) and exit code 1. `sync`:
/// `Some(skip_invalid)` for sync, which may hold invalid workspaces (see
/// [`crate::sync::Scope`]) instead of failing the whole environment;
/// problems of the environment itself still do. plan and drift are strict.
fn desired_state(
    args: &LiveArgs,
    rev: Option<String>,
    sync: Option<bool>,
) -> anyhow::Result<Result<(DesiredState, String), ExitCode>> {
    let (tree, revision) = source::read(&args.repo, rev.as_deref(), &source::auth_from_env()?)?;
    let digest = source::revision_of(&tree, None);
    let operator = args.guard.operator(None);
    let intake = Intake {
        hold_invalid: sync == Some(true),
        only: &args.workspaces,
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
    match pipeline::desired(tree, &args.env, revision.map(|r| r.commit), &intake) {
        Ok(mut state) => {
            state.keep_in_scope();
            Ok(Ok((state, digest)))
        }
        Err(Refused::Invalid {
            diagnostics,
            workspaces_only,
        }) => {
            let why = if workspaces_only && sync.is_some() {
                " (sync --skip-invalid applies the valid workspaces)"
            } else {
                ""
            };
            refuse(&diagnostics, why)
        }
        Err(Refused::UnknownWorkspace {
            environment,
            unknown,
            known,
        }) => {
            eprintln!(
                "error: environment {environment} has no workspace `{unknown}` (its workspaces: {}); the cluster was not contacted",
                known.join(", ")
            );
            Ok(Err(ExitCode::from(1)))
        }
        Err(Refused::Guardrails(diagnostics)) => refuse(&diagnostics, ""),
        Err(Refused::Render(e)) => Err(e.into()),
    }
}

/// The guardrails only the cluster can judge ([`pipeline::check_scopes`]),
/// before anything is written; broken ones are printed and give exit code 1.
async fn scopes_admitted(
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

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn sync_cmd(args: &SyncArgs) -> anyhow::Result<ExitCode> {
    let live_args = &args.live;
    let (mut state, digest) =
        match desired_state(live_args, live_args.rev.clone(), Some(args.skip_invalid))? {
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
    let revision = state.revision.clone();
    let name = state.name.clone();
    let options = state.sync_options(SyncOptions {
        prune: args.prune,
        dry_run: args.dry_run,
        force_recreate: args.force_recreate,
        allow_mass_prune: args.allow_mass_prune,
        prune_foreign: args.prune_foreign,
        ..SyncOptions::default()
    });
    let cluster_options = live_args.cluster.options();
    let interactive =
        std::io::stderr().is_terminal() && !matches!(live_args.output, PlanOutput::Json);
    let runtime = runtime()?;
    let cluster = runtime.block_on(Cluster::connect(&cluster_options))?;
    if let Err(code) = runtime.block_on(scopes_admitted(&cluster, live_args, &state))? {
        return Ok(code);
    }
    // One writer per environment: the lock is taken before the inventory is
    // read, so the plan is computed under it (a dry run writes nothing and
    // takes none).
    let lock = if args.dry_run {
        None
    } else {
        let me = crate::cluster::lock::cli_identity();
        let taken = runtime.block_on(cluster.lock_environment(
            &name,
            &me,
            args.lock_timeout,
            |holder| {
                eprintln!(
                    "waiting for the lock of environment {name}: held by {holder} (up to {}s, --lock-timeout)",
                    args.lock_timeout.as_secs()
                )
            },
        ));
        match taken {
            Ok(lock) => Some(lock),
            Err(crate::cluster::lock::LockError::Cluster(e)) => return Err(e.into()),
            Err(e) => {
                eprintln!("error: nothing was changed: {e}");
                return Ok(ExitCode::from(1));
            }
        }
    };
    let mut options = options;
    options.lock_lost = lock.as_ref().map(crate::cluster::lock::EnvLock::lost_flag);
    let result = runtime.block_on(async {
        let cluster = &cluster;
        let inventory = cluster.read_inventory(&name).await?;
        // A sync needs the changes, not their diff text.
        let plan_options = PlanOptions {
            diffs: false,
            deletes: Deletes::RecordedOrAll,
            settle: Some(live_args.adopt),
        };
        let LivePlan {
            plan,
            inventory,
            undeclared,
        } = pipeline::plan_live(cluster, &state, inventory, plan_options).await?;
        let total: u64 = plan.changes.iter().filter(|c| c.is_apply()).count() as u64;
        let bar = if interactive && total > 0 {
            let bar = indicatif::ProgressBar::new(total);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} [{bar:30}] {pos}/{len} applied  {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            Some(bar)
        } else {
            None
        };
        let report = cluster_sync::sync(
            cluster,
            &plan,
            &state.objects,
            inventory,
            &undeclared,
            &options,
            revision.clone(),
            |event| match (&bar, event) {
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
                        crate::print::kind_plural(kind, objects)
                    );
                }
                (_, Progress::Pruned { id, ok }) => {
                    eprintln!("{} {id}", if ok { "pruned" } else { "prune failed:" })
                }
                _ => {}
            },
        )
        .await;
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        let mut report = report?;
        if args.wait && !args.dry_run && report.succeeded() {
            let options = crate::sync::health::HealthOptions {
                wait_for_ingress_address: !args.no_ingress_address_wait,
            };
            let health = cluster_sync::wait_for_health(
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
    });
    // The result goes into the inventory's status (as the daemon's does),
    // then the lock is released; neither may hang on a dead API server.
    if let Some(lock) = lock {
        runtime.block_on(async {
            let transport = matches!(&result, Err(SyncError::Cluster(e)) if e.is_transport())
                || matches!(&result, Ok(r) if r.aborted.is_some());
            if !transport {
                let fields =
                    cli_status_fields(&result, revision.as_deref(), &lock.identity, &skipped);
                let write = cluster.write_status(&name, &fields);
                if let Ok(Err(e)) = tokio::time::timeout(Duration::from_secs(5), write).await {
                    eprintln!("warning: cannot record the sync's result in the inventory: {e}");
                }
            }
            let _ = tokio::time::timeout(Duration::from_secs(5), lock.release(&cluster)).await;
        });
    }
    let report = match result {
        Ok(report) => report,
        Err(SyncError::MassPrune(guard)) => {
            eprintln!("error: nothing was changed: {}", guard.message);
            return Ok(ExitCode::from(1));
        }
        Err(SyncError::Cluster(e)) => return Err(e.into()),
    };
    let text = match live_args.output {
        PlanOutput::Json => {
            let mut json = serde_json::to_value(&report).context("encoding JSON")?;
            // What --skip-invalid left out, and why.
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
        PlanOutput::Text | PlanOutput::Markdown => print::sync_text(&report),
    };
    write_stdout(&text)?;
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

/// The status fields a CLI sync records on the inventory: result, revision,
/// time and who ran it.
fn cli_status_fields(
    result: &Result<crate::sync::report::SyncReport, SyncError>,
    revision: Option<&str>,
    by: &str,
    skipped: &std::collections::BTreeMap<String, Vec<Diagnostic>>,
) -> std::collections::BTreeMap<String, String> {
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

fn status_cmd(args: &StatusArgs) -> anyhow::Result<ExitCode> {
    let options = args.cluster.options();
    let (data, holder) = runtime()?.block_on(async {
        let cluster = Cluster::connect(&options).await?;
        let data = cluster.inventory_data(&args.env).await?;
        // Who writes the environment now (a credential that may not read
        // Leases just does not see it).
        let holder = cluster.lock_holder(&args.env).await.ok().flatten();
        Ok::<_, crate::cluster::ClusterError>((data, holder))
    })?;
    let Some(data) = data else {
        eprintln!(
            "environment {} has never been synced to this cluster (no inventory)",
            args.env
        );
        return Ok(ExitCode::from(1));
    };
    // A daemon's status with no heartbeat for longer than it promised is
    // stale: the daemon died or cannot reach the cluster.
    let silent_for = data
        .get("status.heartbeatAt")
        .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
        .map(|t| k8s_openapi::jiff::Timestamp::now().as_second() - t.as_second());
    let stale_after = data
        .get("status.staleAfterSeconds")
        .and_then(|s| s.parse::<i64>().ok());
    let stale = matches!((silent_for, stale_after), (Some(age), Some(limit)) if age > limit);
    let mut data = data;
    if stale {
        data.insert("status.stale".into(), "true".into());
    }
    if let Some(h) = &holder {
        data.insert("lock.holder".into(), h.identity.clone());
        data.insert("lock.since".into(), h.since.clone().unwrap_or_default());
    }
    match args.output {
        ValidateOutput::Json => write_stdout(
            &(serde_json::to_string_pretty(&crate::print::status_json(&data))
                .context("encoding JSON")?
                + "\n"),
        )?,
        ValidateOutput::Text => {
            let holder = holder.as_ref().map(ToString::to_string);
            let out = print::status_text(&args.env, &data, stale, silent_for, holder.as_deref());
            write_stdout(&out)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn run_cmd(args: RunArgs) -> anyhow::Result<ExitCode> {
    let config = match &args.config {
        None => None,
        Some(path) => {
            let bytes =
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            match crate::daemon::config::parse(&path.display().to_string(), &bytes) {
                Ok(c) => Some(c),
                Err(diags) => {
                    print_diagnostics(&diags);
                    eprintln!("{} error(s) in the configuration; not started", diags.len());
                    return Ok(ExitCode::from(1));
                }
            }
        }
    };
    let duration = |flag: Option<std::time::Duration>,
                    file: Option<&String>,
                    default: &str|
     -> anyhow::Result<std::time::Duration> {
        match (flag, file) {
            (Some(d), _) => Ok(d),
            (None, Some(text)) => parse_duration(text).map_err(anyhow::Error::msg),
            (None, None) => parse_duration(default).map_err(anyhow::Error::msg),
        }
    };
    let c = config.as_ref();
    let policy = c.map(|c| c.sync_policy.clone()).unwrap_or_default();
    let log_format = args
        .log_format
        .unwrap_or(match c.and_then(|c| c.log_format.as_deref()) {
            Some("json") => LogFormat::Json,
            _ => LogFormat::Text,
        });
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
    let environments: Vec<String> = if args.envs.is_empty() {
        c.map(|c| c.environments.iter().map(|e| e.name.clone()).collect())
            .unwrap_or_default()
    } else {
        args.envs.clone()
    };
    if environments.is_empty() {
        anyhow::bail!("no environment to reconcile: give --env or a configuration file");
    }
    let contexts = c
        .map(|c| {
            c.environments
                .iter()
                .filter_map(|e| Some((e.name.clone(), e.context.clone()?)))
                .collect()
        })
        .unwrap_or_default();
    let listen = match (args.listen, c.and_then(|c| c.listen.as_deref())) {
        (Some(l), _) => l,
        (None, Some(text)) => text
            .parse()
            .with_context(|| format!("listen address `{text}`"))?,
        (None, None) => std::net::SocketAddr::from(([127, 0, 0, 1], 8080)),
    };
    let webhook_listen = match (
        args.webhook_listen,
        c.and_then(|c| c.webhook_listen.as_deref()),
    ) {
        (Some(l), _) => Some(l),
        (None, Some(text)) => Some(
            text.parse()
                .with_context(|| format!("webhook listen address `{text}`"))?,
        ),
        (None, None) => None,
    };
    if webhook_listen == Some(listen) {
        anyhow::bail!(
            "--webhook-listen {listen} is the --listen address: give the webhook a port of its own, or leave --webhook-listen out to serve it on --listen"
        );
    }
    let Some(repo) = args.repo.clone().or_else(|| c.map(|c| c.repo.clone())) else {
        anyhow::bail!("no repository: give --repo or a configuration file");
    };
    let options = crate::daemon::RunOptions {
        repo,
        branch: args
            .branch
            .clone()
            .or_else(|| c.and_then(|c| c.branch.clone())),
        environments,
        interval: duration(args.interval, c.and_then(|c| c.interval.as_ref()), "1m")?,
        drift_interval: duration(
            args.drift_interval,
            c.and_then(|c| c.drift_interval.as_ref()),
            "5m",
        )?,
        listen,
        webhook_listen,
        prune: args.prune || policy.prune,
        self_heal: args.self_heal || policy.self_heal,
        operator: args.guard.operator(c),
        cluster: ClusterArgs {
            kubeconfig: args
                .cluster
                .kubeconfig
                .clone()
                .or_else(|| c.and_then(|c| c.kubeconfig.clone()).map(PathBuf::from)),
            context: args.cluster.context.clone(),
        }
        .options(),
        webhook_secret: std::env::var("TENANTSYNC_WEBHOOK_SECRET")
            .ok()
            .filter(|s| !s.is_empty()),
        leader_elect: args.leader_elect || c.is_some_and(|c| c.leader_elect),
        lease_name: args
            .lease_name
            .clone()
            .or_else(|| c.and_then(|c| c.lease_name.clone()))
            .unwrap_or_else(|| crate::daemon::leader::LEASE_NAME.to_string()),
        allow_mass_prune: args.allow_mass_prune || policy.allow_mass_prune,
        prune_foreign: args.prune_foreign || policy.prune_foreign,
        contexts,
    };
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(crate::daemon::run(options))?;
    Ok(ExitCode::SUCCESS)
}

/// Writes to stdout; a closed pipe (`| head`) is not an error worth a message.
fn write_stdout(text: &str) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e).context("writing output"),
        _ => Ok(()),
    }
}

fn load(repo: &std::path::Path) -> anyhow::Result<validate::Repository> {
    let tree = folder::read(repo)?;
    Ok(validate::load_on_all_cores(&tree))
}

fn print_diagnostics(diags: &[Diagnostic]) {
    let stderr = std::io::stderr();
    let mut err = stderr.lock();
    for d in diags {
        let _ = writeln!(err, "{d}");
    }
}

fn validate_cmd(
    repo: &std::path::Path,
    envs: &[String],
    output: ValidateOutput,
    operator: &Operator,
) -> anyhow::Result<ExitCode> {
    let repository = load(repo)?;
    let mut report = repository.validate(envs);
    // The operator's guardrails, on what each valid environment renders.
    let mut namespaces: Vec<(String, Vec<crate::object::Object>)> = Vec::new();
    for environment in &report.environments {
        let objects = render::render(environment)?;
        if let Err(diags) = pipeline::admit(operator, environment, &objects) {
            report.diagnostics.extend(diags);
        }
        let rendered = objects.into_iter().filter(|o| &*o.kind == "Namespace");
        namespaces.push((environment.name.clone(), rendered.collect()));
    }
    // Across the environments validated together (all of them without
    // --env): two rendering one namespace.
    let together: Vec<(&str, &[crate::object::Object])> = namespaces
        .iter()
        .map(|(name, objects)| (name.as_str(), objects.as_slice()))
        .collect();
    for (environment, violation) in operator.guardrails.shared_namespaces(&together) {
        report.diagnostics.push(violation.diagnostic(&environment));
    }
    match output {
        ValidateOutput::Json => {
            println!(
                "{}",
                serde_json::to_string_pretty(&report.diagnostics)
                    .context("encoding diagnostics")?
            );
        }
        ValidateOutput::Text => {
            print_diagnostics(&report.diagnostics);
            if report.diagnostics.is_empty() {
                let names: Vec<_> = report
                    .environments
                    .iter()
                    .map(|e| e.name.as_str())
                    .collect();
                let workspaces: usize =
                    report.environments.iter().map(|e| e.workspaces.len()).sum();
                println!(
                    "ok: {} environment(s) valid ({}), {workspaces} workspace(s)",
                    names.len(),
                    names.join(", ")
                );
            } else {
                eprintln!("{} error(s)", report.diagnostics.len());
            }
        }
    }
    Ok(if report.diagnostics.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn render_cmd(repo: &std::path::Path, env: &str, output: RenderOutput) -> anyhow::Result<ExitCode> {
    let resolved = load(repo)?.resolve(env);
    let environment = match resolved {
        Ok(e) => e,
        Err(diags) => {
            print_diagnostics(&diags);
            eprintln!("{} error(s); nothing rendered", diags.len());
            return Ok(ExitCode::from(1));
        }
    };
    // Written a workspace at a time: at thousands of workspaces the whole
    // output would be tens of megabytes held at once.
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let written = match output {
        RenderOutput::Yaml => render::render_map_each(
            &environment,
            |batch| {
                let mut text = String::new();
                for o in batch {
                    render::push_yaml(&mut text, o);
                }
                text
            },
            |text| {
                out.write_all(text.as_bytes())?;
                Ok::<_, anyhow::Error>(())
            },
        ),
        RenderOutput::Json => (|| {
            use serde::ser::{SerializeSeq, Serializer};
            let mut json = serde_json::Serializer::pretty(&mut out);
            let mut list = json.serialize_seq(None)?;
            render::render_each(&environment, |batch| {
                for o in &batch {
                    list.serialize_element(&o.value())?;
                }
                Ok::<_, anyhow::Error>(())
            })?;
            list.end()?;
            out.write_all(b"\n")?;
            Ok(())
        })(),
    };
    match written.and_then(|()| out.flush().map_err(Into::into)) {
        Err(e) if !is_broken_pipe(&e) => Err(e.context("writing output")),
        _ => Ok(ExitCode::SUCCESS),
    }
}

/// A closed pipe (`| head`): the reader has what it wanted.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .map(std::io::Error::kind)
            .or_else(|| {
                cause
                    .downcast_ref::<serde_json::Error>()
                    .and_then(serde_json::Error::io_error_kind)
            })
            == Some(std::io::ErrorKind::BrokenPipe)
    })
}
