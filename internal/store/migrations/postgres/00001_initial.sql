-- The initial schema. migrations/sqlite/00001_initial.sql is the same in
-- SQLite (comments there); change both together. Times are UTC Unix
-- milliseconds. Identifiers sort with COLLATE "C" (byte order), as SQLite
-- sorts them, so listings come out in the same order on both back ends.

-- +goose Up

CREATE TABLE state (
    id              INTEGER PRIMARY KEY CHECK (id = 1),
    revision        BIGINT NOT NULL,
    bundle_sequence BIGINT NOT NULL
);
INSERT INTO state (id, revision, bundle_sequence) VALUES (1, 0, 0);

CREATE TABLE join_tokens (
    hash       BYTEA PRIMARY KEY,
    spiffe_id  TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at    BIGINT
);
CREATE INDEX join_tokens_expires_at ON join_tokens (expires_at);

CREATE TABLE entries (
    id             TEXT COLLATE "C" PRIMARY KEY,
    parent_id      TEXT COLLATE "C" NOT NULL,
    spiffe_id      TEXT COLLATE "C" NOT NULL,
    selectors      TEXT NOT NULL,
    x509_ttl_ms    BIGINT NOT NULL,
    dns_names      TEXT NOT NULL,
    federates_with TEXT NOT NULL,
    admin          BOOLEAN NOT NULL,
    created_at     BIGINT NOT NULL,
    revision       BIGINT NOT NULL,
    dedup_key      BYTEA NOT NULL UNIQUE
);
CREATE INDEX entries_parent_id ON entries (parent_id);
CREATE INDEX entries_spiffe_id ON entries (spiffe_id);

CREATE TABLE nodes (
    spiffe_id       TEXT COLLATE "C" PRIMARY KEY,
    attested_at     BIGINT NOT NULL,
    credential_kind TEXT NOT NULL,
    serial_number   TEXT NOT NULL,
    expires_at      BIGINT NOT NULL
);

CREATE TABLE issued (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    serial          TEXT NOT NULL,
    spiffe_id       TEXT NOT NULL,
    credential_kind TEXT NOT NULL,
    caller          TEXT NOT NULL,
    server_id       TEXT NOT NULL,
    issued_at       BIGINT NOT NULL,
    not_after       BIGINT NOT NULL
);
CREATE INDEX issued_issued_at ON issued (issued_at, id);
CREATE INDEX issued_spiffe_id ON issued (spiffe_id, issued_at, id);
CREATE INDEX issued_serial ON issued (serial);

CREATE TABLE x509_authorities (
    sha256    TEXT COLLATE "C" PRIMARY KEY,
    der       BYTEA NOT NULL,
    not_after BIGINT NOT NULL,
    server_id TEXT NOT NULL,
    added_at  BIGINT NOT NULL
);

CREATE TABLE jwt_authorities (
    key_id     TEXT COLLATE "C" PRIMARY KEY,
    public_key BYTEA NOT NULL,
    not_after  BIGINT NOT NULL,
    server_id  TEXT NOT NULL,
    added_at   BIGINT NOT NULL
);

CREATE TABLE federated_bundles (
    trust_domain TEXT COLLATE "C" PRIMARY KEY,
    bundle       BYTEA NOT NULL,
    updated_at   BIGINT NOT NULL
);

-- +goose Down
DROP TABLE federated_bundles;
DROP TABLE jwt_authorities;
DROP TABLE x509_authorities;
DROP TABLE issued;
DROP TABLE nodes;
DROP TABLE entries;
DROP TABLE join_tokens;
DROP TABLE state;
