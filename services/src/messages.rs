//! Message rules both services apply (SPEC §4 "Sessions" and "Parameters"):
//! which messages form the new turn, and the image limits.
//!
//! - [`split`]: a request's messages → system text, prior history, new turn;
//! - [`check_new_turn_images`]: at most [`MAX_IMAGES`] images and
//!   [`MAX_IMAGE_BYTES`] decoded bytes in the new turn (agent-svc, every caller);
//! - [`check_images`]: the same limits plus the gateway's [`ImagePolicy`]
//!   (`images.allowUrl`, `images.maxBytes`), checked before a request leaves it;
//! - [`data_uri_decoded_len`]: the size of a base64 `data:image/…` URI.
//!
//! Pure functions over the proto [`Message`], no I/O.

use crate::proto::{content_part::Part, Message};
use crate::rules::RuleError;
use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::{DecodePaddingMode, Engine as _};

/// Most image parts allowed in the new turn.
pub const MAX_IMAGES: usize = 8;
/// Most decoded image bytes allowed in the new turn.
pub const MAX_IMAGE_BYTES: usize = 20 * 1024 * 1024;

/// Refusal of an `http(s)` image URL when they are not allowed.
pub const IMAGE_URL_NOT_ALLOWED: &str = "Image URLs are not allowed: send images as base64 `data:` URIs.";

/// A request's messages, split by what they are for.
#[derive(Debug, Default, PartialEq)]
pub struct SplitMessages {
    /// The request's system/developer texts, joined.
    pub system: Option<String>,
    /// Non-system messages up to and including the last assistant message.
    pub history: Vec<Message>,
    /// Non-system messages after the last assistant message.
    pub new_turn: Vec<Message>,
}

fn is_system(m: &Message) -> bool {
    m.role == "system" || m.role == "developer"
}

/// Index of the first message of the new turn: the one after the last
/// `assistant` message, or 0 when there is none.
pub fn new_turn_start(messages: &[Message]) -> usize {
    messages.iter().rposition(|m| m.role == "assistant").map_or(0, |i| i + 1)
}

/// The text parts of a message joined with newlines.
pub fn message_text(m: &Message) -> String {
    let mut out = String::new();
    for p in &m.parts {
        if let Some(Part::Text(t)) = &p.part {
            if !out.is_empty() {
                out.push('\n');
            }
            out.push_str(t);
        }
    }
    out
}

/// Splits the request's messages. The new turn must hold a user or tool message.
pub fn split(messages: Vec<Message>) -> Result<SplitMessages, RuleError> {
    let start = new_turn_start(&messages);
    let mut out = SplitMessages::default();
    let mut system = String::new();
    for (i, m) in messages.into_iter().enumerate() {
        if is_system(&m) {
            let text = message_text(&m);
            if !text.is_empty() {
                if !system.is_empty() {
                    system.push_str("\n\n");
                }
                system.push_str(&text);
            }
        } else if i < start {
            out.history.push(m);
        } else {
            out.new_turn.push(m);
        }
    }
    if !out.new_turn.iter().any(|m| m.role == "user" || m.role == "tool") {
        return Err(RuleError::new("messages", "Missing user message in `messages`."));
    }
    out.system = (!system.is_empty()).then_some(system);
    Ok(out)
}

/// Whether an image URL is a web address (rather than a `data:` URI).
pub fn is_http_url(url: &str) -> bool {
    url.starts_with("http://") || url.starts_with("https://")
}

/// Image URLs of a message's parts.
fn image_urls(m: &Message) -> impl Iterator<Item = &str> {
    m.parts.iter().filter_map(|p| match &p.part {
        Some(Part::ImageUrl(img)) => Some(img.url.as_str()),
        _ => None,
    })
}

/// The new turn's totals against [`MAX_IMAGES`] and [`MAX_IMAGE_BYTES`].
fn check_totals(count: usize, bytes: u64) -> Result<(), RuleError> {
    if count > MAX_IMAGES {
        return Err(RuleError::new("messages", format!("At most {MAX_IMAGES} images per request.")));
    }
    if bytes > MAX_IMAGE_BYTES as u64 {
        return Err(RuleError::new("messages", "Images exceed 20 MiB in total."));
    }
    Ok(())
}

/// At most [`MAX_IMAGES`] image parts and [`MAX_IMAGE_BYTES`] decoded bytes in
/// `new_turn` (`http(s)` images count as 0 bytes: they are never fetched here).
pub fn check_new_turn_images(new_turn: &[Message]) -> Result<(), RuleError> {
    let (mut count, mut bytes) = (0usize, 0u64);
    for url in new_turn.iter().flat_map(image_urls) {
        count += 1;
        bytes += data_uri_decoded_len(url).unwrap_or(0) as u64;
    }
    check_totals(count, bytes)
}

/// The gateway's image settings (`gateway.http.endpoints.chatCompletions.images`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImagePolicy {
    /// `http(s)` image URLs are allowed (passed on, never fetched).
    pub allow_url: bool,
    /// Cap per decoded image.
    pub max_bytes: u64,
}

/// The gateway-side image rules over a request's messages: `http(s)` URLs only
/// with `policy.allow_url`, each image within `policy.max_bytes`, and in the
/// new turn (see [`new_turn_start`]) the limits of [`check_new_turn_images`].
/// A `data:` URI that is not base64 counts as 0 bytes here; agent-svc refuses it.
pub fn check_images(messages: &[Message], policy: &ImagePolicy) -> Result<(), RuleError> {
    let start = new_turn_start(messages);
    let (mut count, mut total) = (0usize, 0u64);
    for (i, m) in messages.iter().enumerate() {
        for url in image_urls(m) {
            let size = if is_http_url(url) {
                if !policy.allow_url {
                    return Err(RuleError::new("messages", IMAGE_URL_NOT_ALLOWED));
                }
                0
            } else {
                data_uri_decoded_len(url).map_or(0, |n| n as u64)
            };
            if size > policy.max_bytes {
                return Err(RuleError::new(
                    "messages",
                    format!("An image in `messages[{i}]` is over the {} byte limit.", policy.max_bytes),
                ));
            }
            if i >= start {
                count += 1;
                total += size;
            }
        }
    }
    check_totals(count, total)
}

/// Base64 as clients send it: padding optional, either alphabet (one per URI).
const LENIENT: GeneralPurposeConfig = GeneralPurposeConfig::new()
    .with_decode_padding_mode(DecodePaddingMode::Indifferent)
    .with_decode_allow_trailing_bits(true);
const STANDARD: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, LENIENT);
const URL_SAFE: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, LENIENT);

/// Decoded size of a `data:image/<type>;base64,<payload>` URI, or `None` when
/// it is not one (or the payload is not base64).
pub fn data_uri_decoded_len(url: &str) -> Option<usize> {
    let rest = url.strip_prefix("data:image/")?;
    let (meta, payload) = rest.split_once(',')?;
    if !meta.ends_with(";base64") || payload.is_empty() {
        return None;
    }
    decoded_len(&STANDARD, payload.as_bytes()).or_else(|| decoded_len(&URL_SAFE, payload.as_bytes()))
}

/// Decodes `payload` piece by piece into a small buffer: every symbol is
/// checked without holding a copy of the image.
fn decoded_len(engine: &GeneralPurpose, payload: &[u8]) -> Option<usize> {
    // A multiple of 4, so that every piece but the last is whole base64 groups.
    const PIECE: usize = 8 * 1024;
    let mut buf = [0u8; PIECE / 4 * 3];
    let mut total = 0;
    let mut pieces = payload.chunks(PIECE).peekable();
    while let Some(piece) = pieces.next() {
        // Padding ends the data: only the last piece may carry it.
        if pieces.peek().is_some() && piece.last() == Some(&b'=') {
            return None;
        }
        total += engine.decode_slice(piece, &mut buf).ok()?;
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{ContentPart, ImageUrl, ToolCall};

    fn msg(role: &str, text: &str) -> Message {
        Message {
            role: role.into(),
            parts: vec![ContentPart { part: Some(Part::Text(text.into())) }],
            text_only: true,
            ..Default::default()
        }
    }

    fn image(role: &str, url: &str) -> Message {
        Message {
            role: role.into(),
            parts: vec![ContentPart {
                part: Some(Part::ImageUrl(ImageUrl { url: url.into(), detail: None })),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn splits_system_history_and_new_turn() {
        let s = split(vec![
            msg("system", "S1"),
            msg("user", "u1"),
            msg("assistant", "a1"),
            msg("developer", "D"),
            msg("user", "u2"),
            msg("user", "u3"),
        ])
        .unwrap();
        assert_eq!(s.system.as_deref(), Some("S1\n\nD"));
        assert_eq!(s.history, vec![msg("user", "u1"), msg("assistant", "a1")]);
        assert_eq!(s.new_turn, vec![msg("user", "u2"), msg("user", "u3")]);
    }

    #[test]
    fn all_messages_are_new_without_assistant() {
        let s = split(vec![msg("user", "a"), msg("user", "b")]).unwrap();
        assert!(s.history.is_empty());
        assert_eq!(s.new_turn.len(), 2);
        assert_eq!(s.system, None);
    }

    #[test]
    fn tool_results_make_a_new_turn() {
        let call = Message {
            role: "assistant".into(),
            tool_calls: vec![ToolCall {
                id: "c1".into(),
                r#type: "function".into(),
                name: "f".into(),
                arguments: "{}".into(),
            }],
            ..Default::default()
        };
        let tool = Message { tool_call_id: Some("c1".into()), ..msg("tool", "42") };
        let s = split(vec![msg("user", "q"), call, tool.clone()]).unwrap();
        assert_eq!(s.new_turn, vec![tool]);
    }

    #[test]
    fn missing_user_message() {
        for msgs in [vec![], vec![msg("system", "s")], vec![msg("user", "u"), msg("assistant", "a")]] {
            let e = split(msgs).unwrap_err();
            assert_eq!(e.message, "Missing user message in `messages`.");
            assert_eq!(e.param, Some("messages"));
        }
    }

    #[test]
    fn data_uri_sizes() {
        assert_eq!(data_uri_decoded_len("data:image/png;base64,AAAA"), Some(3));
        assert_eq!(data_uri_decoded_len("data:image/png;base64,AAA="), Some(2));
        assert_eq!(data_uri_decoded_len("data:image/png;base64,AA=="), Some(1));
        assert_eq!(data_uri_decoded_len("data:image/png,AAAA"), None);
        assert_eq!(data_uri_decoded_len("data:text/plain;base64,AAAA"), None);
        assert_eq!(data_uri_decoded_len("data:image/png;base64,"), None);
    }

    #[test]
    fn data_uri_payloads_are_base64() {
        // Unpadded, and the URL-safe alphabet, are accepted.
        assert_eq!(data_uri_decoded_len("data:image/png;base64,AA"), Some(1));
        assert_eq!(data_uri_decoded_len("data:image/png;base64,-_-_"), Some(3));
        for bad in ["!!!", "@@@", "AA==AA==", "AAAAA", "+/-_"] {
            assert_eq!(data_uri_decoded_len(&format!("data:image/png;base64,{bad}")), None, "{bad}");
        }
        // Larger than one decoding piece, with and without padding.
        let big = "A".repeat(3 * 8 * 1024 + 4);
        assert_eq!(data_uri_decoded_len(&format!("data:image/png;base64,{big}")), Some(big.len() / 4 * 3));
        let padded = format!("{}AA==", "A".repeat(8 * 1024));
        assert_eq!(data_uri_decoded_len(&format!("data:image/png;base64,{padded}")), Some(6 * 1024 + 1));
        let early = format!("{}AA==AAAA", "A".repeat(8 * 1024 - 4));
        assert_eq!(data_uri_decoded_len(&format!("data:image/png;base64,{early}")), None);
    }

    #[test]
    fn new_turn_image_limits() {
        let png = "data:image/png;base64,AAAA";
        check_new_turn_images(&vec![image("user", png); MAX_IMAGES]).unwrap();
        let e = check_new_turn_images(&vec![image("user", png); MAX_IMAGES + 1]).unwrap_err();
        assert_eq!((e.param, e.message.as_str()), (Some("messages"), "At most 8 images per request."));
        // Web images count, with no bytes.
        check_new_turn_images(&[image("user", "https://x/y.png")]).unwrap();
        let huge = format!("data:image/png;base64,{}", "A".repeat(MAX_IMAGE_BYTES / 3 * 4 + 4));
        let e = check_new_turn_images(&[image("user", &huge)]).unwrap_err();
        assert_eq!(e.message, "Images exceed 20 MiB in total.");
    }

    #[test]
    fn gateway_image_policy() {
        let strict = ImagePolicy { allow_url: false, max_bytes: 3 };
        let web = image("user", "https://x/y.png");
        let e = check_images(std::slice::from_ref(&web), &strict).unwrap_err();
        assert_eq!((e.param, e.message.as_str()), (Some("messages"), IMAGE_URL_NOT_ALLOWED));
        check_images(&[web], &ImagePolicy { allow_url: true, ..strict }).unwrap();

        // The per-image cap holds in the history too; it names the message.
        let big = image("user", "data:image/png;base64,AAAAAA==");
        let e = check_images(&[big, msg("assistant", "a"), msg("user", "q")], &strict).unwrap_err();
        assert_eq!(e.message, "An image in `messages[0]` is over the 3 byte limit.");

        // Only the new turn counts towards the totals; non-base64 counts 0 bytes.
        let png = image("user", "data:image/png;base64,AAAA");
        let mut messages = vec![png.clone(); MAX_IMAGES];
        messages.push(msg("assistant", "a"));
        messages.extend(vec![png.clone(); MAX_IMAGES]);
        check_images(&messages, &strict).unwrap();
        messages.push(image("user", "data:image/png;base64,!!"));
        let e = check_images(&messages, &strict).unwrap_err();
        assert_eq!(e.message, "At most 8 images per request.");
    }
}
