//! WebSocket text frames: `gateway_http::ws::protocol::parse_request`, then
//! the checks the named method makes on its params. A bad frame is answered
//! with an `INVALID_REQUEST` error frame carrying whatever id could be read.
#![no_main]

use gateway_http::ws::methods::check_params;
use gateway_http::ws::protocol::{self, parse_request, ErrorShape, MAX_ID_BYTES};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// The error frame for `id`, parsed back: it must be JSON and echo `id`.
fn answer(id: &Value, e: &ErrorShape) {
    let frame: Value = serde_json::from_str(&protocol::res_err(id, e)).expect("an error frame is JSON");
    assert_eq!(&frame["id"], id);
    assert_eq!(frame["ok"], false);
    assert!(!e.message.is_empty());
}

fuzz_target!(|input: &[u8]| {
    let Ok(text) = std::str::from_utf8(input) else { return };
    match parse_request(text) {
        Ok(req) => {
            match &req.id {
                Value::String(s) => assert!(!s.is_empty() && s.len() <= MAX_ID_BYTES),
                id => assert!(id.as_i64().is_some(), "id {id} is not an integer that fits i64"),
            }
            assert!(!req.method.is_empty());
            if let Err(e) = check_params(&req.method, req.params.clone()) {
                assert_eq!(e.code, protocol::code::INVALID_REQUEST, "{e:?}");
                answer(&req.id, &e);
            }
        }
        Err(bad) => answer(&bad.id, &ErrorShape::invalid(bad.message)),
    }
});
