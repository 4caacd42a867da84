//! The `gateway-http` binary itself: it prints its address when ready, answers
//! its own `--healthcheck` (what container health checks run, no curl needed)
//! while it serves, also over TLS with the configured certificate pinned, warns
//! once about a non-loopback bind without TLS, and stops cleanly on SIGTERM,
//! also one sent right after the readiness line.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn healthcheck(port: u16) -> bool {
    healthcheck_with(port, &[])
}

fn healthcheck_with(port: u16, args: &[&str]) -> bool {
    Command::new(env!("CARGO_BIN_EXE_gateway-http"))
        .args(["--healthcheck", "--port", &port.to_string()])
        .args(args)
        .env_remove("OPENCLAW_CONFIG_PATH")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run gateway-http --healthcheck")
        .success()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a port").port()
}

/// Starts `gateway-http --config <config> <args>` and returns it with its readiness line.
fn spawn(config: &Path, args: &[&str]) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gateway-http"))
        .args(["--config", config.to_str().expect("utf-8")])
        .args(args)
        .env_remove("AGENT_SVC_URL")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
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
    (child, line.trim().to_owned())
}

/// SIGTERM; the exit status and stderr.
fn stop(mut child: Child) -> (std::process::ExitStatus, String) {
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
    let mut stderr = child.stderr.take().expect("stderr");
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        let _ = done_tx.send((child.wait(), text));
    });
    let (status, text) = done_rx.recv_timeout(Duration::from_secs(30)).expect("stops on SIGTERM");
    (status.expect("wait"), text)
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gateway-http-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

#[test]
fn healthcheck_says_ready_while_it_serves_and_sigterm_stops_it() {
    let dir = temp_dir("plain");
    let config = dir.join("openclaw.json5");
    std::fs::write(&config, r#"{gateway: {auth: {mode: "none"}}, session: {store: "memory"}}"#)
        .expect("config");
    // A free port, released for the gateway.
    let port = free_port();
    assert!(!healthcheck(port), "nothing listens yet");

    let (child, line) = spawn(&config, &["--port", &port.to_string()]);
    assert_eq!(line, format!("gateway-http listening on http://127.0.0.1:{port}"));
    assert!(healthcheck(port), "ready: the embedded agent-svc serves");

    let (status, stderr) = stop(child);
    assert!(status.success(), "exit {status:?}");
    assert!(!stderr.contains("without TLS"), "loopback needs no TLS: {stderr}");
    assert!(!healthcheck(port), "gone after SIGTERM");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A self-signed certificate for `localhost` and its key, written as `<name>.crt` / `<name>.key`.
fn self_signed(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let key = rcgen::KeyPair::generate().expect("key");
    let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
    let cert = params.self_signed(&key).expect("certificate");
    let (cert_path, key_path) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
    std::fs::write(&cert_path, cert.pem()).expect("write certificate");
    std::fs::write(&key_path, key.serialize_pem()).expect("write key");
    (cert_path, key_path)
}

#[test]
fn healthcheck_speaks_tls_and_accepts_only_the_configured_certificate() {
    let dir = temp_dir("tls");
    let (cert, key) = self_signed(&dir, "served");
    let (other, _) = self_signed(&dir, "other");
    let tls_config = |cert: &Path| {
        format!(
            r#"{{gateway: {{auth: {{mode: "none"}}, tls: {{enabled: true, certPath: "{}", keyPath: "{}"}}}},
                session: {{store: "memory"}}}}"#,
            cert.display(),
            key.display()
        )
    };
    let config = dir.join("tls.json5");
    std::fs::write(&config, tls_config(&cert)).expect("config");
    let port = free_port();
    let (child, line) = spawn(&config, &["--port", &port.to_string()]);
    assert_eq!(line, format!("gateway-http listening on https://127.0.0.1:{port}"));
    let cfg = config.to_str().expect("utf-8");
    assert!(healthcheck_with(port, &["--config", cfg]), "HTTPS health check with the served certificate");
    assert!(!healthcheck_with(port, &[]), "a plain-HTTP health check gets no answer from a TLS port");
    // A config naming another certificate than the one served: refused (pinned).
    let pinned_other = dir.join("other.json5");
    std::fs::write(&pinned_other, tls_config(&other)).expect("config");
    assert!(!healthcheck_with(port, &["--config", pinned_other.to_str().expect("utf-8")]));
    let (status, _) = stop(child);
    assert!(status.success(), "exit {status:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_lan_bind_without_tls_warns_once() {
    let dir = temp_dir("lan");
    let config = dir.join("openclaw.json5");
    std::fs::write(&config, r#"{gateway: {auth: {mode: "token", token: "t"}}, session: {store: "memory"}}"#)
        .expect("config");
    let port = free_port();
    let (child, line) = spawn(&config, &["--port", &port.to_string(), "--bind", "lan"]);
    assert_eq!(line, format!("gateway-http listening on http://0.0.0.0:{port}"));
    let (status, stderr) = stop(child);
    assert!(status.success(), "exit {status:?}");
    assert_eq!(stderr.lines().filter(|l| l.contains("without TLS")).count(), 1, "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}
