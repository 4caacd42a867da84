//! What every handler shares: the agent-svc client, the auth check, the chat
//! endpoint settings, the metrics and the shutdown signal.

use crate::auth::Auth;
use crate::client::AgentClient;
use crate::metrics::Metrics;
use crate::openai::ImagePolicy;
use services::config::LoadedConfig;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

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
}

impl ChatSettings {
    /// Reads the settings from the config.
    pub fn from_config(config: &LoadedConfig) -> ChatSettings {
        let c = &config.config.gateway.http.endpoints.chat_completions;
        ChatSettings {
            enabled: c.enabled,
            max_body_bytes: c.max_body_bytes,
            images: ImagePolicy { allow_url: c.images.allow_url, max_bytes: c.images.max_bytes },
            keep_alive: crate::sse::KEEP_ALIVE,
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
    metrics: Metrics,
    /// Cancelled when a shutdown's grace period is over: open SSE streams end
    /// with an error event instead of holding the server open.
    force_close: CancellationToken,
}

impl AppState {
    /// State for `config`, talking to agent-svc through `client`.
    pub fn new(config: &LoadedConfig, client: AgentClient) -> AppState {
        AppState::from_parts(client, Auth::from_config(config), ChatSettings::from_config(config))
    }

    /// State from its parts (fresh metrics).
    pub fn from_parts(client: AgentClient, auth: Auth, chat: ChatSettings) -> AppState {
        AppState(Arc::new(Inner {
            client,
            auth,
            chat,
            metrics: Metrics::new(),
            force_close: CancellationToken::new(),
        }))
    }

    /// The agent-svc client.
    pub fn client(&self) -> &AgentClient {
        &self.0.client
    }

    /// The auth check (shared with the WebSocket `connect` later).
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
}
