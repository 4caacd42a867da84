//! A server running in a task of the test's runtime, with a graceful-shutdown
//! signal: the mock upstream, a gateway router served by a test and the fake
//! agent-svc all run this way.

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

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
