-- `notes`: declared in Rust as `memos` with `#[sql_name = "notes"]` (C7 routes by the SQL
-- name); a key longer than the version 1 outbox's VARCHAR(255).
-- `note_lines`: child rows removed by an ON DELETE CASCADE foreign key.
CREATE TABLE notes (
    id VARCHAR(700) NOT NULL PRIMARY KEY,
    version BIGINT NOT NULL,
    body TEXT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
CREATE TABLE note_lines (
    id BIGINT NOT NULL PRIMARY KEY,
    version BIGINT NOT NULL,
    note_id VARCHAR(700) NOT NULL,
    line TEXT NOT NULL,
    CONSTRAINT note_lines_note_id_fkey FOREIGN KEY (note_id) REFERENCES notes (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
