//! Versioned snapshots of the read models, so start-up is snapshot + catch-up
//! instead of a full replay.
//!
//! A snapshot is `MAGIC ‖ format version (u16 LE) ‖ postcard(Snapshot)`. It
//! records the id of the event at its checkpoint (the anchor): a snapshot whose
//! anchor is not the log's event at that position belongs to another log (or to
//! a log that was rebuilt) and is discarded, as is one of another format version.

use crate::ReadModels;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

const MAGIC: &[u8; 8] = b"P21SNAP\0";
/// Bump when any read-model struct changes shape or a fold changes what it keeps: older
/// snapshots are then discarded (and the models replay once).
pub const SNAPSHOT_FORMAT: u16 = 4;

/// Why a snapshot could not be used. Never fatal: the caller replays instead.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("not a read-model snapshot")]
    NotASnapshot,
    #[error("snapshot format {found}, this build reads format {SNAPSHOT_FORMAT}")]
    OtherFormat { found: u16 },
    #[error("snapshot does not decode: {0}")]
    Decode(#[from] postcard::Error),
}

#[derive(Serialize)]
struct SnapshotRef<'a> {
    anchor: Option<Uuid>,
    models: &'a ReadModels,
}

#[derive(Deserialize)]
struct Snapshot {
    anchor: Option<Uuid>,
    models: ReadModels,
}

impl ReadModels {
    /// Encodes the models with `anchor`, the id of the event at their checkpoint.
    pub fn to_snapshot(&self, anchor: Option<Uuid>) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&SNAPSHOT_FORMAT.to_le_bytes());
        // Plain data into a Vec: cannot fail.
        out.extend(postcard::to_stdvec(&SnapshotRef { anchor, models: self }).expect("read models encode"));
        out
    }

    /// Decodes a snapshot; returns the models and the anchor to check against the log.
    pub fn from_snapshot(bytes: &[u8]) -> Result<(ReadModels, Option<Uuid>), SnapshotError> {
        let rest = bytes.strip_prefix(MAGIC.as_slice()).ok_or(SnapshotError::NotASnapshot)?;
        let (version, body) = rest.split_at_checked(2).ok_or(SnapshotError::NotASnapshot)?;
        let found = u16::from_le_bytes([version[0], version[1]]);
        if found != SNAPSHOT_FORMAT {
            return Err(SnapshotError::OtherFormat { found });
        }
        let s: Snapshot = postcard::from_bytes(body)?;
        Ok((s.models, s.anchor))
    }
}
