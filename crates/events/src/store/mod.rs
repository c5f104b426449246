//! The [`EventStore`] trait and its backends.
//!
//! Invariants every backend keeps (and `tests/conformance.rs` checks):
//! - positions are dense: the log holds exactly positions `1..=head`;
//! - a position is visible to readers only once every lower position is;
//! - an append is acknowledged only after its commit is durable;
//! - an append that fails wrote nothing.

mod forward;
#[cfg(feature = "kafka")]
mod kafka;
pub mod page;
mod postgres;
mod queue;
mod sqlite;
mod subscription;
mod tail;

#[cfg(feature = "kafka")]
pub use kafka::{KafkaConfig, KafkaStore, Role as KafkaRole};
pub use postgres::{ForwardConfig, PostgresConfig, PostgresStore};
pub use sqlite::{SqliteConfig, SqliteStore};
pub use subscription::Subscription;

use crate::chain::ChainRecord;
use crate::envelope::{AppendResult, EventData, ExpectedVersion, RecordedEvent, StreamId};
use crate::error::StoreError;
use crate::limits::MAX_EVENTS_PER_APPEND;
use crate::seal::Opening;
use async_trait::async_trait;
use page::{FoldEvent, StoredPage};
use serde::Serialize;
use std::sync::Arc;
use tokio::sync::watch;

/// An append-only, globally ordered log of versioned events.
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Appends `events` to `stream` atomically if the stream is at `expected`.
    /// Returns once the events are durable; the returned position is the consistency token.
    ///
    /// Re-appending events whose ids are already recorded, in the same stream and
    /// order, succeeds without writing and returns the original result.
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<EventData>,
    ) -> Result<AppendResult, StoreError>;

    /// [`append`](Self::append) of events still being made: `events` makes them one
    /// after another, in order (its length is the append's), and a store that
    /// [writes while they are made](Self::writes_while_made) writes the first while the
    /// rest are being made. All or nothing as an append: an `Err` from `events`, or fewer
    /// events than its length, fails the append, which then wrote nothing.
    async fn append_made(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &mut (dyn ExactSizeIterator<Item = Result<EventData, StoreError>> + Send),
    ) -> Result<AppendResult, StoreError> {
        let count = events.len();
        let events = events.take(count).collect::<Result<Vec<_>, _>>()?;
        if events.len() < count {
            return Err(StoreError::IncompleteAppend { made: events.len(), count });
        }
        self.append(stream, expected, events).await
    }

    /// Whether [`append_made`](Self::append_made) writes an append's first events while
    /// the rest are being made (else it makes them all first).
    fn writes_while_made(&self) -> bool {
        false
    }

    /// Events of one stream with `stream_version >= from_version`, at most `limit`.
    async fn read_stream(
        &self,
        stream: &StreamId,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError>;

    /// Events with `position >= from_position` in position order, at most `limit`.
    async fn read_all(&self, from_position: u64, limit: usize) -> Result<Vec<RecordedEvent>, StoreError>;

    /// [`read_all`](Self::read_all) for a reader that needs only the seals `opening`
    /// names opened; the others stay shut (see [`Opening`]). A store that does not seal
    /// reads as `read_all` does.
    async fn read_all_opening(
        &self,
        from_position: u64,
        limit: usize,
        _opening: &'static Opening,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.read_all(from_position, limit).await
    }

    /// Events with `position >= from_position` in position order, at most `limit`, as
    /// stored and in one buffer (see [`StoredPage`]): for readers that decode in place.
    /// Only events of the types `opening` names come with their id and metadata.
    async fn read_stored(
        &self,
        from_position: u64,
        limit: usize,
        opening: &'static Opening,
    ) -> Result<StoredPage, StoreError> {
        Ok(StoredPage::from_records(&self.read_all(from_position, limit).await?, opening))
    }

    /// [`read_all_opening`](Self::read_all_opening) for folding: each event as the read
    /// models fold it ([`FoldEvent`]), its payload decoded.
    async fn read_folding(
        &self,
        from_position: u64,
        limit: usize,
        opening: &'static Opening,
    ) -> Result<Vec<FoldEvent>, StoreError> {
        let records = self.read_all_opening(from_position, limit, opening).await?;
        Ok(records.into_iter().map(|r| FoldEvent::from_recorded(r, opening)).collect())
    }

    /// Replaces the payload and metadata of recorded events of `stream`, keeping
    /// everything else (id, type, version, positions): the one exception to an
    /// append-only log, for erasing personal data. All or nothing; returns how
    /// many events were rewritten.
    async fn redact(&self, stream: &StreamId, redactions: Vec<Redaction>) -> Result<usize, StoreError>;

    /// The tamper-evident chain of events with `position >= from_position`, at most
    /// `limit`, in position order: each event's content digest computed from its bytes as
    /// stored, the link recorded with it, and for an event redacted in place the digest it
    /// had before (see [`crate::chain`]).
    async fn read_chain(&self, from_position: u64, limit: usize) -> Result<Vec<ChainRecord>, StoreError>;

    /// The last position and its link as the log's writer recorded them with its commit
    /// (`None` for an empty log): a walk of the chain that ends before it, or finds
    /// another link there, has found events removed from the end or replaced.
    async fn chain_head(&self) -> Result<Option<(u64, crate::chain::Digest)>, StoreError>;

    /// The position of the last committed event (0 for an empty log).
    async fn head_position(&self) -> Result<u64, StoreError>;

    /// Counts for operators.
    async fn stats(&self) -> Result<StoreStats, StoreError>;

    /// A receiver that changes whenever this store learns of a new head position
    /// (its own commits, and other writers' where the backend can tell).
    fn head_watch(&self) -> watch::Receiver<u64>;

    /// Backend name, e.g. `sqlite`.
    fn backend(&self) -> &'static str;

    /// Events from `from_position` on (at most `limit`) that this instance committed
    /// itself and still holds in memory, if it holds `from_position`: what
    /// [`EventStore::read_all`] would return for a prefix of that range, without a
    /// database round trip. Live subscriptions ask here first. `None`: read the log.
    fn recent(&self, _from_position: u64, _limit: usize) -> Option<Vec<RecordedEvent>> {
        None
    }

    /// Deletes `subject`'s data key (see [`crate::seal`]): every field sealed with it is
    /// unreadable from now on, in every copy of the log, with nothing rewritten. Returns
    /// whether a key was deleted; a store that does not seal has none to delete.
    async fn erase_subject(&self, _subject: uuid::Uuid) -> Result<bool, StoreError> {
        Ok(false)
    }

    /// Whether this store seals personal fields as it appends them.
    fn seals(&self) -> bool {
        false
    }

    /// Whether [`EventStore::redact`] can rewrite recorded events (an append-only
    /// engine cannot): erasing a user whose events were recorded before sealing needs it.
    fn rewrites_in_place(&self) -> bool {
        true
    }

    /// Who makes this instance's appends: itself, or (where a log's replicas forward to
    /// one writer) this instance as the writer, or the writer it forwards to.
    fn appends(&self) -> Appends {
        Appends::OnItsOwn
    }

    /// Whether [`EventStore::try_lease`] gives leases every process of this log sees.
    fn leases(&self) -> bool {
        false
    }

    /// Takes the lease `name` (e.g. `relay-amqp`) if no process of this log holds it: it
    /// is held while the returned [`Lease`] lives, and ends with the process that holds
    /// it, however it ends. `None`: another holds it (or the store has no leases).
    async fn try_lease(&self, _name: &str) -> Result<Option<Lease>, StoreError> {
        Ok(None)
    }
}

/// Who makes an instance's appends (see [`EventStore::appends`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "role", content = "writer", rename_all = "snake_case")]
pub enum Appends {
    /// It appends on its own.
    OnItsOwn,
    /// It is the writer its log's replicas forward their appends to.
    Writer,
    /// It forwards its appends to the writer at this address.
    ForwardsTo(String),
}

/// A lease taken with [`EventStore::try_lease`]; dropping it gives the lease up.
pub struct Lease {
    _held: Box<dyn std::any::Any + Send>,
    /// Turns true when the lease ends before it is dropped; `None`: it lasts as long as
    /// the process.
    lost: Option<watch::Receiver<bool>>,
}

impl Lease {
    /// A lease held for as long as `held` lives in this process.
    pub(crate) fn new(held: impl std::any::Any + Send) -> Self {
        Lease { _held: Box::new(held), lost: None }
    }

    /// A lease that may end under its holder (a database session that ends): `lost`
    /// turns true then, or its sender goes.
    pub(crate) fn watched(held: impl std::any::Any + Send, lost: watch::Receiver<bool>) -> Self {
        Lease { _held: Box::new(held), lost: Some(lost) }
    }

    /// Resolves if the lease ends while it is held: then another process may take it,
    /// and what it guarded must stop. Never resolves for a lease that ends only with
    /// its process (a lock file).
    pub async fn lost(&mut self) {
        match &mut self.lost {
            Some(lost) => {
                // An error: the watcher is gone, and with it what held the lease.
                let _ = lost.wait_for(|lost| *lost).await;
            }
            None => std::future::pending().await,
        }
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Lease")
    }
}

/// Lease names are short lower-case words: `relay-amqp`.
pub(crate) fn check_lease_name(name: &str) -> Result<(), StoreError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(StoreError::Unavailable {
            backend: "lease",
            message: format!("lease name '{name}' is not 1 to 64 characters of [a-z0-9-]"),
        })
    }
}

/// A lease on one machine: an exclusive `flock` of the file at `path` (made if
/// missing), which the kernel releases when the process ends. `None`: another process
/// holds it.
pub fn file_lease(path: &std::path::Path) -> std::io::Result<Option<Lease>> {
    use std::os::fd::AsRawFd;
    let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(path)?;
    // SAFETY: flock on a descriptor this function owns; no memory is involved.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(Some(Lease::new(file)));
    }
    let e = std::io::Error::last_os_error();
    if e.kind() == std::io::ErrorKind::WouldBlock {
        Ok(None)
    } else {
        Err(e)
    }
}

/// Catch-up-then-live subscription to the whole log from `from_position` (inclusive).
pub fn subscribe_all(store: Arc<dyn EventStore>, from_position: u64) -> Subscription {
    Subscription::new(store, from_position)
}

/// New content for one recorded event (see [`EventStore::redact`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Redaction {
    pub position: u64,
    /// Payload of the same type and schema version, with personal data removed.
    pub payload: Vec<u8>,
    pub metadata: crate::envelope::Metadata,
}

/// Checks redactions like appends; returns each one's encoded metadata.
pub(crate) fn validate_redactions(redactions: &[Redaction]) -> Result<Vec<Vec<u8>>, StoreError> {
    redactions
        .iter()
        .map(|r| {
            let metadata = r.metadata.encode();
            let size = r.payload.len() + metadata.len();
            if size > crate::limits::MAX_EVENT_BYTES {
                return Err(StoreError::PayloadTooLarge {
                    event_id: uuid::Uuid::nil(),
                    size,
                    max: crate::limits::MAX_EVENT_BYTES,
                });
            }
            Ok(metadata)
        })
        .collect()
}

/// A redaction must replace an event's payload with one of the same type and schema
/// version: the new bytes decode as that (type, version) and encode back to themselves.
pub(crate) fn check_redaction(
    position: u64,
    event_type: &str,
    schema_version: u16,
    payload: &[u8],
) -> Result<(), StoreError> {
    let mismatch = |reason: String| StoreError::RedactionMismatch { position, reason };
    let event = crate::Event::decode(event_type, schema_version, payload)
        .map_err(|e| mismatch(format!("the payload is not a {event_type} v{schema_version}: {e}")))?;
    let again = crate::catalog::legacy::encode_as(&event, schema_version).map_err(|e| mismatch(e.to_string()))?;
    if again != payload {
        return Err(mismatch(format!(
            "the payload does not encode as a {event_type} v{schema_version} (another type or version?)"
        )));
    }
    Ok(())
}

/// Counts of the log, by event type.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StoreStats {
    pub backend: &'static str,
    pub head_position: u64,
    pub events: u64,
    pub streams: u64,
    /// (event_type, schema_version, count), sorted by type.
    pub by_type: Vec<(String, u16, u64)>,
    /// Bytes on disk, where the backend can tell.
    pub size_bytes: Option<u64>,
}

/// Opens a store from a URL: `sqlite://<path to file>` or `postgres://…`, sealing
/// personal fields with keys kept beside it (see [`crate::seal`]).
pub async fn open(url: &str) -> Result<Arc<dyn EventStore>, StoreError> {
    if let Some(path) = url.strip_prefix("sqlite://") {
        if path.is_empty() {
            return Err(StoreError::InvalidUrl { url: url.into(), reason: "no file path after sqlite://".into() });
        }
        let store = SqliteStore::open(SqliteConfig::new(path)).await?;
        let keys = crate::seal::SqliteKeys::open(crate::seal::SqliteKeys::path_for(store.path())).await?;
        Ok(Arc::new(crate::seal::SealingStore::new(Arc::new(store), Arc::new(keys))))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let store = PostgresStore::connect(PostgresConfig::from_url(url)?).await?;
        let keys = store.keys();
        Ok(Arc::new(crate::seal::SealingStore::new(Arc::new(store), Arc::new(keys))))
    } else if url.starts_with("kafka://") {
        open_kafka(url).await
    } else {
        Err(StoreError::InvalidUrl {
            url: url.into(),
            reason: "expected sqlite://<file>, postgres://user@host/db or kafka://host:port/topic".into(),
        })
    }
}

/// A Kafka log, sealing with keys in the SQLite file or PostgreSQL database its `keys`
/// option names (a key store must be able to delete, which a topic cannot).
#[cfg(feature = "kafka")]
async fn open_kafka(url: &str) -> Result<Arc<dyn EventStore>, StoreError> {
    let config = KafkaConfig::from_url(url)?;
    let keys: Arc<dyn crate::seal::KeyStore> = match config.keys.as_deref() {
        None => {
            return Err(StoreError::InvalidUrl {
                url: url.into(),
                reason: "a Kafka log needs a key store for personal fields: keys=<SQLite file> or keys=postgres://…"
                    .into(),
            })
        }
        Some(pg) if pg.starts_with("postgres://") || pg.starts_with("postgresql://") => {
            Arc::new(PostgresStore::connect(PostgresConfig::new(pg)).await?.keys())
        }
        Some(path) => Arc::new(crate::seal::SqliteKeys::open(path.strip_prefix("sqlite://").unwrap_or(path)).await?),
    };
    let store = KafkaStore::open(config).await?;
    Ok(Arc::new(crate::seal::SealingStore::new(Arc::new(store), keys)))
}

#[cfg(not(feature = "kafka"))]
async fn open_kafka(url: &str) -> Result<Arc<dyn EventStore>, StoreError> {
    Err(StoreError::InvalidUrl {
        url: url.into(),
        reason: "this build has no Kafka backend: build perfect21 with `--features kafka`".into(),
    })
}

/// A read's start (position or stream version) and limit as the backends store them:
/// a start beyond `i64::MAX` is refused the same way everywhere, and a limit beyond it
/// means "no limit" everywhere.
pub(crate) fn read_bounds(what: &'static str, from: u64, limit: usize) -> Result<(i64, i64), StoreError> {
    let from = i64::try_from(from).map_err(|_| StoreError::OutOfRange { what, value: from, max: i64::MAX as u64 })?;
    Ok((from, i64::try_from(limit).unwrap_or(i64::MAX)))
}

/// Checks an append's arguments the same way in every backend; returns each event's encoded metadata.
pub(crate) fn validate_append(events: &[EventData]) -> Result<Vec<Vec<u8>>, StoreError> {
    check_count(events.len())?;
    events.iter().map(EventData::validate).collect()
}

/// An append of `count` events has some, and no more than one append may.
pub(crate) fn check_count(count: usize) -> Result<(), StoreError> {
    if count == 0 {
        return Err(StoreError::EmptyAppend);
    }
    if count > MAX_EVENTS_PER_APPEND {
        return Err(StoreError::TooManyEvents { count, max: MAX_EVENTS_PER_APPEND });
    }
    Ok(())
}

/// How an append relates to events already in the log with the same ids.
pub(crate) enum Existing {
    /// None of the ids is recorded.
    New,
    /// All are recorded, consecutively in this stream: the append already happened.
    Replay(AppendResult),
}

/// Decides whether an append whose first event id is recorded at `found` is an
/// exact re-append. `found` lists (event_id, stream, version, position) for the
/// ids that exist, in the append's order.
pub(crate) fn classify_existing(
    stream: &StreamId,
    events: &[EventData],
    found: &[(uuid::Uuid, String, u64, u64)],
) -> Result<Existing, StoreError> {
    let Some(first) = found.first() else {
        return Ok(Existing::New);
    };
    let exact = found.len() == events.len()
        && found.iter().zip(events).enumerate().all(|(i, ((id, s, v, p), e))| {
            *id == e.event_id && s == stream.as_str() && *v == first.2 + i as u64 && *p == first.3 + i as u64
        });
    if exact {
        let last = found.last().expect("non-empty");
        return Ok(Existing::Replay(AppendResult {
            first_position: first.3,
            position: last.3,
            stream_version: last.2,
        }));
    }
    let (event_id, s, _, position) = first.clone();
    Err(StoreError::DuplicateEventId { event_id, stream: s, position })
}
