//! Rules over a run's events that both services apply (SPEC §4 "Streaming" and
//! "Non-streaming response"):
//!
//! - [`usage`] / [`total_tokens`]: the total is prompt + completion when the
//!   provider leaves it out;
//! - [`finish_reason`] / [`finish_reason_with_calls`]: empty means `stop`, and
//!   an answer that produced tool calls ends with `tool_calls`;
//! - [`fallback_call_id`]: the id of a call whose upstream gave none;
//! - [`ToolCallFold`]: tool-call fragments folded into complete calls.

use crate::proto::{ToolCall, ToolCallDelta, Usage};

/// Usage with its total: prompt + completion (saturating).
pub fn usage(prompt_tokens: u32, completion_tokens: u32) -> Usage {
    Usage { prompt_tokens, completion_tokens, total_tokens: prompt_tokens.saturating_add(completion_tokens) }
}

/// The total to report: a provider that leaves it out (0) still gets a consistent one.
pub fn total_tokens(u: &Usage) -> u32 {
    if u.total_tokens == 0 {
        u.prompt_tokens.saturating_add(u.completion_tokens)
    } else {
        u.total_tokens
    }
}

/// The finish reason to report: empty means `stop`.
pub fn finish_reason(reason: &str) -> &str {
    finish_reason_with_calls(reason, false)
}

/// The finish reason of an answer: empty means `stop`, except that an answer
/// that produced tool calls ends with `tool_calls` when the upstream said
/// `stop` or nothing (clients loop on `tool_calls`; some upstreams say `stop`).
pub fn finish_reason_with_calls(reason: &str, produced_calls: bool) -> &str {
    match reason {
        "" | "stop" if produced_calls => "tool_calls",
        "" => "stop",
        other => other,
    }
}

/// The id of a tool call whose upstream gave none: `call_<index>`.
pub fn fallback_call_id(index: u32) -> String {
    format!("call_{index}")
}

/// Tool-call fragments folded into complete calls, by call index: the id is
/// the first non-empty one seen, name and argument fragments are appended.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ToolCallFold {
    /// `(index, call)` in order of first appearance.
    calls: Vec<(u32, ToolCall)>,
}

impl ToolCallFold {
    /// Adds one fragment of call `index` and returns the call so far (its id
    /// still empty when no fragment carried one).
    pub fn push(&mut self, index: u32, id: &str, name: &str, arguments: &str) -> &ToolCall {
        let pos = match self.calls.iter().position(|(i, _)| *i == index) {
            Some(pos) => pos,
            None => {
                let call = ToolCall { r#type: "function".into(), ..Default::default() };
                self.calls.push((index, call));
                self.calls.len() - 1
            }
        };
        let call = &mut self.calls[pos].1;
        if call.id.is_empty() {
            call.id.push_str(id);
        }
        call.name.push_str(name);
        call.arguments.push_str(arguments);
        call
    }

    /// Adds one `ToolCallDelta` of a run.
    pub fn push_delta(&mut self, d: &ToolCallDelta) -> &ToolCall {
        self.push(d.index, &d.id, &d.name, &d.arguments)
    }

    /// The call with this index so far.
    pub fn get(&self, index: u32) -> Option<&ToolCall> {
        self.calls.iter().find(|(i, _)| *i == index).map(|(_, c)| c)
    }

    /// Number of calls.
    pub fn len(&self) -> usize {
        self.calls.len()
    }

    /// Whether no call was seen.
    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }

    /// Forgets every call.
    pub fn clear(&mut self) {
        self.calls.clear();
    }

    /// The complete calls, sorted by index; a call without an id gets
    /// [`fallback_call_id`].
    pub fn calls(&self) -> Vec<ToolCall> {
        self.clone().into_calls()
    }

    /// [`ToolCallFold::calls`], consuming the fold.
    pub fn into_calls(mut self) -> Vec<ToolCall> {
        self.calls.sort_by_key(|(i, _)| *i);
        self.calls
            .into_iter()
            .map(|(i, mut c)| {
                if c.id.is_empty() {
                    c.id = fallback_call_id(i);
                }
                c
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_totals() {
        assert_eq!(usage(3, 4).total_tokens, 7);
        assert_eq!(usage(u32::MAX, 1).total_tokens, u32::MAX);
        assert_eq!(total_tokens(&Usage { prompt_tokens: 3, completion_tokens: 4, total_tokens: 0 }), 7);
        assert_eq!(total_tokens(&Usage { prompt_tokens: 3, completion_tokens: 4, total_tokens: 9 }), 9);
    }

    #[test]
    fn finish_reasons() {
        assert_eq!(finish_reason(""), "stop");
        assert_eq!(finish_reason("length"), "length");
        assert_eq!(finish_reason("stop"), "stop");
        assert_eq!(finish_reason_with_calls("", true), "tool_calls");
        assert_eq!(finish_reason_with_calls("stop", true), "tool_calls");
        assert_eq!(finish_reason_with_calls("length", true), "length");
        assert_eq!(finish_reason_with_calls("", false), "stop");
    }

    #[test]
    fn fold_by_index_with_fallback_ids() {
        let mut f = ToolCallFold::default();
        f.push(1, "", "g", "{\"b\"");
        f.push(0, "call_a", "get_", "{\"ci");
        f.push(0, "", "weather", "ty\":1}");
        // A later id does not replace the first one.
        f.push(0, "call_z", "", "");
        assert_eq!(f.push(1, "", "", ":2}").arguments, "{\"b\":2}");
        assert_eq!(f.get(0).map(|c| c.id.as_str()), Some("call_a"));
        assert_eq!(f.get(1).map(|c| c.id.as_str()), Some(""));
        assert_eq!(f.len(), 2);
        let call = |id: &str, name: &str, arguments: &str| ToolCall {
            id: id.into(),
            r#type: "function".into(),
            name: name.into(),
            arguments: arguments.into(),
        };
        assert_eq!(
            f.calls(),
            vec![call("call_a", "get_weather", "{\"city\":1}"), call("call_1", "g", "{\"b\":2}")]
        );
        let d = ToolCallDelta { index: 2, id: "c2".into(), name: "h".into(), arguments: "{}".into() };
        f.push_delta(&d);
        assert_eq!(f.clone().into_calls()[2], call("c2", "h", "{}"));
        f.clear();
        assert!(f.is_empty() && f.calls().is_empty());
    }
}
