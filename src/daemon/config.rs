//! The daemon's configuration file (`tenantsync run --config FILE`), checked
//! against `schemas/daemon-config.schema.json` with positioned errors.

use serde::Deserialize;

use crate::declare::diag::Diagnostic;
use crate::declare::repo::FileTable;
use crate::declare::schema::{self, SchemaKind};
use crate::declare::yaml::{self, Limits};

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EnvironmentTarget {
    pub name: String,
    pub context: Option<String>,
    /// `tip` or `all-since`: only signed commits are read.
    pub verify_signatures: Option<String>,
    /// The allowed_signers file for `verify_signatures` (SSH keys).
    pub allowed_signers: Option<String>,
    /// The armored OpenPGP public keys for `verify_signatures`.
    pub trusted_keys: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConfigPolicy {
    #[serde(default)]
    pub prune: bool,
    #[serde(default)]
    pub self_heal: bool,
    #[serde(default)]
    pub force_conflicts: bool,
    #[serde(default)]
    pub allow_mass_prune: bool,
    #[serde(default)]
    pub prune_foreign: bool,
    pub max_prune_percent: Option<u8>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DaemonConfig {
    pub repo: String,
    pub branch: Option<String>,
    pub environments: Vec<EnvironmentTarget>,
    pub interval: Option<String>,
    pub drift_interval: Option<String>,
    pub listen: Option<String>,
    pub webhook_listen: Option<String>,
    /// The read-only status page on `listen` (default true).
    pub ui: Option<bool>,
    pub kubeconfig: Option<String>,
    /// `--max-writes-in-flight`.
    pub max_writes_in_flight: Option<u16>,
    #[serde(default)]
    pub sync_policy: ConfigPolicy,
    #[serde(default)]
    pub leader_elect: bool,
    pub lease_name: Option<String>,
    /// A Lease per environment, the environments spread over the replicas
    /// (implies `leaderElect`).
    #[serde(default)]
    pub shard: bool,
    pub log_format: Option<String>,
    #[serde(default)]
    pub guardrails: crate::sync::tenancy::Guardrails,
}

/// Parses and checks a configuration file; `label` names it in errors.
pub fn parse(label: &str, bytes: &[u8]) -> Result<DaemonConfig, Vec<Diagnostic>> {
    let mut files = FileTable::default();
    let id = files.add(label);
    let node = yaml::decode_utf8(id, bytes)
        .and_then(|text| yaml::parse(id, text, Limits::default()))
        .map_err(|e| vec![files.diag(e.pos, None, e.message)])?;
    let diags = schema::validate(SchemaKind::DaemonConfig, &node, &files);
    if !diags.is_empty() {
        return Err(diags);
    }
    serde_json::from_value(node.to_json())
        .map_err(|e| vec![files.diag(node.pos, None, format!("invalid configuration: {e}"))])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_verification_is_set_per_environment_with_its_keys() {
        let c = parse(
            "tenantsync.yaml",
            b"apiVersion: tenantsync.io/v1alpha1\nkind: DaemonConfig\nrepo: https://git.example.com/tenants.git\nenvironments:\n  - name: prod\n    verifySignatures: all-since\n    allowedSigners: /etc/tenantsync/allowed_signers\n  - name: dev\n",
        )
        .unwrap();
        assert_eq!(
            c.environments[0].verify_signatures.as_deref(),
            Some("all-since")
        );
        assert_eq!(
            c.environments[0].allowed_signers.as_deref(),
            Some("/etc/tenantsync/allowed_signers")
        );
        assert_eq!(c.environments[1].verify_signatures, None);
        // Verification without keys, or a mode that does not exist: refused
        // at the line.
        for bad in [
            "  - name: prod\n    verifySignatures: tip\n",
            "  - name: prod\n    verifySignatures: always\n    allowedSigners: f\n",
        ] {
            let text = format!(
                "apiVersion: tenantsync.io/v1alpha1\nkind: DaemonConfig\nrepo: r\nenvironments:\n{bad}"
            );
            let diags = parse("tenantsync.yaml", text.as_bytes()).unwrap_err();
            assert!(
                diags.iter().any(|d| d
                    .pointer
                    .as_deref()
                    .is_some_and(|p| p.starts_with("/environments/0"))),
                "{diags:?}"
            );
        }
    }

    #[test]
    fn a_valid_file_reads_with_defaults_left_open() {
        let c = parse(
            "tenantsync.yaml",
            b"apiVersion: tenantsync.io/v1alpha1\nkind: DaemonConfig\nrepo: https://git.example.com/tenants.git\nbranch: main\nenvironments:\n  - name: prod\n    context: prod-admin\n  - name: dr\nsyncPolicy: {prune: true, selfHeal: true}\nleaderElect: true\n",
        )
        .unwrap();
        assert_eq!(c.environments[0].context.as_deref(), Some("prod-admin"));
        assert_eq!(c.environments[1].context, None);
        assert!(c.sync_policy.prune && c.sync_policy.self_heal && !c.sync_policy.force_conflicts);
        assert!(c.leader_elect);
        assert_eq!(c.lease_name, None);
        assert_eq!(c.interval, None);
        assert_eq!(c.webhook_listen, None);
    }

    #[test]
    fn shard_is_read_from_the_file_and_off_unless_set() {
        let file = |extra: &str| {
            format!(
                "apiVersion: tenantsync.io/v1alpha1\nkind: DaemonConfig\nrepo: r\nenvironments:\n  - name: prod\n{extra}"
            )
        };
        assert!(
            parse("t.yaml", file("shard: true\n").as_bytes())
                .unwrap()
                .shard
        );
        assert!(!parse("t.yaml", file("").as_bytes()).unwrap().shard);
        assert!(parse("t.yaml", file("shard: yes-please\n").as_bytes()).is_err());
    }

    #[test]
    fn prune_foreign_is_the_operators_setting() {
        let c = parse(
            "tenantsync.yaml",
            b"apiVersion: tenantsync.io/v1alpha1\nkind: DaemonConfig\nrepo: .\nenvironments: [{name: dev}]\nsyncPolicy: {prune: true, pruneForeign: true}\n",
        )
        .unwrap();
        assert!(c.sync_policy.prune_foreign);
        let c = parse(
            "tenantsync.yaml",
            b"apiVersion: tenantsync.io/v1alpha1\nkind: DaemonConfig\nrepo: .\nenvironments: [{name: dev}]\n",
        )
        .unwrap();
        assert!(!c.sync_policy.prune_foreign);
    }

    #[test]
    fn the_webhook_gets_a_listener_of_its_own() {
        let c = parse(
            "tenantsync.yaml",
            b"apiVersion: tenantsync.io/v1alpha1\nkind: DaemonConfig\nrepo: .\nenvironments: [{name: dev}]\nlisten: 0.0.0.0:8080\nwebhookListen: 0.0.0.0:8081\n",
        )
        .unwrap();
        assert_eq!(c.webhook_listen.as_deref(), Some("0.0.0.0:8081"));
        let e = parse(
            "tenantsync.yaml",
            b"apiVersion: tenantsync.io/v1alpha1\nkind: DaemonConfig\nrepo: .\nenvironments: [{name: dev}]\nwebhookListen: everywhere\n",
        )
        .unwrap_err();
        assert!(
            e[0].to_string()
                .starts_with("tenantsync.yaml:5:16: error: /webhookListen:"),
            "{e:?}"
        );
    }

    #[test]
    fn the_status_page_can_be_turned_off_in_the_file() {
        let c = parse(
            "tenantsync.yaml",
            b"apiVersion: tenantsync.io/v1alpha1\nkind: DaemonConfig\nrepo: .\nenvironments: [{name: dev}]\nui: false\n",
        )
        .unwrap();
        assert_eq!(c.ui, Some(false));
        let e = parse(
            "tenantsync.yaml",
            b"apiVersion: tenantsync.io/v1alpha1\nkind: DaemonConfig\nrepo: .\nenvironments: [{name: dev}]\nui: off\n",
        )
        .unwrap_err();
        assert!(
            e[0].to_string()
                .starts_with("tenantsync.yaml:5:5: error: /ui:"),
            "{e:?}"
        );
    }

    #[test]
    fn mistakes_are_reported_with_their_position() {
        let e = parse(
            "tenantsync.yaml",
            b"apiVersion: tenantsync.io/v1alpha1\nkind: DaemonConfig\nrepo: .\nenvironments: [{name: dev}]\nintervall: 30s\ndriftInterval: soon\n",
        )
        .unwrap_err();
        let lines: Vec<String> = e.iter().map(ToString::to_string).collect();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines.iter().any(|l| l.starts_with("tenantsync.yaml:5:1: error: /intervall: unknown field `intervall`; did you mean `interval`?")), "{lines:?}");
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("tenantsync.yaml:6:16: error: /driftInterval:")),
            "{lines:?}"
        );
    }
}
