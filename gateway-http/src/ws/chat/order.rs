//! One connection's `chat.send` turns of a session, kept in frame order, and
//! its count of active runs.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::oneshot;

/// Decrements the connection's active-run count when the run task ends.
pub(crate) struct ActiveRun(pub Arc<AtomicUsize>);

impl Drop for ActiveRun {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A connection's order of `chat.send` runs per session (SPEC §4: turns of one
/// session run in arrival order). Each run calls agent-svc only once the
/// previous run of its session has been started there (agent-svc then holds
/// its place in the session queue) or has failed to start. Runs of different
/// sessions do not wait on each other. A run aborted while it waits ends at
/// once but lets the next run go only once its own predecessor has started, so
/// the next run cannot overtake that one.
#[derive(Debug, Default)]
pub(crate) struct TurnOrder {
    /// Per session key: the generation of its latest run and the signal that
    /// run gives once started. Removed by that run when it starts, unless a
    /// later run has replaced it.
    last: Mutex<HashMap<String, (u64, oneshot::Receiver<()>)>>,
    next_gen: AtomicU64,
}

impl TurnOrder {
    /// Queues a new run of session `key` behind the previous one (if any).
    pub(crate) fn enqueue(self: &Arc<Self>, key: String) -> Turn {
        let (tx, rx) = oneshot::channel();
        let generation = self.next_gen.fetch_add(1, Ordering::Relaxed);
        let after = self.last.lock().insert(key.clone(), (generation, rx)).map(|(_, rx)| rx);
        Turn { after, started: Some(tx), order: self.clone(), key, generation }
    }
}

/// One run's place in its connection's [`TurnOrder`].
#[derive(Debug)]
pub(crate) struct Turn {
    after: Option<oneshot::Receiver<()>>,
    started: Option<oneshot::Sender<()>>,
    order: Arc<TurnOrder>,
    key: String,
    generation: u64,
}

impl Turn {
    /// Waits until the previous run of the session has started (or ended).
    /// Cancel-safe: waiting again after a cancelled wait goes on waiting.
    pub(super) async fn wait(&mut self) {
        if let Some(rx) = self.after.as_mut() {
            // A dropped sender means the previous run is over: go on.
            let _ = rx.await;
            self.after = None;
        }
    }

    /// This run has started (or ended): the next run of the session may go.
    /// Before the previous run has started (this run was aborted while it
    /// waited) this does nothing: the drop after a completed [`Turn::wait`]
    /// lets the next run go instead.
    pub(super) fn started(&mut self) {
        if self.after.is_some() {
            return;
        }
        let Some(tx) = self.started.take() else { return };
        let mut last = self.order.last.lock();
        if last.get(&self.key).is_some_and(|(g, _)| *g == self.generation) {
            last.remove(&self.key);
        }
        drop(last);
        let _ = tx.send(());
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        self.started();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    #[tokio::test]
    async fn a_run_ended_early_lets_the_next_go_only_after_its_predecessor_started() {
        let order = Arc::new(TurnOrder::default());
        let mut first = order.enqueue("s".into());
        let mut second = order.enqueue("s".into());
        let mut third = order.enqueue("s".into());
        first.wait().await;
        // `second` gives up waiting (aborted) and ends before `first` started.
        assert!(second.wait().now_or_never().is_none());
        second.started();
        assert!(third.wait().now_or_never().is_none(), "`third` must not overtake `first`");
        first.started();
        // A cancelled wait resumes where it was: `first` has started now.
        assert!(second.wait().now_or_never().is_some());
        assert!(third.wait().now_or_never().is_none(), "`second` still holds its place");
        drop(second);
        assert!(third.wait().now_or_never().is_some());
        third.started();
        assert!(order.last.lock().is_empty());
    }
}
