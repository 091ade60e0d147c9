-- Example schema used by diesel-l2's tests and examples (MariaDB/MySQL flavour).
-- InnoDB for transactions and foreign keys; utf8mb4 for full Unicode.
-- Keys are application-assigned (no AUTO_INCREMENT).
CREATE TABLE users (
    id BIGINT PRIMARY KEY,
    version BIGINT NOT NULL,
    email VARCHAR(255) NOT NULL UNIQUE,
    name VARCHAR(255) NOT NULL,
    bio TEXT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- 32-bit key and version, to exercise non-i64 key types.
CREATE TABLE products (
    id INTEGER PRIMARY KEY,
    version INTEGER NOT NULL,
    sku VARCHAR(64) NOT NULL,
    stock INTEGER NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- String primary key.
CREATE TABLE tags (
    id VARCHAR(64) PRIMARY KEY,
    version BIGINT NOT NULL,
    label TEXT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- No UUID type: stored as the 36-char hyphenated text form.
CREATE TABLE documents (
    id CHAR(36) PRIMARY KEY,
    version BIGINT NOT NULL,
    title TEXT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- InnoDB checks foreign keys immediately (it has no deferred constraints).
CREATE TABLE posts (
    id BIGINT PRIMARY KEY,
    version BIGINT NOT NULL,
    user_id BIGINT NOT NULL,
    title TEXT NOT NULL,
    CONSTRAINT posts_user_id_fkey FOREIGN KEY (user_id) REFERENCES users (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
