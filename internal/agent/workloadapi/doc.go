// Package workloadapi serves the SPIFFE Workload API (the X.509-SVID and
// JWT-SVID profiles) on the agent's unix socket, with go-spiffe's generated
// stubs, to the workloads of this host.
//
// The socket is reachable by every local user: its file is 0777 in a
// directory created 0755, because workloads run under many uids. Reaching it
// proves nothing. Every call must carry the spec's security header
// (workload.spiffe.io: true, else InvalidArgument), and the caller is then
// identified by the kernel (SO_PEERCRED and /proc, package attest), never by
// anything it sends; it receives only the SVIDs of the registration entries
// whose selectors it has all of, and PermissionDenied when there are none.
//
// What a caller gets: each of its current SVIDs with its private key and the
// bundle of the SVID's trust domain, and the bundles of exactly the foreign
// trust domains its entries federate with. A stream is resent when the
// Source says something changed (and the response did change) and when one
// of the SVIDs sent reaches its expiry, so an expired SVID is never sent and
// is withdrawn from open streams.
//
// JWT-SVIDs: FetchJWTSVID returns one for the requested audience (1 to 16
// values, else InvalidArgument) per entry of the caller, or only for the
// entry of the spiffe_id asked for, and PermissionDenied when there is none.
// FetchJWTBundles streams the JWK Sets of this trust domain and of the
// domains the caller's entries federate with. ValidateJWTSVID validates a
// token with those same bundles and answers its SPIFFE ID and claims, or
// InvalidArgument with the reason: a token of the form agents and SPIRE
// issue in one pass of its own (quickValidate, which may only accept what
// go-spiffe's jwtsvid accepts), any other, and every refusal, with
// go-spiffe's jwtsvid, whose reasons are the answer. A token verified before
// may be answered from a bounded cache (Config.JWTCacheSize) without
// checking its signature again, but only while the key that verified it is
// the one this caller's bundles hold and the Source has not changed; its
// audience, exp, nbf and iat are checked on every call. The cache keeps
// digests, never tokens, and never a failure.
//
// Beside the Workload API, the same socket serves meshfed's own
// meshfed.agent.v1.PolicyDiscovery when the Config has a PolicySource: the
// Istio security policy the trust domain's server pushes, streamed to
// proxies as a snapshot and again after every change. Its calls need the
// same security header and are attested the same way (Unauthenticated when
// the caller cannot be identified); policy is not secret, so any identified
// caller may read it, entries or not.
//
// The package never sends a private key anywhere but to the workload it
// belongs to over this socket, and never logs one.
package workloadapi
