//! Where agent-svc is: the `--agent-svc` / `AGENT_SVC_URL` /
//! `gateway.agentService.url` value, parsed into the addresses to resolve.
//!
//! One target or a comma-separated list, each `host:port`, optionally with an
//! `http://` scheme (h2c): `http://agent-svc:50051`, `10.0.0.7:50051`,
//! `a:50051,b:50051`, `[::1]:50051`. A host that is not an IP literal is a DNS
//! name, re-resolved every few seconds; all its addresses are replicas (compose
//! `--scale`, a Kubernetes headless Service). A missing port means 50051.

use std::net::{IpAddr, SocketAddr};

/// The agent-svc port when a target names none.
pub const DEFAULT_PORT: u16 = 50051;

/// One entry of the target list.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// An IP literal: one fixed replica.
    Addr(SocketAddr),
    /// A DNS name and port: as many replicas as it resolves to.
    Name {
        /// The host name (no brackets, no port).
        host: String,
        /// The port.
        port: u16,
    },
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Addr(a) => write!(f, "{a}"),
            Target::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// Parses a target list; the error says what is wrong with which entry.
pub fn parse_targets(spec: &str) -> Result<Vec<Target>, String> {
    let targets = spec
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(parse_one)
        .collect::<Result<Vec<_>, _>>()?;
    if targets.is_empty() {
        return Err("no address given".into());
    }
    Ok(targets)
}

fn parse_one(entry: &str) -> Result<Target, String> {
    let rest = match entry.split_once("://") {
        None => entry,
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
        Some((scheme, _)) => {
            return Err(format!("{entry:?}: scheme {scheme}:// is not supported (use http://)"))
        }
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.is_empty() || authority.contains(['/', '?', '#', '@', ' ']) {
        return Err(format!("{entry:?}: expected host:port"));
    }
    if let Ok(addr) = authority.parse::<SocketAddr>() {
        return Ok(Target::Addr(addr));
    }
    // `[v6]` or `[v6]:port`, `host`, `host:port`.
    let (host, port) = if let Some(inner) = authority.strip_prefix('[') {
        let (ip, after) = inner.split_once(']').ok_or_else(|| format!("{entry:?}: unclosed '['"))?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or_else(|| format!("{entry:?}: expected ]:port"))?),
        };
        (ip, port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let port = match port {
        None => DEFAULT_PORT,
        Some(p) => p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| format!("{entry:?}: bad port"))?,
    };
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(Target::Addr(SocketAddr::new(ip, port)));
    }
    let valid = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if !valid {
        return Err(format!("{entry:?}: {host:?} is not a valid host name"));
    }
    Ok(Target::Name { host: host.to_ascii_lowercase(), port })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(host: &str, port: u16) -> Target {
        Target::Name { host: host.into(), port }
    }

    #[test]
    fn accepted_forms() {
        let addr = |s: &str| Target::Addr(s.parse().unwrap());
        assert_eq!(parse_targets("http://127.0.0.1:50051").unwrap(), [addr("127.0.0.1:50051")]);
        assert_eq!(parse_targets("agent-svc:7000").unwrap(), [name("agent-svc", 7000)]);
        assert_eq!(parse_targets("http://Agent-Svc/").unwrap(), [name("agent-svc", DEFAULT_PORT)]);
        assert_eq!(parse_targets("[::1]:9").unwrap(), [addr("[::1]:9")]);
        assert_eq!(parse_targets("[::1]").unwrap(), [addr("[::1]:50051")]);
        assert_eq!(
            parse_targets(" a:1, http://10.0.0.2:2 ,,b ").unwrap(),
            [name("a", 1), addr("10.0.0.2:2"), name("b", DEFAULT_PORT)]
        );
    }

    #[test]
    fn refused_forms() {
        for bad in [
            "",
            " , ",
            "https://x:1",
            "grpc://x:1",
            "http://exa mple:1",
            "x:0",
            "x:99999",
            "x:1/path",
            "u:p@x:1",
            "[::1",
            "[::1]x",
            "bad..name:1",
            "-:",
        ] {
            assert!(parse_targets(bad).is_err(), "{bad:?} must be refused");
        }
    }
}
