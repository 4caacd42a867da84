//! The OpenClaw config file (JSON5), shared by gateway-http and agent-svc.
//!
//! Loading goes: read the file → parse JSON5 into a JSON value → expand `${VAR}`
//! in every string → deserialize into [`Config`] (unknown keys are reported as
//! warnings, type errors name the key path) → resolve agents and providers into
//! [`ResolvedAgents`] and check the cross-field rules. Every error is one line
//! that names the key and the file.

use crate::redact::redact_url;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Env var naming the config file when `--config` is not given.
pub const CONFIG_PATH_ENV: &str = "OPENCLAW_CONFIG_PATH";
/// Env fallback for `gateway.auth.token`.
pub const TOKEN_ENV: &str = "OPENCLAW_GATEWAY_TOKEN";
/// Env fallback for `gateway.auth.password`.
pub const PASSWORD_ENV: &str = "OPENCLAW_GATEWAY_PASSWORD";
/// The built-in offline provider (and its only model).
pub const ECHO_PROVIDER: &str = "echo";
/// The provider API this build speaks to upstreams.
pub const API_OPENAI_COMPLETIONS: &str = "openai-completions";
/// The agent used when none is configured.
pub const IMPLICIT_AGENT: &str = "main";
/// Longest run timeout accepted (a year), so that deadlines cannot overflow.
pub const MAX_TIMEOUT_SECONDS: f64 = 365.0 * 86_400.0;

fn valid_timeout(secs: f64) -> bool {
    secs.is_finite() && secs > 0.0 && secs <= MAX_TIMEOUT_SECONDS
}

/// A config problem: which file, which key, what is wrong. Displays as one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("config error in {file}: {key}: {message}")]
pub struct ConfigError {
    /// The config file (or `<built-in defaults>`).
    pub file: String,
    /// Dotted key path, e.g. `agents.list[1].model`.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

/// Where the config came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// A file that was read.
    File(PathBuf),
    /// The default path did not exist: built-in defaults.
    Defaults,
}

impl fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigSource::File(p) => write!(f, "{}", p.display()),
            ConfigSource::Defaults => f.write_str("<built-in defaults>"),
        }
    }
}

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
        }
    }
}

/// `gateway.auth.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Bearer token.
    #[default]
    Token,
    /// Bearer password.
    Password,
    /// No authentication (loopback binds only).
    None,
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
    /// Failed-attempt lockout.
    pub rate_limit: RateLimitConfig,
}

// Secrets must never reach logs, so Debug is written by hand.
impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field("mode", &self.mode)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("rate_limit", &self.rate_limit)
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
    /// Loopback clients are never locked out.
    pub exempt_loopback: bool,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self { max_attempts: 10, window_ms: 60_000, lockout_ms: 300_000, exempt_loopback: true }
    }
}

/// `gateway.http.*`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpConfig {
    /// `gateway.http.endpoints.*`.
    pub endpoints: EndpointsConfig,
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

/// `gateway.agentService.*`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct AgentServiceConfig {
    /// e.g. `http://agent-svc:50051`; absent: embedded mode.
    pub url: Option<String>,
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
}

impl Default for AgentDefaults {
    fn default() -> Self {
        Self { model: None, system_prompt: None, timeout_seconds: 600.0 }
    }
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
}

impl Default for ProviderConfig {
    fn default() -> Self {
        Self {
            base_url: String::new(),
            api_key: None,
            api: API_OPENAI_COMPLETIONS.into(),
            models: Vec::new(),
            headers: BTreeMap::new(),
            connect_timeout_ms: 10_000,
            first_byte_timeout_ms: 120_000,
        }
    }
}

impl fmt::Debug for ProviderConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderConfig")
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("api", &self.api)
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
}

/// `session.*`.
#[derive(Clone, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SessionConfig {
    /// `memory`, `sqlite:PATH` or `postgres://…`.
    pub store: String,
}

// A postgres URL may carry a password: Debug shows it redacted.
impl fmt::Debug for SessionConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionConfig").field("store", &redact_url(&self.store)).finish()
    }
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self { store: "sqlite:./data/sessions.db".into() }
    }
}

/// A parsed `provider/model` reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ModelRef {
    /// Provider name.
    pub provider: String,
    /// Model name as the provider knows it (may itself contain `/`).
    pub model: String,
}

impl ModelRef {
    /// Splits at the first `/`; a bare `echo` means `echo/echo`.
    pub fn parse(s: &str) -> Option<ModelRef> {
        let s = s.trim();
        match s.split_once('/') {
            Some((p, m)) if !p.is_empty() && !m.is_empty() => {
                Some(ModelRef { provider: p.to_string(), model: m.to_string() })
            }
            None if s == ECHO_PROVIDER => Some(ModelRef::echo()),
            _ => None,
        }
    }

    /// `echo/echo`.
    pub fn echo() -> ModelRef {
        ModelRef { provider: ECHO_PROVIDER.into(), model: ECHO_PROVIDER.into() }
    }
}

impl fmt::Display for ModelRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.provider, self.model)
    }
}

/// An agent with every default applied.
#[derive(Debug, Clone)]
pub struct ResolvedAgent {
    /// Agent id.
    pub id: String,
    /// Tried first.
    pub primary: ModelRef,
    /// Tried next, in order.
    pub fallbacks: Vec<ModelRef>,
    /// System prompt, if any.
    pub system_prompt: Option<String>,
    /// Run timeout.
    pub timeout: Duration,
}

/// The agents after resolution, with the default one identified.
#[derive(Debug, Clone)]
pub struct ResolvedAgents {
    /// In config order.
    pub agents: Vec<ResolvedAgent>,
    /// Index into `agents`.
    pub default_index: usize,
}

impl ResolvedAgents {
    /// Looks an agent up by id.
    pub fn get(&self, id: &str) -> Option<&ResolvedAgent> {
        self.agents.iter().find(|a| a.id == id)
    }

    /// The default agent.
    pub fn default_agent(&self) -> &ResolvedAgent {
        &self.agents[self.default_index]
    }
}

/// A loaded config and where it came from.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    /// The parsed file.
    pub config: Config,
    /// Its origin, for error messages.
    pub source: ConfigSource,
    /// Unknown keys (dotted paths) that were ignored.
    pub unknown_keys: Vec<String>,
}

impl LoadedConfig {
    /// Builds the error for `key`, naming this config's file.
    pub fn error(&self, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError { file: self.source.to_string(), key: key.into(), message: message.into() }
    }

    /// Resolves the agents, checking model refs, provider APIs and the default flag.
    pub fn resolve_agents(&self) -> Result<ResolvedAgents, ConfigError> {
        let cfg = &self.config;
        for (name, p) in &cfg.models.providers {
            let key = format!("models.providers.{name}");
            if p.api != API_OPENAI_COMPLETIONS {
                return Err(self.error(
                    format!("{key}.api"),
                    format!("unsupported api {:?} (supported: {API_OPENAI_COMPLETIONS})", p.api),
                ));
            }
            if name != ECHO_PROVIDER && p.base_url.trim().is_empty() {
                return Err(self.error(format!("{key}.baseUrl"), "is required"));
            }
        }
        let defaults = &cfg.agents.defaults;
        if !valid_timeout(defaults.timeout_seconds) {
            return Err(self.error(
                "agents.defaults.timeoutSeconds",
                "must be a positive number of seconds, at most 31536000",
            ));
        }
        let (def_primary, def_fallbacks) = match &defaults.model {
            Some(spec) => self.model_spec(spec, "agents.defaults.model")?,
            None => (ModelRef::echo(), Vec::new()),
        };

        let mut entries: Vec<(String, AgentEntry)> = Vec::new();
        for (i, e) in cfg.agents.list.iter().enumerate() {
            let key = format!("agents.list[{i}]");
            let id = e.id.clone().ok_or_else(|| self.error(format!("{key}.id"), "is required"))?;
            entries.push((key, AgentEntry { id: Some(id), ..e.clone() }));
        }
        for (id, e) in &cfg.agents.entries {
            let key = format!("agents.entries.{id}");
            if let Some(inner) = &e.id {
                if inner != id {
                    return Err(self.error(format!("{key}.id"), "differs from its entry name"));
                }
            }
            entries.push((key, AgentEntry { id: Some(id.clone()), ..e.clone() }));
        }

        let mut agents = Vec::with_capacity(entries.len().max(1));
        let mut default_index = None;
        for (key, e) in &entries {
            let id = e.id.clone().unwrap_or_default();
            if !valid_agent_id(&id) {
                return Err(self.error(
                    format!("{key}.id"),
                    format!("invalid agent id {id:?} (letters, digits, '-', '_', '.' only)"),
                ));
            }
            if agents.iter().any(|a: &ResolvedAgent| a.id == id) {
                return Err(self.error(format!("{key}.id"), format!("duplicate agent id {id:?}")));
            }
            if e.default {
                if default_index.is_some() {
                    return Err(self.error(format!("{key}.default"), "two agents are marked default"));
                }
                default_index = Some(agents.len());
            }
            let (primary, fallbacks) = match &e.model {
                Some(spec) => {
                    let (p, f) = self.model_spec(spec, &format!("{key}.model"))?;
                    // A bare string inherits the defaults' fallbacks.
                    match spec {
                        ModelSpec::Ref(_) => (p, def_fallbacks.clone()),
                        ModelSpec::Full { .. } => (p, f),
                    }
                }
                None => (def_primary.clone(), def_fallbacks.clone()),
            };
            let timeout_seconds = e.timeout_seconds.unwrap_or(defaults.timeout_seconds);
            if !valid_timeout(timeout_seconds) {
                return Err(self.error(
                    format!("{key}.timeoutSeconds"),
                    "must be a positive number of seconds, at most 31536000",
                ));
            }
            agents.push(ResolvedAgent {
                id,
                primary,
                fallbacks,
                system_prompt: e.system_prompt.clone().or_else(|| defaults.system_prompt.clone()),
                timeout: Duration::from_secs_f64(timeout_seconds),
            });
        }
        if agents.is_empty() {
            agents.push(ResolvedAgent {
                id: IMPLICIT_AGENT.into(),
                primary: def_primary,
                fallbacks: def_fallbacks,
                system_prompt: defaults.system_prompt.clone(),
                timeout: Duration::from_secs_f64(defaults.timeout_seconds),
            });
        }
        let default_index =
            default_index.or_else(|| agents.iter().position(|a| a.id == IMPLICIT_AGENT)).unwrap_or(0);
        Ok(ResolvedAgents { agents, default_index })
    }

    fn model_spec(&self, spec: &ModelSpec, key: &str) -> Result<(ModelRef, Vec<ModelRef>), ConfigError> {
        match spec {
            ModelSpec::Ref(s) => Ok((self.model_ref(s, key)?, Vec::new())),
            ModelSpec::Full { primary, fallbacks } => {
                let primary = match primary {
                    Some(p) => self.model_ref(p, &format!("{key}.primary"))?,
                    None => ModelRef::echo(),
                };
                let fallbacks = fallbacks
                    .iter()
                    .enumerate()
                    .map(|(i, f)| self.model_ref(f, &format!("{key}.fallbacks[{i}]")))
                    .collect::<Result<_, _>>()?;
                Ok((primary, fallbacks))
            }
        }
    }

    fn model_ref(&self, s: &str, key: &str) -> Result<ModelRef, ConfigError> {
        let r = ModelRef::parse(s)
            .ok_or_else(|| self.error(key, format!("invalid model ref {s:?} (expected provider/model)")))?;
        if !self.provider_exists(&r.provider) {
            return Err(self.error(key, format!("unknown provider {:?} in model ref {s:?}", r.provider)));
        }
        Ok(r)
    }

    /// Whether `name` is a configured provider or the built-in `echo`.
    pub fn provider_exists(&self, name: &str) -> bool {
        name == ECHO_PROVIDER || self.config.models.providers.contains_key(name)
    }

    /// Whether a model ref names a known provider and, where that provider lists
    /// its models, one of them.
    pub fn model_known(&self, r: &ModelRef) -> bool {
        match self.config.models.providers.get(&r.provider) {
            Some(p) => p.models.is_empty() || p.models.iter().any(|m| m.id == r.model),
            None => r.provider == ECHO_PROVIDER && r.model == ECHO_PROVIDER,
        }
    }

    /// The token with the env fallback applied.
    pub fn auth_token(&self) -> Option<String> {
        non_empty(self.config.gateway.auth.token.clone()).or_else(|| non_empty(std::env::var(TOKEN_ENV).ok()))
    }

    /// The password with the env fallback applied.
    pub fn auth_password(&self) -> Option<String> {
        non_empty(self.config.gateway.auth.password.clone())
            .or_else(|| non_empty(std::env::var(PASSWORD_ENV).ok()))
    }

    /// Gateway-only rules, checked with the effective bind (after `--bind`).
    pub fn validate_gateway(&self, bind: &str) -> Result<(), ConfigError> {
        let ws = &self.config.gateway.ws;
        for (key, value) in [
            ("maxPayload", ws.max_payload),
            ("maxBufferedBytes", ws.max_buffered_bytes),
            ("tickIntervalMs", ws.tick_interval_ms),
            ("handshakeTimeoutMs", ws.handshake_timeout_ms),
        ] {
            if value == 0 {
                return Err(self.error(format!("gateway.ws.{key}"), "must be a positive number"));
            }
        }
        let auth = &self.config.gateway.auth;
        let bind_key = "gateway.bind";
        let ip = parse_bind(bind).ok_or_else(|| {
            self.error(bind_key, format!("invalid bind {bind:?} (loopback, lan or an IP address)"))
        })?;
        match auth.mode {
            AuthMode::Token if self.auth_token().is_none() => Err(self.error(
                "gateway.auth.token",
                format!("auth mode \"token\" needs a token (set gateway.auth.token or {TOKEN_ENV})"),
            )),
            AuthMode::Password if self.auth_password().is_none() => Err(self.error(
                "gateway.auth.password",
                format!(
                    "auth mode \"password\" needs a password (set gateway.auth.password or {PASSWORD_ENV})"
                ),
            )),
            AuthMode::None if !ip.is_loopback() => Err(self.error(
                "gateway.auth.mode",
                format!("auth mode \"none\" is only allowed on a loopback bind (bind is {bind:?})"),
            )),
            _ => Ok(()),
        }
    }
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
}

/// Agent ids appear inside session keys (`agent:<id>:…`), so no `:` or spaces.
pub fn valid_agent_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// `loopback` → 127.0.0.1, `lan` → 0.0.0.0, else an IP literal.
pub fn parse_bind(bind: &str) -> Option<std::net::IpAddr> {
    match bind {
        "loopback" | "" => Some(std::net::Ipv4Addr::LOCALHOST.into()),
        "lan" => Some(std::net::Ipv4Addr::UNSPECIFIED.into()),
        other => other.parse().ok(),
    }
}

/// The path to read: `--config`, else `OPENCLAW_CONFIG_PATH`, else
/// `~/.openclaw/openclaw.json`. The flag says whether it was named explicitly.
pub fn config_path(cli: Option<&Path>) -> (PathBuf, bool) {
    if let Some(p) = cli {
        return (p.to_path_buf(), true);
    }
    if let Some(p) = std::env::var_os(CONFIG_PATH_ENV).filter(|p| !p.is_empty()) {
        return (PathBuf::from(p), true);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    (home.join(".openclaw").join("openclaw.json"), false)
}

/// Loads the config named by `--config` / env / the default path. A missing
/// default file means built-in defaults; a missing named file is an error.
pub fn load(cli: Option<&Path>) -> Result<LoadedConfig, ConfigError> {
    let (path, explicit) = config_path(cli);
    match std::fs::read_to_string(&path) {
        Ok(text) => parse(&text, ConfigSource::File(path)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => Ok(LoadedConfig {
            config: Config::default(),
            source: ConfigSource::Defaults,
            unknown_keys: vec![],
        }),
        Err(e) => Err(ConfigError {
            file: path.display().to_string(),
            key: "<file>".into(),
            message: format!("cannot read: {e}"),
        }),
    }
}

/// Parses config text (JSON5), expanding `${VAR}` from the environment.
pub fn parse(text: &str, source: ConfigSource) -> Result<LoadedConfig, ConfigError> {
    parse_with_env(text, source, &|k| std::env::var(k).ok())
}

/// [`parse`] with an explicit environment lookup (for tests).
pub fn parse_with_env(
    text: &str,
    source: ConfigSource,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<LoadedConfig, ConfigError> {
    let file = source.to_string();
    let err = |key: String, message: String| ConfigError { file: file.clone(), key, message };
    let mut value: serde_json::Value =
        json5::from_str(text).map_err(|e| err("<file>".into(), format!("invalid JSON5: {e}")))?;
    if !value.is_object() {
        return Err(err("<root>".into(), "the config must be an object".into()));
    }
    expand_env(&mut value, &mut String::new(), env).map_err(|(k, m)| err(k, m))?;

    let mut unknown_keys = Vec::new();
    let mut on_unknown = |path: serde_ignored::Path<'_>| unknown_keys.push(path.to_string());
    let de = serde_ignored::Deserializer::new(value, &mut on_unknown);
    let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        err(if key == "." { "<root>".into() } else { key }, e.into_inner().to_string())
    })?;
    for k in &unknown_keys {
        tracing::warn!(file = %file, key = %k, "unknown config key ignored");
    }
    Ok(LoadedConfig { config, source, unknown_keys })
}

/// Replaces `${NAME}` in every string; a missing variable names its key.
fn expand_env(
    v: &mut serde_json::Value,
    path: &mut String,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), (String, String)> {
    match v {
        serde_json::Value::String(s) if s.contains("${") => {
            *s = expand_str(s, env)
                .map_err(|var| (path.clone(), format!("environment variable {var} is not set")))?;
        }
        serde_json::Value::Object(map) => {
            for (k, child) in map.iter_mut() {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(k);
                expand_env(child, path, env)?;
                path.truncate(len);
            }
        }
        serde_json::Value::Array(items) => {
            for (i, child) in items.iter_mut().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                expand_env(child, path, env)?;
                path.truncate(len);
            }
        }
        _ => {}
    }
    Ok(())
}

fn expand_str(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find('}') {
            Some(end)
                if !after[..end].is_empty()
                    && after[..end].bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') =>
            {
                let name = &after[..end];
                out.push_str(&env(name).ok_or_else(|| name.to_string())?);
                rest = &after[end + 1..];
            }
            _ => {
                out.push_str("${");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_str(text: &str) -> Result<LoadedConfig, ConfigError> {
        let env = |k: &str| match k {
            "OPENAI_API_KEY" => Some("sk-test".to_string()),
            _ => None,
        };
        parse_with_env(text, ConfigSource::File("/etc/oc.json5".into()), &env)
    }

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
    fn full_example_parses() {
        let c = load_str(
            r#"{
              // JSON5: comments, trailing commas, unquoted keys
              gateway: { port: 19000, auth: { mode: "token", token: "t" },
                         http: { endpoints: { chatCompletions: { enabled: true } } } },
              agents: {
                defaults: { model: { primary: "openai/gpt-4o-mini", fallbacks: ["echo/echo"] },
                            systemPrompt: "be brief", timeoutSeconds: 30 },
                list: [ { id: "main", default: true }, { id: "beta", model: "echo/echo", systemPrompt: "B" } ],
              },
              models: { providers: { openai: { baseUrl: "https://api.openai.com/v1", apiKey: "${OPENAI_API_KEY}",
                        api: "openai-completions", models: [ { id: "gpt-4o-mini", maxTokens: 16384 } ] } } },
              session: { store: "memory" },
            }"#,
        )
        .unwrap();
        assert_eq!(c.config.models.providers["openai"].api_key.as_deref(), Some("sk-test"));
        let a = c.resolve_agents().unwrap();
        assert_eq!(a.default_agent().id, "main");
        assert_eq!(a.default_agent().primary.to_string(), "openai/gpt-4o-mini");
        assert_eq!(a.default_agent().fallbacks, vec![ModelRef::echo()]);
        let beta = a.get("beta").unwrap();
        assert_eq!(beta.primary, ModelRef::echo());
        assert_eq!(beta.system_prompt.as_deref(), Some("B"));
        assert_eq!(a.default_agent().timeout, Duration::from_secs(30));
        assert!(c.unknown_keys.is_empty());
    }

    #[test]
    fn entries_shape_is_accepted() {
        let c = load_str(r#"{agents: {entries: {alpha: {}, beta: {default: true}}}}"#).unwrap();
        let a = c.resolve_agents().unwrap();
        assert_eq!(a.default_agent().id, "beta");
        assert!(a.get("alpha").is_some());
    }

    #[test]
    fn default_falls_back_to_main_then_first() {
        let a = load_str(r#"{agents: {list: [{id: "x"}, {id: "main"}]}}"#).unwrap().resolve_agents().unwrap();
        assert_eq!(a.default_agent().id, "main");
        let a = load_str(r#"{agents: {list: [{id: "x"}, {id: "y"}]}}"#).unwrap().resolve_agents().unwrap();
        assert_eq!(a.default_agent().id, "x");
    }

    #[test]
    fn unknown_keys_are_reported_not_fatal() {
        let c = load_str(r#"{gateway: {prot: 1}, wat: true}"#).unwrap();
        assert!(c.unknown_keys.iter().any(|k| k == "gateway.prot"), "{:?}", c.unknown_keys);
        assert!(c.unknown_keys.iter().any(|k| k == "wat"));
    }

    #[test]
    fn wrong_type_names_key_and_file() {
        let e = load_str(r#"{gateway: {port: "http"}}"#).unwrap_err();
        assert_eq!(e.key, "gateway.port");
        assert_eq!(e.file, "/etc/oc.json5");
        let line = e.to_string();
        assert!(line.starts_with("config error in /etc/oc.json5: gateway.port:"), "{line}");
        assert!(!line.contains('\n'));
    }

    #[test]
    fn missing_env_var_names_key() {
        let e =
            load_str(r#"{models: {providers: {o: {baseUrl: "x", apiKey: "${NOPE_NOT_SET}"}}}}"#).unwrap_err();
        assert_eq!(e.key, "models.providers.o.apiKey");
        assert!(e.message.contains("NOPE_NOT_SET"));
    }

    #[test]
    fn unknown_provider_in_model_ref() {
        let e = load_str(r#"{agents: {list: [{id: "a", model: "nope/m"}]}}"#)
            .unwrap()
            .resolve_agents()
            .unwrap_err();
        assert_eq!(e.key, "agents.list[0].model");
        let e = load_str(r#"{agents: {defaults: {model: {primary: "echo/echo", fallbacks: ["x/y"]}}}}"#)
            .unwrap()
            .resolve_agents()
            .unwrap_err();
        assert_eq!(e.key, "agents.defaults.model.fallbacks[0]");
    }

    #[test]
    fn timeouts_must_be_positive_and_bounded() {
        for bad in ["0", "-1", "1e20"] {
            let e = load_str(&format!("{{agents: {{defaults: {{timeoutSeconds: {bad}}}}}}}"))
                .unwrap()
                .resolve_agents()
                .unwrap_err();
            assert_eq!(e.key, "agents.defaults.timeoutSeconds", "{bad}");
        }
        let e = load_str(r#"{agents: {list: [{id: "a", timeoutSeconds: 1e19}]}}"#)
            .unwrap()
            .resolve_agents()
            .unwrap_err();
        assert_eq!(e.key, "agents.list[0].timeoutSeconds");
        assert!(load_str("{agents: {defaults: {timeoutSeconds: 0.5}}}").unwrap().resolve_agents().is_ok());
    }

    #[test]
    fn two_defaults_refused() {
        let e = load_str(r#"{agents: {list: [{id: "a", default: true}, {id: "b", default: true}]}}"#)
            .unwrap()
            .resolve_agents()
            .unwrap_err();
        assert_eq!(e.key, "agents.list[1].default");
    }

    #[test]
    fn gateway_auth_rules() {
        let c = load_str(r#"{gateway: {auth: {mode: "token"}}}"#).unwrap();
        // The env fallback may be set by whoever runs the tests; only assert when it is not.
        if std::env::var(TOKEN_ENV).is_err() {
            assert_eq!(c.validate_gateway("loopback").unwrap_err().key, "gateway.auth.token");
        }
        let c = load_str(r#"{gateway: {auth: {mode: "none"}}}"#).unwrap();
        assert!(c.validate_gateway("loopback").is_ok());
        assert!(c.validate_gateway("127.0.0.1").is_ok());
        assert_eq!(c.validate_gateway("lan").unwrap_err().key, "gateway.auth.mode");
        assert_eq!(c.validate_gateway("nonsense").unwrap_err().key, "gateway.bind");
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
    fn model_ref_parsing() {
        assert_eq!(ModelRef::parse("openrouter/meta/llama").unwrap().model, "meta/llama");
        assert_eq!(ModelRef::parse("echo"), Some(ModelRef::echo()));
        assert_eq!(ModelRef::parse("gpt-4o"), None);
        assert_eq!(ModelRef::parse("/x"), None);
    }

    #[test]
    fn env_expansion_edge_cases() {
        let env = |k: &str| (k == "A").then(|| "1".to_string());
        assert_eq!(expand_str("x${A}y${A}", &env).unwrap(), "x1y1");
        assert_eq!(expand_str("${ not a var", &env).unwrap(), "${ not a var");
        assert_eq!(expand_str("${B}", &env).unwrap_err(), "B");
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
