//! One agent-svc replica: its address, its HTTP/2 channel, its load (runs and
//! calls in flight) and its health.
//!
//! Health has three inputs. Active: a grpc.health.v1 probe every few seconds
//! (`health`); a replica that does not answer `SERVING` takes no new calls.
//! Passive: consecutive transport failures (refused, reset, no answer) eject it
//! for a while that doubles with each ejection in a row (capped); an answer
//! that says agent-svc is shutting down takes it out of rotation until a
//! probe says `SERVING` again. Gradual return: a replica that joins or comes
//! back has a weight that grows from [`MIN_WEIGHT`] to 1 over [`WARMUP`], which
//! scales its share of new sessions (weighted rendezvous) and of stateless
//! calls (it is drawn less often), so a replica that is not quite well yet
//! takes a trickle, not everything at once.

use metrics::{Counter, Gauge};
use parking_lot::Mutex;
use services::proto::agent_service_client::AgentServiceClient;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;

/// Consecutive transport failures that eject a replica.
pub const EJECT_AFTER_FAILURES: u32 = 3;
/// How long the first ejection lasts; each ejection in a row doubles it.
pub const EJECT_BASE: Duration = Duration::from_secs(2);
/// The longest ejection.
pub const EJECT_MAX: Duration = Duration::from_secs(30);
/// How long a replica that joins or returns takes to reach its full weight.
pub const WARMUP: Duration = Duration::from_secs(10);
/// The weight a replica starts its warm-up with.
pub const MIN_WEIGHT: f64 = 0.1;

/// Per-replica metrics (registered once, updated with atomics).
#[derive(Clone)]
pub struct ReplicaMetrics {
    /// `openclaw_gateway_replica_in_flight{replica}`.
    pub in_flight: Gauge,
    /// `openclaw_gateway_replica_up{replica}` (1 while it takes new calls).
    pub up: Gauge,
    /// `openclaw_gateway_replica_errors_total{replica}`: transport failures.
    pub errors: Counter,
    /// `openclaw_gateway_replica_ejections_total{replica}`.
    pub ejections: Counter,
    /// `openclaw_gateway_replica_retries_total{replica}`: calls retried elsewhere after failing here.
    pub retries: Counter,
}

impl ReplicaMetrics {
    /// Handles that record nothing (unit tests).
    pub fn noop() -> ReplicaMetrics {
        ReplicaMetrics {
            in_flight: Gauge::noop(),
            up: Gauge::noop(),
            errors: Counter::noop(),
            ejections: Counter::noop(),
            retries: Counter::noop(),
        }
    }
}

/// What the active probe last said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// Not probed yet: treated as serving, so a fresh gateway does not wait.
    Unknown,
    /// `SERVING`.
    Serving,
    /// Anything else: not serving, unreachable or too slow.
    Down,
}

#[derive(Debug)]
struct HealthState {
    probe: Probe,
    consecutive_failures: u32,
    /// Ejections in a row (reset by a success after the last one ended).
    ejections_in_row: u32,
    ejected_until: Option<Instant>,
    /// agent-svc said it is shutting down: no new calls until a probe says `SERVING`.
    draining: bool,
    /// When the replica (re)joined: the start of its warm-up.
    warm_since: Instant,
}

/// One agent-svc replica.
pub struct Replica {
    addr: SocketAddr,
    agents: AgentServiceClient<Channel>,
    health_client: HealthClient<Channel>,
    channel: Channel,
    in_flight: AtomicUsize,
    health: Mutex<HealthState>,
    metrics: ReplicaMetrics,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("addr", &self.addr)
            .field("in_flight", &self.in_flight())
            .field("health", &*self.health.lock())
            .finish()
    }
}

impl Replica {
    /// A replica at `addr` reached over `channel` (lazily connected).
    pub fn new(addr: SocketAddr, channel: Channel, max_decode: usize, metrics: ReplicaMetrics) -> Replica {
        metrics.up.set(1.0);
        Replica {
            addr,
            agents: AgentServiceClient::new(channel.clone()).max_decoding_message_size(max_decode),
            health_client: HealthClient::new(channel.clone()),
            channel,
            in_flight: AtomicUsize::new(0),
            health: Mutex::new(HealthState {
                probe: Probe::Unknown,
                consecutive_failures: 0,
                ejections_in_row: 0,
                ejected_until: None,
                draining: false,
                warm_since: Instant::now(),
            }),
            metrics,
        }
    }

    /// The replica's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The generated client on this replica's channel.
    pub fn agents(&self) -> AgentServiceClient<Channel> {
        self.agents.clone()
    }

    /// The health client on this replica's channel.
    pub fn health_client(&self) -> HealthClient<Channel> {
        self.health_client.clone()
    }

    /// The raw channel (for calls made with a custom codec).
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// Runs and calls in flight on this replica.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a call in flight until the guard is dropped.
    pub fn begin_call(self: &std::sync::Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.metrics.in_flight.increment(1.0);
        InFlight(self.clone())
    }

    /// Whether new calls may go here now.
    pub fn is_available(&self, now: Instant) -> bool {
        let h = self.health.lock();
        h.probe != Probe::Down && !h.draining && h.ejected_until.is_none_or(|t| t <= now)
    }

    /// What the last probe said.
    #[cfg(test)]
    pub fn probe(&self) -> Probe {
        self.health.lock().probe
    }

    /// The replica's weight now: [`MIN_WEIGHT`] when it has just (re)joined, 1
    /// once [`WARMUP`] has passed.
    pub fn weight(&self, now: Instant) -> f64 {
        let since = now.saturating_duration_since(self.health.lock().warm_since);
        if since >= WARMUP {
            1.0
        } else {
            MIN_WEIGHT + (1.0 - MIN_WEIGHT) * since.as_secs_f64() / WARMUP.as_secs_f64()
        }
    }

    /// A call here succeeded (or failed for a reason of the request's own).
    pub fn record_success(&self) {
        let mut h = self.health.lock();
        h.consecutive_failures = 0;
        if h.ejected_until.is_none() {
            h.ejections_in_row = 0;
        }
    }

    /// A call here failed in transport. Returns true when this ejected the replica.
    pub fn record_failure(&self, now: Instant) -> bool {
        self.metrics.errors.increment(1);
        let mut h = self.health.lock();
        h.consecutive_failures += 1;
        let ejected = h.ejected_until.is_some_and(|t| t > now);
        if ejected || h.consecutive_failures < EJECT_AFTER_FAILURES {
            return false;
        }
        let factor = 1u32 << h.ejections_in_row.min(4);
        let duration = (EJECT_BASE * factor).min(EJECT_MAX);
        h.ejected_until = Some(now + duration);
        h.ejections_in_row += 1;
        h.consecutive_failures = 0;
        drop(h);
        self.metrics.ejections.increment(1);
        self.metrics.up.set(0.0);
        tracing::warn!(replica = %self.addr, ?duration, "agent-svc replica ejected after consecutive failures");
        true
    }

    /// agent-svc said it is shutting down: take no new calls until it serves again.
    pub fn record_draining(&self) {
        let mut h = self.health.lock();
        if !h.draining {
            h.draining = true;
            drop(h);
            self.metrics.up.set(0.0);
            tracing::info!(replica = %self.addr, "agent-svc replica is draining");
        }
    }

    /// A call that failed here was retried on another replica.
    pub fn record_retry(&self) {
        self.metrics.retries.increment(1);
    }

    /// The active probe's verdict. A replica that comes back (from a failed probe,
    /// an ejection or a drain) starts a new warm-up.
    pub fn record_probe(&self, serving: bool, now: Instant) {
        let mut h = self.health.lock();
        let was_out = h.probe == Probe::Down || h.draining || h.ejected_until.is_some();
        if serving {
            let returning = was_out && h.ejected_until.is_none_or(|t| t <= now);
            h.probe = Probe::Serving;
            if returning {
                h.draining = false;
                h.ejected_until = None;
                h.consecutive_failures = 0;
                h.warm_since = now;
                tracing::info!(replica = %self.addr, "agent-svc replica is back in rotation");
            }
        } else {
            if h.probe != Probe::Down {
                tracing::warn!(replica = %self.addr, "agent-svc replica failed its health check");
            }
            h.probe = Probe::Down;
        }
        let up = h.probe == Probe::Serving && !h.draining && h.ejected_until.is_none_or(|t| t <= now);
        drop(h);
        self.metrics.up.set(if up { 1.0 } else { 0.0 });
    }

    /// Metrics once the replica has left the pool.
    pub fn retire(&self) {
        self.metrics.up.set(0.0);
    }
}

/// A call in flight on a replica (its load, for the least-loaded choice).
pub struct InFlight(std::sync::Arc<Replica>);

impl InFlight {
    /// The replica the call runs on.
    pub fn replica(&self) -> &std::sync::Arc<Replica> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.metrics.in_flight.decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica() -> Replica {
        let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:1").connect_lazy();
        Replica::new("127.0.0.1:1".parse().unwrap(), channel, 1024, ReplicaMetrics::noop())
    }

    #[tokio::test]
    async fn ejected_after_consecutive_failures_for_doubling_times() {
        let r = replica();
        let t0 = Instant::now();
        assert!(r.is_available(t0));
        assert!(!r.record_failure(t0));
        r.record_success();
        assert!(!r.record_failure(t0));
        assert!(!r.record_failure(t0));
        assert!(r.record_failure(t0), "third failure in a row ejects");
        assert!(!r.is_available(t0));
        assert!(r.is_available(t0 + EJECT_BASE));
        // Still failing when it comes back: ejected again, twice as long.
        let t1 = t0 + EJECT_BASE;
        for _ in 0..EJECT_AFTER_FAILURES {
            r.record_failure(t1);
        }
        assert!(!r.is_available(t1 + EJECT_BASE));
        assert!(r.is_available(t1 + EJECT_BASE * 2));
    }

    #[tokio::test]
    async fn probe_and_drain_take_it_out_until_it_serves_and_it_warms_up() {
        let r = replica();
        let t0 = Instant::now();
        assert_eq!(r.probe(), Probe::Unknown);
        assert!(r.is_available(t0), "unknown counts as serving");
        r.record_probe(false, t0);
        assert!(!r.is_available(t0));
        r.record_probe(true, t0);
        assert!(r.is_available(t0));
        assert!((r.weight(t0) - MIN_WEIGHT).abs() < 1e-9, "a returning replica starts light");
        assert!((r.weight(t0 + WARMUP / 2) - (MIN_WEIGHT + (1.0 - MIN_WEIGHT) / 2.0)).abs() < 1e-9);
        assert!((r.weight(t0 + WARMUP) - 1.0).abs() < 1e-9);
        r.record_draining();
        assert!(!r.is_available(t0));
        r.record_probe(true, t0 + WARMUP);
        assert!(r.is_available(t0 + WARMUP));
    }
}
