package duration

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	cases := []struct {
		in   string
		want time.Duration
		err  string
	}{
		{"45m", 45 * time.Minute, ""},
		{"8760h", 8760 * time.Hour, ""},
		{"356d", 356 * 24 * time.Hour, ""},
		{"10y", 10 * 365 * 24 * time.Hour, ""},
		{"0", 0, "must be positive"},
		{"-1h", 0, "must be positive"},
		{"1.5d", 0, "a whole number from 1 to 365000"},
		{"d", 0, "a whole number from 1 to 365000"},
		{"1001y", 0, "a whole number from 1 to 1000"},
		{"forever", 0, "use 45m, 24h, 90d or 10y"},
	}
	for _, tc := range cases {
		got, err := Parse(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("parseTTL(%q) error = %v, want %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("parseTTL(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
}

func TestJSON(t *testing.T) {
	var v struct{ TTL Duration }
	if err := json.Unmarshal([]byte(`{"TTL": "90d"}`), &v); err != nil || time.Duration(v.TTL) != 90*24*time.Hour {
		t.Fatalf("unmarshal 90d = %v, %v", time.Duration(v.TTL), err)
	}
	if err := json.Unmarshal([]byte(`{"TTL": 5}`), &v); err == nil || !strings.Contains(err.Error(), "want a duration string") {
		t.Errorf("unmarshal a number = %v", err)
	}
	out, _ := json.Marshal(v)
	if string(out) != `{"TTL":"90d"}` {
		t.Errorf("marshal = %s", out)
	}
}
