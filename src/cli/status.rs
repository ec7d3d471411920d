//! `tenantsync status`: an environment's sync state as its inventory
//! records it; read-only.

use std::process::ExitCode;

use anyhow::Context;

use super::args::{StatusArgs, ValidateOutput};
use super::{runtime, write_stdout};
use crate::cluster::Cluster;
use crate::print;

pub(super) fn status_cmd(args: &StatusArgs) -> anyhow::Result<ExitCode> {
    let options = args.cluster.options();
    let (data, holder) = runtime()?.block_on(async {
        let cluster = Cluster::connect(&options).await?;
        let mut data = cluster.inventory_data(&args.env).await?;
        // A manual environment's pending revision and last approval (a
        // credential that may not read the approval ConfigMap just does not
        // see them); a first revision may be pending before any inventory.
        let approval = cluster
            .approval_data(&args.env)
            .await
            .ok()
            .flatten()
            .unwrap_or_default();
        if !approval.is_empty() {
            let d = data.get_or_insert_with(Default::default);
            for (k, v) in approval {
                d.insert(format!("approval.{k}"), v);
            }
        }
        // Who writes the environment now (a credential that may not read
        // Leases just does not see it).
        let holder = cluster.lock_holder(&args.env).await.ok().flatten();
        Ok::<_, crate::cluster::ClusterError>((data, holder))
    })?;
    let Some(data) = data else {
        eprintln!(
            "environment {} has never been synced to this cluster (no inventory, nothing pending)",
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
