//! Reading the log to fold it: pages of stored events in one buffer, and events as the
//! read models fold them.
//!
//! A replay reads every event once and keeps only what its folds take from it. Reading
//! each into a [`RecordedEvent`] makes its stream id, type, payload and every metadata
//! field a separate allocation, freed again on another thread once folded; a
//! [`StoredPage`] holds a page's bytes in one buffer, where seals are opened and payloads
//! decoded in place, and a [`FoldEvent`] carries only what a fold reads.

use crate::envelope::{from_micros, Metadata, RecordedEvent};
use crate::error::CodecError;
use crate::seal::Opening;
use crate::Event;
use chrono::{DateTime, Utc};
use uuid::Uuid;

/// An event as the read models fold it: where it is, when it was recorded, its payload
/// decoded, and the metadata fields the folds read, for the types whose metadata the
/// reader's [`Opening`] names (`None` for the others).
#[derive(Debug)]
pub struct FoldEvent {
    pub position: u64,
    pub recorded_at: DateTime<Utc>,
    /// The payload decoded into its newest version (or why it does not decode).
    pub event: Result<Event, CodecError>,
    pub client_ip: Option<String>,
    pub user_agent: Option<String>,
}

impl FoldEvent {
    /// `recorded` as a fold reads it through `opening`.
    pub fn from_recorded(recorded: RecordedEvent, opening: &Opening) -> FoldEvent {
        let event = recorded.decode();
        let Metadata { client_ip, user_agent, .. } = recorded.metadata;
        let read = opening.metadata(&recorded.event_type);
        FoldEvent {
            position: recorded.position,
            recorded_at: recorded.recorded_at,
            event,
            client_ip: client_ip.filter(|_| read),
            user_agent: user_agent.filter(|_| read),
        }
    }
}

/// One event of a [`StoredPage`]: its columns as stored, borrowed from the page (its
/// metadata and payload as `B`: shared, or writable in a [`StoredMut`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored<'a, B = &'a [u8]> {
    pub position: u64,
    pub event_id: Uuid,
    pub event_type: &'a str,
    pub schema_version: u16,
    /// Microseconds since the Unix epoch.
    pub recorded_at: i64,
    /// The encoded [`Metadata`], as stored (seal and all).
    pub metadata: B,
    /// The payload, as stored (a sealed version's seal and all).
    pub payload: B,
}

/// [`Stored`] with its metadata and payload writable, to open their seals where they lie.
pub type StoredMut<'a> = Stored<'a, &'a mut [u8]>;

/// Bytes of metadata and payload a page read from a store makes room for per event (a
/// sealed registration with its sealed metadata takes about 450, the events of a user's
/// life 220 on average).
pub(crate) const STORED_BYTES: usize = 320;

/// Up to a page of the log's events as stored (what a fold reads of them: not their
/// stream), their metadata and payload side by side in one buffer, each type kept once.
///
/// A page is read for an [`Opening`]: an event of a type it does not name is read
/// without its id and metadata (a nil id, empty metadata), since a fold reads neither
/// of an event whose seals stay shut. A store skips those columns for most events.
#[derive(Debug, Default)]
pub struct StoredPage {
    bytes: Vec<u8>,
    rows: Vec<Row>,
    /// The page's event types, each once (a page holds a few of the catalog's).
    types: Vec<Box<str>>,
}

/// One event of a page: its type in `types`, its metadata and payload from `start` in `bytes`.
#[derive(Debug, Clone, Copy)]
struct Row {
    position: u64,
    event_id: Uuid,
    schema_version: u16,
    event_type: usize,
    recorded_at: i64,
    start: usize,
    metadata_len: usize,
    payload_len: usize,
}

impl StoredPage {
    /// Room for `events` events of about `bytes_each` bytes of metadata and payload.
    pub fn with_capacity(events: usize, bytes_each: usize) -> Self {
        StoredPage {
            bytes: Vec::with_capacity(events.saturating_mul(bytes_each)),
            rows: Vec::with_capacity(events),
            types: Vec::new(),
        }
    }

    /// The events of `records` as read for `opening`, re-encoding the metadata it needs
    /// (for stores that read events whole).
    pub fn from_records(records: &[RecordedEvent], opening: &Opening) -> Self {
        let mut page = StoredPage::with_capacity(records.len(), 0);
        for r in records {
            let metadata = if opening.names(&r.event_type) { r.metadata.encode() } else { Vec::new() };
            page.push(
                Stored {
                    position: r.position,
                    event_id: r.event_id,
                    event_type: &r.event_type,
                    schema_version: r.schema_version,
                    recorded_at: r.recorded_at.timestamp_micros(),
                    metadata: &metadata,
                    payload: &r.payload,
                },
                opening,
            );
        }
        page
    }

    /// Adds an event after the others (in position order), as read for `opening`: without
    /// its id and metadata if `opening` does not name its type.
    pub fn push(&mut self, e: Stored<'_>, opening: &Opening) {
        let t = self.type_of(e.event_type.as_bytes()).expect("a `str` is UTF-8");
        let (event_id, metadata) =
            if self.names(t, opening) { (e.event_id, e.metadata) } else { (Uuid::nil(), &[][..]) };
        self.push_typed(t, Stored { event_id, metadata, ..e });
    }

    /// The index in this page of the event type spelt `bytes`: the type of the event
    /// before, most often, else one seen earlier in the page, else a new one (checked
    /// to be UTF-8 only then).
    pub(crate) fn type_of(&mut self, bytes: &[u8]) -> Result<usize, std::str::Utf8Error> {
        let last = self.rows.last().map(|r| r.event_type);
        if let Some(t) = last.filter(|t| self.types[*t].as_bytes() == bytes) {
            return Ok(t);
        }
        if let Some(t) = self.types.iter().position(|t| t.as_bytes() == bytes) {
            return Ok(t);
        }
        self.types.push(std::str::from_utf8(bytes)?.into());
        Ok(self.types.len() - 1)
    }

    /// Whether a reader through `opening` needs the id and metadata of events of the
    /// page's type `t` (see [`Opening::names`]).
    pub(crate) fn names(&self, t: usize, opening: &Opening) -> bool {
        opening.names(&self.types[t])
    }

    /// Adds an event of the page's type `t` (from [`type_of`](Self::type_of)) after the
    /// others, as it is given (`e.event_type` is not read).
    pub(crate) fn push_typed(&mut self, event_type: usize, e: Stored<'_>) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(e.metadata);
        self.bytes.extend_from_slice(e.payload);
        self.rows.push(Row {
            position: e.position,
            event_id: e.event_id,
            schema_version: e.schema_version,
            event_type,
            recorded_at: e.recorded_at,
            start,
            metadata_len: e.metadata.len(),
            payload_len: e.payload.len(),
        });
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The `i`-th event (from 0).
    pub fn get(&self, i: usize) -> Stored<'_> {
        let row = self.rows[i];
        row.stored(&self.types[row.event_type], self.bytes[row.bytes()].split_at(row.metadata_len))
    }

    /// The `i`-th event, its metadata and payload writable.
    pub fn get_mut(&mut self, i: usize) -> StoredMut<'_> {
        let row = self.rows[i];
        row.stored(&self.types[row.event_type], self.bytes[row.bytes()].split_at_mut(row.metadata_len))
    }

    /// The events in order.
    pub fn iter(&self) -> impl Iterator<Item = Stored<'_>> {
        (0..self.len()).map(|i| self.get(i))
    }
}

impl Row {
    /// Where its metadata and payload lie in the page's bytes.
    fn bytes(&self) -> std::ops::Range<usize> {
        self.start..self.start + self.metadata_len + self.payload_len
    }

    fn stored<'a, B>(&self, event_type: &'a str, (metadata, payload): (B, B)) -> Stored<'a, B> {
        Stored {
            position: self.position,
            event_id: self.event_id,
            event_type,
            schema_version: self.schema_version,
            recorded_at: self.recorded_at,
            metadata,
            payload,
        }
    }
}

impl StoredMut<'_> {
    /// The event as a fold reads it, its payload decoded from `payload[read]` as version
    /// `version` (what opening its seal left to read) and the metadata fields given.
    pub(crate) fn fold(
        &self,
        read: std::ops::Range<usize>,
        version: u16,
        client_ip: Option<String>,
        user_agent: Option<String>,
    ) -> FoldEvent {
        FoldEvent {
            position: self.position,
            recorded_at: from_micros(self.recorded_at),
            event: Event::decode(self.event_type, version, &self.payload[read]),
            client_ip,
            user_agent,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_gives_back_each_event_as_pushed() {
        let events = [
            ("user.registered", &b"\x00\x01meta"[..], &b"payload one"[..]),
            ("session.started", &b"m1"[..], &b"p"[..]),
            ("user.logged_out", b"m", b""),
            ("session.started", b"m3", b"p3"),
            ("user.registered", b"m4", b"p4"),
        ];
        // Session events are read without their id and metadata: the opening names no seal of theirs.
        const OPENING: Opening = Opening { payloads: &["user.registered"], metadata: &["user.logged_out"] };
        let whole = |t: &str| t != "session.started";
        let mut page = StoredPage::with_capacity(1, 4);
        for (i, &(t, m, p)) in events.iter().enumerate() {
            let stored = Stored {
                position: i as u64 + 1,
                event_id: Uuid::from_u128(i as u128 + 1),
                event_type: t,
                schema_version: i as u16,
                recorded_at: -(i as i64),
                metadata: m,
                payload: p,
            };
            page.push(stored, &OPENING);
        }
        assert_eq!(page.len(), 5);
        assert_eq!(page.types.len(), 3, "each type kept once");
        for (i, (s, (t, m, p))) in page.iter().zip(events).enumerate() {
            let id = if whole(t) { Uuid::from_u128(i as u128 + 1) } else { Uuid::nil() };
            assert_eq!(
                (s.position, s.event_id, s.schema_version, s.recorded_at),
                (i as u64 + 1, id, i as u16, -(i as i64))
            );
            let m = if whole(t) { m } else { &b""[..] };
            assert_eq!((s.event_type, s.metadata, s.payload), (t, m, p));
        }
        let e = page.get_mut(0);
        e.payload.copy_from_slice(b"PAYLOAD ONE");
        e.metadata[0] = 9;
        assert_eq!((page.get(0).metadata, page.get(0).payload), (&b"\x09\x01meta"[..], &b"PAYLOAD ONE"[..]));
        assert_eq!(
            page.get(1),
            Stored {
                position: 2,
                event_id: Uuid::nil(),
                event_type: "session.started",
                schema_version: 1,
                recorded_at: -1,
                metadata: &b""[..],
                payload: &b"p"[..],
            }
        );
    }

    #[test]
    fn a_type_is_checked_to_be_utf8_once_per_page() {
        let mut page = StoredPage::default();
        assert_eq!(page.type_of(b"user.registered"), Ok(0));
        assert!(page.type_of(b"user.\xffregistered").is_err(), "not UTF-8");
        assert_eq!(page.types.len(), 1, "nothing kept of a type that is not UTF-8");
        assert_eq!(page.type_of(b"session.started"), Ok(1));
        assert_eq!(page.type_of(b"user.registered"), Ok(0));
    }
}
