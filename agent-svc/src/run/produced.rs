//! What the provider produced in one run, and the deltas it turns into.
//!
//! Tool-call fragments are folded with the shared [`ToolCallFold`]; on top of
//! it this file keeps what only a run needs: upstream indexes mapped to
//! contiguous ones (SPEC §4: 0-based, one per call), and each call held back
//! until its name is known, because clients read `id` and `name` from a call's
//! first fragment only.

use super::assemble;
use crate::providers::ProviderEvent;
use services::proto::{agent_run_event::Event, Message, TextDelta, ToolCallDelta, Usage};
use services::run_events::{self, fallback_call_id, ToolCallFold};

/// What the provider produced so far in one run.
#[derive(Debug, Default)]
pub(super) struct Produced {
    text: String,
    /// Tool calls by our contiguous index.
    calls: ToolCallFold,
    /// Our index → the upstream's index.
    call_index: Vec<u32>,
    /// Whether each call's first fragment (id, name) has been sent.
    announced: Vec<bool>,
    usage: Option<Usage>,
    /// The upstream's finish reason, once given.
    finish: Option<String>,
    /// Whether a content or tool-call delta was sent (no fallback after that).
    pub(super) first_token: bool,
}

impl Produced {
    /// Takes one provider event; returns the delta to send for it, if any.
    pub(super) fn take(&mut self, ev: ProviderEvent) -> Option<Event> {
        match ev {
            ProviderEvent::Text(text) => {
                if text.is_empty() {
                    return None;
                }
                self.text.push_str(&text);
                Some(Event::Text(TextDelta { text }))
            }
            ProviderEvent::ToolCall { index, id, name, arguments } => {
                self.tool_call(index, id, name.as_deref().unwrap_or_default(), arguments)
            }
            ProviderEvent::Finish(reason) => {
                self.finish = Some(reason);
                None
            }
            ProviderEvent::Usage { prompt_tokens, completion_tokens } => {
                self.usage = Some(run_events::usage(prompt_tokens, completion_tokens));
                None
            }
        }
    }

    fn tool_call(&mut self, index: u32, id: Option<String>, name: &str, arguments: String) -> Option<Event> {
        let (ours, id) = match self.call_index.iter().position(|u| *u == index) {
            Some(pos) => (pos, String::new()),
            None => {
                let n = self.call_index.len();
                self.call_index.push(index);
                self.announced.push(false);
                // The id is settled by the first fragment: clients take it from there.
                (n, id.filter(|s| !s.is_empty()).unwrap_or_else(|| fallback_call_id(n as u32)))
            }
        };
        let call = self.calls.push(ours as u32, &id, name, &arguments);
        if self.announced[ours] {
            Some(Event::ToolCall(ToolCallDelta { index: ours as u32, arguments, ..Default::default() }))
        } else if call.name.is_empty() {
            // Held back until the name is known.
            None
        } else {
            self.announced[ours] = true;
            Some(Event::ToolCall(ToolCallDelta {
                index: ours as u32,
                id: call.id.clone(),
                name: call.name.clone(),
                arguments: call.arguments.clone(),
            }))
        }
    }

    /// The calls still held back for want of a name (the upstream never named
    /// them), as whole deltas, so the client at least gets their id and arguments.
    pub(super) fn unannounced(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        for (i, announced) in self.announced.iter_mut().enumerate() {
            if *announced {
                continue;
            }
            *announced = true;
            if let Some(call) = self.calls.get(i as u32) {
                out.push(Event::ToolCall(ToolCallDelta {
                    index: i as u32,
                    id: call.id.clone(),
                    name: call.name.clone(),
                    arguments: call.arguments.clone(),
                }));
            }
        }
        out
    }

    /// Before the next model is tried: tool-call fragments held back for their
    /// name were never sent, so forget them, and the failed attempt's usage.
    pub(super) fn restart(&mut self) {
        self.calls.clear();
        self.call_index.clear();
        self.announced.clear();
        self.usage = None;
        self.finish = None;
    }

    /// The finish reason of the answer (see [`run_events::finish_reason_with_calls`]).
    pub(super) fn finish_reason(&self) -> String {
        run_events::finish_reason_with_calls(
            self.finish.as_deref().unwrap_or_default(),
            !self.calls.is_empty(),
        )
        .to_string()
    }

    /// The usage the provider reported.
    pub(super) fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// The assistant message to store: the text and the calls.
    pub(super) fn assistant_message(&self) -> Message {
        let mut m = if self.text.is_empty() && !self.calls.is_empty() {
            Message { role: "assistant".into(), ..Default::default() }
        } else {
            assemble::text_message("assistant", self.text.clone())
        };
        m.tool_calls = self.calls.calls();
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(index: u32, id: Option<&str>, name: Option<&str>, arguments: &str) -> ProviderEvent {
        ProviderEvent::ToolCall {
            index,
            id: id.map(Into::into),
            name: name.map(Into::into),
            arguments: arguments.into(),
        }
    }

    fn delta(index: u32, id: &str, name: &str, arguments: &str) -> Option<Event> {
        Some(Event::ToolCall(ToolCallDelta {
            index,
            id: id.into(),
            name: name.into(),
            arguments: arguments.into(),
        }))
    }

    #[test]
    fn calls_get_contiguous_indexes_and_are_held_until_named() {
        let mut p = Produced::default();
        // Upstream index 5 with no id and no name yet: held back.
        assert_eq!(p.take(call(5, None, None, "{\"a\"")), None);
        assert_eq!(p.take(call(5, Some("late"), Some("f"), ":1")), delta(0, "call_0", "f", "{\"a\":1"));
        assert_eq!(p.take(call(5, None, None, "}")), delta(0, "", "", "}"));
        assert_eq!(p.take(call(2, Some("c2"), Some("g"), "{}")), delta(1, "c2", "g", "{}"));
        assert_eq!(p.take(ProviderEvent::Finish("stop".into())), None);
        assert_eq!(p.finish_reason(), "tool_calls");
        let m = p.assistant_message();
        assert_eq!(m.parts, Vec::new());
        assert_eq!(
            m.tool_calls
                .iter()
                .map(|c| (c.id.as_str(), c.name.as_str(), c.arguments.as_str()))
                .collect::<Vec<_>>(),
            [("call_0", "f", "{\"a\":1}"), ("c2", "g", "{}")]
        );
    }

    #[test]
    fn unnamed_calls_are_announced_at_the_end_and_forgotten_on_restart() {
        let mut p = Produced::default();
        assert_eq!(p.take(call(0, Some("c"), None, "{}")), None);
        assert_eq!(p.unannounced(), vec![delta(0, "c", "", "{}").unwrap()]);
        assert!(p.unannounced().is_empty());
        p.take(ProviderEvent::Usage { prompt_tokens: 1, completion_tokens: 2 });
        assert_eq!(p.usage().map(|u| u.total_tokens), Some(3));
        p.restart();
        assert_eq!((p.usage(), p.finish_reason().as_str()), (None, "stop"));
        assert_eq!(p.take(ProviderEvent::Text(String::new())), None);
        assert_eq!(
            p.take(ProviderEvent::Text("hi".into())),
            Some(Event::Text(TextDelta { text: "hi".into() }))
        );
        assert_eq!(p.assistant_message(), assemble::text_message("assistant", "hi".into()));
    }
}
