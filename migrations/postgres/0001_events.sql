-- The event log (PostgreSQL backend). Positions are dense: 1..=log_head.position.
--
-- Positions are not taken from a sequence: sequence values are handed out at
-- INSERT time but become visible at COMMIT time, so a reader could see 11 before
-- 10 and skip 10 for ever. Instead every appending transaction locks the single
-- log_head row, takes the next positions from it and updates it; the lock is held
-- until the commit is visible, so positions become visible strictly in order and
-- a failed append leaves no hole.
CREATE TABLE IF NOT EXISTS events (
    position       BIGINT      PRIMARY KEY,
    event_id       UUID        NOT NULL UNIQUE,
    stream_id      TEXT        NOT NULL,
    stream_version BIGINT      NOT NULL,
    event_type     TEXT        NOT NULL,
    schema_version SMALLINT    NOT NULL,
    recorded_at    TIMESTAMPTZ NOT NULL,
    metadata       BYTEA       NOT NULL,
    payload        BYTEA       NOT NULL,
    UNIQUE (stream_id, stream_version)
);

CREATE TABLE IF NOT EXISTS log_head (
    id       BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (id),
    position BIGINT  NOT NULL
);

INSERT INTO log_head (id, position) VALUES (TRUE, 0) ON CONFLICT (id) DO NOTHING;
