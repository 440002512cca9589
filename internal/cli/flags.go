package cli

import (
	"time"

	"github.com/meshfed/meshfed/internal/duration"
)

// ttlValue is a duration flag that also accepts days ("90d") and years
// ("10y", 365 days each), since certificate lifetimes are spoken of in both.
type ttlValue struct{ d *time.Duration }

func newTTL(p *time.Duration, def time.Duration) *ttlValue {
	*p = def
	return &ttlValue{d: p}
}

func (v *ttlValue) String() string {
	if v.d == nil {
		return "0"
	}
	return duration.Format(*v.d)
}

func (v *ttlValue) Set(s string) error {
	d, err := duration.Parse(s)
	if err != nil {
		return err
	}
	*v.d = d
	return nil
}

func (v *ttlValue) Type() string { return "duration" }
