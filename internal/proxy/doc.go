// Package proxy is `meshfed proxy`, the policy enforcement point of the
// mesh: a sidecar (Sidecar: inbound listeners that terminate mTLS, or
// plaintext as PeerAuthentication allows, enforce AuthorizationPolicy per
// connection on TCP ports and RequestAuthentication plus AuthorizationPolicy
// per request on HTTP ports, and forward to the local app with
// X-Forwarded-Client-Cert; outbound listeners that take plaintext from the
// app and open mTLS to an upstream with Istio's secure naming check), its
// policy loading (PolicyLoader: a directory re-read on change and the
// server's pushed documents, a bad set refused while the last good one
// stays), gateways with file certificates, and its TLS core: the mTLS
// configurations of both sides, the permissive-mode sniffer that tells a TLS
// ClientHello from plaintext, and the X-Forwarded-Client-Cert header in
// Envoy's format.
//
// Certificates and trust bundles are read from a Source (go-spiffe's
// workloadapi.X509Source satisfies it) on every handshake, so a rotation
// takes effect on the next handshake without dropping open connections. The
// peer is verified on every handshake, resumed sessions included, against
// the bundle of the peer's own trust domain only, with pki.VerifyX509SVID.
// A kept-alive HTTP connection carries requests only while that proof
// holds (peerauth.go): the peer's chain unexpired and still verifying
// against its trust domain's present bundle; and any open connection whose
// peer no longer verifies is closed within a second (revoke.go).
//
// A sidecar listener never accepts an mTLS peer without an X.509-SVID
// verified against its own trust domain's bundle and never pools the roots
// of several trust domains; a gateway verifies plain X.509 certificates
// against the CA file it is given. The package never logs or returns key
// material or tokens.
package proxy
