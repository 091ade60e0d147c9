-- A table as most diesel apps have them: a database-generated id (`INTEGER PRIMARY KEY`,
-- the rowid) and column defaults, written through a separate `Insertable` struct
-- (Tx::insert_new).
CREATE TABLE articles (
    id INTEGER PRIMARY KEY NOT NULL,
    version BIGINT NOT NULL DEFAULT 1,
    slug VARCHAR(255) NOT NULL UNIQUE,
    title TEXT NOT NULL,
    status VARCHAR(32) NOT NULL DEFAULT 'draft',
    created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
);
