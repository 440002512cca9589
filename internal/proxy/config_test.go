package proxy_test

import (
	"strings"
	"testing"

	"github.com/meshfed/meshfed/internal/proxy"
)

// FuzzParseConfig: any input is parsed or refused with an error carrying
// the package prefix, never a panic.
func FuzzParseConfig(f *testing.F) {
	f.Add([]byte("workload_api_socket: /s\ninbound: [{listen: ':1', forward_to: '127.0.0.1:2', allowed_ids: ['spiffe://a.example/*']}]\n"))
	f.Add([]byte("workload_api_socket: /s\noutbound: [{listen: ':1', service: db, upstream: 'h:2', allowed_ids: ['spiffe://a.example/ns/db/sa/x']}]\nlimits: {idle_timeout: 1m}\n"))
	f.Add([]byte("limits: {idle_timeout: -1s}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		if _, err := proxy.ParseConfig("f.yaml", data); err != nil && !strings.HasPrefix(err.Error(), "proxy: config f.yaml: ") {
			t.Fatalf("error without the package prefix: %v", err)
		}
	})
}
