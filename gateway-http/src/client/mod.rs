//! The agent-svc client: the only place in gateway-http that speaks gRPC.
//!
//! The rest of the gateway sees [`AgentClient`]'s methods, the typed run
//! stream [`RunEvents`] and [`ApiError`]; statuses are mapped once, in
//! `status`. One lazily connected [`Channel`] to one address for now. Spreading
//! calls over several replicas (DNS re-resolution, rendezvous hashing on the
//! session key, retry before the first event, ejection) belongs behind this
//! same type, so nothing else in the crate changes.

mod events;
mod status;

pub use events::{ended_early, is_token, RunEvent, RunEvents};

use crate::error::{ApiError, GatewayError};
use services::proto::agent_service_client::AgentServiceClient;
use services::proto::{
    AbortRunRequest, AbortRunResponse, AgentRunRequest, GetSessionHistoryRequest, GetSessionHistoryResponse,
    ListAgentsRequest, ListAgentsResponse, ListSessionsRequest, ListSessionsResponse,
};
use std::future::Future;
use std::time::Duration;
use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// The gRPC service name agent-svc reports health under.
pub const HEALTH_SERVICE: &str = "openclaw.agent.v1.AgentService";
/// TCP connect timeout to agent-svc: a dead address must fail fast (→ 503).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long `AgentRun` may take to open its stream.
const RUN_OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a readiness check may take.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
/// Deadline for unary calls (`ListAgents`, `ListSessions`, `GetSessionHistory`, `AbortRun`).
const UNARY_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest message accepted from agent-svc (histories can be long).
const MAX_DECODE_BYTES: usize = 64 * 1024 * 1024;

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

/// A cheap-to-clone handle on agent-svc.
#[derive(Debug, Clone)]
pub struct AgentClient {
    agents: AgentServiceClient<Channel>,
    health: HealthClient<Channel>,
}

impl AgentClient {
    /// A client for `url` (`http://host:port`, or just `host:port`). Connects
    /// lazily, so a gateway can start before agent-svc; calls made while it is
    /// unreachable fail with 503.
    pub fn connect_lazy(url: &str) -> Result<AgentClient, GatewayError> {
        let url = url.trim();
        let full = if url.contains("://") { url.to_owned() } else { format!("http://{url}") };
        let bad = |reason: String| GatewayError::AgentSvcUrl { url: url.to_owned(), reason };
        if !full.starts_with("http://") {
            return Err(bad("only http:// (h2c) is supported".into()));
        }
        let endpoint = Endpoint::from_shared(full)
            .map_err(|e| bad(e.to_string()))?
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
            .initial_connection_window_size(64 * 1024 * 1024);
        let channel = endpoint.connect_lazy();
        Ok(AgentClient {
            agents: AgentServiceClient::new(channel.clone()).max_decoding_message_size(MAX_DECODE_BYTES),
            health: HealthClient::new(channel),
        })
    }

    /// Starts a run. An error status before the stream opens (validation,
    /// unknown agent, session queue full, unreachable) comes back as the mapped
    /// [`ApiError`]; later failures arrive as the stream's `Err` item.
    /// Dropping the stream cancels the run in agent-svc.
    pub async fn run(&self, request: AgentRunRequest, ctx: &CallContext) -> Result<RunEvents, ApiError> {
        let mut req = tonic::Request::new(request);
        ctx.apply(req.metadata_mut());
        // agent-svc answers at once (it sends `started` before any queueing), so a
        // call that does not open in time means agent-svc is stuck, not busy.
        let resp = tokio::time::timeout(RUN_OPEN_TIMEOUT, self.agents.clone().agent_run(req))
            .await
            .map_err(|_| ApiError::AgentUnavailable("agent-svc did not start the run in time.".into()))??;
        Ok(RunEvents::new(resp.into_inner()))
    }

    /// The configured agents and the default one.
    pub async fn list_agents(&self, ctx: &CallContext) -> Result<ListAgentsResponse, ApiError> {
        self.unary("ListAgents", ListAgentsRequest {}, ctx, |mut c, r| async move { c.list_agents(r).await })
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
        let req = ListSessionsRequest { agent_id: agent_id.to_owned(), limit };
        self.unary("ListSessions", req, ctx, |mut c, r| async move { c.list_sessions(r).await }).await
    }

    /// The transcript of a session (full `agent:<id>:…` key); the last `limit`
    /// messages, all when 0. An unknown session is a 404 `ApiError`.
    pub async fn session_history(
        &self,
        session_key: &str,
        limit: u32,
        ctx: &CallContext,
    ) -> Result<GetSessionHistoryResponse, ApiError> {
        let req = GetSessionHistoryRequest { session_key: session_key.to_owned(), limit };
        self.unary("GetSessionHistory", req, ctx, |mut c, r| async move { c.get_session_history(r).await })
            .await
    }

    /// Aborts a running turn by run id, or (with `run_id` empty) the running
    /// turn of a session (full key). Returns the ids that were aborted.
    pub async fn abort_run(
        &self,
        run_id: &str,
        session_key: &str,
        ctx: &CallContext,
    ) -> Result<AbortRunResponse, ApiError> {
        let req = AbortRunRequest { run_id: run_id.to_owned(), session_key: session_key.to_owned() };
        self.unary("AbortRun", req, ctx, |mut c, r| async move { c.abort_run(r).await }).await
    }

    /// One unary call with the call context and [`UNARY_TIMEOUT`] (sent as the
    /// gRPC deadline and enforced here too).
    async fn unary<Req, Resp, F, Fut>(
        &self,
        name: &'static str,
        message: Req,
        ctx: &CallContext,
        call: F,
    ) -> Result<Resp, ApiError>
    where
        F: FnOnce(AgentServiceClient<Channel>, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let mut req = tonic::Request::new(message);
        req.set_timeout(UNARY_TIMEOUT);
        ctx.apply(req.metadata_mut());
        match tokio::time::timeout(UNARY_TIMEOUT, call(self.agents.clone(), req)).await {
            Ok(r) => Ok(r?.into_inner()),
            Err(_) => Err(tonic::Status::deadline_exceeded(format!("{name} timed out")).into()),
        }
    }

    /// Whether agent-svc answers its gRPC health check as `SERVING`.
    pub async fn health(&self) -> bool {
        let req = HealthCheckRequest { service: HEALTH_SERVICE.to_owned() };
        match tokio::time::timeout(HEALTH_TIMEOUT, self.health.clone().check(req)).await {
            Ok(Ok(resp)) => resp.into_inner().status == ServingStatus::Serving as i32,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn urls() {
        assert!(AgentClient::connect_lazy("http://127.0.0.1:50051").is_ok());
        assert!(AgentClient::connect_lazy("agent-svc:50051").is_ok());
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
        let e = c.session_history("agent:main:x", 0, &ctx).await.unwrap_err();
        assert_eq!(e.status(), http::StatusCode::SERVICE_UNAVAILABLE);
        let e = c.abort_run("r", "", &ctx).await.unwrap_err();
        assert_eq!(e.ws_code(), "UNAVAILABLE");
    }
}
