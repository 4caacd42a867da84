//! Shared pieces of the OpenClaw gateway pair: the generated `AgentService` gRPC
//! code ([`proto`]), the config schema and loader ([`config`]), and the rules
//! both services apply, each once: session keys ([`session_key`]), the new turn
//! and image limits ([`messages`]), with their error ([`rules::RuleError`]), and
//! the rules over a run's events ([`run_events`]); hiding the credentials of a
//! URL ([`redact`]), random ids ([`ids`]) and the Prometheus setup ([`telemetry`]); TLS from
//! reloaded PEM files for the public port and the internal hop ([`tls`]), and
//! the accept step of the services' own accept loops ([`net`]).

pub mod codec;
pub mod config;
pub mod ids;
pub mod logging;
pub mod messages;
pub mod net;
pub mod redact;
pub mod rules;
pub mod run_events;
pub mod session_key;
pub mod signal;
pub mod sse;
pub mod telemetry;
pub mod tls;

/// Generated code for package `openclaw.agent.v1`.
pub mod proto {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("openclaw.agent.v1");

    /// Encoded `FileDescriptorSet` for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("agent_descriptor");
}

/// Metadata keys that carry the machine-readable error on agent-svc statuses.
pub mod error_meta {
    /// Error type, e.g. `invalid_request_error`.
    pub const TYPE: &str = "openclaw-error-type";
    /// Error code, e.g. `upstream_error`.
    pub const CODE: &str = "openclaw-error-code";
    /// The request field at fault.
    pub const PARAM: &str = "openclaw-error-param";
    /// Seconds a client should wait before retrying.
    pub const RETRY_AFTER: &str = "openclaw-retry-after";
    /// Present (`1`) when this agent-svc replica is shutting down and takes no
    /// new runs: the call may be tried on another replica.
    pub const DRAINING: &str = "openclaw-draining";
}
