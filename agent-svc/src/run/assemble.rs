//! Upstream message assembly (SPEC §4 "Sessions"): the agent's system prompt plus
//! the request's system/developer texts as one system message, then the
//! transcript, then the new turn. How a request splits into those parts is a
//! shared rule: [`services::messages::split`].

use crate::sessions::StoredMessage;
use services::messages::message_text;
use services::proto::{content_part::Part, ContentPart, Message};

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
