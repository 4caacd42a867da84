//! Load generation: the endpoints, one keep-alive HTTP/1.1 connection per worker,
//! the answer checks (the SSE ones with the tests' parser, [`e2e::sse`]), and one
//! measured run of C workers.

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use e2e::procfs::{deltas, MachineTicks, Sample};
use e2e::sse::{SseItem, SseParser};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Barrier;

/// The request path on both the mock and the gateway.
const PATH: &str = "/v1/chat/completions";
/// The non-streaming request body (direct and through the gateway).
pub(crate) const BODY: &str = r#"{"model":"openclaw","messages":[{"role":"user","content":"hi"}]}"#;
/// The streaming request body. It asks for usage because agent-svc always does
/// upstream: so the mock sends the same events on both paths.
const STREAM_BODY: &str = r#"{"model":"openclaw","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}"#;
/// The mock's full answer (see `mock-upstream`), checked once per path before measuring.
const ANSWER: &str = "Hello from the mock.";

/// Which path a run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// Straight to mock-upstream.
    Direct,
    /// Through gateway-http (and agent-svc).
    Gateway,
}

impl Route {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Route::Direct => "direct",
            Route::Gateway => "gateway",
        }
    }
}

/// One endpoint to load and the constant parts of its requests.
#[derive(Clone)]
pub(crate) struct Target {
    pub(crate) route: Route,
    pub(crate) addr: SocketAddr,
    host: HeaderValue,
    pub(crate) auth: Option<HeaderValue>,
}

impl Target {
    pub(crate) fn new(route: Route, addr: SocketAddr, token: Option<&str>) -> Self {
        let host = HeaderValue::from_str(&addr.to_string()).unwrap_or(HeaderValue::from_static("127.0.0.1"));
        let auth = token.and_then(|t| HeaderValue::from_str(&format!("Bearer {t}")).ok());
        Self { route, addr, host, auth }
    }

    /// A POST of `body` to [`PATH`].
    pub(crate) fn request(&self, body: &Bytes, stream: bool) -> Request<Full<Bytes>> {
        let mut req = Request::new(Full::new(body.clone()));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = Uri::from_static(PATH);
        let h = req.headers_mut();
        h.insert(HOST, self.host.clone());
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if stream {
            h.insert(ACCEPT, HeaderValue::from_static("text/event-stream"));
        }
        if let Some(a) = &self.auth {
            h.insert(AUTHORIZATION, a.clone());
        }
        req
    }
}

/// One HTTP/1.1 keep-alive connection, reopened after any error.
pub(crate) struct Client {
    conn: Option<SendRequest<Full<Bytes>>>,
    check: StreamCheck,
}

impl Client {
    pub(crate) fn new() -> Self {
        Self { conn: None, check: StreamCheck::default() }
    }

    /// The open connection, connecting first when there is none.
    pub(crate) async fn connect(&mut self, addr: SocketAddr) -> Result<&mut SendRequest<Full<Bytes>>> {
        if self.conn.as_ref().is_some_and(|c| c.is_closed()) {
            self.conn = None;
        }
        if self.conn.is_none() {
            let tcp =
                tokio::net::TcpStream::connect(addr).await.with_context(|| format!("connect {addr}"))?;
            tcp.set_nodelay(true)?;
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            return Ok(self.conn.insert(sender));
        }
        self.conn.as_mut().context("no connection")
    }

    /// Sends one request and reads the response to its end. Returns when the
    /// first content delta arrived (SSE only). Any failure drops the connection.
    pub(crate) async fn send(
        &mut self,
        t: &Target,
        body: &Bytes,
        stream: bool,
        timeout: Duration,
    ) -> Result<Option<Instant>> {
        let r = match tokio::time::timeout(timeout, self.send_inner(t, body, stream)).await {
            Ok(r) => r,
            Err(_) => Err(anyhow!("timed out after {} ms", timeout.as_millis())),
        };
        if r.is_err() {
            self.conn = None;
        }
        r
    }

    async fn send_inner(&mut self, t: &Target, body: &Bytes, stream: bool) -> Result<Option<Instant>> {
        let sender = self.connect(t.addr).await?;
        sender.ready().await?;
        let resp = sender.send_request(t.request(body, stream)).await?;
        let status = resp.status();
        let mut body = resp.into_body();
        if status != StatusCode::OK {
            let bytes = body.collect().await?.to_bytes();
            let text = String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned();
            bail!("HTTP {status}: {text}");
        }
        if !stream {
            while let Some(frame) = body.frame().await {
                frame?;
            }
            return Ok(None);
        }
        self.check.reset();
        let mut first = None;
        while let Some(frame) = body.frame().await {
            if let Some(data) = frame?.data_ref() {
                if self.check.feed(data)? && first.is_none() {
                    first = Some(Instant::now());
                }
            }
        }
        self.check.finish()?;
        Ok(first)
    }
}

/// Checks a streamed answer as it arrives, with the tests' SSE parser
/// ([`SseParser`]): notes the first non-empty `delta.content` and `data: [DONE]`,
/// and fails on an error event. JSON is parsed only until the first content.
#[derive(Default)]
struct StreamCheck {
    parser: SseParser,
    content: bool,
    done: bool,
}

/// The part of a chunk the checks read.
#[derive(Deserialize)]
pub(crate) struct Chunk {
    #[serde(default)]
    pub(crate) choices: Vec<ChunkChoice>,
}

#[derive(Deserialize)]
pub(crate) struct ChunkChoice {
    #[serde(default)]
    pub(crate) delta: Option<Delta>,
}

#[derive(Deserialize)]
pub(crate) struct Delta {
    #[serde(default)]
    pub(crate) content: Option<String>,
}

impl StreamCheck {
    fn reset(&mut self) {
        self.parser.reset();
        self.content = false;
        self.done = false;
    }

    /// Feeds body bytes; true once a content delta has been seen.
    fn feed(&mut self, data: &[u8]) -> Result<bool> {
        let Self { parser, content, done } = self;
        parser.feed(data, |item| match item {
            SseItem::Event { data, .. } => on_event(data, content, done),
            SseItem::Comment(_) => Ok(()),
        })?;
        Ok(self.content)
    }

    /// An error unless the stream had content and ended with `data: [DONE]`.
    pub(crate) fn finish(&mut self) -> Result<()> {
        if self.parser.is_mid_event() {
            bail!("the stream ended inside an event");
        }
        if !self.content {
            bail!("the stream had no content delta");
        }
        if !self.done {
            bail!("the stream ended without data: [DONE]");
        }
        Ok(())
    }
}

/// One event of a streamed answer.
fn on_event(payload: &[u8], content: &mut bool, done: &mut bool) -> Result<()> {
    if payload == b"[DONE]" {
        *done = true;
        return Ok(());
    }
    if *done {
        bail!("an event after data: [DONE]");
    }
    if payload.starts_with(b"{\"error\"") {
        bail!("error event: {}", String::from_utf8_lossy(payload));
    }
    if !*content {
        let chunk: Chunk = serde_json::from_slice(payload).context("an SSE chunk that is not JSON")?;
        *content = chunk
            .choices
            .iter()
            .any(|c| c.delta.as_ref().and_then(|d| d.content.as_deref()).is_some_and(|s| !s.is_empty()));
    }
    Ok(())
}

/// One request with the answer checked: JSON must contain the mock's answer,
/// SSE must carry content and end with `[DONE]`.
pub(crate) async fn smoke(t: &Target, stream: bool, timeout: Duration) -> Result<()> {
    if stream {
        let mut c = Client::new();
        c.send(t, &Bytes::from_static(STREAM_BODY.as_bytes()), true, timeout).await?;
        return Ok(());
    }
    let fut = async {
        let mut c = Client::new();
        let sender = c.connect(t.addr).await?;
        let resp = sender.send_request(t.request(&Bytes::from_static(BODY.as_bytes()), false)).await?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        let text = String::from_utf8_lossy(&bytes);
        if status != StatusCode::OK {
            bail!("HTTP {status}: {}", text.chars().take(300).collect::<String>());
        }
        let v: serde_json::Value = serde_json::from_slice(&bytes).context("the answer is not JSON")?;
        let content = v.pointer("/choices/0/message/content").and_then(|c| c.as_str());
        if content != Some(ANSWER) {
            bail!(
                "unexpected answer (want content {ANSWER:?}): {}",
                text.chars().take(300).collect::<String>()
            );
        }
        Ok(())
    };
    tokio::time::timeout(timeout, fut).await.map_err(|_| anyhow!("timed out"))?
}

/// The shape of one measured run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RunSpec {
    pub(crate) stream: bool,
    pub(crate) concurrency: usize,
    pub(crate) requests: usize,
    pub(crate) warmup: usize,
    pub(crate) timeout: Duration,
    /// Failed requests after which the workers stop.
    pub(crate) max_errors: usize,
}

/// Counters the workers of one run share.
struct Shared {
    pub(crate) spec: RunSpec,
    body: Bytes,
    warm: AtomicUsize,
    next: AtomicUsize,
    warm_errors: AtomicUsize,
    pub(crate) errors: AtomicUsize,
    /// All workers connected and warm: the driver samples CPU, then opens `go`.
    pub(crate) ready: Barrier,
    go: Barrier,
}

/// What one worker measured (nanoseconds).
struct WorkerOut {
    pub(crate) total: Vec<u64>,
    pub(crate) ttfb: Vec<u64>,
    pub(crate) errors: u64,
    pub(crate) first_error: Option<String>,
}

/// The outcome of one measured run.
pub(crate) struct RunResult {
    pub(crate) route: Route,
    pub(crate) spec: RunSpec,
    pub(crate) wall: Duration,
    /// Successful requests' latency, sorted (ns).
    pub(crate) total: Vec<u64>,
    /// Time to the first content delta, sorted (ns; SSE only).
    pub(crate) ttfb: Vec<u64>,
    pub(crate) errors: u64,
    pub(crate) first_error: Option<String>,
    /// CPU ticks per child process over the measured phase (same order as the processes).
    pub(crate) cpu_ticks: Vec<u64>,
    /// Context switches per child process (all threads) over the measured phase.
    pub(crate) ctx_switches: Vec<u64>,
    /// The load generator's own CPU ticks.
    pub(crate) self_ticks: u64,
    /// Machine-wide busy and steal ticks over the measured phase (all cores).
    pub(crate) machine: MachineTicks,
}

/// One measured run: C workers, warm-up, then N requests back to back.
pub(crate) async fn run(target: Arc<Target>, spec: RunSpec, pids: &[u32]) -> Result<RunResult> {
    let c = spec.concurrency;
    let shared = Arc::new(Shared {
        spec,
        body: Bytes::from_static(if spec.stream { STREAM_BODY } else { BODY }.as_bytes()),
        warm: AtomicUsize::new(0),
        next: AtomicUsize::new(0),
        warm_errors: AtomicUsize::new(0),
        errors: AtomicUsize::new(0),
        ready: Barrier::new(c + 1),
        go: Barrier::new(c + 1),
    });
    let handles: Vec<_> = (0..c).map(|_| tokio::spawn(worker(target.clone(), shared.clone()))).collect();
    shared.ready.wait().await;
    // A failed sample is reported after the workers ran (they wait on `go`).
    let before = Sample::take(pids);
    let start = Instant::now();
    shared.go.wait().await;
    let mut outs = Vec::with_capacity(c);
    for h in handles {
        outs.push(h.await.context("a load worker panicked")?);
    }
    let wall = start.elapsed();
    let after = Sample::take(pids)?;
    let before = before?;

    let mut total = Vec::with_capacity(spec.requests);
    let mut ttfb = Vec::with_capacity(if spec.stream { spec.requests } else { 0 });
    let mut errors = 0;
    let mut first_error = None;
    for o in outs {
        total.extend_from_slice(&o.total);
        ttfb.extend_from_slice(&o.ttfb);
        errors += o.errors;
        if first_error.is_none() {
            first_error = o.first_error;
        }
    }
    total.sort_unstable();
    ttfb.sort_unstable();
    Ok(RunResult {
        route: target.route,
        spec,
        wall,
        total,
        ttfb,
        errors,
        first_error,
        cpu_ticks: deltas(&after.cpu, &before.cpu),
        ctx_switches: deltas(&after.ctx, &before.ctx),
        self_ticks: after.self_cpu.saturating_sub(before.self_cpu),
        machine: MachineTicks {
            busy: after.machine.busy.saturating_sub(before.machine.busy),
            steal: after.machine.steal.saturating_sub(before.machine.steal),
        },
    })
}

/// One load worker: its share of the warm-up, then requests until the counter reaches N.
async fn worker(t: Arc<Target>, s: Arc<Shared>) -> WorkerOut {
    let spec = s.spec;
    let cap = spec.requests / spec.concurrency + 2;
    let mut out = WorkerOut {
        total: Vec::with_capacity(cap),
        ttfb: Vec::with_capacity(if spec.stream { cap } else { 0 }),
        errors: 0,
        first_error: None,
    };
    let mut client = Client::new();
    while s.warm_errors.load(Ordering::Relaxed) < spec.max_errors
        && s.warm.fetch_add(1, Ordering::Relaxed) < spec.warmup
    {
        if client.send(&t, &s.body, spec.stream, spec.timeout).await.is_err() {
            s.warm_errors.fetch_add(1, Ordering::Relaxed);
        }
    }
    // Connect before the clock starts (a failure shows up as errors below).
    let _ = tokio::time::timeout(spec.timeout, client.connect(t.addr)).await;
    s.ready.wait().await;
    s.go.wait().await;
    while s.errors.load(Ordering::Relaxed) < spec.max_errors
        && s.next.fetch_add(1, Ordering::Relaxed) < spec.requests
    {
        let start = Instant::now();
        match client.send(&t, &s.body, spec.stream, spec.timeout).await {
            Ok(first) => {
                out.total.push(nanos(start.elapsed()));
                if let Some(f) = first {
                    out.ttfb.push(nanos(f.duration_since(start)));
                }
            }
            Err(e) => {
                out.errors += 1;
                s.errors.fetch_add(1, Ordering::Relaxed);
                if out.first_error.is_none() {
                    out.first_error = Some(format!("{e:#}"));
                }
            }
        }
    }
    out
}

/// A duration in nanoseconds, saturating.
pub(crate) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl RunResult {
    /// `direct JSON c=1` style.
    pub(crate) fn label(&self) -> String {
        format!(
            "{} {} c={}",
            self.route.label(),
            if self.spec.stream { "SSE" } else { "JSON" },
            self.spec.concurrency
        )
    }

    /// Requests sent in the measured phase (fewer than asked when it stopped on errors).
    pub(crate) fn attempted(&self) -> u64 {
        self.total.len() as u64 + self.errors
    }

    pub(crate) fn rps(&self) -> f64 {
        self.total.len() as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    /// CPU µs per measured request (successful or not) for a tick count.
    pub(crate) fn us_per_req(&self, ticks: u64, clk_tck: u64) -> f64 {
        ticks as f64 * 1e6 / clk_tck as f64 / self.attempted().max(1) as f64
    }
}
