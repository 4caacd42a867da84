//! Secrets: read from files (`…File` keys, for Docker and Kubernetes secrets),
//! the internal token's env fallback, and the warning for a config file that
//! holds secrets in plain text and is readable by other users.
//!
//! A `…File` key is read when the config is loaded: the file's content with
//! one trailing newline removed. A file that cannot be read or is empty, or a
//! secret given both literally and as a file, is a config error naming the
//! `…File` key. Env fallbacks come after both (`resolve.rs` for the gateway's
//! auth secrets, [`LoadedConfig::agent_service_token`] here).

use super::env::{process_env, EnvLookup};
use super::schema::Config;
use super::{LoadedConfig, AGENT_SVC_TOKEN_ENV};
use crate::redact::redact_url;
use std::path::Path;

/// The secrets a config can hold, as `(literal, file)` key pairs under the root.
fn secret_slots(config: &mut Config) -> Vec<(String, &mut Option<String>, Option<&Path>)> {
    let gw = &mut config.gateway;
    let mut slots = vec![
        ("gateway.auth.token".to_owned(), &mut gw.auth.token, gw.auth.token_file.as_deref()),
        ("gateway.auth.password".to_owned(), &mut gw.auth.password, gw.auth.password_file.as_deref()),
        (
            "gateway.agentService.token".to_owned(),
            &mut gw.agent_service.token,
            gw.agent_service.token_file.as_deref(),
        ),
    ];
    for (name, p) in config.models.providers.iter_mut() {
        slots.push((format!("models.providers.{name}.apiKey"), &mut p.api_key, p.api_key_file.as_deref()));
    }
    slots
}

/// Fills every secret that has a `…File` key from its file. The error is
/// `(key, message)`.
pub(super) fn read_secret_files(config: &mut Config) -> Result<(), (String, String)> {
    for (key, literal, file) in secret_slots(config) {
        let Some(path) = file else { continue };
        let file_key = format!("{key}File");
        if literal.as_deref().is_some_and(|s| !s.is_empty()) {
            return Err((file_key, format!("set either {key} or {key}File, not both")));
        }
        *literal = Some(read_secret_file(path).map_err(|m| (file_key, m))?);
    }
    Ok(())
}

/// A secret file's content without one trailing newline.
fn read_secret_file(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let secret = text.strip_suffix('\n').map(|t| t.strip_suffix('\r').unwrap_or(t)).unwrap_or(&text);
    if secret.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(secret.to_owned())
}

/// The keys whose secret is written in the file itself (not `${VAR}`, not a
/// `…File`), looked up in the parsed text before env expansion. A session
/// store URL counts when it carries a password.
pub(super) fn literal_secrets(raw: &serde_json::Value) -> Vec<String> {
    let literal = |v: Option<&serde_json::Value>| {
        v.and_then(|v| v.as_str()).is_some_and(|s| !s.is_empty() && !s.contains("${"))
    };
    let mut keys = Vec::new();
    for key in ["gateway.auth.token", "gateway.auth.password", "gateway.agentService.token"] {
        if literal(raw.pointer(&format!("/{}", key.replace('.', "/")))) {
            keys.push(key.to_owned());
        }
    }
    if let Some(providers) = raw.pointer("/models/providers").and_then(|p| p.as_object()) {
        for (name, p) in providers {
            if literal(p.get("apiKey")) {
                keys.push(format!("models.providers.{name}.apiKey"));
            }
        }
    }
    if let Some(store) = raw.pointer("/session/store").and_then(|s| s.as_str()) {
        if !store.contains("${") && redact_url(store) != store {
            keys.push("session.store".to_owned());
        }
    }
    keys
}

/// One warning line when `path` holds secrets literally and others may read it.
pub(super) fn warn_if_exposed(path: &Path, literal_keys: &[String]) {
    if literal_keys.is_empty() || !readable_by_others(path) {
        return;
    }
    tracing::warn!(
        file = %path.display(),
        keys = %literal_keys.join(", "),
        "the config file holds secrets in plain text and other users can read it: \
         use ${{VAR}} or a …File key, or chmod o-r it"
    );
}

#[cfg(unix)]
fn readable_by_others(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o004 != 0)
}

#[cfg(not(unix))]
fn readable_by_others(_: &Path) -> bool {
    false
}

impl LoadedConfig {
    /// The internal secret both services share: `gateway.agentService.token`
    /// (or its file), else env `OPENCLAW_AGENT_SVC_TOKEN`; `None`: agent-svc is open.
    pub fn agent_service_token(&self) -> Option<String> {
        self.agent_service_token_from(&process_env)
    }

    /// [`LoadedConfig::agent_service_token`] with an explicit environment lookup.
    pub fn agent_service_token_from(&self, env: EnvLookup<'_>) -> Option<String> {
        let configured = self.config.gateway.agent_service.token.clone().filter(|t| !t.is_empty());
        configured.or_else(|| env(AGENT_SVC_TOKEN_ENV).filter(|t| !t.is_empty()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_support::load_str;

    fn temp(name: &str, content: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("services-secrets-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        path
    }

    #[test]
    fn secrets_are_read_from_files_without_one_trailing_newline() {
        let token = temp("token", "from-file\n");
        let pw = temp("pw", "pass\r\n");
        let key = temp("key", "sk-file\n\n");
        let internal = temp("internal", "hop");
        let c = load_str(&format!(
            r#"{{gateway: {{auth: {{tokenFile: "{}", passwordFile: "{}"}}, agentService: {{tokenFile: "{}"}}}},
               models: {{providers: {{o: {{baseUrl: "http://x", apiKeyFile: "{}"}}}}}}}}"#,
            token.display(),
            pw.display(),
            internal.display(),
            key.display()
        ))
        .unwrap();
        let no_env = |_: &str| None;
        assert_eq!(c.auth_token_from(&no_env).as_deref(), Some("from-file"));
        assert_eq!(c.auth_password_from(&no_env).as_deref(), Some("pass"));
        assert_eq!(c.agent_service_token_from(&no_env).as_deref(), Some("hop"));
        assert_eq!(c.config.models.providers["o"].api_key.as_deref(), Some("sk-file\n"));
        let shown = format!("{:?}", c.config);
        for secret in ["from-file", "pass\"", "hop\"", "sk-file"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        // The file wins over the env fallback, as a literal does.
        let env = |k: &str| (k == AGENT_SVC_TOKEN_ENV).then(|| "env".to_owned());
        assert_eq!(c.agent_service_token_from(&env).as_deref(), Some("hop"));
        let c = load_str("{}").unwrap();
        assert_eq!(c.agent_service_token_from(&env).as_deref(), Some("env"));
        assert_eq!(c.agent_service_token_from(&no_env), None);
    }

    #[test]
    fn a_missing_empty_or_doubled_secret_file_names_its_key() {
        let e = load_str(r#"{gateway: {auth: {tokenFile: "/nonexistent/openclaw-token"}}}"#).unwrap_err();
        assert_eq!(e.key, "gateway.auth.tokenFile");
        assert!(e.message.contains("/nonexistent/openclaw-token"), "{e}");
        assert!(!e.to_string().contains('\n'));
        let empty = temp("empty", "\n");
        let e = load_str(&format!(r#"{{gateway: {{agentService: {{tokenFile: "{}"}}}}}}"#, empty.display()))
            .unwrap_err();
        assert_eq!(e.key, "gateway.agentService.tokenFile");
        let key = temp("key", "k");
        let e = load_str(&format!(
            r#"{{models: {{providers: {{o: {{baseUrl: "x", apiKey: "lit", apiKeyFile: "{}"}}}}}}}}"#,
            key.display()
        ))
        .unwrap_err();
        assert_eq!(e.key, "models.providers.o.apiKeyFile");
        assert!(e.message.contains("not both"), "{e}");
    }

    #[test]
    fn literal_secrets_are_found_before_env_expansion() {
        let raw: serde_json::Value = json5::from_str(
            r#"{gateway: {auth: {token: "plain", password: "${PW}"}, agentService: {token: "x"}},
                models: {providers: {a: {apiKey: "${A}"}, b: {apiKey: "sk"}}},
                session: {store: "postgres://u:secret@db/x"}}"#,
        )
        .unwrap();
        assert_eq!(
            literal_secrets(&raw),
            [
                "gateway.auth.token",
                "gateway.agentService.token",
                "models.providers.b.apiKey",
                "session.store"
            ]
        );
        let raw: serde_json::Value = json5::from_str(r#"{session: {store: "postgres://db/x"}}"#).unwrap();
        assert!(literal_secrets(&raw).is_empty());
    }
}
