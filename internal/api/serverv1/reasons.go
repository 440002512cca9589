package serverv1

// The server refuses a node's call with codes.PermissionDenied and a
// google.rpc.ErrorInfo of ErrorDomain carrying one of these reasons when the
// node itself is refused, not the call; an agent acts on the reason.
const (
	ErrorDomain = "meshfed.io"
	// ReasonNodeNotAttested: the server has no record of the node: it never
	// attested, or it was evicted ('meshfed node evict'). It must attest
	// again.
	ReasonNodeNotAttested = "NODE_NOT_ATTESTED"
	// ReasonNodeBanned: the node is banned ('meshfed node ban'); it cannot
	// attest again until it is evicted.
	ReasonNodeBanned = "NODE_BANNED"
	// ReasonNodeSVIDSuperseded: the node SVID presented is not the node's
	// current one: the node renewed or attested again since, elsewhere if
	// not here. It must attest again.
	ReasonNodeSVIDSuperseded = "NODE_SVID_SUPERSEDED"
)
