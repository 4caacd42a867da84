//! The agent-svc client: the only place in gateway-http that speaks gRPC.
//!
//! One lazily connected [`Channel`] to one address for now. Spreading calls over
//! several replicas (DNS re-resolution, rendezvous hashing on the session key,
//! retry before the first event, ejection) is a later issue and belongs behind
//! this same type, as tower layers (discovery → balance → retry) around the
//! channel, so nothing else in the crate changes.

use crate::error::{ApiError, GatewayError};
use services::proto::agent_service_client::AgentServiceClient;
use services::proto::{AgentRunEvent, AgentRunRequest, ListAgentsRequest, ListAgentsResponse};
use std::time::Duration;
use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tonic::transport::{Channel, Endpoint};
use tonic::Streaming;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// The gRPC service name agent-svc reports health under.
pub const HEALTH_SERVICE: &str = "openclaw.agent.v1.AgentService";
/// TCP connect timeout to agent-svc: a dead address must fail fast (→ 503).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a readiness check may take.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
/// Deadline for unary calls (`ListAgents`).
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
            .keep_alive_while_idle(true)
            .http2_adaptive_window(true);
        let channel = endpoint.connect_lazy();
        Ok(AgentClient {
            agents: AgentServiceClient::new(channel.clone()).max_decoding_message_size(MAX_DECODE_BYTES),
            health: HealthClient::new(channel),
        })
    }

    /// Starts a run. An error status before the stream opens (validation,
    /// unknown agent, session queue full, unreachable) comes back as the mapped
    /// [`ApiError`]; later failures arrive as `Err` items of the stream.
    /// Dropping the stream cancels the run in agent-svc.
    pub async fn run(
        &self,
        request: AgentRunRequest,
        ctx: &CallContext,
    ) -> Result<Streaming<AgentRunEvent>, ApiError> {
        let mut req = tonic::Request::new(request);
        ctx.apply(req.metadata_mut());
        let resp = self.agents.clone().agent_run(req).await?;
        Ok(resp.into_inner())
    }

    /// The configured agents and the default one.
    pub async fn list_agents(&self, ctx: &CallContext) -> Result<ListAgentsResponse, ApiError> {
        let mut req = tonic::Request::new(ListAgentsRequest {});
        req.set_timeout(UNARY_TIMEOUT);
        ctx.apply(req.metadata_mut());
        match tokio::time::timeout(UNARY_TIMEOUT, self.agents.clone().list_agents(req)).await {
            Ok(r) => Ok(r?.into_inner()),
            Err(_) => Err(tonic::Status::deadline_exceeded("ListAgents timed out").into()),
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
    }
}
