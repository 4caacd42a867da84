//! The streamed answer: the response body read as server-sent events
//! (`eventsource-stream`, which never reconnects, so an answer is never
//! replayed) and turned into [`ProviderEvent`]s as chunks arrive, in the order
//! the [`Provider`](crate::providers::Provider) trait promises.

use super::error::{reported, sse_error};
use super::wire::StreamChunk;
use crate::providers::{ProviderError, ProviderEvent};
use futures::Stream;
use services::run_events::finish_reason_with_calls;
use std::borrow::Cow;
use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

fn non_empty(s: Option<Cow<'_, str>>) -> Option<String> {
    s.filter(|s| !s.is_empty()).map(Cow::into_owned)
}

/// What the stream should do after a `data:` payload.
#[derive(Debug, PartialEq)]
enum Flow {
    Continue,
    Done,
}

/// Per-stream bookkeeping that keeps the event order the trait promises:
/// one `Finish`, then at most one `Usage` at the end, whatever upstream did
/// (some servers repeat the finish reason or send running usage in every chunk).
#[derive(Default)]
struct ChunkState {
    finished: bool,
    saw_tool_calls: bool,
    /// The latest usage seen; sent once, when the stream ends normally.
    usage: Option<ProviderEvent>,
}

impl ChunkState {
    /// The normal end (`[DONE]`, or the body ending after a finish reason).
    fn on_end(&mut self, out: &mut VecDeque<ProviderEvent>) {
        if !self.finished {
            // `[DONE]` without a finish reason (seen from some local servers):
            // still end with exactly one `Finish`, as the trait promises.
            self.finished = true;
            let reason = finish_reason_with_calls("", self.saw_tool_calls);
            out.push_back(ProviderEvent::Finish(reason.into()));
        }
        if let Some(u) = self.usage.take() {
            out.push_back(u);
        }
    }

    /// Handles one SSE `data` payload, appending the events it carries to `out`.
    fn on_data(&mut self, data: &str, out: &mut VecDeque<ProviderEvent>) -> Result<Flow, ProviderError> {
        let data = data.trim();
        if data == "[DONE]" {
            return Ok(Flow::Done);
        }
        if data.is_empty() {
            return Ok(Flow::Continue);
        }
        let chunk: StreamChunk<'_> = serde_json::from_str(data)
            .map_err(|e| ProviderError::Upstream(format!("malformed stream chunk from provider: {e}")))?;
        if let Some(err) = chunk.error {
            return Err(reported(err));
        }
        for choice in chunk.choices.into_iter().flatten() {
            // Only one choice is ever asked for (`n` is never sent).
            if choice.index.unwrap_or(0) != 0 {
                continue;
            }
            if let Some(delta) = choice.delta {
                if let Some(text) = non_empty(delta.content) {
                    out.push_back(ProviderEvent::Text(text));
                }
                for (pos, call) in delta.tool_calls.into_iter().flatten().enumerate() {
                    let (name, arguments) = match call.function {
                        Some(f) => (non_empty(f.name), f.arguments.map(Cow::into_owned).unwrap_or_default()),
                        None => (None, String::new()),
                    };
                    let id = non_empty(call.id);
                    if id.is_none() && name.is_none() && arguments.is_empty() {
                        continue;
                    }
                    // Some servers omit `index`; the position in the array is the best guess.
                    let index = call.index.unwrap_or(pos as u32);
                    self.saw_tool_calls = true;
                    out.push_back(ProviderEvent::ToolCall { index, id, name, arguments });
                }
            }
            if let Some(reason) = non_empty(choice.finish_reason) {
                if !self.finished {
                    self.finished = true;
                    out.push_back(ProviderEvent::Finish(reason));
                }
            }
        }
        if let Some(usage) = chunk.usage {
            self.usage = Some(usage.event());
        }
        Ok(Flow::Continue)
    }
}

/// Turns a response body (bytes) into provider events.
///
/// Owns the body: dropping it, or reaching the end, drops the connection.
pub(super) struct SseStream<S> {
    inner: Option<Pin<Box<eventsource_stream::EventStream<S>>>>,
    pending: VecDeque<ProviderEvent>,
    state: ChunkState,
}

impl<S> SseStream<S> {
    pub(super) fn new(bytes: S) -> Self {
        Self {
            inner: Some(Box::pin(eventsource_stream::EventStream::new(bytes))),
            pending: VecDeque::new(),
            state: ChunkState::default(),
        }
    }
}

impl<S, B, E> Stream for SseStream<S>
where
    S: Stream<Item = Result<B, E>>,
    B: AsRef<[u8]>,
    E: std::error::Error + 'static,
{
    type Item = Result<ProviderEvent, ProviderError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(ev) = this.pending.pop_front() {
                return Poll::Ready(Some(Ok(ev)));
            }
            let Some(inner) = this.inner.as_mut() else {
                return Poll::Ready(None);
            };
            let item = match inner.as_mut().poll_next(cx) {
                Poll::Ready(item) => item,
                Poll::Pending => return Poll::Pending,
            };
            match item {
                Some(Ok(event)) => match this.state.on_data(&event.data, &mut this.pending) {
                    Ok(Flow::Continue) => {}
                    Ok(Flow::Done) => {
                        // The end of the HTTP body usually sits in the same read as
                        // `[DONE]`: consuming it lets the connection go back to the
                        // pool. Never wait for it, though.
                        for _ in 0..4 {
                            match inner.as_mut().poll_next(cx) {
                                Poll::Ready(Some(Ok(_))) => continue,
                                _ => break,
                            }
                        }
                        this.inner = None;
                        this.state.on_end(&mut this.pending);
                    }
                    Err(e) => {
                        this.inner = None;
                        return Poll::Ready(Some(Err(e)));
                    }
                },
                Some(Err(e)) => {
                    this.inner = None;
                    return Poll::Ready(Some(Err(sse_error(e))));
                }
                None => {
                    this.inner = None;
                    if !this.state.finished {
                        return Poll::Ready(Some(Err(ProviderError::Upstream(
                            "provider stream ended before finishing".into(),
                        ))));
                    }
                    this.state.on_end(&mut this.pending);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    /// Runs raw SSE text (split into the given byte chunks) through the stream.
    async fn run_sse(chunks: &[&str]) -> Vec<Result<ProviderEvent, ProviderError>> {
        let owned: Vec<Result<Vec<u8>, std::io::Error>> =
            chunks.iter().map(|c| Ok(c.as_bytes().to_vec())).collect();
        SseStream::new(futures::stream::iter(owned)).collect().await
    }

    fn data(json: &str) -> String {
        format!("data: {json}\n\n")
    }

    fn text(t: &str) -> Result<ProviderEvent, ProviderError> {
        Ok(ProviderEvent::Text(t.into()))
    }

    fn finish(r: &str) -> Result<ProviderEvent, ProviderError> {
        Ok(ProviderEvent::Finish(r.into()))
    }

    fn usage(p: u32, c: u32) -> Result<ProviderEvent, ProviderError> {
        Ok(ProviderEvent::Usage { prompt_tokens: p, completion_tokens: c })
    }

    #[tokio::test]
    async fn sse_text_finish_and_usage_chunk() {
        let input = [
            data(
                r#"{"id":"x","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#,
            ),
            ": keep-alive\n\n".to_string(),
            data(r#"{"choices":[{"index":0,"delta":{"content":"Hel"},"finish_reason":null}],"usage":null}"#),
            data(
                r#"{"choices":[{"index":0,"delta":{"content":"lo\n\"w\""},"logprobs":null,"finish_reason":null}]}"#,
            ),
            data(r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#),
            data(r#"{"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":2,"total_tokens":11}}"#),
            "data: [DONE]\n\n".to_string(),
        ];
        let refs: Vec<&str> = input.iter().map(String::as_str).collect();
        assert_eq!(run_sse(&refs).await, vec![text("Hel"), text("lo\n\"w\""), finish("stop"), usage(9, 2)]);
    }

    #[tokio::test]
    async fn sse_tool_call_fragments() {
        let input = [
            data(
                r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":null,"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"get_weather","arguments":""}}]},"finish_reason":null}]}"#,
            ),
            data(
                r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"city\":"}}]}}]}"#,
            ),
            data(
                r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\"Paris\"}"}}]}}]}"#,
            ),
            data(
                r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"id":"call_2","type":"function","function":{"name":"now","arguments":"{}"}}]}}]}"#,
            ),
            data(r#"{"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#),
            "data: [DONE]\n\n".to_string(),
        ];
        let refs: Vec<&str> = input.iter().map(String::as_str).collect();
        let call = |index: u32, id: Option<&str>, name: Option<&str>, args: &str| {
            Ok(ProviderEvent::ToolCall {
                index,
                id: id.map(Into::into),
                name: name.map(Into::into),
                arguments: args.into(),
            })
        };
        assert_eq!(
            run_sse(&refs).await,
            vec![
                call(0, Some("call_1"), Some("get_weather"), ""),
                call(0, None, None, "{\"city\":"),
                call(0, None, None, "\"Paris\"}"),
                call(1, Some("call_2"), Some("now"), "{}"),
                finish("tool_calls"),
            ]
        );
    }

    #[tokio::test]
    async fn sse_chunks_split_anywhere_and_crlf() {
        // Split mid-JSON and inside a multi-byte character; CRLF line ends.
        let full = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"héllo\"}}]}\r\n\r\n\
                    data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"length\"}]}\r\n\r\n\
                    data: [DONE]\r\n\r\n";
        let bytes = full.as_bytes();
        let cut1 = full.find('é').unwrap() + 1; // inside the 2-byte 'é'
        let parts: Vec<Result<Vec<u8>, std::io::Error>> =
            vec![Ok(bytes[..10].to_vec()), Ok(bytes[10..cut1].to_vec()), Ok(bytes[cut1..].to_vec())];
        let got: Vec<_> = SseStream::new(futures::stream::iter(parts)).collect().await;
        assert_eq!(got, vec![text("héllo"), finish("length")]);
    }

    #[tokio::test]
    async fn sse_usage_is_sent_once_after_finish() {
        let input = [
            data(
                r#"{"choices":[{"index":0,"delta":{"content":"a"}}],"usage":{"prompt_tokens":1,"completion_tokens":1}}"#,
            ),
            data(
                r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":4}}"#,
            ),
            data(
                r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":6}}"#,
            ),
            "data: [DONE]\n\n".to_string(),
        ];
        let refs: Vec<&str> = input.iter().map(String::as_str).collect();
        // Running usage in every chunk: one Finish, then the latest usage, once.
        assert_eq!(run_sse(&refs).await, vec![text("a"), finish("stop"), usage(5, 6)]);
    }

    #[tokio::test]
    async fn sse_ignores_other_choices_and_unknown_fields() {
        let input = [
            data(
                r#"{"choices":[{"index":1,"delta":{"content":"other"}},{"index":0,"delta":{"content":"mine","reasoning_content":"x"}}],"system_fingerprint":"fp"}"#,
            ),
            data(r#"{"choices":[{"index":1,"delta":{},"finish_reason":"stop"}]}"#),
            data(r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#),
            "event: ping\ndata: [DONE]\n\n".to_string(),
        ];
        let refs: Vec<&str> = input.iter().map(String::as_str).collect();
        assert_eq!(run_sse(&refs).await, vec![text("mine"), finish("stop")]);
    }

    #[tokio::test]
    async fn sse_error_chunk_ends_stream_with_error() {
        let input = [
            data(r#"{"choices":[{"index":0,"delta":{"content":"x"}}]}"#),
            data(r#"{"error":{"message":"overloaded","type":"server_error"}}"#),
            data(r#"{"choices":[{"index":0,"delta":{"content":"never"}}]}"#),
        ];
        let refs: Vec<&str> = input.iter().map(String::as_str).collect();
        assert_eq!(run_sse(&refs).await, vec![text("x"), Err(ProviderError::Upstream("overloaded".into()))]);
        // `error` as a bare string (Ollama style).
        let got = run_sse(&[&data(r#"{"error":"model not loaded"}"#)]).await;
        assert_eq!(got, vec![Err(ProviderError::Upstream("model not loaded".into()))]);
    }

    #[tokio::test]
    async fn sse_malformed_chunk_is_upstream_error() {
        let got = run_sse(&["data: {\"choices\":[{\"delta\":\n\n"]).await;
        assert_eq!(got.len(), 1);
        match &got[0] {
            Err(ProviderError::Upstream(m)) => {
                assert!(m.starts_with("malformed stream chunk from provider"), "{m}")
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn sse_end_without_done() {
        // Finish seen: a normal end.
        let got = run_sse(&[&data(r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#)]).await;
        assert_eq!(got, vec![finish("stop")]);
        // No finish: an error after what was produced.
        let got = run_sse(&[&data(r#"{"choices":[{"index":0,"delta":{"content":"par"}}]}"#)]).await;
        assert_eq!(
            got,
            vec![text("par"), Err(ProviderError::Upstream("provider stream ended before finishing".into()))]
        );
    }

    #[tokio::test]
    async fn sse_done_without_finish_reason_still_finishes() {
        let got = run_sse(&[
            &data(r#"{"choices":[{"index":0,"delta":{"content":"x"}}]}"#),
            &data(r#"{"choices":[],"usage":{"prompt_tokens":2,"completion_tokens":1}}"#),
            "data: [DONE]\n\n",
        ])
        .await;
        assert_eq!(got, vec![text("x"), finish("stop"), usage(2, 1)]);
    }

    #[tokio::test]
    async fn sse_transport_error_is_upstream() {
        let parts: Vec<Result<Vec<u8>, std::io::Error>> = vec![
            Ok(data(r#"{"choices":[{"index":0,"delta":{"content":"a"}}]}"#).into_bytes()),
            Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "connection reset")),
            Ok(b"data: [DONE]\n\n".to_vec()),
        ];
        let got: Vec<_> = SseStream::new(futures::stream::iter(parts)).collect().await;
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], text("a"));
        match &got[1] {
            Err(ProviderError::Upstream(m)) => assert!(m.contains("connection reset"), "{m}"),
            other => panic!("unexpected {other:?}"),
        }
    }
}
