//! The HTTP client the provider sends its requests with: hyper's pooled client
//! over plain TCP or rustls (ring, the webpki roots), HTTP/1.1, or HTTP/2 where
//! the upstream offers it in the TLS handshake. It never retries a request that
//! reached the upstream and never follows a redirect.
//!
//! An egress proxy from the environment (`HTTPS_PROXY`, `HTTP_PROXY`,
//! `ALL_PROXY`, `NO_PROXY`, the variables curl reads) is honoured: an `https`
//! upstream is reached through the proxy's `CONNECT` tunnel (TLS runs end to end
//! inside it), a plain `http` one by sending the request to the proxy in
//! absolute form. Only `http://` proxies are supported (port 80 when the URL
//! names none); the route is settled once per provider.
//!
//! hyper's client directly rather than reqwest: reqwest parses the request's URL
//! again on every request (its redirect policy runs even with redirects off) and
//! adds a retry and a redirect layer around hyper's; that was about a sixth of
//! agent-svc's instructions per run (`scripts/bench-instructions.sh`).

use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue, CONTENT_TYPE, PROXY_AUTHORIZATION, USER_AGENT};
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::proxy::matcher::{Intercept, Matcher};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;

/// A response as the client hands it over: status and headers read, body streaming.
pub(super) type Response = http::Response<hyper::body::Incoming>;

/// Why a request got no response (the caller turns it into a `ProviderError`).
#[derive(Debug)]
pub(super) enum SendError {
    /// The connection (TCP and TLS) was not up within the connect timeout.
    ConnectTimeout(Duration),
    /// The connection could not be made (refused, DNS, TLS, ...).
    Connect(hyper_util::client::legacy::Error),
    /// The request failed once connected (reset, closed, protocol error).
    Request(hyper_util::client::legacy::Error),
}

/// The egress proxy settings of the environment.
pub(super) struct ProxySettings {
    /// The proxy for each scheme, `NO_PROXY` aside: `None` for an upstream no
    /// variable names, or names nothing usable for.
    proxies: Matcher,
    /// `NO_PROXY` alone, over a stand-in proxy: `None` for an exempt host.
    exemptions: Matcher,
    /// Whether a proxy variable applies to `http` / `https` upstreams.
    http_set: bool,
    https_set: bool,
}

impl ProxySettings {
    /// From `HTTP_PROXY`, `HTTPS_PROXY`, `ALL_PROXY` and `NO_PROXY` (or their
    /// lower-case names). `HTTP_PROXY` is ignored under CGI (`REQUEST_METHOD`
    /// set), where a request's `Proxy` header would arrive as that variable.
    pub(super) fn from_env() -> Self {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// [`ProxySettings::from_env`] over any lookup. An empty variable counts as
    /// unset (as curl has it), so it does not hide its lower-case twin.
    pub(super) fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Self {
        let var = |names: [&str; 2]| {
            names.iter().find_map(|n| lookup(n).filter(|v| !v.trim().is_empty())).unwrap_or_default()
        };
        let http = if lookup("REQUEST_METHOD").is_some() {
            String::new()
        } else {
            var(["HTTP_PROXY", "http_proxy"])
        };
        Self::new(
            http,
            var(["HTTPS_PROXY", "https_proxy"]),
            var(["ALL_PROXY", "all_proxy"]),
            var(["NO_PROXY", "no_proxy"]),
        )
    }

    /// From the variables' values (empty: unset).
    pub(super) fn new(http: String, https: String, all: String, no: String) -> Self {
        let all_set = !all.trim().is_empty();
        Self {
            http_set: all_set || !http.trim().is_empty(),
            https_set: all_set || !https.trim().is_empty(),
            proxies: Matcher::builder().http(http).https(https).all(all).build(),
            exemptions: Matcher::builder().all("http://exempt.invalid").no(no).build(),
        }
    }

    /// The proxy for `uri` (an `http://` one), `None` to go direct; `Err` when a
    /// variable applies to it but names nothing usable as a proxy (rather than
    /// going direct silently).
    pub(super) fn route(&self, uri: &Uri) -> Result<Option<Intercept>, BuildError> {
        if self.exemptions.intercept(uri).is_none() {
            // `NO_PROXY` exempts it: no proxy variable applies, usable or not.
            return Ok(None);
        }
        let https = uri.scheme_str() == Some("https");
        let set = if https { self.https_set } else { self.http_set };
        match self.proxies.intercept(uri) {
            Some(p) if p.uri().scheme_str() == Some("http") => Ok(Some(p)),
            Some(p) => Err(BuildError::Proxy(format!(
                "{}: only http:// proxies are supported",
                proxy_display(p.uri())
            ))),
            None if set => {
                let vars = if https { "HTTPS_PROXY / ALL_PROXY" } else { "HTTP_PROXY / ALL_PROXY" };
                Err(BuildError::Proxy(format!(
                    "in {vars}: not a proxy URL agent-svc can use (expected http://host:port)"
                )))
            }
            None => Ok(None),
        }
    }
}

/// Why an [`UpstreamClient`] could not be built.
#[derive(Debug, thiserror::Error)]
pub(super) enum BuildError {
    /// The TLS library refused its own default protocol versions.
    #[error("TLS client: {0}")]
    Tls(#[from] rustls::Error),
    /// The proxy the environment names for this upstream is not one we can use.
    #[error("proxy {0}")]
    Proxy(String),
}

/// One upstream's pooled client with the request head every request carries.
pub(super) struct UpstreamClient {
    client: HyperClient<TimedConnector, Full<Bytes>>,
    uri: Uri,
    /// `Accept`, `Content-Type`, `User-Agent`, the key and the configured extra headers.
    headers: HeaderMap,
}

impl UpstreamClient {
    /// A client for `POST`s to `uri` with `headers`, through `proxy` (an
    /// `http://` one, from [`ProxySettings::route`]) if given; `connect_timeout` bounds the TCP connect,
    /// the proxy's tunnel and the TLS handshake together (none when `None`).
    pub(super) fn new(
        uri: Uri,
        mut headers: HeaderMap,
        proxy: Option<&Intercept>,
        connect_timeout: Option<Duration>,
        tcp_keepalive: Duration,
        pool_idle_timeout: Duration,
    ) -> Result<Self, BuildError> {
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        tcp.set_keepalive(Some(tcp_keepalive));
        let route = match (proxy, uri.scheme_str()) {
            (None, _) => Route::Direct,
            (Some(p), Some("https")) => {
                let tunnel = Tunnel::new(p.uri().clone(), tcp.clone());
                Route::Tunnel(Box::new(match p.basic_auth() {
                    Some(auth) => tunnel.with_auth(auth.clone()),
                    None => tunnel,
                }))
            }
            (Some(p), _) => {
                if let Some(auth) = p.basic_auth() {
                    let mut auth = auth.clone();
                    auth.set_sensitive(true);
                    headers.insert(PROXY_AUTHORIZATION, auth);
                }
                Route::Forward(Box::new(p.uri().clone()))
            }
        };
        let roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
        let tls =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots)
                .with_no_client_auth();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(RouteConnector { tcp, route });
        let client = HyperClient::builder(TokioExecutor::new())
            .pool_idle_timeout(pool_idle_timeout)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(TimedConnector { inner: https, timeout: connect_timeout });
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(
            USER_AGENT,
            HeaderValue::from_static(concat!("openclaw-agent-svc/", env!("CARGO_PKG_VERSION"))),
        );
        Ok(Self { client, uri, headers })
    }

    /// Sends `body` (JSON); resolves once the response's status and headers are in.
    pub(super) fn post(
        &self,
        body: Vec<u8>,
    ) -> impl Future<Output = Result<Response, SendError>> + Send + 'static {
        let mut req = Request::new(Full::new(Bytes::from(body)));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = self.uri.clone();
        *req.headers_mut() = self.headers.clone();
        let sent = self.client.request(req);
        async move {
            sent.await.map_err(|e| {
                if e.is_connect() {
                    match connect_timeout(&e) {
                        Some(limit) => SendError::ConnectTimeout(limit),
                        None => SendError::Connect(e),
                    }
                } else {
                    SendError::Request(e)
                }
            })
        }
    }
}

/// A proxy's address for messages and logs: scheme, host and port, never its credentials.
pub(super) fn proxy_display(proxy: &Uri) -> String {
    let scheme = proxy.scheme_str().unwrap_or("http");
    match (proxy.host(), proxy.port_u16()) {
        (Some(h), Some(p)) => format!("{scheme}://{h}:{p}"),
        (Some(h), None) => format!("{scheme}://{h}"),
        _ => format!("{scheme}://"),
    }
}

/// The response body read to its end or to `cap` bytes, whichever comes first;
/// `idle` bounds the wait for each chunk. `Err` carries the read error's text.
pub(super) async fn read_capped(
    resp: Response,
    cap: usize,
    idle: Option<Duration>,
) -> Result<Vec<u8>, ReadError> {
    let mut body = resp.into_body();
    let mut buf = Vec::new();
    loop {
        let next = match idle {
            Some(limit) => {
                tokio::time::timeout(limit, body.frame()).await.map_err(|_| ReadError::Idle(limit))?
            }
            None => body.frame().await,
        };
        let frame = match next {
            None => break,
            Some(Ok(frame)) => frame,
            Some(Err(e)) => return Err(ReadError::Body(e)),
        };
        let Ok(chunk) = frame.into_data() else { continue };
        let room = cap - buf.len();
        if chunk.len() >= room {
            buf.extend_from_slice(&chunk[..room]);
            break;
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

/// Why [`read_capped`] stopped short.
#[derive(Debug)]
pub(super) enum ReadError {
    /// Nothing came for this long.
    Idle(Duration),
    /// The body broke off.
    Body(hyper::Error),
}

/// The connect timeout a connect error carries, if that is what it was.
fn connect_timeout(e: &(dyn std::error::Error + 'static)) -> Option<Duration> {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = src {
        if let Some(t) = s.downcast_ref::<ConnectTimedOut>() {
            return Some(t.0);
        }
        src = s.source();
    }
    None
}

/// The error [`TimedConnector`] fails with when the connect timeout passes.
#[derive(Debug)]
struct ConnectTimedOut(Duration);

impl std::fmt::Display for ConnectTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "no connection within {} ms", self.0.as_millis())
    }
}

impl std::error::Error for ConnectTimedOut {}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How a client reaches its upstream, settled once from the proxy settings.
/// Boxed variants: hyper clones the connector for every request.
#[derive(Clone)]
enum Route {
    Direct,
    /// An `https` upstream through an HTTP proxy's `CONNECT` tunnel.
    Tunnel(Box<Tunnel<HttpConnector>>),
    /// A plain-`http` upstream through an HTTP proxy (this is its address):
    /// requests carry the absolute URI, and the proxy's credentials as a header.
    Forward(Box<Uri>),
}

/// TCP to the upstream, to the proxy, or through the proxy's tunnel; TLS, when
/// the upstream is `https`, is layered on top by the `HttpsConnector`.
#[derive(Clone)]
struct RouteConnector {
    tcp: HttpConnector,
    route: Route,
}

impl tower::Service<Uri> for RouteConnector {
    type Response = UpstreamIo;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<UpstreamIo, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match &mut self.route {
            Route::Tunnel(t) => t.poll_ready(cx).map_err(Into::into),
            Route::Direct | Route::Forward(_) => self.tcp.poll_ready(cx).map_err(Into::into),
        }
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        match &mut self.route {
            Route::Direct => {
                let connecting = self.tcp.call(dst);
                Box::pin(async move { Ok(UpstreamIo { io: connecting.await?, forwarded: false }) })
            }
            Route::Tunnel(t) => {
                let connecting = t.call(dst);
                Box::pin(async move { Ok(UpstreamIo { io: connecting.await?, forwarded: false }) })
            }
            Route::Forward(proxy) => {
                let connecting = self.tcp.call(Uri::clone(proxy));
                Box::pin(async move { Ok(UpstreamIo { io: connecting.await?, forwarded: true }) })
            }
        }
    }
}

/// A connection to the upstream or to a forwarding proxy, which hyper must be
/// told about (it then writes request targets in absolute form).
struct UpstreamIo {
    io: TokioIo<TcpStream>,
    forwarded: bool,
}

impl Connection for UpstreamIo {
    fn connected(&self) -> Connected {
        self.io.connected().proxy(self.forwarded)
    }
}

impl hyper::rt::Read for UpstreamIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for UpstreamIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The HTTPS connector with one deadline for TCP connect and TLS handshake
/// together (hyper's own connect timeout covers only the TCP part).
#[derive(Clone)]
struct TimedConnector {
    inner: HttpsConnector<RouteConnector>,
    timeout: Option<Duration>,
}

impl tower::Service<Uri> for TimedConnector {
    type Response = <HttpsConnector<RouteConnector> as tower::Service<Uri>>::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let connecting = self.inner.call(dst);
        let Some(limit) = self.timeout else { return Box::pin(connecting) };
        Box::pin(async move {
            match tokio::time::timeout(limit, connecting).await {
                Ok(connected) => connected,
                Err(_) => Err(Box::new(ConnectTimedOut(limit)) as BoxError),
            }
        })
    }
}
