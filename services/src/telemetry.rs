//! Prometheus setup shared by both services: one set of latency buckets and
//! the recorder builder that applies them, so histograms from agent-svc and
//! the gateway line up in one dashboard.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use std::time::Duration;

/// Histogram buckets in seconds for every `*_seconds` metric: sub-millisecond
/// gateway work up to runs as long as the default run timeout (600 s).
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
    300.0, 600.0,
];

/// How often recorded histogram samples should be folded into their buckets
/// (`PrometheusHandle::run_upkeep`), which bounds memory between scrapes.
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// A Prometheus builder whose `*_seconds` histograms use [`LATENCY_BUCKETS`].
pub fn prometheus_builder() -> PrometheusBuilder {
    // Setting buckets only fails on an empty list, which LATENCY_BUCKETS is not.
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
        .unwrap_or_else(|_| PrometheusBuilder::new())
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics::{Key, Level, Metadata, Recorder};

    #[test]
    fn seconds_histograms_get_the_buckets() {
        static META: Metadata<'static> = Metadata::new(module_path!(), Level::INFO, None);
        let recorder = prometheus_builder().build_recorder();
        recorder.register_histogram(&Key::from_name("x_seconds"), &META).record(0.002);
        recorder.register_histogram(&Key::from_name("x_bytes"), &META).record(2.0);
        let text = recorder.handle().render();
        assert!(text.contains(r#"x_seconds_bucket{le="0.0025"} 1"#), "{text}");
        assert!(text.contains(r#"x_seconds_bucket{le="600"} 1"#), "{text}");
        // Other histograms stay summaries.
        assert!(text.contains(r#"x_bytes{quantile="#), "{text}");
    }
}
