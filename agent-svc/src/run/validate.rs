//! Request validation (SPEC §4 "Parameters"): the same rules for every caller,
//! whether the request came through gateway-http or straight over gRPC.

use crate::error::AgentError;
use services::messages::{data_uri_decoded_len, is_http_url, IMAGE_URL_NOT_ALLOWED};
use services::proto::{content_part::Part, tool_choice::Choice, AgentRunRequest, Message};

/// Roles a message may have.
const ROLES: [&str; 5] = ["system", "developer", "user", "assistant", "tool"];

/// Checks every sampling parameter, tool, tool choice, response format and the
/// shape of each message. Image limits apply to the new turn:
/// [`services::messages::check_new_turn_images`].
pub fn validate(req: &AgentRunRequest) -> Result<(), AgentError> {
    validate_params(req)?;
    validate_tools(req)?;
    if let Some(rf) = &req.response_format_json {
        validate_response_format(rf)?;
    }
    for m in &req.messages {
        validate_message(m, req.allow_image_urls)?;
    }
    Ok(())
}

fn range(param: &str, v: Option<f64>, lo: f64, hi: f64) -> Result<(), AgentError> {
    match v {
        Some(x) if !(x.is_finite() && (lo..=hi).contains(&x)) => {
            Err(AgentError::invalid(param, format!("`{param}` must be between {lo} and {hi}.")))
        }
        _ => Ok(()),
    }
}

fn validate_params(req: &AgentRunRequest) -> Result<(), AgentError> {
    let Some(p) = &req.params else { return Ok(()) };
    range("temperature", p.temperature, 0.0, 2.0)?;
    range("top_p", p.top_p, 0.0, 1.0)?;
    range("frequency_penalty", p.frequency_penalty, -2.0, 2.0)?;
    range("presence_penalty", p.presence_penalty, -2.0, 2.0)?;
    if let Some(seed) = p.seed {
        if !(seed.is_finite() && seed.fract() == 0.0 && seed.abs() <= 9.007_199_254_740_992e15) {
            return Err(AgentError::invalid("seed", "`seed` must be an integer from -2^53 to 2^53."));
        }
    }
    if p.stop.len() > 4 {
        return Err(AgentError::invalid("stop", "`stop` may have at most 4 sequences."));
    }
    if p.stop.iter().any(String::is_empty) {
        return Err(AgentError::invalid("stop", "`stop` sequences must be non-empty strings."));
    }
    for (name, v) in [("max_completion_tokens", p.max_completion_tokens), ("max_tokens", p.max_tokens)] {
        if matches!(v, Some(n) if n < 1) {
            return Err(AgentError::invalid(name, format!("`{name}` must be a positive integer.")));
        }
    }
    if matches!(p.n, Some(n) if n != 1) {
        return Err(AgentError::invalid("n", "Only `n: 1` is supported."));
    }
    Ok(())
}

/// Function names as OpenAI accepts them.
fn valid_function_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn validate_tools(req: &AgentRunRequest) -> Result<(), AgentError> {
    for t in &req.tools {
        if t.r#type != "function" {
            return Err(AgentError::invalid("tools", "Each tool must have `type: \"function\"`."));
        }
        if !valid_function_name(&t.name) {
            return Err(AgentError::invalid(
                "tools",
                "Each tool needs `function.name` (letters, digits, '_' or '-', at most 64).",
            ));
        }
        if let Some(schema) = &t.parameters_json {
            match serde_json::from_str::<serde_json::Value>(schema) {
                Ok(v) if v.is_object() => {}
                _ => {
                    return Err(AgentError::invalid("tools", "`function.parameters` must be a JSON object."));
                }
            }
        }
    }
    let Some(choice) = req.tool_choice.as_ref().and_then(|c| c.choice.as_ref()) else { return Ok(()) };
    match choice {
        Choice::Mode(m) if m == "auto" || m == "none" => Ok(()),
        Choice::Mode(m) if m == "required" => {
            if req.tools.is_empty() {
                Err(AgentError::invalid("tool_choice", "`tool_choice: \"required\"` needs `tools`."))
            } else {
                Ok(())
            }
        }
        Choice::Mode(m) => Err(AgentError::invalid(
            "tool_choice",
            format!("Invalid `tool_choice` {m:?}: use auto, none, required or a function."),
        )),
        Choice::Function(name) => {
            if req.tools.iter().any(|t| &t.name == name) {
                Ok(())
            } else {
                Err(AgentError::invalid(
                    "tool_choice",
                    format!("`tool_choice` names function {name:?}, which is not in `tools`."),
                ))
            }
        }
    }
}

fn validate_response_format(json: &str) -> Result<(), AgentError> {
    let bad = || {
        AgentError::invalid(
            "response_format",
            "`response_format` must be an object with `type` text, json_object or json_schema.",
        )
    };
    let v: serde_json::Value = serde_json::from_str(json).map_err(|_| bad())?;
    match v.get("type").and_then(|t| t.as_str()) {
        Some("text" | "json_object") => Ok(()),
        Some("json_schema") if v.get("json_schema").is_some_and(|s| s.is_object()) => Ok(()),
        _ => Err(bad()),
    }
}

fn validate_message(m: &Message, allow_urls: bool) -> Result<(), AgentError> {
    let invalid = |msg: String| AgentError::invalid("messages", msg);
    if !ROLES.contains(&m.role.as_str()) {
        return Err(invalid(format!(
            "Invalid message role {:?}: use system, developer, user, assistant or tool.",
            m.role
        )));
    }
    let null_content = m.parts.is_empty() && !m.text_only;
    match m.role.as_str() {
        "assistant" => {
            if null_content && m.tool_calls.is_empty() {
                return Err(invalid(
                    "An `assistant` message needs `content` unless it has `tool_calls`.".into(),
                ));
            }
            if m.tool_calls.iter().any(|c| c.id.is_empty() || c.name.is_empty()) {
                return Err(invalid("Assistant `tool_calls` need an `id` and `function.name`.".into()));
            }
        }
        "tool" if m.tool_call_id.as_deref().unwrap_or("").is_empty() => {
            return Err(invalid("A `tool` message needs `tool_call_id`.".into()));
        }
        role if null_content => {
            return Err(invalid(format!("A `{role}` message needs `content`.")));
        }
        _ => {}
    }
    for part in &m.parts {
        if let Some(Part::ImageUrl(img)) = &part.part {
            if m.role != "user" {
                return Err(invalid("Image parts are only allowed in `user` messages.".into()));
            }
            let url = img.url.as_str();
            let is_http = is_http_url(url);
            if is_http && !allow_urls {
                return Err(invalid(IMAGE_URL_NOT_ALLOWED.into()));
            }
            if !is_http && data_uri_decoded_len(url).is_none() {
                return Err(invalid("`image_url.url` must be a base64 `data:image/...` URI.".into()));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use services::proto::{ContentPart, ImageUrl, SamplingParams, Tool, ToolChoice};

    fn user(text: &str) -> Message {
        Message {
            role: "user".into(),
            parts: vec![ContentPart { part: Some(Part::Text(text.into())) }],
            text_only: true,
            ..Default::default()
        }
    }

    fn req_with(params: SamplingParams) -> AgentRunRequest {
        AgentRunRequest { messages: vec![user("hi")], params: Some(params), ..Default::default() }
    }

    fn param_of(e: AgentError) -> Option<String> {
        match e {
            AgentError::InvalidRequest { param, .. } => param,
            other => panic!("unexpected {other:?}"),
        }
    }

    fn check(req: &AgentRunRequest) -> Result<(), AgentError> {
        validate(req)?;
        Ok(services::messages::check_new_turn_images(&req.messages)?)
    }

    #[test]
    fn params_ranges() {
        let cases: Vec<(SamplingParams, &str)> = vec![
            (SamplingParams { temperature: Some(2.5), ..Default::default() }, "temperature"),
            (SamplingParams { temperature: Some(-0.1), ..Default::default() }, "temperature"),
            (SamplingParams { temperature: Some(f64::NAN), ..Default::default() }, "temperature"),
            (SamplingParams { top_p: Some(1.5), ..Default::default() }, "top_p"),
            (SamplingParams { frequency_penalty: Some(3.0), ..Default::default() }, "frequency_penalty"),
            (SamplingParams { presence_penalty: Some(-3.0), ..Default::default() }, "presence_penalty"),
            (SamplingParams { seed: Some(1.5), ..Default::default() }, "seed"),
            (SamplingParams { stop: vec!["a".into(); 5], ..Default::default() }, "stop"),
            (SamplingParams { stop: vec!["".into()], ..Default::default() }, "stop"),
            (SamplingParams { max_tokens: Some(0), ..Default::default() }, "max_tokens"),
            (
                SamplingParams { max_completion_tokens: Some(-1), ..Default::default() },
                "max_completion_tokens",
            ),
            (SamplingParams { n: Some(2), ..Default::default() }, "n"),
        ];
        for (p, name) in cases {
            assert_eq!(param_of(check(&req_with(p)).unwrap_err()).as_deref(), Some(name));
        }
        let ok = SamplingParams {
            temperature: Some(2.0),
            top_p: Some(0.0),
            frequency_penalty: Some(-2.0),
            presence_penalty: Some(2.0),
            seed: Some(42.0),
            stop: vec!["x".into(); 4],
            max_tokens: Some(1),
            n: Some(1),
            ..Default::default()
        };
        check(&req_with(ok)).unwrap();
    }

    #[test]
    fn tools_and_choice() {
        let tool = Tool { r#type: "function".into(), name: "get_weather".into(), ..Default::default() };
        let mut req =
            AgentRunRequest { messages: vec![user("hi")], tools: vec![tool.clone()], ..Default::default() };
        req.tool_choice = Some(ToolChoice { choice: Some(Choice::Function("get_weather".into())) });
        check(&req).unwrap();
        req.tool_choice = Some(ToolChoice { choice: Some(Choice::Function("nope".into())) });
        assert_eq!(param_of(check(&req).unwrap_err()).as_deref(), Some("tool_choice"));
        req.tool_choice = Some(ToolChoice { choice: Some(Choice::Mode("sometimes".into())) });
        assert_eq!(param_of(check(&req).unwrap_err()).as_deref(), Some("tool_choice"));
        req.tool_choice = None;
        req.tools = vec![Tool { r#type: "retrieval".into(), ..tool.clone() }];
        assert_eq!(param_of(check(&req).unwrap_err()).as_deref(), Some("tools"));
        req.tools = vec![Tool { name: String::new(), ..tool.clone() }];
        assert_eq!(param_of(check(&req).unwrap_err()).as_deref(), Some("tools"));
        req.tools = vec![Tool { parameters_json: Some("[1]".into()), ..tool }];
        assert_eq!(param_of(check(&req).unwrap_err()).as_deref(), Some("tools"));
        req.tools.clear();
        req.tool_choice = Some(ToolChoice { choice: Some(Choice::Mode("required".into())) });
        assert_eq!(param_of(check(&req).unwrap_err()).as_deref(), Some("tool_choice"));
    }

    #[test]
    fn response_format() {
        let mut req = AgentRunRequest { messages: vec![user("hi")], ..Default::default() };
        for ok in
            [r#"{"type":"text"}"#, r#"{"type":"json_object"}"#, r#"{"type":"json_schema","json_schema":{}}"#]
        {
            req.response_format_json = Some(ok.into());
            check(&req).unwrap();
        }
        for bad in ["\"json\"", r#"{"type":"yaml"}"#, "not json"] {
            req.response_format_json = Some(bad.into());
            assert_eq!(param_of(check(&req).unwrap_err()).as_deref(), Some("response_format"));
        }
    }

    fn image(url: &str) -> Message {
        Message {
            role: "user".into(),
            parts: vec![ContentPart {
                part: Some(Part::ImageUrl(ImageUrl { url: url.into(), detail: None })),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn images() {
        let mut req = AgentRunRequest {
            messages: vec![image("data:image/png;base64,iVBORw0KGgo=")],
            ..Default::default()
        };
        check(&req).unwrap();
        req.messages = vec![image("https://example.com/cat.png")];
        assert!(check(&req).is_err());
        req.allow_image_urls = true;
        check(&req).unwrap();
        req.messages = vec![image("ftp://x")];
        assert!(check(&req).is_err());
        req.messages = vec![image("data:image/png;base64,AAAA"); 9];
        assert_eq!(param_of(check(&req).unwrap_err()).as_deref(), Some("messages"));
    }

    #[test]
    fn message_shapes() {
        let bad_role = Message { role: "robot".into(), ..user("x") };
        let req = AgentRunRequest { messages: vec![bad_role], ..Default::default() };
        assert_eq!(param_of(check(&req).unwrap_err()).as_deref(), Some("messages"));
        let tool_no_id = Message { role: "tool".into(), ..user("x") };
        let req = AgentRunRequest { messages: vec![tool_no_id], ..Default::default() };
        assert!(check(&req).is_err());
        let null_assistant = Message { role: "assistant".into(), ..Default::default() };
        let req = AgentRunRequest { messages: vec![null_assistant.clone(), user("x")], ..Default::default() };
        assert_eq!(param_of(check(&req).unwrap_err()).as_deref(), Some("messages"));
        let with_calls = Message {
            tool_calls: vec![services::proto::ToolCall {
                id: "c".into(),
                r#type: "function".into(),
                name: "f".into(),
                arguments: "{}".into(),
            }],
            ..null_assistant
        };
        check(&AgentRunRequest { messages: vec![with_calls], ..Default::default() }).unwrap();
        let null_user = Message { role: "user".into(), ..Default::default() };
        let req = AgentRunRequest { messages: vec![null_user], ..Default::default() };
        assert!(check(&req).is_err());
    }
}
