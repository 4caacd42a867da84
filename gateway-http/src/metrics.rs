//! Prometheus metrics of one gateway (`openclaw_gateway_*`), served on `/metrics`.
//!
//! Each gateway owns its recorder instead of installing a global one, so several
//! gateways can run in one process (tests) and the embedded agent-svc is free to
//! install the global recorder for its own metrics. Handles are registered once
//! and cached, so recording on the hot path is a few atomic operations.

pub use crate::client::ReplicaMetrics;
use metrics::{Counter, Gauge, Histogram, Key, Label, Level, Metadata, Recorder};
use metrics_exporter_prometheus::{PrometheusHandle, PrometheusRecorder};
use std::sync::OnceLock;
use std::time::Duration;

static META: Metadata<'static> = Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// The route label of a request. (The discriminant indexes the handle arrays.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `/v1/chat/completions`.
    ChatCompletions,
    /// `/v1/models` and `/v1/models/{id}`.
    Models,
    /// `/healthz`, `/readyz`.
    Health,
    /// `/metrics`.
    Metrics,
    /// Anything else (404s).
    Other,
}

impl Route {
    const ALL: [Route; 5] =
        [Route::ChatCompletions, Route::Models, Route::Health, Route::Metrics, Route::Other];

    /// Classifies a path by string comparison (no allocation).
    pub fn of(path: &str) -> Route {
        match path {
            "/v1/chat/completions" => Route::ChatCompletions,
            "/v1/models" => Route::Models,
            "/healthz" | "/readyz" => Route::Health,
            "/metrics" => Route::Metrics,
            p if p.starts_with("/v1/models/") => Route::Models,
            _ => Route::Other,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Route::ChatCompletions => "/v1/chat/completions",
            Route::Models => "/v1/models",
            Route::Health => "health",
            Route::Metrics => "/metrics",
            Route::Other => "other",
        }
    }
}

/// Statuses whose request counters are cached; others are registered per use.
const STATUSES: [u16; 13] = [200, 400, 401, 403, 404, 405, 413, 429, 499, 500, 502, 503, 504];

/// The gateway's metrics.
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    requests: [[OnceLock<Counter>; STATUSES.len()]; Route::ALL.len()],
    latency: [Histogram; Route::ALL.len()],
    ttft: Histogram,
    overhead: Histogram,
    agent_svc_up: Gauge,
    replicas_total: Gauge,
    replicas_up: Gauge,
    in_flight: Gauge,
    /// The embedded agent-svc's own metrics, rendered after the gateway's.
    embedded: std::sync::OnceLock<PrometheusHandle>,
    stream_errors: Counter,
    origin_refused: Counter,
    slow_clients: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A fresh, unshared set of metrics.
    pub fn new() -> Metrics {
        let recorder = services::telemetry::prometheus_builder().build_recorder();
        let handle = recorder.handle();
        describe(&recorder);
        let latency = Route::ALL.map(|r| {
            recorder.register_histogram(
                &Key::from_parts(
                    "openclaw_gateway_request_duration_seconds",
                    vec![Label::new("route", r.label())],
                ),
                &META,
            )
        });
        let ttft = recorder
            .register_histogram(&Key::from_name("openclaw_gateway_time_to_first_token_seconds"), &META);
        let overhead =
            recorder.register_histogram(&Key::from_name("openclaw_gateway_overhead_seconds"), &META);
        let agent_svc_up = recorder.register_gauge(&Key::from_name("openclaw_gateway_agent_svc_up"), &META);
        let replicas_total =
            recorder.register_gauge(&Key::from_name("openclaw_gateway_agent_svc_replicas"), &META);
        let replicas_up =
            recorder.register_gauge(&Key::from_name("openclaw_gateway_agent_svc_replicas_up"), &META);
        let in_flight = recorder.register_gauge(&Key::from_name("openclaw_gateway_runs_in_flight"), &META);
        let stream_errors =
            recorder.register_counter(&Key::from_name("openclaw_gateway_stream_errors_total"), &META);
        let origin_refused =
            recorder.register_counter(&Key::from_name("openclaw_gateway_origin_refused_total"), &META);
        let slow_clients =
            recorder.register_counter(&Key::from_name("openclaw_gateway_slow_clients_total"), &META);
        Metrics {
            recorder,
            handle,
            requests: Default::default(),
            latency,
            ttft,
            overhead,
            agent_svc_up,
            replicas_total,
            replicas_up,
            in_flight,
            embedded: std::sync::OnceLock::new(),
            stream_errors,
            origin_refused,
            slow_clients,
        }
    }

    /// Counts a finished request and its latency (for SSE: until the headers).
    pub fn request(&self, route: Route, status: u16, elapsed: Duration) {
        let ri = route as usize;
        match STATUSES.iter().position(|s| *s == status) {
            Some(si) => {
                self.requests[ri][si].get_or_init(|| self.register_requests(route, status)).increment(1)
            }
            None => self.register_requests(route, status).increment(1),
        }
        self.latency[ri].record(elapsed.as_secs_f64());
    }

    fn register_requests(&self, route: Route, status: u16) -> Counter {
        let labels = vec![Label::new("route", route.label()), Label::new("status", status.to_string())];
        self.recorder.register_counter(&Key::from_parts("openclaw_gateway_requests_total", labels), &META)
    }

    /// Records the time from request arrival to the first content or tool-call delta.
    pub fn first_token(&self, elapsed: Duration) {
        self.ttft.record(elapsed.as_secs_f64());
    }

    /// Records the gateway's own overhead for a finished run: the time since the
    /// request arrived minus the time agent-svc reports waiting on providers.
    pub fn run_finished(&self, started_at: std::time::Instant, finished: &services::proto::RunFinished) {
        let provider = Duration::from_micros(finished.provider_micros);
        self.overhead.record(started_at.elapsed().saturating_sub(provider).as_secs_f64());
    }

    /// Counts a streamed run ended because its client stopped reading.
    pub fn slow_client(&self) {
        self.slow_clients.increment(1);
    }

    /// Counts a connection or run refused by `gateway.limits` (`limit` names which).
    pub fn overload_refused(&self, limit: &'static str) {
        self.recorder
            .register_counter(
                &Key::from_parts(
                    "openclaw_gateway_overload_refusals_total",
                    vec![Label::new("limit", limit)],
                ),
                &META,
            )
            .increment(1);
    }

    /// Counts a request refused for its browser `Origin`.
    pub fn origin_refused(&self) {
        self.origin_refused.increment(1);
    }

    /// The auth counters.
    pub fn auth(&self) -> crate::auth::AuthMetrics {
        let c = |name: &'static str| self.recorder.register_counter(&Key::from_name(name), &META);
        crate::auth::AuthMetrics {
            failures: c("openclaw_gateway_auth_failures_total"),
            lockouts: c("openclaw_gateway_auth_lockouts_total"),
            throttled: c("openclaw_gateway_auth_throttled_total"),
            delayed: c("openclaw_gateway_auth_delayed_total"),
        }
    }

    /// Counts an error delivered inside an already-started SSE stream.
    pub fn stream_error(&self) {
        self.stream_errors.increment(1);
    }

    /// Marks a run in flight until the guard is dropped (also on client disconnect).
    pub fn run_guard(&self) -> RunGuard {
        self.in_flight.increment(1.0);
        RunGuard(self.in_flight.clone())
    }

    /// Records how many agent-svc replicas there are and how many take new
    /// calls (`openclaw_gateway_agent_svc_up` is 1 while any does).
    pub fn replicas(&self, total: usize, up: usize) {
        self.replicas_total.set(total as f64);
        self.replicas_up.set(up as f64);
        self.agent_svc_up.set(if up > 0 { 1.0 } else { 0.0 });
    }

    /// The per-replica handles of the replica at `addr`.
    pub fn replica(&self, addr: std::net::SocketAddr) -> ReplicaMetrics {
        let key = |name: &'static str| Key::from_parts(name, vec![Label::new("replica", addr.to_string())]);
        ReplicaMetrics {
            in_flight: self.recorder.register_gauge(&key("openclaw_gateway_replica_in_flight"), &META),
            up: self.recorder.register_gauge(&key("openclaw_gateway_replica_up"), &META),
            errors: self.recorder.register_counter(&key("openclaw_gateway_replica_errors_total"), &META),
            ejections: self
                .recorder
                .register_counter(&key("openclaw_gateway_replica_ejections_total"), &META),
            retries: self.recorder.register_counter(&key("openclaw_gateway_replica_retries_total"), &META),
        }
    }

    /// Adds an embedded agent-svc's metrics to [`Metrics::render`].
    pub fn include_embedded(&self, handle: PrometheusHandle) {
        let _ = self.embedded.set(handle);
    }

    /// The Prometheus text exposition (with the embedded agent-svc's, if any).
    pub fn render(&self) -> String {
        let mut out = self.handle.render();
        if let Some(embedded) = self.embedded.get() {
            out.push_str(&embedded.render());
        }
        out
    }

    /// Moves recorded histogram samples into their buckets (bounds memory between scrapes).
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
        if let Some(embedded) = self.embedded.get() {
            embedded.run_upkeep();
        }
    }
}

fn describe(r: &PrometheusRecorder) {
    use metrics::Unit;
    r.describe_counter(
        "openclaw_gateway_requests_total".into(),
        Some(Unit::Count),
        "HTTP requests by route and status.".into(),
    );
    r.describe_histogram(
        "openclaw_gateway_request_duration_seconds".into(),
        Some(Unit::Seconds),
        "Time until the response head was sent, by route.".into(),
    );
    r.describe_histogram(
        "openclaw_gateway_time_to_first_token_seconds".into(),
        Some(Unit::Seconds),
        "Time from request arrival to the first content or tool-call delta.".into(),
    );
    r.describe_histogram(
        "openclaw_gateway_overhead_seconds".into(),
        Some(Unit::Seconds),
        "Request time minus time spent waiting on the provider (gateway + agent-svc overhead).".into(),
    );
    r.describe_gauge(
        "openclaw_gateway_agent_svc_up".into(),
        None,
        "1 while at least one agent-svc replica takes new calls (probed every 2 s), else 0.".into(),
    );
    r.describe_gauge("openclaw_gateway_agent_svc_replicas".into(), None, "Known agent-svc replicas.".into());
    r.describe_gauge(
        "openclaw_gateway_agent_svc_replicas_up".into(),
        None,
        "agent-svc replicas taking new calls (serving, not ejected, not draining).".into(),
    );
    r.describe_gauge(
        "openclaw_gateway_replica_in_flight".into(),
        None,
        "Runs and calls in flight per replica.".into(),
    );
    r.describe_gauge(
        "openclaw_gateway_replica_up".into(),
        None,
        "1 while the replica takes new calls.".into(),
    );
    r.describe_counter(
        "openclaw_gateway_replica_errors_total".into(),
        Some(Unit::Count),
        "Transport failures of calls to the replica.".into(),
    );
    r.describe_counter(
        "openclaw_gateway_replica_ejections_total".into(),
        Some(Unit::Count),
        "Times the replica was ejected after consecutive failures.".into(),
    );
    r.describe_counter(
        "openclaw_gateway_replica_retries_total".into(),
        Some(Unit::Count),
        "Calls that failed on the replica before it started them and were retried on another.".into(),
    );
    r.describe_gauge("openclaw_gateway_runs_in_flight".into(), None, "Agent runs being served.".into());
    for (name, help) in [
        (
            "openclaw_gateway_origin_refused_total",
            "Requests refused for a browser Origin that is not allowed.",
        ),
        ("openclaw_gateway_auth_failures_total", "Wrong secrets presented (HTTP and WebSocket connect)."),
        ("openclaw_gateway_auth_lockouts_total", "Client IPs locked out after too many wrong secrets."),
        (
            "openclaw_gateway_auth_throttled_total",
            "Attempts refused by the global ceiling on wrong secrets per second.",
        ),
        (
            "openclaw_gateway_auth_delayed_total",
            "Wrong secrets of lockout-exempt (loopback) clients answered late.",
        ),
        ("openclaw_gateway_slow_clients_total", "SSE runs ended because their client stopped reading."),
        (
            "openclaw_gateway_overload_refusals_total",
            "Connections and runs refused by gateway.limits, by limit.",
        ),
    ] {
        r.describe_counter(name.into(), Some(Unit::Count), help.into());
    }
    r.describe_counter(
        "openclaw_gateway_stream_errors_total".into(),
        Some(Unit::Count),
        "Errors sent inside an SSE stream after it began.".into(),
    );
}

/// Decrements the in-flight gauge when dropped.
#[derive(Debug)]
pub struct RunGuard(Gauge);

impl Drop for RunGuard {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_and_separates_instances() {
        let a = Metrics::new();
        let b = Metrics::new();
        a.request(Route::ChatCompletions, 200, Duration::from_micros(300));
        a.request(Route::ChatCompletions, 200, Duration::from_micros(300));
        a.request(Route::Other, 404, Duration::from_micros(10));
        a.request(Route::Models, 418, Duration::from_micros(10));
        {
            let _g = a.run_guard();
            assert!(a.render().contains("openclaw_gateway_runs_in_flight 1"));
        }
        a.first_token(Duration::from_millis(5));
        let text = a.render();
        assert!(
            text.contains(r#"openclaw_gateway_requests_total{route="/v1/chat/completions",status="200"} 2"#),
            "{text}"
        );
        assert!(text.contains(r#"openclaw_gateway_requests_total{route="other",status="404"} 1"#));
        assert!(text.contains(r#"status="418"} 1"#));
        assert!(text.contains("openclaw_gateway_runs_in_flight 0"));
        assert!(text.contains("openclaw_gateway_request_duration_seconds_bucket"), "{text}");
        assert!(text.contains("openclaw_gateway_time_to_first_token_seconds_count 1"));
        assert!(!b.render().contains("status=\"200\""));
    }

    #[test]
    fn route_labels() {
        assert_eq!(Route::of("/v1/chat/completions"), Route::ChatCompletions);
        assert_eq!(Route::of("/v1/models/openclaw%2Fmain"), Route::Models);
        assert_eq!(Route::of("/readyz"), Route::Health);
        assert_eq!(Route::of("/nope"), Route::Other);
    }
}
