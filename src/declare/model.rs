//! Typed declarations, read from documents that already passed their schema.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub const API_VERSION: &str = "tenantsync.io/v1alpha1";

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Image {
    pub repository: Option<String>,
    pub tag: Option<String>,
}

/// `requests`/`limits` maps of quantities (kept as strings).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct Resources {
    #[serde(default)]
    pub requests: BTreeMap<String, Quantity>,
    #[serde(default)]
    pub limits: BTreeMap<String, Quantity>,
}

/// A quantity written as a string (`500m`) or a number (`2`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum Quantity {
    Text(String),
    Number(serde_json::Number),
}

impl Quantity {
    pub fn as_string(&self) -> String {
        match self {
            Quantity::Text(s) => s.clone(),
            Quantity::Number(n) => n.to_string(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Identity {
    pub client_id: String,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Auth {
    pub authority: String,
    pub audience: String,
    #[serde(default)]
    pub smart_proxy_enabled: bool,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Cors {
    #[serde(default)]
    pub origins: Vec<String>,
    #[serde(default)]
    pub headers: Vec<String>,
    #[serde(default)]
    pub methods: Vec<String>,
    pub max_age: Option<u32>,
    #[serde(default)]
    pub allow_credentials: bool,
}

/// When a probe starts and how often it runs.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProbeTiming {
    pub initial_delay_seconds: Option<i32>,
    pub period_seconds: Option<i32>,
}

/// Readiness and liveness probe timings; unset parts come from the
/// environment, then from seed 002 (readiness 30 s / 10 s, liveness 60 s /
/// 20 s, on `/health` port 8080).
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Probes {
    #[serde(default)]
    pub readiness: ProbeTiming,
    #[serde(default)]
    pub liveness: ProbeTiming,
}

/// Seed 002's probe timings: (initial delay, period) in seconds.
pub const READINESS_PROBE: (i32, i32) = (30, 10);
pub const LIVENESS_PROBE: (i32, i32) = (60, 20);

impl Probes {
    /// `self` over `under`, part by part.
    pub fn over(self, under: Probes) -> Probes {
        let pick = |a: ProbeTiming, b: ProbeTiming| ProbeTiming {
            initial_delay_seconds: a.initial_delay_seconds.or(b.initial_delay_seconds),
            period_seconds: a.period_seconds.or(b.period_seconds),
        };
        Probes {
            readiness: pick(self.readiness, under.readiness),
            liveness: pick(self.liveness, under.liveness),
        }
    }
}

/// A HorizontalPodAutoscaler for a service: then the Deployment's replicas
/// are the autoscaler's.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Autoscaling {
    pub min_replicas: i32,
    pub max_replicas: i32,
    #[serde(
        default = "default_cpu_target",
        rename = "targetCPUUtilizationPercentage"
    )]
    pub target_cpu_utilization_percentage: i32,
}

fn default_cpu_target() -> i32 {
    70
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FhirService {
    pub name: String,
    #[serde(default = "default_fhir_version")]
    pub fhir_version: String,
    pub image: Option<Image>,
    pub replicas: Option<i32>,
    pub resources: Option<Resources>,
    pub auth: Option<Auth>,
    pub cors: Option<Cors>,
    pub identity: Option<Identity>,
    pub key_vault: Option<ServiceKeyVault>,
    pub probes: Option<Probes>,
    pub autoscaling: Option<Autoscaling>,
}

fn default_fhir_version() -> String {
    "R4".to_string()
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DicomCast {
    pub fhir_service: String,
    #[serde(default = "default_poll_interval")]
    pub poll_interval: String,
    pub image: Option<Image>,
    pub resources: Option<Resources>,
    /// The Azure Table storage endpoint the cast keeps its state in
    /// (seed 003: `tableEndpoint`).
    pub table_endpoint: String,
    /// The identity that reaches the table storage.
    pub identity: Option<Identity>,
}

fn default_poll_interval() -> String {
    "30s".to_string()
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DicomService {
    pub name: String,
    pub image: Option<Image>,
    pub replicas: Option<i32>,
    pub resources: Option<Resources>,
    pub identity: Option<Identity>,
    pub key_vault: Option<ServiceKeyVault>,
    pub probes: Option<Probes>,
    pub autoscaling: Option<Autoscaling>,
    pub dicom_cast: Option<DicomCast>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IngestionEndpoint {
    pub event_hub_name: String,
    pub consumer_group: Option<String>,
    pub fully_qualified_event_hub_namespace: String,
}

/// A device or FHIR mapping template, kept as written (seed 004).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct Mapping {
    pub content: serde_json::Value,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FhirDestination {
    pub name: String,
    pub resource_identity_resolution_type: String,
    pub fhir_service: String,
    pub fhir_mapping: Mapping,
    pub resources: Option<Resources>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IotConnector {
    pub name: String,
    pub image: Option<Image>,
    pub replicas: Option<i32>,
    pub resources: Option<Resources>,
    pub identity: Option<Identity>,
    pub ingestion_endpoint_configuration: IngestionEndpoint,
    pub device_mapping: Mapping,
    #[serde(default)]
    pub fhir_destinations: Vec<FhirDestination>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkspaceSpec {
    #[serde(default)]
    pub fhir_services: Vec<FhirService>,
    #[serde(default)]
    pub dicom_services: Vec<DicomService>,
    #[serde(default)]
    pub iot_connectors: Vec<IotConnector>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct Metadata {
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Workspace {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    #[serde(default)]
    pub spec: WorkspaceSpec,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Ingress {
    pub domain: Option<String>,
    pub class_name: Option<String>,
    pub tls_secret_name: Option<String>,
    pub controller_namespace: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Images {
    pub fhir: Option<Image>,
    pub dicom: Option<Image>,
    pub dicom_cast: Option<Image>,
    pub iot_connector: Option<Image>,
    pub iot_fhir_destination: Option<Image>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct KindDefaults {
    pub replicas: Option<i32>,
    pub resources: Option<Resources>,
    /// FHIR and DICOM services only (the schema refuses it elsewhere).
    pub autoscaling: Option<Autoscaling>,
}

/// A standby environment (DR): everything in place, workloads scaled to
/// `replicas` and no autoscalers, until `enabled` is set to false.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Standby {
    pub enabled: bool,
    #[serde(default)]
    pub replicas: i32,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Defaults {
    #[serde(default)]
    pub fhir: KindDefaults,
    #[serde(default)]
    pub dicom: KindDefaults,
    #[serde(default)]
    pub dicom_cast: KindDefaults,
    #[serde(default)]
    pub iot_connector: KindDefaults,
    #[serde(default)]
    pub iot_fhir_destination: KindDefaults,
}

/// The repository's sync policy. `forceConflicts` and `maxPrunePercent`
/// may only tighten the operator's settings (`sync::tenancy`): unset,
/// the operator's apply.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SyncPolicy {
    #[serde(default)]
    pub prune: bool,
    #[serde(default)]
    pub self_heal: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force_conflicts: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_prune_percent: Option<u8>,
    /// `auto`: the daemon applies each new valid revision; `manual`: it
    /// plans it and holds it as pending until `tenantsync approve`.
    #[serde(default)]
    pub mode: SyncMode,
    /// When the daemon may apply a new revision (Argo CD's sync windows):
    /// none, any time; a deny window that is open, or allow windows none of
    /// which is open, hold a new revision as pending.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub windows: Vec<SyncWindow>,
    /// Whether self-heal re-applies drift while the windows hold changes
    /// back (default: yes; drift is a return to the approved state).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub self_heal_outside_windows: Option<bool>,
    /// Whether the daemon re-applies a workspace whose objects do not
    /// become Healthy within `health_deadline` at its last healthy revision.
    #[serde(default)]
    pub rollback: bool,
    /// How long the objects of a workspace a revision changed may take to
    /// become Healthy (`10m`, `90s`); default [`DEFAULT_HEALTH_DEADLINE`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_deadline: Option<String>,
    /// Progressive rollout across workspaces (`sync::rollout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Rollout>,
}

/// `syncPolicy.rollout` as written: the steps of a revision that changes
/// more than one workspace, who goes first, and the pace.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Rollout {
    /// Cumulative shares of the changed workspaces: `10%`, `50%`, `100%`.
    pub steps: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pilot: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_between: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_deadline: Option<String>,
    #[serde(default)]
    pub include_new_workspaces: bool,
    #[serde(default)]
    pub include_deletions: bool,
    /// Whether a failed step's workspaces are set back (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<bool>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

/// A rollout checked: its steps as percentages and its durations.
#[derive(Clone, Debug, PartialEq)]
pub struct RolloutPolicy {
    /// Increasing, each 1..=100, the last 100.
    pub steps: Vec<u8>,
    pub pilot: Vec<String>,
    pub match_labels: BTreeMap<String, String>,
    pub pause_between: std::time::Duration,
    pub health_deadline: std::time::Duration,
    pub include_new_workspaces: bool,
    pub include_deletions: bool,
    pub rollback: bool,
}

/// The longest `pauseBetween` or `healthDeadline`: a day.
pub const ROLLOUT_MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(24 * 3600);
/// The shortest `healthDeadline`: pods need some seconds to start.
pub const ROLLOUT_MIN_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);
/// `healthDeadline` when none is given.
pub const ROLLOUT_DEFAULT_DEADLINE: std::time::Duration = std::time::Duration::from_secs(600);

impl Rollout {
    /// The rollout checked, or why it is refused: the field (a JSON
    /// pointer below `rollout`) and what to do.
    pub fn checked(&self) -> Result<RolloutPolicy, (String, String)> {
        let mut steps: Vec<u8> = Vec::with_capacity(self.steps.len());
        for (i, step) in self.steps.iter().enumerate() {
            let percent = step
                .strip_suffix('%')
                .and_then(|n| n.parse::<u8>().ok())
                .filter(|n| (1..=100).contains(n))
                .ok_or_else(|| {
                    (
                        format!("steps/{i}"),
                        format!("`{step}` is not a step: write a share of the workspaces from 1% to 100%, e.g. `10%`"),
                    )
                })?;
            if let Some(&before) = steps.last()
                && percent <= before
            {
                return Err((
                    format!("steps/{i}"),
                    format!(
                        "step `{step}` does not increase on the step before it ({before}%): steps are cumulative shares, e.g. [10%, 50%, 100%]"
                    ),
                ));
            }
            steps.push(percent);
        }
        match steps.last() {
            Some(100) => {}
            Some(last) => {
                return Err((
                    format!("steps/{}", steps.len() - 1),
                    format!(
                        "the last step is {last}%: it must be 100%, so the rollout reaches every workspace (add `100%`)"
                    ),
                ));
            }
            None => {
                return Err((
                    "steps".into(),
                    "a rollout needs at least one step; the last one `100%`".into(),
                ));
            }
        }
        let duration = |field: &str, text: Option<&str>, min, default| {
            match text {
            None => Ok(default),
            Some(text) => parse_wait(text)
                .filter(|d| *d >= min && *d <= ROLLOUT_MAX_WAIT)
                .ok_or_else(|| {
                    (
                        field.to_string(),
                        format!(
                            "`{text}` is not a duration from {}s to 24h: write it as `10m`, `90s` or `1h30m`",
                            min.as_secs()
                        ),
                    )
                }),
        }
        };
        let pause_between = duration(
            "pauseBetween",
            self.pause_between.as_deref(),
            std::time::Duration::ZERO,
            std::time::Duration::ZERO,
        )?;
        let health_deadline = duration(
            "healthDeadline",
            self.health_deadline.as_deref(),
            ROLLOUT_MIN_DEADLINE,
            ROLLOUT_DEFAULT_DEADLINE,
        )?;
        Ok(RolloutPolicy {
            steps,
            pilot: self.pilot.clone(),
            match_labels: self
                .selector
                .as_ref()
                .map(|s| s.match_labels.clone())
                .unwrap_or_default(),
            pause_between,
            health_deadline,
            include_new_workspaces: self.include_new_workspaces,
            include_deletions: self.include_deletions,
            rollback: self.rollback.unwrap_or(true),
        })
    }
}

/// A non-negative duration as `10m`, `90s`, `1h30m` or `0s`.
fn parse_wait(text: &str) -> Option<std::time::Duration> {
    use std::str::FromStr;
    let d = jiff::SignedDuration::from_str(text).ok()?;
    if d.is_negative() {
        return None;
    }
    std::time::Duration::try_from(d).ok()
}

/// How long a revision's changed workspaces may take to become Healthy.
pub const DEFAULT_HEALTH_DEADLINE: std::time::Duration = std::time::Duration::from_secs(300);

impl SyncPolicy {
    pub fn self_heal_outside_windows(&self) -> bool {
        self.self_heal_outside_windows.unwrap_or(true)
    }

    /// `healthDeadline` (validated where written), or the default.
    pub fn health_deadline(&self) -> std::time::Duration {
        self.health_deadline
            .as_deref()
            .and_then(|d| parse_health_deadline(d).ok())
            .unwrap_or(DEFAULT_HEALTH_DEADLINE)
    }
}

/// A health deadline: a positive duration (`10m`, `90s`, `1h30m`), at most
/// a day.
pub fn parse_health_deadline(text: &str) -> Result<std::time::Duration, String> {
    let problem = || {
        format!(
            "`{text}` is not a health deadline: write a positive duration of at most a day, as `10m`, `90s` or `1h30m`"
        )
    };
    let parsed =
        <jiff::SignedDuration as std::str::FromStr>::from_str(text).map_err(|_| problem())?;
    let duration = std::time::Duration::try_from(parsed).map_err(|_| problem())?;
    if duration.is_zero() || duration > std::time::Duration::from_secs(24 * 3600) {
        return Err(problem());
    }
    Ok(duration)
}

/// One sync window: from each time `schedule` (cron, minute hour
/// day-of-month month day-of-week) matches in `time_zone`, for `duration`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SyncWindow {
    pub kind: WindowKind,
    pub schedule: String,
    /// `3h`, `90m`, `1h30m`.
    pub duration: String,
    /// An IANA time zone (`Europe/Berlin`); default UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum WindowKind {
    Allow,
    Deny,
}

/// A sync window checked: its schedule, length and time zone.
#[derive(Clone, Debug)]
pub struct Window {
    pub kind: WindowKind,
    pub schedule: croner::Cron,
    pub duration: jiff::SignedDuration,
    pub time_zone: jiff::tz::TimeZone,
    /// As written: `allow 0 0 * * 1 for 3h (UTC)`.
    pub text: String,
}

impl SyncWindow {
    /// The window checked, or why it is refused (the field and what to do).
    pub fn checked(&self) -> Result<Window, (&'static str, String)> {
        use std::str::FromStr;
        let schedule = croner::Cron::from_str(&self.schedule).map_err(|e| {
            (
                "schedule",
                format!(
                    "`{}` is not a cron schedule ({e}): five fields, minute hour day-of-month month day-of-week, e.g. `0 0 * * 1` for Mondays at 00:00",
                    self.schedule
                ),
            )
        })?;
        let fields = self.schedule.split_whitespace().count();
        if fields != 5 {
            return Err((
                "schedule",
                format!(
                    "`{}` has {fields} fields: a schedule has five, minute hour day-of-month month day-of-week, e.g. `0 0 * * 1` for Mondays at 00:00",
                    self.schedule
                ),
            ));
        }
        // A schedule that never fires (30 February) would hold an allow
        // window's environment for ever: refused. Searched from a fixed
        // date, so validation does not depend on the clock.
        let from = jiff::Timestamp::from_second(1_767_225_600)
            .map(|t| t.to_zoned(jiff::tz::TimeZone::UTC))
            .map_err(|e| ("schedule", e.to_string()))?;
        if schedule.find_next_occurrence(&from, false).is_err() {
            return Err((
                "schedule",
                format!(
                    "`{}` never fires (no such date): a window must open at some time",
                    self.schedule
                ),
            ));
        }
        let duration = jiff::SignedDuration::from_str(&self.duration)
            .ok()
            .filter(|d| d.is_positive())
            .ok_or_else(|| {
                (
                    "duration",
                    format!(
                        "`{}` is not a positive duration: write it as `3h`, `90m` or `1h30m`",
                        self.duration
                    ),
                )
            })?;
        let zone = self.time_zone.as_deref().unwrap_or("UTC");
        let time_zone = jiff::tz::TimeZone::get(zone).map_err(|_| {
            (
                "timeZone",
                format!(
                    "`{zone}` is not a time zone of the IANA database: write it as `UTC`, `Europe/Berlin` or `America/New_York`"
                ),
            )
        })?;
        let kind = match self.kind {
            WindowKind::Allow => "allow",
            WindowKind::Deny => "deny",
        };
        Ok(Window {
            kind: self.kind,
            schedule,
            duration,
            time_zone,
            text: format!("{kind} `{}` for {} ({zone})", self.schedule, self.duration),
        })
    }
}

/// Whether the daemon applies a new revision by itself or waits for an
/// approval (`syncPolicy.mode`).
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    #[default]
    Auto,
    Manual,
}

impl SyncMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SyncMode::Auto => "auto",
            SyncMode::Manual => "manual",
        }
    }
}

/// Field ownership: which field managers' edits are drift, undone by a
/// sync, and which fields are left to others (`plan::field_policy`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Ownership {
    /// Field managers (`*` matches any run of characters) whose fields on
    /// an object tenantsync manages are drift: reported, and taken over
    /// and removed by a sync unless declared.
    #[serde(default = "default_revert")]
    pub revert: Vec<String>,
    /// Fields left to others: never drift, never overwritten.
    #[serde(default)]
    pub ignore: Vec<IgnoreRule>,
}

/// The managers reverted unless an environment says otherwise: edits made
/// with kubectl (`kubectl-edit`, `kubectl-patch`, `kubectl-label`, ...)
/// and what kubectl's client-side apply or create recorded.
pub const DEFAULT_REVERT: [&str; 2] = ["kubectl*", "before-first-apply"];

fn default_revert() -> Vec<String> {
    DEFAULT_REVERT.iter().map(|m| m.to_string()).collect()
}

impl Default for Ownership {
    fn default() -> Self {
        Ownership {
            revert: default_revert(),
            ignore: Vec::new(),
        }
    }
}

/// Fields left to others. A field is ignored when its object's kind is one
/// of `kinds` (any kind when empty), its path is at or under one of `paths`
/// (any path when empty) and, when `managers` is given, one of them owns
/// it live.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IgnoreRule {
    #[serde(default)]
    pub kinds: Vec<String>,
    /// JSON pointers (`/spec/replicas`); a list item is named by its
    /// `name` or `*`.
    #[serde(default)]
    pub paths: Vec<String>,
    #[serde(default)]
    pub managers: Vec<String>,
}

/// The operator's default ceiling on one sync's prune, in percent.
pub const DEFAULT_MAX_PRUNE_PERCENT: u8 = 25;

pub const DEFAULT_NAMESPACE_TEMPLATE: &str = "{workspace}-{environment}";
pub const DEFAULT_INGRESS_CONTROLLER_NAMESPACE: &str = "ingress-nginx";

/// An Azure Key Vault the environment's workspaces read certificates and
/// secrets from through the Secrets Store CSI driver (seed 001), rendered
/// as one `SecretProviderClass` per workspace.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KeyVault {
    pub vault_name: String,
    pub tenant_id: String,
    /// The client id of the managed identity that reads the vault
    /// (workload identity).
    pub client_id: String,
    /// A certificate object for every exposed service of a workspace
    /// (one TLS Secret per workspace), unless a service names its own;
    /// `{workspace}` and `{environment}` are replaced.
    pub certificate: Option<String>,
    /// Secrets every FHIR and DICOM service gets as environment variables.
    #[serde(default)]
    pub secrets: Vec<SecretRef>,
}

/// A Key Vault secret object, synced into the workspace's Secret under its
/// object name and given to the service's container as `env`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    pub object_name: String,
    pub env: String,
}

/// What one FHIR or DICOM service reads from the environment's Key Vault
/// besides what every service does: its own certificate (then its Ingress
/// gets a TLS Secret of its own, for its host) and secrets.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceKeyVault {
    /// A vault of the service's own for its certificate and secrets; the
    /// environment's tenant and identity fill what it leaves out.
    pub vault_name: Option<String>,
    pub tenant_id: Option<String>,
    pub client_id: Option<String>,
    pub certificate: Option<String>,
    #[serde(default)]
    pub secrets: Vec<SecretRef>,
}

impl ServiceKeyVault {
    /// Whether it reads anything (a certificate or a secret).
    pub fn reads(&self) -> bool {
        self.certificate.is_some() || !self.secrets.is_empty()
    }

    /// The vault of its own it reads from, when it names one and reads
    /// something: its vault name, with its tenant and identity or the
    /// environment's. None also when neither gives a tenant or identity
    /// (validation refuses that).
    pub fn own_vault(&self, env: Option<&KeyVault>) -> Option<KeyVault> {
        let vault_name = self.vault_name.clone().filter(|_| self.reads())?;
        Some(KeyVault {
            vault_name,
            tenant_id: self
                .tenant_id
                .clone()
                .or_else(|| env.map(|k| k.tenant_id.clone()))?,
            client_id: self
                .client_id
                .clone()
                .or_else(|| env.map(|k| k.client_id.clone()))?,
            certificate: None,
            secrets: Vec::new(),
        })
    }
}

/// Environments where a FHIR service must declare `auth` unless the
/// environment says otherwise (`spec.auth.required`).
pub const AUTH_REQUIRED_IN: [&str; 3] = ["staging", "prod", "dr"];

/// The environment's authentication policy.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AuthPolicy {
    /// Every FHIR service must declare `auth`. Default: true in
    /// [`AUTH_REQUIRED_IN`], false elsewhere.
    pub required: Option<bool>,
}

/// An environment's settings after merging its base chain.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Settings {
    pub namespace_template: Option<String>,
    #[serde(default)]
    pub ingress: Ingress,
    #[serde(default)]
    pub images: Images,
    #[serde(default)]
    pub defaults: Defaults,
    #[serde(default)]
    pub sync_policy: SyncPolicy,
    #[serde(default)]
    pub ownership: Ownership,
    pub key_vault: Option<KeyVault>,
    #[serde(default)]
    pub auth: AuthPolicy,
    #[serde(default)]
    pub probes: Probes,
    /// The fewest replicas a FHIR or DICOM service or an IoT connector may
    /// run with here (an autoscaler's minimum included), unless in standby.
    pub replica_floor: Option<i32>,
    pub standby: Option<Standby>,
}

/// One environment, resolved: settings merged over its base chain and the
/// workspaces it ends up with, sorted by name.
#[derive(Clone, Debug, PartialEq)]
pub struct Environment {
    pub name: String,
    /// Layers from the environment itself down to the root, e.g. `dr, prod, base`.
    pub chain: Vec<String>,
    pub settings: Settings,
    pub workspaces: Vec<Workspace>,
    /// Plain manifests from the layers' `resources/`, applied as they are.
    pub resources: Vec<Manifest>,
}

/// A plain manifest of a layer's `resources/` and the file it is written in.
#[derive(Clone, Debug, PartialEq)]
pub struct Manifest {
    pub body: serde_json::Value,
    pub source: crate::declare::diag::Location,
}

/// How a FHIR or DICOM service scales in an environment.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Scale {
    Fixed(i32),
    /// A HorizontalPodAutoscaler owns the Deployment's replicas.
    Auto(Autoscaling),
}

impl Scale {
    /// The fewest replicas it runs with.
    pub fn least(self) -> i32 {
        match self {
            Scale::Fixed(n) => n,
            Scale::Auto(a) => a.min_replicas,
        }
    }
}

impl Environment {
    /// How a service scales here: the standby's replicas in a standby,
    /// else its own autoscaling or replicas over its kind's defaults (an
    /// autoscaler over fixed replicas at the same level).
    pub fn scale_of(
        &self,
        replicas: Option<i32>,
        autoscaling: Option<Autoscaling>,
        defaults: &KindDefaults,
    ) -> Scale {
        if let Some(n) = self.standby_replicas() {
            return Scale::Fixed(n);
        }
        match (autoscaling, replicas, defaults.autoscaling) {
            (Some(a), _, _) | (None, None, Some(a)) => Scale::Auto(a),
            (None, Some(n), _) => Scale::Fixed(n),
            (None, None, None) => Scale::Fixed(defaults.replicas.unwrap_or(1)),
        }
    }

    /// The replicas every workload runs with while the environment is a
    /// standby, if it is one.
    pub fn standby_replicas(&self) -> Option<i32> {
        self.settings
            .standby
            .filter(|s| s.enabled)
            .map(|s| s.replicas)
    }

    /// Whether every FHIR service must declare `auth` here.
    pub fn auth_required(&self) -> bool {
        self.settings
            .auth
            .required
            .unwrap_or(AUTH_REQUIRED_IN.contains(&self.name.as_str()))
    }

    /// The namespace of a workspace in this environment.
    pub fn namespace_of(&self, workspace: &str) -> String {
        self.settings
            .namespace_template
            .as_deref()
            .unwrap_or(DEFAULT_NAMESPACE_TEMPLATE)
            .replace("{workspace}", workspace)
            .replace("{environment}", &self.name)
    }
}

/// Why a field manager pattern is refused: only `*` is special here, so a
/// character other glob dialects treat as special (`?`, `[`, `{`, `\`)
/// would silently match only itself.
pub fn pattern_problem(pattern: &str) -> Option<String> {
    let c = pattern.chars().find(|c| "?[]{}\\".contains(*c))?;
    Some(format!(
        "`{pattern}` uses `{c}`, which is not a wildcard here (only `*` is: any characters), so it would match only a field manager of exactly that name; remove it"
    ))
}

/// Why an ignore rule's JSON pointer is refused: a `~` that is not the
/// escape `~0` (for `~`) or `~1` (for `/`) (RFC 6901).
pub fn pointer_problem(pointer: &str) -> Option<String> {
    let mut chars = pointer.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '~' && !matches!(chars.peek(), Some('0' | '1')) {
            let bad: String = std::iter::once('~').chain(chars.next()).collect();
            return Some(format!(
                "`{pointer}` has `{bad}`, which is not a JSON pointer escape (`~0` stands for `~`, `~1` for `/`)"
            ));
        }
    }
    None
}
