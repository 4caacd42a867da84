//! Upstream message assembly (SPEC §4 "Sessions"): the agent's system prompt plus
//! the request's system/developer texts as one system message, then the
//! transcript, then the new turn.

use crate::error::AgentError;
use crate::sessions::StoredMessage;
use services::proto::{content_part::Part, ContentPart, Message};

/// A request's messages, split by what they are for.
#[derive(Debug, Default, PartialEq)]
pub struct SplitMessages {
    /// The request's system/developer texts, joined.
    pub system: Option<String>,
    /// Non-system messages up to and including the last assistant message.
    pub history: Vec<Message>,
    /// Non-system messages after the last assistant message.
    pub new_turn: Vec<Message>,
}

fn is_system(m: &Message) -> bool {
    m.role == "system" || m.role == "developer"
}

/// The text parts of a message joined with newlines.
pub fn message_text(m: &Message) -> String {
    let mut out = String::new();
    for p in &m.parts {
        if let Some(Part::Text(t)) = &p.part {
            if !out.is_empty() {
                out.push('\n');
            }
            out.push_str(t);
        }
    }
    out
}

/// Splits the request's messages. The new turn must hold a user or tool message.
pub fn split(messages: Vec<Message>) -> Result<SplitMessages, AgentError> {
    let last_assistant = messages.iter().rposition(|m| m.role == "assistant");
    let mut out = SplitMessages::default();
    let mut system = String::new();
    for (i, m) in messages.into_iter().enumerate() {
        if is_system(&m) {
            let text = message_text(&m);
            if !text.is_empty() {
                if !system.is_empty() {
                    system.push_str("\n\n");
                }
                system.push_str(&text);
            }
        } else if last_assistant.is_some_and(|la| i <= la) {
            out.history.push(m);
        } else {
            out.new_turn.push(m);
        }
    }
    if !out.new_turn.iter().any(|m| m.role == "user" || m.role == "tool") {
        return Err(AgentError::invalid("messages", "Missing user message in `messages`."));
    }
    out.system = (!system.is_empty()).then_some(system);
    Ok(out)
}

/// A plain text message.
pub fn text_message(role: &str, text: String) -> Message {
    Message {
        role: role.to_string(),
        parts: vec![ContentPart { part: Some(Part::Text(text)) }],
        text_only: true,
        ..Default::default()
    }
}

/// Builds what goes upstream. Interrupted assistant messages keep only their
/// text (a half-made tool call would make the provider reject the history) and
/// are skipped when they have none.
pub fn upstream_messages(
    agent_prompt: Option<&str>,
    request_system: Option<&str>,
    transcript: &[StoredMessage],
    client_history: &[Message],
    new_turn: &[Message],
) -> Vec<Message> {
    let mut out = Vec::with_capacity(1 + transcript.len() + client_history.len() + new_turn.len());
    let system = match (agent_prompt.filter(|p| !p.is_empty()), request_system) {
        (Some(a), Some(r)) => Some(format!("{a}\n\n{r}")),
        (Some(a), None) => Some(a.to_string()),
        (None, Some(r)) => Some(r.to_string()),
        (None, None) => None,
    };
    if let Some(s) = system {
        out.push(text_message("system", s));
    }
    for stored in transcript {
        if stored.interrupted && stored.message.role == "assistant" {
            let text = message_text(&stored.message);
            if !text.is_empty() {
                out.push(text_message("assistant", text));
            }
        } else {
            out.push(stored.message.clone());
        }
    }
    out.extend(client_history.iter().cloned());
    out.extend(new_turn.iter().cloned());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use services::proto::ToolCall;

    fn msg(role: &str, text: &str) -> Message {
        text_message(role, text.to_string())
    }

    #[test]
    fn splits_system_history_and_new_turn() {
        let s = split(vec![
            msg("system", "S1"),
            msg("user", "u1"),
            msg("assistant", "a1"),
            msg("developer", "D"),
            msg("user", "u2"),
            msg("user", "u3"),
        ])
        .unwrap();
        assert_eq!(s.system.as_deref(), Some("S1\n\nD"));
        assert_eq!(s.history, vec![msg("user", "u1"), msg("assistant", "a1")]);
        assert_eq!(s.new_turn, vec![msg("user", "u2"), msg("user", "u3")]);
    }

    #[test]
    fn all_messages_are_new_without_assistant() {
        let s = split(vec![msg("user", "a"), msg("user", "b")]).unwrap();
        assert!(s.history.is_empty());
        assert_eq!(s.new_turn.len(), 2);
        assert_eq!(s.system, None);
    }

    #[test]
    fn tool_results_make_a_new_turn() {
        let call = Message {
            role: "assistant".into(),
            tool_calls: vec![ToolCall {
                id: "c1".into(),
                r#type: "function".into(),
                name: "f".into(),
                arguments: "{}".into(),
            }],
            ..Default::default()
        };
        let tool = Message { tool_call_id: Some("c1".into()), ..msg("tool", "42") };
        let s = split(vec![msg("user", "q"), call, tool.clone()]).unwrap();
        assert_eq!(s.new_turn, vec![tool]);
    }

    #[test]
    fn missing_user_message() {
        for msgs in [vec![], vec![msg("system", "s")], vec![msg("user", "u"), msg("assistant", "a")]] {
            match split(msgs) {
                Err(AgentError::InvalidRequest { message, param }) => {
                    assert_eq!(message, "Missing user message in `messages`.");
                    assert_eq!(param.as_deref(), Some("messages"));
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn upstream_order_and_interrupted_sanitising() {
        let stored = |m: Message, interrupted| StoredMessage {
            message: m,
            interrupted,
            created_at_ms: 0,
            run_id: String::new(),
        };
        let half_call = Message {
            tool_calls: vec![ToolCall {
                id: "c".into(),
                r#type: "function".into(),
                name: "f".into(),
                arguments: "{\"a".into(),
            }],
            ..msg("assistant", "partial")
        };
        let empty_interrupted = Message { role: "assistant".into(), ..Default::default() };
        let transcript = vec![
            stored(msg("user", "u1"), false),
            stored(half_call, true),
            stored(msg("user", "u2"), false),
            stored(empty_interrupted, true),
        ];
        let out = upstream_messages(Some("AGENT"), Some("REQ"), &transcript, &[], &[msg("user", "now")]);
        assert_eq!(
            out,
            vec![
                msg("system", "AGENT\n\nREQ"),
                msg("user", "u1"),
                msg("assistant", "partial"),
                msg("user", "u2"),
                msg("user", "now"),
            ]
        );
        let out = upstream_messages(None, None, &[], &[msg("user", "h")], &[msg("user", "n")]);
        assert_eq!(out, vec![msg("user", "h"), msg("user", "n")]);
    }
}
