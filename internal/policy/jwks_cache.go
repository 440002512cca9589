package policy

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"
)

// Defaults of JWKSCache, those of Envoy's remote JWKS and istiod's resolver.
const (
	DefaultJWKSRefresh     = 20 * time.Minute
	DefaultJWKSFailureHold = 5 * time.Second
	DefaultJWKSTimeout     = 5 * time.Second
)

// JWKSCache is the JWKSFetcher (and JWKSDiscoverer) of a running proxy: it
// fetches the key set of a jwksUri, or of an issuer by OpenID discovery,
// over HTTP(S) on first use and keeps it for Refresh. A refetch that
// fails keeps the last good key set (a key server outage does not turn
// valid tokens away); a URI that has never been fetched successfully is
// retried at most once per FailureHold, so a flood of requests does not
// become a flood of fetches. Concurrent requests for one URI share one fetch.
type JWKSCache struct {
	client      *http.Client
	refresh     time.Duration
	failureHold time.Duration
	now         func() time.Time

	mu      sync.Mutex
	entries map[string]*jwksEntry
}

type jwksEntry struct {
	data    []byte    // last good body; nil before the first success
	fetched time.Time // of the last good body
	failed  time.Time // of the last failure
	err     error     // of the last failure
	busy    chan struct{}
}

// JWKSCacheConfig configures NewJWKSCache. Zero values take the defaults.
type JWKSCacheConfig struct {
	Client      *http.Client // default: a client with DefaultJWKSTimeout
	Refresh     time.Duration
	FailureHold time.Duration
	Clock       func() time.Time
}

// NewJWKSCache returns an empty cache.
func NewJWKSCache(cfg JWKSCacheConfig) *JWKSCache {
	c := &JWKSCache{client: cfg.Client, refresh: cfg.Refresh, failureHold: cfg.FailureHold, now: cfg.Clock, entries: map[string]*jwksEntry{}}
	if c.client == nil {
		c.client = &http.Client{Timeout: DefaultJWKSTimeout}
	}
	if c.refresh <= 0 {
		c.refresh = DefaultJWKSRefresh
	}
	if c.failureHold <= 0 {
		c.failureHold = DefaultJWKSFailureHold
	}
	if c.now == nil {
		c.now = time.Now
	}
	return c
}

// MaxDiscoverySize bounds an OpenID discovery document.
const MaxDiscoverySize = 64 << 10

// FetchJWKS returns the key set of uri, fetching it when it is missing or
// older than the refresh interval.
func (c *JWKSCache) FetchJWKS(uri string) ([]byte, error) {
	return c.cached(uri, uri, MaxJWKSSize, func(data []byte) error {
		_, err := parseJWKS(data)
		return err
	})
}

// DiscoverJWKS returns the key set of issuer from its OpenID discovery
// document (<issuer>/.well-known/openid-configuration): its jwks_uri,
// fetched as FetchJWKS does. The document must name the same issuer
// (OpenID Connect Discovery 1.0, section 4.3); both are cached alike.
func (c *JWKSCache) DiscoverJWKS(issuer string) ([]byte, error) {
	doc, err := c.cached("discovery "+issuer, strings.TrimSuffix(issuer, "/")+"/.well-known/openid-configuration", MaxDiscoverySize, func(data []byte) error {
		_, err := parseDiscovery(issuer, data)
		return err
	})
	if err != nil {
		return nil, err
	}
	uri, err := parseDiscovery(issuer, doc)
	if err != nil {
		return nil, err
	}
	return c.FetchJWKS(uri)
}

// parseDiscovery returns the jwks_uri of an OpenID discovery document.
func parseDiscovery(issuer string, data []byte) (string, error) {
	var doc struct {
		Issuer  string `json:"issuer"`
		JWKSURI string `json:"jwks_uri"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		return "", fmt.Errorf("not an OpenID discovery document: %v", err)
	}
	if doc.Issuer != issuer {
		return "", fmt.Errorf("the discovery document names issuer %q, not %q", doc.Issuer, issuer)
	}
	if u, err := url.Parse(doc.JWKSURI); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return "", fmt.Errorf("the discovery document's jwks_uri %q is not an http(s) URL", doc.JWKSURI)
	}
	return doc.JWKSURI, nil
}

// cached returns the body of url under key, fetching it when it is missing
// or stale; check decides whether a body is good enough to keep.
func (c *JWKSCache) cached(key, uri string, limit int, check func([]byte) error) ([]byte, error) {
	for {
		c.mu.Lock()
		e := c.entries[key]
		if e == nil {
			e = &jwksEntry{}
			c.entries[key] = e
		}
		if e.busy != nil {
			busy := e.busy
			c.mu.Unlock()
			<-busy
			continue
		}
		now := c.now()
		fresh := e.data != nil && now.Sub(e.fetched) < c.refresh
		holding := e.err != nil && now.Sub(e.failed) < c.failureHold
		if fresh || holding {
			data, err := e.data, e.err
			c.mu.Unlock()
			if data != nil {
				return data, nil
			}
			return nil, err
		}
		e.busy = make(chan struct{})
		c.mu.Unlock()

		data, err := c.get(uri, limit, check)

		c.mu.Lock()
		if err == nil {
			e.data, e.fetched, e.err = data, c.now(), nil
		} else {
			e.failed, e.err = c.now(), err
		}
		close(e.busy)
		e.busy = nil
		data, keep := e.data, e.data != nil
		c.mu.Unlock()
		if keep {
			return data, nil
		}
		return nil, err
	}
}

// get fetches one document: 200 only, http(s) only, at most limit bytes,
// checked before it is cached.
func (c *JWKSCache) get(uri string, limit int, check func([]byte) error) ([]byte, error) {
	u, err := url.Parse(uri)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return nil, fmt.Errorf("%q is not an http(s) URL", uri)
	}
	ctx, cancel := context.WithTimeout(context.Background(), DefaultJWKSTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, uri, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := c.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("fetching: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("fetching %s: HTTP %d", uri, resp.StatusCode)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, int64(limit)+1))
	if err != nil {
		return nil, fmt.Errorf("fetching: %w", err)
	}
	if len(data) > limit {
		return nil, fmt.Errorf("fetching %s: larger than the bound of %d bytes", uri, limit)
	}
	if err := check(data); err != nil {
		return nil, err
	}
	return data, nil
}
