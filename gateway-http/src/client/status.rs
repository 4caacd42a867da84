//! The one mapping from an agent-svc gRPC status to an [`ApiError`].

use crate::error::ApiError;
use http::StatusCode;
use services::error_meta;
use tonic::Code;

/// Who a failed call's status comes from, for retries and replica health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The transport: refused, reset, unreachable, no answer. The replica may be
    /// gone; another one may do.
    Transport,
    /// agent-svc itself, saying that it is shutting down.
    Draining,
    /// agent-svc itself, saying that it is at a bound (runs in flight, session
    /// locks): another replica may take the call; this one is not unwell.
    Overloaded,
    /// agent-svc's answer to this request (or a limit of the gRPC layer that
    /// another replica would hit too).
    Answer,
}

/// Classifies a status (see [`Kind`]).
pub fn kind(s: &tonic::Status) -> Kind {
    let md = s.metadata();
    if md.get(error_meta::TYPE).is_none() {
        return match s.code() {
            Code::OutOfRange | Code::ResourceExhausted | Code::InvalidArgument | Code::Unauthenticated => {
                Kind::Answer
            }
            _ => Kind::Transport,
        };
    }
    if md.get(error_meta::DRAINING).is_some() {
        Kind::Draining
    } else if s.code() == Code::ResourceExhausted
        && md.get(error_meta::CODE).is_some_and(|c| c == "overloaded")
    {
        Kind::Overloaded
    } else {
        Kind::Answer
    }
}

/// Maps an agent-svc status to the SPEC error table.
///
/// With `openclaw-error-type` metadata (the status came from agent-svc):
/// INVALID_ARGUMENT/FAILED_PRECONDITION/OUT_OF_RANGE → 400, NOT_FOUND → 404,
/// RESOURCE_EXHAUSTED → 429, UNAVAILABLE → 502 (503 + `Retry-After` when the code
/// is `agent_unavailable`, i.e. agent-svc is shutting down), DEADLINE_EXCEEDED → 504,
/// CANCELLED (the run was aborted through `AbortRun`, e.g. by a WebSocket
/// `chat.abort`) → 502 `api_error` code `aborted` (OpenAI has no status for "someone
/// else cancelled your request", and 499 is not a status clients understand),
/// PERMISSION_DENIED → 403, INTERNAL and anything else → 500/502 (a server-side
/// fault, never caused by what the client sent).
///
/// UNAUTHENTICATED (with or without metadata) means agent-svc refused the
/// gateway's internal token: a deployment error, not the client's, so 503
/// `agent_unavailable` (and an error line in the log each time), never a 401.
///
/// Without it the call failed in transport (refused, reset, unreachable):
/// 503 `agent_unavailable` + `Retry-After: 1`, except a transport deadline → 504
/// and an answer over the gateway's decode limit → 502 (agent-svc's, not the
/// client's: the body cap keeps every request under agent-svc's own limit).
impl From<tonic::Status> for ApiError {
    fn from(s: tonic::Status) -> Self {
        if s.code() == Code::Unauthenticated {
            tracing::error!(
                "agent-svc refused the gateway's internal token: gateway.agentService.token \
                 (or OPENCLAW_AGENT_SVC_TOKEN) must be the same for the gateway and agent-svc"
            );
            return ApiError::AgentUnavailable("agent-svc is unavailable".into());
        }
        let md = s.metadata();
        let get = |key: &str| {
            md.get(key).and_then(|v| v.to_str().ok()).filter(|v| !v.is_empty()).map(str::to_owned)
        };
        let Some(kind) = get(error_meta::TYPE) else {
            return match s.code() {
                Code::DeadlineExceeded => ApiError::Agent {
                    status: StatusCode::GATEWAY_TIMEOUT,
                    kind: "api_error".into(),
                    code: Some("timeout".into()),
                    param: None,
                    message: "agent-svc did not answer in time".into(),
                    retry_after: None,
                },
                // Our own decoder refused agent-svc's answer (a history over the
                // limit): agent-svc's fault as far as the client can tell, not its
                // request's (the body cap keeps requests under agent-svc's limit).
                Code::OutOfRange => ApiError::upstream(format!(
                    "agent-svc's answer is larger than the gateway accepts ({} MiB); ask for less (a `limit`).",
                    super::MAX_DECODE_BYTES >> 20
                )),
                _ => {
                    tracing::debug!(code = ?s.code(), message = s.message(), "agent-svc unreachable");
                    ApiError::AgentUnavailable("agent-svc is unavailable".into())
                }
            };
        };
        let code = get(error_meta::CODE);
        let status = match s.code() {
            Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => StatusCode::BAD_REQUEST,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::ResourceExhausted if code.as_deref() == Some("overloaded") => {
                return ApiError::Overloaded(s.message().to_owned());
            }
            Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            Code::Unavailable if code.as_deref() == Some("agent_unavailable") => {
                return ApiError::AgentUnavailable(s.message().to_owned());
            }
            Code::Unavailable | Code::Cancelled | Code::Aborted => StatusCode::BAD_GATEWAY,
            Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            Code::Internal | Code::Unknown | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_GATEWAY,
        };
        ApiError::Agent {
            status,
            kind,
            code,
            param: get(error_meta::PARAM),
            message: s.message().to_owned(),
            retry_after: get(error_meta::RETRY_AFTER).and_then(|v| v.parse().ok()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::response::IntoResponse;
    use http::header;
    use tonic::metadata::MetadataValue;

    fn status(code: Code, msg: &str, meta: &[(&'static str, &'static str)]) -> tonic::Status {
        let mut s = tonic::Status::new(code, msg);
        for (k, v) in meta {
            s.metadata_mut().insert(*k, MetadataValue::from_static(v));
        }
        s
    }

    fn body(e: &ApiError) -> serde_json::Value {
        serde_json::from_slice(&e.to_json()).unwrap()
    }

    #[test]
    fn kinds() {
        assert_eq!(kind(&tonic::Status::unavailable("tcp connect error")), Kind::Transport);
        assert_eq!(kind(&tonic::Status::unknown("h2 protocol error")), Kind::Transport);
        assert_eq!(kind(&tonic::Status::out_of_range("message too large")), Kind::Answer);
        let draining = status(
            Code::Unavailable,
            "agent-svc is shutting down",
            &[
                (error_meta::TYPE, "api_error"),
                (error_meta::CODE, "agent_unavailable"),
                (error_meta::DRAINING, "1"),
            ],
        );
        assert_eq!(kind(&draining), Kind::Draining);
        // The session store being down is the same 503, but not a reason to leave the replica.
        let store = status(
            Code::Unavailable,
            "session store error",
            &[(error_meta::TYPE, "api_error"), (error_meta::CODE, "agent_unavailable")],
        );
        assert_eq!(kind(&store), Kind::Answer);
        let overloaded = status(
            Code::ResourceExhausted,
            "at its maximum of 1024 runs",
            &[(error_meta::TYPE, "api_error"), (error_meta::CODE, "overloaded")],
        );
        assert_eq!(kind(&overloaded), Kind::Overloaded);
        let e: ApiError = overloaded.into();
        assert_eq!((e.status(), e.retry_after()), (StatusCode::SERVICE_UNAVAILABLE, Some(1)));
        assert_eq!(body(&e)["error"]["code"], "overloaded");
        // The session queue being full stays a 429.
        let busy = status(
            Code::ResourceExhausted,
            "busy",
            &[(error_meta::TYPE, "rate_limit_error"), (error_meta::CODE, "session_busy")],
        );
        assert_eq!(kind(&busy), Kind::Answer);
        let upstream = status(
            Code::Unavailable,
            "boom",
            &[(error_meta::TYPE, "api_error"), (error_meta::CODE, "upstream_error")],
        );
        assert_eq!(kind(&upstream), Kind::Answer);
    }

    #[test]
    fn invalid_argument_keeps_type_and_param() {
        let e: ApiError = status(
            Code::InvalidArgument,
            "`temperature` must be between 0 and 2.",
            &[(error_meta::TYPE, "invalid_request_error"), (error_meta::PARAM, "temperature")],
        )
        .into();
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        let b = body(&e);
        assert_eq!(b["error"]["type"], "invalid_request_error");
        assert_eq!(b["error"]["param"], "temperature");
        assert_eq!(b["error"]["message"], "`temperature` must be between 0 and 2.");
        assert!(b["error"].get("code").is_none());
    }

    #[test]
    fn code_table() {
        let cases = [
            (Code::NotFound, "invalid_request_error", Some("not_found"), 404),
            (Code::ResourceExhausted, "rate_limit_error", Some("session_busy"), 429),
            (Code::Unavailable, "api_error", Some("upstream_error"), 502),
            (Code::DeadlineExceeded, "api_error", Some("timeout"), 504),
            (Code::Cancelled, "api_error", Some("aborted"), 502),
            (Code::Internal, "api_error", Some("internal_error"), 500),
        ];
        for (code, ty, c, want) in cases {
            let mut meta = vec![(error_meta::TYPE, ty)];
            if let Some(c) = c {
                meta.push((error_meta::CODE, c));
            }
            let e: ApiError = status(code, "x", &meta).into();
            assert_eq!(e.status().as_u16(), want, "{code:?}");
            let b = body(&e);
            assert_eq!(b["error"]["type"], ty);
            assert_eq!(b["error"]["code"].as_str(), c);
        }
    }

    #[test]
    fn an_answer_over_the_decode_limit_is_agent_svcs_fault() {
        let e: ApiError = tonic::Status::new(Code::OutOfRange, "decoded message length too large").into();
        assert_eq!(e.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(body(&e)["error"]["code"], "upstream_error");
        assert_eq!(e.ws_code(), "UNAVAILABLE", "not \"Payload too large\" over the WebSocket either");
    }

    #[test]
    fn transport_failures_are_503_with_retry_after() {
        for code in [Code::Unavailable, Code::Unknown, Code::Cancelled, Code::Internal] {
            let e: ApiError = tonic::Status::new(code, "tcp connect error").into();
            assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(e.retry_after(), Some(1));
            let b = body(&e);
            assert_eq!(b["error"]["type"], "api_error");
            assert_eq!(b["error"]["code"], "agent_unavailable");
        }
        // agent-svc shutting down says so explicitly.
        let e: ApiError = status(
            Code::Unavailable,
            "agent-svc is shutting down",
            &[(error_meta::TYPE, "api_error"), (error_meta::CODE, "agent_unavailable")],
        )
        .into();
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(e.retry_after(), Some(1));
        let e: ApiError = tonic::Status::new(Code::DeadlineExceeded, "timeout").into();
        assert_eq!(e.status(), StatusCode::GATEWAY_TIMEOUT);
    }

    #[test]
    fn a_refused_internal_token_is_503_not_401_and_not_transport() {
        let refused = status(
            Code::Unauthenticated,
            "missing or wrong agent-svc token",
            &[(error_meta::TYPE, "unauthorized"), (error_meta::CODE, "unauthenticated")],
        );
        assert_eq!(kind(&refused), Kind::Answer, "no retry, no ejection");
        assert_eq!(kind(&tonic::Status::unauthenticated("x")), Kind::Answer);
        let e: ApiError = refused.into();
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body(&e)["error"]["code"], "agent_unavailable");
    }

    #[test]
    fn retry_after_metadata_is_carried() {
        let e: ApiError = status(
            Code::ResourceExhausted,
            "busy",
            &[(error_meta::TYPE, "rate_limit_error"), (error_meta::RETRY_AFTER, "3")],
        )
        .into();
        let r = e.into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "3");
    }

    #[test]
    fn ws_codes_follow_the_http_status() {
        let meta =
            |ty: &'static str, code: &'static str| vec![(error_meta::TYPE, ty), (error_meta::CODE, code)];
        let cases: Vec<(ApiError, &str, bool)> = vec![
            (ApiError::invalid("x", "bad"), "INVALID_REQUEST", false),
            (ApiError::PayloadTooLarge, "INVALID_REQUEST", false),
            (ApiError::Unauthorized, "UNAUTHORIZED", false),
            (ApiError::AuthLockedOut { retry_after_secs: 3 }, "RATE_LIMITED", true),
            (ApiError::NotFound, "NOT_FOUND", false),
            (ApiError::AgentUnavailable("down".into()), "UNAVAILABLE", true),
            (
                status(Code::ResourceExhausted, "busy", &meta("rate_limit_error", "session_busy")).into(),
                "RATE_LIMITED",
                true,
            ),
            (
                status(Code::DeadlineExceeded, "slow", &meta("api_error", "timeout")).into(),
                "UNAVAILABLE",
                true,
            ),
            (status(Code::Internal, "x", &meta("api_error", "internal_error")).into(), "INTERNAL", false),
            (tonic::Status::new(Code::Unavailable, "refused").into(), "UNAVAILABLE", true),
        ];
        for (e, code, retryable) in cases {
            assert_eq!(e.ws_code(), code, "{e:?}");
            assert_eq!(e.ws_retryable(), retryable, "{e:?}");
        }
        let aborted: ApiError = status(Code::Cancelled, "Run aborted.", &meta("api_error", "aborted")).into();
        assert!(aborted.is_aborted());
        assert!(!ApiError::upstream("x").is_aborted());
    }
}
