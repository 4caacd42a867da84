//! How the SQL stores (sqlite, postgres) lay a transcript out in rows: a
//! `sessions` row per session (with its context start and latest summary) and
//! a `messages` row per entry, whose `body` is the protobuf-encoded
//! [`Message`] and whose `kind` tells a message from a compaction summary. The SQL itself stays with each store
//! (the dialects differ); the mapping between rows and values lives here once.

use super::{Context, SessionSummary, StoredMessage};
use crate::error::AgentError;
use crate::message::SharedMessage;
use prost::Message as _;
use services::proto::Message;

/// A `messages` row: seq, run_id, interrupted, created_at_ms, body, kind.
pub(super) type HistoryRow = (i64, String, bool, i64, Vec<u8>, i32);

/// A `messages` row with its session's context start and latest summary.
pub(super) type MarkedRow = (i64, String, bool, i64, Vec<u8>, i32, i64, i64);

/// Entries and their session's marks (the same on every row; none without rows).
pub(super) fn unzip(rows: Vec<MarkedRow>) -> (Vec<HistoryRow>, Marks) {
    let mut marks = Marks::NONE;
    let rows = rows
        .into_iter()
        .map(|(seq, run_id, interrupted, created, body, kind, context_seq, summary_seq)| {
            marks = Marks { context_seq, summary_seq };
            (seq, run_id, interrupted, created, body, kind)
        })
        .collect();
    (rows, marks)
}

/// `kind` of a message entry.
pub(super) const KIND_MESSAGE: i32 = 0;
/// `kind` of a compaction summary.
pub(super) const KIND_SUMMARY: i32 = 1;

/// A session's context start and latest summary (`-1`: none), as stored on its row.
#[derive(Debug, Clone, Copy)]
pub(super) struct Marks {
    pub(super) context_seq: i64,
    pub(super) summary_seq: i64,
}

impl Marks {
    /// A session without compaction (or an unknown one).
    pub(super) const NONE: Marks = Marks { context_seq: 0, summary_seq: -1 };
}

/// A `sessions` row: key, agent_id, created_at_ms, updated_at_ms, message_count.
pub(super) type SummaryRow = (String, String, i64, i64, i64);

/// A message about to be inserted (its `seq` is the store's to assign).
pub(super) struct NewRow {
    pub(super) run_id: String,
    pub(super) interrupted: bool,
    pub(super) created_at_ms: i64,
    pub(super) body: Vec<u8>,
    pub(super) kind: i32,
}

/// Encodes messages for insertion (before any lock is taken, so it is held
/// only for the inserts) and counts them.
pub(super) fn encode(messages: &[StoredMessage]) -> Result<(i64, Vec<NewRow>), AgentError> {
    let count = i64::try_from(messages.len()).map_err(|_| AgentError::Store("too many messages".into()))?;
    let rows = messages
        .iter()
        .map(|m| NewRow {
            body: m.message.encode_to_vec(),
            run_id: m.run_id.clone(),
            interrupted: m.interrupted,
            created_at_ms: m.created_at_ms,
            kind: if m.summary { KIND_SUMMARY } else { KIND_MESSAGE },
        })
        .collect();
    Ok((count, rows))
}

/// A session's entries from their rows, read newest first; returned oldest
/// first, flagged against the session's `marks`.
pub(super) fn history(
    key: &str,
    newest_first: Vec<HistoryRow>,
    marks: Marks,
) -> Result<Vec<StoredMessage>, AgentError> {
    newest_first.into_iter().rev().map(|row| entry(key, row, marks)).collect()
}

/// One entry from its row.
pub(super) fn entry(
    key: &str,
    (seq, run_id, interrupted, created_at_ms, body, kind): HistoryRow,
    marks: Marks,
) -> Result<StoredMessage, AgentError> {
    let message = Message::decode(body.as_slice())
        .map_err(|e| AgentError::Store(format!("corrupt message {seq} of session '{key}': {e}")))?;
    let summary = kind == KIND_SUMMARY;
    let compacted = if summary { seq != marks.summary_seq } else { seq < marks.context_seq };
    let message = SharedMessage::shared(message);
    Ok(StoredMessage { message, interrupted, created_at_ms, run_id, seq, summary, compacted })
}

/// A session's context from the rows from its context start on (and its
/// latest summary), in seq order.
pub(super) fn context(key: &str, rows: Vec<HistoryRow>, marks: Marks) -> Result<Context, AgentError> {
    let mut ctx = Context::default();
    for row in rows {
        let e = entry(key, row, marks)?;
        if !e.summary {
            ctx.window.push(e.into());
        } else if e.seq == marks.summary_seq {
            ctx.summary = Some(e.into());
        }
    }
    Ok(ctx)
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
