//! The `sqlite:PATH` session store, the embedded default.
//!
//! One writer thread owns the write connection (rusqlite, synchronous, on its
//! own OS thread: SQLite allows one writer at a time anyway). Appends (the
//! turns) are group-committed: the thread takes every append waiting and
//! commits them in one transaction, so many sessions' turns share one commit;
//! the other writes (compaction, reset, delete, sweep batches) run on the same
//! thread between groups, in order, so writers never contend for the lock. A
//! group is one hop from the caller's task to the thread and one back: with
//! sqlx each statement was a round trip through the async runtime, and under
//! load those hops, not SQLite, were most of a commit's time. Reads use a
//! separate small sqlx pool; with WAL they never wait on the writer, and sqlx
//! runs each of those connections on its own worker thread, so no SQLite call
//! blocks the runtime.
//!
//! The contexts of recent sessions are cached in the process
//! ([`WindowCache`], `session.cacheMb`): this store is the only writer of its
//! file, so every change passes through it and keeps the cache exact, and a
//! turn reads its window from memory instead of the database.
//!
//! The write-ahead log is checkpointed on a schedule the writer keeps (at
//! most every [`CHECKPOINT_INTERVAL`]; SQLite's automatic checkpoint is off,
//! as it runs inside a commit and its callers wait for it): a second
//! connection on its own thread copies the log into the database and fsyncs
//! while commits go on, then the writer, between two groups, copies the little
//! committed meanwhile, which completes the checkpoint, so its next commit
//! starts the log over and the log stays bounded (a checkpoint on the other
//! connection alone would never catch up with commits that do not stop). A
//! restarted log is cut back to [`JOURNAL_SIZE_LIMIT`].
//!
//! Durability: WAL with `synchronous = NORMAL`. A commit is in the WAL file
//! before the append returns, so a crash of agent-svc (killed, OOM, panic)
//! loses no acknowledged turn; a power loss or an operating-system crash can
//! lose the turns committed since the last checkpoint (which fsyncs; at most
//! about [`CHECKPOINT_INTERVAL`] under load, the last commits when idle), and
//! never leaves the database inconsistent.

use super::rows::{self, MarkedRow, NewRow, SummaryRow};
use super::window::WindowCache;
use super::{now_ms, Compaction, Context, Page, SessionStore, SessionSummary, StoredMessage, Sweep};
use crate::error::AgentError;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Read connections; enough for concurrent history/list calls of one replica.
const READ_CONNECTIONS: u32 = 4;

/// How long a statement waits for a lock held by another process on the file.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How often, at most, the writer checkpoints the write-ahead log.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(250);

/// Bytes a write-ahead log is cut back to when it starts over.
pub const JOURNAL_SIZE_LIMIT: u64 = 64 << 20;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS sessions (
    key           TEXT    PRIMARY KEY,
    agent_id      TEXT    NOT NULL,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    message_count INTEGER NOT NULL,
    context_seq   INTEGER NOT NULL DEFAULT 0,
    summary_seq   INTEGER NOT NULL DEFAULT -1
);
CREATE TABLE IF NOT EXISTS messages (
    session_key   TEXT    NOT NULL REFERENCES sessions (key) ON DELETE CASCADE,
    seq           INTEGER NOT NULL,
    run_id        TEXT    NOT NULL,
    interrupted   INTEGER NOT NULL,
    created_at_ms INTEGER NOT NULL,
    body          BLOB    NOT NULL,
    kind          INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (session_key, seq)
);
CREATE INDEX IF NOT EXISTS sessions_by_updated ON sessions (updated_at_ms DESC, key);
CREATE INDEX IF NOT EXISTS sessions_by_agent_updated ON sessions (agent_id, updated_at_ms DESC, key);
";

/// One session's share of a group commit: created, or its count moved on by
/// the messages appended; returns the new count (the next seq to come).
const UPSERT_SESSION: &str = "
INSERT INTO sessions (key, agent_id, created_at_ms, updated_at_ms, message_count)
VALUES (?1, ?2, ?3, ?3, ?4)
ON CONFLICT (key) DO UPDATE SET
    updated_at_ms = max(updated_at_ms, excluded.updated_at_ms),
    message_count = message_count + excluded.message_count
RETURNING message_count";

/// Columns added after the first release, for databases created before them.
const MIGRATIONS: [(&str, &str, &str); 3] = [
    ("sessions", "context_seq", "ALTER TABLE sessions ADD COLUMN context_seq INTEGER NOT NULL DEFAULT 0"),
    ("sessions", "summary_seq", "ALTER TABLE sessions ADD COLUMN summary_seq INTEGER NOT NULL DEFAULT -1"),
    ("messages", "kind", "ALTER TABLE messages ADD COLUMN kind INTEGER NOT NULL DEFAULT 0"),
];

const INSERT_MESSAGE: &str = "
INSERT INTO messages (session_key, seq, run_id, interrupted, created_at_ms, body, kind)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";

// A negative LIMIT means no limit in SQLite, so one statement serves both cases.
const SELECT_PAGE: &str = "
SELECT m.seq, m.run_id, m.interrupted, m.created_at_ms, m.body, m.kind, s.context_seq, s.summary_seq
FROM sessions s JOIN messages m ON m.session_key = s.key
WHERE s.key = ?1 AND m.seq < ?2 ORDER BY m.seq DESC LIMIT ?3";

/// The context: the messages from `context_seq` on, and the summary when it lies
/// before them. Two index range lookups, not one `OR`: with the `OR` the
/// planner reads every message the session ever had (compacted ones too), so a
/// turn cost more the longer the session had lived.
const SELECT_CONTEXT: &str = "
SELECT m.seq, m.run_id, m.interrupted, m.created_at_ms, m.body, m.kind, s.context_seq, s.summary_seq
FROM sessions s JOIN messages m ON m.session_key = s.key AND m.seq >= s.context_seq
WHERE s.key = ?1
UNION ALL
SELECT m.seq, m.run_id, m.interrupted, m.created_at_ms, m.body, m.kind, s.context_seq, s.summary_seq
FROM sessions s JOIN messages m ON m.session_key = s.key AND m.seq = s.summary_seq
WHERE s.key = ?1 AND s.summary_seq < s.context_seq
ORDER BY 1";

const NEXT_SEQ: &str = "SELECT message_count FROM sessions WHERE key = ?1";

const TAKE_SEQ: &str =
    "UPDATE sessions SET message_count = message_count + 1 WHERE key = ?1 RETURNING message_count";

const MOVE_CONTEXT: &str = "
UPDATE sessions SET context_seq = max(context_seq, ?2), summary_seq = coalesce(?3, summary_seq) WHERE key = ?1";

const CLEAR_MESSAGES: &str = "DELETE FROM messages WHERE session_key = ?1";

const RESET_SESSION: &str = "
UPDATE sessions SET message_count = 0, context_seq = 0, summary_seq = -1,
    updated_at_ms = max(updated_at_ms, ?2) WHERE key = ?1";

const DELETE_SESSION: &str = "DELETE FROM sessions WHERE key = ?1";

const SWEEP_OLD: &str = "
DELETE FROM sessions WHERE key IN (SELECT key FROM sessions WHERE updated_at_ms < ?1 LIMIT ?2)";

const SWEEP_EXCESS: &str = "
DELETE FROM sessions WHERE key IN (
    SELECT key FROM (
        SELECT key, row_number() OVER (PARTITION BY agent_id ORDER BY updated_at_ms DESC, key) AS n
        FROM sessions)
    WHERE n > ?1 LIMIT ?2)";

const COUNT: &str = "SELECT count(*) FROM sessions";

const LIST_ALL: &str = "
SELECT key, agent_id, created_at_ms, updated_at_ms, message_count FROM sessions
ORDER BY updated_at_ms DESC, key LIMIT ?1";

const LIST_AGENT: &str = "
SELECT key, agent_id, created_at_ms, updated_at_ms, message_count FROM sessions
WHERE agent_id = ?1 ORDER BY updated_at_ms DESC, key LIMIT ?2";

const EXISTS: &str = "SELECT EXISTS (SELECT 1 FROM sessions WHERE key = ?1)";

/// SQLite-backed transcript store.
pub struct SqliteStore {
    reader: SqlitePool,
    /// Writes waiting for the writer thread.
    writes: flume::Sender<Write>,
    /// Recent sessions' contexts (kept exact by every write below).
    cache: Arc<WindowCache>,
}

/// Writes that may wait for the writer thread (a full queue makes callers wait).
const WRITE_QUEUE: usize = 1024;
/// Appends committed in one transaction at most.
const GROUP_MAX: usize = 64;
/// Prepared statements the writer keeps (it uses a handful).
const WRITER_STATEMENTS: usize = 32;

/// One append waiting for the group commit.
struct PendingAppend {
    key: String,
    agent_id: String,
    count: i64,
    rows: Vec<NewRow>,
    /// The entries themselves, for the cache (empty when it is off).
    entries: Vec<StoredMessage>,
    done: oneshot::Sender<Result<(), String>>,
}

/// Any other write: run alone, in queue order, on the writer's connection;
/// it reports to its caller itself.
type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// What the writer thread is asked to do.
enum Write {
    Append(PendingAppend),
    Job(Job),
    /// Stop: checkpoint, close the connection, then answer.
    Close(oneshot::Sender<()>),
}

/// The writer thread, the only writer of the database: commits every append
/// waiting (up to [`GROUP_MAX`]) in one transaction, runs the other writes
/// between groups, in order, and checkpoints the log. An append whose caller
/// gave up (its future dropped, e.g. at the store timeout) before its group
/// began is not written. The cache learns of each commit before its caller
/// does, so the session's next turn finds it there. Ends when the store is
/// dropped or closed.
fn writer(
    mut conn: Connection,
    rx: flume::Receiver<Write>,
    cache: Arc<WindowCache>,
    mut checkpoints: Checkpoints,
) {
    let mut batch = Vec::with_capacity(GROUP_MAX);
    let mut closed = None;
    while closed.is_none() {
        // Wait no longer than the checkpoint schedule allows.
        let first = match checkpoints.deadline() {
            Some(due) => rx.recv_deadline(due).map_err(|e| e == flume::RecvTimeoutError::Disconnected),
            None => rx.recv().map_err(|_| true),
        };
        match first {
            Ok(w) => batch.push(w),
            Err(true) => break,
            Err(false) => {}
        }
        loop {
            while batch.len() < GROUP_MAX {
                match rx.try_recv() {
                    Ok(w) => batch.push(w),
                    Err(_) => break,
                }
            }
            // Between a batch and the one before (already answered), or after
            // a quiet wait.
            checkpoints.step(&conn);
            if batch.is_empty() {
                break;
            }
            closed = run_batch(&mut conn, &mut batch, &cache);
            checkpoints.committed();
            if closed.is_some() {
                break;
            }
        }
    }
    // Also ends the checkpointer thread, which closes its connection.
    checkpoints.close(&conn);
    drop(conn);
    if let Some(done) = closed {
        let _ = done.send(());
        // Closed, not dropped: a write queued from now on would wait in the
        // queue for good, so each is dropped unrun (its caller hears the store
        // is closed) until the store goes.
        for w in rx.iter() {
            if let Write::Close(done) = w {
                let _ = done.send(());
            }
        }
    }
}

/// How often the writer looks whether the checkpointer is done, when idle.
const CHECKPOINTER_POLL: Duration = Duration::from_millis(5);

/// The writer's checkpoint schedule. The bulk of a checkpoint, copying the log
/// into the database and the fsyncs (~20 ms a time under load here, nearly all
/// fsync), runs on a second connection on its own thread while commits go on;
/// then the writer, between two groups, copies what was committed meanwhile,
/// which completes the checkpoint, so its next commit starts the log over.
/// A checkpoint of the writer's own stalled every commit behind it.
struct Checkpoints {
    /// The last complete checkpoint.
    last: Instant,
    /// Commits since it.
    dirty: bool,
    /// None: the writer checkpoints alone (the second connection failed).
    helper: Option<Checkpointer>,
}

/// The second connection's thread: asked, it checkpoints and says so.
struct Checkpointer {
    ask: std::sync::mpsc::SyncSender<()>,
    done: std::sync::mpsc::Receiver<()>,
    /// Asked and not done yet.
    copying: bool,
}

impl Checkpointer {
    /// Starts the checkpointer thread on its own connection to `path`.
    fn start(path: &str) -> Result<Checkpointer, Box<dyn std::error::Error + Send + Sync>> {
        let conn = open_connection(path)?;
        let (ask, asked) = std::sync::mpsc::sync_channel::<()>(1);
        let (answer, done) = std::sync::mpsc::sync_channel(1);
        let started = std::thread::Builder::new().name("sqlite-checkpoint".into()).spawn(move || {
            while asked.recv().is_ok() {
                // The second pass copies what was committed during the first,
                // so the writer's share is what a few milliseconds wrote.
                checkpoint(&conn);
                checkpoint(&conn);
                if answer.send(()).is_err() {
                    break;
                }
            }
        });
        started?;
        Ok(Checkpointer { ask, done, copying: false })
    }
}

impl Checkpoints {
    fn new(helper: Option<Checkpointer>) -> Self {
        Checkpoints { last: Instant::now(), dirty: false, helper }
    }

    fn copying(&self) -> bool {
        self.helper.as_ref().is_some_and(|h| h.copying)
    }

    /// Until when the writer may wait for work; `None`: as long as it takes.
    fn deadline(&self) -> Option<Instant> {
        if self.copying() {
            Some(Instant::now() + CHECKPOINTER_POLL)
        } else if self.dirty {
            Some(self.last + CHECKPOINT_INTERVAL)
        } else {
            None
        }
    }

    /// A group (or job) was committed.
    fn committed(&mut self) {
        self.dirty = true;
    }

    /// Between groups: hands a due checkpoint to the checkpointer, or
    /// completes the one it has done.
    fn step(&mut self, conn: &Connection) {
        if !self.dirty {
            return;
        }
        if let Some(helper) = self.helper.as_mut().filter(|h| h.copying) {
            match helper.done.try_recv() {
                Err(std::sync::mpsc::TryRecvError::Empty) => return,
                Ok(()) => helper.copying = false,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => self.helper = None,
            }
            self.finish(conn);
            return;
        }
        if self.last.elapsed() < CHECKPOINT_INTERVAL {
            return;
        }
        match &mut self.helper {
            Some(helper) if helper.ask.try_send(()).is_ok() => helper.copying = true,
            _ => self.finish(conn),
        }
    }

    /// The writer's own checkpoint: everything left (the writer is between
    /// transactions, so nothing more is being added).
    fn finish(&mut self, conn: &Connection) {
        checkpoint(conn);
        (self.last, self.dirty) = (Instant::now(), false);
    }

    /// At the writer's end: a last complete checkpoint, and the checkpointer
    /// stopped (its thread ends when asked no more).
    fn close(mut self, conn: &Connection) {
        if let Some(helper) = self.helper.as_ref().filter(|h| h.copying) {
            let _ = helper.done.recv();
        }
        if self.dirty {
            self.finish(conn);
        }
    }
}

/// Runs a batch in order: each run of appends as one group commit, each job
/// alone. At a close, stops there (the writes after it are dropped: their
/// callers hear the store is closed) and returns its answer.
fn run_batch(
    conn: &mut Connection,
    batch: &mut Vec<Write>,
    cache: &WindowCache,
) -> Option<oneshot::Sender<()>> {
    let mut group = Vec::with_capacity(batch.len());
    let mut first_seqs = Vec::with_capacity(batch.len());
    let mut writes = batch.drain(..).peekable();
    while let Some(w) = writes.next() {
        match w {
            Write::Job(job) => job(conn),
            Write::Close(done) => return Some(done),
            Write::Append(p) => {
                group.push(p);
                while let Some(Write::Append(_)) = writes.peek() {
                    if let Some(Write::Append(p)) = writes.next() {
                        group.push(p);
                    }
                }
                group.retain(|p| !p.done.is_closed());
                if group.is_empty() {
                    continue;
                }
                first_seqs.clear();
                let outcome = commit_group(conn, &group, &mut first_seqs).map_err(|e| e.to_string());
                for (i, mut p) in group.drain(..).enumerate() {
                    match (&outcome, first_seqs.get(i)) {
                        (Ok(()), Some(&first)) => {
                            cache.appended(&p.key, first, std::mem::take(&mut p.entries))
                        }
                        _ => cache.invalidate(&p.key),
                    }
                    let _ = p.done.send(outcome.clone());
                }
            }
        }
    }
    None
}

/// Commits a group in one transaction; `first_seqs` gets each append's first
/// seq. Appends to the same session (nothing stops two callers) take their
/// seqs in group order.
fn commit_group(
    conn: &mut Connection,
    group: &[PendingAppend],
    first_seqs: &mut Vec<i64>,
) -> rusqlite::Result<()> {
    // IMMEDIATE takes the write lock up front: no lock upgrade can fail midway.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    {
        let mut upsert = tx.prepare_cached(UPSERT_SESSION)?;
        let mut insert = tx.prepare_cached(INSERT_MESSAGE)?;
        let now = now_ms();
        for p in group {
            // message_count moves on in the same transaction, so the new count
            // less what this append adds is its first seq.
            let total: i64 = upsert.query_row(params![p.key, p.agent_id, now, p.count], |r| r.get(0))?;
            let first = total - p.count;
            first_seqs.push(first);
            for (row, seq) in p.rows.iter().zip(first..) {
                insert_message(&mut insert, &p.key, seq, row)?;
            }
        }
    }
    tx.commit()
}

/// Inserts one message row with the prepared [`INSERT_MESSAGE`].
fn insert_message(
    insert: &mut rusqlite::Statement<'_>,
    key: &str,
    seq: i64,
    row: &NewRow,
) -> rusqlite::Result<()> {
    insert.execute(params![key, seq, row.run_id, row.interrupted, row.created_at_ms, row.body, row.kind])?;
    Ok(())
}

/// Copies the write-ahead log into the database (`PASSIVE`: never waits for
/// a reader; what a reader still needs stays in the log until next time).
fn checkpoint(conn: &Connection) {
    // (busy, frames in the log, frames copied)
    let done = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
    });
    match done {
        Ok((_, log, copied)) => {
            metrics::gauge!("openclaw_agent_sqlite_wal_frames").set(log.max(0) as f64);
            if copied < log {
                tracing::debug!(log, copied, "a reader kept part of the sqlite log from its checkpoint");
            }
        }
        Err(e) => tracing::warn!(error = %e, "sqlite checkpoint failed"),
    }
}

/// Stores a compaction: the summary (if any) as the next entry, the context
/// start moved (never back). Nothing for an unknown session (`None`); else
/// the summary's seq, if one was stored.
fn compact_tx(
    conn: &mut Connection,
    key: &str,
    start_seq: i64,
    summary: Option<NewRow>,
) -> rusqlite::Result<Option<Option<i64>>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut summary_seq = None;
    if let Some(row) = summary {
        let Some(count) = tx.query_row(TAKE_SEQ, [key], |r| r.get::<_, i64>(0)).optional()? else {
            return Ok(None);
        };
        insert_message(&mut *tx.prepare_cached(INSERT_MESSAGE)?, key, count - 1, &row)?;
        summary_seq = Some(count - 1);
    }
    if tx.execute(MOVE_CONTEXT, params![key, start_seq, summary_seq])? == 0 {
        return Ok(None);
    }
    tx.commit()?;
    Ok(Some(summary_seq))
}

/// Opens a connection to the database for the writer or the checkpointer
/// (creating the file). Blocking: file I/O.
fn open_connection(path: &str) -> rusqlite::Result<Connection> {
    let flags =
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.set_prepared_statement_cache_capacity(WRITER_STATEMENTS);
    // `journal_mode` answers with the mode it set.
    conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))?;
    conn.execute_batch(&format!(
        "PRAGMA foreign_keys = ON;
         PRAGMA synchronous = NORMAL;
         PRAGMA wal_autocheckpoint = 0;
         PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT};"
    ))?;
    Ok(conn)
}

/// The write connection with the schema in place, and the checkpointer (none
/// when its connection fails: the writer then checkpoints alone). Blocking.
fn open_writer(path: &str) -> rusqlite::Result<(Connection, Checkpoints)> {
    let conn = open_connection(path)?;
    migrate(&conn)?;
    let helper = match Checkpointer::start(path) {
        Ok(helper) => Some(helper),
        Err(e) => {
            tracing::warn!(error = %e, "sqlite checkpointer not started; the writer checkpoints alone");
            None
        }
    };
    Ok((conn, Checkpoints::new(helper)))
}

/// Creates the schema, adding the columns a database from an older release lacks.
fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(SCHEMA)?;
    for (table, column, alter) in MIGRATIONS {
        let present: bool = conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2)",
            [table, column],
            |r| r.get(0),
        )?;
        if !present {
            conn.execute_batch(alter)?;
        }
    }
    Ok(())
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and its schema, with
    /// a context cache of `cache_bytes` (0: none).
    pub async fn open(path: &str, cache_bytes: usize) -> Result<Self, AgentError> {
        // Accept the URL form `sqlite://PATH` too (`sqlite:///abs` → `/abs`).
        let path = path.strip_prefix("//").unwrap_or(path);
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            AgentError::Startup(format!("session.store: cannot {what} sqlite database {path:?}: {e}"))
        };
        if path.is_empty() {
            return Err(AgentError::Startup("session.store: `sqlite:` needs a file path".into()));
        }
        if path == ":memory:" {
            return Err(AgentError::Startup(
                "session.store: `sqlite::memory:` is not supported; use `memory` for a store in memory"
                    .into(),
            ));
        }
        if let Some(dir) = Path::new(path).parent().filter(|d| !d.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(dir).await.map_err(|e| fail("create the directory of", &e))?;
        }
        // The schema exists before any reader looks at the file.
        let owned = path.to_owned();
        let (conn, checkpoints) = tokio::task::spawn_blocking(move || open_writer(&owned))
            .await
            .map_err(|e| fail("open", &e))?
            .map_err(|e| fail("open", &e))?;
        let reader = SqlitePoolOptions::new()
            .max_connections(READ_CONNECTIONS)
            .min_connections(1)
            // A local file has no connection to go stale: no ping (a round
            // trip to the connection's thread) before every read.
            .test_before_acquire(false)
            .connect_with(
                SqliteConnectOptions::new()
                    .filename(path)
                    .busy_timeout(BUSY_TIMEOUT)
                    .foreign_keys(true)
                    .synchronous(SqliteSynchronous::Normal)
                    .journal_mode(SqliteJournalMode::Wal),
            )
            .await
            .map_err(|e| fail("open", &e))?;
        let (writes, queue) = flume::bounded(WRITE_QUEUE);
        let cache = Arc::new(WindowCache::new(cache_bytes));
        let thread_cache = Arc::clone(&cache);
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || writer(conn, queue, thread_cache, checkpoints))
            .map_err(|e| fail("start the writer of", &e))?;
        Ok(SqliteStore { reader, writes, cache })
    }

    /// Queues a write for the writer thread (waiting while the queue is full).
    async fn enqueue(&self, w: Write) -> Result<(), AgentError> {
        self.writes.send_async(w).await.map_err(|_| closed())
    }

    /// Runs `job` on the writer thread's connection, in queue order with the
    /// appends, and returns what it did.
    async fn write<T, F>(&self, job: F) -> Result<T, AgentError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let (done, outcome) = oneshot::channel();
        self.enqueue(Write::Job(Box::new(move |conn| {
            let _ = done.send(job(conn));
        })))
        .await?;
        outcome.await.map_err(|_| closed())?.map_err(|e| AgentError::Store(e.to_string()))
    }

    /// Closes the database: the writer finishes what was queued before,
    /// checkpoints and closes its connection; reads wait for running
    /// statements. Later calls fail.
    pub async fn close(&self) {
        let (done, closed) = oneshot::channel();
        if self.enqueue(Write::Close(done)).await.is_ok() {
            let _ = closed.await;
        }
        self.reader.close().await;
    }
}

fn closed() -> AgentError {
    AgentError::Store("the session store is closed".into())
}

/// Rows deleted per sweep statement, so no transaction grows unbounded.
const SWEEP_BATCH: i64 = 500;

#[async_trait::async_trait]
impl SessionStore for SqliteStore {
    async fn append(
        &self,
        key: &str,
        agent_id: &str,
        messages: Vec<StoredMessage>,
    ) -> Result<(), AgentError> {
        if messages.is_empty() {
            return Ok(());
        }
        let (count, rows) = rows::encode(&messages)?;
        let entries = if self.cache.enabled() { messages } else { Vec::new() };
        let (done, outcome) = oneshot::channel();
        let pending =
            PendingAppend { key: key.to_owned(), agent_id: agent_id.to_owned(), count, rows, entries, done };
        self.enqueue(Write::Append(pending)).await?;
        outcome.await.map_err(|_| closed())?.map_err(AgentError::Store)
    }

    async fn history_page(&self, key: &str, page: Page) -> Result<Vec<StoredMessage>, AgentError> {
        let limit = page.limit.map_or(-1, i64::from);
        let found: Vec<MarkedRow> = sqlx::query_as(SELECT_PAGE)
            .bind(key)
            .bind(page.before.unwrap_or(i64::MAX))
            .bind(limit)
            .fetch_all(&self.reader)
            .await?;
        let (newest_first, marks) = rows::unzip(found);
        rows::history(key, newest_first, marks)
    }

    async fn context(&self, key: &str) -> Result<Context, AgentError> {
        if let Some(ctx) = self.cache.get(key) {
            return Ok(ctx);
        }
        let epoch = self.cache.epoch();
        // One snapshot for the context and the next seq the cache needs.
        let mut tx = self.reader.begin().await?;
        let found: Vec<MarkedRow> = sqlx::query_as(SELECT_CONTEXT).bind(key).fetch_all(&mut *tx).await?;
        let next: Option<(i64,)> = if self.cache.enabled() {
            sqlx::query_as(NEXT_SEQ).bind(key).fetch_optional(&mut *tx).await?
        } else {
            None
        };
        tx.commit().await?;
        let (in_order, marks) = rows::unzip(found);
        let ctx = rows::context(key, in_order, marks)?;
        if self.cache.enabled() {
            self.cache.fill(key, &ctx, next.map_or(0, |(n,)| n), epoch);
        }
        Ok(ctx)
    }

    async fn compact(&self, key: &str, c: Compaction) -> Result<(), AgentError> {
        let entry = c.summary.map(|m| StoredMessage { summary: true, ..m });
        let summary = match &entry {
            Some(m) => rows::encode(std::slice::from_ref(m))?.1.pop(),
            None => None,
        };
        let (key, cache) = (key.to_owned(), Arc::clone(&self.cache));
        self.write(move |conn| match compact_tx(conn, &key, c.start_seq, summary) {
            Ok(Some(summary_seq)) => {
                cache.compacted(
                    &key,
                    c.start_seq,
                    entry.zip(summary_seq).map(|(m, seq)| StoredMessage { seq, ..m }),
                );
                Ok(())
            }
            done => {
                cache.invalidate(&key);
                done.map(drop)
            }
        })
        .await
    }

    async fn reset(&self, key: &str) -> Result<bool, AgentError> {
        let (key, cache) = (key.to_owned(), Arc::clone(&self.cache));
        self.write(move |conn| {
            let reset = (|| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                tx.execute(CLEAR_MESSAGES, [&key])?;
                let done = tx.execute(RESET_SESSION, params![key, now_ms()])?;
                tx.commit()?;
                Ok(done > 0)
            })();
            cache.invalidate(&key);
            reset
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<bool, AgentError> {
        let (key, cache) = (key.to_owned(), Arc::clone(&self.cache));
        self.write(move |conn| {
            let done = conn.execute(DELETE_SESSION, [&key]);
            cache.invalidate(&key);
            Ok(done? > 0)
        })
        .await
    }

    async fn sweep(&self, sweep: Sweep) -> Result<u64, AgentError> {
        let mut total = 0;
        for (stmt, arg) in
            [(SWEEP_OLD, sweep.updated_before_ms), (SWEEP_EXCESS, sweep.keep_per_agent.map(i64::from))]
        {
            let Some(arg) = arg else { continue };
            // One batch per write, so turns commit between them.
            loop {
                let cache = Arc::clone(&self.cache);
                let n = self
                    .write(move |conn| {
                        let done = conn.execute(stmt, params![arg, SWEEP_BATCH]);
                        // Which sessions went is not known here: drop them all.
                        if !matches!(done, Ok(0)) {
                            cache.clear();
                        }
                        Ok(done? as u64)
                    })
                    .await?;
                total += n;
                if n < SWEEP_BATCH as u64 {
                    break;
                }
            }
        }
        Ok(total)
    }

    async fn count(&self) -> Result<u64, AgentError> {
        let (n,): (i64,) = sqlx::query_as(COUNT).fetch_one(&self.reader).await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn list(&self, agent_id: Option<&str>, limit: u32) -> Result<Vec<SessionSummary>, AgentError> {
        let found: Vec<SummaryRow> = match agent_id {
            Some(agent) => {
                sqlx::query_as(LIST_AGENT).bind(agent).bind(i64::from(limit)).fetch_all(&self.reader).await?
            }
            None => sqlx::query_as(LIST_ALL).bind(i64::from(limit)).fetch_all(&self.reader).await?,
        };
        Ok(found.into_iter().map(rows::summary).collect())
    }

    async fn exists(&self, key: &str) -> Result<bool, AgentError> {
        let (found,): (i64,) = sqlx::query_as(EXISTS).bind(key).fetch_one(&self.reader).await?;
        Ok(found != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sessions::fixtures::{self, numbered, rich_turn, text};
    use std::path::PathBuf;
    use std::sync::Arc;

    /// A database file under the temp dir, removed (with its WAL files) on drop.
    struct TempDb {
        dir: PathBuf,
    }

    impl TempDb {
        fn new() -> Self {
            let dir = std::env::temp_dir().join(format!("agent-svc-sqlite-{}", uuid::Uuid::new_v4()));
            TempDb { dir }
        }
        /// In a not-yet-existing subdirectory, so `open` must create it.
        fn path(&self) -> String {
            self.dir.join("nested").join("sessions.db").to_string_lossy().into_owned()
        }
    }

    impl Drop for TempDb {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    #[tokio::test]
    async fn round_trip_keeps_every_field() {
        let db = TempDb::new();
        let store = SqliteStore::open(&db.path(), 0).await.unwrap();
        let turn = rich_turn();
        store.append("agent:main:openai-user:a", "main", turn.clone()).await.unwrap();
        assert_eq!(store.history("agent:main:openai-user:a", None).await.unwrap(), numbered(turn, 0));
        assert!(store.exists("agent:main:openai-user:a").await.unwrap());
        assert!(!store.exists("agent:main:nope").await.unwrap());
        assert!(store.history("agent:main:nope", None).await.unwrap().is_empty());
        store.close().await;
    }

    #[tokio::test]
    async fn data_survives_reopen() {
        let db = TempDb::new();
        let store = SqliteStore::open(&db.path(), 0).await.unwrap();
        store
            .append("agent:main:k", "main", vec![text("user", "hi"), text("assistant", "hello")])
            .await
            .unwrap();
        store.close().await;
        assert!(store.exists("agent:main:k").await.is_err(), "closed store must fail");
        drop(store);

        let store = SqliteStore::open(&db.path(), 0).await.unwrap();
        assert_eq!(
            store.history("agent:main:k", None).await.unwrap(),
            numbered(vec![text("user", "hi"), text("assistant", "hello")], 0)
        );
        // Sequence numbers continue after the restart.
        store.append("agent:main:k", "main", vec![text("user", "again")]).await.unwrap();
        let all = store.history("agent:main:k", None).await.unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(all[2], StoredMessage { seq: 2, ..text("user", "again") });
        let listed = store.list(None, 10).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].message_count, 3);
        store.close().await;
    }

    #[tokio::test]
    async fn history_limit_returns_the_last_messages_in_order() {
        let db = TempDb::new();
        let store = SqliteStore::open(&db.path(), 0).await.unwrap();
        let msgs: Vec<_> = numbered((0..10).map(|i| text("user", &i.to_string())).collect(), 0);
        store.append("agent:main:k", "main", msgs[..4].to_vec()).await.unwrap();
        store.append("agent:main:k", "main", msgs[4..].to_vec()).await.unwrap();
        assert_eq!(store.history("agent:main:k", Some(3)).await.unwrap(), msgs[7..].to_vec());
        assert_eq!(store.history("agent:main:k", Some(100)).await.unwrap(), msgs);
        assert_eq!(store.history("agent:main:k", None).await.unwrap(), msgs);
        assert!(store.history("agent:main:k", Some(0)).await.unwrap().is_empty());
        store.close().await;
    }

    #[tokio::test]
    async fn list_orders_by_update_and_filters_by_agent() {
        let db = TempDb::new();
        let store = SqliteStore::open(&db.path(), 0).await.unwrap();
        fixtures::append_listed(&store).await;
        // Pin update times so the order does not depend on the clock.
        for (key, t) in fixtures::LISTED {
            let pin = move |conn: &mut Connection| {
                conn.execute("UPDATE sessions SET updated_at_ms = ?1 WHERE key = ?2", params![t, key])
            };
            store.write(pin).await.unwrap();
        }
        fixtures::assert_listed(&store).await;
        store.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_appends_all_land() {
        let db = TempDb::new();
        let store = Arc::new(SqliteStore::open(&db.path(), 0).await.unwrap());
        let mut tasks = Vec::new();
        for t in 0..8 {
            let store = Arc::clone(&store);
            tasks.push(tokio::spawn(async move {
                for i in 0..20 {
                    let own = format!("agent:main:task-{t}");
                    store.append(&own, "main", vec![text("user", &i.to_string())]).await.unwrap();
                    // Everyone also writes to one shared session: seq must stay unique.
                    store
                        .append("agent:main:shared", "main", vec![text("user", &format!("{t}-{i}"))])
                        .await
                        .unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        for t in 0..8 {
            let h = store.history(&format!("agent:main:task-{t}"), None).await.unwrap();
            let expected: Vec<_> = numbered((0..20).map(|i| text("user", &i.to_string())).collect(), 0);
            assert_eq!(h, expected);
        }
        assert_eq!(store.history("agent:main:shared", None).await.unwrap().len(), 160);
        let listed = store.list(None, 100).await.unwrap();
        assert_eq!(listed.len(), 9);
        assert_eq!(listed.iter().map(|s| s.message_count).sum::<u32>(), 8 * 20 + 160);
        store.close().await;
    }

    /// One group with two appends to the same session (nothing stops two
    /// callers) and one to another: seqs in group order.
    #[tokio::test]
    async fn a_group_takes_seqs_in_group_order() {
        let db = TempDb::new();
        let store = SqliteStore::open(&db.path(), 0).await.unwrap();
        store.append("agent:main:a", "main", vec![text("user", "0"), text("user", "1")]).await.unwrap();
        let pending = |key: &str, texts: &[&str]| {
            let entries: Vec<_> = texts.iter().map(|t| text("user", t)).collect();
            let (count, rows) = rows::encode(&entries).unwrap();
            let (done, _) = oneshot::channel();
            PendingAppend { key: key.into(), agent_id: "main".into(), count, rows, entries, done }
        };
        let group = [
            pending("agent:main:a", &["2", "3"]),
            pending("agent:main:b", &["b0"]),
            pending("agent:main:a", &["4"]),
        ];
        let first_seqs = store
            .write(move |conn| {
                let mut first_seqs = Vec::new();
                commit_group(conn, &group, &mut first_seqs).map(|()| first_seqs)
            })
            .await
            .unwrap();
        assert_eq!(first_seqs, [2, 0, 4]);
        let texts = |h: Vec<StoredMessage>| h.iter().map(rows_text).collect::<Vec<_>>();
        assert_eq!(texts(store.history("agent:main:a", None).await.unwrap()), ["0", "1", "2", "3", "4"]);
        assert_eq!(texts(store.history("agent:main:b", None).await.unwrap()), ["b0"]);
        assert_eq!(store.list(None, 10).await.unwrap().iter().map(|s| s.message_count).sum::<u32>(), 6);
        store.close().await;
    }

    #[tokio::test]
    async fn corrupt_body_is_a_store_error() {
        let db = TempDb::new();
        let store = SqliteStore::open(&db.path(), 0).await.unwrap();
        store.append("agent:main:k", "main", vec![text("user", "hi")]).await.unwrap();
        store.write(|conn| conn.execute("UPDATE messages SET body = x'ffffffff'", [])).await.unwrap();
        assert!(matches!(store.history("agent:main:k", None).await, Err(AgentError::Store(_))));
        store.close().await;
    }

    /// The writer and the readers are separate connections, so a private
    /// in-memory database cannot serve: the error names the store that can.
    #[tokio::test]
    async fn an_in_memory_path_points_to_the_memory_store() {
        let Err(AgentError::Startup(why)) = SqliteStore::open(":memory:", 0).await else {
            panic!("`sqlite::memory:` opened");
        };
        assert!(why.contains("use `memory`"), "{why}");
    }

    /// A compaction updates the cached context in place (the next turn reads
    /// nothing back), to exactly what the database holds.
    #[tokio::test]
    async fn a_compaction_keeps_the_cached_context_equal_to_the_database() {
        let db = TempDb::new();
        let store = SqliteStore::open(&db.path(), 1 << 20).await.unwrap();
        let key = "agent:main:k";
        let turn = |n: usize| vec![text("user", &format!("q{n}")), text("assistant", &format!("a{n}"))];
        for n in 0..3 {
            store.append(key, "main", turn(n)).await.unwrap();
        }
        async fn from_db(store: &SqliteStore, key: &str) -> Result<Context, AgentError> {
            store.cache.invalidate(key);
            store.context(key).await
        }
        assert_eq!(from_db(&store, key).await.unwrap().window.len(), 6);

        let compactions = [
            Compaction { start_seq: 4, summary: Some(fixtures::summary("q0 to a1")) },
            Compaction { start_seq: 8, summary: None },
            Compaction { start_seq: 10, summary: Some(fixtures::summary("up to a3")) },
        ];
        for (n, c) in compactions.into_iter().enumerate() {
            store.compact(key, c).await.unwrap();
            let cached = store.cache.get(key).expect("a compaction updates the cached context, not drops it");
            assert_eq!(cached, from_db(&store, key).await.unwrap(), "after compaction {n}");
            // The next append lands right after the summary, in the cache as in the database.
            store.append(key, "main", turn(10 + n)).await.unwrap();
            let cached = store.cache.get(key).expect("still cached");
            assert_eq!(
                cached,
                from_db(&store, key).await.unwrap(),
                "after the turn following compaction {n}"
            );
        }
        let ctx = store.context(key).await.unwrap();
        assert_eq!(ctx.summary.map(|s| s.message.clone()), Some(fixtures::summary("up to a3").message));
        assert_eq!(ctx.window.first().map(|m| m.seq), Some(10));
        store.close().await;
    }

    /// A closed store refuses writes with the store error (at once, also a
    /// write racing the close), and what it answered before is on disk for
    /// the next one.
    #[tokio::test]
    async fn close_finishes_the_queue_then_refuses() {
        let db = TempDb::new();
        let store = SqliteStore::open(&db.path(), 0).await.unwrap();
        store.append("agent:main:k", "main", rich_turn()).await.unwrap();
        store.close().await;
        for _ in 0..3 {
            let refused = store.append("agent:main:k", "main", vec![text("user", "late")]).await;
            assert!(matches!(refused, Err(AgentError::Store(m)) if m.contains("closed")));
            assert!(matches!(store.delete("agent:main:k").await, Err(AgentError::Store(_))));
        }
        store.close().await;
        let again = SqliteStore::open(&db.path(), 0).await.unwrap();
        assert_eq!(again.history("agent:main:k", None).await.unwrap(), numbered(rich_turn(), 0));
        again.close().await;
    }

    #[tokio::test]
    async fn lifecycle_and_sweep() {
        for cache in [0, 1 << 20] {
            let db = TempDb::new();
            let store = SqliteStore::open(&db.path(), cache).await.unwrap();
            fixtures::assert_lifecycle(&store).await;
            fixtures::assert_sweep(&store).await;
            store.close().await;
        }
    }

    /// Turns, compactions, a reset, a delete and a sweep through a cached store:
    /// after each, its context is what the database holds (read by a second,
    /// uncached store on the same file), and a cached turn reads nothing back.
    #[tokio::test]
    async fn the_cache_stays_exact() {
        let db = TempDb::new();
        let cached = SqliteStore::open(&db.path(), 1 << 20).await.unwrap();
        let plain = SqliteStore::open(&db.path(), 0).await.unwrap();
        let key = "agent:main:cached";
        let same = |label: String| {
            let (cached, plain) = (&cached, &plain);
            async move {
                let (a, b) = (cached.context(key).await.unwrap(), plain.context(key).await.unwrap());
                assert_eq!(a, b, "{label}");
            }
        };
        same("unknown session".into()).await;
        for i in 0..12 {
            cached
                .append(key, "main", vec![text("user", &format!("u{i}")), text("assistant", "a")])
                .await
                .unwrap();
            same(format!("after turn {i}")).await;
            if i % 4 == 3 {
                let start_seq = 2 * i as i64;
                let summary = (i % 8 == 3).then(|| fixtures::summary(&format!("S{i}")));
                cached.compact(key, Compaction { start_seq, summary }).await.unwrap();
                same(format!("after compaction {i}")).await;
            }
        }
        // A turn served from the cache shares the entries the previous one saw.
        let (a, b) = (cached.context(key).await.unwrap(), cached.context(key).await.unwrap());
        assert!(Arc::ptr_eq(&a.window[0], &b.window[0]));

        cached.reset(key).await.unwrap();
        same("after reset".into()).await;
        cached.append(key, "main", vec![text("user", "again")]).await.unwrap();
        same("after reset and a turn".into()).await;
        cached.delete(key).await.unwrap();
        same("after delete".into()).await;
        cached.append(key, "main", vec![text("user", "anew")]).await.unwrap();
        cached.context(key).await.unwrap();
        let later = crate::sessions::now_ms() + 1000;
        cached.sweep(Sweep { updated_before_ms: Some(later), ..Sweep::default() }).await.unwrap();
        same("after a sweep".into()).await;
        cached.close().await;
        plain.close().await;
    }

    /// Under appends that never pause, the log still starts over (the
    /// checkpointer copies, the writer completes between groups): it holds far
    /// fewer frames than the commits wrote (at least two pages each).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_log_starts_over_under_constant_appends() {
        let db = TempDb::new();
        let store = SqliteStore::open(&db.path(), 0).await.unwrap();
        let until = Instant::now() + 5 * CHECKPOINT_INTERVAL;
        let mut commits = 0i64;
        while Instant::now() < until {
            let key = format!("agent:main:s{}", commits % 50);
            store.append(&key, "main", vec![text("user", "hi"), text("assistant", "hello")]).await.unwrap();
            commits += 1;
        }
        let frames = store
            .write(|conn| conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(1)))
            .await
            .unwrap();
        assert!(commits > 100, "too few commits to tell: {commits}");
        assert!(
            frames < commits,
            "{frames} frames in the log after {commits} commits: it never started over"
        );
        store.close().await;
    }

    /// A database made by a release before compaction gets the new columns and
    /// keeps its sessions.
    #[tokio::test]
    async fn an_older_database_is_migrated() {
        let db = TempDb::new();
        let path = db.path();
        std::fs::create_dir_all(std::path::Path::new(&path).parent().unwrap()).unwrap();
        let old = SqlitePoolOptions::new()
            .connect_with(SqliteConnectOptions::new().filename(&path).create_if_missing(true))
            .await
            .unwrap();
        sqlx::raw_sql(
            "CREATE TABLE sessions (key TEXT PRIMARY KEY, agent_id TEXT NOT NULL, created_at_ms INTEGER NOT NULL,
                 updated_at_ms INTEGER NOT NULL, message_count INTEGER NOT NULL);
             CREATE TABLE messages (session_key TEXT NOT NULL REFERENCES sessions (key) ON DELETE CASCADE,
                 seq INTEGER NOT NULL, run_id TEXT NOT NULL, interrupted INTEGER NOT NULL,
                 created_at_ms INTEGER NOT NULL, body BLOB NOT NULL, PRIMARY KEY (session_key, seq));",
        )
        .execute(&old)
        .await
        .unwrap();
        let body = prost::Message::encode_to_vec(text("user", "old").message.message());
        sqlx::query("INSERT INTO sessions VALUES ('agent:main:old', 'main', 1, 1, 1)")
            .execute(&old)
            .await
            .unwrap();
        sqlx::query("INSERT INTO messages VALUES ('agent:main:old', 0, 'r', 0, 1, ?1)")
            .bind(body)
            .execute(&old)
            .await
            .unwrap();
        old.close().await;

        let store = SqliteStore::open(&path, 0).await.unwrap();
        let ctx = store.context("agent:main:old").await.unwrap();
        assert_eq!(ctx.window.len(), 1);
        assert_eq!(rows_text(&ctx.window[0]), "old");
        store.compact("agent:main:old", Compaction { start_seq: 1, summary: None }).await.unwrap();
        assert!(store.history("agent:main:old", None).await.unwrap()[0].compacted);
        store.close().await;
    }

    fn rows_text(m: &StoredMessage) -> String {
        services::messages::message_text(&m.message)
    }

    #[tokio::test]
    async fn empty_path_is_refused() {
        assert!(matches!(SqliteStore::open("", 0).await, Err(AgentError::Startup(_))));
    }
}
