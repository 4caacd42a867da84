//! The methods of a connected client: `health`, `models.list`, `agents.list`,
//! `sessions.list`, `sessions.reset`, `sessions.delete`, `sessions.compact`,
//! `chat.history`, `chat.send`, `chat.abort`.
//!
//! Every agent-svc call goes through [`crate::client::AgentClient`]; errors map
//! through [`ApiError::ws_code`]. Session keys resolve exactly as for HTTP
//! (agent-svc's own rules): `agent:<id>:<rest>` as is, anything else
//! `agent:<agentId>:<key>` with the request's `agentId` or the default agent.

use super::chat::{self, ActiveRun, Begin, ChatRun, ToolCallJson, TurnOrder};
use super::outbox::Outbox;
use super::protocol::{self, code, ErrorShape, Request};
use crate::client::CallContext;
use crate::error::ApiError;
use crate::openai::models;
use crate::state::AppState;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use services::proto::agent_run_request::Session;
use services::proto::{content_part, AgentRunRequest, ContentPart, HistoryEntry, Message};
use services::session_key::{self as keys, SessionSelector};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The channel of runs started over the WebSocket (used in generated keys).
pub const CHANNEL: &str = "ws";
/// Most `chat.send` runs one connection may have going at once.
pub const MAX_RUNS_PER_CONNECTION: usize = 32;
/// Longest accepted `idempotencyKey`.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 256;
/// Largest `limit` of `sessions.list` and `chat.history`.
pub const MAX_LIMIT: u32 = 1000;
/// Bytes of `maxPayload` kept free for the `chat.history` frame around its
/// messages (envelope, request id, session key, all escaped).
const HISTORY_ENVELOPE_RESERVE: usize = 8 * 1024;

/// What the methods of one connection share.
#[derive(Debug, Clone)]
pub(crate) struct Conn {
    pub state: AppState,
    pub outbox: Arc<Outbox>,
    /// `chat.send` runs started by this connection and still going.
    pub active_runs: Arc<AtomicUsize>,
    /// The order of this connection's `chat.send` runs, per session.
    pub turns: Arc<TurnOrder>,
    /// Forwarded to agent-svc as `x-request-id` prefix material.
    pub conn_id: Arc<str>,
}

impl Conn {
    fn ctx(&self) -> CallContext {
        CallContext { request_id: services::ids::with_uuid(&["ws-", &self.conn_id, "-"]), traceparent: None }
    }
}

fn api(e: ApiError) -> ErrorShape {
    ErrorShape::from(&e)
}

/// `params` as `T`; absent params count as `{}`.
fn params<T: DeserializeOwned>(method: &str, params: Value) -> Result<T, ErrorShape> {
    let params = match params {
        Value::Null => Value::Object(serde_json::Map::new()),
        v @ Value::Object(_) => v,
        _ => return Err(ErrorShape::invalid(format!("The params of {method} must be an object."))),
    };
    serde_json::from_value(params).map_err(|e| ErrorShape::invalid(format!("Invalid {method} params: {e}")))
}

fn check_limit(limit: Option<u32>) -> Result<u32, ErrorShape> {
    match limit {
        None => Ok(0),
        Some(n @ 1..=MAX_LIMIT) => Ok(n),
        Some(_) => Err(ErrorShape::invalid(format!("`limit` must be between 1 and {MAX_LIMIT}."))),
    }
}

fn check_agent_id(agent_id: Option<&str>) -> Result<(), ErrorShape> {
    match agent_id {
        Some(id) if !services::config::valid_agent_id(id) => {
            Err(ErrorShape::invalid(format!("Invalid `agentId` {id:?}.")))
        }
        _ => Ok(()),
    }
}

/// agent-svc's session key rules, with the messages naming `sessionKey`.
fn resolve_with(raw: &str, agent_id: &str) -> Result<String, ErrorShape> {
    keys::resolve(SessionSelector::Explicit(raw), agent_id, CHANNEL)
        .map(|s| s.key)
        .map_err(|e| ErrorShape::invalid(e.to_string().replace("`x-openclaw-session-key`", "`sessionKey`")))
}

/// The full key of `raw`, asking agent-svc for the default agent only when needed.
async fn resolve_key(conn: &Conn, raw: &str, agent_id: Option<&str>) -> Result<String, ErrorShape> {
    resolve_key_cached(conn, raw, agent_id, &mut None).await
}

/// [`resolve_key`] that asks agent-svc for the default agent at most once,
/// keeping it in `default` (for resolving several keys at once).
async fn resolve_key_cached(
    conn: &Conn,
    raw: &str,
    agent_id: Option<&str>,
    default: &mut Option<String>,
) -> Result<String, ErrorShape> {
    check_agent_id(agent_id)?;
    let agent = match agent_id {
        Some(id) => id.to_owned(),
        None if raw.trim_start().starts_with("agent:") => String::new(),
        None => match default {
            Some(d) => d.clone(),
            None => {
                let d = conn.state.client().list_agents(&conn.ctx()).await.map_err(api)?.default_agent_id;
                default.insert(d).clone()
            }
        },
    };
    resolve_with(raw, &agent)
}

/// Answers a request that runs in its own task (every method but `chat.send`).
pub(crate) async fn answer(conn: Conn, req: Request) {
    let frame = match call(&conn, &req.method, req.params).await {
        Ok(Payload::Value(payload)) => protocol::res_ok(&req.id, &payload),
        Ok(Payload::Json(payload)) => protocol::res_ok_json(&req.id, &payload),
        Err(e) => protocol::res_err(&req.id, &e),
    };
    conn.outbox.send_text(frame);
}

/// A method's result.
enum Payload {
    Value(Value),
    /// Already serialized (`chat.history` builds its own, to bound its size).
    Json(String),
}

async fn call(conn: &Conn, method: &str, p: Value) -> Result<Payload, ErrorShape> {
    let value = match method {
        "health" => {
            let r = conn.state.client().readiness().await;
            let ok = r.up > 0;
            let status = if ok { "serving" } else { "unavailable" };
            serde_json::json!({
                "ok": ok,
                "agentService": status,
                "replicas": {"total": r.total, "up": r.up},
                "ts": protocol::now_ms(),
            })
        }
        "models.list" => {
            let agents = conn.state.client().list_agents(&conn.ctx()).await.map_err(api)?;
            let models: Vec<Value> = models::model_ids(&agents)
                .into_iter()
                .map(|id| serde_json::json!({"id": id, "object": "model", "owned_by": "openclaw"}))
                .collect();
            serde_json::json!({ "models": models })
        }
        "agents.list" => {
            let agents = conn.state.client().list_agents(&conn.ctx()).await.map_err(api)?;
            let list: Vec<Value> = agents
                .agents
                .iter()
                .map(|a| serde_json::json!({"id": a.id, "model": a.model, "default": a.is_default}))
                .collect();
            serde_json::json!({"defaultId": agents.default_agent_id, "agents": list})
        }
        "sessions.list" => serde_json::to_value(sessions_list(conn, p).await?).map_err(internal)?,
        "chat.history" => return Ok(Payload::Json(chat_history(conn, p).await?)),
        "sessions.reset" | "sessions.delete" | "sessions.compact" => session_action(conn, method, p).await?,
        "chat.abort" => serde_json::to_value(chat_abort(conn, p).await?).map_err(internal)?,
        "connect" => return Err(ErrorShape::invalid("Already connected.")),
        other => return Err(ErrorShape::invalid(format!("Unknown method: {other}"))),
    };
    Ok(Payload::Value(value))
}

fn internal(e: serde_json::Error) -> ErrorShape {
    tracing::error!(error = %e, "cannot serialize a WebSocket reply");
    ErrorShape { code: "INTERNAL", message: "Internal error".into(), retryable: None, retry_after_ms: None }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SessionsListParams {
    #[serde(default)]
    agent_id: Option<String>,
    #[serde(default)]
    limit: Option<u32>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SessionJson {
    key: String,
    agent_id: String,
    created_at: i64,
    updated_at: i64,
    message_count: u32,
}

#[derive(Serialize)]
struct SessionsList {
    sessions: Vec<SessionJson>,
}

/// `sessions.list`'s params, checked: the agent (`""`: all) and the limit.
fn sessions_list_params(p: Value) -> Result<(String, u32), ErrorShape> {
    let p: SessionsListParams = params("sessions.list", p)?;
    check_agent_id(p.agent_id.as_deref())?;
    let limit = check_limit(p.limit)?;
    Ok((p.agent_id.unwrap_or_default(), limit))
}

async fn sessions_list(conn: &Conn, p: Value) -> Result<SessionsList, ErrorShape> {
    let (agent, limit) = sessions_list_params(p)?;
    let list = conn.state.client().list_sessions(&agent, limit, &conn.ctx()).await.map_err(api)?;
    let sessions = list
        .sessions
        .into_iter()
        .map(|s| SessionJson {
            key: s.session_key,
            agent_id: s.agent_id,
            created_at: s.created_at_ms,
            updated_at: s.updated_at_ms,
            message_count: s.message_count,
        })
        .collect();
    Ok(SessionsList { sessions })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SessionParams {
    session_key: String,
    #[serde(default)]
    agent_id: Option<String>,
}

/// `sessions.reset` → `{ok, sessionKey, existed}`, `sessions.delete` →
/// `{ok, sessionKey, deleted}`, `sessions.compact` → `{ok, sessionKey,
/// compacted, summarized, keptMessages, tokensBefore, tokensAfter}` (an unknown
/// session is `NOT_FOUND`). Each waits for the session's running turn to end.
async fn session_action(conn: &Conn, method: &str, p: Value) -> Result<Value, ErrorShape> {
    let p: SessionParams = params(method, p)?;
    let key = resolve_key(conn, &p.session_key, p.agent_id.as_deref()).await?;
    let client = conn.state.client();
    let ctx = conn.ctx();
    Ok(match method {
        "sessions.reset" => {
            let existed = client.reset_session(&key, &ctx).await.map_err(api)?;
            serde_json::json!({"ok": true, "sessionKey": key, "existed": existed})
        }
        "sessions.delete" => {
            let deleted = client.delete_session(&key, &ctx).await.map_err(api)?;
            serde_json::json!({"ok": true, "sessionKey": key, "deleted": deleted})
        }
        _ => {
            let r = client.compact_session(&key, &ctx).await.map_err(api)?;
            serde_json::json!({
                "ok": true,
                "sessionKey": key,
                "compacted": r.compacted,
                "summarized": r.summarized,
                "keptMessages": r.kept_messages,
                "tokensBefore": r.tokens_before,
                "tokensAfter": r.tokens_after,
            })
        }
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct HistoryParams {
    session_key: String,
    #[serde(default)]
    limit: Option<u32>,
    /// Only entries older than this `seq` (the `nextBefore` of the previous page).
    #[serde(default)]
    before: Option<i64>,
    #[serde(default)]
    agent_id: Option<String>,
}

/// One content part of a history message.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum PartJson<'a> {
    Text { text: &'a str },
    Image { url: &'a str },
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct HistoryMessage<'a> {
    role: &'a str,
    content: Vec<PartJson<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<ToolCallJson<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_call_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    interrupted: bool,
    timestamp: i64,
    run_id: &'a str,
    seq: i64,
    /// No longer sent upstream (summarised or truncated away).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    compacted: bool,
    /// A compaction summary standing for the entries before it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    summary: bool,
}

fn history_message(e: &HistoryEntry) -> Option<HistoryMessage<'_>> {
    let m = e.message.as_ref()?;
    let content = m
        .parts
        .iter()
        .filter_map(|p| match &p.part {
            Some(content_part::Part::Text(text)) => Some(PartJson::Text { text }),
            Some(content_part::Part::ImageUrl(img)) => Some(PartJson::Image { url: &img.url }),
            None => None,
        })
        .collect();
    Some(HistoryMessage {
        role: &m.role,
        content,
        tool_calls: m
            .tool_calls
            .iter()
            .map(|c| ToolCallJson { id: &c.id, name: &c.name, arguments: &c.arguments })
            .collect(),
        tool_call_id: m.tool_call_id.as_deref(),
        name: m.name.as_deref(),
        interrupted: e.interrupted,
        timestamp: e.created_at_ms,
        run_id: &e.run_id,
        seq: e.seq,
        compacted: e.compacted,
        summary: e.summary,
    })
}

/// `{sessionKey, messages, truncated?, nextBefore?}`, oldest first: the newest
/// `limit` entries (agent-svc's page of 1000 without one) older than `before`.
/// An unknown session has no messages. When the page would not fit in
/// `maxPayload`, its oldest messages are left out and `truncated` is true.
/// `nextBefore`, when present, is the `before` of the next (older) page.
async fn chat_history(conn: &Conn, p: Value) -> Result<String, ErrorShape> {
    let p: HistoryParams = params("chat.history", p)?;
    let limit = check_limit(p.limit)?;
    let key = resolve_key(conn, &p.session_key, p.agent_id.as_deref()).await?;
    let (entries, older_exist) =
        match conn.state.client().session_history(&key, limit, p.before, &conn.ctx()).await {
            Ok(h) => (h.messages, h.next_before_seq),
            Err(e) if e.ws_code() == "NOT_FOUND" => (Vec::new(), None),
            Err(e) => return Err(api(e)),
        };
    // Serialized one message at a time, newest first, until the frame would not
    // fit (the envelope, id and key take well under the reserve).
    let budget = conn.state.ws().max_payload.saturating_sub(HISTORY_ENVELOPE_RESERVE);
    let mut kept: Vec<String> = Vec::new();
    let mut size = 0usize;
    let mut truncated = false;
    let mut oldest_kept = None;
    for entry in entries.iter().rev() {
        let Some(m) = history_message(entry) else { continue };
        let text = serde_json::to_string(&m).map_err(internal)?;
        size = size.saturating_add(text.len() + 1);
        if size > budget {
            truncated = true;
            break;
        }
        kept.push(text);
        oldest_kept = Some(entry.seq);
    }
    // What did not fit is the next page, before the oldest message sent.
    let next_before = if truncated { oldest_kept.filter(|s| *s > 0) } else { older_exist };
    kept.reverse();
    let key = serde_json::to_string(&key).map_err(internal)?;
    let mut payload = String::with_capacity(size + key.len() + 64);
    payload.push_str("{\"sessionKey\":");
    payload.push_str(&key);
    payload.push_str(",\"messages\":[");
    payload.push_str(&kept.join(","));
    payload.push(']');
    if truncated {
        payload.push_str(",\"truncated\":true");
    }
    if let Some(before) = next_before {
        payload.push_str(",\"nextBefore\":");
        payload.push_str(&before.to_string());
    }
    payload.push('}');
    Ok(payload)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AbortParams {
    session_key: String,
    #[serde(default)]
    run_id: Option<String>,
    #[serde(default)]
    agent_id: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AbortReply {
    ok: bool,
    aborted: bool,
    run_ids: Vec<String>,
}

/// Aborts through agent-svc and, first, in this gateway: a run of ours that
/// agent-svc does not know yet (still waiting for its session's turn here, or
/// its call on the way) is marked, so it ends without reaching agent-svc or is
/// aborted as soon as agent-svc has started it. The reply lists agent-svc's
/// aborted runs and those marked runs.
async fn chat_abort(conn: &Conn, p: Value) -> Result<AbortReply, ErrorShape> {
    let p: AbortParams = params("chat.abort", p)?;
    let client = conn.state.client();
    let runs = conn.state.ws_runs();
    let (mut run_ids, local) = match p.run_id.filter(|r| !r.is_empty()) {
        Some(run_id) => {
            let marked = runs.running(&run_id).is_some_and(|run| run.request_abort());
            let local = if marked { vec![run_id.clone()] } else { Vec::new() };
            (client.abort_run(&run_id, "", &conn.ctx()).await.map_err(api)?.aborted_run_ids, local)
        }
        None => {
            let mut default = None;
            let key = resolve_key_cached(conn, &p.session_key, p.agent_id.as_deref(), &mut default).await?;
            let mut local = Vec::new();
            for run in runs.all_running() {
                let agent = Some(run.agent_id.as_str()).filter(|a| !a.is_empty());
                if resolve_key_cached(conn, &run.session_key, agent, &mut default).await? == key
                    && run.request_abort()
                {
                    local.push(run.run_id.clone());
                }
            }
            (client.abort_run("", &key, &conn.ctx()).await.map_err(api)?.aborted_run_ids, local)
        }
    };
    for id in local {
        if !run_ids.contains(&id) {
            run_ids.push(id);
        }
    }
    Ok(AbortReply { ok: true, aborted: !run_ids.is_empty(), run_ids })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SendParams {
    session_key: String,
    message: String,
    idempotency_key: String,
    #[serde(default)]
    agent_id: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SendReply<'a> {
    run_id: &'a str,
    status: &'static str,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    deduplicated: bool,
}

/// `chat.send`, answered inline (no await): validates, replies
/// `{runId, status:"started"}` and starts the run, in that order, so the reply
/// always precedes the run's events. A resend of the same idempotency key
/// answers with the first send's `runId` and the run's state now
/// (`started` while it runs, then `final` / `error` / `aborted`) plus
/// `deduplicated: true`, and subscribes this connection to the rest of the run.
pub(crate) fn chat_send(conn: &Conn, req: Request) {
    if let Err(e) = try_chat_send(conn, &req) {
        conn.outbox.send_text(protocol::res_err(&req.id, &e));
    }
}

/// `chat.send`'s params, checked, with the session's full key.
fn send_params(p: Value) -> Result<(SendParams, String), ErrorShape> {
    let p: SendParams = params("chat.send", p)?;
    check_agent_id(p.agent_id.as_deref())?;
    // The same rules agent-svc applies (reserved namespaces, length, control
    // characters); the agent id does not change them.
    let key = resolve_with(&p.session_key, p.agent_id.as_deref().unwrap_or("main"))?;
    if p.message.trim().is_empty() {
        return Err(ErrorShape::invalid("`message` must not be empty."));
    }
    if p.idempotency_key.is_empty() || p.idempotency_key.len() > MAX_IDEMPOTENCY_KEY_BYTES {
        return Err(ErrorShape::invalid(format!(
            "`idempotencyKey` must be a non-empty string of at most {MAX_IDEMPOTENCY_KEY_BYTES} bytes."
        )));
    }
    Ok((p, key))
}

fn try_chat_send(conn: &Conn, req: &Request) -> Result<(), ErrorShape> {
    let (p, key) = send_params(req.params.clone())?;
    if conn.active_runs.fetch_add(1, Ordering::AcqRel) >= MAX_RUNS_PER_CONNECTION {
        conn.active_runs.fetch_sub(1, Ordering::AcqRel);
        return Err(ErrorShape {
            code: code::RATE_LIMITED,
            message: format!(
                "At most {MAX_RUNS_PER_CONNECTION} chat runs may be in progress per connection."
            ),
            retryable: Some(true),
            retry_after_ms: None,
        });
    }
    let active = ActiveRun(conn.active_runs.clone());
    let agent = p.agent_id.as_deref().unwrap_or("");
    let dedupe_key = format!("{agent}\n{}\n{}", p.session_key, p.idempotency_key);
    let begin = conn.state.ws_runs().begin(&dedupe_key, || {
        let agent = p.agent_id.clone().unwrap_or_default();
        ChatRun::new(services::ids::with_uuid(&[]), p.session_key.clone(), agent)
    });
    let outbox = &conn.outbox;
    match begin {
        Begin::Existing(run) => {
            drop(active);
            run.reply_and_subscribe(outbox, |state| {
                let reply = SendReply { run_id: &run.run_id, status: state.as_str(), deduplicated: true };
                outbox.send_text(protocol::res_ok(&req.id, &reply));
            });
        }
        Begin::New(run) => {
            run.reply_and_subscribe(outbox, |_| {
                let reply = SendReply { run_id: &run.run_id, status: "started", deduplicated: false };
                outbox.send_text(protocol::res_ok(&req.id, &reply));
            });
            let request = AgentRunRequest {
                agent_id: p.agent_id.unwrap_or_default(),
                session: Some(Session::SessionKey(p.session_key)),
                channel: CHANNEL.into(),
                messages: vec![Message {
                    role: "user".into(),
                    parts: vec![ContentPart { part: Some(content_part::Part::Text(p.message)) }],
                    text_only: true,
                    ..Default::default()
                }],
                include_usage: true,
                run_id: run.run_id.clone(),
                ..Default::default()
            };
            let turn = conn.turns.enqueue(key);
            chat::spawn(conn.state.clone(), run, request, active, turn);
        }
    }
    Ok(())
}

/// The checks each method makes on its params before it calls agent-svc
/// (`connect`'s included), with `main` standing in for the default agent,
/// which only agent-svc knows. For the fuzz targets (`fuzz/`); not an API.
#[doc(hidden)]
pub fn check_params(method: &str, p: Value) -> Result<(), ErrorShape> {
    let key = |raw: &str, agent: Option<&str>| {
        check_agent_id(agent)?;
        resolve_with(raw, agent.unwrap_or("main")).map(drop)
    };
    match method {
        "connect" => super::conn::connect_params(p).map(drop).map_err(|(e, _)| e),
        "health" | "models.list" | "agents.list" => Ok(()),
        "sessions.list" => sessions_list_params(p).map(drop),
        "chat.history" => {
            let p: HistoryParams = params(method, p)?;
            check_limit(p.limit)?;
            key(&p.session_key, p.agent_id.as_deref())
        }
        "sessions.reset" | "sessions.delete" | "sessions.compact" => {
            let p: SessionParams = params(method, p)?;
            key(&p.session_key, p.agent_id.as_deref())
        }
        "chat.abort" => {
            let p: AbortParams = params(method, p)?;
            match p.run_id.filter(|r| !r.is_empty()) {
                Some(_) => Ok(()),
                None => key(&p.session_key, p.agent_id.as_deref()),
            }
        }
        "chat.send" => send_params(p).map(drop),
        other => Err(ErrorShape::invalid(format!("Unknown method: {other}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase")]
    #[allow(dead_code)]
    struct P {
        session_key: String,
        #[serde(default)]
        limit: Option<u32>,
    }

    #[test]
    fn params_are_typed_and_errors_name_the_field() {
        let p: P = params("chat.history", json!({"sessionKey": "main", "limit": 5, "extra": 1})).unwrap();
        assert_eq!((p.session_key.as_str(), p.limit), ("main", Some(5)));
        let e = params::<P>("chat.history", Value::Null).unwrap_err();
        assert_eq!(e.code, "INVALID_REQUEST");
        assert!(e.message.contains("sessionKey"), "{}", e.message);
        let e = params::<P>("chat.history", json!({"sessionKey": 5})).unwrap_err();
        assert!(e.message.contains("invalid type"), "{}", e.message);
        let e = params::<P>("chat.history", json!({"sessionKey": "k", "limit": -1})).unwrap_err();
        assert!(e.message.contains("limit") || e.message.contains("invalid value"), "{}", e.message);
        let e = params::<P>("chat.history", json!([1])).unwrap_err();
        assert!(e.message.contains("must be an object"));
    }

    #[test]
    fn limits_and_agent_ids() {
        assert_eq!(check_limit(None).unwrap(), 0);
        assert_eq!(check_limit(Some(1000)).unwrap(), 1000);
        assert!(check_limit(Some(0)).is_err());
        assert!(check_limit(Some(1001)).is_err());
        assert!(check_agent_id(Some("beta")).is_ok());
        assert!(check_agent_id(Some("a:b")).is_err());
        assert!(check_agent_id(None).is_ok());
    }

    #[test]
    fn session_keys_resolve_like_http() {
        assert_eq!(resolve_with("foo", "main").unwrap(), "agent:main:foo");
        assert_eq!(resolve_with("  foo ", "main").unwrap(), "agent:main:foo");
        assert_eq!(resolve_with("agent:beta:x", "main").unwrap(), "agent:beta:x");
        let e = resolve_with("cron:x", "main").unwrap_err();
        assert_eq!(e.message, "`sessionKey` cannot use reserved internal session namespaces.");
        assert!(resolve_with("a\nb", "main").is_err());
        assert!(resolve_with("", "main").is_err());
        assert!(resolve_with(&"k".repeat(600), "main").is_err());
    }

    #[test]
    fn history_messages_keep_parts_and_tool_calls() {
        let entry = HistoryEntry {
            message: Some(Message {
                role: "assistant".into(),
                parts: vec![ContentPart { part: Some(content_part::Part::Text("hi".into())) }],
                tool_calls: vec![services::proto::ToolCall {
                    id: "c1".into(),
                    r#type: "function".into(),
                    name: "f".into(),
                    arguments: "{}".into(),
                }],
                ..Default::default()
            }),
            interrupted: true,
            created_at_ms: 42,
            run_id: "r".into(),
            seq: 7,
            compacted: true,
            summary: false,
        };
        let v = serde_json::to_value(history_message(&entry).unwrap()).unwrap();
        assert_eq!(
            v,
            json!({"role": "assistant", "content": [{"type": "text", "text": "hi"}],
                   "toolCalls": [{"id": "c1", "name": "f", "arguments": "{}"}],
                   "interrupted": true, "timestamp": 42, "runId": "r", "seq": 7, "compacted": true})
        );
        assert!(history_message(&HistoryEntry::default()).is_none());
    }
}
