package policy

import (
	"errors"
	"fmt"
	"strings"
)

// matchString is Istio's string match: "*" matches any non-empty value
// (presence), "abc*" a prefix, "*abc" a suffix, anything else exactly.
func matchString(pattern, v string) bool {
	switch {
	case pattern == "*":
		return v != ""
	case strings.HasSuffix(pattern, "*"):
		return strings.HasPrefix(v, pattern[:len(pattern)-1])
	case strings.HasPrefix(pattern, "*"):
		return strings.HasSuffix(v, pattern[1:])
	}
	return pattern == v
}

func matchAny(patterns []string, v string) bool {
	for _, p := range patterns {
		if matchString(p, v) {
			return true
		}
	}
	return false
}

// matchAnyOf reports whether any pattern matches any of values.
func matchAnyOf(patterns, values []string) bool {
	for _, v := range values {
		if matchAny(patterns, v) {
			return true
		}
	}
	return false
}

// selects reports whether matchLabels selects a workload with labels. An
// empty selector selects every workload.
func selects(matchLabels, labels map[string]string) bool {
	for k, v := range matchLabels {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// MaxClaimDepth bounds the nesting of request.auth.claims[a][b]...
const MaxClaimDepth = 10

// conditionKey is a parsed "when" key.
type conditionKey struct {
	name string   // e.g. "request.auth.claims", "request.headers", "source.ip"
	args []string // the bracketed parts: claim path or header name
}

func (k conditionKey) httpOnly() bool {
	switch k.name {
	case "request.auth.claims", "request.headers":
		return true
	}
	return conditionKeys[k.name].httpOnly
}

// parseKey parses a condition key. request.auth.claims takes one or more
// bracketed names for nested claims (request.auth.claims[a][b]);
// request.headers takes exactly one.
func parseKey(key string) (conditionKey, error) {
	if _, ok := conditionKeys[key]; ok {
		return conditionKey{name: key}, nil
	}
	for _, name := range []string{"request.auth.claims", "request.headers"} {
		if !strings.HasPrefix(key, name+"[") {
			continue
		}
		args, err := ParseClaimPath(key[len(name):])
		if err != nil {
			return conditionKey{}, fmt.Errorf("%q: %w", key, err)
		}
		if name == "request.headers" && len(args) != 1 {
			return conditionKey{}, fmt.Errorf("%q: request.headers takes one header name", key)
		}
		return conditionKey{name: name, args: args}, nil
	}
	if strings.HasPrefix(key, "experimental.envoy.filters.") {
		return conditionKey{}, fmt.Errorf("%q: experimental keys are not supported", key)
	}
	return conditionKey{}, fmt.Errorf("%q: unknown key (see Istio's Authorization Policy Conditions)", key)
}

// ParseClaimPath parses the bracketed part of request.auth.claims[a][b]:
// "[a][b]" gives [a b]. Names are non-empty, hold no brackets, and there are
// at most MaxClaimDepth of them.
func ParseClaimPath(s string) ([]string, error) {
	if s == "" {
		return nil, errors.New("no [name]")
	}
	var out []string
	for s != "" {
		if s[0] != '[' {
			return nil, errors.New("expected [ after a ]")
		}
		end := strings.IndexByte(s, ']')
		if end < 0 {
			return nil, errors.New("missing ]")
		}
		name := s[1:end]
		if name == "" {
			return nil, errors.New("empty []")
		}
		if strings.ContainsRune(name, '[') {
			return nil, errors.New("[ inside []")
		}
		if len(out) == MaxClaimDepth {
			return nil, fmt.Errorf("more than %d nested names", MaxClaimDepth)
		}
		out = append(out, name)
		s = s[end+1:]
	}
	return out, nil
}

// claimValues looks a claim path up in a token's claims and returns its
// string values: a string claim gives one, a list of strings gives each;
// other types give none (Istio matches only string and string-list claims).
func claimValues(claims map[string]any, path []string) []string {
	var cur any = claims
	for _, p := range path {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil
		}
		if cur, ok = m[p]; !ok {
			return nil
		}
	}
	switch v := cur.(type) {
	case string:
		return []string{v}
	case []any:
		var out []string
		for _, e := range v {
			if s, ok := e.(string); ok {
				out = append(out, s)
			}
		}
		return out
	case []string:
		return v
	}
	return nil
}
