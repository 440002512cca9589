package policy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sync"
	"time"
)

// Defaults of JWKSCache, those of Envoy's remote JWKS and istiod's resolver.
const (
	DefaultJWKSRefresh     = 20 * time.Minute
	DefaultJWKSFailureHold = 5 * time.Second
	DefaultJWKSTimeout     = 5 * time.Second
)

// JWKSCache is the JWKSFetcher of a running proxy: it fetches the key set of
// a jwksUri over HTTP(S) on first use and keeps it for Refresh. A refetch that
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

// FetchJWKS returns the key set of uri, fetching it when it is missing or
// older than the refresh interval.
func (c *JWKSCache) FetchJWKS(uri string) ([]byte, error) {
	for {
		c.mu.Lock()
		e := c.entries[uri]
		if e == nil {
			e = &jwksEntry{}
			c.entries[uri] = e
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

		data, err := c.get(uri)

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

// get fetches one key set: 200 only, no redirects to another scheme than
// http(s), at most MaxJWKSSize bytes, parsed before it is cached.
func (c *JWKSCache) get(uri string) ([]byte, error) {
	u, err := url.Parse(uri)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return nil, fmt.Errorf("jwksUri %q is not an http(s) URL", uri)
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
		return nil, fmt.Errorf("fetching: HTTP %d", resp.StatusCode)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, MaxJWKSSize+1))
	if err != nil {
		return nil, fmt.Errorf("fetching: %w", err)
	}
	if len(data) > MaxJWKSSize {
		return nil, errors.New("fetching: JWKS larger than the bound")
	}
	if _, err := parseJWKS(data); err != nil {
		return nil, err
	}
	return data, nil
}
