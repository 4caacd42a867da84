//! The OpenAI Chat Completions wire shapes, both ways: the request body we
//! send ([`build_body`], serialized straight from borrowed data, so large
//! image data URIs are never copied) and the parts of the answers we read
//! (streamed chunks, a whole completion, an error envelope). Only the fields
//! we use; unknown ones are ignored.

use super::super::{ProviderError, ProviderEvent, ProviderRequest};
use crate::message::SharedMessage;
use serde::{Deserialize, Serialize};
use services::proto::{content_part, tool_choice, ContentPart, Message, Tool, ToolCall, ToolChoice};
use std::borrow::Cow;
use std::sync::Arc;

// ---------------------------------------------------------------------------
// Request body
// ---------------------------------------------------------------------------

/// The request body, borrowed from the [`ProviderRequest`].
#[derive(Serialize)]
struct ChatRequest<'a> {
    model: &'a str,
    messages: WireMessages<'a>,
    stream: bool,
    stream_options: StreamOptions,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    frequency_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    presence_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<i64>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stop: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<WireTool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<WireToolChoice<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_format: Option<serde_json::Value>,
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

#[derive(Serialize)]
struct WireTool<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    function: WireFunction<'a>,
}

#[derive(Serialize)]
struct WireFunction<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<serde_json::Value>,
}

/// `tool_choice`: a mode string, or `{"type":"function","function":{"name"}}`.
#[derive(Serialize)]
#[serde(untagged)]
enum WireToolChoice<'a> {
    Mode(&'a str),
    Function {
        #[serde(rename = "type")]
        kind: &'static str,
        function: FunctionName<'a>,
    },
}

#[derive(Serialize)]
struct FunctionName<'a> {
    name: &'a str,
}

/// One proto [`Message`] in OpenAI's wire shape.
#[derive(Serialize)]
pub(super) struct WireMessage<'a> {
    role: &'a str,
    content: WireContent<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<WireToolCall<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_call_id: Option<&'a str>,
}

/// `content`: a string for a plain-text message, an array of parts otherwise,
/// `null` when there is nothing (an assistant message with only tool calls).
#[derive(Serialize)]
#[serde(untagged)]
enum WireContent<'a> {
    Null,
    Text(&'a str),
    Parts(Vec<WirePart<'a>>),
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WirePart<'a> {
    Text { text: &'a str },
    ImageUrl { image_url: WireImageUrl<'a> },
}

#[derive(Serialize)]
struct WireImageUrl<'a> {
    url: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a str>,
}

#[derive(Serialize)]
struct WireToolCall<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    function: WireCallFunction<'a>,
}

#[derive(Serialize)]
struct WireCallFunction<'a> {
    name: &'a str,
    arguments: &'a str,
}

/// The conversation: each message's wire JSON is encoded the first time it is
/// sent and then reused, so a session's window costs a copy per turn, not an
/// encoding.
struct WireMessages<'a>(&'a [Arc<SharedMessage>]);

impl Serialize for WireMessages<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{Error, SerializeSeq};
        let mut seq = serializer.serialize_seq(Some(self.0.len()))?;
        for m in self.0 {
            let json = m
                .openai_wire(|m| serde_json::value::to_raw_value(&WireMessage::from(m)))
                .map_err(S::Error::custom)?;
            seq.serialize_element(json)?;
        }
        seq.end()
    }
}

impl<'a> From<&'a Message> for WireMessage<'a> {
    fn from(m: &'a Message) -> Self {
        WireMessage {
            role: &m.role,
            content: WireContent::of(&m.parts, m.text_only),
            name: m.name.as_deref(),
            tool_calls: m
                .tool_calls
                .iter()
                .map(|c: &ToolCall| WireToolCall {
                    id: &c.id,
                    // Only function tools exist; the proto's `type` may be left empty.
                    kind: "function",
                    function: WireCallFunction { name: &c.name, arguments: &c.arguments },
                })
                .collect(),
            tool_call_id: m.tool_call_id.as_deref(),
        }
    }
}

impl<'a> WireContent<'a> {
    fn of(parts: &'a [ContentPart], text_only: bool) -> Self {
        if parts.is_empty() {
            return WireContent::Null;
        }
        if let ([ContentPart { part: Some(content_part::Part::Text(t)) }], true) = (parts, text_only) {
            return WireContent::Text(t);
        }
        WireContent::Parts(
            parts
                .iter()
                .filter_map(|p| match p.part.as_ref()? {
                    content_part::Part::Text(text) => Some(WirePart::Text { text }),
                    content_part::Part::ImageUrl(img) => Some(WirePart::ImageUrl {
                        image_url: WireImageUrl { url: &img.url, detail: img.detail.as_deref() },
                    }),
                })
                .collect(),
        )
    }
}

/// Serializes the upstream request body.
pub(super) fn build_body(req: &ProviderRequest) -> Result<Vec<u8>, ProviderError> {
    let tools = req.tools.iter().enumerate().map(|(i, t)| wire_tool(i, t)).collect::<Result<Vec<_>, _>>()?;
    let response_format = req
        .response_format_json
        .as_deref()
        .map(|j| {
            serde_json::from_str::<serde_json::Value>(j)
                .map_err(|e| ProviderError::Rejected(format!("invalid JSON in response_format: {e}")))
        })
        .transpose()?;
    let p = &req.params;
    let body = ChatRequest {
        model: &req.model,
        messages: WireMessages(&req.messages),
        stream: true,
        // Always ask: usage is reported even when the client did not ask for it.
        stream_options: StreamOptions { include_usage: true },
        temperature: p.temperature,
        top_p: p.top_p,
        frequency_penalty: p.frequency_penalty,
        presence_penalty: p.presence_penalty,
        // Validated as an integer upstream; carried as a double only for that check.
        seed: p.seed.map(|s| s as i64),
        stop: &p.stop,
        max_tokens: req.max_tokens,
        tools,
        tool_choice: req.tool_choice.as_ref().and_then(wire_tool_choice),
        response_format,
    };
    let mut buf = Vec::with_capacity(estimate_body_len(req));
    serde_json::to_writer(&mut buf, &body)
        .map_err(|e| ProviderError::Rejected(format!("could not encode request: {e}")))?;
    Ok(buf)
}

fn wire_tool(i: usize, t: &Tool) -> Result<WireTool<'_>, ProviderError> {
    let parameters = t
        .parameters_json
        .as_deref()
        .map(|j| {
            serde_json::from_str::<serde_json::Value>(j).map_err(|e| {
                ProviderError::Rejected(format!("invalid JSON in tools[{i}].function.parameters: {e}"))
            })
        })
        .transpose()?;
    Ok(WireTool {
        kind: "function",
        function: WireFunction { name: &t.name, description: t.description.as_deref(), parameters },
    })
}

fn wire_tool_choice(tc: &ToolChoice) -> Option<WireToolChoice<'_>> {
    match tc.choice.as_ref()? {
        tool_choice::Choice::Mode(m) => Some(WireToolChoice::Mode(m)),
        tool_choice::Choice::Function(name) => {
            Some(WireToolChoice::Function { kind: "function", function: FunctionName { name } })
        }
    }
}

/// A size guess for the body buffer, so big (image) requests are not regrown many times.
fn estimate_body_len(req: &ProviderRequest) -> usize {
    let text: usize = req
        .messages
        .iter()
        .map(|m| {
            let parts: usize = m
                .parts
                .iter()
                .map(|p| match &p.part {
                    Some(content_part::Part::Text(t)) => t.len() + 32,
                    Some(content_part::Part::ImageUrl(u)) => u.url.len() + 64,
                    None => 0,
                })
                .sum();
            let calls: usize = m.tool_calls.iter().map(|c| c.arguments.len() + c.name.len() + 96).sum();
            parts + calls + 64
        })
        .sum();
    let tools: usize =
        req.tools.iter().map(|t| t.parameters_json.as_ref().map_or(0, String::len) + 128).sum();
    text + tools + 512
}

// ---------------------------------------------------------------------------
// Answers
// ---------------------------------------------------------------------------

/// `error` as OpenAI-compatible servers send it: an object with `message`, or
/// (Ollama and others) a plain string.
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum ErrorField {
    Object {
        message: Option<String>,
        #[serde(rename = "type")]
        kind: Option<String>,
        code: Option<serde_json::Value>,
    },
    Text(String),
    Other(serde::de::IgnoredAny),
}

/// Error types and codes by which an upstream says the request itself was at
/// fault (too long a context, a bad parameter), not the provider.
const REQUEST_FAULTS: [&str; 4] =
    ["invalid_request_error", "context_length_exceeded", "string_above_max_length", "invalid_prompt"];

impl ErrorField {
    /// Upstream's message, if it gave one.
    pub(super) fn message(self) -> Option<String> {
        match self {
            ErrorField::Object { message, .. } => message,
            ErrorField::Text(t) => Some(t),
            ErrorField::Other(_) => None,
        }
    }

    /// Upstream's error code, if it is a string.
    pub(super) fn code(&self) -> Option<&str> {
        match self {
            ErrorField::Object { code, .. } => code.as_ref().and_then(serde_json::Value::as_str),
            _ => None,
        }
    }

    /// Whether the error says the request was at fault (`400` to the client).
    pub(super) fn is_request_fault(&self) -> bool {
        let ErrorField::Object { kind, code, .. } = self else { return false };
        let code = code.as_ref().and_then(serde_json::Value::as_str);
        [kind.as_deref(), code].into_iter().flatten().any(|k| REQUEST_FAULTS.contains(&k))
    }
}

/// An error body: `error` (see [`ErrorField`]) or a top-level `message` (older vLLM).
#[derive(Deserialize)]
pub(super) struct ErrorEnvelope {
    pub(super) error: Option<ErrorField>,
    pub(super) message: Option<serde_json::Value>,
}

/// `usage`, in a chunk or a completion.
#[derive(Deserialize)]
pub(super) struct WireUsage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
}

impl WireUsage {
    /// The usage event, counts clamped to `u32`.
    pub(super) fn event(&self) -> ProviderEvent {
        let clamp = |n: Option<u64>| u32::try_from(n.unwrap_or(0)).unwrap_or(u32::MAX);
        ProviderEvent::Usage {
            prompt_tokens: clamp(self.prompt_tokens),
            completion_tokens: clamp(self.completion_tokens),
        }
    }
}

/// One `chat.completion.chunk`, borrowed from the event's text where possible.
#[derive(Deserialize)]
pub(super) struct StreamChunk<'a> {
    #[serde(borrow)]
    pub(super) choices: Option<Vec<StreamChoice<'a>>>,
    pub(super) usage: Option<WireUsage>,
    pub(super) error: Option<ErrorField>,
}

#[derive(Deserialize)]
pub(super) struct StreamChoice<'a> {
    pub(super) index: Option<u32>,
    #[serde(borrow)]
    pub(super) delta: Option<Delta<'a>>,
    #[serde(borrow)]
    pub(super) finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
pub(super) struct Delta<'a> {
    #[serde(borrow)]
    pub(super) content: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub(super) tool_calls: Option<Vec<ToolCallChunk<'a>>>,
}

#[derive(Deserialize)]
pub(super) struct ToolCallChunk<'a> {
    pub(super) index: Option<u32>,
    #[serde(borrow)]
    pub(super) id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub(super) function: Option<FunctionChunk<'a>>,
}

#[derive(Deserialize)]
pub(super) struct FunctionChunk<'a> {
    #[serde(borrow)]
    pub(super) name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub(super) arguments: Option<Cow<'a, str>>,
}

/// A whole (non-streamed) `chat.completion`.
#[derive(Deserialize)]
pub(super) struct Completion {
    pub(super) choices: Option<Vec<CompletionChoice>>,
    pub(super) usage: Option<WireUsage>,
    pub(super) error: Option<ErrorField>,
}

#[derive(Deserialize)]
pub(super) struct CompletionChoice {
    pub(super) index: Option<u32>,
    pub(super) message: Option<CompletionMessage>,
    pub(super) finish_reason: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct CompletionMessage {
    pub(super) content: Option<String>,
    pub(super) tool_calls: Option<Vec<CompletionToolCall>>,
}

#[derive(Deserialize)]
pub(super) struct CompletionToolCall {
    pub(super) id: Option<String>,
    pub(super) function: Option<CompletionFunction>,
}

#[derive(Deserialize)]
pub(super) struct CompletionFunction {
    pub(super) name: Option<String>,
    pub(super) arguments: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::test_support::{image_part, msg, text_part};
    use serde_json::{json, Value};
    use services::proto::SamplingParams;

    fn to_json(m: &Message) -> Value {
        serde_json::to_value(WireMessage::from(m)).unwrap()
    }

    fn body_json(req: &ProviderRequest) -> Value {
        serde_json::from_slice(&build_body(req).unwrap()).unwrap()
    }

    #[test]
    fn message_with_string_content() {
        let mut m = msg("user", "hello");
        m.name = Some("bob".into());
        assert_eq!(to_json(&m), json!({"role": "user", "content": "hello", "name": "bob"}));
    }

    #[test]
    fn message_with_parts() {
        let m = Message {
            role: "user".into(),
            parts: vec![
                text_part("what is this?"),
                image_part("data:image/png;base64,AAAA", Some("low")),
                image_part("https://x/y.png", None),
            ],
            ..Default::default()
        };
        assert_eq!(
            to_json(&m),
            json!({"role": "user", "content": [
                {"type": "text", "text": "what is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}},
                {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
            ]})
        );
        // A single text part that was an array on the wire stays an array.
        let m = Message { role: "user".into(), parts: vec![text_part("a")], ..Default::default() };
        assert_eq!(to_json(&m), json!({"role": "user", "content": [{"type": "text", "text": "a"}]}));
    }

    #[test]
    fn assistant_tool_calls_with_null_content_and_tool_message() {
        let m = Message {
            role: "assistant".into(),
            tool_calls: vec![ToolCall {
                id: "call_1".into(),
                r#type: String::new(),
                name: "get_weather".into(),
                arguments: "{\"city\":\"Paris\"}".into(),
            }],
            ..Default::default()
        };
        assert_eq!(
            to_json(&m),
            json!({"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}
            ]})
        );
        let mut t = msg("tool", "22C");
        t.tool_call_id = Some("call_1".into());
        assert_eq!(to_json(&t), json!({"role": "tool", "content": "22C", "tool_call_id": "call_1"}));
    }

    #[test]
    fn body_has_stream_options_and_only_set_params() {
        let req = ProviderRequest {
            model: "gpt-4o-mini".into(),
            messages: vec![
                SharedMessage::shared(msg("system", "be brief")),
                SharedMessage::shared(msg("user", "hi")),
            ],
            ..Default::default()
        };
        assert_eq!(
            body_json(&req),
            json!({
                "model": "gpt-4o-mini",
                "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
                "stream": true,
                "stream_options": {"include_usage": true},
            })
        );
    }

    fn tool(name: &str, description: Option<&str>, parameters_json: Option<&str>) -> Tool {
        Tool {
            r#type: "function".into(),
            name: name.into(),
            description: description.map(Into::into),
            parameters_json: parameters_json.map(Into::into),
        }
    }

    fn function_choice(name: &str) -> Option<ToolChoice> {
        Some(ToolChoice { choice: Some(tool_choice::Choice::Function(name.into())) })
    }

    /// One user message and every parameter, tool and format set.
    fn every_param_request() -> ProviderRequest {
        ProviderRequest {
            model: "m".into(),
            messages: vec![SharedMessage::shared(msg("user", "hi"))],
            params: SamplingParams {
                temperature: Some(0.5),
                top_p: Some(0.9),
                frequency_penalty: Some(-1.0),
                presence_penalty: Some(1.5),
                seed: Some(42.0),
                stop: vec!["END".into(), "\n\n".into()],
                max_completion_tokens: Some(99),
                max_tokens: Some(98),
                n: Some(1),
            },
            max_tokens: Some(64),
            tools: vec![
                tool(
                    "get_weather",
                    Some("Weather"),
                    Some(r#"{"type":"object","properties":{"city":{"type":"string"}}}"#),
                ),
                tool("now", None, None),
            ],
            tool_choice: function_choice("get_weather"),
            response_format_json: Some(r#"{"type":"json_object"}"#.into()),
        }
    }

    #[test]
    fn body_with_every_param() {
        let req = every_param_request();
        let b = body_json(&req);
        assert_eq!(b["temperature"], json!(0.5));
        assert_eq!(b["top_p"], json!(0.9));
        assert_eq!(b["frequency_penalty"], json!(-1.0));
        assert_eq!(b["presence_penalty"], json!(1.5));
        assert!(b["seed"].is_i64(), "seed must be an integer: {}", b["seed"]);
        assert_eq!(b["seed"], json!(42));
        assert_eq!(b["stop"], json!(["END", "\n\n"]));
        // The effective cap from the request wins; the client fields are not forwarded.
        assert_eq!(b["max_tokens"], json!(64));
        assert!(b.get("max_completion_tokens").is_none());
        assert!(b.get("n").is_none());
        assert_eq!(
            b["tools"],
            json!([
                {"type": "function", "function": {"name": "get_weather", "description": "Weather",
                  "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}},
                {"type": "function", "function": {"name": "now"}},
            ])
        );
        assert_eq!(b["tool_choice"], json!({"type": "function", "function": {"name": "get_weather"}}));
        assert_eq!(b["response_format"], json!({"type": "json_object"}));
        assert_eq!(b["stream_options"], json!({"include_usage": true}));

        let mut req2 = req.clone();
        req2.tool_choice = Some(ToolChoice { choice: Some(tool_choice::Choice::Mode("required".into())) });
        assert_eq!(body_json(&req2)["tool_choice"], json!("required"));
        req2.tool_choice = Some(ToolChoice { choice: None });
        assert!(body_json(&req2).get("tool_choice").is_none());
    }

    #[test]
    fn body_bytes_are_exact() {
        // What upstreams (and the e2e mock) receive, byte for byte.
        let req = exact_body_request();
        assert_eq!(String::from_utf8(build_body(&req).unwrap()).unwrap(), BODY1);
        let mut req2 = req.clone();
        req2.tool_choice = Some(ToolChoice { choice: Some(tool_choice::Choice::Mode("auto".into())) });
        req2.messages.truncate(1);
        assert_eq!(String::from_utf8(build_body(&req2).unwrap()).unwrap(), BODY2);
    }

    const BODY1: &str = r#"{"model":"m/x","messages":[{"role":"system","content":"be brief"},{"role":"user","content":"hi \"there\"\n","name":"bob"},{"role":"user","content":[{"type":"text","text":"what is this?"},{"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA","detail":"low"}},{"type":"image_url","image_url":{"url":"https://x/y.png"}}]},{"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"f","arguments":"{\"a\":1}"}},{"id":"call_2","type":"function","function":{"name":"g","arguments":"{}"}}]},{"role":"tool","content":"42","tool_call_id":"call_1"},{"role":"user","content":[{"type":"text","text":"a"}]}],"stream":true,"stream_options":{"include_usage":true},"temperature":0.5,"top_p":1.0,"frequency_penalty":-1.0,"presence_penalty":0.25,"seed":7,"stop":["END"],"max_tokens":64,"tools":[{"type":"function","function":{"name":"f","description":"F","parameters":{"properties":{},"type":"object"}}},{"type":"function","function":{"name":"g"}}],"tool_choice":{"type":"function","function":{"name":"f"}},"response_format":{"json_schema":{"name":"x","schema":{}},"type":"json_schema"}}"#;
    const BODY2: &str = r#"{"model":"m/x","messages":[{"role":"system","content":"be brief"}],"stream":true,"stream_options":{"include_usage":true},"temperature":0.5,"top_p":1.0,"frequency_penalty":-1.0,"presence_penalty":0.25,"seed":7,"stop":["END"],"max_tokens":64,"tools":[{"type":"function","function":{"name":"f","description":"F","parameters":{"properties":{},"type":"object"}}},{"type":"function","function":{"name":"g"}}],"tool_choice":"auto","response_format":{"json_schema":{"name":"x","schema":{}},"type":"json_schema"}}"#;

    /// A request with every shape the body can take.
    fn exact_body_request() -> ProviderRequest {
        let mut named = msg("user", "hi \"there\"\n");
        named.name = Some("bob".into());
        let parts = Message {
            role: "user".into(),
            parts: vec![
                text_part("what is this?"),
                image_part("data:image/png;base64,AAAA", Some("low")),
                image_part("https://x/y.png", None),
                ContentPart { part: None },
            ],
            ..Default::default()
        };
        let calls = Message {
            role: "assistant".into(),
            tool_calls: vec![
                ToolCall {
                    id: "call_1".into(),
                    r#type: String::new(),
                    name: "f".into(),
                    arguments: "{\"a\":1}".into(),
                },
                ToolCall {
                    id: "call_2".into(),
                    r#type: "function".into(),
                    name: "g".into(),
                    arguments: "{}".into(),
                },
            ],
            ..Default::default()
        };
        let mut tool_msg = msg("tool", "42");
        tool_msg.tool_call_id = Some("call_1".into());
        let one_part = Message { role: "user".into(), parts: vec![text_part("a")], ..Default::default() };
        let base = every_param_request();
        ProviderRequest {
            model: "m/x".into(),
            messages: [msg("system", "be brief"), named, parts, calls, tool_msg, one_part]
                .map(SharedMessage::shared)
                .to_vec(),
            params: SamplingParams {
                top_p: Some(1.0),
                presence_penalty: Some(0.25),
                seed: Some(7.0),
                stop: vec!["END".into()],
                ..base.params
            },
            tools: vec![
                tool("f", Some("F"), Some(r#"{"type":"object","properties":{}}"#)),
                tool("g", None, None),
            ],
            tool_choice: function_choice("f"),
            response_format_json: Some(
                r#"{"type":"json_schema","json_schema":{"name":"x","schema":{}}}"#.into(),
            ),
            ..base
        }
    }

    #[test]
    fn bad_embedded_json_is_rejected() {
        let req = ProviderRequest {
            model: "m".into(),
            messages: vec![SharedMessage::shared(msg("user", "hi"))],
            tools: vec![tool("f", None, Some("{nope"))],
            ..Default::default()
        };
        assert!(matches!(build_body(&req), Err(ProviderError::Rejected(m)) if m.contains("tools[0]")));
        let req = ProviderRequest { response_format_json: Some("[".into()), ..Default::default() };
        assert!(matches!(build_body(&req), Err(ProviderError::Rejected(m)) if m.contains("response_format")));
    }
}
