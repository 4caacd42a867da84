//! The config file's shape: every key, its type and its default. Secrets and
//! database URLs are redacted in `Debug`.

use super::API_OPENAI_COMPLETIONS;
use crate::redact::redact_url;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

/// The whole config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Config {
    /// `gateway.*`: the HTTP/WebSocket front.
    pub gateway: GatewayConfig,
    /// `agents.*`.
    pub agents: AgentsConfig,
    /// `models.*`: providers.
    pub models: ModelsConfig,
    /// `session.*`: the session store.
    pub session: SessionConfig,
}

/// `gateway.*`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct GatewayConfig {
    /// Listen port (default 18789).
    pub port: u16,
    /// `loopback`, `lan` or an IP literal.
    pub bind: String,
    /// Authentication of `/v1/*` and the WebSocket connect.
    pub auth: AuthConfig,
    /// HTTP endpoints.
    pub http: HttpConfig,
    /// Where agent-svc is.
    pub agent_service: AgentServiceConfig,
    /// WebSocket protocol limits.
    pub ws: WsConfig,
    /// Browser origins (`scheme://host[:port]`) allowed besides the gateway's
    /// own; a request or WebSocket upgrade from any other `Origin` gets `403`.
    pub allowed_origins: Vec<String>,
    /// Proxies (IPs or CIDRs) whose forwarded headers are believed: the
    /// identity header of auth mode `trusted-proxy`.
    pub trusted_proxies: Vec<String>,
    /// TLS on the public port.
    pub tls: PublicTlsConfig,
    /// Global bounds (beyond them: `503 overloaded`, at once).
    pub limits: LimitsConfig,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            port: 18789,
            bind: "loopback".into(),
            auth: AuthConfig::default(),
            http: HttpConfig::default(),
            agent_service: AgentServiceConfig::default(),
            ws: WsConfig::default(),
            allowed_origins: Vec::new(),
            trusted_proxies: Vec::new(),
            tls: PublicTlsConfig::default(),
            limits: LimitsConfig::default(),
        }
    }
}

/// `gateway.limits.*`: what one gateway takes at once.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct LimitsConfig {
    /// Open client connections (HTTP and WebSocket); beyond: a `503` and close.
    pub max_connections: u32,
    /// Runs in flight (chat completions and WebSocket `chat.send`); beyond: `503`.
    pub max_concurrent_runs: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self { max_connections: 10_000, max_concurrent_runs: 4096 }
    }
}

/// `gateway.auth.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthMode {
    /// Bearer token.
    #[default]
    Token,
    /// Bearer password.
    Password,
    /// No authentication (loopback binds only).
    None,
    /// The identity a trusted reverse proxy puts in a header
    /// (`gateway.auth.trustedProxy`), believed only from `gateway.trustedProxies`.
    TrustedProxy,
}

/// `gateway.auth.*`.
#[derive(Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct AuthConfig {
    /// Which secret is checked.
    pub mode: AuthMode,
    /// The token (else env `OPENCLAW_GATEWAY_TOKEN`).
    pub token: Option<String>,
    /// The password (else env `OPENCLAW_GATEWAY_PASSWORD`).
    pub password: Option<String>,
    /// A file holding the token (read at load time; excludes `token`).
    pub token_file: Option<PathBuf>,
    /// A file holding the password (read at load time; excludes `password`).
    pub password_file: Option<PathBuf>,
    /// Failed-attempt lockout.
    pub rate_limit: RateLimitConfig,
    /// Mode `trusted-proxy`: which header carries the identity, and what else must hold.
    pub trusted_proxy: TrustedProxyConfig,
}

/// `gateway.auth.trustedProxy.*`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TrustedProxyConfig {
    /// The header with the authenticated user (e.g. `x-forwarded-user`); required in that mode.
    pub user_header: String,
    /// Headers the proxy always sets, which must all be present.
    pub required_headers: Vec<String>,
    /// Only these users (empty: any user the proxy vouches for).
    pub allow_users: Vec<String>,
    /// Also trust a proxy on a loopback address (it must then be in `trustedProxies`).
    pub allow_loopback: bool,
}

// Secrets must never reach logs, so Debug is written by hand.
impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field("mode", &self.mode)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("token_file", &self.token_file)
            .field("password_file", &self.password_file)
            .field("rate_limit", &self.rate_limit)
            .field("trusted_proxy", &self.trusted_proxy)
            .finish()
    }
}

/// `gateway.auth.rateLimit.*`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RateLimitConfig {
    /// Failed attempts allowed within the window.
    pub max_attempts: u32,
    /// The counting window.
    pub window_ms: u64,
    /// How long a locked-out IP is refused.
    pub lockout_ms: u64,
    /// Loopback clients are never locked out (each wrong secret is delayed instead),
    /// unless the request carries a browser `Origin`.
    pub exempt_loopback: bool,
    /// Wrong secrets accepted per second from everyone together; beyond it every
    /// attempt is refused at once (`429`) until the next second. 0: no ceiling.
    pub max_failures_per_second: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            max_attempts: 10,
            window_ms: 60_000,
            lockout_ms: 300_000,
            exempt_loopback: true,
            max_failures_per_second: 20,
        }
    }
}

/// `gateway.http.*`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpConfig {
    /// `gateway.http.endpoints.*`.
    pub endpoints: EndpointsConfig,
    /// Time allowed to receive a whole request body (`408` after it).
    pub body_timeout_ms: u64,
    /// Unsent bytes a streaming (SSE) client may leave before its run is ended.
    pub max_buffered_bytes: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self { endpoints: EndpointsConfig::default(), body_timeout_ms: 30_000, max_buffered_bytes: 1 << 20 }
    }
}

/// `gateway.http.endpoints.*`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct EndpointsConfig {
    /// `/v1/chat/completions` and `/v1/models`.
    pub chat_completions: ChatCompletionsConfig,
}

/// `gateway.http.endpoints.chatCompletions.*`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ChatCompletionsConfig {
    /// Off by default, as in OpenClaw.
    pub enabled: bool,
    /// Request body cap.
    pub max_body_bytes: u64,
    /// Image parts.
    pub images: ImagesConfig,
}

impl Default for ChatCompletionsConfig {
    fn default() -> Self {
        Self { enabled: false, max_body_bytes: 20 * 1024 * 1024, images: ImagesConfig::default() }
    }
}

/// `gateway.http.endpoints.chatCompletions.images.*`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ImagesConfig {
    /// Allow `http(s)` image URLs (passed to the provider, never fetched here).
    pub allow_url: bool,
    /// Cap per decoded image.
    pub max_bytes: u64,
}

impl Default for ImagesConfig {
    fn default() -> Self {
        Self { allow_url: false, max_bytes: 10 * 1024 * 1024 }
    }
}

/// `gateway.agentService.*`: where agent-svc is and how the two services
/// trust each other (read by both).
#[derive(Clone, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct AgentServiceConfig {
    /// e.g. `http://agent-svc:50051`; absent: embedded mode.
    pub url: Option<String>,
    /// The shared internal secret (else env `OPENCLAW_AGENT_SVC_TOKEN`).
    pub token: Option<String>,
    /// A file holding it (read at load time; excludes `token`).
    pub token_file: Option<PathBuf>,
    /// Mutual TLS on the hop.
    pub tls: Option<AgentServiceTlsConfig>,
    /// Runs one agent-svc replica takes at once (queued turns included); beyond
    /// it a run is refused at once (`503 overloaded`, tried on another replica).
    pub max_concurrent_runs: u32,
}

impl Default for AgentServiceConfig {
    fn default() -> Self {
        Self { url: None, token: None, token_file: None, tls: None, max_concurrent_runs: 1024 }
    }
}

impl fmt::Debug for AgentServiceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentServiceConfig")
            .field("url", &self.url)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("token_file", &self.token_file)
            .field("tls", &self.tls)
            .field("max_concurrent_runs", &self.max_concurrent_runs)
            .finish()
    }
}

/// `gateway.agentService.tls.*`: each service presents its own certificate
/// (agent-svc as server, the gateway as client) and verifies the other's
/// against the CA.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct AgentServiceTlsConfig {
    /// PEM CA the peer's certificate must chain to.
    pub ca_path: Option<PathBuf>,
    /// PEM certificate chain this process presents.
    pub cert_path: Option<PathBuf>,
    /// Its private key.
    pub key_path: Option<PathBuf>,
    /// The name agent-svc's certificate is checked for (default: the host name
    /// of the agent-svc target; an IP literal is checked as an IP).
    pub server_name: Option<String>,
}

/// `gateway.tls.*`: TLS on the public port.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PublicTlsConfig {
    /// Serve HTTPS/WSS instead of HTTP/WS.
    pub enabled: bool,
    /// PEM certificate chain, leaf first.
    pub cert_path: Option<PathBuf>,
    /// Its private key.
    pub key_path: Option<PathBuf>,
}

/// `gateway.ws.*`: limits of the WebSocket protocol (advertised to clients in
/// `hello-ok.policy`, except the handshake timeout).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct WsConfig {
    /// Largest frame (message) accepted from a connected client, in bytes.
    pub max_payload: u64,
    /// Outgoing bytes a connection may have queued but unwritten; a client that
    /// reads slower than that is disconnected.
    pub max_buffered_bytes: u64,
    /// Keepalive interval: a ping (and a `tick` event) every this many ms; a
    /// client silent for twice this long is disconnected.
    pub tick_interval_ms: u64,
    /// Time allowed between the upgrade and the client's `connect` request.
    pub handshake_timeout_ms: u64,
}

impl Default for WsConfig {
    fn default() -> Self {
        Self {
            max_payload: 1024 * 1024,
            max_buffered_bytes: 4 * 1024 * 1024,
            tick_interval_ms: 30_000,
            handshake_timeout_ms: 10_000,
        }
    }
}

/// A model choice: `"provider/model"` or `{primary, fallbacks}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ModelSpec {
    /// Just the primary.
    Ref(String),
    /// Primary plus fallbacks.
    Full {
        /// Tried first.
        primary: Option<String>,
        /// Tried in order when the one before fails before its first token.
        #[serde(default)]
        fallbacks: Vec<String>,
    },
}

/// `agents.*`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct AgentsConfig {
    /// Settings every agent inherits.
    pub defaults: AgentDefaults,
    /// `[{id, default?, model?, systemPrompt?}]`.
    pub list: Vec<AgentEntry>,
    /// `{id: {…}}`, the newer OpenClaw shape.
    pub entries: BTreeMap<String, AgentEntry>,
}

/// `agents.defaults.*`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct AgentDefaults {
    /// Default model (and fallbacks).
    pub model: Option<ModelSpec>,
    /// Default system prompt.
    pub system_prompt: Option<String>,
    /// Run timeout (fractions allowed).
    pub timeout_seconds: f64,
    /// The most a turn's prompt may hold, in estimated tokens; unset: derived
    /// from the model's `contextWindow` and `maxTokens`.
    pub context_tokens: Option<u32>,
    /// What happens when a stable session outgrows its budget.
    pub compaction: CompactionConfig,
}

impl Default for AgentDefaults {
    fn default() -> Self {
        Self {
            model: None,
            system_prompt: None,
            timeout_seconds: 600.0,
            context_tokens: None,
            compaction: CompactionConfig::default(),
        }
    }
}

/// `agents.defaults.compaction` (or an agent's own, replacing it whole).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct CompactionConfig {
    /// `summarize`, `truncate` or `off`.
    pub mode: CompactionMode,
    /// Share of the budget a turn's prompt may reach before the session is compacted.
    pub threshold: f64,
    /// Share of the budget kept word for word (the most recent turns) when compacting.
    pub keep_recent: f64,
    /// Cap on the summary's length, in tokens (the summary call's `max_tokens`).
    pub summary_max_tokens: u32,
}

impl Default for CompactionConfig {
    fn default() -> Self {
        Self { mode: CompactionMode::Summarize, threshold: 0.8, keep_recent: 0.4, summary_max_tokens: 1024 }
    }
}

/// `agents.defaults.compaction.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CompactionMode {
    /// The older part is summarised by the agent's model; the summary replaces it upstream.
    #[default]
    Summarize,
    /// The oldest turns are dropped (never a tool call without its result).
    Truncate,
    /// Nothing is stored; a turn sends only the newest turns that fit the budget.
    Off,
}

/// One agent.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct AgentEntry {
    /// Required in `list`; the map key in `entries`.
    pub id: Option<String>,
    /// The default agent.
    pub default: bool,
    /// Overrides `agents.defaults.model`.
    pub model: Option<ModelSpec>,
    /// Overrides `agents.defaults.systemPrompt`.
    pub system_prompt: Option<String>,
    /// Overrides `agents.defaults.timeoutSeconds`.
    pub timeout_seconds: Option<f64>,
    /// Overrides `agents.defaults.contextTokens`.
    pub context_tokens: Option<u32>,
    /// Replaces `agents.defaults.compaction`.
    pub compaction: Option<CompactionConfig>,
}

/// `models.*`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ModelsConfig {
    /// Providers by name (the `provider` in `provider/model`).
    pub providers: BTreeMap<String, ProviderConfig>,
}

/// `models.providers.<name>.*`.
#[derive(Clone, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ProviderConfig {
    /// e.g. `https://api.openai.com/v1`.
    pub base_url: String,
    /// Sent as `Authorization: Bearer`.
    pub api_key: Option<String>,
    /// A file holding the API key (read at load time; excludes `apiKey`).
    pub api_key_file: Option<PathBuf>,
    /// Only `openai-completions` is spoken.
    pub api: String,
    /// Known models; empty allows any model name.
    pub models: Vec<ProviderModel>,
    /// Extra request headers.
    pub headers: BTreeMap<String, String>,
    /// TCP/TLS connect timeout.
    pub connect_timeout_ms: u64,
    /// Time allowed until the first byte of the answer.
    pub first_byte_timeout_ms: u64,
    /// Time allowed between two chunks of an answer once it has begun (a
    /// provider that stalls mid-answer); 0: no limit but the run's own.
    pub idle_timeout_ms: u64,
}

impl Default for ProviderConfig {
    fn default() -> Self {
        Self {
            base_url: String::new(),
            api_key: None,
            api_key_file: None,
            api: API_OPENAI_COMPLETIONS.into(),
            models: Vec::new(),
            headers: BTreeMap::new(),
            connect_timeout_ms: 10_000,
            first_byte_timeout_ms: 120_000,
            idle_timeout_ms: 120_000,
        }
    }
}

impl fmt::Debug for ProviderConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderConfig")
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("api_key_file", &self.api_key_file)
            .field("api", &self.api)
            .field("idle_timeout_ms", &self.idle_timeout_ms)
            .field("models", &self.models)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// `models.providers.<name>.models[]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ProviderModel {
    /// The upstream model name.
    pub id: String,
    /// Cap on completion tokens sent upstream.
    pub max_tokens: Option<u32>,
    /// The model's context window, in tokens (prompt and answer together).
    pub context_window: Option<u32>,
}

/// `session.*`.
#[derive(Clone, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SessionConfig {
    /// `memory`, `sqlite:PATH` or `postgres://…`.
    pub store: String,
    /// Which sessions are kept.
    pub retention: RetentionConfig,
    /// MiB of recent sessions' contexts agent-svc keeps in memory for the
    /// `sqlite:` store (0: none).
    pub cache_mb: u32,
}

/// `session.cacheMb` when not set.
pub const DEFAULT_SESSION_CACHE_MB: u32 = 64;

// A postgres URL may carry a password: Debug shows it redacted.
impl fmt::Debug for SessionConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionConfig")
            .field("store", &redact_url(&self.store))
            .field("retention", &self.retention)
            .field("cache_mb", &self.cache_mb)
            .finish()
    }
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            store: "sqlite:./data/sessions.db".into(),
            retention: RetentionConfig::default(),
            cache_mb: DEFAULT_SESSION_CACHE_MB,
        }
    }
}

/// `session.retention.*`: sessions swept by agent-svc in the background.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RetentionConfig {
    /// A session unused for longer is deleted (fractions allowed); unset: kept.
    pub max_age_seconds: Option<f64>,
    /// Beyond this many sessions of one agent, the least recently used are deleted; unset: no cap.
    pub max_sessions_per_agent: Option<u32>,
    /// How often the sweep runs.
    pub sweep_interval_seconds: f64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self { max_age_seconds: None, max_sessions_per_agent: None, sweep_interval_seconds: 600.0 }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::test_support::load_str;
    use crate::config::ModelRef;

    #[test]
    fn defaults_give_one_echo_agent() {
        let c = load_str("{}").unwrap();
        let a = c.resolve_agents().unwrap();
        assert_eq!(a.agents.len(), 1);
        assert_eq!(a.default_agent().id, "main");
        assert_eq!(a.default_agent().primary, ModelRef::echo());
        assert_eq!(c.config.gateway.port, 18789);
        assert!(!c.config.gateway.http.endpoints.chat_completions.enabled);
        assert_eq!(c.config.session.store, "sqlite:./data/sessions.db");
    }

    #[test]
    fn ws_limits_default_and_override() {
        let c = load_str("{}").unwrap();
        let ws = &c.config.gateway.ws;
        assert_eq!(
            (ws.max_payload, ws.max_buffered_bytes, ws.tick_interval_ms, ws.handshake_timeout_ms),
            (1_048_576, 4_194_304, 30_000, 10_000)
        );
        let c = load_str(r#"{gateway: {auth: {mode: "none"}, ws: {maxPayload: 4096, tickIntervalMs: 250}}}"#)
            .unwrap();
        assert_eq!(c.config.gateway.ws.max_payload, 4096);
        assert_eq!(c.config.gateway.ws.tick_interval_ms, 250);
        assert_eq!(c.config.gateway.ws.max_buffered_bytes, 4_194_304);
        assert!(c.unknown_keys.is_empty(), "{:?}", c.unknown_keys);
        assert!(c.validate_gateway("loopback").is_ok());
        let c = load_str(r#"{gateway: {auth: {mode: "none"}, ws: {maxBufferedBytes: 0}}}"#).unwrap();
        assert_eq!(c.validate_gateway("loopback").unwrap_err().key, "gateway.ws.maxBufferedBytes");
        let e = load_str(r#"{gateway: {ws: {maxPayload: "big"}}}"#).unwrap_err();
        assert_eq!(e.key, "gateway.ws.maxPayload");
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let c = load_str(r#"{gateway: {auth: {token: "supersecret"}}}"#).unwrap();
        assert!(!format!("{:?}", c.config).contains("supersecret"));
        let c = load_str(r#"{session: {store: "postgres://u:pgsecret@db:5432/x"}}"#).unwrap();
        let shown = format!("{:?}", c.config);
        assert!(!shown.contains("pgsecret") && shown.contains("db:5432/x"), "{shown}");
        let c = load_str(r#"{session: {store: "postgres://db:5432/x?password=pgsecret"}}"#).unwrap();
        let shown = format!("{:?}", c.config);
        assert!(!shown.contains("pgsecret") && shown.contains("db:5432/x"), "{shown}");
    }
}
