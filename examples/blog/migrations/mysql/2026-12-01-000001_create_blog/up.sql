-- The blog's tables, as diesel apps have them: database-generated ids, unique emails and
-- slugs, foreign keys, created_at from the database and updated_at set by the app.
-- diesel-l2 adds one column to each: `version`, bumped by every write (ETags, C6).
CREATE TABLE users (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    version BIGINT NOT NULL DEFAULT 1,
    email VARCHAR(255) NOT NULL UNIQUE,
    name TEXT NOT NULL,
    last_seen_at DATETIME(6) NULL,
    created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE posts (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    version BIGINT NOT NULL DEFAULT 1,
    author_id BIGINT NOT NULL,
    slug VARCHAR(255) NOT NULL UNIQUE,
    title TEXT NOT NULL,
    body TEXT NOT NULL,
    published BOOLEAN NOT NULL DEFAULT TRUE,
    created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    CONSTRAINT posts_author_id FOREIGN KEY (author_id) REFERENCES users (id),
    INDEX posts_created_at (created_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- No ON DELETE CASCADE: MariaDB fires no trigger for rows a foreign key deletes, so the
-- change feed would not see them. The app deletes a post's comments itself
-- (Tx::delete_where), which the triggers do see.
CREATE TABLE comments (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    version BIGINT NOT NULL DEFAULT 1,
    post_id BIGINT NOT NULL,
    author_id BIGINT NOT NULL,
    body TEXT NOT NULL,
    created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    CONSTRAINT comments_post_id FOREIGN KEY (post_id) REFERENCES posts (id),
    CONSTRAINT comments_author_id FOREIGN KEY (author_id) REFERENCES users (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
