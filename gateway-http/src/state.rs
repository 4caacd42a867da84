//! What every handler shares: the agent-svc client, the auth check, the chat
//! endpoint settings, the WebSocket settings and runs, the metrics and the
//! shutdown signal.

use crate::auth::Auth;
use crate::browser::Origins;
use crate::client::AgentClient;
use crate::error::ApiError;
use crate::limits::{Bound, RunPermit};
use crate::metrics::Metrics;
use crate::openai::ImagePolicy;
use crate::ws::chat::ChatRuns;
use crate::ws::WsSettings;
use services::config::LoadedConfig;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// `gateway.http.endpoints.chatCompletions` as the handlers need it.
#[derive(Debug, Clone, Copy)]
pub struct ChatSettings {
    /// `/v1/chat/completions` and `/v1/models*` exist (else they are 404).
    pub enabled: bool,
    /// Request body cap.
    pub max_body_bytes: u64,
    /// Image rules.
    pub images: ImagePolicy,
    /// Silence after which an SSE stream gets a `: keep-alive` comment (SPEC: 15 s;
    /// tests shorten it). Also the longest wait for the first event before the
    /// `200` is committed.
    pub keep_alive: Duration,
    /// Time allowed to receive a whole request body (`gateway.http.bodyTimeoutMs`).
    pub body_timeout: Duration,
    /// Unsent bytes a streaming client may leave before its run is ended
    /// (`gateway.http.maxBufferedBytes`).
    pub max_buffered_bytes: usize,
    /// Runs in flight at once, HTTP and WebSocket (`gateway.limits.maxConcurrentRuns`, 0: unbounded).
    pub max_concurrent_runs: usize,
}

impl ChatSettings {
    /// Reads the settings from the config.
    pub fn from_config(config: &LoadedConfig) -> ChatSettings {
        let c = &config.config.gateway.http.endpoints.chat_completions;
        ChatSettings {
            enabled: c.enabled,
            max_body_bytes: c.max_body_bytes,
            images: ImagePolicy { allow_url: c.images.allow_url, max_bytes: c.images.max_bytes },
            keep_alive: crate::openai::sse::KEEP_ALIVE,
            body_timeout: Duration::from_millis(config.config.gateway.http.body_timeout_ms.max(1)),
            max_buffered_bytes: usize::try_from(config.config.gateway.http.max_buffered_bytes)
                .unwrap_or(usize::MAX),
            max_concurrent_runs: config.config.gateway.limits.max_concurrent_runs as usize,
        }
    }
}

/// Shared handler state; cloning is one `Arc` increment.
#[derive(Debug, Clone)]
pub struct AppState(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    client: AgentClient,
    auth: Auth,
    chat: ChatSettings,
    metrics: Arc<Metrics>,
    /// Cancelled when a shutdown's grace period is over: open SSE streams end
    /// with an error event instead of holding the server open, and WebSocket
    /// connections close with 1012.
    force_close: CancellationToken,
    ws: WsSettings,
    /// `chat.send` runs and their idempotency keys, gateway-wide.
    ws_runs: ChatRuns,
    /// The open WebSocket connections (served outside the HTTP server once upgraded).
    ws_connections: TaskTracker,
    /// Browser origins allowed besides the gateway's own.
    origins: Origins,
    /// `https` when the public port speaks TLS (`gateway.tls.enabled`), else `http`.
    public_scheme: &'static str,
    /// Runs in flight, bounded by `gateway.limits.maxConcurrentRuns`.
    runs: Arc<Bound>,
}

impl AppState {
    /// State for `config`, talking to agent-svc through `client`.
    pub fn new(config: &LoadedConfig, client: AgentClient) -> AppState {
        let chat = ChatSettings::from_config(config);
        let auth = Auth::from_config(config).with_metrics(client.metrics().auth());
        let origins = Origins::new(&config.config.gateway.allowed_origins);
        let scheme = if config.config.gateway.tls.enabled { "https" } else { "http" };
        AppState::build(client, auth, chat, WsSettings::from_config(config), origins, scheme)
    }

    /// State from its parts (the client's metrics, default WebSocket settings).
    pub fn from_parts(client: AgentClient, auth: Auth, chat: ChatSettings) -> AppState {
        AppState::with_ws(client, auth, chat, WsSettings::default())
    }

    /// State from its parts, with these WebSocket settings (plain HTTP).
    pub fn with_ws(client: AgentClient, auth: Auth, chat: ChatSettings, ws: WsSettings) -> AppState {
        AppState::build(client, auth, chat, ws, Origins::default(), "http")
    }

    fn build(
        client: AgentClient,
        auth: Auth,
        chat: ChatSettings,
        ws: WsSettings,
        origins: Origins,
        public_scheme: &'static str,
    ) -> AppState {
        AppState(Arc::new(Inner {
            metrics: client.metrics().clone(),
            client,
            auth,
            chat,
            force_close: CancellationToken::new(),
            ws,
            ws_runs: ChatRuns::default(),
            ws_connections: TaskTracker::new(),
            origins,
            public_scheme,
            runs: Bound::new(chat.max_concurrent_runs),
        }))
    }

    /// Browser origins allowed besides the gateway's own.
    pub fn origins(&self) -> &Origins {
        &self.0.origins
    }

    /// The metrics, shared.
    pub fn metrics_handle(&self) -> &Arc<Metrics> {
        &self.0.metrics
    }

    /// The public port's scheme: `https` with `gateway.tls`, else `http`.
    pub fn public_scheme(&self) -> &'static str {
        self.0.public_scheme
    }

    /// The agent-svc client.
    pub fn client(&self) -> &AgentClient {
        &self.0.client
    }

    /// The auth check (shared by HTTP and the WebSocket `connect`).
    pub fn auth(&self) -> &Auth {
        &self.0.auth
    }

    /// The chat endpoint settings.
    pub fn chat(&self) -> &ChatSettings {
        &self.0.chat
    }

    /// This gateway's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.0.metrics
    }

    /// Cancelled when open streams must end now (shutdown grace is over).
    pub fn force_close(&self) -> &CancellationToken {
        &self.0.force_close
    }

    /// Takes a place for a run (HTTP or WebSocket), or refuses it: `503 overloaded`
    /// beyond `gateway.limits.maxConcurrentRuns`.
    pub fn begin_run(&self) -> Result<RunPermit, ApiError> {
        crate::limits::begin_run(&self.0.runs, &self.0.metrics)
    }

    /// The WebSocket settings (`gateway.ws`).
    pub fn ws(&self) -> &WsSettings {
        &self.0.ws
    }

    /// The WebSocket `chat.send` runs.
    pub fn ws_runs(&self) -> &ChatRuns {
        &self.0.ws_runs
    }

    /// The open WebSocket connections.
    pub fn ws_connections(&self) -> &TaskTracker {
        &self.0.ws_connections
    }
}
