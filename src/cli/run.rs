//! `tenantsync run`: the daemon's options from its flags over its
//! configuration file, logging, then the daemon.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use std::collections::BTreeMap;
use std::sync::Arc;

use super::args::{ClusterArgs, LogFormat, RunArgs, VerifyMode, WriteArgs, parse_duration};
use super::print_diagnostics;
use crate::daemon::config::DaemonConfig;
use crate::daemon::{EnvTrust, RunOptions};
use crate::source::trust::{Trust, TrustError};

pub(super) fn run_cmd(args: RunArgs) -> anyhow::Result<ExitCode> {
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
    let c = config.as_ref();
    init_logging(&args, c);
    let options = run_options(&args, c)?;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(crate::daemon::run(options))?;
    Ok(ExitCode::SUCCESS)
}

/// Logs to stderr, as text (coloured on a terminal) or JSON lines.
fn init_logging(args: &RunArgs, c: Option<&DaemonConfig>) {
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
}

/// The daemon's options: its flags over the configuration file's.
fn run_options(args: &RunArgs, c: Option<&DaemonConfig>) -> anyhow::Result<RunOptions> {
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
    let policy = c.map(|c| c.sync_policy.clone()).unwrap_or_default();
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
    let branch = args
        .branch
        .clone()
        .or_else(|| c.and_then(|c| c.branch.clone()));
    let trust = env_trust(args, c, &environments, &repo, branch.as_deref())?;
    Ok(RunOptions {
        repo,
        branch,
        environments,
        interval: duration(args.interval, c.and_then(|c| c.interval.as_ref()), "1m")?,
        drift_interval: duration(
            args.drift_interval,
            c.and_then(|c| c.drift_interval.as_ref()),
            "10m",
        )?,
        listen,
        webhook_listen,
        ui: args.ui.or_else(|| c.and_then(|c| c.ui)).unwrap_or(true),
        prune: args.prune || policy.prune,
        self_heal: args.self_heal || policy.self_heal,
        operator: args.guard.operator(c),
        cluster: WriteArgs {
            max_writes_in_flight: args
                .writes
                .max_writes_in_flight
                .or_else(|| c.and_then(|c| c.max_writes_in_flight)),
        }
        .apply(
            ClusterArgs {
                kubeconfig: args
                    .cluster
                    .kubeconfig
                    .clone()
                    .or_else(|| c.and_then(|c| c.kubeconfig.clone()).map(PathBuf::from)),
                context: args.cluster.context.clone(),
            }
            .options(),
        ),
        webhook_secret: std::env::var("TENANTSYNC_WEBHOOK_SECRET")
            .ok()
            .filter(|s| !s.is_empty()),
        leader_elect: args.leader_elect
            || args.shard
            || c.is_some_and(|c| c.leader_elect || c.shard),
        shard: args.shard || c.is_some_and(|c| c.shard),
        lease_name: args
            .lease_name
            .clone()
            .or_else(|| c.and_then(|c| c.lease_name.clone()))
            .unwrap_or_else(|| crate::daemon::leader::LEASE_NAME.to_string()),
        allow_mass_prune: args.allow_mass_prune || policy.allow_mass_prune,
        prune_foreign: args.prune_foreign || policy.prune_foreign,
        contexts,
        trust,
    })
}

/// Each environment's source trust: `--verify-signatures` for all of them,
/// else the configuration's per environment. Key files are read now: a
/// missing or broken one stops the start.
fn env_trust(
    args: &RunArgs,
    c: Option<&DaemonConfig>,
    environments: &[String],
    repo: &str,
    branch: Option<&str>,
) -> anyhow::Result<BTreeMap<String, EnvTrust>> {
    type Files = (Option<PathBuf>, Option<PathBuf>);
    let mut loaded: BTreeMap<Files, Arc<Trust>> = BTreeMap::new();
    let mut load = |files: Files| -> anyhow::Result<Arc<Trust>> {
        if files.0.is_none() && files.1.is_none() {
            return Err(TrustError::NoKeys.into());
        }
        if let Some(trust) = loaded.get(&files) {
            return Ok(trust.clone());
        }
        let trust = Arc::new(Trust::load(files.0.as_deref(), files.1.as_deref())?);
        loaded.insert(files, trust.clone());
        Ok(trust)
    };
    let mut trust = BTreeMap::new();
    for env in environments {
        let target = c.and_then(|c| c.environments.iter().find(|e| &e.name == env));
        let from_file = |f: Option<&String>| f.map(PathBuf::from);
        let file_ssh = from_file(target.and_then(|t| t.allowed_signers.as_ref()));
        let file_pgp = from_file(target.and_then(|t| t.trusted_keys.as_ref()));
        let (mode, files) = match args.verify_signatures {
            Some(mode) => (
                Some(mode),
                if args.allowed_signers.is_some() || args.trusted_keys.is_some() {
                    (args.allowed_signers.clone(), args.trusted_keys.clone())
                } else {
                    (file_ssh, file_pgp)
                },
            ),
            None => {
                let mode = target
                    .and_then(|t| t.verify_signatures.as_deref())
                    .map(|m| {
                        if m == "all-since" {
                            VerifyMode::AllSince
                        } else {
                            VerifyMode::Tip
                        }
                    });
                let files = if file_ssh.is_some() || file_pgp.is_some() {
                    (file_ssh, file_pgp)
                } else {
                    (args.allowed_signers.clone(), args.trusted_keys.clone())
                };
                // Keys given and nothing verified would look safe and not
                // be: refused.
                if mode.is_none() && (files.0.is_some() || files.1.is_some()) {
                    anyhow::bail!(
                        "environment {env}: trusted keys are given (--allowed-signers, --trusted-keys or the configuration's allowedSigners/trustedKeys) but signatures are not verified: set --verify-signatures, or verifySignatures (tip or all-since) for the environment in the configuration"
                    );
                }
                (mode, files)
            }
        };
        let Some(mode) = mode else { continue };
        if !crate::source::git::is_remote_url(repo) && branch.is_none() {
            anyhow::bail!(
                "environment {env}: {repo} is read as a folder, whose files are not a commit: signatures cannot be verified; give --branch (a local Git repository) or a Git URL"
            );
        }
        trust.insert(
            env.clone(),
            EnvTrust {
                keys: load(files)?,
                all_since: mode == VerifyMode::AllSince,
            },
        );
    }
    Ok(trust)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::args::{Cli, Command};

    /// `run --repo . --env dev` with `flags`, parsed.
    fn run_args(flags: &[&str]) -> Result<RunArgs, String> {
        let cli = Cli::try_parse_from(
            ["tenantsync", "run", "--repo", ".", "--env", "dev"]
                .iter()
                .chain(flags),
        )
        .map_err(|e| e.to_string())?;
        let Command::Run(args) = cli.command else {
            panic!("not run");
        };
        Ok(args)
    }

    /// A configuration file for `dev` with `more` lines.
    fn config_file(more: &str) -> Result<DaemonConfig, String> {
        crate::daemon::config::parse(
            "tenantsync.yaml",
            format!("apiVersion: tenantsync.io/v1alpha1\nkind: DaemonConfig\nrepo: .\nenvironments: [{{name: dev}}]\n{more}").as_bytes(),
        )
        .map_err(|d| format!("{d:?}"))
    }

    fn ui(flags: &[&str], file: Option<&str>) -> bool {
        let args = run_args(flags).unwrap();
        let config = file.map(|f| config_file(f).unwrap());
        run_options(&args, config.as_ref()).unwrap().ui
    }

    fn parsed(flags: &[&str]) -> Result<RunOptions, String> {
        run_options(&run_args(flags)?, None).map_err(|e| e.to_string())
    }

    #[test]
    fn max_writes_in_flight_comes_from_the_file_unless_the_flag_says_otherwise() {
        let limit = |flags: &[&str], file: &str| {
            let args = run_args(flags).unwrap();
            config_file(file).map(|c| {
                run_options(&args, Some(&c))
                    .unwrap()
                    .cluster
                    .max_writes_in_flight
            })
        };
        assert_eq!(limit(&[], "maxWritesInFlight: 12"), Ok(Some(12)));
        assert_eq!(
            limit(&["--max-writes-in-flight", "3"], "maxWritesInFlight: 12"),
            Ok(Some(3))
        );
        assert_eq!(limit(&[], ""), Ok(None));
        // The schema refuses what the flag refuses.
        assert!(limit(&[], "maxWritesInFlight: 0").is_err());
        assert!(limit(&[], "maxWritesInFlight: 65").is_err());
    }

    #[test]
    fn max_writes_in_flight_reaches_the_daemons_connections_within_1_to_64() {
        let limit = |flags: &[&str]| parsed(flags).map(|o| o.cluster.max_writes_in_flight);
        assert_eq!(limit(&[]), Ok(None));
        assert_eq!(limit(&["--max-writes-in-flight", "16"]), Ok(Some(16)));
        assert_eq!(limit(&["--max-writes-in-flight", "1"]), Ok(Some(1)));
        for refused in ["0", "65", "-1", "many"] {
            assert!(
                limit(&["--max-writes-in-flight", refused]).is_err(),
                "{refused}"
            );
        }
    }

    #[test]
    fn the_status_page_is_on_unless_the_flag_or_the_file_turns_it_off() {
        assert!(ui(&[], None));
        assert!(!ui(&["--ui=false"], None));
        assert!(ui(&["--ui"], None));
        assert!(!ui(&[], Some("ui: false")));
        // The flag wins over the file.
        assert!(ui(&["--ui=true"], Some("ui: false")));
        assert!(ui(&["--ui"], Some("ui: false")));
    }
}
