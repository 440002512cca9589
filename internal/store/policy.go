package store

import (
	"bytes"
	"cmp"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// Bounds on stored policy documents. The whole set travels in every agent's
// Watch snapshot (gRPC's default limit on a received message is 4 MiB, and
// the snapshot also carries bundles and entries), so the set as a whole is
// bounded, not only each document.
const (
	// MaxPolicyBytes bounds one document. An AuthorizationPolicy is a few
	// hundred bytes; a RequestAuthentication with inline JWKS a few KiB.
	MaxPolicyBytes = 256 << 10
	// MaxPolicies bounds the stored documents: policy.MaxDocuments, the
	// most one policy set holds.
	MaxPolicies = 4096
	// MaxPolicyTotalBytes bounds the YAML of all stored documents together.
	MaxPolicyTotalBytes = 2 << 20
	// MaxPolicyKindBytes, MaxPolicyNamespaceBytes and MaxPolicyNameBytes
	// bound a document's key: Kubernetes allows 63 bytes for a namespace (a
	// DNS label) and 253 for a name (a DNS subdomain).
	MaxPolicyKindBytes      = 64
	MaxPolicyNamespaceBytes = 63
	MaxPolicyNameBytes      = 253
)

// Policy is one Istio security policy document (PeerAuthentication,
// RequestAuthentication or AuthorizationPolicy) applied to the server, kept
// as the YAML it was applied as. The store checks only its bounds; parsing
// and validating it is the caller's business.
type Policy struct {
	Kind      string
	Namespace string
	Name      string
	YAML      []byte
	// CreatedAt is when the document was first applied; applying it again
	// keeps it, as Kubernetes keeps metadata.creationTimestamp, because
	// Istio lets the oldest policy win.
	CreatedAt time.Time
	UpdatedAt time.Time // when its YAML last changed
	// Generation is 1 when created and one more each time its YAML changes.
	Generation int64
	// Revision is the store revision of its last change.
	Revision int64
}

// PolicyResult is what ApplyPolicies did with one document, in kubectl
// apply's words.
type PolicyResult string

// The results of ApplyPolicies.
const (
	PolicyCreated    PolicyResult = "created"
	PolicyConfigured PolicyResult = "configured"
	PolicyUnchanged  PolicyResult = "unchanged"
)

// AppliedPolicy is one document as ApplyPolicies left it.
type AppliedPolicy struct {
	Policy Policy
	Result PolicyResult
}

type policyKey struct{ kind, namespace, name string }

func (k policyKey) String() string { return k.kind + " " + k.namespace + "/" + k.name }

func checkPolicyKey(k policyKey) error {
	return cmp.Or(
		checkText("policy kind", k.kind, MaxPolicyKindBytes, true),
		checkText("policy namespace", k.namespace, MaxPolicyNamespaceBytes, true),
		checkText("policy name", k.name, MaxPolicyNameBytes, true),
	)
}

// ApplyPolicies stores a batch of documents, all or none: each is created,
// or replaces the stored one of the same kind, namespace and name (keeping
// its CreatedAt), or, with the same YAML as stored, is left unchanged. A
// batch that changes something moves the store revision and the policy
// revision to the same new value in the same transaction; one that changes
// nothing moves neither. A batch that would leave more than MaxPolicies
// documents or MaxPolicyTotalBytes of YAML stored is refused whole. It
// returns each document as stored, in the batch's order, and the policy
// revision after the batch.
func (s *Store) ApplyPolicies(ctx context.Context, docs []Policy) ([]AppliedPolicy, int64, error) {
	switch {
	case len(docs) == 0:
		return nil, 0, invalidf("no policy documents to apply")
	case len(docs) > MaxPolicies:
		return nil, 0, invalidf("%d policy documents in one batch, more than the %d allowed", len(docs), MaxPolicies)
	}
	seen := make(map[policyKey]bool, len(docs))
	for _, p := range docs {
		k := policyKey{p.Kind, p.Namespace, p.Name}
		if err := checkPolicyKey(k); err != nil {
			return nil, 0, err
		}
		switch {
		case len(p.YAML) == 0:
			return nil, 0, invalidf("policy %s is empty", k)
		case len(p.YAML) > MaxPolicyBytes:
			return nil, 0, invalidf("policy %s is %d bytes, more than the %d allowed", k, len(p.YAML), MaxPolicyBytes)
		case seen[k]:
			return nil, 0, invalidf("policy %s is twice in one batch", k)
		}
		seen[k] = true
	}
	now := s.now()
	out := make([]AppliedPolicy, len(docs))
	var policyRev int64
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		// The state row first, as in change: one lock order for all writers.
		var rev, prev int64
		if err := tx.QueryRowContext(ctx, `UPDATE state SET revision = revision + 1 WHERE id = 1 RETURNING revision, policy_revision`).Scan(&rev, &prev); err != nil {
			return err
		}
		changed := 0
		for i, p := range docs {
			stored, err := scanPolicy(tx.QueryRowContext(ctx,
				`SELECT `+policyColumns+` FROM policies WHERE kind = $1 AND namespace = $2 AND name = $3`, p.Kind, p.Namespace, p.Name))
			switch {
			case errors.Is(err, sql.ErrNoRows):
				np := Policy{Kind: p.Kind, Namespace: p.Namespace, Name: p.Name, YAML: bytes.Clone(p.YAML), CreatedAt: now, UpdatedAt: now, Generation: 1, Revision: rev}
				if _, err := tx.ExecContext(ctx,
					`INSERT INTO policies (kind, namespace, name, yaml, created_at, updated_at, generation, revision) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
					np.Kind, np.Namespace, np.Name, np.YAML, millis(now), millis(now), np.Generation, rev); err != nil {
					return err
				}
				out[i] = AppliedPolicy{Policy: np, Result: PolicyCreated}
				changed++
			case err != nil:
				return err
			case bytes.Equal(stored.YAML, p.YAML):
				out[i] = AppliedPolicy{Policy: stored, Result: PolicyUnchanged}
			default:
				stored.YAML, stored.UpdatedAt, stored.Generation, stored.Revision = bytes.Clone(p.YAML), now, stored.Generation+1, rev
				if _, err := tx.ExecContext(ctx,
					`UPDATE policies SET yaml = $4, updated_at = $5, generation = $6, revision = $7 WHERE kind = $1 AND namespace = $2 AND name = $3`,
					p.Kind, p.Namespace, p.Name, stored.YAML, millis(now), stored.Generation, rev); err != nil {
					return err
				}
				out[i] = AppliedPolicy{Policy: stored, Result: PolicyConfigured}
				changed++
			}
		}
		if changed == 0 {
			policyRev = prev
			return errNoChange
		}
		var n, size int64
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*), COALESCE(SUM(LENGTH(yaml)), 0) FROM policies`).Scan(&n, &size); err != nil {
			return err
		}
		if n > MaxPolicies {
			return invalidf("applying these would store %d policy documents, more than the %d allowed; delete some first", n, MaxPolicies)
		}
		if size > MaxPolicyTotalBytes {
			return invalidf("applying these would store %d bytes of policy, more than the %d allowed; delete some first", size, MaxPolicyTotalBytes)
		}
		if _, err := tx.ExecContext(ctx, `UPDATE state SET policy_revision = $1 WHERE id = 1`, rev); err != nil {
			return err
		}
		policyRev = rev
		return nil
	})
	switch {
	case errors.Is(err, errNoChange):
		return out, policyRev, nil
	case errors.Is(err, ErrInvalid):
		return nil, 0, err
	case err != nil:
		return nil, 0, fmt.Errorf("store: applying policies: %w", err)
	}
	return out, policyRev, nil
}

// ListPolicies returns every stored document, ordered by kind, namespace and
// name, and the policy revision: the store revision of the last change to
// the policies (0 if they never changed), read in the same snapshot.
func (s *Store) ListPolicies(ctx context.Context) ([]Policy, int64, error) {
	var (
		out []Policy
		rev int64
	)
	err := s.readTx(ctx, func(tx *sql.Tx) error {
		if err := tx.QueryRowContext(ctx, `SELECT policy_revision FROM state WHERE id = 1`).Scan(&rev); err != nil {
			return err
		}
		rows, err := tx.QueryContext(ctx, `SELECT `+policyColumns+` FROM policies ORDER BY kind, namespace, name`)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			p, err := scanPolicy(rows)
			if err != nil {
				return err
			}
			out = append(out, p)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, 0, fmt.Errorf("store: listing policies: %w", err)
	}
	return out, rev, nil
}

// DeletePolicy deletes the document of this kind, namespace and name, or
// returns ErrNotFound. It returns the new policy revision.
func (s *Store) DeletePolicy(ctx context.Context, kind, namespace, name string) (int64, error) {
	k := policyKey{kind, namespace, name}
	if err := checkPolicyKey(k); err != nil {
		return 0, err
	}
	var rev int64
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		if err := tx.QueryRowContext(ctx, `UPDATE state SET revision = revision + 1, policy_revision = revision + 1 WHERE id = 1 RETURNING revision`).Scan(&rev); err != nil {
			return err
		}
		n, err := rowsAffected(tx.ExecContext(ctx, `DELETE FROM policies WHERE kind = $1 AND namespace = $2 AND name = $3`, kind, namespace, name))
		if err == nil && n == 0 {
			err = ErrNotFound
		}
		return err
	})
	if errors.Is(err, ErrNotFound) {
		return 0, fmt.Errorf("store: policy %s: %w", k, ErrNotFound)
	}
	if err != nil {
		return 0, fmt.Errorf("store: deleting policy %s: %w", k, err)
	}
	return rev, nil
}

const policyColumns = `kind, namespace, name, yaml, created_at, updated_at, generation, revision`

func scanPolicy(row scanner) (Policy, error) {
	var (
		p                  Policy
		created, updatedAt int64
	)
	if err := row.Scan(&p.Kind, &p.Namespace, &p.Name, &p.YAML, &created, &updatedAt, &p.Generation, &p.Revision); err != nil {
		return Policy{}, err
	}
	p.CreatedAt, p.UpdatedAt = fromMillis(created), fromMillis(updatedAt)
	return p, nil
}
