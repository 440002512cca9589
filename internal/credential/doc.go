// Package credential verifies the credentials a caller presents to the
// meshfed server before anything is signed, and derives the caller's
// identity from them:
//
//   - a Kubernetes-style service-account JWT from a configured issuer
//     (JWTVerifier), which grants spiffe://<td>/ns/<namespace>/sa/<name>;
//   - a one-time join token (JoinTokenVerifier), which grants the SPIFFE ID
//     it was created for, once;
//   - an unexpired X.509-SVID of this trust domain presented over mTLS
//     (SVIDVerifier), which grants renewal of that same SPIFFE ID.
//
// The identity always comes from the verified credential, never from the
// request it arrived with: the server passes Identity.ID to the CA, which
// refuses a CSR that asks for anything else.
//
// Every refusal is an *Error whose message is safe to send back to the
// caller and to log. The package never logs, and never puts a token, a JWT,
// a join token or a key into an error, an Identity or anything else it
// returns; a join token is named only by the first hex digits of its
// SHA-256 hash. Every untrusted input has a documented size bound: a JWT
// (DefaultMaxTokenBytes), a JWKS (MaxJWKSBytes), a join token (exactly 43
// characters) and an SVID chain (MaxSVIDChain).
package credential
