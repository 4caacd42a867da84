//! Keeping secrets out of logs and error messages: [`redact_url`] hides the
//! credentials a URL may carry (a `session.store` database URL, typically).

use std::borrow::Cow;

/// What stands in for a hidden secret.
pub const REDACTED: &str = "<redacted>";

/// Hides a URL's credentials: `scheme://user:pass@host/db?user=u&password=p`
/// → `scheme://<redacted>@host/db?user=u&password=<redacted>`. Strings that
/// are not `scheme://…` URLs, or carry no credentials, come back unchanged.
pub fn redact_url(url: &str) -> Cow<'_, str> {
    let Some((scheme, rest)) = url.split_once("://") else { return url.into() };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    // The host is what follows the last '@' of the authority.
    let host = authority.rfind('@').map(|at| &authority[at + 1..]);
    let tail_redacted = redact_password_param(tail);
    if host.is_none() && tail_redacted.is_none() {
        return url.into();
    }
    let mut out = String::with_capacity(url.len() + REDACTED.len());
    out.push_str(scheme);
    out.push_str("://");
    match host {
        Some(host) => {
            out.push_str(REDACTED);
            out.push('@');
            out.push_str(host);
        }
        None => out.push_str(authority),
    }
    out.push_str(tail_redacted.as_deref().unwrap_or(tail));
    out.into()
}

/// `path?…&password=p…#frag` with the password's value hidden; `None` when the
/// query has no (non-empty) `password` parameter.
fn redact_password_param(tail: &str) -> Option<String> {
    let query_start = tail.find('?')? + 1;
    let query_end = tail[query_start..].find('#').map_or(tail.len(), |i| query_start + i);
    let mut changed = false;
    let pairs: Vec<Cow<'_, str>> = tail[query_start..query_end]
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, value)) if key.eq_ignore_ascii_case("password") && !value.is_empty() => {
                changed = true;
                format!("{key}={REDACTED}").into()
            }
            _ => pair.into(),
        })
        .collect();
    changed.then(|| format!("{}{}{}", &tail[..query_start], pairs.join("&"), &tail[query_end..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_is_redacted() {
        assert_eq!(redact_url("pg://u:p@h:5/db"), "pg://<redacted>@h:5/db");
        assert_eq!(redact_url("postgres://u:pgsecret@db:5432/x"), "postgres://<redacted>@db:5432/x");
        assert_eq!(redact_url("pg://u@h?x=1"), "pg://<redacted>@h?x=1");
        // An '@' after the authority is not userinfo.
        assert_eq!(redact_url("pg://h/db?x=a@b"), "pg://h/db?x=a@b");
        assert_eq!(redact_url("postgres://db/x?a=b@c"), "postgres://db/x?a=b@c");
        assert_eq!(redact_url("sqlite:/tmp/a@b"), "sqlite:/tmp/a@b");
        assert_eq!(redact_url("sqlite:./data/s.db"), "sqlite:./data/s.db");
    }

    #[test]
    fn password_parameter_is_redacted() {
        let shown = redact_url("postgres://h/db?user=u&password=secret");
        assert_eq!(shown, "postgres://h/db?user=u&password=<redacted>");
        assert!(!shown.contains("secret"));
        assert_eq!(
            redact_url("postgres://u:a@h/db?Password=b&sslmode=require#frag"),
            "postgres://<redacted>@h/db?Password=<redacted>&sslmode=require#frag"
        );
        assert_eq!(redact_url("postgres://h?password=s"), "postgres://h?password=<redacted>");
        // Other parameters, an empty value and a fragment are left alone.
        assert_eq!(
            redact_url("postgres://h/db?passwords=x&password="),
            "postgres://h/db?passwords=x&password="
        );
        assert_eq!(redact_url("postgres://h/db#password=x"), "postgres://h/db#password=x");
    }
}
