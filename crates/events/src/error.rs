//! The error types of the event log: one for the store, one for the codec.

use crate::envelope::ExpectedVersion;
use uuid::Uuid;

/// Everything that can go wrong when talking to an [`EventStore`](crate::EventStore).
///
/// Every variant names what was wrong and, where it applies, what was expected.
/// Whenever an append returns an error, none of its events were written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The stream was not at the version the caller expected.
    #[error("wrong expected version on stream '{stream}': expected {expected}, but the stream is {}", describe_actual(*.actual))]
    WrongExpectedVersion {
        stream: String,
        expected: ExpectedVersion,
        /// The stream's current version, or `None` when the stream has no events.
        actual: Option<u64>,
    },
    /// The stream id is not of the form `category-id`.
    #[error("invalid stream id '{stream_id}': {reason} (expected 'category-id', category [a-z][a-z0-9_]*, at most {max} bytes, no whitespace)", max = crate::limits::MAX_STREAM_ID_BYTES)]
    InvalidStreamId { stream_id: String, reason: &'static str },
    /// The event type name is not a dotted lower-case name.
    #[error("invalid event type '{event_type}': {reason} (expected a dotted lower-case name such as 'user.registered', at most {max} bytes)", max = crate::limits::MAX_EVENT_TYPE_BYTES)]
    InvalidEventType { event_type: String, reason: &'static str },
    /// One event's payload (or metadata) is bigger than the store accepts.
    #[error("event {event_id} is {size} bytes, more than the {max} bytes an event may carry")]
    PayloadTooLarge { event_id: Uuid, size: usize, max: usize },
    /// An append carried no events.
    #[error("an append must carry at least one event")]
    EmptyAppend,
    /// An append carried more events than one atomic append may.
    #[error("an append carries {count} events, more than the {max} one atomic append may carry")]
    TooManyEvents { count: usize, max: usize },
    /// The events of an append made as they were written ([`EventStore::append_made`](crate::EventStore::append_made))
    /// ran out before as many as it said it would make.
    #[error("an append of {count} events ended after {made} were made; nothing of it was written")]
    IncompleteAppend { made: usize, count: usize },
    /// An event id is already in the log, and the append is not a re-append of the same events.
    #[error("event id {event_id} is already recorded at position {position} in stream '{stream}', and this append is not an exact re-append of those events")]
    DuplicateEventId { event_id: Uuid, stream: String, position: u64 },
    /// A redaction's payload is not a payload of the event it would replace (another
    /// type or schema version).
    #[error("redaction of position {position} refused: {reason}")]
    RedactionMismatch { position: u64, reason: String },
    /// A position or version beyond what the log can hold (it stores them as signed 64-bit integers).
    #[error("{what} {value} is out of range: at most {max}")]
    OutOfRange { what: &'static str, value: u64, max: u64 },
    /// The backend could not be reached or failed; the append may be retried with the same event ids.
    #[error("event store ({backend}) unavailable: {message}")]
    Unavailable { backend: &'static str, message: String },
    /// A stored record could not be read back (a bug or a damaged log).
    #[error("event log damaged at position {position}: {reason}")]
    Corrupt { position: u64, reason: String },
    /// A redaction named a position that does not hold an event of the stream.
    #[error("position {position} does not hold an event of stream '{stream}'; nothing was redacted")]
    NotInStream { stream: String, position: u64 },
    /// An event of a type with personal fields whose payload does not decode as its
    /// type and version: its fields cannot be sealed, and it is not appended.
    #[error("event {event_id} is not a valid {event_type} v{schema_version} ({reason}); its personal fields cannot be sealed, and nothing was appended")]
    Unsealable { event_id: uuid::Uuid, event_type: String, schema_version: u16, reason: String },
    /// This instance may no longer append: another writer of the same log took over
    /// (Kafka fences the older holder of a transactional id). Nothing of the append was
    /// written; send it to the current writer.
    #[error("event store ({backend}) refused the append: {message}")]
    Fenced { backend: &'static str, message: String },
    /// A store URL that this build cannot open.
    #[error("cannot open event store '{url}': {reason}")]
    InvalidUrl { url: String, reason: String },
}

fn describe_actual(actual: Option<u64>) -> String {
    match actual {
        None => "absent (no events)".to_string(),
        Some(v) => format!("at version {v}"),
    }
}

impl StoreError {
    pub(crate) fn unavailable(backend: &'static str, err: impl std::fmt::Display) -> Self {
        StoreError::Unavailable { backend, message: err.to_string() }
    }

    /// The same failure for another of the appends it failed (errors are not `Clone`):
    /// a fencing stays a fencing, anything else reads as the backend being unavailable.
    pub(crate) fn copied(&self, backend: &'static str) -> Self {
        match self {
            StoreError::Fenced { message, .. } => StoreError::Fenced { backend, message: message.clone() },
            StoreError::Unavailable { message, .. } => StoreError::unavailable(backend, message),
            other => StoreError::unavailable(backend, other),
        }
    }
}

/// Errors of encoding and decoding event payloads.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CodecError {
    /// This build does not know the event type at this schema version
    /// (it was written by a newer build, or it is not an event of this catalog).
    #[error("unknown event type '{event_type}' at schema version {schema_version}; this build knows {known}")]
    UnknownEventType { event_type: String, schema_version: u16, known: String },
    /// The bytes do not decode as the payload type they claim to be.
    #[error("payload of '{event_type}' v{schema_version} does not decode: {source}")]
    Decode {
        event_type: String,
        schema_version: u16,
        #[source]
        source: postcard::Error,
    },
    /// The metadata block does not decode.
    #[error("event metadata does not decode: {0}")]
    Metadata(#[source] postcard::Error),
    /// A payload could not be encoded.
    #[error("payload of '{event_type}' does not encode: {source}")]
    Encode {
        event_type: &'static str,
        #[source]
        source: postcard::Error,
    },
}
