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
    spawn_logging(config, args, "info")
}

/// [`spawn`] with this `RUST_LOG`.
fn spawn_logging(config: &Path, args: &[&str], rust_log: &str) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gateway-http"))
        .args(["--config", config.to_str().expect("utf-8")])
        .args(args)
        .env_remove("AGENT_SVC_URL")
        .env("RUST_LOG", rust_log)
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
    let stderr = child.stderr.take();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut stderr) = stderr {
            let _ = stderr.read_to_string(&mut text);
        }
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

/// One HTTP/1.1 exchange on a fresh connection; the response head and body as text.
fn http_exchange(port: u16, request: &str) -> String {
    use std::io::Write;
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    tcp.write_all(request.as_bytes()).expect("write");
    let mut out = Vec::new();
    let _ = tcp.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// A masked client text frame (RFC 6455 §5.2), as a WebSocket client must send.
fn ws_text_frame(text: &str) -> Vec<u8> {
    let payload = text.as_bytes();
    let mask = [0x5a, 0x17, 0xc3, 0x08];
    let mut f = vec![0x81];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// Reads one unmasked server text frame.
fn ws_read_frame(tcp: &mut std::net::TcpStream) -> String {
    let mut head = [0u8; 2];
    tcp.read_exact(&mut head).expect("frame head");
    let len = match head[1] & 0x7f {
        126 => {
            let mut ext = [0u8; 2];
            tcp.read_exact(&mut ext).expect("length");
            u16::from_be_bytes(ext) as usize
        }
        127 => {
            let mut ext = [0u8; 8];
            tcp.read_exact(&mut ext).expect("length");
            u64::from_be_bytes(ext) as usize
        }
        n => n as usize,
    };
    let mut payload = vec![0u8; len];
    tcp.read_exact(&mut payload).expect("payload");
    String::from_utf8_lossy(&payload).into_owned()
}

/// SPEC §3: secrets never appear in logs, at any level. At `RUST_LOG=trace`
/// the WebSocket library used to log the whole `connect` frame, token included.
#[test]
fn secrets_never_reach_the_logs_even_at_trace() {
    use std::io::Write;
    let (token, wrong) = ("tok-3c1f9e77-never-logged", "wrong-9d1b2c-also-secret");
    let dir = temp_dir("trace");
    let config = dir.join("openclaw.json5");
    std::fs::write(
        &config,
        format!(
            r#"{{gateway: {{auth: {{mode: "token", token: "{token}"}},
                http: {{endpoints: {{chatCompletions: {{enabled: true}}}}}}}}, session: {{store: "memory"}}}}"#
        ),
    )
    .expect("config");
    let port = free_port();
    let (mut child, _) = spawn_logging(&config, &["--port", &port.to_string()], "trace");
    // Trace logging is loud: read it as it comes, or the pipe fills and the gateway blocks.
    let mut stderr_pipe = child.stderr.take().expect("stderr");
    let collected = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr_pipe.read_to_string(&mut text);
        text
    });

    let body = r#"{"messages":[{"role":"user","content":"hi"}]}"#;
    for secret in [token, wrong] {
        let answer = http_exchange(
            port,
            &format!(
                "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {secret}\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            ),
        );
        assert!(answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.1 401"), "{answer}");
    }

    // A WebSocket `connect` carrying the token in its frame.
    let mut ws = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    ws.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    ws.write_all(
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .expect("upgrade");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        ws.read_exact(&mut byte).expect("upgrade answer");
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    assert!(ws_read_frame(&mut ws).contains("connect.challenge"));
    let connect = format!(
        r#"{{"type":"req","id":"c1","method":"connect","params":{{"minProtocol":4,"maxProtocol":4,
            "client":{{"id":"t"}},"auth":{{"token":"{token}"}}}}}}"#
    );
    ws.write_all(&ws_text_frame(&connect)).expect("connect frame");
    assert!(ws_read_frame(&mut ws).contains("hello-ok"));
    drop(ws);

    let (status, _) = stop(child);
    assert!(status.success(), "exit {status:?}");
    let stderr = collected.join().expect("stderr reader");
    assert!(stderr.contains("TRACE") || stderr.contains("DEBUG"), "trace logging was on: {stderr}");
    for secret in [token, wrong] {
        assert!(!stderr.contains(secret), "a secret reached the logs at trace level");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
