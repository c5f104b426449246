-- The data key of every subject (user) whose personal fields the log seals. Kept in
-- a file of its own beside the log: a copy of the log is not a copy of the keys.
-- A NULL key is an erased subject: its sealed fields are unreadable for good, and
-- no new key is ever made for it.
CREATE TABLE IF NOT EXISTS subject_keys (
    subject    BLOB PRIMARY KEY NOT NULL CHECK (length(subject) = 16),
    data_key   BLOB CHECK (data_key IS NULL OR length(data_key) = 32),
    created_at INTEGER NOT NULL,            -- microseconds since the Unix epoch
    erased_at  INTEGER
) WITHOUT ROWID;
