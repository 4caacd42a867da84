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
//!
//! With `--sessions-secs S` it then compares, through the gateway, S seconds of
//! stateless requests with S seconds of requests keyed to `--users` stable
//! sessions under a small `--context-tokens` budget, in `--sessions-interval-s`
//! intervals that take turns (stateless, stateful, stateless …, so a drift in
//! the machine's speed moves both alike), with the pair's CPU time per request,
//! on the `--session-store` chosen (`--requests 0` skips the rest).
//!
//! With `--streams N` it then holds N streaming requests open through the pair
//! at once (the mock trickles deltas into them until it is told to finish) and
//! reports the memory per open stream and the latency of other requests
//! meanwhile ([`streams`]).
//!
//! First, `--ready-runs` times each, it starts agent-svc, gateway-http in front
//! of it and the embedded default and times each from exec to its first
//! successful readiness probe ([`ready`]).
//!
//! Modules: [`load`] (the load driver and the answer checks), [`report`] (the
//! tables), [`sessions`] (the session comparison), [`streams`] (the open streams); from the library, [`e2e::procs`] (starting and killing the
//! processes) and [`e2e::procfs`] (CPU, context switches and memory from `/proc`).

mod load;
mod ready;
mod report;
mod sessions;
mod streams;

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use e2e::procfs::{clock_ticks_per_second, online_cpus, status_kb};
use e2e::procs::{bin_dir, find_bin, log_tail, Launch, Proc};
use e2e::TempDir;
use load::{run, smoke, Route, RunResult, RunSpec, Target};
use report::Report;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// The gateway's bearer token in the generated config.
const TOKEN: &str = "bench-token";

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
    /// Seconds of the stable-session comparison (0 skips it): this long stateless and this long
    /// with every request keyed to a stable session, through the gateway, in intervals that take
    /// turns (rounded up to whole intervals).
    #[arg(long, default_value_t = 0, value_name = "S")]
    sessions_secs: u64,
    /// Length of one interval of the session comparison (one of each kind per row), in seconds.
    #[arg(long, default_value_t = 60, value_name = "S")]
    sessions_interval_s: u64,
    /// Workers (connections) of the session comparison.
    #[arg(long, default_value_t = 32, value_name = "N")]
    sessions_concurrency: usize,
    /// Distinct stable sessions (`user` values) of the session comparison.
    #[arg(long, default_value_t = 200, value_name = "N")]
    users: usize,
    /// `session.store` of agent-svc: `memory`, `sqlite` (a file in the bench's temp dir) or a
    /// `postgres://` URL.
    #[arg(long, default_value = "sqlite", value_name = "STORE")]
    session_store: String,
    /// `agents.defaults.contextTokens`: small, so sessions pass it (and are compacted) within the run.
    #[arg(long, default_value_t = 3000, value_name = "TOKENS")]
    context_tokens: u32,
    /// Words in each user message of the session comparison (1: `hi`); the mock answers with 4.
    #[arg(long, default_value_t = 1, value_name = "N")]
    turn_words: usize,
    /// Starts of each service timed from exec to its first successful readiness probe (0: none).
    #[arg(long, default_value_t = 5, value_name = "N")]
    ready_runs: usize,
    /// Streaming requests held open through the gateway at once, each on its own connection
    /// (0 skips the phase); the gateway's and agent-svc's run and connection limits are raised
    /// to fit.
    #[arg(long, default_value_t = 0, value_name = "N")]
    streams: usize,
    /// Pause between two deltas of a held stream, in ms.
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    streams_tick_ms: u64,
    /// Streams opening (waiting for their first delta) at once.
    #[arg(long, default_value_t = 256, value_name = "N")]
    streams_open_concurrency: usize,
    /// Probe requests (JSON, one connection) before and with the streams open.
    #[arg(long, default_value_t = 500, value_name = "N")]
    streams_probes: usize,
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

/// Starts the processes, runs every measurement and prints the tables.
fn run_all(cli: &Cli) -> Result<()> {
    let ready_runs = if cli.direct_only { 0 } else { cli.ready_runs };
    if cli.requests == 0
        && cli.stream_requests == 0
        && cli.sessions_secs == 0
        && ready_runs == 0
        && cli.streams == 0
    {
        bail!("nothing to measure: --requests, --stream-requests, --sessions-secs, --ready-runs and --streams are all 0");
    }
    if cli.streams > 0 {
        if cli.direct_only {
            bail!("--streams needs the gateway");
        }
        // Every held stream is a socket in this process and in each of the three children
        // (they inherit the limit, and the services raise theirs to the hard limit too).
        let need = cli.streams as u64 + 1024;
        match services::net::raise_fd_limit() {
            n if n >= need => {}
            n => bail!(
                "--streams {} needs an open-file limit of at least {need}; the hard limit allows {n} \
                 (raise it with `ulimit -Hn` as root, or ask for fewer streams)",
                cli.streams
            ),
        }
    }
    if cli.sessions_secs > 0
        && (cli.direct_only || cli.sessions_interval_s == 0 || cli.sessions_concurrency == 0)
    {
        bail!("--sessions-secs needs the gateway, and --sessions-interval-s and --sessions-concurrency of at least 1");
    }
    if cli.concurrency.is_empty() || cli.concurrency.iter().any(|&c| c == 0 || c > 1024) {
        bail!("--concurrency must list values between 1 and 1024");
    }
    let bin_dir = bin_dir(cli.bin_dir.as_deref())?;
    let bin = |name: &str| find_bin(&bin_dir, name, "scripts/bench.sh");
    let mock_bin = bin("mock-upstream")?;
    let (agent_bin, gateway_bin) =
        if cli.direct_only { (None, None) } else { (Some(bin("agent-svc")?), Some(bin("gateway-http")?)) };
    let clk_tck = clock_ticks_per_second();
    let startup = Duration::from_secs(cli.startup_timeout_s.max(1));

    // Declared first so that it is dropped last, after the processes are dead.
    let tmp = TempDir::try_new().context("cannot create a temp dir")?;
    let mut procs: Vec<Proc> = Vec::new();

    let launch = Launch { dir: tmp.path(), log_level: &cli.log_level, startup };
    let (mock, mock_addr) = launch.mock(&mock_bin, cli.chunk_delay_ms)?;
    procs.push(mock);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let ready_times = match (&agent_bin, &gateway_bin) {
        (Some(agent_bin), Some(gateway_bin)) if ready_runs > 0 => {
            let config = |n: usize| -> Result<String> {
                let path = tmp.path().join(format!("ready-{n}.json5"));
                let store = format!("sqlite:{}", tmp.path().join(format!("ready-{n}.db")).display());
                std::fs::write(&path, config_text(mock_addr, &store, cli.context_tokens, None))
                    .with_context(|| format!("cannot write {}", path.display()))?;
                Ok(path.display().to_string())
            };
            Some(ready::measure(&rt, &launch, agent_bin, gateway_bin, config, ready_runs)?)
        }
        _ => None,
    };

    let mut gateway_addr = None;
    if let (Some(agent_bin), Some(gateway_bin)) = (agent_bin, gateway_bin) {
        let config = tmp.path().join("bench.json5");
        let store = match cli.session_store.as_str() {
            "sqlite" => format!("sqlite:{}", tmp.path().join("sessions.db").display()),
            other => other.to_string(),
        };
        // Room for the held streams and the rest of the load besides (kept 256 + 256 below the
        // open files the bench asked for, which is what the gateway checks its limit against).
        let limits = (cli.streams > 0).then(|| cli.streams + 512);
        std::fs::write(&config, config_text(mock_addr, &store, cli.context_tokens, limits))
            .with_context(|| format!("cannot write {}", config.display()))?;
        let config = config.display().to_string();
        let (agent, agent_addr) = launch.agent_svc(&agent_bin, &config, &[])?;
        procs.push(agent);
        let (gateway, addr) = launch.gateway(&gateway_bin, &config, agent_addr)?;
        procs.push(gateway);
        gateway_addr = Some(addr);
    }

    // Idle memory: right after startup, before any request.
    let idle_rss = procs
        .iter()
        .map(|p| status_kb(p.pid(), "VmRSS"))
        .collect::<Result<Vec<_>>>()
        .context("reading idle RSS")?;

    // The streams phase has its own two bounds (opening, ending), each --timeout-s.
    let streams_secs = if cli.streams > 0 { 2 * cli.timeout_s.max(1) } else { 0 };
    let sessions_secs =
        if cli.sessions_secs > 0 { 2 * session_intervals(cli) * cli.sessions_interval_s } else { 0 };
    let timeout = Duration::from_secs(cli.timeout_s.max(1) + sessions_secs + streams_secs);
    let (results, session_runs, streams) = rt
        .block_on(async {
            tokio::time::timeout(timeout, measure(cli, &mut procs, mock_addr, gateway_addr, clk_tck))
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
    if !report.runs.is_empty() {
        print!("{}", report.render());
    }
    let mut failed: u64 = report.runs.iter().map(|r| r.errors).sum();
    if let Some(t) = &ready_times {
        print!("{}", ready::render(t));
    }
    if let Some((stateless, stateful)) = &session_runs {
        print!("{}", sessions::render(stateless, stateful, &cli.session_store, cli.context_tokens, clk_tck));
        failed += stateless.errors() + stateful.errors();
    }
    if let Some(s) = &streams {
        print!("{}", s.render());
        failed += s.errors();
        if s.opened < s.spec.streams || s.completed < s.spec.streams {
            bail!(
                "{} of {} held streams did not open and end well",
                s.spec.streams - s.completed,
                s.spec.streams
            );
        }
    }
    drop(procs);
    drop(tmp);
    if failed > 0 {
        bail!("{failed} requests failed: the figures above are not valid");
    }
    Ok(())
}

/// The config both services read: the mock as provider `mock`, agent `main` on `mock/bench`;
/// `limits`, when given, is each service's bound on connections and runs.
fn config_text(mock: SocketAddr, store: &str, context_tokens: u32, limits: Option<usize>) -> String {
    let limits = limits
        .map(|n| {
            format!(
                "limits: {{ maxConnections: {n}, maxConcurrentRuns: {n} }}, agentService: {{ maxConcurrentRuns: {n} }},"
            )
        })
        .unwrap_or_default();
    format!(
        r#"// Written by the benchmark.
{{
  models: {{ providers: {{ mock: {{ baseUrl: "http://{mock}/v1", api: "openai-completions" }} }} }},
  agents: {{
    defaults: {{ model: "mock/bench", contextTokens: {context_tokens} }},
    list: [{{ id: "main", default: true }}],
  }},
  gateway: {{
    auth: {{ mode: "token", token: "{TOKEN}" }},
    http: {{ endpoints: {{ chatCompletions: {{ enabled: true }} }} }},
    {limits}
  }},
  session: {{ store: {store:?} }},
}}
"#
    )
}

/// The stateless and the stateful timed runs of the session comparison.
type SessionRuns = Option<(sessions::TimedResult, sessions::TimedResult)>;

/// Smoke-checks every path, then runs every measurement in order.
async fn measure(
    cli: &Cli,
    procs: &mut [Proc],
    mock: SocketAddr,
    gateway: Option<SocketAddr>,
    clk_tck: u64,
) -> Result<(Vec<RunResult>, SessionRuns, Option<streams::StreamsResult>)> {
    let req_timeout = Duration::from_millis(cli.request_timeout_ms.max(1));
    let direct = Target::new(Route::Direct, mock, None);
    let via_gw = gateway.map(|a| Target::new(Route::Gateway, a, Some(TOKEN)));
    let mut targets = vec![direct];
    targets.extend(via_gw.clone());

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
            if cli.requests > 0 {
                plan.push((t.clone(), false, c, cli.requests));
            }
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
    let sessions = match (&via_gw, cli.sessions_secs) {
        (Some(gw), secs) if secs > 0 && results.iter().all(|r| r.errors == 0) => {
            Some(session_comparison(cli, procs, gw, req_timeout).await?)
        }
        _ => None,
    };
    let held = match &via_gw {
        Some(gw) if cli.streams > 0 && results.iter().all(|r| r.errors == 0) => {
            eprintln!("bench: holding {} streams open through the gateway", cli.streams);
            let spec = streams::StreamsSpec {
                streams: cli.streams,
                tick: Duration::from_millis(cli.streams_tick_ms.max(1)),
                open_concurrency: cli.streams_open_concurrency.max(1),
                probes: cli.streams_probes,
                timeout: req_timeout,
                phase_timeout: Duration::from_secs(cli.timeout_s.max(1)),
            };
            let named: Vec<(&'static str, u32)> = procs.iter().map(|p| (p.name, p.pid())).collect();
            let r = streams::run(Arc::new(gw.clone()), mock, &named, spec, clk_tck).await?;
            for p in procs.iter_mut() {
                p.check_alive()?;
            }
            Some(r)
        }
        _ => None,
    };
    Ok((results, sessions, held))
}

/// The session comparison: `--sessions-secs` of each, stateless and stateful
/// intervals taking turns (so the machine's speed, which drifts on a shared
/// host, moves both alike), with the pair's CPU time counted per interval.
async fn session_comparison(
    cli: &Cli,
    procs: &mut [Proc],
    gateway: &Target,
    timeout: Duration,
) -> Result<(sessions::TimedResult, sessions::TimedResult)> {
    eprintln!(
        "bench: gateway JSON c={}, {} s stateless and {} s of stable sessions, {} s intervals taking turns",
        cli.sessions_concurrency, cli.sessions_secs, cli.sessions_secs, cli.sessions_interval_s
    );
    let interval = Duration::from_secs(cli.sessions_interval_s);
    let intervals = session_intervals(cli);
    let pair: Vec<u32> =
        procs.iter().filter(|p| matches!(p.name, "gateway-http" | "agent-svc")).map(|p| p.pid()).collect();
    let mut out: [Option<sessions::TimedResult>; 2] = [None, None];
    for _ in 0..intervals {
        for stateful in [false, true] {
            let spec = sessions::TimedSpec {
                stateful,
                concurrency: cli.sessions_concurrency,
                users: cli.users,
                turn_words: cli.turn_words,
                interval,
                timeout,
                max_errors: cli.max_errors.max(1),
            };
            let before = pair_cpu_ticks(&pair)?;
            let mut r = sessions::run_timed(Arc::new(gateway.clone()), spec).await?;
            let ticks = pair_cpu_ticks(&pair)?.saturating_sub(before);
            for i in &mut r.intervals {
                i.pair_cpu_ticks = ticks;
            }
            for p in procs.iter_mut() {
                p.check_alive()?;
            }
            let slot = &mut out[usize::from(stateful)];
            match slot {
                Some(all) => all.extend(r),
                None => *slot = Some(r),
            }
        }
        // Whole pairs only, so that both kinds ran as long.
        if out.iter().flatten().any(|r| r.errors() > 0) {
            break;
        }
    }
    let [Some(stateless), Some(stateful)] = out else { bail!("no session comparison ran") };
    Ok((stateless, stateful))
}

/// Intervals of each kind the session comparison runs (`--sessions-secs`
/// rounded up to whole intervals).
fn session_intervals(cli: &Cli) -> u64 {
    cli.sessions_secs.div_ceil(cli.sessions_interval_s.max(1)).max(1)
}

/// CPU ticks used so far by the processes `pids`, together.
fn pair_cpu_ticks(pids: &[u32]) -> Result<u64> {
    pids.iter().map(|&p| e2e::procfs::cpu_ticks(p)).sum()
}
