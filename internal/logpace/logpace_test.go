package logpace

import (
	"testing"
	"time"
)

func TestAllow(t *testing.T) {
	t0 := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	p := New[string](30 * time.Second)
	steps := []struct {
		key    string
		at     time.Duration
		ok     bool
		missed int
	}{
		{"a", 0, true, 0},
		{"a", time.Second, false, 0},
		{"b", 2 * time.Second, true, 0}, // another key is paced on its own
		{"a", 29 * time.Second, false, 0},
		{"a", 30 * time.Second, true, 2}, // the two left out are counted
		{"a", 31 * time.Second, false, 0},
		{"a", 2 * time.Minute, true, 1},
	}
	for i, st := range steps {
		missed, ok := p.Allow(st.key, t0.Add(st.at))
		if ok != st.ok || missed != st.missed {
			t.Errorf("step %d (%s at %s): %v, %d; want %v, %d", i, st.key, st.at, ok, missed, st.ok, st.missed)
		}
	}
	if n := len(p.keys); n != 1 {
		t.Errorf("%d keys kept, want 1 (b's interval has passed)", n)
	}
}
