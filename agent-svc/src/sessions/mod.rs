//! Sessions: per-session turn serialization ([`queue`]) and the transcript
//! stores, one file per store behind [`SessionStore`]; the two SQL stores
//! share their row layout (`rows.rs`). The key rules are shared with the
//! gateway: [`services::session_key`].

pub mod bounded;
pub mod memory;
pub mod postgres;
pub mod queue;
mod rows;
pub mod sqlite;

use crate::error::AgentError;
use services::proto::Message;

/// One stored transcript message.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredMessage {
    /// The message (user, assistant, tool …).
    pub message: Message,
    /// The run stopped before finishing (cancelled, aborted, timed out, failed).
    pub interrupted: bool,
    /// Unix milliseconds.
    pub created_at_ms: i64,
    /// The run that wrote it.
    pub run_id: String,
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

    /// The last `limit` messages of a session in order (`None`: all). Unknown: empty.
    async fn history(&self, key: &str, limit: Option<u32>) -> Result<Vec<StoredMessage>, AgentError>;

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
/// [`bounded::STORE_TIMEOUT`].
pub async fn open(spec: &str) -> Result<std::sync::Arc<dyn SessionStore>, AgentError> {
    let store: std::sync::Arc<dyn SessionStore> = if spec == "memory" {
        std::sync::Arc::new(memory::MemoryStore::default())
    } else if let Some(path) = spec.strip_prefix("sqlite:") {
        std::sync::Arc::new(sqlite::SqliteStore::open(path).await?)
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
    use super::{SessionStore, SessionSummary, StoredMessage};
    use services::proto::{content_part, ContentPart, ImageUrl, Message, ToolCall};

    fn stored(message: Message, interrupted: bool, created_at_ms: i64, run_id: &str) -> StoredMessage {
        StoredMessage { message, interrupted, created_at_ms, run_id: run_id.into() }
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
        let store = open("memory").await.unwrap();
        assert!(!store.exists("agent:main:x").await.unwrap());
        // The default lock of a process-local store holds nothing.
        let lock = store.lock_turn("agent:main:x").await.unwrap();
        assert_eq!(format!("{lock:?}"), "TurnLock { held: false }");
        match open("mysql://user:secret@db/x").await {
            Err(AgentError::Startup(msg)) => {
                assert!(!msg.contains("secret"), "{msg}");
                assert!(msg.contains("mysql://<redacted>@db/x"), "{msg}");
            }
            _ => panic!("expected a startup error"),
        }
    }
}
