-- The tamper-evident chain (crates/events/src/chain.rs).
--
-- Each event records its link, sha256(previous link || int8send(position) || content
-- digest); log_head keeps the last link beside the last position. Rows recorded before
-- this migration are linked by the store when it connects (chain_hash IS NULL until then).
ALTER TABLE events ADD COLUMN IF NOT EXISTS chain_hash BYTEA;
ALTER TABLE log_head ADD COLUMN IF NOT EXISTS chain_hash BYTEA;
UPDATE log_head SET chain_hash = '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea
    WHERE position = 0 AND chain_hash IS NULL;

-- Events rewritten in place by the legacy redaction: the content digest each had when
-- it was appended, which its link covers.
CREATE TABLE IF NOT EXISTS redactions (
    position       BIGINT      PRIMARY KEY,
    content_digest BYTEA       NOT NULL,
    redacted_at    TIMESTAMPTZ NOT NULL
);

-- One append group in one statement: lock the head (held until the commit is visible,
-- so positions and links are taken strictly in order across processes), link the rows
-- after it, insert them, move the head and its link, wake listeners. `o` is each row's
-- offset past the head (1..n, dense); `digests` their content digests.
CREATE OR REPLACE FUNCTION perfect21_append(
    o bigint[], ids uuid[], streams text[], versions bigint[], types text[], schemas smallint[],
    times timestamptz[], metas bytea[], payloads bytea[], digests bytea[], channel text
) RETURNS bigint LANGUAGE plpgsql
-- The store's connections plan every statement for its parameters (force_custom_plan, for
-- lookups by event id); the statements in here look nothing up by value, and a generic
-- plan saves planning four statements on every append.
SET plan_cache_mode = auto
AS $$
DECLARE
    start bigint;
    h bytea;
    n int := cardinality(o);
    links bytea[] := ARRAY[]::bytea[];
BEGIN
    SELECT position, chain_hash INTO start, h FROM log_head WHERE id FOR UPDATE;
    IF h IS NULL THEN
        RAISE EXCEPTION 'the log''s hash chain is not set up (log_head.chain_hash is NULL): reconnect a perfect21 store to link it';
    END IF;
    FOR i IN 1..n LOOP
        h := sha256(h || int8send(start + o[i]) || digests[i]);
        links[i] := h;
    END LOOP;
    INSERT INTO events (position, event_id, stream_id, stream_version, event_type, schema_version,
                        recorded_at, metadata, payload, chain_hash)
    SELECT start + u.o, u.event_id, u.stream_id, u.stream_version, u.event_type, u.schema_version,
           u.recorded_at, u.metadata, u.payload, links[u.i]
    FROM UNNEST(o, ids, streams, versions, types, schemas, times, metas, payloads)
         WITH ORDINALITY AS u(o, event_id, stream_id, stream_version, event_type, schema_version,
                              recorded_at, metadata, payload, i);
    UPDATE log_head SET position = start + n, chain_hash = h WHERE id;
    PERFORM pg_notify(channel, (start + n)::text);
    RETURN start;
END $$;
