//! Everything a connection sends goes through its [`Outbox`]: a queue with a
//! byte budget, drained by one writer task that owns the socket's sink.
//!
//! The budget counts bytes queued but not yet written to the socket. A frame
//! that would take it over `maxBufferedBytes` closes the connection instead (a
//! client that reads too slowly is disconnected, its memory released), except
//! that a frame is always accepted into an empty queue (so one large reply never
//! fails on its own). Memory per connection is therefore at most the budget plus
//! one frame. Keepalive traffic is dropped instead when it does not fit.
//!
//! Events get their `seq` here ([`Outbox::send_event`]), under the same lock as
//! the enqueue, so the client sees `seq` strictly increasing in arrival order.

use super::protocol::close;
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use bytes::Bytes;
use futures::stream::SplitSink;
use futures::SinkExt;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Bytes accounted for a ping (a frame header and an empty payload, rounded up).
const PING_COST: usize = 16;
/// Most bytes written per flush.
const BATCH_BYTES: usize = 64 * 1024;

/// One queued frame.
#[derive(Debug)]
pub(crate) enum Out {
    Text(String),
    Ping,
}

impl Out {
    fn cost(&self) -> usize {
        match self {
            Out::Text(t) => t.len().max(1),
            Out::Ping => PING_COST,
        }
    }

    fn into_message(self) -> Message {
        match self {
            Out::Text(t) => Message::Text(t.into()),
            Out::Ping => Message::Ping(Bytes::new()),
        }
    }
}

/// How a connection ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Closing {
    /// Close code sent to the client (when `send_frame`).
    pub code: u16,
    /// Close reason (short, ASCII).
    pub reason: &'static str,
    /// Write what is queued, then a Close frame (else stop writing at once).
    pub send_frame: bool,
}

impl Closing {
    /// A graceful close with this code: queued frames first, then the Close frame.
    pub const fn with(code: u16, reason: &'static str) -> Closing {
        Closing { code, reason, send_frame: true }
    }

    /// The client went away, closed first, or the socket failed: nothing more is
    /// written but what the socket layer already queued (e.g. the close reply).
    pub const GONE: Closing = Closing { code: close::NORMAL, reason: "", send_frame: false };

    /// The client does not read fast enough: stop writing at once.
    pub const SLOW_CONSUMER: Closing =
        Closing { code: close::POLICY, reason: "slow consumer", send_frame: false };
}

/// The sending side of one connection (shared by its tasks and by the chat
/// runs it subscribed to).
#[derive(Debug)]
pub(crate) struct Outbox {
    tx: mpsc::UnboundedSender<Out>,
    /// Bytes queued and not yet written to the socket.
    queued: AtomicUsize,
    max_buffered: usize,
    /// The last event `seq` sent.
    seq: Mutex<u64>,
    /// Why the connection is closing (the first reason wins).
    closing: Mutex<Option<Closing>>,
    /// Cancelled once `closing` is set.
    closed: CancellationToken,
}

impl Outbox {
    /// An outbox with this byte budget, and the receiver its writer drains.
    pub fn new(max_buffered: usize) -> (Arc<Outbox>, mpsc::UnboundedReceiver<Out>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let outbox = Outbox {
            tx,
            queued: AtomicUsize::new(0),
            max_buffered,
            seq: Mutex::new(0),
            closing: Mutex::new(None),
            closed: CancellationToken::new(),
        };
        (Arc::new(outbox), rx)
    }

    /// Queues a text frame. False when the connection is closing (or closes
    /// now because the frame does not fit the budget).
    pub fn send_text(&self, text: String) -> bool {
        self.enqueue(Out::Text(text), false)
    }

    /// Queues an event frame built with the next `seq`. False when it was not queued.
    pub fn send_event(&self, build: impl FnOnce(u64) -> String) -> bool {
        self.send_event_inner(build, false)
    }

    /// [`Outbox::send_event`] for events that may be skipped when the client is
    /// slow (keepalive ticks): they never close the connection.
    pub fn send_event_droppable(&self, build: impl FnOnce(u64) -> String) -> bool {
        self.send_event_inner(build, true)
    }

    fn send_event_inner(&self, build: impl FnOnce(u64) -> String, droppable: bool) -> bool {
        if self.closed.is_cancelled() {
            // Not worth serializing (a run keeps emitting after its client left).
            return false;
        }
        let mut seq = self.seq.lock();
        let next = seq.saturating_add(1);
        let queued = self.enqueue(Out::Text(build(next)), droppable);
        if queued {
            *seq = next;
        }
        queued
    }

    /// Queues a ping (skipped when it does not fit the budget).
    pub fn send_ping(&self) -> bool {
        self.enqueue(Out::Ping, true)
    }

    fn enqueue(&self, out: Out, droppable: bool) -> bool {
        if self.closed.is_cancelled() {
            return false;
        }
        let cost = out.cost();
        let before = self.queued.fetch_add(cost, Ordering::AcqRel);
        if before > 0 && before.saturating_add(cost) > self.max_buffered {
            self.queued.fetch_sub(cost, Ordering::AcqRel);
            if !droppable {
                tracing::debug!(
                    queued = before,
                    max = self.max_buffered,
                    "WebSocket client too slow; closing"
                );
                self.close(Closing::SLOW_CONSUMER);
            }
            return false;
        }
        if self.tx.send(out).is_err() {
            self.queued.fetch_sub(cost, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Starts closing the connection (the first reason wins; later calls are no-ops).
    pub fn close(&self, how: Closing) {
        let mut closing = self.closing.lock();
        if closing.is_none() {
            *closing = Some(how);
            self.closed.cancel();
        }
    }

    /// Why the connection is closing, once it is.
    pub fn closing(&self) -> Option<Closing> {
        *self.closing.lock()
    }

    /// Whether the connection is closing.
    pub fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }

    /// Resolves once the connection starts closing.
    pub async fn closed(&self) {
        self.closed.cancelled().await;
    }

    /// Bytes queued and not yet written.
    #[cfg(test)]
    pub fn queued_bytes(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }
}

/// The writer task: drains `rx` into the socket until the connection closes.
/// On a graceful close it writes what is still queued and the Close frame, each
/// write bounded by `close_timeout`; on an abrupt one it stops at once.
pub(crate) async fn write_loop(
    mut sink: SplitSink<WebSocket, Message>,
    mut rx: mpsc::UnboundedReceiver<Out>,
    outbox: Arc<Outbox>,
    close_timeout: Duration,
) {
    loop {
        let first = tokio::select! {
            biased;
            // Queued frames go out before a graceful close is noticed.
            item = rx.recv() => match item {
                Some(item) => item,
                None => break,
            },
            () = outbox.closed() => break,
        };
        let batch = async {
            let mut cost = first.cost();
            sink.feed(first.into_message()).await?;
            while cost < BATCH_BYTES {
                let Ok(next) = rx.try_recv() else { break };
                cost = cost.saturating_add(next.cost());
                sink.feed(next.into_message()).await?;
            }
            sink.flush().await?;
            Ok::<usize, axum::Error>(cost)
        };
        let written = tokio::select! {
            biased;
            r = batch => r,
            // Only an abrupt close interrupts a write in progress.
            () = abrupt_close(&outbox) => return,
        };
        match written {
            Ok(cost) => {
                outbox.queued.fetch_sub(cost, Ordering::AcqRel);
            }
            Err(e) => {
                tracing::debug!(error = %e, "WebSocket write failed");
                outbox.close(Closing::GONE);
                return;
            }
        }
    }
    let Some(how) = outbox.closing() else { return };
    let finish = async {
        if how.send_frame {
            while let Ok(item) = rx.try_recv() {
                sink.feed(item.into_message()).await?;
            }
            let frame = CloseFrame { code: how.code, reason: how.reason.into() };
            sink.send(Message::Close(Some(frame))).await
        } else {
            // Delivers what the socket layer queued itself (the reply to a client's Close).
            sink.flush().await
        }
    };
    if how != Closing::SLOW_CONSUMER {
        let _ = tokio::time::timeout(close_timeout, finish).await;
    }
}

/// Resolves when the connection is closing without a Close frame to send.
async fn abrupt_close(outbox: &Outbox) {
    outbox.closed().await;
    if outbox.closing().is_some_and(|c| !c.send_frame) {
        return;
    }
    std::future::pending::<()>().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_closes_a_slow_connection() {
        let (outbox, mut rx) = Outbox::new(100);
        // A lone frame is accepted even over the budget.
        assert!(outbox.send_text("x".repeat(150)));
        assert_eq!(outbox.queued_bytes(), 150);
        // Keepalive traffic that does not fit is dropped without closing.
        assert!(!outbox.send_ping());
        assert!(!outbox.send_event_droppable(|_| "{}".into()));
        assert!(!outbox.is_closed());
        // Anything else that does not fit closes the connection.
        assert!(!outbox.send_text("y".into()));
        assert!(outbox.is_closed());
        assert_eq!(outbox.closing(), Some(Closing::SLOW_CONSUMER));
        assert_eq!(outbox.queued_bytes(), 150);
        // Nothing is queued after the close.
        assert!(!outbox.send_text("z".into()));
        assert!(matches!(rx.try_recv(), Ok(Out::Text(t)) if t.len() == 150));
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn seq_increases_only_for_queued_events() {
        let (outbox, mut rx) = Outbox::new(1000);
        assert!(outbox.send_event(|seq| format!("{seq}")));
        assert!(outbox.send_event(|seq| format!("{seq}")));
        assert!(!outbox.send_event_droppable(|seq| format!("{seq}{}", "x".repeat(2000))));
        assert!(outbox.send_event(|seq| format!("{seq}")));
        let got: Vec<String> = std::iter::from_fn(|| match rx.try_recv() {
            Ok(Out::Text(t)) => Some(t),
            _ => None,
        })
        .collect();
        assert_eq!(got, ["1", "2", "3"]);
    }

    #[test]
    fn the_first_close_reason_wins() {
        let (outbox, _rx) = Outbox::new(10);
        outbox.close(Closing::with(close::RESTART, "service restart"));
        outbox.close(Closing::GONE);
        assert_eq!(outbox.closing(), Some(Closing::with(close::RESTART, "service restart")));
    }
}
