//! A run's events as the rest of the gateway sees them: typed, with agent-svc's
//! statuses already mapped to [`ApiError`], so nothing outside [`crate::client`]
//! handles gRPC types.

use crate::error::ApiError;
use futures::Stream;
use services::proto::AgentRunEvent;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tonic::Streaming;

/// One event of a run (`started`, a text or tool-call delta, `finished`).
pub use services::proto::agent_run_event::Event as RunEvent;

/// The error when agent-svc ends a stream without `finished`.
pub fn ended_early() -> ApiError {
    ApiError::upstream("agent-svc ended the run without finishing it")
}

/// Whether an event is the first token for time-to-first-token.
pub fn is_token(event: &RunEvent) -> bool {
    match event {
        RunEvent::Text(t) => !t.text.is_empty(),
        RunEvent::ToolCall(_) => true,
        RunEvent::Started(_) | RunEvent::Finished(_) => false,
    }
}

/// The event stream of one run.
///
/// Yields events until `finished` (then ends), or one `Err` (an error status
/// from agent-svc, a transport failure, or the stream closing before
/// `finished`, which is [`ended_early`]) and then ends. Dropping it cancels the
/// run in agent-svc.
pub struct RunEvents {
    inner: Streaming<AgentRunEvent>,
    done: bool,
}

impl std::fmt::Debug for RunEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunEvents").field("done", &self.done).finish_non_exhaustive()
    }
}

impl RunEvents {
    pub(super) fn new(inner: Streaming<AgentRunEvent>) -> RunEvents {
        RunEvents { inner, done: false }
    }
}

impl Stream for RunEvents {
    type Item = Result<RunEvent, ApiError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if self.done {
                return Poll::Ready(None);
            }
            let item = ready!(Pin::new(&mut self.inner).poll_next(cx));
            return Poll::Ready(Some(match item {
                // An empty event carries nothing (a newer agent-svc's unknown kind).
                Some(Ok(AgentRunEvent { event: None })) => continue,
                Some(Ok(AgentRunEvent { event: Some(event) })) => {
                    // agent-svc stores the turn and frees the session before it
                    // sends `finished`: nothing after it matters.
                    self.done = matches!(event, RunEvent::Finished(_));
                    Ok(event)
                }
                Some(Err(status)) => {
                    self.done = true;
                    Err(status.into())
                }
                None => {
                    self.done = true;
                    Err(ended_early())
                }
            }));
        }
    }
}
