//! Runs in flight by run id, for `AbortRun` and shutdown, and why a run was
//! cancelled. The registry is also the in-flight count: a run is registered
//! (or refused, once the registry is closed for shutdown) and unregistered
//! under one lock, so a shutdown that closes it and then waits for it to empty
//! cannot miss a run that was starting at that moment.

use crate::error::AgentError;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Why a run's cancel token fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum Cancel {
    /// The caller dropped the stream (the default: nobody said otherwise).
    ClientGone = 0,
    /// `AbortRun`.
    Aborted = 1,
    /// A forced shutdown.
    Shutdown = 2,
}

/// The cancel token of one run and the reason it fired.
#[derive(Debug, Clone, Default)]
pub(super) struct RunCancel {
    token: CancellationToken,
    reason: Arc<AtomicU8>,
    /// The run has its session's turn (it is no longer queued).
    running: Arc<AtomicBool>,
}

impl RunCancel {
    /// The run got its turn: from now on an abort by session key reaches it.
    pub(super) fn mark_running(&self) {
        self.running.store(true, Ordering::SeqCst);
    }

    fn cancel(&self, why: Cancel) {
        self.reason.store(why as u8, Ordering::SeqCst);
        self.token.cancel();
    }

    /// The token; cancelling it directly means [`Cancel::ClientGone`].
    pub(super) fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// Why the token fired ([`Cancel::ClientGone`] unless set otherwise).
    pub(super) fn reason(&self) -> Cancel {
        match self.reason.load(Ordering::SeqCst) {
            1 => Cancel::Aborted,
            2 => Cancel::Shutdown,
            _ => Cancel::ClientGone,
        }
    }
}

struct RunEntry {
    session_key: String,
    cancel: RunCancel,
}

#[derive(Default)]
struct Runs {
    by_id: HashMap<String, RunEntry>,
    /// Shutting down: new runs are refused.
    closed: bool,
}

/// Runs in flight by run id, for `AbortRun` and shutdown.
pub struct RunRegistry {
    runs: Mutex<Runs>,
    /// Notified when the last run is removed.
    empty: tokio::sync::Notify,
    /// Runs taken at once (`gateway.agentService.maxConcurrentRuns`).
    max: usize,
}

impl Default for RunRegistry {
    fn default() -> Self {
        RunRegistry::new(usize::MAX)
    }
}

impl RunRegistry {
    /// A registry taking at most `max` runs at once.
    pub fn new(max: usize) -> RunRegistry {
        RunRegistry { runs: Mutex::default(), empty: tokio::sync::Notify::new(), max }
    }

    /// Registers a run; a run id already in flight is refused, and so is every
    /// run once the registry is closed.
    pub(super) fn insert(&self, run_id: &str, session_key: &str) -> Result<RunCancel, AgentError> {
        let mut runs = self.runs.lock();
        if runs.closed {
            return Err(AgentError::ShuttingDown);
        }
        if runs.by_id.contains_key(run_id) {
            return Err(AgentError::invalid("run_id", format!("Run '{run_id}' is already running.")));
        }
        if runs.by_id.len() >= self.max {
            metrics::counter!("openclaw_agent_overload_refusals_total", "limit" => "runs").increment(1);
            return Err(AgentError::Overloaded(format!(
                "This agent-svc replica is running its maximum of {} runs; retry shortly.",
                self.max
            )));
        }
        let cancel = RunCancel::default();
        runs.by_id.insert(
            run_id.to_string(),
            RunEntry { session_key: session_key.to_string(), cancel: cancel.clone() },
        );
        Ok(cancel)
    }

    /// Forgets a run that ended.
    pub(super) fn remove(&self, run_id: &str) {
        let mut runs = self.runs.lock();
        runs.by_id.remove(run_id);
        if runs.by_id.is_empty() {
            self.empty.notify_waiters();
        }
    }

    /// Refuses every new run from now on (shutdown).
    pub(super) fn close(&self) {
        self.runs.lock().closed = true;
    }

    /// Waits until no run is in flight.
    pub(super) async fn wait_empty(&self) {
        loop {
            let notified = self.empty.notified();
            if self.is_empty() {
                return;
            }
            notified.await;
        }
    }

    /// Aborts a run by id (queued or running), or the running turn of a
    /// session (turns still queued behind it are left alone); returns the
    /// aborted ids.
    pub fn abort(&self, run_id: &str, session_key: &str) -> Vec<String> {
        let runs = self.runs.lock();
        runs.by_id
            .iter()
            .filter(|(id, e)| {
                if run_id.is_empty() {
                    e.session_key == session_key && e.cancel.running.load(Ordering::SeqCst)
                } else {
                    *id == run_id
                }
            })
            .map(|(id, e)| {
                e.cancel.cancel(Cancel::Aborted);
                id.clone()
            })
            .collect()
    }

    /// Cancels every running turn (forced shutdown).
    pub fn cancel_all(&self) {
        for e in self.runs.lock().by_id.values() {
            e.cancel.cancel(Cancel::Shutdown);
        }
    }

    /// Number of runs in flight (queued or running).
    pub fn len(&self) -> usize {
        self.runs.lock().by_id.len()
    }

    /// Whether no turn is running.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abort_by_id_or_session_and_cancel_all() {
        let runs = RunRegistry::default();
        let a = runs.insert("a", "s1").unwrap();
        let b = runs.insert("b", "s1").unwrap();
        let c = runs.insert("c", "s2").unwrap();
        assert!(runs.insert("a", "s3").is_err());
        assert_eq!(runs.abort("a", ""), vec!["a".to_string()]);
        assert_eq!((a.token().is_cancelled(), a.reason()), (true, Cancel::Aborted));
        assert!(!b.token().is_cancelled());
        // By session key: only the turn that is running, not one queued behind it.
        let queued = runs.insert("q", "s1").unwrap();
        b.mark_running();
        let mut by_session = runs.abort("", "s1");
        by_session.sort();
        assert_eq!(by_session, ["b"]);
        assert!(!queued.token().is_cancelled());
        runs.cancel_all();
        assert_eq!(c.reason(), Cancel::Shutdown);
        runs.remove("a");
        runs.remove("q");
        assert_eq!(runs.len(), 2);
        // A token cancelled directly is a caller gone.
        let d = runs.insert("d", "s4").unwrap();
        d.token().cancel();
        assert_eq!(d.reason(), Cancel::ClientGone);
    }

    #[test]
    fn beyond_the_maximum_a_run_is_refused_at_once() {
        let runs = RunRegistry::new(2);
        runs.insert("a", "s").unwrap();
        runs.insert("b", "s").unwrap();
        assert!(matches!(runs.insert("c", "s"), Err(AgentError::Overloaded(_))));
        runs.remove("a");
        assert!(runs.insert("c", "s").is_ok());
    }

    #[tokio::test]
    async fn closed_refuses_new_runs_and_waits_for_the_last_one() {
        let runs = Arc::new(RunRegistry::default());
        runs.insert("a", "s").unwrap();
        runs.close();
        assert!(matches!(runs.insert("b", "s"), Err(AgentError::ShuttingDown)));
        let waiter = tokio::spawn({
            let runs = runs.clone();
            async move { runs.wait_empty().await }
        });
        runs.remove("a");
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter).await.unwrap().unwrap();
    }
}
