//! Time to ready: from exec to the first successful readiness probe, for
//! agent-svc (the standard gRPC health check answering `SERVING`), for
//! gateway-http in front of it (`GET /readyz` answering 200) and for the
//! embedded default (gateway-http with agent-svc inside, `GET /readyz`).
//! Each start gets a fresh SQLite file, so it includes creating the schema.

use anyhow::{bail, Context, Result};
use e2e::procs::Launch;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The longest a probe loop waits for a service that said it listens.
const PROBE_DEADLINE: Duration = Duration::from_secs(5);
/// Pause between two probes that found the service not ready yet.
const PROBE_PAUSE: Duration = Duration::from_millis(1);

/// Start-to-ready times, one per start.
#[derive(Debug, Default)]
pub(crate) struct ReadyTimes {
    pub(crate) agent_svc: Vec<Duration>,
    pub(crate) gateway: Vec<Duration>,
    pub(crate) embedded: Vec<Duration>,
}

/// Starts each service `runs` times with `config(n)` (a config file path for
/// start n) and times it to its first successful probe.
pub(crate) fn measure(
    rt: &tokio::runtime::Runtime,
    launch: &Launch,
    agent_bin: &Path,
    gateway_bin: &Path,
    config: impl Fn(usize) -> Result<String>,
    runs: usize,
) -> Result<ReadyTimes> {
    let mut times = ReadyTimes::default();
    for n in 0..runs {
        let split = config(2 * n)?;
        let t0 = Instant::now();
        let (agent, agent_addr) = launch.agent_svc(agent_bin, &split, &[])?;
        rt.block_on(grpc_ready(agent_addr))?;
        times.agent_svc.push(t0.elapsed());
        let t0 = Instant::now();
        let (gateway, addr) = launch.gateway(gateway_bin, &split, agent_addr)?;
        rt.block_on(http_ready(addr))?;
        times.gateway.push(t0.elapsed());
        drop((gateway, agent));

        let embedded = config(2 * n + 1)?;
        let t0 = Instant::now();
        let (gateway, addr) = launch.gateway_embedded(gateway_bin, &embedded)?;
        rt.block_on(http_ready(addr))?;
        times.embedded.push(t0.elapsed());
        drop(gateway);
    }
    Ok(times)
}

/// Polls the gRPC health service until it answers `SERVING`.
async fn grpc_ready(addr: SocketAddr) -> Result<()> {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient};
    let deadline = Instant::now() + PROBE_DEADLINE;
    loop {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?;
        if let Ok(channel) = endpoint.connect().await {
            let mut client = HealthClient::new(channel);
            let answer = client.check(HealthCheckRequest { service: String::new() }).await;
            if answer.is_ok_and(|r| r.into_inner().status == ServingStatus::Serving as i32) {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("agent-svc at {addr} was not SERVING within {PROBE_DEADLINE:?}");
        }
        tokio::time::sleep(PROBE_PAUSE).await;
    }
}

/// Polls `GET /readyz` until it answers 200.
async fn http_ready(addr: SocketAddr) -> Result<()> {
    let deadline = Instant::now() + PROBE_DEADLINE;
    loop {
        if readyz(addr).await.unwrap_or(false) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("gateway-http at {addr} did not answer /readyz with 200 within {PROBE_DEADLINE:?}");
        }
        tokio::time::sleep(PROBE_PAUSE).await;
    }
}

async fn readyz(addr: SocketAddr) -> Result<bool> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.context("connect")?;
    stream.write_all(b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").await?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).await?;
    Ok(head.starts_with(b"HTTP/1.1 200"))
}

/// The table: median and slowest per service, against the 200 ms target.
pub(crate) fn render(t: &ReadyTimes) -> String {
    let mut o = String::from("\nready (exec to the first successful probe; fresh SQLite file each start)\n");
    o.push_str(&format!("{:<34} {:>7} {:>8} {:>9}\n", "service", "starts", "p50 ms", "max ms"));
    for (name, v) in [
        ("agent-svc (gRPC health)", &t.agent_svc),
        ("gateway-http (/readyz)", &t.gateway),
        ("embedded gateway-http (/readyz)", &t.embedded),
    ] {
        let mut ms: Vec<f64> = v.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        let p50 = ms.get(ms.len() / 2).copied().unwrap_or(0.0);
        let max = ms.last().copied().unwrap_or(0.0);
        let verdict = if max <= 200.0 { "PASS" } else { "MISS" };
        o.push_str(&format!(
            "{name:<34} {:>7} {p50:>8.1} {max:>9.1}  {verdict} (target <= 200 ms)\n",
            ms.len()
        ));
    }
    o
}
