package server

import (
	"strings"
	"testing"
)

// FuzzParseConfig: no input panics the config parser or validation, and an
// accepted configuration always names a trust domain and a data directory.
func FuzzParseConfig(f *testing.F) {
	f.Add([]byte("trust_domain: east.example\ndata_dir: /tmp/x\n"))
	f.Add([]byte("trust_domain: east.example\ndata_dir: x\nca:\n  mode: cacerts\n  cacerts_dir: c\nsvid:\n  max_ttl: 90d\n"))
	f.Add([]byte("credentials:\n  kubernetes_jwt:\n  - issuer: k\n    jwks_file: j\n    audiences: [a]\n"))
	f.Add([]byte("{\"trust_domain\": 1}"))
	f.Add([]byte("- a\n- b\n"))
	f.Add([]byte("trust_domain: &a x\ndata_dir: *a\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseConfig("fuzz.yaml", data)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "server: config fuzz.yaml") {
				t.Fatalf("error without the file name: %v", err)
			}
			return
		}
		s, err := c.validate()
		if err != nil {
			return
		}
		if s.td.IsZero() || s.dataDir == "" || s.maxTTL < s.defaultTTL {
			t.Fatalf("accepted an incomplete configuration: %+v", s)
		}
	})
}
