//! Random ids: a UUID v4 (hyphenated, lower case) after a prefix.
//!
//! Written straight into one `String` of the right size: `format!("{}", uuid)`
//! goes through the formatting machinery, which cost a few thousand
//! instructions per id, and a request makes several (request, run, session,
//! completion).

/// `parts` concatenated, then a fresh UUID v4 (e.g. `["chatcmpl_"]` gives
/// `chatcmpl_0c6e…`).
pub fn with_uuid(parts: &[&str]) -> String {
    let mut buf = uuid::Uuid::encode_buffer();
    let id = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
    let mut out = String::with_capacity(parts.iter().map(|p| p.len()).sum::<usize>() + id.len());
    for p in parts {
        out.push_str(p);
    }
    out.push_str(id);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefix_then_a_uuid_v4() {
        let id = with_uuid(&["agent:", "main", ":openai:"]);
        let uuid = id.strip_prefix("agent:main:openai:").unwrap();
        let parsed = uuid::Uuid::parse_str(uuid).unwrap();
        assert_eq!(parsed.get_version_num(), 4);
        assert_eq!(uuid, parsed.hyphenated().to_string());
        assert_ne!(with_uuid(&[]), with_uuid(&[]));
        assert_eq!(with_uuid(&[]).len(), 36);
    }
}
