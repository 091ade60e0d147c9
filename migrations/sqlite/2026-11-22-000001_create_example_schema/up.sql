-- Example schema used by diesel-l2's tests and examples (SQLite flavour).
-- Keys are application-assigned: `BIGINT PRIMARY KEY` is deliberately not
-- SQLite's rowid alias (only `INTEGER PRIMARY KEY` is), so NOT NULL is spelled
-- out because SQLite would otherwise accept NULL in a non-rowid primary key.
CREATE TABLE users (
    id BIGINT PRIMARY KEY NOT NULL,
    version BIGINT NOT NULL,
    email VARCHAR(255) NOT NULL UNIQUE,
    name VARCHAR(255) NOT NULL,
    bio TEXT NULL
);

-- 32-bit key and version, to exercise non-i64 key types.
CREATE TABLE products (
    id INTEGER PRIMARY KEY NOT NULL,
    version INTEGER NOT NULL,
    sku VARCHAR(64) NOT NULL,
    stock INTEGER NOT NULL
);

-- String primary key.
CREATE TABLE tags (
    id VARCHAR(64) PRIMARY KEY NOT NULL,
    version BIGINT NOT NULL,
    label TEXT NOT NULL
);

-- UUID key; SQLite has no UUID type, so it is stored as its 36-char text form.
CREATE TABLE documents (
    id TEXT PRIMARY KEY NOT NULL,
    version BIGINT NOT NULL,
    title TEXT NOT NULL
);

-- Child table; the FK is checked immediately (needs PRAGMA foreign_keys=ON,
-- which the test fixtures set on every connection).
CREATE TABLE posts (
    id BIGINT PRIMARY KEY NOT NULL,
    version BIGINT NOT NULL,
    user_id BIGINT NOT NULL REFERENCES users (id),
    title TEXT NOT NULL
);
