//! The `sqlite:PATH` session store, the embedded default.
//!
//! Writes go through a single-connection pool: SQLite allows one writer at a
//! time anyway, and queueing writers on the pool (async, no thread blocked)
//! avoids SQLite's busy-handler sleeps under contention. Appends (the turns)
//! are group-committed: a writer task takes every append waiting and commits
//! them in one transaction, one multi-row insert per session, so many
//! sessions' turns share one commit. Reads use a separate small pool; with WAL
//! they never wait on the writer. sqlx runs every connection on its own worker
//! thread, so no SQLite call blocks the runtime.
//!
//! The contexts of recent sessions are cached in the process
//! ([`WindowCache`], `session.cacheMb`): this store is the only writer of its
//! file, so every change passes through it and keeps the cache exact, and a
//! turn reads its window from memory instead of the database.
//!
//! The writer task checkpoints the write-ahead log itself, between groups,
//! at most every [`CHECKPOINT_INTERVAL`], after answering the group before
//! (SQLite's own automatic checkpoint runs inside a commit, and its callers
//! wait for it). With the writer paused and reads rare (the cache), a
//! checkpoint copies the whole log and the next commit starts the log over,
//! so it stays bounded; a checkpoint on another connection would never catch
//! up with commits that do not stop. A restarted log is cut back to
//! [`JOURNAL_SIZE_LIMIT`].
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
use futures::future::BoxFuture;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::Connection as _;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

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

/// Followed by `VALUES (…), (…)` for each session of a group commit, then
/// [`UPSERT_SESSIONS_TAIL`].
const UPSERT_SESSIONS: &str =
    "INSERT INTO sessions (key, agent_id, created_at_ms, updated_at_ms, message_count) ";

const UPSERT_SESSIONS_TAIL: &str = "
ON CONFLICT (key) DO UPDATE SET
    updated_at_ms = max(updated_at_ms, excluded.updated_at_ms),
    message_count = message_count + excluded.message_count
RETURNING key, message_count";

/// Columns added after the first release, for databases created before them.
const MIGRATIONS: [(&str, &str, &str); 3] = [
    ("sessions", "context_seq", "ALTER TABLE sessions ADD COLUMN context_seq INTEGER NOT NULL DEFAULT 0"),
    ("sessions", "summary_seq", "ALTER TABLE sessions ADD COLUMN summary_seq INTEGER NOT NULL DEFAULT -1"),
    ("messages", "kind", "ALTER TABLE messages ADD COLUMN kind INTEGER NOT NULL DEFAULT 0"),
];

const INSERT_MESSAGE: &str = "
INSERT INTO messages (session_key, seq, run_id, interrupted, created_at_ms, body, kind)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";

/// Followed by `VALUES (…), (…)` for each message of an append.
const INSERT_MESSAGES: &str =
    "INSERT INTO messages (session_key, seq, run_id, interrupted, created_at_ms, body, kind) ";

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
    writer: SqlitePool,
    reader: SqlitePool,
    /// Appends waiting for the group commit.
    writes: mpsc::Sender<Write>,
    /// Recent sessions' contexts (kept exact by every write below).
    cache: Arc<WindowCache>,
}

/// Writes that may wait for the writer task (a full queue makes callers wait).
const WRITE_QUEUE: usize = 1024;
/// Appends committed in one transaction at most.
const GROUP_MAX: usize = 64;
/// Message rows per insert statement (7 parameters each, far below SQLite's
/// limit of 32,766); a group's sessions (5 each, at most [`GROUP_MAX`]) fit one.
const ROWS_PER_INSERT: usize = 500;

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
type Job = Box<dyn for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, ()> + Send>;

/// What the writer task is asked to do.
enum Write {
    Append(PendingAppend),
    Job(Job),
}

/// The writer task, the only writer of the database: commits every append
/// waiting (up to [`GROUP_MAX`]) in one transaction, runs the other writes
/// between groups, in order, and checkpoints the log. It holds its connection
/// while work keeps coming (returning a pooled connection costs a task hop
/// that the next transaction would wait for) and returns it when the queue is
/// empty. An append whose caller gave up (its future dropped, e.g. at the
/// store timeout) before its group began is not written. The cache learns of
/// each commit before its caller does, so the session's next turn finds it
/// there. Ends when the store is dropped.
async fn writer(pool: SqlitePool, mut rx: mpsc::Receiver<Write>, cache: Arc<WindowCache>) {
    let mut batch = Vec::with_capacity(GROUP_MAX);
    let mut checkpointed = tokio::time::Instant::now();
    let mut unchecked = false;
    loop {
        // Commits since the last checkpoint: one is due an interval after the
        // last, so wait no longer than that (recv_many is cancel-safe).
        let received = if unchecked {
            let due = checkpointed + CHECKPOINT_INTERVAL;
            tokio::time::timeout_at(due, rx.recv_many(&mut batch, GROUP_MAX)).await.ok()
        } else {
            Some(rx.recv_many(&mut batch, GROUP_MAX).await)
        };
        if received == Some(0) {
            break;
        }
        let mut conn = match pool.acquire().await {
            Ok(conn) => conn,
            Err(e) => {
                // Nothing was written since: nothing to checkpoint either.
                fail(&mut batch, &cache, &e.to_string());
                unchecked = false;
                continue;
            }
        };
        loop {
            // Due under load (between a batch and the one before, already
            // answered) or when the queue stayed quiet for the interval.
            if unchecked && checkpointed.elapsed() >= CHECKPOINT_INTERVAL {
                checkpoint(&mut conn).await;
                (checkpointed, unchecked) = (tokio::time::Instant::now(), false);
            }
            if batch.is_empty() {
                break;
            }
            run_batch(&mut conn, &mut batch, &cache).await;
            unchecked = true;
            while batch.len() < GROUP_MAX {
                match rx.try_recv() {
                    Ok(w) => batch.push(w),
                    Err(_) => break,
                }
            }
        }
    }
}

/// Runs a batch in order: each run of appends as one group commit, each job alone.
async fn run_batch(conn: &mut SqliteConnection, batch: &mut Vec<Write>, cache: &WindowCache) {
    let mut group = Vec::with_capacity(batch.len());
    let mut first_seqs = Vec::with_capacity(batch.len());
    let mut writes = batch.drain(..).peekable();
    while let Some(w) = writes.next() {
        match w {
            Write::Job(job) => job(conn).await,
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
                let outcome = commit_group(conn, &group, &mut first_seqs).await.map_err(|e| e.to_string());
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
}

/// Fails every write of a batch (the connection could not be had).
fn fail(batch: &mut Vec<Write>, cache: &WindowCache, why: &str) {
    for w in batch.drain(..) {
        match w {
            Write::Append(p) => {
                cache.invalidate(&p.key);
                let _ = p.done.send(Err(why.to_string()));
            }
            // Dropped unrun: its caller hears the store is unavailable.
            Write::Job(_) => {}
        }
    }
}

/// Commits a group in one transaction; `first_seqs` gets each append's first seq.
async fn commit_group(
    conn: &mut SqliteConnection,
    group: &[PendingAppend],
    first_seqs: &mut Vec<i64>,
) -> Result<(), sqlx::Error> {
    // Each statement is a round trip to the connection's thread, so the whole
    // group takes four whatever its size: begin, one upsert of every session
    // (appends to the same session share it), one insert of every message,
    // commit.
    let mut sessions: Vec<(&str, &str, i64)> = Vec::with_capacity(group.len());
    let mut slot: HashMap<&str, usize> = HashMap::with_capacity(group.len());
    for p in group {
        match slot.get(p.key.as_str()) {
            Some(&i) => sessions[i].2 += p.count,
            None => {
                slot.insert(&p.key, sessions.len());
                sessions.push((&p.key, &p.agent_id, p.count));
            }
        }
    }
    // IMMEDIATE takes the write lock up front: no lock upgrade can fail midway.
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
    let now = now_ms();
    let mut upsert = sqlx::QueryBuilder::new(UPSERT_SESSIONS);
    upsert.push_values(&sessions, |mut b, (key, agent_id, count)| {
        b.push_bind(*key).push_bind(*agent_id).push_bind(now).push_bind(now).push_bind(*count);
    });
    upsert.push(UPSERT_SESSIONS_TAIL);
    let totals: Vec<(String, i64)> = upsert.build_query_as().fetch_all(&mut *tx).await?;
    // message_count is bumped in the same transaction, so the total less what
    // this group adds is the session's next seq.
    let mut next_seq = vec![0; sessions.len()];
    for (key, total) in totals {
        if let Some(&i) = slot.get(key.as_str()) {
            next_seq[i] = total - sessions[i].2;
        }
    }
    let mut rows = Vec::with_capacity(group.iter().map(|p| p.rows.len()).sum());
    for p in group {
        let i = slot[p.key.as_str()];
        first_seqs.push(next_seq[i]);
        rows.extend(p.rows.iter().zip(next_seq[i]..).map(|(row, seq)| (p.key.as_str(), seq, row)));
        next_seq[i] += p.count;
    }
    for chunk in rows.chunks(ROWS_PER_INSERT) {
        let mut insert = sqlx::QueryBuilder::new(INSERT_MESSAGES);
        insert.push_values(chunk, |mut b, (key, seq, row)| {
            b.push_bind(*key)
                .push_bind(*seq)
                .push_bind(&row.run_id)
                .push_bind(row.interrupted)
                .push_bind(row.created_at_ms)
                .push_bind(&row.body)
                .push_bind(row.kind);
        });
        insert.build().execute(&mut *tx).await?;
    }
    tx.commit().await
}

/// Copies the write-ahead log into the database (`PASSIVE`: never waits for
/// a reader; what a reader still needs stays in the log until next time).
async fn checkpoint(conn: &mut SqliteConnection) {
    // (busy, frames in the log, frames copied)
    match sqlx::query_as::<_, (i64, i64, i64)>("PRAGMA wal_checkpoint(PASSIVE)").fetch_one(conn).await {
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
/// start moved (never back). Nothing for an unknown session.
async fn compact_tx(
    conn: &mut SqliteConnection,
    key: &str,
    start_seq: i64,
    summary: Option<NewRow>,
) -> Result<(), sqlx::Error> {
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
    let mut summary_seq = None;
    if let Some(row) = summary {
        let Some((count,)): Option<(i64,)> =
            sqlx::query_as(TAKE_SEQ).bind(key).fetch_optional(&mut *tx).await?
        else {
            return Ok(());
        };
        sqlx::query(INSERT_MESSAGE)
            .bind(key)
            .bind(count - 1)
            .bind(row.run_id)
            .bind(row.interrupted)
            .bind(row.created_at_ms)
            .bind(row.body)
            .bind(row.kind)
            .execute(&mut *tx)
            .await?;
        summary_seq = Some(count - 1);
    }
    sqlx::query(MOVE_CONTEXT).bind(key).bind(start_seq).bind(summary_seq).execute(&mut *tx).await?;
    tx.commit().await
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and its schema, with
    /// a context cache of `cache_bytes` (0: none). `:memory:` gives a private
    /// in-memory database.
    pub async fn open(path: &str, cache_bytes: usize) -> Result<Self, AgentError> {
        // Accept the URL form `sqlite://PATH` too (`sqlite:///abs` → `/abs`).
        let path = path.strip_prefix("//").unwrap_or(path);
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            AgentError::Startup(format!("session.store: cannot {what} sqlite database {path:?}: {e}"))
        };
        if path.is_empty() {
            return Err(AgentError::Startup("session.store: `sqlite:` needs a file path".into()));
        }

        let base = SqliteConnectOptions::new()
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true)
            .synchronous(SqliteSynchronous::Normal);

        let schema = |pool: SqlitePool| async move {
            migrate(&pool).await.map(|()| pool).map_err(|e| fail("create the schema of", &e))
        };
        let (writer, reader) = if path == ":memory:" {
            // One connection is the whole database: keep it forever and share it.
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .test_before_acquire(false)
                .idle_timeout(None)
                .max_lifetime(None)
                .connect_with(base.in_memory(true))
                .await
                .map_err(|e| fail("open", &e))?;
            let pool = schema(pool).await?;
            (pool.clone(), pool)
        } else {
            if let Some(dir) = Path::new(path).parent().filter(|d| !d.as_os_str().is_empty()) {
                tokio::fs::create_dir_all(dir).await.map_err(|e| fail("create the directory of", &e))?;
            }
            let options = base.filename(path).create_if_missing(true).journal_mode(SqliteJournalMode::Wal);
            // The writer task checkpoints between groups instead (`writer`).
            let writer_options = options
                .clone()
                .pragma("wal_autocheckpoint", "0")
                .pragma("journal_size_limit", JOURNAL_SIZE_LIMIT.to_string());
            let writer = SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                // A local file has no connection to go stale: no ping (a round
                // trip to the connection's thread) before every transaction.
                .test_before_acquire(false)
                .connect_with(writer_options)
                .await
                .map_err(|e| fail("open", &e))?;
            // Create the schema before any reader looks at the file.
            let writer = schema(writer).await?;
            let reader = SqlitePoolOptions::new()
                .max_connections(READ_CONNECTIONS)
                .min_connections(1)
                .test_before_acquire(false)
                .connect_with(options)
                .await
                .map_err(|e| fail("open", &e))?;
            (writer, reader)
        };
        let (writes, queue) = mpsc::channel(WRITE_QUEUE);
        let cache = Arc::new(WindowCache::new(cache_bytes));
        tokio::spawn(self::writer(writer.clone(), queue, Arc::clone(&cache)));
        Ok(SqliteStore { writer, reader, writes, cache })
    }

    /// Runs `job` on the writer task's connection, in queue order with the
    /// appends, and returns what it did.
    async fn write<T, F>(&self, job: F) -> Result<T, AgentError>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, Result<T, sqlx::Error>> + Send + 'static,
    {
        let (done, outcome) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            Box::pin(async move {
                let _ = done.send(job(conn).await);
            })
        });
        let closed = || AgentError::Store("the session store is closed".into());
        self.writes.send(Write::Job(job)).await.map_err(|_| closed())?;
        Ok(outcome.await.map_err(|_| closed())??)
    }

    /// Closes all connections (waits for running statements). Later calls fail.
    pub async fn close(&self) {
        self.writer.close().await;
        self.reader.close().await;
    }
}

/// Creates the schema, adding the columns a database from an older release lacks.
async fn migrate(pool: &SqlitePool) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(SCHEMA).execute(pool).await?;
    for (table, column, alter) in MIGRATIONS {
        let (present,): (bool,) =
            sqlx::query_as("SELECT EXISTS (SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2)")
                .bind(table)
                .bind(column)
                .fetch_one(pool)
                .await?;
        if !present {
            sqlx::query(alter).execute(pool).await?;
        }
    }
    Ok(())
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
        let closed = || AgentError::Store("the session store is closed".into());
        self.writes.send(Write::Append(pending)).await.map_err(|_| closed())?;
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
        let summary = match c.summary {
            Some(m) => rows::encode(&[StoredMessage { summary: true, ..m }])?.1.pop(),
            None => None,
        };
        let (key, cache) = (key.to_owned(), Arc::clone(&self.cache));
        self.write(move |conn: &mut SqliteConnection| -> BoxFuture<'_, Result<(), sqlx::Error>> {
            Box::pin(async move {
                let committed = compact_tx(conn, &key, c.start_seq, summary).await;
                cache.invalidate(&key);
                committed
            })
        })
        .await
    }

    async fn reset(&self, key: &str) -> Result<bool, AgentError> {
        let (key, cache) = (key.to_owned(), Arc::clone(&self.cache));
        self.write(move |conn: &mut SqliteConnection| -> BoxFuture<'_, Result<bool, sqlx::Error>> {
            Box::pin(async move {
                let reset = async {
                    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
                    sqlx::query(CLEAR_MESSAGES).bind(&key).execute(&mut *tx).await?;
                    let done = sqlx::query(RESET_SESSION).bind(&key).bind(now_ms()).execute(&mut *tx).await?;
                    tx.commit().await?;
                    Ok(done.rows_affected() > 0)
                };
                let outcome = reset.await;
                cache.invalidate(&key);
                outcome
            })
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<bool, AgentError> {
        let (key, cache) = (key.to_owned(), Arc::clone(&self.cache));
        self.write(move |conn: &mut SqliteConnection| -> BoxFuture<'_, Result<bool, sqlx::Error>> {
            Box::pin(async move {
                let done = sqlx::query(DELETE_SESSION).bind(&key).execute(conn).await;
                cache.invalidate(&key);
                Ok(done?.rows_affected() > 0)
            })
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
                    .write(move |conn: &mut SqliteConnection| -> BoxFuture<'_, Result<u64, sqlx::Error>> {
                        Box::pin(async move {
                            let done = sqlx::query(stmt).bind(arg).bind(SWEEP_BATCH).execute(conn).await;
                            // Which sessions went is not known here: drop them all.
                            if !matches!(&done, Ok(d) if d.rows_affected() == 0) {
                                cache.clear();
                            }
                            Ok(done?.rows_affected())
                        })
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
            sqlx::query("UPDATE sessions SET updated_at_ms = ?1 WHERE key = ?2")
                .bind(t)
                .bind(key)
                .execute(&store.writer)
                .await
                .unwrap();
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
    /// callers) and one to another: one upsert each, seqs in group order.
    #[tokio::test]
    async fn a_group_shares_one_upsert_per_session() {
        let store = SqliteStore::open(":memory:", 0).await.unwrap();
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
        let mut first_seqs = Vec::new();
        let mut conn = store.writer.acquire().await.unwrap();
        commit_group(&mut conn, &group, &mut first_seqs).await.unwrap();
        drop(conn);
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
        sqlx::query("UPDATE messages SET body = x'ffffffff'").execute(&store.writer).await.unwrap();
        assert!(matches!(store.history("agent:main:k", None).await, Err(AgentError::Store(_))));
        store.close().await;
    }

    #[tokio::test]
    async fn in_memory_database_works() {
        let store = SqliteStore::open(":memory:", 0).await.unwrap();
        store.append("agent:main:k", "main", rich_turn()).await.unwrap();
        assert_eq!(
            store.history("agent:main:k", Some(1)).await.unwrap(),
            numbered(rich_turn(), 0)[2..].to_vec()
        );
        store.close().await;
    }

    #[tokio::test]
    async fn lifecycle_and_sweep() {
        for cache in [0, 1 << 20] {
            let store = SqliteStore::open(":memory:", cache).await.unwrap();
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
        let body = prost::Message::encode_to_vec(&*text("user", "old").message);
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
