//! The envelope of every recorded event (docs/events.md) and the types an append is made of.

use crate::catalog::Event;
use crate::error::{CodecError, StoreError};
use crate::limits::{MAX_EVENT_BYTES, MAX_EVENT_TYPE_BYTES, MAX_STREAM_ID_BYTES};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;
use uuid::Uuid;

/// A validated stream id of the form `category-id`, e.g. `user-0191…`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct StreamId(String);

impl StreamId {
    /// Validates `s` and wraps it.
    ///
    /// ```
    /// use perfect21_events::StreamId;
    /// assert!(StreamId::new("user-42").is_ok());
    /// assert!(StreamId::new("no category").is_err());
    /// ```
    pub fn new(s: impl Into<String>) -> Result<Self, StoreError> {
        let s = s.into();
        let fail = |reason| Err(StoreError::InvalidStreamId { stream_id: truncate(&s), reason });
        if s.is_empty() {
            return fail("it is empty");
        }
        if s.len() > MAX_STREAM_ID_BYTES {
            return fail("it is too long");
        }
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return fail("it contains whitespace or control characters");
        }
        let Some((category, id)) = s.split_once('-') else {
            return fail("it has no '-' between category and id");
        };
        let mut chars = category.chars();
        if !chars.next().is_some_and(|c| c.is_ascii_lowercase())
            || !chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            return fail("the category is not [a-z][a-z0-9_]*");
        }
        if id.is_empty() {
            return fail("the id after the category is empty");
        }
        Ok(StreamId(s))
    }

    /// A stream id made of a category and an id, e.g. `StreamId::of("user", uuid)`.
    pub fn of(category: &str, id: impl fmt::Display) -> Result<Self, StoreError> {
        Self::new(format!("{category}-{id}"))
    }

    /// The part before the first `-`.
    pub fn category(&self) -> &str {
        self.0.split_once('-').map(|(c, _)| c).unwrap_or(&self.0)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn truncate(s: &str) -> String {
    if s.len() <= 80 {
        return s.to_string();
    }
    let mut end = 80;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for StreamId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// What the caller believes about a stream's version when appending to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExpectedVersion {
    /// Append whatever the stream's state.
    Any,
    /// The stream must have no events yet.
    NoStream,
    /// The stream must have at least one event.
    StreamExists,
    /// The stream's last event must have exactly this (0-based) version.
    Exact(u64),
}

impl ExpectedVersion {
    /// Whether a stream whose last version is `actual` satisfies this expectation.
    pub fn admits(self, actual: Option<u64>) -> bool {
        match (self, actual) {
            (ExpectedVersion::Any, _) => true,
            (ExpectedVersion::NoStream, None) => true,
            (ExpectedVersion::StreamExists, Some(_)) => true,
            (ExpectedVersion::Exact(v), Some(a)) => v == a,
            _ => false,
        }
    }

    /// The expectation met by a stream whose last version is `version` (`None`: no stream).
    pub fn from_current(version: Option<u64>) -> Self {
        version.map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact)
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any version"),
            ExpectedVersion::NoStream => f.write_str("no stream"),
            ExpectedVersion::StreamExists => f.write_str("an existing stream"),
            ExpectedVersion::Exact(v) => write!(f, "version {v}"),
        }
    }
}

/// Who did something and from where; recorded with every event.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    pub correlation_id: Option<Uuid>,
    pub causation_id: Option<Uuid>,
    /// `user:<id>`, `service:<name>` or `anonymous`.
    pub actor: Option<String>,
    pub source_service: Option<String>,
    pub client_ip: Option<String>,
    pub user_agent: Option<String>,
    /// W3C `traceparent` of the request that caused the event, if any.
    pub traceparent: Option<String>,
    /// The client address and user agent, sealed with a user's data key (see
    /// [`crate::seal`]); only as stored: readers of a sealing store see them opened.
    #[serde(skip)]
    pub sealed: Option<crate::seal::Seal>,
}

/// First byte of metadata that carries a seal. Metadata without one starts with an
/// option tag (0 or 1), as released first; its bytes never change.
const SEALED_METADATA: u8 = 0xff;

impl Metadata {
    pub fn encode(&self) -> Vec<u8> {
        // Encoding plain strings, options and byte arrays into a Vec cannot fail.
        let Some(seal) = &self.sealed else { return postcard::to_stdvec(self).expect("metadata encodes") };
        // One buffer: the mark, the fields, the seal.
        let mut out = Vec::with_capacity(64 + seal.ciphertext.len());
        out.push(SEALED_METADATA);
        let out = postcard::to_extend(self, out).expect("metadata encodes");
        postcard::to_extend(seal, out).expect("seal encodes")
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        let Some(rest) = bytes.strip_prefix(&[SEALED_METADATA]) else {
            return postcard::from_bytes(bytes).map_err(CodecError::Metadata);
        };
        let (mut metadata, seal): (Metadata, _) = postcard::take_from_bytes(rest).map_err(CodecError::Metadata)?;
        metadata.sealed = Some(postcard::from_bytes(seal).map_err(CodecError::Metadata)?);
        Ok(metadata)
    }
}

/// [`Metadata`] read in place from the bytes that hold it (the same encoding), its seal
/// borrowed too: for readers that take a field or two of each of many events.
#[derive(Debug, Deserialize)]
pub struct MetadataRef<'a> {
    pub correlation_id: Option<Uuid>,
    pub causation_id: Option<Uuid>,
    #[serde(borrow)]
    pub actor: Option<&'a str>,
    #[serde(borrow)]
    pub source_service: Option<&'a str>,
    #[serde(borrow)]
    pub client_ip: Option<&'a str>,
    #[serde(borrow)]
    pub user_agent: Option<&'a str>,
    #[serde(borrow)]
    pub traceparent: Option<&'a str>,
    /// Read from the bytes after the fields, as [`Metadata::sealed`].
    #[serde(skip)]
    pub sealed: Option<crate::seal::SealRef<'a>>,
}

impl<'a> MetadataRef<'a> {
    /// Reads what [`Metadata::decode`] reads, and fails where it fails.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, CodecError> {
        let Some(rest) = bytes.strip_prefix(&[SEALED_METADATA]) else {
            return postcard::from_bytes(bytes).map_err(CodecError::Metadata);
        };
        let (mut metadata, seal): (MetadataRef, _) = postcard::take_from_bytes(rest).map_err(CodecError::Metadata)?;
        metadata.sealed = Some(postcard::from_bytes(seal).map_err(CodecError::Metadata)?);
        Ok(metadata)
    }

    /// The same metadata, owned.
    pub fn to_metadata(&self) -> Metadata {
        let owned = |s: Option<&str>| s.map(str::to_owned);
        Metadata {
            correlation_id: self.correlation_id,
            causation_id: self.causation_id,
            actor: owned(self.actor),
            source_service: owned(self.source_service),
            client_ip: owned(self.client_ip),
            user_agent: owned(self.user_agent),
            traceparent: owned(self.traceparent),
            sealed: self.sealed.as_ref().map(|s| crate::seal::Seal {
                subject: s.subject,
                nonce: s.nonce,
                ciphertext: s.ciphertext.to_vec(),
            }),
        }
    }
}

/// An event ready to be appended: already encoded, with its id.
#[derive(Debug, Clone, PartialEq)]
pub struct EventData {
    pub event_id: Uuid,
    pub event_type: String,
    pub schema_version: u16,
    pub metadata: Metadata,
    pub payload: Vec<u8>,
}

impl EventData {
    /// Encodes a catalog event with a fresh UUID v7 id.
    pub fn new(event: &Event, metadata: Metadata) -> Result<Self, CodecError> {
        Self::with_id(Uuid::now_v7(), event, metadata)
    }

    /// Encodes a catalog event with a caller-chosen id (for idempotent retries).
    pub fn with_id(event_id: Uuid, event: &Event, metadata: Metadata) -> Result<Self, CodecError> {
        Ok(EventData {
            event_id,
            event_type: event.event_type().to_string(),
            schema_version: event.schema_version(),
            metadata,
            payload: event.encode_payload()?,
        })
    }

    /// Checks the limits every backend enforces; returns the encoded metadata.
    pub(crate) fn validate(&self) -> Result<Vec<u8>, StoreError> {
        validate_event_type(&self.event_type)?;
        let metadata = self.metadata.encode();
        let size = self.payload.len() + metadata.len();
        if size > MAX_EVENT_BYTES {
            return Err(StoreError::PayloadTooLarge { event_id: self.event_id, size, max: MAX_EVENT_BYTES });
        }
        Ok(metadata)
    }
}

fn validate_event_type(t: &str) -> Result<(), StoreError> {
    let fail = |reason| Err(StoreError::InvalidEventType { event_type: truncate(t), reason });
    if t.is_empty() {
        return fail("it is empty");
    }
    if t.len() > MAX_EVENT_TYPE_BYTES {
        return fail("it is too long");
    }
    if !t.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.')
        || t.starts_with('.')
        || t.ends_with('.')
    {
        return fail("it may only hold [a-z0-9_] segments separated by '.'");
    }
    Ok(())
}

/// An event as the log recorded it.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedEvent {
    pub event_id: Uuid,
    pub stream_id: String,
    /// 0-based position inside the stream.
    pub stream_version: u64,
    /// Global position in the log, starting at 1; dense and strictly increasing.
    pub position: u64,
    pub event_type: String,
    pub schema_version: u16,
    pub recorded_at: DateTime<Utc>,
    pub metadata: Metadata,
    pub payload: Vec<u8>,
}

impl RecordedEvent {
    /// Decodes the payload into the newest version of its catalog type, upcasting older versions.
    pub fn decode(&self) -> Result<Event, CodecError> {
        Event::decode(&self.event_type, self.schema_version, &self.payload)
    }
}

/// What a successful append reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendResult {
    /// Global position of the first event of the append.
    pub first_position: u64,
    /// Global position of the last event: the consistency token.
    pub position: u64,
    /// Stream version of the last event; pass it as `ExpectedVersion::Exact` next time.
    pub stream_version: u64,
}

/// Microseconds since the Unix epoch, as the backends store `recorded_at`.
pub(crate) fn to_micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

pub(crate) fn from_micros(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_with_a_seal_is_marked_and_metadata_without_keeps_its_released_bytes() {
        let plain =
            Metadata { actor: Some("user:0191".into()), client_ip: Some("198.51.100.4".into()), ..Metadata::default() };
        let bytes = plain.encode();
        assert!(bytes[0] <= 1, "an option tag first, as released");
        assert_eq!(bytes, postcard::to_stdvec(&plain).unwrap());
        assert_eq!(Metadata::decode(&bytes).unwrap(), plain);

        let seal = crate::seal::Seal { subject: Uuid::from_u128(5), nonce: [3; 12], ciphertext: vec![9; 20] };
        let sealed = Metadata { client_ip: None, sealed: Some(seal), ..plain };
        let bytes = sealed.encode();
        assert_eq!(bytes[0], 0xff);
        assert_eq!(Metadata::decode(&bytes).unwrap(), sealed);
        // The fuzzing seed is well formed.
        let seed = include_bytes!("../../../fuzz/seeds/metadata/sealed");
        assert!(Metadata::decode(seed).unwrap().sealed.is_some());
        for cut in 1..bytes.len() {
            assert!(Metadata::decode(&bytes[..cut]).is_err(), "decoded from {cut} of {} bytes", bytes.len());
        }
    }

    /// What [`MetadataRef`] reads in place is what [`Metadata::decode`] reads.
    fn assert_read_in_place_alike(bytes: &[u8]) {
        match (Metadata::decode(bytes), MetadataRef::decode(bytes)) {
            (Ok(whole), Ok(in_place)) => assert_eq!(in_place.to_metadata(), whole),
            (Err(_), Err(_)) => {}
            (whole, in_place) => panic!("Metadata::decode gives {whole:?}, MetadataRef::decode {in_place:?}"),
        }
    }

    #[test]
    fn metadata_read_in_place_is_metadata_decoded() {
        let full = Metadata {
            correlation_id: Some(Uuid::from_u128(1)),
            causation_id: Some(Uuid::from_u128(2)),
            actor: Some("user:0191".into()),
            source_service: Some("auth".into()),
            client_ip: Some("198.51.100.4".into()),
            user_agent: Some("Mozilla/5.0 (ü)".into()),
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            sealed: None,
        };
        let seal = crate::seal::Seal { subject: Uuid::from_u128(5), nonce: [3; 12], ciphertext: vec![9; 300] };
        let sealed = Metadata { client_ip: None, user_agent: None, sealed: Some(seal), ..full.clone() };
        for m in [Metadata::default(), full, sealed] {
            let bytes = m.encode();
            assert_read_in_place_alike(&bytes);
            for cut in 0..bytes.len() {
                assert_read_in_place_alike(&bytes[..cut]);
            }
        }
        assert_read_in_place_alike(include_bytes!("../../../fuzz/seeds/metadata/sealed"));
    }
}
