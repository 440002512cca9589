package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Bundle is the trust bundle of a federated (foreign) trust domain, as the
// SPIFFE bundle JSON it was fetched as. The store keeps the JSON as given;
// parsing and verifying it is the caller's business.
type Bundle struct {
	TrustDomain spiffeid.TrustDomain
	JSON        []byte
	UpdatedAt   time.Time // when the JSON last changed
}

// SetFederatedBundle stores the bundle of td. Storing the JSON already stored
// changes nothing (not UpdatedAt, not the revision), so a periodic refresh
// that fetches the same bundle does not wake every watcher.
func (s *Store) SetFederatedBundle(ctx context.Context, td spiffeid.TrustDomain, bundleJSON []byte) error {
	if td.IsZero() {
		return invalidf("federated bundle has no trust domain")
	}
	switch {
	case len(bundleJSON) == 0:
		return invalidf("federated bundle of %s is empty", td.Name())
	case len(bundleJSON) > MaxBundleBytes:
		return invalidf("federated bundle of %s is %d bytes, more than the %d allowed", td.Name(), len(bundleJSON), MaxBundleBytes)
	case !json.Valid(bundleJSON):
		return invalidf("federated bundle of %s is not JSON", td.Name())
	}
	err := s.change(ctx, false, func(tx *sql.Tx, _ int64) (int64, error) {
		// Zero rows (no change) when the stored JSON is the same.
		return rowsAffected(tx.ExecContext(ctx,
			`INSERT INTO federated_bundles (trust_domain, bundle, updated_at) VALUES ($1, $2, $3)
			 ON CONFLICT (trust_domain) DO UPDATE SET bundle = excluded.bundle, updated_at = excluded.updated_at
			 WHERE federated_bundles.bundle <> excluded.bundle`,
			td.Name(), bundleJSON, millis(s.now())))
	})
	if err != nil {
		return fmt.Errorf("store: storing the federated bundle of %s: %w", td.Name(), err)
	}
	return nil
}

// FederatedBundle returns the stored bundle of td, or ErrNotFound.
func (s *Store) FederatedBundle(ctx context.Context, td spiffeid.TrustDomain) (Bundle, error) {
	b, err := scanBundle(s.r.QueryRowContext(ctx, `SELECT trust_domain, bundle, updated_at FROM federated_bundles WHERE trust_domain = $1`, td.Name()))
	if errors.Is(err, sql.ErrNoRows) {
		return Bundle{}, fmt.Errorf("store: federated bundle of %q: %w", td.Name(), ErrNotFound)
	}
	if err != nil {
		return Bundle{}, fmt.Errorf("store: reading the federated bundle of %s: %w", td.Name(), err)
	}
	return b, nil
}

// ListFederatedBundles returns every stored federated bundle, ordered by
// trust domain name.
func (s *Store) ListFederatedBundles(ctx context.Context) ([]Bundle, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT trust_domain, bundle, updated_at FROM federated_bundles ORDER BY trust_domain`)
	if err != nil {
		return nil, fmt.Errorf("store: listing federated bundles: %w", err)
	}
	defer rows.Close()
	var out []Bundle
	for rows.Next() {
		b, err := scanBundle(rows)
		if err != nil {
			return nil, fmt.Errorf("store: listing federated bundles: %w", err)
		}
		out = append(out, b)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: listing federated bundles: %w", err)
	}
	return out, nil
}

// DeleteFederatedBundle deletes the bundle of td, or returns ErrNotFound.
func (s *Store) DeleteFederatedBundle(ctx context.Context, td spiffeid.TrustDomain) error {
	err := s.change(ctx, false, func(tx *sql.Tx, _ int64) (int64, error) {
		n, err := rowsAffected(tx.ExecContext(ctx, `DELETE FROM federated_bundles WHERE trust_domain = $1`, td.Name()))
		if err == nil && n == 0 {
			err = ErrNotFound
		}
		return n, err
	})
	if errors.Is(err, ErrNotFound) {
		return fmt.Errorf("store: federated bundle of %q: %w", td.Name(), ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("store: deleting the federated bundle of %s: %w", td.Name(), err)
	}
	return nil
}

func scanBundle(row scanner) (Bundle, error) {
	var (
		b         Bundle
		name      string
		updatedAt int64
	)
	if err := row.Scan(&name, &b.JSON, &updatedAt); err != nil {
		return Bundle{}, err
	}
	td, err := spiffeid.TrustDomainFromString(name)
	if err != nil {
		return Bundle{}, fmt.Errorf("stored trust domain %q is corrupt: %w", name, err)
	}
	b.TrustDomain, b.UpdatedAt = td, fromMillis(updatedAt)
	return b, nil
}
