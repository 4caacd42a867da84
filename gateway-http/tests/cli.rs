//! The `gateway-http` binary itself: it prints its address when ready, answers
//! its own `--healthcheck` (what container health checks run, no curl needed)
//! while it serves, and stops cleanly on SIGTERM, also one sent right after
//! the readiness line.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

fn healthcheck(port: u16) -> bool {
    Command::new(env!("CARGO_BIN_EXE_gateway-http"))
        .args(["--healthcheck", "--port", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run gateway-http --healthcheck")
        .success()
}

#[test]
fn healthcheck_says_ready_while_it_serves_and_sigterm_stops_it() {
    let dir = std::env::temp_dir().join(format!("gateway-http-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config = dir.join("openclaw.json5");
    std::fs::write(&config, r#"{gateway: {auth: {mode: "none"}}, session: {store: "memory"}}"#)
        .expect("config");
    // A free port, released for the gateway.
    let port =
        std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a port").port();
    assert!(!healthcheck(port), "nothing listens yet");

    let mut child = Command::new(env!("CARGO_BIN_EXE_gateway-http"))
        .args(["--config", config.to_str().expect("utf-8"), "--port", &port.to_string()])
        .env_remove("AGENT_SVC_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn gateway-http");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(Duration::from_secs(30)).expect("readiness line");
    assert_eq!(line.trim(), format!("gateway-http listening on http://127.0.0.1:{port}"));
    assert!(healthcheck(port), "ready: the embedded agent-svc serves");

    let pid = child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().expect("kill");
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(child.wait());
    });
    let status = done_rx.recv_timeout(Duration::from_secs(30)).expect("stops on SIGTERM").expect("wait");
    assert!(status.success(), "exit {status:?}");
    assert!(!healthcheck(port), "gone after SIGTERM");
    let _ = std::fs::remove_dir_all(&dir);
}
