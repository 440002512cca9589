-- Istio security policy documents applied to the server ('meshfed policy
-- apply'), which every agent streams to its proxies. Comments in
-- migrations/sqlite/00003_policies.sql; change both together.

-- +goose Up
ALTER TABLE state ADD COLUMN policy_revision BIGINT NOT NULL DEFAULT 0;

CREATE TABLE policies (
    kind       TEXT COLLATE "C" NOT NULL,
    namespace  TEXT COLLATE "C" NOT NULL,
    name       TEXT COLLATE "C" NOT NULL,
    yaml       BYTEA NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    generation BIGINT NOT NULL,
    revision   BIGINT NOT NULL,
    PRIMARY KEY (kind, namespace, name)
);

-- +goose Down
DROP TABLE policies;
ALTER TABLE state DROP COLUMN policy_revision;
