//! The JSON5 config loader (`services::config`) on arbitrary text: parsing,
//! `${VAR}` expansion, the schema, then the checks both services run at
//! startup. Any outcome is fine but a panic or a stack overflow; an error is
//! one line naming the file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use services::config::{parse_skipping_secret_files, ConfigSource};

const FILE: &str = "/etc/openclaw/fuzz.json5";

fn env(name: &str) -> Option<String> {
    match name {
        "OPENAI_API_KEY" => Some("sk-fuzz".into()),
        "EMPTY" => Some(String::new()),
        _ => None,
    }
}

fuzz_target!(|input: &[u8]| {
    let Ok(text) = std::str::from_utf8(input) else { return };
    // `…File` secrets are not read: the input could name any file.
    let loaded = match parse_skipping_secret_files(text, ConfigSource::File(FILE.into()), &env) {
        Ok(loaded) => loaded,
        Err(e) => return check(&e),
    };
    if let Err(e) = loaded.resolve_agents() {
        check(&e);
    }
    let bind = loaded.config.gateway.bind.clone();
    if let Err(e) = loaded.validate_gateway_with_env(&bind, &env) {
        check(&e);
    }
    if let Err(e) = loaded.public_tls() {
        check(&e);
    }
    if let Err(e) = loaded.agent_service_tls() {
        check(&e);
    }
});

fn check(e: &services::config::ConfigError) {
    assert_eq!(e.file, FILE);
    assert!(!e.key.is_empty() && !e.message.is_empty(), "{e:?}");
}
