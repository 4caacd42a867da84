//! Driving one `chat.send` run: calling agent-svc when the run's turn comes,
//! consuming its events and sending them to the subscribers as `chat` events.
//!
//! Deltas are coalesced: the first text or tool-call fragment goes out at
//! once, later ones at most every [`DELTA_INTERVAL`] (each `delta` carries the
//! cumulative `message`, so one event per upstream token would cost bytes
//! quadratic in the answer). A `delta` carries the text received since the
//! previous one (`deltaText`, empty when only tool calls moved) and, when tool
//! calls moved, their new fragments (`deltaToolCalls`).

use super::order::{ActiveRun, Turn};
use super::payload::{AssistantMessage, ChatPayload, TextPart, ToolCallDeltaJson, ToolCallJson, UsageJson};
use super::{ChatRun, RunState};
use crate::client::{is_token, CallContext, RunEvent, RunEvents};
use crate::error::ApiError;
use crate::state::AppState;
use futures::StreamExt;
use services::proto::{AgentRunRequest, RunFinished, ToolCallDelta};
use services::run_events::{self, fallback_call_id, ToolCallFold};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Shortest time between two `delta` events of one run.
pub const DELTA_INTERVAL: Duration = Duration::from_millis(100);

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
        tokio::select! {
            biased;
            () = turn.wait() => {}
            // Aborted while waiting for the previous run of its session: it
            // ends now (`drive` sees the abort and never calls agent-svc) ...
            () = run.abort_requested_wait() => {}
        }
        drive(&state, &run, request, &mut turn).await;
        // ... but holds its place until that run has started, so the runs
        // queued behind it cannot overtake it.
        turn.wait().await;
        drop(turn);
        state.ws_runs().finished(&run.run_id);
    });
}

/// How much of one tool call the `delta` events carried.
#[derive(Debug, Clone, Copy)]
struct CallSent {
    index: u32,
    /// Whether a `delta` carried its id and name.
    announced: bool,
    /// Bytes of its arguments sent.
    arguments: usize,
}

/// Text and tool calls received so far, and how much of them went out in `delta`s.
#[derive(Default)]
struct Fold {
    text: String,
    sent: usize,
    calls: ToolCallFold,
    /// One per call, sorted by index.
    calls_sent: Vec<CallSent>,
}

impl Fold {
    fn message<'a>(&'a self, calls: &'a [ToolCallJson<'a>]) -> AssistantMessage<'a> {
        AssistantMessage {
            role: "assistant",
            content: [TextPart { kind: "text", text: &self.text }],
            tool_calls: calls,
        }
    }

    /// Adds a tool-call fragment. A call's id is settled by its first fragment
    /// (agent-svc always gives one; else `call_<index>`), since `delta`s send
    /// it once.
    fn push_call(&mut self, d: &ToolCallDelta) {
        match self.calls_sent.binary_search_by_key(&d.index, |c| c.index) {
            Ok(_) => {
                self.calls.push(d.index, "", &d.name, &d.arguments);
            }
            Err(pos) => {
                let id = if d.id.is_empty() { fallback_call_id(d.index) } else { d.id.clone() };
                self.calls.push(d.index, &id, &d.name, &d.arguments);
                self.calls_sent.insert(pos, CallSent { index: d.index, announced: false, arguments: 0 });
            }
        }
    }

    /// The calls so far, by index, as the WebSocket protocol spells them.
    fn calls_json(&self) -> Vec<ToolCallJson<'_>> {
        self.calls_sent
            .iter()
            .filter_map(|s| self.calls.get(s.index))
            .map(|c| ToolCallJson { id: &c.id, name: &c.name, arguments: &c.arguments })
            .collect()
    }

    /// What the calls got since the last `delta`.
    fn call_deltas(&self) -> Vec<ToolCallDeltaJson<'_>> {
        self.calls_sent
            .iter()
            .filter_map(|s| {
                let c = self.calls.get(s.index)?;
                let arguments = c.arguments.get(s.arguments..).unwrap_or_default();
                if s.announced && arguments.is_empty() {
                    return None;
                }
                let first = !s.announced;
                Some(ToolCallDeltaJson {
                    index: s.index,
                    id: first.then_some(c.id.as_str()),
                    name: first.then_some(c.name.as_str()),
                    arguments,
                })
            })
            .collect()
    }

    /// Whether something received has not gone out in a `delta` yet.
    fn unsent(&self) -> bool {
        self.sent < self.text.len()
            || self.calls_sent.iter().any(|s| {
                !s.announced || self.calls.get(s.index).is_some_and(|c| s.arguments < c.arguments.len())
            })
    }

    /// Everything received so far went out.
    fn mark_sent(&mut self) {
        self.sent = self.text.len();
        for s in &mut self.calls_sent {
            s.announced = true;
            s.arguments = self.calls.get(s.index).map_or(0, |c| c.arguments.len());
        }
    }
}

/// Sends what was received and not yet sent as one `delta`.
fn flush_delta(run: &ChatRun, fold: &mut Fold) {
    if !fold.unsent() {
        return;
    }
    let delta = fold.text.get(fold.sent..).unwrap_or_default();
    let call_deltas = fold.call_deltas();
    let calls = fold.calls_json();
    let mut p = ChatPayload::new(run, "delta");
    // Always present (possibly empty), as clients read it from every `delta`.
    p.delta_text = Some(delta);
    p.delta_tool_calls = Some(call_deltas.as_slice()).filter(|d| !d.is_empty());
    p.message = Some(fold.message(&calls));
    run.emit(&p, None);
    fold.mark_sent();
}

async fn drive(state: &AppState, run: &ChatRun, request: AgentRunRequest, turn: &mut Turn) {
    let started_at = Instant::now();
    let ctx = CallContext { request_id: run.run_id.clone(), traceparent: None };
    let mut fold = Fold::default();
    let outcome = if run.abort_requested() {
        Outcome::Aborted
    } else {
        match state.begin_run() {
            Err(e) => e.into(),
            Ok(_in_flight) => match state.client().run(request, &ctx).await {
                Ok(events) => consume(state, run, events, &mut fold, started_at, &ctx, turn).await,
                Err(e) => e.into(),
            },
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
                total_tokens: run_events::total_tokens(u),
            });
            p.stop_reason = Some(run_events::finish_reason(&f.finish_reason));
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
    mut events: RunEvents,
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
                    Some(Err(e)) => return e.into(),
                    None => return Outcome::Error(crate::client::ended_early()),
                };
                if first_token && is_token(&event) {
                    first_token = false;
                    state.metrics().first_token(started_at.elapsed());
                }
                if matches!(event, RunEvent::Started(_)) {
                    turn.started();
                }
                match event {
                    RunEvent::Started(_) if run.abort_requested() => {
                        // `chat.abort` came before agent-svc knew the run: abort it now.
                        if let Err(e) = state.client().abort_run(&run.run_id, "", ctx).await {
                            tracing::warn!(run_id = %run.run_id, error = %e, "AbortRun failed");
                        }
                    }
                    RunEvent::Text(t) => fold.text.push_str(&t.text),
                    RunEvent::ToolCall(tc) => fold.push_call(&tc),
                    RunEvent::Finished(f) => {
                        state.metrics().run_finished(started_at, &f);
                        // agent-svc stores the turn before it sends `finished`, so a
                        // `chat.history` sent on `final` sees the turn.
                        return Outcome::Final(f);
                    }
                    RunEvent::Started(_) => {}
                }
                if !scheduled && fold.unsent() {
                    let now = tokio::time::Instant::now();
                    if now >= next_delta {
                        flush_delta(run, fold);
                        next_delta = now + DELTA_INTERVAL;
                    } else {
                        timer.as_mut().reset(next_delta);
                        scheduled = true;
                    }
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
    use crate::ws::outbox::Outbox;
    use crate::ws::protocol;
    use serde_json::{json, Value};

    fn events(rx: &mut tokio::sync::mpsc::UnboundedReceiver<crate::ws::outbox::Out>) -> Vec<Value> {
        let mut out = Vec::new();
        while let Ok(crate::ws::outbox::Out::Text(t)) = rx.try_recv() {
            out.push(serde_json::from_str(&t).unwrap());
        }
        out
    }

    #[test]
    fn subscribers_get_their_reply_first_and_their_own_seq() {
        let run = ChatRun::new("r1".into(), "main".into(), String::new());
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

        assert!(matches!(rx_a.try_recv(), Ok(crate::ws::outbox::Out::Text(t)) if t == "reply started"));
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

    fn delta(index: u32, id: &str, name: &str, arguments: &str) -> ToolCallDelta {
        ToolCallDelta { index, id: id.into(), name: name.into(), arguments: arguments.into() }
    }

    #[test]
    fn tool_call_fragments_fold_by_index() {
        let mut f = Fold::default();
        f.push_call(&delta(0, "call_a", "get_", "{\"ci"));
        f.push_call(&delta(0, "", "weather", "ty\":1}"));
        // A later fragment's id does not change the one settled by the first.
        f.push_call(&delta(1, "call_b", "x", "{}"));
        f.push_call(&delta(1, "other", "", ""));
        // An index agent-svc never sent before is a call of its own.
        f.push_call(&delta(7, "", "", "!"));
        let calls = f.calls_json();
        assert_eq!(calls.len(), 3);
        assert_eq!((calls[0].id, calls[0].name), ("call_a", "get_weather"));
        assert_eq!(calls[0].arguments, "{\"city\":1}");
        assert_eq!((calls[1].id, calls[1].arguments), ("call_b", "{}"));
        assert_eq!((calls[2].id, calls[2].arguments), ("call_7", "!"));
        let v = serde_json::to_value(f.message(&calls)).unwrap();
        assert_eq!(
            v["toolCalls"][0],
            json!({"id": "call_a", "name": "get_weather", "arguments": "{\"city\":1}"})
        );
        assert_eq!(
            f.calls.calls().iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
            ["call_a", "call_b", "call_7"]
        );
    }

    #[test]
    fn deltas_carry_tool_call_fragments_once_with_the_cumulative_message() {
        let run = ChatRun::new("r1".into(), "main".into(), String::new());
        let (a, mut rx) = Outbox::new(1 << 20);
        run.reply_and_subscribe(&a, |_| {});
        let mut f = Fold::default();
        f.text.push_str("Let me check.");
        f.push_call(&delta(1, "call_b", "time", "{"));
        f.push_call(&delta(0, "call_a", "weather", "{\"ci"));
        flush_delta(&run, &mut f);
        f.push_call(&delta(0, "", "", "ty\":1}"));
        flush_delta(&run, &mut f);
        flush_delta(&run, &mut f); // nothing new: no event
        f.push_call(&delta(1, "", "", "}"));
        f.push_call(&delta(0, "", "", ""));
        flush_delta(&run, &mut f);
        let got: Vec<Value> = events(&mut rx).into_iter().map(|e| e["payload"].clone()).collect();
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(got[0]["deltaText"], "Let me check.");
        assert_eq!(
            got[0]["deltaToolCalls"],
            json!([{"index": 0, "id": "call_a", "name": "weather", "arguments": "{\"ci"},
                   {"index": 1, "id": "call_b", "name": "time", "arguments": "{"}])
        );
        // Only what moved, without id and name; `deltaText` is there, empty.
        assert_eq!(got[1]["deltaText"], "");
        assert_eq!(got[1]["deltaToolCalls"], json!([{"index": 0, "arguments": "ty\":1}"}]));
        assert_eq!(got[2]["deltaToolCalls"], json!([{"index": 1, "arguments": "}"}]));
        // `message` is cumulative: the text and every call so far.
        assert_eq!(got[1]["message"]["content"][0]["text"], "Let me check.");
        assert_eq!(
            got[2]["message"]["toolCalls"],
            json!([{"id": "call_a", "name": "weather", "arguments": "{\"city\":1}"},
                   {"id": "call_b", "name": "time", "arguments": "{}"}])
        );
        assert_eq!(got.iter().map(|e| e["state"].as_str().unwrap()).collect::<Vec<_>>(), ["delta"; 3]);
    }

    #[test]
    fn text_deltas_are_unchanged_without_tool_calls() {
        let run = ChatRun::new("r1".into(), "main".into(), String::new());
        let (a, mut rx) = Outbox::new(1 << 20);
        run.reply_and_subscribe(&a, |_| {});
        let mut f = Fold { text: "Hi".into(), ..Default::default() };
        flush_delta(&run, &mut f);
        let got = events(&mut rx);
        assert_eq!(
            got[0]["payload"],
            json!({"runId": "r1", "sessionKey": "main", "seq": 1, "state": "delta", "deltaText": "Hi",
                   "message": {"role": "assistant", "content": [{"type": "text", "text": "Hi"}]}})
        );
    }
}
