//! The context budget (SPEC §9): how many tokens a turn's prompt may hold, how
//! a prompt's size is estimated, and where a transcript may be cut.
//!
//! The estimator is deliberately conservative and needs no tokenizer: one
//! token per [`BYTES_PER_TOKEN`] bytes of UTF-8 text (English runs about 4
//! bytes a token, most other scripts 2-3), [`MESSAGE_OVERHEAD`] per message and
//! a flat [`IMAGE_TOKENS`] per image, whatever its size.

use crate::message::SharedMessage;
use services::proto::{content_part::Part, Message};
use std::sync::Arc;

/// Bytes of UTF-8 text counted as one token.
pub const BYTES_PER_TOKEN: u64 = 3;
/// Tokens counted per message for its role and framing.
pub const MESSAGE_OVERHEAD: u64 = 4;
/// Tokens counted per image part.
pub const IMAGE_TOKENS: u64 = 1_600;
/// A model's context window when its provider entry does not give one.
pub const DEFAULT_CONTEXT_WINDOW: u32 = 128_000;
/// Tokens kept free for the answer when neither the model nor the request caps it.
pub const DEFAULT_ANSWER_RESERVE: u32 = 8_192;

/// Estimated tokens of a text.
pub fn text_tokens(text: &str) -> u64 {
    (text.len() as u64).div_ceil(BYTES_PER_TOKEN)
}

/// Estimated tokens of one message: its texts, images, tool calls and ids.
pub fn message_tokens(m: &Message) -> u64 {
    let mut bytes = m.role.len() + m.name.as_deref().map_or(0, str::len);
    bytes += m.tool_call_id.as_deref().map_or(0, str::len);
    let mut images = 0;
    for p in &m.parts {
        match &p.part {
            Some(Part::Text(t)) => bytes += t.len(),
            Some(Part::ImageUrl(_)) => images += 1,
            None => {}
        }
    }
    for c in &m.tool_calls {
        bytes += c.id.len() + c.name.len() + c.arguments.len();
    }
    MESSAGE_OVERHEAD
        + (bytes as u64).div_ceil(BYTES_PER_TOKEN)
        + images * IMAGE_TOKENS
        + m.tool_calls.len() as u64 * MESSAGE_OVERHEAD
}

/// Estimated tokens of a shared message, worked out once per message (a
/// session's window is counted on every turn).
pub fn shared_tokens(m: &SharedMessage) -> u64 {
    m.tokens(message_tokens)
}

/// Estimated tokens of messages (shared, as a provider request holds them).
pub fn messages_tokens<'a>(messages: impl IntoIterator<Item = &'a Arc<SharedMessage>>) -> u64 {
    messages.into_iter().map(|m| shared_tokens(m)).sum()
}

/// The prompt budget of a model: its window less what the answer may take.
pub fn model_budget(context_window: Option<u32>, answer_cap: Option<u32>) -> u32 {
    let window = context_window.unwrap_or(DEFAULT_CONTEXT_WINDOW);
    let reserve = answer_cap.unwrap_or(DEFAULT_ANSWER_RESERVE).min(window / 2);
    window.saturating_sub(reserve).max(1)
}

/// The first index from which `messages` may be kept while the rest before it
/// is dropped or summarised: where a turn starts (a user message), so that an
/// assistant's tool call and its results are never split. The largest suffix
/// starting at such an index whose tokens fit `room`; `messages.len()` when
/// none does (everything goes).
pub fn keep_from(messages: &[&Message], tokens: &[u64], room: u64) -> usize {
    let mut suffix = 0u64;
    let mut best = messages.len();
    for i in (0..messages.len()).rev() {
        suffix += tokens[i];
        if suffix > room {
            break;
        }
        if messages[i].role == "user" {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::assemble::text_message;
    use services::proto::{ContentPart, ImageUrl, ToolCall};

    fn msg(role: &str, text: &str) -> Message {
        text_message(role, text.to_string())
    }

    #[test]
    fn estimates_are_conservative_and_count_everything() {
        assert_eq!(text_tokens(""), 0);
        assert_eq!(text_tokens("abc"), 1);
        assert_eq!(text_tokens("abcd"), 2);
        // "user" (4 bytes) + 6 bytes of text = 10 bytes → 4 tokens, plus the overhead.
        assert_eq!(message_tokens(&msg("user", "hello!")), MESSAGE_OVERHEAD + 4);
        let image = ContentPart {
            part: Some(Part::ImageUrl(ImageUrl { url: "data:image/png;base64,AAAA".into(), detail: None })),
        };
        let with_image = Message { parts: vec![image], ..msg("user", "") };
        assert_eq!(message_tokens(&with_image), MESSAGE_OVERHEAD + 2 + IMAGE_TOKENS);
        let call =
            ToolCall { id: "c1".into(), r#type: "function".into(), name: "f".into(), arguments: "{}".into() };
        let calling = Message { tool_calls: vec![call], parts: vec![], ..msg("assistant", "") };
        // "assistant" 9 + "c1" 2 + "f" 1 + "{}" 2 = 14 bytes → 5 tokens.
        assert_eq!(message_tokens(&calling), 2 * MESSAGE_OVERHEAD + 5);
        // Three bytes a character: never fewer tokens than characters.
        assert_eq!(text_tokens("日本語"), 3);
    }

    #[test]
    fn budgets_leave_room_for_the_answer() {
        assert_eq!(model_budget(Some(8192), Some(1024)), 7168);
        assert_eq!(model_budget(None, None), DEFAULT_CONTEXT_WINDOW - DEFAULT_ANSWER_RESERVE);
        // An answer cap larger than the window keeps half of it for the prompt.
        assert_eq!(model_budget(Some(1000), Some(4000)), 500);
    }

    #[test]
    fn cuts_fall_where_a_turn_starts_and_keep_what_fits() {
        let call =
            ToolCall { id: "c".into(), r#type: "function".into(), name: "f".into(), arguments: "{}".into() };
        let m = [
            msg("user", "u1"),
            Message { tool_calls: vec![call], ..msg("assistant", "") },
            Message { tool_call_id: Some("c".into()), ..msg("tool", "r") },
            msg("assistant", "a1"),
            msg("user", "u2"),
            msg("assistant", "a2"),
        ];
        let refs: Vec<&Message> = m.iter().collect();
        let tokens = [10, 10, 10, 10, 10, 10];
        assert_eq!(keep_from(&refs, &tokens, 60), 0, "everything fits");
        assert_eq!(keep_from(&refs, &tokens, 59), 4, "the next turn start is u2");
        assert_eq!(keep_from(&refs, &tokens, 45), 4, "never from the tool result or the call");
        assert_eq!(keep_from(&refs, &tokens, 19), 6, "not even the last turn fits");
        assert_eq!(keep_from(&[], &[], 10), 0);
    }
}
