//! `agent-svc`: the gRPC agent service. A thin CLI over [`agent_svc::start`].

use anyhow::Context;
use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// OpenClaw agent service: agents, providers, sessions and runs over gRPC
/// (`openclaw.agent.v1.AgentService`, plus grpc.health.v1 and server reflection).
#[derive(Parser, Debug)]
#[command(
    name = "agent-svc",
    version,
    about,
    long_about = None,
    after_help = "Environment:
  OPENCLAW_AGENT_SVC_TOKEN  internal token every AgentService call must carry, when
                            gateway.agentService.token is not set (health and reflection stay open)
  RUST_LOG                  log filter (default: info); logs go to stderr"
)]
struct Cli {
    /// Config file (JSON5). Default: $OPENCLAW_CONFIG_PATH, else ~/.openclaw/openclaw.json
    /// (a missing default file means built-in defaults).
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// gRPC listen address.
    #[arg(long, env = "AGENT_SVC_LISTEN", default_value = "127.0.0.1:50051", value_name = "ADDR")]
    listen: SocketAddr,
    /// Serve Prometheus metrics at http://ADDR/metrics (off when not given).
    #[arg(long, env = "AGENT_SVC_METRICS_LISTEN", value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// On SIGTERM/SIGINT, how long running turns may take to finish before they are cancelled.
    #[arg(long, env = "AGENT_SVC_SHUTDOWN_GRACE_SECONDS", default_value_t = 30, value_name = "SECONDS")]
    shutdown_grace_seconds: u64,
    /// Probe a running agent-svc at `--listen` with grpc.health.v1 and exit 0 when it is
    /// SERVING, 1 otherwise (for container health checks; 0.0.0.0 is probed on 127.0.0.1).
    /// With gateway.agentService.tls in the config, it connects with the configured
    /// certificate and accepts exactly the server certificate of certPath.
    #[arg(long)]
    healthcheck: bool,
}

agent_svc::global_allocator!();

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.healthcheck {
        return healthcheck(&cli);
    }
    services::logging::init();
    // Every upstream request in flight is a connection, so a file.
    tracing::debug!(open_files = services::net::raise_fd_limit(), "open-file limit");
    // Config errors are one line naming the key and the file.
    let config = match services::config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("agent-svc: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = config.resolve_agents() {
        eprintln!("agent-svc: {e}");
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("agent-svc: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agent-svc: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli, config: services::config::LoadedConfig) -> anyhow::Result<()> {
    if let Some(addr) = cli.metrics_listen {
        agent_svc::metrics::serve(addr).await.context("metrics listener")?;
    }
    let listener = tokio::net::TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cli.listen))?;
    let handle = agent_svc::start(&config, listener).await?;
    // Listen before announcing readiness: a SIGTERM sent right after the line
    // must stop the service gracefully, not kill it.
    let stop = services::signal::shutdown_signal();
    // Readiness line: tests and scripts wait for it.
    println!("agent-svc listening on {}", handle.local_addr());
    tracing::info!(addr = %handle.local_addr(), config = %config.source, "agent-svc ready");
    stop.await;
    tracing::info!("shutting down: refusing new runs, letting running turns finish");
    handle.shutdown(Duration::from_secs(cli.shutdown_grace_seconds)).await?;
    Ok(())
}

fn healthcheck(cli: &Cli) -> ExitCode {
    let mut addr = cli.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    // Its own certificate, pinned: no CA or host name to get right for a probe of itself.
    let tls = match services::config::load(cli.config.as_deref()).and_then(|c| c.agent_service_tls()) {
        Ok(None) => None,
        Ok(Some(hop)) => {
            let pinned =
                services::tls::pinned_client(&hop.paths.cert, Some(&hop.paths), &[services::tls::ALPN_H2]);
            match pinned {
                Ok(config) => Some((services::tls::Reloading::fixed(config), None)),
                Err(e) => {
                    eprintln!("agent-svc: health check: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        Err(e) => {
            eprintln!("agent-svc: {e}");
            return ExitCode::FAILURE;
        }
    };
    let probe = async move {
        let channel = agent_svc::security::channel(&addr.to_string(), tls, Duration::from_secs(2)).await?;
        let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
        let check = client
            .check(tonic_health::pb::HealthCheckRequest { service: "openclaw.agent.v1.AgentService".into() });
        let reply = tokio::time::timeout(Duration::from_secs(2), check).await??.into_inner();
        anyhow::ensure!(
            reply.status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        );
        Ok::<_, anyhow::Error>(())
    };
    let ok = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map(|rt| rt.block_on(probe).is_ok())
        .unwrap_or(false);
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
