//! A scripted fake agent-svc (a real tonic server implementing the generated
//! trait) and helpers to serve the gateway router against it.

#![allow(dead_code)] // each test file uses a different subset

use gateway_http::auth::Auth;
use gateway_http::state::{AppState, ChatSettings};
use gateway_http::AgentClient;
use services::config::{AuthMode, RateLimitConfig};
use services::proto::agent_run_event::Event;
use services::proto::agent_service_server::{AgentService, AgentServiceServer};
use services::proto::*;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status};

pub const TOKEN: &str = "t0ken";

/// One step of a scripted run.
#[derive(Debug, Clone)]
pub enum Step {
    Event(Event),
    Error(Status),
    Sleep(Duration),
    /// Wait until the gateway drops the stream; counts a cancellation.
    Hang,
}

/// What the fake answers to the next `AgentRun`.
#[derive(Debug, Clone, Default)]
pub struct Script {
    /// Fail the call itself (before the stream opens).
    pub upfront: Option<Status>,
    pub steps: Vec<Step>,
}

#[derive(Debug, Default)]
pub struct Shared {
    pub scripts: Mutex<VecDeque<Script>>,
    pub requests: Mutex<Vec<(AgentRunRequest, tonic::metadata::MetadataMap)>>,
    pub cancelled: AtomicUsize,
}

#[derive(Debug, Clone, Default)]
pub struct Fake(pub Arc<Shared>);

impl Fake {
    pub fn push(&self, s: Script) {
        self.0.scripts.lock().unwrap().push_back(s);
    }

    pub fn last_request(&self) -> (AgentRunRequest, tonic::metadata::MetadataMap) {
        self.0.requests.lock().unwrap().last().cloned().expect("a request")
    }

    pub fn cancelled(&self) -> usize {
        self.0.cancelled.load(Ordering::SeqCst)
    }
}

#[tonic::async_trait]
impl AgentService for Fake {
    type AgentRunStream = ReceiverStream<Result<AgentRunEvent, Status>>;

    async fn agent_run(
        &self,
        req: Request<AgentRunRequest>,
    ) -> Result<Response<Self::AgentRunStream>, Status> {
        let md = req.metadata().clone();
        self.0.requests.lock().unwrap().push((req.into_inner(), md));
        let script = self.0.scripts.lock().unwrap().pop_front().unwrap_or_else(|| Script {
            upfront: None,
            steps: vec![started("agent:main:openai:x"), text("ok"), finished("stop")],
        });
        if let Some(s) = script.upfront {
            return Err(s);
        }
        let (tx, rx) = mpsc::channel(16);
        let shared = self.0.clone();
        tokio::spawn(async move {
            for step in script.steps {
                match step {
                    Step::Event(e) => {
                        if tx.send(Ok(AgentRunEvent { event: Some(e) })).await.is_err() {
                            shared.cancelled.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                    }
                    Step::Error(s) => {
                        let _ = tx.send(Err(s)).await;
                        return;
                    }
                    Step::Sleep(d) => tokio::time::sleep(d).await,
                    Step::Hang => {
                        tx.closed().await;
                        shared.cancelled.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn list_agents(
        &self,
        _: Request<ListAgentsRequest>,
    ) -> Result<Response<ListAgentsResponse>, Status> {
        Ok(Response::new(ListAgentsResponse {
            agents: vec![
                AgentInfo {
                    id: "main".into(),
                    model: "echo/echo".into(),
                    is_default: true,
                    fallbacks: vec![],
                },
                AgentInfo {
                    id: "beta".into(),
                    model: "echo/echo".into(),
                    is_default: false,
                    fallbacks: vec![],
                },
            ],
            default_agent_id: "main".into(),
        }))
    }

    async fn list_sessions(
        &self,
        _: Request<ListSessionsRequest>,
    ) -> Result<Response<ListSessionsResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn get_session_history(
        &self,
        _: Request<GetSessionHistoryRequest>,
    ) -> Result<Response<GetSessionHistoryResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn abort_run(&self, _: Request<AbortRunRequest>) -> Result<Response<AbortRunResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
}

/// Starts the fake with a health service reporting SERVING; returns its URL.
pub async fn start_fake(fake: Fake) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_serving::<AgentServiceServer<Fake>>().await;
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(health)
            .add_service(AgentServiceServer::new(fake))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
    });
    format!("http://{addr}")
}

/// Chat settings for tests: enabled, small keep-alive.
pub fn settings(max_body_bytes: u64, keep_alive: Duration) -> ChatSettings {
    ChatSettings {
        enabled: true,
        max_body_bytes,
        images: gateway_http::openai::ImagePolicy { allow_url: false, max_bytes: 10 << 20 },
        keep_alive,
    }
}

/// Serves `router(state)` on 127.0.0.1:0 (with connect info, like `start`).
pub async fn serve(state: AppState) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = gateway_http::router(state).into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// A gateway in front of `url` with token auth (loopback not exempt).
pub async fn gateway_for(url: &str, chat: ChatSettings) -> (SocketAddr, AppState) {
    let rl =
        RateLimitConfig { max_attempts: 3, window_ms: 60_000, lockout_ms: 60_000, exempt_loopback: false };
    let auth = Auth::new(AuthMode::Token, Some(TOKEN.into()), &rl);
    let state = AppState::from_parts(AgentClient::connect_lazy(url).unwrap(), auth, chat);
    (serve(state.clone()).await, state)
}

pub fn started(key: &str) -> Step {
    Step::Event(Event::Started(RunStarted {
        run_id: "run-1".into(),
        agent_id: "main".into(),
        session_key: key.into(),
        model: "echo/echo".into(),
    }))
}

pub fn text(t: &str) -> Step {
    Step::Event(Event::Text(TextDelta { text: t.into() }))
}

pub fn tool(index: u32, id: &str, name: &str, args: &str) -> Step {
    Step::Event(Event::ToolCall(ToolCallDelta {
        index,
        id: id.into(),
        name: name.into(),
        arguments: args.into(),
    }))
}

pub fn finished(reason: &str) -> Step {
    Step::Event(Event::Finished(RunFinished {
        finish_reason: reason.into(),
        usage: Some(Usage { prompt_tokens: 7, completion_tokens: 3, total_tokens: 10 }),
        model: "echo/echo".into(),
        provider_micros: 1_000,
    }))
}

/// A status as agent-svc builds them (type/code/param in metadata).
pub fn agent_status(
    code: tonic::Code,
    msg: &str,
    ty: &'static str,
    err_code: Option<&'static str>,
    param: Option<&'static str>,
) -> Status {
    let mut s = Status::new(code, msg);
    let md = s.metadata_mut();
    md.insert(services::error_meta::TYPE, MetadataValue::from_static(ty));
    if let Some(c) = err_code {
        md.insert(services::error_meta::CODE, MetadataValue::from_static(c));
    }
    if let Some(p) = param {
        md.insert(services::error_meta::PARAM, MetadataValue::from_static(p));
    }
    s
}

/// Splits an SSE body into its `data:` payloads and comments, in order.
pub fn sse_frames(body: &str) -> Vec<String> {
    assert!(body.ends_with("\n\n"), "body must end with a blank line: {body:?}");
    body.split_terminator("\n\n").map(str::to_owned).collect()
}

/// The JSON payloads of `data:` frames (not `[DONE]`).
pub fn sse_json(frames: &[String]) -> Vec<serde_json::Value> {
    frames
        .iter()
        .filter_map(|f| f.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}
