//! Sessions: per-session turn serialization ([`queue`]) and the transcript
//! stores, one file per store behind [`SessionStore`]; the two SQL stores
//! share their row layout (`rows.rs`). The key rules are shared with the
//! gateway: [`services::session_key`].

pub mod bounded;
pub mod memory;
pub mod postgres;
pub mod queue;
pub mod retention;
mod rows;
pub mod sqlite;
pub mod window;

use crate::error::AgentError;
use crate::message::SharedMessage;
use std::sync::Arc;

/// One stored transcript entry: a message, or a compaction summary.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StoredMessage {
    /// The message (user, assistant, tool …; a summary is a `system` text);
    /// shared, so a turn sends it upstream without copying it.
    pub message: Arc<SharedMessage>,
    /// The run stopped before finishing (cancelled, aborted, timed out, failed).
    pub interrupted: bool,
    /// Unix milliseconds.
    pub created_at_ms: i64,
    /// The run that wrote it.
    pub run_id: String,
    /// Its place in the session, from 0 (assigned by the store; ignored on append).
    pub seq: i64,
    /// A compaction summary: upstream, it stands for the entries before the context start.
    pub summary: bool,
    /// Before the session's context start (or a summary since replaced): shown in
    /// history, no longer sent upstream. Set on reads.
    pub compacted: bool,
}

/// What a stable session's next turn may send upstream. Entries are shared
/// (with a store's cache), so taking a context copies no message.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Context {
    /// The latest summary, when the session was compacted by summarising.
    pub summary: Option<Arc<StoredMessage>>,
    /// The messages from the context start on, oldest first (no summaries).
    pub window: Vec<Arc<StoredMessage>>,
}

/// How a compaction moves a session's context start.
#[derive(Debug, Clone, PartialEq)]
pub struct Compaction {
    /// The first seq still sent upstream; the entries before it become compacted.
    pub start_seq: i64,
    /// A summary of what it replaces (appended as an entry), or none (truncation).
    pub summary: Option<StoredMessage>,
}

/// One page of a session's history, newest `limit` entries before `before`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Page {
    /// Only entries with a smaller seq (a cursor from the previous page); `None`: from the end.
    pub before: Option<i64>,
    /// At most this many; `None`: all.
    pub limit: Option<u32>,
}

/// What the retention sweep deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sweep {
    /// Sessions last updated before this Unix ms.
    pub updated_before_ms: Option<i64>,
    /// Sessions beyond the most recently updated N of their agent.
    pub keep_per_agent: Option<u32>,
}

/// Summary of one session.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionSummary {
    /// Full key, `agent:<id>:…`.
    pub key: String,
    /// Owning agent.
    pub agent_id: String,
    /// Unix ms.
    pub created_at_ms: i64,
    /// Unix ms of the last append.
    pub updated_at_ms: i64,
    /// Number of stored messages.
    pub message_count: u32,
}

/// A transcript store. Appends are atomic per call; callers serialize turns of
/// one session with [`queue::SessionQueues`].
#[async_trait::async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// Appends messages to a session, creating it (owned by `agent_id`) if needed.
    async fn append(&self, key: &str, agent_id: &str, messages: Vec<StoredMessage>)
        -> Result<(), AgentError>;

    /// A page of a session's entries in order (oldest first), each marked
    /// `compacted` / `summary`. Unknown session: empty.
    async fn history_page(&self, key: &str, page: Page) -> Result<Vec<StoredMessage>, AgentError>;

    /// The last `limit` entries of a session in order (`None`: all). Unknown: empty.
    async fn history(&self, key: &str, limit: Option<u32>) -> Result<Vec<StoredMessage>, AgentError> {
        self.history_page(key, Page { before: None, limit }).await
    }

    /// What the next turn of a session may send: the latest summary and the
    /// messages from the context start on; reads nothing before it. Unknown: empty.
    async fn context(&self, key: &str) -> Result<Context, AgentError>;

    /// Moves a session's context start forward (never back) and stores the
    /// summary, if any, in one transaction. Callers hold the session's turn.
    async fn compact(&self, key: &str, compaction: Compaction) -> Result<(), AgentError>;

    /// Drops a session's transcript and keeps its key; whether it existed.
    async fn reset(&self, key: &str) -> Result<bool, AgentError>;

    /// Deletes a session; whether it existed.
    async fn delete(&self, key: &str) -> Result<bool, AgentError>;

    /// Deletes the sessions `sweep` names (in bounded batches); how many.
    async fn sweep(&self, sweep: Sweep) -> Result<u64, AgentError>;

    /// How many sessions are stored.
    async fn count(&self) -> Result<u64, AgentError>;

    /// Sessions, most recently updated first, optionally of one agent.
    async fn list(&self, agent_id: Option<&str>, limit: u32) -> Result<Vec<SessionSummary>, AgentError>;

    /// Whether a session exists.
    async fn exists(&self, key: &str) -> Result<bool, AgentError>;

    /// Serializes turns of one session across replicas that share this store:
    /// take it once the session's place in [`queue::SessionQueues`] comes up and
    /// hold it for the turn. Stores private to one process need nothing beyond
    /// the in-process queue, so the default is a no-op lock. Cancel-safe.
    async fn lock_turn(&self, _key: &str) -> Result<TurnLock, AgentError> {
        Ok(TurnLock::none())
    }
}

/// A held cross-replica turn lock (see [`SessionStore::lock_turn`]); dropping
/// it releases the lock.
pub struct TurnLock {
    // The Mutex only makes the guard `Sync`; it is never locked.
    _held: Option<std::sync::Mutex<Box<dyn Send>>>,
}

impl TurnLock {
    /// A lock that holds nothing (stores private to one process).
    pub fn none() -> Self {
        TurnLock { _held: None }
    }

    /// Wraps whatever keeps the lock alive until dropped.
    pub fn new(held: impl Send + 'static) -> Self {
        TurnLock { _held: Some(std::sync::Mutex::new(Box::new(held))) }
    }
}

impl std::fmt::Debug for TurnLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnLock").field("held", &self._held.is_some()).finish()
    }
}

/// Opens the store named by `session.store`: `memory`, `sqlite:PATH`,
/// `postgres://…` (or `postgresql://…`), with every operation bounded by
/// [`bounded::STORE_TIMEOUT`]. `cache_bytes` bounds the context cache of the
/// stores that can keep one (`sqlite:`, the only writer of its file).
pub async fn open(spec: &str, cache_bytes: usize) -> Result<std::sync::Arc<dyn SessionStore>, AgentError> {
    let store: std::sync::Arc<dyn SessionStore> = if spec == "memory" {
        std::sync::Arc::new(memory::MemoryStore::default())
    } else if let Some(path) = spec.strip_prefix("sqlite:") {
        std::sync::Arc::new(sqlite::SqliteStore::open(path, cache_bytes).await?)
    } else if spec.starts_with("postgres://") || spec.starts_with("postgresql://") {
        std::sync::Arc::new(postgres::PostgresStore::open(spec).await?)
    } else {
        return Err(unsupported(spec));
    };
    Ok(std::sync::Arc::new(bounded::BoundedStore::new(store, bounded::STORE_TIMEOUT)))
}

fn unsupported(spec: &str) -> AgentError {
    AgentError::Startup(format!(
        "session.store: unsupported store {:?} (memory, sqlite:PATH, postgres://…)",
        // A mistyped database URL must not put its password into logs.
        services::redact::redact_url(spec)
    ))
}

/// Current Unix time in milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Messages and checks the store tests share.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::{Compaction, Context, Page, SessionStore, SessionSummary, StoredMessage, Sweep};
    use services::proto::{content_part, ContentPart, ImageUrl, Message, ToolCall};

    fn stored(message: Message, interrupted: bool, created_at_ms: i64, run_id: &str) -> StoredMessage {
        let message = crate::message::SharedMessage::shared(message);
        StoredMessage { message, interrupted, created_at_ms, run_id: run_id.into(), ..Default::default() }
    }

    fn text_part(text: &str) -> ContentPart {
        ContentPart { part: Some(content_part::Part::Text(text.into())) }
    }

    fn call(id: &str, name: &str, arguments: &str) -> ToolCall {
        ToolCall { id: id.into(), r#type: "function".into(), name: name.into(), arguments: arguments.into() }
    }

    /// A plain text message.
    pub(crate) fn text(role: &str, text: &str) -> StoredMessage {
        let message = Message {
            role: role.into(),
            parts: vec![text_part(text)],
            text_only: true,
            ..Default::default()
        };
        stored(message, false, 1_700_000_000_000, "run-1")
    }

    /// A user turn with text and an image, an assistant with two tool calls, and
    /// an interrupted tool result: every field a store must keep.
    pub(crate) fn rich_turn() -> Vec<StoredMessage> {
        let image = ImageUrl { url: "data:image/png;base64,iVBORw0KGgo=".into(), detail: Some("low".into()) };
        let user = Message {
            role: "user".into(),
            parts: vec![
                text_part("what is this?"),
                ContentPart { part: Some(content_part::Part::ImageUrl(image)) },
            ],
            text_only: false,
            name: Some("alice".into()),
            ..Default::default()
        };
        let assistant = Message {
            role: "assistant".into(),
            parts: Vec::new(),
            tool_calls: vec![call("call_1", "lookup", r#"{"q":"png"}"#), call("call_2", "weather", "{}")],
            ..Default::default()
        };
        let tool = Message {
            role: "tool".into(),
            parts: vec![text_part("a logo")],
            text_only: true,
            tool_call_id: Some("call_1".into()),
            ..Default::default()
        };
        vec![
            stored(user, false, 10, "run-a"),
            stored(assistant, false, 11, "run-a"),
            stored(tool, true, 12, "run-b"),
        ]
    }

    /// `entries` as a store returns them from `first_seq` on.
    pub(crate) fn numbered(entries: Vec<StoredMessage>, first_seq: i64) -> Vec<StoredMessage> {
        entries.into_iter().zip(first_seq..).map(|(m, seq)| StoredMessage { seq, ..m }).collect()
    }

    /// `entries` as a context shares them.
    pub(crate) fn shared(entries: &[StoredMessage]) -> Vec<std::sync::Arc<StoredMessage>> {
        entries.iter().cloned().map(std::sync::Arc::new).collect()
    }

    /// A compaction summary entry.
    pub(crate) fn summary(text_: &str) -> StoredMessage {
        StoredMessage { summary: true, ..text("system", text_) }
    }

    /// What every store must do with context starts, summaries, pages, resets,
    /// deletes and sweeps.
    pub(crate) async fn assert_lifecycle(store: &dyn SessionStore) {
        let key = "agent:main:life";
        let turn = |i: usize| vec![text("user", &format!("u{i}")), text("assistant", &format!("a{i}"))];
        for i in 0..5 {
            store.append(key, "main", turn(i)).await.unwrap();
        }
        let all: Vec<StoredMessage> = numbered((0..5).flat_map(turn).collect(), 0);
        assert_eq!(store.context(key).await.unwrap(), Context { summary: None, window: shared(&all) });
        assert_eq!(store.context("agent:main:none").await.unwrap(), Context::default());

        // Pages, newest first, returned oldest first; the cursor is the first seq of a page.
        let page = |before, limit| Page { before, limit: Some(limit) };
        assert_eq!(store.history_page(key, page(None, 4)).await.unwrap(), all[6..].to_vec());
        assert_eq!(store.history_page(key, page(Some(6), 4)).await.unwrap(), all[2..6].to_vec());
        assert_eq!(store.history_page(key, page(Some(2), 4)).await.unwrap(), all[..2].to_vec());
        assert!(store.history_page(key, page(Some(0), 4)).await.unwrap().is_empty());

        // Truncation: the context starts at seq 4; history flags what came before.
        store.compact(key, Compaction { start_seq: 4, summary: None }).await.unwrap();
        assert_eq!(store.context(key).await.unwrap().window, shared(&all[4..]));
        let h = store.history(key, None).await.unwrap();
        assert!(h[..4].iter().all(|m| m.compacted) && h[4..].iter().all(|m| !m.compacted), "{h:?}");
        // Never backwards.
        store.compact(key, Compaction { start_seq: 2, summary: None }).await.unwrap();
        assert_eq!(store.context(key).await.unwrap().window.len(), 6);

        // A summary: stored as the next entry, sent before the window.
        store.compact(key, Compaction { start_seq: 8, summary: Some(summary("S1")) }).await.unwrap();
        let ctx = store.context(key).await.unwrap();
        assert_eq!(ctx.summary, Some(StoredMessage { seq: 10, ..summary("S1") }.into()));
        assert_eq!(ctx.window, shared(&all[8..]));
        store.append(key, "main", turn(5)).await.unwrap();
        let ctx = store.context(key).await.unwrap();
        assert_eq!(ctx.window.iter().map(|m| m.seq).collect::<Vec<_>>(), [8, 9, 11, 12]);
        // A later summary replaces it; the old one is flagged compacted in history.
        store.compact(key, Compaction { start_seq: 11, summary: Some(summary("S2")) }).await.unwrap();
        let ctx = store.context(key).await.unwrap();
        assert_eq!(ctx.summary.map(|s| (s.seq, s.summary)), Some((13, true)));
        assert_eq!(ctx.window.iter().map(|m| m.seq).collect::<Vec<_>>(), [11, 12]);
        let h = store.history(key, None).await.unwrap();
        assert_eq!(h.len(), 14);
        assert!(h[10].summary && h[10].compacted, "{:?}", h[10]);
        assert!(h[13].summary && !h[13].compacted);
        assert!(!h[11].compacted && h[9].compacted);
        // Truncation after a summary keeps the summary.
        store.compact(key, Compaction { start_seq: 14, summary: None }).await.unwrap();
        let ctx = store.context(key).await.unwrap();
        assert_eq!(ctx.summary.map(|s| s.seq), Some(13));
        assert!(ctx.window.is_empty());

        // Reset keeps the key and drops everything; seqs start again.
        assert!(store.reset(key).await.unwrap());
        assert!(store.exists(key).await.unwrap());
        assert!(store.history(key, None).await.unwrap().is_empty());
        assert_eq!(store.context(key).await.unwrap(), Context::default());
        store.append(key, "main", turn(9)).await.unwrap();
        assert_eq!(store.context(key).await.unwrap().window, shared(&numbered(turn(9), 0)));
        assert!(!store.reset("agent:main:none").await.unwrap());

        // Delete removes it.
        assert!(store.delete(key).await.unwrap());
        assert!(!store.exists(key).await.unwrap());
        assert!(!store.delete(key).await.unwrap());
    }

    /// The retention sweep: by age and by count per agent.
    pub(crate) async fn assert_sweep(store: &dyn SessionStore) {
        for key in ["agent:main:s1", "agent:main:s2", "agent:main:s3", "agent:beta:s4"] {
            let agent = services::session_key::split_agent_key(key).unwrap().0;
            store.append(key, agent, vec![text("user", key)]).await.unwrap();
        }
        assert_eq!(store.count().await.unwrap(), 4);
        assert_eq!(store.sweep(Sweep::default()).await.unwrap(), 0);
        let n = store.sweep(Sweep { keep_per_agent: Some(1), ..Sweep::default() }).await.unwrap();
        assert_eq!(n, 2, "main keeps one of three, beta its one");
        assert_eq!(store.count().await.unwrap(), 2);
        assert!(store.exists("agent:beta:s4").await.unwrap());
        let n = store.sweep(Sweep { updated_before_ms: Some(0), ..Sweep::default() }).await.unwrap();
        assert_eq!(n, 0, "nothing is that old");
        let later = super::now_ms() + 1000;
        let n = store.sweep(Sweep { updated_before_ms: Some(later), ..Sweep::default() }).await.unwrap();
        assert_eq!(n, 2);
        assert_eq!(store.count().await.unwrap(), 0);
    }

    /// Sessions of [`append_listed`] and the update time each test pins on them.
    pub(crate) const LISTED: [(&str, i64); 3] =
        [("agent:main:a", 30), ("agent:beta:b", 20), ("agent:main:c", 10)];

    /// Appends one message to each session of [`LISTED`].
    pub(crate) async fn append_listed(store: &dyn SessionStore) {
        for (key, _) in LISTED {
            let agent = services::session_key::split_agent_key(key).unwrap().0;
            store.append(key, agent, vec![text("user", key)]).await.unwrap();
        }
    }

    /// With [`LISTED`]'s update times pinned: order, agent filter and limit of
    /// `list`, then an append moves a session to the top (created_at stays).
    pub(crate) async fn assert_listed(store: &dyn SessionStore) {
        let keys = |v: Vec<SessionSummary>| v.into_iter().map(|s| s.key).collect::<Vec<_>>();
        assert_eq!(
            keys(store.list(None, 10).await.unwrap()),
            ["agent:main:a", "agent:beta:b", "agent:main:c"]
        );
        assert_eq!(keys(store.list(None, 2).await.unwrap()), ["agent:main:a", "agent:beta:b"]);
        assert_eq!(keys(store.list(Some("main"), 10).await.unwrap()), ["agent:main:a", "agent:main:c"]);
        assert_eq!(keys(store.list(Some("main"), 1).await.unwrap()), ["agent:main:a"]);
        assert!(store.list(Some("nobody"), 10).await.unwrap().is_empty());
        assert!(store.list(None, 0).await.unwrap().is_empty());

        store.append("agent:main:c", "main", vec![text("assistant", "x")]).await.unwrap();
        let top = store.list(None, 1).await.unwrap().remove(0);
        assert_eq!(top.key, "agent:main:c");
        assert_eq!(top.agent_id, "main");
        assert_eq!(top.message_count, 2);
        assert!(top.updated_at_ms > 30 && top.created_at_ms <= top.updated_at_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn open_memory_and_unsupported() {
        let store = open("memory", 0).await.unwrap();
        assert!(!store.exists("agent:main:x").await.unwrap());
        // The default lock of a process-local store holds nothing.
        let lock = store.lock_turn("agent:main:x").await.unwrap();
        assert_eq!(format!("{lock:?}"), "TurnLock { held: false }");
        match open("mysql://user:secret@db/x", 0).await {
            Err(AgentError::Startup(msg)) => {
                assert!(!msg.contains("secret"), "{msg}");
                assert!(msg.contains("mysql://<redacted>@db/x"), "{msg}");
            }
            _ => panic!("expected a startup error"),
        }
    }
}
