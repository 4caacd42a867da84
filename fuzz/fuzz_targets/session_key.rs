//! `services::session_key::resolve` on arbitrary selectors, agent ids and
//! channels. A key it hands out must be usable as is: sent back as an explicit
//! key (the `x-openclaw-session-key` response header), it resolves to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use services::config::valid_agent_id;
use services::session_key::{resolve, split_agent_key, SessionSelector, MAX_KEY_BYTES};

fuzz_target!(|input: &[u8]| {
    // Byte 0: the selector; bytes 1 and 2: the lengths of the agent id and the
    // channel taken from the front of the rest; what remains is the user or key.
    let [kind, a, c, rest @ ..] = input else { return };
    let a = usize::from(*a % 72).min(rest.len());
    let (agent, rest) = rest.split_at(a);
    let c = usize::from(*c % 72).min(rest.len());
    let (channel, raw) = rest.split_at(c);
    let (Ok(agent), Ok(channel), Ok(raw)) =
        (std::str::from_utf8(agent), std::str::from_utf8(channel), std::str::from_utf8(raw))
    else {
        return;
    };
    let selector = match kind % 3 {
        0 => SessionSelector::Stateless,
        1 => SessionSelector::User(raw),
        _ => SessionSelector::Explicit(raw),
    };
    match resolve(selector, agent, channel) {
        Ok(r) => {
            // Callers check the agent id they pass (resolve does not); only a
            // valid one makes a usable key.
            let explicit_agent =
                matches!(selector, SessionSelector::Explicit(k) if k.trim_start().starts_with("agent:"));
            if !(valid_agent_id(agent) || explicit_agent) {
                return;
            }
            let (id, rest) = split_agent_key(&r.key).expect("a resolved key has the agent:<id>:<rest> shape");
            assert_eq!(id, r.agent_id);
            assert!(valid_agent_id(&r.agent_id));
            assert!(!rest.trim().is_empty());
            assert!(!r.key.chars().any(char::is_control), "{:?}", r.key);
            assert!(r.key.len() <= MAX_KEY_BYTES, "a {}-byte key was handed out", r.key.len());
            let again = resolve(SessionSelector::Explicit(&r.key), "other", "ws")
                .unwrap_or_else(|e| panic!("the key {:?} is refused when sent back: {e}", r.key));
            assert_eq!((again.key.as_str(), again.agent_id.as_str()), (r.key.as_str(), r.agent_id.as_str()));
            assert!(again.stable);
        }
        Err(e) => {
            assert!(!e.message.is_empty());
            assert!(matches!(e.param, None | Some("user" | "channel")), "{:?}", e.param);
        }
    }
});
