//! Session key rules (SPEC §4 "Sessions"): how a request's session selector
//! becomes a full `agent:<agentId>:…` key. Pure functions, no I/O.
//!
//! agent-svc resolves every run's key with [`resolve`]; the gateway uses the
//! same rules for the WebSocket methods that name a session.

use crate::config::valid_agent_id;
use crate::rules::RuleError;

/// Longest accepted explicit session key or `user` value, in bytes.
pub const MAX_KEY_BYTES: usize = 512;

/// Channel used in generated keys when the request names none.
pub const DEFAULT_CHANNEL: &str = "openai";

/// Longest accepted channel name, in bytes.
const MAX_CHANNEL_BYTES: usize = 64;

/// Namespaces that only OpenClaw itself may create (compared ASCII
/// case-insensitively, as OpenClaw does).
const RESERVED_PREFIXES: [&str; 3] = ["subagent:", "cron:", "acp:"];

const RESERVED_MESSAGE: &str = "`x-openclaw-session-key` cannot use reserved internal session namespaces.";

const AGENT_PREFIX: &str = "agent:";

/// How a request selects its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionSelector<'a> {
    /// Nothing given: a fresh key per call, not persisted.
    Stateless,
    /// The OpenAI `user` field: one stable session per user and channel.
    User(&'a str),
    /// The `x-openclaw-session-key` header (gRPC `session_key`).
    Explicit(&'a str),
}

/// The outcome of [`resolve`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedSession {
    /// Full key, always `agent:<agent_id>:<rest>`.
    pub key: String,
    /// The agent that runs the turn. For an explicit `agent:<id>:…` key this is
    /// `<id>`, which the caller must still check against the configured agents.
    pub agent_id: String,
    /// Whether the session continues across calls (its transcript is persisted).
    pub stable: bool,
}

/// Resolves the session key of a request.
///
/// `agent_id` is the agent already chosen by the request (or the default);
/// `channel` names where the request came from (`"openai"`, `"ws"`; empty means
/// `"openai"`).
pub fn resolve(
    selector: SessionSelector<'_>,
    agent_id: &str,
    channel: &str,
) -> Result<ResolvedSession, RuleError> {
    let channel = if channel.is_empty() { DEFAULT_CHANNEL } else { channel };
    if !valid_channel(channel) {
        return Err(RuleError::new(
            "channel",
            format!("Invalid channel {channel:?} (letters, digits, '-', '_', '.' only, at most {MAX_CHANNEL_BYTES} bytes)."),
        ));
    }
    // A stateless key is `agent:<id>:<channel>:<uuid>`: a channel named like a
    // reserved namespace would make one that is refused when sent back (a valid
    // channel has no `:`, so only the namespace's own name is at fault).
    if RESERVED_PREFIXES
        .iter()
        .any(|p| p.strip_suffix(':').is_some_and(|ns| ns.eq_ignore_ascii_case(channel)))
    {
        return Err(RuleError::new(
            "channel",
            format!("The channel {channel:?} is a reserved session namespace."),
        ));
    }
    match selector {
        SessionSelector::Stateless => Ok(ResolvedSession {
            key: crate::ids::with_uuid(&[AGENT_PREFIX, agent_id, ":", channel, ":"]),
            agent_id: agent_id.to_string(),
            stable: false,
        }),
        SessionSelector::User(raw) => {
            let user = check_user(raw)?;
            let key = format!("{AGENT_PREFIX}{agent_id}:{channel}-user:{user}");
            if key.len() > MAX_KEY_BYTES {
                return Err(RuleError::new(
                    "user",
                    format!(
                        "`user` is too long: its session key `agent:<agentId>:<channel>-user:<user>` \
                         may have at most {MAX_KEY_BYTES} bytes."
                    ),
                ));
            }
            Ok(ResolvedSession { key, agent_id: agent_id.to_string(), stable: true })
        }
        SessionSelector::Explicit(raw) => resolve_explicit(raw, agent_id),
    }
}

/// Splits `agent:<id>:<rest>` into `(<id>, <rest>)`; `None` when `key` does not
/// have that shape or either part is empty. The id is not validated here.
pub fn split_agent_key(key: &str) -> Option<(&str, &str)> {
    let (id, rest) = key.strip_prefix(AGENT_PREFIX)?.split_once(':')?;
    if id.is_empty() || rest.is_empty() {
        return None;
    }
    Some((id, rest))
}

fn resolve_explicit(raw: &str, agent_id: &str) -> Result<ResolvedSession, RuleError> {
    // Control characters are refused before trimming so that "key\n" is an error
    // rather than silently becoming "key".
    if raw.chars().any(char::is_control) {
        return Err(RuleError::no_param("`x-openclaw-session-key` must not contain control characters."));
    }
    let key = raw.trim();
    if key.is_empty() {
        return Err(RuleError::no_param("`x-openclaw-session-key` must not be empty."));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(RuleError::no_param(format!(
            "`x-openclaw-session-key` is too long (at most {MAX_KEY_BYTES} bytes)."
        )));
    }
    if is_reserved(key) {
        return Err(RuleError::no_param(RESERVED_MESSAGE));
    }
    if key.starts_with(AGENT_PREFIX) {
        let (id, rest) = split_agent_key(key).ok_or_else(invalid_agent_key)?;
        if !valid_agent_id(id) || rest.trim().is_empty() {
            return Err(invalid_agent_key());
        }
        check_rest(rest)?;
        return Ok(ResolvedSession { key: key.to_string(), agent_id: id.to_string(), stable: true });
    }
    // The full key is what the client gets back and may send again: it must
    // pass the same limit.
    let key = format!("{AGENT_PREFIX}{agent_id}:{key}");
    if key.len() > MAX_KEY_BYTES {
        return Err(RuleError::no_param(format!(
            "`x-openclaw-session-key` is too long: the full key `agent:<agentId>:<key>` may have at most \
             {MAX_KEY_BYTES} bytes."
        )));
    }
    Ok(ResolvedSession { key, agent_id: agent_id.to_string(), stable: true })
}

/// Checks the `<rest>` of an `agent:<id>:<rest>` key, including nested
/// `agent:<id>:` prefixes, so a reserved namespace cannot hide one level down.
fn check_rest(mut rest: &str) -> Result<(), RuleError> {
    loop {
        if is_reserved(rest) {
            return Err(RuleError::no_param(RESERVED_MESSAGE));
        }
        match split_agent_key(rest) {
            Some((_, inner)) => rest = inner,
            None => return Ok(()),
        }
    }
}

fn invalid_agent_key() -> RuleError {
    RuleError::no_param(
        "`x-openclaw-session-key` of the form `agent:<agentId>:<rest>` needs a valid agent id \
         (letters, digits, '-', '_', '.') and a non-empty rest.",
    )
}

fn check_user(raw: &str) -> Result<&str, RuleError> {
    if raw.chars().any(char::is_control) {
        return Err(RuleError::new("user", "`user` must not contain control characters."));
    }
    let user = raw.trim();
    if user.is_empty() {
        return Err(RuleError::new("user", "`user` must not be empty."));
    }
    if user.len() > MAX_KEY_BYTES {
        return Err(RuleError::new("user", format!("`user` is too long (at most {MAX_KEY_BYTES} bytes).")));
    }
    Ok(user)
}

fn is_reserved(s: &str) -> bool {
    let b = s.as_bytes();
    RESERVED_PREFIXES.iter().any(|p| b.len() >= p.len() && b[..p.len()].eq_ignore_ascii_case(p.as_bytes()))
}

fn valid_channel(channel: &str) -> bool {
    channel.len() <= MAX_CHANNEL_BYTES
        && channel.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(e: RuleError) -> (String, Option<String>) {
        (e.message, e.param.map(String::from))
    }

    fn explicit(key: &str) -> Result<ResolvedSession, RuleError> {
        resolve(SessionSelector::Explicit(key), "main", "openai")
    }

    #[test]
    fn stateless_gets_fresh_uuid_key() {
        let a = resolve(SessionSelector::Stateless, "main", "openai").unwrap();
        let b = resolve(SessionSelector::Stateless, "main", "openai").unwrap();
        assert_ne!(a.key, b.key);
        assert!(!a.stable);
        assert_eq!(a.agent_id, "main");
        let uuid = a.key.strip_prefix("agent:main:openai:").unwrap();
        let parsed = uuid::Uuid::parse_str(uuid).unwrap();
        assert_eq!(parsed.get_version_num(), 4);
    }

    #[test]
    fn empty_channel_means_openai() {
        let r = resolve(SessionSelector::User("bob"), "main", "").unwrap();
        assert_eq!(r.key, "agent:main:openai-user:bob");
    }

    #[test]
    fn invalid_channel_is_rejected() {
        let (_, param) = message(resolve(SessionSelector::Stateless, "main", "we:b").unwrap_err());
        assert_eq!(param.as_deref(), Some("channel"));
    }

    #[test]
    fn user_gets_stable_key_per_channel() {
        let r = resolve(SessionSelector::User("alice"), "beta", "openai").unwrap();
        assert_eq!(r.key, "agent:beta:openai-user:alice");
        assert_eq!(r.agent_id, "beta");
        assert!(r.stable);
        let r = resolve(SessionSelector::User(" alice "), "beta", "ws").unwrap();
        assert_eq!(r.key, "agent:beta:ws-user:alice");
    }

    #[test]
    fn user_rules() {
        for bad in ["", "   ", "a\u{0}b", "line\nbreak", "del\u{7f}"] {
            let (_, param) = message(resolve(SessionSelector::User(bad), "main", "openai").unwrap_err());
            assert_eq!(param.as_deref(), Some("user"), "{bad:?}");
        }
        let long = "u".repeat(MAX_KEY_BYTES + 1);
        let (msg, param) = message(resolve(SessionSelector::User(&long), "main", "openai").unwrap_err());
        assert_eq!(param.as_deref(), Some("user"));
        assert!(msg.contains("512"));
        // The limit is on the key the user makes, which must be usable as an explicit key.
        let prefix = "agent:main:openai-user:".len();
        let max = "u".repeat(MAX_KEY_BYTES - prefix);
        let r = resolve(SessionSelector::User(&max), "main", "openai").unwrap();
        assert_eq!(r.key.len(), MAX_KEY_BYTES);
        assert_eq!(explicit(&r.key).unwrap().key, r.key);
        let over = "u".repeat(MAX_KEY_BYTES - prefix + 1);
        let (msg, param) = message(resolve(SessionSelector::User(&over), "main", "openai").unwrap_err());
        assert_eq!(param.as_deref(), Some("user"));
        assert!(msg.contains("512"), "{msg}");
    }

    #[test]
    fn a_scoped_key_over_the_limit_is_refused() {
        // 512 bytes given, but `agent:main:` in front makes the full key longer (found by the fuzzer).
        let key = "k".repeat(MAX_KEY_BYTES - "agent:main:".len());
        let r = explicit(&key).unwrap();
        assert_eq!(r.key.len(), MAX_KEY_BYTES);
        assert_eq!(explicit(&r.key).unwrap().key, r.key, "the key handed out is accepted back");
        let (msg, param) = message(explicit(&format!("{key}k")).unwrap_err());
        assert!(msg.contains("x-openclaw-session-key") && msg.contains("512"), "{msg}");
        assert_eq!(param, None);
    }

    #[test]
    fn reserved_namespaces_are_not_channels() {
        for channel in ["cron", "subagent", "ACP", "Cron"] {
            let (_, param) = message(resolve(SessionSelector::Stateless, "main", channel).unwrap_err());
            assert_eq!(param.as_deref(), Some("channel"), "{channel}");
        }
        // A stateless key of any other channel is accepted back as it is.
        for channel in ["cron-jobs", "crony", "acp2", "sub"] {
            let r = resolve(SessionSelector::Stateless, "main", channel).unwrap();
            assert!(r.key.starts_with(&format!("agent:main:{channel}:")), "{}", r.key);
            assert_eq!(explicit(&r.key).unwrap().key, r.key);
        }
    }

    #[test]
    fn explicit_agent_key_is_used_as_is_and_selects_agent() {
        let r = explicit("agent:beta:openai:custom").unwrap();
        assert_eq!(r.key, "agent:beta:openai:custom");
        assert_eq!(r.agent_id, "beta");
        assert!(r.stable);
    }

    #[test]
    fn explicit_other_key_is_scoped_to_agent() {
        let r = explicit("my-thread").unwrap();
        assert_eq!(r.key, "agent:main:my-thread");
        assert_eq!(r.agent_id, "main");
        assert!(r.stable);
        // Colons and a case-different prefix are just part of the key.
        assert_eq!(explicit("a:b:c").unwrap().key, "agent:main:a:b:c");
        assert_eq!(explicit("Agent:x:y").unwrap().key, "agent:main:Agent:x:y");
    }

    #[test]
    fn explicit_key_is_trimmed() {
        assert_eq!(explicit("  room-1 ").unwrap().key, "agent:main:room-1");
    }

    #[test]
    fn reserved_namespaces_are_refused() {
        for key in [
            "subagent:x",
            "cron:job",
            "acp:1",
            "SubAgent:x",
            "CRON:x",
            "agent:main:subagent:spoofed",
            "agent:beta:cron:x",
            "agent:main:ACP:x",
            "agent:main:agent:beta:subagent:x",
        ] {
            let (msg, param) = message(explicit(key).unwrap_err());
            assert_eq!(msg, RESERVED_MESSAGE, "{key}");
            assert_eq!(param, None);
        }
        // Only a prefix is reserved.
        assert!(explicit("my-cron:x").is_ok());
        assert!(explicit("agent:main:x:subagent:y").is_ok());
        assert!(explicit("cron").is_ok());
    }

    #[test]
    fn reserved_message_is_exact() {
        assert_eq!(
            RESERVED_MESSAGE,
            "`x-openclaw-session-key` cannot use reserved internal session namespaces."
        );
    }

    #[test]
    fn long_keys_are_refused() {
        let key = "k".repeat(MAX_KEY_BYTES + 1);
        let (msg, _) = message(explicit(&key).unwrap_err());
        assert!(msg.contains("x-openclaw-session-key") && msg.contains("512"), "{msg}");
        // Multi-byte characters count in bytes.
        let key = "é".repeat(MAX_KEY_BYTES / 2 + 1);
        assert!(explicit(&key).is_err());
        assert!(explicit(&"k".repeat(MAX_KEY_BYTES - "agent:main:".len())).is_ok());
        assert!(explicit(&format!("agent:main:{}", "k".repeat(MAX_KEY_BYTES - "agent:main:".len()))).is_ok());
    }

    #[test]
    fn control_characters_are_refused() {
        for key in ["a\u{0}b", "tab\there", "trailing\n", "\u{1b}[0m", "c1\u{85}x"] {
            let (msg, _) = message(explicit(key).unwrap_err());
            assert!(msg.contains("x-openclaw-session-key") && msg.contains("control"), "{key:?}: {msg}");
        }
    }

    #[test]
    fn empty_explicit_keys_are_refused() {
        for key in ["", "   "] {
            let (msg, _) = message(explicit(key).unwrap_err());
            assert!(msg.contains("empty"), "{msg}");
        }
    }

    #[test]
    fn malformed_agent_keys_are_refused() {
        for key in [
            "agent:",
            "agent:main",
            "agent:main:",
            "agent::x",
            "agent:ma in:x",
            "agent:a/b:x",
            "agent:main:  ",
        ] {
            let (msg, _) = message(explicit(key).unwrap_err());
            assert!(msg.contains("agent:<agentId>:<rest>"), "{key}: {msg}");
        }
    }

    #[test]
    fn split_agent_key_parts() {
        assert_eq!(split_agent_key("agent:main:openai:x"), Some(("main", "openai:x")));
        assert_eq!(split_agent_key("agent:main:"), None);
        assert_eq!(split_agent_key("agent::x"), None);
        assert_eq!(split_agent_key("agent:main"), None);
        assert_eq!(split_agent_key("main:x"), None);
    }
}
