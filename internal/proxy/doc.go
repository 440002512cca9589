// Package proxy is `meshfed proxy`, the policy enforcement point of the
// mesh: a TCP sidecar (Sidecar: inbound listeners that terminate mTLS, or
// plaintext as PeerAuthentication allows, and forward to the local app;
// outbound listeners that take plaintext from the app and open mTLS to an
// upstream with Istio's secure naming check), and its TLS core: the mTLS
// configurations of both sides, the permissive-mode sniffer that tells a TLS
// ClientHello from plaintext, and the X-Forwarded-Client-Cert header in
// Envoy's format. HTTP-level policy and gateways are not built yet.
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
