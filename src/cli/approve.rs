//! `tenantsync approve`: record the approval of a manual environment's
//! pending revision on its approval ConfigMap (the daemon applies it).

use std::process::ExitCode;

use super::args::ApproveArgs;
use super::runtime;
use crate::cluster::{Cluster, ClusterError};
use crate::plan::contract::PlanFile;
use crate::sync::approval::{self, Approval};
use crate::sync::inventory::SYSTEM_NAMESPACE;

pub(super) fn approve_cmd(args: &ApproveArgs) -> anyhow::Result<ExitCode> {
    // The plan file is read (and its seal checked) before the cluster is.
    let plan = match &args.plan {
        None => None,
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                anyhow::anyhow!("cannot read the plan file {}: {e}", path.display())
            })?;
            match PlanFile::parse(&text) {
                Ok(plan) => Some(plan),
                Err(e) => {
                    eprintln!("error: {}: {e}; nothing was recorded", path.display());
                    return Ok(ExitCode::from(1));
                }
            }
        }
    };
    let options = args.cluster.options();
    let outcome = runtime()?.block_on(async {
        let cluster = Cluster::connect(&options).await?;
        approve(&cluster, args, plan.as_ref()).await
    });
    let object = format!(
        "configmap {SYSTEM_NAMESPACE}/{}",
        approval::name_of(&args.env)
    );
    match outcome {
        Ok(Ok(approved)) => {
            let with_plan = match &approved.plan {
                Some(digest) => format!(
                    " with its plan (change set {digest}: the daemon applies it only while its plan is this one)"
                ),
                None => String::new(),
            };
            println!(
                "approved revision {} of environment {}{with_plan} as {} (API user {}); the daemon applies it within about a second, or when its sync window opens",
                approved.revision, args.env, approved.by, approved.user
            );
            Ok(ExitCode::SUCCESS)
        }
        Ok(Err(refusal)) => {
            eprintln!("error: {refusal}; nothing was recorded");
            Ok(ExitCode::from(1))
        }
        Err(e) if e.is_permission() => {
            eprintln!(
                "error: {e}\nnothing was recorded: approving environment {} takes get and patch on {object} (a Role like deploy/rbac-approver.yaml, bound to the approvers)",
                args.env
            );
            Ok(ExitCode::from(1))
        }
        Err(ClusterError::Api { code: 409, .. }) => {
            eprintln!(
                "error: the pending revision of environment {} changed while approving; nothing was recorded: check `tenantsync status --env {}` and approve again",
                args.env, args.env
            );
            Ok(ExitCode::from(1))
        }
        Err(e) => Err(e.into()),
    }
}

/// The longest `--by` (a name, perhaps with a ticket).
const MAX_BY: usize = 100;

/// Reads the pending revision, checks `--revision` against it and records
/// the approval, conditional on the record being unchanged since read.
async fn approve(
    cluster: &Cluster,
    args: &ApproveArgs,
    plan: Option<&PlanFile>,
) -> Result<Result<Approval, approval::Refusal>, ClusterError> {
    if let Some(by) = &args.by
        && by.chars().count() > MAX_BY
    {
        return Ok(Err(approval::Refusal::NameTooLong {
            length: by.chars().count(),
            max: MAX_BY,
        }));
    }
    let stored = cluster.read_approval(&args.env).await?;
    let (record, version) = stored
        .map(|s| (s.record, s.resource_version))
        .unwrap_or_default();
    let revision = match approval::match_pending(&args.env, &args.revision, &record) {
        Ok(revision) => revision,
        Err(refusal) => return Ok(Err(refusal)),
    };
    let plan = match plan.map(|p| plan_of_pending(&args.env, &revision, p)) {
        Some(Err(refusal)) => return Ok(Err(refusal)),
        Some(Ok(digest)) => Some(digest),
        None => None,
    };
    let user = cluster
        .user_name()
        .await
        .unwrap_or_else(|| "unknown".to_string());
    let approved = Approval {
        revision,
        by: args
            .by
            .clone()
            .filter(|b| !b.trim().is_empty())
            .unwrap_or_else(|| user.clone()),
        user,
        at: k8s_openapi::jiff::Timestamp::now().to_string(),
        plan,
    };
    cluster
        .write_approval(&args.env, &approved, version.as_deref())
        .await?;
    Ok(Ok(approved))
}

/// The change set a plan file approves, if it is a plan of `env`'s pending
/// `revision` as the daemon would make it (the whole environment, no
/// adoption).
fn plan_of_pending(
    env: &str,
    revision: &str,
    plan: &PlanFile,
) -> Result<String, approval::Refusal> {
    let what = if plan.environment != env {
        Some(format!("a plan of environment {}", plan.environment))
    } else if plan.revision != revision {
        Some(format!("a plan of revision {}", plan.revision))
    } else if !plan.options.workspaces.is_empty() {
        Some(format!(
            "a plan of workspaces {} only (--workspace)",
            plan.options.workspaces.join(", ")
        ))
    } else if plan.options.adopt {
        Some("a plan made with --adopt".to_string())
    } else {
        None
    };
    match what {
        Some(what) => Err(approval::Refusal::PlanNotOfPending {
            environment: env.to_string(),
            pending: revision.to_string(),
            what,
        }),
        None => Ok(plan.change_set_digest()),
    }
}
