//! Starting real services on real sockets, building configs that point at the
//! [`MockUpstream`], and helpers to drive and read
//! `AgentRun` streams.
//!
//! ```no_run
//! # async fn demo() {
//! use e2e::harness::{self, AgentSvc, ConfigBuilder};
//! use e2e::mock::{Behavior, MockUpstream};
//!
//! let mock = MockUpstream::start().await;
//! mock.push(Behavior::text("hi there"));
//! let svc = AgentSvc::start(&ConfigBuilder::with_mock(&mock).system_prompt("Be brief.").build()).await;
//! let mut client = svc.client().await;
//! let req = harness::for_user("alice", vec![harness::user("hello")]);
//! let events = harness::collect_run(&mut client, req).await.expect("run");
//! let run = harness::summarize(&events);
//! assert_eq!(run.text, "hi there");
//! # }
//! ```

use crate::mock::MockUpstream;
use futures::StreamExt;
use serde_json::{json, Map, Value};
use services::config::{ConfigError, ConfigSource, LoadedConfig};
use services::proto::agent_run_event::Event;
use services::proto::agent_service_client::AgentServiceClient;
use services::proto::{
    agent_run_request, content_part, AgentRunEvent, AgentRunRequest, ContentPart, HistoryEntry, Message,
    RunFinished, RunStarted, ToolCall, ToolCallDelta, Usage,
};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::transport::Channel;
use tonic::Status;

/// The provider name [`ConfigBuilder::with_mock`] gives the mock.
pub const MOCK_PROVIDER: &str = "mock";
/// The default model [`ConfigBuilder::with_mock`] configures (`mock/gpt-mock`).
pub const MOCK_MODEL: &str = "gpt-mock";
/// The API key [`ConfigBuilder::with_mock`] gives the mock provider.
pub const MOCK_API_KEY: &str = "sk-e2e-test";

/// Installs a `tracing` subscriber for test output (filter from `RUST_LOG`,
/// default `warn`). Safe to call many times.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
}

/// A unique directory under the system temp dir, removed (with its contents) on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `<tmp>/openclaw-e2e-<uuid>`. Panics if it cannot (test setup failure).
    pub fn new() -> TempDir {
        match Self::try_new() {
            Ok(d) => d,
            Err(e) => panic!("cannot create a temp dir under {}: {e}", std::env::temp_dir().display()),
        }
    }

    /// Creates `<tmp>/openclaw-e2e-<uuid>`.
    pub fn try_new() -> std::io::Result<TempDir> {
        let path = std::env::temp_dir().join(format!("openclaw-e2e-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&path)?;
        Ok(TempDir { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path inside the directory.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Default for TempDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Builds config text (JSON, which is valid JSON5) for agent-svc and gateway-http.
///
/// Starts from `{session: {store: "memory"}}`; [`ConfigBuilder::with_mock`] adds
/// a provider `mock` at the mock's base URL and makes `mock/gpt-mock` the
/// default model with `timeoutSeconds: 30`.
#[derive(Debug, Clone)]
pub struct ConfigBuilder {
    root: Value,
}

impl Default for ConfigBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl ConfigBuilder {
    /// An almost empty config with an in-memory session store.
    pub fn new() -> Self {
        ConfigBuilder { root: json!({"session": {"store": "memory"}}) }
    }

    /// A config with provider `mock` → `mock.base_url()` (`openai-completions`),
    /// default model `mock/gpt-mock`, `timeoutSeconds: 30`, store `memory`.
    pub fn with_mock(mock: &MockUpstream) -> Self {
        Self::new()
            .provider(MOCK_PROVIDER, &mock.base_url())
            .set(&format!("models.providers.{MOCK_PROVIDER}.apiKey"), json!(MOCK_API_KEY))
            .model(&format!("{MOCK_PROVIDER}/{MOCK_MODEL}"))
            .timeout_seconds(30.0)
    }

    /// Adds (or replaces) an `openai-completions` provider.
    pub fn provider(self, name: &str, base_url: &str) -> Self {
        self.set(
            &format!("models.providers.{name}"),
            json!({"baseUrl": base_url, "api": "openai-completions"}),
        )
    }

    /// `agents.defaults.model` as a plain `provider/model` string.
    pub fn model(self, primary: &str) -> Self {
        self.set("agents.defaults.model", json!(primary))
    }

    /// `agents.defaults.model` as `{primary, fallbacks}`.
    pub fn model_with_fallbacks(self, primary: &str, fallbacks: &[&str]) -> Self {
        self.set("agents.defaults.model", json!({"primary": primary, "fallbacks": fallbacks}))
    }

    /// `agents.defaults.systemPrompt`.
    pub fn system_prompt(self, prompt: &str) -> Self {
        self.set("agents.defaults.systemPrompt", json!(prompt))
    }

    /// `agents.defaults.timeoutSeconds`.
    pub fn timeout_seconds(self, seconds: f64) -> Self {
        self.set("agents.defaults.timeoutSeconds", json!(seconds))
    }

    /// Appends an entry to `agents.list`, e.g. `json!({"id": "beta", "model": "mock/b"})`.
    pub fn agent(mut self, entry: Value) -> Self {
        let list = ensure_path(&mut self.root, &["agents", "list"]);
        if !list.is_array() {
            *list = Value::Array(Vec::new());
        }
        if let Value::Array(items) = list {
            items.push(entry);
        }
        self
    }

    /// `session.store` (`memory`, `sqlite:PATH`, `postgres://…`).
    pub fn store(self, spec: &str) -> Self {
        self.set("session.store", json!(spec))
    }

    /// `session.store: "sqlite:<dir>/sessions.db"`.
    pub fn store_sqlite(self, dir: &TempDir) -> Self {
        let path = dir.join("sessions.db");
        self.store(&format!("sqlite:{}", path.display()))
    }

    /// Enables `/v1/chat/completions` and `/v1/models` (gateway-http).
    pub fn enable_chat_completions(self) -> Self {
        self.set("gateway.http.endpoints.chatCompletions.enabled", json!(true))
    }

    /// `gateway.auth` with mode `token` and this token (gateway-http).
    pub fn auth_token(self, token: &str) -> Self {
        self.set("gateway.auth", json!({"mode": "token", "token": token}))
    }

    /// `gateway.agentService.url` (gateway-http talking to a separate agent-svc).
    pub fn agent_service_url(self, url: &str) -> Self {
        self.set("gateway.agentService.url", json!(url))
    }

    /// Sets any value at a dotted path (objects are created on the way),
    /// e.g. `set("models.providers.mock.firstByteTimeoutMs", json!(200))`.
    pub fn set(mut self, dotted: &str, value: Value) -> Self {
        let parts: Vec<&str> = dotted.split('.').collect();
        *ensure_path(&mut self.root, &parts) = value;
        self
    }

    /// The config as a JSON value.
    pub fn value(&self) -> &Value {
        &self.root
    }

    /// The config text.
    pub fn build(&self) -> String {
        serde_json::to_string_pretty(&self.root).unwrap_or_else(|_| "{}".to_string())
    }
}

/// Walks (creating objects as needed) to `path` and returns the slot there.
fn ensure_path<'a>(root: &'a mut Value, path: &[&str]) -> &'a mut Value {
    let mut cur = root;
    for key in path {
        if !cur.is_object() {
            *cur = Value::Object(Map::new());
        }
        cur = match cur {
            Value::Object(map) => map.entry((*key).to_string()).or_insert(Value::Null),
            // Not reached: `cur` was just made an object.
            other => other,
        };
    }
    cur
}

/// A loopback port nobody listens on (bound, then released).
pub fn dead_port() -> u16 {
    match std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()) {
        Ok(a) => a.port(),
        Err(e) => panic!("cannot bind 127.0.0.1:0: {e}"),
    }
}

/// Config text for the mock with extra `(dotted path, value)` settings applied.
pub fn config_with_mock(mock: &MockUpstream, extra: &[(&str, Value)]) -> String {
    extra.iter().fold(ConfigBuilder::with_mock(mock), |b, (k, v)| b.set(k, v.clone())).build()
}

/// Parses config text the way the services do (the source is a label path; nothing is written).
pub fn parse_config(text: &str) -> Result<LoadedConfig, ConfigError> {
    let label = std::env::temp_dir().join(format!("openclaw-e2e-{}.json5", uuid::Uuid::new_v4()));
    services::config::parse(text, ConfigSource::File(label))
}

/// How agent-svc checks its callers: as the test's config says, whatever the
/// environment of whoever runs the tests (`OPENCLAW_AGENT_SVC_TOKEN` is not read).
fn hop(config: &LoadedConfig) -> Result<agent_svc::Hop, agent_svc::AgentError> {
    let from_config = agent_svc::Hop::from_config(config)?;
    Ok(agent_svc::Hop { token: config.agent_service_token_from(&|_| None), ..from_config })
}

/// A running agent-svc on `127.0.0.1`.
pub struct AgentSvc {
    config: LoadedConfig,
    handle: Option<agent_svc::ServerHandle>,
    addr: SocketAddr,
}

impl std::fmt::Debug for AgentSvc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentSvc").field("addr", &self.addr).field("running", &self.handle.is_some()).finish()
    }
}

/// How long [`AgentSvc::stop`] lets running turns finish.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

impl AgentSvc {
    /// Parses `config_json5` and starts agent-svc on `127.0.0.1:0`. Panics on failure.
    pub async fn start(config_json5: &str) -> AgentSvc {
        match Self::try_start(config_json5).await {
            Ok(svc) => svc,
            Err(e) => panic!("agent-svc failed to start: {e:#}\nconfig:\n{config_json5}"),
        }
    }

    /// Parses `config_json5` and starts agent-svc on `127.0.0.1:0`.
    pub async fn try_start(config_json5: &str) -> anyhow::Result<AgentSvc> {
        let config = parse_config(config_json5)?;
        let (listener, _) = crate::serve::bind_loopback().await?;
        let handle = agent_svc::start_with(&config, listener, hop(&config)?).await?;
        let addr = handle.local_addr();
        Ok(AgentSvc { config, handle: Some(handle), addr })
    }

    /// The listen address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The config it runs with.
    pub fn config(&self) -> &LoadedConfig {
        &self.config
    }

    /// Whether it is running (not stopped).
    pub fn is_running(&self) -> bool {
        self.handle.is_some()
    }

    /// A connected channel. Panics when it cannot connect.
    pub async fn channel(&self) -> Channel {
        match self.try_channel().await {
            Ok(c) => c,
            Err(e) => panic!("cannot connect to agent-svc at {}: {e:#}", self.url()),
        }
    }

    /// A connected channel.
    pub async fn try_channel(&self) -> anyhow::Result<Channel> {
        let endpoint = tonic::transport::Endpoint::from_shared(self.url())?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true);
        Ok(endpoint.connect().await?)
    }

    /// A connected `AgentService` client. Panics when it cannot connect.
    pub async fn client(&self) -> AgentServiceClient<Channel> {
        AgentServiceClient::new(self.channel().await)
    }

    /// The stored transcript of a full session key (`GetSessionHistory`, no limit).
    pub async fn history(&self, key: &str) -> Result<Vec<HistoryEntry>, Status> {
        history(&mut self.client().await, key).await
    }

    /// The transcript once it has at least `n` entries ([`history_with`]).
    pub async fn history_with(&self, key: &str, n: usize, timeout: Duration) -> Vec<HistoryEntry> {
        history_with(&self.client().await, key, n, timeout).await
    }

    /// Graceful shutdown ([`STOP_GRACE`]); afterwards the port is closed. Panics on failure.
    pub async fn stop(&mut self) {
        if let Err(e) = self.try_stop().await {
            panic!("agent-svc shutdown failed: {e}");
        }
    }

    /// Graceful shutdown; a no-op when already stopped.
    pub async fn try_stop(&mut self) -> Result<(), agent_svc::AgentError> {
        self.stop_with_grace(STOP_GRACE).await
    }

    /// Shutdown that lets running turns finish within `grace`, then cancels them.
    /// A no-op when already stopped.
    pub async fn stop_with_grace(&mut self, grace: Duration) -> Result<(), agent_svc::AgentError> {
        match self.handle.take() {
            Some(h) => h.shutdown(grace).await,
            None => Ok(()),
        }
    }

    /// Stops and starts again with the same config (a sqlite store persists).
    /// Tries the same port first; the new instance may get another one. Panics on failure.
    pub async fn restart(&mut self) {
        self.stop().await;
        let listener = match tokio::net::TcpListener::bind(self.addr).await {
            Ok(l) => l,
            Err(_) => crate::serve::must_bind_loopback("agent-svc restart").await.0,
        };
        let started = match hop(&self.config) {
            Ok(h) => agent_svc::start_with(&self.config, listener, h).await,
            Err(e) => Err(e),
        };
        match started {
            Ok(h) => {
                self.addr = h.local_addr();
                self.handle = Some(h);
            }
            Err(e) => panic!("agent-svc failed to restart: {e}"),
        }
    }
}

impl Drop for AgentSvc {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = h.shutdown(Duration::from_millis(100)).await;
                });
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Messages and requests

/// A text message with `text_only` set (the content was a plain string).
pub fn text_message(role: &str, text: &str) -> Message {
    Message {
        role: role.to_string(),
        parts: vec![ContentPart { part: Some(content_part::Part::Text(text.to_string())) }],
        text_only: true,
        ..Default::default()
    }
}

/// A `user` message.
pub fn user(text: &str) -> Message {
    text_message("user", text)
}

/// A `system` message.
pub fn system(text: &str) -> Message {
    text_message("system", text)
}

/// A `developer` message.
pub fn developer(text: &str) -> Message {
    text_message("developer", text)
}

/// An `assistant` text message.
pub fn assistant(text: &str) -> Message {
    text_message("assistant", text)
}

/// An `assistant` message with tool calls and null content.
pub fn assistant_tool_calls(calls: Vec<ToolCall>) -> Message {
    Message { role: "assistant".into(), tool_calls: calls, ..Default::default() }
}

/// A function tool call `(id, name, arguments)`.
pub fn tool_call(id: &str, name: &str, arguments: &str) -> ToolCall {
    ToolCall { id: id.into(), r#type: "function".into(), name: name.into(), arguments: arguments.into() }
}

/// A `tool` result message.
pub fn tool_result(tool_call_id: &str, text: &str) -> Message {
    Message { tool_call_id: Some(tool_call_id.to_string()), ..text_message("tool", text) }
}

/// `(role, text)` of a history entry (panics when it has no message).
pub fn role_text(e: &HistoryEntry) -> (String, String) {
    match &e.message {
        Some(m) => (m.role.clone(), text_of(m)),
        None => panic!("history entry without a message: {e:?}"),
    }
}

/// `(role, text)` as owned strings, to compare with [`role_text`] and
/// [`RecordedRequest::message_texts`](crate::mock::RecordedRequest::message_texts).
pub fn rt(role: &str, text: &str) -> (String, String) {
    (role.to_string(), text.to_string())
}

/// The text of a message (text parts joined).
pub fn text_of(m: &Message) -> String {
    m.parts
        .iter()
        .filter_map(|p| match &p.part {
            Some(content_part::Part::Text(t)) => Some(t.as_str()),
            _ => None,
        })
        .collect()
}

/// A stateless request (no session) to the default agent.
pub fn stateless(messages: Vec<Message>) -> AgentRunRequest {
    AgentRunRequest { messages, ..Default::default() }
}

/// A request on the stable `user` session.
pub fn for_user(user: &str, messages: Vec<Message>) -> AgentRunRequest {
    AgentRunRequest {
        session: Some(agent_run_request::Session::User(user.to_string())),
        messages,
        ..Default::default()
    }
}

/// A request on an explicit session key.
pub fn with_session_key(key: &str, messages: Vec<Message>) -> AgentRunRequest {
    AgentRunRequest {
        session: Some(agent_run_request::Session::SessionKey(key.to_string())),
        messages,
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------
// Running and reading streams

/// Runs `req` and collects every event; the first error status (at the call or
/// mid-stream) is returned instead (the events before it are lost: see [`run_outcome`]).
pub async fn collect_run(
    client: &mut AgentServiceClient<Channel>,
    req: AgentRunRequest,
) -> Result<Vec<AgentRunEvent>, Status> {
    let out = run_outcome(client, req).await;
    match out.error {
        Some(s) => Err(s),
        None => Ok(out.events),
    }
}

/// The events of a run and the status it ended with, if it failed.
#[derive(Debug, Default)]
pub struct RunOutcome {
    /// Events received before the end (or the error).
    pub events: Vec<AgentRunEvent>,
    /// The error status, at the call or mid-stream.
    pub error: Option<Status>,
}

impl RunOutcome {
    /// The folded events.
    pub fn summary(&self) -> RunSummary {
        summarize(&self.events)
    }
}

/// Runs `req`, keeping both the events and a terminating error.
pub async fn run_outcome(client: &mut AgentServiceClient<Channel>, req: AgentRunRequest) -> RunOutcome {
    let mut out = RunOutcome::default();
    let mut stream = match client.agent_run(req).await {
        Ok(r) => r.into_inner(),
        Err(s) => {
            out.error = Some(s);
            return out;
        }
    };
    while let Some(item) = stream.next().await {
        match item {
            Ok(ev) => out.events.push(ev),
            Err(s) => {
                out.error = Some(s);
                break;
            }
        }
    }
    out
}

/// One tool call assembled from its deltas.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AssembledToolCall {
    /// The call's index.
    pub index: u32,
    /// The id (from the first fragment).
    pub id: String,
    /// The function name.
    pub name: String,
    /// All argument fragments concatenated.
    pub arguments: String,
}

/// Events folded into what a client sees.
#[derive(Debug, Clone, Default)]
pub struct RunSummary {
    /// The `started` event, if any.
    pub started: Option<RunStarted>,
    /// Whether `started` was the first event.
    pub started_first: bool,
    /// Each text delta, in order.
    pub text_deltas: Vec<String>,
    /// The text deltas concatenated.
    pub text: String,
    /// Each tool-call delta, in order.
    pub tool_call_deltas: Vec<ToolCallDelta>,
    /// Tool calls assembled by index, in index order.
    pub tool_calls: Vec<AssembledToolCall>,
    /// The `finished` event, if any.
    pub finished: Option<RunFinished>,
    /// Whether `finished` was the last event.
    pub finished_last: bool,
    /// Events with no payload.
    pub empty_events: usize,
    /// Total events.
    pub event_count: usize,
}

impl RunSummary {
    /// The finish reason, when finished.
    pub fn finish_reason(&self) -> Option<&str> {
        self.finished.as_ref().map(|f| f.finish_reason.as_str())
    }

    /// The usage, when reported.
    pub fn usage(&self) -> Option<&Usage> {
        self.finished.as_ref().and_then(|f| f.usage.as_ref())
    }

    /// The run id from `started` (empty when missing).
    pub fn run_id(&self) -> String {
        self.started.as_ref().map(|s| s.run_id.clone()).unwrap_or_default()
    }

    /// The session key from `started` (empty when missing).
    pub fn session_key(&self) -> String {
        self.started.as_ref().map(|s| s.session_key.clone()).unwrap_or_default()
    }
}

/// Folds events into a [`RunSummary`].
pub fn summarize(events: &[AgentRunEvent]) -> RunSummary {
    let mut s = RunSummary { event_count: events.len(), ..Default::default() };
    for (i, ev) in events.iter().enumerate() {
        match &ev.event {
            Some(Event::Started(st)) => {
                s.started_first = i == 0;
                s.started = Some(st.clone());
            }
            Some(Event::Text(t)) => {
                s.text.push_str(&t.text);
                s.text_deltas.push(t.text.clone());
            }
            Some(Event::ToolCall(tc)) => {
                s.tool_call_deltas.push(tc.clone());
                match s.tool_calls.iter_mut().find(|c| c.index == tc.index) {
                    Some(c) => {
                        if c.id.is_empty() {
                            c.id = tc.id.clone();
                        }
                        if c.name.is_empty() {
                            c.name = tc.name.clone();
                        }
                        c.arguments.push_str(&tc.arguments);
                    }
                    None => s.tool_calls.push(AssembledToolCall {
                        index: tc.index,
                        id: tc.id.clone(),
                        name: tc.name.clone(),
                        arguments: tc.arguments.clone(),
                    }),
                }
            }
            Some(Event::Finished(f)) => {
                s.finished_last = i + 1 == events.len();
                s.finished = Some(f.clone());
            }
            None => s.empty_events += 1,
        }
    }
    s.tool_calls.sort_by_key(|c| c.index);
    s
}

// ---------------------------------------------------------------------------
// Status metadata and polling

/// An ASCII metadata value of a status.
pub fn status_meta(status: &Status, key: &str) -> Option<String> {
    status.metadata().get(key).and_then(|v| v.to_str().ok()).map(str::to_string)
}

/// `openclaw-error-param` of a status.
pub fn error_param(status: &Status) -> Option<String> {
    status_meta(status, services::error_meta::PARAM)
}

/// `openclaw-error-code` of a status.
pub fn error_code(status: &Status) -> Option<String> {
    status_meta(status, services::error_meta::CODE)
}

/// `openclaw-error-type` of a status.
pub fn error_type(status: &Status) -> Option<String> {
    status_meta(status, services::error_meta::TYPE)
}

/// Polls `check` every `interval` until it yields `Some` or `timeout` passes.
/// For state that has no change signal (e.g. a store written after a stream ended).
pub async fn eventually<T, F, Fut>(timeout: Duration, interval: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(interval).await;
    }
}

/// A session's stored transcript (`GetSessionHistory`, no limit).
pub async fn history(
    client: &mut AgentServiceClient<Channel>,
    key: &str,
) -> Result<Vec<HistoryEntry>, Status> {
    let req =
        services::proto::GetSessionHistoryRequest { session_key: key.to_string(), ..Default::default() };
    Ok(client.get_session_history(req).await?.into_inner().messages)
}

/// The session's history once it has at least `n` entries, polled for up to
/// `timeout` (the assistant message of a cancelled run is stored after its
/// stream is gone, so there is no signal to wait on). Panics when it never does.
pub async fn history_with(
    client: &AgentServiceClient<Channel>,
    key: &str,
    n: usize,
    timeout: Duration,
) -> Vec<HistoryEntry> {
    let found = eventually(timeout, Duration::from_millis(10), || {
        let mut c = client.clone();
        async move {
            let msgs = history(&mut c, key).await.ok()?;
            (msgs.len() >= n).then_some(msgs)
        }
    })
    .await;
    found.unwrap_or_else(|| panic!("session {key} never reached {n} history entries"))
}
