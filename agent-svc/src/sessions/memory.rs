//! The `memory` session store: transcripts live in the process and are lost
//! on restart. Meant for tests and throwaway setups.

use super::{now_ms, SessionStore, SessionSummary, StoredMessage};
use crate::error::AgentError;
use futures::future::BoxFuture;
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

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

impl MemoryStore {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Session>> {
        // Every critical section leaves the map consistent, so poisoning
        // (a panic elsewhere while holding it) does not invalidate the data.
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn append_now(&self, key: &str, agent_id: &str, mut messages: Vec<StoredMessage>) {
        if messages.is_empty() {
            return;
        }
        let now = now_ms();
        let mut sessions = self.lock();
        if let Some(s) = sessions.get_mut(key) {
            s.updated_at_ms = s.updated_at_ms.max(now);
            s.messages.append(&mut messages);
        } else {
            sessions.insert(
                key.to_string(),
                Session { agent_id: agent_id.to_string(), created_at_ms: now, updated_at_ms: now, messages },
            );
        }
    }

    fn history_now(&self, key: &str, limit: Option<u32>) -> Vec<StoredMessage> {
        let sessions = self.lock();
        let Some(s) = sessions.get(key) else { return Vec::new() };
        let skip = match limit {
            Some(n) => s.messages.len().saturating_sub(n as usize),
            None => 0,
        };
        s.messages[skip..].to_vec()
    }

    fn list_now(&self, agent_id: Option<&str>, limit: u32) -> Vec<SessionSummary> {
        let limit = limit as usize;
        if limit == 0 {
            return Vec::new();
        }
        let sessions = self.lock();
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
        picked.into_iter().map(|(k, s)| s.summary(k)).collect()
    }
}

impl SessionStore for MemoryStore {
    fn append<'a>(
        &'a self,
        key: &'a str,
        agent_id: &'a str,
        messages: Vec<StoredMessage>,
    ) -> BoxFuture<'a, Result<(), AgentError>> {
        Box::pin(async move {
            self.append_now(key, agent_id, messages);
            Ok(())
        })
    }

    fn history<'a>(
        &'a self,
        key: &'a str,
        limit: Option<u32>,
    ) -> BoxFuture<'a, Result<Vec<StoredMessage>, AgentError>> {
        Box::pin(async move { Ok(self.history_now(key, limit)) })
    }

    fn list<'a>(
        &'a self,
        agent_id: Option<&'a str>,
        limit: u32,
    ) -> BoxFuture<'a, Result<Vec<SessionSummary>, AgentError>> {
        Box::pin(async move { Ok(self.list_now(agent_id, limit)) })
    }

    fn exists<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool, AgentError>> {
        Box::pin(async move { Ok(self.lock().contains_key(key)) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sessions::fixtures::text as msg;

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
        for key in ["agent:main:a", "agent:beta:b", "agent:main:c"] {
            let agent = services::session_key::split_agent_key(key).unwrap().0;
            store.append(key, agent, vec![msg("user", key)]).await.unwrap();
        }
        // Give each session a distinct, known update time.
        {
            let mut s = store.lock();
            for (key, t) in [("agent:main:a", 30), ("agent:beta:b", 20), ("agent:main:c", 10)] {
                s.get_mut(key).unwrap().updated_at_ms = t;
            }
        }
        let keys = |v: Vec<SessionSummary>| v.into_iter().map(|s| s.key).collect::<Vec<_>>();
        assert_eq!(
            keys(store.list(None, 10).await.unwrap()),
            ["agent:main:a", "agent:beta:b", "agent:main:c"]
        );
        assert_eq!(keys(store.list(None, 2).await.unwrap()), ["agent:main:a", "agent:beta:b"]);
        assert_eq!(keys(store.list(Some("main"), 10).await.unwrap()), ["agent:main:a", "agent:main:c"]);
        assert_eq!(keys(store.list(Some("nobody"), 10).await.unwrap()), Vec::<String>::new());
        assert!(store.list(None, 0).await.unwrap().is_empty());

        // Appending bumps a session to the top.
        store.append("agent:main:c", "main", vec![msg("user", "again")]).await.unwrap();
        let top = store.list(None, 1).await.unwrap();
        assert_eq!(top[0].key, "agent:main:c");
        assert_eq!(top[0].message_count, 2);
        assert_eq!(top[0].agent_id, "main");
        assert!(top[0].updated_at_ms >= top[0].created_at_ms);
    }
}
