//! The non-streaming fallback: an upstream that ignored `stream: true` and
//! answered one `application/json` completion gets read whole (capped) and
//! turned into the event sequence a stream would have produced.

use super::error::reported;
use super::read_capped;
use super::wire::Completion;
use crate::providers::{ProviderError, ProviderEvent};
use services::run_events::finish_reason_with_calls;

/// Cap on a non-streamed (`application/json`) completion body.
const MAX_JSON_BODY: usize = 16 * 1024 * 1024;

/// Reads a whole completion response into its events.
pub(super) async fn read_completion(
    resp: super::http::Response,
    idle: Option<std::time::Duration>,
) -> Result<Vec<ProviderEvent>, ProviderError> {
    let body = read_capped(resp, MAX_JSON_BODY, idle).await?;
    if body.len() >= MAX_JSON_BODY {
        return Err(ProviderError::Upstream("provider response too large".into()));
    }
    parse_completion(&body)
}

/// A whole `chat.completion` as the event sequence a stream would have produced.
pub(super) fn parse_completion(body: &[u8]) -> Result<Vec<ProviderEvent>, ProviderError> {
    let c: Completion = serde_json::from_slice(body)
        .map_err(|e| ProviderError::Upstream(format!("malformed response from provider: {e}")))?;
    if let Some(err) = c.error {
        return Err(reported(err));
    }
    let choice = c
        .choices
        .into_iter()
        .flatten()
        .find(|ch| ch.index.unwrap_or(0) == 0)
        .ok_or_else(|| ProviderError::Upstream("provider response has no choices".into()))?;
    let mut events = Vec::new();
    let mut had_calls = false;
    if let Some(msg) = choice.message {
        if let Some(text) = msg.content.filter(|t| !t.is_empty()) {
            events.push(ProviderEvent::Text(text));
        }
        for (i, call) in msg.tool_calls.into_iter().flatten().enumerate() {
            had_calls = true;
            let (name, arguments) = match call.function {
                Some(f) => (f.name.filter(|n| !n.is_empty()), f.arguments.unwrap_or_default()),
                None => (None, String::new()),
            };
            events.push(ProviderEvent::ToolCall {
                index: i as u32,
                id: call.id.filter(|id| !id.is_empty()),
                name,
                arguments,
            });
        }
    }
    let reason = choice
        .finish_reason
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| finish_reason_with_calls("", had_calls).into());
    events.push(ProviderEvent::Finish(reason));
    if let Some(u) = c.usage {
        events.push(u.event());
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_completion_becomes_events() {
        let body = json!({
            "id": "x", "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi",
                "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
                "finish_reason": "tool_calls"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}
        });
        let events = parse_completion(body.to_string().as_bytes()).unwrap();
        assert_eq!(
            events,
            vec![
                ProviderEvent::Text("hi".into()),
                ProviderEvent::ToolCall {
                    index: 0,
                    id: Some("c1".into()),
                    name: Some("f".into()),
                    arguments: "{}".into()
                },
                ProviderEvent::Finish("tool_calls".into()),
                ProviderEvent::Usage { prompt_tokens: 5, completion_tokens: 7 },
            ]
        );
        assert!(matches!(parse_completion(b"{\"choices\":[]}"), Err(ProviderError::Upstream(_))));
        assert!(matches!(parse_completion(b"not json"), Err(ProviderError::Upstream(_))));
    }
}
