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
//!
//! The internal token (`--token`, env `OPENCLAW_AGENT_SVC_TOKEN`, else the
//! config's `gateway.agentService.token`) is sent on every call; mutual TLS is
//! used with `--ca`/`--cert`/`--key` or the config's `gateway.agentService.tls`.

use agent_svc::security::ClientSide;
use clap::Parser;
use serde_json::json;
use services::proto::agent_run_event::Event;
use services::proto::agent_run_request::Session;
use services::proto::agent_service_client::AgentServiceClient;
use services::proto::{
    content_part, AgentRunRequest, ContentPart, GetSessionHistoryRequest, ListAgentsRequest, Message,
};
use services::tls::{ClientTls, TlsPaths, ALPN_H2, RELOAD_INTERVAL};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tonic::metadata::AsciiMetadataValue;

/// Calls agent-svc's gRPC API directly (one turn, a history, or the agents).
// No Debug: it holds the token.
#[derive(Parser)]
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
    /// Config file whose `gateway.agentService` token and TLS settings are used
    /// (flags win over it). Default: none.
    #[arg(long, value_name = "PATH", env = "OPENCLAW_CONFIG_PATH")]
    config: Option<PathBuf>,
    /// The internal token agent-svc requires.
    #[arg(long, env = "OPENCLAW_AGENT_SVC_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// PEM CA agent-svc's certificate must chain to (mutual TLS, with --cert and --key).
    #[arg(long, value_name = "PATH", requires_all = ["cert", "key"])]
    ca: Option<PathBuf>,
    /// PEM client certificate.
    #[arg(long, value_name = "PATH", requires_all = ["ca", "key"])]
    cert: Option<PathBuf>,
    /// Its private key.
    #[arg(long, value_name = "PATH", requires_all = ["ca", "cert"])]
    key: Option<PathBuf>,
    /// Name agent-svc's certificate is checked for (default: the target's host).
    #[arg(long, value_name = "NAME")]
    server_name: Option<String>,
    /// The user message.
    message: Vec<String>,
}

/// The token and TLS settings: flags first, then the config.
async fn credentials(cli: &Cli) -> Result<(Option<String>, Option<ClientSide>), Box<dyn std::error::Error>> {
    let config = match cli.config.as_deref().filter(|p| !p.as_os_str().is_empty()) {
        Some(path) => Some(services::config::load(Some(path))?),
        None => None,
    };
    let token =
        cli.token.clone().filter(|t| !t.is_empty()).or_else(|| config.as_ref()?.agent_service_token());
    let from_config = match &config {
        Some(c) => c.agent_service_tls()?,
        None => None,
    };
    let (paths, name) = match (&cli.ca, &cli.cert, &cli.key) {
        (Some(ca), Some(cert), Some(key)) => {
            (Some(TlsPaths { cert: cert.clone(), key: key.clone(), ca: Some(ca.clone()) }), None)
        }
        _ => match from_config {
            Some(hop) => (Some(hop.paths), hop.server_name),
            None => (None, None),
        },
    };
    let tls = match paths {
        None => None,
        Some(paths) => {
            let name = match cli.server_name.clone().or(name) {
                Some(n) => Some(services::tls::server_name(&n)?),
                None => None,
            };
            Some((ClientTls::client(paths, &[ALPN_H2], RELOAD_INTERVAL).await?, name))
        }
    };
    Ok((token, tls))
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
    let (token, tls) = credentials(&cli).await?;
    let channel = agent_svc::security::channel(&cli.target, tls, Duration::from_secs(5)).await?;
    let bearer = match token {
        Some(t) => Some(AsciiMetadataValue::try_from(format!("Bearer {t}"))?),
        None => None,
    };
    let mut client = AgentServiceClient::with_interceptor(channel, move |mut req: tonic::Request<()>| {
        if let Some(b) = &bearer {
            req.metadata_mut().insert("authorization", b.clone());
        }
        Ok(req)
    });
    if cli.list_agents {
        let r = client.list_agents(ListAgentsRequest {}).await?.into_inner();
        for a in r.agents {
            println!("{}", json!({"id": a.id, "model": a.model, "default": a.is_default}));
        }
        return Ok(());
    }
    if let Some(key) = cli.history {
        let r = client
            .get_session_history(GetSessionHistoryRequest { session_key: key, ..Default::default() })
            .await?;
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
