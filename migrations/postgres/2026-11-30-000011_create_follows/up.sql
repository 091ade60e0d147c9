-- A join table with a composite primary key (who follows whom), cached by its
-- (follower_id, followee_id) key.
CREATE TABLE follows (
    follower_id BIGINT NOT NULL,
    followee_id BIGINT NOT NULL,
    version BIGINT NOT NULL DEFAULT 1,
    note VARCHAR(255) NOT NULL DEFAULT '',
    PRIMARY KEY (follower_id, followee_id)
);
