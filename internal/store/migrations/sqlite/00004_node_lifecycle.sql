-- What a node's record needs so that an operator can evict or ban it and a
-- node SVID is used by one agent only ('meshfed node evict|ban').
-- migrations/sqlite and migrations/postgres carry the same change.

-- +goose Up
-- The SVID the node's last renewal signed, until the node first presents
-- it; then it becomes serial_number/expires_at. NULL when none is pending.
ALTER TABLE nodes ADD COLUMN new_serial_number TEXT;
ALTER TABLE nodes ADD COLUMN new_expires_at INTEGER;
-- When the node was banned ('meshfed node ban'); NULL unless banned. A
-- banned node is refused every call and cannot attest again until it is
-- evicted ('meshfed node evict', which deletes the row).
ALTER TABLE nodes ADD COLUMN banned_at INTEGER;
-- Nodes attested before this migration renewed without their record
-- following, so the serial recorded is stale: an empty one makes the node's
-- next call adopt the SVID it presents.
UPDATE nodes SET serial_number = '';

-- +goose Down
ALTER TABLE nodes DROP COLUMN banned_at;
ALTER TABLE nodes DROP COLUMN new_expires_at;
ALTER TABLE nodes DROP COLUMN new_serial_number;
