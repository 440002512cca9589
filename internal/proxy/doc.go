// Package proxy is the TLS core of `meshfed proxy`, the policy enforcement
// point of the mesh: the mTLS configurations of its inbound and outbound
// sides, Istio's secure naming check, the permissive-mode sniffer that tells
// a TLS ClientHello from plaintext, and the X-Forwarded-Client-Cert header in
// Envoy's format.
//
// Certificates and trust bundles are read from a Source (go-spiffe's
// workloadapi.X509Source satisfies it) on every handshake, so a rotation
// takes effect on the next handshake without dropping open connections. The
// peer is verified on every handshake, resumed sessions included, against
// the bundle of the peer's own trust domain only, with pki.VerifyX509SVID.
//
// The package never accepts a peer without a verified X.509-SVID, never
// pools the roots of several trust domains, and never logs or returns key
// material.
package proxy
