-- The event log (embedded backend). Positions are dense: 1..=max(position).
CREATE TABLE IF NOT EXISTS events (
    position       INTEGER PRIMARY KEY,
    event_id       BLOB    NOT NULL UNIQUE,
    stream_id      TEXT    NOT NULL,
    stream_version INTEGER NOT NULL,
    event_type     TEXT    NOT NULL,
    schema_version INTEGER NOT NULL,
    recorded_at    INTEGER NOT NULL, -- microseconds since the Unix epoch, UTC
    metadata       BLOB    NOT NULL, -- postcard-encoded Metadata
    payload        BLOB    NOT NULL, -- postcard-encoded versioned payload
    UNIQUE (stream_id, stream_version)
);
