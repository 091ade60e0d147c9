-- A table as most diesel apps have them: a database-generated id and column defaults,
-- written through a separate `Insertable` struct (Tx::insert_new).
CREATE TABLE articles (
    id BIGSERIAL PRIMARY KEY,
    version BIGINT NOT NULL DEFAULT 1,
    slug VARCHAR(255) NOT NULL UNIQUE,
    title TEXT NOT NULL,
    status VARCHAR(32) NOT NULL DEFAULT 'draft',
    created_at TIMESTAMP NOT NULL DEFAULT now()
);
