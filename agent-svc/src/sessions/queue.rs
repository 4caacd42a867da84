//! Per-session turn serialization: turns of one session run one at a time, in
//! arrival order, with a bounded number of waiters (SPEC §4: 16 may wait, the
//! 17th is refused).
//!
//! Each active key owns a one-permit [`Semaphore`] (tokio's semaphore is FIFO
//! fair). The map entry lives exactly as long as some turn holds or waits on
//! it, so millions of distinct keys over time do not accumulate.

use crate::error::AgentError;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Turn queues of all active sessions.
pub struct SessionQueues {
    max_waiting: usize,
    slots: Mutex<HashMap<Arc<str>, Slot>>,
}

struct Slot {
    turn: Arc<Semaphore>,
    /// Turns that hold or wait on `turn`; the slot is removed when it drops to 0.
    users: usize,
}

impl SessionQueues {
    /// Queues allowing `max_waiting` turns to wait behind the running one.
    pub fn new(max_waiting: usize) -> Arc<Self> {
        Arc::new(SessionQueues { max_waiting, slots: Mutex::new(HashMap::new()) })
    }

    /// Waits for the turn of session `key`. Fails with
    /// [`AgentError::SessionBusy`] when `max_waiting` turns already wait.
    ///
    /// Cancel-safe: dropping the returned future gives up the place in the queue.
    pub async fn acquire(self: &Arc<Self>, key: &str) -> Result<SessionTurn, AgentError> {
        let (turn, user) = {
            let mut slots = self.lock();
            // Reuse the stored key so an existing session costs no allocation.
            let key: Arc<str> = match slots.get_key_value(key) {
                Some((k, _)) => Arc::clone(k),
                None => Arc::from(key),
            };
            let slot = slots
                .entry(Arc::clone(&key))
                .or_insert_with(|| Slot { turn: Arc::new(Semaphore::new(1)), users: 0 });
            // Everyone but the current holder is waiting.
            if slot.users > self.max_waiting {
                return Err(AgentError::SessionBusy(key.to_string()));
            }
            slot.users += 1;
            (Arc::clone(&slot.turn), UserGuard { queues: Arc::clone(self), key })
        };
        // If this future is dropped while waiting, `user` drops with it and
        // releases the place.
        let permit = turn.acquire_owned().await.map_err(|_| internal(&user.key))?;
        Ok(SessionTurn { _permit: permit, _user: user })
    }

    /// Number of sessions with a running or waiting turn.
    pub fn active_keys(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Arc<str>, Slot>> {
        // The critical sections only adjust counters and cannot leave the map
        // half-updated, so a poisoned lock is still consistent.
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn release(&self, key: &str) {
        let mut slots = self.lock();
        if let Some(slot) = slots.get_mut(key) {
            slot.users = slot.users.saturating_sub(1);
            if slot.users == 0 {
                slots.remove(key);
            }
        }
    }
}

fn internal(key: &str) -> AgentError {
    // The semaphores are never closed; this is unreachable in practice.
    AgentError::Store(format!("session queue for '{key}' is closed"))
}

/// Counts one user of a slot until dropped.
struct UserGuard {
    queues: Arc<SessionQueues>,
    key: Arc<str>,
}

impl Drop for UserGuard {
    fn drop(&mut self) {
        self.queues.release(&self.key);
    }
}

/// The running turn of one session; dropping it lets the next one run.
pub struct SessionTurn {
    // Field order matters: the permit is released before the slot's user
    // count, so a slot is never removed while its permit is still held.
    _permit: OwnedSemaphorePermit,
    _user: UserGuard,
}

impl SessionTurn {
    /// The session key this turn belongs to.
    pub fn key(&self) -> &str {
        &self._user.key
    }
}

impl std::fmt::Debug for SessionTurn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionTurn").field("key", &self.key()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex as StdMutex;
    use std::task::Poll;
    use tokio::sync::oneshot;

    /// Polls a future once without waiting.
    async fn poll_once<F: std::future::Future + Unpin>(f: &mut F) -> Poll<F::Output> {
        futures::future::poll_fn(|cx| Poll::Ready(std::pin::Pin::new(&mut *f).poll(cx))).await
    }

    #[tokio::test]
    async fn single_turn_and_cleanup() {
        let q = SessionQueues::new(16);
        let t = q.acquire("a").await.unwrap();
        assert_eq!(t.key(), "a");
        assert_eq!(q.active_keys(), 1);
        drop(t);
        assert_eq!(q.active_keys(), 0);
    }

    #[tokio::test]
    async fn different_keys_do_not_block_each_other() {
        let q = SessionQueues::new(0);
        let _a = q.acquire("a").await.unwrap();
        let _b = q.acquire("b").await.unwrap();
        assert_eq!(q.active_keys(), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn turns_run_in_arrival_order() {
        let q = SessionQueues::new(16);
        let first = q.acquire("s").await.unwrap();
        let order = Arc::new(StdMutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..10 {
            let (queued_tx, queued_rx) = oneshot::channel();
            let q = Arc::clone(&q);
            let order = Arc::clone(&order);
            tasks.push(tokio::spawn(async move {
                let mut fut = Box::pin(q.acquire("s"));
                // Enqueue (first poll registers with the semaphore), then signal.
                assert!(poll_once(&mut fut).await.is_pending());
                let _ = queued_tx.send(());
                let turn = fut.await.unwrap();
                order.lock().unwrap().push(i);
                // Hold the turn across a yield so overlap would be visible.
                tokio::task::yield_now().await;
                drop(turn);
            }));
            // Wait until task i is queued before starting task i+1.
            queued_rx.await.unwrap();
        }
        drop(first);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), (0..10).collect::<Vec<_>>());
        assert_eq!(q.active_keys(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn turns_never_overlap() {
        let q = SessionQueues::new(64);
        let running = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..32 {
            let q = Arc::clone(&q);
            let running = Arc::clone(&running);
            tasks.push(tokio::spawn(async move {
                let _turn = q.acquire("s").await.unwrap();
                let was = running.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                assert_eq!(was, 0, "two turns of one session overlapped");
                tokio::task::yield_now().await;
                running.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(q.active_keys(), 0);
    }

    #[tokio::test]
    async fn seventeenth_waiter_is_refused() {
        let q = SessionQueues::new(16);
        let running = q.acquire("s").await.unwrap();
        let mut waiters = Vec::new();
        for _ in 0..16 {
            let mut fut = Box::pin(q.acquire("s"));
            assert!(poll_once(&mut fut).await.is_pending());
            waiters.push(fut);
        }
        match q.acquire("s").await {
            Err(AgentError::SessionBusy(k)) => assert_eq!(k, "s"),
            other => panic!("expected SessionBusy, got {other:?}"),
        }
        // Another session is unaffected.
        drop(q.acquire("other").await.unwrap());

        // Once the running turn ends, the first waiter runs and a place frees up.
        drop(running);
        let first = waiters.remove(0).await.unwrap();
        let mut again = Box::pin(q.acquire("s"));
        assert!(poll_once(&mut again).await.is_pending());
        drop(first);
        drop(waiters);
        drop(again.await.unwrap());
        assert_eq!(q.active_keys(), 0);
    }

    #[tokio::test]
    async fn dropped_waiter_frees_its_place() {
        let q = SessionQueues::new(1);
        let running = q.acquire("s").await.unwrap();
        let mut waiter = Box::pin(q.acquire("s"));
        assert!(poll_once(&mut waiter).await.is_pending());
        assert!(matches!(q.acquire("s").await, Err(AgentError::SessionBusy(_))));
        // Cancel the waiter: its place is free again.
        drop(waiter);
        let mut next = Box::pin(q.acquire("s"));
        assert!(poll_once(&mut next).await.is_pending());
        drop(running);
        let turn = next.await.unwrap();
        drop(turn);
        assert_eq!(q.active_keys(), 0);
    }

    #[tokio::test]
    async fn dropped_waiters_do_not_leak_entries() {
        let q = SessionQueues::new(16);
        let running = q.acquire("s").await.unwrap();
        for _ in 0..5 {
            let mut fut = Box::pin(q.acquire("s"));
            assert!(poll_once(&mut fut).await.is_pending());
        }
        // A future dropped before it was ever polled holds nothing.
        drop(q.acquire("never-polled"));
        assert_eq!(q.active_keys(), 1);
        drop(running);
        assert_eq!(q.active_keys(), 0);
    }

    #[tokio::test]
    async fn many_distinct_keys_are_cleaned_up() {
        let q = SessionQueues::new(16);
        for i in 0..10_000 {
            let _t = q.acquire(&format!("agent:main:openai:{i}")).await.unwrap();
        }
        assert_eq!(q.active_keys(), 0);
    }

    #[tokio::test]
    async fn zero_waiters_allows_only_the_running_turn() {
        let q = SessionQueues::new(0);
        let t = q.acquire("s").await.unwrap();
        assert!(matches!(q.acquire("s").await, Err(AgentError::SessionBusy(_))));
        drop(t);
        drop(q.acquire("s").await.unwrap());
    }
}
