package credential_test

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshfed/meshfed/internal/credential"
)

// memTokens is an in-memory TokenConsumer that behaves like the store: a
// token is found by its hash, refused once expired, and consumed once.
type memTokens struct {
	mu     sync.Mutex
	tokens map[string]*memToken
	calls  atomic.Int64
}

type memToken struct {
	id      spiffeid.ID
	expires time.Time
	used    bool
}

var (
	errNoToken = fmt.Errorf("store: no join token with this hash: %w", credential.ErrTokenRejected)
	errUsed    = fmt.Errorf("store: join token already used: %w", credential.ErrTokenRejected)
	errExpired = fmt.Errorf("store: join token expired: %w", credential.ErrTokenRejected)
)

func (m *memTokens) add(hash []byte, id spiffeid.ID, expires time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.tokens == nil {
		m.tokens = make(map[string]*memToken)
	}
	m.tokens[string(hash)] = &memToken{id: id, expires: expires}
}

func (m *memTokens) ConsumeJoinToken(ctx context.Context, hash []byte, now time.Time) (spiffeid.ID, error) {
	m.calls.Add(1)
	if err := ctx.Err(); err != nil {
		return spiffeid.ID{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	tok, ok := m.tokens[string(hash)]
	switch {
	case !ok:
		return spiffeid.ID{}, errNoToken
	case tok.used:
		return spiffeid.ID{}, errUsed
	case !now.Before(tok.expires):
		return spiffeid.ID{}, errExpired
	}
	tok.used = true
	return tok.id, nil
}

var nodeID = spiffeid.RequireFromString("spiffe://east.example/meshfed/agent/join/node-1")

func TestJoinToken(t *testing.T) {
	ctx := context.Background()
	store := &memTokens{}
	v := credential.JoinTokenVerifier{Consumer: store, Clock: newClock().Now}

	token, hash, err := credential.NewJoinToken()
	if err != nil {
		t.Fatal(err)
	}
	store.add(hash, nodeID, t0.Add(time.Hour))
	name := "join-token sha256:" + hex.EncodeToString(hash[:4])

	got, err := v.Verify(ctx, token)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	want := credential.Identity{ID: nodeID, Kind: credential.KindJoinToken, Caller: name}
	if got != want {
		t.Errorf("identity %+v; want %+v", got, want)
	}

	// Replayed.
	_, err = v.Verify(ctx, token)
	ce := credError(t, err, credential.KindJoinToken, "credential: "+name+" is unknown, expired or already used")
	if !errors.Is(err, errUsed) || ce.Unavailable {
		t.Errorf("cause %v, Unavailable %v; want %v, false", ce.Err, ce.Unavailable, errUsed)
	}

	// Expired.
	old, oldHash, _ := credential.NewJoinToken()
	store.add(oldHash, nodeID, t0)
	_, err = v.Verify(ctx, old)
	credError(t, err, credential.KindJoinToken, "credential: join-token sha256:"+hex.EncodeToString(oldHash[:4])+" is unknown, expired or already used")
	if !errors.Is(err, errExpired) {
		t.Errorf("cause %v; want %v", err, errExpired)
	}

	// Unknown.
	unknown, unknownHash, _ := credential.NewJoinToken()
	_, err = v.Verify(ctx, unknown)
	credError(t, err, credential.KindJoinToken, "credential: join-token sha256:"+hex.EncodeToString(unknownHash[:4])+" is unknown, expired or already used")

	// The caller gave up: Unavailable.
	fresh, freshHash, _ := credential.NewJoinToken()
	store.add(freshHash, nodeID, t0.Add(time.Hour))
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	_, err = v.Verify(cancelled, fresh)
	ce = credError(t, err, credential.KindJoinToken, "credential: join-token sha256:"+hex.EncodeToString(freshHash[:4])+" could not be checked: context canceled")
	if !ce.Unavailable {
		t.Error("not marked Unavailable")
	}
	if _, err := v.Verify(ctx, fresh); err != nil {
		t.Errorf("a token whose check was cancelled is spent: %v", err)
	}
}

// TestJoinTokenMalformed checks malformed tokens are refused without a call
// to the store, and the message never repeats them.
func TestJoinTokenMalformed(t *testing.T) {
	store := &memTokens{}
	v := credential.JoinTokenVerifier{Consumer: store}
	good, _, _ := credential.NewJoinToken()
	tests := []struct {
		name, token, err string
	}{
		{"empty", "", "credential: no join token presented"},
		{"short", good[:42], "credential: join token is malformed: it is 42 characters; a join token is 43"},
		{"long", good + "A", "credential: join token is malformed: it is 44 characters; a join token is 43"},
		{"huge", strings.Repeat("A", 1<<20), "credential: join token is malformed: it is 1048576 characters; a join token is 43"},
		{"padding", good[:42] + "=", "credential: join token is malformed: a join token is unpadded base64url"},
		{"standard base64", "+" + good[1:], "credential: join token is malformed: a join token is unpadded base64url"},
		{"space", " " + good[1:], "credential: join token is malformed: a join token is unpadded base64url"},
		{"non-canonical last character", good[:42] + "B", "credential: join token is malformed: a join token is unpadded base64url"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := v.Verify(context.Background(), tt.token)
			credError(t, err, credential.KindJoinToken, tt.err)
			if tt.token != "" && strings.Contains(err.Error(), tt.token) {
				t.Error("error contains the token")
			}
		})
	}
	if n := store.calls.Load(); n != 0 {
		t.Errorf("%d calls to the store for malformed tokens; want 0", n)
	}
}

// TestJoinTokenRace checks that of many concurrent uses of one token exactly
// one succeeds (the verifier adds no window to the store's atomicity).
func TestJoinTokenRace(t *testing.T) {
	store := &memTokens{}
	token, hash, _ := credential.NewJoinToken()
	store.add(hash, nodeID, t0.Add(time.Hour))
	v := credential.JoinTokenVerifier{Consumer: store, Clock: newClock().Now}
	var ok atomic.Int64
	var wg sync.WaitGroup
	for range 50 {
		wg.Go(func() {
			if _, err := v.Verify(context.Background(), token); err == nil {
				ok.Add(1)
			}
		})
	}
	wg.Wait()
	if n := ok.Load(); n != 1 {
		t.Errorf("%d uses of one join token succeeded; want 1", n)
	}
}

func TestNewJoinToken(t *testing.T) {
	seen := make(map[string]bool)
	for range 100 {
		token, hash, err := credential.NewJoinToken()
		if err != nil {
			t.Fatal(err)
		}
		if len(token) != 43 || strings.Trim(token, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_") != "" {
			t.Fatalf("token %q is not 43 base64url characters", token)
		}
		if !bytes.Equal(hash, credential.HashJoinToken(token)) {
			t.Fatal("NewJoinToken's hash differs from HashJoinToken's")
		}
		if seen[token] {
			t.Fatal("NewJoinToken repeated a token")
		}
		seen[token] = true
	}
}

// TestHashJoinToken pins the hash: tokens stored by one version of meshfed
// must be found by the next.
func TestHashJoinToken(t *testing.T) {
	const token = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8"
	const want = "ea866a757e4c38babfa8127cbe9a409d3e1f93a00ff1488ff735fcf917afffd0"
	got := hex.EncodeToString(credential.HashJoinToken(token))
	if got != want {
		t.Errorf("HashJoinToken = %s; want %s", got, want)
	}
	if got2 := hex.EncodeToString(credential.HashJoinToken(token)); got2 != got {
		t.Error("HashJoinToken is not stable")
	}
}

func TestJoinTokenVerifierNeedsConsumer(t *testing.T) {
	token, _, _ := credential.NewJoinToken()
	_, err := credential.JoinTokenVerifier{}.Verify(context.Background(), token)
	if err == nil || err.Error() != "credential: join token verifier has no token consumer" {
		t.Errorf("error %v", err)
	}
	if _, ok := errors.AsType[*credential.Error](err); ok {
		t.Error("a configuration error is a *credential.Error (it would be answered as Unauthenticated)")
	}
}

// failingTokens is a store that cannot be reached.
type failingTokens struct{}

func (failingTokens) ConsumeJoinToken(context.Context, []byte, time.Time) (spiffeid.ID, error) {
	return spiffeid.ID{}, errors.New("store: dial tcp 10.0.0.5:5432: connection refused")
}

func TestJoinTokenStoreOutageIsUnavailable(t *testing.T) {
	token, _, err := credential.NewJoinToken()
	if err != nil {
		t.Fatal(err)
	}
	_, err = credential.JoinTokenVerifier{Consumer: failingTokens{}}.Verify(context.Background(), token)
	var ce *credential.Error
	if !errors.As(err, &ce) || !ce.Unavailable || !strings.Contains(ce.Error(), "could not be checked: the token store is unavailable") {
		t.Fatalf("Verify during a store outage = %v", err)
	}
	if strings.Contains(ce.Error(), "10.0.0.5") {
		t.Error("the caller's message describes the database")
	}
}
