//! A run's events as the rest of the gateway sees them: typed, with agent-svc's
//! statuses already mapped to [`ApiError`], so nothing outside [`crate::client`]
//! handles gRPC types.
//!
//! A run that finished is read to its end (agent-svc's trailers) even though its
//! consumer stops at `finished`: dropping an HTTP/2 stream before its end resets
//! it, h2 remembers only so many reset streams, and every frame that arrives
//! for a forgotten one counts towards a per-connection limit whose end is a
//! GOAWAY that fails every run on the connection. So after `finished` the rest
//! of the stream is drained (at once when the trailers are already there, else
//! by a short-lived task), and only a run given up half-way is reset, which is
//! how agent-svc learns that it must cancel.

use super::replica::InFlight;
use super::status::{self, Kind};
use crate::error::ApiError;
use futures::{FutureExt, Stream, StreamExt};
use services::proto::AgentRunEvent;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tonic::Streaming;

/// How long the rest of a finished run may take to arrive before it is reset.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

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
    /// `None` once handed to the drain on drop.
    inner: Option<Streaming<AgentRunEvent>>,
    /// Nothing more is yielded (after `finished` or an error).
    done: bool,
    /// `finished` was yielded and the stream has not ended yet.
    drain: bool,
    /// The first event (`started`), read before the stream was handed out.
    first: Option<RunEvent>,
    /// The run's place in its replica's load, until the stream is over.
    in_flight: Option<InFlight>,
}

impl std::fmt::Debug for RunEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunEvents").field("done", &self.done).finish_non_exhaustive()
    }
}

impl RunEvents {
    pub(super) fn new(
        inner: Streaming<AgentRunEvent>,
        first: AgentRunEvent,
        in_flight: InFlight,
    ) -> RunEvents {
        RunEvents {
            inner: Some(inner),
            done: false,
            drain: false,
            first: first.event,
            in_flight: Some(in_flight),
        }
    }
}

impl Drop for RunEvents {
    fn drop(&mut self) {
        if !self.drain {
            // Not finished (the client went away, or the run failed): dropping the
            // stream resets it, which cancels the run in agent-svc.
            return;
        }
        let Some(mut inner) = self.inner.take() else { return };
        // Usually the trailers came with `finished`: then the stream ends here.
        if matches!(inner.next().now_or_never(), Some(None | Some(Err(_)))) {
            return;
        }
        let in_flight = self.in_flight.take();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ =
                    tokio::time::timeout(DRAIN_TIMEOUT, async move { while inner.next().await.is_some() {} })
                        .await;
                drop(in_flight);
            });
        }
    }
}

impl Stream for RunEvents {
    type Item = Result<RunEvent, ApiError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(Ok(first)));
        }
        loop {
            let this = &mut *self;
            let Some(inner) = this.inner.as_mut().filter(|_| !this.done) else {
                return Poll::Ready(None);
            };
            let item = ready!(Pin::new(inner).poll_next(cx));
            return Poll::Ready(Some(match item {
                // An empty event carries nothing (a newer agent-svc's unknown kind).
                Some(Ok(AgentRunEvent { event: None })) => continue,
                Some(Ok(AgentRunEvent { event: Some(event) })) => {
                    // agent-svc stores the turn and frees the session before it
                    // sends `finished`: nothing after it matters to the consumer.
                    if matches!(event, RunEvent::Finished(_)) {
                        this.done = true;
                        this.drain = true;
                    }
                    Ok(event)
                }
                Some(Err(status)) => {
                    this.done = true;
                    if status::kind(&status) == Kind::Transport {
                        // The replica went away under a running run: count it for ejection.
                        if let Some(f) = &this.in_flight {
                            f.replica().record_failure(std::time::Instant::now());
                        }
                    }
                    Err(status.into())
                }
                None => {
                    this.done = true;
                    Err(ended_early())
                }
            }));
        }
    }
}
