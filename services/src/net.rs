//! Accepting connections for the services' own accept loops (gateway-http's
//! public port, agent-svc's mutual-TLS listener): Nagle off, and a back-off
//! on accept errors instead of a spin.

use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

/// How long to wait after a failed accept (out of descriptors and the like).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The next connection, with `TCP_NODELAY` set (small frames must not wait
/// for Nagle). `None` after an accept error, which is logged and waited out
/// for [`ACCEPT_BACKOFF`]: the caller just accepts again.
pub async fn accept(listener: &TcpListener) -> Option<(TcpStream, SocketAddr)> {
    match listener.accept().await {
        Ok((tcp, peer)) => {
            let _ = tcp.set_nodelay(true);
            Some((tcp, peer))
        }
        Err(e) => {
            tracing::warn!(error = %e, "accept failed");
            tokio::time::sleep(ACCEPT_BACKOFF).await;
            None
        }
    }
}
