//! `bench`: the gateway pair's benchmark (a release binary, not a test).
//!
//! It starts three processes from the directory of its own executable (or
//! `--bin-dir`): `mock-upstream`, `agent-svc` and `gateway-http` (with
//! `--agent-svc`, so agent-svc runs out of process), all on 127.0.0.1, each
//! waited for by its readiness line on stdout. Then, for every concurrency C
//! in `--concurrency`, it sends `--requests` non-streaming requests straight to
//! the mock ("direct") and the same number through the gateway, then
//! `--stream-requests` streaming (SSE) ones both ways. Each run has C workers,
//! each with its own keep-alive HTTP/1.1 connection, sending back to back until
//! the shared counter reaches N; `--warmup` unmeasured requests go first. One
//! request per path is checked for the right answer before anything is measured.
//!
//! Per run it reports requests/s (N / wall time), p50/p99 latency (for SSE also
//! time to the first content delta), the latency the gateway adds over the
//! direct path at the same concurrency (difference of the percentiles), each
//! process's CPU time per request (`/proc/<pid>/stat` utime+stime over the
//! measured phase ÷ requests) and context switches per request, and how busy
//! the machine was with other work (`/proc/stat`), so a disturbed run is
//! flagged. Memory: idle RSS (`VmRSS` right after startup, before any request)
//! and peak RSS (`VmHWM` at the end) per process. Last, a PASS/MISS table
//! against the targets (see `Report::targets`).
//!
//! Everything is bounded: fixed request counts, a timeout per request
//! (`--request-timeout-ms`), at most `--max-errors` failures per run (the
//! benchmark then stops), per process startup (`--startup-timeout-s`) and the
//! whole load phase (`--timeout-s`). Children are killed when the bench exits,
//! on errors and panics too ([`Proc`]). Exit status 1 when anything failed
//! (MISS alone is not a failure). Run it with `scripts/bench.sh`, which builds
//! everything in release mode first.

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use clap::Parser;
use e2e::sse::{SseItem, SseParser};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::Barrier;

/// The gateway's bearer token in the generated config.
const TOKEN: &str = "bench-token";
/// The request path on both the mock and the gateway.
const PATH: &str = "/v1/chat/completions";
/// The non-streaming request body (direct and through the gateway).
const BODY: &str = r#"{"model":"openclaw","messages":[{"role":"user","content":"hi"}]}"#;
/// The streaming request body. It asks for usage because agent-svc always does
/// upstream: so the mock sends the same events on both paths.
const STREAM_BODY: &str = r#"{"model":"openclaw","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}"#;
/// The mock's full answer (see `mock-upstream`), checked once per path before measuring.
const ANSWER: &str = "Hello from the mock.";

/// Benchmark of the gateway pair: starts mock-upstream, agent-svc and gateway-http on 127.0.0.1 and
/// compares the direct upstream with the path through the gateway.
#[derive(Parser, Debug)]
#[command(name = "bench", version)]
struct Cli {
    /// Measured non-streaming requests per path and concurrency.
    #[arg(long, default_value_t = 20_000, value_name = "N")]
    requests: usize,
    /// Concurrency levels, comma separated (one keep-alive connection per worker).
    #[arg(long, default_value = "1,64", value_delimiter = ',', value_name = "LIST")]
    concurrency: Vec<usize>,
    /// Measured streaming (SSE) requests per path and concurrency (0 skips streaming).
    #[arg(long, default_value_t = 5_000, value_name = "N")]
    stream_requests: usize,
    /// Unmeasured requests before every measured run.
    #[arg(long, default_value_t = 500, value_name = "N")]
    warmup: usize,
    /// Timeout of one request, in milliseconds (a timed-out request counts as an error).
    #[arg(long, default_value_t = 5_000, value_name = "MS")]
    request_timeout_ms: u64,
    /// Timeout of each process's startup (until its readiness line), in seconds.
    #[arg(long, default_value_t = 30, value_name = "S")]
    startup_timeout_s: u64,
    /// Timeout of the whole load phase, in seconds.
    #[arg(long, default_value_t = 900, value_name = "S")]
    timeout_s: u64,
    /// Stop a run after this many failed requests (and its warm-up after as many); a run
    /// stopped this way ends the benchmark (the report shows what was measured).
    #[arg(long, default_value_t = 20, value_name = "N")]
    max_errors: usize,
    /// Pause between the mock's SSE events, in ms (0: the answer in one write).
    #[arg(long, default_value_t = 0, value_name = "MS")]
    chunk_delay_ms: u64,
    /// `RUST_LOG` given to the services (their production default is `info`).
    #[arg(long, default_value = "info", value_name = "FILTER")]
    log_level: String,
    /// Directory holding mock-upstream, agent-svc and gateway-http (default: this executable's).
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,
    /// Measure only the direct upstream (agent-svc and gateway-http are not started).
    #[arg(long)]
    direct_only: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run_all(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------
// Orchestration
// ---------------------------------------------------------------------------

/// Starts the processes, runs every measurement and prints the tables.
fn run_all(cli: &Cli) -> Result<()> {
    if cli.requests == 0 {
        bail!("--requests must be at least 1");
    }
    if cli.concurrency.is_empty() || cli.concurrency.iter().any(|&c| c == 0 || c > 1024) {
        bail!("--concurrency must list values between 1 and 1024");
    }
    let bin_dir = match &cli.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()
            .context("cannot find this executable")?
            .parent()
            .context("this executable has no parent directory")?
            .to_path_buf(),
    };
    let bin = |name: &str| -> Result<PathBuf> {
        let p = bin_dir.join(name);
        if !p.is_file() {
            bail!("{} not found; build it first (scripts/bench.sh does)", p.display());
        }
        Ok(p)
    };
    let mock_bin = bin("mock-upstream")?;
    let (agent_bin, gateway_bin) =
        if cli.direct_only { (None, None) } else { (Some(bin("agent-svc")?), Some(bin("gateway-http")?)) };
    let clk_tck = clock_ticks_per_second();
    let startup = Duration::from_secs(cli.startup_timeout_s.max(1));

    // Declared first so that it is dropped last, after the processes are dead.
    let tmp = TempDir::new()?;
    let mut procs: Vec<Proc> = Vec::new();

    let (mock, line) = Proc::start(
        "mock-upstream",
        &mock_bin,
        &["--listen".into(), "127.0.0.1:0".into(), "--chunk-delay-ms".into(), cli.chunk_delay_ms.to_string()],
        tmp.path(),
        &cli.log_level,
        "mock-upstream listening on ",
        startup,
    )?;
    procs.push(mock);
    let mock_addr = parse_ready_addr("mock-upstream", &line)?;

    let mut gateway_addr = None;
    if let (Some(agent_bin), Some(gateway_bin)) = (agent_bin, gateway_bin) {
        let config = tmp.path().join("bench.json5");
        std::fs::write(&config, config_text(mock_addr))
            .with_context(|| format!("cannot write {}", config.display()))?;
        let config = config.display().to_string();
        let (agent, line) = Proc::start(
            "agent-svc",
            &agent_bin,
            &["--config".into(), config.clone(), "--listen".into(), "127.0.0.1:0".into()],
            tmp.path(),
            &cli.log_level,
            "agent-svc listening on ",
            startup,
        )?;
        procs.push(agent);
        let agent_addr = parse_ready_addr("agent-svc", &line)?;
        let (gateway, line) = Proc::start(
            "gateway-http",
            &gateway_bin,
            &[
                "--config".into(),
                config,
                "--port".into(),
                "0".into(),
                "--bind".into(),
                "127.0.0.1".into(),
                "--agent-svc".into(),
                format!("http://{agent_addr}"),
            ],
            tmp.path(),
            &cli.log_level,
            "gateway-http listening on ",
            startup,
        )?;
        procs.push(gateway);
        gateway_addr = Some(parse_ready_addr("gateway-http", &line)?);
    }

    // Idle memory: right after startup, before any request.
    let idle_rss = procs
        .iter()
        .map(|p| status_kb(p.pid(), "VmRSS"))
        .collect::<Result<Vec<_>>>()
        .context("reading idle RSS")?;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let timeout = Duration::from_secs(cli.timeout_s.max(1));
    let results = rt
        .block_on(async {
            tokio::time::timeout(timeout, measure(cli, &mut procs, mock_addr, gateway_addr))
                .await
                .map_err(|_| anyhow!("the load phase did not finish within {timeout:?} (--timeout-s)"))?
        })
        .inspect_err(|_| {
            // Say what the services said before they are killed.
            for p in &procs {
                eprintln!("--- last lines of {} ---\n{}", p.log.display(), log_tail(&p.log));
            }
        })?;
    let peak_rss = procs
        .iter()
        .map(|p| status_kb(p.pid(), "VmHWM"))
        .collect::<Result<Vec<_>>>()
        .context("reading peak RSS")?;

    let names: Vec<&str> = procs.iter().map(|p| p.name).collect();
    let report =
        Report { cli, clk_tck, online_cpus: online_cpus(), names, idle_rss, peak_rss, runs: results };
    print!("{}", report.render());
    drop(procs);
    drop(tmp);
    let failed: u64 = report.runs.iter().map(|r| r.errors).sum();
    if failed > 0 {
        bail!("{failed} requests failed: the figures above are not valid");
    }
    Ok(())
}

/// The config both services read: the mock as provider `mock`, agent `main` on `mock/bench`.
fn config_text(mock: SocketAddr) -> String {
    format!(
        r#"// Written by the benchmark.
{{
  models: {{ providers: {{ mock: {{ baseUrl: "http://{mock}/v1", api: "openai-completions" }} }} }},
  agents: {{ defaults: {{ model: "mock/bench" }}, list: [{{ id: "main", default: true }}] }},
  gateway: {{
    auth: {{ mode: "token", token: "{TOKEN}" }},
    http: {{ endpoints: {{ chatCompletions: {{ enabled: true }} }} }},
  }},
  session: {{ store: "memory" }},
}}
"#
    )
}

/// Which path a run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// Straight to mock-upstream.
    Direct,
    /// Through gateway-http (and agent-svc).
    Gateway,
}

impl Route {
    fn label(self) -> &'static str {
        match self {
            Route::Direct => "direct",
            Route::Gateway => "gateway",
        }
    }
}

/// Smoke-checks every path, then runs every measurement in order.
async fn measure(
    cli: &Cli,
    procs: &mut [Proc],
    mock: SocketAddr,
    gateway: Option<SocketAddr>,
) -> Result<Vec<RunResult>> {
    let req_timeout = Duration::from_millis(cli.request_timeout_ms.max(1));
    let direct = Target::new(Route::Direct, mock, None);
    let via_gw = gateway.map(|a| Target::new(Route::Gateway, a, Some(TOKEN)));
    let mut targets = vec![direct];
    targets.extend(via_gw);

    for t in &targets {
        smoke(t, false, req_timeout)
            .await
            .with_context(|| format!("{} smoke test (JSON)", t.route.label()))?;
        if cli.stream_requests > 0 {
            smoke(t, true, req_timeout)
                .await
                .with_context(|| format!("{} smoke test (SSE)", t.route.label()))?;
        }
    }

    let pids: Vec<u32> = procs.iter().map(Proc::pid).collect();
    let mut plan = Vec::new();
    for &c in &cli.concurrency {
        for t in &targets {
            plan.push((t.clone(), false, c, cli.requests));
        }
    }
    if cli.stream_requests > 0 {
        for &c in &cli.concurrency {
            for t in &targets {
                plan.push((t.clone(), true, c, cli.stream_requests));
            }
        }
    }
    let mut results = Vec::with_capacity(plan.len());
    for (target, stream, concurrency, requests) in plan {
        eprintln!(
            "bench: {} {} c={concurrency}: {requests} requests (+{} warm-up)",
            target.route.label(),
            if stream { "SSE" } else { "JSON" },
            cli.warmup
        );
        let spec = RunSpec {
            stream,
            concurrency,
            requests,
            warmup: cli.warmup,
            timeout: req_timeout,
            max_errors: cli.max_errors.max(1),
        };
        let r = run(Arc::new(target), spec, &pids).await?;
        for p in procs.iter_mut() {
            p.check_alive()?;
        }
        let stopped = r.attempted() < requests as u64;
        results.push(r);
        if stopped {
            eprintln!("bench: the run stopped after {} failed requests; skipping the rest", cli.max_errors);
            break;
        }
    }
    Ok(results)
}

// ---------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------

/// A child process that is killed and reaped when dropped, on every exit path
/// (normal end, error, panic unwinding).
struct Proc {
    name: &'static str,
    child: Child,
    /// Its stderr, kept for error reports.
    log: PathBuf,
}

impl Proc {
    /// Spawns `bin args…` with stdout piped and stderr to `<dir>/<name>.log`, and
    /// waits (at most `timeout`) for the stdout line starting with `ready`.
    /// Returns the process and the rest of that line.
    fn start(
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

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// An error when the process has exited.
    fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait().with_context(|| format!("{}: wait", self.name))? {
            // The caller prints every process's log tail.
            bail!("{} exited ({status}) during the benchmark", self.name);
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A private directory under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<Self> {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        let p = std::env::temp_dir().join(format!("openclaw-bench-{}-{nanos}", std::process::id()));
        std::fs::create_dir(&p).with_context(|| format!("cannot create {}", p.display()))?;
        Ok(Self(p))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The last 30 lines of a log file (or why it cannot be read).
fn log_tail(path: &Path) -> String {
    match std::fs::read_to_string(path) {
        Ok(s) => {
            let lines: Vec<&str> = s.lines().collect();
            lines[lines.len().saturating_sub(30)..].join("\n")
        }
        Err(e) => format!("(cannot read: {e})"),
    }
}

/// The address in a readiness line (`ADDR` or `http://ADDR`): must be loopback with a real port.
fn parse_ready_addr(name: &str, rest: &str) -> Result<SocketAddr> {
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

// ---------------------------------------------------------------------------
// /proc
// ---------------------------------------------------------------------------

/// utime + stime of a process (all its threads), in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let s = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    // The command name (field 2) may contain spaces and parentheses: fields after the last ')'.
    let rest = s.rsplit_once(')').map(|(_, r)| r).with_context(|| format!("{path}: malformed"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')' come field 3 (state) onwards; utime is field 14, stime field 15.
    let field = |i: usize| -> Result<u64> {
        fields
            .get(i - 3)
            .with_context(|| format!("{path}: field {i} missing"))?
            .parse::<u64>()
            .with_context(|| format!("{path}: field {i} is not a number"))
    };
    Ok(field(14)? + field(15)?)
}

/// Voluntary + involuntary context switches of all threads of a process
/// (`/proc/<pid>/task/*/status`; threads that already exited are not counted).
fn ctx_switches(pid: u32) -> Result<u64> {
    let dir = format!("/proc/{pid}/task");
    let mut total = 0;
    for entry in std::fs::read_dir(&dir).with_context(|| format!("cannot read {dir}"))? {
        let Ok(entry) = entry else { continue };
        // A thread may exit between the listing and the read.
        let Ok(s) = std::fs::read_to_string(entry.path().join("status")) else { continue };
        for line in s.lines() {
            if let Some(v) = line
                .strip_prefix("voluntary_ctxt_switches:")
                .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
            {
                total += v.trim().parse::<u64>().with_context(|| format!("{dir}: bad line {line:?}"))?;
            }
        }
    }
    Ok(total)
}

/// Machine-wide CPU ticks (all cores) from the `cpu` line of `/proc/stat`.
#[derive(Debug, Clone, Copy, Default)]
struct MachineTicks {
    /// user + nice + system + irq + softirq.
    busy: u64,
    /// Time the hypervisor ran something else.
    steal: u64,
}

fn machine_ticks() -> Result<MachineTicks> {
    let s = std::fs::read_to_string("/proc/stat").context("cannot read /proc/stat")?;
    let line = s.lines().find(|l| l.starts_with("cpu ")).context("/proc/stat: no cpu line")?;
    let f: Vec<u64> = line.split_whitespace().skip(1).map(|v| v.parse().unwrap_or(0)).collect();
    let at = |i: usize| f.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal
    Ok(MachineTicks { busy: at(0) + at(1) + at(2) + at(5) + at(6), steal: at(7) })
}

/// A `kB` line of `/proc/<pid>/status` (e.g. `VmRSS`), in kB.
fn status_kb(pid: u32, key: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let s = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    let line = s
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(':')))
        .with_context(|| format!("{path}: no {key} line"))?;
    let number = line.trim().trim_end_matches("kB").trim();
    number.parse().with_context(|| format!("{path}: {key} is not a number: {line:?}"))
}

/// CPUs online: the `cpuN` lines of `/proc/stat` (at least 1).
fn online_cpus() -> usize {
    std::fs::read_to_string("/proc/stat")
        .map(|s| {
            s.lines()
                .filter(|l| {
                    l.strip_prefix("cpu").is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()))
                })
                .count()
        })
        .unwrap_or(1)
        .max(1)
}

/// `CLK_TCK` (the unit of utime/stime), from `getconf`; 100 when that fails.
fn clock_ticks_per_second() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .stderr(Stdio::null())
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&t: &u64| t > 0)
        .unwrap_or(100)
}

// ---------------------------------------------------------------------------
// Load generation
// ---------------------------------------------------------------------------

/// One endpoint to load and the constant parts of its requests.
#[derive(Clone)]
struct Target {
    route: Route,
    addr: SocketAddr,
    host: HeaderValue,
    auth: Option<HeaderValue>,
}

impl Target {
    fn new(route: Route, addr: SocketAddr, token: Option<&str>) -> Self {
        let host = HeaderValue::from_str(&addr.to_string()).unwrap_or(HeaderValue::from_static("127.0.0.1"));
        let auth = token.and_then(|t| HeaderValue::from_str(&format!("Bearer {t}")).ok());
        Self { route, addr, host, auth }
    }

    /// A POST of `body` to [`PATH`].
    fn request(&self, body: &Bytes, stream: bool) -> Request<Full<Bytes>> {
        let mut req = Request::new(Full::new(body.clone()));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = Uri::from_static(PATH);
        let h = req.headers_mut();
        h.insert(HOST, self.host.clone());
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if stream {
            h.insert(ACCEPT, HeaderValue::from_static("text/event-stream"));
        }
        if let Some(a) = &self.auth {
            h.insert(AUTHORIZATION, a.clone());
        }
        req
    }
}

/// One HTTP/1.1 keep-alive connection, reopened after any error.
struct Client {
    conn: Option<SendRequest<Full<Bytes>>>,
    check: StreamCheck,
}

impl Client {
    fn new() -> Self {
        Self { conn: None, check: StreamCheck::default() }
    }

    /// The open connection, connecting first when there is none.
    async fn connect(&mut self, addr: SocketAddr) -> Result<&mut SendRequest<Full<Bytes>>> {
        if self.conn.as_ref().is_some_and(|c| c.is_closed()) {
            self.conn = None;
        }
        if self.conn.is_none() {
            let tcp =
                tokio::net::TcpStream::connect(addr).await.with_context(|| format!("connect {addr}"))?;
            tcp.set_nodelay(true)?;
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            return Ok(self.conn.insert(sender));
        }
        self.conn.as_mut().context("no connection")
    }

    /// Sends one request and reads the response to its end. Returns when the
    /// first content delta arrived (SSE only). Any failure drops the connection.
    async fn send(
        &mut self,
        t: &Target,
        body: &Bytes,
        stream: bool,
        timeout: Duration,
    ) -> Result<Option<Instant>> {
        let r = match tokio::time::timeout(timeout, self.send_inner(t, body, stream)).await {
            Ok(r) => r,
            Err(_) => Err(anyhow!("timed out after {} ms", timeout.as_millis())),
        };
        if r.is_err() {
            self.conn = None;
        }
        r
    }

    async fn send_inner(&mut self, t: &Target, body: &Bytes, stream: bool) -> Result<Option<Instant>> {
        let sender = self.connect(t.addr).await?;
        sender.ready().await?;
        let resp = sender.send_request(t.request(body, stream)).await?;
        let status = resp.status();
        let mut body = resp.into_body();
        if status != StatusCode::OK {
            let bytes = body.collect().await?.to_bytes();
            let text = String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned();
            bail!("HTTP {status}: {text}");
        }
        if !stream {
            while let Some(frame) = body.frame().await {
                frame?;
            }
            return Ok(None);
        }
        self.check.reset();
        let mut first = None;
        while let Some(frame) = body.frame().await {
            if let Some(data) = frame?.data_ref() {
                if self.check.feed(data)? && first.is_none() {
                    first = Some(Instant::now());
                }
            }
        }
        self.check.finish()?;
        Ok(first)
    }
}

/// Checks a streamed answer as it arrives, with the tests' SSE parser
/// ([`SseParser`]): notes the first non-empty `delta.content` and `data: [DONE]`,
/// and fails on an error event. JSON is parsed only until the first content.
#[derive(Default)]
struct StreamCheck {
    parser: SseParser,
    content: bool,
    done: bool,
}

/// The part of a chunk the check reads.
#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Vec<ChunkChoice>,
}

#[derive(Deserialize)]
struct ChunkChoice {
    #[serde(default)]
    delta: Option<Delta>,
}

#[derive(Deserialize)]
struct Delta {
    #[serde(default)]
    content: Option<String>,
}

impl StreamCheck {
    fn reset(&mut self) {
        self.parser.reset();
        self.content = false;
        self.done = false;
    }

    /// Feeds body bytes; true once a content delta has been seen.
    fn feed(&mut self, data: &[u8]) -> Result<bool> {
        let Self { parser, content, done } = self;
        parser.feed(data, |item| match item {
            SseItem::Event { data, .. } => on_event(data, content, done),
            SseItem::Comment(_) => Ok(()),
        })?;
        Ok(self.content)
    }

    /// An error unless the stream had content and ended with `data: [DONE]`.
    fn finish(&mut self) -> Result<()> {
        if self.parser.is_mid_event() {
            bail!("the stream ended inside an event");
        }
        if !self.content {
            bail!("the stream had no content delta");
        }
        if !self.done {
            bail!("the stream ended without data: [DONE]");
        }
        Ok(())
    }
}

/// One event of a streamed answer.
fn on_event(payload: &[u8], content: &mut bool, done: &mut bool) -> Result<()> {
    if payload == b"[DONE]" {
        *done = true;
        return Ok(());
    }
    if *done {
        bail!("an event after data: [DONE]");
    }
    if payload.starts_with(b"{\"error\"") {
        bail!("error event: {}", String::from_utf8_lossy(payload));
    }
    if !*content {
        let chunk: Chunk = serde_json::from_slice(payload).context("an SSE chunk that is not JSON")?;
        *content = chunk
            .choices
            .iter()
            .any(|c| c.delta.as_ref().and_then(|d| d.content.as_deref()).is_some_and(|s| !s.is_empty()));
    }
    Ok(())
}

/// One request with the answer checked: JSON must contain the mock's answer,
/// SSE must carry content and end with `[DONE]`.
async fn smoke(t: &Target, stream: bool, timeout: Duration) -> Result<()> {
    if stream {
        let mut c = Client::new();
        c.send(t, &Bytes::from_static(STREAM_BODY.as_bytes()), true, timeout).await?;
        return Ok(());
    }
    let fut = async {
        let mut c = Client::new();
        let sender = c.connect(t.addr).await?;
        let resp = sender.send_request(t.request(&Bytes::from_static(BODY.as_bytes()), false)).await?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        let text = String::from_utf8_lossy(&bytes);
        if status != StatusCode::OK {
            bail!("HTTP {status}: {}", text.chars().take(300).collect::<String>());
        }
        let v: serde_json::Value = serde_json::from_slice(&bytes).context("the answer is not JSON")?;
        let content = v.pointer("/choices/0/message/content").and_then(|c| c.as_str());
        if content != Some(ANSWER) {
            bail!(
                "unexpected answer (want content {ANSWER:?}): {}",
                text.chars().take(300).collect::<String>()
            );
        }
        Ok(())
    };
    tokio::time::timeout(timeout, fut).await.map_err(|_| anyhow!("timed out"))?
}

/// The shape of one measured run.
#[derive(Debug, Clone, Copy)]
struct RunSpec {
    stream: bool,
    concurrency: usize,
    requests: usize,
    warmup: usize,
    timeout: Duration,
    /// Failed requests after which the workers stop.
    max_errors: usize,
}

/// Counters the workers of one run share.
struct Shared {
    spec: RunSpec,
    body: Bytes,
    warm: AtomicUsize,
    next: AtomicUsize,
    warm_errors: AtomicUsize,
    errors: AtomicUsize,
    /// All workers connected and warm: the driver samples CPU, then opens `go`.
    ready: Barrier,
    go: Barrier,
}

/// What one worker measured (nanoseconds).
struct WorkerOut {
    total: Vec<u64>,
    ttfb: Vec<u64>,
    errors: u64,
    first_error: Option<String>,
}

/// The outcome of one measured run.
struct RunResult {
    route: Route,
    spec: RunSpec,
    wall: Duration,
    /// Successful requests' latency, sorted (ns).
    total: Vec<u64>,
    /// Time to the first content delta, sorted (ns; SSE only).
    ttfb: Vec<u64>,
    errors: u64,
    first_error: Option<String>,
    /// CPU ticks per child process over the measured phase (same order as the processes).
    cpu_ticks: Vec<u64>,
    /// Context switches per child process (all threads) over the measured phase.
    ctx_switches: Vec<u64>,
    /// The load generator's own CPU ticks.
    self_ticks: u64,
    /// Machine-wide busy and steal ticks over the measured phase (all cores).
    machine: MachineTicks,
}

/// One measured run: C workers, warm-up, then N requests back to back.
async fn run(target: Arc<Target>, spec: RunSpec, pids: &[u32]) -> Result<RunResult> {
    let c = spec.concurrency;
    let shared = Arc::new(Shared {
        spec,
        body: Bytes::from_static(if spec.stream { STREAM_BODY } else { BODY }.as_bytes()),
        warm: AtomicUsize::new(0),
        next: AtomicUsize::new(0),
        warm_errors: AtomicUsize::new(0),
        errors: AtomicUsize::new(0),
        ready: Barrier::new(c + 1),
        go: Barrier::new(c + 1),
    });
    let handles: Vec<_> = (0..c).map(|_| tokio::spawn(worker(target.clone(), shared.clone()))).collect();
    shared.ready.wait().await;
    // A failed sample is reported after the workers ran (they wait on `go`).
    let before = Sample::take(pids);
    let start = Instant::now();
    shared.go.wait().await;
    let mut outs = Vec::with_capacity(c);
    for h in handles {
        outs.push(h.await.context("a load worker panicked")?);
    }
    let wall = start.elapsed();
    let after = Sample::take(pids)?;
    let before = before?;

    let mut total = Vec::with_capacity(spec.requests);
    let mut ttfb = Vec::with_capacity(if spec.stream { spec.requests } else { 0 });
    let mut errors = 0;
    let mut first_error = None;
    for o in outs {
        total.extend_from_slice(&o.total);
        ttfb.extend_from_slice(&o.ttfb);
        errors += o.errors;
        if first_error.is_none() {
            first_error = o.first_error;
        }
    }
    total.sort_unstable();
    ttfb.sort_unstable();
    Ok(RunResult {
        route: target.route,
        spec,
        wall,
        total,
        ttfb,
        errors,
        first_error,
        cpu_ticks: deltas(&after.cpu, &before.cpu),
        ctx_switches: deltas(&after.ctx, &before.ctx),
        self_ticks: after.self_cpu.saturating_sub(before.self_cpu),
        machine: MachineTicks {
            busy: after.machine.busy.saturating_sub(before.machine.busy),
            steal: after.machine.steal.saturating_sub(before.machine.steal),
        },
    })
}

fn deltas(after: &[u64], before: &[u64]) -> Vec<u64> {
    after.iter().zip(before).map(|(a, b)| a.saturating_sub(*b)).collect()
}

/// Counters read at the start and the end of a measured phase.
struct Sample {
    /// utime+stime per child process (ticks).
    cpu: Vec<u64>,
    /// Context switches per child process.
    ctx: Vec<u64>,
    /// The bench's own utime+stime (ticks).
    self_cpu: u64,
    machine: MachineTicks,
}

impl Sample {
    fn take(pids: &[u32]) -> Result<Self> {
        Ok(Self {
            cpu: pids.iter().map(|&p| cpu_ticks(p)).collect::<Result<_>>()?,
            ctx: pids.iter().map(|&p| ctx_switches(p)).collect::<Result<_>>()?,
            self_cpu: cpu_ticks(std::process::id())?,
            machine: machine_ticks()?,
        })
    }
}

/// One load worker: its share of the warm-up, then requests until the counter reaches N.
async fn worker(t: Arc<Target>, s: Arc<Shared>) -> WorkerOut {
    let spec = s.spec;
    let cap = spec.requests / spec.concurrency + 2;
    let mut out = WorkerOut {
        total: Vec::with_capacity(cap),
        ttfb: Vec::with_capacity(if spec.stream { cap } else { 0 }),
        errors: 0,
        first_error: None,
    };
    let mut client = Client::new();
    while s.warm_errors.load(Ordering::Relaxed) < spec.max_errors
        && s.warm.fetch_add(1, Ordering::Relaxed) < spec.warmup
    {
        if client.send(&t, &s.body, spec.stream, spec.timeout).await.is_err() {
            s.warm_errors.fetch_add(1, Ordering::Relaxed);
        }
    }
    // Connect before the clock starts (a failure shows up as errors below).
    let _ = tokio::time::timeout(spec.timeout, client.connect(t.addr)).await;
    s.ready.wait().await;
    s.go.wait().await;
    while s.errors.load(Ordering::Relaxed) < spec.max_errors
        && s.next.fetch_add(1, Ordering::Relaxed) < spec.requests
    {
        let start = Instant::now();
        match client.send(&t, &s.body, spec.stream, spec.timeout).await {
            Ok(first) => {
                out.total.push(nanos(start.elapsed()));
                if let Some(f) = first {
                    out.ttfb.push(nanos(f.duration_since(start)));
                }
            }
            Err(e) => {
                out.errors += 1;
                s.errors.fetch_add(1, Ordering::Relaxed);
                if out.first_error.is_none() {
                    out.first_error = Some(format!("{e:#}"));
                }
            }
        }
    }
    out
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

// ---------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------

/// Nearest-rank percentile of sorted nanoseconds, in milliseconds.
fn pct_ms(sorted: &[u64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1] as f64 / 1e6)
}

fn ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.3}"))
}

fn delta_ms(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    Some(a? - b?)
}

impl RunResult {
    /// `direct JSON c=1` style.
    fn label(&self) -> String {
        format!(
            "{} {} c={}",
            self.route.label(),
            if self.spec.stream { "SSE" } else { "JSON" },
            self.spec.concurrency
        )
    }

    /// Requests sent in the measured phase (fewer than asked when it stopped on errors).
    fn attempted(&self) -> u64 {
        self.total.len() as u64 + self.errors
    }

    fn rps(&self) -> f64 {
        self.total.len() as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    /// CPU µs per measured request (successful or not) for a tick count.
    fn us_per_req(&self, ticks: u64, clk_tck: u64) -> f64 {
        ticks as f64 * 1e6 / clk_tck as f64 / self.attempted().max(1) as f64
    }
}

/// Everything measured, ready to print.
struct Report<'a> {
    cli: &'a Cli,
    clk_tck: u64,
    /// CPUs online (the unit of the machine-wide `/proc/stat` figures).
    online_cpus: usize,
    /// Process names, in the order of the CPU and RSS vectors.
    names: Vec<&'static str>,
    idle_rss: Vec<u64>,
    peak_rss: Vec<u64>,
    runs: Vec<RunResult>,
}

/// One PASS/MISS line.
struct Check {
    what: String,
    value: String,
    pass: Option<bool>,
}

impl Report<'_> {
    fn find(&self, route: Route, stream: bool, c: usize) -> Option<&RunResult> {
        self.runs.iter().find(|r| r.route == route && r.spec.stream == stream && r.spec.concurrency == c)
    }

    fn proc_index(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| *n == name)
    }

    /// CPU µs/request of gateway-http + agent-svc in a run.
    fn pair_cpu(&self, r: &RunResult) -> Option<f64> {
        let g = self.proc_index("gateway-http")?;
        let a = self.proc_index("agent-svc")?;
        Some(r.us_per_req(r.cpu_ticks[g] + r.cpu_ticks[a], self.clk_tck))
    }

    fn render(&self) -> String {
        let mut o = String::new();
        let usable = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let cores = if usable == self.online_cpus {
            format!("{usable} CPUs")
        } else {
            format!("{usable} of {} CPUs usable (affinity)", self.online_cpus)
        };
        let _ = writeln!(
            o,
            "\nopenclaw gateway benchmark: {cores}, 127.0.0.1, HTTP/1.1 keep-alive, one connection per worker, \
             {} warm-up requests per run, CLK_TCK {}",
            self.cli.warmup, self.clk_tck
        );
        let _ = writeln!(o, "direct = POST to mock-upstream; gateway = POST to gateway-http (→ agent-svc gRPC → mock-upstream, SSE upstream)");

        for stream in [false, true] {
            let runs: Vec<&RunResult> = self.runs.iter().filter(|r| r.spec.stream == stream).collect();
            if runs.is_empty() {
                continue;
            }
            if stream {
                let _ = writeln!(o, "\nStreaming (SSE; ttfb = time to the first content delta; ms)");
                let _ = writeln!(
                    o,
                    "{:<8} {:>5} {:>8} {:>6} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
                    "path",
                    "conc",
                    "requests",
                    "errors",
                    "req/s",
                    "ttfb p50",
                    "ttfb p99",
                    "p50",
                    "p99",
                    "+ttfb p99",
                    "+p99"
                );
            } else {
                let _ = writeln!(
                    o,
                    "\nNon-streaming (JSON; latency in ms; + = gateway minus direct at the same concurrency)"
                );
                let _ = writeln!(
                    o,
                    "{:<8} {:>5} {:>8} {:>6} {:>9} {:>9} {:>9} {:>9} {:>9}",
                    "path", "conc", "requests", "errors", "req/s", "p50", "p99", "+p50", "+p99"
                );
            }
            for r in &runs {
                let (p50, p99) = (pct_ms(&r.total, 50.0), pct_ms(&r.total, 99.0));
                let direct = (r.route == Route::Gateway)
                    .then(|| self.find(Route::Direct, stream, r.spec.concurrency))
                    .flatten();
                let d = |f: fn(&RunResult) -> Option<f64>| direct.and_then(|dr| delta_ms(f(r), f(dr)));
                if stream {
                    let _ = writeln!(
                        o,
                        "{:<8} {:>5} {:>8} {:>6} {:>9.0} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
                        r.route.label(),
                        r.spec.concurrency,
                        r.attempted(),
                        r.errors,
                        r.rps(),
                        ms(pct_ms(&r.ttfb, 50.0)),
                        ms(pct_ms(&r.ttfb, 99.0)),
                        ms(p50),
                        ms(p99),
                        ms(d(|x| pct_ms(&x.ttfb, 99.0))),
                        ms(d(|x| pct_ms(&x.total, 99.0))),
                    );
                } else {
                    let _ = writeln!(
                        o,
                        "{:<8} {:>5} {:>8} {:>6} {:>9.0} {:>9} {:>9} {:>9} {:>9}",
                        r.route.label(),
                        r.spec.concurrency,
                        r.attempted(),
                        r.errors,
                        r.rps(),
                        ms(p50),
                        ms(p99),
                        ms(d(|x| pct_ms(&x.total, 50.0))),
                        ms(d(|x| pct_ms(&x.total, 99.0))),
                    );
                }
            }
        }

        // CPU per request.
        let cpus = self.online_cpus as f64;
        let _ = writeln!(
            o,
            "\nCPU time per request (µs; utime+stime over the measured phase ÷ requests; 1 tick = {} µs). \
             ours/other/steal: % of {} CPUs used by these four processes / by anything else / stolen by the host \
             (approximate for runs under 1 s)",
            1_000_000 / self.clk_tck,
            self.online_cpus
        );
        let mut head = format!("{:<18}", "run");
        for n in &self.names {
            let _ = write!(head, " {n:>13}");
        }
        if self.pair_index_ok() {
            let _ = write!(head, " {:>9}", "gw+agent");
        }
        let _ = write!(head, " {:>13} {:>5} {:>6} {:>6}", "bench(client)", "ours", "other", "steal");
        let _ = writeln!(o, "{head}");
        for r in &self.runs {
            let mut line = format!("{:<18}", r.label());
            for t in &r.cpu_ticks {
                let _ = write!(line, " {:>13.1}", r.us_per_req(*t, self.clk_tck));
            }
            if let Some(v) = self.pair_cpu(r) {
                let _ = write!(line, " {v:>9.1}");
            }
            let capacity = self.clk_tck as f64 * r.wall.as_secs_f64().max(1e-9) * cpus / 100.0;
            let ours = r.cpu_ticks.iter().sum::<u64>() + r.self_ticks;
            let other = r.machine.busy.saturating_sub(ours);
            let _ = write!(
                line,
                " {:>13.1} {:>4.0}% {:>5.0}% {:>5.0}%",
                r.us_per_req(r.self_ticks, self.clk_tck),
                ours as f64 / capacity,
                other as f64 / capacity,
                r.machine.steal as f64 / capacity
            );
            let _ = writeln!(o, "{line}");
        }

        let disturbed: Vec<String> = self
            .runs
            .iter()
            .filter(|r| {
                // Under a second the tick granularity alone can make 10%.
                let capacity = self.clk_tck as f64 * r.wall.as_secs_f64().max(1e-9) * cpus / 100.0;
                let ours = r.cpu_ticks.iter().sum::<u64>() + r.self_ticks;
                r.wall >= Duration::from_secs(1)
                    && (r.machine.busy.saturating_sub(ours) + r.machine.steal) as f64 / capacity > 10.0
            })
            .map(RunResult::label)
            .collect();
        if !disturbed.is_empty() {
            let _ = writeln!(
                o,
                "WARNING: other load (or steal) above 10% of the CPUs during: {}; rerun on a quiet machine",
                disturbed.join(", ")
            );
        }

        // Context switches per request.
        let _ = writeln!(o, "\nContext switches per request (voluntary + involuntary, all threads)");
        let mut head = format!("{:<18}", "run");
        for n in &self.names {
            let _ = write!(head, " {n:>13}");
        }
        let _ = writeln!(o, "{head}");
        for r in &self.runs {
            let mut line = format!("{:<18}", r.label());
            for c in &r.ctx_switches {
                let _ = write!(line, " {:>13.2}", *c as f64 / r.attempted().max(1) as f64);
            }
            let _ = writeln!(o, "{line}");
        }

        // Memory.
        let _ = writeln!(o, "\nMemory (MB = 10^6 bytes)");
        let _ = writeln!(o, "{:<14} {:>18} {:>18}", "process", "idle RSS (VmRSS)", "peak RSS (VmHWM)");
        for (i, n) in self.names.iter().enumerate() {
            let _ = writeln!(
                o,
                "{:<14} {:>18.1} {:>18.1}",
                n,
                kb_to_mb(self.idle_rss[i]),
                kb_to_mb(self.peak_rss[i])
            );
        }

        // Errors.
        for r in self.runs.iter().filter(|r| r.errors > 0) {
            let _ = writeln!(
                o,
                "\n{}: {} errors{}, first: {}",
                r.label(),
                r.errors,
                if r.attempted() < r.spec.requests as u64 { " (run stopped early)" } else { "" },
                r.first_error.as_deref().unwrap_or("?")
            );
        }

        // Targets.
        let _ = writeln!(o, "\nTargets (non-streaming short answers, this machine)");
        let _ = writeln!(o, "{:<52} {:>14}  result", "target", "measured");
        for c in self.targets() {
            let verdict = match c.pass {
                Some(true) => "PASS",
                Some(false) => "MISS",
                None => "n/a",
            };
            let _ = writeln!(o, "{:<52} {:>14}  {verdict}", c.what, c.value);
        }
        o
    }

    fn pair_index_ok(&self) -> bool {
        self.proc_index("gateway-http").is_some() && self.proc_index("agent-svc").is_some()
    }

    /// The targets: p99 added latency < 1 ms at c=1; ≥ 3,000 req/s at c=64; gateway + agent-svc
    /// CPU ≤ 200 µs/request (every non-streaming gateway run); idle RSS ≤ 40 MB per service.
    /// A run with errors never passes.
    fn targets(&self) -> Vec<Check> {
        let mut out = Vec::new();
        let clean = |r: &RunResult| r.errors == 0;
        let added = self.find(Route::Gateway, false, 1).zip(self.find(Route::Direct, false, 1));
        out.push(match added {
            Some((g, d)) => {
                let v = delta_ms(pct_ms(&g.total, 99.0), pct_ms(&d.total, 99.0));
                Check {
                    what: "p99 added latency at c=1 < 1 ms".into(),
                    value: v.map_or("-".into(), |v| format!("{v:.3} ms")),
                    pass: v.map(|v| v < 1.0 && clean(g) && clean(d)),
                }
            }
            None => Check {
                what: "p99 added latency at c=1 < 1 ms".into(),
                value: "no c=1 run".into(),
                pass: None,
            },
        });
        out.push(match self.find(Route::Gateway, false, 64) {
            Some(g) => Check {
                what: "gateway requests/s at c=64 >= 3000".into(),
                value: format!("{:.0} req/s", g.rps()),
                pass: Some(g.rps() >= 3000.0 && clean(g)),
            },
            None => Check {
                what: "gateway requests/s at c=64 >= 3000".into(),
                value: "no c=64 run".into(),
                pass: None,
            },
        });
        let gw_runs: Vec<&RunResult> =
            self.runs.iter().filter(|r| r.route == Route::Gateway && !r.spec.stream).collect();
        if gw_runs.is_empty() {
            out.push(Check {
                what: "gateway + agent-svc CPU <= 200 µs/request".into(),
                value: "not run".into(),
                pass: None,
            });
        }
        for r in gw_runs {
            let v = self.pair_cpu(r);
            out.push(Check {
                what: format!("gateway + agent-svc CPU <= 200 µs/request (c={})", r.spec.concurrency),
                value: v.map_or("-".into(), |v| format!("{v:.1} µs")),
                pass: v.map(|v| v <= 200.0 && clean(r)),
            });
        }
        for name in ["gateway-http", "agent-svc"] {
            let what = format!("idle RSS {name} <= 40 MB");
            out.push(match self.proc_index(name) {
                Some(i) => {
                    let mb = kb_to_mb(self.idle_rss[i]);
                    Check { what, value: format!("{mb:.1} MB"), pass: Some(mb <= 40.0) }
                }
                None => Check { what, value: "not run".into(), pass: None },
            });
        }
        out
    }
}

fn kb_to_mb(kb: u64) -> f64 {
    kb as f64 * 1024.0 / 1e6
}
