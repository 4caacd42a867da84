//! `POST /v1/chat/completions` bodies: `gateway_http::openai::request::
//! parse_chat_request` (the OpenAI JSON → `AgentRunRequest` translation) on
//! arbitrary bytes. A bad body is a 400 `invalid_request_error`, never a panic
//! or a 500; a good one becomes a gRPC request that survives the wire.
#![no_main]

use gateway_http::openai::request::{parse_chat_request, ImagePolicy, Overrides};
use libfuzzer_sys::fuzz_target;
use prost::Message;
use services::proto::AgentRunRequest;

const POLICY: ImagePolicy = ImagePolicy { allow_url: false, max_bytes: 1024 * 1024 };

fuzz_target!(|body: &[u8]| {
    // The first byte picks which OpenClaw headers come with the body.
    let (headers, body) = match body.split_first() {
        Some((h, rest)) => (*h, rest),
        None => (0, body),
    };
    let overrides = Overrides {
        agent_id: (headers & 1 != 0).then_some("beta"),
        model: (headers & 2 != 0).then_some("echo/echo"),
        session_key: (headers & 4 != 0).then_some("agent:main:room-1"),
    };
    match parse_chat_request(body, &overrides, &POLICY) {
        Ok(req) => {
            let wire = req.run.encode_to_vec();
            let back = AgentRunRequest::decode(wire.as_slice()).expect("our own encoding decodes");
            assert_eq!(back, req.run);
        }
        Err(e) => {
            assert_eq!(e.status().as_u16(), 400, "{e:?}");
            let json: serde_json::Value =
                serde_json::from_slice(&e.to_json()).expect("the error body is JSON");
            assert_eq!(json["error"]["type"], "invalid_request_error");
            assert!(json["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
        }
    }
});
