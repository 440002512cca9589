package cli

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestProxyCommandRefusesBadInvocations(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("workload_api_socket: /x\ninbound: [{listen: a, forward_to: 'b:1'}]\nlisten: typo\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		args []string
		code int
		want string
	}{
		{[]string{"proxy"}, 2, "--config is required"},
		{[]string{"proxy", "--config", filepath.Join(dir, "missing.yaml")}, 1, "proxy: config:"},
		{[]string{"proxy", "--config", bad}, 1, `proxy: config ` + bad + `: error unmarshaling JSON: while decoding JSON: json: unknown field "listen"`},
	}
	for _, tc := range cases {
		var stdout, stderr bytes.Buffer
		code := Main(tc.args, nil, &stdout, &stderr)
		if code != tc.code || !strings.Contains(stderr.String(), tc.want) || strings.Count(stderr.String(), "\n") != 1 {
			t.Errorf("meshfed %s: exit %d, stderr %q; want exit %d and one line with %q", strings.Join(tc.args, " "), code, stderr.String(), tc.code, tc.want)
		}
	}
}
