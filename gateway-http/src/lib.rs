//! gateway-http: the public port of the OpenClaw gateway pair. It serves the
//! OpenAI Chat Completions surface (`/v1/chat/completions`, `/v1/models`),
//! health, metrics and the Gateway WebSocket protocol over HTTP/1.1 and h2c
//! (or HTTPS with h2/http1.1 ALPN and WSS, with `gateway.tls`) on one listener,
//! and runs every request as an `AgentRun` on agent-svc over gRPC.
//!
//! [`start`] is the whole server (the binary is a thin CLI over it, and the
//! end-to-end tests call it directly); [`router`] is the same HTTP surface
//! without a listener.
//!
//! Modules, one concern each: [`routes`] (thin handlers, order of checks),
//! [`openai`] (OpenAI JSON ↔ `AgentRun`: the request translation, the
//! non-streaming answer and the SSE stream; the only place that knows the wire
//! shapes), [`ws`] (the WebSocket protocol), [`client`] (the only gRPC caller:
//! typed run events out, statuses mapped once), [`auth`] (bearer secret +
//! lockout), [`error`] (one error type, one HTTP mapping), [`metrics`], [`state`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), gateway_http::GatewayError> {
//! let config = services::config::load(None)?;
//! let gw = gateway_http::start(config, gateway_http::GatewayOptions::default()).await?;
//! println!("listening on http://{}", gw.local_addr());
//! gw.shutdown().await?;
//! # Ok(()) }
//! ```

pub mod auth;
pub mod browser;
pub mod client;
pub mod error;
pub mod limits;
pub mod metrics;
pub mod openai;
pub mod routes;
pub mod state;
pub mod ws;

pub use client::{AgentClient, HopCredentials};
pub use error::{ApiError, GatewayError};
pub use routes::router;
pub use state::AppState;

use metrics::Metrics;
use services::config::{parse_bind, LoadedConfig, PUBLIC_TLS_KEY};
use services::tls::{ServerTls, ALPN_H2, ALPN_HTTP11, RELOAD_INTERVAL};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long [`GatewayHandle::shutdown`] lets open requests and streams finish
/// before streams are ended with an error event.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How long [`GatewayHandle::shutdown`] waits for WebSocket connections to send
/// their Close frame.
const WS_CLOSE_WAIT: Duration = Duration::from_secs(3);

/// Overrides of the config for one gateway (CLI flags and env in the binary).
#[derive(Debug, Default)]
pub struct GatewayOptions {
    /// Listen port; else `gateway.port`. Ignored when `listener` is given.
    pub port: Option<u16>,
    /// `loopback`, `lan` or an IP literal; else `gateway.bind`. Also decides
    /// whether auth mode `none` is allowed (loopback only), even with `listener`.
    pub bind: Option<String>,
    /// agent-svc URL (`http://host:port`); else `gateway.agentService.url`;
    /// neither: agent-svc is started in this process (embedded mode).
    pub agent_svc_url: Option<String>,
    /// A pre-bound listener (tests pass `127.0.0.1:0`), used instead of binding.
    pub listener: Option<TcpListener>,
    /// How long a client may take to send a request head (and, with TLS, to
    /// finish its handshake); default [`HEADER_READ_TIMEOUT`].
    pub header_read_timeout: Option<Duration>,
    /// How often the TLS files (`gateway.tls`, `gateway.agentService.tls`) are
    /// checked for changes; default `services::tls::RELOAD_INTERVAL`.
    pub tls_reload_interval: Option<Duration>,
}

/// A running gateway. Dropping it leaves the server running until the runtime
/// stops; call [`GatewayHandle::shutdown`] to stop it.
pub struct GatewayHandle {
    addr: SocketAddr,
    agent_svc_url: String,
    state: AppState,
    stop_accepting: CancellationToken,
    server: JoinHandle<std::io::Result<()>>,
    embedded: Option<agent_svc::ServerHandle>,
}

impl std::fmt::Debug for GatewayHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayHandle")
            .field("addr", &self.addr)
            .field("agent_svc_url", &self.agent_svc_url)
            .field("embedded", &self.embedded.is_some())
            .finish_non_exhaustive()
    }
}

impl GatewayHandle {
    /// The address the gateway listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The agent-svc URL in use (the embedded one's loopback address in embedded mode).
    pub fn agent_svc_url(&self) -> &str {
        &self.agent_svc_url
    }

    /// The embedded agent-svc, when this gateway started one.
    pub fn embedded_agent_svc(&self) -> Option<&agent_svc::ServerHandle> {
        self.embedded.as_ref()
    }

    /// The state the handlers share (metrics, client, auth).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Stops accepting, lets open requests finish for [`SHUTDOWN_GRACE`], ends
    /// the streams still open with an error event, closes the WebSocket
    /// connections (1012), lets the `chat.send` runs they started finish within
    /// the same grace period, then stops the embedded agent-svc (if any).
    pub async fn shutdown(self) -> Result<(), GatewayError> {
        self.shutdown_with_grace(SHUTDOWN_GRACE).await
    }

    /// [`GatewayHandle::shutdown`] with a chosen grace period.
    pub async fn shutdown_with_grace(mut self, grace: Duration) -> Result<(), GatewayError> {
        let deadline = tokio::time::Instant::now() + grace;
        self.stop_accepting.cancel();
        let served = match tokio::time::timeout(grace, &mut self.server).await {
            Ok(joined) => joined,
            Err(_) => {
                // Grace is over: end the open streams, give them a moment to flush.
                self.state.force_close().cancel();
                match tokio::time::timeout(Duration::from_secs(1), &mut self.server).await {
                    Ok(joined) => joined,
                    Err(_) => {
                        self.server.abort();
                        Ok(Ok(()))
                    }
                }
            }
        };
        let served = served.map_err(std::io::Error::other).and_then(|r| r);
        // Upgraded connections are not the HTTP server's any more: close them now.
        self.state.force_close().cancel();
        let ws = self.state.ws_connections();
        ws.close();
        let _ = tokio::time::timeout(WS_CLOSE_WAIT, ws.wait()).await;
        // Runs started over WebSocket outlive their socket: let them finish within the grace.
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if !self.state.ws_runs().wait_idle(left).await {
            tracing::warn!("WebSocket chat runs still going at shutdown; they are cancelled");
        }
        if let Some(embedded) = self.embedded.take() {
            embedded.shutdown(grace).await?;
        }
        Ok(served?)
    }
}

/// Starts a gateway: checks the config (`validate_gateway` with the effective
/// bind, `resolve_agents`), binds (or takes `opts.listener`), connects to
/// agent-svc (or starts it in-process), and serves until
/// [`GatewayHandle::shutdown`]. Returns once the listener accepts connections.
pub async fn start(config: LoadedConfig, opts: GatewayOptions) -> Result<GatewayHandle, GatewayError> {
    let gw = &config.config.gateway;
    let bind = opts.bind.clone().unwrap_or_else(|| gw.bind.clone());
    config.validate_gateway(&bind)?;
    let default_agent = config.resolve_agents()?.default_agent().id.clone();

    let metrics = Arc::new(Metrics::new());
    let reload_every = opts.tls_reload_interval.unwrap_or(RELOAD_INTERVAL);
    // The certificates are loaded before binding, so a bad file fails without side effects.
    let public_tls = match config.public_tls()? {
        Some(paths) => Some(
            ServerTls::server(paths, &[ALPN_H2, ALPN_HTTP11], reload_every)
                .await
                .map_err(|e| config.tls_error(PUBLIC_TLS_KEY, e))?,
        ),
        None => None,
    };
    let credentials = HopCredentials::from_config(&config, reload_every).await?;
    let remote_url =
        opts.agent_svc_url.or_else(|| gw.agent_service.url.clone()).filter(|u| !u.trim().is_empty());
    // Checked before binding, so a bad URL fails without side effects.
    let remote = remote_url
        .map(|u| {
            AgentClient::connect(&u, &default_agent, metrics.clone(), credentials.clone()).map(|c| (u, c))
        })
        .transpose()?;

    let listener = match opts.listener {
        Some(l) => l,
        None => {
            let ip = parse_bind(&bind)
                .ok_or_else(|| config.error("gateway.bind", format!("invalid bind {bind:?}")))?;
            let addr = SocketAddr::new(ip, opts.port.unwrap_or(gw.port));
            TcpListener::bind(addr)
                .await
                .map_err(|source| GatewayError::Bind { addr: addr.to_string(), source })?
        }
    };
    let addr = listener.local_addr()?;
    if public_tls.is_none() && !addr.ip().is_loopback() {
        tracing::warn!(
            %addr,
            "gateway-http listens beyond loopback without TLS: tokens and conversations cross the \
             network in clear text (set gateway.tls, or terminate TLS in front of it)"
        );
    }

    let (agent_svc_url, client, embedded) = match remote {
        Some((url, client)) => (url, client, None),
        None => {
            // Embedded mode: agent-svc in this process, reached through the same gRPC client,
            // with the same token; its loopback hop inside one process needs no TLS.
            let l = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
            let hop = agent_svc::Hop { tls: None, ..agent_svc::Hop::from_config(&config)? };
            let handle = agent_svc::start_with(&config, l, hop).await?;
            let url = format!("http://{}", handle.local_addr());
            let client =
                AgentClient::connect(&url, &default_agent, metrics.clone(), credentials.without_tls())?;
            (url, client, Some(handle))
        }
    };

    let state = AppState::new(&config, client);
    let stop_accepting = CancellationToken::new();
    let header_timeout = opts.header_read_timeout.unwrap_or(HEADER_READ_TIMEOUT);
    let server = tokio::spawn(serve(
        listener,
        router(state.clone()),
        stop_accepting.clone(),
        Serving {
            tls: public_tls,
            header_timeout,
            connections: limits::Bound::new(config.config.gateway.limits.max_connections as usize),
            metrics: state.metrics_handle().clone(),
        },
    ));

    if embedded.is_some() {
        if let Some(handle) = agent_svc::metrics::global() {
            state.metrics().include_embedded(handle);
        }
    }
    let upkeep_state = state.clone();
    let upkeep_stop = stop_accepting.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(services::telemetry::UPKEEP_INTERVAL);
        loop {
            tokio::select! {
                _ = tick.tick() => upkeep_state.metrics().upkeep(),
                () = upkeep_stop.cancelled() => break,
            }
        }
    });

    tracing::info!(%addr, agent_svc = %agent_svc_url, embedded = embedded.is_some(), "gateway-http started");
    Ok(GatewayHandle { addr, agent_svc_url, state, stop_accepting, server, embedded })
}

/// How the public port serves its connections.
struct Serving {
    /// TLS on the public port, if configured.
    tls: Option<ServerTls>,
    /// Longest wait for a request head (and a TLS handshake).
    header_timeout: Duration,
    /// Open connections, bounded by `gateway.limits.maxConnections`.
    connections: Arc<limits::Bound>,
    metrics: Arc<Metrics>,
}

/// Refused connections given their `503` at once; beyond, they are just closed.
const REFUSALS_AT_ONCE: usize = 256;

/// A client must send a request's whole head within this time (slow-header
/// clients would otherwise hold connections open for free).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(15);

/// Accepts connections until `stop` fires, then waits for open requests and
/// streams (graceful). HTTP/1.1 (with WebSocket upgrades) and h2c share the port,
/// or with `tls` the same over TLS (ALPN `h2`, `http/1.1`): each connection's
/// handshake runs in its own task, bounded by `header_timeout`, with the
/// certificate current when it starts. Every request carries the peer address
/// as `ConnectInfo`.
async fn serve(
    listener: TcpListener,
    app: axum::Router,
    stop: CancellationToken,
    serving: Serving,
) -> std::io::Result<()> {
    let Serving { tls, header_timeout, connections, metrics } = serving;
    let refusing = limits::Bound::new(REFUSALS_AT_ONCE);
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use tokio_util::either::Either;
    use tower::Service;

    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(header_timeout);
    builder.http2().timer(TokioTimer::new()).keep_alive_interval(Some(Duration::from_secs(30)));
    let builder = Arc::new(builder);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        // Nagle off: small SSE frames and JSON answers must not wait.
        let (tcp, peer) = tokio::select! {
            accepted = services::net::accept(&listener) => match accepted {
                Some(conn) => conn,
                None => continue,
            },
            () = stop.cancelled() => break,
        };
        let Some(slot) = connections.try_take() else {
            metrics.overload_refused("connections");
            if tls.is_none() {
                limits::refuse_connection(tcp, &refusing);
            }
            continue;
        };
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(axum::extract::ConnectInfo(peer));
            app.clone().call(req)
        });
        let watcher = graceful.watcher();
        let (builder, tls) = (builder.clone(), tls.clone());
        tokio::spawn(async move {
            let io = match tls {
                None => Either::Left(tcp),
                Some(tls) => match tokio::time::timeout(header_timeout, tls.acceptor().accept(tcp)).await {
                    Ok(Ok(stream)) => Either::Right(stream),
                    Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
                },
            };
            let io = limits::Counted::new(io, slot);
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
            // Errors here are the peer's (reset, timeout, bad request line).
            let _ = watcher.watch(conn.into_owned()).await;
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
