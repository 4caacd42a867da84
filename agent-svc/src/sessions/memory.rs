//! The `memory` session store: transcripts live in the process and are lost
//! on restart. Meant for tests and throwaway setups.

use super::{now_ms, Compaction, Context, Page, SessionStore, SessionSummary, StoredMessage, Sweep};
use crate::error::AgentError;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

/// In-process transcript store.
#[derive(Default)]
pub struct MemoryStore {
    sessions: Mutex<HashMap<String, Session>>,
}

struct Session {
    agent_id: String,
    created_at_ms: i64,
    updated_at_ms: i64,
    /// Entries by seq: `messages[i].seq == i`, stored unflagged (never
    /// `compacted`), shared with the contexts handed out.
    messages: Vec<Arc<StoredMessage>>,
    /// The first seq sent upstream.
    context_seq: i64,
    /// The latest summary's seq, if any.
    summary_seq: Option<i64>,
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

    fn push(&mut self, mut m: StoredMessage) -> i64 {
        let seq = self.messages.len() as i64;
        m.seq = seq;
        m.compacted = false;
        self.messages.push(Arc::new(m));
        seq
    }

    /// An entry as reads return it: flagged when no longer sent upstream.
    fn read(&self, m: &StoredMessage) -> StoredMessage {
        let compacted = if m.summary { Some(m.seq) != self.summary_seq } else { m.seq < self.context_seq };
        StoredMessage { compacted, ..StoredMessage::clone(m) }
    }
}

fn index(seq: i64) -> usize {
    usize::try_from(seq.max(0)).unwrap_or(usize::MAX)
}

// Every method works under the lock without awaiting, so none holds it across an await.
#[async_trait::async_trait]
impl SessionStore for MemoryStore {
    async fn append(
        &self,
        key: &str,
        agent_id: &str,
        messages: Vec<StoredMessage>,
    ) -> Result<(), AgentError> {
        if messages.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        let mut sessions = self.sessions.lock();
        let s = sessions.entry(key.to_string()).or_insert_with(|| Session {
            agent_id: agent_id.to_string(),
            created_at_ms: now,
            updated_at_ms: now,
            messages: Vec::new(),
            context_seq: 0,
            summary_seq: None,
        });
        s.updated_at_ms = s.updated_at_ms.max(now);
        for m in messages {
            s.push(m);
        }
        Ok(())
    }

    async fn history_page(&self, key: &str, page: Page) -> Result<Vec<StoredMessage>, AgentError> {
        let sessions = self.sessions.lock();
        let Some(s) = sessions.get(key) else { return Ok(Vec::new()) };
        let end = page.before.map_or(s.messages.len(), |b| index(b).min(s.messages.len()));
        let start = page.limit.map_or(0, |n| end.saturating_sub(n as usize));
        Ok(s.messages[start..end].iter().map(|m| s.read(m)).collect())
    }

    async fn context(&self, key: &str) -> Result<Context, AgentError> {
        let sessions = self.sessions.lock();
        let Some(s) = sessions.get(key) else { return Ok(Context::default()) };
        let start = index(s.context_seq).min(s.messages.len());
        // Neither the latest summary nor an entry from the context start on is
        // compacted: the stored (unflagged) entries are what a read returns.
        Ok(Context {
            summary: s.summary_seq.and_then(|seq| s.messages.get(index(seq))).cloned(),
            window: s.messages[start..].iter().filter(|m| !m.summary).cloned().collect(),
        })
    }

    async fn compact(&self, key: &str, c: Compaction) -> Result<(), AgentError> {
        let mut sessions = self.sessions.lock();
        let Some(s) = sessions.get_mut(key) else { return Ok(()) };
        s.context_seq = s.context_seq.max(c.start_seq);
        if let Some(summary) = c.summary {
            let seq = s.push(StoredMessage { summary: true, ..summary });
            s.summary_seq = Some(seq);
        }
        Ok(())
    }

    async fn reset(&self, key: &str) -> Result<bool, AgentError> {
        let mut sessions = self.sessions.lock();
        let Some(s) = sessions.get_mut(key) else { return Ok(false) };
        s.messages.clear();
        s.context_seq = 0;
        s.summary_seq = None;
        s.updated_at_ms = s.updated_at_ms.max(now_ms());
        Ok(true)
    }

    async fn delete(&self, key: &str) -> Result<bool, AgentError> {
        Ok(self.sessions.lock().remove(key).is_some())
    }

    async fn sweep(&self, sweep: Sweep) -> Result<u64, AgentError> {
        let mut sessions = self.sessions.lock();
        let before = sessions.len();
        if let Some(cutoff) = sweep.updated_before_ms {
            sessions.retain(|_, s| s.updated_at_ms >= cutoff);
        }
        if let Some(keep) = sweep.keep_per_agent {
            let mut by_agent: HashMap<&str, Vec<(i64, &str)>> = HashMap::new();
            for (k, s) in sessions.iter() {
                by_agent.entry(&s.agent_id).or_default().push((s.updated_at_ms, k));
            }
            let mut doomed = Vec::new();
            for list in by_agent.values_mut() {
                list.sort_unstable_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
                doomed.extend(list.iter().skip(keep as usize).map(|(_, k)| k.to_string()));
            }
            for k in doomed {
                sessions.remove(&k);
            }
        }
        Ok((before - sessions.len()) as u64)
    }

    async fn count(&self) -> Result<u64, AgentError> {
        Ok(self.sessions.lock().len() as u64)
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
        assert_eq!(
            all,
            fixtures::numbered(vec![msg("user", "1"), msg("assistant", "2"), msg("user", "3")], 0)
        );
        let last2 = store.history("agent:main:x", Some(2)).await.unwrap();
        assert_eq!(last2, fixtures::numbered(vec![msg("assistant", "2"), msg("user", "3")], 1));
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

    #[tokio::test]
    async fn lifecycle_and_sweep() {
        fixtures::assert_lifecycle(&MemoryStore::default()).await;
        fixtures::assert_sweep(&MemoryStore::default()).await;
    }
}
