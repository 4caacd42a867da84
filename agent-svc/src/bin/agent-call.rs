//! `agent-call`: a minimal internal gRPC caller of agent-svc, shipped in the
//! image so that a service on the compose network (or a pod) can run a turn,
//! read a session or list the agents without grpcurl. Prints each reply as one
//! JSON line.
//!
//! ```text
//! agent-call --target agent-svc:50051 [--agent ID] [--user U | --session-key K] MESSAGE…
//! agent-call --target agent-svc:50051 --history agent:main:openai-user:alice
//! agent-call --target agent-svc:50051 --list-agents
//! ```

use clap::Parser;
use serde_json::json;
use services::proto::agent_run_event::Event;
use services::proto::agent_run_request::Session;
use services::proto::agent_service_client::AgentServiceClient;
use services::proto::{
    content_part, AgentRunRequest, ContentPart, GetSessionHistoryRequest, ListAgentsRequest, Message,
};
use std::process::ExitCode;

/// Calls agent-svc's gRPC API directly (one turn, a history, or the agents).
#[derive(Parser, Debug)]
#[command(name = "agent-call", version)]
struct Cli {
    /// agent-svc address, `host:port` or `http://host:port`.
    #[arg(long, default_value = "agent-svc:50051", env = "AGENT_SVC_URL")]
    target: String,
    /// Agent to run (default: agent-svc's default agent).
    #[arg(long, default_value = "")]
    agent: String,
    /// A stable session per user (`agent:<agent>:openai-user:<user>`).
    #[arg(long, conflicts_with = "session_key")]
    user: Option<String>,
    /// An explicit session key.
    #[arg(long)]
    session_key: Option<String>,
    /// Print this session's stored history instead of running a turn.
    #[arg(long, value_name = "SESSION_KEY")]
    history: Option<String>,
    /// Print the configured agents instead of running a turn.
    #[arg(long)]
    list_agents: bool,
    /// The user message.
    message: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("agent-call: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agent-call: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    let url = if cli.target.contains("://") { cli.target.clone() } else { format!("http://{}", cli.target) };
    let mut client = AgentServiceClient::connect(url).await?;
    if cli.list_agents {
        let r = client.list_agents(ListAgentsRequest {}).await?.into_inner();
        for a in r.agents {
            println!("{}", json!({"id": a.id, "model": a.model, "default": a.is_default}));
        }
        return Ok(());
    }
    if let Some(key) = cli.history {
        let r = client.get_session_history(GetSessionHistoryRequest { session_key: key, limit: 0 }).await?;
        for e in r.into_inner().messages {
            let m = e.message.unwrap_or_default();
            let text: String = m
                .parts
                .iter()
                .filter_map(|p| match &p.part {
                    Some(content_part::Part::Text(t)) => Some(t.as_str()),
                    _ => None,
                })
                .collect();
            println!(
                "{}",
                json!({"role": m.role, "text": text, "interrupted": e.interrupted, "runId": e.run_id})
            );
        }
        return Ok(());
    }
    if cli.message.is_empty() {
        return Err("a message is needed (or --history / --list-agents)".into());
    }
    let session = match (cli.user, cli.session_key) {
        (Some(u), _) => Some(Session::User(u)),
        (None, Some(k)) => Some(Session::SessionKey(k)),
        (None, None) => None,
    };
    let text = cli.message.join(" ");
    let request = AgentRunRequest {
        agent_id: cli.agent,
        session,
        messages: vec![Message {
            role: "user".into(),
            parts: vec![ContentPart { part: Some(content_part::Part::Text(text)) }],
            text_only: true,
            ..Default::default()
        }],
        ..Default::default()
    };
    let mut stream = client.agent_run(request).await?.into_inner();
    while let Some(event) = stream.message().await? {
        let line = match event.event {
            Some(Event::Started(s)) => json!({"started": {"runId": s.run_id, "agentId": s.agent_id,
                "sessionKey": s.session_key, "model": s.model}}),
            Some(Event::Text(t)) => json!({"text": t.text}),
            Some(Event::ToolCall(c)) => json!({"toolCall": {"index": c.index, "id": c.id, "name": c.name,
                "arguments": c.arguments}}),
            Some(Event::Finished(f)) => {
                json!({"finished": {"finishReason": f.finish_reason, "model": f.model,
                "usage": f.usage.map(|u| json!({"promptTokens": u.prompt_tokens,
                    "completionTokens": u.completion_tokens, "totalTokens": u.total_tokens}))}})
            }
            None => continue,
        };
        println!("{line}");
    }
    Ok(())
}
