//! What the notification service remembers (SQLite in its data directory):
//! message ids already handled (so a redelivery never sends twice) and messages
//! scheduled for later (`send_at`), so delayed delivery needs no broker plugin.

use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;
use std::sync::Mutex;

pub struct NotifyStore {
    conn: Mutex<Connection>,
}

impl NotifyStore {
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let conn = Connection::open(path)?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;
             CREATE TABLE IF NOT EXISTS handled (message_id TEXT PRIMARY KEY, at INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS scheduled (
                 message_id TEXT PRIMARY KEY, send_at INTEGER NOT NULL, -- Unix milliseconds
                 routing_key TEXT NOT NULL, body BLOB NOT NULL);
             CREATE INDEX IF NOT EXISTS scheduled_at ON scheduled (send_at);",
        )?;
        Ok(NotifyStore { conn: Mutex::new(conn) })
    }

    pub fn was_handled(&self, message_id: &str) -> anyhow::Result<bool> {
        let conn = self.conn.lock().expect("notify store");
        Ok(conn
            .query_row("SELECT 1 FROM handled WHERE message_id = ?1", [message_id], |_| Ok(()))
            .optional()?
            .is_some())
    }

    pub fn mark_handled(&self, message_id: &str) -> anyhow::Result<()> {
        let conn = self.conn.lock().expect("notify store");
        conn.execute(
            "INSERT OR IGNORE INTO handled (message_id, at) VALUES (?1, ?2)",
            params![message_id, chrono::Utc::now().timestamp()],
        )?;
        Ok(())
    }

    /// Keeps a message until `send_at` (Unix milliseconds).
    pub fn schedule(&self, message_id: &str, send_at: i64, routing_key: &str, body: &[u8]) -> anyhow::Result<()> {
        let conn = self.conn.lock().expect("notify store");
        conn.execute(
            "INSERT OR IGNORE INTO scheduled (message_id, send_at, routing_key, body) VALUES (?1, ?2, ?3, ?4)",
            params![message_id, send_at, routing_key, body],
        )?;
        Ok(())
    }

    /// Scheduled messages that are due: (message_id, routing_key, body).
    pub fn due(&self, now: i64) -> anyhow::Result<Vec<(String, String, Vec<u8>)>> {
        let conn = self.conn.lock().expect("notify store");
        let mut stmt = conn.prepare(
            "SELECT message_id, routing_key, body FROM scheduled WHERE send_at <= ?1 ORDER BY send_at LIMIT 100",
        )?;
        let rows = stmt.query_map([now], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn unschedule(&self, message_id: &str) -> anyhow::Result<()> {
        self.conn.lock().expect("notify store").execute("DELETE FROM scheduled WHERE message_id = ?1", [message_id])?;
        Ok(())
    }
}
