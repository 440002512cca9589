package credential_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/meshfed/meshfed/internal/credential"
)

func TestNewJWTVerifierRefuses(t *testing.T) {
	dir := t.TempDir()
	file := func(name string, data []byte) string {
		path := dir + "/" + name
		writeJWKS(t, path, data, t0)
		return path
	}
	good := file("good.json", standardJWKS(t))
	oct := file("oct.json", []byte(`{"keys":[`+
		`{"kty":"RSA","kid":"rsa1","n":"`+b64(rsaKey().N.Bytes())+`","e":"AQAB"},`+
		`{"kty":"oct","kid":"hmac","k":"c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0"}]}`))
	private := file("private.json", jwksJSON(t, jose.JSONWebKey{Key: ecKey(), KeyID: "ec1"}))
	rsa1024 := file("rsa1024.json", jwksJSON(t, jose.JSONWebKey{Key: &must(rsa.GenerateKey(rand.Reader, 1024)).PublicKey, KeyID: "small"}))
	dupKID := file("dup.json", jwksJSON(t, pubJWK(ecKey(), "k", "ES256"), pubJWK(ecKey2(), "k", "ES256")))
	noKeys := file("empty.json", []byte(`{"keys":[]}`))
	encOnly := file("enc.json", jwksJSON(t, jose.JSONWebKey{Key: ecKey().Public(), KeyID: "e", Use: "enc"}))
	badAlg := file("badalg.json", jwksJSON(t, pubJWK(ecKey(), "ec1", "HS256")))
	wrongAlg := file("wrongalg.json", jwksJSON(t, pubJWK(ecKey(), "ec1", "RS256")))
	p384 := must(ecdsa.GenerateKey(elliptic.P384(), rand.Reader))
	wrongCurve := file("wrongcurve.json", jwksJSON(t, pubJWK(p384, "ec1", "ES256")))
	notJSON := file("notjson.json", []byte("-----BEGIN PUBLIC KEY-----"))
	noKeysArray := file("nokeys.json", []byte(`{"kid":"x"}`))
	huge := file("huge.json", []byte(`{"keys":[],"pad":"`+strings.Repeat("x", credential.MaxJWKSBytes)+`"}`))

	iss := func(edit func(*credential.Issuer)) []credential.Issuer {
		i := credential.Issuer{Issuer: k8sIssuer, JWKSFile: good, Audiences: []string{audience}}
		edit(&i)
		return []credential.Issuer{i}
	}
	const pre = `credential: JWT issuer "` + k8sIssuer + `": `
	tests := []struct {
		name string
		cfg  credential.JWTConfig
		err  string
	}{
		{"no trust domain", credential.JWTConfig{Issuers: iss(func(*credential.Issuer) {})},
			"credential: JWT verifier: a trust domain is required"},
		{"no issuers", credential.JWTConfig{TrustDomain: east},
			"credential: JWT verifier: no issuers; configure at least one"},
		{"negative leeway", credential.JWTConfig{TrustDomain: east, Issuers: iss(func(*credential.Issuer) {}), Leeway: -time.Second},
			"credential: JWT verifier: negative leeway -1s"},
		{"negative max token bytes", credential.JWTConfig{TrustDomain: east, Issuers: iss(func(*credential.Issuer) {}), MaxTokenBytes: -1},
			"credential: JWT verifier: negative MaxTokenBytes -1"},
		{"empty issuer", credential.JWTConfig{TrustDomain: east, Issuers: iss(func(i *credential.Issuer) { i.Issuer = "" })},
			`credential: JWT issuer "": the issuer (iss) is empty`},
		{"duplicate issuer", credential.JWTConfig{TrustDomain: east, Issuers: append(iss(func(*credential.Issuer) {}), iss(func(*credential.Issuer) {})...)},
			`credential: JWT issuer "` + k8sIssuer + `" is configured twice`},
		{"no audiences", credential.JWTConfig{TrustDomain: east, Issuers: iss(func(i *credential.Issuer) { i.Audiences = nil })},
			pre + "no audiences; a token for any audience would be accepted"},
		{"empty audience", credential.JWTConfig{TrustDomain: east, Issuers: iss(func(i *credential.Issuer) { i.Audiences = []string{""} })},
			pre + "an audience is empty"},
		{"file and URL", credential.JWTConfig{TrustDomain: east, Issuers: iss(func(i *credential.Issuer) { i.JWKSURL = "https://x/jwks" })},
			pre + "both a JWKS file and a JWKS URL; set one"},
		{"neither file nor URL", credential.JWTConfig{TrustDomain: east, Issuers: iss(func(i *credential.Issuer) { i.JWKSFile = "" })},
			pre + "no JWKS file or URL; set one"},
		{"http URL", credential.JWTConfig{TrustDomain: east, Issuers: iss(func(i *credential.Issuer) { i.JWKSFile, i.JWKSURL = "", "http://kubernetes/jwks" })},
			pre + "JWKS URL http://kubernetes/jwks: an https URL is required"},
		{"missing file", credential.JWTConfig{TrustDomain: east, Issuers: iss(func(i *credential.Issuer) { i.JWKSFile = dir + "/missing.json" })},
			pre + `credential: JWKS file of issuer "` + k8sIssuer + `": stat ` + dir + `/missing.json: no such file or directory`},
		{"oct key", credential.JWTConfig{TrustDomain: east, Issuers: iss(func(i *credential.Issuer) { i.JWKSFile = oct })},
			pre + `credential: JWKS file of issuer "` + k8sIssuer + `": ` + oct + `: JWKS key 1 (kid "hmac") is a symmetric (oct) key; a JWKS for JWT verification must hold public keys only`},
		{"private key", credential.JWTConfig{TrustDomain: east, Issuers: iss(func(i *credential.Issuer) { i.JWKSFile = private })},
			pre + `credential: JWKS file of issuer "` + k8sIssuer + `": ` + private + `: JWKS key 0 (kid "ec1") is a private key; publish only its public part`},
		{"RSA-1024", credential.JWTConfig{TrustDomain: east, Issuers: iss(func(i *credential.Issuer) { i.JWKSFile = rsa1024 })},
			pre + `credential: JWKS file of issuer "` + k8sIssuer + `": ` + rsa1024 + `: JWKS key 0 (kid "small"): RSA key of 1024 bits; use 2048 to 8192`},
		{"duplicate kid", credential.JWTConfig{TrustDomain: east, Issuers: iss(func(i *credential.Issuer) { i.JWKSFile = dupKID })},
			pre + `credential: JWKS file of issuer "` + k8sIssuer + `": ` + dupKID + `: JWKS has two signing keys with kid "k"`},
		{"no keys", credential.JWTConfig{TrustDomain: east, Issuers: iss(func(i *credential.Issuer) { i.JWKSFile = noKeys })},
			pre + `credential: JWKS file of issuer "` + k8sIssuer + `": ` + noKeys + `: JWKS has no key for verifying signatures`},
		{"encryption keys only", credential.JWTConfig{TrustDomain: east, Issuers: iss(func(i *credential.Issuer) { i.JWKSFile = encOnly })},
			pre + `credential: JWKS file of issuer "` + k8sIssuer + `": ` + encOnly + `: JWKS has no key for verifying signatures`},
		{"symmetric alg on a key", credential.JWTConfig{TrustDomain: east, Issuers: iss(func(i *credential.Issuer) { i.JWKSFile = badAlg })},
			pre + `credential: JWKS file of issuer "` + k8sIssuer + `": ` + badAlg + `: JWKS key 0 (kid "ec1"): alg "HS256" is not one of RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, ES512, EdDSA`},
		{"alg of another key type", credential.JWTConfig{TrustDomain: east, Issuers: iss(func(i *credential.Issuer) { i.JWKSFile = wrongAlg })},
			pre + `credential: JWKS file of issuer "` + k8sIssuer + `": ` + wrongAlg + `: JWKS key 0 (kid "ec1"): declares alg RS256, which its ECDSA P-256 key cannot verify`},
		{"alg of another curve", credential.JWTConfig{TrustDomain: east, Issuers: iss(func(i *credential.Issuer) { i.JWKSFile = wrongCurve })},
			pre + `credential: JWKS file of issuer "` + k8sIssuer + `": ` + wrongCurve + `: JWKS key 0 (kid "ec1"): declares alg ES256, which its ECDSA P-384 key cannot verify`},
		{"not JSON", credential.JWTConfig{TrustDomain: east, Issuers: iss(func(i *credential.Issuer) { i.JWKSFile = notJSON })},
			pre + `credential: JWKS file of issuer "` + k8sIssuer + `": ` + notJSON + `: JWKS is not a JSON object: invalid character '-' in numeric literal`},
		{"no keys array", credential.JWTConfig{TrustDomain: east, Issuers: iss(func(i *credential.Issuer) { i.JWKSFile = noKeysArray })},
			pre + `credential: JWKS file of issuer "` + k8sIssuer + `": ` + noKeysArray + `: JWKS has no "keys" array`},
		{"over the size bound", credential.JWTConfig{TrustDomain: east, Issuers: iss(func(i *credential.Issuer) { i.JWKSFile = huge })},
			pre + `credential: JWKS file of issuer "` + k8sIssuer + `": ` + huge + `: pemfile: input exceeds size limit of 1048576 bytes`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, err := credential.NewJWTVerifier(tt.cfg)
			if err == nil {
				t.Fatalf("NewJWTVerifier succeeded: %+v", v)
			}
			if err.Error() != tt.err {
				t.Errorf("error:\n got %s\nwant %s", err, tt.err)
			}
		})
	}
}

// TestJWKSFileReload checks a JWKS file is read again when it changes: a new
// key is accepted, a withdrawn one refused, and a bad replacement refuses
// every token (failing closed) until the file is good again.
func TestJWKSFileReload(t *testing.T) {
	path := tempPath(t, "jwks.json")
	writeJWKS(t, path, jwksJSON(t, pubJWK(rsaKey(), "rsa1", "RS256")), t0)
	v, err := credential.NewJWTVerifier(credential.JWTConfig{
		TrustDomain: east,
		Issuers:     []credential.Issuer{{Issuer: k8sIssuer, JWKSFile: path, Audiences: []string{audience}}},
		Clock:       newClock().Now,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	rsaTok := sign(t, rsaKey(), jose.RS256, "rsa1", claims())
	ecTok := sign(t, ecKey(), jose.ES256, "ec1", claims())
	verifies := func(tok string) {
		t.Helper()
		if _, err := v.Verify(ctx, tok); err != nil {
			t.Fatalf("Verify: %v", err)
		}
	}
	verifies(rsaTok)
	_, err = v.Verify(ctx, ecTok)
	credError(t, err, credential.KindKubernetesJWT, `credential: no key "ec1" from issuer "`+k8sIssuer+`"`)

	// Rotation: ec1 replaces rsa1.
	writeJWKS(t, path, jwksJSON(t, pubJWK(ecKey(), "ec1", "ES256")), t0.Add(time.Second))
	verifies(ecTok)
	_, err = v.Verify(ctx, rsaTok)
	credError(t, err, credential.KindKubernetesJWT, `credential: no key "rsa1" from issuer "`+k8sIssuer+`"`)

	// A bad replacement refuses every token, and says why.
	writeJWKS(t, path, []byte(`{"keys":[{"kty":"oct","kid":"ec1","k":"c2VjcmV0"}]}`), t0.Add(2*time.Second))
	_, err = v.Verify(ctx, ecTok)
	ce := credError(t, err, credential.KindKubernetesJWT, `credential: JWKS file of issuer "`+k8sIssuer+`": `+path+
		`: JWKS key 0 (kid "ec1") is a symmetric (oct) key; a JWKS for JWT verification must hold public keys only`)
	if !ce.Unavailable {
		t.Error("a bad JWKS file is not marked Unavailable")
	}

	// Fixed: tokens verify again.
	writeJWKS(t, path, jwksJSON(t, pubJWK(ecKey(), "ec1", "ES256")), t0.Add(3*time.Second))
	verifies(ecTok)

	// Removed: refused.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	_, err = v.Verify(ctx, ecTok)
	credError(t, err, credential.KindKubernetesJWT, `credential: JWKS file of issuer "`+k8sIssuer+`": stat `+path+`: no such file or directory`)
}

// jwksServer is an HTTPS JWKS endpoint that counts its requests.
type jwksServer struct {
	*httptest.Server
	requests atomic.Int64
	body     atomic.Pointer[[]byte]
	status   atomic.Int64
}

func newJWKSServer(t testing.TB, jwks []byte) *jwksServer {
	s := &jwksServer{}
	s.body.Store(&jwks)
	s.status.Store(http.StatusOK)
	s.Server = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.requests.Add(1)
		if r.URL.Path != "/openid/v1/jwks" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/jwk-set+json")
		w.WriteHeader(int(s.status.Load()))
		w.Write(*s.body.Load())
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *jwksServer) set(jwks []byte) { s.body.Store(&jwks) }

func newURLVerifier(t testing.TB, s *jwksServer, clk *clock) *credential.JWTVerifier {
	t.Helper()
	v, err := credential.NewJWTVerifier(credential.JWTConfig{
		TrustDomain: east,
		Issuers:     []credential.Issuer{{Issuer: k8sIssuer, JWKSURL: s.URL + "/openid/v1/jwks", Audiences: []string{audience}}},
		Clock:       clk.Now,
		HTTPClient:  s.Client(),
	})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestJWKSURL checks a JWKS URL is fetched on first use, cached, fetched
// again for an unknown kid at most once a minute however many arrive, and
// fetched again when older than its maximum age.
func TestJWKSURL(t *testing.T) {
	s := newJWKSServer(t, jwksJSON(t, pubJWK(rsaKey(), "rsa1", "RS256")))
	clk := newClock()
	v := newURLVerifier(t, s, clk)
	ctx := context.Background()
	rsaTok := sign(t, rsaKey(), jose.RS256, "rsa1", claims())
	ecTok := sign(t, ecKey(), jose.ES256, "ec1", claims())
	verifies := func(tok string) {
		t.Helper()
		if _, err := v.Verify(ctx, tok); err != nil {
			t.Fatalf("Verify: %v", err)
		}
	}
	requests := func(want int64) {
		t.Helper()
		if got := s.requests.Load(); got != want {
			t.Fatalf("%d requests to the JWKS endpoint; want %d", got, want)
		}
	}
	requests(0) // nothing is fetched before a token arrives
	verifies(rsaTok)
	requests(1)
	verifies(rsaTok)
	requests(1)

	// The issuer adds ec1. Within a minute of the last fetch its tokens are
	// refused without a fetch; after it, the first one fetches.
	s.set(jwksJSON(t, pubJWK(rsaKey(), "rsa1", "RS256"), pubJWK(ecKey(), "ec1", "ES256")))
	clk.Add(59 * time.Second)
	_, err := v.Verify(ctx, ecTok)
	credError(t, err, credential.KindKubernetesJWT, `credential: no key "ec1" from issuer "`+k8sIssuer+`"`)
	requests(1)
	clk.Add(time.Second)
	verifies(ecTok)
	requests(2)
	verifies(rsaTok)
	requests(2)

	// A flood of unknown kids, concurrently: at most one fetch a minute.
	flood := func() {
		t.Helper()
		var wg sync.WaitGroup
		for i := range 100 {
			wg.Go(func() {
				kid := fmt.Sprintf("unknown-%d", i)
				_, err := v.Verify(ctx, sign(t, ecKey2(), jose.ES256, kid, claims()))
				want := `credential: no key "` + kid + `" from issuer "` + k8sIssuer + `"`
				if err == nil || err.Error() != want {
					t.Errorf("Verify: %v; want %s", err, want)
				}
			})
		}
		wg.Wait()
	}
	flood()
	requests(2)
	clk.Add(30 * time.Second)
	flood()
	requests(2)
	clk.Add(30 * time.Second)
	flood()
	requests(3)
	verifies(rsaTok)
	verifies(ecTok)
	requests(3)

	// After the maximum age the keys are fetched again, so a key the issuer
	// withdraws stops being accepted.
	s.set(jwksJSON(t, pubJWK(ecKey(), "ec1", "ES256")))
	clk.Add(10 * time.Minute)
	verifies(ecTok)
	requests(4)
	_, err = v.Verify(ctx, rsaTok)
	credError(t, err, credential.KindKubernetesJWT, `credential: no key "rsa1" from issuer "`+k8sIssuer+`"`)
	requests(4)

	// When the issuer fails, the keys already fetched stay in use.
	s.status.Store(http.StatusInternalServerError)
	clk.Add(11 * time.Minute)
	verifies(ecTok)
	requests(5)
}

// TestJWKSURLUnavailable checks an issuer whose JWKS cannot be fetched
// makes its tokens fail as Unavailable, not as refused, and is not asked
// again within a minute.
func TestJWKSURLUnavailable(t *testing.T) {
	s := newJWKSServer(t, []byte("oops"))
	s.status.Store(http.StatusServiceUnavailable)
	clk := newClock()
	v := newURLVerifier(t, s, clk)
	ctx := context.Background()
	tok := sign(t, rsaKey(), jose.RS256, "rsa1", claims())
	url := s.URL + "/openid/v1/jwks"

	_, err := v.Verify(ctx, tok)
	ce := credError(t, err, credential.KindKubernetesJWT,
		`credential: issuer "`+k8sIssuer+`": fetching its JWKS: GET `+url+`: 503 Service Unavailable`)
	if !ce.Unavailable {
		t.Error("not marked Unavailable")
	}
	_, err = v.Verify(ctx, tok)
	credError(t, err, credential.KindKubernetesJWT,
		`credential: issuer "`+k8sIssuer+`": its JWKS was not fetched (the next try is at 2030-03-04T05:07:07Z): GET `+url+`: 503 Service Unavailable`)
	if got := s.requests.Load(); got != 1 {
		t.Errorf("%d requests; want 1", got)
	}

	// A symmetric key served by the URL is refused like one in a file.
	s.status.Store(http.StatusOK)
	s.set([]byte(`{"keys":[{"kty":"oct","kid":"rsa1","k":"c2VjcmV0"}]}`))
	clk.Add(time.Minute)
	_, err = v.Verify(ctx, tok)
	credError(t, err, credential.KindKubernetesJWT, `credential: issuer "`+k8sIssuer+`": fetching its JWKS: GET `+url+
		`: JWKS key 0 (kid "rsa1") is a symmetric (oct) key; a JWKS for JWT verification must hold public keys only`)

	// Oversized.
	big, _ := json.Marshal(map[string]any{"keys": []any{}, "pad": strings.Repeat("x", credential.MaxJWKSBytes)})
	s.set(big)
	clk.Add(time.Minute)
	_, err = v.Verify(ctx, tok)
	credError(t, err, credential.KindKubernetesJWT, `credential: issuer "`+k8sIssuer+`": fetching its JWKS: GET `+url+
		`: pemfile: input exceeds size limit of 1048576 bytes`)

	// Good again.
	s.set(standardJWKS(t))
	clk.Add(time.Minute)
	if _, err := v.Verify(ctx, tok); err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if got := s.requests.Load(); got != 4 {
		t.Errorf("%d requests; want 4", got)
	}
}

// TestJWKSURLCancelled checks a cancelled request is Unavailable.
func TestJWKSURLCancelled(t *testing.T) {
	s := newJWKSServer(t, standardJWKS(t))
	v := newURLVerifier(t, s, newClock())
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := v.Verify(ctx, sign(t, rsaKey(), jose.RS256, "rsa1", claims()))
	ce := credError(t, err, credential.KindKubernetesJWT, `credential: issuer "`+k8sIssuer+`": waiting for its JWKS: context canceled`)
	if !ce.Unavailable {
		t.Error("not marked Unavailable")
	}
}

// TestJWKSURLCallerGivesUp checks a caller that cancels during a fetch does
// not spend the issuer's fetch for the next minute: otherwise a caller could
// keep an issuer's keys from ever being fetched by hanging up.
func TestJWKSURLCallerGivesUp(t *testing.T) {
	var requests atomic.Int64
	arrived := make(chan struct{})
	jwks := standardJWKS(t)
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if requests.Add(1) == 1 {
			close(arrived)
			<-r.Context().Done()        // hang until the client gives up
			panic(http.ErrAbortHandler) // and never answer: an empty 200 could reach a client still reading
		}
		w.Write(jwks)
	}))
	t.Cleanup(srv.Close)
	v, err := credential.NewJWTVerifier(credential.JWTConfig{
		TrustDomain: east,
		Issuers:     []credential.Issuer{{Issuer: k8sIssuer, JWKSURL: srv.URL + "/jwks", Audiences: []string{audience}}},
		Clock:       newClock().Now,
		HTTPClient:  srv.Client(),
	})
	if err != nil {
		t.Fatal(err)
	}
	tok := sign(t, rsaKey(), jose.RS256, "rsa1", claims())
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		<-arrived
		cancel()
	}()
	_, err = v.Verify(ctx, tok)
	ce := credError(t, err, credential.KindKubernetesJWT, `credential: issuer "`+k8sIssuer+`": fetching its JWKS: context canceled`)
	if !ce.Unavailable {
		t.Error("not marked Unavailable")
	}
	if _, err := v.Verify(context.Background(), tok); err != nil {
		t.Fatalf("Verify after a caller gave up: %v", err)
	}
	if got := requests.Load(); got != 2 {
		t.Errorf("%d requests; want 2", got)
	}
}

// TestJWKSURLStaleKeysDoNotWait checks that while one caller refreshes keys
// past their maximum age from a slow issuer, others go on verifying with the
// keys already fetched instead of queueing behind the fetch.
func TestJWKSURLStaleKeysDoNotWait(t *testing.T) {
	var requests atomic.Int64
	arrived, release := make(chan struct{}), make(chan struct{})
	jwks := standardJWKS(t)
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if requests.Add(1) == 2 {
			close(arrived)
			<-release
		}
		w.Write(jwks)
	}))
	t.Cleanup(srv.Close)
	clk := newClock()
	v, err := credential.NewJWTVerifier(credential.JWTConfig{
		TrustDomain: east,
		Issuers:     []credential.Issuer{{Issuer: k8sIssuer, JWKSURL: srv.URL + "/jwks", Audiences: []string{audience}}},
		Clock:       clk.Now,
		HTTPClient:  srv.Client(),
	})
	if err != nil {
		t.Fatal(err)
	}
	tok := sign(t, rsaKey(), jose.RS256, "rsa1", claims())
	ctx := context.Background()
	if _, err := v.Verify(ctx, tok); err != nil {
		t.Fatal(err)
	}
	clk.Add(11 * time.Minute)
	refreshed := make(chan error, 1)
	go func() {
		_, err := v.Verify(ctx, tok)
		refreshed <- err
	}()
	<-arrived
	done := make(chan error, 1)
	go func() {
		_, err := v.Verify(ctx, tok)
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Verify during a refresh: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Error("Verify waited for another caller's refresh")
	}
	close(release)
	if err := <-refreshed; err != nil {
		t.Errorf("Verify that refreshed: %v", err)
	}
	if got := requests.Load(); got != 2 {
		t.Errorf("%d requests; want 2", got)
	}
}
