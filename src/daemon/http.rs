//! The daemon's HTTP endpoints: status, metrics, probes and push webhooks.
//!
//! Two listeners: `--listen` serves `/status`, `/metrics`, `/healthz` and
//! `/readyz` (and `POST /hooks/git` too when no `--webhook-listen` is
//! given, as before); `--webhook-listen` serves `POST /hooks/git` only, so
//! an Ingress can expose the webhook and nothing else.
//!
//! Both are driven by hyper directly (axum only routes): each listener caps
//! its open connections, a request's headers must arrive within
//! [`HEADER_READ_TIMEOUT`] (which also closes an idle keep-alive
//! connection), a connection without any I/O for [`IO_IDLE_TIMEOUT`] is
//! dropped, and on shutdown connections get [`SHUTDOWN_GRACE`] to finish
//! before they are cut.
//!
//! A webhook is checked before its body is read (webhooks on, a signature
//! or token header present, a declared length within
//! [`MAX_WEBHOOK_BODY`]), then at most [`MAX_WEBHOOKS_IN_FLIGHT`] bodies are
//! read at once, streamed through the HMAC: no body is ever held whole, only
//! its first [`REF_PREFIX`] bytes, where the pushed `ref` is. A verified
//! delivery triggers a reconcile only when it is a push of the tracked
//! branch not seen in the last hour.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hmac::{Hmac, Mac};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use super::{DaemonStatus, RunOptions, Shared};
use crate::print::page;

/// The largest webhook body accepted: GitHub's limit (25 MB).
pub const MAX_WEBHOOK_BODY: u64 = 25 * 1024 * 1024;
/// Webhook bodies read at once; more get 503 at once.
pub const MAX_WEBHOOKS_IN_FLIGHT: usize = 8;
/// A webhook body must arrive within this.
pub const WEBHOOK_BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Open connections per listener; more are closed as soon as accepted.
pub const MAX_CONNECTIONS: usize = 256;
/// A request's headers must arrive within this after the connection opens
/// or the previous response went out (so an idle keep-alive connection is
/// closed after it too).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection with neither read nor write for this long is dropped (a
/// client that does not read its response). Longer than every request's
/// own timeout, so a stalled webhook body is answered 408 before its
/// connection is dropped (both at 30 s, the drop won the race on a loaded
/// machine and the client got no answer).
pub const IO_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// On shutdown, requests in flight get this long; then connections are cut.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// The bytes of a webhook body kept to find the pushed `ref` (GitHub sends
/// it first, GitLab within the first few hundred bytes).
pub const REF_PREFIX: usize = 64 * 1024;
/// Deliveries remembered to ignore replays...
pub const REPLAY_CAPACITY: usize = 1000;
/// ...for this long.
pub const REPLAY_WINDOW: Duration = Duration::from_secs(3600);

/// Binds the listeners and serves until `shutdown` turns true; the returned
/// task ends once every connection is closed (at most [`SHUTDOWN_GRACE`]
/// after the shutdown).
pub async fn start(
    options: &RunOptions,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let bind = |address: SocketAddr| async move {
        TcpListener::bind(address)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {address}: {e}"))
    };
    let main = bind(options.listen).await?;
    let webhook = match options.webhook_listen {
        Some(address) => Some((bind(address).await?, address)),
        None => None,
    };
    let state = Arc::new(HttpState {
        shared,
        secret: options.webhook_secret.clone(),
        branch: options.branch.clone(),
        in_flight: Arc::new(Semaphore::new(MAX_WEBHOOKS_IN_FLIGHT)),
        seen: Mutex::new(ReplayCache::new(REPLAY_CAPACITY, REPLAY_WINDOW)),
    });
    let mut main_routes = Router::new()
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready));
    if options.ui {
        main_routes = main_routes
            .route("/", get(page_environments))
            .route("/environments/{env}", get(page_environment))
            .route("/environments/{env}/workspaces/{ws}", get(page_workspace))
            .fallback(|| async {
                page(
                    StatusCode::NOT_FOUND,
                    Some(page::not_found_page("No such page.")),
                )
            });
    }
    let mut servers = JoinSet::new();
    match webhook {
        Some((listener, address)) => {
            tracing::info!(address = %options.listen, ui = options.ui, "serving /status, /metrics, /healthz and /readyz (and the status page at / with ui)");
            tracing::info!(%address, "serving POST /hooks/git");
            let hooks = Router::new()
                .route("/hooks/git", post(git_hook))
                .fallback(|| async {
                    (
                        StatusCode::NOT_FOUND,
                        "not found: this listener serves POST /hooks/git only\n",
                    )
                })
                .with_state(state.clone());
            servers.spawn(serve(listener, hooks, shutdown.clone()));
        }
        None => {
            tracing::info!(address = %options.listen, ui = options.ui, "serving /status, /metrics, /healthz, /readyz and POST /hooks/git (and the status page at / with ui)");
            main_routes = main_routes.route("/hooks/git", post(git_hook));
        }
    }
    servers.spawn(serve(main, main_routes.with_state(state), shutdown));
    Ok(tokio::spawn(async move {
        while servers.join_next().await.is_some() {}
    }))
}

/// Accepts connections until `shutdown`, at most [`MAX_CONNECTIONS`] open.
async fn serve(listener: TcpListener, app: Router, mut shutdown: watch::Receiver<bool>) {
    let open = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let (close_tx, close) = watch::channel(false);
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            () = async { let _ = shutdown.wait_for(|s| *s).await; } => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => match open.clone().try_acquire_owned() {
                    Ok(permit) => {
                        connections.spawn(connection(stream, app.clone(), close.clone(), permit));
                    }
                    Err(_) => {
                        tracing::debug!(%peer, limit = MAX_CONNECTIONS, "too many connections; closing a new one");
                        drop(stream);
                    }
                },
                Err(e) => {
                    // Out of file descriptors, most likely: wait for some to close.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    let _ = close_tx.send(true);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::info!(
            connections = connections.len(),
            "closing connections still open after the shutdown grace"
        );
    }
    connections.abort_all();
    while connections.join_next().await.is_some() {}
}

/// Serves one connection until it ends, goes quiet, or the server closes.
async fn connection(
    stream: tokio::net::TcpStream,
    app: Router,
    mut close: watch::Receiver<bool>,
    _permit: tokio::sync::OwnedSemaphorePermit,
) {
    let _ = stream.set_nodelay(true);
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Tracked {
        inner: stream,
        activity: activity.clone(),
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(64 * 1024);
    let conn = builder.serve_connection(io, TowerToHyperService::new(app));
    tokio::pin!(conn);
    let mut closing = false;
    loop {
        tokio::select! {
            done = conn.as_mut() => {
                if let Err(e) = done {
                    tracing::debug!(error = %e, "HTTP connection ended with an error");
                }
                return;
            }
            () = async { let _ = close.wait_for(|c| *c).await; }, if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = activity.stalled(IO_IDLE_TIMEOUT) => {
                tracing::debug!("dropping an HTTP connection without I/O for {IO_IDLE_TIMEOUT:?}");
                return;
            }
        }
    }
}

/// When a connection last read or wrote a byte.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Resolves once there was no I/O for `limit`.
    async fn stalled(&self, limit: Duration) {
        loop {
            let last = self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = last + limit;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)).await;
        }
    }
}

/// A stream that records its I/O in an [`Activity`].
struct Tracked<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// What the handlers share.
struct HttpState {
    shared: Arc<Shared>,
    secret: Option<String>,
    /// The branch (or tag) followed; None: the remote's default branch, so
    /// any push counts.
    branch: Option<String>,
    in_flight: Arc<Semaphore>,
    seen: Mutex<ReplayCache>,
}

/// The status as shown outside: errors with URLs' host:port and
/// Kubernetes identities left out.
fn shown_status(state: &HttpState) -> DaemonStatus {
    state
        .shared
        .status
        .read()
        .map(|s| {
            let mut shown = s.clone();
            for env in shown.environments.values_mut() {
                if let Some(e) = env.last_error.as_mut() {
                    *e = redact(e);
                }
            }
            shown
        })
        .unwrap_or_default()
}

async fn status(State(state): State<Arc<HttpState>>) -> impl IntoResponse {
    let body = serde_json::to_string_pretty(&shown_status(&state)).unwrap_or_default();
    ([(header::CONTENT_TYPE, "application/json")], body)
}

/// An HTML page (404 when `None`): no script may run and nothing may be
/// loaded from elsewhere (the page has neither), and no other site may
/// frame it.
fn page(code: StatusCode, html: Option<String>) -> Response {
    let (code, html) = match html {
        Some(html) => (code, html),
        None => (
            StatusCode::NOT_FOUND,
            page::not_found_page("tenantsync does not sync such an environment or workspace."),
        ),
    };
    let mut response = (code, html).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Renders a page from the status as it is (read-locked while the page is
/// drawn, nothing cloned); `None` when the lock is poisoned.
fn with_status<T>(state: &HttpState, f: impl FnOnce(&DaemonStatus) -> Option<T>) -> Option<T> {
    state.shared.status.read().ok().and_then(|s| f(&s))
}

async fn page_environments(State(state): State<Arc<HttpState>>) -> Response {
    page(
        StatusCode::OK,
        with_status(&state, |s| Some(page::environments_page(s, &redact))),
    )
}

async fn page_environment(
    State(state): State<Arc<HttpState>>,
    Path(env): Path<String>,
) -> Response {
    page(
        StatusCode::OK,
        with_status(&state, |s| page::environment_page(s, &env, &redact)),
    )
}

async fn page_workspace(
    State(state): State<Arc<HttpState>>,
    Path((env, ws)): Path<(String, String)>,
) -> Response {
    page(
        StatusCode::OK,
        with_status(&state, |s| page::workspace_page(s, &env, &ws)),
    )
}

async fn metrics(State(state): State<Arc<HttpState>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.shared.metrics.render(),
    )
}

async fn ready(State(state): State<Arc<HttpState>>) -> impl IntoResponse {
    // With --shard: which environments this replica writes.
    let owns = if state.shared.owners.sharded() {
        format!("owns: {}\n", state.shared.owners.owned().join(", "))
    } else {
        String::new()
    };
    if state.shared.ready() {
        (StatusCode::OK, format!("ready\n{owns}"))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not every environment has been reconciled yet\n{owns}"),
        )
    }
}

/// A short plain-text answer; `close` asks the client to hang up (the body,
/// if any, is not read).
fn answer(code: StatusCode, text: impl Into<String>, close: bool) -> Response {
    let mut response = (code, text.into()).into_response();
    if close {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// How a webhook call proves it knows the secret.
enum Credential {
    /// GitHub (and Gitea, Gogs): `X-Hub-Signature-256: sha256=<hex>`, an
    /// HMAC-SHA256 of the body with the secret.
    Signature(Vec<u8>),
    /// GitLab: `X-Gitlab-Token: <secret>`, checked already.
    Token,
}

/// Checks the headers alone: a well-formed signature, or the right token.
fn credential(secret: &str, headers: &HeaderMap) -> Option<Credential> {
    if let Some(sig) = header_str(headers, "x-hub-signature-256") {
        let expected = decode_hex(sig.strip_prefix("sha256=")?)?;
        return (expected.len() == 32).then_some(Credential::Signature(expected));
    }
    let token = header_str(headers, "x-gitlab-token")?;
    // Constant-time comparison through the MAC of both values.
    let digest = |v: &str| {
        let mut mac = Hmac::<Sha256>::new_from_slice(b"tenantsync-webhook").ok()?;
        mac.update(v.as_bytes());
        Some(mac.finalize().into_bytes())
    };
    matches!((digest(token), digest(secret)), (Some(a), Some(b)) if a == b)
        .then_some(Credential::Token)
}

/// The event a webhook announces.
#[derive(Debug, PartialEq, Eq)]
enum Event {
    Push,
    Ping,
    Other(String),
}

fn event(headers: &HeaderMap) -> Event {
    let named = ["x-github-event", "x-gitea-event", "x-gogs-event"]
        .iter()
        .find_map(|h| header_str(headers, h));
    if let Some(e) = named {
        return match e {
            "push" => Event::Push,
            "ping" => Event::Ping,
            other => Event::Other(other.chars().take(64).collect()),
        };
    }
    match header_str(headers, "x-gitlab-event") {
        Some("Push Hook" | "Tag Push Hook") | None => Event::Push,
        Some(other) => Event::Other(other.chars().take(64).collect()),
    }
}

/// The delivery's id, when the sender gives one.
fn delivery_id(headers: &HeaderMap) -> Option<&str> {
    [
        "x-github-delivery",
        "x-gitea-delivery",
        "x-gogs-delivery",
        "x-gitlab-event-uuid",
    ]
    .iter()
    .find_map(|h| header_str(headers, h))
}

/// A push webhook from GitHub (`X-Hub-Signature-256: sha256=<hmac>`) or
/// GitLab (`X-Gitlab-Token: <secret>`): verified while its body streams in;
/// a push of the tracked branch not seen before makes every environment
/// look at the source at once.
async fn git_hook(State(state): State<Arc<HttpState>>, headers: HeaderMap, body: Body) -> Response {
    let Some(secret) = state.secret.as_deref() else {
        return answer(
            StatusCode::NOT_FOUND,
            "webhooks are off: no secret configured\n",
            true,
        );
    };
    let Some(credential) = credential(secret, &headers) else {
        tracing::warn!("rejected a webhook call with a missing or wrong signature or token");
        return answer(
            StatusCode::UNAUTHORIZED,
            "signature or token missing or wrong\n",
            true,
        );
    };
    let too_large = || {
        answer(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("webhook bodies are limited to {MAX_WEBHOOK_BODY} bytes\n"),
            true,
        )
    };
    let declared = header_str(&headers, "content-length").and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_WEBHOOK_BODY) {
        return too_large();
    }
    let Ok(_permit) = state.in_flight.clone().try_acquire_owned() else {
        let mut response = answer(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many webhook calls at once; retry later\n",
            true,
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("10"));
        return response;
    };
    let mut check = BodyCheck::new(secret, &credential);
    let read = tokio::time::timeout(WEBHOOK_BODY_TIMEOUT, async {
        let mut body = body;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| BodyError::Read(e.to_string()))?;
            if let Ok(data) = frame.into_data() {
                check.update(&data)?;
            }
        }
        Ok::<(), BodyError>(())
    })
    .await;
    match read {
        Err(_) => {
            return answer(
                StatusCode::REQUEST_TIMEOUT,
                format!("the body did not arrive within {WEBHOOK_BODY_TIMEOUT:?}\n"),
                true,
            );
        }
        Ok(Err(BodyError::TooLarge)) => return too_large(),
        Ok(Err(BodyError::Read(e))) => {
            tracing::debug!(error = %e, "cannot read a webhook body");
            return answer(StatusCode::BAD_REQUEST, "cannot read the body\n", true);
        }
        Ok(Ok(())) => {}
    }
    let checked = check.finish();
    if !checked.verified {
        tracing::warn!("rejected a webhook call with a wrong signature");
        return answer(
            StatusCode::UNAUTHORIZED,
            "signature or token missing or wrong\n",
            true,
        );
    }
    let delivery = delivery_id(&headers).map(|d| d.chars().take(128).collect::<String>());
    match event(&headers) {
        Event::Ping => return answer(StatusCode::OK, "pong\n", false),
        Event::Other(name) => {
            tracing::debug!(event = %name, "ignored a webhook event other than a push");
            return answer(
                StatusCode::OK,
                format!("ignored: `{name}` is not a push event\n"),
                false,
            );
        }
        Event::Push => {}
    }
    let fresh = state.seen.lock().is_ok_and(|mut seen| {
        seen.insert_if_new(delivery.as_deref(), &checked.digest, Instant::now())
    });
    if !fresh {
        tracing::info!(delivery = ?delivery, "ignored a webhook delivery seen in the last hour");
        return answer(
            StatusCode::OK,
            "ignored: this delivery was seen in the last hour\n",
            false,
        );
    }
    if let (Some(pushed), Some(branch)) = (checked.pushed_ref.as_deref(), state.branch.as_deref())
        && !tracks(branch, pushed)
    {
        let pushed: String = pushed.chars().take(200).collect();
        tracing::debug!(pushed = %pushed, branch, "ignored a push of another branch");
        return answer(
            StatusCode::OK,
            format!("ignored: a push of `{pushed}`, not of `{branch}`\n"),
            false,
        );
    }
    tracing::info!(delivery = ?delivery, pushed = ?checked.pushed_ref, "webhook: reading the repository now");
    state.shared.poke();
    // With --shard, the holders of the other environments are told too.
    state.shared.owners.announce();
    answer(StatusCode::ACCEPTED, "reconciling\n", false)
}

/// Whether a push of `pushed` (`refs/heads/main`, `refs/tags/v1`) moves the
/// followed `branch` (`main`, `v1`, or a full ref).
fn tracks(branch: &str, pushed: &str) -> bool {
    pushed == branch
        || pushed.strip_prefix("refs/heads/") == Some(branch)
        || pushed.strip_prefix("refs/tags/") == Some(branch)
}

#[derive(Debug, PartialEq, Eq)]
enum BodyError {
    TooLarge,
    Read(String),
}

/// A webhook body checked as it streams: the HMAC (with a signature), a
/// digest (to recognise a replay), its length, and its first
/// [`REF_PREFIX`] bytes.
struct BodyCheck {
    mac: Option<(Hmac<Sha256>, Vec<u8>)>,
    digest: Sha256,
    prefix: Vec<u8>,
    len: u64,
}

/// What [`BodyCheck`] found.
struct Checked {
    verified: bool,
    digest: [u8; 32],
    /// The top-level `ref` of the JSON body, when within the prefix.
    pushed_ref: Option<String>,
}

impl BodyCheck {
    fn new(secret: &str, credential: &Credential) -> BodyCheck {
        let mac = match credential {
            Credential::Signature(expected) => Hmac::<Sha256>::new_from_slice(secret.as_bytes())
                .ok()
                .map(|m| (m, expected.clone())),
            Credential::Token => None,
        };
        BodyCheck {
            mac,
            digest: Sha256::new(),
            prefix: Vec::new(),
            len: 0,
        }
    }

    fn update(&mut self, chunk: &[u8]) -> Result<(), BodyError> {
        self.len = self
            .len
            .saturating_add(u64::try_from(chunk.len()).unwrap_or(u64::MAX));
        if self.len > MAX_WEBHOOK_BODY {
            return Err(BodyError::TooLarge);
        }
        if let Some((mac, _)) = self.mac.as_mut() {
            mac.update(chunk);
        }
        self.digest.update(chunk);
        let room = REF_PREFIX.saturating_sub(self.prefix.len());
        self.prefix
            .extend_from_slice(chunk.get(..room.min(chunk.len())).unwrap_or_default());
        Ok(())
    }

    fn finish(self) -> Checked {
        let verified = match self.mac {
            Some((mac, expected)) => mac.verify_slice(&expected).is_ok(),
            None => true,
        };
        Checked {
            verified,
            digest: self.digest.finalize().into(),
            pushed_ref: top_level_ref(&self.prefix),
        }
    }
}

/// The string value of the top-level key `ref` of a JSON object, read from
/// the start of a document that may be cut short after it.
fn top_level_ref(prefix: &[u8]) -> Option<String> {
    use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
    struct Find<'a>(&'a mut Option<String>);
    impl<'de> Visitor<'de> for Find<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            while let Some(key) = map.next_key::<String>()? {
                if key == "ref" {
                    *self.0 = map.next_value::<Option<String>>()?;
                    return Ok(());
                }
                map.next_value::<IgnoredAny>()?;
            }
            Ok(())
        }
    }
    let mut found = None;
    // The rest of the document may be missing: only what was found counts.
    let mut de = serde_json::Deserializer::from_slice(prefix);
    let _ = (&mut de).deserialize_map(Find(&mut found));
    found
}

/// Deliveries seen recently, by id and by body digest (an id is not signed,
/// so a replayed body under a new id is recognised by its digest): at most
/// `capacity` deliveries, each remembered for `window`.
pub struct ReplayCache {
    capacity: usize,
    window: Duration,
    keys: HashMap<[u8; 32], Instant>,
    order: VecDeque<([u8; 32], Instant)>,
}

impl ReplayCache {
    pub fn new(capacity: usize, window: Duration) -> ReplayCache {
        ReplayCache {
            capacity,
            window,
            keys: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Records a delivery; false when its id or its body was seen within the
    /// window (and then nothing changes).
    pub fn insert_if_new(&mut self, id: Option<&str>, body: &[u8; 32], now: Instant) -> bool {
        self.expire(now);
        let mut keys = vec![*body];
        if let Some(id) = id {
            let mut h = Sha256::new();
            h.update(b"delivery-id\0");
            h.update(id.as_bytes());
            keys.push(h.finalize().into());
        }
        if keys.iter().any(|k| self.keys.contains_key(k)) {
            return false;
        }
        // Each delivery holds up to two keys.
        while self.order.len() + keys.len() > self.capacity.saturating_mul(2) {
            let Some((old, at)) = self.order.pop_front() else {
                break;
            };
            if self.keys.get(&old) == Some(&at) {
                self.keys.remove(&old);
            }
        }
        for k in keys {
            self.keys.insert(k, now);
            self.order.push_back((k, now));
        }
        true
    }

    fn expire(&mut self, now: Instant) {
        while let Some((key, at)) = self.order.front().copied() {
            if now.saturating_duration_since(at) < self.window {
                break;
            }
            self.order.pop_front();
            if self.keys.get(&key) == Some(&at) {
                self.keys.remove(&key);
            }
        }
    }

    /// Deliveries' keys held (for tests: memory stays bounded).
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// A text published on `/status`, without what only helps an attacker: the
/// host and port of every URL (the API server's, a remote's) become `…`,
/// and Kubernetes identities (`User "system:serviceaccount:NS:NAME"`,
/// `system:serviceaccount:…`) become `[identity]`. Paths and messages stay.
/// The log keeps the full text.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while !rest.is_empty() {
        // A URL's authority: after `scheme://`, up to the path.
        if let Some(after) = rest.strip_prefix("://") {
            let end = after
                .find(|c: char| {
                    matches!(
                        c,
                        '/' | '?' | '#' | '"' | '\'' | '<' | '>' | '`' | ',' | ')'
                    ) || c.is_whitespace()
                })
                .unwrap_or(after.len());
            // `https://host:443: refused`: the colon after the port is text.
            let end = if after.get(..end).is_some_and(|a| a.ends_with(':')) {
                end - 1
            } else {
                end
            };
            out.push_str("://");
            if end > 0 {
                out.push('…');
            }
            rest = after.get(end..).unwrap_or_default();
            continue;
        }
        if let Some(after) = rest.strip_prefix("system:serviceaccount:") {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':')))
                .unwrap_or(after.len());
            out.push_str("[identity]");
            rest = after.get(end..).unwrap_or_default();
            continue;
        }
        if let Some(after) = rest.strip_prefix("User \"")
            && let Some(end) = after.find('"')
        {
            out.push_str("User \"[identity]\"");
            rest = after.get(end + 1..).unwrap_or_default();
            continue;
        }
        let mut chars = rest.chars();
        if let Some(c) = chars.next() {
            out.push(c);
        }
        rest = chars.as_str();
    }
    out
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
    use proptest::prelude::*;

    fn sign(secret: &str, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(body);
        let bytes = mac.finalize().into_bytes();
        format!(
            "sha256={}",
            bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
        )
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    /// Streams `body` in `chunks` through the verifier.
    fn check(secret: &str, h: &HeaderMap, body: &[u8], chunk: usize) -> Option<Checked> {
        let credential = credential(secret, h)?;
        let mut c = BodyCheck::new(secret, &credential);
        for part in body.chunks(chunk.max(1)) {
            c.update(part).ok()?;
        }
        Some(c.finish())
    }

    #[test]
    fn github_signatures_and_gitlab_tokens_are_checked() {
        let body = br#"{"ref":"refs/heads/main"}"#;
        let h = headers(&[("x-hub-signature-256", &sign("s3cret", body))]);
        assert!(check("s3cret", &h, body, 4).unwrap().verified);
        assert!(!check("other", &h, body, 4).unwrap().verified);
        assert!(!check("s3cret", &h, b"tampered", 4).unwrap().verified);
        let h = headers(&[("x-gitlab-token", "s3cret")]);
        assert!(check("s3cret", &h, body, 4).unwrap().verified);
        assert!(check("s3cre", &h, body, 4).is_none());
        assert!(check("s3cret", &HeaderMap::new(), body, 4).is_none());
        // A signature header that is no SHA-256 is refused before any body.
        for bad in ["sha1=abcd", "sha256=zz", "sha256=abcd", ""] {
            let h = headers(&[("x-hub-signature-256", bad)]);
            assert!(credential("s3cret", &h).is_none(), "{bad}");
        }
    }

    proptest! {
        /// The streamed HMAC agrees with the `hmac` crate over the whole
        /// body, however the body is cut into frames.
        #[test]
        fn the_streaming_verifier_agrees_with_an_hmac_of_the_whole_body(
            body in proptest::collection::vec(any::<u8>(), 0..5000),
            chunk in 1usize..700,
            secret in "[a-z0-9]{1,40}",
            flip in any::<Option<proptest::sample::Index>>(),
        ) {
            let h = headers(&[("x-hub-signature-256", &sign(&secret, &body))]);
            let mut sent = body.clone();
            if let Some(i) = flip && !sent.is_empty() {
                let i = i.index(sent.len());
                sent[i] ^= 1;
            }
            let checked = check(&secret, &h, &sent, chunk).unwrap();
            let mut whole = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
            whole.update(&sent);
            let expected = decode_hex(sign(&secret, &body).trim_start_matches("sha256=")).unwrap();
            prop_assert_eq!(checked.verified, whole.verify_slice(&expected).is_ok());
            prop_assert_eq!(checked.verified, sent == body);
            let digest: [u8; 32] = Sha256::digest(&sent).into();
            prop_assert_eq!(checked.digest, digest);
        }
    }

    #[test]
    fn a_body_over_the_limit_is_refused_as_it_streams() {
        let h = headers(&[("x-gitlab-token", "s")]);
        let mut c = BodyCheck::new("s", &credential("s", &h).unwrap());
        let mb = vec![b' '; 1024 * 1024];
        for _ in 0..25 {
            assert_eq!(c.update(&mb), Ok(()));
        }
        assert_eq!(c.update(b"x"), Err(BodyError::TooLarge));
        // Only the prefix is kept.
        assert_eq!(c.prefix.len(), REF_PREFIX);
    }

    #[test]
    fn the_pushed_ref_is_read_from_the_start_of_the_body() {
        // GitHub: `ref` first; the rest may be cut anywhere.
        let github = br#"{"ref":"refs/heads/main","before":"0000","commits":[{"id":"1"}"#;
        assert_eq!(top_level_ref(github).as_deref(), Some("refs/heads/main"));
        // GitLab: after a few other keys, nested `ref`s do not count.
        let gitlab = br#"{"object_kind":"push","project":{"ref":"no"},"ref":"refs/heads/dev","#;
        assert_eq!(top_level_ref(gitlab).as_deref(), Some("refs/heads/dev"));
        let escaped = br#"{"ref":"refs/heads/a\"b"}"#;
        assert_eq!(top_level_ref(escaped).as_deref(), Some("refs/heads/a\"b"));
        for unknown in [
            &br#"{"zen":"ping","hook_id":1}"#[..],
            br#"{"before":"x","commits":[1,2"#,
            b"not json",
            b"",
            br#"{"ref":1}"#,
            br#"["ref","main"]"#,
        ] {
            assert_eq!(top_level_ref(unknown), None, "{unknown:?}");
        }
        // Deep nesting before the ref is refused, not overflowing the stack.
        let deep = format!("{{\"a\":{}", "[".repeat(100_000));
        assert_eq!(top_level_ref(deep.as_bytes()), None);
    }

    #[test]
    fn pushes_of_other_branches_do_not_count() {
        assert!(tracks("main", "refs/heads/main"));
        assert!(tracks("v1.2", "refs/tags/v1.2"));
        assert!(tracks("refs/heads/main", "refs/heads/main"));
        assert!(!tracks("main", "refs/heads/main2"));
        assert!(!tracks("main", "refs/heads/feature/main"));
    }

    #[test]
    fn events_other_than_a_push_are_told_apart() {
        assert_eq!(event(&headers(&[("x-github-event", "push")])), Event::Push);
        assert_eq!(event(&headers(&[("x-github-event", "ping")])), Event::Ping);
        assert_eq!(
            event(&headers(&[("x-github-event", "issues")])),
            Event::Other("issues".into())
        );
        assert_eq!(
            event(&headers(&[("x-gitlab-event", "Push Hook")])),
            Event::Push
        );
        assert_eq!(
            event(&headers(&[("x-gitlab-event", "Merge Request Hook")])),
            Event::Other("Merge Request Hook".into())
        );
        assert_eq!(event(&HeaderMap::new()), Event::Push);
    }

    #[test]
    fn a_replayed_delivery_is_recognised_by_its_id_or_its_body() {
        let t0 = Instant::now();
        let mut seen = ReplayCache::new(3, Duration::from_secs(3600));
        let body = |n: u8| [n; 32];
        assert!(seen.insert_if_new(Some("a"), &body(1), t0));
        assert!(!seen.insert_if_new(Some("a"), &body(2), t0), "same id");
        assert!(!seen.insert_if_new(Some("b"), &body(1), t0), "same body");
        assert!(!seen.insert_if_new(None, &body(1), t0), "same body, no id");
        assert!(seen.insert_if_new(Some("b"), &body(2), t0));
        // After the window, the same delivery counts again.
        let later = t0 + Duration::from_secs(3601);
        assert!(seen.insert_if_new(Some("a"), &body(1), later));
    }

    #[test]
    fn the_replay_cache_stays_bounded() {
        let t0 = Instant::now();
        let mut seen = ReplayCache::new(1000, Duration::from_secs(3600));
        for i in 0..10_000u32 {
            let mut body = [0u8; 32];
            body[..4].copy_from_slice(&i.to_le_bytes());
            assert!(seen.insert_if_new(Some(&i.to_string()), &body, t0));
            assert!(seen.len() <= 2000);
        }
        assert_eq!(seen.len(), 2000);
        assert_eq!(seen.order.len(), 2000);
        // The newest are still remembered, the oldest forgotten.
        let mut last = [0u8; 32];
        last[..4].copy_from_slice(&9_999u32.to_le_bytes());
        assert!(!seen.insert_if_new(None, &last, t0));
        let mut first = [0u8; 32];
        first[..4].copy_from_slice(&0u32.to_le_bytes());
        assert!(seen.insert_if_new(None, &first, t0));
    }

    #[test]
    fn published_errors_name_no_server_and_no_identity() {
        let text = "permission denied by https://10.96.0.1:443: cannot list ConfigMap: configmaps is forbidden: User \"system:serviceaccount:tenantsync-system:tenantsync\" cannot list resource \"configmaps\" in API group \"\" at the cluster scope";
        let shown = redact(text);
        assert_eq!(
            shown,
            "permission denied by https://…: cannot list ConfigMap: configmaps is forbidden: User \"[identity]\" cannot list resource \"configmaps\" in API group \"\" at the cluster scope"
        );
        assert_eq!(
            redact(
                "cannot reach the Kubernetes API server at https://[::1]:6443/api/v1?x=1: refused"
            ),
            "cannot reach the Kubernetes API server at https://…/api/v1?x=1: refused"
        );
        assert_eq!(
            redact("cannot read the repository git://user@git.example.com:9418/tenants.git"),
            "cannot read the repository git://…/tenants.git"
        );
        assert_eq!(
            redact("denied to system:serviceaccount:ns:sa, sorry"),
            "denied to [identity], sorry"
        );
        assert_eq!(
            redact("file:///srv/repo and ünïcode"),
            "file:///srv/repo and ünïcode"
        );
    }
}
