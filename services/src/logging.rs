//! Logging for both binaries: `RUST_LOG` (default `info`) to stderr, with one
//! rule no filter can lift: the libraries that log the bytes they carry
//! (WebSocket frames, HTTP/2 frames, HTTP requests) are held to `info`, since
//! at their `debug` and `trace` levels they write frames and headers out whole,
//! `connect` frames with `auth.token` and `Authorization` headers included.
//! Secrets never appear in the logs, at any level (SPEC §3).

use tracing::Metadata;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{filter, EnvFilter, Layer};

/// Targets (crates) that log traffic: nothing below `info` from them.
const TRAFFIC_TARGETS: [&str; 10] = [
    "tungstenite",
    "tokio_tungstenite",
    "h2",
    "hyper",
    "hyper_util",
    "reqwest",
    "rustls",
    "tokio_rustls",
    "tonic",
    "tower",
];

/// Whether an event may be logged whatever `RUST_LOG` says.
pub fn allowed(meta: &Metadata<'_>) -> bool {
    let target = meta.target();
    let traffic = TRAFFIC_TARGETS
        .iter()
        .any(|t| target.strip_prefix(t).is_some_and(|rest| rest.is_empty() || rest.starts_with("::")));
    !traffic || *meta.level() <= tracing::Level::INFO
}

/// Installs the process's subscriber: `RUST_LOG` (default `info`), stderr,
/// colours only on a terminal, traffic-logging crates held to `info`.
pub fn init() {
    let env = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_filter(filter::filter_fn(allowed));
    let _ = tracing_subscriber::registry().with(env).with(fmt).try_init();
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::callsite::Identifier;
    use tracing::field::FieldSet;
    use tracing::metadata::Kind;
    use tracing::Level;

    struct Site;
    impl tracing::Callsite for Site {
        fn set_interest(&self, _: tracing::subscriber::Interest) {}
        fn metadata(&self) -> &Metadata<'_> {
            unreachable!("not registered")
        }
    }
    static SITE: Site = Site;

    fn meta(target: &'static str, level: Level) -> Metadata<'static> {
        Metadata::new(
            "e",
            target,
            level,
            None,
            None,
            None,
            FieldSet::new(&[], Identifier(&SITE)),
            Kind::EVENT,
        )
    }

    #[test]
    fn traffic_crates_are_held_to_info() {
        assert!(!allowed(&meta("tungstenite::protocol", Level::TRACE)));
        assert!(!allowed(&meta("h2::codec::framed_read", Level::DEBUG)));
        assert!(!allowed(&meta("hyper", Level::TRACE)));
        assert!(allowed(&meta("hyper::server", Level::INFO)));
        assert!(allowed(&meta("h2", Level::WARN)));
        assert!(allowed(&meta("gateway_http::ws::conn", Level::TRACE)));
        // A crate whose name merely starts the same is not held back.
        assert!(allowed(&meta("hyperbolic", Level::TRACE)));
    }
}
