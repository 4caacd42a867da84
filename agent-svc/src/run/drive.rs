//! The life of a started run: wait for the session's turn, load the
//! transcript, try the model chain, forward deltas, store the turn and send
//! the last event. Everything here runs in the run's own task.
//!
//! A stable session's turn (the user's messages and the assistant's answer,
//! marked interrupted when the run did not finish) is stored in one append at
//! its end: a turn is in the transcript whole or not at all, so a store that
//! fails half-way, or a replica that dies mid-run, never leaves half a turn
//! behind, and `finished` (the client's `200`) is only ever sent for a turn
//! that is stored.

use super::prepare::Prepared;
use super::produced::Produced;
use super::registry::{Cancel, RunCancel};
use super::{assemble, budget, compact, event, EventTx, RunItem, Runner};
use crate::error::AgentError;
use crate::message::SharedMessage;
use crate::providers::ProviderError;
use crate::sessions::queue::{QueuePlace, SessionTurn};
use crate::sessions::{now_ms, SessionStore, StoredMessage, TurnLock};
use futures::StreamExt;
use services::proto::{agent_run_event::Event, RunFinished};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a run's last event may wait for a caller that stopped reading.
const LAST_EVENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Stands in for "no deadline" (a year), so that deadlines cannot overflow.
const FAR_FUTURE: Duration = Duration::from_secs(31_536_000);

/// How a run ended.
enum Outcome {
    Finished { finish_reason: String, model: String },
    Failed(AgentError),
    TimedOut,
    Cancelled(Cancel),
}

/// The deltas could not be delivered: the caller went away.
struct Gone;

/// Sends a run's last event (or error); a caller that has stopped reading does
/// not keep the run alive past [`LAST_EVENT_TIMEOUT`].
async fn send_last(tx: &EventTx, item: RunItem) {
    let _ = tokio::time::timeout(LAST_EVENT_TIMEOUT, tx.send(Box::new(item))).await;
}

/// The error a cancelled run ends with; a caller that went away gets nothing.
fn cancelled_error(why: Cancel) -> Option<AgentError> {
    match why {
        Cancel::Aborted => Some(AgentError::Aborted),
        Cancel::Shutdown => Some(AgentError::ShuttingDown),
        Cancel::ClientGone => None,
    }
}

fn provider_error(e: ProviderError) -> AgentError {
    match e {
        ProviderError::RateLimited(m) => AgentError::RateLimited(m),
        ProviderError::Rejected(m) => AgentError::UpstreamRejected(m),
        ProviderError::ContextTooLong(m) => AgentError::ContextTooLong(m),
        ProviderError::Upstream(m) => AgentError::Upstream(m),
        ProviderError::Timeout(m) => AgentError::Timeout(m),
    }
}

fn provider_error_kind(e: &ProviderError) -> &'static str {
    match e {
        ProviderError::RateLimited(_) => "rate_limited",
        ProviderError::Rejected(_) => "rejected",
        ProviderError::ContextTooLong(_) => "context_too_long",
        ProviderError::Upstream(_) => "upstream",
        ProviderError::Timeout(_) => "timeout",
    }
}

/// Removes a run from the registry and the in-flight count when dropped.
struct RunCleanup<'a> {
    runner: &'a Runner,
    run_id: String,
}

impl Drop for RunCleanup<'_> {
    fn drop(&mut self) {
        self.runner.runs.remove(&self.run_id);
        metrics::gauge!("openclaw_agent_runs_in_flight").decrement(1.0);
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
            let queued = place.turn().await?;
            let locked = store.lock_turn(key).await?;
            Ok(Some((queued, locked)))
        }
        None => Ok(None),
    }
}

impl Runner {
    /// The whole life of a started run, from its place in the session queue to
    /// the registry cleanup.
    pub(super) async fn run(
        self: Arc<Self>,
        mut p: Prepared,
        place: Option<QueuePlace>,
        tx: EventTx,
        cancel: RunCancel,
    ) {
        // Cleans up on every path, a panic included, so shutdown never waits on a ghost.
        let _cleanup = RunCleanup { runner: &self, run_id: p.run_id.clone() };
        // The run timeout covers the wait for the session's turn too.
        let now = Instant::now();
        let deadline =
            tokio::time::Instant::from_std(now.checked_add(p.agent.timeout).unwrap_or(now + FAR_FUTURE));
        // Waiting for the session's turn is cancellable like the rest of the run;
        // a turn cancelled while queued stores nothing.
        let waited = tokio::select! {
            biased;
            _ = cancel.token().cancelled() => None,
            r = tokio::time::timeout_at(deadline, wait_turn(&*self.store, &p.session_key, place)) => {
                Some(r.unwrap_or_else(|_| {
                    Err(AgentError::Timeout(format!(
                        "Run timed out after {}s waiting for the session's turn.",
                        p.agent.timeout.as_secs_f64()
                    )))
                }))
            }
        };
        let begun = match waited {
            Some(Ok(turn)) => {
                cancel.mark_running();
                p.began_at_ms = now_ms();
                // Fitting may call the model to summarise: cancellable like the rest.
                tokio::select! {
                    biased;
                    _ = cancel.token().cancelled() => None,
                    r = tokio::time::timeout_at(deadline, self.begin_turn(&mut p, false)) => Some(match r {
                        Ok(r) => r.map(|()| turn),
                        Err(_) => Err(AgentError::Timeout(format!(
                            "Run timed out after {}s while compacting the session.",
                            p.agent.timeout.as_secs_f64()
                        ))),
                    }),
                }
            }
            Some(Err(e)) => Some(Err(e)),
            None => None,
        };
        match begun {
            Some(Ok(turn)) => self.drive(&mut p, turn, &tx, &cancel, deadline).await,
            Some(Err(e)) => {
                metrics::counter!("openclaw_agent_runs_total", "outcome" => "refused").increment(1);
                send_last(&tx, Err(e)).await;
            }
            None => {
                metrics::counter!("openclaw_agent_runs_total", "outcome" => "cancelled").increment(1);
                if let Some(e) = cancelled_error(cancel.reason()) {
                    send_last(&tx, Err(e)).await;
                }
            }
        }
    }

    /// Assembles the upstream messages within the budget: a stable session's
    /// context is fitted (and compacted: `compact.rs`; at once when `force`), a
    /// stateless request over the budget is refused.
    async fn begin_turn(&self, p: &mut Prepared, force: bool) -> Result<(), AgentError> {
        let prompt = p.agent.system_prompt.as_deref();
        if p.stable {
            let fitted = self.fit_context(p, p.budget, force).await?;
            let system = assemble::system_text(prompt, p.system.as_deref(), fitted.summary.as_deref());
            p.base.messages = assemble::upstream_messages(system, &fitted.window, &[], &p.new_turn);
        } else {
            let system = assemble::system_text(prompt, p.system.as_deref(), None);
            let messages = assemble::upstream_messages(system, &[], &p.client_history, &p.new_turn);
            let needed = budget::messages_tokens(&messages);
            if needed > p.budget {
                return Err(compact::over_budget(p, needed, p.budget));
            }
            p.base.messages = messages;
        }
        Ok(())
    }

    /// [`Runner::attempts`], and once more after compacting when the provider
    /// said a stable session's prompt was over its window: the budget was
    /// evidently too high, so the retry fits half of what was sent.
    async fn attempts_refitting(
        &self,
        p: &mut Prepared,
        tx: &EventTx,
        produced: &mut Produced,
        started_at: Instant,
    ) -> Result<String, Option<AgentError>> {
        match self.attempts(p, tx, produced, started_at).await {
            Err(Some(AgentError::ContextTooLong(m))) if p.stable && !produced.first_token => {
                tracing::info!(session = %p.session_key, error = %m, "the provider found the prompt too long; compacting and retrying");
                let sent = budget::messages_tokens(&p.base.messages);
                p.budget = (p.budget.min(sent) / 2).max(1);
                self.begin_turn(p, true).await.map_err(Some)?;
                produced.restart();
                self.attempts(p, tx, produced, started_at).await
            }
            other => other,
        }
    }

    /// Runs the model chain under the deadline and the cancel token, stores
    /// the assistant message and sends the last event.
    async fn drive(
        &self,
        p: &mut Prepared,
        turn: Option<(SessionTurn, TurnLock)>,
        tx: &EventTx,
        cancel: &RunCancel,
        deadline: tokio::time::Instant,
    ) {
        let started_at = Instant::now();
        let mut produced = Produced::default();
        let outcome = tokio::select! {
            biased;
            _ = cancel.token().cancelled() => Outcome::Cancelled(cancel.reason()),
            r = tokio::time::timeout_at(deadline, self.attempts_refitting(p, tx, &mut produced, started_at)) => match r {
                Ok(Ok(model)) => Outcome::Finished { finish_reason: produced.finish_reason(), model },
                Ok(Err(Some(e))) => Outcome::Failed(e),
                Ok(Err(None)) => Outcome::Cancelled(Cancel::ClientGone),
                Err(_) => Outcome::TimedOut,
            },
        };

        // Everything in `attempts` is provider time but for the microseconds of
        // forwarding deltas, which is what the gateway's overhead figure wants.
        let provider_elapsed = started_at.elapsed();
        let finished = matches!(outcome, Outcome::Finished { .. });
        let outcome = match self.store_turn(p, &produced, finished).await {
            Ok(()) => outcome,
            // The answer was not stored: the client must not be told it was.
            Err(e) if finished => Outcome::Failed(e),
            Err(e) => {
                tracing::error!(session = %p.session_key, error = %e, "storing an interrupted turn failed");
                outcome
            }
        };
        drop(turn);

        let label = match &outcome {
            Outcome::Finished { .. } => "finished",
            Outcome::Failed(_) => "failed",
            Outcome::TimedOut => "timeout",
            Outcome::Cancelled(Cancel::Aborted) => "aborted",
            Outcome::Cancelled(_) => "cancelled",
        };
        metrics::counter!("openclaw_agent_runs_total", "outcome" => label).increment(1);
        metrics::histogram!("openclaw_agent_run_duration_seconds").record(started_at.elapsed().as_secs_f64());

        let last = match outcome {
            Outcome::Finished { finish_reason, model } => Some(Ok(event(Event::Finished(RunFinished {
                finish_reason,
                usage: produced.usage(),
                model,
                provider_micros: provider_elapsed.as_micros() as u64,
            })))),
            Outcome::Failed(e) => Some(Err(e)),
            Outcome::TimedOut => Some(Err(AgentError::Timeout(format!(
                "Run timed out after {}s.",
                p.agent.timeout.as_secs_f64()
            )))),
            Outcome::Cancelled(why) => cancelled_error(why).map(Err),
        };
        if let Some(last) = last {
            send_last(tx, last).await;
        }
    }

    /// Stores a stable session's turn in one append: the user's messages, then
    /// the assistant's answer (marked interrupted unless the run finished).
    async fn store_turn(&self, p: &Prepared, produced: &Produced, finished: bool) -> Result<(), AgentError> {
        if !p.stable {
            return Ok(());
        }
        let stored = |message, interrupted, created_at_ms| StoredMessage {
            message,
            interrupted,
            created_at_ms,
            run_id: p.run_id.clone(),
            ..Default::default()
        };
        let mut turn: Vec<StoredMessage> =
            p.new_turn.iter().map(|m| stored(Arc::clone(m), false, p.began_at_ms)).collect();
        turn.push(stored(SharedMessage::shared(produced.assistant_message()), !finished, now_ms()));
        self.store.append(&p.session_key, &p.agent.id, turn).await
    }

    /// Tries each model of the chain until one answers; returns the model that
    /// did. `Err(None)`: the caller went away.
    async fn attempts(
        &self,
        p: &Prepared,
        tx: &EventTx,
        produced: &mut Produced,
        started_at: Instant,
    ) -> Result<String, Option<AgentError>> {
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
            let failure = match provider.stream(req).await {
                Ok(mut stream) => {
                    let mut failure = None;
                    while let Some(item) = stream.next().await {
                        match item {
                            Ok(ev) => {
                                if let Some(delta) = produced.take(ev) {
                                    send(tx, produced, delta, started_at).await.map_err(|Gone| None)?;
                                }
                            }
                            Err(e) => {
                                failure = Some(e);
                                break;
                            }
                        }
                    }
                    match failure {
                        None => {
                            for delta in produced.unannounced() {
                                send(tx, produced, delta, started_at).await.map_err(|Gone| None)?;
                            }
                            return Ok(model.to_string());
                        }
                        Some(e) => e,
                    }
                }
                Err(e) => e,
            };
            metrics::counter!("openclaw_agent_provider_errors_total",
                "provider" => model.provider.clone(), "kind" => provider_error_kind(&failure))
            .increment(1);
            let retryable = !matches!(failure, ProviderError::Rejected(_) | ProviderError::ContextTooLong(_));
            if produced.first_token || !has_next || !retryable {
                return Err(Some(provider_error(failure)));
            }
            tracing::warn!(model = %model, error = %failure, "provider failed before the first token; trying the next model");
            produced.restart();
            last_err = Some(provider_error(failure));
        }
        Err(Some(last_err.unwrap_or_else(|| AgentError::Upstream("no model could be tried".into()))))
    }
}

/// Sends one content or tool-call delta, noting the first token.
async fn send(tx: &EventTx, produced: &mut Produced, delta: Event, started_at: Instant) -> Result<(), Gone> {
    if !produced.first_token {
        produced.first_token = true;
        metrics::histogram!("openclaw_agent_time_to_first_token_seconds")
            .record(started_at.elapsed().as_secs_f64());
    }
    tx.send(Box::new(Ok(event(delta)))).await.map_err(|_| Gone)
}
