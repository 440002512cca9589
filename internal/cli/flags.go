package cli

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// ttlValue is a duration flag that also accepts days ("90d") and years
// ("10y", 365 days each), since certificate lifetimes are spoken of in both.
type ttlValue struct{ d *time.Duration }

func newTTL(p *time.Duration, def time.Duration) *ttlValue {
	*p = def
	return &ttlValue{d: p}
}

func (v *ttlValue) String() string {
	if v.d == nil || *v.d == 0 {
		return "0"
	}
	d := *v.d
	switch {
	case d%(365*24*time.Hour) == 0:
		return fmt.Sprintf("%dy", d/(365*24*time.Hour))
	case d%(24*time.Hour) == 0:
		return fmt.Sprintf("%dd", d/(24*time.Hour))
	}
	return d.String()
}

func (v *ttlValue) Set(s string) error {
	d, err := parseTTL(s)
	if err != nil {
		return err
	}
	*v.d = d
	return nil
}

func (v *ttlValue) Type() string { return "duration" }

func parseTTL(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	for suffix, unit := range map[string]time.Duration{"d": 24 * time.Hour, "y": 365 * 24 * time.Hour} {
		if n, ok := strings.CutSuffix(s, suffix); ok {
			i, err := strconv.Atoi(n)
			if err != nil || i <= 0 || i > 1000*365 {
				return 0, fmt.Errorf("invalid duration %q: want a positive whole number before %q", s, suffix)
			}
			return time.Duration(i) * unit, nil
		}
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("invalid duration %q: use 45m, 24h, 90d or 10y", s)
	}
	if d <= 0 {
		return 0, fmt.Errorf("invalid duration %q: must be positive", s)
	}
	return d, nil
}
