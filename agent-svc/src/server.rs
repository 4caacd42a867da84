//! Building and running the tonic server: AgentService next to the standard
//! health and reflection services.

use crate::agents::AgentRegistry;
use crate::error::AgentError;
use crate::run::Runner;
use crate::service::AgentSvc;
use crate::sessions;
use futures::StreamExt;
use services::config::LoadedConfig;
use services::proto::agent_service_server::AgentServiceServer;
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

/// Starts agent-svc on `listener`. Returns once the store is open, the agents
/// are resolved and the server is accepting calls.
pub async fn start(config: &LoadedConfig, listener: TcpListener) -> Result<ServerHandle, AgentError> {
    let registry = Arc::new(AgentRegistry::from_config(config)?);
    let store = sessions::open(&config.config.session.store).await?;
    let runner = Runner::new(registry, store);
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

    // Nagle's algorithm would hold back small delta frames.
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).map(|conn| {
        conn.inspect(|s| {
            let _ = s.set_nodelay(true);
        })
    });
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone().cancelled_owned();
    let server = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(service);
    let task = tokio::spawn(async move {
        server
            .serve_with_incoming_shutdown(incoming, signal)
            .await
            .map_err(|e| AgentError::Startup(format!("gRPC server: {e}")))
    });
    Ok(ServerHandle { addr, shutdown, draining, runner, health, task })
}
