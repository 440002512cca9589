// Package tlspolicy is the one place meshfed's TLS floor is written: TLS 1.2
// or higher and, for TLS 1.2, exactly the cipher suites the mesh allows (the
// list Istio uses, quoted in the identity seed). TLS 1.3 suites are Go's.
// Every listener and dialer meshfed makes starts from here.
package tlspolicy

import "crypto/tls"

// MinVersion is the lowest TLS version meshfed speaks.
const MinVersion = tls.VersionTLS12

// CipherSuites returns the TLS 1.2 suites, ECDHE first. The plain-RSA
// key-exchange pair is in the mesh's list for old peers; Go stopped enabling
// it by default in 1.22, and listing it turns it back on.
func CipherSuites() []uint16 {
	return []uint16{
		tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
		tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
		tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
		tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
		tls.TLS_RSA_WITH_AES_256_GCM_SHA384,
		tls.TLS_RSA_WITH_AES_128_GCM_SHA256,
	}
}
