-- The data key of every subject (user) whose personal fields the log seals: not in
-- the log's tables, so that it can be backed up (and its backups expired) apart
-- from the log. A NULL key is an erased subject: its sealed fields are unreadable
-- for good, and no new key is ever made for it.
CREATE TABLE subject_keys (
    subject    uuid PRIMARY KEY,
    data_key   bytea CHECK (data_key IS NULL OR length(data_key) = 32),
    created_at timestamptz NOT NULL DEFAULT now(),
    erased_at  timestamptz
);
