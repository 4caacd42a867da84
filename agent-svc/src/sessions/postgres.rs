//! The `postgres://…` session store: replicas of agent-svc share sessions, and
//! [`SessionStore::lock_turn`] keeps turns of one session serialized across
//! them with a PostgreSQL advisory lock.

use super::rows::{self, MarkedRow, SummaryRow};
use super::{
    now_ms, Compaction, Context, Page, SessionStore, SessionSummary, StoredMessage, Sweep, TurnLock,
};
use crate::error::AgentError;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions as _, Connection as _};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

/// Connections for reads and appends.
const DATA_CONNECTIONS: u32 = 16;

/// Connections holding turn locks: one per running turn of a stable session
/// on this replica. Waiting turns hold none.
const LOCK_CONNECTIONS: u32 = 64;

/// How long a call may wait for a pooled connection (or a new one).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// How long `open` retries a server that refuses connections.
const CONNECT_RETRY_FOR: Duration = Duration::from_secs(10);

/// Polling bounds while another replica holds a session's turn lock.
const LOCK_POLL_MIN: Duration = Duration::from_millis(5);
const LOCK_POLL_MAX: Duration = Duration::from_millis(100);

/// Serializes schema creation when several replicas start at once
/// (`CREATE … IF NOT EXISTS` is not safe against concurrent creators).
const SCHEMA_LOCK_ID: i64 = 0x6f70_656e_636c_6177; // "openclaw"

/// Lets one replica at a time run the retention sweep.
const SWEEP_LOCK_ID: i64 = 0x6f70_656e_7377_6570; // "opensweep"

/// Rows deleted per sweep statement (one transaction each).
const SWEEP_BATCH: i64 = 500;

// The last three add what a database from an older release lacks.
const SCHEMA: [&str; 7] = [
    "CREATE TABLE IF NOT EXISTS sessions (
        key           TEXT   PRIMARY KEY,
        agent_id      TEXT   NOT NULL,
        created_at_ms BIGINT NOT NULL,
        updated_at_ms BIGINT NOT NULL,
        message_count BIGINT NOT NULL
    )",
    "CREATE TABLE IF NOT EXISTS messages (
        session_key   TEXT    NOT NULL REFERENCES sessions (key) ON DELETE CASCADE,
        seq           BIGINT  NOT NULL,
        run_id        TEXT    NOT NULL,
        interrupted   BOOLEAN NOT NULL,
        created_at_ms BIGINT  NOT NULL,
        body          BYTEA   NOT NULL,
        PRIMARY KEY (session_key, seq)
    )",
    "CREATE INDEX IF NOT EXISTS sessions_by_updated ON sessions (updated_at_ms DESC, key)",
    "CREATE INDEX IF NOT EXISTS sessions_by_agent_updated ON sessions (agent_id, updated_at_ms DESC, key)",
    "ALTER TABLE sessions ADD COLUMN IF NOT EXISTS context_seq BIGINT NOT NULL DEFAULT 0",
    "ALTER TABLE sessions ADD COLUMN IF NOT EXISTS summary_seq BIGINT NOT NULL DEFAULT -1",
    "ALTER TABLE messages ADD COLUMN IF NOT EXISTS kind INTEGER NOT NULL DEFAULT 0",
];

// One statement, so one round trip and atomic on its own: the upsert locks the
// session row (concurrent appends from other replicas wait on it) and returns
// the new count, from which the inserted messages take consecutive seqs.
const APPEND: &str = "
WITH s AS (
    INSERT INTO sessions (key, agent_id, created_at_ms, updated_at_ms, message_count)
    VALUES ($1, $2, $3, $3, $4)
    ON CONFLICT (key) DO UPDATE SET
        updated_at_ms = GREATEST(sessions.updated_at_ms, EXCLUDED.updated_at_ms),
        message_count = sessions.message_count + EXCLUDED.message_count
    RETURNING message_count
)
INSERT INTO messages (session_key, seq, run_id, interrupted, created_at_ms, body, kind)
SELECT $1, s.message_count - $4 + m.ord - 1, m.run_id, m.interrupted, m.created_at_ms, m.body, m.kind
FROM s, UNNEST($5::text[], $6::boolean[], $7::bigint[], $8::bytea[], $9::integer[])
    WITH ORDINALITY AS m (run_id, interrupted, created_at_ms, body, kind, ord)";

// LIMIT NULL means no limit.
const SELECT_PAGE: &str = "
SELECT m.seq, m.run_id, m.interrupted, m.created_at_ms, m.body, m.kind, s.context_seq, s.summary_seq
FROM sessions s JOIN messages m ON m.session_key = s.key
WHERE s.key = $1 AND m.seq < $2 ORDER BY m.seq DESC LIMIT $3";

/// The context: the messages from `context_seq` on, and the summary when it lies
/// before them. Two index range lookups, not one `OR`: with the `OR` the
/// planner reads every message the session ever had (compacted ones too), so a
/// turn cost more the longer the session had lived.
const SELECT_CONTEXT: &str = "
SELECT m.seq, m.run_id, m.interrupted, m.created_at_ms, m.body, m.kind, s.context_seq, s.summary_seq
FROM sessions s JOIN messages m ON m.session_key = s.key AND m.seq >= s.context_seq
WHERE s.key = $1
UNION ALL
SELECT m.seq, m.run_id, m.interrupted, m.created_at_ms, m.body, m.kind, s.context_seq, s.summary_seq
FROM sessions s JOIN messages m ON m.session_key = s.key AND m.seq = s.summary_seq
WHERE s.key = $1 AND s.summary_seq < s.context_seq
ORDER BY 1";

const TAKE_SEQ: &str =
    "UPDATE sessions SET message_count = message_count + 1 WHERE key = $1 RETURNING message_count";

const INSERT_SUMMARY: &str = "
INSERT INTO messages (session_key, seq, run_id, interrupted, created_at_ms, body, kind)
VALUES ($1, $2, $3, false, $4, $5, $6)";

const MOVE_CONTEXT: &str = "
UPDATE sessions SET context_seq = GREATEST(context_seq, $2), summary_seq = COALESCE($3, summary_seq)
WHERE key = $1";

const CLEAR_MESSAGES: &str = "DELETE FROM messages WHERE session_key = $1";

const RESET_SESSION: &str = "
UPDATE sessions SET message_count = 0, context_seq = 0, summary_seq = -1,
    updated_at_ms = GREATEST(updated_at_ms, $2) WHERE key = $1";

const DELETE_SESSION: &str = "DELETE FROM sessions WHERE key = $1";

const TRY_SWEEP_LOCK: &str = "SELECT pg_try_advisory_xact_lock($1)";

const SWEEP_OLD: &str = "
DELETE FROM sessions WHERE key IN (SELECT key FROM sessions WHERE updated_at_ms < $1 LIMIT $2)";

const SWEEP_EXCESS: &str = "
DELETE FROM sessions WHERE key IN (
    SELECT key FROM (
        SELECT key, row_number() OVER (PARTITION BY agent_id ORDER BY updated_at_ms DESC, key) AS n
        FROM sessions) AS ranked
    WHERE n > $1 LIMIT $2)";

const COUNT: &str = "SELECT count(*) FROM sessions";

const LIST_ALL: &str = "
SELECT key, agent_id, created_at_ms, updated_at_ms, message_count FROM sessions
ORDER BY updated_at_ms DESC, key LIMIT $1";

const LIST_AGENT: &str = "
SELECT key, agent_id, created_at_ms, updated_at_ms, message_count FROM sessions
WHERE agent_id = $1 ORDER BY updated_at_ms DESC, key LIMIT $2";

const EXISTS: &str = "SELECT EXISTS (SELECT 1 FROM sessions WHERE key = $1)";

const TRY_LOCK: &str = "SELECT pg_try_advisory_lock(hashtextextended($1, 0))";

/// PostgreSQL-backed transcript store, shareable between replicas.
pub struct PostgresStore {
    data: PgPool,
    locks: PgPool,
    /// One permit per lock connection: a turn that finds none is refused at
    /// once (overloaded) instead of waiting for a connection.
    lock_slots: Arc<tokio::sync::Semaphore>,
}

impl PostgresStore {
    /// Connects to `url` (`postgres://user:pass@host:port/db?…`) and creates the
    /// schema if needed.
    pub async fn open(url: &str) -> Result<Self, AgentError> {
        Self::open_retrying(url, CONNECT_RETRY_FOR).await
    }

    async fn open_retrying(url: &str, retry_for: Duration) -> Result<Self, AgentError> {
        // Errors name the server but never the URL: it may carry a password.
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| AgentError::Startup(format!("session.store: invalid postgres URL: {e}")))?
            .application_name("openclaw-agent-svc");
        let target = format!(
            "postgres database {:?} on {}:{}",
            options.get_database().unwrap_or_default(),
            options.get_host(),
            options.get_port()
        );
        let fail = |what: &str, e: sqlx::Error| {
            AgentError::Startup(format!("session.store: cannot {what} {target}: {e}"))
        };

        // One direct connection first: it reports the real cause (refused,
        // auth, unknown database) where the pool would only time out, and it
        // rides out a server that is still starting (compose).
        let started = std::time::Instant::now();
        loop {
            match options.connect().await {
                Ok(conn) => {
                    let _ = conn.close().await;
                    break;
                }
                Err(sqlx::Error::Io(_)) if started.elapsed() < retry_for => {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => return Err(fail("connect to", e)),
            }
        }
        let data = PgPoolOptions::new()
            .max_connections(DATA_CONNECTIONS)
            // A server that went away must fail calls quickly, not after sqlx's 30 s.
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .min_connections(1)
            .connect_with(options.clone())
            .await
            .map_err(|e| fail("connect to", e))?;
        create_schema(&data).await.map_err(|e| fail("create the schema in", e))?;
        let locks = PgPoolOptions::new()
            .max_connections(LOCK_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            // Whatever happened to a lock connection (a guard dropped, a try
            // cancelled after the server granted it), it goes back unlocked.
            .after_release(|conn, _| {
                Box::pin(async move {
                    sqlx::query("SELECT pg_advisory_unlock_all()").execute(&mut *conn).await?;
                    Ok(true)
                })
            })
            .connect_lazy_with(options);
        let lock_slots = Arc::new(tokio::sync::Semaphore::new(LOCK_CONNECTIONS as usize));
        Ok(PostgresStore { data, locks, lock_slots })
    }

    /// Closes all connections (releasing any held turn locks). Later calls fail.
    pub async fn close(&self) {
        self.locks.close().await;
        self.data.close().await;
    }
}

async fn create_schema(pool: &PgPool) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(SCHEMA_LOCK_ID).execute(&mut *tx).await?;
    for stmt in SCHEMA {
        sqlx::query(stmt).persistent(false).execute(&mut *tx).await?;
    }
    tx.commit().await
}

#[async_trait::async_trait]
impl SessionStore for PostgresStore {
    async fn append(
        &self,
        key: &str,
        agent_id: &str,
        messages: Vec<StoredMessage>,
    ) -> Result<(), AgentError> {
        if messages.is_empty() {
            return Ok(());
        }
        let (count, new_rows) = rows::encode(&messages)?;
        let n = new_rows.len();
        let (mut run_ids, mut interrupted, mut created, mut bodies, mut kinds) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for row in new_rows {
            run_ids.push(row.run_id);
            interrupted.push(row.interrupted);
            created.push(row.created_at_ms);
            bodies.push(row.body);
            kinds.push(row.kind);
        }
        sqlx::query(APPEND)
            .bind(key)
            .bind(agent_id)
            .bind(now_ms())
            .bind(count)
            .bind(run_ids)
            .bind(interrupted)
            .bind(created)
            .bind(bodies)
            .bind(kinds)
            .execute(&self.data)
            .await?;
        Ok(())
    }

    async fn history_page(&self, key: &str, page: Page) -> Result<Vec<StoredMessage>, AgentError> {
        let found: Vec<MarkedRow> = sqlx::query_as(SELECT_PAGE)
            .bind(key)
            .bind(page.before.unwrap_or(i64::MAX))
            .bind(page.limit.map(i64::from))
            .fetch_all(&self.data)
            .await?;
        let (newest_first, marks) = rows::unzip(found);
        rows::history(key, newest_first, marks)
    }

    async fn context(&self, key: &str) -> Result<Context, AgentError> {
        let found: Vec<MarkedRow> = sqlx::query_as(SELECT_CONTEXT).bind(key).fetch_all(&self.data).await?;
        let (in_order, marks) = rows::unzip(found);
        rows::context(key, in_order, marks)
    }

    async fn compact(&self, key: &str, c: Compaction) -> Result<(), AgentError> {
        let summary = match c.summary {
            Some(m) => rows::encode(&[StoredMessage { summary: true, ..m }])?.1.pop(),
            None => None,
        };
        let mut tx = self.data.begin().await?;
        let mut summary_seq = None;
        if let Some(row) = summary {
            let Some((count,)): Option<(i64,)> =
                sqlx::query_as(TAKE_SEQ).bind(key).fetch_optional(&mut *tx).await?
            else {
                return Ok(());
            };
            sqlx::query(INSERT_SUMMARY)
                .bind(key)
                .bind(count - 1)
                .bind(row.run_id)
                .bind(row.created_at_ms)
                .bind(row.body)
                .bind(row.kind)
                .execute(&mut *tx)
                .await?;
            summary_seq = Some(count - 1);
        }
        sqlx::query(MOVE_CONTEXT).bind(key).bind(c.start_seq).bind(summary_seq).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn reset(&self, key: &str) -> Result<bool, AgentError> {
        let mut tx = self.data.begin().await?;
        sqlx::query(CLEAR_MESSAGES).bind(key).execute(&mut *tx).await?;
        let done = sqlx::query(RESET_SESSION).bind(key).bind(now_ms()).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(done.rows_affected() > 0)
    }

    async fn delete(&self, key: &str) -> Result<bool, AgentError> {
        let done = sqlx::query(DELETE_SESSION).bind(key).execute(&self.data).await?;
        Ok(done.rows_affected() > 0)
    }

    async fn sweep(&self, sweep: Sweep) -> Result<u64, AgentError> {
        let mut total = 0;
        for (stmt, arg) in
            [(SWEEP_OLD, sweep.updated_before_ms), (SWEEP_EXCESS, sweep.keep_per_agent.map(i64::from))]
        {
            let Some(arg) = arg else { continue };
            loop {
                // One replica sweeps at a time; the others skip this round.
                let mut tx = self.data.begin().await?;
                let (mine,): (bool,) =
                    sqlx::query_as(TRY_SWEEP_LOCK).bind(SWEEP_LOCK_ID).fetch_one(&mut *tx).await?;
                if !mine {
                    return Ok(total);
                }
                let n =
                    sqlx::query(stmt).bind(arg).bind(SWEEP_BATCH).execute(&mut *tx).await?.rows_affected();
                tx.commit().await?;
                total += n;
                if n < SWEEP_BATCH as u64 {
                    break;
                }
            }
        }
        Ok(total)
    }

    async fn count(&self) -> Result<u64, AgentError> {
        let (n,): (i64,) = sqlx::query_as(COUNT).fetch_one(&self.data).await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn list(&self, agent_id: Option<&str>, limit: u32) -> Result<Vec<SessionSummary>, AgentError> {
        let found: Vec<SummaryRow> = match agent_id {
            Some(agent) => {
                sqlx::query_as(LIST_AGENT).bind(agent).bind(i64::from(limit)).fetch_all(&self.data).await?
            }
            None => sqlx::query_as(LIST_ALL).bind(i64::from(limit)).fetch_all(&self.data).await?,
        };
        Ok(found.into_iter().map(rows::summary).collect())
    }

    async fn exists(&self, key: &str) -> Result<bool, AgentError> {
        let (found,): (bool,) = sqlx::query_as(EXISTS).bind(key).fetch_one(&self.data).await?;
        Ok(found)
    }

    async fn lock_turn(&self, key: &str) -> Result<TurnLock, AgentError> {
        // Polling with try-lock instead of a blocking pg_advisory_lock: a
        // waiting turn holds no connection, and dropping this future never
        // leaves a server-side wait behind.
        let mut pause = LOCK_POLL_MIN;
        loop {
            let slot = self.lock_slots.clone().try_acquire_owned().map_err(|_| {
                metrics::counter!("openclaw_agent_overload_refusals_total", "limit" => "session_locks").increment(1);
                AgentError::Overloaded(format!(
                    "This agent-svc replica holds its maximum of {LOCK_CONNECTIONS} session turns; retry shortly."
                ))
            })?;
            let mut conn = self.locks.acquire().await?;
            let (locked,): (bool,) = sqlx::query_as(TRY_LOCK).bind(key).fetch_one(&mut *conn).await?;
            if locked {
                // Dropping the connection returns it to the pool, which unlocks it.
                return Ok(TurnLock::new((conn, slot)));
            }
            drop((conn, slot));
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(LOCK_POLL_MAX);
        }
    }
}

/// These tests need a server: `OPENCLAW_TEST_POSTGRES_URL` names a database
/// the tests may create tables in. Without it they fail, saying how to get one:
/// a test that passes without running would hide a broken store.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::sessions::fixtures::{self, numbered, rich_turn, text};
    use std::sync::Arc;

    const URL_ENV: &str = "OPENCLAW_TEST_POSTGRES_URL";

    async fn store() -> PostgresStore {
        PostgresStore::open(&url()).await.unwrap_or_else(|e| panic!("{URL_ENV}: {e}"))
    }

    /// A store in a schema of its own, for tests that look at every session
    /// (sweeps, counts); dropped by [`drop_private`].
    async fn private_store() -> (PostgresStore, String) {
        let url = url();
        let schema = format!("t{}", uuid::Uuid::new_v4().simple());
        let mut conn = PgConnectOptions::from_str(&url).unwrap().connect().await.unwrap();
        sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(&mut conn).await.unwrap();
        let sep = if url.contains('?') { '&' } else { '?' };
        let store =
            PostgresStore::open(&format!("{url}{sep}options=-c%20search_path%3D{schema}")).await.unwrap();
        (store, schema)
    }

    async fn drop_private(store: PostgresStore, schema: &str) {
        store.close().await;
        let mut conn = PgConnectOptions::from_str(&url()).unwrap().connect().await.unwrap();
        sqlx::query(&format!("DROP SCHEMA {schema} CASCADE")).execute(&mut conn).await.unwrap();
    }

    fn url() -> String {
        std::env::var(URL_ENV).unwrap_or_else(|_| {
            panic!(
                "{URL_ENV} is not set. Run the tests with `scripts/test.sh`, which starts a throwaway \
                 PostgreSQL, or start one with `eval \"$(scripts/start-test-postgres.sh)\"` in the shell \
                 that runs cargo, or point {URL_ENV} at a database the tests may create tables in."
            )
        })
    }

    #[tokio::test]
    async fn pg_lifecycle_and_sweep() {
        let (store, schema) = private_store().await;
        fixtures::assert_lifecycle(&store).await;
        fixtures::assert_sweep(&store).await;
        drop_private(store, &schema).await;
    }

    /// A key no other test run uses, since the database is shared.
    fn key(name: &str) -> String {
        format!("agent:main:{name}-{}", uuid::Uuid::new_v4())
    }

    #[tokio::test]
    async fn open_reports_the_cause_without_the_password() {
        // Port 1 on loopback refuses at once.
        let err =
            match PostgresStore::open_retrying("postgres://u:hunter2@127.0.0.1:1/db", Duration::ZERO).await {
                Err(AgentError::Startup(msg)) => msg,
                _ => panic!("expected a startup error"),
            };
        assert!(!err.contains("hunter2"), "{err}");
        assert!(err.contains("127.0.0.1:1") && err.contains("\"db\""), "{err}");
        assert!(matches!(PostgresStore::open("postgres://[bad").await, Err(AgentError::Startup(_))));
    }

    #[tokio::test]
    async fn pg_round_trip_history_and_list() {
        let store = store().await;
        let k = key("rt");
        assert!(!store.exists(&k).await.unwrap());
        store.append(&k, "main", rich_turn()).await.unwrap();
        store.append(&k, "main", vec![text("user", "more")]).await.unwrap();
        assert!(store.exists(&k).await.unwrap());
        let mut all = rich_turn();
        all.push(text("user", "more"));
        let all = numbered(all, 0);
        assert_eq!(store.history(&k, None).await.unwrap(), all);
        assert_eq!(store.history(&k, Some(2)).await.unwrap(), all[2..].to_vec());
        assert!(store.history(&k, Some(0)).await.unwrap().is_empty());

        // The most recent session of a fresh agent id is ours.
        let agent = format!("a{}", uuid::Uuid::new_v4().simple());
        let k2 = format!("agent:{agent}:x");
        store.append(&k2, &agent, vec![text("user", "x")]).await.unwrap();
        let listed = store.list(Some(&agent), 10).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].key, k2);
        assert_eq!(listed[0].message_count, 1);
        // Other tests write to the same database concurrently: check the order only.
        let recent = store.list(None, 50).await.unwrap();
        assert!(!recent.is_empty() && recent.len() <= 50);
        assert!(recent.windows(2).all(|w| w[0].updated_at_ms >= w[1].updated_at_ms));
        store.close().await;
    }

    #[tokio::test]
    async fn pg_concurrent_appends_across_stores_all_land() {
        let a = store().await;
        // A second store stands in for a second replica.
        let b = store().await;
        let (a, b) = (Arc::new(a), Arc::new(b));
        let shared = key("shared");
        let mut tasks = Vec::new();
        for t in 0..8 {
            let s = if t % 2 == 0 { Arc::clone(&a) } else { Arc::clone(&b) };
            let shared = shared.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..10 {
                    s.append(&shared, "main", vec![text("user", &format!("{t}-{i}"))]).await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(a.history(&shared, None).await.unwrap().len(), 80);
        a.close().await;
        b.close().await;
    }

    #[tokio::test]
    async fn pg_turn_lock_serializes_across_stores() {
        let a = store().await;
        let b = store().await;
        let k = key("lock");
        let held = a.lock_turn(&k).await.unwrap();
        let mut waiting = Box::pin(b.lock_turn(&k));
        // b cannot get it while a holds it.
        assert!(tokio::time::timeout(Duration::from_millis(150), &mut waiting).await.is_err());
        // Another session is independent.
        drop(b.lock_turn(&key("other")).await.unwrap());
        drop(held);
        let got = tokio::time::timeout(Duration::from_secs(5), waiting).await.unwrap().unwrap();
        drop(got);
        // Released again: a can take it.
        drop(tokio::time::timeout(Duration::from_secs(5), a.lock_turn(&k)).await.unwrap().unwrap());
        a.close().await;
        b.close().await;
    }

    /// Overload is a refusal at once (`overloaded`, retryable), never a wait for
    /// a lock connection that ends in an internal error.
    #[tokio::test]
    async fn pg_turns_beyond_the_lock_slots_are_refused_at_once() {
        let mut s = store().await;
        s.lock_slots = Arc::new(tokio::sync::Semaphore::new(2));
        let held = [s.lock_turn(&key("slot-a")).await.unwrap(), s.lock_turn(&key("slot-b")).await.unwrap()];
        let started = std::time::Instant::now();
        assert!(matches!(s.lock_turn(&key("slot-c")).await, Err(AgentError::Overloaded(_))));
        assert!(started.elapsed() < Duration::from_secs(1), "refused at once");
        drop(held);
        drop(s.lock_turn(&key("slot-c")).await.unwrap());
        s.close().await;
    }
}
