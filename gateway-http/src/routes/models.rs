//! `GET /v1/models` and `GET /v1/models/{id}`.

use crate::client::CallContext;
use crate::error::ApiError;
use crate::openai::models;
use crate::routes::Authorized;
use crate::state::AppState;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use http::header::CONTENT_TYPE;
use http::HeaderValue;

/// The model list; agents come from agent-svc (`ListAgents`).
pub async fn list(State(state): State<AppState>, _: Authorized) -> Result<Response, ApiError> {
    let agents = state.client().list_agents(&CallContext::default()).await?;
    Ok(json(models::list_json(&models::model_ids(&agents))))
}

/// One model; `id` arrives URL-decoded (`openclaw%2Fmain` → `openclaw/main`).
pub async fn get(
    State(state): State<AppState>,
    _: Authorized,
    id: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<Response, ApiError> {
    // A path that does not decode (invalid UTF-8) names no model.
    let Ok(Path(id)) = id else { return Err(ApiError::model_not_found("")) };
    let agents = state.client().list_agents(&CallContext::default()).await?;
    if models::model_ids(&agents).contains(&id) {
        Ok(json(models::model_json(&id)))
    } else {
        Err(ApiError::model_not_found(&id))
    }
}

fn json(body: Vec<u8>) -> Response {
    let mut resp = body.into_response();
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}
