//! How the SQL stores (sqlite, postgres) lay a transcript out in rows: a
//! `sessions` row per session and a `messages` row per message, whose `body`
//! is the protobuf-encoded [`Message`]. The SQL itself stays with each store
//! (the dialects differ); the mapping between rows and values lives here once.

use super::{SessionSummary, StoredMessage};
use crate::error::AgentError;
use prost::Message as _;
use services::proto::Message;

/// A `messages` row: seq, run_id, interrupted, created_at_ms, body.
pub(super) type HistoryRow = (i64, String, bool, i64, Vec<u8>);

/// A `sessions` row: key, agent_id, created_at_ms, updated_at_ms, message_count.
pub(super) type SummaryRow = (String, String, i64, i64, i64);

/// A message about to be inserted (its `seq` is the store's to assign).
pub(super) struct NewRow {
    pub(super) run_id: String,
    pub(super) interrupted: bool,
    pub(super) created_at_ms: i64,
    pub(super) body: Vec<u8>,
}

/// Encodes messages for insertion (before any lock is taken, so it is held
/// only for the inserts) and counts them.
pub(super) fn encode(messages: Vec<StoredMessage>) -> Result<(i64, Vec<NewRow>), AgentError> {
    let count = i64::try_from(messages.len()).map_err(|_| AgentError::Store("too many messages".into()))?;
    let rows = messages
        .into_iter()
        .map(|m| NewRow {
            body: m.message.encode_to_vec(),
            run_id: m.run_id,
            interrupted: m.interrupted,
            created_at_ms: m.created_at_ms,
        })
        .collect();
    Ok((count, rows))
}

/// A session's messages from its rows, read newest first; returned oldest first.
pub(super) fn history(key: &str, newest_first: Vec<HistoryRow>) -> Result<Vec<StoredMessage>, AgentError> {
    newest_first
        .into_iter()
        .rev()
        .map(|(seq, run_id, interrupted, created_at_ms, body)| {
            let message = Message::decode(body.as_slice())
                .map_err(|e| AgentError::Store(format!("corrupt message {seq} of session '{key}': {e}")))?;
            Ok(StoredMessage { message, interrupted, created_at_ms, run_id })
        })
        .collect()
}

/// A session's summary from its row.
pub(super) fn summary((key, agent_id, created_at_ms, updated_at_ms, count): SummaryRow) -> SessionSummary {
    SessionSummary {
        key,
        agent_id,
        created_at_ms,
        updated_at_ms,
        message_count: u32::try_from(count.max(0)).unwrap_or(u32::MAX),
    }
}
