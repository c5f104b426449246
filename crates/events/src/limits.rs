//! Limits every backend enforces identically, checked before anything is written.

/// Longest accepted stream id, in bytes.
pub const MAX_STREAM_ID_BYTES: usize = 200;
/// Longest accepted event type name, in bytes.
pub const MAX_EVENT_TYPE_BYTES: usize = 100;
/// Largest accepted payload plus metadata of one event, in bytes.
pub const MAX_EVENT_BYTES: usize = 1024 * 1024;
/// Most events one atomic append may carry.
pub const MAX_EVENTS_PER_APPEND: usize = 10_000;
