//! Authentication (SPEC §3): `Authorization: Bearer <secret>` against the
//! configured token or password, compared in constant time; or, in mode
//! `trusted-proxy`, the identity a trusted reverse proxy put in a header.
//!
//! Guessing is made slow everywhere:
//! - wrong secrets are counted per client IP; after `maxAttempts` within
//!   `windowMs` the IP is locked out (`429` + `Retry-After`) for `lockoutMs`,
//!   even with the right secret;
//! - loopback clients are exempt from the lockout (`exemptLoopback`), but each
//!   of their wrong secrets is answered late: 250 ms × 2^(n−1), at most 5 s, for
//!   the n-th in the window; and the exemption never applies to a request that
//!   carries a browser `Origin` (a web page open in the user's browser);
//! - above `maxFailuresPerSecond` wrong secrets from everyone together, every
//!   attempt is refused at once until the next second, without being compared,
//!   so no spread of addresses can test more than that many secrets a second.
//!
//! [`Auth::check_secret`] is the single secret check; the HTTP routes call it
//! through [`Auth::check_request`], and the WebSocket `connect` calls it with the
//! secret from its `auth` params, so both share one limiter. A refusal carries
//! the delay its answer must wait ([`Refusal`]); the callers sleep it, outside
//! any lock.

use crate::error::ApiError;
use http::{HeaderMap, HeaderName, HeaderValue};
use metrics::Counter;
use parking_lot::Mutex;
use services::config::{AuthMode, LoadedConfig, RateLimitConfig, TrustedProxyConfig};
use services::net::Cidr;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

/// Most client IPs the limiter tracks at once; beyond it the entry closest to
/// expiry is dropped, so memory stays bounded under a spray of addresses.
const MAX_TRACKED_IPS: usize = 10_000;
/// The first wrong secret of an exempt (loopback) client waits this long…
const EXEMPT_DELAY_BASE: Duration = Duration::from_millis(250);
/// …doubling with each further one, up to this.
const EXEMPT_DELAY_MAX: Duration = Duration::from_secs(5);

/// Who presents credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    /// The TCP peer (a trusted proxy's address, when there is one).
    pub peer: IpAddr,
    /// The client: the peer, or behind `gateway.trustedProxies` the address they
    /// forwarded (`X-Forwarded-For` / `Forwarded`). Failed attempts are counted
    /// per client, IPv6 clients per /64.
    pub ip: IpAddr,
    /// The request carries a browser `Origin`: never exempt from the lockout.
    pub browser: bool,
}

impl Caller {
    /// A direct caller (no proxy in between).
    pub fn direct(ip: IpAddr, browser: bool) -> Caller {
        Caller { peer: ip, ip, browser }
    }
}

/// The limiter's key for a client: IPv4 as is, IPv6 by its /64 (one host gets
/// a whole /64, so counting per address would count per guess).
fn limit_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        v4 => v4,
    }
}

/// Why an attempt was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No secret, a wrong one, or no trusted identity: `401`.
    Unauthorized,
    /// Locked out (or over the global ceiling) for this many seconds: `429`.
    LockedOut(u64),
}

impl From<Denied> for ApiError {
    fn from(d: Denied) -> ApiError {
        match d {
            Denied::Unauthorized => ApiError::Unauthorized,
            Denied::LockedOut(retry_after_secs) => ApiError::AuthLockedOut { retry_after_secs },
        }
    }
}

/// A refused attempt: why, and how long to hold the answer back first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// Why.
    pub denied: Denied,
    /// How long to wait before answering (exempt clients' wrong secrets).
    pub delay: Duration,
}

impl Refusal {
    fn now(denied: Denied) -> Refusal {
        Refusal { denied, delay: Duration::ZERO }
    }

    /// Waits out the delay, then gives the error to answer with.
    pub async fn answer(self) -> ApiError {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        self.denied.into()
    }
}

impl From<Denied> for Refusal {
    fn from(denied: Denied) -> Refusal {
        Refusal::now(denied)
    }
}

/// The auth counters (`openclaw_gateway_auth_*`).
#[derive(Clone)]
pub struct AuthMetrics {
    /// Wrong secrets.
    pub failures: Counter,
    /// Client IPs locked out.
    pub lockouts: Counter,
    /// Attempts refused by the global ceiling.
    pub throttled: Counter,
    /// Wrong secrets of exempt clients answered late.
    pub delayed: Counter,
}

impl Default for AuthMetrics {
    fn default() -> Self {
        AuthMetrics {
            failures: Counter::noop(),
            lockouts: Counter::noop(),
            throttled: Counter::noop(),
            delayed: Counter::noop(),
        }
    }
}

/// The configured check, its limiters and (mode `trusted-proxy`) the proxy rules.
pub struct Auth {
    mode: AuthMode,
    /// The token or password; `None` in modes `none` and `trusted-proxy` (or when
    /// none is configured, which `validate_gateway` refuses at startup: then
    /// nothing matches).
    secret: Option<Box<[u8]>>,
    limiter: Limiter,
    ceiling: Ceiling,
    proxy: Option<TrustedProxy>,
    /// `gateway.trustedProxies`: peers whose forwarded client address is believed.
    proxies: Vec<Cidr>,
    metrics: AuthMetrics,
}

// Hand-written so the secret can never be printed.
impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth").field("mode", &self.mode).finish_non_exhaustive()
    }
}

impl Auth {
    /// Builds the check from `gateway.auth` (with the env fallbacks for the
    /// secrets) and `gateway.trustedProxies`.
    pub fn from_config(config: &LoadedConfig) -> Auth {
        let gw = &config.config.gateway;
        let auth = &gw.auth;
        let secret = match auth.mode {
            AuthMode::Token => config.auth_token(),
            AuthMode::Password => config.auth_password(),
            AuthMode::None | AuthMode::TrustedProxy => None,
        };
        let mut a = Auth::new(auth.mode, secret, &auth.rate_limit);
        // `validate_gateway` refused unparsable entries at start.
        a.proxies = gw.trusted_proxies.iter().filter_map(|p| Cidr::parse(p)).collect();
        if auth.mode == AuthMode::TrustedProxy {
            a.proxy = TrustedProxy::new(a.proxies.clone(), &auth.trusted_proxy);
        }
        a
    }

    /// Builds the check from its parts (no trusted proxies).
    pub fn new(mode: AuthMode, secret: Option<String>, rate_limit: &RateLimitConfig) -> Auth {
        Auth {
            mode,
            secret: secret.map(|s| s.into_bytes().into_boxed_slice()),
            limiter: Limiter::new(rate_limit),
            ceiling: Ceiling::new(rate_limit.max_failures_per_second),
            proxy: None,
            proxies: Vec::new(),
            metrics: AuthMetrics::default(),
        }
    }

    /// Who is asking: the TCP `peer`, and the client behind it when the peer is
    /// a trusted proxy. The client is the right-most forwarded address that is
    /// not itself a trusted proxy (the addresses to its left are the client's
    /// own claims, which anyone can forge).
    pub fn caller(&self, peer: IpAddr, headers: &HeaderMap, browser: bool) -> Caller {
        let trusted = |ip: IpAddr| self.proxies.iter().any(|c| c.contains(ip));
        if self.proxies.is_empty() || !trusted(peer) {
            return Caller::direct(peer, browser);
        }
        let client = forwarded_for(headers).into_iter().rev().find(|ip| !trusted(*ip)).unwrap_or(peer);
        Caller { peer, ip: client, browser }
    }

    /// Records into these counters.
    pub fn with_metrics(mut self, metrics: AuthMetrics) -> Auth {
        self.metrics = metrics;
        self
    }

    /// The configured mode (the WebSocket `connect` reads the secret from the
    /// `auth` field that matches it).
    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    /// Checks an HTTP request (or a WebSocket upgrade in mode `trusted-proxy`):
    /// its `Authorization` header, or the proxy's identity header.
    pub fn check_request(&self, caller: Caller, headers: &HeaderMap) -> Result<(), Refusal> {
        match self.mode {
            AuthMode::None => Ok(()),
            AuthMode::TrustedProxy => {
                self.proxy_identity(caller.peer, headers).map(drop).map_err(Refusal::now)
            }
            AuthMode::Token | AuthMode::Password => {
                self.check_secret(caller, headers.get(http::header::AUTHORIZATION).and_then(bearer_secret))
            }
        }
    }

    /// The user a trusted proxy vouches for: the peer must be one of
    /// `gateway.trustedProxies`, send every required header and name a user
    /// (one of `allowUsers`, when set). `401` otherwise; never counted as a
    /// guess (the proxy is not guessing, and must not be locked out).
    pub fn proxy_identity(&self, peer: IpAddr, headers: &HeaderMap) -> Result<String, Denied> {
        let Some(p) = &self.proxy else { return Err(Denied::Unauthorized) };
        p.identity(peer, headers).ok_or(Denied::Unauthorized)
    }

    /// Checks a presented secret (`None`: nothing presented) from `caller`:
    /// the global ceiling and the lockout first (a locked-out IP is refused even
    /// with the right secret), then the constant-time comparison. A wrong secret
    /// counts as a failed attempt, a missing one does not; a success clears the
    /// IP's count.
    pub fn check_secret(&self, caller: Caller, presented: Option<&str>) -> Result<(), Refusal> {
        match self.mode {
            AuthMode::None => return Ok(()),
            // Mode `trusted-proxy` takes no secret: the WebSocket connect is checked
            // on its upgrade's headers.
            AuthMode::TrustedProxy => return Err(Refusal::now(Denied::Unauthorized)),
            AuthMode::Token | AuthMode::Password => {}
        }
        let Some(presented) = presented else {
            // Nothing to compare: no guess, nothing to count (but a lockout holds).
            return match self.limiter.locked_for(limit_key(caller.ip), Instant::now()) {
                Some(left) => Err(Refusal::now(Denied::LockedOut(ceil_secs(left)))),
                None => Err(Refusal::now(Denied::Unauthorized)),
            };
        };
        if self.ceiling.exhausted() {
            self.metrics.throttled.increment(1);
            return Err(Refusal::now(Denied::LockedOut(1)));
        }
        let tracked = self.limiter.max_attempts > 0;
        self.check_at(caller, presented, tracked.then(Instant::now))
    }

    /// [`Auth::check_secret`] at a given time; `now` is `None` when the limiter is
    /// off (so the hot path of a right secret never reads the clock).
    fn check_at(&self, caller: Caller, presented: &str, now: Option<Instant>) -> Result<(), Refusal> {
        let ip = limit_key(caller.ip);
        let exempt = self.limiter.exempt(caller);
        if let (Some(now), false) = (now, exempt) {
            if let Some(left) = self.limiter.locked_for(ip, now) {
                return Err(Refusal::now(Denied::LockedOut(ceil_secs(left))));
            }
        }
        let ok = match &self.secret {
            Some(secret) => constant_time_eq(secret.as_ref(), presented.as_bytes()),
            None => false,
        };
        if ok {
            if now.is_some() {
                self.limiter.reset(ip);
            }
            return Ok(());
        }
        self.metrics.failures.increment(1);
        self.ceiling.record();
        let Some(now) = now else { return Err(Refusal::now(Denied::Unauthorized)) };
        let failures = self.limiter.record_failure(ip, now, !exempt);
        if exempt {
            self.metrics.delayed.increment(1);
            return Err(Refusal { denied: Denied::Unauthorized, delay: exempt_delay(failures) });
        }
        if failures == 0 {
            // This failure locked the IP out.
            self.metrics.lockouts.increment(1);
        }
        Err(Refusal::now(Denied::Unauthorized))
    }
}

/// The addresses a proxy chain forwarded, left (the original client) to right:
/// every `X-Forwarded-For` list, else `Forwarded: for=…` (RFC 7239).
/// Unparsable entries (`unknown`, obfuscated names) are left out.
fn forwarded_for(headers: &HeaderMap) -> Vec<IpAddr> {
    let xff: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|a| parse_forwarded_addr(a.trim()))
        .collect();
    if !xff.is_empty() {
        return xff;
    }
    headers
        .get_all(http::header::FORWARDED)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|elem| {
            elem.split(';').find_map(|pair| {
                let (k, v) = pair.trim().split_once('=')?;
                k.trim()
                    .eq_ignore_ascii_case("for")
                    .then(|| parse_forwarded_addr(v.trim().trim_matches('"')))?
            })
        })
        .collect()
}

/// `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1`, `[2001:db8::1]:5678`.
fn parse_forwarded_addr(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse() {
        return Some(ip);
    }
    if let Ok(sa) = s.parse::<std::net::SocketAddr>() {
        return Some(sa.ip());
    }
    s.strip_prefix('[')?.split(']').next()?.parse().ok()
}

/// How long the n-th wrong secret (n ≥ 1) of an exempt client waits:
/// 250 ms × 2^(n−1), at most 5 s.
fn exempt_delay(n: u32) -> Duration {
    let doublings = n.saturating_sub(1).min(16);
    EXEMPT_DELAY_BASE.saturating_mul(1 << doublings).min(EXEMPT_DELAY_MAX)
}

/// The secret of `Bearer <secret>` (scheme case-insensitive); `None` for another
/// scheme, an empty secret or a value that is not visible ASCII.
pub fn bearer_secret(value: &HeaderValue) -> Option<&str> {
    let v = value.to_str().ok()?.trim();
    let (scheme, rest) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let secret = rest.trim();
    (!secret.is_empty()).then_some(secret)
}

fn ceil_secs(d: Duration) -> u64 {
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    s.max(1)
}

/// Mode `trusted-proxy`: whose headers are believed, and what they must say.
struct TrustedProxy {
    proxies: Vec<Cidr>,
    user_header: HeaderName,
    required: Vec<HeaderName>,
    allow_users: Vec<String>,
}

impl TrustedProxy {
    fn new(proxies: Vec<Cidr>, cfg: &TrustedProxyConfig) -> Option<TrustedProxy> {
        Some(TrustedProxy {
            proxies,
            user_header: HeaderName::from_bytes(cfg.user_header.as_bytes()).ok()?,
            required: cfg
                .required_headers
                .iter()
                .filter_map(|h| HeaderName::from_bytes(h.as_bytes()).ok())
                .collect(),
            allow_users: cfg.allow_users.clone(),
        })
    }

    fn identity(&self, peer: IpAddr, headers: &HeaderMap) -> Option<String> {
        if !self.proxies.iter().any(|c| c.contains(peer)) {
            return None;
        }
        if !self.required.iter().all(|h| headers.contains_key(h)) {
            return None;
        }
        let user = headers.get(&self.user_header)?.to_str().ok()?.trim();
        if user.is_empty() || (!self.allow_users.is_empty() && !self.allow_users.iter().any(|u| u == user)) {
            return None;
        }
        Some(user.to_owned())
    }
}

/// The ceiling on wrong secrets per second from everyone together: one atomic
/// word holding (second, count), so checking it costs a load and no clock read
/// while the count is low.
struct Ceiling {
    max: u32,
    /// `second << 32 | count`, seconds since `epoch`.
    state: AtomicU64,
    epoch: Instant,
}

impl Ceiling {
    fn new(max: u32) -> Ceiling {
        Ceiling { max, state: AtomicU64::new(0), epoch: Instant::now() }
    }

    fn second(&self) -> u64 {
        self.epoch.elapsed().as_secs() & u64::from(u32::MAX)
    }

    /// Whether this second's failures already reached the ceiling.
    fn exhausted(&self) -> bool {
        if self.max == 0 {
            return false;
        }
        let s = self.state.load(Ordering::Relaxed);
        (s & u64::from(u32::MAX)) >= u64::from(self.max) && (s >> 32) == self.second()
    }

    fn record(&self) {
        if self.max == 0 {
            return;
        }
        let now = self.second();
        let _ = self.state.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| {
            let count = if (s >> 32) == now { (s & u64::from(u32::MAX)).saturating_add(1) } else { 1 };
            Some((now << 32) | count.min(u64::from(u32::MAX)))
        });
    }
}

/// Per-IP failed-attempt counts and lockouts.
struct Limiter {
    max_attempts: u32,
    window: Duration,
    lockout: Duration,
    exempt_loopback: bool,
    entries: Mutex<HashMap<IpAddr, Entry>>,
    /// `entries.len()`, readable without the lock: while nothing is tracked (the
    /// normal case) a successful check never takes the mutex.
    tracked: AtomicUsize,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Failures in the current window.
    failures: u32,
    window_start: Instant,
    locked_until: Option<Instant>,
}

impl Entry {
    /// When this entry stops mattering.
    fn expires(&self, window: Duration) -> Instant {
        let window_end = add(self.window_start, window);
        self.locked_until.map_or(window_end, |l| l.max(window_end))
    }
}

/// `t + d`, saturating far in the future instead of panicking on huge configs.
fn add(t: Instant, d: Duration) -> Instant {
    t.checked_add(d).or_else(|| t.checked_add(Duration::from_secs(100 * 365 * 86_400))).unwrap_or(t)
}

impl Limiter {
    fn new(cfg: &RateLimitConfig) -> Limiter {
        Limiter {
            max_attempts: cfg.max_attempts,
            window: Duration::from_millis(cfg.window_ms),
            lockout: Duration::from_millis(cfg.lockout_ms),
            exempt_loopback: cfg.exempt_loopback,
            entries: Mutex::new(HashMap::new()),
            tracked: AtomicUsize::new(0),
        }
    }

    /// Whether `caller` is exempt from the lockout (its failures are delayed instead).
    fn exempt(&self, caller: Caller) -> bool {
        self.exempt_loopback && !caller.browser && caller.ip.to_canonical().is_loopback()
    }

    /// Time left on `ip`'s lockout, if it is locked out.
    fn locked_for(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        if self.tracked.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let map = self.entries.lock();
        let until = map.get(&ip)?.locked_until?;
        (until > now).then(|| until - now)
    }

    fn reset(&self, ip: IpAddr) {
        if self.tracked.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut map = self.entries.lock();
        map.remove(&ip);
        self.tracked.store(map.len(), Ordering::Relaxed);
    }

    /// Counts a failure; with `lock`, locks the IP out at `max_attempts`.
    /// Returns the failures now in the window (0 when this one locked it out).
    fn record_failure(&self, ip: IpAddr, now: Instant, lock: bool) -> u32 {
        let mut map = self.entries.lock();
        if !map.contains_key(&ip) && map.len() >= MAX_TRACKED_IPS {
            self.make_room(&mut map, now);
        }
        let e = map.entry(ip).or_insert(Entry { failures: 0, window_start: now, locked_until: None });
        if e.locked_until.is_some_and(|l| l <= now) {
            e.locked_until = None;
        }
        if add(e.window_start, self.window) <= now {
            // A new counting window starts at this failure.
            e.failures = 0;
            e.window_start = now;
        }
        e.failures = e.failures.saturating_add(1);
        let failures = e.failures;
        let locked = lock && e.failures >= self.max_attempts;
        if locked {
            e.locked_until = Some(add(now, self.lockout));
            e.failures = 0;
            e.window_start = now;
        }
        self.tracked.store(map.len(), Ordering::Relaxed);
        if locked {
            0
        } else {
            failures
        }
    }

    /// Drops expired entries; if the map is still full, the one closest to expiry.
    fn make_room(&self, map: &mut HashMap<IpAddr, Entry>, now: Instant) {
        let window = self.window;
        map.retain(|_, e| e.expires(window) > now);
        if map.len() >= MAX_TRACKED_IPS {
            if let Some(ip) = map.iter().min_by_key(|(_, e)| e.expires(window)).map(|(ip, _)| *ip) {
                map.remove(&ip);
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.lock().len()
    }
}

/// Compares in time that depends only on the secret's length, not on where the
/// presented value differs nor on its length (subtle's slice `ct_eq` returns
/// early on a length mismatch, which would leak the secret's length).
fn constant_time_eq(secret: &[u8], presented: &[u8]) -> bool {
    let mut eq = (secret.len() as u64).ct_eq(&(presented.len() as u64));
    for (i, s) in secret.iter().enumerate() {
        eq &= s.ct_eq(presented.get(i).unwrap_or(&0));
    }
    bool::from(eq)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const REMOTE: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7));
    const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    fn remote() -> Caller {
        Caller::direct(REMOTE, false)
    }

    fn local(browser: bool) -> Caller {
        Caller::direct(LOOPBACK, browser)
    }

    fn err(d: Denied) -> Result<(), Refusal> {
        Err(Refusal::now(d))
    }

    fn rate_limit(max: u32, window_ms: u64, lockout_ms: u64, exempt: bool) -> RateLimitConfig {
        RateLimitConfig {
            max_attempts: max,
            window_ms,
            lockout_ms,
            exempt_loopback: exempt,
            max_failures_per_second: 0,
        }
    }

    fn auth(max: u32, window_ms: u64, lockout_ms: u64, exempt: bool) -> Auth {
        Auth::new(AuthMode::Token, Some("s3cret".into()), &rate_limit(max, window_ms, lockout_ms, exempt))
    }

    fn hv(s: &str) -> HeaderValue {
        HeaderValue::from_str(s).unwrap()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, hv(v));
        }
        h
    }

    #[test]
    fn constant_time_eq_compares_whole_values() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"secret", b"secre"));
        assert!(!constant_time_eq(b"secret", b""));
        assert!(!constant_time_eq(b"ab", b"ab\0"));
    }

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer_secret(&hv("Bearer abc")), Some("abc"));
        assert_eq!(bearer_secret(&hv("bearer abc")), Some("abc"));
        assert_eq!(bearer_secret(&hv("BEARER   abc  ")), Some("abc"));
        assert_eq!(bearer_secret(&hv("Basic abc")), None);
        assert_eq!(bearer_secret(&hv("Bearer")), None);
        assert_eq!(bearer_secret(&hv("Bearer ")), None);
        assert_eq!(bearer_secret(&hv("abc")), None);
    }

    #[test]
    fn token_mode() {
        let a = auth(10, 60_000, 300_000, true);
        let with = |v: &str| headers(&[("authorization", v)]);
        assert!(a.check_request(remote(), &with("Bearer s3cret")).is_ok());
        assert!(a.check_request(remote(), &with("bEaReR s3cret")).is_ok());
        assert_eq!(a.check_request(remote(), &with("Bearer nope")), err(Denied::Unauthorized));
        assert_eq!(a.check_request(remote(), &with("Bearer s3cre")), err(Denied::Unauthorized));
        assert_eq!(a.check_request(remote(), &HeaderMap::new()), err(Denied::Unauthorized));
    }

    #[test]
    fn none_mode_needs_nothing() {
        let a = Auth::new(AuthMode::None, None, &RateLimitConfig::default());
        assert!(a.check_request(remote(), &HeaderMap::new()).is_ok());
        assert!(a.check_secret(remote(), Some("anything")).is_ok());
    }

    #[test]
    fn password_mode_without_secret_refuses_all() {
        let a = Auth::new(AuthMode::Password, None, &RateLimitConfig::default());
        assert_eq!(a.check_secret(remote(), Some("")), err(Denied::Unauthorized));
    }

    #[test]
    fn lockout_after_max_attempts_even_with_correct_secret() {
        let a = auth(3, 60_000, 10_500, false);
        let t0 = Instant::now();
        for i in 0..3 {
            let now = t0 + Duration::from_millis(i);
            assert_eq!(a.check_at(remote(), "bad", Some(now)), err(Denied::Unauthorized));
        }
        let now = t0 + Duration::from_millis(10);
        // Locked: refused with the right secret too, Retry-After rounded up.
        assert_eq!(a.check_at(remote(), "s3cret", Some(now)), err(Denied::LockedOut(11)));
        // Another IP is unaffected.
        let other = Caller::direct(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)), false);
        assert!(a.check_at(other, "s3cret", Some(now)).is_ok());
        // After the lockout the right secret works again.
        let later = t0 + Duration::from_millis(2 + 10_500);
        assert!(a.check_at(remote(), "s3cret", Some(later)).is_ok());
        assert_eq!(a.limiter.len(), 0);
    }

    #[test]
    fn missing_header_does_not_count() {
        let a = auth(2, 60_000, 60_000, false);
        for _ in 0..5 {
            assert_eq!(a.check_secret(remote(), None), err(Denied::Unauthorized));
        }
        assert!(a.check_secret(remote(), Some("s3cret")).is_ok());
    }

    #[test]
    fn failures_outside_the_window_do_not_add_up() {
        let a = auth(3, 1_000, 60_000, false);
        let t0 = Instant::now();
        a.check_at(remote(), "bad", Some(t0)).unwrap_err();
        a.check_at(remote(), "bad", Some(t0 + Duration::from_millis(500))).unwrap_err();
        // The window has passed: counting restarts.
        let t1 = t0 + Duration::from_millis(1_200);
        a.check_at(remote(), "bad", Some(t1)).unwrap_err();
        a.check_at(remote(), "bad", Some(t1)).unwrap_err();
        assert!(a.check_at(remote(), "s3cret", Some(t1)).is_ok());
    }

    #[test]
    fn success_resets_the_count() {
        let a = auth(3, 60_000, 60_000, false);
        let now = Instant::now();
        a.check_at(remote(), "bad", Some(now)).unwrap_err();
        a.check_at(remote(), "bad", Some(now)).unwrap_err();
        a.check_at(remote(), "s3cret", Some(now)).unwrap();
        a.check_at(remote(), "bad", Some(now)).unwrap_err();
        a.check_at(remote(), "bad", Some(now)).unwrap_err();
        assert!(a.check_at(remote(), "s3cret", Some(now)).is_ok());
    }

    #[test]
    fn loopback_is_not_locked_out_but_each_wrong_secret_waits_longer() {
        let a = auth(1, 60_000, 60_000, true);
        let delays: Vec<Duration> = (0..7)
            .map(|_| {
                let r = a.check_secret(local(false), Some("bad")).unwrap_err();
                assert_eq!(r.denied, Denied::Unauthorized);
                r.delay
            })
            .collect();
        let ms = |n| Duration::from_millis(n);
        assert_eq!(delays, [ms(250), ms(500), ms(1000), ms(2000), ms(4000), ms(5000), ms(5000)]);
        assert!(a.check_secret(local(false), Some("s3cret")).is_ok(), "never locked out");
        // A success starts the doubling over.
        assert_eq!(a.check_secret(local(false), Some("bad")).unwrap_err().delay, ms(250));
        // IPv4-mapped loopback is loopback too.
        let mapped = Caller::direct("::ffff:127.0.0.1".parse().unwrap(), false);
        assert!(a.limiter.exempt(mapped));
        // Without the exemption loopback is counted like anyone else.
        let a = auth(1, 60_000, 60_000, false);
        assert_eq!(a.check_secret(local(false), Some("bad")), err(Denied::Unauthorized));
        assert!(matches!(
            a.check_secret(local(false), Some("s3cret")),
            Err(Refusal { denied: Denied::LockedOut(_), .. })
        ));
    }

    #[test]
    fn a_browser_origin_voids_the_loopback_exemption() {
        let a = auth(2, 60_000, 60_000, true);
        assert_eq!(a.check_secret(local(true), Some("bad")), err(Denied::Unauthorized));
        assert_eq!(a.check_secret(local(true), Some("bad")), err(Denied::Unauthorized));
        // Locked out: a web page cannot keep guessing, not even with the right secret.
        assert!(matches!(
            a.check_secret(local(true), Some("s3cret")),
            Err(Refusal { denied: Denied::LockedOut(_), delay }) if delay.is_zero()
        ));
    }

    #[test]
    fn the_global_ceiling_refuses_every_attempt_for_the_rest_of_the_second() {
        let mut rl = rate_limit(1000, 60_000, 60_000, false);
        rl.max_failures_per_second = 3;
        let a = Auth::new(AuthMode::Token, Some("s3cret".into()), &rl);
        for i in 0..3u8 {
            let c = Caller::direct(IpAddr::V4(Ipv4Addr::new(198, 51, 100, i)), false);
            assert_eq!(a.check_secret(c, Some("bad")), err(Denied::Unauthorized));
        }
        // A fourth address, with the right secret even: refused without a comparison.
        let c = Caller::direct(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 9)), false);
        let second = a.ceiling.second();
        let r = a.check_secret(c, Some("s3cret"));
        if a.ceiling.second() == second {
            assert_eq!(r, err(Denied::LockedOut(1)));
        }
        // No secret at all is not an attempt.
        assert_eq!(a.check_secret(c, None), err(Denied::Unauthorized));
    }

    #[test]
    fn trusted_proxy_identity() {
        let cfg = TrustedProxyConfig {
            user_header: "x-forwarded-user".into(),
            required_headers: vec!["x-forwarded-proto".into()],
            allow_users: vec![],
            allow_loopback: false,
        };
        let mut a = Auth::new(AuthMode::TrustedProxy, None, &RateLimitConfig::default());
        a.proxy = TrustedProxy::new(vec![Cidr::parse("10.0.0.0/8").unwrap()], &cfg);
        let proxy = Caller::direct("10.1.2.3".parse().unwrap(), false);
        let good = headers(&[("x-forwarded-user", "nick@example.com"), ("x-forwarded-proto", "https")]);
        assert!(a.check_request(proxy, &good).is_ok());
        assert_eq!(a.proxy_identity(proxy.peer, &good).as_deref(), Ok("nick@example.com"));
        // Not from a trusted proxy: the header is anyone's to forge.
        assert_eq!(a.check_request(remote(), &good), err(Denied::Unauthorized));
        // A required header missing, or no user.
        let partial = headers(&[("x-forwarded-user", "nick@example.com")]);
        assert_eq!(a.check_request(proxy, &partial), err(Denied::Unauthorized));
        let nobody = headers(&[("x-forwarded-user", " "), ("x-forwarded-proto", "https")]);
        assert_eq!(a.check_request(proxy, &nobody), err(Denied::Unauthorized));
        // A bearer secret means nothing in this mode.
        assert_eq!(a.check_secret(proxy, Some("anything")), err(Denied::Unauthorized));
        // allowUsers restricts who.
        let cfg = TrustedProxyConfig { allow_users: vec!["admin@example.com".into()], ..cfg };
        a.proxy = TrustedProxy::new(vec![Cidr::parse("10.0.0.0/8").unwrap()], &cfg);
        assert_eq!(a.check_request(proxy, &good), err(Denied::Unauthorized));
    }

    #[test]
    fn clients_behind_trusted_proxies_and_ipv6_prefixes() {
        let mut a = auth(2, 60_000, 60_000, false);
        a.proxies = vec![Cidr::parse("10.0.0.0/8").unwrap()];
        let proxy: IpAddr = "10.0.0.5".parse().unwrap();
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 198.51.100.7, 10.0.0.9")]);
        // The right-most address that is not a trusted proxy is the client.
        let c = a.caller(proxy, &h, false);
        assert_eq!((c.peer, c.ip), (proxy, "198.51.100.7".parse().unwrap()));
        // From an untrusted peer the header is ignored (anyone can send it).
        assert_eq!(a.caller(REMOTE, &h, false).ip, REMOTE);
        let fwd = headers(&[("forwarded", r#"for="[2001:db8::1]:443";proto=https, for=10.0.0.8"#)]);
        assert_eq!(a.caller(proxy, &fwd, false).ip, "2001:db8::1".parse::<IpAddr>().unwrap());
        assert_eq!(a.caller(proxy, &HeaderMap::new(), false).ip, proxy, "no header: the proxy itself");

        // Two clients behind the proxy are counted apart; the proxy is never locked out.
        let c1 = a.caller(proxy, &headers(&[("x-forwarded-for", "198.51.100.1")]), false);
        let c2 = a.caller(proxy, &headers(&[("x-forwarded-for", "198.51.100.2")]), false);
        a.check_secret(c1, Some("bad")).unwrap_err();
        a.check_secret(c1, Some("bad")).unwrap_err();
        assert!(matches!(
            a.check_secret(c1, Some("s3cret")),
            Err(Refusal { denied: Denied::LockedOut(_), .. })
        ));
        assert!(a.check_secret(c2, Some("s3cret")).is_ok());

        // IPv6: every address of a /64 is one client.
        let v6 = |s: &str| Caller::direct(s.parse().unwrap(), false);
        a.check_secret(v6("2001:db8:1:2::1"), Some("bad")).unwrap_err();
        a.check_secret(v6("2001:db8:1:2:ffff::9"), Some("bad")).unwrap_err();
        assert!(matches!(
            a.check_secret(v6("2001:db8:1:2::77"), Some("s3cret")),
            Err(Refusal { denied: Denied::LockedOut(_), .. })
        ));
        assert!(a.check_secret(v6("2001:db8:1:3::1"), Some("s3cret")).is_ok(), "another /64");
    }

    #[test]
    fn memory_is_bounded() {
        let a = auth(100, 60_000, 60_000, false);
        let now = Instant::now();
        for i in 0..(MAX_TRACKED_IPS as u32 + 50) {
            a.limiter.record_failure(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)), now, true);
        }
        assert_eq!(a.limiter.len(), MAX_TRACKED_IPS);
        // Expired entries are pruned first.
        let later = now + Duration::from_secs(120);
        a.limiter.record_failure(REMOTE, later, true);
        assert_eq!(a.limiter.len(), 1);
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(ceil_secs(Duration::from_millis(1)), 1);
        assert_eq!(ceil_secs(Duration::from_millis(1000)), 1);
        assert_eq!(ceil_secs(Duration::from_millis(1001)), 2);
        assert_eq!(ceil_secs(Duration::ZERO), 1);
    }
}
