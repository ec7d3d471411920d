//! The command line as clap parses it: raw arguments, each command's
//! flags, and the few values they are turned into (the operator's
//! guardrails, the cluster to talk to).

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use super::help::{self, VERSION};
use crate::cluster::ClusterOptions;
use crate::declare::model::DEFAULT_MAX_PRUNE_PERCENT;
use crate::sync::tenancy::{Operator, OperatorPolicy};

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
    Plan(PlanArgs),
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
    /// Approve the pending revision of a manual environment (syncPolicy.mode: manual).
    ///
    /// Records the approval of exactly that revision on ConfigMap
    /// tenantsync-system/approval-<env>, with the user the API server authenticates
    /// you as and the name given with --by. Whoever may patch that ConfigMap may
    /// approve (deploy/rbac-approver.yaml). A revision that is not the one the daemon
    /// holds as pending is refused and nothing is recorded.
    #[command(after_long_help = help::APPROVE)]
    Approve(ApproveArgs),
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
            max_writes_in_flight: None,
        }
    }
}

/// How hard a writer may push the API server.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct WriteArgs {
    /// The most writes kept in flight to the API server at once (1 to 64,
    /// default 8). The window starts at 8 (or this, when less), grows by one
    /// per window's worth of answers as fast as usual, and narrows on 429 Too Many
    /// Requests or much slower answers. More than 8 synced no faster against
    /// the test control plane on 2 cores; a larger or remote API server may
    /// take more.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=64))]
    pub max_writes_in_flight: Option<u16>,
}

impl WriteArgs {
    /// `options` with this limit.
    pub fn apply(&self, mut options: ClusterOptions) -> ClusterOptions {
        options.max_writes_in_flight = self.max_writes_in_flight.map(usize::from);
        options
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
pub struct ApproveArgs {
    /// Environment whose pending revision to approve.
    #[arg(long = "env", value_name = "NAME")]
    pub env: String,
    /// The pending revision (commit SHA, or at least its first 7 characters).
    #[arg(long, value_name = "SHA")]
    pub revision: String,
    /// Who approves, as recorded with the approval (default: the user the API
    /// server authenticates).
    #[arg(long, value_name = "NAME")]
    pub by: Option<String>,
    /// A saved plan of the pending revision (`plan --out FILE`): the daemon
    /// applies the revision only while its plan is that plan's change set.
    #[arg(long, value_name = "FILE")]
    pub plan: Option<PathBuf>,
    #[command(flatten)]
    pub cluster: ClusterArgs,
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
    /// How often to compare the whole cluster with the last applied revision, besides
    /// the watches that see a hand edit at once [default: 10m].
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
    /// Serve the read-only status page (GET /, /environments/...) on --listen
    /// [default: true; also `ui` in --config]; --ui=false turns it off.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub ui: Option<bool>,
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
    /// Spread the environments over the replicas (implies --leader-elect):
    /// each environment has its own Lease, <lease-name>-<env>, and only its
    /// holder writes it; each replica holds at most its share, and takes
    /// over a dead replica's environments when their Leases expire (15 s).
    #[arg(long)]
    pub shard: bool,
    /// In every environment, refuse a new revision whose commit is not signed
    /// by a key of --allowed-signers or --trusted-keys (like an invalid one: the last good
    /// revision stays applied, and /status says which commit, key and why);
    /// `all-since`: every commit since the revision last applied too.
    /// The configuration sets it per environment.
    #[arg(long, value_enum, value_name = "MODE", num_args = 0..=1, default_missing_value = "tip")]
    pub verify_signatures: Option<VerifyMode>,
    /// The keys commits may be signed with (git's SSH allowed_signers format).
    #[arg(long, value_name = "FILE")]
    pub allowed_signers: Option<PathBuf>,
    /// The OpenPGP keys commits may be signed with (armored public keys).
    #[arg(long, value_name = "FILE")]
    pub trusted_keys: Option<PathBuf>,
    #[command(flatten)]
    pub writes: WriteArgs,
}

/// Which commits the daemon verifies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum VerifyMode {
    /// The new revision's commit.
    Tip,
    /// Every commit since the revision last applied.
    AllSince,
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
    /// Apply exactly this saved plan (`plan --out FILE`) and nothing else:
    /// its revision is read again and must render the planned objects, and
    /// if any object changed in the cluster since, nothing is applied (exit 1).
    /// Its workspaces, --adopt and deletes are the plan's; flags that would
    /// change what it does (--force-recreate, --prune-foreign,
    /// --force-conflicts, --skip-invalid) are refused with it.
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with_all = ["skip_invalid", "force_recreate", "prune_foreign", "force_conflicts"]
    )]
    pub plan: Option<PathBuf>,
    /// Delete inventoried objects that are no longer declared (also on with the
    /// environment's syncPolicy.prune).
    #[arg(long)]
    pub prune: bool,
    /// Send every write with dryRun=All: report what would happen, server
    /// validation included, and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Sync even while the environment's sync windows (syncPolicy.windows) hold
    /// changes back, for an emergency; recorded as a Warning Event.
    #[arg(long)]
    pub ignore_windows: bool,
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
    #[command(flatten)]
    pub writes: WriteArgs,
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
                    .unwrap_or(DEFAULT_MAX_PRUNE_PERCENT),
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
    #[command(flatten)]
    pub trust: TrustArgs,
}

/// Source trust: which commits may be read.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct TrustArgs {
    /// Refuse a revision whose commit is not signed by a key of
    /// --allowed-signers or --trusted-keys (exit 1 naming the commit, the key and why); with
    /// `all-since REV`, every commit since REV too (an unsigned commit under a
    /// signed merge is refused). Git sources only (--rev or a URL).
    #[arg(long, value_name = "all-since REV", num_args = 0..=2)]
    pub verify_signatures: Option<Vec<String>>,
    /// The keys commits may be signed with: git's SSH allowed_signers format
    /// (`PRINCIPALS [namespaces="git"] KEYTYPE BASE64KEY`), for commits signed
    /// with gpg.format=ssh.
    #[arg(long, value_name = "FILE", requires = "verify_signatures")]
    pub allowed_signers: Option<PathBuf>,
    /// The OpenPGP keys commits may be signed with (armored public keys, as
    /// `gpg --armor --export` writes them), for commits signed with GPG.
    #[arg(long, value_name = "FILE", requires = "verify_signatures")]
    pub trusted_keys: Option<PathBuf>,
}

impl TrustArgs {
    /// The keys and what to verify, when --verify-signatures is given.
    pub fn trust(
        &self,
    ) -> anyhow::Result<Option<(crate::source::trust::Trust, crate::source::trust::Verify)>> {
        let Some(values) = &self.verify_signatures else {
            return Ok(None);
        };
        let verify = crate::source::trust::Verify::parse(values).map_err(anyhow::Error::msg)?;
        let trust = crate::source::trust::Trust::load(
            self.allowed_signers.as_deref(),
            self.trusted_keys.as_deref(),
        )?;
        Ok(Some((trust, verify)))
    }
}

/// `plan`'s arguments: those it shares with `drift` and `sync`, and its own.
#[derive(Clone, Debug, clap::Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub live: LiveArgs,
    /// Plan only the workspaces that what changed since this Git revision
    /// reaches (a pull request's base, e.g. origin/main): a workspace file of
    /// the environment's layers plans its workspace; a change to an
    /// environment.yaml or resources/ of those layers plans everything.
    #[arg(long, value_name = "REV")]
    pub changed_since: Option<String>,
    /// Also write the plan to FILE (JSON, formatVersion 1) for `sync --plan`:
    /// the revision, a digest of every rendered object and the uid and
    /// resourceVersion of every object to update or delete; no Secret values.
    /// A saved plan covers the environment (or its --workspace selection),
    /// not what --changed-since selects.
    #[arg(long, value_name = "FILE", conflicts_with = "changed_since")]
    pub out: Option<PathBuf>,
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
