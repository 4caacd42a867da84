//! A bounded map with expiry, for `chat.send`'s `idempotencyKey`: the first send
//! of a key inserts its run, a resend within the time-to-live finds it again.
//!
//! Entries expire [`Dedupe::ttl`] after insertion. At most [`Dedupe::capacity`]
//! are kept: when full, the oldest entry is dropped (even one whose run is still
//! going: memory stays bounded, and a resend after that simply starts a new run).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Default capacity of the gateway-wide map.
pub const DEFAULT_CAPACITY: usize = 10_000;
/// Default time-to-live of an entry.
pub const DEFAULT_TTL: Duration = Duration::from_secs(10 * 60);

/// Keys with their values and insertion times, oldest first.
#[derive(Debug)]
pub struct Dedupe<V> {
    map: HashMap<String, (V, Instant)>,
    /// Insertion order. Every map entry has exactly one element here (insertion
    /// times are non-decreasing, so expired entries are always at the front).
    order: VecDeque<(String, Instant)>,
    capacity: usize,
    ttl: Duration,
}

/// What [`Dedupe::get_or_insert_with`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry<V> {
    /// The key was new; this value was inserted.
    Inserted(V),
    /// The key was live; this is its value.
    Existing(V),
}

impl<V: Clone> Dedupe<V> {
    /// An empty map (`capacity` at least 1).
    pub fn new(capacity: usize, ttl: Duration) -> Dedupe<V> {
        Dedupe { map: HashMap::new(), order: VecDeque::new(), capacity: capacity.max(1), ttl }
    }

    /// How long an entry lives.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The most entries kept.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Live entries (after the last pruning).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The live value of `key`, or `make()` inserted under it, at time `now`.
    pub fn get_or_insert_with(&mut self, key: &str, now: Instant, make: impl FnOnce() -> V) -> Entry<V> {
        self.prune(now);
        if let Some((v, _)) = self.map.get(key) {
            return Entry::Existing(v.clone());
        }
        while self.map.len() >= self.capacity {
            match self.order.pop_front() {
                Some((old, _)) => {
                    self.map.remove(&old);
                }
                None => break,
            }
        }
        let v = make();
        self.map.insert(key.to_owned(), (v.clone(), now));
        self.order.push_back((key.to_owned(), now));
        Entry::Inserted(v)
    }

    /// Drops the entries older than the time-to-live.
    fn prune(&mut self, now: Instant) {
        while let Some((key, at)) = self.order.front() {
            if now.saturating_duration_since(*at) < self.ttl {
                break;
            }
            self.map.remove(key);
            self.order.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resend_finds_the_first_value() {
        let mut d = Dedupe::new(10, Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(d.get_or_insert_with("a", t0, || 1), Entry::Inserted(1));
        assert_eq!(d.get_or_insert_with("a", t0 + Duration::from_secs(59), || 2), Entry::Existing(1));
        assert_eq!(d.get_or_insert_with("b", t0, || 3), Entry::Inserted(3));
        assert_eq!(d.len(), 2);
    }

    #[test]
    fn entries_expire_after_the_ttl() {
        let mut d = Dedupe::new(10, Duration::from_secs(60));
        let t0 = Instant::now();
        d.get_or_insert_with("a", t0, || 1);
        d.get_or_insert_with("b", t0 + Duration::from_secs(30), || 2);
        // `a` expired, `b` is still live.
        let t1 = t0 + Duration::from_secs(60);
        assert_eq!(d.get_or_insert_with("a", t1, || 10), Entry::Inserted(10));
        assert_eq!(d.get_or_insert_with("b", t1, || 20), Entry::Existing(2));
        assert_eq!(d.len(), 2);
        // Much later everything old is gone.
        let t2 = t1 + Duration::from_secs(600);
        d.get_or_insert_with("c", t2, || 3);
        assert_eq!(d.len(), 1);
        assert_eq!(d.order.len(), 1);
    }

    #[test]
    fn capacity_drops_the_oldest() {
        let mut d = Dedupe::new(3, Duration::from_secs(60));
        let t0 = Instant::now();
        for (i, k) in ["a", "b", "c", "d"].iter().enumerate() {
            d.get_or_insert_with(k, t0, || i);
        }
        assert_eq!(d.len(), 3);
        // `a` was evicted: a resend of it is a new entry (and evicts `b`).
        assert_eq!(d.get_or_insert_with("a", t0, || 9), Entry::Inserted(9));
        assert_eq!(d.get_or_insert_with("c", t0, || 0), Entry::Existing(2));
        assert_eq!(d.get_or_insert_with("b", t0, || 7), Entry::Inserted(7));
    }

    #[test]
    fn memory_stays_bounded_under_a_flood_of_keys() {
        let mut d = Dedupe::new(DEFAULT_CAPACITY, DEFAULT_TTL);
        let t0 = Instant::now();
        for i in 0..(DEFAULT_CAPACITY * 3) {
            d.get_or_insert_with(&format!("k{i}"), t0, || i);
        }
        assert_eq!(d.len(), DEFAULT_CAPACITY);
        assert_eq!(d.order.len(), DEFAULT_CAPACITY);
        assert_eq!(d.capacity(), DEFAULT_CAPACITY);
        assert_eq!(d.ttl(), DEFAULT_TTL);
    }
}
