-- Istio security policy documents applied to the server ('meshfed policy
-- apply'), which every agent streams to its proxies.
-- migrations/sqlite and migrations/postgres carry the same change.

-- +goose Up
-- The store revision of the last change to the policies: what agents and
-- proxies compare to know the set changed.
ALTER TABLE state ADD COLUMN policy_revision INTEGER NOT NULL DEFAULT 0;

CREATE TABLE policies (
    kind       TEXT NOT NULL,    -- PeerAuthentication, RequestAuthentication, AuthorizationPolicy
    namespace  TEXT NOT NULL,
    name       TEXT NOT NULL,
    yaml       BLOB NOT NULL,    -- the document as applied
    created_at INTEGER NOT NULL, -- kept across updates: Istio's "oldest wins" creationTimestamp
    updated_at INTEGER NOT NULL,
    generation INTEGER NOT NULL, -- 1 when created, +1 on each change of yaml
    revision   INTEGER NOT NULL, -- state.revision of the last change
    PRIMARY KEY (kind, namespace, name)
) STRICT;

-- +goose Down
DROP TABLE policies;
ALTER TABLE state DROP COLUMN policy_revision;
