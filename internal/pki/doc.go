// Package pki is meshfed's certificate core: it makes roots, name-constrained
// intermediates for a trust domain, X.509-SVIDs and plain TLS leaves, and
// checks certificates against the SPIFFE X.509-SVID specification.
//
// A CA signs through a crypto.Signer it does not own, so the key can live in
// a file, a KMS or an HSM. Identity is always an argument from the caller,
// which derived it from a verified credential: the names inside a CSR are
// never copied into a certificate, and a CSR that asks for another SPIFFE ID
// is refused. Every certificate the package signs is parsed back and verified
// (chain, validity, the SVID rules, URI name constraints with RFC 5280
// semantics) before it is returned; a certificate that fails is never
// returned.
//
// The package never writes files, never logs, and never puts key material in
// an error.
package pki
