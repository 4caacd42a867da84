//! `chat.send` runs: started by a connection, but not owned by it.
//!
//! A run is one `AgentRun` stream consumed to its end by its own task, whether
//! or not anyone still listens (closing the socket does not abort the turn; it
//! completes and lands in the session, as in OpenClaw; `chat.abort` aborts it
//! through agent-svc). The connections that asked for it are its subscribers:
//! each gets the run's `chat` events with its own `seq`, while it is open.
//!
//! Here: [`ChatRun`] (one run's state and subscribers) and [`ChatRuns`], the
//! gateway-wide registry (the idempotency map `(agentId, sessionKey,
//! idempotencyKey) → run` and the runs still going, by id). `drive` consumes a
//! run's events and coalesces its deltas, `order` keeps one connection's turns
//! of a session in frame order, `payload` is the `chat` event JSON.

mod drive;
mod order;
mod payload;

pub(crate) use drive::spawn;
pub use drive::DELTA_INTERVAL;
pub(crate) use order::{ActiveRun, TurnOrder};
pub(crate) use payload::ToolCallJson;

use super::idempotency::{self, Dedupe, Entry};
use super::outbox::Outbox;
use super::protocol;
use parking_lot::Mutex;
use payload::ChatPayload;
use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Where a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// Still going.
    Running,
    /// Finished (`final`).
    Final,
    /// Failed (`error`).
    Error,
    /// Aborted (`aborted`).
    Aborted,
}

impl RunState {
    /// The `state` / `status` word for this state.
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Running => "started",
            RunState::Final => "final",
            RunState::Error => "error",
            RunState::Aborted => "aborted",
        }
    }
}

#[derive(Debug)]
struct RunInner {
    state: RunState,
    subscribers: Vec<Weak<Outbox>>,
}

/// One `chat.send` run.
#[derive(Debug)]
pub struct ChatRun {
    /// Our run id (also the agent-svc run id).
    pub run_id: String,
    /// The session key as the client sent it (echoed in events).
    pub session_key: String,
    /// The `agentId` the client sent (empty: the default agent); with
    /// `session_key` it gives the run's full session key.
    pub agent_id: String,
    inner: Mutex<RunInner>,
    /// Cancelled by `chat.abort`.
    abort: CancellationToken,
}

impl ChatRun {
    /// A new running run with no subscribers.
    pub fn new(run_id: String, session_key: String, agent_id: String) -> Arc<ChatRun> {
        Arc::new(ChatRun {
            run_id,
            session_key,
            agent_id,
            inner: Mutex::new(RunInner { state: RunState::Running, subscribers: Vec::new() }),
            abort: CancellationToken::new(),
        })
    }

    /// Where the run is.
    pub fn state(&self) -> RunState {
        self.inner.lock().state
    }

    /// Atomically with respect to the run's events: calls `reply` with the
    /// current state and, while the run is going, subscribes `outbox` to the
    /// rest of its events (once). So a subscriber gets its reply before any
    /// event, and never misses the terminal one.
    pub(crate) fn reply_and_subscribe(&self, outbox: &Arc<Outbox>, reply: impl FnOnce(RunState)) {
        let mut inner = self.inner.lock();
        reply(inner.state);
        if inner.state == RunState::Running
            && !inner.subscribers.iter().any(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(outbox)))
        {
            inner.subscribers.retain(|w| w.upgrade().is_some_and(|o| !o.is_closed()));
            inner.subscribers.push(Arc::downgrade(outbox));
        }
    }

    /// Marks the run for abort: a run still waiting for its session's turn in
    /// this gateway ends at once without calling agent-svc, one whose call is
    /// on its way is aborted as soon as agent-svc has started it. True when the
    /// run was still going (so this abort is what ends it, unless it finishes
    /// first).
    pub fn request_abort(&self) -> bool {
        self.abort.cancel();
        self.state() == RunState::Running
    }

    fn abort_requested(&self) -> bool {
        self.abort.is_cancelled()
    }

    /// Resolves once the run is marked for abort.
    async fn abort_requested_wait(&self) {
        self.abort.cancelled().await;
    }

    /// Sends a `chat` event to every subscriber; with `end`, the run is over
    /// and the subscribers are released.
    fn emit(&self, payload: &ChatPayload<'_>, end: Option<RunState>) {
        let mut inner = self.inner.lock();
        if let Some(state) = end {
            inner.state = state;
        }
        inner.subscribers.retain(|w| w.upgrade().is_some_and(|o| !o.is_closed()));
        for sub in inner.subscribers.iter().filter_map(Weak::upgrade) {
            sub.send_event(|seq| protocol::event("chat", &ChatPayload { seq, ..*payload }, Some(seq)));
        }
        if end.is_some() {
            inner.subscribers.clear();
        }
    }
}

/// What `chat.send` found for its idempotency key.
#[derive(Debug)]
pub enum Begin {
    /// A new run: the caller must start it.
    New(Arc<ChatRun>),
    /// The key was seen before: this is its run.
    Existing(Arc<ChatRun>),
}

/// The gateway-wide registry of `chat.send` runs.
#[derive(Debug)]
pub struct ChatRuns {
    dedupe: Mutex<Dedupe<Arc<ChatRun>>>,
    /// Runs still going, by run id (for `chat.abort` before agent-svc knows them).
    running: Mutex<HashMap<String, Arc<ChatRun>>>,
    /// The run tasks (a graceful shutdown waits for them).
    pub(crate) tasks: TaskTracker,
}

impl Default for ChatRuns {
    fn default() -> Self {
        ChatRuns::new(idempotency::DEFAULT_CAPACITY, idempotency::DEFAULT_TTL)
    }
}

impl ChatRuns {
    /// A registry whose idempotency map holds `capacity` keys for `ttl`.
    pub fn new(capacity: usize, ttl: Duration) -> ChatRuns {
        ChatRuns {
            dedupe: Mutex::new(Dedupe::new(capacity, ttl)),
            running: Mutex::new(HashMap::new()),
            tasks: TaskTracker::new(),
        }
    }

    /// The run of `dedupe_key`, or a new one (registered as running) made by `make`.
    pub fn begin(&self, dedupe_key: &str, make: impl FnOnce() -> Arc<ChatRun>) -> Begin {
        let entry = self.dedupe.lock().get_or_insert_with(dedupe_key, Instant::now(), make);
        match entry {
            Entry::Existing(run) => Begin::Existing(run),
            Entry::Inserted(run) => {
                self.running.lock().insert(run.run_id.clone(), run.clone());
                Begin::New(run)
            }
        }
    }

    /// A run of this gateway that is still going.
    pub fn running(&self, run_id: &str) -> Option<Arc<ChatRun>> {
        self.running.lock().get(run_id).cloned()
    }

    /// Every run of this gateway still going (for `chat.abort` by session key,
    /// which must also reach runs agent-svc does not know yet).
    pub fn all_running(&self) -> Vec<Arc<ChatRun>> {
        let all: Vec<Arc<ChatRun>> = self.running.lock().values().cloned().collect();
        // Each run's state is read after the registry's lock is released (one lock at a time).
        all.into_iter().filter(|r| r.state() == RunState::Running).collect()
    }

    pub(crate) fn finished(&self, run_id: &str) {
        self.running.lock().remove(run_id);
    }

    /// Waits until every run task has ended, or `timeout` passed; true when
    /// they all ended. Runs started later are still accepted.
    pub async fn wait_idle(&self, timeout: Duration) -> bool {
        let tracker = self.tasks.clone();
        tracker.close();
        let done = tokio::time::timeout(timeout, tracker.wait()).await.is_ok();
        tracker.reopen();
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resends_find_the_run_and_finished_runs_leave_the_running_index() {
        let runs = ChatRuns::new(100, Duration::from_secs(60));
        let Begin::New(first) = runs.begin("k", || ChatRun::new("r1".into(), "s".into(), String::new()))
        else {
            panic!("first send must start a run")
        };
        let Begin::Existing(again) = runs.begin("k", || ChatRun::new("r2".into(), "s".into(), String::new()))
        else {
            panic!("a resend must find the run")
        };
        assert!(Arc::ptr_eq(&first, &again));
        assert!(runs.running("r1").is_some());
        runs.finished("r1");
        assert!(runs.running("r1").is_none());
        assert!(matches!(
            runs.begin("k", || ChatRun::new("r3".into(), "s".into(), String::new())),
            Begin::Existing(_)
        ));
    }
}
