//! Consuming an `AgentRun` event stream: folding it for a non-streaming answer,
//! and the rules both answer kinds share.

use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::openai::CompletionFold;
use futures::StreamExt;
use services::proto::{agent_run_event::Event, AgentRunEvent};
use std::time::Instant;
use tonic::Streaming;

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
        // The turn is stored before `finished` is sent: no need to wait for the close.
        if fold.is_finished() {
            return Ok(fold);
        }
    }
    Err(ended_early())
}
