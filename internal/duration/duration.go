// Package duration parses the lifetimes people write in flags and config
// files: Go's form ("45m", "8760h") plus whole days ("90d") and years ("10y",
// 365 days each).
package duration

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"
)

const (
	day  = 24 * time.Hour
	year = 365 * day
)

// Parse parses a positive duration.
func Parse(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	for _, u := range []struct {
		suffix string
		unit   time.Duration
		max    int
	}{{"d", day, 1000 * 365}, {"y", year, 1000}} {
		if n, ok := strings.CutSuffix(s, u.suffix); ok {
			i, err := strconv.Atoi(n)
			if err != nil || i <= 0 || i > u.max {
				return 0, fmt.Errorf("invalid duration %q: want a whole number from 1 to %d before %q", s, u.max, u.suffix)
			}
			return time.Duration(i) * u.unit, nil
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

// Format writes d in the shortest of the accepted forms.
func Format(d time.Duration) string {
	switch {
	case d == 0:
		return "0"
	case d%year == 0:
		return fmt.Sprintf("%dy", d/year)
	case d%day == 0:
		return fmt.Sprintf("%dd", d/day)
	}
	return d.String()
}

// Duration is a time.Duration that reads and writes as a duration string
// in JSON and YAML configuration.
type Duration time.Duration

// UnmarshalJSON accepts a duration string ("5m", "90d").
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("want a duration string such as \"5m\" or \"90d\", got %s", b)
	}
	v, err := Parse(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// MarshalJSON writes the duration string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(Format(time.Duration(d))) }
