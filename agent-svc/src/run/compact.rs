//! Keeping a stable session's prompt within its budget (SPEC §9).
//!
//! Before each turn, the session's context (its latest summary and the
//! messages from its context start on) is measured with the estimator of
//! `budget.rs`. Once the prompt would pass `compaction.threshold` of the
//! budget, the older part is compacted, keeping word for word the newest turns
//! that fit `compaction.keepRecent` of the budget (cut where a user turn
//! starts, so a tool call never goes without its result):
//!
//! - `summarize`: the agent's first model is asked, in a separate call with
//!   [`summary_prompt`], to summarise the previous summary and the older turns;
//!   the summary is stored as an entry and the context start moves past them.
//! - `truncate`: only the context start moves.
//! - `off`: nothing is stored; the turn sends the newest turns that fit.
//!
//! Compacted turns stay in the store (history flags them). A summary that
//! fails (an error, [`SUMMARY_TIMEOUT`], an empty answer) falls back to
//! truncation for that turn: compaction never fails the user's turn. It runs
//! while the run holds the session's turn, so it is serialized with the
//! session's other turns, across replicas too.

use super::assemble::{self, SUMMARY_HEADING};
use super::budget::{self, keep_from, shared_tokens, text_tokens, BYTES_PER_TOKEN, MESSAGE_OVERHEAD};
use super::prepare::Prepared;
use super::Runner;
use crate::error::AgentError;
use crate::message::SharedMessage;
use crate::providers::{ProviderEvent, ProviderRequest};
use crate::sessions::{now_ms, Compaction, StoredMessage};
use futures::StreamExt;
use services::config::CompactionMode;
use services::messages::message_text;
use services::proto::{content_part::Part, Message};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

/// The longest a summary call may take before the turn falls back to truncation.
pub const SUMMARY_TIMEOUT: Duration = Duration::from_secs(60);

/// The system prompt of the summary call; `{words}` is about three quarters of
/// `compaction.summaryMaxTokens`.
pub const SUMMARY_PROMPT: &str = "You are compacting a conversation between a user and an AI assistant so \
that it can go on within a limited context. Write a summary that will replace the conversation below for \
the assistant: keep every fact, name, number, decision, instruction and preference the user gave, what \
the assistant did, found and promised, tool results that still matter, and the questions still open. \
Write in the conversation's language, without preamble, in at most {words} words.";

/// The summary call's system prompt for a summary of at most `max_tokens`.
pub fn summary_prompt(max_tokens: u32) -> String {
    SUMMARY_PROMPT.replace("{words}", &(u64::from(max_tokens) * 3 / 4).max(1).to_string())
}

/// What a turn sends of its session: the summary and the messages after it,
/// and what fitting did.
pub(super) struct Fitted {
    pub(super) summary: Option<String>,
    pub(super) window: Vec<Arc<StoredMessage>>,
    /// The context start moved (older entries compacted).
    pub(super) compacted: bool,
    /// A new summary was stored.
    pub(super) summarized: bool,
    /// Estimated tokens of the stored context (summary and window) before.
    pub(super) tokens_before: u64,
}

impl Fitted {
    fn unchanged(summary: Option<String>, window: Vec<Arc<StoredMessage>>, tokens_before: u64) -> Fitted {
        Fitted { summary, window, compacted: false, summarized: false, tokens_before }
    }

    /// Estimated tokens of the context sent (summary and window).
    pub(super) fn tokens(&self) -> u64 {
        self.summary.as_deref().map_or(0, summary_cost)
            + budget::messages_tokens(self.window.iter().map(|m| &m.message))
    }
}

impl Runner {
    /// The session's context, made to fit `budget`: compacted (and the session
    /// changed) past the threshold, or at once when `force` (the provider said
    /// the prompt was too long). Fails only when the new turn and the system
    /// prompt alone are over the budget, or the store fails to read.
    pub(super) async fn fit_context(
        &self,
        p: &Prepared,
        budget: u64,
        force: bool,
    ) -> Result<Fitted, AgentError> {
        let ctx = self.store.context(&p.session_key).await?;
        let fixed = fixed_tokens(p);
        if fixed > budget {
            return Err(over_budget(p, fixed, budget));
        }
        let mut summary = ctx.summary.map(|s| message_text(&s.message));
        let window = ctx.window;
        let summary_tokens = summary.as_deref().map_or(0, summary_cost);
        let stored_tokens = summary_tokens + budget::messages_tokens(window.iter().map(|m| &m.message));
        let total = fixed + stored_tokens;
        let cfg = &p.agent.compaction;
        if !force && total as f64 <= cfg.threshold * budget as f64 {
            return Ok(Fitted::unchanged(summary, window, stored_tokens));
        }
        let tokens: Vec<u64> = window.iter().map(|m| shared_tokens(&m.message)).collect();
        let refs: Vec<&Message> = window.iter().map(|m| m.message.message()).collect();
        if cfg.mode == CompactionMode::Off {
            let k = keep_from(&refs, &tokens, budget.saturating_sub(fixed + summary_tokens));
            return Ok(Fitted::unchanged(summary, window[k..].to_vec(), stored_tokens));
        }

        // Room for the newest turns: their share of the budget, and never more
        // than what the summary (the one there, or the one to come) leaves.
        let summary_room = match cfg.mode {
            CompactionMode::Summarize => {
                summary_tokens.max(u64::from(cfg.summary_max_tokens) + summary_cost(""))
            }
            _ => summary_tokens,
        };
        let share = (cfg.keep_recent * budget as f64) as u64;
        let room = share.min(budget.saturating_sub(fixed + summary_room));
        let k = keep_from(&refs, &tokens, room);
        let start_seq = window.get(k).map_or_else(|| window.last().map_or(0, |m| m.seq + 1), |m| m.seq);
        let (older, kept) = window.split_at(k);

        let mut new_summary = None;
        let summarized;
        if cfg.mode == CompactionMode::Summarize && !older.is_empty() {
            match self.summarize(p, summary.as_deref(), older, budget).await {
                Ok(text) => new_summary = Some(text),
                Err(why) => {
                    metrics::counter!("openclaw_agent_compactions_total", "outcome" => "fallback")
                        .increment(1);
                    tracing::warn!(session = %p.session_key, error = %why, "summarising failed; truncating this turn");
                }
            }
        }
        if !older.is_empty() {
            let outcome = if new_summary.is_some() { "summarized" } else { "truncated" };
            metrics::counter!("openclaw_agent_compactions_total", "outcome" => outcome).increment(1);
            let entry = new_summary.as_ref().map(|text| StoredMessage {
                message: SharedMessage::shared(assemble::text_message("system", text.clone())),
                created_at_ms: now_ms(),
                run_id: p.run_id.clone(),
                summary: true,
                ..Default::default()
            });
            // The turn goes on with the compacted context even if storing it
            // failed: the next turn simply compacts again.
            if let Err(e) = self.store.compact(&p.session_key, Compaction { start_seq, summary: entry }).await
            {
                tracing::warn!(session = %p.session_key, error = %e, "storing a compaction failed");
            }
            summarized = new_summary.is_some();
            if summarized {
                summary = new_summary;
            }
        } else {
            summarized = false;
        }

        // Whatever the estimates did, what is sent stays within the budget.
        let summary_tokens = summary.as_deref().map_or(0, summary_cost);
        let kept_refs = &refs[k..];
        let k2 = keep_from(kept_refs, &tokens[k..], budget.saturating_sub(fixed + summary_tokens));
        let summary = if fixed + summary_tokens > budget { None } else { summary };
        Ok(Fitted {
            summary,
            window: kept[k2..].to_vec(),
            compacted: !older.is_empty(),
            summarized,
            tokens_before: stored_tokens,
        })
    }

    /// Asks the agent's first model for a summary of `previous` and `older`;
    /// the reason on failure.
    async fn summarize(
        &self,
        p: &Prepared,
        previous: Option<&str>,
        older: &[Arc<StoredMessage>],
        budget: u64,
    ) -> Result<String, String> {
        let model = p.chain.first().ok_or("no model to summarise with")?;
        let provider = self.registry.provider(&model.provider).ok_or("unknown provider")?.clone();
        let cfg = &p.agent.compaction;
        let max =
            self.registry.max_tokens(model).map_or(cfg.summary_max_tokens, |c| c.min(cfg.summary_max_tokens));
        let prompt = summary_prompt(max);
        let room = budget.saturating_sub(u64::from(max) + text_tokens(&prompt) + 2 * MESSAGE_OVERHEAD);
        let req = ProviderRequest {
            model: model.model.clone(),
            messages: vec![
                SharedMessage::shared(assemble::text_message("system", prompt)),
                SharedMessage::shared(assemble::text_message("user", render(previous, older, room))),
            ],
            params: Default::default(),
            max_tokens: Some(max),
            tools: Vec::new(),
            tool_choice: None,
            response_format_json: None,
        };
        let collect = async {
            let mut stream = provider.stream(req).await.map_err(|e| e.to_string())?;
            let mut text = String::new();
            while let Some(ev) = stream.next().await {
                match ev {
                    Ok(ProviderEvent::Text(t)) => text.push_str(&t),
                    Ok(_) => {}
                    Err(e) => return Err(e.to_string()),
                }
            }
            Ok(text)
        };
        let text = tokio::time::timeout(SUMMARY_TIMEOUT, collect)
            .await
            .map_err(|_| format!("no summary within {}s", SUMMARY_TIMEOUT.as_secs()))??;
        let text = text.trim();
        if text.is_empty() {
            return Err("the model answered with an empty summary".into());
        }
        Ok(truncate_bytes(text, u64::from(max) * BYTES_PER_TOKEN).to_string())
    }
}

/// Tokens of the system prompt (agent's and request's) and the new turn.
fn fixed_tokens(p: &Prepared) -> u64 {
    let system = assemble::system_text(p.agent.system_prompt.as_deref(), p.system.as_deref(), None);
    system.as_deref().map_or(0, |s| text_tokens(s) + MESSAGE_OVERHEAD) + budget::messages_tokens(&p.new_turn)
}

/// Tokens a summary adds to the system message.
fn summary_cost(summary: &str) -> u64 {
    text_tokens(summary) + text_tokens(SUMMARY_HEADING) + MESSAGE_OVERHEAD
}

/// The `400` for a turn that cannot fit whatever is dropped.
pub(super) fn over_budget(p: &Prepared, needed: u64, budget: u64) -> AgentError {
    AgentError::ContextTooLong(format!(
        "This request needs about {needed} tokens of context, over agent '{}''s budget of {budget} tokens.",
        p.agent.id
    ))
}

/// The older turns as plain text for the summary call, newest kept first when
/// they do not all fit `room` tokens; the previous summary always leads.
fn render(previous: Option<&str>, older: &[Arc<StoredMessage>], room: u64) -> String {
    let mut lines: Vec<String> = Vec::new();
    let mut used = previous.map_or(0, text_tokens);
    let mut omitted = false;
    for m in older.iter().rev() {
        let line = render_message(&m.message);
        let cost = text_tokens(&line) + 1;
        if used + cost > room {
            omitted = true;
            break;
        }
        used += cost;
        lines.push(line);
    }
    let mut out = String::new();
    if let Some(p) = previous {
        let _ = write!(out, "Summary so far:\n{p}\n\n");
    }
    if omitted {
        out.push_str("(earlier turns omitted)\n");
    }
    for line in lines.iter().rev() {
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// One message as a transcript line: `User: …`, `Assistant called f({…})`, `Tool result (id): …`.
fn render_message(m: &Message) -> String {
    let mut text = String::new();
    for part in &m.parts {
        match &part.part {
            Some(Part::Text(t)) => {
                if !text.is_empty() {
                    text.push('\n');
                }
                text.push_str(t);
            }
            Some(Part::ImageUrl(_)) => text.push_str(" [image]"),
            None => {}
        }
    }
    let mut out = match m.role.as_str() {
        "user" => format!("User: {text}"),
        "assistant" => format!("Assistant: {text}"),
        "tool" => format!("Tool result ({}): {text}", m.tool_call_id.as_deref().unwrap_or("")),
        other => format!("{other}: {text}"),
    };
    for c in &m.tool_calls {
        let _ = write!(out, "\nAssistant called {}({})", c.name, c.arguments);
    }
    out
}

/// `s` cut to at most `max` bytes at a character boundary.
fn truncate_bytes(s: &str, max: u64) -> &str {
    let max = usize::try_from(max).unwrap_or(usize::MAX);
    if s.len() <= max {
        return s;
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    &s[..cut]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::assemble::text_message;
    use services::proto::ToolCall;

    fn stored(role: &str, text: &str) -> Arc<StoredMessage> {
        shared(text_message(role, text.into()))
    }

    fn shared(message: Message) -> Arc<StoredMessage> {
        Arc::new(StoredMessage { message: SharedMessage::shared(message), ..Default::default() })
    }

    #[test]
    fn the_prompt_names_a_length() {
        assert!(summary_prompt(1000).ends_with("in at most 750 words."));
        assert!(!summary_prompt(1).contains("{words}"));
    }

    #[test]
    fn rendering_keeps_the_summary_and_the_newest_turns() {
        let call =
            ToolCall { id: "c1".into(), r#type: "function".into(), name: "f".into(), arguments: "{}".into() };
        let older = vec![
            stored("user", "first question"),
            shared(Message { tool_calls: vec![call], ..text_message("assistant", String::new()) }),
            shared(Message { tool_call_id: Some("c1".into()), ..text_message("tool", "42".into()) }),
            stored("assistant", "the answer is 42"),
        ];
        let all = render(Some("they met"), &older, 10_000);
        assert_eq!(
            all,
            "Summary so far:\nthey met\n\nUser: first question\nAssistant: \nAssistant called f({})\n\
             Tool result (c1): 42\nAssistant: the answer is 42\n"
        );
        let some = render(None, &older, 12);
        assert!(some.starts_with("(earlier turns omitted)\n"), "{some}");
        assert!(
            some.ends_with("Assistant: the answer is 42\n") && !some.contains("first question"),
            "{some}"
        );
    }

    #[test]
    fn truncation_respects_characters() {
        assert_eq!(truncate_bytes("héllo", 2), "h");
        assert_eq!(truncate_bytes("héllo", 3), "hé");
        assert_eq!(truncate_bytes("abc", 10), "abc");
    }
}
