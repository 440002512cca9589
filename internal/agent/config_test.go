package agent

import (
	"strings"
	"testing"
)

func TestParseConfig(t *testing.T) {
	c, err := ParseConfig("agent.yaml", []byte(`
server: 127.0.0.1:8443
trust_bundle: /etc/meshfed/bundle.pem
join_token_file: /run/secrets/join-token
data_dir: /var/lib/meshfed/agent
socket: /run/meshfed/agent.sock
files:
  dir: /etc/nginx/certs
  selectors: [unix:uid:101]
  exec: nginx -s reload
rotation:
  max_backoff: 1m
limits:
  max_connections: 2048
  max_calls_per_uid: -1
`))
	if err != nil {
		t.Fatal(err)
	}
	if c.Server != "127.0.0.1:8443" || c.Files.Selectors[0] != "unix:uid:101" || c.Rotation.MaxBackoff != "1m" ||
		c.Limits != (LimitsConfig{MaxConnections: 2048, MaxCallsPerUID: -1}) {
		t.Errorf("parsed %+v", c)
	}
	for _, tc := range []struct{ yaml, want string }{
		{"servr: x\n", `unknown field "servr"`},
		{"join_token: abc\n", `unknown field "join_token"`},
		{"files: [1]\n", "agent: config agent.yaml"},
		{"limits:\n  max_connections: many\n", "agent: config agent.yaml"},
	} {
		if _, err := ParseConfig("agent.yaml", []byte(tc.yaml)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want %q", tc.yaml, err, tc.want)
		}
	}
}

func FuzzParseConfig(f *testing.F) {
	f.Add([]byte("server: a\ndata_dir: b\nsocket: c\n"))
	f.Add([]byte("files:\n  selectors: [unix:uid:1]\n"))
	f.Add([]byte("{"))
	f.Fuzz(func(t *testing.T, data []byte) {
		if _, err := ParseConfig("fuzz.yaml", data); err != nil && !strings.HasPrefix(err.Error(), "agent: config fuzz.yaml") {
			t.Fatalf("error without the file name: %v", err)
		}
	})
}
