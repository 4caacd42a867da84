//! Faults end in a clean, bounded answer (issue "Hardening"): what a misbehaving
//! upstream, a hostile or slow client, or a stalled store can do to the pair,
//! and what the client sees instead, end to end over real sockets.

use e2e::prelude::*;

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
    // A long answer, fast: 10 MB in 10 KB deltas (more than any socket buffers hold).
    let big: Vec<String> = (0..1000).map(|_| "x".repeat(10_000)).collect();
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
