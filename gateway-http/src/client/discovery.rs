//! Discovery: turns the targets into the pool's replicas, and keeps them current.
//!
//! IP literals are fixed replicas. DNS names are resolved at start and again
//! every [`RESOLVE_INTERVAL`] (every second while no replica is known): an
//! address that appears joins the pool (with its own channel, warming up), one
//! that disappears leaves it (calls on it finish on its channel, new calls go
//! elsewhere). A name that fails to resolve, or resolves to nothing, keeps its
//! last addresses: a DNS blip must not empty the pool.

use super::pool::Pool;
use super::replica::Replica;
use super::target::Target;
use futures::future::BoxFuture;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often DNS names are resolved again.
pub const RESOLVE_INTERVAL: Duration = Duration::from_secs(5);
/// How often while the pool is empty.
const RESOLVE_INTERVAL_EMPTY: Duration = Duration::from_secs(1);
/// How long one resolution may take.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);

/// Resolves a host name and port to addresses (the system resolver, or a fake in tests).
pub type Resolver =
    Arc<dyn Fn(String, u16) -> BoxFuture<'static, std::io::Result<Vec<SocketAddr>>> + Send + Sync>;

/// The system resolver (`getaddrinfo`, on tokio's blocking pool).
pub fn system_resolver() -> Resolver {
    Arc::new(|host, port| {
        Box::pin(async move { Ok(tokio::net::lookup_host((host.as_str(), port)).await?.collect()) })
    })
}

/// Makes the replica for a new address, given the host name it was found under
/// (`None` for an IP target): the name its TLS certificate is checked for.
pub type MakeReplica = Arc<dyn Fn(SocketAddr, Option<&str>) -> Arc<Replica> + Send + Sync>;

/// An address and the host name it was resolved from.
type Found = (SocketAddr, Option<String>);

/// The state of discovery: targets, last known addresses per name.
pub struct Discovery {
    targets: Vec<Target>,
    resolver: Resolver,
    make: MakeReplica,
    last: HashMap<Target, Vec<SocketAddr>>,
}

impl Discovery {
    /// Discovery of `targets`, making replicas with `make`.
    pub fn new(targets: Vec<Target>, resolver: Resolver, make: MakeReplica) -> Discovery {
        Discovery { targets, resolver, make, last: HashMap::new() }
    }

    /// Whether every target is an IP literal (nothing to re-resolve).
    pub fn is_static(&self) -> bool {
        self.targets.iter().all(|t| matches!(t, Target::Addr(_)))
    }

    /// Fills `pool` from targets that are all IP literals (nothing to resolve).
    pub fn apply_static(&self, pool: &Pool) {
        let addrs: Vec<Found> = self
            .targets
            .iter()
            .filter_map(|t| if let Target::Addr(a) = t { Some((*a, None)) } else { None })
            .collect();
        apply(pool, addrs, &self.make);
    }

    /// Resolves every target once and brings `pool` in line with the result.
    pub async fn refresh(&mut self, pool: &Pool) {
        let mut addrs: Vec<Found> = Vec::new();
        for t in &self.targets {
            match t {
                Target::Addr(a) => addrs.push((*a, None)),
                Target::Name { host, port } => {
                    let found =
                        tokio::time::timeout(RESOLVE_TIMEOUT, (self.resolver)(host.clone(), *port)).await;
                    let found = match found {
                        Ok(Ok(list)) if !list.is_empty() => {
                            self.last.insert(t.clone(), list.clone());
                            list
                        }
                        Ok(Ok(_)) | Ok(Err(_)) | Err(_) => {
                            let why = match found {
                                Ok(Ok(_)) => "no addresses".to_owned(),
                                Ok(Err(e)) => e.to_string(),
                                Err(_) => "timed out".to_owned(),
                            };
                            tracing::warn!(target = %t, error = %why, "agent-svc name did not resolve; keeping its last addresses");
                            self.last.get(t).cloned().unwrap_or_default()
                        }
                    };
                    addrs.extend(found.into_iter().map(|a| (a, Some(host.clone()))));
                }
            }
        }
        apply(pool, addrs, &self.make);
    }

    /// Re-resolves until `stop` fires.
    pub async fn run(mut self, pool: Arc<Pool>, stop: CancellationToken) {
        if self.is_static() {
            return;
        }
        loop {
            let every = if pool.snapshot().is_empty() { RESOLVE_INTERVAL_EMPTY } else { RESOLVE_INTERVAL };
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(every) => self.refresh(&pool).await,
            }
        }
    }
}

/// Makes the pool hold exactly `found` (sorted and deduplicated by address
/// here): replicas already there are kept (with their channel, load and
/// health), new ones made, missing ones retired.
fn apply(pool: &Pool, mut found: Vec<Found>, make: &MakeReplica) {
    found.sort_unstable_by_key(|(a, _)| *a);
    found.dedup_by_key(|(a, _)| *a);
    let current = pool.snapshot();
    if current.len() == found.len() && current.iter().zip(&found).all(|(r, (a, _))| r.addr() == *a) {
        return;
    }
    let next: Vec<Arc<Replica>> = found
        .iter()
        .map(|(a, host)| match current.iter().find(|r| r.addr() == *a) {
            Some(r) => r.clone(),
            None => {
                tracing::info!(replica = %a, "agent-svc replica joined");
                make(*a, host.as_deref())
            }
        })
        .collect();
    for gone in current.iter().filter(|r| !found.iter().any(|(a, _)| *a == r.addr())) {
        tracing::info!(replica = %gone.addr(), "agent-svc replica left; its calls in flight finish");
        gone.retire();
    }
    pool.replace(next);
}

#[cfg(test)]
mod tests {
    use super::super::replica::ReplicaMetrics;
    use super::*;
    use parking_lot::Mutex;

    fn make() -> MakeReplica {
        Arc::new(|addr, _| {
            let ch =
                tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect_lazy();
            Arc::new(Replica::new(addr, ch, 1024, ReplicaMetrics::noop()))
        })
    }

    /// A resolver whose answer the test sets; `None` answers with an error.
    fn fake(answer: Arc<Mutex<Option<Vec<SocketAddr>>>>) -> Resolver {
        Arc::new(move |_, _| {
            let a = answer.lock().clone();
            Box::pin(async move { a.ok_or_else(|| std::io::Error::other("NXDOMAIN")) })
        })
    }

    fn addrs(pool: &Pool) -> Vec<String> {
        pool.snapshot().iter().map(|r| r.addr().to_string()).collect()
    }

    #[tokio::test]
    async fn names_are_re_resolved_new_addresses_join_and_gone_ones_leave() {
        let answer =
            Arc::new(Mutex::new(Some(vec!["10.0.0.1:7".parse().unwrap(), "10.0.0.2:7".parse().unwrap()])));
        let targets = vec![
            Target::Name { host: "agent-svc".into(), port: 7 },
            Target::Addr("10.9.9.9:1".parse().unwrap()),
        ];
        let mut d = Discovery::new(targets, fake(answer.clone()), make());
        assert!(!d.is_static());
        let pool = Pool::default();
        d.refresh(&pool).await;
        assert_eq!(addrs(&pool), ["10.0.0.1:7", "10.0.0.2:7", "10.9.9.9:1"]);
        let kept = pool.snapshot()[1].clone();

        // Scaled: .1 gone, .3 new; .2 keeps its replica (channel, load, health).
        *answer.lock() = Some(vec!["10.0.0.3:7".parse().unwrap(), "10.0.0.2:7".parse().unwrap()]);
        d.refresh(&pool).await;
        assert_eq!(addrs(&pool), ["10.0.0.2:7", "10.0.0.3:7", "10.9.9.9:1"]);
        assert!(Arc::ptr_eq(&pool.snapshot()[0], &kept));

        // A failed or empty resolution keeps the last addresses.
        *answer.lock() = None;
        d.refresh(&pool).await;
        assert_eq!(addrs(&pool), ["10.0.0.2:7", "10.0.0.3:7", "10.9.9.9:1"]);
        *answer.lock() = Some(Vec::new());
        d.refresh(&pool).await;
        assert_eq!(addrs(&pool), ["10.0.0.2:7", "10.0.0.3:7", "10.9.9.9:1"]);
    }

    #[tokio::test]
    async fn the_system_resolver_finds_localhost() {
        let found = system_resolver()("localhost".into(), 9).await.unwrap();
        assert!(found.iter().any(|a| a.ip().is_loopback() && a.port() == 9), "{found:?}");
    }
}
