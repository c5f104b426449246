//! The tamper-evident chain of the log.
//!
//! Every event records a *link*: `SHA-256(previous link ‖ position ‖ content digest)`,
//! where the content digest covers the whole envelope as stored — id, stream, stream
//! version, type, schema version, `recorded_at` and the metadata and payload bytes.
//! The first event chains to [`GENESIS`]. Each backend's writer computes links in
//! position order as it commits (SQLite's writer thread; PostgreSQL's append function
//! under the head lock), so the chain holds under concurrent appenders and processes.
//!
//! [`Verifier`] walks [`ChainRecord`]s (from [`EventStore::read_chain`](crate::EventStore::read_chain))
//! and names the first position where the log no longer matches its links: an edited
//! byte, a deleted or inserted row, an edited link.
//!
//! The legacy in-place redaction (for events written before personal data was sealed)
//! changes payload bytes by design. The store then keeps the content digest the event
//! had when it was appended, the chain is checked against that, and the verifier counts
//! those positions so an operator can match them against recorded erasures.
//!
//! A chain without a secret proves the log was not edited *unless* every later link was
//! recomputed too: record the head's link elsewhere (`perfect21 events verify` prints
//! it) and a rewrite of history shows as a different link at that position.

use crate::envelope::to_micros;
use chrono::{DateTime, Utc};
use sha2::{Digest as _, Sha256};
use std::fmt;
use uuid::Uuid;

/// A SHA-256 digest.
pub type Digest = [u8; 32];

/// What the first event of a log chains to.
pub const GENESIS: Digest = [0; 32];

/// Separates this hash's inputs from any other SHA-256 use.
const DOMAIN: &[u8] = b"perfect21.event.v1";

/// The digest of one event's envelope as stored: every field but its position and link.
///
/// ```
/// use perfect21_events::chain::{content_digest, link, GENESIS};
/// let id = uuid::Uuid::nil();
/// let at = chrono::DateTime::from_timestamp_micros(1).unwrap();
/// let d = content_digest(&id, "user-1", 0, "user.email_verified", 1, at, b"", b"\x01");
/// assert_ne!(link(&GENESIS, 1, &d), link(&GENESIS, 2, &d));
/// ```
#[allow(clippy::too_many_arguments)]
pub fn content_digest(
    event_id: &Uuid,
    stream_id: &str,
    stream_version: u64,
    event_type: &str,
    schema_version: u16,
    recorded_at: DateTime<Utc>,
    metadata: &[u8],
    payload: &[u8],
) -> Digest {
    ContentPrefix::new(event_id, stream_id, event_type, schema_version, metadata, payload)
        .finish(stream_version, recorded_at)
}

/// An event's [`content_digest`] hashed as far as it goes before a writer places the
/// event: every field but its stream version and `recorded_at`, which come last in the
/// hash. Appenders hash their events' bytes side by side before queueing them, and the
/// one writer that orders the log finishes each digest with the few bytes it decides.
///
/// ```
/// use perfect21_events::chain::{content_digest, ContentPrefix};
/// let id = uuid::Uuid::nil();
/// let at = chrono::DateTime::from_timestamp_micros(1).unwrap();
/// let prefix = ContentPrefix::new(&id, "user-1", "user.email_verified", 1, b"m", b"p");
/// assert_eq!(prefix.finish(4, at), content_digest(&id, "user-1", 4, "user.email_verified", 1, at, b"m", b"p"));
/// ```
#[derive(Clone)]
pub struct ContentPrefix {
    hash: Sha256,
    schema_version: u16,
}

impl ContentPrefix {
    pub fn new(
        event_id: &Uuid,
        stream_id: &str,
        event_type: &str,
        schema_version: u16,
        metadata: &[u8],
        payload: &[u8],
    ) -> Self {
        let mut hash = Sha256::new();
        hash.update(DOMAIN);
        hash.update(event_id.as_bytes());
        for field in [stream_id.as_bytes(), event_type.as_bytes(), metadata, payload] {
            hash.update((field.len() as u64).to_be_bytes());
            hash.update(field);
        }
        ContentPrefix { hash, schema_version }
    }

    /// The content digest of the event placed at `stream_version` and recorded at `recorded_at`.
    pub fn finish(&self, stream_version: u64, recorded_at: DateTime<Utc>) -> Digest {
        let mut h = self.hash.clone();
        h.update(stream_version.to_be_bytes());
        h.update(self.schema_version.to_be_bytes());
        h.update(to_micros(recorded_at).to_be_bytes());
        h.finalize().into()
    }
}

impl fmt::Debug for ContentPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContentPrefix").field("schema_version", &self.schema_version).finish_non_exhaustive()
    }
}

/// The link of the event at `position` whose content digest is `content`, after `previous`.
/// PostgreSQL computes the same as `sha256(previous || int8send(position) || content)`.
pub fn link(previous: &Digest, position: u64, content: &Digest) -> Digest {
    let mut h = Sha256::new();
    h.update(previous);
    h.update(position.to_be_bytes());
    h.update(content);
    h.finalize().into()
}

/// One event as the chain sees it, read from the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainRecord {
    pub position: u64,
    /// The content digest of the event as stored now, computed from its bytes.
    pub content: Digest,
    /// The link the log recorded for it (`None`: none recorded, or not 32 bytes).
    pub link: Option<Digest>,
    /// For an event redacted in place: the content digest it had when it was appended.
    pub redacted_from: Option<Digest>,
}

/// Where and why the log stops matching its chain.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ChainBreak {
    pub position: u64,
    pub reason: String,
}

impl fmt::Display for ChainBreak {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the chain breaks at position {}: {}", self.position, self.reason)
    }
}

impl std::error::Error for ChainBreak {}

/// Walks records in position order and checks each link.
#[derive(Debug, Clone)]
pub struct Verifier {
    previous: Digest,
    next: u64,
    redacted: u64,
}

impl Verifier {
    /// A verifier for a log from its first event.
    pub fn new() -> Self {
        Verifier { previous: GENESIS, next: 1, redacted: 0 }
    }

    /// A verifier that starts after `position`, trusting `link` as that event's link
    /// (`events verify --from`). `position` 0 is the start of the log.
    pub fn after(position: u64, link: Digest) -> Self {
        Verifier { previous: link, next: position + 1, redacted: 0 }
    }

    /// The next position it expects.
    pub fn next_position(&self) -> u64 {
        self.next
    }

    /// The link of the last position it verified ([`GENESIS`] before any).
    pub fn last_link(&self) -> Digest {
        self.previous
    }

    /// Events verified against the digest they had before an in-place redaction.
    pub fn redacted(&self) -> u64 {
        self.redacted
    }

    /// Checks `record`, which must be the next position. On a break the verifier stays
    /// where it was.
    pub fn check(&mut self, record: &ChainRecord) -> Result<(), ChainBreak> {
        let fail = |reason: String| Err(ChainBreak { position: self.next, reason });
        if record.position != self.next {
            return fail(format!(
                "expected position {} next, found {} (an event is missing, or a row was inserted)",
                self.next, record.position
            ));
        }
        let Some(recorded) = record.link else {
            return fail("the event has no 32-byte link recorded".into());
        };
        let content = record.redacted_from.unwrap_or(record.content);
        let expected = link(&self.previous, record.position, &content);
        if expected != recorded {
            let what = if link(&self.previous, record.position, &record.content) == recorded {
                "the recorded redaction digest was changed".to_string()
            } else {
                "the event's bytes or its recorded link were changed, or an event before it was replaced".to_string()
            };
            return fail(what);
        }
        if record.redacted_from.is_some() {
            self.redacted += 1;
        }
        self.previous = recorded;
        self.next += 1;
        Ok(())
    }
}

impl Default for Verifier {
    fn default() -> Self {
        Self::new()
    }
}

/// What a walk of the chain proved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The first position checked.
    pub from: u64,
    /// The last position checked (`from - 1` if there was nothing to check).
    pub through: u64,
    /// The link at `through`: record it elsewhere to detect a rewrite of everything up to it.
    pub last_link: Digest,
    /// Events checked against their digest from before an in-place redaction.
    pub redacted: u64,
}

/// Why a walk stopped.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Break(#[from] ChainBreak),
    #[error("cannot read the log's chain: {0}")]
    Store(#[from] crate::StoreError),
}

/// Events one read of a walk takes.
pub const PAGE: usize = 2000;

/// Checks every link from `from` (1: the start of the log) up to the head as it is when
/// the walk reaches it; `progress` is called with the last position checked after each
/// page. A walk from a later position trusts the link recorded just before it.
pub async fn verify(
    store: &dyn crate::EventStore,
    from: u64,
    mut progress: impl FnMut(u64),
) -> Result<Verified, VerifyError> {
    let from = from.max(1);
    // Events may only be added while the walk runs: everything up to this head must be
    // there, and the head's link must be the one its writer recorded.
    let recorded = store.chain_head().await?;
    let head = store.head_position().await?.max(recorded.map_or(0, |(p, _)| p));
    let mut verifier = if from == 1 {
        Verifier::new()
    } else {
        let before = store.read_chain(from - 1, 1).await?;
        match before.first() {
            Some(ChainRecord { position, link: Some(link), .. }) if *position == from - 1 => {
                Verifier::after(from - 1, *link)
            }
            Some(r) if r.position == from - 1 => {
                return Err(
                    ChainBreak { position: from - 1, reason: "the event has no 32-byte link recorded".into() }.into()
                )
            }
            _ => {
                return Err(ChainBreak {
                    position: from - 1,
                    reason: format!("there is no event at position {} to start after", from - 1),
                }
                .into())
            }
        }
    };
    loop {
        let page = store.read_chain(verifier.next_position(), PAGE).await?;
        for record in &page {
            verifier.check(record)?;
            if let Some((position, link)) = recorded.filter(|(p, _)| *p == record.position) {
                if record.link != Some(link) {
                    return Err(ChainBreak {
                        position,
                        reason: "the link differs from the one the writer recorded for the head: the events \
                                 up to here were replaced and their links recomputed"
                            .into(),
                    }
                    .into());
                }
            }
        }
        progress(verifier.next_position() - 1);
        if page.len() < PAGE {
            break;
        }
    }
    if verifier.next_position() <= head {
        let position = verifier.next_position();
        return Err(
            ChainBreak { position, reason: format!("the event is missing, but the log's head is {head}") }.into()
        );
    }
    Ok(Verified {
        from,
        through: verifier.next_position() - 1,
        last_link: verifier.last_link(),
        redacted: verifier.redacted(),
    })
}

/// Lower-case hex of a digest, for output.
pub fn hex(digest: &Digest) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// A content digest for a row that cannot be read as an event (a column of the wrong
/// type): no link matches it, so the walk breaks at its position.
pub(crate) fn unmatchable(position: u64) -> Digest {
    let mut h = Sha256::new();
    h.update(b"perfect21.unreadable-row");
    h.update(position.to_be_bytes());
    h.finalize().into()
}

/// A stored link as a digest, if it is one.
pub(crate) fn as_digest(bytes: Option<&[u8]>) -> Option<Digest> {
    bytes.and_then(|b| b.try_into().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(position: u64, previous: &Digest, content: Digest) -> ChainRecord {
        ChainRecord { position, content, link: Some(link(previous, position, &content)), redacted_from: None }
    }

    #[test]
    fn a_chain_verifies_and_an_edit_names_its_position() {
        let contents: Vec<Digest> = (0..5u8).map(|i| [i; 32]).collect();
        let mut records = Vec::new();
        let mut previous = GENESIS;
        for (i, c) in contents.iter().enumerate() {
            let r = record(i as u64 + 1, &previous, *c);
            previous = r.link.unwrap();
            records.push(r);
        }
        let mut v = Verifier::new();
        for r in &records {
            v.check(r).unwrap();
        }
        assert_eq!(v.last_link(), previous);

        let mut edited = records.clone();
        edited[2].content = [9; 32];
        let mut v = Verifier::new();
        let broke = edited.iter().find_map(|r| v.check(r).err()).unwrap();
        assert_eq!(broke.position, 3);

        let mut missing = records.clone();
        missing.remove(1);
        let mut v = Verifier::new();
        assert_eq!(missing.iter().find_map(|r| v.check(r).err()).unwrap().position, 2);
    }

    #[test]
    fn a_redacted_event_verifies_against_its_original_digest() {
        let r = record(1, &GENESIS, [1; 32]);
        let redacted = ChainRecord { content: [7; 32], redacted_from: Some([1; 32]), ..r.clone() };
        let mut v = Verifier::new();
        v.check(&redacted).unwrap();
        assert_eq!(v.redacted(), 1);
        let forged = ChainRecord { redacted_from: Some([2; 32]), ..r };
        assert!(Verifier::new().check(&forged).is_err());
    }

    #[test]
    fn every_field_of_the_envelope_is_covered() {
        let id = Uuid::from_u128(1);
        let at = DateTime::from_timestamp_micros(1_700_000_000_000_000).unwrap();
        let base = content_digest(&id, "user-1", 3, "user.registered", 2, at, b"m", b"p");
        let later = DateTime::from_timestamp_micros(1_700_000_000_000_001).unwrap();
        let variants = [
            content_digest(&Uuid::from_u128(2), "user-1", 3, "user.registered", 2, at, b"m", b"p"),
            content_digest(&id, "user-2", 3, "user.registered", 2, at, b"m", b"p"),
            content_digest(&id, "user-1", 4, "user.registered", 2, at, b"m", b"p"),
            content_digest(&id, "user-1", 3, "user.deleted", 2, at, b"m", b"p"),
            content_digest(&id, "user-1", 3, "user.registered", 1, at, b"m", b"p"),
            content_digest(&id, "user-1", 3, "user.registered", 2, later, b"m", b"p"),
            content_digest(&id, "user-1", 3, "user.registered", 2, at, b"mp", b""),
            content_digest(&id, "user-1", 3, "user.registered", 2, at, b"m", b"q"),
        ];
        for v in variants {
            assert_ne!(v, base);
        }
    }
}
