//! `GET /openapi.json`: the OpenAPI 3.1 description of this port, committed
//! as `gateway-http/openapi.json` and compiled in, so the served document is
//! always the one of this build. No auth: it holds no secrets (the browser
//! guard still applies, as to every route).

use axum::response::{IntoResponse, Response};
use http::header::CONTENT_TYPE;
use http::HeaderValue;

/// The document, byte for byte as committed.
pub const OPENAPI_JSON: &str = include_str!("../../openapi.json");

/// Serves [`OPENAPI_JSON`].
pub async fn document() -> Response {
    ([(CONTENT_TYPE, HeaderValue::from_static("application/json"))], OPENAPI_JSON).into_response()
}
