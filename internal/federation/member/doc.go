// Package member is the member side of a VirtualMesh (federation model A:
// one shared root, a name-constrained intermediate per member trust domain).
// A meshfed server that is a member joins the VirtualMesh controller once
// with a one-time token, then keeps an intermediate CA for its own trust
// domain, signed by the shared root from a CSR the member makes:
//
//   - the intermediate is written into a directory in Istio's cacerts layout
//     (ca-cert.pem, ca-key.pem 0600, cert-chain.pem, root-cert.pem), all
//     files or none, beside the last federation state applied
//     (federation-state.json); the server's authority signs from there, and
//     a restart reuses it without a token;
//   - it follows the controller's Watch stream, hands every new state to the
//     server (OnState) and persists it, and renews the intermediate with a
//     new key when the controller signs under another root or at about half
//     the intermediate's life;
//   - it reports what it holds and who still depends on which root.
//
// Everything the controller sends is verified before it is used: a new
// intermediate must certify the key this member just made, be a CA limited
// by a URI name constraint to exactly this trust domain, and chain to the
// federation's signing root; anything else is refused and the files in use
// stay as they were. After the join every call presents an X.509-SVID
// spiffe://<trust domain>/meshfed/server that the member issues to itself
// from its intermediate, and the controller must present
// .../meshfed/federation-controller chaining to a root of the federation.
//
// The member never sends a private key anywhere (the controller sees CSRs
// only), and never puts a key or the join token into an error or a log line.
package member
