//! A message as a run shares it: one allocation from the session store to every
//! provider request that sends it, with what each turn would otherwise work out
//! again remembered beside it.
//!
//! A stable session sends its whole window upstream on every turn, so the
//! per-message work of a turn (its token estimate, its JSON on the wire) is done
//! once per stored message instead of once per turn: measured on a 3,000-token
//! window (~300 short messages), serializing the window was the largest single
//! cost of a stable-session turn.

use serde_json::value::RawValue;
use services::proto::Message;
use std::ops::Deref;
use std::sync::{Arc, OnceLock};

/// A [`Message`] (read through `Deref`) with its memoised derived forms.
/// Equality, `Debug` and cloning look at the message only.
#[derive(Default)]
pub struct SharedMessage {
    message: Message,
    /// The estimated tokens (`run::budget`), once asked for.
    tokens: OnceLock<u64>,
    /// The OpenAI Chat Completions JSON of the message, once a provider sent it.
    wire: OnceLock<Box<RawValue>>,
}

impl SharedMessage {
    /// The message, shared.
    pub fn shared(message: Message) -> Arc<Self> {
        Arc::new(Self::from(message))
    }

    /// The message itself.
    pub fn message(&self) -> &Message {
        &self.message
    }

    /// The message itself, unshared.
    pub fn into_message(self) -> Message {
        self.message
    }

    /// The token estimate, computed by `estimate` the first time.
    pub fn tokens(&self, estimate: impl FnOnce(&Message) -> u64) -> u64 {
        *self.tokens.get_or_init(|| estimate(&self.message))
    }

    /// The OpenAI Chat Completions JSON of the message (the one wire dialect
    /// the providers speak), encoded by `encode` the first time. An encoding error
    /// is returned (and tried again next time), not remembered.
    pub fn openai_wire<E>(
        &self,
        encode: impl FnOnce(&Message) -> Result<Box<RawValue>, E>,
    ) -> Result<&RawValue, E> {
        if let Some(json) = self.wire.get() {
            return Ok(json);
        }
        let json = encode(&self.message)?;
        // A concurrent first use may have won; both encoded the same message.
        Ok(self.wire.get_or_init(|| json))
    }

    /// Bytes held beside the message (for cache accounting).
    pub fn memo_bytes(&self) -> usize {
        self.wire.get().map_or(0, |j| j.get().len())
    }
}

impl From<Message> for SharedMessage {
    fn from(message: Message) -> Self {
        SharedMessage { message, tokens: OnceLock::new(), wire: OnceLock::new() }
    }
}

impl Deref for SharedMessage {
    type Target = Message;

    fn deref(&self) -> &Message {
        &self.message
    }
}

impl Clone for SharedMessage {
    fn clone(&self) -> Self {
        Self::from(self.message.clone())
    }
}

impl PartialEq for SharedMessage {
    fn eq(&self, other: &Self) -> bool {
        self.message == other.message
    }
}

impl std::fmt::Debug for SharedMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.message.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_forms_are_computed_once() {
        let m = SharedMessage::shared(Message { role: "user".into(), ..Default::default() });
        assert_eq!(m.tokens(|m| m.role.len() as u64), 4);
        assert_eq!(m.tokens(|_| unreachable!("remembered")), 4);
        let failed: Result<&RawValue, &str> = m.openai_wire(|_| Err("no"));
        assert_eq!(failed.unwrap_err(), "no");
        assert_eq!(m.memo_bytes(), 0, "a failed encoding is not kept");
        let json = m.openai_wire(|m| serde_json::value::to_raw_value(&m.role)).unwrap();
        assert_eq!(json.get(), "\"user\"");
        let again = m.openai_wire::<serde_json::Error>(|_| unreachable!("remembered")).unwrap();
        assert_eq!(again.get(), "\"user\"");
        assert_eq!(m.memo_bytes(), 6);
        // Clones and comparisons see the message only.
        let copy = SharedMessage::clone(&m);
        assert_eq!(copy, *m);
        assert_eq!(copy.memo_bytes(), 0);
    }
}
