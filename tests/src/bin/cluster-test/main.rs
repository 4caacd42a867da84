//! `cluster-test`: the compose deployment proven with real containers
//! (`scripts/cluster-test.sh` builds the images and runs this).
//!
//! It starts PostgreSQL, three agent-svc replicas, the gateway and a mock
//! upstream with `docker-compose.yml` + `deploy/compose/cluster-test.yml`, keeps
//! a steady mixed load on the gateway (JSON and SSE, stateless and stable
//! sessions) and, while it runs:
//!
//! 1. checks that stateless runs reach every replica and a session's turns all
//!    land on one;
//! 2. `docker kill`s the replica of a session: only runs in flight on it may
//!    fail, each cleanly (a 503 before streaming, an error event then `[DONE]`
//!    after), none hangs; its sessions go on elsewhere with their whole history;
//!    `docker start` brings it back into rotation;
//! 3. `docker stop`s a replica (SIGTERM, it drains): no request fails;
//! 4. stops PostgreSQL for 10 s: stable-session turns fail fast with 503 (never
//!    500, never a hang), stateless runs go on, and everything succeeds again
//!    once it is back;
//! 5. at the end, every session's transcript holds exactly its successful
//!    turns (none lost, none twice), as the mock upstream saw them sent along.
//!
//! It prints the figures and exits non-zero when a check fails. The project is
//! torn down at the end, whatever happened.

mod compose;
mod load;

use anyhow::{bail, ensure, Context};
use clap::Parser;
use compose::{container_ip, docker, Compose};
use load::{Attempt, Load, Outcome};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const TOKEN: &str = "cluster-test-token";
/// The internal token both services share (agent-svc refuses calls without it).
const INTERNAL_TOKEN: &str = "cluster-test-internal-token";
const REPLICAS: usize = 3;
const AGENT_PORT: u16 = 50051;

/// The compose deployment under faults (see the module docs).
#[derive(Parser, Debug)]
#[command(name = "cluster-test")]
struct Cli {
    /// The compose command.
    #[arg(long, default_value = "docker-compose")]
    compose: String,
    /// The compose project name.
    #[arg(long, default_value = "openclaw-cluster-test")]
    project: String,
    /// Stateless load workers.
    #[arg(long, default_value_t = 6)]
    stateless: usize,
    /// Stable-session load workers (one session each).
    #[arg(long, default_value_t = 6)]
    sessions: usize,
}

/// The running deployment and where to reach it.
struct Cluster {
    compose: Compose,
    gateway: String,
    mock: String,
    http: reqwest::Client,
}

impl Cluster {
    async fn metrics(&self) -> anyhow::Result<String> {
        Ok(self.http.get(format!("{}/metrics", self.gateway)).send().await?.text().await?)
    }

    /// A gauge or counter of the gateway's, by its full series name.
    async fn metric(&self, series: &str) -> anyhow::Result<Option<f64>> {
        let text = self.metrics().await?;
        Ok(text.lines().find_map(|l| l.strip_prefix(series)?.trim().parse().ok()))
    }

    async fn replica_up(&self, ip: IpAddr) -> anyhow::Result<Option<f64>> {
        self.metric(&format!("openclaw_gateway_replica_up{{replica=\"{ip}:{AGENT_PORT}\"}} ")).await
    }

    async fn retries(&self) -> anyhow::Result<f64> {
        let text = self.metrics().await?;
        Ok(text
            .lines()
            .filter(|l| l.starts_with("openclaw_gateway_replica_retries_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    }

    async fn stats(&self) -> anyhow::Result<Value> {
        Ok(self.http.get(format!("{}/_stats", self.mock)).send().await?.json().await?)
    }

    /// The replicas' containers and addresses.
    fn replicas(&self) -> anyhow::Result<Vec<(String, IpAddr)>> {
        self.compose
            .containers("agent-svc")?
            .into_iter()
            .map(|id| Ok((id.clone(), container_ip(&id)?)))
            .collect()
    }

    /// Waits until `check` holds, polling every 100 ms; the time it took.
    async fn until<F, Fut>(&self, within: Duration, what: &str, mut check: F) -> anyhow::Result<Duration>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<bool>>,
    {
        let start = Instant::now();
        loop {
            if check().await.unwrap_or(false) {
                return Ok(start.elapsed());
            }
            if start.elapsed() > within {
                bail!("{what}: not within {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Requests per replica address, from the mock's counts.
fn per_peer(stats: &Value) -> BTreeMap<IpAddr, u64> {
    stats["peers"]
        .as_object()
        .map(|m| m.iter().filter_map(|(ip, n)| Some((ip.parse().ok()?, n.as_u64()?))).collect())
        .unwrap_or_default()
}

fn delta(after: &BTreeMap<IpAddr, u64>, before: &BTreeMap<IpAddr, u64>) -> BTreeMap<IpAddr, u64> {
    after.iter().map(|(ip, n)| (*ip, n - before.get(ip).copied().unwrap_or(0))).collect()
}

/// What the mock saw of one session: (peer, attempt, user turns sent).
fn session_requests(stats: &Value, session: &str) -> Vec<(IpAddr, u32, u64)> {
    stats["sessions"][session]
        .as_array()
        .map(|reqs| {
            reqs.iter()
                .filter_map(|r| {
                    Some((
                        r["peer"].as_str()?.parse().ok()?,
                        r["attempt"].as_str()?.parse().ok()?,
                        r["turns"].as_u64()?,
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Failures among `attempts` sent in `[from, to)`, and whether every one was clean.
fn failures(attempts: &[Attempt], from: Instant, to: Instant) -> Vec<&Attempt> {
    attempts.iter().filter(|a| a.at >= from && a.at < to && a.outcome != Outcome::Ok).collect()
}

fn unclean(attempts: &[Attempt]) -> Vec<&Attempt> {
    attempts.iter().filter(|a| matches!(a.outcome, Outcome::Unclean(_))).collect()
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cluster-test: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => {
            println!("cluster-test: all checks passed");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cluster-test: FAILED: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let env = vec![
        ("OPENCLAW_GATEWAY_TOKEN".to_owned(), TOKEN.to_owned()),
        // Not compose's local default: both services must take it from here.
        ("OPENCLAW_AGENT_SVC_TOKEN".to_owned(), INTERNAL_TOKEN.to_owned()),
        ("OPENCLAW_CONFIG".to_owned(), "./deploy/compose/cluster-test.json5".to_owned()),
        ("OPENCLAW_PUBLISH".to_owned(), "127.0.0.1::18789".to_owned()),
        ("RUST_LOG".to_owned(), "info".to_owned()),
    ];
    let files = vec![root.join("docker-compose.yml"), root.join("deploy/compose/cluster-test.yml")];
    let compose = Compose::new(&cli.compose, &cli.project, files, env);
    compose.down();
    let started = Instant::now();
    compose.run(&["up", "-d", "--scale", &format!("agent-svc={REPLICAS}")]).context("compose up")?;
    let gateway = format!("http://{}", compose.port("gateway-http", 18789)?);
    let mock = format!("http://{}", compose.port("mock-upstream", 8080)?);
    let http = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(10)).build()?;
    let c = Cluster { compose, gateway, mock, http };
    let ready = c
        .until(Duration::from_secs(120), "gateway ready with every replica up", || async {
            let v: Value = c.http.get(format!("{}/readyz", c.gateway)).send().await?.json().await?;
            Ok(v["agentService"]["up"] == REPLICAS)
        })
        .await?;
    println!(
        "up: postgres + {REPLICAS} agent-svc + gateway + mock in {:.1} s (ready {:.1} s after compose up returned)",
        started.elapsed().as_secs_f64(),
        ready.as_secs_f64()
    );

    // An internal caller on the compose network reaches agent-svc's gRPC directly.
    let internal = c.compose.run(&[
        "run",
        "--rm",
        "--no-deps",
        "-T",
        "agent-svc",
        "agent-call",
        "--target",
        "agent-svc:50051",
        "--user",
        "internal",
        "hello over gRPC",
    ])?;
    ensure!(internal.contains("\"finished\""), "agent-call on the compose network: {internal}");
    // The same call without the internal token is refused by agent-svc.
    let refused = c.compose.run(&[
        "run",
        "--rm",
        "--no-deps",
        "-T",
        "-e",
        "OPENCLAW_AGENT_SVC_TOKEN=",
        "agent-svc",
        "agent-call",
        "--target",
        "agent-svc:50051",
        "--list-agents",
    ]);
    match refused {
        Err(e) if format!("{e:#}").contains("agent-svc token") => {}
        other => bail!("agent-call without the internal token must be refused: {other:?}"),
    }
    println!(
        "internal gRPC: agent-call on the compose network ran a turn ({} events) with the internal token, \
         and was refused without it",
        internal.lines().count()
    );

    let sessions: Vec<String> = (0..cli.sessions).map(|i| format!("s{i}")).collect();
    let load = Load::start(&c.gateway, TOKEN, cli.stateless, &sessions);

    // 1. Spread and affinity, nothing failing.
    let before = per_peer(&c.stats().await?);
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(8)).await;
    let stats = c.stats().await?;
    let spread = delta(&per_peer(&stats), &before);
    let replicas = c.replicas()?;
    let total: u64 = spread.values().sum();
    println!("spread over 8 s of load: {total} upstream calls, per replica {spread:?}");
    for (_, ip) in &replicas {
        let n = spread.get(ip).copied().unwrap_or(0);
        ensure!(n * 10 >= total, "replica {ip} took {n} of {total} calls (less than 10%)");
    }
    let mut homes = BTreeMap::new();
    for s in &sessions {
        let peers: BTreeSet<IpAddr> = session_requests(&stats, s).iter().map(|r| r.0).collect();
        ensure!(peers.len() == 1, "session {s} ran on {peers:?}, not on one replica");
        homes.insert(s.clone(), *peers.iter().next().context("a session with no requests")?);
    }
    println!("affinity: each of {} sessions ran on one replica ({:?})", sessions.len(), homes);
    let phase1 = load.attempts();
    let steady = failures(&phase1, t0, Instant::now());
    ensure!(steady.is_empty(), "requests failed in steady state: {steady:?}");

    // 2. docker kill the replica of session s0.
    let victim_ip = homes["s0"];
    let (victim, _) = replicas.iter().find(|(_, ip)| *ip == victim_ip).context("s0's replica")?.clone();
    let in_flight = c
        .metric(&format!("openclaw_gateway_replica_in_flight{{replica=\"{victim_ip}:{AGENT_PORT}\"}} "))
        .await?
        .unwrap_or(0.0);
    let retries_before = c.retries().await?;
    let killed_at = Instant::now();
    docker(&["kill", &victim])?;
    c.until(Duration::from_secs(20), "killed replica out of rotation", || async {
        Ok(c.replica_up(victim_ip).await? != Some(1.0))
    })
    .await?;
    // From the kill (the docker command included) to the gateway taking it out.
    let ejected = killed_at.elapsed();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after_kill = load.attempts();
    let failed = failures(&after_kill, killed_at - Duration::from_secs(1), Instant::now());
    let late: Vec<_> =
        failed.iter().filter(|a| a.at > killed_at + ejected + Duration::from_secs(1)).collect();
    println!(
        "kill: {} failed of {} sent around it ({in_flight} were in flight on the replica), {:.0} ms to eject, \
         {} retried elsewhere",
        failed.len(),
        after_kill.iter().filter(|a| a.at >= killed_at - Duration::from_secs(1)).count(),
        ejected.as_secs_f64() * 1000.0,
        c.retries().await? - retries_before
    );
    ensure!(unclean(&after_kill).is_empty(), "unclean failures: {:?}", unclean(&after_kill));
    ensure!(late.is_empty(), "requests failed after the replica was ejected: {late:?}");
    ensure!(
        failed.len() as f64 <= in_flight + 2.0,
        "more failures ({}) than runs in flight ({in_flight})",
        failed.len()
    );
    let moved = c.stats().await?;
    let s0_after: Vec<_> = session_requests(&moved, "s0").into_iter().filter(|r| r.0 != victim_ip).collect();
    ensure!(!s0_after.is_empty(), "session s0 did not continue on another replica");
    println!("kill: session s0 continued on {} with {} more turns", s0_after[0].0, s0_after.len());

    docker(&["start", &victim])?;
    let restarted_at = Instant::now();
    let back_ip = container_ip(&victim)?;
    let before_back = per_peer(&c.stats().await?).get(&back_ip).copied().unwrap_or(0);
    c.until(Duration::from_secs(60), "restarted replica back in rotation", || async {
        Ok(per_peer(&c.stats().await?).get(&back_ip).copied().unwrap_or(0) > before_back)
    })
    .await?;
    println!(
        "rejoin: {back_ip} took runs again {:.1} s after docker start",
        restarted_at.elapsed().as_secs_f64()
    );

    // 3. docker stop (SIGTERM) another replica: it drains, nothing fails.
    let replicas = c.replicas()?;
    let (drained, drained_ip) =
        replicas.iter().find(|(_, ip)| *ip != back_ip).context("a second replica")?.clone();
    let stop_at = Instant::now();
    docker(&["stop", "-t", "40", &drained])?;
    let stopped_in = stop_at.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after_stop = load.attempts();
    let failed = failures(&after_stop, stop_at, Instant::now());
    println!(
        "drain: replica {drained_ip} stopped in {:.1} s under load, {} of {} requests failed",
        stopped_in.as_secs_f64(),
        failed.len(),
        after_stop.iter().filter(|a| a.at >= stop_at).count()
    );
    ensure!(failed.is_empty(), "requests failed while a replica drained: {failed:?}");
    docker(&["start", &drained])?;
    c.until(Duration::from_secs(60), "drained replica back", || async {
        let v: Value = c.http.get(format!("{}/readyz", c.gateway)).send().await?.json().await?;
        Ok(v["agentService"]["up"] == REPLICAS)
    })
    .await?;

    // 4. PostgreSQL stopped for 10 s.
    let postgres = c.compose.containers("postgres")?.into_iter().next().context("postgres container")?;
    let pg_down = Instant::now();
    docker(&["stop", "-t", "10", &postgres])?;
    tokio::time::sleep(Duration::from_secs(10)).await;
    docker(&["start", &postgres])?;
    let pg_up = Instant::now();
    let recovered = c
        .until(Duration::from_secs(60), "session turns succeed again after PostgreSQL is back", || async {
            let a = load.attempts();
            Ok(a.iter().any(|x| x.at > pg_up && x.session.is_some() && x.outcome == Outcome::Ok))
        })
        .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let outage = load.attempts();
    let window: Vec<&Attempt> = outage.iter().filter(|a| a.at >= pg_down && a.at < pg_up).collect();
    let session_failed: Vec<&&Attempt> =
        window.iter().filter(|a| a.session.is_some() && a.outcome != Outcome::Ok).collect();
    let stateless_ok = window.iter().filter(|a| a.session.is_none() && a.outcome == Outcome::Ok).count();
    let slowest = session_failed.iter().map(|a| a.took).max().unwrap_or_default();
    println!(
        "postgres outage (10 s): {} session turns failed (slowest failure {:.2} s), {} stateless runs succeeded, \
         sessions recovered {:.1} s after it was back",
        session_failed.len(),
        slowest.as_secs_f64(),
        stateless_ok,
        recovered.as_secs_f64()
    );
    ensure!(unclean(&outage).is_empty(), "unclean failures: {:?}", unclean(&outage));
    ensure!(!session_failed.is_empty(), "no session turn failed while PostgreSQL was down");
    for a in &session_failed {
        match &a.outcome {
            Outcome::Refused { status: 503, .. } | Outcome::Broken { .. } => {}
            other => bail!("a session turn failed with {other:?} while PostgreSQL was down (want 503)"),
        }
    }
    ensure!(slowest < Duration::from_secs(8), "a failure took {slowest:?}: not fast");
    ensure!(stateless_ok > 0, "stateless runs stopped while PostgreSQL was down");

    // 5. Stop the load; one last turn per session; every transcript is exact.
    let attempts = load.stop().await;
    let http = reqwest::Client::builder().no_proxy().http1_only().build()?;
    let mut all = attempts.clone();
    for s in &sessions {
        let last = attempts
            .iter()
            .filter_map(|a| a.session.as_ref().filter(|x| &x.0 == s).map(|x| x.1))
            .max()
            .unwrap_or(0);
        let probe = load::once(&http, &c.gateway, TOKEN, Some(s), last + 1, false).await;
        ensure!(probe.outcome == Outcome::Ok, "the last turn of {s} failed: {:?}", probe.outcome);
        all.push(probe);
    }
    let stats = c.stats().await?;
    let mut checked = 0;
    for s in &sessions {
        let mine: BTreeMap<u32, &Attempt> =
            all.iter().filter_map(|a| a.session.as_ref().filter(|x| &x.0 == s).map(|x| (x.1, a))).collect();
        let seen = session_requests(&stats, s);
        let reached: BTreeSet<u32> = seen.iter().map(|r| r.1).collect();
        for (_, attempt, turns) in &seen {
            // Turns stored before this one: every success, and perhaps a failure that
            // had reached the upstream (its answer may have been stored as it failed).
            let ok = mine.range(..attempt).filter(|(_, a)| a.outcome == Outcome::Ok).count() as u64;
            let maybe = mine
                .range(..attempt)
                .filter(|(n, a)| a.outcome != Outcome::Ok && reached.contains(n))
                .count() as u64;
            ensure!(
                (ok + 1..=ok + maybe + 1).contains(turns),
                "session {s} attempt {attempt} was sent {turns} user turns; {ok} earlier turns succeeded \
                 ({maybe} uncertain): a turn was lost or stored twice"
            );
            checked += 1;
        }
    }
    let failed: Vec<&Attempt> = all.iter().filter(|a| a.outcome != Outcome::Ok).collect();
    println!(
        "totals: {} requests, {} failed (all clean), {} retried on another replica; {checked} session turns checked \
         against the stored transcripts: none lost, none stored twice",
        all.len(),
        failed.len(),
        c.retries().await?
    );
    Ok(())
}
