//! The `openai-completions` provider: any OpenAI-compatible `/chat/completions`
//! upstream (OpenAI, vLLM, Ollama, LM Studio, OpenRouter, ...).
//!
//! One attempt is one `POST {baseUrl}/chat/completions` with `stream: true`.
//! Nothing is spawned: the returned stream owns the response body, so dropping
//! it closes the upstream connection. This file holds the client and the
//! [`Provider`] impl; the rest is one file per concern:
//!
//! - `wire.rs`: the request body we send and the answer shapes we read;
//! - `stream.rs`: the streamed (SSE) answer → [`ProviderEvent`](super::ProviderEvent)s;
//! - `json.rs`: the fallback for an upstream that answers one JSON completion;
//! - `error.rs`: failures → [`ProviderError`]s.

mod error;
mod http;
mod json;
mod stream;
mod wire;

/// Entry points for the fuzz targets (`fuzz/`): the exact code paths the
/// provider runs on an upstream body, without the network. Not an API.
#[doc(hidden)]
pub mod fuzz {
    use crate::providers::{ProviderError, ProviderEvent};

    /// A streamed (SSE) body delivered in `chunks`, read by the provider's stream to its end.
    pub fn stream_events(chunks: &[&[u8]]) -> Vec<Result<ProviderEvent, ProviderError>> {
        use futures::StreamExt;
        let body = futures::stream::iter(chunks.iter().map(|c| Ok::<_, std::io::Error>(c.to_vec())));
        // No idle timeout: no timer, so no runtime is needed to drive it.
        futures::executor::block_on(super::stream::SseStream::new(body, None).collect())
    }

    /// A whole (non-streamed) JSON completion body, as the provider reads it.
    pub fn completion_events(body: &[u8]) -> Result<Vec<ProviderEvent>, ProviderError> {
        super::json::parse_completion(body)
    }
}

use super::{Provider, ProviderError, ProviderFuture, ProviderRequest};
use crate::error::AgentError;
use ::http::header::{HeaderMap, HeaderName, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use ::http::Uri;
use futures::StreamExt;
use services::config::ProviderConfig;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Idle pooled connections are closed after this; shorter than most servers'
/// and load balancers' keep-alive, so we rarely reuse a connection they closed.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Detects dead peers on long, quiet streams.
const TCP_KEEPALIVE: Duration = Duration::from_secs(30);
/// Time allowed to read an error body when no first-byte timeout is configured.
const DEFAULT_ERROR_BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// A provider speaking the OpenAI Chat Completions API (streaming).
///
/// Cheap to share: it holds one pooled HTTP client for its upstream.
pub struct OpenAiProvider {
    name: Arc<str>,
    url: String,
    client: http::UpstreamClient,
    first_byte_timeout: Option<Duration>,
    idle_timeout: Option<Duration>,
}

// Hand-written so that headers (the API key) can never reach a log.
impl fmt::Debug for OpenAiProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiProvider")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("first_byte_timeout", &self.first_byte_timeout)
            .finish_non_exhaustive()
    }
}

impl OpenAiProvider {
    /// Builds the provider `name` (its key under `models.providers`) from its config.
    ///
    /// Fails with [`AgentError::Startup`] when the base URL is not an absolute
    /// `http(s)` URL or a header (including the API key) is not a valid HTTP header.
    /// Its connections go through the egress proxy the environment names for
    /// its base URL, if any (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`, `NO_PROXY`).
    pub fn new(name: &str, cfg: &ProviderConfig) -> Result<Self, AgentError> {
        Self::with_proxies(name, cfg, &http::ProxySettings::from_env())
    }

    /// [`OpenAiProvider::new`] with the proxy settings given rather than read from the environment.
    fn with_proxies(
        name: &str,
        cfg: &ProviderConfig,
        proxies: &http::ProxySettings,
    ) -> Result<Self, AgentError> {
        let key = |k: &str| format!("models.providers.{name}.{k}");
        let base = cfg.base_url.trim().trim_end_matches('/');
        if base.is_empty() {
            return Err(AgentError::Startup(format!("{}: is required", key("baseUrl"))));
        }
        let url = format!("{base}/chat/completions");
        let uri = url
            .parse::<Uri>()
            .map_err(|e| AgentError::Startup(format!("{}: invalid URL: {e}", key("baseUrl"))))?;
        match uri.scheme_str() {
            Some("http" | "https") if uri.host().is_some_and(|h| !h.is_empty()) => {}
            Some("http" | "https") => {
                return Err(AgentError::Startup(format!("{}: invalid URL: no host", key("baseUrl"))))
            }
            _ => return Err(AgentError::Startup(format!("{}: must be an http(s) URL", key("baseUrl")))),
        }
        // They would never be sent as credentials, and a forwarding proxy would log them.
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            return Err(AgentError::Startup(format!(
                "{}: credentials in the URL are not supported (use apiKey or headers)",
                key("baseUrl")
            )));
        }

        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static("text/event-stream"));
        if let Some(api_key) = cfg.api_key.as_deref().map(str::trim).filter(|k| !k.is_empty()) {
            // The value is never echoed: it is the secret.
            let mut v = HeaderValue::from_str(&format!("Bearer {api_key}")).map_err(|_| {
                AgentError::Startup(format!("{}: contains characters not allowed in a header", key("apiKey")))
            })?;
            v.set_sensitive(true);
            headers.insert(AUTHORIZATION, v);
        }
        for (k, v) in &cfg.headers {
            let hk = format!("headers.{k}");
            let n = HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| AgentError::Startup(format!("{}: invalid header name", key(&hk))))?;
            let mut hv = HeaderValue::from_str(v)
                .map_err(|_| AgentError::Startup(format!("{}: invalid header value", key(&hk))))?;
            // Extra headers often carry credentials too.
            hv.set_sensitive(true);
            headers.insert(n, hv);
        }

        // Redirects are not followed: a redirected POST would be replayed as a GET or
        // leak headers; an API base URL that redirects is a misconfiguration, reported as such.
        let connect_timeout =
            (cfg.connect_timeout_ms > 0).then(|| Duration::from_millis(cfg.connect_timeout_ms));
        let startup = |e: http::BuildError| AgentError::Startup(format!("models.providers.{name}: {e}"));
        let proxy = proxies.route(&uri).map_err(startup)?;
        if let Some(p) = &proxy {
            tracing::info!(provider = name, proxy = %http::proxy_display(p.uri()), "upstream calls go through the proxy");
        }
        let client = http::UpstreamClient::new(
            uri,
            headers,
            proxy.as_ref(),
            connect_timeout,
            TCP_KEEPALIVE,
            POOL_IDLE_TIMEOUT,
        )
        .map_err(startup)?;

        Ok(Self {
            name: Arc::from(name),
            url,
            client,
            first_byte_timeout: (cfg.first_byte_timeout_ms > 0)
                .then(|| Duration::from_millis(cfg.first_byte_timeout_ms)),
            idle_timeout: (cfg.idle_timeout_ms > 0).then(|| Duration::from_millis(cfg.idle_timeout_ms)),
        })
    }

    /// The provider's name (its key under `models.providers`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The full `.../chat/completions` URL requests go to.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Provider for OpenAiProvider {
    fn stream(&self, req: ProviderRequest) -> ProviderFuture {
        let body = match wire::build_body(&req) {
            Ok(b) => b,
            Err(e) => return Box::pin(std::future::ready(Err(e))),
        };
        // The big request (images, transcript) is freed before we wait on the network.
        drop(req);
        let request = self.client.post(body);
        let first_byte = self.first_byte_timeout;
        let idle = self.idle_timeout;
        let name = self.name.clone();
        Box::pin(async move {
            let sent = match first_byte {
                Some(limit) => match tokio::time::timeout(limit, request).await {
                    Ok(r) => r,
                    Err(_) => {
                        return Err(ProviderError::Timeout(format!(
                            "provider sent no response within {} ms",
                            limit.as_millis()
                        )))
                    }
                },
                None => request.await,
            };
            let resp = sent.map_err(error::send_error)?;
            let status = resp.status();
            if !status.is_success() {
                let limit = first_byte.unwrap_or(DEFAULT_ERROR_BODY_TIMEOUT);
                let err = error::error_from_response(resp, limit).await;
                tracing::debug!(
                    provider = %name,
                    status = status.as_u16(),
                    error = %err,
                    "provider refused request"
                );
                return Err(err);
            }
            if is_json(resp.headers()) {
                // An upstream that ignored `stream: true`: same events, all at once.
                let events = json::read_completion(resp, idle).await?;
                return Ok(futures::stream::iter(events.into_iter().map(Ok)).boxed());
            }
            let body = http_body_util::BodyDataStream::new(resp.into_body());
            Ok(stream::SseStream::new(body, idle).boxed())
        })
    }
}

/// Reads a body up to `cap` bytes (the rest is left unread and the connection
/// dropped); `idle` bounds the wait for each chunk.
async fn read_capped(
    resp: http::Response,
    cap: usize,
    idle: Option<Duration>,
) -> Result<Vec<u8>, ProviderError> {
    http::read_capped(resp, cap, idle).await.map_err(|e| match e {
        http::ReadError::Idle(limit) => {
            ProviderError::Timeout(format!("provider sent nothing for {} ms", limit.as_millis()))
        }
        http::ReadError::Body(e) => {
            ProviderError::Upstream(format!("reading provider response failed: {}", error::describe(&e)))
        }
    })
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::test_support::msg;
    use crate::providers::ProviderEvent;
    use serde_json::{json, Value};

    #[test]
    fn new_validates_config() {
        let cfg = |url: &str| ProviderConfig { base_url: url.into(), ..Default::default() };
        let p = OpenAiProvider::new("openai", &cfg("https://api.openai.com/v1/")).unwrap();
        assert_eq!(p.url(), "https://api.openai.com/v1/chat/completions");
        assert_eq!(p.name(), "openai");
        for bad in ["", "not a url", "ftp://x/v1"] {
            assert!(matches!(OpenAiProvider::new("p", &cfg(bad)), Err(AgentError::Startup(_))), "{bad}");
        }
        let mut c = cfg("http://localhost:1/v1");
        c.headers.insert("bad header".into(), "v".into());
        assert!(matches!(OpenAiProvider::new("p", &c), Err(AgentError::Startup(m)) if m.contains("headers")));
        let mut c = cfg("http://localhost:1/v1");
        c.api_key = Some("sk-secret\nx".into());
        match OpenAiProvider::new("p", &c) {
            Err(AgentError::Startup(m)) => assert!(m.contains("apiKey") && !m.contains("sk-secret"), "{m}"),
            other => panic!("unexpected {other:?}"),
        }
        // Debug never shows the key.
        let mut c = cfg("http://localhost:1/v1");
        c.api_key = Some("sk-secret".into());
        let p = OpenAiProvider::new("p", &c).unwrap();
        assert!(!format!("{p:?}").contains("sk-secret"));
    }

    // ----- over a real socket -----

    mod socket {
        use super::*;
        use axum::body::Body;
        use axum::extract::{ConnectInfo, Path, State};
        use axum::http::{HeaderMap as AxHeaders, StatusCode};
        use axum::response::{IntoResponse, Response};
        use axum::routing::post;
        use axum::Router;
        use bytes::Bytes;
        use std::sync::Mutex;
        use tokio::sync::oneshot;

        /// Request body, `Authorization` and `X-Extra` headers of a request.
        type Seen = (Value, Option<String>, Option<String>);

        #[derive(Clone, Default)]
        struct Shared {
            /// Fires when the server drops a streaming body (the client went away).
            dropped: Arc<Mutex<Option<oneshot::Sender<()>>>>,
            /// The last request body and auth header seen.
            seen: Arc<Mutex<Option<Seen>>>,
            /// Client address of every request, to see connection reuse.
            peers: Arc<Mutex<Vec<std::net::SocketAddr>>>,
        }

        struct DropSignal(Option<oneshot::Sender<()>>);

        impl Drop for DropSignal {
            fn drop(&mut self) {
                if let Some(tx) = self.0.take() {
                    let _ = tx.send(());
                }
            }
        }

        /// An SSE body sent as a chunked stream, one event per chunk, like real upstreams.
        fn sse(body: &'static str) -> Response {
            let events = body
                .split_inclusive("\n\n")
                .map(|e| Ok::<_, std::io::Error>(Bytes::from_static(e.as_bytes())));
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(Body::from_stream(futures::stream::iter(events)))
                .unwrap_or_default()
        }

        async fn handler(
            State(shared): State<Shared>,
            ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
            Path(case): Path<String>,
            headers: AxHeaders,
            body: Bytes,
        ) -> Response {
            let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let h = |k: &str| headers.get(k).and_then(|v| v.to_str().ok()).map(String::from);
            *shared.seen.lock().unwrap() = Some((json, h("authorization"), h("x-extra")));
            shared.peers.lock().unwrap().push(peer);
            match case.as_str() {
                "429" => (StatusCode::TOO_MANY_REQUESTS, r#"{"error":{"message":"slow down"}}"#).into_response(),
                "500" => (StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response(),
                "400" => (
                    StatusCode::BAD_REQUEST,
                    [("content-type", "application/json")],
                    r#"{"error":{"message":"maximum context length exceeded","type":"invalid_request_error"}}"#,
                )
                    .into_response(),
                "401" => (StatusCode::UNAUTHORIZED, r#"{"error":{"message":"Incorrect API key"}}"#).into_response(),
                "sse" => sse(concat!(
                    "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Hi\"}}]}\n\n",
                    ": keep-alive\n\n",
                    "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\" there\"},\"finish_reason\":null}]}\n\n",
                    "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
                    "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2}}\n\n",
                    "data: [DONE]\n\n",
                )),
                "json" => (
                    [("content-type", "application/json")],
                    r#"{"choices":[{"index":0,"message":{"role":"assistant","content":"whole"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1}}"#,
                )
                    .into_response(),
                "slow" => {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    sse("data: [DONE]\n\n")
                }
                "hang" => {
                    let guard = DropSignal(shared.dropped.lock().unwrap().take());
                    let first = Bytes::from_static(
                        b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"tick\"}}]}\n\n",
                    );
                    // One event, then a keep-alive comment every 20 ms, forever.
                    let s = futures::stream::once(async move { Ok::<_, std::io::Error>(first) }).chain(
                        futures::stream::unfold(guard, |g| async move {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            Some((Ok(Bytes::from_static(b": ping\n\n")), g))
                        }),
                    );
                    Response::builder()
                        .header("content-type", "text/event-stream")
                        .body(Body::from_stream(s))
                        .unwrap_or_default()
                }
                _ => StatusCode::NOT_FOUND.into_response(),
            }
        }

        async fn server() -> (std::net::SocketAddr, Shared) {
            let shared = Shared::default();
            let app =
                Router::new().route("/{case}/chat/completions", post(handler)).with_state(shared.clone());
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move {
                let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
                let _ = axum::serve(listener, app).await;
            });
            (addr, shared)
        }

        fn provider(addr: std::net::SocketAddr, case: &str, first_byte_ms: u64) -> OpenAiProvider {
            let mut cfg = ProviderConfig {
                base_url: format!("http://{addr}/{case}/"),
                api_key: Some("sk-test".into()),
                first_byte_timeout_ms: first_byte_ms,
                connect_timeout_ms: 1000,
                ..Default::default()
            };
            cfg.headers.insert("X-Extra".into(), "yes".into());
            OpenAiProvider::new("mock", &cfg).unwrap()
        }

        fn request() -> ProviderRequest {
            ProviderRequest {
                model: "m".into(),
                messages: vec![crate::message::SharedMessage::shared(msg("user", "hi"))],
                ..Default::default()
            }
        }

        async fn attempt(p: &OpenAiProvider) -> Result<Vec<ProviderEvent>, ProviderError> {
            let s = p.stream(request()).await?;
            s.collect::<Vec<_>>().await.into_iter().collect()
        }

        #[tokio::test]
        async fn status_mapping_over_http() {
            let (addr, _) = server().await;
            assert_eq!(
                attempt(&provider(addr, "429", 2000)).await,
                Err(ProviderError::RateLimited("slow down".into()))
            );
            assert_eq!(
                attempt(&provider(addr, "400", 2000)).await,
                Err(ProviderError::ContextTooLong("maximum context length exceeded".into()))
            );
            assert_eq!(
                attempt(&provider(addr, "401", 2000)).await,
                Err(ProviderError::Upstream(
                    "provider authentication failed (401): Incorrect API key".into()
                ))
            );
            match attempt(&provider(addr, "500", 2000)).await {
                Err(ProviderError::Upstream(m)) => assert!(m.contains("500") && m.contains("boom"), "{m}"),
                other => panic!("unexpected {other:?}"),
            }
        }

        #[tokio::test]
        async fn sse_and_json_over_http() {
            let (addr, shared) = server().await;
            let p = provider(addr, "sse", 2000);
            assert_eq!(
                attempt(&p).await.unwrap(),
                vec![
                    ProviderEvent::Text("Hi".into()),
                    ProviderEvent::Text(" there".into()),
                    ProviderEvent::Finish("stop".into()),
                    ProviderEvent::Usage { prompt_tokens: 3, completion_tokens: 2 },
                ]
            );
            let (body, auth, extra) = shared.seen.lock().unwrap().take().unwrap();
            assert_eq!(body["stream"], json!(true));
            assert_eq!(body["stream_options"]["include_usage"], json!(true));
            assert_eq!(auth.as_deref(), Some("Bearer sk-test"));
            assert_eq!(extra.as_deref(), Some("yes"));
            // A stream read to `[DONE]` leaves its connection in the pool for the next attempt.
            assert_eq!(attempt(&p).await.unwrap().len(), 4);
            {
                let peers = shared.peers.lock().unwrap();
                assert_eq!(peers.len(), 2);
                assert_eq!(peers[0], peers[1], "second attempt opened a new connection");
            }

            assert_eq!(
                attempt(&provider(addr, "json", 2000)).await.unwrap(),
                vec![
                    ProviderEvent::Text("whole".into()),
                    ProviderEvent::Finish("stop".into()),
                    ProviderEvent::Usage { prompt_tokens: 1, completion_tokens: 1 },
                ]
            );
        }

        #[tokio::test]
        async fn first_byte_timeout_and_refused() {
            let (addr, _) = server().await;
            let started = std::time::Instant::now();
            assert!(matches!(attempt(&provider(addr, "slow", 200)).await, Err(ProviderError::Timeout(_))));
            assert!(started.elapsed() < Duration::from_secs(2));

            // A port nobody listens on.
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let dead = l.local_addr().unwrap();
            drop(l);
            match attempt(&provider(dead, "sse", 2000)).await {
                Err(ProviderError::Upstream(m)) => assert!(m.contains("connect"), "{m}"),
                other => panic!("unexpected {other:?}"),
            }
        }

        #[tokio::test]
        async fn the_connect_timeout_covers_the_tls_handshake() {
            // Accepts TCP but never answers the TLS ClientHello.
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let held = tokio::spawn(async move {
                let mut open = Vec::new();
                while let Ok((sock, _)) = listener.accept().await {
                    open.push(sock);
                }
            });
            let cfg = ProviderConfig {
                base_url: format!("https://{addr}/v1"),
                connect_timeout_ms: 200,
                first_byte_timeout_ms: 5000,
                ..Default::default()
            };
            let started = std::time::Instant::now();
            match attempt(&OpenAiProvider::new("tls", &cfg).unwrap()).await {
                Err(ProviderError::Timeout(m)) => {
                    assert!(m.contains("connecting to provider timed out"), "{m}")
                }
                other => panic!("unexpected {other:?}"),
            }
            assert!(started.elapsed() < Duration::from_secs(4), "{:?}", started.elapsed());
            held.abort();
        }

        #[tokio::test]
        async fn dropping_the_stream_closes_the_connection() {
            let (addr, shared) = server().await;
            let (tx, rx) = oneshot::channel();
            *shared.dropped.lock().unwrap() = Some(tx);
            let p = provider(addr, "hang", 2000);
            let mut s = p.stream(request()).await.unwrap();
            assert_eq!(s.next().await, Some(Ok(ProviderEvent::Text("tick".into()))));
            let dropped_at = std::time::Instant::now();
            drop(s);
            // The server notices (its body is dropped) once the socket is gone.
            tokio::time::timeout(Duration::from_secs(2), rx)
                .await
                .expect("upstream connection was not closed after the stream was dropped")
                .unwrap();
            // Far inside the 100 ms the spec allows, plus one 20 ms server tick.
            assert!(dropped_at.elapsed() < Duration::from_millis(500), "{:?}", dropped_at.elapsed());
        }

        // ----- through an egress proxy -----

        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        /// A request head read off `sock` (to the blank line), and any bytes read past it.
        async fn read_head(sock: &mut tokio::net::TcpStream) -> (String, Vec<u8>) {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let rest = buf.split_off(end + 4);
                    return (String::from_utf8(buf).unwrap(), rest);
                }
                let n = sock.read(&mut chunk).await.unwrap();
                assert!(n > 0, "the connection closed inside a request head");
                buf.extend_from_slice(&chunk[..n]);
            }
        }

        /// A `Proxy-Authorization` header's value in `head`, if any.
        fn proxy_auth(head: &str) -> Option<String> {
            head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("proxy-authorization").then(|| v.trim().to_string())
            })
        }

        /// Settings with `proxy` as `ALL_PROXY` and `localhost` as `NO_PROXY`.
        fn proxied(upstream: &str, proxy: &str) -> (ProviderConfig, http::ProxySettings) {
            let cfg = ProviderConfig {
                base_url: upstream.to_string(),
                api_key: Some("sk-test".into()),
                connect_timeout_ms: 2000,
                first_byte_timeout_ms: 2000,
                ..Default::default()
            };
            (
                cfg,
                http::ProxySettings::new(String::new(), String::new(), proxy.to_string(), "localhost".into()),
            )
        }

        #[tokio::test]
        async fn a_plain_http_upstream_is_reached_through_the_forwarding_proxy() {
            let (upstream, shared) = server().await;
            // A forwarding proxy for one connection: it sends every request on to the
            // mock upstream (whatever host it names) and relays the answers back.
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let proxy = listener.local_addr().unwrap();
            let (heads_tx, heads_rx) = oneshot::channel();
            tokio::spawn(async move {
                let (mut client, _) = listener.accept().await.unwrap();
                let (head, rest) = read_head(&mut client).await;
                let _ = heads_tx.send(head.clone());
                let mut up = tokio::net::TcpStream::connect(upstream).await.unwrap();
                up.write_all(head.as_bytes()).await.unwrap();
                up.write_all(&rest).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut client, &mut up).await;
            });
            // A host no resolver knows: only the proxy can have reached it.
            let (cfg, proxies) =
                proxied("http://upstream.invalid:8080/sse/", &format!("http://user:pw@{proxy}"));
            let p = OpenAiProvider::with_proxies("proxied", &cfg, &proxies).unwrap();
            let events = attempt(&p).await.unwrap();
            assert_eq!(events[0], ProviderEvent::Text("Hi".into()));
            assert_eq!(events.len(), 4, "{events:?}");

            let head = heads_rx.await.unwrap();
            let line = head.lines().next().unwrap();
            assert_eq!(line, "POST http://upstream.invalid:8080/sse/chat/completions HTTP/1.1");
            assert_eq!(proxy_auth(&head).as_deref(), Some("Basic dXNlcjpwdw=="), "{head}");
            let (_, auth, _) = shared.seen.lock().unwrap().take().unwrap();
            assert_eq!(auth.as_deref(), Some("Bearer sk-test"));
        }

        #[tokio::test]
        async fn an_https_upstream_is_reached_through_the_proxy_s_tunnel() {
            // A CONNECT proxy that grants the tunnel, then reports the first byte
            // sent through it (the start of the TLS handshake) and hangs up.
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let proxy = listener.local_addr().unwrap();
            let (seen_tx, seen_rx) = oneshot::channel();
            tokio::spawn(async move {
                let (mut client, _) = listener.accept().await.unwrap();
                let (head, mut rest) = read_head(&mut client).await;
                client.write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n").await.unwrap();
                if rest.is_empty() {
                    let mut b = [0u8; 1];
                    client.read_exact(&mut b).await.unwrap();
                    rest.push(b[0]);
                }
                let _ = seen_tx.send((head, rest[0]));
            });
            let (cfg, proxies) = proxied("https://upstream.invalid/v1", &format!("http://user:pw@{proxy}"));
            let p = OpenAiProvider::with_proxies("tunnelled", &cfg, &proxies).unwrap();
            // The TLS handshake cannot finish: the proxy hung up.
            assert!(matches!(attempt(&p).await, Err(ProviderError::Upstream(_))));

            let (head, first) = seen_rx.await.unwrap();
            assert_eq!(head.lines().next().unwrap(), "CONNECT upstream.invalid:443 HTTP/1.1");
            assert_eq!(proxy_auth(&head).as_deref(), Some("Basic dXNlcjpwdw=="), "{head}");
            assert_eq!(first, 0x16, "the tunnel did not carry a TLS handshake");
        }

        #[tokio::test]
        async fn no_proxy_hosts_go_direct_and_other_proxy_kinds_are_refused() {
            let (upstream, _) = server().await;
            // The proxy's port is closed: a request that tried it would fail.
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let dead = l.local_addr().unwrap();
            drop(l);
            let (cfg, proxies) =
                proxied(&format!("http://localhost:{}/sse/", upstream.port()), &format!("http://{dead}"));
            let p = OpenAiProvider::with_proxies("direct", &cfg, &proxies).unwrap();
            assert_eq!(attempt(&p).await.unwrap().len(), 4);
            // No proxy variable at all: direct too.
            let none = http::ProxySettings::new(String::new(), String::new(), String::new(), String::new());
            let p = OpenAiProvider::with_proxies("none", &cfg, &none).unwrap();
            assert_eq!(attempt(&p).await.unwrap().len(), 4);

            let refused = |proxy: &str, expect: &str| {
                let (cfg, proxies) = proxied("https://api.example.com/v1", proxy);
                match OpenAiProvider::with_proxies("p", &cfg, &proxies) {
                    Err(AgentError::Startup(m)) => {
                        assert!(m.contains(expect) && m.contains("models.providers.p"), "{m}");
                        assert!(!m.contains("secret"), "{m}");
                    }
                    other => panic!("{proxy}: unexpected {other:?}"),
                }
            };
            refused("socks5://user:secret@127.0.0.1:1080", "only http:// proxies");
            refused("https://user:secret@proxy.example:3128", "only http:// proxies");
            // A value that is not a proxy URL at all is not ignored (which would go direct).
            refused("ftp://user:secret@proxy.example:21", "HTTPS_PROXY / ALL_PROXY");
            refused("http://user:secret@", "HTTPS_PROXY / ALL_PROXY");
            // ... unless NO_PROXY exempts the host: then no variable applies to it.
            let (cfg, proxies) = proxied(&format!("http://localhost:{}/sse/", upstream.port()), "ftp://x");
            let p = OpenAiProvider::with_proxies("exempt", &cfg, &proxies).unwrap();
            assert_eq!(attempt(&p).await.unwrap().len(), 4);
        }

        #[test]
        fn an_empty_variable_counts_as_unset() {
            let env = |vars: &'static [(&'static str, &'static str)]| {
                http::ProxySettings::from_lookup(move |name| {
                    vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
                })
            };
            let uri: Uri = "https://api.example.com/v1".parse().unwrap();
            let shown =
                |s: &http::ProxySettings| s.route(&uri).unwrap().map(|p| http::proxy_display(p.uri()));
            // The empty upper-case name does not hide the lower-case one.
            let s = env(&[("HTTPS_PROXY", ""), ("https_proxy", "http://proxy.example:3128")]);
            assert_eq!(shown(&s).as_deref(), Some("http://proxy.example:3128"));
            let s = env(&[
                ("HTTPS_PROXY", "http://proxy.example:3128"),
                ("NO_PROXY", " "),
                ("no_proxy", "example.com"),
            ]);
            assert_eq!(shown(&s), None);
            // Under CGI, HTTP_PROXY may come from a request header: ignored.
            let s = env(&[("REQUEST_METHOD", "GET"), ("HTTP_PROXY", "http://evil.example:1")]);
            let plain: Uri = "http://api.example.com/v1".parse().unwrap();
            assert!(s.route(&plain).unwrap().is_none());
        }

        #[test]
        fn a_proxy_is_shown_without_its_credentials() {
            let show = |u: &str| http::proxy_display(&u.parse().unwrap());
            assert_eq!(show("http://user:secret@proxy.example:3128"), "http://proxy.example:3128");
            assert_eq!(show("http://user:secret@[::1]:8080/"), "http://[::1]:8080");
            assert_eq!(show("http://proxy.example"), "http://proxy.example");
        }

        #[test]
        fn credentials_in_the_base_url_are_refused() {
            let cfg = ProviderConfig {
                base_url: "https://user:secret@api.example.com/v1".into(),
                ..Default::default()
            };
            match OpenAiProvider::new("p", &cfg) {
                Err(AgentError::Startup(m)) => {
                    assert!(m.contains("credentials") && !m.contains("secret"), "{m}")
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}
