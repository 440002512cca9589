package policy

import (
	"fmt"
	"slices"
)

// Set is a loaded policy set. It is immutable and safe for concurrent use.
type Set struct {
	root    string
	peers   []*Document // oldest first
	reqs    []*Document
	authzs  []*Document
	fetcher JWKSFetcher
}

// NewSet builds a set from parsed documents. Two documents of one kind with
// the same namespace and name are refused, as the API server would keep only
// one.
func NewSet(docs []Document, opts ...Option) (*Set, error) {
	o := newOptions(opts)
	if len(docs) > MaxDocuments {
		return nil, fmt.Errorf("policy: more than %d documents", MaxDocuments)
	}
	s := &Set{root: o.root}
	seen := map[string]*Document{}
	for i := range docs {
		d := &docs[i]
		d.ref = d.Namespace + "/" + d.Name
		key := string(d.Kind) + " " + d.Ref()
		if prev, ok := seen[key]; ok {
			return nil, fmt.Errorf("policy: %s: %s %s is also defined at %s", d.Where(), d.Kind, d.Ref(), prev.Where())
		}
		seen[key] = d
		switch d.Kind {
		case KindPeerAuthentication:
			s.peers = append(s.peers, d)
		case KindRequestAuthentication:
			s.reqs = append(s.reqs, d)
		case KindAuthorizationPolicy:
			s.authzs = append(s.authzs, d)
		}
	}
	for _, l := range [][]*Document{s.peers, s.reqs, s.authzs} {
		slices.SortStableFunc(l, func(a, b *Document) int {
			if older(a, b) {
				return -1
			}
			if older(b, a) {
				return 1
			}
			return 0
		})
	}
	return s, nil
}

// RootNamespace is the namespace whose policies apply mesh-wide.
func (s *Set) RootNamespace() string { return s.root }

// Documents returns every document, oldest first within each kind.
func (s *Set) Documents() []*Document {
	return slices.Concat(s.peers, s.reqs, s.authzs)
}

// WithJWKSFetcher returns a copy of the set that gets the keys of jwksUri
// rules from f.
func (s *Set) WithJWKSFetcher(f JWKSFetcher) *Set {
	c := *s
	c.fetcher = f
	return &c
}

func hasSelector(m map[string]string) bool { return len(m) > 0 }
