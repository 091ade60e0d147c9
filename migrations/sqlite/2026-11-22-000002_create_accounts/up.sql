-- A composite unique key (tenant_id, email), for unique-key lookups.
CREATE TABLE accounts (
    id BIGINT PRIMARY KEY NOT NULL,
    version BIGINT NOT NULL,
    tenant_id BIGINT NOT NULL,
    email VARCHAR(255) NOT NULL,
    plan TEXT NOT NULL,
    UNIQUE (tenant_id, email)
);
