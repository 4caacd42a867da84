//! Per-session turn serialization: turns of one session run one at a time, in
//! arrival order, with a bounded number of waiters (SPEC §4: 16 may wait, the
//! 17th is refused).
//!
//! [`SessionQueues::reserve`] takes a place in the session's line at once,
//! without waiting, so turns keep the order in which their calls arrived even
//! when each then waits in its own task; [`QueuePlace::turn`] waits until that
//! place comes up. Each active key has a slot holding its waiting places in
//! order; the slot lives exactly as long as some turn runs or waits on it, so
//! millions of distinct keys over time do not accumulate.

use crate::error::AgentError;
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use tokio::sync::oneshot;

/// Turn queues of all active sessions.
pub struct SessionQueues {
    max_waiting: usize,
    /// A key has a slot exactly while one of its turns runs (or has just been
    /// handed the turn and not yet taken it).
    slots: Mutex<HashMap<Arc<str>, Slot>>,
}

struct Slot {
    /// The map's key, shared by the slot's places and turns.
    key: Arc<str>,
    /// Places waiting for the running turn to end, in reservation order.
    waiting: VecDeque<Waiter>,
    /// Id of the next place, unique within the slot.
    next_id: u64,
}

struct Waiter {
    id: u64,
    /// Fired when the turn is handed to this place.
    wake: oneshot::Sender<()>,
}

impl SessionQueues {
    /// Queues allowing `max_waiting` turns to wait behind the running one.
    pub fn new(max_waiting: usize) -> Arc<Self> {
        Arc::new(SessionQueues { max_waiting, slots: Mutex::new(HashMap::new()) })
    }

    /// Takes the next place in the line of session `key`, at once: the session's
    /// turn when it is free, else a place behind the turns reserved before.
    /// Fails with [`AgentError::SessionBusy`] when `max_waiting` places already
    /// wait. Dropping the place gives it up (or, once its turn has come, passes
    /// the turn on).
    pub fn reserve(self: &Arc<Self>, key: &str) -> Result<QueuePlace, AgentError> {
        let mut slots = self.slots.lock();
        let (key, state) = match slots.get_mut(key) {
            Some(slot) => {
                if slot.waiting.len() >= self.max_waiting {
                    return Err(AgentError::SessionBusy(key.to_string()));
                }
                let id = slot.next_id;
                slot.next_id += 1;
                let (wake, woken) = oneshot::channel();
                slot.waiting.push_back(Waiter { id, wake });
                // The stored key: a busy session costs no allocation.
                (Arc::clone(&slot.key), PlaceState::Waiting { id, woken })
            }
            None => {
                let key: Arc<str> = Arc::from(key);
                let slot = Slot { key: Arc::clone(&key), waiting: VecDeque::new(), next_id: 0 };
                slots.insert(Arc::clone(&key), slot);
                (key, PlaceState::Granted)
            }
        };
        Ok(QueuePlace { queues: Arc::clone(self), key, state })
    }

    /// Reserves a place and waits for its turn: [`SessionQueues::reserve`] then
    /// [`QueuePlace::turn`]. Nothing is reserved until the future is first
    /// polled; dropping it gives the place up.
    pub async fn acquire(self: &Arc<Self>, key: &str) -> Result<SessionTurn, AgentError> {
        self.reserve(key)?.turn().await
    }

    /// Number of sessions with a running or waiting turn.
    pub fn active_keys(&self) -> usize {
        self.slots.lock().len()
    }

    /// Ends the running turn of `key`: hands it to the first waiting place, or
    /// frees the slot when none waits.
    fn release(&self, key: &str) {
        let mut slots = self.slots.lock();
        let Some(slot) = slots.get_mut(key) else { return };
        while let Some(next) = slot.waiting.pop_front() {
            if next.wake.send(()).is_ok() {
                return;
            }
        }
        slots.remove(key);
    }

    /// Removes a waiting place from the line; `false` when it is no longer in
    /// it (the turn was handed to it).
    fn withdraw(&self, key: &str, id: u64) -> bool {
        let mut slots = self.slots.lock();
        let Some(slot) = slots.get_mut(key) else { return false };
        match slot.waiting.iter().position(|w| w.id == id) {
            Some(pos) => {
                slot.waiting.remove(pos);
                true
            }
            None => false,
        }
    }
}

enum PlaceState {
    /// The turn is this place's (nobody ran, or it was handed over).
    Granted,
    /// In the line; `woken` fires when the turn is handed over.
    Waiting { id: u64, woken: oneshot::Receiver<()> },
    /// Turned into a [`SessionTurn`], or never granted: nothing to give back.
    Done,
}

/// A place in a session's line (see [`SessionQueues::reserve`]).
pub struct QueuePlace {
    queues: Arc<SessionQueues>,
    key: Arc<str>,
    state: PlaceState,
}

impl QueuePlace {
    /// Waits until this place's turn comes. Cancel-safe: dropping the future
    /// gives the place up.
    pub async fn turn(mut self) -> Result<SessionTurn, AgentError> {
        if let PlaceState::Waiting { woken, .. } = &mut self.state {
            if woken.await.is_err() {
                // Only a removed slot drops its waiters, and slots with waiters
                // are never removed: unreachable in practice.
                self.state = PlaceState::Done;
                return Err(AgentError::Store(format!("session queue for '{}' is closed", self.key)));
            }
        }
        self.state = PlaceState::Done;
        Ok(SessionTurn { queues: Arc::clone(&self.queues), key: Arc::clone(&self.key) })
    }
}

impl Drop for QueuePlace {
    fn drop(&mut self) {
        match std::mem::replace(&mut self.state, PlaceState::Done) {
            PlaceState::Done => {}
            PlaceState::Granted => self.queues.release(&self.key),
            PlaceState::Waiting { id, mut woken } => {
                // Out of the line already, and woken: the turn was handed over
                // just now, so pass it on.
                if !self.queues.withdraw(&self.key, id) && woken.try_recv().is_ok() {
                    self.queues.release(&self.key);
                }
            }
        }
    }
}

impl std::fmt::Debug for QueuePlace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let granted = matches!(self.state, PlaceState::Granted);
        f.debug_struct("QueuePlace").field("key", &self.key).field("granted", &granted).finish()
    }
}

/// The running turn of one session; dropping it lets the next one run.
pub struct SessionTurn {
    queues: Arc<SessionQueues>,
    key: Arc<str>,
}

impl SessionTurn {
    /// The session key this turn belongs to.
    pub fn key(&self) -> &str {
        &self.key
    }
}

impl Drop for SessionTurn {
    fn drop(&mut self) {
        self.queues.release(&self.key);
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

    #[tokio::test]
    async fn reserved_places_keep_their_order_whatever_order_they_are_awaited_in() {
        let q = SessionQueues::new(16);
        let running = q.reserve("s").unwrap().turn().await.unwrap();
        let first = q.reserve("s").unwrap();
        let second = q.reserve("s").unwrap();
        // The later place is awaited first: it still waits for the earlier one.
        let mut second = Box::pin(second.turn());
        assert!(poll_once(&mut second).await.is_pending());
        drop(running);
        let mut first = Box::pin(first.turn());
        let Poll::Ready(Ok(turn)) = poll_once(&mut first).await else { panic!("first place not served") };
        assert!(poll_once(&mut second).await.is_pending());
        drop(turn);
        drop(second.await.unwrap());
        assert_eq!(q.active_keys(), 0);
    }

    #[tokio::test]
    async fn a_full_line_is_refused_at_reservation() {
        let q = SessionQueues::new(2);
        let running = q.reserve("s").unwrap();
        let places = [q.reserve("s").unwrap(), q.reserve("s").unwrap()];
        assert!(matches!(q.reserve("s"), Err(AgentError::SessionBusy(k)) if k == "s"));
        drop(places);
        drop(running);
        assert_eq!(q.active_keys(), 0);
    }

    #[tokio::test]
    async fn a_place_dropped_after_its_turn_came_passes_it_on() {
        let q = SessionQueues::new(16);
        let running = q.reserve("s").unwrap();
        let skipped = q.reserve("s").unwrap();
        let next = q.reserve("s").unwrap();
        // The turn is handed to `skipped`, which is dropped without taking it.
        drop(running);
        drop(skipped);
        let mut next = Box::pin(next.turn());
        let Poll::Ready(Ok(turn)) = poll_once(&mut next).await else { panic!("turn not passed on") };
        assert_eq!(turn.key(), "s");
        drop(turn);
        assert_eq!(q.active_keys(), 0);
    }
}
