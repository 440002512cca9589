// Package sds serves Envoy's Secret Discovery Service
// (envoy.service.secret.v3.SecretDiscoveryService: StreamSecrets,
// DeltaSecrets, FetchSecrets) from the agent, on its own unix socket, so that
// an Envoy on this host gets its workload's certificate and the trust
// bundles to verify peers with, and gets new ones pushed when they rotate.
//
// # Who may call
//
// The socket is 0777 in a directory created 0755, as the Workload API's is:
// reaching it proves nothing. Each stream or call is attested once, by the
// kernel (SO_PEERCRED and /proc, package attest); a caller that cannot be
// attested gets Unauthenticated. It is then served only what the
// registration entries matching its selectors entitle it to. The Workload
// API's security header is not required: Envoy does not send it.
//
// # Resources
//
// Resource names follow SPIRE's agent, so Envoy configurations written for
// SPIRE (and Istio's names) work unchanged:
//
//	default                  the caller's first SVID as a TlsCertificate:
//	                         certificate_chain = leaf and intermediates (PEM),
//	                         private_key = PKCS#8 PEM, both inline bytes
//	spiffe://td/path         that SVID of the caller, the same way
//	ROOTCA                   this trust domain's roots as trusted_ca (PEM)
//	spiffe://td              that trust domain's roots as trusted_ca: this
//	                         trust domain, or a foreign one the caller's
//	                         entries federate with
//	ALL                      a validation context whose custom_validator_config
//	                         is envoy.tls.cert_validator.spiffe with one trust
//	                         bundle per trust domain: this one and exactly the
//	                         foreign ones the caller's entries federate with
//
// ALL is the one to verify peers of several trust domains with: Envoy then
// checks each peer certificate only against the bundle of the trust domain
// in its SPIFFE ID, so a compromised CA of one domain cannot vouch for
// identities of another, which a pooled root list (trusted_ca holding every
// domain's roots) would allow. ROOTCA and spiffe://td hold one trust domain's
// roots each and never a pool.
//
// The three alias names can be changed in Config. A name the caller is not
// entitled to, or that names nothing, is left out of the response and logged
// at debug level, as xDS wants: Envoy keeps waiting for it and gets it pushed
// if it appears. (SPIRE instead fails the request with InvalidArgument.) An
// empty subscription on the first request, or "*", is a wildcard: every SVID
// of the caller under its SPIFFE ID and every bundle it may have under its
// trust domain ID, without the aliases.
//
// A caller that matches no registration entry, or whose SVIDs have all
// expired, is served nothing: FetchSecrets answers PermissionDenied (as the
// Workload API does), and a stream stays open with a response holding no
// resources, then pushes what the caller is entitled to as soon as an entry
// matches it, so an Envoy started before its registration needs no restart.
//
// # Versions, ACK and NACK
//
// A resource's version is a digest of its public content (the certificate
// chain, not the key; the bundles), so it is the same on every stream and
// after a reconnect. A state-of-the-world response's version_info is a
// digest of the names and versions it holds; its nonce counts the stream's
// responses. A request carrying the last nonce is an ACK, or a NACK when
// error_detail is set; a NACK is logged with Envoy's message and the
// rejected version is not sent again: the next response goes out only when
// what the caller should have changes. A request carrying an older nonce is
// stale and ignored.
//
// DeltaSecrets honours initial_resource_versions (a reconnecting Envoy is
// not resent what it has), subscriptions and unsubscriptions, sends only the
// resources whose version changed, and lists in removed_resources those the
// client holds that it may no longer have (an SVID that expired, an entry
// that was deleted, a federation that ended).
//
// # Pushes and expiry
//
// Every stream recomputes what its caller should have when the Source says
// something changed and when one of the caller's SVIDs reaches its expiry,
// and sends only if the result differs from what was last sent. An expired
// SVID (by the injected clock) is never sent; at its expiry "default" moves
// to the caller's next valid SVID, if any. A state-of-the-world client
// cannot be told to drop a secret, so an Envoy on StreamSecrets keeps its
// last one until a new SVID arrives; on DeltaSecrets it is removed.
//
// # Bounds
//
// A request is at most 1 MiB (an Envoy Node, sent with the first request,
// lists every extension and is tens of KiB; gRPC answers ResourceExhausted
// beyond), a stream may subscribe to at most 4096 names (InvalidArgument
// beyond), and what a client sends is logged only in bounded pieces.
//
// The package never sends a private key anywhere but to the workload it
// belongs to over this socket, and never logs one (nor a digest of one).
package sds
