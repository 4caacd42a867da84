//! Network odds and ends of both services: address ranges
//! (`gateway.trustedProxies`) and browser origins (`gateway.allowedOrigins`),
//! parsed once at start; and the accept step of the services' own accept loops
//! (gateway-http's public port, agent-svc's mutual-TLS listener): Nagle off,
//! and a back-off on accept errors instead of a spin; and the open-file limit
//! both services raise at start ([`raise_fd_limit`]).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

/// An IP range: an address and a prefix length (`10.0.0.0/8`, `::1`, `fd00::/8`).
/// A bare address is a range of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `ADDR` or `ADDR/PREFIX`.
    pub fn parse(s: &str) -> Option<Cidr> {
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.trim(), None),
        };
        let addr: IpAddr = addr.parse().ok()?;
        let addr = addr.to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max)?,
            None => max,
        };
        Some(Cidr { addr, prefix })
    }

    /// Whether `ip` is in the range (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }

    /// Whether the range holds any loopback address (`0.0.0.0/0` does).
    pub fn is_loopback(&self) -> bool {
        match self.addr {
            // Two ranges meet when one holds the other's first address.
            IpAddr::V4(a) => a.is_loopback() || self.contains(std::net::Ipv4Addr::new(127, 0, 0, 0).into()),
            IpAddr::V6(_) => self.contains(std::net::Ipv6Addr::LOCALHOST.into()),
        }
    }
}

/// A browser origin as it appears in an `Origin` header: `scheme://host[:port]`,
/// lowercased, without a path. `None` for anything else (`null` included).
pub fn normalize_origin(s: &str) -> Option<String> {
    let s = s.trim();
    let (scheme, rest) = s.split_once("://")?;
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return None;
    }
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ']) {
        return None;
    }
    Some(format!("{}://{}", scheme.to_ascii_lowercase(), rest.to_ascii_lowercase()))
}

/// How long to wait after a failed accept (out of descriptors and the like).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The next connection, with `TCP_NODELAY` set (small frames must not wait
/// for Nagle). `None` after an accept error, which is logged and waited out
/// for [`ACCEPT_BACKOFF`]: the caller just accepts again.
pub async fn accept(listener: &TcpListener) -> Option<(TcpStream, SocketAddr)> {
    match listener.accept().await {
        Ok((tcp, peer)) => {
            let _ = tcp.set_nodelay(true);
            Some((tcp, peer))
        }
        Err(e) => {
            tracing::warn!(error = %e, "accept failed");
            tokio::time::sleep(ACCEPT_BACKOFF).await;
            None
        }
    }
}

/// Raises this process's soft limit on open files (`RLIMIT_NOFILE`) to its
/// hard limit and returns the limit now in force (`u64::MAX`: unlimited; the
/// old one when raising it is refused). Every connection is a file: a soft
/// limit of 1,024 (the usual default of service managers) would cap a gateway
/// whose `maxConnections` is 10,000 at about a tenth of it, with `EMFILE` on
/// accept. The hard limit is the operator's ceiling and is left alone.
pub fn raise_fd_limit() -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        limit.current = limit.maximum;
        // Refused (a container may forbid it): what holds is reported below.
        let _ = setrlimit(Resource::Nofile, limit);
    }
    // `None` in a limit means unlimited.
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let c = |s| Cidr::parse(s).unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(c("10.0.0.0/8").contains(ip("10.200.1.2")));
        assert!(!c("10.0.0.0/8").contains(ip("11.0.0.1")));
        assert!(c("172.17.0.1").contains(ip("172.17.0.1")));
        assert!(!c("172.17.0.1").contains(ip("172.17.0.2")));
        assert!(c("0.0.0.0/0").contains(ip("8.8.8.8")));
        assert!(c("fd00::/8").contains(ip("fd12::1")));
        assert!(!c("fd00::/8").contains(ip("fe80::1")));
        // IPv4-mapped IPv6 peers (dual-stack listeners) match IPv4 ranges.
        assert!(c("10.0.0.0/8").contains(ip("::ffff:10.1.2.3")));
        assert!(c("::1").is_loopback() && c("127.0.0.1").is_loopback() && c("127.0.0.0/8").is_loopback());
        assert!(!c("10.0.0.1").is_loopback() && !c("fd00::/8").is_loopback());
        assert!(c("0.0.0.0/0").is_loopback() && c("::/0").is_loopback() && c("127.5.0.0/16").is_loopback());
        for bad in ["", "10.0.0.0/33", "::/129", "host", "10.0.0.0/x", "1.2.3"] {
            assert!(Cidr::parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn origins() {
        assert_eq!(normalize_origin("https://App.Example.com").as_deref(), Some("https://app.example.com"));
        assert_eq!(normalize_origin("http://127.0.0.1:18789/").as_deref(), Some("http://127.0.0.1:18789"));
        for bad in ["null", "file://x", "https://a/b", "app.example.com", "https://", "https://u@h"] {
            assert!(normalize_origin(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn the_fd_limit_is_raised_to_the_hard_limit() {
        let hard = rustix::process::getrlimit(rustix::process::Resource::Nofile).maximum;
        let now = raise_fd_limit();
        assert_eq!(now, hard.unwrap_or(u64::MAX));
        // A second call finds nothing to raise and says the same.
        assert_eq!(raise_fd_limit(), now);
    }
}
