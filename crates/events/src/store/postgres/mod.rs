//! The PostgreSQL backend (sqlx).
//!
//! Ordering without holes: positions do not come from a sequence (sequence
//! values commit out of order, so a reader could see position 11 before 10 and
//! skip 10 for ever). Every appending transaction first locks the one row of
//! `log_head`, takes the next positions from it, inserts, moves the head and
//! commits. PostgreSQL makes a commit visible before it releases the
//! transaction's row locks, so the next writer — in this process or any other —
//! can only take positions after the previous ones are visible: readers see
//! positions strictly in order, and a failed append leaves no hole.
//!
//! Group commit: each store instance has one writer task that takes every
//! append waiting and commits them together (one lock, one fsync), normally in
//! one round trip (see [`commit_batch`]).
//! Readers learn of new commits through `LISTEN/NOTIFY`, with polling as a fallback.

mod forwarding;

pub use forwarding::ForwardConfig;

use super::page::{Stored, StoredPage, STORED_BYTES};
use super::queue::{submit, AppendRequest, Groups};
use super::{classify_existing, validate_redactions, EventStore, Existing, Redaction, StoreStats};
use crate::chain::{self, ChainRecord, Digest};
use crate::envelope::{
    from_micros, to_micros, AppendResult, EventData, ExpectedVersion, Metadata, RecordedEvent, StreamId,
};
use crate::error::StoreError;
use crate::seal::Opening;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions, PgRow};
use sqlx::{Connection, PgPool, Row};
use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use uuid::Uuid;

const BACKEND: &str = "postgres";

/// How to connect a [`PostgresStore`].
#[derive(Debug, Clone)]
pub struct PostgresConfig {
    pub url: String,
    /// Schema holding the log tables (created if missing); `None`: the connection's default.
    pub schema: Option<String>,
    pub max_connections: u32,
    /// Share one transaction among all appends waiting (default). Off: one per append.
    pub group_commit: bool,
    /// Forward appends to one writer among the log's replicas (see [`ForwardConfig`]);
    /// `None`: this instance appends on its own.
    pub forward: Option<ForwardConfig>,
}

impl PostgresConfig {
    pub fn new(url: impl Into<String>) -> Self {
        PostgresConfig { url: url.into(), schema: None, max_connections: 10, group_commit: true, forward: None }
    }

    /// Parses a `postgres://` URL: what libpq takes, plus the options of forwarding to one
    /// writer among the log's replicas, which are taken out of it: `secret_file` (a file
    /// holding the secret every replica holds, at least 32 bytes; it turns forwarding on),
    /// `listen` (`ip:port` where the writer takes forwarded appends; default
    /// `127.0.0.1:0`) and `advertise` (`host:port` the others dial; default the address
    /// bound).
    pub fn from_url(url: &str) -> Result<Self, StoreError> {
        let invalid = |reason: String| StoreError::InvalidUrl { url: redact(url), reason };
        let Some((base, query)) = url.split_once('?') else { return Ok(PostgresConfig::new(url)) };
        let (mut secret, mut listen, mut advertise) = (None, None, None);
        let mut kept = url::form_urlencoded::Serializer::new(String::new());
        for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
            match &*key {
                "secret_file" => {
                    let path = std::path::PathBuf::from(&*value);
                    let bytes = std::fs::read(&path)
                        .map_err(|e| invalid(format!("cannot read the forwarding secret {}: {e}", path.display())))?;
                    if bytes.len() < forwarding::MIN_SECRET_BYTES {
                        return Err(invalid(format!(
                            "the forwarding secret {} is {} bytes, fewer than {}",
                            path.display(),
                            bytes.len(),
                            forwarding::MIN_SECRET_BYTES
                        )));
                    }
                    secret = Some(bytes);
                }
                "listen" => {
                    listen = Some(
                        value.parse().map_err(|_| invalid(format!("listen '{value}' is not an ip:port address")))?,
                    )
                }
                "advertise" => advertise = Some(value.into_owned()),
                _ => {
                    kept.append_pair(&key, &value);
                }
            }
        }
        let kept = kept.finish();
        let mut config = PostgresConfig::new(if kept.is_empty() { base.to_string() } else { format!("{base}?{kept}") });
        config.forward = match secret {
            Some(secret) => Some(ForwardConfig {
                secret,
                listen: listen.unwrap_or_else(|| std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
                advertise,
            }),
            None if listen.is_some() || advertise.is_some() => {
                return Err(invalid("listen and advertise are options of forwarding, which needs secret_file".into()))
            }
            None => None,
        };
        Ok(config)
    }

    pub fn with_schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = Some(schema.into());
        self
    }
}

/// The PostgreSQL event store. Many instances (in many processes) may share one log.
pub struct PostgresStore {
    pool: PgPool,
    head_tx: watch::Sender<u64>,
    /// The log's writer, when this instance forwards its appends to one.
    forwarding: Option<std::sync::Arc<forwarding::Forwarding>>,
    /// What leases are scoped to: the schema (advisory locks are database-wide).
    lease_scope: String,
    writer: mpsc::Sender<AppendRequest>,
    head: watch::Receiver<u64>,
    listener: JoinHandle<()>,
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

fn db_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::unavailable(BACKEND, e)
}

fn valid_schema(schema: &str) -> bool {
    !schema.is_empty()
        && schema.len() <= 40
        && schema.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !schema.starts_with(|c: char| c.is_ascii_digit())
}

impl PostgresStore {
    /// The key store of this log's schema (see [`crate::seal`]).
    pub fn keys(&self) -> crate::seal::PostgresKeys {
        crate::seal::PostgresKeys::new(self.pool.clone())
    }

    /// Connects, creates the schema if asked, and runs the migrations in `migrations/postgres`.
    pub async fn connect(config: PostgresConfig) -> Result<Self, StoreError> {
        let invalid = |reason: String| StoreError::InvalidUrl { url: redact(&config.url), reason };
        let mut options = PgConnectOptions::from_str(&config.url).map_err(|e| invalid(e.to_string()))?;
        // Appends rely on READ COMMITTED (a writer blocked on log_head reads the new head
        // once it gets the lock); a server or role default of REPEATABLE READ or
        // SERIALIZABLE would fail them with serialization errors instead.
        options = options.options([("default_transaction_isolation", "read\\ committed")]);
        // Plan every statement for its parameters: a plan cached while the log was small
        // scans the whole table for `event_id = ANY($1)` long after it has grown.
        options = options.options([("plan_cache_mode", "force_custom_plan")]);
        // One direct connection first: a pool only says it timed out, this names the cause.
        let probe = sqlx::PgConnection::connect_with(&options).await.map_err(|e| StoreError::Unavailable {
            backend: "postgres",
            message: format!(
                "cannot connect to PostgreSQL at {}:{} (database '{}', user '{}'): {e}",
                options.get_host(),
                options.get_port(),
                options.get_database().unwrap_or("(default)"),
                options.get_username(),
            ),
        })?;
        probe.close().await.map_err(db_err)?;
        if let Some(schema) = &config.schema {
            if !valid_schema(schema) {
                return Err(invalid(format!("schema '{schema}' is not a lower-case identifier of at most 40 bytes")));
            }
            let mut conn = sqlx::PgConnection::connect_with(&options).await.map_err(db_err)?;
            sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {schema}")).execute(&mut conn).await.map_err(db_err)?;
            conn.close().await.map_err(db_err)?;
            options = options.options([("search_path", schema.as_str())]);
        }
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options.clone())
            .await
            .map_err(db_err)?;
        sqlx::migrate!("../../migrations/postgres").run(&pool).await.map_err(db_err)?;
        link_unchained(&pool).await.map_err(db_err)?;
        let head: i64 = sqlx::query_scalar("SELECT position FROM log_head").fetch_one(&pool).await.map_err(db_err)?;
        let (head_tx, head_rx) = watch::channel(head as u64);
        let channel = format!("perfect21_{}", config.schema.as_deref().unwrap_or("log"));
        // LISTEN holds its connection for good: it gets one of its own, outside the
        // appenders' pool (a pool of one would otherwise starve every append).
        let listen_pool = PgPoolOptions::new().max_connections(1).connect_lazy_with(options.clone());
        let listener = tokio::spawn(listen(listen_pool, channel.clone(), head_tx.clone()));
        let (tx, rx) = mpsc::channel(4096);
        tokio::spawn(run_writer(pool.clone(), rx, head_tx.clone(), channel, config.group_commit));
        // The schema the log is in, also when a URL's `search_path` option chose it.
        let lease_scope = match &config.schema {
            Some(schema) => schema.clone(),
            None => sqlx::query_scalar::<_, Option<String>>("SELECT current_schema()")
                .fetch_one(&pool)
                .await
                .map_err(db_err)?
                .unwrap_or_else(|| "public".into()),
        };
        let forwarding = match config.forward {
            Some(forward) => Some(forwarding::Forwarding::start(pool.clone(), &lease_scope, forward, &tx).await?),
            None => None,
        };
        Ok(PostgresStore { pool, head_tx, forwarding, lease_scope, writer: tx, head: head_rx, listener })
    }

    /// Whether this instance writes the log for its replicas (see [`ForwardConfig`]).
    pub fn is_writer(&self) -> bool {
        self.forwarding.as_ref().is_some_and(|f| f.is_writer())
    }

    /// The address of the writer this instance forwards its appends to, if it does.
    pub fn writer_address(&self) -> Option<String> {
        self.forwarding.as_ref().and_then(|f| f.target())
    }

    /// How many appends this instance forwarded to the writer (and the writer made).
    pub fn forwarded_appends(&self) -> u64 {
        self.forwarding.as_ref().map_or(0, |f| f.forwarded())
    }

    /// The connection pool (for tools and benchmarks that share it).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// The URL without its password, for error messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// Links the events a log recorded before it had a chain, in position order, under the
/// head lock (once, after the migration that adds the chain; a no-op afterwards).
async fn link_unchained(pool: &PgPool) -> Result<(), sqlx::Error> {
    let unlinked: bool = sqlx::query_scalar("SELECT chain_hash IS NULL FROM log_head WHERE id").fetch_one(pool).await?;
    if !unlinked {
        return Ok(());
    }
    let mut tx = pool.begin().await?;
    let still: bool =
        sqlx::query_scalar("SELECT chain_hash IS NULL FROM log_head WHERE id FOR UPDATE").fetch_one(&mut *tx).await?;
    if !still {
        return Ok(());
    }
    let mut previous = chain::GENESIS;
    let mut from = 1i64;
    loop {
        let rows = sqlx::query(&format!("{SELECT} WHERE position >= $1 ORDER BY position LIMIT 10000"))
            .bind(from)
            .fetch_all(&mut *tx)
            .await?;
        let Some(last) = rows.last() else { break };
        from = last.get::<i64, _>(0) + 1;
        let (mut positions, mut links) = (Vec::with_capacity(rows.len()), Vec::with_capacity(rows.len()));
        for row in &rows {
            let (position, content) = row_content(row)?;
            previous = chain::link(&previous, position, &content);
            positions.push(position as i64);
            links.push(previous.to_vec());
        }
        sqlx::query("UPDATE events e SET chain_hash = u.h FROM UNNEST($1::bigint[], $2::bytea[]) AS u(p, h) WHERE e.position = u.p")
            .bind(&positions)
            .bind(&links)
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query("UPDATE log_head SET chain_hash = $1 WHERE id").bind(previous.to_vec()).execute(&mut *tx).await?;
    tx.commit().await
}

/// A row of [`SELECT`]'s columns: its position and its content digest over the bytes as stored.
fn row_content(row: &PgRow) -> Result<(u64, Digest), sqlx::Error> {
    let position = row.try_get::<i64, _>(0)? as u64;
    let content = chain::content_digest(
        &row.try_get::<Uuid, _>(1)?,
        row.try_get::<&str, _>(2)?,
        row.try_get::<i64, _>(3)? as u64,
        row.try_get::<&str, _>(4)?,
        row.try_get::<i16, _>(5)? as u16,
        row.try_get::<DateTime<Utc>, _>(6)?,
        row.try_get::<&[u8], _>(7)?,
        row.try_get::<&[u8], _>(8)?,
    );
    Ok((position, content))
}

fn advance(head_tx: &watch::Sender<u64>, head: u64) {
    head_tx.send_if_modified(|h| {
        let moved = head > *h;
        *h = (*h).max(head);
        moved
    });
}

async fn listen(pool: PgPool, channel: String, head_tx: watch::Sender<u64>) {
    loop {
        let listener = async {
            let mut l = PgListener::connect_with(&pool).await?;
            l.listen(&channel).await?;
            Ok::<_, sqlx::Error>(l)
        };
        if let Ok(mut l) = listener.await {
            while let Ok(n) = l.recv().await {
                if let Ok(head) = n.payload().parse::<u64>() {
                    advance(&head_tx, head);
                }
            }
        }
        // Subscribers poll meanwhile; try again shortly.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// How long the writer waits for as many appends as its last group held (a group's
/// commit costs a round trip and a WAL flush whatever it holds).
const LINGER: Duration = Duration::from_millis(1);

async fn run_writer(
    pool: PgPool,
    rx: mpsc::Receiver<AppendRequest>,
    head_tx: watch::Sender<u64>,
    channel: String,
    group: bool,
) {
    let mut groups = Groups::new(rx, group, LINGER);
    let mut cache = VersionCache::default();
    while let Some(batch) = groups.next().await {
        match commit_batch(&pool, &batch, &channel, &mut cache).await {
            Ok((results, head)) => {
                advance(&head_tx, head);
                for (request, result) in batch.into_iter().zip(results) {
                    let _ = request.reply.send(result);
                }
            }
            Err(e) => {
                let message = format!(
                    "append transaction failed ({e}); if the commit itself was cut off the events may \
                     be recorded: retry with the same event ids, which is idempotent"
                );
                for request in batch {
                    let _ = request.reply.send(Err(db_err(&message)));
                }
            }
        }
    }
}

/// Rows to insert, column by column (for `UNNEST`).
#[derive(Default)]
struct Columns {
    position: Vec<i64>,
    event_id: Vec<Uuid>,
    stream_id: Vec<String>,
    stream_version: Vec<i64>,
    event_type: Vec<String>,
    schema_version: Vec<i16>,
    recorded_at: Vec<DateTime<Utc>>,
    metadata: Vec<Vec<u8>>,
    payload: Vec<Vec<u8>>,
    /// Each row's content digest, which its link covers (see [`chain`]).
    digest: Vec<Vec<u8>>,
}

type BatchOutcome = (Vec<Result<AppendResult, StoreError>>, u64);

/// SQLSTATE unique_violation.
const UNIQUE_VIOLATION: &str = "23505";

/// The last version of streams this writer has seen, so that most groups need no
/// reading before their insert. It may be stale (another process appended since): a
/// stale version makes the insert hit the `(stream_id, stream_version)` index, and
/// the group is decided again under the lock.
#[derive(Default)]
struct VersionCache(HashMap<String, u64>);

/// Most streams the cache remembers before it starts over.
const MAX_CACHED_STREAMS: usize = 100_000;

/// Commits a group by the cheapest path that is safe for it:
/// 1. every stream's version is cached (or the append expects no stream): decide from
///    the cache and insert, one round trip;
/// 2. otherwise read what the log holds of the group's ids and streams, decide, insert:
///    two round trips;
/// 3. when the log moved under 1 or 2 — another process appended to one of these
///    streams, or recorded one of these ids — the insert fails whole on a unique index
///    and the group is decided again under the head lock ([`commit_locked`]).
///
/// Path 1 is taken only when every append of the group would write: an append that
/// would be refused or is a retry needs the reading to be answered right.
async fn commit_batch(
    pool: &PgPool,
    batch: &[AppendRequest],
    channel: &str,
    cache: &mut VersionCache,
) -> Result<BatchOutcome, sqlx::Error> {
    let now = now_micros();
    let outcome = match plan_from_cache(batch, cache, now) {
        Some(planned) => insert_planned(pool, &planned, 0, channel).await.map(|start| (planned, 0, start)),
        None => {
            let (mut known, head) = read_known(pool, batch).await?;
            let planned = plan(batch, head, &mut known, now);
            if planned.cols.position.is_empty() {
                return Ok((planned.results, head));
            }
            insert_planned(pool, &planned, head, channel).await.map(|start| (planned, head, start))
        }
    };
    match outcome {
        Ok((planned, base, start)) => Ok(answered(batch, planned, base, start, cache)),
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some(UNIQUE_VIOLATION) => {
            for request in batch {
                cache.0.remove(request.stream.as_str());
            }
            commit_locked(pool, batch, channel, cache).await
        }
        Err(e) => Err(e),
    }
    .inspect_err(|_| cache.0.clear())
}

/// What the log holds of a group's event ids and streams.
#[derive(Default)]
struct Known {
    /// event id → (stream, version, position)
    events: HashMap<Uuid, (String, u64, u64)>,
    /// stream → last version
    versions: HashMap<String, u64>,
}

/// The group decided from the cache alone, if every stream is cached (or expected not
/// to exist) and every append writes.
fn plan_from_cache(batch: &[AppendRequest], cache: &VersionCache, now: DateTime<Utc>) -> Option<Plan> {
    let mut known = Known::default();
    for request in batch {
        match cache.0.get(request.stream.as_str()) {
            Some(version) => {
                known.versions.insert(request.stream.to_string(), *version);
            }
            None if request.expected == ExpectedVersion::NoStream => {}
            None => return None,
        }
    }
    let planned = plan(batch, 0, &mut known, now);
    planned.written.iter().all(|w| *w).then_some(planned)
}

/// One round trip, no lock: the group's event ids already recorded, its streams' last
/// versions, and the head.
async fn read_known<'c>(conn: impl sqlx::PgExecutor<'c>, batch: &[AppendRequest]) -> Result<(Known, u64), sqlx::Error> {
    let (ids, streams) = keys(batch);
    let mut known = Known::default();
    let mut head = 0u64;
    for row in sqlx::query(
        "SELECT e.event_id, e.stream_id, e.stream_version, e.position FROM events e WHERE e.event_id = ANY($1) \
         UNION ALL SELECT NULL, s.id, (SELECT e.stream_version FROM events e WHERE e.stream_id = s.id \
         ORDER BY e.stream_version DESC LIMIT 1), NULL FROM UNNEST($2::text[]) AS s(id) \
         UNION ALL SELECT NULL, NULL, NULL, position FROM log_head",
    )
    .bind(&ids)
    .bind(&streams)
    .fetch_all(conn)
    .await?
    {
        let event_id: Option<Uuid> = row.get(0);
        let stream: Option<String> = row.get(1);
        let version: Option<i64> = row.get(2);
        let position: Option<i64> = row.get(3);
        match (event_id, stream, version, position) {
            (Some(id), Some(s), Some(v), Some(p)) => {
                known.events.insert(id, (s, v as u64, p as u64));
            }
            (None, Some(s), Some(v), None) => {
                known.versions.insert(s, v as u64);
            }
            (None, None, None, Some(p)) => head = p as u64,
            _ => {}
        }
    }
    Ok((known, head))
}

/// The time an append records, at the microseconds PostgreSQL keeps (so that the digest
/// computed before the insert is the one a read computes).
fn now_micros() -> DateTime<Utc> {
    from_micros(to_micros(Utc::now()))
}

/// One statement (`perfect21_append`, migrations/postgres/0002_chain.sql): take positions
/// after the head it finds (locking it until the commit is visible), link and insert the
/// planned rows there (`o` is each row's offset past that head), move the head and its
/// link, notify listeners. Returns the head it found. On the pool it commits on its own:
/// `fetch_all` reads up to ReadyForQuery, so the implicit transaction has committed.
async fn insert_planned<'c>(
    conn: impl sqlx::PgExecutor<'c>,
    planned: &Plan,
    base: u64,
    channel: &str,
) -> Result<u64, sqlx::Error> {
    let offsets: Vec<i64> = planned.cols.position.iter().map(|p| p - base as i64).collect();
    let rows = sqlx::query(
        "SELECT perfect21_append($1::bigint[], $2::uuid[], $3::text[], $4::bigint[], $5::text[], \
         $6::smallint[], $7::timestamptz[], $8::bytea[], $9::bytea[], $10::bytea[], $11)",
    )
    .bind(&offsets)
    .bind(&planned.cols.event_id)
    .bind(&planned.cols.stream_id)
    .bind(&planned.cols.stream_version)
    .bind(&planned.cols.event_type)
    .bind(&planned.cols.schema_version)
    .bind(&planned.cols.recorded_at)
    .bind(&planned.cols.metadata)
    .bind(&planned.cols.payload)
    .bind(&planned.cols.digest)
    .bind(channel)
    .fetch_all(conn)
    .await?;
    Ok(rows.first().map(|r| r.get::<i64, _>(0)).ok_or(sqlx::Error::RowNotFound)? as u64)
}

/// A committed group's answers: the plan was made after `base` and its rows went after
/// `start`, so what it wrote moves up by the difference (replays keep the positions they
/// were recorded at), and the cache learns the streams' new versions. Returns them with
/// the new head.
fn answered(batch: &[AppendRequest], planned: Plan, base: u64, start: u64, cache: &mut VersionCache) -> BatchOutcome {
    // The head never goes down: `start >= base`.
    let moved = start.saturating_sub(base);
    if cache.0.len() > MAX_CACHED_STREAMS {
        cache.0.clear();
    }
    let head = start + planned.cols.position.len() as u64;
    let results = planned
        .results
        .into_iter()
        .zip(planned.written)
        .zip(batch)
        .map(|((outcome, written), request)| match outcome {
            Ok(r) if written => {
                cache.0.insert(request.stream.to_string(), r.stream_version);
                Ok(AppendResult {
                    first_position: r.first_position + moved,
                    position: r.position + moved,
                    stream_version: r.stream_version,
                })
            }
            other => other,
        })
        .collect();
    (results, head)
}

/// The group's event ids and distinct streams.
fn keys(batch: &[AppendRequest]) -> (Vec<Uuid>, Vec<&str>) {
    let ids = batch.iter().flat_map(|r| r.events.iter().map(|e| e.event_id)).collect();
    let streams = batch.iter().map(|r| r.stream.as_str()).collect::<HashSet<_>>().into_iter().collect();
    (ids, streams)
}

/// A group decided: each append's outcome, whether it writes, and the rows to insert.
struct Plan {
    results: Vec<Result<AppendResult, StoreError>>,
    written: Vec<bool>,
    cols: Columns,
}

/// Decides each append of a group in order against `known` (updated as appends are
/// taken), with positions after `head`.
fn plan(batch: &[AppendRequest], mut head: u64, known: &mut Known, recorded_at: DateTime<Utc>) -> Plan {
    let mut cols = Columns::default();
    let mut results = Vec::with_capacity(batch.len());
    let mut written = Vec::with_capacity(batch.len());
    for request in batch {
        let outcome = decide(request, head, &known.events, &known.versions);
        let writes = matches!(&outcome, Ok(result) if result.position > head);
        if let (true, Ok(result)) = (writes, &outcome) {
            let first_version = result.stream_version + 1 - request.events.len() as u64;
            for (i, (event, encoded)) in request.events.iter().zip(&request.encoded).enumerate() {
                let (position, version) = (head + 1 + i as u64, first_version + i as u64);
                known.events.insert(event.event_id, (request.stream.to_string(), version, position));
                let content = encoded.content.finish(version, recorded_at);
                cols.digest.push(content.to_vec());
                cols.position.push(position as i64);
                cols.event_id.push(event.event_id);
                cols.stream_id.push(request.stream.to_string());
                cols.stream_version.push(version as i64);
                cols.event_type.push(event.event_type.clone());
                cols.schema_version.push(event.schema_version as i16);
                cols.recorded_at.push(recorded_at);
                cols.metadata.push(encoded.metadata.clone());
                cols.payload.push(event.payload.clone());
            }
            known.versions.insert(request.stream.to_string(), result.stream_version);
            head = result.position;
        }
        results.push(outcome);
        written.push(writes);
    }
    Plan { results, written, cols }
}

/// The pessimistic path: lock the head, read, decide and insert in one transaction.
async fn commit_locked(
    pool: &PgPool,
    batch: &[AppendRequest],
    channel: &str,
    cache: &mut VersionCache,
) -> Result<BatchOutcome, sqlx::Error> {
    let mut tx = pool.begin().await?;
    // The head lock: serialises appenders across all processes until our commit is visible.
    let head: i64 = sqlx::query_scalar("SELECT position FROM log_head WHERE id FOR UPDATE").fetch_one(&mut *tx).await?;
    let head = head as u64;
    let (mut known, _) = read_known(&mut *tx, batch).await?;
    let planned = plan(batch, head, &mut known, now_micros());
    if planned.cols.position.is_empty() {
        tx.rollback().await?;
        return Ok((planned.results, head));
    }
    let start = insert_planned(&mut *tx, &planned, head, channel).await?;
    tx.commit().await?;
    // Only now: a version remembered before the commit could outlive a failed one.
    Ok(answered(batch, planned, head, start, cache))
}

/// Decides one append of a batch against the log as it stands inside the batch's transaction.
fn decide(
    request: &AppendRequest,
    head: u64,
    known: &HashMap<Uuid, (String, u64, u64)>,
    versions: &HashMap<String, u64>,
) -> Result<AppendResult, StoreError> {
    let stream = &request.stream;
    let found: Vec<_> = request
        .events
        .iter()
        .filter_map(|e| known.get(&e.event_id).map(|(s, v, p)| (e.event_id, s.clone(), *v, *p)))
        .collect();
    if let Existing::Replay(result) = classify_existing(stream, &request.events, &found)? {
        return Ok(result);
    }
    let mut seen = HashSet::with_capacity(request.events.len());
    for (i, e) in request.events.iter().enumerate() {
        if !seen.insert(e.event_id) {
            return Err(StoreError::DuplicateEventId {
                event_id: e.event_id,
                stream: stream.to_string(),
                position: head + 1 + i as u64,
            });
        }
    }
    let actual = versions.get(stream.as_str()).copied();
    if !request.expected.admits(actual) {
        return Err(StoreError::WrongExpectedVersion {
            stream: stream.to_string(),
            expected: request.expected,
            actual,
        });
    }
    let n = request.events.len() as u64;
    let first_version = actual.map_or(0, |v| v + 1);
    Ok(AppendResult { first_position: head + 1, position: head + n, stream_version: first_version + n - 1 })
}

const SELECT: &str = "SELECT position, event_id, stream_id, stream_version, event_type, schema_version, \
                      recorded_at, metadata, payload FROM events";

fn to_event(row: PgRow) -> Result<RecordedEvent, StoreError> {
    let position = row.try_get::<i64, _>(0).map_err(db_err)? as u64;
    let metadata: Vec<u8> = row.try_get(7).map_err(db_err)?;
    Ok(RecordedEvent {
        position,
        event_id: row.try_get(1).map_err(db_err)?,
        stream_id: row.try_get(2).map_err(db_err)?,
        stream_version: row.try_get::<i64, _>(3).map_err(db_err)? as u64,
        event_type: row.try_get(4).map_err(db_err)?,
        schema_version: row.try_get::<i16, _>(5).map_err(db_err)? as u16,
        recorded_at: row.try_get(6).map_err(db_err)?,
        metadata: Metadata::decode(&metadata).map_err(|e| StoreError::Corrupt { position, reason: e.to_string() })?,
        payload: row.try_get(8).map_err(db_err)?,
    })
}

impl PostgresStore {
    /// The events a query of [`SELECT`] finds.
    async fn events(
        &self,
        query: sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        query.fetch_all(&self.pool).await.map_err(db_err)?.into_iter().map(to_event).collect()
    }
}

#[async_trait]
impl EventStore for PostgresStore {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<EventData>,
    ) -> Result<AppendResult, StoreError> {
        if let Some((forwarding, writer)) = self.forwarding.as_ref().and_then(|f| Some((f, f.target()?))) {
            super::validate_append(&events)?;
            match forwarding.append(&writer, stream, expected, &events).await {
                Ok(result) => {
                    // Committed, so visible: readers of this instance need not wait for the NOTIFY.
                    advance(&self.head_tx, result.position);
                    return Ok(result);
                }
                Err(StoreError::Unavailable { message, .. }) => {
                    tracing::warn!(%writer, error = %message, "forwarding failed; appending directly");
                    forwarding.unreachable(&writer);
                }
                Err(refused) => return Err(refused),
            }
        }
        submit(&self.writer, BACKEND, stream, expected, events).await
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let (from_version, limit) = super::read_bounds("stream version", from_version, limit)?;
        let sql = format!("{SELECT} WHERE stream_id = $1 AND stream_version >= $2 ORDER BY stream_version LIMIT $3");
        self.events(sqlx::query(&sql).bind(stream.as_str()).bind(from_version).bind(limit)).await
    }

    async fn read_all(&self, from_position: u64, limit: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        let (from_position, limit) = super::read_bounds("position", from_position, limit)?;
        let sql = format!("{SELECT} WHERE position >= $1 ORDER BY position LIMIT $2");
        self.events(sqlx::query(&sql).bind(from_position).bind(limit)).await
    }

    async fn read_stored(
        &self,
        from_position: u64,
        limit: usize,
        opening: &'static Opening,
    ) -> Result<StoredPage, StoreError> {
        let (from_position, limit) = super::read_bounds("position", from_position, limit)?;
        let rows = sqlx::query(
            "SELECT position, event_id, event_type, schema_version, recorded_at, metadata, payload FROM events \
             WHERE position >= $1 ORDER BY position LIMIT $2",
        )
        .bind(from_position)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        let mut page = StoredPage::with_capacity(rows.len(), STORED_BYTES);
        for row in &rows {
            let stored = Stored {
                position: row.try_get::<i64, _>(0).map_err(db_err)? as u64,
                event_id: row.try_get(1).map_err(db_err)?,
                event_type: row.try_get(2).map_err(db_err)?,
                schema_version: row.try_get::<i16, _>(3).map_err(db_err)? as u16,
                recorded_at: row.try_get::<DateTime<Utc>, _>(4).map_err(db_err)?.timestamp_micros(),
                metadata: row.try_get(5).map_err(db_err)?,
                payload: row.try_get(6).map_err(db_err)?,
            };
            page.push(stored, opening);
        }
        Ok(page)
    }

    async fn redact(&self, stream: &StreamId, redactions: Vec<Redaction>) -> Result<usize, StoreError> {
        let metadata = validate_redactions(&redactions)?;
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        for (r, metadata) in redactions.iter().zip(&metadata) {
            // The digest the event's link covers, kept on its first redaction.
            let original = sqlx::query(&format!("{SELECT} WHERE position = $1 AND stream_id = $2"))
                .bind(r.position as i64)
                .bind(stream.as_str())
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_err)?;
            let Some(original) = original else {
                return Err(StoreError::NotInStream { stream: stream.to_string(), position: r.position });
            };
            let (_, original) = row_content(&original).map_err(db_err)?;
            sqlx::query(
                "INSERT INTO redactions (position, content_digest, redacted_at) VALUES ($1, $2, now()) \
                 ON CONFLICT (position) DO NOTHING",
            )
            .bind(r.position as i64)
            .bind(original.to_vec())
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
            // Nothing is committed unless every redaction fits its event.
            let replaced: Option<(String, i16)> = sqlx::query_as(
                "UPDATE events SET payload = $1, metadata = $2 WHERE position = $3 AND stream_id = $4 \
                 RETURNING event_type, schema_version",
            )
            .bind(&r.payload)
            .bind(metadata)
            .bind(r.position as i64)
            .bind(stream.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_err)?;
            let Some((event_type, schema_version)) = replaced else {
                return Err(StoreError::NotInStream { stream: stream.to_string(), position: r.position });
            };
            super::check_redaction(r.position, &event_type, schema_version as u16, &r.payload)?;
        }
        tx.commit().await.map_err(db_err)?;
        Ok(redactions.len())
    }

    async fn read_chain(&self, from_position: u64, limit: usize) -> Result<Vec<ChainRecord>, StoreError> {
        let (from_position, limit) = super::read_bounds("position", from_position, limit)?;
        sqlx::query(
            "SELECT e.position, e.event_id, e.stream_id, e.stream_version, e.event_type, e.schema_version, \
             e.recorded_at, e.metadata, e.payload, e.chain_hash, r.content_digest \
             FROM events e LEFT JOIN redactions r ON r.position = e.position \
             WHERE e.position >= $1 ORDER BY e.position LIMIT $2",
        )
        .bind(from_position)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?
        .iter()
        .map(|row| {
            let (position, content) = row_content(row)?;
            Ok(ChainRecord {
                position,
                content,
                link: chain::as_digest(row.try_get::<Option<&[u8]>, _>(9)?),
                redacted_from: chain::as_digest(row.try_get::<Option<&[u8]>, _>(10)?),
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(db_err)
    }

    async fn chain_head(&self) -> Result<Option<(u64, Digest)>, StoreError> {
        let (position, link): (i64, Option<Vec<u8>>) =
            sqlx::query_as("SELECT position, chain_hash FROM log_head").fetch_one(&self.pool).await.map_err(db_err)?;
        let position = position as u64;
        if position == 0 {
            return Ok(None);
        }
        match chain::as_digest(link.as_deref()) {
            Some(link) => Ok(Some((position, link))),
            None => Err(StoreError::Corrupt { position, reason: "the recorded head has no 32-byte link".into() }),
        }
    }

    async fn head_position(&self) -> Result<u64, StoreError> {
        let head: i64 =
            sqlx::query_scalar("SELECT position FROM log_head").fetch_one(&self.pool).await.map_err(db_err)?;
        Ok(head as u64)
    }

    async fn stats(&self) -> Result<StoreStats, StoreError> {
        let row = sqlx::query(
            "SELECT count(*), count(DISTINCT stream_id), (SELECT position FROM log_head), \
             pg_total_relation_size('events') FROM events",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(db_err)?;
        let by_type = sqlx::query(
            "SELECT event_type, schema_version, count(*) FROM events \
             GROUP BY event_type, schema_version ORDER BY event_type, schema_version",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?
        .into_iter()
        .map(|r| (r.get::<String, _>(0), r.get::<i16, _>(1) as u16, r.get::<i64, _>(2) as u64))
        .collect();
        Ok(StoreStats {
            backend: BACKEND,
            events: row.get::<i64, _>(0) as u64,
            streams: row.get::<i64, _>(1) as u64,
            head_position: row.get::<i64, _>(2) as u64,
            size_bytes: Some(row.get::<i64, _>(3) as u64),
            by_type,
        })
    }

    fn head_watch(&self) -> watch::Receiver<u64> {
        self.head.clone()
    }

    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn leases(&self) -> bool {
        true
    }

    fn appends(&self) -> super::Appends {
        match &self.forwarding {
            None => super::Appends::OnItsOwn,
            Some(f) if f.is_writer() => super::Appends::Writer,
            Some(f) => f.target().map_or(super::Appends::OnItsOwn, super::Appends::ForwardsTo),
        }
    }

    /// A session advisory lock on a connection of its own, taken out of the pool: the
    /// server releases it when that connection ends, with the process or its network.
    async fn try_lease(&self, name: &str) -> Result<Option<super::Lease>, StoreError> {
        super::check_lease_name(name)?;
        advisory_lease(&self.pool, &format!("perfect21.lease.{}.{name}", self.lease_scope)).await
    }
}

/// The lease `key`: a session advisory lock on a connection of its own, taken out of
/// `pool` and held (and watched) until the lease is dropped.
async fn advisory_lease(pool: &PgPool, key: &str) -> Result<Option<super::Lease>, StoreError> {
    let mut conn = pool.acquire().await.map_err(db_err)?.detach();
    let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
        .bind(key)
        .fetch_one(&mut conn)
        .await
        .map_err(db_err)?;
    if !taken {
        return Ok(None);
    }
    let (lost_tx, lost) = watch::channel(false);
    tokio::spawn(hold_lease(conn, lost_tx));
    Ok(Some(super::Lease::watched((), lost)))
}

/// Whether no session holds the lease `key` (it may be taken by the time it is tried for).
async fn lease_is_free(pool: &PgPool, key: &str) -> Result<bool, StoreError> {
    sqlx::query_scalar(
        "SELECT NOT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1 \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
         AND ((classid::bigint << 32) | objid::bigint) = hashtextextended($1, 0))",
    )
    .bind(key)
    .fetch_one(pool)
    .await
    .map_err(db_err)
}

/// How often the holder of a lease checks that its session, and so its lock, is still there.
const LEASE_CHECK: Duration = Duration::from_millis(500);

/// Holds a lease's connection until the lease is dropped (`lost`'s receiver goes), which
/// closes it and so releases the lock. Every [`LEASE_CHECK`] it checks the lock is still
/// held: a database restart, a network failure or `pg_terminate_backend` end the session
/// and release the lock, and then `lost` turns true.
async fn hold_lease(mut conn: sqlx::PgConnection, lost: watch::Sender<bool>) {
    loop {
        tokio::select! {
            () = lost.closed() => return,
            () = tokio::time::sleep(LEASE_CHECK) => {}
        }
        let check = sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE pid = pg_backend_pid() AND locktype = 'advisory' AND granted)",
        )
        .fetch_one(&mut conn);
        let held = matches!(tokio::time::timeout(LEASE_CHECK, check).await, Ok(Ok(true)));
        if !held {
            tracing::warn!("a lease's database session ended: the lease is lost");
            let _ = lost.send(true);
            return;
        }
    }
}
