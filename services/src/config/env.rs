//! `${VAR}` expansion in every string of the parsed file, and the environment
//! lookup it (and the secrets' env fallbacks) go through, so tests can pass
//! their own environment instead of the process's.

/// Looks an environment variable up; `None` when it is not set.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process environment (a variable that is not valid Unicode counts as unset).
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Replaces `${NAME}` in every string; a missing variable names its key.
pub(super) fn expand_env(
    v: &mut serde_json::Value,
    path: &mut String,
    env: EnvLookup<'_>,
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

fn expand_str(s: &str, env: EnvLookup<'_>) -> Result<String, String> {
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

    #[test]
    fn env_expansion_edge_cases() {
        let env = |k: &str| (k == "A").then(|| "1".to_string());
        assert_eq!(expand_str("x${A}y${A}", &env).unwrap(), "x1y1");
        assert_eq!(expand_str("${ not a var", &env).unwrap(), "${ not a var");
        assert_eq!(expand_str("${B}", &env).unwrap_err(), "B");
    }
}
