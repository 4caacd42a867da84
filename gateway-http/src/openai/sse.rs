//! Streaming a run as Server-Sent Events.
//!
//! [`SseRun::begin`] waits for the first meaningful event (a delta, the finish
//! or an error) before the `200` is committed, but never longer than the
//! keep-alive interval: an error that comes before the first token (validation,
//! provider refusal, session busy) still gets its real HTTP status. After that,
//! frames are sent as they arrive (nothing is buffered), a `: keep-alive`
//! comment goes out after 15 s of silence, and an error becomes
//! `data: {"error":…}` + `data: [DONE]`.
//!
//! Once committed, the run is read by a pump of its own, as fast as agent-svc
//! sends it, into a per-client buffer that the response body drains as fast as
//! the client reads. So a client that stops reading never holds agent-svc's
//! stream (whose unread bytes would hold flow-control window that every run on
//! the connection shares): its buffer grows instead, and once it passes
//! `gateway.http.maxBufferedBytes` the run is ended and the connection closed.
//! When the client disconnects, hyper drops the body, which stops the pump,
//! which drops the [`RunEvents`], which cancels the run in agent-svc.
//!
//! Why not axum's `Sse` + `KeepAlive`: the `200` must not be committed before
//! the first meaningful event (so early errors keep their status), which
//! [`SseRun::begin`] does before the body exists; and frames are serialized
//! straight into one reused buffer by [`ChunkWriter`], where `Sse` would copy
//! each payload into an `Event` of its own. The keep-alive is the one timer
//! here, reset whenever bytes go out.

use crate::client::{RunEvent, RunEvents};
use crate::error::ApiError;
use crate::limits::RunPermit;
use crate::openai::stream::Written;
use crate::openai::ChunkWriter;
use crate::state::AppState;
use axum::body::Body;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};
use tokio::time::Sleep;
use tokio_util::sync::{CancellationToken, DropGuard, WaitForCancellationFutureOwned};

/// The most frames [`SseRun::on_ready_items`] gathers into one write.
const COALESCE_BYTES: usize = 16 * 1024;

/// Silence after which a keep-alive comment is sent (SPEC: 15 s); the default
/// of [`crate::state::ChatSettings::keep_alive`].
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Deltas are flowing.
    Streaming,
    /// `[DONE]` written; the body ends once it is flushed.
    Done,
}

/// A run being streamed to one client.
pub struct SseRun {
    events: RunEvents,
    writer: ChunkWriter,
    phase: Phase,
    session_key: Option<String>,
    keep_alive: Pin<Box<Sleep>>,
    keep_alive_every: Duration,
    force_close: Pin<Box<WaitForCancellationFutureOwned>>,
    state: AppState,
    started_at: Instant,
    first_token_seen: bool,
    _in_flight: RunPermit,
}

impl SseRun {
    /// Writes the role chunk and waits for the first meaningful event, at most
    /// the keep-alive interval. An error before it is returned as the HTTP error. If the run stays silent that long, the
    /// stream is committed with the role chunk and a `: keep-alive` comment.
    pub async fn begin(
        events: RunEvents,
        writer: ChunkWriter,
        state: AppState,
        started_at: Instant,
        in_flight: RunPermit,
    ) -> Result<SseRun, ApiError> {
        let keep_alive_every = state.chat().keep_alive;
        let mut run = SseRun {
            events,
            writer,
            phase: Phase::Streaming,
            session_key: None,
            keep_alive: Box::pin(tokio::time::sleep(keep_alive_every)),
            keep_alive_every,
            force_close: Box::pin(state.force_close().clone().cancelled_owned()),
            state,
            started_at,
            first_token_seen: false,
            _in_flight: in_flight,
        };
        run.writer.role();
        loop {
            tokio::select! {
                biased;
                item = run.events.next() => match item {
                    Some(Ok(event)) => {
                        if run.on_event(&event) != Written::Nothing {
                            run.on_ready_items().await;
                            return Ok(run);
                        }
                    }
                    Some(Err(e)) => return Err(e),
                    None => return Err(crate::client::ended_early()),
                },
                () = run.keep_alive.as_mut() => {
                    run.writer.keep_alive();
                    return Ok(run);
                }
            }
        }
    }

    /// The session key from `started`, if it came before the commit.
    pub fn session_key(&self) -> Option<&str> {
        self.session_key.as_deref()
    }

    /// The response body: the frames written so far, then the rest of the run,
    /// pumped into a buffer of at most `max_buffered` unsent bytes.
    pub fn into_body(mut self, max_buffered: usize) -> Body {
        let outbox = Arc::new(ClientOutbox::default());
        let gone = CancellationToken::new();
        if self.phase == Phase::Done {
            // The whole run came before the commit (a short answer): nothing to pump.
            if let Some(bytes) = self.writer.take() {
                outbox.push(bytes, max_buffered);
            }
            outbox.finish();
        } else {
            tokio::spawn(pump(self, outbox.clone(), gone.clone(), max_buffered));
        }
        Body::from_stream(ClientBody { outbox, _gone: gone.drop_guard() })
    }

    /// The next bytes to send, or `None` when the body is complete.
    async fn next_frames(&mut self) -> Option<Bytes> {
        loop {
            if let Some(bytes) = self.writer.take() {
                let next = tokio::time::Instant::now() + self.keep_alive_every;
                self.keep_alive.as_mut().reset(next);
                return Some(bytes);
            }
            match self.phase {
                Phase::Done => return None,
                Phase::Streaming => {
                    tokio::select! {
                        biased;
                        item = self.events.next() => {
                            self.on_item(item);
                            self.on_ready_items().await;
                        }
                        () = self.keep_alive.as_mut() => self.writer.keep_alive(),
                        () = self.force_close.as_mut() => {
                            self.fail(&ApiError::AgentUnavailable("The gateway is shutting down.".into()));
                        }
                    }
                }
            }
        }
    }

    /// Writes the events that have already arrived, up to [`COALESCE_BYTES`] of
    /// frames (half the client's buffer bound if that is less), without waiting
    /// for more: agent-svc usually sends several in one HTTP/2 frame, and one
    /// write for them all costs the client's connection one chunk instead of one
    /// per event (the bytes of the stream are the same).
    async fn on_ready_items(&mut self) {
        std::future::poll_fn(|cx| {
            let limit = COALESCE_BYTES.min(self.state.chat().max_buffered_bytes / 2);
            while self.phase == Phase::Streaming && self.writer.pending_len() < limit {
                match self.events.poll_next_unpin(cx) {
                    Poll::Ready(item) => self.on_item(item),
                    Poll::Pending => break,
                }
            }
            Poll::Ready(())
        })
        .await;
    }

    fn on_item(&mut self, item: Option<Result<RunEvent, ApiError>>) {
        match item {
            Some(Ok(event)) => {
                self.on_event(&event);
            }
            Some(Err(e)) => self.fail(&e),
            None => self.fail(&crate::client::ended_early()),
        }
    }

    /// Writes one event's frames and tracks what it means for the run.
    fn on_event(&mut self, event: &RunEvent) -> Written {
        if let RunEvent::Started(s) = event {
            self.session_key.get_or_insert_with(|| s.session_key.clone());
            return Written::Nothing;
        }
        if let RunEvent::Finished(f) = event {
            self.state.metrics().run_finished(self.started_at, f);
        }
        let written = self.writer.event(event);
        match written {
            Written::Delta if !self.first_token_seen => {
                self.first_token_seen = true;
                self.state.metrics().first_token(self.started_at.elapsed());
            }
            // agent-svc stores the turn and frees the session before it sends
            // `finished`, so `[DONE]` need not wait for the stream to close.
            Written::Finished => {
                self.writer.done();
                self.phase = Phase::Done;
            }
            Written::Delta | Written::Nothing => {}
        }
        written
    }

    fn fail(&mut self, e: &ApiError) {
        self.state.metrics().stream_error();
        self.writer.error(e);
        self.phase = Phase::Done;
    }
}

/// Reads the run into `outbox` until it is complete, the client is `gone`, or
/// the client has left more than `max` bytes unread (then the run is ended:
/// dropping it cancels it in agent-svc).
async fn pump(mut run: SseRun, outbox: Arc<ClientOutbox>, gone: CancellationToken, max: usize) {
    loop {
        let next = tokio::select! {
            biased;
            () = gone.cancelled() => return,
            next = run.next_frames() => next,
        };
        match next {
            Some(bytes) => {
                if !outbox.push(bytes, max) {
                    run.state.metrics().slow_client();
                    tracing::debug!(max, "SSE client stopped reading: its run is ended");
                    return;
                }
            }
            None => {
                outbox.finish();
                return;
            }
        }
    }
}

/// How the pumped body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// More may come.
    Open,
    /// Everything is queued.
    Complete,
    /// The client let more than the bound pile up: the response is cut off.
    Overflow,
}

#[derive(Debug)]
struct OutboxState {
    frames: VecDeque<Bytes>,
    queued: usize,
    ending: Ending,
    waker: Option<Waker>,
}

impl Default for OutboxState {
    fn default() -> Self {
        OutboxState { frames: VecDeque::new(), queued: 0, ending: Ending::Open, waker: None }
    }
}

/// The bytes pumped for one client and not yet read by it.
#[derive(Debug, Default)]
struct ClientOutbox {
    state: Mutex<OutboxState>,
}

impl ClientOutbox {
    /// Queues `bytes`; false (and the body is cut off) when that would leave more
    /// than `max` bytes unread.
    fn push(&self, bytes: Bytes, max: usize) -> bool {
        let mut st = self.state.lock();
        let fits = st.queued + bytes.len() <= max;
        if fits {
            st.queued += bytes.len();
            st.frames.push_back(bytes);
        } else {
            st.frames.clear();
            st.queued = 0;
            st.ending = Ending::Overflow;
        }
        let waker = st.waker.take();
        drop(st);
        if let Some(w) = waker {
            w.wake();
        }
        fits
    }

    fn finish(&self) {
        let waker = {
            let mut st = self.state.lock();
            st.ending = Ending::Complete;
            st.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// The response body: drains the outbox as fast as the client reads. Dropping
/// it (the client went away) stops the pump.
struct ClientBody {
    outbox: Arc<ClientOutbox>,
    _gone: DropGuard,
}

impl Stream for ClientBody {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut st = self.outbox.state.lock();
        if let Some(bytes) = st.frames.pop_front() {
            st.queued -= bytes.len();
            return Poll::Ready(Some(Ok(bytes)));
        }
        match st.ending {
            Ending::Complete => Poll::Ready(None),
            Ending::Overflow => {
                // Once: the body ends with the error, which closes the connection.
                st.ending = Ending::Complete;
                Poll::Ready(Some(Err(std::io::Error::other("the client stopped reading"))))
            }
            Ending::Open => {
                if !st.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    st.waker = Some(cx.waker().clone());
                }
                Poll::Pending
            }
        }
    }
}
