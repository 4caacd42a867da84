//! Running turns by run id, for `AbortRun` and shutdown, and why a run was
//! cancelled.

use crate::error::AgentError;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
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
}

impl RunCancel {
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

/// Running turns by run id, for `AbortRun` and shutdown.
#[derive(Default)]
pub struct RunRegistry {
    runs: Mutex<HashMap<String, RunEntry>>,
}

impl RunRegistry {
    /// Registers a run; a run id already running is refused.
    pub(super) fn insert(&self, run_id: &str, session_key: &str) -> Result<RunCancel, AgentError> {
        let mut runs = self.runs.lock();
        if runs.contains_key(run_id) {
            return Err(AgentError::invalid("run_id", format!("Run '{run_id}' is already running.")));
        }
        let cancel = RunCancel::default();
        runs.insert(
            run_id.to_string(),
            RunEntry { session_key: session_key.to_string(), cancel: cancel.clone() },
        );
        Ok(cancel)
    }

    /// Forgets a run that ended.
    pub(super) fn remove(&self, run_id: &str) {
        self.runs.lock().remove(run_id);
    }

    /// Aborts a run by id, or every run of a session; returns the aborted ids.
    pub fn abort(&self, run_id: &str, session_key: &str) -> Vec<String> {
        let runs = self.runs.lock();
        runs.iter()
            .filter(|(id, e)| {
                (!run_id.is_empty() && *id == run_id) || (run_id.is_empty() && e.session_key == session_key)
            })
            .map(|(id, e)| {
                e.cancel.cancel(Cancel::Aborted);
                id.clone()
            })
            .collect()
    }

    /// Cancels every running turn (forced shutdown).
    pub fn cancel_all(&self) {
        for e in self.runs.lock().values() {
            e.cancel.cancel(Cancel::Shutdown);
        }
    }

    /// Number of running turns.
    pub fn len(&self) -> usize {
        self.runs.lock().len()
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
        let mut by_session = runs.abort("", "s1");
        by_session.sort();
        assert_eq!(by_session, ["a", "b"]);
        runs.cancel_all();
        assert_eq!(c.reason(), Cancel::Shutdown);
        runs.remove("a");
        assert_eq!(runs.len(), 2);
        // A token cancelled directly is a caller gone.
        let d = runs.insert("d", "s4").unwrap();
        d.token().cancel();
        assert_eq!(d.reason(), Cancel::ClientGone);
    }
}
