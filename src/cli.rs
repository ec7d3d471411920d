//! Command-line interface: argument parsing and output formats only.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

use crate::cluster::sync::{self as cluster_sync, Progress, SyncError};
use crate::cluster::{Cluster, ClusterOptions};
use crate::diag::Diagnostic;
use crate::model::SyncPolicy;
use crate::repo::SourceTree;
use crate::source::{self, folder};
use crate::sync::SyncOptions;
use crate::tenancy::{self, Operator, OperatorPolicy};
use crate::validate;
use crate::{diff, print, render};

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

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Environment to show.
    #[arg(long = "env", value_name = "NAME")]
    pub env: String,
    /// Kubeconfig file (default: KUBECONFIG, ~/.kube/config, or in-cluster).
    #[arg(long, value_name = "FILE", env = "TENANTSYNC_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context to use.
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,
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
    /// Kubeconfig file (default: KUBECONFIG, ~/.kube/config, or in-cluster).
    #[arg(long, value_name = "FILE", env = "TENANTSYNC_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context to use.
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,
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
                    .unwrap_or(crate::model::DEFAULT_MAX_PRUNE_PERCENT),
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
    /// Kubeconfig file (default: KUBECONFIG, ~/.kube/config, or in-cluster).
    #[arg(long, value_name = "FILE", env = "TENANTSYNC_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context to use.
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,
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

/// Reads the desired state: a folder as it is, or a Git revision.
fn read_source(args: &LiveArgs) -> anyhow::Result<(SourceTree, Option<String>)> {
    let (tree, revision) =
        source::read(&args.repo, args.rev.as_deref(), &source::auth_from_env()?)?;
    Ok((tree, revision.map(|r| r.commit)))
}

fn live_cmd(args: &LiveArgs, verb: print::Verb) -> anyhow::Result<ExitCode> {
    let runtime = runtime()?;
    let options = ClusterOptions {
        kubeconfig: args.kubeconfig.clone(),
        context: args.context.clone(),
    };
    // drift compares the cluster with what tenantsync last applied: the
    // revision the inventory records, when the repository is Git and no
    // --rev was given (a plain folder has no history: its current files).
    let mut args = args.clone();
    if matches!(verb, print::Verb::Drift) && args.rev.is_none() {
        let is_git = source::git::is_remote_url(&args.repo)
            || source::git::open_local(std::path::Path::new(&args.repo)).is_ok();
        if is_git {
            let applied = runtime
                .block_on(async {
                    Cluster::connect(&options)
                        .await?
                        .read_inventory(&args.env)
                        .await
                })?
                .and_then(|inventory| inventory.revision)
                .filter(|r| r.len() == 40 && r.bytes().all(|b| b.is_ascii_hexdigit()));
            args.rev = applied;
        }
    }
    let args = &args;
    let DesiredState {
        name,
        objects: desired,
        revision,
        scope,
        ownership,
        unresolved,
        ..
    } = match desired_state(args, None)? {
        Ok(state) => state,
        Err(code) => return Ok(code),
    };
    let cluster = runtime.block_on(Cluster::connect(&options))?;
    if let Err(code) = runtime.block_on(scopes_admitted(&cluster, args, &name, &desired))? {
        return Ok(code);
    }
    if let Err(code) = runtime.block_on(selection_known(&cluster, &name, &unresolved))? {
        return Ok(code);
    }
    let plan = runtime.block_on(async {
        let cluster = &cluster;
        // plan deletes what sync --prune would: inventoried objects only;
        // drift reports every labelled object nothing declares.
        let inventory = cluster
            .read_inventory(&name)
            .await?
            .unwrap_or_else(|| crate::inventory::Inventory::new(&name));
        let kinds = crate::inventory::kinds_to_list(&desired, Some(&inventory));
        let mut planner = diff::Planner::new(&name, &desired, true).with_ownership(ownership);
        cluster
            .for_each_managed(&name, &kinds, |o| {
                if scope.contains_live(&o) {
                    planner.observe(o)
                }
            })
            .await?;
        let recorded: std::collections::HashSet<(String, Option<String>, String)> = inventory
            .objects
            .iter()
            .map(|r| {
                (
                    r.kind.to_string(),
                    r.namespace.as_deref().map(String::from),
                    r.name.to_string(),
                )
            })
            .collect();
        let mut plan = match verb {
            print::Verb::Plan => {
                let (mut plan, _) = planner.finish(Some(&scope.inventory(&inventory)), revision, 0);
                let existing = cluster.find_existing(&plan).await?;
                tenancy::settle_ownership(&mut plan, &inventory, &existing, args.adopt);
                plan
            }
            print::Verb::Drift => planner.finish(None, revision, 0).0,
        };
        // drift: an object declared but never applied (not inventoried) is
        // pending, not missing; a labelled object the inventory never
        // recorded was never declared, not "no longer" declared.
        let mut notes = DriftNotes::default();
        if matches!(verb, print::Verb::Drift) {
            let key = |c: &crate::plan::Change| {
                (
                    c.kind.to_string(),
                    c.namespace.as_deref().map(String::from),
                    c.name.to_string(),
                )
            };
            let (pending, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut plan.changes)
                .into_iter()
                .partition(|c| {
                    c.action == crate::plan::Action::Create && !recorded.contains(&key(c))
                });
            notes.pending = pending.iter().map(|c| c.id()).collect();
            notes.never_declared = kept
                .iter()
                .filter(|c| c.action == crate::plan::Action::Delete && !recorded.contains(&key(c)))
                .map(|c| c.id())
                .collect();
            plan.changes = kept;
            plan.summary = crate::plan::Summary::of(&plan.changes);
        }
        // What a namespace the plan deletes holds that tenantsync never made.
        let namespaces: Vec<String> = plan
            .changes
            .iter()
            .filter(|c| c.action == crate::plan::Action::Delete && &*c.kind == "Namespace")
            .map(|c| c.name.to_string())
            .collect();
        let foreign = if matches!(verb, print::Verb::Plan) && !namespaces.is_empty() {
            cluster.foreign_objects(&namespaces, &inventory).await?
        } else {
            Default::default()
        };
        let plan = crate::plan::Plan {
            api_requests: cluster.requests(),
            ..plan
        };
        Ok::<_, crate::cluster::ClusterError>((plan, foreign, notes))
    })?;
    let (plan, foreign, notes) = plan;
    let color =
        !args.no_color && std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let mut text = match args.output {
        PlanOutput::Text => print::text(&plan, color, verb),
        PlanOutput::Markdown => print::markdown(&plan, verb),
        PlanOutput::Json => print::json(&plan),
    };
    if !foreign.is_empty() {
        text = with_foreign(text, &foreign, args.output);
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
    fn add_to(&self, text: String, output: PlanOutput) -> String {
        if let PlanOutput::Json = output {
            let Ok(mut value) = serde_json::from_str::<serde_json::Value>(&text) else {
                return text;
            };
            value["pending"] = serde_json::json!(self.pending);
            value["neverDeclared"] = serde_json::json!(self.never_declared);
            return serde_json::to_string_pretty(&value).map_or(text, |t| t + "\n");
        }
        let mut out = text;
        if !self.pending.is_empty() {
            out.push_str(&format!(
                "\nPending: {} object(s) declared but never applied (not drift; the next sync creates them): {}\n",
                self.pending.len(),
                crate::sync::name_some(&self.pending)
            ));
        }
        if !self.never_declared.is_empty() {
            out.push_str(&format!(
                "\nOf the orphaned, {} were never declared (labelled as tenantsync's but never in its inventory; prune leaves them): {}\n",
                self.never_declared.len(),
                crate::sync::name_some(&self.never_declared)
            ));
        }
        out
    }
}

/// The plan's text with what the namespaces it deletes hold that tenantsync
/// did not make (kind and name only): `foreign` in JSON, a note otherwise.
fn with_foreign(
    text: String,
    foreign: &std::collections::BTreeMap<String, crate::cluster::foreign::Foreign>,
    output: PlanOutput,
) -> String {
    if let PlanOutput::Json = output {
        let Ok(mut value) = serde_json::from_str::<serde_json::Value>(&text) else {
            return text;
        };
        value["foreign"] = serde_json::to_value(foreign).unwrap_or_default();
        return serde_json::to_string_pretty(&value).map_or(text, |t| t + "\n");
    }
    let mut out = text;
    for (ns, f) in foreign {
        if !f.objects.is_empty() {
            out.push_str(&format!(
                "\nNamespace {ns} holds {} object(s) tenantsync did not make: {}.\n\
                 sync --prune deletes its managed objects but keeps the namespace (--prune-foreign deletes them with it).\n",
                f.objects.len(),
                f.objects.join(", ")
            ));
        }
        if !f.unchecked_kinds.is_empty() {
            out.push_str(&format!(
                "\nNamespace {ns}: {} kind(s) could not be checked (no list permission): {}.\n",
                f.unchecked_kinds.len(),
                crate::sync::name_some(&f.unchecked_kinds)
            ));
        }
    }
    out
}

/// An environment's name and sync policy, its rendered objects, and the Git
/// revision they came from. Not the model: at thousands of workspaces it is
/// large, and nothing after rendering needs it.
struct DesiredState {
    name: String,
    sync_policy: SyncPolicy,
    /// The operator's settings tightened by the repository's.
    effective: tenancy::EffectivePolicy,
    /// The objects in scope (of the selected workspaces, when selected).
    objects: Vec<render::Object>,
    revision: Option<String>,
    /// A digest of the files read (a folder's revision).
    digest: String,
    /// What may be planned, applied and pruned.
    scope: crate::sync::Scope,
    /// Invalid workspaces skipped (`sync --skip-invalid`), with their errors.
    skipped: Vec<(String, Vec<Diagnostic>)>,
    /// Selected workspaces known only from the inventory, if at all.
    unresolved: Unresolved,
    /// `spec.ownership`: whose fields are drift, which are left alone.
    ownership: crate::model::Ownership,
}

/// The environment's rendered objects and where they came from, or the
/// validation errors and broken guardrails (printed) and exit code 1. With
/// `skip_invalid`, invalid workspaces are left out and held (see
/// [`crate::sync::Scope`]) instead of failing the whole environment;
/// problems of the environment itself still do.
fn desired_state(
    args: &LiveArgs,
    sync: Option<bool>,
) -> anyhow::Result<Result<DesiredState, ExitCode>> {
    // `Some(skip_invalid)` for sync; plan and drift are strict.
    let skip_invalid = sync == Some(true);
    let (tree, revision) = read_source(args)?;
    let digest = crate::daemon::revision_of(&tree, None);
    // Each stage's input goes as soon as the next stage has what it needs:
    // the files once parsed, the parsed files once resolved.
    let repository = validate::load(&tree);
    drop(tree);
    let partial = repository.resolve_partial(&args.env);
    drop(repository);
    let refuse = |diags: &[Diagnostic], why: &str| {
        print_diagnostics(diags);
        eprintln!(
            "{} error(s){why}; the cluster was not contacted",
            diags.len()
        );
        Ok(Err(ExitCode::from(1)))
    };
    // Only the selected workspaces need to be valid: the others are out
    // of scope and left as they are.
    let selected = |ws: &str| args.workspaces.is_empty() || args.workspaces.iter().any(|w| w == ws);
    let (invalid, unselected): (
        std::collections::BTreeMap<_, _>,
        std::collections::BTreeMap<_, _>,
    ) = partial
        .workspace_errors
        .iter()
        .map(|(ws, diags)| (ws.clone(), diags.clone()))
        .partition(|(ws, _)| selected(ws));
    if !partial.environment_errors.is_empty() || (!skip_invalid && !invalid.is_empty()) {
        let why = if partial.environment_errors.is_empty() && sync.is_some() {
            " (sync --skip-invalid applies the valid workspaces)"
        } else {
            ""
        };
        let mut errors = partial.environment_errors.clone();
        errors.extend(invalid.values().flatten().cloned());
        errors.sort();
        errors.dedup();
        return refuse(&errors, why);
    }
    if !unselected.is_empty() {
        eprintln!(
            "note: invalid workspace(s) not selected, left as they are: {}",
            unselected.keys().cloned().collect::<Vec<_>>().join(", ")
        );
    }
    let environment = partial.environment;
    // A selected workspace Git does not declare may be one being
    // offboarded: the inventory, read once the cluster is reached, must
    // record its namespace.
    let mut known: Vec<&str> = environment
        .workspaces
        .iter()
        .map(|w| w.metadata.name.as_str())
        .chain(partial.workspace_errors.keys().map(String::as_str))
        .collect();
    known.sort_unstable();
    let unresolved = Unresolved {
        workspaces: args
            .workspaces
            .iter()
            .filter(|w| !known.contains(&w.as_str()))
            .map(|w| (w.clone(), environment.namespace_of(w)))
            .collect(),
        known: known.join(", "),
    };
    let scope = crate::sync::Scope {
        only: (!args.workspaces.is_empty()).then(|| {
            args.workspaces
                .iter()
                .map(|w| environment.namespace_of(w))
                .collect()
        }),
        held: partial
            .workspace_errors
            .keys()
            .map(|w| environment.namespace_of(w))
            .collect(),
    };
    let mut objects = render::render(&environment)?;
    let effective = match admitted(&args.guard.operator(None), &environment, &objects) {
        Ok(effective) => effective,
        Err(diags) => return refuse(&diags, ""),
    };
    if !scope.is_everything() {
        objects.retain(|o| scope.contains_object(o));
    }
    Ok(Ok(DesiredState {
        objects,
        name: environment.name,
        sync_policy: environment.settings.sync_policy,
        effective,
        revision,
        digest,
        scope,
        ownership: environment.settings.ownership,
        skipped: invalid.into_iter().collect(),
        unresolved,
    }))
}

/// Selected workspaces that Git does not declare, each with its namespace,
/// and the workspaces it does (for the message).
struct Unresolved {
    workspaces: Vec<(String, String)>,
    known: String,
}

/// A selected workspace that Git does not declare is one known only from
/// the inventory (removed from Git, still on the cluster): its namespace
/// must be recorded there; otherwise the name is a mistake, refused before
/// anything is written.
async fn selection_known(
    cluster: &Cluster,
    environment: &str,
    unresolved: &Unresolved,
) -> Result<Result<(), ExitCode>, crate::cluster::ClusterError> {
    if unresolved.workspaces.is_empty() {
        return Ok(Ok(()));
    }
    let inventory = cluster.read_inventory(environment).await?;
    let recorded = |ns: &str| {
        inventory.as_ref().is_some_and(|i| {
            i.objects.iter().any(|r| {
                r.namespace.as_deref() == Some(ns) || (&*r.kind == "Namespace" && &*r.name == ns)
            })
        })
    };
    match unresolved.workspaces.iter().find(|(_, ns)| !recorded(ns)) {
        None => Ok(Ok(())),
        Some((ws, ns)) => {
            eprintln!(
                "error: environment {environment} has no workspace `{ws}` (its workspaces: {}), and its inventory records nothing in namespace `{ns}`; nothing was changed",
                unresolved.known
            );
            Ok(Err(ExitCode::from(1)))
        }
    }
}

/// [`tenancy::admit`] of a resolved environment, its violations as
/// diagnostics.
fn admitted(
    operator: &Operator,
    environment: &crate::model::Environment,
    objects: &[render::Object],
) -> Result<tenancy::EffectivePolicy, Vec<Diagnostic>> {
    tenancy::admit(
        operator,
        &environment.name,
        environment.settings.namespace_template.as_deref(),
        &environment.settings.sync_policy,
        objects,
    )
    .map_err(|violations| {
        violations
            .iter()
            .map(|v| v.diagnostic(&environment.name))
            .collect()
    })
}

/// The guardrails only the cluster can judge (the scope API discovery gives
/// each `resources/` manifest's kind), before anything is written; broken
/// ones are printed and give exit code 1.
async fn scopes_admitted(
    cluster: &Cluster,
    args: &LiveArgs,
    environment: &str,
    objects: &[render::Object],
) -> Result<Result<(), ExitCode>, crate::cluster::ClusterError> {
    let violations = cluster
        .check_scopes(&args.guard.operator(None).guardrails, objects)
        .await?;
    if violations.is_empty() {
        return Ok(Ok(()));
    }
    let diags: Vec<Diagnostic> = violations
        .iter()
        .map(|v| v.diagnostic(environment))
        .collect();
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
    let DesiredState {
        name,
        sync_policy: policy,
        effective,
        objects: desired,
        revision,
        digest,
        scope,
        skipped,
        ownership,
        unresolved,
    } = match desired_state(live_args, Some(args.skip_invalid))? {
        Ok(state) => state,
        Err(code) => return Ok(code),
    };
    for (ws, diags) in &skipped {
        eprintln!(
            "skipped workspace {ws}: {} error(s); its objects are neither applied nor pruned:",
            diags.len()
        );
        print_diagnostics(diags);
    }
    // A sync of some workspaces only does not move the revision the
    // inventory records for the environment as a whole.
    let revision = if scope.only.is_some() { None } else { revision };
    let options = SyncOptions {
        prune: args.prune || policy.prune,
        dry_run: args.dry_run,
        force_conflicts: effective.force_conflicts,
        force_recreate: args.force_recreate,
        allow_mass_prune: args.allow_mass_prune,
        max_prune_percent: effective.max_prune_percent,
        prune_foreign: args.prune_foreign,
        lock_lost: None,
        scope: scope.clone(),
    };
    let cluster_options = ClusterOptions {
        kubeconfig: live_args.kubeconfig.clone(),
        context: live_args.context.clone(),
    };
    let interactive =
        std::io::stderr().is_terminal() && !matches!(live_args.output, PlanOutput::Json);
    let runtime = runtime()?;
    let cluster = runtime.block_on(Cluster::connect(&cluster_options))?;
    if let Err(code) = runtime.block_on(scopes_admitted(&cluster, live_args, &name, &desired))? {
        return Ok(code);
    }
    if let Err(code) = runtime.block_on(selection_known(&cluster, &name, &unresolved))? {
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
    // A folder's revision is the digest of its files, as the daemon's.
    let revision = revision.or(Some(digest));
    let result = runtime.block_on(async {
        let cluster = &cluster;
        let inventory = cluster.read_inventory(&name).await?;
        let kinds = crate::inventory::kinds_to_list(&desired, inventory.as_ref());
        // A sync needs the changes, not their diff text.
        let mut planner = diff::Planner::new(&name, &desired, false).with_ownership(ownership);
        cluster
            .for_each_managed(&name, &kinds, |o| {
                if scope.contains_live(&o) {
                    planner.observe(o)
                }
            })
            .await?;
        let scoped = inventory.as_ref().map(|i| scope.inventory(i));
        let (mut plan, undeclared) =
            planner.finish(scoped.as_ref(), revision.clone(), cluster.requests());
        let existing = cluster.find_existing(&plan).await?;
        tenancy::settle_ownership(
            &mut plan,
            inventory
                .as_ref()
                .unwrap_or(&crate::inventory::Inventory::new(&name)),
            &existing,
            live_args.adopt,
        );
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
            &desired,
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
            let options = crate::health::HealthOptions {
                wait_for_ingress_address: !args.no_ingress_address_wait,
            };
            let health =
                cluster_sync::wait_for_health(cluster, &desired, &options, args.timeout, |r, h| {
                    eprintln!("{:<11} {}: {}", h.status.to_string(), r.id(), h.message);
                })
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
        PlanOutput::Text | PlanOutput::Markdown => sync_text(&report),
    };
    write_stdout(&text)?;
    if !skipped.is_empty() {
        let names: Vec<&str> = skipped.iter().map(|(w, _)| w.as_str()).collect();
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
    result: &Result<cluster_sync::SyncReport, SyncError>,
    revision: Option<&str>,
    by: &str,
    skipped: &[(String, Vec<Diagnostic>)],
) -> std::collections::BTreeMap<String, String> {
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let (mut status, mut error) = match result {
        Ok(r) if r.succeeded() => ("Synced", String::new()),
        Ok(r) => ("Failed", sync_error_text(r)),
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
                .iter()
                .map(|(w, _)| w.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )];
        lines.extend(
            skipped
                .iter()
                .flat_map(|(_, d)| d.iter().map(ToString::to_string)),
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

/// Why a sync did not succeed, one line per object.
pub fn sync_error_text(r: &cluster_sync::SyncReport) -> String {
    let mut lines: Vec<String> = Vec::new();
    if let Some(a) = &r.aborted {
        lines.push(a.clone());
    }
    lines.extend(r.failures.iter().map(|f| f.message.clone()));
    lines.extend(r.conflicts.iter().map(|c| {
        let fields: Vec<String> = c
            .fields
            .iter()
            .map(|f| format!("{} (owned by {})", f.field, f.manager))
            .collect();
        format!("{}: conflict: {}", c.id, fields.join(", "))
    }));
    if !r.not_sent.is_empty() {
        lines.push(format!(
            "{} object(s) not sent: {}",
            r.not_sent.len(),
            crate::sync::name_some(&r.not_sent)
        ));
    }
    lines.join("\n")
}

fn sync_text(r: &cluster_sync::SyncReport) -> String {
    let mut out = String::new();
    for c in &r.conflicts {
        let fields: Vec<String> = c
            .fields
            .iter()
            .map(|f| format!("{} (owned by {})", f.field, f.manager))
            .collect();
        out.push_str(&format!(
            "conflict: {}: {}; re-run with --force-conflicts to take them over\n",
            c.id,
            fields.join(", ")
        ));
    }
    for f in &r.failures {
        out.push_str(&format!("failed: {}\n", f.message));
    }
    for k in &r.kept {
        out.push_str(&format!("kept: {} ({})\n", k.id, k.message));
    }
    for id in &r.adopted {
        out.push_str(&format!("adopted: {id}\n"));
    }
    for (ns, f) in &r.foreign {
        if !f.objects.is_empty() {
            out.push_str(&format!(
                "namespace {ns} holds {} object(s) tenantsync did not make: {}\n",
                f.objects.len(),
                f.objects.join(", ")
            ));
        }
        if !f.unchecked_kinds.is_empty() {
            out.push_str(&format!(
                "namespace {ns}: {} kind(s) could not be checked (no list permission): {}\n",
                f.unchecked_kinds.len(),
                crate::sync::name_some(&f.unchecked_kinds)
            ));
        }
    }
    if let Some(a) = &r.aborted {
        out.push_str(&format!("stopped: {a}\n"));
    }
    if !r.not_sent.is_empty() {
        out.push_str(&format!(
            "not sent: {} object(s): {}\n",
            r.not_sent.len(),
            crate::sync::name_some(&r.not_sent)
        ));
    }
    if let Some(why) = &r.prune_skipped {
        out.push_str(&format!("prune skipped: {why}\n"));
    }
    if let Some(h) = &r.health {
        for o in h
            .objects
            .iter()
            .filter(|o| o.status != crate::health::HealthStatus::Healthy)
        {
            out.push_str(&format!("{}: {} ({})\n", o.status, o.id, o.message));
        }
        let per_ws: Vec<String> = h
            .workspaces
            .iter()
            .map(|(w, s)| format!("{w}: {s}"))
            .collect();
        out.push_str(&format!("Health: {} ({})\n", h.status, per_ws.join(", ")));
    }
    out.push_str(&format!(
        "{}Sync of environment {}{}: {} created, {} updated, {} recreated, {} pruned, {} unchanged, {} {}, {} {}; {} write {}.\n",
        if r.dry_run { "(dry run) " } else { "" },
        r.environment,
        r.revision.as_deref().map(|v| format!(" at {}", v.get(..12).unwrap_or(v))).unwrap_or_default(),
        r.created.len(),
        r.updated.len(),
        r.recreated.len(),
        r.pruned.len(),
        r.unchanged,
        r.conflicts.len(),
        crate::print::kind_plural("conflict", r.conflicts.len()),
        r.failures.len(),
        crate::print::kind_plural("failure", r.failures.len()),
        r.write_requests,
        crate::print::kind_plural("request", r.write_requests as usize),
    ));
    out
}

fn status_cmd(args: &StatusArgs) -> anyhow::Result<ExitCode> {
    let options = ClusterOptions {
        kubeconfig: args.kubeconfig.clone(),
        context: args.context.clone(),
    };
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
            let get = |k: &str| {
                data.get(k)
                    .map(String::as_str)
                    .filter(|v| !v.is_empty())
                    .unwrap_or("-")
            };
            let sync_status = if stale {
                format!(
                    "Unknown (stale: the daemon has not reported for {}s; it last reported {})",
                    silent_for.unwrap_or_default(),
                    get("status.syncStatus")
                )
            } else if get("status.syncStatus") == "Syncing" {
                format!("Syncing {}", get("status.targetRevision"))
            } else {
                get("status.syncStatus").to_string()
            };
            let mut out = format!(
                "environment:        {}\nsync status:        {}\napplied revision:   {}\nlast applied at:    {}\nseen revision:      {}\nobjects:            {}\ndrifted objects:    {}\n",
                args.env,
                sync_status,
                get("revision"),
                get("lastAppliedAt"),
                get("status.lastSeenRevision"),
                get("objectCount"),
                get("status.driftedObjects"),
            );
            if let Some(t) = data.get("status.heartbeatAt").filter(|t| !t.is_empty()) {
                out.push_str(&format!(
                    "daemon heartbeat:   {t} ({}s ago{})\n",
                    silent_for.unwrap_or_default(),
                    if stale { ", stale" } else { "" }
                ));
            }
            if let Some(h) = &holder {
                out.push_str(&format!("locked by:          {h}\n"));
            }
            if let Some(t) = data.get("status.lastSyncAt").filter(|t| !t.is_empty()) {
                out.push_str(&format!(
                    "last CLI sync:      {t} by {}\n",
                    get("status.lastSyncBy")
                ));
            }
            if let Some(e) = data.get("status.lastError").filter(|e| !e.is_empty()) {
                out.push_str(&format!(
                    "last error ({}):\n  {}\n",
                    get("status.lastErrorAt"),
                    e.replace('\n', "\n  ")
                ));
            }
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
        cluster: ClusterOptions {
            kubeconfig: args
                .kubeconfig
                .clone()
                .or_else(|| c.and_then(|c| c.kubeconfig.clone()).map(PathBuf::from)),
            context: args.context.clone(),
        },
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
    let mut namespaces: Vec<(String, Vec<render::Object>)> = Vec::new();
    for environment in &report.environments {
        let objects = render::render(environment)?;
        if let Err(diags) = admitted(operator, environment, &objects) {
            report.diagnostics.extend(diags);
        }
        let rendered = objects.into_iter().filter(|o| &*o.kind == "Namespace");
        namespaces.push((environment.name.clone(), rendered.collect()));
    }
    // Across the environments validated together (all of them without
    // --env): two rendering one namespace.
    let together: Vec<(&str, &[render::Object])> = namespaces
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
