//! Server-Sent Events, read the way a browser's `EventSource` reads them (the
//! WHATWG "event stream" interpretation: lines ended by CRLF, LF or CR, `data:`
//! lines joined by `\n`, an event dispatched at a blank line, comments, a leading
//! BOM skipped, an unfinished event at the end dropped).
//!
//! One implementation serves everything that reads SSE:
//!
//! - [`SseParser`] (from `services::sse`, shared with agent-svc's provider
//!   reader), an incremental parser fed with body chunks as they arrive. It
//!   hands out borrowed [`SseItem`]s and allocates nothing per event, so the
//!   benchmark's load workers use it on every streamed answer;
//! - [`SseReader`], the tests' reader over a reqwest response: it keeps each
//!   event's arrival time, the comments (`: keep-alive`) in their place among
//!   the events, and the raw bytes;
//! - [`read_stream`], a whole SSE answer in one call.
//!
//!
//! ```no_run
//! # async fn demo(resp: reqwest::Response) {
//! use e2e::sse::SseReader;
//! use std::time::Duration;
//!
//! let mut reader = SseReader::new(resp);
//! let first = reader.next(Duration::from_secs(5)).await.expect("an event");
//! let rest = reader.rest(Duration::from_secs(5)).await;
//! assert!(rest.last().is_some_and(|e| e.is_done()));
//! # let _ = first;
//! # }
//! ```

use crate::gateway::{open, HTTP_TIMEOUT};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use reqwest::header::HeaderMap;
use reqwest::RequestBuilder;
use serde_json::Value;
use std::collections::VecDeque;
use std::pin::Pin;
use std::time::{Duration, Instant};

pub use services::sse::{SseItem, SseParser};

// ---------------------------------------------------------------------------
// The tests' reader

/// One SSE event as the test read it.
#[derive(Debug, Clone)]
pub struct SseEvent {
    /// The `data:` payload.
    pub data: String,
    /// The payload as JSON (`None` for `[DONE]` or non-JSON).
    pub json: Option<Value>,
    /// When the test received it.
    pub at: Instant,
}

impl SseEvent {
    /// Whether this is `data: [DONE]`.
    pub fn is_done(&self) -> bool {
        self.data == "[DONE]"
    }

    /// The JSON payload; panics when the event is not JSON.
    pub fn value(&self) -> &Value {
        match &self.json {
            Some(v) => v,
            None => panic!("SSE event is not JSON: {:?}", self.data),
        }
    }

    /// `choices[0].delta.content`, when the event is a chunk carrying content.
    pub fn content(&self) -> Option<&str> {
        self.json.as_ref()?.pointer("/choices/0/delta/content")?.as_str()
    }
}

/// An event or a comment, in the order the body carried them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseFrame {
    /// An event's data.
    Data(String),
    /// A comment's text (`keep-alive` for `: keep-alive`).
    Comment(String),
}

/// The `choices[0].delta.content` strings of `events`, concatenated.
pub fn content_of(events: &[SseEvent]) -> String {
    events.iter().filter_map(SseEvent::content).collect()
}

type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, reqwest::Error>> + Send>>;

/// Reads a response body as SSE with [`SseParser`], as it arrives. Keeps the raw
/// bytes and every frame (comments included) too. Dropping the reader drops the
/// response (the client disconnects).
pub struct SseReader {
    body: ByteStream,
    parser: SseParser,
    raw: Vec<u8>,
    frames: Vec<SseFrame>,
    pending: VecDeque<SseEvent>,
    ended: bool,
    error: Option<String>,
}

impl std::fmt::Debug for SseReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SseReader").field("ended", &self.ended).field("error", &self.error).finish()
    }
}

impl SseReader {
    /// Starts reading `resp`'s body.
    pub fn new(resp: reqwest::Response) -> SseReader {
        SseReader {
            body: Box::pin(resp.bytes_stream()),
            parser: SseParser::new(),
            raw: Vec::new(),
            frames: Vec::new(),
            pending: VecDeque::new(),
            ended: false,
            error: None,
        }
    }

    /// Every byte received so far, as text.
    pub fn raw_text(&self) -> String {
        String::from_utf8_lossy(&self.raw).into_owned()
    }

    /// Every event and comment received so far, in order.
    pub fn frames(&self) -> &[SseFrame] {
        &self.frames
    }

    /// A transport error that ended the body, or a body that ended inside an event.
    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    /// Whether the body has ended.
    pub fn is_ended(&self) -> bool {
        self.ended
    }

    /// Reads one more piece of the body (its events go to `pending`); false at the end.
    async fn pull(&mut self) -> bool {
        if self.ended {
            return false;
        }
        match self.body.next().await {
            Some(Ok(bytes)) => {
                let at = Instant::now();
                self.raw.extend_from_slice(&bytes);
                let (frames, pending) = (&mut self.frames, &mut self.pending);
                let _ = self.parser.feed(&bytes, |item| -> Result<(), ()> {
                    match item {
                        SseItem::Event { data, .. } => {
                            let data = String::from_utf8_lossy(data).into_owned();
                            frames.push(SseFrame::Data(data.clone()));
                            let json = serde_json::from_str(&data).ok();
                            pending.push_back(SseEvent { data, json, at });
                        }
                        SseItem::Comment(text) => {
                            frames.push(SseFrame::Comment(String::from_utf8_lossy(text).into_owned()))
                        }
                    }
                    Ok(())
                });
                true
            }
            Some(Err(e)) => {
                self.error = Some(e.to_string());
                self.ended = true;
                false
            }
            None => {
                if self.parser.is_mid_event() {
                    self.error = Some("the body ended inside an event".to_string());
                }
                self.ended = true;
                false
            }
        }
    }

    /// The next event; `None` at the end of the body. Panics when none comes within `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(ev) = self.pending.pop_front() {
                return Some(ev);
            }
            match tokio::time::timeout_at(deadline, self.pull()).await {
                Ok(true) => {}
                Ok(false) => return None,
                Err(_) => panic!("no SSE event within {timeout:?}; raw so far: {:?}", self.raw_text()),
            }
        }
    }

    /// Reads until the raw bytes satisfy `pred` (events that arrive meanwhile are
    /// kept for [`SseReader::next`]); false when the body ends or `timeout` passes first.
    pub async fn wait_raw(&mut self, timeout: Duration, pred: impl Fn(&str) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if pred(&self.raw_text()) {
                return true;
            }
            match tokio::time::timeout_at(deadline, self.pull()).await {
                Ok(true) => {}
                Ok(false) | Err(_) => return pred(&self.raw_text()),
            }
        }
    }

    /// Reads the rest of the body (bounded by `timeout`) and returns every event
    /// not yet taken with [`SseReader::next`]. Panics when the body does not end in time.
    pub async fn rest(&mut self, timeout: Duration) -> Vec<SseEvent> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.pull()).await {
                Ok(true) => {}
                Ok(false) => break,
                Err(_) => {
                    panic!("SSE body did not end within {timeout:?}; raw so far: {:?}", self.raw_text())
                }
            }
        }
        self.pending.drain(..).collect()
    }
}

/// Opens `rb` and reads the whole SSE body. Panics when it does not end within
/// [`HTTP_TIMEOUT`], on a transport error, or when it ends inside an event.
pub async fn read_stream(rb: RequestBuilder) -> SseReply {
    let resp = open(rb).await;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let mut reader = SseReader::new(resp);
    let events = reader.rest(HTTP_TIMEOUT).await;
    if let Some(e) = reader.error() {
        panic!("SSE body failed: {e}; raw: {:?}", reader.raw_text());
    }
    SseReply {
        status,
        headers,
        events,
        frames: reader.frames,
        raw: String::from_utf8_lossy(&reader.raw).into_owned(),
    }
}

/// A whole SSE answer.
#[derive(Debug, Clone)]
pub struct SseReply {
    /// The status code.
    pub status: u16,
    /// The response headers.
    pub headers: HeaderMap,
    /// Every event, in order (`[DONE]` included).
    pub events: Vec<SseEvent>,
    /// Every event and comment, in order.
    pub frames: Vec<SseFrame>,
    /// The raw body text.
    pub raw: String,
}

impl SseReply {
    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The JSON chunks (every event but `[DONE]`); panics on a non-JSON event.
    pub fn chunks(&self) -> Vec<Value> {
        self.events.iter().filter(|e| !e.is_done()).map(|e| e.value().clone()).collect()
    }

    /// The `choices[0].delta.content` strings concatenated.
    pub fn content(&self) -> String {
        content_of(&self.events)
    }
}
