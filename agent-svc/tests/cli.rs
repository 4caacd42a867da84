//! The `agent-svc` binary itself: config errors stop it with one line naming the
//! key and the file and a non-zero exit; a good config makes it print its
//! address; its warnings about exposed secrets and an open listener; its
//! `--healthcheck` and `agent-call` against a mutual-TLS agent-svc with a token.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
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
        (
            "tokenfile",
            r#"{gateway: {agentService: {tokenFile: "/nonexistent/hop-token"}}}"#,
            "gateway.agentService.tokenFile",
        ),
        (
            "apikeyfile",
            r#"{models: {providers: {o: {baseUrl: "http://x", apiKeyFile: "/nonexistent/key"}}}}"#,
            "models.providers.o.apiKeyFile",
        ),
        (
            "tls",
            r#"{gateway: {agentService: {tls: {caPath: "/nonexistent/ca.pem", certPath: "/c"}}}}"#,
            "gateway.agentService.tls.keyPath",
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

/// A running `agent-svc` binary and its address.
struct Running {
    child: Child,
    addr: SocketAddr,
}

impl Running {
    /// Starts `agent-svc --config <path> --listen <listen>` and waits for its readiness line.
    fn start(path: &std::path::Path, listen: &str) -> Running {
        let mut child = Command::new(env!("CARGO_BIN_EXE_agent-svc"))
            .args(["--config", path.to_str().expect("utf-8 path"), "--listen", listen])
            .env("RUST_LOG", "info")
            .env_remove("OPENCLAW_AGENT_SVC_TOKEN")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
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
        let addr: SocketAddr = addr.parse().expect("an address");
        assert_ne!(addr.port(), 0);
        Running { child, addr }
    }

    /// SIGTERM, then the exit status and everything it wrote to stderr.
    fn stop(mut self) -> (ExitStatus, String) {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().expect("kill");
        let mut stderr = self.child.stderr.take().expect("stderr");
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            let _ = done_tx.send((self.child.wait(), text));
        });
        let (status, text) =
            done_rx.recv_timeout(Duration::from_secs(20)).expect("agent-svc did not stop on SIGTERM");
        (status.expect("wait for agent-svc"), text)
    }
}

#[test]
fn prints_its_address_when_ready_and_stops_on_sigterm() {
    let path = temp_config("ok", r#"{session: {store: "memory"}}"#);
    let running = Running::start(&path, "127.0.0.1:0");
    std::net::TcpStream::connect(running.addr).expect("it accepts connections");
    let (status, _) = running.stop();
    let _ = std::fs::remove_file(&path);
    assert!(status.success(), "exit {status:?}");
}

fn lines_with<'a>(stderr: &'a str, needle: &str) -> Vec<&'a str> {
    stderr.lines().filter(|l| l.contains(needle)).collect()
}

#[cfg(unix)]
#[test]
fn warns_once_about_plain_text_secrets_others_can_read_and_about_an_open_listener() {
    use std::os::unix::fs::PermissionsExt;
    let path = temp_config(
        "exposed",
        r#"{gateway: {agentService: {token: "literal-secret"}}, session: {store: "memory"}}"#,
    );
    let chmod = |mode| std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    chmod(0o644);
    let (_, stderr) = Running::start(&path, "127.0.0.1:0").stop();
    assert_eq!(lines_with(&stderr, "plain text").len(), 1, "{stderr}");
    assert!(lines_with(&stderr, "plain text")[0].contains("gateway.agentService.token"), "{stderr}");
    assert!(!stderr.contains("literal-secret"), "the secret itself is never logged: {stderr}");
    assert!(lines_with(&stderr, "beyond loopback").is_empty(), "{stderr}");
    chmod(0o600);
    let (_, stderr) = Running::start(&path, "127.0.0.1:0").stop();
    assert!(lines_with(&stderr, "plain text").is_empty(), "{stderr}");
    let _ = std::fs::remove_file(&path);

    // No token on a non-loopback listener: one warning line.
    let path = temp_config("open", r#"{session: {store: "memory"}}"#);
    let (_, stderr) = Running::start(&path, "0.0.0.0:0").stop();
    assert_eq!(lines_with(&stderr, "beyond loopback").len(), 1, "{stderr}");
    let _ = std::fs::remove_file(&path);
}

/// Writes a CA and a certificate it issued for `names` (server and client use)
/// into `dir`: `(ca, cert, key)` paths.
fn issue(dir: &std::path::Path, prefix: &str, names: &[&str]) -> [std::path::PathBuf; 3] {
    use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().expect("CA key");
    let ca_pem = ca_params.self_signed(&ca_key).expect("CA").pem();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).expect("params");
    params.extended_key_usages =
        vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, &issuer).expect("certificate");
    let paths = [
        dir.join(format!("{prefix}-ca.pem")),
        dir.join(format!("{prefix}.pem")),
        dir.join(format!("{prefix}.key")),
    ];
    for (path, text) in paths.iter().zip([ca_pem, cert.pem(), key.serialize_pem()]) {
        std::fs::write(path, text).expect("write PEM");
    }
    paths
}

fn succeeds(cmd: &mut Command) -> (bool, String) {
    let out =
        cmd.env_remove("OPENCLAW_AGENT_SVC_TOKEN").env_remove("OPENCLAW_CONFIG_PATH").output().expect("run");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn healthcheck_and_agent_call_work_against_mutual_tls_and_the_token() {
    let dir = std::env::temp_dir().join(format!("agent-svc-cli-{}-mtls", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    // One certificate for agent-svc, presented as server and (by its own tools) as client.
    let [ca, cert, key] = issue(&dir, "svc", &["localhost"]);
    let [_, stranger_cert, stranger_key] = issue(&dir, "stranger", &["localhost"]);
    let config = dir.join("openclaw.json5");
    let tls = format!(
        r#"{{caPath: "{}", certPath: "{}", keyPath: "{}"}}"#,
        ca.display(),
        cert.display(),
        key.display()
    );
    std::fs::write(
        &config,
        format!(
            r#"{{gateway: {{agentService: {{token: "hop", tls: {tls}}}}}, session: {{store: "memory"}}}}"#
        ),
    )
    .expect("config");
    let running = Running::start(&config, "127.0.0.1:0");
    let port = running.addr.port().to_string();
    let listen = format!("127.0.0.1:{port}");
    let target = format!("localhost:{port}");
    let cfg = config.to_str().expect("utf-8");

    let health = |args: &[&str]| {
        succeeds(
            Command::new(env!("CARGO_BIN_EXE_agent-svc"))
                .args(["--healthcheck", "--listen", &listen])
                .args(args),
        )
    };
    assert!(health(&["--config", cfg]).0, "healthcheck with the config's certificate");
    assert!(!health(&[]).0, "healthcheck in plaintext against mTLS");

    let call = |args: &[&str]| {
        succeeds(
            Command::new(env!("CARGO_BIN_EXE_agent-call"))
                .args(["--target", &target, "--list-agents"])
                .args(args),
        )
    };
    let (ok, out) = call(&["--config", cfg]);
    assert!(ok && out.contains("\"main\""), "agent-call with the config: {out}");
    let (ok, out) = call(&["--config", cfg, "--token", "wrong"]);
    assert!(!ok && out.contains("token"), "a wrong --token wins over the config and is refused: {out}");
    let files = [
        "--ca",
        ca.to_str().expect("utf-8"),
        "--cert",
        cert.to_str().expect("utf-8"),
        "--key",
        key.to_str().expect("utf-8"),
    ];
    let (ok, out) = call(&[&files[..], &["--token", "hop"]].concat());
    assert!(ok && out.contains("\"main\""), "agent-call with flags: {out}");
    let (ok, out) = call(&["--token", "hop"]);
    assert!(!ok, "agent-call in plaintext: {out}");
    let stranger = [
        "--ca",
        ca.to_str().expect("utf-8"),
        "--cert",
        stranger_cert.to_str().expect("utf-8"),
        "--key",
        stranger_key.to_str().expect("utf-8"),
        "--token",
        "hop",
    ];
    let (ok, out) = call(&stranger);
    assert!(!ok, "agent-call with a certificate from another CA: {out}");

    let (status, _) = running.stop();
    assert!(status.success(), "exit {status:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
