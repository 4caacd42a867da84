//! Runs: one agent turn from request to stored transcript.
//!
//! [`Runner::start`] validates the request, resolves agent and session, waits
//! for the session's turn (FIFO, bounded), commits the user turn and returns a
//! [`RunStream`] whose first event is `started`. A task then drives the provider
//! (with fallbacks before the first token), forwards deltas through a bounded
//! channel and stores the assistant message when the run ends. Dropping the
//! stream, `AbortRun`, the run timeout or a forced shutdown cancel the task at
//! once, which drops the provider stream and so closes the upstream connection.

pub mod assemble;
pub mod validate;

use crate::agents::AgentRegistry;
use crate::error::AgentError;
use crate::providers::{ProviderError, ProviderEvent, ProviderRequest};
use crate::sessions::queue::{SessionQueues, SessionTurn};
use crate::sessions::{now_ms, SessionStore, StoredMessage, TurnLock};
use futures::{Stream, StreamExt};
use services::config::{ModelRef, ResolvedAgent};
use services::messages;
use services::proto::{
    agent_run_event::Event, agent_run_request::Session, AgentRunEvent, AgentRunRequest, Message, RunFinished,
    RunStarted, TextDelta, ToolCallDelta, Usage,
};
use services::run_events::{self, fallback_call_id, ToolCallFold};
use services::session_key::{self, SessionSelector};
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::Status;

/// Turns that may wait on one session before the next is refused (SPEC §4).
pub const MAX_QUEUED_TURNS: usize = 16;
/// Events buffered between the run task and the gRPC stream.
const EVENT_BUFFER: usize = 64;

/// Why a run's cancel token fired.
const CANCEL_CLIENT_GONE: u8 = 0;
const CANCEL_ABORTED: u8 = 1;
const CANCEL_SHUTDOWN: u8 = 2;

struct RunEntry {
    session_key: String,
    cancel: CancellationToken,
    reason: Arc<AtomicU8>,
}

/// Running turns by run id, for `AbortRun` and shutdown.
#[derive(Default)]
pub struct RunRegistry {
    runs: Mutex<HashMap<String, RunEntry>>,
}

impl RunRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, RunEntry>> {
        // A panic while holding this lock cannot leave the map inconsistent.
        self.runs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Aborts a run by id, or every run of a session; returns the aborted ids.
    pub fn abort(&self, run_id: &str, session_key: &str) -> Vec<String> {
        let runs = self.lock();
        runs.iter()
            .filter(|(id, e)| {
                (!run_id.is_empty() && *id == run_id) || (run_id.is_empty() && e.session_key == session_key)
            })
            .map(|(id, e)| {
                e.reason.store(CANCEL_ABORTED, Ordering::SeqCst);
                e.cancel.cancel();
                id.clone()
            })
            .collect()
    }

    /// Cancels every running turn (forced shutdown).
    pub fn cancel_all(&self) {
        for e in self.lock().values() {
            e.reason.store(CANCEL_SHUTDOWN, Ordering::SeqCst);
            e.cancel.cancel();
        }
    }

    /// Number of running turns.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no turn is running.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Everything a run needs, shared by all runs.
pub struct Runner {
    registry: Arc<AgentRegistry>,
    store: Arc<dyn SessionStore>,
    queues: Arc<SessionQueues>,
    runs: RunRegistry,
    in_flight: AtomicUsize,
    idle: tokio::sync::Notify,
}

/// The event stream of one run. Dropping it cancels the run.
pub struct RunStream {
    rx: mpsc::Receiver<Result<AgentRunEvent, Status>>,
    cancel: CancellationToken,
}

impl Stream for RunStream {
    type Item = Result<AgentRunEvent, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for RunStream {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// One run, resolved and ready to drive.
struct Prepared {
    run_id: String,
    agent: ResolvedAgent,
    session_key: String,
    stable: bool,
    chain: Vec<ModelRef>,
    system: Option<String>,
    client_history: Vec<Message>,
    new_turn: Vec<Message>,
    base: ProviderRequest,
}

/// How a run ended.
enum Outcome {
    Finished { finish_reason: String, model: String },
    Failed(AgentError),
    TimedOut,
    Cancelled(u8),
}

/// What the provider produced so far.
#[derive(Default)]
struct Produced {
    text: String,
    /// Tool calls by our contiguous index.
    calls: ToolCallFold,
    /// Our index → the upstream's index.
    call_index: Vec<u32>,
    /// Whether each call's first fragment (id, name) has been sent.
    announced: Vec<bool>,
    usage: Option<Usage>,
    first_token: bool,
}

impl Produced {
    fn assistant_message(&self) -> Message {
        let mut m = if self.text.is_empty() && !self.calls.is_empty() {
            Message { role: "assistant".into(), ..Default::default() }
        } else {
            assemble::text_message("assistant", self.text.clone())
        };
        m.tool_calls = self.calls.calls();
        m
    }
}

fn provider_error(e: ProviderError) -> AgentError {
    match e {
        ProviderError::RateLimited(m) => AgentError::RateLimited(m),
        ProviderError::Rejected(m) => AgentError::UpstreamRejected(m),
        ProviderError::Upstream(m) => AgentError::Upstream(m),
        ProviderError::Timeout(m) => AgentError::Timeout(m),
    }
}

fn provider_error_kind(e: &ProviderError) -> &'static str {
    match e {
        ProviderError::RateLimited(_) => "rate_limited",
        ProviderError::Rejected(_) => "rejected",
        ProviderError::Upstream(_) => "upstream",
        ProviderError::Timeout(_) => "timeout",
    }
}

fn event(e: Event) -> AgentRunEvent {
    AgentRunEvent { event: Some(e) }
}

/// The deltas could not be delivered: the caller went away.
struct Gone;

/// A place taken in a session's turn queue, resolving when the turn comes.
type QueuePlace = Pin<Box<dyn std::future::Future<Output = Result<SessionTurn, AgentError>> + Send>>;

/// How long a run's last event may wait for a caller that stopped reading.
const LAST_EVENT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Sends a run's last event (or error); a caller that has stopped reading does
/// not keep the run alive past [`LAST_EVENT_TIMEOUT`].
async fn send_last(tx: &mpsc::Sender<Result<AgentRunEvent, Status>>, item: Result<AgentRunEvent, Status>) {
    let _ = tokio::time::timeout(LAST_EVENT_TIMEOUT, tx.send(item)).await;
}

/// Removes a run from the registry and the in-flight count when dropped.
struct RunCleanup<'a> {
    runner: &'a Runner,
    run_id: String,
}

impl Drop for RunCleanup<'_> {
    fn drop(&mut self) {
        self.runner.runs.lock().remove(&self.run_id);
        metrics::gauge!("openclaw_agent_runs_in_flight").decrement(1.0);
        if self.runner.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.runner.idle.notify_waiters();
        }
    }
}

/// Waits for a stable session's turn: the in-process FIFO place first, then the
/// store's cross-replica lock (Postgres). Stateless runs have no turn to wait for.
async fn wait_turn(
    store: &dyn SessionStore,
    key: &str,
    place: Option<QueuePlace>,
) -> Result<Option<(SessionTurn, TurnLock)>, AgentError> {
    match place {
        Some(place) => {
            let queued = place.await?;
            let locked = store.lock_turn(key).await?;
            Ok(Some((queued, locked)))
        }
        None => Ok(None),
    }
}

impl Runner {
    /// A runner over these agents and this store.
    pub fn new(registry: Arc<AgentRegistry>, store: Arc<dyn SessionStore>) -> Arc<Self> {
        Arc::new(Self {
            registry,
            store,
            queues: SessionQueues::new(MAX_QUEUED_TURNS),
            runs: RunRegistry::default(),
            in_flight: AtomicUsize::new(0),
            idle: tokio::sync::Notify::new(),
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

    /// Waits until no run is in flight.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.in_flight.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }

    fn prepare(&self, mut req: AgentRunRequest) -> Result<Prepared, AgentError> {
        validate::validate(&req)?;
        let split = messages::split(std::mem::take(&mut req.messages))?;
        messages::check_new_turn_images(&split.new_turn)?;

        let requested =
            if req.agent_id.is_empty() { self.registry.default_agent().id.as_str() } else { &req.agent_id };
        let selector = match &req.session {
            Some(Session::SessionKey(k)) => SessionSelector::Explicit(k),
            Some(Session::User(u)) => SessionSelector::User(u),
            None => SessionSelector::Stateless,
        };
        let channel = if req.channel.is_empty() { "openai" } else { &req.channel };
        let session = session_key::resolve(selector, requested, channel)?;
        let agent = self
            .registry
            .agent(&session.agent_id)
            .ok_or_else(|| AgentError::UnknownAgent(session.agent_id.clone()))?
            .clone();

        let chain = match req.model.as_deref().filter(|m| !m.is_empty()) {
            Some(m) => {
                let r = ModelRef::parse(m)
                    .filter(|r| self.registry.model_known(r))
                    .ok_or_else(|| AgentError::invalid("model", format!("Unknown model: {m}")))?;
                vec![r]
            }
            None => std::iter::once(agent.primary.clone()).chain(agent.fallbacks.iter().cloned()).collect(),
        };

        let run_id = if req.run_id.is_empty() {
            uuid::Uuid::new_v4().to_string()
        } else if req.run_id.len() <= 128 && !req.run_id.chars().any(char::is_control) {
            req.run_id.clone()
        } else {
            return Err(AgentError::invalid("run_id", "`run_id` must be at most 128 printable characters."));
        };

        let params = req.params.take().unwrap_or_default();
        let client_cap =
            params.max_completion_tokens.or(params.max_tokens).map(|n| n.min(u32::MAX as i64) as u32);
        let base = ProviderRequest {
            model: String::new(),
            messages: Vec::new(),
            max_tokens: client_cap,
            params,
            tools: std::mem::take(&mut req.tools),
            tool_choice: req.tool_choice.take(),
            response_format_json: req.response_format_json.take(),
        };
        Ok(Prepared {
            run_id,
            agent,
            session_key: session.key,
            stable: session.stable,
            chain,
            system: split.system,
            // A stable session's history is the stored transcript; only stateless
            // calls carry their history in the request.
            client_history: if session.stable { Vec::new() } else { split.history },
            new_turn: split.new_turn,
            base,
        })
    }

    /// Starts a run. Errors found before the stream (validation, unknown agent,
    /// a duplicate run id) are returned directly; the stream then opens with
    /// `started` at once, before the run waits for its session's turn, so a
    /// queued caller can already answer its own client (headers, keep-alives).
    /// A full session queue or a store failure arrives as the stream's error.
    pub async fn start(self: &Arc<Self>, req: AgentRunRequest) -> Result<RunStream, AgentError> {
        let p = self.prepare(req)?;
        // Take the place in the session's FIFO now, before `started` goes out, so
        // that turns keep the order in which their calls arrived even though each
        // then waits in its own task. A full queue is refused right here.
        let place = match p.stable {
            true => {
                let queues = self.queues.clone();
                let key = p.session_key.clone();
                let mut place: QueuePlace = Box::pin(async move { queues.acquire(&key).await });
                match futures::poll!(place.as_mut()) {
                    std::task::Poll::Ready(Err(e)) => return Err(e),
                    // The session was free: keep the turn (the future is spent).
                    std::task::Poll::Ready(Ok(turn)) => {
                        Some(Box::pin(std::future::ready(Ok(turn))) as QueuePlace)
                    }
                    std::task::Poll::Pending => Some(place),
                }
            }
            false => None,
        };
        let cancel = CancellationToken::new();
        let reason = Arc::new(AtomicU8::new(CANCEL_CLIENT_GONE));
        {
            let mut runs = self.runs.lock();
            if runs.contains_key(&p.run_id) {
                return Err(AgentError::invalid("run_id", format!("Run '{}' is already running.", p.run_id)));
            }
            runs.insert(
                p.run_id.clone(),
                RunEntry {
                    session_key: p.session_key.clone(),
                    cancel: cancel.clone(),
                    reason: reason.clone(),
                },
            );
        }
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        metrics::gauge!("openclaw_agent_runs_in_flight").increment(1.0);

        let (tx, rx) = mpsc::channel(EVENT_BUFFER);
        let started = event(Event::Started(RunStarted {
            run_id: p.run_id.clone(),
            agent_id: p.agent.id.clone(),
            session_key: p.session_key.clone(),
            model: p.chain.first().map(ToString::to_string).unwrap_or_default(),
        }));
        // Cannot fail: the channel is fresh and has room.
        let _ = tx.try_send(Ok(started));
        let runner = self.clone();
        let token = cancel.clone();
        tokio::spawn(async move { runner.run(p, place, tx, token, reason).await });
        Ok(RunStream { rx, cancel })
    }

    /// The whole life of a started run, from its place in the session queue to
    /// the registry cleanup.
    async fn run(
        self: Arc<Self>,
        mut p: Prepared,
        place: Option<QueuePlace>,
        tx: mpsc::Sender<Result<AgentRunEvent, Status>>,
        cancel: CancellationToken,
        reason: Arc<AtomicU8>,
    ) {
        // Cleans up on every path, a panic included, so shutdown never waits on a ghost.
        let _cleanup = RunCleanup { runner: &self, run_id: p.run_id.clone() };
        // The run timeout covers the wait for the session's turn too.
        let now = Instant::now();
        let deadline = tokio::time::Instant::from_std(
            now.checked_add(p.agent.timeout).unwrap_or(now + std::time::Duration::from_secs(31_536_000)),
        );
        // Waiting for the session's turn is cancellable like the rest of the run;
        // a turn cancelled while queued stores nothing.
        let waited = tokio::select! {
            biased;
            _ = cancel.cancelled() => None,
            r = tokio::time::timeout_at(deadline, wait_turn(&*self.store, &p.session_key, place)) => {
                Some(r.unwrap_or_else(|_| {
                    Err(AgentError::Timeout(format!(
                        "Run timed out after {}s waiting for the session's turn.",
                        p.agent.timeout.as_secs_f64()
                    )))
                }))
            }
        };
        // Committing the user turn is not cancelled half-way: once it is stored, a
        // cancel is seen by `drive`, which stores the interrupted assistant message.
        let begun = match waited {
            Some(Ok(turn)) => Some(self.begin_turn(&mut p).await.map(|()| turn)),
            Some(Err(e)) => Some(Err(e)),
            None => None,
        };
        match begun {
            Some(Ok(turn)) => self.drive(&p, turn, &tx, &cancel, &reason, deadline).await,
            Some(Err(e)) => {
                metrics::counter!("openclaw_agent_runs_total", "outcome" => "refused").increment(1);
                send_last(&tx, Err(e.into())).await;
            }
            None => {
                metrics::counter!("openclaw_agent_runs_total", "outcome" => "cancelled").increment(1);
                match reason.load(Ordering::SeqCst) {
                    CANCEL_ABORTED => send_last(&tx, Err(AgentError::Aborted.into())).await,
                    CANCEL_SHUTDOWN => send_last(&tx, Err(AgentError::ShuttingDown.into())).await,
                    _ => {}
                }
            }
        }
    }

    /// Loads the transcript, commits the user turn (before any provider is
    /// called) and assembles the upstream messages.
    async fn begin_turn(&self, p: &mut Prepared) -> Result<(), AgentError> {
        let transcript = if p.stable { self.store.history(&p.session_key, None).await? } else { Vec::new() };
        if p.stable {
            let now = now_ms();
            let user_turn = p
                .new_turn
                .iter()
                .map(|m| StoredMessage {
                    message: m.clone(),
                    interrupted: false,
                    created_at_ms: now,
                    run_id: p.run_id.clone(),
                })
                .collect();
            self.store.append(&p.session_key, &p.agent.id, user_turn).await?;
        }
        p.base.messages = assemble::upstream_messages(
            p.agent.system_prompt.as_deref(),
            p.system.as_deref(),
            &transcript,
            &p.client_history,
            &p.new_turn,
        );
        Ok(())
    }

    async fn drive(
        &self,
        p: &Prepared,
        turn: Option<(SessionTurn, TurnLock)>,
        tx: &mpsc::Sender<Result<AgentRunEvent, Status>>,
        cancel: &CancellationToken,
        reason: &AtomicU8,
        deadline: tokio::time::Instant,
    ) {
        let started_at = Instant::now();
        let mut produced = Produced::default();
        let outcome = tokio::select! {
            biased;
            _ = cancel.cancelled() => Outcome::Cancelled(reason.load(Ordering::SeqCst)),
            r = tokio::time::timeout_at(deadline, self.attempts(p, tx, &mut produced, started_at)) => match r {
                Ok(Ok((finish_reason, model))) => Outcome::Finished { finish_reason, model },
                Ok(Err(Some(e))) => Outcome::Failed(e),
                Ok(Err(None)) => Outcome::Cancelled(CANCEL_CLIENT_GONE),
                Err(_) => Outcome::TimedOut,
            },
        };

        // Everything in `attempts` is provider time but for the microseconds of
        // forwarding deltas, which is what the gateway's overhead figure wants.
        let provider_elapsed = started_at.elapsed();
        let finished = matches!(outcome, Outcome::Finished { .. });
        if p.stable {
            let stored = StoredMessage {
                message: produced.assistant_message(),
                interrupted: !finished,
                created_at_ms: now_ms(),
                run_id: p.run_id.clone(),
            };
            if let Err(e) = self.store.append(&p.session_key, &p.agent.id, vec![stored]).await {
                tracing::error!(session = %p.session_key, error = %e, "storing the assistant message failed");
            }
        }
        drop(turn);

        let label = match &outcome {
            Outcome::Finished { .. } => "finished",
            Outcome::Failed(_) => "failed",
            Outcome::TimedOut => "timeout",
            Outcome::Cancelled(CANCEL_ABORTED) => "aborted",
            Outcome::Cancelled(_) => "cancelled",
        };
        metrics::counter!("openclaw_agent_runs_total", "outcome" => label).increment(1);
        metrics::histogram!("openclaw_agent_run_duration_seconds").record(started_at.elapsed().as_secs_f64());

        let last = match outcome {
            Outcome::Finished { finish_reason, model } => Some(Ok(event(Event::Finished(RunFinished {
                finish_reason,
                usage: produced.usage,
                model,
                provider_micros: provider_elapsed.as_micros() as u64,
            })))),
            Outcome::Failed(e) => Some(Err(e.into())),
            Outcome::TimedOut => Some(Err(AgentError::Timeout(format!(
                "Run timed out after {}s.",
                p.agent.timeout.as_secs_f64()
            ))
            .into())),
            Outcome::Cancelled(CANCEL_ABORTED) => Some(Err(AgentError::Aborted.into())),
            Outcome::Cancelled(CANCEL_SHUTDOWN) => Some(Err(AgentError::ShuttingDown.into())),
            Outcome::Cancelled(_) => None,
        };
        if let Some(last) = last {
            send_last(tx, last).await;
        }
    }

    /// Tries each model of the chain until one answers. `Err(None)`: the caller went away.
    async fn attempts(
        &self,
        p: &Prepared,
        tx: &mpsc::Sender<Result<AgentRunEvent, Status>>,
        produced: &mut Produced,
        started_at: Instant,
    ) -> Result<(String, String), Option<AgentError>> {
        let mut last_err = None;
        for (i, model) in p.chain.iter().enumerate() {
            let Some(provider) = self.registry.provider(&model.provider) else {
                last_err = Some(AgentError::invalid("model", format!("Unknown model: {model}")));
                continue;
            };
            let has_next = i + 1 < p.chain.len();
            let mut req = p.base.clone();
            req.model.clone_from(&model.model);
            if let Some(cap) = self.registry.max_tokens(model) {
                req.max_tokens = Some(req.max_tokens.map_or(cap, |c| c.min(cap)));
            }
            let attempt = match provider.stream(req).await {
                Ok(mut stream) => {
                    let mut finish = None;
                    let mut failure = None;
                    while let Some(item) = stream.next().await {
                        match item {
                            Ok(ev) => match self.forward(ev, tx, produced, &mut finish, started_at).await {
                                Ok(()) => {}
                                Err(Gone) => return Err(None),
                            },
                            Err(e) => {
                                failure = Some(e);
                                break;
                            }
                        }
                    }
                    match failure {
                        None => {
                            if self.announce_pending(tx, produced, started_at).await.is_err() {
                                return Err(None);
                            }
                            let reason = run_events::finish_reason_with_calls(
                                finish.as_deref().unwrap_or_default(),
                                !produced.calls.is_empty(),
                            );
                            return Ok((reason.to_string(), model.to_string()));
                        }
                        Some(e) => e,
                    }
                }
                Err(e) => e,
            };
            metrics::counter!("openclaw_agent_provider_errors_total",
                "provider" => model.provider.clone(), "kind" => provider_error_kind(&attempt))
            .increment(1);
            let retryable = !matches!(attempt, ProviderError::Rejected(_));
            if produced.first_token || !has_next || !retryable {
                return Err(Some(provider_error(attempt)));
            }
            tracing::warn!(model = %model, error = %attempt, "provider failed before the first token; trying the next model");
            // Tool-call fragments held back for their name were never sent: forget them.
            produced.calls.clear();
            produced.call_index.clear();
            produced.announced.clear();
            produced.usage = None;
            last_err = Some(provider_error(attempt));
        }
        Err(Some(last_err.unwrap_or_else(|| AgentError::Upstream("no model could be tried".into()))))
    }

    /// Sends the calls still held back for want of a name (the upstream never
    /// named them), so the client at least gets their id and arguments.
    async fn announce_pending(
        &self,
        tx: &mpsc::Sender<Result<AgentRunEvent, Status>>,
        produced: &mut Produced,
        started_at: Instant,
    ) -> Result<(), Gone> {
        for i in 0..produced.calls.len() {
            if produced.announced[i] {
                continue;
            }
            produced.announced[i] = true;
            let Some(call) = produced.calls.get(i as u32) else { continue };
            let delta = Event::ToolCall(ToolCallDelta {
                index: i as u32,
                id: call.id.clone(),
                name: call.name.clone(),
                arguments: call.arguments.clone(),
            });
            self.send(tx, produced, delta, started_at).await?;
        }
        Ok(())
    }

    async fn forward(
        &self,
        ev: ProviderEvent,
        tx: &mpsc::Sender<Result<AgentRunEvent, Status>>,
        produced: &mut Produced,
        finish: &mut Option<String>,
        started_at: Instant,
    ) -> Result<(), Gone> {
        let out = match ev {
            ProviderEvent::Text(text) => {
                if text.is_empty() {
                    return Ok(());
                }
                produced.text.push_str(&text);
                Event::Text(TextDelta { text })
            }
            ProviderEvent::ToolCall { index, id, name, arguments } => {
                let (ours, id) = match produced.call_index.iter().position(|u| *u == index) {
                    Some(pos) => (pos, String::new()),
                    None => {
                        produced.call_index.push(index);
                        produced.announced.push(false);
                        let n = produced.calls.len();
                        // The id is settled by the first fragment: clients take it from there.
                        let id = id.filter(|s| !s.is_empty()).unwrap_or_else(|| fallback_call_id(n as u32));
                        (n, id)
                    }
                };
                let call =
                    produced.calls.push(ours as u32, &id, name.as_deref().unwrap_or_default(), &arguments);
                if produced.announced[ours] {
                    Event::ToolCall(ToolCallDelta { index: ours as u32, arguments, ..Default::default() })
                } else if call.name.is_empty() {
                    // The first fragment must carry the name (clients take it from
                    // there only), so hold the call back until the name is known.
                    return Ok(());
                } else {
                    produced.announced[ours] = true;
                    Event::ToolCall(ToolCallDelta {
                        index: ours as u32,
                        id: call.id.clone(),
                        name: call.name.clone(),
                        arguments: call.arguments.clone(),
                    })
                }
            }
            ProviderEvent::Finish(reason) => {
                *finish = Some(reason);
                return Ok(());
            }
            ProviderEvent::Usage { prompt_tokens, completion_tokens } => {
                produced.usage = Some(run_events::usage(prompt_tokens, completion_tokens));
                return Ok(());
            }
        };
        self.send(tx, produced, out, started_at).await
    }

    /// Sends one content or tool-call delta, noting the first token.
    async fn send(
        &self,
        tx: &mpsc::Sender<Result<AgentRunEvent, Status>>,
        produced: &mut Produced,
        out: Event,
        started_at: Instant,
    ) -> Result<(), Gone> {
        if !produced.first_token {
            produced.first_token = true;
            metrics::histogram!("openclaw_agent_time_to_first_token_seconds")
                .record(started_at.elapsed().as_secs_f64());
        }
        tx.send(Ok(event(out))).await.map_err(|_| Gone)
    }
}
