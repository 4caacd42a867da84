//! Who may call agent-svc: the shared internal token checked on every
//! `AgentService` call ([`CallerToken`]; health and reflection stay open), and
//! mutual TLS on the listener ([`tls_incoming`]: handshakes in their own tasks,
//! bounded in time and number, handed to tonic once done).
//!
//! Not here: where the token and the certificates come from (the shared
//! config, `services::config`), nor the reloading of the certificates
//! (`services::tls`).

use crate::error::AgentError;
use services::tls::{ClientTls, GrpcTlsConnector, ServerTls};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::service::Interceptor;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tonic::{Request, Status};

/// How long a client may take to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; past it, new connections wait in the
/// kernel's accept queue.
const MAX_HANDSHAKES: usize = 256;
/// Handshaken connections waiting for the server to take them.
const READY_QUEUE: usize = 64;

/// Checks `authorization: Bearer <token>` on every call of the service it
/// wraps, in constant time. Without a token it lets everything through.
#[derive(Clone)]
pub struct CallerToken {
    expected: Option<Arc<[u8]>>,
}

impl std::fmt::Debug for CallerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallerToken").field("required", &self.expected.is_some()).finish()
    }
}

impl CallerToken {
    /// Requires `token` (none: open).
    pub fn new(token: Option<&str>) -> CallerToken {
        CallerToken { expected: token.map(|t| Arc::from(t.as_bytes())) }
    }

    /// Whether `authorization` (the header's raw value) carries the token.
    fn accepts(&self, authorization: Option<&[u8]>) -> bool {
        let Some(expected) = &self.expected else { return true };
        let Some(value) = authorization else { return false };
        // `Bearer` is case-insensitive, as in HTTP.
        let scheme = b"bearer ";
        if value.len() < scheme.len() || !value[..scheme.len()].eq_ignore_ascii_case(scheme) {
            return false;
        }
        bool::from(value[scheme.len()..].ct_eq(expected))
    }
}

impl Interceptor for CallerToken {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let value = request.metadata().get("authorization").map(|v| v.as_bytes());
        if self.accepts(value) {
            Ok(request)
        } else {
            Err(AgentError::Unauthenticated.into())
        }
    }
}

/// A client's connection once its TLS handshake (client certificate verified) is done.
pub struct TlsConn(tokio_rustls::server::TlsStream<TcpStream>);

impl Connected for TlsConn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.0.get_ref().0.connect_info()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

/// Accepts on `listener` until `stop`, does each TLS handshake in a task of its
/// own (at most [`MAX_HANDSHAKES`] at once, each within [`HANDSHAKE_TIMEOUT`],
/// with the certificate current at accept time), and yields the connections
/// whose handshake succeeded. A failed handshake (no client certificate, one
/// from another CA, a plaintext client) is logged at debug and dropped.
pub fn tls_incoming(
    listener: TcpListener,
    tls: ServerTls,
    stop: CancellationToken,
) -> ReceiverStream<io::Result<TlsConn>> {
    let (tx, rx) = mpsc::channel(READY_QUEUE);
    let slots = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let slot = tokio::select! {
                slot = slots.clone().acquire_owned() => match slot {
                    Ok(s) => s,
                    Err(_) => return,
                },
                () = stop.cancelled() => return,
            };
            let (tcp, peer) = tokio::select! {
                accepted = services::net::accept(&listener) => match accepted {
                    Some(conn) => conn,
                    None => continue,
                },
                () = stop.cancelled() => return,
            };
            let acceptor = tls.acceptor();
            let tx = tx.clone();
            tokio::spawn(async move {
                let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
                drop(slot);
                match handshake {
                    Ok(Ok(conn)) => {
                        let _ = tx.send(Ok(TlsConn(conn))).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake refused"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// A client's TLS for [`channel`]: the config and the name the server's
/// certificate is checked for (default: the target's host).
pub type ClientSide = (ClientTls, Option<tokio_rustls::rustls::pki_types::ServerName<'static>>);

/// A connected channel to agent-svc at `target` (`host:port`, `http://` or
/// `https://` optional), over TLS when `tls` is given (the tools that call
/// agent-svc: `agent-call`, `--healthcheck`).
pub async fn channel(
    target: &str,
    tls: Option<ClientSide>,
    timeout: Duration,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let authority = target.split_once("://").map_or(target, |(_, rest)| rest);
    let scheme = if tls.is_some() { "https" } else { "http" };
    let endpoint = tonic::transport::Endpoint::from_shared(format!("{scheme}://{authority}"))?
        .connect_timeout(timeout)
        .tcp_nodelay(true);
    match tls {
        None => endpoint.connect().await,
        Some((tls, name)) => endpoint.connect_with_connector(GrpcTlsConnector::new(tls, name)).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_checked_with_its_scheme() {
        let open = CallerToken::new(None);
        assert!(open.accepts(None));
        let t = CallerToken::new(Some("s3cret"));
        assert!(t.accepts(Some(b"Bearer s3cret")));
        assert!(t.accepts(Some(b"bearer s3cret")));
        assert!(!t.accepts(None));
        assert!(!t.accepts(Some(b"s3cret")));
        assert!(!t.accepts(Some(b"Bearer s3cre")));
        assert!(!t.accepts(Some(b"Bearer s3cret2")));
        assert!(!t.accepts(Some(b"Basic s3cret")));
        assert!(!format!("{t:?}").contains("s3cret"));
    }
}
