//! `gateway-http`: a thin CLI over [`gateway_http::start`].

use anyhow::Context;
use clap::Parser;
use gateway_http::{GatewayError, GatewayOptions};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

/// OpenClaw-compatible HTTP gateway: OpenAI Chat Completions over agent-svc.
#[derive(Debug, Parser)]
#[command(
    name = "gateway-http",
    version,
    after_help = "Environment:
  OPENCLAW_CONFIG_PATH       config file when --config is not given
                             (default ~/.openclaw/openclaw.json; a missing default file means built-in defaults)
  AGENT_SVC_URL              agent-svc URL when --agent-svc is not given
  OPENCLAW_GATEWAY_TOKEN     token for auth mode \"token\" when gateway.auth.token is not set
  OPENCLAW_GATEWAY_PASSWORD  password for auth mode \"password\" when gateway.auth.password is not set
  OPENCLAW_AGENT_SVC_TOKEN   internal token sent to agent-svc when gateway.agentService.token is not set
  RUST_LOG                   log filter (default: info); logs go to stderr
  TOKIO_WORKER_THREADS       runtime worker threads (default: one per CPU; 1 costs less CPU per
                             request when agent-svc shares a small machine)

Without --agent-svc, AGENT_SVC_URL or gateway.agentService.url, agent-svc runs inside this process."
)]
struct Cli {
    /// Config file (JSON5).
    #[arg(long, value_name = "PATH", env = "OPENCLAW_CONFIG_PATH")]
    config: Option<PathBuf>,
    /// Listen port (overrides gateway.port; default 18789).
    #[arg(long, value_name = "N")]
    port: Option<u16>,
    /// Bind address: loopback (127.0.0.1), lan (0.0.0.0) or an IP (overrides gateway.bind).
    #[arg(long, value_name = "loopback|lan|IP")]
    bind: Option<String>,
    /// agent-svc address: a URL or host:port, a DNS name that resolves to every
    /// replica, or a comma-separated list (overrides gateway.agentService.url).
    #[arg(long = "agent-svc", value_name = "URL", env = "AGENT_SVC_URL")]
    agent_svc: Option<String>,
    /// Ask a running gateway on 127.0.0.1 (the port from --port or the config)
    /// for GET /readyz and exit 0 when it answers 200, 1 otherwise (for
    /// container health checks, which need no curl this way). With gateway.tls
    /// it speaks HTTPS and accepts exactly the certificate of gateway.tls.certPath.
    #[arg(long)]
    healthcheck: bool,
}

/// How long `--healthcheck` waits for the answer.
const HEALTHCHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// `--healthcheck`: one HTTP/1.1 request to the local port, over TLS (the
/// configured leaf pinned, no host name) when the public port speaks it.
fn healthcheck(cli: &Cli) -> ExitCode {
    let path = cli.config.as_deref().filter(|p| !p.as_os_str().is_empty());
    let (port, tls) =
        match services::config::load(path).and_then(|c| Ok((c.config.gateway.port, c.public_tls()?))) {
            Ok((port, tls)) => (cli.port.unwrap_or(port), tls),
            Err(e) => {
                eprintln!("gateway-http: {e}");
                return ExitCode::FAILURE;
            }
        };
    let ready = (|| -> Result<bool, Box<dyn std::error::Error>> {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let tcp = std::net::TcpStream::connect_timeout(&addr, HEALTHCHECK_TIMEOUT)?;
        tcp.set_read_timeout(Some(HEALTHCHECK_TIMEOUT))?;
        tcp.set_write_timeout(Some(HEALTHCHECK_TIMEOUT))?;
        let request = b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
        let mut head = [0u8; 12];
        match tls {
            None => {
                let mut tcp = tcp;
                tcp.write_all(request)?;
                tcp.read_exact(&mut head)?;
            }
            Some(paths) => {
                let config = services::tls::pinned_client(&paths.cert, None, &[services::tls::ALPN_HTTP11])?;
                // Any name: the pinned leaf is checked, not a host name.
                let name = rustls::pki_types::ServerName::try_from("localhost")?;
                let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name)?;
                let mut stream = rustls::StreamOwned::new(conn, tcp);
                stream.write_all(request)?;
                stream.read_exact(&mut head)?;
            }
        }
        Ok(head.starts_with(b"HTTP/1.1 200"))
    })();
    match ready {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("gateway-http: not ready");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("gateway-http: health check failed: {e}");
            ExitCode::FAILURE
        }
    }
}

// The same allocator as agent-svc (it runs inside this process in embedded mode).
agent_svc::global_allocator!();

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.healthcheck {
        return healthcheck(&cli);
    }
    services::logging::init();

    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Config errors are one line naming key and file; print them as they are.
            match e.downcast_ref::<GatewayError>() {
                Some(GatewayError::Config(c)) => eprintln!("{c}"),
                _ => eprintln!("gateway-http: {e:#}"),
            }
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    // An empty OPENCLAW_CONFIG_PATH means unset, as in `services::config::load`.
    let config_path = cli.config.filter(|p| !p.as_os_str().is_empty());
    let config = services::config::load(config_path.as_deref()).map_err(GatewayError::from)?;
    let fds = services::net::raise_fd_limit();
    let max_connections = u64::from(config.config.gateway.limits.max_connections);
    // Each client connection is a file; so is, with agent-svc inside, each upstream request.
    match fds {
        fds if max_connections > 0 && fds < max_connections + 256 => tracing::warn!(
            open_files = fds,
            max_connections,
            "the open-file limit is below gateway.limits.maxConnections: connections beyond it fail to be \
             accepted (raise the hard limit, e.g. `ulimit -Hn` or the container's nofile)"
        ),
        _ => tracing::debug!(open_files = fds, "open-file limit"),
    }
    let opts =
        GatewayOptions { port: cli.port, bind: cli.bind, agent_svc_url: cli.agent_svc, ..Default::default() };
    let gateway = gateway_http::start(config, opts).await?;
    // Listen for SIGTERM before saying we are ready, so an early one is not fatal.
    let stop = services::signal::shutdown_signal();

    // Tests and the benchmark wait for exactly this line.
    let mut out = std::io::stdout().lock();
    writeln!(out, "gateway-http listening on {}://{}", gateway.state().public_scheme(), gateway.local_addr())
        .context("writing to stdout")?;
    out.flush().context("writing to stdout")?;
    drop(out);

    stop.await;
    tracing::info!("shutting down");
    gateway.shutdown().await?;
    Ok(())
}
