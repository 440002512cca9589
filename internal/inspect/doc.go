// Package inspect tells an operator what a certificate chain, a trust bundle
// or a TLS endpoint says about SPIFFE identity: each certificate's SPIFFE ID
// and trust domain, its name constraints and validity, whether it conforms to
// the X.509-SVID specification (naming the rule it breaks), and - when given
// a bundle or root - whether the chain verifies, with one clear verdict.
//
// It is the reading half of openssl x509 -text, openssl s_client -showcerts
// and a SPIFFE bundle endpoint client, with SPIFFE's nouns. Descriptions are
// plain structs with JSON tags, so the command line can print them as text,
// JSON or YAML; the text form is written by the WriteText methods.
//
// Connecting never verifies during the handshake: the peer's chain is
// recorded as sent, and verification is a separate, explicit step against a
// bundle of the peer's own trust domain. Time is always an argument, so a
// chain can be judged at any instant.
//
// The package never prints, logs or returns key material: it describes
// public keys by algorithm and size only, and a client private key it loads
// is used for the handshake and nothing else.
package inspect
