//! The set of agent-svc replicas and how a call picks one.
//!
//! - A call with a session key goes to the replica chosen by weighted
//!   rendezvous hashing of the key over the available replicas: every gateway
//!   that sees the same replicas picks the same one, so a session's turns (its
//!   FIFO order) stay on one replica, and when a replica leaves only its own
//!   sessions move.
//! - A call without one goes to the less loaded (calls in flight) of two
//!   replicas drawn at random in proportion to their warm-up weight (power of
//!   two choices).
//! - A retry excludes the replicas already tried.
//!
//! When no replica is available (all ejected, draining or failing their
//! probes), the call is tried on one anyway: a replica may be back before its
//! probe says so, and trying costs little next to a certain 503.
//!
//! The set is replaced as a whole by discovery (copy on write), so a pick reads
//! one `Arc` and takes no lock held by anyone for long.

use super::replica::Replica;
use parking_lot::RwLock;
use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

/// The current replicas.
#[derive(Debug, Default)]
pub struct Pool {
    replicas: RwLock<Arc<Vec<Arc<Replica>>>>,
}

impl Pool {
    /// The replicas now.
    pub fn snapshot(&self) -> Arc<Vec<Arc<Replica>>> {
        self.replicas.read().clone()
    }

    /// Replaces the set.
    pub fn replace(&self, replicas: Vec<Arc<Replica>>) {
        *self.replicas.write() = Arc::new(replicas);
    }

    /// Picks a replica for a call: by rendezvous hashing on `affinity` when
    /// given, else the less loaded of two random ones; never one in `exclude`.
    pub fn pick(&self, affinity: Option<&str>, exclude: &[SocketAddr]) -> Option<Arc<Replica>> {
        let all = self.snapshot();
        let now = Instant::now();
        let allowed = |r: &&Arc<Replica>| !exclude.contains(&r.addr());
        let available: Vec<&Arc<Replica>> =
            all.iter().filter(allowed).filter(|r| r.is_available(now)).collect();
        let candidates = if available.is_empty() { all.iter().filter(allowed).collect() } else { available };
        match affinity {
            Some(key) => rendezvous(key, &candidates, now),
            None => least_loaded_of_two(&candidates, now),
        }
        .cloned()
    }

    /// How many replicas there are, and how many take new calls now.
    pub fn counts(&self) -> (usize, usize) {
        let all = self.snapshot();
        let now = Instant::now();
        (all.len(), all.iter().filter(|r| r.is_available(now)).count())
    }
}

/// The replica with the highest weighted rendezvous score for `key`:
/// `-weight / ln(u)` with `u` a uniform draw in (0, 1) from hash(key, replica).
fn rendezvous<'a>(key: &str, candidates: &[&'a Arc<Replica>], now: Instant) -> Option<&'a Arc<Replica>> {
    candidates.iter().copied().max_by(|a, b| {
        let (sa, sb) = (score(key, a.addr(), a.weight(now)), score(key, b.addr(), b.weight(now)));
        // Equal scores (a hash tie) fall back to the address, so every gateway agrees.
        sa.total_cmp(&sb).then_with(|| a.addr().cmp(&b.addr()))
    })
}

fn score(key: &str, addr: SocketAddr, weight: f64) -> f64 {
    let h = hash_pair(key, addr);
    // 53 random bits → u in (0, 1).
    let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    -weight / u.ln()
}

/// A hash of (key, address) that is the same in every process and release
/// (FNV-1a over both, then a 64-bit finalizer), unlike `DefaultHasher`.
fn hash_pair(key: &str, addr: SocketAddr) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    feed(key.as_bytes());
    feed(&[0xff]);
    match addr.ip() {
        std::net::IpAddr::V4(ip) => feed(&ip.octets()),
        std::net::IpAddr::V6(ip) => feed(&ip.octets()),
    }
    feed(&addr.port().to_be_bytes());
    mix(h)
}

/// splitmix64's finalizer: spreads FNV's weak low bits over the whole word.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Two replicas drawn at random in proportion to their weight (so one that is
/// warming up is drawn less often), and the one with fewer calls in flight.
fn least_loaded_of_two<'a>(candidates: &[&'a Arc<Replica>], now: Instant) -> Option<&'a Arc<Replica>> {
    match candidates.len() {
        0 => None,
        1 => Some(candidates[0]),
        _ => {
            let weights: Vec<f64> = candidates.iter().map(|r| r.weight(now)).collect();
            let i = weighted_draw(&weights, None);
            let j = weighted_draw(&weights, Some(i));
            let (a, b) = (candidates[i], candidates[j]);
            Some(if b.in_flight() < a.in_flight() { b } else { a })
        }
    }
}

/// An index drawn with probability proportional to `weights[i]`, never `skip`.
fn weighted_draw(weights: &[f64], skip: Option<usize>) -> usize {
    let total: f64 = weights.iter().enumerate().filter(|(i, _)| Some(*i) != skip).map(|(_, w)| w).sum();
    let mut x = random_unit() * total;
    let mut last = 0;
    for (i, w) in weights.iter().enumerate() {
        if Some(i) == skip {
            continue;
        }
        last = i;
        if x < *w {
            return i;
        }
        x -= w;
    }
    last
}

/// A uniform draw in [0, 1).
fn random_unit() -> f64 {
    (random_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// 64 random bits from a per-thread xorshift generator (seeded from the clock
/// and the thread): cheap, and good enough to spread load.
fn random_u64() -> u64 {
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            let local = 0u8;
            mix(t ^ (&local as *const u8 as u64)) | 1
        });
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        x
    })
}

#[cfg(test)]
mod tests {
    use super::super::replica::ReplicaMetrics;
    use super::*;
    use std::collections::HashMap;

    fn pool(n: u16) -> (Pool, Vec<Arc<Replica>>) {
        let replicas: Vec<Arc<Replica>> = (1..=n)
            .map(|i| {
                let addr: SocketAddr = format!("10.0.0.{i}:50051").parse().unwrap();
                let ch =
                    tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect_lazy();
                Arc::new(Replica::new(addr, ch, 1024, ReplicaMetrics::noop()))
            })
            .collect();
        let p = Pool::default();
        p.replace(replicas.clone());
        (p, replicas)
    }

    #[tokio::test]
    async fn a_session_sticks_to_one_replica_and_only_its_sessions_move() {
        let (p, replicas) = pool(3);
        let keys: Vec<String> = (0..3000).map(|i| format!("agent:main:openai-user:u{i}")).collect();
        let before: Vec<SocketAddr> = keys.iter().map(|k| p.pick(Some(k), &[]).unwrap().addr()).collect();
        // Stable: the same key always lands on the same replica.
        for (k, a) in keys.iter().zip(&before) {
            assert_eq!(p.pick(Some(k), &[]).unwrap().addr(), *a);
        }
        // Spread: each replica gets about a third.
        let mut per: HashMap<SocketAddr, usize> = HashMap::new();
        for a in &before {
            *per.entry(*a).or_default() += 1;
        }
        assert_eq!(per.len(), 3);
        assert!(per.values().all(|n| (800..1200).contains(n)), "{per:?}");
        // Excluding one (its failure, a retry): only its keys move.
        let gone = replicas[1].addr();
        for (k, a) in keys.iter().zip(&before) {
            let now = p.pick(Some(k), &[gone]).unwrap().addr();
            if *a == gone {
                assert_ne!(now, gone);
            } else {
                assert_eq!(now, *a, "a key of a healthy replica moved");
            }
        }
        // The hash is fixed across processes and releases.
        assert_eq!(
            hash_pair("k", "10.0.0.1:50051".parse().unwrap()),
            hash_pair("k", "10.0.0.1:50051".parse().unwrap())
        );
        assert_eq!(mix(0), 0);
        assert_eq!(mix(1), 0x5692_161d_100b_05e5);
    }

    #[tokio::test]
    async fn unavailable_replicas_are_skipped_unless_none_is_left() {
        let (p, replicas) = pool(3);
        let now = Instant::now();
        replicas[0].record_probe(false, now);
        replicas[1].record_draining();
        for _ in 0..100 {
            assert_eq!(p.pick(None, &[]).unwrap().addr(), replicas[2].addr());
            assert_eq!(p.pick(Some("s"), &[]).unwrap().addr(), replicas[2].addr());
        }
        // Nothing available but what was excluded: try the others anyway.
        let r = p.pick(None, &[replicas[2].addr()]).unwrap();
        assert_ne!(r.addr(), replicas[2].addr());
        assert_eq!(p.counts(), (3, 1));
        assert!(Pool::default().pick(None, &[]).is_none());
    }

    #[tokio::test]
    async fn stateless_calls_prefer_the_less_loaded() {
        let (p, replicas) = pool(2);
        let _busy: Vec<_> = (0..10).map(|_| replicas[0].begin_call()).collect();
        for _ in 0..100 {
            assert_eq!(p.pick(None, &[]).unwrap().addr(), replicas[1].addr());
        }
    }

    #[test]
    fn draws_follow_the_weights() {
        let mut seen = [0usize; 4];
        for _ in 0..40_000 {
            seen[weighted_draw(&[1.0, 1.0, 0.1, 1.0], Some(3))] += 1;
        }
        // 1 : 1 : 0.1, and never the skipped one.
        assert_eq!(seen[3], 0);
        assert!((17_000..21_000).contains(&seen[0]) && (17_000..21_000).contains(&seen[1]), "{seen:?}");
        assert!((1_300..2_600).contains(&seen[2]), "{seen:?}");
    }
}
