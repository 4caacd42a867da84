//! An upstream's answer as agent-svc's OpenAI provider reads it: a streamed
//! (SSE) body, cut into arbitrary chunks, and a whole JSON completion. The
//! events keep the order the `Provider` trait promises whatever the upstream
//! sent, and the chunking of a body never changes them.
#![no_main]

use agent_svc::providers::openai::fuzz::{completion_events, stream_events};
use agent_svc::providers::{ProviderError, ProviderEvent};
use libfuzzer_sys::fuzz_target;

/// Content and tool calls, then one `Finish`, then at most one `Usage`; an
/// error only as the last item. With no error there is exactly one `Finish`.
fn check_order(items: &[Result<ProviderEvent, ProviderError>]) {
    let mut finished = false;
    let mut usage = false;
    for (i, item) in items.iter().enumerate() {
        match item {
            Err(_) => assert_eq!(i + 1, items.len(), "an error that is not the last item: {items:?}"),
            Ok(ev) => {
                assert!(!usage, "an event after the usage: {items:?}");
                match ev {
                    ProviderEvent::Text(t) => {
                        assert!(!finished, "content after the finish: {items:?}");
                        assert!(!t.is_empty());
                    }
                    ProviderEvent::ToolCall { .. } => {
                        assert!(!finished, "a tool call after the finish: {items:?}")
                    }
                    ProviderEvent::Finish(reason) => {
                        assert!(!finished, "two finishes: {items:?}");
                        assert!(!reason.is_empty());
                        finished = true;
                    }
                    ProviderEvent::Usage { .. } => {
                        assert!(finished, "usage before the finish: {items:?}");
                        usage = true;
                    }
                }
            }
        }
    }
    if !matches!(items.last(), Some(Err(_))) {
        assert!(finished, "no finish and no error: {items:?}");
    }
}

fuzz_target!(|input: &[u8]| {
    let (cuts, body) = input.split_at(input.len().min(4));
    let whole = stream_events(&[body]);
    check_order(&whole);

    let mut chunks = Vec::new();
    let mut rest = body;
    let mut i = 0;
    while !rest.is_empty() {
        let c = cuts.get(i % cuts.len().max(1)).copied().unwrap_or(0);
        i += 1;
        let (piece, tail) = rest.split_at(rest.len().min(usize::from(c) % 32 + 1));
        chunks.push(piece);
        rest = tail;
    }
    let chunked = stream_events(&chunks);
    assert_eq!(chunked, whole, "the chunking changed the events");

    if let Ok(events) = completion_events(body) {
        let items: Vec<_> = events.into_iter().map(Ok).collect();
        check_order(&items);
    }
});
