//! The streamed answer: the response body read as server-sent events with the
//! incremental [`SseParser`] (no reconnection, so an answer is never replayed)
//! and turned into [`ProviderEvent`]s as chunks arrive, in the order the
//! [`Provider`](crate::providers::Provider) trait promises.
//!
//! Bounded in memory and time: an event that grows past [`MAX_EVENT_BYTES`]
//! (a `data:` line that never ends, endless `data:` lines without a blank one)
//! is a bad response (`502`) as soon as it passes the bound, and a provider that
//! sends nothing for the idle timeout once its answer has begun ends the run
//! (`504`), instead of either holding the turn until the run timeout.

use super::error::{describe, reported};
use super::wire::StreamChunk;
use crate::providers::{ProviderError, ProviderEvent};
use futures::Stream;
use services::run_events::finish_reason_with_calls;
use services::sse::{SseItem, SseParser};
use std::borrow::Cow;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Sleep;

/// The most one SSE event (its unfinished line and data) may hold.
pub const MAX_EVENT_BYTES: usize = 4 * 1024 * 1024;

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
            // Only one choice is ever asked for (`n` is never sent). Content after
            // the finish reason is dropped: the answer is over (the trait's order).
            if choice.index.unwrap_or(0) != 0 {
                continue;
            }
            if let Some(delta) = choice.delta.filter(|_| !self.finished) {
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
    body: Option<Pin<Box<S>>>,
    parser: SseParser,
    pending: VecDeque<ProviderEvent>,
    state: ChunkState,
    /// The idle timeout and its timer, reset by every chunk.
    idle: Option<(Duration, Pin<Box<Sleep>>)>,
    /// The error that ended the body, held until the events parsed before it
    /// (from the same chunk) are out.
    failed: Option<ProviderError>,
}

impl<S> SseStream<S> {
    /// Reads `bytes`; `idle` bounds the silence between two chunks.
    pub(super) fn new(bytes: S, idle: Option<Duration>) -> Self {
        Self {
            body: Some(Box::pin(bytes)),
            parser: SseParser::new(),
            pending: VecDeque::new(),
            state: ChunkState::default(),
            idle: idle.map(|d| (d, Box::pin(tokio::time::sleep(d)))),
            failed: None,
        }
    }

    /// Parses one chunk of the body into `pending`; `Done` at `[DONE]`.
    fn on_chunk(&mut self, chunk: &[u8]) -> Result<Flow, ProviderError> {
        let Self { parser, pending, state, .. } = self;
        let mut flow = Flow::Continue;
        let parsed = parser.feed(chunk, |item| {
            let SseItem::Event { data, .. } = item else { return Ok(()) };
            let data = std::str::from_utf8(data)
                .map_err(|e| ProviderError::Upstream(format!("malformed stream from provider: {e}")))?;
            match state.on_data(data, pending)? {
                Flow::Continue => Ok(()),
                Flow::Done => {
                    flow = Flow::Done;
                    // Nothing after `[DONE]` matters: stop parsing this chunk.
                    Err(ProviderError::Upstream(String::new()))
                }
            }
        });
        match parsed {
            Err(_) if flow == Flow::Done => Ok(Flow::Done),
            Err(e) => Err(e),
            Ok(()) if parser.pending_bytes() > MAX_EVENT_BYTES => Err(ProviderError::Upstream(format!(
                "provider sent a stream event over {} MiB",
                MAX_EVENT_BYTES >> 20
            ))),
            Ok(()) => Ok(Flow::Continue),
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
            if let Some(e) = this.failed.take() {
                return Poll::Ready(Some(Err(e)));
            }
            let Some(body) = this.body.as_mut() else {
                return Poll::Ready(None);
            };
            let item = match body.as_mut().poll_next(cx) {
                Poll::Ready(item) => item,
                Poll::Pending => {
                    if let Some((limit, timer)) = this.idle.as_mut() {
                        if timer.as_mut().poll(cx).is_ready() {
                            this.body = None;
                            return Poll::Ready(Some(Err(ProviderError::Timeout(format!(
                                "provider sent nothing for {} ms in the middle of its answer",
                                limit.as_millis()
                            )))));
                        }
                    }
                    return Poll::Pending;
                }
            };
            match item {
                Some(Ok(chunk)) => {
                    if let Some((limit, timer)) = this.idle.as_mut() {
                        timer.as_mut().reset(tokio::time::Instant::now() + *limit);
                    }
                    match this.on_chunk(chunk.as_ref()) {
                        Ok(Flow::Continue) => {}
                        Ok(Flow::Done) => {
                            // The end of the HTTP body usually sits in the same read as
                            // `[DONE]`: consuming it lets the connection go back to the
                            // pool. Never wait for it, though.
                            if let Some(body) = this.body.as_mut() {
                                for _ in 0..4 {
                                    match body.as_mut().poll_next(cx) {
                                        Poll::Ready(Some(Ok(_))) => continue,
                                        _ => break,
                                    }
                                }
                            }
                            this.body = None;
                            this.state.on_end(&mut this.pending);
                        }
                        Err(e) => {
                            this.body = None;
                            this.failed = Some(e);
                        }
                    }
                }
                Some(Err(e)) => {
                    this.body = None;
                    return Poll::Ready(Some(Err(ProviderError::Upstream(format!(
                        "provider stream broke off: {}",
                        describe(&e)
                    )))));
                }
                None => {
                    this.body = None;
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
        SseStream::new(futures::stream::iter(owned), None).collect().await
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
        let got: Vec<_> = SseStream::new(futures::stream::iter(parts), None).collect().await;
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
    async fn an_error_comes_after_the_events_before_it_in_the_same_chunk() {
        // One network read holding content and then an error chunk (found by the fuzzer).
        let one_read =
            [data(r#"{"choices":[{"index":0,"delta":{"content":"x"}}]}"#), "data: {\n\n".into()].concat();
        let got = run_sse(&[&one_read]).await;
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0], text("x"));
        assert!(
            matches!(&got[1], Err(ProviderError::Upstream(m)) if m.starts_with("malformed stream chunk"))
        );
        let one_read = [
            data(r#"{"choices":[{"index":0,"delta":{"content":"y"}}]}"#),
            data(r#"{"error":{"message":"overloaded"}}"#),
        ]
        .concat();
        assert_eq!(
            run_sse(&[&one_read]).await,
            vec![text("y"), Err(ProviderError::Upstream("overloaded".into()))]
        );
    }

    #[tokio::test]
    async fn content_after_the_finish_is_dropped() {
        let got = run_sse(&[
            &data(r#"{"choices":[{"index":0,"delta":{"content":"a"},"finish_reason":"stop"}]}"#),
            &data(r#"{"choices":[{"index":0,"delta":{"content":"late","tool_calls":[{"index":0,"id":"c","function":{"name":"f"}}]}}]}"#),
            &data(r#"{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1}}"#),
            "data: [DONE]\n\n",
        ])
        .await;
        assert_eq!(got, vec![text("a"), finish("stop"), usage(1, 1)]);
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
        let got: Vec<_> = SseStream::new(futures::stream::iter(parts), None).collect().await;
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], text("a"));
        match &got[1] {
            Err(ProviderError::Upstream(m)) => assert!(m.contains("connection reset"), "{m}"),
            other => panic!("unexpected {other:?}"),
        }
    }

    /// A body that repeats `piece` forever (an upstream gone wrong).
    fn endless(
        head: &'static str,
        piece: &'static str,
    ) -> impl Stream<Item = Result<Vec<u8>, std::io::Error>> {
        futures::stream::once(async move { Ok(head.as_bytes().to_vec()) })
            .chain(futures::stream::repeat_with(move || Ok(piece.repeat(16 * 1024).into_bytes())))
    }

    #[tokio::test]
    async fn a_line_that_never_ends_is_a_bad_response_once_it_passes_the_bound() {
        let mut s = SseStream::new(endless("data: ", "x"), None);
        let got = s.next().await;
        assert!(matches!(&got, Some(Err(ProviderError::Upstream(m))) if m.contains("over 4 MiB")), "{got:?}");
        assert!(s.next().await.is_none(), "and the stream is over");
    }

    #[tokio::test]
    async fn data_lines_without_a_blank_line_are_bounded_too() {
        let mut s = SseStream::new(endless("", "data: y\n"), None);
        assert!(matches!(s.next().await, Some(Err(ProviderError::Upstream(m))) if m.contains("over 4 MiB")));
    }

    #[tokio::test]
    async fn a_provider_that_stalls_mid_answer_times_out() {
        let first = data(r#"{"choices":[{"index":0,"delta":{"content":"Hel"},"finish_reason":null}]}"#);
        let body = futures::stream::once(async move { Ok::<_, std::io::Error>(first.into_bytes()) })
            .chain(futures::stream::pending());
        let mut s = SseStream::new(body, Some(std::time::Duration::from_millis(50)));
        assert_eq!(s.next().await, Some(text("Hel")));
        let got = s.next().await;
        assert!(matches!(&got, Some(Err(ProviderError::Timeout(m))) if m.contains("50 ms")), "{got:?}");
    }
}
