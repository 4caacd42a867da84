//! From an `AgentRunRequest` to a run ready to drive: validation, the split
//! into system text / history / new turn, the agent and session, the model
//! chain and the neutral provider request. No I/O: every error here is the
//! caller's and is returned before the stream opens.

use super::validate;
use crate::agents::AgentRegistry;
use crate::error::AgentError;
use crate::message::SharedMessage;
use crate::providers::ProviderRequest;
use services::config::{ModelRef, ResolvedAgent};
use services::messages;
use services::proto::{agent_run_request::Session, AgentRunRequest, Message};
use services::session_key::{self, SessionSelector, DEFAULT_CHANNEL};
use std::sync::Arc;

/// Longest accepted caller-chosen run id, in bytes.
const MAX_RUN_ID_BYTES: usize = 128;

/// One run, resolved and ready to drive.
pub(super) struct Prepared {
    pub(super) run_id: String,
    pub(super) agent: ResolvedAgent,
    pub(super) session_key: String,
    /// The session continues across calls: its transcript is stored.
    pub(super) stable: bool,
    /// Models to try in order (fallbacks only before the first token).
    pub(super) chain: Vec<ModelRef>,
    /// The request's system/developer texts.
    pub(super) system: Option<String>,
    /// Earlier turns carried by a stateless request.
    pub(super) client_history: Vec<Arc<SharedMessage>>,
    pub(super) new_turn: Vec<Arc<SharedMessage>>,
    /// When the turn got its session (Unix ms): the time its user messages are stored with.
    pub(super) began_at_ms: i64,
    /// Everything but `model` and `messages`, which each attempt fills in.
    pub(super) base: ProviderRequest,
    /// The most the prompt may hold, in estimated tokens (see `budget.rs`).
    pub(super) budget: u64,
}

/// A stand-in run for managing a stable session outside a turn (compacting
/// it now): the session's agent, its chain and budget, no new turn.
pub(super) fn for_session(registry: &AgentRegistry, key: &str) -> Result<Prepared, AgentError> {
    let (agent_id, _) = session_key::split_agent_key(key).ok_or_else(|| {
        AgentError::invalid("session_key", "A session key has the form `agent:<id>:<rest>`.")
    })?;
    let agent =
        registry.agent(agent_id).ok_or_else(|| AgentError::UnknownAgent(agent_id.to_string()))?.clone();
    let chain: Vec<ModelRef> =
        std::iter::once(agent.primary.clone()).chain(agent.fallbacks.iter().cloned()).collect();
    let budget = registry.budget(&agent, &chain, None);
    Ok(Prepared {
        run_id: services::ids::with_uuid(&["compact-"]),
        agent,
        session_key: key.to_string(),
        stable: true,
        chain,
        system: None,
        client_history: Vec::new(),
        new_turn: Vec::new(),
        began_at_ms: 0,
        base: ProviderRequest::default(),
        budget,
    })
}

/// Validates and resolves a request against the configured agents.
pub(super) fn prepare(registry: &AgentRegistry, mut req: AgentRunRequest) -> Result<Prepared, AgentError> {
    validate::validate(&req)?;
    let split = messages::split(std::mem::take(&mut req.messages))?;
    messages::check_new_turn_images(&split.new_turn)?;

    let requested =
        if req.agent_id.is_empty() { registry.default_agent().id.as_str() } else { &req.agent_id };
    let selector = match &req.session {
        Some(Session::SessionKey(k)) => SessionSelector::Explicit(k),
        Some(Session::User(u)) => SessionSelector::User(u),
        None => SessionSelector::Stateless,
    };
    let channel = if req.channel.is_empty() { DEFAULT_CHANNEL } else { &req.channel };
    let session = session_key::resolve(selector, requested, channel)?;
    let agent = registry
        .agent(&session.agent_id)
        .ok_or_else(|| AgentError::UnknownAgent(session.agent_id.clone()))?
        .clone();

    let chain = match req.model.as_deref().filter(|m| !m.is_empty()) {
        Some(m) => {
            let r = ModelRef::parse(m)
                .filter(|r| registry.model_known(r))
                .ok_or_else(|| AgentError::invalid("model", format!("Unknown model: {m}")))?;
            vec![r]
        }
        None => std::iter::once(agent.primary.clone()).chain(agent.fallbacks.iter().cloned()).collect(),
    };

    let run_id = if req.run_id.is_empty() {
        services::ids::with_uuid(&[])
    } else if req.run_id.len() <= MAX_RUN_ID_BYTES && !req.run_id.chars().any(char::is_control) {
        req.run_id.clone()
    } else {
        return Err(AgentError::invalid("run_id", "`run_id` must be at most 128 printable characters."));
    };

    let params = req.params.take().unwrap_or_default();
    let client_cap =
        params.max_completion_tokens.or(params.max_tokens).map(|n| n.min(u32::MAX as i64) as u32);
    let budget = registry.budget(&agent, &chain, client_cap);
    let base = ProviderRequest {
        model: String::new(),
        messages: Vec::new(),
        max_tokens: client_cap,
        params,
        tools: std::mem::take(&mut req.tools),
        tool_choice: req.tool_choice.take(),
        response_format_json: req.response_format_json.take(),
    };
    Ok(Prepared {
        run_id,
        agent,
        session_key: session.key,
        stable: session.stable,
        chain,
        system: split.system,
        // A stable session's history is the stored transcript; only stateless
        // calls carry their history in the request.
        client_history: if session.stable { Vec::new() } else { shared(split.history) },
        new_turn: shared(split.new_turn),
        began_at_ms: 0,
        base,
        budget,
    })
}

/// Messages as a provider request and the store share them.
fn shared(messages: Vec<Message>) -> Vec<Arc<SharedMessage>> {
    messages.into_iter().map(SharedMessage::shared).collect()
}
