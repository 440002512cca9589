package server

// JWT-SVIDs. Each server signs with a JWT key of its own (ECDSA P-256,
// ES256), made on first start and kept in <data_dir>/jwt/jwt.key (0600).
// Its key ID is the key's RFC 7638 thumbprint. The server records the public
// key in the store, so every server of the trust domain publishes every
// server's key in the bundle ("use": "jwt-svid") and a JWT-SVID from any of
// them validates everywhere. A key does not expire with the CA: it is
// published until ca.root_ttl after it was first published, and no token
// outlives it.

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	pb "github.com/meshfed/meshfed/internal/api/serverv1"
	"github.com/meshfed/meshfed/internal/credential"
	"github.com/meshfed/meshfed/internal/pemfile"
	"github.com/meshfed/meshfed/internal/pki"
	"github.com/meshfed/meshfed/internal/store"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Bounds of a JWT-SVID request.
const (
	// DefaultJWTSVIDTTL is a JWT-SVID's lifetime unless the caller asks for
	// another; svid.max_ttl bounds what it may ask for. JWT-SVIDs are bearer
	// tokens, so the default is short.
	DefaultJWTSVIDTTL = 5 * time.Minute
	// MaxJWTAudiences bounds the aud claim. The JWT-SVID specification
	// recommends one value: every audience can replay the token to the others.
	MaxJWTAudiences = 16
	// MaxJWTAudienceBytes bounds one audience: a SPIFFE ID's 2048 bytes.
	MaxJWTAudienceBytes = 2048
)

// jwtKeyFile is the JWT signing key, relative to data_dir.
var jwtKeyFile = filepath.Join("jwt", "jwt.key")

// jwtSigningKey is the key this server signs JWT-SVIDs with.
type jwtSigningKey struct {
	signer   jose.Signer
	public   crypto.PublicKey
	id       string    // the kid header
	notAfter time.Time // as published in the store
}

// loadJWTKey reads the server's JWT key, or makes and saves one on first
// start, and publishes its public key in the store.
func (s *Server) loadJWTKey(ctx context.Context) error {
	path := filepath.Join(s.set.dataDir, jwtKeyFile)
	key, err := readOrCreateJWTKey(path)
	if err != nil {
		return err
	}
	thumb, err := (&jose.JSONWebKey{Key: key.Public()}).Thumbprint(crypto.SHA256)
	if err != nil {
		return fmt.Errorf("server: JWT key %s: %w", path, err)
	}
	k := &jwtSigningKey{public: key.Public(), id: base64.RawURLEncoding.EncodeToString(thumb)}
	der, err := x509.MarshalPKIXPublicKey(k.public)
	if err != nil {
		return fmt.Errorf("server: JWT key %s: %w", path, err)
	}
	// A key already published keeps the expiry it was first published with.
	if err := s.store.AddJWTAuthority(ctx, store.JWTAuthority{
		KeyID: k.id, PublicKeyDER: der, NotAfter: s.clock().Add(s.set.rootTTL), ServerID: s.set.serverID,
	}); err != nil {
		return err
	}
	auths, err := s.store.LocalAuthorities(ctx)
	if err != nil {
		return err
	}
	for _, a := range auths.JWT {
		if a.KeyID == k.id {
			k.notAfter = a.NotAfter
		}
	}
	if !s.clock().Before(k.notAfter) {
		return fmt.Errorf("server: the JWT key %s expired at %s; move it away and restart to make a new one",
			path, k.notAfter.UTC().Format(time.RFC3339))
	}
	opts := (&jose.SignerOptions{}).WithType("JWT")
	if k.signer, err = jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: key, KeyID: k.id}}, opts); err != nil {
		return fmt.Errorf("server: JWT key %s: %w", path, err)
	}
	s.jwtKey = k
	s.log.Info("JWT-SVID signing key ready", "kid", k.id, "not_after", k.notAfter.UTC().Format(time.RFC3339))
	return nil
}

// readOrCreateJWTKey reads an ECDSA P-256 key from path, or makes one there
// (0600, in a directory made 0700) when there is none.
func readOrCreateJWTKey(path string) (*ecdsa.PrivateKey, error) {
	if _, err := os.Stat(path); err == nil {
		signer, err := pemfile.ReadPrivateKey(path)
		if err != nil {
			return nil, fmt.Errorf("server: JWT key: %w", err)
		}
		key, ok := signer.(*ecdsa.PrivateKey)
		if !ok || key.Curve != elliptic.P256() {
			return nil, fmt.Errorf("server: JWT key %s is not an ECDSA P-256 key (ES256)", path)
		}
		return key, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("server: JWT key: %w", err)
	}
	signer, err := pki.GenerateKey(pki.ECP256)
	if err != nil {
		return nil, fmt.Errorf("server: JWT key: %w", err)
	}
	data, err := pemfile.EncodePrivateKey(signer)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("server: JWT key: %w", err)
	}
	if err := pemfile.WriteFile(path, data, pemfile.ModeKey); err != nil {
		return nil, fmt.Errorf("server: JWT key: %w", err)
	}
	return signer.(*ecdsa.PrivateKey), nil
}

func (n *nodeService) SignJWTSVID(ctx context.Context, req *pb.SignJWTSVIDRequest) (*pb.JWTSVID, error) {
	s := n.s
	call, err := s.nodeCaller(ctx, true)
	if err != nil {
		return nil, err
	}
	node := call.ident
	if err := checkJWTAudience(req.GetAudience()); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	ident, _, err := s.entryIdentity(ctx, node, req.GetEntryId())
	if err != nil {
		return nil, err
	}
	return s.signJWTSVID(ctx, ident, req.GetAudience(), time.Duration(req.GetTtlSeconds())*time.Second)
}

// checkJWTAudience applies the bounds of an aud claim.
func checkJWTAudience(aud []string) error {
	if len(aud) == 0 || len(aud) > MaxJWTAudiences {
		return fmt.Errorf("server: a JWT-SVID needs 1 to %d audiences, not %d", MaxJWTAudiences, len(aud))
	}
	for i, a := range aud {
		if a == "" || len(a) > MaxJWTAudienceBytes {
			return fmt.Errorf("server: audience %d is empty or longer than %d bytes", i+1, MaxJWTAudienceBytes)
		}
	}
	return nil
}

// signJWTSVID signs a JWT-SVID for the identity ident was verified to hold,
// checks it, and writes its audit row before returning it. Its claims are
// sub, aud, exp, iat and jti: a 128-bit ID laid out as a certificate serial
// (pki.NewSerial: time, then 80 random bits), in hex, that is also the
// audit row's serial (JWTs have none); the row's credential kind is the
// caller's, and its caller ends in " jwt-svid". The returned error is a gRPC
// status.
func (s *Server) signJWTSVID(ctx context.Context, ident credential.Identity, aud []string, ttl time.Duration) (*pb.JWTSVID, error) {
	start := time.Now()
	kind := string(ident.Kind)
	k := s.jwtKey
	switch {
	case ttl <= 0:
		ttl = DefaultJWTSVIDTTL
	case ttl > s.set.maxTTL:
		ttl = s.set.maxTTL
	}
	now := s.clock()
	if !now.Before(k.notAfter) {
		s.metrics.observeIssue(kind, "error", start)
		return nil, status.Errorf(codes.FailedPrecondition, "server: this server's JWT key expired at %s; it signs no more JWT-SVIDs until it is replaced",
			k.notAfter.UTC().Format(time.RFC3339))
	}
	exp := now.Add(ttl)
	if exp.After(k.notAfter) {
		exp = k.notAfter
	}
	jti, err := pki.NewSerial(now)
	if err != nil {
		s.metrics.observeIssue(kind, "error", start)
		return nil, status.Errorf(codes.Internal, "server: jti: %v", err)
	}
	claims := jwt.Claims{
		Subject: ident.ID.String(), Audience: jwt.Audience(aud), ID: fmt.Sprintf("%x", jti),
		Expiry: jwt.NewNumericDate(exp), IssuedAt: jwt.NewNumericDate(now),
	}
	token, err := jwt.Signed(k.signer).Claims(claims).Serialize()
	if err == nil {
		err = checkJWTSVID(token, k, ident.ID, aud, now)
	}
	if err != nil {
		s.metrics.observeIssue(kind, "error", start)
		s.log.Error("signing a JWT-SVID failed", "identity", ident.ID.String(), "error", err)
		return nil, status.Error(codes.Internal, "server: the JWT-SVID could not be signed")
	}
	storeStart := time.Now()
	err = s.store.RecordIssued(ctx, store.Issued{
		Serial: claims.ID, SPIFFEID: ident.ID.String(), CredentialKind: kind,
		Caller: ident.Caller + " jwt-svid", ServerID: s.set.serverID, IssuedAt: now, NotAfter: exp,
	})
	s.metrics.observeStore("record_issued", storeStart)
	if err != nil {
		s.metrics.observeIssue(kind, "error", start)
		s.log.Error("recording the issued JWT-SVID failed; not returning it", "identity", ident.ID.String(), "error", err)
		return nil, status.Error(codes.Unavailable, "server: the audit log is unavailable; retry")
	}
	s.metrics.observeIssue(kind, "ok", start)
	if s.log.Enabled(ctx, slog.LevelDebug) {
		s.log.Debug("issued JWT-SVID", "spiffe_id", ident.ID.String(), "credential", kind, "caller", ident.Caller,
			"jti", claims.ID, "audience", aud, "not_after", exp.UTC().Format(time.RFC3339))
	}
	return &pb.JWTSVID{SpiffeId: ident.ID.String(), Token: token, ExpiresAt: exp.Unix()}, nil
}

// checkJWTSVID parses a token just signed back and checks it as a validator
// would: the header (ES256, this key's kid, typ JWT), the signature, and the
// claims.
func checkJWTSVID(token string, k *jwtSigningKey, id spiffeid.ID, aud []string, now time.Time) error {
	tok, err := jwt.ParseSigned(token, []jose.SignatureAlgorithm{jose.ES256})
	if err != nil {
		return err
	}
	if h := tok.Headers[0]; h.KeyID != k.id || h.ExtraHeaders[jose.HeaderType] != "JWT" {
		return fmt.Errorf("header kid %q typ %v, want %q and JWT", h.KeyID, h.ExtraHeaders[jose.HeaderType], k.id)
	}
	var c jwt.Claims
	if err := tok.Claims(k.public, &c); err != nil {
		return err
	}
	if !slices.Equal(c.Audience, aud) {
		return fmt.Errorf("aud %q, want %q", c.Audience, aud)
	}
	return c.ValidateWithLeeway(jwt.Expected{Subject: id.String(), Time: now}, 0)
}
