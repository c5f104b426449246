//! Where subjects' data keys live: a [`KeyStore`], never the log.

use super::DataKey;
use crate::error::StoreError;
use async_trait::async_trait;
use rusqlite::{params, Connection};
use sqlx::PgPool;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use uuid::Uuid;

/// What the key store holds for a subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyState {
    Live(DataKey),
    /// The subject was erased: its key is gone for good.
    Erased,
    /// No key was ever made for it.
    Unknown,
}

/// Subjects' data keys. Every backend of the log that seals has one; an append-only
/// engine (Kafka) implements it over a store that can delete.
#[async_trait]
pub trait KeyStore: Send + Sync + 'static {
    /// Each subject's key, in the order asked, making (durably) one for each subject that
    /// has none. Erased subjects stay erased.
    async fn keys_for_append(&self, subjects: &[Uuid]) -> Result<Vec<KeyState>, StoreError>;

    /// Each subject's key as stored, in the order asked.
    async fn keys(&self, subjects: &[Uuid]) -> Result<Vec<KeyState>, StoreError>;

    /// Deletes the subject's key for good and records that it was erased, so that no key
    /// is ever made for it again. Returns whether a key was deleted.
    async fn erase(&self, subject: Uuid) -> Result<bool, StoreError>;

    /// Where the keys are, for operators (`keys in /data/events.keys.db`).
    fn location(&self) -> String;
}

fn now_micros() -> i64 {
    crate::envelope::to_micros(chrono::Utc::now())
}

fn state(key: Option<Option<Vec<u8>>>, backend: &'static str) -> Result<KeyState, StoreError> {
    Ok(match key {
        None => KeyState::Unknown,
        Some(None) => KeyState::Erased,
        Some(Some(bytes)) => KeyState::Live(DataKey::from_slice(&bytes).ok_or_else(|| {
            StoreError::unavailable(backend, format!("a data key of {} bytes (expected 32)", bytes.len()))
        })?),
    })
}

const SQLITE_MIGRATIONS: [&str; 1] = [include_str!("../../../../migrations/sqlite/keys/0001_subject_keys.sql")];

/// The key store of a SQLite log: a file of its own beside the log (`events.db` →
/// `events.keys.db`), written with `secure_delete` so that an erased key's bytes are
/// overwritten, and checkpointed after each erasure so that none stay in its WAL.
pub struct SqliteKeys {
    path: PathBuf,
    conn: Arc<Mutex<Connection>>,
}

fn sqlite_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::unavailable("sqlite", e)
}

impl SqliteKeys {
    /// The key file that belongs to the log file `log`.
    pub fn path_for(log: &Path) -> PathBuf {
        let stem = log.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "events".into());
        log.with_file_name(format!("{stem}.keys.db"))
    }

    /// Opens (creating if needed) the key file at `path`.
    pub async fn open(path: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let path = path.into();
        let at = path.clone();
        let conn = tokio::task::spawn_blocking(move || -> Result<Connection, StoreError> {
            let conn = Connection::open(&at).map_err(|e| sqlite_err(format!("cannot open {}: {e}", at.display())))?;
            conn.busy_timeout(std::time::Duration::from_secs(10)).map_err(sqlite_err)?;
            conn.pragma_update(None, "journal_mode", "WAL").map_err(sqlite_err)?;
            // A key acknowledged is on disk before the event it seals is appended.
            conn.pragma_update(None, "synchronous", "FULL").map_err(sqlite_err)?;
            conn.pragma_update(None, "secure_delete", "ON").map_err(sqlite_err)?;
            let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(sqlite_err)?;
            for (i, sql) in SQLITE_MIGRATIONS.iter().enumerate().skip(version.max(0) as usize) {
                conn.execute_batch(sql).map_err(sqlite_err)?;
                conn.pragma_update(None, "user_version", i as i64 + 1).map_err(sqlite_err)?;
            }
            Ok(conn)
        })
        .await
        .map_err(sqlite_err)??;
        Ok(SqliteKeys { path, conn: Arc::new(Mutex::new(conn)) })
    }

    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || f(&mut conn.lock().expect("key store connection")))
            .await
            .map_err(sqlite_err)?
    }
}

/// The state of each of `subjects`, in their order.
fn sqlite_lookup(conn: &Connection, subjects: &[Uuid]) -> Result<Vec<KeyState>, StoreError> {
    if subjects.len() >= RANGE_FROM && subjects.windows(2).all(|w| w[0] < w[1]) {
        if let Some(states) = sqlite_range(conn, subjects)? {
            return Ok(states);
        }
    }
    let mut select = conn.prepare_cached("SELECT data_key FROM subject_keys WHERE subject = ?1").map_err(sqlite_err)?;
    subjects
        .iter()
        .map(|s| {
            let mut rows = select.query(params![s.as_bytes()]).map_err(sqlite_err)?;
            match rows.next().map_err(sqlite_err)? {
                Some(row) => stored_state(row.get_ref(0).map_err(sqlite_err)?),
                None => Ok(KeyState::Unknown),
            }
        })
        .collect()
}

/// Subjects from which a lookup first tries one walk over the range they span.
const RANGE_FROM: usize = 32;

/// The states of `subjects` (sorted, distinct) by one walk over the keys from the first
/// to the last of them: the subjects of a page of the log registered close together, so
/// their keys lie close together. `None` if the range holds many more keys than were
/// asked for (then each is looked up on its own).
fn sqlite_range(conn: &Connection, subjects: &[Uuid]) -> Result<Option<Vec<KeyState>>, StoreError> {
    let (first, last) = (subjects[0], subjects[subjects.len() - 1]);
    let mut select = conn
        .prepare_cached("SELECT subject, data_key FROM subject_keys WHERE subject BETWEEN ?1 AND ?2 ORDER BY subject")
        .map_err(sqlite_err)?;
    let mut rows = select.query(params![first.as_bytes(), last.as_bytes()]).map_err(sqlite_err)?;
    let budget = subjects.len() * 4;
    let mut states = Vec::with_capacity(subjects.len());
    let mut walked = 0;
    while let Some(row) = rows.next().map_err(sqlite_err)? {
        walked += 1;
        if walked > budget {
            return Ok(None);
        }
        let subject = row.get_ref(0).map_err(sqlite_err)?.as_blob().map_err(sqlite_err)?;
        while states.len() < subjects.len() && subjects[states.len()].as_bytes().as_slice() < subject {
            states.push(KeyState::Unknown);
        }
        if states.len() < subjects.len() && subjects[states.len()].as_bytes().as_slice() == subject {
            states.push(stored_state(row.get_ref(1).map_err(sqlite_err)?)?);
        }
        if states.len() == subjects.len() {
            break;
        }
    }
    states.resize_with(subjects.len(), || KeyState::Unknown);
    Ok(Some(states))
}

/// A stored key column: NULL for an erased subject.
fn stored_state(key: rusqlite::types::ValueRef<'_>) -> Result<KeyState, StoreError> {
    match key {
        rusqlite::types::ValueRef::Null => Ok(KeyState::Erased),
        other => state(Some(Some(other.as_blob().map_err(sqlite_err)?.to_vec())), "sqlite"),
    }
}

#[async_trait]
impl KeyStore for SqliteKeys {
    async fn keys_for_append(&self, subjects: &[Uuid]) -> Result<Vec<KeyState>, StoreError> {
        let subjects = subjects.to_vec();
        self.with(move |conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(sqlite_err)?;
            {
                let mut insert = tx
                    .prepare_cached(
                        "INSERT INTO subject_keys (subject, data_key, created_at) VALUES (?1, ?2, ?3)
                         ON CONFLICT (subject) DO NOTHING",
                    )
                    .map_err(sqlite_err)?;
                for s in &subjects {
                    insert
                        .execute(params![s.as_bytes(), &DataKey::random().as_bytes()[..], now_micros()])
                        .map_err(sqlite_err)?;
                }
            }
            let states = sqlite_lookup(&tx, &subjects)?;
            tx.commit().map_err(sqlite_err)?;
            Ok(states)
        })
        .await
    }

    async fn keys(&self, subjects: &[Uuid]) -> Result<Vec<KeyState>, StoreError> {
        let subjects = subjects.to_vec();
        self.with(move |conn| {
            // One read transaction for the lot, not one per subject (a replay asks for thousands).
            let tx = conn.transaction().map_err(sqlite_err)?;
            let states = sqlite_lookup(&tx, &subjects)?;
            tx.commit().map_err(sqlite_err)?;
            Ok(states)
        })
        .await
    }

    async fn erase(&self, subject: Uuid) -> Result<bool, StoreError> {
        self.with(move |conn| {
            let now = now_micros();
            let erased = conn
                .execute(
                    "UPDATE subject_keys SET data_key = NULL, erased_at = ?2 WHERE subject = ?1 AND data_key IS NOT NULL",
                    params![subject.as_bytes(), now],
                )
                .map_err(sqlite_err)?;
            conn.execute(
                "INSERT INTO subject_keys (subject, data_key, created_at, erased_at) VALUES (?1, NULL, ?2, ?2)
                 ON CONFLICT (subject) DO NOTHING",
                params![subject.as_bytes(), now],
            )
            .map_err(sqlite_err)?;
            // The key's page images in the WAL go with it: copy them back and truncate.
            let busy: i64 =
                conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0)).map_err(sqlite_err)?;
            if busy != 0 {
                tracing::warn!("the key file's WAL could not be truncated now (a reader holds it); it will be at the next checkpoint");
            }
            Ok(erased > 0)
        })
        .await
    }

    fn location(&self) -> String {
        format!("keys in {}", self.path.display())
    }
}

/// The key store of a PostgreSQL log: the `subject_keys` table of its schema.
#[derive(Clone)]
pub struct PostgresKeys {
    pool: PgPool,
}

fn pg_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::unavailable("postgres", e)
}

impl PostgresKeys {
    pub(crate) fn new(pool: PgPool) -> Self {
        PostgresKeys { pool }
    }

    async fn lookup(&self, subjects: &[Uuid]) -> Result<Vec<KeyState>, StoreError> {
        let rows: Vec<(Uuid, Option<Vec<u8>>)> =
            sqlx::query_as("SELECT subject, data_key FROM subject_keys WHERE subject = ANY($1)")
                .bind(subjects)
                .fetch_all(&self.pool)
                .await
                .map_err(pg_err)?;
        let found: std::collections::HashMap<Uuid, Option<Vec<u8>>> = rows.into_iter().collect();
        subjects.iter().map(|s| state(found.get(s).cloned(), "postgres")).collect()
    }
}

#[async_trait]
impl KeyStore for PostgresKeys {
    async fn keys_for_append(&self, subjects: &[Uuid]) -> Result<Vec<KeyState>, StoreError> {
        let keys: Vec<Vec<u8>> = subjects.iter().map(|_| DataKey::random().as_bytes().to_vec()).collect();
        sqlx::query(
            "INSERT INTO subject_keys (subject, data_key) SELECT * FROM unnest($1::uuid[], $2::bytea[])
             ON CONFLICT (subject) DO NOTHING",
        )
        .bind(subjects)
        .bind(&keys)
        .execute(&self.pool)
        .await
        .map_err(pg_err)?;
        self.lookup(subjects).await
    }

    async fn keys(&self, subjects: &[Uuid]) -> Result<Vec<KeyState>, StoreError> {
        self.lookup(subjects).await
    }

    async fn erase(&self, subject: Uuid) -> Result<bool, StoreError> {
        let erased = sqlx::query(
            "UPDATE subject_keys SET data_key = NULL, erased_at = now() WHERE subject = $1 AND data_key IS NOT NULL",
        )
        .bind(subject)
        .execute(&self.pool)
        .await
        .map_err(pg_err)?
        .rows_affected();
        sqlx::query(
            "INSERT INTO subject_keys (subject, data_key, erased_at) VALUES ($1, NULL, now()) ON CONFLICT DO NOTHING",
        )
        .bind(subject)
        .execute(&self.pool)
        .await
        .map_err(pg_err)?;
        // The row version that held the key is dead now; VACUUM makes its space reusable
        // at once instead of whenever autovacuum comes by.
        if let Err(e) = sqlx::query("VACUUM subject_keys").execute(&self.pool).await {
            tracing::warn!(error = %e, "VACUUM subject_keys after an erasure failed; autovacuum will do it");
        }
        Ok(erased > 0)
    }

    fn location(&self) -> String {
        "keys in the subject_keys table".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lookup by range and one key at a time agree, whatever the range holds besides
    /// the subjects asked for.
    #[tokio::test]
    async fn lookups_by_range_agree_with_lookups_one_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let keys = SqliteKeys::open(dir.path().join("k.db")).await.unwrap();
        let mut made: Vec<Uuid> = (0..400).map(|_| Uuid::now_v7()).collect();
        made.sort();
        keys.keys_for_append(&made).await.unwrap();
        for s in made.iter().step_by(7) {
            keys.erase(*s).await.unwrap();
        }
        let unknown: Vec<Uuid> = (0..20).map(|_| Uuid::now_v7()).collect();
        // Dense (a range of 60 made keys, with unknown subjects after them), and sparse (every
        // tenth key: the range holds ten times more keys than asked for).
        let dense: Vec<Uuid> = made[100..160].iter().chain(&unknown).copied().collect();
        let sparse: Vec<Uuid> = made.iter().step_by(10).copied().collect();
        let below: Vec<Uuid> = std::iter::once(Uuid::nil()).chain(made[..40].iter().copied()).collect();
        for (what, mut asked) in [("dense", dense), ("sparse", sparse), ("below", below)] {
            asked.sort();
            let states = keys.keys(&asked).await.unwrap();
            // One at a time: a lookup whose subjects are not sorted does not use the range.
            let mut reversed = asked.clone();
            reversed.reverse();
            let mut one_by_one = keys.keys(&reversed).await.unwrap();
            one_by_one.reverse();
            assert_eq!(states, one_by_one, "{what}");
            for (s, state) in asked.iter().zip(&states) {
                let expected = match made.binary_search(s) {
                    Err(_) => "unknown",
                    Ok(i) if i % 7 == 0 => "erased",
                    Ok(_) => "live",
                };
                let got = match state {
                    KeyState::Unknown => "unknown",
                    KeyState::Erased => "erased",
                    KeyState::Live(_) => "live",
                };
                assert_eq!(got, expected, "{what}: {s}");
            }
        }
    }
}
