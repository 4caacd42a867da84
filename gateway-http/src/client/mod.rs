//! The agent-svc client: the only place in gateway-http that speaks gRPC.
//!
//! The rest of the gateway sees [`AgentClient`]'s methods, the typed run
//! stream [`RunEvents`] and [`ApiError`]; statuses are mapped once, in
//! `status`. Behind it, one piece per concern, composed in this order:
//!
//! - `target`: the `--agent-svc` value (a name, an address, or a list);
//! - `discovery`: names resolved again every few seconds, one replica (one
//!   lazily connected HTTP/2 channel) per address, replicas that leave drained;
//! - `pool`: which replica a call goes to (rendezvous hashing of the session
//!   key for stable sessions, least loaded of two random ones otherwise);
//! - `replica`: load, passive ejection after consecutive failures, warm-up;
//! - `health`: active grpc.health.v1 probes;
//! - this file: the calls, with one retry on another replica for a call that
//!   failed before agent-svc started it, and never after, each carrying the
//!   internal token ([`HopCredentials`]); with mutual TLS, each replica's
//!   channel dials through a TLS connector that checks agent-svc's certificate
//!   for the target's host name (not the resolved address).
//!
//! tower's `p2c::Balance` and `retry` layers are not used as such: a session's
//! turns must follow its key (which `Balance` cannot do), and whether a run may
//! be retried is decided by its first event, after the response head, where a
//! `tower::retry` policy no longer sees the call. The same ideas live here as
//! small parts with their own tests.

mod codec;
mod discovery;
mod events;
mod health;
mod pool;
mod replica;
mod status;
mod target;

pub use events::{ended_early, is_token, RunEvent, RunEvents};
pub use health::HEALTH_SERVICE;
pub use replica::ReplicaMetrics;

use crate::error::{ApiError, GatewayError};
use crate::metrics::Metrics;
use codec::SharedCodec;
use discovery::{Discovery, MakeReplica};
use pool::Pool;
use replica::Replica;
use services::config::{LoadedConfig, AGENT_SERVICE_TLS_KEY};
use services::proto::agent_run_request::Session;
use services::proto::agent_service_client::AgentServiceClient;
use services::proto::{
    AbortRunRequest, AbortRunResponse, AgentRunEvent, AgentRunRequest, CompactSessionRequest,
    CompactSessionResponse, DeleteSessionRequest, GetSessionHistoryRequest, GetSessionHistoryResponse,
    ListAgentsRequest, ListAgentsResponse, ListSessionsRequest, ListSessionsResponse, ResetSessionRequest,
};
use services::session_key::{self, SessionSelector};
use services::tls::{ClientTls, GrpcTlsConnector, ALPN_H2};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tonic::transport::{Channel, Endpoint};

/// TCP connect timeout to a replica: a dead address must fail fast (→ retry or 503).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long `AgentRun` may take to say `started` (agent-svc says it at once).
const RUN_OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline for unary calls (`ListAgents`, `ListSessions`, `GetSessionHistory`, `AbortRun`).
const UNARY_TIMEOUT: Duration = Duration::from_secs(10);

/// Limit on a session management call: it waits for the session's turns (up
/// to agent-svc's 30 s) and a compaction may call the model (up to 60 s).
const MANAGE_TIMEOUT: Duration = Duration::from_secs(120);
/// Largest message accepted from agent-svc (histories can be long).
const MAX_DECODE_BYTES: usize = 64 * 1024 * 1024;
/// The agent a request without one runs, when nobody said otherwise.
const FALLBACK_DEFAULT_AGENT: &str = "main";

/// Request-scoped metadata forwarded to agent-svc.
#[derive(Debug, Clone, Default)]
pub struct CallContext {
    /// `x-request-id` (the client's, or a generated uuid).
    pub request_id: String,
    /// W3C `traceparent`, when the HTTP request had one.
    pub traceparent: Option<String>,
}

impl CallContext {
    fn apply(&self, md: &mut MetadataMap) {
        if let Ok(v) = AsciiMetadataValue::try_from(self.request_id.as_str()) {
            md.insert("x-request-id", v);
        }
        if let Some(v) = self.traceparent.as_deref().and_then(|t| AsciiMetadataValue::try_from(t).ok()) {
            md.insert("traceparent", v);
        }
    }
}

/// How the gateway proves itself to agent-svc: the internal token
/// (`gateway.agentService.token`, its file, or env `OPENCLAW_AGENT_SVC_TOKEN`)
/// and mutual TLS (`gateway.agentService.tls`). Read once at start.
#[derive(Clone, Default)]
pub struct HopCredentials {
    /// `Bearer <token>`, parsed once and sent on every AgentService call.
    bearer: Option<AsciiMetadataValue>,
    /// The client config and the name agent-svc's certificate is checked for
    /// (`None`: each target's own host).
    tls: Option<(ClientTls, Option<String>)>,
}

impl std::fmt::Debug for HopCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HopCredentials")
            .field("token", &self.bearer.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl HopCredentials {
    /// The credentials the shared config gives; the certificate files are
    /// checked for changes every `reload_every`.
    pub async fn from_config(
        config: &LoadedConfig,
        reload_every: Duration,
    ) -> Result<HopCredentials, GatewayError> {
        let mut creds = match config.agent_service_token() {
            Some(t) => {
                HopCredentials::token(&t).map_err(|m| config.error("gateway.agentService.token", m))?
            }
            None => HopCredentials::default(),
        };
        if let Some(hop) = config.agent_service_tls()? {
            let tls = ClientTls::client(hop.paths, &[ALPN_H2], reload_every)
                .await
                .map_err(|e| config.tls_error(AGENT_SERVICE_TLS_KEY, e))?;
            creds.tls = Some((tls, hop.server_name));
        }
        Ok(creds)
    }

    /// Only the internal token (plain TCP).
    pub fn token(token: &str) -> Result<HopCredentials, String> {
        let mut bearer = AsciiMetadataValue::try_from(format!("Bearer {token}"))
            .map_err(|_| "the token must be printable ASCII".to_owned())?;
        bearer.set_sensitive(true);
        Ok(HopCredentials { bearer: Some(bearer), tls: None })
    }

    /// The same token, without TLS (the in-process hop of embedded mode).
    pub fn without_tls(self) -> HopCredentials {
        HopCredentials { tls: None, ..self }
    }

    /// Adds the token to a call's metadata.
    fn apply(&self, md: &mut MetadataMap) {
        if let Some(b) = &self.bearer {
            md.insert("authorization", b.clone());
        }
    }

    /// A lazily connected channel to the replica at `addr`, found under `host`
    /// (`None`: an IP target).
    fn channel(&self, addr: SocketAddr, host: Option<&str>) -> Channel {
        let Some((tls, fixed_name)) = &self.tls else {
            return endpoint(addr, "http").connect_lazy();
        };
        let name = fixed_name.as_deref().or(host).and_then(|n| services::tls::server_name(n).ok());
        endpoint(addr, "https").connect_with_connector_lazy(GrpcTlsConnector::new(tls.clone(), name))
    }
}

/// How many agent-svc replicas there are and how many take new calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replicas {
    /// Known replicas.
    pub total: usize,
    /// Replicas taking new calls (serving, not ejected, not draining).
    pub up: usize,
}

/// A cheap-to-clone handle on agent-svc's replicas.
#[derive(Debug, Clone)]
pub struct AgentClient {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Arc<Pool>,
    metrics: Arc<Metrics>,
    credentials: HopCredentials,
    /// The agent of requests that name none, for the session key a call is hashed on.
    default_agent: String,
    /// Stops discovery and probing when the last handle is dropped.
    stop: CancellationToken,
    /// Becomes true once names were resolved for the first time.
    resolved: tokio::sync::watch::Receiver<bool>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentClient").field("replicas", &self.pool.snapshot()).finish_non_exhaustive()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A call's failure, and whether another replica may be tried.
enum Failure {
    /// Failed before agent-svc took the call: refused, reset, no answer, draining.
    Retryable(ApiError),
    /// agent-svc answered (or the run had started): final.
    Final(ApiError),
}

impl Failure {
    fn into_error(self) -> ApiError {
        match self {
            Failure::Retryable(e) | Failure::Final(e) => e,
        }
    }
}

/// Files a failed call's status under its replica: a transport failure counts
/// towards ejection, a draining agent-svc leaves the rotation, an overloaded
/// one is tried elsewhere, anything else is agent-svc's answer and proves the
/// replica alive.
fn classify(replica: &Replica, status: tonic::Status) -> Failure {
    match status::kind(&status) {
        status::Kind::Transport => {
            replica.record_failure(Instant::now());
            Failure::Retryable(status.into())
        }
        status::Kind::Draining => {
            replica.record_draining();
            Failure::Retryable(status.into())
        }
        // At a bound, not unwell: another replica may take it, this one stays in.
        status::Kind::Overloaded => Failure::Retryable(status.into()),
        status::Kind::Answer => {
            replica.record_success();
            Failure::Final(status.into())
        }
    }
}

impl AgentClient {
    /// A client for `url` with its own metrics, `main` as the default agent and
    /// no credentials (see [`AgentClient::connect`]).
    pub fn connect_lazy(url: &str) -> Result<AgentClient, GatewayError> {
        AgentClient::connect(url, FALLBACK_DEFAULT_AGENT, Arc::new(Metrics::new()), HopCredentials::default())
    }

    /// A client for the replicas `spec` names (see `target`: a name, an address,
    /// or a comma-separated list; `http://` optional). Connects lazily, so a
    /// gateway can start before agent-svc; calls made while no replica answers
    /// fail with 503. Resolving names and probing happen in background tasks
    /// (so this needs a tokio runtime), which end when the last handle is dropped.
    /// `default_agent` is the agent of requests that name none; `credentials`
    /// go with every call.
    pub fn connect(
        spec: &str,
        default_agent: &str,
        metrics: Arc<Metrics>,
        credentials: HopCredentials,
    ) -> Result<AgentClient, GatewayError> {
        let bad = |reason: String| GatewayError::AgentSvcUrl { url: spec.trim().to_owned(), reason };
        let targets = target::parse_targets(spec).map_err(bad)?;
        let make: MakeReplica = {
            let metrics = metrics.clone();
            let credentials = credentials.clone();
            Arc::new(move |addr: SocketAddr, host: Option<&str>| {
                let channel = credentials.channel(addr, host);
                Arc::new(Replica::new(addr, channel, MAX_DECODE_BYTES, metrics.replica(addr)))
            })
        };
        let pool = Arc::new(Pool::default());
        let mut discovery = Discovery::new(targets, discovery::system_resolver(), make);
        let stop = CancellationToken::new();
        let (resolved_tx, resolved) = tokio::sync::watch::channel(false);
        if discovery.is_static() {
            discovery.apply_static(&pool);
            let _ = resolved_tx.send(true);
        } else {
            tokio::spawn({
                let (pool, stop) = (pool.clone(), stop.clone());
                async move {
                    // Names are resolved here, not in `connect`, which must not block;
                    // calls made meanwhile wait for it (`replica_for`).
                    discovery.refresh(&pool).await;
                    let _ = resolved_tx.send(true);
                    discovery.run(pool, stop).await;
                }
            });
        }
        let client = AgentClient {
            inner: Arc::new(Inner {
                pool: pool.clone(),
                metrics: metrics.clone(),
                credentials,
                default_agent: default_agent.to_owned(),
                stop: stop.clone(),
                resolved,
            }),
        };
        tokio::spawn(health::run(pool, metrics, stop));
        Ok(client)
    }

    /// The metrics this client records into (the gateway's).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// How many replicas there are and how many take new calls.
    pub fn replicas(&self) -> Replicas {
        let (total, up) = self.inner.pool.counts();
        Replicas { total, up }
    }

    /// The session key a run is hashed on (its full `agent:<id>:…` key), or
    /// `None` for a stateless run (or a key agent-svc will refuse anyway).
    fn affinity(&self, req: &AgentRunRequest) -> Option<String> {
        let selector = match req.session.as_ref()? {
            Session::SessionKey(k) => SessionSelector::Explicit(k),
            Session::User(u) => SessionSelector::User(u),
        };
        let agent = if req.agent_id.is_empty() { &self.inner.default_agent } else { &req.agent_id };
        session_key::resolve(selector, agent, &req.channel).ok().map(|s| s.key)
    }

    /// A replica for a call, or 503 when there is none at all. Right after
    /// start, waits for the first resolution of the names (a few ms).
    async fn replica_for(&self, affinity: Option<&str>) -> Result<Arc<Replica>, ApiError> {
        if let Some(r) = self.pick(affinity, &[]) {
            return Ok(r);
        }
        let mut resolved = self.inner.resolved.clone();
        let _ = tokio::time::timeout(discovery::RESOLVE_TIMEOUT, resolved.wait_for(|done| *done)).await;
        self.pick(affinity, &[]).ok_or_else(no_replica)
    }

    /// A replica for a call, not one of `exclude`.
    fn pick(&self, affinity: Option<&str>, exclude: &[SocketAddr]) -> Option<Arc<Replica>> {
        self.inner.pool.pick(affinity, exclude)
    }

    /// Starts a run on the session's replica (stable sessions) or the least
    /// loaded of two (stateless), and returns its events once agent-svc has
    /// said `started`. A call that fails before that (refused, reset, no answer
    /// in time, agent-svc draining) is tried once more on another replica. An
    /// error status from agent-svc (validation, unknown agent, session queue
    /// full) comes back as the mapped [`ApiError`]; later failures arrive as the
    /// stream's `Err` item. Dropping the stream cancels the run in agent-svc.
    pub async fn run(&self, request: AgentRunRequest, ctx: &CallContext) -> Result<RunEvents, ApiError> {
        let affinity = self.affinity(&request);
        let request = Arc::new(request);
        let first = self.replica_for(affinity.as_deref()).await?;
        let failure = match self.try_run(&first, &request, ctx).await {
            Ok(events) => return Ok(events),
            Err(f) => f,
        };
        let Failure::Retryable(e) = failure else { return Err(failure.into_error()) };
        let Some(second) =
            self.pick(affinity.as_deref(), &[first.addr()]).filter(|r| r.addr() != first.addr())
        else {
            return Err(e);
        };
        first.record_retry();
        tracing::debug!(from = %first.addr(), to = %second.addr(), error = %e, "AgentRun retried on another replica");
        self.try_run(&second, &request, ctx).await.map_err(Failure::into_error)
    }

    async fn try_run(
        &self,
        replica: &Arc<Replica>,
        request: &Arc<AgentRunRequest>,
        ctx: &CallContext,
    ) -> Result<RunEvents, Failure> {
        let in_flight = replica.begin_call();
        let open = async {
            let mut grpc =
                tonic::client::Grpc::new(replica.channel()).max_decoding_message_size(MAX_DECODE_BYTES);
            grpc.ready()
                .await
                .map_err(|e| tonic::Status::unavailable(format!("agent-svc not reachable: {e}")))?;
            let mut req = tonic::Request::new(request.clone());
            ctx.apply(req.metadata_mut());
            self.inner.credentials.apply(req.metadata_mut());
            req.extensions_mut().insert(tonic::GrpcMethod::new("openclaw.agent.v1.AgentService", "AgentRun"));
            let path = http::uri::PathAndQuery::from_static("/openclaw.agent.v1.AgentService/AgentRun");
            let mut stream = grpc
                .server_streaming(req, path, SharedCodec::<AgentRunRequest, AgentRunEvent>::default())
                .await?
                .into_inner();
            // agent-svc sends `started` first and at once; until it has, the call may go elsewhere.
            let first = stream.message().await?;
            Ok::<_, tonic::Status>((stream, first))
        };
        match tokio::time::timeout(RUN_OPEN_TIMEOUT, open).await {
            Ok(Ok((stream, Some(first)))) => {
                replica.record_success();
                Ok(RunEvents::new(stream, first, in_flight))
            }
            Ok(Ok((_, None))) => {
                replica.record_failure(Instant::now());
                Err(Failure::Retryable(ended_early()))
            }
            Ok(Err(status)) => Err(classify(replica, status)),
            Err(_) => {
                replica.record_failure(Instant::now());
                Err(Failure::Retryable(ApiError::AgentUnavailable(
                    "agent-svc did not start the run in time.".into(),
                )))
            }
        }
    }

    /// The configured agents and the default one.
    pub async fn list_agents(&self, ctx: &CallContext) -> Result<ListAgentsResponse, ApiError> {
        self.unary(
            "ListAgents",
            None,
            ctx,
            UNARY_TIMEOUT,
            || ListAgentsRequest {},
            |mut c, r| async move { c.list_agents(r).await },
        )
        .await
    }

    /// Stored sessions, most recently updated first (`agent_id` empty: all
    /// agents; `limit` 0: agent-svc's default).
    pub async fn list_sessions(
        &self,
        agent_id: &str,
        limit: u32,
        ctx: &CallContext,
    ) -> Result<ListSessionsResponse, ApiError> {
        let make = || ListSessionsRequest { agent_id: agent_id.to_owned(), limit };
        self.unary("ListSessions", None, ctx, UNARY_TIMEOUT, make, |mut c, r| async move {
            c.list_sessions(r).await
        })
        .await
    }

    /// A page of a session's transcript (full `agent:<id>:…` key): the newest
    /// `limit` entries (agent-svc's page when 0) older than `before_seq`. An
    /// unknown session is a 404 `ApiError`. Asked of the session's own replica
    /// (where its turns run).
    pub async fn session_history(
        &self,
        session_key: &str,
        limit: u32,
        before_seq: Option<i64>,
        ctx: &CallContext,
    ) -> Result<GetSessionHistoryResponse, ApiError> {
        let make = || GetSessionHistoryRequest { session_key: session_key.to_owned(), limit, before_seq };
        self.unary("GetSessionHistory", Some(session_key), ctx, UNARY_TIMEOUT, make, |mut c, r| async move {
            c.get_session_history(r).await
        })
        .await
    }

    /// Drops a session's transcript, keeping its key; whether it existed.
    pub async fn reset_session(&self, session_key: &str, ctx: &CallContext) -> Result<bool, ApiError> {
        let make = || ResetSessionRequest { session_key: session_key.to_owned() };
        let r = self
            .unary("ResetSession", Some(session_key), ctx, MANAGE_TIMEOUT, make, |mut c, r| async move {
                c.reset_session(r).await
            })
            .await?;
        Ok(r.existed)
    }

    /// Deletes a session; whether it existed.
    pub async fn delete_session(&self, session_key: &str, ctx: &CallContext) -> Result<bool, ApiError> {
        let make = || DeleteSessionRequest { session_key: session_key.to_owned() };
        let r = self
            .unary("DeleteSession", Some(session_key), ctx, MANAGE_TIMEOUT, make, |mut c, r| async move {
                c.delete_session(r).await
            })
            .await?;
        Ok(r.deleted)
    }

    /// Compacts a session now. An unknown session is a 404 `ApiError`.
    pub async fn compact_session(
        &self,
        session_key: &str,
        ctx: &CallContext,
    ) -> Result<CompactSessionResponse, ApiError> {
        let make = || CompactSessionRequest { session_key: session_key.to_owned() };
        self.unary("CompactSession", Some(session_key), ctx, MANAGE_TIMEOUT, make, |mut c, r| async move {
            c.compact_session(r).await
        })
        .await
    }

    /// Aborts a running turn by run id, or (with `run_id` empty) the running
    /// turn of a session (full key). Asked of every replica (a run may have been
    /// retried, or started by another gateway); returns the ids that were
    /// aborted. Fails only when no replica answered.
    pub async fn abort_run(
        &self,
        run_id: &str,
        session_key: &str,
        ctx: &CallContext,
    ) -> Result<AbortRunResponse, ApiError> {
        self.replica_for(None).await?;
        let replicas = self.inner.pool.snapshot();
        let calls = replicas.iter().map(|replica| {
            let req = AbortRunRequest { run_id: run_id.to_owned(), session_key: session_key.to_owned() };
            self.call_on(replica, "AbortRun", ctx, UNARY_TIMEOUT, req, |mut c, r| async move {
                c.abort_run(r).await
            })
        });
        let mut aborted = Vec::new();
        let mut answered = false;
        let mut first_error = None;
        for result in futures::future::join_all(calls).await {
            match result {
                Ok(resp) => {
                    answered = true;
                    aborted.extend(resp.aborted_run_ids);
                }
                Err(f) => {
                    first_error.get_or_insert(f.into_error());
                }
            }
        }
        if let (false, Some(e)) = (answered, first_error) {
            return Err(e);
        }
        Ok(AbortRunResponse { aborted_run_ids: aborted })
    }

    /// One unary call, tried once more on another replica when the first
    /// failed before agent-svc answered (all of these calls are safe to repeat).
    async fn unary<Req, Resp, M, F, Fut>(
        &self,
        name: &'static str,
        affinity: Option<&str>,
        ctx: &CallContext,
        timeout: Duration,
        make: M,
        call: F,
    ) -> Result<Resp, ApiError>
    where
        M: Fn() -> Req,
        F: Fn(AgentServiceClient<Channel>, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let first = self.replica_for(affinity).await?;
        let failure = match self.call_on(&first, name, ctx, timeout, make(), &call).await {
            Ok(resp) => return Ok(resp),
            Err(f) => f,
        };
        let Failure::Retryable(e) = failure else { return Err(failure.into_error()) };
        let Some(second) = self.pick(affinity, &[first.addr()]).filter(|r| r.addr() != first.addr()) else {
            return Err(e);
        };
        first.record_retry();
        self.call_on(&second, name, ctx, timeout, make(), &call).await.map_err(Failure::into_error)
    }

    /// One unary call on `replica` with the call context and `timeout` (sent
    /// as the gRPC deadline and enforced here too).
    async fn call_on<Req, Resp, F, Fut>(
        &self,
        replica: &Arc<Replica>,
        name: &'static str,
        ctx: &CallContext,
        timeout: Duration,
        message: Req,
        call: F,
    ) -> Result<Resp, Failure>
    where
        F: FnOnce(AgentServiceClient<Channel>, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let _in_flight = replica.begin_call();
        let mut req = tonic::Request::new(message);
        req.set_timeout(timeout);
        ctx.apply(req.metadata_mut());
        self.inner.credentials.apply(req.metadata_mut());
        match tokio::time::timeout(timeout, call(replica.agents(), req)).await {
            Ok(Ok(resp)) => {
                replica.record_success();
                Ok(resp.into_inner())
            }
            Ok(Err(status)) => Err(classify(replica, status)),
            Err(_) => {
                replica.record_failure(Instant::now());
                Err(Failure::Retryable(tonic::Status::deadline_exceeded(format!("{name} timed out")).into()))
            }
        }
    }

    /// Whether at least one replica takes new calls, probing them all now.
    pub async fn health(&self) -> bool {
        self.readiness().await.up > 0
    }

    /// [`AgentClient::replicas`] after probing every replica now (at most
    /// [`health::PROBE_TIMEOUT`]), so `/readyz` and the WebSocket `health` tell
    /// the present, not the last periodic probe.
    pub async fn readiness(&self) -> Replicas {
        self.replica_for(None).await.ok();
        health::probe_all(&self.inner.pool, &self.inner.metrics).await;
        self.replicas()
    }
}

/// The error when the pool is empty (names not resolved yet, or to nothing).
fn no_replica() -> ApiError {
    ApiError::AgentUnavailable("No agent-svc replica is known.".into())
}

/// The channel settings of one replica (`scheme`: `http`, or `https` when the
/// channel's connector speaks TLS).
fn endpoint(addr: SocketAddr, scheme: &str) -> Endpoint {
    // `<scheme>://<addr>` always parses: the address is a resolved socket address.
    Endpoint::from_shared(format!("{scheme}://{addr}"))
        .unwrap_or_else(|_| Endpoint::from_static("http://127.0.0.1:50051"))
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10))
        // No `http2_adaptive_window`: with it, h2 (0.4.20) answers a long run of
        // small DATA frames (one per delta) with GOAWAY ENHANCE_YOUR_CALM,
        // which kills every run on the channel.
        .keep_alive_while_idle(true)
        // All runs share this connection: a small per-stream window and a large
        // connection window keep a few clients that stop reading (their runs'
        // unread bytes hold window) from stalling everyone else's runs.
        .initial_stream_window_size(256 * 1024)
        .initial_connection_window_size(64 * 1024 * 1024)
        // A run whose client leaves is reset (that is how agent-svc learns to
        // cancel it), and agent-svc's frames already in flight for it arrive
        // after. h2 ignores them while it remembers the reset (default: 50 streams
        // for 1 s); each one for a forgotten stream counts towards a limit that
        // ends in a GOAWAY failing every run on the connection. Remember more for
        // longer, and do not cap the count on this connection: its peer is our own
        // agent-svc, not an adversary (the cap exists against hostile servers).
        .http2_max_concurrent_reset_streams(4096)
        .http2_reset_stream_duration(Duration::from_secs(5))
        .http2_max_local_error_reset_streams(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn urls() {
        assert!(AgentClient::connect_lazy("http://127.0.0.1:50051").is_ok());
        assert!(AgentClient::connect_lazy("agent-svc:50051").is_ok());
        assert!(AgentClient::connect_lazy("a:1,b:2,10.0.0.1:3").is_ok());
        assert!(matches!(AgentClient::connect_lazy("https://x:1"), Err(GatewayError::AgentSvcUrl { .. })));
        assert!(matches!(
            AgentClient::connect_lazy("http://exa mple"),
            Err(GatewayError::AgentSvcUrl { .. })
        ));
    }

    #[tokio::test]
    async fn unreachable_is_503_and_not_ready() {
        // Bind then drop to get a port nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let c = AgentClient::connect_lazy(&format!("http://127.0.0.1:{port}")).unwrap();
        assert!(!c.health().await);
        let e = c.run(AgentRunRequest::default(), &CallContext::default()).await.unwrap_err();
        assert_eq!(e.status(), http::StatusCode::SERVICE_UNAVAILABLE);
        let e = c.list_agents(&CallContext::default()).await.unwrap_err();
        assert_eq!(e.status(), http::StatusCode::SERVICE_UNAVAILABLE);
        let ctx = CallContext::default();
        let e = c.list_sessions("", 0, &ctx).await.unwrap_err();
        assert_eq!(e.status(), http::StatusCode::SERVICE_UNAVAILABLE);
        let e = c.session_history("agent:main:x", 0, None, &ctx).await.unwrap_err();
        assert_eq!(e.status(), http::StatusCode::SERVICE_UNAVAILABLE);
        let e = c.abort_run("r", "", &ctx).await.unwrap_err();
        assert_eq!(e.ws_code(), "UNAVAILABLE");
    }
}
