//! Run events → `chat.completion.chunk` SSE frames (SPEC §4 "Streaming").
//!
//! The shape clients depend on: the first chunk is `delta:{"role":"assistant"}`
//! (role appears nowhere else); non-final chunks carry `"finish_reason": null`;
//! exactly one chunk has a finish reason, with `delta:{}`; with `include_usage`
//! a last chunk has `choices: []` and `usage` (no earlier chunk has `usage`);
//! tool-call fragments carry `index` always and `id`, `type`, `function.name`
//! on the first fragment of each call; then `data: [DONE]`.
//!
//! Frames are serialized from borrowed structs straight into one reused
//! [`BytesMut`]; [`ChunkWriter::take`] hands out what was written so far.

use crate::client::RunEvent;
use crate::error::ApiError;
use crate::openai::UsageJson;
use bytes::{BufMut, Bytes, BytesMut};
use serde::Serialize;
use services::run_events::{fallback_call_id, finish_reason};

/// The terminating frame.
const DONE: &[u8] = b"data: [DONE]\n\n";
/// The comment sent while a run is silent.
const KEEP_ALIVE: &[u8] = b": keep-alive\n\n";

/// What an event amounted to on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// Nothing (run started, an empty delta, an empty event).
    Nothing,
    /// A content or tool-call delta.
    Delta,
    /// The finish chunk (and the usage chunk when asked for).
    Finished,
}

/// Formats the chunks of one streamed completion.
#[derive(Debug)]
pub struct ChunkWriter {
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
    buf: BytesMut,
    /// Tool-call indices whose first fragment has been sent.
    seen_calls: Vec<u32>,
}

impl ChunkWriter {
    /// A writer for completion `id`; `model` is echoed in every chunk.
    pub fn new(id: String, created: u64, model: String, include_usage: bool) -> ChunkWriter {
        ChunkWriter {
            id,
            created,
            model,
            include_usage,
            buf: BytesMut::with_capacity(1024),
            seen_calls: Vec::new(),
        }
    }

    /// The first chunk: `delta:{"role":"assistant"}`.
    pub fn role(&mut self) {
        self.choice(Delta { role: Some("assistant"), ..Delta::default() }, None);
    }

    /// Writes the frames for one run event.
    pub fn event(&mut self, event: &RunEvent) -> Written {
        match event {
            RunEvent::Text(t) if !t.text.is_empty() => {
                self.choice(Delta { content: Some(&t.text), ..Delta::default() }, None);
                Written::Delta
            }
            RunEvent::ToolCall(d) => {
                let first = !self.seen_calls.contains(&d.index);
                let generated;
                let call = if first {
                    self.seen_calls.push(d.index);
                    let id = if d.id.is_empty() {
                        generated = fallback_call_id(d.index);
                        generated.as_str()
                    } else {
                        d.id.as_str()
                    };
                    ToolCallChunk {
                        index: d.index,
                        id: Some(id),
                        kind: Some("function"),
                        function: FunctionChunk { name: Some(&d.name), arguments: &d.arguments },
                    }
                } else {
                    // Later fragments carry only the index and more arguments: clients
                    // that concatenate names would otherwise repeat them.
                    ToolCallChunk {
                        index: d.index,
                        id: None,
                        kind: None,
                        function: FunctionChunk { name: None, arguments: &d.arguments },
                    }
                };
                self.choice(Delta { tool_calls: Some([call]), ..Delta::default() }, None);
                Written::Delta
            }
            RunEvent::Finished(f) => {
                self.choice(Delta::default(), Some(finish_reason(&f.finish_reason)));
                if self.include_usage {
                    let chunk = Chunk {
                        id: &self.id,
                        object: "chat.completion.chunk",
                        created: self.created,
                        model: &self.model,
                        choices: &[],
                        usage: Some(f.usage.as_ref().into()),
                    };
                    write_frame(&mut self.buf, &chunk);
                }
                Written::Finished
            }
            RunEvent::Started(_) | RunEvent::Text(_) => Written::Nothing,
        }
    }

    /// An error after the stream began: `data: {"error":…}` then `data: [DONE]`.
    pub fn error(&mut self, e: &ApiError) {
        self.buf.extend_from_slice(b"data: ");
        e.write_json((&mut self.buf).writer());
        self.buf.extend_from_slice(b"\n\n");
        self.done();
    }

    /// `data: [DONE]`.
    pub fn done(&mut self) {
        self.buf.extend_from_slice(DONE);
    }

    /// The `: keep-alive` comment.
    pub fn keep_alive(&mut self) {
        self.buf.extend_from_slice(KEEP_ALIVE);
    }

    /// How many bytes are written and not yet taken.
    pub fn pending_len(&self) -> usize {
        self.buf.len()
    }

    /// Everything written since the last call, or `None` when nothing was.
    pub fn take(&mut self) -> Option<Bytes> {
        (!self.buf.is_empty()).then(|| self.buf.split().freeze())
    }

    fn choice(&mut self, delta: Delta<'_>, finish_reason: Option<&str>) {
        let choices = [ChunkChoice { index: 0, delta, finish_reason }];
        let chunk = Chunk {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.model,
            choices: &choices,
            usage: None,
        };
        write_frame(&mut self.buf, &chunk);
    }
}

/// Appends `data: <json>\n\n`.
fn write_frame(buf: &mut BytesMut, chunk: &Chunk<'_>) {
    buf.extend_from_slice(b"data: ");
    // Serializing plain structs into memory cannot fail.
    let _ = serde_json::to_writer((&mut *buf).writer(), chunk);
    buf.extend_from_slice(b"\n\n");
}

#[derive(Serialize)]
struct Chunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: &'a [ChunkChoice<'a>],
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<UsageJson>,
}

#[derive(Serialize)]
struct ChunkChoice<'a> {
    index: u32,
    delta: Delta<'a>,
    /// Serialized as `null` on every non-final chunk (never absent, never "").
    finish_reason: Option<&'a str>,
}

#[derive(Serialize, Default)]
struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<[ToolCallChunk<'a>; 1]>,
}

#[derive(Serialize)]
struct ToolCallChunk<'a> {
    index: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    function: FunctionChunk<'a>,
}

#[derive(Serialize)]
struct FunctionChunk<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    arguments: &'a str,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};
    use services::proto::{RunFinished, RunStarted, TextDelta, ToolCallDelta, Usage};

    fn text(t: &str) -> RunEvent {
        RunEvent::Text(TextDelta { text: t.into() })
    }

    fn call(index: u32, id: &str, name: &str, args: &str) -> RunEvent {
        RunEvent::ToolCall(ToolCallDelta { index, id: id.into(), name: name.into(), arguments: args.into() })
    }

    fn finished(reason: &str) -> RunEvent {
        let usage = Some(Usage { prompt_tokens: 3, completion_tokens: 2, total_tokens: 5 });
        RunEvent::Finished(RunFinished {
            finish_reason: reason.into(),
            usage,
            model: "echo/echo".into(),
            ..Default::default()
        })
    }

    /// Splits written bytes into frames: JSON values, or `None` for `[DONE]`.
    fn frames(bytes: &[u8]) -> Vec<Option<Value>> {
        let s = std::str::from_utf8(bytes).unwrap();
        assert!(s.ends_with("\n\n"), "{s:?}");
        s.split_terminator("\n\n")
            .map(|f| {
                let data = f.strip_prefix("data: ").unwrap_or_else(|| panic!("not a data frame: {f:?}"));
                (data != "[DONE]").then(|| serde_json::from_str(data).unwrap())
            })
            .collect()
    }

    fn run(events: &[RunEvent], include_usage: bool) -> Vec<Option<Value>> {
        let mut w = ChunkWriter::new("chatcmpl_1".into(), 42, "openclaw".into(), include_usage);
        w.role();
        for e in events {
            w.event(e);
        }
        w.done();
        frames(&w.take().unwrap())
    }

    fn check_common(frames: &[Option<Value>]) {
        let chunks: Vec<&Value> = frames.iter().flatten().collect();
        for c in &chunks {
            assert_eq!(c["id"], "chatcmpl_1");
            assert_eq!(c["object"], "chat.completion.chunk");
            assert_eq!(c["created"], 42);
            assert_eq!(c["model"], "openclaw");
        }
        // Role only in the first delta.
        assert_eq!(chunks[0]["choices"][0]["delta"], json!({"role": "assistant"}));
        for c in &chunks[1..] {
            if let Some(d) = c["choices"].get(0) {
                assert!(d["delta"].get("role").is_none());
            }
        }
        // Exactly one non-null finish_reason, and every choice has the key.
        let finals = chunks
            .iter()
            .filter_map(|c| c["choices"].get(0))
            .inspect(|ch| assert!(ch.as_object().unwrap().contains_key("finish_reason")))
            .filter(|ch| !ch["finish_reason"].is_null())
            .count();
        assert_eq!(finals, 1);
        assert_eq!(frames.last().unwrap(), &None, "ends with [DONE]");
    }

    #[test]
    fn text_stream_shape() {
        let f = run(
            &[RunEvent::Started(RunStarted::default()), text("Hel"), text(""), text("lo"), finished("stop")],
            false,
        );
        check_common(&f);
        assert_eq!(f.len(), 5, "{f:?}");
        assert_eq!(
            f[1].as_ref().unwrap()["choices"][0],
            json!({"index": 0, "delta": {"content": "Hel"}, "finish_reason": null})
        );
        assert_eq!(f[2].as_ref().unwrap()["choices"][0]["delta"], json!({"content": "lo"}));
        assert_eq!(
            f[3].as_ref().unwrap()["choices"][0],
            json!({"index": 0, "delta": {}, "finish_reason": "stop"})
        );
        for c in f.iter().flatten() {
            assert!(c.get("usage").is_none());
        }
    }

    #[test]
    fn usage_chunk_comes_last_with_empty_choices() {
        let f = run(&[text("hi"), finished("stop")], true);
        check_common(&f);
        let usage = f[f.len() - 2].as_ref().unwrap();
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(usage["usage"], json!({"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}));
        for c in f[..f.len() - 2].iter().flatten() {
            assert!(c.get("usage").is_none());
        }
    }

    #[test]
    fn tool_call_fragments() {
        let f = run(
            &[
                call(0, "call_a", "f", ""),
                call(0, "", "", "{\"x\":"),
                call(1, "", "g", "{}"),
                call(0, "", "", "1}"),
                finished("tool_calls"),
            ],
            false,
        );
        check_common(&f);
        let tc = |i: usize| f[i].as_ref().unwrap()["choices"][0]["delta"]["tool_calls"][0].clone();
        assert_eq!(
            tc(1),
            json!({"index": 0, "id": "call_a", "type": "function", "function": {"name": "f", "arguments": ""}})
        );
        assert_eq!(tc(2), json!({"index": 0, "function": {"arguments": "{\"x\":"}}));
        // No upstream id: a generated one.
        assert_eq!(
            tc(3),
            json!({"index": 1, "id": "call_1", "type": "function", "function": {"name": "g", "arguments": "{}"}})
        );
        assert_eq!(tc(4), json!({"index": 0, "function": {"arguments": "1}"}}));
        assert_eq!(f[5].as_ref().unwrap()["choices"][0]["finish_reason"], "tool_calls");
    }

    #[test]
    fn error_after_start() {
        let mut w = ChunkWriter::new("chatcmpl_1".into(), 42, "openclaw".into(), false);
        w.role();
        w.event(&text("par"));
        w.error(&ApiError::upstream("provider reset the connection"));
        let f = frames(&w.take().unwrap());
        assert_eq!(f.len(), 4);
        assert_eq!(
            f[2].as_ref().unwrap(),
            &json!({"error": {"message": "provider reset the connection", "type": "api_error", "code": "upstream_error"}})
        );
        assert_eq!(f[3], None);
        assert!(w.take().is_none());
    }

    #[test]
    fn take_hands_out_increments() {
        let mut w = ChunkWriter::new("c".into(), 1, "m".into(), false);
        assert!(w.take().is_none());
        w.role();
        let a = w.take().unwrap();
        assert_eq!(w.event(&text("x")), Written::Delta);
        assert_eq!(w.event(&text("")), Written::Nothing);
        let b = w.take().unwrap();
        assert!(a.starts_with(b"data: {") && b.starts_with(b"data: {"));
        assert_eq!(w.event(&finished("length")), Written::Finished);
    }
}
