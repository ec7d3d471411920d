//! Printers of an environment's sync state as its inventory records it
//! (`tenantsync status`).

use std::collections::BTreeMap;

/// The inventory's data as `status --output json` prints it: the counts as
/// JSON numbers (a ConfigMap stores every value as a string), the rest as is.
pub fn status_json(data: &BTreeMap<String, String>) -> serde_json::Value {
    const COUNTS: [&str; 2] = ["objectCount", "status.driftedObjects"];
    data.iter()
        .map(|(k, v)| {
            let value = match v.parse::<u64>() {
                Ok(n) if COUNTS.contains(&k.as_str()) => serde_json::Value::from(n),
                _ => serde_json::Value::from(v.as_str()),
            };
            (k.clone(), value)
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// The text `status` prints. `silent_for`: seconds since the daemon's last
/// heartbeat; `stale`: longer than it promised; `holder`: who holds the
/// environment's lock now.
pub fn status_text(
    env: &str,
    data: &BTreeMap<String, String>,
    stale: bool,
    silent_for: Option<i64>,
    holder: Option<&str>,
) -> String {
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
        env,
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
    if let Some(h) = holder {
        out.push_str(&format!("locked by:          {h}\n"));
    }
    if let Some(t) = data.get("status.lastSyncAt").filter(|t| !t.is_empty()) {
        out.push_str(&format!(
            "last CLI sync:      {t} by {}\n",
            get("status.lastSyncBy")
        ));
    }
    out.push_str(&change_control(env, data));
    if let Some(r) = data.get("status.rollout").filter(|r| !r.is_empty()) {
        out.push_str(&format!("rollout:            {r}\n"));
    }
    if let Some(f) = data.get("status.failedHealth").filter(|f| !f.is_empty()) {
        out.push_str(&format!("failed health:\n  {}\n", f.replace('\n', "\n  ")));
    }
    if let Some(e) = data.get("status.lastError").filter(|e| !e.is_empty()) {
        out.push_str(&format!(
            "last error ({}):\n  {}\n",
            get("status.lastErrorAt"),
            e.replace('\n', "\n  ")
        ));
    }
    out
}

/// A manual environment's pending revision and last approval, from its
/// approval ConfigMap (`approval.*` keys) and the daemon's status.
fn change_control(env: &str, data: &BTreeMap<String, String>) -> String {
    use crate::sync::approval as a;
    let get = |k: &str| data.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let mut out = String::new();
    if let Some(mode) = get("status.mode") {
        out.push_str(&format!("sync mode:          {mode}\n"));
    }
    if let Some(why) = get("status.syncWindow") {
        out.push_str(&format!("sync window:        closed: {why}\n"));
    }
    let key = |k: &str| format!("approval.{k}");
    if let Some(rev) = get(&key(a::PENDING_REVISION)) {
        let next = if get("status.pendingReason") == Some("window") {
            "it is approved (or needs no approval) and waits for its sync window".to_string()
        } else {
            format!("approve it with `tenantsync approve --env {env} --revision {rev}`")
        };
        out.push_str(&format!(
            "pending revision:   {rev} since {} (plan: {}); {next}\n",
            get(&key(a::PENDING_SINCE)).unwrap_or("-"),
            get(&key(a::PENDING_PLAN)).unwrap_or("-"),
        ));
    }
    if let Some(rev) = get(&key(a::APPROVED_REVISION)) {
        out.push_str(&format!(
            "last approval:      {rev} by {} (API user {}) at {}\n",
            get(&key(a::APPROVED_BY)).unwrap_or("-"),
            get(&key(a::APPROVED_USER)).unwrap_or("-"),
            get(&key(a::APPROVED_AT)).unwrap_or("-"),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_json_gives_counts_as_numbers() {
        let data = std::collections::BTreeMap::from([
            ("objectCount".to_string(), "59".to_string()),
            ("status.driftedObjects".to_string(), "0".to_string()),
            ("revision".to_string(), "0123456789".to_string()),
            ("status.syncStatus".to_string(), "Synced".to_string()),
        ]);
        let json = status_json(&data);
        assert_eq!(json["objectCount"], serde_json::json!(59));
        assert_eq!(json["status.driftedObjects"], serde_json::json!(0));
        // A digits-only revision stays a string.
        assert_eq!(json["revision"], serde_json::json!("0123456789"));
        assert_eq!(json["status.syncStatus"], serde_json::json!("Synced"));
    }
}
