-- A composite unique key (tenant_id, email), for unique-key lookups.
CREATE TABLE accounts (
    id BIGINT PRIMARY KEY NOT NULL,
    version BIGINT NOT NULL,
    tenant_id BIGINT NOT NULL,
    email VARCHAR(255) NOT NULL,
    plan TEXT NOT NULL,
    UNIQUE KEY accounts_tenant_email (tenant_id, email)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
