//! The embedded backend: one SQLite file in WAL mode.
//!
//! One writer thread owns the write connection. Appends queue up for it; it
//! takes every append waiting (up to a bound), runs them in one IMMEDIATE
//! transaction, each inside its own savepoint so that one append's failure
//! leaves the others intact, commits once (`synchronous=FULL`: the WAL is
//! fsync'd) and only then answers each caller: group commit. Readers use their
//! own connections on the blocking pool.

use super::page::{Stored, StoredPage, STORED_BYTES};
use super::queue::{serve_groups, submit, submit_made, AppendRequest};
use super::tail::Tail;
use super::{classify_existing, validate_redactions, EventStore, Existing, Redaction, StoreStats};
use crate::chain::{self, ChainRecord, Digest};
use crate::envelope::{from_micros, to_micros, AppendResult, EventData, ExpectedVersion, RecordedEvent, StreamId};
use crate::error::StoreError;
use crate::seal::Opening;
use async_trait::async_trait;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

const BACKEND: &str = "sqlite";
/// The schema, one migration per `user_version` step.
const MIGRATIONS: [&str; 2] = [
    include_str!("../../../../migrations/sqlite/0001_events.sql"),
    include_str!("../../../../migrations/sqlite/0002_chain.sql"),
];
const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// How to open a [`SqliteStore`].
#[derive(Debug, Clone)]
pub struct SqliteConfig {
    pub path: PathBuf,
    /// Share one commit among all appends waiting (default). Off: one commit per append.
    pub group_commit: bool,
    /// Cap the file at this many database pages (`PRAGMA max_page_count`); appends that
    /// would grow it further fail. `None`: SQLite's own limit.
    pub max_pages: Option<u64>,
}

impl SqliteConfig {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        SqliteConfig { path: path.into(), group_commit: true, max_pages: None }
    }
}

/// The SQLite event store. Cheap to share behind an `Arc`.
pub struct SqliteStore {
    path: PathBuf,
    writer: mpsc::Sender<AppendRequest>,
    readers: Arc<Mutex<Vec<Connection>>>,
    head: watch::Receiver<u64>,
    tail: Arc<Tail>,
}

fn db_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::unavailable(BACKEND, e)
}

/// An error of a read: the store's own (a damaged event found while reading rows) as it
/// is, any other as the database being unavailable.
fn read_err(e: rusqlite::Error) -> StoreError {
    match e {
        rusqlite::Error::FromSqlConversionFailure(_, _, inner) if inner.is::<StoreError>() => {
            *inner.downcast::<StoreError>().expect("checked to be a StoreError")
        }
        e => db_err(e),
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the log file at `config.path`.
    pub async fn open(config: SqliteConfig) -> Result<Self, StoreError> {
        let path = config.path.clone();
        let (conn, head) = tokio::task::spawn_blocking(move || open_writer(&path)).await.map_err(db_err)??;
        if let Some(pages) = config.max_pages {
            conn.query_row(&format!("PRAGMA max_page_count = {pages}"), [], |_| Ok(())).map_err(db_err)?;
        }
        let (head_tx, head_rx) = watch::channel(head);
        let (tx, rx) = mpsc::channel(4096);
        let group = config.group_commit;
        let tail = Arc::new(Tail::default());
        let written = tail.clone();
        std::thread::Builder::new()
            .name("perfect21-sqlite-writer".into())
            .spawn(move || run_writer(conn, rx, head_tx, group, written))
            .map_err(db_err)?;
        Ok(SqliteStore {
            path: config.path,
            writer: tx,
            readers: Arc::new(Mutex::new(Vec::new())),
            head: head_rx,
            tail,
        })
    }

    /// The log file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn with_reader<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let readers = self.readers.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let conn = readers.lock().expect("reader pool").pop();
            let conn = match conn {
                Some(c) => c,
                None => open_reader(&path).map_err(db_err)?,
            };
            let out = f(&conn).map_err(read_err);
            readers.lock().expect("reader pool").push(conn);
            out
        })
        .await
        .map_err(db_err)?
    }
}

fn open_writer(path: &Path) -> Result<(Connection, u64), StoreError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| db_err(format!("cannot create data directory {}: {e}", dir.display())))?;
    }
    let conn = Connection::open(path).map_err(|e| db_err(format!("cannot open {}: {e}", path.display())))?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(db_err)?;
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0)).map_err(db_err)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(db_err(format!("{} cannot use WAL mode (got {mode})", path.display())));
    }
    // FULL: in WAL mode every commit fsyncs the WAL, so an acknowledged append survives a power cut.
    conn.execute_batch("PRAGMA synchronous=FULL;").map_err(db_err)?;
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(db_err)?;
    if version > SCHEMA_VERSION {
        return Err(db_err(format!(
            "{} has schema version {version}, newer than this build's {SCHEMA_VERSION}",
            path.display()
        )));
    }
    if version < SCHEMA_VERSION {
        let mut conn = conn;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(db_err)?;
        for migration in &MIGRATIONS[version as usize..] {
            tx.execute_batch(migration).map_err(db_err)?;
        }
        link_unchained(&tx).map_err(db_err)?;
        tx.execute_batch(&format!("PRAGMA user_version={SCHEMA_VERSION};")).map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        let head = query_head(&conn).map_err(db_err)?;
        return Ok((conn, head));
    }
    let head = query_head(&conn).map_err(db_err)?;
    Ok((conn, head))
}

fn open_reader(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    Ok(conn)
}

fn query_head(conn: &Connection) -> rusqlite::Result<u64> {
    conn.prepare_cached("SELECT coalesce(max(position), 0) FROM events")?
        .query_row([], |r| r.get::<_, i64>(0))
        .map(|h| h as u64)
}

/// The link recorded at `position` ([`chain::GENESIS`] for 0, the start of the log).
fn link_at(conn: &Connection, position: u64) -> rusqlite::Result<Digest> {
    if position == 0 {
        return Ok(chain::GENESIS);
    }
    let link: Option<Vec<u8>> = conn
        .prepare_cached("SELECT chain_hash FROM events WHERE position = ?1")?
        .query_row([position as i64], |r| r.get(0))
        .optional()?
        .flatten();
    chain::as_digest(link.as_deref()).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            9,
            rusqlite::types::Type::Blob,
            Box::new(StoreError::Corrupt { position, reason: "the event has no 32-byte link".into() }),
        )
    })
}

/// The head the writer last recorded with its link (`None` before the first event).
fn recorded_head(conn: &Connection) -> rusqlite::Result<Option<(u64, Option<Digest>)>> {
    conn.prepare_cached("SELECT position, link FROM chain_head WHERE id = 1")?
        .query_row([], |r| {
            Ok((r.get::<_, i64>(0)? as u64, chain::as_digest(r.get::<_, Option<Vec<u8>>>(1)?.as_deref())))
        })
        .optional()
}

fn record_head(conn: &Connection, position: u64, link: &Digest) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO chain_head (id, position, link) VALUES (1, ?1, ?2) \
         ON CONFLICT (id) DO UPDATE SET position = excluded.position, link = excluded.link",
    )?
    .execute(params![position as i64, link.as_slice()])
    .map(|_| ())
}

/// Links the events a file recorded before it had a chain, in position order (run once,
/// by the migration that adds the chain).
fn link_unchained(conn: &Connection) -> rusqlite::Result<()> {
    let mut previous = chain::GENESIS;
    let mut stmt = conn.prepare(&format!("{SELECT} ORDER BY position"))?;
    let mut rows = stmt.query([])?;
    let mut update = conn.prepare("UPDATE events SET chain_hash = ?1 WHERE position = ?2")?;
    while let Some(row) = rows.next()? {
        let (position, content) = row_content(row)?;
        previous = chain::link(&previous, position, &content);
        update.execute(params![previous.as_slice(), position as i64])?;
    }
    let head = query_head(conn)?;
    if head > 0 {
        record_head(conn, head, &previous)?;
    }
    Ok(())
}

/// A row of [`SELECT`]'s columns: its position and its content digest over the bytes as
/// stored. A row whose columns no longer hold the types the schema gives them (an edit
/// such as `payload || x'00'`, which SQLite makes TEXT) gets a digest no link matches, so
/// the walk reports a break at its position rather than failing to read.
fn row_content(r: &rusqlite::Row<'_>) -> rusqlite::Result<(u64, Digest)> {
    use rusqlite::types::ValueRef;
    let position = r.get::<_, i64>(0)? as u64;
    let (id, stream, version, event_type, schema_version, recorded_at, metadata, payload) = (
        r.get_ref(1)?,
        r.get_ref(2)?,
        r.get_ref(3)?,
        r.get_ref(4)?,
        r.get_ref(5)?,
        r.get_ref(6)?,
        r.get_ref(7)?,
        r.get_ref(8)?,
    );
    let content = match (id, stream, version, event_type, schema_version, recorded_at, metadata, payload) {
        (
            ValueRef::Blob(id),
            ValueRef::Text(stream),
            ValueRef::Integer(version),
            ValueRef::Text(event_type),
            ValueRef::Integer(schema_version),
            ValueRef::Integer(recorded_at),
            ValueRef::Blob(metadata),
            ValueRef::Blob(payload),
        ) if id.len() == 16 && u16::try_from(schema_version).is_ok() => chain::content_digest(
            &Uuid::from_slice(id).expect("16 bytes"),
            &String::from_utf8_lossy(stream),
            version as u64,
            &String::from_utf8_lossy(event_type),
            schema_version as u16,
            from_micros(recorded_at),
            metadata,
            payload,
        ),
        _ => chain::unmatchable(position),
    };
    Ok((position, content))
}

/// The writer thread's state: the write connection and what it knows of the log.
struct Writer {
    conn: Connection,
    /// Last version of streams this writer has seen, valid while `known_head` is the log's head
    /// (another process appending to the same file moves the head, which clears it).
    versions: HashMap<String, u64>,
    known_head: u64,
    /// The link at `known_head`.
    known_link: Digest,
}

/// Stream versions remembered at most, to bound the writer's memory.
const MAX_CACHED_STREAMS: usize = 100_000;

fn run_writer(
    conn: Connection,
    rx: mpsc::Receiver<AppendRequest>,
    head_tx: watch::Sender<u64>,
    group: bool,
    tail: Arc<Tail>,
) {
    // Unknown until the first group reads them in its transaction (and checks the log
    // against the head its last writer recorded).
    let (known_head, known_link) = (u64::MAX, chain::GENESIS);
    let mut writer = Writer { conn, versions: HashMap::new(), known_head, known_link };
    serve_groups(rx, group, |mut batch| {
        match writer.commit_batch(&mut batch) {
            Ok((results, head, written)) => {
                // Into the tail before subscribers hear of the new head.
                let evicted = tail.push(recorded(&mut batch, &written));
                head_tx.send_if_modified(|h| {
                    let moved = head > *h;
                    *h = (*h).max(head);
                    moved
                });
                for (request, result) in batch.into_iter().zip(results) {
                    let _ = request.reply.send(result);
                }
                // What the tail let go of is freed once every appender has its answer.
                drop(evicted);
            }
            Err(e) => {
                writer.versions.clear();
                let message = match e {
                    BatchError::Before(e) => format!("append failed, nothing of it was written: {e}"),
                    BatchError::RolledBack(e) => {
                        format!("the database rolled the transaction back, nothing of this append was written: {e}")
                    }
                    // The WAL frame may have reached the disk before the error.
                    BatchError::Commit(e) => format!(
                        "commit failed ({e}); the events may be recorded: retry with the same event ids, which is idempotent"
                    ),
                    BatchError::Damaged(reason) => format!("nothing was written: {reason}"),
                };
                for request in batch {
                    let _ = request.reply.send(Err(db_err(&message)));
                }
            }
        }
    });
}

/// Each append's outcome, the head after the batch, and what it wrote.
type BatchOutcome = (Vec<Result<AppendResult, StoreError>>, u64, Written);

/// The appends of a batch that wrote events: their index in the batch and where they
/// went, and the time recorded with them.
struct Written {
    appends: Vec<(usize, AppendResult)>,
    recorded_at: i64,
}

/// The events the batch wrote, as a read would return them, taken out of its appends
/// (whose answers no longer need them). Metadata encodes and decodes to itself, so the
/// appended metadata is what a read decodes.
fn recorded(batch: &mut [AppendRequest], written: &Written) -> Vec<RecordedEvent> {
    let mut out = Vec::with_capacity(written.appends.iter().map(|(i, _)| batch[*i].events.len()).sum());
    for (i, result) in &written.appends {
        let request = &mut batch[*i];
        let first_version = result.stream_version + 1 - request.events.len() as u64;
        let stream_id = request.stream.to_string();
        for (k, event) in std::mem::take(&mut request.events).into_iter().enumerate() {
            out.push(RecordedEvent {
                event_id: event.event_id,
                stream_id: stream_id.clone(),
                stream_version: first_version + k as u64,
                position: result.first_position + k as u64,
                event_type: event.event_type,
                schema_version: event.schema_version,
                recorded_at: from_micros(written.recorded_at),
                metadata: event.metadata,
                payload: event.payload,
            });
        }
    }
    out
}

/// Why a whole batch failed, and so what its appenders may assume.
enum BatchError {
    /// Before anything could be written.
    Before(rusqlite::Error),
    /// SQLite rolled the whole transaction back by itself (disk full, I/O error, out of
    /// memory): every append of the batch is undone.
    RolledBack(String),
    /// The COMMIT itself failed: the batch may or may not be on disk.
    Commit(rusqlite::Error),
    /// The log was changed behind the store's back; nothing is appended to it.
    Damaged(String),
}

impl From<rusqlite::Error> for BatchError {
    fn from(e: rusqlite::Error) -> Self {
        BatchError::Before(e)
    }
}

impl Writer {
    fn commit_batch(&mut self, batch: &mut [AppendRequest]) -> Result<BatchOutcome, BatchError> {
        let Writer { conn, versions, known_head, known_link } = self;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Read the head inside the write lock: another process may have appended.
        let mut head = query_head(&tx)?;
        if head != *known_head || versions.len() > MAX_CACHED_STREAMS {
            versions.clear();
        }
        let mut link = if head == *known_head { *known_link } else { link_at(&tx, head)? };
        if head != *known_head {
            // Another writer, or this writer's first group: the log must not be shorter than the head
            // its last writer recorded (events deleted from the end behind the store's back).
            if let Some((recorded, _)) = recorded_head(&tx)?.filter(|(p, _)| *p > head) {
                return Err(BatchError::Damaged(format!(
                    "the log ends at position {head}, but its writer recorded position {recorded}: \
                     events were removed from its end (perfect21 events verify names the break)"
                )));
            }
        }
        let start = head;
        let recorded_at = to_micros(chrono::Utc::now());
        let mut results = Vec::with_capacity(batch.len());
        let mut written = Written { appends: Vec::new(), recorded_at };
        for (i, request) in batch.iter_mut().enumerate() {
            // A single INSERT is atomic by itself; several need a savepoint to be undone together.
            let savepoint = request.count() > 1;
            if savepoint {
                tx.prepare_cached("SAVEPOINT append")?.execute([])?;
            }
            let before = link;
            let outcome = append_one(&tx, request, head, recorded_at, versions, &mut link);
            // Some errors make SQLite roll back the whole transaction: going on would write
            // the next appends in autocommit at positions counted from a head that no
            // longer exists. Abort the batch instead.
            if tx.is_autocommit() {
                let cause = outcome.err().map_or_else(|| "an error".to_string(), |e| e.to_string());
                return Err(BatchError::RolledBack(cause));
            }
            let wrote = matches!(&outcome, Ok(result) if result.position > head);
            if let (true, Ok(result)) = (wrote, &outcome) {
                written.appends.push((i, *result));
                head = result.position;
                versions.insert(request.stream.to_string(), result.stream_version);
            }
            if !wrote {
                link = before;
            }
            if savepoint {
                if !wrote {
                    tx.prepare_cached("ROLLBACK TO append")?.execute([])?;
                }
                tx.prepare_cached("RELEASE append")?.execute([])?;
            }
            results.push(outcome);
        }
        if head != start {
            record_head(&tx, head, &link)?;
        }
        tx.commit().map_err(BatchError::Commit)?;
        *known_head = head;
        *known_link = link;
        Ok((results, head, written))
    }
}

fn append_one(
    conn: &Connection,
    request: &mut AppendRequest,
    head: u64,
    recorded_at: i64,
    versions: &HashMap<String, u64>,
    link: &mut Digest,
) -> Result<AppendResult, StoreError> {
    let actual = match versions.get(request.stream.as_str()) {
        Some(v) => Some(*v),
        None => conn
            .prepare_cached("SELECT max(stream_version) FROM events WHERE stream_id = ?1")
            .and_then(|mut q| q.query_row([request.stream.as_str()], |r| r.get::<_, Option<i64>>(0)))
            .map_err(db_err)?
            .map(|v| v as u64),
    };
    if !request.expected.admits(actual) {
        // A retry of an append that already happened is answered as it was then.
        request.receive_all()?;
        if let Existing::Replay(result) = existing(conn, &request.stream, &request.events, head)? {
            return Ok(result);
        }
        return Err(StoreError::WrongExpectedVersion {
            stream: request.stream.to_string(),
            expected: request.expected,
            actual,
        });
    }
    let first_version = actual.map_or(0, |v| v + 1);
    let mut insert = conn
        .prepare_cached(
            "INSERT INTO events (position, event_id, stream_id, stream_version, event_type, schema_version, \
             recorded_at, metadata, payload, chain_hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )
        .map_err(db_err)?;
    // The events of an append still being made are written as they come.
    let mut i = 0;
    while request.has(i)? {
        let (event, encoded) = (&request.events[i], &request.encoded[i]);
        let position = head + 1 + i as u64;
        let content = encoded.content.finish(first_version + i as u64, from_micros(recorded_at));
        *link = chain::link(link, position, &content);
        let inserted = insert.execute(params![
            position as i64,
            event.event_id.as_bytes().as_slice(),
            request.stream.as_str(),
            (first_version + i as u64) as i64,
            event.event_type,
            event.schema_version,
            recorded_at,
            encoded.metadata,
            event.payload,
            link.as_slice(),
        ]);
        if let Err(e) = inserted {
            if e.sqlite_error_code() != Some(rusqlite::ErrorCode::ConstraintViolation) {
                return Err(db_err(e));
            }
            // An event id already recorded: a retry, or a real duplicate.
            let event_id = event.event_id;
            request.receive_all()?;
            if let Existing::Replay(result) = existing(conn, &request.stream, &request.events, head)? {
                return Ok(result);
            }
            // Not recorded before: the id repeats inside this append.
            return Err(StoreError::DuplicateEventId { event_id, stream: request.stream.to_string(), position });
        }
        i += 1;
    }
    let n = request.events.len() as u64;
    Ok(AppendResult { first_position: head + 1, position: head + n, stream_version: first_version + n - 1 })
}

/// How the append's event ids relate to events recorded before it (at or below `head`;
/// rows this append wrote itself, above `head`, do not count).
fn existing(conn: &Connection, stream: &StreamId, events: &[EventData], head: u64) -> Result<Existing, StoreError> {
    let mut found = Vec::new();
    for e in events {
        if let Some((s, v, p)) = find_event(conn, e.event_id).map_err(db_err)?.filter(|(_, _, p)| *p <= head) {
            found.push((e.event_id, s, v, p));
        }
    }
    classify_existing(stream, events, &found)
}

fn find_event(conn: &Connection, id: Uuid) -> rusqlite::Result<Option<(String, u64, u64)>> {
    conn.prepare_cached("SELECT stream_id, stream_version, position FROM events WHERE event_id = ?1")?
        .query_row([id.as_bytes().as_slice()], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64, r.get::<_, i64>(2)? as u64))
        })
        .optional()
}

const SELECT: &str = "SELECT position, event_id, stream_id, stream_version, event_type, schema_version, \
                      recorded_at, metadata, payload FROM events";

/// Rows read into a vector made once: pages of the log are read back to back on replay.
fn read_rows(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    limit: i64,
) -> rusqlite::Result<Vec<RecordedEvent>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(params)?;
    let mut out = Vec::with_capacity(usize::try_from(limit).unwrap_or(0).min(READ_CAPACITY));
    while let Some(r) = rows.next()? {
        let position = r.get::<_, i64>(0)? as u64;
        let bad = |reason: String| damaged(position, reason);
        out.push(RecordedEvent {
            position,
            event_id: Uuid::from_slice(r.get_ref(1)?.as_blob()?).map_err(|e| bad(format!("event id: {e}")))?,
            stream_id: r.get(2)?,
            stream_version: r.get::<_, i64>(3)? as u64,
            event_type: r.get(4)?,
            schema_version: r.get(5)?,
            recorded_at: from_micros(r.get(6)?),
            metadata: crate::envelope::Metadata::decode(r.get_ref(7)?.as_blob()?).map_err(|e| bad(e.to_string()))?,
            payload: r.get(8)?,
        });
    }
    Ok(out)
}

/// A row that does not read as an event: a damaged event at `position`, carried through
/// rusqlite's error to [`read_err`].
fn damaged(position: u64, reason: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        1,
        rusqlite::types::Type::Blob,
        Box::new(StoreError::Corrupt { position, reason }),
    )
}

/// The most rows a read makes room for before it sees them.
const READ_CAPACITY: usize = 4096;

/// Rows from `position` on, at most `limit`, copied as stored into one page, as read
/// for `opening`: the id and metadata of an event whose type it does not name are not
/// read from the row at all.
fn read_page(conn: &Connection, position: i64, limit: i64, opening: &Opening) -> rusqlite::Result<StoredPage> {
    let mut stmt = conn.prepare_cached(
        "SELECT position, event_id, event_type, schema_version, recorded_at, metadata, payload FROM events \
         WHERE position >= ?1 ORDER BY position LIMIT ?2",
    )?;
    let mut rows = stmt.query(params![position, limit])?;
    let mut page = StoredPage::with_capacity(usize::try_from(limit).unwrap_or(0).min(READ_CAPACITY), STORED_BYTES);
    while let Some(r) = rows.next()? {
        let position = r.get::<_, i64>(0)? as u64;
        // The type's bytes are compared with the page's types before they are checked to be UTF-8.
        let event_type =
            page.type_of(r.get_ref(2)?.as_bytes()?).map_err(|e| damaged(position, format!("event type: {e}")))?;
        let (event_id, metadata) = if page.names(event_type, opening) {
            let id =
                Uuid::from_slice(r.get_ref(1)?.as_blob()?).map_err(|e| damaged(position, format!("event id: {e}")))?;
            (id, r.get_ref(5)?.as_blob()?)
        } else {
            (Uuid::nil(), &[][..])
        };
        page.push_typed(
            event_type,
            Stored {
                position,
                event_id,
                event_type: "",
                schema_version: r.get(3)?,
                recorded_at: r.get(4)?,
                metadata,
                payload: r.get_ref(6)?.as_blob()?,
            },
        );
    }
    Ok(page)
}

#[async_trait]
impl EventStore for SqliteStore {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<EventData>,
    ) -> Result<AppendResult, StoreError> {
        submit(&self.writer, BACKEND, stream, expected, events).await
    }

    async fn append_made(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &mut (dyn ExactSizeIterator<Item = Result<EventData, StoreError>> + Send),
    ) -> Result<AppendResult, StoreError> {
        submit_made(&self.writer, BACKEND, stream, expected, events).await
    }

    fn writes_while_made(&self) -> bool {
        true
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let stream = stream.to_string();
        let (from_version, limit) = super::read_bounds("stream version", from_version, limit)?;
        self.with_reader(move |c| {
            read_rows(
                c,
                &format!("{SELECT} WHERE stream_id = ?1 AND stream_version >= ?2 ORDER BY stream_version LIMIT ?3"),
                params![stream, from_version, limit],
                limit,
            )
        })
        .await
    }

    async fn read_all(&self, from_position: u64, limit: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        let (from_position, limit) = super::read_bounds("position", from_position, limit)?;
        self.with_reader(move |c| {
            read_rows(
                c,
                &format!("{SELECT} WHERE position >= ?1 ORDER BY position LIMIT ?2"),
                params![from_position, limit],
                limit,
            )
        })
        .await
    }

    async fn read_stored(
        &self,
        from_position: u64,
        limit: usize,
        opening: &'static Opening,
    ) -> Result<StoredPage, StoreError> {
        let (from_position, limit) = super::read_bounds("position", from_position, limit)?;
        self.with_reader(move |c| read_page(c, from_position, limit, opening)).await
    }

    async fn redact(&self, stream: &StreamId, redactions: Vec<Redaction>) -> Result<usize, StoreError> {
        // The tail holds the old bytes of what may be rewritten: forget it (before and after,
        // so that nothing read in between outlives the rewrite).
        self.tail.clear();
        let result = self.redact_in_file(stream, redactions).await;
        self.tail.clear();
        result
    }

    async fn read_chain(&self, from_position: u64, limit: usize) -> Result<Vec<ChainRecord>, StoreError> {
        let (from_position, limit) = super::read_bounds("position", from_position, limit)?;
        self.with_reader(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT e.position, e.event_id, e.stream_id, e.stream_version, e.event_type, e.schema_version, \
                 e.recorded_at, e.metadata, e.payload, e.chain_hash, r.content_digest \
                 FROM events e LEFT JOIN redactions r ON r.position = e.position \
                 WHERE e.position >= ?1 ORDER BY e.position LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![from_position, limit], |r| {
                let (position, content) = row_content(r)?;
                Ok(ChainRecord {
                    position,
                    content,
                    link: chain::as_digest(r.get::<_, Option<Vec<u8>>>(9)?.as_deref()),
                    redacted_from: chain::as_digest(r.get::<_, Option<Vec<u8>>>(10)?.as_deref()),
                })
            })?;
            rows.collect()
        })
        .await
    }

    async fn chain_head(&self) -> Result<Option<(u64, Digest)>, StoreError> {
        let recorded = self.with_reader(recorded_head).await?;
        match recorded {
            None => Ok(None),
            Some((position, Some(link))) => Ok(Some((position, link))),
            Some((position, None)) => {
                Err(StoreError::Corrupt { position, reason: "the recorded head has no 32-byte link".into() })
            }
        }
    }

    async fn head_position(&self) -> Result<u64, StoreError> {
        self.with_reader(query_head).await
    }

    async fn stats(&self) -> Result<StoreStats, StoreError> {
        let size = ["", "-wal"]
            .iter()
            .filter_map(|suffix| {
                let mut p = self.path.clone().into_os_string();
                p.push(suffix);
                std::fs::metadata(p).ok().map(|m| m.len())
            })
            .sum();
        let mut stats = self
            .with_reader(|c| {
                let (events, streams, head) = c.query_row(
                    "SELECT count(*), count(DISTINCT stream_id), coalesce(max(position), 0) FROM events",
                    [],
                    |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64, r.get::<_, i64>(2)? as u64)),
                )?;
                let mut stmt = c.prepare(
                    "SELECT event_type, schema_version, count(*) FROM events \
                     GROUP BY event_type, schema_version ORDER BY event_type, schema_version",
                )?;
                let by_type = stmt
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as u64)))?
                    .collect::<rusqlite::Result<_>>()?;
                Ok(StoreStats { backend: BACKEND, head_position: head, events, streams, by_type, size_bytes: None })
            })
            .await?;
        stats.size_bytes = Some(size);
        Ok(stats)
    }

    fn head_watch(&self) -> watch::Receiver<u64> {
        self.head.clone()
    }

    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn recent(&self, from_position: u64, limit: usize) -> Option<Vec<RecordedEvent>> {
        self.tail.from(from_position, limit)
    }

    fn leases(&self) -> bool {
        true
    }

    /// A lock file beside the log (`events.db.<name>.lease`): every process of a SQLite
    /// log runs on its machine.
    async fn try_lease(&self, name: &str) -> Result<Option<super::Lease>, StoreError> {
        super::check_lease_name(name)?;
        let mut path = self.path.clone().into_os_string();
        path.push(format!(".{name}.lease"));
        super::file_lease(std::path::Path::new(&path)).map_err(db_err)
    }
}

impl SqliteStore {
    async fn redact_in_file(&self, stream: &StreamId, redactions: Vec<Redaction>) -> Result<usize, StoreError> {
        let metadata = validate_redactions(&redactions)?;
        let path = self.path.clone();
        let stream = stream.to_string();
        tokio::task::spawn_blocking(move || {
            // A connection of its own: SQLite serialises it with the writer thread (busy timeout).
            let mut conn = Connection::open(&path).map_err(db_err)?;
            conn.busy_timeout(BUSY_TIMEOUT).map_err(db_err)?;
            conn.execute_batch("PRAGMA synchronous=FULL;").map_err(db_err)?;
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(db_err)?;
            let now = to_micros(chrono::Utc::now());
            for (r, metadata) in redactions.iter().zip(&metadata) {
                // The digest the event's link covers, kept on its first redaction.
                let original = tx
                    .query_row(
                        &format!("{SELECT} WHERE position = ?1 AND stream_id = ?2"),
                        params![r.position as i64, stream],
                        row_content,
                    )
                    .optional()
                    .map_err(db_err)?;
                let Some((_, original)) = original else {
                    return Err(StoreError::NotInStream { stream: stream.clone(), position: r.position });
                };
                tx.execute(
                    "INSERT OR IGNORE INTO redactions (position, content_digest, redacted_at) VALUES (?1, ?2, ?3)",
                    params![r.position as i64, original.as_slice(), now],
                )
                .map_err(db_err)?;
                // Nothing is committed unless every redaction fits its event.
                let replaced: Option<(String, u16)> = tx
                    .query_row(
                        "UPDATE events SET payload = ?1, metadata = ?2 WHERE position = ?3 AND stream_id = ?4 \
                         RETURNING event_type, schema_version",
                        params![r.payload, metadata, r.position as i64, stream],
                        |row| Ok((row.get(0)?, row.get(1)?)),
                    )
                    .optional()
                    .map_err(db_err)?;
                let Some((event_type, schema_version)) = replaced else {
                    return Err(StoreError::NotInStream { stream: stream.clone(), position: r.position });
                };
                super::check_redaction(r.position, &event_type, schema_version, &r.payload)?;
            }
            tx.commit().map_err(db_err)?;
            Ok(redactions.len())
        })
        .await
        .map_err(db_err)?
    }
}
