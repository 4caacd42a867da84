//! A scripted fake agent-svc: a real tonic server on `127.0.0.1:0` implementing
//! the generated `AgentService` trait (plus the standard health service), for
//! gateway tests that need agent-svc to do exactly one thing: a given event
//! sequence, a status carrying the error metadata, a stream that never ends, a
//! `ListAgents` held back. It records what the gateway sent and notices when the
//! gateway drops a run's stream.
//!
//! Each `AgentRun` takes the next queued [`Script`] ([`FakeAgentSvc::push`]);
//! with none queued it answers `started`, `text("ok")`, `finished("stop")`.
//! `ListAgents` lists `main` (default) and `beta`; `ListSessions` is empty;
//! `AbortRun` aborts nothing (it is recorded); `GetSessionHistory` is unimplemented.
//!
//! ```no_run
//! # async fn demo() {
//! use e2e::fake::{finished, started, text, FakeAgentSvc, Script};
//!
//! let fake = FakeAgentSvc::start().await;
//! fake.push(Script::steps(vec![started("agent:main:openai:x"), text("Hel"), text("lo"), finished("stop")]));
//! // ... point a gateway at `fake.url()` and send a request ...
//! let (request, metadata) = fake.last_request();
//! # let _ = (request, metadata);
//! # }
//! ```

use crate::mock::Gate;
use crate::serve::{must_bind_loopback, ServerTask};
use services::proto::agent_run_event::Event;
use services::proto::agent_service_server::{AgentService, AgentServiceServer};
use services::proto::{
    AbortRunRequest, AbortRunResponse, AgentInfo, AgentRunEvent, AgentRunRequest, CompactSessionRequest,
    CompactSessionResponse, DeleteSessionRequest, DeleteSessionResponse, GetSessionHistoryRequest,
    GetSessionHistoryResponse, ListAgentsRequest, ListAgentsResponse, ListSessionsRequest,
    ListSessionsResponse, ResetSessionRequest, ResetSessionResponse, RunFinished, RunStarted, TextDelta,
    ToolCallDelta, Usage,
};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Request, Response, Status};

/// One step of a scripted run.
#[derive(Debug, Clone)]
pub enum Step {
    /// Send this event.
    Event(Event),
    /// End the stream with this status.
    Error(Status),
    /// Say nothing for this long (a silent run is what the test looks at); a
    /// caller that drops the stream meanwhile counts as a cancellation.
    Sleep(Duration),
    /// Say nothing until the caller drops the stream, which counts as a cancellation.
    Hang,
    /// Say nothing until the test opens the gate (a stream held open on purpose);
    /// a caller that drops the stream meanwhile counts as a cancellation.
    Wait(Gate),
}

/// What the fake answers to one `AgentRun`.
#[derive(Debug, Clone, Default)]
pub struct Script {
    /// Refuse the call itself (before the stream opens) with this status.
    pub upfront: Option<Status>,
    /// The stream, step by step; it ends after the last one.
    pub steps: Vec<Step>,
}

impl Script {
    /// A stream of these steps.
    pub fn steps(steps: Vec<Step>) -> Script {
        Script { upfront: None, steps }
    }

    /// A call refused with `status` before any stream.
    pub fn refuse(status: Status) -> Script {
        Script { upfront: Some(status), steps: Vec::new() }
    }
}

/// A run request and the gRPC metadata it came with.
pub type Recorded = (AgentRunRequest, MetadataMap);

#[derive(Default)]
struct State {
    scripts: VecDeque<Script>,
    requests: Vec<Recorded>,
    aborts: Vec<AbortRunRequest>,
    list_agents_gate: Option<Gate>,
}

struct Shared {
    state: Mutex<State>,
    /// `AgentRun` calls received.
    requests: watch::Sender<usize>,
    /// Runs whose stream the caller dropped before the script ended.
    cancelled: watch::Sender<usize>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The running fake. Dropping it stops the server.
pub struct FakeAgentSvc {
    shared: Arc<Shared>,
    addr: SocketAddr,
    _server: ServerTask,
}

impl std::fmt::Debug for FakeAgentSvc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeAgentSvc").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl FakeAgentSvc {
    /// Starts the fake on `127.0.0.1:0`, its health service reporting SERVING.
    /// Panics when it cannot bind (test setup failure).
    pub async fn start() -> FakeAgentSvc {
        let (listener, addr) = must_bind_loopback("fake agent-svc").await;
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            requests: watch::channel(0).0,
            cancelled: watch::channel(0).0,
        });
        let (reporter, health) = tonic_health::server::health_reporter();
        reporter.set_serving::<AgentServiceServer<Service>>().await;
        let service = AgentServiceServer::new(Service(shared.clone()));
        let server = ServerTask::spawn("fake agent-svc", |stop| {
            tonic::transport::Server::builder()
                .add_service(health)
                .add_service(service)
                .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), stop)
        });
        FakeAgentSvc { shared, addr, _server: server }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Queues the answer to a later `AgentRun` (consumed in order).
    pub fn push(&self, script: Script) {
        self.shared.lock().scripts.push_back(script);
    }

    /// Holds every `ListAgents` answer until `gate` opens.
    pub fn hold_list_agents(&self, gate: &Gate) {
        self.shared.lock().list_agents_gate = Some(gate.clone());
    }

    /// Every `AgentRun` request received, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.lock().requests.clone()
    }

    /// The last `AgentRun` request; panics when there was none.
    pub fn last_request(&self) -> Recorded {
        match self.shared.lock().requests.last() {
            Some(r) => r.clone(),
            None => panic!("the fake agent-svc received no AgentRun"),
        }
    }

    /// Waits until at least `n` `AgentRun` calls arrived; false on timeout.
    pub async fn wait_for_requests(&self, n: usize, timeout: Duration) -> bool {
        let mut rx = self.shared.requests.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|c| *c >= n)).await.is_ok_and(|r| r.is_ok())
    }

    /// Every `AbortRun` request received, in order.
    pub fn aborts(&self) -> Vec<AbortRunRequest> {
        self.shared.lock().aborts.clone()
    }

    /// How many runs the caller dropped before their script ended.
    pub fn cancelled(&self) -> usize {
        *self.shared.cancelled.borrow()
    }

    /// Waits until at least `n` runs were dropped by the caller; false on timeout.
    pub async fn wait_for_cancelled(&self, n: usize, timeout: Duration) -> bool {
        let mut rx = self.shared.cancelled.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|c| *c >= n)).await.is_ok_and(|r| r.is_ok())
    }
}

/// The tonic service (the fake's shared state).
#[derive(Clone)]
struct Service(Arc<Shared>);

#[tonic::async_trait]
impl AgentService for Service {
    type AgentRunStream = ReceiverStream<Result<AgentRunEvent, Status>>;

    async fn agent_run(
        &self,
        req: Request<AgentRunRequest>,
    ) -> Result<Response<Self::AgentRunStream>, Status> {
        let md = req.metadata().clone();
        let script = {
            let mut state = self.0.lock();
            state.requests.push((req.into_inner(), md));
            state.scripts.pop_front().unwrap_or_else(|| {
                Script::steps(vec![started("agent:main:openai:x"), text("ok"), finished("stop")])
            })
        };
        self.0.requests.send_modify(|c| *c += 1);
        if let Some(s) = script.upfront {
            return Err(s);
        }
        let (tx, rx) = mpsc::channel(16);
        let shared = self.0.clone();
        tokio::spawn(async move {
            let cancelled = || shared.cancelled.send_modify(|c| *c += 1);
            for step in script.steps {
                match step {
                    Step::Event(e) => {
                        if tx.send(Ok(AgentRunEvent { event: Some(e) })).await.is_err() {
                            cancelled();
                            return;
                        }
                    }
                    Step::Error(s) => {
                        let _ = tx.send(Err(s)).await;
                        return;
                    }
                    Step::Sleep(d) => {
                        tokio::select! {
                            () = tokio::time::sleep(d) => {}
                            () = tx.closed() => {
                                cancelled();
                                return;
                            }
                        }
                    }
                    Step::Hang => {
                        tx.closed().await;
                        cancelled();
                        return;
                    }
                    Step::Wait(gate) => {
                        tokio::select! {
                            () = gate.wait() => {}
                            () = tx.closed() => {
                                cancelled();
                                return;
                            }
                        }
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
        let gate = self.0.lock().list_agents_gate.clone();
        if let Some(g) = gate {
            g.wait().await;
        }
        let agent = |id: &str, is_default: bool| AgentInfo {
            id: id.into(),
            model: "echo/echo".into(),
            is_default,
            fallbacks: vec![],
        };
        Ok(Response::new(ListAgentsResponse {
            agents: vec![agent("main", true), agent("beta", false)],
            default_agent_id: "main".into(),
        }))
    }

    async fn list_sessions(
        &self,
        _: Request<ListSessionsRequest>,
    ) -> Result<Response<ListSessionsResponse>, Status> {
        Ok(Response::new(ListSessionsResponse::default()))
    }

    async fn get_session_history(
        &self,
        _: Request<GetSessionHistoryRequest>,
    ) -> Result<Response<GetSessionHistoryResponse>, Status> {
        Err(Status::unimplemented("fake agent-svc"))
    }

    async fn abort_run(&self, req: Request<AbortRunRequest>) -> Result<Response<AbortRunResponse>, Status> {
        self.0.lock().aborts.push(req.into_inner());
        Ok(Response::new(AbortRunResponse::default()))
    }

    async fn reset_session(
        &self,
        _: Request<ResetSessionRequest>,
    ) -> Result<Response<ResetSessionResponse>, Status> {
        Err(Status::unimplemented("fake agent-svc"))
    }

    async fn delete_session(
        &self,
        _: Request<DeleteSessionRequest>,
    ) -> Result<Response<DeleteSessionResponse>, Status> {
        Err(Status::unimplemented("fake agent-svc"))
    }

    async fn compact_session(
        &self,
        _: Request<CompactSessionRequest>,
    ) -> Result<Response<CompactSessionResponse>, Status> {
        Err(Status::unimplemented("fake agent-svc"))
    }
}

// ---------------------------------------------------------------------------
// Steps

/// `started` with run id `run-1`, agent `main`, model `echo/echo` and this session key.
pub fn started(session_key: &str) -> Step {
    Step::Event(Event::Started(RunStarted {
        run_id: "run-1".into(),
        agent_id: "main".into(),
        session_key: session_key.into(),
        model: "echo/echo".into(),
    }))
}

/// A text delta.
pub fn text(t: &str) -> Step {
    Step::Event(Event::Text(TextDelta { text: t.into() }))
}

/// A tool-call delta.
pub fn tool(index: u32, id: &str, name: &str, arguments: &str) -> Step {
    Step::Event(Event::ToolCall(ToolCallDelta {
        index,
        id: id.into(),
        name: name.into(),
        arguments: arguments.into(),
    }))
}

/// `finished` with this reason, usage 7 + 3 = 10 and model `echo/echo`.
pub fn finished(reason: &str) -> Step {
    Step::Event(Event::Finished(RunFinished {
        finish_reason: reason.into(),
        usage: Some(Usage { prompt_tokens: 7, completion_tokens: 3, total_tokens: 10 }),
        model: "echo/echo".into(),
        provider_micros: 1_000,
    }))
}

/// A status as agent-svc builds them: the code and message, and the error
/// type, code and param in the `openclaw-error-*` metadata.
pub fn agent_status(
    code: tonic::Code,
    message: &str,
    error_type: &'static str,
    error_code: Option<&'static str>,
    param: Option<&'static str>,
) -> Status {
    let mut s = Status::new(code, message);
    let md = s.metadata_mut();
    md.insert(services::error_meta::TYPE, MetadataValue::from_static(error_type));
    if let Some(c) = error_code {
        md.insert(services::error_meta::CODE, MetadataValue::from_static(c));
    }
    if let Some(p) = param {
        md.insert(services::error_meta::PARAM, MetadataValue::from_static(p));
    }
    s
}
