-- Example schema used by diesel-l2's tests and examples (PostgreSQL flavour).
-- Keys are application-assigned (no SERIAL/IDENTITY).
-- Unqualified names: the test fixtures run this with `search_path` set to a
-- per-test schema.
CREATE TABLE users (
    id BIGINT PRIMARY KEY,
    version BIGINT NOT NULL,
    email VARCHAR(255) NOT NULL UNIQUE,
    name VARCHAR(255) NOT NULL,
    bio TEXT NULL
);

-- 32-bit key and version, to exercise non-i64 key types.
CREATE TABLE products (
    id INTEGER PRIMARY KEY,
    version INTEGER NOT NULL,
    sku VARCHAR(64) NOT NULL,
    stock INTEGER NOT NULL
);

-- String primary key.
CREATE TABLE tags (
    id VARCHAR(64) PRIMARY KEY,
    version BIGINT NOT NULL,
    label TEXT NOT NULL
);

-- Native UUID key (diesel's `Uuid` SQL type).
CREATE TABLE documents (
    id UUID PRIMARY KEY,
    version BIGINT NOT NULL,
    title TEXT NOT NULL
);

-- The FK is DEFERRABLE INITIALLY DEFERRED on purpose: it is only checked at
-- COMMIT, which lets tests make the COMMIT statement itself fail (a cache
-- must not publish writes whose commit failed).
CREATE TABLE posts (
    id BIGINT PRIMARY KEY,
    version BIGINT NOT NULL,
    user_id BIGINT NOT NULL,
    title TEXT NOT NULL,
    CONSTRAINT posts_user_id_fkey FOREIGN KEY (user_id) REFERENCES users (id)
        DEFERRABLE INITIALLY DEFERRED
);
