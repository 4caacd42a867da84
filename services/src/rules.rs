//! The error of the request rules both services apply ([`crate::session_key`],
//! [`crate::messages`]): a message for the client and the field at fault.
//!
//! Each service maps it once into its own error (agent-svc's
//! `AgentError::InvalidRequest`, the gateway's `ApiError::InvalidRequest`).

/// A request breaks a rule. Displays as the message alone.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RuleError {
    /// What is wrong, worded for the client.
    pub message: String,
    /// The request field at fault, when one is.
    pub param: Option<&'static str>,
}

impl RuleError {
    /// A rule on the field `param`.
    pub fn new(param: &'static str, message: impl Into<String>) -> Self {
        RuleError { message: message.into(), param: Some(param) }
    }

    /// A rule that names no single field.
    pub fn no_param(message: impl Into<String>) -> Self {
        RuleError { message: message.into(), param: None }
    }
}
