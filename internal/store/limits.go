package store

// Bounds on what the store accepts. Each is far above legitimate use and keeps
// one bad caller from filling the database or a listing; an input over its
// bound is refused with an error wrapping ErrInvalid.
const (
	// MaxIDBytes bounds a SPIFFE ID: the SPIFFE ID specification's limit
	// on a URI of 2048 bytes.
	MaxIDBytes = 2048
	// MaxSelectors bounds the selectors of one entry. SPIRE's workload
	// attestors produce a handful per workload.
	MaxSelectors = 64
	// MaxSelectorTypeBytes and MaxSelectorValueBytes bound one selector:
	// types are short words ("unix", "k8s"); values are short facts
	// ("uid:1000") or a path.
	MaxSelectorTypeBytes  = 64
	MaxSelectorValueBytes = 1024
	// MaxDNSNames bounds the DNS names of one entry, and MaxDNSNameBytes
	// one name (RFC 1035's 253 characters).
	MaxDNSNames     = 64
	MaxDNSNameBytes = 253
	// MaxFederatesWith bounds the foreign trust domains of one entry.
	MaxFederatesWith = 64
	// MaxDERBytes bounds one CA certificate or JWT public key in DER. An
	// RSA-8192 certificate with a long chain of extensions is under 4 KiB.
	MaxDERBytes = 64 << 10
	// MaxBundleBytes bounds one federated bundle: bundle.MaxBytes.
	MaxBundleBytes = 1 << 20
	// MaxSerialHex bounds a serial number: RFC 5280 allows 20 octets.
	MaxSerialHex = 40
	// MaxNameBytes bounds short names: a credential kind, a server ID, a
	// JWT key ID.
	MaxNameBytes = 256
	// MaxCallerBytes bounds the caller recorded in the audit log (a SPIFFE
	// ID, a service-account subject, an address).
	MaxCallerBytes = 2048
	// DefaultAuditLimit and MaxAuditLimit bound one ListIssued page.
	DefaultAuditLimit = 100
	MaxAuditLimit     = 10000
	// maxEntryIDBytes bounds an entry ID looked up; stored IDs are 32 hex
	// characters.
	maxEntryIDBytes = 64
)
