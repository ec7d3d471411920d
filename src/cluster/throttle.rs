//! How many writes one connection to the API server keeps in flight, and
//! what a `429 Too Many Requests` does.
//!
//! A sync keeps a window of writes in flight ([`Throttle::limit`]): it
//! starts at [`START_IN_FLIGHT`], grows by one (up to [`MAX_IN_FLIGHT`],
//! or the operator's `--max-writes-in-flight`)
//! each time a window's worth of writes is answered while the answers stay
//! as fast as usual, and shrinks
//! when the API server says it is busy (a 429 halves it, at most once per
//! [`CUT_GAP`]: the burst of 429s one overload causes is one signal) or when
//! answers become much slower than usual (a quarter off). Additive increase,
//! multiplicative decrease, as TCP's congestion control.
//!
//! A write answered 429 is sent again after the server's `Retry-After`
//! (capped at [`MAX_RETRY_WAIT`]; a growing backoff when it gives none), for
//! up to [`BUSY_FOR`]; each attempt may wait [`WRITE_TIMEOUT`] for its
//! answer, so a frozen server is still found out as fast as before. The API
//! server's 429s (max-in-flight and API Priority and Fairness) come with a
//! `Retry-After` header and a plain-text body: the header is read by a layer
//! of the client ([`Throttle::layer`]), which also counts every 429. Reads
//! and tenantsync's own bookkeeping are resent by the client itself
//! ([`Resend`]).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::Cluster;

/// Writes in flight when a connection starts.
pub const START_IN_FLIGHT: usize = 8;
/// The fewest writes in flight (a busy server still gets one at a time).
pub const MIN_IN_FLIGHT: usize = 1;
/// The most writes in flight by default, however fast the server answers:
/// the start. More was measured: 16 to 64 in flight synced no faster on
/// this machine (docs/benchmarks.md), and a window free to grow to 16 had
/// twice the 429s of a fixed 8 against a small API server (its writes in a
/// Retry-After wait already keep off it). The window narrows under load and
/// comes back. An operator whose API server is larger or farther away sets
/// more (`--max-writes-in-flight`, up to [`MOST_IN_FLIGHT`]).
pub const MAX_IN_FLIGHT: usize = 8;
/// The most an operator may set.
pub const MOST_IN_FLIGHT: usize = 64;
/// The longest one `Retry-After` is waited (the API server says 1 s; a
/// proxy that says an hour is not waited an hour).
pub const MAX_RETRY_WAIT: Duration = Duration::from_secs(10);
/// How long one write is sent again while the server keeps answering 429.
/// After that it fails, and counts as a failure to reach the server (three
/// in a row stop the sync, as for a server that does not answer).
pub const BUSY_FOR: Duration = Duration::from_secs(60);
/// A write with no answer after this long counts as a failure to reach the
/// server (a frozen API server accepts connections and never answers).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(15);
/// The first wait after a 429 that gives no `Retry-After`; doubled on each
/// further one.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// The window shrinks at most once per this long.
const CUT_GAP: Duration = Duration::from_secs(1);
/// Answers slower than this on average, and more than twice as slow as
/// usual, shrink the window; a slower answer below it is not a busy server.
const SLOW: Duration = Duration::from_millis(250);

/// The window of writes in flight: the arithmetic alone (no clock, no I/O).
#[derive(Debug, Clone)]
pub struct Window {
    limit: usize,
    max: usize,
    /// Answers since the window last changed.
    answered: usize,
    /// Seconds per answer: recent (fast-moving) and usual (slow-moving)
    /// averages.
    recent: Option<f64>,
    usual: Option<f64>,
    last_cut: Option<Instant>,
}

impl Window {
    pub fn new(start: usize, max: usize) -> Window {
        let max = max.max(MIN_IN_FLIGHT);
        Window {
            limit: start.clamp(MIN_IN_FLIGHT, max),
            max,
            answered: 0,
            recent: None,
            usual: None,
            last_cut: None,
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// A write was answered (whatever the answer, but 429) after `latency`.
    pub fn answered(&mut self, latency: Duration, now: Instant) {
        let l = latency.as_secs_f64();
        let recent = self.recent.map_or(l, |r| r * 0.8 + l * 0.2);
        let usual = self.usual.map_or(l, |u| u * 0.98 + l * 0.02);
        self.recent = Some(recent);
        self.usual = Some(usual);
        if recent > SLOW.as_secs_f64() && recent > 2.0 * usual {
            self.cut(now, |l| l - (l / 4).max(1));
            return;
        }
        self.answered += 1;
        if self.answered >= self.limit {
            self.answered = 0;
            self.limit = (self.limit + 1).min(self.max);
        }
    }

    /// The server answered 429.
    pub fn throttled(&mut self, now: Instant) {
        self.cut(now, |l| l / 2);
    }

    fn cut(&mut self, now: Instant, to: impl Fn(usize) -> usize) {
        self.answered = 0;
        if self
            .last_cut
            .is_some_and(|at| now.saturating_duration_since(at) < CUT_GAP)
        {
            return;
        }
        self.limit = to(self.limit).max(MIN_IN_FLIGHT);
        self.last_cut = Some(now);
    }
}

/// One API server's [`Window`], shared by everything that writes to it,
/// and what its 429s said.
#[derive(Debug)]
pub struct Throttle {
    window: Mutex<Window>,
    throttled: AtomicU64,
    /// 429s not yet taken by [`Throttle::take_unpublished`].
    unpublished: AtomicU64,
    /// The last `Retry-After` the server gave, in milliseconds (0: none).
    retry_after_ms: AtomicU64,
}

/// Where the window starts when it may grow to `max` (the operator's
/// `--max-writes-in-flight`, or [`MAX_IN_FLIGHT`]).
pub fn start_of(max: usize) -> usize {
    START_IN_FLIGHT.min(max.clamp(MIN_IN_FLIGHT, MOST_IN_FLIGHT))
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle::with_max(MAX_IN_FLIGHT)
    }
}

impl Throttle {
    /// A window that starts at [`START_IN_FLIGHT`] (or `max`, when less)
    /// and grows up to `max` (at least [`MIN_IN_FLIGHT`], at most
    /// [`MOST_IN_FLIGHT`]).
    pub fn with_max(max: usize) -> Throttle {
        let max = max.clamp(MIN_IN_FLIGHT, MOST_IN_FLIGHT);
        Throttle {
            window: Mutex::new(Window::new(start_of(max), max)),
            throttled: AtomicU64::new(0),
            unpublished: AtomicU64::new(0),
            retry_after_ms: AtomicU64::new(0),
        }
    }

    /// Writes to keep in flight now.
    pub fn limit(&self) -> usize {
        self.window
            .lock()
            .map(|w| w.limit())
            .unwrap_or(MIN_IN_FLIGHT)
    }

    /// 429s answered so far, to any request of this connection.
    pub fn throttled_total(&self) -> u64 {
        self.throttled.load(Ordering::Relaxed)
    }

    /// 429s since the last call (for a metric: each counted once).
    pub fn take_unpublished(&self) -> u64 {
        self.unpublished.swap(0, Ordering::Relaxed)
    }

    fn answered(&self, latency: Duration) {
        if let Ok(mut w) = self.window.lock() {
            w.answered(latency, Instant::now());
        }
    }

    /// A 429 came back, with the server's `Retry-After` when it gave one.
    pub fn saw_429(&self, retry_after: Option<Duration>) {
        self.throttled.fetch_add(1, Ordering::Relaxed);
        self.unpublished.fetch_add(1, Ordering::Relaxed);
        let ms = retry_after.map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self.retry_after_ms.store(ms, Ordering::Relaxed);
        if let Ok(mut w) = self.window.lock() {
            w.throttled(Instant::now());
        }
    }

    /// How long to wait before attempt `attempt + 1` of a write answered
    /// 429: the server's `Retry-After`, else a backoff doubling from
    /// [`FIRST_BACKOFF`]; never more than [`MAX_RETRY_WAIT`], plus up to a
    /// quarter more at random so the writes it stopped do not all come
    /// back at once.
    fn wait(&self, attempt: u32) -> Duration {
        let server = self.retry_after_ms.load(Ordering::Relaxed);
        let base = if server > 0 {
            Duration::from_millis(server)
        } else {
            FIRST_BACKOFF.saturating_mul(2u32.saturating_pow(attempt.min(16)))
        }
        .min(MAX_RETRY_WAIT);
        spread(base)
    }

    /// A layer for the client that reads every 429's `Retry-After` header
    /// (kube's errors keep the body, not the headers) into this throttle.
    pub fn layer<B>(
        self: &std::sync::Arc<Self>,
    ) -> tower::util::MapResponseLayer<
        impl Fn(hyper::http::Response<B>) -> hyper::http::Response<B> + Clone + Send + Sync + 'static,
    > {
        let throttle = self.clone();
        tower::util::MapResponseLayer::new(move |response: hyper::http::Response<B>| {
            if response.status() == hyper::http::StatusCode::TOO_MANY_REQUESTS {
                throttle.saw_429(retry_after(response.headers()));
            }
            response
        })
    }
}

/// Sends again a request answered 429 (a `GET` answered 503 too: a
/// server starting or overloaded) when it is a read (`GET`: get, list, the
/// start of a watch) or tenantsync's own bookkeeping ([`bookkeeping`]):
/// after the `Retry-After` of that answer (see [`Throttle::wait`]), for up
/// to [`BUSY_FOR`]. A policy of tower's `Retry`, in the client below kube (a
/// 429 was not processed, so sending it again is safe). The environment's
/// objects are not resent here: their writes go through [`Cluster::write`],
/// which checks that this writer still holds the environment before each
/// attempt.
#[derive(Clone)]
pub(super) struct Resend {
    throttle: std::sync::Arc<Throttle>,
    started: Option<Instant>,
    attempt: u32,
}

impl Resend {
    pub(super) fn new(throttle: std::sync::Arc<Throttle>) -> Resend {
        Resend {
            throttle,
            started: None,
            attempt: 0,
        }
    }
}

/// Whether a request path is tenantsync's own bookkeeping rather than an
/// environment's object: anything in `tenantsync-system` (inventories,
/// approvals, the namespace itself), Leases (locks, leader election,
/// shards), Events, and reviews of the caller's own rights.
fn bookkeeping(path: &str) -> bool {
    let system = format!(
        "/api/v1/namespaces/{}",
        crate::sync::inventory::SYSTEM_NAMESPACE
    );
    path == system
        || path.starts_with(&format!("{system}/"))
        || path.starts_with("/apis/coordination.k8s.io/")
        || path.starts_with("/apis/events.k8s.io/")
        || path.starts_with("/apis/authentication.k8s.io/")
        || path.starts_with("/apis/authorization.k8s.io/")
        || path.ends_with("/events")
}

type Request = hyper::http::Request<kube::client::Body>;

impl<B, E> tower::retry::Policy<Request, hyper::http::Response<B>, E> for Resend {
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        request: &mut Request,
        result: &mut Result<hyper::http::Response<B>, E>,
    ) -> Option<Self::Future> {
        let Ok(response) = result else { return None };
        let read = request.method() == hyper::http::Method::GET;
        let resent = match response.status() {
            hyper::http::StatusCode::TOO_MANY_REQUESTS => read || bookkeeping(request.uri().path()),
            hyper::http::StatusCode::SERVICE_UNAVAILABLE => read,
            _ => false,
        };
        if !resent {
            return None;
        }
        let started = *self.started.get_or_insert_with(Instant::now);
        let wait = match retry_after(response.headers()) {
            Some(server) => spread(server.min(MAX_RETRY_WAIT)),
            None => self.throttle.wait(self.attempt),
        };
        if started.elapsed() + wait > BUSY_FOR {
            return None;
        }
        self.attempt += 1;
        Some(tokio::time::sleep(wait))
    }

    fn clone_request(&mut self, request: &Request) -> Option<Request> {
        let mut copy = hyper::http::Request::new(request.body().try_clone()?);
        *copy.method_mut() = request.method().clone();
        *copy.uri_mut() = request.uri().clone();
        *copy.version_mut() = request.version();
        *copy.headers_mut() = request.headers().clone();
        *copy.extensions_mut() = request.extensions().clone();
        Some(copy)
    }
}

/// A response's `Retry-After`, in whole seconds as the API server sends it.
fn retry_after(headers: &hyper::http::HeaderMap) -> Option<Duration> {
    headers
        .get(hyper::http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// `base` plus up to a quarter more at random, so the requests one
/// overload stopped do not all come back at once.
fn spread(base: Duration) -> Duration {
    let spread = getrandom::u32().unwrap_or(0) % 1024;
    base + base / 4 * spread / 1024
}

/// A write not sent because this writer no longer holds the environment.
#[derive(Debug, thiserror::Error)]
#[error("not sent: this writer no longer holds the environment")]
pub(super) struct Fenced;

/// A request that got no answer within [`WRITE_TIMEOUT`].
#[derive(Debug, thiserror::Error)]
#[error("no answer within {}s", WRITE_TIMEOUT.as_secs())]
pub(super) struct NoAnswer;

impl Cluster {
    /// Sends a write (`request` makes each attempt): counted, its answer's
    /// latency fed to the window, sent again while the server answers 429
    /// (see the module), not sent again once `lost` says this writer no
    /// longer holds the environment. An attempt with no answer within
    /// [`WRITE_TIMEOUT`] fails with [`NoAnswer`].
    pub(super) async fn write<T, F, Fut>(
        &self,
        counted: bool,
        lost: &(dyn Fn() -> bool + Sync),
        mut request: F,
    ) -> Result<T, kube::Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, kube::Error>>,
    {
        let started = Instant::now();
        let mut attempt = 0u32;
        loop {
            if lost() {
                return Err(kube::Error::Service(Box::new(Fenced)));
            }
            self.count(counted);
            let sent = Instant::now();
            let Ok(result) = tokio::time::timeout(WRITE_TIMEOUT, request()).await else {
                return Err(kube::Error::Service(Box::new(NoAnswer)));
            };
            match result {
                Err(kube::Error::Api(mut status)) if status.code == 429 => {
                    let wait = self.throttle.wait(attempt);
                    if started.elapsed() + wait > BUSY_FOR {
                        status.message = format!(
                            "{} (answered 429 Too Many Requests {} time(s) in {}s; the API server is overloaded or its API Priority and Fairness settings give tenantsync too little)",
                            status.message.trim_end_matches('.'),
                            attempt + 1,
                            started.elapsed().as_secs()
                        );
                        return Err(kube::Error::Api(status));
                    }
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                Err(kube::Error::Api(status)) => {
                    self.throttle.answered(sent.elapsed());
                    return Err(kube::Error::Api(status));
                }
                Ok(value) => {
                    self.throttle.answered(sent.elapsed());
                    return Ok(value);
                }
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAST: Duration = Duration::from_millis(5);
    /// A window starting at 8 that may grow to 16.
    const S: usize = 8;
    const M: usize = 16;

    #[test]
    fn the_window_grows_by_one_per_window_of_fast_answers_up_to_the_most() {
        let now = Instant::now();
        let mut w = Window::new(S, M);
        for _ in 0..S - 1 {
            w.answered(FAST, now);
        }
        assert_eq!(w.limit(), S, "grew before a window's worth");
        w.answered(FAST, now);
        assert_eq!(w.limit(), S + 1);
        for _ in 0..1000 {
            w.answered(FAST, now);
        }
        assert_eq!(w.limit(), M);
    }

    #[test]
    fn a_burst_of_429s_halves_the_window_once_per_gap_and_never_below_one() {
        let now = Instant::now();
        let mut w = Window::new(S, M);
        for _ in 0..8 {
            w.throttled(now);
        }
        assert_eq!(w.limit(), S / 2, "one overload, one cut");
        w.throttled(now + CUT_GAP);
        assert_eq!(w.limit(), S / 4);
        for i in 2..10 {
            w.throttled(now + CUT_GAP * i);
        }
        assert_eq!(w.limit(), MIN_IN_FLIGHT);
        // Fast answers afterwards grow it again.
        for _ in 0..3 {
            w.answered(FAST, now + CUT_GAP * 20);
        }
        assert_eq!(w.limit(), 3);
    }

    #[test]
    fn answers_much_slower_than_usual_shrink_the_window_and_slow_but_steady_ones_do_not() {
        let now = Instant::now();
        let mut w = Window::new(S, M);
        for _ in 0..100 {
            w.answered(FAST, now);
        }
        let grown = w.limit();
        // Twenty times slower, above SLOW: a quarter off, once per gap.
        for _ in 0..20 {
            w.answered(Duration::from_secs(1), now);
        }
        assert_eq!(w.limit(), grown - grown / 4);
        // A server always slow (a distant cluster) is not taken for busy.
        let mut steady = Window::new(S, M);
        for _ in 0..200 {
            steady.answered(Duration::from_millis(400), now);
        }
        assert_eq!(steady.limit(), M);
        // Below SLOW, even doubling is no sign of a busy server.
        let mut quick = Window::new(S, M);
        for _ in 0..50 {
            quick.answered(FAST, now);
        }
        for _ in 0..50 {
            quick.answered(Duration::from_millis(100), now);
        }
        assert_eq!(quick.limit(), M);
    }

    #[test]
    fn bookkeeping_is_tenantsyncs_own_objects_never_an_environments() {
        for own in [
            "/api/v1/namespaces/tenantsync-system",
            "/api/v1/namespaces/tenantsync-system/configmaps/inventory-dev",
            "/apis/coordination.k8s.io/v1/namespaces/tenantsync-system/leases/tenantsync-sync-dev",
            "/api/v1/namespaces/acme-dev/events",
            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
        ] {
            assert!(bookkeeping(own), "{own}");
        }
        for theirs in [
            "/api/v1/namespaces/acme-dev",
            "/api/v1/namespaces/tenantsync-systemx",
            "/api/v1/namespaces/acme-dev/configmaps/fhir",
            "/apis/apps/v1/namespaces/acme-dev/deployments/fhir-main",
        ] {
            assert!(!bookkeeping(theirs), "{theirs}");
        }
    }

    #[test]
    fn the_wait_after_a_429_follows_retry_after_capped_else_a_doubling_backoff() {
        let t = Throttle::default();
        let within = |d: Duration, base: Duration| d >= base && d <= base + base / 4;
        assert!(within(t.wait(0), FIRST_BACKOFF));
        assert!(within(t.wait(2), FIRST_BACKOFF * 4));
        assert!(within(t.wait(30), MAX_RETRY_WAIT));
        t.saw_429(Some(Duration::from_secs(2)));
        assert!(within(t.wait(5), Duration::from_secs(2)));
        t.saw_429(Some(Duration::from_secs(3600)));
        assert!(within(t.wait(0), MAX_RETRY_WAIT), "an hour is not waited");
        assert_eq!(t.throttled_total(), 2);
        assert_eq!(t.limit(), START_IN_FLIGHT / 2);
    }

    #[test]
    fn an_operators_most_in_flight_sets_where_the_window_starts_and_stops() {
        // Less than the start: it starts there.
        assert_eq!(Throttle::with_max(4).limit(), 4);
        assert_eq!(start_of(4), 4);
        // More: it starts at 8 and may grow to it; kept within 1 to 64.
        assert_eq!(Throttle::with_max(16).limit(), START_IN_FLIGHT);
        assert_eq!(Throttle::with_max(0).limit(), MIN_IN_FLIGHT);
        let t = Throttle::with_max(1000);
        for _ in 0..10_000 {
            t.answered(Duration::from_millis(5));
        }
        assert_eq!(t.limit(), MOST_IN_FLIGHT);
        let t = Throttle::with_max(16);
        for _ in 0..10_000 {
            t.answered(Duration::from_millis(5));
        }
        assert_eq!(t.limit(), 16);
    }
}
