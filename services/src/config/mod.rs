//! The OpenClaw config file (JSON5), shared by gateway-http and agent-svc.
//!
//! Loading goes: read the file → parse JSON5 into a JSON value → expand `${VAR}`
//! in every string → deserialize into [`Config`] (unknown keys are reported as
//! warnings, type errors name the key path) → resolve agents and providers into
//! [`ResolvedAgents`] and check the cross-field rules. Every error is one line
//! that names the key and the file. One file per step:
//!
//! - `schema.rs`: the file's shape ([`Config`] and its parts) and defaults;
//! - `load.rs`: which file, reading and parsing it ([`load`], [`parse`]);
//! - `env.rs`: `${VAR}` expansion and the environment lookup;
//! - `secrets.rs`: `…File` secrets, the internal token, the plain-text warning;
//! - `tls.rs`: the TLS settings of the public port and the internal hop;
//! - `resolve.rs`: agents, model refs and the gateway's cross-field rules.

mod env;
mod load;
mod resolve;
mod schema;
mod secrets;
mod tls;

pub use env::{process_env, EnvLookup};
pub use load::{config_path, load, parse, parse_skipping_secret_files, parse_with_env};
pub use resolve::{parse_bind, valid_agent_id, ModelRef, ResolvedAgent, ResolvedAgents};
pub use schema::*;
pub use tls::{HopTls, AGENT_SERVICE_TLS_KEY, PUBLIC_TLS_KEY};

use std::fmt;
use std::path::PathBuf;

/// Env var naming the config file when `--config` is not given.
pub const CONFIG_PATH_ENV: &str = "OPENCLAW_CONFIG_PATH";
/// Env fallback for `gateway.auth.token`.
pub const TOKEN_ENV: &str = "OPENCLAW_GATEWAY_TOKEN";
/// Env fallback for `gateway.auth.password`.
pub const PASSWORD_ENV: &str = "OPENCLAW_GATEWAY_PASSWORD";
/// Env fallback for `gateway.agentService.token` (both services).
pub const AGENT_SVC_TOKEN_ENV: &str = "OPENCLAW_AGENT_SVC_TOKEN";
/// The built-in offline provider (and its only model).
pub const ECHO_PROVIDER: &str = "echo";
/// The provider API this build speaks to upstreams.
pub const API_OPENAI_COMPLETIONS: &str = "openai-completions";
/// The agent used when none is configured.
pub const IMPLICIT_AGENT: &str = "main";
/// Longest run timeout accepted (a year), so that deadlines cannot overflow.
pub const MAX_TIMEOUT_SECONDS: f64 = 365.0 * 86_400.0;

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
}

/// Config text parsed the way the tests of every step need it.
#[cfg(test)]
mod test_support {
    use super::{parse_with_env, ConfigError, ConfigSource, LoadedConfig};

    /// Parses `text` as `/etc/oc.json5`, with only `OPENAI_API_KEY` in the environment.
    pub(super) fn load_str(text: &str) -> Result<LoadedConfig, ConfigError> {
        let env = |k: &str| match k {
            "OPENAI_API_KEY" => Some("sk-test".to_string()),
            _ => None,
        };
        parse_with_env(text, ConfigSource::File("/etc/oc.json5".into()), &env)
    }
}
