//! Server-Sent Events, read the way a browser's `EventSource` reads them (the
//! WHATWG "event stream" interpretation: lines ended by CRLF, LF or CR, `data:`
//! lines joined by `\n`, an event dispatched at a blank line, comments, a leading
//! BOM skipped, an unfinished event at the end dropped).
//!
//! One implementation serves everything here that reads SSE:
//!
//! - [`SseParser`], an incremental parser fed with body chunks as they arrive.
//!   It hands out borrowed [`SseItem`]s and allocates nothing per event, so the
//!   benchmark's load workers use it on every streamed answer;
//! - [`SseReader`], the tests' reader over a reqwest response: it keeps each
//!   event's arrival time, the comments (`: keep-alive`) in their place among
//!   the events, and the raw bytes;
//! - [`read_stream`], a whole SSE answer in one call.
//!
//! A unit test checks the parser against the `eventsource-stream` crate on the
//! same inputs cut at every byte.
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

/// The UTF-8 byte order mark, skipped once at the start of a stream.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// One thing an SSE body carries, borrowed from the parser.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SseItem<'a> {
    /// A dispatched event.
    Event {
        /// The `event:` type (empty: the default, `message`).
        event: &'a [u8],
        /// The `data:` lines of the event joined by `\n`.
        data: &'a [u8],
    },
    /// A comment line (`:` first): the text after the colon, one leading space removed.
    Comment(&'a [u8]),
}

/// An incremental SSE parser: feed it the body's bytes in chunks of any size.
#[derive(Debug, Default, Clone)]
pub struct SseParser {
    /// The start of a line whose end has not arrived yet.
    line: Vec<u8>,
    /// The data buffer of the event being read: each `data:` value plus `\n`.
    data: Vec<u8>,
    /// The event type buffer.
    event: Vec<u8>,
    /// A first line was seen (a BOM can only open the stream).
    started: bool,
    /// The last chunk ended in `\r`: a `\n` opening the next one ends no line.
    after_cr: bool,
}

impl SseParser {
    /// A parser at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets everything (a new stream follows).
    pub fn reset(&mut self) {
        self.line.clear();
        self.data.clear();
        self.event.clear();
        self.started = false;
        self.after_cr = false;
    }

    /// Parses `chunk`, calling `on_item` for every event and comment it
    /// completes, in order. An error from `on_item` stops the parse and is returned.
    pub fn feed<E>(
        &mut self,
        chunk: &[u8],
        mut on_item: impl FnMut(SseItem<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut rest = chunk;
        if self.after_cr && !rest.is_empty() {
            self.after_cr = false;
            if rest[0] == b'\n' {
                rest = &rest[1..];
            }
        }
        while let Some(i) = rest.iter().position(|&b| b == b'\n' || b == b'\r') {
            let end = &rest[..i];
            let cr = rest[i] == b'\r';
            rest = &rest[i + 1..];
            if cr {
                match rest.first() {
                    Some(b'\n') => rest = &rest[1..],
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
            if self.line.is_empty() {
                self.on_line(end, &mut on_item)?;
            } else {
                let mut line = std::mem::take(&mut self.line);
                line.extend_from_slice(end);
                let r = self.on_line(&line, &mut on_item);
                line.clear();
                self.line = line;
                r?;
            }
        }
        self.line.extend_from_slice(rest);
        Ok(())
    }

    /// Whether the bytes so far end inside an event (a line without its end, or
    /// data without the blank line that dispatches it). Such an event is dropped
    /// at the end of the stream, as `EventSource` does.
    pub fn is_mid_event(&self) -> bool {
        !self.line.is_empty() || !self.data.is_empty()
    }

    fn on_line<E>(
        &mut self,
        line: &[u8],
        on_item: &mut impl FnMut(SseItem<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        let line = if self.started {
            line
        } else {
            self.started = true;
            line.strip_prefix(BOM).unwrap_or(line)
        };
        if line.is_empty() {
            if self.data.is_empty() {
                // No data: nothing is dispatched (and the type is forgotten).
                self.event.clear();
                return Ok(());
            }
            let r = on_item(SseItem::Event { event: &self.event, data: &self.data[..self.data.len() - 1] });
            self.data.clear();
            self.event.clear();
            return r;
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(0) => return on_item(SseItem::Comment(strip_space(&line[1..]))),
            Some(i) => (&line[..i], strip_space(&line[i + 1..])),
            None => (line, &b""[..]),
        };
        match field {
            b"data" => {
                self.data.extend_from_slice(value);
                self.data.push(b'\n');
            }
            b"event" => {
                self.event.clear();
                self.event.extend_from_slice(value);
            }
            // `id`, `retry` and unknown fields do not change what a reader sees here.
            _ => {}
        }
        Ok(())
    }
}

fn strip_space(value: &[u8]) -> &[u8] {
    value.strip_prefix(b" ").unwrap_or(value)
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use eventsource_stream::Eventsource;

    /// Everything [`SseParser`] reports for `input` fed in pieces of `step` bytes.
    fn parse(input: &[u8], step: usize) -> (Vec<(String, String)>, Vec<String>, bool) {
        let mut p = SseParser::new();
        let (mut events, mut comments) = (Vec::new(), Vec::new());
        for piece in input.chunks(step.max(1)) {
            p.feed(piece, |item| -> Result<(), ()> {
                match item {
                    SseItem::Event { event, data } => events.push((
                        String::from_utf8_lossy(event).into_owned(),
                        String::from_utf8_lossy(data).into_owned(),
                    )),
                    SseItem::Comment(c) => comments.push(String::from_utf8_lossy(c).into_owned()),
                }
                Ok(())
            })
            .expect("no error");
        }
        (events, comments, p.is_mid_event())
    }

    /// What `eventsource-stream` dispatches for `input` in pieces of `step` bytes.
    async fn oracle(input: &[u8], step: usize) -> Vec<(String, String)> {
        let pieces: Vec<Result<Bytes, std::convert::Infallible>> =
            input.chunks(step.max(1)).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
        let mut s = futures::stream::iter(pieces).eventsource();
        let mut out = Vec::new();
        while let Some(ev) = s.next().await {
            let ev = ev.expect("oracle parse");
            // The oracle names the default type; the parser leaves it empty.
            let kind = if ev.event == "message" { String::new() } else { ev.event };
            out.push((kind, ev.data));
        }
        out
    }

    const CORPUS: &[&str] = &[
        "data: {\"a\":1}\n\ndata: [DONE]\n\n",
        "data: one\r\n\r\ndata: two\r\rdata: three\n\n",
        ": keep-alive\n\ndata: x\n\n: keep-alive\n\ndata: y\n\n",
        "data: line 1\ndata: line 2\n\n",
        "data:no space\ndata:  two spaces\n\n",
        "event: ping\ndata: p\n\ndata: after\n\n",
        "id: 7\nretry: 100\nunknown: z\ndata: with fields\n\n",
        "data\n\ndata:\n\n",
        "event: only-type\n\ndata: m\n\n",
        "data: tail\n\ndata: unfinished\n",
        "data: a\n\n\n\n\ndata: b\r\n\r\n",
        "data: ünïcödé ✓\n\n",
    ];

    #[tokio::test]
    async fn agrees_with_eventsource_stream_at_every_cut() {
        for input in CORPUS {
            let bytes = input.as_bytes();
            for step in 1..=bytes.len() {
                let (events, _, _) = parse(bytes, step);
                assert_eq!(events, oracle(bytes, step).await, "{input:?} in pieces of {step}");
            }
        }
    }

    #[test]
    fn a_leading_bom_is_skipped_once() {
        // (Not in the oracle's corpus: eventsource-stream 0.2 panics on a BOM.)
        for step in 1..=6 {
            let (events, _, _) = parse("\u{feff}data: bom\n\n".as_bytes(), step);
            assert_eq!(events, [(String::new(), "bom".to_string())], "pieces of {step}");
        }
        let (events, _, _) = parse("data: a\n\n\u{feff}data: b\n\n".as_bytes(), 64);
        assert_eq!(events, [(String::new(), "a".to_string())], "a BOM later is part of a field name");
    }

    #[test]
    fn comments_line_ends_and_unfinished_events() {
        let (events, comments, mid) = parse(b": keep-alive\n\ndata: x\r\n\r\n:  two\n", 3);
        assert_eq!(events, [(String::new(), "x".to_string())]);
        assert_eq!(comments, ["keep-alive", " two"]);
        assert!(!mid, "a finished comment line is not a pending event");

        let (events, _, mid) = parse(b"data: done\n\ndata: cut", 4);
        assert_eq!(events.len(), 1);
        assert!(mid, "the body ends inside an event");
        let (_, _, mid) = parse(b"data: cut\n", 4);
        assert!(mid, "data without its blank line is pending");

        // A CR ending one chunk and an LF opening the next are one line end.
        let mut p = SseParser::new();
        let mut got = Vec::new();
        for piece in [&b"data: a\r"[..], b"\n\r", b"\ndata: b\r", b"\r"] {
            p.feed(piece, |item| -> Result<(), ()> {
                if let SseItem::Event { data, .. } = item {
                    got.push(data.to_vec());
                }
                Ok(())
            })
            .expect("no error");
        }
        assert_eq!(got, [b"a".to_vec(), b"b".to_vec()]);
    }

    #[test]
    fn an_error_from_the_callback_stops_the_parse() {
        let mut p = SseParser::new();
        let mut seen = 0;
        let r = p.feed(b"data: 1\n\ndata: 2\n\n", |_| {
            seen += 1;
            Err("stop")
        });
        assert_eq!(r, Err("stop"));
        assert_eq!(seen, 1);
    }
}
