//! Request JSON → [`AgentRunRequest`].
//!
//! The body's fields are read as [`Value`]s first and then converted field by
//! field, so that a wrong *type* is a 400 naming the field (`param`) instead of a
//! serde message. The top level is not built into a map: each field this module
//! reads is kept as it is parsed and every other key is skipped unbuilt. Range
//! and semantic rules (temperature 0–2, `n` only 1, role names,
//! tool names, …) belong to agent-svc, so gRPC callers get the same rules; here
//! values are only carried faithfully. Unknown fields are ignored.

use crate::error::ApiError;
use crate::openai::DEFAULT_MODEL;
use serde_json::{Map, Value};
use services::messages::check_images;
use services::proto::{
    agent_run_request::Session, content_part::Part, tool_choice::Choice, AgentRunRequest, ContentPart,
    ImageUrl, Message, SamplingParams, Tool, ToolCall, ToolChoice,
};

/// The channel name agent-svc uses in generated session keys.
const CHANNEL: &str = "openai";

const INVALID_MODEL: &str = "Invalid `model`. Use `openclaw` or `openclaw/<agentId>`.";

/// A translated request.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    /// What agent-svc runs.
    pub run: AgentRunRequest,
    /// The request's `model`, echoed in the response (`openclaw` when absent).
    pub model: String,
    /// `"stream": true`.
    pub stream: bool,
}

/// The OpenClaw request headers that steer a run (empty values count as absent).
#[derive(Debug, Clone, Copy, Default)]
pub struct Overrides<'a> {
    /// `x-openclaw-agent-id`: overrides the agent chosen by `model`.
    pub agent_id: Option<&'a str>,
    /// `x-openclaw-model`: `provider/model` to run on.
    pub model: Option<&'a str>,
    /// `x-openclaw-session-key`: wins over `user`.
    pub session_key: Option<&'a str>,
}

/// `gateway.http.endpoints.chatCompletions.images` (the rules live in `services`).
pub use services::messages::ImagePolicy;

/// Maps `model` to the agent id to send (`""` = the default agent), per SPEC §4:
/// `openclaw`, `openclaw/default` → default; `openclaw/<id>`, `openclaw:<id>`,
/// `agent:<id>` → `<id>`; anything else → `None`.
pub fn agent_for_model(model: &str) -> Option<&str> {
    if model == DEFAULT_MODEL || model == "openclaw/default" {
        return Some("");
    }
    let id = model
        .strip_prefix("openclaw/")
        .or_else(|| model.strip_prefix("openclaw:"))
        .or_else(|| model.strip_prefix("agent:"))?;
    (!id.is_empty()).then_some(id)
}

/// Parses and translates a request body. `overrides` are the OpenClaw headers.
pub fn parse_chat_request(
    body: &[u8],
    overrides: &Overrides<'_>,
    images: &ImagePolicy,
) -> Result<ChatRequest, ApiError> {
    let invalid = |e: serde_json::Error| ApiError::invalid_no_param(format!("Invalid JSON: {e}"));
    // JSON is UTF-8 throughout, including the fields that are skipped unread (whose
    // strings serde_json does not decode); serde's own message says where it breaks.
    let Ok(text) = std::str::from_utf8(body) else {
        return Err(serde_json::from_slice::<Value>(body)
            .map_or_else(invalid, |_| ApiError::invalid_no_param("Invalid JSON: the body is not UTF-8.")));
    };
    let body: Body = serde_json::from_str(text).map_err(invalid)?;
    let Body(Some(mut obj)) = body else {
        return Err(ApiError::invalid_no_param("The request body must be a JSON object."));
    };

    let model = match take(&mut obj, "model") {
        None => DEFAULT_MODEL.to_owned(),
        Some(Value::String(s)) => s,
        Some(_) => return Err(ApiError::invalid("model", INVALID_MODEL)),
    };
    // The model is always checked; the header only overrides the choice it makes.
    let model_agent = agent_for_model(&model).ok_or_else(|| ApiError::invalid("model", INVALID_MODEL))?;
    let agent_id = non_empty(overrides.agent_id).unwrap_or(model_agent).to_owned();

    let messages = messages(take(&mut obj, "messages"))?;
    check_images(&messages, images)?;

    let stream = opt_bool(&mut obj, "stream")?.unwrap_or(false);
    let include_usage = match take(&mut obj, "stream_options") {
        None => false,
        Some(Value::Object(mut so)) => match take(&mut so, "include_usage") {
            None => false,
            Some(Value::Bool(b)) => b,
            Some(_) => {
                return Err(ApiError::invalid(
                    "stream_options",
                    "`stream_options.include_usage` must be a boolean.",
                ))
            }
        },
        Some(_) => return Err(ApiError::invalid("stream_options", "`stream_options` must be an object.")),
    };

    let params = SamplingParams {
        temperature: opt_f64(&mut obj, "temperature")?,
        top_p: opt_f64(&mut obj, "top_p")?,
        frequency_penalty: opt_f64(&mut obj, "frequency_penalty")?,
        presence_penalty: opt_f64(&mut obj, "presence_penalty")?,
        seed: seed(&mut obj)?,
        stop: stop(take(&mut obj, "stop"))?,
        max_completion_tokens: opt_i64(&mut obj, "max_completion_tokens")?,
        max_tokens: opt_i64(&mut obj, "max_tokens")?,
        n: opt_i64(&mut obj, "n")?,
    };

    // Checked even when the session key header wins over it.
    let user = match take(&mut obj, "user") {
        None => None,
        Some(Value::String(u)) => Some(u).filter(|u| !u.is_empty()),
        Some(_) => return Err(ApiError::invalid("user", "`user` must be a string.")),
    };
    let session = match non_empty(overrides.session_key) {
        Some(key) => Some(Session::SessionKey(key.to_owned())),
        None => user.map(Session::User),
    };

    let run = AgentRunRequest {
        agent_id,
        session,
        channel: CHANNEL.to_owned(),
        messages,
        model: non_empty(overrides.model).map(str::to_owned),
        params: Some(params),
        tools: tools(take(&mut obj, "tools"))?,
        tool_choice: tool_choice(take(&mut obj, "tool_choice"))?,
        response_format_json: take(&mut obj, "response_format").map(|v| v.to_string()),
        include_usage,
        run_id: String::new(),
        allow_image_urls: images.allow_url,
        // A JSON answer is only read whole.
        coalesce_text: !stream,
    };
    Ok(ChatRequest { run, model, stream })
}

fn non_empty(s: Option<&str>) -> Option<&str> {
    s.filter(|s| !s.is_empty())
}

/// The top-level keys [`parse_chat_request`] reads; any other is skipped.
const FIELDS: [&str; 17] = [
    "model",
    "messages",
    "stream",
    "stream_options",
    "temperature",
    "top_p",
    "frequency_penalty",
    "presence_penalty",
    "seed",
    "stop",
    "max_completion_tokens",
    "max_tokens",
    "n",
    "user",
    "tools",
    "tool_choice",
    "response_format",
];

/// A request body as read: its [`FIELDS`] (a repeated key keeps its last value,
/// as in a map), or `None` when it is not an object.
struct Body(Option<TopLevel>);

/// The values of the [`FIELDS`] present in the body, in that order.
#[derive(Default)]
struct TopLevel([Option<Value>; FIELDS.len()]);

/// Where a field's value is found: the body's top level or a nested object.
trait Fields {
    /// Removes `key`; JSON `null` counts as absent.
    fn take_field(&mut self, key: &str) -> Option<Value>;
}

impl Fields for Map<String, Value> {
    fn take_field(&mut self, key: &str) -> Option<Value> {
        self.remove(key).filter(|v| !v.is_null())
    }
}

impl Fields for TopLevel {
    fn take_field(&mut self, key: &str) -> Option<Value> {
        let at = FIELDS.iter().position(|f| *f == key);
        debug_assert!(at.is_some(), "{key} is read but not in FIELDS");
        self.0[at?].take().filter(|v| !v.is_null())
    }
}

impl<'de> serde::Deserialize<'de> for Body {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(BodyVisitor)
    }
}

struct BodyVisitor;

impl<'de> serde::de::Visitor<'de> for BodyVisitor {
    type Value = Body;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Body, A::Error> {
        let mut top = TopLevel::default();
        while let Some(FieldKey(at)) = map.next_key()? {
            match at {
                Some(i) => top.0[i] = Some(map.next_value()?),
                None => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok(Body(Some(top)))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Body, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(Body(None))
    }

    fn visit_bool<E>(self, _: bool) -> Result<Body, E> {
        Ok(Body(None))
    }

    fn visit_i64<E>(self, _: i64) -> Result<Body, E> {
        Ok(Body(None))
    }

    fn visit_u64<E>(self, _: u64) -> Result<Body, E> {
        Ok(Body(None))
    }

    fn visit_f64<E>(self, _: f64) -> Result<Body, E> {
        Ok(Body(None))
    }

    fn visit_str<E>(self, _: &str) -> Result<Body, E> {
        Ok(Body(None))
    }

    fn visit_unit<E>(self) -> Result<Body, E> {
        Ok(Body(None))
    }
}

/// A top-level key: its index in [`FIELDS`], `None` for any other.
struct FieldKey(Option<usize>);

impl<'de> serde::Deserialize<'de> for FieldKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl serde::de::Visitor<'_> for KeyVisitor {
            type Value = FieldKey;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a field name")
            }

            fn visit_str<E>(self, key: &str) -> Result<FieldKey, E> {
                Ok(FieldKey(FIELDS.iter().position(|f| *f == key)))
            }
        }
        d.deserialize_identifier(KeyVisitor)
    }
}

/// Removes `key` from `obj`; JSON `null` counts as absent.
fn take(obj: &mut impl Fields, key: &str) -> Option<Value> {
    obj.take_field(key)
}

fn opt_bool(obj: &mut impl Fields, key: &'static str) -> Result<Option<bool>, ApiError> {
    match take(obj, key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(b)),
        Some(_) => Err(ApiError::invalid(key, format!("`{key}` must be a boolean."))),
    }
}

fn opt_f64(obj: &mut impl Fields, key: &'static str) -> Result<Option<f64>, ApiError> {
    match take(obj, key) {
        None => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64()),
        Some(_) => Err(ApiError::invalid(key, format!("`{key}` must be a number."))),
    }
}

/// The largest integer a double holds exactly (2^53 − 1); `seed` travels to
/// agent-svc as a double, so anything beyond would be silently rounded.
pub const MAX_EXACT_SEED: u64 = (1 << 53) - 1;

/// `seed` as a double. An integer beyond ±[`MAX_EXACT_SEED`] is refused here,
/// where its exact value is still known; a float (`1.5`, `42.0`) goes on to
/// agent-svc's integer rule, which applies the same bound.
fn seed(obj: &mut impl Fields) -> Result<Option<f64>, ApiError> {
    let too_big = || {
        ApiError::invalid(
            "seed",
            format!("`seed` must be an integer between -{MAX_EXACT_SEED} and {MAX_EXACT_SEED}."),
        )
    };
    match take(obj, "seed") {
        None => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(i) = n.as_i64() {
                if i.unsigned_abs() > MAX_EXACT_SEED {
                    return Err(too_big());
                }
                #[allow(clippy::cast_precision_loss)] // exact: |i| < 2^53
                Ok(Some(i as f64))
            } else if n.is_u64() {
                Err(too_big())
            } else {
                Ok(n.as_f64())
            }
        }
        Some(_) => Err(ApiError::invalid("seed", "`seed` must be a number.")),
    }
}

/// An integer; a whole float (`100.0`) is accepted, a fraction is not.
/// Values beyond `i64` saturate (agent-svc and the provider cap them anyway).
fn opt_i64(obj: &mut impl Fields, key: &'static str) -> Result<Option<i64>, ApiError> {
    let bad = || ApiError::invalid(key, format!("`{key}` must be an integer."));
    match take(obj, key) {
        None => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(i) = n.as_i64() {
                Ok(Some(i))
            } else if n.is_u64() {
                Ok(Some(i64::MAX))
            } else {
                match n.as_f64() {
                    #[allow(clippy::cast_possible_truncation)] // saturating `as` is the intent
                    Some(f) if f.is_finite() && f.fract() == 0.0 => Ok(Some(f as i64)),
                    _ => Err(bad()),
                }
            }
        }
        Some(_) => Err(bad()),
    }
}

fn stop(v: Option<Value>) -> Result<Vec<String>, ApiError> {
    let bad = || ApiError::invalid("stop", "`stop` must be a string or an array of strings.");
    match v {
        None => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s]),
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|i| match i {
                Value::String(s) => Ok(s),
                _ => Err(bad()),
            })
            .collect(),
        Some(_) => Err(bad()),
    }
}

fn messages(v: Option<Value>) -> Result<Vec<Message>, ApiError> {
    match v {
        None => Err(ApiError::invalid("messages", "Missing required parameter: `messages`.")),
        Some(Value::Array(items)) => items.into_iter().enumerate().map(|(i, m)| message(i, m)).collect(),
        Some(_) => Err(ApiError::invalid("messages", "`messages` must be an array.")),
    }
}

fn bad_message(i: usize, what: &str) -> ApiError {
    ApiError::invalid("messages", format!("`messages[{i}]`{what}"))
}

fn message(i: usize, v: Value) -> Result<Message, ApiError> {
    let Value::Object(mut m) = v else { return Err(bad_message(i, " must be an object.")) };
    let role = match take(&mut m, "role") {
        Some(Value::String(r)) => r,
        Some(_) => return Err(bad_message(i, ".role must be a string.")),
        None => return Err(bad_message(i, " is missing `role`.")),
    };
    let (parts, text_only) = match take(&mut m, "content") {
        // Null content: allowed on an assistant message with tool calls (agent-svc checks).
        None => (Vec::new(), false),
        Some(Value::String(s)) => (vec![ContentPart { part: Some(Part::Text(s)) }], true),
        Some(Value::Array(items)) => {
            (items.into_iter().map(|p| content_part(i, p)).collect::<Result<_, _>>()?, false)
        }
        Some(_) => return Err(bad_message(i, ".content must be a string, an array of parts or null.")),
    };
    let name = match take(&mut m, "name") {
        None => None,
        Some(Value::String(s)) => Some(s),
        Some(_) => return Err(bad_message(i, ".name must be a string.")),
    };
    let tool_call_id = match take(&mut m, "tool_call_id") {
        None => None,
        Some(Value::String(s)) => Some(s),
        Some(_) => return Err(bad_message(i, ".tool_call_id must be a string.")),
    };
    let tool_calls = match take(&mut m, "tool_calls") {
        None => Vec::new(),
        Some(Value::Array(calls)) => calls.into_iter().map(|c| tool_call(i, c)).collect::<Result<_, _>>()?,
        Some(_) => return Err(bad_message(i, ".tool_calls must be an array.")),
    };
    Ok(Message { role, parts, text_only, name, tool_calls, tool_call_id })
}

fn content_part(i: usize, v: Value) -> Result<ContentPart, ApiError> {
    let Value::Object(mut p) = v else { return Err(bad_message(i, ".content parts must be objects.")) };
    let part = match take(&mut p, "type").as_ref().and_then(Value::as_str) {
        Some("text") => match take(&mut p, "text") {
            Some(Value::String(t)) => Part::Text(t),
            _ => return Err(bad_message(i, ": a `text` part needs a string `text`.")),
        },
        Some("image_url") => {
            let bad = || bad_message(i, ": an `image_url` part needs `image_url.url`.");
            match take(&mut p, "image_url") {
                Some(Value::String(url)) => Part::ImageUrl(ImageUrl { url, detail: None }),
                Some(Value::Object(mut img)) => {
                    let url = match take(&mut img, "url") {
                        Some(Value::String(u)) => u,
                        _ => return Err(bad()),
                    };
                    let detail = match take(&mut img, "detail") {
                        None => None,
                        Some(Value::String(d)) => Some(d),
                        Some(_) => return Err(bad_message(i, ": `image_url.detail` must be a string.")),
                    };
                    Part::ImageUrl(ImageUrl { url, detail })
                }
                _ => return Err(bad()),
            }
        }
        Some(other) => {
            return Err(bad_message(
                i,
                &format!(": unsupported content part type {other:?} (use text or image_url)."),
            ))
        }
        None => return Err(bad_message(i, ": each content part needs a string `type`.")),
    };
    Ok(ContentPart { part: Some(part) })
}

fn tool_call(i: usize, v: Value) -> Result<ToolCall, ApiError> {
    let bad = || bad_message(i, ": each tool call needs `id`, `type` and `function.name` strings.");
    let Value::Object(mut c) = v else { return Err(bad()) };
    let id = opt_string_in(&mut c, "id").map_err(|_| bad())?.unwrap_or_default();
    let r#type = opt_string_in(&mut c, "type").map_err(|_| bad())?.unwrap_or_else(|| "function".into());
    let Some(Value::Object(mut f)) = take(&mut c, "function") else { return Err(bad()) };
    let name = opt_string_in(&mut f, "name").map_err(|_| bad())?.unwrap_or_default();
    // JSON text, as OpenAI requires: an object is refused rather than re-serialized,
    // so that what is stored and sent upstream is exactly what the model produced.
    let arguments = match take(&mut f, "arguments") {
        None => String::new(),
        Some(Value::String(s)) => s,
        Some(_) => return Err(bad_message(i, ": `function.arguments` of a tool call must be a string.")),
    };
    Ok(ToolCall { id, r#type, name, arguments })
}

fn opt_string_in(obj: &mut Map<String, Value>, key: &str) -> Result<Option<String>, ()> {
    match take(obj, key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(()),
    }
}

fn tools(v: Option<Value>) -> Result<Vec<Tool>, ApiError> {
    let bad = || {
        ApiError::invalid(
            "tools",
            "`tools` must be an array of {type: \"function\", function: {name, description?, parameters?}}.",
        )
    };
    let Some(v) = v else { return Ok(Vec::new()) };
    let Value::Array(items) = v else { return Err(bad()) };
    items
        .into_iter()
        .map(|t| {
            let Value::Object(mut t) = t else { return Err(bad()) };
            let r#type = opt_string_in(&mut t, "type").map_err(|_| bad())?.unwrap_or_default();
            let Some(Value::Object(mut f)) = take(&mut t, "function") else { return Err(bad()) };
            let name = opt_string_in(&mut f, "name").map_err(|_| bad())?.unwrap_or_default();
            let description = opt_string_in(&mut f, "description").map_err(|_| bad())?;
            // Any JSON here is carried; agent-svc requires an object.
            let parameters_json = take(&mut f, "parameters").map(|p| p.to_string());
            Ok(Tool { r#type, name, description, parameters_json })
        })
        .collect()
}

fn tool_choice(v: Option<Value>) -> Result<Option<ToolChoice>, ApiError> {
    let bad = || {
        ApiError::invalid(
            "tool_choice",
            "`tool_choice` must be auto, none, required or {type: \"function\", function: {name}}.",
        )
    };
    let choice = match v {
        None => return Ok(None),
        Some(Value::String(m)) if matches!(m.as_str(), "auto" | "none" | "required") => Choice::Mode(m),
        Some(Value::Object(mut o)) => {
            if take(&mut o, "type").as_ref().and_then(Value::as_str) != Some("function") {
                return Err(bad());
            }
            match take(&mut o, "function") {
                Some(Value::Object(mut f)) => match take(&mut f, "name") {
                    Some(Value::String(name)) => Choice::Function(name),
                    _ => return Err(bad()),
                },
                _ => return Err(bad()),
            }
        }
        Some(_) => return Err(bad()),
    };
    Ok(Some(ToolChoice { choice: Some(choice) }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const POLICY: ImagePolicy = ImagePolicy { allow_url: false, max_bytes: 10 * 1024 * 1024 };

    fn parse(v: Value) -> Result<ChatRequest, ApiError> {
        parse_chat_request(v.to_string().as_bytes(), &Overrides::default(), &POLICY)
    }

    fn param_of(r: Result<ChatRequest, ApiError>) -> Option<String> {
        match r {
            Err(ApiError::InvalidRequest { param, .. }) => param.map(|p| p.into_owned()),
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    fn user(text: &str) -> Value {
        json!({"role": "user", "content": text})
    }

    #[test]
    fn model_to_agent_table() {
        assert_eq!(agent_for_model("openclaw"), Some(""));
        assert_eq!(agent_for_model("openclaw/default"), Some(""));
        assert_eq!(agent_for_model("openclaw/main"), Some("main"));
        assert_eq!(agent_for_model("openclaw:beta"), Some("beta"));
        assert_eq!(agent_for_model("agent:beta"), Some("beta"));
        for bad in ["gpt-4o", "", "openclaw/", "agent:", "OpenClaw", "openai/gpt-4o", "openclawx"] {
            assert_eq!(agent_for_model(bad), None, "{bad}");
        }
    }

    #[test]
    fn model_selection_and_echo() {
        let r = parse(json!({"messages": [user("hi")]})).unwrap();
        assert_eq!(r.model, "openclaw");
        assert_eq!(r.run.agent_id, "");
        let r = parse(json!({"model": "openclaw/beta", "messages": [user("hi")]})).unwrap();
        assert_eq!((r.model.as_str(), r.run.agent_id.as_str()), ("openclaw/beta", "beta"));
        let e = parse(json!({"model": "gpt-4o", "messages": [user("hi")]})).unwrap_err();
        assert_eq!(e.to_string(), "Invalid `model`. Use `openclaw` or `openclaw/<agentId>`.");
        assert_eq!(param_of(Err(e)).as_deref(), Some("model"));
        assert_eq!(param_of(parse(json!({"model": 4, "messages": []}))).as_deref(), Some("model"));
        // The header overrides the model's choice.
        let ov = Overrides { agent_id: Some("ops"), model: Some("echo/echo"), session_key: None };
        let body = json!({"model": "openclaw/beta", "messages": [user("hi")]}).to_string();
        let r = parse_chat_request(body.as_bytes(), &ov, &POLICY).unwrap();
        assert_eq!(r.run.agent_id, "ops");
        assert_eq!(r.run.model.as_deref(), Some("echo/echo"));
        assert_eq!(r.model, "openclaw/beta");
    }

    #[test]
    fn malformed_bodies() {
        let e = parse_chat_request(b"{\"model\": ", &Overrides::default(), &POLICY).unwrap_err();
        assert!(matches!(&e, ApiError::InvalidRequest { param: None, .. }));
        assert!(e.to_string().contains("line 1"), "{e}");
        let e = parse_chat_request(b"", &Overrides::default(), &POLICY).unwrap_err();
        assert!(matches!(e, ApiError::InvalidRequest { .. }));
        for not_object in ["[]", "[1, [2, {\"a\": 3}]]", "1", "-1", "1.5", "true", "\"x\"", "null"] {
            let e = parse_chat_request(not_object.as_bytes(), &Overrides::default(), &POLICY).unwrap_err();
            assert_eq!(e.to_string(), "The request body must be a JSON object.", "{not_object}");
        }
        // Broken JSON inside a field that is skipped is still broken JSON.
        let e = parse_chat_request(br#"{"extra": [1, }"#, &Overrides::default(), &POLICY).unwrap_err();
        assert!(e.to_string().starts_with("Invalid JSON: "), "{e}");
    }

    #[test]
    fn invalid_utf8_anywhere_is_invalid_json() {
        let mut body = br#"{"messages": [{"role": "user", "content": "hi"}], "extra": "x"}"#.to_vec();
        let at = body.iter().rposition(|b| *b == b'x').unwrap();
        body[at] = 0xff;
        let e = parse_chat_request(&body, &Overrides::default(), &POLICY).unwrap_err();
        assert!(e.to_string().starts_with("Invalid JSON: "), "{e}");
    }

    #[test]
    fn unknown_fields_are_skipped_and_a_repeated_field_keeps_its_last_value() {
        let body = br#"{"model": "openclaw/a", "extra": {"deep": [1, {"x": null}], "s": "\u00e9"},
            "messages": [{"role": "user", "content": "hi"}], "stream": false, "model": "openclaw/b",
            "stream": true, "user": null, "n": 1}"#;
        let r = parse_chat_request(body, &Overrides::default(), &POLICY).unwrap();
        assert_eq!(r.model, "openclaw/b");
        assert_eq!(r.run.agent_id, "b");
        assert!(r.stream);
        assert_eq!(r.run.session, None);
        assert_eq!(r.run.params.as_ref().and_then(|p| p.n), Some(1));
    }

    #[test]
    fn wrong_types_name_the_field() {
        let m = json!([user("hi")]);
        let cases = [
            (json!({"messages": m, "temperature": "hot"}), "temperature"),
            (json!({"messages": m, "top_p": true}), "top_p"),
            (json!({"messages": m, "frequency_penalty": []}), "frequency_penalty"),
            (json!({"messages": m, "presence_penalty": {}}), "presence_penalty"),
            (json!({"messages": m, "seed": "1"}), "seed"),
            (json!({"messages": m, "stop": 3}), "stop"),
            (json!({"messages": m, "stop": ["a", 1]}), "stop"),
            (json!({"messages": m, "max_tokens": "10"}), "max_tokens"),
            (json!({"messages": m, "max_tokens": 1.5}), "max_tokens"),
            (json!({"messages": m, "max_completion_tokens": "x"}), "max_completion_tokens"),
            (json!({"messages": m, "n": 1.5}), "n"),
            (json!({"messages": m, "stream": "yes"}), "stream"),
            (json!({"messages": m, "stream_options": 1}), "stream_options"),
            (json!({"messages": m, "stream_options": {"include_usage": "yes"}}), "stream_options"),
            (json!({"messages": m, "user": 5}), "user"),
            (json!({"messages": m, "tools": {}}), "tools"),
            (json!({"messages": m, "tools": [{"type": "function", "function": "f"}]}), "tools"),
            (json!({"messages": m, "tools": [{"type": "function", "function": {"name": 1}}]}), "tools"),
            (json!({"messages": m, "tool_choice": "sometimes"}), "tool_choice"),
            (json!({"messages": m, "tool_choice": {"type": "function"}}), "tool_choice"),
            (json!({"messages": m, "tool_choice": 1}), "tool_choice"),
            (json!({}), "messages"),
            (json!({"messages": "hi"}), "messages"),
            (json!({"messages": [1]}), "messages"),
            (json!({"messages": [{"content": "x"}]}), "messages"),
            (json!({"messages": [{"role": 1, "content": "x"}]}), "messages"),
            (json!({"messages": [{"role": "user", "content": 5}]}), "messages"),
            (json!({"messages": [{"role": "user", "content": [{"type": "audio"}]}]}), "messages"),
            (json!({"messages": [{"role": "user", "content": [{"type": "text"}]}]}), "messages"),
            (json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}), "messages"),
            (json!({"messages": [{"role": "user", "name": 1, "content": "x"}]}), "messages"),
            (json!({"messages": [{"role": "assistant", "tool_calls": {}}]}), "messages"),
            (json!({"messages": [{"role": "assistant", "tool_calls": [{"id": "a"}]}]}), "messages"),
            (json!({"messages": [{"role": "tool", "tool_call_id": 3, "content": "x"}]}), "messages"),
            (
                json!({"messages": [{"role": "assistant", "tool_calls": [
                {"id": "a", "function": {"name": "f", "arguments": {"x": 1}}}]}]}),
                "messages",
            ),
            (
                json!({"messages": [{"role": "assistant", "tool_calls": [
                {"id": "a", "function": {"name": "f", "arguments": 3}}]}]}),
                "messages",
            ),
            (json!({"messages": m, "seed": 9_007_199_254_740_992_u64}), "seed"),
            (json!({"messages": m, "seed": -9_007_199_254_740_992_i64}), "seed"),
            (json!({"messages": m, "seed": u64::MAX}), "seed"),
        ];
        for (body, param) in cases {
            assert_eq!(param_of(parse(body.clone())).as_deref(), Some(param), "{body}");
        }
    }

    #[test]
    fn values_are_carried_faithfully() {
        let r = parse(json!({
            "messages": [user("hi")],
            "temperature": 2.5, "top_p": 0.5, "frequency_penalty": -1, "presence_penalty": 1,
            "seed": 1.5, "stop": "END", "max_tokens": 0, "max_completion_tokens": 100.0, "n": 2,
            "stream": true, "stream_options": {"include_usage": true},
            "response_format": {"type": "json_object"},
            "logit_bias": {"1": 2}, "unknown_field": [1, 2, 3], "metadata": null,
        }))
        .unwrap();
        let p = r.run.params.unwrap();
        assert_eq!(p.temperature, Some(2.5));
        assert_eq!(p.top_p, Some(0.5));
        assert_eq!(p.frequency_penalty, Some(-1.0));
        assert_eq!(p.presence_penalty, Some(1.0));
        assert_eq!(p.seed, Some(1.5));
        assert_eq!(p.stop, vec!["END".to_string()]);
        assert_eq!(p.max_tokens, Some(0));
        assert_eq!(p.max_completion_tokens, Some(100));
        assert_eq!(p.n, Some(2));
        assert!(r.stream);
        assert!(!r.run.coalesce_text, "a streaming client sees every delta");
        assert!(r.run.include_usage);
        assert_eq!(r.run.channel, "openai");
        assert_eq!(r.run.response_format_json.as_deref(), Some(r#"{"type":"json_object"}"#));
        let r = parse(json!({"messages": [user("hi")], "stop": ["a", "b"], "temperature": null})).unwrap();
        assert_eq!(r.run.params.as_ref().unwrap().stop, vec!["a".to_string(), "b".to_string()]);
        assert_eq!(r.run.params.unwrap().temperature, None);
        assert!(!r.stream);
        assert!(r.run.coalesce_text, "a JSON answer is read whole");
        let r = parse(json!({"messages": [user("hi")], "max_tokens": u64::MAX})).unwrap();
        assert_eq!(r.run.params.unwrap().max_tokens, Some(i64::MAX));
    }

    #[test]
    fn seeds_are_carried_exactly_or_refused() {
        // 2^53 + 1 used to become 2^53 on its way to a double (found by the fuzzer and schemathesis).
        for bad in [9_007_199_254_740_993u64, 9_007_199_254_740_992, u64::MAX] {
            let e = parse(json!({"messages": [user("hi")], "seed": bad})).unwrap_err();
            assert!(e.to_string().contains("between"), "{bad}: {e}");
        }
        for seed in [9_007_199_254_740_991i64, -9_007_199_254_740_991, 0, 42] {
            let r = parse(json!({"messages": [user("hi")], "seed": seed})).unwrap();
            assert_eq!(r.run.params.unwrap().seed, Some(seed as f64));
        }
    }

    #[test]
    fn tool_call_arguments_are_a_string() {
        let call = |arguments: Value| {
            json!({"messages": [{"role": "assistant", "content": null, "tool_calls": [
                {"id": "c", "type": "function", "function": {"name": "f", "arguments": arguments}}]},
                user("hi")]})
        };
        let args = |v: Value| parse(call(v)).unwrap().run.messages[0].tool_calls[0].arguments.clone();
        assert_eq!(args(json!("{\"a\":1}")), r#"{"a":1}"#);
        assert_eq!(args(Value::Null), "");
        // As at OpenAI: anything but a string (an object included) is refused, not re-encoded.
        for bad in [json!({"a": 1}), json!(5), json!([1]), json!(true)] {
            let e = parse(call(bad.clone())).unwrap_err();
            assert!(e.to_string().contains("function.arguments"), "{bad}: {e}");
            assert_eq!(param_of(Err(e)).as_deref(), Some("messages"));
        }
    }

    #[test]
    fn sessions() {
        let r = parse(json!({"messages": [user("hi")]})).unwrap();
        assert_eq!(r.run.session, None);
        let r = parse(json!({"messages": [user("hi")], "user": "alice"})).unwrap();
        assert_eq!(r.run.session, Some(Session::User("alice".into())));
        let r = parse(json!({"messages": [user("hi")], "user": ""})).unwrap();
        assert_eq!(r.run.session, None);
        let ov = Overrides { session_key: Some("my-key"), ..Default::default() };
        let body = json!({"messages": [user("hi")], "user": "alice"}).to_string();
        let r = parse_chat_request(body.as_bytes(), &ov, &POLICY).unwrap();
        assert_eq!(r.run.session, Some(Session::SessionKey("my-key".into())));
        // The header wins over `user`, but a `user` of the wrong type is still a 400.
        let body = json!({"messages": [user("hi")], "user": {}}).to_string();
        let e = parse_chat_request(body.as_bytes(), &ov, &POLICY);
        assert_eq!(param_of(e).as_deref(), Some("user"));
    }

    #[test]
    fn seeds_are_exact_or_refused() {
        let max = MAX_EXACT_SEED as i64;
        for seed in [0, 42, max, -max] {
            let r = parse(json!({"messages": [user("hi")], "seed": seed})).unwrap();
            #[allow(clippy::cast_precision_loss)]
            let expected = seed as f64;
            assert_eq!(r.run.params.unwrap().seed, Some(expected));
        }
        // 2^53 + 1 rounds to 2^53 as a double: refused, never sent rounded.
        let e = parse_chat_request(
            br#"{"messages":[{"role":"user","content":"hi"}],"seed":9007199254740993}"#,
            &Overrides::default(),
            &POLICY,
        );
        assert_eq!(param_of(e).as_deref(), Some("seed"));
    }

    #[test]
    fn content_forms() {
        let r = parse(json!({"messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "name": "bob", "content": [
                {"type": "text", "text": "look"},
                {"type": "image_url", "image_url": "data:image/png;base64,AAAA"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}},
            ]},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}},
                {"id": "call_2", "type": "function", "function": {"name": "g"}},
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "42"},
        ]}))
        .unwrap();
        let m = &r.run.messages;
        assert_eq!(m.len(), 4);
        assert!(m[0].text_only);
        assert_eq!(m[0].parts, vec![ContentPart { part: Some(Part::Text("be brief".into())) }]);
        assert!(!m[1].text_only);
        assert_eq!(m[1].name.as_deref(), Some("bob"));
        assert_eq!(m[1].parts.len(), 3);
        assert_eq!(
            m[1].parts[2].part,
            Some(Part::ImageUrl(ImageUrl {
                url: "data:image/png;base64,AAAA".into(),
                detail: Some("low".into())
            }))
        );
        assert!(m[2].parts.is_empty() && !m[2].text_only);
        assert_eq!(m[2].tool_calls[0].name, "f");
        assert_eq!(m[2].tool_calls[0].r#type, "function");
        assert_eq!(m[2].tool_calls[0].arguments, r#"{"a":1}"#);
        assert_eq!(m[2].tool_calls[1].arguments, "");
        assert_eq!(m[3].tool_call_id.as_deref(), Some("call_1"));
        // Role values are agent-svc's rule; the gateway carries them.
        let r = parse(json!({"messages": [{"role": "robot", "content": "x"}]})).unwrap();
        assert_eq!(r.run.messages[0].role, "robot");
    }

    #[test]
    fn tools_and_choice() {
        let r = parse(json!({"messages": [user("hi")],
            "tools": [{"type": "function", "function": {"name": "get_weather", "description": "d",
                       "parameters": {"type": "object"}}}],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}))
        .unwrap();
        assert_eq!(
            r.run.tools,
            vec![Tool {
                r#type: "function".into(),
                name: "get_weather".into(),
                description: Some("d".into()),
                parameters_json: Some(r#"{"type":"object"}"#.into()),
            }]
        );
        assert_eq!(
            r.run.tool_choice,
            Some(ToolChoice { choice: Some(Choice::Function("get_weather".into())) })
        );
        for mode in ["auto", "none", "required"] {
            let r = parse(json!({"messages": [user("hi")], "tool_choice": mode})).unwrap();
            assert_eq!(r.run.tool_choice, Some(ToolChoice { choice: Some(Choice::Mode(mode.into())) }));
        }
    }

    fn image_msg(urls: &[String]) -> Value {
        let parts: Vec<Value> =
            urls.iter().map(|u| json!({"type": "image_url", "image_url": {"url": u}})).collect();
        json!({"role": "user", "content": parts})
    }

    #[test]
    fn image_rules() {
        let url = "https://example.com/cat.png".to_string();
        let e = parse(json!({"messages": [image_msg(std::slice::from_ref(&url))]}));
        assert_eq!(param_of(e).as_deref(), Some("messages"));
        let body = json!({"messages": [image_msg(std::slice::from_ref(&url))]}).to_string();
        let allow = ImagePolicy { allow_url: true, ..POLICY };
        let r = parse_chat_request(body.as_bytes(), &Overrides::default(), &allow).unwrap();
        assert!(r.run.allow_image_urls);

        let small = "data:image/png;base64,AAAA".to_string();
        parse(json!({"messages": [image_msg(&vec![small.clone(); 8])]})).unwrap();
        let e = parse(json!({"messages": [image_msg(&vec![small.clone(); 9])]}));
        assert_eq!(param_of(e).as_deref(), Some("messages"));
        // Images before the last assistant message are history, not the new turn.
        parse(json!({"messages": [
            image_msg(&vec![small.clone(); 8]), {"role": "assistant", "content": "ok"},
            image_msg(&vec![small.clone(); 8])]}))
        .unwrap();

        // Per-image cap from config.
        let tight = ImagePolicy { allow_url: false, max_bytes: 2 };
        let body = json!({"messages": [image_msg(std::slice::from_ref(&small))]}).to_string();
        let e = parse_chat_request(body.as_bytes(), &Overrides::default(), &tight);
        assert_eq!(param_of(e).as_deref(), Some("messages"));

        // 20 MiB decoded in total: three images of 7 MiB each.
        let big = format!("data:image/png;base64,{}", "A".repeat(7 * 1024 * 1024 / 3 * 4));
        let e = parse(json!({"messages": [image_msg(&vec![big; 3])]}));
        assert_eq!(param_of(e).as_deref(), Some("messages"));
    }
}
