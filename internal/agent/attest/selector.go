package attest

import (
	"fmt"
	"strings"
)

// SelectorType is the type of every selector this package produces.
const SelectorType = "unix"

// Selector is one attribute of a workload, such as {"unix", "uid:1000"}.
// A registration entry names the selectors a caller must all have.
type Selector struct {
	Type  string
	Value string
}

// String returns the selector as "type:value", e.g. "unix:uid:1000".
func (s Selector) String() string { return s.Type + ":" + s.Value }

// ParseSelector parses "type:value". The type ends at the first colon; the
// value may contain more ("unix:uid:1000" is type "unix", value "uid:1000").
func ParseSelector(s string) (Selector, error) {
	typ, value, ok := strings.Cut(s, ":")
	if !ok {
		return Selector{}, fmt.Errorf("attest: selector %q: want type:value, such as unix:uid:1000", s)
	}
	if typ == "" {
		return Selector{}, fmt.Errorf("attest: selector %q has an empty type", s)
	}
	if value == "" {
		return Selector{}, fmt.Errorf("attest: selector %q has an empty value", s)
	}
	return Selector{Type: typ, Value: value}, nil
}

func unixSelector(kind, value string) Selector {
	return Selector{Type: SelectorType, Value: kind + ":" + value}
}
