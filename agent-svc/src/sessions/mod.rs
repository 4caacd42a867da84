//! Sessions: per-session turn serialization ([`queue`]) and the transcript
//! stores, one file per store behind [`SessionStore`]. The key rules are
//! shared with the gateway: [`services::session_key`].

pub mod memory;
pub mod postgres;
pub mod queue;
pub mod sqlite;

use crate::error::AgentError;
use futures::future::BoxFuture;
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
pub trait SessionStore: Send + Sync + 'static {
    /// Appends messages to a session, creating it (owned by `agent_id`) if needed.
    fn append<'a>(
        &'a self,
        key: &'a str,
        agent_id: &'a str,
        messages: Vec<StoredMessage>,
    ) -> BoxFuture<'a, Result<(), AgentError>>;

    /// The last `limit` messages of a session in order (`None`: all). Unknown: empty.
    fn history<'a>(
        &'a self,
        key: &'a str,
        limit: Option<u32>,
    ) -> BoxFuture<'a, Result<Vec<StoredMessage>, AgentError>>;

    /// Sessions, most recently updated first, optionally of one agent.
    fn list<'a>(
        &'a self,
        agent_id: Option<&'a str>,
        limit: u32,
    ) -> BoxFuture<'a, Result<Vec<SessionSummary>, AgentError>>;

    /// Whether a session exists.
    fn exists<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool, AgentError>>;

    /// Serializes turns of one session across replicas that share this store:
    /// take it after [`queue::SessionQueues::acquire`] and hold it for the turn.
    /// Stores private to one process need nothing beyond the in-process queue,
    /// so the default is a no-op lock. Cancel-safe.
    fn lock_turn<'a>(&'a self, _key: &'a str) -> BoxFuture<'a, Result<TurnLock, AgentError>> {
        Box::pin(std::future::ready(Ok(TurnLock::none())))
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
/// `postgres://…` (or `postgresql://…`).
pub async fn open(spec: &str) -> Result<std::sync::Arc<dyn SessionStore>, AgentError> {
    if spec == "memory" {
        return Ok(std::sync::Arc::new(memory::MemoryStore::default()));
    }
    if let Some(path) = spec.strip_prefix("sqlite:") {
        return Ok(std::sync::Arc::new(sqlite::SqliteStore::open(path).await?));
    }
    if spec.starts_with("postgres://") || spec.starts_with("postgresql://") {
        return Ok(std::sync::Arc::new(postgres::PostgresStore::open(spec).await?));
    }
    Err(AgentError::Startup(format!(
        "session.store: unsupported store {:?} (memory, sqlite:PATH, postgres://…)",
        // A mistyped database URL must not put its password into logs.
        services::redact::redact_url(spec)
    )))
}

/// Current Unix time in milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Messages the store tests share.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::StoredMessage;
    use services::proto::{content_part, ContentPart, ImageUrl, Message, ToolCall};

    /// A plain text message.
    pub(crate) fn text(role: &str, text: &str) -> StoredMessage {
        StoredMessage {
            message: Message {
                role: role.into(),
                parts: vec![ContentPart { part: Some(content_part::Part::Text(text.into())) }],
                text_only: true,
                ..Default::default()
            },
            interrupted: false,
            created_at_ms: 1_700_000_000_000,
            run_id: "run-1".into(),
        }
    }

    /// A user turn with text and an image, an assistant with two tool calls, and
    /// an interrupted tool result: every field a store must keep.
    pub(crate) fn rich_turn() -> Vec<StoredMessage> {
        let user = StoredMessage {
            message: Message {
                role: "user".into(),
                parts: vec![
                    ContentPart { part: Some(content_part::Part::Text("what is this?".into())) },
                    ContentPart {
                        part: Some(content_part::Part::ImageUrl(ImageUrl {
                            url: "data:image/png;base64,iVBORw0KGgo=".into(),
                            detail: Some("low".into()),
                        })),
                    },
                ],
                text_only: false,
                name: Some("alice".into()),
                ..Default::default()
            },
            interrupted: false,
            created_at_ms: 10,
            run_id: "run-a".into(),
        };
        let assistant = StoredMessage {
            message: Message {
                role: "assistant".into(),
                parts: Vec::new(),
                tool_calls: vec![
                    ToolCall {
                        id: "call_1".into(),
                        r#type: "function".into(),
                        name: "lookup".into(),
                        arguments: r#"{"q":"png"}"#.into(),
                    },
                    ToolCall {
                        id: "call_2".into(),
                        r#type: "function".into(),
                        name: "weather".into(),
                        arguments: "{}".into(),
                    },
                ],
                ..Default::default()
            },
            interrupted: false,
            created_at_ms: 11,
            run_id: "run-a".into(),
        };
        let tool = StoredMessage {
            message: Message {
                role: "tool".into(),
                parts: vec![ContentPart { part: Some(content_part::Part::Text("a logo".into())) }],
                text_only: true,
                tool_call_id: Some("call_1".into()),
                ..Default::default()
            },
            interrupted: true,
            created_at_ms: 12,
            run_id: "run-b".into(),
        };
        vec![user, assistant, tool]
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
