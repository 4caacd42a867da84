//! Faults end in a clean, bounded answer (issue "Hardening"): what a misbehaving
//! upstream, a hostile or slow client, or a stalled store can do to the pair,
//! and what the client sees instead, end to end over real sockets.

use e2e::prelude::*;
use e2e::ws::WsClient;

/// An upstream whose answer is a `data:` line that never ends: `502` as soon as
/// the line passes the bound (4 MiB), not at the run timeout, and the upstream
/// connection is dropped.
#[tokio::test]
async fn an_upstream_line_that_never_ends_is_a_502_in_bounded_time() {
    let mock = MockUpstream::start().await;
    let s = stack(config(&mock).timeout_seconds(600.0)).await;
    mock.push(Behavior::EndlessLine);
    let started = Instant::now();
    let r = chat(&s, &ask("hello")).await;
    assert_eq!(r.status, 502, "{}", r.text);
    let v = r.json();
    assert_eq!(v["error"]["code"], "upstream_error");
    assert!(v["error"]["message"].as_str().unwrap_or_default().contains("over 4 MiB"), "{v}");
    assert!(mock.wait_for_disconnect(T).await, "the upstream connection is dropped");
    eprintln!("endless line: 502 after {:?}", started.elapsed());

    // Streaming: before the first token the error keeps its status too.
    mock.push(Behavior::EndlessLine);
    let r = send(s.gw.chat(&streamed("hello", json!({})))).await;
    assert_eq!(r.status, 502, "{}", r.text);
    assert_eq!(r.json()["error"]["code"], "upstream_error");
}

/// A provider that stops sending mid-answer ends the run after the provider's
/// idle timeout (`504`), not after `timeoutSeconds`.
#[tokio::test]
async fn an_upstream_that_stalls_mid_answer_times_out_after_the_idle_timeout() {
    let mock = MockUpstream::start().await;
    let cfg = config(&mock).timeout_seconds(600.0).set("models.providers.mock.idleTimeoutMs", json!(300));
    let s = stack(cfg).await;
    mock.push(Behavior::chunks(["Hel", "lo"]).with_delay(Duration::from_secs(30)));
    let started = Instant::now();
    let r = chat(&s, &ask("hello")).await;
    assert_eq!(r.status, 504, "{}", r.text);
    let v = r.json();
    assert_eq!(v["error"]["code"], "timeout");
    assert!(v["error"]["message"].as_str().unwrap_or_default().contains("300 ms"), "{v}");
    assert!(started.elapsed() < Duration::from_secs(25), "ended by the idle timeout, not the stall");
    assert!(mock.wait_for_disconnect(T).await, "the stalled upstream request is dropped");
}

/// A provider error inside the answer that says the request was at fault
/// (context too long) is the client's `400`, as SPEC §4 says, not a `502`.
#[tokio::test]
async fn an_in_stream_error_blaming_the_request_is_a_400() {
    let mock = MockUpstream::start().await;
    let s = stack(config(&mock)).await;
    mock.push(Behavior::RawSse(vec![json!({"error": {
        "message": "This model's maximum context length is 8192 tokens.",
        "type": "invalid_request_error", "code": "context_length_exceeded"}})]));
    let r = chat(&s, &ask("a very long conversation")).await;
    assert_eq!(r.status, 400, "{}", r.text);
    let v = r.json();
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(v["error"]["message"].as_str().unwrap_or_default().contains("maximum context length"), "{v}");
    // A server-side error in the answer stays the provider's fault.
    mock.push(Behavior::RawSse(vec![json!({"error": {"message": "overloaded", "type": "server_error"}})]));
    let r = chat(&s, &ask("again")).await;
    assert_eq!(r.status, 502, "{}", r.text);
}

/// A provider that lists its models accepts only those, in the agents' config
/// as in the `x-openclaw-model` header: a start-up error naming the key.
#[tokio::test]
async fn an_agent_model_the_provider_does_not_list_refuses_to_start() {
    let mock = MockUpstream::start().await;
    let cfg = config(&mock)
        .set("models.providers.mock.models", json!([{"id": "gpt-mock"}]))
        .set("agents.list", json!([{"id": "main", "model": "mock/not-listed"}]))
        .build();
    let e = AgentSvc::try_start(&cfg).await.expect_err("must refuse");
    assert!(e.to_string().contains("agents.list[0].model"), "{e}");
    let e = Gateway::try_start(&cfg, Some("127.0.0.1:1")).await.expect_err("must refuse");
    assert!(e.to_string().contains("agents.list[0].model"), "{e}");
}

/// Sends a chat completion's head, then `sent_bytes` of its 1000-byte body one
/// at a time every `every`, and returns what the gateway answered and whether
/// it then closed the connection.
async fn trickle(gw: &Gateway, sent_bytes: usize, every: Duration) -> (String, bool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(gw.addr()).await.expect("connect");
    let (mut rd, mut wr) = tcp.into_split();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n",
        gw.addr()
    );
    wr.write_all(head.as_bytes()).await.expect("head");
    let writer = tokio::spawn(async move {
        for _ in 0..sent_bytes {
            tokio::time::sleep(every).await;
            if wr.write_all(b" ").await.is_err() {
                break;
            }
        }
        // Keep the write half open: the body is never finished.
        std::future::pending::<()>().await;
    });
    let read = async {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            match rd.read(&mut chunk).await {
                Ok(0) | Err(_) => return (String::from_utf8_lossy(&buf).into_owned(), true),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    let out = tokio::time::timeout(T, read).await.unwrap_or((String::new(), false));
    writer.abort();
    out
}

/// A body that never arrives, or trickles in, is `408` after the body timeout
/// and the connection is closed (it held a connection and a task forever before).
#[tokio::test]
async fn a_body_that_stalls_or_trickles_is_a_408_and_the_connection_closes() {
    let mock = MockUpstream::start().await;
    let s = stack(config(&mock).set("gateway.http.bodyTimeoutMs", json!(300))).await;
    // Stops after the headers.
    let (answer, closed) = trickle(&s.gw, 0, Duration::from_millis(100)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
    assert!(closed, "the connection is closed after the 408");
    // A byte every 100 ms: never done within 300 ms.
    let (answer, closed) = trickle(&s.gw, 50, Duration::from_millis(100)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(closed);
    assert!(mock.requests().is_empty(), "nothing ran");
}

/// A streaming client that stops reading cannot hold agent-svc's stream (and
/// the HTTP/2 window every run on the connection shares): its answer piles up
/// in its own buffer, and past `gateway.http.maxBufferedBytes` its run is ended
/// (the upstream request cancelled), while other clients' runs go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streaming_client_that_stops_reading_has_its_run_ended_and_slows_no_one() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mock = MockUpstream::start().await;
    let s = stack(config(&mock).set("gateway.http.maxBufferedBytes", json!(65536))).await;
    // A long answer, fast: 60 MB in 10 KB deltas, more than the socket buffers between the mock
    // and agent-svc can hold (loopback receive buffers grow to 32 MiB here: with 10 MB the mock
    // could write its whole answer into them before the run was ended, and never see it end).
    let big: Vec<String> = (0..6000).map(|_| "x".repeat(10_000)).collect();
    mock.set_for_model("huge", Behavior::chunks(big));

    // The stalled client: sends its request, reads the head, then never reads again.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("small receive buffer");
    let mut tcp = socket.connect(s.gw.addr()).await.expect("connect");
    let body = streamed("give me everything", json!({})).to_string();
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\nx-openclaw-model: mock/huge\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(req.as_bytes()).await.expect("request");
    let mut head = [0u8; 64];
    let n = tcp.read(&mut head).await.expect("head");
    assert!(head[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&head[..n]));

    // Its run is ended: the upstream request is dropped long before its end.
    assert!(mock.wait_for_disconnect(T).await, "the stalled client's run was never ended");
    // Meanwhile (and after) others are served as usual.
    let r = chat(&s, &ask("and me?")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let metrics = send(s.gw.get("/metrics")).await.text;
    assert!(metrics.contains("openclaw_gateway_slow_clients_total 1"), "{metrics}");
    drop(tcp);
}

/// Past `gateway.limits.maxConcurrentRuns` a run is refused at once with `503
/// overloaded` and `Retry-After` (JSON and streaming alike), the runs in flight
/// finish, and the place is free again after them.
#[tokio::test]
async fn runs_beyond_the_gateway_bound_are_refused_at_once() {
    let mock = MockUpstream::start().await;
    let s = stack(config(&mock).set("gateway.limits.maxConcurrentRuns", json!(2))).await;
    let gate = Gate::new();
    for _ in 0..2 {
        mock.push(Behavior::text("held").gated(&gate));
    }
    let held: Vec<_> = (0..2).map(|i| tokio::spawn(send(s.gw.chat(&ask(&format!("held {i}")))))).collect();
    assert!(mock.wait_for_requests(2, T).await, "both runs reach the upstream");

    let r = chat(&s, &ask("one more")).await;
    let v = r.expect_error(503, "api_error");
    assert_eq!(v["code"], "overloaded", "{v}");
    assert_eq!(r.header("retry-after"), Some("1"));
    let r = send(s.gw.chat(&streamed("one more, streamed", json!({})))).await;
    assert_eq!(r.status, 503, "{}", r.text);
    assert_eq!(mock.request_count(), 2, "refused runs never reach agent-svc's upstream");

    gate.open();
    for h in held {
        let r = h.await.expect("task");
        assert_eq!(r.status, 200, "{}", r.text);
    }
    let r = chat(&s, &ask("after")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let metrics = send(s.gw.get("/metrics")).await.text;
    assert!(metrics.contains("openclaw_gateway_overload_refusals_total{limit=\"runs\"} 2"), "{metrics}");
}

/// Sends `GET /healthz` on a raw connection and returns what came back before
/// the answer ended (or the connection closed).
async fn health_over(tcp: &mut tokio::net::TcpStream) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let read = async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
            let text = String::from_utf8_lossy(&got);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len = head
                    .lines()
                    .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length: ").map(str::to_owned))
                    .and_then(|n| n.trim().parse::<usize>().ok());
                if len.is_some_and(|n| body.len() >= n) {
                    break;
                }
            }
        }
    };
    tokio::time::timeout(T, read).await.expect("an answer in time");
    String::from_utf8_lossy(&got).into_owned()
}

/// Past `gateway.limits.maxConnections` a new connection gets a `503
/// overloaded` and is closed; a WebSocket counts for as long as it is open
/// (after its upgrade too), and a closed connection frees its place.
#[tokio::test]
async fn connections_beyond_the_bound_get_a_503_and_are_closed() {
    use tokio::net::TcpStream;
    let mock = MockUpstream::start().await;
    let s = stack(config(&mock).set("gateway.limits.maxConnections", json!(2))).await;
    let addr = s.gw.addr();
    let mut first = TcpStream::connect(addr).await.expect("connect");
    assert!(health_over(&mut first).await.starts_with("HTTP/1.1 200"));
    let ws = WsClient::open(addr).await;

    let mut third = TcpStream::connect(addr).await.expect("connect");
    let refused = health_over(&mut third).await;
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    assert!(refused.contains("retry-after: 1") && refused.contains("\"code\":\"overloaded\""), "{refused}");
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(T, tokio::io::AsyncReadExt::read_to_end(&mut third, &mut rest)).await;
    assert!(matches!(closed, Ok(Ok(0))), "the refused connection is closed");
    // The open ones are still served.
    assert!(health_over(&mut first).await.starts_with("HTTP/1.1 200"));

    // Closing the WebSocket frees its place (noticed by the server a moment later).
    drop(ws);
    let served = eventually(T, Duration::from_millis(20), || async {
        let mut c = TcpStream::connect(addr).await.ok()?;
        health_over(&mut c).await.starts_with("HTTP/1.1 200").then_some(())
    })
    .await;
    assert!(served.is_some(), "a closed connection's place is never given back");
    let metrics = send(s.gw.get("/metrics")).await;
    // (This request may itself be refused while the last probe's connection closes.)
    if metrics.status == 200 {
        assert!(metrics.text.contains("openclaw_gateway_overload_refusals_total{limit=\"connections\"}"));
    }
}

/// agent-svc's own bound (`gateway.agentService.maxConcurrentRuns`): with one
/// replica the client gets its `503 overloaded`; with two, a run refused by the
/// full one is retried on the other and succeeds.
#[tokio::test]
async fn a_full_agent_svc_replica_refuses_and_the_gateway_tries_another() {
    let mock = MockUpstream::start().await;
    let s = stack(config(&mock).set("gateway.agentService.maxConcurrentRuns", json!(1))).await;
    let gate = Gate::new();
    mock.push(Behavior::text("held").gated(&gate));
    let held = tokio::spawn(send(s.gw.chat(&ask("held"))));
    assert!(mock.wait_for_requests(1, T).await);
    let r = chat(&s, &ask("one more")).await;
    let v = r.expect_error(503, "api_error");
    assert_eq!(v["code"], "overloaded", "{v}");
    assert!(v["message"].as_str().unwrap_or_default().contains("agent-svc replica"), "{v}");
    assert_eq!(r.header("retry-after"), Some("1"));
    gate.open();
    assert_eq!(held.await.expect("task").status, 200);

    // Two replicas of one run each; the first is kept busy by a direct gRPC call.
    let (busy_mock, free_mock) = (MockUpstream::start().await, MockUpstream::start().await);
    let one_run =
        |m: &MockUpstream| config(m).set("gateway.agentService.maxConcurrentRuns", json!(1)).build();
    let busy = AgentSvc::start(&one_run(&busy_mock)).await;
    let free = AgentSvc::start(&one_run(&free_mock)).await;
    let gw = Gateway::start(&one_run(&busy_mock), Some(&format!("{},{}", busy.addr(), free.addr())))
        .await
        .with_bearer(TOKEN);
    let gate = Gate::new();
    busy_mock.push(Behavior::text("held").gated(&gate));
    let mut client = busy.client().await;
    let holder = tokio::spawn(async move {
        harness::run_outcome(&mut client, harness::stateless(vec![harness::user("x")])).await
    });
    assert!(busy_mock.wait_for_requests(1, T).await);
    // Sessions pin to a replica by key: of 20 users some belong to the busy one.
    for i in 0..20 {
        let r = send(gw.chat(&with(ask(&format!("turn {i}")), json!({"user": format!("user-{i}")})))).await;
        assert_eq!(r.status, 200, "turn {i}: {}", r.text);
    }
    assert_eq!(busy_mock.request_count(), 1, "the full replica ran nothing else");
    assert_eq!(free_mock.request_count(), 20);
    let metrics = send(gw.get("/metrics")).await.text;
    let retried = format!("openclaw_gateway_replica_retries_total{{replica=\"{}\"}}", busy.addr());
    assert!(metrics.lines().any(|l| l.starts_with(&retried) && !l.ends_with(" 0")), "{metrics}");
    gate.open();
    assert!(holder.await.expect("task").error.is_none());
}
