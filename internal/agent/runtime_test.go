package agent

import (
	"math"
	"runtime/debug"
	"strings"
	"testing"
)

// TestApplyRuntime: the defaults apply unless the environment sets GOGC or
// GOMEMLIMIT; keys in the file win over both.
func TestApplyRuntime(t *testing.T) {
	prevGC, prevLimit := debug.SetGCPercent(100), debug.SetMemoryLimit(math.MaxInt64)
	t.Cleanup(func() { debug.SetGCPercent(prevGC); debug.SetMemoryLimit(prevLimit) })
	env := func(kv map[string]string) func(string) string { return func(k string) string { return kv[k] } }
	fifty := 50
	cases := []struct {
		name    string
		cfg     RuntimeConfig
		env     map[string]string
		gc      int
		limit   int64
		fromEnv string
		err     string
		before  func()
	}{
		{"defaults", RuntimeConfig{}, nil, DefaultGCPercent, DefaultMemoryLimit, "", "", nil},
		{"environment kept", RuntimeConfig{}, map[string]string{"GOGC": "200", "GOMEMLIMIT": "1GiB"}, 200, 1 << 30, "GOMEMLIMIT,GOGC", "",
			func() { debug.SetGCPercent(200); debug.SetMemoryLimit(1 << 30) }},
		{"file wins", RuntimeConfig{GCPercent: &fifty, MemoryLimit: "64MiB"}, map[string]string{"GOGC": "200", "GOMEMLIMIT": "1GiB"}, 50, 64 << 20, "", "", nil},
		{"no limit", RuntimeConfig{MemoryLimit: "off"}, nil, DefaultGCPercent, math.MaxInt64, "", "", nil},
		{"bad limit", RuntimeConfig{MemoryLimit: "lots"}, nil, 0, 0, "", "runtime.memory_limit", nil},
		{"bad percent", RuntimeConfig{GCPercent: new(int)}, nil, 0, 0, "", "runtime.gc_percent 0", nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.before != nil {
				tc.before()
			}
			got, err := ApplyRuntime(tc.cfg, env(tc.env))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil || got.GCPercent != tc.gc || got.MemoryLimit != tc.limit || strings.Join(got.FromEnv, ",") != tc.fromEnv {
				t.Fatalf("got %+v, %v; want gc %d limit %d from env %q", got, err, tc.gc, tc.limit, tc.fromEnv)
			}
			if cur := debug.SetGCPercent(-1); cur != tc.gc {
				t.Errorf("the process's GC percent is %d, want %d", cur, tc.gc)
			} else {
				debug.SetGCPercent(cur)
			}
		})
	}
}
