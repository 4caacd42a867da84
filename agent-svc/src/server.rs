//! Building and running the tonic server: AgentService (behind the caller
//! token check) next to the standard health and reflection services, on plain
//! TCP or mutual TLS.

use crate::agents::AgentRegistry;
use crate::error::AgentError;
use crate::run::Runner;
use crate::security::{tls_incoming, CallerToken};
use crate::service::AgentSvc;
use crate::sessions;
use futures::{Stream, StreamExt};
use services::config::{HopTls, LoadedConfig, AGENT_SERVICE_TLS_KEY};
use services::proto::agent_service_server::AgentServiceServer;
use services::tls::{ServerTls, ALPN_H2, RELOAD_INTERVAL};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// After the grace period, how long cancelled runs and connections get to end.
const FORCED_STOP: Duration = Duration::from_secs(5);

/// Largest request accepted (images may take 20 MiB as base64 and more).
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// A running agent-svc.
pub struct ServerHandle {
    addr: SocketAddr,
    shutdown: CancellationToken,
    draining: Arc<AtomicBool>,
    runner: Arc<Runner>,
    health: tonic_health::server::HealthReporter,
    task: tokio::task::JoinHandle<Result<(), AgentError>>,
}

impl ServerHandle {
    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops intake (new runs are refused, health turns NOT_SERVING, no new
    /// connections), lets running turns finish within `grace`, then cancels them
    /// (they are stored as interrupted) and waits for the server to stop.
    pub async fn shutdown(self, grace: Duration) -> Result<(), AgentError> {
        self.draining.store(true, Ordering::SeqCst);
        self.health.set_not_serving::<AgentServiceServer<AgentSvc>>().await;
        self.health.set_service_status("", tonic_health::ServingStatus::NotServing).await;
        self.shutdown.cancel();
        if tokio::time::timeout(grace, self.runner.wait_idle()).await.is_err() {
            tracing::warn!(runs = self.runner.runs().len(), "grace period over; cancelling running turns");
            self.runner.runs().cancel_all();
            // Cancelled runs store their partial turn and end at once; bounded anyway.
            if tokio::time::timeout(FORCED_STOP, self.runner.wait_idle()).await.is_err() {
                tracing::warn!("cancelled runs did not end in time");
            }
        }
        let mut task = self.task;
        match tokio::time::timeout(FORCED_STOP, &mut task).await {
            Ok(joined) => joined.map_err(|e| AgentError::Startup(e.to_string()))?,
            Err(_) => {
                // A connection that will not close must not hold the process.
                task.abort();
                Ok(())
            }
        }
    }

    /// Waits until the server stops (it only stops through [`ServerHandle::shutdown`] or an error).
    pub async fn wait(self) -> Result<(), AgentError> {
        self.task.await.map_err(|e| AgentError::Startup(e.to_string()))?
    }
}

/// How callers must prove themselves: the internal token and mutual TLS.
#[derive(Clone, Default)]
pub struct Hop {
    /// The token every `AgentService` call must carry (`None`: open).
    pub token: Option<String>,
    /// Mutual TLS on the listener (`None`: plain TCP).
    pub tls: Option<HopTls>,
}

impl std::fmt::Debug for Hop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hop")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls)
            .finish()
    }
}

impl Hop {
    /// The hop as the shared config says (`gateway.agentService.token`/`tls`,
    /// env `OPENCLAW_AGENT_SVC_TOKEN`).
    pub fn from_config(config: &LoadedConfig) -> Result<Hop, AgentError> {
        let tls = config.agent_service_tls().map_err(|e| AgentError::Startup(e.to_string()))?;
        Ok(Hop { token: config.agent_service_token(), tls })
    }
}

/// Starts agent-svc on `listener`, its callers checked as the config says
/// ([`Hop::from_config`]). Returns once the store is open, the agents are
/// resolved and the server is accepting calls.
pub async fn start(config: &LoadedConfig, listener: TcpListener) -> Result<ServerHandle, AgentError> {
    start_with(config, listener, Hop::from_config(config)?).await
}

/// [`start`] with the callers checked as `hop` says.
pub async fn start_with(
    config: &LoadedConfig,
    listener: TcpListener,
    hop: Hop,
) -> Result<ServerHandle, AgentError> {
    let tls = match &hop.tls {
        Some(t) => Some(
            ServerTls::server(t.paths.clone(), &[ALPN_H2], RELOAD_INTERVAL)
                .await
                .map_err(|e| AgentError::Startup(config.tls_error(AGENT_SERVICE_TLS_KEY, e).to_string()))?,
        ),
        None => None,
    };
    let registry = Arc::new(AgentRegistry::from_config(config)?);
    let session = &config.config.session;
    let store = sessions::open(&session.store, (session.cache_mb as usize) << 20).await?;
    let shutdown = CancellationToken::new();
    sessions::retention::spawn(store.clone(), &session.retention, shutdown.clone());
    let max_runs =
        usize::try_from(config.config.gateway.agent_service.max_concurrent_runs).unwrap_or(usize::MAX);
    let runner = Runner::new(registry, store, max_runs.max(1));
    let draining = Arc::new(AtomicBool::new(false));
    let addr = listener.local_addr().map_err(|e| AgentError::Startup(e.to_string()))?;

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<AgentServiceServer<AgentSvc>>().await;
    health.set_service_status("", tonic_health::ServingStatus::Serving).await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(services::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| AgentError::Startup(format!("reflection: {e}")))?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(services::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| AgentError::Startup(format!("reflection: {e}")))?;
    let service = AgentServiceServer::new(AgentSvc::new(runner.clone(), draining.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES);
    // Only AgentService needs the token: health and reflection stay open for probes.
    let service =
        tonic::service::interceptor::InterceptedService::new(service, CallerToken::new(hop.token.as_deref()));
    if hop.token.is_none() && !addr.ip().is_loopback() {
        tracing::warn!(
            %addr,
            "agent-svc listens beyond loopback without an internal token: anyone who reaches the port \
             can run agents (set gateway.agentService.token or OPENCLAW_AGENT_SVC_TOKEN for both services)"
        );
    }

    let signal = shutdown.clone().cancelled_owned();
    let server = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(service);
    let task = match tls {
        None => {
            // Nagle's algorithm would hold back small delta frames.
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).map(|conn| {
                conn.inspect(|s| {
                    let _ = s.set_nodelay(true);
                })
            });
            tokio::spawn(serve(server, incoming, signal))
        }
        Some(tls) => {
            tracing::info!(%addr, "agent-svc requires mutual TLS");
            tokio::spawn(serve(server, tls_incoming(listener, tls, shutdown.clone()), signal))
        }
    };
    Ok(ServerHandle { addr, shutdown, draining, runner, health, task })
}

/// Serves `router` on the connections of `incoming` until `signal`.
async fn serve<I, IO>(
    router: tonic::transport::server::Router,
    incoming: I,
    signal: tokio_util::sync::WaitForCancellationFutureOwned,
) -> Result<(), AgentError>
where
    I: Stream<Item = std::io::Result<IO>>,
    IO: tokio::io::AsyncRead
        + tokio::io::AsyncWrite
        + tonic::transport::server::Connected
        + Unpin
        + Send
        + 'static,
{
    router
        .serve_with_incoming_shutdown(incoming, signal)
        .await
        .map_err(|e| AgentError::Startup(format!("gRPC server: {e}")))
}
