//! Runs: one agent turn from request to stored transcript.
//!
//! [`Runner::start`] prepares the request (`prepare.rs`: validation, agent,
//! session, model chain), reserves the session's place in line, registers the
//! run (`registry.rs`) and returns a [`RunStream`] whose first event is
//! `started`. A task then drives the run (`drive.rs`): it waits for the
//! session's turn, fits the session's context to the agent's budget
//! (`budget.rs`, compacting it when it grows past its threshold: `compact.rs`),
//! tries the models (fallbacks before the first token), forwards deltas
//! (`produced.rs`) through a bounded channel and stores the turn when the run
//! ends. Dropping the stream,
//! `AbortRun`, the run timeout or a forced shutdown cancel the task at once,
//! which drops the provider stream and so closes the upstream connection.
//!
//! Failures are [`AgentError`]s; `service.rs` turns them into gRPC statuses.

pub mod assemble;
pub mod budget;
mod compact;
mod drive;
mod manage;
mod prepare;
mod produced;
mod registry;
pub mod validate;

pub use compact::{summary_prompt, SUMMARY_PROMPT, SUMMARY_TIMEOUT};
pub use manage::MANAGE_WAIT;
pub use registry::RunRegistry;

use crate::agents::AgentRegistry;
use crate::error::AgentError;
use crate::sessions::queue::SessionQueues;
use crate::sessions::SessionStore;
use futures::Stream;
use services::proto::{agent_run_event::Event, AgentRunEvent, AgentRunRequest, RunStarted};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Turns that may wait on one session before the next is refused (SPEC §4).
pub const MAX_QUEUED_TURNS: usize = 16;
/// Events buffered between the run task and the gRPC stream.
const EVENT_BUFFER: usize = 64;

/// One item of a run's stream: an event, or the failure that ends it.
type RunItem = Result<AgentRunEvent, AgentError>;

/// Where a run's task sends its events, and its failure last. Boxed: tokio's
/// channel allocates its slots 32 at a time, so 96-byte items held ~3 KB per
/// open run for as long as it lasted (10,000 held streams: 30 MB).
type EventTx = mpsc::Sender<Box<RunItem>>;

/// Everything a run needs, shared by all runs.
pub struct Runner {
    registry: Arc<AgentRegistry>,
    store: Arc<dyn SessionStore>,
    queues: Arc<SessionQueues>,
    runs: RunRegistry,
}

/// The event stream of one run; a failure is its last item. Dropping it
/// cancels the run.
pub struct RunStream {
    rx: mpsc::Receiver<Box<RunItem>>,
    cancel: CancellationToken,
    /// Text deltas already queued together go out as one (`coalesce_text`).
    coalesce: bool,
    /// The event read just past such a group, sent next.
    held: Option<RunItem>,
}

impl Stream for RunStream {
    type Item = RunItem;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if let Some(held) = this.held.take() {
            return Poll::Ready(Some(held));
        }
        // One receive for both modes, so that it stays inlined (it is the hot path).
        let mut item = ready!(this.rx.poll_recv(cx)).map(|boxed| *boxed);
        if !this.coalesce {
            return Poll::Ready(item);
        }
        if let Some(Ok(AgentRunEvent { event: Some(Event::Text(delta)) })) = &mut item {
            // Only what is queued already: a delta is never held back waiting for the next.
            while let Ok(next) = this.rx.try_recv() {
                match *next {
                    Ok(AgentRunEvent { event: Some(Event::Text(more)) }) => delta.text.push_str(&more.text),
                    other => {
                        this.held = Some(other);
                        break;
                    }
                }
            }
        }
        Poll::Ready(item)
    }
}

impl Drop for RunStream {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

fn event(e: Event) -> AgentRunEvent {
    AgentRunEvent { event: Some(e) }
}

impl Runner {
    /// A runner over these agents and this store, taking at most `max_runs` runs at once.
    pub fn new(registry: Arc<AgentRegistry>, store: Arc<dyn SessionStore>, max_runs: usize) -> Arc<Self> {
        Arc::new(Self {
            registry,
            store,
            queues: SessionQueues::new(MAX_QUEUED_TURNS),
            runs: RunRegistry::new(max_runs),
        })
    }

    /// The agent registry.
    pub fn registry(&self) -> &AgentRegistry {
        &self.registry
    }

    /// The session store.
    pub fn store(&self) -> &Arc<dyn SessionStore> {
        &self.store
    }

    /// Running turns.
    pub fn runs(&self) -> &RunRegistry {
        &self.runs
    }

    /// Refuses new runs from now on (they get `ShuttingDown`) and waits until
    /// none is in flight (shutdown).
    pub async fn wait_idle(&self) {
        self.runs.close();
        self.runs.wait_empty().await;
    }

    /// Starts a run. Errors found before the stream (validation, unknown agent,
    /// a full session queue, a duplicate run id) are returned directly; the
    /// stream then opens with `started` at once, before the run waits for its
    /// session's turn, so a queued caller can already answer its own client
    /// (headers, keep-alives). A store failure or a timeout while waiting
    /// arrives as the stream's error.
    pub fn start(self: &Arc<Self>, req: AgentRunRequest) -> Result<RunStream, AgentError> {
        let coalesce = req.coalesce_text;
        let p = prepare::prepare(&self.registry, req)?;
        // Take the place in the session's line now, before `started` goes out,
        // so that turns keep the order in which their calls arrived even though
        // each then waits in its own task. A full line is refused right here.
        let place = if p.stable { Some(self.queues.reserve(&p.session_key)?) } else { None };
        let cancel = self.runs.insert(&p.run_id, &p.session_key)?;
        metrics::gauge!("openclaw_agent_runs_in_flight").increment(1.0);

        let (tx, rx) = mpsc::channel(EVENT_BUFFER);
        let started = event(Event::Started(RunStarted {
            run_id: p.run_id.clone(),
            agent_id: p.agent.id.clone(),
            session_key: p.session_key.clone(),
            model: p.chain.first().map(ToString::to_string).unwrap_or_default(),
        }));
        // Cannot fail: the channel is fresh and has room.
        let _ = tx.try_send(Box::new(Ok(started)));
        let stream = RunStream { rx, cancel: cancel.token().clone(), coalesce, held: None };
        tokio::spawn(Arc::clone(self).run(p, place, tx, cancel));
        Ok(stream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use services::proto::{RunFinished, TextDelta, ToolCallDelta};

    fn text(t: &str) -> RunItem {
        Ok(event(Event::Text(TextDelta { text: t.into() })))
    }

    /// What a stream over these queued events yields, as short labels.
    async fn read(coalesce: bool, queued: Vec<RunItem>) -> Vec<String> {
        let (tx, rx) = mpsc::channel(16);
        for e in queued {
            tx.try_send(Box::new(e)).unwrap();
        }
        drop(tx);
        let stream = RunStream { rx, cancel: CancellationToken::new(), coalesce, held: None };
        stream
            .map(|item| match item {
                Ok(AgentRunEvent { event: Some(Event::Text(t)) }) => format!("text:{}", t.text),
                Ok(AgentRunEvent { event: Some(Event::ToolCall(c)) }) => format!("call:{}", c.arguments),
                Ok(AgentRunEvent { event: Some(Event::Finished(_)) }) => "finished".into(),
                Ok(other) => format!("{other:?}"),
                Err(e) => format!("error:{e}"),
            })
            .collect()
            .await
    }

    fn queued() -> Vec<RunItem> {
        vec![
            text("Hel"),
            text("lo"),
            Ok(event(Event::ToolCall(ToolCallDelta { arguments: "{}".into(), ..Default::default() }))),
            text(", "),
            text("world"),
            Ok(event(Event::Finished(RunFinished::default()))),
        ]
    }

    #[tokio::test]
    async fn queued_text_deltas_are_joined_only_when_asked() {
        assert_eq!(read(true, queued()).await, ["text:Hello", "call:{}", "text:, world", "finished"]);
        assert_eq!(
            read(false, queued()).await,
            ["text:Hel", "text:lo", "call:{}", "text:, ", "text:world", "finished"]
        );
        // A failure after deltas is still the last item, after their joined text.
        let failed = vec![text("a"), text("b"), Err(AgentError::Upstream("boom".into()))];
        let got = read(true, failed).await;
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0], "text:ab");
        assert!(got[1].starts_with("error:") && got[1].contains("boom"), "{got:?}");
    }

    #[tokio::test]
    async fn a_joined_delta_never_waits_for_the_next() {
        let (tx, rx) = mpsc::channel(16);
        let mut stream = RunStream { rx, cancel: CancellationToken::new(), coalesce: true, held: None };
        tx.send(Box::new(text("first"))).await.unwrap();
        // Nothing else is queued: the delta goes out as it is, with the sender still open.
        assert!(matches!(
            stream.next().await,
            Some(Ok(AgentRunEvent { event: Some(Event::Text(t)) })) if t.text == "first"
        ));
        tx.send(Box::new(text("second"))).await.unwrap();
        assert!(matches!(
            stream.next().await,
            Some(Ok(AgentRunEvent { event: Some(Event::Text(t)) })) if t.text == "second"
        ));
    }
}
