//! Security at the edges, end to end over real sockets: agent-svc's internal
//! token and mutual TLS (who may call it, health staying open), the gateway
//! sending the token and speaking mTLS (and what a refused token becomes), TLS
//! on the public port (HTTPS over h2 and HTTP/1.1, WSS), a certificate swap
//! under an open stream, and secrets read from files.

use e2e::fake::{finished, started, text, FakeAgentSvc, Script, Step};
use e2e::harness::TempDir;
use e2e::prelude::*;
use e2e::tls::{served_leaf, wss_connect, TestCa, TlsFiles};
use futures::{SinkExt, StreamExt};
use gateway_http::GatewayOptions;
use services::proto::agent_service_client::AgentServiceClient;
use services::proto::ListAgentsRequest;
use std::net::SocketAddr;
use tokio_tungstenite::tungstenite::Message;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_health::pb::health_check_response::ServingStatus;

const HOP_TOKEN: &str = "e2e-internal-token";

/// Adds `authorization: Bearer <token>` to every call (none: nothing).
#[derive(Clone)]
struct Bearer(Option<AsciiMetadataValue>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

type Client = AgentServiceClient<InterceptedService<Channel, Bearer>>;

/// A client of agent-svc at `addr`: plain, or TLS with `tls` (server checked as
/// `localhost`); `token` sent on every call. A connection that fails is the
/// `UNAVAILABLE` status the call would have seen.
async fn client(
    addr: SocketAddr,
    tls: Option<rustls::ClientConfig>,
    token: Option<&str>,
) -> Result<Client, Status> {
    let tls = tls.map(|c| {
        let name = services::tls::server_name("localhost").expect("a name");
        (services::tls::Reloading::fixed(c), Some(name))
    });
    let channel = agent_svc::security::channel(&addr.to_string(), tls, T)
        .await
        .map_err(|e| Status::unavailable(format!("connect: {e:?}")))?;
    let bearer = token.map(|t| AsciiMetadataValue::try_from(format!("Bearer {t}")).expect("ASCII"));
    Ok(AgentServiceClient::with_interceptor(channel, Bearer(bearer)))
}

/// `ListAgents` and one `AgentRun` (echo model) through a fresh client.
async fn call(
    addr: SocketAddr,
    tls: Option<rustls::ClientConfig>,
    token: Option<&str>,
) -> Result<String, Status> {
    let mut c = client(addr, tls, token).await?;
    let agents = c.list_agents(ListAgentsRequest {}).await?.into_inner();
    assert_eq!(agents.default_agent_id, "main");
    let mut stream = c.agent_run(harness::stateless(vec![harness::user("hello hop")])).await?.into_inner();
    let mut events = Vec::new();
    while let Some(e) = stream.message().await? {
        events.push(e);
    }
    Ok(harness::summarize(&events).text)
}

/// grpc.health.v1 for AgentService, without any token.
async fn health(addr: SocketAddr, tls: Option<rustls::ClientConfig>) -> Result<i32, Status> {
    let tls = tls.map(|c| (services::tls::Reloading::fixed(c), services::tls::server_name("localhost").ok()));
    let channel = agent_svc::security::channel(&addr.to_string(), tls, T)
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let req = tonic_health::pb::HealthCheckRequest { service: gateway_http::client::HEALTH_SERVICE.into() };
    Ok(tonic_health::pb::health_client::HealthClient::new(channel).check(req).await?.into_inner().status)
}

fn expect_unauthenticated(r: Result<String, Status>, what: &str) {
    let s = r.expect_err(what);
    assert_eq!(s.code(), Code::Unauthenticated, "{what}: {s:?}");
    assert_eq!(harness::error_type(&s).as_deref(), Some("unauthorized"), "{what}: {s:?}");
}

/// The echo model only, nothing upstream.
fn echo_config() -> ConfigBuilder {
    ConfigBuilder::new().model("echo/echo")
}

/// `gateway.agentService.tls` with these files (and a server name).
fn hop_tls(files: &TlsFiles, server_name: Option<&str>) -> Value {
    let mut t = json!({"caPath": files.ca, "certPath": files.cert, "keyPath": files.key});
    if let Some(n) = server_name {
        t["serverName"] = json!(n);
    }
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_svc_requires_the_internal_token_and_health_stays_open() {
    harness::init_tracing();
    let svc =
        AgentSvc::start(&echo_config().set("gateway.agentService.token", json!(HOP_TOKEN)).build()).await;
    let addr = svc.addr();
    expect_unauthenticated(call(addr, None, None).await, "no token");
    expect_unauthenticated(call(addr, None, Some("wrong-token")).await, "wrong token");
    expect_unauthenticated(call(addr, None, Some(&format!("{HOP_TOKEN}x"))).await, "token with a suffix");
    assert_eq!(call(addr, None, Some(HOP_TOKEN)).await.expect("the right token"), "hello hop");
    assert_eq!(health(addr, None).await.expect("health without a token"), ServingStatus::Serving as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_svc_over_mtls_refuses_clients_without_the_right_certificate_or_token() {
    harness::init_tracing();
    let dir = TempDir::new();
    let ca = TestCa::new();
    let server = ca.issue(&["localhost"]).write(&dir, "agent-svc", &ca);
    let client_cert = ca.issue(&["gateway.test"]);
    let other_ca = TestCa::new();
    let stranger = other_ca.issue(&["gateway.test"]);
    let cfg = echo_config()
        .set("gateway.agentService.token", json!(HOP_TOKEN))
        .set("gateway.agentService.tls", hop_tls(&server, None));
    let svc = AgentSvc::start(&cfg.build()).await;
    let addr = svc.addr();
    let h2 = [services::tls::ALPN_H2];

    // Refused at the TLS layer: never a call, whatever the token.
    let refused = |r: Result<String, Status>, what: &str| {
        let s = r.expect_err(what);
        assert_ne!(s.code(), Code::Unauthenticated, "{what}: refused before any call: {s:?}");
    };
    refused(call(addr, None, Some(HOP_TOKEN)).await, "plaintext client");
    refused(call(addr, Some(ca.client_config(None, &h2)), Some(HOP_TOKEN)).await, "no client certificate");
    refused(
        call(addr, Some(other_ca.client_config(Some(&stranger), &h2)), Some(HOP_TOKEN)).await,
        "a certificate from another CA",
    );
    // A stranger's certificate is also refused when it trusts the right CA itself.
    refused(
        call(addr, Some(ca.client_config(Some(&stranger), &h2)), Some(HOP_TOKEN)).await,
        "stranger, right roots",
    );

    // The right certificate: now the token decides.
    let good = || Some(ca.client_config(Some(&client_cert), &h2));
    expect_unauthenticated(call(addr, good(), None).await, "mTLS without the token");
    expect_unauthenticated(call(addr, good(), Some("wrong-token")).await, "mTLS with a wrong token");
    assert_eq!(call(addr, good(), Some(HOP_TOKEN)).await.expect("mTLS and the token"), "hello hop");
    assert_eq!(health(addr, good()).await.expect("health over mTLS"), ServingStatus::Serving as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_with_the_right_token_works_and_one_with_a_wrong_token_answers_503() {
    harness::init_tracing();
    let mock = MockUpstream::start().await;
    let svc =
        AgentSvc::start(&config(&mock).set("gateway.agentService.token", json!(HOP_TOKEN)).build()).await;

    let right = config(&mock).set("gateway.agentService.token", json!(HOP_TOKEN)).build();
    let gw = Gateway::start(&right, Some(&svc.url())).await.with_bearer(TOKEN);
    let r = send(gw.chat(&ask("through the hop"))).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["choices"][0]["message"]["content"], "through the hop");

    let wrong = config(&mock).set("gateway.agentService.token", json!("not-the-token")).build();
    let gw = Gateway::start(&wrong, Some(&svc.url())).await.with_bearer(TOKEN);
    for _ in 0..4 {
        let r = send(gw.chat(&ask("refused"))).await;
        let e = r.expect_error(503, "api_error");
        assert_eq!(e["code"], "agent_unavailable", "{}", r.text);
        assert_eq!(r.header("retry-after"), Some("1"));
    }
    // A deployment error, not the replica's: it is not ejected, and nothing ran.
    assert_eq!(gw.state().client().replicas().up, 1);
    assert_eq!(mock.request_count(), 1, "only the first gateway's turn reached the upstream");
    // The client's own token is still checked first: a wrong one is the client's 401.
    let r = send(json_body(gw.post("/v1/chat/completions"), &ask("x")).bearer_auth("nope")).await;
    r.expect_error(401, "unauthorized");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_reaches_agent_svc_over_mtls_checking_the_target_host_name() {
    harness::init_tracing();
    let dir = TempDir::new();
    let ca = TestCa::new();
    // No IP address in agent-svc's certificate: only names.
    let svc_files = ca.issue(&["agent-svc.test", "localhost"]).write(&dir, "agent-svc", &ca);
    let gw_files = ca.issue(&["gateway.test"]).write(&dir, "gateway", &ca);
    let other_ca = TestCa::new();
    let stranger_files = other_ca.issue(&["gateway.test"]).write(&dir, "stranger", &ca);
    let mock = MockUpstream::start().await;
    let with_hop = |files: &TlsFiles, name: Option<&str>| {
        config(&mock)
            .set("gateway.agentService.token", json!(HOP_TOKEN))
            .set("gateway.agentService.tls", hop_tls(files, name))
            .build()
    };
    let svc = AgentSvc::start(&with_hop(&svc_files, None)).await;
    let port = svc.addr().port();
    let ip_url = format!("http://127.0.0.1:{port}");

    let ask_through = |cfg: String, url: String| async move {
        let gw = Gateway::start(&cfg, Some(&url)).await.with_bearer(TOKEN);
        send(gw.chat(&ask("over mtls"))).await
    };
    // The configured server name.
    let r = ask_through(with_hop(&gw_files, Some("agent-svc.test")), ip_url.clone()).await;
    assert_eq!(r.status, 200, "serverName: {}", r.text);
    // No server name: the target's host name, though the channel dials the resolved address.
    let r = ask_through(with_hop(&gw_files, None), format!("localhost:{port}")).await;
    assert_eq!(r.status, 200, "the target's host name: {}", r.text);
    // An IP target and no server name: the IP is checked, and the certificate does not carry it.
    let r = ask_through(with_hop(&gw_files, None), ip_url.clone()).await;
    r.expect_error(503, "api_error");
    // A client certificate agent-svc's CA did not issue.
    let r = ask_through(with_hop(&stranger_files, Some("agent-svc.test")), ip_url).await;
    r.expect_error(503, "api_error");
    assert_eq!(mock.request_count(), 2);
}

/// A gateway on `gateway.tls` with a certificate for `localhost`, in front of
/// `agent_svc_url`, checking its TLS files every 50 ms.
async fn https_gateway(cfg: ConfigBuilder, files: &TlsFiles, agent_svc_url: &str) -> Gateway {
    let cfg = cfg.set("gateway.tls", json!({"enabled": true, "certPath": files.cert, "keyPath": files.key}));
    let opts = GatewayOptions { tls_reload_interval: Some(Duration::from_millis(50)), ..Default::default() };
    match Gateway::try_start_with(&cfg.build(), Some(agent_svc_url), opts).await {
        Ok(gw) => gw.with_bearer(TOKEN),
        Err(e) => panic!("gateway with TLS: {e:#}"),
    }
}

/// An HTTPS client trusting only `ca`.
fn https_client(ca: &TestCa, http1_only: bool) -> reqwest::Client {
    let root = reqwest::Certificate::from_pem(ca.pem().as_bytes()).expect("CA PEM");
    let b = reqwest::Client::builder().no_proxy().tls_built_in_root_certs(false).add_root_certificate(root);
    let b = if http1_only { b.http1_only() } else { b };
    b.build().expect("HTTPS client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_over_h2_and_http1_and_wss_on_the_public_port() {
    harness::init_tracing();
    let dir = TempDir::new();
    let ca = TestCa::new();
    let files = ca.issue(&["localhost", "127.0.0.1"]).write(&dir, "public", &ca);
    let mock = MockUpstream::start().await;
    let svc = AgentSvc::start(&config(&mock).build()).await;
    let gw = https_gateway(config(&mock), &files, &svc.url()).await;
    assert_eq!(gw.state().public_scheme(), "https");
    let base = format!("https://localhost:{}", gw.addr().port());

    for (http1_only, version) in [(false, reqwest::Version::HTTP_2), (true, reqwest::Version::HTTP_11)] {
        let http = https_client(&ca, http1_only);
        let resp = http.get(format!("{base}/healthz")).send().await.expect("GET /healthz over HTTPS");
        assert_eq!((resp.status().as_u16(), resp.version()), (200, version));
        let r = send(
            json_body(http.post(format!("{base}/v1/chat/completions")), &ask("secure")).bearer_auth(TOKEN),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.json()["choices"][0]["message"]["content"], "secure");
    }
    // Plain HTTP on the TLS port gets no answer.
    let plain = gateway_http_plain(gw.addr()).await;
    assert!(plain.is_err(), "plaintext must not be served: {plain:?}");

    // WSS on the same listener: the challenge, connect, and a request.
    let mut ws = wss_connect(gw.addr(), &ca).await.expect("WSS upgrade");
    let challenge = next_json(&mut ws).await;
    assert_eq!(challenge["event"], "connect.challenge");
    let connect = json!({"type": "req", "id": "c1", "method": "connect", "params": {
        "minProtocol": 4, "maxProtocol": 4, "client": {"id": "e2e", "version": "1", "platform": "rust", "mode": "cli"},
        "auth": {"token": TOKEN}}});
    ws.send(Message::text(connect.to_string())).await.expect("send connect");
    let hello = next_json(&mut ws).await;
    assert_eq!(hello["payload"]["type"], "hello-ok", "{hello}");
    ws.send(Message::text(json!({"type": "req", "id": "h1", "method": "health"}).to_string()))
        .await
        .expect("send");
    let health = loop {
        let frame = next_json(&mut ws).await;
        if frame["type"] == "res" {
            break frame;
        }
    };
    assert_eq!((health["id"].as_str(), health["ok"].as_bool()), (Some("h1"), Some(true)), "{health}");
}

/// `GET /healthz` in plain HTTP/1.1 to `addr`.
async fn gateway_http_plain(addr: SocketAddr) -> Result<reqwest::Response, reqwest::Error> {
    e2e::gateway::http_client().get(format!("http://{addr}/healthz")).timeout(T).send().await
}

/// The next text frame of `ws` as JSON.
async fn next_json<S>(ws: &mut S) -> Value
where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        match tokio::time::timeout(T, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return serde_json::from_str(t.as_str()).expect("JSON frame"),
            Ok(Some(Ok(_))) => continue,
            other => panic!("no frame: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_swap_keeps_the_open_stream_and_new_connections_get_the_new_certificate() {
    harness::init_tracing();
    let dir = TempDir::new();
    let ca = TestCa::new();
    let first = ca.issue(&["localhost"]);
    let files = first.write(&dir, "public", &ca);
    let fake = FakeAgentSvc::start().await;
    let gate = Gate::new();
    let key = "agent:main:openai:swap";
    fake.push(Script::steps(vec![
        started(key),
        text("before "),
        Step::Wait(gate.clone()),
        text("after"),
        finished("stop"),
    ]));
    let gw =
        https_gateway(ConfigBuilder::new().enable_chat_completions().auth_token(TOKEN), &files, &fake.url())
            .await;
    let base = format!("https://localhost:{}", gw.addr().port());
    assert_eq!(served_leaf(gw.addr(), &ca).await.expect("handshake"), first.der);

    let http = https_client(&ca, true);
    let body = streamed("swap", json!({}));
    let resp =
        open(json_body(http.post(format!("{base}/v1/chat/completions")), &body).bearer_auth(TOKEN)).await;
    assert_eq!(resp.status(), 200);
    let mut reader = SseReader::new(resp);
    assert!(reader.wait_raw(T, |raw| raw.contains("before ")).await, "{:?}", reader.raw_text());

    // Rotate while the stream is open; new connections see the new leaf.
    let second = ca.issue(&["localhost"]);
    second.overwrite(&files);
    let swapped = eventually(T, Duration::from_millis(20), || async {
        (served_leaf(gw.addr(), &ca).await.ok()? == second.der).then_some(())
    })
    .await;
    assert!(swapped.is_some(), "the new certificate was not served within {T:?}");

    // The stream opened under the old certificate completes.
    gate.open();
    let events = reader.rest(T).await;
    assert!(reader.raw_text().contains("\"after\""), "{:?}", reader.raw_text());
    assert!(events.last().is_some_and(|e| e.is_done()), "{:?}", reader.raw_text());
    assert!(reader.error().is_none(), "{:?}", reader.raw_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_come_from_files_and_a_missing_file_is_a_one_line_error() {
    harness::init_tracing();
    let dir = TempDir::new();
    let write = |name: &str, content: &str| {
        let p = dir.join(name);
        std::fs::write(&p, content).expect("write secret");
        p
    };
    let token_file = write("gateway-token", "token-from-file\n");
    let hop_file = write("hop-token", "hop-from-file\n");
    let key_file = write("api-key", "sk-from-file\n");
    let mock = MockUpstream::start().await;
    let cfg = ConfigBuilder::with_mock(&mock)
        .enable_chat_completions()
        .set("gateway.auth", json!({"mode": "token", "tokenFile": token_file}))
        .set("gateway.agentService.tokenFile", json!(hop_file))
        .set(&format!("models.providers.{}.apiKey", harness::MOCK_PROVIDER), Value::Null)
        .set(&format!("models.providers.{}.apiKeyFile", harness::MOCK_PROVIDER), json!(key_file));
    let s = Stack::start(&cfg, Some("token-from-file")).await;
    let r = chat(&s, &ask("from files")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let upstream = mock.last_request().expect("the upstream was called");
    assert_eq!(upstream.header("authorization").as_deref(), Some("Bearer sk-from-file"));
    let r = send(json_body(s.gw.post("/v1/chat/completions"), &ask("x")).bearer_auth("token-from-fil")).await;
    r.expect_error(401, "unauthorized");
    // agent-svc got the hop token from its file too: a caller without it is refused.
    expect_unauthenticated(call(s.svc.addr(), None, None).await, "no hop token");
    assert!(call(s.svc.addr(), None, Some("hop-from-file")).await.is_ok());

    let missing = dir.join("not-there");
    let cfg = ConfigBuilder::new().set("gateway.auth", json!({"mode": "token", "tokenFile": missing}));
    let e = Gateway::try_start(&cfg.build(), None).await.expect_err("a missing token file");
    let line = e.to_string();
    assert!(!line.contains('\n'), "{line}");
    assert!(
        line.contains("gateway.auth.tokenFile") && line.contains(&missing.display().to_string()),
        "{line}"
    );
}
