//! A per-process cache of stable sessions' contexts (the latest summary and
//! the window sent upstream), for a store that this process alone writes
//! (`sqlite:`). Without it every turn reads its whole window back from the
//! database and decodes it; with it a turn takes shared references to the
//! entries the previous turns left here.
//!
//! Coherence rests on the store calling in on every change: appends extend a
//! cached window and compactions cut it (in commit order, before the write
//! returns), anything else (reset, delete, sweep, a failed commit) drops the
//! entry, and a fill read from the database before such a change is discarded
//! (the epoch).
//! Bounded by bytes (the entries' encoded size): past the bound the least
//! recently used sessions are dropped.

use super::{Context, StoredMessage};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

/// Bookkeeping counted per entry on top of its encoded message.
const ENTRY_OVERHEAD: usize = 96;
/// JSON framing of a message's wire form (`{"role":…,"content":…}`), which an
/// entry keeps once it was sent upstream.
const WIRE_OVERHEAD: usize = 32;

/// The cache of one store.
pub struct WindowCache {
    max_bytes: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    sessions: HashMap<String, Cached>,
    bytes: usize,
    /// Advances on every use; what "least recently used" compares.
    tick: u64,
    /// Advances on every drop: a fill that began before one may be stale.
    epoch: u64,
}

struct Cached {
    ctx: Context,
    /// The seq the session's next append gets.
    next_seq: i64,
    bytes: usize,
    used: u64,
}

/// The epoch a fill began in (see [`WindowCache::fill`]).
#[derive(Debug, Clone, Copy)]
pub struct Epoch(u64);

/// An entry's share of the budget, counted when it is cached: the message and
/// its wire form (about as long, computed when first sent), its run id, the
/// bookkeeping.
fn entry_bytes(m: &StoredMessage) -> usize {
    let message = prost::Message::encoded_len(m.message.message());
    2 * message + WIRE_OVERHEAD + m.run_id.len() + ENTRY_OVERHEAD
}

fn context_bytes(ctx: &Context) -> usize {
    ctx.summary.iter().chain(&ctx.window).map(|m| entry_bytes(m)).sum()
}

impl WindowCache {
    /// A cache holding at most about `max_bytes` of entries; 0 disables it.
    pub fn new(max_bytes: usize) -> Self {
        WindowCache { max_bytes, inner: Mutex::new(Inner::default()) }
    }

    /// Whether it caches anything.
    pub fn enabled(&self) -> bool {
        self.max_bytes > 0
    }

    /// The cached context of a session (shared entries), counted as a hit or miss.
    pub fn get(&self, key: &str) -> Option<Context> {
        if !self.enabled() {
            return None;
        }
        let mut inner = self.inner.lock();
        inner.tick += 1;
        let tick = inner.tick;
        let found = inner.sessions.get_mut(key).map(|c| {
            c.used = tick;
            c.ctx.clone()
        });
        let result = if found.is_some() { "hit" } else { "miss" };
        metrics::counter!("openclaw_agent_session_cache_total", "result" => result).increment(1);
        found
    }

    /// Call before reading a context to [`fill`](Self::fill) the cache with.
    pub fn epoch(&self) -> Epoch {
        Epoch(self.inner.lock().epoch)
    }

    /// Caches a context read from the database since `epoch`, unless something
    /// was dropped meanwhile (the read may predate it). `next_seq` is the seq
    /// the session's next append gets.
    pub fn fill(&self, key: &str, ctx: &Context, next_seq: i64, epoch: Epoch) {
        if !self.enabled() {
            return;
        }
        // The key and the bookkeeping count too: an empty session is not free.
        let bytes = context_bytes(ctx) + key.len() + ENTRY_OVERHEAD;
        // One huge session must not push out everything else.
        if bytes > self.max_bytes / 8 {
            return;
        }
        let mut inner = self.inner.lock();
        if inner.epoch != epoch.0 {
            return;
        }
        inner.tick += 1;
        let cached = Cached { ctx: ctx.clone(), next_seq, bytes, used: inner.tick };
        inner.bytes += bytes;
        if let Some(old) = inner.sessions.insert(key.to_owned(), cached) {
            inner.bytes -= old.bytes;
        }
        self.evict(&mut inner);
    }

    /// Entries committed to a session from `first_seq` on: a cached window
    /// grows by them; a cached window that does not end right before them is
    /// dropped (the database changed behind the cache).
    pub fn appended(&self, key: &str, first_seq: i64, entries: Vec<StoredMessage>) {
        if !self.enabled() {
            return;
        }
        let mut inner = self.inner.lock();
        let Some(c) = inner.sessions.get_mut(key) else { return };
        if c.next_seq != first_seq {
            Self::drop_locked(&mut inner, key);
            return;
        }
        let mut added = 0;
        for (m, seq) in entries.into_iter().zip(first_seq..) {
            let m = StoredMessage { seq, compacted: false, ..m };
            added += entry_bytes(&m);
            c.ctx.window.push(Arc::new(m));
            c.next_seq = seq + 1;
        }
        c.bytes += added;
        inner.bytes += added;
        self.evict(&mut inner);
    }

    /// A compaction committed to a session: its cached window now starts at
    /// `start_seq` (never earlier than it did) and `summary`, when given, is
    /// its latest summary, stored at seq `summary.seq`, which must be the
    /// session's next seq (else the database changed behind the cache and the
    /// entry goes). Saves the next turn a read of the whole context back.
    pub fn compacted(&self, key: &str, start_seq: i64, summary: Option<StoredMessage>) {
        if !self.enabled() {
            return;
        }
        let mut inner = self.inner.lock();
        // A fill read before this commit holds the old context.
        inner.epoch += 1;
        let Some(c) = inner.sessions.get_mut(key) else { return };
        let next_seq = summary.as_ref().map_or(c.next_seq, |s| s.seq + 1);
        // A summary elsewhere than at the next seq, or a start past every entry
        // (the next appends would be outside the context too, which an entry
        // here cannot say): the entry goes.
        if summary.as_ref().is_some_and(|s| s.seq != c.next_seq) || start_seq > next_seq {
            Self::drop_locked(&mut inner, key);
            return;
        }
        let before = c.bytes;
        let cut = c.ctx.window.partition_point(|m| m.seq < start_seq);
        c.bytes -= c.ctx.window.drain(..cut).map(|m| entry_bytes(&m)).sum::<usize>();
        c.next_seq = next_seq;
        if let Some(s) = summary {
            let s = StoredMessage { summary: true, compacted: false, ..s };
            c.bytes += entry_bytes(&s);
            if let Some(old) = c.ctx.summary.replace(Arc::new(s)) {
                c.bytes -= entry_bytes(&old);
            }
        }
        let after = c.bytes;
        inner.bytes = inner.bytes + after - before;
        self.evict(&mut inner);
    }

    /// Drops a session (its context changed other than by an append or a compaction).
    pub fn invalidate(&self, key: &str) {
        if self.enabled() {
            Self::drop_locked(&mut self.inner.lock(), key);
        }
    }

    /// Drops every session (many changed at once: a sweep).
    pub fn clear(&self) {
        if self.enabled() {
            let mut inner = self.inner.lock();
            inner.sessions.clear();
            inner.bytes = 0;
            inner.epoch += 1;
        }
    }

    fn drop_locked(inner: &mut Inner, key: &str) {
        inner.epoch += 1;
        if let Some(old) = inner.sessions.remove(key) {
            inner.bytes -= old.bytes;
        }
    }

    /// Past the bound, drops the least recently used sessions down to three
    /// quarters of it (in one pass, so eviction is not paid on every insert).
    fn evict(&self, inner: &mut Inner) {
        if inner.bytes <= self.max_bytes {
            return;
        }
        let mut by_use: Vec<(u64, &String)> = inner.sessions.iter().map(|(k, c)| (c.used, k)).collect();
        by_use.sort_unstable();
        let target = self.max_bytes / 4 * 3;
        let mut bytes = inner.bytes;
        let mut doomed = Vec::new();
        for (_, key) in by_use {
            if bytes <= target {
                break;
            }
            bytes -= inner.sessions[key].bytes;
            doomed.push(key.clone());
        }
        for key in doomed {
            if let Some(old) = inner.sessions.remove(&key) {
                inner.bytes -= old.bytes;
            }
        }
        metrics::counter!("openclaw_agent_session_cache_evictions_total").increment(1);
    }

    /// Bytes held (for tests).
    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.inner.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sessions::fixtures::{numbered, shared, text};

    fn ctx(entries: &[StoredMessage]) -> Context {
        Context { summary: None, window: shared(entries) }
    }

    #[test]
    fn appends_extend_and_gaps_drop() {
        let cache = WindowCache::new(1 << 20);
        assert!(cache.get("k").is_none());
        let first = numbered(vec![text("user", "a"), text("assistant", "b")], 0);
        cache.fill("k", &ctx(&first), 2, cache.epoch());
        assert_eq!(cache.get("k").unwrap(), ctx(&first));

        cache.appended("k", 2, vec![text("user", "c")]);
        let got = cache.get("k").unwrap();
        assert_eq!(got.window.len(), 3);
        assert_eq!(got.window[2].seq, 2);
        // Shared, not copied.
        assert!(Arc::ptr_eq(&got.window[0], &cache.get("k").unwrap().window[0]));

        // Not right after the cached window: the database changed, the entry goes.
        cache.appended("k", 7, vec![text("user", "d")]);
        assert!(cache.get("k").is_none());
        assert_eq!(cache.bytes(), 0);
        // A session not cached stays uncached.
        cache.appended("other", 0, vec![text("user", "x")]);
        assert!(cache.get("other").is_none());
    }

    #[test]
    fn a_compaction_cuts_the_window_and_sets_the_summary() {
        let cache = WindowCache::new(1 << 20);
        let first = numbered(vec![text("user", "a"), text("assistant", "b"), text("user", "c")], 0);
        cache.fill("k", &ctx(&first), 3, cache.epoch());
        let full = cache.bytes();

        let summary = StoredMessage { seq: 3, ..text("system", "a and b") };
        let stale = cache.epoch();
        cache.compacted("k", 2, Some(summary.clone()));
        let got = cache.get("k").unwrap();
        assert_eq!(got.window.iter().map(|m| m.seq).collect::<Vec<_>>(), [2]);
        let s = got.summary.expect("the summary is cached");
        assert!(s.summary && !s.compacted && s.seq == 3);
        assert!(cache.bytes() < full + entry_bytes(&summary), "the cut entries no longer count");
        // A fill read before the compaction is stale.
        cache.fill("k", &ctx(&first), 3, stale);
        assert_eq!(cache.get("k").unwrap().window.len(), 1);

        // The next append takes the seq after the summary.
        cache.appended("k", 4, vec![text("user", "d")]);
        assert_eq!(cache.get("k").unwrap().window.iter().map(|m| m.seq).collect::<Vec<_>>(), [2, 4]);
        // A truncation moves the start only; never back.
        cache.compacted("k", 4, None);
        cache.compacted("k", 0, None);
        let got = cache.get("k").unwrap();
        assert_eq!(got.window.iter().map(|m| m.seq).collect::<Vec<_>>(), [4]);
        assert!(got.summary.is_some(), "a truncation keeps the summary");

        // A start past every entry: the entry goes.
        cache.compacted("k", 6, None);
        assert!(cache.get("k").is_none());
        assert_eq!(cache.bytes(), 0);

        // A summary not at the next seq: the database changed behind the cache.
        cache.fill("k", &ctx(&first), 3, cache.epoch());
        cache.compacted("k", 2, Some(StoredMessage { seq: 9, ..text("system", "x") }));
        assert!(cache.get("k").is_none());
        assert_eq!(cache.bytes(), 0);
    }

    #[test]
    fn a_fill_older_than_a_drop_is_discarded() {
        let cache = WindowCache::new(1 << 20);
        let epoch = cache.epoch();
        cache.invalidate("k");
        cache.fill("k", &ctx(&numbered(vec![text("user", "stale")], 0)), 1, epoch);
        assert!(cache.get("k").is_none());
        cache.fill("k", &ctx(&[]), 0, cache.epoch());
        assert!(cache.get("k").is_some());
        assert!(cache.bytes() > 0, "an empty session still counts against the bound");
        cache.clear();
        assert!(cache.get("k").is_none());
    }

    #[test]
    fn the_least_recently_used_go_first_and_the_bound_holds() {
        let one = numbered(vec![text("user", &"x".repeat(1000))], 0);
        let size = context_bytes(&ctx(&one)) + "sNN".len() + ENTRY_OVERHEAD;
        let cache = WindowCache::new(size * 10);
        for i in 0..10 {
            cache.fill(&format!("s{i}"), &ctx(&one), 1, cache.epoch());
        }
        assert!(cache.get("s0").is_some(), "s0 is now the most recently used");
        cache.fill("s10", &ctx(&one), 1, cache.epoch());
        assert!(cache.bytes() <= size * 10);
        assert!(cache.get("s0").is_some() && cache.get("s10").is_some());
        assert!(cache.get("s1").is_none(), "the least recently used went");

        // Too big for its share: not cached.
        let huge = numbered(vec![text("user", &"x".repeat(size * 2))], 0);
        cache.fill("huge", &ctx(&huge), 1, cache.epoch());
        assert!(cache.get("huge").is_none());

        let off = WindowCache::new(0);
        off.fill("k", &ctx(&one), 1, off.epoch());
        assert!(off.get("k").is_none());
    }
}
