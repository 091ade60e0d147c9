-- `notes`: declared in Rust as `memos` with `#[sql_name = "notes"]` (C7 routes by the SQL
-- name); a text key with no length limit (long ids must never fail a write).
-- `note_lines`: child rows removed by an ON DELETE CASCADE foreign key.
CREATE TABLE notes (
    id TEXT NOT NULL PRIMARY KEY,
    version BIGINT NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE note_lines (
    id BIGINT NOT NULL PRIMARY KEY,
    version BIGINT NOT NULL,
    note_id TEXT NOT NULL REFERENCES notes (id) ON DELETE CASCADE,
    line TEXT NOT NULL
);
