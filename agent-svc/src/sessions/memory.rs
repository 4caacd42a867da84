//! The `memory` session store: transcripts live in the process and are lost
//! on restart. Meant for tests and throwaway setups.

use super::{now_ms, SessionStore, SessionSummary, StoredMessage};
use crate::error::AgentError;
use parking_lot::Mutex;
use std::collections::HashMap;

/// In-process transcript store.
#[derive(Default)]
pub struct MemoryStore {
    sessions: Mutex<HashMap<String, Session>>,
}

struct Session {
    agent_id: String,
    created_at_ms: i64,
    updated_at_ms: i64,
    messages: Vec<StoredMessage>,
}

impl Session {
    fn summary(&self, key: &str) -> SessionSummary {
        SessionSummary {
            key: key.to_string(),
            agent_id: self.agent_id.clone(),
            created_at_ms: self.created_at_ms,
            updated_at_ms: self.updated_at_ms,
            message_count: u32::try_from(self.messages.len()).unwrap_or(u32::MAX),
        }
    }
}

// Every method works under the lock without awaiting, so none holds it across an await.
#[async_trait::async_trait]
impl SessionStore for MemoryStore {
    async fn append(
        &self,
        key: &str,
        agent_id: &str,
        mut messages: Vec<StoredMessage>,
    ) -> Result<(), AgentError> {
        if messages.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        let mut sessions = self.sessions.lock();
        if let Some(s) = sessions.get_mut(key) {
            s.updated_at_ms = s.updated_at_ms.max(now);
            s.messages.append(&mut messages);
        } else {
            sessions.insert(
                key.to_string(),
                Session { agent_id: agent_id.to_string(), created_at_ms: now, updated_at_ms: now, messages },
            );
        }
        Ok(())
    }

    async fn history(&self, key: &str, limit: Option<u32>) -> Result<Vec<StoredMessage>, AgentError> {
        let sessions = self.sessions.lock();
        let Some(s) = sessions.get(key) else { return Ok(Vec::new()) };
        let skip = match limit {
            Some(n) => s.messages.len().saturating_sub(n as usize),
            None => 0,
        };
        Ok(s.messages[skip..].to_vec())
    }

    async fn list(&self, agent_id: Option<&str>, limit: u32) -> Result<Vec<SessionSummary>, AgentError> {
        let limit = limit as usize;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let sessions = self.sessions.lock();
        // Order references first and build summaries only for the ones returned.
        let mut picked: Vec<(&String, &Session)> =
            sessions.iter().filter(|(_, s)| agent_id.is_none_or(|a| s.agent_id == a)).collect();
        let by_recency = |a: &(&String, &Session), b: &(&String, &Session)| {
            b.1.updated_at_ms.cmp(&a.1.updated_at_ms).then_with(|| a.0.cmp(b.0))
        };
        if picked.len() > limit {
            picked.select_nth_unstable_by(limit - 1, by_recency);
            picked.truncate(limit);
        }
        picked.sort_unstable_by(by_recency);
        Ok(picked.into_iter().map(|(k, s)| s.summary(k)).collect())
    }

    async fn exists(&self, key: &str) -> Result<bool, AgentError> {
        Ok(self.sessions.lock().contains_key(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sessions::fixtures::{self, text as msg};

    #[tokio::test]
    async fn append_history_and_limit() {
        let store = MemoryStore::default();
        assert!(!store.exists("agent:main:x").await.unwrap());
        assert!(store.history("agent:main:x", None).await.unwrap().is_empty());
        store.append("agent:main:x", "main", vec![msg("user", "1"), msg("assistant", "2")]).await.unwrap();
        store.append("agent:main:x", "main", vec![msg("user", "3")]).await.unwrap();
        assert!(store.exists("agent:main:x").await.unwrap());
        let all = store.history("agent:main:x", None).await.unwrap();
        assert_eq!(all, vec![msg("user", "1"), msg("assistant", "2"), msg("user", "3")]);
        let last2 = store.history("agent:main:x", Some(2)).await.unwrap();
        assert_eq!(last2, vec![msg("assistant", "2"), msg("user", "3")]);
        assert_eq!(store.history("agent:main:x", Some(10)).await.unwrap().len(), 3);
        assert!(store.history("agent:main:x", Some(0)).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn empty_append_creates_nothing() {
        let store = MemoryStore::default();
        store.append("agent:main:x", "main", Vec::new()).await.unwrap();
        assert!(!store.exists("agent:main:x").await.unwrap());
    }

    #[tokio::test]
    async fn list_orders_filters_and_limits() {
        let store = MemoryStore::default();
        fixtures::append_listed(&store).await;
        // Give each session a distinct, known update time.
        for (key, t) in fixtures::LISTED {
            store.sessions.lock().get_mut(key).unwrap().updated_at_ms = t;
        }
        fixtures::assert_listed(&store).await;
    }
}
