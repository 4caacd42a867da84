//! The retention sweep (`session.retention`): every `sweepIntervalSeconds`,
//! sessions unused for `maxAgeSeconds` and those beyond the
//! `maxSessionsPerAgent` most recently used of their agent are deleted. Safe
//! with several replicas on one database: deletes are idempotent, and the
//! PostgreSQL store lets one replica sweep at a time. A session in use is
//! recent, so a turn never loses its session to the age rule.

use super::{now_ms, SessionStore, Sweep};
use services::config::RetentionConfig;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Sweeps `store` as `cfg` says until `stop`, and keeps the
/// `openclaw_agent_sessions_stored` gauge current. The first sweep runs at once.
pub fn spawn(store: Arc<dyn SessionStore>, cfg: &RetentionConfig, stop: CancellationToken) {
    let cfg = cfg.clone();
    let every = Duration::from_secs_f64(cfg.sweep_interval_seconds.max(0.001));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            sweep_once(&*store, &cfg).await;
        }
    });
}

/// One sweep and count; failures are logged and retried next time.
async fn sweep_once(store: &dyn SessionStore, cfg: &RetentionConfig) {
    let sweep = Sweep {
        updated_before_ms: cfg.max_age_seconds.map(|s| now_ms().saturating_sub((s * 1000.0) as i64)),
        keep_per_agent: cfg.max_sessions_per_agent,
    };
    if sweep != Sweep::default() {
        match store.sweep(sweep).await {
            Ok(0) => {}
            Ok(n) => {
                metrics::counter!("openclaw_agent_sessions_swept_total").increment(n);
                tracing::info!(sessions = n, "retention sweep deleted sessions");
            }
            Err(e) => tracing::warn!(error = %e, "retention sweep failed"),
        }
    }
    match store.count().await {
        Ok(n) => metrics::gauge!("openclaw_agent_sessions_stored").set(n as f64),
        Err(e) => tracing::debug!(error = %e, "counting sessions failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sessions::fixtures::text;
    use crate::sessions::memory::MemoryStore;

    #[tokio::test]
    async fn a_sweep_applies_both_rules() {
        let store = MemoryStore::default();
        for key in ["agent:main:a", "agent:main:b", "agent:main:c"] {
            store.append(key, "main", vec![text("user", key)]).await.unwrap();
        }
        let by_count = RetentionConfig { max_sessions_per_agent: Some(2), ..RetentionConfig::default() };
        sweep_once(&store, &by_count).await;
        assert_eq!(store.count().await.unwrap(), 2);
        // Everything was used just now: a day of age sweeps nothing.
        let by_age = RetentionConfig { max_age_seconds: Some(86_400.0), ..RetentionConfig::default() };
        sweep_once(&store, &by_age).await;
        assert_eq!(store.count().await.unwrap(), 2);
        let none = RetentionConfig::default();
        sweep_once(&store, &none).await;
        assert_eq!(store.count().await.unwrap(), 2, "no rule, no sweep");
    }
}
