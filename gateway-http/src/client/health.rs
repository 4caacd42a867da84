//! Active health checks: every replica answers grpc.health.v1 `Check` for
//! `openclaw.agent.v1.AgentService` every [`PROBE_INTERVAL`], or it takes no
//! new calls until it does.

use super::pool::Pool;
use super::replica::Replica;
use crate::metrics::Metrics;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::HealthCheckRequest;

/// The gRPC service name agent-svc reports health under.
pub const HEALTH_SERVICE: &str = "openclaw.agent.v1.AgentService";
/// How often every replica is probed.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(2);
/// How long a probe may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Whether `replica` answers `SERVING` within [`PROBE_TIMEOUT`].
pub async fn check(replica: &Replica) -> bool {
    let req = HealthCheckRequest { service: HEALTH_SERVICE.to_owned() };
    match tokio::time::timeout(PROBE_TIMEOUT, replica.health_client().check(req)).await {
        Ok(Ok(resp)) => resp.into_inner().status == ServingStatus::Serving as i32,
        _ => false,
    }
}

/// Probes every replica of `pool` at once, records the verdicts, and updates the
/// aggregate gauges. Returns how many replicas take new calls.
pub async fn probe_all(pool: &Pool, metrics: &Metrics) -> usize {
    let replicas = pool.snapshot();
    let verdicts = futures::future::join_all(replicas.iter().map(|r| check(r))).await;
    let now = Instant::now();
    for (r, serving) in replicas.iter().zip(verdicts) {
        r.record_probe(serving, now);
    }
    let up = replicas.iter().filter(|r| r.is_available(now)).count();
    metrics.replicas(replicas.len(), up);
    up
}

/// Probes until `stop` fires.
pub async fn run(pool: Arc<Pool>, metrics: Arc<Metrics>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(PROBE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {
                probe_all(&pool, &metrics).await;
            }
        }
    }
}
