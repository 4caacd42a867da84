//! The one error type of agent-svc and its single mapping to a gRPC status.

use services::error_meta;
use services::rules::RuleError;
use tonic::{metadata::MetadataValue, Code, Status};

/// Everything that can fail in agent-svc. Each variant maps to exactly one gRPC
/// code plus the OpenAI-style error type/code/param carried in metadata.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A request field breaks a rule; `param` names it.
    #[error("{message}")]
    InvalidRequest {
        /// What is wrong, for the client.
        message: String,
        /// The field at fault.
        param: Option<String>,
    },
    /// `agent_id` (or the agent in a session key) is not configured.
    #[error("Unknown agent '{0}'.")]
    UnknownAgent(String),
    /// A session or run that does not exist.
    #[error("{0}")]
    NotFound(String),
    /// Too many turns waiting on one session.
    #[error("Too many requests queued for session '{0}'.")]
    SessionBusy(String),
    /// The provider answered 429 on every model tried.
    #[error("{0}")]
    RateLimited(String),
    /// The provider failed: 5xx, reset, refused, bad response, auth failure.
    #[error("{0}")]
    Upstream(String),
    /// The provider rejected the request itself (4xx other than auth/429).
    #[error("{0}")]
    UpstreamRejected(String),
    /// The prompt is over the context budget, or the provider said it is over
    /// the model's window (and compacting did not help).
    #[error("{0}")]
    ContextTooLong(String),
    /// Run or provider timeout.
    #[error("{0}")]
    Timeout(String),
    /// The run was aborted with `AbortRun`.
    #[error("Run aborted.")]
    Aborted,
    /// The service is shutting down.
    #[error("agent-svc is shutting down")]
    ShuttingDown,
    /// A bound on what this replica takes at once is reached (runs in flight,
    /// session-lock connections): refused at once, to be retried (elsewhere).
    #[error("{0}")]
    Overloaded(String),
    /// The caller did not send the internal token (`gateway.agentService.token`).
    #[error("missing or wrong agent-svc token")]
    Unauthenticated,
    /// The session store failed.
    #[error("session store error: {0}")]
    Store(String),
    /// Startup problems (config, listen address).
    #[error("{0}")]
    Startup(String),
}

impl AgentError {
    /// Shorthand for an invalid field.
    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        AgentError::InvalidRequest { message: message.into(), param: Some(param.to_string()) }
    }

    /// Shorthand for a rule that names no single field.
    pub fn invalid_no_param(message: impl Into<String>) -> Self {
        AgentError::InvalidRequest { message: message.into(), param: None }
    }

    /// gRPC code, OpenAI error type, error code and param of this error.
    fn parts(&self) -> (Code, &'static str, Option<&'static str>, Option<&str>) {
        match self {
            AgentError::InvalidRequest { param, .. } => {
                (Code::InvalidArgument, "invalid_request_error", None, param.as_deref())
            }
            AgentError::UnknownAgent(_) => {
                (Code::InvalidArgument, "invalid_request_error", None, Some("model"))
            }
            AgentError::NotFound(_) => (Code::NotFound, "invalid_request_error", Some("not_found"), None),
            AgentError::SessionBusy(_) => {
                (Code::ResourceExhausted, "rate_limit_error", Some("session_busy"), None)
            }
            AgentError::RateLimited(_) => {
                (Code::ResourceExhausted, "rate_limit_error", Some("rate_limit_exceeded"), None)
            }
            AgentError::Upstream(_) => (Code::Unavailable, "api_error", Some("upstream_error"), None),
            AgentError::UpstreamRejected(_) => (Code::InvalidArgument, "invalid_request_error", None, None),
            AgentError::ContextTooLong(_) => (
                Code::InvalidArgument,
                "invalid_request_error",
                Some("context_length_exceeded"),
                Some("messages"),
            ),
            AgentError::Timeout(_) => (Code::DeadlineExceeded, "api_error", Some("timeout"), None),
            AgentError::Aborted => (Code::Cancelled, "api_error", Some("aborted"), None),
            AgentError::ShuttingDown => (Code::Unavailable, "api_error", Some("agent_unavailable"), None),
            AgentError::Overloaded(_) => (Code::ResourceExhausted, "api_error", Some("overloaded"), None),
            AgentError::Unauthenticated => {
                (Code::Unauthenticated, "unauthorized", Some("unauthenticated"), None)
            }
            // A store that fails or stalls is unavailable for now: retryable, never a 500.
            AgentError::Store(_) => (Code::Unavailable, "api_error", Some("agent_unavailable"), None),
            AgentError::Startup(_) => (Code::Internal, "api_error", Some("internal_error"), None),
        }
    }
}

impl From<AgentError> for Status {
    fn from(e: AgentError) -> Status {
        let (code, ty, err_code, param) = e.parts();
        let mut status = Status::new(code, e.to_string());
        let md = status.metadata_mut();
        md.insert(error_meta::TYPE, MetadataValue::from_static(ty));
        if let Some(c) = err_code {
            md.insert(error_meta::CODE, MetadataValue::from_static(c));
        }
        if let Some(p) = param.and_then(|p| MetadataValue::try_from(p).ok()) {
            md.insert(error_meta::PARAM, p);
        }
        if matches!(e, AgentError::ShuttingDown | AgentError::Store(_) | AgentError::Overloaded(_)) {
            md.insert(error_meta::RETRY_AFTER, MetadataValue::from_static("1"));
        }
        if matches!(e, AgentError::ShuttingDown) {
            // This replica takes no new runs: a caller may try another one.
            md.insert(error_meta::DRAINING, MetadataValue::from_static("1"));
        }
        status
    }
}

impl From<RuleError> for AgentError {
    fn from(e: RuleError) -> Self {
        AgentError::InvalidRequest { message: e.message, param: e.param.map(String::from) }
    }
}

impl From<sqlx::Error> for AgentError {
    fn from(e: sqlx::Error) -> Self {
        AgentError::Store(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_carries_type_code_param() {
        let s: Status = AgentError::invalid("temperature", "bad").into();
        assert_eq!(s.code(), Code::InvalidArgument);
        assert_eq!(s.metadata().get(error_meta::TYPE).unwrap(), "invalid_request_error");
        assert_eq!(s.metadata().get(error_meta::PARAM).unwrap(), "temperature");
        let s: Status = AgentError::Upstream("boom".into()).into();
        assert_eq!(s.code(), Code::Unavailable);
        assert_eq!(s.metadata().get(error_meta::CODE).unwrap(), "upstream_error");
    }
}
