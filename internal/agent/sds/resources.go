package sds

import (
	"cmp"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"log/slog"
	"slices"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/meshfed/meshfed/internal/agent/attest"
	"github.com/meshfed/meshfed/internal/agent/workloadapi"
	"github.com/meshfed/meshfed/internal/pemfile"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

const (
	// wildcard subscribes to every resource the caller may have.
	wildcard = "*"
	// spiffeValidator is the name of Envoy's SPIFFE certificate validator
	// extension.
	spiffeValidator = "envoy.tls.cert_validator.spiffe"
)

// secretTypeURL is the type of every resource this service sends.
var secretTypeURL = "type.googleapis.com/" + string((&tlsv3.Secret{}).ProtoReflect().Descriptor().FullName())

// deterministic marshals the same message to the same bytes, so that
// digests of equal content are equal.
var deterministic = proto.MarshalOptions{Deterministic: true}

// resource is one secret as it is sent.
type resource struct {
	name string
	// version is a digest of the secret's public content: never of a key.
	version string
	secret  *anypb.Any // a tlsv3.Secret named name
}

// view is what one caller may be sent at one moment. Resources are built
// when first asked for.
type view struct {
	names aliases
	// ids are the caller's unexpired SVIDs, the default first. When there
	// are none the caller is sent nothing at all.
	ids []workloadapi.Identity
	// local is this trust domain's bundle, nil while the agent has none.
	local *x509bundle.Bundle
	// federated are the bundles of the foreign trust domains the caller's
	// entries federate with, sorted by trust domain.
	federated []*x509bundle.Bundle
	// expiry is the earliest expiry among ids; zero if there are none.
	expiry time.Time

	log   *slog.Logger
	built map[string]*resource
}

// view reads what the caller with selectors sel may be sent now.
func (s *Server) view(sel []attest.Selector, log *slog.Logger) *view {
	now := s.clock()
	v := &view{names: s.names, log: log, built: map[string]*resource{}}
	var federates []spiffeid.TrustDomain
	for _, id := range s.src.X509SVIDs(sel) {
		svid := id.SVID
		if svid == nil || len(svid.Certificates) == 0 || svid.PrivateKey == nil {
			log.Error("the agent's source returned an incomplete SVID; skipped")
			continue
		}
		notAfter := svid.Certificates[0].NotAfter
		if now.After(notAfter) {
			continue
		}
		if v.expiry.IsZero() || notAfter.Before(v.expiry) {
			v.expiry = notAfter
		}
		v.ids = append(v.ids, id)
		federates = append(federates, id.FederatesWith...)
	}
	if len(v.ids) == 0 {
		return v
	}
	local, federated := s.src.Bundles()
	if local != nil && !local.Empty() {
		v.local = local
	}
	for _, b := range federated {
		td := b.TrustDomain()
		if b.Empty() || (local != nil && td == local.TrustDomain()) || !slices.Contains(federates, td) ||
			slices.ContainsFunc(v.federated, func(o *x509bundle.Bundle) bool { return o.TrustDomain() == td }) {
			continue
		}
		v.federated = append(v.federated, b)
	}
	slices.SortFunc(v.federated, func(a, b *x509bundle.Bundle) int {
		return cmp.Compare(a.TrustDomain().Name(), b.TrustDomain().Name())
	})
	return v
}

// get returns the resource called name, or nil if the caller may have no
// such resource.
func (v *view) get(name string) *resource {
	if r, ok := v.built[name]; ok {
		return r
	}
	r := v.build(name)
	v.built[name] = r
	return r
}

func (v *view) build(name string) *resource {
	if len(v.ids) == 0 {
		return nil
	}
	switch name {
	case v.names.svid:
		return v.certificate(name, v.ids[0].SVID)
	case v.names.bundle:
		if v.local == nil {
			return nil
		}
		return v.trustedCA(name, v.local)
	case v.names.all:
		if v.local == nil {
			// Without this domain's roots the validator would refuse every
			// peer of it; Envoy had better wait.
			return nil
		}
		return v.spiffeValidator(name)
	}
	id, err := spiffeid.FromString(name)
	if err != nil || id.String() != name {
		return nil
	}
	if id.Path() == "" {
		if b := v.bundle(id.TrustDomain()); b != nil {
			return v.trustedCA(name, b)
		}
		return nil
	}
	for _, ident := range v.ids {
		if ident.SVID.ID == id {
			return v.certificate(name, ident.SVID)
		}
	}
	return nil
}

// bundle returns the bundle of td if the caller may have it.
func (v *view) bundle(td spiffeid.TrustDomain) *x509bundle.Bundle {
	if v.local != nil && v.local.TrustDomain() == td {
		return v.local
	}
	for _, b := range v.federated {
		if b.TrustDomain() == td {
			return b
		}
	}
	return nil
}

// wildcardNames are the names a wildcard subscription gets: each SVID
// under its SPIFFE ID and each bundle under its trust domain ID.
func (v *view) wildcardNames() []string {
	if len(v.ids) == 0 {
		return nil
	}
	var names []string
	for _, id := range v.ids {
		names = append(names, id.SVID.ID.String())
	}
	if v.local != nil {
		names = append(names, v.local.TrustDomain().IDString())
	}
	for _, b := range v.federated {
		names = append(names, b.TrustDomain().IDString())
	}
	return names
}

// certificate is svid as a TlsCertificate: the chain and the PKCS#8 key,
// both PEM, inline.
func (v *view) certificate(name string, svid *x509svid.SVID) *resource {
	tc := &tlsv3.TlsCertificate{CertificateChain: inline(pemfile.EncodeCertificates(svid.Certificates...))}
	secret := &tlsv3.Secret{Name: name, Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: tc}}
	// The version is taken before the key is added: the certificate names
	// the key's public half, and no digest of a private key ever leaves.
	version, err := messageDigest(secret)
	if err != nil {
		v.log.Error("an SVID could not be encoded; not sending it", "spiffe_id", svid.ID.String(), "error", err)
		return nil
	}
	key, err := pemfile.EncodePrivateKey(svid.PrivateKey)
	if err != nil {
		v.log.Error("an SVID's key could not be encoded; not sending it", "spiffe_id", svid.ID.String(), "error", err)
		return nil
	}
	tc.PrivateKey = inline(key)
	return v.pack(name, version, secret)
}

// trustedCA is a validation context holding b's roots, and only b's.
func (v *view) trustedCA(name string, b *x509bundle.Bundle) *resource {
	return v.validationContext(name, &tlsv3.CertificateValidationContext{
		TrustedCa: inline(pemfile.EncodeCertificates(b.X509Authorities()...)),
	})
}

// spiffeValidator is a validation context for Envoy's SPIFFE validator with
// one trust bundle per trust domain the caller may verify peers of, sorted
// by name: Envoy checks each peer against its own domain's bundle only.
func (v *view) spiffeValidator(name string) *resource {
	bundles := append([]*x509bundle.Bundle{v.local}, v.federated...)
	slices.SortFunc(bundles, func(a, b *x509bundle.Bundle) int {
		return cmp.Compare(a.TrustDomain().Name(), b.TrustDomain().Name())
	})
	cfg := &tlsv3.SPIFFECertValidatorConfig{}
	for _, b := range bundles {
		cfg.TrustDomains = append(cfg.TrustDomains, &tlsv3.SPIFFECertValidatorConfig_TrustDomain{
			Name:        b.TrustDomain().Name(),
			TrustBundle: inline(pemfile.EncodeCertificates(b.X509Authorities()...)),
		})
	}
	typed := &anypb.Any{}
	if err := anypb.MarshalFrom(typed, cfg, deterministic); err != nil {
		v.log.Error("the SPIFFE validator config could not be encoded; not sending it", "resource", name, "error", err)
		return nil
	}
	return v.validationContext(name, &tlsv3.CertificateValidationContext{
		CustomValidatorConfig: &corev3.TypedExtensionConfig{Name: spiffeValidator, TypedConfig: typed},
	})
}

func (v *view) validationContext(name string, vc *tlsv3.CertificateValidationContext) *resource {
	secret := &tlsv3.Secret{Name: name, Type: &tlsv3.Secret_ValidationContext{ValidationContext: vc}}
	version, err := messageDigest(secret)
	if err != nil {
		v.log.Error("a validation context could not be encoded; not sending it", "resource", name, "error", err)
		return nil
	}
	return v.pack(name, version, secret)
}

func (v *view) pack(name, version string, secret *tlsv3.Secret) *resource {
	a := &anypb.Any{}
	if err := anypb.MarshalFrom(a, secret, deterministic); err != nil {
		v.log.Error("a secret could not be encoded; not sending it", "resource", name, "error", err)
		return nil
	}
	return &resource{name: name, version: version, secret: a}
}

func inline(b []byte) *corev3.DataSource {
	return &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: b}}
}

// subscription is what a stream asked for.
type subscription struct {
	names map[string]bool
	// wildcard is set by "*", or by a first request naming nothing (xDS's
	// legacy wildcard, which lasts while the client keeps naming nothing).
	wildcard, legacy bool
}

// resolve returns the resources of sub that the caller may have, sorted by
// name, and the names it asked for that it may not have.
func (sub *subscription) resolve(v *view) (rs []*resource, missing []string) {
	names := make([]string, 0, len(sub.names))
	for n := range sub.names {
		names = append(names, n)
	}
	if sub.wildcard {
		for _, n := range v.wildcardNames() {
			if !sub.names[n] {
				names = append(names, n)
			}
		}
	}
	slices.Sort(names)
	for _, n := range names {
		if r := v.get(n); r != nil {
			rs = append(rs, r)
		} else {
			missing = append(missing, n)
		}
	}
	return rs, missing
}

// setVersion is the version of a set of resources.
func setVersion(rs []*resource) string {
	parts := make([][]byte, 0, 2*len(rs))
	for _, r := range rs {
		parts = append(parts, []byte(r.name), []byte(r.version))
	}
	return digest(parts...)
}

func resourceNames(rs []*resource) []string {
	out := make([]string, len(rs))
	for i, r := range rs {
		out[i] = r.name
	}
	return out
}

func messageDigest(m proto.Message) (string, error) {
	b, err := deterministic.Marshal(m)
	if err != nil {
		return "", err
	}
	return digest(b), nil
}

// digest is the first 64 bits of the SHA-256 of the length-prefixed parts,
// in hex: a version string that is equal exactly when the content is.
func digest(parts ...[]byte) string {
	h := sha256.New()
	var n [8]byte
	for _, p := range parts {
		binary.BigEndian.PutUint64(n[:], uint64(len(p)))
		h.Write(n[:])
		h.Write(p)
	}
	return hex.EncodeToString(h.Sum(nil)[:8])
}
