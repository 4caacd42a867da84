//! Sustained load over one gateway → agent-svc connection: every run must
//! succeed, whatever the mix (JSON, SSE, clients that disconnect mid-stream).
//!
//! Before the fix, the gateway dropped each run's gRPC stream as soon as it had
//! `finished`, resetting the HTTP/2 stream before agent-svc's trailers came.
//! h2 remembers only a few reset streams, counts every frame that then arrives
//! for a forgotten one as a protocol error, and after 1,024 of those over the
//! connection's life it sends GOAWAY: every run on the connection failed with
//! `503 agent_unavailable` in bursts.

use e2e::gateway::http_client;
use e2e::prelude::*;
use futures::StreamExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
/// Runs in all (the issue asks for at least 10,000).
const RUNS: usize = 10_000;
/// Concurrent clients.
const CLIENTS: usize = 256;
/// Every this many runs, one client disconnects mid-stream.
const DISCONNECT_EVERY: usize = 20;
/// A run that takes longer than this is a hang.
const RUN_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Default)]
struct Tally {
    ok: AtomicUsize,
    disconnected: AtomicUsize,
    failed: AtomicUsize,
    first_failures: parking_lot::Mutex<Vec<String>>,
}

impl Tally {
    fn fail(&self, what: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_failures.lock();
        if first.len() < 10 {
            first.push(what);
        }
    }
}

/// One run of kind `i`: JSON, SSE read to `[DONE]`, or SSE dropped after its first delta.
async fn one_run(gw_url: &str, http: &reqwest::Client, i: usize, tally: &Tally) {
    let text = format!("run {i} says hello to the gateway");
    let disconnect = i.is_multiple_of(DISCONNECT_EVERY);
    let stream = disconnect || !i.is_multiple_of(2);
    let body =
        json!({"model": "openclaw", "stream": stream, "messages": [{"role": "user", "content": text}]});
    let mut rb = json_body(http.post(format!("{gw_url}/v1/chat/completions")), &body).bearer_auth(TOKEN);
    if disconnect {
        // A slow answer, so that the client really leaves in the middle of it.
        rb = rb.header("x-openclaw-model", "mock/slow");
    }
    let resp = match rb.send().await {
        Ok(r) => r,
        Err(e) => return tally.fail(format!("run {i}: request failed: {e}")),
    };
    let status = resp.status().as_u16();
    if status != 200 {
        let body = resp.text().await.unwrap_or_default();
        return tally.fail(format!("run {i}: status {status}: {body}"));
    }
    if !stream {
        let bytes = match resp.bytes().await {
            Ok(b) => b,
            Err(e) => return tally.fail(format!("run {i}: body broke: {e}")),
        };
        let v: serde_json::Value = match serde_json::from_slice(&bytes) {
            Ok(v) => v,
            Err(e) => return tally.fail(format!("run {i}: bad JSON: {e}")),
        };
        if v["choices"][0]["message"]["content"] != text.as_str() {
            return tally.fail(format!("run {i}: wrong answer {v}"));
        }
        tally.ok.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let mut body = resp.bytes_stream();
    let mut raw = Vec::new();
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(b) => raw.extend_from_slice(&b),
            Err(e) => return tally.fail(format!("run {i}: stream broke: {e}")),
        }
        if disconnect && raw.windows(10).any(|w| w == b"\"content\":") {
            // Gone mid-answer: the gateway must cancel the run without harm to others.
            tally.disconnected.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if raw.ends_with(b"data: [DONE]\n\n") {
            break;
        }
    }
    let raw = String::from_utf8_lossy(&raw);
    if raw.contains("\"error\"") || !raw.ends_with("data: [DONE]\n\n") {
        return tally.fail(format!("run {i}: stream did not finish cleanly: {raw}"));
    }
    tally.ok.fetch_add(1, Ordering::Relaxed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_mixed_runs_over_one_connection_never_fail() {
    let mock = MockUpstream::start().await;
    mock.set_for_model("slow", Behavior::echo_slow(Duration::from_millis(20)));
    let stack = stack(config(&mock)).await;
    let url = stack.gw.url();
    let http = http_client();
    let next = Arc::new(AtomicUsize::new(0));
    let tally = Arc::new(Tally::default());

    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (url, http, next, tally) = (url.clone(), http.clone(), next.clone(), tally.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= RUNS {
                        break;
                    }
                    if tokio::time::timeout(RUN_TIMEOUT, one_run(&url, &http, i, &tally)).await.is_err() {
                        tally.fail(format!("run {i}: no answer within {RUN_TIMEOUT:?}"));
                    }
                }
            })
        })
        .collect();
    for c in clients {
        c.await.expect("client task");
    }

    let (ok, gone, failed) = (
        tally.ok.load(Ordering::Relaxed),
        tally.disconnected.load(Ordering::Relaxed),
        tally.failed.load(Ordering::Relaxed),
    );
    eprintln!("load: {ok} ok, {gone} disconnected mid-stream, {failed} failed");
    assert_eq!(failed, 0, "runs failed under load: {:#?}", tally.first_failures.lock());
    assert_eq!(ok + gone, RUNS);
    assert_eq!(gone, RUNS / DISCONNECT_EVERY, "every planned disconnect happened mid-stream");
}
