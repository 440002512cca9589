package store

import (
	"bytes"
	"context"
	"crypto/sha256"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// JoinToken is a one-time credential an agent presents to be attested as
// SPIFFEID. Only the SHA-256 of the token is stored.
type JoinToken struct {
	Hash      []byte // SHA-256 of the token
	SPIFFEID  spiffeid.ID
	ExpiresAt time.Time
	CreatedAt time.Time // set by the store
	UsedAt    time.Time // zero until consumed; set by ConsumeJoinToken
}

// CreateJoinToken stores a new join token. It refuses a hash that is already
// stored (ErrAlreadyExists).
func (s *Store) CreateJoinToken(ctx context.Context, t JoinToken) error {
	if len(t.Hash) != sha256.Size {
		return invalidf("join token hash is %d bytes; it must be a SHA-256 (%d bytes)", len(t.Hash), sha256.Size)
	}
	if err := checkID("join token SPIFFE ID", t.SPIFFEID); err != nil {
		return err
	}
	if t.ExpiresAt.IsZero() {
		return invalidf("join token has no expiry")
	}
	res, err := s.w.ExecContext(ctx,
		`INSERT INTO join_tokens (hash, spiffe_id, created_at, expires_at) VALUES ($1, $2, $3, $4)
		 ON CONFLICT (hash) DO NOTHING`,
		t.Hash, t.SPIFFEID.String(), millis(s.now()), millis(t.ExpiresAt))
	if err != nil {
		return fmt.Errorf("store: creating join token: %w", err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return fmt.Errorf("store: creating join token: %w", err)
	} else if n == 0 {
		return fmt.Errorf("store: join token: %w", ErrAlreadyExists)
	}
	return nil
}

// ConsumeJoinToken marks the token with this hash used at now and returns it.
// It is one conditional UPDATE, so among any number of callers (in any number
// of servers sharing the database) exactly one succeeds. An unknown, expired
// (now at or after ExpiresAt) or already used token is ErrTokenInvalid, the
// same error for all three.
func (s *Store) ConsumeJoinToken(ctx context.Context, hash []byte, now time.Time) (JoinToken, error) {
	if len(hash) != sha256.Size {
		return JoinToken{}, fmt.Errorf("store: %w", ErrTokenInvalid)
	}
	now = fromMillis(millis(now))
	var (
		id                   string
		createdAt, expiresAt int64
	)
	err := s.w.QueryRowContext(ctx,
		`UPDATE join_tokens SET used_at = $1
		 WHERE hash = $2 AND used_at IS NULL AND expires_at > $1
		 RETURNING spiffe_id, created_at, expires_at`,
		millis(now), hash).Scan(&id, &createdAt, &expiresAt)
	if errors.Is(err, sql.ErrNoRows) {
		return JoinToken{}, fmt.Errorf("store: %w", ErrTokenInvalid)
	}
	if err != nil {
		return JoinToken{}, fmt.Errorf("store: consuming join token: %w", err)
	}
	sid, err := parseStoredID("join token", id)
	if err != nil {
		return JoinToken{}, fmt.Errorf("store: consuming join token: %w", err)
	}
	return JoinToken{
		Hash:      append([]byte(nil), hash...),
		SPIFFEID:  sid,
		CreatedAt: fromMillis(createdAt),
		ExpiresAt: fromMillis(expiresAt),
		UsedAt:    now,
	}, nil
}

// JoinTokenSubject returns the SPIFFE ID the token with this hash would
// attest if it were consumed at now, without consuming it: ErrTokenInvalid
// for an unknown, expired or used one, as ConsumeJoinToken. It lets a
// caller refuse a token's node before the token is spent (a banned node).
func (s *Store) JoinTokenSubject(ctx context.Context, hash []byte, now time.Time) (spiffeid.ID, error) {
	if len(hash) != sha256.Size {
		return spiffeid.ID{}, fmt.Errorf("store: %w", ErrTokenInvalid)
	}
	var id string
	err := s.r.QueryRowContext(ctx,
		`SELECT spiffe_id FROM join_tokens WHERE hash = $1 AND used_at IS NULL AND expires_at > $2`,
		hash, millis(now)).Scan(&id)
	if errors.Is(err, sql.ErrNoRows) {
		return spiffeid.ID{}, fmt.Errorf("store: %w", ErrTokenInvalid)
	}
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("store: reading join token: %w", err)
	}
	sid, err := parseStoredID("join token", id)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("store: reading join token: %w", err)
	}
	return sid, nil
}

// PruneJoinTokens deletes the tokens, used or not, that expired before
// before, and returns how many. A deleted token is unknown, which consuming
// treats as it treats a used or expired one.
func (s *Store) PruneJoinTokens(ctx context.Context, before time.Time) (int64, error) {
	res, err := s.w.ExecContext(ctx, `DELETE FROM join_tokens WHERE expires_at < $1`, millis(before))
	if err != nil {
		return 0, fmt.Errorf("store: pruning join tokens: %w", err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return 0, fmt.Errorf("store: pruning join tokens: %w", err)
	}
	return n, nil
}

// ListJoinTokens returns the tokens not used and not expired at now, for id
// (every one if id is zero), ordered by SPIFFE ID, then expiry. They are
// what could still attest a node; only their hashes are known.
func (s *Store) ListJoinTokens(ctx context.Context, id spiffeid.ID, now time.Time) ([]JoinToken, error) {
	q := `SELECT hash, spiffe_id, created_at, expires_at FROM join_tokens WHERE used_at IS NULL AND expires_at > $1`
	args := []any{millis(now)}
	if !id.IsZero() {
		q += ` AND spiffe_id = $2`
		args = append(args, id.String())
	}
	rows, err := s.r.QueryContext(ctx, q+` ORDER BY spiffe_id, expires_at, hash`, args...)
	if err != nil {
		return nil, fmt.Errorf("store: listing join tokens: %w", err)
	}
	defer rows.Close()
	var out []JoinToken
	for rows.Next() {
		var (
			t                  JoinToken
			sid                string
			created, expiresAt int64
		)
		if err := rows.Scan(&t.Hash, &sid, &created, &expiresAt); err != nil {
			return nil, fmt.Errorf("store: listing join tokens: %w", err)
		}
		if t.SPIFFEID, err = parseStoredID("join token", sid); err != nil {
			return nil, fmt.Errorf("store: %w", err)
		}
		t.CreatedAt, t.ExpiresAt = fromMillis(created), fromMillis(expiresAt)
		out = append(out, t)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: listing join tokens: %w", err)
	}
	return out, nil
}

// RevokeJoinTokens deletes the unused tokens of id whose hash begins with
// prefix (every unused token of id when prefix is empty), so that none of
// them can attest a node, and returns how many went. A revoked token is
// unknown, which consuming treats as it treats a used or expired one.
func (s *Store) RevokeJoinTokens(ctx context.Context, id spiffeid.ID, prefix []byte) (int64, error) {
	if err := checkID("join token SPIFFE ID", id); err != nil {
		return 0, err
	}
	if len(prefix) > sha256.Size {
		return 0, invalidf("join token hash prefix is %d bytes, longer than a SHA-256", len(prefix))
	}
	var n int64
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		rows, err := tx.QueryContext(ctx, `SELECT hash FROM join_tokens WHERE spiffe_id = $1 AND used_at IS NULL`, id.String())
		if err != nil {
			return err
		}
		var hashes [][]byte
		for rows.Next() {
			var h []byte
			if err := rows.Scan(&h); err != nil {
				rows.Close()
				return err
			}
			if bytes.HasPrefix(h, prefix) {
				hashes = append(hashes, h)
			}
		}
		if err := rows.Close(); err != nil {
			return err
		}
		for _, h := range hashes {
			// used_at IS NULL again: a token consumed meanwhile stays.
			res, err := tx.ExecContext(ctx, `DELETE FROM join_tokens WHERE hash = $1 AND used_at IS NULL`, h)
			if err != nil {
				return err
			}
			k, err := res.RowsAffected()
			if err != nil {
				return err
			}
			n += k
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("store: revoking join tokens of %s: %w", id, err)
	}
	return n, nil
}

// checkID refuses a zero or oversized SPIFFE ID.
func checkID(what string, id spiffeid.ID) error {
	if id.IsZero() {
		return invalidf("%s is empty", what)
	}
	if n := len(id.String()); n > MaxIDBytes {
		return invalidf("%s is %d bytes, more than the %d allowed", what, n, MaxIDBytes)
	}
	return nil
}

// parseStoredID parses a SPIFFE ID read back from the database. Callers add
// the "store: " prefix.
func parseStoredID(what, s string) (spiffeid.ID, error) {
	id, err := spiffeid.FromString(s)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("%s: stored SPIFFE ID %q is corrupt: %w", what, s, err)
	}
	return id, nil
}
