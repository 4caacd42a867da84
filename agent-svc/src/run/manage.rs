//! Managing a stable session outside its turns: reset, delete, compact now.
//! Each takes the session's turn the way a run does (its place in the
//! in-process line, then the store's cross-replica lock), so it never cuts
//! into a running turn, on this replica or another.

use super::{prepare, Runner};
use crate::error::AgentError;
use services::proto::CompactSessionResponse;
use std::future::Future;
use std::time::Duration;

/// How long a management call waits for the session's running and queued turns.
pub const MANAGE_WAIT: Duration = Duration::from_secs(30);

impl Runner {
    /// Runs `op` while holding `key`'s turn.
    async fn holding_turn<T>(
        &self,
        key: &str,
        op: impl Future<Output = Result<T, AgentError>>,
    ) -> Result<T, AgentError> {
        if key.is_empty() {
            return Err(AgentError::invalid("session_key", "`session_key` is required."));
        }
        let place = self.queues.reserve(key)?;
        let wait = async {
            let queued = place.turn().await?;
            let locked = self.store.lock_turn(key).await?;
            Ok::<_, AgentError>((queued, locked))
        };
        let _turn = tokio::time::timeout(MANAGE_WAIT, wait).await.map_err(|_| {
            AgentError::Timeout(format!("The session's turns did not end within {}s.", MANAGE_WAIT.as_secs()))
        })??;
        op.await
    }

    /// Drops a session's transcript, keeping its key; whether it existed.
    pub async fn reset_session(&self, key: &str) -> Result<bool, AgentError> {
        self.holding_turn(key, self.store.reset(key)).await
    }

    /// Deletes a session; whether it existed.
    pub async fn delete_session(&self, key: &str) -> Result<bool, AgentError> {
        self.holding_turn(key, self.store.delete(key)).await
    }

    /// Compacts a session now (per its agent's `compaction`), as a turn past the
    /// threshold would. An unknown session is `NotFound`.
    pub async fn compact_session(&self, key: &str) -> Result<CompactSessionResponse, AgentError> {
        let p = prepare::for_session(&self.registry, key)?;
        self.holding_turn(key, async {
            if !self.store.exists(key).await? {
                return Err(AgentError::NotFound(format!("Unknown session '{key}'.")));
            }
            let fitted = self.fit_context(&p, p.budget, true).await?;
            Ok(CompactSessionResponse {
                compacted: fitted.compacted,
                summarized: fitted.summarized,
                kept_messages: u32::try_from(fitted.window.len()).unwrap_or(u32::MAX),
                tokens_before: fitted.tokens_before,
                tokens_after: fitted.tokens(),
            })
        })
        .await
    }
}
