//! Driving one `chat.send` run: calling agent-svc when the run's turn comes,
//! consuming its events and sending them to the subscribers as `chat` events.
//!
//! Deltas are coalesced: the first text goes out at once, later text at most
//! every [`DELTA_INTERVAL`] (each `delta` carries the cumulative `message`, so
//! one event per upstream token would cost bytes quadratic in the answer).

use super::order::{ActiveRun, Turn};
use super::payload::{AssistantMessage, ChatPayload, TextPart, ToolCallJson, UsageJson};
use super::{ChatRun, RunState};
use crate::client::{is_token, CallContext, RunEvent, RunEvents};
use crate::error::ApiError;
use crate::state::AppState;
use futures::StreamExt;
use services::proto::{AgentRunRequest, RunFinished, ToolCall};
use services::run_events::{self, ToolCallFold};
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
    calls: ToolCallFold,
}

impl Fold {
    fn message<'a>(&'a self, calls: &'a [ToolCallJson<'a>]) -> AssistantMessage<'a> {
        AssistantMessage {
            role: "assistant",
            content: [TextPart { kind: "text", text: &self.text }],
            tool_calls: calls,
        }
    }
}

/// Complete calls as the WebSocket protocol spells them.
fn calls_json(calls: &[ToolCall]) -> Vec<ToolCallJson<'_>> {
    calls.iter().map(|c| ToolCallJson { id: &c.id, name: &c.name, arguments: &c.arguments }).collect()
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
    let complete = fold.calls.calls();
    let calls = calls_json(&complete);
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
                    RunEvent::Text(t) if !t.text.is_empty() => {
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
                    RunEvent::ToolCall(tc) => {
                        fold.calls.push_delta(&tc);
                    }
                    RunEvent::Finished(f) => {
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

    #[test]
    fn tool_call_fragments_fold_by_index() {
        let mut f = Fold::default();
        f.calls.push(0, "call_a", "get_", "{\"ci");
        f.calls.push(0, "", "weather", "ty\":1}");
        f.calls.push(1, "call_b", "x", "{}");
        // An index agent-svc never sent before is a call of its own.
        f.calls.push(7, "", "", "!");
        let calls = f.calls.calls();
        assert_eq!(calls.len(), 3);
        assert_eq!((calls[0].id.as_str(), calls[0].name.as_str()), ("call_a", "get_weather"));
        assert_eq!(calls[0].arguments, "{\"city\":1}");
        assert_eq!(calls[1].arguments, "{}");
        assert_eq!((calls[2].id.as_str(), calls[2].arguments.as_str()), ("call_7", "!"));
        let json = calls_json(&calls);
        let v = serde_json::to_value(f.message(&json)).unwrap();
        assert_eq!(
            v["toolCalls"][0],
            json!({"id": "call_a", "name": "get_weather", "arguments": "{\"city\":1}"})
        );
    }
}
