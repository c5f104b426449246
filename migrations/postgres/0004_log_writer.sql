-- Where the instance that writes for the others listens, when a log's replicas forward
-- their appends to one writer (a shared secret turns it on): one row, written by
-- whichever instance holds the writer lease. Forwarding only makes appends faster, so a
-- row left by a writer that is gone makes the others write directly until it is replaced.
CREATE TABLE log_writer (
    id      boolean PRIMARY KEY DEFAULT true CHECK (id),
    address text NOT NULL,
    since   timestamptz NOT NULL DEFAULT now()
);
