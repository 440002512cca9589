package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Node is an attested agent: the identity it was given, how, and the
// certificate it uses.
//
// A node that attested with a join token has one lineage of SVIDs: the one
// it attested with, then each renewal's. The record names the SVID in use
// (SerialNumber) and, from a renewal until the node first presents the new
// SVID, that one too (NewSerialNumber); any other SVID of the node is
// refused (ErrNodeSVIDSuperseded), so a copy of a node's SVID stops working
// once the node renews, and the node stops working once the copy does.
type Node struct {
	SPIFFEID       spiffeid.ID
	AttestedAt     time.Time // defaults to the store's clock
	CredentialKind string    // how it attested, e.g. "join_token"
	SerialNumber   string    // of the SVID it uses, lowercase hex
	ExpiresAt      time.Time // of the SVID it uses
	// NewSerialNumber and NewExpiresAt are of the SVID its last renewal
	// signed, until the node first presents it; empty and zero otherwise.
	NewSerialNumber string
	NewExpiresAt    time.Time
	// BannedAt is when the node was banned (BanNode); zero unless it is.
	BannedAt time.Time
}

// Banned reports whether the node is banned.
func (n Node) Banned() bool { return !n.BannedAt.IsZero() }

// UpsertNode records n as the node's attestation, replacing what was stored
// for the same SPIFFE ID (a pending renewal included). A banned node's
// record is kept and ErrNodeBanned returned.
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
	res, err := s.w.ExecContext(ctx,
		`INSERT INTO nodes (spiffe_id, attested_at, credential_kind, serial_number, expires_at)
		 VALUES ($1, $2, $3, $4, $5)
		 ON CONFLICT (spiffe_id) DO UPDATE SET
		   attested_at = excluded.attested_at, credential_kind = excluded.credential_kind,
		   serial_number = excluded.serial_number, expires_at = excluded.expires_at,
		   new_serial_number = NULL, new_expires_at = NULL
		 WHERE nodes.banned_at IS NULL`,
		n.SPIFFEID.String(), millis(n.AttestedAt), n.CredentialKind, serial, millis(n.ExpiresAt))
	if err != nil {
		return fmt.Errorf("store: recording node %s: %w", n.SPIFFEID, err)
	}
	if rows, err := res.RowsAffected(); err == nil && rows == 0 {
		return fmt.Errorf("store: node %s: %w", n.SPIFFEID, ErrNodeBanned)
	}
	return nil
}

// renewNodeSQL records a node's renewal (Issued.RenewsNode): $1 the node,
// $2 the serial of the SVID it presented, $3 and $4 the new SVID's serial
// and expiry. The record must admit $2: the SVID in use, or the one the
// last renewal signed, which then becomes the one in use (every right-hand
// side reads the row as it was before the update). It matches no row
// otherwise.
const renewNodeSQL = `UPDATE nodes SET
	serial_number = CASE WHEN new_serial_number = $2 THEN new_serial_number ELSE serial_number END,
	expires_at = CASE WHEN new_serial_number = $2 THEN new_expires_at ELSE expires_at END,
	new_serial_number = $3, new_expires_at = $4
	WHERE spiffe_id = $1 AND banned_at IS NULL AND (serial_number = $2 OR new_serial_number = $2)`

// UseNodeSVID records that the node presented the SVID with serial
// presented, expiring at expires, as the one it uses from now on, and
// returns the record. That is allowed for the SVID its last renewal signed,
// and for any SVID of a record that names none in use (one attested before
// meshfed kept node SVIDs to one lineage: its first SVID presented is
// adopted). If another server recorded it first, the record is returned as
// it is; any other serial gets ErrNodeSVIDSuperseded, and ErrNotFound or
// ErrNodeBanned say the rest.
func (s *Store) UseNodeSVID(ctx context.Context, id spiffeid.ID, presented string, expires time.Time) (Node, error) {
	if err := checkID("node SPIFFE ID", id); err != nil {
		return Node{}, err
	}
	cur, err := normalizeSerial("presented serial number", presented)
	if err != nil {
		return Node{}, err
	}
	if expires.IsZero() {
		return Node{}, invalidf("node %s: the SVID presented has no expiry", id)
	}
	n, err := scanNode(s.w.QueryRowContext(ctx,
		`UPDATE nodes SET serial_number = $2,
		   expires_at = CASE WHEN new_serial_number = $2 THEN new_expires_at ELSE $3 END,
		   new_serial_number = NULL, new_expires_at = NULL
		 WHERE spiffe_id = $1 AND banned_at IS NULL AND (new_serial_number = $2 OR serial_number = '')
		 RETURNING `+nodeColumns,
		id.String(), cur, millis(expires)))
	if errors.Is(err, sql.ErrNoRows) {
		return s.whyNotNode(ctx, id, cur)
	}
	if err != nil {
		return Node{}, fmt.Errorf("store: recording node %s's new SVID: %w", id, err)
	}
	return n, nil
}

// whyNotNode explains why no row of node id matched the serial presented:
// the record as it is if presented is the SVID it uses, else the error.
func (s *Store) whyNotNode(ctx context.Context, id spiffeid.ID, presented string) (Node, error) {
	n, err := s.GetNode(ctx, id)
	switch {
	case err != nil:
		return Node{}, err
	case n.Banned():
		return Node{}, fmt.Errorf("store: node %s: %w", id, ErrNodeBanned)
	case n.SerialNumber != presented:
		return Node{}, fmt.Errorf("store: node %s: SVID %s: %w", id, presented, ErrNodeSVIDSuperseded)
	}
	return n, nil
}

// DeleteNode removes the node's record (its eviction, which also lifts a
// ban): the node's SVIDs are refused from then on, and it must attest
// again. ErrNotFound if there is none. It moves the revision, so that every
// server sharing the database forgets the node.
func (s *Store) DeleteNode(ctx context.Context, id spiffeid.ID) error {
	if err := checkID("node SPIFFE ID", id); err != nil {
		return err
	}
	found := false
	err := s.change(ctx, false, func(tx *sql.Tx, _ int64) (int64, error) {
		res, err := tx.ExecContext(ctx, `DELETE FROM nodes WHERE spiffe_id = $1`, id.String())
		if err != nil {
			return 0, err
		}
		n, err := res.RowsAffected()
		found = n > 0
		return n, err
	})
	if err != nil {
		return fmt.Errorf("store: evicting node %s: %w", id, err)
	}
	if !found {
		return fmt.Errorf("store: node %s: %w", id, ErrNotFound)
	}
	return nil
}

// PurgeNodes deletes (or with dryRun only returns) the records of nodes
// that are not banned and whose SVID in use, and pending one if any,
// expired before before, and returns them ordered by SPIFFE ID. Such a
// node can no longer make a call; deleting it moves the revision.
func (s *Store) PurgeNodes(ctx context.Context, before time.Time, dryRun bool) ([]Node, error) {
	const where = ` WHERE banned_at IS NULL AND expires_at < $1 AND (new_expires_at IS NULL OR new_expires_at < $1)`
	var out []Node
	collect := func(rows *sql.Rows, err error) (int64, error) {
		if err != nil {
			return 0, err
		}
		defer rows.Close()
		for rows.Next() {
			n, err := scanNode(rows)
			if err != nil {
				return 0, err
			}
			out = append(out, n)
		}
		return int64(len(out)), rows.Err()
	}
	var err error
	if dryRun {
		_, err = collect(s.r.QueryContext(ctx, `SELECT `+nodeColumns+` FROM nodes`+where, millis(before)))
	} else {
		// What is deleted is what is returned, whatever renewed meanwhile.
		err = s.change(ctx, false, func(tx *sql.Tx, _ int64) (int64, error) {
			return collect(tx.QueryContext(ctx, `DELETE FROM nodes`+where+` RETURNING `+nodeColumns, millis(before)))
		})
	}
	if err != nil {
		return nil, fmt.Errorf("store: purging nodes: %w", err)
	}
	slices.SortFunc(out, func(a, b Node) int { return strings.Compare(a.SPIFFEID.String(), b.SPIFFEID.String()) })
	return out, nil
}

// BanNode bans the node and returns its record: its SVIDs are refused and it
// cannot attest again until DeleteNode. Banning a banned node changes
// nothing. ErrNotFound if there is no record. It moves the revision.
func (s *Store) BanNode(ctx context.Context, id spiffeid.ID) (Node, error) {
	if err := checkID("node SPIFFE ID", id); err != nil {
		return Node{}, err
	}
	err := s.change(ctx, false, func(tx *sql.Tx, _ int64) (int64, error) {
		res, err := tx.ExecContext(ctx, `UPDATE nodes SET banned_at = $2 WHERE spiffe_id = $1 AND banned_at IS NULL`,
			id.String(), millis(s.now()))
		if err != nil {
			return 0, err
		}
		return res.RowsAffected()
	})
	if err != nil {
		return Node{}, fmt.Errorf("store: banning node %s: %w", id, err)
	}
	return s.GetNode(ctx, id)
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

const nodeColumns = `spiffe_id, attested_at, credential_kind, serial_number, expires_at, new_serial_number, new_expires_at, banned_at`

func scanNode(row scanner) (Node, error) {
	var (
		n                     Node
		id                    string
		attestedAt, expiresAt int64
		newSerial             sql.NullString
		newExpiresAt, banned  sql.NullInt64
	)
	if err := row.Scan(&id, &attestedAt, &n.CredentialKind, &n.SerialNumber, &expiresAt, &newSerial, &newExpiresAt, &banned); err != nil {
		return Node{}, err
	}
	var err error
	if n.SPIFFEID, err = parseStoredID("node", id); err != nil {
		return Node{}, err
	}
	n.AttestedAt, n.ExpiresAt = fromMillis(attestedAt), fromMillis(expiresAt)
	n.NewSerialNumber = newSerial.String
	if newExpiresAt.Valid {
		n.NewExpiresAt = fromMillis(newExpiresAt.Int64)
	}
	if banned.Valid {
		n.BannedAt = fromMillis(banned.Int64)
	}
	return n, nil
}
