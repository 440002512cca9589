// Package procruntime applies a daemon's garbage collector setting (GC
// percent and soft memory limit) from its configuration file, with the
// daemon's own defaults and the environment's GOGC and GOMEMLIMIT between
// them: a key in the file wins, then the environment, then the default.
package procruntime

import (
	"fmt"
	"runtime/debug"
	"strconv"
	"strings"
)

// Config is the "runtime" section of a daemon's configuration file.
type Config struct {
	// GCPercent is the collector's target (GOGC); nil: the daemon's default.
	GCPercent *int `json:"gc_percent"`
	// MemoryLimit is the soft memory limit (GOMEMLIMIT): bytes, or a number
	// with B, KiB, MiB or GiB; "" means the daemon's default, "off" none.
	MemoryLimit string `json:"memory_limit"`
}

// Defaults are a daemon's own values, used when neither the file nor the
// environment sets a key.
type Defaults struct {
	GCPercent   int
	MemoryLimit int64
}

// Applied says what Apply set, for the start-up log line.
type Applied struct {
	GCPercent   int
	MemoryLimit int64 // math.MaxInt64 when none
	FromEnv     []string
}

// Apply sets the process's GC percent and memory limit from r, leaving what
// the environment (getenv) sets alone unless r names it. who prefixes
// errors ("agent", "server").
func Apply(who string, r Config, def Defaults, getenv func(string) string) (Applied, error) {
	var out Applied
	limit := def.MemoryLimit
	switch m := strings.TrimSpace(r.MemoryLimit); {
	case m == "" && getenv("GOMEMLIMIT") != "":
		limit = -1
		out.FromEnv = append(out.FromEnv, "GOMEMLIMIT")
	case m == "":
	case IsOff(m):
		limit = 1<<63 - 1
	default:
		n, err := ParseBytes(m)
		if err != nil {
			return out, fmt.Errorf("%s: runtime.memory_limit: %w", who, err)
		}
		limit = n
	}
	gc := def.GCPercent
	switch {
	case r.GCPercent != nil:
		if *r.GCPercent < -1 || *r.GCPercent == 0 {
			return out, fmt.Errorf("%s: runtime.gc_percent %d: use a positive percentage, or -1 to turn the collector off (only sensible with memory_limit)", who, *r.GCPercent)
		}
		gc = *r.GCPercent
	case getenv("GOGC") != "":
		gc = -2
		out.FromEnv = append(out.FromEnv, "GOGC")
	}
	if gc != -2 {
		debug.SetGCPercent(gc)
	}
	if limit != -1 {
		debug.SetMemoryLimit(limit)
	}
	out.GCPercent = debug.SetGCPercent(-1)
	debug.SetGCPercent(out.GCPercent)
	out.MemoryLimit = debug.SetMemoryLimit(-1)
	return out, nil
}

// IsOff reports whether a configuration value turns something off: "off",
// or "false", which is what YAML 1.1 (and so sigs.k8s.io/yaml) makes of an
// unquoted off.
func IsOff(v string) bool {
	return strings.EqualFold(v, "off") || strings.EqualFold(v, "false")
}

// ParseBytes reads a size: a number of bytes, optionally followed by B,
// KiB, MiB or GiB (also KB, MB, GB as powers of 1000), as GOMEMLIMIT does.
func ParseBytes(size string) (int64, error) {
	s := strings.TrimSpace(size)
	units := []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"B", 1}}
	mult := int64(1)
	for _, u := range units {
		if strings.HasSuffix(s, u.suffix) {
			s, mult = strings.TrimSpace(strings.TrimSuffix(s, u.suffix)), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("%q is not a size: use bytes, or a number with KiB, MiB or GiB", size)
	}
	if n > (1<<63-1)/mult {
		return 0, fmt.Errorf("%q is too large", size)
	}
	return n * mult, nil
}
