//! Authentication (SPEC §3): `Authorization: Bearer <secret>` against the
//! configured token or password, compared in constant time, plus a per-IP
//! failed-attempt limiter.
//!
//! [`Auth::check_secret`] is the single check; the HTTP routes call it through
//! [`Auth::check_header`], and the WebSocket `connect` calls it with the secret
//! from its `auth` params, so both share one limiter.

use crate::error::ApiError;
use http::HeaderValue;
use parking_lot::Mutex;
use services::config::{AuthMode, LoadedConfig, RateLimitConfig};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

/// Most client IPs the limiter tracks at once; beyond it the entry closest to
/// expiry is dropped, so memory stays bounded under a spray of addresses.
const MAX_TRACKED_IPS: usize = 10_000;

/// The configured secret check and its failed-attempt limiter.
pub struct Auth {
    mode: AuthMode,
    /// The token or password; `None` in mode `none` (or when none is configured,
    /// which `validate_gateway` refuses at startup: then nothing matches).
    secret: Option<Box<[u8]>>,
    limiter: Limiter,
}

// Hand-written so the secret can never be printed.
impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth").field("mode", &self.mode).finish_non_exhaustive()
    }
}

impl Auth {
    /// Builds the check from `gateway.auth` (with the env fallbacks for the secrets).
    pub fn from_config(config: &LoadedConfig) -> Auth {
        let auth = &config.config.gateway.auth;
        let secret = match auth.mode {
            AuthMode::Token => config.auth_token(),
            AuthMode::Password => config.auth_password(),
            AuthMode::None => None,
        };
        Auth::new(auth.mode, secret, &auth.rate_limit)
    }

    /// Builds the check from its parts.
    pub fn new(mode: AuthMode, secret: Option<String>, rate_limit: &RateLimitConfig) -> Auth {
        Auth {
            mode,
            secret: secret.map(|s| s.into_bytes().into_boxed_slice()),
            limiter: Limiter::new(rate_limit),
        }
    }

    /// The configured mode (the WebSocket `connect` reads the secret from the
    /// `auth` field that matches it).
    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    /// Checks an `Authorization` header value from `ip`.
    pub fn check_header(&self, ip: IpAddr, header: Option<&HeaderValue>) -> Result<(), ApiError> {
        if self.mode == AuthMode::None {
            return Ok(());
        }
        self.check_secret(ip, header.and_then(bearer_secret))
    }

    /// Checks a presented secret (`None`: nothing presented) from `ip`: lockout
    /// first (a locked-out IP is refused even with the right secret), then the
    /// constant-time comparison. A wrong secret counts as a failed attempt, a
    /// missing one does not; a success clears the IP's count.
    pub fn check_secret(&self, ip: IpAddr, presented: Option<&str>) -> Result<(), ApiError> {
        if self.mode == AuthMode::None {
            return Ok(());
        }
        let limited = self.limiter.applies_to(ip);
        let now = if limited { Some(Instant::now()) } else { None };
        self.check_at(ip, presented, now)
    }

    /// [`Auth::check_secret`] at a given time; `now` is `None` when the limiter is
    /// off for this IP (so the hot path never reads the clock).
    fn check_at(&self, ip: IpAddr, presented: Option<&str>, now: Option<Instant>) -> Result<(), ApiError> {
        let ip = ip.to_canonical();
        if let Some(now) = now {
            if let Some(left) = self.limiter.locked_for(ip, now) {
                return Err(ApiError::AuthLockedOut { retry_after_secs: ceil_secs(left) });
            }
        }
        let Some(presented) = presented else { return Err(ApiError::Unauthorized) };
        let ok = match &self.secret {
            Some(secret) => constant_time_eq(secret.as_ref(), presented.as_bytes()),
            None => false,
        };
        match (ok, now) {
            (true, Some(_)) => {
                self.limiter.reset(ip);
                Ok(())
            }
            (true, None) => Ok(()),
            (false, Some(now)) => {
                self.limiter.record_failure(ip, now);
                Err(ApiError::Unauthorized)
            }
            (false, None) => Err(ApiError::Unauthorized),
        }
    }
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

    /// Whether failures from `ip` are counted. `maxAttempts: 0` turns the limiter off.
    fn applies_to(&self, ip: IpAddr) -> bool {
        self.max_attempts > 0 && !(self.exempt_loopback && ip.to_canonical().is_loopback())
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

    fn record_failure(&self, ip: IpAddr, now: Instant) {
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
        if e.failures >= self.max_attempts {
            e.locked_until = Some(add(now, self.lockout));
            e.failures = 0;
            e.window_start = now;
        }
        self.tracked.store(map.len(), Ordering::Relaxed);
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

    #[test]
    fn constant_time_eq_compares_whole_values() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"secret", b"secre"));
        assert!(!constant_time_eq(b"secret", b""));
        assert!(!constant_time_eq(b"ab", b"ab\0"));
    }
    use std::net::Ipv4Addr;

    const REMOTE: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7));
    const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    fn auth(max: u32, window_ms: u64, lockout_ms: u64, exempt: bool) -> Auth {
        let rl = RateLimitConfig { max_attempts: max, window_ms, lockout_ms, exempt_loopback: exempt };
        Auth::new(AuthMode::Token, Some("s3cret".into()), &rl)
    }

    fn hv(s: &str) -> HeaderValue {
        HeaderValue::from_str(s).unwrap()
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
        assert!(a.check_header(REMOTE, Some(&hv("Bearer s3cret"))).is_ok());
        assert!(a.check_header(REMOTE, Some(&hv("bEaReR s3cret"))).is_ok());
        assert_eq!(a.check_header(REMOTE, Some(&hv("Bearer nope"))), Err(ApiError::Unauthorized));
        assert_eq!(a.check_header(REMOTE, Some(&hv("Bearer s3cre"))), Err(ApiError::Unauthorized));
        assert_eq!(a.check_header(REMOTE, None), Err(ApiError::Unauthorized));
    }

    #[test]
    fn none_mode_needs_nothing() {
        let a = Auth::new(AuthMode::None, None, &RateLimitConfig::default());
        assert!(a.check_header(REMOTE, None).is_ok());
        assert!(a.check_secret(REMOTE, Some("anything")).is_ok());
    }

    #[test]
    fn password_mode_without_secret_refuses_all() {
        let a = Auth::new(AuthMode::Password, None, &RateLimitConfig::default());
        assert_eq!(a.check_secret(REMOTE, Some("")), Err(ApiError::Unauthorized));
    }

    #[test]
    fn lockout_after_max_attempts_even_with_correct_secret() {
        let a = auth(3, 60_000, 10_500, false);
        let t0 = Instant::now();
        for i in 0..3 {
            let now = t0 + Duration::from_millis(i);
            assert_eq!(a.check_at(REMOTE, Some("bad"), Some(now)), Err(ApiError::Unauthorized));
        }
        let now = t0 + Duration::from_millis(10);
        // Locked: refused with the right secret too, Retry-After rounded up.
        assert_eq!(
            a.check_at(REMOTE, Some("s3cret"), Some(now)),
            Err(ApiError::AuthLockedOut { retry_after_secs: 11 })
        );
        assert_eq!(
            a.check_at(REMOTE, None, Some(now)),
            Err(ApiError::AuthLockedOut { retry_after_secs: 11 })
        );
        // Another IP is unaffected.
        let other = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1));
        assert!(a.check_at(other, Some("s3cret"), Some(now)).is_ok());
        // After the lockout the right secret works again.
        let later = t0 + Duration::from_millis(2 + 10_500);
        assert!(a.check_at(REMOTE, Some("s3cret"), Some(later)).is_ok());
        assert_eq!(a.limiter.len(), 0);
    }

    #[test]
    fn missing_header_does_not_count() {
        let a = auth(2, 60_000, 60_000, false);
        let now = Instant::now();
        for _ in 0..5 {
            assert_eq!(a.check_at(REMOTE, None, Some(now)), Err(ApiError::Unauthorized));
        }
        assert!(a.check_at(REMOTE, Some("s3cret"), Some(now)).is_ok());
    }

    #[test]
    fn failures_outside_the_window_do_not_add_up() {
        let a = auth(3, 1_000, 60_000, false);
        let t0 = Instant::now();
        a.check_at(REMOTE, Some("bad"), Some(t0)).unwrap_err();
        a.check_at(REMOTE, Some("bad"), Some(t0 + Duration::from_millis(500))).unwrap_err();
        // The window has passed: counting restarts.
        let t1 = t0 + Duration::from_millis(1_200);
        a.check_at(REMOTE, Some("bad"), Some(t1)).unwrap_err();
        a.check_at(REMOTE, Some("bad"), Some(t1)).unwrap_err();
        assert!(a.check_at(REMOTE, Some("s3cret"), Some(t1)).is_ok());
    }

    #[test]
    fn success_resets_the_count() {
        let a = auth(3, 60_000, 60_000, false);
        let now = Instant::now();
        a.check_at(REMOTE, Some("bad"), Some(now)).unwrap_err();
        a.check_at(REMOTE, Some("bad"), Some(now)).unwrap_err();
        a.check_at(REMOTE, Some("s3cret"), Some(now)).unwrap();
        a.check_at(REMOTE, Some("bad"), Some(now)).unwrap_err();
        a.check_at(REMOTE, Some("bad"), Some(now)).unwrap_err();
        assert!(a.check_at(REMOTE, Some("s3cret"), Some(now)).is_ok());
    }

    #[test]
    fn loopback_exemption() {
        let a = auth(1, 60_000, 60_000, true);
        for _ in 0..5 {
            assert_eq!(a.check_secret(LOOPBACK, Some("bad")), Err(ApiError::Unauthorized));
        }
        assert!(a.check_secret(LOOPBACK, Some("s3cret")).is_ok());
        // IPv4-mapped loopback is loopback too.
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert!(!a.limiter.applies_to(mapped));
        // Without the exemption loopback is counted like anyone else.
        let a = auth(1, 60_000, 60_000, false);
        assert_eq!(a.check_secret(LOOPBACK, Some("bad")), Err(ApiError::Unauthorized));
        assert!(matches!(a.check_secret(LOOPBACK, Some("s3cret")), Err(ApiError::AuthLockedOut { .. })));
    }

    #[test]
    fn memory_is_bounded() {
        let a = auth(100, 60_000, 60_000, false);
        let now = Instant::now();
        for i in 0..(MAX_TRACKED_IPS as u32 + 50) {
            a.limiter.record_failure(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)), now);
        }
        assert_eq!(a.limiter.len(), MAX_TRACKED_IPS);
        // Expired entries are pruned first.
        let later = now + Duration::from_secs(120);
        a.limiter.record_failure(REMOTE, later);
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
