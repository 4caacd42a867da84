//! The built-in offline provider `echo` (model `echo`).
//!
//! It answers deterministically from the input and never touches the network,
//! which makes it the embedded default and the benchmark baseline: all events
//! are computed up front and yielded without any waiting.

use super::{Provider, ProviderEvent, ProviderFuture, ProviderRequest};
use crate::message::SharedMessage;
use futures::StreamExt;
use services::proto::{content_part, tool_choice, Message};
use std::sync::Arc;

/// Id of the single tool call the echo provider makes.
pub const ECHO_CALL_ID: &str = "call_echo_0";

/// Replies with the text of the last user message (or `tool result: …` after a
/// tool message), word by word; calls a tool when one is forced.
#[derive(Debug, Default, Clone, Copy)]
pub struct EchoProvider;

impl EchoProvider {
    /// Creates the provider.
    pub fn new() -> Self {
        Self
    }

    /// The complete event sequence for a request (what [`Provider::stream`] yields).
    pub fn events(req: &ProviderRequest) -> Vec<ProviderEvent> {
        let reply = reply_text(&req.messages);
        let prompt_tokens = prompt_words(&req.messages).max(1);
        match forced_tool(req) {
            Some(name) => tool_call_events(name, &reply, prompt_tokens),
            None => text_events(&reply, req.max_tokens, prompt_tokens),
        }
    }
}

impl Provider for EchoProvider {
    fn stream(&self, req: ProviderRequest) -> ProviderFuture {
        let events = Self::events(&req);
        Box::pin(std::future::ready(Ok(futures::stream::iter(events.into_iter().map(Ok)).boxed())))
    }
}

/// Text parts of a message joined with `\n`, or `None` when it has none.
fn message_text(m: &Message) -> Option<String> {
    let mut texts = m.parts.iter().filter_map(|p| match &p.part {
        Some(content_part::Part::Text(t)) => Some(t.as_str()),
        _ => None,
    });
    let first = texts.next()?;
    let mut out = first.to_string();
    for t in texts {
        out.push('\n');
        out.push_str(t);
    }
    Some(out)
}

/// What echo answers: after a tool message, `tool result: <its text>`; else the
/// last user message's text; `(no text)` when there is no text to echo.
fn reply_text(messages: &[Arc<SharedMessage>]) -> String {
    const NO_TEXT: &str = "(no text)";
    if let Some(last) = messages.last().filter(|m| m.role == "tool") {
        return format!("tool result: {}", message_text(last).unwrap_or_else(|| NO_TEXT.into()));
    }
    messages
        .iter()
        .rev()
        .find(|m| m.role == "user")
        .and_then(|m| message_text(m))
        .unwrap_or_else(|| NO_TEXT.into())
}

/// Whitespace-separated words over every text part of every message.
fn prompt_words(messages: &[Arc<SharedMessage>]) -> u32 {
    let words: usize = messages
        .iter()
        .flat_map(|m| m.parts.iter())
        .map(|p| match &p.part {
            Some(content_part::Part::Text(t)) => t.split_whitespace().count(),
            _ => 0,
        })
        .sum();
    saturate(words)
}

fn saturate(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The tool to call, when tools are offered and the choice forces one.
fn forced_tool(req: &ProviderRequest) -> Option<&str> {
    let first = req.tools.first()?;
    match req.tool_choice.as_ref()?.choice.as_ref()? {
        tool_choice::Choice::Function(name) => Some(name),
        tool_choice::Choice::Mode(mode) if mode == "required" => Some(&first.name),
        tool_choice::Choice::Mode(_) => None,
    }
}

/// One call to `name` with `{"input": reply}`, in two fragments.
fn tool_call_events(name: &str, reply: &str, prompt_tokens: u32) -> Vec<ProviderEvent> {
    let arguments = serde_json::json!({ "input": reply }).to_string();
    let mut mid = arguments.len() / 2;
    while !arguments.is_char_boundary(mid) {
        mid -= 1;
    }
    let (head, tail) = arguments.split_at(mid);
    vec![
        ProviderEvent::ToolCall {
            index: 0,
            id: Some(ECHO_CALL_ID.into()),
            name: Some(name.into()),
            arguments: head.into(),
        },
        ProviderEvent::ToolCall { index: 0, id: None, name: None, arguments: tail.into() },
        ProviderEvent::Finish("tool_calls".into()),
        ProviderEvent::Usage {
            prompt_tokens,
            completion_tokens: saturate(arguments.split_whitespace().count()),
        },
    ]
}

/// Splits text after each whitespace run, one word per piece: leading
/// whitespace stays with the first word, so pieces and words line up and the
/// pieces concatenate back to the text exactly.
fn word_pieces(text: &str) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut start = 0;
    let mut seen_word = false;
    let mut in_space = false;
    for (i, c) in text.char_indices() {
        if c.is_whitespace() {
            in_space = true;
        } else {
            if in_space && seen_word {
                pieces.push(&text[start..i]);
                start = i;
            }
            in_space = false;
            seen_word = true;
        }
    }
    if start < text.len() {
        pieces.push(&text[start..]);
    }
    pieces
}

/// The reply as word deltas, cut to `max_tokens` words (finish `length`).
fn text_events(reply: &str, max_tokens: Option<u32>, prompt_tokens: u32) -> Vec<ProviderEvent> {
    let pieces = word_pieces(reply);
    // A whitespace-only reply is one piece holding no word.
    let words = reply.split_whitespace().count();
    let (take, emitted, reason) = match max_tokens {
        Some(n) if words > n as usize => (n as usize, n as usize, "length"),
        _ => (pieces.len(), words, "stop"),
    };
    let mut events = Vec::with_capacity(take + 2);
    events.extend(pieces[..take].iter().map(|p| ProviderEvent::Text((*p).to_string())));
    events.push(ProviderEvent::Finish(reason.into()));
    events.push(ProviderEvent::Usage { prompt_tokens, completion_tokens: saturate(emitted) });
    events
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::test_support::{image_part, msg, text_part};
    use services::proto::{Tool, ToolChoice};

    fn req(messages: Vec<Message>) -> ProviderRequest {
        let messages = messages.into_iter().map(SharedMessage::shared).collect();
        ProviderRequest { model: "echo".into(), messages, ..Default::default() }
    }

    fn texts(events: &[ProviderEvent]) -> Vec<&str> {
        events
            .iter()
            .filter_map(|e| match e {
                ProviderEvent::Text(t) => Some(t.as_str()),
                _ => None,
            })
            .collect()
    }

    fn tool(name: &str) -> Tool {
        Tool { r#type: "function".into(), name: name.into(), description: None, parameters_json: None }
    }

    #[test]
    fn echoes_last_user_message_word_by_word() {
        let r = req(vec![
            msg("system", "be nice"),
            msg("user", "first question"),
            msg("assistant", "an answer"),
            msg("user", "hello big world"),
        ]);
        let ev = EchoProvider::events(&r);
        assert_eq!(texts(&ev), vec!["hello ", "big ", "world"]);
        assert_eq!(
            &ev[3..],
            &[
                ProviderEvent::Finish("stop".into()),
                // 2 + 2 + 2 + 3 words in the prompt, 3 in the reply.
                ProviderEvent::Usage { prompt_tokens: 9, completion_tokens: 3 },
            ]
        );
    }

    #[test]
    fn pieces_reassemble_exactly() {
        for s in ["  lead  and\ttabs\n\nnew lines  ", "one", "   ", "a b", "héllo wörld ünïcode"] {
            let pieces = word_pieces(s);
            assert_eq!(pieces.concat(), s, "{s:?}");
            assert_eq!(pieces.len(), s.split_whitespace().count().max(1), "{s:?}");
        }
        assert_eq!(word_pieces("  a  b "), vec!["  a  ", "b "]);
    }

    #[test]
    fn joins_text_parts_and_handles_no_text() {
        let m = Message {
            role: "user".into(),
            parts: vec![
                text_part("line one"),
                image_part("data:image/png;base64,AA", None),
                text_part("line two"),
            ],
            ..Default::default()
        };
        assert_eq!(texts(&EchoProvider::events(&req(vec![m]))).concat(), "line one\nline two");

        let image_only =
            Message { role: "user".into(), parts: vec![image_part("data:x", None)], ..Default::default() };
        let ev = EchoProvider::events(&req(vec![image_only]));
        assert_eq!(texts(&ev).concat(), "(no text)");
        // No text anywhere: the prompt still counts as one token.
        assert_eq!(ev.last(), Some(&ProviderEvent::Usage { prompt_tokens: 1, completion_tokens: 2 }));
        assert_eq!(texts(&EchoProvider::events(&req(vec![]))).concat(), "(no text)");
    }

    #[test]
    fn tool_message_is_reported_back() {
        let mut t = msg("tool", "22 degrees");
        t.tool_call_id = Some("call_echo_0".into());
        let ev = EchoProvider::events(&req(vec![msg("user", "weather?"), t]));
        assert_eq!(texts(&ev).concat(), "tool result: 22 degrees");
        assert_eq!(ev[ev.len() - 2], ProviderEvent::Finish("stop".into()));
    }

    #[test]
    fn max_tokens_cuts_with_length() {
        let mut r = req(vec![msg("user", "one two three four")]);
        r.max_tokens = Some(2);
        let ev = EchoProvider::events(&r);
        assert_eq!(
            ev,
            vec![
                ProviderEvent::Text("one ".into()),
                ProviderEvent::Text("two ".into()),
                ProviderEvent::Finish("length".into()),
                ProviderEvent::Usage { prompt_tokens: 4, completion_tokens: 2 },
            ]
        );
        // Exactly n words is not cut.
        r.max_tokens = Some(4);
        let ev = EchoProvider::events(&r);
        assert_eq!(texts(&ev).concat(), "one two three four");
        assert_eq!(ev[ev.len() - 2], ProviderEvent::Finish("stop".into()));
    }

    #[test]
    fn forced_tool_call_in_two_fragments() {
        let mut r = req(vec![msg("user", "say \"hi\" to all")]);
        r.tools = vec![tool("first"), tool("second")];
        r.tool_choice = Some(ToolChoice { choice: Some(tool_choice::Choice::Function("second".into())) });
        let ev = EchoProvider::events(&r);
        assert_eq!(ev.len(), 4);
        let (a, b) = match (&ev[0], &ev[1]) {
            (
                ProviderEvent::ToolCall { index: 0, id: Some(id), name: Some(name), arguments: a },
                ProviderEvent::ToolCall { index: 0, id: None, name: None, arguments: b },
            ) => {
                assert_eq!(id, ECHO_CALL_ID);
                assert_eq!(name, "second");
                (a.clone(), b.clone())
            }
            other => panic!("unexpected {other:?}"),
        };
        assert!(!a.is_empty() && !b.is_empty());
        let args = format!("{a}{b}");
        let v: serde_json::Value = serde_json::from_str(&args).unwrap();
        assert_eq!(v, serde_json::json!({"input": "say \"hi\" to all"}));
        assert_eq!(ev[2], ProviderEvent::Finish("tool_calls".into()));
        assert_eq!(
            ev[3],
            ProviderEvent::Usage {
                prompt_tokens: 4,
                completion_tokens: args.split_whitespace().count() as u32
            }
        );

        // `required` calls the first tool.
        r.tool_choice = Some(ToolChoice { choice: Some(tool_choice::Choice::Mode("required".into())) });
        match &EchoProvider::events(&r)[0] {
            ProviderEvent::ToolCall { name: Some(n), .. } => assert_eq!(n, "first"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn tools_without_forcing_answer_with_text() {
        let mut r = req(vec![msg("user", "plain")]);
        r.tools = vec![tool("f")];
        for choice in [None, Some("auto"), Some("none")] {
            r.tool_choice = choice.map(|c| ToolChoice { choice: Some(tool_choice::Choice::Mode(c.into())) });
            assert_eq!(texts(&EchoProvider::events(&r)), vec!["plain"], "{choice:?}");
        }
        // A forced choice without any tools offered is not a call either.
        r.tools.clear();
        r.tool_choice = Some(ToolChoice { choice: Some(tool_choice::Choice::Function("f".into())) });
        assert_eq!(texts(&EchoProvider::events(&r)), vec!["plain"]);
    }

    #[test]
    fn multibyte_arguments_split_on_char_boundary() {
        let mut r = req(vec![msg("user", "ééééééé")]);
        r.tools = vec![tool("f")];
        r.tool_choice = Some(ToolChoice { choice: Some(tool_choice::Choice::Mode("required".into())) });
        let ev = EchoProvider::events(&r);
        let joined: String = ev
            .iter()
            .filter_map(|e| match e {
                ProviderEvent::ToolCall { arguments, .. } => Some(arguments.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(joined, r#"{"input":"ééééééé"}"#);
    }

    #[tokio::test]
    async fn stream_yields_the_events() {
        let r = req(vec![msg("user", "a b")]);
        let expected = EchoProvider::events(&r);
        let got: Vec<_> = EchoProvider.stream(r).await.unwrap().collect().await;
        assert_eq!(got, expected.into_iter().map(Ok).collect::<Vec<_>>());
    }
}
