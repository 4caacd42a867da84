//! A server running in a task of the test's runtime, with a graceful-shutdown
//! signal: the mock upstream, a gateway router served by a test and the fake
//! agent-svc all run this way, on a loopback listener.

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A listener on `127.0.0.1:0` and its address.
pub(crate) async fn bind_loopback() -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}

/// [`bind_loopback`] for test setup: panics (naming `what`) when it cannot bind.
pub(crate) async fn must_bind_loopback(what: &str) -> (TcpListener, SocketAddr) {
    match bind_loopback().await {
        Ok(bound) => bound,
        Err(e) => panic!("{what}: cannot bind 127.0.0.1:0: {e}"),
    }
}

/// The signal a served future stops on (resolves when the server is asked to stop).
pub(crate) type StopSignal = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A spawned server. Dropping it signals the stop and aborts the task.
pub(crate) struct ServerTask {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl ServerTask {
    /// Spawns `serve(stop_signal)`; an error it ends with is logged as `what`'s.
    pub(crate) fn spawn<F, E>(what: &'static str, serve: impl FnOnce(StopSignal) -> F) -> ServerTask
    where
        F: IntoFuture<Output = Result<(), E>>,
        F::IntoFuture: Send + 'static,
        E: std::fmt::Display,
    {
        let (tx, rx) = oneshot::channel::<()>();
        let served = serve(Box::pin(async move {
            let _ = rx.await;
        }))
        .into_future();
        let task = tokio::spawn(async move {
            if let Err(e) = served.await {
                tracing::warn!(error = %e, "{what} stopped");
            }
        });
        ServerTask { stop: Some(tx), task }
    }

    /// Signals the stop, lets the server finish within `grace`, then aborts it.
    /// A no-op after the first call.
    pub(crate) async fn stop(&mut self, grace: Duration) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
            if tokio::time::timeout(grace, &mut self.task).await.is_err() {
                self.task.abort();
                let _ = (&mut self.task).await;
            }
        }
    }
}

impl Drop for ServerTask {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.task.abort();
    }
}
