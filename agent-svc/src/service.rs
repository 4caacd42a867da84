//! The `AgentService` gRPC implementation: a thin layer over [`Runner`] and the
//! session store, and the one place where an [`AgentError`] becomes a gRPC
//! [`Status`] (through its `From` in `error.rs`), a run's stream included.

use crate::error::AgentError;
use crate::run::{RunStream, Runner};
use crate::sessions::{Page, StoredMessage};
use futures::stream::{MapErr, TryStreamExt};
use services::proto::agent_service_server::AgentService;
use services::proto::{
    AbortRunRequest, AbortRunResponse, AgentRunRequest, CompactSessionRequest, CompactSessionResponse,
    DeleteSessionRequest, DeleteSessionResponse, GetSessionHistoryRequest, GetSessionHistoryResponse,
    HistoryEntry, ListAgentsRequest, ListAgentsResponse, ListSessionsRequest, ListSessionsResponse,
    ResetSessionRequest, ResetSessionResponse, SessionInfo,
};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// Default and maximum `ListSessions` page.
const DEFAULT_LIST_LIMIT: u32 = 100;
const MAX_LIST_LIMIT: u32 = 1000;

/// Default and maximum `GetSessionHistory` page.
pub const MAX_HISTORY_PAGE: u32 = 1000;

/// A run's events for gRPC: its failure mapped to a status.
pub type AgentRunStatusStream = MapErr<RunStream, fn(AgentError) -> Status>;

/// The gRPC service.
#[derive(Clone)]
pub struct AgentSvc {
    runner: Arc<Runner>,
    draining: Arc<AtomicBool>,
}

impl AgentSvc {
    /// Serves `runner`; while `draining` is set, new runs are refused.
    pub fn new(runner: Arc<Runner>, draining: Arc<AtomicBool>) -> Self {
        Self { runner, draining }
    }
}

fn history_entry(m: StoredMessage) -> HistoryEntry {
    HistoryEntry {
        message: Some(std::sync::Arc::unwrap_or_clone(m.message).into_message()),
        interrupted: m.interrupted,
        created_at_ms: m.created_at_ms,
        run_id: m.run_id,
        seq: m.seq,
        compacted: m.compacted,
        summary: m.summary,
    }
}

#[tonic::async_trait]
impl AgentService for AgentSvc {
    type AgentRunStream = AgentRunStatusStream;

    async fn agent_run(
        &self,
        request: Request<AgentRunRequest>,
    ) -> Result<Response<AgentRunStatusStream>, Status> {
        if self.draining.load(Ordering::SeqCst) {
            return Err(AgentError::ShuttingDown.into());
        }
        let md = request.metadata();
        let request_id = md.get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        let traceparent = md.get("traceparent").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        let req = request.into_inner();
        tracing::debug!(request_id = %request_id, traceparent = %traceparent, agent = %req.agent_id, "AgentRun");
        let stream = self.runner.start(req).inspect_err(|e| {
            tracing::debug!(request_id = %request_id, error = %e, "AgentRun refused");
        })?;
        Ok(Response::new(stream.map_err(Status::from as fn(AgentError) -> Status)))
    }

    async fn list_agents(
        &self,
        _: Request<ListAgentsRequest>,
    ) -> Result<Response<ListAgentsResponse>, Status> {
        Ok(Response::new(self.runner.registry().list()))
    }

    async fn list_sessions(
        &self,
        request: Request<ListSessionsRequest>,
    ) -> Result<Response<ListSessionsResponse>, Status> {
        let req = request.into_inner();
        let limit = if req.limit == 0 { DEFAULT_LIST_LIMIT } else { req.limit.min(MAX_LIST_LIMIT) };
        let agent = (!req.agent_id.is_empty()).then_some(req.agent_id.as_str());
        let sessions = self.runner.store().list(agent, limit).await?;
        Ok(Response::new(ListSessionsResponse {
            sessions: sessions
                .into_iter()
                .map(|s| SessionInfo {
                    session_key: s.key,
                    agent_id: s.agent_id,
                    created_at_ms: s.created_at_ms,
                    updated_at_ms: s.updated_at_ms,
                    message_count: s.message_count,
                })
                .collect(),
        }))
    }

    async fn get_session_history(
        &self,
        request: Request<GetSessionHistoryRequest>,
    ) -> Result<Response<GetSessionHistoryResponse>, Status> {
        let req = request.into_inner();
        if req.session_key.is_empty() {
            return Err(AgentError::invalid("session_key", "`session_key` is required.").into());
        }
        let store = self.runner.store();
        if !store.exists(&req.session_key).await? {
            return Err(AgentError::NotFound(format!("Unknown session '{}'.", req.session_key)).into());
        }
        let limit = if req.limit == 0 { MAX_HISTORY_PAGE } else { req.limit.min(MAX_HISTORY_PAGE) };
        let page = Page { before: req.before_seq, limit: Some(limit) };
        let messages = store.history_page(&req.session_key, page).await?;
        let next_before_seq = match messages.first() {
            Some(oldest) if messages.len() == limit as usize && oldest.seq > 0 => Some(oldest.seq),
            _ => None,
        };
        Ok(Response::new(GetSessionHistoryResponse {
            session_key: req.session_key,
            messages: messages.into_iter().map(history_entry).collect(),
            next_before_seq,
        }))
    }

    async fn reset_session(
        &self,
        request: Request<ResetSessionRequest>,
    ) -> Result<Response<ResetSessionResponse>, Status> {
        let existed = self.runner.reset_session(&request.into_inner().session_key).await?;
        Ok(Response::new(ResetSessionResponse { existed }))
    }

    async fn delete_session(
        &self,
        request: Request<DeleteSessionRequest>,
    ) -> Result<Response<DeleteSessionResponse>, Status> {
        let deleted = self.runner.delete_session(&request.into_inner().session_key).await?;
        Ok(Response::new(DeleteSessionResponse { deleted }))
    }

    async fn compact_session(
        &self,
        request: Request<CompactSessionRequest>,
    ) -> Result<Response<CompactSessionResponse>, Status> {
        Ok(Response::new(self.runner.compact_session(&request.into_inner().session_key).await?))
    }

    async fn abort_run(
        &self,
        request: Request<AbortRunRequest>,
    ) -> Result<Response<AbortRunResponse>, Status> {
        let req = request.into_inner();
        if req.run_id.is_empty() && req.session_key.is_empty() {
            return Err(AgentError::invalid_no_param("`run_id` or `session_key` is required.").into());
        }
        let aborted_run_ids = self.runner.runs().abort(&req.run_id, &req.session_key);
        Ok(Response::new(AbortRunResponse { aborted_run_ids }))
    }
}
