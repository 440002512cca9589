// Package policy reads Istio's security policy - PeerAuthentication,
// RequestAuthentication and AuthorizationPolicy, as users kubectl-apply them -
// and evaluates it offline with Istio's semantics: which mTLS mode a workload's
// port runs in and which policy set it, whether a request's JWT authenticates,
// and whether a request is allowed, by which policy and rule.
//
// Every input is untrusted: files, documents and tokens have documented size
// bounds, and a bad document is refused with its file and line. Evaluation
// never touches the network: the key sets of jwksUri rules come from the
// JWKSFetcher the caller provides (JWKSCache, the one HTTP client here, is
// what a running proxy provides). No token ever appears in an error.
package policy
