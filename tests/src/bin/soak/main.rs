//! `soak`: the gateway pair under a steady mixed load for a long time, with
//! memory and file descriptors watched (a test binary, not a benchmark).
//!
//! It starts three processes from the directory of its own executable (or
//! `--bin-dir`), all on 127.0.0.1, each waited for by its readiness line:
//! `mock-upstream` (answers streamed with `--chunk-delay-ms` between events, so
//! a run lasts long enough to be cut mid-stream), `agent-svc` (SQLite session
//! store, a small context budget so stable sessions compact every few turns,
//! retention so the store stays bounded) and `gateway-http --agent-svc`.
//!
//! Then `--concurrency` workers, each with one request in flight, send requests
//! back to back for `--duration`, cycling through seven kinds (see
//! [`load::Kind`]): stateless JSON and SSE, stable-session JSON (`user`) and SSE
//! (`x-openclaw-session-key`), WebSocket `chat.send` on that same session, and
//! clients that disconnect mid-stream (SSE and WebSocket). Every
//! `--sample-secs` it reads each process's `VmRSS` (`/proc/<pid>/status`) and
//! open file descriptors (`/proc/<pid>/fd`) and the request counts; at the end it
//! prints the samples, the requests per kind, agent-svc's compaction and
//! retention counters, and the verdict.
//!
//! The verdict ([`RULE`]) fails on any request that did not end as expected,
//! any process that exited, a load that never compacted, and RSS or fds that
//! did not plateau. Exit status 1 on failure. Everything is bounded: each
//! request by `--request-timeout-s`, process startup, and the wind-down after
//! the deadline. Run it with `scripts/soak.sh`.

mod load;
mod report;

use anyhow::{bail, Context, Result};
use clap::Parser;
use e2e::procfs::{open_fds, status_kb};
use e2e::procs::{bin_dir, find_bin, log_tail, Launch, Proc};
use e2e::TempDir;
use load::{Counters, Env};
use report::{plateau, plateau_line, rss_slack, Sample, MIN_SAMPLES};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The gateway's bearer token in the generated config.
const TOKEN: &str = "soak-token";

/// The pass/fail rule, shown in `--help` (the README says the same).
const RULE: &str = "\
Verdict: PASS needs all of
  - no failed request: every request must end as expected (200 with the mock's answer, a well-formed
    SSE stream ending with [DONE], a WebSocket run ending 'final'; the client's own mid-stream
    disconnects are expected). A 4xx/5xx, an error event, a malformed stream or a request not over
    within --request-timeout-s is a failure;
  - every service still running at the end;
  - stable sessions compacted at least once (agent-svc's compaction counter), so the load did what
    it is meant to;
  - RSS and open fds of each process plateau. The samples are cut into thirds by count: the first
    third is warm-up and ignored; the largest value of the last third must not exceed the largest
    value of the middle third by more than the slack: for RSS --rss-slack-pct percent of it, at
    least --rss-slack-mb MB; for fds --fd-slack. At least 6 samples are needed.";

/// Soak test of the gateway pair: a long mixed load (JSON, SSE, WebSocket, stable sessions,
/// mid-stream disconnects) with RSS and open fds of every process sampled; both must plateau.
#[derive(Parser, Debug)]
#[command(name = "soak", version, after_help = RULE)]
struct Cli {
    /// How long the load runs: seconds, or with a unit (`90s`, `3m`, `1h`).
    #[arg(long, default_value = "30m", value_parser = parse_duration, value_name = "DURATION")]
    duration: Duration,
    /// Seconds between two samples of RSS, fds and request counts.
    #[arg(long, default_value_t = 60, value_name = "S")]
    sample_secs: u64,
    /// Workers, each with one request in flight.
    #[arg(long, default_value_t = 24, value_name = "N")]
    concurrency: usize,
    /// The mock upstream's pause between SSE events, in ms (a run lasts about 6 of them).
    #[arg(long, default_value_t = 20, value_name = "MS")]
    chunk_delay_ms: u64,
    /// A request not over within this many seconds counts as hung (a failure).
    #[arg(long, default_value_t = 30, value_name = "S")]
    request_timeout_s: u64,
    /// RSS slack of the plateau rule, percent of the middle third's max.
    #[arg(long, default_value_t = 10, value_name = "PCT")]
    rss_slack_pct: u64,
    /// RSS slack of the plateau rule, at least this many MB.
    #[arg(long, default_value_t = 4, value_name = "MB")]
    rss_slack_mb: u64,
    /// Open-fd slack of the plateau rule (connections come and go with the load).
    #[arg(long, default_value_t = 16, value_name = "N")]
    fd_slack: u64,
    /// Timeout of each process's startup (until its readiness line), in seconds.
    #[arg(long, default_value_t = 30, value_name = "S")]
    startup_timeout_s: u64,
    /// `RUST_LOG` given to the services (their production default is `info`).
    #[arg(long, default_value = "info", value_name = "FILTER")]
    log_level: String,
    /// Directory holding mock-upstream, agent-svc and gateway-http (default: this executable's).
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,
}

/// `90`, `90s`, `3m`, `1h`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num.parse().map_err(|_| format!("{s:?}: expected a number with s, m or h"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("{s:?}: the unit must be s, m or h")),
    };
    if secs == 0 {
        return Err("the duration must be positive".into());
    }
    Ok(Duration::from_secs(secs))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match soak(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("soak: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The services, as started.
struct Services {
    procs: Vec<Proc>,
    gateway: SocketAddr,
    agent_metrics: SocketAddr,
}

/// Starts the processes, runs the load while sampling, prints the report and the verdict.
fn soak(cli: &Cli) -> Result<()> {
    let sample = Duration::from_secs(cli.sample_secs.max(1));
    let n_samples = (cli.duration.as_secs() / sample.as_secs()) as usize;
    if n_samples < MIN_SAMPLES {
        bail!(
            "--duration {}s / --sample-secs {} gives {n_samples} samples; the plateau rule needs at least {MIN_SAMPLES}",
            cli.duration.as_secs(),
            sample.as_secs()
        );
    }
    if cli.concurrency == 0 || cli.concurrency > 256 {
        bail!("--concurrency must be between 1 and 256");
    }
    // Declared first so that it is dropped last, after the processes are dead.
    let tmp = TempDir::try_new().context("cannot create a temp dir")?;
    let mut services = start(cli, tmp.path())?;
    let names: Vec<&str> = services.procs.iter().map(|p| p.name).collect();
    let pids: Vec<u32> = services.procs.iter().map(Proc::pid).collect();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let timeout = Duration::from_secs(cli.request_timeout_s.max(1));
    let counters = Arc::new(Counters::default());
    let idle = read_sample(&pids, Duration::ZERO, &counters).context("idle sample")?;
    eprintln!(
        "soak: {} s of load, {} workers, a sample every {} s",
        cli.duration.as_secs(),
        cli.concurrency,
        sample.as_secs()
    );
    let started = Instant::now();
    let mut failures: Vec<String> = Vec::new();
    let (samples, metrics) = rt.block_on(async {
        let http = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(cli.concurrency)
            .build()
            .context("HTTP client")?;
        let env = Arc::new(Env {
            gateway: services.gateway,
            token: TOKEN.to_string(),
            http: http.clone(),
            timeout,
            deadline: started + cli.duration,
            stop: AtomicBool::new(false),
        });
        let workers: Vec<_> = (0..cli.concurrency)
            .map(|i| {
                let (env, counters) = (env.clone(), counters.clone());
                tokio::spawn(async move { load::worker(i, &env, &counters).await })
            })
            .collect();
        let mut samples = Vec::with_capacity(n_samples);
        // Ctrl-C ends the run through the normal path, so the services are killed too.
        let interrupted = tokio::signal::ctrl_c();
        tokio::pin!(interrupted);
        for k in 1..=n_samples as u32 {
            tokio::select! {
                _ = tokio::time::sleep_until((started + sample * k).into()) => {}
                _ = &mut interrupted => {
                    failures.push("interrupted (Ctrl-C)".to_string());
                    env.stop.store(true, Ordering::Relaxed);
                    break;
                }
            }
            if services.procs.iter_mut().any(|p| p.check_alive().is_err()) {
                // Reported below with the others; what follows would be noise.
                env.stop.store(true, Ordering::Relaxed);
                break;
            }
            let s = read_sample(&pids, started.elapsed(), &counters)?;
            progress(&names, &s);
            samples.push(s);
        }
        // Workers finish the request they are in; each is bounded by the timeout.
        let wind_down = timeout + Duration::from_secs(5);
        if tokio::time::timeout(wind_down, futures::future::join_all(workers)).await.is_err() {
            failures.push(format!("the workers did not stop within {wind_down:?} after the deadline"));
        }
        let metrics = scrape(&http, services.agent_metrics).await;
        anyhow::Ok((samples, metrics))
    })?;
    let secs = started.elapsed().as_secs_f64();
    for p in services.procs.iter_mut() {
        if let Err(e) = p.check_alive() {
            failures.push(format!("{e:#}"));
        }
    }
    let tally = counters.tally();

    println!("\nSamples (requests: ended as expected / failed since the previous sample)");
    print!("{}", report::samples_table(&names, &idle, &samples));
    println!("\nRequests by kind over {secs:.0} s ({} workers)", cli.concurrency);
    print!("{}", report::kinds_table(&tally, secs));
    if tally.failed_total() > 0 {
        failures.push(format!("{} requests failed", tally.failed_total()));
        println!("First failures:");
        for e in counters.errors() {
            println!("  {e}");
        }
    }

    println!("\nagent-svc counters");
    match &metrics {
        Ok(text) => {
            for (name, value) in agent_counters(text) {
                println!("  {name} {value}");
            }
            let summarized = counter(text, "openclaw_agent_compactions_total{outcome=\"summarized\"}");
            if summarized == 0 {
                failures
                    .push("no stable session was compacted (summarized): the load missed compaction".into());
            }
        }
        Err(e) => failures.push(format!("cannot read agent-svc's metrics: {e:#}")),
    }

    if samples.len() < n_samples {
        println!("\nPlateau: not judged (the run stopped after {} of {n_samples} samples)", samples.len());
    } else {
        plateaus(cli, &names, &samples, &mut failures);
    }

    if !failures.is_empty() {
        println!("\nVerdict: FAIL");
        for f in &failures {
            println!("  - {f}");
        }
        for p in &services.procs {
            eprintln!("--- last lines of {} ---\n{}", p.log.display(), log_tail(&p.log));
        }
        drop(services);
        drop(tmp);
        bail!("{} checks failed", failures.len());
    }
    println!("\nVerdict: PASS");
    drop(services);
    drop(tmp);
    Ok(())
}

/// The plateau rule on every process's RSS and fds; prints a line per series.
fn plateaus(cli: &Cli, names: &[&str], samples: &[Sample], failures: &mut Vec<String>) {
    println!(
        "\nPlateau (first third of the samples ignored; RSS slack {}% / at least {} MB, fd slack {})",
        cli.rss_slack_pct, cli.rss_slack_mb, cli.fd_slack
    );
    for (i, name) in names.iter().enumerate() {
        let rss: Vec<u64> = samples.iter().map(|s| s.rss_kb[i]).collect();
        let fds: Vec<u64> = samples.iter().map(|s| s.fds[i]).collect();
        let checks = [
            (
                format!("{name} RSS"),
                plateau(&rss, rss_slack(cli.rss_slack_pct, cli.rss_slack_mb * 1024)),
                true,
            ),
            (format!("{name} fds"), plateau(&fds, |_| cli.fd_slack), false),
        ];
        for (what, p, kb) in checks {
            match p {
                Some(p) => {
                    println!("  {}", plateau_line(&what, &p, kb));
                    if !p.holds() {
                        failures.push(format!("{what} did not plateau"));
                    }
                }
                None => failures.push(format!("{what}: too few samples ({})", samples.len())),
            }
        }
    }
}

/// RSS and fds of every process, and the request counts, now.
fn read_sample(pids: &[u32], at: Duration, counters: &Counters) -> Result<Sample> {
    Ok(Sample {
        at,
        rss_kb: pids.iter().map(|&p| status_kb(p, "VmRSS")).collect::<Result<_>>()?,
        fds: pids.iter().map(|&p| open_fds(p)).collect::<Result<_>>()?,
        tally: counters.tally(),
    })
}

/// One line on stderr per sample, so a long run shows how it goes.
fn progress(names: &[&str], s: &Sample) {
    let procs: Vec<String> = names
        .iter()
        .enumerate()
        .map(|(i, n)| format!("{n} {:.1} MB {} fds", s.rss_kb[i] as f64 / 1024.0, s.fds[i]))
        .collect();
    eprintln!(
        "soak: t={:>5}s  {}  requests {} failed {}",
        s.at.as_secs(),
        procs.join(", "),
        s.tally.done_total(),
        s.tally.failed_total()
    );
}

/// A loopback port nobody listens on right now (for agent-svc's metrics
/// listener, whose address it does not print).
fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("cannot bind a probe socket")?;
    Ok(l.local_addr()?.port())
}

/// Starts mock-upstream, agent-svc and gateway-http, each waited for.
fn start(cli: &Cli, dir: &Path) -> Result<Services> {
    let bin_dir = bin_dir(cli.bin_dir.as_deref())?;
    let bin = |name: &str| find_bin(&bin_dir, name, "scripts/soak.sh");
    let launch =
        Launch { dir, log_level: &cli.log_level, startup: Duration::from_secs(cli.startup_timeout_s.max(1)) };
    let mut procs = Vec::new();
    let (mock, mock_addr) = launch.mock(&bin("mock-upstream")?, cli.chunk_delay_ms)?;
    procs.push(mock);

    let config = dir.join("soak.json5");
    std::fs::write(&config, config_text(mock_addr, &dir.join("sessions.db")))
        .with_context(|| format!("cannot write {}", config.display()))?;
    // It holds the token: readable by its owner only (else the services warn).
    std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .with_context(|| format!("cannot chmod {}", config.display()))?;
    let config = config.display().to_string();
    let agent_metrics = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let metrics_args = ["--metrics-listen".into(), agent_metrics.to_string()];
    let (agent, agent_addr) = launch.agent_svc(&bin("agent-svc")?, &config, &metrics_args)?;
    procs.push(agent);
    let (gateway_proc, gateway) = launch.gateway(&bin("gateway-http")?, &config, agent_addr)?;
    procs.push(gateway_proc);
    Ok(Services { procs, gateway, agent_metrics })
}

/// The config both services read: the mock as provider `mock`; agent `main` with
/// a 600-token budget (a stable session compacts every few turns, with a short
/// summary); SQLite sessions, the least recently used beyond 256 swept every 30 s.
fn config_text(mock: SocketAddr, db: &Path) -> String {
    let db = serde_json::to_string(&format!("sqlite:{}", db.display())).unwrap_or_default();
    format!(
        r#"// Written by the soak test.
{{
  models: {{ providers: {{ mock: {{ baseUrl: "http://{mock}/v1", api: "openai-completions" }} }} }},
  agents: {{
    defaults: {{ model: "mock/soak", contextTokens: 600, compaction: {{ mode: "summarize", summaryMaxTokens: 64 }} }},
    list: [{{ id: "main", default: true }}],
  }},
  gateway: {{
    auth: {{ mode: "token", token: "{TOKEN}" }},
    http: {{ endpoints: {{ chatCompletions: {{ enabled: true }} }} }},
  }},
  session: {{ store: {db}, retention: {{ maxSessionsPerAgent: 256, sweepIntervalSeconds: 30 }} }},
}}
"#
    )
}

/// agent-svc's `/metrics` text.
async fn scrape(http: &reqwest::Client, addr: SocketAddr) -> Result<String> {
    let resp = http
        .get(format!("http://{addr}/metrics"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .context("GET /metrics")?;
    let status = resp.status();
    if !status.is_success() {
        bail!("GET /metrics: HTTP {status}");
    }
    resp.text().await.context("reading /metrics")
}

/// The counters the report shows: compactions, runs, sessions stored and swept.
fn agent_counters(text: &str) -> Vec<(&str, &str)> {
    const SHOWN: [&str; 4] = [
        "openclaw_agent_compactions_total",
        "openclaw_agent_runs_total",
        "openclaw_agent_sessions_stored",
        "openclaw_agent_sessions_swept_total",
    ];
    text.lines()
        .filter(|l| SHOWN.iter().any(|m| l.starts_with(m)))
        .filter_map(|l| l.rsplit_once(' '))
        .collect()
}

/// The value of the sample line `series` (name and labels exactly), 0 when absent.
fn counter(text: &str, series: &str) -> u64 {
    text.lines()
        .filter_map(|l| l.rsplit_once(' '))
        .find(|(name, _)| *name == series)
        .and_then(|(_, v)| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_s_m_h_or_plain_seconds() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("3m"), Ok(Duration::from_secs(180)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("0m").is_err());
        assert!(parse_duration("3d").is_err());
        assert!(parse_duration("m").is_err());
    }

    #[test]
    fn counters_are_read_by_exact_series() {
        let text = "# TYPE openclaw_agent_compactions_total counter\n\
            openclaw_agent_compactions_total{outcome=\"summarized\"} 12\n\
            openclaw_agent_compactions_total{outcome=\"fallback\"} 1\n";
        assert_eq!(counter(text, "openclaw_agent_compactions_total{outcome=\"summarized\"}"), 12);
        assert_eq!(counter(text, "openclaw_agent_compactions_total{outcome=\"truncated\"}"), 0);
        assert_eq!(agent_counters(text).len(), 2);
    }
}
