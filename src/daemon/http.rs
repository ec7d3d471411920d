//! The daemon's HTTP endpoints: status, metrics, probes and push webhooks.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::watch;

use super::Shared;

pub async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let app = Router::new()
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/hooks/git", post(git_hook))
        .with_state(shared);
    let stop = async move {
        let _ = shutdown.wait_for(|s| *s).await;
    };
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
    {
        tracing::error!(error = %e, "HTTP server stopped");
    }
}

async fn status(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let body = shared
        .status
        .read()
        .map(|s| serde_json::to_string_pretty(&*s).unwrap_or_default())
        .unwrap_or_default();
    ([(header::CONTENT_TYPE, "application/json")], body)
}

async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        shared.metrics.render(),
    )
}

async fn ready(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    if shared.ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not every environment has been reconciled yet\n",
        )
    }
}

/// A push webhook from GitHub (`X-Hub-Signature-256: sha256=<hmac>`) or
/// GitLab (`X-Gitlab-Token: <secret>`): verified, then every environment
/// looks at the source at once.
async fn git_hook(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    let Some(secret) = shared.options.webhook_secret.as_deref() else {
        return (
            StatusCode::NOT_FOUND,
            "webhooks are off: no secret configured\n",
        );
    };
    if !verified(secret, &headers, &body) {
        tracing::warn!("rejected a webhook call with a missing or wrong signature");
        return (
            StatusCode::UNAUTHORIZED,
            "signature or token missing or wrong\n",
        );
    }
    shared.poke();
    (StatusCode::ACCEPTED, "reconciling\n")
}

fn verified(secret: &str, headers: &HeaderMap, body: &[u8]) -> bool {
    if let Some(sig) = headers
        .get("x-hub-signature-256")
        .and_then(|v| v.to_str().ok())
    {
        let Some(hex) = sig.strip_prefix("sha256=") else {
            return false;
        };
        let Some(expected) = decode_hex(hex) else {
            return false;
        };
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
            return false;
        };
        mac.update(body);
        return mac.verify_slice(&expected).is_ok();
    }
    if let Some(token) = headers.get("x-gitlab-token").and_then(|v| v.to_str().ok()) {
        // Constant-time comparison through the MAC of both values.
        let digest = |v: &str| {
            let mut mac = Hmac::<Sha256>::new_from_slice(b"tenantsync-webhook").ok()?;
            mac.update(v.as_bytes());
            Some(mac.finalize().into_bytes())
        };
        return matches!((digest(token), digest(secret)), (Some(a), Some(b)) if a == b);
    }
    false
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(secret: &str, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(body);
        let bytes = mac.finalize().into_bytes();
        format!(
            "sha256={}",
            bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
        )
    }

    #[test]
    fn github_signatures_and_gitlab_tokens_are_checked() {
        let body = br#"{"ref":"refs/heads/main"}"#;
        let mut h = HeaderMap::new();
        h.insert("x-hub-signature-256", sign("s3cret", body).parse().unwrap());
        assert!(verified("s3cret", &h, body));
        assert!(!verified("other", &h, body));
        assert!(!verified("s3cret", &h, b"tampered"));
        let mut h = HeaderMap::new();
        h.insert("x-gitlab-token", "s3cret".parse().unwrap());
        assert!(verified("s3cret", &h, body));
        assert!(!verified("s3cre", &h, body));
        assert!(!verified("s3cret", &HeaderMap::new(), body));
    }
}
