-- The initial schema. migrations/postgres/00001_initial.sql is the same in
-- Postgres; change both together. Times are UTC Unix milliseconds.

-- +goose Up

-- One row: the counters that change with the state they count.
CREATE TABLE state (
    id              INTEGER PRIMARY KEY CHECK (id = 1),
    revision        INTEGER NOT NULL, -- bumped by every change to entries, authorities, federated bundles
    bundle_sequence INTEGER NOT NULL  -- bumped by every change to the set of local authorities
) STRICT;
INSERT INTO state (id, revision, bundle_sequence) VALUES (1, 0, 0);

CREATE TABLE join_tokens (
    hash       BLOB PRIMARY KEY, -- SHA-256 of the token; the token itself is never stored
    spiffe_id  TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at    INTEGER           -- NULL until consumed
) STRICT;
CREATE INDEX join_tokens_expires_at ON join_tokens (expires_at);

CREATE TABLE entries (
    id             TEXT PRIMARY KEY,
    parent_id      TEXT NOT NULL,
    spiffe_id      TEXT NOT NULL,
    selectors      TEXT NOT NULL,    -- JSON [{"type","value"}], sorted
    x509_ttl_ms    INTEGER NOT NULL, -- 0: the server's default
    dns_names      TEXT NOT NULL,    -- JSON ["name"], in the caller's order
    federates_with TEXT NOT NULL,    -- JSON ["trust.domain"], sorted
    admin          INTEGER NOT NULL, -- 0 or 1
    created_at     INTEGER NOT NULL,
    revision       INTEGER NOT NULL, -- state.revision the entry was created at
    dedup_key      BLOB NOT NULL UNIQUE -- SHA-256 of parent, SPIFFE ID and selectors
) STRICT;
CREATE INDEX entries_parent_id ON entries (parent_id);
CREATE INDEX entries_spiffe_id ON entries (spiffe_id);

CREATE TABLE nodes (
    spiffe_id       TEXT PRIMARY KEY,
    attested_at     INTEGER NOT NULL,
    credential_kind TEXT NOT NULL,
    serial_number   TEXT NOT NULL,
    expires_at      INTEGER NOT NULL
) STRICT;

-- The audit log: one row per issued certificate.
CREATE TABLE issued (
    id              INTEGER PRIMARY KEY,
    serial          TEXT NOT NULL, -- lowercase hex
    spiffe_id       TEXT NOT NULL, -- or the DNS name of a TLS leaf
    credential_kind TEXT NOT NULL,
    caller          TEXT NOT NULL,
    server_id       TEXT NOT NULL,
    issued_at       INTEGER NOT NULL,
    not_after       INTEGER NOT NULL
) STRICT;
CREATE INDEX issued_issued_at ON issued (issued_at, id);
CREATE INDEX issued_spiffe_id ON issued (spiffe_id, issued_at, id);
CREATE INDEX issued_serial ON issued (serial);

-- This trust domain's CA certificates and JWT keys, from every server.
CREATE TABLE x509_authorities (
    sha256    TEXT PRIMARY KEY, -- hex SHA-256 of der
    der       BLOB NOT NULL,
    not_after INTEGER NOT NULL,
    server_id TEXT NOT NULL,
    added_at  INTEGER NOT NULL
) STRICT;

CREATE TABLE jwt_authorities (
    key_id     TEXT PRIMARY KEY,
    public_key BLOB NOT NULL, -- PKIX DER
    not_after  INTEGER NOT NULL,
    server_id  TEXT NOT NULL,
    added_at   INTEGER NOT NULL
) STRICT;

CREATE TABLE federated_bundles (
    trust_domain TEXT PRIMARY KEY,
    bundle       BLOB NOT NULL, -- SPIFFE bundle JSON, as fetched
    updated_at   INTEGER NOT NULL
) STRICT;

-- +goose Down
DROP TABLE federated_bundles;
DROP TABLE jwt_authorities;
DROP TABLE x509_authorities;
DROP TABLE issued;
DROP TABLE nodes;
DROP TABLE entries;
DROP TABLE join_tokens;
DROP TABLE state;
