//! Consuming an `AgentRun` event stream: folding it for a non-streaming answer,
//! and the rules both answer kinds share.

use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::openai::CompletionFold;
use futures::StreamExt;
use services::proto::{agent_run_event::Event, AgentRunEvent};
use std::time::{Duration, Instant};
use tonic::Streaming;

/// How long to wait, after `finished`, for agent-svc to close the stream. The
/// close means the turn is stored, so a client that sends its next turn right
/// after the answer sees it; a stream that does not close is dropped after this.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The error when agent-svc ends a stream without `finished`.
pub fn ended_early() -> ApiError {
    ApiError::upstream("agent-svc ended the run without finishing it")
}

/// Whether an event is the first token for time-to-first-token.
pub fn is_token(event: &AgentRunEvent) -> bool {
    match &event.event {
        Some(Event::Text(t)) => !t.text.is_empty(),
        Some(Event::ToolCall(_)) => true,
        _ => false,
    }
}

/// Reads what is left of a finished run's stream (bounded by [`DRAIN_TIMEOUT`]).
/// An error status after `finished` cannot change the answer any more; it is logged.
pub async fn drain(events: &mut Streaming<AgentRunEvent>) {
    let rest = async {
        while let Some(item) = events.next().await {
            if let Err(status) = item {
                tracing::warn!(code = ?status.code(), message = status.message(), "agent-svc error after finish");
                return;
            }
        }
    };
    if tokio::time::timeout(DRAIN_TIMEOUT, rest).await.is_err() {
        tracing::warn!("agent-svc did not close a finished run's stream; dropping it");
    }
}

/// Folds a whole run for a non-streaming answer. An error status at any point
/// before `finished` becomes the HTTP error.
pub async fn collect(
    mut events: Streaming<AgentRunEvent>,
    metrics: &Metrics,
    started_at: Instant,
) -> Result<CompletionFold, ApiError> {
    let mut fold = CompletionFold::default();
    let mut first_token = true;
    while let Some(item) = events.next().await {
        let event = item?;
        if first_token && is_token(&event) {
            first_token = false;
            metrics.first_token(started_at.elapsed());
        }
        if let Some(Event::Finished(f)) = &event.event {
            metrics.run_finished(started_at, f);
        }
        fold.push(event);
        if fold.is_finished() {
            drain(&mut events).await;
            return Ok(fold);
        }
    }
    Err(ended_early())
}
