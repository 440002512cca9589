package server

import "testing"

func TestProcsFor(t *testing.T) {
	for _, tc := range []struct {
		backend, env string
		current      int
		want         int
		changed      bool
	}{
		{"sqlite", "", 2, 3, true},
		{"sqlite", "", 1, 2, true},
		{"sqlite", "4", 2, 2, false},
		{"postgres", "", 2, 2, false},
	} {
		got, changed := ProcsFor(tc.backend, tc.current, tc.env)
		if got != tc.want || changed != tc.changed {
			t.Errorf("ProcsFor(%q, %d, %q) = %d, %v; want %d, %v", tc.backend, tc.current, tc.env, got, changed, tc.want, tc.changed)
		}
	}
}
