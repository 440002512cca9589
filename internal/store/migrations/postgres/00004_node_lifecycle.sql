-- What a node's record needs so that an operator can evict or ban it and a
-- node SVID is used by one agent only. Comments in
-- migrations/sqlite/00004_node_lifecycle.sql; change both together.

-- +goose Up
ALTER TABLE nodes ADD COLUMN new_serial_number TEXT;
ALTER TABLE nodes ADD COLUMN new_expires_at BIGINT;
ALTER TABLE nodes ADD COLUMN banned_at BIGINT;
UPDATE nodes SET serial_number = '';

-- +goose Down
ALTER TABLE nodes DROP COLUMN banned_at;
ALTER TABLE nodes DROP COLUMN new_expires_at;
ALTER TABLE nodes DROP COLUMN new_serial_number;
