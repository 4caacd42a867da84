//! `services::sse::SseParser` fed the same body whole and in arbitrary chunks
//! (including empty ones): it must report the same items and end in the same
//! state, and never hold more than it was given.
#![no_main]

use libfuzzer_sys::fuzz_target;
use services::sse::{SseItem, SseParser};

/// What a parser reported: events as `(type, data)`, comments as `(None, text)`.
type Items = Vec<(Option<Vec<u8>>, Vec<u8>)>;

fn feed(p: &mut SseParser, chunk: &[u8], items: &mut Items) {
    let r = p.feed(chunk, |item| -> Result<(), ()> {
        items.push(match item {
            SseItem::Event { event, data } => (Some(event.to_vec()), data.to_vec()),
            SseItem::Comment(c) => (None, c.to_vec()),
        });
        Ok(())
    });
    assert!(r.is_ok(), "the callback never fails here");
}

fuzz_target!(|input: &[u8]| {
    // The first bytes choose the chunk sizes (1..=16, an empty chunk first when
    // the high bit is set); the rest is the body.
    let (cuts, body) = input.split_at(input.len().min(8));
    let mut whole = SseParser::new();
    let mut expected = Items::new();
    feed(&mut whole, body, &mut expected);

    let mut chunked = SseParser::new();
    let mut got = Items::new();
    let mut rest = body;
    let mut i = 0;
    while !rest.is_empty() {
        let c = cuts.get(i % cuts.len().max(1)).copied().unwrap_or(0);
        i += 1;
        if c & 0x80 != 0 {
            feed(&mut chunked, &[], &mut got);
        }
        let (piece, tail) = rest.split_at(rest.len().min(usize::from(c % 16) + 1));
        feed(&mut chunked, piece, &mut got);
        rest = tail;
    }
    assert_eq!(got, expected, "chunking changed what was parsed");
    assert_eq!(chunked.is_mid_event(), whole.is_mid_event());
    assert_eq!(chunked.pending_bytes(), whole.pending_bytes());
    assert!(whole.pending_bytes() <= body.len());
    for (event, data) in &expected {
        if let Some(event) = event {
            assert!(!event.contains(&b'\n') && !event.contains(&b'\r'));
        }
        // Data lines are joined by `\n`; a line end never survives inside one.
        assert!(!data.contains(&b'\r'));
    }
});
