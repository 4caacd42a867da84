//! Loading: which file (`--config`, `OPENCLAW_CONFIG_PATH`, the default
//! path), reading it, and parsing JSON5 into a [`Config`]: `${VAR}` expanded,
//! unknown keys reported, a wrong type named by its key path, `…File` secrets
//! read, and a warning when the file shows its secrets to other users.

use super::env::{expand_env, process_env, EnvLookup};
use super::schema::Config;
use super::secrets::{literal_secrets, read_secret_files, warn_if_exposed};
use super::{ConfigError, ConfigSource, LoadedConfig, CONFIG_PATH_ENV};
use std::path::{Path, PathBuf};

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
        Ok(text) => {
            let (loaded, literal) =
                parse_inner(&text, ConfigSource::File(path.clone()), &process_env, SecretFiles::Read)?;
            warn_if_exposed(&path, &literal);
            Ok(loaded)
        }
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
    parse_with_env(text, source, &process_env)
}

/// [`parse`] with an explicit environment lookup (for tests).
pub fn parse_with_env(
    text: &str,
    source: ConfigSource,
    env: EnvLookup<'_>,
) -> Result<LoadedConfig, ConfigError> {
    parse_inner(text, source, env, SecretFiles::Read).map(|(loaded, _)| loaded)
}

/// [`parse_with_env`] that leaves `…File` secrets unread (a fuzzer's input
/// could name any file). For the fuzz targets (`fuzz/`); not an API.
#[doc(hidden)]
pub fn parse_skipping_secret_files(
    text: &str,
    source: ConfigSource,
    env: EnvLookup<'_>,
) -> Result<LoadedConfig, ConfigError> {
    parse_inner(text, source, env, SecretFiles::Skip).map(|(loaded, _)| loaded)
}

/// Whether `…File` secrets are read while parsing.
#[derive(Clone, Copy, PartialEq, Eq)]
enum SecretFiles {
    Read,
    Skip,
}

/// [`parse_with_env`], also returning the keys whose secret the text holds literally.
fn parse_inner(
    text: &str,
    source: ConfigSource,
    env: EnvLookup<'_>,
    files: SecretFiles,
) -> Result<(LoadedConfig, Vec<String>), ConfigError> {
    let file = source.to_string();
    let err = |key: String, message: String| ConfigError { file: file.clone(), key, message };
    // The JSON5 parser recurses once per level with no limit of its own.
    if nesting_exceeds(text, MAX_DEPTH) {
        return Err(err("<file>".into(), format!("invalid JSON5: nested deeper than {MAX_DEPTH} levels")));
    }
    let mut value: serde_json::Value =
        json5::from_str(text).map_err(|e| err("<file>".into(), format!("invalid JSON5: {e}")))?;
    if !value.is_object() {
        return Err(err("<root>".into(), "the config must be an object".into()));
    }
    let literal = literal_secrets(&value);
    expand_env(&mut value, &mut String::new(), env).map_err(|(k, m)| err(k, m))?;

    let mut unknown_keys = Vec::new();
    let mut on_unknown = |path: serde_ignored::Path<'_>| unknown_keys.push(path.to_string());
    let de = serde_ignored::Deserializer::new(value, &mut on_unknown);
    let mut config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        err(if key == "." { "<root>".into() } else { key }, e.into_inner().to_string())
    })?;
    if files == SecretFiles::Read {
        read_secret_files(&mut config).map_err(|(k, m)| err(k, m))?;
    }
    for k in &unknown_keys {
        tracing::warn!(file = %file, key = %k, "unknown config key ignored");
    }
    Ok((LoadedConfig { config, source, unknown_keys }, literal))
}

/// Deepest nesting of objects and arrays accepted (serde_json's own limit).
const MAX_DEPTH: usize = 128;

/// Whether JSON5 `text` opens more than `max` objects or arrays inside one
/// another. Brackets in strings and comments do not count; for text that is
/// not JSON5 the answer only has to err on the side the parser then reports.
fn nesting_exceeds(text: &str, max: usize) -> bool {
    let mut depth = 0usize;
    let mut bytes = text.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'{' | b'[' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            b'"' | b'\'' => {
                while let Some(c) = bytes.next() {
                    match c {
                        b'\\' => {
                            bytes.next();
                        }
                        c if c == b => break,
                        _ => {}
                    }
                }
            }
            b'/' => match bytes.clone().next() {
                Some(b'/') => {
                    bytes.find(|&c| c == b'\n' || c == b'\r');
                }
                Some(b'*') => {
                    bytes.next();
                    let mut star = false;
                    for c in bytes.by_ref() {
                        if star && c == b'/' {
                            break;
                        }
                        star = c == b'*';
                    }
                }
                _ => {}
            },
            _ => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use crate::config::test_support::load_str;
    use crate::config::ModelRef;
    use std::time::Duration;

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
    fn syntax_errors_are_one_line_with_the_position() {
        for (text, at) in
            [("{", "line 1 column 1"), ("{a: 1,,}", "line 1 column 7"), ("{a: 1}\n x", "line 2 column 2")]
        {
            let e = load_str(text).unwrap_err();
            assert_eq!((e.file.as_str(), e.key.as_str()), ("/etc/oc.json5", "<file>"));
            let line = e.to_string();
            assert!(line.starts_with("config error in /etc/oc.json5: <file>: invalid JSON5: "), "{line}");
            assert!(line.contains(at) && !line.contains('\n'), "{line}");
        }
        // JSON5 itself: hex, a leading '+', a leading '.', single quotes, comments.
        let c = load_str(
            "{gateway: {port: +0x10, bind: 'lan'}, // c\n agents: {defaults: {timeoutSeconds: .5}}}",
        )
        .unwrap();
        assert_eq!((c.config.gateway.port, c.config.gateway.bind.as_str()), (16, "lan"));
        assert_eq!(c.config.agents.defaults.timeout_seconds, 0.5);
    }

    #[test]
    fn deep_nesting_is_a_config_error_not_a_stack_overflow() {
        // The JSON5 parser has no depth limit of its own (found by the fuzzer).
        for open in ["[", "{a:", "{\"a\":["] {
            let text = format!("{{x: {}", open.repeat(100_000));
            let e = load_str(&text).unwrap_err();
            assert_eq!(e.key, "<file>");
            assert!(e.message.contains("nested deeper than 128 levels"), "{e}");
        }
        // 128 levels in all are fine; brackets in strings and comments do not count.
        let deep = format!("{{wat: {}1{}}}", "[".repeat(127), "]".repeat(127));
        assert!(load_str(&deep).unwrap().unknown_keys.contains(&"wat".to_string()));
        let text = format!(
            "{{a: '{}', b: \"\\\"{}\", // {}\n /* {} */ c: 1}}",
            "[".repeat(200),
            "{".repeat(200),
            "[".repeat(200),
            "{".repeat(200)
        );
        assert_eq!(load_str(&text).unwrap().unknown_keys.len(), 3);
        assert!(super::nesting_exceeds(&"[".repeat(129), 128));
        assert!(!super::nesting_exceeds(&"[]".repeat(1000), 128));
    }

    #[test]
    fn missing_env_var_names_key() {
        let e =
            load_str(r#"{models: {providers: {o: {baseUrl: "x", apiKey: "${NOPE_NOT_SET}"}}}}"#).unwrap_err();
        assert_eq!(e.key, "models.providers.o.apiKey");
        assert!(e.message.contains("NOPE_NOT_SET"));
    }
}
