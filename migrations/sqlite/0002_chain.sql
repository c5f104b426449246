-- The tamper-evident chain (crates/events/src/chain.rs): each event's link.
-- Rows recorded before this migration are linked by the store when it opens the file.
ALTER TABLE events ADD COLUMN chain_hash BLOB;

-- Events rewritten in place by the legacy redaction: the content digest each had when
-- it was appended, which its link covers.
CREATE TABLE IF NOT EXISTS redactions (
    position       INTEGER PRIMARY KEY,
    content_digest BLOB    NOT NULL,
    redacted_at    INTEGER NOT NULL -- microseconds since the Unix epoch, UTC
);

-- The last position and its link, as the writer recorded them with its commit (the
-- position alone is max(position), which deleting the last events would move back): a
-- walk that ends before it, or a writer that finds the log shorter, reports the cut.
CREATE TABLE IF NOT EXISTS chain_head (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    position INTEGER NOT NULL,
    link     BLOB    NOT NULL
);
