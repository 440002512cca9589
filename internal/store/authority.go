package store

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"time"
)

// X509Authority is a CA certificate of this trust domain that verifies its
// X.509-SVIDs. Every server of the domain adds the CA it signs with, so the
// published bundle holds every CA in use.
type X509Authority struct {
	DER      []byte    // the certificate
	NotAfter time.Time // defaults to the certificate's NotAfter
	ServerID string    // the server that added it
	AddedAt  time.Time // set by the store
}

// JWTAuthority is a public key of this trust domain that verifies its
// JWT-SVIDs.
type JWTAuthority struct {
	KeyID        string
	PublicKeyDER []byte // PKIX, as x509.MarshalPKIXPublicKey makes it
	NotAfter     time.Time
	ServerID     string
	AddedAt      time.Time // set by the store
}

// Authorities is the key material of this trust domain's bundle.
type Authorities struct {
	X509 []X509Authority // ordered by AddedAt, then fingerprint
	JWT  []JWTAuthority  // ordered by AddedAt, then key ID
	// Sequence increases by one with every change to the set, in the same
	// transaction: it is the bundle's spiffe_sequence.
	Sequence uint64
}

// AddX509Authority adds a CA certificate to the trust domain's bundle. Adding
// a certificate already there (by SHA-256 of its DER) changes nothing, not
// even the sequence.
func (s *Store) AddX509Authority(ctx context.Context, a X509Authority) error {
	if err := checkDER("X.509 authority", a.DER); err != nil {
		return err
	}
	cert, err := x509.ParseCertificate(a.DER)
	if err != nil {
		return invalidf("X.509 authority is not a DER certificate: %v", err)
	}
	if !cert.IsCA {
		return invalidf("X.509 authority %q is not a CA certificate", cert.Subject)
	}
	if err := checkText("X.509 authority server ID", a.ServerID, MaxNameBytes, false); err != nil {
		return err
	}
	if a.NotAfter.IsZero() {
		a.NotAfter = cert.NotAfter
	}
	sum := sha256.Sum256(a.DER)
	fp := hex.EncodeToString(sum[:])
	err = s.change(ctx, true, func(tx *sql.Tx, _ int64) (int64, error) {
		// Zero rows (no change) when the certificate is already there.
		return rowsAffected(tx.ExecContext(ctx,
			`INSERT INTO x509_authorities (sha256, der, not_after, server_id, added_at) VALUES ($1, $2, $3, $4, $5)
			 ON CONFLICT (sha256) DO NOTHING`,
			fp, a.DER, millis(a.NotAfter), a.ServerID, millis(s.now())))
	})
	if err != nil {
		return fmt.Errorf("store: adding X.509 authority %s: %w", fp, err)
	}
	return nil
}

// AddJWTAuthority adds a JWT signing key to the trust domain's bundle. Adding
// the same key under the same key ID again changes nothing; a different key
// under a key ID already taken is ErrAlreadyExists.
func (s *Store) AddJWTAuthority(ctx context.Context, a JWTAuthority) error {
	if err := checkText("JWT authority key ID", a.KeyID, MaxNameBytes, true); err != nil {
		return err
	}
	if err := checkDER("JWT authority "+a.KeyID, a.PublicKeyDER); err != nil {
		return err
	}
	if _, err := x509.ParsePKIXPublicKey(a.PublicKeyDER); err != nil {
		return invalidf("JWT authority %s is not a PKIX public key: %v", a.KeyID, err)
	}
	if err := checkText("JWT authority server ID", a.ServerID, MaxNameBytes, false); err != nil {
		return err
	}
	if a.NotAfter.IsZero() {
		return invalidf("JWT authority %s has no expiry", a.KeyID)
	}
	err := s.change(ctx, true, func(tx *sql.Tx, _ int64) (int64, error) {
		n, err := rowsAffected(tx.ExecContext(ctx,
			`INSERT INTO jwt_authorities (key_id, public_key, not_after, server_id, added_at) VALUES ($1, $2, $3, $4, $5)
			 ON CONFLICT (key_id) DO NOTHING`,
			a.KeyID, a.PublicKeyDER, millis(a.NotAfter), a.ServerID, millis(s.now())))
		if err != nil || n == 1 {
			return n, err
		}
		var stored []byte
		if err := tx.QueryRowContext(ctx, `SELECT public_key FROM jwt_authorities WHERE key_id = $1`, a.KeyID).Scan(&stored); err != nil {
			return 0, err
		}
		if !bytes.Equal(stored, a.PublicKeyDER) {
			return 0, errDuplicate
		}
		return 0, nil // the same key again: no change
	})
	if errors.Is(err, errDuplicate) {
		return fmt.Errorf("store: JWT authority key ID %q is taken by another key: %w", a.KeyID, ErrAlreadyExists)
	}
	if err != nil {
		return fmt.Errorf("store: adding JWT authority %q: %w", a.KeyID, err)
	}
	return nil
}

// RemoveExpiredAuthorities removes the X.509 and JWT authorities whose
// NotAfter is before now, and returns how many it removed. Removing any
// increases the sequence by one.
func (s *Store) RemoveExpiredAuthorities(ctx context.Context, now time.Time) (int, error) {
	var removed int64
	err := s.change(ctx, true, func(tx *sql.Tx, _ int64) (int64, error) {
		removed = 0
		for _, table := range []string{"x509_authorities", "jwt_authorities"} {
			n, err := rowsAffected(tx.ExecContext(ctx, `DELETE FROM `+table+` WHERE not_after < $1`, millis(now)))
			if err != nil {
				return 0, err
			}
			removed += n
		}
		return removed, nil
	})
	if err != nil {
		return 0, fmt.Errorf("store: removing expired authorities: %w", err)
	}
	return int(removed), nil
}

// RemoveX509Authority removes a CA certificate (by its DER) from the trust
// domain's bundle: a retired root. Removing one increases the sequence by
// one; removing one that is not there is ErrNotFound.
func (s *Store) RemoveX509Authority(ctx context.Context, der []byte) error {
	if err := checkDER("X.509 authority", der); err != nil {
		return err
	}
	sum := sha256.Sum256(der)
	err := s.change(ctx, true, func(tx *sql.Tx, _ int64) (int64, error) {
		n, err := rowsAffected(tx.ExecContext(ctx, `DELETE FROM x509_authorities WHERE sha256 = $1`, hex.EncodeToString(sum[:])))
		if err == nil && n == 0 {
			err = ErrNotFound
		}
		return n, err
	})
	if errors.Is(err, ErrNotFound) {
		return fmt.Errorf("store: X.509 authority %x: %w", sum[:8], ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("store: removing an X.509 authority: %w", err)
	}
	return nil
}

// LocalAuthorities returns this trust domain's authorities and their
// sequence, read from one snapshot.
func (s *Store) LocalAuthorities(ctx context.Context) (Authorities, error) {
	var out Authorities
	err := s.readTx(ctx, func(tx *sql.Tx) error {
		var seq int64
		if err := tx.QueryRowContext(ctx, `SELECT bundle_sequence FROM state WHERE id = 1`).Scan(&seq); err != nil {
			return err
		}
		out.Sequence = uint64(seq)
		rows, err := tx.QueryContext(ctx, `SELECT der, not_after, server_id, added_at FROM x509_authorities ORDER BY added_at, sha256`)
		if err != nil {
			return err
		}
		for rows.Next() {
			var (
				a                 X509Authority
				notAfter, addedAt int64
			)
			if err := rows.Scan(&a.DER, &notAfter, &a.ServerID, &addedAt); err != nil {
				rows.Close()
				return err
			}
			a.NotAfter, a.AddedAt = fromMillis(notAfter), fromMillis(addedAt)
			out.X509 = append(out.X509, a)
		}
		if err := errors.Join(rows.Err(), rows.Close()); err != nil {
			return err
		}
		rows, err = tx.QueryContext(ctx, `SELECT key_id, public_key, not_after, server_id, added_at FROM jwt_authorities ORDER BY added_at, key_id`)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var (
				a                 JWTAuthority
				notAfter, addedAt int64
			)
			if err := rows.Scan(&a.KeyID, &a.PublicKeyDER, &notAfter, &a.ServerID, &addedAt); err != nil {
				return err
			}
			a.NotAfter, a.AddedAt = fromMillis(notAfter), fromMillis(addedAt)
			out.JWT = append(out.JWT, a)
		}
		return rows.Err()
	})
	if err != nil {
		return Authorities{}, fmt.Errorf("store: reading authorities: %w", err)
	}
	return out, nil
}

func checkDER(what string, der []byte) error {
	switch {
	case len(der) == 0:
		return invalidf("%s is empty", what)
	case len(der) > MaxDERBytes:
		return invalidf("%s is %d bytes of DER, more than the %d allowed", what, len(der), MaxDERBytes)
	}
	return nil
}
