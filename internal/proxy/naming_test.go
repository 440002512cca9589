package proxy_test

import (
	"testing"

	"github.com/meshfed/meshfed/internal/proxy"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func TestSecureNamingCheck(t *testing.T) {
	n, err := proxy.NewSecureNaming(map[string][]string{
		"datastore": {"spiffe://cluster.local/ns/default/sa/infra-team"},
		"ratings":   {"spiffe://kind2/*", "spiffe://kind3/ns/default/sa/ratings"},
	})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		service, id, err string
	}{
		{"datastore", "spiffe://cluster.local/ns/default/sa/infra-team", ""},
		{"datastore", "spiffe://cluster.local/ns/default/sa/test-team", `proxy: secure naming: server spiffe://cluster.local/ns/default/sa/test-team is not allowed to run service "datastore" (allowed: spiffe://cluster.local/ns/default/sa/infra-team)`},
		{"datastore", "spiffe://cluster.local/ns/default/sa/infra-team/x", `proxy: secure naming: server spiffe://cluster.local/ns/default/sa/infra-team/x is not allowed to run service "datastore" (allowed: spiffe://cluster.local/ns/default/sa/infra-team)`},
		{"ratings", "spiffe://kind2/ns/default/sa/anything", ""},
		{"ratings", "spiffe://kind3/ns/default/sa/ratings", ""},
		{"ratings", "spiffe://kind3/ns/default/sa/other", `proxy: secure naming: server spiffe://kind3/ns/default/sa/other is not allowed to run service "ratings" (allowed: spiffe://kind2/*, spiffe://kind3/ns/default/sa/ratings)`},
		{"ratings", "spiffe://kind22/ns/default/sa/ratings", `proxy: secure naming: server spiffe://kind22/ns/default/sa/ratings is not allowed to run service "ratings" (allowed: spiffe://kind2/*, spiffe://kind3/ns/default/sa/ratings)`},
		{"reviews", "spiffe://kind2/ns/default/sa/reviews", `proxy: secure naming: server spiffe://kind2/ns/default/sa/reviews refused for service "reviews": no SPIFFE IDs are configured for that service`},
	}
	for _, tt := range tests {
		err := n.Check(tt.service, spiffeid.RequireFromString(tt.id))
		got := ""
		if err != nil {
			got = err.Error()
		}
		if got != tt.err {
			t.Errorf("Check(%s, %s):\n got %s\nwant %s", tt.service, tt.id, got, tt.err)
		}
	}
	if got := n.Services(); len(got) != 2 || got[0] != "datastore" || got[1] != "ratings" {
		t.Errorf("Services() = %v", got)
	}
}

func TestNewSecureNamingRejects(t *testing.T) {
	tests := []struct {
		in  map[string][]string
		err string
	}{
		{map[string][]string{"": {"spiffe://td/x"}}, "proxy: secure naming: empty service name"},
		{map[string][]string{"db": nil}, `proxy: secure naming: service "db" lists no SPIFFE IDs; list the IDs allowed to run it, or remove it`},
		{map[string][]string{"db": {"spiffe://td"}}, `proxy: secure naming: service "db": "spiffe://td" names a trust domain, not a workload; write spiffe://td/* to allow all of it`},
		{map[string][]string{"db": {"td/*"}}, `proxy: secure naming: service "db": "td/*": want spiffe://<trust domain>/* for a whole trust domain`},
		{map[string][]string{"db": {"spiffe://td/a/*"}}, `proxy: secure naming: service "db": "spiffe://td/a/*": want spiffe://<trust domain>/* for a whole trust domain`},
		{map[string][]string{"db": {"https://td/x"}}, `proxy: secure naming: service "db": "https://td/x" is not a SPIFFE ID: scheme is missing or invalid`},
	}
	for _, tt := range tests {
		_, err := proxy.NewSecureNaming(tt.in)
		if err == nil || err.Error() != tt.err {
			t.Errorf("NewSecureNaming(%v):\n got %v\nwant %s", tt.in, err, tt.err)
		}
	}
}
