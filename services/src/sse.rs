//! Server-Sent Events, read the way a browser's `EventSource` reads them (the
//! WHATWG "event stream" interpretation: lines ended by CRLF, LF or CR, `data:`
//! lines joined by `\n`, an event dispatched at a blank line, comments, a leading
//! BOM skipped, an unfinished event at the end dropped).
//!
//! [`SseParser`] is incremental: it is fed a body's chunks as they arrive and
//! hands out borrowed [`SseItem`]s, allocating nothing per event. agent-svc
//! reads providers' streamed answers with it (bounding what one event may
//! buffer: [`SseParser::pending_bytes`]), and the tests and the benchmark read
//! the gateway's with it. A unit test checks it against the `eventsource-stream`
//! crate on the same inputs cut at every byte.

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
        while let Some(i) = memchr::memchr2(b'\n', b'\r', rest) {
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

    /// Bytes held for the event being read (its unfinished line and its data so
    /// far): a reader that must bound its memory checks this after each chunk.
    pub fn pending_bytes(&self) -> usize {
        self.line.len() + self.data.len() + self.event.len()
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

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use eventsource_stream::Eventsource;
    use futures::StreamExt;

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

    #[test]
    fn pending_bytes_counts_what_an_unfinished_event_holds() {
        let mut p = SseParser::new();
        let ok = |_: SseItem<'_>| -> Result<(), ()> { Ok(()) };
        p.feed(b"data: 12345\n", ok).unwrap();
        assert_eq!(p.pending_bytes(), 6, "the data line, kept for its event");
        p.feed(b"data: abc", ok).unwrap();
        assert_eq!(p.pending_bytes(), 6 + 9, "plus the line still being read");
        p.feed(b"\n\n", ok).unwrap();
        assert_eq!(p.pending_bytes(), 0, "dispatched");
    }
}
