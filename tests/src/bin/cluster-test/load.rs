//! Steady mixed load through the gateway, every attempt recorded: JSON and SSE,
//! stateless and stable sessions (one worker per session, so a session's turns
//! are sequential and numbered).

use futures::StreamExt;
use parking_lot::Mutex;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Longer than this without an answer is a hang.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How one attempt ended, as a client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `200` and a whole answer (JSON content, or SSE ending in `[DONE]` without an error).
    Ok,
    /// A clean error before any answer: a JSON error body with this status and code.
    Refused { status: u16, code: String },
    /// A clean error after the stream began: `data: {"error":…}` then `[DONE]`.
    Broken { code: String },
    /// Anything else: a hang, a reset connection, a 500, a malformed answer.
    Unclean(String),
}

/// One request.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// When it was sent.
    pub at: Instant,
    /// How long until its answer was complete.
    pub took: Duration,
    /// The session and its attempt number, for stable-session workers.
    pub session: Option<(String, u32)>,
    /// How it ended.
    pub outcome: Outcome,
}

/// The running load.
pub struct Load {
    stop: Arc<AtomicBool>,
    workers: Vec<tokio::task::JoinHandle<()>>,
    attempts: Arc<Mutex<Vec<Attempt>>>,
}

/// The session marker of one attempt, as the mock upstream counts it.
pub fn marker(session: &str, attempt: u32) -> String {
    format!("[sess:{session}#{attempt}]")
}

impl Load {
    /// Starts `stateless` stateless workers and one worker per name in
    /// `sessions`, each alternating JSON and SSE.
    pub fn start(url: &str, token: &str, stateless: usize, sessions: &[String]) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let attempts = Arc::new(Mutex::new(Vec::new()));
        let http = reqwest::Client::builder().no_proxy().http1_only().build().unwrap_or_default();
        let mut workers = Vec::new();
        let jobs = (0..stateless).map(|_| None).chain(sessions.iter().cloned().map(Some));
        for (w, session) in jobs.enumerate() {
            let (url, token, stop, attempts, http) =
                (url.to_owned(), token.to_owned(), stop.clone(), attempts.clone(), http.clone());
            workers.push(tokio::spawn(async move {
                let mut n = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let a =
                        once(&http, &url, &token, session.as_deref(), n, (w + n as usize).is_multiple_of(2))
                            .await;
                    attempts.lock().push(a);
                }
            }));
        }
        Load { stop, workers, attempts }
    }

    /// Every attempt so far.
    pub fn attempts(&self) -> Vec<Attempt> {
        self.attempts.lock().clone()
    }

    /// Stops the workers (each finishes its request) and returns every attempt.
    pub async fn stop(self) -> Vec<Attempt> {
        self.stop.store(true, Ordering::Relaxed);
        for w in self.workers {
            let _ = w.await;
        }
        let all = self.attempts.lock().clone();
        all
    }
}

/// One request and how it ended.
pub async fn once(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    session: Option<&str>,
    n: u32,
    stream: bool,
) -> Attempt {
    let at = Instant::now();
    let text = match session {
        Some(s) => format!("{} turn {n}", marker(s, n)),
        None => format!("stateless request {n}"),
    };
    let mut body =
        json!({"model": "openclaw", "stream": stream, "messages": [{"role": "user", "content": text}]});
    if let Some(s) = session {
        body["user"] = json!(s);
    }
    let req = http
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.to_string());
    let outcome = match tokio::time::timeout(REQUEST_TIMEOUT, answer(req, stream)).await {
        Ok(o) => o,
        Err(_) => Outcome::Unclean(format!("no answer within {REQUEST_TIMEOUT:?} (a hang)")),
    };
    Attempt { at, took: at.elapsed(), session: session.map(|s| (s.to_owned(), n)), outcome }
}

async fn answer(req: reqwest::RequestBuilder, stream: bool) -> Outcome {
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => return Outcome::Unclean(format!("request failed: {e}")),
    };
    let status = resp.status().as_u16();
    if status != 200 {
        let text = resp.text().await.unwrap_or_default();
        return match serde_json::from_str::<Value>(&text) {
            Ok(v) if v["error"]["message"].is_string() && status != 500 => {
                Outcome::Refused { status, code: v["error"]["code"].as_str().unwrap_or_default().to_owned() }
            }
            _ => Outcome::Unclean(format!("status {status}: {text}")),
        };
    }
    if !stream {
        return match resp.json::<Value>().await {
            Ok(v) if v["choices"][0]["message"]["content"].is_string() => Outcome::Ok,
            Ok(v) => Outcome::Unclean(format!("200 without an answer: {v}")),
            Err(e) => Outcome::Unclean(format!("200 with a broken body: {e}")),
        };
    }
    let mut body = resp.bytes_stream();
    let mut raw = Vec::new();
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(b) => raw.extend_from_slice(&b),
            Err(e) => return Outcome::Unclean(format!("stream cut: {e}")),
        }
    }
    let raw = String::from_utf8_lossy(&raw);
    if !raw.ends_with("data: [DONE]\n\n") {
        return Outcome::Unclean(format!("stream without [DONE]: {raw}"));
    }
    let error = raw
        .split("\n\n")
        .filter_map(|f| f.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .find(|v| v.get("error").is_some());
    match error {
        None => Outcome::Ok,
        Some(e) => Outcome::Broken { code: e["error"]["code"].as_str().unwrap_or_default().to_owned() },
    }
}
