//! The services as child processes (the benchmark's and the soak test's):
//! started from their binaries, waited for by their readiness line, killed and
//! reaped on every exit path.

use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

/// A child process that is killed and reaped when dropped, on every exit path
/// (normal end, error, panic unwinding).
pub struct Proc {
    /// The service's name, as used in reports and the log file's name.
    pub name: &'static str,
    child: Child,
    /// Its stderr, kept for error reports.
    pub log: PathBuf,
}

impl Proc {
    /// Spawns `bin args…` with stdout piped and stderr to `<dir>/<name>.log`, and
    /// waits (at most `timeout`) for the stdout line starting with `ready`.
    /// Returns the process and the rest of that line.
    pub fn start(
        name: &'static str,
        bin: &Path,
        args: &[String],
        dir: &Path,
        log_level: &str,
        ready: &str,
        timeout: Duration,
    ) -> Result<(Proc, String)> {
        let log = dir.join(format!("{name}.log"));
        let stderr =
            std::fs::File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
        let mut child = Command::new(bin)
            .args(args)
            .env("RUST_LOG", log_level)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let stdout = child.stdout.take();
        // From here on, every exit path kills it.
        let mut proc = Proc { name, child, log };
        let stdout = stdout.with_context(|| format!("{name}: no stdout pipe"))?;
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let ready = ready.to_string();
        // Reads stdout to the end (so the child never blocks on a full pipe),
        // reporting the readiness line once.
        std::thread::Builder::new()
            .name(format!("{name}-stdout"))
            .spawn(move || {
                let mut tx = Some(tx);
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if let Some(rest) = line.strip_prefix(&ready) {
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(rest.trim().to_string());
                        }
                    }
                }
            })
            .context("cannot start a thread")?;
        match rx.recv_timeout(timeout) {
            Ok(rest) => Ok((proc, rest)),
            Err(RecvTimeoutError::Timeout) => bail!(
                "{name} did not print its readiness line within {timeout:?}\n--- {} ---\n{}",
                proc.log.display(),
                log_tail(&proc.log)
            ),
            Err(RecvTimeoutError::Disconnected) => {
                // Stdout closed: it is exiting; give it a moment to be reaped.
                let deadline = Instant::now() + Duration::from_secs(2);
                let mut status = None;
                while status.is_none() && Instant::now() < deadline {
                    status = proc.child.try_wait().ok().flatten();
                    std::thread::sleep(Duration::from_millis(10));
                }
                let status = status.map_or("closed its stdout".to_string(), |s| format!("exited ({s})"));
                bail!(
                    "{name} {status} before it was ready\n--- {} ---\n{}",
                    proc.log.display(),
                    log_tail(&proc.log)
                )
            }
        }
    }

    /// The process id (for `/proc` readings).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// An error when the process has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait().with_context(|| format!("{}: wait", self.name))? {
            // The caller prints every process's log tail.
            bail!("{} exited ({status}) while under load", self.name);
        }
        Ok(())
    }
}

impl Drop for Proc {
    /// SIGTERM first, so that a service shuts down the way it does in
    /// production (and a wrapper such as valgrind writes its output); SIGKILL
    /// after [`STOP_GRACE`].
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let term = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            if term.is_ok_and(|s| s.success()) {
                let deadline = Instant::now() + STOP_GRACE;
                while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How long a process may take to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(20);

/// The last 30 lines of a log file (or why it cannot be read).
pub fn log_tail(path: &Path) -> String {
    match std::fs::read_to_string(path) {
        Ok(s) => {
            let lines: Vec<&str> = s.lines().collect();
            lines[lines.len().saturating_sub(30)..].join("\n")
        }
        Err(e) => format!("(cannot read: {e})"),
    }
}

/// The address in a readiness line (`ADDR` or `http://ADDR`): must be loopback with a real port.
pub fn parse_ready_addr(name: &str, rest: &str) -> Result<SocketAddr> {
    let s = rest.trim().trim_start_matches("http://").trim_end_matches('/');
    let addr: SocketAddr = s
        .parse()
        .with_context(|| format!("{name}: cannot parse the address in its readiness line {rest:?}"))?;
    if !addr.ip().is_loopback() {
        bail!("{name} listens on {addr}, not on loopback");
    }
    if addr.port() == 0 {
        bail!("{name} printed port 0 in its readiness line; it must print the port it actually bound");
    }
    Ok(addr)
}

/// Where the service binaries are: `dir` when given, else beside this executable
/// (`target/<profile>/`, where cargo puts every binary of the workspace).
pub fn bin_dir(dir: Option<&Path>) -> Result<PathBuf> {
    if let Some(d) = dir {
        return Ok(d.to_path_buf());
    }
    Ok(std::env::current_exe()
        .context("cannot find this executable")?
        .parent()
        .context("this executable has no parent directory")?
        .to_path_buf())
}

/// `dir/name`, which must exist; `script` names what builds it.
pub fn find_bin(dir: &Path, name: &str, script: &str) -> Result<PathBuf> {
    let p = dir.join(name);
    if !p.is_file() {
        bail!("{} not found; build it first ({script} does)", p.display());
    }
    Ok(p)
}

/// How the services are started: their logs' directory, `RUST_LOG`, and the
/// startup timeout of each.
pub struct Launch<'a> {
    /// Where each process's stderr log goes.
    pub dir: &'a Path,
    /// `RUST_LOG` of every service.
    pub log_level: &'a str,
    /// How long each may take to print its readiness line.
    pub startup: Duration,
}

impl Launch<'_> {
    /// Starts `mock-upstream` on a loopback port with `chunk_delay_ms` between
    /// its SSE events; returns it and its address.
    pub fn mock(&self, bin: &Path, chunk_delay_ms: u64) -> Result<(Proc, SocketAddr)> {
        let args =
            ["--listen".into(), "127.0.0.1:0".into(), "--chunk-delay-ms".into(), chunk_delay_ms.to_string()];
        self.service("mock-upstream", bin, &args)
    }

    /// Starts `agent-svc` with `config` on a loopback port (plus `extra`
    /// arguments); returns it and its gRPC address.
    pub fn agent_svc(&self, bin: &Path, config: &str, extra: &[String]) -> Result<(Proc, SocketAddr)> {
        let mut args = vec!["--config".into(), config.into(), "--listen".into(), "127.0.0.1:0".into()];
        args.extend_from_slice(extra);
        self.service("agent-svc", bin, &args)
    }

    /// Starts `gateway-http` with `config` on a loopback port, with agent-svc
    /// out of process at `agent`; returns it and its address.
    pub fn gateway(&self, bin: &Path, config: &str, agent: SocketAddr) -> Result<(Proc, SocketAddr)> {
        let mut args = gateway_args(config);
        args.extend(["--agent-svc".into(), format!("http://{agent}")]);
        self.service("gateway-http", bin, &args)
    }

    /// Starts `gateway-http` with `config` on a loopback port, with agent-svc
    /// inside it (the embedded default); returns it and its address.
    pub fn gateway_embedded(&self, bin: &Path, config: &str) -> Result<(Proc, SocketAddr)> {
        self.service("gateway-http", bin, &gateway_args(config))
    }

    /// One service, waited for by its `<name> listening on ADDR` line.
    fn service(&self, name: &'static str, bin: &Path, args: &[String]) -> Result<(Proc, SocketAddr)> {
        let ready = format!("{name} listening on ");
        let (proc, line) = Proc::start(name, bin, args, self.dir, self.log_level, &ready, self.startup)?;
        let addr = parse_ready_addr(name, &line)?;
        Ok((proc, addr))
    }
}

/// gateway-http's arguments for `config` on a free loopback port.
fn gateway_args(config: &str) -> Vec<String> {
    ["--config", config, "--port", "0", "--bind", "127.0.0.1"].map(String::from).to_vec()
}
