-- Which root each issued certificate chains to (the hex subject key ID of
-- the root), so a root rotation can tell how many live certificates still
-- depend on the old root. Rows from before this migration have ''.
-- migrations/sqlite and migrations/postgres carry the same change.

-- +goose Up
ALTER TABLE issued ADD COLUMN root_key_id TEXT NOT NULL DEFAULT '';
CREATE INDEX issued_not_after ON issued (not_after);

-- +goose Down
DROP INDEX issued_not_after;
ALTER TABLE issued DROP COLUMN root_key_id;
