//! Every store operation within a time bound: a store that stalls (a
//! PostgreSQL that stopped answering, a locked SQLite file) fails the call
//! with a retryable `503` instead of holding the session's turn until shutdown.
//!
//! The wait for another replica's turn ([`SessionStore::lock_turn`]) is not
//! bounded here: it is a wait for a turn, bounded by the run's deadline.

use super::{Compaction, Context, Page, SessionStore, SessionSummary, StoredMessage, Sweep, TurnLock};
use crate::error::AgentError;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// How long one store operation may take by default.
pub const STORE_TIMEOUT: Duration = Duration::from_secs(5);

/// A store whose operations fail after `timeout`.
pub struct BoundedStore {
    inner: Arc<dyn SessionStore>,
    timeout: Duration,
}

impl BoundedStore {
    /// Bounds `inner`'s operations by `timeout`.
    pub fn new(inner: Arc<dyn SessionStore>, timeout: Duration) -> BoundedStore {
        BoundedStore { inner, timeout }
    }

    async fn bounded<T>(
        &self,
        what: &str,
        op: impl Future<Output = Result<T, AgentError>>,
    ) -> Result<T, AgentError> {
        match tokio::time::timeout(self.timeout, op).await {
            Ok(r) => r,
            Err(_) => {
                metrics::counter!("openclaw_agent_store_timeouts_total").increment(1);
                Err(AgentError::Store(format!(
                    "the session store did not {what} within {}s",
                    self.timeout.as_secs_f64()
                )))
            }
        }
    }
}

#[async_trait::async_trait]
impl SessionStore for BoundedStore {
    async fn append(
        &self,
        key: &str,
        agent_id: &str,
        messages: Vec<StoredMessage>,
    ) -> Result<(), AgentError> {
        self.bounded("store the turn", self.inner.append(key, agent_id, messages)).await
    }

    async fn history_page(&self, key: &str, page: Page) -> Result<Vec<StoredMessage>, AgentError> {
        self.bounded("read the history", self.inner.history_page(key, page)).await
    }

    async fn context(&self, key: &str) -> Result<Context, AgentError> {
        self.bounded("read the session", self.inner.context(key)).await
    }

    async fn compact(&self, key: &str, compaction: Compaction) -> Result<(), AgentError> {
        self.bounded("compact the session", self.inner.compact(key, compaction)).await
    }

    async fn reset(&self, key: &str) -> Result<bool, AgentError> {
        self.bounded("reset the session", self.inner.reset(key)).await
    }

    async fn delete(&self, key: &str) -> Result<bool, AgentError> {
        self.bounded("delete the session", self.inner.delete(key)).await
    }

    // A sweep works in batches and may take longer than one operation: it is
    // not bounded here, and holds no session's turn.
    async fn sweep(&self, sweep: Sweep) -> Result<u64, AgentError> {
        self.inner.sweep(sweep).await
    }

    async fn count(&self) -> Result<u64, AgentError> {
        self.bounded("count sessions", self.inner.count()).await
    }

    async fn list(&self, agent_id: Option<&str>, limit: u32) -> Result<Vec<SessionSummary>, AgentError> {
        self.bounded("list sessions", self.inner.list(agent_id, limit)).await
    }

    async fn exists(&self, key: &str) -> Result<bool, AgentError> {
        self.bounded("look the session up", self.inner.exists(key)).await
    }

    async fn lock_turn(&self, key: &str) -> Result<TurnLock, AgentError> {
        self.inner.lock_turn(key).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store that never answers.
    struct Stalled;

    #[async_trait::async_trait]
    impl SessionStore for Stalled {
        async fn append(&self, _: &str, _: &str, _: Vec<StoredMessage>) -> Result<(), AgentError> {
            std::future::pending().await
        }
        async fn history_page(&self, _: &str, _: Page) -> Result<Vec<StoredMessage>, AgentError> {
            std::future::pending().await
        }
        async fn context(&self, _: &str) -> Result<Context, AgentError> {
            std::future::pending().await
        }
        async fn compact(&self, _: &str, _: Compaction) -> Result<(), AgentError> {
            std::future::pending().await
        }
        async fn reset(&self, _: &str) -> Result<bool, AgentError> {
            std::future::pending().await
        }
        async fn delete(&self, _: &str) -> Result<bool, AgentError> {
            std::future::pending().await
        }
        async fn sweep(&self, _: Sweep) -> Result<u64, AgentError> {
            std::future::pending().await
        }
        async fn count(&self) -> Result<u64, AgentError> {
            std::future::pending().await
        }
        async fn list(&self, _: Option<&str>, _: u32) -> Result<Vec<SessionSummary>, AgentError> {
            std::future::pending().await
        }
        async fn exists(&self, _: &str) -> Result<bool, AgentError> {
            std::future::pending().await
        }
    }

    #[tokio::test]
    async fn a_stalled_store_fails_each_call_in_bounded_time() {
        let s = BoundedStore::new(Arc::new(Stalled), Duration::from_millis(20));
        assert!(
            matches!(s.append("k", "main", vec![]).await, Err(AgentError::Store(m)) if m.contains("0.02s"))
        );
        assert!(matches!(s.history("k", None).await, Err(AgentError::Store(_))));
        assert!(matches!(s.list(None, 10).await, Err(AgentError::Store(_))));
        assert!(matches!(s.exists("k").await, Err(AgentError::Store(_))));
        assert!(matches!(s.context("k").await, Err(AgentError::Store(_))));
        let c = Compaction { start_seq: 1, summary: None };
        assert!(matches!(s.compact("k", c).await, Err(AgentError::Store(_))));
        assert!(matches!(s.reset("k").await, Err(AgentError::Store(_))));
        assert!(matches!(s.delete("k").await, Err(AgentError::Store(_))));
    }
}
