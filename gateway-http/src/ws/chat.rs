//! `chat.send` runs: started by a connection, but not owned by it.
//!
//! A run is one `AgentRun` stream consumed to its end by its own task, whether
//! or not anyone still listens (closing the socket does not abort the turn; it
//! completes and lands in the session, as in OpenClaw; `chat.abort` aborts it
//! through agent-svc). The connections that asked for it are its subscribers:
//! each gets the run's `chat` events with its own `seq`, while it is open.
//!
//! Deltas are coalesced: the first text goes out at once, later text at most
//! every [`DELTA_INTERVAL`] (each `delta` carries the cumulative `message`, so
//! one event per upstream token would cost bytes quadratic in the answer).
//!
//! [`ChatRuns`] is the gateway-wide registry: the idempotency map
//! `(agentId, sessionKey, idempotencyKey) → run` and the runs still going, by id.

use super::idempotency::{self, Dedupe, Entry};
use super::outbox::Outbox;
use super::protocol;
use crate::client::CallContext;
use crate::error::ApiError;
use crate::run::{ended_early, is_token};
use crate::state::AppState;
use futures::StreamExt;
use serde::Serialize;
use services::proto::agent_run_event::Event;
use services::proto::{AgentRunEvent, AgentRunRequest, RunFinished, ToolCall};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tokio_util::task::TaskTracker;
use tonic::Streaming;

/// Shortest time between two `delta` events of one run.
pub const DELTA_INTERVAL: Duration = Duration::from_millis(100);

/// Where a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// Still going.
    Running,
    /// Finished (`final`).
    Final,
    /// Failed (`error`).
    Error,
    /// Aborted (`aborted`).
    Aborted,
}

impl RunState {
    /// The `state` / `status` word for this state.
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Running => "started",
            RunState::Final => "final",
            RunState::Error => "error",
            RunState::Aborted => "aborted",
        }
    }
}

#[derive(Debug)]
struct RunInner {
    state: RunState,
    subscribers: Vec<Weak<Outbox>>,
}

/// One `chat.send` run.
#[derive(Debug)]
pub struct ChatRun {
    /// Our run id (also the agent-svc run id).
    pub run_id: String,
    /// The session key as the client sent it (echoed in events).
    pub session_key: String,
    inner: Mutex<RunInner>,
    abort_requested: AtomicBool,
}

impl ChatRun {
    /// A new running run with no subscribers.
    pub fn new(run_id: String, session_key: String) -> Arc<ChatRun> {
        Arc::new(ChatRun {
            run_id,
            session_key,
            inner: Mutex::new(RunInner { state: RunState::Running, subscribers: Vec::new() }),
            abort_requested: AtomicBool::new(false),
        })
    }

    fn lock(&self) -> MutexGuard<'_, RunInner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Where the run is.
    pub fn state(&self) -> RunState {
        self.lock().state
    }

    /// Atomically with respect to the run's events: calls `reply` with the
    /// current state and, while the run is going, subscribes `outbox` to the
    /// rest of its events (once). So a subscriber gets its reply before any
    /// event, and never misses the terminal one.
    pub(crate) fn reply_and_subscribe(&self, outbox: &Arc<Outbox>, reply: impl FnOnce(RunState)) {
        let mut inner = self.lock();
        reply(inner.state);
        if inner.state == RunState::Running
            && !inner.subscribers.iter().any(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(outbox)))
        {
            inner.subscribers.retain(|w| w.upgrade().is_some_and(|o| !o.is_closed()));
            inner.subscribers.push(Arc::downgrade(outbox));
        }
    }

    /// Marks the run for abort (honoured as soon as agent-svc has started it).
    pub fn request_abort(&self) {
        self.abort_requested.store(true, Ordering::SeqCst);
    }

    fn abort_requested(&self) -> bool {
        self.abort_requested.load(Ordering::SeqCst)
    }

    /// Sends a `chat` event to every subscriber; with `end`, the run is over
    /// and the subscribers are released.
    fn emit(&self, payload: &ChatPayload<'_>, end: Option<RunState>) {
        let mut inner = self.lock();
        if let Some(state) = end {
            inner.state = state;
        }
        inner.subscribers.retain(|w| w.upgrade().is_some_and(|o| !o.is_closed()));
        for sub in inner.subscribers.iter().filter_map(Weak::upgrade) {
            sub.send_event(|seq| protocol::event("chat", &ChatPayload { seq, ..*payload }, Some(seq)));
        }
        if end.is_some() {
            inner.subscribers.clear();
        }
    }
}

/// `{role:"assistant", content:[{type:"text", text}], toolCalls?}`.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "camelCase")]
struct AssistantMessage<'a> {
    role: &'static str,
    content: [TextPart<'a>; 1],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    tool_calls: &'a [ToolCallJson<'a>],
}

#[derive(Debug, Clone, Copy, Serialize)]
struct TextPart<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    text: &'a str,
}

/// A tool call as the WebSocket protocol spells it.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct ToolCallJson<'a> {
    pub id: &'a str,
    pub name: &'a str,
    pub arguments: &'a str,
}

/// `usage` in `final`.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "camelCase")]
struct UsageJson {
    prompt_tokens: u32,
    completion_tokens: u32,
    total_tokens: u32,
}

/// The payload of a `chat` event.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "camelCase")]
struct ChatPayload<'a> {
    run_id: &'a str,
    session_key: &'a str,
    seq: u64,
    state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    delta_text: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<AssistantMessage<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<UsageJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop_reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error_message: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error_code: Option<&'a str>,
}

impl<'a> ChatPayload<'a> {
    fn new(run: &'a ChatRun, state: &'static str) -> ChatPayload<'a> {
        ChatPayload {
            run_id: &run.run_id,
            session_key: &run.session_key,
            seq: 0,
            state,
            delta_text: None,
            message: None,
            usage: None,
            stop_reason: None,
            model: None,
            error_message: None,
            error_code: None,
        }
    }
}

/// What `chat.send` found for its idempotency key.
#[derive(Debug)]
pub enum Begin {
    /// A new run: the caller must start it.
    New(Arc<ChatRun>),
    /// The key was seen before: this is its run.
    Existing(Arc<ChatRun>),
}

/// The gateway-wide registry of `chat.send` runs.
#[derive(Debug)]
pub struct ChatRuns {
    dedupe: Mutex<Dedupe<Arc<ChatRun>>>,
    /// Runs still going, by run id (for `chat.abort` before agent-svc knows them).
    running: Mutex<HashMap<String, Arc<ChatRun>>>,
    /// The run tasks (a graceful shutdown waits for them).
    tasks: TaskTracker,
}

impl Default for ChatRuns {
    fn default() -> Self {
        ChatRuns::new(idempotency::DEFAULT_CAPACITY, idempotency::DEFAULT_TTL)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl ChatRuns {
    /// A registry whose idempotency map holds `capacity` keys for `ttl`.
    pub fn new(capacity: usize, ttl: Duration) -> ChatRuns {
        ChatRuns {
            dedupe: Mutex::new(Dedupe::new(capacity, ttl)),
            running: Mutex::new(HashMap::new()),
            tasks: TaskTracker::new(),
        }
    }

    /// The run of `dedupe_key`, or a new one (registered as running) made by `make`.
    pub fn begin(&self, dedupe_key: &str, make: impl FnOnce() -> Arc<ChatRun>) -> Begin {
        let entry = lock(&self.dedupe).get_or_insert_with(dedupe_key, Instant::now(), make);
        match entry {
            Entry::Existing(run) => Begin::Existing(run),
            Entry::Inserted(run) => {
                lock(&self.running).insert(run.run_id.clone(), run.clone());
                Begin::New(run)
            }
        }
    }

    /// A run of this gateway that is still going.
    pub fn running(&self, run_id: &str) -> Option<Arc<ChatRun>> {
        lock(&self.running).get(run_id).cloned()
    }

    fn finished(&self, run_id: &str) {
        lock(&self.running).remove(run_id);
    }

    /// Waits until every run task has ended, or `timeout` passed; true when
    /// they all ended. Runs started later are still accepted.
    pub async fn wait_idle(&self, timeout: Duration) -> bool {
        let tracker = self.tasks.clone();
        tracker.close();
        let done = tokio::time::timeout(timeout, tracker.wait()).await.is_ok();
        tracker.reopen();
        done
    }
}

/// How a run ended.
enum Outcome {
    Final(RunFinished),
    Error(ApiError),
    Aborted,
}

impl From<ApiError> for Outcome {
    fn from(e: ApiError) -> Outcome {
        if e.is_aborted() {
            Outcome::Aborted
        } else {
            Outcome::Error(e)
        }
    }
}

/// Decrements the connection's active-run count when the run task ends.
pub(crate) struct ActiveRun(pub Arc<AtomicUsize>);

impl Drop for ActiveRun {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A connection's order of `chat.send` runs per session (SPEC §4: turns of one
/// session run in arrival order). Each run calls agent-svc only once the
/// previous run of its session has been started there (agent-svc then holds
/// its place in the session queue) or has failed to start. Runs of different
/// sessions do not wait on each other.
#[derive(Debug, Default)]
pub(crate) struct TurnOrder {
    /// Per session key: the generation of its latest run and the signal that
    /// run gives once started. Removed by that run when it starts, unless a
    /// later run has replaced it.
    last: Mutex<HashMap<String, (u64, oneshot::Receiver<()>)>>,
    next_gen: AtomicU64,
}

impl TurnOrder {
    /// Queues a new run of session `key` behind the previous one (if any).
    pub(crate) fn enqueue(self: &Arc<Self>, key: String) -> Turn {
        let (tx, rx) = oneshot::channel();
        let generation = self.next_gen.fetch_add(1, Ordering::Relaxed);
        let after = lock(&self.last).insert(key.clone(), (generation, rx)).map(|(_, rx)| rx);
        Turn { after, started: Some(tx), order: self.clone(), key, generation }
    }
}

/// One run's place in its connection's [`TurnOrder`].
#[derive(Debug)]
pub(crate) struct Turn {
    after: Option<oneshot::Receiver<()>>,
    started: Option<oneshot::Sender<()>>,
    order: Arc<TurnOrder>,
    key: String,
    generation: u64,
}

impl Turn {
    /// Waits until the previous run of the session has started (or ended).
    async fn wait(&mut self) {
        if let Some(rx) = self.after.take() {
            // A dropped sender means the previous run is over: go on.
            let _ = rx.await;
        }
    }

    /// This run has started (or ended): the next run of the session may go.
    fn started(&mut self) {
        let Some(tx) = self.started.take() else { return };
        let mut last = lock(&self.order.last);
        if last.get(&self.key).is_some_and(|(g, _)| *g == self.generation) {
            last.remove(&self.key);
        }
        drop(last);
        let _ = tx.send(());
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        self.started();
    }
}

/// Starts `run` in its own task, independent of any connection; it calls
/// agent-svc when `turn` lets it.
pub(crate) fn spawn(
    state: AppState,
    run: Arc<ChatRun>,
    request: AgentRunRequest,
    active: ActiveRun,
    mut turn: Turn,
) {
    let tasks = state.ws_runs().tasks.clone();
    tasks.spawn(async move {
        let _active = active;
        turn.wait().await;
        drive(&state, &run, request, &mut turn).await;
        drop(turn);
        state.ws_runs().finished(&run.run_id);
    });
}

/// Text and tool calls received so far, and how much text was sent as deltas.
#[derive(Default)]
struct Fold {
    text: String,
    sent: usize,
    calls: Vec<ToolCall>,
}

impl Fold {
    fn tool_call(&mut self, index: u32, id: &str, name: &str, arguments: &str) {
        let i = usize::try_from(index).unwrap_or(usize::MAX);
        if i >= self.calls.len() {
            // agent-svc numbers calls contiguously from 0: a new index is the next call.
            self.calls.push(ToolCall { id: id.to_owned(), r#type: "function".into(), ..Default::default() });
        }
        let last = self.calls.len().saturating_sub(1);
        let Some(call) = self.calls.get_mut(i.min(last)) else { return };
        if call.id.is_empty() {
            call.id = id.to_owned();
        }
        call.name.push_str(name);
        call.arguments.push_str(arguments);
    }

    fn message<'a>(&'a self, calls: &'a [ToolCallJson<'a>]) -> AssistantMessage<'a> {
        AssistantMessage {
            role: "assistant",
            content: [TextPart { kind: "text", text: &self.text }],
            tool_calls: calls,
        }
    }

    fn calls_json(&self) -> Vec<ToolCallJson<'_>> {
        self.calls
            .iter()
            .map(|c| ToolCallJson { id: &c.id, name: &c.name, arguments: &c.arguments })
            .collect()
    }
}

/// Sends the text not yet sent as one `delta`.
fn flush_delta(run: &ChatRun, fold: &mut Fold) {
    if fold.sent >= fold.text.len() {
        return;
    }
    let delta = fold.text.get(fold.sent..).unwrap_or_default();
    let mut p = ChatPayload::new(run, "delta");
    p.delta_text = Some(delta);
    p.message = Some(fold.message(&[]));
    run.emit(&p, None);
    fold.sent = fold.text.len();
}

async fn drive(state: &AppState, run: &ChatRun, request: AgentRunRequest, turn: &mut Turn) {
    let started_at = Instant::now();
    let _in_flight = state.metrics().run_guard();
    let ctx = CallContext { request_id: run.run_id.clone(), traceparent: None };
    let mut fold = Fold::default();
    let outcome = if run.abort_requested() {
        Outcome::Aborted
    } else {
        match state.client().run(request, &ctx).await {
            Ok(events) => consume(state, run, events, &mut fold, started_at, &ctx, turn).await,
            Err(e) => e.into(),
        }
    };
    turn.started();
    flush_delta(run, &mut fold);
    let calls = fold.calls_json();
    let partial = (!fold.text.is_empty() || !calls.is_empty()).then(|| fold.message(&calls));
    match &outcome {
        Outcome::Final(f) => {
            let mut p = ChatPayload::new(run, "final");
            p.message = Some(fold.message(&calls));
            p.usage = f.usage.as_ref().map(|u| UsageJson {
                prompt_tokens: u.prompt_tokens,
                completion_tokens: u.completion_tokens,
                total_tokens: crate::openai::total_tokens(u),
            });
            p.stop_reason = Some(crate::openai::finish_reason(&f.finish_reason));
            p.model = Some(&f.model).filter(|m| !m.is_empty()).map(String::as_str);
            run.emit(&p, Some(RunState::Final));
        }
        Outcome::Error(e) => {
            let message = e.to_string();
            let mut p = ChatPayload::new(run, "error");
            p.message = partial;
            p.error_message = Some(&message);
            p.error_code = Some(e.ws_code());
            run.emit(&p, Some(RunState::Error));
        }
        Outcome::Aborted => {
            let mut p = ChatPayload::new(run, "aborted");
            p.message = partial;
            run.emit(&p, Some(RunState::Aborted));
        }
    }
}

/// Reads the run to its end, sending coalesced deltas on the way.
async fn consume(
    state: &AppState,
    run: &ChatRun,
    mut events: Streaming<AgentRunEvent>,
    fold: &mut Fold,
    started_at: Instant,
    ctx: &CallContext,
    turn: &mut Turn,
) -> Outcome {
    let mut first_token = true;
    // When the next delta may go out, and whether a flush is scheduled for then.
    let mut next_delta = tokio::time::Instant::now();
    let mut scheduled = false;
    let timer = tokio::time::sleep_until(next_delta);
    tokio::pin!(timer);
    loop {
        tokio::select! {
            biased;
            item = events.next() => {
                let event = match item {
                    Some(Ok(event)) => event,
                    Some(Err(status)) => return ApiError::from(status).into(),
                    None => return Outcome::Error(ended_early()),
                };
                if first_token && is_token(&event) {
                    first_token = false;
                    state.metrics().first_token(started_at.elapsed());
                }
                if matches!(event.event, Some(Event::Started(_))) {
                    turn.started();
                }
                match event.event {
                    Some(Event::Started(_)) if run.abort_requested() => {
                        // `chat.abort` came before agent-svc knew the run: abort it now.
                        if let Err(e) = state.client().abort_run(&run.run_id, "", ctx).await {
                            tracing::warn!(run_id = %run.run_id, error = %e, "AbortRun failed");
                        }
                    }
                    Some(Event::Text(t)) if !t.text.is_empty() => {
                        fold.text.push_str(&t.text);
                        let now = tokio::time::Instant::now();
                        if now >= next_delta {
                            flush_delta(run, fold);
                            next_delta = now + DELTA_INTERVAL;
                        } else if !scheduled {
                            timer.as_mut().reset(next_delta);
                            scheduled = true;
                        }
                    }
                    Some(Event::ToolCall(tc)) => fold.tool_call(tc.index, &tc.id, &tc.name, &tc.arguments),
                    Some(Event::Finished(f)) => {
                        state.metrics().run_finished(started_at, &f);
                        // agent-svc stores the turn before it sends `finished`, so a
                        // `chat.history` sent on `final` sees the turn.
                        return Outcome::Final(f);
                    }
                    _ => {}
                }
            }
            () = &mut timer, if scheduled => {
                scheduled = false;
                flush_delta(run, fold);
                next_delta = tokio::time::Instant::now() + DELTA_INTERVAL;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn events(rx: &mut tokio::sync::mpsc::UnboundedReceiver<super::super::outbox::Out>) -> Vec<Value> {
        let mut out = Vec::new();
        while let Ok(super::super::outbox::Out::Text(t)) = rx.try_recv() {
            out.push(serde_json::from_str(&t).unwrap());
        }
        out
    }

    #[test]
    fn subscribers_get_their_reply_first_and_their_own_seq() {
        let run = ChatRun::new("r1".into(), "main".into());
        let (a, mut rx_a) = Outbox::new(1 << 20);
        let (b, mut rx_b) = Outbox::new(1 << 20);
        // `b` already sent an event of its own.
        assert!(b.send_event(|seq| protocol::event("tick", &json!({}), Some(seq))));
        run.reply_and_subscribe(&a, |s| assert!(a.send_text(format!("reply {}", s.as_str()))));
        run.reply_and_subscribe(&a, |_| {});
        run.reply_and_subscribe(&b, |_| {});
        let mut fold = Fold { text: "Hel".into(), ..Default::default() };
        flush_delta(&run, &mut fold);
        fold.text.push_str("lo");
        flush_delta(&run, &mut fold);
        flush_delta(&run, &mut fold); // nothing new: no event
        let mut p = ChatPayload::new(&run, "final");
        p.message = Some(fold.message(&[]));
        run.emit(&p, Some(RunState::Final));
        assert_eq!(run.state(), RunState::Final);

        assert!(matches!(rx_a.try_recv(), Ok(super::super::outbox::Out::Text(t)) if t == "reply started"));
        let a_events = events(&mut rx_a);
        assert_eq!(a_events.len(), 3, "{a_events:?}");
        assert_eq!(a_events[0]["payload"]["deltaText"], "Hel");
        assert_eq!(a_events[1]["payload"]["deltaText"], "lo");
        assert_eq!(a_events[1]["payload"]["message"]["content"][0]["text"], "Hello");
        assert_eq!(a_events[2]["payload"]["state"], "final");
        let seqs: Vec<u64> = a_events.iter().map(|e| e["payload"]["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, [1, 2, 3]);
        assert_eq!(a_events[2]["seq"], 3);
        let b_seqs: Vec<u64> = events(&mut rx_b).iter().map(|e| e["seq"].as_u64().unwrap()).collect();
        assert_eq!(b_seqs, [1, 2, 3, 4]);

        // After the end, a late subscriber gets the final state and no events.
        let (c, mut rx_c) = Outbox::new(1 << 20);
        run.reply_and_subscribe(&c, |s| assert_eq!(s, RunState::Final));
        run.emit(&ChatPayload::new(&run, "final"), Some(RunState::Final));
        assert!(rx_c.try_recv().is_err());
    }

    #[test]
    fn resends_find_the_run_and_finished_runs_leave_the_running_index() {
        let runs = ChatRuns::new(100, Duration::from_secs(60));
        let Begin::New(first) = runs.begin("k", || ChatRun::new("r1".into(), "s".into())) else {
            panic!("first send must start a run")
        };
        let Begin::Existing(again) = runs.begin("k", || ChatRun::new("r2".into(), "s".into())) else {
            panic!("a resend must find the run")
        };
        assert!(Arc::ptr_eq(&first, &again));
        assert!(runs.running("r1").is_some());
        runs.finished("r1");
        assert!(runs.running("r1").is_none());
        assert!(matches!(runs.begin("k", || ChatRun::new("r3".into(), "s".into())), Begin::Existing(_)));
    }

    #[test]
    fn tool_call_fragments_fold_by_index() {
        let mut f = Fold::default();
        f.tool_call(0, "call_a", "get_", "{\"ci");
        f.tool_call(0, "", "weather", "ty\":1}");
        f.tool_call(1, "call_b", "x", "{}");
        // An index past the end (agent-svc never sends one) starts the next call.
        f.tool_call(7, "", "", "!");
        assert_eq!(f.calls.len(), 3);
        assert_eq!((f.calls[0].id.as_str(), f.calls[0].name.as_str()), ("call_a", "get_weather"));
        assert_eq!(f.calls[0].arguments, "{\"city\":1}");
        assert_eq!(f.calls[1].arguments, "{}");
        assert_eq!(f.calls[2].arguments, "!");
        let calls = f.calls_json();
        let v = serde_json::to_value(f.message(&calls)).unwrap();
        assert_eq!(
            v["toolCalls"][0],
            json!({"id": "call_a", "name": "get_weather", "arguments": "{\"city\":1}"})
        );
    }
}
