//! Sessions: key rules ([`keys`]), per-session turn serialization ([`queue`]) and
//! the transcript stores, one file per store behind [`SessionStore`].

pub mod keys;
pub mod memory;
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
    fn history<'a>(&'a self, key: &'a str, limit: Option<u32>) -> BoxFuture<'a, Result<Vec<StoredMessage>, AgentError>>;

    /// Sessions, most recently updated first, optionally of one agent.
    fn list<'a>(&'a self, agent_id: Option<&'a str>, limit: u32) -> BoxFuture<'a, Result<Vec<SessionSummary>, AgentError>>;

    /// Whether a session exists.
    fn exists<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool, AgentError>>;
}

/// Opens the store named by `session.store`: `memory`, `sqlite:PATH`.
pub async fn open(spec: &str) -> Result<std::sync::Arc<dyn SessionStore>, AgentError> {
    if spec == "memory" {
        return Ok(std::sync::Arc::new(memory::MemoryStore::default()));
    }
    if let Some(path) = spec.strip_prefix("sqlite:") {
        return Ok(std::sync::Arc::new(sqlite::SqliteStore::open(path).await?));
    }
    Err(AgentError::Startup(format!(
        "session.store: unsupported store {spec:?} (memory, sqlite:PATH)"
    )))
}

/// Current Unix time in milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
