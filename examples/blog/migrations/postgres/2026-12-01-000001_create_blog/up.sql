-- The blog's tables, as diesel apps have them: database-generated ids, unique emails and
-- slugs, foreign keys, created_at from the database and updated_at set by the app.
-- diesel-l2 adds one column to each: `version`, bumped by every write (ETags, C6).
CREATE TABLE users (
    id BIGSERIAL PRIMARY KEY,
    version BIGINT NOT NULL DEFAULT 1,
    email VARCHAR(255) NOT NULL UNIQUE,
    name TEXT NOT NULL,
    last_seen_at TIMESTAMP,
    created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
);

CREATE TABLE posts (
    id BIGSERIAL PRIMARY KEY,
    version BIGINT NOT NULL DEFAULT 1,
    author_id BIGINT NOT NULL REFERENCES users (id),
    slug VARCHAR(255) NOT NULL UNIQUE,
    title TEXT NOT NULL,
    body TEXT NOT NULL,
    published BOOLEAN NOT NULL DEFAULT TRUE,
    created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
);
CREATE INDEX posts_author_id ON posts (author_id);
CREATE INDEX posts_created_at ON posts (created_at);

-- No ON DELETE CASCADE: the app deletes a post's comments with it (Tx::delete_where), as
-- it must on MariaDB, whose cascades fire no trigger for the change feed to see.
CREATE TABLE comments (
    id BIGSERIAL PRIMARY KEY,
    version BIGINT NOT NULL DEFAULT 1,
    post_id BIGINT NOT NULL REFERENCES posts (id),
    author_id BIGINT NOT NULL REFERENCES users (id),
    body TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
);
CREATE INDEX comments_post_id ON comments (post_id);
CREATE INDEX comments_author_id ON comments (author_id);
