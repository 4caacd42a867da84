//! Global bounds of one gateway (`gateway.limits`): open connections and runs
//! in flight. Beyond either, the next one is refused at once with `503
//! overloaded` + `Retry-After`, so overload turns into fast refusals, never
//! into memory growth or timeouts.

use crate::error::ApiError;
use crate::metrics::{Metrics, RunGuard};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// A counted bound: `max` holders at once.
#[derive(Debug)]
pub struct Bound {
    max: usize,
    held: AtomicUsize,
}

impl Bound {
    /// A bound of `max` (0: unbounded).
    pub fn new(max: usize) -> Arc<Bound> {
        Arc::new(Bound { max: if max == 0 { usize::MAX } else { max }, held: AtomicUsize::new(0) })
    }

    /// A place, or `None` when all `max` are taken.
    pub fn try_take(self: &Arc<Self>) -> Option<Slot> {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.max).then_some(n + 1))
            .ok()
            .map(|_| Slot(self.clone()))
    }

    /// Places taken now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }
}

/// One place in a [`Bound`], given back when dropped.
#[derive(Debug)]
pub struct Slot(Arc<Bound>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.held.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A run in flight on this gateway: its place in `gateway.limits.maxConcurrentRuns`
/// and in the in-flight gauge, until dropped.
#[derive(Debug)]
pub struct RunPermit {
    _slot: Slot,
    _gauge: RunGuard,
}

/// Takes a place for a run, or refuses it (`503 overloaded`).
pub fn begin_run(runs: &Arc<Bound>, metrics: &Metrics) -> Result<RunPermit, ApiError> {
    match runs.try_take() {
        Some(slot) => Ok(RunPermit { _slot: slot, _gauge: metrics.run_guard() }),
        None => {
            metrics.overload_refused("runs");
            Err(ApiError::Overloaded(format!(
                "The gateway is running its maximum of {} runs; retry shortly.",
                runs.max
            )))
        }
    }
}

/// A connection's IO holding its place in `gateway.limits.maxConnections`: the
/// place goes with the IO, so a connection upgraded to a WebSocket (whose IO
/// hyper hands over) stays counted until it closes.
#[derive(Debug)]
pub struct Counted<T> {
    io: T,
    _slot: Slot,
}

impl<T> Counted<T> {
    /// `io`, counted by `slot`.
    pub fn new(io: T, slot: Slot) -> Counted<T> {
        Counted { io, _slot: slot }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Refuses a plain-TCP connection over the limit: the canned `503`, then a
/// short drain of what the client already sent (closing with unread bytes
/// would reset the connection and could lose the answer). `refusing` bounds how
/// many such goodbyes run at once; beyond it the socket is simply closed.
pub fn refuse_connection(tcp: TcpStream, refusing: &Arc<Bound>) {
    let Some(slot) = refusing.try_take() else { return };
    tokio::spawn(async move {
        let _slot = slot;
        let mut tcp = tcp;
        let goodbye = async {
            tcp.write_all(CONNECTION_REFUSAL).await?;
            tcp.shutdown().await?;
            let mut sink = [0u8; 4096];
            while tcp.read(&mut sink).await? > 0 {}
            Ok::<_, io::Error>(())
        };
        let _ = tokio::time::timeout(REFUSAL_LINGER, goodbye).await;
    });
}

/// How long a refused connection is given to read its `503`.
const REFUSAL_LINGER: Duration = Duration::from_secs(2);

/// The canned answer to a connection over `gateway.limits.maxConnections`,
/// written before closing it (its request is never read).
pub const CONNECTION_REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: 117\r\n\r\n\
{\"error\":{\"message\":\"The gateway is at its connection limit; retry shortly.\",\"type\":\"api_error\",\"code\":\"overloaded\"}}";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_hold_and_give_back() {
        let b = Bound::new(2);
        let one = b.try_take().unwrap();
        let _two = b.try_take().unwrap();
        assert!(b.try_take().is_none());
        drop(one);
        assert!(b.try_take().is_some());
        assert!(Bound::new(0).try_take().is_some(), "0 is unbounded");
    }

    #[test]
    fn the_canned_refusal_is_well_formed() {
        let text = std::str::from_utf8(CONNECTION_REFUSAL).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())), "{head}");
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], "overloaded");
    }
}
