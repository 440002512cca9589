package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Node is an attested agent: the identity it was given, how, and the
// certificate it currently holds.
type Node struct {
	SPIFFEID       spiffeid.ID
	AttestedAt     time.Time // defaults to the store's clock
	CredentialKind string    // how it attested, e.g. "join_token"
	SerialNumber   string    // of its current SVID, lowercase hex
	ExpiresAt      time.Time // of its current SVID
}

// UpsertNode records n, replacing what was stored for the same SPIFFE ID.
func (s *Store) UpsertNode(ctx context.Context, n Node) error {
	if err := checkID("node SPIFFE ID", n.SPIFFEID); err != nil {
		return err
	}
	if err := checkText("node credential kind", n.CredentialKind, MaxNameBytes, true); err != nil {
		return err
	}
	serial, err := normalizeSerial("node serial number", n.SerialNumber)
	if err != nil {
		return err
	}
	if n.ExpiresAt.IsZero() {
		return invalidf("node %s has no expiry", n.SPIFFEID)
	}
	if n.AttestedAt.IsZero() {
		n.AttestedAt = s.now()
	}
	_, err = s.w.ExecContext(ctx,
		`INSERT INTO nodes (spiffe_id, attested_at, credential_kind, serial_number, expires_at)
		 VALUES ($1, $2, $3, $4, $5)
		 ON CONFLICT (spiffe_id) DO UPDATE SET
		   attested_at = excluded.attested_at, credential_kind = excluded.credential_kind,
		   serial_number = excluded.serial_number, expires_at = excluded.expires_at`,
		n.SPIFFEID.String(), millis(n.AttestedAt), n.CredentialKind, serial, millis(n.ExpiresAt))
	if err != nil {
		return fmt.Errorf("store: recording node %s: %w", n.SPIFFEID, err)
	}
	return nil
}

// GetNode returns the node with this SPIFFE ID, or ErrNotFound.
func (s *Store) GetNode(ctx context.Context, id spiffeid.ID) (Node, error) {
	n, err := scanNode(s.r.QueryRowContext(ctx, `SELECT `+nodeColumns+` FROM nodes WHERE spiffe_id = $1`, id.String()))
	if errors.Is(err, sql.ErrNoRows) {
		return Node{}, fmt.Errorf("store: node %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return Node{}, fmt.Errorf("store: reading node %s: %w", id, err)
	}
	return n, nil
}

// ListNodes returns every node, ordered by SPIFFE ID.
func (s *Store) ListNodes(ctx context.Context) ([]Node, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT `+nodeColumns+` FROM nodes ORDER BY spiffe_id`)
	if err != nil {
		return nil, fmt.Errorf("store: listing nodes: %w", err)
	}
	defer rows.Close()
	var out []Node
	for rows.Next() {
		n, err := scanNode(rows)
		if err != nil {
			return nil, fmt.Errorf("store: listing nodes: %w", err)
		}
		out = append(out, n)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: listing nodes: %w", err)
	}
	return out, nil
}

const nodeColumns = `spiffe_id, attested_at, credential_kind, serial_number, expires_at`

func scanNode(row scanner) (Node, error) {
	var (
		n                     Node
		id                    string
		attestedAt, expiresAt int64
	)
	if err := row.Scan(&id, &attestedAt, &n.CredentialKind, &n.SerialNumber, &expiresAt); err != nil {
		return Node{}, err
	}
	var err error
	if n.SPIFFEID, err = parseStoredID("node", id); err != nil {
		return Node{}, err
	}
	n.AttestedAt, n.ExpiresAt = fromMillis(attestedAt), fromMillis(expiresAt)
	return n, nil
}
