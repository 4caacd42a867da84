//! Resolution: agents with every default applied, model refs checked against
//! the providers, the default agent chosen; and the gateway's cross-field
//! rules (auth mode against its secrets and the bind).

use super::env::{process_env, EnvLookup};
use super::schema::{AgentEntry, AuthMode, CompactionConfig, ModelSpec};
use super::{
    ConfigError, LoadedConfig, API_OPENAI_COMPLETIONS, ECHO_PROVIDER, IMPLICIT_AGENT, MAX_TIMEOUT_SECONDS,
    PASSWORD_ENV, TOKEN_ENV,
};
use std::fmt;
use std::time::Duration;

fn valid_timeout(secs: f64) -> bool {
    secs.is_finite() && secs > 0.0 && secs <= MAX_TIMEOUT_SECONDS
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
    /// `contextTokens`: the prompt budget, when set explicitly.
    pub context_tokens: Option<u32>,
    /// How its stable sessions are kept within the budget.
    pub compaction: CompactionConfig,
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

impl LoadedConfig {
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
        self.check_context(defaults.context_tokens, &defaults.compaction, "agents.defaults")?;
        self.check_retention()?;
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
            let compaction = e.compaction.clone().unwrap_or_else(|| defaults.compaction.clone());
            self.check_context(e.context_tokens, &compaction, key)?;
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
                context_tokens: e.context_tokens.or(defaults.context_tokens),
                compaction,
            });
        }
        if agents.is_empty() {
            agents.push(ResolvedAgent {
                id: IMPLICIT_AGENT.into(),
                primary: def_primary,
                fallbacks: def_fallbacks,
                system_prompt: defaults.system_prompt.clone(),
                timeout: Duration::from_secs_f64(defaults.timeout_seconds),
                context_tokens: defaults.context_tokens,
                compaction: defaults.compaction.clone(),
            });
        }
        let default_index =
            default_index.or_else(|| agents.iter().position(|a| a.id == IMPLICIT_AGENT)).unwrap_or(0);
        Ok(ResolvedAgents { agents, default_index })
    }

    /// `contextTokens` and `compaction` of the agent (or the defaults) at `key`.
    fn check_context(&self, tokens: Option<u32>, c: &CompactionConfig, key: &str) -> Result<(), ConfigError> {
        if tokens == Some(0) {
            return Err(self.error(format!("{key}.contextTokens"), "must be a positive number of tokens"));
        }
        if !(c.threshold > 0.0 && c.threshold <= 1.0) {
            return Err(self.error(format!("{key}.compaction.threshold"), "must be in (0, 1]"));
        }
        if !(c.keep_recent >= 0.0 && c.keep_recent < c.threshold) {
            return Err(self.error(
                format!("{key}.compaction.keepRecent"),
                "must be at least 0 and below compaction.threshold",
            ));
        }
        if c.summary_max_tokens == 0 {
            return Err(self.error(format!("{key}.compaction.summaryMaxTokens"), "must be positive"));
        }
        Ok(())
    }

    fn check_retention(&self) -> Result<(), ConfigError> {
        let r = &self.config.session.retention;
        if r.max_age_seconds.is_some_and(|s| !valid_timeout(s)) {
            return Err(self.error(
                "session.retention.maxAgeSeconds",
                "must be a positive number of seconds, at most 31536000",
            ));
        }
        if !valid_timeout(r.sweep_interval_seconds) {
            return Err(self.error(
                "session.retention.sweepIntervalSeconds",
                "must be a positive number of seconds, at most 31536000",
            ));
        }
        if r.max_sessions_per_agent == Some(0) {
            return Err(self.error("session.retention.maxSessionsPerAgent", "must be positive"));
        }
        Ok(())
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
        // A provider that lists its models accepts only those, from config as from requests.
        if !self.model_known(&r) {
            return Err(self.error(
                key,
                format!(
                    "unknown model {s:?}: provider {:?} lists its models (models.providers.{}.models)",
                    r.provider, r.provider
                ),
            ));
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

    /// The token with the env fallback (`OPENCLAW_GATEWAY_TOKEN`) applied.
    pub fn auth_token(&self) -> Option<String> {
        self.auth_token_from(&process_env)
    }

    /// [`LoadedConfig::auth_token`] with an explicit environment lookup.
    pub fn auth_token_from(&self, env: EnvLookup<'_>) -> Option<String> {
        non_empty(self.config.gateway.auth.token.clone()).or_else(|| non_empty(env(TOKEN_ENV)))
    }

    /// The password with the env fallback (`OPENCLAW_GATEWAY_PASSWORD`) applied.
    pub fn auth_password(&self) -> Option<String> {
        self.auth_password_from(&process_env)
    }

    /// [`LoadedConfig::auth_password`] with an explicit environment lookup.
    pub fn auth_password_from(&self, env: EnvLookup<'_>) -> Option<String> {
        non_empty(self.config.gateway.auth.password.clone()).or_else(|| non_empty(env(PASSWORD_ENV)))
    }

    /// Gateway-only rules, checked with the effective bind (after `--bind`).
    pub fn validate_gateway(&self, bind: &str) -> Result<(), ConfigError> {
        self.validate_gateway_with_env(bind, &process_env)
    }

    /// [`LoadedConfig::validate_gateway`] with an explicit environment lookup
    /// for the secrets' env fallbacks.
    pub fn validate_gateway_with_env(&self, bind: &str, env: EnvLookup<'_>) -> Result<(), ConfigError> {
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
        // A request body becomes one gRPC message to agent-svc, which takes up to 64 MiB.
        if self.config.gateway.http.endpoints.chat_completions.max_body_bytes > MAX_HOP_MESSAGE_BYTES {
            return Err(self.error(
                "gateway.http.endpoints.chatCompletions.maxBodyBytes",
                format!("at most {MAX_HOP_MESSAGE_BYTES} (64 MiB, the largest message agent-svc takes)"),
            ));
        }
        let auth = &self.config.gateway.auth;
        let bind_key = "gateway.bind";
        let ip = parse_bind(bind).ok_or_else(|| {
            self.error(bind_key, format!("invalid bind {bind:?} (loopback, lan or an IP address)"))
        })?;
        for (i, o) in self.config.gateway.allowed_origins.iter().enumerate() {
            if crate::net::normalize_origin(o).is_none() {
                return Err(self.error(
                    format!("gateway.allowedOrigins[{i}]"),
                    format!("{o:?} is not an origin (scheme://host[:port], http or https)"),
                ));
            }
        }
        let mut proxies = Vec::new();
        for (i, p) in self.config.gateway.trusted_proxies.iter().enumerate() {
            let cidr = crate::net::Cidr::parse(p).ok_or_else(|| {
                self.error(
                    format!("gateway.trustedProxies[{i}]"),
                    format!("{p:?} is not an IP address or CIDR range"),
                )
            })?;
            proxies.push((i, cidr));
        }
        let tp = &auth.trusted_proxy;
        if auth.mode == AuthMode::TrustedProxy {
            if proxies.is_empty() {
                return Err(self.error(
                    "gateway.trustedProxies",
                    "auth mode \"trusted-proxy\" needs the proxies' addresses (gateway.trustedProxies)",
                ));
            }
            if http::HeaderName::from_bytes(tp.user_header.as_bytes()).is_err() {
                return Err(self.error(
                    "gateway.auth.trustedProxy.userHeader",
                    "auth mode \"trusted-proxy\" needs the name of the header that carries the user",
                ));
            }
            for (i, h) in tp.required_headers.iter().enumerate() {
                if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                    return Err(self.error(
                        format!("gateway.auth.trustedProxy.requiredHeaders[{i}]"),
                        format!("{h:?} is not a header name"),
                    ));
                }
            }
            if let Some((i, _)) = proxies.iter().find(|(_, c)| c.is_loopback() && !tp.allow_loopback) {
                return Err(self.error(
                    format!("gateway.trustedProxies[{i}]"),
                    "a loopback proxy is trusted only with gateway.auth.trustedProxy.allowLoopback: true",
                ));
            }
        }
        match auth.mode {
            AuthMode::Token if self.auth_token_from(env).is_none() => Err(self.error(
                "gateway.auth.token",
                format!("auth mode \"token\" needs a token (set gateway.auth.token or {TOKEN_ENV})"),
            )),
            AuthMode::Password if self.auth_password_from(env).is_none() => Err(self.error(
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

/// The largest gRPC message either service takes on the hop (and the body cap's ceiling).
pub const MAX_HOP_MESSAGE_BYTES: u64 = 64 * 1024 * 1024;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_support::load_str;

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
    fn a_provider_listing_its_models_accepts_only_those_in_agent_config_too() {
        let cfg = |model: &str| {
            format!(
                r#"{{models: {{providers: {{o: {{baseUrl: "http://x", models: [{{id: "gpt-a"}}]}}}}}},
                    agents: {{list: [{{id: "a", model: "{model}"}}]}}}}"#
            )
        };
        assert!(load_str(&cfg("o/gpt-a")).unwrap().resolve_agents().is_ok());
        let e = load_str(&cfg("o/gpt-b")).unwrap().resolve_agents().unwrap_err();
        assert_eq!(e.key, "agents.list[0].model");
        assert!(e.message.contains("lists its models"), "{e}");
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
        // The env fallback is looked up in a given environment, not the test runner's.
        let no_env = |_: &str| None;
        assert_eq!(c.validate_gateway_with_env("loopback", &no_env).unwrap_err().key, "gateway.auth.token");
        let token_env = |k: &str| (k == TOKEN_ENV).then(|| "from-env".to_string());
        assert!(c.validate_gateway_with_env("loopback", &token_env).is_ok());
        assert_eq!(c.auth_token_from(&token_env).as_deref(), Some("from-env"));
        let c = load_str(r#"{gateway: {auth: {mode: "password"}}}"#).unwrap();
        assert_eq!(
            c.validate_gateway_with_env("loopback", &no_env).unwrap_err().key,
            "gateway.auth.password"
        );
        let password_env = |k: &str| (k == PASSWORD_ENV).then(|| "pw".to_string());
        assert!(c.validate_gateway_with_env("loopback", &password_env).is_ok());
        let c = load_str(r#"{gateway: {auth: {mode: "none"}}}"#).unwrap();
        assert!(c.validate_gateway("loopback").is_ok());
        assert!(c.validate_gateway("127.0.0.1").is_ok());
        assert_eq!(c.validate_gateway("lan").unwrap_err().key, "gateway.auth.mode");
        assert_eq!(c.validate_gateway("nonsense").unwrap_err().key, "gateway.bind");
    }

    #[test]
    fn model_ref_parsing() {
        assert_eq!(ModelRef::parse("openrouter/meta/llama").unwrap().model, "meta/llama");
        assert_eq!(ModelRef::parse("echo"), Some(ModelRef::echo()));
        assert_eq!(ModelRef::parse("gpt-4o"), None);
        assert_eq!(ModelRef::parse("/x"), None);
    }
}
