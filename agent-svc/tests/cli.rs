//! The `agent-svc` binary itself: config errors stop it with one line naming the
//! key and the file and a non-zero exit; a good config makes it print its address.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

fn temp_config(name: &str, text: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("agent-svc-cli-{}-{name}.json5", std::process::id()));
    std::fs::write(&path, text).expect("write config");
    path
}

fn run_with(text: &str, name: &str) -> (Option<i32>, String) {
    let path = temp_config(name, text);
    let out = Command::new(env!("CARGO_BIN_EXE_agent-svc"))
        .args(["--config", path.to_str().expect("utf-8 path"), "--listen", "127.0.0.1:0"])
        .env_remove("OPENCLAW_CONFIG_PATH")
        .env_remove("NOT_SET_FOR_THIS_TEST")
        .stdin(Stdio::null())
        .output()
        .expect("run agent-svc");
    let _ = std::fs::remove_file(&path);
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn config_errors_are_one_line_naming_key_and_file() {
    let cases = [
        ("type", r#"{gateway: {port: "http"}}"#, "gateway.port"),
        ("provider", r#"{agents: {list: [{id: "a", model: "nope/x"}]}}"#, "agents.list[0].model"),
        (
            "envvar",
            r#"{models: {providers: {o: {baseUrl: "http://x", apiKey: "${NOT_SET_FOR_THIS_TEST}"}}}}"#,
            "models.providers.o.apiKey",
        ),
        (
            "defaults",
            r#"{agents: {list: [{id: "a", default: true}, {id: "b", default: true}]}}"#,
            "agents.list[1].default",
        ),
    ];
    for (name, text, key) in cases {
        let (code, stderr) = run_with(text, name);
        assert!(matches!(code, Some(c) if c != 0), "{name}: exit {code:?}, stderr {stderr}");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{name}: one line expected, got {stderr:?}");
        assert!(lines[0].contains(key), "{name}: {stderr}");
        assert!(
            lines[0].contains(&format!("agent-svc-cli-{}-{name}.json5", std::process::id())),
            "{name}: {stderr}"
        );
    }
}

#[test]
fn prints_its_address_when_ready_and_stops_on_sigterm() {
    let path = temp_config("ok", r#"{session: {store: "memory"}}"#);
    let mut child = Command::new(env!("CARGO_BIN_EXE_agent-svc"))
        .args(["--config", path.to_str().expect("utf-8 path"), "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn agent-svc");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(Duration::from_secs(30)).expect("readiness line");
    let addr = line.trim().strip_prefix("agent-svc listening on ").expect("readiness line format");
    let addr: std::net::SocketAddr = addr.parse().expect("an address");
    assert_ne!(addr.port(), 0);
    std::net::TcpStream::connect(addr).expect("it accepts connections");

    // SIGTERM: graceful stop, exit 0.
    let pid = child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().expect("kill");
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(child.wait());
    });
    let status = done_rx
        .recv_timeout(Duration::from_secs(20))
        .expect("agent-svc did not stop on SIGTERM")
        .expect("wait for agent-svc");
    let _ = std::fs::remove_file(&path);
    assert!(status.success(), "exit {status:?}");
}
