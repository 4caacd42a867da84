//! Starting gateway-http on a real socket (in front of a separately started
//! agent-svc, or in embedded mode) and talking to it over real HTTP: plain
//! requests ([`Reply`]); streamed answers are read with [`crate::sse`].
//!
//! ```no_run
//! # async fn demo() {
//! use e2e::gateway::{send, Gateway};
//! use e2e::harness::{AgentSvc, ConfigBuilder};
//! use e2e::mock::MockUpstream;
//! use serde_json::json;
//!
//! let mock = MockUpstream::start().await;
//! let config = ConfigBuilder::with_mock(&mock).enable_chat_completions().auth_token("t").build();
//! let svc = AgentSvc::start(&config).await;
//! let gw = Gateway::start(&config, Some(&svc.url())).await.with_bearer("t");
//! let reply = send(gw.chat(&json!({"messages": [{"role": "user", "content": "hi"}]}))).await;
//! assert_eq!(reply.status, 200);
//! # }
//! ```

use crate::harness::{parse_config, AgentSvc, ConfigBuilder};
use crate::serve::{bind_loopback, must_bind_loopback, ServerTask};
use gateway_http::auth::Auth;
use gateway_http::state::{AppState, ChatSettings};
use gateway_http::{AgentClient, GatewayHandle, GatewayOptions};
use reqwest::header::{HeaderMap, CONTENT_TYPE};
use reqwest::RequestBuilder;
use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;

/// Bound on one HTTP exchange in these helpers (things that should take milliseconds).
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// How long [`Gateway::stop`] lets open requests finish.
pub const GATEWAY_STOP_GRACE: Duration = Duration::from_secs(2);

enum Server {
    /// Started with `gateway_http::start` (the production path).
    Started(Option<GatewayHandle>),
    /// `gateway_http::router` served by the test (custom [`ChatSettings`]).
    Router { state: AppState, server: ServerTask },
}

/// A running gateway-http on `127.0.0.1`.
pub struct Gateway {
    addr: SocketAddr,
    server: Server,
    bearer: Option<String>,
    http: reqwest::Client,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").field("addr", &self.addr).finish_non_exhaustive()
    }
}

/// A plain HTTP/1.1 client without retries or proxies.
pub fn http_client() -> reqwest::Client {
    match reqwest::Client::builder().no_proxy().http1_only().build() {
        Ok(c) => c,
        Err(e) => panic!("cannot build an HTTP client: {e}"),
    }
}

impl Gateway {
    /// Parses `config_json5` and starts the gateway with `gateway_http::start` on
    /// `127.0.0.1:0`, talking to `agent_svc_url` (`None`: embedded agent-svc).
    /// Panics on failure.
    pub async fn start(config_json5: &str, agent_svc_url: Option<&str>) -> Gateway {
        match Self::try_start(config_json5, agent_svc_url).await {
            Ok(g) => g,
            Err(e) => panic!("gateway-http failed to start: {e:#}\nconfig:\n{config_json5}"),
        }
    }

    /// [`Gateway::start`] returning the error.
    pub async fn try_start(config_json5: &str, agent_svc_url: Option<&str>) -> anyhow::Result<Gateway> {
        Self::try_start_with(config_json5, agent_svc_url, GatewayOptions::default()).await
    }

    /// [`Gateway::try_start`] with more options (its listener and agent-svc URL are set here).
    pub async fn try_start_with(
        config_json5: &str,
        agent_svc_url: Option<&str>,
        opts: GatewayOptions,
    ) -> anyhow::Result<Gateway> {
        let config = parse_config(config_json5)?;
        let (listener, _) = bind_loopback().await?;
        let opts = GatewayOptions {
            agent_svc_url: agent_svc_url.map(str::to_string),
            listener: Some(listener),
            ..opts
        };
        let handle = gateway_http::start(config, opts).await?;
        Ok(Gateway {
            addr: handle.local_addr(),
            server: Server::Started(Some(handle)),
            bearer: None,
            http: http_client(),
        })
    }

    /// Serves `gateway_http::router` with the settings of `config_json5` but the
    /// SSE keep-alive interval replaced by `keep_alive` (the production default is
    /// 15 s, and `gateway_http::start` has no option for it). Talks to `agent_svc_url`.
    pub async fn start_with_keep_alive(
        config_json5: &str,
        agent_svc_url: &str,
        keep_alive: Duration,
    ) -> Gateway {
        let config = match parse_config(config_json5) {
            Ok(c) => c,
            Err(e) => panic!("bad config: {e}\n{config_json5}"),
        };
        let client = match AgentClient::connect_lazy(agent_svc_url) {
            Ok(c) => c,
            Err(e) => panic!("bad agent-svc URL {agent_svc_url}: {e}"),
        };
        let chat = ChatSettings { keep_alive, ..ChatSettings::from_config(&config) };
        let state = AppState::from_parts(client, Auth::from_config(&config), chat);
        let (listener, addr) = must_bind_loopback("test gateway router").await;
        let app = gateway_http::router(state.clone()).into_make_service_with_connect_info::<SocketAddr>();
        let server = ServerTask::spawn("test gateway router", |stop| {
            axum::serve(listener, app).with_graceful_shutdown(stop)
        });
        Gateway { addr, server: Server::Router { state, server }, bearer: None, http: http_client() }
    }

    /// Sets the bearer secret [`Gateway::chat`] and [`Gateway::authed_get`] send.
    pub fn with_bearer(mut self, secret: &str) -> Gateway {
        self.bearer = Some(secret.to_string());
        self
    }

    /// The listen address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The handlers' shared state (metrics, settings).
    pub fn state(&self) -> &AppState {
        match &self.server {
            Server::Started(Some(h)) => h.state(),
            Server::Started(None) => panic!("gateway already stopped"),
            Server::Router { state, .. } => state,
        }
    }

    /// Whether this gateway started its own agent-svc (embedded mode).
    pub fn is_embedded(&self) -> bool {
        matches!(&self.server, Server::Started(Some(h)) if h.embedded_agent_svc().is_some())
    }

    /// The HTTP client the helpers use (HTTP/1.1, pooled).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// `GET path` without auth.
    pub fn get(&self, path: &str) -> RequestBuilder {
        self.http.get(format!("{}{path}", self.url()))
    }

    /// `POST path` without auth.
    pub fn post(&self, path: &str) -> RequestBuilder {
        self.http.post(format!("{}{path}", self.url()))
    }

    /// Any method on `path` without auth.
    pub fn request(&self, method: reqwest::Method, path: &str) -> RequestBuilder {
        self.http.request(method, format!("{}{path}", self.url()))
    }

    /// `GET path` with the bearer secret set by [`Gateway::with_bearer`].
    pub fn authed_get(&self, path: &str) -> RequestBuilder {
        self.authed(self.get(path))
    }

    /// `POST /v1/chat/completions` with `body` as JSON and the bearer secret set by
    /// [`Gateway::with_bearer`] (none when not set).
    pub fn chat(&self, body: &Value) -> RequestBuilder {
        self.authed(json_body(self.post("/v1/chat/completions"), body))
    }

    fn authed(&self, rb: RequestBuilder) -> RequestBuilder {
        match &self.bearer {
            Some(s) => rb.bearer_auth(s),
            None => rb,
        }
    }

    /// Stops the gateway ([`GATEWAY_STOP_GRACE`]). A no-op when already stopped.
    pub async fn stop(&mut self) {
        self.stop_with_grace(GATEWAY_STOP_GRACE).await;
    }

    /// Stops the gateway, letting open requests (and WebSocket runs) finish
    /// within `grace`. A no-op when already stopped. Panics when the shutdown fails.
    pub async fn stop_with_grace(&mut self, grace: Duration) {
        match &mut self.server {
            Server::Started(h) => {
                if let Some(h) = h.take() {
                    if let Err(e) = h.shutdown_with_grace(grace).await {
                        panic!("gateway shutdown failed: {e}");
                    }
                }
            }
            Server::Router { server, .. } => server.stop(grace).await,
        }
    }
}

/// A mock-backed agent-svc and a gateway in front of it, both on the same config.
#[derive(Debug)]
pub struct Stack {
    /// The separately started agent-svc.
    pub svc: AgentSvc,
    /// The gateway, talking to `svc`.
    pub gw: Gateway,
}

impl Stack {
    /// Starts agent-svc with `config`, then a gateway pointed at it (with
    /// `bearer` as the default secret of its helpers).
    pub async fn start(config: &ConfigBuilder, bearer: Option<&str>) -> Stack {
        let text = config.build();
        let svc = AgentSvc::start(&text).await;
        let gw = Gateway::start(&text, Some(&svc.url())).await;
        let gw = match bearer {
            Some(b) => gw.with_bearer(b),
            None => gw,
        };
        Stack { svc, gw }
    }
}

/// Sets `body` as the JSON request body.
pub fn json_body(rb: RequestBuilder, body: &Value) -> RequestBuilder {
    rb.header(CONTENT_TYPE, "application/json").body(body.to_string())
}

// ---------------------------------------------------------------------------
// Plain replies

/// A whole HTTP response.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// The response headers.
    pub headers: HeaderMap,
    /// The body as text (lossy UTF-8).
    pub text: String,
}

impl Reply {
    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body parsed as JSON; panics (with the body) when it is not JSON.
    pub fn json(&self) -> Value {
        match serde_json::from_str(&self.text) {
            Ok(v) => v,
            Err(e) => panic!("body is not JSON ({e}); status {}: {:?}", self.status, self.text),
        }
    }

    /// The `x-openclaw-session-key` header; panics when missing.
    pub fn session_key(&self) -> String {
        match self.header("x-openclaw-session-key") {
            Some(k) => k.to_string(),
            None => panic!("no x-openclaw-session-key header; status {}: {}", self.status, self.text),
        }
    }

    /// Asserts an error answer per SPEC §4 "Errors": this status, a JSON
    /// content type, a body of exactly `{"error":{"message","type","param"?,"code"?}}`
    /// with a non-empty message and this type. Returns the `error` object.
    pub fn expect_error(&self, status: u16, kind: &str) -> Value {
        assert_eq!(self.status, status, "status; body: {}", self.text);
        let ct = self.header("content-type").unwrap_or_default();
        assert!(ct.starts_with("application/json"), "error content-type {ct:?}; body: {}", self.text);
        let v = self.json();
        let top = v.as_object().unwrap_or_else(|| panic!("error body is not an object: {v}"));
        assert_eq!(top.keys().collect::<Vec<_>>(), vec!["error"], "only `error` at the top: {v}");
        let err = top["error"].as_object().unwrap_or_else(|| panic!("`error` is not an object: {v}"));
        for k in err.keys() {
            assert!(
                ["message", "type", "param", "code"].contains(&k.as_str()),
                "unexpected key {k:?} in {v}"
            );
        }
        let msg = err.get("message").and_then(Value::as_str).unwrap_or_else(|| panic!("no message: {v}"));
        assert!(!msg.is_empty(), "empty message: {v}");
        assert_eq!(err.get("type").and_then(Value::as_str), Some(kind), "error type: {v}");
        for k in ["param", "code"] {
            if let Some(x) = err.get(k) {
                assert!(x.is_string() || x.is_null(), "{k} must be a string or null: {v}");
            }
        }
        v["error"].clone()
    }

    /// Asserts a plain-text `Not Found`.
    pub fn expect_not_found(&self) {
        assert_eq!(self.status, 404, "body: {}", self.text);
        assert_eq!(self.text, "Not Found");
    }
}

/// Sends a request and reads the whole body (bounded by [`HTTP_TIMEOUT`]).
/// Panics on a transport error.
pub async fn send(rb: RequestBuilder) -> Reply {
    match tokio::time::timeout(HTTP_TIMEOUT, try_send(rb)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => panic!("HTTP request failed: {e:?}"),
        Err(_) => panic!("HTTP request did not complete within {HTTP_TIMEOUT:?}"),
    }
}

/// Sends a request and reads the whole body.
pub async fn try_send(rb: RequestBuilder) -> Result<Reply, reqwest::Error> {
    let resp = rb.send().await?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.bytes().await?;
    Ok(Reply { status, headers, text: String::from_utf8_lossy(&body).into_owned() })
}

/// Sends a request and returns the response once its head arrived (for SSE).
/// Panics on a transport error or when the head takes longer than [`HTTP_TIMEOUT`].
pub async fn open(rb: RequestBuilder) -> reqwest::Response {
    match tokio::time::timeout(HTTP_TIMEOUT, rb.send()).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => panic!("HTTP request failed: {e:?}"),
        Err(_) => panic!("no response head within {HTTP_TIMEOUT:?}"),
    }
}
